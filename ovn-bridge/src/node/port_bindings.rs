//! The Port_Binding rows of a Southbound snapshot, parsed once: the node
//! loop and the CNI handler look at the same few snapshots many times (one
//! loop pass reads the rows for the conditions, the claims, the conntrack
//! zones and the compile check; a CNI ADD waits on every snapshot), and a
//! node that sees many pods would otherwise parse every row each time.
//!
//! Owns the parsed rows and the cache of the last snapshot's rows. It must
//! not write anything, and it reads no table but Port_Binding.

use std::collections::HashMap;
use std::sync::Arc;

use ovsdb::{sb, Database, TableRow};
use parking_lot::Mutex;

/// The Port_Binding rows of one snapshot, in uuid order, with an index by
/// logical port name.
#[derive(Debug, Default)]
pub struct PortBindings {
    rows: Vec<sb::PortBinding>,
    by_name: HashMap<String, usize>,
}

impl PortBindings {
    /// Parses the rows of `db` (none when a row does not fit its type, as
    /// the typed reader reports the table as a whole).
    pub fn of(db: &Database) -> PortBindings {
        let mut rows: Vec<sb::PortBinding> = match db.rows() {
            Ok(rows) => rows,
            Err(e) => {
                log::warn!("southbound Port_Binding rows unreadable: {e}");
                Vec::new()
            }
        };
        rows.sort_by_key(|r| r.uuid);
        let by_name = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.logical_port.clone(), i))
            .collect();
        PortBindings { rows, by_name }
    }

    /// Every row, in uuid order.
    pub fn rows(&self) -> &[sb::PortBinding] {
        &self.rows
    }

    /// The row of `logical_port`.
    pub fn get(&self, logical_port: &str) -> Option<&sb::PortBinding> {
        self.by_name.get(logical_port).map(|&i| &self.rows[i])
    }

    /// Whether both hold the same rows once `up` is left out.
    pub fn same_except_up(&self, other: &PortBindings) -> bool {
        self.rows.len() == other.rows.len()
            && self.rows.iter().zip(&other.rows).all(|(a, b)| {
                if a.up == b.up {
                    a == b
                } else {
                    // Rarely taken: only rows whose `up` differs are copied.
                    let mut a = a.clone();
                    a.up = b.up;
                    a == *b
                }
            })
    }
}

/// Whether `a` and `b` hold the same Port_Binding table (a snapshot shares
/// the tables an update left untouched).
pub fn same_table(a: &Database, b: &Database) -> bool {
    match (
        a.table(sb::PortBinding::TABLE),
        b.table(sb::PortBinding::TABLE),
    ) {
        (None, None) => true,
        (Some(x), Some(y)) => std::ptr::eq(x, y),
        _ => false,
    }
}

/// The parsed rows of the last snapshot asked for. The snapshot is held so
/// that its table stays allocated and an address compared with it is never
/// a reused one.
#[derive(Debug, Default)]
pub struct PortBindingCache {
    last: Mutex<Option<(Arc<Database>, Arc<PortBindings>)>>,
}

impl PortBindingCache {
    /// The rows of `db`: parsed now unless its Port_Binding table is the
    /// one parsed last.
    pub fn get(&self, db: &Arc<Database>) -> Arc<PortBindings> {
        let mut last = self.last.lock();
        if let Some((held, rows)) = last.as_ref() {
            if same_table(held, db) {
                return rows.clone();
            }
        }
        let rows = Arc::new(PortBindings::of(db));
        *last = Some((db.clone(), rows.clone()));
        rows
    }
}
