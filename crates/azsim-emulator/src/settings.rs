//! What a running hub enforces, as `hub.json` and the ready JSON record it (`HubInfo::settings`):
//! the TLS profile, durability, strict or lenient, tier and units, the Event Hubs-compatible
//! endpoint's partitions, routes and consumer groups, file upload's settings and every
//! [`HubLimits`] value (the
//! ports, host name and dashboard are `HubInfo`'s own fields). Recorded so that a script, a test or a person looking at a hub started by someone
//! else can tell what it runs with instead of guessing from the defaults.
//!
//! Durations are whole milliseconds (`*_ms`), sizes bytes, counts plain numbers. A field this
//! version does not know is ignored and a missing one takes its default, so an older or newer
//! `hub.json` still loads.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{FileUploadSettings, HubConfig, HubLimits};

/// The settings in force, recorded in `hub.json` (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HubSettings {
    /// `azure` or `modern` (`--tls`).
    pub tls: String,
    /// `power-loss` or `process-crash` (`--durability`).
    pub durability: String,
    /// Azure's strict rules on (false under `--lenient`, which is not Azure).
    pub strict: bool,
    /// Registry, twins and queues kept in memory only.
    pub in_memory: bool,
    /// `F1`..`S3` when a tier's daily quota and throttles are enforced, none otherwise.
    pub tier: Option<String>,
    /// Units of `tier`.
    pub units: u32,
    /// The Event Hubs-compatible endpoint's partitions.
    pub partitions: u32,
    /// The sources routed to the Event Hubs-compatible endpoint.
    pub routes: Vec<String>,
    /// Its consumer groups besides `$Default`.
    pub consumer_groups: Vec<String>,
    pub limits: LimitsRecord,
    /// File upload (`--file-upload-*`).
    pub file_upload: FileUploadRecord,
}

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings::of(&HubConfig::new(""))
    }
}

impl HubSettings {
    /// What `config` runs with.
    pub fn of(config: &HubConfig) -> HubSettings {
        let r = config.routes;
        let routes = [
            ("telemetry", r.telemetry),
            ("twin", r.twin),
            ("lifecycle", r.lifecycle),
            ("connection", r.connection),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| name.to_string())
        .collect();
        HubSettings {
            tls: config.tls.name().into(),
            durability: match config.durability {
                crate::store::Durability::PowerLoss => "power-loss",
                crate::store::Durability::ProcessCrash => "process-crash",
            }
            .into(),
            strict: !config.lenient,
            in_memory: config.in_memory,
            tier: config.tier.map(|t| t.name().to_string()),
            units: config.units,
            partitions: config.partitions,
            routes,
            consumer_groups: config.consumer_groups.clone(),
            limits: LimitsRecord::of(&config.limits),
            file_upload: FileUploadRecord::of(&config.file_upload),
        }
    }
}

/// [`FileUploadSettings`] as numbers: durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileUploadRecord {
    /// The blob container uploads go to.
    pub container: String,
    /// How long a SAS URI handed to a device is valid.
    pub sas_ttl_ms: u64,
    /// Whether a notified upload queues a file upload notification.
    pub notifications: bool,
    /// How long a notification waits to be received.
    pub notification_ttl_ms: u64,
    /// How long a received notification stays locked.
    pub notification_lock_ms: u64,
    /// How often a notification is handed out before it is dropped.
    pub notification_max_delivery_count: u32,
    /// Uploads a device may have begun and not notified.
    pub max_active_per_device: u32,
    /// The largest blob the hub's blob endpoint stores.
    pub max_blob_bytes: u64,
}

impl Default for FileUploadRecord {
    fn default() -> Self {
        FileUploadRecord::of(&FileUploadSettings::default())
    }
}

impl FileUploadRecord {
    /// The record of `f`. Destructured, so a field added to [`FileUploadSettings`] fails to
    /// compile here until it is recorded too.
    pub fn of(f: &FileUploadSettings) -> FileUploadRecord {
        let FileUploadSettings {
            container,
            sas_ttl,
            notifications,
            notification_ttl,
            notification_lock,
            notification_max_delivery_count,
            max_active_per_device,
            max_blob_bytes,
        } = f;
        FileUploadRecord {
            container: container.clone(),
            sas_ttl_ms: ms(*sas_ttl),
            notifications: *notifications,
            notification_ttl_ms: ms(*notification_ttl),
            notification_lock_ms: ms(*notification_lock),
            notification_max_delivery_count: *notification_max_delivery_count,
            max_active_per_device: *max_active_per_device,
            max_blob_bytes: *max_blob_bytes,
        }
    }
}

/// [`HubLimits`] as numbers: durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsRecord {
    pub c2d_queue_cap: u32,
    pub c2d_default_ttl_ms: u64,
    pub c2d_max_delivery_count: u32,
    pub c2d_max_bytes: usize,
    pub d2c_max_bytes: usize,
    pub max_subscriptions: usize,
    pub event_log_cap: usize,
    pub max_keep_alive_secs: u16,
    pub feedback_ttl_ms: u64,
    pub feedback_lock_timeout_ms: u64,
    pub feedback_max_delivery_count: u32,
    pub connect_deadline_ms: u64,
    pub pre_auth_max_bytes: usize,
    pub max_pre_auth_connections: usize,
    pub http_header_timeout_ms: u64,
    pub http_idle_timeout_ms: u64,
    pub http_body_timeout_ms: u64,
}

impl Default for LimitsRecord {
    fn default() -> Self {
        LimitsRecord::of(&HubLimits::default())
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl LimitsRecord {
    /// The record of `l`. Destructured, so a field added to [`HubLimits`] fails to compile
    /// here until it is recorded too.
    pub fn of(l: &HubLimits) -> LimitsRecord {
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
        LimitsRecord {
            c2d_queue_cap,
            c2d_default_ttl_ms: ms(c2d_default_ttl),
            c2d_max_delivery_count,
            c2d_max_bytes,
            d2c_max_bytes,
            max_subscriptions,
            event_log_cap,
            max_keep_alive_secs: max_keep_alive,
            feedback_ttl_ms: ms(feedback_ttl),
            feedback_lock_timeout_ms: ms(feedback_lock_timeout),
            feedback_max_delivery_count,
            connect_deadline_ms: ms(connect_deadline),
            pre_auth_max_bytes,
            max_pre_auth_connections,
            http_header_timeout_ms: ms(http_header_timeout),
            http_idle_timeout_ms: ms(http_idle_timeout),
            http_body_timeout_ms: ms(http_body_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hub_json_without_settings_or_with_unknown_ones_loads() {
        let old = r#"{"hostname":"localhost","mqtt_port":8883,"https_port":8443,
            "ca_file":"ca.pem","service_connection_string":"x","pid":1}"#;
        let info: crate::HubInfo = serde_json::from_str(old).expect("old hub.json");
        assert_eq!(info.settings, None);
        let partial = r#"{"tls":"modern","limits":{"connect_deadline_ms":3000,"later":1},"x":2}"#;
        let s: HubSettings = serde_json::from_str(partial).expect("partial settings");
        assert_eq!(s.tls, "modern");
        assert_eq!(s.limits.connect_deadline_ms, 3000);
        assert_eq!(s.limits.http_body_timeout_ms, 30_000);
        assert!(s.strict);
        // A hub.json written before file upload was recorded: Azure's defaults.
        assert_eq!(s.file_upload.container, "fileuploads");
        assert_eq!(s.file_upload.notification_lock_ms, 60_000);
        let partial = r#"{"file_upload":{"notification_ttl_ms":7200000,"later":1}}"#;
        let s: HubSettings = serde_json::from_str(partial).expect("partial file upload");
        assert_eq!(s.file_upload.notification_ttl_ms, 7_200_000);
        assert_eq!(s.file_upload.sas_ttl_ms, 3_600_000);
        assert!(s.file_upload.notifications);
    }

    #[test]
    fn the_record_follows_the_config() {
        let mut c = HubConfig::new("x");
        c.lenient = true;
        c.tier = Some(crate::fault::Tier::S2);
        c.units = 3;
        c.routes = crate::routing::Routes::parse("telemetry,twin").expect("routes");
        c.limits.http_idle_timeout = Duration::from_millis(1500);
        c.file_upload.container = "my-files".into();
        c.file_upload.notifications = false;
        c.file_upload.notification_ttl = Duration::from_secs(7200);
        c.file_upload.notification_lock = Duration::from_secs(30);
        c.file_upload.notification_max_delivery_count = 7;
        let s = HubSettings::of(&c);
        assert_eq!(s.file_upload.container, "my-files");
        assert!(!s.file_upload.notifications);
        assert_eq!(s.file_upload.notification_ttl_ms, 7_200_000);
        assert_eq!(s.file_upload.notification_lock_ms, 30_000);
        assert_eq!(s.file_upload.notification_max_delivery_count, 7);
        assert!(!s.strict);
        assert_eq!(s.tier.as_deref(), Some("S2"));
        assert_eq!(s.units, 3);
        assert_eq!(s.routes, ["telemetry", "twin"]);
        assert_eq!(s.limits.http_idle_timeout_ms, 1500);
        let back: HubSettings =
            serde_json::from_str(&serde_json::to_string(&s).expect("ser")).expect("de");
        assert_eq!(back, s);
    }
}
