//! The query grammar, with nom. Every token parser skips the blanks before it, so an error's
//! position is where the expected token should have started. Of two failed alternatives the
//! one that got further is reported (the error type's `or`), which names the real mistake in
//! `a = 1 AND b = ` (a missing operand at the end) rather than the first alternative tried.

use std::borrow::Cow;

use nom::branch::alt;
use nom::bytes::complete::{tag, tag_no_case, take_while, take_while1};
use nom::character::complete::{char, digit1, multispace0};
use nom::combinator::{map, opt, recognize};
use nom::error::{ErrorKind, ParseError};
use nom::sequence::{pair, preceded, tuple};
use nom::{Err, IResult};
use serde_json::Value;

use super::{CmpOp, Cond, Func, Item, Operand, Path, Projection, Query, QueryError, Source};

/// Where a parse failed, as the rest of the input there, and why.
#[derive(Debug)]
struct PErr<'a> {
    at: &'a str,
    reason: Cow<'static, str>,
}

impl<'a> ParseError<&'a str> for PErr<'a> {
    fn from_error_kind(input: &'a str, _kind: ErrorKind) -> Self {
        PErr {
            at: input,
            reason: Cow::Borrowed("unexpected input"),
        }
    }

    fn append(_input: &'a str, _kind: ErrorKind, other: Self) -> Self {
        other
    }

    fn or(self, other: Self) -> Self {
        // The alternative that consumed more input failed closer to the real mistake; of two
        // that failed at the same place, the last one tried says what was expected.
        if other.at.len() <= self.at.len() {
            other
        } else {
            self
        }
    }
}

type Res<'a, T> = IResult<&'a str, T, PErr<'a>>;

fn fail<'a, T>(at: &'a str, reason: impl Into<Cow<'static, str>>) -> Res<'a, T> {
    Err(Err::Error(PErr {
        at,
        reason: reason.into(),
    }))
}

/// An error no alternative can recover from (a broken token).
fn fatal<'a, T>(at: &'a str, reason: &'static str) -> Res<'a, T> {
    Err(Err::Failure(PErr {
        at,
        reason: Cow::Borrowed(reason),
    }))
}

/// Runs `p`; a failure no further than the next token becomes "expected `what`" there.
fn expect<'a, O>(
    what: &'static str,
    mut p: impl FnMut(&'a str) -> Res<'a, O>,
) -> impl FnMut(&'a str) -> Res<'a, O> {
    move |input: &'a str| {
        let start = input.trim_start();
        match p(input) {
            Err(Err::Error(e)) if e.at.len() >= start.len() => {
                fail(start, format!("expected {what}"))
            }
            other => other,
        }
    }
}

/// After the first error, nothing else is tried: the error is the query's.
fn cut<'a, O>(mut p: impl FnMut(&'a str) -> Res<'a, O>) -> impl FnMut(&'a str) -> Res<'a, O> {
    move |input| match p(input) {
        Err(Err::Error(e)) => Err(Err::Failure(e)),
        other => other,
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '$'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '-'
}

/// Words that cannot start a property path.
const RESERVED: [&str; 13] = [
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "AS", "GROUP", "BY", "TOP", "COUNT",
    "ORDER",
];

/// A keyword, case-insensitive, not followed by an identifier character.
fn kw<'a>(word: &'static str) -> impl FnMut(&'a str) -> Res<'a, &'a str> {
    move |input: &'a str| {
        let start = input.trim_start();
        let (rest, k) = tag_no_case(word)(start)?;
        if rest.starts_with(is_ident_char) {
            return fail(start, format!("expected {word}"));
        }
        Ok((rest, k))
    }
}

/// A punctuation token.
fn sym<'a>(s: &'static str) -> impl FnMut(&'a str) -> Res<'a, &'a str> {
    preceded(multispace0, tag(s))
}

fn raw_ident(input: &str) -> Res<'_, &str> {
    recognize(pair(take_while1(is_ident_start), take_while(is_ident_char)))(input)
}

/// An identifier that is not a reserved word (an alias, a path's first segment).
fn ident(input: &str) -> Res<'_, String> {
    let start = input.trim_start();
    let (rest, id) = raw_ident(start)?;
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(id)) {
        return fail(
            start,
            format!("unexpected keyword {}", id.to_ascii_uppercase()),
        );
    }
    Ok((rest, id.to_string()))
}

fn path(input: &str) -> Res<'_, Path> {
    let (mut rest, first) = ident(input)?;
    let mut out = vec![first];
    while let Some(after_dot) = rest.strip_prefix('.') {
        let (r, seg) = expect("a property name", raw_ident)(after_dot)?;
        out.push(seg.to_string());
        rest = r;
    }
    Ok((rest, out))
}

fn string_lit(input: &str) -> Res<'_, Value> {
    let start = input.trim_start();
    let Some(quote) = start.chars().next().filter(|c| *c == '\'' || *c == '"') else {
        return fail(start, "expected a string");
    };
    let mut out = String::new();
    let mut chars = start[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, e)) => out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    other => other,
                }),
                None => break,
            },
            c if c == quote => return Ok((&start[1 + i + 1..], Value::String(out))),
            c => out.push(c),
        }
    }
    fatal(start, "unterminated string")
}

fn number_lit(input: &str) -> Res<'_, Value> {
    let start = input.trim_start();
    let (rest, text) = recognize(tuple((
        opt(char('-')),
        digit1,
        opt(pair(char('.'), digit1)),
        opt(tuple((
            alt((char('e'), char('E'))),
            opt(alt((char('+'), char('-')))),
            digit1,
        ))),
    )))(start)?;
    if rest.starts_with(is_ident_char) {
        return fatal(start, "malformed number");
    }
    let v = match text.parse::<i64>() {
        Ok(i) => Value::from(i),
        Err(_) => match text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            Some(n) => Value::Number(n),
            None => return fatal(start, "number out of range"),
        },
    };
    Ok((rest, v))
}

fn literal(input: &str) -> Res<'_, Value> {
    alt((
        string_lit,
        number_lit,
        map(kw("true"), |_| Value::Bool(true)),
        map(kw("false"), |_| Value::Bool(false)),
        map(kw("null"), |_| Value::Null),
    ))(input)
}

fn operand(input: &str) -> Res<'_, Operand> {
    expect(
        "a property or a value",
        alt((map(literal, Operand::Literal), map(path, Operand::Path))),
    )(input)
}

fn cmp_op(input: &str) -> Res<'_, CmpOp> {
    preceded(
        multispace0,
        alt((
            map(tag("<="), |_| CmpOp::Le),
            map(tag(">="), |_| CmpOp::Ge),
            map(tag("<>"), |_| CmpOp::Ne),
            map(tag("!="), |_| CmpOp::Ne),
            map(tag("="), |_| CmpOp::Eq),
            map(tag("<"), |_| CmpOp::Lt),
            map(tag(">"), |_| CmpOp::Gt),
        )),
    )(input)
}

fn in_list(input: &str) -> Res<'_, Vec<Value>> {
    let (mut rest, _) = expect("[", sym("["))(input)?;
    let mut out = Vec::new();
    if let Ok((r, _)) = sym("]")(rest) {
        return Ok((r, out));
    }
    loop {
        let (r, v) = expect("a value", literal)(rest)?;
        out.push(v);
        if let Ok((r, _)) = sym(",")(r) {
            rest = r;
            continue;
        }
        let (r, _) = expect(", or ]", sym("]"))(r)?;
        return Ok((r, out));
    }
}

fn func_name(input: &str) -> Res<'_, Func> {
    let start = input.trim_start();
    let (rest, name) = raw_ident(start)?;
    if !rest.trim_start().starts_with('(') {
        return fail(start, "not a function call");
    }
    match Func::ALL
        .iter()
        .find(|f| f.name().eq_ignore_ascii_case(name))
    {
        Some(f) => Ok((rest, *f)),
        None => Err(Err::Failure(PErr {
            at: start,
            reason: Cow::Owned(format!("unknown function {name}")),
        })),
    }
}

fn call(input: &str) -> Res<'_, Cond> {
    let (rest, f) = func_name(input)?;
    let (mut rest, _) = sym("(")(rest)?;
    let mut args = Vec::new();
    loop {
        let (r, a) = operand(rest)?;
        args.push(a);
        rest = r;
        if args.len() == f.arity() {
            break;
        }
        let (r, _) = expect(",", sym(","))(rest)?;
        rest = r;
    }
    let (rest, _) = expect(")", sym(")"))(rest)?;
    Ok((rest, Cond::Call(f, args)))
}

fn comparison(input: &str) -> Res<'_, Cond> {
    let (rest, left) = operand(input)?;
    if let Ok((r, _)) = kw("IN")(rest) {
        let (r, list) = in_list(r)?;
        return Ok((
            r,
            Cond::In {
                operand: left,
                list,
                negated: false,
            },
        ));
    }
    if let Ok((r, _)) = pair(kw("NOT"), kw("IN"))(rest) {
        let (r, list) = in_list(r)?;
        return Ok((
            r,
            Cond::In {
                operand: left,
                list,
                negated: true,
            },
        ));
    }
    let (rest, op) = expect("a comparison operator", cmp_op)(rest)?;
    let (rest, right) = operand(rest)?;
    Ok((rest, Cond::Cmp(left, op, right)))
}

fn primary(input: &str) -> Res<'_, Cond> {
    if let Ok((rest, _)) = sym("(")(input) {
        let (rest, c) = or_cond(rest)?;
        let (rest, _) = expect(")", sym(")"))(rest)?;
        return Ok((rest, c));
    }
    alt((call, comparison))(input)
}

fn unary(input: &str) -> Res<'_, Cond> {
    if let Ok((rest, _)) = kw("NOT")(input) {
        let (rest, c) = unary(rest)?;
        return Ok((rest, Cond::Not(Box::new(c))));
    }
    primary(input)
}

fn and_cond(input: &str) -> Res<'_, Cond> {
    let (mut rest, mut c) = unary(input)?;
    while let Ok((r, _)) = kw("AND")(rest) {
        let (r, right) = unary(r)?;
        c = Cond::And(Box::new(c), Box::new(right));
        rest = r;
    }
    Ok((rest, c))
}

fn or_cond(input: &str) -> Res<'_, Cond> {
    let (mut rest, mut c) = and_cond(input)?;
    while let Ok((r, _)) = kw("OR")(rest) {
        let (r, right) = and_cond(r)?;
        c = Cond::Or(Box::new(c), Box::new(right));
        rest = r;
    }
    Ok((rest, c))
}

fn alias(input: &str) -> Res<'_, Option<String>> {
    match kw("AS")(input) {
        Ok((rest, _)) => map(expect("an alias", ident), Some)(rest),
        Err(_) => Ok((input, None)),
    }
}

fn item(input: &str) -> Res<'_, Item> {
    if let Ok((rest, _)) = kw("COUNT")(input) {
        let (rest, _) = expect("(", sym("("))(rest)?;
        let (rest, _) = expect(")", sym(")"))(rest)?;
        let (rest, alias) = alias(rest)?;
        return Ok((rest, Item::Count { alias }));
    }
    let (rest, path) = expect("a property, * or COUNT()", path)(input)?;
    let (rest, alias) = alias(rest)?;
    Ok((rest, Item::Field { path, alias }))
}

fn projection(input: &str) -> Res<'_, Projection> {
    if let Ok((rest, _)) = sym("*")(input) {
        return Ok((rest, Projection::All));
    }
    let (mut rest, first) = item(input)?;
    let mut items = vec![first];
    while let Ok((r, _)) = sym(",")(rest) {
        let (r, i) = item(r)?;
        items.push(i);
        rest = r;
    }
    Ok((rest, Projection::Items(items)))
}

fn source(input: &str) -> Res<'_, Source> {
    let (rest, _) = expect("devices", kw("devices"))(input)?;
    let Some(after) = rest.strip_prefix('.') else {
        return Ok((rest, Source::Devices));
    };
    expect(
        "modules or jobs",
        alt((
            map(kw("modules"), |_| Source::Modules),
            map(kw("jobs"), |_| Source::Jobs),
        )),
    )(after)
}

fn top(input: &str) -> Res<'_, Option<u64>> {
    let Ok((rest, _)) = kw("TOP")(input) else {
        return Ok((input, None));
    };
    let start = rest.trim_start();
    let (rest, digits) = expect("a count", digit1)(start)?;
    match digits.parse::<u64>() {
        Ok(n) => Ok((rest, Some(n))),
        Err(_) => fail(start, "count out of range"),
    }
}

fn group_by(input: &str) -> Res<'_, Vec<Path>> {
    let Ok((rest, _)) = kw("GROUP")(input) else {
        return Ok((input, Vec::new()));
    };
    let (rest, _) = expect("BY", kw("BY"))(rest)?;
    let (mut rest, first) = expect("a property", path)(rest)?;
    let mut out = vec![first];
    while let Ok((r, _)) = sym(",")(rest) {
        let (r, p) = expect("a property", path)(r)?;
        out.push(p);
        rest = r;
    }
    Ok((rest, out))
}

fn select(input: &str) -> Res<'_, (Query, &str)> {
    let (rest, _) = expect("SELECT", kw("SELECT"))(input)?;
    let (rest, top) = top(rest)?;
    let projection_at = rest.trim_start();
    let (rest, projection) = cut(projection)(rest)?;
    let (rest, _) = cut(expect("FROM", kw("FROM")))(rest)?;
    let (rest, source) = cut(source)(rest)?;
    let (rest, condition) = match kw("WHERE")(rest) {
        Ok((r, _)) => map(cut(or_cond), Some)(r)?,
        Err(_) => (rest, None),
    };
    let (rest, group_by) = cut(group_by)(rest)?;
    let query = Query {
        top,
        projection,
        source,
        condition,
        group_by,
    };
    Ok((rest, (query, projection_at)))
}

/// The error for `e`, positioned in `text`.
fn to_error(text: &str, e: Err<PErr<'_>>) -> QueryError {
    match e {
        Err::Error(e) | Err::Failure(e) => {
            QueryError::at_offset(text, text.len() - e.at.len(), e.reason)
        }
        Err::Incomplete(_) => QueryError::at_offset(text, text.len(), "unexpected end of query"),
    }
}

/// The rest of the input must be blank.
fn at_end<'a>(rest: &'a str) -> Result<(), Err<PErr<'a>>> {
    let rest = rest.trim_start();
    if rest.is_empty() {
        Ok(())
    } else {
        Err(Err::Error(PErr {
            at: rest,
            reason: Cow::Borrowed("unexpected input"),
        }))
    }
}

pub(super) fn query(text: &str) -> Result<Query, QueryError> {
    let (rest, (q, projection_at)) = select(text).map_err(|e| to_error(text, e))?;
    at_end(rest).map_err(|e| to_error(text, e))?;
    let projection_offset = text.len() - projection_at.len();
    check_projection(&q)
        .map_err(|reason| QueryError::at_offset(text, projection_offset, reason))?;
    Ok(q)
}

/// `GROUP BY` shows its keys and counts, nothing else; counts without it come alone.
fn check_projection(q: &Query) -> Result<(), String> {
    let items = match &q.projection {
        Projection::All if !q.group_by.is_empty() => {
            return Err("SELECT * cannot be used with GROUP BY".into());
        }
        Projection::All => return Ok(()),
        Projection::Items(items) => items,
    };
    let has_count = items.iter().any(|i| matches!(i, Item::Count { .. }));
    for i in items {
        if let Item::Field { path, .. } = i {
            if !q.group_by.is_empty() && !q.group_by.contains(path) {
                return Err(format!(
                    "{} is neither in GROUP BY nor an aggregate",
                    path.join(".")
                ));
            }
            if q.group_by.is_empty() && has_count {
                return Err(format!(
                    "{} cannot be selected with COUNT() without GROUP BY",
                    path.join(".")
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn condition_only(text: &str) -> Result<Cond, QueryError> {
    let (rest, c) = or_cond(text).map_err(|e| to_error(text, e))?;
    at_end(rest).map_err(|e| to_error(text, e))?;
    Ok(c)
}
