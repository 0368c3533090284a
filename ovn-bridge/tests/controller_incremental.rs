//! The controller's incremental passes against a real OVN Northbound
//! database: after every event the database holds exactly what a full pass
//! would write, a cold start is split into bounded transactions, and
//! outside edits are repaired by the full pass.

use std::fmt::Write;
use std::path::Path;

use ovn_bridge::controller::manifest::{parse_str, Loaded};
use ovn_bridge::controller::model::{ClusterState, Object, ObjectRef};
use ovn_bridge::controller::run::{Controller, Options};
use ovn_bridge::controller::Config;
use ovsdb::testing::OvsdbServer;

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

fn pod(name: &str, ns: &str, app: &str, extra: &str) -> Object {
    one(&format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}, annotations: {{{extra}}}}}\nspec: {{containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}"))
}

fn policy(name: &str, ns: &str, app: &str, peer: &str, port: u16) -> Object {
    one(&format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: {app}}}}}\n  ingress:\n  - from: [{peer}]\n    ports: [{{port: {port}}}]"))
}

fn cluster() -> ClusterState {
    let mut y = String::new();
    for ns in ["red", "blue"] {
        writeln!(y, "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{team: {ns}}}}}").unwrap();
    }
    for n in 0..2 {
        writeln!(
            y,
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node{n}}}"
        )
        .unwrap();
    }
    for s in 0..4 {
        writeln!(y, "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}, namespace: red}}\nspec: {{clusterIP: 10.96.0.{}, ports: [{{name: http, port: 80}}]}}", s + 1).unwrap();
        writeln!(y, "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc{s}-x, namespace: red, labels: {{kubernetes.io/service-name: svc{s}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [10.16.0.{}]}}]", s + 2).unwrap();
    }
    let mut state = ClusterState::default();
    for o in objects(&y) {
        state.apply(o);
    }
    for p in 0..40 {
        let ns = if p % 2 == 0 { "red" } else { "blue" };
        let rate = if p % 7 == 0 {
            "ovn.kubernetes.io/ingress_rate: \"5\""
        } else {
            ""
        };
        state.apply(pod(&format!("p{p}"), ns, &format!("a{}", p % 3), rate));
    }
    state.apply(policy(
        "np0",
        "red",
        "a0",
        "{podSelector: {matchLabels: {app: a1}}}",
        80,
    ));
    state.apply(policy(
        "np1",
        "blue",
        "a1",
        "{namespaceSelector: {matchLabels: {team: red}}}",
        443,
    ));
    state.apply(policy(
        "np2",
        "red",
        "a2",
        "{ipBlock: {cidr: 192.168.0.0/16}}",
        53,
    ));
    state
}

fn count(nb: &OvsdbServer, table: &str) -> usize {
    nb.nbctl(&["--bare", "--columns=_uuid", "list", table])
        .unwrap()
        .split_whitespace()
        .count()
}

/// A full pass finds nothing to write: the database holds the desired rows.
async fn assert_settled(ctl: &mut Controller, what: &str) {
    let r = ctl.resync().await.unwrap();
    assert!(r.full);
    assert_eq!(r.operations, 0, "after {what}, a full pass still wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_passes_leave_what_a_full_pass_would() {
    let nb = OvsdbServer::start_nb().unwrap();
    let remotes = vec![nb.remote.clone()];
    let mut ctl = Controller::connect(&remotes, Config::default(), None)
        .await
        .unwrap();
    ctl.set_options(Options {
        max_ops_per_txn: 16,
        full_resync: None,
    });

    // Cold start, in bounded transactions.
    let r = ctl.replace_state(cluster()).await.unwrap();
    assert!(r.full);
    assert!(r.operations > 60, "{} operations", r.operations);
    assert!(
        r.transactions >= r.operations / 16,
        "{} transactions",
        r.transactions
    );
    assert_eq!(ctl.stats.transactions, r.transactions as u64);
    assert_eq!(
        count(&nb, "Logical_Switch_Port"),
        ctl.row_index().count("Logical_Switch_Port")
    );
    assert!(
        count(&nb, "Logical_Switch_Port") >= 42 + 2,
        "pods, nodes and router ports"
    );
    assert_settled(&mut ctl, "the cold start").await;

    type Step = (&'static str, Vec<Object>, Vec<ObjectRef>);
    let red = |n: &str| ("red".to_string(), n.to_string());
    let steps: Vec<Step> = vec![
        ("a pod added", vec![pod("new", "red", "a1", "")], vec![]),
        ("a pod relabelled", vec![pod("p0", "red", "a1", "")], vec![]),
        (
            "a QoS changed",
            vec![pod(
                "p2",
                "red",
                "a2",
                "ovn.kubernetes.io/ingress_rate: \"9\"",
            )],
            vec![],
        ),
        ("a pod deleted", vec![], vec![ObjectRef::Pod(red("p4"))]),
        (
            "a policy edited",
            vec![policy(
                "np0",
                "red",
                "a0",
                "{podSelector: {matchLabels: {app: a2}}}",
                8080,
            )],
            vec![],
        ),
        (
            "a policy added",
            vec![policy("np3", "blue", "a0", "{podSelector: {}}", 22)],
            vec![],
        ),
        (
            "a policy deleted",
            vec![],
            vec![ObjectRef::NetworkPolicy(red("np2"))],
        ),
        (
            "a service deleted",
            vec![],
            vec![
                ObjectRef::Service(red("svc1")),
                ObjectRef::EndpointSlice(red("svc1-x")),
            ],
        ),
        (
            "a node added",
            vec![one("apiVersion: v1\nkind: Node\nmetadata: {name: node9}")],
            vec![],
        ),
        (
            "a node deleted",
            vec![],
            vec![ObjectRef::Node("node0".into())],
        ),
    ];
    for (what, changed, deleted) in steps {
        let before = ctl.stats.operations;
        let r = ctl.apply(&changed, &deleted).await.unwrap();
        assert!(!r.full, "{what} took the full path");
        assert!(r.operations > 0, "{what} wrote nothing");
        assert_eq!(ctl.stats.operations - before, r.operations as u64);
        assert_settled(&mut ctl, what).await;
    }
    let ports = nb
        .nbctl(&["--bare", "--columns=name", "list", "Logical_Switch_Port"])
        .unwrap();
    assert!(
        ports.contains("new.red")
            && !ports.contains("p4.red")
            && ports.contains("node-node9")
            && !ports.contains("node-node0"),
        "{ports}"
    );

    // A namespace relabelled reaches every unit: a full pass.
    let r = ctl
        .apply(
            &[one(
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: blue, labels: {team: red}}",
            )],
            &[],
        )
        .await
        .unwrap();
    assert!(r.full);
    assert_settled(&mut ctl, "a namespace relabelled").await;

    // Our row deleted behind our back: the full pass puts it back.
    nb.nbctl(&["lsp-del", "p1.blue"]).unwrap();
    let r = ctl.resync().await.unwrap();
    assert!(r.operations > 0);
    assert_eq!(
        nb.nbctl(&[
            "--bare",
            "--columns=name",
            "find",
            "Logical_Switch_Port",
            "name=p1.blue"
        ])
        .unwrap()
        .trim(),
        "p1.blue"
    );
    assert_eq!(
        count(&nb, "Logical_Switch_Port"),
        ctl.row_index().count("Logical_Switch_Port")
    );
    assert!(ctl.stats.incremental_passes >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_waiting_for_a_taken_address_gets_it_when_the_holder_goes() {
    let nb = OvsdbServer::start_nb().unwrap();
    let remotes = vec![nb.remote.clone()];
    let mut ctl = Controller::connect(&remotes, Config::default(), None)
        .await
        .unwrap();
    let mut state = ClusterState::default();
    state.apply(pod(
        "holder",
        "red",
        "x",
        "ovn.kubernetes.io/ip_address: 10.16.0.200",
    ));
    ctl.replace_state(state).await.unwrap();
    let r = ctl
        .apply(
            &[pod(
                "waiter",
                "red",
                "x",
                "ovn.kubernetes.io/ip_address: 10.16.0.200",
            )],
            &[],
        )
        .await
        .unwrap();
    assert!(!r.full);
    assert!(
        r.events.iter().any(|e| e.object == "Pod red/waiter"),
        "{:?}",
        r.events
    );
    assert!(ctl.ipam().get("pod:red/waiter").is_none());
    let r = ctl
        .apply(&[], &[ObjectRef::Pod(("red".into(), "holder".into()))])
        .await
        .unwrap();
    assert!(!r.full);
    let a = r
        .new_allocations
        .get("pod:red/waiter")
        .expect("the waiter is placed");
    assert_eq!(a.ip_string(), "10.16.0.200");
    let addr = nb
        .nbctl(&[
            "--bare",
            "--columns=addresses",
            "find",
            "Logical_Switch_Port",
            "name=waiter.red",
        ])
        .unwrap();
    assert!(addr.trim().ends_with(" 10.16.0.200"), "{addr}");
    assert_settled(&mut ctl, "the waiter placed").await;
}
