//! The `method_request` and `method_response_publish` sections: direct method topics.

use super::*;

#[test]
fn method_request() {
    let cases = section(&vectors(), "method_request");
    let mut checked = 0;
    for c in &cases {
        let case_id = id(c);
        let t = c["topic"].as_str().unwrap();
        let e = &c["expected"];
        let parsed = topic::parse_method_request(t);
        if e["matches"].as_bool().unwrap() {
            // Includes the non-canonical Node form without `/` before `?`: lenient on the
            // device side, by decision.
            let r = parsed.unwrap_or_else(|err| panic!("{case_id}: {err}"));
            assert_eq!(r.name.as_str(), e["name"].as_str().unwrap(), "{case_id}");
            assert_eq!(dec(r.rid), e["rid"].as_str().unwrap(), "{case_id}");
            assert_eq!(topic::parse_hub_publish(t), Ok(HubTopic::MethodRequest(r)));
            if c["non_canonical"].as_bool() != Some(true) {
                let mut built = String::new();
                topic::write_method_request(&mut built, r.name, &dec(r.rid)).unwrap();
                assert_eq!(built, t, "{case_id}");
            }
        } else {
            assert!(parsed.is_err(), "{case_id}");
            if e["error"] == "AZ_ERROR_IOT_TOPIC_NO_MATCH" && t.starts_with("$iothub/twin") {
                assert_eq!(parsed, Err(TopicError::NoMatch), "{case_id}");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, cases.len());
}

#[test]
fn method_response_publish() {
    let cases = section(&vectors(), "method_response_publish");
    let mut checked = 0;
    for c in &cases {
        let case_id = id(c);
        let expected = c["expected_topic"].as_str().unwrap();
        let rid = c["rid"].as_str().unwrap();
        let parsed = topic::parse_device_publish(expected, Identity::device("d"));
        match c["status"].as_u64() {
            Some(status) => {
                let status = u16::try_from(status).unwrap();
                let mut built = String::new();
                topic::write_method_response(&mut built, status, rid).unwrap();
                assert_eq!(built, expected, "{case_id}");
                match parsed {
                    Ok(DeviceTopic::MethodResponse { status: s, rid: r }) => {
                        assert_eq!(s, status, "{case_id}");
                        assert_eq!(dec(r), rid, "{case_id}");
                    }
                    other => panic!("{case_id}: {other:?}"),
                }
            }
            None => {
                // Python's test-only text status: the hub reads status as an integer.
                assert!(c["status"].is_string(), "{case_id}");
                assert_eq!(parsed, Err(TopicError::InvalidStatus), "{case_id}");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, cases.len());
}
