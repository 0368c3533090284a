//! Transaction operations (RFC 7047 section 5.2) and their results, including
//! the commit error that follows the last operation's result.
//!
//! Owns the wire form of `transact` requests and replies. It must not send
//! anything (that is [`crate::client`]).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::datum::{Datum, Uuid};
use crate::replica::Row;
use crate::schema::DatabaseSchema;

/// A failed transaction.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum TransactError {
    /// Operation `index` (0-based, in the order given) failed.
    #[error("operation {index} ({op}) failed: {error}: {details}")]
    OpFailed {
        /// Index of the failing operation.
        index: usize,
        /// Kind of the failing operation (`insert`, `wait`, ...).
        op: String,
        /// The error string, e.g. `constraint violation`, `timed out`.
        error: String,
        /// The server's details.
        details: String,
    },
    /// Every operation succeeded but the commit failed (the extra result
    /// after the last operation), e.g. `referential integrity violation`.
    #[error("commit failed: {error}: {details}")]
    CommitFailed {
        /// The error string.
        error: String,
        /// The server's details.
        details: String,
    },
    /// The reply is not an array of results, or has too few of them.
    #[error("malformed transact reply: {0}")]
    MalformedReply(String),
}

impl TransactError {
    /// The OVSDB error string (`timed out`, `constraint violation`, ...).
    pub fn error(&self) -> &str {
        match self {
            TransactError::OpFailed { error, .. } | TransactError::CommitFailed { error, .. } => {
                error
            }
            TransactError::MalformedReply(_) => "malformed reply",
        }
    }
}

/// Comparison functions of conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>=`
    Ge,
    /// `>`
    Gt,
    /// `includes`
    Includes,
    /// `excludes`
    Excludes,
}

impl Function {
    fn as_str(self) -> &'static str {
        match self {
            Function::Lt => "<",
            Function::Le => "<=",
            Function::Eq => "==",
            Function::Ne => "!=",
            Function::Ge => ">=",
            Function::Gt => ">",
            Function::Includes => "includes",
            Function::Excludes => "excludes",
        }
    }
}

/// A condition of a `where` clause, or of a monitor_cond request.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `[column, function, value]`.
    Compare {
        /// Column name (`_uuid` allowed).
        column: String,
        /// Function.
        function: Function,
        /// Value compared with.
        value: Datum,
    },
    /// The constant `true` or `false` (monitor conditions only).
    Constant(bool),
}

impl Condition {
    /// `column == value`.
    pub fn eq(column: &str, value: impl Into<Datum>) -> Self {
        Condition::Compare {
            column: column.to_string(),
            function: Function::Eq,
            value: value.into(),
        }
    }

    /// `column function value`.
    pub fn new(column: &str, function: Function, value: impl Into<Datum>) -> Self {
        Condition::Compare {
            column: column.to_string(),
            function,
            value: value.into(),
        }
    }

    /// `_uuid == uuid`.
    pub fn uuid(uuid: Uuid) -> Self {
        Self::eq("_uuid", Datum::uuid(uuid))
    }

    /// Wire form.
    pub fn to_json(&self) -> Value {
        match self {
            Condition::Compare {
                column,
                function,
                value,
            } => json!([column, function.as_str(), value.to_json()]),
            Condition::Constant(b) => json!(b),
        }
    }
}

/// Mutators of a `mutate` operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutator {
    /// `+=`
    Add,
    /// `-=`
    Sub,
    /// `*=`
    Mul,
    /// `/=`
    Div,
    /// `%=`
    Mod,
    /// `insert` (set elements or map pairs).
    Insert,
    /// `delete` (set elements, map keys given as a set, or map pairs).
    Delete,
}

/// One mutation.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    /// Column name.
    pub column: String,
    /// Mutator.
    pub mutator: Mutator,
    /// Argument.
    pub value: Datum,
}

impl Mutation {
    /// Builds a mutation.
    pub fn new(column: &str, mutator: Mutator, value: impl Into<Datum>) -> Self {
        Self {
            column: column.to_string(),
            mutator,
            value: value.into(),
        }
    }

    fn to_json(&self) -> Value {
        let m = match self.mutator {
            Mutator::Add => "+=",
            Mutator::Sub => "-=",
            Mutator::Mul => "*=",
            Mutator::Div => "/=",
            Mutator::Mod => "%=",
            Mutator::Insert => "insert",
            Mutator::Delete => "delete",
        };
        json!([self.column, m, self.value.to_json()])
    }
}

/// `until` of a `wait` operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitUntil {
    /// Wait until the selected rows equal `rows`.
    Equal,
    /// Wait until they differ.
    NotEqual,
}

/// Column values of a row to insert or update.
pub type Columns = BTreeMap<String, Datum>;

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// `insert`, with an optional `uuid-name` that later operations (and
    /// columns of this transaction) reference as `["named-uuid", name]`.
    Insert {
        /// Table.
        table: String,
        /// Column values.
        row: Columns,
        /// The `uuid-name`.
        uuid_name: Option<String>,
    },
    /// `select`.
    Select {
        /// Table.
        table: String,
        /// Conditions.
        conditions: Vec<Condition>,
        /// Columns to return (all when `None`).
        columns: Option<Vec<String>>,
    },
    /// `update`.
    Update {
        /// Table.
        table: String,
        /// Conditions.
        conditions: Vec<Condition>,
        /// New column values.
        row: Columns,
    },
    /// `mutate`.
    Mutate {
        /// Table.
        table: String,
        /// Conditions.
        conditions: Vec<Condition>,
        /// Mutations.
        mutations: Vec<Mutation>,
    },
    /// `delete`.
    Delete {
        /// Table.
        table: String,
        /// Conditions.
        conditions: Vec<Condition>,
    },
    /// `wait`.
    Wait {
        /// Table.
        table: String,
        /// Conditions.
        conditions: Vec<Condition>,
        /// Columns compared.
        columns: Vec<String>,
        /// `==` or `!=`.
        until: WaitUntil,
        /// The expected rows (only `columns` of each).
        rows: Vec<Columns>,
        /// Milliseconds to wait; `Some(0)` fails at once.
        timeout_ms: Option<u64>,
    },
    /// `comment` (written to the database log).
    Comment(String),
    /// `abort`.
    Abort,
}

impl Operation {
    /// Insert of `row` into `table`.
    pub fn insert(table: &str, row: Columns, uuid_name: Option<&str>) -> Self {
        Operation::Insert {
            table: table.into(),
            row,
            uuid_name: uuid_name.map(str::to_string),
        }
    }

    /// A `wait` that fails at once unless no row of `table` has
    /// `column == value`: put it before an insert into a table without a
    /// unique index on that column (Logical_Switch, Logical_Router,
    /// Load_Balancer, Logical_Router_Policy) so two writers cannot both
    /// create the row.
    pub fn wait_absent(table: &str, column: &str, value: impl Into<Datum>) -> Self {
        Operation::Wait {
            table: table.into(),
            conditions: vec![Condition::eq(column, value)],
            columns: vec![column.to_string()],
            until: WaitUntil::Equal,
            rows: Vec::new(),
            timeout_ms: Some(0),
        }
    }

    /// The operation's name on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Operation::Insert { .. } => "insert",
            Operation::Select { .. } => "select",
            Operation::Update { .. } => "update",
            Operation::Mutate { .. } => "mutate",
            Operation::Delete { .. } => "delete",
            Operation::Wait { .. } => "wait",
            Operation::Comment(_) => "comment",
            Operation::Abort => "abort",
        }
    }

    /// Wire form.
    pub fn to_json(&self) -> Value {
        fn row_json(row: &Columns) -> Value {
            Value::Object(
                row.iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect::<Map<_, _>>(),
            )
        }
        fn conds(c: &[Condition]) -> Value {
            Value::Array(c.iter().map(Condition::to_json).collect())
        }
        match self {
            Operation::Insert {
                table,
                row,
                uuid_name,
            } => {
                let mut o = json!({"op": "insert", "table": table, "row": row_json(row)});
                if let Some(n) = uuid_name {
                    o["uuid-name"] = json!(n);
                }
                o
            }
            Operation::Select {
                table,
                conditions,
                columns,
            } => {
                let mut o = json!({"op": "select", "table": table, "where": conds(conditions)});
                if let Some(c) = columns {
                    o["columns"] = json!(c);
                }
                o
            }
            Operation::Update {
                table,
                conditions,
                row,
            } => {
                json!({"op": "update", "table": table, "where": conds(conditions), "row": row_json(row)})
            }
            Operation::Mutate {
                table,
                conditions,
                mutations,
            } => json!({"op": "mutate", "table": table, "where": conds(conditions),
                "mutations": mutations.iter().map(Mutation::to_json).collect::<Vec<_>>()}),
            Operation::Delete { table, conditions } => {
                json!({"op": "delete", "table": table, "where": conds(conditions)})
            }
            Operation::Wait {
                table,
                conditions,
                columns,
                until,
                rows,
                timeout_ms,
            } => {
                let mut o = json!({"op": "wait", "table": table, "where": conds(conditions),
                    "columns": columns,
                    "until": if *until == WaitUntil::Equal { "==" } else { "!=" },
                    "rows": rows.iter().map(row_json).collect::<Vec<_>>()});
                if let Some(t) = timeout_ms {
                    o["timeout"] = json!(t);
                }
                o
            }
            Operation::Comment(c) => json!({"op": "comment", "comment": c}),
            Operation::Abort => json!({"op": "abort"}),
        }
    }
}

/// The result of one successful operation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OpResult {
    /// `insert`: the new row's uuid.
    pub uuid: Option<Uuid>,
    /// `update`, `mutate`, `delete`: rows affected.
    pub count: Option<u64>,
    /// `select`: the rows (with `_uuid` when selected).
    pub rows: Option<Vec<Row>>,
}

fn err_fields(o: &Map<String, Value>) -> (String, String) {
    let s = |k: &str| match o.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    };
    (s("error"), s("details"))
}

/// Interprets a `transact` reply for `ops` (`schema` types the rows of
/// `select` results).
pub fn parse_results(
    ops: &[Operation],
    reply: &Value,
    schema: &DatabaseSchema,
) -> Result<Vec<OpResult>, TransactError> {
    let arr = reply
        .as_array()
        .ok_or_else(|| TransactError::MalformedReply(reply.to_string()))?;
    // An error anywhere (an op, or the extra commit result) fails the whole
    // transaction.
    for (index, r) in arr.iter().enumerate() {
        let Some(o) = r.as_object() else { continue };
        if o.contains_key("error") {
            let (error, details) = err_fields(o);
            return Err(match ops.get(index) {
                Some(op) => TransactError::OpFailed {
                    index,
                    op: op.kind().to_string(),
                    error,
                    details,
                },
                None => TransactError::CommitFailed { error, details },
            });
        }
    }
    if arr.len() < ops.len() {
        return Err(TransactError::MalformedReply(format!(
            "{} results for {} operations",
            arr.len(),
            ops.len()
        )));
    }
    let mut out = Vec::with_capacity(ops.len());
    for (op, r) in ops.iter().zip(arr) {
        let mut res = OpResult::default();
        if let Some(o) = r.as_object() {
            if let Some(u) = o.get("uuid") {
                match Datum::from_json(u).ok().as_ref().and_then(Datum::as_atom) {
                    Some(crate::datum::Atom::Uuid(u)) => res.uuid = Some(*u),
                    _ => return Err(TransactError::MalformedReply(format!("uuid {u}"))),
                }
            }
            res.count = o.get("count").and_then(Value::as_u64);
            if let (Some(rows), Operation::Select { table, .. }) = (o.get("rows"), op) {
                let ts = schema.tables.get(table).ok_or_else(|| {
                    TransactError::MalformedReply(format!("unknown table {table}"))
                })?;
                let rows = rows
                    .as_array()
                    .ok_or_else(|| TransactError::MalformedReply("rows".into()))?
                    .iter()
                    .map(|row| Row::from_json_select(table, ts, row))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| TransactError::MalformedReply(e.to_string()))?;
                res.rows = Some(rows);
            }
        }
        out.push(res);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> DatabaseSchema {
        DatabaseSchema::parse(&json!({"name": "D", "version": "1", "tables": {"T": {"columns": {"n": {"type": "string"}}}}}))
            .unwrap()
    }

    #[test]
    fn encodes_operations() {
        let op = Operation::Mutate {
            table: "T".into(),
            conditions: vec![Condition::eq("name", "a")],
            mutations: vec![
                Mutation::new("ports", Mutator::Insert, Datum::named_uuid("p")),
                Mutation::new("n", Mutator::Add, 1i64),
            ],
        };
        assert_eq!(
            op.to_json(),
            json!({"op": "mutate", "table": "T", "where": [["name", "==", "a"]],
                   "mutations": [["ports", "insert", ["named-uuid", "p"]], ["n", "+=", 1]]})
        );
        let w = Operation::wait_absent("Logical_Switch", "name", "ls1");
        assert_eq!(
            w.to_json(),
            json!({"op": "wait", "table": "Logical_Switch", "where": [["name", "==", "ls1"]],
                   "columns": ["name"], "until": "==", "rows": [], "timeout": 0})
        );
    }

    #[test]
    fn commit_error_after_last_op_is_typed() {
        let ops = vec![Operation::Comment("x".into())];
        let reply = json!([{}, {"error": "referential integrity violation", "details": "d"}]);
        assert_eq!(
            parse_results(&ops, &reply, &schema()),
            Err(TransactError::CommitFailed {
                error: "referential integrity violation".into(),
                details: "d".into()
            })
        );
        let ops = vec![Operation::Comment("x".into()), Operation::Abort];
        let reply = json!([{}, {"error": "aborted"}, null]);
        assert!(matches!(
            parse_results(&ops, &reply, &schema()),
            Err(TransactError::OpFailed { index: 1, .. })
        ));
        assert!(parse_results(&ops, &json!({}), &schema()).is_err());
        assert!(parse_results(&ops, &json!([{}]), &schema()).is_err());
    }
}
