//! Properties of `estimate()` over random presets and workloads:
//! (a) the peak is monotone non-decreasing in batch and in sequence length;
//! (b) full checkpointing never raises the kept activations;
//! (c) the components at the peak sum exactly to the device peak (every event too), and
//!     the kept activations split exactly into non-layer + layers × per-layer;
//! (d) trainable ≤ total parameters;
//! (e) allocated ≤ reserved ≤ device;
//! (f) `estimate()` never panics: every input gives `Ok` or `Err`.
//!
//! (a)–(e) run on strategies that generate only accepted combinations: the options a
//! runtime accepts are derived from the chosen runtime and preset (`torch_case`,
//! `candle_case`), so every case reaches its assertion and a rejected one fails the
//! test. Each property counts the cases it checked (`util::check_all`). (f) runs over
//! the whole cross product (`any_case`, rejected combinations included) and asserts
//! that exactly the combinations the two strategies leave out are rejected.
//!
//! Case counts are small (64) so the suite stays fast; failures shrink and are stored
//! in `tests/it/properties.proptest-regressions`.

use llm_mem::estimate::{estimate, Estimate};
use llm_mem::hf::presets;
use llm_mem::runtime::candle::program;
use llm_mem::workload::overhead::Overheads;
use llm_mem::workload::settings::Settings;
use llm_mem::ModelSpec;
use proptest::prelude::*;

use crate::util::{check_all, preset, proptest_config, Checked};

const CASES: u32 = 64;

const TASKS: &[&str] = &["train", "infer"];
const METHODS: &[&str] = &["full", "lora", "qlora"];
const DTYPES: &[&str] = &["fp32", "bf16", "fp16", "amp-bf16", "amp-fp16", "fp8"];
const OPTIMIZERS: &[&str] = &[
    "adamw",
    "adamw-foreach",
    "adamw-8bit",
    "paged-adamw",
    "paged-adamw-8bit",
    "sgd",
    "sgd-momentum",
    "adafactor",
    "lion",
];
const ATTNS: &[&str] = &["eager", "sdpa", "flash"];
/// gpt-oss's attention sinks have no SDPA path in transformers (refused).
const SINK_ATTNS: &[&str] = &["eager", "flash"];
const CKPTS: &[&str] = &["none", "full", "selective"];
const LOSSES: &[&str] = &["standard", "chunked", "fused-linear-ce"];
const RUNTIMES: &[&str] = &["torch", "candle"];
const DEVICES: &[&str] = &["cuda", "cpu"];

/// torch: fp8 weights only for inference.
const TORCH_TRAIN_DTYPES: &[&str] = &["fp32", "bf16", "fp16", "amp-bf16", "amp-fp16"];
/// A mixture-of-experts preset: QLoRA and int8 quantize the nn.Linear modules only (the
/// fused experts stay in the load dtype), fp8 is refused; LoRA on the attention
/// projections (`lora_targets attn`).
const MOE_METHODS: &[&str] = &["full", "lora", "qlora"];
const MOE_INFER_DTYPES: &[&str] = &["fp32", "bf16", "fp16", "amp-bf16", "amp-fp16", "int8"];
/// torch: a GPTQ/AWQ checkpoint is not fully fine-tuned.
const QUANTIZED_TRAIN_METHODS: &[&str] = &["lora", "qlora"];

/// candle: single-device training of the probe's families with full or LoRA
/// (all-linear, the default targets), no autocast, candle-nn's AdamW, no
/// checkpointing, no flash kernel, the standard loss, no master weights. Its cases cut
/// the model to `CANDLE_MAX_LAYERS` layers: the candle profile replays the whole graph
/// (a 126-layer model takes seconds per estimate in a debug build), and the properties
/// do not depend on depth.
const CANDLE_METHODS: &[&str] = &["full", "lora"];
/// candle: a GPTQ/AWQ checkpoint is not fully fine-tuned either.
const CANDLE_QUANTIZED_METHODS: &[&str] = &["lora"];
const CANDLE_DTYPES: &[&str] = &["fp32", "bf16", "fp16"];
const CANDLE_OPTIMIZERS: &[&str] = &["adamw", "adamw-foreach"];
const CANDLE_ATTNS: &[&str] = &["eager", "sdpa"];
const CANDLE_MAX_LAYERS: u64 = 4;

/// One random run.
#[derive(Debug, Clone)]
struct Case {
    preset: &'static str,
    task: &'static str,
    method: &'static str,
    dtype: &'static str,
    optimizer: &'static str,
    attn: &'static str,
    ckpt: &'static str,
    loss: &'static str,
    runtime: &'static str,
    device: &'static str,
    master_weights: bool,
    batch: u64,
    seq: u64,
    /// `--layers`: the preset cut to this many layers (`None`: as published).
    layers: Option<u64>,
}

fn pick(xs: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    proptest::sample::select(xs)
}

/// Whether the preset is a GPTQ/AWQ checkpoint.
fn quantized(spec: &ModelSpec) -> bool {
    spec.quantization
        .as_ref()
        .is_some_and(|q| matches!(q.method.to_ascii_lowercase().as_str(), "gptq" | "awq"))
}

/// Every preset, with whether it is GPTQ/AWQ-quantized.
fn torch_presets() -> Vec<(&'static str, bool)> {
    let all: Vec<_> = presets::names()
        .into_iter()
        .map(|n| (n, quantized(&preset(n))))
        .collect();
    assert!(all.iter().any(|p| p.1), "some presets are quantized");
    all
}

/// The presets the candle probe models implement (`program::check_supported`), with
/// whether each is GPTQ/AWQ-quantized: every one of its families is among them.
fn candle_presets() -> Vec<(&'static str, bool)> {
    let all: Vec<_> = torch_presets()
        .into_iter()
        .filter(|(n, _)| program::check_supported(&preset(n)).is_ok())
        .collect();
    for f in program::FAMILIES {
        assert!(
            all.iter().any(|(n, _)| preset(n).family == f),
            "no candle preset of family {f}"
        );
    }
    all
}

/// The case's model: the preset, cut to `c.layers`.
fn spec_of(c: &Case) -> ModelSpec {
    let spec = preset(c.preset);
    match c.layers {
        Some(l) => spec.with_layers(l).unwrap(),
        None => spec,
    }
}

/// Master weights only where they exist (bf16 or fp16 parameters): the case's flag is
/// ANDed with that.
fn master_weights(want: bool, dtype: &str) -> bool {
    want && matches!(dtype, "bf16" | "fp16")
}

/// Any combination of the tables, accepted or not (property (f)).
fn any_case() -> impl Strategy<Value = Case> {
    (
        proptest::sample::select(presets::names()),
        pick(TASKS),
        pick(METHODS),
        pick(DTYPES),
        pick(OPTIMIZERS),
        pick(ATTNS),
        pick(CKPTS),
        pick(LOSSES),
        (pick(RUNTIMES), pick(DEVICES)),
        any::<bool>(),
        1u64..=8,
        64u64..=4096,
    )
        .prop_map(
            |(
                preset,
                task,
                method,
                dtype,
                optimizer,
                attn,
                ckpt,
                loss,
                (runtime, device),
                mw,
                batch,
                seq,
            )| Case {
                preset,
                task,
                method,
                dtype,
                optimizer,
                attn,
                ckpt,
                loss,
                runtime,
                device,
                master_weights: master_weights(mw, dtype),
                batch,
                seq,
                layers: None,
            },
        )
}

/// torch runs the estimator accepts: the preset and task first, then the methods and
/// dtypes they allow.
fn torch_case() -> impl Strategy<Value = Case> {
    (proptest::sample::select(torch_presets()), pick(TASKS)).prop_flat_map(
        |((preset, quantized), task)| {
            let train = task == "train";
            let spec = crate::util::preset(preset);
            let moe = spec.moe.is_some();
            let attns = if spec.attn_sinks { SINK_ATTNS } else { ATTNS };
            let methods = if moe {
                MOE_METHODS
            } else if train && quantized {
                QUANTIZED_TRAIN_METHODS
            } else {
                METHODS
            };
            let dtypes = match (train, moe) {
                (true, _) => TORCH_TRAIN_DTYPES,
                (false, true) => MOE_INFER_DTYPES,
                (false, false) => DTYPES,
            };
            (
                pick(methods),
                pick(dtypes),
                pick(OPTIMIZERS),
                pick(attns),
                pick(CKPTS),
                pick(LOSSES),
                pick(DEVICES),
                any::<bool>(),
                1u64..=8,
                64u64..=4096,
            )
                .prop_map(
                    move |(method, dtype, optimizer, attn, ckpt, loss, device, mw, batch, seq)| {
                        Case {
                            preset,
                            task,
                            method,
                            dtype,
                            optimizer,
                            attn,
                            ckpt,
                            loss,
                            runtime: "torch",
                            device,
                            master_weights: master_weights(mw, dtype),
                            batch,
                            seq,
                            layers: None,
                        }
                    },
                )
        },
    )
}

/// candle runs the estimator accepts: only the options the candle runtime has (and
/// for a quantized checkpoint, LoRA).
fn candle_case() -> impl Strategy<Value = Case> {
    proptest::sample::select(candle_presets()).prop_flat_map(|(preset, quantized)| {
        let methods = if quantized {
            CANDLE_QUANTIZED_METHODS
        } else {
            CANDLE_METHODS
        };
        (
            pick(methods),
            pick(CANDLE_DTYPES),
            pick(CANDLE_OPTIMIZERS),
            pick(CANDLE_ATTNS),
            pick(DEVICES),
            1u64..=8,
            64u64..=4096,
            1u64..=CANDLE_MAX_LAYERS,
        )
            .prop_map(
                move |(method, dtype, optimizer, attn, device, batch, seq, layers)| Case {
                    preset,
                    task: "train",
                    method,
                    dtype,
                    optimizer,
                    attn,
                    ckpt: "none",
                    loss: "standard",
                    runtime: "candle",
                    device,
                    master_weights: false,
                    batch,
                    seq,
                    layers: Some(layers),
                },
            )
    })
}

/// Whether `torch_case` or `candle_case` can generate `c`'s combination (its batch and
/// sequence length are always in range).
fn generated(c: &Case) -> bool {
    let train = c.task == "train";
    match c.runtime {
        "torch" => {
            let spec = preset(c.preset);
            (!train || TORCH_TRAIN_DTYPES.contains(&c.dtype))
                && (!(train && quantized(&spec)) || QUANTIZED_TRAIN_METHODS.contains(&c.method))
                && (spec.moe.is_none()
                    || (MOE_METHODS.contains(&c.method) && MOE_INFER_DTYPES.contains(&c.dtype)))
                && (!spec.attn_sinks || SINK_ATTNS.contains(&c.attn))
        }
        "candle" => {
            let spec = preset(c.preset);
            let methods = if quantized(&spec) {
                CANDLE_QUANTIZED_METHODS
            } else {
                CANDLE_METHODS
            };
            train
                && program::check_supported(&spec).is_ok()
                && methods.contains(&c.method)
                && CANDLE_DTYPES.contains(&c.dtype)
                && CANDLE_OPTIMIZERS.contains(&c.optimizer)
                && CANDLE_ATTNS.contains(&c.attn)
                && c.ckpt == "none"
                && c.loss == "standard"
                && !c.master_weights
        }
        r => panic!("runtime {r}"),
    }
}

/// The run config of `c` with `batch` and `seq` (for inference: concurrency and prompt
/// length, which are what batch and sequence mean there).
fn config(c: &Case, batch: u64, seq: u64, ckpt: &str) -> Settings {
    let infer = c.task == "infer";
    let (b, s) = (batch.to_string(), seq.to_string());
    let mut pairs = vec![
        ("task", c.task),
        ("method", c.method),
        ("dtype", c.dtype),
        (
            "master_weights",
            if c.master_weights { "true" } else { "false" },
        ),
        ("optimizer", c.optimizer),
        ("attn", c.attn),
        ("grad_ckpt", ckpt),
        ("loss", c.loss),
        ("runtime", c.runtime),
        ("device", c.device),
        ("batch", b.as_str()),
        ("seq_len", s.as_str()),
    ];
    if infer {
        pairs.extend([("concurrency", b.as_str()), ("prompt_len", s.as_str())]);
    }
    let spec = preset(c.preset);
    if c.method != "full" && spec.moe.is_some() {
        pairs.push(("lora_targets", "attn"));
    }
    // a VLM: as many images as half the sequence holds (none in a short one)
    let images = spec
        .vision
        .as_ref()
        .map(|v| (seq / (2 * v.image_tokens())).to_string());
    if let Some(n) = &images {
        pairs.push(("images", n.as_str()));
    }
    Settings::from_flags(&pairs).expect("every generated value parses")
}

/// The estimate of an accepted case; a rejection fails the case with the reason.
fn run_case(c: &Case, batch: u64, seq: u64, ckpt: &str) -> Result<Estimate, TestCaseError> {
    let spec = spec_of(c);
    config(c, batch, seq, ckpt)
        .build(&spec)
        .and_then(|(w, ov)| estimate(&spec, &w, &ov))
        .map_err(|e| {
            TestCaseError::fail(format!(
                "rejected (batch {batch}, seq {seq}, ckpt {ckpt}): {e}"
            ))
        })
}

/// Properties (c), (d), (e) of one estimate.
fn check_invariants(e: &Estimate) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.components_at_peak.total(), e.peak.device);
    for ev in &e.timeline {
        prop_assert!(ev.components.total() <= e.peak.device, "{}", ev.event);
        prop_assert!(ev.allocated <= ev.reserved && ev.reserved <= ev.components.total());
    }
    prop_assert!(e.model.params_trainable <= e.model.params_total);
    if e.activations.total_bytes > 0 {
        // training: everything kept = the non-layer part + one per-layer share per layer
        prop_assert_eq!(
            e.activations.total_bytes,
            e.activations.non_layer_bytes + e.model.layers * e.activations.per_layer_bytes
        );
    }
    prop_assert!(e.peak.allocated <= e.peak.reserved);
    prop_assert!(e.peak.reserved <= e.peak.device);
    Ok(())
}

/// Random overheads: a CUDA context of 0..4 GiB and any allocator fragmentation.
fn overheads() -> impl Strategy<Value = Overheads> {
    (0.0f64..=1.0, 0u64..4096).prop_map(|(frag, ctx_mib)| Overheads {
        cuda_context: llm_mem::Bytes(ctx_mib << 20),
        allocator_fragmentation: frag,
        ..Overheads::default()
    })
}

/// (f) + (c), (d), (e) over every combination: never panics; a combination is
/// rejected exactly when neither strategy generates it; every estimate (with the
/// defaults and with random overheads) is self-consistent.
#[test]
fn never_panics_and_is_consistent() {
    let (accepted, rejected) = (
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    );
    check_all(
        "never_panics_and_is_consistent",
        proptest_config(CASES, file!()),
        (any_case(), overheads()),
        |(c, ov), checked: &Checked| {
            let spec = spec_of(&c);
            let cfg = config(&c, c.batch, c.seq, c.ckpt);
            // a panic here fails the test; Err is fine
            let built = cfg.build(&spec);
            let result = built
                .as_ref()
                .map_err(|e| e.to_string())
                .and_then(|(w, ov)| estimate(&spec, w, ov).map_err(|e| e.to_string()));
            if let Ok(e) = &result {
                check_invariants(e)?;
            }
            if let Ok((w, _)) = &built {
                // the overheads are valid: they change the bytes, not the verdict
                let with_ov = estimate(&spec, w, &ov);
                prop_assert_eq!(
                    with_ov.is_ok(),
                    result.is_ok(),
                    "{:?}",
                    with_ov.as_ref().err()
                );
                if let Ok(e) = with_ov {
                    check_invariants(&e)?;
                }
            }
            prop_assert_eq!(
                result.is_ok(),
                generated(&c),
                "accepted ≠ generated by torch_case/candle_case: {:?}",
                result.as_ref().err()
            );
            let n = if result.is_ok() { &accepted } else { &rejected };
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            checked.hit();
            Ok(())
        },
    );
    let (a, r) = (accepted.into_inner(), rejected.into_inner());
    eprintln!("never_panics_and_is_consistent: {a} accepted, {r} rejected");
    assert!(
        a > 0 && r > 0,
        "both outcomes exercised: {a} accepted, {r} rejected"
    );
}

/// (c), (d), (e) on accepted torch runs, with random overheads too.
#[test]
fn torch_estimates_are_consistent() {
    consistent("torch_estimates_are_consistent", torch_case());
}

/// (c), (d), (e) on accepted candle runs, with random overheads too.
#[test]
fn candle_estimates_are_consistent() {
    consistent("candle_estimates_are_consistent", candle_case());
}

fn consistent(name: &str, cases: impl Strategy<Value = Case>) {
    check_all(
        name,
        proptest_config(CASES, file!()),
        (cases, overheads()),
        |(c, ov), checked: &Checked| {
            check_invariants(&run_case(&c, c.batch, c.seq, c.ckpt)?)?;
            let spec = spec_of(&c);
            let (w, _) = config(&c, c.batch, c.seq, c.ckpt)
                .build(&spec)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let e = estimate(&spec, &w, &ov).map_err(|e| TestCaseError::fail(e.to_string()))?;
            check_invariants(&e)?;
            checked.hit();
            Ok(())
        },
    );
}

/// (a) monotone in batch.
fn monotone_in_batch(name: &str, cases: impl Strategy<Value = Case>) {
    check_all(
        name,
        proptest_config(CASES, file!()),
        (cases, 1u64..=8),
        |(c, extra), checked: &Checked| {
            let s = run_case(&c, c.batch, c.seq, c.ckpt)?;
            let b = run_case(&c, c.batch + extra, c.seq, c.ckpt)?;
            prop_assert!(
                s.peak.device <= b.peak.device,
                "batch {} → {}: {} > {} ({} → {})",
                c.batch,
                c.batch + extra,
                s.peak.device.get(),
                b.peak.device.get(),
                s.peak.event,
                b.peak.event
            );
            checked.hit();
            Ok(())
        },
    );
}

/// (a) monotone in sequence length.
fn monotone_in_seq_len(name: &str, cases: impl Strategy<Value = Case>) {
    check_all(
        name,
        proptest_config(CASES, file!()),
        (cases, 1u64..=2048),
        |(c, extra), checked: &Checked| {
            let s = run_case(&c, c.batch, c.seq, c.ckpt)?;
            let b = run_case(&c, c.batch, c.seq + extra, c.ckpt)?;
            prop_assert!(
                s.peak.device <= b.peak.device,
                "seq {} → {}: {} > {} ({} → {})",
                c.seq,
                c.seq + extra,
                s.peak.device.get(),
                b.peak.device.get(),
                s.peak.event,
                b.peak.event
            );
            checked.hit();
            Ok(())
        },
    );
}

#[test]
fn peak_monotone_in_batch() {
    monotone_in_batch("peak_monotone_in_batch", torch_case());
}

#[test]
fn candle_peak_monotone_in_batch() {
    monotone_in_batch("candle_peak_monotone_in_batch", candle_case());
}

#[test]
fn peak_monotone_in_seq_len() {
    monotone_in_seq_len("peak_monotone_in_seq_len", torch_case());
}

#[test]
fn candle_peak_monotone_in_seq_len() {
    monotone_in_seq_len("candle_peak_monotone_in_seq_len", candle_case());
}

/// (b) full checkpointing never keeps more activations than none (torch: the candle
/// runtime has no checkpointing).
#[test]
fn full_checkpointing_never_keeps_more() {
    check_all(
        "full_checkpointing_never_keeps_more",
        proptest_config(CASES, file!()),
        torch_case(),
        |c, checked: &Checked| {
            let n = run_case(&c, c.batch, c.seq, "none")?;
            let f = run_case(&c, c.batch, c.seq, "full")?;
            prop_assert!(
                f.activations.total_bytes <= n.activations.total_bytes,
                "total: full {} > none {}",
                f.activations.total_bytes,
                n.activations.total_bytes
            );
            prop_assert!(
                f.activations.per_layer_bytes <= n.activations.per_layer_bytes,
                "per layer: full {} > none {}",
                f.activations.per_layer_bytes,
                n.activations.per_layer_bytes
            );
            checked.hit();
            Ok(())
        },
    );
}

/// The counting cannot pass vacuously: a property that lets a case return before its
/// assertion (here: every odd number) fails `check_all`.
#[test]
fn a_case_that_skips_its_assertion_fails_the_property() {
    let r = std::panic::catch_unwind(|| {
        check_all(
            "skips odd numbers",
            proptest_config(16, file!()),
            0u32..1000,
            |n, checked: &Checked| {
                if n % 2 == 1 {
                    return Ok(());
                }
                prop_assert!(n < 1000);
                checked.hit();
                Ok(())
            },
        )
    });
    let msg = r.expect_err("check_all accepted skipped cases");
    let msg = msg
        .downcast_ref::<String>()
        .map(String::as_str)
        .unwrap_or_default();
    assert!(msg.contains("cases reached the assertion"), "{msg}");
}

/// Shapes far beyond any real run must be rejected with an error naming the flag, not
/// overflow `u64` (bounds: `workload::MAX_BATCH`, `MAX_TOKENS`, `MAX_LORA_RANK`,
/// `MAX_TENSOR_BYTES`, `arch::MAX_LAYERS`).
#[test]
fn huge_shapes_are_errors_not_overflows() {
    let spec = preset("llama-3.1-8b");
    let huge = u64::MAX;
    let cases: Vec<(&str, Settings)> = vec![
        (
            "batch 2^32 x seq 2^32",
            Settings::from_flags(&[
                ("batch", &(1u64 << 32).to_string()),
                ("seq_len", &(1u64 << 32).to_string()),
            ])
            .unwrap(),
        ),
        (
            "seq u64::MAX",
            Settings::from_flags(&[("seq_len", &(huge).to_string())]).unwrap(),
        ),
        (
            "lora rank u64::MAX",
            Settings::from_flags(&[("method", "lora"), ("lora_rank", &(huge).to_string())])
                .unwrap(),
        ),
        (
            "infer gen u64::MAX",
            Settings::from_flags(&[("task", "infer"), ("gen_len", &(huge).to_string())]).unwrap(),
        ),
    ];
    for (what, cfg) in cases {
        let r = std::panic::catch_unwind(|| {
            cfg.build(&spec)
                .and_then(|(w, ov)| estimate(&spec, &w, &ov))
                .map(|e| e.peak.device)
        });
        match r {
            Err(_) => panic!("{what}: estimate panicked"),
            Ok(Ok(peak)) => panic!("{what}: accepted, peak {} bytes", peak.get()),
            Ok(Err(_)) => {}
        }
    }
    // --layers above arch::MAX_LAYERS is accepted
    assert!(
        spec.with_layers(1 << 20).is_err(),
        "--layers 1048576 accepted (config.json allows at most 2^14)"
    );
}
