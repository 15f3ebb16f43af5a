//! The candle runtime profile: the probe's training program over an abstract tensor API
//! (`program`) and its symbolic replay (`tape`).

pub mod program;
pub mod tape;
