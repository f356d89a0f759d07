//! Bad input: exit 2, the field named, the secret never echoed.

use super::*;

#[test]
fn a_key_that_is_not_base64_is_refused_without_echoing_it() {
    let bad = "c2VjcmV0LWtleS1zaG91bGQtbm90LWxlYWs!";
    let r = azsim(&["token", "--host", "h", "--device", "d", "--key", bad]);
    assert_usage_error(&r, "--key", &[bad]);
    let r = azsim(&[
        "token",
        "dps",
        "--id-scope",
        "0ne1",
        "--registration-id",
        "r",
        "--group-key",
        bad,
    ]);
    assert_usage_error(&r, "--group-key", &[bad]);
    let r = azsim(&[
        "token",
        "derive-key",
        "--group-key",
        bad,
        "--registration-id",
        "r",
    ]);
    assert_usage_error(&r, "--group-key", &[bad]);
    let r = azsim(&[
        "token",
        "inspect",
        "SharedAccessSignature sr=h&sig=a&se=1",
        "--key",
        bad,
    ]);
    assert_usage_error(&r, "--key", &[bad]);
}

#[test]
fn a_zero_ttl_is_refused() {
    let r = azsim(&[
        "token", "--host", "h", "--device", "d", "--key", OTHER_KEY, "--ttl", "0",
    ]);
    assert_usage_error(&r, "--ttl", &[OTHER_KEY]);
    let r = azsim(&[
        "token", "--host", "h", "--device", "d", "--key", OTHER_KEY, "--ttl", "soon",
    ]);
    assert_usage_error(&r, "--ttl", &[OTHER_KEY]);
}

#[test]
fn an_expiry_in_the_past_is_refused_unless_allowed() {
    let r = azsim(&[
        "token",
        "--host",
        "h",
        "--device",
        "d",
        "--key",
        OTHER_KEY,
        "--expiry",
        "1471940363",
    ]);
    assert_usage_error(&r, "--expiry", &[OTHER_KEY]);
    assert!(r.stderr.contains("--allow-expired"), "{}", r.stderr);
}

#[test]
fn a_hub_token_without_a_policy_is_refused() {
    let r = azsim(&["token", "--host", "h", "--key", OTHER_KEY]);
    assert_usage_error(&r, "--policy", &[OTHER_KEY]);
}

#[test]
fn no_identity_at_all_is_a_usage_error() {
    let r = azsim(&["token"]);
    assert_usage_error(&r, "--connection-string", &[]);
}

#[test]
fn a_malformed_connection_string_is_refused_without_echoing_it() {
    let key = "c2VjcmV0LWtleS1zaG91bGQtbm90LWxlYWs=";
    for (cs, field) in [
        (
            format!("HostName=h;DeviceId=d;SharedAccessKey={key}!"),
            "SharedAccessKey",
        ),
        (
            format!("HostName=h;DeviceId=d;SharedAccesKey={key}"),
            "SharedAccesKey",
        ),
        (format!("DeviceId=d;SharedAccessKey={key}"), "HostName"),
        (
            format!("HostName=h;DeviceId=d;DeviceId=e;SharedAccessKey={key}"),
            "DeviceId",
        ),
    ] {
        let r = azsim(&["token", "--connection-string", &cs]);
        assert_usage_error(&r, "--connection-string", &[key, &cs]);
        assert!(r.stderr.contains(field), "{field} not named: {}", r.stderr);

        let r = azsim_env(&["token"], &[("IOTHUB_DEVICE_CONNECTION_STRING", &cs)]);
        assert_usage_error(&r, "IOTHUB_DEVICE_CONNECTION_STRING", &[key, &cs]);
    }
}

#[test]
fn mqtt_output_refuses_a_hub_policy_token() {
    let r = azsim(&[
        "token",
        "--host",
        "h",
        "--key",
        OTHER_KEY,
        "--policy",
        "iothubowner",
        "--mqtt",
    ]);
    assert_usage_error(&r, "--mqtt", &[OTHER_KEY]);
}

#[test]
fn clap_usage_errors_are_one_line_naming_the_argument_with_no_secret_echoed() {
    for (args, field) in [
        (&["token", "--bogus"][..], "'--bogus'"),
        (&["token", "--ttl"][..], "'--ttl <SECONDS>'"),
        (&["c2d", "send", "dev"][..], "<BODY>"),
        (&["nosuchcmd"][..], "'nosuchcmd'"),
    ] {
        let r = azsim(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert_eq!(
            r.stderr.lines().count(),
            1,
            "{args:?}: one line: {}",
            r.stderr
        );
        assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
        assert!(
            r.stderr.contains(field),
            "{args:?}: {field} not named: {}",
            r.stderr
        );
        assert!(r.stderr.contains("--help'"), "{}", r.stderr);
    }
    // A connection string typed where no argument is expected is not echoed back.
    let cs = format!("HostName=h;DeviceId=d;SharedAccessKey={OTHER_KEY}");
    let r = azsim(&[
        "token", "--host", "h", "--device", "d", "--key", OTHER_KEY, &cs,
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert_no_secret(&r, &[OTHER_KEY, "SharedAccessKey="]);
    // --help still prints the whole help on stdout and succeeds.
    let r = azsim(&["token", "--help"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("Usage: azsim token"), "{}", r.stdout);
}

#[test]
fn a_negative_number_is_checked_by_its_field_not_taken_for_a_flag() {
    let r = azsim(&["run", "--count", "-1"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("invalid value '-1' for '--count <N>'"),
        "{}",
        r.stderr
    );
    let r = azsim(&[
        "token", "--host", "h", "--device", "d", "--key", OTHER_KEY, "--ttl", "-5",
    ]);
    assert_usage_error(&r, "--ttl", &[OTHER_KEY]);
}
