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
    let shards = shard_files(index)?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (shard, names) in &shards {
        let p = dir.join(shard);
        let tensors = read_header(&p)?;
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
    let v: Value = serde_json::from_str(&text).map_err(|e| {
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
/// `model.safetensors.index.json` + shards. `Ok(None)` when the folder has neither, or
/// when a shard named by the index is absent (a partial download: the config still
/// describes the model). Corrupt headers are errors.
pub fn read_checkpoint(dir: &Path) -> Result<Option<Vec<TensorInfo>>> {
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return read_header(&single).map(Some);
    }
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let shards = shard_files(&index)?;
        if shards.keys().any(|s| !dir.join(s).is_file()) {
            return Ok(None);
        }
        return read_index(&index).map(Some);
    }
    Ok(None)
}

/// Paths of the checkpoint files a folder holds (for messages).
pub fn checkpoint_files(dir: &Path) -> Vec<PathBuf> {
    [SINGLE_FILE, INDEX_FILE]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.is_file())
        .collect()
}
