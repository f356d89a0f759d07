//! The subcommands' work, one module per subcommand. Each takes its validated config (from
//! `crate::cli`) and returns the process status or a [`crate::error::CliError`].

pub mod c2d;
pub mod cert;
pub mod device;
pub mod dps;
pub mod fleet;
pub mod hub;
pub mod hub_env;
pub mod hub_fault;
pub mod invoke;
pub mod job;
pub mod monitor;
pub mod query;
pub mod run;
pub mod token;
pub mod twin;

/// Quotes `s` for a POSIX shell, so a printed command line can be pasted as it is: a word of only
/// safe characters (`A-Za-z0-9-_./:=@%+,`) stays bare, anything else goes in single quotes (a `'`
/// inside as `'\''`).
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Ctrl-C, or (on Unix) SIGTERM as `docker stop`, Kubernetes, systemd and `timeout` send:
/// `azsim run` and `azsim fleet` stop cleanly on either (DISCONNECT, then the totals, exit 0).
pub(crate) async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_keeps_safe_words_and_quotes_the_rest() {
        assert_eq!(
            shell_quote("devices/d/messages/events/"),
            "devices/d/messages/events/"
        );
        assert_eq!(shell_quote("a&b"), "'a&b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(
            shell_quote("HostName=h;DeviceId=d"),
            "'HostName=h;DeviceId=d'"
        );
    }
}
