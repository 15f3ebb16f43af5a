//! `--csv`: one fixed header and one row per estimate (one per rank class of a
//! distributed estimate); integers are bytes unless named otherwise (bucket sizes are
//! elements, as DeepSpeed names them).
//!
//! Every run has the same header, [`header`], so single-GPU and distributed sweeps,
//! training and serving, full and LoRA runs concatenate into one table. The header
//! carries every setting that changes memory — the model and its layer count, the task
//! and method (LoRA rank, alpha, targets, double quantization), precision and fp32
//! master weights, the training shapes, the inference shapes (prompt, generation,
//! concurrency, KV dtype, prefill chunk), the overheads, the layout (degrees, sequence
//! parallelism, ZeRO, FSDP, offloads, micro-batches, the pipeline split, buffers) and
//! the rank class (name, ranks, model states, whether it is the worst) — then the peak
//! and its nine components. A setting that does not apply to the row is empty: the
//! LoRA columns for full fine-tuning, the training shapes and optimizer for `--task
//! infer`, the inference shapes for training, `model_states_bytes` on one GPU.
//! Lists inside a cell (LoRA module names, layers per stage) are `;`-separated.

use crate::distributed::DistributedEstimate;
use crate::estimate::Estimate;
use crate::report::Fit;
use crate::workload::layout::{FsdpMode, Layout};
use crate::workload::overhead::Overheads;
use crate::workload::{Device, Task, Workload};

/// The rank class a row describes.
struct Class<'a> {
    name: &'a str,
    ranks: u64,
    /// `None` on one GPU (no steady-state figure is computed there).
    model_states: Option<u64>,
    worst: bool,
}

/// Everything one row is filled from.
struct Ctx<'a> {
    e: &'a Estimate,
    w: &'a Workload,
    ov: &'a Overheads,
    l: &'a Layout,
    world: u64,
    class: Class<'a>,
    fit: Option<&'a Fit>,
}

type Cell = fn(&Ctx) -> String;

fn s(x: impl ToString) -> String {
    x.to_string()
}

fn train(c: &Ctx, x: impl ToString) -> String {
    if c.w.task == Task::Train {
        x.to_string()
    } else {
        String::new()
    }
}

fn infer(c: &Ctx, x: impl ToString) -> String {
    if c.w.task == Task::Infer {
        x.to_string()
    } else {
        String::new()
    }
}

fn lora(c: &Ctx, f: fn(&crate::workload::LoraConfig) -> String) -> String {
    c.w.method.lora().map_or(String::new(), f)
}

fn opt(x: Option<impl ToString>) -> String {
    x.map_or(String::new(), |v| v.to_string())
}

/// The settings of the run, in header order.
const SETTINGS: &[(&str, Cell)] = &[
    ("model", |c| c.e.model.name.clone()),
    ("layers", |c| s(c.e.model.layers)),
    ("task", |c| s(c.w.task)),
    ("method", |c| s(&c.w.method)),
    ("lora_rank", |c| lora(c, |l| s(l.rank))),
    ("lora_alpha", |c| lora(c, |l| s(l.alpha))),
    ("lora_targets", |c| {
        lora(c, |l| s(&l.targets).replace(',', ";"))
    }),
    ("double_quant", |c| {
        if c.w.method.is_qlora() {
            lora(c, |l| s(l.double_quant))
        } else {
            String::new()
        }
    }),
    ("dtype", |c| s(c.w.precision)),
    ("fp32_master", |c| s(c.w.master_weights)),
    ("optimizer", |c| train(c, c.w.optimizer)),
    ("batch", |c| train(c, c.w.batch)),
    ("seq_len", |c| train(c, c.w.seq_len)),
    ("grad_accum", |c| train(c, c.w.grad_accum)),
    ("attn", |c| s(c.w.attn)),
    ("grad_ckpt", |c| train(c, c.w.grad_ckpt)),
    ("loss", |c| train(c, c.w.loss)),
    ("runtime", |c| s(c.w.runtime)),
    ("device", |c| {
        s(match c.w.device {
            Device::Cuda => "cuda",
            Device::Cpu => "cpu",
        })
    }),
    ("prompt_len", |c| infer(c, c.w.infer.prompt_len)),
    ("gen_len", |c| infer(c, c.w.infer.gen_len)),
    ("concurrency", |c| infer(c, c.w.infer.concurrency)),
    ("kv_dtype", |c| infer(c, c.w.infer.kv_dtype)),
    ("prefill_chunk", |c| infer(c, opt(c.w.infer.prefill_chunk))),
    ("cuda_context_bytes", |c| s(c.ov.cuda_context.get())),
    ("cublas_workspace_bytes", |c| s(c.ov.cublas_workspace.get())),
    ("allocator_fragmentation", |c| {
        s(c.ov.allocator_fragmentation)
    }),
];

/// The layout and the rank class, in header order.
const LAYOUT: &[(&str, Cell)] = &[
    ("world", |c| s(c.world)),
    ("dp", |c| s(c.l.dp)),
    ("tp", |c| s(c.l.tp)),
    ("pp", |c| s(c.l.pp)),
    ("cp", |c| s(c.l.cp)),
    ("ep", |c| s(c.l.ep)),
    ("vpp", |c| s(c.l.vpp)),
    ("sequence_parallel", |c| s(c.l.sequence_parallel)),
    ("zero", |c| s(c.l.zero)),
    ("fsdp", |c| {
        opt(c.l.fsdp.map(|m| match m {
            FsdpMode::Full => "full",
            FsdpMode::GradOp => "grad-op",
            FsdpMode::Hybrid => "hybrid",
        }))
    }),
    ("fsdp_version", |c| opt(c.l.fsdp.map(|_| c.l.fsdp_version))),
    ("fsdp_shard_group", |c| opt(c.l.buffers.fsdp_shard_group)),
    ("offload_optimizer", |c| s(c.l.offload_optimizer)),
    ("offload_params", |c| s(c.l.offload_params)),
    ("distributed_optimizer", |c| s(c.l.distributed_optimizer)),
    ("micro_batches", |c| opt(c.l.micro_batches)),
    ("pp_layers", |c| {
        opt(c
            .l
            .pp_layers
            .as_ref()
            .map(|v| v.iter().map(u64::to_string).collect::<Vec<_>>().join(";")))
    }),
    ("nccl_per_group_bytes", |c| {
        s(c.l.buffers.nccl_per_group.get())
    }),
    ("zero_reduce_bucket", |c| s(c.l.buffers.zero_reduce_bucket)),
    ("zero_allgather_bucket", |c| {
        s(c.l.buffers.zero_allgather_bucket)
    }),
    ("zero3_prefetch_bucket", |c| {
        s(c.l.buffers.zero3_prefetch_bucket)
    }),
    ("zero3_max_live_params", |c| {
        s(c.l.buffers.zero3_max_live_params)
    }),
    ("ddp_bucket_view", |c| s(c.l.buffers.ddp_bucket_view)),
    ("rank_class", |c| s(c.class.name)),
    ("ranks", |c| s(c.class.ranks)),
    ("model_states_bytes", |c| opt(c.class.model_states)),
    ("worst", |c| s(c.class.worst)),
];

/// The result, before the nine components.
const RESULT: &[(&str, Cell)] = &[
    ("params_total", |c| s(c.e.model.params_total)),
    ("params_trainable", |c| s(c.e.model.params_trainable)),
    ("peak_phase", |c| s(c.e.peak.phase.as_str())),
    ("peak_event", |c| c.e.peak.event.clone()),
    ("allocated_bytes", |c| s(c.e.peak.allocated.get())),
    ("reserved_bytes", |c| s(c.e.peak.reserved.get())),
    ("device_bytes", |c| s(c.e.peak.device.get())),
];

/// The last columns, after the nine components.
const TAIL: &[(&str, Cell)] = &[
    ("per_layer_bytes", |c| s(c.e.activations.per_layer_bytes)),
    ("non_layer_bytes", |c| s(c.e.activations.non_layer_bytes)),
    ("fits", |c| opt(c.fit.map(|f| f.fits))),
];

/// The names of the nine components (`components_at_peak`), in display order.
fn component_names() -> impl Iterator<Item = &'static str> {
    crate::estimate::timeline::Components::default()
        .entries()
        .into_iter()
        .map(|(n, _)| n)
}

/// The one header of every `--csv` output.
pub fn header() -> Vec<&'static str> {
    let cols = |t: &'static [(&'static str, Cell)]| t.iter().map(|(n, _)| *n);
    cols(SETTINGS)
        .chain(cols(LAYOUT))
        .chain(cols(RESULT))
        .chain(component_names())
        .chain(cols(TAIL))
        .collect()
}

fn row(c: &Ctx) -> Vec<String> {
    let cells = |t: &'static [(&'static str, Cell)]| t.iter().map(|(_, f)| f(c));
    let parts = c.e.components_at_peak.entries();
    cells(SETTINGS)
        .chain(cells(LAYOUT))
        .chain(cells(RESULT))
        .chain(parts.iter().map(|(_, b)| b.get().to_string()))
        .chain(cells(TAIL))
        .collect()
}

fn write(rows: &[Vec<String>]) -> String {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(header()).expect("in-memory write");
    for r in rows {
        out.write_record(r).expect("in-memory write");
    }
    String::from_utf8(out.into_inner().expect("flush")).expect("utf-8")
}

/// A single-GPU estimate: the header and one row (`layout` as resolved: every degree
/// 1, its buffers as set).
pub fn render(
    e: &Estimate,
    w: &Workload,
    ov: &Overheads,
    layout: &Layout,
    fit: Option<&Fit>,
) -> String {
    let class = Class {
        name: "single gpu",
        ranks: 1,
        model_states: None,
        worst: true,
    };
    let world = layout.world();
    let l = layout;
    write(&[row(&Ctx {
        e,
        w,
        ov,
        l,
        world,
        class,
        fit,
    })])
}

/// A distributed estimate: the header and one row per rank class; `fits` is filled on
/// the worst rank's row.
pub fn render_distributed(
    d: &DistributedEstimate,
    w: &Workload,
    ov: &Overheads,
    layout: &Layout,
    fit: Option<&Fit>,
) -> String {
    let rows: Vec<Vec<String>> = d
        .per_rank
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let class = Class {
                name: &r.name,
                ranks: r.ranks,
                model_states: Some(r.model_states_bytes.get()),
                worst: i == d.worst_rank,
            };
            row(&Ctx {
                e: &r.estimate,
                w,
                ov,
                l: layout,
                world: d.world,
                class,
                fit: fit.filter(|_| i == d.worst_rank),
            })
        })
        .collect();
    write(&rows)
}
