//! The `llm-mem` binary end to end: exit codes (0 fits, 1 does not fit, 2 error),
//! error messages that name the bad value and what is accepted, the `--json` schema v1
//! fields, `--csv`, `--config` files in three formats, `models`, and insta snapshots of
//! the human table for a few representative runs. No run may panic.

use serde_json::Value;

use crate::util::{assert_error, estimate, read_data, run, Run, Table, TempDir};

fn json_of(r: &Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

// ---------------------------------------------------------------- exit codes

#[test]
fn fits_exits_0() {
    let r = estimate(&[
        "--model",
        "llama-3.1-8b",
        "--seq-len",
        "4096",
        "--gpu",
        "h200",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("fits in h200"), "{}", r.stdout);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
}

#[test]
fn does_not_fit_exits_1() {
    let r = estimate(&["--model", "llama-3.1-70b", "--gpu", "rtx4090"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("does NOT fit in rtx4090"), "{}", r.stdout);
}

#[test]
fn gpu_memory_amount_decides_the_fit() {
    let small = estimate(&["--model", "gpt2", "--gpu-memory", "1GiB"]);
    assert_eq!(small.code, 1, "{}", small.stdout);
    let big = estimate(&["--model", "gpt2", "--gpu-memory", "80GiB"]);
    assert_eq!(big.code, 0, "{}", big.stdout);
}

#[test]
fn without_a_gpu_exits_0_and_gives_no_verdict() {
    let r = estimate(&["--model", "llama-3.1-70b"]);
    assert_eq!(r.code, 0);
    assert!(!r.stdout.contains("fit"), "{}", r.stdout);
}

// ---------------------------------------------------------------- errors

#[test]
fn unknown_dtype() {
    let r = estimate(&["--model", "llama-3.1-8b", "--dtype", "bf17"]);
    assert_error(&r, &["--dtype", "bf17", "bf16", "amp-bf16", "fp32"]);
}

#[test]
fn zero_batch() {
    let r = estimate(&["--model", "llama-3.1-8b", "--batch", "0"]);
    assert_error(&r, &["--batch", "\"0\"", "1..="]);
}

#[test]
fn negative_seq_len() {
    let r = estimate(&["--model", "llama-3.1-8b", "--seq-len", "-5"]);
    assert_error(&r, &["-5"]);
    let r = estimate(&["--model", "llama-3.1-8b", "--seq-len=-5"]);
    assert_error(&r, &["-5", "--seq-len"]);
}

#[test]
fn unknown_model_name() {
    let r = estimate(&["--model", "llama-9000"]);
    assert_error(&r, &["llama-9000", "not found", "llm-mem models"]);
}

#[test]
fn config_json_with_a_wrong_type() {
    let d = TempDir::new("badtype");
    let p = d.write(
        "config.json",
        r#"{"model_type": "llama", "hidden_size": "big"}"#,
    );
    let r = estimate(&["--model", &p]);
    assert_error(&r, &["hidden_size", "big"]);
}

#[test]
fn truncated_config_json() {
    let d = TempDir::new("truncated");
    let p = d.write(
        "config.json",
        r#"{"model_type": "llama", "hidden_size": 4096, "num_hidden"#,
    );
    let r = estimate(&["--model", &p]);
    assert_error(&r, &[&p, "invalid JSON", "line 1"]);
}

#[test]
fn unknown_model_type() {
    let d = TempDir::new("unknowntype");
    let p = d.write(
        "config.json",
        r#"{"model_type": "transformer-xyz", "hidden_size": 64}"#,
    );
    let r = estimate(&["--model", &p]);
    assert_error(&r, &["transformer-xyz", "not supported", "llama", "gpt2"]);
}

#[test]
fn mixture_of_experts_beyond_the_modelled_ones_is_rejected() {
    let d = TempDir::new("moe");
    // OLMoE (`OlmoeForCausalLM`) is not modelled: refused, never estimated as dense
    let p = d.write(
        "olmoe/config.json",
        r#"{"model_type":"olmoe","hidden_size":2048,"num_hidden_layers":16,
            "num_attention_heads":16,"intermediate_size":1024,"vocab_size":50304,
            "num_experts":64,"num_experts_per_tok":8}"#,
    );
    let folder = d.path().join("olmoe").display().to_string();
    for m in [&p, &folder] {
        let r = estimate(&["--model", m]);
        assert_error(&r, &["olmoe", "mixture-of-experts", "later version"]);
    }
    // LLaVA-1.5 is estimated (its activations against the trace probe in
    // tests/it/trace.rs); what does not fit it is refused by name: LoRA on the tower
    // under full fine-tuning, more image tokens than the sequence holds, --vision on a
    // text model, a parallel layout
    let lv = d.write(
        "llava/config.json",
        &read_data("configs/llava-1.5-7b/config.json"),
    );
    let r = estimate(&["--model", &lv, "--images", "2", "--seq-len", "2048"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("2 image(s) per sequence of 576 tokens")
            && r.stdout
                .contains("the vision tower and the projector train (--vision full)"),
        "{}",
        r.stdout
    );
    let r = estimate(&["--model", &lv, "--vision", "lora"]);
    assert_error(&r, &["--vision", "lora with --method full", "frozen"]);
    let r = estimate(&["--model", &lv, "--images", "4", "--seq-len", "2048"]);
    assert_error(&r, &["--seq-len", "2304 image tokens", "576 per image"]);
    let r = estimate(&["--model", "gpt2", "--vision", "full"]);
    assert_error(&r, &["--vision", "no vision tower"]);
    let r = estimate(&["--model", &lv, "--dp", "2", "--tp", "2"]);
    assert_error(
        &r,
        &[
            "parallel layout",
            "vision-language model",
            "data parallelism",
        ],
    );
    let r = run(["plan", "--model", &lv, "--gpus", "2", "--gpu", "h100-80gb"]);
    assert_error(
        &r,
        &["plan over 2 GPUs", "vision-language model", "no plan"],
    );
    // gpt-oss is estimated with eager attention (it has no SDPA path); --attn sdpa is
    // refused by name
    // a test-data config, written to a folder and estimated at s512: its path and the
    // human output
    let estimated = |dir: &str, config: &str| {
        let p = d.write(
            &format!("{dir}/config.json"),
            &read_data(&format!("configs/{config}/config.json")),
        );
        let r = estimate(&["--model", &p, "--seq-len", "512"]);
        assert_eq!(r.code, 0, "{r:?}");
        (p, r.stdout)
    };
    let (go, out) = estimated("gpt-oss", "gpt-oss-20b");
    assert!(out.contains("attn eager"), "{out}");
    let r = estimate(&["--model", &go, "--attn", "sdpa"]);
    assert_error(&r, &["--attn", "sinks"]);
    // DeepSeek-V2-Lite (latent attention, a dense first layer, then MoE) is estimated
    let (ds, out) = estimated("deepseek", "deepseek-v2-lite");
    assert!(out.contains("deepseek_v2"), "{out}");
    // prefix tuning has no per-head cache to extend under latent attention
    let r = estimate(&[
        "--model",
        &ds,
        "--method",
        "lora",
        "--peft",
        "prefix-tuning",
        "--virtual-tokens",
        "20",
    ]);
    assert_error(&r, &["prefix_tuning", "latent"]);
    // Mixtral is estimated; LoRA on its router and fused experts is refused, named
    let (m, out) = estimated("mixtral", "mixtral-8x7b-v0.1");
    assert!(out.contains("mixtral"), "{out}");
    // LoRA all-linear reaches the router and the fused experts (peft's ParamWrapper)
    let r = estimate(&["--model", &m, "--method", "lora", "--seq-len", "512"]);
    assert_eq!(r.code, 0, "{r:?}");
    // which takes neither LoRA variants nor dropout
    let r = estimate(&["--model", &m, "--method", "lora", "--peft", "dora"]);
    assert_error(&r, &["dora", "ParamWrapper"]);
    let r = estimate(&["--model", &m, "--method", "lora", "--lora-dropout", "0.05"]);
    assert_error(&r, &["--lora-dropout", "ParamWrapper"]);
}

#[test]
fn unknown_lora_target() {
    let r = estimate(&[
        "--model",
        "llama-3.1-8b",
        "--method",
        "lora",
        "--lora-targets",
        "foo_proj",
    ]);
    assert_error(&r, &["foo_proj", "q_proj", "all-linear"]);
}

#[test]
fn master_weights_with_fp32() {
    let r = estimate(&[
        "--model",
        "llama-3.1-8b",
        "--master-weights",
        "--dtype",
        "fp32",
    ]);
    assert_error(&r, &["--master-weights", "fp32", "bf16 or fp16"]);
}

#[test]
fn unknown_gpu() {
    let r = estimate(&["--model", "llama-3.1-8b", "--gpu", "tpu"]);
    assert_error(&r, &["--gpu", "tpu", "h100-80gb", "h200"]);
}

#[test]
fn config_file_with_an_unknown_key() {
    let d = TempDir::new("unknownkey");
    let p = d.write("run.toml", "model = \"llama-3.1-8b\"\nbatchsize = 4\n");
    let r = estimate(&["--config", &p]);
    assert_error(&r, &[&p, "batchsize", "seq_len"]);
}

#[test]
fn other_bad_values_name_the_flag() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--optimizer", "adamax"],
            &["--optimizer", "adamax", "adamw"],
        ),
        (&["--attn", "xformers"], &["--attn", "xformers", "sdpa"]),
        (
            &["--grad-ckpt", "some"],
            &["--grad-ckpt", "some", "selective"],
        ),
        (&["--task", "pretrain"], &["--task", "pretrain", "infer"]),
        (&["--method", "dora"], &["--method", "dora", "qlora"]),
        (&["--gpu-memory", "80 parsecs"], &["80 parsecs", "GiB"]),
        (
            &["--allocator-fragmentation", "1.5"],
            &["--allocator-fragmentation", "1.5"],
        ),
        (&["--dtype", "fp8"], &["--dtype", "fp8", "--task infer"]),
        (&["--layers", "0"], &["--layers", "0"]),
        (&["--kv-dtype", "int3"], &["--kv-dtype", "int3"]),
    ];
    for (args, needles) in cases {
        let mut all = vec!["--model", "llama-3.1-8b"];
        all.extend_from_slice(args);
        assert_error(&estimate(&all), needles);
    }
}

#[test]
fn config_file_of_an_unknown_format_or_missing() {
    let d = TempDir::new("ini");
    let p = d.write("settings.ini", "batch = 4\n");
    assert_error(
        &estimate(&["--config", &p]),
        &["settings.ini", ".toml", ".yaml"],
    );
    let missing = d.path().join("absent.toml").display().to_string();
    assert_error(&estimate(&["--config", &missing]), &["absent.toml"]);
}

#[test]
fn missing_model() {
    assert_error(&estimate(&["--batch", "2"]), &["--model"]);
}

#[test]
fn unknown_subcommand_and_flag() {
    assert_error(&run(["plan"]), &["plan"]);
    assert_error(&estimate(&["--model", "gpt2", "--bogus"]), &["--bogus"]);
}

#[test]
fn help_and_version_exit_0() {
    let r = run(["--help"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("estimate"));
    let r = run(["estimate", "--help"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("--seq-len"));
    let r = run(["--version"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains(env!("CARGO_PKG_VERSION")));
}

// ---------------------------------------------------------------- listings

#[test]
fn models_lists_presets() {
    let r = run(["models"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("llama-3.1-8b"), "{}", r.stdout);
    assert!(r.stdout.contains("meta-llama/Llama-3.1-8B"), "{}", r.stdout);
    let r = run(["models", "--json"]);
    assert_eq!(r.code, 0);
    let v = json_of(&r);
    let l = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "llama-3.1-8b")
        .expect("llama-3.1-8b listed");
    assert_eq!(l["params_total"], 8_030_261_248u64);
}

#[test]
fn gpus_lists_known_gpus() {
    let r = run(["gpus"]);
    assert_eq!(r.code, 0);
    for g in ["h100-80gb", "h200", "rtx4090", "a100-80gb"] {
        assert!(r.stdout.contains(g), "{g} missing:\n{}", r.stdout);
    }
}

// ---------------------------------------------------------------- formats

#[test]
fn json_has_the_schema_v1_fields() {
    let r = estimate(&[
        "--model",
        "llama-3.1-8b",
        "--seq-len",
        "4096",
        "--gpu",
        "h200",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = json_of(&r);
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["tool"]["name"], "llm-mem");
    assert_eq!(v["model"]["params_total"], 8_030_261_248u64);
    assert_eq!(v["model"]["params_trainable"], 8_030_261_248u64);
    let peak = &v["peak"];
    for k in ["allocated_bytes", "reserved_bytes", "device_bytes"] {
        assert!(peak[k].is_u64(), "peak.{k}: {}", peak[k]);
    }
    assert!(peak["phase"].is_string());
    assert!(peak["event"].is_string());
    let c = &v["components_at_peak"];
    let mut sum = 0;
    for k in [
        "weights",
        "gradients",
        "optimizer_state",
        "master_weights",
        "activations",
        "logits_and_loss",
        "kv_cache",
        "temporaries",
        "overhead",
    ] {
        sum += c[k]
            .as_u64()
            .unwrap_or_else(|| panic!("components_at_peak.{k}"));
    }
    assert_eq!(c.as_object().unwrap().len(), 9);
    assert_eq!(sum, peak["device_bytes"].as_u64().unwrap());
    let a = &v["activations"];
    for k in ["per_layer_bytes", "non_layer_bytes", "total_bytes"] {
        assert!(a[k].as_u64().unwrap() > 0, "activations.{k}");
    }
    let t = v["timeline"].as_array().unwrap();
    assert!(t.len() > 5);
    for e in t {
        assert!(e["phase"].is_string() && e["event"].is_string());
        assert!(e["allocated_bytes"].is_u64() && e["device_bytes"].is_u64());
    }
    let max = t
        .iter()
        .map(|e| e["device_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(max, peak["device_bytes"].as_u64().unwrap());
    assert_eq!(v["fit"]["fits"], true);
    assert_eq!(v["fit"]["gpu"], "h200");
    assert!(v["warnings"].is_array());
    assert!(v["workload"].is_object() && v["overheads"].is_object());
}

#[test]
fn json_fit_is_null_without_a_gpu() {
    let v = json_of(&estimate(&["--model", "gpt2", "--json"]));
    assert!(v["fit"].is_null());
}

#[test]
fn csv_has_a_header_and_one_row() {
    let r = estimate(&["--model", "llama-3.1-8b", "--gpu", "h200", "--csv"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let t = Table::parse(&r.stdout);
    assert_eq!(&t.header[0], "model");
    assert_eq!(t.rows.len(), 1);
    let col = |n: &str| t.col(&t.rows[0], n);
    assert_eq!(col("model"), "llama-3.1-8b");
    assert_eq!(col("fits"), "true");
    // same peak as --json
    let v = json_of(&estimate(&[
        "--model",
        "llama-3.1-8b",
        "--gpu",
        "h200",
        "--json",
    ]));
    assert_eq!(
        col("device_bytes"),
        v["peak"]["device_bytes"].to_string().as_str()
    );
}

#[test]
fn json_and_csv_conflict() {
    assert_error(
        &estimate(&["--model", "gpt2", "--json", "--csv"]),
        &["--csv"],
    );
}

#[test]
fn config_files_equal_flags() {
    let flags = estimate(&[
        "--model",
        "llama-3.1-8b",
        "--method",
        "lora",
        "--lora-rank",
        "32",
        "--batch",
        "2",
        "--seq-len",
        "2048",
        "--grad-ckpt",
        "full",
        "--gpu-memory",
        "40GiB",
        "--json",
    ]);
    assert!(flags.code == 0 || flags.code == 1, "{}", flags.stderr);
    let d = TempDir::new("configs");
    let toml = d.write(
        "run.toml",
        "model = \"llama-3.1-8b\"\nmethod = \"lora\"\nlora-rank = 32\nbatch = 2\n\
         seq_len = 2048\ngrad-ckpt = \"full\"\ngpu_memory = \"40GiB\"\n",
    );
    let yaml = d.write(
        "run.yaml",
        "model: llama-3.1-8b\nmethod: lora\nlora_rank: 32\nbatch: 2\nseq-len: 2048\n\
         grad_ckpt: full\ngpu-memory: 40GiB\n",
    );
    let json = d.write(
        "run.json",
        r#"{"model": "llama-3.1-8b", "method": "lora", "lora-rank": 32, "batch": 2,
            "seq_len": 2048, "grad-ckpt": "full", "gpu_memory": "40GiB"}"#,
    );
    for p in [&toml, &yaml, &json] {
        let r = estimate(&["--config", p, "--json"]);
        assert_eq!(r.code, flags.code, "{p}: {}", r.stderr);
        assert_eq!(json_of(&r), json_of(&flags), "{p}");
    }
    // flags win over the file
    let r = estimate(&["--config", &toml, "--batch", "4", "--json"]);
    assert_eq!(json_of(&r)["workload"]["batch"], 4);
}

// ---------------------------------------------------------------- snapshots

fn snapshot_run(args: &[&str]) -> String {
    let r = estimate(args);
    assert!(r.code == 0 || r.code == 1, "{args:?}: {}", r.stderr);
    format!(
        "$ llm-mem estimate {}\n(exit {})\n{}",
        args.join(" "),
        r.code,
        r.stdout
    )
}

#[test]
fn snapshot_full_bf16_llama_3_1_8b() {
    insta::assert_snapshot!(snapshot_run(&[
        "--model",
        "llama-3.1-8b",
        "--seq-len",
        "4096",
        "--gpu",
        "h100-80gb",
    ]));
}

#[test]
fn snapshot_qlora_llama_3_1_70b() {
    insta::assert_snapshot!(snapshot_run(&[
        "--model",
        "llama-3.1-70b",
        "--method",
        "qlora",
        "--seq-len",
        "2048",
        "--grad-ckpt",
        "full",
        "--optimizer",
        "paged-adamw-8bit",
        "--gpu",
        "a100-80gb",
    ]));
}

#[test]
fn snapshot_infer_qwen2_5_7b() {
    insta::assert_snapshot!(snapshot_run(&[
        "--model",
        "qwen2.5-7b",
        "--task",
        "infer",
        "--prompt-len",
        "4096",
        "--gen-len",
        "512",
        "--concurrency",
        "8",
        "--gpu",
        "l40s",
    ]));
}

#[test]
fn snapshot_infer_mixtral_8x7b() {
    insta::assert_snapshot!(snapshot_run(&[
        "--model",
        "mixtral-8x7b-v0.1",
        "--task",
        "infer",
        "--prompt-len",
        "4096",
        "--gen-len",
        "512",
        "--concurrency",
        "8",
        "--gpu",
        "h200",
    ]));
}

#[test]
fn snapshot_infer_deepseek_v2_lite() {
    insta::assert_snapshot!(snapshot_run(&[
        "--model",
        "deepseek-v2-lite",
        "--task",
        "infer",
        "--prompt-len",
        "8192",
        "--gen-len",
        "1024",
        "--concurrency",
        "16",
        "--gpu",
        "h100-80gb",
    ]));
}

#[test]
fn snapshot_lora_qwen3_30b_a3b() {
    insta::assert_snapshot!(snapshot_run(&[
        "--model",
        "qwen3-30b-a3b",
        "--method",
        "lora",
        "--seq-len",
        "2048",
        "--grad-ckpt",
        "full",
        "--gpu",
        "h100-80gb",
    ]));
}

#[test]
fn snapshot_gpt2_amp_eager_grad_ckpt() {
    insta::assert_snapshot!(snapshot_run(&[
        "--model",
        "gpt2",
        "--dtype",
        "amp-bf16",
        "--attn",
        "eager",
        "--grad-ckpt",
        "full",
        "--method",
        "full",
        "--batch",
        "8",
        "--seq-len",
        "1024",
        "--gpu",
        "rtx4090",
    ]));
}

/// README: a VLM served with HF generate, four images in each 3072-token prompt.
#[test]
fn snapshot_infer_llava_1_5_7b() {
    let args = "--model llava-1.5-7b --task infer --images 4 --prompt-len 3072 --gen-len 512 --concurrency 8 --gpu l40s";
    insta::assert_snapshot!(snapshot_run(&args.split(' ').collect::<Vec<_>>()));
}

/// README: LLaVA-1.5 LoRA (all-linear reaches the tower) with checkpointing.
#[test]
fn snapshot_lora_llava_1_5_7b() {
    let args = "--model llava-1.5-7b --method lora --lora-targets all-linear --images 2 --seq-len 2048 --batch 4 --grad-ckpt full --gpu rtx4090";
    insta::assert_snapshot!(snapshot_run(&args.split(' ').collect::<Vec<_>>()));
}
