//! Auth hot paths: signing a device token (every connect and renewal; goal <= 5 us), verifying
//! one (every CONNECT at the hub), parsing a connection string, building a username.
//!
//! Run: `cargo bench -p azsim-proto --bench proto -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use azsim_proto::connection_string::ConnectionString;
use azsim_proto::sas::{self, Key, Resource, Token};
use azsim_proto::username;
use criterion::{Criterion, criterion_group, criterion_main};

const KEY: &str = "NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=";
const CS: &str = "HostName=myhub.azure-devices.net;DeviceId=sensor-0042;SharedAccessKey=NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=";
const EXPIRY: u64 = 1_900_000_000;

fn resource() -> Resource<'static> {
    Resource::Device {
        host: "myhub.azure-devices.net",
        device_id: "sensor-0042",
    }
}

fn bench(c: &mut Criterion) {
    // Writers are fixed-capacity stack strings, as on the firmware.
    c.bench_function("sas/sign_device_token", |b| {
        b.iter(|| {
            let mut out = heapless::String::<256>::new();
            sas::sign(
                &mut out,
                &black_box(resource()),
                black_box(KEY),
                black_box(EXPIRY),
                None,
            )
            .unwrap();
            out
        });
    });

    let key = Key::from_base64(KEY).unwrap();
    c.bench_function("sas/sign_device_token_predecoded_key", |b| {
        b.iter(|| {
            let mut out = heapless::String::<256>::new();
            sas::sign_with_key(&mut out, &black_box(resource()), &key, EXPIRY, None).unwrap();
            out
        });
    });

    let mut token = heapless::String::<256>::new();
    sas::sign(&mut token, &resource(), KEY, EXPIRY, None).unwrap();
    c.bench_function("sas/parse_and_verify_token", |b| {
        b.iter(|| {
            let t = Token::parse(black_box(token.as_str())).unwrap();
            sas::verify(
                &t,
                black_box(KEY),
                "myhub.azure-devices.net/devices/sensor-0042",
                1_800_000_000,
            )
        });
    });

    c.bench_function("connection_string/parse_device", |b| {
        b.iter(|| ConnectionString::parse(black_box(CS)).unwrap().kind());
    });

    c.bench_function("username/build_with_model_id", |b| {
        b.iter(|| {
            let mut out = heapless::String::<256>::new();
            username::write_username(
                &mut out,
                black_box("myhub.azure-devices.net"),
                black_box("sensor-0042"),
                None,
                "0.1.0",
                Some("dtmi:com:example:Thermostat;1"),
            )
            .unwrap();
            out
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
