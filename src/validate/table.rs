//! The measurement table `llm-mem validate` reads: published (or your own) measured
//! peaks, one row per run, in the columns of `tests/data/measured/public.csv` (its
//! README documents each column and token). Every cell is checked against the tokens
//! the column accepts; a bad cell is an error naming the row, the column, the value and
//! what is accepted — never a silent default.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The columns a table must have (others are ignored).
pub const COLUMNS: &[&str] = &[
    "id",
    "source_group",
    "model",
    "task",
    "method",
    "lora_rank",
    "lora_targets",
    "quant",
    "weight_dtype",
    "optimizer",
    "micro_batch",
    "seq_len",
    "gen_tokens",
    "grad_ckpt",
    "attn_impl",
    "loss_impl",
    "framework",
    "parallelism",
    "n_gpus",
    "tp",
    "pp",
    "cp",
    "gpu",
    "metric",
    "measured_gib",
];

/// Accepted tokens per enumerated column (the README's lists).
const TOKENS: &[(&str, &[&str])] = &[
    ("task", &["train", "infer"]),
    ("method", &["full", "lora", "qlora", "other-peft", "none"]),
    (
        "quant",
        &["none", "nf4", "nf4-dq", "int8", "gptq-int4", "fp4"],
    ),
    (
        "weight_dtype",
        &["bf16", "fp16", "fp32", "mixed-bf16", "mixed-fp16"],
    ),
    (
        "optimizer",
        &[
            "adamw",
            "adamw-8bit",
            "paged-adamw",
            "paged-adamw-8bit",
            "sgd",
            "adafactor",
            "none",
            "unknown",
        ],
    ),
    ("grad_ckpt", &["none", "full", "selective", "unknown"]),
    ("attn_impl", &["eager", "sdpa", "flash", "unknown"]),
    (
        "loss_impl",
        &["standard", "chunked", "fused-linear-ce", "unknown", "none"],
    ),
    (
        "parallelism",
        &[
            "none",
            "zero2",
            "zero3",
            "zero3-offload",
            "fsdp-full",
            "fsdp-full-offload",
            "tp",
            "mixed",
        ],
    ),
    (
        "metric",
        &[
            "allocated",
            "reserved",
            "active",
            "nvidia-smi",
            "vllm-profile",
            "unknown",
        ],
    ),
];

/// One measured run, its cells checked.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasuredRow {
    /// 1-based line in the file (the header is line 1).
    pub line: usize,
    pub id: String,
    pub source_group: String,
    pub model: String,
    pub task: String,
    pub method: String,
    /// `None` for `unknown`.
    pub lora_rank: Option<u64>,
    pub lora_targets: String,
    pub quant: String,
    pub weight_dtype: String,
    pub optimizer: String,
    pub micro_batch: u64,
    /// `None` for `unknown`.
    pub seq_len: Option<u64>,
    pub gen_tokens: u64,
    pub grad_ckpt: String,
    pub attn_impl: String,
    pub loss_impl: String,
    pub framework: String,
    pub parallelism: String,
    pub n_gpus: u64,
    pub tp: u64,
    pub pp: u64,
    pub cp: u64,
    pub gpu: String,
    pub metric: String,
    /// Per GPU, GiB (2^30 bytes).
    pub measured_gib: f64,
    /// The optional `grad_accum` column (gradient accumulation steps per optimizer
    /// step); `None` when the column is absent, empty or `unknown`.
    pub grad_accum: Option<u64>,
    /// The optional `notes` column (free text; an `other-peft` row's tuner is read from
    /// it), empty when absent.
    pub notes: String,
    /// The optional `source` column (where the figure was published; it names a
    /// measurement harness whose own behaviour the mapping reproduces), empty when
    /// absent.
    pub source: String,
}

/// Parses the table text (`origin` names it in errors).
pub fn parse(text: &str, origin: &str) -> Result<Vec<MeasuredRow>> {
    let err = |message: String| Error::Measurement {
        path: origin.to_string(),
        message,
    };
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let header: Vec<String> = rd
        .headers()
        .map_err(|e| err(format!("unreadable header: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    let missing: Vec<&str> = COLUMNS
        .iter()
        .copied()
        .filter(|c| !header.iter().any(|h| h == c))
        .collect();
    if !missing.is_empty() {
        return Err(err(format!(
            "missing column(s) {}; a measurement table has {}",
            missing.join(", "),
            COLUMNS.join(", ")
        )));
    }
    let at: BTreeMap<&str, usize> = COLUMNS
        .iter()
        .map(|c| (*c, header.iter().position(|h| h == c).unwrap_or(0)))
        .collect();
    let notes_at = header.iter().position(|h| h == "notes");
    let source_at = header.iter().position(|h| h == "source");
    let accum_at = header.iter().position(|h| h == "grad_accum");
    let mut rows = Vec::new();
    let mut ids = BTreeMap::new();
    for (i, rec) in rd.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| err(format!("line {line}: {e}")))?;
        let cell = |c: &str| rec.get(at[c]).unwrap_or("").trim().to_string();
        let id = cell("id");
        let bad = |col: &str, v: &str, accepted: &str| {
            err(format!(
                "line {line} (row {id:?}): {col} = {v:?}; accepted: {accepted}"
            ))
        };
        if id.is_empty() {
            return Err(bad("id", "", "a non-empty row id"));
        }
        if let Some(first) = ids.insert(id.clone(), line) {
            return Err(bad(
                "id",
                &id,
                &format!("a unique id (also on line {first})"),
            ));
        }
        let token = |col: &str| -> Result<String> {
            let v = cell(col);
            let ok = TOKENS
                .iter()
                .find(|(c, _)| *c == col)
                .map(|(_, t)| t.contains(&v.as_str()))
                .unwrap_or(true);
            if ok {
                Ok(v)
            } else {
                let t = TOKENS.iter().find(|(c, _)| *c == col).unwrap().1;
                Err(bad(col, &v, &t.join(", ")))
            }
        };
        let count = |col: &str, min: u64| -> Result<u64> {
            let v = cell(col);
            match v.parse::<u64>() {
                Ok(n) if n >= min && n <= 1 << 40 => Ok(n),
                _ => Err(bad(col, &v, &format!("an integer in {min}..=2^40"))),
            }
        };
        let maybe = |col: &str, min: u64| -> Result<Option<u64>> {
            if cell(col) == "unknown" {
                Ok(None)
            } else {
                count(col, min).map(Some).map_err(|_| {
                    bad(
                        col,
                        &cell(col),
                        &format!("an integer in {min}..=2^40, or unknown"),
                    )
                })
            }
        };
        let text_cell = |col: &str| -> Result<String> {
            let v = cell(col);
            if v.is_empty() {
                Err(bad(col, "", "a non-empty value"))
            } else {
                Ok(v)
            }
        };
        let measured = cell("measured_gib");
        let measured_gib = match measured.parse::<f64>() {
            Ok(g) if g.is_finite() && g > 0.0 && g < 1e6 => g,
            _ => {
                return Err(bad(
                    "measured_gib",
                    &measured,
                    "a positive number of GiB below 10^6",
                ))
            }
        };
        let grad_accum = match accum_at.and_then(|i| rec.get(i)).map(str::trim) {
            None | Some("") | Some("unknown") => None,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (1..=1 << 20).contains(&n) => Some(n),
                _ => {
                    return Err(bad(
                        "grad_accum",
                        v,
                        "an integer in 1..=2^20, unknown, or empty",
                    ))
                }
            },
        };
        rows.push(MeasuredRow {
            line,
            grad_accum,
            source_group: text_cell("source_group")?,
            model: text_cell("model")?,
            task: token("task")?,
            method: token("method")?,
            lora_rank: maybe("lora_rank", 0)?,
            lora_targets: text_cell("lora_targets")?,
            quant: token("quant")?,
            weight_dtype: token("weight_dtype")?,
            optimizer: token("optimizer")?,
            micro_batch: count("micro_batch", 1)?,
            seq_len: maybe("seq_len", 1)?,
            gen_tokens: count("gen_tokens", 0)?,
            grad_ckpt: token("grad_ckpt")?,
            attn_impl: token("attn_impl")?,
            loss_impl: token("loss_impl")?,
            framework: text_cell("framework")?,
            parallelism: token("parallelism")?,
            n_gpus: count("n_gpus", 1)?,
            tp: count("tp", 1)?,
            pp: count("pp", 1)?,
            cp: count("cp", 1)?,
            gpu: text_cell("gpu")?,
            metric: token("metric")?,
            measured_gib,
            notes: notes_at.and_then(|i| rec.get(i)).unwrap_or("").to_string(),
            source: source_at.and_then(|i| rec.get(i)).unwrap_or("").to_string(),
            id,
        });
    }
    if rows.is_empty() {
        return Err(err("no rows after the header".into()));
    }
    Ok(rows)
}

/// A well-formed row for tests (LoRA q,v on llama-2-7b, 10 GiB allocated).
#[cfg(test)]
pub(crate) fn sample_row() -> MeasuredRow {
    MeasuredRow {
        line: 2,
        id: "r".into(),
        source_group: "g".into(),
        model: "llama-2-7b".into(),
        task: "train".into(),
        method: "lora".into(),
        lora_rank: Some(16),
        lora_targets: "qv".into(),
        quant: "none".into(),
        weight_dtype: "bf16".into(),
        optimizer: "adamw".into(),
        micro_batch: 2,
        seq_len: Some(512),
        gen_tokens: 0,
        grad_ckpt: "none".into(),
        attn_impl: "sdpa".into(),
        loss_impl: "standard".into(),
        framework: "peft".into(),
        parallelism: "none".into(),
        n_gpus: 1,
        tp: 1,
        pp: 1,
        cp: 1,
        gpu: "unknown".into(),
        metric: "allocated".into(),
        measured_gib: 10.0,
        grad_accum: None,
        notes: String::new(),
        source: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(row: &str) -> String {
        format!("{}\n{row}\n", COLUMNS.join(","))
    }
    const GOOD: &str = "r-001,g,llama-2-7b,train,lora,16,qv,none,bf16,adamw,2,512,0,none,sdpa,standard,peft,none,1,1,1,1,a100-80gb,allocated,20.5";

    #[test]
    fn a_good_row_parses() {
        let rows = parse(&table(GOOD), "t.csv").unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.line, r.lora_rank, r.seq_len), (2, Some(16), Some(512)));
        assert_eq!(r.measured_gib, 20.5);
    }

    #[test]
    fn bad_cells_name_row_column_value_and_what_is_accepted() {
        let cases = [
            ("lora,16,qv", "lora,sixteen,qv", "lora_rank = \"sixteen\""),
            (
                ",sdpa,",
                ",flashy,",
                "attn_impl = \"flashy\"; accepted: eager, sdpa",
            ),
            (",20.5", ",-1", "measured_gib = \"-1\""),
            (",20.5", ",NaN", "measured_gib = \"NaN\""),
            (",2,512,", ",0,512,", "micro_batch = \"0\""),
            (",allocated,", ",smi,", "metric = \"smi\""),
        ];
        for (from, to, needle) in cases {
            let e = parse(&table(&GOOD.replacen(from, to, 1)), "t.csv")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("t.csv") && e.contains("line 2 (row \"r-001\")"),
                "{e}"
            );
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn the_optional_grad_accum_column_parses_and_bad_values_are_named() {
        let with = |v: &str| {
            parse(
                &format!("{},grad_accum\n{GOOD},{v}\n", COLUMNS.join(",")),
                "t.csv",
            )
        };
        assert_eq!(with("4").unwrap()[0].grad_accum, Some(4));
        assert_eq!(with("").unwrap()[0].grad_accum, None);
        assert_eq!(with("unknown").unwrap()[0].grad_accum, None);
        assert_eq!(parse(&table(GOOD), "t.csv").unwrap()[0].grad_accum, None);
        for bad in ["0", "-2", "four", "2000000"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("grad_accum = \"{bad}\"")), "{e}");
            assert!(e.contains("1..=2^20"), "{e}");
        }
    }

    #[test]
    fn missing_columns_duplicate_ids_and_empty_tables_are_errors() {
        let e = parse("id,model\nx,y\n", "t.csv").unwrap_err().to_string();
        assert!(e.contains("missing column(s) source_group"), "{e}");
        let e = parse(&format!("{}\n{GOOD}\n", table(GOOD).trim_end()), "t.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("also on line 2"), "{e}");
        let e = parse(&format!("{}\n", COLUMNS.join(",")), "t.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no rows"), "{e}");
    }
}
