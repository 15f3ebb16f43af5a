//! Resolving `--model M` to a [`ModelSpec`]. All model-source I/O lives here.
//!
//! Order: a built-in preset name ([`crate::hf::presets`]) → a path (a `config.json` file or
//! a folder holding one) → a Hugging Face model id `org/name` in the local HF cache
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; layout
//! `models--ORG--NAME/snapshots/REV/config.json`, revision from `refs/main`, else the
//! newest snapshot). Nothing is downloaded. When the folder or snapshot also holds
//! `model.safetensors` or `model.safetensors.index.json` + shards, their headers are
//! read ([`crate::hf::safetensors`]) and `spec.checkpoint` is set.

use std::path::{Path, PathBuf};

use crate::arch::ModelSpec;
use crate::error::{Error, Result};
use crate::hf::config::parse_config;
use crate::hf::{presets, safetensors};

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

/// Resolve `name` with the default HF cache ([`default_cache_root`]).
pub fn resolve(name: &str) -> Result<ModelSpec> {
    resolve_with(name, default_cache_root().as_deref())
}

/// Resolve `name`: preset → path → HF cache under `cache_root` (none searched when
/// `None`) → the preset whose HF id is `name`. Not found → [`Error::ModelNotFound`]
/// naming the cache folder searched.
pub fn resolve_with(name: &str, cache_root: Option<&Path>) -> Result<ModelSpec> {
    resolve_noted(name, cache_root).map(|(spec, _)| spec)
}

/// [`resolve_with`], with a one-line note for each fallback taken (a preset found by
/// its HF id, a `refs/main` naming a missing snapshot, a checkpoint index naming
/// absent shards), for the caller to show.
pub fn resolve_noted(name: &str, cache_root: Option<&Path>) -> Result<(ModelSpec, Vec<String>)> {
    let mut notes = Vec::new();
    if let Some(spec) = presets::get(name) {
        return Ok((spec?, notes));
    }
    let path = Path::new(name);
    if path.is_file() {
        return Ok((load_config_noted(path, &mut notes)?, notes));
    }
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok((load_dir_noted(path, name, &mut notes)?, notes));
        }
        if !is_hub_id(name) {
            return Err(Error::Config {
                path: name.to_string(),
                message: "this folder has no config.json".to_string(),
            });
        }
    }
    if let (true, Some(root)) = (is_hub_id(name), cache_root) {
        if let Some(snapshot) = find_in_cache_noted(root, name, &mut notes)? {
            return Ok((load_dir_noted(&snapshot, name, &mut notes)?, notes));
        }
    }
    if let Some(preset) = presets::by_hf_id(name) {
        let where_ = cache_root.map_or_else(
            || "no cache folder".to_string(),
            |r| r.display().to_string(),
        );
        notes.push(format!(
            "{name} is not in the local Hugging Face cache ({where_}); using the built-in preset {preset}, published from it"
        ));
        let spec = presets::get(preset).expect("by_hf_id returns a preset name")?;
        return Ok((spec, notes));
    }
    if let Some((model_type, kind)) = presets::known_unsupported(name) {
        return Err(Error::Unsupported {
            model_type: model_type.to_string(),
            reason: format!("{name} is a {kind}; those come in a later version"),
            supported: crate::arch::Family::supported_list(),
        });
    }
    Err(Error::ModelNotFound {
        name: name.to_string(),
        cache: cache_root.map_or_else(
            || "no cache folder: HF_HUB_CACHE, HF_HOME and HOME are unset".to_string(),
            |r| r.display().to_string(),
        ),
    })
}

/// `org/name` with two non-empty parts and no `.`/`..` components.
pub fn is_hub_id(name: &str) -> bool {
    let mut parts = name.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(org), Some(repo), None) => [org, repo]
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != ".." && !p.contains('\\')),
        _ => false,
    }
}

/// The snapshot folder of `org/name` under `root` that holds a `config.json`: the
/// revision named by `refs/main` when it exists, else the most recently modified one.
pub fn find_in_cache(root: &Path, id: &str) -> Option<PathBuf> {
    find_in_cache_noted(root, id, &mut Vec::new())
        .ok()
        .flatten()
}

/// [`find_in_cache`], noting a `refs/main` that names a missing snapshot; a cached repo
/// none of whose snapshots has a `config.json` is an error saying so.
fn find_in_cache_noted(root: &Path, id: &str, notes: &mut Vec<String>) -> Result<Option<PathBuf>> {
    let repo = root.join(format!("models--{}", id.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    let mut wanted = None;
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let rev = rev.trim().to_string();
        let dir = snapshots.join(&rev);
        if !rev.is_empty() && !rev.contains(['/', '\\']) && dir.join("config.json").is_file() {
            return Ok(Some(dir));
        }
        wanted = Some(rev);
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

/// Parse a `config.json` file; the checkpoint next to it (if any) is read too.
pub fn load_config_file(path: &Path) -> Result<ModelSpec> {
    load_config_noted(path, &mut Vec::new())
}

fn load_config_noted(path: &Path, notes: &mut Vec<String>) -> Result<ModelSpec> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::io(path, source))?;
    let mut spec = parse_config(&text, &path.display().to_string())?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    attach_checkpoint(&mut spec, dir.unwrap_or(Path::new(".")), notes)?;
    Ok(spec)
}

/// Load `dir/config.json` (errors name the file) and the checkpoint headers in `dir`;
/// `spec.name` is `name`.
pub fn load_dir(dir: &Path, name: &str) -> Result<ModelSpec> {
    load_dir_noted(dir, name, &mut Vec::new())
}

fn load_dir_noted(dir: &Path, name: &str, notes: &mut Vec<String>) -> Result<ModelSpec> {
    let cfg = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg).map_err(|source| Error::io(&cfg, source))?;
    let mut spec = parse_config(&text, &cfg.display().to_string())?;
    spec.name = name.to_string();
    attach_checkpoint(&mut spec, dir, notes)?;
    Ok(spec)
}

/// Set `spec.checkpoint` from the safetensors headers in `dir`, if any. When the config
/// does not declare `torch_dtype`, the dtype holding most floating-point elements of
/// the checkpoint is used.
fn attach_checkpoint(spec: &mut ModelSpec, dir: &Path, notes: &mut Vec<String>) -> Result<()> {
    let Some(tensors) = safetensors::read_checkpoint(dir)? else {
        if let Some(f) = safetensors::checkpoint_files(dir).first() {
            notes.push(format!(
                "{}: names shards that are not in {}; parameters counted from config.json",
                f.display(),
                dir.display()
            ));
        }
        return Ok(());
    };
    if spec.torch_dtype.is_none() {
        use crate::units::dtype::DType;
        let mut by: Vec<(DType, u64)> = Vec::new();
        for t in tensors.iter().filter(|t| {
            matches!(
                t.dtype,
                DType::F64 | DType::F32 | DType::F16 | DType::BF16 | DType::F8
            )
        }) {
            match by.iter_mut().find(|(d, _)| *d == t.dtype) {
                Some((_, n)) => *n = n.saturating_add(t.numel()),
                None => by.push((t.dtype, t.numel())),
            }
        }
        spec.torch_dtype = by.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d);
    }
    if !spec.tie_embeddings
        && !tensors
            .iter()
            .any(|t| crate::arch::params::is_lm_head(&t.name))
    {
        notes.push(format!(
            "{}: config.json says tie_word_embeddings false, but the checkpoint stores no output head (lm_head.weight): its parameters are counted as stored, i.e. with the head tied to the embedding",
            dir.display()
        ));
    }
    spec.checkpoint = Some(tensors);
    Ok(())
}
