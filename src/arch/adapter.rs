//! `Adapter`: which peft tuner adapts the targeted linears (`--peft`), and the
//! parameters it adds to one of them.
//!
//! Each variant mirrors a peft 0.21 tuner layer (file named per variant); the
//! activations its forward saves are replayed in `runtime::torch` (`adapter_branch`).

use serde::{Deserialize, Serialize};

use super::{Family, LinearRole, LinearSpec, ModelSpec, NormKind, Residual};
use crate::error::{Error, Result};

/// A peft tuner over frozen base weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Adapter {
    /// LoRA (`tuners/lora/layer.py` `Linear`): `lora_B(lora_A(x))·scaling`.
    #[default]
    Lora,
    /// DoRA (`LoraConfig(use_dora=True)`, `tuners/lora/dora.py` `DoraLinearLayer`):
    /// LoRA plus a trained magnitude vector of `out` elements.
    Dora,
    /// LoRA-FA (`peft.optimizers.create_lorafa_optimizer`): LoRA with `lora_A` frozen,
    /// only `lora_B` trained.
    LoraFa,
    /// AdaLoRA (`tuners/adalora/layer.py` `SVDLinear`): `lora_A` (r × in), `lora_E`
    /// (r × 1), `lora_B` (out × r), r = `init_r`.
    AdaLora,
    /// VeRA (`tuners/vera/layer.py`): frozen random `vera_A` / `vera_B` shared by every
    /// adapted layer (buffers sized to the largest in/out), trained `lambda_d` (r) and
    /// `lambda_b` (out) per layer.
    Vera,
    /// (IA)³ (`tuners/ia3/layer.py`): one trained vector per layer, scaling the input
    /// of a feed-forward output projection (`in` elements) or the output of any other
    /// targeted linear (`out` elements).
    Ia3,
    /// LN tuning (`tuners/ln_tuning/layer.py` `LNTuningLayer`): a deep copy of each
    /// targeted norm layer is trained in its place, the base norm frozen; no linear is
    /// adapted. The targets are peft's default for the model type ([`LnNorms`]).
    LnTuning,
    /// Prompt tuning (`tuners/prompt_tuning/model.py` `PromptEmbedding`;
    /// `PeftModelForCausalLM.forward`): `num_virtual_tokens` trained embeddings
    /// (the rank slot holds that number) concatenated before the input embeddings,
    /// the labels padded with -100: every layer runs on seq + virtual tokens and its
    /// input requires grad from the first layer on; no linear is adapted.
    PromptTuning,
    /// Prefix tuning (`tuners/prefix_tuning/model.py` `PrefixEncoder` without
    /// projection: nn.Embedding(num_virtual_tokens, layers × 2 × kv_dim), the rank
    /// slot holding num_virtual_tokens): each layer's keys and values are the trained
    /// prefix concatenated before the new ones (`DynamicCache.update`), so attention
    /// reads seq + virtual keys under an explicit mask; no linear is adapted.
    PrefixTuning,
    /// LoHa (`tuners/loha/layer.py`): `hada_w1_a` (out × r), `hada_w1_b` (r × in),
    /// `hada_w2_a`, `hada_w2_b`; each forward builds the full delta weight
    /// `(w1a @ w1b) * (w2a @ w2b) * scale` (`HadaWeight`) and adds `F.linear(x, ΔW)`.
    Loha,
    /// OFT (`tuners/oft/layer.py` `OFTRotationModule`, peft 0.21): `r` blocks of
    /// size `in / r` on the input; each block's skew-symmetric generator (its upper
    /// triangle, `bs·(bs−1)/2` trained values) becomes a rotation by the Cayley–Neumann
    /// series; the input is rotated block by block (`einsum`) before the frozen linear.
    Oft,
    /// BOFT (`tuners/boft/layer.py` `Linear`, peft 0.21, `boft_n_butterfly_factor=1`,
    /// the default and what peft forces without its CUDA extension): the rank slot
    /// holds `boft_block_size` b; `boft_R` (in/b blocks of b × b, Cayley-parametrized)
    /// and the output scaling `boft_s` (out × 1) are trained; each forward builds the
    /// full in × in rotation (`block_diag`, two `bmm` with the permutation buffer
    /// `boft_P`, a product with an identity) and runs the frozen linear on the rotated
    /// input.
    Boft,
    /// OSF (`tuners/osf/layer.py` `Linear`, utils.py, peft 0.21): the rank slot holds
    /// the trained rank r = min(out, in) − `effective_rank`; the SVD of the frozen weight
    /// is kept as buffers (`U_high`, `S_high`, `V_high`, the top min(out, in) − r
    /// directions, in the weight's dtype) and trained parameters (`U_low`, `S_low`,
    /// `V_low`); each forward rebuilds the full weight from them and runs `F.linear`
    /// with it (the base layer's weight stays, unused).
    Osf,
}

/// The norms LN tuning trains: peft 0.21 `utils/constants.py`
/// `TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING`, by the role each named
/// module has in the model's block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LnNorms {
    /// The norm before attention (`input_layernorm`, `ln_1`; the one shared norm of a
    /// parallel block).
    pub pre_attn: bool,
    /// The norm before the MLP (`post_attention_layernorm` in llama naming, `ln_2`,
    /// Gemma-2's `pre_feedforward_layernorm`).
    pub pre_mlp: bool,
    /// Gemma-2/3's sandwich norms after each sublayer (`post_attention_layernorm`,
    /// `post_feedforward_layernorm`).
    pub sandwich: bool,
    /// The final norm (`norm`, `ln_f`, `final_layernorm`).
    pub final_norm: bool,
}

/// Where a norm sits in the model, for LN tuning's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormSlot {
    PreAttn,
    PreMlp,
    Sandwich,
    /// q/k norms inside attention: no LN tuning mapping names them.
    Qk,
    Final,
}

impl LnNorms {
    /// peft's default LN tuning targets for `spec`'s model type; `None` when peft has
    /// none (it then asks for `target_modules`).
    pub fn of(spec: &ModelSpec) -> Option<LnNorms> {
        let all3 = LnNorms {
            pre_attn: true,
            pre_mlp: true,
            sandwich: false,
            final_norm: true,
        };
        let shared = matches!(spec.residual, Residual::Parallel { shared_norm: true });
        Some(match spec.family {
            // input_layernorm, post_attention_layernorm, norm / ln_f; gpt2 ln_1, ln_2, ln_f
            Family::Llama | Family::Mistral | Family::Gemma | Family::Bloom | Family::Gpt2 => all3,
            // falcon: input_layernorm (the shared norm of Falcon-7B's parallel block;
            // the two-norm variant names them ln_attn / ln_mlp, not matched), ln_f
            // phi: input_layernorm, final_layernorm; gptj: ln_1, ln_f
            Family::Falcon | Family::Phi | Family::Gptj => LnNorms {
                pre_attn: shared,
                pre_mlp: false,
                ..all3
            },
            Family::Gemma2 | Family::Gemma3Text => LnNorms {
                sandwich: true,
                ..all3
            },
            // qwen2, qwen3: ["post_attention_layernorm"] only
            Family::Qwen2 | Family::Qwen3 => LnNorms {
                pre_attn: false,
                pre_mlp: true,
                sandwich: false,
                final_norm: false,
            },
            _ => return None,
        })
    }

    pub fn has(&self, slot: NormSlot) -> bool {
        match slot {
            NormSlot::PreAttn => self.pre_attn,
            NormSlot::PreMlp => self.pre_mlp,
            NormSlot::Sandwich => self.sandwich,
            NormSlot::Qk => false,
            NormSlot::Final => self.final_norm,
        }
    }

    /// Trained elements: (per decoder layer, the final norm).
    pub fn params(&self, spec: &ModelSpec) -> (u64, u64) {
        let one = match spec.norm {
            NormKind::LayerNorm { bias: true } => 2 * spec.hidden,
            NormKind::OlmoLayerNorm => 0,
            _ => spec.hidden,
        };
        (
            self.per_layer_norms(spec) * one,
            u64::from(self.final_norm) * one,
        )
    }

    /// Trained norm modules per decoder layer.
    pub fn per_layer_norms(&self, spec: &ModelSpec) -> u64 {
        u64::from(self.pre_attn)
            + u64::from(self.pre_mlp)
            + 2 * u64::from(self.sandwich && spec.sandwich_norms)
    }
}

impl Adapter {
    pub const ALL: &'static [Adapter] = &[
        Adapter::Lora,
        Adapter::Dora,
        Adapter::LoraFa,
        Adapter::AdaLora,
        Adapter::Vera,
        Adapter::Ia3,
        Adapter::LnTuning,
        Adapter::PromptTuning,
        Adapter::PrefixTuning,
        Adapter::Loha,
        Adapter::Oft,
        Adapter::Boft,
        Adapter::Osf,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Adapter::Lora => "lora",
            Adapter::Dora => "dora",
            Adapter::LoraFa => "lora-fa",
            Adapter::AdaLora => "adalora",
            Adapter::Vera => "vera",
            Adapter::Ia3 => "ia3",
            Adapter::LnTuning => "ln-tuning",
            Adapter::PromptTuning => "prompt-tuning",
            Adapter::PrefixTuning => "prefix-tuning",
            Adapter::Loha => "loha",
            Adapter::Oft => "oft",
            Adapter::Boft => "boft",
            Adapter::Osf => "osf",
        }
    }

    pub fn accepted() -> String {
        Adapter::ALL
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The variant has a rank (every one but (IA)³ and LN tuning).
    pub fn has_rank(self) -> bool {
        !matches!(
            self,
            Adapter::Ia3 | Adapter::LnTuning | Adapter::PromptTuning | Adapter::PrefixTuning
        )
    }

    /// The variant adapts linears (every one but LN tuning, which trains norms, and
    /// prompt tuning, which trains input embeddings).
    pub fn adapts_linears(self) -> bool {
        !matches!(
            self,
            Adapter::LnTuning | Adapter::PromptTuning | Adapter::PrefixTuning
        )
    }

    /// OFT's block size on `l` at `r` blocks: `in / r` when it divides (peft
    /// `OFTLayer.update_layer` with `oft_block_size=0`), else `None` (peft adjusts
    /// the parameters; not modelled).
    pub fn oft_block(l: &LinearSpec, r: u64) -> Option<u64> {
        (r > 0 && l.in_features.is_multiple_of(r) && l.in_features / r > 1)
            .then(|| l.in_features / r)
    }

    /// BOFT's block count on `l` at block size `b`: `in / b` when `b` divides it
    /// (peft `BOFTLayer.update_layer` raises "in_features must be divisible by
    /// boft_block_size" otherwise), else `None`.
    pub fn boft_blocks(l: &LinearSpec, b: u64) -> Option<u64> {
        (b > 0 && l.in_features.is_multiple_of(b)).then(|| l.in_features / b)
    }

    /// OSF's frozen (`effective_rank`) and trained ranks on `l` when `r` directions
    /// are trained: `(min(out, in) − r, r)`, `None` unless 0 < r < min(out, in)
    /// (peft `OSFLayer.update_layer` needs effective_rank > 0).
    pub fn osf_ranks(l: &LinearSpec, r: u64) -> Option<(u64, u64)> {
        let m = l.in_features.min(l.out_features);
        (r > 0 && r < m).then(|| (m - r, r))
    }

    /// Frozen buffers the adapter keeps per adapted linear `l` at rank `r`:
    /// (elements in the base weight's dtype, fp32 elements).
    ///
    /// - OSF, peft >= 0.21 (`OSFLayer.update_layer`): `U_low_init` (out × r),
    ///   `S_low_init` (r), `V_low_init` (r × in), clones of the trained factors' start,
    ///   plus the high-rank factor that is not square — `U_high` (out × k) when out >
    ///   in, `V_high` (k × in) when out < in — for the gradient projection;
    ///   `osf_reconstruct` (peft < 0.21): `U_high`, `S_high`, `V_high`. All in the
    ///   weight's dtype (`decompose_weight_matrix`; `autocast_adapter_dtype` casts
    ///   parameters only).
    /// - BOFT: the permutation `boft_P` (1 × in × in, `torch.empty` in the default
    ///   fp32, registered outside the adapter dicts, so neither cast nor moved with
    ///   them).
    pub fn frozen_buffers(self, l: &LinearSpec, r: u64, osf_reconstruct: bool) -> (u64, u64) {
        let (i, o) = (l.in_features, l.out_features);
        match (self, Adapter::osf_ranks(l, r)) {
            (Adapter::Osf, Some((k, _))) if osf_reconstruct => (k * (o + i + 1), 0),
            (Adapter::Osf, Some((k, t))) => {
                let high = if o > i {
                    o * k
                } else if o < i {
                    k * i
                } else {
                    0
                };
                (t * (o + i + 1) + high, 0)
            }
            (Adapter::Boft, _) => (0, i * i),
            _ => (0, 0),
        }
    }

    /// The variant trains virtual tokens (the rank slot holds their number).
    pub fn has_virtual_tokens(self) -> bool {
        matches!(self, Adapter::PromptTuning | Adapter::PrefixTuning)
    }

    /// (IA)³ scales the input of a feed-forward module instead of its output. peft's
    /// `TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING` (utils/constants.py,
    /// 0.21) names the MLP's output projection for every decoder family
    /// (`down_proj`, `mlp.c_proj`, `dense_4h_to_h`, `fc2`, `fc_out`).
    pub fn ia3_feedforward(l: &LinearSpec) -> bool {
        l.role == LinearRole::Down
    }

    /// peft's default (IA)³ targets for a model type
    /// (`TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING`, utils/constants.py 0.21),
    /// for the families whose module names are unambiguous leaf names; empty otherwise.
    pub fn ia3_peft_default_targets(model_type: &str) -> &'static [&'static str] {
        match model_type {
            "llama" | "mistral" => &["k_proj", "v_proj", "down_proj"],
            "qwen2" | "qwen3" | "gemma" => &["q_proj", "v_proj", "down_proj"],
            "phi" => &["q_proj", "v_proj", "fc2"],
            "bloom" => &["query_key_value", "dense_4h_to_h"],
            "falcon" => &["query_key_value", "dense_4h_to_h"],
            _ => &[],
        }
    }

    /// Trained and stored elements this adapter adds to the adapted linear `l` at rank
    /// `r` (shared VeRA projections excluded: see [`Adapter::shared_stored`]).
    pub fn per_linear(self, l: &LinearSpec, r: u64) -> (u64, u64) {
        let (i, o) = (l.in_features, l.out_features);
        // a parameter reached through peft's MoE conversion (`ParamWrapper`): lora_A
        // (r·experts × in), lora_B (out × r·experts), the fused gate/up at 2r
        let r = Adapter::param_wrapper_rank(l, r);
        let lora =
            r.saturating_mul(i + o)
                .saturating_mul(if l.via_conversion { l.copies } else { 1 });
        match self {
            Adapter::Lora => (lora, lora),
            // magnitude: `lora_magnitude_vector` of out_features
            Adapter::Dora => (lora + o, lora + o),
            // lora_A (r × in) stays, frozen
            Adapter::LoraFa => (r.saturating_mul(o), lora),
            // lora_E: r × 1, and `ranknum`, a one-element parameter created frozen
            // that requires grad once peft 0.21 has activated the adapter (the trace
            // probe's trainable count; older peft, e.g. the MetaMathQA runs' counts,
            // left it frozen)
            Adapter::AdaLora => (lora + r + 1, lora + r + 1),
            Adapter::Vera => (r + o, r + o),
            Adapter::Ia3 if Adapter::ia3_feedforward(l) => (i, i),
            Adapter::Ia3 => (o, o),
            Adapter::Loha => (2 * lora, 2 * lora),
            Adapter::Oft => {
                let n = Adapter::oft_block(l, r).map_or(0, |bs| r * (bs * (bs - 1) / 2));
                (n, n)
            }
            // boft_R (in/b blocks of b x b) + boft_s (out x 1)
            Adapter::Boft => {
                let n = Adapter::boft_blocks(l, r).map_or(0, |d| d * r * r + o);
                (n, n)
            }
            // U_low (out x r), S_low (r), V_low (r x in); the frozen buffers are
            // counted by `frozen_buffers`
            Adapter::Osf => {
                let n = Adapter::osf_ranks(l, r).map_or(0, |(_, t)| t * (o + i + 1));
                (n, n)
            }
            Adapter::LnTuning | Adapter::PromptTuning | Adapter::PrefixTuning => (0, 0),
        }
    }

    /// The rank peft gives `l` at rank `r`: twice it on a fused gate/up expert
    /// parameter reached by its MoE conversion (`_convert_peft_config_moe` sets
    /// `rank_pattern` and `alpha_pattern` to 2× for the two v4 projections fused into
    /// it), else `r`.
    pub fn param_wrapper_rank(l: &LinearSpec, r: u64) -> u64 {
        if l.via_conversion && l.role == crate::arch::LinearRole::ExpertGateUp {
            2 * r
        } else {
            r
        }
    }

    /// The trained tensors (rows × cols) this adapter adds to `l`: what the optimizer
    /// keeps state for.
    pub fn trained_shapes(self, l: &LinearSpec, r: u64) -> Vec<(u64, u64)> {
        let (i, o) = (l.in_features, l.out_features);
        if l.via_conversion && self == Adapter::Lora {
            let re = Adapter::param_wrapper_rank(l, r) * l.copies;
            return vec![(re, i), (o, re)];
        }
        match self {
            Adapter::Lora => vec![(r, i), (o, r)],
            Adapter::Dora => vec![(r, i), (o, r), (1, o)],
            Adapter::LoraFa => vec![(o, r)],
            Adapter::AdaLora => vec![(r, i), (r, 1), (o, r), (1, 1)],
            Adapter::Vera => vec![(r, 1), (o, 1)],
            Adapter::Ia3 if Adapter::ia3_feedforward(l) => vec![(1, i)],
            Adapter::Ia3 => vec![(o, 1)],
            Adapter::Loha => vec![(o, r), (r, i), (o, r), (r, i)],
            Adapter::Oft => {
                Adapter::oft_block(l, r).map_or(vec![], |bs| vec![(r, bs * (bs - 1) / 2)])
            }
            Adapter::Boft => {
                Adapter::boft_blocks(l, r).map_or(vec![], |d| vec![(d * r, r), (o, 1)])
            }
            Adapter::Osf => {
                Adapter::osf_ranks(l, r).map_or(vec![], |(_, t)| vec![(o, t), (1, t), (t, i)])
            }
            Adapter::LnTuning | Adapter::PromptTuning | Adapter::PrefixTuning => vec![],
        }
    }

    /// Stored elements shared by all adapted linears: VeRA's `vera_A` (r × max in) and
    /// `vera_B` (max out × r), `BufferDict` buffers (`VeraModel._init_vera_A_vera_B`).
    pub fn shared_stored(self, adapted: impl Iterator<Item = LinearSpec>, r: u64) -> u64 {
        if self != Adapter::Vera {
            return 0;
        }
        let (mut i, mut o) = (0, 0);
        for l in adapted {
            i = i.max(l.in_features);
            o = o.max(l.out_features);
        }
        r.saturating_mul(i + o)
    }
}

impl std::str::FromStr for Adapter {
    type Err = Error;
    fn from_str(s: &str) -> Result<Adapter> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "lora" => Ok(Adapter::Lora),
            "dora" => Ok(Adapter::Dora),
            "lora-fa" | "lorafa" => Ok(Adapter::LoraFa),
            "adalora" => Ok(Adapter::AdaLora),
            "vera" => Ok(Adapter::Vera),
            "ia3" => Ok(Adapter::Ia3),
            "ln-tuning" | "lntuning" => Ok(Adapter::LnTuning),
            "prompt-tuning" => Ok(Adapter::PromptTuning),
            "prefix-tuning" => Ok(Adapter::PrefixTuning),
            "loha" => Ok(Adapter::Loha),
            "oft" => Ok(Adapter::Oft),
            "boft" => Ok(Adapter::Boft),
            "osf" => Ok(Adapter::Osf),
            _ => Err(Error::invalid("peft", s, Adapter::accepted())),
        }
    }
}

impl std::fmt::Display for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
