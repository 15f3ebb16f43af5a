//! Element types and their sizes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Storage dtype of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F64,
    F32,
    BF16,
    F16,
    /// fp8 (e4m3 / e5m2): one byte.
    F8,
    I8,
    U8,
    I16,
    I32,
    I64,
    Bool,
}

impl DType {
    pub fn size(self) -> u64 {
        match self {
            DType::F64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::BF16 | DType::F16 | DType::I16 => 2,
            DType::F8 | DType::I8 | DType::U8 | DType::Bool => 1,
            DType::I64 => 8,
        }
    }

    /// safetensors / torch names.
    pub fn from_name(s: &str) -> Option<DType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f64" | "fp64" | "float64" | "double" => DType::F64,
            "f32" | "fp32" | "float32" | "float" => DType::F32,
            "bf16" | "bfloat16" => DType::BF16,
            "f16" | "fp16" | "float16" | "half" => DType::F16,
            "f8" | "fp8" | "f8_e4m3" | "f8_e5m2" | "float8_e4m3fn" | "float8_e5m2" => DType::F8,
            "i8" | "int8" => DType::I8,
            "u8" | "uint8" => DType::U8,
            "i16" | "int16" => DType::I16,
            "i32" | "int32" => DType::I32,
            "i64" | "int64" => DType::I64,
            "bool" => DType::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::F64 => "fp64",
            DType::F32 => "fp32",
            DType::BF16 => "bf16",
            DType::F16 => "fp16",
            DType::F8 => "fp8",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::Bool => "bool",
        };
        f.write_str(s)
    }
}
