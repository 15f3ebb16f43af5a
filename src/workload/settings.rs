//! `Settings`: every setting of a run as a typed, optional value, and where it came from.
//!
//! Settings are declared once, in the `settings!` table below: key (the snake_case name
//! used in `--config` files), type, flag, and help. From that one line come the field,
//! the `--config` key (kebab-case accepted), the flag the CLI builds (`cli::args`), the
//! merge rule and the origin bookkeeping — one new setting is one line here and one use
//! where it is consumed.
//!
//! Layers merge `--config` < `--deepspeed` < `--train-args` < flags ([`Settings::merged`]).
//! [`Settings::resolve`] is the one place that turns settings into validated domain types
//! (`Workload`, `Overheads`, `Layout`, the capacity): the library validates in terms of
//! setting keys (`batch`, `seq_len`), and every error is rewritten here to name where
//! the value came from — `--batch`, `ds.json: train_micro_batch_size_per_gpu`,
//! `args.yaml: per_device_train_batch_size` — never a flag the user did not type.
//! Unknown keys in a `--config` file are an error, never silently ignored.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::arch::{Adapter, LoraTargets, ModelSpec};
use crate::error::{Error, Result};
use crate::units::bytes::Bytes;
use crate::units::dtype::DType;
use crate::workload::layout::{Buffers, FsdpMode, Layout};
use crate::workload::overhead::Overheads;
use crate::workload::{
    Attn, Device, GradCkpt, Implementation, InferConfig, LoraConfig, LoraDtype, Loss, Method,
    MethodKind, Optimizer, Precision, Runtime, Task, VisionTrain, Workload,
};

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag, e.g. `--batch`.
    Flag(&'static str),
    /// A key of a settings file or an imported framework config.
    File { path: String, key: String },
}

impl Origin {
    pub fn file(path: &str, key: &str) -> Origin {
        Origin::File {
            path: path.to_string(),
            key: key.to_string(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => f.write_str(flag),
            Origin::File { path, key } => write!(f, "{path}: {key}"),
        }
    }
}

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// `--flag VALUE`
    Value,
    /// `--flag` alone sets the boolean setting to this value (`--master-weights` = true,
    /// `--no-double-quant` = false).
    Switch(bool),
}

/// A setting's value as it arrives: a file's JSON value or a flag's text.
#[derive(Debug, Clone, Copy)]
enum Raw<'a> {
    Json(&'a Value),
    Text(&'a str),
}

impl Raw<'_> {
    fn parse<T: SettingValue>(self) -> std::result::Result<T, (String, String)> {
        match self {
            Raw::Json(v) => T::from_json(v),
            Raw::Text(s) => T::from_text(s),
        }
    }
}

/// One row of the settings table.
#[derive(Debug, Clone, Copy)]
pub struct SettingInfo {
    pub key: &'static str,
    pub flag: &'static str,
    pub kind: FlagKind,
    pub help: &'static str,
    /// Whether a flag's text parses as this setting's type (`Err`: what is accepted).
    pub check: fn(&str) -> std::result::Result<(), String>,
}

/// A value a setting can hold: parsed from a flag's text or a file's JSON value.
/// Errors are `(value as written, what is accepted)`; the caller names the origin.
pub trait SettingValue: Sized {
    fn from_text(s: &str) -> std::result::Result<Self, (String, String)>;
    fn from_json(v: &Value) -> std::result::Result<Self, (String, String)> {
        match v {
            Value::String(s) => Self::from_text(s),
            other => Self::from_text(&other.to_string()),
        }
    }
}

fn accepted_of(e: Error) -> String {
    match e {
        Error::InvalidValue { accepted, .. } => accepted,
        other => other.to_string(),
    }
}

macro_rules! choice_setting {
    ($($t:ty),*) => {$(
        impl SettingValue for $t {
            fn from_text(s: &str) -> std::result::Result<Self, (String, String)> {
                s.parse().map_err(|e| (s.to_string(), accepted_of(e)))
            }
        }
    )*};
}
choice_setting!(
    Task,
    MethodKind,
    Precision,
    Optimizer,
    Attn,
    GradCkpt,
    Loss,
    Runtime,
    FsdpMode,
    LoraDtype,
    Implementation,
    Adapter,
    VisionTrain
);

impl SettingValue for u64 {
    fn from_text(s: &str) -> std::result::Result<Self, (String, String)> {
        s.trim()
            .parse()
            .map_err(|_| (s.to_string(), "a non-negative integer".into()))
    }
    fn from_json(v: &Value) -> std::result::Result<Self, (String, String)> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .ok_or_else(|| (n.to_string(), "a non-negative integer".into())),
            Value::String(s) => Self::from_text(s),
            other => Err((other.to_string(), "a non-negative integer".into())),
        }
    }
}

impl SettingValue for f64 {
    fn from_text(s: &str) -> std::result::Result<Self, (String, String)> {
        s.trim()
            .parse()
            .map_err(|_| (s.to_string(), "a number".into()))
    }
    fn from_json(v: &Value) -> std::result::Result<Self, (String, String)> {
        match v {
            Value::Number(n) => n.as_f64().ok_or_else(|| (n.to_string(), "a number".into())),
            Value::String(s) => Self::from_text(s),
            other => Err((other.to_string(), "a number".into())),
        }
    }
}

impl SettingValue for bool {
    fn from_text(s: &str) -> std::result::Result<Self, (String, String)> {
        match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err((s.to_string(), "true or false".into())),
        }
    }
    fn from_json(v: &Value) -> std::result::Result<Self, (String, String)> {
        match v {
            Value::Bool(b) => Ok(*b),
            other => Err((other.to_string(), "true or false".into())),
        }
    }
}

impl SettingValue for String {
    fn from_text(s: &str) -> std::result::Result<Self, (String, String)> {
        Ok(s.to_string())
    }
    fn from_json(v: &Value) -> std::result::Result<Self, (String, String)> {
        match v {
            Value::String(s) => Ok(s.clone()),
            other => Err((other.to_string(), "a string".into())),
        }
    }
}

impl SettingValue for Bytes {
    fn from_text(s: &str) -> std::result::Result<Self, (String, String)> {
        Bytes::parse(s).map_err(|_| (s.to_string(), Bytes::ACCEPTED.into()))
    }
    fn from_json(v: &Value) -> std::result::Result<Self, (String, String)> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .and_then(|b| Bytes::bounded(b).ok())
                .ok_or_else(|| (n.to_string(), Bytes::ACCEPTED.into())),
            Value::String(s) => Self::from_text(s),
            other => Err((other.to_string(), Bytes::ACCEPTED.into())),
        }
    }
}

/// An overhead amount (CUDA context, cuBLAS workspace, NCCL buffers): any memory
/// amount, or zero (`0`, `0B`, `none`) where the run has none — a CPU run's context, a
/// fake-tensor meter's cuBLAS workspace, `CUBLAS_WORKSPACE_CONFIG=:0:0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverheadBytes(pub Bytes);

impl OverheadBytes {
    const ACCEPTED: &'static str = "0 or none, or a memory amount";

    fn zero(s: &str) -> bool {
        let t = s.trim().to_ascii_lowercase();
        t == "none" || t.trim_end_matches(|c: char| c.is_ascii_alphabetic()).trim() == "0"
    }
}

impl SettingValue for OverheadBytes {
    fn from_text(s: &str) -> std::result::Result<Self, (String, String)> {
        if Self::zero(s) {
            return Ok(OverheadBytes(Bytes(0)));
        }
        Bytes::from_text(s)
            .map(OverheadBytes)
            .map_err(|(v, a)| (v, format!("{}; {a}", Self::ACCEPTED)))
    }
    fn from_json(v: &Value) -> std::result::Result<Self, (String, String)> {
        match v {
            Value::Number(n) if n.as_u64() == Some(0) => Ok(OverheadBytes(Bytes(0))),
            Value::String(s) => Self::from_text(s),
            other => Bytes::from_json(other)
                .map(OverheadBytes)
                .map_err(|(v, a)| (v, format!("{}; {a}", Self::ACCEPTED))),
        }
    }
}

impl SettingValue for Device {
    fn from_text(s: &str) -> std::result::Result<Self, (String, String)> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cuda" | "gpu" => Ok(Device::Cuda),
            "cpu" => Ok(Device::Cpu),
            _ => Err((s.to_string(), "cuda, cpu".into())),
        }
    }
}

/// The KV-cache dtype: fp32, bf16, fp16 or fp8.
impl SettingValue for DType {
    fn from_text(s: &str) -> std::result::Result<Self, (String, String)> {
        match DType::from_name(s.trim()) {
            Some(d @ (DType::F32 | DType::BF16 | DType::F16 | DType::F8)) => Ok(d),
            _ => Err((s.to_string(), "fp32, bf16, fp16, fp8".into())),
        }
    }
}

impl SettingValue for LoraTargets {
    fn from_text(s: &str) -> std::result::Result<Self, (String, String)> {
        LoraTargets::parse(s).map_err(|e| (s.to_string(), accepted_of(e)))
    }
    fn from_json(v: &Value) -> std::result::Result<Self, (String, String)> {
        match v {
            Value::Array(a) => {
                let names: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
                Self::from_text(&names.join(","))
            }
            Value::String(s) => Self::from_text(s),
            other => Err((
                other.to_string(),
                "attn, all-linear or a list of module names".into(),
            )),
        }
    }
}

/// Layers per pipeline stage: `"10,12,10"` or `[10, 12, 10]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageLayers(pub Vec<u64>);

impl SettingValue for StageLayers {
    fn from_text(s: &str) -> std::result::Result<Self, (String, String)> {
        s.split(',')
            .map(|x| x.trim().parse::<u64>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(StageLayers)
            .map_err(|_| {
                (
                    s.to_string(),
                    "comma-separated layer counts per stage, e.g. 10,12,10".into(),
                )
            })
    }
    fn from_json(v: &Value) -> std::result::Result<Self, (String, String)> {
        match v {
            Value::Array(a) => {
                let parts: Vec<String> = a.iter().map(|x| x.to_string()).collect();
                Self::from_text(&parts.join(","))
            }
            Value::String(s) => Self::from_text(s),
            other => Err((
                other.to_string(),
                "layer counts per stage, e.g. 10,12,10".into(),
            )),
        }
    }
}

/// `--image-size WIDTHxHEIGHT` (pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageSize(pub u64, pub u64);

impl SettingValue for ImageSize {
    fn from_text(s: &str) -> std::result::Result<Self, (String, String)> {
        let bad = || {
            (
                s.to_string(),
                "WIDTHxHEIGHT in pixels, e.g. 1024x768".to_string(),
            )
        };
        let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
        match (w.trim().parse::<u64>(), h.trim().parse::<u64>()) {
            (Ok(w), Ok(h)) => Ok(ImageSize(w, h)),
            _ => Err(bad()),
        }
    }
}

/// The ZeRO stage: 0–3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZeroStage(pub u8);

impl SettingValue for ZeroStage {
    fn from_text(s: &str) -> std::result::Result<Self, (String, String)> {
        match s.trim() {
            "0" => Ok(ZeroStage(0)),
            "1" => Ok(ZeroStage(1)),
            "2" => Ok(ZeroStage(2)),
            "3" => Ok(ZeroStage(3)),
            _ => Err((s.to_string(), "0, 1, 2, 3".into())),
        }
    }
}

/// A library version `major.minor[.patch]` (`0.42`, `0.43.2`, `4.45.2`, `0.45.2.dev0`
/// read as its numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// bitsandbytes: the first release whose `MatMul4Bit` keeps no input (PR #1270,
    /// July 2024).
    pub const BNB_KEEPS_NO_INPUT: Version = Version(0, 43, 2);
    /// transformers: the first release computing the causal-LM loss in
    /// `loss_utils.ForCausalLMLoss` (upcast inside the loss, labels shifted by padding;
    /// no logits copy), 4.46.0.
    pub const TRANSFORMERS_LOSS_FUNCTION: Version = Version(4, 46, 0);
    /// peft: the first release whose OSF applies a factored low-rank delta
    /// (`tuners/osf/layer.py` "LoRA-style factored forward") instead of rebuilding the
    /// weight, 0.21.0 (0.20.0's wheel rebuilds it).
    pub const PEFT_OSF_FACTORED: Version = Version(0, 21, 0);
}

impl SettingValue for Version {
    fn from_text(s: &str) -> std::result::Result<Self, (String, String)> {
        let bad = || {
            (
                s.to_string(),
                "a version major.minor[.patch], e.g. 0.42.0".to_string(),
            )
        };
        let core = s.trim().trim_start_matches('v');
        let mut parts = core.split('.');
        let mut num = |req: bool| -> std::result::Result<u32, (String, String)> {
            match parts.next() {
                Some(p) => {
                    let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
                    if digits.is_empty() || digits.len() > 6 {
                        return Err(bad());
                    }
                    digits.parse().map_err(|_| bad())
                }
                None if req => Err(bad()),
                None => Ok(0),
            }
        };
        Ok(Version(num(true)?, num(true)?, num(false)?))
    }
}

/// The FSDP version: 1 (flat parameters) or 2 (per-parameter sharding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsdpVersion(pub u8);

impl SettingValue for FsdpVersion {
    fn from_text(s: &str) -> std::result::Result<Self, (String, String)> {
        match s.trim() {
            "1" => Ok(FsdpVersion(1)),
            "2" => Ok(FsdpVersion(2)),
            _ => Err((
                s.to_string(),
                "1 (flat parameters) or 2 (per-parameter)".into(),
            )),
        }
    }
}

macro_rules! settings {
    ($( $key:ident : $ty:ty => $flag:literal $kind:ident $(($sw:literal))?, $help:literal; )*) => {
        /// Every setting of a run, typed, each `None` until a layer sets it.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct Settings {
            $( #[doc = $help] pub $key: Option<$ty>, )*
            /// Where each value that is set came from, by key (absent: set by code).
            pub origins: BTreeMap<&'static str, Origin>,
        }

        /// The settings table: key, flag, how the flag takes its value, help.
        pub const SETTINGS: &[SettingInfo] = &[
            $( SettingInfo {
                key: stringify!($key),
                flag: $flag,
                kind: settings!(@kind $kind $(($sw))?),
                help: $help,
                check: |s| <$ty as SettingValue>::from_text(s).map(|_| ()).map_err(|(_, acc)| format!("accepted: {acc}")),
            }, )*
        ];

        impl Settings {
            /// `self` with every value set in `over` replaced (and its origin with it).
            pub fn merged(mut self, over: Settings) -> Settings {
                $(
                    if over.$key.is_some() {
                        self.$key = over.$key;
                        match over.origins.get(stringify!($key)) {
                            Some(o) => self.origins.insert(stringify!($key), o.clone()),
                            None => self.origins.remove(stringify!($key)),
                        };
                    }
                )*
                self
            }

            /// Set `key` from `value`; `Ok(false)` if `key` is not a setting. Errors
            /// name `origin`, the value and what is accepted.
            fn set_from(&mut self, key: &str, value: Raw, origin: Origin) -> Result<bool> {
                match key {
                    $( stringify!($key) => {
                        let x = value.parse::<$ty>().map_err(|(val, acc)| {
                            let acc = match crate::workload::integer_range(stringify!($key)) {
                                Some((lo, hi)) => format!("an integer in {lo}..={hi}"),
                                None => acc,
                            };
                            Error::invalid(origin.to_string(), val, acc)
                        })?;
                        self.$key = Some(x);
                        self.origins.insert(stringify!($key), origin);
                        Ok(true)
                    } )*
                    _ => Ok(false),
                }
            }
        }
    };
    (@kind Value) => { FlagKind::Value };
    (@kind Switch($v:literal)) => { FlagKind::Switch($v) };
}

settings! {
    model: String => "--model" Value, "Preset name, path to a config.json (or its folder), or a Hugging Face id org/name[@revision] (cache, then the Hub).";
    strict: bool => "--strict" Switch(true), "Refuse a config whose model_type is not a modelled architecture instead of estimating it as a generic llama-style decoder.";
    layers: u64 => "--layers" Value, "Override the number of decoder layers.";
    task: Task => "--task" Value, "train | infer";
    method: MethodKind => "--method" Value, "full | lora | qlora";
    lora_rank: u64 => "--lora-rank" Value, "LoRA rank (default 16 with --method lora/qlora).";
    lora_alpha: f64 => "--lora-alpha" Value, "LoRA alpha (default 2 x rank; does not change memory).";
    lora_targets: LoraTargets => "--lora-targets" Value, "attn | all-linear | comma-separated module names (q_proj,v_proj,...).";
    peft: Adapter => "--peft" Value, "The peft tuner on the targeted linears (with --method lora/qlora): lora (default) | dora (use_dora: a trained magnitude per output) | lora-fa (lora_A frozen) | adalora (SVD form, rank = init_r) | vera (shared frozen projections, trained scaling vectors) | ia3 (a trained scaling vector; no rank) | loha (Hadamard product of two rank-r pairs; the full delta weight is built each step) | oft (rank = the number of rotation blocks on each adapted input) | ln-tuning (trained copies of the norms peft maps for the model type; no rank, no targets) | prompt-tuning / prefix-tuning (with --virtual-tokens; no rank, no targets).";
    lora_dropout: f64 => "--lora-dropout" Value, "LoRA dropout probability on each adapter's input, 0 <= p < 1 (peft / litgpt lora_dropout; default 0): every adapted linear then keeps a dropout mask and the dropped copy of its input.";
    double_quant: bool => "--no-double-quant" Switch(false), "QLoRA without double quantization of the NF4 scales.";
    dtype: Precision => "--dtype" Value, "fp32 | bf16 | fp16 | amp-bf16 | amp-fp16 | fp8, int8 (inference weights: fp8, bitsandbytes LLM.int8).";
    master_weights: bool => "--master-weights" Switch(true), "Half-precision parameters with an fp32 master copy in the optimizer.";
    optimizer: Optimizer => "--optimizer" Value, "adamw (fused) | adamw-foreach | adamw-8bit | paged-adamw | paged-adamw-8bit | sgd | sgd-momentum | adafactor | lion";
    batch: u64 => "--batch" Value, "Micro-batch size per GPU.";
    seq_len: u64 => "--seq-len" Value, "Sequence length (tokens per sample).";
    grad_accum: u64 => "--grad-accum" Value, "Gradient accumulation steps.";
    attn: Attn => "--attn" Value, "eager | sdpa | flash";
    grad_ckpt: GradCkpt => "--grad-ckpt" Value, "none | full | full-reentrant | selective";
    loss: Loss => "--loss" Value, "standard | chunked | fused-linear-ce";
    runtime: Runtime => "--runtime" Value, "torch | candle";
    implementation: Implementation => "--implementation" Value, "transformers | litgpt: whose model code runs (transformers' modeling files + peft, or litgpt's own GPT under Lightning Fabric; set by --framework litgpt).";
    device: Device => "--device" Value, "cuda | cpu: device semantics of the tensors (LayerNorm stats, dropout masks).";
    images: u64 => "--images" Value, "Vision-language models: images per sample (default 1; 0 for text-only batches). Each adds the tower's image tokens (576 for LLaVA-1.5) inside --seq-len / --prompt-len, as the processor expands <image>.";
    image_size: ImageSize => "--image-size" Value, "Vision-language models: the images' WIDTHxHEIGHT before preprocessing (default: the tower's square). LLaVA-OneVision tiles a sample's single image by it (anyres: more crops and image tokens for larger images); fixed-resolution towers (LLaVA-1.5, Gemma-3) resize every image.";
    vision: VisionTrain => "--vision" Value, "Vision-language models: what trains on the vision side: frozen | projector | lora | full (default: full with --method full; lora when the LoRA targets reach the tower, as all-linear does; else frozen).";
    prompt_len: u64 => "--prompt-len" Value, "Inference: prompt tokens per sequence.";
    gen_len: u64 => "--gen-len" Value, "Inference: generated tokens per sequence.";
    concurrency: u64 => "--concurrency" Value, "Inference: sequences served at once.";
    kv_dtype: DType => "--kv-dtype" Value, "Inference: KV-cache dtype (fp32 | bf16 | fp16 | fp8).";
    prefill_chunk: u64 => "--prefill-chunk" Value, "Inference: prefill in chunks of this many tokens.";
    gpu_memory: Bytes => "--gpu-memory" Value, "GPU memory to check against, e.g. 80GiB (exit 1 if the peak does not fit).";
    gpu: String => "--gpu" Value, "A GPU from `llm-mem gpus`, e.g. h100-80gb.";
    cuda_context: OverheadBytes => "--cuda-context" Value, "CUDA context size (default 512MiB; 0 for none).";
    cublas_workspace: OverheadBytes => "--cublas-workspace" Value, "One cuBLAS workspace (default 32MiB, PyTorch's on sm90; 0 for none). A PyTorch training step holds two: the forward's thread and the autograd engine's device thread each get one.";
    allocator_fragmentation: f64 => "--allocator-fragmentation" Value, "Allocator fragmentation as a fraction of dynamic memory (default 0.05).";
    dp: u64 => "--dp" Value, "Data-parallel degree.";
    tp: u64 => "--tp" Value, "Tensor-parallel degree (Megatron column/row parallel linears, vocab-parallel head).";
    pp: u64 => "--pp" Value, "Pipeline-parallel stages (1F1B).";
    cp: u64 => "--cp" Value, "Context-parallel degree (sequence split across ranks, ring attention).";
    ep: u64 => "--ep" Value, "Expert-parallel degree (MoE training; a divisor of --dp and of the routed experts): each rank holds experts/ep of every MoE layer's routed experts and exchanges the (token, expert) rows with all-to-all (Megatron-Core's alltoall dispatcher).";
    moe_imbalance: f64 => "--moe-imbalance" Value, "With --ep > 1: the busiest rank receives this many times the balanced share of routed rows (default 1: balanced; at most --ep).";
    vpp: u64 => "--vpp" Value, "Virtual pipeline stages per rank (interleaved 1F1B).";
    sequence_parallel: bool => "--sequence-parallel" Switch(true), "Megatron sequence parallelism (with --tp > 1).";
    zero: ZeroStage => "--zero" Value, "DeepSpeed ZeRO stage: 0 | 1 | 2 | 3.";
    fsdp: FsdpMode => "--fsdp" Value, "PyTorch FSDP: full | grad-op | hybrid.";
    fsdp_version: FsdpVersion => "--fsdp-version" Value, "FSDP version: 1 (flat parameters) | 2 (per-parameter sharding, default).";
    transformers_version: Version => "--transformers-version" Value, "transformers version, e.g. 4.44.2 (default: 5.24, the one the ledger mirrors): before 4.46 the model upcasts the logits and the loss shifts an fp32 copy of them.";
    lora_dtype: LoraDtype => "--lora-dtype" Value, "fp32 | model: LoRA adapters in fp32 (peft's default autocast_adapter_dtype) or in the model's dtype (torchtune, litgpt, DeepSpeed bf16/fp16).";
    boft_perm_on_host: bool => "--boft-perm-on-host" Switch(true), "With --peft boft: the fp32 permutation buffers stay on the host (a model loaded with device_map and never moved after get_peft_model: peft creates boft_P on the CPU and moves only the adapter weights); by default they are on the device (HF Trainer moves the model).";
    peft_version: Version => "--peft-version" Value, "peft version, e.g. 0.19.2 (default: 0.21, the one the ledger mirrors): before 0.21 an OSF linear rebuilds its full weight every forward.";
    bnb_version: Version => "--bnb-version" Value, "bitsandbytes version, e.g. 0.42.0 (default: a current one): before 0.43.2 a QLoRA 4-bit linear keeps its input for backward.";
    fsdp_upcast: bool => "--fsdp-upcast" Value, "true | false: under FSDP with half-precision parameters, accelerate's fp32 upcast of the flat parameters (accelerate >= 0.30 with --bf16/--fp16): fp32 sharded master, layers gathered in the half dtype (set by --framework hf-trainer).";
    fsdp_no_sync: bool => "--fsdp-no-sync" Value, "true | false: with --grad-accum > 1 under FSDP, the accumulating micro-batches run under no_sync (FSDP1 `no_sync()`, FSDP2 `set_requires_gradient_sync(False)`), so every rank holds unsharded gradients until the last micro-batch reduce-scatters them (set by --framework hf-trainer, accelerate, litgpt).";
    virtual_tokens: u64 => "--virtual-tokens" Value, "With --peft prompt-tuning: peft's num_virtual_tokens, trained embeddings prepended to every sequence (the model runs seq-len + this many positions).";
    optimizer_in_bwd: bool => "--optimizer-in-bwd" Value, "true | false: the optimizer steps each parameter inside backward and frees its gradient (torchtune optimizer_in_bwd: OptimizerInBackward's post-accumulate-grad hooks); needs --grad-accum 1.";
    activation_offload: bool => "--activation-offload" Value, "true | false: torchtune's activation offloading (OffloadActivations, with --grad-ckpt full): the checkpointed layers' inputs wait in pinned host memory, the GPU keeps the last five saved tensors and the layer being recomputed.";
    compile: bool => "--compile" Value, "true | false: torch.compile as torchtune applies it (each decoder layer and the chunked loss's cross-entropy). Modelled: the compiled cross-entropy saves each chunk's half-precision logits instead of fp32 log-probabilities; without checkpointing a compiled layer recomputes its elementwise tensors in backward and saves their sources (inductor's partitioner); forward transients stay as eager.";
    fsdp_separate_embeddings: bool => "--fsdp-separate-embeddings" Value, "true | false: under FSDP the embedding and the output head are units of their own (torchtune's custom_sharded_layers: ['tok_embeddings', 'output']), gathered only around their forward and backward and reduce-scattered at once, instead of staying in the root unit.";
    framework: String => "--framework" Value, "A shipped framework profile (hf-trainer | accelerate | litgpt | torchtune): defaults for the mechanisms it runs; your own settings win.";
    fsdp_shard_group: u64 => "--fsdp-shard-group" Value, "FSDP hybrid-shard group size (default min(dp, 8)).";
    offload_optimizer: bool => "--offload-optimizer" Switch(true), "Optimizer state (and ZeRO's fp32 copies) in host memory.";
    offload_params: bool => "--offload-params" Switch(true), "Parameters in host memory (ZeRO-3 or FSDP).";
    distributed_optimizer: bool => "--distributed-optimizer" Switch(true), "Megatron's distributed optimizer (optimizer state sharded over dp).";
    micro_batches: u64 => "--micro-batches" Value, "Micro-batches per pipeline flush (default: --grad-accum).";
    pp_layers: StageLayers => "--pp-layers" Value, "Layers per pipeline stage, e.g. 10,12,10 (default: even split).";
    nccl_buffers: OverheadBytes => "--nccl-buffers" Value, "NCCL buffers per process group (default 128MiB; 0 for none).";
    zero_reduce_bucket: u64 => "--zero-reduce-bucket" Value, "ZeRO reduce bucket size in elements (DeepSpeed reduce_bucket_size).";
    zero_allgather_bucket: u64 => "--zero-allgather-bucket" Value, "ZeRO all-gather bucket size in elements (DeepSpeed allgather_bucket_size).";
    zero3_prefetch_bucket: u64 => "--zero3-prefetch-bucket" Value, "ZeRO-3 prefetch bucket in elements (DeepSpeed stage3_prefetch_bucket_size).";
    zero3_max_live_params: u64 => "--zero3-max-live-params" Value, "ZeRO-3 max live parameters (DeepSpeed stage3_max_live_parameters).";
    ddp_bucket_view: bool => "--ddp-bucket-view" Value, "DDP gradient_as_bucket_view (no separate bucket copy of the gradients).";
    train_batch_size: u64 => "--train-batch-size" Value, "Global batch (DeepSpeed train_batch_size): must equal --batch x --grad-accum x --dp.";
}

/// Settings file formats, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
    Json,
}

impl Format {
    /// The format of `path`; `flag` (`--config`, `--train-args`) names it in errors.
    pub fn from_path(path: &str, flag: &'static str) -> Result<Format> {
        let ext = path.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "toml" => Ok(Format::Toml),
            "yaml" | "yml" => Ok(Format::Yaml),
            "json" => Ok(Format::Json),
            _ => Err(Error::invalid(
                flag,
                path,
                "a file ending in .toml, .yaml, .yml or .json",
            )),
        }
    }

    /// Parse `text` into one JSON value (TOML and YAML included).
    pub fn parse_value(self, text: &str, origin: &str) -> Result<Value> {
        let err = |m: String| Error::Config {
            path: origin.to_string(),
            message: m,
        };
        match self {
            Format::Json => serde_json::from_str(text).map_err(|e| err(e.to_string())),
            Format::Toml => {
                let t: toml::Value = toml::from_str(text).map_err(|e| err(e.to_string()))?;
                serde_json::to_value(t).map_err(|e| err(e.to_string()))
            }
            Format::Yaml => serde_yaml::from_str(text).map_err(|e| err(e.to_string())),
        }
    }
}

/// `e` with the subject of an invalid value replaced by `origin`.
pub fn named(e: Error, origin: &Origin) -> Error {
    match e {
        Error::InvalidValue {
            value, accepted, ..
        } => Error::InvalidValue {
            what: origin.to_string(),
            value,
            accepted,
        },
        other => other,
    }
}

/// A run's validated domain values, built by [`Settings::resolve`].
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub workload: Workload,
    pub overheads: Overheads,
    pub layout: Layout,
    /// The GPU to check against (its name and memory), if any.
    pub capacity: Option<(String, Bytes)>,
    /// Settings that are valid but do not do what they say here (ignored by the task
    /// or the layout, a label that does not match the checkpoint, a capacity that
    /// looks like a missing unit), in plain words, for the caller to show.
    pub warnings: Vec<String>,
}

impl Settings {
    /// Parse a `--config` file's text. `origin` names the file in errors.
    pub fn parse(text: &str, format: Format, origin: &str) -> Result<Settings> {
        let value = format.parse_value(text, origin)?;
        let Value::Object(map) = value else {
            return Err(Error::Config {
                path: origin.to_string(),
                message: "expected a table/mapping of settings at the top level".into(),
            });
        };
        let mut s = Settings::default();
        for (k, v) in &map {
            let key = k.replace('-', "_");
            if !s.set_json(&key, v, Origin::file(origin, k))? {
                let known: Vec<&str> = SETTINGS.iter().map(|i| i.key).collect();
                return Err(Error::Config {
                    path: origin.to_string(),
                    message: format!("unknown key {k:?}; accepted keys: {}", known.join(", ")),
                });
            }
        }
        Ok(s)
    }

    /// Settings from `(key, text)` pairs, each parsed as its flag would be (and named by
    /// its flag in errors): `Settings::from_flags(&[("method", "lora"), ("seq_len", "4096")])`.
    pub fn from_flags(pairs: &[(&str, &str)]) -> Result<Settings> {
        let mut s = Settings::default();
        for (k, v) in pairs {
            let info = SETTINGS.iter().find(|i| i.key == *k).ok_or_else(|| {
                Error::invalid(
                    "setting",
                    k,
                    SETTINGS
                        .iter()
                        .map(|i| i.key)
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            })?;
            s.set_text(k, v, Origin::Flag(info.flag))?;
        }
        Ok(s)
    }

    /// Set `key` from a file's JSON value; `Ok(false)` if `key` is not a setting.
    /// Errors name `origin`, the value and what is accepted.
    pub fn set_json(&mut self, key: &str, v: &Value, origin: Origin) -> Result<bool> {
        self.set_from(key, Raw::Json(v), origin)
    }

    /// [`Settings::set_json`] from a flag's text.
    pub fn set_text(&mut self, key: &str, s: &str, origin: Origin) -> Result<bool> {
        self.set_from(key, Raw::Text(s), origin)
    }

    /// Record that `key` was set from `origin` (for importers that set fields directly).
    pub fn note(&mut self, key: &'static str, origin: Origin) {
        self.origins.insert(key, origin);
    }

    /// How a key is named in errors: its origin, else its flag.
    pub fn describe(&self, key: &str) -> String {
        match self.origins.get(key) {
            Some(o) => o.to_string(),
            None => SETTINGS
                .iter()
                .find(|i| i.key == key)
                .map_or_else(|| key.to_string(), |i| i.flag.to_string()),
        }
    }

    /// `e` with every setting in its subject named by where its value came from: the
    /// keys (`seq_len`) and flags (`--seq-len`) of an invalid value, the flags in a
    /// layout's reason.
    pub fn attribute(&self, e: Error) -> Error {
        match e {
            Error::InvalidValue {
                what,
                value,
                accepted,
            } => Error::InvalidValue {
                what: self.rename(&what, true),
                value,
                accepted,
            },
            Error::Layout(m) => Error::Layout(self.rename(&m, false)),
            other => other,
        }
    }

    /// Replace `--flag` tokens (and, with `keys`, bare setting keys) by [`Self::describe`].
    fn rename(&self, text: &str, keys: bool) -> String {
        let mut out = String::with_capacity(text.len());
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let flag = b[i..].starts_with(b"--");
            let start = if flag { i + 2 } else { i };
            let mut j = start;
            while j < b.len()
                && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || (flag && b[j] == b'-'))
            {
                j += 1;
            }
            let word = &text[i..j];
            let at_word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
            let info = if !at_word_start || j == start {
                None
            } else if flag {
                SETTINGS.iter().find(|s| s.flag == word)
            } else if keys {
                SETTINGS.iter().find(|s| s.key == word)
            } else {
                None
            };
            match info {
                Some(s) => {
                    out.push_str(&self.describe(s.key));
                    i = j;
                }
                None => {
                    let step = if j > i {
                        j - i
                    } else {
                        text[i..].chars().next().map_or(1, char::len_utf8)
                    };
                    out.push_str(&text[i..i + step]);
                    i += step;
                }
            }
        }
        out
    }

    /// The one place settings become validated domain values: workload, overheads,
    /// layout (checked against `spec` and the workload) and the capacity to check
    /// against. Errors name where each value came from.
    pub fn resolve(&self, spec: &ModelSpec) -> Result<Run> {
        let with_profile = self.with_profile()?;
        let this = with_profile.as_ref().unwrap_or(self);
        this.resolve_here(spec)
    }

    /// `self` under its `--framework` profile's defaults (`None` without one): the
    /// profile's settings, replaced by every value `self` sets.
    pub fn with_profile(&self) -> Result<Option<Settings>> {
        let Some(name) = &self.framework else {
            return Ok(None);
        };
        let p = crate::workload::profile::Profile::shipped(name.trim())
            .map_err(|e| self.attribute(e))?;
        Ok(Some(p.settings.merged(self.clone())))
    }

    fn resolve_here(&self, spec: &ModelSpec) -> Result<Run> {
        let (workload, overheads) = self.build(spec)?;
        self.check_global_batch()?;
        let layout = self.layout();
        layout
            .validate(spec, &workload)
            .map_err(|e| self.attribute(e))?;
        let capacity = self.capacity()?;
        let mut warnings = self.ignored(&workload, &layout);
        warnings.extend(self.mislabelled(spec, &workload));
        warnings.extend(self.capacity_hint());
        Ok(Run {
            workload,
            overheads,
            layout,
            capacity,
            warnings,
        })
    }

    /// Settings given that the task or the layout does not use.
    fn ignored(&self, w: &Workload, layout: &Layout) -> Vec<String> {
        let task = self.describe("task");
        let set = |keys: &[&str]| -> Vec<String> {
            keys.iter()
                .filter(|k| self.origins.contains_key(**k))
                .map(|k| self.describe(k))
                .collect()
        };
        let mut out = Vec::new();
        let (unused, what) = match w.task {
            Task::Infer => (
                set(&["grad_ckpt", "optimizer", "grad_accum", "master_weights", "batch", "seq_len"]),
                format!("{task} infer (nothing is trained; the shapes are --prompt-len, --gen-len, --concurrency)"),
            ),
            Task::Train => (
                set(&["prompt_len", "gen_len", "concurrency", "kv_dtype", "prefill_chunk"]),
                format!("{task} train (those are inference shapes)"),
            ),
        };
        for u in unused {
            out.push(format!("{u} has no effect with {what}"));
        }
        // a framework profile's LoRA defaults (litgpt's lora_dropout) are inert without
        // LoRA; one the user set is worth a word
        let from_profile = |k: &str| matches!(self.origins.get(k), Some(Origin::File { path, .. }) if path.starts_with("profile "));
        if self.lora_dropout.is_some_and(|p| p > 0.0)
            && w.method.lora().is_none()
            && !from_profile("lora_dropout")
        {
            out.push(format!(
                "{} has no effect with {} full (no LoRA adapters)",
                self.describe("lora_dropout"),
                self.describe("method")
            ));
        }
        if self.micro_batches.is_some() && layout.pp <= 1 {
            out.push(format!(
                "{} has no effect without pipeline parallelism ({} > 1)",
                self.describe("micro_batches"),
                self.describe("pp")
            ));
        }
        if self.fsdp_shard_group.is_some() && layout.fsdp != Some(FsdpMode::Hybrid) {
            out.push(format!(
                "{} has no effect without hybrid sharding ({} hybrid)",
                self.describe("fsdp_shard_group"),
                self.describe("fsdp")
            ));
        }
        out
    }

    /// A method label that does not describe what is sized.
    fn mislabelled(&self, spec: &ModelSpec, w: &Workload) -> Option<String> {
        let kind = self.method?;
        let method = format!("{} {}", self.describe("method"), kind.as_str());
        if w.task == Task::Infer && kind != MethodKind::Full {
            let sized = if kind == MethodKind::Qlora {
                "NF4 (4-bit) base weights"
            } else {
                "the base weights"
            };
            return Some(format!(
                "{method} with {} infer: the adapter is not sized; the estimate serves {sized} alone",
                self.describe("task")
            ));
        }
        match (&spec.quantization, kind) {
            (Some(q), MethodKind::Qlora) => Some(format!(
                "{method} on a {} {}-bit checkpoint: its weights stay {}, NF4 is not applied; this is LoRA over the quantized checkpoint",
                q.method, q.bits, q.method
            )),
            _ => None,
        }
    }

    /// A capacity under 1 GiB is almost always a missing unit (`--gpu-memory 80`).
    fn capacity_hint(&self) -> Option<String> {
        let b = self.gpu_memory?;
        if b.get() >= crate::units::bytes::GIB {
            return None;
        }
        let n = b.get();
        let hint = if n < 1 << 20 {
            format!("; did you mean {n}GiB?")
        } else {
            String::new()
        };
        Some(format!(
            "{} {n} is {n} bytes ({:.2} GiB), less than 1 GiB{hint}",
            self.describe("gpu_memory"),
            b.gib()
        ))
    }

    /// DeepSpeed's batch assertion (deepspeed/runtime/config.py `_batch_assertion`, v0.15):
    /// `train_batch_size == train_micro_batch_size_per_gpu × gradient_accumulation_steps
    /// × data-parallel size`, checked when all four are given.
    fn check_global_batch(&self) -> Result<()> {
        let (Some(t), Some(b), Some(g), Some(dp)) =
            (self.train_batch_size, self.batch, self.grad_accum, self.dp)
        else {
            return Ok(());
        };
        let product = b.checked_mul(g).and_then(|x| x.checked_mul(dp));
        if product == Some(t) {
            return Ok(());
        }
        let product = product.map_or_else(|| "more than 2^64".to_string(), |p| p.to_string());
        Err(Error::invalid(
            self.describe("train_batch_size"),
            t,
            format!(
                "{} ({b}) x {} ({g}) x {} ({dp}) = {product}",
                self.describe("batch"),
                self.describe("grad_accum"),
                self.describe("dp"),
            ),
        ))
    }

    /// Validated workload and overheads for `spec` (the layout is not checked: see
    /// [`Settings::resolve`]).
    pub fn build(&self, spec: &ModelSpec) -> Result<(Workload, Overheads)> {
        let mut w = self.workload().map_err(|e| self.attribute(e))?;
        if self.attn.is_none() && spec.attn_sinks {
            // transformers picks eager when a model has no SDPA path (gpt-oss's sinks:
            // `_supports_sdpa = False`; modeling_utils `_check_and_adjust_attn_implementation`)
            w.attn = Attn::Eager;
        }
        let ov = self.overheads();
        ov.validate().map_err(|e| self.attribute(e))?;
        w.validate(spec).map_err(|e| self.attribute(e))?;
        Ok((w, ov))
    }

    fn method(&self) -> Result<Method> {
        let kind = self.method.unwrap_or(MethodKind::Full);
        let lora_given = self.lora_rank.is_some()
            || self.lora_alpha.is_some()
            || self.lora_targets.is_some()
            || self.peft.is_some()
            || self.virtual_tokens.is_some();
        if kind == MethodKind::Full {
            if lora_given {
                let key = [
                    "lora_rank",
                    "lora_alpha",
                    "lora_targets",
                    "peft",
                    "virtual_tokens",
                ]
                .into_iter()
                .find(|k| match *k {
                    "lora_rank" => self.lora_rank.is_some(),
                    "lora_alpha" => self.lora_alpha.is_some(),
                    "lora_targets" => self.lora_targets.is_some(),
                    "peft" => self.peft.is_some(),
                    _ => self.virtual_tokens.is_some(),
                })
                .unwrap_or("lora_rank");
                return Err(Error::invalid(
                    key,
                    "set with method full",
                    "LoRA options only with --method lora or qlora",
                ));
            }
            return Ok(Method::Full);
        }
        let adapter = self.peft.unwrap_or_default();
        // (IA)³ has no rank: a rank given with it is a mistake, not ignored
        let rank = match (adapter.has_rank(), self.lora_rank) {
            (true, r) => r.unwrap_or(16),
            (false, None) => 0,
            (false, Some(r)) => {
                return Err(Error::invalid(
                    self.describe("lora_rank"),
                    r,
                    format!(
                    "no rank with --peft {adapter} (its vectors are sized by the adapted linears)"
                ),
                ))
            }
        };
        let rank = match (adapter, self.virtual_tokens) {
            (a, Some(n)) if a.has_virtual_tokens() && (1..=1 << 20).contains(&n) => n,
            (a, Some(n)) if a.has_virtual_tokens() => {
                return Err(Error::invalid(
                    self.describe("virtual_tokens"),
                    n,
                    "an integer in 1..=2^20",
                ))
            }
            (a, None) if a.has_virtual_tokens() => {
                return Err(Error::invalid(
                    "peft",
                    format!("{a} without --virtual-tokens"),
                    "--virtual-tokens N (peft's num_virtual_tokens)",
                ))
            }
            (_, Some(n)) => {
                return Err(Error::invalid(
                    self.describe("virtual_tokens"),
                    n,
                    "--virtual-tokens only with --peft prompt-tuning or prefix-tuning",
                ))
            }
            (_, None) => rank,
        };
        if !adapter.adapts_linears() && self.lora_targets.is_some() {
            return Err(Error::invalid(
                self.describe("lora_targets"),
                self.lora_targets.as_ref().map_or(String::new(), |t| t.to_string()),
                format!("none with --peft {adapter} (it adapts no linear: LN tuning trains the norms peft's mapping names for the model type, prompt tuning its virtual tokens)"),
            ));
        }
        let dropout = self.lora_dropout.unwrap_or(0.0);
        if !(dropout.is_finite() && (0.0..1.0).contains(&dropout)) {
            return Err(Error::invalid(
                "lora_dropout",
                dropout,
                "a probability 0 <= p < 1",
            ));
        }
        Ok(Method::new(
            kind,
            LoraConfig {
                rank,
                // (IA)³ has neither rank nor alpha; 1 keeps the alpha check meaningful
                alpha: self
                    .lora_alpha
                    .unwrap_or(if rank > 0 { 2.0 * rank as f64 } else { 1.0 }),
                targets: if !adapter.adapts_linears() {
                    LoraTargets::Names(Vec::new())
                } else {
                    self.lora_targets.clone().unwrap_or(LoraTargets::AllLinear)
                },
                adapter,
                double_quant: self.double_quant.unwrap_or(true),
                dropout,
                adapter_fp32: self.lora_dtype.is_none_or(|d| d == LoraDtype::Fp32),
                boft_perm_on_host: self.boft_perm_on_host.unwrap_or(false),
                osf_reconstruct: self
                    .peft_version
                    .is_some_and(|v| v < Version::PEFT_OSF_FACTORED),
                bnb_keeps_input: self
                    .bnb_version
                    .is_some_and(|v| v < Version::BNB_KEEPS_NO_INPUT),
            },
        ))
    }

    /// The workload, unvalidated.
    fn workload(&self) -> Result<Workload> {
        let d = Workload::default();
        let precision = self.dtype.unwrap_or(d.precision);
        let method = self.method()?;
        // prompt tuning prepends its virtual tokens to every sequence
        let virtual_tokens = match method.lora() {
            Some(l) if l.adapter == Adapter::PromptTuning => l.rank,
            _ => 0,
        };
        Ok(Workload {
            task: self.task.unwrap_or(d.task),
            method,
            precision,
            master_weights: self.master_weights.unwrap_or(false),
            optimizer: self.optimizer.unwrap_or(d.optimizer),
            batch: self.batch.unwrap_or(d.batch),
            seq_len: self
                .seq_len
                .unwrap_or(d.seq_len)
                .saturating_add(virtual_tokens),
            grad_accum: self.grad_accum.unwrap_or(d.grad_accum),
            // transformers picks eager when a model has no SDPA path (gpt-oss's sinks:
            // `_supports_sdpa = False`; modeling_utils `_check_and_adjust_attn_implementation`)
            attn: self.attn.unwrap_or(d.attn),
            grad_ckpt: self.grad_ckpt.unwrap_or(d.grad_ckpt),
            loss: self.loss.unwrap_or(d.loss),
            runtime: self.runtime.unwrap_or(d.runtime),
            legacy_causal_lm_loss: self
                .transformers_version
                .is_some_and(|v| v < Version::TRANSFORMERS_LOSS_FUNCTION),
            implementation: self.implementation.unwrap_or(d.implementation),
            device: self.device.unwrap_or(d.device),
            optimizer_in_bwd: self.optimizer_in_bwd.unwrap_or(false),
            activation_offload: self.activation_offload.unwrap_or(false),
            compile: self.compile.unwrap_or(false),
            images: self.images.unwrap_or(d.images),
            image_size: self.image_size.map(|s| (s.0, s.1)),
            moe_imbalance: self.moe_imbalance.unwrap_or(d.moe_imbalance),
            frozen_storage: None,
            vision: self.vision,
            infer: InferConfig {
                prompt_len: self.prompt_len.unwrap_or(d.infer.prompt_len),
                gen_len: self.gen_len.unwrap_or(d.infer.gen_len),
                concurrency: self.concurrency.unwrap_or(d.infer.concurrency),
                kv_dtype: self.kv_dtype.unwrap_or(precision.compute_dtype()),
                prefill_chunk: self.prefill_chunk,
            },
        })
    }

    fn overheads(&self) -> Overheads {
        let d = Overheads::default();
        Overheads {
            cuda_context: self.cuda_context.map_or(d.cuda_context, |b| b.0),
            cublas_workspace: self.cublas_workspace.map_or(d.cublas_workspace, |b| b.0),
            allocator_fragmentation: self
                .allocator_fragmentation
                .unwrap_or(d.allocator_fragmentation),
            ..d
        }
    }

    /// The parallel layout, unvalidated (the default is one GPU).
    pub fn layout(&self) -> Layout {
        let d = Layout::default();
        let b = Buffers::default();
        Layout {
            dp: self.dp.unwrap_or(d.dp),
            tp: self.tp.unwrap_or(d.tp),
            pp: self.pp.unwrap_or(d.pp),
            cp: self.cp.unwrap_or(d.cp),
            ep: self.ep.unwrap_or(d.ep),
            vpp: self.vpp.unwrap_or(d.vpp),
            sequence_parallel: self.sequence_parallel.unwrap_or(false),
            zero: self.zero.map_or(d.zero, |z| z.0),
            fsdp: self.fsdp,
            fsdp_version: self.fsdp_version.map_or(d.fsdp_version, |v| v.0),
            fsdp_upcast: self.fsdp_upcast.unwrap_or(false),
            fsdp_no_sync: self.fsdp_no_sync.unwrap_or(false),
            fsdp_separate_embeddings: self.fsdp_separate_embeddings.unwrap_or(false),
            offload_optimizer: self.offload_optimizer.unwrap_or(false),
            offload_params: self.offload_params.unwrap_or(false),
            distributed_optimizer: self.distributed_optimizer.unwrap_or(false),
            micro_batches: self.micro_batches,
            pp_layers: self.pp_layers.clone().map(|p| p.0),
            buffers: Buffers {
                nccl_per_group: self.nccl_buffers.map_or(b.nccl_per_group, |b| b.0),
                zero_reduce_bucket: self.zero_reduce_bucket.unwrap_or(b.zero_reduce_bucket),
                zero_allgather_bucket: self
                    .zero_allgather_bucket
                    .unwrap_or(b.zero_allgather_bucket),
                zero3_prefetch_bucket: self
                    .zero3_prefetch_bucket
                    .unwrap_or(b.zero3_prefetch_bucket),
                zero3_max_live_params: self
                    .zero3_max_live_params
                    .unwrap_or(b.zero3_max_live_params),
                ddp_bucket_view: self.ddp_bucket_view.unwrap_or(b.ddp_bucket_view),
                fsdp_shard_group: self.fsdp_shard_group,
            },
        }
    }

    /// The GPU memory to check against: `gpu_memory` wins over `gpu`.
    pub fn capacity(&self) -> Result<Option<(String, Bytes)>> {
        if let Some(b) = self.gpu_memory {
            return Ok(Some((format!("{:.2} GiB", b.gib()), b)));
        }
        if let Some(g) = &self.gpu {
            let gpu = crate::units::gpu::find(g).map_err(|e| self.attribute(e))?;
            return Ok(Some((gpu.name.to_string(), gpu.memory)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_formats_same_fields() {
        let t = Settings::parse(
            "batch = 4\nseq-len = 1024\ntask = \"train\"",
            Format::Toml,
            "a.toml",
        )
        .unwrap();
        let y = Settings::parse(
            "batch: 4\nseq_len: 1024\ntask: train",
            Format::Yaml,
            "a.yaml",
        )
        .unwrap();
        let j = Settings::parse(
            r#"{"batch": 4, "seq-len": 1024, "task": "train"}"#,
            Format::Json,
            "a.json",
        )
        .unwrap();
        let values = |s: &Settings| (s.batch, s.seq_len, s.task);
        assert_eq!(values(&t), values(&y));
        assert_eq!(values(&y), values(&j));
        assert_eq!(t.seq_len, Some(1024));
        assert_eq!(t.describe("seq_len"), "a.toml: seq-len");
        assert_eq!(j.describe("batch"), "a.json: batch");
    }

    #[test]
    fn unknown_keys_and_bad_types_are_errors() {
        let e = Settings::parse("batchsize = 4", Format::Toml, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("batchsize") && e.contains("x.toml") && e.contains("seq_len"),
            "{e}"
        );
        let e = Settings::parse(r#"{"batch": -1}"#, Format::Json, "x.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("-1") && e.contains("x.json: batch"), "{e}");
        let e = Settings::parse("attn = \"xformers\"", Format::Toml, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.toml: attn") && e.contains("xformers") && e.contains("sdpa"),
            "{e}"
        );
    }

    #[test]
    fn flags_override_file_and_take_its_origin() {
        let mut file = Settings::default();
        file.set_json("batch", &Value::from(2), Origin::file("f.toml", "batch"))
            .unwrap();
        file.set_json(
            "seq_len",
            &Value::from(512),
            Origin::file("f.toml", "seq_len"),
        )
        .unwrap();
        let mut flags = Settings::default();
        flags
            .set_text("batch", "8", Origin::Flag("--batch"))
            .unwrap();
        let m = file.merged(flags);
        assert_eq!((m.batch, m.seq_len), (Some(8), Some(512)));
        assert_eq!(m.describe("batch"), "--batch");
        assert_eq!(m.describe("seq_len"), "f.toml: seq_len");
        assert_eq!(m.describe("grad_accum"), "--grad-accum");
    }

    #[test]
    fn errors_name_where_the_value_came_from() {
        let spec = crate::hf::presets::get("gpt2").unwrap().unwrap();
        let mut s = Settings {
            batch: Some(0),
            ..Default::default()
        };
        s.note(
            "batch",
            Origin::file("ds.json", "train_micro_batch_size_per_gpu"),
        );
        let e = s.build(&spec).unwrap_err().to_string();
        assert!(
            e.contains("ds.json: train_micro_batch_size_per_gpu") && !e.contains("--batch"),
            "{e}"
        );
    }

    #[test]
    fn every_setting_has_a_distinct_flag_and_help() {
        let mut flags: Vec<&str> = SETTINGS.iter().map(|i| i.flag).collect();
        let n = flags.len();
        flags.sort();
        flags.dedup();
        assert_eq!(flags.len(), n, "duplicate flags");
        assert!(n >= 50, "{n} settings");
        for i in SETTINGS {
            assert!(i.flag.starts_with("--") && !i.help.is_empty(), "{i:?}");
        }
    }
}
