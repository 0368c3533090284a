//! Kernel-side helpers of the tests that send real traffic through a
//! running fastpath: commands, network namespaces, links and servers that
//! are removed on drop, and waiting until the fastpath forwards with the
//! tables a compiler published.

use super::Fastpath;
use fastpath_api::{LcoreInfo, Request, TablesInfo};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a command to completion.
pub fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    let out = run("ip", args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `args` in namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Namespaces, links and helper processes of a test, removed on drop
/// (processes first: each runs in its own session, so its whole process
/// group is ended).
#[derive(Default)]
pub struct Net {
    pub ns: Vec<String>,
    pub links: Vec<String>,
    pub children: Vec<Child>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).status();
        }
    }
}

impl Net {
    /// Adds a namespace (removed on drop) with IPv6 off, so that no
    /// router solicitation or DAD traffic mixes with the test's.
    pub fn add_ns(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.ns.push(name.to_string());
        for conf in ["all", "default"] {
            let key = format!("net.ipv6.conf.{conf}.disable_ipv6=1");
            let out = in_ns(name, &["sysctl", "-qw", &key]);
            assert!(out.status.success(), "sysctl in {name}");
        }
    }

    /// Runs `script` under `sh -c` in namespace `ns`, in its own session,
    /// until the test ends; returns its pid.
    pub fn spawn(&mut self, ns: &str, script: &str) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "setsid", "sh", "-c", script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in namespace");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Ends the process `pid` started by [`Net::spawn`].
    pub fn stop(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(i);
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{pid}")])
                .status();
            let _ = c.wait();
        }
    }

    /// A TCP server on `port` in namespace `ns` that answers each
    /// connection with `name` and closes it.
    pub fn serve(&mut self, ns: &str, port: u16, name: &str) {
        let script = format!("while :; do echo {name} | nc -N -l {port} >/dev/null; done");
        self.spawn(ns, &script);
    }
}

/// Waits until every lcore of `fp` uses a generation above `above`;
/// returns it.
pub fn wait_generation(fp: &Fastpath, above: u64) -> u64 {
    let start = Instant::now();
    loop {
        let t: TablesInfo = fp.client().call_as(&Request::Tables).expect("tables");
        let lcores: Vec<LcoreInfo> = fp.client().call_as(&Request::Lcores).expect("lcores");
        if t.generation > above && lcores.iter().all(|l| l.table_generation == t.generation) {
            return t.generation;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no generation above {above}: {t:?}\n{}",
            fp.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the published generation stops changing (northd and the
/// compiler settled), then until the fastpath uses it.
pub fn settle(fp: &Fastpath) -> u64 {
    let mut last = 0;
    let mut stable_since = Instant::now();
    let start = Instant::now();
    loop {
        let t: TablesInfo = fp.client().call_as(&Request::Tables).expect("tables");
        if t.published_generation != last {
            last = t.published_generation;
            stable_since = Instant::now();
        }
        if last > 0 && stable_since.elapsed() > Duration::from_millis(700) {
            return wait_generation(fp, last.saturating_sub(1));
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "tables never settled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `ovn-bridge compile --follow`, stopped on drop.
pub struct Compiler(Child);

impl Drop for Compiler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ovn-bridge compile --follow` for `chassis` on the Southbound at
/// `sb`, publishing into `tables` with logical ports mapped to fastpath
/// ports as `ports` says; its log goes to `log`.
pub fn follow(
    sb: &str,
    chassis: &str,
    ports: &[(&str, u16)],
    tables: &std::path::Path,
    log: std::path::PathBuf,
) -> Compiler {
    let mut cmd = Command::new(super::ovn_bridge_bin());
    cmd.args(["compile", "--sb", sb, "--chassis", chassis])
        .arg("--tables")
        .arg(tables);
    for (p, id) in ports {
        cmd.args(["--port", &format!("{p}={id}")]);
    }
    let log = std::fs::File::create(log).expect("log");
    Compiler(
        cmd.stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ovn-bridge compile"),
    )
}

/// The real NB + SB + ovn-northd, and the compiler following it for
/// chassis `hv1` once [`Central::follow`] is called.
pub struct Central {
    pub ovn: ovsdb::testing::OvnCentral,
    pub compile: Option<Compiler>,
}

impl Central {
    /// Starts NB, SB and ovn-northd.
    pub fn start() -> Central {
        Central {
            ovn: ovsdb::testing::OvnCentral::start().expect("NB, SB and ovn-northd"),
            compile: None,
        }
    }

    /// `ovn-nbctl ARGS`, which must succeed.
    pub fn nb(&self, args: &[&str]) {
        self.ovn
            .nbctl(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }

    /// Waits until northd has caught up.
    pub fn sync(&self) {
        self.ovn
            .sync(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("northd never caught up: {e}"));
    }

    /// Compiles for chassis `hv1` into `tables` from now on.
    pub fn follow(
        &mut self,
        ports: &[(&str, u16)],
        tables: &std::path::Path,
        log: std::path::PathBuf,
    ) {
        self.compile = Some(follow(&self.ovn.sb.remote, "hv1", ports, tables, log));
    }
}
