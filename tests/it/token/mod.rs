//! `azsim token` through the real binary: known answers from `fixtures/vectors/sas.json`, the
//! output forms, `inspect`'s diagnosis, and bad input (exit 2, the field named, no key echoed).
//!
//! One module per concern (`sign`, `dps`, `output`, `inspect`, `bad_input`); the runner, the
//! vector loader and the assertions they share are here.

use std::process::Command;

use azsim_proto::sas;
use serde_json::Value;

mod bad_input;
mod dps;
mod inspect;
mod output;
mod sign;

const BIN: &str = env!("CARGO_BIN_EXE_azsim");

/// A key that appears in no vector, to check a "wrong key" diagnosis.
const OTHER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn azsim_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("IOTHUB_DEVICE_CONNECTION_STRING")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run azsim");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn azsim(args: &[&str]) -> Run {
    azsim_env(args, &[])
}

fn vectors() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/vectors/sas.json");
    let text = std::fs::read_to_string(path).expect("read sas.json");
    serde_json::from_str(&text).expect("parse sas.json")
}

fn vector(id: &str) -> Value {
    vectors()
        .into_iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("vector {id} missing from sas.json"))
}

fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing in {}", v["id"]))
}

fn expiry(v: &Value) -> String {
    v["expiry"].as_u64().expect("expiry").to_string()
}

/// `host/devices/d[/modules/m]` split into `--host H [--device D [--module M]]` arguments.
fn target_args(resource: &str) -> Vec<String> {
    let parts: Vec<&str> = resource.split('/').collect();
    let mut args = vec!["--host".to_owned(), parts[0].to_owned()];
    if parts.len() >= 3 {
        args.extend(["--device".to_owned(), parts[2].to_owned()]);
    }
    if parts.len() >= 5 {
        args.extend(["--module".to_owned(), parts[4].to_owned()]);
    }
    args
}

fn sign_vector(v: &Value) -> Run {
    let mut args: Vec<String> = vec!["token".into()];
    args.extend(target_args(s(v, "resource_uri")));
    args.extend(["--key".into(), s(v, "key_b64").into()]);
    if let Some(p) = v["policy_name"].as_str() {
        args.extend(["--policy".into(), p.into()]);
    }
    args.extend(["--expiry".into(), expiry(v), "--allow-expired".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    azsim(&refs)
}

fn assert_known_answer(id: &str) {
    let v = vector(id);
    let r = sign_vector(&v);
    assert_eq!(r.code, 0, "{id}: {}", r.stderr);
    assert_eq!(r.stdout.trim_end(), s(&v, "expected_token"), "{id}");
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn fresh_token(host: &str, device: &str, key: &str) -> String {
    let r = azsim(&["token", "--host", host, "--device", device, "--key", key]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout.trim_end().to_owned()
}

fn sas_encode(s: &str) -> String {
    azsim_proto::encoding::Encoded(s).to_string()
}

fn assert_no_secret(r: &Run, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !r.stdout.contains(secret) && !r.stderr.contains(secret),
            "secret leaked: {}{}",
            r.stdout,
            r.stderr
        );
    }
}

fn assert_usage_error(r: &Run, field: &str, secrets: &[&str]) {
    assert_eq!(r.code, 2, "stdout {} stderr {}", r.stdout, r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "one line: {}", r.stderr);
    assert!(
        r.stderr.starts_with(&format!("error: {field}")),
        "{field} not named: {}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert_no_secret(r, secrets);
}
