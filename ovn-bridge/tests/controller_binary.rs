//! The `ovn-bridge controller` binary as a child process, fed from a
//! manifest directory, against a real Northbound database, ovn-northd and
//! Southbound database: first sync, edits, a bad manifest, and a restart
//! that writes nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Ovn;

const SUBNETS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: alpha}
---
apiVersion: v1
kind: Namespace
metadata: {name: beta}
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: sub-alpha}
spec: {cidrBlock: 10.10.0.0/24, namespaces: [alpha]}
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: sub-beta}
spec: {cidrBlock: 10.20.0.0/24, namespaces: [beta], private: true}
"#;

const STATIC_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: fixed
  namespace: alpha
  annotations:
    ovn.kubernetes.io/ip_address: 10.10.0.50
    ovn.kubernetes.io/mac_address: "00:00:00:aa:bb:cc"
spec: {containers: [{name: c}]}
"#;

const DOOMED_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: doomed, namespace: alpha}
spec: {containers: [{name: c}]}
"#;

const QOS_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: limited
  namespace: alpha
  annotations:
    ovn.kubernetes.io/ingress_rate: "10"
    ovn.kubernetes.io/egress_rate: "20"
spec: {containers: [{name: c}]}
"#;

const BETA_PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web1
  namespace: beta
  labels: {app: web}
  annotations: {ovn.kubernetes.io/ip_address: 10.20.0.11}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: web2
  namespace: beta
  labels: {app: web}
  annotations: {ovn.kubernetes.io/ip_address: 10.20.0.12}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: beta
  labels: {app: client}
  annotations: {ovn.kubernetes.io/ip_address: 10.20.0.20}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: beta}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: beta
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.20.0.11]
- addresses: [10.20.0.12]
"#;

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-allow, namespace: beta}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: 8080}]
"#;

const BAD_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: broken, namespace: alpha}
spec: {containers: "not a list"}
"#;

const LATE_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: late, namespace: alpha}
spec: {containers: [{name: c}]}
"#;

/// Asks for the address the static pod holds.
const THIEF_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: thief
  namespace: alpha
  annotations: {ovn.kubernetes.io/ip_address: 10.10.0.50}
spec: {containers: [{name: c}]}
"#;

/// The tables the controller writes.
const TABLES: [&str; 9] = [
    "Address_Set",
    "ACL",
    "QoS",
    "Logical_Switch_Port",
    "Logical_Router_Port",
    "Load_Balancer",
    "Port_Group",
    "Logical_Switch",
    "Logical_Router",
];

/// The binary as a child process, its standard error in a file.
struct Binary {
    child: Child,
    log: PathBuf,
}

impl Binary {
    fn start(nb: &str, manifests: &Path, state: &Path, log: PathBuf) -> Self {
        Self::start_with(nb, manifests, state, log, &[])
    }

    fn start_with(nb: &str, manifests: &Path, state: &Path, log: PathBuf, extra: &[&str]) -> Self {
        let err = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ovn-bridge"))
            .args(["controller", "--nb", nb, "--manifests"])
            .arg(manifests)
            .arg("--state-file")
            .arg(state)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn ovn-bridge");
        Binary { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The "pass done" lines logged so far.
    fn passes(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("pass done:"))
            .map(str::to_string)
            .collect()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    // Write then rename, so the controller never reads half a file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// `_version` of every row of our tables, by table and `_uuid`.
fn versions(ovn: &Ovn) -> BTreeMap<(String, String), String> {
    let mut m = BTreeMap::new();
    for t in TABLES {
        let rows = ovsdb::testing::server_rows(&ovn.nb.remote, "OVN_Northbound", t).unwrap();
        for r in rows {
            let uuid = r["_uuid"][1].as_str().unwrap().to_string();
            let version = r["_version"][1].as_str().unwrap().to_string();
            m.insert((t.to_string(), uuid), version);
        }
    }
    m
}

/// Waits until two snapshots taken a second apart are equal.
fn settled(ovn: &Ovn) -> BTreeMap<(String, String), String> {
    let start = Instant::now();
    let mut last = versions(ovn);
    loop {
        std::thread::sleep(Duration::from_millis(1000));
        let now = versions(ovn);
        if now == last {
            return now;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never settled");
        last = now;
    }
}

fn uuid_of(ovn: &Ovn, table: &str, cond: &str) -> String {
    ovn.nbctl(&["--bare", "--columns=_uuid", "find", table, cond])
        .trim()
        .to_string()
}

fn field(ovn: &Ovn, table: &str, cond: &str, col: &str) -> String {
    ovn.nb
        .nbctl(&["--bare", &format!("--columns={col}"), "find", table, cond])
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn lflows(ovn: &Ovn, ls: &str) -> String {
    ovn.sb.sbctl(&["lflow-list", ls]).unwrap_or_default()
}

#[test]
fn binary_syncs_manifests_edits_and_restarts_without_writes() {
    let ovn = Ovn::start();
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("manifests");
    std::fs::create_dir(&man).unwrap();
    let state = dir.path().join("state.json");
    write(&man, "00-subnets.yaml", SUBNETS);
    write(&man, "10-fixed.yaml", STATIC_POD);
    write(&man, "11-doomed.yaml", DOOMED_POD);
    write(&man, "12-limited.yaml", QOS_POD);
    write(&man, "20-beta.yaml", BETA_PODS);
    write(&man, "30-policy.yaml", POLICY);

    let mut bin = Binary::start(&ovn.nb.remote, &man, &state, dir.path().join("run1.log"));

    // First sync: NB rows.
    ovn.eventually("the static pod's port", || {
        field(&ovn, "Logical_Switch_Port", "name=fixed.alpha", "addresses")
            == "00:00:00:aa:bb:cc 10.10.0.50"
    });
    ovn.eventually("every pod's port", || {
        ["doomed.alpha", "limited.alpha", "web1.beta", "client.beta"]
            .iter()
            .all(|p| !uuid_of(&ovn, "Logical_Switch_Port", &format!("name={p}")).is_empty())
    });
    let alpha_ports = field(&ovn, "Logical_Switch", "name=sub-alpha", "ports");
    assert_eq!(
        alpha_ports.split_whitespace().count(),
        4,
        "three pods and the router port: {alpha_ports}"
    );
    let beta_lrp = field(
        &ovn,
        "Logical_Router_Port",
        "name=ovn-cluster-sub-beta",
        "networks",
    );
    assert_eq!(beta_lrp, "10.20.0.1/24");
    let beta_acls = ovn.nbctl(&["acl-list", "sub-beta"]);
    assert!(
        beta_acls.contains("ip4.src == 10.20.0.0/24 && ip4.dst == 10.20.0.0/24")
            && beta_acls.contains("drop"),
        "private subnet isolation: {beta_acls}"
    );
    assert!(
        ovn.nbctl(&["acl-list", "sub-alpha"]).trim().is_empty(),
        "sub-alpha is not private"
    );
    let vips = field(
        &ovn,
        "Load_Balancer",
        "name=cluster-tcp-loadbalancer",
        "vips",
    );
    assert!(
        vips.contains("10.96.0.20:80=\"10.20.0.11:8080,10.20.0.12:8080\"")
            || vips.contains("10.96.0.20:80=10.20.0.11:8080,10.20.0.12:8080"),
        "{vips}"
    );
    let qos = ovn.nbctl(&[
        "--bare",
        "--columns=direction,bandwidth,match",
        "list",
        "QoS",
    ]);
    assert!(
        qos.contains("rate=10000") && qos.contains("rate=20000") && qos.contains("limited.alpha"),
        "{qos}"
    );
    let pg_acls = ovn.nbctl(&["acl-list", "web.allow.beta"]);
    assert!(pg_acls.contains("tcp.dst == 8080"), "{pg_acls}");
    let allow_set = field(
        &ovn,
        "Address_Set",
        "name=web.allow.beta.ingress.allow.IPv4.0",
        "addresses",
    );
    assert_eq!(allow_set, "10.20.0.20");
    let pg_ports = field(&ovn, "Port_Group", "name=web.allow.beta", "ports");
    assert_eq!(pg_ports.split_whitespace().count(), 2, "{pg_ports}");

    // northd compiled them into Southbound logical flows and port bindings.
    ovn.eventually("logical flows of both subnets", || {
        let a = lflows(&ovn, "sub-alpha");
        let b = lflows(&ovn, "sub-beta");
        a.contains("10.10.0.50")
            && a.contains("set_meter(10000")
            && a.contains("set_meter(20000")
            && b.contains("10.96.0.20")
            && b.contains("tcp.dst == 8080")
    });
    let pb = ovn.sbctl(&[
        "--bare",
        "--columns=mac",
        "find",
        "Port_Binding",
        "logical_port=fixed.alpha",
    ]);
    assert_eq!(pb.trim(), "00:00:00:aa:bb:cc 10.10.0.50");

    // Edits: a pod deleted, QoS changed, the policy edited.
    let before = settled(&ovn);
    let doomed = uuid_of(&ovn, "Logical_Switch_Port", "name=doomed.alpha");
    let ls_alpha = uuid_of(&ovn, "Logical_Switch", "name=sub-alpha");
    let pg = uuid_of(&ovn, "Port_Group", "name=web.allow.beta");
    let qos_in = uuid_of(&ovn, "QoS", "direction=to-lport");
    let acl_8080: Vec<String> = ovn
        .nbctl(&["--bare", "--columns=_uuid", "find", "ACL", "priority=2001"])
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(acl_8080.len(), 1);
    std::fs::remove_file(man.join("11-doomed.yaml")).unwrap();
    write(
        &man,
        "12-limited.yaml",
        &QOS_POD.replace("ingress_rate: \"10\"", "ingress_rate: \"30\""),
    );
    write(
        &man,
        "30-policy.yaml",
        &POLICY.replace("port: 8080", "port: 9090"),
    );
    ovn.eventually("the edits in NB", || {
        uuid_of(&ovn, "Logical_Switch_Port", "name=doomed.alpha").is_empty()
            && ovn
                .nbctl(&["--bare", "--columns=bandwidth", "list", "QoS"])
                .contains("rate=30000")
            && ovn
                .nbctl(&["acl-list", "web.allow.beta"])
                .contains("tcp.dst == 9090")
    });
    let after = settled(&ovn);
    let removed: Vec<&(String, String)> =
        before.keys().filter(|k| !after.contains_key(*k)).collect();
    let added: Vec<&(String, String)> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let modified: Vec<&(String, String)> = before
        .iter()
        .filter(|(k, v)| after.get(*k).is_some_and(|a| a != *v))
        .map(|(k, _)| k)
        .collect();
    let key = |t: &str, u: &str| (t.to_string(), u.to_string());
    assert_eq!(
        removed,
        vec![
            &key("ACL", &acl_8080[0]),
            &key("Logical_Switch_Port", &doomed)
        ],
        "removed rows"
    );
    assert_eq!(added.len(), 1, "one new ACL: {added:?}");
    assert_eq!(added[0].0, "ACL");
    let mut want_modified = vec![
        key("Port_Group", &pg),
        key("QoS", &qos_in),
        key("Logical_Switch", &ls_alpha),
    ];
    want_modified.sort();
    let mut got_modified: Vec<(String, String)> = modified.into_iter().cloned().collect();
    got_modified.sort();
    assert_eq!(got_modified, want_modified, "modified rows");
    ovn.eventually("the edits in logical flows", || {
        let a = lflows(&ovn, "sub-alpha");
        let b = lflows(&ovn, "sub-beta");
        a.contains("set_meter(30000")
            && !a.contains("set_meter(10000")
            && !a.contains("doomed.alpha")
            && b.contains("tcp.dst == 9090")
            && !b.contains("tcp.dst == 8080")
    });

    // A bad manifest is reported with file and field, and skipped; the rest applies.
    write(&man, "40-broken.yaml", BAD_POD);
    write(&man, "41-late.yaml", LATE_POD);
    ovn.eventually("the pod next to the bad manifest", || {
        !uuid_of(&ovn, "Logical_Switch_Port", "name=late.alpha").is_empty()
    });
    let log = bin.log();
    let line = log
        .lines()
        .find(|l| l.contains("40-broken.yaml"))
        .unwrap_or_else(|| panic!("bad manifest not reported:\n{log}"));
    assert!(
        line.contains("spec.containers") && line.contains("manifest skipped"),
        "{line}"
    );
    assert!(uuid_of(&ovn, "Logical_Switch_Port", "name=broken.alpha").is_empty());
    assert!(
        !uuid_of(&ovn, "Logical_Switch_Port", "name=fixed.alpha").is_empty(),
        "the others stay"
    );

    // A static address already held is refused with a clear log line:
    // the holder keeps it and the newcomer gets no port.
    write(&man, "42-thief.yaml", THIEF_POD);
    let start = Instant::now();
    let line = loop {
        let log = bin.log();
        if let Some(l) = log.lines().find(|l| l.contains("Pod alpha/thief")) {
            break l.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "conflict not reported:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        line.contains("AddressConflict")
            && line.contains("address 10.10.0.50 is already used by pod alpha/fixed"),
        "{line}"
    );
    assert!(uuid_of(&ovn, "Logical_Switch_Port", "name=thief.alpha").is_empty());
    assert_eq!(
        field(&ovn, "Logical_Switch_Port", "name=fixed.alpha", "addresses"),
        "00:00:00:aa:bb:cc 10.10.0.50"
    );

    // Restart: nothing is written.
    let before = settled(&ovn);
    bin.stop();
    let passes_before = bin.passes();
    assert!(!passes_before.is_empty());
    let bin2 = Binary::start(&ovn.nb.remote, &man, &state, dir.path().join("run2.log"));
    let start = Instant::now();
    while bin2.passes().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no pass after restart:\n{}",
            bin2.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = settled(&ovn);
    assert_eq!(
        before, after,
        "a restart with nothing changed writes nothing"
    );
    let passes = bin2.passes();
    assert!(
        passes
            .iter()
            .all(|l| l.contains("pass done: 0 operations written; 0 transactions")),
        "{passes:?}"
    );
}

#[test]
fn max_ops_per_txn_flag_splits_the_first_pass() {
    let ovn = Ovn::start();
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("manifests");
    std::fs::create_dir(&man).unwrap();
    write(&man, "00-subnets.yaml", SUBNETS);
    write(&man, "20-beta.yaml", BETA_PODS);
    let bin = Binary::start_with(
        &ovn.nb.remote,
        &man,
        &dir.path().join("state.json"),
        dir.path().join("run.log"),
        &["--max-ops-per-txn", "4", "--resync-period", "0"],
    );
    let start = Instant::now();
    let first = loop {
        if let Some(l) = bin.passes().first() {
            break l.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no pass:\n{}",
            bin.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // "pass done: N operations written; ... (full pass, M transaction(s))"
    let number_before = |marker: &str| -> usize {
        let head = &first[..first.find(marker).unwrap_or_else(|| panic!("{first}"))];
        let digits: String = head
            .trim_end()
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        digits.parse().unwrap_or_else(|_| panic!("{first}"))
    };
    let ops = number_before("operations written");
    let txns = number_before("transaction(s)");
    assert!(ops > 8, "{first}");
    assert!(
        txns >= ops.div_ceil(4),
        "at most 4 operations each: {first}"
    );
    assert!(
        !uuid_of(&ovn, "Logical_Switch_Port", "name=web1.beta").is_empty(),
        "the split pass is complete"
    );
}

/// The manifest directory is watched: with a check interval of ten minutes,
/// a written, a rewritten and a deleted file still reach the Northbound at
/// once (inotify), and the log says the directory is watched.
#[test]
fn manifest_changes_apply_without_waiting_for_the_check_interval() {
    let ovn = Ovn::start();
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("manifests");
    std::fs::create_dir(&man).unwrap();
    write(&man, "00-subnets.yaml", SUBNETS);
    let bin = Binary::start_with(
        &ovn.nb.remote,
        &man,
        &dir.path().join("state.json"),
        dir.path().join("run.log"),
        &["--manifest-poll-ms", "600000", "--resync-period", "0"],
    );
    ovn.eventually("the first pass", || !bin.passes().is_empty());
    assert!(bin.log().contains("watching"), "{}", bin.log());

    // Written in place (the file is complete once closed).
    std::fs::write(man.join("10-fixed.yaml"), STATIC_POD).unwrap();
    ovn.eventually("the static pod's port", || {
        field(&ovn, "Logical_Switch_Port", "name=fixed.alpha", "addresses")
            == "00:00:00:aa:bb:cc 10.10.0.50"
    });
    // Replaced through a rename.
    write(
        &man,
        "10-fixed.yaml",
        &STATIC_POD.replace("00:00:00:aa:bb:cc", "00:00:00:aa:bb:dd"),
    );
    ovn.eventually("the new MAC", || {
        field(&ovn, "Logical_Switch_Port", "name=fixed.alpha", "addresses")
            == "00:00:00:aa:bb:dd 10.10.0.50"
    });
    // Deleted.
    std::fs::remove_file(man.join("10-fixed.yaml")).unwrap();
    ovn.eventually("the port gone", || {
        uuid_of(&ovn, "Logical_Switch_Port", "name=fixed.alpha").is_empty()
    });
}
