//! The node's Southbound writes against a real OVN central: a pod port goes
//! `up` once its fastpath port exists and its tables are published; the
//! chassis acknowledges `nb_cfg` so `ovn-nbctl --wait=hv` returns; learned
//! MAC bindings become MAC_Binding rows, updated in place when the MAC
//! changes and never duplicated.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastpath_api::LearnedBinding;
use fastpath_cni::{Attachment, CniArgs, Command, DaemonReply, DaemonRequest, PluginConfig};
use ovn_bridge::node::daemon::{fdb_ops, mac_binding_ops};
use ovn_bridge::node::{ChassisConfig, Node, NodeConfig, PortPlumber, RecordingPlumber};
use ovsdb::testing::{server_rows, OvnCentral};
use ovsdb::{Client, ClientOptions};
use serde_json::Value;

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
    server_rows(&central.sb.remote, "OVN_Southbound", table).unwrap()
}

fn request(command: Command, socket: &Path) -> DaemonRequest {
    let doc = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "ovn",
        "type": "fastpath-cni",
        "socketPath": socket,
        "interfaceType": "kernel",
    });
    DaemonRequest {
        command,
        attachment: Some(Attachment {
            container_id: "c0ffee".into(),
            ifname: "eth0".into(),
            netns: Some("/var/run/netns/pod1".into()),
            args: CniArgs::parse("K8S_POD_NAME=pod1;K8S_POD_NAMESPACE=ns1").unwrap(),
            vhost_socket_dir: None,
        }),
        config: PluginConfig::parse(doc.to_string().as_bytes()).unwrap(),
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

fn topology(central: &OvnCentral) {
    for cmd in [
        vec!["ls-add", "ls0"],
        vec!["lsp-add", "ls0", "pod1.ns1"],
        vec![
            "lsp-set-addresses",
            "pod1.ns1",
            "0a:00:00:00:00:05 10.16.0.5",
        ],
    ] {
        central.nbctl(&cmd).unwrap();
    }
    central.sync(Duration::from_secs(10)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_goes_up_and_wait_hv_returns() {
    let central = OvnCentral::start().unwrap();
    topology(&central);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cni.sock");
    let plumber = Arc::new(RecordingPlumber::default());
    let node = Node::start(config(&central, dir.path()), plumber.clone())
        .await
        .unwrap();
    let listener = fastpath_cni::bind(&socket).unwrap();
    let handler = Arc::new(node.cni_handler());
    std::thread::spawn(move || fastpath_cni::serve(listener, handler));

    // The tables before the pod.
    let mut published = node.published();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        published.wait_for(|p| p.generation > 0),
    )
    .await
    .expect("first tables published")
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = node.published().borrow().generation;

    let reply = call(&socket, request(Command::Add, &socket)).await;
    assert!(!matches!(reply, DaemonReply::Error(_)), "{reply:?}");
    assert!(plumber.has_port("pod1.ns1").unwrap());
    let pb = rows(&central, "Port_Binding")
        .into_iter()
        .find(|r| r["logical_port"] == "pod1.ns1")
        .unwrap();
    assert_eq!(pb["up"], Value::Bool(true), "{pb}");
    // The port is up only with tables that map it: one generation, which
    // bound it before its claim came back. The claim and the `up` write
    // compile to the same tables, which are not published again.
    assert_eq!(node.published().borrow().generation, before + 1);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(node.published().borrow().generation, before + 1);

    // --wait=hv returns: the chassis copies nb_cfg after publishing.
    let central2 = Arc::new(central);
    let c = central2.clone();
    let waited =
        tokio::task::spawn_blocking(move || c.nbctl(&["--timeout=20", "--wait=hv", "sync"]))
            .await
            .unwrap();
    assert!(waited.is_ok(), "{waited:?}");
    let global = rows(&central2, "SB_Global");
    let private = rows(&central2, "Chassis_Private");
    let nb_cfg = global[0]["nb_cfg"].as_i64().unwrap();
    assert!(nb_cfg >= 1, "{global:?}");
    assert!(
        private[0]["nb_cfg"].as_i64().unwrap() >= nb_cfg,
        "{private:?}"
    );
    let reply = call(&socket, request(Command::Del, &socket)).await;
    assert!(!matches!(reply, DaemonReply::Error(_)), "{reply:?}");
    assert!(!plumber.has_port("pod1.ns1").unwrap());
}

/// A node in `dir` with pod1.ns1 added through its CNI server (so it
/// follows ls0: its monitor conditions select ls0's rows), and a
/// Southbound client to write with.
async fn node_with_pod(central: &OvnCentral, dir: &Path) -> (Node, Client) {
    let socket = dir.join("cni.sock");
    let node = Node::start(config(central, dir), Arc::new(RecordingPlumber::default()))
        .await
        .unwrap();
    let listener = fastpath_cni::bind(&socket).unwrap();
    let handler = Arc::new(node.cni_handler());
    std::thread::spawn(move || fastpath_cni::serve(listener, handler));
    let reply = call(&socket, request(Command::Add, &socket)).await;
    assert!(!matches!(reply, DaemonReply::Error(_)), "{reply:?}");
    let client = Client::connect(
        std::slice::from_ref(&central.sb.remote),
        "OVN_Southbound",
        ClientOptions::default(),
    )
    .await
    .unwrap();
    (node, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_bindings_become_mac_binding_rows_without_duplicates() {
    let central = OvnCentral::start().unwrap();
    topology(&central);
    let dir = tempfile::tempdir().unwrap();
    let (node, client) = node_with_pod(&central, dir.path()).await;
    let learned = |mac: &str| {
        vec![
            LearnedBinding {
                datapath: "ls0".into(),
                port: "pod1.ns1".into(),
                ip: "10.16.0.99".into(),
                mac: "0a:00:00:00:00:aa".into(),
            },
            // A later binding of the same address wins.
            LearnedBinding {
                datapath: "ls0".into(),
                port: "pod1.ns1".into(),
                ip: "10.16.0.99".into(),
                mac: mac.into(),
            },
            // No IP (an FDB entry) and an unknown port: skipped.
            LearnedBinding {
                datapath: "ls0".into(),
                port: "pod1.ns1".into(),
                ip: String::new(),
                mac: "0a:00:00:00:00:cc".into(),
            },
            LearnedBinding {
                datapath: "ls0".into(),
                port: "nobody".into(),
                ip: "10.16.0.98".into(),
                mac: "0a:00:00:00:00:dd".into(),
            },
        ]
    };
    let mac_rows = || -> Vec<(String, String, String)> {
        rows(&central, "MAC_Binding")
            .iter()
            .map(|r| {
                (
                    r["logical_port"].as_str().unwrap().to_string(),
                    r["ip"].as_str().unwrap().to_string(),
                    r["mac"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let settle = |want: usize, mac: &'static str| {
        let start = Instant::now();
        loop {
            let db = node.southbound();
            let n = rows_of(&db, mac);
            if n == want {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "replica lags");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    fn rows_of(db: &ovsdb::Database, mac: &str) -> usize {
        db.rows::<ovsdb::sb::MacBinding>()
            .unwrap_or_default()
            .iter()
            .filter(|r| r.mac == mac)
            .count()
    }

    let ops = mac_binding_ops(&node.southbound(), &learned("0a:00:00:00:00:bb"), 1);
    assert_eq!(ops.len(), 1, "{ops:?}");
    client.transact(ops).await.unwrap();
    assert_eq!(
        mac_rows(),
        vec![(
            "pod1.ns1".to_string(),
            "10.16.0.99".to_string(),
            "0a:00:00:00:00:bb".to_string()
        )]
    );
    settle(1, "0a:00:00:00:00:bb");
    // The same again writes nothing.
    assert!(mac_binding_ops(&node.southbound(), &learned("0a:00:00:00:00:bb"), 2).is_empty());
    // A new MAC updates the row in place.
    let ops = mac_binding_ops(&node.southbound(), &learned("0a:00:00:00:00:ee"), 3);
    assert_eq!(ops.len(), 1);
    client.transact(ops).await.unwrap();
    let now = mac_rows();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0].2, "0a:00:00:00:00:ee");
    settle(1, "0a:00:00:00:00:ee");
    assert!(mac_binding_ops(&node.southbound(), &learned("0a:00:00:00:00:ee"), 4).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_fdb_entries_become_fdb_rows_without_duplicates() {
    let central = OvnCentral::start().unwrap();
    topology(&central);
    central
        .nbctl(&["lsp-add", "ls0", "vm1.ns1"])
        .and_then(|_| central.nbctl(&["lsp-set-addresses", "vm1.ns1", "unknown"]))
        .unwrap();
    central.sync(Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (node, client) = node_with_pod(&central, dir.path()).await;
    // A row's tunnel key, by a column or an external_ids entry
    // (["map", [[key, value], ...]]).
    let key = |table: &str, column: &str, value: &str| -> i64 {
        rows(&central, table)
            .into_iter()
            .find(|r| {
                r[column] == value
                    || r["external_ids"][1]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|kv| kv[0] == column && kv[1] == value))
            })
            .map(|r| r["tunnel_key"].as_i64().unwrap())
            .unwrap_or_else(|| panic!("{table} {value}"))
    };
    let dp_key = key("Datapath_Binding", "name", "ls0");
    let (pod_key, vm_key) = (
        key("Port_Binding", "logical_port", "pod1.ns1"),
        key("Port_Binding", "logical_port", "vm1.ns1"),
    );
    let fdb_entry = |port: &str, mac: &str| LearnedBinding {
        datapath: "ls0".into(),
        port: port.into(),
        ip: String::new(),
        mac: mac.into(),
    };
    let fdb_rows = || -> Vec<(i64, String, i64)> {
        let mut v: Vec<(i64, String, i64)> = rows(&central, "FDB")
            .iter()
            .map(|r| {
                (
                    r["dp_key"].as_i64().unwrap(),
                    r["mac"].as_str().unwrap().to_string(),
                    r["port_key"].as_i64().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let settle = |want: &[(i64, String, i64)]| {
        let start = Instant::now();
        loop {
            let db = node.southbound();
            let mut have: Vec<(i64, String, i64)> = db
                .rows::<ovsdb::sb::Fdb>()
                .unwrap_or_default()
                .into_iter()
                .map(|r| (r.dp_key, r.mac, r.port_key))
                .collect();
            have.sort();
            if have == want {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "replica lags");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // Two MACs behind the VM's port (one written in capitals), a MAC
    // binding (has an IP: not an FDB entry) and an unknown port: two rows,
    // lowercase, with the datapath's and the port's keys.
    let learned = vec![
        fdb_entry("vm1.ns1", "0A:00:00:00:07:01"),
        fdb_entry("vm1.ns1", "0a:00:00:00:07:02"),
        LearnedBinding {
            ip: "10.16.0.99".into(),
            ..fdb_entry("pod1.ns1", "0a:00:00:00:00:aa")
        },
        fdb_entry("nobody", "0a:00:00:00:07:03"),
    ];
    // The MAC moves to another port: its row is updated in place (the
    // later of two entries for one MAC wins).
    let moved = vec![
        fdb_entry("vm1.ns1", "0a:00:00:00:07:02"),
        fdb_entry("pod1.ns1", "0a:00:00:00:07:02"),
    ];
    let cases = [
        (
            learned,
            2,
            vec![
                (dp_key, "0a:00:00:00:07:01".to_string(), vm_key),
                (dp_key, "0a:00:00:00:07:02".to_string(), vm_key),
            ],
        ),
        (
            moved,
            1,
            vec![
                (dp_key, "0a:00:00:00:07:01".to_string(), vm_key),
                (dp_key, "0a:00:00:00:07:02".to_string(), pod_key),
            ],
        ),
    ];
    for (learned, writes, want) in cases {
        let ops = fdb_ops(&node.southbound(), &learned);
        assert_eq!(ops.len(), writes, "{ops:?}");
        client.transact(ops).await.unwrap();
        assert_eq!(fdb_rows(), want);
        settle(&want);
        // The same again writes nothing.
        assert!(fdb_ops(&node.southbound(), &learned).is_empty());
    }
}
