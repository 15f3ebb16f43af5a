//! Calibration from the trace probe (`probes/trace_probe.py`): its rows say what PyTorch
//! keeps alive after the forward (`live_after_fwd_bytes`, measured exactly on fake
//! tensors) for a config at a depth and recipe; the caller supplies the ledger's
//! prediction for the same cell, and each architecture gets the same line fit as the
//! probe's measurements ([`super::fit_line`]: `y = α x + β`, confidence intervals,
//! R², leave-one-out error), one calibration file per engine (CPU or CUDA semantics),
//! runtime `torch`. `estimate --calibration FILE` then scales the activations by α and
//! adds β (when positive).

use std::collections::BTreeMap;
use std::path::Path;

use super::{fit_line, CalibrationFile};
use crate::arch::{Adapter, LoraTargets, ModelSpec};
use crate::error::{Error, Result};
use crate::runtime::torch::{activations, LedgerParams, Trainable};
use crate::workload::{Attn, Device, GradCkpt, Loss, Precision};

/// The columns a trace CSV must have.
pub const COLUMNS: &[&str] = &[
    "model",
    "config",
    "model_type",
    "layers",
    "batch",
    "seq",
    "dtype",
    "attn_impl",
    "grad_ckpt",
    "mode",
    "engine",
    "status",
    "live_after_fwd_bytes",
];

/// One successful trace cell.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRow {
    pub model: String,
    /// The config.json the probe built the model from, as it was given.
    pub config: String,
    pub model_type: String,
    pub layers: u64,
    pub batch: u64,
    pub seq: u64,
    /// `bf16` | `amp_bf16`.
    pub dtype: String,
    /// `eager` | `sdpa`.
    pub attn: String,
    /// `none` | `nonreentrant` | `reentrant`.
    pub ckpt: String,
    /// `full` | `lora_all` | `lora_attn` | `lora_all_head` (all-linear and the output
    /// head), and the `*_model` variants with the adapters in the model's dtype.
    pub mode: String,
    /// `fake_cpu` | `fake_cuda` | `real_cpu`.
    pub engine: String,
    pub live: u64,
}

/// trace_probe.py's `PROMPT_TOKENS`: the virtual tokens of its `prompt_tuning` mode.
pub const PROBE_PROMPT_TOKENS: u64 = 16;

impl TraceRow {
    /// The virtual tokens peft prepends to the input in this cell (prompt tuning),
    /// else 0.
    pub fn virtual_tokens(&self) -> u64 {
        if self.mode == "prompt_tuning" {
            PROBE_PROMPT_TOKENS
        } else {
            0
        }
    }

    /// The virtual tokens before every layer's keys (prefix tuning), else 0.
    pub fn prefix_tokens(&self) -> u64 {
        if self.mode == "prefix_tuning" {
            PROBE_PROMPT_TOKENS
        } else {
            0
        }
    }

    /// The ledger's parameters for this cell: the probe's recipe (bf16 or AMP-bf16,
    /// LoRA r=16 on all linears or the attention projections, checkpointing of every
    /// layer, CPU or CUDA kernels) and shapes.
    pub fn ledger_params(&self) -> LedgerParams {
        LedgerParams {
            quant_keeps_input: false,
            legacy_causal_lm_loss: false,
            lora_fp32: !self.mode.ends_with("_model"),
            // `osf_attn_legacy`: the probe run under peft < 0.21
            osf_reconstruct: self.mode == "osf_attn_legacy",
            // trace_probe.py builds peft's LoraConfig without dropout, or with
            // lora_dropout=0.05 in the `*_drop` modes
            lora_dropout: if self.mode.ends_with("_drop") {
                0.05
            } else {
                0.0
            },
            litgpt: false,
            // text cells (the VLM cells are checked through the estimate,
            // tests/it/trace.rs)
            images: 0,
            vision: crate::workload::VisionTrain::Frozen,
            image_crops: 1,
            ep: 1,
            moe_imbalance: 1.0,
            batch: self.batch,
            // prompt tuning: peft prepends the probe's PROMPT_TOKENS virtual tokens
            seq: self.seq + self.virtual_tokens(),
            kv_len: self.seq + self.virtual_tokens() + self.prefix_tokens(),
            precision: if self.dtype == "amp_bf16" {
                Precision::AmpBf16
            } else {
                Precision::Bf16
            },
            attn: if self.attn == "eager" {
                Attn::Eager
            } else {
                Attn::Sdpa
            },
            grad_ckpt: match self.ckpt.as_str() {
                "none" => GradCkpt::None,
                "reentrant" => GradCkpt::FullReentrant,
                _ => GradCkpt::Full,
            },
            device: if self.engine.ends_with("cuda") {
                Device::Cuda
            } else {
                Device::Cpu
            },
            trainable: self.trainable(),
            loss: Loss::Standard,
            param_grad_size: 2,
            sp_div: 1,
            compile: false,
        }
    }

    /// The trainable set of this row's `mode` (trace_probe.py `apply_peft`): rank 16
    /// LoRA variants on all linears, the head or the attention projections; (IA)³ with
    /// peft's default targets for the model type.
    fn trainable(&self) -> Trainable {
        let lora = |targets, adapter| Trainable::Lora {
            rank: 16,
            targets,
            adapter,
        };
        match self.mode.as_str() {
            "full" => Trainable::All,
            "lora_all" | "lora_all_model" | "lora_all_drop" => {
                lora(LoraTargets::AllLinear, Adapter::Lora)
            }
            // the probe names every linear leaf and lm_head
            "lora_all_head" | "lora_all_head_model" => lora(
                LoraTargets::Names(vec![
                    crate::arch::ALL_LINEAR.to_string(),
                    crate::arch::HEAD_NAME.to_string(),
                ]),
                Adapter::Lora,
            ),
            "dora_attn" => lora(LoraTargets::Attn, Adapter::Dora),
            "lorafa_attn" => lora(LoraTargets::Attn, Adapter::LoraFa),
            "adalora_attn" => lora(LoraTargets::Attn, Adapter::AdaLora),
            "vera_attn" => lora(LoraTargets::Attn, Adapter::Vera),
            "loha_attn" => lora(LoraTargets::Attn, Adapter::Loha),
            "oft_attn" => lora(LoraTargets::Attn, Adapter::Oft),
            // the probe's BOFT_BLOCK (boft_block_size 4) and OSF_RANK (16 trained
            // directions per adapted linear)
            "boft_attn" => Trainable::Lora {
                rank: 4,
                targets: LoraTargets::Attn,
                adapter: Adapter::Boft,
            },
            "osf_attn" | "osf_attn_legacy" => lora(LoraTargets::Attn, Adapter::Osf),
            "ia3" => Trainable::Lora {
                rank: 0,
                targets: LoraTargets::Names(
                    Adapter::ia3_peft_default_targets(&self.model_type)
                        .iter()
                        .map(|n| n.to_string())
                        .collect(),
                ),
                adapter: Adapter::Ia3,
            },
            "prefix_tuning" => Trainable::Lora {
                rank: self.prefix_tokens(),
                targets: LoraTargets::Names(Vec::new()),
                adapter: Adapter::PrefixTuning,
            },
            "prompt_tuning" => Trainable::Lora {
                rank: self.virtual_tokens(),
                targets: LoraTargets::Names(Vec::new()),
                adapter: Adapter::PromptTuning,
            },
            // peft's default LN tuning targets for the model type (no linear adapted)
            "ln_tuning" => Trainable::Lora {
                rank: 0,
                targets: LoraTargets::Names(Vec::new()),
                adapter: Adapter::LnTuning,
            },
            _ => lora(LoraTargets::Attn, Adapter::Lora),
        }
    }

    /// The architecture key of `spec` (its config's `model_type`, also for a generic
    /// estimate) and the ledger's prediction of the bytes alive after the forward for
    /// this cell on `spec` at this row's depth.
    pub fn predict(&self, spec: &ModelSpec) -> Result<Predicted> {
        let arch = spec
            .generic_of
            .clone()
            .unwrap_or_else(|| spec.family.model_type().to_string());
        let at = spec.with_layers(self.layers)?;
        let a = activations(&at, &self.ledger_params());
        Ok(Predicted {
            arch,
            non_layer: a.non_layer_bytes,
            layers: at.layers().saturating_mul(a.per_layer_bytes),
        })
    }
}

/// The ledger's prediction for a trace cell, split as α applies to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Predicted {
    /// The calibration key (`model_type`).
    pub arch: String,
    /// Non-layer bytes (embedding side, head and loss, layer 0's difference).
    pub non_layer: u64,
    /// depth × per-layer bytes: what α multiplies.
    pub layers: u64,
}

impl Predicted {
    /// `non_layer + layers` (the trace probe's `live_after_fwd_bytes` when exact).
    pub fn total(&self) -> u64 {
        self.non_layer.saturating_add(self.layers)
    }
}

/// Whether a CSV header is a trace probe's (it has `live_after_fwd_bytes` and `engine`).
pub fn is_trace_header(header: &str) -> bool {
    let cols: Vec<&str> = header.trim().split(',').collect();
    cols.contains(&"live_after_fwd_bytes") && cols.contains(&"engine")
}

fn bad(path: &str, message: impl Into<String>) -> Error {
    Error::Measurement {
        path: path.to_string(),
        message: message.into(),
    }
}

/// Parse a trace CSV's text (`path` names it in errors): every `ok` row; rows with
/// another status are skipped. A missing column, or a value that is not what the
/// column holds, is an error naming the line, the column and the value.
pub fn parse(text: &str, path: &str) -> Result<Vec<TraceRow>> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let header = rdr
        .headers()
        .map_err(|e| bad(path, format!("cannot read the header: {e}")))?
        .clone();
    let col = |name: &str| header.iter().position(|h| h == name);
    let mut idx = BTreeMap::new();
    for c in COLUMNS {
        let i = col(c).ok_or_else(|| {
            bad(
                path,
                format!(
                    "no column {c:?}: not a trace probe file (probes/trace_probe.py writes {})",
                    COLUMNS.join(", ")
                ),
            )
        })?;
        idx.insert(*c, i);
    }
    let mut out = Vec::new();
    for (n, rec) in rdr.records().enumerate() {
        let line = n + 2;
        let rec = rec.map_err(|e| bad(path, format!("line {line}: {e}")))?;
        let get = |c: &str| rec.get(idx[c]).unwrap_or("");
        if get("status") != "ok" {
            continue;
        }
        let num = |c: &str| -> Result<u64> {
            let v = get(c);
            v.parse::<u64>().map_err(|_| {
                bad(
                    path,
                    format!("line {line}, column {c}: {v:?} is not a non-negative integer"),
                )
            })
        };
        let choice = |c: &str, accepted: &[&str]| -> Result<String> {
            let v = get(c);
            if accepted.contains(&v) {
                Ok(v.to_string())
            } else {
                Err(bad(
                    path,
                    format!(
                        "line {line}, column {c}: {v:?}; accepted: {}",
                        accepted.join(", ")
                    ),
                ))
            }
        };
        let row = TraceRow {
            model: get("model").to_string(),
            config: get("config").to_string(),
            model_type: get("model_type").to_string(),
            layers: num("layers")?,
            batch: num("batch")?,
            seq: num("seq")?,
            dtype: choice("dtype", &["bf16", "amp_bf16"])?,
            attn: choice("attn_impl", &["eager", "sdpa"])?,
            ckpt: choice("grad_ckpt", &["none", "nonreentrant", "reentrant"])?,
            mode: choice(
                "mode",
                &[
                    "full",
                    "lora_all",
                    "lora_attn",
                    "lora_all_model",
                    "lora_attn_model",
                    "lora_all_head",
                    "lora_all_head_model",
                    "lora_all_drop",
                    "lora_attn_drop",
                ],
            )?,
            engine: choice("engine", &["fake_cpu", "fake_cuda", "real_cpu"])?,
            live: num("live_after_fwd_bytes")?,
        };
        if row.config.is_empty() {
            return Err(bad(
                path,
                format!("line {line}: empty `config`: the row does not say which config.json it measured"),
            ));
        }
        if row.layers == 0 || row.batch == 0 || row.seq == 0 || row.live == 0 {
            return Err(bad(
                path,
                format!("line {line}: layers, batch, seq and live_after_fwd_bytes must be > 0"),
            ));
        }
        out.push(row);
    }
    if out.is_empty() {
        return Err(bad(path, "no row with status ok"));
    }
    Ok(out)
}

/// What [`fit`] produced: one calibration file per engine, and the architectures it
/// could not fit (too few points, a degenerate line), each with the reason.
#[derive(Debug, Clone)]
pub struct TraceFit {
    pub files: Vec<CalibrationFile>,
    pub skipped: Vec<String>,
}

/// Fit one calibration file per engine from `rows`. `predict` gives, for a row, the
/// architecture key the estimate will look the correction up by (the config's
/// `model_type`) and the ledger's bytes alive after the forward for that cell. An
/// architecture whose line cannot be fitted is skipped with its reason; an engine with
/// none fitted is an error.
pub fn fit(
    rows: &[TraceRow],
    predict: &dyn Fn(&TraceRow) -> Result<Predicted>,
    sources: Vec<String>,
) -> Result<TraceFit> {
    // engine -> arch -> (x = layer bytes, y = measured − non-layer, offsets = non-layer)
    type Points = (Vec<f64>, Vec<f64>, Vec<f64>);
    let mut points: BTreeMap<String, BTreeMap<String, Points>> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in rows {
        let key = (
            r.config.clone(),
            r.layers,
            r.batch,
            r.seq,
            r.dtype.clone(),
            r.attn.clone(),
            r.ckpt.clone(),
            r.mode.clone(),
            r.engine.clone(),
        );
        if !seen.insert(key) {
            return Err(Error::Fit {
                what: "trace calibration".into(),
                reason: format!(
                    "{} L{} b{} s{} {} {} {} {} {} appears twice (the same file given twice?); each cell counts once",
                    r.model, r.layers, r.batch, r.seq, r.dtype, r.attn, r.ckpt, r.mode, r.engine
                ),
            });
        }
        let p = predict(r)?;
        let e = points
            .entry(r.engine.clone())
            .or_default()
            .entry(p.arch)
            .or_default();
        e.0.push(p.layers as f64);
        e.1.push(r.live as f64 - p.non_layer as f64);
        e.2.push(p.non_layer as f64);
    }
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for (engine, archs) in points {
        let mut families = BTreeMap::new();
        let (mut all_x, mut all_y, mut all_o) = (Vec::new(), Vec::new(), Vec::new());
        for (arch, (x, y, o)) in &archs {
            match fit_line(x, y, o, &format!("{arch} ({engine})")) {
                Ok(e) => {
                    families.insert(arch.clone(), e);
                }
                Err(e) => skipped.push(e.to_string()),
            }
            all_x.extend_from_slice(x);
            all_y.extend_from_slice(y);
            all_o.extend_from_slice(o);
        }
        if families.is_empty() {
            return Err(Error::Fit {
                what: format!("trace calibration ({engine})"),
                reason: format!("no architecture could be fitted: {}", skipped.join("; ")),
            });
        }
        let fallback = if archs.len() > 1 {
            fit_line(&all_x, &all_y, &all_o, "the fallback (all architectures)")
                .map_err(|e| skipped.push(e.to_string()))
                .ok()
        } else {
            None
        };
        files.push(CalibrationFile {
            schema_version: super::SCHEMA_VERSION_SCOPED,
            device: engine.replace('_', "-"),
            device_name: format!(
                "trace probe ({} semantics, fake tensors)",
                engine.rsplit('_').next().unwrap_or("cpu")
            ),
            runtime: "torch".into(),
            created: crate::probe::today(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: String::new(),
            sources: sources.clone(),
            families,
            fallback,
            alpha_scope: super::AlphaScope::DecoderLayers,
        });
    }
    Ok(TraceFit { files, skipped })
}

/// Read and parse a trace CSV file.
pub fn read(path: &Path) -> Result<Vec<TraceRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text, &path.display().to_string())
}
