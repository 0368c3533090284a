//! The controller against a real OVN Northbound database and ovn-northd,
//! fed from a manifest directory.

mod common;

use std::path::Path;

use common::Ovn;
use ovn_bridge::controller::manifest::load_dir;
use ovn_bridge::controller::model::ClusterState;
use ovn_bridge::controller::run::Controller;
use ovn_bridge::controller::Config;

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: sub-a}
spec:
  cidrBlock: 10.1.0.0/24
  namespaces: [team-a]
  excludeIps: ["10.1.0.2..10.1.0.9"]
  private: true
  allowSubnets: [10.16.0.0/16]
---
apiVersion: v1
kind: Node
metadata: {name: node1}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: team-a
  labels: {app: web}
  annotations:
    ovn.kubernetes.io/port_security: "true"
spec:
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata:
  name: db
  namespace: team-a
  labels: {app: db}
  annotations:
    ovn.kubernetes.io/ip_address: 10.1.0.50
    ovn.kubernetes.io/ingress_rate: "10"
spec:
  containers: [{name: c}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: team-a}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: team-a
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.1.0.10], conditions: {ready: true}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: team-a}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
"#;

const BAD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: broken, namespace: team-a}
spec: {containers: "not a list"}
---
apiVersion: v1
kind: Gadget
metadata: {name: g}
"#;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn load(dir: &Path) -> (ClusterState, usize) {
    let loaded = load_dir(dir);
    let n = loaded.errors.len();
    let (s, _) = loaded.into_state();
    (s, n)
}

fn lsp_field(ovn: &Ovn, port: &str, col: &str) -> String {
    ovn.nbctl(&[
        "--bare",
        &format!("--columns={col}"),
        "find",
        "Logical_Switch_Port",
        &format!("name={port}"),
    ])
    .trim()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_into_northbound_and_logical_flows() {
    let ovn = Ovn::start();
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("manifests");
    std::fs::create_dir(&man).unwrap();
    let state_file = dir.path().join("state.json");
    write(&man, "10-base.yaml", BASE);
    write(&man, "20-bad.yaml", BAD);

    let (state, nerr) = load(&man);
    assert_eq!(nerr, 2, "the bad documents are reported");
    assert_eq!(state.pods.len(), 2, "the good ones still apply");

    // A row that is not ours, on a switch we will create, and a switch of ours-to-be name elsewhere.
    ovn.nbctl(&["ls-add", "foreign"]);

    let remotes = vec![ovn.nb.remote.clone()];
    let mut ctl = Controller::connect(&remotes, Config::default(), Some(state_file.clone()))
        .await
        .unwrap();
    let report = ctl.reconcile(&state).await.unwrap();
    assert!(report.operations > 0);
    assert!(report.events.is_empty(), "{:?}", report.events);
    assert_eq!(ctl.stats.transactions, 1, "one batched transaction");

    // Switches, router, router ports.
    let switches = ovn.nbctl(&["--bare", "--columns=name", "list", "Logical_Switch"]);
    for s in ["sub-a", "ovn-default", "join", "foreign"] {
        assert!(
            switches.split_whitespace().any(|x| x == s),
            "{s} in {switches}"
        );
    }
    let lrps = ovn.nbctl(&[
        "--bare",
        "--columns=name,networks",
        "list",
        "Logical_Router_Port",
    ]);
    assert!(
        lrps.contains("ovn-cluster-sub-a") && lrps.contains("10.1.0.1/24"),
        "{lrps}"
    );
    assert_eq!(lsp_field(&ovn, "sub-a-ovn-cluster", "type"), "router");
    // Pods: excludeIps skipped, static honoured, port security.
    let web_addr = lsp_field(&ovn, "web.team-a", "addresses");
    assert!(web_addr.ends_with(" 10.1.0.10"), "{web_addr}");
    assert_eq!(lsp_field(&ovn, "web.team-a", "port_security"), web_addr);
    assert!(lsp_field(&ovn, "db.team-a", "addresses").ends_with(" 10.1.0.50"));
    assert_eq!(lsp_field(&ovn, "db.team-a", "port_security"), "");
    assert!(lsp_field(&ovn, "node-node1", "addresses").ends_with(" 100.64.0.2"));
    let ext = lsp_field(&ovn, "web.team-a", "external_ids");
    assert!(
        ext.contains("vendor=kube-ovn")
            && ext.contains("pod=team-a/web")
            && ext.contains("ls=sub-a"),
        "{ext}"
    );
    // Load balancer.
    let vips = ovn.nbctl(&[
        "--bare",
        "--columns=vips",
        "find",
        "Load_Balancer",
        "name=cluster-tcp-loadbalancer",
    ]);
    assert!(vips.contains("10.96.0.10:80=10.1.0.10:8080"), "{vips}");
    let ls_lbs = ovn.nbctl(&[
        "--bare",
        "--columns=load_balancer",
        "find",
        "Logical_Switch",
        "name=sub-a",
    ]);
    assert_eq!(ls_lbs.split_whitespace().count(), 6);
    // Network policy.
    let pg = ovn.nbctl(&[
        "--bare",
        "--columns=ports",
        "find",
        "Port_Group",
        "name=allow.web.team.a",
    ]);
    assert_eq!(pg.split_whitespace().count(), 1, "{pg}");
    let acls = ovn.nbctl(&["acl-list", "allow.web.team.a"]);
    assert!(acls.contains("outport == @allow.web.team.a && ip && ip4.src == $allow.web.team.a.ingress.allow.IPv4.0 && ip4.src != $allow.web.team.a.ingress.except.IPv4.0 && tcp.dst == 5432"), "{acls}");
    assert!(acls.contains("2000") && acls.contains("drop"), "{acls}");
    let set = ovn.nbctl(&[
        "--bare",
        "--columns=addresses",
        "find",
        "Address_Set",
        "name=allow.web.team.a.ingress.allow.IPv4.0",
    ]);
    assert_eq!(set.trim(), "10.1.0.10");
    // Subnet isolation.
    let ls_acls = ovn.nbctl(&["acl-list", "sub-a"]);
    assert!(
        ls_acls.contains("ip4.src == 10.1.0.0/24 && ip4.dst == 10.1.0.0/24"),
        "{ls_acls}"
    );
    assert!(
        ls_acls.contains("1000") && ls_acls.contains("ip4.src == 100.64.0.0/16"),
        "{ls_acls}"
    );
    // QoS.
    let qos = ovn.nbctl(&["--bare", "--columns=_uuid,bandwidth,match", "list", "QoS"]);
    assert!(
        qos.contains("rate=10000") && qos.contains("db.team-a"),
        "{qos}"
    );
    let qos_uuid = qos.split_whitespace().next().unwrap().to_string();

    // northd turned it into logical flows.
    ovn.eventually("logical flows of sub-a", || {
        ovn.sb
            .sbctl(&["lflow-list", "sub-a"])
            .is_ok_and(|f| f.contains("\"web.team-a\"") && f.contains("10.1.0.10"))
    });
    let flows = ovn.sbctl(&["lflow-list", "sub-a"]);
    assert!(
        flows.contains("10.96.0.10"),
        "service VIP in the switch pipeline"
    );
    assert!(
        flows.contains("tcp.dst == 5432"),
        "policy ACL in the switch pipeline"
    );

    // Restart: nothing changed means nothing written.
    drop(ctl);
    let mut ctl = Controller::connect(&remotes, Config::default(), Some(state_file.clone()))
        .await
        .unwrap();
    let (state, _) = load(&man);
    let r = ctl.reconcile(&state).await.unwrap();
    assert_eq!(r.operations, 0);
    assert_eq!(ctl.stats.transactions, 0);

    // Updates: pod deleted, QoS changed, policy edited.
    let edited = BASE
        .replace(
            "ovn.kubernetes.io/ingress_rate: \"10\"",
            "ovn.kubernetes.io/ingress_rate: \"20\"",
        )
        .replace("ports: [{port: 5432}]", "ports: [{port: 6432}]");
    let web_start = edited
        .find("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web")
        .unwrap();
    let web_end = web_start + edited[web_start..].find("---").unwrap() + 4;
    let edited = format!("{}{}", &edited[..web_start], &edited[web_end..]);
    write(&man, "10-base.yaml", &edited);
    let (state, _) = load(&man);
    assert_eq!(state.pods.len(), 1);
    let r = ctl.reconcile(&state).await.unwrap();
    assert!(r.operations > 0);
    assert_eq!(lsp_field(&ovn, "web.team-a", "name"), "");
    assert!(
        lsp_field(&ovn, "db.team-a", "addresses").ends_with(" 10.1.0.50"),
        "db keeps its address"
    );
    let qos = ovn.nbctl(&["--bare", "--columns=_uuid,bandwidth", "list", "QoS"]);
    assert!(qos.contains("rate=20000"), "{qos}");
    assert_eq!(
        qos.split_whitespace().next().unwrap(),
        qos_uuid,
        "QoS row updated in place"
    );
    let acls = ovn.nbctl(&["acl-list", "allow.web.team.a"]);
    assert!(
        acls.contains("tcp.dst == 6432") && !acls.contains("5432"),
        "{acls}"
    );
    let set = ovn.nbctl(&[
        "--bare",
        "--columns=addresses",
        "find",
        "Address_Set",
        "name=allow.web.team.a.ingress.allow.IPv4.0",
    ]);
    assert_eq!(set.trim(), "", "the deleted pod left the address set");
    assert!(
        ovn.nbctl(&["--bare", "--columns=name", "list", "Logical_Switch"])
            .contains("foreign"),
        "rows not ours are kept"
    );

    // Everything removed: our rows go, the foreign switch stays.
    let empty = tempfile::tempdir().unwrap();
    let (state, _) = load(empty.path());
    ctl.reconcile(&state).await.unwrap();
    let switches = ovn.nbctl(&["--bare", "--columns=name", "list", "Logical_Switch"]);
    assert!(!switches.contains("sub-a"), "{switches}");
    assert!(switches.contains("foreign"));
    assert_eq!(
        ovn.nbctl(&["--bare", "--columns=name", "list", "Port_Group"])
            .trim(),
        ""
    );
    assert_eq!(
        ovn.nbctl(&["--bare", "--columns=_uuid", "list", "ACL"])
            .trim(),
        ""
    );
    assert_eq!(
        ovn.nbctl(&["--bare", "--columns=_uuid", "list", "QoS"])
            .trim(),
        ""
    );
}
