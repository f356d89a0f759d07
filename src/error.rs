//! The CLI's error types and their exit codes.
//!
//! Bad input is a [`UsageError`] (exit 2): one line that names the field (`--ttl: must be at
//! least 1 second`). Everything that goes wrong while doing the work is a [`CliError::Runtime`]
//! (exit 1), and a check that ran and said "no" (`azsim token inspect` on a bad token) is
//! [`CliError::CheckFailed`] (exit 1). Messages are short lowercase statements of fact and never
//! carry a key, a signature or a connection string: callers name the field, not its value.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::process::ExitCode;

/// Bad command-line input: exit code 2, one line naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    field: Cow<'static, str>,
    message: Cow<'static, str>,
}

impl UsageError {
    /// `field` is what the user typed or set (`--ttl`, `IOTHUB_DEVICE_CONNECTION_STRING`,
    /// `--connection-string: SharedAccessKey`); `message` says what is wrong with it, never its value
    /// when the value may be secret.
    pub fn new(field: impl Into<Cow<'static, str>>, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field the error is about.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl StdError for UsageError {}

/// Anything a subcommand can fail with; [`CliError::exit_code`] maps it to the process status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input: exit 2.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The work failed (network, TLS, I/O, the hub said no): exit 1.
    #[error(transparent)]
    Runtime(Box<dyn StdError + Send + Sync + 'static>),
    /// A check ran to completion and failed (for example a token that does not verify): exit 1.
    /// The text says what failed.
    #[error("{0}")]
    CheckFailed(String),
}

impl CliError {
    /// Wraps any runtime error (exit 1). Its `Display` (and its sources') must hold no secret.
    pub fn runtime<E>(e: E) -> Self
    where
        E: Into<Box<dyn StdError + Send + Sync + 'static>>,
    {
        Self::Runtime(e.into())
    }

    /// A failed check with the given one-line reason (exit 1).
    pub fn check_failed(reason: impl Into<String>) -> Self {
        Self::CheckFailed(reason.into())
    }

    /// 2 for bad input, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Runtime(_) | Self::CheckFailed(_) => 1,
        }
    }

    /// The process status for this error.
    pub fn to_exit_code(&self) -> ExitCode {
        ExitCode::from(self.exit_code())
    }

    /// One line: this error and its sources joined with `: `, skipping a source whose text the
    /// previous message already contains (thiserror's `"{0}"` + `#[source]` would print it twice).
    pub fn one_line(&self) -> String {
        one_line(self)
    }
}

impl From<crate::tls::TlsError> for CliError {
    fn from(e: crate::tls::TlsError) -> Self {
        Self::runtime(e)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        Self::runtime(e)
    }
}

/// Renders `e` and its source chain as one line (newlines in messages become spaces).
pub fn one_line(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !text.is_empty() && !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        cur = s.source();
    }
    out.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_error_names_the_field_and_exits_2() {
        let e = CliError::from(UsageError::new("--ttl", "must be at least 1 second"));
        assert_eq!(e.to_string(), "--ttl: must be at least 1 second");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn runtime_and_check_failures_exit_1() {
        assert_eq!(CliError::runtime("connection refused").exit_code(), 1);
        assert_eq!(CliError::check_failed("sas token expired").exit_code(), 1);
    }

    #[test]
    fn one_line_joins_sources_without_repeating_them() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading ca file ca.pem")]
        struct Outer(#[source] std::io::Error);
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = CliError::runtime(Outer(io));
        assert_eq!(e.one_line(), "reading ca file ca.pem: no such file");

        #[derive(Debug, thiserror::Error)]
        #[error("connect: {0}")]
        struct Dup(#[source] std::io::Error);
        let io = std::io::Error::other("refused");
        assert_eq!(CliError::runtime(Dup(io)).one_line(), "connect: refused");
    }
}
