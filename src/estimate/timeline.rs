//! The step as a timeline of allocations and frees; the peak is its maximum.
//!
//! Training step (steady state: optimizer state exists from step 1 on):
//! 1. `load`: weights, master weights, optimizer state, cuBLAS workspace resident.
//! 2. `forward`: embedding (shared non-layer tensors), then layer by layer — the saved
//!    bytes of finished layers accumulate, the running layer adds its in-flight peak.
//! 3. `loss`: final norm, head, logits and their fp32 copy, log-softmax.
//! 4. `backward`: loss/head backward (head gradient allocated), then layers in reverse:
//!    each frees its saved tensors and allocates its parameter gradients; gradients of
//!    activations are in flight; the embedding gradient comes last.
//! 5. With `--grad-accum N > 1`, a second micro-batch runs forward and backward with
//!    every gradient already resident (accumulation adds a transient per layer).
//! 6. `optimizer`: step temporaries on top of weights + gradients + state; then
//!    `zero_grad(set_to_none=True)` frees the gradients.
//!
//! Inference: `load` → `prefill` (per-layer transients of the prompt chunk, KV cache of
//! the prompt, last-position logits) → `decode` (KV cache at prompt + generated tokens,
//! one-token transients, logits and sampling buffers).

use crate::units::bytes::Bytes;

/// What is in memory at one moment, by kind. Every byte counted once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Components {
    pub weights: Bytes,
    pub gradients: Bytes,
    pub optimizer_state: Bytes,
    pub master_weights: Bytes,
    pub activations: Bytes,
    pub logits_and_loss: Bytes,
    pub kv_cache: Bytes,
    pub temporaries: Bytes,
    pub overhead: Bytes,
}

impl Components {
    pub fn total(&self) -> Bytes {
        self.weights
            + self.gradients
            + self.optimizer_state
            + self.master_weights
            + self.activations
            + self.logits_and_loss
            + self.kv_cache
            + self.temporaries
            + self.overhead
    }

    /// Named entries, in display order.
    pub fn entries(&self) -> [(&'static str, Bytes); 9] {
        [
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("optimizer_state", self.optimizer_state),
            ("master_weights", self.master_weights),
            ("activations", self.activations),
            ("logits_and_loss", self.logits_and_loss),
            ("kv_cache", self.kv_cache),
            ("temporaries", self.temporaries),
            ("overhead", self.overhead),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Load,
    Forward,
    Loss,
    Backward,
    Optimizer,
    Prefill,
    Decode,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Load => "load",
            Phase::Forward => "forward",
            Phase::Loss => "loss",
            Phase::Backward => "backward",
            Phase::Optimizer => "optimizer",
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
        }
    }
}

/// One moment of the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub phase: Phase,
    pub event: String,
    /// Bytes handed out by the framework allocator (tensors + cuBLAS workspace): what
    /// `torch.cuda.memory_allocated` reports.
    pub allocated: Bytes,
    /// `allocated` + the allocator's fragmentation/caching slack (`memory_reserved`).
    pub reserved: Bytes,
    /// Components at this moment; their sum is the device memory in use (`reserved` +
    /// CUDA context + NCCL buffers).
    pub components: Components,
}

/// Fixed per-run overheads applied to every event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventOverheads {
    /// In the allocator (cuBLAS workspace).
    pub in_allocator: u64,
    /// Outside it (CUDA context, NCCL).
    pub outside: u64,
    /// Fraction of dynamic memory the caching allocator holds in addition.
    pub fragmentation: f64,
    /// Component bytes in CUDA managed memory (a paged optimizer's state): on the
    /// device, outside the allocator's counters.
    pub managed: u64,
}

impl EventOverheads {
    /// (allocated, reserved, components with `overhead` filled in).
    pub fn apply(&self, mut c: Components) -> (u64, u64, Components) {
        let tensors = c.total().get().saturating_sub(self.managed);
        let allocated = tensors + self.in_allocator;
        let dynamic = c.activations + c.logits_and_loss + c.temporaries + c.gradients;
        let slack = (dynamic.get() as f64 * self.fragmentation).round() as u64;
        c.overhead = Bytes(self.in_allocator + slack + self.outside);
        (allocated, allocated + slack, c)
    }
}

/// Where a simulation sends its moments.
pub trait Sink {
    /// `event` names the moment; it is only called by sinks that keep names.
    fn moment<F: FnOnce() -> String>(&mut self, phase: Phase, event: F, c: Components);
}

impl Sink for Recorder {
    fn moment<F: FnOnce() -> String>(&mut self, phase: Phase, event: F, c: Components) {
        self.record(phase, event(), c);
    }
}

/// A sink that keeps only the peak device bytes: no allocation, for searches.
#[derive(Debug, Clone, Copy)]
pub struct PeakOnly {
    pub ov: EventOverheads,
    pub peak: u64,
}

impl Sink for PeakOnly {
    fn moment<F: FnOnce() -> String>(&mut self, _phase: Phase, _event: F, c: Components) {
        let (_, _, c) = self.ov.apply(c);
        self.peak = self.peak.max(c.total().get());
    }
}

/// Builds events from component snapshots.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub events: Vec<Event>,
    ov: EventOverheads,
}

impl Recorder {
    pub fn new(ov: EventOverheads) -> Self {
        Recorder {
            events: Vec::with_capacity(64),
            ov,
        }
    }

    /// Record a moment. `c.overhead` is filled in here.
    pub fn record(&mut self, phase: Phase, event: impl Into<String>, c: Components) {
        let (allocated, reserved, c) = self.ov.apply(c);
        self.events.push(Event {
            phase,
            event: event.into(),
            allocated: Bytes(allocated),
            reserved: Bytes(reserved),
            components: c,
        });
    }

    /// The event with the most device memory in use (first one on ties).
    pub fn peak(&self) -> Option<&Event> {
        let mut best: Option<&Event> = None;
        for e in &self.events {
            if best.is_none_or(|b| e.components.total() > b.components.total()) {
                best = Some(e);
            }
        }
        best
    }
}

/// Inputs of a training-step simulation (all bytes) for one rank.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrainPlan {
    /// The decoder layers this rank runs (its pipeline stage), in order, as runs of
    /// layers with one cost: a frozen first layer under LoRA, alternating attention
    /// kinds, dense-first MoE stacks are all just runs.
    pub layers: LayerRuns,
    pub weights: u64,
    pub master_weights: u64,
    pub optimizer_state: u64,
    pub optimizer_step_temp: u64,
    pub embed_out: u64,
    pub shared: u64,
    pub head_saved: u64,
    pub loss_saved: u64,
    pub head_fwd_transient: u64,
    pub head_bwd_transient: u64,
    /// Gradient of the logits in the compute dtype, alive during the head's backward.
    pub head_grad_logits: u64,
    /// A chunked head's weight gradient of the chunk in backward, beside the running
    /// sum (`grad_head`) autograd's input buffer holds (0 when the head is frozen or
    /// not chunked).
    pub head_bwd_weight_grad: u64,
    /// Parameter gradients resident after backward: of the head (0 when frozen; a tied
    /// head's gradient is the embedding's), of the embedding (0 when frozen), of
    /// everything else (final norm, positions). Each layer's are in its [`LayerCost`].
    pub grad_head: u64,
    pub grad_embedding: u64,
    pub grad_other: u64,
    /// Tied embeddings: the embedding gradient accumulates into the head's.
    pub tied: bool,
    pub grad_accum: u64,
    /// This rank runs the embedding (first pipeline stage) / the head and loss (last).
    pub has_embedding: bool,
    pub has_head: bool,
    /// Saved activations of other micro-batches in flight on this stage (pipeline
    /// schedules), present throughout forward and backward.
    pub inflight_saved: u64,
    /// Gradient bytes held beyond the resident (sharded) ones while micro-batches
    /// accumulate under FSDP's `no_sync` (all zero otherwise).
    pub unsynced: Unsynced,
    /// FSDP's root unit gradients, unsharded: held from the head's backward until the
    /// embedding's completes the unit (`root_grads_pending`), and the extra while the
    /// unit's gradient is assembled beside them at the embedding's backward
    /// (`root_grads_assembly`; see `distributed::fsdp_states`).
    pub root_grads_pending: u64,
    pub root_grads_assembly: u64,
    /// FSDP: a layer unit's unsharded gradient as assembled for its reduce-scatter
    /// after the layer's backward — twice the unit's gradients (see
    /// `distributed::fsdp_states`); 0 otherwise.
    pub unit_grad_assembly: u64,
    /// FSDP with the embedding and the head as units of their own (torchtune
    /// `custom_sharded_layers`): their gathered parameters, present only around
    /// their own forward and backward, and the head's gradient as assembled at its
    /// backward (0 otherwise).
    pub embed_unit: u64,
    pub head_unit: u64,
    pub head_grad_assembly: u64,
    /// Gathered (unsharded) parameters during forward / parameters and unsharded
    /// gradients during backward (ZeRO-3, FSDP), and gradient buckets.
    pub gathered_fwd: u64,
    pub gathered_bwd: u64,
    /// Extra bytes during the optimizer step (e.g. ZeRO's all-gather bucket).
    pub optimizer_extra: u64,
    /// Held by the training loop from the loss through backward and the optimizer
    /// step, until the next micro-batch's forward returns (litgpt's `logits`).
    pub held_by_loop: u64,
    /// The previous step's graph, alive through this step's forward and loss because
    /// the loop still holds its `loss` (litgpt), counted by what custom Functions'
    /// `ctx` attributes keep in it (bitsandbytes < 0.43.2 4-bit inputs).
    pub prev_step_held: u64,
    /// torchtune `optimizer_in_bwd` (`modules/optim.py` `OptimizerInBackward`: one
    /// optimizer per parameter, `register_post_accumulate_grad_hook` →
    /// `_step_and_clear`): each gradient is stepped and freed as soon as autograd has
    /// accumulated it, so none stay resident; a tied embedding's head gradient waits in
    /// autograd's input buffer of its `AccumulateGrad` until the embedding's backward.
    /// `optimizer_step_temp` is then one tensor's step temporaries, present at every
    /// backward moment.
    pub optimizer_in_bwd: bool,
    /// torchtune activation offloading (`training/_activation_offloading.py`,
    /// `OffloadActivations` with `use_streams=True`, `max_fwd_stash_size=5`,
    /// `min_offload_size=1024`): every saved tensor of ≥ 1024 bytes that is not a
    /// parameter is copied to pinned host memory in forward; the GPU copy stays in
    /// `fwd_stash` until five newer ones are packed, and the stash is emptied after
    /// the first backward node that brings a tensor back. In backward a tensor comes
    /// back when its node unpacks it and is freed when the next node starts. Under
    /// activation checkpointing a layer saves one such tensor — its input, through
    /// `torch.utils.checkpoint`'s `_NoopSaveInputs`, outside the checkpoint's own hooks
    /// — so the value is the bytes of the layers' saved tensors the stash can hold
    /// (five layers' inputs), `None` without offloading. The output head's input stays
    /// on the GPU (`get_act_offloading_ctx_manager` disables offloading for
    /// `model.output`), and the loss runs outside the context.
    pub offload_stash: Option<u64>,
}

/// Gradient accumulation under FSDP's `no_sync` (torch 2.x
/// `torch/distributed/fsdp/_runtime_utils.py` `_post_backward_hook`: without
/// `_sync_gradients` it returns before `_reduce_grad`, leaving the unsharded
/// `flat_param.grad`; FSDP2 `_fsdp_param.py` keeps `unsharded_accumulated_grad`): each
/// accumulating micro-batch leaves every unit's gradient unsharded; the last one
/// accumulates into them and reduce-scatters each unit after its backward, freeing the
/// unsharded gradient. Bytes beyond the sharded gradients the plan already counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unsynced {
    /// Per decoder layer (a layer unit).
    pub layer: u64,
    /// The root unit's parameters (head, embedding, the rest as in
    /// [`TrainPlan::grad_head`] …), reduce-scattered at the end of backward.
    pub head: u64,
    pub embedding: u64,
    pub other: u64,
}

/// What one decoder layer costs on a rank's timeline (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LayerCost {
    /// Activations it saves for its backward.
    pub saved: u64,
    /// Held until the end of forward only (the autocast cache of its weights).
    pub fwd_cache: u64,
    /// Its peak above what earlier layers saved, in forward / in backward.
    pub fwd_peak: u64,
    pub bwd_peak: u64,
    /// Its own parameter gradients already allocated at its backward peak.
    pub bwd_peak_param_grads: u64,
    /// Extra transient while it runs (e.g. QLoRA's dequantized weight).
    pub extra_temp: u64,
    /// Its parameter gradients, resident after its backward.
    pub grad: u64,
}

/// The runs of a stage's layers: inline up to two runs (a first layer of its own and
/// the rest), so the layout search evaluates plans without allocating.
pub type LayerRuns = smallvec::SmallVec<[LayerRun; 2]>;

/// `count` consecutive decoder layers with the same cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerRun {
    pub count: u64,
    pub cost: LayerCost,
}

impl TrainPlan {
    /// Decoder layers on this rank.
    pub fn layer_count(&self) -> u64 {
        self.layers.iter().map(|r| r.count).sum()
    }

    /// Σ over layers of `f(cost)`.
    pub fn layers_sum(&self, f: impl Fn(&LayerCost) -> u64) -> u64 {
        self.layers.iter().map(|r| r.count * f(&r.cost)).sum()
    }

    /// Gradients resident after backward. With tied embeddings the head and the
    /// embedding share one gradient (`grad_head`); `grad_embedding` is then only a
    /// transient added into it.
    pub fn grads_total(&self) -> u64 {
        let emb = if self.tied { 0 } else { self.grad_embedding };
        self.layers_sum(|c| c.grad) + self.grad_head + emb + self.grad_other
    }

    /// Unsharded gradient bytes beyond [`TrainPlan::grads_total`] between accumulating
    /// micro-batches under `no_sync`.
    pub fn unsynced_total(&self) -> u64 {
        let u = &self.unsynced;
        let emb = if self.tied { 0 } else { u.embedding };
        self.layer_count() * u.layer + u.head + emb + u.other
    }
}

/// Simulate one training step.
pub fn simulate_train<S: Sink>(p: &TrainPlan, rec: &mut S) {
    let base = Components {
        weights: Bytes(p.weights),
        master_weights: Bytes(p.master_weights),
        optimizer_state: Bytes(p.optimizer_state),
        ..Components::default()
    };
    rec.moment(
        Phase::Load,
        || "weights and optimizer state resident".to_string(),
        base,
    );
    let micro_batches = if p.grad_accum > 1 { 2 } else { 1 };
    for mb in 0..micro_batches {
        let pass = Pass {
            p,
            n_layers: p.layer_count(),
            base,
            mb,
            tag: if micro_batches > 1 {
                format!(" (micro-batch {})", mb + 1)
            } else {
                String::new()
            },
            resident_grads: if mb == 0 {
                0
            } else {
                p.grads_total() + p.unsynced_total()
            },
        };
        let (saved, cache) = pass.forward(rec);
        pass.loss(rec, saved + p.held_by_loop, cache);
        pass.backward(rec, saved + p.held_by_loop);
    }
    if p.optimizer_in_bwd {
        rec.moment(
            Phase::Optimizer,
            || "optimizer step (ran inside backward)".to_string(),
            Components {
                activations: Bytes(p.held_by_loop),
                temporaries: Bytes(p.optimizer_extra),
                ..base
            },
        );
    } else {
        rec.moment(
            Phase::Optimizer,
            || "optimizer step".to_string(),
            Components {
                gradients: Bytes(p.grads_total()),
                activations: Bytes(p.held_by_loop),
                temporaries: Bytes(p.optimizer_step_temp + p.optimizer_extra),
                ..base
            },
        );
    }
    rec.moment(
        Phase::Optimizer,
        || "zero_grad (gradients freed)".to_string(),
        base,
    );
}

/// One micro-batch's forward, loss and backward (steps 2–5 of the module doc).
struct Pass<'a> {
    p: &'a TrainPlan,
    /// Decoder layers on this rank.
    n_layers: u64,
    /// Weights, master weights and optimizer state.
    base: Components,
    /// 0: the first micro-batch (allocates the gradients); 1: a later one (they are
    /// resident, accumulation adds a transient).
    mb: u64,
    /// Appended to event names with gradient accumulation.
    tag: String,
    /// Gradients resident when the micro-batch starts.
    resident_grads: u64,
}

impl Pass<'_> {
    /// Layers whose events are recorded: the first two and the last.
    fn show(&self, i: u64) -> bool {
        i == 0 || i == 1 || i + 1 == self.n_layers
    }

    /// The first recorded layer at or after `i` (`n_layers` if none).
    fn next_shown_up(&self, i: u64) -> u64 {
        if i <= 1 {
            i
        } else {
            (self.n_layers - 1).max(i).min(self.n_layers)
        }
    }

    /// The lowest index of the unrecorded layers at and below `i` (the layers `2..=i`
    /// when `i` is one of them; `i` itself when it is recorded).
    fn next_shown_down(&self, i: u64) -> u64 {
        if i + 1 >= self.n_layers || i <= 1 {
            i
        } else {
            2
        }
    }

    /// The accumulation transient of a gradient of `g` bytes (later micro-batches).
    fn accum_temp(&self, g: u64) -> u64 {
        if self.mb > 0 {
            g
        } else {
            0
        }
    }

    /// Head activations kept until its backward (the loss part counted apart).
    fn head_act(&self) -> u64 {
        let p = self.p;
        if p.has_head {
            p.head_saved - p.loss_saved
        } else {
            0
        }
    }

    /// Forward: the embedding (or the received activations), then each layer's
    /// in-flight peak on top of what earlier layers saved. Returns the saved bytes and
    /// the autocast cache at the end of forward.
    fn forward<S: Sink>(&self, rec: &mut S) -> (u64, u64) {
        let (p, tag) = (self.p, &self.tag);
        let with_grads = Components {
            gradients: Bytes(self.resident_grads),
            ..self.base
        };
        // a later micro-batch runs while the loop still holds the previous one's logits
        let other_mb =
            p.inflight_saved + p.prev_step_held + if self.mb > 0 { p.held_by_loop } else { 0 };
        let mut saved = p.shared;
        let mut layers_saved = 0u64;
        let mut cache = 0u64;
        let input_event = if p.has_embedding {
            "embedding"
        } else {
            "receive activations"
        };
        rec.moment(
            Phase::Forward,
            || format!("{input_event}{tag}"),
            Components {
                activations: Bytes(other_mb + saved),
                temporaries: Bytes(p.embed_out + p.gathered_fwd + p.embed_unit),
                ..with_grads
            },
        );
        let mut i = 0u64;
        for run in &p.layers {
            let c = &run.cost;
            let end = i + run.count;
            while i < end {
                if !self.show(i) {
                    // the layers up to the next recorded one only accumulate
                    let k = self.next_shown_up(i).min(end) - i;
                    saved += k * c.saved;
                    layers_saved += k * c.saved;
                    cache += k * c.fwd_cache;
                    i += k;
                    continue;
                }
                {
                    let held = c.saved.min(c.fwd_peak);
                    rec.moment(
                        Phase::Forward,
                        || format!("layer {i} forward{tag}"),
                        Components {
                            activations: Bytes(
                                other_mb + saved - self.on_host(layers_saved) + held,
                            ),
                            temporaries: Bytes(
                                cache + c.fwd_peak - held + c.extra_temp + p.gathered_fwd,
                            ),
                            ..with_grads
                        },
                    );
                }
                saved += c.saved;
                layers_saved += c.saved;
                cache += c.fwd_cache;
                i += 1;
            }
        }
        (saved, cache)
    }

    /// The loss moment (last stage): logits and their fp32 copy on top of the forward.
    fn loss<S: Sink>(&self, rec: &mut S, saved: u64, cache: u64) {
        let (p, tag) = (self.p, &self.tag);
        if p.has_head {
            rec.moment(
                Phase::Loss,
                || format!("logits and loss{tag}"),
                Components {
                    gradients: Bytes(self.resident_grads),
                    activations: Bytes(
                        p.inflight_saved + p.prev_step_held + saved
                            - self.on_host(p.layers_sum(|c| c.saved))
                            + self.head_act(),
                    ),
                    logits_and_loss: Bytes(p.loss_saved + p.head_fwd_transient),
                    temporaries: Bytes(cache + p.gathered_fwd + p.head_unit),
                    ..self.base
                },
            );
        }
    }

    /// Backward from the end of forward (`saved` activations kept): loss and head,
    /// the layers in reverse, the embedding.
    fn backward<S: Sink>(&self, rec: &mut S, saved: u64) {
        let grads = self.head_backward(rec, saved);
        let (saved, grads) = self.layers_backward(rec, saved, grads);
        if self.p.has_embedding {
            self.embedding_backward(rec, saved, grads);
        }
    }

    /// Loss and head backward (last stage); returns the gradients resident after it
    /// (the head's and the rest's are allocated here on the first micro-batch).
    fn head_backward<S: Sink>(&self, rec: &mut S, saved: u64) -> u64 {
        let (p, tag) = (self.p, &self.tag);
        let mut grads = self.resident_grads;
        if !p.has_head {
            if self.mb == 0 {
                grads += p.grad_other + p.unsynced.other;
            }
            return grads;
        }
        let on_host = self.on_host(p.layers_sum(|c| c.saved));
        let at_head = |grads: u64, logits: u64, temporaries: u64| Components {
            gradients: Bytes(grads),
            activations: Bytes(p.inflight_saved + saved - on_host + self.head_act()),
            logits_and_loss: Bytes(logits),
            temporaries: Bytes(temporaries),
            ..self.base
        };
        // The loss backward peaks (fp32 logit gradients) before the head's weight
        // gradient exists.
        rec.moment(
            Phase::Backward,
            || format!("loss backward{tag}"),
            at_head(
                grads,
                p.loss_saved + p.head_bwd_transient,
                p.gathered_bwd + p.head_unit,
            ),
        );
        if self.mb == 0 {
            grads += p.grad_head + p.grad_other + p.unsynced.head + p.unsynced.other;
        }
        rec.moment(
            Phase::Backward,
            || format!("lm_head backward{tag}"),
            at_head(
                grads,
                p.head_grad_logits,
                self.accum_temp(p.grad_head + p.unsynced.head)
                    + p.head_bwd_weight_grad
                    + p.head_unit
                    // its own unit's unsharded gradient (assembled below)
                    + p.head_grad_assembly / 2
                    + p.embed_out
                    + p.gathered_bwd
                    + self.in_bwd_step(),
            ),
        );
        if p.head_grad_assembly > 0 {
            // the head's unit, done: its gradient assembled for the reduce-scatter, the
            // logits' gradients gone
            rec.moment(
                Phase::Backward,
                || format!("lm_head gradient reduce-scatter{tag}"),
                at_head(
                    grads,
                    0,
                    p.head_unit + p.head_grad_assembly + p.embed_out + p.gathered_bwd,
                ),
            );
        }
        if p.optimizer_in_bwd {
            // stepped and freed; a tied head's gradient waits for the embedding's
            grads = if p.tied { p.grad_head } else { 0 };
        }
        grads
    }

    /// Bytes of the layers' saved tensors (`layers_saved` of them saved so far) that
    /// activation offloading keeps in host memory in forward: all but the stash.
    fn on_host(&self, layers_saved: u64) -> u64 {
        match self.p.offload_stash {
            Some(stash) => layers_saved.saturating_sub(stash),
            None => 0,
        }
    }

    /// FSDP's root-unit gradients waiting for the embedding's backward (a stage with
    /// the head and the embedding).
    fn root_pending(&self) -> u64 {
        if self.p.has_head && self.p.has_embedding {
            self.p.root_grads_pending
        } else {
            0
        }
    }

    /// FSDP's root-unit gradient assembly at the embedding's backward (same stages).
    fn root_assembly(&self) -> u64 {
        if self.p.has_head && self.p.has_embedding {
            self.p.root_grads_assembly
        } else {
            0
        }
    }

    /// One tensor's optimizer-step temporaries inside backward (`optimizer_in_bwd`).
    fn in_bwd_step(&self) -> u64 {
        if self.p.optimizer_in_bwd {
            self.p.optimizer_step_temp
        } else {
            0
        }
    }

    /// The layers' backward in reverse: each releases its saved tensors and allocates
    /// its gradients. Returns the saved bytes and gradients after the first layer.
    fn layers_backward<S: Sink>(&self, rec: &mut S, mut saved: u64, mut grads: u64) -> (u64, u64) {
        let (p, tag) = (self.p, &self.tag);
        // offloaded layers' tensors are all on the host in backward (the stash is
        // emptied at the first node that brings one back); each layer's return with
        // its recomputation (`held`)
        let mut layers_left = p.layers_sum(|c| c.saved);
        let mut i = self.n_layers;
        for run in p.layers.iter().rev() {
            let c = &run.cost;
            let start = i - run.count;
            while i > start {
                if !self.show(i - 1) {
                    // the layers down to the next recorded one only release and grow
                    let k = i - self.next_shown_down(i - 1).max(start);
                    saved -= k * c.saved;
                    layers_left -= k * c.saved;
                    grads = self.after_layers_backward(grads, k, c.grad);
                    i -= k;
                    continue;
                }
                i -= 1;
                let (s, peak) = (c.saved, c.bwd_peak);
                saved -= s;
                layers_left -= s;
                let host = if p.offload_stash.is_some() {
                    layers_left
                } else {
                    0
                };
                if self.show(i) {
                    // the layer's peak already counts its gradients allocated so far
                    let own = if self.mb == 0 {
                        c.bwd_peak_param_grads.min(peak)
                    } else {
                        0
                    };
                    let held = s.min(peak - own);
                    rec.moment(
                        Phase::Backward,
                        || format!("layer {i} backward{tag}"),
                        Components {
                            gradients: Bytes(grads + own),
                            activations: Bytes(p.inflight_saved + saved - host + held),
                            temporaries: Bytes(
                                peak - own - held
                                    + c.extra_temp
                                    + self.accum_temp(c.grad + p.unsynced.layer)
                                    + p.gathered_bwd
                                    + self.root_pending()
                                    + self.in_bwd_step(),
                            ),
                            ..self.base
                        },
                    );
                    if p.unit_grad_assembly > 0 {
                        // its activations freed, the unit's gradient is assembled
                        // unsharded for its reduce-scatter
                        rec.moment(
                            Phase::Backward,
                            || format!("layer {i} gradient reduce-scatter{tag}"),
                            Components {
                                gradients: Bytes(grads),
                                activations: Bytes(p.inflight_saved + saved - host),
                                temporaries: Bytes(
                                    p.unit_grad_assembly + p.gathered_bwd + self.root_pending(),
                                ),
                                ..self.base
                            },
                        );
                    }
                }
                grads = self.after_layers_backward(grads, 1, c.grad);
            }
        }
        (saved, grads)
    }

    /// Gradients resident after `k` more layers (of `grad` bytes each) finished their
    /// backward: the first micro-batch allocates them (unsharded under `no_sync`); the
    /// last one reduce-scatters each layer's unsharded gradient and frees it.
    fn after_layers_backward(&self, grads: u64, k: u64, grad: u64) -> u64 {
        let u = self.p.unsynced.layer;
        if self.p.optimizer_in_bwd {
            // each stepped and freed by its hook
            grads
        } else if self.mb == 0 {
            grads + k * (grad + u)
        } else {
            grads - k * u
        }
    }

    /// The embedding's backward (first stage).
    fn embedding_backward<S: Sink>(&self, rec: &mut S, saved: u64, mut grads: u64) {
        let (p, tag) = (self.p, &self.tag);
        // untied → its own gradient; tied → autograd sums the head's and the
        // embedding's gradient in its input buffer (the new dense gradient plus the
        // out-of-place sum) before storing it
        // (unsharded under no_sync)
        let g = p.grad_embedding + p.unsynced.embedding;
        let (emb_grad, emb_temp) = if p.tied {
            (0, 2 * g)
        } else if p.optimizer_in_bwd {
            // allocated, then stepped and freed by its hook
            (0, g)
        } else if self.mb == 0 {
            (g, 0)
        } else {
            (0, g)
        };
        grads += emb_grad;
        rec.moment(
            Phase::Backward,
            || format!("embedding backward{tag}"),
            Components {
                gradients: Bytes(grads),
                activations: Bytes(p.inflight_saved + saved),
                temporaries: Bytes(
                    emb_temp
                        + p.embed_out
                        + p.embed_unit
                        + p.gathered_bwd
                        + self.root_pending()
                        + self.root_assembly()
                        + self.in_bwd_step(),
                ),
                ..self.base
            },
        );
    }
}

/// Inputs of an inference simulation (bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferPlan {
    pub weights: u64,
    pub kv_prefill: u64,
    pub kv_final: u64,
    pub prefill_layer_peak: u64,
    pub prefill_logits: u64,
    pub decode_layer_peak: u64,
    pub decode_logits: u64,
    pub embed_out_prefill: u64,
    /// A VLM's vision tower over the prompts' images before the language model's
    /// prefill (0 for text models).
    pub vision_prefill: u64,
}

pub fn simulate_infer<S: Sink>(p: &InferPlan, rec: &mut S) {
    let base = Components {
        weights: Bytes(p.weights),
        ..Components::default()
    };
    rec.moment(Phase::Load, || "weights resident".to_string(), base);
    if p.vision_prefill > 0 {
        rec.moment(
            Phase::Prefill,
            || "prefill, vision tower".to_string(),
            Components {
                temporaries: Bytes(p.vision_prefill),
                ..base
            },
        );
    }
    rec.moment(
        Phase::Prefill,
        || "prefill, last layer".to_string(),
        Components {
            kv_cache: Bytes(p.kv_prefill),
            temporaries: Bytes(p.prefill_layer_peak),
            ..base
        },
    );
    rec.moment(
        Phase::Prefill,
        || "prefill logits".to_string(),
        Components {
            kv_cache: Bytes(p.kv_prefill),
            logits_and_loss: Bytes(p.prefill_logits),
            temporaries: Bytes(p.embed_out_prefill),
            ..base
        },
    );
    rec.moment(
        Phase::Decode,
        || "last decode step, last layer".to_string(),
        Components {
            kv_cache: Bytes(p.kv_final),
            temporaries: Bytes(p.decode_layer_peak),
            ..base
        },
    );
    rec.moment(
        Phase::Decode,
        || "last decode step, logits and sampling".to_string(),
        Components {
            kv_cache: Bytes(p.kv_final),
            logits_and_loss: Bytes(p.decode_logits),
            ..base
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(p: &TrainPlan) -> Vec<Event> {
        let mut rec = Recorder::new(EventOverheads {
            in_allocator: 0,
            outside: 0,
            fragmentation: 0.0,
            managed: 0,
        });
        simulate_train(p, &mut rec);
        rec.events
    }

    fn event<'a>(evs: &'a [Event], name: &str) -> &'a Event {
        evs.iter()
            .find(|e| e.event == name)
            .unwrap_or_else(|| panic!("no event {name:?}"))
    }

    /// FSDP's gradient assembly (see `distributed::fsdp_states`): after a layer's
    /// backward its unit's unsharded gradient is assembled (its own moment: the
    /// layer's activations freed, `unit_grad_assembly` on top); the root unit's
    /// pending gradients ride through every layer's backward and are assembled at the
    /// embedding's.
    #[test]
    fn fsdp_assembles_unit_and_root_gradients_at_their_own_moments() {
        let cost = LayerCost {
            saved: 1_000,
            bwd_peak: 5_000,
            grad: 10,
            ..LayerCost::default()
        };
        let p = TrainPlan {
            layers: smallvec::smallvec![LayerRun { count: 3, cost }],
            weights: 100_000,
            has_embedding: true,
            has_head: true,
            grad_accum: 1,
            gathered_bwd: 700,
            unit_grad_assembly: 40_000,
            root_grads_pending: 300,
            root_grads_assembly: 900,
            ..TrainPlan::default()
        };
        let evs = recorded(&p);
        let rs = event(&evs, "layer 2 gradient reduce-scatter");
        // layers 0 and 1 still saved; layer 2's gradient resident (sharded)
        assert_eq!(rs.components.activations, Bytes(2_000));
        assert_eq!(rs.components.temporaries, Bytes(40_000 + 700 + 300));
        assert_eq!(rs.components.gradients, Bytes(0));
        let l2 = event(&evs, "layer 2 backward");
        assert_eq!(l2.components.temporaries, Bytes(5_000 - 1_000 + 700 + 300));
        let emb = event(&evs, "embedding backward");
        assert_eq!(emb.components.temporaries, Bytes(700 + 300 + 900));
        // the embedding and the head as units of their own (torchtune's
        // custom_sharded_layers): gathered around their own passes, the head's
        // gradient assembled after its backward
        let edges = TrainPlan {
            embed_unit: 50,
            head_unit: 60,
            head_grad_assembly: 80,
            ..p.clone()
        };
        let evs = recorded(&edges);
        let rs = event(&evs, "lm_head gradient reduce-scatter");
        assert_eq!(rs.components.temporaries, Bytes(60 + 80 + 700));
        assert_eq!(rs.components.logits_and_loss, Bytes(0));
        let head = event(&evs, "lm_head backward");
        assert_eq!(head.components.temporaries, Bytes(60 + 40 + 700));
        let emb_f = event(&evs, "embedding");
        assert_eq!(emb_f.components.temporaries, Bytes(50));
        let emb_b = event(&evs, "embedding backward");
        assert_eq!(emb_b.components.temporaries, Bytes(50 + 700 + 300 + 900));
        // without FSDP no such moment
        let plain = TrainPlan {
            unit_grad_assembly: 0,
            ..p
        };
        assert!(recorded(&plain)
            .iter()
            .all(|e| !e.event.contains("reduce-scatter")));
    }
}
