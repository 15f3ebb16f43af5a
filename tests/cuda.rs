//! The CUDA entry points of a build without the `cuda` feature (the stand-in in
//! `src/cuda_stub.rs`): `--device cuda:0` fails with exit 2 and "built without CUDA
//! support; see README", `probe devices` lists the CPU and says CUDA is unavailable,
//! `--version` says `cuda: no`. Plus the measurement-file columns the CUDA meter added:
//! files written before them still read, and appending to a file of another schema is refused.
//! (The `cuda` build itself is compiled by scripts/build-cuda.sh in CI.)

use std::path::PathBuf;
use std::process::{Command, Output};

use llm_mem::probe::measurement;

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llm-mem"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llm-mem-cuda-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const NO_CUDA: &str = "built without CUDA support; see README";

#[test]
fn device_cuda_without_the_feature_is_a_clean_error() {
    let out = tempdir("run");
    let o = out.to_str().unwrap();
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
        let r = bin(&args);
        let (stdout, stderr) = text(&r);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains(NO_CUDA), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // nothing was measured, so nothing was written
    assert!(!out.join("results").exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_device_names_what_is_accepted() {
    let r = bin(&[
        "probe",
        "run",
        "--plan",
        "probes/cpu-smoke.toml",
        "--device",
        "tpu",
    ]);
    let (_, stderr) = text(&r);
    assert_eq!(r.status.code(), Some(2));
    assert!(stderr.contains("cpu, cuda or cuda:N"), "{stderr}");
}

#[test]
fn devices_lists_cpu_and_says_cuda_is_unavailable() {
    let r = bin(&["probe", "devices"]);
    let (stdout, stderr) = text(&r);
    assert_eq!(r.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.lines().next().unwrap().starts_with("cpu "),
        "{stdout}"
    );
    assert!(
        stdout.contains("unavailable") && stdout.contains(NO_CUDA),
        "{stdout}"
    );
}

#[test]
fn version_says_whether_cuda_is_built_in() {
    let r = bin(&["--version"]);
    let (stdout, _) = text(&r);
    assert_eq!(r.status.code(), Some(0));
    assert_eq!(
        stdout.trim(),
        format!("llm-mem {} (cuda: no)", env!("CARGO_PKG_VERSION"))
    );
    const { assert!(!llm_mem::probe::cuda::CUDA_ENABLED) };
}

/// The CPU calibration measured before the side columns existed.
const OLD: &str = "results/cpu-default-cpu-2026-11-27.csv";

#[test]
fn measurement_files_without_the_side_columns_still_read() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(OLD);
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
    let dir = tempdir("schema");
    let old = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(OLD);
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
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn points_give_the_scaled_hf_config_of_each_architecture() {
    let r = bin(&[
        "probe",
        "points",
        "--plan",
        "probes/gpu-default.toml",
        "--device",
        "cpu",
    ]);
    let (stdout, stderr) = text(&r);
    assert_eq!(r.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
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
