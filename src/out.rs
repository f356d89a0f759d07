//! The CLI's one way to write what it prints: [`outln!`]/[`out!`] for stdout, [`errln!`] for
//! stderr, and [`Stdout`] for code that takes a writer (`azsim run`'s and `azsim fleet`'s event
//! stream).
//!
//! Rust starts every program with SIGPIPE ignored, so a write to a closed pipe
//! (`azsim device list | head -1`, `azsim monitor | grep -q hot`, a pager quit early) returns
//! EPIPE, and `println!` turns that into a panic with a backtrace hint. We keep SIGPIPE ignored
//! on purpose: `azsim hub`, `run`, `fleet` and `monitor` write to sockets, and a vectored socket
//! write without MSG_NOSIGNAL would raise SIGPIPE when a peer has gone; a hub must never die
//! because one client left. Instead every stdout write goes through here, and a closed stdout
//! ends the process quietly with exit status 141 (128 + SIGPIPE), the status a shell reports for
//! `cat` or `grep` stopped by a closed pipe, so `set -o pipefail` scripts see what they see with
//! any Unix tool: no panic, no backtrace, no error line. Any other stdout failure (a full disk,
//! `> /dev/full`) is one `error:` line on stderr and exit 1, since output was lost. Streaming
//! commands (`monitor`, `run`, `fleet`) also watch stdout ([`stdout_closed`]), so they end when
//! their reader leaves even while no line is due.
//!
//! Lines to stderr are best effort: when stderr itself is gone (`2>&1 | head -1`) there is no
//! one left to tell, so its write errors are dropped instead of panicking as `eprintln!` does.

use std::fmt;
use std::io::{self, Write};

/// The exit status when stdout is a closed pipe: 128 + SIGPIPE (13), as a shell reports for a
/// tool the signal stopped.
pub const BROKEN_PIPE_EXIT: i32 = 141;

/// Writes to stdout and flushes, or ends the process (see the module docs).
pub fn stdout(args: fmt::Arguments<'_>) {
    let written = {
        let mut out = io::stdout().lock();
        out.write_fmt(args).and_then(|()| out.flush())
    };
    if let Err(e) = written {
        stdout_failed(&e);
    }
}

/// Writes to stderr; a failure is dropped (nobody is left to read a complaint).
pub fn stderr(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args);
    let _ = err.flush();
}

/// Ends the process for a failed stdout write: quietly with [`BROKEN_PIPE_EXIT`] when the
/// reader has gone, else with one `error:` line and exit 1.
pub fn stdout_failed(e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        reader_gone();
    }
    stderr(format_args!("error: cannot write to stdout: {e}\n"));
    std::process::exit(1);
}

/// Ends the process quietly with [`BROKEN_PIPE_EXIT`]: stdout's reader has gone.
pub fn reader_gone() -> ! {
    std::process::exit(BROKEN_PIPE_EXIT)
}

/// Resolves when stdout is a pipe whose reader has gone (its write end reports an error, what
/// `tail -f` watches for), so a streaming command waiting for its next event stops with
/// [`reader_gone`] instead of lingering until it writes again. Never resolves when stdout is
/// not a pipe (a terminal, a file) or cannot be watched.
pub async fn stdout_closed() {
    #[cfg(unix)]
    if let Some(pipe) = stdout_pipe() {
        use tokio::io::Interest;
        while let Ok(ready) = pipe.ready(Interest::ERROR).await {
            if ready.is_error() {
                return;
            }
        }
    }
    std::future::pending::<()>().await;
}

/// A duplicate of stdout to watch, when stdout is a pipe. Only watched, never written: the
/// duplicate shares stdout's blocking mode, which `from_owned_fd_unchecked` leaves as it is.
#[cfg(unix)]
fn stdout_pipe() -> Option<tokio::net::unix::pipe::Sender> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;

    let dup = std::fs::File::from(io::stdout().as_fd().try_clone_to_owned().ok()?);
    if !dup.metadata().ok()?.file_type().is_fifo() {
        return None;
    }
    tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(dup.into()).ok()
}

/// stdout as a [`Write`] for code that takes a writer; a failed write ends the process as
/// [`stdout`] does, so the stream stops when its reader does.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stdout().write(buf).or_else(|e| stdout_failed(&e))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush().or_else(|e| stdout_failed(&e))
    }
}

/// `println!` for the CLI's output: a closed stdout ends the process quietly (module docs).
macro_rules! outln {
    () => {
        $crate::out::stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for the CLI's output (flushed), as [`outln!`] without the newline.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics: a closed stderr drops the line.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::out::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {errln, out, outln};
