//! Property tests: sign/parse/verify round trips and forgeries, connection string and username
//! build/parse round trips, and parsers that never panic.

use azsim_proto::connection_string::{ConnectionString, Kind};
use azsim_proto::encoding::{self, Encoded};
use azsim_proto::sas::{self, Key, Token, VerifyError};
use azsim_proto::username::{self, Username};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;

// base64 is built without `alloc` (the crate is no_std), so the tests use slices too.
fn b64_encode(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len().div_ceil(3) * 4];
    let n = STANDARD.encode_slice(bytes, &mut out).unwrap();
    out.truncate(n);
    String::from_utf8(out).unwrap()
}

fn b64_decode(text: &str) -> Vec<u8> {
    let mut out = vec![0u8; text.len()];
    let n = STANDARD.decode_slice(text, &mut out).unwrap();
    out.truncate(n);
    out
}

/// Azure's device/module id alphabet: alphanumerics and `- . % _ * ? ! ( ) , : = @ $ '`.
const ID: &str = "[A-Za-z0-9\\-.%_*?!(),:=@$']{1,40}";
const HOST: &str = "[a-z0-9][a-z0-9\\-]{0,20}(\\.[a-z0-9\\-]{1,12}){0,3}";

fn key_b64() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<u8>(), 1..=96).prop_map(|k| b64_encode(&k))
}

fn resource() -> impl Strategy<Value = (String, String)> {
    // (resource uri, a different resource that it must not cover)
    prop_oneof![
        (HOST, ID).prop_map(|(h, d)| (format!("{h}/devices/{d}"), format!("{h}/devices/{d}x"))),
        (HOST, ID, ID).prop_map(|(h, d, m)| (
            format!("{h}/devices/{d}/modules/{m}"),
            format!("{h}/devices/{d}/modules/{m}-other")
        )),
        (HOST, ID).prop_map(|(s, r)| (
            format!("{s}/registrations/{r}"),
            format!("{s}x/registrations/{r}")
        )),
        HOST.prop_map(|h| (h.clone(), format!("{h}x/devices/d"))),
    ]
}

fn replace_sig(token: &str, new_sig_b64: &str) -> String {
    let t = Token::parse(token).unwrap();
    let enc = Encoded(new_sig_b64).to_string();
    token.replacen(&format!("sig={}", t.sig()), &format!("sig={enc}"), 1)
}

proptest! {
    #[test]
    fn sign_parse_verify_round_trips(
        (uri, other) in resource(),
        key in key_b64(),
        expiry in 1u64..=u64::MAX,
        policy in proptest::option::of("[A-Za-z0-9_]{1,20}"),
    ) {
        let mut token = String::new();
        sas::sign(&mut token, uri.as_str(), &key, expiry, policy.as_deref()).unwrap();
        let t = Token::parse(&token).unwrap();
        prop_assert_eq!(t.expiry(), expiry);
        prop_assert_eq!(t.policy(), policy.as_deref());
        let mut decoded = String::new();
        t.write_resource(&mut decoded).unwrap();
        prop_assert_eq!(&decoded, &uri);
        prop_assert_eq!(sas::verify(&t, &key, &uri, expiry - 1), Ok(()));
        // The host in any case; the rest (ids) exactly. A parent covers its children.
        let (host, path) = uri.split_once('/').unwrap_or((uri.as_str(), ""));
        let upper_host = if path.is_empty() {
            host.to_ascii_uppercase()
        } else {
            format!("{}/{path}", host.to_ascii_uppercase())
        };
        prop_assert_eq!(sas::verify(&t, &key, &upper_host, 0), Ok(()));
        if path.bytes().any(|b| b.is_ascii_lowercase()) {
            let upper_path = format!("{host}/{}", path.to_ascii_uppercase());
            prop_assert_eq!(
                sas::verify(&t, &key, &upper_path, 0),
                Err(VerifyError::ResourceMismatch)
            );
        }
        prop_assert_eq!(sas::verify(&t, &key, &format!("{uri}/child"), 0), Ok(()));
        prop_assert_eq!(
            sas::verify(&t, &key, &uri, expiry),
            Err(VerifyError::Expired { se: expiry, now: expiry })
        );
        prop_assert_eq!(sas::verify(&t, &key, &other, 0), Err(VerifyError::ResourceMismatch));
        // The key never shows in Debug.
        let dbg = format!("{t:?} {:?}", Key::from_base64(&key).unwrap());
        prop_assert!(!dbg.contains(t.sig()));
    }

    #[test]
    fn any_single_bit_flip_of_the_signature_fails(
        (uri, _) in resource(),
        key in key_b64(),
        expiry in 1u64..=u64::MAX,
        bit in 0usize..256,
    ) {
        let mut token = String::new();
        sas::sign(&mut token, uri.as_str(), &key, expiry, None).unwrap();
        let t = Token::parse(&token).unwrap();
        let mut b64 = [0u8; 64];
        let mut raw = b64_decode(encoding::decode(t.sig(), &mut b64).unwrap());
        raw[bit / 8] ^= 1 << (bit % 8);
        let forged = replace_sig(&token, &b64_encode(&raw));
        let f = Token::parse(&forged).unwrap();
        prop_assert_eq!(sas::verify(&f, &key, &uri, 0), Err(VerifyError::BadSignature));
    }

    #[test]
    fn another_key_fails(
        (uri, _) in resource(),
        key in key_b64(),
        other in key_b64(),
        expiry in 1u64..=u64::MAX,
    ) {
        prop_assume!(b64_decode(&key) != b64_decode(&other));
        let mut token = String::new();
        sas::sign(&mut token, uri.as_str(), &key, expiry, None).unwrap();
        let t = Token::parse(&token).unwrap();
        prop_assert_eq!(sas::verify(&t, &other, &uri, 0), Err(VerifyError::BadSignature));
        let d = sas::diagnose(&t, Some(&other), Some(&uri), 0).unwrap();
        prop_assert_eq!(d.signature_matches, Some(false));
        prop_assert_eq!(d.resource_covers, Some(true));
    }

    #[test]
    fn connection_string_build_parse_round_trips(
        host in HOST,
        port in proptest::option::of(1u16..),
        device in ID.prop_filter("no ';'", |s| !s.contains(';')),
        module in proptest::option::of(ID),
        policy in "[A-Za-z0-9_]{1,20}",
        key in key_b64(),
        service in any::<bool>(),
    ) {
        let host_name = match port { Some(p) => format!("{host}:{p}"), None => host.clone() };
        let cs = if service {
            ConnectionString::service(&host_name, &policy, &key).unwrap()
        } else if let Some(m) = module.as_deref() {
            ConnectionString::module(&host_name, &device, m, &key).unwrap()
        } else {
            ConnectionString::device(&host_name, &device, &key).unwrap()
        };
        let mut full = String::new();
        cs.write_with_secret(&mut full).unwrap();
        let back = ConnectionString::parse(&full).unwrap();
        prop_assert_eq!(back, cs);
        prop_assert_eq!(back.host(), host.as_str());
        prop_assert_eq!(back.port(), port);
        let want = match (service, module.is_some()) {
            (true, _) => Kind::Service,
            (false, true) => Kind::Module,
            (false, false) => Kind::Device,
        };
        prop_assert_eq!(back.kind(), want);
        prop_assert!(!back.to_string().contains(&key));
        let dbg = format!("{back:?}");
        prop_assert!(!dbg.contains(&key));
    }

    #[test]
    fn username_build_parse_round_trips(
        host in HOST,
        device in ID,
        module in proptest::option::of(ID),
        version in "[0-9a-z.+\\-/ ]{1,16}",
        model in proptest::option::of("dtmi:[a-zA-Z:_;0-9 /?&=]{1,40}"),
    ) {
        let mut u = String::new();
        username::write_username(&mut u, &host, &device, module.as_deref(), &version, model.as_deref()).unwrap();
        let p = Username::parse(&u).unwrap();
        prop_assert_eq!(p.host, host.as_str());
        prop_assert_eq!(p.device_id, device.as_str());
        prop_assert_eq!(p.module_id, module.as_deref());
        prop_assert_eq!(p.api_version.unwrap().to_string(), username::API_VERSION);
        prop_assert_eq!(p.device_client_type.unwrap().to_string(), format!("azsim/{version}"));
        prop_assert_eq!(p.model_id.map(|m| m.to_string()), model);
        let mut client = String::new();
        username::write_client_id(&mut client, &device, module.as_deref()).unwrap();
        prop_assert!(p.matches_client_id(&client));
    }

    #[test]
    fn parsers_never_panic(input in ".{0,200}") {
        let _ = ConnectionString::parse(&input);
        let _ = Username::parse(&input);
        if let Ok(t) = Token::parse(&input) {
            let _ = sas::diagnose(&t, Some("dGVzdFN0cmluZzE="), Some("h/devices/d"), 0);
        }
    }
}
