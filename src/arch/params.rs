//! Exact parameter counts: what transformers instantiates for a [`ModelSpec`]
//! (`sum(p.numel() for p in model.parameters())`, tied weights counted once), its
//! breakdown, and the trainable parameters of LoRA adapters as peft creates them.
//!
//! Pure: no I/O. Sizes are bounded by `config.rs` (widths ≤ 2^20, layers ≤ 2^14), so
//! the arithmetic cannot overflow for a parsed spec; checkpoint sums saturate.

use std::collections::{BTreeMap, BTreeSet};

use crate::arch::{
    Adapter, LinearSpec, LoraTargets, ModelSpec, NormKind, Positions, QkNorm, TensorInfo,
};

/// Parameter counts of a model, split like `oracle/params.json` `breakdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParamCounts {
    /// All parameters, tied weights counted once.
    pub total: u64,
    /// Token embedding table (`vocab × hidden`).
    pub embedding: u64,
    /// Output head (weight, plus bias on Phi-1/2); 0 when tied to the embedding.
    pub lm_head: u64,
    /// All decoder layers (`layers × per_layer`).
    pub decoder_layers: u64,
    /// One decoder layer: its linears (weights + biases), norms and q/k norms.
    pub per_layer: u64,
    /// Everything else: final norm, learned position table (GPT-2 `wpe`), BLOOM's
    /// embedding LayerNorm.
    pub other: u64,
    /// A VLM's vision tower and projector ([`vision_params`]).
    pub vision: u64,
    /// Parameters of the largest single module (the embedding or output head, the
    /// position table, or the largest linear with its bias) — DeepSpeed's
    /// "largest layer", `largest_module_params` in params.json.
    pub largest_module: u64,
}

/// Parameters of one norm of width `width` for the spec's norm kind.
fn norm_params(spec: &ModelSpec, width: u64) -> u64 {
    match spec.norm {
        NormKind::RmsNorm { .. }
        | NormKind::LayerNorm { bias: false }
        | NormKind::CohereLayerNorm => width,
        NormKind::LayerNorm { bias: true } => 2 * width,
        NormKind::OlmoLayerNorm => 0,
    }
}

/// Parameters of the q/k norms of one layer ([`QkNorm`]):
/// Qwen3 q_norm/k_norm are RMSNorm(head_dim) shared by all heads (2·head_dim);
/// StableLM `qk_layernorm` is one bias-free LayerNorm(head_dim) per head
/// ((heads + kv_heads)·head_dim); Phi `qk_layernorm` is LayerNorm(head_dim) with bias
/// for q and for k (4·head_dim).
fn qk_norm_params(spec: &ModelSpec) -> u64 {
    match spec.qk_norm {
        QkNorm::None => 0,
        QkNorm::Shared { bias: false } => 2 * spec.head_dim,
        QkNorm::Shared { bias: true } => 4 * spec.head_dim,
        QkNorm::PerHead | QkNorm::FullWidth => (spec.heads + spec.kv_heads) * spec.head_dim,
    }
}

/// Parameters of one decoder layer of the first group: Σ linears (in·out + out when
/// biased) + the layer's norms (`norms_per_layer()` × hidden, ×2 for LayerNorm with
/// bias) + q/k norms.
pub fn per_layer(spec: &ModelSpec) -> u64 {
    per_layer_of(spec, &spec.layer_linears())
}

/// [`per_layer`] of a layer with the linears `lins`.
pub fn per_layer_of(spec: &ModelSpec, lins: &[LinearSpec]) -> u64 {
    let linears: u64 = lins.iter().map(|l| l.params()).sum();
    linears + per_layer_fixed(spec)
}

/// What one decoder layer holds besides its linears: its norms and q/k norms.
fn per_layer_fixed(spec: &ModelSpec) -> u64 {
    spec.norms_per_layer() * norm_params(spec, spec.hidden)
        + qk_norm_params(spec)
        + mla_norm_params(spec)
        // gpt-oss: `self_attn.sinks`, one per head
        + if spec.attn_sinks { spec.heads } else { 0 }
}

/// Latent attention's own norms (modeling_deepseek_v2.py `DeepseekV2Attention`):
/// `q_a_layernorm` over q_lora_rank (with the query bottleneck) and `kv_a_layernorm`
/// over kv_lora_rank.
fn mla_norm_params(spec: &ModelSpec) -> u64 {
    spec.mla.map_or(0, |m| {
        norm_params(spec, m.kv_lora_rank) + m.q_lora_rank.map_or(0, |r| norm_params(spec, r))
    })
}

/// Exact parameter counts from the architecture, or from the checkpoint's tensor list
/// when `spec.checkpoint` holds an unquantized one (see [`count_checkpoint`]; a stored
/// copy of a tied output head is not counted twice). Quantized checkpoints (GPTQ/AWQ
/// packed `qweight`, bitsandbytes) fall back to the architecture formula.
///
/// Architecture formula: embedding `vocab·hidden`; output head `vocab·hidden (+vocab
/// bias)` unless tied; `layers ×` [`per_layer`]; other = final norm + learned positions
/// (`max_positions·hidden`) + BLOOM's embedding norm. Matches the transformers module
/// tree for every supported family (checked against params.json and published totals).
pub fn count(spec: &ModelSpec) -> ParamCounts {
    if let Some(tensors) = &spec.checkpoint {
        if spec.quantization.is_none() && !is_quantized_checkpoint(tensors) {
            if let Some(mut c) = count_checkpoint(tensors) {
                // Some tied checkpoints also store `lm_head.weight`; transformers
                // instantiates one shared parameter.
                if spec.tie_embeddings && c.lm_head > 0 {
                    c.total -= c.lm_head;
                    c.lm_head = 0;
                }
                return c;
            }
        }
    }
    count_architecture(spec)
}

/// [`count`] ignoring any checkpoint: the formula only.
pub fn count_architecture(spec: &ModelSpec) -> ParamCounts {
    let h = spec.hidden;
    let embedding = spec.vocab * h;
    let head_module = embedding + if spec.lm_head_bias { spec.vocab } else { 0 };
    let lm_head = if spec.tie_embeddings { 0 } else { head_module };
    let per_layer = per_layer(spec);
    let decoder_layers = spec
        .sum_over_layers(|l| l.params())
        .saturating_add(spec.layers().saturating_mul(per_layer_fixed(spec)));
    let positions = match spec.positions {
        Positions::Learned => spec.max_positions * h,
        _ => 0,
    };
    let final_norm = norm_params(spec, h);
    let embed_norm = if spec.embed_norm {
        norm_params(spec, h)
    } else {
        0
    };
    let other = final_norm + positions + embed_norm;
    let largest_linear = spec.each_linear().map(|l| l.params()).max().unwrap_or(0);
    // A tied head shares the embedding's weight; only its own bias would differ.
    let largest_module = embedding
        .max(head_module)
        .max(positions)
        .max(largest_linear);
    let vision = vision_params(spec);
    ParamCounts {
        total: embedding + lm_head + decoder_layers + other + vision,
        embedding,
        lm_head,
        decoder_layers,
        per_layer,
        other,
        vision,
        largest_module,
    }
}

/// A VLM's vision parameters (transformers 5.24 modeling_clip.py `CLIPVisionTransformer`
/// / modeling_siglip.py `SiglipVisionTransformer`, and the projector): the patch
/// convolution (channels × patch² × hidden, SigLIP's with a bias), CLIP's class
/// embedding, the position table (tower tokens × hidden), `pre_layrnorm` (CLIP) and
/// `post_layernorm` (LayerNorm with bias), the encoder layers; LLaVA's linear_1 (tower
/// hidden → text hidden) and linear_2 (text → text), with biases when
/// `multimodal_projector_bias`; Gemma-3's RMSNorm weight and the tower × text
/// projection matrix.
pub fn vision_params(spec: &ModelSpec) -> u64 {
    let Some(v) = &spec.vision else {
        return 0;
    };
    let t = &v.tower;
    let h = t.hidden;
    // the position table of a tower with learned positions (Qwen2-VL's rotates)
    let positions = if t.positions == crate::arch::Positions::Learned {
        v.tower_tokens() * h
    } else {
        0
    };
    let embeddings = v.channels * v.temporal_patch.max(1) * v.patch_size * v.patch_size * h
        + if v.patch_bias { h } else { 0 }
        + if v.class_token { h } else { 0 }
        + positions;
    let norms = (u64::from(v.post_norm) + u64::from(v.pre_norm)) * norm_params(t, h);
    let layers = t.sum_over_layers(|l| l.params()) + t.layers() * per_layer_fixed(t);
    // LLaVA-OneVision's `image_newline` (text hidden)
    let newline = if v.newline { v.projector_out } else { 0 };
    embeddings + norms + layers + projector_params(v) + newline
}

/// A VLM tower's encoder layers: (all of them, the largest one) in parameters — the
/// units FSDP's transformer auto-wrap gives each block (`_no_split_modules`).
pub fn vision_blocks(v: &crate::arch::VisionSpec) -> (u64, u64) {
    let t = &v.tower;
    let fixed = per_layer_fixed(t);
    let all = t.sum_over_layers(|l| l.params()) + t.layers() * fixed;
    let largest = t
        .groups
        .iter()
        .map(|g| per_layer_of(t, &t.block_linears(&g.modules)) + fixed)
        .max()
        .unwrap_or(0);
    (all, largest)
}

/// The projector's parameters.
pub fn projector_params(v: &crate::arch::VisionSpec) -> u64 {
    match v.projector {
        crate::arch::Projector::Mlp { .. } => projector_linears(v).iter().map(|l| l.params()).sum(),
        crate::arch::Projector::Pooled { .. } => v.tower.hidden + v.tower.hidden * v.projector_out,
        // ln_q (the tower's norm: LayerNorm with bias in Qwen2-VL, RMSNorm in 2.5) and
        // the MLP
        crate::arch::Projector::Merger { .. } => {
            norm_params(&v.tower, v.tower.hidden)
                + projector_linears(v).iter().map(|l| l.params()).sum::<u64>()
        }
    }
}

/// The vision side's linears `targets` adapt, as (count, linear): peft's all-linear
/// (every nn.Linear but the head) and explicit names reach the tower's and the
/// projector's linears; `attn` means the language model's attention projections; none
/// when the targets are kept to the language model ([`VisionSpec::adapters_reach`]).
pub fn vision_adapted(
    v: &crate::arch::VisionSpec,
    targets: &LoraTargets,
) -> Vec<(u64, LinearSpec)> {
    if !v.adapters_reach || matches!(targets, LoraTargets::Attn) {
        return Vec::new();
    }
    v.tower
        .each_linear()
        .map(|l| (v.tower.layers(), l))
        .chain(projector_linears(v).into_iter().map(|l| (1, l)))
        .filter(|(_, l)| targets.matches(l))
        .collect()
}

/// Whether `targets` reach any linear of the vision side (see [`vision_adapted`]).
pub fn vision_targeted(v: &crate::arch::VisionSpec, targets: &LoraTargets) -> bool {
    !vision_adapted(v, targets).is_empty()
}

/// Vision parameters trained in full: the tower and the projector (`tower`), the
/// projector alone (`projector`), or none.
pub fn vision_trainable(spec: &ModelSpec, tower: bool, projector: bool) -> u64 {
    match &spec.vision {
        Some(_) if tower => vision_params(spec),
        // the projector and, with it, LLaVA-OneVision's image_newline
        Some(v) if projector => projector_params(v) + if v.newline { v.projector_out } else { 0 },
        _ => 0,
    }
}

/// The projector's nn.Linear modules, what peft's all-linear adapts: LLaVA's
/// `linear_1` and `linear_2`; none for Gemma-3 (its projection is a plain parameter).
pub fn projector_linears(v: &crate::arch::VisionSpec) -> Vec<LinearSpec> {
    let (bias, merged) = match v.projector {
        crate::arch::Projector::Mlp { bias, .. } => (bias, None),
        // Qwen2-VL's merger.mlp.0 / mlp.2 over merge² patches per row
        crate::arch::Projector::Merger { merge } => (true, Some(v.tower.hidden * merge * merge)),
        crate::arch::Projector::Pooled { .. } => return Vec::new(),
    };
    let lin = |name, role, i, o| LinearSpec {
        name,
        in_features: i,
        out_features: o,
        bias,
        role,
        copies: 1,
        via_conversion: false,
        shadowed: false,
    };
    if let Some(m) = merged {
        return vec![
            lin("0", crate::arch::LinearRole::Up, m, m),
            lin("2", crate::arch::LinearRole::Down, m, v.projector_out),
        ];
    }
    vec![
        lin(
            "linear_1",
            crate::arch::LinearRole::Up,
            v.tower.hidden,
            v.projector_out,
        ),
        lin(
            "linear_2",
            crate::arch::LinearRole::Down,
            v.projector_out,
            v.projector_out,
        ),
    ]
}

/// Names of non-parameter buffers that some checkpoints store: rotary `inv_freq`,
/// GPT-2's causal-mask `attn.bias` / `attn.masked_bias`.
fn is_buffer(t: &TensorInfo) -> bool {
    t.name.ends_with("inv_freq")
        || t.name.ends_with("masked_bias")
        || (t.name.ends_with("attn.bias") && t.shape.len() == 4)
}

/// A checkpoint whose tensors are packed quantized weights (GPTQ/AWQ `qweight`,
/// bitsandbytes `absmax` / `quant_state`, ...): its numels are not parameter counts.
pub fn is_quantized_checkpoint(tensors: &[TensorInfo]) -> bool {
    tensors.iter().any(|t| {
        let last = t.name.rsplit('.').next().unwrap_or("");
        matches!(
            last,
            "qweight"
                | "qzeros"
                | "scales"
                | "g_idx"
                | "absmax"
                | "quant_map"
                | "SCB"
                | "weight_scale"
        ) || t.name.contains("quant_state")
    })
}

/// The decoder-layer index of a tensor name (`model.layers.3.…`, `transformer.h.3.…`,
/// `gpt_neox.layers.3.…`), if any.
fn layer_index(name: &str) -> Option<u64> {
    let parts: Vec<&str> = name.split('.').collect();
    parts.windows(2).find_map(|w| match w[0] {
        "layers" | "h" | "blocks" | "layer" => w[1].parse().ok(),
        _ => None,
    })
}

fn is_embedding(name: &str) -> bool {
    [
        "embed_tokens.weight",
        "wte.weight",
        "word_embeddings.weight",
        "embed_in.weight",
        "tok_embeddings.weight",
    ]
    .iter()
    .any(|s| name.ends_with(s))
}

/// Whether a tensor name is the output head's (`lm_head.*`, GPT-NeoX `embed_out.*`,
/// `output.weight`).
pub fn is_lm_head(name: &str) -> bool {
    name.starts_with("lm_head.") || name.starts_with("embed_out.") || name == "output.weight"
}

/// Exact counts summed from a checkpoint's tensor list (safetensors headers), skipping
/// stored buffers (`inv_freq`, GPT-2 causal masks). Embedding / output head / layer
/// tensors are recognised by their HF names; `per_layer` is the decoder total divided
/// by the number of distinct layer indices. `largest_module` sums the tensors of each
/// module (name without its last component). `None` when no tensor is recognised as a
/// decoder layer (the names are not a HF causal-LM layout).
pub fn count_checkpoint(tensors: &[TensorInfo]) -> Option<ParamCounts> {
    let mut c = ParamCounts::default();
    let mut layers = BTreeSet::new();
    let mut modules: BTreeMap<&str, u64> = BTreeMap::new();
    for t in tensors.iter().filter(|t| !is_buffer(t)) {
        let n = t.numel();
        c.total = c.total.saturating_add(n);
        if is_embedding(&t.name) {
            c.embedding = c.embedding.saturating_add(n);
        } else if is_lm_head(&t.name) {
            c.lm_head = c.lm_head.saturating_add(n);
        } else if let Some(i) = layer_index(&t.name) {
            layers.insert(i);
            c.decoder_layers = c.decoder_layers.saturating_add(n);
        } else {
            c.other = c.other.saturating_add(n);
        }
        let module = t.name.rsplit_once('.').map_or(t.name.as_str(), |(m, _)| m);
        let e = modules.entry(module).or_default();
        *e = e.saturating_add(n);
    }
    if layers.is_empty() {
        return None;
    }
    c.per_layer = c.decoder_layers / layers.len() as u64;
    c.largest_module = modules.values().copied().max().unwrap_or(0);
    Some(c)
}

/// Adapter size, as `peft.get_peft_model` creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoraCount {
    /// Trainable adapter parameters: for LoRA Σ over adapted linears of r·in + out·r
    /// (`lora_A` is r×in, `lora_B` is out×r; `bias="none"`); other tuners per
    /// [`Adapter::per_linear`].
    pub trainable: u64,
    /// Adapter elements held in memory (≥ `trainable`: LoRA-FA's frozen `lora_A`,
    /// AdaLoRA's `ranknum`, VeRA's shared projections).
    pub stored: u64,
    /// Number of adapted linear modules over all layers.
    pub adapted_modules: u64,
}

/// LoRA of rank `rank` on the decoder-layer linears matched by `targets` (never the
/// output head, as peft's `all-linear`), over all layers. Unknown names in an explicit
/// target list simply match nothing here; use `LoraTargets::check_against` first.
pub fn lora(spec: &ModelSpec, rank: u64, targets: &LoraTargets) -> LoraCount {
    adapters(spec, rank, targets, Adapter::Lora)
}

/// The peft tuner `adapter` of rank `rank` on the linears matched by `targets` (the
/// head when `lm_head` is named).
pub fn adapters(spec: &ModelSpec, rank: u64, targets: &LoraTargets, adapter: Adapter) -> LoraCount {
    if adapter.has_virtual_tokens() {
        // `PromptEmbedding`: nn.Embedding(num_virtual_tokens, hidden); `PrefixEncoder`:
        // nn.Embedding(num_virtual_tokens, layers × 2 × kv_dim) (the rank slot)
        let width = if adapter == Adapter::PrefixTuning {
            spec.layers() * 2 * spec.kv_dim()
        } else {
            spec.hidden
        };
        let n = rank.saturating_mul(width);
        return LoraCount {
            trainable: n,
            stored: n,
            adapted_modules: 1,
        };
    }
    if adapter == Adapter::LnTuning {
        // the trained copies of the targeted norms, stored beside the frozen originals
        let Some(ln) = crate::arch::adapter::LnNorms::of(spec) else {
            return LoraCount::default();
        };
        let (per_layer, fin) = ln.params(spec);
        let n = spec.layers() * per_layer + fin;
        let modules = spec.layers() * ln.per_layer_norms(spec) + u64::from(ln.final_norm);
        return LoraCount {
            trainable: n,
            stored: n,
            adapted_modules: modules,
        };
    }
    let adapted = |l: &LinearSpec| targets.matches(l);
    let head = targets.head().then(|| spec.head_linear());
    let per = |l: &LinearSpec, pick: fn((u64, u64)) -> u64| {
        if adapted(l) {
            pick(adapter.per_linear(l, rank))
        } else {
            0
        }
    };
    let head_part = |pick: fn((u64, u64)) -> u64| {
        head.as_ref()
            .map_or(0, |h| pick(adapter.per_linear(h, rank)))
    };
    let shared = adapter.shared_stored(spec.each_linear().filter(adapted).chain(head), rank);
    let mut c = LoraCount {
        trainable: spec.sum_over_layers(|l| per(l, |c| c.0)) + head_part(|c| c.0),
        stored: spec.sum_over_layers(|l| per(l, |c| c.1)) + head_part(|c| c.1) + shared,
        adapted_modules: spec.sum_over_layers(|l| u64::from(adapted(l)))
            + u64::from(head.is_some()),
    };
    if let Some(v) = &spec.vision {
        for (n, l) in vision_adapted(v, targets) {
            let (t, s) = adapter.per_linear(&l, rank);
            c.trainable += n * t;
            c.stored += n * s;
            c.adapted_modules += n;
        }
    }
    c
}

/// Frozen adapter buffers over the adapted linears (and the head when targeted):
/// (elements in the base weights' dtype, fp32 elements), per
/// [`Adapter::frozen_buffers`].
pub fn adapter_buffers(
    spec: &ModelSpec,
    rank: u64,
    targets: &LoraTargets,
    adapter: Adapter,
    osf_reconstruct: bool,
) -> (u64, u64) {
    let one = |l: &LinearSpec| adapter.frozen_buffers(l, rank, osf_reconstruct);
    let head = targets.head().then(|| spec.head_linear());
    let (mut base, mut fp32) = head.as_ref().map_or((0, 0), one);
    base += spec.sum_over_layers(|l| if targets.matches(l) { one(l).0 } else { 0 });
    fp32 += spec.sum_over_layers(|l| if targets.matches(l) { one(l).1 } else { 0 });
    (base, fp32)
}

/// Parameters a token runs through: every parameter but the routed experts it is not
/// sent to (top-k of them per MoE layer); the embedding and the head are counted, as
/// the totals are (Mixtral's "12.9B active" counts them; Qwen's "A2.7B" / "A3B" model
/// cards count the non-embedding part, see [`active_non_embedding`]). Dense models:
/// the total.
pub fn active(spec: &ModelSpec) -> u64 {
    count(spec).total.saturating_sub(idle_experts(spec))
}

/// Parameters of the routed experts a token is not sent to: experts − top-k per MoE
/// layer (0 for a dense model).
pub fn idle_experts(spec: &ModelSpec) -> u64 {
    spec.moe.map_or(0, |m| {
        spec.moe_layers() * (m.experts - m.top_k) * m.expert_params(spec.hidden)
    })
}

/// [`active`] without the embedding and the output head.
pub fn active_non_embedding(spec: &ModelSpec) -> u64 {
    let c = count(spec);
    active(spec).saturating_sub(c.embedding + c.lm_head)
}

/// Number of elements of all decoder-layer linear weights (Σ in·out × layers; biases,
/// norms, embeddings and the output head excluded) — what QLoRA / bitsandbytes and
/// GPTQ quantize when a model is loaded in 4 or 8 bits (transformers keeps `lm_head`
/// in the compute dtype).
pub fn linear_weight_params(spec: &ModelSpec) -> u64 {
    spec.sum_over_layers(|l| l.copies * l.in_features * l.out_features)
}

/// [`linear_weight_params`] of the `nn.Linear` modules only: what bitsandbytes
/// quantizes (transformers 5.24 integrations/bitsandbytes.py `replace_with_bnb_linear`:
/// `type(module) is nn.Linear` or Conv1D) — an MoE block's router and fused expert
/// parameters stay in the load dtype.
pub fn bnb_linear_weight_params(spec: &ModelSpec) -> u64 {
    spec.sum_over_layers(|l| {
        if l.role.is_moe_parameter() {
            0
        } else {
            l.copies * l.in_features * l.out_features
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::config::parse_config;

    #[test]
    fn gpt2_small_breakdown() {
        let j = r#"{"model_type":"gpt2","n_embd":768,"n_layer":12,"n_head":12,
            "vocab_size":50257,"n_positions":1024}"#;
        let c = count(&parse_config(j, "gpt2").unwrap());
        assert_eq!(c.total, 124_439_808);
        assert_eq!(c.per_layer, 7_087_872);
        assert_eq!(c.other, 787_968);
        assert_eq!(c.lm_head, 0);
    }

    #[test]
    fn checkpoint_skips_buffers() {
        use crate::units::dtype::DType;
        let t = |name: &str, shape: &[u64]| TensorInfo {
            name: name.into(),
            dtype: DType::F32,
            shape: shape.to_vec(),
        };
        let ts = vec![
            t("wte.weight", &[10, 4]),
            t("h.0.attn.bias", &[1, 1, 8, 8]),
            t("h.0.attn.c_attn.weight", &[4, 12]),
            t("h.0.attn.c_attn.bias", &[12]),
            t("h.1.attn.c_attn.weight", &[4, 12]),
            t("h.1.attn.c_attn.bias", &[12]),
            t("ln_f.weight", &[4]),
        ];
        let c = count_checkpoint(&ts).unwrap();
        assert_eq!(c.total, 40 + 120 + 4);
        assert_eq!(c.per_layer, 60);
        assert_eq!(c.largest_module, 60);
    }
}
