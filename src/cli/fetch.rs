//! `llm-mem fetch org/name[@revision]`: bring a model's config files and safetensors
//! headers from the Hub into the local HF cache (never the weights) and say what was
//! stored.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

use llm_mem::arch::params;
use llm_mem::hf::hub::{self, Sources};
use llm_mem::hf::remote::RepoRef;
use llm_mem::units::bytes::Bytes;

use super::print_out;

#[derive(Args)]
#[command(after_help = "\
Asks HF_ENDPOINT (default https://huggingface.co) with the token of HF_TOKEN or the \
token file ($HF_TOKEN_PATH, else $HF_HOME/token), through HTTPS_PROXY when set, with \
HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT seconds (default 10) per read. Stores into \
$HF_HUB_CACHE (else $HF_HOME/hub, else ~/.cache/huggingface/hub); `estimate --model \
org/name` then runs offline. HF_HUB_OFFLINE=1 refuses to fetch.")]
pub struct FetchArgs {
    /// A Hub model id, `org/name`, optionally `@revision` (branch, tag or commit).
    pub model: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &FetchArgs) -> Result<ExitCode> {
    let Some(repo) = RepoRef::parse(&a.model) else {
        bail!(
            "invalid model id {:?}; accepted: org/name or org/name@revision (letters, digits, '-', '_', '.'; at most 96 characters)",
            a.model
        );
    };
    let sources = Sources::from_env()?;
    let cfg = sources.hub.clone().expect("from_env sets the Hub");
    let (fetched, stored) = hub::fetch_into(&repo, &cfg, sources.cache_root.as_deref())?;
    // read back what was stored, as `estimate` will
    let parsed = hub::load_dir(&stored.snapshot, &repo.id);
    let counts = parsed
        .as_ref()
        .ok()
        .and_then(|s| s.checkpoint.as_deref())
        .and_then(params::count_checkpoint);
    let tensors = parsed
        .as_ref()
        .ok()
        .and_then(|s| s.checkpoint.as_ref())
        .map(Vec::len);
    let weights: u64 = fetched.headers.iter().filter_map(|h| h.file_size).sum();
    let out = if a.json {
        let v = serde_json::json!({
            "model": repo.id,
            "revision": repo.revision,
            "commit": fetched.commit,
            "endpoint": fetched.endpoint,
            "snapshot": stored.snapshot.display().to_string(),
            "files": stored.files.iter().map(|(n, b)| serde_json::json!({"file": n, "bytes": b})).collect::<Vec<_>>(),
            "safetensors_files": fetched.headers.len(),
            "weights_bytes_not_downloaded": weights,
            "tensors": tensors,
            "params_from_headers": counts.map(|c| c.total),
            "requests": fetched.requests,
            "bytes_received": fetched.bytes_received,
            "notes": fetched.notes,
            "estimable": parsed.is_ok(),
            "error": parsed.as_ref().err().map(|e| e.to_string()),
        });
        serde_json::to_string_pretty(&v)? + "\n"
    } else {
        let mut s = format!(
            "fetched {} (commit {}) from {}\nstored in {}\n",
            repo.display(),
            fetched.commit,
            fetched.endpoint,
            stored.snapshot.display()
        );
        for (name, bytes) in &stored.files {
            s += &format!("  {name:<56} {:>10}\n", Bytes(*bytes).human());
        }
        if !fetched.headers.is_empty() {
            s += &format!(
                "weights: {} in {} safetensors file(s), not downloaded (headers only)\n",
                Bytes(weights).human(),
                fetched.headers.len()
            );
        }
        if let (Some(t), Some(c)) = (tensors, counts) {
            s += &format!("tensors: {t}, parameters: {} (from the headers)\n", c.total);
        }
        s += &format!(
            "{} requests, {} received\n",
            fetched.requests,
            Bytes(fetched.bytes_received).human()
        );
        s
    };
    for n in &fetched.notes {
        eprintln!("llm-mem: note: {n}");
    }
    if let Err(e) = &parsed {
        eprintln!("llm-mem: warning: stored, but llm-mem cannot estimate it yet: {e}");
    }
    print_out(&out)?;
    Ok(ExitCode::SUCCESS)
}
