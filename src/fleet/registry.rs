//! Fleet identities through the bulk registry call, `POST /devices?api-version=...` with up to
//! 100 `ExportImportDevice` operations (Azure's "Bulk Device CRUD", the Python SDK's
//! `bulk_create_or_update_devices`; the local hub serves the same call). Devices are created
//! (or updated) with keys generated here, so the fleet knows them without reading each device
//! back; `--delete-after` deletes them the same way. Throttling (429) and a busy hub (503) are
//! retried with exponential backoff, honouring `Retry-After`.

use std::time::Duration;

use azsim_proto::secret::Secret;
use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::service::client::API_VERSION;
use crate::service::target::Target;

/// Azure's limit on operations per bulk call.
pub const BULK_MAX: usize = 100;
/// Bulk calls in flight at once.
const CONCURRENT_CALLS: usize = 4;
/// Attempts of one call when throttled.
const ATTEMPTS: u32 = 8;

/// A service client for the bulk registry call.
#[derive(Debug)]
pub struct Registry {
    http: reqwest::Client,
    base: String,
    /// The `Authorization` header: a SAS token, so a secret.
    auth: Secret<String>,
}

/// How one bulk call went wrong, for the whole fleet's report.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The HTTPS client could not be built or the request failed.
    #[error("bulk registry call: {0}")]
    Transport(String),
    /// The hub answered with an error for the whole call.
    #[error("bulk registry call: hub answered {status}: {message}")]
    Hub {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// Some devices failed: `(device id, errorCode)`, the first few.
    #[error("bulk registry call: {count} device operations failed, first {first:?}")]
    Devices {
        /// How many failed.
        count: usize,
        /// The first ones.
        first: Vec<(String, String)>,
    },
}

impl Registry {
    /// A client for the hub of `target`, with a one-hour token.
    ///
    /// # Errors
    /// When the CA file is unusable or the key is not base64.
    pub fn new(target: &Target) -> Result<Self, RegistryError> {
        let tls = crate::tls::client_config(target.ca_file.as_deref())
            .map_err(|e| RegistryError::Transport(e.to_string()))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("azsim/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Transport(e.without_url().to_string()))?;
        let token = target
            .credentials
            .token(azsim_emulator::clock::unix_now() + 3600)
            .map_err(RegistryError::Transport)?;
        Ok(Self {
            http,
            base: target.base_url(),
            auth: Secret::new(token),
        })
    }

    /// One bulk call of at most [`BULK_MAX`] operations; per-device failures are returned as
    /// `(id, errorCode)`.
    ///
    /// # Errors
    /// A transport error, or a hub error for the whole call (after the throttling retries).
    pub async fn bulk(&self, ops: &[Value]) -> Result<Vec<(String, String)>, RegistryError> {
        let url = format!("{}/devices?api-version={API_VERSION}", self.base);
        let mut backoff = Duration::from_millis(500);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self
                .http
                .post(&url)
                .header(reqwest::header::AUTHORIZATION, self.auth.expose())
                .json(&ops)
                .send()
                .await
                .map_err(|e| RegistryError::Transport(e.without_url().to_string()))?;
            let status = resp.status().as_u16();
            if (status == 429 || status == 503) && attempt < ATTEMPTS {
                let wait = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map_or(backoff, Duration::from_secs);
                tracing::info!(
                    status,
                    wait_ms = wait.as_millis() as u64,
                    "bulk call throttled"
                );
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if let Some(ok) = body.get("isSuccessful").and_then(Value::as_bool) {
                if ok {
                    return Ok(Vec::new());
                }
                let failed = body["errors"]
                    .as_array()
                    .map(|errs| {
                        errs.iter()
                            .map(|e| {
                                (
                                    e["deviceId"].as_str().unwrap_or("?").to_owned(),
                                    e["errorCode"]
                                        .as_str()
                                        .map(str::to_owned)
                                        .unwrap_or_else(|| e["errorCode"].to_string()),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                return Ok(failed);
            }
            return Err(RegistryError::Hub {
                status,
                message: hub_message(&body),
            });
        }
    }

    /// Runs `ops` in calls of [`BULK_MAX`], a few at once.
    async fn bulk_all(&self, ops: Vec<Value>) -> Result<(), RegistryError> {
        let chunks: Vec<Vec<Value>> = ops.chunks(BULK_MAX).map(<[Value]>::to_vec).collect();
        let mut results = futures::stream::iter(chunks)
            .map(|chunk| async move { self.bulk(&chunk).await })
            .buffer_unordered(CONCURRENT_CALLS);
        let mut failed = Vec::new();
        while let Some(r) = results.next().await {
            failed.extend(r?);
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(RegistryError::Devices {
                count: failed.len(),
                first: failed.into_iter().take(3).collect(),
            })
        }
    }

    /// Creates each `(id, key)` device, or overwrites its keys if it exists (`createOrUpdate`).
    ///
    /// # Errors
    /// As [`Registry::bulk`], or the devices that failed.
    pub async fn create_or_update(
        &self,
        devices: &[(String, String)],
    ) -> Result<(), RegistryError> {
        let ops = devices
            .iter()
            .map(|(id, key)| {
                json!({
                    "id": id,
                    "importMode": "createOrUpdate",
                    "status": "enabled",
                    "authentication": {
                        "type": "sas",
                        "symmetricKey": {"primaryKey": key, "secondaryKey": key},
                    },
                })
            })
            .collect();
        self.bulk_all(ops).await
    }

    /// Deletes the devices `ids`.
    ///
    /// # Errors
    /// As [`Registry::bulk`], or the devices that failed.
    pub async fn delete(&self, ids: &[String]) -> Result<(), RegistryError> {
        let ops = ids
            .iter()
            .map(|id| json!({"id": id, "importMode": "delete"}))
            .collect();
        self.bulk_all(ops).await
    }
}

/// The message of an Azure error body (`{"Message": "{\"errorCode\":..,\"message\":..}"}`).
fn hub_message(body: &Value) -> String {
    let outer = body
        .get("Message")
        .or_else(|| body.get("message"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    serde_json::from_str::<Value>(outer)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| outer.chars().take(200).collect())
}
