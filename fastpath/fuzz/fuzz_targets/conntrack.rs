//! Fuzz target: byte strings drive the connection tracker through
//! `conntrack::fuzzing::fuzz_conntrack` (random sequences of lookups,
//! commits with NAT, touches, expiry and time advances with invariant checks
//! after each step; or a frame through the packet summary and the NAT
//! rewrite). The module is included by path: it depends only on the packet
//! crate and two pieces of the DPDK wrappers (prefetch hints, stood in for
//! below, and the huge-page arena, included as it is), so the target
//! builds without DPDK.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../src/conntrack/mod.rs"]
mod conntrack;

#[allow(dead_code)]
#[path = "../../src/dpdk/hugemem.rs"]
mod hugemem;

/// What the module uses of the daemon's DPDK wrappers: cache prefetches,
/// hints with no effect on results, so none here; and the arena its arrays
/// are carved from.
mod dpdk {
    pub use crate::hugemem::{ArenaUsage, HugeArena};

    pub fn prefetch_addr(_: usize) {}
    pub fn prefetch<T>(_: &T) {}
}

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    conntrack::fuzzing::fuzz_conntrack(data);
});
