//! The v1 wire types of every `--json` document (the schema is listed in
//! `report/json.rs`, which fills these from the domain types).
//!
//! They exist so that the output depends only on this file: domain types are free to
//! rename fields, reorder them or change representation, and the compiler then points
//! at the conversion in `json.rs` instead of the schema changing silently. Every name
//! here is part of schema version 1: fields may be added, never renamed or removed.
//!
//! The single-GPU estimate is written in field order. The distributed estimate, the plan
//! and the models list are written with the keys of every object in alphabetical order
//! (v1 produced them through sorted JSON maps); their top-level structs are declared in
//! that order too.

use serde::Serialize;

/// `tool`: who wrote the document.
#[derive(Serialize)]
pub(crate) struct Tool {
    pub name: &'static str,
    pub version: &'static str,
}

/// `estimate --json` on one GPU.
#[derive(Serialize)]
pub(crate) struct EstimateDoc<'a> {
    pub schema_version: u32,
    pub tool: Tool,
    pub model: Model<'a>,
    pub workload: Workload<'a>,
    pub overheads: Overheads,
    pub peak: Peak<'a>,
    pub components_at_peak: Components,
    pub activations: Activations,
    pub timeline: Vec<Event<'a>>,
    /// null without `--gpu` / `--gpu-memory`.
    pub fit: Option<Fit<'a>>,
    pub warnings: &'a [String],
}

/// `model`: the model as run (layers after `--layers`), exact parameter counts.
#[derive(Serialize)]
pub(crate) struct Model<'a> {
    pub name: &'a str,
    pub family: &'a str,
    pub layers: u64,
    pub hidden: u64,
    pub params_total: u64,
    pub params_trainable: u64,
    /// Parameters a token runs through (top-k routed experts per layer for an MoE;
    /// the total for a dense model).
    pub params_active: u64,
    /// A vision-language model's vision side; null for a text model.
    pub vision: Option<Vision>,
}

/// `model.vision`: the tower and projector parameters, the images per sequence, the
/// image tokens each adds inside the sequence, and what trains on the vision side.
#[derive(Serialize)]
pub(crate) struct Vision {
    pub params: u64,
    pub images: u64,
    pub tokens_per_image: u64,
    /// `"frozen"`, `"projector"`, `"lora"` or `"full"`.
    pub train: &'static str,
}

/// `workload`: the settings of the run under their v1 names (`precision` is `--dtype`'s
/// value).
#[derive(Serialize)]
pub(crate) struct Workload<'a> {
    pub task: &'static str,
    pub method: &'static str,
    /// null for full fine-tuning.
    pub lora: Option<Lora<'a>>,
    pub precision: &'static str,
    pub master_weights: bool,
    /// `"ZeRO"`, `"Megatron"` or `"FSDP MixedPrecision"` when the layout's framework
    /// keeps fp32 master weights that `master_weights` (the user's setting) did not ask
    /// for; null otherwise (always null on one GPU).
    pub master_weights_implied_by: Option<&'static str>,
    pub optimizer: &'static str,
    pub batch: u64,
    pub seq_len: u64,
    pub grad_accum: u64,
    pub attn: &'static str,
    pub grad_ckpt: &'static str,
    pub loss: &'static str,
    pub runtime: &'static str,
    pub device: &'static str,
    pub infer: Infer,
}

#[derive(Serialize)]
pub(crate) struct Lora<'a> {
    pub rank: u64,
    pub alpha: f64,
    pub targets: LoraTargets<'a>,
    pub double_quant: bool,
    pub dropout: f64,
    /// The peft tuner (`lora`, `dora`, `lora-fa`, `adalora`, `vera`, `ia3`).
    pub peft: &'static str,
}

/// `"attn"`, `"all-linear"` or `{"names": [...]}`.
#[derive(Serialize)]
pub(crate) enum LoraTargets<'a> {
    #[serde(rename = "attn")]
    Attn,
    #[serde(rename = "all-linear")]
    AllLinear,
    #[serde(rename = "names")]
    Names(&'a [String]),
}

#[derive(Serialize)]
pub(crate) struct Infer {
    pub prompt_len: u64,
    pub gen_len: u64,
    pub concurrency: u64,
    /// `"f32"`, `"bf16"`, `"f16"` or `"f8"` (the dtype's storage name).
    pub kv_dtype: &'static str,
    /// null: the prompt is prefilled in one pass.
    pub prefill_chunk: Option<u64>,
}

/// `overheads`: bytes, except `allocator_fragmentation` (a fraction).
#[derive(Serialize)]
pub(crate) struct Overheads {
    pub cuda_context: u64,
    pub cublas_workspace: u64,
    pub allocator_fragmentation: f64,
    pub nccl: u64,
}

#[derive(Serialize)]
pub(crate) struct Peak<'a> {
    pub allocated_bytes: u64,
    pub reserved_bytes: u64,
    pub device_bytes: u64,
    pub phase: &'static str,
    pub event: &'a str,
}

/// `components_at_peak`: bytes by kind; they sum to `peak.device_bytes`.
#[derive(Serialize)]
pub(crate) struct Components {
    pub weights: u64,
    pub gradients: u64,
    pub optimizer_state: u64,
    pub master_weights: u64,
    pub activations: u64,
    pub logits_and_loss: u64,
    pub kv_cache: u64,
    pub temporaries: u64,
    pub overhead: u64,
}

#[derive(Serialize)]
pub(crate) struct Activations {
    /// One decoder layer's saved bytes; a mixed stack's mean (non-layer + layers ×
    /// per-layer = total).
    pub per_layer_bytes: u64,
    pub non_layer_bytes: u64,
    pub total_bytes: u64,
}

/// One entry of `timeline`.
#[derive(Serialize)]
pub(crate) struct Event<'a> {
    pub phase: &'static str,
    pub event: &'a str,
    pub allocated_bytes: u64,
    pub reserved_bytes: u64,
    pub device_bytes: u64,
}

#[derive(Serialize)]
pub(crate) struct Fit<'a> {
    pub gpu: &'a str,
    pub capacity_bytes: u64,
    pub fits: bool,
    /// capacity − peak device memory (negative when it does not fit).
    pub headroom_bytes: i64,
}

/// `estimate --json` with a distributed layout: the worst rank's estimate at the top
/// level, so that readers of single-GPU documents keep working, plus the layout and
/// every rank class. Keys sorted.
#[derive(Serialize)]
pub(crate) struct DistributedDoc<'a> {
    pub activations: Activations,
    pub components_at_peak: Components,
    pub fit: Option<Fit<'a>>,
    /// Host memory per node of an offload layout; null without offload.
    pub host_memory: Option<HostMemory>,
    pub layout: Layout<'a>,
    pub model: Model<'a>,
    /// Model states of the worst rank.
    pub model_states_bytes: u64,
    pub overheads: Overheads,
    pub peak: Peak<'a>,
    pub per_rank: Vec<RankClass<'a>>,
    pub schema_version: u32,
    pub timeline: Vec<Event<'a>>,
    pub tool: Tool,
    pub warnings: &'a [String],
    pub workload: Workload<'a>,
    pub world: u64,
    /// Index into `per_rank`.
    pub worst_rank: u64,
}

/// `host_memory`: what an offload layout keeps in CPU memory per node. Keys sorted.
#[derive(Serialize)]
pub(crate) struct HostMemory {
    /// What is counted and after whose formula, in words.
    pub basis: &'static str,
    pub bytes_per_node: u64,
    pub gpus_per_node: u64,
}

/// One entry of `per_rank`: a rank class (pipeline stage). Keys sorted.
#[derive(Serialize)]
pub(crate) struct RankClass<'a> {
    pub activations: Activations,
    pub components_at_peak: Components,
    pub layers: u64,
    pub model: Model<'a>,
    pub model_states_bytes: u64,
    pub name: &'a str,
    pub peak: Peak<'a>,
    /// Ranks in this class.
    pub ranks: u64,
    pub stage: u64,
    pub timeline: Vec<Event<'a>>,
    pub warnings: &'a [String],
}

/// `layout`: the parallel layout as resolved (defaults filled in). Keys sorted.
#[derive(Serialize)]
pub(crate) struct Layout<'a> {
    pub buffers: Buffers,
    pub cp: u64,
    pub distributed_optimizer: bool,
    pub dp: u64,
    pub ep: u64,
    /// `"full"`, `"grad-op"`, `"hybrid"` or null.
    pub fsdp: Option<&'static str>,
    pub fsdp_version: u8,
    pub micro_batches: Option<u64>,
    pub offload_optimizer: bool,
    pub offload_params: bool,
    pub pp: u64,
    pub pp_layers: Option<&'a [u64]>,
    pub sequence_parallel: bool,
    pub tp: u64,
    pub vpp: u64,
    pub zero: u8,
}

/// `layout.buffers`: bytes (`nccl_per_group`) and DeepSpeed bucket sizes in elements.
/// Keys sorted.
#[derive(Serialize)]
pub(crate) struct Buffers {
    pub ddp_bucket_view: bool,
    pub fsdp_shard_group: Option<u64>,
    pub nccl_per_group: u64,
    pub zero3_max_live_params: u64,
    pub zero3_prefetch_bucket: u64,
    pub zero_allgather_bucket: u64,
    pub zero_reduce_bucket: u64,
}

/// `plan --json` (training and serving). Keys sorted.
#[derive(Serialize)]
pub(crate) struct PlanDoc<'a> {
    pub capacity_bytes: u64,
    /// The `--gpu` name, or the `--gpu-memory` amount in words.
    pub gpu: &'a str,
    pub model: &'a str,
    pub result: PlanResult<'a>,
    pub schema_version: u32,
    pub tool: Tool,
}

/// `result`. Keys sorted.
#[derive(Serialize)]
pub(crate) struct PlanResult<'a> {
    pub cost: &'a str,
    /// The precision recipe every layout is evaluated under, in words.
    pub precision: &'a str,
    pub evaluations: u64,
    pub fits: Vec<Candidate>,
    pub largest_micro_batch: Option<Candidate>,
    pub layouts_considered: u64,
    /// `[seq_len, candidate]`; null for serving or with `--max-seq 0`.
    pub longest_sequence: Option<(u64, Candidate)>,
    pub space: &'a str,
}

/// One layout of a plan. Keys sorted.
#[derive(Serialize)]
pub(crate) struct Candidate {
    pub cp: u64,
    pub dp: u64,
    /// Expert-parallel degree (1 but for a mixture-of-experts layout).
    pub ep: u64,
    pub grad_ckpt: &'static str,
    /// Host memory per node of an offload layout; null without offload.
    pub host_bytes_per_node: Option<u64>,
    /// Serving: concurrent sequences per replica.
    pub max_micro_batch: u64,
    /// `max_micro_batch` is the search limit (`--max-batch`): a larger one may fit.
    pub max_micro_batch_at_search_limit: bool,
    /// `"none"`, `"optimizer"` or `"optimizer-and-params"`.
    pub offload: &'static str,
    pub peak_bytes: u64,
    pub pp: u64,
    /// Megatron sequence parallelism (the plan turns it on whenever tp > 1).
    pub sequence_parallel: bool,
    /// `"ddp"`, `"distributed-optimizer"`, `"zero1"`, `"zero2"`, `"zero3"`,
    /// `"fsdp-full"` or `"fsdp-grad-op"`.
    pub sharding: &'static str,
    pub tp: u64,
    pub world: u64,
}

/// One entry of `models --json` (a bare array). Keys sorted.
#[derive(Serialize)]
pub(crate) struct ModelEntry<'a> {
    pub family: &'static str,
    pub hf_id: &'a str,
    pub name: &'a str,
    pub params_total: u64,
    /// Parameters a token runs through (top-k experts for an MoE; embedding and head
    /// counted).
    pub params_active: u64,
    /// `dense` | `moe` | `hybrid`.
    pub kind: &'static str,
    /// e.g. `"gptq 4-bit"`; null for unquantized checkpoints.
    pub quantization: Option<&'a str>,
}
