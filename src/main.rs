//! The `azsim` binary: parse, run, map the outcome to an exit status.
//!
//! Output goes to stdout, logs (`RUST_LOG`, default `warn`; `azsim hub` also logs its
//! connections and refusals at `info`) and the one-line `error: ...` to
//! stderr. Exit codes: 0 success, 1 runtime failure or failed check, 2 bad input (clap's own usage
//! errors already exit 2).

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = azsim::cli::Cli::parse();

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(cli.default_log_filter()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.one_line());
            e.to_exit_code()
        }
    }
}
