//! `RunConfig`: every estimate setting as an optional, unvalidated value — what a config
//! file (`--config`, TOML / YAML / JSON) or the command line provides. Layers merge
//! (flags over file over defaults) and `build()` turns the result into validated
//! domain types (`Workload`, `Overheads`), naming the key and the accepted values on
//! any error. Keys are snake_case; kebab-case (`seq-len`) is accepted too. Unknown keys
//! are an error, never silently ignored.

use serde::Deserialize;

use crate::arch::{LoraTargets, ModelSpec};
use crate::error::{Error, Result};
use crate::units::bytes::Bytes;
use crate::units::dtype::DType;
use crate::workload::overhead::Overheads;
use crate::workload::{Device, InferConfig, LoraConfig, Method, MethodKind, Workload};

/// A memory amount: an integer number of bytes or a string such as "80GiB".
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Amount {
    Bytes(u64),
    Text(String),
}

impl Amount {
    fn resolve(&self, what: &'static str) -> Result<Bytes> {
        match self {
            Amount::Bytes(b) => Ok(Bytes(*b)),
            Amount::Text(t) => Bytes::parse(t).map_err(|_| {
                Error::invalid(
                    what,
                    t,
                    "a memory amount such as 80GiB, 512MiB, 40GB or an integer of bytes",
                )
            }),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: Option<String>,
    pub layers: Option<u64>,
    pub task: Option<String>,
    pub method: Option<String>,
    pub lora_rank: Option<u64>,
    pub lora_alpha: Option<f64>,
    pub lora_targets: Option<String>,
    pub double_quant: Option<bool>,
    pub dtype: Option<String>,
    pub master_weights: Option<bool>,
    pub optimizer: Option<String>,
    pub batch: Option<u64>,
    pub seq_len: Option<u64>,
    pub grad_accum: Option<u64>,
    pub attn: Option<String>,
    pub grad_ckpt: Option<String>,
    pub loss: Option<String>,
    pub runtime: Option<String>,
    pub device: Option<String>,
    pub prompt_len: Option<u64>,
    pub gen_len: Option<u64>,
    pub concurrency: Option<u64>,
    pub kv_dtype: Option<String>,
    pub prefill_chunk: Option<u64>,
    pub gpu: Option<String>,
    pub gpu_memory: Option<Amount>,
    pub cuda_context: Option<Amount>,
    pub cublas_workspace: Option<Amount>,
    pub allocator_fragmentation: Option<f64>,
    // distributed layout
    pub dp: Option<u64>,
    pub tp: Option<u64>,
    pub pp: Option<u64>,
    pub cp: Option<u64>,
    pub ep: Option<u64>,
    pub vpp: Option<u64>,
    pub sequence_parallel: Option<bool>,
    pub zero: Option<u8>,
    pub fsdp: Option<String>,
    pub fsdp_version: Option<u8>,
    pub fsdp_shard_group: Option<u64>,
    pub offload_optimizer: Option<bool>,
    pub offload_params: Option<bool>,
    pub distributed_optimizer: Option<bool>,
    pub micro_batches: Option<u64>,
    /// Layers per pipeline stage, "10,12,10".
    pub pp_layers: Option<String>,
    pub nccl_buffers: Option<Amount>,
    pub zero_reduce_bucket: Option<u64>,
    pub zero_allgather_bucket: Option<u64>,
    pub zero3_prefetch_bucket: Option<u64>,
    pub zero3_max_live_params: Option<u64>,
    pub ddp_bucket_view: Option<bool>,
}

/// Config file formats, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
    Json,
}

impl Format {
    pub fn from_path(path: &str) -> Result<Format> {
        let ext = path.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "toml" => Ok(Format::Toml),
            "yaml" | "yml" => Ok(Format::Yaml),
            "json" => Ok(Format::Json),
            _ => Err(Error::invalid(
                "--config",
                path,
                "a file ending in .toml, .yaml, .yml or .json",
            )),
        }
    }
}

/// Replace '-' by '_' in every key of a map (kebab-case keys are accepted).
fn normalize(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .map(|(k, v)| (k.replace('-', "_"), normalize(v)))
                .collect(),
        ),
        other => other,
    }
}

impl RunConfig {
    /// Parse a config file's text. `origin` names the file in errors.
    pub fn parse(text: &str, format: Format, origin: &str) -> Result<RunConfig> {
        let err = |m: String| Error::Config {
            path: origin.to_string(),
            message: m,
        };
        let value: serde_json::Value = match format {
            Format::Json => serde_json::from_str(text).map_err(|e| err(e.to_string()))?,
            Format::Toml => {
                let t: toml::Value = toml::from_str(text).map_err(|e| err(e.to_string()))?;
                serde_json::to_value(t).map_err(|e| err(e.to_string()))?
            }
            Format::Yaml => serde_yaml::from_str(text).map_err(|e| err(e.to_string()))?,
        };
        if !value.is_object() {
            return Err(err(
                "expected a table/mapping of settings at the top level".into()
            ));
        }
        serde_json::from_value(normalize(value)).map_err(|e| err(e.to_string()))
    }

    /// `self` with every value set in `over` replaced.
    pub fn merged(self, over: RunConfig) -> RunConfig {
        macro_rules! pick {
            ($($f:ident),*) => { RunConfig { $($f: over.$f.or(self.$f)),* } };
        }
        pick!(
            model,
            layers,
            task,
            method,
            lora_rank,
            lora_alpha,
            lora_targets,
            double_quant,
            dtype,
            master_weights,
            optimizer,
            batch,
            seq_len,
            grad_accum,
            attn,
            grad_ckpt,
            loss,
            runtime,
            device,
            prompt_len,
            gen_len,
            concurrency,
            kv_dtype,
            prefill_chunk,
            gpu,
            gpu_memory,
            cuda_context,
            cublas_workspace,
            allocator_fragmentation,
            dp,
            tp,
            pp,
            cp,
            ep,
            vpp,
            sequence_parallel,
            zero,
            fsdp,
            fsdp_version,
            fsdp_shard_group,
            offload_optimizer,
            offload_params,
            distributed_optimizer,
            micro_batches,
            pp_layers,
            nccl_buffers,
            zero_reduce_bucket,
            zero_allgather_bucket,
            zero3_prefetch_bucket,
            zero3_max_live_params,
            ddp_bucket_view
        )
    }

    /// Validated workload and overheads for `spec`.
    pub fn build(&self, spec: &ModelSpec) -> Result<(Workload, Overheads)> {
        let mut w = Workload::default();
        if let Some(t) = &self.task {
            w.task = t.parse()?;
        }
        let kind: MethodKind = match &self.method {
            Some(m) => m.parse()?,
            None => MethodKind::Full,
        };
        let lora_given =
            self.lora_rank.is_some() || self.lora_alpha.is_some() || self.lora_targets.is_some();
        if kind == MethodKind::Full && lora_given {
            return Err(Error::invalid(
                "--lora-rank/--lora-targets",
                "set with --method full",
                "LoRA options only with --method lora or qlora",
            ));
        }
        if kind != MethodKind::Full {
            let rank = self.lora_rank.unwrap_or(16);
            let targets = match &self.lora_targets {
                Some(t) => LoraTargets::parse(t)?,
                None => LoraTargets::AllLinear,
            };
            let l = LoraConfig {
                rank,
                alpha: self.lora_alpha.unwrap_or(2.0 * rank as f64),
                targets,
                double_quant: self.double_quant.unwrap_or(true),
            };
            w.method = Method::new(kind, l);
        }
        if let Some(d) = &self.dtype {
            w.precision = d.parse()?;
        }
        w.master_weights = self.master_weights.unwrap_or(false);
        if let Some(o) = &self.optimizer {
            w.optimizer = o.parse()?;
        }
        w.batch = self.batch.unwrap_or(w.batch);
        w.seq_len = self.seq_len.unwrap_or(w.seq_len);
        w.grad_accum = self.grad_accum.unwrap_or(w.grad_accum);
        if let Some(a) = &self.attn {
            w.attn = a.parse()?;
        }
        if let Some(g) = &self.grad_ckpt {
            w.grad_ckpt = g.parse()?;
        }
        if let Some(l) = &self.loss {
            w.loss = l.parse()?;
        }
        if let Some(r) = &self.runtime {
            w.runtime = r.parse()?;
        }
        if let Some(d) = &self.device {
            w.device = match d.trim().to_ascii_lowercase().as_str() {
                "cuda" | "gpu" => Device::Cuda,
                "cpu" => Device::Cpu,
                _ => return Err(Error::invalid("--device", d, "cuda, cpu")),
            };
        }
        let kv_dtype = match &self.kv_dtype {
            None => w.precision.compute_dtype(),
            Some(k) => match DType::from_name(k) {
                Some(d @ (DType::F32 | DType::BF16 | DType::F16 | DType::F8)) => d,
                _ => return Err(Error::invalid("--kv-dtype", k, "fp32, bf16, fp16, fp8")),
            },
        };
        w.infer = InferConfig {
            prompt_len: self.prompt_len.unwrap_or(w.infer.prompt_len),
            gen_len: self.gen_len.unwrap_or(w.infer.gen_len),
            concurrency: self.concurrency.unwrap_or(w.infer.concurrency),
            kv_dtype,
            prefill_chunk: self.prefill_chunk,
        };
        let mut ov = Overheads::default();
        if let Some(a) = &self.cuda_context {
            ov.cuda_context = a.resolve("--cuda-context")?;
        }
        if let Some(a) = &self.cublas_workspace {
            ov.cublas_workspace = a.resolve("--cublas-workspace")?;
        }
        if let Some(f) = self.allocator_fragmentation {
            ov.allocator_fragmentation = f;
        }
        ov.validate()?;
        w.validate(spec)?;
        Ok((w, ov))
    }

    /// The parallel layout (the default is one GPU).
    pub fn layout(&self) -> Result<crate::workload::layout::Layout> {
        use crate::workload::layout::{Buffers, Layout};
        let d = Layout::default();
        let mut b = Buffers::default();
        if let Some(a) = &self.nccl_buffers {
            b.nccl_per_group = a.resolve("--nccl-buffers")?;
        }
        b.zero_reduce_bucket = self.zero_reduce_bucket.unwrap_or(b.zero_reduce_bucket);
        b.zero_allgather_bucket = self
            .zero_allgather_bucket
            .unwrap_or(b.zero_allgather_bucket);
        b.zero3_prefetch_bucket = self
            .zero3_prefetch_bucket
            .unwrap_or(b.zero3_prefetch_bucket);
        b.zero3_max_live_params = self
            .zero3_max_live_params
            .unwrap_or(b.zero3_max_live_params);
        b.ddp_bucket_view = self.ddp_bucket_view.unwrap_or(b.ddp_bucket_view);
        b.fsdp_shard_group = self.fsdp_shard_group;
        let pp_layers = match &self.pp_layers {
            None => None,
            Some(t) => Some(
                t.split(',')
                    .map(|x| x.trim().parse::<u64>())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|_| {
                        Error::invalid(
                            "--pp-layers",
                            t,
                            "comma-separated layer counts per stage, e.g. 10,12,10",
                        )
                    })?,
            ),
        };
        Ok(Layout {
            dp: self.dp.unwrap_or(d.dp),
            tp: self.tp.unwrap_or(d.tp),
            pp: self.pp.unwrap_or(d.pp),
            cp: self.cp.unwrap_or(d.cp),
            ep: self.ep.unwrap_or(d.ep),
            vpp: self.vpp.unwrap_or(d.vpp),
            sequence_parallel: self.sequence_parallel.unwrap_or(false),
            zero: self.zero.unwrap_or(0),
            fsdp: self.fsdp.as_deref().map(str::parse).transpose()?,
            fsdp_version: self.fsdp_version.unwrap_or(d.fsdp_version),
            offload_optimizer: self.offload_optimizer.unwrap_or(false),
            offload_params: self.offload_params.unwrap_or(false),
            distributed_optimizer: self.distributed_optimizer.unwrap_or(false),
            micro_batches: self.micro_batches,
            pp_layers,
            buffers: b,
        })
    }

    /// The GPU memory to check against: `gpu_memory` wins over `gpu`.
    pub fn capacity(&self) -> Result<Option<(String, Bytes)>> {
        if let Some(a) = &self.gpu_memory {
            let b = a.resolve("--gpu-memory")?;
            return Ok(Some((format!("{:.2} GiB", b.gib()), b)));
        }
        if let Some(g) = &self.gpu {
            let gpu = crate::units::gpu::find(g)?;
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
        let t = RunConfig::parse(
            "batch = 4\nseq-len = 1024\ntask = \"train\"",
            Format::Toml,
            "a.toml",
        )
        .unwrap();
        let y = RunConfig::parse(
            "batch: 4\nseq_len: 1024\ntask: train",
            Format::Yaml,
            "a.yaml",
        )
        .unwrap();
        let j = RunConfig::parse(
            r#"{"batch": 4, "seq-len": 1024, "task": "train"}"#,
            Format::Json,
            "a.json",
        )
        .unwrap();
        assert_eq!(t, y);
        assert_eq!(y, j);
        assert_eq!(t.seq_len, Some(1024));
    }

    #[test]
    fn unknown_keys_and_bad_types_are_errors() {
        let e = RunConfig::parse("batchsize = 4", Format::Toml, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("batchsize") && e.contains("x.toml"), "{e}");
        let e = RunConfig::parse(r#"{"batch": -1}"#, Format::Json, "x.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("-1"), "{e}");
    }

    #[test]
    fn flags_override_file() {
        let file = RunConfig {
            batch: Some(2),
            seq_len: Some(512),
            ..Default::default()
        };
        let flags = RunConfig {
            batch: Some(8),
            ..Default::default()
        };
        let m = file.merged(flags);
        assert_eq!((m.batch, m.seq_len), (Some(8), Some(512)));
    }
}
