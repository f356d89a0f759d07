//! Metrics of configurations: `systemMetrics` (`targetedCount`, `appliedCount`) and the custom
//! `metrics.queries`, computed over the twins when a configuration is read. A metric query may
//! name a configuration as `configurations.[[id]]` (Azure's spelling; ids may hold characters a
//! property name may not), which becomes a property name the query parser reads.

use serde_json::{Map, Value, json};

use super::Shared;
use super::config_apply::{APPLIED, Kind, Target};
use crate::HubError;
use crate::query::{self, Source};
use crate::store::configurations::StoredConfig;

/// The metric queries' `configurations.[[id]]` spelled as a property name the query parser
/// reads: `[[id]]` becomes `cfg_<hex of id>`, and the documents' configuration keys likewise.
pub(crate) fn alias(id: &str) -> String {
    let mut s = String::from("cfg_");
    for b in id.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A metric query with every `[[id]]` replaced by its [`alias`].
pub(crate) fn rewrite_brackets(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("[[") {
        let Some(len) = rest[start + 2..].find("]]") else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str(&alias(&rest[start + 2..start + 2 + len]));
        rest = &rest[start + 2 + len + 2..];
    }
    out.push_str(rest);
    out
}

/// A twin document with its `configurations` keys aliased (see [`alias`]).
fn aliased(doc: &Value) -> Value {
    let mut d = doc.clone();
    if let Some(Value::Object(m)) = d.get_mut("configurations") {
        let renamed: Map<String, Value> = m.iter().map(|(k, v)| (alias(k), v.clone())).collect();
        *m = renamed;
    }
    d
}

/// The number of rows `text` (a metric query, `[[id]]` allowed) gives over the twins.
///
/// # Errors
/// The parser's message.
pub(crate) fn parse_metric(text: &str) -> Result<query::Query, String> {
    query::parse(&rewrite_brackets(text)).map_err(|e| e.to_string())
}

/// Twin documents for metric queries, read once for a listing.
#[derive(Default)]
pub(crate) struct Docs {
    devices: Option<Vec<Value>>,
    modules: Option<Vec<Value>>,
}

impl Docs {
    pub(crate) async fn get(&mut self, hub: &Shared, modules: bool) -> Result<&[Value], HubError> {
        let slot = if modules {
            &mut self.modules
        } else {
            &mut self.devices
        };
        if slot.is_none() {
            let docs = super::query::twins(hub, modules).await?;
            *slot = Some(docs.iter().map(aliased).collect());
        }
        Ok(slot.as_deref().unwrap_or(&[]))
    }
}

/// Count the rows of a metric query (0 for one that does not parse).
pub(crate) async fn run_metric(hub: &Shared, docs: &mut Docs, text: &str) -> Result<u64, HubError> {
    let Ok(q) = parse_metric(text) else {
        return Ok(0);
    };
    let rows = match q.source {
        Source::Devices => docs.get(hub, false).await?.to_vec(),
        Source::Modules => docs.get(hub, true).await?.to_vec(),
        Source::Jobs => Vec::new(),
    };
    Ok(query::run(&q, rows).rows.len() as u64)
}

/// `systemMetrics.results` of a configuration: twins its condition targets, and twins whose
/// status for it is `Applied`.
pub(crate) async fn system_results(
    hub: &Shared,
    docs: &mut Docs,
    c: &StoredConfig,
) -> Result<(u64, u64), HubError> {
    let Some(t) = Target::from_stored(c) else {
        return Ok((0, 0));
    };
    let list = docs.get(hub, t.kind == Kind::Module).await?;
    let targeted = list.iter().filter(|d| {
        // The documents are aliased; the condition reads tags, properties, ids.
        t.targets(d)
    });
    let targeted = targeted.count() as u64;
    let key = alias(&t.id);
    let applied = list
        .iter()
        .filter(|d| d.pointer(&format!("/configurations/{key}/status")) == Some(&json!(APPLIED)))
        .count() as u64;
    Ok((targeted, applied))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_queries_may_name_a_configuration_in_double_brackets() {
        let q = "SELECT deviceId FROM devices WHERE configurations.[[my-cfg]].status = 'Applied'";
        let r = rewrite_brackets(q);
        assert!(r.contains("configurations.cfg_6d792d636667.status"), "{r}");
        assert!(parse_metric(q).is_ok());
        let doc =
            aliased(&json!({"deviceId": "d", "configurations": {"my-cfg": {"status": "Applied"}}}));
        let parsed = parse_metric(q).unwrap();
        assert_eq!(query::run(&parsed, vec![doc]).rows.len(), 1);
    }
}
