//! `llm-mem validate`: the published measured peaks of `tests/data/measured/public.csv`
//! through the command (every output format, the bars' exit code), the mapping of
//! columns onto settings on rows whose equivalent command is known, and bad tables.

use serde_json::Value;

use crate::util::{run, TempDir};

const TABLE: &str = "tests/data/measured/public.csv";

fn validate(extra: &[&str]) -> crate::util::Run {
    let mut a = vec!["validate", TABLE, "--configs", "tests/data/configs"];
    a.extend_from_slice(extra);
    run(&a)
}

#[test]
fn every_published_row_is_estimated_or_listed_with_its_reason() {
    let r = validate(&["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 104, "every row of the table");
    let s = &v["summary"];
    assert_eq!(s["rows"], 104);
    let estimated: Vec<&Value> = rows.iter().filter(|r| r["status"] == "estimated").collect();
    let unsupported = rows.iter().filter(|r| r["status"] == "unsupported").count();
    assert_eq!(estimated.len() + unsupported, 104);
    assert_eq!(s["supported"].as_u64().unwrap() as usize, estimated.len());
    // the shares are of all rows, recomputed here from the rows
    let within = estimated
        .iter()
        .filter(|r| r["abs_rel_err"].as_f64().unwrap() <= 0.10)
        .count();
    let share = s["within_10_pct"].as_f64().unwrap();
    assert!(
        (share - within as f64 / 104.0).abs() < 1e-12,
        "{share} vs {within}/104"
    );
    for r in rows.iter().filter(|r| r["status"] == "unsupported") {
        assert!(!r["reason"].as_str().unwrap().is_empty(), "{r}");
    }
    for r in &estimated {
        let (m, e) = (
            r["measured_gib"].as_f64().unwrap(),
            r["estimated_gib"].as_f64().unwrap(),
        );
        let rel = r["rel_err"].as_f64().unwrap();
        assert!((e / m - 1.0 - rel).abs() < 1e-9, "{r}");
        assert!(r["command"]
            .as_str()
            .unwrap()
            .starts_with("llm-mem estimate --model"));
    }
    // groups by source group, framework and metric each cover every row
    for by in ["source_group", "framework", "metric"] {
        let n: u64 = v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["by"] == by)
            .map(|g| g["summary"]["rows"].as_u64().unwrap())
            .sum();
        assert_eq!(n, 104, "groups by {by}");
    }
    println!(
        "validate: {} rows, {} estimated, {:.1}% within ±10%, median {:.1}%, worst under {:+.1}%",
        104,
        estimated.len(),
        share * 100.0,
        s["median_abs_rel_err"].as_f64().unwrap() * 100.0,
        s["max_under_rel_err"].as_f64().unwrap() * 100.0
    );
}

#[test]
fn rows_map_onto_the_settings_a_user_would_pass() {
    let r = validate(&["--json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let row = |id: &str| {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id}"))
            .clone()
    };
    // litgpt Falcon-7B LoRA q,v: the fused query_key_value linear, chunked loss
    let f = row("litgpt2024-001");
    assert_eq!(f["settings"]["lora_targets"], "query_key_value", "{f}");
    assert_eq!(f["settings"]["loss"], "chunked");
    assert_eq!(f["compared"], "allocated");
    // PEFT MetaMathQA: reserved compared with reserved; q,v on a llama are q_proj,v_proj
    let m = row("peft-metamath-002");
    assert_eq!(m["settings"]["lora_targets"], "q_proj,v_proj", "{m}");
    assert_eq!(m["compared"], "reserved");
    // bitsandbytes fp4 inference: NF4 serving without double quantization
    let b = row("hf-blog-003");
    assert!(
        b["command"]
            .as_str()
            .unwrap()
            .contains("--task infer --method qlora --no-double-quant --dtype fp16"),
        "{b}"
    );
    // other PEFT tuners: the tuner from the notes (DoRA), (IA)³ without a rank
    let d = row("peft-metamath-005");
    assert_eq!(d["settings"]["peft"], "dora", "{d}");
    assert!(
        d["command"].as_str().unwrap().contains("--peft dora"),
        "{d}"
    );
    let i = row("peft-metamath-007");
    assert_eq!(i["settings"]["peft"], "ia3", "{i}");
    assert!(i["settings"].get("lora_rank").is_none(), "{i}");
    // BOFT: peft's default block size, its permutation left on the host by the harness;
    // OSF: the run's own peft (its OSF rebuilt each weight) and adapter dtype
    let b = row("peft-metamath-015");
    assert_eq!(b["settings"]["peft"], "boft", "{b}");
    assert_eq!(b["settings"]["lora_rank"], "4", "{b}");
    assert_eq!(b["settings"]["boft_perm_on_host"], "true", "{b}");
    let o = row("peft-metamath-016");
    assert_eq!(o["settings"]["peft_version"], "0.19.2.dev0", "{o}");
    assert_eq!(o["settings"]["lora_dtype"], "model", "{o}");
    // LoRA-FA under the harness runs as LoRA (its disable_adapter() re-enables lora_A)
    assert_eq!(row("peft-metamath-006")["settings"]["peft"], "lora");
}

#[test]
fn markdown_svg_and_human_outputs_carry_every_row() {
    let d = TempDir::new("validate");
    let svg = d.join("v.svg");
    let r = validate(&["--markdown", "--svg", svg.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout
            .lines()
            .filter(|l| l.starts_with("| litgpt2024-"))
            .count(),
        32
    );
    assert!(r.stdout.contains("## By framework"));
    let j: Value = serde_json::from_str(&validate(&["--json"]).stdout).unwrap();
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<circle cx").count()
            - j["groups"]
                .as_array()
                .unwrap()
                .iter()
                .filter(
                    |g| g["by"] == "framework" && g["summary"]["supported"].as_u64().unwrap() > 0
                )
                .count(),
        j["summary"]["supported"].as_u64().unwrap() as usize,
        "one point per estimated row (plus one legend dot per framework)"
    );
    let h = validate(&[]);
    assert!(
        h.stdout.contains("all rows") && h.stdout.contains("not estimated"),
        "{h:?}"
    );
    let verbose = validate(&["--verbose"]);
    assert!(verbose
        .stdout
        .contains("    llm-mem estimate --model falcon-7b"));
}

#[test]
fn bars_not_cleared_exit_1_and_say_which() {
    let r = validate(&["--min-within-10", "0.99", "--max-under", "0.01"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("within ±10%, below the bar of 99.0%"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("under-predicted by"), "{}", r.stderr);
    let ok = validate(&["--min-within-10", "0", "--max-median-err", "1"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let bad = validate(&["--min-within-10", "80"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("a fraction in 0..=1"), "{}", bad.stderr);
}

#[test]
fn bad_tables_are_errors_naming_the_row_and_the_column() {
    let d = TempDir::new("validate-bad");
    let text = std::fs::read_to_string(crate::util::root().join(TABLE)).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[3] = lines[3].replacen(",allocated,", ",allocatd,", 1);
    let p = d.write("bad.csv", &(lines.join("\n") + "\n"));
    let r = run(["validate", p.as_str()]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("line 4") && r.stderr.contains("metric = \"allocatd\""),
        "{}",
        r.stderr
    );
    let r = run(["validate", "no/such.csv"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no/such.csv"), "{}", r.stderr);
    let r = run(["validate", TABLE, "--configs", "no/such/dir"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--configs no/such/dir: not a folder"),
        "{}",
        r.stderr
    );
}
