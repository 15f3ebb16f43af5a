//! The local Hugging Face cache: finding a model's snapshot, and storing what
//! [`crate::hf::remote::fetch`] brought so that the next run is offline and other tools
//! see it.
//!
//! Layout (`huggingface_hub` 0.26 `file_download.py`, "Understand caching" in its docs):
//!
//! ```text
//! {root}/models--{org}--{name}/
//!     blobs/{etag}                      file contents, named by X-Linked-Etag / ETag
//!     refs/{revision}                   the commit a branch or tag pointed at
//!     snapshots/{commit}/{file}         symlink → ../../blobs/{etag} (a copy where
//!                                       symlinks fail)
//! ```
//!
//! Headers-only shards are never put in `blobs/` (a blob named by a shard's etag would
//! be taken for the shard): each is `snapshots/{commit}/{shard}.llm-mem-header` (its
//! first 8 + N bytes), listed in `snapshots/{commit}/llm-mem-headers.json`
//! ([`crate::hf::safetensors::HeadersManifest`]). Every file is written to a temporary
//! name and renamed, so an interrupted fetch leaves no half file.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::hf::remote::Fetched;
use crate::hf::safetensors::{
    HeadersManifest, StoredHeader, HEADERS_MANIFEST, HEADERS_SCHEMA_VERSION, HEADER_SUFFIX,
};

/// The HF hub cache folder as `huggingface_hub` computes it: `$HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `$HOME/.cache/huggingface/hub` (`None` without any of them).
pub fn default_cache_root() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = var("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    let home = var("HOME").or_else(|| var("USERPROFILE"))?;
    Some(PathBuf::from(home).join(".cache/huggingface/hub"))
}

/// `{root}/models--{org}--{name}`.
pub fn repo_folder(root: &Path, id: &str) -> PathBuf {
    root.join(format!("models--{}", id.replace('/', "--")))
}

/// The snapshot folder of `org/name` under `root` that holds a `config.json`: the
/// revision named by `refs/main` when it exists, else the most recently modified one.
pub fn find_in_cache(root: &Path, id: &str) -> Option<PathBuf> {
    find_noted(root, id, "main", &mut Vec::new()).ok().flatten()
}

/// The snapshot of `id` at `revision` holding a `config.json`. For `main`: the commit
/// `refs/main` names, else the newest snapshot (noted when `refs/main` names a missing
/// one). For another revision: the commit `refs/{revision}` names, else the snapshot
/// named `revision` (a commit); never a different revision. A cached repo none of whose
/// snapshots has a `config.json` is an error saying so.
pub fn find_noted(
    root: &Path,
    id: &str,
    revision: &str,
    notes: &mut Vec<String>,
) -> Result<Option<PathBuf>> {
    let repo = repo_folder(root, id);
    let snapshots = repo.join("snapshots");
    let safe =
        |rev: &str| !rev.is_empty() && !rev.contains(['/', '\\']) && rev != "." && rev != "..";
    let with_config = |rev: &str| {
        let dir = snapshots.join(rev);
        (safe(rev) && dir.join("config.json").is_file()).then_some(dir)
    };
    let mut wanted = None;
    let refs = revision
        .split('/')
        .fold(repo.join("refs"), |p, part| p.join(part));
    if let Ok(rev) = std::fs::read_to_string(&refs) {
        let rev = rev.trim().to_string();
        if let Some(dir) = with_config(&rev) {
            return Ok(Some(dir));
        }
        wanted = Some(rev);
    }
    if revision != "main" {
        return Ok(with_config(revision));
    }
    let newest = std::fs::read_dir(&snapshots).ok().and_then(|d| {
        d.filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("config.json").is_file())
            .max_by_key(|p| {
                std::fs::metadata(p)
                    .and_then(|m| m.modified())
                    .ok()
                    .map(|t| (t, p.clone()))
            })
    });
    match (&newest, wanted) {
        (Some(dir), Some(rev)) => notes.push(format!(
            "{id}: refs/main names revision {rev:?}, which has no snapshot with a config.json; using snapshot {} (the newest)",
            dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        )),
        (None, _) if repo.is_dir() => {
            return Err(Error::Config {
                path: repo.display().to_string(),
                message: format!("found {id} in the Hugging Face cache but its snapshot has no config.json"),
            })
        }
        _ => {}
    }
    Ok(newest)
}

/// What [`store`] wrote.
#[derive(Clone, Debug)]
pub struct Stored {
    /// `snapshots/{commit}`.
    pub snapshot: PathBuf,
    /// Files written (or found already there), relative to the snapshot: the small files
    /// and the stored headers, then the manifest.
    pub files: Vec<(String, u64)>,
}

/// Store `f` under `root` in the HF cache layout (see the module doc); returns the
/// snapshot folder. Files already in the snapshot (a real download of the same commit)
/// are left as they are.
pub fn store(root: &Path, f: &Fetched) -> Result<Stored> {
    let repo = repo_folder(root, &f.repo.id);
    let blobs = repo.join("blobs");
    let snapshot = repo.join("snapshots").join(&f.commit);
    mkdir(&blobs)?;
    mkdir(&snapshot)?;
    let mut files = Vec::new();
    for file in &f.files {
        let dest = snapshot.join(&file.name);
        files.push((file.name.clone(), file.bytes.len() as u64));
        if dest.is_file() {
            continue;
        }
        match &file.etag {
            Some(etag) => {
                let blob = blobs.join(etag);
                if !blob.is_file() {
                    write_atomic(&blob, &file.bytes)?;
                }
                link_or_copy(&blob, &dest, &file.name, etag)?;
            }
            None => write_atomic(&dest, &file.bytes)?,
        }
    }
    let mut shards = Vec::new();
    for h in &f.headers {
        let header_file = format!("{}{HEADER_SUFFIX}", h.name);
        let dest = snapshot.join(&header_file);
        if let Some(parent) = dest.parent() {
            mkdir(parent)?;
        }
        write_atomic(&dest, &h.prefix)?;
        files.push((header_file.clone(), h.prefix.len() as u64));
        shards.push(StoredHeader {
            file: h.name.clone(),
            header_file,
            size: h.file_size,
            header_bytes: h.prefix.len() as u64,
            etag: h.etag.clone(),
        });
    }
    if !shards.is_empty() {
        let m = HeadersManifest {
            schema_version: HEADERS_SCHEMA_VERSION,
            written_by: format!("llm-mem {}", env!("CARGO_PKG_VERSION")),
            content: "safetensors headers only (the first 8 + N bytes of each shard): the weights were not downloaded; the *.llm-mem-header files are not checkpoints".to_string(),
            endpoint: f.endpoint.clone(),
            repo: f.repo.id.clone(),
            revision: f.repo.revision.clone(),
            commit: f.commit.clone(),
            shards,
        };
        let mut text = serde_json::to_string_pretty(&m).expect("a manifest serialises");
        text.push('\n');
        write_atomic(&snapshot.join(HEADERS_MANIFEST), text.as_bytes())?;
        files.push((HEADERS_MANIFEST.to_string(), text.len() as u64));
    }
    if f.repo.revision != f.commit {
        let refs = f
            .repo
            .revision
            .split('/')
            .fold(repo.join("refs"), |p, part| p.join(part));
        if let Some(parent) = refs.parent() {
            mkdir(parent)?;
        }
        write_atomic(&refs, f.commit.as_bytes())?;
    }
    Ok(Stored { snapshot, files })
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))
}

/// Write `bytes` to `dest` through `dest.incomplete` and a rename.
fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(format!(".{}.incomplete", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(dest, e)
    })
}

/// `dest` → `../../blobs/{etag}` (one more `..` per folder in `name`), as
/// `huggingface_hub` links; a copy where the OS refuses symlinks.
fn link_or_copy(blob: &Path, dest: &Path, name: &str, etag: &str) -> Result<()> {
    #[cfg(unix)]
    {
        let depth = name.matches('/').count();
        let target = PathBuf::from("../".repeat(2 + depth))
            .join("blobs")
            .join(etag);
        if std::os::unix::fs::symlink(&target, dest).is_ok() {
            return Ok(());
        }
    }
    let _ = (name, etag);
    std::fs::copy(blob, dest)
        .map(|_| ())
        .map_err(|e| Error::io(dest, e))
}
