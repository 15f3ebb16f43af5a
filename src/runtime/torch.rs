//! The activation ledger: every tensor a decoder layer creates in forward, whether
//! autograd saves it for backward, and how long it lives.
//!
//! A layer is written as a small program of ops (`Graph`), mirroring the HF
//! transformers forward of its family op by op. Each op applies PyTorch's autograd rule
//! for what it saves, *conditioned on which inputs require grad* — so frozen weights
//! (LoRA/QLoRA) and a first layer whose input needs no gradient save less, exactly as
//! autograd does. From the program we read:
//! - `saved`: bytes of distinct storages kept from forward until the layer's backward
//!   (the oracle's `live_per_layer_bytes`);
//! - `fwd_peak`: the highest live total while the layer runs forward (saved tensors of
//!   this layer + transients whose last use has not passed + the layer input);
//! - `bwd_peak`: the highest live total during its backward (saved tensors not yet
//!   released + activation gradients in flight + kernel workspaces).
//!
//! Formulas, per op (bytes = elements × dtype size; T = batch × seq tokens):
//! - `linear(x, W)`: saves x if W is trainable (grad of W needs x); output T×out.
//!   Under autocast: x is cast to half per call (new tensor) and W's half copy is cached
//!   for the whole forward and saved when x requires grad.
//! - peft LoRA (adapters fp32, dropout 0): x32 = x.to(fp32) saved by lora_A, a = x32·Aᵀ
//!   (T×r fp32) saved by lora_B, out = (base(x) + B·a·s).to(dtype).
//! - `mul(a, b)` saves b if a needs grad and a if b needs grad; `pow`, `silu`, `gelu`
//!   save their input; `tanh`, `rsqrt`, `softmax`, `log_softmax` save their output.
//! - `layer_norm` saves input, mean and rstd (fp32 on CUDA, input dtype on CPU).
//! - SDPA/flash: saves q, k, v (k, v un-repeated for GQA), output and the fp32
//!   logsumexp (T×heads×4 B). Eager: QKᵀ saves q and repeated k; softmax (fp32 in
//!   llama-style models) saves probs; probs.to(dtype) and repeated v saved by P·V.
//! - dropout (p > 0) saves its mask (bool on CUDA, input dtype on CPU).
//!
//! - Liveness follows eager Python: a tensor passed to a module call (decoder layer,
//!   attention, MLP, norm, peft LoRA linear) stays referenced until that module
//!   returns, not just until its last use; the final norm's output stays referenced
//!   (`outputs.last_hidden_state`) until the loss is computed.
//!
//! Checkpointing: `full` saves only the layer input and rebuilds the saved set during
//! backward — non-reentrant (`torch.utils.checkpoint`, `use_reentrant=False`, torch
//! 2.15): recomputation starts at the first saved tensor the backward unpacks, after
//! the layer's save-free tail (a LoRA branch's cast/add/scaling) has run its backward,
//! and stops early after the last save; `full-reentrant` (`CheckpointFunction`)
//! recomputes the whole layer first, while only the output gradient waits; `selective` (Megatron, Korthikanti et al. 2022) keeps everything
//! but the attention core (QKᵀ scores, softmax, attention dropout), which it recomputes.
//! This ledger is the `torch` runtime profile; the `candle` profile (every forward
//! intermediate kept until the graph is dropped) is `program` + `tape`.

use crate::arch::adapter::{LnNorms, NormSlot};
use crate::arch::{
    Activation, Adapter, LayerGroup, LinearSpec, LoraTargets, MlpKind, ModelSpec, MoeSpec,
    NormKind, Positions, QkNorm, Residual, RouterKind,
};
use crate::units::dtype::DType;
use crate::workload::{Attn, Device, GradCkpt, Loss, Precision, VisionTrain};

mod litgpt;
pub mod vision;
pub use litgpt::LM_HEAD_CHUNK;

/// What the ledger needs to know about the run.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerParams {
    pub batch: u64,
    /// Query tokens per sequence in this pass.
    pub seq: u64,
    /// Key/value length attended to (= seq in training and prefill).
    pub kv_len: u64,
    pub precision: Precision,
    pub attn: Attn,
    pub grad_ckpt: GradCkpt,
    pub device: Device,
    pub trainable: Trainable,
    pub loss: Loss,
    /// Bytes per element of a trainable base parameter's gradient (2 for bf16, 4 for
    /// fp32 or an fp32 gradient buffer). LoRA adapters always get fp32 gradients.
    pub param_grad_size: u64,
    /// The frozen base linears are bitsandbytes 4-bit ones that keep their input for
    /// backward whenever it needs a gradient (`MatMul4Bit.forward`: `ctx.tensors = (A,
    /// B)` if `any(ctx.needs_input_grad[:2])`, bitsandbytes < 0.43.2; 0.43.2 keeps only
    /// B, PR #1270 "delete useless buffered activation"). The head is never quantized.
    pub quant_keeps_input: bool,
    /// transformers < 4.46 (e.g. 4.44 `LlamaForCausalLM.forward`): `logits =
    /// logits.float()` in the model's forward (the fp32 logits are the output, the
    /// half ones die), then `shift_logits = logits[..., :-1, :].contiguous()` — a second
    /// fp32 copy — into `CrossEntropyLoss`. From 4.46 `loss_utils.ForCausalLMLoss`
    /// upcasts inside the loss and shifts the labels (`nn.functional.pad`) instead.
    pub legacy_causal_lm_loss: bool,
    /// peft's fp32 adapters (`autocast_adapter_dtype=True`): the input is cast to fp32
    /// per adapter; `false`: adapters in the compute dtype, no casts.
    pub lora_fp32: bool,
    /// peft < 0.21's OSF: every adapted linear rebuilds its full weight each forward
    /// (see `Graph::osf_linear`).
    pub osf_reconstruct: bool,
    /// LoRA dropout probability (peft `lora_dropout`, tuners/lora/layer.py 0.21
    /// `Linear.forward`: `lora_B(lora_A(dropout(x)))` on the adapter-dtype input; an
    /// `nn.Identity` when 0): each adapter keeps the mask (when x needs a gradient)
    /// and lora_A keeps the dropped copy instead of x.
    pub lora_dropout: f64,
    /// The run executes litgpt's own model code (`--implementation litgpt`, see
    /// `litgpt.rs`) instead of transformers' modeling files and peft.
    pub litgpt: bool,
    /// Megatron sequence parallelism: tensors of the residual stream (norms, residual
    /// adds, row-parallel outputs) are split across this many tensor-parallel ranks
    /// (1 = off). Tensor parallelism itself is expressed by the caller passing a
    /// sharded `ModelSpec` (heads, kv heads, intermediate and vocab divided by tp).
    pub sp_div: u64,
    /// torch.compile of the loss (torchtune `CEWithChunkedOutputLoss.apply_compile_strategy`
    /// compiles `compute_cross_entropy`, `F.cross_entropy(logits.float(), ...)`): the
    /// partitioner of the joint graph saves the half-precision logits chunk and two fp32
    /// values per row (max, log-sum-exp) and recomputes the softmax in backward, where
    /// eager autograd saves the fp32 log-probabilities (measured with torch 2.15 on CPU:
    /// 2.0005 B vs 8.0003 B per logit received by the pack hook, the eager figure being
    /// one fp32 storage packed twice). Only the chunked loss is affected there; the
    /// decoder layers follow [`compiled_saves`].
    pub compile: bool,
    /// A vision-language model's images per sequence (their image tokens are inside
    /// `seq`; 0: text only) and what trains on the vision side ([`vision::saved`]).
    pub images: u64,
    pub vision: VisionTrain,
    /// Crops each image runs through the tower (LLaVA-OneVision's anyres tiles and
    /// base; 1 otherwise).
    pub image_crops: u64,
    /// Expert parallelism: the routed experts are spread over `ep` ranks and each
    /// (token, expert) row travels to its expert's rank and back (1: off), and the
    /// busiest rank receives `moe_imbalance` × the balanced share of rows.
    pub ep: u64,
    pub moe_imbalance: f64,
}

impl LedgerParams {
    /// Prefix tuning's virtual tokens before every layer's keys and values (0 for any
    /// other recipe); `kv_len` already counts them.
    pub fn prefix_tokens(&self) -> u64 {
        match self.trainable {
            Trainable::Lora {
                adapter: Adapter::PrefixTuning,
                rank,
                ..
            } => rank,
            _ => 0,
        }
    }

    /// dtype of the residual stream (hidden states between layers, rotary tables): the
    /// parameters' fp32 under autocast, else the compute dtype.
    /// A run of `batch` sequences of `seq` tokens (keys as long) with the stock stack:
    /// transformers' current loss path, no quantized base, peft adapters in fp32
    /// without dropout, no sequence parallelism, no compilation, parameter gradients in
    /// the parameters' dtype.
    pub fn plain(
        batch: u64,
        seq: u64,
        precision: Precision,
        attn: Attn,
        grad_ckpt: GradCkpt,
        device: Device,
        trainable: Trainable,
    ) -> LedgerParams {
        LedgerParams {
            quant_keeps_input: false,
            legacy_causal_lm_loss: false,
            lora_fp32: true,
            osf_reconstruct: false,
            lora_dropout: 0.0,
            litgpt: false,
            batch,
            seq,
            kv_len: seq,
            precision,
            attn,
            grad_ckpt,
            device,
            trainable,
            loss: Loss::Standard,
            param_grad_size: precision.param_dtype().size(),
            sp_div: 1,
            compile: false,
            images: 0,
            vision: VisionTrain::Frozen,
            image_crops: 1,
            ep: 1,
            moe_imbalance: 1.0,
        }
    }

    pub fn resid_dtype(&self) -> DType {
        if self.precision.is_amp() {
            DType::F32
        } else {
            self.precision.compute_dtype()
        }
    }
}

/// Which parameters require grad.
#[derive(Debug, Clone, PartialEq)]
pub enum Trainable {
    /// Full fine-tuning / pre-training.
    All,
    /// Only peft adapters (fp32, peft default) on the targeted linears: LoRA or
    /// another tuner (`adapter`).
    Lora {
        rank: u64,
        targets: LoraTargets,
        adapter: Adapter,
    },
    /// Inference: nothing requires grad, nothing is saved.
    Nothing,
}

impl Trainable {
    fn base_weights(&self) -> bool {
        matches!(self, Trainable::All)
    }
    pub fn any(&self) -> bool {
        !matches!(self, Trainable::Nothing)
    }
}

/// One tensor of a layer program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerTensor {
    pub name: &'static str,
    pub bytes: u64,
    pub dtype: DType,
    pub saved: bool,
}

/// Memory behaviour of one decoder layer (or of the non-layer head/loss part).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerLedger {
    /// Bytes kept from forward until this layer's backward.
    pub saved: u64,
    /// Bytes the layer leaves alive until the end of the forward pass but not into
    /// backward (autocast's cached weight copies under checkpointing).
    pub fwd_cache: u64,
    /// Peak live bytes while the layer runs forward, counting its input.
    pub fwd_peak: u64,
    /// Peak live bytes during its backward (saved + gradients in flight + workspaces),
    /// counting the incoming output gradient; for checkpointed layers including the
    /// recomputation.
    pub bwd_peak: u64,
    /// Parameter gradients of this layer already allocated at its backward peak
    /// (included in `bwd_peak`).
    pub bwd_peak_param_grads: u64,
    /// All parameter gradients this layer's backward allocates.
    pub param_grads: u64,
    /// Size of the layer output (the residual stream) — alive between layers.
    pub output_bytes: u64,
    /// Every tensor the forward creates, in order.
    pub tensors: Vec<LedgerTensor>,
    /// Of `saved`: bytes a custom Function's `ctx` keeps (bitsandbytes < 0.43.2
    /// 4-bit linears' inputs), alive until the graph itself is freed.
    pub ctx_held: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Produced by a matmul or attention kernel: kept under selective checkpointing.
    Matmul,
    Other,
    /// The layer's input (owned by the previous layer).
    Input,
    /// Inside the attention core (QKᵀ, softmax, attention dropout): what Megatron's
    /// selective recomputation drops.
    AttnCore,
    /// Autocast's half-precision weight copy: cached until the autocast region (forward
    /// and loss) ends, whether or not autograd saves it.
    Cache,
}

#[derive(Debug, Clone)]
struct Node {
    name: &'static str,
    bytes: u64,
    dtype: DType,
    rg: bool,
    born: u32,
    last_use: u32,
    /// Last op that holds a reference without taking part in autograd (e.g. the
    /// returned logits while the loss is computed); only extends forward liveness.
    held_until: u32,
    /// Smallest op index that saved this node (u32::MAX = not saved).
    saved_by: u32,
    kind: Kind,
    /// Referenced by a custom autograd Function's `ctx` attribute (bitsandbytes <
    /// 0.43.2 `MatMul4Bit`: `ctx.tensors = (A, B)`), not by `save_for_backward`: freed
    /// with the graph, not when its node's backward runs.
    ctx_held: bool,
    /// The tensors the op that made it read (node indices).
    srcs: smallvec::SmallVec<[u32; 3]>,
    /// Read by a matmul or attention kernel (an op whose output is `Kind::Matmul`).
    feeds_kernel: bool,
}

/// A tensor handle in a layer program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct T(usize);

/// A recorded forward program: ops are numbered from 1; the input is born at 0.
struct Graph<'a> {
    nodes: Vec<Node>,
    op: u32,
    p: &'a LedgerParams,
    tokens: u64,
    /// Extra bytes an op's backward needs beyond the gradients (kernel workspaces),
    /// keyed by op index.
    bwd_workspace: Vec<(u32, u64)>,
    /// Parameter gradients allocated by an op's backward (bytes), keyed by op index.
    param_grads: Vec<(u32, u64)>,
    /// While set, new tensors are tagged `Kind::AttnCore`.
    in_attn_core: bool,
    /// Autocast caches trainable weights' half copies (false for Falcon's
    /// `input @ weight.T` linears).
    weight_cache: bool,
    /// The last op whose backward unpacks a saved tensor (an activation or a frozen
    /// parameter): where a non-reentrant checkpoint starts its recomputation.
    last_unpack: u32,
    /// The inputs of the current op (set by `begin`).
    cur_inputs: smallvec::SmallVec<[u32; 3]>,
    /// LN tuning's trained norms (peft's default targets for the model type).
    ln: Option<LnNorms>,
    /// Channels per value head when they differ from the query/key head (latent
    /// attention's `v_head_dim`): the attention output's width per head.
    v_head: Option<u64>,
    /// The layer attends within the sliding window.
    sliding: bool,
}

impl<'a> Graph<'a> {
    fn new(p: &'a LedgerParams) -> Self {
        Graph {
            nodes: Vec::with_capacity(64),
            op: 0,
            p,
            tokens: p.batch * p.seq,
            bwd_workspace: Vec::new(),
            param_grads: Vec::new(),
            in_attn_core: false,
            weight_cache: true,
            last_unpack: 0,
            cur_inputs: smallvec::SmallVec::new(),
            ln: None,
            v_head: None,
            sliding: false,
        }
    }

    fn input(&mut self, per_token: u64, dtype: DType, rg: bool) -> T {
        self.nodes.push(Node {
            name: "layer input",
            bytes: per_token * dtype.size() * self.tokens / self.p.sp_div.max(1),
            dtype,
            rg,
            born: 0,
            last_use: 0,
            held_until: 0,
            saved_by: u32::MAX,
            kind: Kind::Input,
            ctx_held: false,
            srcs: smallvec::SmallVec::new(),
            feeds_kernel: false,
        });
        T(self.nodes.len() - 1)
    }

    fn dt(&self, t: T) -> DType {
        self.nodes[t.0].dtype
    }
    fn rg(&self, t: T) -> bool {
        self.nodes[t.0].rg
    }

    /// Start an op consuming `inputs`.
    fn begin(&mut self, inputs: &[T]) {
        self.op += 1;
        self.cur_inputs.clear();
        for t in inputs {
            self.nodes[t.0].last_use = self.op;
            self.cur_inputs.push(t.0 as u32);
        }
    }

    /// A new tensor of `elems` elements, born at the current op.
    fn out(&mut self, name: &'static str, elems: u64, dtype: DType, rg: bool, kind: Kind) -> T {
        let kind = if self.in_attn_core && kind == Kind::Other {
            Kind::AttnCore
        } else {
            kind
        };
        if kind == Kind::Matmul {
            for &i in &self.cur_inputs {
                self.nodes[i as usize].feeds_kernel = true;
            }
        }
        self.nodes.push(Node {
            name,
            bytes: elems * dtype.size(),
            dtype,
            rg,
            born: self.op,
            last_use: self.op,
            held_until: self.op,
            saved_by: u32::MAX,
            kind,
            ctx_held: false,
            srcs: self.cur_inputs.clone(),
            feeds_kernel: false,
        });
        T(self.nodes.len() - 1)
    }

    /// Keep `ts` referenced through the current op without using them.
    fn hold(&mut self, ts: &[T]) {
        for t in ts {
            self.nodes[t.0].held_until = self.op;
        }
    }

    fn save(&mut self, t: T) {
        let n = &mut self.nodes[t.0];
        n.saved_by = n.saved_by.min(self.op);
        self.last_unpack = self.last_unpack.max(self.op);
    }

    /// The current op saves a parameter for its backward (a frozen weight the input's
    /// gradient needs): no activation bytes, but under non-reentrant checkpointing
    /// unpacking it starts the recomputation (torch/utils/checkpoint.py, 2.15:
    /// `_checkpoint_hook.unpack_hook` recomputes on the first unpack of any holder).
    fn saves_param(&mut self, cond: bool) {
        if cond {
            self.last_unpack = self.last_unpack.max(self.op);
        }
    }

    fn save_if(&mut self, t: T, cond: bool) {
        if cond {
            self.save(t);
        }
    }

    fn elems(&self, t: T) -> u64 {
        self.nodes[t.0].bytes / self.nodes[t.0].dtype.size()
    }

    // ---- element-wise ops -------------------------------------------------------

    /// `x.to(dtype)`: a no-op when the dtype matches; saves nothing.
    fn cast(&mut self, x: T, dtype: DType) -> T {
        if self.dt(x) == dtype {
            return x;
        }
        self.begin(&[x]);
        let e = self.elems(x);
        let rg = self.rg(x);
        self.out("cast", e, dtype, rg, Kind::Other)
    }

    /// Unary op that saves its input (pow, silu, gelu, exp-free activations).
    fn unary_save_in(&mut self, name: &'static str, x: T) -> T {
        self.begin(&[x]);
        let rg = self.rg(x);
        self.save_if(x, rg);
        let (e, d) = (self.elems(x), self.dt(x));
        self.out(name, e, d, rg, Kind::Other)
    }

    /// Unary op that saves its output (tanh, rsqrt, softmax, sigmoid).
    fn unary_save_out(&mut self, name: &'static str, x: T, dtype: DType) -> T {
        self.begin(&[x]);
        let rg = self.rg(x);
        let e = self.elems(x);
        let y = self.out(name, e, dtype, rg, Kind::Other);
        self.save_if(y, rg);
        y
    }

    /// `x * python_float`: a new tensor of x's size; saves nothing.
    fn scalar_mul(&mut self, name: &'static str, x: T) -> T {
        let (e, d) = (self.elems(x), self.dt(x));
        self.unary_plain(name, x, e, d)
    }

    /// Unary op that saves nothing (scalar mul/add, neg, cat of halves, mean...).
    fn unary_plain(&mut self, name: &'static str, x: T, elems: u64, dtype: DType) -> T {
        self.begin(&[x]);
        let rg = self.rg(x);
        self.out(name, elems, dtype, rg, Kind::Other)
    }

    /// `a * b` (both tensors, broadcast to the larger): saves b if a needs grad and a if
    /// b needs grad. Output dtype follows type promotion (the wider of the two).
    fn mul(&mut self, name: &'static str, a: T, b: T) -> T {
        self.begin(&[a, b]);
        let (ra, rb) = (self.rg(a), self.rg(b));
        self.save_if(b, ra);
        self.save_if(a, rb);
        let e = self.elems(a).max(self.elems(b));
        let d = promote(self.dt(a), self.dt(b));
        self.out(name, e, d, ra || rb, Kind::Other)
    }

    /// `a + b`: saves nothing.
    fn add(&mut self, name: &'static str, a: T, b: T) -> T {
        self.begin(&[a, b]);
        let rg = self.rg(a) || self.rg(b);
        let e = self.elems(a).max(self.elems(b));
        let d = promote(self.dt(a), self.dt(b));
        self.out(name, e, d, rg, Kind::Other)
    }

    fn dropout(&mut self, x: T, p: f64) -> T {
        if p <= 0.0 || !self.p.trainable.any() {
            return x;
        }
        self.begin(&[x]);
        let rg = self.rg(x);
        let e = self.elems(x);
        let mask_dt = match self.p.device {
            Device::Cuda => DType::Bool,
            Device::Cpu => self.dt(x),
        };
        let mask = self.out("dropout mask", e, mask_dt, false, Kind::Other);
        self.save_if(mask, rg);
        let d = self.dt(x);
        self.out("dropout", e, d, rg, Kind::Other)
    }

    // ---- linears ----------------------------------------------------------------

    fn compute(&self) -> DType {
        self.p.precision.compute_dtype()
    }

    /// `nn.Linear` / `Conv1D` with an optional peft adapter, per the trainable set.
    fn linear(&mut self, x: T, lin: &LinearSpec) -> T {
        let adapted = match &self.p.trainable {
            Trainable::Lora {
                rank,
                targets,
                adapter,
            } if targets.matches(lin) => Some((*rank, *adapter)),
            _ => None,
        };
        let Some((r, adapter)) = adapted.filter(|(_, a)| a.adapts_linears()) else {
            return self.base_linear(x, lin);
        };
        if adapter == Adapter::Ia3 && Adapter::ia3_feedforward(lin) {
            return self.ia3_input(x, lin);
        }
        if adapter == Adapter::Oft {
            let xr = self.oft_rotate(x, lin, r);
            return self.base_linear(xr, lin);
        }
        if adapter == Adapter::Boft {
            return self.boft_linear(x, lin, r);
        }
        if adapter == Adapter::Osf {
            return self.osf_linear(x, lin, r);
        }
        let base = self.base_linear(x, lin);
        match adapter {
            Adapter::Lora => self.lora_branch(x, lin, r, base),
            Adapter::LoraFa => self.lora_fa_branch(x, lin, r, base),
            Adapter::Dora => self.dora_branch(x, lin, r, base),
            Adapter::AdaLora => self.adalora_branch(x, lin, r, base),
            Adapter::Vera => self.vera_branch(x, lin, r, base),
            Adapter::Ia3 => self.ia3_output(x, lin, base),
            Adapter::Loha => self.loha_branch(x, lin, r, base),
            Adapter::Oft | Adapter::Boft | Adapter::Osf => {
                unreachable!("OFT, BOFT and OSF replace the base call: see linear()")
            }
            Adapter::LnTuning | Adapter::PromptTuning | Adapter::PrefixTuning => base,
        }
    }

    /// The adapters' dtype: fp32 with peft's `autocast_adapter_dtype=True` (and under
    /// autocast, whose parameters are fp32), else the compute dtype.
    fn adapter_dtype(&self) -> DType {
        if self.p.lora_fp32 || self.p.precision.is_amp() {
            DType::F32
        } else {
            self.compute()
        }
    }

    /// LoHa (peft 0.21 `tuners/loha/layer.py` `Linear._get_delta_activations`):
    /// `HadaWeight.apply(w1a, w1b, w2a, w2b, scale)` builds `(w1a @ w1b) * (w2a @
    /// w2b) * scale`, a full out × in weight in the adapter dtype from two same-sized
    /// products (saving only the four factors); `F.linear(x.to(ΔW.dtype), ΔW)` then
    /// saves the cast input (ΔW needs a gradient) and ΔW itself when the input needs
    /// one. Its backward makes `grad_out * scale` and two products of the weight's
    /// size at a time.
    fn loha_branch(&mut self, x: T, lin: &LinearSpec, r: u64, base: T) -> T {
        let ad = self.adapter_dtype();
        let (i, o) = (lin.in_features, lin.out_features);
        self.begin(&[]);
        let w1 = self.out("hada w1a @ w1b", o * i, ad, true, Kind::Other);
        let w2 = self.out("hada w2a @ w2b", o * i, ad, true, Kind::Other);
        self.begin(&[w1, w2]);
        self.param_grads
            .push((self.op, 2 * r * (i + o) * ad.size()));
        self.bwd_workspace.push((self.op, 3 * o * i * ad.size()));
        let dw = self.out("loha delta weight", o * i, ad, true, Kind::Other);
        let xin = self.cast(x, ad);
        self.begin(&[xin, dw]);
        self.save(xin);
        let x_rg = self.rg(xin);
        self.save_if(dw, x_rg);
        let y = self.out("loha out", self.tokens * o, ad, true, Kind::Matmul);
        self.adapter_add(x, base, y)
    }

    /// OFT (peft 0.21 `tuners/oft/layer.py` `Linear.forward`, `OFTRotationModule.
    /// forward`): x cast to the adapter dtype, reshaped to r blocks of `bs` and
    /// rotated by `einsum("...rk,rkc->...rc", x, R)`, whose bmm runs on a block-major
    /// copy of x (saved for R's gradient) and on R (saved for x's gradient when x
    /// needs one); R itself comes from the Cayley–Neumann series over r × bs × bs
    /// matrices; the rotated input is copied back token-major and cast to the compute
    /// dtype for the frozen linear.
    fn oft_rotate(&mut self, x: T, lin: &LinearSpec, r: u64) -> T {
        let ad = self.adapter_dtype();
        let i = lin.in_features;
        let bs = Adapter::oft_block(lin, r).unwrap_or(i);
        // `_cayley_batch` with the default 5 Neumann terms: R = I + 2Q + 2Q² + 2Q³ + Q⁴
        // by `bmm(Q, Q)`, `bmm(Q², Q)`, `bmm(Q³, Q)`, which save Q, Q² and Q³
        let blocks = r * bs * bs;
        self.begin(&[]);
        self.param_grads
            .push((self.op, r * (bs * (bs - 1) / 2) * ad.size()));
        for name in ["oft Q (skew)", "oft Q²", "oft Q³"] {
            let q = self.out(name, blocks, ad, true, Kind::Matmul);
            self.save(q);
        }
        let rot = self.out("oft rotation", blocks, ad, true, Kind::Other);
        let xin = self.cast(x, ad);
        let e = self.elems(xin);
        let xb = self.unary_plain("oft block-major copy", xin, e, ad);
        self.begin(&[xb, rot]);
        self.save(xb);
        let x_rg = self.rg(xb);
        self.save_if(rot, x_rg);
        let yb = self.out("oft rotated", e, ad, true, Kind::Matmul);
        let y = self.unary_plain("oft token-major copy", yb, e, ad);
        let compute = self.compute();
        let y = self.cast(y, compute);
        self.hold(&[x]);
        y
    }

    /// BOFT (peft 0.21 `tuners/boft/layer.py` `Linear.forward`, one butterfly factor,
    /// block size `b`, no `boft_dropout`): `cayley_batch` turns the in/b trained b × b
    /// blocks into rotations (`linalg.solve`, keeping its LU factors, pivots and
    /// result); `block_diag` lays them out as one in × in matrix in the adapter dtype,
    /// cast to x's dtype; the fp32 `boft_P` is copied to x's dtype, which both `bmm`
    /// keep; the product with `torch.eye(in)` keeps the identity; `x @ rotation` keeps x
    /// (and the rotation when x needs a gradient); the frozen linear runs on the rotated
    /// input, and `result * boft_scale` keeps the result for the scale's gradient.
    fn boft_linear(&mut self, x: T, lin: &LinearSpec, b: u64) -> T {
        let ad = self.adapter_dtype();
        let xd = self.dt(x);
        let (i, o) = (lin.in_features, lin.out_features);
        let d = Adapter::boft_blocks(lin, b).unwrap_or(1);
        let blk = d * b * b;
        // boft_rotation = eye(in), boft_scale = ones(out, 1), both in x's dtype
        self.begin(&[]);
        let eye = self.out("boft eye", i * i, xd, false, Kind::Other);
        let ones = self.out("boft ones", o, xd, false, Kind::Other);
        // cayley_batch: skew = 0.5 (R − Rᵀ); solve(I + skew, I − skew, left=False)
        self.begin(&[]);
        self.param_grads.push((self.op, (blk + o) * ad.size()));
        let skew = self.out("boft skew", blk, ad, true, Kind::Other);
        let a = self.unary_plain("boft I + skew", skew, blk, ad);
        let rhs = self.unary_plain("boft I - skew", skew, blk, ad);
        self.begin(&[a, rhs]);
        let lu = self.out("boft solve LU", blk, ad, false, Kind::Other);
        let piv = self.out("boft solve pivots", d * b, DType::I32, false, Kind::Other);
        let q = self.out("boft cayley", blk, ad, true, Kind::Matmul);
        self.save(lu);
        self.save(piv);
        self.save(q);
        // block_diag(*unbind(Q)) (its backward slices: nothing kept), cast to x's dtype
        let bd = self.unary_plain("boft block_diag", q, i * i, ad);
        let bd = self.cast(bd, xd);
        // boft_P.to(x): a copy in x's dtype (none when the buffer already has it)
        self.begin(&[]);
        let perm = if xd == DType::F32 {
            self.out("boft_P", 0, xd, false, Kind::Other)
        } else {
            self.out("boft_P copy", i * i, xd, false, Kind::Other)
        };
        self.begin(&[bd, perm]);
        self.save(perm);
        let m1 = self.out("boft bmm", i * i, xd, true, Kind::Matmul);
        self.begin(&[perm, m1]);
        self.save(perm);
        let m2 = self.out("boft bmm", i * i, xd, true, Kind::Matmul);
        // butterfly_oft_mat @ boft_rotation (the identity): keeps the identity
        self.begin(&[m2, eye]);
        self.save(eye);
        let rot = self.out("boft rotation", i * i, xd, true, Kind::Matmul);
        // boft_s * boft_scale: keeps the ones
        self.begin(&[ones]);
        self.save(ones);
        let scale = self.out("boft scale", o, promote(ad, xd), true, Kind::Other);
        // x @ boft_rotation
        self.begin(&[x, rot]);
        self.save(x);
        let x_rg = self.rg(x);
        self.save_if(rot, x_rg);
        let xr = self.out(
            "boft rotated input",
            self.tokens * i,
            xd,
            true,
            Kind::Matmul,
        );
        // its backward: the rotation's and the butterfly product's gradients (in × in)
        self.bwd_workspace.push((self.op, 2 * i * i * xd.size()));
        let y = self.base_linear(xr, lin);
        let y = if lin.bias {
            let e = self.elems(y);
            self.unary_plain("boft result - bias", y, e, xd)
        } else {
            y
        };
        self.begin(&[y, scale]);
        self.save(y);
        self.save(scale);
        let e = self.elems(y);
        let ys = self.out(
            "boft scaled",
            e,
            promote(xd, self.dt(scale)),
            true,
            Kind::Other,
        );
        let ys = if lin.bias {
            self.unary_plain("boft result + bias", ys, e, self.dt(ys))
        } else {
            ys
        };
        self.cast(ys, xd)
    }

    /// OSF (peft 0.21 `tuners/osf/layer.py` `Linear.forward`, "LoRA-style factored
    /// forward"): the frozen base linear, plus `F.linear(F.linear(x.to(A.dtype), B), A)`
    /// with `A = cat[U_low·S_low, −U_low_init·S_low_init]` (out × 2r) and `B =
    /// cat[V_low; V_low_init]` (2r × in), in the wider of the adapter and weight dtypes:
    /// the first keeps the cast input (and B when the input needs a gradient), the
    /// second keeps its 2r-wide input and A; `U_low·S_low` keeps only parameters.
    /// Backward: the gradient hooks' projections onto the frozen subspace (r × r and
    /// out × r or r × in temporaries). `osf_reconstruct` (peft < 0.21) runs
    /// [`Graph::osf_reconstructed`] instead.
    fn osf_linear(&mut self, x: T, lin: &LinearSpec, r: u64) -> T {
        if self.p.osf_reconstruct {
            return self.osf_reconstructed(x, lin, r);
        }
        let ad = self.adapter_dtype();
        let bd = self.p.precision.param_dtype();
        let (i, o) = (lin.in_features, lin.out_features);
        let t = Adapter::osf_ranks(lin, r).map_or(r, |(_, t)| t);
        let base = self.base_linear(x, lin);
        self.begin(&[]);
        let us = self.out("osf U_low * S_low", o * t, ad, true, Kind::Other);
        self.param_grads
            .push((self.op, t * (o + i + 1) * ad.size()));
        self.bwd_workspace
            .push((self.op, (t * (o + i) + 2 * t * t) * ad.size()));
        let us0 = self.out("osf U_low_init * S_low_init", o * t, bd, false, Kind::Other);
        let us0 = self.unary_plain("osf neg", us0, o * t, bd);
        let wd = promote(ad, bd);
        self.begin(&[us, us0]);
        let a = self.out("osf A (cat)", o * 2 * t, wd, true, Kind::Other);
        self.begin(&[]);
        let b = self.out("osf B (cat)", 2 * t * i, wd, true, Kind::Other);
        let xin = self.cast(x, wd);
        self.begin(&[xin, b]);
        self.save(xin);
        let x_rg = self.rg(xin);
        self.save_if(b, x_rg);
        let h = self.out("osf x @ B^T", self.tokens * 2 * t, wd, true, Kind::Matmul);
        self.begin(&[h, a]);
        self.save(h);
        self.save(a);
        let d = self.out("osf delta", self.tokens * o, wd, true, Kind::Matmul);
        let d = self.cast(d, self.dt(base));
        let y = self.add("osf add", base, d);
        self.hold(&[x]);
        y
    }

    /// OSF before peft 0.21 (`tuners/osf/layer.py` `Linear.forward` at 0.20, utils.py
    /// `reconstruct_weight_matrix`): the weight is rebuilt each forward as
    /// `(U_high·S_high) @ V_high + (U_low·S_low) @ V_low` — the frozen high part in
    /// the buffers' dtype, the trained low part keeping `U_low·S_low` (out × r) for
    /// `V_low`'s gradient — and `F.linear(x.to(W.dtype), W)` keeps the cast input and
    /// the whole rebuilt weight (out × in) when the input needs a gradient. Backward
    /// makes the weight's gradient (out × in) and the gradient hooks' projections
    /// onto the high subspace (k × r and out × r, r × k and r × in).
    fn osf_reconstructed(&mut self, x: T, lin: &LinearSpec, r: u64) -> T {
        let ad = self.adapter_dtype();
        let bd = self.p.precision.param_dtype();
        let (i, o) = (lin.in_features, lin.out_features);
        let (k, t) = Adapter::osf_ranks(lin, r).unwrap_or((0, r));
        self.begin(&[]);
        let hs = self.out("osf U_high * S_high", o * k, bd, false, Kind::Other);
        self.begin(&[hs]);
        let high = self.out("osf high part", o * i, bd, false, Kind::Matmul);
        // U_low * S_low keeps its two parameters (no activation bytes)
        self.begin(&[]);
        let us = self.out("osf U_low * S_low", o * t, ad, true, Kind::Other);
        self.begin(&[us]);
        self.save(us);
        self.param_grads
            .push((self.op, t * (o + i + 1) * ad.size()));
        self.bwd_workspace
            .push((self.op, (t * (o + i) + 2 * k * t) * ad.size()));
        let low = self.out("osf low part", o * i, ad, true, Kind::Matmul);
        let w = self.add("osf weight", high, low);
        let wd = self.dt(w);
        let xin = self.cast(x, wd);
        self.begin(&[xin, w]);
        self.save(xin);
        let x_rg = self.rg(xin);
        self.save_if(w, x_rg);
        self.bwd_workspace.push((self.op, o * i * wd.size()));
        let y = self.out("osf linear", self.tokens * o, wd, true, Kind::Matmul);
        let y = self.cast(y, self.dt(x));
        self.hold(&[x]);
        y
    }

    /// The end of an adapter whose branch `delta` is added to the base output (type
    /// promotion to the adapter dtype) and cast back; the module call holds x.
    fn adapter_add(&mut self, x: T, base: T, delta: T) -> T {
        let compute = self.compute();
        let sum = self.add("adapter add", base, delta);
        let y = self.cast(sum, compute);
        self.hold(&[x]);
        y
    }

    /// LoRA-FA: `lora_B(lora_A(dropout(x)))` with `lora_A` frozen
    /// (peft/optimizers/lorafa.py 0.21 `create_lorafa_optimizer` sets
    /// `requires_grad=False` on every `lora_A`): lora_A saves only its weight, so the
    /// cast input is not kept; lora_B keeps lora_A's output.
    fn lora_fa_branch(&mut self, x: T, lin: &LinearSpec, r: u64, base: T) -> T {
        let ad = self.adapter_dtype();
        let xa = self.cast(x, ad);
        let xa = self.dropout(xa, self.p.lora_dropout);
        let b = self.lora_pair(xa, lin, r, false);
        let scaled = self.scalar_mul("lora scaling", b);
        self.adapter_add(x, base, scaled)
    }

    /// `lora_B(lora_A(x))` on the adapter-dtype input `x`: lora_A keeps x when its
    /// weight is trained (else only its weight, when x needs a gradient), lora_B keeps
    /// lora_A's output; each trained weight gets its gradient.
    fn lora_pair(&mut self, x: T, lin: &LinearSpec, r: u64, a_trained: bool) -> T {
        let ad = self.dt(x);
        self.begin(&[x]);
        let x_rg = self.rg(x);
        if a_trained {
            self.save(x);
            self.param_grads
                .push((self.op, r * lin.in_features * ad.size()));
        } else {
            self.saves_param(x_rg);
        }
        let a = self.out(
            "lora_A",
            self.tokens * r,
            ad,
            a_trained || x_rg,
            Kind::Matmul,
        );
        self.begin(&[a]);
        self.save(a);
        self.param_grads
            .push((self.op, r * lin.out_features * ad.size()));
        self.out(
            "lora_B",
            self.tokens * lin.out_features,
            ad,
            true,
            Kind::Matmul,
        )
    }

    /// DoRA (peft tuners/lora/variants.py `DoraLinearVariant.forward` →
    /// tuners/lora/dora.py `DoraLinearLayer.forward`, 0.21): the LoRA weight is made
    /// by running the adapters on an identity (`lora_B(lora_A(eye(in))).T`), the
    /// frozen weight is copied to the adapter dtype and the row norms of
    /// `W + s·ΔW` computed (detached); then `(m/‖·‖ − 1)·base + (m/‖·‖)·lora·s`. The
    /// products keep the base output (compute dtype) and the LoRA result (adapter
    /// dtype) besides LoRA's own saves; the weight-sized temporaries die with the
    /// forward. With dropout the base result is recomputed `F.linear(dropout(x), W)`
    /// on the adapter-dtype weight copy, which that matmul then keeps.
    fn dora_branch(&mut self, x: T, lin: &LinearSpec, r: u64, base: T) -> T {
        let ad = self.adapter_dtype();
        let (i, o) = (lin.in_features, lin.out_features);
        let xa = self.cast(x, ad);
        // get_lora_weight: x_eye, lora_A(x_eye), lora_B(...) — their graph is only
        // referenced by lora_weight, a local of the forward
        self.begin(&[]);
        let eye = self.out("dora eye", i * i, ad, false, Kind::Other);
        self.begin(&[eye]);
        let ae = self.out("dora lora_A(eye)", i * r, ad, true, Kind::Other);
        self.begin(&[ae]);
        let lw = self.out("dora lora weight", i * o, ad, true, Kind::Other);
        // weight.to(x.dtype): a copy unless the frozen weight already has it
        let w = if self.p.precision.param_dtype() == ad {
            None
        } else {
            self.begin(&[]);
            Some(self.out("dora weight copy", i * o, ad, false, Kind::Other))
        };
        // get_weight_norm: weight + scaling * lora_weight.detach(), its row norms
        self.begin(&[lw]);
        let slw = self.out("dora scaled lora weight", i * o, ad, false, Kind::Other);
        self.begin(&w.into_iter().chain([slw]).collect::<Vec<_>>());
        let sum_w = self.out("dora merged weight", i * o, ad, false, Kind::Other);
        self.begin(&[sum_w]);
        let norm = self.out("dora weight norm", o, ad, false, Kind::Other);
        // magnitude / weight_norm: saves the norm for the magnitude's gradient
        self.begin(&[norm]);
        self.save(norm);
        self.param_grads.push((self.op, o * ad.size()));
        let mns = self.out("dora magnitude scale", o, ad, true, Kind::Other);
        // lora_B(lora_A(x)) as in LoRA (dropout, if any, applied first)
        let xd = self.dropout(xa, self.p.lora_dropout);
        let base_result = if xd == xa {
            base
        } else {
            let w = w.unwrap_or(sum_w);
            self.begin(&[xd, w]);
            let x_rg = self.rg(xd);
            self.save_if(w, x_rg);
            self.out("dora base result", self.tokens * o, ad, x_rg, Kind::Matmul)
        };
        let lora = self.lora_pair(xd, lin, r, true);
        // the temporaries die here, with lora_weight
        self.hold(&[eye, ae, lw]);
        let mns1 = self.unary_plain("dora scale - 1", mns, o, ad);
        let p1 = self.mul("dora scaled base", mns1, base_result);
        let p2 = self.mul("dora scaled lora", mns, lora);
        let p3 = self.scalar_mul("lora scaling", p2);
        let dora = self.add("dora result", p1, p3);
        self.adapter_add(x, base, dora)
    }

    /// AdaLoRA (peft tuners/adalora/layer.py 0.21 `SVDLinear.forward`): `result +=
    /// (dropout(x) @ (lora_A * lora_E).T @ lora_B.T) * scaling / ranknum` — an
    /// in-place add into the base output (no cast back: it keeps the compute dtype).
    /// The first matmul keeps the cast input and the r × in product `lora_A * lora_E`,
    /// the second its r-wide output; `ranknum` requires grad under peft 0.21 (see
    /// `Adapter::per_linear`), so the division keeps its numerator. The orthogonality
    /// penalty AdaLoraModel adds to the loss works on r × r matrices (not counted).
    fn adalora_branch(&mut self, x: T, lin: &LinearSpec, r: u64, base: T) -> T {
        let ad = self.adapter_dtype();
        let (i, o) = (lin.in_features, lin.out_features);
        let xa = self.cast(x, ad);
        let xd = self.dropout(xa, self.p.lora_dropout);
        self.begin(&[]);
        self.param_grads.push((self.op, (r * i + r) * ad.size()));
        let ae = self.out("lora_A * lora_E", r * i, ad, true, Kind::Other);
        self.begin(&[xd, ae]);
        // mm saves x for the product's gradient, the product for x's (if it needs one)
        self.save(xd);
        let x_rg = self.rg(xd);
        self.save_if(ae, x_rg);
        let h = self.out("x @ (A*E)^T", self.tokens * r, ad, true, Kind::Matmul);
        self.begin(&[h]);
        self.save(h);
        self.param_grads.push((self.op, r * o * ad.size()));
        let y = self.out("@ lora_B^T", self.tokens * o, ad, true, Kind::Matmul);
        let s = self.scalar_mul("lora scaling", y);
        self.begin(&[s]);
        self.save(s);
        self.param_grads.push((self.op, ad.size()));
        let d = self.out("/ ranknum", self.tokens * o, ad, true, Kind::Other);
        // result += d (in place)
        self.begin(&[base, d]);
        self.nodes[base.0].rg = true;
        self.hold(&[x]);
        base
    }

    /// VeRA (peft tuners/vera/layer.py 0.21 `Linear.forward`): `result + lambda_b *
    /// F.linear(lambda_d * F.linear(dropout(x), A), B)` on slices of the frozen shared
    /// `vera_A`/`vera_B` buffers: the frozen matmuls keep no activation; the two
    /// trained scalings keep their r-wide and out-wide inputs.
    fn vera_branch(&mut self, x: T, lin: &LinearSpec, r: u64, base: T) -> T {
        let ad = self.adapter_dtype();
        let o = lin.out_features;
        let xa = self.cast(x, ad);
        let xd = self.dropout(xa, self.p.lora_dropout);
        self.begin(&[xd]);
        let x_rg = self.rg(xd);
        self.saves_param(x_rg);
        let h1 = self.out("vera_A", self.tokens * r, ad, x_rg, Kind::Matmul);
        self.begin(&[h1]);
        self.save(h1);
        self.param_grads.push((self.op, r * ad.size()));
        let h2 = self.out("lambda_d *", self.tokens * r, ad, true, Kind::Other);
        self.begin(&[h2]);
        self.saves_param(true);
        let h3 = self.out("vera_B", self.tokens * o, ad, true, Kind::Matmul);
        self.begin(&[h3]);
        self.save(h3);
        self.param_grads.push((self.op, o * ad.size()));
        let h4 = self.out("lambda_b *", self.tokens * o, ad, true, Kind::Other);
        self.adapter_add(x, base, h4)
    }

    /// (IA)³ on a non-feed-forward linear (peft tuners/ia3/layer.py 0.21
    /// `Linear.forward`): `(result * ia3_l).to(result.dtype)` — the product keeps the
    /// base output for the vector's gradient.
    fn ia3_output(&mut self, x: T, lin: &LinearSpec, base: T) -> T {
        let ad = self.adapter_dtype();
        let o = lin.out_features;
        let compute = self.compute();
        self.begin(&[base]);
        self.save(base);
        self.param_grads.push((self.op, o * ad.size()));
        let d = promote(self.dt(base), ad);
        let p = self.out("ia3 scaling", self.tokens * o, d, true, Kind::Other);
        let y = self.cast(p, compute);
        self.hold(&[x]);
        y
    }

    /// (IA)³ on a feed-forward output projection: `x.to(ia3 dtype) * ia3_l`, cast
    /// back, into the frozen base linear — the product keeps the cast input.
    fn ia3_input(&mut self, x: T, lin: &LinearSpec) -> T {
        let ad = self.adapter_dtype();
        let i = lin.in_features;
        let in_dt = self.dt(x);
        let xa = self.cast(x, ad);
        self.begin(&[xa]);
        self.save(xa);
        self.param_grads.push((self.op, i * ad.size()));
        let p = self.out("ia3 scaling", self.tokens * i, ad, true, Kind::Other);
        let interm = self.cast(p, in_dt);
        let y = self.base_linear(interm, lin);
        self.hold(&[x]);
        y
    }

    /// The base projection `x·Wᵀ (+ b)`: saves x when W is trainable (under autocast its
    /// half copy; the weight copy is saved when x requires grad), allocates W's
    /// gradient, and the output (÷ sp for a row-parallel linear under sequence
    /// parallelism, after the column-parallel input's all-gather otherwise).
    fn base_linear(&mut self, x: T, lin: &LinearSpec) -> T {
        use crate::arch::LinearRole;
        let weight_trainable = self.p.trainable.base_weights();
        let compute = self.compute();
        // Under autocast the input is cast per call; the half weight copy is cached.
        let xin = if self.p.precision.is_amp() {
            self.cast(x, compute)
        } else {
            x
        };
        self.begin(&[xin]);
        let x_rg = self.rg(xin);
        // transformers' bitsandbytes integration leaves the head unquantized
        // (`get_keys_to_not_convert`); Lightning's BitsandbytesPrecision replaces every
        // nn.Linear, litgpt's head included
        // an MoE router is not an nn.Linear: bitsandbytes leaves it unquantized
        let quant_keeps = self.p.quant_keeps_input
            && x_rg
            && (lin.role != LinearRole::Head || self.p.litgpt)
            && !lin.role.is_moe_parameter();
        self.save_if(xin, weight_trainable || quant_keeps);
        if quant_keeps {
            self.nodes[xin.0].ctx_held = true;
        }
        self.saves_param(x_rg);
        if self.p.precision.is_amp() {
            self.autocast_weight(lin, x_rg, weight_trainable);
        }
        let out_rg = x_rg || weight_trainable;
        if weight_trainable {
            let n = lin.params();
            self.param_grads.push((self.op, n * self.p.param_grad_size));
        }
        let sp = self.p.sp_div.max(1);
        let row_parallel = matches!(lin.role, LinearRole::O | LinearRole::Down);
        if sp > 1 && !row_parallel {
            // sequence parallel: the column-parallel input is all-gathered for the matmul
            // (a transient; the sharded input is what is saved)
            let e = self.tokens * lin.in_features;
            let d = self.dt(xin);
            self.out("sequence-parallel all-gather", e, d, false, Kind::Other);
        }
        let out_tokens = if row_parallel {
            self.tokens / sp
        } else {
            self.tokens
        };
        self.out(
            lin.name,
            out_tokens * lin.out_features,
            compute,
            out_rg,
            Kind::Matmul,
        )
    }

    /// Autocast's half-precision copy of `lin`'s weight, made by the current op.
    fn autocast_weight(&mut self, lin: &LinearSpec, x_rg: bool, weight_trainable: bool) {
        // Autocast caches the half copy of a weight that requires grad (a leaf) until
        // the autocast region ends; a frozen weight is cast anew at every call and
        // its copy lives only as long as autograd keeps it.
        let kind = if weight_trainable && self.weight_cache {
            Kind::Cache
        } else {
            Kind::Other
        };
        let w = self.out(
            "autocast weight copy",
            lin.in_features * lin.out_features,
            self.compute(),
            false,
            kind,
        );
        // saved when x needs grad (the input's gradient needs the weight)
        self.save_if(w, x_rg);
    }

    /// peft's LoRA branch of rank `r` on `lin`, added to the base output `base`.
    fn lora_branch(&mut self, x: T, lin: &LinearSpec, r: u64, base: T) -> T {
        // peft (tuners/lora/layer.py Linear.forward, 0.21): x.to(lora_A.weight.dtype) ->
        // lora_B(lora_A(x)) * scaling, added to the base result (type promotion to
        // fp32 for fp32 adapters), then cast back. Adapters in the compute dtype need
        // no cast: lora_A saves the input itself.
        let ad = self.adapter_dtype();
        let xa = self.cast(x, ad);
        let xa = self.dropout(xa, self.p.lora_dropout);
        let b = self.lora_pair(xa, lin, r, true);
        let scaled = self.scalar_mul("lora scaling", b);
        // the module call (`peft.tuners.lora.Linear.forward(x)`) holds x until it returns
        self.adapter_add(x, base, scaled)
    }

    // ---- norms --------------------------------------------------------------------

    /// A norm module on `x` at `slot` (its call holds x until it returns).
    fn norm(&mut self, x: T, width: u64, kind: NormKind, slot: NormSlot) -> T {
        let e = self.elems(x);
        let y = self.norm_ops(x, width, e, kind, slot);
        self.hold(&[x]);
        y
    }

    /// An RMSNorm over a strided slice of `x` with `elems` elements (latent
    /// attention's `kv_a_layernorm(kv_nope)`): its fp32 cast copies just the slice.
    fn norm_slice(&mut self, x: T, width: u64, elems: u64, kind: NormKind, slot: NormSlot) -> T {
        let y = self.norm_ops(x, width, elems, kind, slot);
        self.hold(&[x]);
        y
    }

    /// The norm's weight requires grad: full fine-tuning, or LN tuning's trained copy
    /// of a targeted norm (peft `LNTuningLayer.forward` runs the copy, same ops).
    fn norm_trainable(&self, slot: NormSlot) -> bool {
        match &self.p.trainable {
            Trainable::All => true,
            Trainable::Lora {
                adapter: Adapter::LnTuning,
                ..
            } => self.ln.is_some_and(|ln| ln.has(slot)),
            _ => false,
        }
    }

    fn norm_ops(&mut self, x: T, width: u64, src: u64, kind: NormKind, slot: NormSlot) -> T {
        let weight_trainable = self.norm_trainable(slot);
        if weight_trainable {
            let n = match kind {
                NormKind::LayerNorm { bias: true } => 2 * width,
                _ => width,
            };
            self.param_grads
                .push((self.op + 1, n * self.p.param_grad_size));
        }
        match kind {
            NormKind::RmsNorm { weight_fp32, .. } => {
                let in_dt = self.dt(x);
                let x32 = if src == self.elems(x) {
                    self.cast(x, DType::F32)
                } else {
                    let rg = self.rg(x);
                    self.begin(&[x]);
                    self.out("slice cast", src, DType::F32, rg, Kind::Other)
                };
                let sq = self.unary_save_in("pow", x32);
                let rows = src / width;
                let mean = self.unary_plain("mean", sq, rows, DType::F32);
                let var = self.unary_plain("add eps", mean, rows, DType::F32);
                let r = self.unary_save_out("rsqrt", var, DType::F32);
                let y = self.mul("normalized", x32, r);
                if weight_fp32 {
                    // Gemma: (y * (1 + w.float())).type_as(x); OLMo-2: (w * y).to(dtype)
                    self.begin(&[y]);
                    self.save_if(y, weight_trainable);
                    let y_rg = self.rg(y);
                    self.saves_param(y_rg);
                    let e = self.elems(y);
                    let z = self.out(
                        "norm out",
                        e,
                        DType::F32,
                        self.rg(y) || weight_trainable,
                        Kind::Other,
                    );
                    self.cast(z, in_dt)
                } else {
                    let y16 = self.cast(y, in_dt);
                    self.begin(&[y16]);
                    self.save_if(y16, weight_trainable);
                    let y_rg = self.rg(y16);
                    self.saves_param(y_rg);
                    let e = self.elems(y16);
                    let rg = self.rg(y16) || weight_trainable;
                    self.out("norm out", e, in_dt, rg, Kind::Other)
                }
            }
            NormKind::OlmoLayerNorm => {
                // F.layer_norm(x.float(), None, None).to(dtype): the fp32 copy, mean
                // and rstd are saved when the input needs a gradient (no weight)
                let in_dt = self.dt(x);
                let x32 = self.cast(x, DType::F32);
                self.begin(&[x32]);
                let rg = self.rg(x32);
                self.save_if(x32, rg);
                let rows = self.elems(x32) / width;
                let mean = self.out("ln mean", rows, DType::F32, false, Kind::Other);
                let rstd = self.out("ln rstd", rows, DType::F32, false, Kind::Other);
                self.save_if(mean, rg);
                self.save_if(rstd, rg);
                let e = self.elems(x32);
                let y = self.out("ln out", e, DType::F32, rg, Kind::Other);
                self.cast(y, in_dt)
            }
            NormKind::CohereLayerNorm => {
                // modeling_cohere.py CohereLayerNorm.forward, op by op
                let in_dt = self.dt(x);
                let e = self.elems(x);
                let rows = e / width;
                let x32 = self.cast(x, DType::F32);
                let mean = self.unary_plain("mean", x32, rows, DType::F32);
                let c1 = self.add("x - mean", x32, mean);
                let sq = self.unary_save_in("pow", c1);
                let var = self.unary_plain("mean", sq, rows, DType::F32);
                let c2 = self.add("x - mean", x32, mean);
                let ve = self.unary_plain("+ eps", var, rows, DType::F32);
                let r = self.unary_save_out("rsqrt", ve, DType::F32);
                let y = self.mul("normalized", c2, r);
                // weight.float() * y: saves y for the weight's gradient
                self.begin(&[y]);
                self.save_if(y, weight_trainable);
                let y_rg = self.rg(y);
                self.saves_param(y_rg);
                let z = self.out(
                    "norm out",
                    e,
                    DType::F32,
                    self.rg(y) || weight_trainable,
                    Kind::Other,
                );
                self.cast(z, in_dt)
            }
            NormKind::LayerNorm { .. } => {
                self.begin(&[x]);
                let rg = self.rg(x);
                let any = rg || weight_trainable;
                self.save_if(x, any);
                let rows = self.elems(x) / width;
                let stat_dt = match self.p.device {
                    Device::Cuda => DType::F32,
                    Device::Cpu => self.dt(x),
                };
                let mean = self.out("ln mean", rows, stat_dt, false, Kind::Other);
                let rstd = self.out("ln rstd", rows, stat_dt, false, Kind::Other);
                self.save_if(mean, any);
                self.save_if(rstd, any);
                let (e, d) = (self.elems(x), self.dt(x));
                self.out("ln out", e, d, any, Kind::Other)
            }
        }
    }

    // ---- activations ----------------------------------------------------------------

    fn act(&mut self, x: T, act: Activation) -> T {
        match act {
            Activation::Silu => self.unary_save_in("silu", x),
            Activation::Gelu | Activation::GeluTanh => self.unary_save_in("gelu", x),
            Activation::Relu => self.unary_save_out("relu", x, self.dt(x)),
            Activation::QuickGelu => {
                // x * sigmoid(1.702 * x): the scaled copy is not kept, sigmoid keeps its
                // output, the product keeps both factors
                let s = self.scalar_mul("1.702 * x", x);
                let sig = self.unary_save_out("sigmoid", s, self.dt(x));
                self.mul("x * sigmoid", x, sig)
            }
            Activation::Relu2 => {
                // relu saves its output; torch.square saves its input (that output)
                let r = self.unary_save_out("relu", x, self.dt(x));
                self.unary_save_in("square", r)
            }
            Activation::GeluNew => {
                // 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
                let (e, d) = (self.elems(x), self.dt(x));
                let cube = self.unary_save_in("pow3", x);
                let c = self.unary_plain("mul c", cube, e, d);
                let inner = self.add("add", x, c);
                let s = self.unary_plain("mul sqrt(2/pi)", inner, e, d);
                let t = self.unary_save_out("tanh", s, d);
                let one_t = self.unary_plain("1 + tanh", t, e, d);
                let half_x = self.unary_plain("0.5 x", x, e, d);
                self.mul("gelu_new", half_x, one_t)
            }
            Activation::BloomGelu => {
                // modeling_bloom.py GeLUFunction.forward: ctx.save_for_backward(input);
                // bloom_gelu_forward(x) = x * 0.5 * (1.0 + tanh(0.79788456 * x * (1 +
                // 0.044715 * x * x))) runs without autograd, so its temporaries are
                // freed as Python drops them, in this order
                let rg = self.rg(x);
                let (e, d) = (self.elems(x), self.dt(x));
                let half = self.unary_plain("x * 0.5", x, e, d);
                self.save_if(x, rg);
                let k = self.unary_plain("0.79788456 * x", x, e, d);
                let c = self.unary_plain("0.044715 * x", x, e, d);
                let cx = self.add("* x", c, x);
                let one = self.unary_plain("1 + .", cx, e, d);
                let inner = self.add("k * (1 + .)", k, one);
                let t = self.unary_plain("tanh", inner, e, d);
                let one_t = self.unary_plain("1.0 + tanh", t, e, d);
                let y = self.add("bloom_gelu", half, one_t);
                self.nodes[y.0].rg = rg;
                y
            }
        }
    }
}

fn promote(a: DType, b: DType) -> DType {
    if a.size() >= b.size() {
        a
    } else {
        b
    }
}

impl Graph<'_> {
    /// Rotary embedding as HF writes it: q*cos + rotate_half(q)*sin (cos/sin are shared
    /// non-layer tensors that need no grad: only they are saved, by the muls).
    fn rope(&mut self, x: T, heads: u64, head_dim: u64, rotary_dim: u64) -> T {
        let d = self.dt(x);
        let rot_elems = self.tokens * heads * rotary_dim;
        let full = self.tokens * heads * head_dim;
        let xc = self.unary_plain("x*cos", x, rot_elems, promote(d, self.rope_dtype()));
        let neg = self.unary_plain("neg half", x, rot_elems / 2, d);
        let rh = self.unary_plain("rotate_half", neg, rot_elems, d);
        let xs = self.unary_plain("rot*sin", rh, rot_elems, promote(d, self.rope_dtype()));
        let mut y = self.add("rope", xc, xs);
        if rotary_dim < head_dim {
            y = self.unary_plain("cat pass-through", y, full, self.dt(y));
        }
        y
    }

    /// cos/sin follow the hidden-state dtype (fp32 under autocast).
    fn rope_dtype(&self) -> DType {
        self.p.resid_dtype()
    }
}

/// Names of a router's top-k outputs.
const ROUTER_TOPK: (&str, &str) = ("router topk values", "router topk indices");

/// The linear of `role` among one layer's linears.
fn find_linear(lins: &[LinearSpec], role: crate::arch::LinearRole) -> Option<LinearSpec> {
    lins.iter().find(|l| l.role == role).copied()
}

/// Build the program of one decoder layer with the block `modules`.
fn layer_program<'a>(
    spec: &ModelSpec,
    group: &LayerGroup,
    p: &'a LedgerParams,
    input_rg: bool,
) -> (Graph<'a>, T) {
    let modules = &group.modules;
    let mut g = Graph::new(p);
    g.sliding = group.sliding;
    g.weight_cache = !spec.linear_as_matmul;
    g.ln = LnNorms::of(spec);
    let resid_dt = p.resid_dtype();
    let x = g.input(spec.hidden, resid_dt, input_rg);
    let lins = spec.block_linears(modules);
    let h = spec.hidden;

    let out = match spec.residual {
        Residual::Sequential => {
            let n1 = g.norm(x, h, spec.norm, NormSlot::PreAttn);
            let mut a = g.attention_block(spec, &lins, n1);
            if spec.sandwich_norms {
                a = g.norm(a, h, spec.norm, NormSlot::Sandwich);
            }
            if spec.scalars.residual {
                a = g.scalar_mul("* residual_multiplier", a);
            }
            let h1 = g.add("residual", x, a);
            let n2 = g.norm(h1, h, spec.norm, NormSlot::PreMlp);
            let mut m = g.mlp_block(spec, &lins, n2);
            if spec.sandwich_norms {
                m = g.norm(m, h, spec.norm, NormSlot::Sandwich);
            }
            if spec.scalars.residual {
                m = g.scalar_mul("* residual_multiplier", m);
            }
            g.add("residual", h1, m)
        }
        Residual::PostNorm => {
            let a = g.attention_block(spec, &lins, x);
            let a = g.norm(a, h, spec.norm, NormSlot::PreAttn);
            let h1 = g.add("residual", x, a);
            let m = g.mlp_block(spec, &lins, h1);
            let m = g.norm(m, h, spec.norm, NormSlot::PreMlp);
            g.add("residual", h1, m)
        }
        Residual::Parallel { shared_norm } => {
            let n1 = g.norm(x, h, spec.norm, NormSlot::PreAttn);
            let n2 = if shared_norm {
                n1
            } else {
                g.norm(x, h, spec.norm, NormSlot::PreMlp)
            };
            let a = g.attention_block(spec, &lins, n1);
            let m = g.mlp_block(spec, &lins, n2);
            let am = g.add("attn+mlp", m, a);
            g.add("residual", am, x)
        }
    };
    // the decoder layer's call holds its input (`hidden_states`) until it returns
    g.hold(&[x]);
    (g, out)
}

impl Graph<'_> {
    /// The self-attention block on the normed input `n`: q/k/v projections (one fused
    /// linear or three), q/k norms, rotary embedding, the attention core, the output
    /// projection and its dropout.
    fn attention_block(&mut self, spec: &ModelSpec, lins: &[LinearSpec], n: T) -> T {
        use crate::arch::LinearRole::*;
        if let Some(mla) = spec.mla {
            return self.mla_attention_block(spec, &mla, lins, n);
        }
        let find = |role| find_linear(lins, role);
        let (q, k, v) = if let Some(qkv) = find(Qkv) {
            let t = self.linear(n, &qkv);
            if spec.qkv_views {
                (t, t, t)
            } else {
                // copied out: the fused output dies once q, k and v exist
                let d = self.dt(t);
                let (q_e, kv_e) = (
                    self.tokens * spec.heads * spec.head_dim,
                    self.tokens * spec.kv_heads * spec.head_dim,
                );
                let q = self.unary_plain("q copy", t, q_e, d);
                let k = self.unary_plain("k copy", t, kv_e, d);
                let v = self.unary_plain("v copy", t, kv_e, d);
                (q, k, v)
            }
        } else {
            let q = self.linear(n, &find(Q).unwrap());
            let k = self.linear(n, &find(K).unwrap());
            let v = self.linear(n, &find(V).unwrap());
            (q, k, v)
        };
        let (mut q, mut k, mut v) = (q, k, v);
        if let (Some(_), true) = (find(Qkv), spec.qkv_views) {
            // Eager attention's `torch.matmul` folds [b, h] into one batch dim with
            // `reshape`: a view of a [1, h, s, d] slice, a copy of a strided slice of the
            // fused output when b > 1 — then the copies are what the matmuls save, and
            // the fused output dies (as with GPT-2's three copies at batch 2)
            if self.p.attn == Attn::Eager && self.p.batch > 1 {
                let fused = q;
                let d = self.dt(fused);
                let (q_e, kv_e) = (
                    self.tokens * spec.heads * spec.head_dim,
                    self.tokens * spec.kv_heads * spec.head_dim,
                );
                let needs_copy =
                    !spec.qk_norm.is_some() && !matches!(spec.positions, Positions::Rope { .. });
                if needs_copy {
                    q = self.unary_plain("q fold copy", fused, q_e, d);
                    k = self.unary_plain("k fold copy", fused, kv_e, d);
                }
                v = self.unary_plain("v fold copy", fused, kv_e, d);
            }
        }
        match spec.qk_norm {
            QkNorm::None => {}
            // over the whole projection: one row per token
            QkNorm::FullWidth => {
                q = self.norm(q, spec.heads * spec.head_dim, spec.norm, NormSlot::Qk);
                k = self.norm(k, spec.kv_heads * spec.head_dim, spec.norm, NormSlot::Qk);
            }
            QkNorm::Shared { .. } | QkNorm::PerHead => {
                q = self.norm(q, spec.head_dim, spec.norm, NormSlot::Qk);
                k = self.norm(k, spec.head_dim, spec.norm, NormSlot::Qk);
            }
        }
        if let Positions::Rope { rotary_dim } = spec.positions {
            if spec.rope_fp32 {
                // Cohere's apply_rotary_pos_emb: q.float(), k.float(), rotate, .to(dtype)
                // (Qwen2-VL's tower: `apply_rotary_pos_emb_vision`, on views of the
                // fused qkv output: each cast copies its own slice)
                let (dq, dk) = (self.dt(q), self.dt(k));
                let (q32, k32) = if q == k {
                    let (q_e, kv_e) = (
                        self.tokens * spec.heads * spec.head_dim,
                        self.tokens * spec.kv_heads * spec.head_dim,
                    );
                    (
                        self.unary_plain("q .float()", q, q_e, DType::F32),
                        self.unary_plain("k .float()", k, kv_e, DType::F32),
                    )
                } else {
                    (self.cast(q, DType::F32), self.cast(k, DType::F32))
                };
                let q2 = self.rope(q32, spec.heads, spec.head_dim, rotary_dim);
                let k2 = self.rope(k32, spec.kv_heads, spec.head_dim, rotary_dim);
                q = self.cast(q2, dq);
                k = self.cast(k2, dk);
            } else {
                if spec.rope_before_transpose {
                    // GPT-J's apply_rotary_pos_emb: sin/cos repeat_interleave'd anew for
                    // each of q and k ([1, s, 1, rotary_dim], the hidden dtype), each
                    // saved by its mul
                    let table = self.p.seq * rotary_dim;
                    let dt = self.rope_dtype();
                    for x in [q, k] {
                        let rg = self.rg(x);
                        self.begin(&[]);
                        for name in ["cos repeat", "sin repeat"] {
                            let t = self.out(name, table, dt, false, Kind::Other);
                            self.save_if(t, rg);
                        }
                    }
                }
                q = self.rope(q, spec.heads, spec.head_dim, rotary_dim);
                k = self.rope(k, spec.kv_heads, spec.head_dim, rotary_dim);
            }
        }
        let prefix = self.p.prefix_tokens();
        if prefix > 0 {
            // prefix tuning: `DynamicCache.update` concatenates the trained prefix
            // before the new keys and values (torch.cat saves nothing); the results
            // require grad through the prefix
            let kv_e = self.p.batch * (self.p.seq + prefix) * spec.kv_heads * spec.head_dim;
            let (dk, dv) = (self.dt(k), self.dt(v));
            self.begin(&[k]);
            k = self.out("prefix cat k", kv_e, dk, true, Kind::Other);
            self.begin(&[v]);
            v = self.out("prefix cat v", kv_e, dv, true, Kind::Other);
        }
        let mut out = self.attention_core(spec, q, k, v);
        if spec.attn_chunk_cat && self.p.attn != Attn::Flash {
            // modeling_qwen2_vl.py VisionAttention.forward: `torch.cat(attn_outputs,
            // dim=1)` of the per-image outputs, a new tensor even for one image
            let (e, d) = (self.elems(out), self.dt(out));
            out = self.unary_plain("cat chunks", out, e, d);
        }
        let o = self.linear(out, &find(O).unwrap());
        let o = self.dropout(o, spec.dropout.resid);
        // The module's `forward(hidden_states, ...)` frame references its input until
        // it returns: a normed input nothing saves (frozen projections) is freed only
        // then, not after its last use
        self.hold(&[n]);
        o
    }

    /// Multi-head latent attention as transformers 5.24 runs it in training
    /// (modeling_deepseek_v2.py / modeling_deepseek_v3.py `*Attention.forward`,
    /// `expand_kv`), on T tokens, h heads, query/key heads of nope + rope channels:
    ///
    /// - queries: `q_proj(x)`, or `q_b_proj(q_a_layernorm(q_a_proj(x)))`; split into
    ///   nope and rope views;
    /// - `kv_a_proj_with_mqa(x)` (T × (kv_lora_rank + rope)), `kv_a_layernorm` on its
    ///   latent slice (the norm's fp32 cast copies the strided slice), the rope key a view;
    /// - rope on the query's and the key's rope slices: V2 through complex numbers
    ///   (`x.float()` copies, a complex multiply by the shared `freqs_cis`, which it
    ///   keeps, cast back); V3 like llama on cos/sin, after the interleave's
    ///   `view/transpose/reshape` copy when `rope_interleave` (the default);
    /// - `cat(q_nope, q_rope)`: the query (new, contiguous head-major);
    /// - `kv_b_proj(latent)` (T × h × (nope + v)); the key a new tensor filled by two
    ///   `copy_`s (nope part and the expanded rope key); the value a view of
    ///   `kv_b_proj`'s output, so what the attention keeps of v is that whole output;
    /// - the attention (value heads of `v_head_dim`: SDPA's CPU flash kernel refuses
    ///   them, the math reference runs), `reshape`, `o_proj`.
    fn mla_attention_block(
        &mut self,
        spec: &ModelSpec,
        mla: &crate::arch::MlaSpec,
        lins: &[LinearSpec],
        n: T,
    ) -> T {
        use crate::arch::LinearRole::*;
        let find = |role| find_linear(lins, role).expect("latent attention linears");
        let t = self.tokens;
        let (nh, qk, r) = (spec.heads, spec.head_dim, mla.qk_rope);
        let q = match mla.q_lora_rank {
            Some(ql) => {
                let a = self.linear(n, &find(QA));
                let a = self.norm(a, ql, spec.norm, NormSlot::Qk);
                self.linear(a, &find(QB))
            }
            None => self.linear(n, &find(Q)),
        };
        let ckv = self.linear(n, &find(KvA));
        let latent = self.norm_slice(
            ckv,
            mla.kv_lora_rank,
            t * mla.kv_lora_rank,
            spec.norm,
            NormSlot::Qk,
        );
        let cd = self.dt(q);
        let rotate = |g: &mut Self, x: T, heads: u64| -> T {
            let e = t * heads * r;
            let rg = g.rg(x);
            if mla.complex_rope {
                // view_as_complex(x.float()) * freqs_cis -> view_as_real -> type_as(x)
                g.begin(&[x]);
                let x32 = g.out("rope slice .float()", e, DType::F32, rg, Kind::Other);
                let c = g.unary_plain("rope complex mul", x32, e, DType::F32);
                g.cast(c, cd)
            } else {
                let x = if mla.rope_interleave {
                    g.begin(&[x]);
                    g.out("rope interleave copy", e, cd, rg, Kind::Other)
                } else {
                    x
                };
                g.rope(x, heads, r, r)
            }
        };
        let q_rot = rotate(self, q, nh);
        let k_rot = rotate(self, ckv, 1);
        let q_rg = self.rg(q) || self.rg(q_rot);
        self.begin(&[q, q_rot]);
        let query = self.out("cat(q_nope, q_rot)", t * nh * qk, cd, q_rg, Kind::Other);
        let kvb = self.linear(latent, &find(KvB));
        let k_rg = self.rg(kvb) || self.rg(k_rot);
        self.begin(&[kvb, k_rot]);
        let key = self.out(
            "key (new_empty + copy_)",
            t * nh * qk,
            cd,
            k_rg,
            Kind::Other,
        );
        self.v_head = Some(mla.v_head);
        let out = self.attention_core(spec, query, key, kvb);
        self.v_head = None;
        let o = self.linear(out, &find(O));
        let o = self.dropout(o, spec.dropout.resid);
        self.hold(&[n]);
        o
    }

    /// The MLP block on the normed input `n`: gated (fused gate_up or separate) or
    /// plain, the down projection and its dropout.
    fn mlp_block(&mut self, spec: &ModelSpec, lins: &[LinearSpec], n: T) -> T {
        use crate::arch::LinearRole::*;
        let find = |role| find_linear(lins, role);
        if let Some(moe) = spec.moe.filter(|_| find(Router).is_some()) {
            return self.moe_block(spec, &moe, lins, n);
        }
        let prod = match spec.mlp {
            MlpKind::Gated {
                fused_gate_up: true,
            } => {
                let gu = self.linear(n, &find(GateUp).unwrap());
                self.fused_gate_up(gu, spec.intermediate)
            }
            MlpKind::Gated {
                fused_gate_up: false,
            } => {
                let gate = self.linear(n, &find(Gate).unwrap());
                let a = self.act(gate, spec.act);
                let up = self.linear(n, &find(Up).unwrap());
                self.mul("act*up", a, up)
            }
            MlpKind::Plain => {
                let f = self.linear(n, &find(Up).unwrap());
                self.act(f, spec.act)
            }
        };
        let d = self.linear(prod, &find(Down).unwrap());
        let d = self.dropout(d, spec.dropout.resid);
        // `forward(x)` holds x until it returns (see attention_block)
        self.hold(&[n]);
        d
    }

    /// A sparse MoE block as transformers 5.24 runs it (modeling_mixtral.py
    /// `MixtralSparseMoeBlock`, modeling_qwen2_moe.py / modeling_qwen3_moe.py
    /// `*SparseMoeBlock`, integrations/moe.py `grouped_mm_experts_forward`, the default
    /// `experts_implementation`), on T tokens, k experts each, S = T·k rows:
    ///
    /// - Qwen2-MoE's shared expert first: a dense gated MLP of its width;
    /// - the router: `F.linear(x, gate.weight)` (T × experts logits), the softmax in
    ///   fp32 (`.float()` / `dtype=torch.float`; it keeps its output), `topk` (keeps its
    ///   indices), the in-place renormalization `/= sum` (keeps the sum; its result is
    ///   the top-k values themselves), Qwen's cast of the weights to the logits' dtype;
    /// - the experts: `sort` of the expert ids, `hidden[perm // k]` (S × hidden, keeps
    ///   its int64 index) and `weights[perm]` (keeps `perm`), the expert-count
    ///   `histc` (over an fp32 copy of the ids on the CPU, int32 on CUDA) and its
    ///   int32 `cumsum`, `grouped_mm` with the fused gate/up parameter (keeps its input
    ///   when the experts train, and the offsets), `act(gate) * up` on the chunked
    ///   halves (keeps the fused output and the activation), `grouped_mm` with
    ///   `down_proj` (keeps its input), `* weights` (keeps both: S × hidden in the
    ///   wider dtype — fp32 for Mixtral's weights), the inverse permutation (int64,
    ///   kept by the gather `[inv_perm]`), `view(T, k, hidden).sum(1)` and the cast back;
    /// - Qwen2-MoE: `sigmoid(shared_expert_gate(x)) * shared` (keeps the sigmoid's
    ///   output and the shared output) added to the routed output.
    fn moe_block(&mut self, spec: &ModelSpec, moe: &MoeSpec, lins: &[LinearSpec], n: T) -> T {
        use crate::arch::LinearRole::*;
        let find = |role| find_linear(lins, role);
        let (h, k, e) = (spec.hidden, moe.top_k, moe.experts);
        let t = self.tokens;
        let s = t * k;
        let ie = moe.expert_intermediate;
        let cd = self.dt(n);
        let shared_mlp = |g: &mut Self| {
            let gt = g.linear(n, &find(SharedGate).unwrap());
            let a = g.act(gt, spec.act);
            let u = g.linear(n, &find(SharedUp).unwrap());
            let p = g.mul("shared act*up", a, u);
            g.linear(p, &find(SharedDown).unwrap())
        };
        // Qwen2-MoE runs its shared expert first; DeepSeek after the routed experts
        let shared = if moe.shared_expert.is_some() && moe.shared_gate {
            Some(shared_mlp(self))
        } else {
            None
        };
        // LoRA through peft's ParamWrapper (`tuners/lora/layer.py`, 0.21) on a
        // parameter its MoE conversion reaches: the rank it gives that parameter
        let wrapped = |lin: &LinearSpec| match &self.p.trainable {
            Trainable::Lora { rank, targets, .. } if lin.via_conversion && targets.matches(lin) => {
                Some(Adapter::param_wrapper_rank(lin, *rank))
            }
            _ => None,
        };
        // router (DeepSeek: `F.linear(x.float(), weight.float())` on its fp32 weight)
        let router = find(Router).unwrap();
        let amp = self.p.precision.is_amp();
        let logits = match wrapped(&router) {
            None if moe.router_fp32 && !amp => {
                let x32 = self.cast(n, DType::F32);
                let trains = self.p.trainable.base_weights();
                self.begin(&[x32]);
                self.save_if(x32, trains);
                let x_rg = self.rg(x32);
                self.saves_param(x_rg);
                if trains {
                    // the fp32 weight's fp32 gradient
                    self.param_grads.push((self.op, router.params() * 4));
                }
                self.out(
                    "router logits",
                    t * e,
                    DType::F32,
                    x_rg || trains,
                    Kind::Matmul,
                )
            }
            None if moe.router_fp32 => {
                // autocast runs the fp32 linear in half precision anyway
                let x32 = self.cast(n, DType::F32);
                self.base_linear(x32, &router)
            }
            None => self.base_linear(n, &router),
            Some(r) => {
                // `_LoraParameterProxy`: W + (lora_B @ lora_A · scaling).to(W.dtype),
                // kept by F.linear (with the input) for the input's gradient
                let ad = self.adapter_dtype();
                let pd = if moe.router_fp32 {
                    DType::F32
                } else {
                    self.p.precision.param_dtype()
                };
                let n = if moe.router_fp32 {
                    self.cast(n, DType::F32)
                } else {
                    n
                };
                self.begin(&[]);
                self.param_grads.push((
                    self.op,
                    r * (router.in_features + router.out_features) * ad.size(),
                ));
                let dw = self.out("router delta", e * h, ad, true, Kind::Matmul);
                let dw = self.scalar_mul("router delta * scaling", dw);
                let dw = self.cast(dw, pd);
                self.begin(&[dw]);
                let w = self.out("router weight + delta", e * h, pd, true, Kind::Other);
                let xin = self.cast(n, pd);
                self.begin(&[xin, w]);
                self.save(xin);
                let x_rg = self.rg(xin);
                self.save_if(w, x_rg);
                self.out("router logits", t * e, pd, true, Kind::Matmul)
            }
        };
        let l32 = if moe.router == RouterKind::TopkSoftmax {
            logits
        } else {
            self.cast(logits, DType::F32)
        };
        let (vals, idx, w_rg) = self.router_topk(moe, l32, t);
        if moe.norm_topk {
            self.begin(&[vals]);
            let sum = self.out("router topk sum", t, DType::F32, w_rg, Kind::Other);
            self.begin(&[vals, sum]);
            self.save_if(sum, w_rg);
            self.save_if(vals, w_rg);
        }
        // DeepSeek: `topk_weights * routed_scaling_factor` (a new tensor, nothing kept)
        let vals = if moe.router_fp32 {
            self.scalar_mul("* routed_scaling_factor", vals)
        } else {
            vals
        };
        let weights = if moe.fp32_weights {
            vals
        } else {
            self.cast(vals, self.dt(logits))
        };
        let wd = self.dt(weights);
        // sort by expert; gather the rows and their weights
        self.begin(&[idx]);
        let _sorted = self.out("expert ids sorted", s, DType::I64, false, Kind::Other);
        let perm = self.out("expert perm", s, DType::I64, false, Kind::Other);
        let rows = self.unary_plain("perm // k", perm, s, DType::I64);
        self.begin(&[n, rows]);
        let n_rg = self.rg(n);
        self.save_if(rows, n_rg);
        let xg = self.out("expert rows (gathered)", s * h, cd, n_rg, Kind::Other);
        // expert parallelism (Megatron-Core `MoEAlltoAllTokenDispatcher`: permute →
        // all_to_all → experts → all_to_all → unpermute): the rows go to their
        // experts' ranks; the busiest rank receives `moe_imbalance` × its balanced
        // share (each rank sends and receives t·k rows when balanced), and its local
        // experts run on those
        let ep = self.p.ep > 1;
        let rs = if ep {
            ((s as f64) * self.p.moe_imbalance).ceil() as u64
        } else {
            s
        };
        let xg = if ep {
            self.begin(&[xg]);
            self.out(
                "expert rows (all-to-all received)",
                rs * h,
                cd,
                n_rg,
                Kind::Other,
            )
        } else {
            xg
        };
        let e_here = moe.experts_here();
        self.begin(&[weights, perm]);
        self.save_if(perm, w_rg);
        let wg = self.out("expert weights (gathered)", s, wd, w_rg, Kind::Other);
        // histc over the sorted ids (CPU: an fp32 copy), cumsum to int32 offsets
        let ids_dt = match self.p.device {
            Device::Cpu => DType::F32,
            Device::Cuda => DType::I32,
        };
        self.begin(&[_sorted]);
        let ids_cast = self.out("expert ids (histc input)", rs, ids_dt, false, Kind::Other);
        let hist = self.unary_plain("tokens per expert", ids_cast, e_here, DType::F32);
        let offs = self.unary_plain("expert offsets", hist, e_here, DType::I32);
        // grouped_mm with the fused gate/up parameter (input cast to its dtype); under
        // ParamWrapper LoRA each expert stack is rebuilt first (`_LoraFactorsProxy`:
        // `baddbmm(W, lhs.to(W.dtype), rhs.to(W.dtype))`, keeping both factors' copies),
        // and the rebuilt stacks are what grouped_mm keeps for the input's gradient
        let pd = self.p.precision.param_dtype();
        let gu_lin = find(ExpertGateUp).unwrap();
        let d_lin = find(ExpertDown).unwrap();
        let mut merged = Vec::new();
        for lin in [&gu_lin, &d_lin] {
            if let Some(r) = wrapped(lin) {
                let ad = self.adapter_dtype();
                let (i, o) = (lin.in_features, lin.out_features);
                self.begin(&[]);
                self.param_grads
                    .push((self.op, r * e_here * (i + o) * ad.size()));
                let (lhs, rhs) = if ad == pd {
                    (
                        self.out("lora_B view", 0, pd, true, Kind::Other),
                        self.out("lora_A view", 0, pd, true, Kind::Other),
                    )
                } else {
                    (
                        self.out("lora_B cast", e_here * o * r, pd, true, Kind::Other),
                        self.out("lora_A cast", e_here * r * i, pd, true, Kind::Other),
                    )
                };
                self.begin(&[lhs, rhs]);
                self.save(lhs);
                self.save(rhs);
                merged.push(self.out(
                    "expert stack + delta (baddbmm)",
                    e_here * i * o,
                    pd,
                    true,
                    Kind::Matmul,
                ));
            }
        }
        let experts_trained = self.p.trainable.base_weights() || !merged.is_empty();
        let xin = self.cast(xg, pd);
        let bias_ids = moe.biases.then_some(_sorted);
        let gu = self.grouped_mm(
            "experts gate_up (grouped_mm)",
            xin,
            offs,
            merged.first().copied(),
            &gu_lin,
            rs * 2 * ie,
            experts_trained,
            bias_ids,
        );
        let gu_rg = self.rg(gu);
        let prod = if moe.clamped_swiglu {
            // GptOssExperts._apply_gate on the strided views gu[..., ::2] / gu[..., 1::2]:
            // both clamps keep gu; gate * sigmoid(gate * alpha) keeps the clamped gate
            // and the sigmoid; (up + 1) * glu keeps both factors
            self.begin(&[gu]);
            self.save_if(gu, gu_rg);
            let gate = self.out("gate.clamp(max)", rs * ie, pd, gu_rg, Kind::Other);
            self.begin(&[gu]);
            let up = self.out("up.clamp(-l, l)", rs * ie, pd, gu_rg, Kind::Other);
            let ga = self.scalar_mul("gate * alpha", gate);
            let sig = self.unary_save_out("sigmoid", ga, pd);
            let glu = self.mul("gate * sigmoid", gate, sig);
            let up1 = self.scalar_mul("up + 1", up);
            self.mul("(up + 1) * glu", up1, glu)
        } else {
            // act(gate) * up on the two views of gu
            self.begin(&[gu]);
            self.save_if(gu, gu_rg);
            let a = self.out("experts act(gate)", rs * ie, pd, gu_rg, Kind::Other);
            self.begin(&[gu, a]);
            self.save_if(a, gu_rg);
            self.out("experts act*up", rs * ie, pd, gu_rg, Kind::Other)
        };
        let down = self.grouped_mm(
            "experts down (grouped_mm)",
            prod,
            offs,
            merged.get(1).copied(),
            &d_lin,
            rs * h,
            experts_trained,
            bias_ids,
        );
        // the rows back to the ranks their tokens live on
        let down = if ep {
            let d_rg = self.rg(down);
            self.begin(&[down]);
            self.out(
                "expert outputs (all-to-all returned)",
                s * h,
                pd,
                d_rg,
                Kind::Other,
            )
        } else {
            down
        };
        // * routing weights (keeps both), restore the order, sum over k
        let weighted = self.mul("experts * weights", down, wg);
        self.begin(&[perm]);
        let inv = self.out("inverse perm", s, DType::I64, false, Kind::Other);
        let _ar = self.out("arange", s, DType::I64, false, Kind::Other);
        let wdt = self.dt(weighted);
        let w_rg2 = self.rg(weighted);
        self.begin(&[weighted, inv]);
        self.save_if(inv, w_rg2);
        let unperm = self.out("experts [inv_perm]", s * h, wdt, w_rg2, Kind::Other);
        let summed = self.unary_plain("sum over k", unperm, t * h, wdt);
        let mut y = self.cast(summed, cd);
        if let Some(sh) = shared {
            let gl = self.linear(n, &find(SharedExpertGate).unwrap());
            let sg = self.unary_save_out("sigmoid", gl, self.dt(gl));
            let gated = self.mul("sigmoid * shared", sg, sh);
            y = self.add("experts + shared", y, gated);
        } else if moe.shared_expert.is_some() {
            let sh = shared_mlp(self);
            y = self.add("experts + shared", y, sh);
        }
        self.hold(&[n]);
        y
    }

    /// `_grouped_linear` (integrations/moe.py, transformers 5.24): `grouped_mm` of the
    /// sorted rows `x` with a fused expert stack (`lin`; under ParamWrapper LoRA the
    /// rebuilt stack `merged`, kept for the input's gradient), keeping `x` when the
    /// experts train and the offsets; then `out.add_(bias[expert_ids_g])` in place when
    /// the experts have biases (the gather keeps the sorted ids `bias_ids` when they
    /// train).
    #[allow(clippy::too_many_arguments)]
    fn grouped_mm(
        &mut self,
        name: &'static str,
        x: T,
        offs: T,
        merged: Option<T>,
        lin: &LinearSpec,
        out_elems: u64,
        trained: bool,
        bias_ids: Option<T>,
    ) -> T {
        let pd = self.p.precision.param_dtype();
        match merged {
            Some(w) => self.begin(&[x, offs, w]),
            None => self.begin(&[x, offs]),
        }
        let x_rg = self.rg(x);
        self.save_if(x, trained);
        self.save_if(offs, trained || x_rg);
        self.saves_param(x_rg);
        if let Some(w) = merged {
            self.save_if(w, x_rg);
            // the rebuilt stack's gradient (its lora factors' come from it)
            self.bwd_workspace.push((self.op, lin.params() * pd.size()));
        } else if trained {
            self.param_grads
                .push((self.op, lin.params() * self.p.param_grad_size));
        }
        let out = self.out(name, out_elems, pd, x_rg || trained, Kind::Matmul);
        if let Some(ids) = bias_ids {
            self.begin(&[ids]);
            self.save_if(ids, trained);
            self.out("bias [expert ids]", out_elems, pd, trained, Kind::Other);
        }
        out
    }

    /// The router's scores and its top-k on fp32 logits `l32` ([`RouterKind`],
    /// transformers 5.24): (top-k values, top-k indices, whether the values need a
    /// gradient). Every `topk` / `max(dim)` on a tensor that requires grad keeps its
    /// int64 indices, `masked_fill` its boolean mask, softmax and sigmoid their output.
    fn router_topk(&mut self, moe: &MoeSpec, l32: T, t: u64) -> (T, T, bool) {
        let (e, k) = (moe.experts, moe.top_k);
        match moe.router {
            RouterKind::TopkSoftmax => {
                // topk of the logits, softmax over the k values (their dtype)
                let d = self.dt(l32);
                let w_rg = self.rg(l32);
                let (top, idx) = self.topk(ROUTER_TOPK, l32, t * k, w_rg);
                let vals = self.unary_save_out("router softmax (top-k)", top, d);
                (vals, idx, w_rg)
            }
            RouterKind::Softmax => {
                let probs = self.unary_save_out("router softmax", l32, DType::F32);
                let w_rg = self.rg(probs);
                let (vals, idx) = self.topk(ROUTER_TOPK, probs, t * k, w_rg);
                (vals, idx, w_rg)
            }
            RouterKind::SoftmaxGroupLimited {
                groups,
                topk_groups,
            } => {
                // DeepseekV2TopkRouter `group_limited_greedy`
                let probs = self.unary_save_out("router softmax", l32, DType::F32);
                let w_rg = self.rg(probs);
                // `max(dim)` keeps its indices like topk
                let (gmax, _) =
                    self.topk(("group max", "group max indices"), probs, t * groups, w_rg);
                let (vals, idx) = self.group_limited_topk(moe, probs, gmax, t, topk_groups, w_rg);
                (vals, idx, w_rg)
            }
            RouterKind::SigmoidGrouped {
                groups,
                topk_groups,
            } => {
                // DeepseekV3TopkRouter: sigmoid, + e_score_correction_bias, top-2 sum per
                // group, the best groups, the mask, top-k, the chosen scores gathered
                let scores = self.unary_save_out("router sigmoid", l32, DType::F32);
                let w_rg = self.rg(scores);
                let biased =
                    self.unary_plain("scores + correction bias", scores, t * e, DType::F32);
                let (top2, _) = self.topk(
                    ("group top-2", "group top-2 indices"),
                    biased,
                    t * groups * 2,
                    w_rg,
                );
                let gs = self.unary_plain("group scores (sum)", top2, t * groups, DType::F32);
                let (_v, idx) = self.group_limited_topk(moe, biased, gs, t, topk_groups, w_rg);
                // scores.gather(1, idx) keeps idx (the same tensor)
                self.begin(&[scores, idx]);
                let vals = self.out(
                    "router gathered scores",
                    t * k,
                    DType::F32,
                    w_rg,
                    Kind::Other,
                );
                (vals, idx, w_rg)
            }
        }
    }

    /// The group-limited selection both DeepSeek routers share: `topk` of the per-group
    /// statistic `group_stat` (keeps its indices), the group mask scattered and
    /// expanded, `scores.masked_fill(~mask, ...)` (keeps the boolean mask), `topk` of the
    /// masked scores (keeps its indices): (top-k values, top-k indices).
    fn group_limited_topk(
        &mut self,
        moe: &MoeSpec,
        scores: T,
        group_stat: T,
        t: u64,
        topk_groups: u64,
        w_rg: bool,
    ) -> (T, T) {
        let (e, k) = (moe.experts, moe.top_k);
        let groups = self.elems(group_stat) / t.max(1);
        let (_gv, gi) = self.topk(
            ("group topk values", "group topk indices"),
            group_stat,
            t * topk_groups,
            w_rg,
        );
        self.begin(&[gi]);
        let gm = self.out("group mask", t * groups, DType::F32, false, Kind::Other);
        let mask = self.unary_plain("~score mask", gm, t * e, DType::Bool);
        self.begin(&[scores, mask]);
        self.save_if(mask, w_rg);
        let masked = self.out("masked scores", t * e, DType::F32, w_rg, Kind::Other);
        self.topk(ROUTER_TOPK, masked, t * k, w_rg)
    }

    /// `topk` (or `max(dim)`) of `src` giving `n` values: the values in `src`'s dtype
    /// and the int64 indices, which it keeps when the values need a gradient.
    fn topk(
        &mut self,
        (values, indices): (&'static str, &'static str),
        src: T,
        n: u64,
        rg: bool,
    ) -> (T, T) {
        let d = self.dt(src);
        self.begin(&[src]);
        let vals = self.out(values, n, d, rg, Kind::Other);
        let idx = self.out(indices, n, DType::I64, false, Kind::Other);
        self.save_if(idx, rg);
        (vals, idx)
    }

    /// `act(gate) * up` over the two halves of a fused gate_up output `gu` (width
    /// 2·`i`): gate, up = gu.chunk(2) are views of one storage, so `gu` itself is saved.
    fn fused_gate_up(&mut self, gu: T, i: u64) -> T {
        let d = self.dt(gu);
        self.begin(&[gu]);
        let gate_rg = self.rg(gu);
        self.save_if(gu, gate_rg);
        let a = self.out("act(gate)", self.tokens * i, d, gate_rg, Kind::Other);
        self.begin(&[gu, a]);
        self.save_if(gu, self.rg(a));
        self.save_if(a, gate_rg);
        self.out("act*up", self.tokens * i, d, gate_rg, Kind::Other)
    }
}

impl Graph<'_> {
    /// The attention core on projected q, k, v (cast to half under autocast): one
    /// SDPA / flash kernel, or eager's explicit matmuls and softmax.
    fn attention_core(&mut self, spec: &ModelSpec, q: T, k: T, v: T) -> T {
        let d = self.compute();
        let any_rg = self.rg(q) || self.rg(k) || self.rg(v);
        // Under autocast the attention kernel receives half-precision copies.
        let (q, k, v) = if self.p.precision.is_amp() {
            (self.cast(q, d), self.cast(k, d), self.cast(v, d))
        } else {
            (q, k, v)
        };
        match self.p.attn {
            // On CPU, SDPA with dropout is not a flash kernel (sdp_utils_cpp.cpp
            // `check_for_dropout`): it runs the math reference
            // ... and with value heads narrower than the query/key heads (latent
            // attention): the CPU flash kernel needs one head size
            // (sdp_utils_cpp.cpp `check_head_dim_size_cpp`)
            Attn::Sdpa
                if self.p.device == Device::Cpu
                    && ((spec.dropout.attn > 0.0 && self.p.trainable.any())
                        || self.v_head.is_some()) =>
            {
                self.math_attention(spec, [q, k, v], any_rg)
            }
            Attn::Sdpa | Attn::Flash => {
                let out = self.fused_attention(spec, [q, k, v], any_rg);
                // The kernel allocates its output in q's memory order. q made by a
                // `cat` (partial rotary, Phi-3's rotary) is contiguous in [b, h, s, d]
                // order, so `transpose(1, 2).contiguous()` after the kernel
                // (integrations/sdpa_attention.py) copies it, and the output projection
                // saves the copy; after an element-wise rotary q keeps the projection's
                // [b, s, h, d] order and the transpose is a view.
                let head_major_q = spec.rope_cat
                    || (!spec.rope_before_transpose
                        && matches!(spec.positions, Positions::Rope { rotary_dim } if rotary_dim < spec.head_dim));
                if head_major_q {
                    let (e, d) = (self.elems(out), self.dt(out));
                    self.unary_plain("attn transpose", out, e, d)
                } else {
                    out
                }
            }
            _ => self.eager_attention(spec, [q, k, v], any_rg),
        }
    }

    /// SDPA's math reference (`attention.cpp` `_scaled_dot_product_attention_math`,
    /// PyTorch 2.15), as it runs in training: half-precision q, k, v are upcast to fp32
    /// (`allowFP16BF16ReductionMathSDP` is off by default), k and v repeated to the query
    /// heads under GQA; q·√scale and k·√scale feed a bmm (both saved), softmax saves its
    /// fp32 output, dropout its fp32 mask (CPU), and the P·V bmm the dropped
    /// probabilities and v; the output is cast back.
    fn math_attention(&mut self, spec: &ModelSpec, [q, k, v]: [T; 3], any_rg: bool) -> T {
        let d = self.compute();
        let up = if d.size() < 4 { DType::F32 } else { d };
        let (nh, hd) = (spec.heads, spec.head_dim);
        let qkv_elems = self.tokens * nh * hd;
        let v_elems = self.tokens * nh * self.v_head.unwrap_or(hd);
        let scores_elems = self.p.batch * nh * self.p.seq * self.p.kv_len;
        let (q32, k32, v32) = (
            self.unary_plain("q.float()", q, qkv_elems, up),
            self.unary_plain("k.float()", k, qkv_elems, up),
            self.unary_plain("v.float()", v, v_elems, up),
        );
        let qs = self.unary_plain("q * sqrt(scale)", q32, qkv_elems, up);
        let ks = self.unary_plain("k * sqrt(scale)", k32, qkv_elems, up);
        self.begin(&[qs, ks]);
        self.save_if(qs, any_rg);
        self.save_if(ks, any_rg);
        self.in_attn_core = true;
        let sc = self.out("q·kᵀ", scores_elems, up, any_rg, Kind::AttnCore);
        let masked = self.unary_plain("causal mask", sc, scores_elems, up);
        let pr = self.unary_save_out("softmax", masked, up);
        let dropped = self.dropout(pr, spec.dropout.attn);
        self.in_attn_core = false;
        self.begin(&[dropped, v32]);
        self.save_if(dropped, any_rg);
        self.save_if(v32, any_rg);
        let o = self.out("P·V", v_elems, up, any_rg, Kind::Matmul);
        self.cast(o, d)
    }

    /// SDPA / flash: saves q, k, v (un-repeated), the output and the fp32 logsumexp;
    /// its backward needs an fp32 dq accumulator and the softmax row sums.
    fn fused_attention(&mut self, spec: &ModelSpec, [q, k, v]: [T; 3], any_rg: bool) -> T {
        let d = self.compute();
        let (nh, hd) = (spec.heads, spec.head_dim);
        let tq = self.tokens;
        let masked = explicit_sdpa_mask(spec, self.p, self.sliding);
        // With a mask, transformers' sdpa_attention_forward does not pass enable_gqa
        // (integrations/sdpa_attention.py use_gqa_in_sdpa) and repeats k/v itself: the
        // repeated copies are what the kernel saves (Falcon calls SDPA on its own
        // broadcast heads)
        // (one k/v head: `repeat_kv`'s expand + reshape is a view, nothing is copied;
        // trace probe, Gemma-2B prefix tuning)
        let (k, v) =
            if masked && 1 < spec.kv_heads && spec.kv_heads < nh && !spec.eager_kv_broadcast {
                let kv_e = self.p.batch * self.p.kv_len * nh * hd;
                (
                    self.unary_plain("repeat_kv k", k, kv_e, d),
                    self.unary_plain("repeat_kv v", v, kv_e, d),
                )
            } else {
                (k, v)
            };
        self.begin(&[q, k, v]);
        if any_rg {
            self.save(q);
            self.save(k);
            self.save(v);
        }
        if masked && any_rg {
            // an explicit boolean mask: SDPA converts it to an additive mask in q's dtype
            // on every call (attention.cpp convert_boolean_attn_mask), which the kernel
            // saves: one per layer (trace probe: Falcon-7B, +131072 bytes per layer at
            // b1 s256)
            let m = self.out(
                "sdpa float mask",
                p_mask_elems(self.p),
                d,
                false,
                Kind::Matmul,
            );
            self.save(m);
        }
        let vd = self.v_head.unwrap_or(hd);
        let out = self.out("attention out", tq * nh * vd, d, any_rg, Kind::Matmul);
        let lse = self.out("logsumexp", tq * nh, DType::F32, false, Kind::Matmul);
        if any_rg {
            self.save(out);
            self.save(lse);
            // Flash backward: fp32 dq accumulator + softmax row sums.
            self.bwd_workspace
                .push((self.op, tq * nh * hd * 4 + tq * nh * 4));
        }
        out
    }

    /// Eager attention: repeat_kv for GQA, QKᵀ, scale, soft-capping, mask, softmax,
    /// dropout (the attention core), then P·V and the transpose back.
    fn eager_attention(&mut self, spec: &ModelSpec, [q, k, v]: [T; 3], any_rg: bool) -> T {
        let p = self.p;
        let d = self.compute();
        let (nh, nkv, hd) = (spec.heads, spec.kv_heads, spec.head_dim);
        let tq = self.tokens;
        let kv_tokens = p.batch * p.kv_len;
        // Eager: explicit matmuls.
        let rep = nh / nkv;
        // A broadcasting matmul (`at::matmul`) expands k/v to the query heads and folds
        // [b, h] into one batch dim with `reshape`: a view when b = 1 (the stride-0
        // head dim merges with a batch of one), a copy otherwise — then it is what the
        // bmm saves, as repeat_kv's copy is.
        // `repeat_kv` (expand + reshape) is itself a view when there is one k/v head
        // (MQA: the size-1 head dim merges with the stride-0 repeat dim), a copy for
        // 1 < kv heads < heads.
        let kv_view = nkv == 1 || spec.eager_kv_broadcast;
        let copies = !kv_view || p.batch > 1;
        let (kr, vr) = if rep > 1 && copies {
            let kr = self.unary_plain("repeat_kv k", k, kv_tokens * nh * hd, d);
            let vr = self.unary_plain("repeat_kv v", v, kv_tokens * nh * hd, d);
            (kr, vr)
        } else {
            (k, v)
        };
        let scores_elems = p.batch * nh * p.seq * p.kv_len;
        // GPT-J: matmul(query.to(float32), key.to(float32).transpose(2, 3))
        let (q, kr, sd) = if spec.eager_qk_fp32 {
            (
                self.cast(q, DType::F32),
                self.cast(kr, DType::F32),
                DType::F32,
            )
        } else {
            (q, kr, d)
        };
        self.begin(&[q, kr]);
        let (rq, rk) = (self.rg(q), self.rg(kr));
        self.save_if(kr, rq);
        self.save_if(q, rk);
        self.in_attn_core = true;
        let mut s = self.out("scores", scores_elems, sd, any_rg, Kind::AttnCore);
        s = self.unary_plain("scale", s, scores_elems, sd);
        if spec.attn_softcap.is_some() {
            s = self.softcap(s, scores_elems, d);
        }
        s = self.unary_plain("mask add", s, scores_elems, sd);
        let probs = if spec.attn_sinks {
            // gpt-oss: cat([scores, sinks expanded]) (one more column), minus the row
            // max (`max(dim)` keeps its int64 indices), softmax in the scores' dtype
            // (keeps its output), the sink column dropped (a view)
            let rows = p.batch * nh * p.seq;
            let rg = any_rg || self.p.trainable.base_weights();
            self.begin(&[s]);
            let cat = self.out(
                "cat(scores, sinks)",
                scores_elems + rows,
                sd,
                rg,
                Kind::AttnCore,
            );
            self.begin(&[cat]);
            let mx = self.out("row max", rows, sd, false, Kind::AttnCore);
            let mi = self.out("row max indices", rows, DType::I64, false, Kind::AttnCore);
            self.save_if(mi, rg);
            self.begin(&[cat, mx]);
            let shifted = self.out("- row max", scores_elems + rows, sd, rg, Kind::AttnCore);
            self.unary_save_out("softmax (with sinks)", shifted, sd)
        } else {
            self.eager_softmax(spec, s)
        };
        let probs = self.dropout(probs, spec.dropout.attn);
        self.in_attn_core = false;
        self.begin(&[probs, vr]);
        let (rp, rv) = (self.rg(probs), self.rg(vr));
        self.save_if(vr, rp);
        self.save_if(probs, rv);
        let vd = self.v_head.unwrap_or(hd);
        let o = self.out("P·V", tq * nh * vd, d, any_rg, Kind::Matmul);
        // [b,h,s,d] -> [b,s,h*d]: transpose + contiguous copy
        self.unary_plain("attn transpose", o, tq * nh * vd, d)
    }

    /// Soft-capping `tanh(x / cap) · cap` (Gemma-2) of `x` with `elems` elements.
    fn softcap(&mut self, x: T, elems: u64, d: DType) -> T {
        let x = self.unary_plain("softcap div", x, elems, d);
        let x = self.unary_save_out("softcap tanh", x, d);
        self.unary_plain("softcap mul", x, elems, d)
    }

    /// Eager softmax of the masked scores `s`, in the dtype the family's HF code uses.
    fn eager_softmax(&mut self, spec: &ModelSpec, s: T) -> T {
        let d = self.compute();
        // llama-style models take softmax in fp32 and cast back; GPT-2-style
        // families softmax in the compute dtype.
        // Autocast runs softmax in fp32 for every family.
        let fp32_softmax = self.p.precision.is_amp() || spec.eager_softmax_fp32;
        if fp32_softmax {
            // `attn_weights = softmax(attn_weights, dtype=fp32).to(dtype)`:
            // softmax(dtype=) first casts its input to fp32 (a full copy), and
            // the old scores stay referenced until the assignment
            let s32 = self.cast(s, DType::F32);
            let pr = self.unary_save_out("softmax", s32, DType::F32);
            let c = self.cast(pr, d);
            self.hold(&[s]);
            c
        } else {
            self.unary_save_out("softmax", s, d)
        }
    }
}

/// Which tensors of a program stay alive, per the run's checkpointing mode.
#[derive(Debug, Clone, Copy)]
struct Keep {
    training: bool,
    ckpt: GradCkpt,
}

impl Keep {
    /// Saved by some op for its backward.
    fn is_saved(n: &Node) -> bool {
        n.saved_by != u32::MAX
    }
    /// Kept from forward until backward without checkpointing: what autograd saved.
    fn kept(&self, n: &Node) -> bool {
        self.training && Self::is_saved(n)
    }
    /// Kept while the forward runs, under the checkpointing mode.
    fn kept_fwd(&self, n: &Node) -> bool {
        let training = self.training;
        match self.ckpt {
            GradCkpt::None => self.kept(n),
            GradCkpt::Full | GradCkpt::FullReentrant => training && n.kind == Kind::Input,
            // Megatron selective recomputation: the attention core is recomputed
            GradCkpt::Selective => training && self.kept(n) && n.kind != Kind::AttnCore,
        }
    }
}

/// Forward peak of `g` when the tensors `keep` selects stay alive to the end (and
/// transients until their last use), by a difference array over op indices:
/// O(tensors + ops).
fn fwd_peak_with(g: &Graph, keep: &dyn Fn(&Node) -> bool) -> u64 {
    fwd_peak_upto(g, keep, g.op)
}

/// `fwd_peak_with` over ops `0..=upto` only (a recomputation that stops early).
fn fwd_peak_upto(g: &Graph, keep: &dyn Fn(&Node) -> bool, upto: u32) -> u64 {
    let ops = g.op;
    let n_ops = upto.min(ops) as usize;
    let mut diff = vec![0i128; ops as usize + 2];
    for n in &g.nodes {
        let end = if keep(n) || n.kind == Kind::Cache || n.born == ops {
            ops
        } else {
            n.last_use.max(n.held_until)
        };
        diff[n.born as usize] += n.bytes as i128;
        diff[end as usize + 1] -= n.bytes as i128;
    }
    let mut live = 0i128;
    let mut peak = 0i128;
    for d in &diff[..=n_ops] {
        live += d;
        peak = peak.max(live);
    }
    peak as u64
}

/// Backward peak of `g` (output `out`) without recomputation, and the parameter
/// gradients already allocated then. Ops in reverse: saved tensors are released when
/// the earliest op that saved them has run its backward; the gradient of a tensor
/// exists from the backward of its last consumer until the backward of its producer;
/// parameter gradients appear at their op's backward and stay.
fn backward_peak(g: &Graph, out: T) -> (u64, u64) {
    let ops = g.op;
    let n_ops = ops as usize;
    let mut bwd_peak = 0u64;
    let mut bwd_peak_param_grads = 0u64;
    // live[j] for j in 1..=ops, as differences over j
    let mut act = vec![0i128; n_ops + 2];
    let mut pgd = vec![0i128; n_ops + 2];
    let add = |v: &mut Vec<i128>, from: u32, to: u32, b: u64| {
        if from <= to {
            v[from as usize] += b as i128;
            v[to as usize + 1] -= b as i128;
        }
    };
    for (idx, n) in g.nodes.iter().enumerate() {
        if Keep::is_saved(n) {
            add(&mut act, n.saved_by.max(1), ops, n.bytes);
        }
        if n.rg {
            let last = if idx == out.0 { ops } else { n.last_use };
            add(&mut act, n.born.max(1), last.min(ops), n.bytes);
        }
    }
    for &(o, b) in &g.bwd_workspace {
        add(&mut act, o, o, b);
    }
    for &(o, b) in &g.param_grads {
        add(&mut pgd, 1, o.min(ops), b);
    }
    let (mut live, mut pg) = (0i128, 0i128);
    for j in 1..=n_ops {
        live += act[j];
        pg += pgd[j];
        let total = (live + pg) as u64;
        // ties go to the later op in backward order (smaller j), as the reverse walk
        if total >= bwd_peak {
            bwd_peak = total;
            bwd_peak_param_grads = pg as u64;
        }
    }
    (bwd_peak, bwd_peak_param_grads)
}

/// Activation gradients alive when the backward reaches op `j` (before `j`'s own
/// backward runs: the gradients of tensors born at or before `j` whose consumers
/// after `j` have all run theirs), and the parameter gradients allocated by the ops
/// after `j`.
fn grads_waiting_at(g: &Graph, out: T, j: u32) -> (u64, u64) {
    let ops = g.op;
    let mut act = 0u64;
    for (idx, n) in g.nodes.iter().enumerate() {
        if !n.rg {
            continue;
        }
        let last = if idx == out.0 { ops } else { n.last_use };
        if n.born <= j && last > j {
            act += n.bytes;
        }
    }
    let pg = g
        .param_grads
        .iter()
        .filter(|(o, _)| *o > j)
        .map(|(_, b)| *b)
        .sum();
    (act, pg)
}

/// Liveness of a recorded program.
fn measure(g: &Graph, out: T, p: &LedgerParams) -> LayerLedger {
    let ckpt = p.grad_ckpt;
    let training = p.trainable.any();
    let keep = Keep { training, ckpt };
    let saved: u64 = g
        .nodes
        .iter()
        .filter(|n| keep.kept_fwd(n))
        .map(|n| n.bytes)
        .sum();
    // Autocast copies that autograd does not keep still live until the forward ends.
    let fwd_cache: u64 = g
        .nodes
        .iter()
        .filter(|n| n.kind == Kind::Cache && !keep.kept_fwd(n))
        .map(|n| n.bytes)
        .sum();
    let output_bytes = g.nodes[out.0].bytes;
    let ctx_held = ctx_held_bytes(g, p);

    // Forward: live bytes at each op (transients live until their last use).
    let fwd_peak = fwd_peak_with(g, &|n| keep.kept_fwd(n));

    let mut bwd_peak = 0u64;
    let mut bwd_peak_param_grads = 0u64;
    let param_grads: u64 = g.param_grads.iter().map(|(_, b)| *b).sum();
    if training {
        (bwd_peak, bwd_peak_param_grads) = backward_peak(g, out);
        if ckpt == GradCkpt::Full {
            // torch.utils.checkpoint non-reentrant (torch 2.15 `_checkpoint_hook`,
            // early stop on): the backward runs the layer's last ops, which save
            // nothing (casts, adds, scalings: a LoRA branch's tail), until the first
            // node that unpacks a saved tensor; the recomputation then replays the
            // forward up to the last op that saves one, while the gradients produced so
            // far (and the parameter gradients of those ops) wait.
            let j = g.last_unpack.max(1);
            let (waiting, pg) = grads_waiting_at(g, out, j);
            let recompute = fwd_peak_upto(g, &|n| keep.kept(n), j);
            if recompute + waiting + pg > bwd_peak {
                bwd_peak = recompute + waiting + pg;
                bwd_peak_param_grads = pg;
            }
        } else if ckpt != GradCkpt::None {
            // Reentrant `CheckpointFunction.backward` (and Megatron's recomputation)
            // rebuild the whole forward and its saved set before the layer's backward,
            // while the output gradient waits.
            let recompute = fwd_peak_with(g, &|n| keep.kept(n));
            if recompute + output_bytes > bwd_peak {
                bwd_peak = recompute + output_bytes;
                bwd_peak_param_grads = 0;
            }
        }
    }

    let tensors = g
        .nodes
        .iter()
        .filter(|n| n.bytes > 0)
        .map(|n| LedgerTensor {
            name: n.name,
            bytes: n.bytes,
            dtype: n.dtype,
            saved: keep.kept(n),
        })
        .collect();
    LayerLedger {
        saved,
        fwd_cache,
        fwd_peak,
        bwd_peak,
        bwd_peak_param_grads,
        param_grads,
        output_bytes,
        tensors,
        ctx_held,
    }
}

/// Bytes `ctx` attributes keep in `g` (training without checkpointing: a checkpointed
/// forward keeps nothing of the kind past its region).
fn ctx_held_bytes(g: &Graph, p: &LedgerParams) -> u64 {
    if !p.trainable.any() || p.grad_ckpt != GradCkpt::None {
        return 0;
    }
    g.nodes.iter().filter(|n| n.ctx_held).map(|n| n.bytes).sum()
}

/// Ledger of one decoder layer whose input requires grad (`input_rg`); layer 0 of a
/// LoRA model gets `false` (the frozen embedding's output needs no gradient).
pub fn layer(spec: &ModelSpec, p: &LedgerParams, input_rg: bool) -> LayerLedger {
    layer_of(spec, &spec.groups[0], p, input_rg)
}

/// [`layer`] for a layer with the block `modules` (one of the stack's groups).
pub fn layer_of(
    spec: &ModelSpec,
    group: &LayerGroup,
    p: &LedgerParams,
    input_rg: bool,
) -> LayerLedger {
    let rg = input_rg && p.trainable.any();
    let (mut g, out) = if p.litgpt {
        litgpt::layer_program(spec, p, rg)
    } else {
        layer_program(spec, group, p, rg)
    };
    if p.compile && p.grad_ckpt == GradCkpt::None {
        compiled_saves(&mut g);
    }
    measure(&g, out, p)
}

/// What a compiled layer saves, as a documented approximation of inductor's min-cut
/// partitioner (torch 2.15 `torch/_functorch/partitioners.py`
/// `min_cut_rematerialization_partition`: pointwise ops are recomputed in backward,
/// matmuls and reductions never are, `ban_recompute_reductions`): a tensor eager
/// autograd saves that an elementwise op made (a norm's fp32 copy and scaled output,
/// an activation's output, a cast) is dropped unless a matmul or attention kernel
/// reads it, and the tensors it is recomputed from — back to matmul / attention
/// outputs, the layer input, kernel inputs or per-row statistics (≤ one element per
/// token: rstd) — are saved instead. Checked against inductor by
/// `probes/compile_probe.py` (saved-tensor hooks around one compiled decoder layer,
/// torch 2.15 on CPU; `tests/data/trace/compiled_layers.csv`, asserted by
/// `tests/it/oracle.rs`). Forward transients stay as eager (the fusion of the
/// intermediates is not modelled: an upper bound). Not applied under checkpointing,
/// where a layer saves its input either way.
fn compiled_saves(g: &mut Graph) {
    let tokens = g.tokens;
    let keeps = |n: &Node| {
        matches!(
            n.kind,
            Kind::Matmul | Kind::Input | Kind::AttnCore | Kind::Cache
        ) || n.feeds_kernel
            || n.bytes / n.dtype.size().max(1) <= tokens
    };
    let mut stack: Vec<usize> = Vec::new();
    for i in 0..g.nodes.len() {
        let n = &g.nodes[i];
        if n.saved_by == u32::MAX || keeps(n) {
            continue;
        }
        let at = n.saved_by;
        g.nodes[i].saved_by = u32::MAX;
        stack.clear();
        stack.extend(g.nodes[i].srcs.iter().map(|&s| s as usize));
        while let Some(j) = stack.pop() {
            if keeps(&g.nodes[j]) {
                let nj = &mut g.nodes[j];
                nj.saved_by = nj.saved_by.min(at);
            } else {
                let more: smallvec::SmallVec<[u32; 3]> = g.nodes[j].srcs.clone();
                stack.extend(more.iter().map(|&s| s as usize));
            }
        }
    }
}

/// Everything outside the decoder layers that stays alive from forward to backward,
/// and the transient peaks of the head + loss.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NonLayer {
    /// Saved by the embedding side and shared by all layers (position ids, rotary
    /// cos/sin, causal mask under checkpointing, embedding dropout mask).
    pub shared: u64,
    /// Saved by the final norm, the output head and the loss.
    pub head_saved: u64,
    /// Of which: the loss (log-probabilities in fp32, labels).
    pub loss_saved: u64,
    /// Extra live bytes at the forward peak of head + loss (logits and their fp32
    /// copy), beyond `head_saved`.
    pub head_fwd_transient: u64,
    /// Extra live bytes at the backward peak of loss + head, beyond `head_saved`.
    pub head_bwd_transient: u64,
    /// Bytes of the embedding output (the first residual stream tensor).
    pub embed_out: u64,
    /// Held by the training loop from the loss until the backward ends (litgpt's
    /// `logits`, Fabric's fp32 copy): neither saved by autograd nor freed by it.
    pub held_by_loop: u64,
    /// What the head's `ctx` attributes keep (see [`LayerLedger::ctx_held`]).
    pub ctx_held: u64,
}

/// The non-layer ledger.
pub fn non_layer(spec: &ModelSpec, p: &LedgerParams) -> NonLayer {
    let tokens = p.batch * p.seq;
    let resid_dt = p.resid_dtype();
    let mut nl = NonLayer {
        embed_out: tokens * spec.hidden * resid_dt.size() / p.sp_div.max(1),
        // litgpt's cos/sin are buffers, and it builds no mask: nothing shared
        shared: if p.trainable.any() && !p.litgpt {
            shared_saved(spec, p)
        } else {
            0
        },
        ..NonLayer::default()
    };
    if let Trainable::Lora {
        adapter: Adapter::PromptTuning,
        rank: virtual_tokens,
        ..
    } = p.trainable
    {
        if p.grad_ckpt != GradCkpt::None {
            // peft's prompt-tuning forward under checkpointing: the word embeddings'
            // output (made to require grad by `enable_input_require_grads`) stays
            // alive beside the concatenated [prompt; input] the first layer reads —
            // measured by the trace probe (mode `prompt_tuning`: exactly b × seq × h
            // of the residual dtype more than the concatenation alone)
            let user_tokens = p.batch * p.seq.saturating_sub(virtual_tokens);
            nl.shared += user_tokens * spec.hidden * resid_dt.size();
        }
    }
    if p.litgpt {
        litgpt::head_and_loss(spec, p, &mut nl);
    } else {
        head_and_loss(spec, p, &mut nl);
    }
    nl
}

/// Training: what the embedding side saves for every layer (position ids, rotary
/// tables, a checkpointed eager mask, the embedding dropout mask, BLOOM's embedding
/// norm).
fn shared_saved(spec: &ModelSpec, p: &LedgerParams) -> u64 {
    let tokens = p.batch * p.seq;
    let resid_dt = p.resid_dtype();
    let h = spec.hidden;
    let mut shared = 0;
    // position ids [1, s] int64: saved by a learned position table it trains, or
    // as an input of every checkpointed layer
    let pos_saved = match spec.positions {
        Positions::Learned => p.trainable.base_weights() || p.grad_ckpt != GradCkpt::None,
        _ => p.grad_ckpt != GradCkpt::None,
    };
    if pos_saved {
        shared += p.seq * 8;
    }
    if let (Positions::Rope { rotary_dim }, false) = (spec.positions, spec.rope_before_transpose) {
        // cos and sin [1, s, rotary_dim] in the hidden-state dtype, saved by the
        // rotary muls of every layer (one storage); gpt-oss's tables are half as wide
        // (modeling_gpt_oss.py `GptOssRotaryEmbedding`: no `cat((freqs, freqs))`);
        // DeepSeek-V2's one complex64 `freqs_cis` [1, s, rope / 2]
        let table = if spec.mla.is_some_and(|m| m.complex_rope) {
            p.seq * rotary_dim * 4
        } else if spec.rope_half_table {
            p.seq * rotary_dim * resid_dt.size()
        } else {
            2 * p.seq * rotary_dim * resid_dt.size()
        };
        // Gemma-3: one table per layer type (modeling_gemma3.py
        // `position_embeddings[layer_type]`, local and global rope bases), each saved
        // by the layers of its type (trace probe: +1 MiB at s1024 with both present)
        let both_types =
            spec.groups.iter().any(|g| g.sliding) && spec.groups.iter().any(|g| !g.sliding);
        let tables = if spec.family == crate::arch::Family::Gemma3Text && both_types {
            2
        } else {
            1
        };
        shared += tables * table;
    }
    if p.attn == Attn::Eager && p.grad_ckpt != GradCkpt::None {
        // the additive 4-D causal mask [b, 1, s, s] becomes a saved checkpoint input;
        // a stack of sliding and full layers gets one mask of each type, distinct
        // once the keys pass the window (masking_utils
        // `create_sliding_window_causal_mask`; trace probe: gpt-oss at s256, window 128)
        let sliding = spec.sliding_layer_count();
        let kinds = if sliding > 0
            && sliding < spec.layers()
            && spec.sliding_window.is_some_and(|w| w < p.kv_len)
        {
            2
        } else {
            1
        };
        shared += kinds * p.batch * p.seq * p.kv_len * resid_dt.size();
    }
    let any_sliding = spec.groups.iter().any(|g| g.sliding);
    let any_full = spec.groups.iter().any(|g| !g.sliding);
    if p.grad_ckpt != GradCkpt::None {
        // SDPA's boolean mask [b, 1, s, s] (masking_utils sdpa_mask) as a checkpoint
        // input: one per layer type that gets one (distinct once the keys pass the
        // window, as the eager masks above)
        let sliding_mask = any_sliding && explicit_sdpa_mask(spec, p, true);
        let full_mask = any_full && explicit_sdpa_mask(spec, p, false);
        let masks = match (sliding_mask, full_mask) {
            (true, true) if spec.sliding_window.is_some_and(|w| w < p.kv_len) => 2,
            (false, false) => 0,
            _ => 1,
        };
        shared += masks * p.batch * p.seq * p.kv_len;
    }
    if spec.dropout.embd > 0.0 && embedding_output_requires_grad(p) {
        // the mask is saved only when the embedding output needs a gradient
        let mask = match p.device {
            Device::Cuda => 1,
            Device::Cpu => resid_dt.size(),
        };
        shared += tokens * h * mask;
    }
    if p.trainable.any() && !p.trainable.base_weights() && p.grad_ckpt != GradCkpt::None {
        // adapters + checkpointing: `enable_input_require_grads()` (transformers
        // modeling_utils.py, called by peft when it wraps a checkpointed model and by
        // `gradient_checkpointing_enable()` on a PEFT model) does
        // `output.requires_grad_(True)` on the frozen embedding's output, which makes it a
        // leaf: its AccumulateGrad node holds it until backward (measured by the trace
        // probe: alive after forward, not saved by any op). Extra only when an op that
        // saves nothing of it (the learned-position add, embedding dropout) stands
        // between it and layer 0; otherwise it is layer 0's checkpointed input (Gemma
        // scales inside its embedding module) or the input BLOOM's embedding norm saves.
        let transformed = matches!(spec.positions, Positions::Learned)
            || spec.dropout.embd > 0.0
            || spec.scalars.embedding;
        if transformed && !spec.embed_norm {
            shared += tokens * h * resid_dt.size();
        }
    }
    if spec.embed_norm && embedding_output_requires_grad(p) {
        // BLOOM's word_embeddings_layernorm: input + mean + rstd
        let stat = match p.device {
            Device::Cuda => 4,
            Device::Cpu => resid_dt.size(),
        };
        shared += tokens * h * resid_dt.size() + 2 * tokens * stat;
    }
    shared
}

/// The recorded final norm + head + loss program.
struct HeadProgram<'a> {
    g: Graph<'a>,
    /// The final norm's output (the head input).
    head_in: T,
    /// First node of the loss (after the logits).
    loss_from: usize,
    /// The loss scalar (the logits with a fused linear + CE).
    last: T,
}

/// Final norm + head + loss as a small program, run under `p_head`.
fn head_program<'a>(spec: &ModelSpec, p_head: &'a LedgerParams, training: bool) -> HeadProgram<'a> {
    let tokens = p_head.batch * p_head.seq;
    let compute = p_head.precision.compute_dtype();
    let h = spec.hidden;
    let v = spec.vocab;
    let mut g = Graph::new(p_head);
    g.ln = LnNorms::of(spec);
    let x = g.input(h, p_head.resid_dtype(), training);
    let n = g.norm(x, h, spec.norm, NormSlot::Final);
    let head = spec.head_linear();
    let logits = g.linear(n, &head);
    let loss_from = g.nodes.len();
    let last = if p_head.loss == Loss::FusedLinearCe {
        logits
    } else {
        let mut l = logits;
        if spec.scalars.logits {
            // modeling_granite.py: logits = logits / logits_scaling
            l = g.scalar_mul("logits scale", l);
        }
        if spec.final_softcap.is_some() {
            l = g.softcap(l, tokens * v, compute);
        }
        if p_head.legacy_causal_lm_loss {
            // transformers < 4.46: the model's output is the fp32 upcast; the loss
            // reads a contiguous copy of all but the last position
            let l32 = g.cast(l, DType::F32);
            let shifted = g.unary_plain(
                "shift_logits copy",
                l32,
                p_head.batch * p_head.seq.saturating_sub(1) * v,
                DType::F32,
            );
            let lsm = g.unary_save_out("log_softmax", shifted, DType::F32);
            g.begin(&[lsm]);
            g.hold(&[l32, shifted, n]);
        } else {
            // transformers' ForCausalLMLoss: logits.float(), then cross_entropy
            let l32 = g.cast(l, DType::F32);
            let lsm = g.unary_save_out("log_softmax", l32, DType::F32);
            // The model's `logits` (returned in its output) and the loss function's
            // fp32 copy stay referenced until the loss is computed, and so does the
            // final norm's output (`outputs.last_hidden_state` in
            // `LlamaForCausalLM.forward`, transformers 5.24; saved anyway when the
            // head is trainable).
            g.begin(&[lsm]);
            g.hold(&[logits, l32, n]);
        }
        let labels = g.out("shift labels", tokens, DType::I64, false, Kind::Other);
        g.save_if(labels, training);
        g.out("loss", 1, DType::F32, training, Kind::Other)
    };
    HeadProgram {
        g,
        head_in: n,
        loss_from,
        last,
    }
}

/// The run's parameters for the final norm and head: trainable with full fine-tuning
/// (tied or not), under LoRA only when the targets name the head (peft's all-linear
/// excludes it); never inside a checkpointed layer.
fn head_params(p: &LedgerParams) -> LedgerParams {
    LedgerParams {
        trainable: match &p.trainable {
            // only the head itself, when the targets name it
            Trainable::Lora {
                rank,
                targets,
                adapter,
            } => Trainable::Lora {
                rank: *rank,
                adapter: *adapter,
                targets: LoraTargets::Names(if targets.head() {
                    vec![crate::arch::HEAD_NAME.to_string()]
                } else {
                    Vec::new()
                }),
            },
            t => t.clone(),
        },
        // the head and loss are never inside a checkpointed layer
        grad_ckpt: GradCkpt::None,
        ..p.clone()
    }
}

/// Fills the head fields of `nl`: what the final norm, head and loss save, and their
/// forward / backward transients, per loss implementation.
fn head_and_loss(spec: &ModelSpec, p: &LedgerParams, nl: &mut NonLayer) {
    let training = p.trainable.any();
    let tokens = p.batch * p.seq;
    let p_head = head_params(p);
    let hp = head_program(spec, &p_head, training);
    let g = &hp.g;
    // the loss scalar is the program's output, kept by the caller
    let m = measure(g, hp.last, &p_head);
    let loss_saved: u64 = if training {
        g.nodes[hp.loss_from..]
            .iter()
            .filter(|n| n.saved_by != u32::MAX)
            .map(|n| n.bytes)
            .sum()
    } else {
        0
    };
    let head_saved = m.saved;
    let fwd_t = m.fwd_peak.saturating_sub(m.saved);
    let bwd_t = m.bwd_peak.saturating_sub(m.saved);
    match p.loss {
        Loss::Standard => {
            nl.head_saved = head_saved;
            nl.loss_saved = loss_saved;
            nl.head_fwd_transient = fwd_t;
            nl.head_bwd_transient = bwd_t;
        }
        Loss::Chunked if training => {
            // torchtune `CEWithChunkedOutputLoss` (modules/loss/ce_chunked_output_loss.py)
            // over `TransformerDecoder.chunked_output`: the head runs chunk by chunk into
            // a list of half-precision logits the recipe holds until the loss returns
            // (`del logits` before `backward`, recipes/full_finetune_single_device.py);
            // each chunk is upcast and cross-entropied on its own.
            let chunks = CHUNKED_LOSS_CHUNKS.min(tokens.max(1));
            let cd = p.precision.compute_dtype().size();
            let logits = tokens * spec.vocab;
            let chunk = logits.div_ceil(chunks);
            if p.compile {
                // compiled: each chunk's graph saves that chunk (the list's own tensor),
                // its labels and two fp32 values per row; fused kernels, no fp32 chunk
                nl.loss_saved = logits * cd + tokens * DType::I64.size() + 2 * tokens * 4;
                nl.head_saved = head_saved - loss_saved + nl.loss_saved;
                nl.head_fwd_transient = 0;
                // backward: one chunk's half-precision gradient being written
                nl.head_bwd_transient = chunk * cd;
            } else {
                // eager: every chunk's fp32 log-probabilities saved, the half list held
                // beside them, one chunk's fp32 copy in flight
                nl.head_saved = head_saved;
                nl.loss_saved = loss_saved;
                nl.head_fwd_transient = logits * cd + chunk * 4;
                // backward (the half list gone): one chunk's fp32 gradient and its cast
                nl.head_bwd_transient = chunk * 4 + chunk * cd;
            }
        }
        Loss::Chunked => {
            let chunks = CHUNKED_LOSS_CHUNKS.min(tokens.max(1));
            nl.head_saved = head_saved;
            nl.loss_saved = loss_saved;
            nl.head_fwd_transient = fwd_t / chunks;
            nl.head_bwd_transient = bwd_t / chunks;
        }
        Loss::FusedLinearCe => fused_linear_ce(spec, p, &hp, nl),
    }
}

/// Liger fused linear + CE: the gradient w.r.t. the head input is computed in forward
/// chunk by chunk and kept (T×h); logits never exist in full.
fn fused_linear_ce(spec: &ModelSpec, p: &LedgerParams, hp: &HeadProgram, nl: &mut NonLayer) {
    let tokens = p.batch * p.seq;
    let (h, v) = (spec.hidden, spec.vocab);
    let g = &hp.g;
    let grad_in = if p.trainable.any() {
        tokens * h * p.precision.compute_dtype().size()
    } else {
        0
    };
    let head_in = g.nodes[hp.head_in.0].bytes;
    let norm_saved = g.nodes[..hp.loss_from]
        .iter()
        .filter(|nd| nd.saved_by != u32::MAX && nd.name != "lm_head")
        .map(|nd| nd.bytes)
        .sum::<u64>()
        .saturating_sub(if g.nodes[hp.head_in.0].saved_by != u32::MAX {
            head_in
        } else {
            0
        });
    // a trained head: Liger's forward also accumulates the head weight's gradient,
    // chunk by chunk, into `grad_weight = torch.zeros_like(weight)` and saves it for
    // backward (liger_kernel/ops/fused_linear_cross_entropy.py
    // `fused_linear_cross_entropy_forward`, `ctx.save_for_backward(grad_input,
    // grad_weight, ...)`); backward returns it as the weight's gradient
    let grad_weight = if p.trainable.base_weights() {
        v * h * p.precision.param_dtype().size()
    } else {
        0
    };
    nl.head_saved = norm_saved + grad_in + grad_weight;
    nl.loss_saved = grad_in + grad_weight;
    // one chunk of fp32 logits and its gradient (Liger sizes chunks to about
    // hidden_size tokens)
    let chunk_tokens = tokens.min(h);
    nl.head_fwd_transient = chunk_tokens * v * 4 * 2;
    nl.head_bwd_transient = 0;
}

/// Chunks of the chunked cross-entropy (torchtune `CEWithChunkedOutputLoss`, litgpt).
pub const CHUNKED_LOSS_CHUNKS: u64 = 8;

/// The whole activation picture for one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activations {
    /// A layer whose input requires grad (every layer but possibly the first) — of the
    /// stack's top group when its groups differ.
    pub layer: LayerLedger,
    /// Layer 0 (differs under LoRA/QLoRA: its input needs no gradient).
    pub first: LayerLedger,
    /// Decoder layers in the stack.
    pub layers: u64,
    /// A stack of groups with different blocks (DeepSeek's dense first layers, then the
    /// MoE ones): each group's layer count and general ledger, bottom to top; empty
    /// for a uniform stack, whose every layer is `layer`.
    pub groups: Vec<(u64, LayerLedger)>,
    pub non_layer: NonLayer,
    /// `activations.per_layer_bytes`: what one decoder layer keeps alive until its
    /// backward.
    pub per_layer_bytes: u64,
    /// `activations.non_layer_bytes`: everything else kept until backward (embedding
    /// side, final norm, head input, loss tensors, and the first layer's difference).
    pub non_layer_bytes: u64,
}

/// What the model keeps alive after the forward pass, as the estimate adds it up:
/// non-layer + layers × per-layer bytes (the trace probe's `live_after_fwd_bytes`).
pub fn live_after_forward(spec: &ModelSpec, p: &LedgerParams) -> u64 {
    let a = activations(spec, p);
    a.non_layer.shared + a.non_layer.head_saved + a.stack_saved()
}

impl Activations {
    /// The stack as runs of equal layers, bottom to top, the first layer's own ledger
    /// apart: (count, ledger).
    pub fn runs(&self) -> Vec<(u64, &LayerLedger)> {
        let mut out = vec![(1, &self.first)];
        if self.groups.is_empty() {
            out.push((self.layers - 1, &self.layer));
        } else {
            for (i, (n, l)) in self.groups.iter().enumerate() {
                out.push((if i == 0 { n - 1 } else { *n }, l));
            }
        }
        out.retain(|(n, _)| *n > 0);
        out
    }

    /// Bytes every decoder layer keeps until its backward, summed over the stack.
    pub fn stack_saved(&self) -> u64 {
        self.runs()
            .iter()
            .map(|(n, l)| n.saturating_mul(l.saved))
            .fold(0, u64::saturating_add)
    }

    /// The largest of the stack's layers by `f` (over every group's ledger).
    pub fn max_layer(&self, f: impl Fn(&LayerLedger) -> u64) -> u64 {
        self.runs().iter().map(|(_, l)| f(l)).max().unwrap_or(0)
    }
}

pub fn activations(spec: &ModelSpec, p: &LedgerParams) -> Activations {
    let same = |a: &LayerGroup, b: &LayerGroup| a.modules == b.modules && a.sliding == b.sliding;
    // litgpt's program is one block whatever the groups (its own attention)
    let mixed = !p.litgpt && spec.groups.iter().any(|g| !same(g, &spec.groups[0]));
    let groups: Vec<(u64, LayerLedger)> = if mixed {
        // one program per distinct (block, attention type)
        let mut distinct: Vec<(LayerGroup, LayerLedger)> = Vec::new();
        let mut out = Vec::with_capacity(spec.groups.len());
        for g in &spec.groups {
            let l = match distinct.iter().find(|(d, _)| same(d, g)) {
                Some((_, l)) => l.clone(),
                None => {
                    let l = layer_of(spec, g, p, true);
                    distinct.push((*g, l.clone()));
                    l
                }
            };
            out.push((g.count, l));
        }
        out
    } else {
        Vec::new()
    };
    let layer = match groups.last() {
        Some((_, l)) => l.clone(),
        None => layer(spec, p, true),
    };
    // The embedding output requires grad only when the embedding is trainable (or the
    // image features merged into it need a gradient).
    let vision_run = spec.vision.as_ref().filter(|_| p.images > 0);
    let first = match vision_run {
        Some(_) if p.trainable.any() && vision::features_require_grad(p.vision) => {
            self::layer(spec, p, true)
        }
        _ => layer_for_first(spec, p),
    };
    let mut nl = non_layer(spec, p);
    if let Some(v) = vision_run {
        // the tower, projector and merge keep their tensors from the forward until
        // the backward ends (they run before the first decoder layer)
        nl.shared += vision::saved(v, p, p.images, p.vision).total();
    }
    let per_layer = layer.saved;
    let mut a = Activations {
        layer,
        first,
        layers: spec.layers(),
        groups,
        non_layer: nl,
        per_layer_bytes: per_layer,
        non_layer_bytes: 0,
    };
    // a stack of different layers: `per_layer_bytes` is its mean (rounded down), so
    // that non-layer + layers × per-layer stays the total
    let stack = a.stack_saved();
    if !a.groups.is_empty() {
        a.per_layer_bytes = stack / a.layers.max(1);
    }
    // everything that is not `layers × per_layer`: the embedding side, the head and
    // loss, the first layer's difference (and the rounding of a mixed stack's mean)
    a.non_layer_bytes = (a.non_layer.shared + a.non_layer.head_saved + stack)
        .saturating_sub(a.layers.saturating_mul(a.per_layer_bytes));
    a
}

/// Whether SDPA gets an explicit mask in training: Falcon always; a sliding-window
/// layer (`sliding`) once the keys reach the window (masking_utils
/// `_ignore_causal_mask_sdpa`: `kv_length >= local_attention_size` keeps the mask); a
/// full-attention layer of a hybrid stack (Gemma-3's and Cohere-2's global layers) runs
/// `is_causal` without one.
fn explicit_sdpa_mask(spec: &ModelSpec, p: &LedgerParams, sliding: bool) -> bool {
    p.attn == Attn::Sdpa
        && (spec.mask_always_materialized
            || (sliding && spec.sliding_window.is_some_and(|w| p.kv_len >= w))
            // prefix tuning's past keys: masking_utils `_ignore_causal_mask_sdpa` drops
            // the mask only for kv_length == query_length
            || p.prefix_tokens() > 0
            // Gemma-3's images attend both ways within their block: every layer type's
            // mask is built from `token_type_ids` (VisionSpec::bidirectional_images)
            || (p.images > 0
                && spec
                    .vision
                    .as_ref()
                    .is_some_and(|v| v.bidirectional_images)))
}

/// Elements of a [b, 1, s, kv] attention mask.
fn p_mask_elems(p: &LedgerParams) -> u64 {
    p.batch * p.seq * p.kv_len
}

/// Whether the embedding output requires grad: with a trainable embedding, or when
/// transformers' `gradient_checkpointing_enable()` calls `enable_input_require_grads()`
/// on a PEFT model (so checkpointed layers get a gradient-carrying input).
fn embedding_output_requires_grad(p: &LedgerParams) -> bool {
    p.trainable.base_weights()
        || (p.trainable.any() && p.grad_ckpt != GradCkpt::None)
        // the trained prompt embeddings are concatenated into the first layer's input
        || matches!(
            p.trainable,
            Trainable::Lora {
                adapter: Adapter::PromptTuning,
                ..
            }
        )
}

fn layer_for_first(spec: &ModelSpec, p: &LedgerParams) -> LayerLedger {
    let embed_rg = embedding_output_requires_grad(p);
    let mut l = layer(spec, p, embed_rg);
    if p.grad_ckpt.is_full() && p.trainable.any() {
        // a checkpointed layer saves its input even when it needs no gradient
        l.saved = l.saved.max(layer(spec, p, true).saved);
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(trainable: Trainable, ckpt: GradCkpt) -> LedgerParams {
        // AMP: fp32 parameters, fp32 gradients
        LedgerParams::plain(
            1,
            256,
            Precision::AmpBf16,
            Attn::Sdpa,
            ckpt,
            Device::Cuda,
            trainable,
        )
    }

    /// Liger's fused linear cross-entropy keeps the head weight's gradient from its
    /// forward (`grad_weight`, the weight's dtype: fp32 under autocast) when the head
    /// trains: Llama-3.2-1B's tied 128,256 × 2,048 matrix, 4 B each, beside the input
    /// gradient both recipes keep.
    #[test]
    fn fused_linear_ce_keeps_the_trained_heads_weight_gradient() {
        let spec = crate::hf::presets::get("llama-3.2-1b").unwrap().unwrap();
        let with = |t: Trainable| {
            let p = LedgerParams {
                loss: Loss::FusedLinearCe,
                ..params(t, GradCkpt::None)
            };
            non_layer(&spec, &p).loss_saved
        };
        let lora = Trainable::Lora {
            rank: 16,
            targets: LoraTargets::AllLinear,
            adapter: Adapter::Lora,
        };
        assert_eq!(with(Trainable::All) - with(lora), 128_256 * 2_048 * 4);
    }

    #[test]
    fn autocast_caches_only_weights_that_require_grad() {
        let spec = crate::hf::presets::get("llama-3.2-1b").unwrap().unwrap();
        let lin: u64 = spec
            .layer_linears()
            .iter()
            .map(|l| l.in_features * l.out_features)
            .sum();
        // full fine-tuning under checkpointing: the cached half copies outlive the layer
        let full = layer(&spec, &params(Trainable::All, GradCkpt::Full), true);
        assert_eq!(full.fwd_cache, lin * 2);
        // LoRA: frozen weights are cast per call, nothing is cached
        let lora = Trainable::Lora {
            rank: 16,
            targets: LoraTargets::AllLinear,
            adapter: Adapter::Lora,
        };
        let l = layer(&spec, &params(lora, GradCkpt::Full), true);
        assert_eq!(l.fwd_cache, 0);
    }
}
