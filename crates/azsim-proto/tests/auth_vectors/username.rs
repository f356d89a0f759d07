//! MQTT CONNECT fields: username and client id (topics.json, `mqtt_connect` section only).

use azsim_proto::username::{self, Username};

use crate::{id, load, s};

#[test]
fn mqtt_connect_vectors() {
    let doc = load("topics.json");
    let cases = doc["mqtt_connect"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let cid = id(case);
        let expected = s(case, "expected").unwrap();
        match (s(case, "field").unwrap(), cid.contains("dps")) {
            ("client_id", false) => {
                let mut got = String::new();
                username::write_client_id(
                    &mut got,
                    s(case, "device_id").unwrap(),
                    s(case, "module_id"),
                )
                .unwrap();
                assert_eq!(got, expected, "{cid}");
                let (d, m) = username::parse_client_id(expected).unwrap();
                assert_eq!(
                    (d, m),
                    (s(case, "device_id").unwrap(), s(case, "module_id"))
                );
            }
            ("client_id", true) => {
                // The DPS client id is the registration id, which the DPS username names.
                let mut got = String::new();
                username::write_dps_username(&mut got, "0neFEEDC0DE", expected).unwrap();
                assert!(
                    got.contains(&format!("/registrations/{expected}/")),
                    "{cid}"
                );
            }
            ("username", true) => {
                let (scope, rest) = expected.split_once("/registrations/").unwrap();
                let (reg, _) = rest.split_once('/').unwrap();
                let mut got = String::new();
                username::write_dps_username(&mut got, scope, reg).unwrap();
                // SDKs may append &ClientVersion=...; the base is ours exactly.
                assert!(expected.starts_with(&got), "{cid}: {got}");
                assert!(got.ends_with("/api-version=2019-03-31") && !got.contains('?'));
            }
            ("username", false) => {
                let u = Username::parse(expected).unwrap_or_else(|e| panic!("{cid}: {e}"));
                let mut client = String::new();
                u.write_client_id(&mut client).unwrap();
                assert_eq!(
                    format!("{}/{client}/?{}", u.host, u.query),
                    expected,
                    "{cid}"
                );
                let api = u.api_version.unwrap().to_string();
                assert!(api.len() == 10 && api.starts_with("20"), "{cid}: {api}");
                if let Some(t) = u.device_client_type {
                    assert!(!t.to_string().contains('%'), "{cid}: decoded");
                }
                // Rebuilt by us (our api-version and client type), the identity and model id
                // survive, and the model-id parameter is encoded exactly as the SDK did.
                let model = u.model_id.map(|m| m.to_string());
                let mut ours = String::new();
                username::write_username(
                    &mut ours,
                    u.host,
                    u.device_id,
                    u.module_id,
                    "1.0.0",
                    model.as_deref(),
                )
                .unwrap();
                let back = Username::parse(&ours).unwrap();
                assert_eq!(
                    (back.host, back.device_id, back.module_id),
                    (u.host, u.device_id, u.module_id)
                );
                assert!(back.api_version.unwrap().eq_decoded(username::API_VERSION));
                if let Some(m) = u.model_id {
                    assert_eq!(back.model_id.unwrap().raw(), m.raw(), "{cid}");
                    assert!(ours.ends_with(&format!("&model-id={}", m.raw())));
                }
            }
            (f, _) => panic!("{cid}: unknown field {f}"),
        }
    }
}
