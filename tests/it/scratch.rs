#[test]
#[ignore]
fn dump_ledger() {
    use llm_mem::arch::LoraTargets;
    use llm_mem::runtime::torch::{LedgerParams, Trainable};
    use llm_mem::workload::{Attn, Device, GradCkpt, Loss, Precision};
    let model = std::env::var("DUMP_MODEL").unwrap();
    let spec = crate::util::config_spec(&model);
    let attn = std::env::var("DUMP_ATTN").unwrap_or("eager".into());
    let batch: u64 = std::env::var("DUMP_BATCH")
        .map(|b| b.parse().unwrap())
        .unwrap_or(1);
    let seq: u64 = std::env::var("DUMP_SEQ")
        .map(|b| b.parse().unwrap())
        .unwrap_or(256);
    let p = LedgerParams {
        batch,
        seq,
        kv_len: seq,
        precision: Precision::Bf16,
        attn: attn.parse::<Attn>().unwrap(),
        grad_ckpt: GradCkpt::None,
        device: Device::Cpu,
        trainable: Trainable::All,
        loss: Loss::Standard,
        param_grad_size: 2,
        sp_div: 1,
    };
    let _ = LoraTargets::AllLinear;
    let l = llm_mem::runtime::torch::layer(&spec, &p, true);
    for t in &l.tensors {
        if t.saved {
            println!("{} {} {:?}", t.name, t.bytes, t.dtype);
        }
    }
    println!("saved {}", l.saved);
}
