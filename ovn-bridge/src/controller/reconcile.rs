//! The diff between the desired Northbound rows and the replica of the
//! database: the minimal operations that make the database hold the
//! desired rows, over every row (a full pass) or over the rows an event
//! changed (an incremental pass).
//!
//! Owns row matching (by the [`OWNER_KEY`] marker, through a [`RowIndex`]
//! kept in step with the replica) and operation building. Rows without our
//! marker are never updated or deleted, and references to them in our
//! rows' columns are left in place.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ovsdb::{
    Atom, ChangeKind, Condition, Database, Datum, Mutation, Mutator, Operation, Row, Uuid,
};

use super::desired::{is_root, DesiredNb, DesiredRow, RowRef, OWNER_KEY, TABLES};
use super::incremental::{RefDelta, RefDeltas};

/// Tables in the order the planner visits them: children before the
/// parents that hold them, and switches and routers before port groups,
/// whose weak references to switch ports come last.
pub const PLAN_ORDER: [&str; 12] = [
    "Meter_Band",
    "Meter",
    "Address_Set",
    "ACL",
    "QoS",
    "Logical_Switch_Port",
    "Logical_Router_Port",
    "Logical_Router_Policy",
    "Load_Balancer",
    "Logical_Switch",
    "Logical_Router",
    "Port_Group",
];

/// Our rows of the database: owner key to uuid per table, and back.
/// Built from a snapshot and then kept in step with the replica from the
/// row changes of each update ([`RowIndex::refresh`]).
#[derive(Debug, Default, Clone)]
pub struct RowIndex {
    by_key: HashMap<&'static str, HashMap<String, Uuid>>,
    owned: HashMap<Uuid, (&'static str, String)>,
    /// Rows of ours whose key another row of ours already holds.
    extra: BTreeSet<(&'static str, Uuid)>,
    generation: Option<u64>,
    rebuilds: u64,
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

fn our_table(name: &str) -> Option<&'static str> {
    TABLES.iter().copied().find(|t| *t == name)
}

impl RowIndex {
    /// Indexes our rows of `db`.
    pub fn build(db: &Database) -> Self {
        let mut ix = RowIndex::default();
        ix.rebuild(db);
        ix
    }

    fn rebuild(&mut self, db: &Database) {
        let rebuilds = self.rebuilds + 1;
        *self = RowIndex::default();
        self.rebuilds = rebuilds;
        for t in TABLES {
            let Some(table) = db.table(t) else { continue };
            // Rows in uuid order, so the row kept for a duplicated key is
            // the same on every build.
            for r in table.rows() {
                if let Some(k) = owner_key(r) {
                    self.add(t, k, r.uuid);
                }
            }
        }
        self.generation = Some(db.generation());
    }

    fn add(&mut self, table: &'static str, key: &str, uuid: Uuid) {
        self.owned.insert(uuid, (table, key.to_string()));
        let m = self.by_key.entry(table).or_default();
        match m.get(key) {
            Some(u) if *u != uuid => {
                // Keep the smaller uuid as the row of the key.
                let (keep, extra) = if uuid < *u { (uuid, *u) } else { (*u, uuid) };
                m.insert(key.to_string(), keep);
                self.extra.remove(&(table, keep));
                self.extra.insert((table, extra));
            }
            _ => {
                m.insert(key.to_string(), uuid);
            }
        }
    }

    /// Brings the index in line with `db`: applies the row changes of its
    /// last update when it directly follows the one indexed, rebuilds
    /// otherwise (coalesced snapshots, reconnection). Returns true when it
    /// rebuilt.
    pub fn refresh(&mut self, db: &Database) -> bool {
        match self.generation {
            Some(g) if g == db.generation() => return false,
            Some(g) if g + 1 == db.generation() => {}
            _ => {
                self.rebuild(db);
                return true;
            }
        }
        for c in db.changes() {
            let Some(table) = our_table(&c.table) else {
                continue;
            };
            let old = self.owned.get(&c.uuid).cloned();
            let new_key = match c.kind {
                ChangeKind::Delete => None,
                ChangeKind::Insert | ChangeKind::Modify => db
                    .table(table)
                    .and_then(|t| t.get(&c.uuid))
                    .and_then(owner_key)
                    .map(str::to_string),
            };
            if old.as_ref().map(|(_, k)| k) == new_key.as_ref() {
                continue;
            }
            if let Some((_, k)) = old {
                // A row of ours lost its key or went away. When it held a
                // key that a duplicate also holds, rebuild (rare).
                if self.extra.iter().any(|(t, _)| *t == table) {
                    self.rebuild(db);
                    return true;
                }
                self.owned.remove(&c.uuid);
                if let Some(m) = self.by_key.get_mut(table) {
                    if m.get(&k) == Some(&c.uuid) {
                        m.remove(&k);
                    }
                }
            }
            if let Some(k) = new_key {
                self.add(table, &k, c.uuid);
            }
        }
        self.generation = Some(db.generation());
        false
    }

    /// The uuid of our row `key` of `table`.
    pub fn uuid(&self, table: &str, key: &str) -> Option<Uuid> {
        self.by_key.get(table).and_then(|m| m.get(key)).copied()
    }

    /// Whether a row is ours.
    pub fn is_owned(&self, uuid: &Uuid) -> bool {
        self.owned.contains_key(uuid)
    }

    /// Number of our rows (one per key) in `table`.
    pub fn count(&self, table: &str) -> usize {
        self.by_key.get(table).map_or(0, HashMap::len)
    }

    /// Times the index was built from a whole snapshot.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// The generation of the snapshot indexed last.
    pub fn generation(&self) -> Option<u64> {
        self.generation
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
    plan_with(desired, db, &RowIndex::build(db), None)
}

/// The operations that bring the rows `changed` (added, removed or
/// different in `desired` since the last pass) in line; `index` must be in
/// step with `db`. Rows not named are assumed to be right already.
pub fn plan_changed(
    desired: &DesiredNb,
    db: &Database,
    index: &RowIndex,
    changed: &BTreeSet<RowRef>,
) -> Vec<Operation> {
    plan_with(desired, db, index, Some(changed))
}

/// [`plan_changed`] where some of the `changed` rows changed only by the
/// references in `deltas` (from [`DesiredCache::ref_deltas`]): for those
/// rows only the references named are compared with the database, so one
/// pod costs the same in a switch of ten ports or of ten thousand.
///
/// [`DesiredCache::ref_deltas`]: super::incremental::DesiredCache::ref_deltas
pub fn plan_changed_deltas(
    desired: &DesiredNb,
    db: &Database,
    index: &RowIndex,
    changed: &BTreeSet<RowRef>,
    deltas: &RefDeltas,
) -> Vec<Operation> {
    let mut p = Planner {
        db,
        index,
        ops: Vec::new(),
        named: HashMap::new(),
    };
    for table in PLAN_ORDER {
        let lo = RowRef {
            table,
            key: String::new(),
        };
        for r in changed.range(lo..).take_while(|r| r.table == table) {
            let row = desired.row(table, &r.key);
            match (row, deltas.get(r), p.current(table, &r.key)) {
                (Some(_), Some(cols), Some(cur)) => p.ref_delta(table, cur, cols),
                _ => p.row(table, &r.key, row),
            }
        }
    }
    p.ops
}

/// The full diff (`only` = None) or the diff over the rows `only`.
pub fn plan_with(
    desired: &DesiredNb,
    db: &Database,
    index: &RowIndex,
    only: Option<&BTreeSet<RowRef>>,
) -> Vec<Operation> {
    let mut p = Planner {
        db,
        index,
        ops: Vec::new(),
        named: HashMap::new(),
    };
    let empty = BTreeMap::new();
    for table in PLAN_ORDER {
        let rows = desired.tables.get(table).unwrap_or(&empty);
        match only {
            None => {
                for (key, row) in rows {
                    p.row(table, key, Some(row));
                }
                if is_root(table) {
                    // Our root rows that are no longer desired, and duplicates.
                    let mut gone: Vec<Uuid> = index
                        .by_key
                        .get(table)
                        .into_iter()
                        .flatten()
                        .filter(|(k, _)| !rows.contains_key(*k))
                        .map(|(_, u)| *u)
                        .collect();
                    gone.extend(
                        index
                            .extra
                            .iter()
                            .filter(|(t, _)| *t == table)
                            .map(|(_, u)| *u),
                    );
                    gone.sort();
                    for u in gone {
                        p.ops.push(Operation::Delete {
                            table: table.into(),
                            conditions: vec![Condition::uuid(u)],
                        });
                    }
                }
            }
            Some(set) => {
                let lo = RowRef {
                    table,
                    key: String::new(),
                };
                for r in set.range(lo..).take_while(|r| r.table == table) {
                    p.row(table, &r.key, rows.get(&r.key));
                }
            }
        }
    }
    p.ops
}

struct Planner<'a> {
    db: &'a Database,
    index: &'a RowIndex,
    ops: Vec<Operation>,
    named: HashMap<RowRef, String>,
}

impl<'a> Planner<'a> {
    fn resolve(&self, r: &RowRef) -> Option<Atom> {
        if let Some(u) = self.index.uuid(r.table, &r.key) {
            return Some(Atom::Uuid(u));
        }
        self.named.get(r).map(|n| Atom::NamedUuid(n.clone()))
    }

    fn current(&self, table: &str, key: &str) -> Option<&'a Row> {
        let (db, index) = (self.db, self.index);
        let u = index.uuid(table, key)?;
        db.table(table)?.get(&u)
    }

    /// Mutations for the reference changes `cols` of an existing row of
    /// ours: references added that the database lacks, and references of
    /// ours removed that it holds.
    fn ref_delta(
        &mut self,
        table: &'static str,
        cur: &Row,
        cols: &BTreeMap<&'static str, RefDelta>,
    ) {
        for (col, d) in cols {
            let have = match cur.get(col) {
                Some(Datum::Set(s)) => Some(s),
                _ => None,
            };
            let holds = |a: &Atom| have.is_some_and(|s| s.contains(a));
            let add: Vec<Atom> = d
                .added
                .iter()
                .filter_map(|t| self.resolve(t))
                .filter(|a| !holds(a))
                .collect();
            let del: Vec<Atom> = d
                .removed
                .iter()
                .filter_map(|t| self.index.uuid(t.table, &t.key))
                .map(Atom::Uuid)
                .filter(|a| holds(a))
                .collect();
            let mut mutations = Vec::new();
            if !del.is_empty() {
                mutations.push(Mutation::new(col, Mutator::Delete, Datum::set(del)));
            }
            if !add.is_empty() {
                mutations.push(Mutation::new(col, Mutator::Insert, Datum::set(add)));
            }
            if !mutations.is_empty() {
                self.ops.push(Operation::Mutate {
                    table: table.into(),
                    conditions: vec![Condition::uuid(cur.uuid)],
                    mutations,
                });
            }
        }
    }

    /// The operations for one row: insert, update and mutate, or delete.
    fn row(&mut self, table: &'static str, key: &str, row: Option<&DesiredRow>) {
        let cur = self.current(table, key);
        match (row, cur) {
            (None, None) => {}
            (None, Some(cur)) => {
                // Children go when their parent drops them.
                if is_root(table) {
                    self.ops.push(Operation::Delete {
                        table: table.into(),
                        conditions: vec![Condition::uuid(cur.uuid)],
                    });
                }
            }
            (Some(row), None) => {
                let mut columns = row.columns.clone();
                for (col, targets) in &row.refs {
                    let atoms: Vec<Atom> = targets.iter().filter_map(|t| self.resolve(t)).collect();
                    columns.insert(col.to_string(), Datum::set(atoms));
                }
                let name = format!("row{}", self.named.len());
                self.named.insert(
                    RowRef {
                        table,
                        key: key.to_string(),
                    },
                    name.clone(),
                );
                self.ops
                    .push(Operation::insert(table, columns, Some(&name)));
            }
            (Some(row), Some(cur)) => {
                let uuid = cur.uuid;
                let changed: BTreeMap<String, Datum> = row
                    .columns
                    .iter()
                    .filter(|(c, v)| !same(cur.get(c), v))
                    .map(|(c, v)| (c.clone(), v.clone()))
                    .collect();
                if !changed.is_empty() {
                    self.ops.push(Operation::Update {
                        table: table.into(),
                        conditions: vec![Condition::uuid(uuid)],
                        row: changed,
                    });
                }
                let ref_cols: BTreeSet<&str> = row
                    .refs
                    .keys()
                    .copied()
                    .chain(ref_columns(table).iter().copied())
                    .collect();
                let mut ops = Vec::new();
                for col in ref_cols {
                    let want: BTreeSet<Atom> = row
                        .refs
                        .get(col)
                        .into_iter()
                        .flatten()
                        .filter_map(|t| self.resolve(t))
                        .collect();
                    let have: BTreeSet<Atom> = match cur.get(col) {
                        Some(Datum::Set(s)) => s
                            .iter()
                            .filter(|a| matches!(a, Atom::Uuid(u) if self.index.is_owned(u)))
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
                            conditions: vec![Condition::uuid(uuid)],
                            mutations,
                        });
                    }
                }
                self.ops.extend(ops);
            }
        }
    }
}

/// The reference columns to our children that a parent table has, so that
/// children that are no longer desired get removed even when a parent no
/// longer wants any.
fn ref_columns(table: &str) -> &'static [&'static str] {
    match table {
        "Logical_Switch" => &["ports", "acls", "qos_rules", "load_balancer"],
        "Logical_Router" => &["ports", "policies"],
        "Meter" => &["bands"],
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
