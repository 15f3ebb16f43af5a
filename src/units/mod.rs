//! Units: the byte-count type, element types, the GPU table.

pub mod bytes;
pub mod dtype;
pub mod gpu;
