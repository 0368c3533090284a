//! Test support: a real OVN Northbound and Southbound ovsdb-server with
//! ovn-northd between them, in a temporary directory, killed on drop.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use ovsdb::testing::OvnCentral;

/// NB + SB servers and ovn-northd (`ovsdb::testing::OvnCentral`), with
/// helpers that panic with the command on failure.
pub struct Ovn(OvnCentral);

impl std::ops::Deref for Ovn {
    type Target = OvnCentral;
    fn deref(&self) -> &OvnCentral {
        &self.0
    }
}

impl Ovn {
    pub fn start() -> Self {
        Ovn(OvnCentral::start().expect("start NB, SB and ovn-northd"))
    }

    pub fn nbctl(&self, args: &[&str]) -> String {
        self.0
            .nbctl(args)
            .unwrap_or_else(|e| panic!("ovn-nbctl {args:?}: {e}"))
    }

    pub fn sbctl(&self, args: &[&str]) -> String {
        self.0
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
