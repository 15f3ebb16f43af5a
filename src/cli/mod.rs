//! The command-line glue of the binary (not part of the library).

pub mod probe;
