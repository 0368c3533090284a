//! The node's CNI handler driven through the real `fastpath-cni` plugin
//! executable, as a container runtime runs it, for a vhost-user pod whose
//! logical switch port was created with ovn-nbctl.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ovn_bridge::node::{ChassisConfig, Node, NodeConfig, PortKind, RecordingPlumber, Shutdown};
use ovsdb::testing::{server_rows, OvnCentral};
use serde_json::Value;

/// The plugin executable in this test's target directory, built on demand.
fn plugin_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/<test binary>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = profile_dir.join("fastpath-cni");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let target_dir = profile_dir.parent().unwrap();
        let status = Command::new(cargo)
            .args(["build", "-p", "fastpath-cni", "--bin", "fastpath-cni"])
            .env("CARGO_TARGET_DIR", target_dir)
            .status()
            .unwrap();
        assert!(status.success(), "building fastpath-cni failed");
    }
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

/// Runs the plugin with `CNI_COMMAND=verb`; returns (exit code, stdout JSON).
fn plugin(bin: &Path, verb: &str, conf: &Value, pod_uid: &str) -> (i32, Value) {
    let mut child = Command::new(bin)
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", "ctr-vm1")
        .env("CNI_NETNS", "/var/run/netns/vm1")
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAME=vm1;K8S_POD_NAMESPACE=ns2;K8S_POD_UID={pod_uid}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout: Value = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap()
    };
    (out.status.code().unwrap_or(-1), stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_binary_add_check_status_del_for_a_vhost_user_pod() {
    let bin = plugin_binary();
    let central = OvnCentral::start().unwrap();
    for cmd in [
        vec!["ls-add", "ovn-default"],
        vec!["lr-add", "ovn-cluster"],
        vec![
            "lrp-add",
            "ovn-cluster",
            "ovn-cluster-ovn-default",
            "0a:00:00:10:00:01",
            "10.16.0.1/16",
        ],
        vec!["lsp-add", "ovn-default", "ovn-default-ovn-cluster"],
        vec!["lsp-set-type", "ovn-default-ovn-cluster", "router"],
        vec!["lsp-set-addresses", "ovn-default-ovn-cluster", "router"],
        vec![
            "lsp-set-options",
            "ovn-default-ovn-cluster",
            "router-port=ovn-cluster-ovn-default",
        ],
        vec!["lsp-add", "ovn-default", "vm1.ns2"],
        vec![
            "lsp-set-addresses",
            "vm1.ns2",
            "0a:00:00:10:00:09 10.16.0.9",
        ],
    ] {
        central.nbctl(&cmd).unwrap();
    }
    central.sync(Duration::from_secs(10)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cni.sock");
    let kubelet = dir.path().join("kubelet");
    let pod_uid = "0b7c6a3e-1f2d-4c5b-9a8e-7d6c5b4a3f21";
    let mut cfg = NodeConfig::new(
        vec![central.sb.remote.clone()],
        ChassisConfig {
            name: "node-2".into(),
            hostname: "node-2".into(),
            encap_ip: "192.0.2.12".parse().unwrap(),
            bridge_mappings: String::new(),
            cms_options: String::new(),
        },
        dir.path().join("tables"),
        dir.path().join("state"),
    );
    cfg.port_wait = Duration::from_secs(20);
    let plumber = Arc::new(RecordingPlumber::default());
    let node = Node::start(cfg, plumber.clone()).await.unwrap();
    let listener = fastpath_cni::bind(&socket).unwrap();
    let handler = Arc::new(node.cni_handler());
    std::thread::spawn(move || fastpath_cni::serve(listener, handler));

    let conf = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "ovn",
        "type": "fastpath-cni",
        "socketPath": socket,
        "interfaceType": "vhost-user",
        "vhost_user_socket_volume_name": "vhostuser-sockets",
        "vhost_user_socket_name": "vm1.sock",
        "kubeletDir": kubelet,
    });
    let run = |verb: &'static str| {
        let (bin, conf) = (bin.clone(), conf.clone());
        tokio::task::spawn_blocking(move || plugin(&bin, verb, &conf, pod_uid))
    };

    let (code, status) = run("STATUS").await.unwrap();
    assert_eq!(code, 0, "STATUS: {status}");

    let (code, result) = run("ADD").await.unwrap();
    assert_eq!(code, 0, "ADD: {result}");
    let expected_socket = kubelet
        .join("pods")
        .join(pod_uid)
        .join("volumes/kubernetes.io~empty-dir/vhostuser-sockets/vm1.sock");
    assert_eq!(result["interfaces"][0]["name"], "net1");
    assert_eq!(result["interfaces"][0]["mac"], "0a:00:00:10:00:09");
    assert_eq!(
        result["interfaces"][0]["socketPath"].as_str(),
        expected_socket.to_str()
    );
    assert_eq!(result["ips"][0]["address"], "10.16.0.9/16");
    assert_eq!(result["ips"][0]["gateway"], "10.16.0.1");
    let recorded = plumber.ports();
    let port = recorded.get("vm1.ns2").expect("fastpath port requested");
    assert_eq!(port.kind, PortKind::VhostUser);
    assert_eq!(Path::new(&port.endpoint), expected_socket);

    let pb = |central: &OvnCentral| -> Value {
        server_rows(&central.sb.remote, "OVN_Southbound", "Port_Binding")
            .unwrap()
            .into_iter()
            .find(|r| r["logical_port"] == "vm1.ns2")
            .unwrap()
    };
    assert_eq!(pb(&central)["up"], true);
    assert_eq!(pb(&central)["chassis"][0], "uuid");

    // CHECK with the ADD result as prevResult.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result.clone();
    let (bin2, c2) = (bin.clone(), check_conf);
    let (code, out) = tokio::task::spawn_blocking(move || plugin(&bin2, "CHECK", &c2, pod_uid))
        .await
        .unwrap();
    assert_eq!(code, 0, "CHECK: {out}");

    let (code, out) = run("DEL").await.unwrap();
    assert_eq!(code, 0, "DEL: {out}");
    assert!(plumber.ports().is_empty(), "the fastpath port is removed");
    let c = &central;
    tokio::task::block_in_place(|| {
        let start = std::time::Instant::now();
        while pb(c)["chassis"][0] == "uuid" {
            assert!(start.elapsed() < Duration::from_secs(20), "not released");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert_eq!(pb(&central)["up"], false);
    let (code, out) = run("DEL").await.unwrap();
    assert_eq!(code, 0, "second DEL: {out}");
    let (code, out) = run("CHECK").await.unwrap();
    assert_ne!(code, 0, "CHECK after DEL must fail: {out}");

    node.shutdown(Shutdown::Exit).await.unwrap();
}
