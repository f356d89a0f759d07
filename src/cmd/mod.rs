//! The subcommands' work, one module per subcommand. Each takes its validated config (from
//! `crate::cli`) and returns the process status or a [`crate::error::CliError`].

pub mod token;
