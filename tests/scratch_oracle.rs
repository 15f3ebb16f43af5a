use llm_mem::activations::*;
use llm_mem::model::*;
use llm_mem::workload::*;

fn base(name: &str) -> ModelSpec {
    match name {
        "llama-2-7b" => ModelSpec { name: name.into(), family: Family::Llama, hidden: 4096, layers: 32, heads: 32, kv_heads: 32, head_dim: 128, intermediate: 11008, vocab: 32000, max_positions: 4096, tie_embeddings: false, norm: NormKind::RmsNorm { offset_one: false }, act: Activation::Silu, mlp: MlpKind::Gated { fused_gate_up: false }, fused_qkv: false, qkv_bias: false, o_bias: false, mlp_bias: false, lm_head_bias: false, embed_norm: false, qk_norm: false, positions: Positions::Rope { rotary_dim: 128 }, residual: Residual::Sequential, sandwich_norms: false, embed_scale: false, attn_softcap: None, final_softcap: None, sliding_window: None, dropout: Dropout::default(), torch_dtype: None, quantization: None, checkpoint: None },
        "qwen2.5-0.5b" => ModelSpec { hidden: 896, layers: 24, heads: 14, kv_heads: 2, head_dim: 64, intermediate: 4864, vocab: 151936, tie_embeddings: true, qkv_bias: true, family: Family::Qwen2, positions: Positions::Rope { rotary_dim: 64 }, ..base("llama-2-7b") },
        "gpt2" | "gpt2@nodropout" => ModelSpec { hidden: 768, layers: 12, heads: 12, kv_heads: 12, head_dim: 64, intermediate: 3072, vocab: 50257, tie_embeddings: true, qkv_bias: true, o_bias: true, mlp_bias: true, family: Family::Gpt2, fused_qkv: true, norm: NormKind::LayerNorm { bias: true }, act: Activation::GeluNew, mlp: MlpKind::Plain, positions: Positions::Learned, dropout: if name == "gpt2" { Dropout { embd: 0.1, attn: 0.1, resid: 0.1 } } else { Dropout::default() }, ..base("llama-2-7b") },
        _ => panic!(),
    }
}

#[test]
fn scratch() {
    let mut rdr = csv::Reader::from_path("tests/data/oracle/per_layer.csv").unwrap();
    let hdr = rdr.headers().unwrap().clone();
    let col = |r: &csv::StringRecord, n: &str| r[hdr.iter().position(|h| h == n).unwrap()].to_string();
    let mut worst: f64 = 0.0;
    for r in rdr.records() {
        let r = r.unwrap();
        let m = col(&r, "model");
        if !["llama-2-7b", "qwen2.5-0.5b", "gpt2", "gpt2@nodropout"].contains(&m.as_str()) { continue; }
        let attn: Attn = col(&r, "attn_impl").parse().unwrap();
        if m == "gpt2" && attn == Attn::Sdpa { continue; }
        let spec = base(&m);
        let b: u64 = col(&r, "batch").parse().unwrap();
        let s: u64 = col(&r, "seq").parse().unwrap();
        let precision = if col(&r, "dtype") == "amp_bf16" { Precision::AmpBf16 } else { Precision::Bf16 };
        let grad_ckpt = if col(&r, "grad_ckpt") == "none" { GradCkpt::None } else { GradCkpt::Full };
        let trainable = match col(&r, "mode").as_str() { "full" => Trainable::All, "lora_all" => Trainable::Lora { rank: 16, targets: LoraTargets::AllLinear }, "lora_attn" => Trainable::Lora { rank: 16, targets: LoraTargets::Attn }, _ => panic!() };
        let p = LedgerParams { batch: b, seq: s, kv_len: s, precision, attn, grad_ckpt, runtime: Runtime::Torch, device: Device::Cpu, trainable, loss: Loss::Standard };
        let a = activations(&spec, &p);
        let want_pl: f64 = col(&r, "live_per_layer_bytes").parse().unwrap();
        let want_nl: f64 = col(&r, "live_non_layer_bytes").parse().unwrap();
        let e1 = a.per_layer_bytes as f64 / want_pl - 1.0;
        let e2 = a.non_layer_bytes as f64 / want_nl - 1.0;
        worst = worst.max(e1.abs()).max(e2.abs());
        if e1.abs() > 0.001 || e2.abs() > 0.001 {
            println!("{m} b{b} s{s} {} {attn} {} {}: per_layer {} vs {} ({:+.4}) non_layer {} vs {} ({:+.4})", col(&r,"dtype"), col(&r,"grad_ckpt"), col(&r,"mode"), a.per_layer_bytes, want_pl, e1, a.non_layer_bytes, want_nl, e2);
        }
    }
    println!("worst {worst}");
}
