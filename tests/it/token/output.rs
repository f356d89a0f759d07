//! Output forms and sources: `--ttl`, `--expiry` as an RFC 3339 time, `--json`, `--mqtt`, and
//! device, module and service connection strings from the flag or the environment.

use super::*;

#[test]
fn ttl_sets_the_expiry_relative_to_now() {
    let before = now();
    let r = azsim(&[
        "token",
        "--host",
        "h.example",
        "--device",
        "d1",
        "--key",
        OTHER_KEY,
        "--ttl",
        "90m",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let t = sas::Token::parse(r.stdout.trim_end()).unwrap();
    assert!(
        (before + 5400..=now() + 5400).contains(&t.expiry()),
        "{}",
        t.expiry()
    );

    let r = azsim(&[
        "token",
        "--host",
        "h.example",
        "--device",
        "d1",
        "--key",
        OTHER_KEY,
    ]);
    let t = sas::Token::parse(r.stdout.trim_end()).unwrap();
    assert!(
        (before + 3600..=now() + 3600).contains(&t.expiry()),
        "default ttl is 3600 s"
    );
}

#[test]
fn json_output_has_the_token_and_the_mqtt_connect_fields() {
    let v = vector("oracle-module");
    let mut args: Vec<String> = vec!["token".into()];
    args.extend(target_args(s(&v, "resource_uri")));
    args.extend([
        "--key".into(),
        s(&v, "key_b64").into(),
        "--expiry".into(),
        expiry(&v),
    ]);
    args.extend(["--allow-expired".into(), "--json".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = azsim(&refs);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j: Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(j["token"], s(&v, "expected_token"));
    assert_eq!(j["resource"], s(&v, "resource_uri"));
    assert_eq!(j["policy"], Value::Null);
    assert_eq!(j["expiry"], v["expiry"]);
    assert_eq!(j["expiry_rfc3339"], "2020-01-13T18:54:52Z");
    assert_eq!(j["client_id"], "my_device/my_module");
    assert_eq!(j["host"], "myiothub.azure-devices.net");
    assert_eq!(j["port"], 8883);
    let user = j["username"].as_str().expect("username");
    assert!(
        user.starts_with("myiothub.azure-devices.net/my_device/my_module/?api-version=2021-04-12"),
        "{user}"
    );
}

#[test]
fn json_output_for_a_hub_policy_token_has_no_mqtt_fields() {
    let v = vector("cli-hub-policy");
    let r = azsim(&[
        "token",
        "--host",
        s(&v, "resource_uri"),
        "--key",
        s(&v, "key_b64"),
        "--policy",
        "iothubowner",
        "--expiry",
        &expiry(&v),
        "--allow-expired",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["token"], s(&v, "expected_token"));
    assert_eq!(j["policy"], "iothubowner");
    assert!(
        j.get("client_id").is_none() && j.get("username").is_none(),
        "{j}"
    );
}

#[test]
fn mqtt_output_gives_the_connect_triple_and_a_mosquitto_line() {
    let r = azsim(&[
        "token",
        "--host",
        "h.example",
        "--device",
        "dev-1",
        "--key",
        OTHER_KEY,
        "--mqtt",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = |name: &str| {
        r.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} line in {}", r.stdout))
            .to_owned()
    };
    assert_eq!(line("host:"), "h.example");
    assert_eq!(line("port:"), "8883");
    assert_eq!(line("client id:"), "dev-1");
    assert!(line("username:").starts_with("h.example/dev-1/?api-version=2021-04-12"));
    let password = line("password:");
    let t = sas::Token::parse(&password).expect("password is a sas token");
    assert_eq!(
        sas::verify(&t, OTHER_KEY, "h.example/devices/dev-1", now()),
        Ok(())
    );
    assert!(
        r.stdout.contains("mosquitto_pub -h h.example -p 8883")
            && r.stdout.contains("-t devices/dev-1/messages/events/"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_connection_string_in_the_environment_is_used() {
    let v = vector("cli-device");
    let res = s(&v, "resource_uri");
    let (host, device) = res.split_once("/devices/").unwrap();
    let cs = format!(
        "HostName={host};DeviceId={device};SharedAccessKey={}",
        s(&v, "key_b64")
    );
    let args = ["token", "--expiry", &expiry(&v), "--allow-expired"];
    let r = azsim_env(&args, &[("IOTHUB_DEVICE_CONNECTION_STRING", &cs)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim_end(), s(&v, "expected_token"));

    let mut with_flag = vec!["token", "--connection-string", &cs];
    with_flag.extend(&args[1..]);
    assert_eq!(azsim(&with_flag).stdout, r.stdout);
}

#[test]
fn a_service_connection_string_gives_the_hub_policy_token() {
    let v = vector("cli-hub-policy");
    let cs = format!(
        "HostName={};SharedAccessKeyName=iothubowner;SharedAccessKey={}",
        s(&v, "resource_uri"),
        s(&v, "key_b64")
    );
    let r = azsim(&[
        "token",
        "--connection-string",
        &cs,
        "--expiry",
        &expiry(&v),
        "--allow-expired",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim_end(), s(&v, "expected_token"));
}

#[test]
fn other_sdks_connection_string_keys_are_accepted_and_ignored() {
    // The C# SDK's legacy service string: the same hub policy token as the plain one.
    let v = vector("cli-hub-policy");
    let plain = format!(
        "HostName={};SharedAccessKeyName=iothubowner;SharedAccessKey={}",
        s(&v, "resource_uri"),
        s(&v, "key_b64")
    );
    let csharp = format!(
        "HostName={};CredentialScope=IotHub;CredentialType=SharedAccessSignature;SharedAccessKeyName=iothubowner;SharedAccessKey={}",
        s(&v, "resource_uri"),
        s(&v, "key_b64")
    );
    for cs in [&plain, &csharp] {
        let r = azsim(&[
            "token",
            "--connection-string",
            cs,
            "--expiry",
            &expiry(&v),
            "--allow-expired",
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.stdout.trim_end(), s(&v, "expected_token"));
    }

    // A device string in the Node and C samples' form, through the env var, with --mqtt.
    let cs = format!(
        "HostName=h.example;CredentialType=SharedAccessKey;CredentialScope=Device;DeviceId=dev-1;SharedAccessKey={OTHER_KEY}"
    );
    let r = azsim_env(
        &["token", "--mqtt"],
        &[("IOTHUB_DEVICE_CONNECTION_STRING", &cs)],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("client id: dev-1"), "{}", r.stdout);
    assert_no_secret(&r, &[OTHER_KEY]);
}

#[test]
fn a_typo_in_a_connection_string_key_is_named_with_the_known_keys() {
    let key = "c2VjcmV0LWtleS1zaG91bGQtbm90LWxlYWs=";
    let cs = format!("HostName=h;DeviceId=d;SharedAccessKey={key};CredentialScop=Device");
    let r = azsim(&["token", "--connection-string", &cs]);
    assert_usage_error(&r, "--connection-string", &[key, &cs]);
    assert!(
        r.stderr
            .contains("unknown key 'CredentialScop'; known: HostName, DeviceId, "),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .trim_end()
            .ends_with("CredentialScope, CredentialType, UseProvisioning"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_module_connection_string_gives_the_module_token_and_client_id() {
    let v = vector("oracle-module");
    let cs = format!(
        "HostName=myiothub.azure-devices.net;DeviceId=my_device;ModuleId=my_module;SharedAccessKey={}",
        s(&v, "key_b64")
    );
    let r = azsim(&[
        "token",
        "--connection-string",
        &cs,
        "--expiry",
        &expiry(&v),
        "--allow-expired",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["token"], s(&v, "expected_token"));
    assert_eq!(j["client_id"], "my_device/my_module");
}

#[test]
fn expiry_may_be_given_as_an_rfc3339_time() {
    let unix = azsim(&[
        "token",
        "--host",
        "h",
        "--device",
        "d",
        "--key",
        OTHER_KEY,
        "--expiry",
        "1893456000",
    ]);
    let rfc = azsim(&[
        "token",
        "--host",
        "h",
        "--device",
        "d",
        "--key",
        OTHER_KEY,
        "--expiry",
        "2030-01-01T00:00:00Z",
    ]);
    assert_eq!(
        (unix.code, rfc.code),
        (0, 0),
        "{}{}",
        unix.stderr,
        rfc.stderr
    );
    assert_eq!(unix.stdout, rfc.stdout);
    let bad = azsim(&[
        "token", "--host", "h", "--device", "d", "--key", OTHER_KEY, "--expiry", "tomorrow",
    ]);
    assert_usage_error(&bad, "--expiry", &[OTHER_KEY]);
}
