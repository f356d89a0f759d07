//! azsim: the CLI's library half, so integration tests and other binaries can call in.
//!
//! `cli` parses and validates arguments, `cmd` does the work of each subcommand, `error` maps
//! failures to exit codes (2 bad input, 1 runtime failure), `tls` builds the one rustls client
//! configuration (ring, webpki roots plus an optional extra CA). The wire rules themselves live in
//! `azsim-proto`; this crate never formats an IoT Hub topic or token by hand.

#[doc(hidden)]
pub mod bench;
pub mod cli;
pub mod cmd;
pub mod device;
pub mod error;
pub mod fleet;
pub mod out;
pub mod service;
pub mod tls;
