//! `username::Username::parse` and `parse_client_id`: never panic; the parsed identity rebuilds
//! (with `write_username`) into a username that parses to the same host, device and module, and
//! matches its own client id.
#![no_main]

use azsim_proto::username::{self, Username};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((d, m)) = username::parse_client_id(s) {
        let mut id = String::new();
        username::write_client_id(&mut id, d, m).unwrap();
        assert_eq!(id, s);
    }
    let Ok(u) = Username::parse(s) else {
        return;
    };
    let mut client_id = String::new();
    u.write_client_id(&mut client_id).unwrap();
    assert!(
        u.matches_client_id(&client_id),
        "{s:?} vs client id {client_id:?}"
    );

    let mut model = String::new();
    let model = u.model_id.map(|m| {
        let mut buf = vec![0u8; m.raw().len()];
        model.push_str(m.decode(&mut buf).expect("escapes were checked"));
        model.as_str()
    });
    let mut rebuilt = String::new();
    username::write_username(
        &mut rebuilt,
        u.host,
        u.device_id,
        u.module_id,
        "0.1.0",
        model,
    )
    .unwrap();
    let again = Username::parse(&rebuilt).expect("our own username parses");
    assert_eq!(
        (again.host, again.device_id, again.module_id),
        (u.host, u.device_id, u.module_id),
        "{s:?} rebuilt as {rebuilt:?}"
    );
    if let Some(m) = model {
        assert!(again.model_id.is_some_and(|p| p.eq_decoded(m)));
    }
});
