//! `--payload` templates (minijinja): the telemetry body rendered per message.
//!
//! Variables, fresh for each message: `seq` (1, 2, ...), `now` (RFC 3339 UTC), `ts` (Unix
//! seconds), `uuid` (a random UUID), `device_id`, `temperature` and `humidity` (the simulated
//! sensor's reading). Functions: `randint(lo, hi)` (inclusive integer) and `uniform(lo, hi)`
//! (float), drawing from `--seed` so a run is repeatable.

use std::sync::{Arc, Mutex};

use minijinja::{Environment, Error, ErrorKind, context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NAME: &str = "payload";

/// A compiled payload template.
#[derive(Debug)]
pub struct Template {
    env: Environment<'static>,
}

/// Per-message values a template can use.
#[derive(Debug, Clone, Copy)]
pub struct TemplateVars<'a> {
    /// Sequence number.
    pub seq: u32,
    /// The device id.
    pub device_id: &'a str,
    /// Simulated temperature.
    pub temperature: f64,
    /// Simulated humidity.
    pub humidity: f64,
}

impl Template {
    /// Compiles `source`, with random functions seeded by `seed`.
    ///
    /// # Errors
    /// The template's syntax error (line and reason), or an unknown name used by it.
    pub fn new(source: String, seed: u64) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
        let r = rng.clone();
        env.add_function("randint", move |lo: i64, hi: i64| -> Result<i64, Error> {
            if lo > hi {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "randint: lo is greater than hi",
                ));
            }
            Ok(r.lock().map(|mut g| g.gen_range(lo..=hi)).unwrap_or(lo))
        });
        let r = rng;
        env.add_function("uniform", move |lo: f64, hi: f64| -> Result<f64, Error> {
            if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "uniform: lo must be less than hi",
                ));
            }
            Ok(r.lock().map(|mut g| g.gen_range(lo..hi)).unwrap_or(lo))
        });
        env.add_template_owned(NAME, source)
            .map_err(|e| describe(&e))?;
        let t = Self { env };
        // Render once with sample values so an unknown variable is a usage error now, not a
        // failure at the first message.
        t.render(TemplateVars {
            seq: 1,
            device_id: "device",
            temperature: 22.0,
            humidity: 50.0,
        })?;
        Ok(t)
    }

    /// Renders the body for one message.
    ///
    /// # Errors
    /// The render error (for example `randint` with bad bounds).
    pub fn render(&self, v: TemplateVars<'_>) -> Result<String, String> {
        let t = self.env.get_template(NAME).map_err(|e| describe(&e))?;
        let now = time::OffsetDateTime::now_utc();
        t.render(context! {
            seq => v.seq,
            now => now
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            ts => now.unix_timestamp(),
            uuid => uuid::Uuid::new_v4().to_string(),
            device_id => v.device_id,
            temperature => (v.temperature * 100.0).round() / 100.0,
            humidity => (v.humidity * 100.0).round() / 100.0,
        })
        .map_err(|e| describe(&e))
    }
}

fn describe(e: &Error) -> String {
    match (e.line(), e.detail()) {
        (Some(line), Some(d)) => format!("line {line}: {d}"),
        (Some(line), None) => format!("line {line}: {}", e.kind()),
        (None, Some(d)) => d.to_owned(),
        (None, None) => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(seq: u32) -> TemplateVars<'static> {
        TemplateVars {
            seq,
            device_id: "dev-1",
            temperature: 21.456,
            humidity: 40.0,
        }
    }

    #[test]
    fn templates_see_the_message_variables_and_functions() {
        let t = Template::new(
            r#"{"n":{{ seq }},"d":"{{ device_id }}","t":{{ temperature }},"r":{{ randint(1, 6) }},"u":"{{ uuid }}","at":"{{ now }}","ts":{{ ts }},"f":{{ uniform(0.0, 1.0) }}}"#.into(),
            7,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&t.render(vars(3)).unwrap()).unwrap();
        assert_eq!(v["n"], 3);
        assert_eq!(v["d"], "dev-1");
        assert_eq!(v["t"], 21.46);
        assert!((1..=6).contains(&v["r"].as_i64().unwrap()));
        assert_eq!(v["u"].as_str().unwrap().len(), 36);
        assert!(v["at"].as_str().unwrap().ends_with('Z'));
        assert!(v["ts"].as_i64().unwrap() > 1_700_000_000);
    }

    #[test]
    fn the_seed_makes_random_values_repeatable() {
        let a = Template::new("{{ randint(0, 1000000) }}".into(), 1).unwrap();
        let b = Template::new("{{ randint(0, 1000000) }}".into(), 1).unwrap();
        let ra: Vec<String> = (0..5).map(|i| a.render(vars(i)).unwrap()).collect();
        let rb: Vec<String> = (0..5).map(|i| b.render(vars(i)).unwrap()).collect();
        assert_eq!(ra, rb);
    }

    #[test]
    fn bad_templates_are_reported_up_front() {
        assert!(
            Template::new("{{ seq ".into(), 0)
                .unwrap_err()
                .contains("line 1")
        );
        assert!(Template::new("{{ nope }}".into(), 0).is_err());
        assert!(Template::new("{{ randint(5, 1) }}".into(), 0).is_err());
    }
}
