//! A VLM's vision side in the training forward (transformers 5.24 modeling_clip.py
//! `CLIPVisionTransformer`, modeling_llava.py `LlavaModel.get_image_features` and
//! `LlavaMultiModalProjector`): what stays alive after the forward, by what trains.
//!
//! - embeddings: `patch_embedding(pixel_values)` (the convolution keeps its input
//!   when its weight trains), the class token `cat`, `+ position_embedding(...)`
//!   (nothing kept), `pre_layrnorm` (LayerNorm: keeps its input and per-row mean/rstd);
//! - the encoder layers up to the feature layer, each the torch ledger's layer program
//!   on the tower's [`ModelSpec`] (B·images sequences of patches + 1 tokens, no mask);
//!   the layers after it run but nothing reaches the loss through them, so their
//!   graph is freed (`vision_feature_layer` -2: the last layer; `post_layernorm` of
//!   the pooled class token likewise);
//! - the projector: linear_1 keeps its input (a view of the feature layer's whole
//!   output, class token included), gelu its input, linear_2 its input.
//!
//! Checked against `tests/data/oracle/vision.csv` (the trace probe's LLaVA-1.5 tower
//! at depth 2 and 3, 1–2 images, eager/SDPA, no/non-reentrant checkpointing, tower and
//! projector trained or the projector only) by `tests/it/oracle.rs`.

use crate::arch::{Activation, VisionSpec};
use crate::runtime::torch::{layer, LedgerParams, Trainable};
use crate::workload::Device;

/// What trains on the vision side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionTrain {
    /// Nothing: the tower and the projector are frozen (the LM's LoRA only).
    Frozen,
    /// The projector trains, the tower is frozen (LLaVA's stage-2 default).
    Projector,
    /// The tower and the projector train (full fine-tuning).
    Full,
}

/// The vision side's bytes alive after the forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VisionLedger {
    /// Embeddings and pre-layernorm.
    pub embeddings: u64,
    /// One encoder layer (the tower's general layer).
    pub per_layer: u64,
    /// Encoder layers whose graph reaches the features.
    pub layers: u64,
    /// The projector's kept inputs.
    pub projector: u64,
}

impl VisionLedger {
    pub fn total(&self) -> u64 {
        self.embeddings + self.layers * self.per_layer + self.projector
    }
}

/// The vision side of `images` images per sequence for the run `p` (its batch,
/// precision, attention, checkpointing and device; its `trainable` is the LM's).
pub fn saved(v: &VisionSpec, p: &LedgerParams, images: u64, train: VisionTrain) -> VisionLedger {
    if train == VisionTrain::Frozen || images == 0 {
        return VisionLedger::default();
    }
    let b = p.batch.saturating_mul(images);
    let t = v.tower_tokens();
    let h = v.tower.hidden;
    let d = p.precision.compute_dtype().size();
    let tower_trains = train == VisionTrain::Full;
    let mut out = VisionLedger::default();
    if tower_trains {
        // the convolution's input, pre_layrnorm's input and its mean / rstd (input
        // dtype on the CPU, fp32 on CUDA)
        let stat = match p.device {
            Device::Cpu => d,
            Device::Cuda => 4,
        };
        let pixels = b * v.channels * v.image_size * v.image_size * d;
        out.embeddings = pixels + b * t * h * d + 2 * b * t * stat;
        let tp = LedgerParams {
            batch: b,
            seq: t,
            kv_len: t,
            trainable: Trainable::All,
            ..p.clone()
        };
        out.per_layer = layer(&v.tower, &tp, true).saved;
        out.layers = v.feature_layers;
    }
    // the projector (trained in both modes): linear_1's input is a view of the feature
    // layer's output, kept whole; what the activation keeps (gelu: its input;
    // quick_gelu: its input and the sigmoid) and linear_2's input
    let p_tokens = b * v.image_tokens();
    let act_kept = match v.projector_act {
        Activation::QuickGelu => 2,
        _ => 1,
    };
    out.projector = b * t * h * d + (act_kept + 1) * p_tokens * v.projector_out * d;
    out
}
