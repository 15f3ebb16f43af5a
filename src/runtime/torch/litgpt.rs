//! litgpt's own model code (litgpt 0.4.12–0.4.13 `model.py` / `lora.py`, run by Lightning
//! Fabric `bf16-true`), op by op, on the same [`Graph`] as the transformers programs.
//!
//! What differs from a transformers model of the same checkpoint
//! (`scripts/convert_hf_checkpoint.py` maps the weights):
//! - one fused `attn` linear for q, k and v (interleaved per query group);
//!   `CausalSelfAttention.forward` views it as `(B, T, groups, q_per_kv + 2, hs)`,
//!   permutes and splits it. `q.reshape(B, -1, T, hs)` copies unless there is one query
//!   head per group (MHA: a view); k and v are `expand`ed to the query heads and
//!   reshaped — a copy for grouped queries, a view for MHA and MQA (the merged dims are
//!   of size one or stride zero). So with MHA or MQA the tensor SDPA keeps as v is a
//!   view of the fused output, which stays alive whole.
//! - `apply_rope` on `q[..., :rope_n_elem]` multiplies by the fp32 `cos`/`sin` buffers
//!   (`build_rope_cache` returns fp32; `fit()` rebuilds them after Fabric's bf16
//!   conversion when it sets `model.max_seq_length`), so the rotation runs in fp32 and is
//!   cast back, then `torch.cat` with the pass-through part makes new q and k (nothing
//!   of the rotation is saved: the muls keep only the buffers).
//! - SDPA's output (in q's memory order, [b, h, s, d]) is transposed and reshaped: a copy.
//! - `RMSNorm` multiplies by `weight.float()` (Gemma: `(1 + weight).float()`) in fp32
//!   and casts back; `GptNeoxMLP` runs one `gelu(approximate=...)`;
//!   `LLaMAMLP`/`GemmaMLP` keep separate `fc_1`/`fc_2` (also for Phi-3).
//! - LoRA (`lora.py`): `LoRALinear` is `x @ A.T @ B.T * scaling` on `lora_dropout(x)`
//!   (the same saves as peft's path in the model dtype); the fused `LoRAQKVLinear` has
//!   one dropout, one `lora_A` of `r × enabled` rows, a grouped `conv1d` for `lora_B`
//!   (per-part convs and a `cat` under grouped queries) and `zero_pad` into the full
//!   qkv width when not all of q, k, v are adapted.
//! - The output head is untied (the converter copies the embedding into `lm_head`), and
//!   Fabric's `_FabricModule.forward` (`lightning/fabric/wrappers.py`) converts the
//!   returned logits to `torch.get_default_dtype()` (fp32) — a copy the training loop
//!   (`finetune/*.py fit`) holds through `fabric.backward`. `finetune/lora.py` chunks
//!   the head (`lm_head_chunk_size=128`) and the loss (`chunked_cross_entropy`, one
//!   `cross_entropy` per chunk on the fp32 logits); `finetune/full.py` does not chunk the
//!   head and splits the reshaped, shifted logits into 128-row chunks.

use super::{Graph, Kind, LedgerParams, NonLayer, T};
use crate::arch::adapter::NormSlot;
use crate::arch::{Activation, LinearRole, LinearSpec, MlpKind, ModelSpec, NormKind, Residual};
use crate::units::dtype::DType;

/// litgpt `finetune/lora.py`: `model(input_ids, lm_head_chunk_size=128)`.
pub const LM_HEAD_CHUNK: u64 = 128;

/// The norm litgpt builds for `kind`: its `RMSNorm` multiplies by `weight.float()` (or
/// `(1 + weight).float()`) in fp32 and casts back, for every family.
fn norm_kind(kind: NormKind) -> NormKind {
    match kind {
        NormKind::RmsNorm { offset_one, .. } => NormKind::RmsNorm {
            offset_one,
            weight_fp32: true,
        },
        k => k,
    }
}

/// The transformers linear of `role` (q, k, v or a fused qkv) among `lins`.
fn find(lins: &[LinearSpec], role: LinearRole) -> Option<LinearSpec> {
    lins.iter().find(|l| l.role == role).copied()
}

impl Graph<'_> {
    /// An op reading `inputs` that makes one tensor and saves nothing.
    fn plain(&mut self, name: &'static str, inputs: &[T], elems: u64, dtype: DType) -> T {
        self.begin(inputs);
        let rg = inputs.iter().any(|t| self.rg(*t));
        self.out(name, elems, dtype, rg, Kind::Other)
    }

    /// Which of q, k, v the run adapts: a target naming the transformers q/k/v
    /// projections, or the fused one (all three).
    fn lora_qkv(&self, lins: &[LinearSpec]) -> Option<(u64, [bool; 3])> {
        let super::Trainable::Lora { rank, targets, .. } = &self.p.trainable else {
            return None;
        };
        let on = |role| find(lins, role).is_some_and(|l| targets.matches(&l));
        let e = if on(LinearRole::Qkv) {
            [true; 3]
        } else {
            [on(LinearRole::Q), on(LinearRole::K), on(LinearRole::V)]
        };
        e.iter().any(|x| *x).then_some((*rank, e))
    }

    /// litgpt `LoRAQKVLinear.forward` (lora.py): the base fused projection plus, when
    /// some of q, k, v are adapted, `zero_pad(conv1d(lora_A(dropout(x)))) * scaling`.
    fn litgpt_qkv(&mut self, spec: &ModelSpec, x: T, base: &LinearSpec, lins: &[LinearSpec]) -> T {
        let pretrained = self.base_linear(x, base);
        let Some((r, enabled)) = self.lora_qkv(lins) else {
            return pretrained;
        };
        let d = self.compute();
        let n = self.tokens;
        let widths = [
            spec.heads * spec.head_dim,
            spec.kv_heads * spec.head_dim,
            spec.kv_heads * spec.head_dim,
        ];
        let n_en = enabled.iter().filter(|e| **e).count() as u64;
        let out_en: u64 = widths
            .iter()
            .zip(enabled)
            .filter(|(_, e)| *e)
            .map(|(w, _)| w)
            .sum();
        let xd = self.dropout(x, self.p.lora_dropout);
        // after_A = F.linear(dropout(x), lora_A): lora_A is (r · enabled, in)
        self.begin(&[xd]);
        self.save(xd);
        self.param_grads
            .push((self.op, r * n_en * base.in_features * d.size()));
        let a = self.out("lora_A", n * r * n_en, d, true, Kind::Matmul);
        // conv1d(after_A.transpose(-2, -1), lora_B.unsqueeze(-1)): saves its input (a
        // view of after_A); with grouped queries one conv per enabled part, then a cat
        let grouped = spec.kv_heads != spec.heads && n_en > 1;
        let b = if grouped {
            let mut parts = Vec::new();
            for (w, _) in widths.iter().zip(enabled).filter(|(_, e)| *e) {
                self.begin(&[a]);
                self.save(a);
                parts.push(self.out("lora_B part", n * w, d, true, Kind::Matmul));
            }
            self.param_grads.push((self.op, out_en * r * d.size()));
            self.plain("lora_B cat", &parts, n * out_en, d)
        } else {
            self.begin(&[a]);
            self.save(a);
            self.param_grads.push((self.op, out_en * r * d.size()));
            self.out("lora_B", n * out_en, d, true, Kind::Matmul)
        };
        let full = base.out_features;
        let padded = if enabled.iter().all(|e| *e) {
            b
        } else {
            // result = x.new_zeros(..., out_features).index_copy_(-1, lora_ind, x):
            // IndexCopyBackward keeps the source
            self.begin(&[b]);
            self.save(b);
            self.out("zero_pad", n * full, d, true, Kind::Other)
        };
        let scaled = self.plain("lora scaling", &[padded], n * full, d);
        let y = self.add("lora add", pretrained, scaled);
        self.hold(&[x]);
        y
    }

    /// litgpt `CausalSelfAttention.forward` on the normed input `n`.
    fn litgpt_attention(&mut self, spec: &ModelSpec, lins: &[LinearSpec], n: T) -> T {
        let (nh, ng, hs) = (spec.heads, spec.kv_heads, spec.head_dim);
        let h = spec.hidden;
        let qkv_lin = LinearSpec {
            name: "attn",
            in_features: h,
            out_features: (nh + 2 * ng) * hs,
            bias: spec.qkv_bias,
            role: LinearRole::Qkv,
            copies: 1,
            via_conversion: false,
            shadowed: false,
        };
        let qkv = self.litgpt_qkv(spec, n, &qkv_lin, lins);
        let d = self.dt(qkv);
        let tok = self.tokens;
        // q.reshape(B, -1, T, hs): a view only with one query per group
        let q = if nh == ng {
            qkv
        } else {
            self.plain("q reshape", &[qkv], tok * nh * hs, d)
        };
        // k/v expand(..., q_per_kv, ...) + reshape: a view for MHA (no expansion) and
        // MQA (a size-one group dim merges with the stride-0 one), else a copy
        let kv_view = ng == nh || ng == 1;
        let (k, v) = if kv_view {
            (qkv, qkv)
        } else {
            (
                self.plain("k expand reshape", &[qkv], tok * nh * hs, d),
                self.plain("v expand reshape", &[qkv], tok * nh * hs, d),
            )
        };
        let rn = match spec.positions {
            crate::arch::Positions::Rope { rotary_dim } => rotary_dim,
            _ => 0,
        };
        let q = self.litgpt_rope(q, nh, hs, rn);
        // k carries the query heads after the expansion (MQA, GQA) or its own (MHA)
        let k = self.litgpt_rope(k, nh, hs, rn);
        let mut s = spec.clone();
        // litgpt calls SDPA with is_causal=True and no mask (no sliding window here)
        s.mask_always_materialized = false;
        s.sliding_window = None;
        let any_rg = self.rg(q) || self.rg(k) || self.rg(v);
        let out = if spec.attn_softcap.is_some() {
            self.litgpt_softcap_attention(nh, hs, [q, k, v], any_rg)
        } else {
            self.fused_attention(&s, [q, k, v], any_rg)
        };
        // y.transpose(1, 2).reshape(B, T, C): q came from a cat, the output is head-major
        let y = self.plain("attn transpose", &[out], tok * nh * hs, d);
        let o = self.linear(y, &find(lins, LinearRole::O).expect("an output projection"));
        self.hold(&[n]);
        o
    }

    /// `CausalSelfAttention.scaled_dot_product_attention` with
    /// `attention_logit_softcapping` (Gemma-2): `q @ k.mT * scale`, `tanh(s / cap) * cap`,
    /// an explicit additive mask (`torch.ones(T, T).triu(1)`, masked_fill_), `softmax(...,
    /// dtype=torch.float).to(q.dtype)`, `@ v`.
    fn litgpt_softcap_attention(&mut self, nh: u64, hs: u64, [q, k, v]: [T; 3], rg: bool) -> T {
        let d = self.compute();
        let (b, t) = (self.p.batch, self.p.seq);
        let s = b * nh * t * self.p.kv_len;
        self.begin(&[q, k]);
        self.save_if(q, rg);
        self.save_if(k, rg);
        self.in_attn_core = true;
        let qk = self.out("q @ k.mT", s, d, rg, Kind::AttnCore);
        let scaled = self.plain("* scale", &[qk], s, d);
        let div = self.plain("/ softcap", &[scaled], s, d);
        let th = self.unary_save_out("tanh", div, d);
        let capped = self.plain("* softcap", &[th], s, d);
        // the mask: ones(T, T, dtype=q.dtype).triu(diagonal=1), masked_fill_(-inf)
        let mask = self.plain("mask", &[], t * self.p.kv_len, d);
        let masked = self.plain("+ mask", &[capped, mask], s, d);
        let sm = self.unary_save_out("softmax", masked, DType::F32);
        let probs = self.cast(sm, d);
        self.in_attn_core = false;
        self.begin(&[probs, v]);
        self.save_if(probs, rg);
        self.save_if(v, rg);
        self.out("scores @ v", b * t * nh * hs, d, rg, Kind::Matmul)
    }

    /// `apply_rope(x[..., :rn], cos, sin)` with fp32 buffers, then the `cat` with the
    /// pass-through dims: a new tensor of `heads` heads.
    fn litgpt_rope(&mut self, x: T, heads: u64, hs: u64, rn: u64) -> T {
        let d = self.dt(x);
        let tok = self.tokens;
        if rn == 0 {
            return x;
        }
        let rot = tok * heads * rn;
        let xc = self.plain("x * cos", &[x], rot, DType::F32);
        let neg = self.plain("-x2", &[x], rot / 2, d);
        let rotated = self.plain("cat(-x2, x1)", &[neg, x], rot, d);
        let xs = self.plain("rotated * sin", &[rotated], rot, DType::F32);
        let sum = self.add("roped", xc, xs);
        let roped = self.cast(sum, d);
        self.plain("cat(roped, x[..., rn:])", &[roped, x], tok * heads * hs, d)
    }

    /// litgpt's MLP classes on the normed input `n`.
    fn litgpt_mlp(&mut self, spec: &ModelSpec, lins: &[LinearSpec], n: T) -> T {
        let i = spec.intermediate;
        let prod = match spec.mlp {
            MlpKind::Gated { .. } => {
                // LLaMAMLP / GemmaMLP: fc_1 and fc_2 (the converter splits a fused
                // gate_up), act(x_fc_1) * x_fc_2
                let gate = LinearSpec {
                    name: "gate_proj",
                    in_features: spec.hidden,
                    out_features: i,
                    bias: spec.mlp_bias,
                    role: LinearRole::Gate,
                    copies: 1,
                    via_conversion: false,
                    shadowed: false,
                };
                let up = LinearSpec {
                    name: "up_proj",
                    role: LinearRole::Up,
                    ..gate
                };
                // LoRA on fc_1 / fc_2 when the target names the gate, up or fused
                // projection
                let (g_lin, u_lin) = match find(lins, LinearRole::GateUp) {
                    Some(gu) => (
                        LinearSpec {
                            name: gu.name,
                            ..gate
                        },
                        LinearSpec {
                            name: gu.name,
                            ..up
                        },
                    ),
                    None => (gate, up),
                };
                let g = self.linear(n, &g_lin);
                let a = self.act(g, litgpt_act(spec.act));
                let u = self.linear(n, &u_lin);
                self.mul("act*up", a, u)
            }
            MlpKind::Plain => {
                let f = self.linear(n, &find(lins, LinearRole::Up).expect("an up projection"));
                self.act(f, litgpt_act(spec.act))
            }
        };
        let out = self.linear(
            prod,
            &find(lins, LinearRole::Down).expect("a down projection"),
        );
        self.hold(&[n]);
        out
    }
}

/// litgpt's activation for a transformers one: one `gelu(approximate=...)` op for every
/// GELU variant (`GptNeoxMLP`, `GemmaMLP`).
fn litgpt_act(a: Activation) -> Activation {
    match a {
        Activation::GeluNew | Activation::BloomGelu | Activation::GeluTanh => Activation::Gelu,
        a => a,
    }
}

/// One litgpt `Block` (model.py): norms, attention, MLP and the residual adds, for the
/// residual structures litgpt has (sequential, parallel with a shared or a second norm).
pub(super) fn layer_program<'a>(
    spec: &ModelSpec,
    p: &'a LedgerParams,
    input_rg: bool,
) -> (Graph<'a>, T) {
    let mut g = Graph::new(p);
    let resid = p.resid_dtype();
    let h = spec.hidden;
    let x = g.input(h, resid, input_rg);
    let lins = spec.layer_linears();
    let nk = norm_kind(spec.norm);
    let out = match spec.residual {
        Residual::Parallel { shared_norm } => {
            let n1 = g.norm(x, h, nk, NormSlot::PreAttn);
            let a = g.litgpt_attention(spec, &lins, n1);
            let n2 = if shared_norm {
                n1
            } else {
                g.norm(x, h, nk, NormSlot::PreMlp)
            };
            let m = g.litgpt_mlp(spec, &lins, n2);
            let ma = g.add("mlp + attn", m, a);
            g.add("residual", ma, x)
        }
        _ => {
            let n1 = g.norm(x, h, nk, NormSlot::PreAttn);
            let mut a = g.litgpt_attention(spec, &lins, n1);
            if spec.sandwich_norms {
                a = g.norm(a, h, nk, NormSlot::Sandwich);
            }
            let h1 = g.add("residual", a, x);
            let n2 = g.norm(h1, h, nk, NormSlot::PreMlp);
            let mut m = g.litgpt_mlp(spec, &lins, n2);
            if spec.sandwich_norms {
                m = g.norm(m, h, nk, NormSlot::Sandwich);
            }
            g.add("residual", m, h1)
        }
    };
    g.hold(&[x]);
    (g, out)
}

/// litgpt's final norm, head and loss (see the module doc) into `nl`.
pub(super) fn head_and_loss(spec: &ModelSpec, p: &LedgerParams, nl: &mut NonLayer) {
    let training = p.trainable.any();
    let (b, t, v) = (p.batch, p.seq, spec.vocab);
    let tokens = b * t;
    let p_head = super::head_params(p);
    let mut g = Graph::new(&p_head);
    let h = spec.hidden;
    let x = g.input(h, p_head.resid_dtype(), training);
    let n = g.norm(x, h, norm_kind(spec.norm), NormSlot::Final);
    let head = spec.head_linear();
    g.linear(n, &head);
    let head_saved: u64 = g
        .nodes
        .iter()
        .filter(|nd| nd.saved_by != u32::MAX)
        .map(|nd| nd.bytes)
        .sum();
    nl.ctx_held = super::ctx_held_bytes(&g, &p_head);
    if !training {
        nl.head_saved = 0;
        nl.loss_saved = 0;
        nl.head_fwd_transient = tokens * v * (2 + 4);
        nl.head_bwd_transient = 0;
        return;
    }
    // Fabric's convert_output: the fp32 logits, held by the loop through backward
    let logits32 = tokens * v * 4;
    // the loss reads all but the last position of every row
    let shifted = b * t.saturating_sub(1);
    // cross_entropy per chunk: log_softmax's fp32 output and the int64 targets
    let lsm = shifted * v * 4 + shifted * 8;
    nl.loss_saved = lsm;
    nl.head_saved = head_saved + lsm;
    nl.held_by_loop = logits32;
    if p.trainable.base_weights() {
        // finetune/full.py: chunked_cross_entropy(logits[..., :-1, :], ...) reshapes
        // the shifted logits (a copy unless b = 1) and splits them into 128-row chunks;
        // backward gathers the chunk gradients (SplitBackward) into one tensor
        // (and, as with LoRA, the previous step's logits meet the new bf16 ones)
        let copy = if b > 1 { shifted * v * 4 } else { 0 };
        nl.head_fwd_transient = copy.max(tokens * v * 2);
        nl.head_bwd_transient = shifted * v * 4;
    } else {
        // finetune/lora.py: the loop's `logits` of the previous step are alive until
        // `model(...)` returns, when the new bf16 chunks and their fp32 copies exist:
        // 4 + 2 + 4 bytes per logit against the 4 + 4 of fp32 logits and log-probs.
        // Backward: one 128-token chunk's gradient through log_softmax and the fp32
        // conversion at a time
        let chunk = b * LM_HEAD_CHUNK.min(t) * v;
        nl.head_fwd_transient = tokens * v * 2;
        nl.head_bwd_transient = chunk * (4 + 4);
    }
}
