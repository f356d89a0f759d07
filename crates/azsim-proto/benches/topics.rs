//! Topic and property-bag hot paths: what the device does per received C2D message, what it
//! does per telemetry send, and what the hub does per PUBLISH.
//!
//! `cargo bench -p azsim-proto --bench topics -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use azsim_proto::property_bag::{SystemProperties, SystemProperty};
use azsim_proto::topic::{self, DeviceTopic, Identity};
use criterion::{Criterion, criterion_group, criterion_main};

/// A C2D topic as the hub sends it, with 5 properties (3 system, 2 application).
const C2D_5: &str = "devices/my-device-1/messages/devicebound/%24.mid=84c08717-2be1-404c-9e5d-62f4565ca58b&%24.to=%2Fdevices%2Fmy-device-1%2Fmessages%2FdeviceBound&iothub-ack=full&alert=high%20temp&zone=b%2F7";

fn c2d_parse(c: &mut Criterion) {
    c.bench_function("parse C2D topic, 5 properties, find $.mid", |b| {
        b.iter(|| {
            let t = topic::parse_c2d(black_box(C2D_5)).unwrap();
            let mid = t.bag.system(SystemProperty::MessageId);
            black_box((t.device_id, mid))
        });
    });
    c.bench_function("parse C2D topic, 5 properties, decode every pair", |b| {
        let mut buf = [0u8; 128];
        b.iter(|| {
            let t = topic::parse_c2d(black_box(C2D_5)).unwrap();
            let mut n = 0usize;
            for p in t.bag {
                n += p.name.decode(&mut buf).unwrap().len();
                if let Some(v) = p.value {
                    n += v.decode(&mut buf).unwrap().len();
                }
            }
            black_box(n)
        });
    });
}

fn d2c_build(c: &mut Criterion) {
    let sys = SystemProperties {
        message_id: Some("6b822696-f75a-46f5-8b02-0680db65abf5"),
        content_type: Some("application/json"),
        content_encoding: Some("utf-8"),
        ..SystemProperties::default()
    };
    let app = [("temperatureAlert", "true"), ("zone", "b/7")];
    c.bench_function("build D2C topic, 3 system + 2 app properties", |b| {
        let mut out = heapless::String::<256>::new();
        b.iter(|| {
            out.clear();
            topic::write_telemetry_topic(
                &mut out,
                Identity::device(black_box("my-device-1")),
                black_box(&sys),
                black_box(app),
            )
            .unwrap();
            black_box(out.len())
        });
    });
}

fn hub_classify(c: &mut Criterion) {
    let me = Identity::device("my-device-1");
    let telemetry = "devices/my-device-1/messages/events/%24.mid=6b822696-f75a-46f5-8b02-0680db65abf5&%24.ct=application%2Fjson&%24.ce=utf-8&temperatureAlert=true&zone=b%2F7";
    c.bench_function("hub: classify telemetry PUBLISH (validates bag)", |b| {
        b.iter(|| {
            let t = topic::parse_device_publish(black_box(telemetry), black_box(me)).unwrap();
            black_box(matches!(t, DeviceTopic::Telemetry { .. }))
        });
    });
    c.bench_function("hub: classify method response PUBLISH", |b| {
        b.iter(|| {
            let t = topic::parse_device_publish(black_box("$iothub/methods/res/200/?$rid=17"), me)
                .unwrap();
            black_box(t)
        });
    });
}

criterion_group!(benches, c2d_parse, d2c_build, hub_classify);
criterion_main!(benches);
