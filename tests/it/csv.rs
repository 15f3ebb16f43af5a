//! `--csv`: one fixed header for every run (finding M3), so single-GPU and distributed,
//! training and serving, full and LoRA rows concatenate into one table.

use crate::util::{run, Table};

/// Columns that must identify a run: every setting that changes memory.
const REQUIRED: &[&str] = &[
    "model",
    "task",
    "method",
    "lora_rank",
    "lora_alpha",
    "lora_targets",
    "double_quant",
    "dtype",
    "fp32_master",
    "batch",
    "seq_len",
    "prompt_len",
    "gen_len",
    "concurrency",
    "kv_dtype",
    "prefill_chunk",
    "dp",
    "tp",
    "pp",
    "cp",
    "ep",
    "vpp",
    "sequence_parallel",
    "zero",
    "fsdp",
    "offload_optimizer",
    "offload_params",
    "micro_batches",
    "rank_class",
    "ranks",
    "model_states_bytes",
    "worst",
    "device_bytes",
    "fits",
];

/// (arguments after `estimate --csv`, rows expected, column values expected on the
/// first row)
type Case = (
    &'static [&'static str],
    usize,
    &'static [(&'static str, &'static str)],
);

const CASES: &[Case] = &[
    (
        &[
            "--model",
            "qwen2.5-7b",
            "--task",
            "infer",
            "--prompt-len",
            "4096",
            "--concurrency",
            "8",
        ],
        1,
        &[
            ("task", "infer"),
            ("prompt_len", "4096"),
            ("concurrency", "8"),
            ("gen_len", "256"),
            ("kv_dtype", "bf16"),
            ("batch", ""),
            ("optimizer", ""),
            ("rank_class", "single gpu"),
        ],
    ),
    (
        &[
            "--model",
            "qwen2.5-7b",
            "--task",
            "infer",
            "--prompt-len",
            "4096",
            "--concurrency",
            "32",
            "--kv-dtype",
            "fp8",
            "--prefill-chunk",
            "512",
        ],
        1,
        &[
            ("concurrency", "32"),
            ("kv_dtype", "fp8"),
            ("prefill_chunk", "512"),
        ],
    ),
    (
        &[
            "--model",
            "llama-3.1-70b",
            "--tp",
            "4",
            "--pp",
            "4",
            "--dp",
            "2",
            "--sequence-parallel",
        ],
        4,
        &[
            ("tp", "4"),
            ("pp", "4"),
            ("dp", "2"),
            ("sequence_parallel", "true"),
            ("ranks", "8"),
            ("world", "32"),
            ("prompt_len", ""),
        ],
    ),
    (
        &[
            "--model",
            "llama-3.1-8b",
            "--method",
            "lora",
            "--lora-rank",
            "32",
            "--lora-targets",
            "q_proj,v_proj",
        ],
        1,
        &[
            ("method", "lora"),
            ("lora_rank", "32"),
            ("lora_alpha", "64"),
            ("lora_targets", "q_proj;v_proj"),
            ("double_quant", ""),
            ("dp", "1"),
        ],
    ),
    (
        &[
            "--model",
            "llama-3.1-8b",
            "--method",
            "qlora",
            "--no-double-quant",
        ],
        1,
        &[
            ("method", "qlora"),
            ("double_quant", "false"),
            ("lora_rank", "16"),
        ],
    ),
    (
        &[
            "--model",
            "llama-3.1-8b",
            "--dp",
            "8",
            "--zero",
            "3",
            "--offload-optimizer",
            "--master-weights",
            "--gpu",
            "h100-80gb",
        ],
        1,
        &[
            ("zero", "3"),
            ("offload_optimizer", "true"),
            ("fp32_master", "true"),
            ("dp", "8"),
            ("rank_class", "every rank"),
            ("worst", "true"),
            ("fits", "true"),
        ],
    ),
];

#[test]
fn m3_csv_has_one_fixed_header_for_every_run() {
    let mut header: Option<String> = None;
    let mut all = String::new();
    let (mut checked, mut rows_total) = (0, 0);
    for (args, rows, want) in CASES {
        let mut argv = vec!["estimate", "--csv"];
        argv.extend_from_slice(args);
        let r = run(&argv);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        let (first, body) = r.stdout.split_once('\n').expect("a header line");
        match &header {
            None => header = Some(first.to_string()),
            Some(h) => assert_eq!(h, first, "{args:?}: another header"),
        }
        let t = Table::parse(&r.stdout);
        for c in REQUIRED {
            assert!(t.column(c).is_some(), "no column {c} in {first}");
        }
        assert_eq!(t.rows.len(), *rows, "{args:?}");
        for (col, v) in *want {
            assert_eq!(t.col(&t.rows[0], col), *v, "{args:?}: column {col}");
        }
        all += body;
        rows_total += rows;
        checked += 1;
    }
    assert_eq!(checked, CASES.len());
    // the outputs concatenate under the one header, every row as wide as it
    let t = Table::parse(&format!("{}\n{all}", header.unwrap()));
    assert_eq!(t.rows.len(), rows_total);
    assert!(t.rows.iter().all(|r| r.len() == t.header.len()));
}

#[test]
fn m3_concurrency_changes_the_settings_columns() {
    let one = |c: &str| {
        let r = run([
            "estimate",
            "--csv",
            "--model",
            "qwen2.5-7b",
            "--task",
            "infer",
            "--concurrency",
            c,
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let t = Table::parse(&r.stdout);
        let settings_end = t.column("params_total").unwrap();
        t.rows[0]
            .iter()
            .take(settings_end)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_ne!(one("8"), one("32"));
}

#[test]
fn distributed_worst_row_is_the_json_peak() {
    // the tp 4 × pp 4 × dp 2 case of CASES
    let args: Vec<&str> = std::iter::once("estimate")
        .chain(CASES[2].0.iter().copied())
        .collect();
    let csv = run(args.iter().copied().chain(["--csv"]));
    let json = run(args.iter().copied().chain(["--json"]));
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let t = Table::parse(&csv.stdout);
    let worst: Vec<_> = t
        .rows
        .iter()
        .filter(|r| t.col(r, "worst") == "true")
        .collect();
    assert_eq!(worst.len(), 1);
    assert_eq!(
        t.col(worst[0], "device_bytes"),
        v["peak"]["device_bytes"].to_string()
    );
    let states: u64 = t.col(worst[0], "model_states_bytes").parse().unwrap();
    assert_eq!(states, v["model_states_bytes"].as_u64().unwrap());
}
