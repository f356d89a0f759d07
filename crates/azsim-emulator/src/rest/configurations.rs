//! Configurations, IoT Hub's automatic device management (REST reference "Configuration":
//! Create Or Update, Get, Get Configurations, Delete, Test Queries, Apply On Edge Device):
//! `PUT|GET|DELETE /configurations/{id}`, `GET /configurations?top=N`,
//! `POST /configurations/testQueries` and `POST /devices/{id}/applyConfigurationContent`.
//! What they do to twins is in [`super::config_apply`].
//!
//! Rules, with Azure's error codes ("Troubleshoot Azure IoT Hub error codes", 4004xx):
//! the id as a device id (up to 128 characters of letters, digits and `-:.+%_#*?!(),=@;$'`);
//! the content is fixed at creation, an update may change only `targetCondition`, `priority`,
//! `labels` and `metrics` (400403 CannotModifyImmutableConfigurationContent); `deviceContent`
//! and `moduleContent` keys start with `properties.desired` (400402 InvalidConfigurationContent);
//! a target condition and metric queries the query language parses (400401
//! InvalidConfigurationTargetCondition, 400404 InvalidConfigurationCustomMetricsQuery);
//! `priority` a non-negative integer; at most 100 configurations per hub, 10 on the free tier
//! ("IoT Hub quotas and throttling"; the 403002 IotHubQuotaExceeded answer is inferred); at
//! most [`MAX_CUSTOM_METRICS`] custom metric queries (inferred: no source states Azure's
//! number). Etags as for devices: `If-Match` on update and delete, `*` or none matches any,
//! 412 otherwise; a PUT without `If-Match` of an id that exists is 409.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse as _;
use serde_json::{Map, Value, json};

use super::config_apply::{self as apply, Kind};
use super::config_metrics::{self as metrics, Docs};
use super::{
    ApiError, ApiResult, Shared, check_id, etag_of, etag_ok, if_match, json_ok, parse_json,
};
use crate::store::configurations::{self as store, StoredConfig};

/// Custom metric queries per configuration (inferred).
pub(super) const MAX_CUSTOM_METRICS: usize = 5;
/// Configurations per hub ("IoT Hub quotas and throttling": 100 on paid tiers, 10 on free).
const MAX_CONFIGS: usize = 100;
const MAX_CONFIGS_FREE: usize = 10;

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        404301,
        "ConfigurationNotFound",
        format!("Configuration {id} not found"),
    )
}

fn invalid_content(m: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        400402,
        "InvalidConfigurationContent",
        m,
    )
}

/// The `content` of a body, checked: a JSON object whose `deviceContent`/`moduleContent` keys
/// start with `properties.desired` and whose `modulesContent` holds an object per module.
fn check_content(body: &Value) -> Result<Map<String, Value>, ApiError> {
    let content = match body.get("content") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(invalid_content("content must be a JSON object")),
    };
    for key in ["deviceContent", "moduleContent"] {
        match content.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let path_ok = k == "properties.desired"
                        || k.strip_prefix("properties.desired.")
                            .is_some_and(|r| !r.is_empty() && r.split('.').all(|s| !s.is_empty()));
                    if !path_ok {
                        return Err(invalid_content(format!(
                            "{key} key '{k}' must start with properties.desired"
                        )));
                    }
                    if k == "properties.desired" && !v.is_object() {
                        return Err(invalid_content(format!(
                            "{key}: properties.desired must be a JSON object"
                        )));
                    }
                }
                let patch = apply::desired_patch(m);
                crate::twin::validate_patch(&patch)
                    .map_err(|e| invalid_content(format!("{key}: {e}")))?;
            }
            Some(_) => return Err(invalid_content(format!("{key} must be a JSON object"))),
        }
    }
    match content.get("modulesContent") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (module, v) in m {
                match v.get("properties.desired") {
                    Some(Value::Object(d)) => {
                        let mut d = d.clone();
                        crate::twin::strip_meta(&mut d);
                        crate::twin::validate_patch(&d).map_err(|e| {
                            invalid_content(format!("modulesContent.{module}: {e}"))
                        })?;
                    }
                    None if v.is_object() => {}
                    _ => {
                        return Err(invalid_content(format!(
                            "modulesContent.{module} must be an object whose properties.desired is an object"
                        )));
                    }
                }
            }
        }
        Some(_) => return Err(invalid_content("modulesContent must be a JSON object")),
    }
    Ok(content)
}

/// The content as compared for immutability: members with a null or empty value dropped (a
/// client echoing back `moduleContent: {}` or `null` changes nothing).
fn normalized(content: &Map<String, Value>) -> Map<String, Value> {
    content
        .iter()
        .filter(|(_, v)| !v.is_null() && v.as_object().is_none_or(|m| !m.is_empty()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn string_map(body: &Value, key: &str) -> Result<Map<String, Value>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) if m.values().all(Value::is_string) => Ok(m.clone()),
        Some(_) => Err(ApiError::bad(format!(
            "{key} must be an object of string values"
        ))),
    }
}

/// `metrics.queries` of a body, each checked.
fn metric_queries(body: &Value) -> Result<Map<String, Value>, ApiError> {
    let queries = match body.pointer("/metrics/queries") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(ApiError::bad("metrics.queries must be a JSON object")),
    };
    if queries.len() > MAX_CUSTOM_METRICS {
        return Err(metric_error(format!(
            "a configuration has at most {MAX_CUSTOM_METRICS} custom metric queries"
        )));
    }
    for (name, q) in &queries {
        let text = q
            .as_str()
            .ok_or_else(|| metric_error(format!("metric {name} must be a query string")))?;
        metrics::parse_metric(text).map_err(|e| metric_error(format!("metric {name}: {e}")))?;
    }
    Ok(queries)
}

fn metric_error(m: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        400404,
        "InvalidConfigurationCustomMetricsQuery",
        m,
    )
}

fn condition_error(m: String) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        400401,
        "InvalidConfigurationTargetCondition",
        m,
    )
}

fn priority(body: &Value) -> Result<i64, ApiError> {
    match body.get("priority") {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v
            .as_i64()
            .filter(|p| (0..=i64::from(i32::MAX)).contains(p))
            .ok_or_else(|| ApiError::bad("priority must be a non-negative integer")),
    }
}

/// A configuration as the REST API shows it, metric results computed now.
async fn render(hub: &Shared, docs: &mut Docs, c: &StoredConfig) -> Result<Value, ApiError> {
    let mut doc = c.doc.clone();
    doc.remove("$etagN");
    doc.insert("etag".into(), json!(etag_of(c.etag_n())));
    let id = c.id().to_string();
    let kind = doc
        .get("content")
        .and_then(Value::as_object)
        .map_or(Kind::Device, apply::kind_of);
    let cond = c.target_condition().to_string();
    let (from, clause) = match kind {
        Kind::Module => (
            "select deviceId, moduleId from devices.modules",
            apply::module_condition(&cond)
                .unwrap_or("")
                .trim()
                .to_string(),
        ),
        _ => ("select deviceId from devices", cond.trim().to_string()),
    };
    let targeted_q = if clause.is_empty() {
        String::new()
    } else {
        format!("{from} where {clause}")
    };
    let applied_q = format!("{from} where configurations.[[{id}]].status = 'Applied'");
    let (targeted, applied) = metrics::system_results(hub, docs, c).await?;
    doc.insert(
        "systemMetrics".into(),
        json!({
            "results": {"targetedCount": targeted, "appliedCount": applied},
            "queries": {"targetedCount": targeted_q, "appliedCount": applied_q},
        }),
    );
    let queries = doc
        .get("metrics")
        .and_then(|m| m.get("queries"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut results = Map::new();
    for (name, q) in &queries {
        let n = metrics::run_metric(hub, docs, q.as_str().unwrap_or("")).await?;
        results.insert(name.clone(), json!(n));
    }
    doc.insert(
        "metrics".into(),
        json!({"results": results, "queries": queries}),
    );
    Ok(Value::Object(doc))
}

pub(super) async fn put_configuration(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    check_id("configuration id", &id)?;
    let body = parse_json(&body)?;
    if !body.is_object() {
        return Err(ApiError::bad("body must be a JSON object"));
    }
    if body
        .get("id")
        .and_then(Value::as_str)
        .is_some_and(|b| b != id)
    {
        return Err(ApiError::bad("id in the body does not match the URL"));
    }
    let content = check_content(&body)?;
    let kind = apply::kind_of(&content);
    let condition = match body.get("targetCondition") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(condition_error("targetCondition must be a string".into())),
    };
    apply::parse_target(kind, &condition).map_err(condition_error)?;
    let priority = priority(&body)?;
    let labels = string_map(&body, "labels")?;
    let queries = metric_queries(&body)?;
    let im = if_match(&headers);
    let now = hub.clock().now_rfc3339();
    let max = if hub.cfg.tier == Some(crate::fault::Tier::F1) {
        MAX_CONFIGS_FREE
    } else {
        MAX_CONFIGS
    };
    let (cid, body2) = (id.clone(), body.clone());
    let saved = hub
        .store
        .call(move |c| {
            let existing = store::get(c, &cid)?;
            let mut doc = match (existing, &im) {
                (Some(_), None) => {
                    return Ok(Err(ApiError::new(
                        StatusCode::CONFLICT,
                        409000,
                        "GenericConflict",
                        format!("Configuration {cid} already exists"),
                    )));
                }
                (Some(old), Some(_)) => {
                    if !etag_ok(&im, &etag_of(old.etag_n())) {
                        return Ok(Err(ApiError::precondition()));
                    }
                    let old_content = old
                        .doc
                        .get("content")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default();
                    if body2.get("content").is_some()
                        && normalized(&old_content) != normalized(&content)
                    {
                        return Ok(Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            400403,
                            "CannotModifyImmutableConfigurationContent",
                            format!("Configuration {cid}: content cannot be modified"),
                        )));
                    }
                    let mut doc = old.doc.clone();
                    doc.insert("$etagN".into(), json!(old.etag_n() + 1));
                    doc
                }
                (None, Some(g)) if g != "*" && !g.is_empty() => {
                    return Ok(Err(not_found(&cid)));
                }
                (None, _) => {
                    if store::count(c)? >= max {
                        return Ok(Err(ApiError::new(
                            StatusCode::FORBIDDEN,
                            403002,
                            "IotHubQuotaExceeded",
                            format!("a hub of this tier has at most {max} configurations"),
                        )));
                    }
                    let mut doc = Map::new();
                    doc.insert("id".into(), json!(cid));
                    doc.insert(
                        "schemaVersion".into(),
                        body2.get("schemaVersion").cloned().unwrap_or(json!("1.0")),
                    );
                    doc.insert("content".into(), Value::Object(content.clone()));
                    doc.insert(
                        "contentType".into(),
                        body2
                            .get("contentType")
                            .cloned()
                            .unwrap_or(json!("assignment")),
                    );
                    doc.insert("createdTimeUtc".into(), json!(now));
                    doc.insert("$etagN".into(), json!(1));
                    doc
                }
            };
            let created = doc.get("$etagN") == Some(&json!(1));
            doc.insert("targetCondition".into(), json!(condition));
            doc.insert("priority".into(), json!(priority));
            doc.insert("labels".into(), Value::Object(labels));
            doc.insert("metrics".into(), json!({"queries": queries}));
            doc.insert("lastUpdatedTimeUtc".into(), json!(now));
            let seq = store::put(c, &cid, &doc)?;
            Ok(Ok((StoredConfig { seq, doc }, created)))
        })
        .await?;
    let (stored, created) = saved?;
    tracing::info!(configuration = %id, created, "configuration saved");
    hub.configs.changed();
    let v = render(&hub, &mut Docs::default(), &stored).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_ok(status, v))
}

pub(super) async fn get_configuration(
    State(hub): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult {
    let cid = id.clone();
    let Some(c) = hub.store.call(move |c| store::get(c, &cid)).await? else {
        return Err(not_found(&id));
    };
    let v = render(&hub, &mut Docs::default(), &c).await?;
    Ok(json_ok(StatusCode::OK, v))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct ListParams {
    top: Option<String>,
}

pub(super) async fn list_configurations(
    State(hub): State<Shared>,
    Query(p): Query<ListParams>,
) -> ApiResult {
    // "Value will be overridden if greater than the maximum deployment count".
    let top = match p.top.as_deref().map(str::trim) {
        None | Some("") => usize::MAX,
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| ApiError::bad("top must be a non-negative integer"))?,
    };
    let all = hub.store.call(|c| store::list(c)).await?;
    let mut docs = Docs::default();
    let mut out = Vec::new();
    for c in all.iter().take(top) {
        out.push(render(&hub, &mut docs, c).await?);
    }
    Ok(json_ok(StatusCode::OK, Value::Array(out)))
}

pub(super) async fn delete_configuration(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let im = if_match(&headers);
    let cid = id.clone();
    let r = hub
        .store
        .call(move |c| {
            let Some(old) = store::get(c, &cid)? else {
                return Ok(Err(not_found(&cid)));
            };
            if !etag_ok(&im, &etag_of(old.etag_n())) {
                return Ok(Err(ApiError::precondition()));
            }
            store::delete(c, &cid)?;
            Ok(Ok(()))
        })
        .await?;
    r?;
    tracing::info!(configuration = %id, "configuration deleted");
    hub.configs.forget(&id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /configurations/testQueries`: `{"targetCondition": "...", "customMetricQueries":
/// {"name": "query"}}` answered with each one's parse error (empty when it parses).
pub(super) async fn test_queries(State(_hub): State<Shared>, body: Bytes) -> ApiResult {
    let body = parse_json(&body)?;
    let condition = body
        .get("targetCondition")
        .and_then(Value::as_str)
        .unwrap_or("");
    // A module condition names its collection; any other is a device condition.
    let kind = if apply::module_condition(condition).is_some() {
        Kind::Module
    } else {
        Kind::Device
    };
    let condition_error = apply::parse_target(kind, condition)
        .err()
        .unwrap_or_default();
    let mut errors = Map::new();
    if let Some(m) = body.get("customMetricQueries").and_then(Value::as_object) {
        for (name, q) in m {
            let e = match q.as_str() {
                Some(text) => metrics::parse_metric(text).err().unwrap_or_default(),
                None => "the query must be a string".to_string(),
            };
            errors.insert(name.clone(), json!(e));
        }
    }
    Ok(json_ok(
        StatusCode::OK,
        json!({"targetConditionError": condition_error, "customMetricQueryErrors": errors}),
    ))
}

/// `POST /devices/{id}/applyConfigurationContent`: an edge deployment's `modulesContent` put
/// on the device's module twins at once (`$edgeAgent`, `$edgeHub` and the others it has).
pub(super) async fn apply_content(
    State(hub): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let body = parse_json(&body)?;
    let content = check_content(&json!({ "content": body }))?;
    let Some(modules) = content
        .get("modulesContent")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
    else {
        return Err(invalid_content("modulesContent is required"));
    };
    let d = id.clone();
    let Some(device) = hub
        .store
        .call(move |c| crate::store::q::get_identity(c, &d, None))
        .await?
    else {
        return Err(ApiError::device_not_found(&id));
    };
    if !device.iot_edge {
        return Err(ApiError::bad(format!(
            "device {id} is not an IoT Edge device"
        )));
    }
    let done = apply::apply_modules_content(&hub, &id, modules).await?;
    tracing::info!(device = %id, modules = ?done, "configuration content applied");
    Ok(StatusCode::NO_CONTENT.into_response())
}
