//! Scaling an architecture down to a probe-sized model of the same family, and the HF
//! `config.json` of that model (what `probes/torch_probe.py` builds).

use std::path::Path;

use super::plan::Arch;

use crate::arch::{ModelSpec, Positions};
use crate::error::{Error, Result};
use crate::runtime::candle::program;

/// The architecture of a plan entry: the source spec with the overrides applied.
pub fn scaled_spec(a: &Arch, plan_dir: &Path, max_seq: u64) -> Result<ModelSpec> {
    let mut spec = match crate::hf::presets::get(&a.model) {
        Some(s) => s?,
        None => {
            let p = plan_dir.join(&a.model);
            if p.exists() {
                crate::hf::hub::load_config_file(&p)?
            } else {
                crate::hf::hub::resolve(&a.model)?
            }
        }
    };
    let orig_heads = spec.heads;
    let orig_head_dim = spec.head_dim;
    let orig_hidden = spec.hidden;
    if let Some(h) = a.hidden {
        spec.hidden = h;
    }
    if let Some(h) = a.heads {
        spec.heads = h;
    }
    spec.kv_heads = match a.kv_heads {
        Some(k) => k,
        None => {
            let group = (orig_heads / spec.kv_heads.max(1)).max(1);
            (spec.heads / group).max(1)
        }
    };
    spec.head_dim = a
        .head_dim
        .unwrap_or(if a.hidden.is_some() || a.heads.is_some() {
            spec.hidden / spec.heads
        } else {
            spec.head_dim
        });
    if spec.head_dim == 0 {
        // hidden / heads rounds to 0: more heads than hidden units
        return Err(Error::invalid(
            "heads",
            spec.heads,
            format!(
                "at most hidden ({}) heads for architecture {}: hidden / heads gives head_dim 0 (or give head_dim)",
                spec.hidden, a.model
            ),
        ));
    }
    if let Some(i) = a.intermediate {
        spec.intermediate = i;
    } else if a.hidden.is_some() {
        spec.intermediate = (spec.intermediate * spec.hidden / orig_hidden).max(1);
    }
    if let Some(v) = a.vocab {
        spec.vocab = v;
    }
    if let Some(l) = a.layers {
        spec = spec.with_layers(l)?;
    }
    if let Positions::Rope { rotary_dim } = spec.positions {
        let rd = (rotary_dim * spec.head_dim / orig_head_dim.max(1)) / 2 * 2;
        spec.positions = Positions::Rope {
            // never a panic: a head_dim of 1 gives 0, which `validate` refuses
            rotary_dim: rd.max(2).min(spec.head_dim / 2 * 2),
        };
    }
    if spec.positions == Positions::Learned {
        spec.max_positions = max_seq;
    }
    spec.checkpoint = None;
    spec.quantization = None;
    program::check_supported(&spec)?;
    Ok(spec)
}

/// The Hugging Face `config.json` of a plan entry, scaled down exactly as
/// [`scaled_spec`] scales it (for `probes/torch_probe.py`, which builds the same model
/// with transformers): the source config with the sizes of `spec` written over it.
pub fn hf_config(a: &Arch, spec: &ModelSpec, plan_dir: &Path) -> Result<serde_json::Value> {
    let text = match crate::hf::presets::raw(&a.model) {
        Some(t) => t.to_string(),
        None => {
            let mut p = plan_dir.join(&a.model);
            if p.is_dir() {
                p = p.join("config.json");
            }
            std::fs::read_to_string(&p).map_err(|e| Error::io(p, e))?
        }
    };
    let mut v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: a.model.clone(),
        message: e.to_string(),
    })?;
    let o = v.as_object_mut().ok_or_else(|| Error::Config {
        path: a.model.clone(),
        message: "config.json is not an object".into(),
    })?;
    let mt = spec.family.model_type();
    o.insert("model_type".into(), mt.into());
    o.remove("quantization_config");
    o.insert("use_cache".into(), false.into());
    let rotary = match spec.positions {
        Positions::Rope { rotary_dim } => Some(rotary_dim as f64 / spec.head_dim.max(1) as f64),
        _ => None,
    };
    let mut set = |k: &str, x: serde_json::Value| {
        o.insert(k.into(), x);
    };
    match mt {
        "gpt2" => {
            set("n_embd", spec.hidden.into());
            set("n_layer", spec.layers().into());
            set("n_head", spec.heads.into());
            set("n_inner", spec.intermediate.into());
            set("n_positions", spec.max_positions.into());
            set("n_ctx", spec.max_positions.into());
            set("vocab_size", spec.vocab.into());
        }
        _ => {
            set("hidden_size", spec.hidden.into());
            set("num_hidden_layers", spec.layers().into());
            set("num_attention_heads", spec.heads.into());
            set("num_key_value_heads", spec.kv_heads.into());
            set("head_dim", spec.head_dim.into());
            set("intermediate_size", spec.intermediate.into());
            set("vocab_size", spec.vocab.into());
            if let Some(r) = rotary {
                match mt {
                    "gpt_neox" => set("rotary_pct", r.into()),
                    "phi3" if r < 1.0 => set("partial_rotary_factor", r.into()),
                    _ => {}
                }
            }
        }
    }
    Ok(v)
}
