//! Device Provisioning Service tokens: the derived group enrollment key, the registration
//! named, and a group key giving the same token as the derived key.

use super::*;

#[test]
fn derive_key_reproduces_the_docs_group_enrollment_example() {
    for id in ["docs-group-derived-key", "cli-compute-device-key-long-key"] {
        let v = vector(id);
        let r = azsim(&[
            "token",
            "derive-key",
            "--group-key",
            s(&v, "key_b64"),
            "--registration-id",
            s(&v, "registration_id"),
        ]);
        assert_eq!(r.code, 0, "{id}: {}", r.stderr);
        assert_eq!(r.stdout.trim_end(), s(&v, "expected_signature"), "{id}");
    }
}

#[test]
fn dps_token_names_the_registration_and_verifies_with_the_key() {
    let v = vector("oracle-dps-node-style");
    let key = s(&v, "key_b64");
    let exp = expiry(&v);
    let r = azsim(&[
        "token",
        "dps",
        "--id-scope",
        "0neFEEDC0DE",
        "--registration-id",
        "myRegistrationId",
        "--key",
        key,
        "--expiry",
        &exp,
        "--allow-expired",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let token = r.stdout.trim_end();
    assert!(
        token.starts_with(
            "SharedAccessSignature sr=0neFEEDC0DE%2Fregistrations%2FmyRegistrationId&sig="
        ),
        "{token}"
    );
    assert!(
        token.ends_with(&format!("&se={exp}&skn=registration")),
        "{token}"
    );
    let t = sas::Token::parse(token).unwrap();
    let at = v["expiry"].as_u64().unwrap() - 1;
    assert_eq!(
        sas::verify(&t, key, s(&v, "resource_uri"), at),
        Ok(()),
        "the DPS token does not verify with its own key"
    );
    assert_eq!(
        sas::verify(&t, OTHER_KEY, s(&v, "resource_uri"), at),
        Err(sas::VerifyError::BadSignature)
    );
}

#[test]
fn dps_token_from_a_group_key_equals_the_token_from_the_derived_key() {
    let v = vector("docs-group-derived-key");
    let reg = s(&v, "registration_id");
    let common = [
        "--id-scope",
        "0ne00000001",
        "--registration-id",
        reg,
        "--expiry",
        "4102444800",
    ];
    let mut a = vec!["token", "dps", "--group-key", s(&v, "key_b64")];
    a.extend(common);
    let mut b = vec!["token", "dps", "--key", s(&v, "expected_signature")];
    b.extend(common);
    let (ra, rb) = (azsim(&a), azsim(&b));
    assert_eq!((ra.code, rb.code), (0, 0), "{} {}", ra.stderr, rb.stderr);
    assert_eq!(ra.stdout, rb.stdout);
}
