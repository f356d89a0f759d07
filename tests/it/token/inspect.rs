//! `azsim token inspect`'s diagnosis: validity and expiry, the identity and host the token is
//! for, wrong keys and policies, double and lower-case escapes, every published token, and
//! malformed tokens.

use super::*;

#[test]
fn inspect_says_a_fresh_token_is_valid_and_when_it_expires() {
    let token = fresh_token("h.example", "d1", OTHER_KEY);
    let r = azsim(&[
        "token",
        "inspect",
        &token,
        "--key",
        OTHER_KEY,
        "--host",
        "h.example",
        "--device",
        "d1",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("VALID"), "{}", r.stdout);
    assert!(
        r.stdout.contains("expires in 59m") || r.stdout.contains("expires in 1h"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("device 'd1' on h.example"),
        "{}",
        r.stdout
    );
}

#[test]
fn inspect_with_the_connection_string_checks_the_identity_too() {
    let cs = format!("HostName=h.example;DeviceId=d1;SharedAccessKey={OTHER_KEY}");
    let token = fresh_token("h.example", "d1", OTHER_KEY);
    let r = azsim(&[
        "token",
        "inspect",
        &token,
        "--connection-string",
        &cs,
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let j: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["valid"], true);
    assert_eq!(j["kind"], "device");
    assert_eq!(j["device_id"], "d1");
    assert_eq!(j["problems"], serde_json::json!([]));
}

#[test]
fn inspect_reports_an_expired_token_and_exits_1() {
    let v = vector("cli-device");
    let r = azsim(&[
        "token",
        "inspect",
        s(&v, "expected_token"),
        "--key",
        s(&v, "key_b64"),
        "--host",
        "iot-hub-for-test.azure-devices.net",
        "--device",
        "iot-device-for-test",
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("expired: se 1471940363 is 2016-08-23T08:19:23Z (expired "),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(" ago)"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("signature does not match"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.starts_with("error: token check failed: expired"),
        "{}",
        r.stderr
    );
}

#[test]
fn inspect_without_a_key_decodes_the_fields_and_checks_only_the_expiry() {
    let token = fresh_token("h.example", "d1", OTHER_KEY);
    let r = azsim(&["token", "inspect", &token]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("resource:  h.example/devices/d1"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("signature not checked"), "{}", r.stdout);

    let v = vector("cli-device");
    let r = azsim(&["token", "inspect", s(&v, "expected_token")]);
    assert_eq!(r.code, 1, "an expired token fails even without a key");
}

#[test]
fn inspect_says_the_signature_does_not_match_another_key() {
    let token = fresh_token("h.example", "d1", OTHER_KEY);
    let key = s(&vector("oracle-module"), "key_b64").to_owned();
    let r = azsim(&[
        "token",
        "inspect",
        &token,
        "--key",
        &key,
        "--host",
        "h.example",
        "--device",
        "d1",
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains("signature does not match this key"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("expired"), "{}", r.stdout);
    assert_no_secret(&r, &[&key, OTHER_KEY]);
}

#[test]
fn inspect_names_the_device_and_host_the_token_is_really_for() {
    let token = fresh_token("h.example", "d1", OTHER_KEY);
    let r = azsim(&[
        "token",
        "inspect",
        &token,
        "--key",
        OTHER_KEY,
        "--host",
        "h.example",
        "--device",
        "d2",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout
            .contains("sr names device 'd1', expected device 'd2'"),
        "{}",
        r.stdout
    );

    let r = azsim(&[
        "token",
        "inspect",
        &token,
        "--key",
        OTHER_KEY,
        "--host",
        "other.example",
        "--device",
        "d1",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout
            .contains("sr is for host 'h.example', expected host 'other.example'"),
        "{}",
        r.stdout
    );
}

#[test]
fn inspect_spots_an_sr_encoded_twice() {
    let exp = now() + 3600;
    let mut token = String::new();
    // Encoding an already encoded resource is exactly the old azure-cli bug.
    sas::sign(&mut token, "h.example%2Fdevices%2Fd1", OTHER_KEY, exp, None).unwrap();
    assert!(token.contains("%252F"));
    let r = azsim(&[
        "token",
        "inspect",
        &token,
        "--key",
        OTHER_KEY,
        "--host",
        "h.example",
        "--device",
        "d1",
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains("sr is percent-encoded twice"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("decoded twice it names the right resource"),
        "{}",
        r.stdout
    );

    // The published legacy vector says the same (and that it is long expired).
    let v = vector("azure-cli-legacy-double-encoded");
    let r = azsim(&[
        "token",
        "inspect",
        s(&v, "expected_token"),
        "--key",
        s(&v, "key_b64"),
        "--host",
        "iot-hub-for-test.azure-devices.net",
        "--device",
        "iot-device-for-test",
        "--policy",
        "iothubowner",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("percent-encoded twice"), "{}", r.stdout);
    assert!(
        !r.stdout.contains("signature does not match"),
        "{}",
        r.stdout
    );
}

#[test]
fn inspect_accepts_lower_case_escapes_and_says_they_are_fine() {
    let exp = now() + 600;
    let sr = "h.example%2fdevices%2fd1";
    let sig = sas::raw_signature(OTHER_KEY, format!("{sr}\n{exp}").as_bytes()).unwrap();
    let token = format!(
        "SharedAccessSignature sr={sr}&sig={}&se={exp}",
        sas_encode(sig.as_str())
    );
    let r = azsim(&[
        "token",
        "inspect",
        &token,
        "--key",
        OTHER_KEY,
        "--host",
        "h.example",
        "--device",
        "d1",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("lower-case escapes (%2f): fine"),
        "{}",
        r.stdout
    );
}

#[test]
fn inspect_checks_the_signature_of_every_published_token_that_has_a_key() {
    // All vectors are long expired: the only problem inspect may find is the expiry.
    let mut checked = 0;
    for v in vectors() {
        let (Some(token), Some(key)) = (v["expected_token"].as_str(), v["key_b64"].as_str()) else {
            continue;
        };
        if sas::check_key(key).is_err() {
            continue; // Node's lenient-base64 test key
        }
        let r = azsim(&["token", "inspect", token, "--key", key, "--json"]);
        let j: Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("{}: {e} {}", v["id"], r.stdout));
        let problems: Vec<&str> = j["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            problems.iter().any(|p| p.starts_with("expired")),
            "{}: {problems:?}",
            v["id"]
        );
        assert!(
            !problems.iter().any(|p| p.contains("signature")),
            "{}: {problems:?}",
            v["id"]
        );
        assert_no_secret(&r, &[key]);
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} tokens checked");
}

#[test]
fn inspect_of_a_malformed_token_says_which_field_is_wrong() {
    let r = azsim(&[
        "token",
        "inspect",
        "SharedAccessSignature sr=h%2Fdevices%2Fd&sig=abc",
    ]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("sas token se: missing"), "{}", r.stdout);
}

#[test]
fn inspect_accepts_a_hub_policy_token_for_its_policy_and_names_a_wrong_one() {
    let r = azsim(&[
        "token",
        "--host",
        "h.example",
        "--key",
        OTHER_KEY,
        "--policy",
        "iothubowner",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let token = r.stdout.trim_end().to_owned();
    for extra in [&[][..], &["--policy", "iothubowner"][..]] {
        let mut args = vec![
            "token",
            "inspect",
            &token,
            "--key",
            OTHER_KEY,
            "--host",
            "h.example",
        ];
        args.extend(extra);
        let r = azsim(&args);
        assert_eq!(r.code, 0, "{extra:?}: {}{}", r.stdout, r.stderr);
    }
    let r = azsim(&[
        "token",
        "inspect",
        &token,
        "--key",
        OTHER_KEY,
        "--host",
        "h.example",
        "--policy",
        "service",
    ]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout
            .contains("skn is 'iothubowner', but the key belongs to the policy 'service'"),
        "{}",
        r.stdout
    );
}
