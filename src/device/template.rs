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
    /// The template as text and plain `{{ name }}` substitutions, when that is all it is (the
    /// usual body): rendered without the engine, which costs a context of every variable
    /// (the time formatted, a UUID drawn) and a new string per message. `None`: the engine.
    plain: Option<Vec<Part>>,
}

/// A piece of a plain template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Var(Var),
}

/// A variable a plain template substitutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Seq,
    Now,
    Ts,
    Uuid,
    DeviceId,
    Temperature,
    Humidity,
    Index,
}

impl Var {
    fn named(name: &str, indexed: bool) -> Option<Self> {
        Some(match name {
            "seq" => Self::Seq,
            "now" => Self::Now,
            "ts" => Self::Ts,
            "uuid" => Self::Uuid,
            "device_id" => Self::DeviceId,
            "temperature" => Self::Temperature,
            "humidity" => Self::Humidity,
            "index" if indexed => Self::Index,
            _ => return None,
        })
    }

    /// Reads the clock or draws randomness: no fixed sample renders it.
    fn varies(self) -> bool {
        matches!(self, Self::Now | Self::Ts | Self::Uuid)
    }
}

/// `source` as [`Part`]s if it is only text and `{{ name }}` of known variables; `None` for
/// anything else (tags, comments, filters, whitespace control, a final newline the engine
/// trims), which the engine renders.
fn plain_parts(source: &str, indexed: bool) -> Option<Vec<Part>> {
    if source.ends_with('\n') {
        return None;
    }
    let text = |t: &str| {
        (!t.contains("{%") && !t.contains("{#") && !t.contains("}}") && !t.ends_with('{'))
            .then(|| Part::Text(t.to_owned()))
    };
    let mut parts = Vec::new();
    let mut rest = source;
    while let Some(open) = rest.find("{{") {
        let (before, after) = rest.split_at(open);
        if !before.is_empty() {
            parts.push(text(before)?);
        }
        let after = &after[2..];
        let close = after.find("}}")?;
        let name = after[..close].trim_matches([' ', '\t']);
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        parts.push(Part::Var(Var::named(name, indexed)?));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(text(rest)?);
    }
    Some(parts)
}

/// A float as the engine prints it: Rust's shortest form, with `.0` when integral.
fn push_float(out: &mut String, v: f64) {
    use std::fmt::Write as _;
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v < 0.0 { "-inf" } else { "inf" });
    } else {
        let start = out.len();
        let _ = write!(out, "{v}");
        if !out[start..].contains('.') {
            out.push_str(".0");
        }
    }
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
        let plain = plain_parts(&source, indexed);
        env.add_template_owned(NAME, source)
            .map_err(|e| describe(&e))?;
        let mut t = Self {
            env: Box::new(env),
            indexed,
            plain: None,
        };
        // Render once with sample values so an unknown variable is a usage error now, not a
        // failure at the first message.
        let sample = TemplateVars {
            seq: 1,
            device_id: "device",
            index: Some(1),
            temperature: 22.456,
            humidity: 50.0,
        };
        let by_engine = t.render(sample)?;
        // The plain renderer is used only where it provably agrees with the engine.
        if let Some(parts) = plain {
            let checkable = !parts
                .iter()
                .any(|p| matches!(p, Part::Var(v) if v.varies()));
            let mut by_plain = String::new();
            render_plain(&parts, sample, &mut by_plain);
            if !checkable || by_plain == by_engine {
                t.plain = Some(parts);
            }
        }
        Ok(t)
    }

    /// Renders the body for one message into `out` (cleared first), reusing its allocation.
    ///
    /// # Errors
    /// As [`Template::render`].
    pub fn render_into(&self, v: TemplateVars<'_>, out: &mut String) -> Result<(), String> {
        out.clear();
        match &self.plain {
            Some(parts) => {
                render_plain(parts, v, out);
                Ok(())
            }
            None => {
                *out = self.render_engine(v)?;
                Ok(())
            }
        }
    }

    /// Renders the body for one message.
    ///
    /// # Errors
    /// The render error (for example `randint` with bad bounds).
    pub fn render(&self, v: TemplateVars<'_>) -> Result<String, String> {
        let mut out = String::new();
        self.render_into(v, &mut out)?;
        Ok(out)
    }

    fn render_engine(&self, v: TemplateVars<'_>) -> Result<String, String> {
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

fn render_plain(parts: &[Part], v: TemplateVars<'_>, out: &mut String) {
    use std::fmt::Write as _;
    for p in parts {
        match p {
            Part::Text(t) => out.push_str(t),
            Part::Var(Var::Seq) => {
                let _ = write!(out, "{}", v.seq);
            }
            Part::Var(Var::Now) => out.push_str(
                &time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            ),
            Part::Var(Var::Ts) => {
                let _ = write!(out, "{}", time::OffsetDateTime::now_utc().unix_timestamp());
            }
            Part::Var(Var::Uuid) => {
                let _ = write!(out, "{}", uuid::Uuid::new_v4());
            }
            Part::Var(Var::DeviceId) => out.push_str(v.device_id),
            Part::Var(Var::Temperature) => push_float(out, (v.temperature * 100.0).round() / 100.0),
            Part::Var(Var::Humidity) => push_float(out, (v.humidity * 100.0).round() / 100.0),
            Part::Var(Var::Index) => {
                if let Some(i) = v.index {
                    let _ = write!(out, "{i}");
                }
            }
        }
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

#[cfg(test)]
mod plain_tests {
    use super::*;

    fn engine_only(source: &str, indexed: bool) -> Template {
        let mut t = Template::compile(source.to_owned(), 3, indexed).unwrap();
        t.plain = None;
        t
    }

    #[test]
    fn plain_templates_render_as_the_engine_does() {
        let source = r#"{"device_id":"{{device_id}}","temperature":{{ temperature }},"humidity":{{humidity}},"seq":{{seq}},"i":{{index}}}"#;
        let fast = Template::for_fleet(source.into(), 3).unwrap();
        assert!(fast.plain.is_some());
        let slow = engine_only(source, true);
        let mut r = azsim_proto::device::RandomWalk::new(9);
        for i in 0..2000u32 {
            let t = f64::from(r.next_u32()) / 1e6 - 2000.0;
            let h = f64::from(i) * 0.25 - 100.0;
            let v = TemplateVars {
                seq: i.wrapping_mul(2_654_435_761),
                device_id: "sim-\"7",
                index: Some(u64::from(i) << 20),
                temperature: t,
                humidity: h,
            };
            assert_eq!(fast.render(v).unwrap(), slow.render(v).unwrap(), "{t} {h}");
        }
    }

    #[test]
    fn varying_variables_render_plainly_too() {
        let t =
            Template::new(r#"{"u":"{{uuid}}","at":"{{ now }}","ts":{{ts}}}"#.into(), 1).unwrap();
        assert!(t.plain.is_some());
        let v: serde_json::Value = serde_json::from_str(&t.render(vars()).unwrap()).unwrap();
        assert_eq!(v["u"].as_str().unwrap().len(), 36);
        assert!(v["at"].as_str().unwrap().ends_with('Z'));
        assert!(v["ts"].as_i64().unwrap() > 1_700_000_000);
    }

    fn vars() -> TemplateVars<'static> {
        TemplateVars {
            seq: 1,
            device_id: "d",
            index: None,
            temperature: 1.0,
            humidity: 2.0,
        }
    }

    #[test]
    fn anything_more_than_substitution_goes_to_the_engine() {
        for source in [
            "{{ seq + 1 }}",
            "{{ seq|string }}",
            "{% if seq %}x{% endif %}",
            "{# c #}{{ seq }}",
            "{{- seq }}",
            "{{ seq }}\n",
            "{{ randint(1, 2) }}",
        ] {
            let t = Template::new(source.into(), 1).unwrap();
            assert!(t.plain.is_none(), "{source}");
        }
        assert!(plain_parts("{{ index }}", false).is_none());
        assert_eq!(
            Template::new("{{ seq }}\n".into(), 1)
                .unwrap()
                .render(vars())
                .unwrap(),
            "1"
        );
    }
}
