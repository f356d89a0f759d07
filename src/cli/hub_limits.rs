//! `azsim hub` flags for every [`HubLimits`] value, their validation, and the arguments that
//! pass them on to the detached hub of `azsim hub start` ([`limit_args`]).
//!
//! Three kinds of limit: ones an Azure hub lets its owner set (C2D TTL and delivery count, the
//! feedback queue's TTL, lock and delivery count), accepted in Azure's ranges; ones Azure fixes
//! (C2D queue of 50, 64 KiB C2D, 256 KiB D2C, keep-alive ceiling), where another value is not
//! Azure and the help says so; and the emulator's own (how long and how much a connection may
//! take before it is authenticated, HTTP timeouts, the telemetry log's length).

use std::ops::RangeInclusive;
use std::time::Duration;

use azsim_emulator::HubLimits;
use clap::Args;

use crate::error::UsageError;

/// The limit flags of `azsim hub` and `azsim hub start`; absent ones keep [`HubLimits`]'
/// defaults.
#[derive(Debug, Args)]
pub struct HubLimitArgs {
    /// Seconds a connection may take from its TCP accept to being authenticated, in total:
    /// TLS handshake and CONNECT (MQTT), or TLS handshake and first request headers (HTTPS).
    /// 1 to 3600; default 10.
    #[arg(long, value_name = "SECS")]
    pub connect_deadline: Option<String>,
    /// How many connections per listener (MQTT, HTTPS) may be open and not yet authenticated
    /// at once; beyond it a new one is closed as soon as it is accepted. 1 to 1000000;
    /// default 512.
    #[arg(long, value_name = "N")]
    pub max_pre_auth: Option<String>,
    /// The largest first packet (CONNECT, will included) an unauthenticated MQTT client may
    /// send; a bigger one closes the connection. 512 to 16777216; default 65536.
    #[arg(long, value_name = "BYTES")]
    pub pre_auth_max_bytes: Option<String>,
    /// Seconds an HTTPS client may take to send a request's headers (also how long an idle
    /// HTTP/1.1 connection stays open). 1 to 3600; default 10.
    #[arg(long, value_name = "SECS")]
    pub http_header_timeout: Option<String>,
    /// Seconds an HTTPS connection may stay open with no request in progress. 1 to 86400;
    /// default 60.
    #[arg(long, value_name = "SECS")]
    pub http_idle_timeout: Option<String>,
    /// Seconds a request body may take to arrive after its headers (408 past it). 1 to 3600;
    /// default 30.
    #[arg(long, value_name = "SECS")]
    pub http_body_timeout: Option<String>,
    /// C2D default time to live (an Azure hub setting): 60 to 172800 seconds; default 3600.
    #[arg(long, value_name = "SECS")]
    pub c2d_ttl: Option<String>,
    /// How often a C2D message is delivered before it is dead-lettered (an Azure hub
    /// setting): 1 to 100; default 10.
    #[arg(long, value_name = "N")]
    pub c2d_max_delivery_count: Option<String>,
    /// Feedback queue time to live (an Azure hub setting): 60 to 172800 seconds; default 3600.
    #[arg(long, value_name = "SECS")]
    pub feedback_ttl: Option<String>,
    /// Feedback batch lock duration (an Azure hub setting): 5 to 300 seconds; default 60.
    #[arg(long, value_name = "SECS")]
    pub feedback_lock: Option<String>,
    /// How often a feedback record is handed out before it is dropped (an Azure hub
    /// setting): 1 to 100; default 10.
    #[arg(long, value_name = "N")]
    pub feedback_max_delivery_count: Option<String>,
    /// C2D messages a device's queue holds: 1 to 10000; default 50, Azure's fixed value
    /// (another value is not Azure).
    #[arg(long, value_name = "N")]
    pub c2d_queue_cap: Option<String>,
    /// Largest C2D message body: 1024 to 1048576 bytes; default 65536, Azure's (another
    /// value is not Azure).
    #[arg(long, value_name = "BYTES")]
    pub c2d_max_bytes: Option<String>,
    /// Largest device-to-cloud message: 1024 to 1048576 bytes; default 262144, Azure's
    /// (another value is not Azure).
    #[arg(long, value_name = "BYTES")]
    pub d2c_max_bytes: Option<String>,
    /// MQTT subscriptions a connection may hold: 1 to 1000; default 5.
    #[arg(long, value_name = "N")]
    pub max_subscriptions: Option<String>,
    /// Keep-alive ceiling in seconds (a longer CONNECT keep-alive is cut to it): 1 to 65535;
    /// default 1177, Azure's (another value is not Azure).
    #[arg(long, value_name = "SECS")]
    pub max_keep_alive: Option<String>,
    /// Telemetry messages the hub's log keeps (the Event Hubs-compatible endpoint's
    /// retention): 100 to 10000000; default 10000.
    #[arg(long, value_name = "N")]
    pub event_log_cap: Option<String>,
}

/// `value` of `flag` as a whole number in `range`.
fn number(
    flag: &'static str,
    value: &str,
    range: RangeInclusive<u64>,
    unit: &str,
) -> Result<u64, UsageError> {
    match value.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(UsageError::new(
            flag,
            format!(
                "must be a whole number of {unit}, {} to {}",
                range.start(),
                range.end()
            ),
        )),
    }
}

/// Sets `slot` from `value` when the flag was given.
fn secs(
    slot: &mut Duration,
    flag: &'static str,
    value: Option<&str>,
    range: RangeInclusive<u64>,
) -> Result<(), UsageError> {
    if let Some(v) = value {
        *slot = Duration::from_secs(number(flag, v, range, "seconds")?);
    }
    Ok(())
}

/// Sets `slot` from `value` when the flag was given (ranges fit every slot type).
fn count<T: TryFrom<u64>>(
    slot: &mut T,
    flag: &'static str,
    value: Option<&str>,
    range: RangeInclusive<u64>,
    unit: &str,
) -> Result<(), UsageError> {
    if let Some(v) = value {
        let n = number(flag, v, range, unit)?;
        *slot = T::try_from(n).map_err(|_| UsageError::new(flag, "is too large"))?;
    }
    Ok(())
}

impl HubLimitArgs {
    /// The limits: [`HubLimits::default`] with every given flag applied.
    ///
    /// # Errors
    /// A [`UsageError`] naming the first flag out of its range.
    pub fn into_limits(&self) -> Result<HubLimits, UsageError> {
        let mut l = HubLimits::default();
        let a = self;
        secs(
            &mut l.connect_deadline,
            "--connect-deadline",
            a.connect_deadline.as_deref(),
            1..=3600,
        )?;
        count(
            &mut l.max_pre_auth_connections,
            "--max-pre-auth",
            a.max_pre_auth.as_deref(),
            1..=1_000_000,
            "connections",
        )?;
        count(
            &mut l.pre_auth_max_bytes,
            "--pre-auth-max-bytes",
            a.pre_auth_max_bytes.as_deref(),
            512..=16_777_216,
            "bytes",
        )?;
        secs(
            &mut l.http_header_timeout,
            "--http-header-timeout",
            a.http_header_timeout.as_deref(),
            1..=3600,
        )?;
        secs(
            &mut l.http_idle_timeout,
            "--http-idle-timeout",
            a.http_idle_timeout.as_deref(),
            1..=86_400,
        )?;
        secs(
            &mut l.http_body_timeout,
            "--http-body-timeout",
            a.http_body_timeout.as_deref(),
            1..=3600,
        )?;
        secs(
            &mut l.c2d_default_ttl,
            "--c2d-ttl",
            a.c2d_ttl.as_deref(),
            60..=172_800,
        )?;
        count(
            &mut l.c2d_max_delivery_count,
            "--c2d-max-delivery-count",
            a.c2d_max_delivery_count.as_deref(),
            1..=100,
            "deliveries",
        )?;
        secs(
            &mut l.feedback_ttl,
            "--feedback-ttl",
            a.feedback_ttl.as_deref(),
            60..=172_800,
        )?;
        secs(
            &mut l.feedback_lock_timeout,
            "--feedback-lock",
            a.feedback_lock.as_deref(),
            5..=300,
        )?;
        count(
            &mut l.feedback_max_delivery_count,
            "--feedback-max-delivery-count",
            a.feedback_max_delivery_count.as_deref(),
            1..=100,
            "deliveries",
        )?;
        count(
            &mut l.c2d_queue_cap,
            "--c2d-queue-cap",
            a.c2d_queue_cap.as_deref(),
            1..=10_000,
            "messages",
        )?;
        count(
            &mut l.c2d_max_bytes,
            "--c2d-max-bytes",
            a.c2d_max_bytes.as_deref(),
            1024..=1_048_576,
            "bytes",
        )?;
        count(
            &mut l.d2c_max_bytes,
            "--d2c-max-bytes",
            a.d2c_max_bytes.as_deref(),
            1024..=1_048_576,
            "bytes",
        )?;
        count(
            &mut l.max_subscriptions,
            "--max-subscriptions",
            a.max_subscriptions.as_deref(),
            1..=1000,
            "subscriptions",
        )?;
        count(
            &mut l.max_keep_alive,
            "--max-keep-alive",
            a.max_keep_alive.as_deref(),
            1..=65_535,
            "seconds",
        )?;
        count(
            &mut l.event_log_cap,
            "--event-log-cap",
            a.event_log_cap.as_deref(),
            100..=10_000_000,
            "messages",
        )?;
        Ok(l)
    }
}

/// The flags that give a hub `l` (whole seconds; the CLI makes no others): what `azsim hub
/// start` passes to its detached hub. Destructured, so a field added to [`HubLimits`] fails to
/// compile here until it has a flag.
pub fn limit_args(l: &HubLimits) -> Vec<(&'static str, String)> {
    let HubLimits {
        c2d_queue_cap,
        c2d_default_ttl,
        c2d_max_delivery_count,
        c2d_max_bytes,
        d2c_max_bytes,
        max_subscriptions,
        event_log_cap,
        max_keep_alive,
        feedback_ttl,
        feedback_lock_timeout,
        feedback_max_delivery_count,
        connect_deadline,
        pre_auth_max_bytes,
        max_pre_auth_connections,
        http_header_timeout,
        http_idle_timeout,
        http_body_timeout,
    } = *l;
    let s = |d: Duration| d.as_secs().to_string();
    vec![
        ("--connect-deadline", s(connect_deadline)),
        ("--max-pre-auth", max_pre_auth_connections.to_string()),
        ("--pre-auth-max-bytes", pre_auth_max_bytes.to_string()),
        ("--http-header-timeout", s(http_header_timeout)),
        ("--http-idle-timeout", s(http_idle_timeout)),
        ("--http-body-timeout", s(http_body_timeout)),
        ("--c2d-ttl", s(c2d_default_ttl)),
        (
            "--c2d-max-delivery-count",
            c2d_max_delivery_count.to_string(),
        ),
        ("--feedback-ttl", s(feedback_ttl)),
        ("--feedback-lock", s(feedback_lock_timeout)),
        (
            "--feedback-max-delivery-count",
            feedback_max_delivery_count.to_string(),
        ),
        ("--c2d-queue-cap", c2d_queue_cap.to_string()),
        ("--c2d-max-bytes", c2d_max_bytes.to_string()),
        ("--d2c-max-bytes", d2c_max_bytes.to_string()),
        ("--max-subscriptions", max_subscriptions.to_string()),
        ("--max-keep-alive", max_keep_alive.to_string()),
        ("--event-log-cap", event_log_cap.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        limits: HubLimitArgs,
    }

    fn parse(args: &[String]) -> Result<HubLimits, UsageError> {
        let mut argv = vec!["x".to_string()];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .expect("clap")
            .limits
            .into_limits()
    }

    fn flat(pairs: Vec<(&'static str, String)>) -> Vec<String> {
        pairs
            .into_iter()
            .flat_map(|(f, v)| [f.to_string(), v])
            .collect()
    }

    #[test]
    fn every_limit_passed_on_comes_back_the_same() {
        let l = HubLimits {
            connect_deadline: Duration::from_secs(7),
            max_pre_auth_connections: 9,
            pre_auth_max_bytes: 4096,
            http_header_timeout: Duration::from_secs(3),
            http_idle_timeout: Duration::from_secs(4),
            http_body_timeout: Duration::from_secs(5),
            c2d_default_ttl: Duration::from_secs(120),
            c2d_max_delivery_count: 3,
            feedback_ttl: Duration::from_secs(600),
            feedback_lock_timeout: Duration::from_secs(30),
            feedback_max_delivery_count: 2,
            c2d_queue_cap: 7,
            c2d_max_bytes: 2048,
            d2c_max_bytes: 8192,
            max_subscriptions: 6,
            max_keep_alive: 600,
            event_log_cap: 500,
        };
        let pairs = limit_args(&l);
        assert_eq!(pairs.len(), 17, "one flag per HubLimits field");
        let back = parse(&flat(pairs)).expect("valid");
        assert_eq!(
            azsim_emulator::settings::LimitsRecord::of(&back),
            azsim_emulator::settings::LimitsRecord::of(&l)
        );
        // The defaults pass on as themselves too.
        let d = HubLimits::default();
        let back = parse(&flat(limit_args(&d))).expect("defaults are valid");
        assert_eq!(
            azsim_emulator::settings::LimitsRecord::of(&back),
            azsim_emulator::settings::LimitsRecord::of(&d)
        );
    }

    #[test]
    fn a_value_out_of_range_names_its_flag() {
        for (flag, bad) in [
            ("--connect-deadline", "0"),
            ("--max-pre-auth", "x"),
            ("--pre-auth-max-bytes", "100"),
            ("--http-header-timeout", "3601"),
            ("--http-idle-timeout", "1e3"),
            ("--http-body-timeout", "1.5"),
            ("--c2d-ttl", "59"),
            ("--c2d-max-delivery-count", "101"),
            ("--feedback-ttl", "172801"),
            ("--feedback-lock", "4"),
            ("--feedback-max-delivery-count", "0"),
            ("--c2d-queue-cap", "10001"),
            ("--c2d-max-bytes", "1023"),
            ("--d2c-max-bytes", "2000000"),
            ("--max-subscriptions", "0"),
            ("--max-keep-alive", "65536"),
            ("--event-log-cap", "99"),
        ] {
            let e = parse(&[flag.to_string(), bad.to_string()]).expect_err(flag);
            assert_eq!(e.field(), flag);
        }
    }
}
