//! The grammar (good queries, bad ones with their positions, a property test that printed
//! conditions parse back to themselves) and the evaluation over twin-shaped documents.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn twins() -> Vec<Value> {
    vec![
        json!({"deviceId":"alpha","status":"enabled","connectionState":"Connected",
               "tags":{"site":"oslo","floor":1},
               "properties":{"desired":{"$version":3},"reported":{"temp":21.5,"fw":"1.2.0","$version":5}}}),
        json!({"deviceId":"beta","status":"disabled","connectionState":"Disconnected",
               "tags":{"site":"oslo","floor":2},
               "properties":{"desired":{"$version":1},"reported":{"temp":30,"$version":1}}}),
        json!({"deviceId":"gamma","status":"enabled","connectionState":"Disconnected",
               "tags":{"site":"bergen"},
               "properties":{"desired":{"$version":1},"reported":{"$version":1}}}),
        json!({"deviceId":"delta","status":"enabled","connectionState":"Disconnected","tags":{},
               "properties":{"desired":{"$version":1},"reported":{"fw":"2.0.0","$version":2}}}),
    ]
}

fn ids(text: &str) -> Vec<String> {
    let q = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    run(&q, twins())
        .rows
        .iter()
        .map(|r| r["deviceId"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn where_clauses_select_the_twins_azure_would() {
    assert_eq!(
        ids("SELECT * FROM devices"),
        ["alpha", "beta", "gamma", "delta"]
    );
    assert_eq!(
        ids("select * from DEVICES where tags.site = 'oslo'"),
        ["alpha", "beta"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE tags.site != 'oslo'"),
        ["gamma"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE tags.site <> 'oslo'"),
        ["gamma"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE properties.reported.temp > 25"),
        ["beta"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE properties.reported.temp >= 21.5 AND status = 'enabled'"),
        ["alpha"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE tags.floor = 2 OR tags.site = \"bergen\""),
        ["beta", "gamma"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE NOT (tags.site = 'oslo') AND IS_DEFINED(tags.site)"),
        ["gamma"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE deviceId IN ['beta', 'delta', 'nope']"),
        ["beta", "delta"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE deviceId NOT IN ['beta', 'delta']"),
        ["alpha", "gamma"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE STARTSWITH(properties.reported.fw, '1.')"),
        ["alpha"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE endswith(deviceId, 'ta')"),
        ["beta", "delta"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE properties.reported.$version > 1"),
        ["alpha", "delta"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE connectionState = 'Connected'"),
        ["alpha"]
    );
    assert_eq!(ids("SELECT TOP 2 * FROM devices"), ["alpha", "beta"]);
}

#[test]
fn property_names_are_case_sensitive_and_keywords_are_not() {
    assert!(ids("SELECT * FROM devices WHERE DeviceId = 'alpha'").is_empty());
    assert_eq!(
        ids("sElEcT * fRoM devices WhErE deviceId = 'alpha'"),
        ["alpha"]
    );
}

#[test]
fn a_missing_property_or_a_type_mismatch_is_neither_true_nor_false() {
    // gamma and delta have no temp: neither the comparison nor its negation holds for them.
    assert_eq!(
        ids("SELECT * FROM devices WHERE NOT (properties.reported.temp > 25)"),
        ["alpha"]
    );
    assert!(ids("SELECT * FROM devices WHERE tags.floor = '1'").is_empty());
    assert_eq!(
        ids("SELECT * FROM devices WHERE tags.floor = 1 OR deviceId = 'delta'"),
        ["alpha", "delta"]
    );
}

#[test]
fn projections_groups_and_counts() {
    let q =
        parse("SELECT deviceId, properties.reported.temp FROM devices WHERE tags.site = 'oslo'")
            .unwrap();
    let out = run(&q, twins());
    assert_eq!(out.item_type, "JSON");
    assert_eq!(
        out.rows,
        [
            json!({"deviceId":"alpha","temp":21.5}),
            json!({"deviceId":"beta","temp":30})
        ]
    );
    let q =
        parse("SELECT deviceId AS id, tags.nothing FROM devices WHERE deviceId = 'gamma'").unwrap();
    assert_eq!(run(&q, twins()).rows, [json!({"id":"gamma"})]);

    let q = parse("SELECT COUNT() AS n FROM devices WHERE status = 'enabled'").unwrap();
    assert_eq!(run(&q, twins()).rows, [json!({"n":3})]);
    let q = parse("SELECT COUNT() FROM devices WHERE deviceId = 'none'").unwrap();
    assert_eq!(run(&q, twins()).rows, [json!({"$1":0})]);

    let q = parse(
        "SELECT tags.site AS site, COUNT() AS numberOfDevices FROM devices GROUP BY tags.site",
    )
    .unwrap();
    assert_eq!(
        run(&q, twins()).rows,
        [
            json!({"site":"oslo","numberOfDevices":2}),
            json!({"site":"bergen","numberOfDevices":1}),
            json!({"numberOfDevices":1}),
        ]
    );
    assert_eq!(
        parse("SELECT * FROM devices.modules").unwrap().source,
        Source::Modules
    );
    assert_eq!(
        run(&parse("SELECT * FROM devices.modules").unwrap(), vec![]).item_type,
        "ModuleTwin"
    );
    assert_eq!(
        parse("SELECT * FROM devices.jobs").unwrap().source,
        Source::Jobs
    );
}

/// `(line, column, reason)` of the error for `text`.
fn error(text: &str) -> (usize, usize, String, String) {
    let e = parse(text).expect_err(text);
    (e.line, e.column, e.reason, e.at)
}

#[test]
fn bad_queries_name_the_place_and_what_was_expected() {
    assert_eq!(
        error("SELEC * FROM devices").0..=error("SELEC * FROM devices").1,
        1..=1
    );
    assert_eq!(error("SELEC * FROM devices").2, "expected SELECT");
    let (l, c, r, at) = error("SELECT * FORM devices");
    assert_eq!(
        (l, c, r.as_str(), at.as_str()),
        (1, 10, "expected FROM", "FORM")
    );
    let (_, c, r, _) = error("SELECT * FROM things");
    assert_eq!((c, r.as_str()), (15, "expected devices"));
    let (_, c, r, _) = error("SELECT * FROM devices.twins");
    assert_eq!((c, r.as_str()), (23, "expected modules or jobs"));
    let (_, c, r, at) = error("SELECT * FROM devices WHERE tags.a = 'x' AND");
    assert_eq!(
        (c, r.as_str(), at.as_str()),
        (45, "expected a property or a value", "")
    );
    let (_, c, r, _) = error("SELECT * FROM devices WHERE tags.a == 'x'");
    assert_eq!((c, r.as_str()), (37, "expected a property or a value"));
    let (_, c, r, _) = error("SELECT * FROM devices WHERE tags.a 'x'");
    assert_eq!((c, r.as_str()), (36, "expected a comparison operator"));
    let (_, c, r, _) = error("SELECT * FROM devices WHERE deviceId IN ('a')");
    assert_eq!((c, r.as_str()), (41, "expected ["));
    let (_, c, r, _) = error("SELECT * FROM devices WHERE STARTS_WITH(deviceId, 'a')");
    assert_eq!((c, r.as_str()), (29, "unknown function STARTS_WITH"));
    let (_, c, r, _) = error("SELECT * FROM devices WHERE (status = 'enabled'");
    assert_eq!((c, r.as_str()), (48, "expected )"));
    let (_, c, r, _) = error("SELECT * FROM devices WHERE tags.a = 'x");
    assert_eq!((c, r.as_str()), (38, "unterminated string"));
    let (_, c, r, at) = error("SELECT * FROM devices WHERE status = 'enabled' LIMIT 3");
    assert_eq!(
        (c, r.as_str(), at.as_str()),
        (48, "unexpected input", "LIMIT")
    );
    let (_, c, r, _) = error("SELECT * FROM devices GROUP BY tags.site");
    assert_eq!(
        (c, r.as_str()),
        (8, "SELECT * cannot be used with GROUP BY")
    );
    let (_, _, r, _) = error("SELECT deviceId, COUNT() FROM devices GROUP BY tags.site");
    assert_eq!(r, "deviceId is neither in GROUP BY nor an aggregate");
    let (l, c, _, _) = error("SELECT *\nFROM devices\nWHERE = 3");
    assert_eq!((l, c), (3, 7));
    let e = parse("SELECT * FORM devices").unwrap_err();
    assert_eq!(
        e.to_string(),
        "SQL query parse failed due to following errors: Line 1:10 expected FROM at input 'FORM'"
    );
}

#[test]
fn a_job_condition_is_a_where_clause_on_its_own() {
    let c = parse_condition("deviceId IN ['alpha', 'gamma']").unwrap();
    let kept: Vec<_> = twins().into_iter().filter(|d| matches(&c, d)).collect();
    assert_eq!(kept.len(), 2);
    let e = parse_condition("SELECT * FROM devices").unwrap_err();
    assert_eq!(
        (e.column, e.reason.as_str()),
        (1, "expected a property or a value")
    );
}

/// Prints a condition the way a person would write it, fully parenthesised.
fn render(c: &Cond) -> String {
    fn lit(v: &Value) -> String {
        match v {
            Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
            other => other.to_string(),
        }
    }
    fn opnd(o: &Operand) -> String {
        match o {
            Operand::Path(p) => p.join("."),
            Operand::Literal(v) => lit(v),
        }
    }
    match c {
        Cond::Or(a, b) => format!("({} OR {})", render(a), render(b)),
        Cond::And(a, b) => format!("({} and {})", render(a), render(b)),
        Cond::Not(a) => format!("NOT {}", render(a)),
        Cond::Cmp(a, op, b) => {
            let op = match op {
                CmpOp::Eq => "=",
                CmpOp::Ne => "!=",
                CmpOp::Lt => "<",
                CmpOp::Le => "<=",
                CmpOp::Gt => ">",
                CmpOp::Ge => ">=",
            };
            format!("{} {op} {}", opnd(a), opnd(b))
        }
        Cond::In {
            operand,
            list,
            negated,
        } => format!(
            "{} {}IN [{}]",
            opnd(operand),
            if *negated { "NOT " } else { "" },
            list.iter().map(lit).collect::<Vec<_>>().join(", ")
        ),
        Cond::Call(f, args) => format!(
            "{}({})",
            f.name(),
            args.iter().map(opnd).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn arb_literal() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i32>().prop_map(Value::from),
        "[a-z '\\\\.]{0,8}".prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
    ]
}

fn arb_path() -> impl Strategy<Value = Path> {
    prop::collection::vec("[a-z$_][a-zA-Z0-9_]{0,6}", 1..4).prop_filter("not a keyword", |p| {
        ![
            "in", "or", "as", "by", "and", "not", "top", "from", "true", "null", "false",
        ]
        .iter()
        .any(|k| p[0].eq_ignore_ascii_case(k))
    })
}

fn arb_operand() -> impl Strategy<Value = Operand> {
    prop_oneof![
        arb_path().prop_map(Operand::Path),
        arb_literal().prop_map(Operand::Literal)
    ]
}

fn arb_cond() -> impl Strategy<Value = Cond> {
    let ops = prop_oneof![
        Just(CmpOp::Eq),
        Just(CmpOp::Ne),
        Just(CmpOp::Lt),
        Just(CmpOp::Le),
        Just(CmpOp::Gt),
        Just(CmpOp::Ge)
    ];
    let leaf = prop_oneof![
        (arb_operand(), ops, arb_operand()).prop_map(|(a, o, b)| Cond::Cmp(a, o, b)),
        (
            arb_operand(),
            prop::collection::vec(arb_literal(), 0..4),
            any::<bool>()
        )
            .prop_map(|(operand, list, negated)| Cond::In {
                operand,
                list,
                negated
            }),
        arb_path().prop_map(|p| Cond::Call(Func::IsDefined, vec![Operand::Path(p)])),
        (arb_path(), "[a-z]{0,4}").prop_map(|(p, s)| Cond::Call(
            Func::StartsWith,
            vec![Operand::Path(p), Operand::Literal(Value::from(s))]
        )),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Cond::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Cond::Or(Box::new(a), Box::new(b))),
            inner.prop_map(|a| Cond::Not(Box::new(a))),
        ]
    })
}

proptest! {
    #[test]
    fn a_printed_condition_parses_back_to_itself(c in arb_cond()) {
        let text = render(&c);
        prop_assert_eq!(parse_condition(&text).map_err(|e| e.to_string()), Ok(c));
        let q = parse(&format!("SELECT * FROM devices WHERE {text}")).map_err(|e| e.to_string());
        prop_assert!(q.is_ok(), "{:?}", q);
    }

    #[test]
    fn any_text_parses_or_fails_at_a_place_inside_it(text in "[ -~\n]{0,60}") {
        if let Err(e) = parse(&text) {
            prop_assert!(e.line >= 1 && e.column >= 1);
            prop_assert!(e.line <= text.lines().count().max(1) + 1);
        }
    }
}
