//! In-process fuzz targets (issue 9) over every file the tool reads: settings files,
//! DeepSpeed / TrainingArguments / LLaMA-Factory imports, `config.json`, probe plans,
//! measurement CSVs and calibration files, plus the binary's exit codes on a smaller
//! sample. Inputs are structure-aware: mutations (numbers, quoted words, lines, bytes,
//! truncation) of the real files (presets, `probes/*.toml`, `results/*.csv`,
//! `calibration/*.json`, `tests/data/configs`) and settings generated from the settings
//! table. Properties: no panic, errors are `Err`, and every accepted estimate's JSON is
//! valid and self-consistent (`shared::check_doc`).
//!
//! Budget: each target's default is small for a local `cargo test`;
//! `LLM_MEM_FUZZ_CASES=N` scales them (N cases for a target whose default is 1000).
//! `.ci/run` runs them in release and prints each `fuzz:` line (cases, wall time).
//! Each target asserts, through `util::check_all`, that every case it was asked for
//! reached its end. Nothing is filtered as a known finding: the crashes the fuzzers
//! found are fixed and kept as `finding_*` tests; only plans too large for the time
//! budget skip the prediction (`too_big_for_the_budget`, counted as skipped).

#[path = "fuzz/shared.rs"]
pub mod shared;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use llm_mem::probe::{measurement, Plan};
use llm_mem::workload::import;
use llm_mem::workload::settings::{Format, Settings, SETTINGS};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::util::{check_all, proptest_config, root, Checked, TempDir};
use shared::{cases, estimate_checked, model_of, mutate, mutated, report, values_for, NASTY};

fn fail(m: String) -> TestCaseError {
    TestCaseError::fail(m)
}

/// Run `target` over `strategy` for `n` cases, counting, timing and reporting.
fn fuzz<S: Strategy>(
    target: &str,
    n: u32,
    strategy: S,
    test: impl Fn(S::Value, &AtomicUsize) -> Result<(), TestCaseError>,
) {
    let started = Instant::now();
    let skipped = AtomicUsize::new(0);
    let c = check_all(
        target,
        proptest_config(n, file!()),
        strategy,
        |v, checked: &Checked| {
            test(v, &skipped)?;
            checked.hit();
            Ok(())
        },
    );
    assert_eq!(c.new, n as usize, "{target}: cases run");
    report(
        target,
        c.new + c.replayed,
        skipped.load(Ordering::Relaxed),
        started,
    );
}

fn files(dir: &str, ext: &str) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no *.{ext} in {dir}");
    v
}

// ---------------------------------------------------------------- settings files

/// Seeds for `--config`: one per format, with LoRA, inference and layout settings.
const SETTINGS_SEEDS: &[(Format, &str)] = &[
    (Format::Toml, "model = \"llama-3.2-1b\"\nmethod = \"lora\"\nlora_rank = 32\nseq_len = 4096\nbatch = 2\ngrad_ckpt = \"full\"\ngpu = \"rtx4090\"\n"),
    (Format::Yaml, "model: qwen2.5-0.5b\ntask: infer\nprompt_len: 2048\ngen_len: 512\nconcurrency: 8\nkv_dtype: fp8\nprefill_chunk: 512\n"),
    (Format::Json, "{\"model\": \"llama-3.1-8b\", \"dp\": 8, \"zero\": 3, \"offload_optimizer\": true, \"master_weights\": true, \"seq_len\": 2048, \"gpu_memory\": \"80GiB\"}"),
    (Format::Toml, "model = \"gpt2\"\ntp = 2\npp = 2\ndp = 2\nsequence_parallel = true\nmicro_batches = 4\ncuda_context = \"256MiB\"\nallocator_fragmentation = 0.1\n"),
    (Format::Yaml, "model: qwen3-0.6b\nmethod: qlora\ndouble_quant: false\nlora_targets: [q_proj, v_proj]\nfsdp: full\ndp: 4\n"),
    (Format::Json, "{\"model\": \"pythia-70m\", \"runtime\": \"candle\", \"device\": \"cpu\", \"dtype\": \"fp32\", \"attn\": \"eager\", \"batch\": 4, \"seq_len\": 64}"),
];

/// One generated value in `fmt`'s syntax: bare if it is a number or a boolean.
fn literal(v: &str, fmt: Format) -> String {
    let bare = v.parse::<f64>().is_ok_and(f64::is_finite) || v == "true" || v == "false";
    if bare || (fmt != Format::Toml && matches!(v, "null" | "[]" | "{}")) {
        v.to_string()
    } else {
        format!("{:?}", v.trim_matches('"'))
    }
}

fn render_settings(pairs: &[(&str, &str)], fmt: Format) -> String {
    let kv = pairs.iter().map(|(k, v)| (*k, literal(v, fmt)));
    match fmt {
        Format::Toml => kv.map(|(k, v)| format!("{k} = {v}\n")).collect(),
        Format::Yaml => kv.map(|(k, v)| format!("{k}: {v}\n")).collect(),
        Format::Json => {
            let body: Vec<String> = kv.map(|(k, v)| format!("{k:?}: {v}")).collect();
            format!("{{{}}}", body.join(", "))
        }
    }
}

/// A settings file drawn from the settings table: keys with their likely values (or
/// nasty ones), in a random format.
fn generated_settings() -> impl Strategy<Value = (Format, String)> {
    let pair = (
        0..SETTINGS.len(),
        any::<bool>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(k, nasty, i)| {
            let key = SETTINGS[k].key;
            let pool = if nasty { NASTY } else { values_for(key) };
            (key, *i.get(pool))
        });
    let fmt = prop::sample::select(vec![Format::Toml, Format::Yaml, Format::Json]);
    (
        fmt,
        prop::collection::vec(pair, 1..8),
        0..values_for("model").len(),
    )
        .prop_map(|(f, mut pairs, m)| {
            pairs.insert(0, ("model", values_for("model")[m]));
            (f, render_settings(&pairs, f))
        })
}

fn settings_input() -> impl Strategy<Value = (Format, String)> {
    prop_oneof![
        mutated(SETTINGS_SEEDS.len(), 3).prop_map(|(i, ms)| {
            let (f, t) = SETTINGS_SEEDS[i];
            (f, mutate(t, &ms))
        }),
        generated_settings(),
    ]
}

/// Estimate accepted settings on their model and check the JSON.
fn estimate_case(s: &Settings, skipped: &AtomicUsize) -> Result<(), TestCaseError> {
    let _ = skipped;
    if let Some(spec) = model_of(s) {
        estimate_checked(&spec, s).map_err(fail)?;
    }
    Ok(())
}

#[test]
fn fuzz_settings_files() {
    fuzz(
        "settings files",
        cases(1500),
        settings_input(),
        |(fmt, text), skipped| match Settings::parse(&text, fmt, "fuzz.cfg") {
            Ok(s) => estimate_case(&s, skipped),
            Err(_) => Ok(()),
        },
    );
}

// ---------------------------------------------------------------- imports

const DEEPSPEED_SEEDS: &[&str] = &[
    "{\"train_micro_batch_size_per_gpu\": 2, \"gradient_accumulation_steps\": 4, \"bf16\": {\"enabled\": true}, \"zero_optimization\": {\"stage\": 3, \"offload_optimizer\": {\"device\": \"cpu\"}, \"offload_param\": {\"device\": \"cpu\"}, \"stage3_prefetch_bucket_size\": 50000000, \"stage3_max_live_parameters\": 1000000000, \"reduce_bucket_size\": 500000000}}",
    "{\"train_batch_size\": 64, \"fp16\": {\"enabled\": true}, \"zero_optimization\": {\"stage\": 2, \"allgather_bucket_size\": 200000000, \"contiguous_gradients\": true}, \"gradient_clipping\": 1.0}",
    "{\"zero_optimization\": {\"stage\": 1}, \"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 0.0001}}, \"activation_checkpointing\": {\"partition_activations\": true}}",
];

const TRAIN_ARGS_SEEDS: &[(Format, &str)] = &[
    (Format::Json, "{\"per_device_train_batch_size\": 4, \"gradient_accumulation_steps\": 8, \"bf16\": true, \"gradient_checkpointing\": true, \"optim\": \"adamw_torch_fused\", \"fsdp\": \"full_shard auto_wrap\", \"max_seq_length\": 2048}"),
    (Format::Yaml, "stage: sft\nfinetuning_type: lora\nlora_target: all\nlora_rank: 8\nquantization_bit: 4\ncutoff_len: 2048\nper_device_train_batch_size: 1\ngradient_accumulation_steps: 8\nbf16: true\n"),
    (Format::Yaml, "model_name_or_path: meta-llama/Llama-3.2-1B\nper_device_train_batch_size: 2\nfp16: true\noptim: paged_adamw_8bit\nlora_r: 16\nlora_alpha: 32\ndeepspeed: ds.json\n"),
];

fn import_input() -> impl Strategy<Value = (Option<Format>, String, usize)> {
    let model = 0..values_for("model").len();
    prop_oneof![
        (mutated(DEEPSPEED_SEEDS.len(), 3), model.clone()).prop_map(|((i, ms), m)| (
            None,
            mutate(DEEPSPEED_SEEDS[i], &ms),
            m
        )),
        (mutated(TRAIN_ARGS_SEEDS.len(), 3), model).prop_map(|((i, ms), m)| {
            let (f, t) = TRAIN_ARGS_SEEDS[i];
            (Some(f), mutate(t, &ms), m)
        }),
    ]
}

#[test]
fn fuzz_imports() {
    fuzz(
        "deepspeed / train-args imports",
        cases(1500),
        import_input(),
        |(fmt, text, m), skipped| {
            let got = match fmt {
                None => import::from_deepspeed(&text, "ds.json"),
                Some(f) => import::from_train_args(&text, f, "args.yaml"),
            };
            let Ok((imported, _warnings)) = got else {
                return Ok(());
            };
            let mut s = Settings::from_flags(&[("model", values_for("model")[m]), ("dp", "8")])
                .expect("valid flags");
            s = s.merged(imported);
            estimate_case(&s, skipped)
        },
    );
}

// ---------------------------------------------------------------- config.json

fn config_corpus() -> Vec<String> {
    let mut v: Vec<String> = llm_mem::hf::presets::names()
        .into_iter()
        .filter_map(llm_mem::hf::presets::raw)
        .map(str::to_string)
        .collect();
    for d in std::fs::read_dir(root().join("tests/data/configs")).unwrap() {
        let p = d.unwrap().path().join("config.json");
        v.push(std::fs::read_to_string(p).unwrap());
    }
    v
}

#[test]
fn fuzz_config_json() {
    let corpus = config_corpus();
    let flags = Settings::from_flags(&[("seq_len", "256"), ("batch", "1")]).unwrap();
    let infer = Settings::from_flags(&[("task", "infer"), ("prompt_len", "256")]).unwrap();
    fuzz(
        "config.json",
        cases(1500),
        (mutated(corpus.len(), 4), any::<bool>()),
        |((i, ms), inf), _| {
            let text = mutate(&corpus[i], &ms);
            let Ok(spec) = llm_mem::hf::config::parse_config(&text, "fuzz") else {
                return Ok(());
            };
            estimate_checked(&spec, if inf { &infer } else { &flags }).map_err(fail)?;
            Ok(())
        },
    );
}

// ---------------------------------------------------------------- probe plans

/// A time budget, not a finding: plans with a batch over 64, a sequence over 4096, a
/// size over 4096 or more than 64 layers skip `points` and the prediction (the candle
/// profile's symbolic step is linear in layers × ops; large valid plans would take the
/// fuzz step past its minute).
fn too_big_for_the_budget(p: &Plan) -> bool {
    let big = |x: u64, max: u64| x > max;
    p.shapes.batch.iter().any(|&b| big(b as u64, 64))
        || p.shapes.seq.iter().any(|&s| big(s as u64, 4096))
        || p.architectures
            .iter()
            .any(|a| a.layers.is_some_and(|l| l > 64))
        || p.architectures.iter().any(|a| {
            [
                a.layers,
                a.hidden,
                a.heads,
                a.kv_heads,
                a.head_dim,
                a.intermediate,
                a.vocab,
            ]
            .iter()
            .any(|x| x.is_some_and(|x| x > 4096))
        })
}

#[test]
fn fuzz_probe_plans() {
    let corpus = files("probes", "toml");
    let dir = root().join("probes");
    fuzz(
        "probe plans",
        cases(300),
        mutated(corpus.len(), 4),
        |(i, ms), skipped| {
            let text = mutate(&corpus[i], &ms);
            let Ok(plan) = Plan::parse(&text, "fuzz.toml") else {
                return Ok(());
            };
            if too_big_for_the_budget(&plan) {
                skipped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            if let Ok(points) = plan.points(&dir) {
                for p in points.iter().take(4) {
                    let _ = llm_mem::probe::predict(&plan, p);
                }
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------- measurements

#[test]
fn fuzz_measurement_csvs() {
    let corpus = files("results", "csv");
    let tmp = TempDir::new("fuzz-csv");
    let n = AtomicUsize::new(0);
    fuzz(
        "measurement CSVs",
        cases(500),
        mutated(corpus.len(), 4),
        |(i, ms), _| {
            let path = tmp.write(
                &format!("m{}.csv", n.fetch_add(1, Ordering::Relaxed)),
                &mutate(&corpus[i], &ms),
            );
            let path = Path::new(&path);
            if let Ok(rows) = measurement::read(path) {
                let fitted = llm_mem::calibration::fit(&rows, vec![path.display().to_string()]);
                let _ = llm_mem::calibration::compare(&rows, fitted.as_ref().ok());
            }
            std::fs::remove_file(path).map_err(|e| fail(e.to_string()))
        },
    );
}

// ---------------------------------------------------------------- validation tables

#[test]
fn fuzz_validation_tables() {
    use llm_mem::validate::{table, validate};
    let corpus = std::fs::read_to_string(root().join("tests/data/measured/public.csv")).unwrap();
    let configs = root().join("tests/data/configs");
    let resolve = |m: &str| {
        let p = configs.join(m).join("config.json");
        llm_mem::hf::hub::resolve_with(&p.display().to_string(), None)
    };
    fuzz(
        "validation tables",
        cases(200),
        mutated(1, 4),
        |(_, ms), _| {
            if let Ok(rows) = table::parse(&mutate(&corpus, &ms), "fuzz.csv") {
                // every mapped row estimated (or refused) without a panic; a few rows
                // per case keep the budget
                let v = validate(&rows[..rows.len().min(6)], &resolve);
                let s = &v.summary;
                if s.supported > s.rows || !(0.0..=1.0).contains(&s.within_10_pct) {
                    return Err(fail(format!("inconsistent summary {s:?}")));
                }
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------- calibration files

#[test]
fn fuzz_calibration_files() {
    use llm_mem::calibration::CalibrationFile;
    let corpus = files("calibration", "json");
    let spec = llm_mem::hf::presets::get("llama-3.2-1b")
        .unwrap()
        .unwrap()
        .with_layers(2)
        .unwrap();
    let s = Settings::from_flags(&[("runtime", "candle"), ("device", "cpu"), ("seq_len", "64")])
        .unwrap();
    let run = s.resolve(&spec).unwrap();
    fuzz(
        "calibration files",
        cases(1000),
        mutated(corpus.len(), 4),
        |(i, ms), _skipped| {
            let Ok(cal) = CalibrationFile::parse(&mutate(&corpus[i], &ms), "fuzz.json") else {
                return Ok(());
            };
            let Ok((corr, _note)) = cal.to_correction("llama", "candle") else {
                return Ok(());
            };
            let (w, ov) = (&run.workload, &run.overheads);
            if let Ok(e) = llm_mem::estimate::estimate_corrected(&spec, w, ov, &corr) {
                let doc = llm_mem::report::json::render(&e, w, ov, None);
                shared::check_doc(&doc).map_err(fail)?;
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------- exit codes

/// The binary itself on generated command lines (a smaller sample: one process per
/// case): exit 0, 1 or 2, never a signal or a panic (`util::run` fails on either), and
/// `--json` output that parses and is self-consistent when it exits 0 or 1.
#[test]
fn fuzz_exit_codes() {
    let flags: Vec<&str> = SETTINGS.iter().map(|i| i.flag).collect();
    let arg = (prop::sample::select(flags), prop::sample::select(NASTY));
    let line = (
        prop::sample::select(values_for("model")),
        prop::collection::vec(arg, 0..3),
    );
    fuzz(
        "exit codes (binary)",
        cases(30),
        line,
        |(model, args), _| {
            let mut argv = vec!["estimate", "--json", "--model", model];
            for (f, v) in &args {
                argv.extend([*f, v.trim_matches('"')]);
            }
            let r = crate::util::run(&argv);
            prop_assert!(matches!(r.code, 0..=2), "{argv:?}: exit {}", r.code);
            if r.code < 2 {
                shared::check_doc(&r.stdout).map_err(|m| fail(format!("{argv:?}: {m}")))?;
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------- findings

#[test]
fn finding_m5_gpu_memory_headroom_wraps() {
    let r = crate::util::run([
        "estimate",
        "--model",
        "gpt2",
        "--gpu-memory",
        "18446744073709551615",
        "--json",
    ]);
    assert_eq!(
        r.code, 2,
        "a raw integer beyond the unit form's bound is an error"
    );
}

#[test]
fn finding_m5_raw_byte_amounts_overflow() {
    for flag in ["--cuda-context", "--cublas-workspace"] {
        let r = crate::util::run(["estimate", "--model", "gpt2", flag, "18446744073709551615"]);
        assert_eq!(
            r.code, 2,
            "{flag}: a raw integer beyond the unit form's bound is an error"
        );
    }
}

#[test]
fn finding_layout_degree_overflow() {
    let r = crate::util::run(["estimate", "--model", "gpt2", "--cp", "9223372036854775808"]);
    assert_eq!(r.code, 2);
}

#[test]
fn finding_measurement_static_total_overflows() {
    let t = crate::util::read_data("../../results/cpu-default-cpu-2026-11-27.csv");
    let mut lines: Vec<String> = t.lines().map(str::to_string).collect();
    let cols: Vec<&str> = lines[0].split(',').collect();
    let i = cols.iter().position(|c| *c == "static_bytes").unwrap();
    let mut cells: Vec<String> = lines[1].split(',').map(str::to_string).collect();
    cells[i] = u64::MAX.to_string();
    lines[1] = cells.join(",");
    let dir = TempDir::new("finding-static");
    let csv = dir.write("m.csv", &lines[..2].join("\n"));
    let out = dir.path().display().to_string();
    let r = crate::util::run(["probe", "calibrate", "--from", &csv, "--out", &out]);
    assert_eq!(r.code, 2, "the row is refused");
}
