//! Probe plans (`probes/*.toml`, `schema_version = 1`): architectures (a preset or a
//! config.json, scaled down), a batch × sequence grid, dtype, methods, optimizer,
//! attention, warm-up and measured steps, device; `Plan::points` expands them.

use std::path::Path;

use serde::Deserialize;

use super::candle_model as model;
use super::scale::scaled_spec;

use crate::arch::ModelSpec;
use crate::error::{Error, Result};
use crate::runtime::candle::program::ProbeMethod;

pub const PLAN_SCHEMA_VERSION: u32 = 1;

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
        self.validate_settings()?;
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

    /// Device, dtype, methods, optimizer and attention are ones the candle probe runs;
    /// `measured_steps` and `lora_rank` are positive.
    fn validate_settings(&self) -> Result<()> {
        model::DeviceSpec::parse(&self.device)?;
        self.dtype()?;
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
        if self.measured_steps == 0 {
            return Err(Error::invalid("measured_steps", 0, "an integer > 0"));
        }
        if self.lora_rank == 0 {
            return Err(Error::invalid("lora_rank", 0, "an integer > 0"));
        }
        Ok(())
    }

    /// `shapes.batch` and `shapes.seq` are non-empty lists of positive sizes.
    fn validate_shapes(&self, path: &str) -> Result<()> {
        for (what, v) in [
            ("shapes.batch", &self.shapes.batch),
            ("shapes.seq", &self.shapes.seq),
        ] {
            if v.is_empty() {
                return Err(plan_error(
                    path,
                    format!("{what} is empty; give at least one size"),
                ));
            }
            if let Some(z) = v.iter().find(|&&x| x == 0) {
                return Err(Error::invalid(what, z, "integers > 0"));
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
            for (what, v) in [
                ("layers", a.layers),
                ("hidden", a.hidden),
                ("heads", a.heads),
                ("kv_heads", a.kv_heads),
                ("head_dim", a.head_dim),
                ("intermediate", a.intermediate),
                ("vocab", a.vocab),
            ] {
                if v == Some(0) {
                    return Err(Error::invalid(what, 0, "an integer > 0"));
                }
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

    /// Every point: architectures × methods × batch × seq.
    pub fn points(&self, plan_dir: &Path) -> Result<Vec<Point>> {
        let max_seq = *self.shapes.seq.iter().max().expect("validated non-empty");
        let mut out = Vec::new();
        for a in &self.architectures {
            let spec = scaled_spec(a, plan_dir, max_seq as u64)?;
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
