//! Resolving `--model M` to a [`ModelSpec`]. All model-source file I/O but the cache's
//! own lives here.
//!
//! Order ([`resolve_from`]): a built-in preset name ([`crate::hf::presets`]) → a path (a
//! `config.json` file or a folder holding one) → a Hugging Face model id
//! `org/name[@revision]` in the local HF cache ([`crate::hf::cache`]) → the same id
//! fetched from the Hub ([`crate::hf::remote`]: config files and safetensors headers,
//! never weights) and stored in the cache → the preset whose HF id it is (when the Hub
//! could not be asked or refused). When the folder or snapshot also holds
//! `model.safetensors` or `model.safetensors.index.json` + shards (or their stored
//! headers), their headers are read ([`crate::hf::safetensors`]) and `spec.checkpoint` is
//! set.

use std::path::{Path, PathBuf};

use crate::arch::ModelSpec;
use crate::error::{Error, Result};
use crate::hf::config::{parse_config, spec_notes};
use crate::hf::remote::{self, Fetched, HubConfig, RepoRef};
use crate::hf::{cache, presets, safetensors};

pub use crate::hf::cache::{default_cache_root, find_in_cache};

/// Where a model id may be looked up beyond presets and paths.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// The HF cache folder (none searched or written when `None`).
    pub cache_root: Option<PathBuf>,
    /// The Hub; `None` = never asked (as if offline, but not said to the user).
    pub hub: Option<HubConfig>,
}

impl Sources {
    /// The cache and Hub the environment names ([`default_cache_root`],
    /// [`HubConfig::from_env`]).
    pub fn from_env() -> Result<Sources> {
        Ok(Sources {
            cache_root: default_cache_root(),
            hub: Some(HubConfig::from_env()?),
        })
    }

    /// Only the cache at `root`; the Hub is never asked.
    pub fn offline(cache_root: Option<&Path>) -> Sources {
        Sources {
            cache_root: cache_root.map(Path::to_path_buf),
            hub: None,
        }
    }
}

/// Resolve `name` with the cache and Hub the environment names ([`Sources::from_env`]).
pub fn resolve(name: &str) -> Result<ModelSpec> {
    resolve_from(name, &Sources::from_env()?).map(|(spec, _)| spec)
}

/// Resolve `name` offline: preset → path → HF cache under `cache_root` (none searched
/// when `None`) → the preset whose HF id is `name`. Not found →
/// [`Error::ModelNotFound`] naming the cache folder searched.
pub fn resolve_with(name: &str, cache_root: Option<&Path>) -> Result<ModelSpec> {
    resolve_noted(name, cache_root).map(|(spec, _)| spec)
}

/// [`resolve_with`], with a one-line note for each fallback taken (a preset found by
/// its HF id, a `refs/main` naming a missing snapshot, a checkpoint index naming
/// absent shards), for the caller to show.
pub fn resolve_noted(name: &str, cache_root: Option<&Path>) -> Result<(ModelSpec, Vec<String>)> {
    resolve_from(name, &Sources::offline(cache_root))
}

/// Resolve `name` from `sources` in the order of the module doc, with notes.
pub fn resolve_from(name: &str, sources: &Sources) -> Result<(ModelSpec, Vec<String>)> {
    let cache_root = sources.cache_root.as_deref();
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
    let repo = RepoRef::parse(name);
    let lookup = repo.clone().or_else(|| {
        is_hub_id(name).then(|| RepoRef {
            id: name.to_string(),
            revision: "main".to_string(),
        })
    });
    if let (Some(r), Some(root)) = (&lookup, cache_root) {
        if let Some(snapshot) = cache::find_noted(root, &r.id, &r.revision, &mut notes)? {
            return Ok((load_dir_noted(&snapshot, name, &mut notes)?, notes));
        }
    }
    if let Some((model_type, kind)) = presets::known_unsupported(name) {
        return Err(Error::Unsupported {
            model_type: model_type.to_string(),
            reason: format!("{name} is a {kind}; those come in a later version"),
            supported: crate::arch::Family::supported_list(),
        });
    }
    // the Hub: why it was not asked, or what it answered
    let mut not_asked = String::new();
    let mut hub_error = None;
    match (&repo, &sources.hub) {
        (Some(r), Some(cfg)) if cfg.offline => {
            not_asked = format!("; HF_HUB_OFFLINE is set, so {} was not asked", cfg.endpoint);
            let _ = r;
        }
        (Some(r), Some(cfg)) => match fetch_into(r, cfg, cache_root) {
            Ok((fetched, stored)) => {
                notes.push(fetched_note(&fetched, &stored.snapshot));
                notes.extend(fetched.notes.iter().cloned());
                return Ok((load_dir_noted(&stored.snapshot, name, &mut notes)?, notes));
            }
            Err(e) => hub_error = Some(e),
        },
        _ => {}
    }
    if let Some(preset) = presets::by_hf_id(lookup.as_ref().map_or(name, |r| r.id.as_str())) {
        let where_ = cache_root.map_or_else(
            || "no cache folder".to_string(),
            |r| r.display().to_string(),
        );
        let why = match &hub_error {
            Some(e) => format!("; the Hub could not be used: {e}"),
            None => not_asked.clone(),
        };
        notes.push(format!(
            "{name} is not in the local Hugging Face cache ({where_}){why}; using the built-in preset {preset}, published from it"
        ));
        let spec = presets::get(preset).expect("by_hf_id returns a preset name")?;
        return Ok((spec, notes));
    }
    if let Some(e) = hub_error {
        return Err(e);
    }
    if repo.is_none() && is_hub_id(name) {
        not_asked = format!("; {name:?} is not a valid Hub id (letters, digits, '-', '_', '.'; see `llm-mem fetch --help`)");
    }
    Err(Error::ModelNotFound {
        name: name.to_string(),
        cache: cache_root.map_or_else(
            || "no cache folder: HF_HUB_CACHE, HF_HOME and HOME are unset".to_string(),
            |r| r.display().to_string(),
        ),
        hub: not_asked,
    })
}

/// Fetch `repo` from the Hub and store it in the cache at `cache_root`.
pub fn fetch_into(
    repo: &RepoRef,
    cfg: &HubConfig,
    cache_root: Option<&Path>,
) -> Result<(Fetched, cache::Stored)> {
    let root = cache_root.ok_or_else(|| Error::Hub {
        model: repo.display(),
        message: "no cache folder to store the fetched files in: set HF_HUB_CACHE or HF_HOME"
            .to_string(),
    })?;
    let fetched = remote::fetch(repo, cfg)?;
    let stored = cache::store(root, &fetched)?;
    Ok((fetched, stored))
}

/// One line saying what was fetched and where it went.
pub fn fetched_note(f: &Fetched, snapshot: &Path) -> String {
    let header_bytes: u64 = f.headers.iter().map(|h| h.prefix.len() as u64).sum();
    let weights: u64 = f.headers.iter().filter_map(|h| h.file_size).sum();
    let headers = if f.headers.is_empty() {
        String::new()
    } else {
        format!(
            " and the headers of {} safetensors file(s) ({header_bytes} bytes of {weights} bytes of weights, which were not downloaded)",
            f.headers.len()
        )
    };
    format!(
        "fetched {} (commit {}) from {}: {}{headers}; stored in {} ({} requests, {} bytes)",
        f.repo.display(),
        f.commit,
        f.endpoint,
        f.files
            .iter()
            .map(|x| x.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        snapshot.display(),
        f.requests,
        f.bytes_received
    )
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

/// Parse a `config.json` file; the checkpoint next to it (if any) is read too.
pub fn load_config_file(path: &Path) -> Result<ModelSpec> {
    load_config_noted(path, &mut Vec::new())
}

fn load_config_noted(path: &Path, notes: &mut Vec<String>) -> Result<ModelSpec> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::io(path, source))?;
    let mut spec = parse_config(&text, &path.display().to_string())?;
    notes.extend(spec_notes(&text, &spec, &path.display().to_string()));
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    attach_checkpoint(&mut spec, dir.unwrap_or(Path::new(".")), notes)?;
    attach_preprocessor(&mut spec, dir.unwrap_or(Path::new(".")), notes)?;
    Ok(spec)
}

/// A native-resolution VLM's pixel budget from `dir/preprocessor_config.json`, when the
/// folder has one (see [`crate::hf::config::apply_preprocessor`]).
fn attach_preprocessor(spec: &mut ModelSpec, dir: &Path, notes: &mut Vec<String>) -> Result<()> {
    if spec.vision.as_ref().is_none_or(|v| v.native.is_none()) {
        return Ok(());
    }
    let file = dir.join("preprocessor_config.json");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(Error::io(&file, source)),
    };
    if let Some(n) =
        crate::hf::config::apply_preprocessor(spec, &text, &file.display().to_string())?
    {
        notes.push(n);
    }
    Ok(())
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
    notes.extend(spec_notes(&text, &spec, &cfg.display().to_string()));
    spec.name = name.to_string();
    attach_checkpoint(&mut spec, dir, notes)?;
    attach_preprocessor(&mut spec, dir, notes)?;
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
