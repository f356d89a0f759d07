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

use clap::error::ContextValue;

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

/// What is wrong with a connection string, for a one-line error: the core's message, except
/// that an unknown key is named (`unknown key 'SharedAccesKey'; known: HostName, ...`) so a typo
/// is obvious. Only a name that looks like one is ever shown (anything else could be a fragment
/// of a key), never a value.
pub fn connection_string_problem(
    cs: &str,
    e: azsim_proto::connection_string::ConnectionStringError,
) -> String {
    use azsim_proto::connection_string::{
        ConnectionStringError, Field, IGNORED_KEYS, is_known_key,
    };
    if e != ConnectionStringError::UnknownKey {
        return e.to_string();
    }
    let names: Vec<&str> = Field::ALL
        .map(Field::name)
        .into_iter()
        .chain(IGNORED_KEYS)
        .collect();
    let known = names.join(", ");
    let unknown = cs
        .trim()
        .split(';')
        .filter_map(|seg| seg.split_once('='))
        .map(|(k, _)| k)
        .find(|k| !is_known_key(k));
    match unknown {
        Some(k) if looks_like_a_key_name(k) => {
            let hint = names
                .iter()
                .find(|n| n.eq_ignore_ascii_case(k))
                .map(|n| format!(" (names are case-sensitive: {n})"))
                .unwrap_or_default();
            format!("unknown key '{k}'{hint}; known: {known}")
        }
        _ => format!("unknown key; known (case-sensitive): {known}"),
    }
}

/// A word that can be shown back as a connection-string key name: 1..=32 ASCII letters and
/// digits, and digits only in a short one (`x509`). A key pasted without its `SharedAccessKey=`
/// (`HostName=h;DeviceId=d;c2Vj..MTI=`) splits at its padding into a long base64 "name" with
/// digits, which must not be echoed.
fn looks_like_a_key_name(k: &str) -> bool {
    (1..=32).contains(&k.len())
        && k.bytes().all(|b| b.is_ascii_alphanumeric())
        && (k.len() <= 8 || !k.bytes().any(|b| b.is_ascii_digit()))
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

/// Clap's own usage error (unknown flag, missing or malformed value) as one line, written from
/// the error's context (`ContextKind::InvalidArg`, `InvalidValue`, the suggestions...) in clap's
/// own words, and where to get help. A value clap echoes back that looks like a secret (a
/// connection string, a SAS token, a base64 key) is shown as `<redacted>`.
/// `command` is the CLI's definition and `args` the command line (program name first): they give
/// the subcommand whose help to point at.
pub fn clap_one_line<I, T>(e: &clap::Error, command: &clap::Command, args: I) -> String
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString>,
{
    use clap::error::ContextKind as K;
    let mut out = clap_head(e).unwrap_or_else(|| {
        // A kind without the context its message needs: clap's generic description.
        e.kind()
            .as_str()
            .unwrap_or("the command line is not valid")
            .to_owned()
    });
    if let Some(values) = e.get(K::ValidValue).and_then(strings)
        && !values.is_empty()
    {
        out.push_str(&format!(" [possible values: {}]", values.join(", ")));
    }
    for (kind, what) in [
        (K::SuggestedSubcommand, "subcommand"),
        (K::SuggestedArg, "argument"),
        (K::SuggestedValue, "value"),
    ] {
        if let Some(similar) = e.get(kind).and_then(strings) {
            let quoted: Vec<String> = similar.iter().map(|s| format!("'{s}'")).collect();
            out.push_str(&match quoted.as_slice() {
                [one] => format!(" (a similar {what} exists: {one})"),
                _ => format!(" (some similar {what}s exist: {})", quoted.join(", ")),
            });
        }
    }
    if let Some(ContextValue::StyledStrs(tips)) = e.get(K::Suggested) {
        for tip in tips {
            out.push_str(&format!(" ({tip})"));
        }
    }
    out.push_str(&format!(
        "; see '{} --help'",
        subcommand_path(command, args)
    ));
    redact_quoted(&out.replace(['\n', '\r'], " "))
}

/// The first part of clap's message for `e`, from its context; `None` when the context that
/// kind needs is missing.
fn clap_head(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind as K, ErrorKind};
    let text = |kind| e.get(kind).and_then(single);
    let arg = || text(K::InvalidArg);
    Some(match e.kind() {
        ErrorKind::InvalidValue => {
            let (arg, value) = (arg()?, text(K::InvalidValue)?);
            if value.is_empty() {
                format!("a value is required for '{arg}' but none was supplied")
            } else {
                format!("invalid value '{value}' for '{arg}'")
            }
        }
        ErrorKind::ValueValidation => {
            let mut m = format!(
                "invalid value '{}' for '{}'",
                text(K::InvalidValue)?,
                arg()?
            );
            if let Some(source) = std::error::Error::source(e) {
                m.push_str(&format!(": {source}"));
            }
            m
        }
        ErrorKind::UnknownArgument => format!("unexpected argument '{}' found", arg()?),
        ErrorKind::InvalidSubcommand => {
            format!("unrecognized subcommand '{}'", text(K::InvalidSubcommand)?)
        }
        ErrorKind::MissingSubcommand => format!(
            "'{}' requires a subcommand but one was not provided",
            text(K::InvalidSubcommand)?
        ),
        ErrorKind::MissingRequiredArgument => format!(
            "the following required arguments were not provided: {}",
            e.get(K::InvalidArg).and_then(strings)?.join(", ")
        ),
        ErrorKind::ArgumentConflict => {
            let arg = arg()?;
            match e.get(K::PriorArg) {
                Some(ContextValue::String(prior)) if *prior == arg => {
                    format!("the argument '{arg}' cannot be used multiple times")
                }
                Some(prior) => match strings(prior) {
                    Some(prior) if !prior.is_empty() => {
                        let quoted: Vec<String> = prior.iter().map(|p| format!("'{p}'")).collect();
                        format!(
                            "the argument '{arg}' cannot be used with {}",
                            quoted.join(", ")
                        )
                    }
                    _ => format!(
                        "the argument '{arg}' cannot be used with one or more of the other \
                         specified arguments"
                    ),
                },
                None => format!("the argument '{arg}' cannot be used here"),
            }
        }
        ErrorKind::NoEquals => {
            format!("equal sign is needed when assigning values to '{}'", arg()?)
        }
        ErrorKind::TooManyValues => format!(
            "unexpected value '{}' for '{}' found; no more were expected",
            text(K::InvalidValue)?,
            arg()?
        ),
        ErrorKind::TooFewValues => format!(
            "{} values required by '{}'; only {} provided",
            text(K::MinValues)?,
            arg()?,
            text(K::ActualNumValues)?
        ),
        ErrorKind::WrongNumberOfValues => format!(
            "{} values required for '{}' but {} provided",
            text(K::ExpectedNumValues)?,
            arg()?,
            text(K::ActualNumValues)?
        ),
        _ => return None,
    })
}

/// A context value that is one piece of text (a string or a number).
fn single(v: &ContextValue) -> Option<String> {
    match v {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::StyledStr(s) => Some(s.to_string()),
        ContextValue::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A context value that is a list (or one string, as a list of one).
fn strings(v: &ContextValue) -> Option<Vec<String>> {
    match v {
        ContextValue::Strings(list) => Some(list.clone()),
        ContextValue::StyledStrs(list) => Some(list.iter().map(ToString::to_string).collect()),
        ContextValue::String(s) => Some(vec![s.clone()]),
        _ => None,
    }
}

/// `azsim c2d send`: the program name and the subcommands named on the command line.
fn subcommand_path<I, T>(command: &clap::Command, args: I) -> String
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString>,
{
    let mut path = vec![command.get_name().to_owned()];
    let mut cur = command;
    for arg in args.into_iter().skip(1) {
        let arg: std::ffi::OsString = arg.into();
        let Some(arg) = arg.to_str() else { continue };
        if arg == "--" {
            break;
        }
        if let Some(sub) = cur.find_subcommand(arg) {
            path.push(sub.get_name().to_owned());
            cur = sub;
        }
    }
    path.join(" ")
}

/// Replaces every `'...'` span that looks like a secret with `'<redacted>'`.
fn redact_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('\'') {
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('\'') else {
            rest = after;
            break;
        };
        let quoted = &after[..close];
        out.push_str(if looks_secret(quoted) {
            "<redacted>"
        } else {
            quoted
        });
        out.push('\'');
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// A connection string, a SAS token, or a long base64 run (a key or a signature).
fn looks_secret(v: &str) -> bool {
    let lower = v.to_ascii_lowercase();
    if lower.contains("sharedaccesskey")
        || lower.contains("sharedaccesssignature")
        || lower.contains("sig=")
    {
        return true;
    }
    let value = v
        .split_once('=')
        .map_or(v, |(k, rest)| if k.starts_with('-') { rest } else { v });
    value.len() >= 16
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'%'))
        && value.bytes().any(|b| b.is_ascii_digit())
        && value.bytes().any(|b| b.is_ascii_uppercase())
        && value.bytes().any(|b| b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_line_for(args: &[&str]) -> String {
        let e = crate::cli::Cli::try_parse_args(args.iter().copied()).expect_err("bad input");
        clap_one_line(
            &e,
            &crate::cli::Cli::command_for_parsing(),
            args.iter().copied(),
        )
    }

    #[test]
    fn clap_errors_become_one_line_naming_the_field() {
        let line = one_line_for(&["azsim", "token", "--ttl"]);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--ttl"), "{line}");
        assert!(line.ends_with("see 'azsim token --help'"), "{line}");

        let line = one_line_for(&["azsim", "c2d", "send", "dev"]);
        assert_eq!(
            line,
            "the following required arguments were not provided: <BODY>; see 'azsim c2d send --help'"
        );

        let line = one_line_for(&["azsim", "c2d", "send", "d", "b", "--ack", "bogus"]);
        assert!(
            line.starts_with("invalid value 'bogus' for '--ack <ACK>'"),
            "{line}"
        );
        assert!(
            line.contains("[possible values: none, positive, negative, full]"),
            "{line}"
        );
    }

    #[test]
    fn clap_errors_are_read_from_their_context() {
        let line = one_line_for(&["azsim", "token", "--ttl"]);
        assert_eq!(
            line,
            "a value is required for '--ttl <SECONDS>' but none was supplied; see 'azsim token --help'"
        );
        let line = one_line_for(&["azsim", "run", "--count", "x"]);
        assert!(
            line.starts_with("invalid value 'x' for '--count <N>': invalid digit"),
            "{line}"
        );
        let line = one_line_for(&["azsim", "nosuchcmd"]);
        assert!(
            line.starts_with("unrecognized subcommand 'nosuchcmd'"),
            "{line}"
        );
        let line = one_line_for(&[
            "azsim",
            "device",
            "show",
            "d",
            "--connection-string",
            "--json",
        ]);
        assert!(
            line.starts_with("the argument '--connection-string' cannot be used with '--json'"),
            "{line}"
        );
        let line = one_line_for(&["azsim", "invoke", "d", "m", "--json", "--json"]);
        assert!(
            line.starts_with("the argument '--json' cannot be used multiple times"),
            "{line}"
        );
    }

    #[test]
    fn clap_errors_keep_tips_and_hide_secrets() {
        let line = one_line_for(&["azsim", "token", "--ttll", "5"]);
        assert!(line.contains("unexpected argument '--ttll'"), "{line}");
        assert!(
            line.contains("(a similar argument exists: '--ttl')"),
            "{line}"
        );

        let cs =
            "HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey=c2VjcmV0c2VjcmV0c2VjcmV0MTI=";
        let line = one_line_for(&["azsim", "token", "inspect", "x", cs]);
        assert!(!line.contains("c2VjcmV0"), "{line}");
        assert!(line.contains("'<redacted>'"), "{line}");
        let line = one_line_for(&[
            "azsim",
            "c2d",
            "send",
            "d",
            "b",
            "c2VjcmV0c2VjcmV0c2VjcmV0MTI=",
        ]);
        assert!(!line.contains("c2VjcmV0"), "{line}");
    }

    #[test]
    fn an_unknown_connection_string_key_is_named_with_the_known_ones() {
        use azsim_proto::connection_string::ConnectionString;
        let key = "c2VjcmV0c2VjcmV0c2VjcmV0MTI=";
        let problem = |cs: &str| {
            connection_string_problem(cs, ConnectionString::parse(cs).expect_err("refused"))
        };
        let msg = problem(&format!("HostName=h;DeviceId=d;SharedAccesKey={key}"));
        assert!(
            msg.starts_with("unknown key 'SharedAccesKey'; known: HostName, "),
            "{msg}"
        );
        assert!(
            msg.ends_with("x509, CredentialScope, CredentialType, UseProvisioning"),
            "{msg}"
        );
        let msg = problem(&format!(
            "HostName=h;DeviceId=d;SharedAccessKey={key};credentialtype=x"
        ));
        assert!(
            msg.starts_with(
                "unknown key 'credentialtype' (names are case-sensitive: CredentialType)"
            ),
            "{msg}"
        );
        // A key name that could be part of a secret is not echoed.
        let msg = problem(&format!(
            "HostName=h;DeviceId=d;{key}=x;SharedAccessKey={key}"
        ));
        assert!(
            msg.starts_with("unknown key; known (case-sensitive): "),
            "{msg}"
        );
        assert!(!msg.contains(key), "{msg}");
        // Other problems are the core's message.
        assert_eq!(
            problem("HostName=h;DeviceId=d"),
            "connection string has no credential (SharedAccessKey, SharedAccessSignature or x509)"
        );
    }

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
