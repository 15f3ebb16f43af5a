//! Probes: real candle training steps, measured.
pub mod model;
