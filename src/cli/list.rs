//! `llm-mem models` and `llm-mem gpus`.

use std::process::ExitCode;

use anyhow::Result;

use llm_mem::hf::presets;
use llm_mem::units::gpu;

use super::print_out;

pub fn models(json: bool) -> Result<ExitCode> {
    let infos: Vec<_> = presets::describe_all()
        .into_iter()
        .collect::<Result<_, _>>()?;
    let out = if json {
        llm_mem::report::json::render_models(&infos)
    } else {
        let mut s = format!(
            "{:<44} {:<12} {:<10} {:>10} {:>10}  {}\n",
            "preset", "family", "kind", "params", "active", "hf id"
        );
        for i in &infos {
            s += &format!(
                "{:<44} {:<12} {:<10} {:>9.2}B {:>9.2}B  {}{}\n",
                i.name,
                i.family,
                i.kind,
                i.params_total as f64 / 1e9,
                i.params_active as f64 / 1e9,
                i.hf_id,
                i.quantization
                    .as_deref()
                    .map(|q| format!(" ({q})"))
                    .unwrap_or_default()
            );
        }
        s += "\nactive: parameters a token runs through (an MoE's top-k routed experts per layer), embedding and head counted (Mixtral's published 12.9B counts them; Qwen's A2.7B / A3B model cards count the non-embedding part)\n";
        s
    };
    print_out(&out)?;
    Ok(ExitCode::SUCCESS)
}

pub fn gpus(json: bool) -> Result<ExitCode> {
    let s = if json {
        // the shape of `models --json`: an array of objects, keys in alphabetical order
        let list: Vec<serde_json::Value> = gpu::GPUS
            .iter()
            .map(|g| {
                serde_json::json!({
                    "description": g.description,
                    "memory_bytes": g.memory.get(),
                    "name": g.name,
                })
            })
            .collect();
        serde_json::to_string_pretty(&list)? + "\n"
    } else {
        let mut s = format!("{:<12} {:>10}  {}\n", "gpu", "GiB", "description");
        for g in gpu::GPUS {
            s += &format!(
                "{:<12} {:>10.2}  {}\n",
                g.name,
                g.memory.gib(),
                g.description
            );
        }
        s
    };
    print_out(&s)?;
    Ok(ExitCode::SUCCESS)
}
