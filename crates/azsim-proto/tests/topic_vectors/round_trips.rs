//! Property round trips build -> parse for every topic kind and property bag.

use super::*;
use proptest::prelude::*;

/// Device and module ids: the characters IoT Hub allows, inserted verbatim.
fn ident_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9\\-.%_*?!(),:=@$']{1,24}"
}

/// Opaque text with every character that needs care in a topic.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,16}", "[&=%$/+ ?#éa€\u{1F600}]{0,12}"]
}

fn nonempty_text() -> impl Strategy<Value = String> {
    prop_oneof![".{1,16}", "[&=%$/+ ?#éa€\u{1F600}]{1,12}"]
}

fn method_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_*.!%&'|~^`\\-]{1,20}"
}

fn identity(d: &str, m: &Option<String>) -> Identity<'static> {
    let d: &'static str = Box::leak(d.to_owned().into_boxed_str());
    match m {
        Some(m) => Identity::module(d, Box::leak(m.clone().into_boxed_str())),
        None => Identity::device(d),
    }
}

prop_compose! {
    fn sys_props()(
        mid in proptest::option::of(text()),
        cid in proptest::option::of(text()),
        uid in proptest::option::of(text()),
        ct in proptest::option::of(text()),
        ce in proptest::option::of(text()),
        ctime in proptest::option::of(text()),
        exp in proptest::option::of(text()),
        to in proptest::option::of(text()),
        on in proptest::option::of(text()),
        sub in proptest::option::of(text()),
        ack in proptest::option::of(prop_oneof![
            Just(Ack::None), Just(Ack::Positive), Just(Ack::Negative), Just(Ack::Full)
        ]),
    ) -> (Vec<Option<String>>, Option<Ack>) {
        (vec![mid, cid, uid, ct, ce, ctime, exp, to, on, sub], ack)
    }
}

fn to_sys(v: &(Vec<Option<String>>, Option<Ack>)) -> SystemProperties<'_> {
    let f = |i: usize| v.0[i].as_deref();
    SystemProperties {
        message_id: f(0),
        correlation_id: f(1),
        user_id: f(2),
        content_type: f(3),
        content_encoding: f(4),
        creation_time: f(5),
        expiry: f(6),
        to: f(7),
        output_name: f(8),
        component: f(9),
        interface_id: None,
        ack: v.1,
    }
}

/// What a reader must see: system properties in `order`, then the app properties.
fn expected_pairs(
    sys: &SystemProperties<'_>,
    order: &[SystemProperty],
    app: &[(String, String)],
) -> Vec<(String, Option<String>)> {
    order
        .iter()
        .filter_map(|&p| {
            sys.get(p)
                .map(|v| (p.name().to_owned(), Some(v.to_owned())))
        })
        .chain(app.iter().map(|(k, v)| (k.clone(), Some(v.clone()))))
        .collect()
}

/// An app property whose name and value are both empty is written as `=`, which reads back
/// as one pair; a name-only empty pair is impossible (values are always `Some`).
fn app_props() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((text(), text()), 0..5)
}

proptest! {
    #[test]
    fn telemetry(d in ident_id(), m in proptest::option::of(ident_id()), sys in sys_props(), app in app_props()) {
        let ident = identity(&d, &m);
        let s = to_sys(&sys);
        let mut t = String::new();
        topic::write_telemetry_topic(&mut t, ident, &s, app.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        let bag = telemetry_bag(&t, ident);
        prop_assert_eq!(decoded_pairs(bag), expected_pairs(&s, &SystemProperties::D2C_ORDER, &app));
        if let Some(mid) = s.message_id {
            prop_assert_eq!(bag.system(SystemProperty::MessageId).map(|v| v.map(dec)), Some(Some(mid.to_owned())));
        }
        let other = Identity::device("not-the-sender");
        prop_assert_eq!(topic::parse_device_publish(&t, other), Err(TopicError::NotAllowed));
    }

    #[test]
    fn c2d(d in ident_id(), sys in sys_props(), app in app_props()) {
        let s = to_sys(&sys);
        let mut t = String::new();
        topic::write_c2d_topic(&mut t, &d, &s, app.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        let parsed = topic::parse_c2d(&t).unwrap();
        prop_assert_eq!(parsed.device_id, d.as_str());
        prop_assert_eq!(decoded_pairs(parsed.bag), expected_pairs(&s, &SystemProperties::C2D_ORDER, &app));
        prop_assert_eq!(topic::parse_hub_publish(&t), Ok(HubTopic::C2d(parsed)));
        if let Some(ack) = s.ack {
            let raw = parsed.bag.system(SystemProperty::Ack).unwrap().unwrap();
            prop_assert_eq!(Ack::parse(&dec(raw)), Ok(ack));
        }
    }

    #[test]
    fn module_input(d in "[A-Za-z0-9\\-._]{1,16}", m in "[A-Za-z0-9\\-._]{1,16}", input in nonempty_text(), sys in sys_props(), app in app_props()) {
        let s = to_sys(&sys);
        let mut t = String::new();
        topic::write_module_input_topic(&mut t, &d, &m, &input, &s, app.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        let parsed = topic::parse_module_input(&t).unwrap();
        prop_assert_eq!((parsed.device_id, parsed.module_id), (d.as_str(), m.as_str()));
        prop_assert_eq!(dec(parsed.input), input);
        prop_assert_eq!(decoded_pairs(parsed.bag), expected_pairs(&s, &SystemProperties::C2D_ORDER, &app));
        prop_assert_eq!(topic::parse_hub_publish(&t), Ok(HubTopic::ModuleInput(parsed)));
    }

    #[test]
    fn methods(name in method_name(), rid in nonempty_text(), status: u16) {
        let name = topic::MethodName::new(&name).unwrap();
        let mut t = String::new();
        topic::write_method_request(&mut t, name, &rid).unwrap();
        let r = topic::parse_method_request(&t).unwrap();
        prop_assert_eq!(r.name, name);
        prop_assert_eq!(dec(r.rid), rid.clone());
        prop_assert_eq!(topic::parse_hub_publish(&t), Ok(HubTopic::MethodRequest(r)));

        let mut t = String::new();
        topic::write_method_response(&mut t, status, &rid).unwrap();
        match topic::parse_device_publish(&t, Identity::device("d")) {
            Ok(DeviceTopic::MethodResponse { status: s, rid: r }) => {
                prop_assert_eq!(s, status);
                prop_assert_eq!(dec(r), rid);
            }
            other => prop_assert!(false, "{t}: {other:?}"),
        }
    }

    #[test]
    fn twin(rid in nonempty_text(), status: u16, version in proptest::option::of(any::<u64>()), desired: u64) {
        let ident = Identity::module("d", "m");
        let mut t = String::new();
        topic::write_twin_get(&mut t, &rid).unwrap();
        let ok = matches!(topic::parse_device_publish(&t, ident), Ok(DeviceTopic::TwinGet { rid: r }) if dec(r) == rid);
        prop_assert!(ok, "{}", t);

        let mut t = String::new();
        topic::write_twin_patch_reported(&mut t, &rid).unwrap();
        let ok = matches!(topic::parse_device_publish(&t, ident), Ok(DeviceTopic::TwinPatchReported { rid: r }) if dec(r) == rid);
        prop_assert!(ok, "{}", t);

        let mut t = String::new();
        topic::write_twin_response(&mut t, status, &rid, version).unwrap();
        let r = topic::parse_twin_response(&t).unwrap();
        prop_assert_eq!((r.status, r.version), (status, version));
        prop_assert_eq!(dec(r.rid), rid);
        prop_assert_eq!(topic::parse_hub_publish(&t), Ok(HubTopic::TwinResponse(r)));

        let mut t = String::new();
        topic::write_desired_patch(&mut t, desired).unwrap();
        prop_assert_eq!(topic::parse_desired_patch(&t), Ok(desired));
        prop_assert_eq!(topic::parse_hub_publish(&t), Ok(HubTopic::DesiredPatch { version: desired }));
    }

    #[test]
    fn dps(rid in nonempty_text(), op in nonempty_text(), status: u16, retry in proptest::option::of(any::<u32>())) {
        let mut t = String::new();
        topic::write_dps_register(&mut t, &rid).unwrap();
        let ok = matches!(topic::parse_dps_request(&t), Ok(topic::DpsRequest::Register { rid: r }) if dec(r) == rid);
        prop_assert!(ok, "{}", t);

        let mut t = String::new();
        topic::write_dps_query(&mut t, &rid, &op).unwrap();
        let ok = matches!(topic::parse_dps_request(&t),
            Ok(topic::DpsRequest::Query { rid: r, operation_id: o }) if dec(r) == rid && dec(o) == op);
        prop_assert!(ok, "{}", t);

        let mut t = String::new();
        topic::write_dps_response(&mut t, status, &rid, retry).unwrap();
        let r = topic::parse_dps_response(&t).unwrap();
        prop_assert_eq!((r.status, r.retry_after), (status, retry));
        prop_assert_eq!(dec(r.rid), rid);
    }

    #[test]
    fn filters(d in ident_id(), m in proptest::option::of(ident_id())) {
        let ident = identity(&d, &m);
        for &kind in SubscriptionKind::for_identity(ident) {
            let mut f = String::new();
            topic::write_filter(&mut f, kind, ident).unwrap();
            prop_assert_eq!(topic::classify_subscription(&f, ident), Ok(kind));
            let other = Identity { device_id: "x-other", module_id: ident.module_id };
            if matches!(kind, SubscriptionKind::C2d | SubscriptionKind::ModuleInputs) {
                prop_assert_eq!(topic::classify_subscription(&f, other), Err(TopicError::NotAllowed));
            }
        }
    }

    #[test]
    fn bag_writer_pairs(pairs in proptest::collection::vec((text(), proptest::option::of(text())), 0..6)) {
        let mut s = String::new();
        let mut w = BagWriter::new(&mut s);
        for (k, v) in &pairs {
            w.pair(k, v.as_deref()).unwrap();
        }
        // An empty name with a null value writes nothing readable, the only lossy case.
        let want: Vec<_> = pairs.iter().filter(|(k, v)| !(k.is_empty() && v.is_none())).cloned().collect();
        prop_assert_eq!(decoded_pairs(PropertyBag::new(&s)), want);
        let mut buf = [0u8; 256];
        for p in PropertyBag::new(&s) {
            prop_assert_eq!(p.name.decode(&mut buf).ok().map(str::to_owned), Some(dec(p.name)));
        }
    }
}
