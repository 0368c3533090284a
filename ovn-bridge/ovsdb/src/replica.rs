//! The local replica (IDL): tables of rows keyed by uuid, built from monitor
//! replies and `update`/`update2`/`update3` notifications.
//!
//! Owns the in-memory copy and the rules that change it. It must not touch
//! sockets: the client's network task applies updates to its private copy and
//! publishes an immutable snapshot through a `tokio::sync::watch` channel.
//! Readers take an `Arc<Database>` (one pointer copy under a lock held for
//! nanoseconds) and never block the network task; the same channel is the
//! change notification. Unchanged tables and rows are shared between
//! snapshots (`Arc`), so publishing costs a copy of the touched tables' row
//! maps only.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::datum::{Datum, DatumError, Uuid};
use crate::ops::Condition;
use crate::schema::{DatabaseSchema, TableSchema};
use crate::typed::{RowError, TableRow};

/// An update the replica cannot apply.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum UpdateError {
    /// The update names a table the schema does not have.
    #[error("update for unknown table {0}")]
    UnknownTable(String),
    /// The update names a column the table does not have.
    #[error("update for unknown column {table}.{column}")]
    UnknownColumn {
        /// Table.
        table: String,
        /// Column.
        column: String,
    },
    /// The JSON does not have the shape of table-updates.
    #[error("malformed update: {0}")]
    Malformed(String),
    /// A column value does not fit its type.
    #[error("{table}.{column}: {error}")]
    Value {
        /// Table.
        table: String,
        /// Column.
        column: String,
        /// What is wrong.
        error: DatumError,
    },
    /// A "modify" for a row the replica does not hold.
    #[error("modify of unknown row {table} {uuid}")]
    UnknownRow {
        /// Table.
        table: String,
        /// Row.
        uuid: Uuid,
    },
}

/// One row: its uuid and the monitored columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `_uuid`.
    pub uuid: Uuid,
    /// Column values.
    pub columns: BTreeMap<String, Datum>,
}

impl Row {
    /// Value of `column`.
    pub fn get(&self, column: &str) -> Option<&Datum> {
        self.columns.get(column)
    }

    fn parse_columns(
        table: &str,
        ts: &TableSchema,
        row: &Value,
        mut each: impl FnMut(String, Datum, &crate::schema::ColumnType) -> Result<(), UpdateError>,
    ) -> Result<Option<Uuid>, UpdateError> {
        let obj = row
            .as_object()
            .ok_or_else(|| UpdateError::Malformed(format!("row of {table} is not an object")))?;
        let mut uuid = None;
        for (col, v) in obj {
            if col == "_uuid" {
                if let Some(crate::datum::Atom::Uuid(u)) =
                    Datum::from_json(v).ok().as_ref().and_then(Datum::as_atom)
                {
                    uuid = Some(*u);
                }
                continue;
            }
            if col == "_version" {
                continue;
            }
            let ty = ts
                .columns
                .get(col)
                .ok_or_else(|| UpdateError::UnknownColumn {
                    table: table.into(),
                    column: col.clone(),
                })?;
            let d = Datum::from_json_typed(v, ty).map_err(|error| UpdateError::Value {
                table: table.into(),
                column: col.clone(),
                error,
            })?;
            each(col.clone(), d, ty)?;
        }
        Ok(uuid)
    }

    /// A row of a `select` result.
    pub fn from_json_select(
        table: &str,
        ts: &TableSchema,
        row: &Value,
    ) -> Result<Self, UpdateError> {
        let mut columns = BTreeMap::new();
        let uuid = Self::parse_columns(table, ts, row, |c, d, _| {
            columns.insert(c, d);
            Ok(())
        })?;
        Ok(Row {
            uuid: uuid.unwrap_or_else(Uuid::nil),
            columns,
        })
    }
}

/// The rows of one table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    rows: BTreeMap<Uuid, Arc<Row>>,
}

impl Table {
    /// Row by uuid.
    pub fn get(&self, uuid: &Uuid) -> Option<&Row> {
        self.rows.get(uuid).map(|r| r.as_ref())
    }
    /// All rows, by uuid.
    pub fn rows(&self) -> impl Iterator<Item = &Row> {
        self.rows.values().map(|r| r.as_ref())
    }
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    /// True when the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Typed rows of one table, converted incrementally: a row an update left
/// untouched is the same allocation in the next snapshot, so only rows
/// inserted or modified since the last [`RowCache::refresh`] are converted
/// again. A reader that looks at a large table after every small update
/// (the node compiling thousands of logical flows after one port changed)
/// pays for what changed, not for the table.
#[derive(Debug)]
pub struct RowCache<T> {
    /// The source rows, in uuid order.
    rows: Vec<Arc<Row>>,
    /// Their typed forms, in the same order.
    typed: Vec<Arc<T>>,
}

impl<T> Default for RowCache<T> {
    fn default() -> Self {
        RowCache {
            rows: Vec::new(),
            typed: Vec::new(),
        }
    }
}

impl<T: TableRow> RowCache<T> {
    /// Brings the typed rows up to `db`; true when they changed. A row that
    /// does not fit its type fails the whole table, as [`Database::rows`]
    /// does, and leaves the cache empty.
    pub fn refresh(&mut self, db: &Database) -> Result<bool, RowError> {
        let empty = Table::default();
        let table = db.table(T::TABLE).unwrap_or(&empty);
        let same = table.rows.len() == self.rows.len()
            && table
                .rows
                .values()
                .zip(&self.rows)
                .all(|(r, held)| Arc::ptr_eq(r, held));
        if same {
            return Ok(false);
        }
        // Both in uuid order: one merge walk.
        let mut old = std::mem::take(&mut self.rows)
            .into_iter()
            .zip(std::mem::take(&mut self.typed))
            .peekable();
        for (uuid, r) in &table.rows {
            while old.next_if(|(held, _)| held.uuid < *uuid).is_some() {}
            let typed = match old.next_if(|(held, _)| Arc::ptr_eq(held, r)) {
                Some((_, t)) => t,
                None => Arc::new(T::from_row(r).inspect_err(|_| {
                    self.rows.clear();
                    self.typed.clear();
                })?),
            };
            self.rows.push(r.clone());
            self.typed.push(typed);
        }
        Ok(true)
    }

    /// The typed rows of the last refresh, in uuid order.
    pub fn rows(&self) -> &[Arc<T>] {
        &self.typed
    }
}

/// What happened to a row in one update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The row appeared.
    Insert,
    /// Some columns changed.
    Modify,
    /// The row went away.
    Delete,
}

/// One changed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    /// Table.
    pub table: String,
    /// Row.
    pub uuid: Uuid,
    /// What happened.
    pub kind: ChangeKind,
}

/// An immutable snapshot of the monitored tables.
#[derive(Debug, Clone, Default)]
pub struct Database {
    tables: BTreeMap<String, Arc<Table>>,
    /// Monitored columns per table (`None`: all); absent columns of a new
    /// row take their default value, as `update2` omits them.
    monitored: Arc<BTreeMap<String, Option<Vec<String>>>>,
    changes: Arc<Vec<RowChange>>,
    generation: u64,
    last_txn_id: Option<String>,
}

impl Database {
    /// A table (present, maybe empty, for every monitored table).
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.get(name).map(|t| t.as_ref())
    }

    /// Names of the tables held.
    pub fn table_names(&self) -> impl Iterator<Item = &str> {
        self.tables.keys().map(String::as_str)
    }

    /// Typed rows of `T`'s table.
    pub fn rows<T: TableRow>(&self) -> Result<Vec<T>, RowError> {
        self.table(T::TABLE)
            .map(|t| t.rows().map(T::from_row).collect())
            .unwrap_or(Ok(Vec::new()))
    }

    /// The row changes of the update that produced this snapshot. Snapshots
    /// are coalesced for slow readers: compare generations to notice that.
    pub fn changes(&self) -> &[RowChange] {
        &self.changes
    }

    /// Number of updates applied since the monitor started.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Transaction id of the last `update3` (clustered databases).
    pub fn last_txn_id(&self) -> Option<&str> {
        self.last_txn_id.as_deref()
    }

    pub(crate) fn ensure_tables<'a>(
        &mut self,
        names: impl Iterator<Item = (&'a String, &'a Option<Vec<String>>)>,
    ) {
        let mut monitored = BTreeMap::new();
        for (n, cols) in names {
            self.tables.entry(n.clone()).or_default();
            monitored.insert(n.clone(), cols.clone());
        }
        self.monitored = Arc::new(monitored);
    }

    pub(crate) fn set_last_txn_id(&mut self, id: Option<String>) {
        self.last_txn_id = id;
    }

    /// Forgets every row (before a full resynchronisation).
    pub(crate) fn clear_rows(&mut self) {
        for t in self.tables.values_mut() {
            *t = Arc::new(Table::default());
        }
    }

    /// Applies table-updates2 (`update2`/`update3`, monitor_cond replies).
    pub(crate) fn apply_update2(
        &mut self,
        schema: &DatabaseSchema,
        updates: &Value,
        changes: &mut Vec<RowChange>,
    ) -> Result<(), UpdateError> {
        self.apply(schema, updates, changes, true)
    }

    /// Applies table-updates (`update`, monitor replies).
    pub(crate) fn apply_update(
        &mut self,
        schema: &DatabaseSchema,
        updates: &Value,
        changes: &mut Vec<RowChange>,
    ) -> Result<(), UpdateError> {
        self.apply(schema, updates, changes, false)
    }

    fn apply(
        &mut self,
        schema: &DatabaseSchema,
        updates: &Value,
        changes: &mut Vec<RowChange>,
        v2: bool,
    ) -> Result<(), UpdateError> {
        let tables = updates
            .as_object()
            .ok_or_else(|| UpdateError::Malformed("table-updates is not an object".into()))?;
        for (tname, rows) in tables {
            let ts = schema
                .tables
                .get(tname)
                .ok_or_else(|| UpdateError::UnknownTable(tname.clone()))?;
            let rows = rows
                .as_object()
                .ok_or_else(|| UpdateError::Malformed(format!("{tname}: not an object")))?;
            let monitored = self.monitored.get(tname).cloned().flatten();
            let table = Arc::make_mut(self.tables.entry(tname.clone()).or_default());
            for (uuid_s, ru) in rows {
                let uuid = Uuid::parse_str(uuid_s)
                    .map_err(|_| UpdateError::Malformed(format!("{tname}: bad uuid {uuid_s:?}")))?;
                let ru = ru.as_object().ok_or_else(|| {
                    UpdateError::Malformed(format!("{tname} {uuid}: not an object"))
                })?;
                let kind = if v2 {
                    apply_row2(tname, ts, monitored.as_deref(), table, uuid, ru)?
                } else {
                    apply_row1(tname, ts, monitored.as_deref(), table, uuid, ru)?
                };
                if let Some(kind) = kind {
                    changes.push(RowChange {
                        table: tname.clone(),
                        uuid,
                        kind,
                    });
                }
            }
        }
        Ok(())
    }

    /// Row changes that turn `old` into `self` (after a resynchronisation).
    pub(crate) fn diff_from(&self, old: &Database) -> Vec<RowChange> {
        let mut out = Vec::new();
        let empty = Table::default();
        for (name, t) in &self.tables {
            let o = old.tables.get(name).map(|t| t.as_ref()).unwrap_or(&empty);
            for (u, r) in &t.rows {
                match o.rows.get(u) {
                    None => out.push(RowChange {
                        table: name.clone(),
                        uuid: *u,
                        kind: ChangeKind::Insert,
                    }),
                    Some(or) if or != r => out.push(RowChange {
                        table: name.clone(),
                        uuid: *u,
                        kind: ChangeKind::Modify,
                    }),
                    _ => {}
                }
            }
            for u in o.rows.keys().filter(|u| !t.rows.contains_key(u)) {
                out.push(RowChange {
                    table: name.clone(),
                    uuid: *u,
                    kind: ChangeKind::Delete,
                });
            }
        }
        out
    }

    /// A snapshot to publish, carrying `changes`.
    pub(crate) fn publish(&mut self, changes: Vec<RowChange>) -> Arc<Database> {
        self.generation += 1;
        self.changes = Arc::new(changes);
        Arc::new(self.clone())
    }
}

fn full_row(
    tname: &str,
    ts: &TableSchema,
    monitored: Option<&[String]>,
    uuid: Uuid,
    v: &Value,
) -> Result<Row, UpdateError> {
    let mut columns = BTreeMap::new();
    Row::parse_columns(tname, ts, v, |c, d, _| {
        columns.insert(c, d);
        Ok(())
    })?;
    for (c, ty) in &ts.columns {
        if monitored.map(|m| m.contains(c)).unwrap_or(true) {
            columns
                .entry(c.clone())
                .or_insert_with(|| Datum::default_for(ty));
        }
    }
    Ok(Row { uuid, columns })
}

fn apply_row2(
    tname: &str,
    ts: &TableSchema,
    monitored: Option<&[String]>,
    table: &mut Table,
    uuid: Uuid,
    ru: &serde_json::Map<String, Value>,
) -> Result<Option<ChangeKind>, UpdateError> {
    if let Some(v) = ru.get("initial").or_else(|| ru.get("insert")) {
        let row = full_row(tname, ts, monitored, uuid, v)?;
        let existed = table.rows.insert(uuid, Arc::new(row)).is_some();
        return Ok(Some(if existed {
            ChangeKind::Modify
        } else {
            ChangeKind::Insert
        }));
    }
    if ru.contains_key("delete") {
        return Ok(table.rows.remove(&uuid).map(|_| ChangeKind::Delete));
    }
    if let Some(diff) = ru.get("modify") {
        let entry = table
            .rows
            .get_mut(&uuid)
            .ok_or_else(|| UpdateError::UnknownRow {
                table: tname.into(),
                uuid,
            })?;
        let row = Arc::make_mut(entry);
        Row::parse_columns(tname, ts, diff, |c, d, ty| {
            let cur = row
                .columns
                .entry(c.clone())
                .or_insert_with(|| Datum::default_for(ty));
            cur.apply_diff(d, ty).map_err(|error| UpdateError::Value {
                table: tname.into(),
                column: c,
                error,
            })
        })?;
        return Ok(Some(ChangeKind::Modify));
    }
    Err(UpdateError::Malformed(format!(
        "{tname} {uuid}: row update without initial/insert/delete/modify"
    )))
}

fn apply_row1(
    tname: &str,
    ts: &TableSchema,
    monitored: Option<&[String]>,
    table: &mut Table,
    uuid: Uuid,
    ru: &serde_json::Map<String, Value>,
) -> Result<Option<ChangeKind>, UpdateError> {
    match ru.get("new") {
        Some(new) if !new.is_null() => {
            let row = full_row(tname, ts, monitored, uuid, new)?;
            let existed = table.rows.insert(uuid, Arc::new(row)).is_some();
            Ok(Some(if existed {
                ChangeKind::Modify
            } else {
                ChangeKind::Insert
            }))
        }
        _ => Ok(table.rows.remove(&uuid).map(|_| ChangeKind::Delete)),
    }
}

/// What a replica asks of the network task.
pub(crate) enum ReplicaCommand {
    ChangeConditions {
        monitor: u64,
        table: String,
        conditions: Vec<Condition>,
        reply: oneshot::Sender<Result<(), crate::Error>>,
    },
}

/// A handle on a monitor's replica. Cloning is cheap; every clone sees the
/// same snapshots.
#[derive(Clone)]
pub struct Replica {
    pub(crate) monitor: u64,
    pub(crate) rx: watch::Receiver<Arc<Database>>,
    pub(crate) commands: mpsc::UnboundedSender<crate::client::Command>,
}

impl Replica {
    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Database> {
        self.rx.borrow().clone()
    }

    /// Waits until a snapshot newer than the last one seen by this handle is
    /// published, and returns it. Errors when the client has shut down.
    pub async fn changed(&mut self) -> Result<Arc<Database>, crate::Error> {
        self.rx.changed().await.map_err(|_| crate::Error::Closed)?;
        Ok(self.rx.borrow_and_update().clone())
    }

    /// Waits until `pred` holds for a snapshot (checks the current one first).
    pub async fn wait_for(
        &mut self,
        mut pred: impl FnMut(&Database) -> bool,
    ) -> Result<Arc<Database>, crate::Error> {
        let r = self
            .rx
            .wait_for(|db| pred(db))
            .await
            .map_err(|_| crate::Error::Closed)?;
        Ok(r.clone())
    }

    /// A raw receiver, for `select!` loops.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Database>> {
        self.rx.clone()
    }

    /// Replaces the conditions of `table` (`monitor_cond_change`); the new
    /// conditions also apply after every reconnection.
    pub async fn set_conditions(
        &self,
        table: &str,
        conditions: Vec<Condition>,
    ) -> Result<(), crate::Error> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(crate::client::Command::Replica(
                ReplicaCommand::ChangeConditions {
                    monitor: self.monitor,
                    table: table.into(),
                    conditions,
                    reply,
                },
            ))
            .map_err(|_| crate::Error::Closed)?;
        rx.await.map_err(|_| crate::Error::Closed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sb;
    use serde_json::json;

    fn schema() -> DatabaseSchema {
        let text = std::fs::read_to_string(crate::testing::sb_schema()).expect("SB schema");
        DatabaseSchema::parse(&serde_json::from_str(&text).unwrap()).unwrap()
    }

    fn chassis_row(name: &str) -> Value {
        json!({"name": name, "hostname": name, "encaps": ["set", []]})
    }

    /// Applies `updates` to `work` and returns the snapshot.
    fn apply(work: &mut Database, schema: &DatabaseSchema, updates: Value) -> Arc<Database> {
        let mut changes = Vec::new();
        work.apply_update2(schema, &updates, &mut changes).unwrap();
        work.publish(changes)
    }

    #[test]
    fn row_cache_converts_only_what_changed() {
        let schema = schema();
        let mut work = Database::default();
        let (a, b, c) = (
            "11111111-0000-0000-0000-000000000001",
            "11111111-0000-0000-0000-000000000002",
            "11111111-0000-0000-0000-000000000003",
        );
        let first = apply(
            &mut work,
            &schema,
            json!({"Chassis": {a: {"insert": chassis_row("a")}, b: {"insert": chassis_row("b")}}}),
        );
        let mut cache: RowCache<sb::Chassis> = RowCache::default();
        assert!(cache.refresh(&first).unwrap());
        let names: Vec<&str> = cache.rows().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let held_b = cache.rows()[1].clone();
        assert!(!cache.refresh(&first).unwrap(), "nothing changed");

        // Modify a, insert c: b keeps its typed row, a is converted again.
        let second = apply(
            &mut work,
            &schema,
            json!({"Chassis": {a: {"modify": {"hostname": "a2"}}, c: {"insert": chassis_row("c")}}}),
        );
        assert!(cache.refresh(&second).unwrap());
        let rows = cache.rows();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].hostname, "a2");
        assert!(Arc::ptr_eq(&rows[1], &held_b), "untouched row reused");
        assert_eq!(rows[2].name, "c");
        // The earlier snapshot still reads as it was.
        assert!(cache.refresh(&first).unwrap());
        assert_eq!(cache.rows()[0].hostname, "a");
        assert_eq!(cache.rows().len(), 2);

        // A delete.
        let third = apply(
            &mut work,
            &schema,
            json!({"Chassis": {b: {"delete": null}}}),
        );
        assert!(cache.refresh(&third).unwrap());
        let names: Vec<&str> = cache.rows().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        // Every typed row equals a full conversion.
        let full: Vec<sb::Chassis> = third.rows().unwrap();
        assert_eq!(
            cache
                .rows()
                .iter()
                .map(|r| (**r).clone())
                .collect::<Vec<_>>(),
            full
        );
    }
}
