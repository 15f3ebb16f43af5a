//! Fuzzing the command line in-process (issue 9): generated argument vectors through
//! clap's `Cli::try_parse_from`, and every accepted `estimate` through the same path
//! as the binary (`EstimateArgs::settings` → `Settings::resolve` → the estimate →
//! `--json`), whose document must be valid and self-consistent. Flags and values come
//! from the settings table (`SETTINGS`) and the shared value pools, with junk tokens
//! mixed in. The budget, the pools and the JSON checks are `tests/it/fuzz/shared.rs`,
//! included here; `LLM_MEM_FUZZ_CASES` scales the case count as there.

// the mutation helpers serve the file targets of tests/it only
#[allow(dead_code)]
#[path = "../../tests/it/fuzz/shared.rs"]
mod shared;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use clap::Parser;
use llm_mem::workload::settings::{FlagKind, SETTINGS};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::{Cli, Command};
use shared::{cases, estimate_checked, model_of, report, values_for, NASTY, WORDS};

/// One argument of an `estimate` command line: a setting's flag with a likely or nasty
/// value, an output flag, or a junk token.
fn argument() -> impl Strategy<Value = Vec<String>> {
    let setting = (
        0..SETTINGS.len(),
        any::<bool>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(k, nasty, i)| {
            let info = &SETTINGS[k];
            match info.kind {
                FlagKind::Switch(_) => vec![info.flag.to_string()],
                FlagKind::Value => {
                    let pool = if nasty { NASTY } else { values_for(info.key) };
                    vec![
                        info.flag.to_string(),
                        i.get(pool).trim_matches('"').to_string(),
                    ]
                }
            }
        });
    let output = prop::sample::select(vec!["--json", "--csv", "--help", "--version"])
        .prop_map(|f| vec![f.to_string()]);
    let junk = prop::sample::select(WORDS).prop_map(|w| vec![w.to_string()]);
    prop_oneof![30 => setting, 1 => output, 1 => junk]
}

/// A whole command line (without the program name).
fn command_line() -> impl Strategy<Value = Vec<String>> {
    let sub = prop::sample::select(vec![
        "estimate", "estimate", "estimate", "estimate", "estimate", "estimate", "models", "gpus",
        "plan", "probe", "bogus", "",
    ]);
    let model = prop::sample::select(values_for("model"));
    (
        sub,
        model,
        any::<bool>(),
        prop::collection::vec(argument(), 0..8),
    )
        .prop_map(|(sub, model, with_model, args)| {
            let mut v = vec![sub.to_string()];
            if with_model {
                v.extend(["--model".to_string(), model.to_string()]);
            }
            v.extend(args.into_iter().flatten());
            v
        })
}

/// Parse `argv`; run an accepted `estimate` through the library and check its JSON.
fn one(
    argv: &[String],
    accepted: &AtomicUsize,
    skipped: &AtomicUsize,
) -> Result<(), TestCaseError> {
    let full = std::iter::once("llm-mem".to_string()).chain(argv.iter().cloned());
    let Ok(cli) = Cli::try_parse_from(full) else {
        return Ok(());
    };
    let Command::Estimate(a) = &cli.command else {
        return Ok(());
    };
    let Ok((settings, _)) = a.settings() else {
        return Ok(());
    };
    let _ = &skipped;
    let Some(spec) = model_of(&settings) else {
        return Ok(());
    };
    if estimate_checked(&spec, &settings)
        .map_err(|m| TestCaseError::fail(format!("{argv:?}: {m}")))?
    {
        accepted.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// On a thread with the main thread's 8 MiB stack, as the binary runs (the test
/// harness gives its threads 2 MiB): one CI run aborted on a stack overflow that no
/// later run reproduced, and an estimate the binary can run must not fail here for
/// want of stack alone.
#[test]
fn fuzz_command_line() {
    std::thread::Builder::new()
        .name("fuzz_command_line".into())
        .stack_size(8 << 20)
        .spawn(fuzz_command_line_body)
        .expect("spawn the fuzz thread")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn fuzz_command_line_body() {
    let n = cases(3000);
    let started = Instant::now();
    let (checked, accepted, skipped) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let config = Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    };
    let result = TestRunner::new(config).run(&command_line(), |argv| {
        one(&argv, &accepted, &skipped)?;
        checked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    if let Err(e) = result {
        panic!("command line: {e}");
    }
    assert_eq!(
        checked.load(Ordering::Relaxed),
        n as usize,
        "every case reached its end"
    );
    let acc = accepted.load(Ordering::Relaxed);
    assert!(
        acc > 0,
        "no generated command line was an accepted estimate"
    );
    report(
        "command line",
        n as usize,
        skipped.load(Ordering::Relaxed),
        started,
    );
    println!("fuzz: command line: {acc} accepted estimates checked");
}
