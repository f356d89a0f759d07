//! The `c2d_receive` section: cloud-to-device topics parsed into system and application
//! properties, against each SDK's field names.

use super::*;

/// Legacy C / Node / C# field names -> our system property.
fn sdk_field(name: &str) -> Option<SystemProperty> {
    Some(match name {
        "messageId" | "message-id" | "mid" => SystemProperty::MessageId,
        "correlationId" | "correlation-id" | "cid" => SystemProperty::CorrelationId,
        "messageUserId" | "uid" => SystemProperty::UserId,
        "contentType" | "ct" => SystemProperty::ContentType,
        "contentEncoding" | "ce" => SystemProperty::ContentEncoding,
        "connectionDeviceId" => SystemProperty::ConnectionDeviceId,
        "connectionModuleId" => SystemProperty::ConnectionModuleId,
        "messageCreationTime" => SystemProperty::CreationTime,
        "exp" => SystemProperty::Expiry,
        "iothub-ack" => SystemProperty::Ack,
        _ => return None,
    })
}

fn system_value(bag: PropertyBag<'_>, p: SystemProperty, decode: bool) -> Option<Option<String>> {
    bag.system(p).map(|v| {
        v.map(|v| {
            if decode {
                dec(v)
            } else {
                v.as_raw().to_owned()
            }
        })
    })
}

fn app_pairs(bag: PropertyBag<'_>, decode: bool) -> Vec<(String, Option<String>)> {
    bag.app_properties()
        .map(|p| {
            if decode {
                (dec(p.name), p.value.map(dec))
            } else {
                (
                    p.name.as_raw().to_owned(),
                    p.value.map(|v| v.as_raw().to_owned()),
                )
            }
        })
        .collect()
}

fn check_system_map(
    case_id: &str,
    bag: PropertyBag<'_>,
    input: Option<EncodedStr<'_>>,
    map: &Value,
    decode: bool,
) {
    for (k, v) in map.as_object().expect("system map") {
        if k == "inputName" {
            let input = input.unwrap_or_else(|| panic!("{case_id}: no input name"));
            assert_eq!(Some(dec(input)), str_or_null(v), "{case_id} {k}");
            continue;
        }
        let p = sdk_field(k).unwrap_or_else(|| panic!("{case_id}: unknown field {k}"));
        assert_eq!(
            system_value(bag, p, decode),
            Some(str_or_null(v)),
            "{case_id} {k}"
        );
    }
}

#[test]
fn c2d_receive() {
    let cases = section(&vectors(), "c2d_receive");
    let mut checked = 0;
    for c in &cases {
        let case_id = id(c);
        let t = c["topic"].as_str().unwrap();
        let e = &c["expected"];
        let is_module = match c["kind"].as_str() {
            Some("module_input") => true,
            Some("c2d") => false,
            None => t.contains("/modules/"),
            Some(k) => panic!("{case_id}: kind {k}"),
        };
        if !e["matches"].as_bool().unwrap() {
            assert_eq!(topic::parse_c2d(t), Err(TopicError::NoMatch), "{case_id}");
            assert!(
                topic::parse_module_input(t).is_err(),
                "{case_id}: read as module input"
            );
            assert!(
                !matches!(
                    topic::parse_hub_publish(t),
                    Ok(HubTopic::C2d(_) | HubTopic::ModuleInput(_))
                ),
                "{case_id}"
            );
            checked += 1;
            continue;
        }

        let (bag, input) = if is_module {
            let m = topic::parse_module_input(t).unwrap_or_else(|e| panic!("{case_id}: {e}"));
            assert_eq!(
                topic::parse_hub_publish(t),
                Ok(HubTopic::ModuleInput(m)),
                "{case_id}"
            );
            (m.bag, Some(m.input))
        } else {
            let m = topic::parse_c2d(t).unwrap_or_else(|e| panic!("{case_id}: {e}"));
            assert_eq!(
                topic::parse_hub_publish(t),
                Ok(HubTopic::C2d(m)),
                "{case_id}"
            );
            // The device id comes back verbatim; comparing it is the caller's choice.
            assert!(t.starts_with(&format!("devices/{}/messages/devicebound", m.device_id)));
            (m.bag, None)
        };

        let mut asserted = 0;
        if let Some(p) = e.get("properties_as_returned") {
            assert_eq!(raw_pairs(bag), json_pairs(p), "{case_id}");
            asserted += 1;
        }
        if let Some(p) = e.get("properties_percent_decoded") {
            assert_eq!(decoded_pairs(bag), json_pairs(p), "{case_id}");
            asserted += 1;
        }
        if let Some(f) = e.get("python_message_fields") {
            for (k, v) in f.as_object().unwrap() {
                let p = sdk_field(k).unwrap_or_else(|| panic!("{case_id}: field {k}"));
                assert_eq!(
                    system_value(bag, p, true),
                    Some(str_or_null(v)),
                    "{case_id} {k}"
                );
            }
            asserted += 1;
        }
        if let Some(custom) = e.get("python_custom_properties") {
            // Python's custom properties are our app properties, except the `$.` names the
            // spec lists as system properties (`$.cdid`), which we check as system properties.
            let ours = app_pairs(bag, true);
            let mut want = Vec::new();
            for (k, v) in custom.as_object().unwrap() {
                if SystemProperty::from_name(k).is_some() {
                    assert!(
                        is_exception(&case_id),
                        "{case_id}: {k} is not in EXCEPTIONS"
                    );
                }
                match SystemProperty::from_name(k) {
                    Some(p) => assert_eq!(
                        system_value(bag, p, true),
                        Some(str_or_null(v)),
                        "{case_id} {k}"
                    ),
                    None => want.push((k.clone(), str_or_null(v))),
                }
            }
            let mut ours_sorted = ours.clone();
            ours_sorted.sort();
            want.sort();
            assert_eq!(ours_sorted, want, "{case_id} custom properties");
            asserted += 1;
        }
        if let Some(name) = e.get("input_name") {
            assert_eq!(
                Some(dec(input.expect("module input"))),
                str_or_null(name),
                "{case_id}"
            );
            asserted += 1;
        }
        if let Some(m) = e.get("system_as_returned_default") {
            check_system_map(&case_id, bag, input, m, false);
            asserted += 1;
        }
        if let Some(m) = e.get("system_with_OPTION_AUTO_URL_ENCODE_DECODE") {
            check_system_map(&case_id, bag, input, m, true);
            asserted += 1;
        }
        if let Some(a) = e.get("application_as_returned_default") {
            if case_id == "lc-empty-props-61" {
                // Exception: a bare key is a null property.
                assert_eq!(app_pairs(bag, false), [("fooBar".to_owned(), None)]);
            } else {
                assert_eq!(app_pairs(bag, false), json_pairs(a), "{case_id}");
            }
            asserted += 1;
        }
        if let Some(a) = e.get("application_with_OPTION_AUTO_URL_ENCODE_DECODE") {
            assert_eq!(app_pairs(bag, true), json_pairs(a), "{case_id}");
            asserted += 1;
        }
        if let Some(a) = e.get("properties") {
            assert_eq!(app_pairs(bag, true), json_pairs(a), "{case_id}");
            asserted += 1;
        }
        if let Some(a) = e.get("application") {
            assert_eq!(app_pairs(bag, true), json_pairs(a), "{case_id}");
            asserted += 1;
        }
        if let Some(n) = e.get("application_count") {
            assert_eq!(
                app_pairs(bag, true).len() as u64,
                n.as_u64().unwrap(),
                "{case_id}"
            );
            asserted += 1;
        }
        if let Some(m) = e.get("system") {
            check_system_map(&case_id, bag, input, m, true);
            if let Some(n) = e.get("system_count") {
                assert!(is_exception(&case_id), "{case_id}: system_count unhandled");
                // The topic itself carries `system` only (see EXCEPTIONS).
                let ours = bag.iter().filter(|p| p.system().is_some()).count();
                assert_eq!(ours, m.as_object().unwrap().len(), "{case_id}");
                assert!(n.as_u64().unwrap() as usize >= ours);
            }
            asserted += 1;
        }
        for (k, p) in [
            ("messageId", SystemProperty::MessageId),
            ("correlationId", SystemProperty::CorrelationId),
            ("contentType", SystemProperty::ContentType),
        ] {
            if let Some(v) = e.get(k) {
                assert_eq!(
                    system_value(bag, p, true),
                    Some(str_or_null(v)),
                    "{case_id}"
                );
                asserted += 1;
            }
        }
        assert!(asserted > 0, "{case_id}: no expectation was checked");
        checked += 1;
    }
    assert_eq!(checked, cases.len());
}
