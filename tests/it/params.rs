//! Parameter counts against PyTorch ground truth (`tests/data/params.json`, measured with
//! transformers + peft) and against published model sizes.

use llm_mem::arch::params::{self, ParamCounts};
use llm_mem::arch::LoraTargets;
use llm_mem::hf::config::parse_config;
use llm_mem::hf::presets;
use llm_mem::{Error, ModelSpec};
use serde_json::Value;

use crate::util::{preset, read_data};

fn oracle() -> Value {
    serde_json::from_str(&read_data("params.json")).unwrap()
}

/// `tests/data/configs/<model>/config.json` through `parse_config` itself (the
/// function under test here; `util::config_spec` goes through the file loader).
fn spec_of(model: &str) -> ModelSpec {
    parse_config(&read_data(&format!("configs/{model}/config.json")), model).unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

/// The oracle's dense models and LLaVA-1.5 (its CLIP tower and projector in `vision`;
/// peft's all-linear adapts their 146 linears too, `attn` the language model's only).
const DENSE: [&str; 4] = ["llama-2-7b", "qwen2.5-0.5b", "gpt2", "llava-1.5-7b"];

#[test]
fn totals_and_breakdown_match_pytorch() {
    let o = oracle();
    for m in DENSE {
        let r = &o[m];
        let c: ParamCounts = params::count(&spec_of(m));
        let b = &r["breakdown"];
        assert_eq!(c.total, u(&r["total_params"]), "{m} total");
        assert_eq!(c.embedding, u(&b["embedding"]), "{m} embedding");
        assert_eq!(c.lm_head, u(&b["lm_head"]), "{m} lm_head");
        assert_eq!(
            c.decoder_layers,
            u(&b["decoder_layers"]),
            "{m} decoder_layers"
        );
        assert_eq!(c.per_layer, u(&b["per_decoder_layer"][0]), "{m} per layer");
        assert_eq!(c.other, u(&b["other"]), "{m} other");
        assert_eq!(
            c.largest_module,
            u(&r["largest_module_params"]),
            "{m} largest"
        );
        assert_eq!(c.vision, u(&b["vision"]), "{m} vision");
    }
}

#[test]
fn lora_matches_peft() {
    let o = oracle();
    for m in DENSE {
        let spec = spec_of(m);
        for (key, targets) in [
            ("attn", LoraTargets::Attn),
            ("all-linear", LoraTargets::AllLinear),
        ] {
            for r in [8u64, 16, 64] {
                let want = &o[m]["lora"][format!("{key}_r{r}")];
                let got = params::lora(&spec, r, &targets);
                assert_eq!(got.trainable, u(&want["trainable"]), "{m} {key} r{r}");
                assert_eq!(
                    got.adapted_modules,
                    u(&want["adapted_modules"]),
                    "{m} {key} r{r}"
                );
                assert_eq!(
                    params::count(&spec).total + got.trainable,
                    u(&want["total_with_adapters"]),
                    "{m} {key} r{r} total with adapters"
                );
            }
        }
    }
}

#[test]
fn lora_explicit_names() {
    let spec = spec_of("llama-2-7b");
    let qv = LoraTargets::parse("q_proj,v_proj").unwrap();
    let c = params::lora(&spec, 16, &qv);
    assert_eq!(c.adapted_modules, 64);
    assert_eq!(c.trainable, 32 * 2 * 16 * (4096 + 4096));
    // GPT-2: peft's suffix match adapts both c_proj (attention and MLP).
    let c = params::lora(&spec_of("gpt2"), 8, &LoraTargets::parse("c_proj").unwrap());
    assert_eq!(c.adapted_modules, 24);
}

/// VLMs other than the LLaVA family, Gemma-3 and Qwen2/2.5-VL are refused: Qwen-VL
/// (`qwen` + `visual`) and an mllama config (cross-attention layers).
#[test]
fn other_vlms_are_unsupported() {
    let mllama = r#"{"model_type":"mllama","text_config":{},"vision_config":{}}"#;
    for (m, text) in [
        ("qwen-vl", read_data("configs/qwen-vl/config.json")),
        ("mllama", mllama.to_string()),
    ] {
        let e = parse_config(&text, m).unwrap_err();
        match e {
            Error::Unsupported { reason, .. } => {
                assert_eq!(reason, llm_mem::hf::config::LATER_VERSION, "{m}")
            }
            e => panic!("{m}: {e}"),
        }
    }
}

/// DeepSeek and gpt-oss at full depth: what transformers 5.24 instantiates on the meta device
/// (`sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())`, the
/// published configs; DeepSeek-V3's multi-token-prediction layer is not part of
/// `DeepseekV3ForCausalLM`), and the parameters a token runs through.
#[test]
fn deepseek_totals_as_transformers_instantiates_them() {
    for (m, total, active) in [
        ("deepseek-v2-lite", 15_706_484_224u64, 2_661_150_208u64),
        ("deepseek-v3", 671_026_404_352, 37_552_282_624),
        // 24 layers x (32 - 4) idle experts x (2880 x 5760 + 5760 + 2880 x 2880 + 2880)
        (
            "gpt-oss-20b",
            20_914_757_184,
            20_914_757_184 - 24 * 28 * 24_891_840,
        ),
    ] {
        let spec = llm_mem::hf::presets::get(m).unwrap().unwrap();
        assert_eq!(params::count(&spec).total, total, "{m}");
        assert_eq!(params::active(&spec), active, "{m}");
    }
}

#[test]
fn linear_weight_params_llama_2_7b() {
    // 32 layers × (4 × 4096² + 3 × 4096 × 11008).
    let spec = spec_of("llama-2-7b");
    assert_eq!(
        params::linear_weight_params(&spec),
        32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    );
}

/// Published totals (model cards, the Pythia paper's table), which are exactly what
/// transformers instantiates.
#[test]
fn published_totals() {
    for (name, total) in [
        ("llama-2-7b", 6_738_415_616u64),
        ("llama-2-13b", 13_015_864_320),
        ("llama-2-70b", 68_976_648_192),
        ("llama-3.1-8b", 8_030_261_248),
        ("llama-3.1-70b", 70_553_706_496),
        ("llama-3.1-405b", 405_853_388_800),
        ("llama-3.2-1b", 1_235_814_400),
        ("llama-3.2-3b", 3_212_749_824),
        ("mistral-7b-v0.1", 7_241_732_096),
        ("mistral-7b-v0.3", 7_248_023_552),
        ("qwen2.5-0.5b", 494_032_768),
        ("qwen2.5-1.5b", 1_543_714_304),
        ("qwen2.5-3b", 3_085_938_688),
        ("qwen2.5-7b", 7_615_616_512),
        ("qwen2.5-14b", 14_770_033_664),
        ("qwen2.5-32b", 32_763_876_352),
        ("qwen2.5-72b", 72_706_203_648),
        ("qwen3-0.6b", 596_049_920),
        ("qwen3-8b", 8_190_735_360),
        ("gemma-2-2b", 2_614_341_888),
        ("gemma-2-9b", 9_241_705_984),
        ("gemma-2-27b", 27_227_128_320),
        ("gemma-7b", 8_537_680_896),
        ("phi-3-mini-4k-instruct", 3_821_079_552),
        ("phi-3-medium-4k-instruct", 13_960_238_080),
        ("phi-2", 2_779_683_840),
        ("gpt2", 124_439_808),
        ("gpt2-medium", 354_823_168),
        ("gpt2-large", 774_030_080),
        ("gpt2-xl", 1_557_611_200),
        ("pythia-70m", 70_426_624),
        ("pythia-160m", 162_322_944),
        ("pythia-410m", 405_334_016),
        ("pythia-1b", 1_011_781_632),
        ("pythia-1.4b", 1_414_647_808),
        ("pythia-2.8b", 2_775_208_960),
        ("pythia-6.9b", 6_857_302_016),
        ("pythia-12b", 11_846_072_320),
        ("falcon-7b", 6_921_720_704),
        ("qwen-7b", 7_721_324_544),
    ] {
        assert_eq!(params::count(&preset(name)).total, total, "{name}");
    }
}

/// The size in the preset's name ("7b", "0.5b", "70m", "1_8b"), in parameters.
fn size_in_name(name: &str) -> Option<f64> {
    name.split('-').find_map(|part| {
        let p = part.replace('_', ".");
        let (num, mult) = if let Some(n) = p.strip_suffix('b') {
            (n, 1e9)
        } else if let Some(n) = p.strip_suffix('m') {
            (n, 1e6)
        } else {
            return None;
        };
        num.parse::<f64>().ok().map(|x| x * mult)
    })
}

#[test]
fn every_preset_parses_and_matches_its_name() {
    let names = presets::names();
    assert!(names.len() >= 70, "{}", names.len());
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    let mut off = Vec::new();
    for name in names {
        let spec = preset(name);
        let c = params::count(&spec);
        assert!(c.total > 0, "{name}");
        assert_eq!(
            c.total,
            c.embedding + c.lm_head + c.decoder_layers + c.other + c.vision
        );
        let by_group: u64 = spec
            .groups
            .iter()
            .map(|g| g.count * params::per_layer_of(&spec, &spec.block_linears(&g.modules)))
            .sum();
        assert_eq!(c.decoder_layers, by_group, "{name}");
        let info = presets::describe(name).unwrap().unwrap();
        assert_eq!(info.params_total, c.total);
        assert!(!info.hf_id.is_empty(), "{name}");
        if let Some(size) = size_in_name(name) {
            let ratio = c.total as f64 / size;
            // Names round down: the cards say Gemma-2-2B 2.6B, Gemma-2B 2.5B, Gemma-7B
            // 8.5B, StableLM-alpha-3B 3.6B, Llama-3.2-1B 1.24B; Qwen-7B 7.7B, Qwen2-7B 7.6B.
            let tol = match name {
                "gemma-2-2b"
                | "gemma-2b"
                | "gemma-7b"
                | "gemma-7b-it"
                | "stablelm-base-alpha-3b"
                | "llama-3.2-1b" => 0.32,
                "qwen-7b"
                | "qwen-7b-chat"
                | "qwen-7b-chat-int4"
                | "qwen2-7b"
                | "qwen2.5-7b"
                | "qwen2.5-7b-instruct" => 0.12,
                // the name's 0.5B is its Qwen2 text model; the SigLIP tower adds 0.4B
                "llava-onevision-qwen2-0.5b-ov" => 0.8,
                // 2.21B: the Qwen2-1.5B text model and a 0.67B tower; 3.75B: Qwen2.5-3B
                // and a 0.67B tower
                "qwen2-vl-2b-instruct" => 0.12,
                "qwen2.5-vl-3b" => 0.26,
                _ => 0.08,
            };
            if (ratio - 1.0).abs() > tol {
                off.push(format!("{name}: {} vs {size}", c.total));
            }
        }
    }
    assert!(off.is_empty(), "{off:#?}");
}

#[test]
fn gptq_presets_keep_quantization() {
    for (name, group) in [
        ("llama-2-70b-gptq", None),
        ("mistral-7b-v0.1-gptq", Some(128)),
        ("qwen-7b-chat-int4", Some(128)),
    ] {
        let q = preset(name).quantization.unwrap();
        assert_eq!(
            (q.method.as_str(), q.bits, q.group_size),
            ("gptq", 4, group),
            "{name}"
        );
    }
}

/// Family-specific fields the parser must set as transformers builds the model.
#[test]
fn family_fields() {
    use llm_mem::arch::{Activation, MlpKind, Positions, Residual};
    let p = preset;

    let f7 = p("falcon-7b");
    assert_eq!(f7.kv_heads, 1);
    assert_eq!(f7.residual, Residual::Parallel { shared_norm: true });
    assert_eq!(f7.positions, Positions::Rope { rotary_dim: 64 });
    assert!(f7.tie_embeddings && !f7.qkv_bias);
    let f40 = p("falcon-40b");
    assert_eq!(f40.kv_heads, 8);
    assert_eq!(f40.residual, Residual::Parallel { shared_norm: false });

    let g = p("gemma-2b");
    assert_eq!(
        (g.act, g.head_dim, g.tie_embeddings, g.embed_scale),
        (Activation::GeluTanh, 256, true, true)
    );
    let g2 = p("gemma-2-2b");
    assert!(g2.sandwich_norms);
    assert_eq!(
        (g2.attn_softcap, g2.final_softcap, g2.sliding_window),
        (Some(50.0), Some(30.0), Some(4096))
    );

    let phi2 = p("phi-2");
    assert_eq!(phi2.positions, Positions::Rope { rotary_dim: 32 });
    assert_eq!(phi2.residual, Residual::Parallel { shared_norm: true });
    assert!(phi2.lm_head_bias && phi2.qkv_bias && phi2.mlp_bias);
    assert_eq!(phi2.dropout.resid, 0.1);

    let phi3 = p("phi-3-mini-4k-instruct");
    assert!(phi3.fused_qkv);
    assert_eq!(
        phi3.mlp,
        MlpKind::Gated {
            fused_gate_up: true
        }
    );
    assert_eq!(phi3.sliding_window, Some(2047));

    let neox = p("stablelm-base-alpha-3b");
    assert_eq!(neox.positions, Positions::Rope { rotary_dim: 32 });
    assert_eq!(neox.residual, Residual::Parallel { shared_norm: false });
    assert!(neox.qkv_bias && neox.mlp_bias && !neox.tie_embeddings);

    let gpt2 = p("gpt2");
    assert_eq!(
        (gpt2.positions, gpt2.act, gpt2.intermediate),
        (Positions::Learned, Activation::GeluNew, 3072)
    );
    assert_eq!(
        (gpt2.dropout.embd, gpt2.dropout.attn, gpt2.dropout.resid),
        (0.1, 0.1, 0.1)
    );

    let sc = p("gpt_bigcode-santacoder");
    assert_eq!((sc.kv_heads, sc.positions), (1, Positions::Learned));

    let bloom = p("bloomz-7b1");
    assert_eq!(bloom.positions, Positions::Alibi);
    assert!(bloom.embed_norm && bloom.tie_embeddings);

    let q1 = p("qwen-7b");
    assert_eq!((q1.intermediate, q1.head_dim), (11008, 128));
    assert!(q1.qkv_bias && !q1.o_bias && !q1.mlp_bias);

    assert!(p("qwen3-8b").qk_norm.is_some());
    assert_eq!(p("qwen2.5-7b").sliding_window, None);
    assert!(p("qwen2.5-7b").qkv_bias && !p("qwen2.5-7b").o_bias);
    assert_eq!(p("mistral-7b-v0.1").sliding_window, Some(4096));
    assert_eq!(p("mistral-7b-v0.3").sliding_window, None);
    assert_eq!(p("llama-3.1-8b").torch_dtype, Some(llm_mem::DType::BF16));
}

/// Mixture-of-experts totals and active parameters (transformers 5.24's fused experts),
/// against the published figures: Mixtral-8x7B's safetensors total (46,702,792,704)
/// exactly and "12.9B active"; Qwen1.5-MoE-A2.7B "14.3B" total, "2.7B activated";
/// Qwen3-30B-A3B "30.5B in total and 3.3B activated", "29.9B non-embedding". Each
/// published active figure counts the embedding and the head (as `params::active`
/// does); they are rounded to 0.1B by their authors, so within 0.06B here.
#[test]
fn moe_totals_and_active_parameters() {
    let of = |m: &str| parse_config(&read_data(&format!("configs/{m}/config.json")), m).unwrap();
    let b = |n: u64| n as f64 / 1e9;
    let mut checked = 0;
    for (m, total, active) in [
        ("mixtral-8x7b-v0.1", 46.7, 12.9),
        ("qwen1.5-moe-a2.7b", 14.3, 2.7),
        ("qwen3-30b-a3b", 30.5, 3.3),
    ] {
        let s = of(m);
        let c = params::count(&s);
        assert!((b(c.total) - total).abs() < 0.06, "{m}: total {}", c.total);
        assert!(
            (b(params::active(&s)) - active).abs() < 0.06,
            "{m}: active {}",
            params::active(&s)
        );
        // exactly the dense parts plus top-k experts per layer
        let m_spec = s.moe.unwrap();
        assert_eq!(
            c.total - params::active(&s),
            s.layers()
                * (m_spec.experts - m_spec.top_k)
                * 3
                * s.hidden
                * m_spec.expert_intermediate
        );
        checked += 1;
    }
    assert_eq!(checked, 3);
    assert_eq!(
        params::count(&of("mixtral-8x7b-v0.1")).total,
        46_702_792_704
    );
    let q3 = params::count(&of("qwen3-30b-a3b"));
    assert!((b(q3.total - q3.embedding - q3.lm_head) - 29.9).abs() < 0.06);
    assert_eq!(params::active(&of("qwen3-30b-a3b")), 3_353_032_704);
}

/// KV cache per layer type during decode (`estimate::kv_cache_bytes`): full-attention
/// layers hold every token, sliding layers their window. Gemma-2-9B: 42 layers, 21
/// sliding (even layers, Gemma2Config), window 4096, 8 kv heads × 256; Gemma-3-1B: 26
/// layers, pattern 6 → 22 sliding, window 512, 1 kv head × 256; Mistral-7B-v0.1: all 32
/// sliding at 4096, 8 × 128; Qwen2.5-7B: none (use_sliding_window false), 4 × 128;
/// Mixtral: no window. bf16, at 10,000 tokens.
#[test]
fn kv_cache_per_layer_type() {
    use llm_mem::estimate::kv_cache_bytes;
    use llm_mem::units::dtype::DType;
    let of = |m: &str| parse_config(&read_data(&format!("configs/{m}/config.json")), m).unwrap();
    let t = 10_000u64;
    let mut checked = 0;
    for (m, full, sliding, window, kv_dim) in [
        ("gemma-2-9b", 21u64, 21u64, 4096u64, 8 * 256u64),
        ("gemma-3-1b-pt", 4, 22, 512, 256),
        ("mistral-7b-v0.1", 0, 32, 4096, 8 * 128),
        ("qwen2.5-7b", 28, 0, 0, 4 * 128),
        ("mixtral-8x7b-v0.1", 32, 0, 0, 8 * 128),
        ("gpt-oss-20b", 12, 12, 128, 8 * 64),
    ] {
        let s = of(m);
        assert_eq!(s.sliding_layer_count(), sliding, "{m}");
        let want = 2 * kv_dim * 2 * (full * t + sliding * window);
        assert_eq!(kv_cache_bytes(&s, DType::BF16, t), want, "{m}");
        // below the window every layer holds every token
        assert_eq!(
            kv_cache_bytes(&s, DType::BF16, 100),
            2 * kv_dim * 2 * (full + sliding) * 100,
            "{m}"
        );
        checked += 1;
    }
    assert_eq!(checked, 6);
}

/// Latent attention's cache: the normed latent and the rotated rope key per token and
/// layer, (kv_lora_rank + qk_rope_head_dim) × 2 B in bf16 (what transformers 5.24's
/// DynamicCache holds for DeepSeek-V2/V3: measured on a 3-layer model after a 40-token
/// forward, 48 B per token and layer for 16 + 8), against the expanded per-head keys and
/// values (heads × (nope + rope + v)) an MHA cache of the same heads would hold.
#[test]
fn kv_cache_of_latent_attention() {
    use llm_mem::estimate::{kv_bytes_per_token, kv_cache_bytes};
    use llm_mem::units::dtype::DType;
    let mut checked = 0;
    // (model, layers, heads, the expanded cache's multiple of the latent one)
    for (m, layers, heads, ratio) in [
        ("deepseek-v2-lite", 27u64, 16u64, 8u64),
        ("deepseek-v3", 61, 128, 71),
    ] {
        let s = llm_mem::hf::presets::get(m).unwrap().unwrap();
        let per_token = layers * (512 + 64) * 2;
        assert_eq!(kv_bytes_per_token(&s, DType::BF16), per_token, "{m}");
        assert_eq!(
            kv_cache_bytes(&s, DType::BF16, 32_768),
            32_768 * per_token,
            "{m}"
        );
        let expanded = layers * heads * (128 + 64 + 128) * 2;
        assert_eq!(expanded / per_token, ratio, "{m}");
        checked += 1;
    }
    assert_eq!(checked, 2);
}

/// `llm-mem models`' kind: its parts among `vlm` (a vision tower), `moe` (routed
/// experts), `mla` (latent attention), `hybrid` (sliding-window and full-attention
/// layers mixed, Gemma-2's alternation) joined by `+`, else `dense` (Mistral-7B-v0.1
/// slides on every layer: one kind of layer).
#[test]
fn preset_kinds() {
    let kind = |n: &str| llm_mem::hf::presets::describe(n).unwrap().unwrap().kind;
    let mut checked = 0;
    for (n, want) in [
        ("mixtral-8x7b-v0.1", "moe"),
        ("qwen3-30b-a3b", "moe"),
        ("deepseek-v3", "moe+mla"),
        ("deepseek-v2-lite", "moe+mla"),
        ("gpt-oss-20b", "moe+hybrid"),
        ("gemma-2-9b", "hybrid"),
        ("gemma-3-4b-it", "vlm+hybrid"),
        ("llava-1.5-7b", "vlm"),
        ("mistral-7b-v0.1", "dense"),
        ("llama-3.1-8b", "dense"),
    ] {
        assert_eq!(kind(n), want, "{n}");
        checked += 1;
    }
    assert_eq!(checked, 10);
}

/// bitsandbytes on an MoE model (transformers 5.24 `replace_with_bnb_linear`: nn.Linear
/// modules only): Mixtral-8x7B's attention projections in NF4, its routers and fused
/// experts (3-D parameters) in bf16 like the embedding, head and norms — 86.5 GiB,
/// against the ~25 GiB a v4-era "QLoRA Mixtral" had with per-expert nn.Linear modules.
#[test]
fn qlora_on_moe_quantizes_the_nn_linear_modules_only() {
    use llm_mem::estimate::weights::{nf4_bytes, weight_bytes};
    use llm_mem::workload::settings::{Format, Settings};
    let spec = llm_mem::hf::presets::get("mixtral-8x7b-v0.1")
        .unwrap()
        .unwrap();
    let s = Settings::parse(
        "method = \"qlora\"\ndouble_quant = false",
        Format::Toml,
        "t.toml",
    )
    .unwrap();
    let (w, _) = s.build(&spec).unwrap();
    let total = params::count(&spec).total;
    let (h, kv, i, e) = (4096u64, 1024u64, 14336u64, 8u64);
    let attn = [h * h, h * kv, h * kv, h * h];
    let nf4: u64 = attn.iter().map(|&n| nf4_bytes(n, false)).sum();
    let attn_params: u64 = attn.iter().sum();
    let experts = e * 3 * h * i + e * h; // gate_up, down, router
    let want = 32 * nf4 + (total - 32 * attn_params) * 2;
    assert_eq!(weight_bytes(&spec, &w, 0).unwrap().base, want);
    assert!(
        32 * experts > total * 9 / 10,
        "the experts are most of the model"
    );
}

/// Gemma-3-4B-IT with its SigLIP tower and pooled projector: the total and the vision
/// side's parameters equal transformers 5.24's meta-device count of
/// `Gemma3ForConditionalGeneration` (4,300,079,472 and 419,816,304; the projection
/// matrix is a plain parameter, so peft's all-linear adapts the tower's linears only).
#[test]
fn gemma3_vlm_parameters_are_exact() {
    let spec = preset("gemma-3-4b-it");
    let c = params::count(&spec);
    assert_eq!(c.total, 4_300_079_472);
    assert_eq!(c.vision, 419_816_304);
    let v = spec.vision.as_ref().unwrap();
    assert_eq!((v.image_tokens(), v.tower_tokens()), (256, 4096));
    assert!(params::projector_linears(v).is_empty());
}

/// LLaVA-OneVision's anyres (`VisionSpec::layout`): crops through the tower and image
/// tokens per image for one image per sample of each (width, height), equal to what
/// transformers 5.24 computes for the published config (`image_size_to_num_patches`
/// and `LlavaOnevisionProcessor._get_number_of_features`, run on these sizes); several
/// images per sample take one crop and 729 + 1 newline tokens each.
#[test]
fn llava_onevision_anyres_crops_and_tokens_match_the_processor() {
    let spec = crate::util::config_spec("llava-onevision-qwen2-0.5b-ov-l2v2");
    let v = spec.vision.as_ref().unwrap();
    let mut checked = 0;
    for (w, h, crops, tokens) in [
        (384, 384, 2, 1485),
        (640, 480, 5, 2929),
        (1600, 1200, 21, 7309),
        (480, 1920, 11, 5454),
        (100, 2000, 7, 2349),
        (1920, 1080, 16, 7269),
        (4000, 3000, 31, 7309),
        (333, 777, 4, 2493),
    ] {
        assert_eq!(v.layout(1, h, w), (crops, tokens), "{w}x{h}");
        checked += 1;
    }
    assert_eq!(v.layout(2, 640, 480), (1, 730));
    assert_eq!(checked, 8);
    // the published model: transformers 5.24's meta-device count of
    // LlavaOnevisionForConditionalGeneration (vision tower, projector, image_newline)
    let full = preset("llava-onevision-qwen2-0.5b-ov");
    let c = params::count(&full);
    assert_eq!((c.total, c.vision), (893_675_552, 399_585_440));
    // LLaVA-NeXT tiles every image: 640x480 takes 5 crops of 336 px and, with CLIP's
    // class token dropped, 2,340 tokens, one or two images per sample alike
    // (LlavaNextProcessor._get_number_of_features - 1 for the "default" strategy)
    let next = crate::util::config_spec("llava-next-vicuna-l2v2");
    let nv = next.vision.as_ref().unwrap();
    assert_eq!(nv.layout(1, 480, 640), (5, 2340));
    assert_eq!(nv.layout(2, 480, 640), (5, 2340));
}

/// Qwen2-VL-2B-Instruct: the total and vision parameters equal transformers 5.24's
/// meta-device count of `Qwen2VLForConditionalGeneration` (2,208,985,600 and
/// 665,271,296: Conv3d patch embedding over 2 frames without bias, 32 blocks with a
/// fused qkv, no position table or final norm, the PatchMerger); image tokens per image
/// are `smart_resize`'s grid / 2x2 (transformers 5.24 image_processing_qwen2_vl.py, run
/// on these sizes by `probes/trace_probe.py`'s copy of it).
#[test]
fn qwen2_vl_parameters_and_native_resolution_tokens_are_exact() {
    let spec = preset("qwen2-vl-2b-instruct");
    let c = params::count(&spec);
    assert_eq!((c.total, c.vision), (2_208_985_600, 665_271_296));
    let v = spec.vision.as_ref().unwrap();
    let mut checked = 0;
    for (w, h, grid, tokens) in [
        (448, 448, (32, 32), 256),
        (1280, 720, (52, 92), 1196),
        (100, 100, (8, 8), 16),
        (3000, 4000, (82, 60), 1230),
        (640, 480, (34, 46), 391),
        (1920, 1080, (52, 94), 1222),
        (333, 777, (56, 24), 336),
        (5000, 50, (4, 358), 358),
        (28, 28, (4, 4), 4),
        (10000, 10000, (70, 70), 1225),
        (700, 70, (4, 50), 50),
    ] {
        let sized = v.sized(h, w);
        assert_eq!(sized.native.unwrap().grid, grid, "{w}x{h}");
        assert_eq!(v.layout(1, h, w), (1, tokens), "{w}x{h}");
        assert_eq!(sized.image_tokens(), tokens);
        checked += 1;
    }
    assert_eq!(checked, 11);
    // the default image: 448x448
    assert_eq!((v.image_tokens(), v.tower_tokens()), (256, 1024));
}

/// A `preprocessor_config.json` beside the config sets the pixel budget (its
/// `size.shortest_edge` / `size.longest_edge`, or the older `min_pixels` /
/// `max_pixels`); bad values are refused with the file named.
#[test]
fn qwen2_vl_pixel_budget_comes_from_the_preprocessor_config() {
    use llm_mem::hf::config::apply_preprocessor;
    let base = preset("qwen2-vl-2b-instruct");
    let tokens = |text: &str| {
        let mut s = base.clone();
        apply_preprocessor(&mut s, text, "pp.json").map(|_| {
            let v = s.vision.as_ref().unwrap();
            v.layout(1, 1080, 1920).1
        })
    };
    // 256..=1024 tokens' worth of pixels (the Qwen2-VL model card's example budget):
    // smart_resize(1080, 1920, 28, 200704, 802816) = 672 x 1176 px
    let budget = r#"{"size": {"shortest_edge": 200704, "longest_edge": 802816}}"#;
    assert_eq!(tokens(budget).unwrap(), 1008);
    assert_eq!(tokens(r#"{"max_pixels": 802816}"#).unwrap(), 1008);
    // nothing set: the processor's defaults
    assert_eq!(tokens("{}").unwrap(), 1222);
    for (bad, what) in [
        (r#"{"max_pixels": 0}"#, "max_pixels"),
        (
            r#"{"min_pixels": 900000, "max_pixels": 800000}"#,
            "min_pixels",
        ),
        ("not json", "pp.json"),
    ] {
        let e = tokens(bad).unwrap_err().to_string();
        assert!(e.contains(what), "{bad}: {e}");
    }
}

/// Qwen2.5-VL-3B-Instruct: parameters equal transformers 5.24's meta-device count of
/// `Qwen2_5_VLForConditionalGeneration` (3,754,622,976; vision 668,684,288: RMSNorm
/// and SwiGLU blocks with biases, an RMSNorm `ln_q`), and the tower's windows are
/// `get_vision_window_index`'s (vision_utils.py, run on these grids: the count of
/// windows and Σ len², what eager attention's scores hold).
#[test]
fn qwen2_5_vl_parameters_and_windows_are_exact() {
    let spec = crate::util::config_spec("qwen2.5-vl-3b");
    let c = params::count(&spec);
    assert_eq!((c.total, c.vision), (3_754_622_976, 668_684_288));
    let v = spec.vision.as_ref().unwrap();
    let w = v.window.as_ref().unwrap();
    assert_eq!((w.size, w.full_blocks.clone()), (112, vec![7, 15, 23, 31]));
    let mut checked = 0;
    for (grid, windows, squares) in [
        ((32, 32), 16, 65_536),
        ((30, 46), 24, 81_168),
        ((52, 92), 84, 288_000),
        ((8, 8), 1, 4_096),
        ((4, 358), 45, 45_632),
    ] {
        let lens = w.window_lengths(grid, v.patch_size, 2);
        assert_eq!(lens.len(), windows, "{grid:?}");
        assert_eq!(lens.iter().map(|l| l * l).sum::<u64>(), squares, "{grid:?}");
        assert_eq!(lens.iter().sum::<u64>(), grid.0 * grid.1, "{grid:?}");
        checked += 1;
    }
    assert_eq!(checked, 5);
}

/// LoRA r16 on Qwen2-VL-2B and Qwen2.5-VL-3B at full depth: trainable parameters equal
/// peft 0.21.2's on transformers 5.24's meta-device models (`get_peft_model` with
/// `target_modules="all-linear"` — the tower's and merger's linears too — and with
/// q/k/v/o: 29,220,864 / 4,358,144 and 41,363,456 / 7,372,800).
#[test]
fn qwen_vl_lora_trainable_parameters_match_peft() {
    use llm_mem::workload::settings::Settings;
    let mut checked = 0;
    for (name, all, attn) in [
        ("qwen2-vl-2b-instruct", 29_220_864u64, 4_358_144u64),
        ("qwen2.5-vl-3b", 41_363_456, 7_372_800),
    ] {
        let spec = preset(name);
        for (targets, want) in [("all-linear", all), ("attn", attn)] {
            let s = Settings::from_flags(&[
                ("method", "lora"),
                ("lora_rank", "16"),
                ("lora_targets", targets),
                ("seq_len", "2048"),
            ])
            .unwrap();
            let (w, _) = crate::util::build(&spec, &s);
            assert_eq!(
                llm_mem::estimate::lora_trainable(&spec, &w),
                want,
                "{name} {targets}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4);
}
