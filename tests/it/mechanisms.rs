//! One test per framework mechanism the field-accuracy issue models, each on a small
//! case, each naming the code it mirrors.

use serde_json::Value;

use crate::util::run;

/// Llama-3.2-1B LoRA (all-linear r16) at s512: the small case several mechanisms use.
const LORA_1B: [&str; 6] = [
    "--model",
    "llama-3.2-1b",
    "--method",
    "lora",
    "--seq-len",
    "512",
];

/// `llm-mem estimate ARGS --json`, parsed.
fn estimate_json(args: &[&str]) -> Value {
    let mut a = vec!["estimate"];
    a.extend_from_slice(args);
    a.push("--json");
    let r = run(&a);
    assert_eq!(r.code, 0, "{r:?}");
    serde_json::from_str(&r.stdout).unwrap()
}

fn peak(args: &[&str]) -> (u64, u64, u64) {
    let v = estimate_json(args);
    let p = &v["peak"];
    (
        p["allocated_bytes"].as_u64().unwrap(),
        p["reserved_bytes"].as_u64().unwrap(),
        p["device_bytes"].as_u64().unwrap(),
    )
}

/// bitsandbytes paged optimizers (optim/optimizer.py `get_state_buffer`, 0.49): the state
/// of every tensor with >= 1e5 elements is `F.get_paged` — cudaMallocManaged memory
/// wrapped by `torch.frombuffer`, outside PyTorch's caching allocator. So
/// `max_memory_allocated` / `reserved` do not count it, the device does (while
/// resident). Llama-3.2-1B full fine-tuning: paged AdamW holds the same fp32 states as
/// AdamW, and allocated drops by exactly the states of the tensors of >= 1e5 elements
/// (every weight matrix here; the 2048-element norms stay in the allocator).
#[test]
fn paged_optimizer_state_is_outside_the_allocator() {
    let base = [
        "--model",
        "llama-3.2-1b",
        "--dtype",
        "fp32",
        "--seq-len",
        "512",
    ];
    let with = |o: &str| {
        let mut a = base.to_vec();
        a.extend_from_slice(&["--optimizer", o]);
        peak(&a)
    };
    let (a_alloc, a_res, a_dev) = with("adamw");
    let (p_alloc, p_res, p_dev) = with("paged-adamw");
    assert_eq!(a_dev, p_dev, "the same states on the device");
    // llama-3.2-1b: 1 235 814 400 parameters, of which 16 norms x 2048 + the final
    // 2048 are below 1e5 elements: (n - 33 * 2048) x 2 states x 4 bytes are managed
    let managed = (1_235_814_400u64 - 33 * 2048) * 2 * 4;
    assert_eq!(a_alloc - p_alloc, managed);
    assert_eq!(a_res - p_res, managed);
}

fn per_layer(args: &[&str]) -> u64 {
    estimate_json(args)["activations"]["per_layer_bytes"]
        .as_u64()
        .unwrap()
}

/// bitsandbytes `MatMul4Bit.forward` before 0.43.2 (autograd/_functions.py:
/// `if any(ctx.needs_input_grad[:2]): ctx.tensors = (A, B)`; 0.43.2 keeps `(None, B)`,
/// PR #1270 "fix QLoRA mem bug: delete useless buffered activation"): a 4-bit linear
/// whose input needs a gradient keeps that input. Llama-3.2-1B QLoRA all-linear, s512:
/// each layer then also keeps the bf16 inputs the adapters' fp32 copies do not — the
/// two norm outputs (q/k/v and gate/up read them: 512 x 2048 x 2 B each) and the
/// act x up product down_proj reads (512 x 8192 x 2 B); o_proj's input is SDPA's
/// output, kept already. Versions from 0.43.2 on, and the default, keep none.
#[test]
fn old_bitsandbytes_4bit_linears_keep_their_input() {
    let base = [
        "--model",
        "llama-3.2-1b",
        "--method",
        "qlora",
        "--seq-len",
        "512",
    ];
    let with = |v: Option<&str>| {
        let mut a = base.to_vec();
        if let Some(v) = v {
            a.extend_from_slice(&["--bnb-version", v]);
        }
        per_layer(&a)
    };
    let (old, fixed, default) = (with(Some("0.42.0")), with(Some("0.43.2")), with(None));
    assert_eq!(old - fixed, 2 * (512 * 2048 * 2) + 512 * 8192 * 2);
    assert_eq!(fixed, default);
    assert_eq!(with(Some("0.43.1")), old);
    // LoRA on bf16 weights is not a bitsandbytes linear: no change
    let lora = LORA_1B;
    let mut old_lora = lora.to_vec();
    old_lora.extend_from_slice(&["--bnb-version", "0.42.0"]);
    assert_eq!(per_layer(&lora), per_layer(&old_lora));
    // a malformed version is an error naming the flag and the format
    let r = run(["estimate", "--model", "gpt2", "--bnb-version", "new"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--bnb-version") && r.stderr.contains("major.minor"),
        "{}",
        r.stderr
    );
}

/// The causal-LM loss by transformers version. Before 4.46 (e.g. 4.44
/// `LlamaForCausalLM.forward`) the model upcasts its logits (`logits = logits.float()`,
/// the half logits die) and the loss takes `shift_logits = logits[..., :-1,
/// :].contiguous()`, a second fp32 copy, into CrossEntropyLoss; from 4.46
/// (`loss/loss_utils.py ForCausalLMLoss`) the loss upcasts and shifts the labels with
/// `nn.functional.pad`, so the model's half logits stay the output. At the loss event
/// of Llama-3.2-1B, b4 × s1024 (V = 128 256), the old path holds the shifted copy
/// instead of the half logits, and its log_softmax covers b fewer rows.
#[test]
fn transformers_before_4_46_shifts_an_fp32_copy_of_the_logits() {
    let at_loss = |v: &str| -> u64 {
        let r = run([
            "estimate",
            "--model",
            "llama-3.2-1b",
            "--seq-len",
            "1024",
            "--batch",
            "4",
            "--transformers-version",
            v,
            "--json",
        ]);
        assert_eq!(r.code, 0, "{r:?}");
        let d: Value = serde_json::from_str(&r.stdout).unwrap();
        let ev = d["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["phase"] == "loss")
            .unwrap()
            .clone();
        ev["allocated_bytes"].as_u64().unwrap()
    };
    let (b, s, v) = (4u64, 1024u64, 128_256u64);
    let shift_copy = b * (s - 1) * v * 4;
    let half_logits = b * s * v * 2;
    let fewer_rows = b * v * 4;
    assert_eq!(
        at_loss("4.44.2") - at_loss("4.46.0"),
        shift_copy - half_logits - fewer_rows
    );
    assert_eq!(at_loss("4.46.0"), at_loss("5.24"));
}

/// A profile of your own (`--profile FILE`) sits under every other layer, may only set
/// estimate's settings, and a shipped `--framework` profile sits under it.
#[test]
fn a_user_profile_sets_defaults_that_flags_override() {
    let d = crate::util::TempDir::new("profile");
    let p = d.write(
        "my-stack.toml",
        "schema_version = 1\nname = \"my-stack\"\ndescription = \"FSDP1 with accelerate's upcast\"\n\
         [settings]\nfsdp_version = 1\nfsdp_upcast = true\n",
    );
    let fsdp = ["--model", "llama-3.2-1b", "--fsdp", "full", "--dp", "4"];
    let with = |extra: &[&str]| {
        let mut a = fsdp.to_vec();
        a.extend_from_slice(extra);
        peak(&a).0
    };
    let mine = with(&["--profile", &p]);
    assert_eq!(mine, with(&["--framework", "hf-trainer"]));
    assert_eq!(
        with(&["--profile", &p, "--fsdp-upcast", "false"]),
        with(&["--fsdp-version", "1"])
    );
    let r = run(["estimate", "--model", "gpt2", "--profile", &p]);
    assert!(
        r.stderr.contains("llm-mem: note: profile my-stack"),
        "{}",
        r.stderr
    );
    let bad = d.write(
        "bad.toml",
        "schema_version = 1\nname = \"x\"\ndescription = \"\"\n[settings]\nmagic_speedup = 2\n",
    );
    let r = run(["estimate", "--model", "gpt2", "--profile", &bad]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("settings.magic_speedup: not a setting"),
        "{}",
        r.stderr
    );
}

/// LoRA adapters in the model's dtype (`--lora-dtype model`: torchtune's and litgpt's
/// LoRALinear, peft with `autocast_adapter_dtype=False`) against peft's default fp32
/// adapters (`tuners/lora/layer.py`: `x = self._cast_input_dtype(x,
/// lora_A.weight.dtype)`): no fp32 input copy per adapter, bf16 adapter weights,
/// gradients and AdamW state. The ledger's per-tensor side is held to the trace probe's
/// `lora_*_model` rows (tests/it/trace.rs); here the per-layer total of Llama-3.2-1B,
/// all-linear r16, s512, and DeepSpeed's bf16 engine, which casts the adapters too.
#[test]
fn adapters_in_the_model_dtype_keep_no_fp32_copies() {
    let base = LORA_1B;
    let with = |d: &'static str| {
        let mut a = base.to_vec();
        a.extend_from_slice(&["--lora-dtype", d]);
        per_layer(&a)
    };
    let (fp32, model) = (with("fp32"), with("model"));
    assert_eq!(fp32, per_layer(&base), "fp32 is peft's default");
    assert!(model < fp32, "{model} vs {fp32}");
    // the saved set shrinks by the fp32 copies of the 7 adapted inputs (q, k, v of one
    // norm output; o; gate, up of the other; down) and the fp32 lora_A outputs,
    // replaced by bf16 ones: lora_A outputs (512 x 16) and the bf16 inputs nothing
    // else saved (the two norm outputs and act x up)
    let t = 512u64;
    let fp32_copies = t * (2048 * 6 + 8192) * 4 + 7 * t * 16 * 4;
    let bf16_kept = t * (2048 * 2 + 8192) * 2 + 7 * t * 16 * 2;
    assert_eq!(fp32 - model, fp32_copies - bf16_kept);
    // DeepSpeed's bf16 engine casts the whole module, adapters included
    let zero = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(&["--zero", "2", "--dp", "2"]);
        a.extend_from_slice(extra);
        per_layer(&a)
    };
    assert_eq!(zero(&[]), zero(&["--lora-dtype", "model"]));
    assert_eq!(zero(&[]), model);
}

/// bitsandbytes LLM.int8 weights (`load_in_8bit`; nn/modules.py `Int8Params._quantize`:
/// `CB, SCB, _ = int8_vectorwise_quant(B)` — CB int8 like the weight, SCB one fp32
/// absmax per output row), fp16 for the rest: GPT-2's weights under `--dtype int8` are
/// its linear weights in one byte each, 4 bytes per output row of each, and the rest in
/// two bytes. Training over them is refused, naming the value.
#[test]
fn int8_inference_weights_are_one_byte_plus_row_scales() {
    let weights = |d: &str| {
        estimate_json(&["--model", "gpt2", "--task", "infer", "--dtype", d])["components_at_peak"]
            ["weights"]
            .as_u64()
            .unwrap()
    };
    // GPT-2 small: 12 layers of c_attn (768 -> 2304), c_proj (768 -> 768), c_fc
    // (768 -> 3072), mlp c_proj (3072 -> 768); 124 439 808 parameters in all
    let linear: u64 = 12 * (768 * 2304 + 768 * 768 + 768 * 3072 + 3072 * 768);
    let rows: u64 = 12 * (2304 + 768 + 3072 + 768);
    assert_eq!(
        weights("int8"),
        linear + rows * 4 + (124_439_808 - linear) * 2
    );
    let r = run(["estimate", "--model", "gpt2", "--dtype", "int8"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("int8") && r.stderr.contains("--task infer"),
        "{}",
        r.stderr
    );
}

/// LoRA dropout (peft tuners/lora/layer.py 0.21 `Linear.forward`: `x =
/// self._cast_input_dtype(x, lora_A.weight.dtype)` then `lora_B(lora_A(dropout(x)))`,
/// one `nn.Dropout` per adapted module; litgpt lora.py `LoRALinear.forward` the same):
/// lora_A keeps the dropped copy instead of the cast input, and the dropout keeps its
/// mask (bool on CUDA) when the input needs a gradient. Llama-3.2-1B all-linear r16,
/// s512, fp32 adapters: every adapter's input gets a one-byte mask — q, k, v each on
/// the first norm's output, o on the attention output, gate and up on the second
/// norm's output (h = 2048 each), down on act × up (i = 8192). The trace probe checks
/// the same on eight families (`lora_*_drop` rows of tests/data/trace/activations.csv).
#[test]
fn lora_dropout_keeps_a_mask_per_adapter() {
    let with = |p: Option<&str>| {
        let mut a = LORA_1B.to_vec();
        if let Some(p) = p {
            a.extend_from_slice(&["--lora-dropout", p]);
        }
        per_layer(&a)
    };
    let (none, drop) = (with(None), with(Some("0.05")));
    assert_eq!(drop - none, 512 * (6 * 2048 + 8192));
    assert_eq!(with(Some("0")), none);
    // the probability does not change the bytes
    assert_eq!(with(Some("0.3")), drop);
    // out of range: errors naming the setting
    for (args, want) in [
        (vec!["--lora-dropout", "1"], "0 <= p < 1"),
        (vec!["--lora-dropout", "-0.1"], "0 <= p < 1"),
        (vec!["--lora-dropout", "nan"], "0 <= p < 1"),
    ] {
        let mut a = vec!["estimate"];
        a.extend_from_slice(&LORA_1B);
        a.extend_from_slice(&args);
        let r = run(&a);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("--lora-dropout") && r.stderr.contains(want),
            "{args:?}: {}",
            r.stderr
        );
    }
    // without LoRA it changes nothing, and says so
    let r = run(["estimate", "--model", "gpt2", "--lora-dropout", "0.1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("--lora-dropout") && r.stderr.contains("no effect"),
        "{}",
        r.stderr
    );
}

/// peft's other tuners (`--peft`), each its layer's forward (peft 0.21): on
/// Llama-3.2-1B, r16 on the attention projections (q and o: out 2048, k and v: out
/// 512; Σout = 5120), s512, fp32 adapters. DoRA (tuners/lora/dora.py
/// `DoraLinearLayer.forward`) keeps, besides LoRA's saves, the base output (bf16) and
/// the LoRA result (fp32) for its two products, plus three out-sized fp32 vectors:
/// 512 · 5120 · (2 + 4) + 3 · 5120 · 4 bytes per layer, and a magnitude of out per
/// linear. LoRA-FA (optimizers/lorafa.py: `lora_A.requires_grad_(False)`) keeps no
/// fp32 input copy: 4 adapters · 512 · 2048 · 4 bytes less, and trains lora_B only.
/// (IA)³ has no rank. The trace probe checks every tuner on three families
/// (`tests/data/trace/peft.csv`).
#[test]
fn peft_tuners_keep_what_their_forward_saves() {
    let with = |p: &str| {
        let mut a = LORA_1B.to_vec();
        a.extend_from_slice(&["--lora-targets", "attn", "--peft", p]);
        let j = estimate_json(&a);
        (
            j["activations"]["per_layer_bytes"].as_u64().unwrap(),
            j["model"]["params_trainable"].as_u64().unwrap(),
            j["workload"]["lora"]["peft"].as_str().unwrap().to_string(),
        )
    };
    let (lora, lora_p, _) = with("lora");
    let (dora, dora_p, name) = with("dora");
    assert_eq!(name, "dora");
    assert_eq!(dora - lora, 512 * 5120 * 6 + 3 * 5120 * 4);
    assert_eq!(
        dora_p - lora_p,
        16 * 5120,
        "a magnitude per output, 16 layers"
    );
    let (fa, fa_p, _) = with("lora-fa");
    assert_eq!(lora - fa, 4 * 512 * 2048 * 4);
    assert_eq!(fa_p, 16 * 16 * 5120, "lora_B only");
    let (_, ia3_p, _) = with("ia3");
    assert_eq!(
        ia3_p,
        16 * 5120,
        "one vector of out per attention projection"
    );
    // errors name the setting and what is accepted
    for (args, want) in [
        (vec!["--peft", "ia3", "--lora-rank", "8"], "no rank"),
        (vec!["--peft", "vblora"], "dora"),
    ] {
        let mut a = vec!["estimate"];
        a.extend_from_slice(&LORA_1B);
        a.extend_from_slice(&args);
        let r = run(&a);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
    let r = run(["estimate", "--model", "gpt2", "--peft", "dora"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--method lora"), "{}", r.stderr);
}

/// Gradient accumulation under FSDP's `no_sync` (torch
/// `distributed/fsdp/_runtime_utils.py` `_post_backward_hook` returns before
/// `_reduce_grad` without `_sync_gradients`; entered by Lightning Fabric's
/// `no_backward_sync`, accelerate's `accumulate` and the HF Trainer): between
/// micro-batches every rank holds the unsharded gradients. Llama-3.2-1B full bf16, FSDP1
/// over 4 ranks, 2 micro-batches: at the second micro-batch's loss the no_sync run holds
/// exactly the unsharded minus the sharded gradients more (2 B per parameter × 3/4, each
/// shard rounded to the byte); the optimizer step sees the same sharded gradients; with
/// one micro-batch, or without no_sync, nothing changes. The litgpt profile sets it.
#[test]
fn fsdp_no_sync_keeps_unsharded_gradients_between_micro_batches() {
    let at = |extra: &[&'static str], event: &str| -> u64 {
        let mut a = full_1b(&["--fsdp", "full", "--fsdp-version", "1", "--dp", "4"]);
        a.extend_from_slice(extra);
        allocated_at(&a, event)
    };
    let accum = ["--grad-accum", "2"];
    let loss2 = "logits and loss (micro-batch 2)";
    let with = |sync: &'static str, ev: &str| {
        let mut a = accum.to_vec();
        a.extend_from_slice(&["--fsdp-no-sync", sync]);
        at(&a, ev)
    };
    let p = 1_235_814_400u64; // Llama-3.2-1B, tied
    let extra = with("true", loss2) - with("false", loss2);
    let want = p * 2 - p * 2 / 4;
    assert!(extra.abs_diff(want) <= 64, "{extra} vs {want}");
    assert_eq!(
        with("true", "optimizer step"),
        with("false", "optimizer step")
    );
    assert_eq!(
        at(&["--fsdp-no-sync", "true"], "optimizer step"),
        at(&[], "optimizer step")
    );
    let mut lit = accum.to_vec();
    lit.extend_from_slice(&["--framework", "litgpt"]);
    let mut lit_off = lit.clone();
    lit_off.extend_from_slice(&["--fsdp-no-sync", "false"]);
    assert!(at(&lit, loss2) - at(&lit_off, loss2) >= want - 64);
}

/// A tied embedding's gradient is counted once under data-parallel sharding, as on one
/// GPU: Llama-3.2-1B (tied) full bf16 AdamW under DeepSpeed ZeRO-1 over 2 ranks holds
/// bf16 weights and gradients (2 + 2 B per parameter) and half of the fp32 gradients,
/// master weights and AdamW states ((4 + 4 + 8) / 2 B): 12 B per parameter, in the
/// steady state and at the optimizer step. The timeline used to drop the tied matrix's
/// gradients under sharded layouts (4 B × 262,668,288 at the step).
#[test]
fn tied_embedding_gradient_is_counted_once_when_sharded() {
    let d = estimate_json(&full_1b(&[
        "--zero",
        "1",
        "--dp",
        "2",
        "--zero-allgather-bucket",
        "0",
        "--zero-reduce-bucket",
        "0",
        "--cublas-workspace",
        "0",
    ]));
    let rank = &d["per_rank"][0];
    assert_eq!(
        rank["model_states_bytes"].as_u64().unwrap(),
        12 * 1_235_814_400
    );
    // the timeline's optimizer step holds them all (and nothing else, buckets off)
    let step = rank["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "optimizer step")
        .unwrap()["allocated_bytes"]
        .as_u64()
        .unwrap();
    assert_eq!(step, 12 * 1_235_814_400);
}

/// Llama-3.2-1B full bf16 fine-tuning at s512: the small case of the torchtune
/// mechanisms, followed by `extra`.
fn full_1b(extra: &[&'static str]) -> Vec<&'static str> {
    let mut a = vec![
        "--model",
        "llama-3.2-1b",
        "--dtype",
        "bf16",
        "--seq-len",
        "512",
    ];
    a.extend_from_slice(extra);
    a
}

/// Llama-3.2-1B at s512 under the peft tuner `peft` (`--method lora --peft PEFT`),
/// followed by `extra`.
fn peft_1b(peft: &'static str, extra: &[&'static str]) -> Vec<&'static str> {
    let mut a = vec![
        "--model",
        "llama-3.2-1b",
        "--method",
        "lora",
        "--peft",
        peft,
        "--seq-len",
        "512",
    ];
    a.extend_from_slice(extra);
    a
}

/// The per-layer saved bytes of an estimate's JSON.
fn per_layer_of(d: &Value) -> u64 {
    d["activations"]["per_layer_bytes"].as_u64().unwrap()
}

/// `llm-mem estimate ARGS`: its error message (stderr), the run failing with exit 2.
fn estimate_error(args: &[&str]) -> String {
    let mut a = vec!["estimate"];
    a.extend_from_slice(args);
    let r = run(&a);
    assert_eq!(r.code, 2, "{r:?}");
    r.stderr
}

/// `llm-mem estimate` on Llama-3.2-1B with `--method METHOD --peft PEFT --lora-rank
/// RANK --lora-targets TARGETS`: its error message (the run failing with exit 2).
fn peft_1b_error(method: &str, peft: &str, rank: &str, targets: Option<&str>) -> String {
    let mut a = vec![
        "--model",
        "llama-3.2-1b",
        "--method",
        method,
        "--peft",
        peft,
        "--lora-rank",
        rank,
    ];
    if let Some(t) = targets {
        a.extend_from_slice(&["--lora-targets", t]);
    }
    estimate_error(&a)
}

/// The allocated bytes at the timeline event named `event`.
fn allocated_at(args: &[&str], event: &str) -> u64 {
    let d = estimate_json(args);
    d["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == event)
        .unwrap_or_else(|| panic!("no event {event:?} in {args:?}"))["allocated_bytes"]
        .as_u64()
        .unwrap()
}

/// torchtune's `optimizer_in_bwd` (torchtune `modules/optim.py` `OptimizerInBackward`:
/// one optimizer per parameter, stepped and cleared from
/// `register_post_accumulate_grad_hook`): Llama-3.2-1B full bf16 with fused AdamW. At
/// layer 1's backward the usual step holds the gradients of layers 2–15 and of the
/// final norm (14 × 60,821,504 + 2,048 parameters × 2 B); with the optimizer in backward
/// they were already stepped and freed, and the tied head's gradient (in autograd's
/// input buffer until the embedding's backward) is held in both. The step after
/// backward holds no gradients; accumulation is refused, as torchtune's recipes do.
#[test]
fn optimizer_in_backward_frees_each_gradient_when_stepped() {
    let with = |extra: &[&'static str]| {
        let mut a = full_1b(&["--grad-ckpt", "full", "--optimizer-in-bwd"]);
        a.extend_from_slice(extra);
        a
    };
    let at = |on: &'static str, ev: &str| allocated_at(&with(&[on]), ev);
    let diff = at("false", "layer 1 backward") - at("true", "layer 1 backward");
    assert_eq!(diff, (14 * 60_821_504 + 2_048) * 2);
    let weights_and_state = at("true", "weights and optimizer state resident");
    assert_eq!(
        at("true", "optimizer step (ran inside backward)"),
        weights_and_state
    );
    assert!(at("false", "optimizer step") > weights_and_state + 2 * 1_235_814_400 - 64);
    // refused with accumulation, and where DeepSpeed steps its own optimizer after
    // backward
    for (extra, needles) in [
        (
            &["true", "--grad-accum", "2"][..],
            ["optimizer_in_bwd", "grad_accum 1"],
        ),
        (
            &["true", "--zero", "2", "--dp", "2"][..],
            ["--optimizer-in-bwd", "--zero"],
        ),
    ] {
        let e = estimate_error(&with(extra));
        assert!(needles.iter().all(|n| e.contains(n)), "{e}");
    }
}

/// torchtune's activation offloading (torchtune `training/_activation_offloading.py`
/// `OffloadActivations`, five tensors in `fwd_stash`): under full checkpointing each
/// layer of Llama-3.2-1B saves its input (512 tokens × 2,048 × 2 B = 2 MiB); at the loss
/// the 16 layers' inputs are on the host but for the last five, and at the last layer's
/// backward all fifteen below it are. Offloading needs checkpointing, as in torchtune.
#[test]
fn activation_offload_keeps_only_the_stash_on_the_gpu() {
    let base = full_1b(&["--grad-ckpt", "full"]);
    let input = 512 * 2048 * 2;
    assert_eq!(per_layer(&base), input);
    let at = |on: &'static str, ev: &str| {
        allocated_at(
            &full_1b(&["--grad-ckpt", "full", "--activation-offload", on]),
            ev,
        )
    };
    let at_loss = at("false", "logits and loss") - at("true", "logits and loss");
    assert_eq!(at_loss, 11 * input);
    let last = at("false", "layer 15 backward") - at("true", "layer 15 backward");
    assert_eq!(last, 15 * input);
    let e = estimate_error(&["--model", "llama-3.2-1b", "--activation-offload", "true"]);
    assert!(
        e.contains("activation_offload") && e.contains("--grad-ckpt full"),
        "{e}"
    );
}

/// torchtune's chunked cross-entropy (`CEWithChunkedOutputLoss`, 8 chunks) eager and
/// under `torch.compile` (`apply_compile_strategy` compiles `compute_cross_entropy`):
/// Llama-3.2-1B full bf16, 512 tokens, T × V = 512 × 128,256 logits. At the loss the
/// eager run holds every chunk's fp32 log-probabilities (T·V·4 B) and one chunk's fp32
/// copy (T·V/8 · 4 B) beside the list of bf16 chunks both runs hold; the compiled
/// graphs save those bf16 chunks themselves plus two fp32 values per token (the
/// partitioner's choice, measured with torch 2.15's inductor on CPU). In the loss's
/// backward the bf16 list is gone: eager keeps the fp32 log-probabilities and makes one
/// chunk's fp32 gradient; compiled keeps the bf16 chunks. (Checkpointed layers, whose
/// saved inputs compile does not change.)
#[test]
fn compiled_chunked_cross_entropy_saves_the_half_precision_chunks() {
    let at = |compile: &'static str, ev: &str| {
        allocated_at(
            &full_1b(&[
                "--loss",
                "chunked",
                "--grad-ckpt",
                "full",
                "--compile",
                compile,
            ]),
            ev,
        )
    };
    let (t, tv) = (512u64, 512u64 * 128_256);
    let chunk = tv / 8;
    assert_eq!(
        at("false", "logits and loss") - at("true", "logits and loss"),
        tv * 4 + chunk * 4 - 2 * t * 4
    );
    assert_eq!(
        at("false", "loss backward") - at("true", "loss backward"),
        tv * 2 + chunk * 4 - 2 * t * 4
    );
}

/// The chunked head's backward (torch/csrc/autograd/engine.cpp `CompareNodeTaskTime`:
/// the ready node with the larger sequence number runs first, so every chunk's
/// cross-entropy backward runs before the first chunk's matmul backward; checked with
/// tensor hooks on torch 2.15): all the logits' gradients exist at the head's backward,
/// as with the unchunked loss, and a trained head adds each chunk's full weight
/// gradient beside the sum autograd's input buffer holds — Llama-3.2-1B full bf16:
/// 128,256 × 2,048 × 2 B more than the standard loss at that moment.
#[test]
fn a_chunked_trained_head_sums_one_weight_gradient_per_chunk() {
    let at = |loss: &'static str| allocated_at(&full_1b(&["--loss", loss]), "lm_head backward");
    assert_eq!(at("chunked") - at("standard"), 128_256 * 2_048 * 2);
}

/// PEFT LN tuning (peft 0.21 `tuners/ln_tuning/layer.py`: a trained deep copy of each
/// targeted norm; targets from `TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING`):
/// Llama-3.2-1B trains `input_layernorm`, `post_attention_layernorm` (16 layers) and
/// `norm`: 33 × 2,048 weights; Qwen2.5-0.5B only `post_attention_layernorm`: 24 × 896.
/// No linear is adapted, so no rank and no targets; a model type peft has no mapping
/// for (GPT-NeoX) is refused. The saved activations equal the trace probe's
/// (`tests/data/trace/peft.csv`, mode `ln_tuning`, checked in `tests/it/trace.rs`).
#[test]
fn ln_tuning_trains_the_norms_peft_maps_for_the_model_type() {
    let trainable = |model: &str| {
        estimate_json(&["--model", model, "--method", "lora", "--peft", "ln-tuning"])["model"]
            ["params_trainable"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(trainable("llama-3.2-1b"), 33 * 2_048);
    assert_eq!(trainable("qwen2.5-0.5b"), 24 * 896);
    let e = estimate_error(&peft_1b("ln-tuning", &["--lora-targets", "q_proj"]));
    assert!(
        e.contains("--lora-targets") && e.contains("ln-tuning"),
        "{e}"
    );
    let e = estimate_error(&[
        "--model",
        "pythia-1b",
        "--method",
        "lora",
        "--peft",
        "ln-tuning",
    ]);
    assert!(e.contains("gpt_neox"), "{e}");
}

/// PEFT prompt tuning (peft 0.21 `tuners/prompt_tuning/model.py` `PromptEmbedding`,
/// `PeftModelForCausalLM.forward`): `--virtual-tokens 200` on Llama-3.2-1B trains
/// 200 × 2,048 prompt embeddings and the model runs 512 + 200 positions (every layer's
/// input requiring grad). The number of virtual tokens is required; a rank or virtual
/// tokens without prompt tuning are refused. The trace probe checks the bytes
/// (`tests/data/trace/peft.csv`, mode `prompt_tuning`, exact on four families).
#[test]
fn prompt_tuning_prepends_its_virtual_tokens() {
    let d = estimate_json(&peft_1b("prompt-tuning", &["--virtual-tokens", "200"]));
    assert_eq!(d["model"]["params_trainable"].as_u64(), Some(200 * 2_048));
    assert_eq!(d["workload"]["seq_len"].as_u64(), Some(712));
    for (args, needle) in [
        (
            vec!["--method", "lora", "--peft", "prompt-tuning"],
            "--virtual-tokens N",
        ),
        (
            vec!["--method", "lora", "--virtual-tokens", "8"],
            "only with --peft prompt-tuning",
        ),
        (
            vec![
                "--method",
                "lora",
                "--peft",
                "prompt-tuning",
                "--virtual-tokens",
                "8",
                "--lora-rank",
                "8",
            ],
            "no rank with --peft prompt-tuning",
        ),
    ] {
        let mut a = vec!["--model", "llama-3.2-1b"];
        a.extend(args);
        let e = estimate_error(&a);
        assert!(e.contains(needle), "{needle}: {e}");
    }
}

/// PEFT prefix tuning (peft 0.21 `tuners/prefix_tuning/model.py` `PrefixEncoder`,
/// `PeftModelForCausalLM.forward`: the prefix as the layers' past keys and values):
/// Llama-3.2-1B with 32 virtual tokens trains 32 × 16 layers × 2 × 512 (8 kv heads ×
/// 64) values; every layer concatenates them before its keys and values, so the
/// attention reads 512 + 32 keys under SDPA's explicit mask, and more is saved per
/// layer than with 8 virtual tokens. peft refuses it under gradient checkpointing, so
/// does the tool. The trace probe checks the bytes (`tests/data/trace/peft.csv`, mode
/// `prefix_tuning`: within 0.09% on four families).
#[test]
fn prefix_tuning_extends_every_layers_keys_and_values() {
    let run = |n: &'static str| estimate_json(&peft_1b("prefix-tuning", &["--virtual-tokens", n]));
    let (d32, d8) = (run("32"), run("8"));
    assert_eq!(
        d32["model"]["params_trainable"].as_u64(),
        Some(32 * 16 * 2 * 512)
    );
    assert_eq!(d32["workload"]["seq_len"].as_u64(), Some(512));
    let per = per_layer_of;
    // k and v for 24 more keys (8 kv heads x 64, bf16), the SDPA inputs and the cache
    assert!(per(&d32) > per(&d8), "{} vs {}", per(&d32), per(&d8));
    let e = estimate_error(&peft_1b(
        "prefix-tuning",
        &["--virtual-tokens", "8", "--grad-ckpt", "full"],
    ));
    assert!(
        e.contains("does not work with gradient checkpointing"),
        "{e}"
    );
}

/// PEFT LoHa (peft 0.21 `tuners/loha/layer.py`: `HadaWeight` builds the full delta
/// weight `(w1a @ w1b) * (w2a @ w2b) * scale` each forward, then `F.linear(x.to(fp32),
/// ΔW)`): Llama-3.2-1B r8 on q_proj, v_proj trains twice LoRA's factors (2 · 8 · (in +
/// out) per linear: 1,703,936), and each layer keeps its fp32 ΔW for the input's
/// gradient — 2,048² + 512 · 2,048 elements × 4 B — where LoRA keeps lora_A's
/// 512 × 8 fp32 outputs; both keep the fp32 input copy. The trace probe checks the
/// bytes (`tests/data/trace/peft.csv`, mode `loha_attn`, real tensors).
#[test]
fn loha_keeps_the_full_delta_weight_of_each_adapted_linear() {
    let run = |peft: &'static str| {
        estimate_json(&peft_1b(
            peft,
            &["--lora-rank", "8", "--lora-targets", "q_proj,v_proj"],
        ))
    };
    let (loha, lora) = (run("loha"), run("lora"));
    assert_eq!(loha["model"]["params_trainable"].as_u64(), Some(1_703_936));
    let per = per_layer_of;
    let delta_w = (2_048 * 2_048 + 512 * 2_048) * 4;
    assert_eq!(per(&loha) - per(&lora), delta_w - 2 * 512 * 8 * 4);
}

/// PEFT OFT (peft 0.21 `tuners/oft/layer.py`: r rotation blocks of in / r on the input,
/// each from `bs·(bs−1)/2` trained values by the Cayley–Neumann series): Llama-3.2-1B
/// r16 on q_proj, v_proj (in 2,048: blocks of 128) trains 16 · 128 · 127 / 2 per linear
/// (260,096 in all). Each adapted linear keeps the series' Q, Q², Q³ and the rotation,
/// 4 · r · (in / r)² fp32 values, beside its input's block-major fp32 copy (the same at
/// any r): halving the blocks' count from 32 to 16 adds 16 · 2,048² · (1/16 − 1/32) B
/// per linear. A rank that does not divide in_features is refused (peft adjusts the
/// block size then; not modelled). The trace probe checks the bytes
/// (`tests/data/trace/peft.csv`, mode `oft_attn`: exact on four families).
#[test]
fn oft_rotates_each_adapted_input_by_its_blocks() {
    let run = |rank: &'static str| {
        estimate_json(&peft_1b(
            "oft",
            &["--lora-rank", rank, "--lora-targets", "q_proj,v_proj"],
        ))
    };
    let (r16, r32) = (run("16"), run("32"));
    assert_eq!(
        r16["model"]["params_trainable"].as_u64(),
        Some(16 * 2 * 16 * (128 * 127 / 2))
    );
    let per = per_layer_of;
    assert_eq!(per(&r16) - per(&r32), 2 * (16 * 2_048 * 2_048 / 32));
    let e = peft_1b_error("lora", "oft", "3", Some("q_proj"));
    assert!(e.contains("oft") && e.contains("divides"), "{e}");
}

/// torchtune's `custom_sharded_layers: ['tok_embeddings', 'output']` (its 8B/70B full
/// configs; `--fsdp-separate-embeddings`): FSDP2 units of their own for the embedding
/// and the head, so neither stays gathered in the root unit through the layers, and
/// the head's gradient is reduce-scattered right after its backward instead of waiting
/// unsharded for the embedding's. Llama-3.1-8B (untied, 128,256 × 4,096 = 525,336,576
/// per matrix) full bf16 FSDP over 8: at the last layer's backward the root held both
/// matrices gathered and the head's gradient, 3 × 525,336,576 × 2 B more.
#[test]
fn separate_embedding_units_leave_the_root_unit_small() {
    let at = |v: &'static str| {
        let a = [
            "--model",
            "llama-3.1-8b",
            "--dtype",
            "bf16",
            "--seq-len",
            "512",
            "--fsdp",
            "full",
            "--dp",
            "8",
            "--fsdp-separate-embeddings",
            v,
        ];
        let d = estimate_json(&a);
        d["per_rank"][0]["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"] == "layer 31 backward")
            .unwrap()["allocated_bytes"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(at("false") - at("true"), 3 * 525_336_576 * 2);
}

/// PEFT BOFT (peft 0.21 `tuners/boft/layer.py`, one butterfly factor): the rank slot is
/// `boft_block_size`. Llama-3.2-1B, block 4 on q_proj (2,048 → 2,048) and v_proj
/// (2,048 → 512) trains 512 blocks of 4 × 4 plus the output scaling per linear:
/// (8,192 + 2,048) + (8,192 + 512) per layer, 303,104 in all. The fp32 permutation
/// buffer `boft_P` (in × in) lives on the device unless `--boft-perm-on-host` (a model
/// never moved after `get_peft_model`): 16 layers × 2 × 2,048² × 4 B apart. A block
/// size that does not divide in_features, and BOFT over 4-bit weights, are refused.
/// The trace probe checks the activations (`tests/data/trace/peft.csv`, mode
/// `boft_attn` on real tensors).
#[test]
fn boft_trains_blocks_and_keeps_a_full_rotation_per_adapted_input() {
    let run = |extra: &[&'static str]| {
        let mut a = vec!["--lora-rank", "4", "--lora-targets", "q_proj,v_proj"];
        a.extend_from_slice(extra);
        estimate_json(&peft_1b("boft", &a))
    };
    let (device, host) = (run(&[]), run(&["--boft-perm-on-host"]));
    assert_eq!(device["model"]["params_trainable"].as_u64(), Some(303_104));
    let weights = |d: &Value| d["components_at_peak"]["weights"].as_u64().unwrap();
    assert_eq!(
        weights(&device) - weights(&host),
        16 * 2 * 2_048 * 2_048 * 4
    );
    // the activations do not depend on where the buffer lives (each forward copies it)
    assert_eq!(per_layer_of(&device), per_layer_of(&host));
    let e = peft_1b_error("lora", "boft", "3", Some("q_proj"));
    assert!(e.contains("boft") && e.contains("divid"), "{e}");
    let e = peft_1b_error("qlora", "boft", "4", None);
    assert!(e.contains("qlora"), "{e}");
}

/// PEFT OSF (`tuners/osf`): r trained singular directions per adapted linear, U_low
/// (out × r), S_low (r), V_low (r × in). Llama-3.2-1B r16 on q_proj (2,048²) and v_proj
/// (512 × 2,048): 16 · 4,097 + 16 · 2,561 per layer, 1,704,448 in all. peft 0.21 keeps
/// the factors' initial copies and the non-square high factor (v_proj's V_high, 496 ×
/// 2,048) in bf16 and runs a factored delta; peft < 0.21 (`--peft-version 0.19.2`)
/// keeps U_high, S_high, V_high instead and rebuilds each weight every forward, which
/// the linear keeps (fp32 under autocast_adapter_dtype) — per layer (2,048² + 512 ·
/// 2,048) · 4 B plus U_low·S_low, less the factored path's B, x·Bᵀ and A. The trace
/// probe checks both (`osf_attn` with peft 0.21.2, `osf_attn_legacy` with 0.20.0).
#[test]
fn osf_trains_the_low_singular_directions_as_its_peft_version_runs_them() {
    let run = |extra: &[&'static str]| {
        let mut a = vec!["--lora-rank", "16", "--lora-targets", "q_proj,v_proj"];
        a.extend_from_slice(extra);
        estimate_json(&peft_1b("osf", &a))
    };
    let (now, old) = (run(&[]), run(&["--peft-version", "0.19.2"]));
    assert_eq!(now["model"]["params_trainable"].as_u64(), Some(1_704_448));
    assert_eq!(old["model"]["params_trainable"].as_u64(), Some(1_704_448));
    let weights = |d: &Value| d["components_at_peak"]["weights"].as_u64().unwrap();
    let buffers_now: u64 = (16 * 4_097 + 16 * 2_561) + 496 * 2_048;
    let buffers_old: u64 = 2_032 * (2_048 + 2_048 + 1) + 496 * (512 + 2_048 + 1);
    assert_eq!(
        weights(&old) - weights(&now),
        16 * (buffers_old - buffers_now) * 2
    );
    let rebuilt = (2_048 * 2_048 + 512 * 2_048) * 4 + (2_048 + 512) * 16 * 4;
    let factored = 2 * (32 * 2_048 * 4) + 2 * (512 * 32 * 4) + (2_048 + 512) * 32 * 4;
    assert_eq!(per_layer_of(&old) - per_layer_of(&now), rebuilt - factored);
    let e = peft_1b_error("lora", "osf", "512", Some("v_proj"));
    assert!(e.contains("osf") && e.contains("min"), "{e}");
}

/// DeepSpeed ZeRO-3 gathers parameters and fills its gradient bucket in the engine's
/// parameter dtype (DeepSpeed 0.19 `partition_parameters.py` `_all_gather`: `ds_numel`
/// elements of `param.dtype`; `stage3.py` `__ipg_bucket_flat_buffer` of the trainable
/// parameters' dtype): fp32 without DeepSpeed's bf16/fp16, so twice the bytes.
/// Llama-3.2-1B LoRA, everything offloaded, at the loss backward: the embedding (the
/// largest module, 128,256 × 2,048) gathered and its gradient slot, the 5·10⁷ prefetch
/// bucket and the 5·10⁸ gradient bucket.
#[test]
fn zero3_buffers_take_the_engines_parameter_dtype() {
    let temporaries = |dtype: &'static str| {
        let zero3 = [
            "--zero",
            "3",
            "--dp",
            "1",
            "--offload-params",
            "--offload-optimizer",
            "--dtype",
            dtype,
        ];
        estimate_json(&[&LORA_1B[..], &zero3].concat())["components_at_peak"]["temporaries"]
            .as_u64()
            .unwrap()
    };
    let embed: u64 = 128_256 * 2_048;
    let elements = (embed + 50_000_000) + embed + 500_000_000;
    assert_eq!(temporaries("bf16"), elements * 2);
    assert_eq!(temporaries("fp32"), elements * 4);
}
