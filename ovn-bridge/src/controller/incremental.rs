//! Incremental computation of the desired Northbound rows: the rows are
//! kept per [`Unit`], an event recomputes only the units it touches, and
//! the merged rows are patched in place. [`desired_nb`] stays the
//! reference: the merged rows always equal its output for the same inputs.
//! A row that changed only through references other units hold on it (a
//! pod's port in its subnet's switch) is reported with those reference
//! changes ([`DesiredCache::ref_deltas`]), so neither the cache nor the
//! planner walks a column that holds every port of the subnet.
//!
//! Owns the per-unit cache and the mapping from changed objects to units.
//! It must not read or write the database.
//!
//! [`desired_nb`]: super::desired::desired_nb

use std::collections::{BTreeMap, BTreeSet};

use super::desired::{
    all_units, gateway_nodes, policy_crosses_namespaces, unit_rows_into, Context, DesiredNb,
    PolicyContext, RowRef, Unit,
};
use super::ipam::Ipam;
use super::model::{ClusterState, ObjectRef};
use super::Config;

/// A reference held by a unit on a row of another unit: column and target,
/// counted (two units may hold the same one).
type ForeignRefs = BTreeMap<&'static str, BTreeMap<RowRef, usize>>;

/// The desired rows, per unit and merged.
#[derive(Debug, Default, Clone)]
pub struct DesiredCache {
    fragments: BTreeMap<Unit, DesiredNb>,
    merged: DesiredNb,
    foreign: BTreeMap<RowRef, ForeignRefs>,
    row_owner: BTreeMap<RowRef, Unit>,
    ref_deltas: RefDeltas,
}

/// References added to and removed from one column of a row.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RefDelta {
    /// References the row gained.
    pub added: BTreeSet<RowRef>,
    /// References the row lost.
    pub removed: BTreeSet<RowRef>,
}

impl RefDelta {
    fn add(&mut self, r: &RowRef) {
        if !self.removed.remove(r) {
            self.added.insert(r.clone());
        }
    }

    fn remove(&mut self, r: &RowRef) {
        if !self.added.remove(r) {
            self.removed.insert(r.clone());
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Per row and column, the reference changes of rows whose only change
/// was references held on them by other units (a pod's port in its
/// switch): the planner mutates just these instead of comparing a column
/// that may hold every port of the subnet.
pub type RefDeltas = BTreeMap<RowRef, BTreeMap<&'static str, RefDelta>>;

/// The units an object change touches; `None` when every unit must be
/// recomputed (subnets and namespaces move pods between switches).
pub fn units_touched(state: &ClusterState, changed: &[ObjectRef]) -> Option<BTreeSet<Unit>> {
    let mut units = BTreeSet::new();
    let crossing: Vec<Unit> = state
        .network_policies
        .iter()
        .filter(|(_, np)| policy_crosses_namespaces(np))
        .map(|(k, _)| Unit::Policy(k.clone()))
        .collect();
    let mut crossing_added = false;
    for r in changed {
        match r {
            ObjectRef::Namespace(_) | ObjectRef::Subnet(_) => return None,
            ObjectRef::Service(_) | ObjectRef::EndpointSlice(_) => {
                units.insert(Unit::Cluster);
            }
            ObjectRef::Node(n) => {
                units.insert(Unit::Node(n.clone()));
                // A centralized subnet reroutes to its first ready gateway
                // node: any of them changing may change which one.
                for (name, sn) in &state.subnets {
                    if gateway_nodes(&sn.spec).contains(n) {
                        units.insert(Unit::Subnet(name.clone()));
                    }
                }
            }
            ObjectRef::NetworkPolicy(k) => {
                units.insert(Unit::Policy(k.clone()));
            }
            ObjectRef::Pod(k) => {
                units.insert(Unit::Pod(k.clone()));
                // Policies of the pod's namespace select it or its peers.
                let lo = (k.0.clone(), String::new());
                for (pk, _) in state.network_policies.range(lo..) {
                    if pk.0 != k.0 {
                        break;
                    }
                    units.insert(Unit::Policy(pk.clone()));
                }
                if !crossing_added {
                    units.extend(crossing.iter().cloned());
                    crossing_added = true;
                }
            }
        }
    }
    Some(units)
}

/// The objects whose allocation differs between two allocation tables.
pub fn reallocated(
    before: &BTreeMap<String, super::ipam::Allocation>,
    after: &BTreeMap<String, super::ipam::Allocation>,
) -> Vec<ObjectRef> {
    let owners: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    owners
        .into_iter()
        .filter(|o| before.get(*o) != after.get(*o))
        .filter_map(|o| super::owner_ref(o))
        .collect()
}

impl DesiredCache {
    /// Computes every unit.
    pub fn build(state: &ClusterState, ipam: &Ipam, config: &Config) -> Self {
        let mut c = DesiredCache::default();
        let units: BTreeSet<Unit> = all_units(state, config).into_iter().collect();
        c.update(&units, state, ipam, config);
        c
    }

    /// Recomputes every unit of `state` and drops the units that are gone.
    pub fn update_all(
        &mut self,
        state: &ClusterState,
        ipam: &Ipam,
        config: &Config,
    ) -> BTreeSet<RowRef> {
        let mut units: BTreeSet<Unit> = all_units(state, config).into_iter().collect();
        units.extend(self.fragments.keys().cloned());
        self.update(&units, state, ipam, config)
    }

    /// The merged desired rows (events are those of the units computed last).
    pub fn desired(&self) -> &DesiredNb {
        &self.merged
    }

    /// The rows of the last [`DesiredCache::update`] that changed only by
    /// references other units hold on them, with those changes. Every such
    /// row is also among the rows `update` returned.
    pub fn ref_deltas(&self) -> &RefDeltas {
        &self.ref_deltas
    }

    /// Recomputes `units` (present or gone) and patches the merged rows.
    /// Returns the rows whose desired contents changed (added, removed or
    /// different).
    pub fn update(
        &mut self,
        units: &BTreeSet<Unit>,
        state: &ClusterState,
        ipam: &Ipam,
        config: &Config,
    ) -> BTreeSet<RowRef> {
        let ctx = Context::new(state, ipam, config);
        // Policies are evaluated over the pods of their own namespace
        // unless one of them selects peers by namespace.
        let mut policy_namespaces: BTreeSet<&str> = BTreeSet::new();
        let mut crossing = false;
        for u in units {
            if let Unit::Policy(k) = u {
                policy_namespaces.insert(k.0.as_str());
                crossing |= state
                    .network_policies
                    .get(k)
                    .is_some_and(policy_crosses_namespaces);
            }
        }
        let pctx = if crossing {
            PolicyContext::new(state, ipam, config, &ctx)
        } else {
            PolicyContext::scoped(state, ipam, config, &ctx, &policy_namespaces)
        };
        let mut touched: BTreeSet<RowRef> = BTreeSet::new();
        let mut before: BTreeMap<RowRef, Option<super::desired::DesiredRow>> = BTreeMap::new();
        let mut remember = |merged: &DesiredNb, r: &RowRef| {
            before
                .entry(r.clone())
                .or_insert_with(|| merged.row(r.table, &r.key).cloned());
        };
        self.merged.events.clear();
        let mut deltas: RefDeltas = BTreeMap::new();
        for unit in units {
            let mut frag = DesiredNb::default();
            unit_rows_into(&mut frag, unit, state, ipam, config, &ctx, &pctx);
            // Take out the old fragment.
            if let Some(old) = self.fragments.remove(unit) {
                for (table, key, col, target) in &old.unresolved {
                    let parent = RowRef {
                        table,
                        key: key.clone(),
                    };
                    if self.drop_foreign(&parent, col, target) {
                        deltas
                            .entry(parent)
                            .or_default()
                            .entry(col)
                            .or_default()
                            .remove(target);
                    }
                }
                for (table, rows) in &old.tables {
                    for key in rows.keys() {
                        let r = RowRef {
                            table,
                            key: key.clone(),
                        };
                        remember(&self.merged, &r);
                        if let Some(t) = self.merged.tables.get_mut(table) {
                            t.remove(key);
                            if t.is_empty() {
                                self.merged.tables.remove(table);
                            }
                        }
                        self.row_owner.remove(&r);
                        touched.insert(r);
                    }
                }
            }
            // Put in the new one.
            for (table, rows) in &frag.tables {
                for (key, row) in rows {
                    let r = RowRef {
                        table,
                        key: key.clone(),
                    };
                    remember(&self.merged, &r);
                    let mut row = row.clone();
                    for (col, targets) in self.foreign.get(&r).into_iter().flatten() {
                        row.refs
                            .entry(col)
                            .or_default()
                            .extend(targets.keys().cloned());
                    }
                    self.merged
                        .tables
                        .entry(table)
                        .or_default()
                        .insert(key.clone(), row);
                    self.row_owner.insert(r.clone(), unit.clone());
                    touched.insert(r);
                }
            }
            for (table, key, col, target) in &frag.unresolved {
                let parent = RowRef {
                    table,
                    key: key.clone(),
                };
                *self
                    .foreign
                    .entry(parent.clone())
                    .or_default()
                    .entry(col)
                    .or_default()
                    .entry(target.clone())
                    .or_insert(0) += 1;
                if let Some(row) = self
                    .merged
                    .tables
                    .get_mut(table)
                    .and_then(|t| t.get_mut(key))
                {
                    if row.refs.entry(col).or_default().insert(target.clone()) {
                        deltas
                            .entry(parent)
                            .or_default()
                            .entry(col)
                            .or_default()
                            .add(target);
                    }
                }
            }
            self.merged.events.extend(frag.events.iter().cloned());
            if !frag.tables.is_empty() || !frag.unresolved.is_empty() {
                self.fragments.insert(unit.clone(), frag);
            }
        }
        let mut changed: BTreeSet<RowRef> = touched
            .into_iter()
            .filter(|r| {
                before.get(r).cloned().flatten().as_ref() != self.merged.row(r.table, &r.key)
            })
            .collect();
        self.ref_deltas.clear();
        for (r, mut cols) in deltas {
            cols.retain(|_, d| !d.is_empty());
            if cols.is_empty() {
                continue;
            }
            if before.contains_key(&r) {
                // Also recomputed by its own unit, and possibly remembered
                // after a reference changed: compare it whole.
                changed.insert(r);
            } else {
                changed.insert(r.clone());
                self.ref_deltas.insert(r, cols);
            }
        }
        changed
    }

    /// Drops one counted reference held on `parent`; true when the merged
    /// row lost it.
    fn drop_foreign(&mut self, parent: &RowRef, col: &'static str, target: &RowRef) -> bool {
        let mut gone = false;
        if let Some(n) = self
            .foreign
            .get_mut(parent)
            .and_then(|m| m.get_mut(col))
            .and_then(|m| m.get_mut(target))
        {
            *n -= 1;
            gone = *n == 0;
        }
        if !gone {
            return false;
        }
        if let Some(m) = self.foreign.get_mut(parent) {
            if let Some(c) = m.get_mut(col) {
                c.remove(target);
                if c.is_empty() {
                    m.remove(col);
                }
            }
            if m.is_empty() {
                self.foreign.remove(parent);
            }
        }
        // The parent's own fragment may hold the same reference.
        let own = self
            .row_owner
            .get(parent)
            .and_then(|u| self.fragments.get(u))
            .and_then(|f| f.row(parent.table, &parent.key))
            .is_some_and(|r| r.refs.get(col).is_some_and(|s| s.contains(target)));
        if own {
            return false;
        }
        if let Some(row) = self
            .merged
            .tables
            .get_mut(parent.table)
            .and_then(|t| t.get_mut(&parent.key))
        {
            if let Some(s) = row.refs.get_mut(col) {
                let removed = s.remove(target);
                if s.is_empty() {
                    row.refs.remove(col);
                }
                return removed;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::controller::desired::{desired_nb, gateway_port_group};
    use crate::controller::manifest::{parse_str, Loaded};
    use crate::controller::model::Object;
    use crate::controller::{owner_ref, sync_ipam, sync_ipam_objects, sync_ipam_placed};
    use ovsdb::{Atom, Datum};

    /// A small deterministic generator (xorshift), so failures replay.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn object(yaml: &str) -> Object {
        let mut l = Loaded::default();
        parse_str(yaml, Path::new("gen.yaml"), &mut l);
        assert!(l.errors.is_empty(), "{:?} in {yaml}", l.errors);
        l.objects.remove(0)
    }

    /// One random change: the object applied or deleted.
    fn random_change(g: &mut Gen) -> (Option<Object>, ObjectRef) {
        let ns = ["a", "b", "c"][g.pick(3) as usize];
        let delete = g.pick(4) == 0;
        match g.pick(12) {
            0..=4 | 11 => {
                let name = format!("p{}", g.pick(12));
                let app = ["x", "y"][g.pick(2) as usize];
                let rate = [0, 5, 7][g.pick(3) as usize];
                let port = if g.pick(2) == 0 {
                    "ports: [{name: http, containerPort: 8080}]"
                } else {
                    "ports: []"
                };
                let stat = if g.pick(5) == 0 {
                    format!(", ovn.kubernetes.io/ip_address: 10.16.9.{}", g.pick(4) + 2)
                } else {
                    String::new()
                };
                let node = format!("n{}", g.pick(3));
                let y = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}, annotations: {{ovn.kubernetes.io/ingress_rate: \"{rate}\"{stat}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, {port}}}]}}");
                let r = ObjectRef::Pod((ns.into(), name));
                (if delete { None } else { Some(object(&y)) }, r)
            }
            5 | 6 => {
                let name = format!("np{}", g.pick(4));
                let sel = ["x", "y"][g.pick(2) as usize];
                let peer = match g.pick(3) {
                    0 => "{podSelector: {matchLabels: {app: x}}}".to_string(),
                    1 => "{namespaceSelector: {matchLabels: {team: red}}}".to_string(),
                    _ => "{ipBlock: {cidr: 192.168.0.0/16}}".to_string(),
                };
                let port = ["http", "80"][g.pick(2) as usize];
                let log = [
                    "{}",
                    "{ovn.kubernetes.io/enable_log: \"true\"}",
                    "{ovn.kubernetes.io/enable_log: \"true\", ovn.kubernetes.io/log_acl_actions: \"drop,allow\", ovn.kubernetes.io/acl_log_meter_rate: \"10\"}",
                ][g.pick(3) as usize];
                let y = format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}, annotations: {log}}}\nspec:\n  podSelector: {{matchLabels: {{app: {sel}}}}}\n  ingress:\n  - from: [{peer}]\n    ports: [{{port: {port}}}]");
                let r = ObjectRef::NetworkPolicy((ns.into(), name));
                (if delete { None } else { Some(object(&y)) }, r)
            }
            7 => {
                let name = format!("s{}", g.pick(3));
                let y = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{clusterIP: 10.96.0.{}, ports: [{{name: http, port: 80}}]}}", g.pick(3) + 1);
                let r = ObjectRef::Service((ns.into(), name));
                (if delete { None } else { Some(object(&y)) }, r)
            }
            8 => {
                let name = format!("n{}", g.pick(3));
                let y = format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}");
                let r = ObjectRef::Node(name);
                (if delete { None } else { Some(object(&y)) }, r)
            }
            10 => {
                let i = g.pick(2);
                let team = ["red", "blue"][g.pick(2) as usize];
                let gw = match g.pick(3) {
                    0 => "distributed".to_string(),
                    _ => format!(
                        "centralized, gatewayNode: \"n{},n{}\"",
                        g.pick(3),
                        g.pick(3)
                    ),
                };
                let y = format!("apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata: {{name: s-{i}}}\nspec: {{cidrBlock: 10.{}.0.0/24, namespaceSelectors: [{{matchLabels: {{team: {team}}}}}], gatewayType: {gw}}}", 40 + i);
                let r = ObjectRef::Subnet(format!("s-{i}"));
                (if delete { None } else { Some(object(&y)) }, r)
            }
            _ => {
                let team = ["red", "blue"][g.pick(2) as usize];
                let y = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{team: {team}}}}}");
                (Some(object(&y)), ObjectRef::Namespace(ns.into()))
            }
        }
    }

    #[test]
    fn incremental_rows_equal_the_full_recompute() {
        let config = Config::default();
        for seed in 1..=8u64 {
            let mut g = Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut state = ClusterState::default();
            let mut ipam = Ipam::new();
            let recorded = BTreeMap::new();
            sync_ipam(&state, &config, &mut ipam, &recorded);
            let mut ipam_objects = ipam.clone();
            let mut failed: BTreeSet<String> = BTreeSet::new();
            let mut cache = DesiredCache::build(&state, &ipam, &config);
            let mut prev_full = desired_nb(&state, &ipam, &config);
            let mut partial = 0;
            let mut deltas = 0;
            let mut seen: BTreeSet<&str> = BTreeSet::new();
            for step in 0..150 {
                let (obj, r) = random_change(&mut g);
                match obj {
                    Some(o) => state.apply(o),
                    None => {
                        state.delete(&r);
                    }
                }
                let before = ipam.allocations().clone();
                sync_ipam(&state, &config, &mut ipam, &recorded);
                // Placing only the changed owner, and those that could not
                // get what they asked for, gives the same table as the full
                // sync.
                if !matches!(r, ObjectRef::Namespace(_) | ObjectRef::Subnet(_)) {
                    let mut refs = vec![r.clone()];
                    refs.extend(failed.iter().filter_map(|o| owner_ref(o)));
                    failed =
                        sync_ipam_objects(&state, &config, &mut ipam_objects, &recorded, &refs)
                            .failed;
                } else {
                    failed = sync_ipam_placed(&state, &config, &mut ipam_objects, &recorded).failed;
                }
                assert_eq!(
                    ipam_objects.allocations(),
                    ipam.allocations(),
                    "seed {seed} step {step} after {r:?}"
                );
                let mut changed = vec![r.clone()];
                changed.extend(reallocated(&before, ipam.allocations()));
                let changed_rows = match units_touched(&state, &changed) {
                    Some(units) => {
                        partial += 1;
                        cache.update(&units, &state, &ipam, &config)
                    }
                    None => cache.update_all(&state, &ipam, &config),
                };
                let full = desired_nb(&state, &ipam, &config);
                // The generated states reach the gateway and logging rows.
                for (key, row) in full
                    .tables
                    .get("Logical_Router_Policy")
                    .into_iter()
                    .flatten()
                {
                    let reroute =
                        row.columns.get("action") == Some(&Datum::atom(Atom::string("reroute")));
                    if reroute && key.contains(".src == $") {
                        seen.insert("distributed reroute");
                    } else if reroute {
                        seen.insert("centralized reroute");
                    }
                }
                if full.count("Meter") > 0 {
                    seen.insert("meter");
                }
                for sn in ["ovn-default", "s-0", "s-1"] {
                    for n in ["n0", "n1", "n2"] {
                        let members = full
                            .row("Port_Group", &gateway_port_group(sn, n))
                            .and_then(|r| r.refs.get("ports"))
                            .map_or(0, BTreeSet::len);
                        if members > 0 {
                            seen.insert("node port group members");
                        }
                    }
                }
                assert_eq!(
                    cache.desired().tables,
                    full.tables,
                    "seed {seed} step {step} after {r:?}"
                );
                // A row changed only by references of other units is
                // exactly the previous row with its delta applied.
                for (r, cols) in cache.ref_deltas() {
                    let (Some(was), Some(now)) =
                        (prev_full.row(r.table, &r.key), full.row(r.table, &r.key))
                    else {
                        panic!("seed {seed} step {step}: delta on a row added or removed: {r:?}");
                    };
                    let mut patched = was.clone();
                    for (col, d) in cols {
                        let set = patched.refs.entry(col).or_default();
                        for t in &d.removed {
                            assert!(set.remove(t), "seed {seed} step {step}: {t:?} was not held");
                        }
                        for t in &d.added {
                            assert!(
                                set.insert(t.clone()),
                                "seed {seed} step {step}: {t:?} was held"
                            );
                        }
                    }
                    patched.refs.retain(|_, s| !s.is_empty());
                    let mut now = now.clone();
                    now.refs.retain(|_, s| !s.is_empty());
                    assert_eq!(patched, now, "seed {seed} step {step}: delta of {r:?}");
                    deltas += 1;
                }
                // Every row that differs from the previous step is reported.
                let mut keys: BTreeSet<RowRef> = BTreeSet::new();
                for nb in [&prev_full, &full] {
                    for (table, rows) in &nb.tables {
                        keys.extend(rows.keys().map(|k| RowRef {
                            table,
                            key: k.clone(),
                        }));
                    }
                }
                for k in keys {
                    if prev_full.row(k.table, &k.key) != full.row(k.table, &k.key) {
                        assert!(
                            changed_rows.contains(&k),
                            "seed {seed} step {step}: {k:?} not reported"
                        );
                    }
                }
                prev_full = full;
            }
            assert!(partial > 100, "most steps took the incremental path");
            assert_eq!(seen.len(), 4, "seed {seed}: only {seen:?}");
            assert!(deltas > 10, "switch ports were patched by delta ({deltas})");
        }
    }
}
