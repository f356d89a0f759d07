//! `connection_string::ConnectionString::parse` (and the generic `pairs` layer): never panics;
//! what it accepts writes back into a string that parses to the same value; `Display` and
//! `Debug` never show the key or the signature.
#![no_main]

use azsim_proto::connection_string::{self, ConnectionString};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = connection_string::pairs(s).count();
    let Ok(cs) = ConnectionString::parse(s) else {
        return;
    };
    let _ = (cs.kind(), cs.host(), cs.port(), cs.resource(), cs.token());
    let _ = connection_string::split_host_name(cs.host());

    let mut full = String::new();
    cs.write_with_secret(&mut full).unwrap();
    assert_eq!(
        ConnectionString::parse(&full),
        Ok(cs),
        "written form parses differently"
    );

    let shown = format!("{cs} {cs:?}");
    for secret in [cs.shared_access_key(), cs.shared_access_signature()]
        .into_iter()
        .flatten()
    {
        // Only meaningful when the secret is not also spelled by some other visible part.
        let visible = [
            cs.host_name(),
            cs.device_id().unwrap_or(""),
            cs.module_id().unwrap_or(""),
            cs.shared_access_key_name().unwrap_or(""),
            cs.gateway_host_name().unwrap_or(""),
        ];
        let elsewhere = visible.iter().any(|v| v.contains(secret))
            || "ConnectionString host_name device_id module_id shared_access_key_name shared_access_key shared_access_signature gateway_host_name x509 HostName DeviceId ModuleId SharedAccessKeyName SharedAccessKey SharedAccessSignature GatewayHostName <redacted> Some None true false".contains(secret);
        if !elsewhere {
            assert!(!shown.contains(secret), "secret shown");
        }
    }
});
