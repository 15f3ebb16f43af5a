//! A VLM's vision side in the training forward (transformers 5.24 modeling_clip.py
//! `CLIPVisionTransformer`, modeling_llava.py `LlavaModel.get_image_features`,
//! `LlavaMultiModalProjector` and the merge in `LlavaModel.forward`): what stays alive
//! after the forward, by what trains.
//!
//! - embeddings: `patch_embedding(pixel_values)` (the convolution keeps its input,
//!   the batch's `pixel_values`, which like the input ids is not counted), the class
//!   token `cat`, `+ position_embedding(...)`
//!   (nothing kept), `pre_layrnorm` (LayerNorm: keeps its input and per-row mean/rstd
//!   when its weight trains);
//! - the encoder layers up to the feature layer, each the torch ledger's layer program
//!   on the tower's [`ModelSpec`](crate::arch::ModelSpec) (B·images sequences of
//!   patches + 1 tokens, no mask); the layers after it run but nothing reaches the
//!   loss through them, so their graph is freed (`vision_feature_layer` -2: the last
//!   layer; `post_layernorm` of the pooled class token likewise). Under LoRA the first
//!   layer's input needs no gradient (the frozen embeddings'), like the decoder's;
//! - the projector: linear_1 (its input a view of the feature layer's whole output,
//!   class token included, kept whole), the activation, linear_2 — the ledger's linear
//!   program, trained in full or through adapters;
//! - the merge: `inputs_embeds.masked_scatter(special_image_mask, image_features)`
//!   keeps the [b, s, 1] bool mask when the embeddings or the image features need a
//!   gradient.
//!
//! Checked against `tests/data/oracle/vision.csv` (the tower and projector alone) by
//! `tests/it/oracle.rs` and against whole LLaVA steps (`tests/data/trace/vlm.csv`) by
//! `tests/it/trace.rs`.

pub use crate::workload::VisionTrain;

use crate::arch::params::projector_linears;
use crate::arch::{Activation, LinearSpec, Positions, Projector, VisionSpec};
use crate::runtime::torch::{layer, measure, Graph, LayerLedger, LedgerParams, Trainable};
use crate::units::dtype::DType;
use crate::workload::{Device, GradCkpt};

/// The vision side's bytes alive after the forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VisionLedger {
    /// Embeddings and pre-layernorm.
    pub embeddings: u64,
    /// One encoder layer (the tower's general layer).
    pub per_layer: u64,
    /// The first encoder layer (differs under LoRA: its input needs no gradient).
    pub first_layer: u64,
    /// Encoder layers whose graph reaches the features.
    pub layers: u64,
    /// Of the layers after the first, those attending over the whole image in a
    /// windowed tower (Qwen2.5-VL's `fullatt_block_indexes`), and what one keeps.
    pub full_layers: u64,
    pub per_full_layer: u64,
    /// SigLIP's post_layernorm (the features' norm).
    pub post_norm: u64,
    /// The projector's kept tensors.
    pub projector: u64,
    /// The merge's image-token mask (and a hooked embedding leaf, see [`merge`]).
    pub merge: u64,
}

impl VisionLedger {
    pub fn total(&self) -> u64 {
        let rest = self
            .layers
            .saturating_sub(1)
            .saturating_sub(self.full_layers)
            * self.per_layer
            + self.full_layers * self.per_full_layer;
        let first = if self.layers > 0 { self.first_layer } else { 0 };
        self.embeddings + first + rest + self.post_norm + self.projector + self.merge
    }
}

/// Whether the image features need a gradient (something on the vision side trains).
pub fn features_require_grad(train: VisionTrain) -> bool {
    train != VisionTrain::Frozen
}

/// The vision side of `images` images per sequence for the run `p` (its batch,
/// sequence, precision, attention, checkpointing and device; its `trainable` is the
/// language model's: LoRA's targets on the tower under [`VisionTrain::Lora`]).
///
/// Under gradient checkpointing transformers 5.24 also makes the tower's input
/// require grad: `gradient_checkpointing_enable` calls `enable_input_require_grads`
/// for every model whose `main_input_name` is `input_ids` (modeling_utils.py), which
/// hooks the input embeddings of every `PreTrainedModel` inside — the language
/// model's token embedding and the vision model's `patch_embedding`. A frozen
/// convolution's output then becomes a leaf that requires grad (kept by the graph),
/// pre_layrnorm keeps its input, each checkpointed tower layer its input, and the
/// projector's activation its input, even with everything on the vision side frozen.
pub fn saved(v: &VisionSpec, p: &LedgerParams, images: u64, train: VisionTrain) -> VisionLedger {
    if images == 0 || !p.trainable.any() {
        return VisionLedger::default();
    }
    let hooked = p.grad_ckpt != GradCkpt::None;
    let mut out = VisionLedger {
        merge: merge(v, p, train),
        ..VisionLedger::default()
    };
    // every crop through the tower (LLaVA-OneVision's anyres tiles and base)
    let b = p
        .batch
        .saturating_mul(images)
        .saturating_mul(p.image_crops.max(1));
    let t = v.tower_tokens();
    let h = v.tower.hidden;
    let d = p.precision.compute_dtype().size();
    // pre_layrnorm's (and every LayerNorm's) mean / rstd: input dtype on the CPU,
    // fp32 on CUDA
    let stat = match p.device {
        Device::Cpu => d,
        Device::Cuda => 4,
    };
    // Qwen2-VL's tower runs every image's patches as one sequence of b·t rows and
    // attends within each image (`cu_seqlens`: eager/SDPA on each `torch.split` chunk,
    // batch 1)
    let (tb, ts) = if v.native.is_some() {
        (1, b.saturating_mul(t))
    } else {
        (b, t)
    };
    let tp = LedgerParams {
        batch: tb,
        seq: ts,
        kv_len: t,
        trainable: match train {
            VisionTrain::Lora => p.trainable.clone(),
            VisionTrain::Full => Trainable::All,
            VisionTrain::Frozen | VisionTrain::Projector => frozen_with_grad(),
        },
        ..p.clone()
    };
    if train == VisionTrain::Full || hooked {
        // CLIP's pre_layrnorm keeps its input and statistics; the convolution keeps
        // its input, `pixel_values`, the batch's (like the input ids: not counted), or,
        // frozen and hooked, its output is a leaf the graph keeps
        if v.pre_norm {
            out.embeddings = b * t * h * d + 2 * b * t * stat;
        }
        // (Qwen2-VL's first block reads the convolution's output itself: the leaf is
        // that block's checkpointed input, counted with the layer)
        let direct = !v.class_token
            && !v.pre_norm
            && v.tower.positions != Positions::Learned
            && v.window.is_none();
        if train != VisionTrain::Full && !(direct && hooked && v.feature_layers > 0) {
            out.embeddings += b * v.patches() * h * d;
        }
    }
    let stacked = v
        .anyres
        .as_ref()
        .is_some_and(|a| images == 1 || !a.single_image_only);
    if train == VisionTrain::Full && stacked {
        // the anyres path stacks the crops (`torch.cat(_pixel_values_list)` of the
        // [b, crops, c, s, s] batch; LLaVA-OneVision's single-image samples,
        // LLaVA-NeXT's every one): the convolution keeps that copy, not the batch's
        // own tensor
        out.embeddings += b * v.channels * v.image_size * v.image_size * d;
    }
    // SigLIP's post_layernorm over every token: its input and statistics, when its
    // weight trains or its input needs a gradient
    if v.post_norm_used && (train == VisionTrain::Full || train == VisionTrain::Lora || hooked) {
        out.post_norm = b * t * h * d + 2 * b * t * stat;
    }
    out.layers = v.feature_layers;
    // Qwen2.5-VL: the windowed blocks attend within windows (eager's scores: Σ over
    // windows of len², as `kv_len` per patch, exact for whole windows), the others
    // over each image
    let (tw, first_full) = match &v.window {
        Some(win) => {
            let grid = v.native.map_or((0, 0), |n| n.grid);
            let merge = v.native.map_or(1, |n| n.merge);
            let lens = win.window_lengths(grid, v.patch_size, merge);
            let sq: u64 = lens.iter().map(|l| l.saturating_mul(*l)).sum();
            out.full_layers = win
                .full_blocks
                .iter()
                .filter(|&&i| i > 0 && i < v.feature_layers)
                .count() as u64;
            let kv = (sq as f64 / t.max(1) as f64).round() as u64;
            (
                LedgerParams {
                    kv_len: kv.max(1),
                    ..tp.clone()
                },
                win.full_blocks.contains(&0),
            )
        }
        None => (tp.clone(), false),
    };
    let first_p = if first_full { &tp } else { &tw };
    match train {
        VisionTrain::Full => {
            out.per_layer = layer(&v.tower, &tw, true).saved;
            out.per_full_layer = layer(&v.tower, &tp, true).saved;
            out.first_layer = layer(&v.tower, first_p, true).saved;
        }
        VisionTrain::Lora => {
            // frozen embeddings: the first layer's input needs a gradient only when
            // hooked; a checkpointed layer saves its input either way (as the
            // decoder's)
            out.per_layer = layer(&v.tower, &tw, true).saved;
            out.per_full_layer = layer(&v.tower, &tp, true).saved;
            out.first_layer = layer(&v.tower, first_p, hooked).saved;
            if p.grad_ckpt.is_full() {
                out.first_layer = out.first_layer.max(layer(&v.tower, first_p, true).saved);
            }
        }
        VisionTrain::Frozen | VisionTrain::Projector => {
            // frozen layers keep something only checkpointed with a hooked input:
            // the checkpoint's input
            if hooked {
                out.per_layer = layer(&v.tower, &tw, true).saved;
                out.per_full_layer = layer(&v.tower, &tp, true).saved;
                out.first_layer = layer(&v.tower, first_p, true).saved;
            }
        }
    }
    if v.window.is_some() {
        // `hidden_states[window_index]` (IndexBackward keeps the merged-token index,
        // int64) when the patch embedding's output needs a gradient, and the merger
        // output's `[reverse_indices]` when the features do
        let m2 = v.native.map_or(1, |n| n.merge * n.merge).max(1);
        let index = b * t / m2 * DType::I64.size();
        if train == VisionTrain::Full || hooked {
            out.embeddings += index;
        }
        if train != VisionTrain::Frozen || hooked {
            out.embeddings += index;
        }
    }
    if let (Positions::Rope { .. }, true) = (v.tower.positions, out.per_layer > 0) {
        // Qwen2-VL's rotary tables (`Qwen2VLVisionRotaryEmbedding`: cos and sin, fp32,
        // one row per patch), computed once and kept by every layer's rotation
        out.embeddings += 2 * b * t * v.tower.head_dim * DType::F32.size();
    }
    let features_rg = train != VisionTrain::Frozen || hooked;
    if features_rg {
        out.projector = projector(v, &tp, b, train, train != VisionTrain::Projector || hooked);
    }
    out
}

/// Nothing trainable, but inputs that need a gradient (a frozen module on the path of
/// a hooked input): a LoRA run whose targets match no linear.
fn frozen_with_grad() -> Trainable {
    Trainable::Lora {
        rank: 1,
        targets: crate::arch::LoraTargets::Names(Vec::new()),
        adapter: crate::arch::Adapter::Lora,
    }
}

/// The merge (`inputs_embeds.masked_scatter(special_image_mask, image_features)`):
/// the [b, s, 1] bool mask, kept when the embeddings (trained, or hooked by
/// `enable_input_require_grads` under checkpointing) or the image features need a
/// gradient; and, with a frozen embedding under checkpointing, the embedding's output
/// itself — a leaf that requires grad (the hook's `requires_grad_`), kept by the graph,
/// which the scatter copies into a new first-layer input (a text model's first layer
/// reads that leaf directly).
fn merge(v: &VisionSpec, p: &LedgerParams, train: VisionTrain) -> u64 {
    let embeds_rg = super::embedding_output_requires_grad(p);
    let mask = if embeds_rg || features_require_grad(train) {
        p.batch * p.seq * DType::Bool.size()
    } else {
        0
    };
    let leaf = if embeds_rg && !matches!(p.trainable, Trainable::All) {
        p.batch * p.seq * v.projector_out * p.resid_dtype().size()
    } else {
        0
    };
    mask + leaf
}

/// What the projector keeps (`x_rg`: the features need a gradient).
/// - LLaVA: linear_1 → activation → linear_2 as the ledger's linear program over the
///   image tokens (trained in full, through adapters, or frozen), with the input's
///   whole storage (class token included) when linear_1 keeps it;
/// - Gemma-3 (`Gemma3MultiModalProjector.forward`): the features' `contiguous()` copy
///   [b, hidden, side, side], which `avg_pool2d` keeps for its backward; the RMSNorm
///   of the pooled tokens and the matmul with the projection parameter as the
///   ledger's norm and linear programs (the parameter is no nn.Linear: adapters never
///   reach it).
fn projector(v: &VisionSpec, tp: &LedgerParams, b: u64, train: VisionTrain, x_rg: bool) -> u64 {
    let trained = matches!(train, VisionTrain::Full | VisionTrain::Projector);
    // tokens per crop: LLaVA's projector maps every crop's features (OneVision packs
    // and unpads them afterwards: views, copies and concatenations nothing keeps);
    // Gemma-3's norm and projection run on the pooled tokens
    let seq = match v.projector {
        Projector::Mlp { .. } => v.crop_tokens(),
        Projector::Pooled { tokens, .. } => tokens,
        // the merged rows (merge² patches each)
        Projector::Merger { .. } => v.image_tokens(),
    };
    let pp = LedgerParams {
        batch: b,
        seq,
        kv_len: seq,
        trainable: match (train, v.projector) {
            (VisionTrain::Lora, Projector::Mlp { .. } | Projector::Merger { .. }) => {
                tp.trainable.clone()
            }
            _ if trained => Trainable::All,
            _ => frozen_with_grad(),
        },
        // the projector is not checkpointed (the tower's layers are)
        grad_ckpt: GradCkpt::None,
        ..tp.clone()
    };
    let d = pp.precision.compute_dtype();
    match v.projector {
        Projector::Mlp { act, .. } => {
            let lins = projector_linears(v);
            let mut g = Graph::new(&pp);
            let x = g.input(v.tower.hidden, d, x_rg);
            let y = g.linear(x, &lins[0]);
            let y = g.act(y, act);
            let y = g.linear(y, &lins[1]);
            let l: LayerLedger = measure(&g, y, &pp);
            let input_kept = l.tensors.iter().any(|t| t.name == "layer input" && t.saved);
            let cls = if input_kept && v.class_token && v.drop_cls && b == 1 {
                // `selected_image_feature[:, 1:]` is a view, and for one crop F.linear
                // flattens it without a copy: the class token's row stays with it (for
                // several crops the flattening copies the kept rows, which the program
                // counts)
                v.tower.hidden * d.size()
            } else {
                0
            };
            l.saved + cls
        }
        Projector::Merger { merge } => {
            // ln_q over the tower's width (rows: every patch), `.view(-1, merge² h)`
            // (a view), mlp.0 → GELU → mlp.2: the ledger's norm and linear programs on
            // the merged rows
            let lins = projector_linears(v);
            let m2 = merge * merge;
            let mut g = Graph::new(&pp);
            let x = g.input(v.tower.hidden * m2, d, x_rg);
            let y = g.norm(
                x,
                v.tower.hidden,
                v.tower.norm,
                crate::arch::adapter::NormSlot::Final,
            );
            let y = g.linear(y, &lins[0]);
            let y = g.act(y, Activation::Gelu);
            let y = g.linear(y, &lins[1]);
            measure(&g, y, &pp).saved
        }
        Projector::Pooled { norm, .. } => {
            let h = v.tower.hidden;
            let pooled_input = if x_rg || trained {
                b * h * v.patches() * d.size()
            } else {
                0
            };
            let proj = LinearSpec {
                name: "mm_input_projection_weight",
                in_features: h,
                out_features: v.projector_out,
                bias: false,
                role: crate::arch::LinearRole::Up,
                copies: 1,
                via_conversion: false,
                shadowed: false,
            };
            let mut g = Graph::new(&pp);
            let x = g.input(h, d, x_rg);
            let y = g.norm(x, h, norm, crate::arch::adapter::NormSlot::Final);
            let y = g.linear(y, &proj);
            measure(&g, y, &pp).saved + if x_rg { pooled_input } else { 0 }
        }
    }
}
