#[test]
#[ignore]
fn peaks_scan() {
    use llm_mem::estimate::estimate;
    use llm_mem::estimate::timeline::Phase;
    use llm_mem::workload::overhead::Overheads;
    use llm_mem::workload::settings::Settings;
    let t = crate::util::Table::data("trace/activations.csv");
    let mut worst: std::collections::BTreeMap<String, (f64, f64, usize)> = Default::default();
    for r in &t.rows {
        if t.col(r, "status") != "ok" || t.col(r, "layers") != "2" {
            continue;
        }
        let model = t.col(r, "model");
        let text = std::fs::read_to_string(crate::util::data_path(&format!(
            "configs/{model}/config.json"
        )))
        .unwrap();
        let Ok(spec) = llm_mem::hf::config::parse_config(&text, model) else {
            continue;
        };
        if spec.generic_of.is_some() {
            continue;
        }
        let s = spec.with_layers(2).unwrap();
        let mode = t.col(r, "mode");
        let lora = mode != "full";
        let dtype = t.col(r, "dtype").replace('_', "-");
        let ckpt = if t.col(r, "grad_ckpt") == "none" {
            "none"
        } else {
            "full"
        };
        let device = if t.col(r, "engine").ends_with("cuda") {
            "cuda"
        } else {
            "cpu"
        };
        let mut pairs = vec![
            ("batch", t.col(r, "batch")),
            ("seq_len", t.col(r, "seq")),
            ("dtype", dtype.as_str()),
            ("attn", t.col(r, "attn_impl")),
            ("grad_ckpt", ckpt),
            ("method", if lora { "lora" } else { "full" }),
            ("device", device),
            ("optimizer", "sgd"),
        ];
        if lora {
            pairs.push((
                "lora_targets",
                if mode == "lora_all" {
                    "all-linear"
                } else {
                    "attn"
                },
            ));
        }
        let cfg = Settings::from_flags(&pairs).unwrap();
        let (w, _) = crate::util::build(&s, &cfg);
        let e = estimate(&s, &w, &Overheads::none()).unwrap();
        let base = e.timeline[0].components.total().get() as f64;
        let peak_in = |phases: &[Phase]| {
            e.timeline
                .iter()
                .filter(|x| phases.contains(&x.phase))
                .map(|x| x.components.total().get() as f64 - base)
                .fold(0.0, f64::max)
        };
        let want_f: f64 = t.col(r, "peak_fwd_bytes").parse().unwrap();
        let want_b: f64 = t.col(r, "peak_bwd_bytes").parse().unwrap();
        let f = peak_in(&[Phase::Forward, Phase::Loss]) / want_f - 1.0;
        let b = peak_in(&[Phase::Backward]) / want_b - 1.0;
        let m = worst.entry(model.to_string()).or_insert((0.0, 0.0, 0));
        if f.abs() > m.0.abs() {
            m.0 = f;
        }
        if b.abs() > m.1.abs() {
            m.1 = b;
        }
        m.2 += 1;
        if std::env::var("V").is_ok() && (f.abs() > 0.03 || b.abs() > 0.03) {
            println!(
                "{model} b{} s{} {} {} {} {} {}: fwd {:+.2}% bwd {:+.2}%",
                t.col(r, "batch"),
                t.col(r, "seq"),
                dtype,
                t.col(r, "attn_impl"),
                ckpt,
                mode,
                device,
                f * 100.0,
                b * 100.0
            );
        }
    }
    for (m, (f, b, n)) in worst {
        println!("{m:30} {n:3} fwd {:+.2}% bwd {:+.2}%", f * 100.0, b * 100.0);
    }
}
