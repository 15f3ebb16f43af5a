//! safetensors headers: the exact tensor list of a checkpoint, without reading weights.
//!
//! Format (<https://github.com/huggingface/safetensors>): an 8-byte little-endian `u64`
//! N, then N bytes of JSON `{"__metadata__": {...}, "<name>": {"dtype": "BF16",
//! "shape": [..], "data_offsets": [begin, end]}, ...}`, then the data. Only the first
//! 8 + N bytes are read. A sharded checkpoint has `model.safetensors.index.json` whose
//! `weight_map` names the shard of every tensor; each shard header is read once.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::arch::TensorInfo;
use crate::error::{Error, Result};
use crate::units::dtype::DType;

/// Largest header accepted (the format's own reader refuses headers above 100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The single-file checkpoint name transformers writes.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// safetensors dtype names accepted, with their [`DType`]. Others (U16, U32, U64,
/// F8_E8M0, F4, ...) are rejected by name rather than guessed.
pub const DTYPES: &[(&str, DType)] = &[
    ("F64", DType::F64),
    ("F32", DType::F32),
    ("F16", DType::F16),
    ("BF16", DType::BF16),
    ("I64", DType::I64),
    ("I32", DType::I32),
    ("I16", DType::I16),
    ("I8", DType::I8),
    ("U8", DType::U8),
    ("BOOL", DType::Bool),
    ("F8_E4M3", DType::F8),
    ("F8_E5M2", DType::F8),
];

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::Safetensors {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::io(path, source)
}

/// Read the header of one `.safetensors` file: only its first 8 + N bytes.
///
/// Errors ([`Error::Safetensors`]): file shorter than 8 bytes, N > 100 MB
/// ([`MAX_HEADER_BYTES`]) or beyond the end of the file, header not JSON / not an
/// object, a tensor entry without a known dtype, a valid shape or `data_offsets`
/// consistent with shape × dtype size and within the file.
pub fn read_header(path: &Path) -> Result<Vec<TensorInfo>> {
    let mut f = File::open(path).map_err(io(path))?;
    let file_len = f.metadata().map_err(io(path))?.len();
    if file_len < 8 {
        return Err(bad(
            path,
            format!("file is {file_len} bytes, shorter than the 8-byte header length"),
        ));
    }
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io(path))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_BYTES {
        return Err(bad(
            path,
            format!("header length {n} bytes exceeds the {MAX_HEADER_BYTES}-byte limit"),
        ));
    }
    if n > file_len - 8 {
        return Err(bad(
            path,
            format!("header length {n} bytes runs past the end of the file ({file_len} bytes)"),
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io(path))?;
    parse_header(&header, file_len - 8 - n, path)
}

/// Parse a header's JSON. `data_len` is the size of the data section (file size − 8 −
/// N); `path` is only used in errors. Tensors come back sorted by name.
pub fn parse_header(header: &[u8], data_len: u64, path: &Path) -> Result<Vec<TensorInfo>> {
    let v: Value = serde_json::from_slice(header).map_err(|e| {
        bad(
            path,
            format!(
                "header is not valid JSON (line {} column {}): {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    let Value::Object(map) = v else {
        return Err(bad(path, "header is not a JSON object"));
    };
    let mut out = Vec::with_capacity(map.len());
    for (name, entry) in &map {
        if name == "__metadata__" {
            continue;
        }
        out.push(parse_entry(name, entry, data_len, path)?);
    }
    Ok(out)
}

fn parse_entry(name: &str, entry: &Value, data_len: u64, path: &Path) -> Result<TensorInfo> {
    let err = |m: String| bad(path, format!("tensor {name:?}: {m}"));
    let obj = entry
        .as_object()
        .ok_or_else(|| err("entry is not an object".into()))?;
    let dtype_name = obj
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| err("missing string field `dtype`".into()))?;
    let dtype = DTYPES
        .iter()
        .find(|(n, _)| *n == dtype_name)
        .map(|(_, d)| *d)
        .ok_or_else(|| {
            let accepted: Vec<&str> = DTYPES.iter().map(|(n, _)| *n).collect();
            err(format!(
                "unsupported dtype {dtype_name:?}; accepted: {}",
                accepted.join(", ")
            ))
        })?;
    let shape = obj
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| err("missing array field `shape`".into()))?
        .iter()
        .map(Value::as_u64)
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| err("`shape` must hold non-negative integers".into()))?;
    let offsets = obj
        .get("data_offsets")
        .and_then(Value::as_array)
        .and_then(|a| match a.as_slice() {
            [b, e] => Some((b.as_u64()?, e.as_u64()?)),
            _ => None,
        })
        .ok_or_else(|| err("`data_offsets` must be [begin, end] integers".into()))?;
    let (begin, end) = offsets;
    let bytes = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or_else(|| err(format!("shape {shape:?} overflows")))?;
    if begin > end || end - begin != bytes {
        return Err(err(format!(
            "data_offsets [{begin}, {end}] do not match shape {shape:?} × {dtype_name} ({bytes} bytes)"
        )));
    }
    if end > data_len {
        return Err(err(format!(
            "data_offsets end {end} is past the data section ({data_len} bytes)"
        )));
    }
    Ok(TensorInfo {
        name: name.to_string(),
        dtype,
        shape,
    })
}

/// Read a sharded checkpoint from its `model.safetensors.index.json`: every shard named
/// in `weight_map` (relative to the index's folder; absolute paths and `..` are
/// rejected) has its header read once, and every tensor of `weight_map` must be in the
/// shard it names. Returns the tensors of all shards, sorted by name.
pub fn read_index(index: &Path) -> Result<Vec<TensorInfo>> {
    let dir = index.parent().unwrap_or(Path::new("."));
    read_index_with(index, &|shard| read_header(&dir.join(shard)))
}

fn read_index_with(
    index: &Path,
    read_shard: &dyn Fn(&str) -> Result<Vec<TensorInfo>>,
) -> Result<Vec<TensorInfo>> {
    let shards = shard_files(index)?;
    let mut out = Vec::new();
    for (shard, names) in &shards {
        let tensors = read_shard(shard)?;
        let present: BTreeSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        if let Some(missing) = names.iter().find(|n| !present.contains(n.as_str())) {
            return Err(bad(
                index,
                format!("weight_map puts {missing:?} in {shard}, whose header does not list it"),
            ));
        }
        out.extend(tensors);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The shard files of an index (`weight_map` values) with the tensors mapped to each.
pub fn shard_files(index: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(index).map_err(io(index))?;
    parse_index(&text, index)
}

/// [`shard_files`] of an index's text; `index` names it in errors.
pub fn parse_index(text: &str, index: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        bad(
            index,
            format!(
                "index is not valid JSON (line {} column {}): {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad(index, "index has no `weight_map` object"))?;
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(index, format!("weight_map[{tensor:?}] is not a file name")))?;
        let fp = Path::new(file);
        if file.is_empty()
            || fp.is_absolute()
            || fp
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(bad(
                index,
                format!("weight_map[{tensor:?}] = {file:?} is not a file in the index's folder"),
            ));
        }
        shards
            .entry(file.to_string())
            .or_default()
            .push(tensor.clone());
    }
    Ok(shards)
}

/// The checkpoint of a model folder: `model.safetensors`, else
/// `model.safetensors.index.json` + shards; a shard absent from the folder is read from
/// its headers-only copy when [`HEADERS_MANIFEST`] lists one (what `llm-mem fetch`
/// stores). `Ok(None)` when the folder has neither, or when a shard named by the index
/// is absent (a partial download: the config still describes the model). Corrupt
/// headers and manifests are errors.
pub fn read_checkpoint(dir: &Path) -> Result<Option<Vec<TensorInfo>>> {
    let manifest = read_manifest(dir)?;
    let stored = |name: &str| {
        manifest
            .as_ref()
            .and_then(|m| m.shards.iter().find(|s| s.file == name))
    };
    let present = |name: &str| dir.join(name).is_file() || stored(name).is_some();
    let read_shard = |name: &str| -> Result<Vec<TensorInfo>> {
        let real = dir.join(name);
        match stored(name) {
            Some(s) if !real.is_file() => read_header_copy(dir, s),
            _ => read_header(&real),
        }
    };
    if present(SINGLE_FILE) {
        return read_shard(SINGLE_FILE).map(Some);
    }
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let shards = shard_files(&index)?;
        if shards.keys().any(|s| !present(s)) {
            return Ok(None);
        }
        return read_index_with(&index, &read_shard).map(Some);
    }
    Ok(None)
}

/// The file in a snapshot folder that marks it as holding safetensors *headers only*
/// (written by `llm-mem fetch`, see [`HeadersManifest`]).
pub const HEADERS_MANIFEST: &str = "llm-mem-headers.json";
/// The suffix of a stored header: `model-00001-of-00004.safetensors.llm-mem-header`
/// holds that shard's first 8 + N bytes. No loader takes it for a checkpoint: the name
/// does not end in `.safetensors`, and no `blobs/` entry is made for it.
pub const HEADER_SUFFIX: &str = ".llm-mem-header";
/// The [`HeadersManifest`] schema this version writes and reads.
pub const HEADERS_SCHEMA_VERSION: u64 = 1;

/// `llm-mem-headers.json`: which shards of a snapshot are stored as headers only.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersManifest {
    pub schema_version: u64,
    /// `llm-mem X.Y.Z`.
    pub written_by: String,
    /// A sentence for people who find the file.
    pub content: String,
    pub endpoint: String,
    pub repo: String,
    pub revision: String,
    pub commit: String,
    pub shards: Vec<StoredHeader>,
}

/// One headers-only shard.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredHeader {
    /// The shard's name in the repo.
    pub file: String,
    /// The file beside the manifest holding its first 8 + N bytes.
    pub header_file: String,
    /// The shard's full size in bytes (not downloaded); `null` when the server did not
    /// say.
    pub size: Option<u64>,
    /// 8 + N.
    pub header_bytes: u64,
    pub etag: Option<String>,
}

/// The manifest of `dir`, if it has one. A manifest that is not valid JSON, has another
/// schema version or names files outside `dir` is an error naming it.
pub fn read_manifest(dir: &Path) -> Result<Option<HeadersManifest>> {
    let p = dir.join(HEADERS_MANIFEST);
    if !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).map_err(io(&p))?;
    let version = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("schema_version")?.as_u64());
    if version.is_some_and(|v| v != HEADERS_SCHEMA_VERSION) {
        return Err(bad(
            &p,
            format!(
                "headers manifest schema_version {} is not the one this version reads ({HEADERS_SCHEMA_VERSION}); run `llm-mem fetch` again",
                version.unwrap_or_default()
            ),
        ));
    }
    let m: HeadersManifest = serde_json::from_str(&text).map_err(|e| {
        bad(
            &p,
            format!("not a headers manifest (schema_version {HEADERS_SCHEMA_VERSION}): {e}"),
        )
    })?;
    for s in &m.shards {
        for f in [&s.file, &s.header_file] {
            let fp = Path::new(f);
            if f.is_empty()
                || fp.is_absolute()
                || fp
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(bad(
                    &p,
                    format!("{f:?} is not a file in the snapshot folder"),
                ));
            }
        }
    }
    Ok(Some(m))
}

/// Read a stored header (see [`HEADER_SUFFIX`]): exactly `header_bytes` = 8 + N bytes,
/// tensors checked against the shard size the manifest records.
fn read_header_copy(dir: &Path, s: &StoredHeader) -> Result<Vec<TensorInfo>> {
    let p = dir.join(&s.header_file);
    let bytes = std::fs::read(&p).map_err(io(&p))?;
    let len = bytes.len() as u64;
    if len < 8 {
        return Err(bad(
            &p,
            format!("stored header is {len} bytes, shorter than the 8-byte header length"),
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER_BYTES {
        return Err(bad(
            &p,
            format!("header length {n} bytes exceeds the {MAX_HEADER_BYTES}-byte limit"),
        ));
    }
    if len != 8 + n || s.header_bytes != len {
        return Err(bad(
            &p,
            format!(
                "stored header is {len} bytes; its length field says 8 + {n} and the manifest {}: the file is truncated or not a header; run `llm-mem fetch` again",
                s.header_bytes
            ),
        ));
    }
    let data_len = match s.size {
        Some(size) if size < len => {
            return Err(bad(
                &p,
                format!(
                    "the manifest says the shard is {size} bytes, less than its {len}-byte header"
                ),
            ))
        }
        Some(size) => size - len,
        None => u64::MAX,
    };
    parse_header(&bytes[8..], data_len, &p)
}

/// Paths of the checkpoint files a folder holds (for messages).
pub fn checkpoint_files(dir: &Path) -> Vec<PathBuf> {
    [SINGLE_FILE, INDEX_FILE]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.is_file())
        .collect()
}
