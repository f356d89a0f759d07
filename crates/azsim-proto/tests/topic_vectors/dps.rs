//! The `dps_publish` and `dps_response` sections: Device Provisioning Service topics.

use super::*;

#[test]
fn dps_publish() {
    let cases = section(&vectors(), "dps_publish");
    let mut checked = 0;
    for c in &cases {
        let case_id = id(c);
        let expected = c["expected_topic"].as_str().unwrap();
        let rid = c["rid"].as_str().unwrap();
        let mut built = String::new();
        let parsed = topic::parse_dps_request(expected);
        match c["operation"].as_str().unwrap() {
            "register" => {
                topic::write_dps_register(&mut built, rid).unwrap();
                assert!(
                    matches!(parsed, Ok(topic::DpsRequest::Register { rid: r }) if dec(r) == rid),
                    "{case_id}: {parsed:?}"
                );
            }
            "query" => {
                let op = c["operation_id"].as_str().unwrap();
                topic::write_dps_query(&mut built, rid, op).unwrap();
                assert!(
                    matches!(parsed, Ok(topic::DpsRequest::Query { rid: r, operation_id: o })
                        if dec(r) == rid && dec(o) == op),
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
fn dps_response() {
    let cases = section(&vectors(), "dps_response");
    let mut checked = 0;
    for c in &cases {
        let case_id = id(c);
        let t = c["topic"].as_str().unwrap();
        let e = &c["expected"];
        let parsed = topic::parse_dps_response(t);
        if !e["matches"].as_bool().unwrap() {
            assert_eq!(parsed, Err(TopicError::NoMatch), "{case_id}");
        } else if e.get("status_text").is_some() {
            // Decision: status must be an integer.
            assert_eq!(parsed, Err(TopicError::InvalidStatus), "{case_id}");
        } else {
            let r = parsed.unwrap_or_else(|err| panic!("{case_id}: {err}"));
            assert_eq!(
                u64::from(r.status),
                e["status"].as_u64().unwrap(),
                "{case_id}"
            );
            assert_eq!(dec(r.rid), e["rid"].as_str().unwrap(), "{case_id}");
            // Embedded C reports an absent retry-after as 0, Python as nothing: ours is None.
            let want = if t.contains("retry-after=") {
                Some(u32::try_from(e["retry_after"].as_u64().unwrap()).unwrap())
            } else {
                assert!(
                    matches!(e["retry_after"].as_u64(), None | Some(0)),
                    "{case_id}"
                );
                None
            };
            assert_eq!(r.retry_after, want, "{case_id}");
            // Rebuilt in canonical order, it parses to the same thing.
            let mut built = String::new();
            topic::write_dps_response(&mut built, r.status, &dec(r.rid), r.retry_after).unwrap();
            let again = topic::parse_dps_response(&built).unwrap();
            assert_eq!(
                (again.status, dec(again.rid), again.retry_after),
                (r.status, dec(r.rid), r.retry_after),
                "{case_id}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, cases.len());
}
