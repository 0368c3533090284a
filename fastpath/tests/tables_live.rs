//! A writer process and a fastpath process sharing a table file: the
//! fastpath picks up the file's generation at start, every worker lcore
//! switches to each new generation, a writer killed in the middle of a write
//! leaves it on the old generation, and a restarted fastpath forwards with
//! the last published tables at once.

mod common;

use common::Fastpath;
use fastpath_api::{Request, TablesInfo};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The `fp-tables` tool of the same build.
fn fp_tables() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_fastpath"))
        .parent()
        .unwrap()
        .join("fp-tables");
    assert!(
        p.exists(),
        "{} missing: build the whole workspace (cargo build --workspace --bins) first",
        p.display()
    );
    p
}

fn publish(file: &Path, ports: &[&str]) -> u64 {
    let mut cmd = Command::new(fp_tables());
    cmd.arg("publish").arg(file);
    for p in ports {
        cmd.args(["--port", p]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(2)
        .and_then(|g| g.parse().ok())
        .expect("generation in output")
}

fn start(dir: tempfile::TempDir, file: &Path) -> Fastpath {
    // Two workers (lcore 0 is the main lcore, lcore 1 a worker lcore), each
    // polling a ring port, so "every lcore" means more than one.
    Fastpath::start_in(
        dir,
        &[
            "--lcores".into(),
            "0,1".into(),
            "--port".into(),
            "r0=net_ring0".into(),
            "--port".into(),
            "r1=net_ring1".into(),
            "--worker".into(),
            "0=r0".into(),
            "--worker".into(),
            "1=r1".into(),
            "--tables".into(),
            file.display().to_string(),
        ],
    )
}

fn tables(fp: &Fastpath) -> TablesInfo {
    fp.client().call_as(&Request::Tables).unwrap()
}

fn wait_all_lcores(fp: &Fastpath, generation: u64) -> TablesInfo {
    let start = Instant::now();
    loop {
        let t = tables(fp);
        if t.lcores.len() == 2 && t.lcores.iter().all(|(_, g)| *g == generation) {
            return t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "lcores never reached generation {generation}: {t:?}\n{}",
            fp.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn generations_reach_every_lcore_and_survive_writer_and_fastpath_restarts() {
    let dir = tempfile::Builder::new()
        .prefix("fp-test-")
        .tempdir()
        .unwrap();
    let file = dir.path().join("tables");
    // Published before the fastpath exists: it must forward with it at once.
    let g1 = publish(&file, &["0:pod-a.ns:1:1:local", "1:pod-b.ns:1:2:local"]);
    let mut fp = start(dir, &file);
    let t = wait_all_lcores(&fp, g1);
    assert!(t.open);
    assert_eq!(
        t.sections
            .iter()
            .find(|s| s.name == "ports")
            .map(|s| s.count),
        Some(2)
    );
    // Both lcores and the watcher are registered readers of the file.
    assert!(
        t.readers.iter().any(|r| r.role == "lcore 0")
            && t.readers.iter().any(|r| r.role == "lcore 1"),
        "{t:?}"
    );

    // A change is visible to every lcore after publish.
    let g2 = publish(
        &file,
        &[
            "0:pod-a.ns:1:1:local",
            "1:pod-c.ns:1:3:local",
            "2:pod-d.ns:2:1",
        ],
    );
    assert_eq!(g2, g1 + 1);
    wait_all_lcores(&fp, g2);
    let dump: String = fp
        .client()
        .call_as(&Request::TablesDump {
            section: "ports".into(),
        })
        .unwrap();
    assert!(
        dump.contains("pod-c.ns") && dump.contains("pod-d.ns") && !dump.contains("pod-b.ns"),
        "{dump}"
    );

    // A writer killed in the middle of a slot leaves everyone on g2.
    let mut slow = Command::new(fp_tables())
        .arg("publish")
        .arg(&file)
        .args([
            "--port",
            "0:never.ns:9:9",
            "--filler",
            "2000000",
            "--chunk",
            "16384",
            "--pace-ms",
            "20",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    slow.kill().unwrap();
    let st = slow.wait().unwrap();
    assert!(
        !st.success(),
        "the slow writer was killed before it finished"
    );
    std::thread::sleep(Duration::from_millis(100));
    let t = wait_all_lcores(&fp, g2);
    assert_eq!(
        t.published_generation, g2,
        "the killed write never became a generation"
    );
    assert!(t.refused.is_empty(), "nothing was refused: {:?}", t.refused);

    // A restarted writer continues from the file's generation.
    let g3 = publish(&file, &["0:pod-e.ns:1:5:local"]);
    assert_eq!(g3, g2 + 1);
    wait_all_lcores(&fp, g3);

    // The fastpath restarted picks the tables up from the file at once.
    assert!(fp.stop(), "clean stop:\n{}", fp.log());
    let dir = tempfile::Builder::new()
        .prefix("fp-test-")
        .tempdir()
        .unwrap();
    let fp2 = start(dir, &file);
    let t = tables(&fp2);
    assert_eq!(
        t.generation, g3,
        "generation loaded before the workers started"
    );
    wait_all_lcores(&fp2, g3);
    let dump: String = fp2
        .client()
        .call_as(&Request::TablesDump {
            section: "ports".into(),
        })
        .unwrap();
    assert!(dump.contains("pod-e.ns"), "{dump}");
    drop(fp);
}

/// CPUs in a `/proc` status line's list form ("0-2,5").
fn cpu_list(text: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// (name, allowed CPUs) of every thread of process `pid`.
fn threads(pid: u32) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(status) = std::fs::read_to_string(task.join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((field("Name:"), cpu_list(&field("Cpus_allowed_list:"))));
    }
    out
}

#[test]
fn housekeeping_threads_leave_the_worker_cpu_alone() {
    let mine = threads(std::process::id())
        .into_iter()
        .next()
        .map(|(_, c)| c)
        .unwrap();
    if !(mine.contains(&0) && mine.contains(&1)) {
        eprintln!("skipped: this test needs CPUs 0 and 1, it may use {mine:?}");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("fp-test-")
        .tempdir()
        .unwrap();
    let file = dir.path().join("tables");
    let g = publish(&file, &["0:pod-a.ns:1:1:local"]);
    // One worker, the main lcore, on CPU 1.
    let mut args = common::ring_worker_on_cpu1();
    args.extend(["--tables".into(), file.display().to_string()]);
    let fp = Fastpath::start_in(dir, &args);
    let start = Instant::now();
    while tables(&fp).lcores.iter().any(|(_, lg)| *lg != g) {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", fp.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = fp.child.as_ref().unwrap().id();
    // What the process may run on, without the worker's CPU.
    let expected: Vec<usize> = mine.iter().copied().filter(|&c| c != 1).collect();
    let all = threads(pid);
    let named = |n: &str| {
        all.iter()
            .find(|(name, _)| name == n)
            .unwrap_or_else(|| panic!("no thread {n} in {all:?}"))
            .1
            .clone()
    };
    // The worker polls on CPU 1 alone.
    assert_eq!(named("fastpath"), vec![1], "{all:?}");
    for n in ["fp-tables", "fp-ct-expire", "fp-control"] {
        assert_eq!(named(n), expected, "{n} shares the worker's CPU: {all:?}");
    }
    assert!(fp.log().contains("housekeeping threads"), "{}", fp.log());
}
