//! Settings, imports, model sources and the CLI as a new user meets them: one test per
//! finding of the newcomer report (`shared/reports/newcomer-findings.md`), named after
//! its id. Each runs the report's repro (or its library equivalent) and asserts what a
//! user would expect.

use serde_json::Value;

use llm_mem::arch::LoraTargets;
use llm_mem::workload::import::{from_deepspeed, from_train_args};
use llm_mem::workload::layout::FsdpMode;
use llm_mem::workload::settings::{Format, FsdpVersion, Settings};
use llm_mem::workload::{Attn, GradCkpt, MethodKind, Optimizer, Precision};

use crate::util::{assert_error, estimate, preset, run, Run, TempDir};

/// A successful run (rc 0 or 1) whose stderr has a warning mentioning every needle.
fn assert_warning(r: &Run, needles: &[&str]) {
    assert!(
        r.code == 0 || r.code == 1,
        "rc {}\nstderr:\n{}",
        r.code,
        r.stderr
    );
    let warned = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("llm-mem: warning:"))
        .any(|l| needles.iter().all(|n| l.contains(n)));
    assert!(warned, "no warning with {needles:?}:\n{}", r.stderr);
}

fn device_peak(r: &Run) -> u64 {
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    v["peak"]["device_bytes"]
        .as_u64()
        .expect("peak.device_bytes")
}

const LF_QLORA: &str = "stage: sft\nfinetuning_type: lora\nlora_target: all\nlora_rank: 8\n\
    quantization_bit: 4\ncutoff_len: 2048\nper_device_train_batch_size: 1\n\
    gradient_accumulation_steps: 8\nbf16: true\n";

// ---------------------------------------------------------------- H2: LLaMA-Factory defaults

#[test]
fn h2_llama_factory_checkpoints_by_default() {
    // reentrant: LLaMA-Factory's `use_reentrant_gc: true` default
    let (s, _) = from_train_args(LF_QLORA, Format::Yaml, "lf.yaml").unwrap();
    assert_eq!(s.grad_ckpt, Some(GradCkpt::FullReentrant));
    assert!(
        s.describe("grad_ckpt")
            .contains("use_reentrant_gc (absent: default true)"),
        "{}",
        s.describe("grad_ckpt")
    );
    assert_eq!(s.method, Some(MethodKind::Qlora));
    let nr = format!("{LF_QLORA}use_reentrant_gc: false\n");
    let (s, _) = from_train_args(&nr, Format::Yaml, "lf.yaml").unwrap();
    assert_eq!(s.grad_ckpt, Some(GradCkpt::Full));
    let bad = format!("{LF_QLORA}use_reentrant_gc: sometimes\n");
    let e = from_train_args(&bad, Format::Yaml, "lf.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("use_reentrant_gc"), "{e}");
    let off = format!("{LF_QLORA}disable_gradient_checkpointing: true\n");
    let (s, _) = from_train_args(&off, Format::Yaml, "lf.yaml").unwrap();
    assert_eq!(s.grad_ckpt, Some(GradCkpt::None));
    // the report's repro: fits a 4090 once checkpointing is on
    let d = TempDir::new("h2");
    let p = d.write("lf.yaml", LF_QLORA);
    let r = estimate(&[
        "--model",
        "meta-llama-3-8b-instruct",
        "--train-args",
        &p,
        "--gpu",
        "rtx4090",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("grad-ckpt full-reentrant"), "{r:?}");
}

#[test]
fn h2_llama_factory_defaults_fill_absent_keys() {
    // LLaMA-Factory v0.9.1: finetuning_type lora, lora_rank 8, lora_target all,
    // cutoff_len 2048, flash_attn auto (sdpa); Seq2SeqTrainingArguments: batch 8
    let (s, _) =
        from_train_args("stage: sft\ntemplate: llama3\n", Format::Yaml, "lf.yaml").unwrap();
    assert_eq!(s.method, Some(MethodKind::Lora));
    assert_eq!(s.lora_rank, Some(8));
    assert_eq!(s.lora_targets, Some(LoraTargets::AllLinear));
    assert_eq!(s.seq_len, Some(2048));
    assert_eq!(s.attn, Some(Attn::Sdpa));
    assert_eq!(s.batch, Some(8));
    assert_eq!(s.grad_ckpt, Some(GradCkpt::FullReentrant));
    assert!(
        s.describe("grad_ckpt").contains("lf.yaml"),
        "{}",
        s.describe("grad_ckpt")
    );
    // an explicit value wins over the default
    let (s, _) = from_train_args(
        "stage: sft\nfinetuning_type: full\nflash_attn: fa2\n",
        Format::Yaml,
        "lf.yaml",
    )
    .unwrap();
    assert_eq!((s.method, s.lora_rank), (None, None));
    assert_eq!(s.attn, Some(Attn::Flash));
}

#[test]
fn h2_training_arguments_defaults_fill_absent_keys() {
    // transformers TrainingArguments: per_device_train_batch_size 8, optim
    // adamw_torch_fused (torch >= 2.8), gradient_checkpointing False
    let (s, _) = from_train_args(r#"{"bf16": true}"#, Format::Json, "ta.json").unwrap();
    assert_eq!(s.batch, Some(8));
    assert_eq!(s.optimizer, Some(Optimizer::AdamW));
    assert_eq!(s.grad_ckpt, None);
    let (s, _) = from_train_args(
        r#"{"per_device_train_batch_size": 2, "optim": "adamw_torch_fused"}"#,
        Format::Json,
        "ta.json",
    )
    .unwrap();
    assert_eq!((s.batch, s.optimizer), (Some(2), Some(Optimizer::AdamW)));
}

// ---------------------------------------------------------------- H1: bf16 + FSDP

#[test]
fn h1_training_arguments_bf16_fsdp_is_fsdp_mixed_precision() {
    let ta = r#"{"per_device_train_batch_size":1,"bf16":true,"fsdp":"full_shard auto_wrap","gradient_checkpointing":true}"#;
    let (s, _) = from_train_args(ta, Format::Json, "ta.json").unwrap();
    assert_eq!(s.dtype, Some(Precision::Bf16));
    assert_eq!(s.master_weights, Some(true));
    assert_eq!(s.fsdp, Some(FsdpMode::Full));
    assert_eq!(
        s.fsdp_version,
        Some(FsdpVersion(1)),
        "accelerate's default is v1"
    );
    let v2 = r#"{"bf16":true,"fsdp":"full_shard","fsdp_config":{"fsdp_version":2}}"#;
    let (s, _) = from_train_args(v2, Format::Json, "ta.json").unwrap();
    assert_eq!(s.fsdp_version, Some(FsdpVersion(2)));
    // without FSDP, Trainer's bf16 stays autocast over fp32 weights
    let (s, _) = from_train_args(r#"{"bf16":true}"#, Format::Json, "ta.json").unwrap();
    assert_eq!(
        (s.dtype, s.master_weights),
        (Some(Precision::AmpBf16), None)
    );
    // the import equals the flags of the tool's own FSDP master-weights mode
    let d = TempDir::new("h1");
    let p = d.write("ta.json", ta);
    let common = [
        "--model",
        "llama-3.2-1b",
        "--dp",
        "8",
        "--seq-len",
        "1024",
        "--json",
    ];
    let mut imported = common.to_vec();
    imported.extend(["--train-args", &p]);
    let mut flags = common.to_vec();
    flags.extend([
        "--dtype",
        "bf16",
        "--master-weights",
        "--fsdp",
        "full",
        "--fsdp-version",
        "1",
        "--grad-ckpt",
        "full",
        "--batch",
        "1",
        "--optimizer",
        "adamw",
    ]);
    let (a, b) = (estimate(&imported), estimate(&flags));
    assert_eq!(device_peak(&a), device_peak(&b), "{a:?}\n{b:?}");
}

// ---------------------------------------------------------------- L7: mis-modelled imports

#[test]
fn l7_mis_modelled_imports_warn_in_plain_words() {
    let (s, w) = from_train_args(
        "finetuning_type: lora\nquantization_bit: 8\n",
        Format::Yaml,
        "q8.yaml",
    )
    .unwrap();
    assert_eq!(s.method, Some(MethodKind::Lora));
    assert!(
        w.iter()
            .any(|x| x.contains("8-bit base weights") && x.contains("not modelled")),
        "{w:?}"
    );
    let (_, w) = from_train_args("load_in_4bit: true\n", Format::Yaml, "l4.yaml").unwrap();
    assert!(!w.is_empty(), "load_in_4bit without LoRA must warn");
    for x in &w {
        assert!(
            !x.contains("Some(") && !x.contains("None"),
            "Rust Debug in {x:?}"
        );
    }
    let (_, w) = from_train_args("finetuning_type: oft\n", Format::Yaml, "o.yaml").unwrap();
    assert!(w.iter().any(|x| x.contains("oft")), "{w:?}");
    assert!(w.iter().all(|x| !x.contains("Some(")), "{w:?}");
}

#[test]
fn l7_bad_import_values_are_errors_naming_file_and_key() {
    for (text, needles) in [
        (
            "lora_rank: 8\nlora_alpha: big\n",
            &["a.yaml", "lora_alpha", "big"][..],
        ),
        ("fsdp: 5\n", &["a.yaml", "fsdp", "5", "full_shard"][..]),
        (
            "fsdp: sharded_everything\n",
            &["a.yaml", "fsdp", "sharded_everything"][..],
        ),
    ] {
        let e = from_train_args(text, Format::Yaml, "a.yaml")
            .unwrap_err()
            .to_string();
        for n in needles {
            assert!(e.contains(n), "{text:?}: {e} lacks {n}");
        }
    }
}

// ---------------------------------------------------------------- L17: DeepSpeed import

#[test]
fn l17_deepspeed_bare_bool_precision_is_rejected() {
    let e = from_deepspeed(r#"{"bf16": true}"#, "ds.json")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ds.json") && e.contains("bf16") && e.contains("enabled"),
        "{e}"
    );
    assert!(from_deepspeed(r#"{"fp16": {"enabled": false}}"#, "ds.json").is_ok());
}

#[test]
fn l17_deepspeed_train_batch_size_must_match() {
    let d = TempDir::new("l17");
    let ds = r#"{"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 4}"#;
    let p = d.write("ds.json", ds);
    let r = estimate(&["--model", "llama-3.2-1b", "--dp", "8", "--deepspeed", &p]);
    assert_error(
        &r,
        &[
            "train_batch_size",
            "train_micro_batch_size_per_gpu",
            "gradient_accumulation_steps",
            "--dp",
            "64",
            "128",
        ],
    );
    let ok = d.write(
        "ok.json",
        r#"{"train_batch_size": 128, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 4}"#,
    );
    let r = estimate(&["--model", "llama-3.2-1b", "--dp", "8", "--deepspeed", &ok]);
    assert_eq!(r.code, 0, "{r:?}");
    let zero = d.write("z.json", r#"{"train_micro_batch_size_per_gpu": 0}"#);
    let r = estimate(&["--model", "llama-3.2-1b", "--dp", "8", "--deepspeed", &zero]);
    assert_error(&r, &["z.json: train_micro_batch_size_per_gpu", "\"0\""]);
}

// ---------------------------------------------------------------- M10: presets by HF id

#[test]
fn m10_preset_hf_id_resolves_to_the_preset() {
    let r = estimate(&["--model", "meta-llama/Llama-3.1-8B", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("llama-3.1-8b"), "{r:?}");
    let by_name = estimate(&["--model", "llama-3.1-8b", "--json"]);
    assert_eq!(device_peak(&r), device_peak(&by_name));
    // a LLaMA-Factory file naming a preset's HF id needs no --model
    let d = TempDir::new("m10");
    let p = d.write(
        "lf.yaml",
        &format!("model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\n{LF_QLORA}"),
    );
    let r = estimate(&["--train-args", &p]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn m10_cache_wins_over_the_preset_hf_id() {
    let d = TempDir::new("m10cache");
    let cfg = std::fs::read_to_string(crate::util::root().join("src/hf/presets/llama-3.2-1b.json"))
        .unwrap_or_else(|_| {
            llm_mem::hf::presets::raw("llama-3.2-1b")
                .unwrap()
                .to_string()
        });
    d.write(
        "models--meta-llama--Llama-3.1-8B/snapshots/abc/config.json",
        &cfg,
    );
    let spec = llm_mem::hf::hub::resolve_with("meta-llama/Llama-3.1-8B", Some(d.path())).unwrap();
    assert_eq!(spec.layers(), preset("llama-3.2-1b").layers());
    let empty = TempDir::new("m10empty");
    let spec =
        llm_mem::hf::hub::resolve_with("meta-llama/Llama-3.1-8B", Some(empty.path())).unwrap();
    assert_eq!(spec.layers(), preset("llama-3.1-8b").layers());
}

// ---------------------------------------------------------------- M5: bounded byte amounts

#[test]
fn m5_integer_byte_amounts_are_bounded() {
    for flag in [
        "--cublas-workspace",
        "--cuda-context",
        "--gpu-memory",
        "--nccl-buffers",
    ] {
        let r = estimate(&["--model", "gpt2", flag, "18446744073709551615"]);
        assert_error(&r, &[flag, "18446744073709551615", "PiB"]);
    }
    let d = TempDir::new("m5");
    let p = d.write(
        "s.json",
        r#"{"model": "gpt2", "cuda_context": 18446744073709551615}"#,
    );
    assert_error(
        &estimate(&["--config", &p]),
        &["s.json: cuda_context", "PiB"],
    );
    // the unit form has the same bound, and a big valid amount still works
    assert_error(
        &estimate(&["--model", "gpt2", "--gpu-memory", "2048TiB"]),
        &["--gpu-memory"],
    );
    assert_eq!(
        estimate(&["--model", "gpt2", "--gpu-memory", "1024TiB"]).code,
        0
    );
}

// ---------------------------------------------------------------- M1/M2: layout at any size

#[test]
fn m1_zero_degree_is_rejected_without_zero() {
    for args in [
        &["--dp", "2", "--tp", "0"][..],
        &["--dp", "0"][..],
        &["--pp", "0", "--dp", "2"][..],
        &["--cp", "0", "--dp", "2"][..],
    ] {
        let mut all = vec!["--model", "llama-3.1-8b"];
        all.extend_from_slice(args);
        let flag = args
            .iter()
            .zip(args.iter().skip(1))
            .find(|(_, v)| **v == "0")
            .unwrap()
            .0;
        assert_error(&estimate(&all), &[flag, "\"0\"", ">= 1"]);
    }
}

#[test]
fn m2_layout_prerequisites_are_checked_on_one_gpu() {
    for (args, needles) in [
        (
            &["--offload-optimizer"][..],
            &["--offload-optimizer", "--zero"][..],
        ),
        (&["--ep", "2"][..], &["--ep 2", "mixture-of-experts"][..]),
        (&["--vpp", "2"][..], &["--vpp 2", "--pp > 1"][..]),
        (
            &["--sequence-parallel"][..],
            &["--sequence-parallel", "--tp > 1"][..],
        ),
    ] {
        let mut all = vec!["--model", "llama-3.1-8b"];
        all.extend_from_slice(args);
        assert_error(&estimate(&all), needles);
    }
}

// ---------------------------------------------------------------- L1/L2: value errors

#[test]
fn l1_settings_file_type_errors_name_the_key_and_range() {
    let d = TempDir::new("l1");
    for (text, needles) in [
        (
            "batch = 2.5\n",
            &["f.toml: batch", "2.5", "1..=1048576"][..],
        ),
        ("batch = -3\n", &["f.toml: batch", "-3", "1..=1048576"][..]),
        (
            "grad_ckpt = true\n",
            &["f.toml: grad_ckpt", "true", "selective"][..],
        ),
    ] {
        let p = d.write("f.toml", &format!("model = \"llama-3.1-8b\"\n{text}"));
        assert_error(&estimate(&["--config", &p]), needles);
    }
}

#[test]
fn l2_negative_and_huge_numbers_on_the_command_line() {
    for (args, needles) in [
        (
            &["--batch", "-1"][..],
            &["llm-mem: error:", "--batch", "\"-1\"", "1..="][..],
        ),
        (
            &["--allocator-fragmentation", "-0.1"][..],
            &[
                "llm-mem: error:",
                "--allocator-fragmentation",
                "-0.1",
                "between 0 and 1",
            ][..],
        ),
        (
            &["--gpu-memory", "-80GiB"][..],
            &["llm-mem: error:", "--gpu-memory", "-80GiB", "GiB"][..],
        ),
        (
            &["--seq-len", "99999999999999999999999"][..],
            &[
                "llm-mem: error:",
                "--seq-len",
                "99999999999999999999999",
                "1..=",
            ][..],
        ),
    ] {
        let mut all = vec!["--model", "gpt2"];
        all.extend_from_slice(args);
        assert_error(&estimate(&all), needles);
    }
    // clap's own errors carry the same prefix
    assert_error(
        &estimate(&["--model", "gpt2", "--bogus"]),
        &["llm-mem: error:", "--bogus"],
    );
}

// ---------------------------------------------------------------- L3: tiny capacities

#[test]
fn l3_tiny_capacity_from_a_bare_integer_hints_at_the_unit() {
    let r = estimate(&["--model", "llama-3.1-8b", "--gpu-memory", "80"]);
    assert_warning(&r, &["--gpu-memory", "80", "80GiB"]);
    let r = estimate(&["--model", "llama-3.1-8b", "--gpu-memory", "80GiB"]);
    assert!(!r.stderr.contains("did you mean"), "{r:?}");
}

// ---------------------------------------------------------------- L6/L9: labels, ignored flags

#[test]
fn l6_method_labels_that_do_not_apply_warn() {
    let r = estimate(&[
        "--model",
        "llama-3.1-8b",
        "--task",
        "infer",
        "--method",
        "lora",
    ]);
    assert_warning(&r, &["--method lora", "--task infer"]);
    let r = estimate(&[
        "--model",
        "tests/data/configs/mistral-7b-v0.1-gptq",
        "--method",
        "qlora",
    ]);
    if r.code != 2 {
        assert_warning(&r, &["qlora", "gptq"]);
    }
}

#[test]
fn l9_irrelevant_settings_warn() {
    for (args, needles) in [
        (
            &["--task", "infer", "--grad-ckpt", "full"][..],
            &["--grad-ckpt", "--task infer"][..],
        ),
        (
            &["--task", "infer", "--optimizer", "sgd"][..],
            &["--optimizer", "--task infer"][..],
        ),
        (
            &["--prompt-len", "100"][..],
            &["--prompt-len", "--task train"][..],
        ),
        (
            &["--micro-batches", "8"][..],
            &["--micro-batches", "--pp"][..],
        ),
        (
            &["--dp", "8", "--fsdp", "full", "--fsdp-shard-group", "4"][..],
            &["--fsdp-shard-group", "hybrid"][..],
        ),
    ] {
        let mut all = vec!["--model", "llama-3.2-1b"];
        all.extend_from_slice(args);
        assert_warning(&estimate(&all), needles);
    }
    let plain = estimate(&["--model", "llama-3.2-1b"]);
    assert!(!plain.stderr.contains("warning"), "{plain:?}");
}

#[test]
fn l9_plan_csv_is_an_error() {
    let r = run([
        "plan",
        "--model",
        "llama-3.2-1b",
        "--gpus",
        "2",
        "--gpu",
        "h100-80gb",
        "--csv",
    ]);
    assert_error(&r, &["--csv", "plan"]);
}

// ---------------------------------------------------------------- L4: Qwen-VL

#[test]
fn l4_qwen_vl_is_a_vision_language_model_without_contradiction() {
    let r = estimate(&["--model", "tests/data/configs/qwen-vl", "--task", "infer"]);
    assert_error(&r, &["Qwen-VL", "vision-language", "visual"]);
    let line = r.stderr.lines().find(|l| l.contains("error")).unwrap();
    let listed = line
        .split("supported model_type values:")
        .nth(1)
        .unwrap_or("");
    assert!(
        !listed.split(", ").any(|w| w.trim() == "qwen"),
        "lists qwen as supported, unqualified, while rejecting it: {line}"
    );
    assert!(listed.contains("qwen (text-only"), "{line}");
}

// ---------------------------------------------------------------- L15: HF cache notes

#[test]
fn l15_cache_fallbacks_are_noted() {
    let d = TempDir::new("l15");
    let cfg = llm_mem::hf::presets::raw("llama-3.2-1b").unwrap();
    d.write("models--o--n/refs/main", "deadbeef");
    d.write("models--o--n/snapshots/0000/config.json", cfg);
    let (_, notes) = llm_mem::hf::hub::resolve_noted("o/n", Some(d.path())).unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("deadbeef") && n.contains("0000")),
        "{notes:?}"
    );
    d.write("models--p--q/snapshots/0000/README.md", "no config");
    let e = llm_mem::hf::hub::resolve_with("p/q", Some(d.path()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("found p/q") && e.contains("no config.json"),
        "{e}"
    );
}

// ---------------------------------------------------------------- L16: gpus --json

#[test]
fn l16_gpus_json() {
    let r = run(["gpus", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let h100 = v
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "h100-80gb")
        .expect("h100-80gb listed");
    assert!(h100["memory_bytes"].as_u64().unwrap() > 79 << 30);
}

#[test]
fn l16_readme_lists_every_optimizer_and_the_build_times() {
    let readme = std::fs::read_to_string(crate::util::root().join("README.md")).unwrap();
    for o in [
        "adamw-foreach",
        "adamw-8bit",
        "paged-adamw-8bit",
        "sgd-momentum",
        "adafactor",
        "lion",
    ] {
        assert!(readme.contains(&format!("`{o}`")), "README lacks `{o}`");
    }
    for s in ["gpus --json", "cargo test --features cuda", "4.5 min"] {
        assert!(readme.contains(s), "README lacks {s:?}");
    }
}

// ---------------------------------------------------------------- M13: rust-version

/// The highest `rust-version` among the locked dependencies is zip 9.8.2's 1.89
/// (found from `~/.cargo/registry/src/*/<crate>-<ver>/Cargo.toml` for every package of
/// Cargo.lock). Cargo.toml's own `rust-version` stays 1.85 until the `%`-divisibility
/// checks that clippy's `manual_is_multiple_of` flags under an MSRV >= 1.87 are
/// rewritten (files outside this change).
#[test]
fn m13_readme_states_the_lockfiles_minimum_rust() {
    let lock = std::fs::read_to_string(crate::util::root().join("Cargo.lock")).unwrap();
    assert!(
        lock.contains("name = \"zip\"\nversion = \"9.8.2\""),
        "the lockfile changed: recompute the minimum Rust version"
    );
    let readme = std::fs::read_to_string(crate::util::root().join("README.md")).unwrap();
    assert!(readme.contains("1.89 or newer"), "README states 1.89");
    assert!(!readme.contains("1.85"), "README still says 1.85");
}

// a Settings built from flags stays what the flags say (guards the helper above)
#[test]
fn settings_from_flags_round_trip() {
    let s = Settings::from_flags(&[("batch", "3")]).unwrap();
    assert_eq!(s.batch, Some(3));
}

/// Overheads may be zero (a fake-tensor meter has no cuBLAS workspace, a CPU run no
/// CUDA context): `0`, `0B` and `none` remove exactly that term; a negative or
/// malformed amount is an error naming the flag.
#[test]
fn overheads_accept_zero_and_refuse_negative_amounts() {
    let base = ["--model", "gpt2", "--seq-len", "512", "--json"];
    let with = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        let r = estimate(&a);
        assert_eq!(r.code, 0, "{r:?}");
        device_peak(&r)
    };
    let default = with(&[]);
    for zero in ["0", "0B", "none"] {
        // a training step holds two workspaces (forward's and the autograd engine's
        // thread, estimate::cublas_workspaces)
        assert_eq!(
            default - with(&["--cublas-workspace", zero]),
            2 * (32 << 20),
            "--cublas-workspace {zero}"
        );
    }
    assert_eq!(default - with(&["--cuda-context", "0"]), 512 << 20);
    for bad in ["-3", "lots", "0.5.1GiB"] {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(&["--cublas-workspace", bad]);
        assert_error(&estimate(&a), &["--cublas-workspace", bad, "0 or none"]);
    }
}

/// HF TrainingArguments' `gradient_checkpointing_kwargs` reach
/// `gradient_checkpointing_enable` (transformers modeling_utils.py): `use_reentrant: true`
/// is torch's reentrant checkpoint, absent or false the non-reentrant one (transformers
/// 5's default); a value that is not a mapping is an error naming the key.
#[test]
fn trainer_gradient_checkpointing_kwargs_pick_the_checkpoint_implementation() {
    let ta = |kw: &str| {
        from_train_args(
            &format!("{{\"gradient_checkpointing\": true{kw}}}"),
            Format::Json,
            "ta.json",
        )
    };
    assert_eq!(ta("").unwrap().0.grad_ckpt, Some(GradCkpt::Full));
    let (s, w) = ta(", \"gradient_checkpointing_kwargs\": {\"use_reentrant\": true}").unwrap();
    assert_eq!(s.grad_ckpt, Some(GradCkpt::FullReentrant));
    assert!(
        s.describe("grad_ckpt").contains("use_reentrant"),
        "{}",
        s.describe("grad_ckpt")
    );
    assert!(
        !w.iter()
            .any(|x| x.contains("gradient_checkpointing_kwargs")),
        "{w:?}"
    );
    let (s, _) = ta(", \"gradient_checkpointing_kwargs\": {\"use_reentrant\": false}").unwrap();
    assert_eq!(s.grad_ckpt, Some(GradCkpt::Full));
    let e = ta(", \"gradient_checkpointing_kwargs\": 3")
        .unwrap_err()
        .to_string();
    assert!(e.contains("gradient_checkpointing_kwargs = 3"), "{e}");
}
