//! HF `config.json` → [`ModelSpec`]. Pure: parses a `&str`, no I/O.
//!
//! Each supported `model_type` is read with the field names and the class defaults of
//! its transformers configuration class (`LlamaConfig`, `GPT2Config`, `FalconConfig`,
//! ... and the remote-code `QWenConfig` for Qwen-1), so that the spec describes exactly
//! the module tree that `AutoModelForCausalLM.from_config` would instantiate.
//!
//! Class defaults are applied only to fields that do not change the size of the model
//! by more than a convention (biases, eps, dropout, number of KV heads = heads, the
//! class's `head_dim`, ...). The core dimensions (`hidden_size`, `num_hidden_layers`,
//! `num_attention_heads`, `intermediate_size` where the class has one, `vocab_size`)
//! are required: transformers would silently fall back to the 7B-class defaults, which
//! would describe another model. A missing one is an [`Error::Config`] naming the field
//! and the `model_type`.
//!
//! Mixture-of-experts, MLA and vision-language configs are rejected with
//! [`Error::Unsupported`] rather than estimated wrongly.

use serde_json::{Map, Value};

use crate::arch::{
    Activation, Anyres, BlockModules, Dropout, Family, LayerGroup, LinearRole, MlaSpec, MlpKind,
    ModelSpec, ModuleSlot, MoeSpec, Native, NormKind, Positions, Projector, QkNorm, Quantization,
    Residual, RouterKind, ScalarMults, VisionSpec, WindowAttn,
};
use crate::arch::{MAX_LAYERS, MAX_POSITIONS, MAX_VOCAB, MAX_WIDTH};
use crate::error::{Error, Result};
use crate::units::dtype::DType;

/// The reason given for every mixture-of-experts / MLA / vision-language config.
pub const LATER_VERSION: &str =
    "mixture-of-experts/MLA/vision-language models come in a later version";

/// `model_type`s of mixture-of-experts or MLA text models (rejected, see [`LATER_VERSION`]).
const MOE_TYPES: &[&str] = &[
    "dbrx",
    "jamba",
    "olmoe",
    "granitemoe",
    "granitemoeshared",
    "phimoe",
    "jetmoe",
    "switch_transformers",
    "nllb_moe",
    "llama4",
    "llama4_text",
    "minimax",
    "ernie4_5_moe",
    "glm4_moe",
    "hunyuan_v1_moe",
    "dots1",
];

/// The mixture-of-experts `model_type`s that are modelled (`moe`).
const MODELLED_MOE_TYPES: &[&str] = &[
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "deepseek_v2",
    "deepseek_v3",
    "gpt_oss",
];

/// `model_type`s of vision-language models (rejected, see [`LATER_VERSION`]).
const VLM_TYPES: &[&str] = &[
    "llava",
    "llava_next",
    "llava_next_video",
    "llava_onevision",
    "mllama",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen2_5_omni",
    "minicpmv",
    "idefics",
    "idefics2",
    "idefics3",
    "paligemma",
    "gemma3",
    "blip-2",
    "instructblip",
    "chameleon",
    "pixtral",
    "internvl",
    "internvl_chat",
    "smolvlm",
    "aria",
    "emu3",
    "fuyu",
    "kosmos-2",
];

/// Parse a HF `config.json` into a validated [`ModelSpec`].
///
/// `name` is where the text came from (preset name, path or hub id); it becomes
/// `spec.name` and the `path` of every [`Error::Config`].
///
/// Errors: malformed JSON → [`Error::Config`] with serde's line and column; a missing
/// required field → [`Error::Config`] naming the field and the `model_type`; a field of
/// the wrong type or out of range → [`Error::InvalidValue`] naming the field; an unknown
/// `model_type` → [`Error::Unsupported`] listing the supported ones; MoE / MLA / VLM
/// configs → [`Error::Unsupported`] with reason [`LATER_VERSION`].
pub fn parse_config(json: &str, name: &str) -> Result<ModelSpec> {
    let value: Value = serde_json::from_str(json).map_err(|e| Error::Config {
        path: name.to_string(),
        message: format!(
            "invalid JSON at line {} column {}: {}",
            e.line(),
            e.column(),
            e
        ),
    })?;
    let obj = match value {
        Value::Object(m) => m,
        other => {
            return Err(Error::Config {
                path: name.to_string(),
                message: format!(
                    "expected a JSON object at the top level, found {}",
                    type_name(&other)
                ),
            })
        }
    };
    let model_type = match obj.get("model_type") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(Error::invalid(
                "model_type",
                other,
                format!("a string, one of: {}", Family::supported_list()),
            ))
        }
        None => {
            return Err(Error::Config {
                path: name.to_string(),
                message: format!(
                    "missing required field `model_type` (one of: {})",
                    Family::supported_list()
                ),
            })
        }
    };
    if model_type == "llava" || model_type == "llava_next" {
        return llava(&obj, name, model_type == "llava_next");
    }
    if model_type == "gemma3" && obj.contains_key("vision_config") {
        return gemma3_vlm(&obj, name);
    }
    if model_type == "llava_onevision" {
        return llava_onevision(&obj, name);
    }
    if model_type == "qwen2_vl" || model_type == "qwen2_5_vl" {
        return qwen2_vl(&obj, name, model_type == "qwen2_5_vl");
    }
    let c = Cfg {
        m: &obj,
        path: name,
        model_type: &model_type,
    };
    c.reject_later_version()?;
    let Some(family) = Family::from_model_type(&model_type) else {
        let missing: Vec<&str> = GENERIC_KEYS
            .iter()
            .copied()
            .filter(|k| !obj.get(*k).is_some_and(Value::is_u64))
            .collect();
        if missing.is_empty() {
            // the standard decoder keys: estimate it as a generic llama-style decoder
            let mut spec = family_facts(llama_like(&c, Family::Llama)?);
            spec.generic_of = Some(model_type.clone());
            spec.validate()?;
            return Ok(spec);
        }
        return Err(Error::Unsupported {
            model_type: model_type.clone(),
            reason: match auto_map_classes(&obj) {
                Some(classes) => format!(
                    "this architecture is not modelled, its config lacks the standard decoder keys ({}) a generic estimate needs, and the repo's own code (auto_map: {classes}) is remote code, which llm-mem never runs",
                    missing.join(", ")
                ),
                None => format!(
                    "this architecture is not modelled and its config lacks the standard decoder keys ({}) a generic estimate needs",
                    missing.join(", ")
                ),
            },
            supported: Family::supported_list(),
        });
    };
    let spec = match family {
        Family::Llama | Family::Mistral | Family::Qwen2 | Family::Qwen3 => llama_like(&c, family)?,
        Family::Granite => granite(&c)?,
        Family::Starcoder2 => starcoder2(&c)?,
        Family::Olmo2 => olmo2(&c)?,
        Family::Cohere | Family::Cohere2 => cohere(&c, family)?,
        Family::Olmo | Family::Smollm3 => olmo_smollm3(&c, family)?,
        Family::Gptj => gptj(&c)?,
        Family::Nemotron => nemotron(&c)?,
        Family::Gemma | Family::Gemma2 | Family::Gemma3Text => gemma(&c, family)?,
        Family::Phi3 => phi3(&c)?,
        Family::Gpt2 | Family::GptBigcode => gpt2(&c, family)?,
        Family::GptNeox => gpt_neox(&c)?,
        Family::Falcon => falcon(&c)?,
        Family::Stablelm => stablelm(&c)?,
        Family::Bloom => bloom(&c)?,
        Family::Phi => phi(&c)?,
        Family::Qwen => qwen(&c)?,
        Family::Mixtral | Family::Qwen2Moe | Family::Qwen3Moe => moe(&c, family)?,
        Family::DeepseekV2 | Family::DeepseekV3 => deepseek(&c, family)?,
        Family::GptOss => gpt_oss(&c)?,
    };
    let mut spec = family_facts(spec);
    spec.sliding_layers = sliding_layers(&c, &spec)?;
    spec.split_by_attention();
    spec.validate()?;
    Ok(spec)
}

/// Which layers of `s` slide (transformers 5.24 configuration_*.py defaults, or the
/// config's `layer_types`): none without a `sliding_window`.
fn sliding_layers(c: &Cfg, s: &ModelSpec) -> Result<crate::arch::SlidingLayers> {
    use crate::arch::SlidingLayers as S;
    if s.sliding_window.is_none() {
        return Ok(S::None);
    }
    if let Some(v) = c.get("layer_types") {
        let list = v.as_array().ok_or_else(|| {
            Error::invalid(
                "layer_types",
                v,
                "a list of \"full_attention\" / \"sliding_attention\"",
            )
        })?;
        let mut out = Vec::with_capacity(list.len());
        for t in list {
            match t.as_str() {
                Some("sliding_attention") => out.push(true),
                Some("full_attention") => out.push(false),
                _ => {
                    return Err(Error::invalid(
                        "layer_types",
                        t,
                        "\"full_attention\" or \"sliding_attention\"",
                    ))
                }
            }
        }
        if out.len() as u64 != s.layers() {
            return Err(Error::invalid(
                "layer_types",
                format!("{} entries", out.len()),
                format!("one per layer (num_hidden_layers = {})", s.layers()),
            ));
        }
        return Ok(S::Listed(out));
    }
    let pattern = |default: u64| c.uint_or(&["sliding_window_pattern"], 1 << 16, default);
    Ok(match s.family {
        // Gemma2Config: sliding on even layers; GptOssConfig: `(i + 1) % 2`
        Family::Gemma2 | Family::GptOss => S::Periodic(2),
        Family::Gemma3Text => S::Periodic(pattern(6)?),
        Family::Cohere2 => S::Periodic(pattern(4)?),
        // Qwen2Config / Qwen3Config: i >= max_window_layers (default 28)
        Family::Qwen2 | Family::Qwen3 => S::From(c.uint_or(&["max_window_layers"], 1 << 16, 28)?),
        // Qwen2MoeConfig: (i + 1) % 2 and i < max_window_layers
        Family::Qwen2Moe => S::EvenBelow(c.uint_or(&["max_window_layers"], 1 << 16, 28)?),
        _ => S::All,
    })
}

/// The keys (integers) a config of an unmodelled `model_type` must have to be estimated
/// as a generic llama-style decoder.
pub const GENERIC_KEYS: &[&str] = &[
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "vocab_size",
];

/// The note shown for a generically estimated model (`spec.generic_of` set): the
/// assumption, and the commands that measure and calibrate it.
pub fn generic_note(model_type: &str, config: &str) -> String {
    format!(
        "model_type {model_type:?} is not a modelled architecture: estimated as a generic llama-style decoder (pre-RMSNorm, rope, gated MLP, q/k/v/o with `attention_bias`, untied head unless `tie_word_embeddings`); parameters come from the safetensors headers when present. Measure it exactly on a CPU with `python3 probes/trace_probe.py --config {config} --out trace.csv` and fit a correction with `llm-mem probe calibrate --from trace.csv` (then `estimate --calibration FILE`); `--strict` refuses such models instead"
    )
}

/// `auto_map` of a config as `AutoModelForCausalLM → modeling_x.Class, ...`; `None`
/// without one. transformers loads these classes only with `trust_remote_code=True`
/// (`models/auto/auto_factory.py`); llm-mem never runs them.
fn auto_map_classes(obj: &serde_json::Map<String, Value>) -> Option<String> {
    let map = obj.get("auto_map")?.as_object()?;
    let mut parts: Vec<String> = map
        .iter()
        .map(|(k, v)| match v {
            Value::String(c) => format!("{k} → {c}"),
            // [slow, fast] tokenizer pairs
            Value::Array(a) => format!(
                "{k} → {}",
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" / ")
            ),
            other => format!("{k} → {other}"),
        })
        .collect();
    parts.truncate(4);
    Some(parts.join(", "))
}

/// The note for a config that carries `auto_map` (remote code) but whose `model_type` is
/// a modelled family: the family's own description is used and the code is never run.
/// `None` for a config without `auto_map` (or not JSON).
pub fn remote_code(json: &str, model_type: &str) -> Option<String> {
    let v: Value = serde_json::from_str(json).ok()?;
    let classes = auto_map_classes(v.as_object()?)?;
    Some(format!(
        "config.json names remote code (auto_map: {classes}); llm-mem never runs it and counts the model as the built-in {model_type:?} family describes it"
    ))
}

/// The notes for a parsed config: the generic-decoder assumption (with the commands
/// that measure and calibrate it) and the remote code it names, never run.
pub fn spec_notes(json: &str, spec: &ModelSpec, config: &str) -> Vec<String> {
    match &spec.generic_of {
        Some(mt) => {
            let mut n = vec![generic_note(mt, config)];
            let classes = serde_json::from_str::<Value>(json)
                .ok()
                .and_then(|v| auto_map_classes(v.as_object()?));
            if let Some(classes) = classes {
                n.push(format!(
                    "config.json names remote code (auto_map: {classes}); llm-mem never runs it"
                ));
            }
            n
        }
        None => remote_code(json, spec.family.model_type())
            .into_iter()
            .collect(),
    }
}

/// One linear slot (see [`block_modules`]).
const fn m(name: &'static str, role: LinearRole) -> ModuleSlot {
    ModuleSlot::one(name, role)
}

/// The linear modules of each family's decoder block as transformers names them (the
/// names peft's `target_modules` matches), in forward order.
fn block_modules(family: Family, mlp: MlpKind) -> BlockModules {
    use LinearRole::*;
    // modeling_gpt2.py GPT2Attention / GPTBigCode: c_attn (fused qkv), c_proj
    const C_ATTN: &[ModuleSlot] = &[m("c_attn", Qkv), m("c_proj", O)];
    // modeling_gpt_neox.py, modeling_falcon.py, modeling_bloom.py: query_key_value, dense
    const QKV_DENSE: &[ModuleSlot] = &[m("query_key_value", Qkv), m("dense", O)];
    // modeling_phi3.py Phi3Attention: qkv_proj, o_proj
    const QKV_PROJ: &[ModuleSlot] = &[m("qkv_proj", Qkv), m("o_proj", O)];
    // modeling_llama.py LlamaAttention and its descendants
    const QKVO_PROJ: &[ModuleSlot] = &[
        m("q_proj", Q),
        m("k_proj", K),
        m("v_proj", V),
        m("o_proj", O),
    ];
    // modeling_gptj.py GPTJAttention: q/k/v_proj, out_proj
    const QKV_OUT_PROJ: &[ModuleSlot] = &[
        m("q_proj", Q),
        m("k_proj", K),
        m("v_proj", V),
        m("out_proj", O),
    ];
    // GPTJMLP: fc_in, fc_out
    const FC_IN_OUT: &[ModuleSlot] = &[m("fc_in", Up), m("fc_out", Down)];
    // modeling_phi.py PhiAttention: q/k/v_proj, dense
    const QKV_PROJ_DENSE: &[ModuleSlot] = &[
        m("q_proj", Q),
        m("k_proj", K),
        m("v_proj", V),
        m("dense", O),
    ];
    // GPT2MLP: c_fc, c_proj
    const C_FC: &[ModuleSlot] = &[m("c_fc", Up), m("c_proj", Down)];
    // Qwen-1 QWenMLP: c_proj(w1(x) * silu(w2(x))); `intermediate` is the MLP width
    // (config.json's intermediate_size / 2)
    const QWEN_MLP: &[ModuleSlot] = &[m("w1", Up), m("w2", Gate), m("c_proj", Down)];
    // PhiMLP: fc1, fc2
    const FC12: &[ModuleSlot] = &[m("fc1", Up), m("fc2", Down)];
    // GPTNeoXMLP / FalconMLP / BloomMLP
    const H_TO_4H: &[ModuleSlot] = &[m("dense_h_to_4h", Up), m("dense_4h_to_h", Down)];
    // Phi3MLP: gate_up_proj (fused), down_proj
    const GATE_UP: &[ModuleSlot] = &[m("gate_up_proj", GateUp), m("down_proj", Down)];
    // LlamaMLP: gate_proj, up_proj, down_proj
    const GATED: &[ModuleSlot] = &[m("gate_proj", Gate), m("up_proj", Up), m("down_proj", Down)];
    const PLAIN: &[ModuleSlot] = &[m("up_proj", Up), m("down_proj", Down)];
    let attention = match family {
        Family::Gpt2 | Family::GptBigcode | Family::Qwen => C_ATTN,
        Family::GptNeox | Family::Falcon | Family::Bloom => QKV_DENSE,
        Family::Phi3 => QKV_PROJ,
        Family::Phi => QKV_PROJ_DENSE,
        Family::Gptj => QKV_OUT_PROJ,
        _ => QKVO_PROJ,
    };
    // MixtralSparseMoeBlock: gate (the router), experts.gate_up_proj / down_proj;
    // Qwen2MoeSparseMoeBlock adds shared_expert.{gate,up,down}_proj and
    // shared_expert_gate (an nn.Linear, hidden -> 1)
    const MOE: &[ModuleSlot] = &[
        m("gate", Router),
        m("gate_up_proj", ExpertGateUp),
        m("down_proj", ExpertDown),
    ];
    const GPT_OSS_MOE: &[ModuleSlot] = &[
        m("router", Router),
        m("gate_up_proj", ExpertGateUp),
        m("down_proj", ExpertDown),
    ];
    const MOE_SHARED: &[ModuleSlot] = &[
        m("gate_proj", SharedGate),
        m("up_proj", SharedUp),
        m("down_proj", SharedDown),
        m("gate", Router),
        m("gate_up_proj", ExpertGateUp),
        m("down_proj", ExpertDown),
        m("shared_expert_gate", SharedExpertGate),
    ];
    let ffn = match (family, mlp) {
        // GptOssMLP: router (a module with weight and bias), experts.gate_up_proj /
        // down_proj (with their biases)
        (Family::GptOss, _) => GPT_OSS_MOE,
        (Family::Mixtral | Family::Qwen3Moe, _) => MOE,
        (Family::Qwen2Moe, _) => MOE_SHARED,
        // GPT2MLP; modeling_starcoder2.py Starcoder2MLP: c_fc, c_proj
        (Family::Gpt2 | Family::GptBigcode | Family::Starcoder2, _) => C_FC,
        (Family::Qwen, _) => QWEN_MLP,
        (Family::Phi, _) => FC12,
        (Family::Gptj, _) => FC_IN_OUT,
        (Family::GptNeox | Family::Falcon | Family::Bloom, _) => H_TO_4H,
        (
            _,
            MlpKind::Gated {
                fused_gate_up: true,
            },
        ) => GATE_UP,
        (
            _,
            MlpKind::Gated {
                fused_gate_up: false,
            },
        ) => GATED,
        (_, MlpKind::Plain) => PLAIN,
    };
    BlockModules { attention, ffn }
}

/// DeepSeek-V2/V3's blocks (modeling_deepseek_v2.py / _v3.py): `DeepseekV2Attention`
/// with `q_proj` or `q_a_proj` / `q_b_proj`, `kv_a_proj_with_mqa`, `kv_b_proj`,
/// `o_proj`; a dense layer's `DeepseekV2MLP` (gate/up/down_proj) or the sparse block:
/// `gate` (the router), `experts.gate_up_proj` / `experts.down_proj`, and
/// `shared_experts.{gate,up,down}_proj`.
fn deepseek_modules(q_lora: bool, sparse: bool) -> BlockModules {
    use LinearRole::*;
    const ATTN_Q: &[ModuleSlot] = &[
        m("q_proj", Q),
        m("kv_a_proj_with_mqa", KvA),
        m("kv_b_proj", KvB),
        m("o_proj", O),
    ];
    const ATTN_QLORA: &[ModuleSlot] = &[
        m("q_a_proj", QA),
        m("q_b_proj", QB),
        m("kv_a_proj_with_mqa", KvA),
        m("kv_b_proj", KvB),
        m("o_proj", O),
    ];
    const DENSE: &[ModuleSlot] = &[m("gate_proj", Gate), m("up_proj", Up), m("down_proj", Down)];
    const SPARSE: &[ModuleSlot] = &[
        m("gate", Router),
        m("gate_up_proj", ExpertGateUp),
        m("down_proj", ExpertDown),
        m("gate_proj", SharedGate),
        m("up_proj", SharedUp),
        m("down_proj", SharedDown),
    ];
    BlockModules {
        attention: if q_lora { ATTN_QLORA } else { ATTN_Q },
        ffn: if sparse { SPARSE } else { DENSE },
    }
}

/// The facts downstream code needs that follow from the family: the block's modules,
/// the q/k norm shape, the eager softmax dtype.
fn family_facts(mut s: ModelSpec) -> ModelSpec {
    if s.mla.is_none() {
        // one block for the stack; DeepSeek's parser sets its dense and sparse groups
        let modules = block_modules(s.family, s.mlp);
        for g in &mut s.groups {
            g.modules = modules;
        }
    }
    // modeling_gptj.py eager attention: softmax of fp32 scores (saved in fp32)
    // modeling_gpt2.py eager attention: softmax in the compute dtype;
    // modeling_falcon.py: softmax(dtype=hidden_states.dtype); llama-style
    // eager_attention_forward (also modeling_gpt_bigcode.py in transformers 5.24):
    // softmax(dtype=float32)
    s.eager_softmax_fp32 = !matches!(s.family, Family::Gpt2 | Family::Falcon);
    // modeling_falcon.py FalconAttention._split_heads indexes k/v with lists and
    // reshapes the transposed q (copies); modeling_bloom.py BloomAttention reshapes
    // transposed slices (copies); the others slice, split or chunk (views)
    s.qkv_views = !matches!(s.family, Family::Falcon | Family::Bloom);
    // FalconAttention: `query_layer @ key_layer.transpose(-1, -2)` broadcasts the k/v
    // heads; FalconModel: create_causal_mask(..., allow_is_causal_skip=False)
    s.eager_kv_broadcast = s.family == Family::Falcon;
    s.mask_always_materialized = s.family == Family::Falcon;
    // modeling_falcon.py FalconLinear.forward: input @ self.weight.T
    s.linear_as_matmul = s.family == Family::Falcon;
    // modeling_phi3.py apply_rotary_pos_emb: torch.cat([rotated, q_pass]) always
    s.rope_cat = s.family == Family::Phi3;
    s
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A config object plus where it came from, with typed accessors that name the field in
/// every error. `null` counts as absent (transformers treats `None` as "use the default").
struct Cfg<'a> {
    m: &'a Map<String, Value>,
    path: &'a str,
    model_type: &'a str,
}

impl Cfg<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.m.get(key).filter(|v| !v.is_null())
    }

    fn missing(&self, key: &str) -> Error {
        Error::Config {
            path: self.path.to_string(),
            message: format!(
                "missing required field `{key}` for model_type {:?}",
                self.model_type
            ),
        }
    }

    /// A positive integer in `1..=max`, or `None` when absent / null.
    fn uint_opt(&self, key: &'static str, max: u64) -> Result<Option<u64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let accepted = || format!("an integer in 1..={max}");
        match v.as_u64() {
            Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
            _ => Err(Error::invalid(key, v, accepted())),
        }
    }

    /// A required positive integer; `keys` are aliases tried in order (the first is
    /// the name used in the error).
    fn uint_req(&self, keys: &[&'static str], max: u64) -> Result<u64> {
        for k in keys {
            if let Some(n) = self.uint_opt(k, max)? {
                return Ok(n);
            }
        }
        Err(self.missing(keys[0]))
    }

    /// First present alias, or the class default.
    fn uint_or(&self, keys: &[&'static str], max: u64, default: u64) -> Result<u64> {
        for k in keys {
            if let Some(n) = self.uint_opt(k, max)? {
                return Ok(n);
            }
        }
        Ok(default)
    }

    /// An integer in `0..=max` (class default when absent / null).
    fn uint0_or(&self, key: &'static str, max: u64, default: u64) -> Result<u64> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        match v.as_u64() {
            Some(n) if n <= max => Ok(n),
            _ => Err(Error::invalid(key, v, format!("an integer in 0..={max}"))),
        }
    }

    fn bool_or(&self, key: &'static str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(Error::invalid(key, v, "true or false")),
        }
    }

    /// A finite number in `[lo, hi]`.
    fn float_opt(&self, key: &'static str, lo: f64, hi: f64) -> Result<Option<f64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match v.as_f64() {
            Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(Some(x)),
            _ => Err(Error::invalid(key, v, format!("a number in [{lo}, {hi}]"))),
        }
    }

    fn float_or(&self, key: &'static str, lo: f64, hi: f64, default: f64) -> Result<f64> {
        Ok(self.float_opt(key, lo, hi)?.unwrap_or(default))
    }

    /// A dropout probability in [0, 1] (class default when absent).
    fn prob(&self, key: &'static str, default: f64) -> Result<f64> {
        self.float_or(key, 0.0, 1.0, default)
    }

    fn str_opt(&self, key: &'static str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(Error::invalid(key, v, "a string")),
        }
    }

    /// The activation named by `key` (class default when absent).
    fn act(&self, key: &'static str, default: Activation) -> Result<Activation> {
        match self.str_opt(key)? {
            None => Ok(default),
            Some(s) => Activation::from_hf(s).ok_or_else(|| {
                Error::invalid(
                    key,
                    s,
                    "silu, swish, gelu, gelu_new, gelu_fast, gelu_python_tanh, gelu_pytorch_tanh, relu",
                )
            }),
        }
    }

    /// Reject MoE, MLA and VLM configs (by `model_type` or by their tell-tale fields).
    fn reject_later_version(&self) -> Result<()> {
        let unsupported = || Error::Unsupported {
            model_type: self.model_type.to_string(),
            reason: LATER_VERSION.to_string(),
            supported: Family::supported_list(),
        };
        let mt = self.model_type;
        let modelled = Family::from_model_type(mt).is_some();
        if MOE_TYPES.contains(&mt) || VLM_TYPES.contains(&mt) || (mt.contains("moe") && !modelled) {
            return Err(unsupported());
        }
        if modelled && MODELLED_MOE_TYPES.contains(&mt) {
            // the expert keys are the family's own (`moe` parses them)
            return Ok(());
        }
        for key in [
            "num_local_experts",
            "num_experts",
            "n_routed_experts",
            "moe_num_experts",
        ] {
            if let Some(v) = self.get(key) {
                // Any expert count other than 0 or 1 means a routed MoE; a non-integer
                // value cannot be trusted either.
                if v.as_u64().is_none_or(|n| n > 1) {
                    return Err(unsupported());
                }
            }
        }
        for key in ["kv_lora_rank", "q_lora_rank"] {
            if self.get(key).is_some() {
                return Err(unsupported());
            }
        }
        for key in ["vision_config", "visual", "vision_tower", "mm_vision_tower"] {
            if self.get(key).is_some() {
                return Err(self.vision_language(key));
            }
        }
        Ok(())
    }

    /// A supported text `model_type` with a vision block (Qwen-VL is `qwen` + `visual`):
    /// the error says which model it is and qualifies its text family in the list, so it
    /// does not reject a `model_type` that it lists as supported.
    fn vision_language(&self, key: &str) -> Error {
        let mt = self.model_type;
        let (model_type, qualified) = if Family::ALL.iter().any(|f| f.model_type() == mt) {
            let name = if mt == "qwen" {
                "Qwen-VL"
            } else {
                "a vision-language variant"
            };
            (
                format!("{mt} with a `{key}` block ({name}, a vision-language model)"),
                format!("{mt} (text-only: without `{key}`)"),
            )
        } else {
            (mt.to_string(), String::new())
        };
        let supported = Family::ALL
            .iter()
            .map(|f| f.model_type())
            .map(|t| {
                if t == mt {
                    qualified.clone()
                } else {
                    t.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        Error::Unsupported {
            model_type,
            reason: LATER_VERSION.to_string(),
            supported,
        }
    }

    /// `head_dim` from `hidden / heads`, which must divide exactly.
    fn derived_head_dim(&self, hidden: u64, heads: u64) -> Result<u64> {
        if !hidden.is_multiple_of(heads) {
            return Err(Error::invalid(
                "num_attention_heads",
                heads,
                format!("a divisor of hidden_size ({hidden}) when head_dim is not given"),
            ));
        }
        Ok(hidden / heads)
    }

    /// `torch_dtype` (or transformers 5's `dtype`); `"auto"` or absent → `None`.
    fn torch_dtype(&self) -> Result<Option<DType>> {
        for key in ["torch_dtype", "dtype"] {
            if let Some(s) = self.str_opt(key)? {
                if s == "auto" {
                    return Ok(None);
                }
                return DType::from_name(s).map(Some).ok_or_else(|| {
                    Error::invalid(
                        key,
                        s,
                        "float32, float16, bfloat16, float64, float8_e4m3fn, float8_e5m2, int8, uint8, auto",
                    )
                });
            }
        }
        Ok(None)
    }

    /// `quantization_config`: method, bits and group size, read from the object in that
    /// order ([`Cfg::quant_method`], [`Cfg::quant_bits`], [`Cfg::quant_group_size`]).
    fn quantization(&self) -> Result<Option<Quantization>> {
        let Some(v) = self.get("quantization_config") else {
            return Ok(None);
        };
        let Value::Object(q) = v else {
            return Err(Error::invalid(
                "quantization_config",
                v,
                "an object with quant_method and bits",
            ));
        };
        let qc = Cfg {
            m: q,
            path: self.path,
            model_type: self.model_type,
        };
        let method = qc.quant_method()?;
        let bits = qc.quant_bits(&method)?;
        let group_size = qc.quant_group_size(&method, bits)?;
        Ok(Some(Quantization {
            method,
            bits,
            group_size,
        }))
    }

    /// On the `quantization_config` object: `quant_method` (a string), or bitsandbytes
    /// when it is absent but a `load_in_*bit` key is present.
    fn quant_method(&self) -> Result<String> {
        match self.get("quant_method") {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(Error::invalid(
                "quantization_config.quant_method",
                v,
                "a string such as gptq, awq, bitsandbytes, fp8",
            )),
            // transformers treats a config with load_in_*bit and no method as bitsandbytes.
            None if self.get("load_in_4bit").is_some() || self.get("load_in_8bit").is_some() => {
                Ok("bitsandbytes".to_string())
            }
            None => Err(self.missing("quantization_config.quant_method")),
        }
    }

    /// On the `quantization_config` object: bits per weight, in `1..=16`. `bits` (GPTQ,
    /// AWQ, HQQ…) or `w_bit` (old AWQ), else bitsandbytes `load_in_4bit` /
    /// `load_in_8bit`, else 8 for `quant_method` `fp8`.
    fn quant_bits(&self, method: &str) -> Result<u32> {
        let bits = self.quant_int(["bits", "w_bit"])?;
        let load4 = self.bool_or("load_in_4bit", false)?;
        let load8 = self.bool_or("load_in_8bit", false)?;
        let bits = match bits {
            Some(b) => b,
            None if load4 => 4,
            None if load8 => 8,
            None if method == "fp8" => 8,
            None => {
                return Err(Error::Config {
                    path: self.path.to_string(),
                    message: format!(
                        "quantization_config (quant_method {method:?}) has no `bits`, `load_in_4bit` or `load_in_8bit`"
                    ),
                })
            }
        };
        u32::try_from(bits)
            .ok()
            .filter(|b| (1..=16).contains(b))
            .ok_or_else(|| Error::invalid("quantization_config.bits", bits, "an integer in 1..=16"))
    }

    /// On the `quantization_config` object: the group size, `group_size` /
    /// `q_group_size`; `-1` (GPTQ "no grouping") → `None`; when absent, bitsandbytes
    /// 4-bit → 64 (its fixed absmax block), 8-bit → `None` (row-wise).
    fn quant_group_size(&self, method: &str, bits: u32) -> Result<Option<u64>> {
        match self.quant_int(["group_size", "q_group_size"])? {
            Some(-1) => Ok(None),
            Some(g) if g > 0 && g as u64 <= MAX_WIDTH => Ok(Some(g as u64)),
            Some(g) => Err(Error::invalid(
                "quantization_config.group_size",
                g,
                "-1 (no grouping) or an integer in 1..=1048576",
            )),
            None if method == "bitsandbytes" && bits == 4 => Ok(Some(64)),
            None => Ok(None),
        }
    }

    /// On the `quantization_config` object: an integer under the first of two aliases
    /// that is present. Both are read, so either one malformed is an error.
    fn quant_int(&self, keys: [&str; 2]) -> Result<Option<i64>> {
        let mut found = None;
        for key in keys {
            if let Some(v) = self.get(key) {
                let n = v.as_i64().ok_or_else(|| {
                    Error::invalid(format!("quantization_config.{key}"), v, "an integer")
                })?;
                found = found.or(Some(n));
            }
        }
        Ok(found)
    }

    /// A `sliding_window` value when present (must be a positive integer).
    fn window(&self) -> Result<Option<u64>> {
        self.uint_opt("sliding_window", MAX_POSITIONS)
    }
}

/// `int(head_dim * factor)`, as transformers computes the rotary dimension.
fn rotary_dim(head_dim: u64, factor: f64) -> u64 {
    (head_dim as f64 * factor) as u64
}

/// The sizes of a model, as each family reads them under its own key names. Families
/// build it as a struct literal, whose fields are evaluated in the order written: the
/// order of the fields there is the order the keys are read (and errors reported) in.
struct Dims {
    hidden: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    intermediate: u64,
    vocab: u64,
}

/// A spec of these sizes with the fields every family sets the same way; callers
/// override the rest.
fn base(c: &Cfg, family: Family, d: Dims) -> Result<ModelSpec> {
    Ok(ModelSpec {
        name: c.path.to_string(),
        family,
        hidden: d.hidden,
        groups: vec![LayerGroup {
            count: d.layers,
            modules: BlockModules::default(),
            sliding: false,
        }],
        heads: d.heads,
        kv_heads: d.kv_heads,
        head_dim: d.head_dim,
        intermediate: d.intermediate,
        vocab: d.vocab,
        max_positions: 2048,
        tie_embeddings: false,
        norm: NormKind::RmsNorm {
            offset_one: false,
            weight_fp32: false,
        },
        act: Activation::Silu,
        mlp: MlpKind::Gated {
            fused_gate_up: false,
        },
        fused_qkv: false,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        lm_head_bias: false,
        embed_norm: false,
        qk_norm: QkNorm::None,
        eager_softmax_fp32: true,
        qkv_views: true,
        eager_kv_broadcast: false,
        mask_always_materialized: false,
        rope_cat: false,
        scalars: ScalarMults::default(),
        rope_fp32: false,
        attn_chunk_cat: false,
        rope_before_transpose: false,
        eager_qk_fp32: false,
        linear_as_matmul: false,
        positions: Positions::Rope {
            rotary_dim: d.head_dim,
        },
        residual: Residual::Sequential,
        sandwich_norms: false,
        embed_scale: false,
        attn_softcap: None,
        final_softcap: None,
        sliding_window: None,
        dropout: Dropout::default(),
        torch_dtype: c.torch_dtype()?,
        quantization: c.quantization()?,
        checkpoint: None,
        generic_of: None,
        moe: None,
        mla: None,
        attn_sinks: false,
        rope_half_table: false,
        vision: None,
        sliding_layers: crate::arch::SlidingLayers::None,
    })
}

/// [`base`] for the families that use transformers' standard key names: `hidden_size`,
/// `num_hidden_layers`, `num_attention_heads`, `num_key_value_heads` (default: the
/// heads; read only when `gqa`), `intermediate_size`, `vocab_size`. `head_dim` picks the
/// family's rule from (hidden, heads).
fn std_base(
    c: &Cfg,
    family: Family,
    gqa: bool,
    head_dim: impl FnOnce(u64, u64) -> Result<u64>,
) -> Result<ModelSpec> {
    let hidden = c.uint_req(&["hidden_size"], MAX_WIDTH)?;
    let layers = c.uint_req(&["num_hidden_layers"], MAX_LAYERS)?;
    let heads = c.uint_req(&["num_attention_heads"], MAX_WIDTH)?;
    let dims = Dims {
        hidden,
        layers,
        heads,
        kv_heads: if gqa {
            c.uint_or(&["num_key_value_heads"], MAX_WIDTH, heads)?
        } else {
            heads
        },
        head_dim: head_dim(hidden, heads)?,
        intermediate: c.uint_req(&["intermediate_size"], MAX_WIDTH)?,
        vocab: c.uint_req(&["vocab_size"], MAX_VOCAB)?,
    };
    base(c, family, dims)
}

/// llama / mistral / qwen2 / qwen3 (`LlamaConfig`, `MistralConfig`, `Qwen2Config`,
/// `Qwen3Config`). `num_key_value_heads` defaults to the number of heads; `head_dim`
/// defaults to hidden/heads except Qwen3 (class default 128). Llama: `attention_bias`
/// on q,k,v,o and `mlp_bias` (both default false). Qwen2: q,k,v always have a bias,
/// o_proj never. Qwen3: q_norm/k_norm, `attention_bias` (default false). Sliding window:
/// Mistral whenever `sliding_window` is set; Qwen2/3 only with `use_sliding_window`.
/// Ties: `tie_word_embeddings` default false for all four.
fn llama_like(c: &Cfg, family: Family) -> Result<ModelSpec> {
    let mut s = std_base(c, family, true, |hidden, heads| {
        match c.uint_opt("head_dim", MAX_WIDTH)? {
            Some(d) => Ok(d),
            None if family == Family::Qwen3 => Ok(128),
            None => c.derived_head_dim(hidden, heads),
        }
    })?;
    let default_pos = match family {
        Family::Mistral => 4096 * 32,
        Family::Qwen2 | Family::Qwen3 => 32768,
        _ => 2048,
    };
    s.max_positions = c.uint_or(&["max_position_embeddings"], MAX_POSITIONS, default_pos)?;
    s.tie_embeddings = c.bool_or("tie_word_embeddings", false)?;
    s.act = c.act("hidden_act", Activation::Silu)?;
    s.dropout.attn = c.prob("attention_dropout", 0.0)?;
    match family {
        Family::Qwen2 => {
            s.qkv_bias = true;
        }
        Family::Qwen3 => {
            s.qkv_bias = c.bool_or("attention_bias", false)?;
            s.o_bias = s.qkv_bias;
            s.qk_norm = QkNorm::Shared { bias: false };
        }
        _ => {
            s.qkv_bias = c.bool_or("attention_bias", false)?;
            s.o_bias = s.qkv_bias;
            s.mlp_bias = c.bool_or("mlp_bias", false)?;
        }
    }
    s.sliding_window = match family {
        Family::Mistral => c.window()?,
        Family::Qwen2 | Family::Qwen3 => {
            let window = c.window()?;
            if c.bool_or("use_sliding_window", false)? {
                Some(window.unwrap_or(4096))
            } else {
                None
            }
        }
        _ => None,
    };
    Ok(s)
}

/// mixtral / qwen2_moe / qwen3_moe (transformers 5.24 modeling_mixtral.py,
/// modeling_qwen2_moe.py, modeling_qwen3_moe.py): the attention of Mistral, Qwen2
/// (q/k/v biases) and Qwen3 (q/k norms) with a sparse MoE block in every layer.
/// Mixtral: `num_local_experts`, `num_experts_per_tok`, the experts' width
/// `intermediate_size`, `MixtralTopKRouter` renormalizing the top-k fp32 weights;
/// Qwen: `num_experts`, `num_experts_per_tok`, `moe_intermediate_size`,
/// `norm_topk_prob` (default false), weights cast to the logits' dtype, Qwen2-MoE's
/// `shared_expert_intermediate_size`. Dense layers among the sparse ones
/// (`decoder_sparse_step` > 1, `mlp_only_layers`), `router_jitter_noise` and
/// `output_router_logits` (the auxiliary loss keeps every layer's router logits) are
/// refused, named.
fn moe(c: &Cfg, family: Family) -> Result<ModelSpec> {
    let attention = match family {
        Family::Mixtral => Family::Mistral,
        Family::Qwen2Moe => Family::Qwen2,
        _ => Family::Qwen3,
    };
    let mut s = llama_like(c, attention)?;
    s.family = family;
    let (experts_key, width_key) = if family == Family::Mixtral {
        ("num_local_experts", "intermediate_size")
    } else {
        ("num_experts", "moe_intermediate_size")
    };
    let experts = c
        .uint_opt(experts_key, 1 << 16)?
        .ok_or_else(|| c.missing(experts_key))?;
    let top_k = c
        .uint_opt("num_experts_per_tok", 1 << 16)?
        .ok_or_else(|| c.missing("num_experts_per_tok"))?;
    let expert_intermediate = c
        .uint_opt(width_key, MAX_WIDTH)?
        .ok_or_else(|| c.missing(width_key))?;
    let shared_expert = if family == Family::Qwen2Moe {
        c.uint_opt("shared_expert_intermediate_size", MAX_WIDTH)?
    } else {
        None
    };
    let refuse = |key: &str, value: String, accepted: &str| {
        Err(Error::Unsupported {
            model_type: c.model_type.to_string(),
            reason: format!("`{key}` = {value}: {accepted}"),
            supported: Family::supported_list(),
        })
    };
    if family != Family::Mixtral {
        let step = c.uint_or(&["decoder_sparse_step"], 1 << 16, 1)?;
        let dense_layers = c
            .get("mlp_only_layers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if step != 1 || dense_layers {
            return refuse(
                if step != 1 { "decoder_sparse_step" } else { "mlp_only_layers" },
                if step != 1 { step.to_string() } else { "non-empty".into() },
                "dense MLP layers among the sparse ones are estimated with per-group layer programs, not modelled yet (a sparse block in every layer is)",
            );
        }
    }
    if let Some(j) = c.get("router_jitter_noise").and_then(Value::as_f64) {
        if j != 0.0 {
            return refuse(
                "router_jitter_noise",
                j.to_string(),
                "0 (the training-time jitter's in-place multiply is not modelled)",
            );
        }
    }
    refuse_moe_extras(
        c,
        &s,
        "unquantized experts (how a GPTQ/AWQ checkpoint's per-expert linears map onto transformers 5's fused experts is not modelled)",
    )?;
    s.moe = Some(MoeSpec {
        experts,
        top_k,
        expert_intermediate,
        shared_expert,
        norm_topk: family == Family::Mixtral || c.bool_or("norm_topk_prob", false)?,
        fp32_weights: family == Family::Mixtral,
        router: RouterKind::Softmax,
        router_fp32: false,
        shared_gate: shared_expert.is_some(),
        biases: false,
        clamped_swiglu: false,
        local_experts: None,
    });
    Ok(s)
}

/// What every modelled MoE family refuses by name: the auxiliary router loss
/// (`output_router_logits` keeps every layer's router logits) and a quantized
/// checkpoint (`quant_accepted` says what is accepted instead).
fn refuse_moe_extras(c: &Cfg, s: &ModelSpec, quant_accepted: &str) -> Result<()> {
    let refuse = |key: &str, value: &str, accepted: &str| {
        Err(Error::Unsupported {
            model_type: c.model_type.to_string(),
            reason: format!("`{key}` = {value}: {accepted}"),
            supported: Family::supported_list(),
        })
    };
    if c.bool_or("output_router_logits", false)? {
        return refuse("output_router_logits", "true", "false (the auxiliary load-balancing loss, which keeps every layer's router logits, is not modelled)");
    }
    if s.quantization.is_some() {
        return refuse("quantization_config", "present", quant_accepted);
    }
    Ok(())
}

/// llava (transformers 5.24 configuration_llava.py / modeling_llava.py, LLaVA-1.5): the
/// decoder from `text_config` (llama, with `LlamaConfig`'s class defaults for the keys
/// the file leaves out), a CLIP vision tower from `vision_config`
/// (`clip_vision_model`, `CLIPVisionConfig` defaults) and `LlavaMultiModalProjector`
/// (`projector_hidden_act`, default gelu; `multimodal_projector_bias`, default true).
/// `vision_feature_layer` (default -2) picks the hidden state the features come from
/// (an integer; a list of layers is refused), `vision_feature_select_strategy`
/// "default" drops the class token, and `image_seq_length` (default 576) must equal the
/// image tokens that follow.
///
/// `next`: LLaVA-NeXT (`llava_next`, modeling_llava_next.py): the same tower and
/// projector with anyres tiles of every image over `image_grid_pinpoints`
/// (LlavaNextConfig's default list when absent), unpadded and ending each row with
/// `image_newline`, no pooling; a llama or mistral text model.
fn llava(obj: &Map<String, Value>, name: &str, next: bool) -> Result<ModelSpec> {
    let vlm = if next { "llava_next" } else { "llava" };
    let cfg = Cfg {
        m: obj,
        path: name,
        model_type: vlm,
    };
    let sub = |key: &'static str| -> Result<Map<String, Value>> {
        match obj.get(key) {
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(v) => Err(Error::invalid(key, v, "an object")),
            None => Err(cfg.missing(key)),
        }
    };
    let text_type = obj
        .get("text_config")
        .and_then(|t| t.get("model_type"))
        .and_then(Value::as_str)
        .unwrap_or("llama");
    let mut s = if next && text_type == "mistral" {
        // configuration_mistral.py class defaults
        vlm_text_model(
            obj,
            name,
            vlm,
            "mistral",
            &[
                ("vocab_size", Value::from(32000u64)),
                ("hidden_size", Value::from(4096u64)),
                ("intermediate_size", Value::from(14336u64)),
                ("num_hidden_layers", Value::from(32u64)),
                ("num_attention_heads", Value::from(32u64)),
                ("num_key_value_heads", Value::from(8u64)),
            ],
        )?
    } else {
        // configuration_llama.py class defaults (what LlavaConfig's text_config gets)
        vlm_text_model(
            obj,
            name,
            vlm,
            "llama",
            &[
                ("vocab_size", Value::from(32000u64)),
                ("hidden_size", Value::from(4096u64)),
                ("intermediate_size", Value::from(11008u64)),
                ("num_hidden_layers", Value::from(32u64)),
                ("num_attention_heads", Value::from(32u64)),
            ],
        )?
    };
    let vision = sub("vision_config")?;
    let vt = vision
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("clip_vision_model");
    if vt != "clip_vision_model" {
        return Err(Error::Unsupported {
            model_type: format!("llava with a {vt} vision tower"),
            reason: "LLaVA-1.5's CLIP vision tower (clip_vision_model) is modelled".into(),
            supported: Family::supported_list(),
        });
    }
    let v = Cfg {
        m: &vision,
        path: name,
        model_type: "clip_vision_model",
    };
    // configuration_clip.py CLIPVisionConfig defaults
    let hidden = v.uint_or(&["hidden_size"], MAX_WIDTH, 768)?;
    let heads = v.uint_or(&["num_attention_heads"], MAX_WIDTH, 12)?;
    let layers = v.uint_or(&["num_hidden_layers"], MAX_LAYERS, 12)?;
    let intermediate = v.uint_or(&["intermediate_size"], MAX_WIDTH, 3072)?;
    let image_size = v.uint_or(&["image_size"], 1 << 16, 224)?;
    let patch_size = v.uint_or(&["patch_size"], 1 << 12, 32)?;
    let channels = v.uint_or(&["num_channels"], 64, 3)?;
    if !hidden.is_multiple_of(heads) || patch_size > image_size {
        return Err(Error::invalid(
            "vision_config",
            format!("hidden {hidden}, heads {heads}, patch {patch_size}, image {image_size}"),
            "heads dividing hidden_size and patch_size <= image_size",
        ));
    }
    let patches = (image_size / patch_size).pow(2);
    let act = v.act("hidden_act", Activation::QuickGelu)?;
    let tower = vit_tower(
        &s,
        name,
        hidden,
        heads,
        layers,
        intermediate,
        act,
        patches + 1,
    )?;
    let feature_layers = feature_layers(obj, layers, -2)?;
    let drop_cls = drop_cls(&cfg, "default")?;
    let mut vs = VisionSpec {
        tower,
        image_size,
        patch_size,
        channels,
        class_token: true,
        patch_bias: false,
        pre_norm: true,
        post_norm_used: false,
        feature_layers,
        drop_cls,
        projector_out: s.hidden,
        projector: Projector::Mlp {
            act: cfg.act("projector_hidden_act", Activation::Gelu)?,
            bias: cfg.bool_or("multimodal_projector_bias", true)?,
        },
        bidirectional_images: false,
        anyres: None,
        newline: false,
        adapters_reach: true,
        post_norm: true,
        temporal_patch: 1,
        native: None,
        window: None,
    };
    if next {
        // configuration_llava_next.py: the default pinpoints
        let pinpoints = match obj.get("image_grid_pinpoints") {
            None | Some(Value::Null) => {
                vec![(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]
            }
            Some(v) => pinpoints_of(v)?,
        };
        vs.anyres = Some(Anyres {
            pinpoints,
            max_patches: None,
            single_image_only: false,
        });
        vs.newline = true;
        s.name = name.to_string();
        s.vision = Some(Box::new(vs));
        return Ok(s);
    }
    let seq = cfg.uint_or(&["image_seq_length"], 1 << 20, 576)?;
    if seq != vs.image_tokens() {
        return Err(Error::invalid(
            "image_seq_length",
            seq,
            format!(
                "the image tokens the tower gives ({} patches{})",
                vs.patches(),
                if drop_cls { "" } else { " + the class token" }
            ),
        ));
    }
    s.name = name.to_string();
    s.vision = Some(Box::new(vs));
    Ok(s)
}

/// A nested sub-config object `key` of `obj`.
fn sub_config(
    obj: &Map<String, Value>,
    key: &'static str,
    name: &str,
) -> Result<Map<String, Value>> {
    match obj.get(key) {
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(v) => Err(Error::invalid(key, v, "an object")),
        None => Err(Error::Config {
            path: name.to_string(),
            message: format!("missing required field `{key}`"),
        }),
    }
}

/// A VLM's text model from its `text_config` (whose `model_type` must be
/// `text_type`), with the text config class's `defaults` for what the file leaves out
/// and the top level's `torch_dtype` / `tie_word_embeddings` where the text config has
/// none (what the composite config class passes down).
fn vlm_text_model(
    obj: &Map<String, Value>,
    name: &str,
    vlm: &str,
    text_type: &str,
    defaults: &[(&str, Value)],
) -> Result<ModelSpec> {
    let mut text = sub_config(obj, "text_config", name)?;
    let got = text
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or(text_type)
        .to_string();
    if got != text_type {
        return Err(Error::Unsupported {
            model_type: format!("{vlm} with a {got} text_config"),
            reason: format!("{vlm} with a {text_type} text model is modelled"),
            supported: Family::supported_list(),
        });
    }
    text.entry("model_type").or_insert(Value::from(text_type));
    for (k, v) in defaults {
        text.entry(k.to_string()).or_insert(v.clone());
    }
    for k in ["torch_dtype", "tie_word_embeddings"] {
        if let (false, Some(v)) = (text.contains_key(k), obj.get(k)) {
            text.insert(k.to_string(), v.clone());
        }
    }
    parse_config(&Value::Object(text).to_string(), name)
}

/// `image_grid_pinpoints`: [height, width] pairs of positive integers.
fn pinpoints_of(v: &Value) -> Result<Vec<(u64, u64)>> {
    let bad = |p: &Value| {
        Error::invalid(
            "image_grid_pinpoints",
            p,
            "a list of [height, width] pairs of integers in 1..=65536",
        )
    };
    let Value::Array(a) = v else {
        return Err(bad(v));
    };
    a.iter()
        .map(|p| match p.as_array().map(|x| x.as_slice()) {
            Some([h, w]) => match (h.as_u64(), w.as_u64()) {
                (Some(h), Some(w)) if (1..=1 << 16).contains(&h) && (1..=1 << 16).contains(&w) => {
                    Ok((h, w))
                }
                _ => Err(bad(p)),
            },
            _ => Err(bad(p)),
        })
        .collect()
}

/// The tower layers the features come from: `vision_feature_layer` (one integer,
/// negative counting from the end of the `layers + 1` hidden states; `default` when
/// absent).
fn feature_layers(obj: &Map<String, Value>, layers: u64, default: i64) -> Result<u64> {
    let feature = match obj.get("vision_feature_layer") {
        None | Some(Value::Null) => default,
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or(default),
        Some(v) => {
            return Err(Error::invalid(
                "vision_feature_layer",
                v,
                "one integer layer index (a list of layers is not modelled)",
            ))
        }
    };
    let index = if feature < 0 {
        layers as i64 + 1 + feature
    } else {
        feature
    };
    if !(0..=layers as i64).contains(&index) {
        return Err(Error::invalid(
            "vision_feature_layer",
            feature,
            format!("an index into the tower's {} hidden states", layers + 1),
        ));
    }
    Ok(index as u64)
}

/// `vision_feature_select_strategy`: "default" drops the first token (CLIP's class
/// token), "full" keeps every one.
fn drop_cls(cfg: &Cfg, default: &str) -> Result<bool> {
    match cfg
        .str_opt("vision_feature_select_strategy")?
        .unwrap_or(default)
    {
        "default" => Ok(true),
        "full" => Ok(false),
        other => Err(Error::invalid(
            "vision_feature_select_strategy",
            other,
            "default or full",
        )),
    }
}

/// A ViT encoder of `layers` layers as a [`ModelSpec`] (the tower of a VLM): LayerNorm
/// with bias, q/k/v/out_proj and fc1/fc2 with biases (CLIP's and SigLIP's
/// `*EncoderLayer`, eager/SDPA attention without a mask), learned positions over
/// `positions`; every other field a llama decoder's (no sandwich norms, q/k norms,
/// scalings or soft-caps), in the text model's dtype.
#[allow(clippy::too_many_arguments)]
fn vit_tower(
    text: &ModelSpec,
    name: &str,
    hidden: u64,
    heads: u64,
    layers: u64,
    intermediate: u64,
    act: Activation,
    positions: u64,
) -> Result<ModelSpec> {
    const VIT: BlockModules = BlockModules {
        attention: &[
            m("q_proj", LinearRole::Q),
            m("k_proj", LinearRole::K),
            m("v_proj", LinearRole::V),
            m("out_proj", LinearRole::O),
        ],
        ffn: &[m("fc1", LinearRole::Up), m("fc2", LinearRole::Down)],
    };
    let base = format!(
        r#"{{"model_type":"llama","hidden_size":{hidden},"num_hidden_layers":{layers},"num_attention_heads":{heads},"intermediate_size":{intermediate},"vocab_size":1}}"#
    );
    let mut tower = parse_config(&base, name)?;
    tower.name = format!("{name} (vision tower)");
    tower.torch_dtype = text.torch_dtype;
    tower.groups = vec![LayerGroup {
        count: layers,
        modules: VIT,
        sliding: false,
    }];
    tower.norm = NormKind::LayerNorm { bias: true };
    tower.act = act;
    tower.mlp = MlpKind::Plain;
    (tower.qkv_bias, tower.o_bias, tower.mlp_bias) = (true, true, true);
    tower.positions = Positions::Learned;
    tower.max_positions = positions;
    Ok(tower)
}

/// A SigLIP tower's shape (`siglip_vision_model`, configuration_siglip.py
/// `SiglipVisionConfig` defaults; no pooling head), for the VLM `parent`.
struct Siglip {
    hidden: u64,
    heads: u64,
    layers: u64,
    intermediate: u64,
    image_size: u64,
    patch_size: u64,
    channels: u64,
    act: Activation,
}

fn siglip(vision: &Map<String, Value>, name: &str, parent: &str) -> Result<Siglip> {
    let vt = vision
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("siglip_vision_model");
    if vt != "siglip_vision_model" {
        return Err(Error::Unsupported {
            model_type: format!("{parent} with a {vt} vision tower"),
            reason: format!("{parent}'s SigLIP vision tower (siglip_vision_model) is modelled"),
            supported: Family::supported_list(),
        });
    }
    let v = Cfg {
        m: vision,
        path: name,
        model_type: "siglip_vision_model",
    };
    let t = Siglip {
        hidden: v.uint_or(&["hidden_size"], MAX_WIDTH, 768)?,
        heads: v.uint_or(&["num_attention_heads"], MAX_WIDTH, 12)?,
        layers: v.uint_or(&["num_hidden_layers"], MAX_LAYERS, 12)?,
        intermediate: v.uint_or(&["intermediate_size"], MAX_WIDTH, 3072)?,
        image_size: v.uint_or(&["image_size"], 1 << 16, 224)?,
        patch_size: v.uint_or(&["patch_size"], 1 << 12, 16)?,
        channels: v.uint_or(&["num_channels"], 64, 3)?,
        act: v.act("hidden_act", Activation::GeluTanh)?,
    };
    if v.bool_or("vision_use_head", false)? {
        return Err(Error::invalid(
            "vision_config.vision_use_head",
            true,
            format!("false ({parent} feeds the projector the tower's tokens; a pooling head is not modelled)"),
        ));
    }
    if t.heads == 0
        || !t.hidden.is_multiple_of(t.heads)
        || t.patch_size == 0
        || t.patch_size > t.image_size
    {
        return Err(Error::invalid(
            "vision_config",
            format!(
                "hidden {}, heads {}, patch {}, image {}",
                t.hidden, t.heads, t.patch_size, t.image_size
            ),
            "heads dividing hidden_size and 0 < patch_size <= image_size",
        ));
    }
    Ok(t)
}

/// A native-resolution tower's pixel budget from a `preprocessor_config.json` (`text`
/// read from `path`): `size.shortest_edge` / `size.longest_edge`, or the older
/// top-level `min_pixels` / `max_pixels` (transformers 5.24
/// image_processing_qwen2_vl.py `Qwen2VLImageProcessor.__init__`). Returns what was
/// applied, for the notes; `None` when the file sets neither.
pub fn apply_preprocessor(spec: &mut ModelSpec, text: &str, path: &str) -> Result<Option<String>> {
    let Some(n) = spec.vision.as_mut().and_then(|v| v.native.as_mut()) else {
        return Ok(None);
    };
    let obj: Value = serde_json::from_str(text).map_err(|e| Error::Config {
        path: path.to_string(),
        message: format!("not valid JSON: {e}"),
    })?;
    let field = |keys: [(&str, Option<&str>); 2]| -> Result<Option<u64>> {
        for (key, inner) in keys {
            let v = match inner {
                Some(i) => obj.get(key).and_then(|s| s.get(i)),
                None => obj.get(key),
            };
            match v {
                None | Some(Value::Null) => continue,
                Some(x) => {
                    return match x.as_u64() {
                        Some(p) if (1..=1 << 32).contains(&p) => Ok(Some(p)),
                        _ => Err(Error::invalid(
                            inner.unwrap_or(key),
                            x,
                            format!("a pixel count in 1..=2^32 ({path})"),
                        )),
                    }
                }
            }
        }
        Ok(None)
    };
    let min = field([("size", Some("shortest_edge")), ("min_pixels", None)])?;
    let max = field([("size", Some("longest_edge")), ("max_pixels", None)])?;
    if min.is_none() && max.is_none() {
        return Ok(None);
    }
    let (lo, hi) = (min.unwrap_or(n.min_pixels), max.unwrap_or(n.max_pixels));
    if lo > hi {
        return Err(Error::invalid(
            "min_pixels",
            format!("{lo} > max_pixels {hi}"),
            format!("min_pixels <= max_pixels ({path})"),
        ));
    }
    (n.min_pixels, n.max_pixels) = (lo, hi);
    if let Some(v) = spec.vision.as_mut() {
        let side = v.image_size;
        **v = v.sized(side, side);
    }
    Ok(Some(format!(
        "{path}: images resized within {lo}..={hi} pixels (min_pixels / max_pixels)"
    )))
}

/// Qwen2-VL (transformers 5.24 configuration_qwen2_vl.py / modeling_qwen2_vl.py):
/// the text model a Qwen2 from the top-level keys (or `text_config`), M-RoPE (three
/// position rows recombined into one cos/sin table per token: the same tables as a
/// 1-D rope); the tower `Qwen2VisionTransformerPretrainedModel`: a Conv3d patch
/// embedding without bias over `temporal_patch_size` frames, `depth` blocks of
/// LayerNorm → fused `qkv` (bias) → 2-D rotary on fp32 copies → attention within each
/// image → `proj`, LayerNorm → fc1 → `hidden_act` (quick_gelu) → fc2, no position
/// table and no final norm; the `PatchMerger` to the text width. Images keep their
/// aspect (`smart_resize`), 448×448 unless `--image-size` says otherwise.
fn qwen2_vl(obj: &Map<String, Value>, name: &str, v25: bool) -> Result<ModelSpec> {
    let mut text = match obj.get("text_config") {
        Some(Value::Object(t)) => t.clone(),
        _ => {
            let mut t = obj.clone();
            t.remove("vision_config");
            t
        }
    };
    text.insert("model_type".into(), Value::from("qwen2"));
    for k in ["torch_dtype", "tie_word_embeddings"] {
        if let (false, Some(v)) = (text.contains_key(k), obj.get(k)) {
            text.insert(k.to_string(), v.clone());
        }
    }
    // M-RoPE's `mrope_section` splits the rotary channels between the three position
    // rows; the tables it builds are a plain rope's size
    if let Some(Value::Object(r)) = text.get("rope_scaling") {
        let kind = r
            .get("type")
            .or_else(|| r.get("rope_type"))
            .and_then(Value::as_str);
        if matches!(kind, Some("mrope") | Some("default")) {
            text.remove("rope_scaling");
        }
    }
    let mut s = parse_config(&Value::Object(text).to_string(), name)?;
    let vision = sub_config(obj, "vision_config", name)?;
    let v = Cfg {
        m: &vision,
        path: name,
        model_type: if v25 {
            "qwen2_5_vl_vision"
        } else {
            "qwen2_vl_vision"
        },
    };
    // configuration_qwen2_vl.py Qwen2VLVisionConfig / configuration_qwen2_5_vl.py
    // Qwen2_5_VLVisionConfig defaults
    let (hidden, intermediate, out) = if v25 {
        let hidden = v.uint_or(&["hidden_size"], MAX_WIDTH, 1280)?;
        (
            hidden,
            v.uint_or(&["intermediate_size"], MAX_WIDTH, 3420)?,
            v.uint_or(&["out_hidden_size"], MAX_WIDTH, 3584)?,
        )
    } else {
        let hidden = v.uint_or(&["embed_dim"], MAX_WIDTH, 1280)?;
        let ratio = v.uint_or(&["mlp_ratio"], 64, 4)?;
        (
            hidden,
            hidden * ratio,
            v.uint_or(&["hidden_size"], MAX_WIDTH, s.hidden)?,
        )
    };
    let heads = v.uint_or(&["num_heads"], MAX_WIDTH, 16)?;
    let layers = v.uint_or(&["depth"], MAX_LAYERS, 32)?;
    let patch_size = v.uint_or(&["patch_size", "spatial_patch_size"], 1 << 12, 14)?;
    let temporal = v.uint_or(&["temporal_patch_size"], 64, 2)?;
    let merge = v.uint_or(&["spatial_merge_size"], 64, 2)?;
    let channels = v.uint_or(&["in_channels", "in_chans"], 64, 3)?;
    if !hidden.is_multiple_of(heads) || patch_size == 0 || merge == 0 || temporal == 0 {
        return Err(Error::invalid(
            "vision_config",
            format!("width {hidden}, num_heads {heads}, patch {patch_size}, merge {merge}, temporal {temporal}"),
            "num_heads dividing the width and positive patch, merge and temporal sizes",
        ));
    }
    if out != s.hidden {
        return Err(Error::invalid(
            if v25 {
                "vision_config.out_hidden_size"
            } else {
                "vision_config.hidden_size"
            },
            out,
            format!(
                "the text model's hidden_size {} (the merger's output)",
                s.hidden
            ),
        ));
    }
    let act = v.act(
        "hidden_act",
        if v25 {
            Activation::Silu
        } else {
            Activation::QuickGelu
        },
    )?;
    const QWEN2_VL_VISION: BlockModules = BlockModules {
        attention: &[m("qkv", LinearRole::Qkv), m("proj", LinearRole::O)],
        ffn: &[m("fc1", LinearRole::Up), m("fc2", LinearRole::Down)],
    };
    const QWEN2_5_VL_VISION: BlockModules = BlockModules {
        attention: &[m("qkv", LinearRole::Qkv), m("proj", LinearRole::O)],
        ffn: &[
            m("gate_proj", LinearRole::Gate),
            m("up_proj", LinearRole::Up),
            m("down_proj", LinearRole::Down),
        ],
    };
    let mut tower = vit_tower(&s, name, hidden, heads, layers, intermediate, act, 0)?;
    tower.groups = vec![LayerGroup {
        count: layers,
        modules: if v25 {
            QWEN2_5_VL_VISION
        } else {
            QWEN2_VL_VISION
        },
        sliding: false,
    }];
    if v25 {
        // Qwen2_5_VLRMSNorm (weight * x.to(dtype)), Qwen2_5_VLMLP with biases
        tower.norm = NormKind::RmsNorm {
            offset_one: false,
            weight_fp32: false,
        };
        tower.mlp = MlpKind::Gated {
            fused_gate_up: false,
        };
    }
    tower.fused_qkv = true;
    tower.qkv_views = true;
    tower.positions = Positions::Rope {
        rotary_dim: hidden / heads,
    };
    tower.rope_fp32 = true;
    tower.attn_chunk_cat = true;
    tower.max_positions = 1 << 20;
    let window = if v25 {
        let size = v.uint_or(&["window_size"], 1 << 16, 112)?;
        let full_blocks = match vision.get("fullatt_block_indexes") {
            None | Some(Value::Null) => vec![7, 15, 23, 31],
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_u64().filter(|&i| i < layers))
                .collect::<Option<Vec<u64>>>()
                .ok_or_else(|| {
                    Error::invalid(
                        "fullatt_block_indexes",
                        Value::Array(a.clone()),
                        format!("block indices in 0..{layers}"),
                    )
                })?,
            Some(x) => {
                return Err(Error::invalid(
                    "fullatt_block_indexes",
                    x,
                    "a list of block indices",
                ))
            }
        };
        if size < patch_size * merge {
            return Err(Error::invalid(
                "window_size",
                size,
                format!(
                    "at least patch_size x spatial_merge_size = {}",
                    patch_size * merge
                ),
            ));
        }
        Some(WindowAttn { size, full_blocks })
    } else {
        None
    };
    let side = 448;
    let native = Native {
        min_pixels: 56 * 56,
        max_pixels: 28 * 28 * 1280,
        merge,
        grid: (0, 0),
    };
    let vs = VisionSpec {
        tower,
        image_size: side,
        patch_size,
        channels,
        class_token: false,
        patch_bias: false,
        pre_norm: false,
        post_norm_used: false,
        feature_layers: layers,
        drop_cls: false,
        projector_out: s.hidden,
        projector: Projector::Merger { merge },
        bidirectional_images: false,
        anyres: None,
        newline: false,
        adapters_reach: true,
        post_norm: false,
        temporal_patch: temporal,
        native: Some(native),
        window,
    }
    .sized(side, side);
    s.name = name.to_string();
    s.vision = Some(Box::new(vs));
    Ok(s)
}

/// LLaVA-OneVision (`llava_onevision`, transformers 5.24 modeling_llava_onevision.py
/// `LlavaOnevisionForConditionalGeneration`): a Qwen2 text model from `text_config`
/// (`Qwen2Config` defaults for what it leaves out), a SigLIP tower
/// (`vision_feature_layer` -1: the last layer's hidden state, before the
/// post-layernorm, which runs unused), the LLaVA MLP projector, the `image_newline`
/// parameter and anyres tiling over `image_grid_pinpoints` (`vision_aspect_ratio`
/// `anyres_max_N`).
fn llava_onevision(obj: &Map<String, Value>, name: &str) -> Result<ModelSpec> {
    let cfg = Cfg {
        m: obj,
        path: name,
        model_type: "llava_onevision",
    };
    // configuration_qwen2.py Qwen2Config class defaults
    let mut s = vlm_text_model(
        obj,
        name,
        "llava_onevision",
        "qwen2",
        &[
            ("vocab_size", Value::from(151_936u64)),
            ("hidden_size", Value::from(4096u64)),
            ("intermediate_size", Value::from(22_016u64)),
            ("num_hidden_layers", Value::from(32u64)),
            ("num_attention_heads", Value::from(32u64)),
            ("num_key_value_heads", Value::from(32u64)),
        ],
    )?;
    let vision = sub_config(obj, "vision_config", name)?;
    let t = siglip(&vision, name, "llava_onevision")?;
    let layers = t.layers;
    let feature_layers = feature_layers(obj, layers, -1)?;
    let drop_cls = drop_cls(&cfg, "full")?;
    let pinpoints = match obj.get("image_grid_pinpoints") {
        None | Some(Value::Null) => vec![(t.image_size, t.image_size)],
        Some(v) => pinpoints_of(v)?,
    };
    let aspect = cfg
        .str_opt("vision_aspect_ratio")?
        .unwrap_or("anyres_max_9");
    let max_patches = aspect
        .strip_prefix("anyres_max_")
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::invalid("vision_aspect_ratio", aspect, "anyres_max_N with N >= 1"))?;
    let tokens = (t.image_size / t.patch_size).pow(2);
    let tower = vit_tower(
        &s,
        name,
        t.hidden,
        t.heads,
        layers,
        t.intermediate,
        t.act,
        tokens,
    )?;
    let vs = VisionSpec {
        tower,
        image_size: t.image_size,
        patch_size: t.patch_size,
        channels: t.channels,
        class_token: false,
        patch_bias: true,
        pre_norm: false,
        post_norm_used: false,
        feature_layers,
        drop_cls,
        projector_out: s.hidden,
        projector: Projector::Mlp {
            act: cfg.act("projector_hidden_act", Activation::Gelu)?,
            bias: cfg.bool_or("multimodal_projector_bias", true)?,
        },
        bidirectional_images: false,
        anyres: Some(Anyres {
            pinpoints,
            max_patches: Some(max_patches),
            single_image_only: true,
        }),
        newline: cfg.bool_or("use_image_newline_parameter", true)?,
        adapters_reach: true,
        post_norm: true,
        temporal_patch: 1,
        native: None,
        window: None,
    };
    s.name = name.to_string();
    s.vision = Some(Box::new(vs));
    Ok(s)
}

/// Gemma-3 with its vision tower (`gemma3` with a `vision_config`, transformers 5.24
/// modeling_gemma3.py `Gemma3ForConditionalGeneration`): the text model from
/// `text_config` with `Gemma3TextConfig`'s class defaults for what the file leaves out
/// (configuration_gemma3.py), a SigLIP tower from `vision_config`
/// (`siglip_vision_model`, `SiglipVisionConfig` defaults; no pooling head) and
/// `Gemma3MultiModalProjector`: `mm_tokens_per_image` (default 256) pooled tokens per
/// image, a square number dividing the tower's patch grid.
fn gemma3_vlm(obj: &Map<String, Value>, name: &str) -> Result<ModelSpec> {
    let cfg = Cfg {
        m: obj,
        path: name,
        model_type: "gemma3",
    };
    // configuration_gemma3.py Gemma3TextConfig class defaults
    let mut s = vlm_text_model(
        obj,
        name,
        "gemma3",
        "gemma3_text",
        &[
            ("vocab_size", Value::from(262_208u64)),
            ("hidden_size", Value::from(2304u64)),
            ("intermediate_size", Value::from(9216u64)),
            ("num_hidden_layers", Value::from(26u64)),
            ("num_attention_heads", Value::from(8u64)),
            ("num_key_value_heads", Value::from(4u64)),
            ("head_dim", Value::from(256u64)),
            ("hidden_activation", Value::from("gelu_pytorch_tanh")),
            ("max_position_embeddings", Value::from(131_072u64)),
            ("rms_norm_eps", Value::from(1e-6)),
            ("query_pre_attn_scalar", Value::from(256u64)),
            ("sliding_window", Value::from(4096u64)),
            ("tie_word_embeddings", Value::from(true)),
        ],
    )?;
    let vision = sub_config(obj, "vision_config", name)?;
    let Siglip {
        hidden,
        heads,
        layers,
        intermediate,
        image_size,
        patch_size,
        channels,
        act,
    } = siglip(&vision, name, "gemma3")?;
    let side = image_size / patch_size;
    let tokens = cfg.uint_or(&["mm_tokens_per_image"], 1 << 20, 256)?;
    let per_side = (tokens as f64).sqrt().round() as u64;
    if per_side * per_side != tokens || per_side == 0 || !side.is_multiple_of(per_side) {
        return Err(Error::invalid(
            "mm_tokens_per_image",
            tokens,
            format!("a square whose side divides the tower's {side} x {side} patch grid (avg_pool2d's kernel)"),
        ));
    }
    let tower = vit_tower(
        &s,
        name,
        hidden,
        heads,
        layers,
        intermediate,
        act,
        side * side,
    )?;
    let vs = VisionSpec {
        tower,
        image_size,
        patch_size,
        channels,
        class_token: false,
        patch_bias: true,
        pre_norm: false,
        post_norm_used: true,
        feature_layers: layers,
        drop_cls: false,
        projector_out: s.hidden,
        projector: Projector::Pooled {
            tokens,
            norm: s.norm,
        },
        bidirectional_images: true,
        anyres: None,
        newline: false,
        adapters_reach: true,
        post_norm: true,
        temporal_patch: 1,
        native: None,
        window: None,
    };
    s.name = name.to_string();
    s.vision = Some(Box::new(vs));
    Ok(s)
}

/// deepseek_v2 / deepseek_v3 (transformers 5.24 configuration_deepseek_v2.py /
/// configuration_deepseek_v3.py and their modeling files): multi-head latent attention
/// ([`MlaSpec`]: `q_lora_rank` (null: a plain `q_proj`; class default 1536),
/// `kv_lora_rank`, `qk_nope_head_dim`, `qk_rope_head_dim`, `v_head_dim`), the first
/// `first_k_dense_replace` layers with a dense `intermediate_size` MLP (class default 0
/// for V2, 3 for V3; the modeling code ignores `moe_layer_freq`), then a sparse block:
/// `n_routed_experts` experts of `moe_intermediate_size`, `num_experts_per_tok`, and
/// `n_shared_experts` × `moe_intermediate_size` of ungated shared experts. The router
/// (`gate.weight`, kept in fp32) scores in fp32: V2 by softmax, `topk_method` greedy or
/// group_limited_greedy (`n_group`, `topk_group`), never renormalized (V2 ignores
/// `norm_topk_prob`); V3 by sigmoid with group-limited top-k, renormalized when
/// `norm_topk_prob` (default true). `routed_scaling_factor` multiplies the weights (a
/// new tensor, nothing kept). q_proj has no bias; q_a/kv_a/o_proj have `attention_bias`.
fn deepseek(c: &Cfg, family: Family) -> Result<ModelSpec> {
    let v3 = family == Family::DeepseekV3;
    let qk_nope = c.uint_or(&["qk_nope_head_dim"], MAX_WIDTH, 128)?;
    let qk_rope = c.uint_or(&["qk_rope_head_dim"], MAX_WIDTH, 64)?;
    let v_head = c.uint_or(&["v_head_dim"], MAX_WIDTH, 128)?;
    let kv_lora_rank = c.uint_or(&["kv_lora_rank"], MAX_WIDTH, 512)?;
    // an explicit null selects the plain q_proj; absent is the class default
    let q_lora_rank = match c.m.get("q_lora_rank") {
        Some(Value::Null) => None,
        None => Some(1536),
        Some(_) => c.uint_opt("q_lora_rank", MAX_WIDTH)?,
    };
    let mut s = std_base(c, family, true, |_, _| Ok(qk_nope + qk_rope))?;
    let refuse = |key: &str, value: String, accepted: &str| {
        Err(Error::Unsupported {
            model_type: c.model_type.to_string(),
            reason: format!("`{key}` = {value}: {accepted}"),
            supported: Family::supported_list(),
        })
    };
    if s.kv_heads != s.heads {
        // eager attention's repeat_kv would run on the expanded per-head keys
        return refuse(
            "num_key_value_heads",
            s.kv_heads.to_string(),
            "num_attention_heads (latent attention expands one latent into every head's keys and values)",
        );
    }
    s.max_positions = c.uint_or(
        &["max_position_embeddings"],
        MAX_POSITIONS,
        if v3 { 4096 } else { 2048 },
    )?;
    s.tie_embeddings = c.bool_or("tie_word_embeddings", false)?;
    s.act = c.act("hidden_act", Activation::Silu)?;
    s.dropout.attn = c.prob("attention_dropout", 0.0)?;
    s.qkv_bias = c.bool_or("attention_bias", false)?;
    s.o_bias = s.qkv_bias;
    s.mlp_bias = !v3 && c.bool_or("mlp_bias", false)?;
    s.positions = Positions::Rope {
        rotary_dim: qk_rope,
    };
    s.mla = Some(MlaSpec {
        q_lora_rank,
        kv_lora_rank,
        qk_nope,
        qk_rope,
        v_head,
        complex_rope: !v3,
        rope_interleave: v3 && c.bool_or("rope_interleave", true)?,
    });
    let experts = c.uint_or(&["n_routed_experts"], 1 << 16, if v3 { 256 } else { 64 })?;
    let top_k = match c.uint_opt("num_experts_per_tok", 1 << 16)? {
        Some(k) => k,
        None if v3 => 8,
        None => return Err(c.missing("num_experts_per_tok")),
    };
    let expert_intermediate = c.uint_or(
        &["moe_intermediate_size"],
        MAX_WIDTH,
        if v3 { 2048 } else { 1407 },
    )?;
    let n_shared = c.uint_or(&["n_shared_experts"], 1 << 10, if v3 { 1 } else { 2 })?;
    let first_dense = c.uint0_or("first_k_dense_replace", MAX_LAYERS, if v3 { 3 } else { 0 })?;
    let groups = |default: u64| -> Result<(u64, u64)> {
        let g = c.uint_or(&["n_group"], 1 << 16, default)?;
        let tg = c.uint_or(&["topk_group"], 1 << 16, if v3 { 4 } else { 1 })?;
        if !experts.is_multiple_of(g) || tg > g {
            return Err(Error::invalid(
                "n_group / topk_group",
                format!("{g} / {tg}"),
                format!("a divisor of n_routed_experts ({experts}) and topk_group <= n_group"),
            ));
        }
        if top_k > tg * (experts / g) {
            return Err(Error::invalid(
                "num_experts_per_tok",
                top_k,
                format!(
                    "at most topk_group × experts per group = {}",
                    tg * (experts / g)
                ),
            ));
        }
        Ok((g, tg))
    };
    let router = if v3 {
        let (groups, topk_groups) = groups(8)?;
        RouterKind::SigmoidGrouped {
            groups,
            topk_groups,
        }
    } else {
        match c.str_opt("topk_method")?.unwrap_or("greedy") {
            "greedy" => RouterKind::Softmax,
            "group_limited_greedy" => {
                let (groups, topk_groups) = groups(1)?;
                RouterKind::SoftmaxGroupLimited {
                    groups,
                    topk_groups,
                }
            }
            other => {
                return refuse(
                    "topk_method",
                    format!("{other:?}"),
                    "greedy or group_limited_greedy (DeepseekV2TopkRouter has no other branch)",
                )
            }
        }
    };
    refuse_moe_extras(
        c,
        &s,
        "an unquantized checkpoint (DeepSeek-V3's block-wise FP8 weights are not modelled)",
    )?;
    s.moe = Some(MoeSpec {
        experts,
        top_k,
        expert_intermediate,
        shared_expert: Some(n_shared * expert_intermediate),
        norm_topk: v3 && c.bool_or("norm_topk_prob", true)?,
        fp32_weights: true,
        router,
        router_fp32: true,
        shared_gate: false,
        biases: false,
        clamped_swiglu: false,
        local_experts: None,
    });
    let layers = s.layers();
    let dense = first_dense.min(layers);
    s.groups = [(dense, false), (layers - dense, true)]
        .into_iter()
        .filter(|&(n, _)| n > 0)
        .map(|(count, sparse)| LayerGroup {
            count,
            modules: deepseek_modules(q_lora_rank.is_some(), sparse),
            sliding: false,
        })
        .collect();
    Ok(s)
}

/// gpt_oss (transformers 5.24 configuration_gpt_oss.py / modeling_gpt_oss.py):
/// llama's block with biased q/k/v/o (`attention_bias`, default true), one learned sink
/// logit per head, rope over `head_dim` (default 64) with half-width cos/sin tables,
/// `sliding_window` (default 128) on alternating layers (`layer_types`, default
/// `(i + 1) % 2`), RMSNorm weights kept in fp32 (`_keep_in_fp32_modules`), and an MoE
/// block in every layer: `num_local_experts` (default 128) experts of
/// `intermediate_size` (default 2880) with biases, `num_experts_per_tok` (default 4),
/// `GptOssTopKRouter` (top-k of the biased logits, softmax over them), the clamped
/// SwiGLU (`swiglu_limit`). transformers 5.24 has no SDPA path for it (eager or a flash
/// kernel with sinks).
fn gpt_oss(c: &Cfg) -> Result<ModelSpec> {
    let mut s = std_base(c, Family::GptOss, true, |_, _| {
        c.uint_or(&["head_dim"], MAX_WIDTH, 64)
    })?;
    s.max_positions = c.uint_or(&["max_position_embeddings"], MAX_POSITIONS, 131_072)?;
    s.tie_embeddings = c.bool_or("tie_word_embeddings", false)?;
    s.act = c.act("hidden_act", Activation::Silu)?;
    s.dropout.attn = c.prob("attention_dropout", 0.0)?;
    s.qkv_bias = c.bool_or("attention_bias", true)?;
    s.o_bias = s.qkv_bias;
    s.norm = NormKind::RmsNorm {
        offset_one: false,
        weight_fp32: true,
    };
    s.attn_sinks = true;
    s.rope_half_table = true;
    s.sliding_window = Some(c.window()?.unwrap_or(128));
    let experts = c.uint_or(&["num_local_experts"], 1 << 16, 128)?;
    let top_k = c.uint_or(&["num_experts_per_tok"], 1 << 16, 4)?;
    refuse_moe_extras(
        c,
        &s,
        "an unquantized (bf16) checkpoint (the MXFP4 experts' layout is not modelled)",
    )?;
    s.moe = Some(MoeSpec {
        experts,
        top_k,
        expert_intermediate: s.intermediate,
        shared_expert: None,
        norm_topk: false,
        fp32_weights: false,
        router: RouterKind::TopkSoftmax,
        router_fp32: false,
        shared_gate: false,
        biases: true,
        clamped_swiglu: true,
        local_experts: None,
    });
    Ok(s)
}

/// granite (`GraniteConfig`, transformers 5.24 modeling_granite.py): llama's block and
/// keys (`attention_bias`, `mlp_bias`, `tie_word_embeddings` default false), plus
/// `embedding_multiplier` (the embedding output is multiplied), `residual_multiplier`
/// (each sublayer output is multiplied before its residual add), `attention_multiplier`
/// (the attention scale; no memory) and `logits_scaling` (the logits are divided). The
/// multiplications run whatever their values, so they are ops of the family.
fn granite(c: &Cfg) -> Result<ModelSpec> {
    let mut s = llama_like(c, Family::Granite)?;
    s.max_positions = c.uint_or(&["max_position_embeddings"], MAX_POSITIONS, 2048)?;
    s.scalars = ScalarMults {
        embedding: true,
        residual: true,
        logits: true,
    };
    Ok(s)
}

/// starcoder2 (`Starcoder2Config`, transformers 5.24 modeling_starcoder2.py):
/// `nn.LayerNorm` with bias, q/k/v/o and `c_fc`/`c_proj` with a bias when `use_bias`
/// (default true), a plain MLP running `hidden_act` (default `gelu_pytorch_tanh`), rope,
/// GQA, `attention_dropout` / `embedding_dropout` / `residual_dropout` (after o_proj and
/// c_proj), `sliding_window` (default none), output head tied by default.
fn starcoder2(c: &Cfg) -> Result<ModelSpec> {
    let mut s = std_base(c, Family::Starcoder2, true, |hidden, heads| {
        c.derived_head_dim(hidden, heads)
    })?;
    s.max_positions = c.uint_or(&["max_position_embeddings"], MAX_POSITIONS, 4096)?;
    s.tie_embeddings = c.bool_or("tie_word_embeddings", true)?;
    s.norm = NormKind::LayerNorm { bias: true };
    s.act = c.act("hidden_act", Activation::GeluTanh)?;
    s.mlp = MlpKind::Plain;
    let bias = c.bool_or("use_bias", true)?;
    (s.qkv_bias, s.o_bias, s.mlp_bias) = (bias, bias, bias);
    s.dropout = Dropout {
        embd: c.prob("embedding_dropout", 0.0)?,
        attn: c.prob("attention_dropout", 0.0)?,
        resid: c.prob("residual_dropout", 0.0)?,
    };
    s.sliding_window = c.window()?;
    Ok(s)
}

/// The llama-style keys the newer families share (transformers 5.24 config classes):
/// `head_dim` (default hidden/heads), `max_position_embeddings`, `tie_word_embeddings`,
/// `hidden_act` (default silu), `attention_bias` on q/k/v/o, `mlp_bias`,
/// `attention_dropout` — the family's own defaults given.
fn llama_keys(c: &Cfg, family: Family, max_pos: u64, tie: bool) -> Result<ModelSpec> {
    let mut s = std_base(c, family, true, |hidden, heads| {
        match c.uint_opt("head_dim", MAX_WIDTH)? {
            Some(d) => Ok(d),
            None => c.derived_head_dim(hidden, heads),
        }
    })?;
    s.max_positions = c.uint_or(&["max_position_embeddings"], MAX_POSITIONS, max_pos)?;
    s.tie_embeddings = c.bool_or("tie_word_embeddings", tie)?;
    s.act = c.act("hidden_act", Activation::Silu)?;
    s.qkv_bias = c.bool_or("attention_bias", false)?;
    s.o_bias = s.qkv_bias;
    s.mlp_bias = c.bool_or("mlp_bias", false)?;
    s.dropout.attn = c.prob("attention_dropout", 0.0)?;
    Ok(s)
}

/// olmo2 (`Olmo2Config`, transformers 5.24 modeling_olmo2.py): llama's projections and
/// MLP (`attention_bias` default false, untied head by default), `Olmo2RMSNorm`
/// (weight multiplied in fp32, then cast), no pre-norms: `post_attention_layernorm` and
/// `post_feedforward_layernorm` on the sublayer outputs, and `q_norm`/`k_norm` over the
/// whole q and k projections.
fn olmo2(c: &Cfg) -> Result<ModelSpec> {
    let mut s = llama_keys(c, Family::Olmo2, 2048, false)?;
    s.norm = NormKind::RmsNorm {
        offset_one: false,
        weight_fp32: true,
    };
    s.residual = Residual::PostNorm;
    s.qk_norm = QkNorm::FullWidth;
    Ok(s)
}

/// cohere / cohere2 (`CohereConfig`, `Cohere2Config`; transformers 5.24
/// modeling_cohere.py / modeling_cohere2.py): one `CohereLayerNorm` (no bias, fp32
/// Python ops) feeding attention and MLP in parallel, a gated MLP, q/k/v/o with
/// `attention_bias` (default false), interleaved rope on fp32 copies of q and k,
/// `logits * logit_scale`, embedding shared with the head (`tie_word_embeddings`
/// default true). Cohere: `use_qk_norm` (per-head CohereLayerNorm over head_dim,
/// default false). Cohere2: `sliding_window` (default 4096) on three layers of four;
/// the global layers run without rope.
fn cohere(c: &Cfg, family: Family) -> Result<ModelSpec> {
    let mut s = llama_keys(c, family, 8192, true)?;
    s.norm = NormKind::CohereLayerNorm;
    s.residual = Residual::Parallel { shared_norm: true };
    s.rope_fp32 = true;
    s.scalars.logits = true;
    if family == Family::Cohere && c.bool_or("use_qk_norm", false)? {
        s.qk_norm = QkNorm::PerHead;
    }
    if family == Family::Cohere2 {
        s.sliding_window = Some(c.window()?.unwrap_or(4096));
    }
    Ok(s)
}

/// olmo (`OlmoConfig`) and smollm3 (`SmolLM3Config`), transformers 5.24: llama's block
/// and keys. OLMo: `OlmoLayerNorm` (parameter-free, fp32), untied head by default,
/// `clip_qkv` (an in-place clamp: no memory). SmolLM3: tied head by default; its
/// `no_rope_layers` skip rope on every fourth layer (modelled with rope on all).
fn olmo_smollm3(c: &Cfg, family: Family) -> Result<ModelSpec> {
    let mut s = llama_keys(c, family, 2048, family == Family::Smollm3)?;
    if family == Family::Olmo {
        s.norm = NormKind::OlmoLayerNorm;
    }
    Ok(s)
}

/// gptj (`GPTJConfig`, transformers 5.24 modeling_gptj.py): `n_embd`, `n_layer`,
/// `n_head`, `n_inner` (default 4·n_embd), `rotary_dim` (default 64; `null` = full),
/// `activation_function` (default gelu_new); one `ln_1` (LayerNorm with bias) feeds
/// attention and MLP in parallel; q/k/v/out_proj without bias, fc_in/fc_out with;
/// `embd_pdrop`/`attn_pdrop`/`resid_pdrop` (default 0); the head has a bias and is
/// untied by default.
fn gptj(c: &Cfg) -> Result<ModelSpec> {
    let mut s = base(c, Family::Gptj, gpt_dims(c, Ok)?)?;
    s.max_positions = c.uint_or(&["n_positions"], MAX_POSITIONS, 2048)?;
    s.tie_embeddings = c.bool_or("tie_word_embeddings", false)?;
    s.norm = NormKind::LayerNorm { bias: true };
    s.act = c.act("activation_function", Activation::GeluNew)?;
    s.mlp = MlpKind::Plain;
    s.mlp_bias = true;
    s.lm_head_bias = true;
    s.residual = Residual::Parallel { shared_norm: true };
    let rotary = match c.m.get("rotary_dim") {
        Some(Value::Null) => s.head_dim,
        _ => c.uint_or(&["rotary_dim"], s.head_dim, 64)?,
    };
    s.positions = Positions::Rope { rotary_dim: rotary };
    s.rope_before_transpose = true;
    s.eager_qk_fp32 = true;
    s.dropout = dropouts(c, ["embd_pdrop", "attn_pdrop", "resid_pdrop"], 0.0)?;
    Ok(s)
}

/// nemotron (`NemotronConfig`, transformers 5.24 modeling_nemotron.py):
/// `NemotronLayerNorm1P` (F.layer_norm with weight + 1 and a bias), a plain MLP
/// (`up_proj`, `down_proj`) running `hidden_act` (default relu2), `attention_bias` /
/// `mlp_bias` (default false), partial rope (`partial_rotary_factor`, top level or in
/// `rope_parameters`, default 0.5), untied head by default.
fn nemotron(c: &Cfg) -> Result<ModelSpec> {
    let mut s = llama_keys(c, Family::Nemotron, 4096, false)?;
    s.act = c.act("hidden_act", Activation::Relu2)?;
    s.norm = NormKind::LayerNorm { bias: true };
    s.mlp = MlpKind::Plain;
    let nested =
        c.m.get("rope_parameters")
            .and_then(|r| r.get("partial_rotary_factor"))
            .and_then(Value::as_f64);
    let factor = match nested {
        Some(f) if f > 0.0 && f <= 1.0 => f,
        Some(f) => {
            return Err(Error::invalid(
                "rope_parameters.partial_rotary_factor",
                f,
                "a number in (0, 1]",
            ))
        }
        None => c.float_or("partial_rotary_factor", f64::MIN_POSITIVE, 1.0, 0.5)?,
    };
    s.positions = Positions::Rope {
        rotary_dim: rotary_dim(s.head_dim, factor),
    };
    Ok(s)
}

/// gemma / gemma2 (`GemmaConfig`, `Gemma2Config`): `head_dim` (default 256), RMSNorm
/// with (1 + weight), embeddings × sqrt(hidden), output head always tied (the class
/// default; `tie_word_embeddings: false` is honoured). The MLP runs `hidden_activation`
/// (default `gelu_pytorch_tanh`); Gemma-1's `hidden_act: "gelu"` is ignored, as
/// transformers does. Gemma-2 adds the sandwich norms, the attention/final logit
/// softcaps (50 / 30 by default, `null` disables) and alternating sliding-window layers
/// (`sliding_window` default 4096).
fn gemma(c: &Cfg, family: Family) -> Result<ModelSpec> {
    let mut s = std_base(c, family, true, |_, _| {
        c.uint_or(&["head_dim"], MAX_WIDTH, 256)
    })?;
    s.max_positions = c.uint_or(&["max_position_embeddings"], MAX_POSITIONS, 8192)?;
    s.tie_embeddings = c.bool_or("tie_word_embeddings", true)?;
    s.norm = NormKind::RmsNorm {
        offset_one: true,
        weight_fp32: true,
    };
    s.act = c.act("hidden_activation", Activation::GeluTanh)?;
    s.embed_scale = true;
    s.qkv_bias = c.bool_or("attention_bias", false)?;
    s.o_bias = s.qkv_bias;
    s.dropout.attn = c.prob("attention_dropout", 0.0)?;
    if family == Family::Gemma3Text {
        // Gemma3TextConfig: q_norm/k_norm Gemma3RMSNorm(head_dim), sandwich norms, the
        // softcaps default to none, sliding_window 4096 (every `sliding_window_pattern`-th
        // layer global)
        s.sandwich_norms = true;
        s.qk_norm = QkNorm::Shared { bias: false };
        s.max_positions = c.uint_or(&["max_position_embeddings"], MAX_POSITIONS, 131_072)?;
        let cap = |key: &'static str| -> Result<Option<f64>> {
            match c.m.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(_) => Ok(Some(c.float_or(key, f64::MIN_POSITIVE, 1e9, 1.0)?)),
            }
        };
        s.attn_softcap = cap("attn_logit_softcapping")?;
        s.final_softcap = cap("final_logit_softcapping")?;
        s.sliding_window = Some(c.window()?.unwrap_or(4096));
    }
    if family == Family::Gemma2 {
        s.sandwich_norms = true;
        let cap = |key: &'static str, default: f64| -> Result<Option<f64>> {
            if c.m.get(key).is_some_and(Value::is_null) {
                return Ok(None);
            }
            Ok(Some(c.float_or(key, f64::MIN_POSITIVE, 1e9, default)?))
        };
        s.attn_softcap = cap("attn_logit_softcapping", 50.0)?;
        s.final_softcap = cap("final_logit_softcapping", 30.0)?;
        s.sliding_window = Some(c.window()?.unwrap_or(4096));
    }
    Ok(s)
}

/// phi3 (`Phi3Config`): fused `qkv_proj` and `gate_up_proj`, no biases (unless
/// `attention_bias`), RMSNorm, `partial_rotary_factor` (default 1.0), dropouts
/// `embd_pdrop` / `resid_pdrop` / `attention_dropout`, `sliding_window` when set,
/// `tie_word_embeddings` default false.
fn phi3(c: &Cfg) -> Result<ModelSpec> {
    let mut s = std_base(c, Family::Phi3, true, |h, n| c.derived_head_dim(h, n))?;
    s.max_positions = c.uint_or(&["max_position_embeddings"], MAX_POSITIONS, 4096)?;
    s.tie_embeddings = c.bool_or("tie_word_embeddings", false)?;
    s.act = c.act("hidden_act", Activation::Silu)?;
    s.mlp = MlpKind::Gated {
        fused_gate_up: true,
    };
    s.fused_qkv = true;
    s.qkv_bias = c.bool_or("attention_bias", false)?;
    s.o_bias = s.qkv_bias;
    let factor = c.float_or("partial_rotary_factor", f64::MIN_POSITIVE, 1.0, 1.0)?;
    s.positions = Positions::Rope {
        rotary_dim: rotary_dim(s.head_dim, factor),
    };
    s.sliding_window = c.window()?;
    s.dropout = dropouts(c, ["embd_pdrop", "attention_dropout", "resid_pdrop"], 0.0)?;
    Ok(s)
}

/// gpt2 / gpt_bigcode (`GPT2Config`, `GPTBigCodeConfig`): `n_embd`, `n_layer`,
/// `n_head`, `n_inner` (null → 4·n_embd), `n_positions` (learned `wpe`),
/// `activation_function` (gelu_new / gelu_pytorch_tanh), LayerNorm with bias, a bias on
/// every linear, dropouts `embd_pdrop` / `attn_pdrop` / `resid_pdrop` (default 0.1),
/// tied output head (default true). GPT-BigCode `multi_query` (default true) → one KV
/// head. The `hidden_size` / `num_hidden_layers` / `num_attention_heads` aliases of the
/// classes' `attribute_map` are accepted too.
/// The sizes under GPT-2's key names (`n_embd`, `n_layer`, `n_head`, `n_inner` default
/// 4·n_embd), shared by GPT-2, GPTBigCode and GPT-J; `kv_heads` from the head count.
fn gpt_dims(c: &Cfg, kv_heads: impl FnOnce(u64) -> Result<u64>) -> Result<Dims> {
    let hidden = c.uint_req(&["n_embd", "hidden_size"], MAX_WIDTH)?;
    let layers = c.uint_req(&["n_layer", "num_hidden_layers"], MAX_LAYERS)?;
    let heads = c.uint_req(&["n_head", "num_attention_heads"], MAX_WIDTH)?;
    Ok(Dims {
        hidden,
        layers,
        heads,
        head_dim: c.derived_head_dim(hidden, heads)?,
        intermediate: c.uint_or(&["n_inner"], MAX_WIDTH, 4 * hidden)?,
        vocab: c.uint_req(&["vocab_size"], MAX_VOCAB)?,
        kv_heads: kv_heads(heads)?,
    })
}

fn gpt2(c: &Cfg, family: Family) -> Result<ModelSpec> {
    let dims = gpt_dims(c, |heads| {
        Ok(
            if family == Family::GptBigcode && c.bool_or("multi_query", true)? {
                1
            } else {
                heads
            },
        )
    })?;
    let mut s = base(c, family, dims)?;
    s.max_positions = c.uint_or(
        &["n_positions", "max_position_embeddings"],
        MAX_POSITIONS,
        1024,
    )?;
    s.tie_embeddings = c.bool_or("tie_word_embeddings", true)?;
    s.norm = NormKind::LayerNorm { bias: true };
    let default_act = if family == Family::Gpt2 {
        Activation::GeluNew
    } else {
        Activation::GeluTanh
    };
    s.act = c.act("activation_function", default_act)?;
    s.mlp = MlpKind::Plain;
    s.fused_qkv = true;
    s.qkv_bias = true;
    s.o_bias = true;
    s.mlp_bias = true;
    s.positions = Positions::Learned;
    s.dropout = dropouts(c, ["embd_pdrop", "attn_pdrop", "resid_pdrop"], 0.1)?;
    Ok(s)
}

/// Dropout probabilities read from `[embeddings, attention, residual]` keys, each
/// defaulting to `default`.
fn dropouts(c: &Cfg, keys: [&'static str; 3], default: f64) -> Result<Dropout> {
    Ok(Dropout {
        embd: c.prob(keys[0], default)?,
        attn: c.prob(keys[1], default)?,
        resid: c.prob(keys[2], default)?,
    })
}

/// Falcon's and BLOOM's dropouts: `attention_dropout` on the attention probabilities,
/// `hidden_dropout` on the residual branches, none on the embeddings.
fn attention_and_hidden_dropout(c: &Cfg) -> Result<Dropout> {
    Ok(Dropout {
        embd: 0.0,
        attn: c.prob("attention_dropout", 0.0)?,
        resid: c.prob("hidden_dropout", 0.0)?,
    })
}

/// The layout GPT-NeoX, Falcon, BLOOM and Phi share: the context length from
/// `positions_key` (default 2048), `tie_word_embeddings` (family default `tie`),
/// LayerNorm with bias, a plain MLP with the activation `act` reads (in that order).
fn layernorm_plain(
    c: &Cfg,
    s: &mut ModelSpec,
    positions_key: &'static str,
    tie: bool,
    act: impl FnOnce() -> Result<Activation>,
) -> Result<()> {
    s.max_positions = c.uint_or(&[positions_key], MAX_POSITIONS, 2048)?;
    s.tie_embeddings = c.bool_or("tie_word_embeddings", tie)?;
    s.norm = NormKind::LayerNorm { bias: true };
    s.act = act()?;
    s.mlp = MlpKind::Plain;
    Ok(())
}

/// gpt_neox (`GPTNeoXConfig`): fused `query_key_value`, biases on attention
/// (`attention_bias`, default true) and MLP (always), LayerNorm with bias,
/// `rotary_pct` (default 0.25), `use_parallel_residual` (default true: two norms, not
/// shared), `hidden_act` default gelu, `hidden_dropout` (embeddings and residual) and
/// `attention_dropout`, `tie_word_embeddings` default false.
fn gpt_neox(c: &Cfg) -> Result<ModelSpec> {
    let mut s = std_base(c, Family::GptNeox, false, |h, n| c.derived_head_dim(h, n))?;
    layernorm_plain(c, &mut s, "max_position_embeddings", false, || {
        c.act("hidden_act", Activation::Gelu)
    })?;
    s.fused_qkv = true;
    s.qkv_bias = c.bool_or("attention_bias", true)?;
    s.o_bias = s.qkv_bias;
    s.mlp_bias = true;
    let pct = c.float_or("rotary_pct", f64::MIN_POSITIVE, 1.0, 0.25)?;
    s.positions = Positions::Rope {
        rotary_dim: rotary_dim(s.head_dim, pct),
    };
    s.residual = if c.bool_or("use_parallel_residual", true)? {
        Residual::Parallel { shared_norm: false }
    } else {
        Residual::Sequential
    };
    let hidden_dropout = c.prob("hidden_dropout", 0.0)?;
    s.dropout = Dropout {
        embd: hidden_dropout,
        attn: c.prob("attention_dropout", 0.0)?,
        resid: hidden_dropout,
    };
    Ok(s)
}

/// falcon (`FalconConfig`): `new_decoder_architecture` → `num_kv_heads` KV heads (GQA)
/// and, with `parallel_attn`, two parallel norms (`num_ln_in_parallel_attn`, default 2);
/// otherwise `multi_query` (default true) → 1 KV head, else one per head, and
/// `parallel_attn` (default true) → one shared norm. `bias` (default false) on every
/// linear; LayerNorm with bias; `alibi` (default false) or rotary; `ffn_hidden_size`
/// default 4·hidden; `activation` default gelu; `tie_word_embeddings` default true.
/// `n_embed` / `n_head` / `n_layer` are accepted as in the class.
fn falcon(c: &Cfg) -> Result<ModelSpec> {
    let hidden = c.uint_req(&["hidden_size", "n_embed"], MAX_WIDTH)?;
    let layers = c.uint_req(&["num_hidden_layers", "n_layer"], MAX_LAYERS)?;
    let heads = c.uint_req(&["num_attention_heads", "n_head"], MAX_WIDTH)?;
    let head_dim = c.derived_head_dim(hidden, heads)?;
    let vocab = c.uint_req(&["vocab_size"], MAX_VOCAB)?;
    let intermediate = c.uint_or(&["ffn_hidden_size"], MAX_WIDTH, 4 * hidden)?;
    let new_arch = c.bool_or("new_decoder_architecture", false)?;
    let parallel = c.bool_or("parallel_attn", true)?;
    let kv_heads = if new_arch {
        c.uint_or(&["num_kv_heads", "n_head_kv"], MAX_WIDTH, heads)?
    } else if c.bool_or("multi_query", true)? {
        1
    } else {
        heads
    };
    let dims = Dims {
        hidden,
        layers,
        heads,
        kv_heads,
        head_dim,
        intermediate,
        vocab,
    };
    let mut s = base(c, Family::Falcon, dims)?;
    layernorm_plain(c, &mut s, "max_position_embeddings", true, || {
        c.act("activation", Activation::Gelu)
    })?;
    s.fused_qkv = true;
    let bias = c.bool_or("bias", false)?;
    s.qkv_bias = bias;
    s.o_bias = bias;
    s.mlp_bias = bias;
    if c.bool_or("alibi", false)? {
        s.positions = Positions::Alibi;
    }
    s.residual = if !parallel {
        Residual::Sequential
    } else {
        let default_ln = if new_arch { 2 } else { 1 };
        let n_ln = c.uint_or(&["num_ln_in_parallel_attn"], 2, default_ln)?;
        Residual::Parallel {
            shared_norm: n_ln != 2,
        }
    };
    s.dropout = attention_and_hidden_dropout(c)?;
    Ok(s)
}

/// stablelm (`StableLmConfig`): q/k/v bias from `use_qkv_bias` (default false), no
/// o_proj / MLP bias, gated SiLU MLP, LayerNorm with bias, `qk_layernorm` (per-head
/// LayerNorms, modelled as `qk_norm`), `use_parallel_residual` (default false; true →
/// one shared norm), `partial_rotary_factor` (default 0.25), `tie_word_embeddings`
/// default false.
fn stablelm(c: &Cfg) -> Result<ModelSpec> {
    let mut s = std_base(c, Family::Stablelm, true, |h, n| c.derived_head_dim(h, n))?;
    s.max_positions = c.uint_or(&["max_position_embeddings"], MAX_POSITIONS, 4096)?;
    s.tie_embeddings = c.bool_or("tie_word_embeddings", false)?;
    s.norm = NormKind::LayerNorm { bias: true };
    s.act = c.act("hidden_act", Activation::Silu)?;
    s.qkv_bias = c.bool_or("use_qkv_bias", false)?;
    s.qk_norm = if c.bool_or("qk_layernorm", false)? {
        QkNorm::PerHead
    } else {
        QkNorm::None
    };
    let factor = c.float_or("partial_rotary_factor", f64::MIN_POSITIVE, 1.0, 0.25)?;
    s.positions = Positions::Rope {
        rotary_dim: rotary_dim(s.head_dim, factor),
    };
    if c.bool_or("use_parallel_residual", false)? {
        s.residual = Residual::Parallel { shared_norm: true };
    }
    s.dropout = attention_and_hidden_dropout(c)?;
    Ok(s)
}

/// bloom (`BloomConfig`): `hidden_size` (or `n_embed`), `n_layer`, `n_head`, MLP 4·hidden,
/// biases everywhere, LayerNorm with bias, `word_embeddings_layernorm`, ALiBi, BLOOM's
/// tanh GELU (`BloomGelu`: one autograd Function that saves only its input),
/// `tie_word_embeddings` default true. ALiBi has no position limit: `max_positions` is
/// `seq_length` when given, else the 2048 of the BLOOM training runs.
fn bloom(c: &Cfg) -> Result<ModelSpec> {
    let hidden = c.uint_req(&["hidden_size", "n_embed"], MAX_WIDTH)?;
    let layers = c.uint_req(&["n_layer", "num_hidden_layers"], MAX_LAYERS)?;
    let heads = c.uint_req(&["n_head", "num_attention_heads"], MAX_WIDTH)?;
    let dims = Dims {
        hidden,
        layers,
        heads,
        kv_heads: heads,
        head_dim: c.derived_head_dim(hidden, heads)?,
        intermediate: 4 * hidden,
        vocab: c.uint_req(&["vocab_size"], MAX_VOCAB)?,
    };
    let mut s = base(c, Family::Bloom, dims)?;
    // BloomMLP always uses BloomGelu (modeling_bloom.py), whatever `hidden_act` says
    layernorm_plain(c, &mut s, "seq_length", true, || Ok(Activation::BloomGelu))?;
    s.fused_qkv = true;
    s.qkv_bias = true;
    s.o_bias = true;
    s.mlp_bias = true;
    s.embed_norm = true;
    s.positions = Positions::Alibi;
    s.dropout = attention_and_hidden_dropout(c)?;
    Ok(s)
}

/// phi (`PhiConfig`, Phi-1/1.5/2): separate q/k/v and `dense` with biases, fc1/fc2 with
/// biases, one LayerNorm (with bias) shared by the parallel attention and MLP, output
/// head with a bias, `partial_rotary_factor` (default 0.5), optional `qk_layernorm`,
/// `hidden_act` default gelu_new, dropouts `embd_pdrop` / `attention_dropout` /
/// `resid_pdrop`, `tie_word_embeddings` default false.
fn phi(c: &Cfg) -> Result<ModelSpec> {
    let mut s = std_base(c, Family::Phi, true, |h, n| c.derived_head_dim(h, n))?;
    layernorm_plain(c, &mut s, "max_position_embeddings", false, || {
        c.act("hidden_act", Activation::GeluNew)
    })?;
    s.qkv_bias = true;
    s.o_bias = true;
    s.mlp_bias = true;
    s.lm_head_bias = true;
    s.qk_norm = if c.bool_or("qk_layernorm", false)? {
        QkNorm::Shared { bias: true }
    } else {
        QkNorm::None
    };
    let factor = c.float_or("partial_rotary_factor", f64::MIN_POSITIVE, 1.0, 0.5)?;
    s.positions = Positions::Rope {
        rotary_dim: rotary_dim(s.head_dim, factor),
    };
    s.residual = Residual::Parallel { shared_norm: true };
    s.dropout = Dropout {
        embd: c.prob("embd_pdrop", 0.0)?,
        attn: c.prob("attention_dropout", 0.0)?,
        resid: c.prob("resid_pdrop", 0.0)?,
    };
    Ok(s)
}

/// qwen (Qwen-1 remote code, `QWenConfig` / `QWenLMHeadModel`): `kv_channels` is the
/// head dim (default 128), `c_attn` always has a bias, `c_proj` / w1 / w2 have one only
/// when `no_bias` is false (default true = no bias), RMSNorm, `rotary_pct` (default 1.0).
/// `intermediate_size` is twice the MLP width (w1, w2: hidden → intermediate_size / 2);
/// the spec stores the MLP width. Dropouts `emb_dropout_prob` / `attn_dropout_prob`.
/// `tie_word_embeddings` default false. `max_position_embeddings`, else `seq_length`.
fn qwen(c: &Cfg) -> Result<ModelSpec> {
    let hidden = c.uint_req(&["hidden_size"], MAX_WIDTH)?;
    let layers = c.uint_req(&["num_hidden_layers"], MAX_LAYERS)?;
    let heads = c.uint_req(&["num_attention_heads"], MAX_WIDTH)?;
    let head_dim = c.uint_or(&["kv_channels"], MAX_WIDTH, 128)?;
    let ff = c.uint_req(&["intermediate_size"], 2 * MAX_WIDTH)?;
    if ff % 2 != 0 {
        return Err(Error::invalid(
            "intermediate_size",
            ff,
            "an even integer (Qwen-1's intermediate_size is twice the MLP width)",
        ));
    }
    let vocab = c.uint_req(&["vocab_size"], MAX_VOCAB)?;
    let dims = Dims {
        hidden,
        layers,
        heads,
        kv_heads: heads,
        head_dim,
        intermediate: ff / 2,
        vocab,
    };
    let mut s = base(c, Family::Qwen, dims)?;
    s.max_positions = c.uint_or(
        &["max_position_embeddings", "seq_length"],
        MAX_POSITIONS,
        8192,
    )?;
    s.tie_embeddings = c.bool_or("tie_word_embeddings", false)?;
    s.fused_qkv = true;
    s.qkv_bias = true;
    let bias = !c.bool_or("no_bias", true)?;
    s.o_bias = bias;
    s.mlp_bias = bias;
    let pct = c.float_or("rotary_pct", f64::MIN_POSITIVE, 1.0, 1.0)?;
    s.positions = Positions::Rope {
        rotary_dim: rotary_dim(s.head_dim, pct),
    };
    s.dropout = Dropout {
        embd: c.prob("emb_dropout_prob", 0.0)?,
        attn: c.prob("attn_dropout_prob", 0.0)?,
        resid: 0.0,
    };
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_names_line_and_column() {
        let e = parse_config("{\n \"model_type\": \"llama\",\n", "x.json").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("x.json") && msg.contains("line"), "{msg}");
    }

    #[test]
    fn missing_field_names_field_and_type() {
        let e = parse_config(r#"{"model_type":"llama","hidden_size":64}"#, "m").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("num_hidden_layers") && msg.contains("llama"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_type_is_invalid_value() {
        let j = r#"{"model_type":"llama","hidden_size":"64","num_hidden_layers":2,
            "num_attention_heads":4,"intermediate_size":128,"vocab_size":100}"#;
        match parse_config(j, "m").unwrap_err() {
            Error::InvalidValue { what, .. } => assert_eq!(what, "hidden_size"),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn moe_and_vlm_are_unsupported() {
        for j in [
            r#"{"model_type":"llama4_text"}"#,
            r#"{"model_type":"llama","num_local_experts":8}"#,
            r#"{"model_type":"llama","kv_lora_rank":512}"#,
            r#"{"model_type":"qwen","visual":{}}"#,
            r#"{"model_type":"mllama"}"#,
        ] {
            match parse_config(j, "m").unwrap_err() {
                Error::Unsupported { reason, .. } => assert_eq!(reason, LATER_VERSION),
                e => panic!("{e}"),
            }
        }
        assert!(matches!(
            parse_config(r#"{"model_type":"t5"}"#, "m").unwrap_err(),
            Error::Unsupported { .. }
        ));
    }

    /// DeepSeek-V2/V3: latent attention's widths, the dense first layers as their own
    /// group, the router by version, and the limits refused by name.
    #[test]
    fn deepseek_configs_parse_into_groups_and_their_limits_are_named() {
        let base = r#""hidden_size":64,"num_hidden_layers":3,"num_attention_heads":4,
            "intermediate_size":96,"vocab_size":100,"moe_intermediate_size":16,
            "kv_lora_rank":32,"qk_nope_head_dim":16,"qk_rope_head_dim":8,"v_head_dim":12"#;
        let v2 = format!(
            r#"{{"model_type":"deepseek_v2",{base},"q_lora_rank":null,"n_routed_experts":8,
            "num_experts_per_tok":2,"n_shared_experts":2,"first_k_dense_replace":1}}"#
        );
        let s = parse_config(&v2, "m").unwrap();
        let mla = s.mla.unwrap();
        assert_eq!(
            (s.head_dim, mla.q_lora_rank, mla.latent_width()),
            (24, None, 40)
        );
        assert_eq!(s.groups.len(), 2);
        assert_eq!(
            (s.groups[0].count, s.groups[1].count, s.moe_layers()),
            (1, 2, 2)
        );
        let m = s.moe.unwrap();
        assert_eq!(
            (m.shared_expert, m.router, m.norm_topk),
            (Some(32), RouterKind::Softmax, false)
        );
        // o_proj reads heads x v_head_dim; q_proj has no bias
        let lins = s.block_linears(&s.groups[1].modules);
        let o = lins.iter().find(|l| l.role == LinearRole::O).unwrap();
        assert_eq!(o.in_features, 48);
        // class defaults: V3 routes by grouped sigmoid, three dense layers, q_lora 1536
        let v3 = format!(r#"{{"model_type":"deepseek_v3",{base},"n_routed_experts":16}}"#);
        let s = parse_config(&v3, "m").unwrap();
        assert_eq!(s.groups.len(), 1, "3 layers, all dense by default");
        assert_eq!(s.mla.unwrap().q_lora_rank, Some(1536));
        assert_eq!(
            s.moe.unwrap().router,
            RouterKind::SigmoidGrouped {
                groups: 8,
                topk_groups: 4
            }
        );
        for (extra, key) in [
            (r#","num_key_value_heads":2"#, "num_key_value_heads"),
            (r#","topk_method":"noaux_tc""#, "topk_method"),
            (r#","output_router_logits":true"#, "output_router_logits"),
        ] {
            let j = format!("{}{extra}}}", &v2[..v2.len() - 1]);
            match parse_config(&j, "m").unwrap_err() {
                Error::Unsupported { reason, .. } => assert!(reason.contains(key), "{reason}"),
                e => panic!("{key}: {e}"),
            }
        }
        let bad_groups =
            format!(r#"{{"model_type":"deepseek_v3",{base},"n_routed_experts":16,"n_group":3}}"#);
        match parse_config(&bad_groups, "m").unwrap_err() {
            Error::InvalidValue { what, .. } => assert_eq!(what, "n_group / topk_group"),
            e => panic!("{e}"),
        }
    }

    /// The modelled MoE families: their expert keys, and what is refused by name.
    #[test]
    fn moe_configs_parse_and_their_limits_are_named() {
        let base = r#""hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,
            "num_key_value_heads":2,"intermediate_size":96,"vocab_size":100"#;
        let mixtral = format!(
            r#"{{"model_type":"mixtral",{base},"num_local_experts":4,"num_experts_per_tok":2}}"#
        );
        let s = parse_config(&mixtral, "m").unwrap();
        let m = s.moe.unwrap();
        assert_eq!((m.experts, m.top_k, m.expert_intermediate), (4, 2, 96));
        assert!(m.norm_topk && m.fp32_weights && m.shared_expert.is_none());
        let qwen2 = format!(
            r#"{{"model_type":"qwen2_moe",{base},"num_experts":8,"num_experts_per_tok":2,
            "moe_intermediate_size":32,"shared_expert_intermediate_size":48}}"#
        );
        let m = parse_config(&qwen2, "m").unwrap().moe.unwrap();
        assert_eq!((m.expert_intermediate, m.shared_expert), (32, Some(48)));
        assert!(!m.norm_topk && !m.fp32_weights);
        // a missing expert key, top-k above the experts, dense layers, the aux loss
        let e = parse_config(
            &format!(r#"{{"model_type":"qwen3_moe",{base},"num_experts_per_tok":2,"moe_intermediate_size":32}}"#),
            "m",
        )
        .unwrap_err();
        assert!(e.to_string().contains("num_experts"), "{e}");
        let e = parse_config(
            &format!(
                r#"{{"model_type":"mixtral",{base},"num_local_experts":2,"num_experts_per_tok":3}}"#
            ),
            "m",
        )
        .unwrap_err();
        assert!(e.to_string().contains("num_experts_per_tok"), "{e}");
        for (extra, key) in [
            (r#","decoder_sparse_step":2"#, "decoder_sparse_step"),
            (r#","mlp_only_layers":[0]"#, "mlp_only_layers"),
            (r#","output_router_logits":true"#, "output_router_logits"),
        ] {
            let j = format!(
                r#"{{"model_type":"qwen3_moe",{base},"num_experts":8,"num_experts_per_tok":2,"moe_intermediate_size":32{extra}}}"#
            );
            match parse_config(&j, "m").unwrap_err() {
                Error::Unsupported { reason, .. } => assert!(reason.contains(key), "{reason}"),
                e => panic!("{e}"),
            }
        }
    }

    #[test]
    fn gptq_group_minus_one_is_none() {
        let j = r#"{"model_type":"llama","hidden_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"intermediate_size":128,"vocab_size":100,
            "quantization_config":{"quant_method":"gptq","bits":4,"group_size":-1}}"#;
        let s = parse_config(j, "m").unwrap();
        let q = s.quantization.unwrap();
        assert_eq!((q.method.as_str(), q.bits, q.group_size), ("gptq", 4, None));
    }
}
