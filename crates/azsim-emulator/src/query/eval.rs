//! Running a parsed query over JSON documents: the filter (three-valued: a missing property or
//! a comparison of different types is undefined, and only a true condition keeps a row), then
//! the projection, or the grouping with its counts, then `TOP`.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{Map, Value};

use super::{CmpOp, Cond, Func, Item, Operand, Projection, Query};

/// What a query produced: its rows and their `x-ms-item-type`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub rows: Vec<Value>,
    /// `DeviceTwin`, `ModuleTwin` or `DeviceJob` for `SELECT *`, `JSON` otherwise.
    pub item_type: &'static str,
}

/// A condition's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    True,
    False,
    Undefined,
}

impl From<bool> for Tri {
    fn from(b: bool) -> Tri {
        if b { Tri::True } else { Tri::False }
    }
}

fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, seg| v.as_object()?.get(seg))
}

fn operand<'a>(doc: &'a Value, o: &'a Operand) -> Option<&'a Value> {
    match o {
        Operand::Path(p) => lookup(doc, p),
        Operand::Literal(v) => Some(v),
    }
}

/// Equality of two values of the same JSON type; `None` when the types differ.
fn equal(a: &Value, b: &Value) -> Option<bool> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Some(x.as_f64() == y.as_f64()),
        (Value::String(x), Value::String(y)) => Some(x == y),
        (Value::Bool(x), Value::Bool(y)) => Some(x == y),
        (Value::Null, Value::Null) => Some(true),
        (Value::Object(_), Value::Object(_)) | (Value::Array(_), Value::Array(_)) => Some(a == b),
        _ => None,
    }
}

/// Order of two numbers or two strings; `None` for anything else.
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn compare(a: &Value, op: CmpOp, b: &Value) -> Tri {
    let r = match op {
        CmpOp::Eq => equal(a, b),
        CmpOp::Ne => equal(a, b).map(|e| !e),
        CmpOp::Lt => order(a, b).map(Ordering::is_lt),
        CmpOp::Le => order(a, b).map(Ordering::is_le),
        CmpOp::Gt => order(a, b).map(Ordering::is_gt),
        CmpOp::Ge => order(a, b).map(Ordering::is_ge),
    };
    r.map_or(Tri::Undefined, Tri::from)
}

fn call(f: Func, args: &[Operand], doc: &Value) -> Tri {
    let first = args.first().and_then(|a| operand(doc, a));
    let is = |pred: fn(&Value) -> bool| first.map_or(Tri::False, |v| pred(v).into());
    match f {
        Func::IsDefined => first.is_some().into(),
        Func::IsNull => is(Value::is_null),
        Func::IsBool => is(Value::is_boolean),
        Func::IsNumber => is(Value::is_number),
        Func::IsString => is(Value::is_string),
        Func::IsObject => is(Value::is_object),
        Func::IsArray => is(Value::is_array),
        Func::IsPrimitive => is(|v| !v.is_object() && !v.is_array()),
        Func::StartsWith | Func::EndsWith => {
            let second = args.get(1).and_then(|a| operand(doc, a));
            match (first, second) {
                (Some(Value::String(s)), Some(Value::String(p))) => {
                    if f == Func::StartsWith {
                        s.starts_with(p.as_str()).into()
                    } else {
                        s.ends_with(p.as_str()).into()
                    }
                }
                _ => Tri::Undefined,
            }
        }
    }
}

fn eval(c: &Cond, doc: &Value) -> Tri {
    match c {
        Cond::Or(a, b) => match (eval(a, doc), eval(b, doc)) {
            (Tri::True, _) | (_, Tri::True) => Tri::True,
            (Tri::False, Tri::False) => Tri::False,
            _ => Tri::Undefined,
        },
        Cond::And(a, b) => match (eval(a, doc), eval(b, doc)) {
            (Tri::False, _) | (_, Tri::False) => Tri::False,
            (Tri::True, Tri::True) => Tri::True,
            _ => Tri::Undefined,
        },
        Cond::Not(a) => match eval(a, doc) {
            Tri::True => Tri::False,
            Tri::False => Tri::True,
            Tri::Undefined => Tri::Undefined,
        },
        Cond::Cmp(a, op, b) => match (operand(doc, a), operand(doc, b)) {
            (Some(x), Some(y)) => compare(x, *op, y),
            _ => Tri::Undefined,
        },
        Cond::In {
            operand: o,
            list,
            negated,
        } => {
            let Some(v) = operand(doc, o) else {
                return Tri::Undefined;
            };
            let found = list.iter().any(|l| equal(v, l) == Some(true));
            (found != *negated).into()
        }
        Cond::Call(f, args) => call(*f, args, doc),
    }
}

/// Whether `doc` satisfies `cond`.
pub(super) fn holds(cond: &Cond, doc: &Value) -> bool {
    eval(cond, doc) == Tri::True
}

/// The name a projected field is shown under: its alias, or its path's last segment.
fn field_name<'a>(path: &'a [String], alias: &'a Option<String>) -> &'a str {
    alias
        .as_deref()
        .unwrap_or_else(|| path.last().map_or("", String::as_str))
}

fn project(items: &[Item], doc: &Value) -> Value {
    let mut out = Map::new();
    for i in items {
        if let Item::Field { path, alias } = i
            && let Some(v) = lookup(doc, path)
        {
            out.insert(field_name(path, alias).to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// One row per group (in order of first appearance): its keys and counts.
fn group(q: &Query, items: &[Item], docs: &[Value]) -> Vec<Value> {
    let mut groups: Vec<(&Value, u64)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for doc in docs {
        let key: Vec<Option<&Value>> = q.group_by.iter().map(|p| lookup(doc, p)).collect();
        let key = serde_json::to_string(&key).unwrap_or_default();
        match index.get(&key) {
            Some(&n) => groups[n].1 += 1,
            None => {
                index.insert(key, groups.len());
                groups.push((doc, 1));
            }
        }
    }
    // COUNT() over no rows and no GROUP BY is one row of 0, as in SQL.
    if groups.is_empty() && q.group_by.is_empty() {
        groups.push((&Value::Null, 0));
    }
    groups
        .into_iter()
        .map(|(sample, count)| {
            let mut out = Map::new();
            for i in items {
                match i {
                    Item::Field { path, alias } => {
                        if let Some(v) = lookup(sample, path) {
                            out.insert(field_name(path, alias).to_string(), v.clone());
                        }
                    }
                    Item::Count { alias } => {
                        out.insert(
                            alias.clone().unwrap_or_else(|| "$1".into()),
                            Value::from(count),
                        );
                    }
                }
            }
            Value::Object(out)
        })
        .collect()
}

impl Query {
    /// Whether each row is a group (`GROUP BY`, `COUNT()`) rather than one document's.
    pub fn is_aggregate(&self) -> bool {
        match &self.projection {
            Projection::All => false,
            Projection::Items(items) => {
                !self.group_by.is_empty() || items.iter().any(|i| matches!(i, Item::Count { .. }))
            }
        }
    }

    /// The `x-ms-item-type` of its rows.
    pub fn item_type(&self) -> &'static str {
        match self.projection {
            Projection::All => self.source.item_type(),
            Projection::Items(_) => "JSON",
        }
    }

    /// Whether `doc` passes the `WHERE` clause (any document does without one).
    pub fn keeps(&self, doc: &Value) -> bool {
        self.condition.as_ref().is_none_or(|c| holds(c, doc))
    }

    /// The row a kept document gives when the query is not an aggregate: the document itself
    /// for `SELECT *`, else its projection.
    pub fn row(&self, doc: Value) -> Value {
        match &self.projection {
            Projection::All => doc,
            Projection::Items(items) => project(items, &doc),
        }
    }
}

/// Runs `q` over `docs` (the documents of `q.source`, in the hub's order).
pub fn run(q: &Query, docs: Vec<Value>) -> Outcome {
    let kept: Vec<Value> = docs.into_iter().filter(|d| q.keeps(d)).collect();
    let mut rows = match &q.projection {
        Projection::Items(items) if q.is_aggregate() => group(q, items, &kept),
        _ => kept.into_iter().map(|d| q.row(d)).collect(),
    };
    if let Some(n) = q.top {
        rows.truncate(usize::try_from(n).unwrap_or(usize::MAX));
    }
    Outcome {
        rows,
        item_type: q.item_type(),
    }
}
