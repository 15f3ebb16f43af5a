//! `llm-mem plan`: an exhaustive search for the layouts that fit N GPUs.
//!
//! The space (stated in every answer, never sampled):
//! - world size w ∈ {1, 2, 4, …} ∪ {N}, w ≤ N (fewer GPUs are allowed: they cost less);
//! - tp ∈ {1, 2, 4, 8} (within a node), dividing the heads, kv heads and MLP width;
//!   sequence parallelism on whenever tp > 1 (it only removes memory);
//! - pp ∈ divisors of w/tp up to min(16, layers), even layer split;
//! - cp ∈ {1, 2, 4, 8} dividing the rest (not with eager attention);
//! - dp = w / (tp·pp·cp);
//! - sharding: DDP/Megatron, distributed optimizer, ZeRO-1; and without pipelining
//!   ZeRO-2, ZeRO-3, FSDP full-shard, FSDP grad-op (sharded modes only when dp > 1);
//! - offload: none, optimizer (ZeRO ≥ 1), optimizer + parameters (ZeRO-3, FSDP);
//! - gradient checkpointing: none, selective, full;
//! - micro-batch 1..=max_batch.
//!
//! Every (layout, checkpointing, offload, micro-batch) point is evaluated exactly: the
//! same timeline as `estimate`, fed from a cache of activation ledgers (keyed by tp,
//! sequence parallelism, cp, checkpointing and micro-batch — what the ledger depends
//! on) and run through an allocation-free sink that keeps only the peak. Memory grows
//! with the micro-batch, so each layout is walked from micro-batch 1 upwards until it
//! no longer fits.
//!
//! Ranking (the stated cost): fewest GPUs, then least recomputation (none < selective <
//! full), then no offload, then least model parallelism (tp·pp·cp), then the largest
//! micro-batch that fits.

use crate::arch::ModelSpec;
use crate::error::{Error, Result};
use crate::estimate::Correction;
use crate::units::bytes::Bytes;
use crate::workload::overhead::Overheads;
use std::collections::HashMap;

use crate::distributed::recipe::precision_recipe;
use crate::distributed::{estimate_layout, layout_host_memory, rank_view};
use crate::estimate::timeline::{self, PeakOnly};
use crate::estimate::{self, RankView};
use crate::runtime::torch::{self, Activations};
use crate::workload::layout::{FsdpMode, Layout};
use crate::workload::{Attn, GradCkpt, Precision, Workload};

/// What to search for.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanQuery {
    pub gpus: u64,
    pub capacity: Bytes,
    pub max_batch: u64,
    /// How many fitting layouts to return.
    pub top: usize,
    /// Also find the longest sequence that fits (micro-batch 1), up to this length.
    pub max_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sharding {
    Ddp,
    DistributedOptimizer,
    Zero1,
    Zero2,
    Zero3,
    FsdpFull,
    FsdpGradOp,
}

impl Sharding {
    pub fn as_str(self) -> &'static str {
        match self {
            Sharding::Ddp => "ddp",
            Sharding::DistributedOptimizer => "dist-opt",
            Sharding::Zero1 => "zero1",
            Sharding::Zero2 => "zero2",
            Sharding::Zero3 => "zero3",
            Sharding::FsdpFull => "fsdp-full",
            Sharding::FsdpGradOp => "fsdp-grad-op",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Offload {
    None,
    Optimizer,
    OptimizerAndParams,
}

impl Offload {
    pub fn as_str(self) -> &'static str {
        match self {
            Offload::None => "none",
            Offload::Optimizer => "optimizer",
            Offload::OptimizerAndParams => "optimizer+params",
        }
    }
}

/// One candidate of the space.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub world: u64,
    pub dp: u64,
    pub tp: u64,
    pub pp: u64,
    pub cp: u64,
    /// Expert-parallel degree (MoE training with replicated states; 1 otherwise).
    pub ep: u64,
    /// Megatron sequence parallelism (on whenever tp > 1 in the searched space).
    pub sequence_parallel: bool,
    pub sharding: Sharding,
    pub offload: Offload,
    pub grad_ckpt: GradCkpt,
    /// Largest micro-batch that fits (0 = none).
    pub max_micro_batch: u64,
    /// `max_micro_batch` is the search limit (`--max-batch`): more may fit.
    pub at_search_limit: bool,
    /// Worst-rank device memory at that micro-batch.
    pub peak_bytes: Bytes,
    /// Host memory per node of an offload layout (`distributed::host`); None without
    /// offload.
    pub host_bytes_per_node: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanResult {
    /// The space searched, in words.
    pub space: String,
    /// The precision recipe every layout is evaluated under, in words.
    pub precision: String,
    pub cost: &'static str,
    pub layouts_considered: u64,
    /// (layout, micro-batch) points evaluated.
    pub evaluations: u64,
    /// Fitting layouts, best first.
    pub fits: Vec<Candidate>,
    /// Over all layouts: the largest micro-batch that fits at the requested sequence.
    pub largest_micro_batch: Option<Candidate>,
    /// The longest sequence that fits with micro-batch 1, and the layout.
    pub longest_sequence: Option<(u64, Candidate)>,
}

pub const SERVING_COST: &str = "fewest GPUs per replica (tp), then most concurrent sequences";

pub const COST: &str = "fewest GPUs, then least recomputation (none < selective < full), then no offload, then least model parallelism (tp·pp·cp), then largest micro-batch";

fn ckpt_rank(c: GradCkpt) -> u8 {
    match c {
        GradCkpt::None => 0,
        GradCkpt::Selective => 1,
        GradCkpt::Full | GradCkpt::FullReentrant => 2,
    }
}

/// What a rank's activation ledger depends on: precision, master weights, tp,
/// sequence-parallel split, cp, ep (local experts, all-to-all rows), checkpointing,
/// micro-batch.
type LedgerKey = (&'static str, bool, u64, u64, u64, u64, u8, u64);

/// Exact peak evaluations with cached activation ledgers.
pub struct Evaluator<'a> {
    spec: &'a ModelSpec,
    ov: &'a Overheads,
    cache: HashMap<LedgerKey, Activations>,
    /// Points evaluated so far.
    pub evaluations: u64,
}

impl<'a> Evaluator<'a> {
    pub fn new(spec: &'a ModelSpec, ov: &'a Overheads) -> Self {
        Evaluator {
            spec,
            ov,
            cache: HashMap::new(),
            evaluations: 0,
        }
    }

    /// The rank views of `layout` for workload `w` (validated).
    pub fn views(&self, w: &Workload, layout: &Layout) -> Result<Vec<RankView>> {
        layout.validate(self.spec, w)?;
        let recipe = precision_recipe(w, layout);
        let w = &*recipe.workload;
        let m = layout.micro_batches.unwrap_or(w.grad_accum).max(1);
        layout
            .stage_layers(self.spec.layers())
            .iter()
            .enumerate()
            .map(|(i, &l)| rank_view(self.spec, w, layout, i as u64, l, m))
            .collect()
    }

    /// Worst-rank device bytes of `views` at `w` (whose batch is the micro-batch).
    pub fn peak(&mut self, w: &Workload, layout: &Layout, views: &[RankView]) -> u64 {
        self.evaluations += 1;
        let recipe = precision_recipe(w, layout);
        let w = &*recipe.workload;
        let mut worst = 0;
        for v in views {
            let key = (
                w.precision.as_str(),
                w.master_weights,
                layout.tp,
                v.sp_div,
                layout.cp,
                layout.ep,
                ckpt_rank(w.grad_ckpt),
                w.batch,
            );
            let acts = self.cache.entry(key).or_insert_with(|| {
                torch::activations(&v.local, &estimate::rank_ledger_params(w, v))
            });
            let plan = estimate::train_plan(w, v, acts);
            let mut sink = PeakOnly {
                ov: estimate::event_overheads(w, self.ov, &Correction::IDENTITY, Some(v)),
                peak: 0,
            };
            timeline::simulate_train(&plan, &mut sink);
            worst = worst.max(sink.peak);
        }
        worst
    }

    /// Largest micro-batch in 1..=max that fits `cap` (0 if none), walking upwards.
    pub fn max_batch(
        &mut self,
        w: &Workload,
        layout: &Layout,
        cap: u64,
        max: u64,
    ) -> Result<(u64, u64)> {
        let mut views = self.views(w, layout)?;
        let (mut best, mut best_peak) = (0, 0);
        for b in 1..=max {
            let mut wb = w.clone();
            wb.batch = b;
            if layout.cp > 1 && b > 1 {
                // ring-attention buffers scale with the micro-batch
                views = self.views(&wb, layout)?;
            }
            let p = self.peak(&wb, layout, &views);
            if p > cap {
                break;
            }
            (best, best_peak) = (b, p);
        }
        Ok((best, best_peak))
    }
}

/// The layout of one point of the space (sequence parallelism on whenever tp > 1).
#[allow(clippy::too_many_arguments)]
fn layout_of(
    dp: u64,
    tp: u64,
    pp: u64,
    cp: u64,
    ep: u64,
    sh: Sharding,
    off: Offload,
    grad_accum: u64,
) -> Layout {
    Layout {
        dp,
        tp,
        pp,
        cp,
        ep,
        sequence_parallel: tp > 1,
        zero: match sh {
            Sharding::Zero1 => 1,
            Sharding::Zero2 => 2,
            Sharding::Zero3 => 3,
            _ => 0,
        },
        fsdp: match sh {
            Sharding::FsdpFull => Some(FsdpMode::Full),
            Sharding::FsdpGradOp => Some(FsdpMode::GradOp),
            _ => None,
        },
        distributed_optimizer: sh == Sharding::DistributedOptimizer,
        // FSDP offloads parameters, gradients and optimizer together
        offload_optimizer: off != Offload::None && sh != Sharding::FsdpFull,
        offload_params: off == Offload::OptimizerAndParams,
        micro_batches: Some(grad_accum.max(pp)),
        ..Layout::default()
    }
}

/// The layout a plan candidate names.
fn candidate_layout(c: &Candidate, grad_accum: u64) -> Layout {
    layout_of(
        c.dp, c.tp, c.pp, c.cp, c.ep, c.sharding, c.offload, grad_accum,
    )
}

fn divisors_pow2(n: u64, max: u64) -> Vec<u64> {
    let mut v = Vec::new();
    let mut d = 1;
    while d <= n && d <= max {
        if n.is_multiple_of(d) {
            v.push(d);
        }
        d *= 2;
    }
    v
}

/// Every layout of the stated space for `world` GPUs (validated against the model).
pub fn layouts(spec: &ModelSpec, w: &Workload, world: u64) -> Vec<(Layout, Sharding, Offload)> {
    let mut out = Vec::new();
    for tp in divisors_pow2(world, 8) {
        for pp in (1..=world / tp)
            .filter(|pp| (world / tp).is_multiple_of(*pp) && *pp <= 16 && *pp <= spec.layers())
        {
            for cp in divisors_pow2(world / (tp * pp), 8) {
                if cp > 1 && w.attn == Attn::Eager {
                    continue;
                }
                let dp = world / (tp * pp * cp);
                let mut shardings = vec![Sharding::Ddp];
                if dp > 1 {
                    shardings.extend([Sharding::DistributedOptimizer, Sharding::Zero1]);
                    if pp == 1 {
                        shardings.extend([
                            Sharding::Zero2,
                            Sharding::Zero3,
                            Sharding::FsdpFull,
                            Sharding::FsdpGradOp,
                        ]);
                    }
                }
                for sh in shardings {
                    let offloads: &[Offload] = match sh {
                        Sharding::Zero1 | Sharding::Zero2 => &[Offload::None, Offload::Optimizer],
                        Sharding::Zero3 => &[
                            Offload::None,
                            Offload::Optimizer,
                            Offload::OptimizerAndParams,
                        ],
                        Sharding::FsdpFull => &[Offload::None, Offload::OptimizerAndParams],
                        _ => &[Offload::None],
                    };
                    // expert parallelism over the data-parallel ranks (MoE, replicated
                    // states: what Layout::validate accepts)
                    let eps: Vec<u64> = match spec.moe {
                        Some(_) if sh == Sharding::Ddp => divisors_pow2(dp, dp),
                        _ => vec![1],
                    };
                    for &off in offloads {
                        for &ep in &eps {
                            let layout = layout_of(dp, tp, pp, cp, ep, sh, off, w.grad_accum);
                            if layout.validate(spec, w).is_ok() {
                                out.push((layout, sh, off));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

fn worlds(gpus: u64) -> Vec<u64> {
    let mut v: Vec<u64> = std::iter::successors(Some(1u64), |x| x.checked_mul(2))
        .take_while(|&x| x < gpus)
        .collect();
    v.push(gpus);
    v
}

/// Search the stated space. `w` gives the task, method, precision, optimizer and the
/// sequence length; its batch and checkpointing are searched.
pub fn plan(spec: &ModelSpec, w: &Workload, ov: &Overheads, q: &PlanQuery) -> Result<PlanResult> {
    check_query(w, q)?;
    spec.validate()?;
    w.validate(spec)?;
    if spec.vision.is_some() {
        return Err(super::vlm_layout_refused(
            spec,
            &format!("plan over {} GPUs", q.gpus),
        ));
    }
    if w.task != crate::workload::Task::Train {
        return plan_serving(spec, w, ov, q);
    }
    let (w, precision) = &plan_precision(w);
    let mut ev = Evaluator::new(spec, ov);
    let (all, considered) = evaluate_space(&mut ev, w, q);
    let evaluations = ev.evaluations;
    let mut fits: Vec<Candidate> = all
        .iter()
        .filter(|c| c.max_micro_batch > 0)
        .cloned()
        .collect();
    fits.sort_by_key(cost_key);
    let largest_micro_batch = fits
        .iter()
        .max_by_key(|c| (c.max_micro_batch, std::cmp::Reverse(c.world)))
        .cloned();
    // longest sequence at micro-batch 1: bisection over multiples of 128 with full
    // simulations, on the layouts that fit at the requested length (or all if none)
    let longest_sequence = if q.max_seq > 0 {
        longest(spec, w, ov, q, &fits)?
    } else {
        None
    };
    fits.truncate(q.top);
    Ok(PlanResult {
        precision: precision.clone(),
        space: format!(
            "world ≤ {} GPUs (powers of two and {}); tp ∈ {{1,2,4,8}} with sequence parallelism; pp | world/tp, ≤ 16; cp ∈ {{1,2,4,8}}; dp = rest; ddp, dist-opt, zero1 (+ zero2, zero3, fsdp-full, fsdp-grad-op without pp); {}offload none/optimizer/+params; grad-ckpt none/selective/full; micro-batch 1..={}",
            q.gpus,
            q.gpus,
            if ev.spec.moe.is_some() {
                "ep ∈ powers of two dividing dp and the experts (with ddp); "
            } else {
                ""
            },
            q.max_batch
        ),
        cost: COST,
        layouts_considered: considered,
        evaluations,
        fits,
        largest_micro_batch,
        longest_sequence,
    })
}

/// The one precision recipe every training layout is compared under, and its words:
/// full fine-tuning in half precision keeps fp32 master weights in every layout
/// (ZeRO, Megatron and FSDP MixedPrecision always do; DDP rows are given the same
/// recipe so that rows differ only by layout, see `recipe.rs`).
fn plan_precision(w: &Workload) -> (Workload, String) {
    let mut w = w.clone();
    let p = w.precision;
    let words = if !w.method.is_full() {
        format!("{p} base weights, fp32 adapters (peft) in every layout")
    } else if matches!(p, Precision::Bf16 | Precision::Fp16) {
        w.master_weights = true;
        format!("{p} + fp32 master weights in every layout (as Megatron --{p}, DeepSpeed {p} and FSDP MixedPrecision keep them)")
    } else if p.is_amp() {
        "fp32 master parameters in every layout: autocast under DDP/Megatron, FSDP MixedPrecision, DeepSpeed half mode under ZeRO".to_string()
    } else {
        format!("{p} in every layout")
    };
    (w, words)
}

/// The query's own errors: no GPUs, a runtime other than torch, no micro-batch.
fn check_query(w: &Workload, q: &PlanQuery) -> Result<()> {
    if q.gpus == 0 {
        return Err(Error::invalid("--gpus", q.gpus, "an integer >= 1"));
    }
    if w.runtime != crate::workload::Runtime::Torch {
        return Err(Error::invalid(
            "--runtime",
            w.runtime,
            "torch (plan searches PyTorch layouts)",
        ));
    }
    if q.max_batch == 0 {
        return Err(Error::invalid(
            "--max-batch",
            q.max_batch,
            "an integer >= 1",
        ));
    }
    Ok(())
}

/// Every (world, layout, checkpointing) point with its largest fitting micro-batch
/// (layouts whose views fail are skipped), and how many points were considered.
fn evaluate_space(ev: &mut Evaluator, w: &Workload, q: &PlanQuery) -> (Vec<Candidate>, u64) {
    let cap = q.capacity.get();
    let mut all = Vec::new();
    let mut considered = 0u64;
    for world in worlds(q.gpus) {
        for (layout, sh, off) in layouts(ev.spec, w, world) {
            for ckpt in [GradCkpt::None, GradCkpt::Selective, GradCkpt::Full] {
                let mut wc = w.clone();
                wc.grad_ckpt = ckpt;
                considered += 1;
                let Ok((b, peak)) = ev.max_batch(&wc, &layout, cap, q.max_batch) else {
                    continue;
                };
                all.push(Candidate {
                    world,
                    dp: layout.dp,
                    tp: layout.tp,
                    pp: layout.pp,
                    cp: layout.cp,
                    ep: layout.ep,
                    sequence_parallel: layout.sequence_parallel,
                    sharding: sh,
                    offload: off,
                    grad_ckpt: ckpt,
                    max_micro_batch: b,
                    at_search_limit: b == q.max_batch,
                    peak_bytes: Bytes(peak),
                    host_bytes_per_node: host_of(ev.spec, &wc, &layout),
                });
            }
        }
    }
    (all, considered)
}

/// Host memory per node of an offload layout, under the layout's precision recipe.
fn host_of(spec: &ModelSpec, w: &Workload, layout: &Layout) -> Option<Bytes> {
    if !layout.offload_optimizer && !layout.offload_params {
        return None;
    }
    let recipe = precision_recipe(w, layout);
    layout_host_memory(spec, &recipe.workload, layout)
        .ok()
        .flatten()
        .map(|h| h.bytes_per_node)
}

/// The stated cost ([`COST`]) of a candidate, smallest first: GPUs, recomputation,
/// offload, model parallelism, then the largest micro-batch (and the lower peak).
fn cost_key(c: &Candidate) -> (u64, u8, Offload, u64, std::cmp::Reverse<u64>, Bytes) {
    (
        c.world,
        ckpt_rank(c.grad_ckpt),
        c.offload,
        c.tp * c.pp * c.cp,
        std::cmp::Reverse(c.max_micro_batch),
        c.peak_bytes,
    )
}

fn longest(
    spec: &ModelSpec,
    w: &Workload,
    ov: &Overheads,
    q: &PlanQuery,
    fits: &[Candidate],
) -> Result<Option<(u64, Candidate)>> {
    // the cheapest fitting layouts of each checkpointing mode are the candidates
    let mut best: Option<(u64, Candidate)> = None;
    let mut seen = std::collections::HashSet::new();
    for c in fits
        .iter()
        .filter(|c| {
            seen.insert((
                c.tp,
                c.pp,
                c.cp,
                c.ep,
                c.sharding,
                c.offload,
                ckpt_rank(c.grad_ckpt),
            ))
        })
        .take(24)
    {
        let layout_for = |seq: u64| -> Option<u64> {
            let mut ws = w.clone();
            ws.batch = 1;
            ws.seq_len = seq;
            ws.grad_ckpt = c.grad_ckpt;
            let layout = candidate_layout(c, w.grad_accum);
            estimate_layout(spec, &ws, ov, &layout, &Correction::IDENTITY)
                .ok()
                .map(|d| d.worst().estimate.peak.device.get())
        };
        let step = 128 * 2 * c.cp;
        let fits_at = |seq: u64| layout_for(seq).is_some_and(|p| p <= q.capacity.get());
        if !fits_at(step) {
            continue;
        }
        let (mut lo, mut hi) = (1u64, q.max_seq / step);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits_at(mid * step) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let seq = lo * step;
        if best.as_ref().is_none_or(|(s, _)| seq > *s) {
            let peak = layout_for(seq).unwrap_or(0);
            best = Some((
                seq,
                Candidate {
                    max_micro_batch: 1,
                    at_search_limit: false,
                    peak_bytes: Bytes(peak),
                    ..c.clone()
                },
            ));
        }
    }
    Ok(best)
}

/// Serving: for each tensor-parallel degree that divides the model, the most concurrent
/// sequences (`--concurrency`, searched 1..=max_batch) that fit one replica; replicas
/// fill the remaining GPUs. `max_micro_batch` holds the concurrency.
fn plan_serving(
    spec: &ModelSpec,
    w: &Workload,
    ov: &Overheads,
    q: &PlanQuery,
) -> Result<PlanResult> {
    let cap = q.capacity.get();
    let mut fits = Vec::new();
    let mut considered = 0;
    let mut evaluations = 0;
    for tp in divisors_pow2(q.gpus, 8) {
        let layout = Layout {
            tp,
            ..Layout::default()
        };
        if layout.validate(spec, w).is_err() {
            continue;
        }
        considered += 1;
        let (mut best, mut best_peak) = (0, 0);
        for c in 1..=q.max_batch {
            let mut wc = w.clone();
            wc.infer.concurrency = c;
            evaluations += 1;
            let d = estimate_layout(spec, &wc, ov, &layout, &Correction::IDENTITY)?;
            let p = d.worst().estimate.peak.device.get();
            if p > cap {
                break;
            }
            (best, best_peak) = (c, p);
        }
        if best > 0 {
            fits.push(Candidate {
                world: tp,
                dp: q.gpus / tp,
                tp,
                pp: 1,
                cp: 1,
                ep: 1,
                sequence_parallel: false,
                sharding: Sharding::Ddp,
                offload: Offload::None,
                grad_ckpt: GradCkpt::None,
                max_micro_batch: best,
                at_search_limit: best == q.max_batch,
                peak_bytes: Bytes(best_peak),
                host_bytes_per_node: None,
            });
        }
    }
    fits.sort_by_key(|c| (c.tp, std::cmp::Reverse(c.max_micro_batch)));
    let largest_micro_batch = fits
        .iter()
        .max_by_key(|c| (c.max_micro_batch, std::cmp::Reverse(c.tp)))
        .cloned();
    fits.truncate(q.top);
    Ok(PlanResult {
        precision: w.precision.to_string(),
        space: format!(
            "serving: tp ∈ {{1,2,4,8}} dividing heads and MLP width, tp ≤ {} GPUs, replicas = GPUs / tp; concurrency 1..={} at prompt {} + {} generated tokens",
            q.gpus, q.max_batch, w.infer.prompt_len, w.infer.gen_len
        ),
        cost: SERVING_COST,
        layouts_considered: considered,
        evaluations,
        fits,
        largest_micro_batch,
        longest_sequence: None,
    })
}
