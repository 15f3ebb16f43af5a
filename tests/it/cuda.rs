//! The CUDA entry points. Without the `cuda` feature (the stand-in in
//! `src/probe/cuda_stub.rs`): `--device cuda:0` fails with exit 2 and "built without
//! CUDA support; see README", `probe devices` lists the CPU and says CUDA is
//! unavailable, `--version` says `cuda: no`. With it, `--version` says `cuda: yes`, and
//! with `LLM_MEM_GPU_TESTS=1` on a machine with a GPU, `probe devices` lists it and the
//! smoke plan runs on `cuda:0`. Plus the measurement-file columns the CUDA meter added:
//! files written before them still read, and appending to a file of another schema is refused.
//! (The `cuda` build itself is compiled by scripts/build-cuda.sh in CI.)

use llm_mem::probe::measurement;

use crate::util::{root, run, TempDir};

#[cfg(not(feature = "cuda"))]
const NO_CUDA: &str = "built without CUDA support; see README";

#[cfg(not(feature = "cuda"))]
#[test]
fn device_cuda_without_the_feature_is_a_clean_error() {
    let out = TempDir::new("cuda-run");
    let o = out.path().to_str().unwrap();
    for args in [
        vec![
            "probe",
            "run",
            "--plan",
            "probes/cpu-smoke.toml",
            "--device",
            "cuda:0",
            "--out",
            o,
            "--quiet",
        ],
        vec![
            "probe",
            "calibrate",
            "--plan",
            "probes/cpu-smoke.toml",
            "--device",
            "cuda:0",
            "--out",
            o,
            "--quiet",
        ],
        // the plan's own device
        vec![
            "probe",
            "run",
            "--plan",
            "probes/gpu-default.toml",
            "--out",
            o,
            "--quiet",
        ],
    ] {
        let r = run(&args);
        assert_eq!(r.code, 2, "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(NO_CUDA), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    // nothing was measured, so nothing was written
    assert!(!out.join("results").exists());
}

#[test]
fn bad_device_names_what_is_accepted() {
    let r = run([
        "probe",
        "run",
        "--plan",
        "probes/cpu-smoke.toml",
        "--device",
        "tpu",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("cpu, cuda or cuda:N"), "{}", r.stderr);
}

#[cfg(not(feature = "cuda"))]
#[test]
fn devices_lists_cpu_and_says_cuda_is_unavailable() {
    let r = run(["probe", "devices"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.lines().next().unwrap().starts_with("cpu "),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("unavailable") && r.stdout.contains(NO_CUDA),
        "{}",
        r.stdout
    );
}

#[test]
fn version_says_whether_cuda_is_built_in() {
    let r = run(["--version"]);
    assert_eq!(r.code, 0);
    let cuda = if cfg!(feature = "cuda") { "yes" } else { "no" };
    assert_eq!(
        r.stdout.trim(),
        format!("llm-mem {} (cuda: {cuda})", env!("CARGO_PKG_VERSION"))
    );
    const { assert!(llm_mem::probe::cuda::CUDA_ENABLED == cfg!(feature = "cuda")) };
}

/// GPU checks of the `cuda` build, for a machine with a GPU: they run only when
/// `LLM_MEM_GPU_TESTS=1` (a `cuda` build on a machine without one, as in CI, cannot
/// pass them) and say so when skipped.
#[cfg(feature = "cuda")]
fn gpu_tests_enabled(test: &str) -> bool {
    let on = std::env::var("LLM_MEM_GPU_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("{test}: skipped (set LLM_MEM_GPU_TESTS=1 on a machine with a GPU)");
    }
    on
}

#[cfg(feature = "cuda")]
#[test]
fn devices_lists_the_gpus() {
    if !gpu_tests_enabled("devices_lists_the_gpus") {
        return;
    }
    let r = run(["probe", "devices"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let mut lines = r.stdout.lines();
    assert!(lines.next().unwrap().starts_with("cpu "), "{}", r.stdout);
    assert!(!r.stdout.contains("unavailable"), "{}", r.stdout);
    assert!(r.stdout.contains("\ncuda:0 "), "{}", r.stdout);
    let devices = llm_mem::probe::cuda::devices().unwrap();
    assert!(!devices.is_empty(), "no CUDA device");
    for d in &devices {
        assert!(d.total_bytes > 0, "{d:?}");
        assert!(
            r.stdout.contains(&d.name),
            "{} not listed:\n{}",
            d.name,
            r.stdout
        );
    }
}

#[cfg(feature = "cuda")]
#[test]
fn smoke_plan_runs_on_cuda_0() {
    if !gpu_tests_enabled("smoke_plan_runs_on_cuda_0") {
        return;
    }
    let out = TempDir::new("cuda-gpu-run");
    let o = out.path().to_str().unwrap();
    let r = run([
        "probe",
        "run",
        "--plan",
        "probes/cpu-smoke.toml",
        "--device",
        "cuda:0",
        "--out",
        o,
        "--quiet",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let csv = std::fs::read_dir(out.join("results"))
        .unwrap()
        .next()
        .expect("a measurement file")
        .unwrap()
        .path();
    let rows = measurement::read(&csv).unwrap();
    assert!(!rows.is_empty());
    for row in &rows {
        assert_eq!(row.status, "ok", "{row:?}");
        assert_eq!(row.meter, "cuda-pool+nvml", "{row:?}");
        assert!(row.measured_peak_bytes > row.static_bytes, "{row:?}");
    }
}

/// The CPU calibration measured before the side columns existed.
const OLD: &str = "results/cpu-default-cpu-2026-11-27.csv";

#[test]
fn measurement_files_without_the_side_columns_still_read() {
    let path = root().join(OLD);
    let head = std::fs::read_to_string(&path).unwrap();
    assert!(!head
        .lines()
        .next()
        .unwrap()
        .contains("allocator_peak_bytes"));
    let rows = measurement::read(&path).unwrap();
    assert!(rows.len() > 10);
    assert!(rows
        .iter()
        .all(|r| r.allocator_peak_bytes.is_none() && r.side_sources.is_empty()));
    assert!(measurement::header().ends_with("process_used_peak_bytes,side_sources"));
}

/// Raw rows are never rewritten: appending to a file of another schema (older, or
/// newer with columns this version does not know) is refused and the file is left
/// byte for byte as it was; a file of this schema takes the row.
#[test]
fn appending_to_a_file_of_another_schema_is_refused_and_leaves_it_unchanged() {
    let dir = TempDir::new("cuda-schema");
    let old = root().join(OLD);
    let rows = measurement::read(&old).unwrap();
    assert!(rows.iter().all(|r| r.schema_version == 1), "{:?}", rows[0]);
    let mut new = rows[0].clone();
    new.schema_version = measurement::SCHEMA_VERSION;
    new.point = "extra/full/b1/s1".into();
    new.allocator_peak_bytes = Some(123);
    new.side_sources = "allocator=test".into();
    let newer = format!("{},gpu_temperature_c\n", measurement::header());
    for (name, text) in [
        ("old.csv", std::fs::read_to_string(&old).unwrap()),
        ("newer.csv", newer),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, &text).unwrap();
        let e = measurement::Writer::append(&path).err().expect("refused");
        let msg = e.to_string();
        assert!(msg.contains("schema") && msg.contains("new file"), "{msg}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "{name} changed"
        );
    }
    let newer_err = measurement::Writer::append(&dir.join("newer.csv"))
        .err()
        .unwrap();
    assert!(
        newer_err.to_string().contains("gpu_temperature_c"),
        "{newer_err}"
    );
    let path = dir.join("current.csv");
    {
        let mut w = measurement::Writer::append(&path).unwrap();
        w.write(&new).unwrap();
    }
    {
        let mut w = measurement::Writer::append(&path).unwrap();
        w.write(&new).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().next().unwrap(), measurement::header());
    assert!(measurement::header().starts_with("schema_version,"));
    assert_eq!(measurement::read(&path).unwrap(), vec![new.clone(), new]);
}

#[test]
fn points_give_the_scaled_hf_config_of_each_architecture() {
    let r = run([
        "probe",
        "points",
        "--plan",
        "probes/gpu-default.toml",
        "--device",
        "cpu",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["plan"], "gpu-default");
    assert_eq!(v["dtype"], "bf16");
    let pts = v["points"].as_array().unwrap();
    let families: std::collections::BTreeSet<&str> =
        pts.iter().map(|p| p["family"].as_str().unwrap()).collect();
    assert!(families.len() >= 4, "{families:?}");
    for p in pts {
        let hf = &p["hf_config"];
        let (hidden, layers) = if p["model_type"] == "gpt2" {
            (&hf["n_embd"], &hf["n_layer"])
        } else {
            (&hf["hidden_size"], &hf["num_hidden_layers"])
        };
        assert_eq!(hidden, &p["hidden"], "{}", p["id"]);
        assert_eq!(layers, &p["layers"], "{}", p["id"]);
        assert_eq!(hf["model_type"], p["model_type"]);
        assert_eq!(hf["vocab_size"], p["vocab"]);
        assert!(p["candle_predicted_peak_bytes"].as_u64().unwrap() > 0);
    }
}
