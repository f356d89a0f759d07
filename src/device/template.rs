//! `--payload` templates (minijinja): the telemetry body rendered per message.
//!
//! Variables, fresh for each message: `seq` (1, 2, ...), `now` (RFC 3339 UTC), `ts` (Unix
//! seconds), `uuid` (a random UUID), `device_id`, `temperature` and `humidity` (the simulated
//! sensor's reading), and in `azsim fleet` also `index` (the device's number in the fleet).
//! Functions: `randint(lo, hi)` (inclusive integer) and `uniform(lo, hi)` (float), drawing from
//! `--seed` so a run is repeatable. One compiled template serves every device of a fleet.

use std::sync::{Arc, Mutex};

use azsim_proto::json;
use minijinja::{Environment, Error, ErrorKind, context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NAME: &str = "payload";

/// A compiled payload template.
#[derive(Debug)]
pub struct Template {
    /// Boxed: a run config holds an `Option<Template>` and every device's task its config, so
    /// inline it would cost each device 200 bytes even without a template.
    env: Box<Environment<'static>>,
    /// `index` is a variable (fleet templates); elsewhere using it is an error.
    indexed: bool,
}

/// Per-message values a template can use.
#[derive(Debug, Clone, Copy)]
pub struct TemplateVars<'a> {
    /// Sequence number.
    pub seq: u32,
    /// The device id.
    pub device_id: &'a str,
    /// The device's index in a fleet (`None` for `azsim run`).
    pub index: Option<u64>,
    /// Simulated temperature.
    pub temperature: f64,
    /// Simulated humidity.
    pub humidity: f64,
}

impl<'a> TemplateVars<'a> {
    /// The variables for message `seq`, with the sensor values taken from the reference
    /// device's reading (`{"temperature":..,"humidity":..,"seq":n}`; a missing one reads 0).
    pub fn from_reading(seq: u32, device_id: &'a str, index: Option<u64>, reading: &str) -> Self {
        let value = |k: &str| {
            json::find(reading.as_bytes(), &[k])
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Self {
            seq,
            device_id,
            index,
            temperature: value("temperature"),
            humidity: value("humidity"),
        }
    }
}

impl Template {
    /// Compiles `source` for `azsim run`, with random functions seeded by `seed`.
    ///
    /// # Errors
    /// The template's syntax error (line and reason), or an unknown name used by it.
    pub fn new(source: String, seed: u64) -> Result<Self, String> {
        Self::compile(source, seed, false)
    }

    /// Compiles `source` for `azsim fleet`: as [`Template::new`], plus the `index` variable.
    ///
    /// # Errors
    /// As [`Template::new`].
    pub fn for_fleet(source: String, seed: u64) -> Result<Self, String> {
        Self::compile(source, seed, true)
    }

    fn compile(source: String, seed: u64, indexed: bool) -> Result<Self, String> {
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
        let t = Self {
            env: Box::new(env),
            indexed,
        };
        // Render once with sample values so an unknown variable is a usage error now, not a
        // failure at the first message.
        t.render(TemplateVars {
            seq: 1,
            device_id: "device",
            index: Some(1),
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
        let index = v.index.filter(|_| self.indexed);
        let fleet = match index {
            Some(index) => context! { index => index },
            None => context! {},
        };
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
            ..fleet
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
            index: None,
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

    #[test]
    fn fleet_templates_see_the_index_and_run_templates_do_not() {
        let source = r#"{"d":"{{device_id}}","i":{{index}},"n":{{seq}}}"#;
        let t = Template::for_fleet(source.into(), 1).unwrap();
        let body = t
            .render(TemplateVars {
                seq: 3,
                device_id: "sim-7",
                index: Some(7),
                temperature: 1.0,
                humidity: 2.0,
            })
            .unwrap();
        assert_eq!(body, r#"{"d":"sim-7","i":7,"n":3}"#);
        assert!(Template::new(source.into(), 1).is_err());
    }
}
