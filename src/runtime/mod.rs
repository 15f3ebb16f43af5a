//! Runtime profiles: what each op of a step keeps alive, per framework. `torch` is the
//! per-tensor ledger of PyTorch's autograd save rules; `candle` replays candle 0.11.1's
//! graph on symbolic tensors. Profiles return costs; `estimate` assembles the estimate.

pub mod candle;
pub mod torch;
