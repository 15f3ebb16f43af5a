//! `Workload`: what the user runs on the model — task, method, precision, optimizer,
//! shapes, attention kernel, checkpointing, loss, runtime, inference shapes.
//!
//! Built from CLI flags or a config file and validated here (`Workload::validate`), so
//! the estimator core only ever sees consistent values.

pub mod import;
pub mod layout;
pub mod overhead;
pub mod profile;
pub mod settings;

use serde::{Deserialize, Serialize};

use crate::arch::{Adapter, LoraTargets, ModelSpec};
use crate::error::{Error, Result};
use crate::units::dtype::DType;

macro_rules! choice_enum {
    ($(#[$m:meta])* $name:ident, $what:literal, { $($(#[$vm:meta])* $var:ident => $s:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($(#[$vm])* #[serde(rename = $s)] $var),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }
            pub fn accepted() -> String {
                [$($s),+].join(", ")
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<$name> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($s $(| $alias)* => Ok($name::$var),)+
                    _ => Err(Error::invalid($what, s, $name::accepted())),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

choice_enum!(
/// `--vision`: what trains on a vision-language model's vision side (the tower and
/// the projector in front of the language model).
VisionTrain, "vision", {
    /// Nothing: the tower and the projector frozen, the targets (LoRA) on the
    /// language model only.
    Frozen => "frozen",
    /// The projector trains, the tower is frozen (LLaVA's stage-2 recipe).
    Projector => "projector",
    /// LoRA adapters on the tower's and the projector's linears (peft's all-linear
    /// reaches them).
    Lora => "lora",
    /// The tower and the projector train (full fine-tuning).
    Full => "full",
});
choice_enum!(
    /// `--task`
    Task, "task", { Train => "train", Infer => "infer" | "inference" | "serve" });
choice_enum!(
    /// `--method`: the name of what is trained, without its LoRA settings.
    MethodKind, "method", { Full => "full", Lora => "lora", Qlora => "qlora" });

/// What is trained: every parameter, or LoRA adapters (peft) over frozen base weights —
/// in `Qlora`, NF4-quantized base weights (bitsandbytes `Linear4bit`). The LoRA settings
/// travel inside the variant, so no code pairs a method with an optional LoRA config.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Full,
    Lora(LoraConfig),
    Qlora(LoraConfig),
}

impl Method {
    /// The same method with LoRA adapters in fp32 (`true`) or the model's dtype.
    pub fn with_adapter_dtype(&self, fp32: bool) -> Method {
        match self {
            Method::Full => Method::Full,
            Method::Lora(l) => Method::Lora(LoraConfig {
                adapter_fp32: fp32,
                ..l.clone()
            }),
            Method::Qlora(l) => Method::Qlora(LoraConfig {
                adapter_fp32: fp32,
                ..l.clone()
            }),
        }
    }

    pub fn kind(&self) -> MethodKind {
        match self {
            Method::Full => MethodKind::Full,
            Method::Lora(_) => MethodKind::Lora,
            Method::Qlora(_) => MethodKind::Qlora,
        }
    }
    /// The adapters' settings (`None` for full fine-tuning).
    pub fn lora(&self) -> Option<&LoraConfig> {
        match self {
            Method::Full => None,
            Method::Lora(l) | Method::Qlora(l) => Some(l),
        }
    }
    pub fn is_full(&self) -> bool {
        matches!(self, Method::Full)
    }
    pub fn is_qlora(&self) -> bool {
        matches!(self, Method::Qlora(_))
    }
    /// `kind` with `l` as the LoRA settings (ignored for `Full`).
    pub fn new(kind: MethodKind, l: LoraConfig) -> Method {
        match kind {
            MethodKind::Full => Method::Full,
            MethodKind::Lora => Method::Lora(l),
            MethodKind::Qlora => Method::Qlora(l),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind().as_str())
    }
}
choice_enum!(
/// `--dtype`: the precision recipe. `amp-*` keeps fp32 parameters and runs matmuls
/// under torch autocast (half-precision copies of the weights live during forward);
/// `fp8` (fp8 weights, bf16 compute) and `int8` (bitsandbytes LLM.int8 weights, fp16
/// compute) are for inference only.
Precision, "dtype", {
    Fp32 => "fp32" | "float32",
    Bf16 => "bf16" | "bfloat16",
    Fp16 => "fp16" | "float16",
    AmpBf16 => "amp-bf16" | "amp_bf16",
    AmpFp16 => "amp-fp16" | "amp_fp16",
    Fp8 => "fp8",
    /// bitsandbytes LLM.int8() weights (`load_in_8bit`), fp16 compute: inference only.
    Int8 => "int8" | "llm-int8",
});
choice_enum!(
/// `--optimizer`
Optimizer, "optimizer", {
    /// torch AdamW, fused kernel (HF Trainer's default `adamw_torch_fused`).
    AdamW => "adamw" | "adam" | "adamw-fused" | "adamw_torch_fused",
    /// torch AdamW with the multi-tensor (foreach) path: one state-sized temporary.
    AdamWForeach => "adamw-foreach" | "adamw_torch",
    AdamW8bit => "adamw-8bit" | "adamw8bit" | "adamw_8bit",
    PagedAdamW => "paged-adamw" | "paged_adamw",
    PagedAdamW8bit => "paged-adamw-8bit" | "paged_adamw_8bit",
    Sgd => "sgd",
    SgdMomentum => "sgd-momentum" | "sgd_momentum",
    Adafactor => "adafactor",
    Lion => "lion",
});
choice_enum!(
    /// `--attn`
    Attn, "attn", { Eager => "eager", Sdpa => "sdpa", Flash => "flash" | "flash_attention_2" | "fa2" });
choice_enum!(
    /// `--grad-ckpt`: `full` checkpoints every decoder layer (saves its input, recomputes
    /// it in backward) with torch's non-reentrant checkpoint (transformers 5's default,
    /// `use_reentrant=False`): the recomputation starts lazily, at the first saved
    /// tensor the layer's backward unpacks. `full-reentrant` is the reentrant
    /// `CheckpointFunction` (LLaMA-Factory's default): the whole layer is recomputed
    /// before its backward starts. `selective` recomputes only the attention core
    /// (QKᵀ, softmax, attention dropout) as Megatron does, keeping everything else.
    GradCkpt, "grad_ckpt", { None => "none" | "off", Full => "full" | "on" | "non-reentrant",
        FullReentrant => "full-reentrant" | "reentrant", Selective => "selective" });

impl GradCkpt {
    /// Every decoder layer is checkpointed (either implementation).
    pub fn is_full(self) -> bool {
        matches!(self, GradCkpt::Full | GradCkpt::FullReentrant)
    }
}
choice_enum!(
    /// `--lora-dtype`: the adapters' dtype.
    LoraDtype, "lora_dtype", { Fp32 => "fp32" | "float32", Model => "model" | "bf16" | "fp16" });
choice_enum!(
    /// `--loss`
    Loss, "loss", { Standard => "standard", Chunked => "chunked", FusedLinearCe => "fused-linear-ce" | "liger" });
choice_enum!(
    /// `--implementation`: whose model code the run executes — transformers' modeling
    /// files with peft adapters, or litgpt's own `GPT` (litgpt 0.4 `model.py` /
    /// `lora.py` under Lightning Fabric: fused qkv, an untied head, fp32 logits from
    /// Fabric's output conversion, chunked head and loss; `runtime/torch/litgpt.rs`).
    Implementation, "implementation", { Transformers => "transformers" | "hf", Litgpt => "litgpt" });
choice_enum!(
    /// `--runtime`: whose memory behaviour to simulate.
    Runtime, "runtime", { Torch => "torch" | "pytorch", Candle => "candle" });

impl Precision {
    /// dtype the model's parameters are stored in.
    pub fn param_dtype(self) -> DType {
        match self {
            Precision::Fp32 | Precision::AmpBf16 | Precision::AmpFp16 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::Fp16 => DType::F16,
            Precision::Fp8 => DType::F8,
            Precision::Int8 => DType::I8,
        }
    }
    /// dtype of matmul inputs/outputs.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::Fp32 => DType::F32,
            Precision::Bf16 | Precision::AmpBf16 | Precision::Fp8 => DType::BF16,
            Precision::Fp16 | Precision::AmpFp16 | Precision::Int8 => DType::F16,
        }
    }
    pub fn is_amp(self) -> bool {
        matches!(self, Precision::AmpBf16 | Precision::AmpFp16)
    }
}

impl Optimizer {
    /// bitsandbytes paged optimizers keep their state in CUDA unified memory, which the
    /// driver may evict to host memory under pressure.
    pub fn is_paged(self) -> bool {
        matches!(self, Optimizer::PagedAdamW | Optimizer::PagedAdamW8bit)
    }
}

/// Where the torch profile's tensors live: semantics differ in a few dtypes
/// (LayerNorm statistics are fp32 on CUDA but the input dtype on CPU; dropout masks are
/// bool on CUDA but the input dtype on CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cuda,
    Cpu,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub rank: u64,
    pub alpha: f64,
    pub targets: LoraTargets,
    /// QLoRA with bitsandbytes double quantization of the NF4 absmax.
    pub double_quant: bool,
    /// Dropout probability on each adapter's input (peft `LoraConfig.lora_dropout`,
    /// litgpt `lora_dropout`): `lora_B(lora_A(dropout(x)))` keeps the mask and the
    /// dropped copy instead of x (see `runtime::torch::LedgerParams::lora_dropout`).
    pub dropout: f64,
    /// QLoRA on bitsandbytes < 0.43.2, whose 4-bit linears keep their input for
    /// backward (`--bnb-version`; see `runtime::torch::LedgerParams::quant_keeps_input`).
    pub bnb_keeps_input: bool,
    /// Adapters in fp32 (peft's `autocast_adapter_dtype=True`, the default) or in the
    /// model's parameter dtype (`--lora-dtype model`: torchtune, litgpt, peft with
    /// `autocast_adapter_dtype=False`, DeepSpeed's bf16/fp16 engine casting the whole
    /// module).
    pub adapter_fp32: bool,
    /// The peft tuner (`--peft`): LoRA or one of its relatives over the same targets.
    pub adapter: Adapter,
    /// BOFT's fp32 permutation buffers stay on the host (`--boft-perm host`): peft
    /// creates `boft_P` on the CPU and moves only the adapter dicts to the base
    /// layer's device, so a model loaded with `device_map` and never moved after
    /// `get_peft_model` keeps them there (each forward copies them to the device in
    /// the compute dtype); HF Trainer's `model.to(device)` moves them, fp32.
    pub boft_perm_on_host: bool,
    /// peft < 0.21's OSF (`--peft-version`): each forward rebuilds the adapted
    /// linear's full weight from its SVD factors (`reconstruct_weight_matrix`) and
    /// keeps the high-rank factors; 0.21 applies a factored low-rank delta beside the
    /// frozen base linear.
    pub osf_reconstruct: bool,
}

impl LoraConfig {
    /// Bytes per adapter element under `precision`.
    pub fn adapter_size(&self, precision: Precision) -> u64 {
        if self.adapter_fp32 {
            4
        } else {
            precision.param_dtype().size()
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InferConfig {
    pub prompt_len: u64,
    pub gen_len: u64,
    pub concurrency: u64,
    pub kv_dtype: DType,
    /// Prefill processed in chunks of this many tokens (vLLM-style chunked prefill).
    pub prefill_chunk: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub task: Task,
    pub method: Method,
    pub precision: Precision,
    /// Half-precision parameters with an fp32 master copy (and fp32 gradient buffer)
    /// held by the optimizer, as DeepSpeed and Megatron do.
    pub master_weights: bool,
    pub optimizer: Optimizer,
    pub batch: u64,
    pub seq_len: u64,
    pub grad_accum: u64,
    pub attn: Attn,
    pub grad_ckpt: GradCkpt,
    pub loss: Loss,
    pub runtime: Runtime,
    /// transformers < 4.46's causal-LM loss (`--transformers-version`): the model
    /// upcasts its logits in forward and the loss shifts a contiguous fp32 copy
    /// (`runtime::torch::LedgerParams::legacy_causal_lm_loss`).
    pub legacy_causal_lm_loss: bool,
    /// Whose model code runs (`--implementation`; set by `--framework litgpt`).
    pub implementation: Implementation,
    pub device: Device,
    /// torchtune's `optimizer_in_bwd` (`modules/optim.py` `OptimizerInBackward`): one
    /// optimizer per parameter, stepped from its `register_post_accumulate_grad_hook`
    /// and its gradient freed there, so gradients never accumulate over the model.
    pub optimizer_in_bwd: bool,
    /// torchtune's activation offloading (`training/_activation_offloading.py`
    /// `OffloadActivations`, with activation checkpointing): tensors saved for backward
    /// go to pinned host memory (see `timeline::TrainPlan::offload_stash`).
    pub activation_offload: bool,
    /// `torch.compile` as torchtune's recipes apply it (`training/_compile.py`: each
    /// decoder layer, and the loss's `compute_cross_entropy`): what the compiled graphs
    /// save (`runtime::torch::LedgerParams::compile`, `compiled_saves`).
    pub compile: bool,
    /// Vision-language models: images per sample (`--images`); each adds the tower's
    /// image tokens inside `seq_len` (training) or `prompt_len` (inference).
    pub images: u64,
    /// Vision-language models: what trains on the vision side (`--vision`; `None`: the
    /// method's default, [`Workload::vision_train`]).
    pub vision: Option<VisionTrain>,
    /// Vision-language models: the images' (width, height) before preprocessing
    /// (`--image-size WxH`; `None`: the tower's square). Only anyres models
    /// (LLaVA-OneVision) tile by it; fixed-resolution towers resize every image.
    pub image_size: Option<(u64, u64)>,
    /// Mixture-of-experts under expert parallelism: the busiest rank receives this
    /// many times the balanced share of (token, expert) rows (`--moe-imbalance`, ≥ 1;
    /// 1 = perfectly balanced routing).
    pub moe_imbalance: f64,
    /// The dtype a LoRA run's frozen base parameters are stored in when the layout's
    /// framework casts them to `precision` only to compute (torch FSDP
    /// `MixedPrecision(param_dtype=half)` over a model loaded in fp32: the sharded
    /// flat parameters stay fp32, the all-gather is in half). `None`: `precision`'s.
    /// Set by the precision recipe (`distributed::recipe`), not by a flag.
    pub frozen_storage: Option<Precision>,
    pub infer: InferConfig,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            task: Task::Train,
            method: Method::Full,
            precision: Precision::Bf16,
            master_weights: false,
            optimizer: Optimizer::AdamW,
            batch: 1,
            seq_len: 2048,
            grad_accum: 1,
            attn: Attn::Sdpa,
            grad_ckpt: GradCkpt::None,
            loss: Loss::Standard,
            runtime: Runtime::Torch,
            legacy_causal_lm_loss: false,
            implementation: Implementation::Transformers,
            device: Device::Cuda,
            optimizer_in_bwd: false,
            activation_offload: false,
            compile: false,
            images: 1,
            vision: None,
            image_size: None,
            moe_imbalance: 1.0,
            frozen_storage: None,
            infer: InferConfig {
                prompt_len: 1024,
                gen_len: 256,
                concurrency: 1,
                kv_dtype: DType::BF16,
                prefill_chunk: None,
            },
        }
    }
}

/// `v` in `1..=max`, else an error naming `key`.
/// A tuner whose rank must fit every targeted linear's shape: OFT's block count and
/// BOFT's block size divide `in_features` (peft `OFTLayer` / `BOFTLayer.update_layer`),
/// OSF's trained rank is below min(out, in) (`OSFLayer.update_layer`: effective_rank
/// > 0).
fn check_rank_fits(spec: &ModelSpec, l: &LoraConfig) -> Result<()> {
    let (fits, accepted): (fn(&crate::arch::LinearSpec, u64) -> bool, &str) = match l.adapter {
        Adapter::Oft => (
            |lin, r| Adapter::oft_block(lin, r).is_some(),
            "a number of OFT blocks that divides every targeted linear's in_features into blocks of 2 or more",
        ),
        Adapter::Boft => (
            |lin, r| Adapter::boft_blocks(lin, r).is_some(),
            "a BOFT block size (boft_block_size) that divides every targeted linear's in_features (peft: in_features must be divisible by boft_block_size)",
        ),
        Adapter::Osf => (
            |lin, r| Adapter::osf_ranks(lin, r).is_some(),
            "a trained OSF rank r with 0 < r < min(out, in) of every targeted linear (peft: effective_rank = min - r must be positive)",
        ),
        _ => return Ok(()),
    };
    match spec
        .each_linear()
        .find(|lin| l.targets.matches(lin) && !fits(lin, l.rank))
    {
        Some(lin) => Err(Error::invalid(
            "lora_rank",
            format!(
                "{} with --peft {} on {} ({} x {})",
                l.rank, l.adapter, lin.name, lin.out_features, lin.in_features
            ),
            accepted,
        )),
        None => Ok(()),
    }
}

/// LoRA on a mixture-of-experts model as peft 0.21 can run it: through its MoE
/// conversion (`utils/transformers_weight_conversion.py`) the router and the fused
/// experts take plain LoRA only (`ParamWrapper`: "does not work with LoRA variants",
/// nor with `lora_dropout != 0`); where peft does not convert (Qwen2-MoE), the router
/// and the fused experts are parameters no target reaches.
fn check_moe_lora(spec: &ModelSpec, l: &LoraConfig) -> Result<()> {
    use crate::arch::LinearRole;
    if spec.mla.is_some() && l.adapter == Adapter::PrefixTuning {
        // peft's prefix is per-head keys and values; latent attention's cache holds
        // the compressed latent (modeling_deepseek_v2.py `cache.update(k_nope, k_pe)`)
        return Err(Error::invalid(
            "peft",
            format!("prefix_tuning on {}", spec.family),
            "another tuner (latent attention caches the compressed latent, not the per-head keys and values a prefix supplies)",
        ));
    }
    let converted = l.targets.converted_onto_experts(spec.family);
    if converted && l.adapter != Adapter::Lora {
        return Err(Error::invalid(
            "peft",
            format!("{} with all-linear on {}", l.adapter, spec.family),
            "lora (peft reaches the router and fused experts through its ParamWrapper, LoRA only), or the attention projections as targets",
        ));
    }
    if converted && l.dropout > 0.0 {
        return Err(Error::invalid(
            "lora_dropout",
            format!("{} with all-linear on {}", l.dropout, spec.family),
            "0 (peft's ParamWrapper, which adapts the router and the fused experts, refuses dropout), or the attention projections as targets",
        ));
    }
    let unreached = |lin: &crate::arch::LinearSpec| {
        matches!(
            lin.role,
            LinearRole::Router | LinearRole::ExpertGateUp | LinearRole::ExpertDown
        ) && !lin.via_conversion
    };
    match spec
        .each_linear()
        .find(|lin| unreached(lin) && l.targets.matches(lin))
    {
        Some(lin) => Err(Error::invalid(
            "lora_targets",
            format!("{} (matches the MoE block's {})", l.targets, lin.name),
            format!(
                "the attention projections or the shared expert on {}: peft has no MoE conversion for this model type, so its router and fused experts (parameters, not nn.Linear modules) are never adapted",
                spec.family
            ),
        )),
        None => Ok(()),
    }
}

fn within(key: &'static str, v: u64, max: u64) -> Result<()> {
    if v == 0 || v > max {
        Err(Error::invalid(key, v, format!("an integer in 1..={max}")))
    } else {
        Ok(())
    }
}

/// Upper bounds that keep every byte count far from u64 overflow.
/// The accepted range of an integer setting `key` whose bound the workload checks
/// (so that a value that does not even parse — `-1`, `2.5`, `1e30` — gets the same
/// "accepted" as one out of range).
pub fn integer_range(key: &str) -> Option<(u64, u64)> {
    Some(match key {
        "batch" | "grad_accum" | "concurrency" => (1, MAX_BATCH),
        "seq_len" | "prompt_len" | "prefill_chunk" => (1, MAX_TOKENS),
        "gen_len" => (0, MAX_TOKENS),
        "lora_rank" => (1, MAX_LORA_RANK),
        "images" => (0, MAX_IMAGES),
        _ => return None,
    })
}

pub const MAX_BATCH: u64 = 1 << 20;
pub const MAX_TOKENS: u64 = 1 << 26;
pub const MAX_LORA_RANK: u64 = 1 << 16;
pub const MAX_IMAGES: u64 = 1 << 16;
/// 256 PiB for one tensor: beyond any device, well inside u64 for sums of hundreds.
pub const MAX_TENSOR_BYTES: u64 = 1 << 58;

impl Workload {
    pub fn is_train(&self) -> bool {
        self.task == Task::Train
    }

    /// Consistency checks; errors name the setting key (`batch`, `seq_len`; the
    /// settings layer names where the value came from), the value and what is accepted.
    pub fn validate(&self, spec: &ModelSpec) -> Result<()> {
        self.check_sizes()?;
        self.check_vision(spec)?;
        let f = self.moe_imbalance;
        if !(f.is_finite() && (1.0..=1024.0).contains(&f)) {
            return Err(Error::invalid(
                "moe_imbalance",
                f,
                "a factor between 1 (balanced routing) and 1024: the busiest expert-parallel rank's rows over the balanced share",
            ));
        }
        self.check_largest_tensor(spec)?;
        if spec.attn_sinks && self.attn == Attn::Sdpa {
            // modeling_gpt_oss.py `_supports_sdpa = False`: from_pretrained refuses it
            return Err(Error::invalid(
                "--attn",
                format!("sdpa on {}", spec.family),
                "eager (the default for this model) or flash (a kernel with attention sinks): transformers has no SDPA path for attention sinks",
            ));
        }
        self.check_recipe(spec)
    }

    /// What trains on a vision-language model's vision side: `--vision`, else the
    /// method's default: everything under full fine-tuning; under LoRA the adapters
    /// wherever the targets reach (peft's all-linear and explicit names reach the tower
    /// and the projector, `attn` the language model only). `None` for a text model.
    pub fn vision_train(&self, spec: &ModelSpec) -> Option<VisionTrain> {
        let v = spec.vision.as_ref()?;
        Some(self.vision.unwrap_or(match self.method.lora() {
            None => VisionTrain::Full,
            Some(l) if crate::arch::params::vision_targeted(v, &l.targets) => VisionTrain::Lora,
            Some(_) => VisionTrain::Frozen,
        }))
    }

    /// (crops through the tower, image tokens in the text) per image of the run
    /// ([`crate::arch::VisionSpec::layout`]; (0, 0) for a text model).
    pub fn image_layout(&self, spec: &ModelSpec) -> (u64, u64) {
        spec.vision.as_ref().map_or((0, 0), |v| {
            let (w, h) = self.image_size.unwrap_or((v.image_size, v.image_size));
            v.layout(self.images, h, w)
        })
    }

    /// Image tokens per sequence (0 for a text model).
    pub fn image_tokens(&self, spec: &ModelSpec) -> u64 {
        self.images.saturating_mul(self.image_layout(spec).1)
    }

    /// `--images` and `--vision` fit the model, the method and the sequence.
    fn check_vision(&self, spec: &ModelSpec) -> Result<()> {
        let Some(v) = &spec.vision else {
            if self.vision.is_some() {
                return Err(Error::invalid(
                    "vision",
                    format!(
                        "{} on {}",
                        self.vision.map_or("", |x| x.as_str()),
                        spec.name
                    ),
                    "no --vision: the model has no vision tower",
                ));
            }
            return Ok(());
        };
        if let Some((w, h)) = self.image_size {
            if w == 0 || h == 0 || w > 1 << 16 || h > 1 << 16 {
                return Err(Error::invalid(
                    "image_size",
                    format!("{w}x{h}"),
                    "WIDTHxHEIGHT, each in 1..=65536 pixels",
                ));
            }
            // image_processing_qwen2_vl.py smart_resize: "absolute aspect ratio must be
            // smaller than 200"
            if v.native.is_some() && w.max(h) > 200 * w.min(h) {
                return Err(Error::invalid(
                    "image_size",
                    format!("{w}x{h}"),
                    "an aspect ratio of at most 200 (Qwen2-VL's smart_resize refuses more)",
                ));
            }
        }
        if self.images > MAX_IMAGES {
            return Err(Error::invalid(
                "images",
                self.images,
                format!("an integer in 0..={MAX_IMAGES}"),
            ));
        }
        if self.runtime == Runtime::Candle {
            return Err(Error::invalid(
                "runtime",
                format!("candle for the vision-language model {}", spec.name),
                "torch (the candle probe's models have no vision tower)",
            ));
        }
        let train = self.vision_train(spec).unwrap_or(VisionTrain::Frozen);
        match (self.method.lora(), train) {
            (None, VisionTrain::Lora) => {
                return Err(Error::invalid(
                    "vision",
                    "lora with --method full",
                    "full, projector or frozen (LoRA adapters on the tower need --method lora or qlora)",
                ))
            }
            (Some(_), VisionTrain::Projector | VisionTrain::Full) => {
                return Err(Error::invalid(
                    "vision",
                    format!("{train} with --method {}", self.method),
                    "lora (the targets reach the tower and the projector) or frozen (the language model's linears only); a projector trained in full beside adapters (peft modules_to_save) is not modelled",
                ))
            }
            (Some(l), VisionTrain::Lora) if !crate::arch::params::vision_targeted(v, &l.targets) => {
                return Err(Error::invalid(
                    "vision",
                    format!("lora with --lora-targets {}", l.targets),
                    "frozen, or targets that reach the vision linears (all-linear, or names such as fc1,fc2,linear_1)",
                ))
            }
            _ => {}
        }
        let tokens = self.image_tokens(spec);
        let (key, len) = match self.task {
            Task::Train => ("seq_len", self.seq_len),
            Task::Infer => ("prompt_len", self.infer.prompt_len),
        };
        if tokens > len {
            return Err(Error::invalid(
                key,
                len,
                format!(
                    "at least the {tokens} image tokens of --images {} ({} per image, counted inside the sequence as the processor expands each <image>)",
                    self.images,
                    self.image_layout(spec).1
                ),
            ));
        }
        Ok(())
    }

    /// Every size is in its bounds.
    fn check_sizes(&self) -> Result<()> {
        within("batch", self.batch, MAX_BATCH)?;
        within("seq_len", self.seq_len, MAX_TOKENS)?;
        within("grad_accum", self.grad_accum, MAX_BATCH)?;
        within("prompt_len", self.infer.prompt_len, MAX_TOKENS)?;
        within("concurrency", self.infer.concurrency, MAX_BATCH)?;
        if self.infer.gen_len > MAX_TOKENS {
            return Err(Error::invalid(
                "gen_len",
                self.infer.gen_len,
                format!("an integer in 0..={MAX_TOKENS}"),
            ));
        }
        if let Some(c) = self.infer.prefill_chunk {
            within("prefill_chunk", c, MAX_TOKENS)?;
        }
        Ok(())
    }

    /// The largest tensor the run creates must stay far from u64 overflow: token
    /// activations (T × widest layer) and, with eager attention, the scores.
    fn check_largest_tensor(&self, spec: &ModelSpec) -> Result<()> {
        let (rows, len) = match self.task {
            Task::Train => (self.batch, self.seq_len),
            Task::Infer => (
                self.infer.concurrency,
                self.infer.prompt_len + self.infer.gen_len,
            ),
        };
        let widest = spec
            .hidden
            .max(2 * spec.intermediate)
            .max(spec.vocab)
            .max(spec.q_dim() + 2 * spec.kv_dim());
        let tokens = rows as f64 * len as f64;
        let mut largest = tokens * widest as f64 * 4.0;
        if let Some(m) = &spec.moe {
            // the routed rows: top-k per token, the busiest rank's share
            let routed = (m.top_k * 2 * m.expert_intermediate.max(spec.hidden)) as f64;
            largest = largest.max(tokens * routed * self.moe_imbalance.max(1.0) * 4.0);
        }
        if let Some(v) = &spec.vision {
            // every crop of every image through the tower
            let crops = self.image_layout(spec).0.max(1) as f64;
            let tower = rows as f64 * self.images as f64 * crops * v.tower_tokens() as f64;
            let t = &v.tower;
            let width = t.hidden.max(t.intermediate).max(t.heads * v.tower_tokens()) as f64;
            largest = largest.max(tower * width * 4.0);
        }
        if self.attn == Attn::Eager {
            largest = largest.max(tokens * len as f64 * spec.heads as f64 * 4.0);
        }
        if largest > MAX_TENSOR_BYTES as f64 {
            return Err(Error::invalid(
                "batch x seq_len",
                format!("{rows} x {len}"),
                format!(
                    "shapes whose largest tensor stays under {} PiB (this one needs {:.1} PiB)",
                    MAX_TENSOR_BYTES >> 50,
                    largest / (1u64 << 50) as f64
                ),
            ));
        }
        Ok(())
    }

    /// LoRA settings, precision, master weights and runtime fit together.
    fn check_recipe(&self, spec: &ModelSpec) -> Result<()> {
        if spec.moe.is_some() && self.precision == Precision::Fp8 {
            // the fp8 integrations' handling of transformers 5's fused expert
            // parameters is not modelled (bitsandbytes' is: it leaves them unquantized)
            return Err(Error::invalid(
                "dtype",
                format!("{} on the mixture-of-experts model {}", self.precision, spec.name),
                "fp32, bf16, fp16, amp-bf16, amp-fp16 or int8, or --method qlora (bitsandbytes quantizes the nn.Linear modules and leaves the fused experts in the load dtype)",
            ));
        }
        if let Some(l) = self.method.lora() {
            if l.adapter.has_rank() {
                within("lora_rank", l.rank, MAX_LORA_RANK)?;
            }
            if !(l.alpha.is_finite() && l.alpha > 0.0) {
                return Err(Error::invalid("lora_alpha", l.alpha, "a number > 0"));
            }
            l.targets.check_against(spec)?;
            if l.adapter == crate::arch::Adapter::LnTuning
                && crate::arch::adapter::LnNorms::of(spec).is_none()
            {
                return Err(Error::invalid(
                    "peft",
                    format!("ln-tuning on model type {}", spec.family.model_type()),
                    "a model type with peft's default LN tuning targets: llama, mistral, gemma, gemma2, gemma3_text, qwen2, qwen3, bloom, gpt2, falcon, phi, gptj",
                ));
            }
            check_rank_fits(spec, l)?;
            if spec.moe.is_some() {
                check_moe_lora(spec, l)?;
            }
            if matches!(l.adapter, Adapter::Boft | Adapter::Osf)
                && self.method.kind() == MethodKind::Qlora
            {
                return Err(Error::invalid(
                    "peft",
                    format!("{} with --method qlora", l.adapter),
                    "--method lora (peft's BOFT and OSF layers wrap plain nn.Linear weights: no 4-bit layer)",
                ));
            }
            if l.adapter == crate::arch::Adapter::PrefixTuning && self.grad_ckpt != GradCkpt::None {
                // peft 0.21 peft_model.py `PeftModel.add_adapter` (prompt learning): "prefix tuning now uses Cache but that won't work with gradient checkpointing"
                // raises "PREFIX_TUNING does not work with gradient checkpointing."
                return Err(Error::invalid(
                    "grad_ckpt",
                    format!("{} with --peft prefix-tuning", self.grad_ckpt),
                    "none (peft: PREFIX_TUNING does not work with gradient checkpointing)",
                ));
            }
            if !l.adapter.adapts_linears()
                && l.adapter != crate::arch::Adapter::Ia3
                && self.implementation == Implementation::Litgpt
            {
                return Err(Error::invalid(
                    "peft",
                    format!("{} with --implementation litgpt", l.adapter),
                    "transformers (a peft tuner)",
                ));
            }
        }
        if matches!(self.precision, Precision::Fp8 | Precision::Int8) && self.is_train() {
            return Err(Error::invalid(
                "dtype",
                self.precision,
                "fp8 and int8 weights for --task infer only; for training use fp32, bf16, fp16, amp-bf16 or amp-fp16",
            ));
        }
        if self.master_weights && !matches!(self.precision, Precision::Bf16 | Precision::Fp16) {
            return Err(Error::invalid(
                "master_weights",
                format!("with --dtype {}", self.precision),
                "--master-weights with --dtype bf16 or fp16 (amp and fp32 already keep fp32 parameters)",
            ));
        }
        if self.runtime == Runtime::Candle && self.task != Task::Train {
            return Err(Error::invalid(
                "runtime",
                "candle with --task infer",
                "torch for inference (the candle profile models the probe's training step)",
            ));
        }
        if self.runtime == Runtime::Candle && self.attn == Attn::Flash {
            return Err(Error::invalid(
                "attn",
                "flash with --runtime candle",
                "eager or sdpa with the candle runtime (its probe models have no flash-attention kernel)",
            ));
        }
        if self.optimizer_in_bwd && self.grad_accum > 1 {
            // torchtune recipes raise: "Gradient accumulation is not supported with
            // optimizer_in_bwd: True"
            return Err(Error::invalid(
                "optimizer_in_bwd",
                format!("with grad_accum {}", self.grad_accum),
                "optimizer_in_bwd with grad_accum 1 (each step frees the gradient it used; nothing is left to accumulate)",
            ));
        }
        if self.activation_offload
            && !matches!(self.grad_ckpt, GradCkpt::Full | GradCkpt::FullReentrant)
        {
            // torchtune recipes raise: "enable_activation_offloading should only be True
            // when enable_activation_checkpointing is True"
            return Err(Error::invalid(
                "activation_offload",
                format!("with grad_ckpt {}", self.grad_ckpt),
                "activation_offload with --grad-ckpt full (the offloaded tensors are the checkpointed layers' inputs)",
            ));
        }
        if self.activation_offload && self.device != Device::Cuda {
            return Err(Error::invalid(
                "activation_offload",
                format!("with device {:?}", self.device).to_lowercase(),
                "activation_offload on cuda (it moves tensors from the GPU to host memory)",
            ));
        }
        if self.runtime == Runtime::Candle && (self.optimizer_in_bwd || self.activation_offload) {
            return Err(Error::invalid(
                "runtime",
                "candle with optimizer_in_bwd or activation_offload",
                "torch (the candle probe steps its optimizer after backward and keeps activations on the device)",
            ));
        }
        if self.runtime == Runtime::Candle && self.grad_ckpt != GradCkpt::None {
            return Err(Error::invalid(
                "grad_ckpt",
                self.grad_ckpt,
                "none with --runtime candle (candle has no gradient checkpointing)",
            ));
        }
        Ok(())
    }
}
