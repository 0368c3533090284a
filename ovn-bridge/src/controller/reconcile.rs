//! The diff between the desired Northbound rows and the replica of the
//! database: the minimal operations of one transaction that make the
//! database hold the desired rows.
//!
//! Owns row matching (by the [`OWNER_KEY`] marker) and operation building.
//! Rows without our marker are never updated or deleted, and references to
//! them in our rows' columns are left in place.

use std::collections::{BTreeMap, BTreeSet};

use ovsdb::{Atom, Condition, Database, Datum, Mutation, Mutator, Operation, Row, Uuid};

use super::desired::{is_root, DesiredNb, RowRef, OWNER_KEY, TABLES};

/// Our rows of the database, by table and key.
#[derive(Debug, Default)]
pub struct OwnedRows<'a> {
    by_key: BTreeMap<&'static str, BTreeMap<String, &'a Row>>,
    extra: Vec<(&'static str, &'a Row)>,
    owned_uuids: BTreeSet<Uuid>,
}

/// The owner key of a row, if it is ours.
pub fn owner_key(row: &Row) -> Option<&str> {
    match row.get("external_ids")? {
        Datum::Map(m) => match m.get(&Atom::string(OWNER_KEY))? {
            Atom::String(s) => Some(s.as_str()),
            _ => None,
        },
        Datum::Set(_) => None,
    }
}

impl<'a> OwnedRows<'a> {
    /// Indexes our rows of `db`.
    pub fn of(db: &'a Database) -> Self {
        let mut o = OwnedRows::default();
        for t in TABLES {
            let Some(table) = db.table(t) else { continue };
            let mut rows: Vec<&Row> = table.rows().filter(|r| owner_key(r).is_some()).collect();
            rows.sort_by_key(|r| r.uuid);
            let m = o.by_key.entry(t).or_default();
            for r in rows {
                o.owned_uuids.insert(r.uuid);
                let k = owner_key(r).unwrap_or_default().to_string();
                match m.entry(k) {
                    std::collections::btree_map::Entry::Occupied(_) => o.extra.push((t, r)),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(r);
                    }
                }
            }
        }
        o
    }

    /// Number of our rows in `table`.
    pub fn count(&self, table: &str) -> usize {
        self.by_key.get(table).map_or(0, BTreeMap::len)
    }
}

fn same(a: Option<&Datum>, b: &Datum) -> bool {
    match a {
        Some(a) if a == b => true,
        Some(a) => a.is_empty() && b.is_empty(),
        None => b.is_empty(),
    }
}

/// The operations that turn `db` into `desired` (empty when nothing differs).
pub fn plan(desired: &DesiredNb, db: &Database) -> Vec<Operation> {
    let owned = OwnedRows::of(db);
    let mut ops = Vec::new();
    let mut named: BTreeMap<RowRef, String> = BTreeMap::new();
    let resolve = |r: &RowRef, named: &BTreeMap<RowRef, String>| -> Option<Atom> {
        if let Some(row) = owned.by_key.get(r.table).and_then(|m| m.get(&r.key)) {
            return Some(Atom::Uuid(row.uuid));
        }
        named.get(r).map(|n| Atom::NamedUuid(n.clone()))
    };
    let empty = BTreeMap::new();
    for table in TABLES {
        let rows = desired.tables.get(table).unwrap_or(&empty);
        let current = owned.by_key.get(table);
        for (key, row) in rows {
            let cur = current.and_then(|m| m.get(key));
            match cur {
                None => {
                    let mut columns = row.columns.clone();
                    for (col, targets) in &row.refs {
                        let atoms: Vec<Atom> =
                            targets.iter().filter_map(|t| resolve(t, &named)).collect();
                        columns.insert(col.to_string(), Datum::set(atoms));
                    }
                    let name = format!("row{}", named.len());
                    named.insert(
                        RowRef {
                            table,
                            key: key.clone(),
                        },
                        name.clone(),
                    );
                    ops.push(Operation::insert(table, columns, Some(&name)));
                }
                Some(cur) => {
                    let changed: BTreeMap<String, Datum> = row
                        .columns
                        .iter()
                        .filter(|(c, v)| !same(cur.get(c), v))
                        .map(|(c, v)| (c.clone(), v.clone()))
                        .collect();
                    if !changed.is_empty() {
                        ops.push(Operation::Update {
                            table: table.into(),
                            conditions: vec![Condition::uuid(cur.uuid)],
                            row: changed,
                        });
                    }
                    let ref_cols: BTreeSet<&str> = row
                        .refs
                        .keys()
                        .copied()
                        .chain(ref_columns(table).iter().copied())
                        .collect();
                    for col in ref_cols {
                        let want: BTreeSet<Atom> = row
                            .refs
                            .get(col)
                            .into_iter()
                            .flatten()
                            .filter_map(|t| resolve(t, &named))
                            .collect();
                        let have: BTreeSet<Atom> = match cur.get(col) {
                            Some(Datum::Set(s)) => s
                                .iter()
                                .filter(
                                    |a| matches!(a, Atom::Uuid(u) if owned.owned_uuids.contains(u)),
                                )
                                .cloned()
                                .collect(),
                            _ => BTreeSet::new(),
                        };
                        let add: Vec<Atom> = want.difference(&have).cloned().collect();
                        let del: Vec<Atom> = have.difference(&want).cloned().collect();
                        let mut mutations = Vec::new();
                        if !del.is_empty() {
                            mutations.push(Mutation::new(col, Mutator::Delete, Datum::set(del)));
                        }
                        if !add.is_empty() {
                            mutations.push(Mutation::new(col, Mutator::Insert, Datum::set(add)));
                        }
                        if !mutations.is_empty() {
                            ops.push(Operation::Mutate {
                                table: table.into(),
                                conditions: vec![Condition::uuid(cur.uuid)],
                                mutations,
                            });
                        }
                    }
                }
            }
        }
        // Our root rows that are no longer desired (and duplicates).
        if is_root(table) {
            let gone = current
                .into_iter()
                .flatten()
                .filter(|(k, _)| !rows.contains_key(*k))
                .map(|(_, r)| *r)
                .chain(
                    owned
                        .extra
                        .iter()
                        .filter(|(t, _)| *t == table)
                        .map(|(_, r)| *r),
                );
            for r in gone {
                ops.push(Operation::Delete {
                    table: table.into(),
                    conditions: vec![Condition::uuid(r.uuid)],
                });
            }
        }
    }
    ops
}

/// The reference columns to our children that a parent table has, so that
/// children that are no longer desired get removed even when a parent no
/// longer wants any.
fn ref_columns(table: &str) -> &'static [&'static str] {
    match table {
        "Logical_Switch" => &["ports", "acls", "qos_rules", "load_balancer"],
        "Logical_Router" => &["ports"],
        "Port_Group" => &["ports", "acls"],
        _ => &[],
    }
}

/// Counts of operations by kind, for logs and tests.
pub fn summary(ops: &[Operation]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for o in ops {
        *m.entry(o.kind()).or_insert(0) += 1;
    }
    m
}
