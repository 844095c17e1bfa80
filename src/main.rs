//! The `tidemark` binary: parse the command line, run it, print a one-line error.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tidemark::cli::Cli::parse();
    tidemark::cli::init_tracing();
    match tidemark::cli::execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
