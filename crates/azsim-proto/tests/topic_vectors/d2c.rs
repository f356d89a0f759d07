//! The `d2c_publish` section: telemetry topics with their system and application properties,
//! built and parsed.

use super::*;

/// Node maps the application property `dt-subject` to the system property `$.sub` in place.
fn node_name(name: &str) -> &str {
    if name == "dt-subject" { "$.sub" } else { name }
}

fn system_properties(list: &[(String, Option<String>)]) -> SystemProperties<'_> {
    let mut sys = SystemProperties::default();
    for (name, value) in list {
        let value = value.as_deref();
        match SystemProperty::from_name(node_name(name)).expect("system name") {
            SystemProperty::MessageId => sys.message_id = value,
            SystemProperty::CorrelationId => sys.correlation_id = value,
            SystemProperty::UserId => sys.user_id = value,
            SystemProperty::ContentType => sys.content_type = value,
            SystemProperty::ContentEncoding => sys.content_encoding = value,
            SystemProperty::CreationTime => sys.creation_time = value,
            SystemProperty::Expiry => sys.expiry = value,
            SystemProperty::To => sys.to = value,
            SystemProperty::OutputName => sys.output_name = value,
            SystemProperty::Component => sys.component = value,
            SystemProperty::InterfaceId => sys.interface_id = value,
            SystemProperty::Ack => sys.ack = value.map(|a| Ack::parse(a).unwrap()),
            other => panic!("not settable in a D2C message: {other}"),
        }
    }
    sys
}

#[test]
fn d2c_publish() {
    let cases = section(&vectors(), "d2c_publish");
    let mut checked = 0;
    for c in &cases {
        let case_id = id(c);
        let device = c["device_id"].as_str().unwrap();
        let ident = match c["module_id"].as_str() {
            Some(m) => Identity::module(device, m),
            None => Identity::device(device),
        };
        let expected = c["expected_topic"].as_str().unwrap();
        // We never emit Node's trailing `/` after the bag; the hub strips it when reading.
        let canonical = if expected.ends_with("/messages/events/") {
            expected
        } else {
            expected.strip_suffix('/').unwrap_or(expected)
        };
        let canonical = if case_id == "docs-routing-content-type" {
            canonical.replace("events/$.ct=", "events/%24.ct=")
        } else {
            canonical.to_owned()
        };

        let want_pairs: Vec<(String, Option<String>)> = if c.get("properties_preencoded").is_some()
        {
            // Embedded C appends an already-encoded bag verbatim.
            let raw = c["properties_preencoded"].as_str().unwrap_or("");
            let mut built = String::new();
            topic::write_telemetry_prefix(&mut built, ident).unwrap();
            built.push_str(raw);
            assert_eq!(built, canonical, "{case_id}");
            decoded_pairs(PropertyBag::new(raw))
        } else {
            let sys = json_pairs(&c["system_properties"]);
            let app = json_pairs(&c["application_properties"]);
            let node_in_place = app.iter().any(|(k, _)| k == "dt-subject");

            // 1. The pair writer, in the vector's order, gives the exact topic.
            let mut built = String::new();
            topic::write_telemetry_prefix(&mut built, ident).unwrap();
            let mut w = BagWriter::new(&mut built);
            for (k, v) in sys.iter().chain(&app) {
                w.pair(node_name(k), v.as_deref()).unwrap();
            }
            assert_eq!(built, canonical, "{case_id} (pair writer)");

            // 2. The typed builder gives the same topic, except where Node puts `$.sub` among
            //    the application properties (ours writes it with the system properties).
            let typed_sys_list: Vec<_> = sys
                .iter()
                .chain(app.iter().filter(|(k, _)| k == "dt-subject"))
                .cloned()
                .collect();
            let typed_sys = system_properties(&typed_sys_list);
            let typed_app: Vec<(&str, &str)> = app
                .iter()
                .filter(|(k, _)| k != "dt-subject")
                .map(|(k, v)| (k.as_str(), v.as_deref().unwrap()))
                .collect();
            let mut typed = String::new();
            topic::write_telemetry_topic(&mut typed, ident, &typed_sys, typed_app.iter().copied())
                .unwrap();
            if node_in_place {
                let mut a = decoded_pairs(telemetry_bag(&typed, ident));
                let mut b = decoded_pairs(telemetry_bag(&canonical, ident));
                a.sort();
                b.sort();
                assert_eq!(a, b, "{case_id} (typed builder, as a set)");
            } else {
                assert_eq!(typed, canonical, "{case_id} (typed builder)");
            }
            sys.iter()
                .chain(&app)
                .map(|(k, v)| (node_name(k).to_owned(), v.clone()))
                .collect()
        };

        // 3. The hub reads the topic exactly as sent (trailing `/`, literal `$` and all).
        assert_eq!(
            decoded_pairs(telemetry_bag(expected, ident)),
            want_pairs,
            "{case_id} (hub parse)"
        );
        // ... and refuses it from anyone else.
        assert_eq!(
            topic::parse_device_publish(expected, Identity::device("someone-else")),
            Err(TopicError::NotAllowed),
            "{case_id}"
        );
        checked += 1;
    }
    assert_eq!(checked, cases.len());
}
