//! Probe plans (`probes/*.toml`, `schema_version = 1`): architectures (a preset or a
//! config.json, scaled down), a batch × sequence grid, dtype, methods, optimizer,
//! attention, warm-up and measured steps, device; `Plan::points` expands them.

use std::path::Path;

use serde::Deserialize;

use super::candle_model as model;
use super::scale::scaled_spec;

use crate::arch::{ModelSpec, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};
use crate::error::{Error, Result};
use crate::runtime::candle::program::ProbeMethod;
use crate::workload::{MAX_BATCH, MAX_LORA_RANK, MAX_TENSOR_BYTES, MAX_TOKENS};

pub const PLAN_SCHEMA_VERSION: u32 = 1;

/// Most warm-up or measured steps per point: a point is a few steps of one shape, and
/// every step is a full forward + backward (a loop count, bounded where it enters).
pub const MAX_STEPS: usize = 1000;

/// `v` in `lo..=hi`, else an error naming the key, the value and the range.
fn within(what: &str, v: u64, lo: u64, hi: u64) -> Result<()> {
    if v < lo || v > hi {
        return Err(Error::invalid(
            what,
            v,
            format!("an integer in {lo}..={hi}"),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub schema_version: u32,
    pub name: String,
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default = "default_dtype")]
    pub dtype: String,
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    #[serde(default = "default_rank")]
    pub lora_rank: usize,
    #[serde(default)]
    pub lora_alpha: Option<f64>,
    #[serde(default = "default_optimizer")]
    pub optimizer: String,
    #[serde(default = "default_attn")]
    pub attn: String,
    #[serde(default = "one")]
    pub warmup_steps: usize,
    #[serde(default = "one")]
    pub measured_steps: usize,
    pub shapes: Shapes,
    pub architectures: Vec<Arch>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shapes {
    pub batch: Vec<usize>,
    pub seq: Vec<usize>,
}

/// One architecture, scaled down: every size is optional (default: the source's).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arch {
    /// A preset name or a path to a config.json (relative to the plan file).
    pub model: String,
    pub layers: Option<u64>,
    pub hidden: Option<u64>,
    pub heads: Option<u64>,
    pub kv_heads: Option<u64>,
    pub head_dim: Option<u64>,
    pub intermediate: Option<u64>,
    pub vocab: Option<u64>,
    /// Restrict this architecture to some methods (default: the plan's).
    pub methods: Option<Vec<String>>,
}

fn default_device() -> String {
    "cpu".into()
}
fn default_dtype() -> String {
    "f32".into()
}
fn default_methods() -> Vec<String> {
    vec!["full".into()]
}
fn default_rank() -> usize {
    8
}
fn default_optimizer() -> String {
    "adamw".into()
}
fn default_attn() -> String {
    "eager".into()
}
fn one() -> usize {
    1
}

/// An [`Error::Plan`] for the plan file at `path`.
fn plan_error(path: &str, message: String) -> Error {
    Error::Plan {
        path: path.into(),
        message,
    }
}

/// One point of a plan, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Stable id: `model/method/bB/sS` (the resume key).
    pub id: String,
    pub spec: ModelSpec,
    pub method: ProbeMethod,
    pub batch: usize,
    pub seq: usize,
}

impl Plan {
    pub fn parse(text: &str, path: &str) -> Result<Plan> {
        let plan: Plan = toml::from_str(text).map_err(|e| plan_error(path, e.to_string()))?;
        plan.validate(path)?;
        Ok(plan)
    }

    pub fn load(path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Plan::parse(&text, &path.display().to_string())
    }

    /// Every check, in this order (the first failure is the error): the header, the
    /// run settings, the shapes, the architectures.
    fn validate(&self, path: &str) -> Result<()> {
        self.validate_header(path)?;
        self.validate_settings(path)?;
        self.validate_shapes(path)?;
        self.validate_architectures(path)
    }

    /// `schema_version` is the one supported; `name` is non-empty letters, digits, `-`, `_`.
    fn validate_header(&self, path: &str) -> Result<()> {
        if self.schema_version != PLAN_SCHEMA_VERSION {
            return Err(plan_error(
                path,
                format!(
                    "schema_version {} is not supported; accepted: {PLAN_SCHEMA_VERSION}",
                    self.schema_version
                ),
            ));
        }
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(plan_error(
                path,
                format!(
                    "name {:?}: accepted: letters, digits, '-' and '_'",
                    self.name
                ),
            ));
        }
        Ok(())
    }

    /// Device, dtype, methods (at least one), optimizer and attention are ones the
    /// candle probe runs; steps, `lora_rank` and `lora_alpha` are in their bounds.
    fn validate_settings(&self, path: &str) -> Result<()> {
        model::DeviceSpec::parse(&self.device)?;
        self.dtype()?;
        if self.methods.is_empty() {
            return Err(plan_error(
                path,
                "methods is empty; accepted: one or more of full, lora".into(),
            ));
        }
        for m in &self.methods {
            self.method(m)?;
        }
        if !matches!(self.optimizer.as_str(), "adamw") {
            return Err(Error::invalid(
                "plan optimizer",
                &self.optimizer,
                "adamw (candle-nn AdamW)",
            ));
        }
        if !matches!(self.attn.as_str(), "eager" | "sdpa") {
            return Err(Error::invalid(
                "plan attn",
                &self.attn,
                "eager or sdpa (both run explicit matmul + softmax in candle)",
            ));
        }
        within(
            "warmup_steps",
            self.warmup_steps as u64,
            0,
            MAX_STEPS as u64,
        )?;
        within(
            "measured_steps",
            self.measured_steps as u64,
            1,
            MAX_STEPS as u64,
        )?;
        within("lora_rank", self.lora_rank as u64, 1, MAX_LORA_RANK)?;
        if let Some(a) = self.lora_alpha {
            if !(a.is_finite() && a > 0.0) {
                return Err(Error::invalid("lora_alpha", a, "a number > 0"));
            }
        }
        Ok(())
    }

    /// `shapes.batch` and `shapes.seq` are non-empty lists of sizes in `estimate`'s
    /// bounds (`workload::MAX_BATCH`, `workload::MAX_TOKENS`).
    fn validate_shapes(&self, path: &str) -> Result<()> {
        for (what, v, max) in [
            ("shapes.batch", &self.shapes.batch, MAX_BATCH),
            ("shapes.seq", &self.shapes.seq, MAX_TOKENS),
        ] {
            if v.is_empty() {
                return Err(plan_error(
                    path,
                    format!("{what} is empty; give at least one size"),
                ));
            }
            if let Some(&z) = v.iter().find(|&&x| x == 0 || x as u64 > max) {
                return Err(Error::invalid(
                    what,
                    z,
                    format!("integers > 0 and at most {max} (estimate's bound)"),
                ));
            }
        }
        Ok(())
    }

    /// At least one architecture; every size given is positive and every method known.
    fn validate_architectures(&self, path: &str) -> Result<()> {
        if self.architectures.is_empty() {
            return Err(plan_error(path, "no [[architectures]]".into()));
        }
        for a in &self.architectures {
            for (what, v, max) in [
                ("layers", a.layers, MAX_LAYERS),
                ("hidden", a.hidden, MAX_WIDTH),
                ("heads", a.heads, MAX_WIDTH),
                ("kv_heads", a.kv_heads, MAX_WIDTH),
                ("head_dim", a.head_dim, MAX_WIDTH),
                ("intermediate", a.intermediate, MAX_WIDTH),
                ("vocab", a.vocab, MAX_VOCAB),
            ] {
                match v {
                    Some(v) if v == 0 || v > max => {
                        return Err(Error::invalid(
                            what,
                            v,
                            format!("an integer in 1..={max} (architecture {})", a.model),
                        ))
                    }
                    _ => {}
                }
            }
            if a.methods.as_ref().is_some_and(|m| m.is_empty()) {
                return Err(plan_error(
                    path,
                    format!(
                        "architecture {}: methods is empty; accepted: one or more of full, lora (or no methods key: the plan's)",
                        a.model
                    ),
                ));
            }
            for m in a.methods.iter().flatten() {
                self.method(m)?;
            }
        }
        Ok(())
    }

    pub fn dtype(&self) -> Result<crate::units::dtype::DType> {
        match self.dtype.as_str() {
            "f32" | "fp32" => Ok(crate::units::dtype::DType::F32),
            "bf16" => Ok(crate::units::dtype::DType::BF16),
            "f16" | "fp16" => Ok(crate::units::dtype::DType::F16),
            other => Err(Error::invalid("plan dtype", other, "f32, bf16, f16")),
        }
    }

    fn method(&self, m: &str) -> Result<ProbeMethod> {
        match m {
            "full" => Ok(ProbeMethod::Full),
            "lora" => Ok(ProbeMethod::Lora {
                rank: self.lora_rank,
                alpha: self.lora_alpha.unwrap_or(2.0 * self.lora_rank as f64),
            }),
            other => Err(Error::invalid("plan method", other, "full, lora")),
        }
    }

    pub fn device(&self) -> Result<model::DeviceSpec> {
        model::DeviceSpec::parse(&self.device)
    }

    /// The largest tensor a point creates stays under `workload::MAX_TENSOR_BYTES`, as
    /// `estimate` requires: the token activations (b·s × the widest projection or the
    /// vocabulary) and the attention scores (b·heads·s·s; the candle probe materialises
    /// them for eager and sdpa alike), in the plan's dtype.
    fn check_largest_tensor(&self, spec: &ModelSpec, model: &str) -> Result<()> {
        let b = *self.shapes.batch.iter().max().expect("validated non-empty") as f64;
        let s = *self.shapes.seq.iter().max().expect("validated non-empty") as f64;
        let esize = self.dtype()?.size() as f64;
        let widest = spec
            .hidden
            .max(2 * spec.intermediate)
            .max(spec.vocab)
            .max(spec.q_dim() + 2 * spec.kv_dim()) as f64;
        let largest = (b * s * widest).max(b * spec.heads as f64 * s * s) * esize;
        if largest > MAX_TENSOR_BYTES as f64 {
            return Err(Error::invalid(
                "shapes batch x seq",
                format!("{b} x {s}"),
                format!(
                    "shapes whose largest tensor stays under {} PiB (architecture {model} needs {:.1} PiB)",
                    MAX_TENSOR_BYTES >> 50,
                    largest / (1u64 << 50) as f64
                ),
            ));
        }
        Ok(())
    }

    /// Every point: architectures × methods × batch × seq.
    pub fn points(&self, plan_dir: &Path) -> Result<Vec<Point>> {
        let max_seq = *self.shapes.seq.iter().max().expect("validated non-empty");
        let mut out = Vec::new();
        for a in &self.architectures {
            let spec = scaled_spec(a, plan_dir, max_seq as u64)?;
            self.check_largest_tensor(&spec, &a.model)?;
            let methods = a.methods.as_ref().unwrap_or(&self.methods);
            for m in methods {
                let method = self.method(m)?;
                for &b in &self.shapes.batch {
                    for &s in &self.shapes.seq {
                        out.push(Point {
                            id: format!("{}/{}/b{b}/s{s}", a.model, m),
                            spec: spec.clone(),
                            method,
                            batch: b,
                            seq: s,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(extra: &str) -> Result<Plan> {
        Plan::parse(
            &format!(
                "schema_version = 1\nname = \"t\"\n{extra}\n[shapes]\nbatch = [1]\nseq = [8]\n[[architectures]]\nmodel = \"gpt2\"\nlayers = 1\nhidden = 32\nheads = 2\nvocab = 64\n"
            ),
            "t.toml",
        )
    }

    #[test]
    fn plan_errors_name_the_value() {
        assert!(plan("").is_ok());
        let e = plan("dtype = \"f64\"").unwrap_err().to_string();
        assert!(e.contains("f64") && e.contains("f32, bf16, f16"), "{e}");
        let e = plan("bogus = 1").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = plan("methods = [\"qlora\"]").unwrap_err().to_string();
        assert!(e.contains("qlora") && e.contains("full, lora"), "{e}");
        let e = Plan::parse("schema_version = 2\nname=\"x\"\n[shapes]\nbatch=[1]\nseq=[1]\n[[architectures]]\nmodel=\"gpt2\"\n", "p").unwrap_err().to_string();
        assert!(e.contains("schema_version 2"), "{e}");
        let e = plan("device = \"tpu\"").unwrap_err().to_string();
        assert!(e.contains("cpu, cuda or cuda:N"), "{e}");
        let e = Plan::parse("schema_version = 1\nname=\"x\"\n[shapes]\nbatch=[0]\nseq=[1]\n[[architectures]]\nmodel=\"gpt2\"\n", "p").unwrap_err().to_string();
        assert!(e.contains("shapes.batch") && e.contains("> 0"), "{e}");
        assert!(Plan::parse("not toml [", "p").is_err());
    }

    #[test]
    fn scaling_keeps_the_family() {
        let p = plan("methods = [\"full\", \"lora\"]").unwrap();
        let pts = p.points(Path::new(".")).unwrap();
        assert_eq!(pts.len(), 2);
        assert_eq!(pts[0].spec.hidden, 32);
        assert_eq!(pts[0].spec.head_dim, 16);
        assert_eq!(pts[0].id, "gpt2/full/b1/s8");
    }
}
