//! The desired OVN Northbound contents as a pure function of the observed
//! Kubernetes state and the address allocations, named as Kube-OVN names
//! them: router `ovn-cluster`, one Logical_Switch per subnet with its
//! router port pair, `<pod>.<namespace>` ports, the `join` switch with a
//! `node-<name>` port per node, subnet isolation ACLs, the cluster load
//! balancers, NetworkPolicy port groups / address sets / ACLs (with their
//! logging meters), QoS rows, and the router policies of the subnets'
//! gateways (per node port groups of a distributed subnet, a reroute to
//! the gateway node of a centralized one).
//!
//! Owns the naming and the row contents. It must not read the database nor
//! write anything: [`desired_nb`] has no side effects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use ovsdb::{Atom, Datum};

use super::ipam::{derived_mac, Allocation, Ipam};
use super::model::{annotation, keys, selector_matches, ClusterState, ObjectKey, ObjectRef};
use super::Config;

/// The `external_ids` key that marks a row as written by this controller;
/// its value is the row's key in [`DesiredNb`]. Rows without it are never
/// touched.
pub const OWNER_KEY: &str = "ovn-bridge.io/key";
/// Kube-OVN's vendor marker, written on every row as Kube-OVN does.
pub const VENDOR: (&str, &str) = ("vendor", "kube-ovn");

/// Tables this controller writes, children before parents (the order of
/// inserts in a transaction).
pub const TABLES: [&str; 12] = [
    "Meter_Band",
    "Meter",
    "Address_Set",
    "ACL",
    "QoS",
    "Logical_Switch_Port",
    "Logical_Router_Port",
    "Logical_Router_Policy",
    "Load_Balancer",
    "Port_Group",
    "Logical_Switch",
    "Logical_Router",
];

/// Whether rows of `table` live on their own (deleted explicitly) or are
/// garbage-collected by the database once no parent references them.
pub fn is_root(table: &str) -> bool {
    matches!(
        table,
        "Address_Set"
            | "Load_Balancer"
            | "Port_Group"
            | "Logical_Switch"
            | "Logical_Router"
            | "Meter"
    )
}

/// Kube-OVN's priorities of the policies on the cluster router
/// (`pkg/util/const.go`).
pub mod priority {
    /// Traffic of a subnet leaving the cluster: reroute to a node's join
    /// address (per node for a distributed subnet, the gateway node for a
    /// centralized one).
    pub const GATEWAY_ROUTER_POLICY: i64 = 29000;
    /// Traffic to a subnet's CIDR: allow (stays in the cluster).
    pub const SUBNET_ROUTER_POLICY: i64 = 31000;
}

/// A reference from one desired row to another, by table and key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowRef {
    /// Table.
    pub table: &'static str,
    /// Key of the row.
    pub key: String,
}

/// One desired row: plain columns and reference columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredRow {
    /// Plain column values (including `external_ids` with [`OWNER_KEY`]).
    pub columns: BTreeMap<String, Datum>,
    /// Reference columns: the rows of ours each must hold. Rows of others in
    /// the same column are left alone.
    pub refs: BTreeMap<&'static str, BTreeSet<RowRef>>,
}

/// Something the user should know (a Kubernetes event, or a log line).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Event {
    /// `Kind ns/name` of the object concerned.
    pub object: String,
    /// Short reason, e.g. `InvalidQoS`.
    pub reason: &'static str,
    /// The message.
    pub message: String,
}

impl Event {
    /// The object concerned, from [`Event::object`] (`Kind ns/name` or
    /// `Kind name`), when it is one the controller observes.
    pub fn regarding(&self) -> Option<ObjectRef> {
        let (kind, name) = self.object.split_once(' ')?;
        let key = || {
            name.split_once('/')
                .map(|(ns, n)| (ns.to_string(), n.to_string()))
        };
        Some(match kind {
            "Pod" => ObjectRef::Pod(key()?),
            "Service" => ObjectRef::Service(key()?),
            "EndpointSlice" => ObjectRef::EndpointSlice(key()?),
            "NetworkPolicy" => ObjectRef::NetworkPolicy(key()?),
            "Namespace" => ObjectRef::Namespace(name.to_string()),
            "Node" => ObjectRef::Node(name.to_string()),
            "Subnet" => ObjectRef::Subnet(name.to_string()),
            _ => return None,
        })
    }
}

/// The desired Northbound rows by table and key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredNb {
    /// Rows by table name, then key.
    pub tables: BTreeMap<&'static str, BTreeMap<String, DesiredRow>>,
    /// Problems found while computing the rows.
    pub events: Vec<Event>,
    /// References whose parent row is not in this set (a unit's rows that
    /// point into another unit's rows): parent table, parent key, column,
    /// target.
    pub unresolved: Vec<(&'static str, String, &'static str, RowRef)>,
}

impl DesiredNb {
    /// A row, if desired.
    pub fn row(&self, table: &str, key: &str) -> Option<&DesiredRow> {
        self.tables.get(table).and_then(|t| t.get(key))
    }

    /// Number of desired rows of `table`.
    pub fn count(&self, table: &str) -> usize {
        self.tables.get(table).map_or(0, BTreeMap::len)
    }

    fn put(
        &mut self,
        table: &'static str,
        key: String,
        mut columns: BTreeMap<String, Datum>,
        ext: &[(&str, String)],
    ) -> &mut DesiredRow {
        let mut e: BTreeMap<String, String> = ext
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        e.insert(VENDOR.0.into(), VENDOR.1.into());
        e.insert(OWNER_KEY.into(), key.clone());
        columns.insert("external_ids".into(), Datum::map(e));
        let row = self
            .tables
            .entry(table)
            .or_default()
            .entry(key)
            .or_default();
        row.columns = columns;
        row
    }

    fn add_ref(&mut self, table: &'static str, key: &str, column: &'static str, target: RowRef) {
        match self.tables.get_mut(table).and_then(|t| t.get_mut(key)) {
            Some(r) => {
                r.refs.entry(column).or_default().insert(target);
            }
            None => self
                .unresolved
                .push((table, key.to_string(), column, target)),
        }
    }
}

fn cols(pairs: Vec<(&str, Datum)>) -> BTreeMap<String, Datum> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}
fn s(v: impl Into<String>) -> Datum {
    Datum::atom(Atom::String(v.into()))
}
fn strings<I: IntoIterator<Item = String>>(v: I) -> Datum {
    Datum::set(v.into_iter().map(Atom::String))
}
fn smap(v: &[(&str, String)]) -> Datum {
    Datum::map(
        v.iter()
            .map(|(k, v)| (Atom::string(*k), Atom::String(v.clone()))),
    )
}

/// The name of a pod's logical switch port (`<pod>.<namespace>`).
pub fn pod_port_name(ns: &str, name: &str) -> String {
    format!("{name}.{ns}")
}
/// The IPAM owner key of a pod.
pub fn pod_owner(ns: &str, name: &str) -> String {
    format!("pod:{ns}/{name}")
}
/// The IPAM owner key of a node.
pub fn node_owner(name: &str) -> String {
    format!("node:{name}")
}

/// Whether a pod gets a port at all (not host network, not finished).
pub fn pod_wants_port(pod: &Pod) -> bool {
    let host = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !host && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The subnets that claim a namespace, in name order: those listing it in
/// `spec.namespaces` and those with a `spec.namespaceSelectors` entry
/// matching its labels. Kube-OVN binds a namespace claimed by several
/// subnets to all of them (its `logical_switch` annotation lists them);
/// new pods take the first.
pub fn namespace_claims(state: &ClusterState, ns: &str) -> Vec<String> {
    let mut labels = None;
    let mut out = Vec::new();
    for (name, sn) in &state.subnets {
        let listed = sn.spec.namespaces.iter().any(|n| n == ns);
        let selected = !listed
            && !sn.spec.namespace_selectors.is_empty()
            && sn.spec.namespace_selectors.iter().any(|sel| {
                let l = labels.get_or_insert_with(|| state.namespace_labels(ns));
                selector_matches(sel, l)
            });
        if listed || selected {
            out.push(name.clone());
        }
    }
    out
}

/// The subnet a namespace is bound to: its `logical_switch` annotation
/// (its first entry), the first Subnet claiming it ([`namespace_claims`]),
/// else the default subnet.
pub fn namespace_subnet(state: &ClusterState, config: &Config, ns: &str) -> String {
    if let Some(ls) = state
        .namespaces
        .get(ns)
        .and_then(|n| annotation(&n.metadata, keys::LOGICAL_SWITCH))
        .and_then(|ls| ls.split(',').map(str::trim).find(|s| !s.is_empty()))
    {
        return ls.to_string();
    }
    if let Some(first) = namespace_claims(state, ns).into_iter().next() {
        return first;
    }
    state
        .subnets
        .iter()
        .find(|(n, sn)| sn.spec.default && **n != config.join_subnet)
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| config.default_subnet.clone())
}

/// The subnet of a pod: its own `logical_switch` annotation first.
pub fn pod_subnet(state: &ClusterState, config: &Config, pod: &Pod) -> String {
    if let Some(ls) = annotation(&pod.metadata, keys::LOGICAL_SWITCH) {
        return ls.to_string();
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    namespace_subnet(state, config, ns)
}

/// Parses a rate annotation (Mbit/s); `Ok(None)` for absent or zero.
pub fn parse_rate(v: Option<&str>) -> Result<Option<i64>, String> {
    match v.map(str::trim) {
        None | Some("") => Ok(None),
        Some(x) => match x.parse::<i64>() {
            Ok(0) => Ok(None),
            Ok(n) if n > 0 && n < 1_000_000_000 => Ok(Some(n)),
            _ => Err(format!("rate {x:?} is not a positive integer (Mbit/s)")),
        },
    }
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}
fn ip_prefix(protocol: &str) -> &'static str {
    if protocol == "IPv4" {
        "ip4"
    } else {
        "ip6"
    }
}

/// The desired Northbound rows. Pure: the same inputs give the same rows.
/// The reference for [`Unit`]-wise computation: it is the union of the
/// rows of every unit.
pub fn desired_nb(state: &ClusterState, ipam: &Ipam, config: &Config) -> DesiredNb {
    let mut nb = DesiredNb::default();
    let ctx = Context::new(state, ipam, config);
    let pctx = PolicyContext::new(state, ipam, config, &ctx);
    for unit in all_units(state, config) {
        unit_rows_into(&mut nb, &unit, state, ipam, config, &ctx, &pctx);
    }
    nb.unresolved.clear();
    nb
}

/// A part of the desired rows computed together from a few objects; an
/// event recomputes only the units it touches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Unit {
    /// The router and the load balancers (all Services and EndpointSlices).
    Cluster,
    /// One subnet's switch, router port pair and isolation ACLs.
    Subnet(String),
    /// One pod's port and QoS rows.
    Pod(ObjectKey),
    /// One node's port on the join switch.
    Node(String),
    /// One NetworkPolicy's port group, address sets and ACLs.
    Policy(ObjectKey),
}

/// Every unit of a state, parents before children (nodes before pods: a
/// pod's port joins its node's gateway port group).
pub fn all_units(state: &ClusterState, config: &Config) -> Vec<Unit> {
    let mut v = vec![Unit::Cluster];
    v.extend(
        super::effective_subnet_names(state, config)
            .into_iter()
            .map(Unit::Subnet),
    );
    v.extend(state.nodes.keys().cloned().map(Unit::Node));
    v.extend(state.pods.keys().cloned().map(Unit::Pod));
    v.extend(state.network_policies.keys().cloned().map(Unit::Policy));
    v
}

/// What every unit needs to know about the subnets.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Subnets that exist and have an address plan.
    pub subnets: Vec<String>,
    /// CIDRs of the join subnet.
    pub join_cidrs: Vec<String>,
    /// Subnets with a distributed gateway: every node reroutes the traffic
    /// of its own pods leaving the cluster ([`gateway_port_group`]).
    pub distributed: BTreeSet<String>,
}

impl Context {
    /// The context of a state and allocation table.
    pub fn new(state: &ClusterState, ipam: &Ipam, config: &Config) -> Self {
        Context {
            subnets: super::effective_subnet_names(state, config)
                .into_iter()
                .filter(|n| ipam.plan(n).is_some())
                .collect(),
            join_cidrs: ipam
                .plan(&config.join_subnet)
                .map(|p| p.cidrs.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            distributed: super::effective_subnet_names(state, config)
                .into_iter()
                .filter(|n| ipam.plan(n).is_some())
                .filter(|n| {
                    let spec = state.subnets.get(n).map(|s| &s.spec);
                    on_cluster_router(spec, n, config)
                        && gateway_type(spec) == Ok(GatewayType::Distributed)
                })
                .collect(),
        }
    }
}

/// How traffic of a subnet leaves the cluster (`spec.gatewayType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayType {
    /// Through the join port of the pod's own node (the default).
    Distributed,
    /// Through the join port of one gateway node (`spec.gatewayNode`).
    Centralized,
}

/// The gateway type of a subnet spec (`None`: the default or join subnet
/// without an object); an unknown value is an error message.
pub fn gateway_type(spec: Option<&super::model::SubnetSpec>) -> Result<GatewayType, String> {
    match spec.and_then(|s| s.gateway_type.as_deref()).map(str::trim) {
        None | Some("") | Some("distributed") => Ok(GatewayType::Distributed),
        Some("centralized") => Ok(GatewayType::Centralized),
        Some(other) => Err(format!(
            "gatewayType {other:?} is neither \"distributed\" nor \"centralized\""
        )),
    }
}

/// Whether a subnet is an overlay subnet of the cluster router with a
/// gateway (not the join subnet, not in another VPC).
fn on_cluster_router(spec: Option<&super::model::SubnetSpec>, name: &str, config: &Config) -> bool {
    let vpc = spec.and_then(|s| s.vpc.as_deref()).unwrap_or("");
    name != config.join_subnet && (vpc.is_empty() || vpc == config.cluster_router)
}

/// Kube-OVN's port group of the pods of a distributed subnet on one node
/// (`<subnet>.<node>`, dashes as dots); OVN derives the address sets
/// `<group>_ip4` and `<group>_ip6` from it.
pub fn gateway_port_group(subnet: &str, node: &str) -> String {
    format!("{subnet}.{node}").replace('-', ".")
}

/// Whether a node is Ready; a node without conditions (declared in a
/// manifest) counts as ready.
pub fn node_ready(node: &k8s_openapi::api::core::v1::Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True")
}

/// The gateway nodes a centralized subnet names in `spec.gatewayNode`, in
/// order, without their egress addresses.
pub fn gateway_nodes(spec: &super::model::SubnetSpec) -> Vec<String> {
    spec.gateway_node
        .split(',')
        .map(|g| g.split(':').next().unwrap_or("").trim())
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect()
}

/// The rows of one unit, written into `nb`. References to rows of other
/// units are kept in [`DesiredNb::unresolved`] when the parent row is not
/// in `nb`.
pub fn unit_rows_into(
    nb: &mut DesiredNb,
    unit: &Unit,
    state: &ClusterState,
    ipam: &Ipam,
    config: &Config,
    ctx: &Context,
    pctx: &PolicyContext<'_>,
) {
    match unit {
        Unit::Cluster => cluster_rows(nb, state, config),
        Unit::Subnet(name) => {
            if ctx.subnets.contains(name) {
                subnet_rows(nb, state, ipam, config, ctx, name);
            }
        }
        Unit::Pod((ns, name)) => {
            if let Some(pod) = state.pods.get(&(ns.clone(), name.clone())) {
                pod_rows(nb, ipam, ctx, ns, name, pod);
            }
        }
        Unit::Node(name) => {
            if state.nodes.contains_key(name) {
                node_rows(nb, ipam, config, ctx, name);
                distributed_gateway_rows(nb, ipam, config, ctx, name);
            }
        }
        Unit::Policy(k) => {
            if let Some(np) = state.network_policies.get(k) {
                policy_rows(nb, state, config, ipam, pctx, k, np);
            }
        }
    }
}

/// Rows of the cluster: the router and the load balancers with the VIPs of
/// every Service.
fn cluster_rows(nb: &mut DesiredNb, state: &ClusterState, config: &Config) {
    let router = config.cluster_router.clone();
    nb.put(
        "Logical_Router",
        router.clone(),
        cols(vec![("name", s(&router))]),
        &[],
    );

    let lb_names = load_balancer_names();
    for (name, proto, session) in &lb_names {
        let mut c = vec![("name", s(*name)), ("protocol", s(*proto))];
        if *session {
            c.push((
                "options",
                smap(&[("affinity_timeout", "10800".to_string())]),
            ));
        }
        nb.put("Load_Balancer", name.to_string(), cols(c), &[]);
    }

    services(nb, state);
}

/// Rows of one subnet: its switch, the router port pair, the load
/// balancer references and the isolation ACLs of a private subnet.
fn subnet_rows(
    nb: &mut DesiredNb,
    state: &ClusterState,
    ipam: &Ipam,
    config: &Config,
    ctx: &Context,
    name: &str,
) {
    let router = config.cluster_router.clone();
    let lb_names = load_balancer_names();
    let join_cidrs = &ctx.join_cidrs;
    let Some(plan) = ipam.plan(name) else {
        return;
    };
    let name = name.to_string();
    let lsp = format!("{name}-{router}");
    let lrp = format!("{router}-{name}");
    nb.put(
        "Logical_Switch",
        name.clone(),
        cols(vec![("name", s(&name))]),
        &[],
    );
    let networks: Vec<String> = plan
        .cidrs
        .iter()
        .zip(&plan.gateways)
        .map(|(c, g)| format!("{g}/{}", c.prefix_len()))
        .collect();
    nb.put(
        "Logical_Router_Port",
        lrp.clone(),
        cols(vec![
            ("name", s(&lrp)),
            ("mac", s(derived_mac(&format!("lrp:{lrp}"), 0))),
            ("networks", strings(networks)),
        ]),
        &[("lr", router.clone())],
    );
    nb.add_ref(
        "Logical_Router",
        &router,
        "ports",
        RowRef {
            table: "Logical_Router_Port",
            key: lrp.clone(),
        },
    );
    nb.put(
        "Logical_Switch_Port",
        lsp.clone(),
        cols(vec![
            ("name", s(&lsp)),
            ("type", s("router")),
            ("addresses", strings(["router".to_string()])),
            ("options", smap(&[("router-port", lrp.clone())])),
        ]),
        &[("ls", name.clone())],
    );
    nb.add_ref(
        "Logical_Switch",
        &name,
        "ports",
        RowRef {
            table: "Logical_Switch_Port",
            key: lsp,
        },
    );
    let spec = state
        .subnets
        .get(&name)
        .map(|s| s.spec.clone())
        .unwrap_or_default();
    if name != config.join_subnet && spec.enable_lb != Some(false) {
        for (lb, _, _) in &lb_names {
            nb.add_ref(
                "Logical_Switch",
                &name,
                "load_balancer",
                RowRef {
                    table: "Load_Balancer",
                    key: lb.to_string(),
                },
            );
        }
    }
    subnet_gateway_rows(nb, state, ipam, config, &name);
    if spec.private {
        let mut acl = |priority: i64, m: String, action: &str| {
            // Kube-OVN always logs what the isolation drops.
            let log = if action == "drop" {
                AclLog::warning(None)
            } else {
                AclLog::default()
            };
            put_acl(
                nb,
                "Logical_Switch",
                &name,
                &name,
                "to-lport",
                priority,
                m,
                action,
                &[],
                &log,
            );
        };
        acl(1000, "ip".into(), "drop");
        for cidr in &plan.cidrs {
            let p = ip_prefix(family(&cidr.network()));
            acl(
                1001,
                format!("{p}.src == {cidr} && {p}.dst == {cidr}"),
                "allow-related",
            );
            for a in spec.allow_subnets.iter().map(|a| a.trim()) {
                let same_family = a
                    .parse::<ipnet::IpNet>()
                    .is_ok_and(|n| n.network().is_ipv4() == cidr.network().is_ipv4());
                if same_family {
                    acl(1001, format!("({p}.src == {cidr} && {p}.dst == {a}) || ({p}.src == {a} && {p}.dst == {cidr})"), "allow-related");
                }
            }
            for j in join_cidrs {
                if j.contains(':') == (p == "ip6") {
                    acl(3000, format!("{p}.src == {j}"), "allow-related");
                }
            }
        }
    }
}

/// A policy on the cluster router, keyed by priority and match (what
/// Kube-OVN looks policies up by).
fn put_policy(
    nb: &mut DesiredNb,
    router: &str,
    priority: i64,
    m: String,
    action: &str,
    nexthops: Vec<String>,
    ext: &[(&str, String)],
) {
    let key = format!("{router}/{priority}/{m}");
    nb.put(
        "Logical_Router_Policy",
        key.clone(),
        cols(vec![
            ("priority", Datum::atom(Atom::Integer(priority))),
            ("match", s(m)),
            ("action", s(action)),
            ("nexthops", strings(nexthops)),
        ]),
        ext,
    );
    nb.add_ref(
        "Logical_Router",
        router,
        "policies",
        RowRef {
            table: "Logical_Router_Policy",
            key,
        },
    );
}

/// The router policies of one subnet: traffic to its CIDRs stays in the
/// cluster (priority 31000, allow); the traffic of a centralized subnet
/// leaving the cluster goes to its active gateway node's join address
/// (29000, reroute). The active gateway is the first node of
/// `spec.gatewayNode` that exists, is Ready and has a join address.
fn subnet_gateway_rows(
    nb: &mut DesiredNb,
    state: &ClusterState,
    ipam: &Ipam,
    config: &Config,
    name: &str,
) {
    let Some(plan) = ipam.plan(name) else { return };
    let spec = state.subnets.get(name).map(|s| &s.spec);
    let vpc = spec.and_then(|s| s.vpc.as_deref()).unwrap_or("");
    if !(vpc.is_empty() || vpc == config.cluster_router) {
        return;
    }
    let router = &config.cluster_router;
    let subnet_ext = [("subnet", name.to_string())];
    for cidr in &plan.cidrs {
        let p = ip_prefix(family(&cidr.network()));
        put_policy(
            nb,
            router,
            priority::SUBNET_ROUTER_POLICY,
            format!("{p}.dst == {cidr}"),
            "allow",
            Vec::new(),
            &subnet_ext,
        );
    }
    if !on_cluster_router(spec, name, config) {
        return;
    }
    let object = format!("Subnet {name}");
    match gateway_type(spec) {
        Ok(GatewayType::Distributed) => {}
        Err(message) => nb.events.push(Event {
            object,
            reason: "InvalidGatewayType",
            message,
        }),
        Ok(GatewayType::Centralized) => {
            let Some(spec) = spec else { return };
            let candidates = gateway_nodes(spec);
            if candidates.is_empty() {
                nb.events.push(Event {
                    object,
                    reason: "NoReadyGateway",
                    message: "a centralized subnet needs spec.gatewayNode".into(),
                });
                return;
            }
            let active = candidates.iter().find_map(|n| {
                state.nodes.get(n).filter(|node| node_ready(node))?;
                ipam.get(&node_owner(n)).map(|a| (n, a))
            });
            let Some((gw, a)) = active else {
                nb.events.push(Event {
                    object,
                    reason: "NoReadyGateway",
                    message: format!(
                        "none of the gateway nodes {} exists, is Ready and has a join address",
                        candidates.join(", ")
                    ),
                });
                return;
            };
            for cidr in &plan.cidrs {
                let Some(ip) = a
                    .ips
                    .iter()
                    .find(|ip| ip.is_ipv4() == cidr.network().is_ipv4())
                else {
                    continue;
                };
                let p = ip_prefix(family(&cidr.network()));
                put_policy(
                    nb,
                    router,
                    priority::GATEWAY_ROUTER_POLICY,
                    format!("{p}.src == {cidr}"),
                    "reroute",
                    vec![ip.to_string()],
                    &[("subnet", name.to_string()), (gw.as_str(), ip.to_string())],
                );
            }
        }
    }
}

/// The rows of one node for every distributed subnet: the port group of
/// the subnet's pods on the node, and the policy rerouting their traffic
/// leaving the cluster to the node's join address (priority 29000, match
/// on the group's address set). The group exists before the node has a
/// join address; the policy only once it has one.
fn distributed_gateway_rows(
    nb: &mut DesiredNb,
    ipam: &Ipam,
    config: &Config,
    ctx: &Context,
    node: &str,
) {
    let join = ipam.get(&node_owner(node));
    for subnet in &ctx.distributed {
        let pg = gateway_port_group(subnet, node);
        nb.put(
            "Port_Group",
            pg.clone(),
            cols(vec![("name", s(&pg))]),
            &[
                ("subnet", subnet.clone()),
                ("node", node.to_string()),
                ("np", format!("{subnet}/{node}")),
            ],
        );
        let (Some(join), Some(plan)) = (join, ipam.plan(subnet)) else {
            continue;
        };
        for cidr in &plan.cidrs {
            let v4 = cidr.network().is_ipv4();
            let Some(ip) = join.ips.iter().find(|ip| ip.is_ipv4() == v4) else {
                continue;
            };
            let p = ip_prefix(family(&cidr.network()));
            put_policy(
                nb,
                &config.cluster_router,
                priority::GATEWAY_ROUTER_POLICY,
                format!("{p}.src == ${pg}_{p}"),
                "reroute",
                vec![ip.to_string()],
                &[("subnet", subnet.clone()), ("node", node.to_string())],
            );
        }
    }
}

/// Rows of one pod: its switch port and QoS rows, and its place in its
/// switch.
fn pod_rows(nb: &mut DesiredNb, ipam: &Ipam, ctx: &Context, ns: &str, name: &str, pod: &Pod) {
    if !pod_wants_port(pod) {
        return;
    }
    let Some(a) = ipam.get(&pod_owner(ns, name)) else {
        return;
    };
    if !ctx.subnets.contains(&a.subnet) {
        return;
    }
    let port = pod_port_name(ns, name);
    let addr = format!("{} {}", a.mac, a.ip_string().replace(',', " "));
    let mut c = vec![("name", s(&port)), ("addresses", strings([addr.clone()]))];
    if annotation(&pod.metadata, keys::PORT_SECURITY) == Some("true") {
        c.push(("port_security", strings([addr])));
    } else {
        c.push(("port_security", Datum::empty_set()));
    }
    nb.put(
        "Logical_Switch_Port",
        port.clone(),
        cols(c),
        &[("ls", a.subnet.clone()), ("pod", format!("{ns}/{name}"))],
    );
    nb.add_ref(
        "Logical_Switch",
        &a.subnet,
        "ports",
        RowRef {
            table: "Logical_Switch_Port",
            key: port.clone(),
        },
    );
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if let Some(node) = node.filter(|n| !n.is_empty()) {
        if ctx.distributed.contains(&a.subnet) {
            nb.add_ref(
                "Port_Group",
                &gateway_port_group(&a.subnet, node),
                "ports",
                RowRef {
                    table: "Logical_Switch_Port",
                    key: port.clone(),
                },
            );
        }
    }
    put_qos(nb, pod, ns, name, &port, a);
}

/// The port of one node on the join switch.
fn node_rows(nb: &mut DesiredNb, ipam: &Ipam, config: &Config, ctx: &Context, name: &str) {
    if !ctx.subnets.contains(&config.join_subnet) {
        return;
    }
    let Some(a) = ipam.get(&node_owner(name)) else {
        return;
    };
    let port = format!("node-{name}");
    let addr = format!("{} {}", a.mac, a.ip_string().replace(',', " "));
    nb.put(
        "Logical_Switch_Port",
        port.clone(),
        cols(vec![("name", s(&port)), ("addresses", strings([addr]))]),
        &[
            ("ls", config.join_subnet.clone()),
            ("node", name.to_string()),
        ],
    );
    nb.add_ref(
        "Logical_Switch",
        &config.join_subnet,
        "ports",
        RowRef {
            table: "Logical_Switch_Port",
            key: port,
        },
    );
}

/// Kube-OVN's cluster load balancers: (name, protocol, session affinity).
pub fn load_balancer_names() -> [(&'static str, &'static str, bool); 6] {
    [
        ("cluster-tcp-loadbalancer", "tcp", false),
        ("cluster-udp-loadbalancer", "udp", false),
        ("cluster-sctp-loadbalancer", "sctp", false),
        ("cluster-tcp-session-loadbalancer", "tcp", true),
        ("cluster-udp-session-loadbalancer", "udp", true),
        ("cluster-sctp-session-loadbalancer", "sctp", true),
    ]
}

/// The logging of one ACL: `log`, `severity` and `meter` columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclLog {
    /// Whether ovn-controller logs the packets the ACL matches.
    pub log: bool,
    /// Severity of the log lines, when set.
    pub severity: Option<&'static str>,
    /// The Meter limiting the log rate, by name.
    pub meter: Option<String>,
}

impl AclLog {
    /// Logged at severity `warning` (what Kube-OVN sets on drop ACLs).
    pub fn warning(meter: Option<String>) -> Self {
        AclLog {
            log: true,
            severity: Some("warning"),
            meter,
        }
    }
}

/// Kube-OVN's meter of a NetworkPolicy's logging ACLs in one direction
/// (`<port group>_<direction>_meter`).
pub fn acl_log_meter_name(pg: &str, direction: &str) -> String {
    format!("{pg}_{direction}_meter")
}

/// Kube-OVN's ACL name: at most 63 characters, a long one cut to 60 and
/// `...`.
pub fn acl_name(name: &str) -> String {
    if name.len() > 63 {
        let mut end = 60;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &name[..end])
    } else {
        name.to_string()
    }
}

#[allow(clippy::too_many_arguments)]
fn put_acl(
    nb: &mut DesiredNb,
    parent_table: &'static str,
    parent: &str,
    name: &str,
    direction: &str,
    priority: i64,
    m: String,
    action: &str,
    options: &[(&str, String)],
    log: &AclLog,
) {
    let key = format!("{parent}/{direction}/{priority}/{m}");
    let opt = |v: Option<String>| Datum::set(v.into_iter().map(Atom::String));
    nb.put(
        "ACL",
        key.clone(),
        cols(vec![
            ("name", s(acl_name(name))),
            ("direction", s(direction)),
            ("priority", Datum::atom(Atom::Integer(priority))),
            ("match", s(m)),
            ("action", s(action)),
            ("options", smap(options)),
            ("log", Datum::atom(Atom::Boolean(log.log))),
            ("severity", opt(log.severity.map(str::to_string))),
            ("meter", opt(log.meter.clone())),
        ]),
        &[("parent", parent.to_string())],
    );
    nb.add_ref(parent_table, parent, "acls", RowRef { table: "ACL", key });
}

fn put_qos(nb: &mut DesiredNb, pod: &Pod, ns: &str, name: &str, port: &str, a: &Allocation) {
    for (ann, direction, m) in [
        (
            keys::INGRESS_RATE,
            "to-lport",
            format!("outport == \"{port}\""),
        ),
        (
            keys::EGRESS_RATE,
            "from-lport",
            format!("inport == \"{port}\""),
        ),
    ] {
        match parse_rate(annotation(&pod.metadata, ann)) {
            Ok(None) => {}
            Ok(Some(mbit)) => {
                let key = format!("{port}/{direction}");
                nb.put(
                    "QoS",
                    key.clone(),
                    cols(vec![
                        ("priority", Datum::atom(Atom::Integer(2003))),
                        ("direction", s(direction)),
                        ("match", s(m)),
                        (
                            "bandwidth",
                            Datum::map([(Atom::string("rate"), Atom::Integer(mbit * 1000))]),
                        ),
                    ]),
                    &[
                        ("pod", format!("{ns}/{name}")),
                        ("iface-id", port.to_string()),
                    ],
                );
                nb.add_ref(
                    "Logical_Switch",
                    &a.subnet,
                    "qos_rules",
                    RowRef { table: "QoS", key },
                );
            }
            Err(e) => nb.events.push(Event {
                object: format!("Pod {ns}/{name}"),
                reason: "InvalidQoS",
                message: format!("{ann}: {e}"),
            }),
        }
    }
}

fn vip(ip: &str, port: i32) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn services(nb: &mut DesiredNb, state: &ClusterState) {
    let mut vips: BTreeMap<&'static str, BTreeMap<String, String>> = BTreeMap::new();
    for ((ns, name), svc) in &state.services {
        let Some(spec) = &svc.spec else { continue };
        let ips: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(v), _) if !v.is_empty() => v.clone(),
            (_, Some(ip)) => vec![ip.clone()],
            _ => Vec::new(),
        };
        let session = spec.session_affinity.as_deref() == Some("ClientIP");
        for port in spec.ports.iter().flatten() {
            let proto = port
                .protocol
                .as_deref()
                .unwrap_or("TCP")
                .to_ascii_lowercase();
            let lb = load_balancer_names()
                .into_iter()
                .find(|(_, p, s)| *p == proto && *s == session)
                .map(|(n, _, _)| n);
            let Some(lb) = lb else { continue };
            for ip in ips.iter().filter(|ip| ip.parse::<IpAddr>().is_ok()) {
                let backends =
                    endpoints_for(state, ns, name, svc, port.name.as_deref(), ip.contains(':'));
                vips.entry(lb)
                    .or_default()
                    .insert(vip(ip, port.port), backends.join(","));
            }
        }
    }
    for (lb, v) in vips {
        if let Some(row) = nb
            .tables
            .get_mut("Load_Balancer")
            .and_then(|t| t.get_mut(lb))
        {
            row.columns.insert(
                "vips".into(),
                Datum::map(
                    v.into_iter()
                        .map(|(k, v)| (Atom::String(k), Atom::String(v))),
                ),
            );
        }
    }
    for row in nb
        .tables
        .get_mut("Load_Balancer")
        .into_iter()
        .flat_map(|t| t.values_mut())
    {
        row.columns
            .entry("vips".into())
            .or_insert_with(|| Datum::Map(BTreeMap::new()));
    }
}

fn endpoints_for(
    state: &ClusterState,
    ns: &str,
    svc_name: &str,
    _svc: &Service,
    port_name: Option<&str>,
    v6: bool,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for ((sns, _), eps) in &state.endpoint_slices {
        if sns != ns {
            continue;
        }
        let owner = eps
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(keys::SERVICE_NAME_LABEL));
        if owner.map(String::as_str) != Some(svc_name) {
            continue;
        }
        let want = port_name.unwrap_or("");
        let Some(target) = eps
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == want)
            .and_then(|p| p.port)
        else {
            continue;
        };
        for ep in &eps.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for a in &ep.addresses {
                if a.parse::<IpAddr>().is_ok() && a.contains(':') == v6 {
                    out.insert(vip(a, target));
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The logging a NetworkPolicy asks for with Kube-OVN's annotations.
struct PolicyLog {
    /// `ovn.kubernetes.io/enable_log` is "true".
    enabled: bool,
    /// ACL actions that log (`drop` when not given).
    actions: Vec<String>,
    /// Log lines per second allowed (0: no meter).
    rate: i64,
}

fn policy_log(
    nb: &mut DesiredNb,
    np: &k8s_openapi::api::networking::v1::NetworkPolicy,
    ns: &str,
    name: &str,
) -> PolicyLog {
    let m = &np.metadata;
    let actions = match annotation(m, keys::LOG_ACL_ACTIONS).map(str::trim) {
        Some(v) if !v.is_empty() => v.split(',').map(|a| a.trim().to_string()).collect(),
        _ => vec!["drop".to_string()],
    };
    let rate = match annotation(m, keys::ACL_LOG_METER_RATE).map(str::trim) {
        None | Some("") => 0,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n > 0 && n <= i64::from(u32::MAX) => n,
            _ => {
                nb.events.push(Event {
                    object: format!("NetworkPolicy {ns}/{name}"),
                    reason: "InvalidLogMeterRate",
                    message: format!(
                        "{}: {v:?} is not a positive integer; logging is not metered",
                        keys::ACL_LOG_METER_RATE
                    ),
                });
                0
            }
        },
    };
    PolicyLog {
        enabled: annotation(m, keys::ENABLE_LOG) == Some("true"),
        actions,
        rate,
    }
}

/// A meter of `rate` packets per second (burst 1) that drops the excess,
/// as Kube-OVN creates for logging ACLs.
fn put_meter(nb: &mut DesiredNb, name: &str, rate: i64, ext: &[(&str, String)]) {
    let band = format!("{name}/band");
    nb.put(
        "Meter_Band",
        band.clone(),
        cols(vec![
            ("action", s("drop")),
            ("rate", Datum::atom(Atom::Integer(rate))),
            ("burst_size", Datum::atom(Atom::Integer(1))),
        ]),
        ext,
    );
    nb.put(
        "Meter",
        name.to_string(),
        cols(vec![("name", s(name)), ("unit", s("pktps"))]),
        ext,
    );
    nb.add_ref(
        "Meter",
        name,
        "bands",
        RowRef {
            table: "Meter_Band",
            key: band,
        },
    );
}

/// Kube-OVN's port group name of a policy (`<name>.<namespace>`, dashes as dots).
pub fn np_port_group(ns: &str, np_name: &str) -> String {
    format!("{np_name}.{ns}").replace('-', ".")
}

fn np_name(name: &str) -> String {
    if name.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        format!("np{name}")
    } else {
        name.to_string()
    }
}

/// A policy rule: its peers and its ports.
type PolicyRule = (
    Option<Vec<NetworkPolicyPeer>>,
    Option<Vec<NetworkPolicyPort>>,
);
/// The address sets of one rule and family: allow name, except name, their
/// addresses, and the rule's ports.
type RuleSets = (
    String,
    String,
    BTreeSet<String>,
    BTreeSet<String>,
    Vec<NetworkPolicyPort>,
);

/// Pods with addresses by namespace, their labels and named ports, and the
/// labels of namespaces: what NetworkPolicy selectors are evaluated over.
pub struct PolicyContext<'a> {
    state: &'a ClusterState,
    by_ns: BTreeMap<&'a str, Vec<(&'a ObjectKey, Vec<IpAddr>)>>,
    named_by_ns: BTreeMap<&'a str, BTreeMap<String, i32>>,
    ns_labels: BTreeMap<&'a str, BTreeMap<String, String>>,
    no_labels: BTreeMap<String, String>,
}

impl<'a> PolicyContext<'a> {
    /// Indexes the pods that have a port (an allocation in an existing subnet).
    pub fn new(state: &'a ClusterState, ipam: &Ipam, config: &Config, ctx: &Context) -> Self {
        Self::indexed(state, ipam, config, ctx, None)
    }

    /// [`PolicyContext::new`] over the pods of `namespaces` only: enough
    /// for policies that do not select peers by namespace
    /// ([`policy_crosses_namespaces`] is false) in those namespaces.
    pub fn scoped(
        state: &'a ClusterState,
        ipam: &Ipam,
        config: &Config,
        ctx: &Context,
        namespaces: &BTreeSet<&str>,
    ) -> Self {
        Self::indexed(state, ipam, config, ctx, Some(namespaces))
    }

    fn indexed(
        state: &'a ClusterState,
        ipam: &Ipam,
        _config: &Config,
        ctx: &Context,
        namespaces: Option<&BTreeSet<&str>>,
    ) -> Self {
        let mut by_ns: BTreeMap<&str, Vec<(&ObjectKey, Vec<IpAddr>)>> = BTreeMap::new();
        let mut named_by_ns: BTreeMap<&str, BTreeMap<String, i32>> = BTreeMap::new();
        let pods: Box<dyn Iterator<Item = (&'a ObjectKey, &'a Pod)>> = match namespaces {
            None => Box::new(state.pods.iter()),
            Some(set) => Box::new(set.iter().flat_map(move |ns| {
                let lo = (ns.to_string(), String::new());
                state.pods.range(lo..).take_while(move |(k, _)| k.0 == *ns)
            })),
        };
        for (k, pod) in pods {
            if !pod_wants_port(pod) {
                continue;
            }
            let Some(a) = ipam.get(&pod_owner(&k.0, &k.1)) else {
                continue;
            };
            if !ctx.subnets.contains(&a.subnet) {
                continue;
            }
            by_ns
                .entry(k.0.as_str())
                .or_default()
                .push((k, a.ips.clone()));
            let named = named_by_ns.entry(k.0.as_str()).or_default();
            let containers = pod
                .spec
                .as_ref()
                .map(|s| s.containers.as_slice())
                .unwrap_or(&[]);
            for c in containers {
                for p in c.ports.iter().flatten() {
                    if let Some(n) = &p.name {
                        named.entry(n.clone()).or_insert(p.container_port);
                    }
                }
            }
        }
        let ns_labels = by_ns
            .keys()
            .map(|ns| (*ns, state.namespace_labels(ns)))
            .collect();
        PolicyContext {
            state,
            by_ns,
            named_by_ns,
            ns_labels,
            no_labels: BTreeMap::new(),
        }
    }

    fn labels_of(&self, k: &ObjectKey) -> &BTreeMap<String, String> {
        self.state
            .pods
            .get(k)
            .and_then(|p| p.metadata.labels.as_ref())
            .unwrap_or(&self.no_labels)
    }
}

/// Whether a policy's peers reach beyond its own namespace (a
/// `namespaceSelector`): then a pod anywhere may change its rows.
pub fn policy_crosses_namespaces(np: &k8s_openapi::api::networking::v1::NetworkPolicy) -> bool {
    let Some(spec) = &np.spec else { return false };
    let ingress = spec
        .ingress
        .iter()
        .flatten()
        .flat_map(|r| r.from.iter().flatten());
    let egress = spec
        .egress
        .iter()
        .flatten()
        .flat_map(|r| r.to.iter().flatten());
    ingress
        .chain(egress)
        .any(|p| p.namespace_selector.is_some())
}

#[allow(clippy::too_many_arguments)]
fn policy_rows(
    nb: &mut DesiredNb,
    state: &ClusterState,
    config: &Config,
    ipam: &Ipam,
    pctx: &PolicyContext<'_>,
    key: &ObjectKey,
    np: &k8s_openapi::api::networking::v1::NetworkPolicy,
) {
    let by_ns = &pctx.by_ns;
    let named_by_ns = &pctx.named_by_ns;
    let ns_labels = &pctx.ns_labels;
    let labels_of = |k: &ObjectKey| pctx.labels_of(k);
    let no_named = BTreeMap::new();
    let (ns, name) = key;
    {
        let Some(spec) = &np.spec else { return };
        let npn = np_name(name);
        let pg = np_port_group(ns, &npn);
        nb.put(
            "Port_Group",
            pg.clone(),
            cols(vec![("name", s(&pg))]),
            &[("np", format!("{ns}/{npn}"))],
        );
        let selected: Vec<&ObjectKey> = by_ns
            .get(ns.as_str())
            .into_iter()
            .flatten()
            .map(|(k, _)| *k)
            .filter(|k| {
                spec.pod_selector
                    .as_ref()
                    .is_none_or(|sel| selector_matches(sel, labels_of(k)))
            })
            .collect();
        for k in &selected {
            nb.add_ref(
                "Port_Group",
                &pg,
                "ports",
                RowRef {
                    table: "Logical_Switch_Port",
                    key: pod_port_name(&k.0, &k.1),
                },
            );
        }
        let named = named_by_ns.get(ns.as_str()).unwrap_or(&no_named);
        let protocols: BTreeSet<&'static str> = ipam
            .plan(&namespace_subnet(state, config, ns))
            .map(|p| p.cidrs.iter().map(|c| family(&c.network())).collect())
            .unwrap_or_else(|| BTreeSet::from(["IPv4"]));
        let types = spec.policy_types.clone().unwrap_or_else(|| {
            let mut t = vec!["Ingress".to_string()];
            if spec.egress.is_some() {
                t.push("Egress".into());
            }
            t
        });
        let log = policy_log(nb, np, ns, name);
        for (dir, ingress) in [("ingress", true), ("egress", false)] {
            let wanted = if ingress { "Ingress" } else { "Egress" };
            if !types.iter().any(|t| t == wanted) {
                continue;
            }
            let (direction, port_dir, src_dst, options) = if ingress {
                ("to-lport", "outport", "src", vec![])
            } else {
                (
                    "from-lport",
                    "inport",
                    "dst",
                    vec![("apply-after-lb", "true".to_string())],
                )
            };
            let acl_name = format!("{ns}/{name}");
            let meter = (log.enabled && log.rate > 0).then(|| {
                let m = acl_log_meter_name(&pg, direction);
                put_meter(nb, &m, log.rate, &[("np", format!("{ns}/{npn}"))]);
                m
            });
            let drop_log = if log.enabled {
                AclLog::warning(meter.clone())
            } else {
                AclLog::default()
            };
            let allow_log = if log.enabled && log.actions.iter().any(|a| a == "allow") {
                AclLog {
                    log: true,
                    severity: None,
                    meter: meter.clone(),
                }
            } else {
                AclLog::default()
            };
            put_acl(
                nb,
                "Port_Group",
                &pg,
                &acl_name,
                direction,
                2000,
                format!("{port_dir} == @{pg} && ip"),
                "drop",
                &options,
                &drop_log,
            );
            let rules: Vec<PolicyRule> = if ingress {
                spec.ingress
                    .iter()
                    .flatten()
                    .map(|r| (r.from.clone(), r.ports.clone()))
                    .collect()
            } else {
                spec.egress
                    .iter()
                    .flatten()
                    .map(|r| (r.to.clone(), r.ports.clone()))
                    .collect()
            };
            let allow_prefix = format!("{npn}.{ns}.{dir}.allow").replace('-', ".");
            let except_prefix = format!("{npn}.{ns}.{dir}.except").replace('-', ".");
            for proto in &protocols {
                let ipk = format!("{}.{src_dst}", ip_prefix(proto));
                let mut sets: Vec<RuleSets> = Vec::new();
                if rules.is_empty() {
                    sets.push((
                        format!("{allow_prefix}.{proto}.all"),
                        format!("{except_prefix}.{proto}.all"),
                        BTreeSet::new(),
                        BTreeSet::new(),
                        Vec::new(),
                    ));
                }
                for (idx, (peers, ports)) in rules.iter().enumerate() {
                    let mut allow = BTreeSet::new();
                    let mut except = BTreeSet::new();
                    match peers {
                        None => {
                            allow.insert(
                                if *proto == "IPv4" {
                                    "0.0.0.0/0"
                                } else {
                                    "::/0"
                                }
                                .to_string(),
                            );
                        }
                        Some(v) if v.is_empty() => {
                            allow.insert(
                                if *proto == "IPv4" {
                                    "0.0.0.0/0"
                                } else {
                                    "::/0"
                                }
                                .to_string(),
                            );
                        }
                        Some(peers) => {
                            for peer in peers {
                                if let Some(b) = &peer.ip_block {
                                    if (b.cidr.contains(':')) == (*proto == "IPv6") {
                                        allow.insert(b.cidr.clone());
                                        except.extend(b.except.iter().flatten().cloned());
                                    }
                                    continue;
                                }
                                for (pns, pods) in by_ns {
                                    let ns_ok = match &peer.namespace_selector {
                                        None => *pns == ns.as_str(),
                                        Some(sel) => ns_labels
                                            .get(pns)
                                            .is_some_and(|l| selector_matches(sel, l)),
                                    };
                                    if !ns_ok {
                                        continue;
                                    }
                                    for (k, ips) in pods {
                                        if peer
                                            .pod_selector
                                            .as_ref()
                                            .is_none_or(|sel| selector_matches(sel, labels_of(k)))
                                        {
                                            allow.extend(
                                                ips.iter()
                                                    .filter(|ip| family(ip) == *proto)
                                                    .map(ToString::to_string),
                                            );
                                        }
                                    }
                                }
                            }
                        }
                    }
                    sets.push((
                        format!("{allow_prefix}.{proto}.{idx}"),
                        format!("{except_prefix}.{proto}.{idx}"),
                        allow,
                        except,
                        ports.clone().unwrap_or_default(),
                    ));
                }
                for (i, (allow_as, except_as, allow, except, ports)) in sets.into_iter().enumerate()
                {
                    let npkey = format!("{ns}/{npn}/{dir}");
                    nb.put(
                        "Address_Set",
                        allow_as.clone(),
                        cols(vec![("name", s(&allow_as)), ("addresses", strings(allow))]),
                        &[("np", npkey.clone())],
                    );
                    nb.put(
                        "Address_Set",
                        except_as.clone(),
                        cols(vec![
                            ("name", s(&except_as)),
                            ("addresses", strings(except)),
                        ]),
                        &[("np", npkey)],
                    );
                    let base = format!("{port_dir} == @{pg} && ip && {ipk} == ${allow_as} && {ipk} != ${except_as}");
                    let aname = format!("np/{npn}.{ns}/{dir}/{proto}/{i}");
                    let mut matches = Vec::new();
                    if ports.is_empty() {
                        matches.push(base.clone());
                    }
                    for p in &ports {
                        let l4 = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                        let num = match &p.port {
                            None => {
                                matches.push(format!("{base} && {l4}"));
                                continue;
                            }
                            Some(IntOrString::Int(n)) => *n,
                            Some(IntOrString::String(n)) => match named.get(n) {
                                Some(n) => *n,
                                None => {
                                    nb.events.push(Event {
                                        object: format!("NetworkPolicy {ns}/{name}"),
                                        reason: "UnresolvedNamedPort",
                                        message: format!("named port {n:?} matches no pod in {ns}"),
                                    });
                                    continue;
                                }
                            },
                        };
                        match p.end_port {
                            Some(end) if end > num => matches
                                .push(format!("{base} && {l4}.dst >= {num} && {l4}.dst <= {end}")),
                            _ => matches.push(format!("{base} && {l4}.dst == {num}")),
                        }
                    }
                    for m in matches {
                        put_acl(
                            nb,
                            "Port_Group",
                            &pg,
                            &aname,
                            direction,
                            2001,
                            m,
                            "allow-related",
                            &options,
                            &allow_log,
                        );
                    }
                }
            }
        }
    }
}
