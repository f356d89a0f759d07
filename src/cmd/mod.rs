//! The subcommands' work, one module per subcommand. Each takes its validated config (from
//! `crate::cli`) and returns the process status or a [`crate::error::CliError`].

pub mod c2d;
pub mod device;
pub mod hub;
pub mod invoke;
pub mod monitor;
pub mod run;
pub mod token;
pub mod twin;
