//! A record of the telemetry log as IoT Hub routes it to the built-in endpoint (device telemetry,
//! or an event the hub raised, `routing.rs`, whose bag holds the properties it gets and which
//! names no device authentication): the body as sent; the
//! property bag's system properties as AMQP message properties (message-id, correlation-id,
//! user-id, content-type, content-encoding), its other pairs as application properties; the
//! hub's annotations (`iothub-connection-device-id`, `-module-id`, `-auth-method`,
//! `-auth-generation-id`, `iothub-enqueuedtime`, `iothub-message-source`) and Event Hubs'
//! (`x-opt-sequence-number`, `x-opt-offset`, `x-opt-enqueued-time`).

use azsim_proto::property_bag::{PropertyBag, SystemProperty};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Data, Message, MessageAnnotations, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp, Value};

use crate::routing::Source;
use crate::store::eventhub::Row;

/// The message a consumer receives for `row`.
pub(crate) fn event(row: &Row) -> Message<Data> {
    let mut props = Properties::default();
    let mut app = ApplicationProperties::default();
    let mut ann = MessageAnnotations::default();
    let mut annotate = |k: &str, v: Value| {
        ann.0.insert(OwnedKey::Symbol(Symbol::from(k)), v);
    };
    for prop in PropertyBag::new(&row.properties).iter() {
        let mut name = String::new();
        if prop.name.decode_to(&mut name).is_err() {
            continue;
        }
        let mut value = String::new();
        if let Some(raw) = prop.value
            && raw.decode_to(&mut value).is_err()
        {
            continue;
        }
        match SystemProperty::from_name(&name) {
            Some(SystemProperty::MessageId) => props.message_id = Some(MessageId::String(value)),
            Some(SystemProperty::CorrelationId) => {
                props.correlation_id = Some(MessageId::String(value));
            }
            Some(SystemProperty::UserId) => {
                props.user_id = Some(Binary::from(value.into_bytes()));
            }
            Some(SystemProperty::ContentType) => props.content_type = Some(Symbol::from(value)),
            Some(SystemProperty::ContentEncoding) => {
                props.content_encoding = Some(Symbol::from(value));
            }
            Some(SystemProperty::CreationTime) => {
                app.0.insert(
                    "iothub-creation-time-utc".into(),
                    SimpleValue::String(value),
                );
            }
            Some(SystemProperty::OutputName) => {
                annotate("iothub-outputname", Value::String(value));
            }
            Some(SystemProperty::Component) => annotate("dt-subject", Value::String(value)),
            Some(SystemProperty::InterfaceId) => {
                annotate("iothub-interface-id", Value::String(value));
            }
            // Not routed as properties (they steer the hub, or name the connection, which
            // the annotations below already do).
            Some(_) => {}
            // Added by the hub for a Plug and Play device: an annotation on Azure.
            None if name == "dt-dataschema" => annotate("dt-dataschema", Value::String(value)),
            None => {
                app.0.insert(name, SimpleValue::String(value));
            }
        }
    }
    let enqueued = Timestamp::from_milliseconds(row.enqueued_ns / 1_000_000);
    annotate(
        "iothub-connection-device-id",
        Value::String(row.device_id.clone()),
    );
    if let Some(m) = &row.module_id {
        annotate("iothub-connection-module-id", Value::String(m.clone()));
    }
    // Only a device's own messages name how it authenticated; the hub raises the others.
    if row.source == Source::Telemetry {
        annotate(
            "iothub-connection-auth-method",
            Value::String(row.auth.annotation(row.module_id.is_some()).to_string()),
        );
        annotate(
            "iothub-connection-auth-generation-id",
            Value::String(row.generation_id.clone()),
        );
    }
    annotate("iothub-enqueuedtime", Value::Timestamp(enqueued.clone()));
    annotate(
        "iothub-message-source",
        Value::String(row.source.annotation().into()),
    );
    annotate("x-opt-sequence-number", Value::Long(row.sequence_number));
    annotate("x-opt-offset", Value::String(row.offset.to_string()));
    annotate("x-opt-enqueued-time", Value::Timestamp(enqueued));
    let mut message = Message::builder()
        .properties(props)
        .message_annotations(ann)
        .application_properties(app)
        .data(Binary::from(row.body.clone()))
        .build();
    // No system property, no properties section, as IoT Hub sends it: consumers (the Python
    // SDK's e2e helper) read a present section's content-type as set.
    if message.properties == Some(Properties::default()) {
        message.properties = None;
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bag_pairs_become_properties_and_the_hub_adds_its_annotations() {
        let row = Row {
            offset: 17,
            sequence_number: 3,
            device_id: "d1".into(),
            module_id: Some("m1".into()),
            generation_id: "g1".into(),
            auth: crate::telemetry::AuthMethod::IdentityKey,
            enqueued_ns: 1_700_000_000_123_456_789,
            properties: "%24.mid=m%201&%24.cid=c1&%24.uid=u1&%24.ct=application%2Fjson&%24.ce=utf-8&temp=21.5&flag".into(),
            body: b"{\"t\":1}".to_vec(),
            source: Source::Telemetry,
        };
        let m = event(&row);
        let p = m.properties.as_ref().unwrap();
        assert_eq!(p.message_id, Some(MessageId::String("m 1".into())));
        assert_eq!(p.correlation_id, Some(MessageId::String("c1".into())));
        assert_eq!(p.user_id, Some(Binary::from(b"u1".to_vec())));
        assert_eq!(p.content_type, Some(Symbol::from("application/json")));
        assert_eq!(p.content_encoding, Some(Symbol::from("utf-8")));
        let app = &m.application_properties.as_ref().unwrap().0;
        assert_eq!(app.get("temp"), Some(&SimpleValue::String("21.5".into())));
        assert_eq!(app.get("flag"), Some(&SimpleValue::String(String::new())));
        assert_eq!(app.len(), 2);
        let ann = &m.message_annotations.as_ref().unwrap().0;
        let get = |k: &str| ann.get(&OwnedKey::Symbol(Symbol::from(k))).cloned();
        assert_eq!(get("x-opt-sequence-number"), Some(Value::Long(3)));
        assert_eq!(get("x-opt-offset"), Some(Value::String("17".into())));
        let at = Value::Timestamp(Timestamp::from_milliseconds(1_700_000_000_123));
        assert_eq!(get("x-opt-enqueued-time"), Some(at.clone()));
        assert_eq!(get("iothub-enqueuedtime"), Some(at));
        assert_eq!(
            get("iothub-connection-device-id"),
            Some(Value::String("d1".into()))
        );
        assert_eq!(
            get("iothub-connection-module-id"),
            Some(Value::String("m1".into()))
        );
        assert_eq!(
            get("iothub-message-source"),
            Some(Value::String("Telemetry".into()))
        );
        assert_eq!(m.body.0.to_vec(), b"{\"t\":1}");
    }

    #[test]
    fn a_message_without_system_properties_has_no_properties_section() {
        let row = Row {
            offset: 0,
            sequence_number: 0,
            device_id: "d1".into(),
            module_id: None,
            generation_id: "g1".into(),
            auth: crate::telemetry::AuthMethod::IdentityKey,
            enqueued_ns: 1_700_000_000_000_000_000,
            properties: "temp=21.5".into(),
            body: b"plain".to_vec(),
            source: Source::Telemetry,
        };
        let m = event(&row);
        assert_eq!(m.properties, None);
        assert!(m.application_properties.is_some());
    }
}
