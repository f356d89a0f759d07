//! The `twin_request_publish`, `twin_response` and `twin_desired_patch` sections: twin topics.

use super::*;

#[test]
fn twin_request_publish() {
    let cases = section(&vectors(), "twin_request_publish");
    let mut checked = 0;
    for c in &cases {
        let case_id = id(c);
        let expected = c["expected_topic"].as_str().unwrap();
        let rid = c["rid"].as_str().unwrap();
        let mut built = String::new();
        let parsed = topic::parse_device_publish(expected, Identity::module("d", "m"));
        match c["operation"].as_str().unwrap() {
            "GET" => {
                topic::write_twin_get(&mut built, rid).unwrap();
                assert!(
                    matches!(parsed, Ok(DeviceTopic::TwinGet { rid: r }) if dec(r) == rid),
                    "{case_id}: {parsed:?}"
                );
            }
            "PATCH_reported" => {
                topic::write_twin_patch_reported(&mut built, rid).unwrap();
                assert!(
                    matches!(parsed, Ok(DeviceTopic::TwinPatchReported { rid: r }) if dec(r) == rid),
                    "{case_id}: {parsed:?}"
                );
            }
            op => panic!("{case_id}: operation {op}"),
        }
        assert_eq!(built, expected, "{case_id}");
        checked += 1;
    }
    assert_eq!(checked, cases.len());
}

#[test]
fn twin_response() {
    let cases = section(&vectors(), "twin_response");
    let mut checked = 0;
    for c in &cases {
        let case_id = id(c);
        let t = c["topic"].as_str().unwrap();
        let e = &c["expected"];
        let parsed = topic::parse_twin_response(t);
        let non_canonical = c["non_canonical"].as_bool() == Some(true);
        if !e["matches"].as_bool().unwrap() {
            let want = if e["error"]
                .as_str()
                .is_some_and(|s| s.starts_with("AZ_ERROR_UNEXPECTED_END"))
            {
                TopicError::RequestIdMissing
            } else {
                TopicError::NoMatch
            };
            assert_eq!(parsed, Err(want), "{case_id}");
        } else if e.get("status_text").is_some() {
            // Decision: status must be an integer (Python returns the text).
            assert!(non_canonical, "{case_id}");
            assert_eq!(parsed, Err(TopicError::InvalidStatus), "{case_id}");
        } else if non_canonical && t.contains("?rid=") {
            // Decision: `?rid=` without `$` is not a request id.
            assert_eq!(parsed, Err(TopicError::RequestIdMissing), "{case_id}");
        } else {
            assert!(!non_canonical, "{case_id}: undecided non-canonical form");
            let r = parsed.unwrap_or_else(|err| panic!("{case_id}: {err}"));
            assert_eq!(
                u64::from(r.status),
                e["status"].as_u64().unwrap(),
                "{case_id}"
            );
            assert_eq!(dec(r.rid), e["rid"].as_str().unwrap(), "{case_id}");
            let want_version = e["version"]
                .as_str()
                .map(|v| v.parse::<u64>().expect("numeric version"));
            assert_eq!(r.version, want_version, "{case_id}");
            assert_eq!(topic::parse_hub_publish(t), Ok(HubTopic::TwinResponse(r)));
            let mut built = String::new();
            topic::write_twin_response(&mut built, r.status, &dec(r.rid), r.version).unwrap();
            assert_eq!(built, t, "{case_id}");
        }
        checked += 1;
    }
    assert_eq!(checked, cases.len());
}

#[test]
fn twin_desired_patch() {
    let cases = section(&vectors(), "twin_desired_patch");
    let mut checked = 0;
    for c in &cases {
        let case_id = id(c);
        let t = c["topic"].as_str().unwrap();
        let e = &c["expected"];
        let parsed = topic::parse_desired_patch(t);
        if c["non_canonical"].as_bool() == Some(true) {
            if t.starts_with("$iothub/") {
                // Decision: the version is required.
                assert!(e["version"].is_null(), "{case_id}");
                assert_eq!(parsed, Err(TopicError::VersionMissing), "{case_id}");
            } else {
                // Decision: no prefix before `$iothub`.
                assert_eq!(parsed, Err(TopicError::NoMatch), "{case_id}");
            }
        } else if e["matches"].as_bool().unwrap() {
            let v = parsed.unwrap_or_else(|err| panic!("{case_id}: {err}"));
            assert_eq!(Some(v.to_string()), str_or_null(&e["version"]), "{case_id}");
        } else {
            assert_eq!(parsed, Err(TopicError::NoMatch), "{case_id}");
        }
        checked += 1;
    }
    assert_eq!(checked, cases.len());
}
