//! `fastpathctl lcores` counts the times the kernel took a polling lcore's
//! CPU from it: next to none while the lcore has its CPU to itself, and
//! steadily more once another busy thread shares that CPU.

mod common;

use common::Fastpath;
use fastpath_api::{LcoreInfo, Request, Stats};
use std::process::{Child, Command};
use std::time::Duration;

fn lcore(fp: &Fastpath) -> LcoreInfo {
    let stats: Stats = fp.client().call_as(&Request::Stats).unwrap();
    stats.lcores.into_iter().next().expect("one lcore")
}

fn preemptions(fp: &Fastpath) -> u64 {
    lcore(fp)
        .preemptions
        .expect("the lcore's preemptions are readable")
}

/// A busy loop on CPU 1, killed on drop.
struct Hog(Child);

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_busy_thread_on_the_lcores_cpu_shows_as_preemptions() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("skipped: needs CPUs 0 and 1");
        return;
    }
    // One worker on CPU 1, polling without back-off.
    let fp = Fastpath::start_busy_polling(&common::ring_worker_on_cpu1());
    // Alone: the quietest of three seconds, since on a shared machine other
    // processes (a test's fastpath shutting down, a daemon) wake on CPU 1
    // now and then.
    let lone = (0..3)
        .map(|_| {
            let start = preemptions(&fp);
            std::thread::sleep(Duration::from_secs(1));
            preemptions(&fp) - start
        })
        .min()
        .unwrap_or(0);

    let hog = Hog(Command::new("taskset")
        .args(["-c", "1", "sh", "-c", "while :; do :; done"])
        .spawn()
        .expect("taskset"));
    let shared_start = preemptions(&fp);
    std::thread::sleep(Duration::from_secs(1));
    let shared = preemptions(&fp) - shared_start;
    drop(hog);
    eprintln!("preemptions in one second: {lone} alone on CPU 1, {shared} beside a busy loop");
    // The scheduler shares a CPU between two runnable threads in slices of
    // a few milliseconds: hundreds of preemptions a second.
    assert!(shared >= 30, "{shared} preemptions beside a busy loop");
    assert!(
        lone * 3 < shared,
        "{lone} preemptions alone against {shared} shared"
    );
    // The control thread renders the column.
    let ctl =
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_fastpath")).with_file_name("fastpathctl");
    let out = Command::new(&ctl)
        .args(["--socket", &fp.socket.display().to_string(), "lcores"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PREEMPTED"), "{text}");
}
