//! The `tidemark` binary: parse the command line, run it, print a one-line error.

fn main() -> std::process::ExitCode {
    tidemark::cli::main()
}
