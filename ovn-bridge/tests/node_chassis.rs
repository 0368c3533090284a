//! The node role against a real OVN central (NB, ovn-northd, SB): chassis
//! registration and its effect on northd's flows, Port_Binding claims
//! through the CNI handler, and a restart that writes nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastpath_cni::{Attachment, CniArgs, Command, DaemonReply, DaemonRequest, PluginConfig};
use ovn_bridge::node::{ChassisConfig, Node, NodeConfig, RecordingPlumber, Shutdown, FEATURES};
use ovsdb::testing::{server_rows, OvnCentral};
use serde_json::Value;

const SB: &str = "OVN_Southbound";

fn config(central: &OvnCentral, dir: &Path) -> NodeConfig {
    let mut cfg = NodeConfig::new(
        vec![central.sb.remote.clone()],
        ChassisConfig {
            name: "node-1".into(),
            hostname: "node-1.example".into(),
            encap_ip: "192.0.2.11".parse().unwrap(),
            bridge_mappings: String::new(),
            cms_options: String::new(),
        },
        dir.join("tables"),
        dir.join("state"),
    );
    cfg.port_wait = Duration::from_secs(20);
    cfg
}

fn rows(central: &OvnCentral, table: &str) -> Vec<Value> {
    server_rows(&central.sb.remote, SB, table).unwrap()
}

/// Polls `f` for up to 20 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

fn lflows(central: &OvnCentral) -> String {
    central.sbctl(&["lflow-list"]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chassis_rows_carry_the_flags_northd_needs_and_go_on_exit() {
    let central = OvnCentral::start().unwrap();
    central
        .nbctl(&[
            "ls-add",
            "ls0",
            "--",
            "lb-add",
            "lb0",
            "10.0.0.10:80",
            "10.0.0.2:8080",
        ])
        .unwrap();
    central.nbctl(&["ls-lb-add", "ls0", "lb0"]).unwrap();
    central.sync(Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(
        config(&central, dir.path()),
        Arc::new(RecordingPlumber::default()),
    )
    .await
    .unwrap();

    let chassis = rows(&central, "Chassis");
    assert_eq!(chassis.len(), 1);
    let other = &chassis[0]["other_config"].to_string();
    for f in FEATURES {
        assert!(
            other.contains(&format!("[\"{f}\",\"true\"]")),
            "{f} missing: {other}"
        );
    }
    assert!(other.contains("[\"datapath-type\",\"netdev\"]"));
    assert!(other.contains("[\"is-interconn\",\"false\"]"));
    let encap = rows(&central, "Encap");
    assert_eq!(encap.len(), 1);
    assert_eq!(encap[0]["type"], "geneve");
    assert_eq!(encap[0]["ip"], "192.0.2.11");
    assert_eq!(encap[0]["chassis_name"], "node-1");
    assert_eq!(rows(&central, "Chassis_Private").len(), 1);

    // With only our chassis, northd load-balances with ct_lb_mark ...
    let c = &central;
    tokio::task::block_in_place(|| {
        eventually("ct_lb_mark", || lflows(c).contains("ct_lb_mark"));
        // ... and a chassis without the flags makes it fall back to ct_lb.
        c.sbctl(&["chassis-add", "old", "geneve", "192.0.2.99"])
            .unwrap();
        eventually("ct_lb without mark", || {
            let f = lflows(c);
            f.contains("ct_lb(") && !f.contains("ct_lb_mark")
        });
        c.sbctl(&["chassis-del", "old"]).unwrap();
        eventually("ct_lb_mark again", || lflows(c).contains("ct_lb_mark"));
    });

    node.shutdown(Shutdown::Exit).await.unwrap();
    assert!(rows(&central, "Chassis").is_empty());
    assert!(rows(&central, "Encap").is_empty());
    assert!(rows(&central, "Chassis_Private").is_empty());
}

fn plugin_config(socket: &Path) -> PluginConfig {
    let doc = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "ovn",
        "type": "fastpath-cni",
        "socketPath": socket,
        "interfaceType": "kernel",
    });
    PluginConfig::parse(doc.to_string().as_bytes()).unwrap()
}

fn request(command: Command, socket: &Path, container: &str) -> DaemonRequest {
    DaemonRequest {
        command,
        attachment: Some(Attachment {
            container_id: container.into(),
            ifname: "eth0".into(),
            netns: Some("/var/run/netns/pod1".into()),
            args: CniArgs::parse("K8S_POD_NAME=pod1;K8S_POD_NAMESPACE=ns1").unwrap(),
            vhost_socket_dir: None,
        }),
        config: plugin_config(socket),
    }
}

async fn call(socket: &Path, req: DaemonRequest) -> DaemonReply {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || {
        fastpath_cni::call(&socket, &req, Duration::from_secs(30)).unwrap()
    })
    .await
    .unwrap()
}

fn serve_cni(node: &Node, socket: &Path) {
    let listener = fastpath_cni::bind(socket).unwrap();
    let handler = Arc::new(node.cni_handler());
    std::thread::spawn(move || fastpath_cni::serve(listener, handler));
}

fn pod_binding(central: &OvnCentral) -> Value {
    rows(central, "Port_Binding")
        .into_iter()
        .find(|r| r["logical_port"] == "pod1.ns1")
        .expect("port binding of pod1.ns1")
}

fn uuid_of(v: &Value) -> Option<String> {
    (v[0] == "uuid").then(|| v[1].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_add_claims_restart_keeps_everything_del_releases() {
    let central = OvnCentral::start().unwrap();
    for cmd in [
        vec!["ls-add", "ls0"],
        vec!["lr-add", "lr0"],
        vec![
            "lrp-add",
            "lr0",
            "lr0-ls0",
            "0a:00:00:00:00:01",
            "10.16.0.1/16",
        ],
        vec!["lsp-add", "ls0", "ls0-lr0"],
        vec!["lsp-set-type", "ls0-lr0", "router"],
        vec!["lsp-set-addresses", "ls0-lr0", "router"],
        vec!["lsp-set-options", "ls0-lr0", "router-port=lr0-ls0"],
        vec!["lsp-add", "ls0", "pod1.ns1"],
        vec![
            "lsp-set-addresses",
            "pod1.ns1",
            "0a:00:00:00:00:05 10.16.0.5",
        ],
        vec!["lsp-add", "ls0", "pod2.ns1"],
        vec![
            "lsp-set-addresses",
            "pod2.ns1",
            "0a:00:00:00:00:06 10.16.0.6",
        ],
        // A switch of no local pod, with a flow of its own.
        vec!["ls-add", "ls9"],
        vec!["lsp-add", "ls9", "far.ns9"],
        vec![
            "acl-add",
            "ls9",
            "to-lport",
            "1001",
            "ip4.src == 192.0.2.77",
            "drop",
        ],
    ] {
        central.nbctl(&cmd).unwrap();
    }
    central.sync(Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cni.sock");
    let node = Node::start(
        config(&central, dir.path()),
        Arc::new(RecordingPlumber::default()),
    )
    .await
    .unwrap();
    serve_cni(&node, &socket);

    // No local port yet: the monitor conditions select no logical flow.
    let mut published = node.published();
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        published.wait_for(|r| r.generation > 0),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert_eq!(report.stats.logical_flows, 0);
    assert!(!rows(&central, "Logical_Flow").is_empty());

    assert_eq!(
        call(&socket, request(Command::Status, &socket, "c1")).await,
        DaemonReply::Done
    );
    let reply = call(&socket, request(Command::Add, &socket, "c1")).await;
    let DaemonReply::Result(result) = reply else {
        panic!("ADD failed: {reply:?}");
    };
    assert_eq!(
        result.interfaces[0].mac.as_deref(),
        Some("0a:00:00:00:00:05")
    );
    assert_eq!(
        result.interfaces[0].sandbox.as_deref(),
        Some("/var/run/netns/pod1")
    );
    assert_eq!(result.ips[0].address.to_string(), "10.16.0.5/16");
    assert_eq!(
        result.ips[0].gateway.map(|g| g.to_string()).as_deref(),
        Some("10.16.0.1")
    );
    assert_eq!(result.routes[0].dst.to_string(), "0.0.0.0/0");

    let chassis_uuid = rows(&central, "Chassis")[0]["_uuid"][1]
        .as_str()
        .unwrap()
        .to_string();
    // ADD answers once the port forwards; the claim and `up` follow in
    // one write.
    let c = &central;
    tokio::task::block_in_place(|| {
        eventually("pod1.ns1 claimed here and up", || {
            let pb = pod_binding(c);
            uuid_of(&pb["chassis"]).as_deref() == Some(chassis_uuid.as_str()) && pb["up"] == true
        })
    });
    // Only the local pod is claimed.
    let other = rows(&central, "Port_Binding")
        .into_iter()
        .find(|r| r["logical_port"] == "pod2.ns1")
        .unwrap();
    assert_eq!(uuid_of(&other["chassis"]), None);
    // northd reports the port up in the Northbound.
    let c = &central;
    tokio::task::block_in_place(|| {
        eventually("NB port up", || {
            c.nbctl(&["get", "Logical_Switch_Port", "pod1.ns1", "up"])
                .is_ok_and(|s| s.trim() == "true")
        })
    });
    assert_eq!(
        call(&socket, request(Command::Check, &socket, "c1")).await,
        DaemonReply::Done
    );
    // A repeated ADD answers the same attachment.
    assert!(
        matches!(call(&socket, request(Command::Add, &socket, "c1")).await, DaemonReply::Result(r) if r == result)
    );

    // The tables follow: the claimed port's flows are compiled and published.
    let mut published = node.published();
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        published.wait_for(|r| r.generation > 0 && r.stats.logical_flows > 0),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    println!(
        "published generation {}: {} logical flows, {} rules; port binding change to publish: {:?}",
        report.generation,
        report.stats.logical_flows,
        report.stats.rules,
        report.port_binding_latency
    );
    // The replica holds the local switch and router, not the far switch.
    let sb_view = node.southbound();
    let ports: Vec<ovsdb::sb::PortBinding> = sb_view.rows().unwrap();
    let names: Vec<&str> = ports.iter().map(|p| p.logical_port.as_str()).collect();
    assert!(
        names.contains(&"pod1.ns1") && names.contains(&"lr0-ls0"),
        "{names:?}"
    );
    assert!(!names.contains(&"far.ns9"), "{names:?}");
    let flows: Vec<ovsdb::sb::LogicalFlow> = sb_view.rows().unwrap();
    assert!(!flows.is_empty());
    assert!(flows.iter().all(|f| !f.r#match.contains("192.0.2.77")));
    assert!(rows(&central, "Logical_Flow").iter().any(|f| f["match"]
        .as_str()
        .is_some_and(|m| m.contains("192.0.2.77"))));

    let zones = node.ct_zones();
    assert!(zones.contains_key("pod1.ns1"));
    assert!(
        zones.keys().any(|k| k.ends_with("_snat")),
        "router zones: {zones:?}"
    );
    assert!(zones.values().all(|z| *z != 0));
    let distinct: std::collections::BTreeSet<u16> = zones.values().copied().collect();
    assert_eq!(distinct.len(), zones.len());

    // Restart: same zones, and not one Southbound write.
    let versions = |central: &OvnCentral| -> Vec<(String, Value)> {
        let mut v: Vec<(String, Value)> = ["Chassis", "Encap", "Chassis_Private", "Port_Binding"]
            .iter()
            .flat_map(|t| rows(central, t))
            .map(|r| {
                (
                    r["_uuid"][1].as_str().unwrap().to_string(),
                    r["_version"].clone(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let before = versions(&central);
    node.shutdown(Shutdown::Restart).await.unwrap();
    std::fs::remove_file(&socket).unwrap();
    let node = Node::start(
        config(&central, dir.path()),
        Arc::new(RecordingPlumber::default()),
    )
    .await
    .unwrap();
    serve_cni(&node, &socket);
    let mut published = node.published();
    tokio::time::timeout(
        Duration::from_secs(10),
        published.wait_for(|r| r.generation > 0),
    )
    .await
    .unwrap()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.ct_zones(), zones);
    assert_eq!(node.writes(), Default::default());
    assert_eq!(
        versions(&central),
        before,
        "a restart rewrote Southbound rows"
    );
    assert_eq!(
        call(&socket, request(Command::Check, &socket, "c1")).await,
        DaemonReply::Done
    );

    // DEL releases, and is idempotent.
    assert_eq!(
        call(&socket, request(Command::Del, &socket, "c1")).await,
        DaemonReply::Done
    );
    tokio::task::block_in_place(|| {
        eventually("release", || {
            let pb = pod_binding(c);
            uuid_of(&pb["chassis"]).is_none() && pb["up"] == false
        });
        // The node counts the release once its transaction's reply is in,
        // which may come after the row is visible here.
        eventually("release counted", || node.writes().releases >= 1);
    });
    assert_eq!(node.writes().releases, 1);
    assert_eq!(
        call(&socket, request(Command::Del, &socket, "c1")).await,
        DaemonReply::Done
    );
    assert!(matches!(
        call(&socket, request(Command::Check, &socket, "c1")).await,
        DaemonReply::Error(e) if e.code == fastpath_cni::ErrorCode::UnknownContainer
    ));
    assert!(
        !node.ct_zones().contains_key("pod1.ns1"),
        "the released port's zone is freed"
    );
    // A clean exit releases what is still claimed and removes the chassis.
    let reply = call(&socket, request(Command::Add, &socket, "c2")).await;
    assert!(matches!(reply, DaemonReply::Result(_)), "{reply:?}");
    assert_eq!(pod_binding(&central)["up"], true);
    node.shutdown(Shutdown::Exit).await.unwrap();
    assert!(rows(&central, "Chassis").is_empty());
    let pb = pod_binding(&central);
    assert_eq!(uuid_of(&pb["chassis"]), None);
    assert_eq!(pb["up"], false);
}
