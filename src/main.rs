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
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's own errors get the prefix every other error has
            let text = e.to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprint!("llm-mem: error: {text}");
            return ExitCode::from(2);
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
