//! `ModelSpec`: the architecture of a dense decoder-only LM, as the estimator needs it.
//!
//! A spec is built from a HF `config.json` (see `config.rs`), a built-in preset (the
//! same JSON, embedded) or a safetensors header (which adds the exact tensor list).
//! Everything downstream — parameter counts, the activation ledger, the timeline — reads
//! only this struct. Invariants (checked by `ModelSpec::validate`): every size is > 0,
//! `heads % kv_heads == 0`, `head_dim * heads` need not equal `hidden` (Gemma, Qwen3).

pub mod adapter;
pub mod params;

pub use adapter::Adapter;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::units::dtype::DType;

/// Upper bound accepted for widths (hidden, intermediate, heads, head_dim): far above
/// any published model, low enough that parameter arithmetic cannot overflow `u64`.
pub const MAX_WIDTH: u64 = 1 << 20;
/// Upper bound for `vocab_size`.
pub const MAX_VOCAB: u64 = 1 << 24;
/// Upper bound for the number of decoder layers.
pub const MAX_LAYERS: u64 = 1 << 14;
/// Upper bound for `max_position_embeddings` / `n_positions`.
pub const MAX_POSITIONS: u64 = 1 << 32;

/// The HF `model_type`s this version models exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma,
    Gemma2,
    Phi3,
    Gpt2,
    GptNeox,
    Falcon,
    Stablelm,
    Bloom,
    GptBigcode,
    Phi,
    /// Qwen-1 (remote code, `QWenLMHeadModel`).
    Qwen,
    /// IBM Granite 3.x (`GraniteForCausalLM`): llama with scalar multipliers.
    Granite,
    /// StarCoder2 (`Starcoder2ForCausalLM`): LayerNorm, biases, plain GELU MLP, rope, GQA.
    Starcoder2,
    /// OLMo-2 (`Olmo2ForCausalLM`): norms after each sublayer, full-width q/k norms.
    Olmo2,
    /// Gemma 3 text (`Gemma3ForCausalLM`): Gemma-2's block with q/k norms, no softcaps,
    /// five sliding-window layers to one global.
    Gemma3Text,
    /// Cohere Command-R (`CohereForCausalLM`): parallel attention + MLP on one
    /// fp32 LayerNorm, interleaved rope in fp32, scaled logits.
    Cohere,
    /// Cohere Command-R7B (`Cohere2ForCausalLM`): Cohere's block, sliding-window layers.
    Cohere2,
    /// OLMo 1 (`OlmoForCausalLM`): llama with parameter-free fp32 LayerNorms.
    Olmo,
    /// SmolLM3 (`SmolLM3ForCausalLM`): llama with rope skipped on every fourth layer.
    Smollm3,
    /// GPT-J (`GPTJForCausalLM`): parallel attention + MLP on one LayerNorm, partial
    /// interleaved rope before the head transpose, fp32 q·kᵀ in eager, biased head.
    Gptj,
    /// NVIDIA Nemotron (`NemotronForCausalLM`): LayerNorm with (1 + weight) and bias,
    /// relu² MLP, partial rope.
    Nemotron,
    /// Mixtral (`MixtralForCausalLM`): Mistral's attention, a sparse MoE block of fused
    /// experts with top-k routing renormalized in fp32.
    Mixtral,
    /// Qwen2-MoE / Qwen1.5-MoE (`Qwen2MoeForCausalLM`): Qwen2's attention, routed
    /// experts plus a shared expert behind a sigmoid gate.
    Qwen2Moe,
    /// Qwen3-MoE (`Qwen3MoeForCausalLM`): Qwen3's attention (q/k norms), routed experts.
    Qwen3Moe,
    /// DeepSeek-V2 (`DeepseekV2ForCausalLM`): multi-head latent attention with a
    /// complex-number rope, dense first layers, then softmax-routed experts plus
    /// ungated shared experts.
    DeepseekV2,
    /// DeepSeek-V3 (`DeepseekV3ForCausalLM`): V2's latent attention with a cos/sin rope,
    /// sigmoid routing with group-limited top-k and a score-correction bias.
    DeepseekV3,
    /// gpt-oss (`GptOssForCausalLM`): biased attention with learned sinks, alternating
    /// sliding/full layers, top-k-then-softmax routing onto biased experts with a
    /// clamped SwiGLU.
    GptOss,
}

impl Family {
    pub const ALL: [Family; 31] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma,
        Family::Gemma2,
        Family::Phi3,
        Family::Gpt2,
        Family::GptNeox,
        Family::Falcon,
        Family::Stablelm,
        Family::Bloom,
        Family::GptBigcode,
        Family::Phi,
        Family::Qwen,
        Family::Granite,
        Family::Starcoder2,
        Family::Olmo2,
        Family::Gemma3Text,
        Family::Cohere,
        Family::Cohere2,
        Family::Olmo,
        Family::Smollm3,
        Family::Gptj,
        Family::Nemotron,
        Family::Mixtral,
        Family::Qwen2Moe,
        Family::Qwen3Moe,
        Family::DeepseekV2,
        Family::DeepseekV3,
        Family::GptOss,
    ];

    /// peft 0.21 converts LoRA targets onto this family's router and fused experts
    /// (transformers' `_MODEL_TO_CONVERSION_PATTERN` names it, or peft adds it:
    /// mixtral; qwen3_moe and deepseek_v2/v3 through qwen2_moe's pattern — but not
    /// qwen2_moe itself, which the mapping lists only as a pattern).
    pub fn moe_converted_by_peft(self) -> bool {
        matches!(
            self,
            Family::Mixtral | Family::Qwen3Moe | Family::DeepseekV2 | Family::DeepseekV3
        )
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma => "gemma",
            Family::Gemma2 => "gemma2",
            Family::Phi3 => "phi3",
            Family::Gpt2 => "gpt2",
            Family::GptNeox => "gpt_neox",
            Family::Falcon => "falcon",
            Family::Stablelm => "stablelm",
            Family::Bloom => "bloom",
            Family::GptBigcode => "gpt_bigcode",
            Family::Phi => "phi",
            Family::Qwen => "qwen",
            Family::Granite => "granite",
            Family::Starcoder2 => "starcoder2",
            Family::Olmo2 => "olmo2",
            Family::Gemma3Text => "gemma3_text",
            Family::Cohere => "cohere",
            Family::Cohere2 => "cohere2",
            Family::Olmo => "olmo",
            Family::Smollm3 => "smollm3",
            Family::Gptj => "gptj",
            Family::Nemotron => "nemotron",
            Family::Mixtral => "mixtral",
            Family::Qwen2Moe => "qwen2_moe",
            Family::Qwen3Moe => "qwen3_moe",
            Family::DeepseekV2 => "deepseek_v2",
            Family::DeepseekV3 => "deepseek_v3",
            Family::GptOss => "gpt_oss",
        }
    }

    pub fn from_model_type(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.model_type() == s)
    }

    pub fn supported_list() -> String {
        Family::ALL.map(|f| f.model_type()).join(", ")
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad` honours width and alignment (`{:<12}` in tables)
        f.pad(self.model_type())
    }
}

/// Which scalar multiplications a family's forward runs as their own ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ScalarMults {
    /// `inputs_embeds * embedding_multiplier` after the embedding module.
    pub embedding: bool,
    /// `residual + sublayer_out * residual_multiplier` (both sublayers).
    pub residual: bool,
    /// `logits / logits_scaling` (or `* logit_scale`) on the head output.
    pub logits: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// HF `*RMSNorm`: upcast to fp32, x * rsqrt(mean(x²) + eps), cast back, × weight.
    /// `offset_one`: Gemma multiplies by (1 + weight). `weight_fp32`: the weight
    /// multiply runs in fp32 before the cast back (Gemma's `(1 + w.float())`, OLMo-2's
    /// `(self.weight * x).to(dtype)`); llama casts first and multiplies in the input
    /// dtype.
    RmsNorm { offset_one: bool, weight_fp32: bool },
    /// `nn.LayerNorm` (weight, and bias when `bias`).
    LayerNorm { bias: bool },
    /// Cohere's `CohereLayerNorm` (weight, no bias) written as Python ops in fp32:
    /// x.float(), mean, (x - mean) twice, pow, mean, rsqrt, ×, weight.float() ×, cast
    /// back (modeling_cohere.py / modeling_cohere2.py).
    CohereLayerNorm,
    /// OLMo's `OlmoLayerNorm`: `F.layer_norm(x.float(), no weight, no bias).to(dtype)`
    /// (modeling_olmo.py): no parameters.
    OlmoLayerNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    /// `gelu_new` / `gelu_fast`: the tanh approximation written as Python ops (GPT-2).
    GeluNew,
    /// exact `gelu` (one fused op).
    Gelu,
    /// `gelu_pytorch_tanh` (one fused op).
    GeluTanh,
    Relu,
    /// `relu2` (`ReLUSquaredActivation`, transformers activations.py): relu, then square.
    Relu2,
    /// `quick_gelu` (transformers activations.py `QuickGELUActivation`, CLIP):
    /// `x * sigmoid(1.702 * x)`.
    QuickGelu,
    /// BLOOM's `BloomGelu` (transformers `modeling_bloom.py` `GeLUFunction`): the tanh
    /// approximation inside one `torch.autograd.Function`, which saves only its input.
    BloomGelu,
}

impl Activation {
    pub fn from_hf(s: &str) -> Option<Activation> {
        Some(match s {
            "silu" | "swish" => Activation::Silu,
            "gelu_new" | "gelu_fast" | "gelu_python_tanh" => Activation::GeluNew,
            "gelu" | "gelu_python" => Activation::Gelu,
            "gelu_pytorch_tanh" | "gelu_tanh" => Activation::GeluTanh,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "relu2" => Activation::Relu2,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    /// down(act(gate(x)) * up(x)); `fused_gate_up`: Phi-3's single gate_up_proj.
    Gated { fused_gate_up: bool },
    /// proj(act(fc(x))).
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// Rotary embedding over the first `rotary_dim` channels of each head.
    Rope {
        rotary_dim: u64,
    },
    /// Learned absolute position embedding table (GPT-2 `wpe`).
    Learned,
    Alibi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Residual {
    /// x + attn(norm1(x)); then + mlp(norm2(.)).
    Sequential,
    /// x + attn(norm_a(x)) + mlp(norm_m(x)); `shared_norm`: one norm feeds both (Falcon-7B).
    Parallel { shared_norm: bool },
    /// x + norm1(attn(x)); then + norm2(mlp(.)): norms after the sublayers only
    /// (modeling_olmo2.py Olmo2DecoderLayer).
    PostNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Dropout {
    pub embd: f64,
    pub attn: f64,
    pub resid: f64,
}

/// Quantization of a checkpoint as declared by `quantization_config` (GPTQ, bnb...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    pub method: String,
    pub bits: u32,
    /// Group size of the scales; `None` = one group per output row.
    pub group_size: Option<u64>,
}

/// One tensor of a checkpoint (safetensors header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> u64 {
        self.numel() * self.dtype.size()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Preset name, path or hub id it came from.
    pub name: String,
    pub family: Family,
    pub hidden: u64,
    /// The decoder stack, bottom to top, as runs of layers with one block each.
    pub groups: Vec<LayerGroup>,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub intermediate: u64,
    pub vocab: u64,
    pub max_positions: u64,
    pub tie_embeddings: bool,
    pub norm: NormKind,
    pub act: Activation,
    pub mlp: MlpKind,
    /// One linear produces q, k and v (GPT-2 c_attn, GPT-NeoX/Falcon query_key_value,
    /// Phi-3 qkv_proj).
    pub fused_qkv: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Phi-1/2 give the output head a bias.
    pub lm_head_bias: bool,
    /// BLOOM normalises the embeddings (`word_embeddings_layernorm`).
    pub embed_norm: bool,
    /// q/k norms over head_dim (Qwen3, StableLM, Phi).
    pub qk_norm: QkNorm,
    /// Eager attention takes its softmax in fp32 and casts back (llama-style HF code);
    /// false where the family's HF code softmaxes in the compute dtype (GPT-2, Falcon).
    /// Autocast runs softmax in fp32 regardless.
    pub eager_softmax_fp32: bool,
    /// q, k and v of a fused qkv projection are views of its output, which they keep
    /// alive (GPT-2's `split`, Phi-3's slices, GPT-NeoX's `chunk`); false where the
    /// family's HF code copies them out (Falcon's list indexing and `reshape`, BLOOM's
    /// `reshape` of transposed slices), so the fused output dies.
    pub qkv_views: bool,
    /// Eager attention broadcasts fewer k/v heads in its matmuls (Falcon's
    /// `query @ key.transpose`) instead of `repeat_kv` copies.
    pub eager_kv_broadcast: bool,
    /// The model always materializes its 4-D attention mask, also for SDPA (Falcon's
    /// `create_causal_mask(allow_is_causal_skip=False)`), so SDPA gets an explicit mask.
    pub mask_always_materialized: bool,
    /// The rotary embedding ends in a `torch.cat` even at full rotary width
    /// (modeling_phi3.py `apply_rotary_pos_emb`), so q comes out contiguous in
    /// [b, heads, s, d] order, as with any partial rotary.
    pub rope_cat: bool,
    /// Scalar multipliers the family's HF code applies as separate ops (each a new
    /// tensor that saves nothing): Granite's `embedding_multiplier`,
    /// `residual_multiplier` and `logits / logits_scaling`.
    pub scalars: ScalarMults,
    /// The rotary embedding runs on fp32 copies of q and k and casts back (Cohere's
    /// `apply_rotary_pos_emb`).
    pub rope_fp32: bool,
    /// GPT-J: rope runs on q/k in [b, s, h, d] order before the head transpose, with
    /// cos/sin `repeat_interleave`d anew on every call (each saved by its mul), and the
    /// partial-rotary `cat` keeps that order.
    pub rope_before_transpose: bool,
    /// GPT-J's eager attention computes q·kᵀ on fp32 copies of q and k.
    pub eager_qk_fp32: bool,
    /// The decoder's linears run `input @ self.weight.T` (Falcon's `FalconLinear`):
    /// autocast casts the transposed view, not the leaf weight, so nothing is cached.
    pub linear_as_matmul: bool,
    pub positions: Positions,
    pub residual: Residual,
    /// Gemma-2 sandwich norms (post-attention and pre/post-feedforward norms).
    pub sandwich_norms: bool,
    /// Gemma: embeddings multiplied by sqrt(hidden).
    pub embed_scale: bool,
    /// Attention run per image and concatenated (Qwen2-VL's tower under eager/SDPA:
    /// `torch.cat` of the chunks' outputs, a copy the output projection saves).
    pub attn_chunk_cat: bool,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    pub sliding_window: Option<u64>,
    pub dropout: Dropout,
    /// dtype of the published checkpoint (`torch_dtype`), if known.
    pub torch_dtype: Option<DType>,
    pub quantization: Option<Quantization>,
    /// Exact tensor list from safetensors headers, when available.
    pub checkpoint: Option<Vec<TensorInfo>>,
    /// The config's own `model_type` when it is not a modelled family and the model is
    /// estimated as a generic llama-style decoder (see `hf::config::parse_config`).
    pub generic_of: Option<String>,
    /// A sparse mixture-of-experts feed-forward block in every decoder layer.
    pub moe: Option<MoeSpec>,
    /// Multi-head latent attention (DeepSeek-V2/V3) in place of q/k/v projections.
    pub mla: Option<MlaSpec>,
    /// gpt-oss's attention sinks: one learned logit per head concatenated to the
    /// scores before a softmax in the compute dtype (modeling_gpt_oss.py
    /// `eager_attention_forward`).
    pub attn_sinks: bool,
    /// The rotary tables hold head_dim / 2 channels (gpt-oss's `_apply_rotary_emb` on
    /// the two halves), not head_dim.
    pub rope_half_table: bool,
    /// A vision tower and projector in front of the decoder (LLaVA).
    pub vision: Option<Box<VisionSpec>>,
    /// Which layers attend within `sliding_window` (their KV cache holds the window,
    /// not the context).
    pub sliding_layers: SlidingLayers,
}

/// The decoder layers whose attention is a sliding window, as transformers 5.24
/// configs list them (`layer_types`) or their classes default them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SlidingLayers {
    /// Every layer attends over the whole context.
    #[default]
    None,
    /// Every layer (a `sliding_window` with no `layer_types`: Mistral, Mixtral,
    /// Starcoder2, Phi-3; cache_utils.py `get_layer_types_and_kwargs`).
    All,
    /// Sliding unless `(i + 1) % period == 0` (Gemma-2: 2, Gemma-3: its
    /// `sliding_window_pattern`, default 6; Cohere-2: 4).
    Periodic(u64),
    /// Sliding from layer `n` on (Qwen2/Qwen3 with `use_sliding_window`:
    /// `i >= max_window_layers`).
    From(u64),
    /// Sliding on even layers below `n` (Qwen2-MoE with `use_sliding_window`).
    EvenBelow(u64),
    /// The config's own `layer_types` (repeated past its end for a deeper `--layers`).
    Listed(Vec<bool>),
}

impl SlidingLayers {
    /// Whether layer `i` (from 0) attends within the window.
    pub fn at(&self, i: u64) -> bool {
        match self {
            SlidingLayers::None => false,
            SlidingLayers::All => true,
            SlidingLayers::Periodic(p) => !(i + 1).is_multiple_of((*p).max(1)),
            SlidingLayers::From(n) => i >= *n,
            SlidingLayers::EvenBelow(n) => i.is_multiple_of(2) && i < *n,
            SlidingLayers::Listed(v) => !v.is_empty() && v[(i % v.len() as u64) as usize],
        }
    }
}

/// A sparse mixture-of-experts feed-forward block as transformers 5 builds it: a
/// router (`gate`, hidden → experts, a parameter, not an `nn.Linear`), the routed
/// experts fused into 3-D parameters (`experts.gate_up_proj`: experts × 2·width ×
/// hidden, `experts.down_proj`: experts × hidden × width) and, for Qwen2-MoE, a shared
/// dense expert behind a sigmoid gate (`shared_expert`, `shared_expert_gate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoeSpec {
    /// Routed experts (`num_local_experts`, `num_experts`).
    pub experts: u64,
    /// Experts per token (`num_experts_per_tok`).
    pub top_k: u64,
    /// Each routed expert's intermediate width (`moe_intermediate_size`; Mixtral's
    /// `intermediate_size`).
    pub expert_intermediate: u64,
    /// The shared expert's intermediate width (`shared_expert_intermediate_size`).
    pub shared_expert: Option<u64>,
    /// The top-k weights are renormalized to sum to one (Mixtral always;
    /// `norm_topk_prob` for Qwen).
    pub norm_topk: bool,
    /// The routing weights stay fp32 into the combine (Mixtral's router returns the
    /// softmax's fp32 values); Qwen's routers cast them to the logits' dtype.
    pub fp32_weights: bool,
    /// How the router scores and picks experts.
    pub router: RouterKind,
    /// The router runs `F.linear(x.float(), weight.float())` with its weight kept in
    /// fp32 (DeepSeek's `_keep_in_fp32_modules_strict = ["gate.weight"]`).
    pub router_fp32: bool,
    /// The shared expert's output passes a sigmoid gate (`shared_expert_gate`,
    /// Qwen2-MoE); DeepSeek adds its shared experts ungated.
    pub shared_gate: bool,
    /// The router and the experts have biases (gpt-oss: `router.bias`,
    /// `gate_up_proj_bias`, `down_proj_bias`).
    pub biases: bool,
    /// gpt-oss's clamped SwiGLU on interleaved gate/up channels
    /// (`GptOssExperts._apply_gate`) instead of `act(gate) * up`.
    pub clamped_swiglu: bool,
    /// Routed experts held on this rank under expert parallelism (`experts / ep`;
    /// `None`: all). The router still scores all `experts`.
    #[serde(default)]
    pub local_experts: Option<u64>,
}

/// A router's scoring and selection (transformers 5.24).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterKind {
    /// `softmax(logits)` then `topk` (Mixtral, Qwen-MoE, DeepSeek-V2 `greedy`).
    Softmax,
    /// DeepSeek-V3's `noaux_tc` (modeling_deepseek_v3.py `DeepseekV3TopkRouter`):
    /// `sigmoid(logits)` plus the score-correction bias, the top-2 sum per group of
    /// experts, the `topk_groups` best groups kept by a mask, `topk` over the masked
    /// scores, the chosen scores gathered.
    SigmoidGrouped { groups: u64, topk_groups: u64 },
    /// gpt-oss (`GptOssTopKRouter`): `topk` of the logits, then a softmax over the k
    /// values in the logits' dtype.
    TopkSoftmax,
    /// DeepSeek-V2's `group_limited_greedy`: softmax, the best score per group, the
    /// `topk_groups` best groups kept by a mask (`masked_fill` with 0), then `topk`.
    SoftmaxGroupLimited { groups: u64, topk_groups: u64 },
}

/// The vision side of a vision-language model: a ViT tower described as a
/// [`ModelSpec`] whose layers are the encoder layers, and the projector into the text
/// model's width.
/// - LLaVA (transformers 5.24 modeling_llava.py `LlavaModel`): a CLIP ViT
///   (`CLIPVisionModel`: patch convolution without bias, class token, learned
///   positions, `pre_layrnorm`, encoder layers of LayerNorm + q/k/v/out_proj with
///   biases + fc1/fc2, `post_layernorm` of the pooled class token, unused) and
///   `LlavaMultiModalProjector` (linear_1 → act → linear_2);
/// - Gemma-3 (modeling_gemma3.py `Gemma3Model`): a SigLIP ViT (`SiglipVisionModel`:
///   patch convolution with bias, no class token, learned positions, the same layer
///   shape, `post_layernorm` over every token feeding the projector) and
///   `Gemma3MultiModalProjector` (average pooling to `mm_tokens_per_image`, a Gemma
///   RMSNorm, a matmul with a plain parameter — not an nn.Linear).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionSpec {
    /// The tower's encoder (hidden, heads, layers, MLP width, LayerNorm, module slots).
    pub tower: ModelSpec,
    pub image_size: u64,
    pub patch_size: u64,
    pub channels: u64,
    /// CLIP's class token (SigLIP has none).
    pub class_token: bool,
    /// The patch convolution has a bias (SigLIP).
    pub patch_bias: bool,
    /// CLIP's `pre_layrnorm` before the encoder.
    pub pre_norm: bool,
    /// SigLIP's `post_layernorm` over every token, which the projector reads (CLIP's
    /// normalizes the pooled class token only, which nothing uses).
    pub post_norm_used: bool,
    /// Encoder layers whose output the features come from (`vision_feature_layer` -2:
    /// all but the last; the last still exists and runs).
    pub feature_layers: u64,
    /// `vision_feature_select_strategy` "default" drops the class token.
    pub drop_cls: bool,
    /// The projector's output width (the text hidden size).
    pub projector_out: u64,
    pub projector: Projector,
    /// The image tokens attend to each other both ways (Gemma-3's processor returns
    /// `token_type_ids`, and `Gemma3Model.forward` builds every layer type's mask with
    /// `create_masks_for_vision_model`: a data-dependent mask, materialized even where
    /// a causal layer would otherwise run SDPA's `is_causal`).
    pub bidirectional_images: bool,
    /// LLaVA-OneVision's anyres tiling of a sample's single image (`None`: one crop).
    pub anyres: Option<Anyres>,
    /// LLaVA-OneVision's `image_newline` parameter (text hidden), one per row of tiles.
    pub newline: bool,
    /// Whether LoRA targets apply on the vision side (peft's all-linear reaches the
    /// tower and the projector); `false` when the run keeps them to the language model
    /// (`--vision frozen`, set by `estimate::instantiated`).
    pub adapters_reach: bool,
    /// The tower ends in a LayerNorm (CLIP's and SigLIP's `post_layernorm`, whether or
    /// not the features read it; Qwen2-VL's has none).
    pub post_norm: bool,
    /// Frames per patch of the patch embedding (Qwen2-VL's Conv3d `temporal_patch_size`,
    /// an image repeated over it; 1 for a Conv2d).
    pub temporal_patch: u64,
    /// Native resolution (Qwen2-VL): images keep their aspect, resized to a multiple of
    /// patch × merge within a pixel budget; `None`: a fixed square.
    pub native: Option<Native>,
    /// Qwen2.5-VL's window attention in the tower (`None`: every block attends over
    /// the whole image).
    pub window: Option<WindowAttn>,
}

/// Qwen2.5-VL's windowed tower (transformers 5.24 modeling_qwen2_5_vl.py
/// `Qwen2_5_VisionTransformerPretrainedModel.forward`, vision_utils.py
/// `get_vision_window_index`): the patches are regrouped window by window (an index
/// copy), blocks outside `full_blocks` attend within windows of `size / patch / merge`
/// merged tokens a side (8x8 patches for 112 px), the others over the whole image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowAttn {
    /// `window_size` in pixels.
    pub size: u64,
    /// `fullatt_block_indexes`.
    pub full_blocks: Vec<u64>,
}

impl WindowAttn {
    /// The patches of each window of a `grid` (rows, columns of patches) image:
    /// windows of `w` merged tokens a side, the last row and column of windows cut by
    /// the image's edge (`get_vision_window_index`'s padding never holds a patch).
    pub fn window_lengths(&self, grid: (u64, u64), patch: u64, merge: u64) -> Vec<u64> {
        let w = (self.size / merge.max(1) / patch.max(1)).max(1);
        let (mh, mw) = (grid.0 / merge.max(1), grid.1 / merge.max(1));
        let sides = |n: u64| -> Vec<u64> {
            let mut v = vec![w; (n / w) as usize];
            if !n.is_multiple_of(w) {
                v.push(n % w);
            }
            v
        };
        let (rows, cols) = (sides(mh), sides(mw));
        let unit = merge * merge;
        rows.iter()
            .flat_map(|&r| cols.iter().map(move |&c| r * c * unit))
            .collect()
    }
}

/// Qwen2-VL's native resolution (transformers 5.24 image_processing_qwen2_vl.py
/// `smart_resize`, `Qwen2VLImageProcessor` defaults `min_pixels` 56·56, `max_pixels`
/// 28·28·1280, or `preprocessor_config.json`'s): each image becomes a grid of patches,
/// every 2×2 of them one image token after the merger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Native {
    pub min_pixels: u64,
    pub max_pixels: u64,
    /// `spatial_merge_size`.
    pub merge: u64,
    /// Patch rows × columns of the image as instantiated (`VisionSpec::sized`).
    pub grid: (u64, u64),
}

impl Native {
    /// `smart_resize(height, width, factor = patch × merge, min_pixels, max_pixels)` in
    /// patches (rows, columns). Python's `round` rounds halves to even.
    pub fn grid_for(&self, height: u64, width: u64, patch: u64) -> (u64, u64) {
        let factor = (patch.max(1) * self.merge.max(1)) as f64;
        let (h, w) = (height.max(1) as f64, width.max(1) as f64);
        let (mut hb, mut wb) = (
            (h / factor).round_ties_even() * factor,
            (w / factor).round_ties_even() * factor,
        );
        let (lo, hi) = (self.min_pixels as f64, self.max_pixels as f64);
        if hb * wb > hi {
            let beta = (h * w / hi).sqrt();
            hb = factor.max((h / beta / factor).floor() * factor);
            wb = factor.max((w / beta / factor).floor() * factor);
        } else if hb * wb < lo {
            let beta = (lo / (h * w)).sqrt();
            hb = (h * beta / factor).ceil() * factor;
            wb = (w * beta / factor).ceil() * factor;
        }
        let p = patch.max(1) as f64;
        ((hb / p) as u64, (wb / p) as u64)
    }
}

/// How the features reach the text model's width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Projector {
    /// LLaVA's `linear_1 → act → linear_2`.
    Mlp { act: Activation, bias: bool },
    /// Gemma-3's `avg_pool2d` to `tokens` per image, an RMSNorm of the text model's
    /// kind (`norm`), a matmul with a parameter.
    Pooled { tokens: u64, norm: NormKind },
    /// Qwen2-VL's `PatchMerger`: `ln_q` (LayerNorm over the tower's width), every
    /// `merge`×`merge` patches viewed as one row, `Linear(4h, 4h) → GELU → Linear(4h,
    /// text hidden)` with biases.
    Merger { merge: u64 },
}

/// LLaVA-OneVision's anyres (transformers 5.24 modeling_llava_onevision.py
/// `image_size_to_num_patches`, `pack_image_features`; processing_llava_onevision.py
/// `_get_number_of_features`): a sample with one image is cut into the tiles of the
/// best of `pinpoints` (height, width) plus the whole image as a base crop, every crop
/// through the tower; the tiles' features are unpadded to the image's aspect, pooled
/// down when they exceed `max_patches` crops' worth, and end each row with a newline.
#[derive(Debug, Clone, PartialEq)]
pub struct Anyres {
    pub pinpoints: Vec<(u64, u64)>,
    /// OneVision's `anyres_max_N` pooling of the tiles' features (`None`: LLaVA-NeXT,
    /// which keeps them all).
    pub max_patches: Option<u64>,
    /// OneVision gives several images in one sample a single crop each
    /// (`batch_num_images`); LLaVA-NeXT tiles every image.
    pub single_image_only: bool,
}

/// `image_processing_utils.select_best_resolution`: the pinpoint that keeps the most of
/// the image (downscaled to fit), then wastes the least; the first of equals.
pub fn select_best_resolution(height: u64, width: u64, pinpoints: &[(u64, u64)]) -> (u64, u64) {
    let (oh, ow) = (height as f64, width as f64);
    let mut best = pinpoints.first().copied().unwrap_or((height, width));
    let (mut max_eff, mut min_waste) = (0u64, u64::MAX);
    for &(h, w) in pinpoints {
        let scale = (w as f64 / ow).min(h as f64 / oh);
        let (dw, dh) = ((ow * scale) as u64, (oh * scale) as u64);
        let eff = dw.saturating_mul(dh).min(width.saturating_mul(height));
        let waste = w.saturating_mul(h).saturating_sub(eff);
        if eff > max_eff || (eff == max_eff && waste < min_waste) {
            (max_eff, min_waste, best) = (eff, waste, (h, w));
        }
    }
    best
}

impl VisionSpec {
    /// Tokens the projector gets per crop: the tower's tokens, the class token dropped
    /// by `vision_feature_select_strategy` "default" (LLaVA's 576; OneVision's 729).
    pub fn crop_tokens(&self) -> u64 {
        self.tower_tokens() - u64::from(self.drop_cls && self.tower_tokens() > 0)
    }

    /// (crops through the tower, image tokens in the text) per image, for `images` per
    /// sample of `height` x `width` pixels before preprocessing (fixed-resolution towers
    /// resize every image to their square: one crop, [`Self::image_tokens`]).
    pub fn layout(&self, images: u64, height: u64, width: u64) -> (u64, u64) {
        if self.native.is_some() {
            return (1, self.sized(height, width).image_tokens());
        }
        let Some(a) = &self.anyres else {
            return (1, self.image_tokens());
        };
        let drop = u64::from(self.drop_cls);
        // the base crop's features: the patches and the class token (LLaVA-NeXT's
        // `num_additional_image_tokens`), the strategy's drop taken off the total
        let base = self.tower_tokens();
        if images != 1 && a.single_image_only {
            // several images per sample: one crop each, and one newline
            // (`replace_image_token`: num_image_tokens + 1)
            return (1, base + 1 - drop);
        }
        let side = self.image_size.max(1);
        let (bh, bw) = select_best_resolution(height.max(1), width.max(1), &a.pinpoints);
        let crops = bh
            .div_ceil(side)
            .saturating_mul(bw.div_ceil(side))
            .saturating_add(1);
        // processing_llava_onevision.py `_get_unpadded_features`
        let per_side = (self.image_size / self.patch_size.max(1)).max(1);
        let (mut ch, mut cw) = (
            per_side.saturating_mul(bh / side),
            per_side.saturating_mul(bw / side),
        );
        let (oh, ow) = (height.max(1) as f64, width.max(1) as f64);
        let round7 = |x: f64| ((x * 1e7).round() / 1e7) as u64;
        if ow / oh > cw as f64 / ch as f64 {
            let new_h = round7(oh * (cw as f64 / ow));
            ch -= 2 * (ch.saturating_sub(new_h) / 2);
        } else {
            let new_w = round7(ow * (ch as f64 / oh));
            cw -= 2 * (cw.saturating_sub(new_w) / 2);
        }
        let (mut unpadded, mut newlines) = (ch.saturating_mul(cw), ch);
        if let Some(max) = a.max_patches {
            let ratio = (unpadded as f64 / (max as f64 * (per_side * per_side) as f64)).sqrt();
            if ratio > 1.1 {
                let (h2, w2) = (
                    (ch as f64 / ratio).floor() as u64,
                    (cw as f64 / ratio).floor() as u64,
                );
                (unpadded, newlines) = (h2.saturating_mul(w2), h2);
            }
        }
        (
            crops,
            base.saturating_add(unpadded)
                .saturating_add(newlines)
                .saturating_sub(drop),
        )
    }

    /// Patches per image: (image_size / patch_size)², or a native-resolution image's
    /// grid.
    pub fn patches(&self) -> u64 {
        match &self.native {
            Some(n) => n.grid.0.saturating_mul(n.grid.1),
            None => (self.image_size / self.patch_size.max(1)).pow(2),
        }
    }

    /// The tower for images of `height` × `width` pixels (a native-resolution tower's
    /// grid; a fixed one resizes every image, unchanged).
    pub fn sized(&self, height: u64, width: u64) -> VisionSpec {
        let mut v = self.clone();
        if let Some(n) = v.native.as_mut() {
            n.grid = n.grid_for(height, width, self.patch_size);
        }
        v
    }

    /// Tokens the tower runs per image (the patches and the class token).
    pub fn tower_tokens(&self) -> u64 {
        self.patches() + u64::from(self.class_token)
    }

    /// Image tokens per image in the text sequence.
    pub fn image_tokens(&self) -> u64 {
        match self.projector {
            Projector::Mlp { .. } => self.patches() + u64::from(self.class_token && !self.drop_cls),
            Projector::Pooled { tokens, .. } => tokens,
            Projector::Merger { merge } => self.patches() / (merge * merge).max(1),
        }
    }
}

/// Multi-head latent attention (DeepSeek-V2/V3, modeling_deepseek_v2.py /
/// modeling_deepseek_v3.py `*Attention`, transformers 5.24): queries straight from
/// `q_proj` or through the `q_a_proj` → `q_a_layernorm` → `q_b_proj` bottleneck; keys
/// and values from one latent (`kv_a_proj_with_mqa` → `kv_a_layernorm` →
/// `kv_b_proj`) plus one shared rope key. The spec's `head_dim` is the query/key head
/// (nope + rope); values have `v_head` channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlaSpec {
    pub q_lora_rank: Option<u64>,
    pub kv_lora_rank: u64,
    pub qk_nope: u64,
    pub qk_rope: u64,
    pub v_head: u64,
    /// V2 rotates through complex numbers (`torch.polar` frequencies, kept by the
    /// complex multiply); V3 with cos/sin tables like llama.
    pub complex_rope: bool,
    /// V3's `rope_interleave` (default true): the rope slices are de-interleaved by a
    /// `view/transpose/reshape` copy before the rotation.
    pub rope_interleave: bool,
}

impl MlaSpec {
    /// Bytes per token and layer of what transformers 5.24's cache stores: the normed
    /// latent and the rotated rope key (`cache.update(k_nope, k_pe)`, "performed while
    /// the latent KV is still compressed"), i.e. kv_lora_rank + rope elements — what
    /// vLLM and SGLang store too.
    pub fn latent_width(&self) -> u64 {
        self.kv_lora_rank + self.qk_rope
    }
}

impl MoeSpec {
    /// Routed experts whose parameters this rank holds (all but under expert
    /// parallelism).
    pub fn experts_here(&self) -> u64 {
        self.local_experts.unwrap_or(self.experts)
    }

    /// Parameters of one routed expert (its gate/up and down slices, and their biases).
    pub fn expert_params(&self, hidden: u64) -> u64 {
        let bias = if self.biases {
            2 * self.expert_intermediate + hidden
        } else {
            0
        };
        3 * hidden * self.expert_intermediate + bias
    }
}

/// A linear layer inside one decoder layer: what LoRA adapts and what saves its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearSpec {
    /// peft module name (`q_proj`, `c_attn`, `query_key_value`, ...).
    pub name: &'static str,
    pub in_features: u64,
    pub out_features: u64,
    pub bias: bool,
    pub role: LinearRole,
    /// Identical copies of the module in the block (routed experts); 1 for dense.
    pub copies: u64,
    /// A parameter, not an `nn.Linear` (transformers 5's MoE router and fused experts),
    /// that peft's all-linear reaches through its MoE conversion
    /// (`utils/transformers_weight_conversion.py`: Mixtral, Qwen3-MoE; `ParamWrapper`,
    /// the fused gate/up at twice the rank); false for every module, and for a
    /// parameter peft never converts (Qwen2-MoE's).
    pub via_conversion: bool,
    /// An `nn.Linear` whose leaf name peft's MoE conversion claims for the fused
    /// experts, so no LoRA target list reaches it on this model type.
    pub shadowed: bool,
}

impl LinearSpec {
    /// Parameters of the module: the `in × out` weight plus `out` when it has a bias,
    /// times its copies.
    pub fn params(&self) -> u64 {
        self.copies
            * (self.in_features * self.out_features + if self.bias { self.out_features } else { 0 })
    }
}

/// One linear module of a decoder block: its peft name, its role (which fixes its shape
/// from the spec's widths) and how many copies the block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleSlot {
    pub name: &'static str,
    pub role: LinearRole,
    pub copies: u64,
}

impl ModuleSlot {
    pub const fn one(name: &'static str, role: LinearRole) -> ModuleSlot {
        ModuleSlot {
            name,
            role,
            copies: 1,
        }
    }
}

/// The linear modules of one decoder block, attention then feed-forward, in forward
/// order: data the config parser sets per family (`hf::config`), so nothing downstream
/// matches on the family to know a block's modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockModules {
    pub attention: &'static [ModuleSlot],
    pub ffn: &'static [ModuleSlot],
}

/// `count` consecutive decoder layers with the same block: the model is a list of
/// them (dense-first MoE stacks, alternating attention kinds and a frozen vision tower
/// are more groups, not special cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerGroup {
    pub count: u64,
    /// The block's linear modules.
    pub modules: BlockModules,
    /// The layers attend within `sliding_window` (their type in `sliding_layers`).
    pub sliding: bool,
}

/// Norms over `head_dim` applied to queries and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum QkNorm {
    #[default]
    None,
    /// One norm for q and one for k, shared by all heads: Qwen3 `q_norm`/`k_norm`
    /// (RMSNorm, 2·head_dim), Phi `qk_layernorm` (LayerNorm with bias, 4·head_dim).
    Shared { bias: bool },
    /// StableLM `qk_layernorm`: a bias-free LayerNorm(head_dim) per query and per
    /// key/value head ((heads + kv_heads)·head_dim).
    PerHead,
    /// OLMo-2 `q_norm`/`k_norm`: one norm over the whole q projection
    /// (heads·head_dim) and one over the k projection (kv_heads·head_dim), before the
    /// head reshape.
    FullWidth,
}

impl QkNorm {
    pub fn is_some(self) -> bool {
        self != QkNorm::None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearRole {
    Q,
    K,
    V,
    Qkv,
    O,
    Gate,
    Up,
    GateUp,
    Down,
    /// The output head (vocab-parallel under tensor parallelism; never a LoRA target).
    Head,
    /// An MoE router (hidden → experts).
    Router,
    /// The routed experts' fused gate/up projection (one copy per expert).
    ExpertGateUp,
    /// The routed experts' down projection (one copy per expert).
    ExpertDown,
    /// The shared expert's gate and up projections (hidden → its width).
    SharedGate,
    SharedUp,
    /// The shared expert's down projection.
    SharedDown,
    /// The shared expert's sigmoid gate (hidden → 1).
    SharedExpertGate,
    /// Latent attention's query down-projection (`q_a_proj`: hidden → q_lora_rank).
    QA,
    /// Latent attention's query up-projection (`q_b_proj`: q_lora_rank → heads ×
    /// (nope + rope)).
    QB,
    /// Latent attention's joint KV down-projection with the shared rope key
    /// (`kv_a_proj_with_mqa`: hidden → kv_lora_rank + rope).
    KvA,
    /// Latent attention's KV up-projection (`kv_b_proj`: kv_lora_rank → heads ×
    /// (nope + v)).
    KvB,
}

impl LinearRole {
    /// A parameter of transformers 5's MoE block rather than an `nn.Linear` (the router
    /// module's weight, the fused 3-D expert stacks): what bitsandbytes'
    /// `replace_with_bnb_linear` never quantizes.
    pub fn is_moe_parameter(self) -> bool {
        matches!(
            self,
            LinearRole::Router | LinearRole::ExpertGateUp | LinearRole::ExpertDown
        )
    }

    pub fn is_attention(self) -> bool {
        matches!(
            self,
            LinearRole::Q
                | LinearRole::K
                | LinearRole::V
                | LinearRole::Qkv
                | LinearRole::O
                | LinearRole::QA
                | LinearRole::QB
                | LinearRole::KvA
                | LinearRole::KvB
        )
    }

    /// A module of a mixture-of-experts block (router, routed or shared experts).
    pub fn is_moe(self) -> bool {
        matches!(
            self,
            LinearRole::Router
                | LinearRole::ExpertGateUp
                | LinearRole::ExpertDown
                | LinearRole::SharedGate
                | LinearRole::SharedUp
                | LinearRole::SharedDown
                | LinearRole::SharedExpertGate
        )
    }
}

impl ModelSpec {
    /// The output head `lm_head` (hidden → vocab) as a linear.
    pub fn head_linear(&self) -> LinearSpec {
        LinearSpec {
            name: HEAD_NAME,
            in_features: self.hidden,
            out_features: self.vocab,
            bias: self.lm_head_bias,
            role: LinearRole::Head,
            copies: 1,
            via_conversion: false,
            shadowed: false,
        }
    }
    /// Input width of the attention output projection: heads × v_head under latent
    /// attention, else the query width.
    pub fn o_in(&self) -> u64 {
        self.mla.map_or(self.q_dim(), |m| self.heads * m.v_head)
    }
    /// KV-cache elements one decoder layer stores per token: keys and values
    /// (2 × kv_heads × head_dim), or under latent attention the compressed latent and
    /// the rope key ([`MlaSpec::latent_width`]).
    pub fn kv_elems_per_token_layer(&self) -> u64 {
        self.mla.map_or(2 * self.kv_dim(), |m| m.latent_width())
    }
    pub fn q_dim(&self) -> u64 {
        self.heads * self.head_dim
    }
    pub fn kv_dim(&self) -> u64 {
        self.kv_heads * self.head_dim
    }

    /// Decoder layers in the stack.
    pub fn layers(&self) -> u64 {
        self.groups.iter().map(|g| g.count).sum()
    }

    /// Decoder layers whose feed-forward block is the sparse MoE block (a router among
    /// its modules).
    pub fn moe_layers(&self) -> u64 {
        self.groups
            .iter()
            .filter(|g| g.modules.ffn.iter().any(|s| s.role == LinearRole::Router))
            .map(|g| g.count)
            .sum()
    }

    /// Decoder layers attending within `sliding_window` (0 without one).
    pub fn sliding_layer_count(&self) -> u64 {
        if self.sliding_window.is_none() {
            return 0;
        }
        (0..self.layers())
            .filter(|&i| self.sliding_layers.at(i))
            .count() as u64
    }

    /// The linears of one decoder layer of the stack's first group (see
    /// [`ModelSpec::block_linears`]); the estimator's per-layer programs run over a
    /// uniform stack (`uniform_block`).
    pub fn layer_linears(&self) -> Vec<LinearSpec> {
        self.block_linears(&self.groups[0].modules)
    }

    /// The block every layer shares, or an error naming the model when its groups have
    /// different blocks (estimated per group with the MoE/hybrid-attention support).
    pub fn uniform_block(&self) -> Result<BlockModules> {
        let first = self.groups[0].modules;
        if self.groups.iter().all(|g| g.modules == first) {
            Ok(first)
        } else {
            Err(Error::Unsupported {
                model_type: self.family.model_type().to_string(),
                reason: format!(
                    "{} has {} layer groups with different blocks; per-group estimates come with mixture-of-experts and hybrid-attention support",
                    self.name,
                    self.groups.len()
                ),
                supported: Family::supported_list(),
            })
        }
    }

    /// Σ over every decoder layer of Σ over its linears of `f(linear)` (saturating).
    pub fn sum_over_layers(&self, f: impl Fn(&LinearSpec) -> u64) -> u64 {
        self.groups
            .iter()
            .map(|g| {
                let per_layer = self
                    .linears_of(&g.modules)
                    .map(|l| f(&l))
                    .fold(0, u64::saturating_add);
                g.count.saturating_mul(per_layer)
            })
            .fold(0, u64::saturating_add)
    }

    /// Every linear of every group's block (a block shared by groups appears once per
    /// group).
    pub fn each_linear(&self) -> impl Iterator<Item = LinearSpec> + '_ {
        self.groups.iter().flat_map(|g| self.linears_of(&g.modules))
    }

    /// The linears of one decoder layer with `modules`, in forward order, with peft's
    /// names: the block's module slots ([`BlockModules`], set by the config parser
    /// from the family's transformers module tree) with shapes from the spec's widths.
    /// The one description from which parameter counts, weight bytes, optimizer
    /// shapes, sharding, the largest module and LoRA targets are derived.
    pub fn block_linears(&self, m: &BlockModules) -> Vec<LinearSpec> {
        self.linears_of(m).collect()
    }

    /// [`ModelSpec::block_linears`] as an iterator (no allocation).
    pub fn linears_of<'a>(&'a self, m: &BlockModules) -> impl Iterator<Item = LinearSpec> + 'a {
        use LinearRole::*;
        let h = self.hidden;
        let (qd, kvd, i) = (self.q_dim(), self.kv_dim(), self.intermediate);
        m.attention.iter().chain(m.ffn).map(move |slot| {
            let (in_features, out_features, bias) = match slot.role {
                // latent attention's q_proj never has a bias
                Q => (h, qd, self.qkv_bias && self.mla.is_none()),
                K | V => (h, kvd, self.qkv_bias),
                Qkv => (h, qd + 2 * kvd, self.qkv_bias),
                O => (self.o_in(), h, self.o_bias),
                QA => (
                    h,
                    self.mla.and_then(|m| m.q_lora_rank).unwrap_or(0),
                    self.qkv_bias,
                ),
                QB => (self.mla.and_then(|m| m.q_lora_rank).unwrap_or(0), qd, false),
                KvA => (h, self.mla.map_or(0, |m| m.latent_width()), self.qkv_bias),
                KvB => (
                    self.mla.map_or(0, |m| m.kv_lora_rank),
                    self.mla.map_or(0, |m| self.heads * (m.qk_nope + m.v_head)),
                    false,
                ),
                Gate | Up => (h, i, self.mlp_bias),
                GateUp => (h, 2 * i, self.mlp_bias),
                Down => (i, h, self.mlp_bias),
                Head => (h, self.vocab, self.lm_head_bias),
                Router => (
                    h,
                    self.moe.map_or(0, |m| m.experts),
                    self.moe.is_some_and(|m| m.biases),
                ),
                ExpertGateUp => (
                    h,
                    2 * self.moe.map_or(0, |m| m.expert_intermediate),
                    self.moe.is_some_and(|m| m.biases),
                ),
                ExpertDown => (
                    self.moe.map_or(0, |m| m.expert_intermediate),
                    h,
                    self.moe.is_some_and(|m| m.biases),
                ),
                SharedGate | SharedUp => (
                    h,
                    self.moe.and_then(|m| m.shared_expert).unwrap_or(0),
                    false,
                ),
                SharedDown => (
                    self.moe.and_then(|m| m.shared_expert).unwrap_or(0),
                    h,
                    false,
                ),
                SharedExpertGate => (h, 1, false),
            };
            // routed experts: one slice of the fused parameter per expert
            let copies = match slot.role {
                ExpertGateUp | ExpertDown => self.moe.map_or(slot.copies, |m| m.experts_here()),
                _ => slot.copies,
            };
            let parameter = matches!(slot.role, Router | ExpertGateUp | ExpertDown);
            LinearSpec {
                name: slot.name,
                in_features,
                out_features,
                bias,
                role: slot.role,
                copies,
                via_conversion: parameter && self.family.moe_converted_by_peft(),
                // transformers_weight_conversion.py `_convert_peft_config_moe` moves the
                // v4 expert names (gate_proj, up_proj, down_proj) from target_modules to
                // target_parameters: a dense MLP or shared expert with those leaf names is
                // then no longer a module target (DeepSeek, checked by the trace probe)
                shadowed: self.family.moe_converted_by_peft()
                    && matches!(
                        slot.role,
                        Gate | Up | Down | SharedGate | SharedUp | SharedDown
                    ),
            }
        })
    }

    /// Number of norms in one decoder layer (each with `hidden` weights).
    pub fn norms_per_layer(&self) -> u64 {
        let base = match self.residual {
            Residual::Parallel { shared_norm: true } => 1,
            Residual::Sequential | Residual::Parallel { .. } | Residual::PostNorm => 2,
        };
        base + if self.sandwich_norms { 2 } else { 0 }
    }

    /// Check the invariants; the error names the field and the accepted values.
    pub fn validate(&self) -> Result<()> {
        let pos = |what: &'static str, v: u64| {
            if v == 0 {
                Err(Error::invalid(what, v, "an integer > 0"))
            } else {
                Ok(())
            }
        };
        pos("hidden_size", self.hidden)?;
        if self.groups.is_empty() || self.groups.iter().any(|g| g.count == 0) {
            return Err(Error::invalid(
                "num_hidden_layers",
                0,
                "an integer > 0 (every layer group non-empty)",
            ));
        }
        pos("num_hidden_layers", self.layers())?;
        pos("num_attention_heads", self.heads)?;
        pos("num_key_value_heads", self.kv_heads)?;
        pos("head_dim", self.head_dim)?;
        pos("intermediate_size", self.intermediate)?;
        pos("vocab_size", self.vocab)?;
        if let Some(m) = &self.moe {
            pos("num_experts", m.experts)?;
            pos("moe_intermediate_size", m.expert_intermediate)?;
            if m.top_k == 0 || m.top_k > m.experts {
                return Err(Error::invalid(
                    "num_experts_per_tok",
                    m.top_k,
                    format!("an integer in 1..={} (the number of experts)", m.experts),
                ));
            }
            if m.shared_expert == Some(0) {
                return Err(Error::invalid(
                    "shared_expert_intermediate_size",
                    0,
                    "an integer > 0",
                ));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::invalid(
                "num_key_value_heads",
                self.kv_heads,
                format!("a divisor of num_attention_heads ({})", self.heads),
            ));
        }
        if let Positions::Rope { rotary_dim } = self.positions {
            if rotary_dim == 0 || rotary_dim > self.head_dim || rotary_dim % 2 != 0 {
                return Err(Error::invalid(
                    "rotary dimension",
                    rotary_dim,
                    format!("an even integer in 2..={}", self.head_dim),
                ));
            }
        }
        Ok(())
    }

    /// A copy with another depth (`--layers`). Drops the checkpoint tensor list, which
    /// no longer describes the model.
    pub fn with_layers(&self, layers: u64) -> Result<ModelSpec> {
        if layers == 0 || layers > MAX_LAYERS {
            return Err(Error::invalid(
                "layers",
                layers,
                format!("an integer in 1..={}", MAX_LAYERS),
            ));
        }
        let mut m = self.clone();
        m.set_layers(layers);
        m.checkpoint = None;
        Ok(m)
    }

    /// Split the groups where the attention type changes (`sliding_layers`), so that
    /// every group's layers share their block and their attention type.
    pub fn split_by_attention(&mut self) {
        let mut out: Vec<LayerGroup> = Vec::with_capacity(self.groups.len());
        let mut i = 0u64;
        for g in &self.groups {
            // runs within this group only: groups are never merged
            let first = out.len();
            for _ in 0..g.count {
                let sliding = self.sliding_window.is_some() && self.sliding_layers.at(i);
                let n = out.len();
                match out.last_mut() {
                    Some(last) if n > first && last.sliding == sliding => last.count += 1,
                    _ => out.push(LayerGroup {
                        count: 1,
                        modules: g.modules,
                        sliding,
                    }),
                }
                i += 1;
            }
        }
        self.groups = out;
    }

    /// Keep the first `n` layers of the stack (a pipeline stage, `--layers`); beyond
    /// the stack's depth the last group grows (and splits again by attention type).
    pub fn set_layers(&mut self, n: u64) {
        let mut left = n;
        let mut kept = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            if left == 0 {
                break;
            }
            let c = g.count.min(left);
            kept.push(LayerGroup { count: c, ..*g });
            left -= c;
        }
        if left > 0 {
            if let Some(last) = kept.last_mut() {
                last.count += left;
            }
        }
        self.groups = kept;
        if self.sliding_window.is_some() {
            self.split_by_attention();
        }
    }

    /// The layers `start..start + n` of the stack, as the groups that hold them (a
    /// pipeline stage's share).
    pub fn stage_groups(&self, start: u64, n: u64) -> Vec<LayerGroup> {
        let (mut at, mut out) = (0u64, Vec::new());
        for g in &self.groups {
            let (lo, hi) = (at.max(start), (at + g.count).min(start + n));
            if lo < hi {
                out.push(LayerGroup {
                    count: hi - lo,
                    ..*g
                });
            }
            at += g.count;
        }
        out
    }
}

/// Which linears LoRA adapts: `attn` (q, k, v, o; the fused qkv where the architecture
/// has one), `all-linear` (peft's meaning: every linear in the decoder layers, never the
/// output head) or an explicit list of peft module names (`q_proj,v_proj`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoraTargets {
    Attn,
    AllLinear,
    Names(Vec<String>),
}

/// The output head's module name as LoRA targets name it.
pub const HEAD_NAME: &str = "lm_head";
/// In a list of LoRA targets, every block linear (`all-linear,lm_head`).
pub const ALL_LINEAR: &str = "all-linear";

impl LoraTargets {
    pub fn parse(s: &str) -> Result<LoraTargets> {
        let t = s.trim();
        match t {
            "attn" => return Ok(LoraTargets::Attn),
            "all-linear" | "all_linear" | "all" => return Ok(LoraTargets::AllLinear),
            _ => {}
        }
        let names: Vec<String> = t
            .split(',')
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty()
            || names.iter().any(|n| {
                n != ALL_LINEAR
                    && !n
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            })
        {
            return Err(Error::invalid(
                "lora_targets",
                s,
                "attn, all-linear, or a comma-separated list of module names such as q_proj,v_proj",
            ));
        }
        Ok(LoraTargets::Names(names))
    }

    pub fn matches(&self, lin: &LinearSpec) -> bool {
        // peft's all-linear: the nn.Linear modules but the head; transformers 5's
        // router and fused experts are a parameter and a 3-D parameter (peft reaches
        // them only through its MoE conversion, see `Workload::check_recipe`)
        let linear = lin.via_conversion
            || !matches!(
                lin.role,
                LinearRole::Head
                    | LinearRole::Router
                    | LinearRole::ExpertGateUp
                    | LinearRole::ExpertDown
            );
        if lin.shadowed {
            return false;
        }
        match self {
            LoraTargets::Attn => lin.role.is_attention(),
            LoraTargets::AllLinear => linear,
            LoraTargets::Names(ns) => ns
                .iter()
                .any(|n| n == lin.name || (n == ALL_LINEAR && linear)),
        }
    }

    /// peft 0.21 converts these targets onto `family`'s fused experts and router
    /// (`utils/transformers_weight_conversion.py` `_convert_peft_config_moe`: all-linear,
    /// or the v4 names, become `target_parameters` on `gate.weight`, `gate_up_proj`
    /// and `down_proj`, rank and alpha doubled on the fused gate/up) — for the model
    /// types transformers' conversion mapping names (mixtral; qwen3_moe through
    /// qwen2_moe's pattern), not for qwen2_moe itself.
    pub fn converted_onto_experts(&self, family: Family) -> bool {
        let v4: &[&str] = match family {
            Family::Mixtral => &["gate", "w1", "w2", "w3"],
            Family::Qwen3Moe | Family::DeepseekV2 | Family::DeepseekV3 => {
                &["gate", "gate_proj", "up_proj", "down_proj"]
            }
            _ => return false,
        };
        match self {
            LoraTargets::Attn => false,
            LoraTargets::AllLinear => true,
            LoraTargets::Names(ns) => ns
                .iter()
                .any(|n| n == ALL_LINEAR || v4.contains(&n.as_str())),
        }
    }

    /// The output head is adapted too (`lm_head` named in the list, as peft's
    /// `target_modules=[..., "lm_head"]`; peft's `all-linear` leaves it out).
    pub fn head(&self) -> bool {
        matches!(self, LoraTargets::Names(ns) if ns.iter().any(|n| n == HEAD_NAME))
    }

    /// Names that match no linear of `spec` are an error, never silently ignored.
    pub fn check_against(&self, spec: &ModelSpec) -> Result<()> {
        if let LoraTargets::Names(ns) = self {
            let lins: Vec<LinearSpec> = spec.each_linear().collect();
            for n in ns {
                if n != HEAD_NAME && n != ALL_LINEAR && !lins.iter().any(|l| l.name == n) {
                    let accepted: Vec<&str> = lins.iter().map(|l| l.name).collect();
                    return Err(Error::invalid(
                        "LoRA target module",
                        n,
                        format!(
                            "attn, all-linear, or modules of {}: {}, lm_head",
                            spec.family,
                            accepted.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for LoraTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoraTargets::Attn => f.write_str("attn"),
            LoraTargets::AllLinear => f.write_str("all-linear"),
            LoraTargets::Names(ns) => f.write_str(&ns.join(",")),
        }
    }
}
