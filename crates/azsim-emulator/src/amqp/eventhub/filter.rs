//! The Event Hubs start-position filter: an `apache.org:selector-filter:string` on the
//! receiver's source holding `amqp.annotation.x-opt-offset > '123'` (or `>=`,
//! `x-opt-sequence-number`, `x-opt-enqueued-time` in Unix milliseconds; offset `-1` is the
//! start and `@latest` the end). No filter reads from the start.

use fe2o3_amqp::types::messaging::FilterSet;
use fe2o3_amqp::types::primitives::Value;
use serde_amqp::descriptor::Descriptor;

use crate::store::eventhub::Position;

/// The filter's name and its numeric descriptor.
const SELECTOR: &str = "apache.org:selector-filter:string";
const SELECTOR_CODE: u64 = 0x0000_468C_0000_0004;

/// The selector expression of a source's filter set, if it has one.
fn selector(filters: &FilterSet) -> Option<&str> {
    filters.iter().find_map(|(key, value)| {
        let (is_selector, inner) = match value {
            Value::Described(d) => (
                match &d.descriptor {
                    Descriptor::Name(n) => n.as_str() == SELECTOR,
                    Descriptor::Code(c) => *c == SELECTOR_CODE,
                },
                &d.value,
            ),
            other => (false, other),
        };
        match inner {
            Value::String(s) if is_selector || key.as_str() == SELECTOR => Some(s.as_str()),
            _ => None,
        }
    })
}

/// The start position a source's filters ask for.
///
/// # Errors
/// A description of the selector the hub does not understand.
pub(crate) fn position(filters: Option<&FilterSet>) -> Result<Position, String> {
    match filters.and_then(selector) {
        None => Ok(Position::Start),
        Some(expr) => parse(expr),
    }
}

/// Parses `amqp.annotation.{name} {>|>=} '{value}'`.
fn parse(expr: &str) -> Result<Position, String> {
    let bad = || {
        format!(
            "unsupported selector '{}': amqp.annotation.x-opt-offset|x-opt-sequence-number|x-opt-enqueued-time > or >= a quoted value",
            crate::untrusted::Untrusted(expr)
        )
    };
    let rest = expr.trim();
    let rest = rest
        .get(..16)
        .filter(|p| p.eq_ignore_ascii_case("amqp.annotation."))
        .map(|_| &rest[16..])
        .ok_or_else(bad)?;
    let (name, rest) = rest.split_once(char::is_whitespace).ok_or_else(bad)?;
    let rest = rest.trim_start();
    let (inclusive, rest) = if let Some(r) = rest.strip_prefix(">=") {
        (true, r)
    } else if let Some(r) = rest.strip_prefix('>') {
        (false, r)
    } else {
        return Err(bad());
    };
    let value = rest.trim();
    let value = value
        .strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .unwrap_or(value);
    let number = || value.parse::<i64>().map_err(|_| bad());
    match name.to_ascii_lowercase().as_str() {
        "x-opt-offset" => match value {
            "@latest" => Ok(Position::Latest),
            "-1" => Ok(Position::Start),
            _ => Ok(Position::Offset {
                offset: number()?,
                inclusive,
            }),
        },
        "x-opt-sequence-number" => Ok(Position::SequenceNumber {
            number: number()?,
            inclusive,
        }),
        "x-opt-enqueued-time" => Ok(Position::EnqueuedTime {
            ms: number()?,
            inclusive,
        }),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_amqp::described::Described;

    fn filters(expr: &str) -> FilterSet {
        let mut f = FilterSet::new();
        f.insert(
            SELECTOR.into(),
            Value::Described(Box::new(Described {
                descriptor: Descriptor::Name(SELECTOR.into()),
                value: Value::String(expr.into()),
            })),
        );
        f
    }

    #[test]
    fn the_sdk_selectors_give_their_positions() {
        let p = |e: &str| position(Some(&filters(e)));
        assert_eq!(position(None), Ok(Position::Start));
        assert_eq!(
            p("amqp.annotation.x-opt-offset > '-1'"),
            Ok(Position::Start)
        );
        assert_eq!(
            p("amqp.annotation.x-opt-offset > '@latest'"),
            Ok(Position::Latest)
        );
        assert_eq!(
            p("amqp.annotation.x-opt-offset >= '42'"),
            Ok(Position::Offset {
                offset: 42,
                inclusive: true
            })
        );
        assert_eq!(
            p("amqp.annotation.x-opt-sequence-number > '7'"),
            Ok(Position::SequenceNumber {
                number: 7,
                inclusive: false
            })
        );
        assert_eq!(
            p("amqp.annotation.x-opt-enqueued-time > '1700000000000'"),
            Ok(Position::EnqueuedTime {
                ms: 1_700_000_000_000,
                inclusive: false
            })
        );
        for bad in [
            "",
            "amqp.annotation.x-opt-offset < '1'",
            "amqp.annotation.x-opt-other > '1'",
            "amqp.annotation.x-opt-sequence-number > 'abc'",
            "x-opt-offset > '1'",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
