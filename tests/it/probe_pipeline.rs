//! The probe pipeline (run → CSV → calibrate → report) with a fake executor and a fake
//! meter, then the real CLI on the smoke plan.

use std::path::Path;

use llm_mem::calibration::{self, CalibrationFile};
use llm_mem::probe::candle_model::StepMeasurement;
use llm_mem::probe::measurement;
use llm_mem::probe::meter::{FakeMeter, MemoryMeter};
use llm_mem::probe::{self, Executor, Plan, Point};

use crate::util::{run, Run, TempDir};

const PLAN: &str = r#"
schema_version = 1
name = "fake"
[shapes]
batch = [1, 2]
seq = [8, 16, 32]
[[architectures]]
model = "llama-3.2-1b"
layers = 1
hidden = 32
heads = 2
kv_heads = 1
intermediate = 64
vocab = 64
[[architectures]]
model = "gpt2"
layers = 1
hidden = 32
heads = 2
intermediate = 64
vocab = 64
"#;

/// Pretends the device uses 1.1 × the predicted activation memory + 4 KiB.
struct Fake {
    oom_point: String,
}

impl Executor for Fake {
    fn device_name(&self) -> String {
        "fake device".into()
    }
    fn run(
        &mut self,
        plan: &Plan,
        p: &Point,
        meter: &mut dyn MemoryMeter,
    ) -> llm_mem::Result<StepMeasurement> {
        let pred = probe::predict(plan, p)?;
        let stat = pred.weights + pred.optimizer_state;
        // 1.1 × the predicted bytes above weights, optimizer state and gradients
        let above = pred.peak() - stat - pred.param_grads;
        let dynamic = pred.param_grads + (above as f64 * 1.1) as u64 + 4096;
        let peak = if p.id == self.oom_point {
            1 << 40
        } else {
            dynamic
        };
        let mut m = FakeMeter::new(100, vec![100 + peak]);
        m.limit = Some(1 << 30);
        let base = m.baseline()?;
        m.start()?;
        let r = m.stop()?;
        let _ = meter.kind();
        Ok(StepMeasurement {
            static_bytes: stat,
            forward: 0,
            loss: 0,
            backward: r.peak - base,
            optimizer: 0,
            step: r.peak - base,
            source: Some(r.source),
            ..StepMeasurement::default()
        })
    }
}

fn fake_meter() -> Box<dyn MemoryMeter> {
    Box::new(FakeMeter::new(0, vec![]))
}

#[test]
fn pipeline_with_fake_executor() {
    let dir = TempDir::new("pipeline");
    let plan = Plan::parse(PLAN, "fake.toml").unwrap();
    let points = plan.points(Path::new(".")).unwrap();
    assert_eq!(points.len(), 12);
    let csv = dir.join("results/fake.csv");
    let mut exec = Fake {
        oom_point: "gpt2/full/b2/s32".into(),
    };
    // an interrupted sweep: only the first five points ran
    let s = probe::run_sweep(&plan, &points[..5], &mut exec, &mut fake_meter, &csv, false).unwrap();
    assert_eq!((s.ran, s.skipped), (5, 0));
    assert_eq!(measurement::read(&csv).unwrap().len(), 5);
    // resume: the finished rows are kept and skipped
    let s = probe::run_sweep(&plan, &points, &mut exec, &mut fake_meter, &csv, false).unwrap();
    assert_eq!((s.ran, s.skipped, s.failed), (7, 5, 1));
    let rows = measurement::read(&csv).unwrap();
    assert_eq!(rows.len(), 12);
    let oom: Vec<_> = rows.iter().filter(|r| r.status == "oom").collect();
    assert_eq!(oom.len(), 1);
    assert_eq!(oom[0].point, "gpt2/full/b2/s32");
    assert!(
        oom[0].message.contains("out of memory"),
        "{}",
        oom[0].message
    );
    assert!(rows
        .iter()
        .all(|r| r.device_name == "fake device" && r.predicted_peak_bytes > 0));
    // calibrate: recovers the 1.1 factor and the 4 KiB offset
    let cal = calibration::fit(&rows, vec![csv.display().to_string()]).unwrap();
    for (f, e) in &cal.families {
        assert!((e.alpha - 1.1).abs() < 1e-3, "{f}: {e:?}");
        assert!((e.beta_bytes - 4096.0).abs() < 64.0, "{f}: {e:?}");
        assert!(e.alpha_ci[0] <= e.alpha && e.alpha <= e.alpha_ci[1]);
    }
    assert_eq!(cal.families["gpt2"].n_points, 5);
    let path = dir.join("calibration").join(cal.file_name());
    cal.write(&path).unwrap();
    let back = CalibrationFile::load(&path).unwrap();
    assert_eq!(back.families.len(), cal.families.len());
    for (f, e) in &cal.families {
        let b = &back.families[f];
        assert_eq!(b.n_points, e.n_points);
        assert!((b.alpha - e.alpha).abs() < 1e-12 && (b.beta_bytes - e.beta_bytes).abs() < 1e-6);
    }
    // reports
    let cmp = calibration::compare(&rows, Some(&cal));
    let md = llm_mem::report::probe_md::render("fake", &["fake.csv".into()], &cmp, Some(&cal));
    assert!(md.contains("| gpt2/full/b2/s32 | oom |"), "{md}");
    assert!(md.contains("after calibration: median"), "{md}");
    let svg = llm_mem::report::probe_svg::render("fake", &cmp);
    assert!(svg.starts_with("<svg") && svg.contains("stroke-dasharray"));
    let c = llm_mem::report::probe_csv::render(&cmp);
    assert_eq!(c.lines().count(), 13);
    for x in cmp.iter().filter_map(|c| c.err_after()) {
        assert!(x.abs() < 0.01, "{x}");
    }
}

#[test]
fn cli_smoke_calibration_and_estimate() {
    let dir = TempDir::new("probe-cli");
    let out_dir = dir.path().to_str().unwrap();
    let t0 = std::time::Instant::now();
    let r = run([
        "probe",
        "calibrate",
        "--quiet",
        "--plan",
        "probes/cpu-smoke.toml",
        "--out",
        out_dir,
    ]);
    assert!(r.success(), "{}", r.stderr);
    assert!(t0.elapsed().as_secs() < 60);
    let cal_path = dir.join("calibration/cpu-candle.json");
    let cal = CalibrationFile::load(&cal_path).unwrap();
    assert_eq!(
        (cal.device.as_str(), cal.runtime.as_str()),
        ("cpu", "candle")
    );
    for e in cal.families.values() {
        assert!(e.alpha.is_finite() && e.beta_bytes.is_finite());
        assert!((e.alpha - 1.0).abs() < 0.03, "{e:?}");
        assert!(e.alpha_ci[0] <= e.alpha && e.alpha <= e.alpha_ci[1]);
    }
    // report
    let csv = std::fs::read_dir(dir.join("results"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let r = run([
        "probe",
        "report",
        "--from",
        csv.to_str().unwrap(),
        "--calibration",
        cal_path.to_str().unwrap(),
        "--out",
        out_dir,
    ]);
    assert!(r.success(), "{}", r.stderr);
    // estimate with the calibration
    let est = |cal: &Path, family: &str| -> Run {
        run([
            "estimate",
            "-m",
            family,
            "--layers",
            "2",
            "--runtime",
            "candle",
            "--device",
            "cpu",
            "--dtype",
            "fp32",
            "--seq-len",
            "32",
            "--calibration",
            cal.to_str().unwrap(),
        ])
    };
    let r = est(&cal_path, "llama-3.2-1b");
    assert!(r.success(), "{}", r.stderr);
    assert!(
        r.stderr.contains("calibrated: cpu") && r.stderr.contains("points"),
        "{}",
        r.stderr
    );
    let r = est(&cal_path, "qwen2.5-0.5b");
    assert!(r.stderr.contains("fallback"), "{}", r.stderr);
    // corrupt and wrong-version files: clear errors, exit 2
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"schema_version\": 1, \"device\": ").unwrap();
    let r = est(&bad, "gpt2");
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("invalid calibration file"),
        "{}",
        r.stderr
    );
    let text = std::fs::read_to_string(&cal_path)
        .unwrap()
        .replace("\"schema_version\": 1", "\"schema_version\": 9");
    std::fs::write(&bad, text).unwrap();
    let r = est(&bad, "gpt2");
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("schema_version 9") && r.stderr.contains("accepted: 1"),
        "{}",
        r.stderr
    );
    // cuda without the feature (with it, `cuda::smoke_plan_runs_on_cuda_0`)
    #[cfg(not(feature = "cuda"))]
    {
        let plan = dir.join("cuda.toml");
        std::fs::write(
            &plan,
            std::fs::read_to_string(crate::util::root().join("probes/cpu-smoke.toml"))
                .unwrap()
                .replace("device = \"cpu\"", "device = \"cuda:0\""),
        )
        .unwrap();
        let r = run([
            "probe",
            "run",
            "--quiet",
            "--plan",
            plan.to_str().unwrap(),
            "--out",
            out_dir,
        ]);
        assert_eq!(r.code, 2);
        assert!(
            r.stderr.contains("built without CUDA support; see README"),
            "{}",
            r.stderr
        );
    }
}

// ---------------------------------------------------------------- issue 9: bounds and raw data

/// The findings report's plan (`/tmp/heads.toml`): llama scaled down, one shape.
fn finding_plan(arch: &str, shapes: &str) -> String {
    format!(
        "schema_version = 1\nname = \"p\"\ndevice = \"cpu\"\ndtype = \"f32\"\nmethods = [\"full\"]\noptimizer = \"adamw\"\nattn = \"eager\"\nwarmup_steps = 1\nmeasured_steps = 1\n[shapes]\n{shapes}\n[[architectures]]\n{arch}\n"
    )
}

const LLAMA_64: &str = "model = \"llama-3.2-1b\"\nlayers = 2\nhidden = 64\nheads = 4\nkv_heads = 2\nintermediate = 128\nvocab = 256";

#[test]
fn h4_more_heads_than_hidden_is_an_error() {
    let dir = TempDir::new("h4");
    let mut checked = 0;
    for model in ["llama-3.2-1b", "qwen2.5-0.5b", "phi-2"] {
        let arch = format!("model = \"{model}\"\nlayers = 2\nhidden = 64\nheads = 128\nkv_heads = 128\nintermediate = 128\nvocab = 256");
        let plan = dir.write(
            &format!("{model}.toml"),
            &finding_plan(&arch, "batch = [1]\nseq = [16]"),
        );
        for cmd in ["points", "run"] {
            let mut args = vec!["probe", cmd, "--plan", &plan];
            if cmd == "run" {
                args.extend(["--out", dir.path().to_str().unwrap(), "--quiet"]);
            }
            let r = run(args);
            assert_eq!(r.code, 2, "{model} {cmd}: {}", r.stderr);
            assert!(
                r.stderr.contains("heads \"128\"")
                    && r.stderr.contains("hidden")
                    && r.stderr.contains("head_dim 0"),
                "{model} {cmd}: {}",
                r.stderr
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 6);
}

#[test]
fn h5_huge_plan_shapes_are_errors_naming_the_value() {
    let dir = TempDir::new("h5");
    let out = dir.path().to_str().unwrap().to_string();
    let cases = [
        (
            LLAMA_64.to_string(),
            "batch = [1000000000000]\nseq = [16]",
            "shapes.batch \"1000000000000\"",
        ),
        (
            LLAMA_64.to_string(),
            "batch = [1]\nseq = [1000000000]",
            "shapes.seq \"1000000000\"",
        ),
        (
            LLAMA_64.replace("hidden = 64", "hidden = 2000000"),
            "batch = [1]\nseq = [16]",
            "hidden \"2000000\"",
        ),
        (
            LLAMA_64.replace("vocab = 256", "vocab = 100000000"),
            "batch = [1]\nseq = [16]",
            "vocab \"100000000\"",
        ),
        (
            LLAMA_64.replace("layers = 2", "layers = 100000"),
            "batch = [1]\nseq = [16]",
            "layers \"100000\"",
        ),
        // each size in bounds, the scores tensor (b·s·s·heads·4 B) past 256 PiB
        (
            LLAMA_64.to_string(),
            "batch = [1048576]\nseq = [67108864]",
            "batch x seq",
        ),
    ];
    for (i, (arch, shapes, named)) in cases.iter().enumerate() {
        let plan = dir.write(&format!("big{i}.toml"), &finding_plan(arch, shapes));
        let r = run(["probe", "run", "--plan", &plan, "--out", &out, "--quiet"]);
        assert_eq!(r.code, 2, "case {i}: {}", r.stderr);
        assert!(
            r.stderr.contains(named) && r.stderr.contains("accepted"),
            "case {i}: {}",
            r.stderr
        );
    }
    // in bounds but far past the limit: recorded as oom without running (no abort)
    let arch = LLAMA_64.replace("hidden = 64", "hidden = 1048576");
    let plan = dir.write("wide.toml", &finding_plan(&arch, "batch = [1]\nseq = [16]"));
    let csv = dir.join("wide.csv");
    let r = run([
        "probe",
        "run",
        "--plan",
        &plan,
        "--out",
        &out,
        "--quiet",
        "--memory-limit",
        "64MiB",
        "--resume",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = measurement::read(&csv).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "oom");
    assert!(
        rows[0].message.contains("not run") && rows[0].message.contains("predicts"),
        "{}",
        rows[0].message
    );
    // no limit: the host's memory bounds it (4.4 TB of weights)
    let csv = dir.join("wide-nolimit.csv");
    let r = run([
        "probe",
        "run",
        "--plan",
        &plan,
        "--out",
        &out,
        "--quiet",
        "--resume",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = measurement::read(&csv).unwrap();
    assert_eq!((rows.len(), rows[0].status.as_str()), (1, "oom"));
    assert!(
        rows[0].message.contains("the device holds"),
        "{}",
        rows[0].message
    );
}

#[test]
fn l12_empty_methods_and_unbounded_steps_are_errors() {
    let cases = [
        ("methods = [\"full\"]", "methods = []", "methods is empty"),
        (
            "warmup_steps = 1",
            "warmup_steps = 1000000000",
            "warmup_steps \"1000000000\"",
        ),
        (
            "measured_steps = 1",
            "measured_steps = 1000000000",
            "measured_steps \"1000000000\"",
        ),
        (
            "attn",
            "lora_rank = 1000000000\nattn",
            "lora_rank \"1000000000\"",
        ),
    ];
    for (line, setting, named) in cases {
        let text = finding_plan(LLAMA_64, "batch = [1]\nseq = [16]").replacen(line, setting, 1);
        let e = Plan::parse(&text, "p.toml").unwrap_err().to_string();
        assert!(
            e.contains(named) && e.contains("accepted"),
            "{setting}: {e}"
        );
    }
    let text = finding_plan(
        &format!("{LLAMA_64}\nmethods = []"),
        "batch = [1]\nseq = [16]",
    );
    let e = Plan::parse(&text, "p.toml").unwrap_err().to_string();
    assert!(
        e.contains("methods is empty") && e.contains("llama-3.2-1b"),
        "{e}"
    );
}

fn fake_sweep(plan: &Plan, csv: &Path) -> llm_mem::Result<probe::SweepSummary> {
    let points = plan.points(Path::new("."))?;
    let mut exec = Fake {
        oom_point: String::new(),
    };
    probe::run_sweep(plan, &points, &mut exec, &mut fake_meter, csv, false)
}

#[test]
fn m7_resume_refuses_another_plans_file() {
    let dir = TempDir::new("m7");
    let csv = dir.join("a.csv");
    fake_sweep(&Plan::parse(PLAN, "fake.toml").unwrap(), &csv).unwrap();
    let before = std::fs::read(&csv).unwrap();
    let other = Plan::parse(
        &PLAN.replace("name = \"fake\"", "name = \"other\""),
        "o.toml",
    )
    .unwrap();
    let e = fake_sweep(&other, &csv).unwrap_err().to_string();
    assert!(
        e.contains("holds plan fake, not other") && e.contains("line 2"),
        "{e}"
    );
    assert_eq!(std::fs::read(&csv).unwrap(), before, "the file changed");
}

#[test]
fn m8_resume_keys_points_by_every_shape_field() {
    let dir = TempDir::new("m8");
    let csv = dir.join("a.csv");
    fake_sweep(&Plan::parse(PLAN, "fake.toml").unwrap(), &csv).unwrap();
    let before = std::fs::read(&csv).unwrap();
    let mut checked = 0;
    for (from, to, named) in [
        (
            "hidden = 32\nheads = 2\nkv_heads",
            "hidden = 64\nheads = 2\nkv_heads",
            "hidden 32",
        ),
        (
            "vocab = 64\n[[architectures]]",
            "vocab = 128\n[[architectures]]",
            "vocab 64",
        ),
        (
            "name = \"fake\"",
            "name = \"fake\"\nmeasured_steps = 2",
            "measured_steps 1",
        ),
        (
            "name = \"fake\"",
            "name = \"fake\"\ndtype = \"bf16\"",
            "dtype fp32",
        ),
    ] {
        let edited = Plan::parse(&PLAN.replacen(from, to, 1), "fake.toml").unwrap();
        let e = fake_sweep(&edited, &csv).unwrap_err().to_string();
        assert!(
            e.contains("llama-3.2-1b/full/b1/s8") && e.contains(named) && e.contains("new file"),
            "{to}: {e}"
        );
        assert_eq!(std::fs::read(&csv).unwrap(), before, "the file changed");
        checked += 1;
    }
    assert_eq!(checked, 4);
    // the same plan resumes: nothing to do
    let s = fake_sweep(&Plan::parse(PLAN, "fake.toml").unwrap(), &csv).unwrap();
    assert_eq!((s.ran, s.skipped), (0, 12));
}

#[test]
fn l13_a_torn_last_line_is_reported_and_its_point_rerun() {
    let dir = TempDir::new("l13");
    let csv = dir.join("a.csv");
    let plan = Plan::parse(PLAN, "fake.toml").unwrap();
    let points = plan.points(Path::new(".")).unwrap();
    let mut exec = Fake {
        oom_point: String::new(),
    };
    probe::run_sweep(&plan, &points[..5], &mut exec, &mut fake_meter, &csv, false).unwrap();
    let full = std::fs::read(&csv).unwrap();
    let cut = full.len() - 200;
    std::fs::write(&csv, &full[..cut]).unwrap();
    // calibrate / report: the line is named, with the way out
    let e = measurement::read(&csv).unwrap_err().to_string();
    assert!(e.contains("line 6") && e.contains("--resume"), "{e}");
    // resume: the fragment is set aside, its point re-run, the complete rows untouched
    let s = probe::run_sweep(&plan, &points, &mut exec, &mut fake_meter, &csv, false).unwrap();
    assert_eq!((s.ran, s.skipped), (8, 4));
    let torn = s.torn.expect("reported");
    assert!(
        torn.contains("line 6") && torn.contains(&points[4].id),
        "{torn}"
    );
    let after = std::fs::read(&csv).unwrap();
    let complete = full[..cut].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    assert_eq!(&after[..complete], &full[..complete]);
    let aside = std::fs::read(dir.join("a.csv.torn")).unwrap();
    assert!(aside.starts_with(&full[complete..cut]));
    let rows = measurement::read(&csv).unwrap();
    assert_eq!(rows.len(), 12);
    let ids: std::collections::BTreeSet<_> = rows.iter().map(|r| r.point.clone()).collect();
    assert_eq!(ids.len(), 12);
}

/// A copy of the shipped measurement file with one cell replaced.
fn with_cell(dir: &TempDir, column: &str, row: usize, value: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(crate::util::root().join(SHIPPED)).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let i = lines[0].split(',').position(|c| c == column).unwrap();
    let mut cells: Vec<String> = lines[row].split(',').map(String::from).collect();
    cells[i] = value.into();
    lines[row] = cells.join(",");
    let p = dir.join(format!("{column}-{row}.csv"));
    // CRLF line ends, as Python's csv module writes them (M14's repro)
    std::fs::write(&p, lines.join("\r\n") + "\r\n").unwrap();
    p
}

const SHIPPED: &str = "results/cpu-default-cpu-2026-11-27.csv";

#[test]
fn m14_csv_errors_name_file_line_column_and_value() {
    let dir = TempDir::new("m14");
    let mut checked = 0;
    for (column, value, accepted) in [
        (
            "measured_peak_bytes",
            "-5",
            "a non-negative integer of bytes",
        ),
        (
            "measured_peak_bytes",
            "NaN",
            "a non-negative integer of bytes",
        ),
        (
            "measured_peak_bytes",
            "1e300",
            "a non-negative integer of bytes",
        ),
        (
            "measured_peak_bytes",
            "lots",
            "a non-negative integer of bytes",
        ),
        ("hidden", "-1", "a non-negative integer"),
        ("seconds", "soon", "a number"),
    ] {
        let p = with_cell(&dir, column, 1, value);
        let e = measurement::read(&p).unwrap_err().to_string();
        let (at, cell) = (
            format!("{} line 2:", p.display()),
            format!("{column} \"{value}\": expected {accepted}"),
        );
        assert!(e.starts_with(&at) && e.contains(&cell), "{cell}: {e}");
        checked += 1;
    }
    assert_eq!(checked, 6);
}

#[test]
fn m9_calibrate_validates_rows_and_refuses_bad_fits() {
    let dir = TempDir::new("m9");
    let out = dir.path().to_str().unwrap().to_string();
    let calibrate = |files: &[&Path]| {
        let mut args: Vec<String> = vec![
            "probe".into(),
            "calibrate".into(),
            "--out".into(),
            out.clone(),
            "--from".into(),
        ];
        args.extend(files.iter().map(|f| f.display().to_string()));
        run(args)
    };
    // every measured peak 0: below the static bytes
    let text = std::fs::read_to_string(crate::util::root().join(SHIPPED)).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let i = lines[0]
        .split(',')
        .position(|c| c == "measured_peak_bytes")
        .unwrap();
    for l in lines.iter_mut().skip(1) {
        let mut c: Vec<&str> = l.split(',').collect();
        c[i] = "0";
        *l = c.join(",");
    }
    let zero = dir.join("zero.csv");
    std::fs::write(&zero, lines.join("\n") + "\n").unwrap();
    let huge = with_cell(&dir, "measured_peak_bytes", 3, "18446744073709551615");
    let maybe = with_cell(&dir, "status", 2, "maybe");
    let shipped = crate::util::root().join(SHIPPED);
    let cases: [(&[&Path], [&str; 3]); 4] = [
        // every measured peak 0: below the static bytes
        (&[&zero], ["line 2", "measured_peak_bytes 0", "static"]),
        // one absurd peak: out of bounds
        (&[&huge], ["line 4", "18446744073709551615", "accepted"]),
        (&[&maybe], ["line 3", "status \"maybe\"", "ok, oom, error"]),
        // the same file twice: duplicate points
        (
            &[&shipped, &shipped],
            ["twice", "llama-3.2-1b/full/b1/s32", "once"],
        ),
    ];
    for (files, needles) in cases {
        let r = calibrate(files);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(
            needles.iter().all(|n| r.stderr.contains(n)),
            "{needles:?}: {}",
            r.stderr
        );
    }
    // the shipped file still calibrates
    let r = calibrate(&[&shipped]);
    assert!(r.success(), "{}", r.stderr);
}
