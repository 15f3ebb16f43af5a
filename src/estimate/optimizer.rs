//! Optimizer state and step temporaries, per trainable tensor.
//!
//! State dtype `s` = dtype of the parameters the optimizer updates: the fp32 master copy
//! with `--master-weights`, else the parameter dtype (fp32 with amp, fp32 for peft's
//! LoRA adapters, bf16/fp16 for pure half-precision training, as `torch.optim` does with
//! `zeros_like(p)`).
//!
//! | optimizer | state per tensor of n elements | step temporaries |
//! |---|---|---|
//! | adamw (torch, fused: HF Trainer's default `adamw_torch_fused`) | 2·n·s | none |
//! | adamw-foreach (torch multi-tensor) | 2·n·s | `_foreach_sqrt(exp_avg_sq)`: n·s over all params |
//! | paged-adamw (bnb 32-bit) | 2·n·4 | none (per-tensor kernel) |
//! | adamw-8bit, paged-adamw-8bit (bnb) | n ≥ 4096: 2·(n + 4·⌈n/256⌉) (uint8 + fp32 absmax per 256-block); smaller: 2·n·4 | none |
//! | sgd | 0 | none |
//! | sgd-momentum | n·s | none |
//! | adafactor (HF, β1 = None) | ≥2-D r×c: (r + c)·s; 1-D: n·s | 2 × largest tensor · s |
//! | lion | n·s | 1 × largest tensor · s |

use crate::arch::params;
use crate::arch::{Adapter, LinearSpec, LoraTargets, ModelSpec};
use crate::workload::Optimizer;

/// A trainable tensor: `count` tensors of shape rows × cols (cols = 1 for vectors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub rows: u64,
    pub cols: u64,
    pub count: u64,
}

impl Shape {
    fn numel(&self) -> u64 {
        self.rows * self.cols
    }
}

/// The tensors of the decoder layers (every layer), without embedding, head or rest.
pub fn layer_shapes(spec: &ModelSpec) -> Vec<Shape> {
    let mut v = Vec::new();
    for g in &spec.groups {
        let lins = spec.block_linears(&g.modules);
        for lin in &lins {
            let count = g.count * lin.copies;
            v.push(Shape {
                rows: lin.out_features,
                cols: lin.in_features,
                count,
            });
            if lin.bias {
                v.push(Shape {
                    rows: lin.out_features,
                    cols: 1,
                    count,
                });
            }
        }
        // norms and other small vectors of the layers, lumped as vectors of hidden size
        let linear_params: u64 = lins.iter().map(|x| x.params()).sum();
        let rest = params::per_layer_of(spec, &lins).saturating_sub(linear_params);
        if rest > 0 {
            v.push(Shape {
                rows: rest,
                cols: 1,
                count: g.count,
            });
        }
    }
    v
}

/// Trainable tensors of a full fine-tune: every parameter.
pub fn full_shapes(spec: &ModelSpec) -> Vec<Shape> {
    let c = params::count(spec);
    let mut v = layer_shapes(spec);
    v.push(Shape {
        rows: spec.vocab,
        cols: spec.hidden,
        count: 1,
    });
    if c.lm_head > 0 {
        v.push(Shape {
            rows: spec.vocab,
            cols: spec.hidden,
            count: 1,
        });
        let bias = c.lm_head - spec.vocab * spec.hidden;
        if bias > 0 {
            v.push(Shape {
                rows: bias,
                cols: 1,
                count: 1,
            });
        }
    }
    if c.other > 0 {
        v.push(Shape {
            rows: c.other,
            cols: 1,
            count: 1,
        });
    }
    v
}

/// Trainable tensors of the adapters ([`Adapter::trained_shapes`]: LoRA's lora_A
/// (r × in) and lora_B (out × r), ...) per adapted linear, the head included when
/// targeted.
pub fn lora_shapes(
    spec: &ModelSpec,
    rank: u64,
    targets: &LoraTargets,
    adapter: Adapter,
) -> Vec<Shape> {
    if adapter == Adapter::PromptTuning {
        return vec![Shape {
            rows: rank,
            cols: spec.hidden,
            count: 1,
        }];
    }
    if adapter == Adapter::PrefixTuning {
        return vec![Shape {
            rows: rank,
            cols: spec.layers() * 2 * spec.kv_dim(),
            count: 1,
        }];
    }
    if adapter == Adapter::LnTuning {
        // one weight (and bias) vector per trained norm copy
        let Some(ln) = crate::arch::adapter::LnNorms::of(spec) else {
            return Vec::new();
        };
        let (per_layer, fin) = ln.params(spec);
        return [(per_layer, spec.layers()), (fin, 1)]
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(rows, count)| Shape {
                rows,
                cols: 1,
                count,
            })
            .collect();
    }
    let head = targets.head().then(|| spec.head_linear());
    let per = move |l: &LinearSpec, count: u64| {
        adapter
            .trained_shapes(l, rank)
            .into_iter()
            .map(move |(rows, cols)| Shape { rows, cols, count })
    };
    spec.groups
        .iter()
        .flat_map(|g| {
            spec.block_linears(&g.modules)
                .into_iter()
                .filter(|l| targets.matches(l))
                .flat_map(move |l| per(&l, g.count).collect::<Vec<_>>())
        })
        .chain(head.iter().flat_map(|h| per(h, 1).collect::<Vec<_>>()))
        // the vision side's adapted linears (peft's all-linear reaches the tower)
        .chain(spec.vision.iter().flat_map(|v| {
            params::vision_adapted(v, targets)
                .into_iter()
                .flat_map(|(n, l)| per(&l, n).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        }))
        .collect()
}

/// Bytes of optimizer state for these tensors; `s` = state element size.
pub fn state_bytes(opt: Optimizer, shapes: &[Shape], s: u64) -> u64 {
    shapes
        .iter()
        .map(|t| {
            let n = t.numel();
            let per = match opt {
                Optimizer::AdamW | Optimizer::AdamWForeach => 2 * n * s,
                Optimizer::PagedAdamW => 2 * n * 4,
                Optimizer::AdamW8bit | Optimizer::PagedAdamW8bit => {
                    if n >= 4096 {
                        2 * (n + 4 * n.div_ceil(256))
                    } else {
                        2 * n * 4
                    }
                }
                Optimizer::Sgd => 0,
                Optimizer::SgdMomentum | Optimizer::Lion => n * s,
                Optimizer::Adafactor => {
                    if t.cols > 1 {
                        (t.rows + t.cols) * s
                    } else {
                        n * s
                    }
                }
            };
            per * t.count
        })
        .sum()
}

/// Elements from which a paged bitsandbytes optimizer puts a parameter's state in CUDA
/// managed memory (bitsandbytes optim/optimizer.py `get_state_buffer`, 0.49:
/// `if not self.is_paged or p.numel() < 1e5: torch.zeros_like(...)` else
/// `F.get_paged(...)`).
pub const PAGED_MIN_NUMEL: u64 = 100_000;

/// Bytes of the optimizer state that live in CUDA managed memory, outside PyTorch's
/// caching allocator: a paged optimizer's state buffers of tensors with at least
/// [`PAGED_MIN_NUMEL`] elements (bitsandbytes functional.py `get_paged`:
/// `lib.cget_managed_ptr` = cudaMallocManaged, wrapped with `torch.frombuffer`), so
/// `max_memory_allocated` / `max_memory_reserved` never count them; the driver pages
/// them to host memory under pressure. The 8-bit blockwise absmax stay in the
/// allocator. Zero for every other optimizer.
pub fn managed_state_bytes(opt: Optimizer, shapes: &[Shape]) -> u64 {
    shapes
        .iter()
        .filter(|t| t.numel() >= PAGED_MIN_NUMEL)
        .map(|t| {
            let n = t.numel();
            let per = match opt {
                Optimizer::PagedAdamW => 2 * n * 4,
                // state1/state2 uint8 (the tensor is >= 4096 elements, so 8-bit)
                Optimizer::PagedAdamW8bit => 2 * n,
                _ => 0,
            };
            per * t.count
        })
        .sum()
}

/// Bytes of temporaries that exist only during `optimizer.step()`.
pub fn step_temporaries(opt: Optimizer, shapes: &[Shape], s: u64) -> u64 {
    let total: u64 = shapes.iter().map(|t| t.numel() * t.count).sum();
    let largest = shapes.iter().map(|t| t.numel()).max().unwrap_or(0);
    match opt {
        Optimizer::AdamWForeach => total * s,
        Optimizer::Adafactor => 2 * largest * s,
        Optimizer::Lion => largest * s,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paged_state_of_large_tensors_is_managed_memory() {
        let t = |rows, cols| Shape {
            rows,
            cols,
            count: 2,
        };
        // 4096 x 4096 is paged; a 16 x 4096 LoRA factor (65 536 < 1e5) is not
        let shapes = [t(4096, 4096), t(16, 4096)];
        let n = 4096 * 4096 * 2;
        assert_eq!(
            managed_state_bytes(Optimizer::PagedAdamW, &shapes),
            2 * n * 4
        );
        assert_eq!(
            managed_state_bytes(Optimizer::PagedAdamW8bit, &shapes),
            2 * n
        );
        assert_eq!(managed_state_bytes(Optimizer::AdamW, &shapes), 0);
        assert_eq!(managed_state_bytes(Optimizer::AdamW8bit, &shapes), 0);
        // managed bytes are part of the state, never more
        for o in [Optimizer::PagedAdamW, Optimizer::PagedAdamW8bit] {
            assert!(managed_state_bytes(o, &shapes) <= state_bytes(o, &shapes, 4));
        }
    }

    #[test]
    fn adamw_is_two_states() {
        let t = [Shape {
            rows: 10,
            cols: 10,
            count: 2,
        }];
        assert_eq!(state_bytes(Optimizer::AdamW, &t, 4), 2 * 200 * 4);
        assert_eq!(step_temporaries(Optimizer::AdamWForeach, &t, 4), 200 * 4);
        assert_eq!(step_temporaries(Optimizer::AdamW, &t, 4), 0);
    }

    #[test]
    fn eight_bit_blockwise_and_small_tensors_fp32() {
        let big = [Shape {
            rows: 4096,
            cols: 4096,
            count: 1,
        }];
        let n = 4096 * 4096u64;
        assert_eq!(
            state_bytes(Optimizer::AdamW8bit, &big, 2),
            2 * (n + 4 * n / 256)
        );
        let small = [Shape {
            rows: 100,
            cols: 1,
            count: 1,
        }];
        assert_eq!(state_bytes(Optimizer::AdamW8bit, &small, 2), 800);
    }

    #[test]
    fn adafactor_factors_matrices() {
        let t = [
            Shape {
                rows: 300,
                cols: 200,
                count: 1,
            },
            Shape {
                rows: 50,
                cols: 1,
                count: 1,
            },
        ];
        assert_eq!(state_bytes(Optimizer::Adafactor, &t, 4), (500 + 50) * 4);
    }
}
