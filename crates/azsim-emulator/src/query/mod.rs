//! The IoT Hub query language (`POST /devices/query`, and the `queryCondition` of a job):
//! `SELECT [TOP n] * | fields | COUNT() [AS x] FROM devices | devices.modules | devices.jobs
//! [WHERE condition] [GROUP BY fields]`, over the JSON documents the REST API shows (twins,
//! device job results).
//!
//! The grammar is in `parse.rs` (nom), the evaluation in `eval.rs`. As on Azure, keywords and
//! function names are case-insensitive, property names case-sensitive. Comparisons follow the
//! language's rule for missing properties and mixed types: the result is undefined, which is
//! neither true nor false (`NOT` of it is undefined too), and a row is kept only when its
//! condition is true. What it does not do: `ORDER BY` (Azure's twin queries do not have it),
//! arithmetic, or the routing-query functions (`LOWER`, `CONTAINS`, ...).

use std::fmt;

use serde_json::Value;

mod eval;
mod parse;

pub use eval::{Outcome, run};

/// The collection a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `FROM devices`: device twins.
    Devices,
    /// `FROM devices.modules`: module twins.
    Modules,
    /// `FROM devices.jobs`: one row per device of each job.
    Jobs,
}

impl Source {
    /// The `x-ms-item-type` of a `SELECT *` over this source.
    pub fn item_type(self) -> &'static str {
        match self {
            Source::Devices => "DeviceTwin",
            Source::Modules => "ModuleTwin",
            Source::Jobs => "DeviceJob",
        }
    }
}

/// A property path: `properties.reported.temp` is `["properties", "reported", "temp"]`.
pub type Path = Vec<String>;

/// One item of a projection list.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A property, shown under its alias or its last segment.
    Field { path: Path, alias: Option<String> },
    /// `COUNT()`, shown under its alias (`$1` without one).
    Count { alias: Option<String> },
}

/// What a query selects.
#[derive(Debug, Clone, PartialEq)]
pub enum Projection {
    /// `*`: the whole document.
    All,
    /// A list of fields and counts.
    Items(Vec<Item>),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Path(Path),
    Literal(Value),
}

/// A function of the condition grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    IsDefined,
    IsNull,
    IsBool,
    IsNumber,
    IsString,
    IsObject,
    IsArray,
    IsPrimitive,
    StartsWith,
    EndsWith,
}

impl Func {
    /// How many arguments it takes.
    pub fn arity(self) -> usize {
        match self {
            Func::StartsWith | Func::EndsWith => 2,
            _ => 1,
        }
    }

    /// Its name in the language (upper case; matched case-insensitively).
    pub fn name(self) -> &'static str {
        match self {
            Func::IsDefined => "IS_DEFINED",
            Func::IsNull => "IS_NULL",
            Func::IsBool => "IS_BOOL",
            Func::IsNumber => "IS_NUMBER",
            Func::IsString => "IS_STRING",
            Func::IsObject => "IS_OBJECT",
            Func::IsArray => "IS_ARRAY",
            Func::IsPrimitive => "IS_PRIMITIVE",
            Func::StartsWith => "STARTSWITH",
            Func::EndsWith => "ENDSWITH",
        }
    }

    /// Every function, for the parser.
    pub const ALL: [Func; 10] = [
        Func::IsDefined,
        Func::IsNull,
        Func::IsBool,
        Func::IsNumber,
        Func::IsString,
        Func::IsObject,
        Func::IsArray,
        Func::IsPrimitive,
        Func::StartsWith,
        Func::EndsWith,
    ];
}

/// A `WHERE` condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Or(Box<Cond>, Box<Cond>),
    And(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    Cmp(Operand, CmpOp, Operand),
    /// `x IN [..]`, or `x NOT IN [..]` when `negated`.
    In {
        operand: Operand,
        list: Vec<Value>,
        negated: bool,
    },
    Call(Func, Vec<Operand>),
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub top: Option<u64>,
    pub projection: Projection,
    pub source: Source,
    pub condition: Option<Cond>,
    pub group_by: Vec<Path>,
}

/// A query the hub cannot run: where (1-based line and column of the query text) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub line: usize,
    pub column: usize,
    /// What was wrong, e.g. `expected FROM`.
    pub reason: String,
    /// The text at the error (up to its next blank), empty at the end of the query.
    pub at: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SQL query parse failed due to following errors: Line {}:{} {} at input '{}'",
            self.line, self.column, self.reason, self.at
        )
    }
}

impl std::error::Error for QueryError {}

impl QueryError {
    /// The error at byte `offset` of `text`.
    pub(crate) fn at_offset(text: &str, offset: usize, reason: impl Into<String>) -> QueryError {
        let offset = offset.min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rfind('\n')
            .map_or(before.chars().count(), |n| before[n + 1..].chars().count())
            + 1;
        let at: String = text[offset..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .take(40)
            .collect();
        QueryError {
            line,
            column,
            reason: reason.into(),
            at,
        }
    }
}

/// Parses a whole query.
///
/// # Errors
/// A [`QueryError`] at the first place the text stops making sense, or naming a projection
/// that `GROUP BY` cannot show.
pub fn parse(text: &str) -> Result<Query, QueryError> {
    parse::query(text)
}

/// Parses a job's `queryCondition`: the condition of a `WHERE` clause on its own.
///
/// # Errors
/// A [`QueryError`] as [`parse`] gives.
pub fn parse_condition(text: &str) -> Result<Cond, QueryError> {
    parse::condition_only(text)
}

/// Whether `doc` satisfies `cond` (true, not false or undefined).
pub fn matches(cond: &Cond, doc: &Value) -> bool {
    eval::holds(cond, doc)
}

#[cfg(test)]
mod tests;
