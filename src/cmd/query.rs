//! `azsim query`: `POST /devices/query`, page after page (`x-ms-continuation`), rows printed as
//! JSON. Also the paged reads `azsim job` shares (`/jobs/v2/query`, `FROM devices.jobs`).

use std::process::ExitCode;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::query::QueryConfig;
use crate::error::CliError;
use crate::out::outln;
use crate::service::{ServiceClient, ServiceError};

/// Time allowed for one page.
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The rows of a paged call: `POST /devices/query` with `query` as its body, or a `GET` of `path`
/// when `query` is `None`; `page_size` rows a request, `max` rows at most.
///
/// # Errors
/// The hub's error (a bad query is `400004` with its line and column) or a transport error.
pub(crate) async fn paged(
    client: &ServiceClient,
    path: &str,
    query: Option<&str>,
    page_size: u32,
    max: Option<u64>,
) -> Result<Vec<Value>, ServiceError> {
    let mut rows = Vec::new();
    let mut continuation: Option<String> = None;
    loop {
        let (mut rb, url) = match query {
            Some(q) => {
                let (rb, url) = client.request(Method::POST, path);
                (rb.json(&json!({ "query": q })), url)
            }
            None => client.request(Method::GET, path),
        };
        rb = rb
            .header("x-ms-max-item-count", page_size.to_string())
            .timeout(PAGE_TIMEOUT);
        if let Some(c) = &continuation {
            rb = rb.header("x-ms-continuation", c.as_str());
        }
        let resp = client.send(rb, &url).await?;
        continuation = resp
            .headers()
            .get("x-ms-continuation")
            .and_then(|v| v.to_str().ok())
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ServiceError::Transport {
                url: url.clone(),
                source: source.without_url(),
            })?;
        // A query's page is a bare array; a job list's is a `QueryResult` object with `items`
        // and `continuationToken`.
        let page = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Array(items)) => items,
            Ok(Value::Object(mut m)) if m.get("items").is_some_and(Value::is_array) => {
                if let Some(Value::String(t)) = m.remove("continuationToken") {
                    continuation = Some(t).filter(|t| !t.is_empty());
                }
                match m.remove("items") {
                    Some(Value::Array(items)) => items,
                    _ => Vec::new(),
                }
            }
            _ => {
                return Err(ServiceError::Decode {
                    url: url.clone(),
                    reason: "not a page of results".into(),
                });
            }
        };
        rows.extend(page);
        if let Some(m) = max.and_then(|m| usize::try_from(m).ok())
            && rows.len() >= m
        {
            rows.truncate(m);
            return Ok(rows);
        }
        if continuation.is_none() {
            return Ok(rows);
        }
    }
}

/// Prints `rows`: one pretty JSON array, or one compact line per row.
pub(crate) fn print_rows(rows: &[Value], json_lines: bool) {
    if json_lines {
        for r in rows {
            outln!("{r}");
        }
    } else {
        outln!("{}", serde_json::to_string_pretty(rows).unwrap_or_default());
    }
}

/// Runs the query and prints its rows.
///
/// # Errors
/// [`CliError::Runtime`] with the hub's error (`400004` names the line and column of a bad
/// query) or a transport error.
pub async fn run(cfg: QueryConfig) -> Result<ExitCode, CliError> {
    let client = ServiceClient::new(&cfg.target).map_err(CliError::runtime)?;
    let rows = paged(
        &client,
        "/devices/query",
        Some(&cfg.query),
        cfg.page_size,
        cfg.max_items,
    )
    .await
    .map_err(CliError::runtime)?;
    print_rows(&rows, cfg.json);
    Ok(ExitCode::SUCCESS)
}
