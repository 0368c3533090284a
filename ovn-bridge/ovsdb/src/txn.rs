//! Optimistic transactions as the C IDL runs them: the values a transaction
//! read from the replica are guarded by `wait` operations (`until: "=="`)
//! placed before its own operations, so the commit fails if another writer
//! changed them; the transaction is then rebuilt from a newer snapshot and
//! retried a bounded number of times.
//!
//! Owns the read set and the retry loop. It must not talk to the server
//! except through [`Client::transact`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::client::{Client, Error};
use crate::datum::{Datum, Uuid};
use crate::ops::{Columns, Condition, OpResult, Operation, TransactError, WaitUntil};
use crate::replica::{Database, Replica};
use crate::typed::{RowError, TableRow};

/// A transaction being built from one snapshot.
pub struct Txn {
    snapshot: Arc<Database>,
    reads: BTreeMap<(String, Uuid), BTreeSet<String>>,
    ops: Vec<Operation>,
}

impl Txn {
    /// Starts a transaction over `snapshot`.
    pub fn new(snapshot: Arc<Database>) -> Self {
        Self {
            snapshot,
            reads: BTreeMap::new(),
            ops: Vec::new(),
        }
    }

    /// The snapshot being read (reads through it are not guarded).
    pub fn snapshot(&self) -> &Database {
        &self.snapshot
    }

    /// Reads `table.column` of row `uuid` and guards the value.
    pub fn read(&mut self, table: &str, uuid: Uuid, column: &str) -> Option<Datum> {
        self.reads
            .entry((table.to_string(), uuid))
            .or_default()
            .insert(column.to_string());
        self.snapshot.table(table)?.get(&uuid)?.get(column).cloned()
    }

    /// Reads a whole typed row and guards every column.
    pub fn read_row<T: TableRow>(&mut self, uuid: Uuid) -> Option<Result<T, RowError>> {
        let cols = self.reads.entry((T::TABLE.to_string(), uuid)).or_default();
        cols.extend(T::COLUMNS.iter().map(|c| c.to_string()));
        self.snapshot.table(T::TABLE)?.get(&uuid).map(T::from_row)
    }

    /// Adds an operation.
    pub fn push(&mut self, op: Operation) {
        self.ops.push(op);
    }

    /// The guard `wait` operations followed by the transaction's own.
    pub fn into_operations(self) -> (usize, Vec<Operation>) {
        let mut out = Vec::new();
        for ((table, uuid), cols) in &self.reads {
            let row = self.snapshot.table(table).and_then(|t| t.get(uuid));
            let rows = match row {
                Some(r) => vec![cols
                    .iter()
                    .filter_map(|c| r.get(c).map(|d| (c.clone(), d.clone())))
                    .collect::<Columns>()],
                None => Vec::new(),
            };
            out.push(Operation::Wait {
                table: table.clone(),
                conditions: vec![Condition::uuid(*uuid)],
                columns: cols.iter().cloned().collect(),
                until: WaitUntil::Equal,
                rows,
                timeout_ms: Some(0),
            });
        }
        let guards = out.len();
        out.extend(self.ops);
        (guards, out)
    }
}

/// Builds a transaction with `build` from the replica's latest snapshot and
/// commits it, retrying (at most `attempts` times) when a guarded value
/// changed. Results and error indexes are those of the operations `build`
/// pushed, without the guards.
pub async fn transact_optimistic<F>(
    client: &Client,
    replica: &mut Replica,
    attempts: usize,
    mut build: F,
) -> Result<Vec<OpResult>, Error>
where
    F: FnMut(&mut Txn) -> Result<(), Error>,
{
    let mut last = None;
    for _ in 0..attempts.max(1) {
        let snapshot = replica.snapshot();
        let generation = snapshot.generation();
        let mut txn = Txn::new(snapshot);
        build(&mut txn)?;
        let (guards, ops) = txn.into_operations();
        match client.transact(ops).await {
            Ok(mut results) => return Ok(results.split_off(guards)),
            Err(Error::Transaction(TransactError::OpFailed { index, error, .. }))
                if index < guards =>
            {
                last = Some(error);
                // Wait (briefly) for the replica to catch up with the change.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    replica.wait_for(|db| db.generation() > generation),
                )
                .await;
            }
            Err(Error::Transaction(TransactError::OpFailed {
                index,
                op,
                error,
                details,
            })) => {
                return Err(TransactError::OpFailed {
                    index: index - guards,
                    op,
                    error,
                    details,
                }
                .into())
            }
            Err(e) => return Err(e),
        }
    }
    Err(TransactError::OpFailed {
        index: 0,
        op: "wait".into(),
        error: last.unwrap_or_default(),
        details: format!("values read kept changing after {attempts} attempts"),
    }
    .into())
}
