//! Importing training configs people already have: a DeepSpeed JSON config
//! (`--deepspeed`), HF `TrainingArguments`-style JSON/YAML and LLaMA-Factory YAML
//! (`--train-args`). Each becomes [`Settings`] plus warnings, every value typed and
//! marked with the file and key it came from (so errors say
//! `ds.json: train_micro_batch_size_per_gpu`, not a flag). Keys that matter for memory
//! are mapped; keys known to have no memory effect are accepted; anything else is
//! reported as a warning (never silently ignored); contradictory values are errors.
//! Pure: parses text.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::workload::layout::FsdpMode;
use crate::workload::settings::{Format, FsdpVersion, Origin, SettingValue, Settings, ZeroStage};
use crate::workload::{Attn, GradCkpt, Loss, MethodKind, Optimizer, Precision};

fn err(origin: &str, m: impl Into<String>) -> Error {
    Error::Config {
        path: origin.to_string(),
        message: m.into(),
    }
}

fn as_u64(v: &Value, key: &str, origin: &str) -> Result<Option<u64>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s == "auto" => Ok(None),
        Value::Number(n) => match n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f <= u64::MAX as f64)
                .map(|f| f as u64)
        }) {
            Some(x) => Ok(Some(x)),
            None => Err(err(
                origin,
                format!("{key}: expected a non-negative integer or \"auto\", got {n}"),
            )),
        },
        other => Err(err(
            origin,
            format!("{key}: expected a non-negative integer or \"auto\", got {other}"),
        )),
    }
}

fn as_bool(v: &Value, key: &str, origin: &str) -> Result<Option<bool>> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::String(s) if s == "auto" => Ok(None),
        other => Err(err(
            origin,
            format!("{key}: expected true, false or \"auto\", got {other}"),
        )),
    }
}

/// The settings one imported file builds, each value noted with the key it came from.
struct Import<'a> {
    s: Settings,
    origin: &'a str,
}

impl<'a> Import<'a> {
    fn new(origin: &'a str) -> Import<'a> {
        Import {
            s: Settings::default(),
            origin,
        }
    }

    /// Set `slot` (the setting `key`) to `v`, read from the file's `from` key.
    fn put<T>(
        &mut self,
        slot: fn(&mut Settings) -> &mut Option<T>,
        key: &'static str,
        v: Option<T>,
        from: &str,
    ) {
        if let Some(v) = v {
            *slot(&mut self.s) = Some(v);
            self.s.note(key, Origin::file(self.origin, from));
        }
    }

    /// [`Import::put`], refusing a second key that sets another value.
    fn put_once<T: PartialEq + std::fmt::Debug>(
        &mut self,
        slot: fn(&mut Settings) -> &mut Option<T>,
        key: &'static str,
        v: T,
        from: &str,
    ) -> Result<()> {
        let by = self.s.describe(key);
        if let Some(old) = slot(&mut self.s) {
            if *old != v {
                return Err(err(
                    self.origin,
                    format!("{from} = {v:?} contradicts {old:?} set by {by}"),
                ));
            }
        }
        self.put(slot, key, Some(v), from);
        Ok(())
    }
}

/// DeepSpeed keys with no effect on memory.
const DS_QUIET: &[&str] = &[
    "steps_per_print",
    "wall_clock_breakdown",
    "gradient_clipping",
    "scheduler",
    "zero_allow_untested_optimizer",
    "communication_data_type",
    "prescale_gradients",
    "gradient_predivide_factor",
    "flops_profiler",
    "tensorboard",
    "wandb",
    "comms_logger",
    "dump_state",
    "seed",
];

/// A DeepSpeed JSON config.
pub fn from_deepspeed(text: &str, origin: &str) -> Result<(Settings, Vec<String>)> {
    let v: Value = serde_json::from_str(text).map_err(|e| err(origin, e.to_string()))?;
    let Value::Object(map) = v else {
        return Err(err(origin, "expected a JSON object at the top level"));
    };
    let mut c = Import::new(origin);
    let mut warn = Vec::new();
    for (k, val) in &map {
        match k.as_str() {
            "train_micro_batch_size_per_gpu" => {
                c.put(|s| &mut s.batch, "batch", as_u64(val, k, origin)?, k)
            }
            "gradient_accumulation_steps" => c.put(
                |s| &mut s.grad_accum,
                "grad_accum",
                as_u64(val, k, origin)?,
                k,
            ),
            "bf16" | "fp16" => ds_precision(&mut c, k, val)?,
            "optimizer" => {
                let o = ds_optimizer(val, origin, &mut warn)?;
                c.put(|s| &mut s.optimizer, "optimizer", Some(o), "optimizer.type");
            }
            "zero_optimization" => {
                let Value::Object(z) = val else {
                    return Err(err(origin, "zero_optimization: expected an object"));
                };
                for (zk, zv) in z {
                    zero_key(&mut c, &mut warn, zk, zv)?;
                }
            }
            "activation_checkpointing" => {
                if val.get("partition_activations").and_then(Value::as_bool) == Some(true) {
                    warn.push(format!(
                        "{origin}: activation_checkpointing.partition_activations is not modelled"
                    ));
                }
            }
            "train_batch_size" => c.put(
                |s| &mut s.train_batch_size,
                "train_batch_size",
                as_u64(val, k, origin)?,
                k,
            ),
            k if DS_QUIET.contains(&k) => {}
            _ => warn.push(format!("{origin}: key {k:?} is not modelled")),
        }
    }
    Ok((c.s, warn))
}

/// DeepSpeed's `bf16` / `fp16` block: half-precision weights with fp32 master weights
/// in the optimizer (deepspeed/runtime/bf16_optimizer.py) when `enabled`.
fn ds_precision(c: &mut Import, k: &str, val: &Value) -> Result<()> {
    let origin = c.origin;
    let key = format!("{k}.enabled");
    if !val.is_object() {
        // deepspeed/runtime/config.py (v0.15) reads param_dict[k].get("enabled")
        return Err(err(
            origin,
            format!("{k}: expected an object such as {{\"enabled\": true}}, got {val} (DeepSpeed rejects a bare value)"),
        ));
    }
    if as_bool(val.get("enabled").unwrap_or(&Value::Null), &key, origin)? == Some(true) {
        let p = if k == "bf16" {
            Precision::Bf16
        } else {
            Precision::Fp16
        };
        c.put_once(|s| &mut s.dtype, "dtype", p, &key)?;
        c.put(
            |s| &mut s.master_weights,
            "master_weights",
            Some(true),
            &key,
        );
    }
    Ok(())
}

/// DeepSpeed's `optimizer.type` → the optimizer modelled.
fn ds_optimizer(val: &Value, origin: &str, warn: &mut Vec<String>) -> Result<Optimizer> {
    let t = val
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    Ok(match t.as_str() {
        "adam" | "adamw" | "fusedadam" => Optimizer::AdamW,
        "onebitadam" | "zerooneadam" | "onebitlamb" | "lamb" => {
            warn.push(format!(
                "{origin}: optimizer {t} is modelled as AdamW (two fp32 states)"
            ));
            Optimizer::AdamW
        }
        "sgd" => Optimizer::SgdMomentum,
        "adafactor" => Optimizer::Adafactor,
        "lion" => Optimizer::Lion,
        _ => {
            return Err(err(
                origin,
                format!(
                    "optimizer.type {t:?}: accepted Adam, AdamW, FusedAdam, SGD, Adafactor, Lion"
                ),
            ))
        }
    })
}

/// One key of DeepSpeed's `zero_optimization` block.
fn zero_key(c: &mut Import, warn: &mut Vec<String>, zk: &str, zv: &Value) -> Result<()> {
    let origin = c.origin;
    let key = format!("zero_optimization.{zk}");
    let offloaded = || {
        let dev = zv.get("device").and_then(Value::as_str).unwrap_or("none");
        Some(dev == "cpu" || dev == "nvme")
    };
    match zk {
        "stage" => {
            let stage = match as_u64(zv, &key, origin)? {
                None => None,
                Some(s @ 0..=3) => Some(ZeroStage(s as u8)),
                Some(s) => return Err(Error::invalid(format!("{origin}: {key}"), s, "0, 1, 2, 3")),
            };
            c.put(|s| &mut s.zero, "zero", stage, &key);
        }
        "offload_optimizer" => c.put(
            |s| &mut s.offload_optimizer,
            "offload_optimizer",
            offloaded(),
            &key,
        ),
        "offload_param" => c.put(
            |s| &mut s.offload_params,
            "offload_params",
            offloaded(),
            &key,
        ),
        "reduce_bucket_size" => c.put(
            |s| &mut s.zero_reduce_bucket,
            "zero_reduce_bucket",
            as_u64(zv, &key, origin)?,
            &key,
        ),
        "allgather_bucket_size" => c.put(
            |s| &mut s.zero_allgather_bucket,
            "zero_allgather_bucket",
            as_u64(zv, &key, origin)?,
            &key,
        ),
        "stage3_prefetch_bucket_size" => c.put(
            |s| &mut s.zero3_prefetch_bucket,
            "zero3_prefetch_bucket",
            as_u64(zv, &key, origin)?,
            &key,
        ),
        "stage3_max_live_parameters" => c.put(
            |s| &mut s.zero3_max_live_params,
            "zero3_max_live_params",
            as_u64(zv, &key, origin)?,
            &key,
        ),
        "overlap_comm"
        | "contiguous_gradients"
        | "reduce_scatter"
        | "allgather_partitions"
        | "stage3_param_persistence_threshold"
        | "stage3_max_reuse_distance"
        | "stage3_gather_16bit_weights_on_model_save"
        | "sub_group_size"
        | "round_robin_gradients"
        | "cpu_offload"
        | "load_from_fp32_weights"
        | "elastic_checkpoint"
        | "ignore_unused_parameters" => {}
        _ => warn.push(format!("{origin}: {key} is not modelled")),
    }
    Ok(())
}

/// HF TrainingArguments / LLaMA-Factory keys with no effect on memory.
const TA_QUIET: &[&str] = &[
    "output_dir",
    "overwrite_output_dir",
    "do_train",
    "do_eval",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "logging_steps",
    "logging_dir",
    "save_steps",
    "save_strategy",
    "save_total_limit",
    "eval_steps",
    "eval_strategy",
    "evaluation_strategy",
    "report_to",
    "seed",
    "dataloader_num_workers",
    "run_name",
    "dataset",
    "dataset_dir",
    "template",
    "stage",
    "val_size",
    "per_device_eval_batch_size",
    "preprocessing_num_workers",
    "plot_loss",
    "overwrite_cache",
    "ddp_timeout",
    "max_grad_norm",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "push_to_hub",
    "hub_model_id",
    "resume_from_checkpoint",
    "trust_remote_code",
    "max_samples",
    "packing",
    "logging_first_step",
    "remove_unused_columns",
    "group_by_length",
    "neftune_noise_alpha",
    "lr",
    "eval_dataset",
    "load_best_model_at_end",
];

/// `val` as a finite number accepted by `ok` (`None` for null); anything else is an
/// error naming `origin: key` and `accepted`.
fn number_where(
    val: &Value,
    key: &str,
    origin: &str,
    ok: impl Fn(f64) -> bool,
    accepted: &str,
) -> Result<Option<f64>> {
    match val {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.is_finite() && ok(x) => Ok(Some(x)),
            _ => Err(Error::invalid(format!("{origin}: {key}"), val, accepted)),
        },
        _ => Err(Error::invalid(format!("{origin}: {key}"), val, accepted)),
    }
}

/// HF TrainingArguments-style JSON/YAML or a LLaMA-Factory YAML.
pub fn from_train_args(
    text: &str,
    format: Format,
    origin: &str,
) -> Result<(Settings, Vec<String>)> {
    let Value::Object(map) = format.parse_value(text, origin)? else {
        return Err(err(
            origin,
            "expected a mapping of arguments at the top level",
        ));
    };
    let mut c = Import::new(origin);
    let mut warn = Vec::new();
    let mut quant = None;
    let mut finetuning = None;
    let llama_factory = ["stage", "finetuning_type", "template"]
        .iter()
        .any(|k| map.contains_key(*k));
    for (k, val) in &map {
        match k.as_str() {
            "finetuning_type" => finetuning = val.as_str().map(|f| (f.to_string(), k.clone())),
            "quantization_bit" | "load_in_4bit" | "load_in_8bit" => {
                let bits = match (k.as_str(), val) {
                    ("quantization_bit", _) => as_u64(val, k, origin)?,
                    ("load_in_4bit", Value::Bool(true)) => Some(4),
                    ("load_in_8bit", Value::Bool(true)) => Some(8),
                    _ => None,
                };
                if let Some(b) = bits {
                    quant = Some((b, k.clone()));
                }
            }
            _ => train_arg(&mut c, &mut warn, k, val)?,
        }
    }
    // TrainingArguments.gradient_checkpointing_kwargs is passed to
    // gradient_checkpointing_enable (modeling_utils.py): `use_reentrant: true` picks
    // torch's reentrant CheckpointFunction; absent, transformers 5 uses non-reentrant
    if let Some(kw) = map.get("gradient_checkpointing_kwargs") {
        let key = "gradient_checkpointing_kwargs.use_reentrant";
        let reentrant = match kw {
            Value::Object(o) => match o.get("use_reentrant") {
                Some(v) => as_bool(v, key, origin)?,
                None => None,
            },
            Value::Null => None,
            other => {
                return Err(err(
                    origin,
                    format!("gradient_checkpointing_kwargs = {other}: expected a mapping such as {{\"use_reentrant\": false}}"),
                ))
            }
        };
        if reentrant == Some(true) && c.s.grad_ckpt == Some(GradCkpt::Full) {
            c.put(
                |s| &mut s.grad_ckpt,
                "grad_ckpt",
                Some(GradCkpt::FullReentrant),
                key,
            );
        }
    }
    if llama_factory && finetuning.is_none() {
        // LLaMA-Factory v0.9.1 src/llamafactory/hparams/finetuning_args.py:
        // finetuning_type: Literal["lora", "freeze", "full"] = "lora"
        finetuning = Some(("lora".into(), default_key("finetuning_type", "lora")));
    }
    method_of(&mut c, &mut warn, finetuning, quant);
    fsdp_mixed_precision(&mut c, &mut warn, &map)?;
    if llama_factory {
        llama_factory_defaults(&mut c, &map)?;
    }
    training_arguments_defaults(&mut c);
    Ok((c.s, warn))
}

/// How an absent key that took the framework's default is named in messages.
fn default_key(key: &str, value: &str) -> String {
    format!("{key} (absent: default {value})")
}

impl Import<'_> {
    /// Set `slot` to `v` when nothing set it, noted as the default of the absent `from`.
    fn default<T>(
        &mut self,
        slot: fn(&mut Settings) -> &mut Option<T>,
        key: &'static str,
        v: T,
        from: &str,
        shown: &str,
    ) {
        if slot(&mut self.s).is_none() {
            self.put(slot, key, Some(v), &default_key(from, shown));
        }
    }
}

/// HF `TrainingArguments` defaults for memory-relevant keys the file leaves out
/// (src/transformers/training_args.py): `per_device_train_batch_size: int = 8`;
/// `optim`: `default_optim = "adamw_torch"`, then `if is_torch_greater_or_equal_than_2_8:
/// default_optim = "adamw_torch_fused"` (transformers 4.56+; the stack this tool models —
/// transformers 5, torch 2.15 — takes the fused kernel, no step temporary); older
/// stacks write `optim: adamw_torch` (foreach) in the file;
/// `gradient_checkpointing: bool = False` (the tool's default, nothing to set).
fn training_arguments_defaults(c: &mut Import) {
    c.default(
        |s| &mut s.batch,
        "batch",
        8,
        "per_device_train_batch_size",
        "8",
    );
    c.default(
        |s| &mut s.optimizer,
        "optimizer",
        Optimizer::AdamW,
        "optim",
        "adamw_torch_fused",
    );
}

/// LLaMA-Factory's defaults for memory-relevant keys the file leaves out (v0.9.1):
/// - `hparams/model_args.py`: `disable_gradient_checkpointing: bool = False`,
///   `use_reentrant_gc: bool = True` → `model/model_utils/checkpointing.py` calls
///   `gradient_checkpointing_enable` on every trainable model: full per-layer
///   checkpointing, reentrant (`full-reentrant`: the layer is recomputed before its
///   backward) unless `use_reentrant_gc: false` (`full`: torch's non-reentrant
///   checkpoint, recomputing at the first unpack).
///   `flash_attn: AttentionFunction = "auto"` (transformers' choice: SDPA);
///   `enable_liger_kernel: bool = False` (the standard loss).
/// - `hparams/finetuning_args.py`: `lora_rank: int = 8`, `lora_target: str = "all"`
///   (`lora_alpha: None` → rank × 2, no memory effect).
/// - `hparams/data_args.py`: `cutoff_len: int = 2048`.
fn llama_factory_defaults(c: &mut Import, map: &serde_json::Map<String, Value>) -> Result<()> {
    let origin = c.origin;
    let disable = match map.get("disable_gradient_checkpointing") {
        Some(v) => as_bool(v, "disable_gradient_checkpointing", origin)?.unwrap_or(false),
        None => false,
    };
    if disable {
        c.default(
            |s| &mut s.grad_ckpt,
            "grad_ckpt",
            GradCkpt::None,
            "disable_gradient_checkpointing",
            "true",
        );
    } else {
        let from = if map.contains_key("disable_gradient_checkpointing") {
            "disable_gradient_checkpointing".to_string()
        } else {
            default_key("disable_gradient_checkpointing", "false")
        };
        let reentrant = match map.get("use_reentrant_gc") {
            Some(v) => as_bool(v, "use_reentrant_gc", origin)?.unwrap_or(true),
            None => true,
        };
        let (mode, from) = match (reentrant, map.contains_key("use_reentrant_gc")) {
            (true, false) => (
                GradCkpt::FullReentrant,
                format!("{from}, {}", default_key("use_reentrant_gc", "true")),
            ),
            (true, true) => (GradCkpt::FullReentrant, "use_reentrant_gc".to_string()),
            (false, _) => (GradCkpt::Full, "use_reentrant_gc".to_string()),
        };
        if matches!(c.s.grad_ckpt, None | Some(GradCkpt::Full)) {
            c.put(|s| &mut s.grad_ckpt, "grad_ckpt", Some(mode), &from);
        }
    }
    c.default(|s| &mut s.attn, "attn", Attn::Sdpa, "flash_attn", "auto");
    c.default(|s| &mut s.seq_len, "seq_len", 2048, "cutoff_len", "2048");
    if c.s.method.is_some_and(|m| m != MethodKind::Full) {
        c.default(|s| &mut s.lora_rank, "lora_rank", 8, "lora_rank", "8");
        c.default(
            |s| &mut s.lora_targets,
            "lora_targets",
            crate::arch::LoraTargets::AllLinear,
            "lora_target",
            "all",
        );
    }
    Ok(())
}

/// Trainer's `bf16`/`fp16` with `fsdp`: accelerate's FSDP plugin installs
/// `MixedPrecision(param_dtype=bf16, reduce_dtype=bf16, buffer_dtype=bf16)` over fp32
/// sharded parameters (accelerate v1.6.0 src/accelerate/utils/dataclasses.py,
/// `FullyShardedDataParallelPlugin.set_mixed_precision`): the fp32 shards are the
/// master weights, the gathered parameters are already half, and there is no autocast
/// weight cache. That is this tool's half dtype + `master_weights` + FSDP. The FSDP
/// version is accelerate's default, 1 (`fsdp_version` unset → `FSDP_VERSION` env,
/// default "1"), unless `fsdp_config` says `fsdp_version: 2`. LoRA runs keep the
/// half-precision frozen base set by [`method_of`].
fn fsdp_mixed_precision(
    c: &mut Import,
    warn: &mut Vec<String>,
    map: &serde_json::Map<String, Value>,
) -> Result<()> {
    let origin = c.origin;
    if c.s.fsdp.is_none() {
        if map.contains_key("fsdp_config") && c.s.fsdp.is_none() {
            warn.push(format!(
                "{origin}: fsdp_config is ignored without an fsdp sharding option"
            ));
        }
        return Ok(());
    }
    let mut version = FsdpVersion(1);
    let mut from = default_key("fsdp_config.fsdp_version", "1");
    match map.get("fsdp_config") {
        None | Some(Value::Null) => {}
        Some(Value::Object(cfg)) => {
            // transformers strips the "fsdp_" prefix of fsdp_config keys
            for key in ["fsdp_version", "version"] {
                if let Some(v) = cfg.get(key) {
                    from = format!("fsdp_config.{key}");
                    version = FsdpVersion::from_json(v).map_err(|(val, acc)| {
                        Error::invalid(format!("{origin}: {from}"), val, acc)
                    })?;
                }
            }
            for key in ["activation_checkpointing", "fsdp_activation_checkpointing"] {
                if let Some(v) = cfg.get(key) {
                    let k = format!("fsdp_config.{key}");
                    if as_bool(v, &k, origin)? == Some(true) {
                        c.put_once(|s| &mut s.grad_ckpt, "grad_ckpt", GradCkpt::Full, &k)?;
                    }
                }
            }
        }
        Some(other) => warn.push(format!(
            "{origin}: fsdp_config {other} is not read (a file path or a non-mapping); FSDP version 1 assumed, accelerate's default"
        )),
    }
    c.put(
        |s| &mut s.fsdp_version,
        "fsdp_version",
        Some(version),
        &from,
    );
    if let Some(p @ (Precision::AmpBf16 | Precision::AmpFp16)) = c.s.dtype {
        let half = if p == Precision::AmpBf16 {
            Precision::Bf16
        } else {
            Precision::Fp16
        };
        let by = c.s.origins.get("dtype").cloned();
        c.s.dtype = Some(half);
        c.s.master_weights = Some(true);
        if let Some(o) = by {
            c.s.note("master_weights", o);
        }
    }
    Ok(())
}

/// One TrainingArguments / LLaMA-Factory key (all but the method and quantization keys).
fn train_arg(c: &mut Import, warn: &mut Vec<String>, k: &str, val: &Value) -> Result<()> {
    if shape_or_kernel_arg(c, k, val)? {
        return Ok(());
    }
    let origin = c.origin;
    let s = val.as_str();
    match k {
        "model_name_or_path" => c.put(|s| &mut s.model, "model", s.map(str::to_string), k),
        "per_device_train_batch_size" => {
            c.put(|s| &mut s.batch, "batch", as_u64(val, k, origin)?, k)
        }
        "gradient_accumulation_steps" => c.put(
            |s| &mut s.grad_accum,
            "grad_accum",
            as_u64(val, k, origin)?,
            k,
        ),
        "gradient_checkpointing" => {
            if as_bool(val, k, origin)? == Some(true) {
                c.put_once(|s| &mut s.grad_ckpt, "grad_ckpt", GradCkpt::Full, k)?;
            }
        }
        "bf16" | "fp16" => {
            if as_bool(val, k, origin)? == Some(true) {
                // Trainer's bf16/fp16 = autocast over the loaded weights
                let p = if k == "bf16" {
                    Precision::AmpBf16
                } else {
                    Precision::AmpFp16
                };
                c.put_once(|s| &mut s.dtype, "dtype", p, k)?;
            }
        }
        "pure_bf16" => {
            if as_bool(val, k, origin)? == Some(true) {
                c.put(|s| &mut s.dtype, "dtype", Some(Precision::Bf16), k);
            }
        }
        "optim" => {
            let opt = optim_of(s.unwrap_or(""), origin)?;
            c.put(|s| &mut s.optimizer, "optimizer", Some(opt), k);
        }
        "lora_r" | "lora_rank" => c.put(
            |s| &mut s.lora_rank,
            "lora_rank",
            as_u64(val, k, origin)?,
            k,
        ),
        "lora_alpha" => {
            let alpha = number_where(val, k, origin, |a| a > 0.0, "a positive number")?;
            c.put(|s| &mut s.lora_alpha, "lora_alpha", alpha, k)
        }
        "lora_dropout" => {
            let p = number_where(
                val,
                k,
                origin,
                |p| (0.0..1.0).contains(&p),
                "a probability 0 <= p < 1",
            )?;
            c.put(|s| &mut s.lora_dropout, "lora_dropout", p, k)
        }
        "lora_target" | "target_modules" => {
            let targets = lora_targets_of(val, k, origin)?;
            c.put(|s| &mut s.lora_targets, "lora_targets", Some(targets), k);
        }
        "deepspeed" => {
            return Err(err(origin, "deepspeed: pass that file with --deepspeed PATH as well (its settings are read from there)"));
        }
        // read by `fsdp_mixed_precision` and `llama_factory_defaults`
        "fsdp_config"
        | "disable_gradient_checkpointing"
        | "use_reentrant_gc"
        | "gradient_checkpointing_kwargs" => {}
        "ddp_find_unused_parameters" | "ddp_bucket_cap_mb" => {}
        k if TA_QUIET.contains(&k) => {}
        _ => warn.push(format!("{origin}: key {k:?} is not modelled")),
    }
    Ok(())
}

/// The sequence-length, attention-kernel, loss-kernel and FSDP keys; `Ok(false)` for
/// any other key.
fn shape_or_kernel_arg(c: &mut Import, k: &str, val: &Value) -> Result<bool> {
    let origin = c.origin;
    let s = val.as_str();
    match k {
        "cutoff_len" | "max_seq_length" | "max_length" | "model_max_length" => {
            if let Some(n) = as_u64(val, k, origin)? {
                c.put_once(|s| &mut s.seq_len, "seq_len", n, k)?;
            }
        }
        "attn_implementation" | "flash_attn" => {
            let a = s.unwrap_or("").to_ascii_lowercase();
            let attn = match a.as_str() {
                "fa2" | "flash_attention_2" => Attn::Flash,
                "sdpa" | "auto" => Attn::Sdpa,
                "eager" | "disabled" => Attn::Eager,
                _ => {
                    return Err(err(
                        origin,
                        format!(
                        "{k} {a:?}: accepted fa2/flash_attention_2, sdpa, eager, auto, disabled"
                    ),
                    ))
                }
            };
            c.put(|s| &mut s.attn, "attn", Some(attn), k);
        }
        "use_liger_kernel" | "enable_liger_kernel" => {
            if as_bool(val, k, origin)? == Some(true) {
                c.put(|s| &mut s.loss, "loss", Some(Loss::FusedLinearCe), k);
            }
        }
        "fsdp" => fsdp_arg(c, k, val)?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// `FSDPOption` of transformers v4.46.0 src/transformers/trainer_utils.py.
const FSDP_OPTIONS: &str =
    "full_shard, shard_grad_op, hybrid_shard, hybrid_shard_zero2, no_shard, offload, auto_wrap";

/// `TrainingArguments.fsdp`: `"full_shard auto_wrap offload"`, a list of those options,
/// or `""`/`false` for none.
fn fsdp_arg(c: &mut Import, k: &str, val: &Value) -> Result<()> {
    let origin = c.origin;
    let bad = |v: &dyn std::fmt::Display| {
        Error::invalid(
            format!("{origin}: {k}"),
            v,
            format!("a string or list of FSDP options: {FSDP_OPTIONS}"),
        )
    };
    let opts: Vec<&str> = match val {
        Value::Null | Value::Bool(false) => Vec::new(),
        Value::String(t) => t.split_whitespace().collect(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().ok_or_else(|| bad(x)))
            .collect::<Result<_>>()?,
        other => return Err(bad(other)),
    };
    let mut mode = None;
    for o in &opts {
        match *o {
            "full_shard" => mode = Some(FsdpMode::Full),
            "shard_grad_op" => mode = Some(FsdpMode::GradOp),
            "hybrid_shard" | "hybrid_shard_zero2" => mode = Some(FsdpMode::Hybrid),
            "no_shard" | "offload" | "auto_wrap" => {}
            other => return Err(bad(&other)),
        }
    }
    c.put(|s| &mut s.fsdp, "fsdp", mode, k);
    if opts.contains(&"offload") {
        c.put(|s| &mut s.offload_params, "offload_params", Some(true), k);
    }
    Ok(())
}

/// A string or a list of strings, as the list.
fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(t) => vec![t.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// TrainingArguments `optim` (transformers `OptimizerNames`) → the optimizer modelled.
fn optim_of(o: &str, origin: &str) -> Result<Optimizer> {
    let o = o.to_ascii_lowercase();
    Ok(match o.as_str() {
        "adamw_torch_fused" => Optimizer::AdamW,
        "adamw_torch" | "adamw_hf" => Optimizer::AdamWForeach,
        "adamw_bnb_8bit" | "adamw_8bit" | "adamw_8bit_bnb" => Optimizer::AdamW8bit,
        "paged_adamw_32bit" | "paged_adamw" => Optimizer::PagedAdamW,
        "paged_adamw_8bit" => Optimizer::PagedAdamW8bit,
        "adafactor" => Optimizer::Adafactor,
        "sgd" => Optimizer::Sgd,
        "lion_32bit" | "paged_lion_32bit" => Optimizer::Lion,
        _ => return Err(err(origin, format!("optim {o:?}: accepted adamw_torch_fused, adamw_torch, adamw_bnb_8bit, paged_adamw_32bit, paged_adamw_8bit, adafactor, sgd, lion_32bit"))),
    })
}

/// LLaMA-Factory `lora_target` / peft `target_modules`: a string or a list, `all` =
/// every linear.
fn lora_targets_of(val: &Value, k: &str, origin: &str) -> Result<crate::arch::LoraTargets> {
    if !matches!(val, Value::String(_) | Value::Array(_)) {
        return Err(err(
            origin,
            format!("{k}: expected a string or a list of module names"),
        ));
    }
    let t = strings(val).join(",");
    let t = if t == "all" {
        "all-linear".to_string()
    } else {
        t
    };
    crate::arch::LoraTargets::parse(&t)
        .map_err(|e| crate::workload::settings::named(e, &Origin::file(origin, k)))
}

/// The method from `finetuning_type` and the quantization keys (value, key read).
fn method_of(
    c: &mut Import,
    warn: &mut Vec<String>,
    finetuning: Option<(String, String)>,
    quant: Option<(u64, String)>,
) {
    let origin = c.origin;
    let ft = finetuning.as_ref().map(|(f, _)| f.as_str());
    let bits = quant.as_ref().map(|(b, _)| *b);
    let from = finetuning
        .as_ref()
        .map(|(_, k)| k.clone())
        .or_else(|| quant.as_ref().map(|(_, k)| k.clone()))
        .unwrap_or_else(|| "lora_rank".into());
    let qkey = quant
        .as_ref()
        .map_or("quantization_bit", |(_, k)| k.as_str());
    match (ft, bits) {
        (Some("lora") | None, Some(4)) if c.s.lora_rank.is_some() || ft.is_some() => {
            c.put(|s| &mut s.method, "method", Some(MethodKind::Qlora), &from)
        }
        (Some("lora"), b) => {
            if let Some(b) = b {
                warn.push(format!(
                    "{origin}: {b}-bit base weights ({qkey}) are not modelled; estimated as LoRA over unquantized half-precision weights (an upper bound)"
                ));
            }
            c.put(|s| &mut s.method, "method", Some(MethodKind::Lora), &from)
        }
        (Some("full") | None, None) => {}
        (Some("freeze"), _) => warn.push(format!(
            "{origin}: finetuning_type freeze is modelled as full fine-tuning"
        )),
        (Some(other), _) => warn.push(format!(
            "{origin}: finetuning_type {other} is not modelled; estimated as full fine-tuning"
        )),
        (None, Some(b)) if c.s.lora_rank.is_none() => warn.push(format!(
            "{origin}: {b}-bit base weights ({qkey}) without a LoRA adapter (finetuning_type or lora_rank) are not modelled; estimated as full fine-tuning of unquantized weights"
        )),
        (None, Some(b)) => warn.push(format!(
            "{origin}: {b}-bit base weights ({qkey}) are not modelled; estimated as LoRA over unquantized half-precision weights (an upper bound)"
        )),
    }
    if c.s.method.is_none() && c.s.lora_rank.is_some() {
        let m = if bits == Some(4) {
            MethodKind::Qlora
        } else {
            MethodKind::Lora
        };
        c.put(|s| &mut s.method, "method", Some(m), &from);
    }
    let lora = c.s.method.is_some_and(|m| m != MethodKind::Full);
    if let (true, Some(p @ (Precision::AmpBf16 | Precision::AmpFp16))) = (lora, c.s.dtype) {
        // PEFT/LLaMA-Factory load the frozen base in half precision
        let half = if p == Precision::AmpBf16 {
            Precision::Bf16
        } else {
            Precision::Fp16
        };
        c.s.dtype = Some(half);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deepspeed_zero3_offload() {
        let ds = r#"{"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 8,
            "bf16": {"enabled": true}, "zero_optimization": {"stage": 3,
            "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "none"},
            "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": 1000000},
            "gradient_clipping": 1.0, "mystery": 1}"#;
        let (c, w) = from_deepspeed(ds, "ds.json").unwrap();
        assert_eq!(
            (c.batch, c.grad_accum, c.zero),
            (Some(4), Some(8), Some(ZeroStage(3)))
        );
        assert_eq!(
            (c.offload_optimizer, c.offload_params),
            (Some(true), Some(false))
        );
        assert_eq!(c.dtype, Some(Precision::Bf16));
        assert_eq!(
            c.describe("batch"),
            "ds.json: train_micro_batch_size_per_gpu"
        );
        assert_eq!(c.zero3_prefetch_bucket, Some(1_000_000));
        assert_eq!(c.zero_reduce_bucket, None, "auto keeps the default");
        assert!(w.iter().any(|x| x.contains("mystery")), "{w:?}");
    }

    #[test]
    fn deepspeed_stage_out_of_range_is_an_error_not_a_wrapped_u8() {
        // `"stage": 259` used to become ZeRO-3 through an `as u8` cast
        for bad in ["259", "4", "-1", "3.5"] {
            let ds = format!(r#"{{"zero_optimization": {{"stage": {bad}}}}}"#);
            let e = from_deepspeed(&ds, "ds.json").unwrap_err().to_string();
            assert!(e.contains("ds.json"), "{bad}: {e}");
            assert!(e.contains("zero_optimization.stage"), "{bad}: {e}");
        }
        let (c, _) = from_deepspeed(r#"{"zero_optimization": {"stage": 2}}"#, "ds.json").unwrap();
        assert_eq!(c.zero, Some(ZeroStage(2)));
    }

    #[test]
    fn deepspeed_contradictions_are_errors() {
        let ds = r#"{"bf16": {"enabled": true}, "fp16": {"enabled": true}}"#;
        assert!(from_deepspeed(ds, "ds.json")
            .unwrap_err()
            .to_string()
            .contains("contradicts"));
        assert!(from_deepspeed("[1]", "ds.json").is_err());
        assert!(from_deepspeed(r#"{"zero_optimization": {"stage": "three"}}"#, "ds.json").is_err());
    }

    #[test]
    fn llama_factory_qlora_yaml() {
        let y = "model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\nstage: sft\nfinetuning_type: lora\n\
                 lora_target: all\nlora_rank: 8\nquantization_bit: 4\ncutoff_len: 1024\n\
                 per_device_train_batch_size: 2\ngradient_accumulation_steps: 8\nbf16: true\n\
                 gradient_checkpointing: true\noptim: paged_adamw_8bit\nunknown_knob: 3\n\
                 lora_dropout: 0.1\n";
        let (c, w) = from_train_args(y, Format::Yaml, "sft.yaml").unwrap();
        // finetuning_args.py `lora_dropout: float = 0.0`; peft LoraConfig.lora_dropout
        assert_eq!(c.lora_dropout, Some(0.1));
        let bad = from_train_args("lora_dropout: 1.5\n", Format::Yaml, "sft.yaml").unwrap_err();
        assert!(
            bad.to_string().contains("lora_dropout") && bad.to_string().contains("0 <= p < 1"),
            "{bad}"
        );
        assert_eq!(c.method, Some(MethodKind::Qlora));
        assert_eq!(c.lora_targets, Some(crate::arch::LoraTargets::AllLinear));
        assert_eq!(
            (c.lora_rank, c.seq_len, c.batch),
            (Some(8), Some(1024), Some(2))
        );
        assert_eq!(c.dtype, Some(Precision::Bf16));
        // LLaMA-Factory's use_reentrant_gc defaults to true
        assert_eq!(c.grad_ckpt, Some(GradCkpt::FullReentrant));
        assert_eq!(c.optimizer, Some(Optimizer::PagedAdamW8bit));
        assert_eq!(c.describe("batch"), "sft.yaml: per_device_train_batch_size");
        assert!(w.iter().any(|x| x.contains("unknown_knob")));
    }

    #[test]
    fn training_arguments_json() {
        let j = r#"{"per_device_train_batch_size": 8, "bf16": true, "optim": "adamw_torch",
                    "gradient_checkpointing": false, "fsdp": "full_shard auto_wrap", "max_seq_length": 2048}"#;
        let (c, _) = from_train_args(j, Format::Json, "args.json").unwrap();
        // bf16 + fsdp is accelerate's FSDP mixed precision, not autocast (finding H1)
        assert_eq!(c.dtype, Some(Precision::Bf16));
        assert_eq!(c.master_weights, Some(true));
        assert_eq!(c.optimizer, Some(Optimizer::AdamWForeach));
        assert_eq!(c.fsdp, Some(FsdpMode::Full));
        assert_eq!(c.grad_ckpt, None);
        let bad = r#"{"optim": "adamw_quantum"}"#;
        assert!(from_train_args(bad, Format::Json, "args.json")
            .unwrap_err()
            .to_string()
            .contains("adamw_quantum"));
    }
}
