//! The distributed layout a run asks for: parallel degrees (dp, tp, pp, cp, ep, vpp),
//! ZeRO / FSDP sharding, offload, the distributed optimizer, micro-batches, the pipeline
//! split and communication buffers, with the one `validate` that rejects impossible
//! layouts against the model. What each rank then holds is `distributed`'s business.

use serde::Deserialize;

use crate::arch::ModelSpec;
use crate::error::{Error, Result};
use crate::units::bytes::{Bytes, MIB};
use crate::workload::{Attn, Task, Workload};

/// The largest parallel degree (and micro-batch count) accepted: far above any run,
/// low enough that no product of degrees can overflow.
pub const MAX_DEGREE: u64 = 1 << 20;
/// The most ranks a layout may have (16 Mi GPUs).
pub const MAX_WORLD: u64 = 1 << 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsdpMode {
    /// FULL_SHARD (ZeRO-3-like).
    Full,
    /// SHARD_GRAD_OP (ZeRO-2-like: parameters stay gathered between forward and backward).
    GradOp,
    /// HYBRID_SHARD: full sharding inside a group, replication across groups.
    Hybrid,
}

impl std::str::FromStr for FsdpMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<FsdpMode> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "full" | "full-shard" => Ok(FsdpMode::Full),
            "grad-op" | "shard-grad-op" => Ok(FsdpMode::GradOp),
            "hybrid" | "hybrid-shard" => Ok(FsdpMode::Hybrid),
            _ => Err(Error::invalid("fsdp", s, "full, grad-op, hybrid")),
        }
    }
}

/// The largest bucket or live-parameter count accepted (2⁴⁰ elements, 2 TiB in half
/// precision: beyond any model this tool sizes); the estimate further caps each
/// buffer by the parameters that exist.
pub const MAX_BUCKET_ELEMENTS: u64 = 1 << 40;

/// Communication buffers and framework knobs, explicit and overridable.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Buffers {
    /// NCCL's own buffers per process group of size > 1 (outside the allocator).
    pub nccl_per_group: Bytes,
    /// DeepSpeed `reduce_bucket_size` (elements; the gradient bucket, half precision).
    pub zero_reduce_bucket: u64,
    /// DeepSpeed `allgather_bucket_size` (elements; ZeRO-1/2 parameter all-gather).
    pub zero_allgather_bucket: u64,
    /// DeepSpeed `stage3_prefetch_bucket_size` (elements).
    pub zero3_prefetch_bucket: u64,
    /// DeepSpeed `stage3_max_live_parameters` (elements): cap on gathered parameters.
    pub zero3_max_live_params: u64,
    /// torch DDP `gradient_as_bucket_view`; false (the default) keeps a second copy of
    /// the gradients in the reducer's buckets.
    pub ddp_bucket_view: bool,
    /// FSDP HYBRID_SHARD group size (default: min(dp, 8), one node).
    pub fsdp_shard_group: Option<u64>,
}

impl Default for Buffers {
    fn default() -> Self {
        Buffers {
            nccl_per_group: Bytes(128 * MIB),
            zero_reduce_bucket: 500_000_000,
            zero_allgather_bucket: 500_000_000,
            zero3_prefetch_bucket: 50_000_000,
            zero3_max_live_params: 1_000_000_000,
            ddp_bucket_view: false,
            fsdp_shard_group: None,
        }
    }
}

impl Buffers {
    /// Bucket sizes within [`MAX_BUCKET_ELEMENTS`], named by their setting keys.
    pub fn validate(&self) -> Result<()> {
        for (key, v) in [
            ("zero_reduce_bucket", self.zero_reduce_bucket),
            ("zero_allgather_bucket", self.zero_allgather_bucket),
            ("zero3_prefetch_bucket", self.zero3_prefetch_bucket),
            ("zero3_max_live_params", self.zero3_max_live_params),
        ] {
            if v > MAX_BUCKET_ELEMENTS {
                return Err(Error::invalid(
                    key,
                    v,
                    format!("at most {MAX_BUCKET_ELEMENTS} elements (2^40)"),
                ));
            }
        }
        Ok(())
    }

    /// Every extra term off: what DeepSpeed's and Megatron's closed-form estimators
    /// count.
    pub fn none() -> Self {
        Buffers {
            nccl_per_group: Bytes(0),
            zero_reduce_bucket: 0,
            zero_allgather_bucket: 0,
            zero3_prefetch_bucket: 0,
            zero3_max_live_params: MAX_BUCKET_ELEMENTS,
            ddp_bucket_view: true,
            fsdp_shard_group: None,
        }
    }
}

/// A parallel layout. Degrees multiply to the world size.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Layout {
    pub dp: u64,
    pub tp: u64,
    pub pp: u64,
    pub cp: u64,
    pub ep: u64,
    /// Virtual pipeline stages per rank (interleaved 1F1B); 1 = plain 1F1B.
    pub vpp: u64,
    pub sequence_parallel: bool,
    /// DeepSpeed ZeRO stage (0 = off).
    pub zero: u8,
    pub fsdp: Option<FsdpMode>,
    /// 1 = FSDP1 flat parameters (padded to the shard count), 2 = FSDP2 per-parameter.
    pub fsdp_version: u8,
    /// accelerate's upcast of half-precision trainable FSDP parameters to fp32 under
    /// mixed precision (`distributed::recipe`).
    pub fsdp_upcast: bool,
    /// Gradient accumulation under FSDP's `no_sync` (`distributed::fsdp_states`): the
    /// accumulating micro-batches keep unsharded gradients.
    pub fsdp_no_sync: bool,
    /// The embedding and the output head sharded as FSDP units of their own
    /// (torchtune `custom_sharded_layers: ['tok_embeddings', 'output']`), not in the
    /// root unit (`distributed::fsdp_states`).
    pub fsdp_separate_embeddings: bool,
    pub offload_optimizer: bool,
    pub offload_params: bool,
    pub distributed_optimizer: bool,
    /// Micro-batches per pipeline flush (default: --grad-accum).
    pub micro_batches: Option<u64>,
    /// Decoder layers per pipeline stage (uneven splits); default: even, remainder to
    /// the middle stages.
    pub pp_layers: Option<Vec<u64>>,
    pub buffers: Buffers,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            dp: 1,
            tp: 1,
            pp: 1,
            cp: 1,
            ep: 1,
            vpp: 1,
            sequence_parallel: false,
            zero: 0,
            fsdp: None,
            fsdp_version: 2,
            fsdp_upcast: false,
            fsdp_no_sync: false,
            fsdp_separate_embeddings: false,
            offload_optimizer: false,
            offload_params: false,
            distributed_optimizer: false,
            micro_batches: None,
            pp_layers: None,
            buffers: Buffers::default(),
        }
    }
}

impl Layout {
    /// Ranks: dp · tp · pp · cp (bounded by `validate`: at most [`MAX_WORLD`]).
    pub fn world(&self) -> u64 {
        self.dp * self.tp * self.pp * self.cp
    }

    /// Whether anything beyond one plain GPU is asked for.
    pub fn is_distributed(&self) -> bool {
        self.world() > 1 || self.zero > 0 || self.fsdp.is_some() || self.distributed_optimizer
    }

    /// Ranks sharing (sharding) the model states.
    pub fn shard_degree(&self) -> u64 {
        match self.fsdp {
            Some(FsdpMode::Hybrid) => self
                .buffers
                .fsdp_shard_group
                .unwrap_or(self.dp.min(8))
                .max(1),
            _ => self.dp,
        }
    }

    /// Decoder layers of each pipeline stage.
    pub fn stage_layers(&self, layers: u64) -> Vec<u64> {
        if let Some(v) = &self.pp_layers {
            return v.clone();
        }
        let base = layers / self.pp;
        let mut v = vec![base; self.pp as usize];
        // the remainder goes to the middle stages, which hold neither embedding nor head
        let mut rem = layers - base * self.pp;
        let mut i = if self.pp > 2 { 1 } else { 0 };
        while rem > 0 {
            v[i] += 1;
            rem -= 1;
            i = (i + 1) % self.pp as usize;
        }
        v
    }

    /// Reject impossible layouts, naming the value and what is accepted.
    pub fn validate(&self, spec: &ModelSpec, w: &Workload) -> Result<()> {
        self.check_degrees()?;
        self.check_task(spec, w)?;
        self.check_tensor_parallel(spec, w)?;
        self.check_pipeline(spec)?;
        self.check_context(w)?;
        self.check_sharding()?;
        self.buffers.validate()
    }

    /// Every degree is at least 1.
    fn check_degrees(&self) -> Result<()> {
        for (key, v) in [
            ("dp", self.dp),
            ("tp", self.tp),
            ("pp", self.pp),
            ("cp", self.cp),
            ("ep", self.ep),
            ("vpp", self.vpp),
            ("micro_batches", self.micro_batches.unwrap_or(1)),
            (
                "fsdp_shard_group",
                self.buffers.fsdp_shard_group.unwrap_or(1),
            ),
        ] {
            if v == 0 || v > MAX_DEGREE {
                return Err(Error::invalid(
                    key,
                    v,
                    format!("an integer >= 1 and <= {MAX_DEGREE}"),
                ));
            }
        }
        let world = [self.tp, self.pp, self.cp]
            .iter()
            .try_fold(self.dp, |a, &d| a.checked_mul(d))
            .filter(|&w| w <= MAX_WORLD);
        if world.is_none() {
            return Err(Error::invalid(
                "dp x tp x pp x cp",
                format!("{} x {} x {} x {}", self.dp, self.tp, self.pp, self.cp),
                format!("at most {MAX_WORLD} ranks"),
            ));
        }
        Ok(())
    }

    /// What the model, the runtime and the task allow: experts need an MoE model, the
    /// candle runtime is single-device, serving takes only tp and replicas.
    fn check_task(&self, spec: &ModelSpec, w: &Workload) -> Result<()> {
        if self.ep > 1 {
            let Some(m) = spec.moe else {
                return layout(format!(
                    "--ep {} needs a mixture-of-experts model; {} is dense, use --ep 1",
                    self.ep, spec.name
                ));
            };
            if w.task != Task::Train {
                return layout(format!(
                    "--ep {} is modelled for training; serving (--task infer) takes --tp and --dp",
                    self.ep
                ));
            }
            if !self.dp.is_multiple_of(self.ep) {
                return layout(format!(
                    "--ep {} must divide --dp {}: expert-parallel ranks are carved out of the data-parallel ones (Megatron-Core's expert_model_parallel_size)",
                    self.ep, self.dp
                ));
            }
            if !m.experts.is_multiple_of(self.ep) {
                return layout(format!(
                    "--ep {} must divide the {} routed experts of {}",
                    self.ep, m.experts, spec.name
                ));
            }
            if self.zero > 0 || self.fsdp.is_some() || self.distributed_optimizer {
                return layout(format!(
                    "--ep {} with ZeRO, FSDP or the distributed optimizer: their sharding of the expert parameters over the expert-data-parallel group (dp / ep) is not modelled yet; expert parallelism is modelled with replicated states (DDP / Megatron without --distributed-optimizer)",
                    self.ep
                ));
            }
            if w.moe_imbalance > self.ep as f64 {
                return layout(format!(
                    "--moe-imbalance {} above --ep {}: the busiest rank cannot receive more than every rank's rows",
                    w.moe_imbalance, self.ep
                ));
            }
        }
        if w.runtime == crate::workload::Runtime::Candle && self.is_distributed() {
            return layout("the candle runtime runs the probe on one device; use --runtime torch for distributed layouts".into());
        }
        if w.task != Task::Train {
            let d = Layout::default();
            let only_tp = self.pp == 1
                && self.cp == 1
                && self.zero == 0
                && self.fsdp.is_none()
                && !self.offload_optimizer
                && !self.offload_params
                && !self.distributed_optimizer
                && !self.sequence_parallel
                && self.vpp == d.vpp;
            if !only_tp {
                return layout(
                    "serving (--task infer) models tensor parallelism (--tp) and independent replicas (--dp); \
                     pipeline, context, ZeRO/FSDP and offload layouts are for training"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// Megatron tensor parallelism splits heads, kv heads and the MLP width; sequence
    /// parallelism needs tp > 1. Training needs tp to divide the kv heads (Megatron-LM
    /// core_r0.12 `megatron/training/arguments.py`: `num_query_groups %
    /// tensor_model_parallel_size == 0`); serving may replicate them when tp is a
    /// multiple of the kv heads (vLLM `model_executor/models/llama.py`:
    /// `num_kv_heads = max(1, total_num_kv_heads // tp_size)`).
    fn check_tensor_parallel(&self, spec: &ModelSpec, w: &Workload) -> Result<()> {
        let t = self.tp;
        if let (true, Some(m)) = (t > 1, spec.moe) {
            // every expert's intermediate width split over the tensor-parallel ranks
            // (Megatron-Core's expert_tensor_parallel_size = tp by default, vLLM's
            // FusedMoE under TP): it must divide them
            for (what, width) in [
                ("routed experts' intermediate", Some(m.expert_intermediate)),
                ("shared expert's intermediate", m.shared_expert),
            ] {
                if let Some(width) = width.filter(|w| !w.is_multiple_of(t)) {
                    return layout(format!(
                        "--tp {t} does not divide the {width} channels of the {what} width of {}; use a divisor of {width}",
                        spec.name
                    ));
                }
            }
            if w.task == Task::Train && self.sequence_parallel {
                // Megatron-Core gathers the sequence-parallel tokens over the TP group
                // before the dispatch (token_dispatcher.py): not modelled
                return layout(format!(
                    "--tp {t} with sequence parallelism on the mixture-of-experts model {}: the token all-gather before Megatron-Core's expert dispatch is not modelled yet; train it without --sequence-parallel",
                    spec.name
                ));
            }
        }
        if !spec.heads.is_multiple_of(t) {
            return layout(format!(
                "--tp {t} does not divide the {} attention heads of {}; use a divisor of {}",
                spec.heads, spec.name, spec.heads
            ));
        }
        if w.task == Task::Train && !spec.kv_heads.is_multiple_of(t) {
            return layout(format!(
                "--tp {t} does not divide the {} key/value heads of {}: Megatron-LM training needs num_query_groups % tp == 0; use a divisor of {} (serving may replicate key/value heads)",
                spec.kv_heads, spec.name, spec.kv_heads
            ));
        }
        if !spec.kv_heads.is_multiple_of(t) && !t.is_multiple_of(spec.kv_heads) {
            return layout(format!(
                "--tp {t} neither divides nor is a multiple of the {} key/value heads of {}",
                spec.kv_heads, spec.name
            ));
        }
        if !spec.intermediate.is_multiple_of(t) {
            return layout(format!(
                "--tp {t} does not divide the MLP width {} of {}",
                spec.intermediate, spec.name
            ));
        }
        if self.sequence_parallel && t == 1 {
            return layout("--sequence-parallel needs --tp > 1".into());
        }
        Ok(())
    }

    /// Pipeline stages partition the decoder layers; interleaving needs an even split.
    fn check_pipeline(&self, spec: &ModelSpec) -> Result<()> {
        if self.pp > spec.layers() {
            return layout(format!(
                "--pp {} exceeds the {} decoder layers of {}",
                self.pp,
                spec.layers(),
                spec.name
            ));
        }
        if let Some(v) = &self.pp_layers {
            if v.len() as u64 != self.pp || v.iter().sum::<u64>() != spec.layers() || v.contains(&0)
            {
                return layout(format!(
                    "--pp-layers {:?} must list {} stages of >= 1 layer summing to {}",
                    v,
                    self.pp,
                    spec.layers()
                ));
            }
        }
        if self.vpp > 1 && (self.pp == 1 || !spec.layers().is_multiple_of(self.pp * self.vpp)) {
            return layout(format!(
                "--vpp {} needs --pp > 1 and layers ({}) divisible by pp × vpp ({})",
                self.vpp,
                spec.layers(),
                self.pp * self.vpp
            ));
        }
        Ok(())
    }

    /// Context parallelism (ring attention) splits the sequence in 2·cp chunks and runs
    /// on flash/SDPA kernels.
    fn check_context(&self, w: &Workload) -> Result<()> {
        if w.optimizer_in_bwd && (self.zero > 0 || self.pp > 1 || self.distributed_optimizer) {
            // torchtune's OptimizerInBackward steps plain torch optimizers from autograd
            // hooks; DeepSpeed's and Megatron's optimizers (and pipeline schedules) step
            // after the whole backward
            return layout(
                "--optimizer-in-bwd is torchtune's per-parameter step (single device or FSDP); not with --zero, --pp or --distributed-optimizer".into(),
            );
        }
        if self.cp > 1 {
            if !w.seq_len.is_multiple_of(2 * self.cp) {
                return layout(format!(
                    "--cp {} needs --seq-len ({}) divisible by 2 × cp",
                    self.cp, w.seq_len
                ));
            }
            if w.attn == Attn::Eager {
                return layout(
                    "--cp > 1 runs ring attention on flash/SDPA kernels; use --attn sdpa or flash"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// ZeRO, FSDP and Megatron's distributed optimizer exclude each other; offload and
    /// hybrid sharding need the recipe that implements them.
    fn check_sharding(&self) -> Result<()> {
        if self.zero > 3 {
            return Err(Error::invalid("zero", self.zero, "0, 1, 2, 3"));
        }
        if self.zero > 0 && self.fsdp.is_some() {
            return layout(
                "--zero and --fsdp are two implementations of the same sharding; pick one".into(),
            );
        }
        if self.zero >= 2 && self.pp > 1 {
            return layout(format!("DeepSpeed supports pipeline parallelism only with ZeRO stage 0 or 1 (got --zero {})", self.zero));
        }
        if self.distributed_optimizer && (self.zero > 0 || self.fsdp.is_some()) {
            return layout("--distributed-optimizer is Megatron's optimizer sharding; do not combine it with --zero or --fsdp".into());
        }
        if self.offload_params && self.zero != 3 && self.fsdp.is_none() {
            return layout("--offload-params needs --zero 3 or --fsdp".into());
        }
        if self.offload_optimizer && self.zero == 0 {
            return layout(if self.fsdp.is_some() {
                "FSDP offloads parameters, gradients and optimizer together: use --offload-params"
                    .into()
            } else {
                "--offload-optimizer needs --zero 1, 2 or 3".into()
            });
        }
        if let Some(FsdpMode::Hybrid) = self.fsdp {
            let g = self.shard_degree();
            if !self.dp.is_multiple_of(g) {
                return layout(format!(
                    "FSDP hybrid shard group {g} does not divide --dp {}",
                    self.dp
                ));
            }
        }
        if !(1..=2).contains(&self.fsdp_version) {
            return Err(Error::invalid(
                "fsdp_version",
                self.fsdp_version,
                "1 (flat parameters) or 2 (per-parameter)",
            ));
        }
        Ok(())
    }
}

/// An impossible layout, with the reason.
fn layout(m: String) -> Result<()> {
    Err(Error::Layout(m))
}
