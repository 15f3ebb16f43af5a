//! The `llm-mem` binary: parse the command line, run it (`cli`), map the outcome to an
//! exit code — 0 done (and fits), 1 does not fit, 2 error.

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// Exact live-byte counting for `probe` on the CPU (a thin wrapper over the system
/// allocator).
#[global_allocator]
static ALLOC: llm_mem::probe::meter::CountingAlloc = llm_mem::probe::meter::CountingAlloc;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("llm-mem: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
