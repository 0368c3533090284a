//! Test support: a real OVN Northbound and Southbound ovsdb-server with
//! ovn-northd between them, in a temporary directory, killed on drop.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ovsdb::testing::OvsdbServer;

/// NB + SB servers and ovn-northd.
pub struct Ovn {
    pub nb: OvsdbServer,
    pub sb: OvsdbServer,
    northd: Child,
}

impl Ovn {
    pub fn start() -> Self {
        let nb = OvsdbServer::start_nb().expect("start NB ovsdb-server");
        let sb = OvsdbServer::start_sb().expect("start SB ovsdb-server");
        let dir = nb.dir().to_path_buf();
        let northd = Command::new("ovn-northd")
            .arg(format!("--ovnnb-db={}", nb.remote))
            .arg(format!("--ovnsb-db={}", sb.remote))
            .arg("--no-chdir")
            .arg(format!("--log-file={}", dir.join("northd.log").display()))
            .arg(format!("--pidfile={}", dir.join("northd.pid").display()))
            .arg(format!("--unixctl={}", dir.join("northd.ctl").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ovn-northd");
        Ovn { nb, sb, northd }
    }

    pub fn nbctl(&self, args: &[&str]) -> String {
        self.nb
            .nbctl(args)
            .unwrap_or_else(|e| panic!("ovn-nbctl {args:?}: {e}"))
    }

    pub fn sbctl(&self, args: &[&str]) -> String {
        self.sb
            .sbctl(args)
            .unwrap_or_else(|e| panic!("ovn-sbctl {args:?}: {e}"))
    }

    /// Polls `f` until it is true or 20 s pass.
    pub fn eventually(&self, what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Ovn {
    fn drop(&mut self) {
        let _ = self.northd.kill();
        let _ = self.northd.wait();
    }
}
