//! A measured row → the tool's settings, column by column, or the reason it cannot be
//! estimated. The mapping is the same flag set a user would pass to `llm-mem estimate`
//! (each row's equivalent command is printed with `--verbose`); nothing here is fitted
//! to a row.
//!
//! | column | setting |
//! |---|---|
//! | `task`, `micro_batch`, `seq_len`, `gen_tokens` | `--task`, `--batch`, `--seq-len` (train) or `--prompt-len` + `--gen-len` (infer) |
//! | `grad_accum` (optional column), else `notes` | `--grad-accum`: the column; else what the notes state (`no grad accumulation`, `GA N`, `GA N (LoRA) / M (QLoRA)`, `gradient_accumulation_steps N`); else 1, with a note |
//! | `notes` naming a torchtune config | `--fsdp-separate-embeddings true` when that config (torchtune `recipes/configs` at 30b8519e8, `torchtune_sharded_configs.csv`) sets `custom_sharded_layers: ['tok_embeddings', 'output']` |
//! | `notes` | `--optimizer-in-bwd true` when they say `optimizer_in_bwd=True` or "optimizer step fused into backward"; `--activation-offload true` when they say "activation offloading"; `--compile true` when they say "torch.compile on" (torchtune's switches; the table has no column for them) |
//! | `method` + `quant` | `full`; `lora`; `qlora` when the base is `nf4` / `nf4-dq` / `fp4` (bitsandbytes 4-bit: fp4 and nf4 store the same 4 bits + absmax per 64); `nf4` without double quantization → `--no-double-quant`; `gptq-int4` with LoRA or inference when the model's config carries a gptq `quantization_config` (the estimator sizes the packed weights from it) |
//! | `method` `other-peft` | `--method lora --peft NAME`, the tuner read from `notes` (the table's README: "see notes"): `peft_type LOHA` / `OFT` / `BOFT` / `OSF` → `loha` / `oft` / `boft` / `osf` (rank — OFT's number of blocks, BOFT's block size (peft's default 4 when the row gives 0), OSF's trained rank — and targets from their columns; under peft's MetaMathQA harness BOFT's permutation buffers stay on the host, and each run's peft version and `autocast_adapter_dtype` come from `metamath_runs.csv`); `peft_type ADALORA` / `VERA` / `IA3` / `LN_TUNING` / `PROMPT_TUNING` / `PREFIX_TUNING` → `adalora` / `vera` / `ia3` / `ln-tuning` (its targets: peft's default norms for the model type) / `prompt-tuning` / `prefix-tuning` (`--virtual-tokens` = the notes' `trainable params` over the hidden size / layers × 2 × kv_dim); `peft_type LORA` with `DoRA` / `use_dora` → `dora`, with `LoRA-FA` / `lorafa` → `lora-fa` (`lora` for a row from peft's MetaMathQA harness, whose `disable_adapter()` context re-enables lora_A's gradient after the LoRA-FA optimizer froze it); any other peft type is refused, named |
//! | `lora_rank`, `lora_targets` | `--lora-rank`; role tokens (`q`, `k`, `v`, `o`, `qkv`, `gate`, `up`, `down`, `mlp`, `lm_head`) → the model's own module names (a fused q/k/v linear for `q`/`k`/`v` on a fused model; `lm_head` for the output head) |
//! | `weight_dtype` | `bf16` / `fp16` / `fp32` → `--dtype`; `mixed-bf16` / `mixed-fp16` → `amp-bf16` / `amp-fp16` (fp32 weights, half compute) |
//! | `optimizer` | `--optimizer` (`adamw` is torch's fused AdamW) |
//! | `grad_ckpt`, `attn_impl`, `loss_impl` | `--grad-ckpt`, `--attn`, `--loss` |
//! | `parallelism`, `n_gpus`, `tp`/`pp`/`cp` | `fsdp-full` → `--fsdp full --dp N` (+ `--offload-params`, FSDP's one CPUOffload switch, for `-offload`); `zero2`/`zero3` → `--zero 2/3 --dp N` (+ `--offload-params --offload-optimizer`); `tp` → `--tp N` |
//! | `framework` | `--framework NAME` when a profile of that name is shipped (`hf-trainer`, `accelerate`, `litgpt`, `torchtune`); otherwise none, with a note |
//! | `metric` | which estimated figure is compared: `allocated` / `active` → allocated (`max_memory_allocated`), `reserved` → reserved, `nvidia-smi` and `unknown` → device (reserved + CUDA context); `unknown` from torchtune → reserved (its memory stats are the allocator's) |
//!
//! Refused, with the reason (they count as misses): PEFT tuners not modelled (a
//! `peft_type` other than those above), modules trained in full next to
//! the adapters, training over 8-bit base weights (inference on them
//! is `--dtype int8`), GPTQ rows whose config has no
//! gptq `quantization_config`, an unknown optimizer,
//! sequence length, rank or checkpointing, vLLM's profile metric (the serving engines'
//! own accounting), and `mixed` parallelism without its degrees.

use crate::arch::{LinearRole, ModelSpec};

use super::table::MeasuredRow;

/// Which estimated figure a row's `metric` is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// `torch.cuda.max_memory_allocated` (and `active`, the same blocks in use).
    Allocated,
    /// `torch.cuda.max_memory_reserved`.
    Reserved,
    /// What the device shows in use (`nvidia-smi`): reserved + CUDA context + NCCL.
    Device,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Allocated => "allocated",
            Metric::Reserved => "reserved",
            Metric::Device => "device",
        }
    }
}

/// A row mapped onto settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// `(setting key, value)` in `Settings::from_flags` form.
    pub settings: Vec<(String, String)>,
    pub metric: Metric,
    /// Assumptions the mapping made (shown with the row).
    pub notes: Vec<String>,
}

impl Mapped {
    /// The equivalent `llm-mem estimate` command line (the model as given).
    pub fn command(&self) -> String {
        let mut s = String::from("llm-mem estimate");
        for (k, v) in &self.settings {
            let flag = k.replace('_', "-");
            match (k.as_str(), v.as_str()) {
                ("double_quant", "false") => s.push_str(" --no-double-quant"),
                ("offload_params" | "offload_optimizer", "true") => {
                    s.push_str(&format!(" --{flag}"))
                }
                _ => s.push_str(&format!(" --{flag} {v}")),
            }
        }
        s
    }
}

/// `(key, value)` pairs in `Settings::from_flags` form, in the order they were set.
#[derive(Default)]
struct Pairs(Vec<(String, String)>);

impl Pairs {
    fn put(&mut self, k: &str, v: impl Into<String>) {
        self.0.push((k.to_string(), v.into()));
    }
}

/// Maps `r` (whose model is `spec`) onto settings, or says why it cannot be estimated.
pub fn map(r: &MeasuredRow, spec: &ModelSpec) -> Result<Mapped, String> {
    let mut s = Pairs::default();
    let mut notes = Vec::new();
    s.put("model", r.model.clone());
    let (method, int8) = method_of(r, spec)?;
    if r.quant == "fp4" {
        notes.push("bitsandbytes fp4 stored as nf4 is: 4 bits + an fp32 absmax per 64".into());
    }
    let train = r.task == "train";
    s.put("task", r.task.clone());
    if train || method == "qlora" {
        s.put("method", method);
    }
    let peft = if r.method == "other-peft" {
        let mut p = peft_of(&r.notes)?;
        if p == "lora-fa" && r.source.contains("method_comparison/MetaMathQA") {
            // peft's MetaMathQA run.py (d787f51b) builds the LoRA-FA optimizer (which
            // freezes every lora_A), then computes the wiki loss under
            // `model.disable_adapter()`; leaving that context calls
            // `enable_adapters(True)` → `set_adapter`, which sets requires_grad on
            // every adapter layer again (tuners_utils.py): lora_A keeps its input and
            // gets a gradient as in LoRA; the optimizer still keeps state for lora_B
            // only (the LoRA states of lora_A, 2 x r x in fp32 per linear, are counted)
            p = "lora";
            notes.push(
                "LoRA-FA under peft's MetaMathQA harness: its disable_adapter() context (the wiki loss) re-enables lora_A's gradient after the optimizer froze it, so the step runs as LoRA's".into(),
            );
        }
        if p == "boft" && r.source.contains("method_comparison/MetaMathQA") {
            // utils.py get_base_model loads with device_map=<accelerator> and run.py never
            // moves the model after get_peft_model: BOFT's boft_P buffers stay where
            // update_layer created them, on the CPU (BOFTLayer registers them outside the
            // adapter dicts `_move_adapter_to_device_of_base_layer` moves)
            s.put("boft_perm_on_host", "true");
            notes.push("BOFT under peft's MetaMathQA harness: the model is loaded with device_map and never moved, so the fp32 boft_P buffers stay on the host".into());
        }
        s.put("peft", p);
        p
    } else {
        "lora"
    };
    if method != "full" && train && matches!(peft, "prompt-tuning" | "prefix-tuning") {
        // peft's num_virtual_tokens: the row's trainable count over one token's width
        // (PromptEmbedding: num_virtual_tokens x hidden; PrefixEncoder without
        // projection: num_virtual_tokens x layers x 2 x kv_dim)
        let (width, what) = if peft == "prompt-tuning" {
            (spec.hidden, "the hidden size")
        } else {
            (spec.layers() * 2 * spec.kv_dim(), "layers x 2 x kv_dim")
        };
        let n = trainable_params_of(&r.notes).ok_or(format!(
            "{peft} without the trainable parameter count in the notes (num_virtual_tokens unknown)"
        ))?;
        if n == 0 || n % width != 0 {
            return Err(format!(
                "{peft} with {n} trainable parameters: not a multiple of {what} {width}"
            ));
        }
        s.put("virtual_tokens", (n / width).to_string());
        notes.push(format!(
            "{peft}: {} virtual tokens (trainable {n} / {what} {width})",
            n / width
        ));
    } else if method != "full" && train && peft == "ln-tuning" {
        // LN tuning: no rank, no linear targets — peft's mapping for the model type
        // names the norms (the table's `custom:norm`)
        if !matches!(r.lora_targets.as_str(), "custom:norm" | "none" | "") {
            return Err(format!(
                "LN tuning with targets {:?}: the tool trains peft's default norms for the model type only",
                r.lora_targets
            ));
        }
    } else if method != "full" && train {
        // (IA)³ has no rank (the table writes 0); BOFT's rank slot is its block size,
        // peft's BOFTConfig default (boft_block_size 4) when the row gives none
        if peft == "boft" && r.lora_rank.is_none_or(|k| k == 0) {
            s.put("lora_rank", "4");
            notes.push("BOFT block size 4: peft's BOFTConfig default boft_block_size (the row gives no rank)".into());
        } else if peft != "ia3" {
            let rank = r
                .lora_rank
                .filter(|&k| k > 0)
                .ok_or_else(|| "LoRA rank unknown".to_string())?;
            s.put("lora_rank", rank.to_string());
        }
        s.put("lora_targets", lora_targets(&r.lora_targets, spec)?);
    }
    if let Some((version, autocast)) = metamath_run(r) {
        // the run's own peft (its results' package_info) and adapter dtype
        s.put("peft_version", version.to_string());
        if !autocast && method != "full" {
            s.put("lora_dtype", "model");
        }
        notes.push(format!(
            "peft {version}, autocast_adapter_dtype {autocast} (the run's results at 5d602fdbf)"
        ));
    }
    if method == "qlora" && (r.quant == "nf4" || r.quant == "fp4") {
        s.put("double_quant", "false");
    }
    // precision (bitsandbytes LLM.int8 weights serve with fp16 compute)
    let dtype = match r.weight_dtype.as_str() {
        _ if int8 => "int8",
        "mixed-bf16" => "amp-bf16",
        "mixed-fp16" => "amp-fp16",
        d => d,
    };
    s.put("dtype", dtype);
    if train {
        match r.optimizer.as_str() {
            "unknown" => return Err("optimizer unknown".into()),
            "none" => return Err("a training row without an optimizer".into()),
            o => s.put("optimizer", o),
        }
    }
    // shapes
    let seq = match r.seq_len {
        Some(n) => n,
        None => {
            // a run over unpacked data padded per batch peaks at the batch holding the
            // longest sample: with the dataset's longest sample stated, that length
            let n = longest_sample_of(r)
                .filter(|_| train)
                .ok_or_else(|| "sequence length unknown".to_string())?;
            notes.push(format!(
                "sequence length {n}: the longest sample the notes state (unpacked data padded per batch peaks at the batch holding it)"
            ));
            n
        }
    };
    s.put("batch", r.micro_batch.to_string());
    if train {
        s.put("seq_len", seq.to_string());
    } else {
        s.put("prompt_len", seq.to_string());
        s.put("gen_len", r.gen_tokens.max(1).to_string());
    }
    if train {
        match grad_accum_of(r).or_else(|| litgpt_recipe_accum(r)) {
            Some((n, from)) => {
                if n > 1 {
                    s.put("grad_accum", n.to_string());
                }
                if let Some(from) = from {
                    notes.push(format!("gradient accumulation {n}, {from}"));
                }
            }
            None => notes.push(
                "gradient accumulation not given: 1 assumed (with more, gradients are resident during the next micro-batch)".into(),
            ),
        }
    }
    // torchtune's memory switches, where the notes state them (the table has no column)
    if train && r.parallelism.starts_with("fsdp") {
        if let Some(config) = torchtune_separate_embeddings(r) {
            s.put("fsdp_separate_embeddings", "true");
            notes.push(format!(
                "torchtune {config} shards tok_embeddings and output as units of their own (custom_sharded_layers)"
            ));
        }
    }
    if train {
        let lower = r.notes.to_ascii_lowercase();
        if lower.contains("optimizer_in_bwd=true")
            || lower.contains("optimizer_in_bwd: true")
            || lower.contains("optimizer step fused into backward")
        {
            s.put("optimizer_in_bwd", "true");
            notes.push("optimizer in backward, read from the notes".into());
        }
        if lower.contains("torch.compile on") || lower.contains("compile=true") {
            s.put("compile", "true");
            notes.push("torch.compile, read from the notes".into());
        }
        if lower.contains("activation offloading")
            || lower.contains("enable_activation_offloading=true")
        {
            s.put("activation_offload", "true");
            notes.push("activation offloading, read from the notes".into());
        }
    }
    // kernels and checkpointing
    if train {
        match r.grad_ckpt.as_str() {
            "unknown" => return Err("activation checkpointing unknown".into()),
            g => s.put("grad_ckpt", g),
        }
        match r.loss_impl.as_str() {
            "unknown" => return Err("loss implementation unknown".into()),
            "none" => {}
            l => s.put("loss", l),
        }
    }
    match r.attn_impl.as_str() {
        "unknown" => {
            notes.push("attention implementation unknown: sdpa (transformers' default)".into());
            s.put("attn", "sdpa");
        }
        a => s.put("attn", a),
    }
    parallelism(r, &mut s)?;
    // the framework's profile (its mechanisms' defaults), when one is shipped
    if crate::workload::profile::SHIPPED
        .iter()
        .any(|(n, _)| *n == r.framework)
    {
        s.put("framework", r.framework.clone());
    } else {
        notes.push(format!(
            "no profile for framework {:?}: PyTorch + transformers + peft as the ledger models them",
            r.framework
        ));
    }
    let metric = metric_of(r, &mut notes)?;
    Ok(Mapped {
        settings: s.0,
        metric,
        notes,
    })
}

/// The tool's method for the row's method and base-weight quantization, and whether the
/// weights are bitsandbytes LLM.int8 (inference only).
fn method_of(r: &MeasuredRow, spec: &ModelSpec) -> Result<(&'static str, bool), String> {
    let gptq_config = spec
        .quantization
        .as_ref()
        .is_some_and(|q| q.method.eq_ignore_ascii_case("gptq"));
    Ok(match (r.method.as_str(), r.quant.as_str()) {
        ("other-peft", "none") => ("lora", false),
        ("other-peft", q) => {
            return Err(format!(
                "a PEFT tuner other than LoRA over {q}-quantized weights"
            ))
        }
        ("none", "int8") => ("full", true),
        (_, "int8") => {
            return Err("training over 8-bit (LLM.int8) base weights: not modelled yet".into())
        }
        // a GPTQ checkpoint (its config's quantization_config) is sized as packed int4
        // weights by the estimator itself; LoRA or inference on it, never full training
        ("lora", "gptq-int4") if gptq_config => ("lora", false),
        ("none", "gptq-int4") if gptq_config => ("full", false),
        (_, "gptq-int4") => {
            return Err(
                "GPTQ int4 base weights on a config without a gptq quantization_config".into(),
            )
        }
        ("qlora" | "lora", "nf4" | "nf4-dq" | "fp4") => ("qlora", false),
        ("qlora", "none") => return Err("method qlora with quant none".into()),
        ("full", q) if q != "none" => {
            return Err(format!("full fine-tuning of {q}-quantized weights"))
        }
        // inference on bitsandbytes 4-bit weights: the tool's NF4 serving
        ("none", "nf4" | "nf4-dq" | "fp4") => ("qlora", false),
        ("none" | "full", _) => ("full", false),
        ("lora", _) => ("lora", false),
        ("qlora", _) => ("qlora", false),
        (m, _) => return Err(format!("method {m}")),
    })
}

/// The peft tuner of an `other-peft` row, from its notes: the `peft_type` the source
/// recorded (a LoRA type with DoRA or LoRA-FA named), or why it is not modelled.
fn peft_of(notes: &str) -> Result<&'static str, String> {
    let ty = notes
        .split("peft_type ")
        .nth(1)
        .map(|t| {
            t.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("")
        })
        .unwrap_or("");
    let lower = notes.to_ascii_lowercase();
    match ty {
        "ADALORA" => Ok("adalora"),
        "VERA" => Ok("vera"),
        "IA3" => Ok("ia3"),
        "LN_TUNING" => Ok("ln-tuning"),
        "PROMPT_TUNING" => Ok("prompt-tuning"),
        "PREFIX_TUNING" => Ok("prefix-tuning"),
        "LOHA" => Ok("loha"),
        "OFT" => Ok("oft"),
        "BOFT" => Ok("boft"),
        "OSF" => Ok("osf"),
        "LORA" | "" if lower.contains("use_dora") || notes.contains("DoRA") => Ok("dora"),
        "LORA" | "" if lower.contains("lora-fa") || lower.contains("lorafa") => Ok("lora-fa"),
        "" => Err("a PEFT method other than LoRA whose peft_type the notes do not name".into()),
        t => Err(format!("PEFT tuner {t}: not modelled")),
    }
}

/// The `trainable params N` a row's notes record (digits with thousands commas).
fn trainable_params_of(notes: &str) -> Option<u64> {
    let at = notes.find("trainable params ")? + "trainable params ".len();
    let digits: String = notes[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Gradient accumulation steps and where they came from: the `grad_accum` column, else
/// the notes when they state it (`no grad accumulation`; `GA N`; `GA N (LoRA) / M
/// (QLoRA)` per method; `gradient_accumulation_steps N` / `=N` / `: N`).
fn grad_accum_of(r: &MeasuredRow) -> Option<(u64, Option<String>)> {
    if let Some(n) = r.grad_accum {
        return Some((n, None));
    }
    let from_notes = Some("read from the notes".to_string());
    let notes = r.notes.as_str();
    let lower = notes.to_ascii_lowercase();
    if lower.contains("no grad accumulation") || lower.contains("no gradient accumulation") {
        return Some((1, from_notes));
    }
    let number_after = |at: &str| -> Option<u64> {
        let t = at.trim_start_matches([' ', '=', ':']);
        let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok().filter(|n| (1..=1 << 20).contains(n))
    };
    // "GA " as a word of its own (not the tail of "OMEGA 3")
    let ga = notes
        .match_indices("GA ")
        .map(|(i, _)| i)
        .find(|&i| i == 0 || !notes[..i].ends_with(|c: char| c.is_ascii_alphanumeric()));
    if let Some(i) = ga {
        let rest = &notes[i + 3..];
        let first = number_after(rest)?;
        // "GA 4 (LoRA) / 2 (QLoRA)": the figure of the row's method
        if let Some(j) = rest.find("(QLoRA)") {
            let head = &rest[..j];
            if r.method == "qlora" {
                if let Some(k) = head.rfind('/') {
                    return number_after(&head[k + 1..]).map(|n| (n, from_notes));
                }
            }
        }
        return Some((first, from_notes));
    }
    for key in ["gradient_accumulation_steps", "grad accumulation"] {
        if let Some(i) = lower.find(key) {
            if let Some(n) = number_after(&lower[i + key.len()..]) {
                return Some((n, from_notes));
            }
        }
    }
    None
}

/// The recipe a row's notes name (`config llama3_1/70B_full (...)`, `config
/// gemma-2b/full.yaml;`): the word after `config `.
/// The dataset's longest sample in tokens, where a row's notes state it for data
/// padded per batch ("padded per batch ... longest Alpaca sample ~1.3k tokens").
fn longest_sample_of(r: &MeasuredRow) -> Option<u64> {
    let lower = r.notes.to_ascii_lowercase();
    if !lower.contains("padded per batch") {
        return None;
    }
    let at = lower.find("longest")?;
    let rest = &lower[at..];
    let tilde = rest.find('~').filter(|&i| i < 60)?;
    let figure: String = rest[tilde + 1..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let tail = rest[tilde + 1 + figure.len()..].trim_start();
    let value: f64 = figure.parse().ok()?;
    let (value, tail) = match tail.strip_prefix('k') {
        Some(t) => (value * 1000.0, t.trim_start()),
        None => (value, tail),
    };
    if !tail.starts_with("token") || !(1.0..=1.0e7).contains(&value) {
        return None;
    }
    Some(value.round() as u64)
}

fn config_named(notes: &str) -> Option<String> {
    let at = notes.find("config ")? + "config ".len();
    let name: String = notes[at..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, ';' | ',' | '(' | ':'))
        .collect();
    (!name.is_empty()).then_some(name)
}

/// torchtune's configs that shard the embedding and the head as FSDP units of their
/// own (`recipes/configs` at 30b8519e8, `custom_sharded_layers`).
const TORCHTUNE_SHARDED_CONFIGS: &str = include_str!("torchtune_sharded_configs.csv");

/// A torchtune row whose notes name a config that shards the embedding and the head
/// separately (`config llama3_1/70B_full`).
fn torchtune_separate_embeddings(r: &MeasuredRow) -> Option<String> {
    if r.framework != "torchtune" {
        return None;
    }
    let name = config_named(&r.notes)?;
    TORCHTUNE_SHARDED_CONFIGS
        .lines()
        .any(|l| l == name)
        .then_some(name)
}

/// peft's MetaMathQA runs (`method_comparison/MetaMathQA` at 5d602fdbf): per
/// experiment, the peft version and `autocast_adapter_dtype` its results record.
const METAMATH_RUNS: &str = include_str!("metamath_runs.csv");

/// A MetaMathQA row's run, found by the experiment its notes name (`experiment
/// osf--llama-3.2-3B-rank128`): (peft version, autocast_adapter_dtype).
fn metamath_run(r: &MeasuredRow) -> Option<(&'static str, bool)> {
    if !r.source.contains("method_comparison/MetaMathQA") {
        return None;
    }
    let name = r
        .notes
        .split("experiment ")
        .nth(1)?
        .split([';', ' '])
        .next()?;
    METAMATH_RUNS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut f = l.split(',');
            (f.next()? == name).then_some(())?;
            Some((f.next()?, f.next()?.trim().parse().ok()?))
        })
}

/// litgpt's finetuning recipes (`config_hub/finetune`, commit 00af8b0d): config,
/// devices, global_batch_size, micro_batch_size.
const LITGPT_CONFIG_HUB: &str = include_str!("litgpt_config_hub.csv");

/// A litgpt row whose notes name its recipe (`config gemma-2b/full.yaml`): the
/// accumulation litgpt computes for the run, `global_batch_size // devices //
/// micro_batch_size` (litgpt/args.py `TrainArgs.gradient_accumulation_iters`), with the
/// recipe's global batch and the row's own devices and micro-batch.
fn litgpt_recipe_accum(r: &MeasuredRow) -> Option<(u64, Option<String>)> {
    if r.framework != "litgpt" {
        return None;
    }
    let name = config_named(&r.notes)?;
    let gbs = litgpt_recipes().find(|(c, ..)| *c == name)?.2;
    let n = gbs / r.n_gpus.max(1) / r.micro_batch.max(1);
    Some((
        n.max(1),
        Some(format!(
            "litgpt's recipe {name} (config_hub at 00af8b0d): global_batch_size {gbs} // devices {} // micro_batch_size {}",
            r.n_gpus, r.micro_batch
        )),
    ))
}

/// The rows of [`LITGPT_CONFIG_HUB`]: (config, devices, global_batch_size,
/// micro_batch_size).
fn litgpt_recipes() -> impl Iterator<Item = (&'static str, u64, u64, u64)> {
    LITGPT_CONFIG_HUB
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("config,") && !l.is_empty())
        .filter_map(|l| {
            let mut f = l.split(',');
            let c = f.next()?;
            let mut n = || f.next()?.parse::<u64>().ok();
            Some((c, n()?, n()?, n()?))
        })
}

/// The layout settings of `parallelism`, `n_gpus` and the tp/pp/cp degrees.
fn parallelism(r: &MeasuredRow, s: &mut Pairs) -> Result<(), String> {
    let (tp, pp, cp) = (r.tp, r.pp, r.cp);
    let model_parallel = tp * pp * cp;
    if !r.n_gpus.is_multiple_of(model_parallel) {
        return Err(format!(
            "n_gpus {} is not a multiple of tp × pp × cp = {model_parallel}",
            r.n_gpus
        ));
    }
    let dp = (r.n_gpus / model_parallel).to_string();
    match r.parallelism.as_str() {
        "none" if r.n_gpus > 1 => s.put("dp", dp),
        "none" => {}
        "fsdp-full" | "fsdp-full-offload" => {
            s.put("fsdp", "full");
            s.put("dp", dp);
        }
        "zero2" => {
            s.put("zero", "2");
            s.put("dp", dp);
        }
        "zero3" | "zero3-offload" => {
            s.put("zero", "3");
            s.put("dp", dp);
        }
        "tp" => s.put("tp", r.n_gpus.to_string()),
        "mixed" if model_parallel == 1 => {
            return Err("parallelism mixed without tp/pp/cp degrees".into())
        }
        "mixed" => s.put("dp", dp),
        other => return Err(format!("parallelism {other}")),
    }
    if r.parallelism != "tp" {
        for (k, n) in [("tp", tp), ("pp", pp), ("cp", cp)] {
            if n > 1 {
                s.put(k, n.to_string());
            }
        }
    }
    if r.parallelism.ends_with("-offload") {
        // FSDP's CPUOffload moves parameters, gradients and optimizer state together
        // (one switch); ZeRO-3 offloads parameters and optimizer state separately
        s.put("offload_params", "true");
        if r.parallelism.starts_with("zero") {
            s.put("offload_optimizer", "true");
        }
    }
    Ok(())
}

/// The estimated figure the row's `metric` is compared with.
fn metric_of(r: &MeasuredRow, notes: &mut Vec<String>) -> Result<Metric, String> {
    Ok(match r.metric.as_str() {
        "allocated" | "active" => Metric::Allocated,
        "reserved" => Metric::Reserved,
        "nvidia-smi" => Metric::Device,
        "unknown" if r.framework == "torchtune" => {
            // torchtune/training/memory.py get_memory_stats: peak_memory_active /
            // _alloc / _reserved, all from torch.cuda.memory_stats (no context)
            notes.push("metric unknown: torchtune logs the caching allocator's peaks (training/memory.py get_memory_stats); compared with reserved, the largest of them".into());
            Metric::Reserved
        }
        "unknown" => {
            notes.push("metric unknown: compared with the device figure (reserved + CUDA context), what nvidia-smi shows".into());
            Metric::Device
        }
        "vllm-profile" => {
            return Err(
                "vLLM's profile metric: the serving engines' accounting is not modelled yet".into(),
            )
        }
        m => return Err(format!("metric {m}")),
    })
}

/// The table's `lora_targets` token → `--lora-targets` for `spec`.
fn lora_targets(token: &str, spec: &ModelSpec) -> Result<String, String> {
    match token {
        "all-linear" => return Ok("all-linear".into()),
        "attn" => return Ok("attn".into()),
        "none" | "unknown" => return Err(format!("LoRA targets {token}")),
        _ => {}
    }
    let tokens: Vec<&str> = match token {
        "qv" => vec!["q", "v"],
        t => match t.strip_prefix("custom:") {
            Some(list) => list.split('+').collect(),
            None => return Err(format!("LoRA targets {t:?}")),
        },
    };
    // every token is read before any answer: a module trained in full anywhere in the
    // list is refused even next to all-linear
    if let Some(t) = tokens.iter().find(|t| t.starts_with("full:")) {
        return Err(format!(
            "{t}: a module trained in full next to the adapters (PEFT modules_to_save) is not modelled yet"
        ));
    }
    let linears: Vec<_> = spec.each_linear().collect();
    let mut names: Vec<&str> = Vec::new();
    let mut all_linear = false;
    let mut head = false;
    let fused_qkv = linears.iter().any(|l| l.role == LinearRole::Qkv);
    let fused_gate_up = linears.iter().any(|l| l.role == LinearRole::GateUp);
    for t in tokens {
        let roles: Vec<LinearRole> = match t {
            "q" | "k" | "v" if fused_qkv => vec![LinearRole::Qkv],
            "q" => vec![LinearRole::Q],
            "k" => vec![LinearRole::K],
            "v" => vec![LinearRole::V],
            "qkv" => vec![LinearRole::Qkv, LinearRole::Q, LinearRole::K, LinearRole::V],
            "o" => vec![LinearRole::O],
            "gate" | "up" if fused_gate_up => vec![LinearRole::GateUp],
            "gate" => vec![LinearRole::Gate],
            "up" => vec![LinearRole::Up],
            "down" => vec![LinearRole::Down],
            "mlp" => vec![
                LinearRole::Gate,
                LinearRole::Up,
                LinearRole::GateUp,
                LinearRole::Down,
            ],
            "lm_head" => {
                head = true;
                continue;
            }
            "all-linear" => {
                all_linear = true;
                continue;
            }
            "norm" => return Err("LoRA on norms (LayerNorm tuning): not modelled".into()),
            other => return Err(format!("LoRA target token {other:?}")),
        };
        let before = names.len();
        for l in &linears {
            if roles.contains(&l.role) && !names.contains(&l.name) {
                names.push(l.name);
            }
        }
        if names.len() == before && !roles.iter().any(|r| linears.iter().any(|l| l.role == *r)) {
            return Err(format!(
                "LoRA target {t:?}: {} has no such linear",
                spec.family
            ));
        }
    }
    if all_linear {
        names = vec![crate::arch::ALL_LINEAR];
    }
    if head {
        names.push(crate::arch::HEAD_NAME);
    }
    Ok(names.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::presets;

    fn row(edit: impl Fn(&mut MeasuredRow)) -> MeasuredRow {
        let mut r = super::super::table::sample_row();
        edit(&mut r);
        r
    }

    fn setting<'a>(m: &'a Mapped, k: &str) -> Option<&'a str> {
        m.settings
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn spec(name: &str) -> ModelSpec {
        presets::get(name).unwrap().unwrap()
    }

    #[test]
    fn role_tokens_become_the_models_own_module_names() {
        let m = map(&row(|_| {}), &spec("llama-2-7b")).unwrap();
        assert_eq!(setting(&m, "lora_targets"), Some("q_proj,v_proj"));
        // Falcon's fused query_key_value serves q and v
        let m = map(&row(|_| {}), &spec("falcon-7b")).unwrap();
        assert_eq!(setting(&m, "lora_targets"), Some("query_key_value"));
        let m = map(
            &row(|r| r.lora_targets = "custom:k+v+down".into()),
            &spec("llama-2-7b"),
        )
        .unwrap();
        assert_eq!(setting(&m, "lora_targets"), Some("k_proj,v_proj,down_proj"));
        for (t, why) in [
            ("custom:all-linear+full:wte", "modules_to_save"),
            ("custom:norm", "norms"),
            ("custom:zz", "\"zz\""),
        ] {
            let e = map(&row(|r| r.lora_targets = t.into()), &spec("llama-2-7b")).unwrap_err();
            assert!(e.contains(why), "{t}: {e}");
        }
    }

    #[test]
    fn an_other_peft_row_takes_its_tuner_from_the_notes() {
        let other = |notes: &str, rank: Option<u64>, targets: &str| {
            map(
                &row(|r| {
                    r.method = "other-peft".into();
                    r.notes = notes.into();
                    r.lora_rank = rank;
                    r.lora_targets = targets.into();
                }),
                &spec("llama-3.2-3b"),
            )
        };
        let dora = other("peft_type LORA; targets ['q_proj']; DoRA", Some(32), "qv").unwrap();
        assert_eq!(setting(&dora, "method"), Some("lora"));
        assert_eq!(setting(&dora, "peft"), Some("dora"));
        assert_eq!(setting(&dora, "lora_rank"), Some("32"));
        let fa = other("peft_type LORA; optimizer lora-fa", Some(32), "qv").unwrap();
        assert_eq!(setting(&fa, "peft"), Some("lora-fa"));
        // the MetaMathQA harness re-enables lora_A's gradient (disable_adapter's exit)
        let harness = map(
            &row(|r| {
                r.method = "other-peft".into();
                r.notes = "peft_type LORA; optimizer lora-fa".into();
                r.source = "huggingface/peft method_comparison/MetaMathQA/results/*.json".into();
                r.lora_rank = Some(32);
            }),
            &spec("llama-3.2-3b"),
        )
        .unwrap();
        assert_eq!(setting(&harness, "peft"), Some("lora"));
        assert!(harness.notes.iter().any(|n| n.contains("disable_adapter")));
        for (t, want) in [("ADALORA", "adalora"), ("VERA", "vera")] {
            let m = other(
                &format!("experiment x; peft_type {t}; targets"),
                Some(8),
                "qv",
            )
            .unwrap();
            assert_eq!(setting(&m, "peft"), Some(want), "{t}");
        }
        // (IA)³: no rank (the table's 0), its targets as given
        let ia3 = other("peft_type IA3; targets", Some(0), "custom:k+v+down").unwrap();
        assert_eq!(setting(&ia3, "peft"), Some("ia3"));
        assert_eq!(setting(&ia3, "lora_rank"), None);
        assert_eq!(
            setting(&ia3, "lora_targets"),
            Some("k_proj,v_proj,down_proj")
        );
        // a tuner not modelled is named; so is a row that names none
        // LN tuning: no rank, no linear targets
        let ln = other("peft_type LN_TUNING; targets", Some(0), "custom:norm").unwrap();
        assert_eq!(setting(&ln, "peft"), Some("ln-tuning"));
        assert_eq!(setting(&ln, "lora_rank"), None);
        assert_eq!(setting(&ln, "lora_targets"), None);
        let e = other("peft_type LN_TUNING", Some(0), "qv").unwrap_err();
        assert!(e.contains("LN tuning"), "{e}");
        // notes → (peft, the setting it implies): prompt / prefix tuning take their
        // virtual tokens from the trainable count (3B: hidden 3072; 28 layers x 2 x
        // 1024), LoHa and OFT their rank from the column
        for (notes, rank, targets, peft, (key, want)) in [
            (
                "peft_type PROMPT_TUNING; trainable params 614,400;",
                0,
                "none",
                "prompt-tuning",
                ("virtual_tokens", "200"),
            ),
            (
                "peft_type PREFIX_TUNING; trainable params 11,468,800;",
                0,
                "none",
                "prefix-tuning",
                ("virtual_tokens", "200"),
            ),
            (
                "peft_type LOHA; targets ['q_proj', 'v_proj']",
                32,
                "qv",
                "loha",
                ("lora_rank", "32"),
            ),
            (
                "peft_type OFT; targets ['q_proj', 'v_proj']",
                32,
                "qv",
                "oft",
                ("lora_rank", "32"),
            ),
        ] {
            let m = other(notes, Some(rank), targets).unwrap();
            assert_eq!(setting(&m, "peft"), Some(peft), "{notes}");
            assert_eq!(setting(&m, key), Some(want), "{notes}");
        }
        let e = other(
            "peft_type PROMPT_TUNING; trainable params 1,000;",
            Some(0),
            "none",
        )
        .unwrap_err();
        assert!(e.contains("multiple of the hidden size 3072"), "{e}");
        let e = other("peft_type XYZ; targets", Some(0), "qv").unwrap_err();
        assert!(e.contains("XYZ"), "{e}");
        // BOFT: the rank slot is the block size, peft's default 4 when the row has none
        let boft = other("peft_type BOFT; targets", Some(0), "qv").unwrap();
        assert_eq!(setting(&boft, "peft"), Some("boft"));
        assert_eq!(setting(&boft, "lora_rank"), Some("4"));
        assert_eq!(setting(&boft, "boft_perm_on_host"), None);
        let osf = other("peft_type OSF; targets", Some(128), "qv").unwrap();
        assert_eq!(setting(&osf, "peft"), Some("osf"));
        assert_eq!(setting(&osf, "lora_rank"), Some("128"));
        assert_eq!(setting(&osf, "lora_dtype"), None);
        // under peft's MetaMathQA harness: boft_P stays on the host; the OSF experiment
        // keeps its adapters in the model's dtype (its training_params.json)
        let harness = |notes: &str, rank| {
            map(
                &row(|r| {
                    r.method = "other-peft".into();
                    r.notes = notes.into();
                    r.source =
                        "huggingface/peft method_comparison/MetaMathQA/results/*.json".into();
                    r.lora_rank = rank;
                }),
                &spec("llama-3.2-3b"),
            )
            .unwrap()
        };
        let boft = harness(
            "experiment boft--llama-3.2-3B-default; peft_type BOFT",
            Some(0),
        );
        assert_eq!(setting(&boft, "boft_perm_on_host"), Some("true"));
        assert_eq!(setting(&boft, "lora_dtype"), None);
        let osf = harness(
            "experiment osf--llama-3.2-3B-rank128; peft_type OSF",
            Some(128),
        );
        assert_eq!(setting(&osf, "lora_dtype"), Some("model"));
        assert_eq!(setting(&osf, "peft_version"), Some("0.19.2.dev0"));
        assert_eq!(setting(&boft, "peft_version"), Some("0.19.2.dev0"));
        let e = other("some method", Some(8), "qv").unwrap_err();
        assert!(e.contains("peft_type"), "{e}");
    }

    #[test]
    fn gradient_accumulation_comes_from_the_column_else_the_notes() {
        let accum = |edit: &dyn Fn(&mut MeasuredRow)| {
            let m = map(&row(edit), &spec("llama-2-7b")).unwrap();
            (setting(&m, "grad_accum").map(str::to_owned), m.notes)
        };
        // the column wins over the notes
        let (n, _) = accum(&|r| {
            r.grad_accum = Some(8);
            r.notes = "GA 2".into();
        });
        assert_eq!(n.as_deref(), Some("8"));
        // peft docs: "GA 4 (LoRA) / 2 (QLoRA)", the figure of the row's method
        let peft = "per_device_train_batch_size 8, GA 4 (LoRA) / 2 (QLoRA) || precision";
        let (n, notes) = accum(&|r| r.notes = peft.into());
        assert_eq!(n.as_deref(), Some("4"));
        assert!(notes.iter().any(|x| x.contains("read from the notes")));
        let (n, _) = accum(&|r| {
            r.notes = peft.into();
            r.method = "qlora".into();
            r.quant = "nf4-dq".into();
        });
        assert_eq!(n.as_deref(), Some("2"));
        // torchtune README: one micro-batch per step, so no setting at all
        let (n, notes) = accum(&|r| r.notes = "batch 2, no grad accumulation, packed".into());
        assert_eq!(n, None);
        assert!(notes.iter().all(|x| !x.contains("not given")), "{notes:?}");
        let (n, _) = accum(&|r| r.notes = "gradient_accumulation_steps=16".into());
        assert_eq!(n.as_deref(), Some("16"));
        // a litgpt row naming its recipe: 16 // 4 devices // 1 (gemma-2b/full.yaml)
        let (n, notes) = accum(&|r| {
            r.framework = "litgpt".into();
            r.notes = "config gemma-2b/full.yaml; devices=4 in config".into();
            r.n_gpus = 4;
            r.micro_batch = 1;
        });
        assert_eq!(n.as_deref(), Some("4"));
        assert!(
            notes.iter().any(|x| x.contains("global_batch_size 16")),
            "{notes:?}"
        );
        // every recipe of the shipped table parsed (42 YAML files at 00af8b0d)
        assert_eq!(litgpt_recipes().count(), 42);
        assert!(litgpt_recipes().all(|(_, d, g, m)| d >= 1 && g >= d * m));
        // torchtune configs that shard the embedding and head separately (4 at 30b8519e8)
        assert_eq!(
            TORCHTUNE_SHARDED_CONFIGS
                .lines()
                .filter(|l| !l.starts_with('#') && *l != "config")
                .count(),
            4
        );
        let tt = |notes: &str| {
            let r = row(|r| {
                r.framework = "torchtune".into();
                r.parallelism = "fsdp-full".into();
                r.n_gpus = 8;
                r.notes = notes.into();
            });
            let m = map(&r, &spec("llama-2-7b")).unwrap();
            setting(&m, "fsdp_separate_embeddings").map(str::to_owned)
        };
        assert_eq!(
            tt("config llama3_1/70B_full (fsdp_cpu_offload=True)").as_deref(),
            Some("true")
        );
        assert_eq!(tt("config llama3_1/70B_lora: r16"), None);
        // nothing said: 1, and the report says it was assumed
        let (n, notes) = accum(&|_| {});
        assert_eq!(n, None);
        assert!(notes.iter().any(|x| x.contains("1 assumed")), "{notes:?}");
    }

    #[test]
    fn offload_follows_each_framework_and_gptq_needs_a_gptq_config() {
        let fsdp = map(
            &row(|r| {
                r.parallelism = "fsdp-full-offload".into();
                r.n_gpus = 4;
            }),
            &spec("llama-2-7b"),
        )
        .unwrap();
        assert_eq!(setting(&fsdp, "offload_params"), Some("true"));
        assert_eq!(
            setting(&fsdp, "offload_optimizer"),
            None,
            "FSDP's one CPUOffload"
        );
        assert_eq!(setting(&fsdp, "dp"), Some("4"));
        let zero = map(
            &row(|r| r.parallelism = "zero3-offload".into()),
            &spec("llama-2-7b"),
        )
        .unwrap();
        assert_eq!(setting(&zero, "offload_optimizer"), Some("true"));
        let gptq = |model: &str| map(&row(|r| r.quant = "gptq-int4".into()), &spec(model));
        assert_eq!(
            setting(&gptq("mistral-7b-v0.1-gptq").unwrap(), "method"),
            Some("lora")
        );
        assert!(gptq("mistral-7b-v0.1")
            .unwrap_err()
            .contains("quantization_config"));
        let e = map(&row(|r| r.n_gpus = 3), &spec("llama-2-7b"));
        assert!(e.is_ok(), "plain data parallelism over 3 GPUs");
        let e = map(
            &row(|r| {
                r.n_gpus = 3;
                r.tp = 2;
            }),
            &spec("llama-2-7b"),
        )
        .unwrap_err();
        assert!(e.contains("not a multiple"), "{e}");
    }

    #[test]
    fn metrics_pick_the_figure_the_tool_measured() {
        let metric = |m: &str, fw: &str| {
            map(
                &row(|r| {
                    r.metric = m.into();
                    r.framework = fw.into();
                }),
                &spec("llama-2-7b"),
            )
            .map(|x| x.metric)
        };
        assert_eq!(metric("allocated", "peft"), Ok(Metric::Allocated));
        assert_eq!(metric("active", "peft"), Ok(Metric::Allocated));
        assert_eq!(metric("reserved", "peft"), Ok(Metric::Reserved));
        assert_eq!(metric("nvidia-smi", "peft"), Ok(Metric::Device));
        assert_eq!(metric("unknown", "peft"), Ok(Metric::Device));
        assert_eq!(metric("unknown", "torchtune"), Ok(Metric::Reserved));
        assert!(metric("vllm-profile", "vllm").is_err());
    }

    #[test]
    fn unknown_lengths_take_the_longest_sample_the_notes_state() {
        let with = |seq: Option<u64>, task: &str, notes: &str| {
            map(
                &row(|r| {
                    r.seq_len = seq;
                    r.task = task.into();
                    r.notes = notes.into();
                }),
                &spec("llama-2-7b"),
            )
        };
        let padded = "alpaca_cleaned unpacked, padded per batch; length at the peak unknown (longest Alpaca sample ~1.3k tokens with the Llama-2 tokenizer)";
        let m = with(None, "train", padded).unwrap();
        assert_eq!(setting(&m, "seq_len"), Some("1300"));
        assert!(
            m.notes.iter().any(|n| n.contains("longest sample")),
            "{:?}",
            m.notes
        );
        let m = with(
            None,
            "train",
            "padded per batch; longest sample ~900 tokens",
        )
        .unwrap();
        assert_eq!(setting(&m, "seq_len"), Some("900"));
        // a stated length wins; no figure, no "padded per batch" or inference: unknown
        let m = with(Some(512), "train", padded).unwrap();
        assert_eq!(setting(&m, "seq_len"), Some("512"));
        for (task, notes) in [
            ("train", "padded per batch; length at the peak unknown"),
            ("train", "longest sample ~1.3k tokens"),
            ("train", "padded per batch; longest sample ~1.3k words"),
            ("infer", padded),
        ] {
            let e = with(None, task, notes).unwrap_err();
            assert!(e.contains("sequence length unknown"), "{task} {notes}: {e}");
        }
    }
}
