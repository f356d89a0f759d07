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
            let command = azsim::cli::Cli::command_for_parsing();
            let mut line = azsim::error::clap_one_line(&e, &command, std::env::args_os());
            if e.kind() == ErrorKind::InvalidUtf8
                && let Some(field) = non_utf8_field(&command, std::env::args_os())
            {
                // clap says only "one or more arguments"; name the one (never its bytes).
                let see = line.find("; see ").map_or("", |i| &line[i..]);
                line = format!("{field}: not valid UTF-8{see}");
            }
            azsim::out::stderr(format_args!("error: {line}\n"));
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

/// What the first argument that is not UTF-8 is, walking the subcommands as clap does:
/// `--flag` for `--flag=VALUE` or for a VALUE after a flag that takes one, `<NAME>` for a
/// positional, else `argument N`.
fn non_utf8_field(
    command: &clap::Command,
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Option<String> {
    let mut current = command;
    let mut positionals = 0;
    let mut value_of: Option<String> = None;
    // Argument 0 is the program.
    for (n, arg) in args.into_iter().enumerate().skip(1) {
        let Some(text) = arg.to_str() else {
            let bytes = arg.as_encoded_bytes();
            if let Some(flag) = value_of {
                return Some(flag);
            }
            if bytes.starts_with(b"--")
                && let Some(eq) = bytes.iter().position(|&b| b == b'=')
            {
                return Some(String::from_utf8_lossy(&bytes[..eq]).into_owned());
            }
            return Some(match current.get_positionals().nth(positionals) {
                Some(a) => format!("<{}>", positional_name(a)),
                None => format!("argument {n}"),
            });
        };
        if value_of.take().is_some() {
            continue;
        }
        if text.len() > 1 && text.starts_with('-') {
            if takes_value(current, command, text) {
                value_of = Some(text.to_owned());
            }
        } else if let Some(sub) = current.find_subcommand(text).filter(|_| positionals == 0) {
            current = sub;
        } else {
            positionals += 1;
        }
    }
    None
}

/// A positional's name as `--help` shows it (`DEVICE`).
fn positional_name(arg: &clap::Arg) -> String {
    match arg.get_value_names().and_then(|v| v.first()) {
        Some(name) => name.to_string(),
        None => arg.get_id().as_str().to_uppercase(),
    }
}

/// Whether `flag` (`--long` or `-s`; not `--long=VALUE`) takes the next argument: as `current`
/// defines it, else as any command under `root` does (a global flag).
fn takes_value(current: &clap::Command, root: &clap::Command, flag: &str) -> bool {
    if flag.contains('=') {
        return false;
    }
    let named = |a: &clap::Arg| match flag.strip_prefix("--") {
        Some(long) => a.get_long() == Some(long),
        None => {
            let mut short = flag.strip_prefix('-').unwrap_or("").chars();
            matches!((short.next(), short.next()), (Some(c), None) if a.get_short() == Some(c))
        }
    };
    fn find<'c>(c: &'c clap::Command, named: &dyn Fn(&clap::Arg) -> bool) -> Option<&'c clap::Arg> {
        c.get_arguments()
            .find(|a| named(a))
            .or_else(|| c.get_subcommands().find_map(|s| find(s, named)))
    }
    let here = current.get_arguments().find(|a| named(a));
    here.or_else(|| find(root, &named))
        .is_some_and(|a| a.get_action().takes_values())
}
