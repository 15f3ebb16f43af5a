//! The model as a list of layer groups: parameter counts, LoRA counts, weight bytes and
//! optimizer shapes sum over the groups; a stack cut into groups with the same block
//! estimates exactly like one group; a stack whose groups differ is refused by the
//! per-layer estimators (until they model per-group blocks) with a clear error.

use llm_mem::arch::{params, BlockModules, LayerGroup, LinearRole, ModelSpec, ModuleSlot};
use llm_mem::estimate::{estimate, optimizer};
use llm_mem::workload::overhead::Overheads;
use llm_mem::workload::settings::Settings;

use crate::util::preset;

/// `spec` with its stack cut into groups of `counts` layers, all with its block.
fn regrouped(spec: &ModelSpec, counts: &[u64]) -> ModelSpec {
    let block = spec.groups[0].modules;
    let mut s = spec.clone();
    s.groups = counts
        .iter()
        .map(|&count| LayerGroup {
            count,
            modules: block,
            sliding: false,
        })
        .collect();
    s
}

/// A block like `m` whose feed-forward modules come in `copies` copies (a toy
/// "experts" block: only the copy count differs).
fn with_copies(m: BlockModules, copies: u64) -> BlockModules {
    let ffn: Vec<ModuleSlot> = m.ffn.iter().map(|s| ModuleSlot { copies, ..*s }).collect();
    BlockModules {
        attention: m.attention,
        ffn: Box::leak(ffn.into_boxed_slice()),
    }
}

#[test]
fn groups_with_one_block_estimate_exactly_like_one_group() {
    let mut checked = 0;
    for name in ["llama-3.1-8b", "gpt2", "qwen2.5-0.5b", "phi-2"] {
        let spec = preset(name);
        let n = spec.layers();
        let split = regrouped(&spec, &[3, n - 5, 2]);
        assert_eq!(split.layers(), n);
        assert_eq!(params::count(&split), params::count(&spec), "{name}");
        for flags in [
            vec![("seq_len", "1024")],
            vec![("method", "qlora"), ("grad_ckpt", "full")],
            vec![("task", "infer"), ("concurrency", "4")],
        ] {
            let cfg = Settings::from_flags(&flags).unwrap();
            let (w, ov) = cfg.build(&spec).unwrap();
            let a = estimate(&spec, &w, &ov).unwrap();
            let b = estimate(&split, &w, &ov).unwrap();
            assert_eq!(a, b, "{name} {flags:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

#[test]
fn counts_sum_over_groups_with_different_blocks() {
    let spec = preset("llama-3.1-8b");
    let block = spec.groups[0].modules;
    let mut mixed = spec.clone();
    mixed.groups = vec![
        LayerGroup {
            count: 2,
            modules: block,
            sliding: false,
        },
        LayerGroup {
            count: 30,
            modules: with_copies(block, 4),
            sliding: false,
        },
    ];
    let one_dense = params::per_layer(&spec);
    let mlp: u64 = spec
        .layer_linears()
        .iter()
        .filter(|l| !l.role.is_attention())
        .map(|l| l.params())
        .sum();
    let c = params::count(&mixed);
    assert_eq!(c.decoder_layers, 2 * one_dense + 30 * (one_dense + 3 * mlp));
    assert_eq!(
        c.total,
        params::count(&spec).total + 30 * 3 * mlp,
        "embedding, head and norms unchanged"
    );
    // the optimizer sees every parameter exactly once
    let numel: u64 = optimizer::full_shapes(&mixed)
        .iter()
        .map(|s| s.rows * s.cols * s.count)
        .sum();
    assert_eq!(numel, c.total);
    // LoRA on the attention only: the same adapters in every group
    let attn = llm_mem::arch::LoraTargets::Attn;
    assert_eq!(
        params::lora(&mixed, 16, &attn),
        params::lora(&spec, 16, &attn)
    );
    // the largest module is the largest linear of any group (copies counted)
    let gate = spec
        .layer_linears()
        .into_iter()
        .find(|l| l.role == LinearRole::Gate)
        .unwrap();
    assert!(c.largest_module >= 4 * gate.params());
}

/// A stack of groups with different blocks is estimated group by group: the
/// parameters of each group's own linears (the group with doubled feed-forward
/// modules holds them twice), the same activations as the uniform stack (copies of a linear
/// do not change what one layer saves).
#[test]
fn a_stack_of_different_blocks_is_estimated_group_by_group() {
    let spec = preset("llama-3.1-8b");
    let mut mixed = spec.clone();
    mixed.groups[0].count = 2;
    mixed.groups.push(LayerGroup {
        count: 30,
        modules: with_copies(spec.groups[0].modules, 2),
        sliding: false,
    });
    let (w, _) = Settings::default().build(&spec).unwrap();
    let uniform = estimate(&spec, &w, &Overheads::default()).unwrap();
    let e = estimate(&mixed, &w, &Overheads::default()).unwrap();
    let ffn: u64 = spec
        .layer_linears()
        .iter()
        .filter(|l| !l.role.is_attention())
        .map(|l| l.params())
        .sum();
    assert_eq!(e.model.params_total, uniform.model.params_total + 30 * ffn);
    assert_eq!(e.activations.total_bytes, uniform.activations.total_bytes);
}

#[test]
fn stages_and_depth_cut_the_stack_by_layers() {
    let spec = regrouped(&preset("gpt2"), &[4, 8]);
    let counts = |g: &[LayerGroup]| g.iter().map(|g| g.count).collect::<Vec<_>>();
    assert_eq!(counts(&spec.stage_groups(0, 6)), [4, 2]);
    assert_eq!(counts(&spec.stage_groups(3, 2)), [1, 1]);
    assert_eq!(counts(&spec.stage_groups(6, 6)), [6]);
    assert_eq!(counts(&spec.with_layers(5).unwrap().groups), [4, 1]);
    assert_eq!(counts(&spec.with_layers(20).unwrap().groups), [4, 16]);
    assert!(spec.with_layers(0).is_err());
}
