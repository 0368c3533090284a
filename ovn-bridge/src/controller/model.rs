//! The observed Kubernetes state the controller works from: the objects it
//! watches (Namespaces, Pods, Services, EndpointSlices, NetworkPolicies,
//! Nodes and the Kube-OVN `Subnet` CRD), whichever source they came from.
//!
//! Owns the object types and the in-memory store. It must not talk to the
//! API server, read files, or know about OVN rows.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

/// Kube-OVN's annotation and label keys (`pkg/util/const.go`).
pub mod keys {
    /// Set to "true" once the controller has allocated the pod's addresses.
    pub const ALLOCATED: &str = "ovn.kubernetes.io/allocated";
    /// Requested (static) or allocated IP addresses, comma-separated.
    pub const IP_ADDRESS: &str = "ovn.kubernetes.io/ip_address";
    /// Requested (static) or allocated MAC address.
    pub const MAC_ADDRESS: &str = "ovn.kubernetes.io/mac_address";
    /// CIDR(s) of the subnet the pod is in.
    pub const CIDR: &str = "ovn.kubernetes.io/cidr";
    /// Gateway(s) of the subnet the pod is in.
    pub const GATEWAY: &str = "ovn.kubernetes.io/gateway";
    /// The subnet (logical switch) of a pod or of a namespace.
    pub const LOGICAL_SWITCH: &str = "ovn.kubernetes.io/logical_switch";
    /// A pool of addresses the pod takes one from.
    pub const IP_POOL: &str = "ovn.kubernetes.io/ip_pool";
    /// Rate limit of traffic to the pod, Mbit/s.
    pub const INGRESS_RATE: &str = "ovn.kubernetes.io/ingress_rate";
    /// Rate limit of traffic from the pod, Mbit/s.
    pub const EGRESS_RATE: &str = "ovn.kubernetes.io/egress_rate";
    /// "true" turns on port security for the pod's port.
    pub const PORT_SECURITY: &str = "ovn.kubernetes.io/port_security";
    /// The label an EndpointSlice carries with its Service's name.
    pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
    /// "true" on a NetworkPolicy turns on logging of its ACLs.
    pub const ENABLE_LOG: &str = "ovn.kubernetes.io/enable_log";
    /// The ACL actions of a NetworkPolicy that log, comma-separated
    /// (`drop`, `allow`); `drop` when absent.
    pub const LOG_ACL_ACTIONS: &str = "ovn.kubernetes.io/log_acl_actions";
    /// Packets per second a NetworkPolicy's logging ACLs may log (a meter).
    pub const ACL_LOG_METER_RATE: &str = "ovn.kubernetes.io/acl_log_meter_rate";
}

/// The Kube-OVN `Subnet` custom resource (`kubeovn.io/v1`, cluster scoped).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subnet {
    /// Always `kubeovn.io/v1` (checked by the sources).
    #[serde(default)]
    pub api_version: String,
    /// Always `Subnet`.
    #[serde(default)]
    pub kind: String,
    /// Object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec, with Kube-OVN's field names.
    pub spec: SubnetSpec,
}

/// The part of Kube-OVN's `SubnetSpec` this controller implements; other
/// fields are accepted and ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetSpec {
    /// Whether this is the default subnet.
    #[serde(default)]
    pub default: bool,
    /// VPC (only `ovn-cluster` is implemented).
    #[serde(default)]
    pub vpc: Option<String>,
    /// `IPv4`, `IPv6` or `Dual` (derived from `cidrBlock` when absent).
    #[serde(default)]
    pub protocol: Option<String>,
    /// Namespaces bound to the subnet.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Namespaces bound to the subnet by their labels (Kube-OVN 1.11+): a
    /// namespace matching any of these selectors is bound as if listed in
    /// `namespaces`.
    #[serde(default)]
    pub namespace_selectors: Vec<LabelSelector>,
    /// One CIDR, or an IPv4 and an IPv6 CIDR separated by a comma.
    pub cidr_block: String,
    /// Gateway address(es), comma-separated; the first host of each CIDR when empty.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Addresses never allocated: single addresses or `first..last` ranges.
    #[serde(default)]
    pub exclude_ips: Vec<String>,
    /// Drop traffic from other subnets unless listed in `allow_subnets`.
    #[serde(default)]
    pub private: bool,
    /// CIDRs allowed into a private subnet.
    #[serde(default)]
    pub allow_subnets: Vec<String>,
    /// Gateway type: `distributed` (the default: traffic leaving the
    /// cluster goes out through the join port of the pod's own node) or
    /// `centralized` (through the join port of one gateway node).
    #[serde(default)]
    pub gateway_type: Option<String>,
    /// Gateway nodes of a centralized subnet, comma-separated; an entry may
    /// carry an egress address after a colon (`node1:172.18.0.2`), which
    /// the node uses and the router does not.
    #[serde(default)]
    pub gateway_node: String,
    /// Masquerade traffic leaving the cluster. Kube-OVN does this in each
    /// node's iptables, not in the Northbound database: accepted, and left
    /// to the node.
    #[serde(default)]
    pub nat_outgoing: bool,
    /// Whether the cluster load balancers are attached (default true).
    #[serde(default)]
    pub enable_lb: Option<bool>,
}

impl kube::Resource for Subnet {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Subnet")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("kubeovn.io")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("subnets")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Namespace and name of a namespaced object.
pub type ObjectKey = (String, String);

/// One watched object, whatever its kind.
#[derive(Debug, Clone)]
pub enum Object {
    /// A Namespace.
    Namespace(Box<Namespace>),
    /// A Pod.
    Pod(Box<Pod>),
    /// A Service.
    Service(Box<Service>),
    /// An EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// A NetworkPolicy.
    NetworkPolicy(Box<NetworkPolicy>),
    /// A Node.
    Node(Box<Node>),
    /// A Kube-OVN Subnet.
    Subnet(Box<Subnet>),
}

/// The kind and identity of an object, to delete it from the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectRef {
    /// A Namespace by name.
    Namespace(String),
    /// A Pod by namespace and name.
    Pod(ObjectKey),
    /// A Service by namespace and name.
    Service(ObjectKey),
    /// An EndpointSlice by namespace and name.
    EndpointSlice(ObjectKey),
    /// A NetworkPolicy by namespace and name.
    NetworkPolicy(ObjectKey),
    /// A Node by name.
    Node(String),
    /// A Subnet by name.
    Subnet(String),
}

fn name_of(m: &ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}
fn key_of(m: &ObjectMeta) -> ObjectKey {
    (
        m.namespace.clone().unwrap_or_else(|| "default".to_string()),
        name_of(m),
    )
}

impl Object {
    /// The object's kind and identity.
    pub fn object_ref(&self) -> ObjectRef {
        match self {
            Object::Namespace(o) => ObjectRef::Namespace(name_of(&o.metadata)),
            Object::Pod(o) => ObjectRef::Pod(key_of(&o.metadata)),
            Object::Service(o) => ObjectRef::Service(key_of(&o.metadata)),
            Object::EndpointSlice(o) => ObjectRef::EndpointSlice(key_of(&o.metadata)),
            Object::NetworkPolicy(o) => ObjectRef::NetworkPolicy(key_of(&o.metadata)),
            Object::Node(o) => ObjectRef::Node(name_of(&o.metadata)),
            Object::Subnet(o) => ObjectRef::Subnet(name_of(&o.metadata)),
        }
    }
}

/// Everything the controller has observed, keyed for deterministic order.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Pods by namespace and name.
    pub pods: BTreeMap<ObjectKey, Pod>,
    /// Services by namespace and name.
    pub services: BTreeMap<ObjectKey, Service>,
    /// EndpointSlices by namespace and name.
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// NetworkPolicies by namespace and name.
    pub network_policies: BTreeMap<ObjectKey, NetworkPolicy>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Subnets by name.
    pub subnets: BTreeMap<String, Subnet>,
}

impl ClusterState {
    /// Adds or replaces an object. A namespaced object without a namespace
    /// is put in `default`, as `kubectl apply` does.
    pub fn apply(&mut self, obj: Object) {
        match obj {
            Object::Namespace(o) => {
                self.namespaces.insert(name_of(&o.metadata), *o);
            }
            Object::Pod(mut o) => {
                let k = key_of(&o.metadata);
                o.metadata.namespace = Some(k.0.clone());
                self.pods.insert(k, *o);
            }
            Object::Service(mut o) => {
                let k = key_of(&o.metadata);
                o.metadata.namespace = Some(k.0.clone());
                self.services.insert(k, *o);
            }
            Object::EndpointSlice(mut o) => {
                let k = key_of(&o.metadata);
                o.metadata.namespace = Some(k.0.clone());
                self.endpoint_slices.insert(k, *o);
            }
            Object::NetworkPolicy(mut o) => {
                let k = key_of(&o.metadata);
                o.metadata.namespace = Some(k.0.clone());
                self.network_policies.insert(k, *o);
            }
            Object::Node(o) => {
                self.nodes.insert(name_of(&o.metadata), *o);
            }
            Object::Subnet(o) => {
                self.subnets.insert(name_of(&o.metadata), *o);
            }
        }
    }

    /// Removes an object; true when it was present.
    pub fn delete(&mut self, r: &ObjectRef) -> bool {
        match r {
            ObjectRef::Namespace(n) => self.namespaces.remove(n).is_some(),
            ObjectRef::Pod(k) => self.pods.remove(k).is_some(),
            ObjectRef::Service(k) => self.services.remove(k).is_some(),
            ObjectRef::EndpointSlice(k) => self.endpoint_slices.remove(k).is_some(),
            ObjectRef::NetworkPolicy(k) => self.network_policies.remove(k).is_some(),
            ObjectRef::Node(n) => self.nodes.remove(n).is_some(),
            ObjectRef::Subnet(n) => self.subnets.remove(n).is_some(),
        }
    }

    /// The changes that turn `self` into `newer`: objects added or
    /// different, and references of objects gone.
    pub fn diff(&self, newer: &ClusterState) -> (Vec<Object>, Vec<ObjectRef>) {
        fn walk<K: Ord + Clone, V: PartialEq + Clone>(
            old: &BTreeMap<K, V>,
            new: &BTreeMap<K, V>,
            wrap: impl Fn(V) -> Object,
            refer: impl Fn(K) -> ObjectRef,
            out: &mut (Vec<Object>, Vec<ObjectRef>),
        ) {
            for (k, v) in new {
                if old.get(k) != Some(v) {
                    out.0.push(wrap(v.clone()));
                }
            }
            for k in old.keys() {
                if !new.contains_key(k) {
                    out.1.push(refer(k.clone()));
                }
            }
        }
        let mut out = (Vec::new(), Vec::new());
        let o = &mut out;
        walk(
            &self.namespaces,
            &newer.namespaces,
            |v| Object::Namespace(Box::new(v)),
            ObjectRef::Namespace,
            o,
        );
        walk(
            &self.subnets,
            &newer.subnets,
            |v| Object::Subnet(Box::new(v)),
            ObjectRef::Subnet,
            o,
        );
        walk(
            &self.nodes,
            &newer.nodes,
            |v| Object::Node(Box::new(v)),
            ObjectRef::Node,
            o,
        );
        walk(
            &self.pods,
            &newer.pods,
            |v| Object::Pod(Box::new(v)),
            ObjectRef::Pod,
            o,
        );
        walk(
            &self.services,
            &newer.services,
            |v| Object::Service(Box::new(v)),
            ObjectRef::Service,
            o,
        );
        walk(
            &self.endpoint_slices,
            &newer.endpoint_slices,
            |v| Object::EndpointSlice(Box::new(v)),
            ObjectRef::EndpointSlice,
            o,
        );
        walk(
            &self.network_policies,
            &newer.network_policies,
            |v| Object::NetworkPolicy(Box::new(v)),
            ObjectRef::NetworkPolicy,
            o,
        );
        out
    }

    /// Labels of a namespace (empty when unknown).
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespaces
            .get(ns)
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        // The label every namespace carries since Kubernetes 1.21.
        labels.insert("kubernetes.io/metadata.name".into(), ns.to_string());
        labels
    }
}

/// An annotation of an object's metadata.
pub fn annotation<'a>(m: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    m.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Whether `labels` match a Kubernetes label selector (`matchLabels` and
/// `matchExpressions`; an unknown operator matches nothing).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &sel.match_labels {
        if !ml.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        let v = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => v.is_some_and(|v| values.contains(v)),
            "NotIn" => v.is_none_or(|v| !values.contains(v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(p: &[(&str, &str)]) -> BTreeMap<String, String> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert!(selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "b")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "c")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "a"), ("canary", "1")])
        ));
        assert!(!selector_matches(&sel, &labels(&[("tier", "a")])));
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
    }

    #[test]
    fn store_apply_and_delete() {
        let mut s = ClusterState::default();
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let obj = Object::Pod(Box::new(pod));
        let r = obj.object_ref();
        assert_eq!(r, ObjectRef::Pod(("default".into(), "p".into())));
        s.apply(obj);
        assert_eq!(s.pods.len(), 1);
        assert!(s.delete(&r));
        assert!(!s.delete(&r));
    }
}
