//! The one-machine lab as a test: `deploy/lab/lab up` in a temporary run
//! directory starts NB, SB and ovn-northd, the controller over the lab's
//! manifests, the fastpath (OVN pipeline) and the node role, and adds every
//! pod through the `fastpath-cni` binary into its own network namespace.
//! The test then checks from the pods' namespaces: ping within a subnet and
//! across subnets through the fastpath, the static IP/MAC of the annotated
//! pod, the private subnet's isolation, the Service (answers from both
//! backends) and the NetworkPolicy (TCP 8080 from client admitted, from
//! another pod refused; echoes to a selected pod refused while the replies
//! of its own echoes pass), a pod removed with CNI DEL (called here as a
//! runtime calls it) stops receiving, `lab demo` passes with its stateful
//! checks, and `lab down` leaves nothing behind.
//!
//! Needs root and free 2M hugepages; skipped with a message otherwise.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Free 2M pages the lab's fastpath needs (the script checks the same).
const HUGEPAGES_NEEDED: u64 = 160;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
        .to_path_buf()
}

fn lab_script() -> PathBuf {
    repo_root().join("deploy/lab/lab")
}

/// Why the lab cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root (network namespaces, taps and hugepages need it)".into());
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let free: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if free < HUGEPAGES_NEEDED {
        return Some(format!(
            "{free} free hugepages, the lab needs {HUGEPAGES_NEEDED} (run deploy/setup.sh)"
        ));
    }
    for tool in ["ovsdb-server", "ovn-northd", "iperf3", "nc"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is not installed (run deploy/setup.sh)"));
        }
    }
    None
}

/// The directory holding `ovn-bridge`, with `fastpath`, `fastpathctl` and
/// `fastpath-cni` built beside it when missing.
fn binaries() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_ovn-bridge"))
        .parent()
        .expect("binary directory")
        .to_path_buf();
    let wanted = ["fastpath", "fastpathctl", "fastpath-cni"];
    if wanted.iter().any(|b| !dir.join(b).exists()) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let target_dir = dir.parent().expect("target directory");
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-p",
            "fastpath",
            "-p",
            "fastpathctl",
            "-p",
            "fastpath-cni",
            "--bins",
        ])
        .env("CARGO_TARGET_DIR", target_dir);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo");
        assert!(status.success(), "building the lab's binaries failed");
    }
    for b in wanted {
        assert!(dir.join(b).exists(), "{} missing", dir.join(b).display());
    }
    dir
}

/// One lab in its own run directory; `lab down` on drop.
struct Lab {
    dir: tempfile::TempDir,
    bins: PathBuf,
    netns_prefix: String,
    down: bool,
}

/// A server started in a pod's namespace (its own process group), ended
/// with the group on drop.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let pgid = self.0.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{pgid}")])
            .status();
        let _ = self.0.wait();
    }
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("fastpath-lab-")
            .tempdir()
            .expect("tempdir");
        Lab {
            dir,
            bins: binaries(),
            netns_prefix: format!("labt{}", std::process::id() % 100_000),
            down: false,
        }
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn script(&self, verb: &str) -> Output {
        Command::new("bash")
            .arg(lab_script())
            .arg(verb)
            .env("LAB_DIR", self.run_dir())
            .env("LAB_BIN_DIR", &self.bins)
            .env("LAB_NETNS_PREFIX", &self.netns_prefix)
            .env_remove("LAB_STATEFUL")
            .stdin(Stdio::null())
            .output()
            .expect("run deploy/lab/lab")
    }

    /// Runs `lab VERB`, asserting success; returns its stdout.
    fn run(&self, verb: &str) -> String {
        let out = self.script(verb);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "lab {verb} failed:\n{stdout}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        stdout
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["node", "fastpath", "controller"] {
            let path = self.run_dir().join("logs").join(format!("{name}.log"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                s.push_str(&format!("--- {name}.log (last lines)\n"));
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    fn netns(&self, ns: &str, pod: &str) -> String {
        format!("{}-{ns}-{pod}", self.netns_prefix)
    }

    /// The pod's address from its CNI ADD result.
    fn result(&self, ns: &str, pod: &str) -> Value {
        let path = self.run_dir().join(format!("pods/{ns}.{pod}.result.json"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn ip(&self, ns: &str, pod: &str) -> String {
        let r = self.result(ns, pod);
        let cidr = r["ips"][0]["address"].as_str().expect("an address");
        cidr.split('/').next().unwrap_or(cidr).to_string()
    }

    /// One ping from a pod; whether it was answered.
    fn ping_once(&self, ns: &str, pod: &str, dst: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.netns(ns, pod)])
            .args(["ping", "-n", "-q", "-c", "1", "-W", "1", dst])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A TCP server in the pod that answers every connection to `port`
    /// with `text`, until dropped.
    fn serve(&self, ns: &str, pod: &str, port: u16, text: &str) -> Server {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns(ns, pod)])
            .args(["bash", "-c"])
            .arg(format!(
                "while :; do printf '%s\\n' {text} | nc -l -N -p {port} >/dev/null 2>&1 || sleep 0.2; done"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("nc server");
        std::thread::sleep(Duration::from_millis(500));
        Server(child)
    }

    /// What a TCP connection from the pod to `addr:port` reads (trimmed),
    /// `None` when it is refused, times out or reads nothing.
    fn fetch(&self, ns: &str, pod: &str, addr: &str, port: u16) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns(ns, pod)])
            .args(["nc", "-w", "2", addr, &port.to_string()])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!text.is_empty()).then_some(text)
    }

    /// Whether a ping from the pod is answered within a few attempts.
    fn reaches(&self, ns: &str, pod: &str, dst: &str) -> bool {
        (0..5).any(|_| self.ping_once(ns, pod, dst))
    }

    /// Runs fastpath-cni VERB for a pod with the lab's network
    /// configuration and the environment a container runtime sets.
    fn cni(&self, verb: &str, ns: &str, pod: &str) -> (i32, String) {
        let conf = std::fs::read(self.run_dir().join("cni/10-fastpath.conf")).expect("netconf");
        let id = container_id(&self.run_dir(), ns, pod);
        let mut child = Command::new(self.bins.join("fastpath-cni"))
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", &id)
            .env(
                "CNI_NETNS",
                format!("/var/run/netns/{}", self.netns(ns, pod)),
            )
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.bins)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={id}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fastpath-cni");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&conf)
            .expect("netconf on stdin");
        let out = child.wait_with_output().expect("fastpath-cni");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn fastpath_ports(&self) -> Value {
        let out = Command::new(self.bins.join("fastpathctl"))
            .arg("--socket")
            .arg(self.run_dir().join("fastpath/control.sock"))
            .args(["--json", "ports"])
            .output()
            .expect("fastpathctl");
        assert!(out.status.success(), "fastpathctl ports failed");
        serde_json::from_slice(&out.stdout).expect("ports as JSON")
    }

    fn down(&mut self) -> String {
        self.down = true;
        self.run("down")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.script("down");
        }
    }
}

/// The container id the lab gives a pod: the first 64 hex digits of the
/// SHA-256 of `<run dir>/<namespace>/<pod>` (as `sha256sum` prints it).
fn container_id(run_dir: &Path, ns: &str, pod: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{}/{ns}/{pod}", run_dir.display()).as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .chars()
        .take(64)
        .collect()
}

fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

#[test]
fn lab_pods_talk_through_the_fastpath_and_down_leaves_nothing() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut lab = Lab::new();
    let up = lab.run("up");
    for pod in [
        "client", "fixed", "metered", "web-1", "web-2", "api", "secret",
    ] {
        assert!(
            up.contains(&format!("/{pod}: ")),
            "lab up names {pod}:\n{up}"
        );
    }
    assert!(
        up.contains("CNI ADD to first answered ping"),
        "the figure is printed:\n{up}"
    );

    // Every pod has a namespace with the address its CNI result names.
    for (ns, pod) in [
        ("frontend", "client"),
        ("frontend", "fixed"),
        ("backend", "web-1"),
        ("vault", "secret"),
    ] {
        assert!(netns_exists(&lab.netns(ns, pod)), "netns of {ns}/{pod}");
        let ip = lab.ip(ns, pod);
        let out = Command::new("ip")
            .args([
                "-n",
                &lab.netns(ns, pod),
                "-4",
                "-o",
                "addr",
                "show",
                "dev",
                "eth0",
            ])
            .output()
            .expect("ip addr");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("inet {ip}/")), "{ns}/{pod}: {text}");
    }

    // The static IP and MAC of the annotated pod.
    assert_eq!(lab.ip("frontend", "fixed"), "10.10.1.50");
    assert_eq!(
        lab.result("frontend", "fixed")["interfaces"][0]["mac"],
        "0a:00:00:00:01:50"
    );
    let mac = Command::new("ip")
        .args(["netns", "exec", &lab.netns("frontend", "fixed")])
        .args(["cat", "/sys/class/net/eth0/address"])
        .output()
        .expect("mac");
    assert_eq!(
        String::from_utf8_lossy(&mac.stdout).trim(),
        "0a:00:00:00:01:50"
    );
    // The backends' static addresses, and an allocation that honours the
    // backend subnet's excludeIps.
    assert_eq!(lab.ip("backend", "web-1"), "10.10.2.11");
    assert_eq!(lab.ip("backend", "web-2"), "10.10.2.12");

    // Same subnet and across subnets through the router (to backend/api,
    // which no NetworkPolicy selects).
    let fixed = lab.ip("frontend", "fixed");
    let web1 = lab.ip("backend", "web-1");
    let api = lab.ip("backend", "api");
    let client = lab.ip("frontend", "client");
    assert!(
        lab.reaches("frontend", "client", &fixed),
        "client -> fixed\n{}",
        lab.logs()
    );
    assert!(
        lab.reaches("frontend", "client", &api),
        "client -> api\n{}",
        lab.logs()
    );
    assert!(
        lab.reaches("backend", "api", &client),
        "api -> client\n{}",
        lab.logs()
    );

    // The NetworkPolicy web-from-client and ICMP: echoes to web-1 are
    // refused, replies of the echoes web-1 and web-2 open pass (through
    // the gateway's own answer and across the router).
    assert!(
        !lab.reaches("frontend", "client", &web1),
        "client pinged web-1, which admits only TCP 8080 from client"
    );
    assert!(
        lab.reaches("backend", "web-1", "10.10.2.1"),
        "web-1 -> its gateway\n{}",
        lab.logs()
    );
    assert!(
        lab.reaches("backend", "web-2", &client),
        "web-2 -> client\n{}",
        lab.logs()
    );

    // The NetworkPolicy on TCP: client opens web-1:8080, fixed does not.
    let server = lab.serve("backend", "web-1", 8080, "web-1");
    assert_eq!(
        // A few attempts: the server is an nc loop, restarting for a
        // moment between two connections.
        (0..3)
            .find_map(|_| lab.fetch("frontend", "client", &web1, 8080))
            .as_deref(),
        Some("web-1"),
        "client -> web-1:8080 (admitted)\n{}",
        lab.logs()
    );
    assert_eq!(
        lab.fetch("frontend", "fixed", &web1, 8080),
        None,
        "fixed -> web-1:8080 (refused)"
    );
    drop(server);

    // The Service 10.96.0.80:80 answers from both backends.
    let servers = [
        lab.serve("backend", "web-1", 8080, "web-1"),
        lab.serve("backend", "web-2", 8080, "web-2"),
    ];
    let answers: Vec<String> = (0..12)
        .filter_map(|_| lab.fetch("frontend", "client", "10.96.0.80", 80))
        .collect();
    assert!(
        answers.iter().any(|a| a == "web-1") && answers.iter().any(|a| a == "web-2"),
        "the Service answers from both backends: {answers:?}\n{}",
        lab.logs()
    );
    drop(servers);

    // The private subnet is isolated from the others.
    let secret = lab.ip("vault", "secret");
    assert!(secret.starts_with("10.10.3."), "vault address {secret}");
    assert!(
        !lab.reaches("frontend", "client", &secret),
        "client reached the private subnet"
    );

    // The demo's checks pass, the stateful ones included (the default).
    let demo = lab.run("demo");
    assert!(!demo.contains("FAIL"), "{demo}");
    assert!(
        !demo.lines().any(|l| l.trim_start().starts_with("not run")),
        "{demo}"
    );
    assert!(demo.contains(" 0 failed, 0 not run"), "{demo}");
    for check in [
        "Service 10.96.0.80:80 answered from both backends",
        "NetworkPolicy: frontend/client (app=client) opens",
        "NetworkPolicy: frontend/fixed (not app=client) is refused",
        "NetworkPolicy: frontend/client cannot ping backend/web-1",
        "QoS: frontend/metered received at",
    ] {
        assert!(demo.contains(check), "the demo passes {check:?}:\n{demo}");
    }

    // CNI DEL, as a runtime calls it: the port leaves the fastpath and the
    // pod stops receiving; a second DEL succeeds.
    let names = |ports: &Value| -> Vec<String> {
        ports
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(names(&lab.fastpath_ports()).contains(&"fixed.frontend".to_string()));
    let (code, out) = lab.cni("DEL", "frontend", "fixed");
    assert_eq!(code, 0, "CNI DEL: {out}");
    assert!(
        !names(&lab.fastpath_ports()).contains(&"fixed.frontend".to_string()),
        "the port is gone from the fastpath"
    );
    let start = Instant::now();
    while lab.ping_once("frontend", "client", &fixed) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the deleted pod still answers"
        );
    }
    assert!(
        !lab.reaches("frontend", "client", &fixed),
        "deleted pod answers"
    );
    // The others still talk.
    assert!(
        lab.reaches("frontend", "client", &api),
        "client -> api after the DEL"
    );
    let (code, out) = lab.cni("DEL", "frontend", "fixed");
    assert_eq!(code, 0, "second CNI DEL: {out}");

    // `up` over a running lab refuses.
    let again = lab.script("up");
    assert!(!again.status.success(), "a second up must refuse");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already runs"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // Down removes everything, and a second down has nothing to do.
    let netns: Vec<String> = ["client", "fixed", "metered"]
        .iter()
        .map(|p| lab.netns("frontend", p))
        .collect();
    let down = lab.down();
    assert!(down.contains("down:"), "{down}");
    assert!(!lab.run_dir().exists(), "run directory removed");
    for n in &netns {
        assert!(!netns_exists(n), "netns {n} removed");
    }
    let second = lab.run("down");
    assert!(second.contains("no lab"), "{second}");
}
