//! Drives the `fastpath-cni` binary exactly as a container runtime does
//! (environment + configuration on stdin, result or error on stdout, exit
//! code) against an in-test node daemon built from the library's `serve`
//! and a `Handler` that keeps ports in a map and counts the ones it creates.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fastpath_cni::{
    bind, serve, Attachment, AttachmentId, CniArgs, CniError, CniResult, ErrorCode, Handler,
    Interface, InterfaceType, IpConfig, PluginConfig, Route,
};
use serde_json::{json, Value};

/// A node daemon stand-in: one port per (container id, ifname).
#[derive(Default)]
struct PortTable {
    ports: Mutex<HashMap<AttachmentId, CniResult>>,
    created: AtomicUsize,
    released: AtomicUsize,
    unavailable: AtomicBool,
    last_args: Mutex<Option<CniArgs>>,
}

impl PortTable {
    fn port_count(&self) -> usize {
        self.ports.lock().unwrap().len()
    }
}

impl Handler for PortTable {
    fn add(&self, attachment: &Attachment, config: &PluginConfig) -> Result<CniResult, CniError> {
        *self.last_args.lock().unwrap() = Some(attachment.args.clone());
        let mut ports = self.ports.lock().unwrap();
        if let Some(existing) = ports.get(&attachment.id()) {
            return Ok(existing.clone());
        }
        let n = self.created.fetch_add(1, Ordering::SeqCst) + 1;
        let host = u8::try_from(n + 1).unwrap();
        let socket_path = match config.interface_type {
            InterfaceType::VhostUser => {
                let dir = attachment.vhost_socket_dir.as_ref().ok_or_else(|| {
                    CniError::new(ErrorCode::InvalidNetworkConfig, "no vhost-user socket dir")
                })?;
                let name = config
                    .vhost_user
                    .as_ref()
                    .and_then(|v| v.socket_name.clone())
                    .unwrap_or_else(|| attachment.ifname.clone());
                Some(dir.join(name).display().to_string())
            }
            _ => None,
        };
        let gateway = "10.16.0.1".parse().unwrap();
        let mut result = CniResult::new(&config.cni_version);
        result.interfaces.push(Interface {
            name: attachment.ifname.clone(),
            mac: Some(format!("00:00:00:00:00:{host:02x}")),
            mtu: Some(config.mtu.unwrap_or(1400)),
            sandbox: attachment.netns.clone(),
            socket_path,
            pci_id: None,
        });
        result.ips.push(IpConfig {
            version: None,
            address: format!("10.16.0.{host}/16").parse().unwrap(),
            gateway: Some(gateway),
            interface: Some(0),
        });
        result
            .routes
            .push(Route::via("0.0.0.0/0".parse().unwrap(), Some(gateway)));
        result.dns = config.dns.clone();
        ports.insert(attachment.id(), result.clone());
        Ok(result)
    }

    fn del(&self, attachment: &Attachment, _config: &PluginConfig) -> Result<(), CniError> {
        if self
            .ports
            .lock()
            .unwrap()
            .remove(&attachment.id())
            .is_some()
        {
            self.released.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn check(&self, attachment: &Attachment, config: &PluginConfig) -> Result<(), CniError> {
        let ports = self.ports.lock().unwrap();
        let port = ports.get(&attachment.id()).ok_or_else(|| {
            CniError::new(
                ErrorCode::UnknownContainer,
                format!("no attachment for container {}", attachment.container_id),
            )
        })?;
        let prev = config.prev_result.as_ref().ok_or_else(|| {
            CniError::new(ErrorCode::InvalidNetworkConfig, "CHECK without prevResult")
        })?;
        if prev
            .ips
            .iter()
            .map(|ip| ip.address)
            .ne(port.ips.iter().map(|ip| ip.address))
        {
            return Err(CniError::new(
                ErrorCode::Other(101),
                "addresses differ from prevResult",
            ));
        }
        Ok(())
    }

    fn status(&self, _config: &PluginConfig) -> Result<(), CniError> {
        if self.unavailable.load(Ordering::SeqCst) {
            Err(CniError::new(
                ErrorCode::PluginNotAvailable,
                "fastpath not connected",
            ))
        } else {
            Ok(())
        }
    }

    fn gc(&self, config: &PluginConfig) -> Result<(), CniError> {
        let mut ports = self.ports.lock().unwrap();
        let before = ports.len();
        ports.retain(|id, _| config.valid_attachments.contains(id));
        self.released
            .fetch_add(before - ports.len(), Ordering::SeqCst);
        Ok(())
    }
}

struct Daemon {
    dir: tempfile::TempDir,
    socket: PathBuf,
    table: Arc<PortTable>,
}

fn start_daemon() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/cni.sock");
    let listener = bind(&socket).unwrap();
    let table = Arc::new(PortTable::default());
    let served = Arc::clone(&table);
    std::thread::spawn(move || serve(listener, served));
    Daemon { dir, socket, table }
}

fn conf(socket: &Path, extra: Value) -> String {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": "ovn",
        "type": "fastpath-cni",
        "socketPath": socket,
        "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]}
    });
    if let (Value::Object(base), Value::Object(more)) = (&mut c, extra) {
        base.extend(more);
    }
    c.to_string()
}

struct Run {
    code: i32,
    stdout: Option<Value>,
    stderr: String,
}

fn plugin(vars: &[(&str, &str)], stdin: &str) -> Run {
    let mut child = Process::new(env!("CARGO_BIN_EXE_fastpath-cni"))
        .env_clear()
        .env("CNI_PATH", "/opt/cni/bin")
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The plugin may exit before reading stdin (e.g. on a bad environment);
    // a runtime ignores the broken pipe, and so does this one.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    Run {
        code: out.status.code().unwrap(),
        stdout: (!text.trim().is_empty()).then(|| serde_json::from_str(&text).unwrap()),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn attach_env<'a>(command: &'a str, container: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=0f1e-uid",
        ),
    ]
}

/// Asserts the spec error shape and returns the code.
fn error_code(run: &Run) -> u64 {
    assert_ne!(run.code, 0, "errors exit non-zero");
    let doc = run.stdout.as_ref().expect("error document on stdout");
    assert!(doc["cniVersion"].is_string(), "{doc}");
    assert!(doc["msg"].as_str().is_some_and(|m| !m.is_empty()), "{doc}");
    doc["code"].as_u64().unwrap()
}

#[test]
fn version_is_answered_without_a_daemon() {
    let run = plugin(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(run.code, 0);
    let doc = run.stdout.unwrap();
    assert_eq!(doc["cniVersion"], "1.0.0");
    let versions: Vec<&str> = doc["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        versions.contains(&"1.1.0") && versions.contains(&"0.4.0"),
        "{versions:?}"
    );

    let bare = plugin(&[("CNI_COMMAND", "VERSION")], "");
    assert_eq!(bare.stdout.unwrap()["cniVersion"], "1.1.0");
}

#[test]
fn add_kernel_interface_returns_a_spec_result() {
    let d = start_daemon();
    let run = plugin(
        &attach_env("ADD", "c1", "/var/run/netns/p1"),
        &conf(&d.socket, json!({"mtu": 1450})),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = run.stdout.unwrap();
    assert_eq!(r["cniVersion"], "1.1.0");
    assert_eq!(r["interfaces"][0]["name"], "eth0");
    assert_eq!(r["interfaces"][0]["sandbox"], "/var/run/netns/p1");
    assert_eq!(r["interfaces"][0]["mtu"], 1450);
    assert_eq!(r["interfaces"][0]["mac"], "00:00:00:00:00:02");
    assert!(r["interfaces"][0].get("socketPath").is_none());
    assert_eq!(r["ips"][0]["address"], "10.16.0.2/16");
    assert_eq!(r["ips"][0]["gateway"], "10.16.0.1");
    assert_eq!(r["ips"][0]["interface"], 0);
    assert!(r["ips"][0].get("version").is_none());
    assert_eq!(
        r["routes"][0],
        json!({"dst": "0.0.0.0/0", "gw": "10.16.0.1"})
    );
    assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
    assert_eq!(d.table.created.load(Ordering::SeqCst), 1);

    let args = d.table.last_args.lock().unwrap().clone().unwrap();
    assert_eq!(args.pod_key().as_deref(), Some("default/web-0"));
    assert_eq!(args.pod_uid.as_deref(), Some("0f1e-uid"));
    assert_eq!(args.pod_infra_container_id.as_deref(), Some("c1"));
}

#[test]
fn second_add_for_the_same_container_reuses_the_port() {
    let d = start_daemon();
    let config = conf(&d.socket, json!({}));
    let first = plugin(&attach_env("ADD", "c1", "/var/run/netns/p1"), &config);
    let second = plugin(&attach_env("ADD", "c1", "/var/run/netns/p1"), &config);
    assert_eq!(first.code, 0);
    assert_eq!(second.code, 0);
    assert_eq!(first.stdout, second.stdout);
    assert_eq!(d.table.created.load(Ordering::SeqCst), 1);
    assert_eq!(d.table.port_count(), 1);

    let other = plugin(&attach_env("ADD", "c2", "/var/run/netns/p2"), &config);
    assert_eq!(other.stdout.unwrap()["ips"][0]["address"], "10.16.0.3/16");
    assert_eq!(d.table.created.load(Ordering::SeqCst), 2);
}

#[test]
fn del_is_idempotent_and_tolerates_a_missing_namespace() {
    let d = start_daemon();
    let config = conf(&d.socket, json!({}));
    assert_eq!(
        plugin(&attach_env("ADD", "c1", "/var/run/netns/p1"), &config).code,
        0
    );
    assert_eq!(d.table.port_count(), 1);

    let gone_ns = d.dir.path().join("no-such-netns").display().to_string();
    let del = plugin(&attach_env("DEL", "c1", &gone_ns), &config);
    assert_eq!(del.code, 0, "{}", del.stderr);
    assert!(del.stdout.is_none());
    assert_eq!(d.table.port_count(), 0);

    let again = plugin(&attach_env("DEL", "c1", &gone_ns), &config);
    assert_eq!(again.code, 0);
    let no_netns: Vec<_> = attach_env("DEL", "c1", "")
        .into_iter()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .collect();
    assert_eq!(plugin(&no_netns, &config).code, 0);
    assert_eq!(d.table.released.load(Ordering::SeqCst), 1);
}

#[test]
fn check_consults_prev_result_and_knows_unknown_containers() {
    let d = start_daemon();
    let add = plugin(
        &attach_env("ADD", "c1", "/var/run/netns/p1"),
        &conf(&d.socket, json!({})),
    );
    let prev = add.stdout.unwrap();

    let ok = plugin(
        &attach_env("CHECK", "c1", "/var/run/netns/p1"),
        &conf(&d.socket, json!({"prevResult": prev})),
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(ok.stdout.is_none());

    let mut wrong = prev.clone();
    wrong["ips"][0]["address"] = json!("10.16.9.9/16");
    let drifted = plugin(
        &attach_env("CHECK", "c1", "/var/run/netns/p1"),
        &conf(&d.socket, json!({"prevResult": wrong})),
    );
    assert_eq!(error_code(&drifted), 101);

    let no_prev = plugin(
        &attach_env("CHECK", "c1", "/var/run/netns/p1"),
        &conf(&d.socket, json!({})),
    );
    assert_eq!(error_code(&no_prev), 7);

    let unknown = plugin(
        &attach_env("CHECK", "nope", "/var/run/netns/p9"),
        &conf(&d.socket, json!({"prevResult": prev})),
    );
    assert_eq!(error_code(&unknown), 3);
    assert!(unknown.stdout.unwrap()["msg"]
        .as_str()
        .unwrap()
        .contains("nope"));
}

#[test]
fn vhost_user_attachment_returns_the_socket_in_the_pod_volume() {
    let d = start_daemon();
    let kubelet = d.dir.path().join("kubelet");
    let config = conf(
        &d.socket,
        json!({
            "kubeletDir": kubelet,
            "vhost_user_socket_volume_name": "vhostuser-sockets",
            "vhost_user_socket_name": "sock"
        }),
    );
    let run = plugin(&attach_env("ADD", "c1", "/var/run/netns/p1"), &config);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let r = run.stdout.unwrap();
    let expected =
        kubelet.join("pods/0f1e-uid/volumes/kubernetes.io~empty-dir/vhostuser-sockets/sock");
    assert_eq!(
        r["interfaces"][0]["socketPath"],
        expected.display().to_string()
    );
    assert_eq!(r["ips"][0]["address"], "10.16.0.2/16");
    assert_eq!(r["ips"][0]["gateway"], "10.16.0.1");
}

#[test]
fn chained_add_keeps_the_previous_result() {
    let d = start_daemon();
    let prev = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/p1"}],
        "ips": [{"address": "10.244.0.7/24", "interface": 0}]
    });
    let mut vars = attach_env("ADD", "c1", "/var/run/netns/p1");
    vars[3] = ("CNI_IFNAME", "net1");
    let run = plugin(&vars, &conf(&d.socket, json!({"prevResult": prev})));
    let r = run.stdout.unwrap();
    assert_eq!(r["interfaces"].as_array().unwrap().len(), 2);
    assert_eq!(r["interfaces"][1]["name"], "net1");
    assert_eq!(r["ips"][0]["address"], "10.244.0.7/24");
    assert_eq!(r["ips"][1]["interface"], 1);
}

#[test]
fn old_spec_versions_get_old_result_shape() {
    let d = start_daemon();
    let run = plugin(
        &attach_env("ADD", "c1", "/var/run/netns/p1"),
        &conf(&d.socket, json!({"cniVersion": "0.3.1"})),
    );
    let r = run.stdout.unwrap();
    assert_eq!(r["cniVersion"], "0.3.1");
    assert_eq!(r["ips"][0]["version"], "4");
}

#[test]
fn status_reports_the_daemon() {
    let d = start_daemon();
    let config = conf(&d.socket, json!({}));
    let up = plugin(&[("CNI_COMMAND", "STATUS")], &config);
    assert_eq!(up.code, 0);
    assert!(up.stdout.is_none());

    d.table.unavailable.store(true, Ordering::SeqCst);
    assert_eq!(
        error_code(&plugin(&[("CNI_COMMAND", "STATUS")], &config)),
        50
    );

    let missing = d.dir.path().join("absent.sock");
    let down = plugin(&[("CNI_COMMAND", "STATUS")], &conf(&missing, json!({})));
    assert_eq!(error_code(&down), 50);
    assert!(down.stdout.unwrap()["msg"]
        .as_str()
        .unwrap()
        .contains("absent.sock"));

    let old = plugin(
        &[("CNI_COMMAND", "STATUS")],
        &conf(&d.socket, json!({"cniVersion": "1.0.0"})),
    );
    assert_eq!(error_code(&old), 1);
}

#[test]
fn gc_releases_attachments_not_listed() {
    let d = start_daemon();
    let config = conf(&d.socket, json!({}));
    plugin(&attach_env("ADD", "c1", "/var/run/netns/p1"), &config);
    plugin(&attach_env("ADD", "c2", "/var/run/netns/p2"), &config);
    assert_eq!(d.table.port_count(), 2);

    let gc = plugin(
        &[("CNI_COMMAND", "GC")],
        &conf(
            &d.socket,
            json!({"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}),
        ),
    );
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert!(gc.stdout.is_none());
    let ports = d.table.ports.lock().unwrap();
    assert_eq!(ports.len(), 1);
    assert!(ports.contains_key(&AttachmentId {
        container_id: "c1".into(),
        ifname: "eth0".into()
    }));
}

#[test]
fn unreachable_daemon_means_try_again_except_for_del() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cni.sock");
    let config = conf(&socket, json!({}));
    let add = plugin(&attach_env("ADD", "c1", "/var/run/netns/p1"), &config);
    assert_eq!(error_code(&add), 11);
    assert!(add.stdout.unwrap()["msg"]
        .as_str()
        .unwrap()
        .contains("cni.sock"));

    let del = plugin(&attach_env("DEL", "c1", "/var/run/netns/p1"), &config);
    assert_eq!(del.code, 0);
    assert!(del.stdout.is_none());
    assert!(del.stderr.contains("not reachable"), "{}", del.stderr);

    let gc = plugin(&[("CNI_COMMAND", "GC")], &config);
    assert_eq!(error_code(&gc), 11);
}

#[test]
fn a_daemon_that_does_not_answer_makes_del_retry() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cni.sock");
    // Bound but never accepting: the connect succeeds, no answer comes.
    let _silent = UnixListener::bind(&socket).unwrap();
    let config = conf(&socket, json!({"daemonTimeoutSeconds": 1}));
    let del = plugin(&attach_env("DEL", "c1", "/var/run/netns/p1"), &config);
    assert_eq!(error_code(&del), 11);
}

#[test]
fn bad_invocations_get_spec_error_codes() {
    let d = start_daemon();
    let good = conf(&d.socket, json!({}));

    assert_eq!(error_code(&plugin(&[], &good)), 4);
    let unknown_verb = plugin(&[("CNI_COMMAND", "FROB")], &good);
    assert_eq!(error_code(&unknown_verb), 4);
    assert!(unknown_verb.stdout.unwrap()["msg"]
        .as_str()
        .unwrap()
        .contains("FROB"));

    let missing = plugin(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1")], &good);
    assert_eq!(error_code(&missing), 4);
    let msg = missing.stdout.unwrap()["msg"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("CNI_NETNS") && msg.contains("CNI_IFNAME"),
        "{msg}"
    );
    assert!(!msg.contains("CNI_CONTAINERID"), "{msg}");

    let add = attach_env("ADD", "c1", "/var/run/netns/p1");
    assert_eq!(error_code(&plugin(&add, "this is not json")), 6);
    assert_eq!(error_code(&plugin(&add, "")), 6);
    let future = plugin(&add, &conf(&d.socket, json!({"cniVersion": "2.0.0"})));
    assert_eq!(error_code(&future), 1);
    assert!(future.stdout.unwrap()["msg"]
        .as_str()
        .unwrap()
        .contains("2.0.0"));
    let no_name: Value = {
        let mut v: Value = serde_json::from_str(&good).unwrap();
        v.as_object_mut().unwrap().remove("name");
        v
    };
    assert_eq!(error_code(&plugin(&add, &no_name.to_string())), 7);
    let odd = plugin(&add, &conf(&d.socket, json!({"interfaceType": "sriov"})));
    assert_eq!(error_code(&odd), 2);
    let msg = odd.stdout.unwrap()["msg"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("interfaceType") && msg.contains("sriov"),
        "{msg}"
    );

    let mut bad_args = add.clone();
    bad_args[4] = ("CNI_ARGS", "K8S_POD_NAME");
    let bad = plugin(&bad_args, &good);
    assert_eq!(error_code(&bad), 4);
    assert!(bad.stdout.unwrap()["msg"]
        .as_str()
        .unwrap()
        .contains("CNI_ARGS"));

    let mut long_if = add.clone();
    long_if[3] = ("CNI_IFNAME", "this-name-is-too-long");
    assert_eq!(error_code(&plugin(&long_if, &good)), 4);

    // None of these reached the daemon's port table.
    assert_eq!(d.table.created.load(Ordering::SeqCst), 0);
}

#[test]
fn daemon_refuses_a_malformed_request_and_keeps_serving() {
    let d = start_daemon();
    let mut stream = UnixStream::connect(&d.socket).unwrap();
    stream
        .write_all(b"{\"command\": \"ADD\", \"garbage\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    let reply: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["outcome"], "error");
    assert_eq!(reply["body"]["code"], 6);

    let run = plugin(
        &attach_env("ADD", "c1", "/var/run/netns/p1"),
        &conf(&d.socket, json!({})),
    );
    assert_eq!(run.code, 0);
    assert_eq!(d.table.created.load(Ordering::SeqCst), 1);
}
