//! The `azsim` binary: parse, run, map the outcome to an exit status.
//!
//! Output goes to stdout, logs (`RUST_LOG`, default `warn`; `azsim hub` also logs its
//! connections and refusals at `info`) and the one-line `error: ...` to
//! stderr. Exit codes: 0 success, 1 runtime failure or failed check, 2 bad input (clap's usage
//! errors too, folded into one line), 141 quietly when stdout is a closed pipe (`| head`; see
//! `azsim::out`, which every output line goes through).

use std::process::ExitCode;

use clap::error::ErrorKind;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match azsim::cli::Cli::try_parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e)
            if e.use_stderr()
                && e.kind() != ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            // Bad usage: one line naming the field, exit 2 (clap's own text runs to several).
            azsim::out::stderr(format_args!(
                "error: {}\n",
                azsim::error::clap_one_line(
                    &e,
                    &azsim::cli::Cli::command_for_parsing(),
                    std::env::args_os(),
                )
            ));
            return ExitCode::from(2);
        }
        // --help, --version, or a bare command: clap prints the help itself.
        Err(e) => e.exit(),
    };

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
            azsim::out::stderr(format_args!("error: cannot start the async runtime: {e}\n"));
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(code) => code,
        Err(e) => {
            azsim::out::stderr(format_args!("error: {}\n", e.one_line()));
            e.to_exit_code()
        }
    }
}
