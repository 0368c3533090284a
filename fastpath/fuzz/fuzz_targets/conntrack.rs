//! Fuzz target: byte strings drive the connection tracker through
//! `conntrack::fuzzing::fuzz_conntrack` (random sequences of lookups,
//! commits with NAT, touches, expiry and time advances with invariant checks
//! after each step; or a frame through the packet summary and the NAT
//! rewrite). The module is included by path: it depends only on the packet
//! crate (and the DPDK wrappers' prefetch hints, stood in for below), so
//! the target builds without DPDK.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../src/conntrack/mod.rs"]
mod conntrack;

/// What the module uses of the daemon's DPDK wrappers: cache prefetches,
/// hints with no effect on results, so none here.
mod dpdk {
    pub fn prefetch_addr(_: usize) {}
    pub fn prefetch<T>(_: &T) {}
}

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    conntrack::fuzzing::fuzz_conntrack(data);
});
