//! The controller role: Kubernetes state (from the API server or from a
//! manifest directory) into OVN Northbound rows, the way Kube-OVN does it.
//!
//! Owns the flow observed state → addresses → desired rows → transaction.
//! It must not touch the Southbound database or the fast path.

pub mod batch;
pub mod desired;
pub mod incremental;
pub mod ipam;
pub mod kube_source;
pub mod manifest;
pub mod model;
pub mod reconcile;
pub mod run;

use std::collections::{BTreeMap, BTreeSet};

use desired::{node_owner, pod_owner, pod_subnet, pod_wants_port, Event};
use ipam::{Allocation, Ipam, Request, SubnetPlan};
use model::{annotation, keys, ClusterState, ObjectRef};

/// Names and defaults of the cluster (Kube-OVN's controller flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The cluster router (`ovn-cluster`).
    pub cluster_router: String,
    /// The default subnet (`ovn-default`).
    pub default_subnet: String,
    /// Its CIDR when no Subnet object declares it.
    pub default_cidr: String,
    /// The node subnet (`join`).
    pub join_subnet: String,
    /// Its CIDR when no Subnet object declares it.
    pub join_cidr: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster_router: "ovn-cluster".into(),
            default_subnet: "ovn-default".into(),
            default_cidr: "10.16.0.0/16".into(),
            join_subnet: "join".into(),
            join_cidr: "100.64.0.0/16".into(),
        }
    }
}

/// The subnets that exist: the Subnet objects plus the default and join
/// subnets from the configuration when no object declares them.
pub fn effective_subnet_names(state: &ClusterState, config: &Config) -> Vec<String> {
    let mut v: Vec<String> = state.subnets.keys().cloned().collect();
    for n in [&config.default_subnet, &config.join_subnet] {
        if !v.contains(n) {
            v.push(n.clone());
        }
    }
    v.sort();
    v
}

/// The addressing of every subnet, with the problems of refused specs.
pub fn subnet_plans(state: &ClusterState, config: &Config) -> (Vec<SubnetPlan>, Vec<Event>) {
    let mut plans = Vec::new();
    let mut events = Vec::new();
    for name in effective_subnet_names(state, config) {
        let r = match state.subnets.get(&name) {
            Some(sn) => SubnetPlan::new(
                &name,
                &sn.spec.cidr_block,
                sn.spec.gateway.as_deref(),
                &sn.spec.exclude_ips,
            ),
            None if name == config.default_subnet => {
                SubnetPlan::new(&name, &config.default_cidr, None, &[])
            }
            None => SubnetPlan::new(&name, &config.join_cidr, None, &[]),
        };
        match r {
            Ok(p) => plans.push(p),
            Err(e) => events.push(Event {
                object: format!("Subnet {name}"),
                reason: "InvalidSubnet",
                message: e.to_string(),
            }),
        }
    }
    (plans, events)
}

/// Addresses written back for one owner: pod annotations (Kube-OVN keys)
/// or a state file entry.
pub fn pod_annotations(a: &Allocation, ipam: &Ipam) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert(keys::ALLOCATED.to_string(), "true".to_string());
    m.insert(keys::IP_ADDRESS.to_string(), a.ip_string());
    m.insert(keys::MAC_ADDRESS.to_string(), a.mac.clone());
    m.insert(keys::LOGICAL_SWITCH.to_string(), a.subnet.clone());
    if let Some(p) = ipam.plan(&a.subnet) {
        m.insert(keys::CIDR.to_string(), p.cidr_string());
        m.insert(keys::GATEWAY.to_string(), p.gateway_string());
    }
    m
}

/// Brings the IPAM in line with the observed state: subnets, addresses
/// recorded before (`recorded`: the state file, or allocated pod
/// annotations), then new allocations in a fixed order. Owners that are
/// gone are released. Returns the problems found (conflicts, exhaustion).
pub fn sync_ipam(
    state: &ClusterState,
    config: &Config,
    ipam: &mut Ipam,
    recorded: &BTreeMap<String, Allocation>,
) -> Vec<Event> {
    sync_ipam_placed(state, config, ipam, recorded).events
}

/// What placing addresses did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Problems found (conflicts, exhaustion, bad annotations, bad subnets).
    pub events: Vec<Event>,
    /// Owners that could not get what they ask for (they may hold an older
    /// allocation): to place again when addresses are freed.
    pub failed: BTreeSet<String>,
}

/// [`sync_ipam`], also naming the owners whose placement failed.
pub fn sync_ipam_placed(
    state: &ClusterState,
    config: &Config,
    ipam: &mut Ipam,
    recorded: &BTreeMap<String, Allocation>,
) -> Placement {
    let (plans, mut events) = subnet_plans(state, config);
    let names: Vec<String> = plans.iter().map(|p| p.name.clone()).collect();
    for p in plans {
        ipam.set_subnet(p);
    }
    let existing: Vec<String> = ipam
        .allocations()
        .values()
        .map(|a| a.subnet.clone())
        .collect();
    for s in existing {
        if !names.contains(&s) {
            ipam.remove_subnet(&s);
        }
    }
    // Who should hold addresses, and where.
    let mut wanted: BTreeMap<String, Wanted> = BTreeMap::new();
    for ((ns, name), pod) in &state.pods {
        match pod_wanted(state, config, ipam, ns, name, pod, recorded) {
            Ok(Some((owner, w))) => {
                wanted.insert(owner, w);
            }
            Ok(None) => {}
            Err(e) => events.push(e),
        }
    }
    for name in state.nodes.keys() {
        wanted.insert(
            node_owner(name),
            (
                config.join_subnet.clone(),
                Request::default(),
                format!("Node {name}"),
            ),
        );
    }
    let owners = ipam.owners();
    let mut failed = BTreeSet::new();
    place(
        ipam,
        recorded,
        &wanted,
        owners.iter(),
        &mut events,
        &mut failed,
    );
    Placement { events, failed }
}

/// Subnet, request and object name of an owner that should hold addresses.
type Wanted = (String, Request, String);

/// Whether a pod should hold addresses, where, and what it asks for.
///
/// Where: the pod's own `logical_switch` annotation; else the subnet it
/// already holds addresses in (from this table or the record), while that
/// subnet exists, so a namespace bound to another subnet later (a label
/// change matching another Subnet's `namespaceSelectors`, an edited
/// `namespaces` list) moves only new pods, as in Kube-OVN, where the
/// allocated pod carries its subnet in its annotations; else its
/// namespace's subnet.
#[allow(clippy::too_many_arguments)]
fn pod_wanted(
    state: &ClusterState,
    config: &Config,
    ipam: &Ipam,
    ns: &str,
    name: &str,
    pod: &k8s_openapi::api::core::v1::Pod,
    recorded: &BTreeMap<String, Allocation>,
) -> Result<Option<(String, Wanted)>, Event> {
    if !pod_wants_port(pod) {
        return Ok(None);
    }
    let owner = pod_owner(ns, name);
    let held = ipam
        .get(&owner)
        .or_else(|| recorded.get(&owner))
        .map(|a| &a.subnet)
        .filter(|s| ipam.plan(s).is_some());
    let subnet = match (annotation(&pod.metadata, keys::LOGICAL_SWITCH), held) {
        (None, Some(held)) => held.clone(),
        _ => pod_subnet(state, config, pod),
    };
    let allocated = annotation(&pod.metadata, keys::ALLOCATED) == Some("true");
    // Once allocated, ip_address holds our own answer, not a request,
    // unless the state says otherwise.
    let req = if allocated && recorded.contains_key(&owner) {
        Ok(Request::default())
    } else {
        Request::from_annotations(
            annotation(&pod.metadata, keys::IP_ADDRESS),
            annotation(&pod.metadata, keys::MAC_ADDRESS),
            annotation(&pod.metadata, keys::IP_POOL),
        )
    };
    match req {
        Ok(r) => Ok(Some((owner, (subnet, r, format!("Pod {ns}/{name}"))))),
        Err(e) => Err(Event {
            object: format!("Pod {ns}/{name}"),
            reason: "InvalidAddress",
            message: e.to_string(),
        }),
    }
}

/// Releases the `candidates` that should no longer hold their addresses,
/// then places every owner of `wanted`: recorded allocations first, static
/// requests before dynamic ones.
fn place<'a>(
    ipam: &mut Ipam,
    recorded: &BTreeMap<String, Allocation>,
    wanted: &BTreeMap<String, Wanted>,
    candidates: impl Iterator<Item = &'a String>,
    events: &mut Vec<Event>,
    failed: &mut BTreeSet<String>,
) {
    for o in candidates {
        let keep = wanted
            .get(o)
            .is_some_and(|(s, _, _)| ipam.get(o).is_some_and(|a| &a.subnet == s));
        if !keep {
            ipam.release(o);
        }
    }
    // Recorded allocations first, so they never move.
    for (owner, (subnet, _, obj)) in wanted {
        if let Some(a) = recorded.get(owner).filter(|a| &a.subnet == subnet) {
            if let Err(e) = ipam.restore(owner, a.clone()) {
                failed.insert(owner.clone());
                events.push(allocation_event(obj, &e));
            }
        }
    }
    // Static requests before dynamic ones, so a dynamic allocation never
    // takes an address someone asked for.
    let mut order: Vec<&String> = wanted.keys().collect();
    order.sort_by_key(|o| wanted[*o].1.ips.is_empty());
    for owner in order {
        let (subnet, req, obj) = &wanted[owner];
        if let Err(e) = ipam.allocate(owner, subnet, req) {
            failed.insert(owner.clone());
            events.push(allocation_event(obj, &e));
        }
    }
}

/// The event of an owner that did not get its addresses: a static IP or
/// MAC held by another owner is an `AddressConflict` (the object gets no
/// port until the address is free, so no two ever share one); anything
/// else is an `AllocationFailed`.
fn allocation_event(object: &str, e: &ipam::IpamError) -> Event {
    let holder = |owner: &str| match owner_ref(owner) {
        Some(ObjectRef::Pod((ns, name))) => format!("pod {ns}/{name}"),
        Some(ObjectRef::Node(n)) => format!("node {n}"),
        _ => owner.to_string(),
    };
    match e {
        ipam::IpamError::AddressInUse { ip, owner } => Event {
            object: object.to_string(),
            reason: "AddressConflict",
            message: format!(
                "address {ip} is already used by {}; no port until it is free",
                holder(owner)
            ),
        },
        ipam::IpamError::MacInUse { mac, owner } => Event {
            object: object.to_string(),
            reason: "AddressConflict",
            message: format!(
                "MAC {mac} is already used by {}; no port until it is free",
                holder(owner)
            ),
        },
        e => Event {
            object: object.to_string(),
            reason: "AllocationFailed",
            message: e.to_string(),
        },
    }
}

/// The IPAM owner key of a pod or node reference.
pub fn owner_of(r: &ObjectRef) -> Option<String> {
    match r {
        ObjectRef::Pod((ns, name)) => Some(pod_owner(ns, name)),
        ObjectRef::Node(n) => Some(node_owner(n)),
        _ => None,
    }
}

/// [`sync_ipam`] for a few pods and nodes only (`objects`; others are
/// ignored): releases those gone or moved, places those present. Subnets
/// must be unchanged since the last full sync. Equivalent to the full sync
/// for these owners, without walking the others.
pub fn sync_ipam_objects(
    state: &ClusterState,
    config: &Config,
    ipam: &mut Ipam,
    recorded: &BTreeMap<String, Allocation>,
    objects: &[ObjectRef],
) -> Placement {
    let mut events = Vec::new();
    let mut wanted: BTreeMap<String, Wanted> = BTreeMap::new();
    let mut candidates: BTreeSet<String> = BTreeSet::new();
    for r in objects {
        match r {
            ObjectRef::Pod((ns, name)) => {
                candidates.insert(pod_owner(ns, name));
                let Some(pod) = state.pods.get(&(ns.clone(), name.clone())) else {
                    continue;
                };
                match pod_wanted(state, config, ipam, ns, name, pod, recorded) {
                    Ok(Some((owner, w))) => {
                        wanted.insert(owner, w);
                    }
                    Ok(None) => {}
                    Err(e) => events.push(e),
                }
            }
            ObjectRef::Node(n) => {
                candidates.insert(node_owner(n));
                if state.nodes.contains_key(n) {
                    wanted.insert(
                        node_owner(n),
                        (
                            config.join_subnet.clone(),
                            Request::default(),
                            format!("Node {n}"),
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    let mut failed = BTreeSet::new();
    place(
        ipam,
        recorded,
        &wanted,
        candidates.iter(),
        &mut events,
        &mut failed,
    );
    Placement { events, failed }
}

/// The pod or node reference of an IPAM owner key.
pub fn owner_ref(owner: &str) -> Option<ObjectRef> {
    if let Some(p) = owner.strip_prefix("pod:") {
        let (ns, name) = p.split_once('/')?;
        Some(ObjectRef::Pod((ns.to_string(), name.to_string())))
    } else {
        owner
            .strip_prefix("node:")
            .map(|n| ObjectRef::Node(n.to_string()))
    }
}

#[cfg(test)]
mod tests;
