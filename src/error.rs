//! The library's error type. Every variant names the offending value and what is accepted.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {what} {value:?}; accepted: {accepted}")]
    InvalidValue {
        what: String,
        value: String,
        accepted: String,
    },

    #[error("{path}: {message}")]
    Config { path: String, message: String },

    #[error("architecture {model_type:?} is not supported yet ({reason}); supported model_type values: {supported}")]
    Unsupported {
        model_type: String,
        reason: String,
        supported: String,
    },

    #[error("model {name:?} not found: it is not a built-in preset (see `llm-mem models`), not a path to a config.json or its folder, and not a model id in the local Hugging Face cache ({cache}){hub}")]
    ModelNotFound {
        name: String,
        cache: String,
        /// Why the Hub was not asked (empty when it was not a Hub id).
        hub: String,
    },

    /// A Hugging Face Hub request failed; `message` says why and what to do.
    #[error("{model}: {message}")]
    Hub { model: String, message: String },

    /// The OS error is part of the message, not a `source` (an error chain printed with
    /// `{:#}` would repeat it).
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },

    #[error("{path}: invalid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },

    #[error("impossible layout: {0}")]
    Layout(String),

    #[error(
        "out of memory: the step needed {needed} bytes above the baseline; limit {limit} bytes"
    )]
    OutOfMemory { needed: u64, limit: u64 },

    #[error("memory meter: {0}")]
    Meter(String),

    #[error("{path}: invalid probe plan: {message}")]
    Plan { path: String, message: String },

    #[error("{path}: invalid calibration file: {message}")]
    Calibration { path: String, message: String },

    #[error("{path}: invalid measurement file: {message}")]
    Measurement { path: String, message: String },

    #[error("cannot fit {what}: {reason}")]
    Fit { what: String, reason: String },

    /// The device ran out of memory (CUDA_ERROR_OUT_OF_MEMORY, a cuBLAS allocation...).
    #[error("out of memory on the device: {0}")]
    DeviceOutOfMemory(String),

    #[error("built without CUDA support; see README (\"Measuring on a GPU\": rebuild with `--features cuda`, e.g. scripts/build-cuda.sh)")]
    NoCuda,

    #[error("cuda: {0}")]
    Cuda(String),

    #[error("probe failed: {0}")]
    Probe(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }

    pub fn invalid(
        what: impl Into<String>,
        value: impl ToString,
        accepted: impl Into<String>,
    ) -> Error {
        Error::InvalidValue {
            what: what.into(),
            value: value.to_string(),
            accepted: accepted.into(),
        }
    }
}
