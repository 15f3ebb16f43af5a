//! Importing training configs people already have: a DeepSpeed JSON config
//! (`--deepspeed`), HF `TrainingArguments`-style JSON/YAML and LLaMA-Factory YAML
//! (`--train-args`). Each becomes a [`RunConfig`] plus warnings. Keys that matter for
//! memory are mapped; keys known to have no memory effect are accepted; anything else is
//! reported as a warning (never silently ignored); contradictory values are errors.
//! Pure: parses text.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::workload::settings::{Format, RunConfig};

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
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
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

fn set_once<T: PartialEq + std::fmt::Debug>(
    slot: &mut Option<T>,
    v: T,
    key: &str,
    origin: &str,
) -> Result<()> {
    if let Some(old) = slot {
        if *old != v {
            return Err(err(
                origin,
                format!("{key} = {v:?} contradicts {old:?} set by another key"),
            ));
        }
    }
    *slot = Some(v);
    Ok(())
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
    "train_batch_size",
    "flops_profiler",
    "tensorboard",
    "wandb",
    "comms_logger",
    "dump_state",
    "seed",
];

/// A DeepSpeed JSON config.
pub fn from_deepspeed(text: &str, origin: &str) -> Result<(RunConfig, Vec<String>)> {
    let v: Value = serde_json::from_str(text).map_err(|e| err(origin, e.to_string()))?;
    let Value::Object(map) = v else {
        return Err(err(origin, "expected a JSON object at the top level"));
    };
    let mut c = RunConfig::default();
    let mut warn = Vec::new();
    for (k, val) in &map {
        match k.as_str() {
            "train_micro_batch_size_per_gpu" => c.batch = as_u64(val, k, origin)?,
            "gradient_accumulation_steps" => c.grad_accum = as_u64(val, k, origin)?,
            "bf16" | "fp16" => {
                if as_bool(
                    val.get("enabled").unwrap_or(&Value::Null),
                    &format!("{k}.enabled"),
                    origin,
                )? == Some(true)
                {
                    set_once(&mut c.dtype, k.to_string(), k, origin)?;
                    c.master_weights = Some(true);
                }
            }
            "optimizer" => {
                let t = val
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_ascii_lowercase();
                c.optimizer = Some(
                    match t.as_str() {
                        "adam" | "adamw" | "fusedadam" => "adamw",
                        "onebitadam" | "zerooneadam" | "onebitlamb" | "lamb" => {
                            warn.push(format!("{origin}: optimizer {t} is modelled as AdamW (two fp32 states)"));
                            "adamw"
                        }
                        "sgd" => "sgd-momentum",
                        "adafactor" => "adafactor",
                        "lion" => "lion",
                        _ => return Err(err(origin, format!("optimizer.type {t:?}: accepted Adam, AdamW, FusedAdam, SGD, Adafactor, Lion"))),
                    }
                    .to_string(),
                );
            }
            "zero_optimization" => {
                let Value::Object(z) = val else {
                    return Err(err(origin, "zero_optimization: expected an object"));
                };
                for (zk, zv) in z {
                    let key = format!("zero_optimization.{zk}");
                    match zk.as_str() {
                        "stage" => {
                            c.zero = as_u64(zv, &key, origin)?.map(|s| s as u8);
                        }
                        "offload_optimizer" => {
                            let dev = zv.get("device").and_then(Value::as_str).unwrap_or("none");
                            c.offload_optimizer = Some(dev == "cpu" || dev == "nvme");
                        }
                        "offload_param" => {
                            let dev = zv.get("device").and_then(Value::as_str).unwrap_or("none");
                            c.offload_params = Some(dev == "cpu" || dev == "nvme");
                        }
                        "reduce_bucket_size" => c.zero_reduce_bucket = as_u64(zv, &key, origin)?,
                        "allgather_bucket_size" => {
                            c.zero_allgather_bucket = as_u64(zv, &key, origin)?
                        }
                        "stage3_prefetch_bucket_size" => {
                            c.zero3_prefetch_bucket = as_u64(zv, &key, origin)?
                        }
                        "stage3_max_live_parameters" => {
                            c.zero3_max_live_params = as_u64(zv, &key, origin)?
                        }
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
                }
            }
            "activation_checkpointing" => {
                if val.get("partition_activations").and_then(Value::as_bool) == Some(true) {
                    warn.push(format!(
                        "{origin}: activation_checkpointing.partition_activations is not modelled"
                    ));
                }
            }
            k if DS_QUIET.contains(&k) => {}
            _ => warn.push(format!("{origin}: key {k:?} is not modelled")),
        }
    }
    Ok((c, warn))
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
    "lora_dropout",
    "lr",
    "eval_dataset",
    "load_best_model_at_end",
];

/// HF TrainingArguments-style JSON/YAML or a LLaMA-Factory YAML.
pub fn from_train_args(
    text: &str,
    format: Format,
    origin: &str,
) -> Result<(RunConfig, Vec<String>)> {
    let v: Value = match format {
        Format::Json => serde_json::from_str(text).map_err(|e| err(origin, e.to_string()))?,
        Format::Yaml => serde_yaml::from_str(text).map_err(|e| err(origin, e.to_string()))?,
        Format::Toml => {
            let t: toml::Value = toml::from_str(text).map_err(|e| err(origin, e.to_string()))?;
            serde_json::to_value(t).map_err(|e| err(origin, e.to_string()))?
        }
    };
    let Value::Object(map) = v else {
        return Err(err(
            origin,
            "expected a mapping of arguments at the top level",
        ));
    };
    let mut c = RunConfig::default();
    let mut warn = Vec::new();
    let mut quant_bits = None;
    let mut finetuning = None;
    for (k, val) in &map {
        let s = val.as_str();
        match k.as_str() {
            "model_name_or_path" => c.model = s.map(str::to_string),
            "per_device_train_batch_size" => c.batch = as_u64(val, k, origin)?,
            "gradient_accumulation_steps" => c.grad_accum = as_u64(val, k, origin)?,
            "gradient_checkpointing" => {
                if as_bool(val, k, origin)? == Some(true) {
                    set_once(&mut c.grad_ckpt, "full".to_string(), k, origin)?;
                }
            }
            "bf16" | "fp16" => {
                if as_bool(val, k, origin)? == Some(true) {
                    // Trainer's bf16/fp16 = autocast over the loaded weights
                    set_once(&mut c.dtype, format!("amp-{k}"), k, origin)?;
                }
            }
            "pure_bf16" => {
                if as_bool(val, k, origin)? == Some(true) {
                    c.dtype = Some("bf16".into());
                }
            }
            "optim" => {
                let o = s.unwrap_or("").to_ascii_lowercase();
                c.optimizer = Some(
                    match o.as_str() {
                        "adamw_torch_fused" => "adamw",
                        "adamw_torch" | "adamw_hf" => "adamw-foreach",
                        "adamw_bnb_8bit" | "adamw_8bit" | "adamw_8bit_bnb" => "adamw-8bit",
                        "paged_adamw_32bit" | "paged_adamw" => "paged-adamw",
                        "paged_adamw_8bit" => "paged-adamw-8bit",
                        "adafactor" => "adafactor",
                        "sgd" => "sgd",
                        "lion_32bit" | "paged_lion_32bit" => "lion",
                        _ => return Err(err(origin, format!("optim {o:?}: accepted adamw_torch_fused, adamw_torch, adamw_bnb_8bit, paged_adamw_32bit, paged_adamw_8bit, adafactor, sgd, lion_32bit"))),
                    }
                    .to_string(),
                );
            }
            "lora_r" | "lora_rank" => c.lora_rank = as_u64(val, k, origin)?,
            "lora_alpha" => c.lora_alpha = val.as_f64(),
            "lora_target" | "target_modules" => {
                let t = match val {
                    Value::Array(a) => a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                    Value::String(t) => t.clone(),
                    _ => {
                        return Err(err(
                            origin,
                            format!("{k}: expected a string or a list of module names"),
                        ))
                    }
                };
                c.lora_targets = Some(if t == "all" { "all-linear".into() } else { t });
            }
            "finetuning_type" => finetuning = s.map(str::to_string),
            "quantization_bit" | "load_in_4bit" | "load_in_8bit" => {
                let bits = match (k.as_str(), val) {
                    ("quantization_bit", _) => as_u64(val, k, origin)?,
                    ("load_in_4bit", Value::Bool(true)) => Some(4),
                    ("load_in_8bit", Value::Bool(true)) => Some(8),
                    _ => None,
                };
                quant_bits = bits.or(quant_bits);
            }
            "cutoff_len" | "max_seq_length" | "max_length" | "model_max_length" => {
                if let Some(n) = as_u64(val, k, origin)? {
                    set_once(&mut c.seq_len, n, k, origin)?;
                }
            }
            "attn_implementation" | "flash_attn" => {
                let a = s.unwrap_or("").to_ascii_lowercase();
                c.attn = Some(
                    match a.as_str() {
                        "fa2" | "flash_attention_2" => "flash",
                        "sdpa" | "auto" => "sdpa",
                        "eager" | "disabled" => "eager",
                        _ => return Err(err(origin, format!("{k} {a:?}: accepted fa2/flash_attention_2, sdpa, eager, auto, disabled"))),
                    }
                    .to_string(),
                );
            }
            "use_liger_kernel" | "enable_liger_kernel" => {
                if as_bool(val, k, origin)? == Some(true) {
                    c.loss = Some("fused-linear-ce".into());
                }
            }
            "fsdp" => {
                let f = match val {
                    Value::String(t) => t.clone(),
                    Value::Array(a) => a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" "),
                    _ => String::new(),
                };
                if f.contains("full_shard") {
                    c.fsdp = Some("full".into());
                } else if f.contains("shard_grad_op") {
                    c.fsdp = Some("grad-op".into());
                } else if f.contains("hybrid_shard") {
                    c.fsdp = Some("hybrid".into());
                }
                if f.contains("offload") {
                    c.offload_params = Some(true);
                }
            }
            "deepspeed" => {
                return Err(err(origin, "deepspeed: pass that file with --deepspeed PATH as well (its settings are read from there)"));
            }
            "ddp_find_unused_parameters" | "ddp_bucket_cap_mb" => {}
            k if TA_QUIET.contains(&k) => {}
            _ => warn.push(format!("{origin}: key {k:?} is not modelled")),
        }
    }
    match (finetuning.as_deref(), quant_bits) {
        (Some("lora") | None, Some(4)) if c.lora_rank.is_some() || finetuning.is_some() => {
            c.method = Some("qlora".into())
        }
        (Some("lora"), _) => c.method = Some("lora".into()),
        (Some("full") | None, None) => {}
        (Some("freeze"), _) => warn.push(format!(
            "{origin}: finetuning_type freeze is modelled as full fine-tuning"
        )),
        (other, bits) => {
            warn.push(format!("{origin}: finetuning_type {other:?} with quantization {bits:?} bits is not modelled exactly"));
        }
    }
    if c.method.is_none() && c.lora_rank.is_some() {
        c.method = Some(
            if quant_bits == Some(4) {
                "qlora"
            } else {
                "lora"
            }
            .into(),
        );
    }
    if c.method.as_deref().is_some_and(|m| m != "full")
        && c.dtype.as_deref().is_some_and(|d| d.starts_with("amp-"))
    {
        // PEFT/LLaMA-Factory load the frozen base in half precision
        c.dtype = Some(
            c.dtype
                .as_deref()
                .unwrap_or("amp-bf16")
                .trim_start_matches("amp-")
                .to_string(),
        );
    }
    Ok((c, warn))
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
        assert_eq!((c.batch, c.grad_accum, c.zero), (Some(4), Some(8), Some(3)));
        assert_eq!(
            (c.offload_optimizer, c.offload_params),
            (Some(true), Some(false))
        );
        assert_eq!(c.dtype.as_deref(), Some("bf16"));
        assert_eq!(c.zero3_prefetch_bucket, Some(1_000_000));
        assert_eq!(c.zero_reduce_bucket, None, "auto keeps the default");
        assert!(w.iter().any(|x| x.contains("mystery")), "{w:?}");
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
                 gradient_checkpointing: true\noptim: paged_adamw_8bit\nunknown_knob: 3\n";
        let (c, w) = from_train_args(y, Format::Yaml, "sft.yaml").unwrap();
        assert_eq!(c.method.as_deref(), Some("qlora"));
        assert_eq!(c.lora_targets.as_deref(), Some("all-linear"));
        assert_eq!(
            (c.lora_rank, c.seq_len, c.batch),
            (Some(8), Some(1024), Some(2))
        );
        assert_eq!(c.dtype.as_deref(), Some("bf16"));
        assert_eq!(c.grad_ckpt.as_deref(), Some("full"));
        assert_eq!(c.optimizer.as_deref(), Some("paged-adamw-8bit"));
        assert!(w.iter().any(|x| x.contains("unknown_knob")));
    }

    #[test]
    fn training_arguments_json() {
        let j = r#"{"per_device_train_batch_size": 8, "bf16": true, "optim": "adamw_torch",
                    "gradient_checkpointing": false, "fsdp": "full_shard auto_wrap", "max_seq_length": 2048}"#;
        let (c, _) = from_train_args(j, Format::Json, "args.json").unwrap();
        assert_eq!(c.dtype.as_deref(), Some("amp-bf16"));
        assert_eq!(c.optimizer.as_deref(), Some("adamw-foreach"));
        assert_eq!(c.fsdp.as_deref(), Some("full"));
        assert_eq!(c.grad_ckpt, None);
        let bad = r#"{"optim": "adamw_quantum"}"#;
        assert!(from_train_args(bad, Format::Json, "args.json")
            .unwrap_err()
            .to_string()
            .contains("adamw_quantum"));
    }
}
