//! Known answers: device, module and hub policy tokens reproduce the published vectors and the
//! SDK oracles.

use super::*;

#[test]
fn device_token_with_exact_expiry_matches_the_published_vector() {
    assert_known_answer("cli-device");
}

#[test]
fn device_id_with_special_characters_is_encoded_once_like_the_python_sdk() {
    assert_known_answer("oracle-device-special-chars");
}

#[test]
fn module_token_matches_the_sdk_oracle() {
    assert_known_answer("oracle-module");
}

#[test]
fn hub_policy_token_matches_the_published_vector() {
    assert_known_answer("cli-hub-policy");
}

#[test]
fn module_token_signed_with_a_policy_key_carries_skn() {
    assert_known_answer("cli-module-policy");
}

#[test]
fn every_key_bearing_hub_vector_in_our_encoding_is_reproduced() {
    // Every vector we can sign: a key, a device/module/hub resource, and the upper-case, encode
    // once form (the others illustrate other SDKs' quirks and are checked by inspect below).
    let mut checked = 0;
    for v in vectors() {
        let Some(token) = v["expected_token"].as_str() else {
            continue;
        };
        let (Some(_), Some(res)) = (v["key_b64"].as_str(), v["resource_uri"].as_str()) else {
            continue;
        };
        if sas::check_key(s(&v, "key_b64")).is_err() {
            continue; // Node's test key "key" is not canonical base64; azsim refuses such keys
        }
        let kind = s(&v, "kind");
        if kind.contains("dps") || kind.contains("legacy") || kind == "generic" {
            continue;
        }
        let expected_sr = format!("sr={}", sas_encode(res));
        if !token.contains(&format!("{expected_sr}&")) || token.contains("/KI%3D") {
            continue; // a different encoding (raw '/' in sig, lower-case escapes)
        }
        let r = sign_vector(&v);
        assert_eq!(r.code, 0, "{}: {}", v["id"], r.stderr);
        assert_eq!(r.stdout.trim_end(), token, "{}", v["id"]);
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} vectors checked");
}
