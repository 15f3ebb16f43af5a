//! Built-in presets: published HF `config.json` files embedded in the binary.
//!
//! A preset name is the lower-case HF repo name without the organisation and without a
//! trailing `-hf` (`meta-llama/Llama-2-7b-hf` → `llama-2-7b`). The JSON files live in
//! `src/presets/`; `src/presets/README.md` says where each one comes from. Every preset
//! goes through the same parser as a user's config.json ([`crate::hf::config::parse_config`]).

use crate::arch::params;
use crate::arch::{Family, ModelSpec};
use crate::error::Result;
use crate::hf::config::parse_config;

/// (name, config.json), sorted by name.
const PRESETS: &[(&str, &str)] = &[
    ("bloomz-7b1", include_str!("presets/bloomz-7b1.json")),
    ("codellama-34b", include_str!("presets/codellama-34b.json")),
    (
        "deepseek-v2-lite",
        include_str!("presets/deepseek-v2-lite.json"),
    ),
    ("deepseek-v3", include_str!("presets/deepseek-v3.json")),
    ("falcon-40b", include_str!("presets/falcon-40b.json")),
    ("falcon-7b", include_str!("presets/falcon-7b.json")),
    ("gemma-2-27b", include_str!("presets/gemma-2-27b.json")),
    ("gemma-2-2b", include_str!("presets/gemma-2-2b.json")),
    ("gemma-2-9b", include_str!("presets/gemma-2-9b.json")),
    ("gemma-2b", include_str!("presets/gemma-2b.json")),
    ("gemma-3-4b-it", include_str!("presets/gemma-3-4b-it.json")),
    ("gemma-7b", include_str!("presets/gemma-7b.json")),
    ("gemma-7b-it", include_str!("presets/gemma-7b-it.json")),
    ("gpt-oss-20b", include_str!("presets/gpt-oss-20b.json")),
    ("gpt2", include_str!("presets/gpt2.json")),
    ("gpt2-large", include_str!("presets/gpt2-large.json")),
    ("gpt2-medium", include_str!("presets/gpt2-medium.json")),
    ("gpt2-xl", include_str!("presets/gpt2-xl.json")),
    (
        "gpt_bigcode-santacoder",
        include_str!("presets/gpt_bigcode-santacoder.json"),
    ),
    ("llama-2-13b", include_str!("presets/llama-2-13b.json")),
    ("llama-2-70b", include_str!("presets/llama-2-70b.json")),
    (
        "llama-2-70b-gptq",
        include_str!("presets/llama-2-70b-gptq.json"),
    ),
    ("llama-2-7b", include_str!("presets/llama-2-7b.json")),
    (
        "llama-3.1-405b",
        include_str!("presets/llama-3.1-405b.json"),
    ),
    ("llama-3.1-70b", include_str!("presets/llama-3.1-70b.json")),
    ("llama-3.1-8b", include_str!("presets/llama-3.1-8b.json")),
    (
        "llama-3.1-8b-instruct",
        include_str!("presets/llama-3.1-8b-instruct.json"),
    ),
    ("llama-3.2-1b", include_str!("presets/llama-3.2-1b.json")),
    ("llama-3.2-3b", include_str!("presets/llama-3.2-3b.json")),
    (
        "llama-3.3-70b-instruct",
        include_str!("presets/llama-3.3-70b-instruct.json"),
    ),
    ("llava-1.5-7b", include_str!("presets/llava-1.5-7b.json")),
    (
        "llava-onevision-qwen2-0.5b-ov",
        include_str!("presets/llava-onevision-qwen2-0.5b-ov.json"),
    ),
    (
        "meta-llama-3-8b",
        include_str!("presets/meta-llama-3-8b.json"),
    ),
    (
        "meta-llama-3-8b-instruct",
        include_str!("presets/meta-llama-3-8b-instruct.json"),
    ),
    (
        "mistral-7b-v0.1",
        include_str!("presets/mistral-7b-v0.1.json"),
    ),
    (
        "mistral-7b-v0.1-gptq",
        include_str!("presets/mistral-7b-v0.1-gptq.json"),
    ),
    (
        "mistral-7b-v0.2",
        include_str!("presets/mistral-7b-v0.2.json"),
    ),
    (
        "mistral-7b-v0.3",
        include_str!("presets/mistral-7b-v0.3.json"),
    ),
    (
        "mixtral-8x22b-v0.1",
        include_str!("presets/mixtral-8x22b-v0.1.json"),
    ),
    (
        "mixtral-8x7b-instruct-v0.1",
        include_str!("presets/mixtral-8x7b-instruct-v0.1.json"),
    ),
    (
        "mixtral-8x7b-v0.1",
        include_str!("presets/mixtral-8x7b-v0.1.json"),
    ),
    ("octocoder", include_str!("presets/octocoder.json")),
    ("phi-1_5", include_str!("presets/phi-1_5.json")),
    ("phi-2", include_str!("presets/phi-2.json")),
    (
        "phi-3-medium-4k-instruct",
        include_str!("presets/phi-3-medium-4k-instruct.json"),
    ),
    (
        "phi-3-mini-4k-instruct",
        include_str!("presets/phi-3-mini-4k-instruct.json"),
    ),
    ("pythia-1.4b", include_str!("presets/pythia-1.4b.json")),
    ("pythia-12b", include_str!("presets/pythia-12b.json")),
    ("pythia-160m", include_str!("presets/pythia-160m.json")),
    ("pythia-1b", include_str!("presets/pythia-1b.json")),
    ("pythia-2.8b", include_str!("presets/pythia-2.8b.json")),
    ("pythia-410m", include_str!("presets/pythia-410m.json")),
    ("pythia-6.9b", include_str!("presets/pythia-6.9b.json")),
    ("pythia-70m", include_str!("presets/pythia-70m.json")),
    ("qwen-14b", include_str!("presets/qwen-14b.json")),
    ("qwen-14b-chat", include_str!("presets/qwen-14b-chat.json")),
    (
        "qwen-14b-chat-int4",
        include_str!("presets/qwen-14b-chat-int4.json"),
    ),
    ("qwen-1_8b", include_str!("presets/qwen-1_8b.json")),
    (
        "qwen-1_8b-chat",
        include_str!("presets/qwen-1_8b-chat.json"),
    ),
    (
        "qwen-1_8b-chat-int4",
        include_str!("presets/qwen-1_8b-chat-int4.json"),
    ),
    ("qwen-72b-chat", include_str!("presets/qwen-72b-chat.json")),
    (
        "qwen-72b-chat-int4",
        include_str!("presets/qwen-72b-chat-int4.json"),
    ),
    ("qwen-7b", include_str!("presets/qwen-7b.json")),
    ("qwen-7b-chat", include_str!("presets/qwen-7b-chat.json")),
    (
        "qwen-7b-chat-int4",
        include_str!("presets/qwen-7b-chat-int4.json"),
    ),
    (
        "qwen1.5-moe-a2.7b",
        include_str!("presets/qwen1.5-moe-a2.7b.json"),
    ),
    ("qwen2-7b", include_str!("presets/qwen2-7b.json")),
    (
        "qwen2-vl-2b-instruct",
        include_str!("presets/qwen2-vl-2b-instruct.json"),
    ),
    ("qwen2.5-0.5b", include_str!("presets/qwen2.5-0.5b.json")),
    (
        "qwen2.5-0.5b-instruct",
        include_str!("presets/qwen2.5-0.5b-instruct.json"),
    ),
    ("qwen2.5-1.5b", include_str!("presets/qwen2.5-1.5b.json")),
    (
        "qwen2.5-1.5b-instruct",
        include_str!("presets/qwen2.5-1.5b-instruct.json"),
    ),
    ("qwen2.5-14b", include_str!("presets/qwen2.5-14b.json")),
    (
        "qwen2.5-14b-instruct",
        include_str!("presets/qwen2.5-14b-instruct.json"),
    ),
    ("qwen2.5-32b", include_str!("presets/qwen2.5-32b.json")),
    (
        "qwen2.5-32b-instruct",
        include_str!("presets/qwen2.5-32b-instruct.json"),
    ),
    ("qwen2.5-3b", include_str!("presets/qwen2.5-3b.json")),
    ("qwen2.5-vl-3b", include_str!("presets/qwen2.5-vl-3b.json")),
    (
        "qwen2.5-3b-instruct",
        include_str!("presets/qwen2.5-3b-instruct.json"),
    ),
    ("qwen2.5-72b", include_str!("presets/qwen2.5-72b.json")),
    ("qwen2.5-7b", include_str!("presets/qwen2.5-7b.json")),
    (
        "qwen2.5-7b-instruct",
        include_str!("presets/qwen2.5-7b-instruct.json"),
    ),
    ("qwen3-0.6b", include_str!("presets/qwen3-0.6b.json")),
    ("qwen3-1.7b", include_str!("presets/qwen3-1.7b.json")),
    ("qwen3-14b", include_str!("presets/qwen3-14b.json")),
    ("qwen3-30b-a3b", include_str!("presets/qwen3-30b-a3b.json")),
    ("qwen3-32b", include_str!("presets/qwen3-32b.json")),
    ("qwen3-4b", include_str!("presets/qwen3-4b.json")),
    ("qwen3-8b", include_str!("presets/qwen3-8b.json")),
    (
        "stablelm-base-alpha-3b",
        include_str!("presets/stablelm-base-alpha-3b.json"),
    ),
    (
        "tinyllama-1.1b-intermediate-step-1431k-3t",
        include_str!("presets/tinyllama-1.1b-intermediate-step-1431k-3t.json"),
    ),
];

/// All preset names, sorted.
pub fn names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = PRESETS.iter().map(|(n, _)| *n).collect();
    v.sort_unstable();
    v
}

/// The embedded config.json of a preset (name matched case-insensitively).
pub fn raw(name: &str) -> Option<&'static str> {
    let key = name.trim().to_ascii_lowercase();
    PRESETS.iter().find(|(n, _)| *n == key).map(|(_, j)| *j)
}

/// The spec of a preset (name matched case-insensitively); `None` when there is no
/// such preset. `spec.name` is the canonical (lower-case) preset name.
pub fn get(name: &str) -> Option<Result<ModelSpec>> {
    let key = name.trim().to_ascii_lowercase();
    PRESETS
        .iter()
        .find(|(n, _)| *n == key)
        .map(|(n, j)| parse_config(j, n))
}

/// One line of `llm-mem models`.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetInfo {
    pub name: &'static str,
    pub family: Family,
    /// Exact parameter count ([`params::count`]), tied weights once.
    pub params_total: u64,
    /// Parameters a token runs through ([`params::active`]: the total for a dense
    /// model; top-k routed experts per layer for an MoE, embedding and head counted).
    pub params_active: u64,
    /// `dense`, or its parts among `vlm`, `moe`, `mla`, `hybrid` joined by `+`
    /// ([`kind_of`]).
    pub kind: &'static str,
    /// The HF repo the config was published in (`_name_or_path`).
    pub hf_id: String,
    /// `quantization_config` method and bits, e.g. `gptq 4-bit`.
    pub quantization: Option<String>,
}

/// What the architecture is, as its parts joined by `+` in this order: `vlm` (a vision
/// tower in front), `moe` (routed experts), `mla` (latent attention), `hybrid`
/// (sliding-window and full-attention layers mixed); `dense` when none applies.
/// DeepSeek-V3 is `moe+mla`, gpt-oss `moe+hybrid`, Gemma-3-4B-IT `vlm+hybrid`.
pub fn kind_of(spec: &ModelSpec) -> &'static str {
    let sliding = spec.sliding_layer_count();
    let parts = (
        spec.vision.is_some(),
        spec.moe.is_some(),
        spec.mla.is_some(),
        sliding > 0 && sliding < spec.layers(),
    );
    match parts {
        (false, false, false, false) => "dense",
        (true, false, false, false) => "vlm",
        (true, false, false, true) => "vlm+hybrid",
        (true, true, _, _) => "vlm+moe",
        (true, false, true, _) => "vlm+mla",
        (false, true, true, _) => "moe+mla",
        (false, true, false, true) => "moe+hybrid",
        (false, true, false, false) => "moe",
        (false, false, true, _) => "mla",
        (false, false, false, true) => "hybrid",
    }
}

/// Name, family, exact parameter count and HF id of a preset.
pub fn describe(name: &str) -> Option<Result<PresetInfo>> {
    let key = name.trim().to_ascii_lowercase();
    let (n, json) = PRESETS.iter().find(|(n, _)| *n == key)?;
    Some(parse_config(json, n).map(|spec| {
        let hf_id = serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v.get("_name_or_path")?.as_str().map(str::to_string))
            .unwrap_or_default();
        PresetInfo {
            name: n,
            family: spec.family,
            params_total: params::count(&spec).total,
            params_active: params::active(&spec),
            kind: kind_of(&spec),
            hf_id,
            quantization: spec
                .quantization
                .as_ref()
                .map(|q| format!("{} {}-bit", q.method, q.bits)),
        }
    }))
}

/// [`describe`] for every preset, sorted by name.
pub fn describe_all() -> Vec<Result<PresetInfo>> {
    names().into_iter().filter_map(describe).collect()
}

/// The preset published from the HF repo `id` (`_name_or_path`, matched
/// case-insensitively), the first by name when several are.
pub fn by_hf_id(id: &str) -> Option<&'static str> {
    let id = id.trim();
    names().into_iter().find(|n| {
        raw(n)
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .and_then(|v| {
                v.get("_name_or_path")?
                    .as_str()
                    .map(|h| h.eq_ignore_ascii_case(id))
            })
            .unwrap_or(false)
    })
}

/// Models of the reference set that this version does not model, so that asking for
/// one by name says why instead of "not found": (name, model_type, kind).
const KNOWN_UNSUPPORTED: &[(&str, &str, &str)] = &[
    (
        "mixtral-8x7b-instruct-v0.1-gptq",
        "mixtral",
        "GPTQ-quantized mixture-of-experts model",
    ),
    ("llama-3.2-11b-vision", "mllama", "vision-language model"),
    ("minicpm-llama3-v-2_5", "minicpmv", "vision-language model"),
    ("qwen-vl", "qwen", "vision-language model"),
    ("qwen-vl-chat", "qwen", "vision-language model"),
    ("qwen-vl-chat-int4", "qwen", "vision-language model"),
];

/// `(model_type, kind)` when `name` is a known model this version rejects.
pub fn known_unsupported(name: &str) -> Option<(&'static str, &'static str)> {
    let n = name.trim().to_ascii_lowercase();
    KNOWN_UNSUPPORTED
        .iter()
        .find(|(k, _, _)| *k == n)
        .map(|&(_, t, kind)| (t, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses() {
        for n in names() {
            let spec = get(n).unwrap().unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(spec.name, n);
        }
    }

    #[test]
    fn case_insensitive() {
        assert!(get("Llama-2-7B").is_some());
        assert!(get("no-such-model").is_none());
    }
}
