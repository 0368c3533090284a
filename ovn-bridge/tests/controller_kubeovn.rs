//! Kube-OVN features of the controller against a real OVN Northbound
//! database and ovn-northd: Subnet `namespaceSelectors`, the router
//! policies of distributed and centralized gateways, and NetworkPolicy ACL
//! logging with meters. After every incremental change, a full pass finds
//! nothing left to write.

mod common;

use std::path::Path;

use common::Ovn;
use ovn_bridge::controller::desired::node_owner;
use ovn_bridge::controller::manifest::{parse_str, Loaded};
use ovn_bridge::controller::model::{ClusterState, Object, ObjectRef};
use ovn_bridge::controller::run::Controller;
use ovn_bridge::controller::Config;

fn objects(yaml: &str) -> Vec<Object> {
    let mut l = Loaded::default();
    parse_str(yaml, Path::new("test.yaml"), &mut l);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    l.objects
}

fn one(yaml: &str) -> Object {
    let mut v = objects(yaml);
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn state(yaml: &str) -> ClusterState {
    let mut s = ClusterState::default();
    for o in objects(yaml) {
        s.apply(o);
    }
    s
}

fn pod(name: &str, ns: &str, node: &str) -> Object {
    one(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c}}]}}"
    ))
}

async fn controller(ovn: &Ovn) -> Controller {
    Controller::connect(
        std::slice::from_ref(&ovn.nb.remote),
        Config::default(),
        None,
    )
    .await
    .unwrap()
}

/// A full pass finds nothing to write.
async fn assert_settled(ctl: &mut Controller, what: &str) {
    let r = ctl.resync().await.unwrap();
    assert_eq!(r.operations, 0, "after {what}, a full pass still wrote");
}

fn find(ovn: &Ovn, table: &str, cols: &str, cond: &str) -> String {
    ovn.nbctl(&["--bare", &format!("--columns={cols}"), "find", table, cond])
        .trim()
        .to_string()
}

fn pod_ip(ctl: &Controller, ns: &str, name: &str) -> String {
    ctl.ipam()
        .get(&format!("pod:{ns}/{name}"))
        .map(|a| a.ip_string())
        .unwrap_or_default()
}

fn join_ip(ctl: &Controller, node: &str) -> String {
    ctl.ipam()
        .get(&node_owner(node))
        .map(|a| a.ip_string())
        .expect("node has a join address")
}

const SELECTORS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: red}}
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: red-net}
spec:
  cidrBlock: 10.50.0.0/24
  namespaceSelectors: [{matchLabels: {team: red}}]
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: z-red-too}
spec:
  cidrBlock: 10.70.0.0/24
  namespaceSelectors: [{matchExpressions: [{key: team, operator: In, values: [red]}]}]
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: blue-net}
spec:
  cidrBlock: 10.60.0.0/24
  namespaceSelectors: [{matchLabels: {team: blue}}]
---
apiVersion: v1
kind: Node
metadata: {name: node1}
---
apiVersion: v1
kind: Pod
metadata: {name: first, namespace: shop}
spec: {nodeName: node1, containers: [{name: c}]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_selectors_bind_namespaces_and_new_pods_follow_labels() {
    let ovn = Ovn::start();
    let mut ctl = controller(&ovn).await;
    let r = ctl.replace_state(state(SELECTORS)).await.unwrap();
    assert!(r.events.is_empty(), "{:?}", r.events);

    // Two subnets select the namespace: the first by name takes new pods.
    let first = pod_ip(&ctl, "shop", "first");
    assert!(first.starts_with("10.50.0."), "{first}");
    let ext = find(
        &ovn,
        "Logical_Switch_Port",
        "external_ids",
        "name=first.shop",
    );
    assert!(ext.contains("ls=red-net"), "{ext}");
    let ports = find(&ovn, "Logical_Switch", "ports", "name=red-net");
    let uuid = find(&ovn, "Logical_Switch_Port", "_uuid", "name=first.shop");
    assert!(ports.contains(&uuid), "{ports} holds {uuid}");

    // The namespace is relabelled: a new pod goes to the subnet now
    // selecting it, the existing pod keeps its address.
    let relabel =
        one("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: blue}}");
    let r = ctl
        .apply(&[relabel, pod("second", "shop", "node1")], &[])
        .await
        .unwrap();
    assert!(r.events.is_empty(), "{:?}", r.events);
    assert_eq!(pod_ip(&ctl, "shop", "first"), first, "existing pod kept");
    let second = pod_ip(&ctl, "shop", "second");
    assert!(second.starts_with("10.60.0."), "{second}");
    let ext = find(
        &ovn,
        "Logical_Switch_Port",
        "external_ids",
        "name=second.shop",
    );
    assert!(ext.contains("ls=blue-net"), "{ext}");
    assert_settled(&mut ctl, "the relabel").await;

    // northd put the new pod in the blue switch's pipeline.
    ovn.eventually("logical flows of blue-net", || {
        ovn.sb
            .sbctl(&["lflow-list", "blue-net"])
            .is_ok_and(|f| f.contains("\"second.shop\"") && f.contains(&second))
    });

    // A namespace no subnet selects lands in the default subnet.
    let r = ctl
        .apply(
            &[
                one("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: green}}"),
                pod("third", "shop", "node1"),
            ],
            &[],
        )
        .await
        .unwrap();
    assert!(r.events.is_empty(), "{:?}", r.events);
    let third = pod_ip(&ctl, "shop", "third");
    assert!(third.starts_with("10.16."), "{third}");
}

const GATEWAYS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: d}
---
apiVersion: v1
kind: Namespace
metadata: {name: c}
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: dist}
spec:
  cidrBlock: 10.80.0.0/24
  namespaces: [d]
  gatewayType: distributed
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: cent}
spec:
  cidrBlock: 10.90.0.0/24
  namespaces: [c]
  gatewayType: centralized
  gatewayNode: "node3, node2:172.18.0.5"
  natOutgoing: true
---
apiVersion: v1
kind: Node
metadata: {name: node1}
---
apiVersion: v1
kind: Node
metadata: {name: node2}
status: {conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Node
metadata: {name: node3}
status: {conditions: [{type: Ready, status: "False"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: d}
spec: {nodeName: node1, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: d}
spec: {nodeName: node2, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: x, namespace: c}
spec: {nodeName: node1, containers: [{name: c}]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_types_write_kube_ovn_router_policies() {
    let ovn = Ovn::start();
    let mut ctl = controller(&ovn).await;
    let r = ctl.replace_state(state(GATEWAYS)).await.unwrap();
    assert!(r.events.is_empty(), "{:?}", r.events);
    let (j1, j2, j3) = (
        join_ip(&ctl, "node1"),
        join_ip(&ctl, "node2"),
        join_ip(&ctl, "node3"),
    );

    let policies = ovn.nbctl(&["lr-policy-list", "ovn-cluster"]);
    let lines: Vec<String> = policies
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let has = |p: &str, m: &str, rest: &str| {
        lines
            .iter()
            .any(|l| l.starts_with(p) && l.contains(m) && l.contains(rest))
    };
    // Traffic to every subnet stays in the cluster.
    for cidr in [
        "10.80.0.0/24",
        "10.90.0.0/24",
        "10.16.0.0/16",
        "100.64.0.0/16",
    ] {
        assert!(
            has("31000", &format!("ip4.dst == {cidr}"), "allow"),
            "{policies}"
        );
    }
    // Distributed: each node reroutes its own pods to its join address.
    for (n, j) in [("node1", &j1), ("node2", &j2), ("node3", &j3)] {
        let m = format!("ip4.src == $dist.{n}_ip4");
        assert!(has("29000", &m, &format!("reroute {j}")), "{policies}");
        // The default subnet is distributed too.
        let m = format!("ip4.src == $ovn.default.{n}_ip4");
        assert!(has("29000", &m, &format!("reroute {j}")), "{policies}");
    }
    // Centralized: node3 is not Ready, node2 is the active gateway.
    assert!(
        has("29000", "ip4.src == 10.90.0.0/24", &format!("reroute {j2}")),
        "{policies}"
    );
    let ext = find(
        &ovn,
        "Logical_Router_Policy",
        "external_ids",
        "match=\"ip4.src == 10.90.0.0/24\"",
    );
    assert!(
        ext.contains("subnet=cent") && ext.contains("node2=") && ext.contains(&j2),
        "{ext}"
    );
    let ext = find(
        &ovn,
        "Logical_Router_Policy",
        "external_ids",
        "match=\"ip4.src == $dist.node1_ip4\"",
    );
    assert!(
        ext.contains("subnet=dist")
            && ext.contains("node=node1")
            && ext.contains("vendor=kube-ovn"),
        "{ext}"
    );
    // No centralized subnet has per-node groups.
    assert_eq!(find(&ovn, "Port_Group", "name", "name=cent.node1"), "");

    // The per node groups hold the pods of that node.
    let a = find(&ovn, "Logical_Switch_Port", "_uuid", "name=a.d");
    let b = find(&ovn, "Logical_Switch_Port", "_uuid", "name=b.d");
    assert_eq!(find(&ovn, "Port_Group", "ports", "name=dist.node1"), a);
    assert_eq!(find(&ovn, "Port_Group", "ports", "name=dist.node2"), b);
    assert_eq!(find(&ovn, "Port_Group", "ports", "name=dist.node3"), "");
    let ext = find(&ovn, "Port_Group", "external_ids", "name=dist.node1");
    assert!(
        ext.contains("subnet=dist") && ext.contains("node=node1") && ext.contains("np=dist/node1"),
        "{ext}"
    );

    // northd: the group's address set and the reroute in the router pipeline.
    let a_ip = pod_ip(&ctl, "d", "a");
    ovn.eventually("the port group address set in the Southbound", || {
        ovn.sb
            .sbctl(&[
                "--bare",
                "--columns=addresses",
                "find",
                "Address_Set",
                "name=dist.node1_ip4",
            ])
            .is_ok_and(|s| s.trim() == a_ip)
    });
    ovn.eventually("the reroute policy as logical flows", || {
        ovn.sb.sbctl(&["lflow-list", "ovn-cluster"]).is_ok_and(|f| {
            f.contains("ip4.src == $dist.node1_ip4")
                && f.contains(&j1)
                && f.contains("ip4.src == 10.90.0.0/24")
        })
    });

    // node3 becomes Ready: as the first gateway listed, it takes over.
    let ready3 = one("apiVersion: v1\nkind: Node\nmetadata: {name: node3}\nstatus: {conditions: [{type: Ready, status: \"True\"}]}");
    let r = ctl.apply(&[ready3], &[]).await.unwrap();
    assert!(!r.full && r.operations > 0);
    let policies = ovn.nbctl(&["lr-policy-list", "ovn-cluster"]);
    assert!(
        policies.lines().any(|l| {
            let l = l.split_whitespace().collect::<Vec<_>>().join(" ");
            l.contains("ip4.src == 10.90.0.0/24 reroute") && l.ends_with(&j3)
        }),
        "{policies}"
    );
    assert_settled(&mut ctl, "the gateway change").await;

    // A pod moves to another node; a pod is deleted.
    let r = ctl
        .apply(
            &[pod("a", "d", "node3")],
            &[ObjectRef::Pod(("d".into(), "b".into()))],
        )
        .await
        .unwrap();
    assert!(!r.full);
    assert_eq!(find(&ovn, "Port_Group", "ports", "name=dist.node1"), "");
    assert_eq!(find(&ovn, "Port_Group", "ports", "name=dist.node2"), "");
    assert_eq!(find(&ovn, "Port_Group", "ports", "name=dist.node3"), a);
    assert_settled(&mut ctl, "the pod moves").await;

    // The subnet turns centralized without a gateway node: an event, and
    // its distributed rows go.
    let cent = one("apiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata: {name: dist}\nspec: {cidrBlock: 10.80.0.0/24, namespaces: [d], gatewayType: centralized}");
    let r = ctl.apply(&[cent], &[]).await.unwrap();
    assert!(
        r.events
            .iter()
            .any(|e| e.reason == "NoReadyGateway" && e.object == "Subnet dist"),
        "{:?}",
        r.events
    );
    assert_eq!(find(&ovn, "Port_Group", "name", "name=dist.node1"), "");
    let policies = ovn.nbctl(&["lr-policy-list", "ovn-cluster"]);
    assert!(!policies.contains("$dist."), "{policies}");
    assert!(policies.contains("ip4.dst == 10.80.0.0/24"), "{policies}");
    assert_settled(&mut ctl, "the gateway type change").await;

    // Node gone: its groups and policies go.
    let r = ctl
        .apply(&[], &[ObjectRef::Node("node1".into())])
        .await
        .unwrap();
    assert!(r.operations > 0);
    assert_eq!(
        find(&ovn, "Port_Group", "name", "name=ovn.default.node1"),
        ""
    );
    let policies = ovn.nbctl(&["lr-policy-list", "ovn-cluster"]);
    assert!(!policies.contains("$ovn.default.node1_ip4"), "{policies}");
    assert_settled(&mut ctl, "the node deletion").await;
}

const LOGGING: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: shop-net}
spec:
  cidrBlock: 10.55.0.0/24
  namespaces: [shop]
  private: true
---
apiVersion: v1
kind: Node
metadata: {name: node1}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: node1, containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {nodeName: node1, containers: [{name: c}]}
"#;

fn logged_policy(annotations: &str) -> Object {
    one(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: web-only, namespace: shop, annotations: {{{annotations}}}}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]\n    ports: [{{port: 80}}]"
    ))
}

/// `priority,action,log,severity,meter,name` of the ACLs of a port group
/// or switch, one line each.
fn acls(ovn: &Ovn, table: &str, name: &str) -> Vec<String> {
    let uuids = find(ovn, table, "acls", &format!("name={name}"));
    uuids
        .split_whitespace()
        .map(|u| {
            let f = |c: &str| {
                ovn.nbctl(&["--bare", &format!("--columns={c}"), "list", "ACL", u])
                    .trim()
                    .to_string()
            };
            format!(
                "{},{},{},{},{},{}",
                f("priority"),
                f("action"),
                f("log"),
                f("severity"),
                f("meter"),
                f("name")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_policy_acl_logging_with_a_meter() {
    let ovn = Ovn::start();
    let mut ctl = controller(&ovn).await;
    let mut s = state(LOGGING);
    s.apply(logged_policy(
        "ovn.kubernetes.io/enable_log: \"true\", ovn.kubernetes.io/log_acl_actions: \"drop,allow\", ovn.kubernetes.io/acl_log_meter_rate: \"5\"",
    ));
    let r = ctl.replace_state(s).await.unwrap();
    assert!(r.events.is_empty(), "{:?}", r.events);

    let meter = "web.only.shop_to-lport_meter";
    let got = acls(&ovn, "Port_Group", "web.only.shop");
    assert!(
        got.contains(&format!("2000,drop,true,warning,{meter},shop/web-only")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|a| a.starts_with("2001,allow-related,true,,") && a.contains(meter)),
        "{got:?}"
    );
    // The meter: packets per second, one band dropping above the rate.
    assert_eq!(
        find(&ovn, "Meter", "unit", &format!("name={meter}")),
        "pktps"
    );
    let band = find(&ovn, "Meter", "bands", &format!("name={meter}"));
    let band_cols = ovn.nbctl(&[
        "--bare",
        "--columns=action,rate,burst_size",
        "list",
        "Meter_Band",
        &band,
    ]);
    let band_cols: Vec<&str> = band_cols.split_whitespace().collect();
    assert_eq!(band_cols, ["drop", "5", "1"]);
    // The private subnet's isolation drop always logs, as in Kube-OVN.
    let got = acls(&ovn, "Logical_Switch", "shop-net");
    assert!(
        got.contains(&"1000,drop,true,warning,,shop-net".to_string()),
        "{got:?}"
    );

    // northd: the log() action in the switch pipeline, and the meter.
    ovn.eventually("logging ACL flows", || {
        ovn.sb.sbctl(&["lflow-list", "shop-net"]).is_ok_and(|f| {
            f.contains("name=\"shop/web-only\"")
                && f.contains("severity=warning")
                && f.contains("verdict=drop")
                && f.contains(&format!("meter=\"{meter}"))
        })
    });
    ovn.eventually("the meter in the Southbound", || {
        ovn.sb
            .sbctl(&["--bare", "--columns=name", "list", "Meter"])
            .is_ok_and(|m| m.contains(meter))
    });
    assert_settled(&mut ctl, "the cold start").await;

    // Logging off: the ACLs stop logging and the meter goes.
    let r = ctl.apply(&[logged_policy("")], &[]).await.unwrap();
    assert!(!r.full && r.operations > 0);
    let got = acls(&ovn, "Port_Group", "web.only.shop");
    assert!(!got.is_empty());
    assert!(got.iter().all(|a| a.contains(",false,,,")), "{got:?}");
    assert_eq!(find(&ovn, "Meter", "name", &format!("name={meter}")), "");
    assert_settled(&mut ctl, "logging turned off").await;

    // Logging on without a rate: drops log, unmetered; allows do not log.
    let r = ctl
        .apply(
            &[logged_policy("ovn.kubernetes.io/enable_log: \"true\"")],
            &[],
        )
        .await
        .unwrap();
    assert!(r.events.is_empty(), "{:?}", r.events);
    let got = acls(&ovn, "Port_Group", "web.only.shop");
    assert!(
        got.contains(&"2000,drop,true,warning,,shop/web-only".to_string()),
        "{got:?}"
    );
    assert!(
        got.iter()
            .filter(|a| a.starts_with("2001"))
            .all(|a| a.contains(",false,,,")),
        "{got:?}"
    );
    assert_settled(&mut ctl, "logging drops only").await;

    // A bad rate is an event, and logging stays unmetered.
    let r = ctl
        .apply(
            &[logged_policy(
                "ovn.kubernetes.io/enable_log: \"true\", ovn.kubernetes.io/acl_log_meter_rate: \"fast\"",
            )],
            &[],
        )
        .await
        .unwrap();
    assert!(
        r.events.iter().any(|e| e.reason == "InvalidLogMeterRate"),
        "{:?}",
        r.events
    );
    assert_eq!(find(&ovn, "Meter", "name", &format!("name={meter}")), "");
}
