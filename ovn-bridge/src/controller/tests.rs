//! Unit tests of address assignment and the desired rows (no database).

use std::collections::BTreeMap;
use std::path::Path;

use ovsdb::{Atom, Datum};

use super::desired::{desired_nb, RowRef};
use super::ipam::Ipam;
use super::manifest::{parse_str, Loaded};
use super::model::{ClusterState, ObjectRef};
use super::{sync_ipam, Config};

fn state(yaml: &str) -> ClusterState {
    let mut l = Loaded::default();
    parse_str(yaml, Path::new("t.yaml"), &mut l);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    l.into_state().0
}

fn text(d: Option<&Datum>) -> String {
    match d {
        Some(Datum::Set(s)) => s
            .iter()
            .map(|a| match a {
                Atom::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Some(Datum::Map(m)) => format!("{m:?}"),
        None => String::new(),
    }
}

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, annotations: {ovn.kubernetes.io/logical_switch: dual}}
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: dual}
spec: {cidrBlock: "10.2.0.0/24,fd00:2::/120"}
---
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: a, labels: {role: x}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p2, namespace: a, annotations: {ovn.kubernetes.io/ip_address: 10.2.0.2, ovn.kubernetes.io/egress_rate: "abc"}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p3, namespace: b, annotations: {ovn.kubernetes.io/ip_address: 10.16.0.7}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p4, namespace: b, annotations: {ovn.kubernetes.io/ip_address: 10.16.0.7}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: b}
spec: {hostNetwork: true, containers: [{name: c}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: 1deny, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.9.0.0/16]}}]
    ports: [{port: 1000, endPort: 2000, protocol: UDP}, {port: http}]
"#;

#[test]
fn addresses_follow_namespace_binding_and_detect_conflicts() {
    let s = state(CLUSTER);
    let cfg = Config::default();
    let mut ipam = Ipam::new();
    let events = sync_ipam(&s, &cfg, &mut ipam, &BTreeMap::new());
    // p2's static address is honoured although p1 comes first by name.
    assert_eq!(ipam.get("pod:a/p2").unwrap().ip_string(), "10.2.0.2");
    assert_eq!(
        ipam.get("pod:a/p1").unwrap().ip_string(),
        "10.2.0.3,fd00:2::2"
    );
    // p3 and p4 ask for one address: exactly one gets it, the other is reported.
    assert_eq!(ipam.get("pod:b/p3").unwrap().ip_string(), "10.16.0.7");
    assert!(ipam.get("pod:b/p4").is_none());
    assert!(ipam.get("pod:b/host").is_none());
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].object, "Pod b/p4");
    assert_eq!(events[0].reason, "AddressConflict");
    assert!(
        events[0]
            .message
            .contains("10.16.0.7 is already used by pod b/p3"),
        "{events:?}"
    );
    assert_eq!(
        events[0].regarding(),
        Some(ObjectRef::Pod(("b".into(), "p4".into())))
    );
}

#[test]
fn desired_rows_are_named_like_kube_ovn_and_pure() {
    let s = state(CLUSTER);
    let cfg = Config::default();
    let mut ipam = Ipam::new();
    sync_ipam(&s, &cfg, &mut ipam, &BTreeMap::new());
    let nb = desired_nb(&s, &ipam, &cfg);
    assert_eq!(nb, desired_nb(&s, &ipam, &cfg), "pure function");
    let router = nb.row("Logical_Router", "ovn-cluster").unwrap();
    let ports: Vec<&str> = router.refs["ports"]
        .iter()
        .map(|r| r.key.as_str())
        .collect();
    assert_eq!(
        ports,
        [
            "ovn-cluster-dual",
            "ovn-cluster-join",
            "ovn-cluster-ovn-default"
        ]
    );
    let lrp = nb.row("Logical_Router_Port", "ovn-cluster-dual").unwrap();
    assert_eq!(
        text(lrp.columns.get("networks")),
        "10.2.0.1/24 fd00:2::1/120"
    );
    let p1 = nb.row("Logical_Switch_Port", "p1.a").unwrap();
    assert!(text(p1.columns.get("addresses")).ends_with(" 10.2.0.3 fd00:2::2"));
    assert!(
        nb.row("Logical_Switch", "dual").unwrap().refs["ports"].contains(&RowRef {
            table: "Logical_Switch_Port",
            key: "p1.a".into()
        })
    );
    assert!(nb.row("Logical_Switch_Port", "p4.b").is_none());
    assert_eq!(nb.count("Load_Balancer"), 6);
    // Invalid QoS is an event, not a row.
    assert_eq!(nb.count("QoS"), 0);
    assert!(nb
        .events
        .iter()
        .any(|e| e.reason == "InvalidQoS" && e.object == "Pod a/p2"));
    // The policy name starts with a digit: Kube-OVN prefixes "np".
    let pg = nb.row("Port_Group", "np1deny.a").unwrap();
    assert_eq!(pg.refs["ports"].len(), 2);
    let acl_matches: Vec<String> = nb.tables["ACL"]
        .values()
        .map(|r| text(r.columns.get("match")))
        .collect();
    assert!(
        acl_matches.contains(&"outport == @np1deny.a && ip".to_string()),
        "ingress default deny"
    );
    assert!(
        acl_matches.contains(&"inport == @np1deny.a && ip".to_string()),
        "egress default deny"
    );
    assert!(acl_matches.contains(&"inport == @np1deny.a && ip && ip4.dst == $np1deny.a.egress.allow.IPv4.0 && ip4.dst != $np1deny.a.egress.except.IPv4.0 && udp.dst >= 1000 && udp.dst <= 2000".to_string()), "{acl_matches:#?}");
    // The IPv6 half of the dual-stack namespace gets its own (empty) sets.
    let allow = nb
        .row("Address_Set", "np1deny.a.egress.allow.IPv4.0")
        .unwrap();
    assert_eq!(text(allow.columns.get("addresses")), "10.0.0.0/8");
    let except = nb
        .row("Address_Set", "np1deny.a.egress.except.IPv4.0")
        .unwrap();
    assert_eq!(text(except.columns.get("addresses")), "10.9.0.0/16");
    assert_eq!(
        text(
            nb.row("Address_Set", "np1deny.a.egress.allow.IPv6.0")
                .unwrap()
                .columns
                .get("addresses")
        ),
        ""
    );
    // The named port resolves to nothing in this namespace: reported.
    assert!(nb.events.iter().any(|e| e.reason == "UnresolvedNamedPort"));
}

#[test]
fn namespace_claims_gateway_nodes_and_gateway_type() {
    use super::desired::{
        gateway_nodes, gateway_type, namespace_claims, namespace_subnet, GatewayType,
    };
    let s = state(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: red}}
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: b-listed}
spec: {cidrBlock: 10.2.0.0/24, namespaces: [shop]}
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: a-selected}
spec:
  cidrBlock: 10.1.0.0/24
  namespaceSelectors: [{matchLabels: {team: red}}]
  gatewayType: centralized
  gatewayNode: " n2:172.18.0.5, ,n1"
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: c-other}
spec:
  cidrBlock: 10.3.0.0/24
  namespaceSelectors: [{matchLabels: {team: blue}}]
  gatewayType: sideways
"#,
    );
    let config = Config::default();
    assert_eq!(namespace_claims(&s, "shop"), ["a-selected", "b-listed"]);
    assert_eq!(namespace_subnet(&s, &config, "shop"), "a-selected");
    assert!(namespace_claims(&s, "elsewhere").is_empty());
    assert_eq!(namespace_subnet(&s, &config, "elsewhere"), "ovn-default");
    let spec = |n: &str| s.subnets.get(n).map(|x| &x.spec);
    assert_eq!(
        gateway_nodes(spec("a-selected").unwrap()),
        ["n2".to_string(), "n1".to_string()]
    );
    assert_eq!(
        gateway_type(spec("a-selected")),
        Ok(GatewayType::Centralized)
    );
    assert_eq!(gateway_type(spec("b-listed")), Ok(GatewayType::Distributed));
    assert_eq!(gateway_type(None), Ok(GatewayType::Distributed));
    assert!(gateway_type(spec("c-other")).is_err());
    // An unknown gateway type is reported and gets no gateway policies.
    let mut ipam = Ipam::new();
    sync_ipam(&s, &config, &mut ipam, &BTreeMap::new());
    let nb = desired_nb(&s, &ipam, &config);
    assert!(
        nb.events
            .iter()
            .any(|e| e.reason == "InvalidGatewayType" && e.object == "Subnet c-other"),
        "{:?}",
        nb.events
    );
    // The centralized subnet has no ready gateway (no nodes at all).
    assert!(
        nb.events
            .iter()
            .any(|e| e.reason == "NoReadyGateway" && e.object == "Subnet a-selected"),
        "{:?}",
        nb.events
    );
    let reroutes = nb
        .tables
        .get("Logical_Router_Policy")
        .into_iter()
        .flatten()
        .filter(|(_, r)| text(r.columns.get("action")) == "reroute")
        .count();
    assert_eq!(reroutes, 0);
}
