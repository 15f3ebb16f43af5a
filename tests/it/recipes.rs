//! Precision recipes of the distributed layouts, as the frameworks run them:
//! - Megatron-LM `--bf16`/`--fp16` keeps fp32 main params, fp32 `main_grad` and fp32
//!   Adam (megatron/core/optimizer/optimizer.py `Float16OptimizerWithFloat16Params`,
//!   distrib_optimizer.py `DistributedOptimizer`, Megatron-LM core_r0.12);
//! - accelerate's FSDP plugin turns `mixed_precision="bf16"` into torch FSDP
//!   `MixedPrecision(param_dtype=bf16, reduce_dtype=bf16, buffer_dtype=bf16)`
//!   (accelerate/utils/dataclasses.py `FullyShardedDataParallelPlugin.set_mixed_precision`,
//!   accelerate 1.x): fp32 sharded parameters, gathered in bf16, no autocast cache;
//! - DeepSpeed with `bf16.enabled` casts the module to bf16 and keeps the fp32 master
//!   partition; accelerate does not autocast under DeepSpeed (accelerate/accelerator.py
//!   `native_amp` is off for `DistributedType.DEEPSPEED`).
//!
//! Plus what the layout outputs say about them (host memory of offload layouts, plan
//! caps, sequence parallelism) — each test named after its finding in
//! shared/reports/newcomer-findings.md.

use llm_mem::distributed::{estimate_layout, DistributedEstimate};
use llm_mem::estimate::Correction;
use llm_mem::workload::layout::{Buffers, FsdpMode, Layout};
use llm_mem::workload::overhead::Overheads;
use llm_mem::workload::settings::Settings;
use llm_mem::workload::Workload;
use llm_mem::ModelSpec;

use crate::util::{preset, run, workload};

fn train(spec: &ModelSpec, pairs: &[(&str, &str)]) -> Workload {
    let mut all = vec![("seq_len", "1024")];
    all.extend_from_slice(pairs);
    workload(spec, Settings::from_flags(&all).unwrap())
}

fn dist(spec: &ModelSpec, w: &Workload, layout: &Layout, ov: &Overheads) -> DistributedEstimate {
    estimate_layout(spec, w, ov, layout, &Correction::IDENTITY).unwrap()
}

fn states(spec: &ModelSpec, w: &Workload, layout: &Layout) -> u64 {
    dist(spec, w, layout, &Overheads::none())
        .worst()
        .model_states_bytes
        .get()
}

fn peak(spec: &ModelSpec, w: &Workload, layout: &Layout) -> u64 {
    let d = dist(spec, w, layout, &Overheads::default());
    d.worst().estimate.peak.device.get()
}

#[test]
fn h3_megatron_bf16_keeps_fp32_main_params() {
    let spec = preset("llama-3.1-8b");
    let p = llm_mem::arch::params::count(&spec).total;
    let bf16 = train(&spec, &[("dtype", "bf16")]);
    let master = train(&spec, &[("dtype", "bf16"), ("master_weights", "true")]);
    // the distributed optimizer without --master-weights: 6 + 12/d bytes per parameter
    let dist = Layout {
        dp: 8,
        distributed_optimizer: true,
        buffers: Buffers::none(),
        ..Layout::default()
    };
    let got = states(&spec, &bf16, &dist);
    let want = 6 * p + 12 * p / 8;
    assert!(got.abs_diff(want) <= 16, "{got} vs {want}");
    // Megatron TP / PP: the same recipe as asking for master weights
    let mut checked = 0;
    for (tp, pp, sp) in [(8u64, 1u64, true), (2, 2, false), (1, 4, false)] {
        let l = Layout {
            tp,
            pp,
            sequence_parallel: sp,
            buffers: Buffers::none(),
            ..Layout::default()
        };
        assert_eq!(
            states(&spec, &bf16, &l),
            states(&spec, &master, &l),
            "tp {tp} pp {pp}"
        );
        checked += 1;
    }
    assert_eq!(checked, 3);
    // fp16 too
    let fp16 = train(&spec, &[("dtype", "fp16")]);
    assert!(states(&spec, &fp16, &dist).abs_diff(want) <= 16);
    // plain torch DDP keeps the pure-half recipe the user asked for: 2 + 2 + 4 bytes
    let ddp = Layout {
        dp: 8,
        buffers: Buffers::none(),
        ..Layout::default()
    };
    assert_eq!(states(&spec, &bf16, &ddp), 8 * p);
}

#[test]
fn h3_cli_tp8_distributed_optimizer_does_not_fit_80gb() {
    let r = run([
        "estimate",
        "--model",
        "llama-3.1-70b",
        "--tp",
        "8",
        "--sequence-parallel",
        "--seq-len",
        "4096",
        "--grad-ckpt",
        "selective",
        "--distributed-optimizer",
        "--gpu",
        "h100-80gb",
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("fp32 master weights (implied by Megatron)"),
        "{}",
        r.stdout
    );
}

#[test]
fn h3_plan_ranks_every_layout_under_one_precision_recipe() {
    use llm_mem::distributed::search::{plan, PlanQuery};
    use llm_mem::units::bytes::{Bytes, GIB};
    let spec = preset("llama-3.2-1b");
    let cfg = Settings::from_flags(&[("seq_len", "1024")]).unwrap();
    let (w, ov) = crate::util::build(&spec, &cfg);
    let q = PlanQuery {
        gpus: 4,
        capacity: Bytes(16 * GIB),
        max_batch: 4,
        top: 1000,
        max_seq: 0,
    };
    let r = plan(&spec, &w, &ov, &q).unwrap();
    assert!(
        r.precision.contains("fp32 master weights"),
        "{}",
        r.precision
    );
    // every candidate's peak is the estimate of its layout with master weights
    let mut wm = w.clone();
    wm.master_weights = true;
    let mut checked = 0;
    for c in r
        .fits
        .iter()
        .filter(|c| c.offload.as_str() == "none")
        .step_by(5)
    {
        let layout = Layout {
            dp: c.dp,
            tp: c.tp,
            pp: c.pp,
            cp: c.cp,
            sequence_parallel: c.sequence_parallel,
            zero: match c.sharding.as_str() {
                "zero1" => 1,
                "zero2" => 2,
                "zero3" => 3,
                _ => 0,
            },
            fsdp: match c.sharding.as_str() {
                "fsdp-full" => Some(FsdpMode::Full),
                "fsdp-grad-op" => Some(FsdpMode::GradOp),
                _ => None,
            },
            distributed_optimizer: c.sharding.as_str() == "dist-opt",
            micro_batches: Some(w.grad_accum.max(c.pp)),
            ..Layout::default()
        };
        let mut wc = wm.clone();
        wc.batch = c.max_micro_batch;
        wc.grad_ckpt = c.grad_ckpt;
        assert_eq!(peak(&spec, &wc, &layout), c.peak_bytes.get(), "{c:?}");
        checked += 1;
    }
    assert!(checked >= 5, "{checked}");
}

#[test]
fn h1_amp_bf16_under_fsdp_is_torch_mixed_precision() {
    let spec = preset("llama-3.1-8b");
    let amp = train(&spec, &[("dtype", "amp-bf16"), ("grad_ckpt", "full")]);
    let mp = train(
        &spec,
        &[
            ("dtype", "bf16"),
            ("master_weights", "true"),
            ("grad_ckpt", "full"),
        ],
    );
    let mut checked = 0;
    for mode in [FsdpMode::Full, FsdpMode::GradOp] {
        let l = Layout {
            dp: 8,
            fsdp: Some(mode),
            ..Layout::default()
        };
        assert_eq!(peak(&spec, &amp, &l), peak(&spec, &mp, &l), "{mode:?}");
        checked += 1;
    }
    assert_eq!(checked, 2);
    // no autocast copy of the gathered model: below half the whole bf16 model per rank
    // (what is there at the peak: the gathered root unit and two layers, and the root
    // unit's gradients assembled unsharded — 2 × (embedding + head) in bf16 — at the
    // embedding's backward)
    let l = Layout {
        dp: 8,
        fsdp: Some(FsdpMode::Full),
        ..Layout::default()
    };
    let d = dist(&spec, &amp, &l, &Overheads::default());
    let e = &d.worst().estimate;
    let whole_bf16 = llm_mem::arch::params::count(&spec).total * 2;
    assert!(
        e.components_at_peak.temporaries.get() < whole_bf16 / 2,
        "{:?}",
        e.components_at_peak
    );
    assert!(
        d.warnings.iter().any(|w| w.contains("MixedPrecision")),
        "{:?}",
        d.warnings
    );
}

/// accelerate's FSDP MixedPrecision(param_dtype=bf16) casts every flat parameter —
/// the frozen LoRA base's and the adapters' — to bf16 before its all-gather (torch
/// fsdp/_flat_param.py `_use_low_precision_shard`; accelerate utils/dataclasses.py
/// `FullyShardedDataParallelPlugin.set_mixed_precision`): an `amp-bf16` LoRA run
/// computes as a bf16 one (bf16 residual stream, adapters in bf16) while its sharded
/// base stays fp32 as loaded (peft examples/sft `torch_dtype=torch.float32`).
#[test]
fn lora_amp_under_fsdp_computes_in_half_on_fp32_shards() {
    let spec = preset("llama-3.1-8b");
    let lora = [
        ("method", "lora"),
        ("lora_rank", "8"),
        ("lora_targets", "all-linear"),
        ("grad_ckpt", "full"),
    ];
    let with = |d: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut v = lora.to_vec();
        v.push(("dtype", d));
        v.extend_from_slice(extra);
        train(&spec, &v)
    };
    let amp = with("amp-bf16", &[]);
    let bf16 = with("bf16", &[("lora_dtype", "model")]);
    let l = Layout {
        dp: 8,
        fsdp: Some(FsdpMode::Full),
        ..Layout::default()
    };
    let (a, b) = (
        dist(&spec, &amp, &l, &Overheads::default()),
        dist(&spec, &bf16, &l, &Overheads::default()),
    );
    let (ea, eb) = (&a.worst().estimate, &b.worst().estimate);
    // the same activations as the bf16 run with bf16 adapters
    assert_eq!(ea.activations.total_bytes, eb.activations.total_bytes);
    // on one GPU the amp run keeps an fp32 residual stream: more activations
    let single = llm_mem::estimate::estimate(&spec, &amp, &Overheads::default()).unwrap();
    assert!(single.activations.total_bytes > ea.activations.total_bytes);
    // the base's shards: fp32, twice the bf16 run's (FSDP holds fp32 adapter shards
    // in both)
    let base = |d: &DistributedEstimate| d.worst().estimate.components_at_peak.weights.get();
    let adapters = llm_mem::estimate::lora_trainable(&spec, &amp) / 8;
    let (wa, wb) = (base(&a) - 4 * adapters, base(&b) - 4 * adapters);
    assert!(wa.abs_diff(2 * wb) <= 16, "{wa} vs 2 x {wb}");
    assert!(
        a.warnings.iter().any(|w| w.contains("MixedPrecision")),
        "{:?}",
        a.warnings
    );
}

/// A 4-bit base is all-gathered as stored, not in the compute dtype: torchao
/// NF4Tensor's `fsdp_pre_all_gather` returns its quantized data and scalers (torchao
/// dtypes/nf4tensor.py, torchtune's FSDP2 QLoRA), and bitsandbytes packs 4-bit data in
/// `bnb_4bit_quant_storage` so FSDP1 flattens and gathers it uncast. The gathered
/// buffers (root unit + two layer units) shrink by two layers' bf16 − 4-bit bytes.
#[test]
fn fsdp_gathers_a_4bit_base_as_stored() {
    let spec = preset("llama-3.1-8b");
    let with = |method: &'static str| {
        train(
            &spec,
            &[
                ("method", method),
                ("lora_rank", "8"),
                ("lora_targets", "all-linear"),
                ("dtype", "bf16"),
                ("grad_ckpt", "full"),
            ],
        )
    };
    let layer_bytes = |w: &Workload| {
        let (mut one, mut two) = (spec.clone(), spec.clone());
        one.set_layers(1);
        two.set_layers(2);
        let b = |m: &ModelSpec| {
            llm_mem::estimate::weights::weight_bytes(m, w, 0)
                .unwrap()
                .base
        };
        b(&two) - b(&one)
    };
    let (lora, qlora) = (with("lora"), with("qlora"));
    let (bf16_layer, nf4_layer) = (layer_bytes(&lora), layer_bytes(&qlora));
    assert!(nf4_layer * 3 < bf16_layer, "{nf4_layer} vs {bf16_layer}");
    let mut checked = 0;
    for version in [1u8, 2] {
        let l = Layout {
            dp: 8,
            fsdp: Some(FsdpMode::Full),
            fsdp_version: version,
            ..Layout::default()
        };
        let g = |w: &Workload| {
            let layers = spec.layers();
            llm_mem::distributed::rank_view(&spec, w, &l, 0, layers, 1)
                .unwrap()
                .gathered_fwd
        };
        assert_eq!(
            g(&lora) - g(&qlora),
            2 * (bf16_layer - nf4_layer),
            "FSDP{version}"
        );
        checked += 1;
    }
    assert_eq!(checked, 2);
}

#[test]
fn h1_amp_bf16_under_zero_is_deepspeed_bf16() {
    let spec = preset("llama-3.1-8b");
    let amp = train(&spec, &[("dtype", "amp-bf16"), ("grad_ckpt", "full")]);
    let bf16 = train(&spec, &[("dtype", "bf16"), ("grad_ckpt", "full")]);
    let mut checked = 0;
    for zero in [1u8, 2, 3] {
        let l = Layout {
            dp: 8,
            zero,
            ..Layout::default()
        };
        assert_eq!(peak(&spec, &amp, &l), peak(&spec, &bf16, &l), "zero {zero}");
        let d = dist(&spec, &amp, &l, &Overheads::default());
        assert!(
            d.warnings.iter().any(|w| w.contains("DeepSpeed")),
            "{:?}",
            d.warnings
        );
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn h1_cli_repro_70b_fsdp_amp() {
    let r = run([
        "estimate",
        "--model",
        "llama-3.1-70b",
        "--dp",
        "8",
        "--seq-len",
        "4096",
        "--fsdp",
        "full",
        "--grad-ckpt",
        "full",
        "--dtype",
        "amp-bf16",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // 145.72 GiB before the root unit's gradient assembly at the embedding's backward
    // (2 × the unsharded embedding + head gradients, bf16) was modelled, 149.46 GiB
    // before the backward's own cuBLAS workspace (+32 MiB)
    assert!(r.stdout.contains("peak: 149.49 GiB"), "{}", r.stdout);
}

/// `estimate --model llama-3.1-8b --dp 8` and `rest`.
fn llama8b_dp8(rest: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec!["estimate", "--model", "llama-3.1-8b", "--dp", "8"];
    v.extend_from_slice(rest);
    v
}

#[test]
fn l8_master_weights_implied_by_the_layout_are_said() {
    let args = llama8b_dp8(&["--zero", "2"]);
    let r = run(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("bf16 + fp32 master weights (implied by ZeRO)"),
        "{}",
        r.stdout
    );
    let r = run(args.iter().copied().chain(["--json"]));
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    // the user's setting keeps its meaning; the new field says where master weights come from
    assert_eq!(v["workload"]["master_weights"], false);
    assert_eq!(v["workload"]["master_weights_implied_by"], "ZeRO");
    assert!(v["components_at_peak"]["master_weights"].as_u64().unwrap() > 0);
    // asked for: nothing implied
    let r = run(args.iter().copied().chain(["--json", "--master-weights"]));
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["workload"]["master_weights"], true);
    assert!(v["workload"]["master_weights_implied_by"].is_null());
}

#[test]
fn m11_plan_shows_the_search_cap_as_a_cap() {
    let serve = [
        "plan",
        "--model",
        "qwen2.5-0.5b",
        "--task",
        "infer",
        "--gpus",
        "2",
        "--gpu",
        "a100-80gb",
        "--prompt-len",
        "512",
        "--gen-len",
        "64",
        "--max-batch",
        "4",
    ];
    let r = run(serve);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(
            "most concurrent sequences per replica: ≥ 4 (search limit; raise --max-batch)"
        ),
        "{}",
        r.stdout
    );
    let r = run(serve.iter().copied().chain(["--json"]));
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let best = &v["result"]["largest_micro_batch"];
    assert_eq!(best["max_micro_batch"], 4);
    assert_eq!(best["max_micro_batch_at_search_limit"], true);
    // training: the largest micro-batch headline too
    let train = [
        "plan",
        "--model",
        "qwen2.5-0.5b",
        "--gpus",
        "2",
        "--gpu",
        "a100-80gb",
        "--seq-len",
        "256",
        "--max-batch",
        "2",
        "--max-seq",
        "0",
    ];
    let r = run(train);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("largest micro-batch that fits: ≥ 2 (search limit; raise --max-batch)"),
        "{}",
        r.stdout
    );
    // a bound that was not hit reads as a number: the flag is exactly "the limit"
    let r = run([
        "plan",
        "--model",
        "llama-3.1-8b",
        "--gpus",
        "8",
        "--gpu",
        "a100-80gb",
        "--seq-len",
        "4096",
        "--max-seq",
        "0",
        "--max-batch",
        "8",
        "--top",
        "500",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let (mut below, mut at) = (0, 0);
    for c in v["result"]["fits"].as_array().unwrap() {
        let hit = c["max_micro_batch"] == 8;
        assert_eq!(c["max_micro_batch_at_search_limit"], hit, "{c}");
        if hit {
            at += 1
        } else {
            below += 1
        }
    }
    assert!(below > 0 && at > 0, "{below} {at}");
}

#[test]
fn l10_plan_rows_say_when_they_assume_sequence_parallelism() {
    let args = [
        "plan",
        "--model",
        "llama-3.1-8b",
        "--gpus",
        "8",
        "--gpu",
        "a100-40gb",
        "--seq-len",
        "8192",
        "--max-seq",
        "0",
        "--top",
        "200",
    ];
    let r = run(args.iter().copied().chain(["--json"]));
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let mut checked = 0;
    for c in v["result"]["fits"].as_array().unwrap() {
        let tp = c["tp"].as_u64().unwrap();
        assert_eq!(c["sequence_parallel"], tp > 1, "{c}");
        checked += 1;
    }
    assert!(checked > 10, "{checked}");
    let r = run(args);
    let header = r.stdout.lines().find(|l| l.contains("sharding")).unwrap();
    assert!(header.split_whitespace().any(|w| w == "sp"), "{header}");
    let tp2 = r
        .stdout
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("2"))
        .unwrap();
    assert!(tp2.split_whitespace().any(|w| w == "on"), "{tp2}");
}

#[test]
fn m12_offload_host_memory_equals_deepspeed_cpu_mem() {
    let ds: serde_json::Value =
        serde_json::from_str(&crate::util::read_data("oracle/deepspeed_estimates.json")).unwrap();
    let mut checked = 0;
    for model in ["llama-2-7b", "qwen2.5-0.5b", "gpt2"] {
        let spec = crate::util::config_spec(model);
        let w = train(&spec, &[("dtype", "bf16"), ("seq_len", "512")]);
        for gpus in [1u64, 8] {
            for (zero, par, key) in [
                (2u8, false, "zero2/offload1"),
                (3, false, "zero3/offload1_offloadparams0"),
                (3, true, "zero3/offload1_offloadparams1"),
            ] {
                let (stage, suffix) = key.split_once('/').unwrap();
                let want = ds[model][stage][format!("gpus{gpus}_{suffix}")]["cpu_mem"]
                    .as_u64()
                    .unwrap();
                let layout = Layout {
                    dp: gpus,
                    zero,
                    offload_optimizer: true,
                    offload_params: par,
                    ..Layout::default()
                };
                let d = dist(&spec, &w, &layout, &Overheads::default());
                let h = d.host.as_ref().expect("offload reports host memory");
                assert_eq!(h.gpus_per_node, gpus);
                assert_eq!(h.bytes_per_node.get(), want, "{model} {key} gpus {gpus}");
                checked += 1;
            }
        }
        // no offload: no host figure
        let d = dist(
            &spec,
            &w,
            &Layout {
                dp: 8,
                zero: 3,
                ..Layout::default()
            },
            &Overheads::default(),
        );
        assert!(d.host.is_none());
    }
    assert_eq!(checked, 18);
}

#[test]
fn m12_fsdp_cpu_offload_keeps_the_sharded_states_on_the_host() {
    let spec = preset("llama-3.1-8b");
    let p = llm_mem::arch::params::count(&spec).total;
    let w = train(&spec, &[("dtype", "bf16"), ("master_weights", "true")]);
    let layout = Layout {
        dp: 8,
        fsdp: Some(FsdpMode::Full),
        offload_params: true,
        ..Layout::default()
    };
    let d = dist(&spec, &w, &layout, &Overheads::default());
    let h = d.host.as_ref().unwrap();
    // fp32 shard + fp32 gradient shard + AdamW's two fp32 states, 8 ranks per node
    let want = 16 * p;
    assert!(
        h.bytes_per_node.get().abs_diff(want) <= 64,
        "{h:?} vs {want}"
    );
    // LoRA under ZeRO-3 parameter offload: the frozen half parameters are on the host too
    let lora = train(&spec, &[("method", "lora")]);
    let z3 = Layout {
        dp: 8,
        zero: 3,
        offload_optimizer: true,
        offload_params: true,
        ..Layout::default()
    };
    let t = llm_mem::estimate::lora_trainable(&spec, &lora);
    let h = dist(&spec, &lora, &z3, &Overheads::default()).host.unwrap();
    assert_eq!(h.bytes_per_node.get(), (16 * t + 2 * p) * 3 / 2);
}

#[test]
fn m12_cli_reports_host_memory_in_estimate_and_plan() {
    let est = llama8b_dp8(&["--zero", "3", "--offload-optimizer", "--offload-params"]);
    let r = run(&est);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("host memory: "), "{}", r.stdout);
    let r = run(est.iter().copied().chain(["--json"]));
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let p = llm_mem::arch::params::count(&preset("llama-3.1-8b")).total;
    assert_eq!(v["host_memory"]["bytes_per_node"], p * 27);
    assert_eq!(v["host_memory"]["gpus_per_node"], 8);
    let args = [
        "plan",
        "--model",
        "llama-3.1-405b",
        "--gpus",
        "8",
        "--gpu",
        "rtx4090",
        "--seq-len",
        "8192",
        "--max-seq",
        "0",
    ];
    let r = run(args);
    assert!(r.stdout.contains("host GiB/node"), "{}", r.stdout);
    assert!(
        r.stdout.contains("caution: the first row offloads"),
        "{}",
        r.stdout
    );
    let r = run(args.iter().copied().chain(["--json"]));
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let mut checked = 0;
    for c in v["result"]["fits"].as_array().unwrap() {
        assert_eq!(
            c["offload"] != "none",
            c["host_bytes_per_node"].is_u64(),
            "{c}"
        );
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn l11_training_tp_must_divide_the_kv_heads() {
    let r = run(["estimate", "--model", "llama-3.1-8b", "--tp", "16"]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("--tp 16") && r.stderr.contains("8 key/value heads"),
        "{}",
        r.stderr
    );
    // serving replicates kv heads across the tensor-parallel ranks (kept)
    let r = run([
        "estimate",
        "--model",
        "llama-3.1-8b",
        "--tp",
        "16",
        "--task",
        "infer",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // a divisor trains
    let r = run(["estimate", "--model", "llama-3.1-8b", "--tp", "8"]);
    assert!(r.code == 0 || r.code == 1, "{}", r.stderr);
}

#[test]
fn m6_zero3_buffers_are_capped_by_the_model_and_absurd_values_rejected() {
    let spec = preset("llama-3.1-8b");
    let p = llm_mem::arch::params::count(&spec).total;
    let w = train(&spec, &[("dtype", "bf16")]);
    let with = |live: u64, prefetch: u64, reduce: u64| Layout {
        dp: 8,
        zero: 3,
        buffers: Buffers {
            zero3_max_live_params: live,
            zero3_prefetch_bucket: prefetch,
            zero_reduce_bucket: reduce,
            ..Buffers::default()
        },
        ..Layout::default()
    };
    let huge = 1_000_000_000_000u64; // 1e12 elements: more than the model holds
    let d = dist(
        &spec,
        &w,
        &with(huge, huge, 500_000_000),
        &Overheads::default(),
    );
    let e = &d.worst().estimate;
    // gathered parameters never exceed the model: half parameters gathered (whole
    // model at most) + the largest module's gradients + the gradient bucket (which
    // DeepSpeed allocates at its configured size)
    let largest = llm_mem::arch::params::count(&spec).largest_module;
    let bound = 2 * p + 2 * largest + 2 * 500_000_000;
    assert!(
        e.components_at_peak.temporaries.get() <= bound,
        "{:?} vs {bound}",
        e.components_at_peak
    );
    // monotone: a larger prefetch bucket never lowers the peak
    let small = dist(
        &spec,
        &w,
        &with(huge, 50_000_000, 500_000_000),
        &Overheads::default(),
    );
    assert!(e.peak.device >= small.worst().estimate.peak.device);
    // absurd values are errors naming the key
    let mut checked = 0;
    for (key, l) in [
        ("zero3_max_live_params", with(u64::MAX / 2, 0, 0)),
        ("zero3_prefetch_bucket", with(0, u64::MAX, 0)),
        ("zero_reduce_bucket", with(0, 0, 1 << 62)),
    ] {
        let err = estimate_layout(&spec, &w, &Overheads::default(), &l, &Correction::IDENTITY)
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{key}: {err}");
        checked += 1;
    }
    assert_eq!(checked, 3);
    // from a DeepSpeed file: the file and key are named, rc 2
    let dir = crate::util::TempDir::new("m6");
    let ds = dir.write(
        "ds.json",
        r#"{"zero_optimization":{"stage":3,"stage3_max_live_parameters":1e19}}"#,
    );
    let r = run([
        "estimate",
        "--model",
        "llama-3.1-8b",
        "--dp",
        "8",
        "--deepspeed",
        &ds,
    ]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr.contains("stage3_max_live_parameters"),
        "{}",
        r.stderr
    );
}

#[test]
fn l5_learned_positions_cannot_run_past_their_table() {
    // a warning that says the run fails as configured (not "RoPE scaling"); an error
    // (rc 2) needs the default --seq-len 2048 to stop exceeding GPT-2's table first
    let r = run(["estimate", "--model", "gpt2", "--seq-len", "2048"]);
    assert!(
        r.stdout
            .contains("exceed the 1024 learned absolute positions of gpt2")
            && !r.stdout.contains("RoPE"),
        "{}",
        r.stdout
    );
    let r = run([
        "estimate",
        "--model",
        "gpt2",
        "--task",
        "infer",
        "--prompt-len",
        "1000",
        "--gen-len",
        "100",
    ]);
    assert!(
        r.stdout.contains("1100 tokens exceed the 1024 learned"),
        "{}",
        r.stdout
    );
    // at the table's length: no warning
    let r = run(["estimate", "--model", "gpt2", "--seq-len", "1024"]);
    assert!(!r.stdout.contains("warning"), "{}", r.stdout);
    // RoPE models keep the extension warning
    let r = run(["estimate", "--model", "llama-3.2-1b", "--seq-len", "262144"]);
    assert!(r.stdout.contains("RoPE scaling"), "{}", r.stdout);
}

#[test]
fn l16_header_shows_small_parameter_counts_in_their_units() {
    let dir = crate::util::TempDir::new("l16");
    let cfg = dir.write(
        "config.json",
        r#"{"model_type":"gpt2","n_embd":64,"n_layer":2,"n_head":4,"n_positions":128,"vocab_size":256}"#,
    );
    let r = run(["estimate", "--model", &cfg, "--seq-len", "64"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let head = r.stdout.lines().next().unwrap();
    assert!(!head.contains("0.00 B"), "{head}");
    let p = llm_mem::hf::hub::load_config_file(std::path::Path::new(&cfg)).unwrap();
    let n = llm_mem::arch::params::count(&p).total;
    assert!(n < 1_000_000, "{n}");
    assert!(
        head.contains(&format!("{:.2} K params", n as f64 / 1e3)),
        "{head}"
    );
    // millions and billions
    let r = run(["estimate", "--model", "gpt2", "--seq-len", "1024"]);
    assert!(r.stdout.contains("124.44 M params"), "{}", r.stdout);
    let r = run(["estimate", "--model", "llama-3.1-8b", "--seq-len", "1024"]);
    assert!(r.stdout.contains("8.03 B params"), "{}", r.stdout);
    // nothing trainable (serving) reads as 0
    let r = run([
        "estimate",
        "--model",
        "gpt2",
        "--task",
        "infer",
        "--prompt-len",
        "64",
    ]);
    assert!(r.stdout.contains(", 0 trainable)"), "{}", r.stdout);
}

/// `--framework hf-trainer`: accelerate >= 0.30 upcasts half-precision trainable FSDP
/// flat parameters to fp32 under mixed precision (accelerate/accelerator.py
/// `prepare_model`, PR #2674, `upcasted_log`; "we follow DeepSpeed's strategy to hold
/// the parameters in full precision"), and its FSDP plugin defaults to FSDP1
/// (`FullyShardedDataParallelPlugin.fsdp_version = 1`). So bf16 weights under the
/// profile are sized as MixedPrecision over fp32 shards — exactly `--dtype amp-bf16
/// --fsdp-version 1` — while a value the user sets wins, and without FSDP the profile
/// changes nothing.
#[test]
fn hf_trainer_profile_upcasts_fsdp_parameters_to_fp32_as_accelerate_does() {
    let base = [
        "--model",
        "llama-3.2-1b",
        "--method",
        "full",
        "--batch",
        "4",
        "--seq-len",
        "1024",
        "--grad-ckpt",
        "full",
        "--json",
    ];
    let peak = |extra: &[&str]| -> (u64, String) {
        let mut a = vec!["estimate"];
        a.extend_from_slice(&base);
        a.extend_from_slice(extra);
        let r = run(&a);
        assert_eq!(r.code, 0, "{r:?}");
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        (v["peak"]["allocated_bytes"].as_u64().unwrap(), r.stdout)
    };
    let fsdp = ["--fsdp", "full", "--dp", "4"];
    let with = |more: &[&str]| {
        let mut a = fsdp.to_vec();
        a.extend_from_slice(more);
        peak(&a)
    };
    let (profiled, note) = with(&["--dtype", "bf16", "--framework", "hf-trainer"]);
    let (amp_v1, _) = with(&["--dtype", "amp-bf16", "--fsdp-version", "1"]);
    let (pure_v1, _) = with(&["--dtype", "bf16", "--fsdp-version", "1"]);
    assert_eq!(
        profiled, amp_v1,
        "the profile = fp32 shards gathered in bf16, FSDP1"
    );
    assert!(profiled > pure_v1, "{profiled} vs {pure_v1}");
    assert!(note.contains("upcast to fp32 as accelerate does"), "{note}");
    // the user's own value wins over the profile's
    let (off, _) = with(&[
        "--dtype",
        "bf16",
        "--framework",
        "hf-trainer",
        "--fsdp-upcast",
        "false",
    ]);
    assert_eq!(off, pure_v1);
    // litgpt (Lightning Fabric, bf16-true) keeps bf16 shards: its profile is its own
    // model code on FSDP1 without the upcast
    let (litgpt, _) = with(&["--dtype", "bf16", "--framework", "litgpt"]);
    let (litgpt_pure, _) = with(&[
        "--dtype",
        "bf16",
        "--implementation",
        "litgpt",
        "--fsdp-version",
        "1",
    ]);
    assert_eq!(litgpt, litgpt_pure);
    // one GPU: nothing to shard, nothing changes
    assert_eq!(peak(&["--framework", "hf-trainer"]).0, peak(&[]).0);
}

/// A VLM under data parallelism holds what one GPU holds of it, sharded as the layout
/// shards the text model's states: DDP replicates the vision side's weights, gradients
/// and optimizer state (the single-GPU figures); ZeRO-3 and FSDP split them over the
/// ranks; a frozen tower (`--vision frozen`) has weights but no gradients or optimizer
/// state; FSDP gathers a tower block as a unit of its own.
#[test]
fn vlm_model_states_under_data_parallel_layouts() {
    use llm_mem::estimate::estimate;
    let spec = preset("llava-1.5-7b");
    let c = llm_mem::arch::params::count(&spec);
    let full = train(
        &spec,
        &[
            ("method", "full"),
            ("seq_len", "2048"),
            ("grad_ckpt", "full"),
        ],
    );
    let single = estimate(&spec, &full, &Overheads::none()).unwrap();
    let at = |e: &llm_mem::estimate::Estimate| e.components_at_peak;
    let ddp = Layout {
        dp: 2,
        buffers: Buffers::none(),
        ..Layout::default()
    };
    let d = dist(&spec, &full, &ddp, &Overheads::none());
    let (a, b) = (at(&single), at(&d.worst().estimate));
    assert_eq!(
        (a.weights, a.optimizer_state),
        (b.weights, b.optimizer_state)
    );
    // ZeRO-3 over 4: bf16 weights / 4 (the vision side's too); fp32 master / 4
    let z3 = Layout {
        dp: 4,
        zero: 3,
        buffers: Buffers::none(),
        ..Layout::default()
    };
    let z = at(&dist(&spec, &full, &z3, &Overheads::none()).worst().estimate);
    assert!(z.weights.get().abs_diff(c.total * 2 / 4) <= 64, "{z:?}");
    assert!(
        z.master_weights.get().abs_diff(c.total * 4 / 4) <= 64,
        "{z:?}"
    );
    // the frozen tower: the same weights, the optimizer state of the rest only
    let frozen = train(
        &spec,
        &[
            ("method", "full"),
            ("seq_len", "2048"),
            ("grad_ckpt", "full"),
            ("vision", "frozen"),
        ],
    );
    let f = at(&dist(&spec, &frozen, &z3, &Overheads::none())
        .worst()
        .estimate);
    assert_eq!(f.weights, z.weights);
    let trained = (c.total - c.vision) as f64 / c.total as f64;
    let ratio = f.master_weights.get() as f64 / z.master_weights.get() as f64;
    assert!((ratio - trained).abs() < 1e-6, "{ratio} vs {trained}");
    // FSDP: the same shards as ZeRO-3's weights; the gathered unit is the larger of a
    // decoder layer and a tower block (here the decoder's)
    let fsdp = Layout {
        dp: 4,
        fsdp: Some(FsdpMode::Full),
        buffers: Buffers::none(),
        ..Layout::default()
    };
    let v = llm_mem::distributed::rank_view(&spec, &full, &fsdp, 0, spec.layers(), 1).unwrap();
    let text_only = {
        let mut t = spec.clone();
        t.vision = None;
        llm_mem::distributed::rank_view(&t, &full, &fsdp, 0, t.layers(), 1).unwrap()
    };
    let vision = spec.vision.as_ref().unwrap();
    let (blocks, _) = llm_mem::arch::params::vision_blocks(vision);
    // the root unit also carries the vision side outside its blocks
    assert_eq!(
        v.gathered_fwd - text_only.gathered_fwd,
        (c.vision - blocks) * 2
    );
}
