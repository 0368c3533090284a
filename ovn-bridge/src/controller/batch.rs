//! Splitting the operations of one pass into transactions of bounded size
//! that each leave the database valid: a new child row (a switch port, an
//! ACL, a QoS rule, a router port or policy, a meter band) goes in the same transaction as the
//! operation that gives it its strong reference (the database would drop
//! it otherwise), a parent that holds more new children than fit is
//! inserted with the first of them and mutated in later transactions, a
//! child moved between parents is dropped and taken in one transaction, and
//! a row named in one transaction is referred to by its uuid in the later
//! ones ([`resolve_names`]).
//!
//! Owns batching and name resolution. It must not decide which operations
//! are needed (that is the planner's job).

use std::collections::{BTreeSet, HashMap};

use ovsdb::{Atom, Condition, Datum, Mutation, Mutator, Operation, Uuid};

use super::desired::is_root;

/// The default bound on operations per transaction.
pub const DEFAULT_MAX_OPS_PER_TXN: usize = 5000;

/// Whether `table.column` holds strong references to rows that live only
/// while referenced (the Northbound schema's non-root tables).
pub fn strong_column(table: &str, column: &str) -> bool {
    matches!(
        (table, column),
        ("Logical_Switch", "ports" | "acls" | "qos_rules")
            | ("Logical_Router", "ports" | "policies")
            | ("Port_Group", "acls")
            | ("Meter", "bands")
    )
}

fn table_of(op: &Operation) -> Option<&str> {
    match op {
        Operation::Insert { table, .. }
        | Operation::Update { table, .. }
        | Operation::Mutate { table, .. }
        | Operation::Delete { table, .. } => Some(table),
        _ => None,
    }
}

/// Takes out of `op` the named references to rows in `pending` held in
/// strong columns, as (column, name) in order.
fn take_new_children(
    op: &mut Operation,
    pending: &HashMap<String, Operation>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut take = |table: &str, column: &str, d: &mut Datum| {
        if !strong_column(table, column) {
            return;
        }
        if let Datum::Set(s) = d {
            let names: Vec<Atom> = s
                .iter()
                .filter(|a| matches!(a, Atom::NamedUuid(n) if pending.contains_key(n)))
                .cloned()
                .collect();
            for a in names {
                s.remove(&a);
                if let Atom::NamedUuid(n) = a {
                    out.push((column.to_string(), n));
                }
            }
        }
    };
    match op {
        Operation::Insert { table, row, .. } => {
            for (c, d) in row.iter_mut() {
                take(table, c, d);
            }
        }
        Operation::Mutate {
            table, mutations, ..
        } => {
            for m in mutations.iter_mut() {
                if m.mutator == Mutator::Insert {
                    take(table, &m.column, &mut m.value);
                }
            }
            mutations.retain(|m| m.mutator != Mutator::Insert || !m.value.is_empty());
        }
        _ => {}
    }
    out
}

/// Puts (column, name) references back into `op`'s strong columns.
fn give_children(op: &mut Operation, children: &[(String, String)]) {
    for (col, name) in children {
        let atom = Atom::NamedUuid(name.clone());
        match op {
            Operation::Insert { row, .. } => match row
                .entry(col.clone())
                .or_insert_with(|| Datum::Set(BTreeSet::new()))
            {
                Datum::Set(s) => {
                    s.insert(atom);
                }
                Datum::Map(_) => {}
            },
            Operation::Mutate { mutations, .. } => {
                let m = match mutations
                    .iter_mut()
                    .position(|m| m.mutator == Mutator::Insert && &m.column == col)
                {
                    Some(i) => &mut mutations[i],
                    None => {
                        mutations.push(Mutation::new(
                            col,
                            Mutator::Insert,
                            Datum::Set(BTreeSet::new()),
                        ));
                        let last = mutations.len() - 1;
                        &mut mutations[last]
                    }
                };
                if let Datum::Set(s) = &mut m.value {
                    s.insert(atom);
                }
            }
            _ => {}
        }
    }
}

/// Uuids of existing rows that `op` puts into or takes out of a strong
/// column: an operation that drops a child and one that takes it must share
/// a transaction.
fn moved_children(op: &Operation) -> Vec<Uuid> {
    let mut out = Vec::new();
    let Operation::Mutate {
        table, mutations, ..
    } = op
    else {
        return out;
    };
    for m in mutations {
        if !strong_column(table, &m.column) {
            continue;
        }
        if let Datum::Set(s) = &m.value {
            out.extend(s.iter().filter_map(|a| match a {
                Atom::Uuid(u) => Some(*u),
                _ => None,
            }));
        }
    }
    out
}

/// Splits `ops` (in the planner's order: children before parents) into
/// transactions of at most `max_ops` operations (at least 2), except where
/// one parent and the children it moves must stay together.
pub fn batches(ops: Vec<Operation>, max_ops: usize) -> Vec<Vec<Operation>> {
    let max = max_ops.max(2);
    if ops.len() <= max {
        return if ops.is_empty() {
            Vec::new()
        } else {
            vec![ops]
        };
    }
    let mut pending: HashMap<String, Operation> = HashMap::new();
    let mut groups: Vec<Option<Vec<Operation>>> = Vec::new();
    let mut group_of_uuid: HashMap<Uuid, usize> = HashMap::new();
    let mut uuids_of_group: HashMap<usize, Vec<Uuid>> = HashMap::new();
    for mut op in ops {
        if let Operation::Insert {
            table,
            uuid_name: Some(n),
            ..
        } = &op
        {
            if !is_root(table) {
                pending.insert(n.clone(), op);
                continue;
            }
        }
        let children = take_new_children(&mut op, &pending);
        let mut chunks = children.chunks(max - 1);
        let first = chunks.next().unwrap_or(&[]);
        let mut group: Vec<Operation> = first
            .iter()
            .filter_map(|(_, n)| pending.remove(n))
            .collect();
        let follow_up = |chunk: &[(String, String)]| -> Option<Operation> {
            let table = table_of(&op)?.to_string();
            let conditions = match &op {
                Operation::Insert {
                    uuid_name: Some(n), ..
                } => vec![Condition::eq(
                    "_uuid",
                    Datum::atom(Atom::NamedUuid(n.clone())),
                )],
                Operation::Mutate { conditions, .. } => conditions.clone(),
                _ => return None,
            };
            let mut m = Operation::Mutate {
                table,
                conditions,
                mutations: Vec::new(),
            };
            give_children(&mut m, chunk);
            Some(m)
        };
        let rest: Vec<Vec<Operation>> = chunks
            .map(|chunk| {
                let mut g: Vec<Operation> = chunk
                    .iter()
                    .filter_map(|(_, n)| pending.remove(n))
                    .collect();
                g.extend(follow_up(chunk));
                g
            })
            .collect();
        give_children(&mut op, first);
        let moved = moved_children(&op);
        group.push(op);
        // Merge with the earlier groups that move the same children; the
        // merged group takes the later place, which every name it
        // references precedes.
        let earlier: BTreeSet<usize> = moved
            .iter()
            .filter_map(|u| group_of_uuid.get(u).copied())
            .collect();
        let mut uuids = moved;
        if !earlier.is_empty() {
            let mut merged = Vec::new();
            for g in earlier {
                merged.extend(groups[g].take().unwrap_or_default());
                uuids.extend(uuids_of_group.remove(&g).unwrap_or_default());
            }
            merged.extend(group);
            group = merged;
        }
        let index = groups.len();
        for u in &uuids {
            group_of_uuid.insert(*u, index);
        }
        uuids_of_group.insert(index, uuids);
        groups.push(Some(group));
        groups.extend(rest.into_iter().map(Some));
    }
    // Children no parent takes (none in a consistent plan) go last.
    let mut orphans: Vec<(String, Operation)> = pending.into_iter().collect();
    orphans.sort_by(|a, b| a.0.cmp(&b.0));
    groups.extend(orphans.into_iter().map(|(_, op)| Some(vec![op])));

    let mut out: Vec<Vec<Operation>> = Vec::new();
    let mut cur: Vec<Operation> = Vec::new();
    for g in groups.into_iter().flatten() {
        if !cur.is_empty() && cur.len() + g.len() > max {
            out.push(std::mem::take(&mut cur));
        }
        cur.extend(g);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn resolve_datum(d: &mut Datum, known: &HashMap<String, Uuid>) {
    let sub = |a: &Atom| -> Option<Atom> {
        match a {
            Atom::NamedUuid(n) => known.get(n).map(|u| Atom::Uuid(*u)),
            _ => None,
        }
    };
    match d {
        Datum::Set(s) => {
            if s.iter().any(|a| sub(a).is_some()) {
                *s = s
                    .iter()
                    .map(|a| sub(a).unwrap_or_else(|| a.clone()))
                    .collect();
            }
        }
        Datum::Map(m) => {
            if m.iter().any(|(k, v)| sub(k).is_some() || sub(v).is_some()) {
                *m = m
                    .iter()
                    .map(|(k, v)| {
                        (
                            sub(k).unwrap_or_else(|| k.clone()),
                            sub(v).unwrap_or_else(|| v.clone()),
                        )
                    })
                    .collect();
            }
        }
    }
}

fn resolve_conditions(cs: &mut [Condition], known: &HashMap<String, Uuid>) {
    for c in cs {
        if let Condition::Compare { value, .. } = c {
            resolve_datum(value, known);
        }
    }
}

/// Replaces the names of rows inserted by earlier transactions (`known`:
/// name to uuid) with their uuids.
pub fn resolve_names(ops: &mut [Operation], known: &HashMap<String, Uuid>) {
    if known.is_empty() {
        return;
    }
    for op in ops {
        match op {
            Operation::Insert { row, .. } => row.values_mut().for_each(|d| resolve_datum(d, known)),
            Operation::Update {
                row, conditions, ..
            } => {
                row.values_mut().for_each(|d| resolve_datum(d, known));
                resolve_conditions(conditions, known);
            }
            Operation::Mutate {
                mutations,
                conditions,
                ..
            } => {
                mutations
                    .iter_mut()
                    .for_each(|m| resolve_datum(&mut m.value, known));
                resolve_conditions(conditions, known);
            }
            Operation::Delete { conditions, .. } => resolve_conditions(conditions, known),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn lsp(name: &str) -> Operation {
        Operation::insert("Logical_Switch_Port", BTreeMap::new(), Some(name))
    }

    fn named(names: impl IntoIterator<Item = String>) -> Datum {
        Datum::set(names.into_iter().map(Atom::NamedUuid))
    }

    /// Names referenced by an operation in a strong column.
    fn strong_names(op: &Operation) -> Vec<String> {
        let mut out = Vec::new();
        let mut scan = |table: &str, col: &str, d: &Datum| {
            if let (true, Datum::Set(s)) = (strong_column(table, col), d) {
                out.extend(s.iter().filter_map(|a| match a {
                    Atom::NamedUuid(n) => Some(n.clone()),
                    _ => None,
                }));
            }
        };
        match op {
            Operation::Insert { table, row, .. } => row.iter().for_each(|(c, d)| scan(table, c, d)),
            Operation::Mutate {
                table, mutations, ..
            } => mutations
                .iter()
                .for_each(|m| scan(table, &m.column, &m.value)),
            _ => {}
        }
        out
    }

    #[test]
    fn new_children_travel_with_a_strong_reference_and_parents_are_mutated_later() {
        let n = 23;
        let mut ops: Vec<Operation> = (0..n).map(|i| lsp(&format!("p{i}"))).collect();
        let mut ls = BTreeMap::new();
        ls.insert("name".to_string(), Datum::atom(Atom::string("sw")));
        ls.insert("ports".to_string(), named((0..n).map(|i| format!("p{i}"))));
        ops.push(Operation::insert("Logical_Switch", ls, Some("sw")));
        // A port group's weak reference to some of the same ports.
        ops.push(Operation::Mutate {
            table: "Port_Group".into(),
            conditions: vec![Condition::uuid(Uuid::nil())],
            mutations: vec![Mutation::new(
                "ports",
                Mutator::Insert,
                named((0..n).step_by(5).map(|i| format!("p{i}"))),
            )],
        });
        let txns = batches(ops, 5);
        assert!(txns.len() >= 6, "{} transactions", txns.len());
        let mut defined_before: BTreeSet<String> = BTreeSet::new();
        let mut children = 0;
        for (i, t) in txns.iter().enumerate() {
            assert!(t.len() <= 5, "transaction {i} has {} operations", t.len());
            let here: BTreeSet<String> = t
                .iter()
                .filter_map(|o| match o {
                    Operation::Insert { uuid_name, .. } => uuid_name.clone(),
                    _ => None,
                })
                .collect();
            let held: BTreeSet<String> = t.iter().flat_map(strong_names).collect();
            for o in t {
                if let Operation::Insert {
                    table,
                    uuid_name: Some(name),
                    ..
                } = o
                {
                    if table == "Logical_Switch_Port" {
                        children += 1;
                        assert!(
                            held.contains(name),
                            "{name} has no parent in transaction {i}"
                        );
                    }
                }
                // Every name used is defined here or before.
                let mut used: Vec<String> = strong_names(o);
                if let Operation::Mutate {
                    conditions,
                    mutations,
                    ..
                } = o
                {
                    for c in conditions {
                        if let Condition::Compare {
                            value: Datum::Set(s),
                            ..
                        } = c
                        {
                            used.extend(s.iter().filter_map(|a| match a {
                                Atom::NamedUuid(n) => Some(n.clone()),
                                _ => None,
                            }));
                        }
                    }
                    for m in mutations {
                        if let Datum::Set(s) = &m.value {
                            used.extend(s.iter().filter_map(|a| match a {
                                Atom::NamedUuid(n) => Some(n.clone()),
                                _ => None,
                            }));
                        }
                    }
                }
                for u in used {
                    assert!(
                        here.contains(&u) || defined_before.contains(&u),
                        "{u} used in transaction {i} before it is inserted"
                    );
                }
            }
            defined_before.extend(here);
        }
        assert_eq!(children, n, "every port inserted once");
        // The switch's later chunks name the switch by its insert.
        let follow_ups = txns
            .iter()
            .flatten()
            .filter(|o| matches!(o, Operation::Mutate { table, .. } if table == "Logical_Switch"))
            .count();
        assert!(follow_ups >= 5, "{follow_ups} follow-up mutations");
    }

    #[test]
    fn a_moved_child_is_dropped_and_taken_in_one_transaction() {
        let u = Uuid::nil();
        let mutate = |sw: &str, mutator: Mutator| Operation::Mutate {
            table: "Logical_Switch".into(),
            conditions: vec![Condition::eq("name", Datum::atom(Atom::string(sw)))],
            mutations: vec![Mutation::new("ports", mutator, Datum::uuid(u))],
        };
        let filler = |i: usize| Operation::Delete {
            table: "Address_Set".into(),
            conditions: vec![Condition::eq(
                "name",
                Datum::atom(Atom::string(format!("s{i}"))),
            )],
        };
        let mut ops = vec![mutate("a", Mutator::Delete)];
        ops.extend((0..7).map(filler));
        ops.push(mutate("b", Mutator::Insert));
        ops.extend((7..10).map(filler));
        let txns = batches(ops, 3);
        let with_moves: Vec<usize> = txns
            .iter()
            .enumerate()
            .filter(|(_, t)| t.iter().any(|o| !moved_children(o).is_empty()))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(with_moves.len(), 1, "{txns:?}");
        assert_eq!(txns.iter().map(Vec::len).sum::<usize>(), 12);
    }

    #[test]
    fn names_from_earlier_transactions_become_uuids() {
        let u = Uuid::nil();
        let mut ops = vec![Operation::Mutate {
            table: "Logical_Switch".into(),
            conditions: vec![Condition::eq(
                "_uuid",
                Datum::atom(Atom::NamedUuid("sw".into())),
            )],
            mutations: vec![Mutation::new(
                "ports",
                Mutator::Insert,
                named(["p1".to_string(), "p2".to_string()]),
            )],
        }];
        let mut known = HashMap::new();
        known.insert("sw".to_string(), u);
        known.insert("p1".to_string(), u);
        resolve_names(&mut ops, &known);
        let Operation::Mutate {
            conditions,
            mutations,
            ..
        } = &ops[0]
        else {
            panic!("not a mutate");
        };
        assert_eq!(conditions[0], Condition::uuid(u));
        let Datum::Set(s) = &mutations[0].value else {
            panic!("not a set");
        };
        assert!(s.contains(&Atom::Uuid(u)) && s.contains(&Atom::NamedUuid("p2".into())));
    }
}
