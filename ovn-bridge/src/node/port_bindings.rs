//! The Port_Binding rows of a Southbound snapshot, parsed once: the node
//! loop and the CNI handler look at the same few snapshots many times (one
//! loop pass reads the rows for the conditions, the claims, the conntrack
//! zones and the compile check; a CNI ADD waits on every snapshot), and a
//! node that sees many pods would otherwise parse every row each time.
//!
//! Owns the parsed rows and the cache of the last snapshot's rows. It must
//! not write anything, and it reads no table but Port_Binding (and
//! MAC_Binding, for `rows_named`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ovsdb::{sb, Database, RowCache, TableRow};
use parking_lot::Mutex;

/// The Port_Binding rows of one snapshot, in uuid order, with an index by
/// logical port name.
#[derive(Debug, Default)]
pub struct PortBindings {
    rows: Vec<Arc<sb::PortBinding>>,
    by_name: HashMap<String, usize>,
}

impl PortBindings {
    /// Parses the rows of `db` (none when a row does not fit its type, as
    /// the typed reader reports the table as a whole).
    pub fn of(db: &Database) -> PortBindings {
        let mut rows = RowCache::default();
        Self::refreshed(&mut rows, db);
        Self::from_cache(&rows)
    }

    /// Brings `rows` up to `db`; true when they changed.
    fn refreshed(rows: &mut RowCache<sb::PortBinding>, db: &Database) -> bool {
        rows.refresh(db).unwrap_or_else(|e| {
            log::warn!("southbound Port_Binding rows unreadable: {e}");
            true
        })
    }

    fn from_cache(cache: &RowCache<sb::PortBinding>) -> PortBindings {
        let rows = cache.rows().to_vec();
        let by_name = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.logical_port.clone(), i))
            .collect();
        PortBindings { rows, by_name }
    }

    /// Every row, in uuid order.
    pub fn rows(&self) -> &[Arc<sb::PortBinding>] {
        &self.rows
    }

    /// The row of `logical_port`.
    pub fn get(&self, logical_port: &str) -> Option<&sb::PortBinding> {
        self.by_name.get(logical_port).map(|&i| &*self.rows[i])
    }

    /// Whether both hold the same rows once `up` is left out.
    pub fn same_except_up(&self, other: &PortBindings) -> bool {
        self.same_for_compile(other, &HashMap::<String, ()>::new())
    }

    /// Whether both hold the same rows once `up` is left out, and `chassis`
    /// too for the ports in `mapped`: the compiler binds a port mapped to a
    /// fastpath port here whoever claims it (once this chassis exists).
    pub fn same_for_compile<V>(&self, other: &PortBindings, mapped: &HashMap<String, V>) -> bool {
        self.rows.len() == other.rows.len()
            && self.rows.iter().zip(&other.rows).all(|(a, b)| {
                if Arc::ptr_eq(a, b) {
                    return true;
                }
                let free_chassis = mapped.contains_key(&a.logical_port);
                if a.up == b.up && (a.chassis == b.chassis || !free_chassis) {
                    a == b
                } else {
                    // Rarely taken: only rows whose ignored columns differ
                    // are copied.
                    let mut a = sb::PortBinding::clone(a);
                    a.up = b.up;
                    if free_chassis {
                        a.chassis = b.chassis;
                    }
                    a == **b
                }
            })
    }
}

/// The typed rows of `T`'s table (Port_Binding, MAC_Binding: tables with a
/// `logical_port` column) whose logical port is one of `names`; the others
/// are not parsed, nor is a row that does not fit its type.
pub fn rows_named<T: TableRow>(db: &Database, names: &BTreeSet<&str>) -> Vec<T> {
    rows_where(db, "logical_port", |s| names.contains(s))
}

/// The typed rows of `T`'s table whose string `column` satisfies `keep`;
/// the others are not parsed, nor is a row that does not fit its type.
pub fn rows_where<T: TableRow>(db: &Database, column: &str, keep: impl Fn(&str) -> bool) -> Vec<T> {
    let Some(table) = db.table(T::TABLE) else {
        return Vec::new();
    };
    table
        .rows()
        .filter(|r| {
            matches!(
                r.get(column).and_then(|d| d.as_atom()),
                Some(ovsdb::Atom::String(s)) if keep(s.as_str())
            )
        })
        .filter_map(|r| T::from_row(r).ok())
        .collect()
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

/// The parsed rows of the last snapshot asked for, kept up to date row by
/// row (see [`RowCache`]): only rows an update touched are parsed again.
#[derive(Debug, Default)]
pub struct PortBindingCache {
    last: Mutex<(RowCache<sb::PortBinding>, Option<Arc<PortBindings>>)>,
}

impl PortBindingCache {
    /// The rows of `db`.
    pub fn get(&self, db: &Database) -> Arc<PortBindings> {
        let mut last = self.last.lock();
        let (cache, held) = &mut *last;
        let changed = PortBindings::refreshed(cache, db);
        match held {
            Some(rows) if !changed => rows.clone(),
            _ => {
                let rows = Arc::new(PortBindings::from_cache(cache));
                *held = Some(rows.clone());
                rows
            }
        }
    }
}
