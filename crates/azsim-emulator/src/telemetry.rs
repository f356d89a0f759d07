//! One device-to-cloud telemetry message as the hub keeps it, and its JSON form (the shape of
//! the event stream and of `/emulator/events/recent`).
//!
//! The ingest path stores the message as received (identity, enqueued time, the raw property
//! bag, the body) and the JSON is built only when someone reads it: when the live stream has a
//! watcher at ingest time, or when the event log is read. Building it for every message that
//! nobody looks at was most of the hub's per-message cost.

use std::sync::Arc;

use azsim_proto::property_bag::{PropertyBag, SystemProperty};
use base64::Engine as _;

/// How a connection signed in: what IoT Hub states in every message's
/// `iothub-connection-auth-method` annotation (a JSON document as a string). Kept per
/// connection (in [`Origin`]) and per message in the event log as [`AuthMethod::code`].
///
/// Azure's values, as its messages and connection logs show them: a SAS token of the identity's
/// own key `{"scope":"device"|"module","type":"sas","issuer":"iothub",...}`; a SAS token signed
/// with a shared access policy's key (DeviceConnect) `{"scope":"hub","type":"sas",
/// "issuer":"iothub",...}` (Microsoft Learn's Event Hubs sample message); an X.509 client
/// certificate `{"scope":"device","type":"x509Certificate","issuer":"external",...}`, the same for
/// a device registered by thumbprint (what DPS registers an X.509 enrollment as: the AZ-220 labs'
/// connection logs) and one registered CA-signed (Azure Sphere's devices). A module's X.509 value
/// (scope `module`) is inferred from the device's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMethod {
    /// A SAS token signed with the identity's own key (also what a log row from before this
    /// was kept reads as).
    #[default]
    IdentityKey,
    /// A SAS token signed with the key of a shared access policy granting DeviceConnect.
    Policy,
    /// A TLS client certificate (self-signed thumbprint or CA-signed).
    X509,
}

impl AuthMethod {
    /// The annotation's text for a device's (`module` false) or a module's message.
    pub fn annotation(self, module: bool) -> &'static str {
        match (self, module) {
            (AuthMethod::IdentityKey, false) => {
                r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#
            }
            (AuthMethod::IdentityKey, true) => {
                r#"{"scope":"module","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#
            }
            (AuthMethod::Policy, _) => {
                r#"{"scope":"hub","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#
            }
            (AuthMethod::X509, false) => {
                r#"{"scope":"device","type":"x509Certificate","issuer":"external","acceptingIpFilterRule":null}"#
            }
            (AuthMethod::X509, true) => {
                r#"{"scope":"module","type":"x509Certificate","issuer":"external","acceptingIpFilterRule":null}"#
            }
        }
    }

    /// The event log's `auth_method` column.
    pub fn code(self) -> i64 {
        match self {
            AuthMethod::IdentityKey => 0,
            AuthMethod::Policy => 1,
            AuthMethod::X509 => 2,
        }
    }

    /// From the column; NULL (a row from before the column) or an unknown code is
    /// [`AuthMethod::IdentityKey`], what such rows were always read as.
    pub fn from_code(code: Option<i64>) -> AuthMethod {
        match code {
            Some(1) => AuthMethod::Policy,
            Some(2) => AuthMethod::X509,
            _ => AuthMethod::IdentityKey,
        }
    }
}

/// The identity a connection sends as; shared by every message of that connection.
#[derive(Debug)]
pub struct Origin {
    pub device_id: String,
    pub module_id: Option<String>,
    pub generation_id: String,
    /// How the connection signed in.
    pub auth: AuthMethod,
}

/// One telemetry message.
#[derive(Debug)]
pub struct D2cRecord {
    pub origin: Arc<Origin>,
    /// When the hub accepted it, in nanoseconds since the Unix epoch.
    pub enqueued_ns: i64,
    /// The property bag as on the wire (percent-encoded, already validated), plus the pairs the
    /// hub adds (`mqtt-retain`, `iothub-MessageType`).
    pub properties: String,
    pub body: Vec<u8>,
    /// Telemetry, or an event the hub routes to the built-in endpoint (`routing.rs`).
    pub source: crate::routing::Source,
}

/// Appends `name=value` (already percent-encoded by the caller's choice of plain names) to a raw
/// bag.
pub fn push_pair(bag: &mut String, name: &str, value: &str) {
    if !bag.is_empty() && !bag.ends_with('&') {
        bag.push('&');
    }
    let mut w = azsim_proto::property_bag::BagWriter::new(bag);
    let _ = w.pair(name, Some(value));
}

/// The message's JSON: `type`, `deviceId`, `moduleId`, `enqueuedTime`, `body` (UTF-8 text) or
/// `bodyBase64`, `systemProperties`, `properties` (application properties) and the hub's
/// `annotations`.
///
/// Written straight into one buffer, keys in sorted order (as a `serde_json::Map` orders them,
/// so the text is what building `Value`s gave), strings escaped by `serde_json`. It is built
/// for every message an Event Hubs consumer or the live stream reads; building a `Value` tree
/// first cost a map node and a `String` per key and value.
pub fn to_json(
    device_id: &str,
    module_id: Option<&str>,
    generation_id: &str,
    auth: AuthMethod,
    enqueued_ns: i64,
    properties: &str,
    body: &[u8],
) -> String {
    let enqueued = crate::clock::rfc3339_ns(enqueued_ns);
    // The system properties Azure always names (null when absent), then what the bag carries.
    let mut sys: Vec<(&str, Option<String>)> = [
        "message-id",
        "correlation-id",
        "content-type",
        "content-encoding",
        "user-id",
        "creation-time",
        "expiry-time",
    ]
    .into_iter()
    .map(|k| (k, None))
    .collect();
    let mut app: Vec<(String, Option<String>)> = Vec::new();
    for prop in PropertyBag::new(properties).iter() {
        let mut name = String::new();
        if prop.name.decode_to(&mut name).is_err() {
            continue;
        }
        let v = match prop.value {
            Some(raw) => {
                let mut s = String::new();
                if raw.decode_to(&mut s).is_err() {
                    continue;
                }
                Some(s)
            }
            None => None,
        };
        match SystemProperty::from_name(&name) {
            Some(sp) => {
                sys.push((system_key(sp), v));
            }
            // Added by the hub for a Plug and Play device; a system property on Azure.
            None if name == "dt-dataschema" => sys.push(("dt-dataschema", v)),
            None => app.push((name, v)),
        }
    }
    let mut out = Vec::with_capacity(512 + properties.len() + body.len() * 4 / 3);
    out.extend_from_slice(b"{\"annotations\":{");
    let mut ann = vec![
        ("iothub-connection-auth-generation-id", generation_id),
        (
            "iothub-connection-auth-method",
            auth.annotation(module_id.is_some()),
        ),
        ("iothub-connection-device-id", device_id),
    ];
    if let Some(m) = module_id {
        ann.push(("iothub-connection-module-id", m));
    }
    ann.push(("iothub-enqueuedtime", &enqueued));
    ann.push(("iothub-message-source", "Telemetry"));
    for (i, (k, v)) in ann.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        put_str(&mut out, k);
        out.push(b':');
        put_str(&mut out, v);
    }
    out.extend_from_slice(b"},\"body\":");
    match std::str::from_utf8(body) {
        Ok(text) => {
            put_str(&mut out, text);
            out.extend_from_slice(b",\"bodyBase64\":null");
        }
        Err(_) => {
            out.extend_from_slice(b"null,\"bodyBase64\":");
            put_str(
                &mut out,
                &base64::engine::general_purpose::STANDARD.encode(body),
            );
        }
    }
    out.extend_from_slice(b",\"deviceId\":");
    put_str(&mut out, device_id);
    out.extend_from_slice(b",\"enqueuedTime\":");
    put_str(&mut out, &enqueued);
    out.extend_from_slice(b",\"moduleId\":");
    put_opt(&mut out, module_id);
    out.extend_from_slice(b",\"properties\":");
    put_map(&mut out, &mut app);
    out.extend_from_slice(b",\"systemProperties\":");
    put_map(&mut out, &mut sys);
    out.extend_from_slice(b",\"type\":\"telemetry\"}");
    // Only `str`s and ASCII went in.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A JSON string, escaped as `serde_json` escapes it.
/// The key a system property has under `systemProperties` in the message's JSON (the names
/// Azure's Event Hubs-compatible endpoint uses; the MQTT names for the rest).
fn system_key(sp: SystemProperty) -> &'static str {
    match sp {
        SystemProperty::MessageId => "message-id",
        SystemProperty::CorrelationId => "correlation-id",
        SystemProperty::ContentType => "content-type",
        SystemProperty::ContentEncoding => "content-encoding",
        SystemProperty::UserId => "user-id",
        SystemProperty::CreationTime => "creation-time",
        SystemProperty::Expiry => "expiry-time",
        SystemProperty::OutputName => "output-name",
        SystemProperty::Component => "dt-subject",
        SystemProperty::InterfaceId => "interface-id",
        _ => sp.name(),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

fn put_opt(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(s) => put_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON object of `entries` in key order; of a repeated key the last one wins (as inserting
/// into a map does).
fn put_map<K: AsRef<str>>(out: &mut Vec<u8>, entries: &mut [(K, Option<String>)]) {
    // Stable: equal keys keep their order, so the last of a run is the last given.
    entries.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
    out.push(b'{');
    let mut first = true;
    for (i, (k, v)) in entries.iter().enumerate() {
        if entries
            .get(i + 1)
            .is_some_and(|next| next.0.as_ref() == k.as_ref())
        {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        put_str(out, k.as_ref());
        out.push(b':');
        put_opt(out, v.as_deref());
    }
    out.push(b'}');
}

impl D2cRecord {
    /// The message's JSON (see [`to_json`]).
    pub fn to_json(&self) -> String {
        to_json(
            &self.origin.device_id,
            self.origin.module_id.as_deref(),
            &self.origin.generation_id,
            self.origin.auth,
            self.enqueued_ns,
            &self.properties,
            &self.body,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value, json};

    fn record(module: Option<&str>, props: &str, body: &[u8]) -> Value {
        let r = D2cRecord {
            origin: Arc::new(Origin {
                device_id: "d1".into(),
                module_id: module.map(str::to_string),
                generation_id: "g1".into(),
                auth: AuthMethod::IdentityKey,
            }),
            enqueued_ns: 1_700_000_000_123_456_789,
            properties: props.into(),
            body: body.to_vec(),
            source: crate::routing::Source::Telemetry,
        };
        serde_json::from_str(&r.to_json()).unwrap()
    }

    #[test]
    fn the_written_json_is_the_text_building_values_gave() {
        let bags = [
            "",
            "%24.mid=m%201&%24.ct=application%2Fjson&temp=21.5&flag&a=1&a=2",
            "%24.cid=c&%24.ce=utf-8&%24.uid=u&%24.ctime=2024&%24.exp=2025&%24.on=out&%24.sub=comp",
            "%24.ifid=dtmi%3Ax%3B1&dt-dataschema=dtmi%3Ay%3B1&%24.mid=first&%24.mid=second",
            "z=1&b=%22quoted%22&a%5Cb=%0A%09&%C3%A9=%E2%82%AC&empty=&mqtt-retain=true",
            "bad=%zz&%zz=1&ok=1",
        ];
        let bodies: [&[u8]; 4] = [
            b"",
            b"{\"t\":1}",
            b"line\n\"q\"\\ \x01 \xc3\xa9",
            &[0xff, 0x00, 0x80],
        ];
        for bag in bags {
            for body in bodies {
                for module in [None, Some("m\"1")] {
                    for (ns, auth) in [
                        (0, AuthMethod::IdentityKey),
                        (1_700_000_000_123_456_789, AuthMethod::X509),
                        (1, AuthMethod::Policy),
                    ] {
                        assert_eq!(
                            to_json("d\"1\\", module, "g1", auth, ns, bag, body),
                            reference_json("d\"1\\", module, "g1", auth, ns, bag, body),
                            "bag {bag:?} body {body:?} module {module:?}"
                        );
                    }
                }
            }
        }
    }

    /// The JSON as built from `Value`s before [`to_json`] wrote it directly: the oracle.
    /// Was: `type`, `deviceId`, `moduleId`, `enqueuedTime`, `body` (UTF-8 text) or
    /// `bodyBase64`, `systemProperties`, `properties` (application properties) and the hub's
    /// `annotations`.
    fn reference_json(
        device_id: &str,
        module_id: Option<&str>,
        generation_id: &str,
        auth: AuthMethod,
        enqueued_ns: i64,
        properties: &str,
        body: &[u8],
    ) -> String {
        let enqueued = crate::clock::rfc3339_ns(enqueued_ns);
        let mut sys = Map::new();
        for k in [
            "message-id",
            "correlation-id",
            "content-type",
            "content-encoding",
            "user-id",
            "creation-time",
            "expiry-time",
        ] {
            sys.insert(k.into(), Value::Null);
        }
        let mut app = Map::new();
        for prop in PropertyBag::new(properties).iter() {
            let mut name = String::new();
            if prop.name.decode_to(&mut name).is_err() {
                continue;
            }
            let v = match prop.value {
                Some(raw) => {
                    let mut s = String::new();
                    if raw.decode_to(&mut s).is_err() {
                        continue;
                    }
                    Value::String(s)
                }
                None => Value::Null,
            };
            match SystemProperty::from_name(&name) {
                Some(sp) => {
                    sys.insert(system_key(sp).into(), v);
                }
                // Added by the hub for a Plug and Play device; a system property on Azure.
                None if name == "dt-dataschema" => {
                    sys.insert(name, v);
                }
                None => {
                    app.insert(name, v);
                }
            }
        }
        let (body, body_b64) = match std::str::from_utf8(body) {
            Ok(s) => (Value::String(s.to_string()), Value::Null),
            Err(_) => (
                Value::Null,
                Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
            ),
        };
        let mut ann = Map::new();
        ann.insert("iothub-connection-device-id".into(), json!(device_id));
        if let Some(m) = module_id {
            ann.insert("iothub-connection-module-id".into(), json!(m));
        }
        let method = auth.annotation(module_id.is_some());
        ann.insert("iothub-connection-auth-method".into(), json!(method));
        ann.insert(
            "iothub-connection-auth-generation-id".into(),
            json!(generation_id),
        );
        ann.insert("iothub-enqueuedtime".into(), json!(enqueued));
        ann.insert("iothub-message-source".into(), json!("Telemetry"));
        json!({
            "type": "telemetry", "deviceId": device_id, "moduleId": module_id,
            "enqueuedTime": enqueued, "body": body, "bodyBase64": body_b64,
            "systemProperties": sys, "properties": app, "annotations": ann,
        })
        .to_string()
    }

    #[test]
    fn system_and_application_properties_are_decoded_and_split() {
        let v = record(
            None,
            "%24.mid=m%201&%24.ct=application%2Fjson&temp=21.5&flag&a=1&a=2",
            b"{\"t\":1}",
        );
        assert_eq!(v["type"], "telemetry");
        assert_eq!(v["deviceId"], "d1");
        assert_eq!(v["moduleId"], Value::Null);
        assert_eq!(v["systemProperties"]["message-id"], "m 1");
        assert_eq!(v["systemProperties"]["content-type"], "application/json");
        assert_eq!(v["systemProperties"]["correlation-id"], Value::Null);
        assert_eq!(v["properties"]["temp"], "21.5");
        assert_eq!(v["properties"]["flag"], Value::Null);
        assert_eq!(
            v["properties"]["a"], "2",
            "the last of a repeated name wins"
        );
        assert_eq!(v["body"], "{\"t\":1}");
        assert_eq!(v["bodyBase64"], Value::Null);
        assert_eq!(v["enqueuedTime"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(v["annotations"]["iothub-enqueuedtime"], v["enqueuedTime"]);
        assert_eq!(v["annotations"]["iothub-connection-device-id"], "d1");
        assert_eq!(
            v["annotations"]["iothub-connection-auth-generation-id"],
            "g1"
        );
        assert_eq!(v["annotations"]["iothub-message-source"], "Telemetry");
        assert!(
            v["annotations"]["iothub-connection-auth-method"]
                .as_str()
                .unwrap()
                .contains("\"scope\":\"device\"")
        );
        assert!(
            v["annotations"]
                .get("iothub-connection-module-id")
                .is_none()
        );
    }

    #[test]
    fn a_module_message_names_the_module_and_binary_bodies_are_base64() {
        let v = record(Some("mod1"), "", &[0xff, 0x00]);
        assert_eq!(v["moduleId"], "mod1");
        assert_eq!(v["annotations"]["iothub-connection-module-id"], "mod1");
        assert!(
            v["annotations"]["iothub-connection-auth-method"]
                .as_str()
                .unwrap()
                .contains("\"scope\":\"module\"")
        );
        assert_eq!(v["body"], Value::Null);
        assert_eq!(v["bodyBase64"], "/wA=");
        assert_eq!(v["properties"], json!({}));
    }

    #[tokio::test]
    async fn an_event_log_from_before_lazy_json_keeps_its_rows_and_takes_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        {
            // The first schema: every row is finished JSON text.
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
                 device_id TEXT NOT NULL, json TEXT NOT NULL); \
                 INSERT INTO events (device_id, json) VALUES ('old', '{\"deviceId\":\"old\"}');",
            )
            .unwrap();
        }
        let store = crate::store::Store::open(Some(&path), 3).unwrap();
        let origin = Arc::new(Origin {
            device_id: "d1".into(),
            module_id: None,
            generation_id: "g1".into(),
            auth: AuthMethod::IdentityKey,
        });
        store
            .log_event(D2cRecord {
                origin: origin.clone(),
                enqueued_ns: 1_700_000_000_000_000_000,
                properties: "%24.mid=m1&k=v".into(),
                body: b"hello".to_vec(),
                source: crate::routing::Source::Telemetry,
            })
            .await;
        store.flush().await;
        let rows = store
            .call(|c| crate::store::q::recent_events(c, None, 10))
            .await
            .unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0], "{\"deviceId\":\"old\"}");
        let v: Value = serde_json::from_str(&rows[1]).unwrap();
        assert_eq!(v["deviceId"], "d1");
        assert_eq!(v["body"], "hello");
        assert_eq!(v["systemProperties"]["message-id"], "m1");
        assert_eq!(v["properties"]["k"], "v");
        assert_eq!(v["enqueuedTime"], "2023-11-14T22:13:20Z");

        // The cap (3 here) holds once the writer trims, which it does every 256 messages.
        for i in 0..300 {
            store
                .log_event(D2cRecord {
                    origin: origin.clone(),
                    enqueued_ns: 1_700_000_000_000_000_000 + i,
                    properties: String::new(),
                    body: i.to_string().into_bytes(),
                    source: crate::routing::Source::Telemetry,
                })
                .await;
        }
        store.flush().await;
        let n: i64 = store
            .call(|c| {
                c.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
                    .map_err(|e| crate::HubError::Store(e.to_string()))
            })
            .await
            .unwrap();
        assert!(n <= 3 + 256, "{n} rows kept with a cap of 3");
        let last = store
            .call(|c| crate::store::q::recent_events(c, Some("d1"), 1))
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&last[0]).unwrap();
        assert_eq!(v["body"], "299");
        store.close().await;
    }

    #[test]
    fn the_auth_method_annotation_is_azures_text_and_its_code_reads_back() {
        for (auth, module, scope, ty, issuer) in [
            (AuthMethod::IdentityKey, false, "device", "sas", "iothub"),
            (AuthMethod::IdentityKey, true, "module", "sas", "iothub"),
            (AuthMethod::Policy, false, "hub", "sas", "iothub"),
            (AuthMethod::Policy, true, "hub", "sas", "iothub"),
            (
                AuthMethod::X509,
                false,
                "device",
                "x509Certificate",
                "external",
            ),
            (
                AuthMethod::X509,
                true,
                "module",
                "x509Certificate",
                "external",
            ),
        ] {
            let text = auth.annotation(module);
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                v,
                json!({"scope": scope, "type": ty, "issuer": issuer, "acceptingIpFilterRule": null}),
            );
            assert!(!text.contains(' '), "compact, as Azure sends it: {text}");
            assert_eq!(AuthMethod::from_code(Some(auth.code())), auth);
        }
        assert_eq!(AuthMethod::from_code(None), AuthMethod::IdentityKey);
        let v = record(None, "", b"x");
        assert_eq!(
            v["annotations"]["iothub-connection-auth-method"],
            AuthMethod::IdentityKey.annotation(false)
        );
    }

    #[test]
    fn pairs_added_by_the_hub_are_appended_encoded() {
        let mut bag = String::new();
        push_pair(&mut bag, "mqtt-retain", "true");
        assert_eq!(bag, "mqtt-retain=true");
        let mut bag = "a=1&".to_string();
        push_pair(&mut bag, "iothub-MessageType", "Will");
        assert_eq!(bag, "a=1&iothub-MessageType=Will");
        let mut bag = "a=1".to_string();
        push_pair(&mut bag, "k", "a b");
        assert_eq!(bag, "a=1&k=a%20b");
    }
}
