//! Bytes of the model's weights as they sit on the device.
//!
//! - plain: parameters × parameter dtype (fp32 for amp);
//! - LoRA adapters: trainable × 4 (peft keeps adapters in fp32);
//! - QLoRA (bitsandbytes NF4, blocksize 64) on every decoder-layer linear weight;
//!   embeddings, norms, biases and the output head stay in the parameter dtype. Per
//!   quantized tensor of n elements: n/2 payload bytes + absmax for each of ⌈n/64⌉
//!   blocks — fp32 (4 B) without double quantization; with it, uint8 (1 B) plus a
//!   second level of one fp32 absmax per 256 first-level blocks, a 256-entry fp32 code
//!   table and an fp32 offset. Every quantized tensor also carries the 16-entry fp32
//!   NF4 code.
//! - fp8 inference: linear weights 1 B + one fp32 scale per tensor; the rest bf16.
//! - GPTQ/AWQ checkpoints (`quantization_config`): per linear (in × out, b bits, group
//!   g): qweight in·out·b/8 + qzeros ⌈in/g⌉·out·b/8 + fp16 scales ⌈in/g⌉·out·2 +
//!   int32 g_idx in·4.

use crate::arch::params;
use crate::arch::ModelSpec;
use crate::error::{Error, Result};
use crate::units::dtype::DType;
use crate::workload::{Method, Precision, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WeightBytes {
    /// The base model (quantized where the method says so).
    pub base: u64,
    /// LoRA adapters (fp32).
    pub adapters: u64,
}

impl WeightBytes {
    pub fn total(&self) -> u64 {
        self.base + self.adapters
    }
}

/// NF4 bytes of one tensor of `n` elements (bitsandbytes `quantize_4bit`, blocksize 64).
pub fn nf4_bytes(n: u64, double_quant: bool) -> u64 {
    let blocks = n.div_ceil(64);
    let payload = n.div_ceil(2);
    let code = 16 * 4;
    if double_quant {
        payload + blocks + blocks.div_ceil(256) * 4 + 256 * 4 + 4 + code
    } else {
        payload + blocks * 4 + code
    }
}

/// GPTQ/AWQ packed bytes of one linear.
pub fn gptq_bytes(in_f: u64, out_f: u64, bits: u64, group: Option<u64>) -> u64 {
    let groups = group.map_or(1, |g| in_f.div_ceil(g.max(1)));
    (in_f * out_f * bits).div_ceil(8)
        + (groups * out_f * bits).div_ceil(8)
        + groups * out_f * 2
        + in_f * 4
}

/// Router parameters transformers keeps in fp32 when the model loads in fp16 or bf16
/// (every MoE layer's `gate.weight` of a family whose router runs in fp32:
/// `_keep_in_fp32_modules_strict`).
pub fn fp32_router_params(spec: &ModelSpec, dt: DType) -> u64 {
    match spec.moe {
        Some(m) if m.router_fp32 && matches!(dt, DType::F16 | DType::BF16) => {
            spec.sum_over_layers(|l| {
                if l.role == crate::arch::LinearRole::Router {
                    l.params()
                } else {
                    0
                }
            })
        }
        _ => 0,
    }
}

/// Norm weights transformers keeps in fp32 when the model loads in fp16 (gpt-oss's
/// `_keep_in_fp32_modules` = input/post-attention layernorms and the final norm;
/// modeling_utils.py: non-strict modules are upcast "only if the requested dtype is
/// fp16").
pub fn fp32_norm_params(spec: &ModelSpec, dt: DType) -> u64 {
    if spec.family == crate::arch::Family::GptOss && dt == DType::F16 {
        (spec.layers() * spec.norms_per_layer() + 1) * spec.hidden
    } else {
        0
    }
}

pub fn weight_bytes(spec: &ModelSpec, w: &Workload, lora_stored: u64) -> Result<WeightBytes> {
    let counts = params::count(spec);
    let total = counts.total;
    let linear = params::linear_weight_params(spec);
    let dt = w.precision.param_dtype();
    let rest_dt = if dt == DType::F8 { DType::BF16 } else { dt };
    let adapters = match w.method.lora() {
        None => 0,
        Some(l) => {
            // OSF's SVD buffers in the weights' dtype; BOFT's fp32 permutation where it
            // lives on the device (`LoraConfig::boft_perm_on_host`)
            let (base, fp32) =
                params::adapter_buffers(spec, l.rank, &l.targets, l.adapter, l.osf_reconstruct);
            let fp32 = if l.boft_perm_on_host { 0 } else { fp32 };
            lora_stored * l.adapter_size(w.precision) + base * rest_dt.size() + fp32 * 4
        }
    };
    let n_linear_tensors = spec.sum_over_layers(|l| l.copies);

    if let Some(q) = &spec.quantization {
        let m = q.method.to_ascii_lowercase();
        if m == "gptq" || m == "awq" {
            if w.method.is_full() && w.is_train() {
                return Err(Error::invalid(
                    "--method",
                    "full",
                    format!("lora (a {m}-quantized checkpoint can't be fully fine-tuned) or --task infer"),
                ));
            }
            let packed = spec.sum_over_layers(|l| {
                l.copies * gptq_bytes(l.in_features, l.out_features, q.bits as u64, q.group_size)
            });
            let base = packed + (total - linear) * DType::F16.size();
            return Ok(WeightBytes { base, adapters });
        }
    }

    let base = match (&w.method, w.precision) {
        (Method::Qlora(l), _) => {
            let dq = l.double_quant;
            // nn.Linear modules only: an MoE block's router and fused experts stay in
            // the load dtype (`bnb_linear_weight_params`)
            let quant = spec.sum_over_layers(|l| {
                if l.role.is_moe_parameter() {
                    0
                } else {
                    l.copies * nf4_bytes(l.in_features * l.out_features, dq)
                }
            });
            let linear = params::bnb_linear_weight_params(spec);
            // Lightning's BitsandbytesPrecision (litgpt) replaces every nn.Linear, the
            // head's weight too; transformers keeps the head in the parameter dtype
            let head = if w.implementation == crate::workload::Implementation::Litgpt {
                counts.lm_head - if spec.lm_head_bias { spec.vocab } else { 0 }
            } else {
                0
            };
            quant
                + nf4_bytes(head, dq) * u64::from(head > 0)
                + (total - linear - head) * rest_dt.size()
        }
        (_, Precision::Fp8) => linear + n_linear_tensors * 4 + (total - linear) * rest_dt.size(),
        // bitsandbytes Int8Params._quantize (nn/modules.py, 0.49): CB int8 like the
        // weight, SCB one fp32 absmax per output row (int8_vectorwise_quant); the rest
        // (embeddings, norms, head) in fp16
        (_, Precision::Int8) => {
            let scb = spec.sum_over_layers(|l| {
                if l.role.is_moe_parameter() {
                    0
                } else {
                    l.copies * l.out_features * 4
                }
            });
            let linear = params::bnb_linear_weight_params(spec);
            linear + scb + (total - linear) * DType::F16.size()
        }
        // DeepSeek keeps its router weight in fp32 whatever the load dtype
        // (modeling_deepseek_v2.py / _v3.py `_keep_in_fp32_modules_strict`)
        _ => {
            total * dt.size()
                + (fp32_router_params(spec, dt) + fp32_norm_params(spec, dt))
                    * 4u64.saturating_sub(dt.size())
        }
    };
    Ok(WeightBytes { base, adapters })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_without_double_quant() {
        // 4096×4096: 8 MiB payload + 262144 blocks × 4 B absmax + code
        let n = 4096 * 4096;
        assert_eq!(nf4_bytes(n, false), n / 2 + (n / 64) * 4 + 64);
    }

    #[test]
    fn nf4_double_quant_saves_about_0_37_bits_per_param() {
        let n = 4096 * 4096u64;
        let saved_bits = (nf4_bytes(n, false) - nf4_bytes(n, true)) as f64 * 8.0 / n as f64;
        // QLoRA paper: 0.5 -> 0.127 bits per parameter, a saving of ~0.373
        assert!((saved_bits - 0.373).abs() < 0.01, "{saved_bits}");
    }

    #[test]
    fn gptq_4bit_group128() {
        let b = gptq_bytes(4096, 4096, 4, Some(128));
        assert_eq!(
            b,
            4096 * 4096 / 2 + 32 * 4096 / 2 + 32 * 4096 * 2 + 4096 * 4
        );
    }
}
