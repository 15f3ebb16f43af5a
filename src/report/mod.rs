//! Output formats, one file each: `human` (table), `json` (schema_version 1, written
//! from the wire types of `wire`), `csv`; probe reports: `probe_md`, `probe_csv`,
//! `probe_svg`; validation reports: `validate_human`, `validate_json`, `validate_md`,
//! `validate_svg`. They only format an [`Estimate`](crate::estimate::Estimate), a
//! comparison or a [`Validation`](crate::validate::Validation); no computation here.

pub mod csv;
pub mod human;
pub mod json;
pub mod probe_csv;
pub mod probe_md;
pub mod probe_svg;
pub mod validate_human;
pub mod validate_json;
pub mod validate_md;
pub mod validate_svg;
mod wire;

use crate::units::bytes::Bytes;

/// Whether the peak fits a GPU's memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub gpu: String,
    pub capacity_bytes: Bytes,
    pub fits: bool,
    /// capacity − peak device memory (negative when it does not fit).
    pub headroom_bytes: i64,
}

impl Fit {
    pub fn new(gpu: impl Into<String>, capacity: Bytes, need: Bytes) -> Fit {
        Fit {
            gpu: gpu.into(),
            capacity_bytes: capacity,
            fits: need <= capacity,
            headroom_bytes: capacity.get() as i64 - need.get() as i64,
        }
    }
}
