//! Models from the Hugging Face Hub, against the mock Hub of `mock_hub` on loopback (no
//! test touches the real network): public, sharded, gated, missing, slow, offline, no
//! network, a proxy, a server that ignores `Range`; what lands in the HF cache and that
//! the next run is offline; and that no request ever asks for more than the headers.

use std::path::Path;
use std::time::{Duration, Instant};

use llm_mem::arch::params;
use llm_mem::error::Error;
use llm_mem::hf::hub::{self, Sources};
use llm_mem::hf::remote::{HubConfig, RepoRef};
use llm_mem::hf::safetensors;

use crate::mock_hub::{dead_endpoint, safetensors_prefix, Llama, MockHub, Repo, Req};
use crate::util::{read_data, run_with, TempDir};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Qwen2.5-0.5B's shapes (tests/data/configs/qwen2.5-0.5b).
const QWEN: Llama = Llama {
    hidden: 896,
    inter: 4864,
    layers: 24,
    heads: 14,
    kv_heads: 2,
    vocab: 151_936,
    tied: true,
    qkv_bias: true,
};

/// Llama-2-7b's shapes (tests/data/configs/llama-2-7b).
const LLAMA7B: Llama = Llama {
    hidden: 4096,
    inter: 11008,
    layers: 32,
    heads: 32,
    kv_heads: 32,
    vocab: 32_000,
    tied: false,
    qkv_bias: false,
};

/// A public single-file repo: config, generation config, `model.safetensors`.
fn qwen_repo() -> Repo {
    let (prefix, total) = safetensors_prefix(&QWEN.tensors(0..24, true, true));
    Repo::new(COMMIT)
        .file("config.json", read_data("configs/qwen2.5-0.5b/config.json"))
        .file("generation_config.json", "{\"max_new_tokens\": 2048}")
        .file("README.md", "# not fetched")
        .shard("model.safetensors", prefix, total)
}

/// A sharded repo: index + 2 shards of 13.5 GB together.
fn llama_repo() -> Repo {
    let shards = [
        (
            "model-00001-of-00002.safetensors",
            LLAMA7B.tensors(0..16, true, false),
        ),
        (
            "model-00002-of-00002.safetensors",
            LLAMA7B.tensors(16..32, false, true),
        ),
    ];
    let mut map = Vec::new();
    let mut repo =
        Repo::new(COMMIT).file("config.json", read_data("configs/llama-2-7b/config.json"));
    for (name, tensors) in &shards {
        for (t, _, _) in tensors {
            map.push(format!("\"{t}\":\"{name}\""));
        }
        let (prefix, total) = safetensors_prefix(tensors);
        repo = repo.shard(name, prefix, total);
    }
    let index = format!(
        "{{\"metadata\":{{\"total_size\":13476839424}},\"weight_map\":{{{}}}}}",
        map.join(",")
    );
    repo.file(safetensors::INDEX_FILE, index)
}

fn sources(hub: &MockHub, cache: &Path) -> Sources {
    Sources {
        cache_root: Some(cache.to_path_buf()),
        hub: Some(HubConfig::new(&hub.url())),
    }
}

/// Every request for a safetensors file asked for a byte range inside its header (8 +
/// N bytes), and no more than that was sent; returns how many such requests there were.
fn only_headers_asked(reqs: &[Req], header_len: &dyn Fn(&str) -> u64) -> usize {
    let mut n = 0;
    for r in reqs.iter().filter(|r| r.path.ends_with(".safetensors")) {
        n += 1;
        let limit = header_len(&r.path);
        let (a, b) = r
            .range
            .unwrap_or_else(|| panic!("{} asked without Range", r.path));
        assert!(
            a <= b && b < limit,
            "{}: asked bytes {a}-{b}, header is {limit} bytes",
            r.path
        );
        assert!(r.sent <= limit, "{}: {} bytes sent", r.path, r.sent);
    }
    n
}

#[test]
fn the_fixtures_have_the_published_parameter_counts() {
    // Qwen2.5-0.5B: 494,032,768 (its model card: 0.49B); Llama-2-7b: 6,738,415,616
    assert_eq!(QWEN.params(), 494_032_768);
    assert_eq!(LLAMA7B.params(), 6_738_415_616);
}

#[test]
fn a_public_model_is_fetched_headers_only_and_stored_in_the_hf_cache_layout() {
    let hub = MockHub::start(vec![("acme/tiny-qwen", qwen_repo())]);
    let cache = TempDir::new("hub-public");
    let (spec, notes) = hub::resolve_from("acme/tiny-qwen", &sources(&hub, cache.path())).unwrap();
    let tensors = spec.checkpoint.as_ref().expect("headers read");
    assert_eq!(tensors.len(), 1 + 24 * 12 + 1);
    assert_eq!(
        params::count_checkpoint(tensors).unwrap().total,
        494_032_768
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("fetched acme/tiny-qwen") && n.contains("not downloaded")),
        "{notes:?}"
    );
    let reqs = hub.requests();
    let (prefix, total) = safetensors_prefix(&QWEN.tensors(0..24, true, true));
    let header = prefix.len() as u64;
    assert_eq!(only_headers_asked(&reqs, &|_| header), 2 * 2, "{reqs:#?}"); // resolve + cdn, twice
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert!(!paths.iter().any(|p| p.ends_with("README.md")), "{paths:?}");
    let sent: u64 = reqs.iter().map(|r| r.sent).sum();
    assert!(
        sent < 100_000 && total > 900_000_000,
        "{sent} bytes sent of a {total}-byte checkpoint"
    );

    // the HF cache layout
    let repo = cache.join("models--acme--tiny-qwen");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let snap = repo.join("snapshots").join(COMMIT);
    for f in ["config.json", "generation_config.json"] {
        let meta = std::fs::symlink_metadata(snap.join(f)).unwrap();
        #[cfg(unix)]
        {
            assert!(meta.file_type().is_symlink(), "{f} is a link into blobs/");
            let target = std::fs::read_link(snap.join(f)).unwrap();
            assert!(target.starts_with("../../blobs"), "{target:?}");
        }
        let _ = meta;
        assert!(snap.join(f).is_file());
    }
    assert_eq!(
        std::fs::read_dir(repo.join("blobs")).unwrap().count(),
        2,
        "two small files, no shard blob"
    );
    // the shard is not there under its own name: nothing can take it for the weights
    assert!(!snap.join("model.safetensors").exists());
    let copy = snap.join("model.safetensors.llm-mem-header");
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), header);
    let m = safetensors::read_manifest(&snap)
        .unwrap()
        .expect("manifest");
    assert_eq!(
        (m.schema_version, m.commit.as_str(), m.shards.len()),
        (1, COMMIT, 1)
    );
    assert_eq!(m.shards[0].size, Some(total));

    // the next run is offline: a dead Hub, and the same answer
    let offline = Sources {
        cache_root: Some(cache.path().to_path_buf()),
        hub: Some(HubConfig::new(&dead_endpoint())),
    };
    let (again, notes2) = hub::resolve_from("acme/tiny-qwen", &offline).unwrap();
    assert_eq!(again.checkpoint, spec.checkpoint);
    assert!(notes2.iter().all(|n| !n.contains("fetched")), "{notes2:?}");
    assert_eq!(hub.requests().len(), reqs.len(), "no new request");
}

#[test]
fn a_sharded_7b_checkpoint_costs_only_its_headers() {
    let hub = MockHub::start(vec![("meta-llama/Llama-2-7b-hf", llama_repo())]);
    let cache = TempDir::new("hub-sharded");
    let (spec, _) =
        hub::resolve_from("meta-llama/Llama-2-7b-hf", &sources(&hub, cache.path())).unwrap();
    let tensors = spec.checkpoint.as_ref().unwrap();
    assert_eq!(
        params::count_checkpoint(tensors).unwrap().total,
        6_738_415_616
    );
    let lens: Vec<(String, u64)> = [(0..16, true, false), (16..32, false, true)]
        .into_iter()
        .enumerate()
        .map(|(i, (r, f, l))| {
            let (p, _) = safetensors_prefix(&LLAMA7B.tensors(r, f, l));
            (
                format!("model-0000{}-of-00002.safetensors", i + 1),
                p.len() as u64,
            )
        })
        .collect();
    let reqs = hub.requests();
    let header_of = |path: &str| {
        lens.iter()
            .find(|(n, _)| path.ends_with(n.as_str()))
            .unwrap()
            .1
    };
    assert_eq!(
        only_headers_asked(&reqs, &header_of),
        2 * 2 * 2,
        "{reqs:#?}"
    );
    let sent: u64 = reqs.iter().map(|r| r.sent).sum();
    let shard_sent: u64 = reqs
        .iter()
        .filter(|r| r.path.ends_with(".safetensors"))
        .map(|r| r.sent)
        .sum();
    let headers: u64 = lens.iter().map(|(_, l)| l).sum();
    eprintln!("sharded: {} requests, {sent} bytes sent ({shard_sent} of shards); headers {headers} bytes of 13.5 GB", reqs.len());
    // each shard: 8 bytes, then its N header bytes
    assert_eq!(shard_sent, headers, "{reqs:#?}");
    assert!(sent < 100_000, "{sent} bytes sent");
    let snap = cache
        .join("models--meta-llama--Llama-2-7b-hf/snapshots")
        .join(COMMIT);
    assert!(snap.join(safetensors::INDEX_FILE).is_file());
    assert_eq!(
        safetensors::read_manifest(&snap)
            .unwrap()
            .unwrap()
            .shards
            .len(),
        2
    );
}

#[test]
fn a_revision_is_pinned_to_its_commit_and_cached_under_refs() {
    let mut repo = qwen_repo();
    repo.revisions.push("v1.0".into());
    let hub = MockHub::start(vec![("acme/tiny-qwen", repo)]);
    let cache = TempDir::new("hub-rev");
    let src = sources(&hub, cache.path());
    hub::resolve_from("acme/tiny-qwen@v1.0", &src).unwrap();
    let refs = cache.join("models--acme--tiny-qwen/refs/v1.0");
    assert_eq!(std::fs::read_to_string(refs).unwrap(), COMMIT);
    // files were asked at the commit, not at the moving tag
    let reqs = hub.requests();
    assert!(
        reqs.iter()
            .filter(|r| r.path.contains("/resolve/"))
            .all(|r| r.path.contains(COMMIT)),
        "{reqs:#?}"
    );
    // a commit id works from the cache alone; an unknown revision is the Hub's 404
    let offline = Sources::offline(Some(cache.path()));
    hub::resolve_from(&format!("acme/tiny-qwen@{COMMIT}"), &offline).unwrap();
    let e = hub::resolve_from("acme/tiny-qwen@nope", &src)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("revision \"nope\" of acme/tiny-qwen does not exist (404)"),
        "{e}"
    );
}

#[test]
fn a_gated_model_says_what_to_do_without_and_with_a_wrong_token() {
    let mut repo = llama_repo();
    repo.gated = Some("hf_right".into());
    let hub = MockHub::start(vec![("meta-llama/Llama-2-7b-hf", repo)]);
    let cache = TempDir::new("hub-gated");
    let mut cfg = HubConfig::new(&hub.url());
    let id = RepoRef::parse("meta-llama/Llama-2-7b-hf").unwrap();
    let e = llm_mem::hf::remote::fetch(&id, &cfg)
        .unwrap_err()
        .to_string();
    for needle in [
        "gated or private",
        "no token was sent (401)",
        "accept its licence at",
        "set HF_TOKEN",
    ] {
        assert!(e.contains(needle), "{needle:?} not in {e}");
    }
    cfg.token = Some(llm_mem::hf::remote::Token {
        value: "hf_wrong".into(),
        source: "HF_TOKEN".into(),
    });
    let e = llm_mem::hf::remote::fetch(&id, &cfg)
        .unwrap_err()
        .to_string();
    for needle in [
        "is gated and the token from HF_TOKEN has no access to it (403)",
        "accept its licence",
    ] {
        assert!(e.contains(needle), "{needle:?} not in {e}");
    }
    assert!(!e.contains("hf_wrong"), "the token is never shown: {e}");
    cfg.token = Some(llm_mem::hf::remote::Token {
        value: "hf_right".into(),
        source: "HF_TOKEN".into(),
    });
    let src = Sources {
        cache_root: Some(cache.path().to_path_buf()),
        hub: Some(cfg),
    };
    let (spec, _) = hub::resolve_from("meta-llama/Llama-2-7b-hf", &src).unwrap();
    assert_eq!(
        params::count_checkpoint(spec.checkpoint.as_ref().unwrap())
            .unwrap()
            .total,
        6_738_415_616
    );
    // the token went to the Hub, never to the CDN it redirects to
    let reqs = hub.requests();
    let ok = |r: &&Req| r.auth.as_deref() == Some("Bearer hf_right");
    assert!(
        reqs.iter()
            .filter(|r| r.path.contains("/resolve/"))
            .filter(ok)
            .count()
            >= 3
    );
    let cdn: Vec<&Req> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/cdn/"))
        .collect();
    assert_eq!(cdn.len(), 4);
    assert!(cdn.iter().all(|r| r.auth.is_none()), "{cdn:#?}");
}

#[test]
fn a_missing_model_a_missing_config_and_a_bad_id_are_clear_errors() {
    let no_config = Repo::new(COMMIT).file("model.gguf", "GGUF");
    let hub = MockHub::start(vec![("acme/gguf-only", no_config)]);
    let cache = TempDir::new("hub-missing");
    let src = sources(&hub, cache.path());
    let e = hub::resolve_from("acme/nope", &src).unwrap_err();
    assert!(matches!(e, Error::Hub { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("no model acme/nope on http://127.0.0.1:") && e.contains("private or gated"),
        "{e}"
    );
    let e = hub::resolve_from("acme/gguf-only", &src)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("has no config.json") && e.contains("model.gguf"),
        "{e}"
    );
    // nothing was stored for either
    assert!(!cache.join("models--acme--nope").exists());
    for bad in ["acme/a b", "acme/-x", "a--b/c", "acme/x@", "acme/x@../y"] {
        assert!(RepoRef::parse(bad).is_none(), "{bad}");
    }
    assert_eq!(
        RepoRef::parse("a/b@refs/pr/1").unwrap().revision,
        "refs/pr/1"
    );
}

#[test]
fn a_slow_hub_times_out_at_the_configured_timeout() {
    let mut repo = qwen_repo();
    repo.delay = Duration::from_secs(3);
    let hub = MockHub::start(vec![("acme/slow", repo)]);
    let mut cfg = HubConfig::new(&hub.url());
    cfg.metadata_timeout = Duration::from_millis(300);
    let t = Instant::now();
    let e = llm_mem::hf::remote::fetch(&RepoRef::parse("acme/slow").unwrap(), &cfg)
        .unwrap_err()
        .to_string();
    let took = t.elapsed();
    assert!(
        e.contains("no answer from 127.0.0.1:") && e.contains("within 0.3 s"),
        "{e}"
    );
    assert!(e.contains("HF_HUB_ETAG_TIMEOUT"), "{e}");
    assert!(took < Duration::from_millis(2500), "gave up after {took:?}");
}

#[test]
fn offline_asks_nothing_and_falls_back_to_the_preset_of_that_id() {
    let hub = MockHub::start(vec![("acme/tiny-qwen", qwen_repo())]);
    let cache = TempDir::new("hub-offline");
    let mut cfg = HubConfig::new(&hub.url());
    cfg.offline = true;
    let src = Sources {
        cache_root: Some(cache.path().to_path_buf()),
        hub: Some(cfg),
    };
    let e = hub::resolve_from("acme/tiny-qwen", &src).unwrap_err();
    assert!(matches!(e, Error::ModelNotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("HF_HUB_OFFLINE is set"), "{e}");
    let (spec, notes) = hub::resolve_from("Qwen/Qwen2.5-0.5B", &src).unwrap();
    assert_eq!(spec.hidden, 896);
    assert!(
        notes[0].contains("HF_HUB_OFFLINE is set") && notes[0].contains("built-in preset"),
        "{notes:?}"
    );
    assert!(hub.requests().is_empty(), "{:#?}", hub.requests());
}

#[test]
fn no_network_is_said_and_a_known_id_falls_back_to_its_preset() {
    let cache = TempDir::new("hub-dead");
    let src = Sources {
        cache_root: Some(cache.path().to_path_buf()),
        hub: Some(HubConfig::new(&dead_endpoint())),
    };
    let e = hub::resolve_from("acme/anything", &src)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot connect to 127.0.0.1:") && e.contains("HF_HUB_OFFLINE=1"),
        "{e}"
    );
    let (spec, notes) = hub::resolve_from("Qwen/Qwen2.5-0.5B", &src).unwrap();
    assert_eq!(spec.hidden, 896);
    assert!(
        notes[0].contains("the Hub could not be used: Qwen/Qwen2.5-0.5B: cannot connect"),
        "{notes:?}"
    );
}

#[test]
fn a_server_that_ignores_range_is_read_only_as_far_as_the_header() {
    let mut repo = qwen_repo();
    repo.ignore_range = true;
    let hub = MockHub::start(vec![("acme/norange", repo)]);
    let cfg = HubConfig::new(&hub.url());
    let f = llm_mem::hf::remote::fetch(&RepoRef::parse("acme/norange").unwrap(), &cfg).unwrap();
    let header = f.headers[0].prefix.len() as u64;
    let small: u64 = f.files.iter().map(|x| x.bytes.len() as u64).sum();
    // the client read 8 bytes, then 8 + N (skipping the first 8), of a ~1 GB body
    assert_eq!(
        f.headers[0].file_size,
        Some(safetensors_prefix(&QWEN.tensors(0..24, true, true)).1)
    );
    assert!(
        f.bytes_received < small + 1_000 + 8 + header + 8,
        "{} bytes read",
        f.bytes_received
    );
}

#[test]
fn a_stored_header_that_is_truncated_or_a_manifest_of_another_schema_is_refused() {
    let hub = MockHub::start(vec![("acme/tiny-qwen", qwen_repo())]);
    let cache = TempDir::new("hub-corrupt");
    hub::resolve_from("acme/tiny-qwen", &sources(&hub, cache.path())).unwrap();
    let snap = cache.join("models--acme--tiny-qwen/snapshots").join(COMMIT);
    let copy = snap.join("model.safetensors.llm-mem-header");
    let bytes = std::fs::read(&copy).unwrap();
    std::fs::write(&copy, &bytes[..bytes.len() - 10]).unwrap();
    let offline = Sources::offline(Some(cache.path()));
    let e = hub::resolve_from("acme/tiny-qwen", &offline)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.safetensors.llm-mem-header") && e.contains("truncated"),
        "{e}"
    );
    std::fs::write(&copy, &bytes).unwrap();
    let m = snap.join(safetensors::HEADERS_MANIFEST);
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(
        &m,
        text.replace("\"schema_version\": 1", "\"schema_version\": 7"),
    )
    .unwrap();
    let e = hub::resolve_from("acme/tiny-qwen", &offline)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("schema_version 7") && e.contains("llm-mem fetch"),
        "{e}"
    );
}

#[test]
fn remote_code_is_never_run_known_families_are_noted_unknown_refused() {
    let cfg = read_data("configs/qwen2.5-0.5b/config.json").replace(
        "\"model_type\": \"qwen2\"",
        "\"model_type\": \"qwen2\", \"auto_map\": {\"AutoModelForCausalLM\": \"modeling_x.XForCausalLM\"}",
    );
    let unknown = cfg.replace("\"model_type\": \"qwen2\"", "\"model_type\": \"xmodel\"");
    let keyless = unknown.replace("\"intermediate_size\"", "\"ffn_width\"");
    let hub = MockHub::start(vec![
        (
            "acme/remote-known",
            Repo::new(COMMIT).file("config.json", cfg),
        ),
        (
            "acme/remote-unknown",
            Repo::new(COMMIT).file("config.json", unknown),
        ),
        (
            "acme/remote-keyless",
            Repo::new(COMMIT).file("config.json", keyless),
        ),
    ]);
    let cache = TempDir::new("hub-remote");
    let src = sources(&hub, cache.path());
    let (spec, notes) = hub::resolve_from("acme/remote-known", &src).unwrap();
    assert_eq!(spec.hidden, 896);
    assert!(
        notes.iter().any(|n| n
            .contains("auto_map: AutoModelForCausalLM → modeling_x.XForCausalLM")
            && n.contains("never runs it")),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|n| n.contains("no model.safetensors")),
        "{notes:?}"
    );
    // an unmodelled model_type with the standard decoder keys is estimated generically,
    // with the assumption and the remote code named; without them it is refused
    let (spec, notes) = hub::resolve_from("acme/remote-unknown", &src).unwrap();
    assert_eq!(spec.generic_of.as_deref(), Some("xmodel"));
    assert!(
        notes
            .iter()
            .any(|n| n.contains("\"xmodel\" is not a modelled architecture")
                && n.contains("probes/trace_probe.py")
                && n.contains("--strict")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("remote code") && n.contains("never runs it")),
        "{notes:?}"
    );
    let e = hub::resolve_from("acme/remote-keyless", &src)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"xmodel\"")
            && e.contains("lacks the standard decoder keys (intermediate_size)")
            && e.contains("remote code, which llm-mem never runs"),
        "{e}"
    );
}

#[test]
fn the_environment_sets_endpoint_token_offline_and_timeouts() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(a, _)| *a == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let no_file = |_: &Path| None;
    let c = HubConfig::from_vars(&env(&[]), &no_file).unwrap();
    assert_eq!(
        (c.endpoint.as_str(), c.offline, c.token.is_none()),
        ("https://huggingface.co", false, true)
    );
    assert_eq!(c.metadata_timeout, Duration::from_secs(10));
    let c = HubConfig::from_vars(
        &env(&[
            ("HF_ENDPOINT", "https://hf-mirror.com/"),
            ("HF_HUB_OFFLINE", "yes"),
            ("HF_HUB_DOWNLOAD_TIMEOUT", "2.5"),
            ("HF_TOKEN", "hf_env"),
            ("HF_HOME", "/h"),
        ]),
        &|p: &Path| (p == Path::new("/h/token")).then(|| "hf_file\n".to_string()),
    )
    .unwrap();
    assert_eq!(
        (c.endpoint.as_str(), c.offline),
        ("https://hf-mirror.com", true)
    );
    assert_eq!(c.download_timeout, Duration::from_millis(2500));
    assert_eq!(
        c.token
            .as_ref()
            .map(|t| (t.value.as_str(), t.source.as_str())),
        Some(("hf_env", "HF_TOKEN"))
    );
    // the token file when HF_TOKEN is unset, HF_TOKEN_PATH first
    let c = HubConfig::from_vars(&env(&[("HF_HOME", "/h")]), &|p: &Path| {
        (p == Path::new("/h/token")).then(|| "hf_file\n".to_string())
    })
    .unwrap();
    assert_eq!(c.token.as_ref().map(|t| t.value.as_str()), Some("hf_file"));
    let c = HubConfig::from_vars(&env(&[("HF_HUB_OFFLINE", "0")]), &no_file).unwrap();
    assert!(!c.offline);
    for (k, v, needle) in [
        (
            "HF_HUB_ETAG_TIMEOUT",
            "soon",
            "invalid HF_HUB_ETAG_TIMEOUT \"soon\"",
        ),
        (
            "HF_HUB_DOWNLOAD_TIMEOUT",
            "-1",
            "invalid HF_HUB_DOWNLOAD_TIMEOUT \"-1\"",
        ),
        ("HF_ENDPOINT", "ftp://x", "invalid HF_ENDPOINT \"ftp://x\""),
    ] {
        let pairs: &'static [(&'static str, &'static str)] = Box::leak(Box::new([(k, v)]));
        let e = HubConfig::from_vars(&env(pairs), &no_file)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn cli_fetch_prints_what_it_stored_and_estimate_then_runs_offline() {
    let hub = MockHub::start(vec![("acme/tiny-qwen", qwen_repo())]);
    let cache = TempDir::new("hub-cli");
    let c = cache.path().to_str().unwrap();
    let url = hub.url();
    let online = [
        ("HF_HUB_CACHE", c),
        ("HF_HUB_OFFLINE", ""),
        ("HF_ENDPOINT", url.as_str()),
    ];
    let r = run_with(["fetch", "acme/tiny-qwen"], &online);
    assert!(r.success(), "{r:?}");
    for needle in [
        "fetched acme/tiny-qwen (commit 0123456789abcdef",
        "model.safetensors.llm-mem-header",
        "config.json",
        "not downloaded (headers only)",
        "tensors: 290, parameters: 494032768",
    ] {
        assert!(r.stdout.contains(needle), "{needle:?} not in\n{}", r.stdout);
    }
    let j = run_with(["fetch", "acme/tiny-qwen", "--json"], &online);
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["params_from_headers"], 494_032_768u64);
    assert_eq!(v["commit"], COMMIT);
    let n = hub.requests().len();
    // offline from now on: the cache answers
    let r = run_with(
        ["estimate", "--model", "acme/tiny-qwen", "--json"],
        &[("HF_HUB_CACHE", c)],
    );
    assert!(r.success(), "{r:?}");
    let e: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(e["model"]["params_total"], 494_032_768u64, "{}", r.stdout);
    assert_eq!(hub.requests().len(), n);
    // estimate fetches by itself when the model is not cached
    let fresh = TempDir::new("hub-cli-fresh");
    let f = fresh.path().to_str().unwrap();
    let r = run_with(
        ["estimate", "--model", "acme/tiny-qwen"],
        &[
            ("HF_HUB_CACHE", f),
            ("HF_HUB_OFFLINE", ""),
            ("HF_ENDPOINT", url.as_str()),
        ],
    );
    assert!(
        r.success() && r.stderr.contains("note: fetched acme/tiny-qwen"),
        "{r:?}"
    );
    // fetch refuses offline, and a bad id, with exit 2
    let r = run_with(["fetch", "acme/tiny-qwen"], &[("HF_HUB_CACHE", c)]);
    assert!(
        r.code == 2 && r.stderr.contains("HF_HUB_OFFLINE is set"),
        "{r:?}"
    );
    let r = run_with(["fetch", "not an id"], &online);
    assert!(
        r.code == 2 && r.stderr.contains("invalid model id \"not an id\""),
        "{r:?}"
    );
}

#[test]
fn the_proxy_in_http_proxy_carries_the_requests() {
    let hub = MockHub::start(vec![("acme/tiny-qwen", qwen_repo())]);
    let cache = TempDir::new("hub-proxy");
    let c = cache.path().to_str().unwrap();
    let proxy = hub.url();
    // the endpoint's host does not resolve: only the proxy can reach it
    let r = run_with(
        ["fetch", "acme/tiny-qwen"],
        &[
            ("HF_HUB_CACHE", c),
            ("HF_HUB_OFFLINE", ""),
            ("HF_ENDPOINT", "http://hub.invalid"),
            ("HTTP_PROXY", proxy.as_str()),
            ("NO_PROXY", ""),
            ("no_proxy", ""),
        ],
    );
    assert!(r.success(), "{r:?}");
    let reqs = hub.requests();
    assert!(
        reqs.len() >= 6
            && reqs
                .iter()
                .filter(|r| !r.path.starts_with("/cdn/"))
                .all(|r| r.proxied),
        "{reqs:#?}"
    );
}
