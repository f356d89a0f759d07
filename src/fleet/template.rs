//! The fleet's `--payload` template: `azsim run`'s variables (`seq`, `now`, `ts`, `uuid`,
//! `device_id`, `temperature`, `humidity`, `randint`, `uniform`) plus `index`, the device's
//! number in the fleet. One compiled template serves every device.

use std::sync::{Arc, Mutex};

use minijinja::{Environment, Error, ErrorKind, context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NAME: &str = "payload";

/// A compiled fleet payload template.
#[derive(Debug)]
pub struct FleetTemplate {
    env: Environment<'static>,
}

/// Per-message values.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    /// Sequence number of the device's message.
    pub seq: u32,
    /// Device id.
    pub device_id: &'a str,
    /// The device's index in the fleet.
    pub index: u64,
    /// Simulated temperature.
    pub temperature: f64,
    /// Simulated humidity.
    pub humidity: f64,
}

impl FleetTemplate {
    /// Compiles `source`; random functions draw from `seed`.
    ///
    /// # Errors
    /// The syntax error, or an unknown variable (rendered once with sample values).
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
        env.add_function("uniform", move |lo: f64, hi: f64| -> Result<f64, Error> {
            if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "uniform: lo must be less than hi",
                ));
            }
            Ok(rng.lock().map(|mut g| g.gen_range(lo..hi)).unwrap_or(lo))
        });
        env.add_template_owned(NAME, source)
            .map_err(|e| describe(&e))?;
        let t = Self { env };
        t.render(Vars {
            seq: 1,
            device_id: "sim-1",
            index: 1,
            temperature: 22.0,
            humidity: 50.0,
        })?;
        Ok(t)
    }

    /// Renders one body.
    ///
    /// # Errors
    /// The render error.
    pub fn render(&self, v: Vars<'_>) -> Result<String, String> {
        let t = self.env.get_template(NAME).map_err(|e| describe(&e))?;
        let now = time::OffsetDateTime::now_utc();
        t.render(context! {
            seq => v.seq,
            index => v.index,
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

    #[test]
    fn the_index_and_device_id_reach_the_body() {
        let t = FleetTemplate::new(
            r#"{"d":"{{device_id}}","i":{{index}},"n":{{seq}}}"#.into(),
            1,
        )
        .unwrap();
        let body = t
            .render(Vars {
                seq: 3,
                device_id: "sim-7",
                index: 7,
                temperature: 1.0,
                humidity: 2.0,
            })
            .unwrap();
        assert_eq!(body, r#"{"d":"sim-7","i":7,"n":3}"#);
        assert!(FleetTemplate::new("{{ nope }}".into(), 1).is_err());
    }
}
