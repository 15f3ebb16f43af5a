//! What the test modules share, written once: the binary and how to run it, temp
//! folders, the test data (`tests/data`), presets and configs, workloads, CSV tables,
//! and proptest runs that count the cases that reached their assertion.
//!
//! `tests/probe.rs` (its own binary: it installs the counting allocator) includes this
//! file with `#[path]`, so nothing here may assume the `it` binary.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use llm_mem::workload::overhead::Overheads;
use llm_mem::workload::settings::Settings;
use llm_mem::workload::Workload;
use llm_mem::ModelSpec;
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

// ---------------------------------------------------------------- paths and files

/// The crate root (`CARGO_MANIFEST_DIR`).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/data/<rel>`.
pub fn data_path(rel: &str) -> PathBuf {
    root().join("tests/data").join(rel)
}

/// The text of `tests/data/<rel>`.
pub fn read_data(rel: &str) -> String {
    let p = data_path(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A fresh, empty folder under the system temp dir, removed on drop. Names are unique
/// within the process (pid + counter + tag), so tests running in parallel in one binary
/// never share one.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "llm-mem-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.0.join(rel)
    }
    /// Write `text` to `<dir>/<name>` (creating folders), returning the path as text.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- the binary

/// The `llm-mem` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_llm-mem");

/// What one run of the binary gave.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// Run the binary with `args`, from the crate root (relative paths such as
/// `probes/cpu-smoke.toml` resolve there) and offline: the HF cache points at an empty
/// folder and `HF_HUB_OFFLINE=1`, so results do not depend on the machine or the network. No run may panic.
pub fn run<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_with(args, &[])
}

/// [`run`] with environment variables set on top (`HF_HUB_CACHE`, `HF_HUB_OFFLINE`,
/// `HF_ENDPOINT`, ...); an empty value removes the variable.
pub fn run_with<I, S>(args: I, env: &[(&str, &str)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let cache = TempDir::new("hf-cache");
    let mut cmd = Command::new(BIN);
    cmd.args(&args)
        .current_dir(root())
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_ENDPOINT")
        .env_remove("HF_TOKEN");
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().expect("the binary runs");
    let r = Run {
        code: out.status.code().expect("exited, not killed by a signal"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    };
    assert!(
        !r.stderr.contains("panicked") && !r.stdout.contains("panicked"),
        "llm-mem {args:?} panicked:\n{}",
        r.stderr
    );
    r
}

/// Exit code, stdout and stderr, readable in assertion messages.
impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rc {}\n{}\n{}", self.code, self.stdout, self.stderr)
    }
}

/// `llm-mem estimate ARGS`.
pub fn estimate(args: &[&str]) -> Run {
    let mut all = vec!["estimate"];
    all.extend_from_slice(args);
    run(&all)
}

/// Exit code 2 and a stderr that mentions every one of `needles`.
pub fn assert_error(r: &Run, needles: &[&str]) {
    assert_eq!(
        r.code, 2,
        "expected exit 2, got {}\nstdout:\n{}\nstderr:\n{}",
        r.code, r.stdout, r.stderr
    );
    for n in needles {
        assert!(
            r.stderr.contains(n),
            "stderr does not mention {n:?}:\n{}",
            r.stderr
        );
    }
}

// ---------------------------------------------------------------- models and workloads

/// A preset by name (it exists and parses).
pub fn preset(name: &str) -> ModelSpec {
    llm_mem::hf::presets::get(name)
        .unwrap_or_else(|| panic!("no preset {name}"))
        .unwrap_or_else(|e| panic!("preset {name}: {e}"))
}

/// `tests/data/configs/<model>/config.json`, loaded as `--model <path>` loads it.
pub fn config_spec(model: &str) -> ModelSpec {
    let path = data_path(&format!("configs/{model}/config.json"));
    llm_mem::hf::hub::load_config_file(&path).unwrap_or_else(|e| panic!("{model}: {e}"))
}

/// The validated workload and overheads of `cfg` for `spec` (it must be accepted).
pub fn build(spec: &ModelSpec, cfg: &Settings) -> (Workload, Overheads) {
    cfg.build(spec)
        .unwrap_or_else(|e| panic!("{}: {cfg:?} rejected: {e}", spec.name))
}

/// The validated workload of `cfg` for `spec` (it must be accepted).
pub fn workload(spec: &ModelSpec, cfg: Settings) -> Workload {
    build(spec, &cfg).0
}

// ---------------------------------------------------------------- CSV tables

/// A CSV file read whole, with its columns looked up by header name.
pub struct Table {
    pub header: csv::StringRecord,
    pub rows: Vec<csv::StringRecord>,
}

impl Table {
    /// `tests/data/<rel>`.
    pub fn data(rel: &str) -> Table {
        let p = data_path(rel);
        let rdr = csv::Reader::from_path(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        Table::read(rdr)
    }
    /// CSV text (e.g. the binary's `--csv` output).
    pub fn parse(text: &str) -> Table {
        Table::read(csv::Reader::from_reader(text.as_bytes()))
    }
    fn read<R: std::io::Read>(mut rdr: csv::Reader<R>) -> Table {
        let header = rdr.headers().unwrap().clone();
        let rows = rdr.records().map(|r| r.unwrap()).collect();
        Table { header, rows }
    }
    /// The index of column `name`, if the file has it.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }
    /// Row `row`'s value in column `name`, if the file has the column.
    pub fn get<'a>(&self, row: &'a csv::StringRecord, name: &str) -> Option<&'a str> {
        self.column(name).map(|i| &row[i])
    }
    /// Row `row`'s value in column `name`, which the file must have.
    pub fn col<'a>(&self, row: &'a csv::StringRecord, name: &str) -> &'a str {
        self.get(row, name)
            .unwrap_or_else(|| panic!("no column {name} in {:?}", self.header))
    }
}

// ---------------------------------------------------------------- counted proptests

/// A proptest configuration for a property in `source` (pass `file!()`): `cases` new
/// cases, failures saved beside the source file as `<stem>.proptest-regressions` and
/// replayed first. (proptest's default, `SourceParallel`, would look for a
/// `proptest-regressions/` folder beside `tests/it/`, because `tests/it/main.rs` looks
/// like a crate root to it.)
pub fn proptest_config(cases: u32, source: &'static str) -> Config {
    Config {
        cases,
        source_file: Some(source),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

/// How many seeds proptest replays for `config` before its new cases, as proptest
/// itself finds them.
pub fn persisted_seeds(config: &Config) -> usize {
    config
        .failure_persistence
        .as_ref()
        .map_or(0, |f| f.load_persisted_failures2(config.source_file).len())
}

/// The `cc <seed>` lines of `<stem>.proptest-regressions` beside `source` (0 when
/// there is no such file).
pub fn regression_seeds_beside(source: &str) -> usize {
    let path = root().join(source).with_extension("proptest-regressions");
    fs::read_to_string(path).map_or(0, |t| t.lines().filter(|l| l.starts_with("cc ")).count())
}

/// Counts the cases that reached a property's assertion.
#[derive(Default)]
pub struct Checked(AtomicUsize);

impl Checked {
    /// Call once per case, after its assertions.
    pub fn hit(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a counted property run checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// New cases (= `config.cases`).
    pub new: usize,
    /// Seeds replayed first from the regressions file beside the source.
    pub replayed: usize,
}

/// Run property `name` over `strategy` and assert that every case reached its
/// assertion: `test` calls `checked.hit()` after asserting, and returns early only by
/// failing. Exactly `config.cases` new cases plus the seeds of the regressions file
/// beside the source (which proptest must have read: its count is checked against the
/// file's) must have been checked.
pub fn check_all<S: Strategy>(
    name: &str,
    config: Config,
    strategy: S,
    test: impl Fn(S::Value, &Checked) -> Result<(), TestCaseError>,
) -> Counted {
    let source = config.source_file.expect("proptest_config sets the source");
    let replayed = persisted_seeds(&config);
    assert_eq!(
        replayed,
        regression_seeds_beside(source),
        "{name}: proptest does not read the regressions file beside {source}"
    );
    let new = config.cases as usize;
    let checked = Checked::default();
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, |v| test(v, &checked)) {
        panic!("{name}: {e}");
    }
    assert_eq!(
        checked.get(),
        new + replayed,
        "{name}: {} of {} cases reached the assertion",
        checked.get(),
        new + replayed
    );
    Counted { new, replayed }
}
