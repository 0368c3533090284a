//! `fastpathctl` against a real running fastpath (net_null ports patched to
//! each other, so traffic flows without a peer), and against none.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fastpathctl"))
}

/// The fastpath binary of the same build (the workspace builds every binary
/// into one directory).
fn fastpath_bin() -> PathBuf {
    let me = PathBuf::from(env!("CARGO_BIN_EXE_fastpathctl"));
    let p = me.parent().expect("bin dir").join("fastpath");
    assert!(
        p.exists(),
        "{} missing: build the whole workspace (cargo build --workspace) first",
        p.display()
    );
    p
}

struct Running(std::process::Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
    }
}

#[test]
fn reports_not_running_with_advice() {
    let out = ctl()
        .args(["--socket", "/nonexistent/fastpath.sock", "stats"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fastpath is not running") && err.contains("--socket"),
        "{err}"
    );
}

#[test]
fn commands_against_a_running_fastpath() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let child = Command::new(fastpath_bin())
        .args([
            "--lcores",
            "1",
            "--in-memory",
            "--no-pci",
            "--file-prefix",
            &format!("ctl-{}", std::process::id()),
        ])
        .args([
            "--port",
            "n0=net_null0",
            "--port",
            "n1=net_null1",
            "--worker",
            "1=n0,n1",
            "--xconnect",
            "n0,n1",
        ])
        .args(["--mbufs", "2047", "--eal-arg=-m", "--eal-arg=256"])
        .args(["--socket", &sock.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _fp = Running(child);
    let start = Instant::now();
    while !ctl()
        .args(["--socket", &sock.display().to_string(), "ping"])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "fastpath did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = |args: &[&str]| {
        let out = ctl()
            .args(["--socket", &sock.display().to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let ports = run(&["ports"]);
    assert!(ports.lines().next().unwrap().starts_with("PORT"), "{ports}");
    assert!(
        ports.contains("n0") && ports.contains("net_null"),
        "{ports}"
    );

    // net_null receives endless packets: counters move.
    std::thread::sleep(Duration::from_millis(300));
    let v: serde_json::Value = serde_json::from_str(&run(&["--json", "stats"])).unwrap();
    let rx = v["ports"]["n0"]["rx_packets"].as_u64().unwrap();
    let tx = v["ports"]["n1"]["tx_packets"].as_u64().unwrap();
    assert!(rx > 0 && tx > 0, "{v}");
    assert!(v["lcores"][0]["cycles_per_packet"].as_f64().unwrap() > 0.0);

    let lcores = run(&["lcores"]);
    assert!(
        lcores.contains("CYCLES/PKT") && lcores.contains("n0:0,n1:0"),
        "{lcores}"
    );

    let watch = run(&["--json", "stats", "--watch", "0.2", "--count", "2"]);
    let lines: Vec<serde_json::Value> = watch
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[1]["ports"][0]["rx_pps"].as_f64().unwrap() > 0.0,
        "{watch}"
    );

    // Counters accumulated over about a second; right after clearing they
    // hold only the few milliseconds since.
    std::thread::sleep(Duration::from_millis(500));
    let v: serde_json::Value = serde_json::from_str(&run(&["--json", "stats"])).unwrap();
    let before = v["ports"]["n0"]["rx_packets"].as_u64().unwrap();
    assert!(before > rx);
    run(&["clear-stats"]);
    let v: serde_json::Value = serde_json::from_str(&run(&["--json", "stats"])).unwrap();
    let after = v["ports"]["n0"]["rx_packets"].as_u64().unwrap();
    assert!(
        after < before / 2,
        "cleared counters start again from zero: {after} vs {before}"
    );
}

#[test]
fn tables_commands() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let file = dir.path().join("tables");
    let bindir = PathBuf::from(env!("CARGO_BIN_EXE_fastpathctl"))
        .parent()
        .unwrap()
        .to_path_buf();
    let out = Command::new(bindir.join("fp-tables"))
        .arg("publish")
        .arg(&file)
        .args([
            "--port",
            "0:web-1.default:3:7:local",
            "--port",
            "1:db-0.prod:4:2",
        ])
        .output()
        .expect("fp-tables (build the workspace first)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Read-only, without a fastpath.
    let out = ctl()
        .args(["tables", "--file", file.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("generation 1") && text.contains("ports"),
        "{text}"
    );

    let child = Command::new(fastpath_bin())
        .args([
            "--lcores",
            "1",
            "--in-memory",
            "--no-pci",
            "--idle-backoff",
            "--file-prefix",
            &format!("ctlt-{}", std::process::id()),
        ])
        .args([
            "--port",
            "r0=net_ring0",
            "--worker",
            "1=r0",
            "--eal-arg=-m",
            "--eal-arg=128",
            "--mbufs",
            "1023",
        ])
        .args([
            "--tables",
            file.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _fp = Running(child);
    let run = |args: &[&str]| {
        let out = ctl()
            .args(["--socket", sock.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let start = Instant::now();
    loop {
        let (ok, text, _) = run(&["tables"]);
        if ok
            && text
                .lines()
                .any(|l| l.starts_with('1') && l.trim_end().ends_with(" 1"))
        {
            assert!(
                text.contains("generation 1 in use")
                    && text.contains("SECTION")
                    && text.contains("lcore 1"),
                "{text}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "lcore 1 never took up generation 1: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, dump, err) = run(&["tables", "dump", "ports"]);
    assert!(ok, "{err}");
    assert!(
        dump.contains("web-1.default") && dump.contains("db-0.prod"),
        "{dump}"
    );
    let (ok, _, err) = run(&["tables", "dump", "nosuch"]);
    assert!(!ok && err.contains("unknown section"), "{err}");
    let (ok, json, _) = run(&["--json", "tables"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        ok && v["generation"] == 1 && v["lcores"][0][1] == 1,
        "{json}"
    );
}
