//! Fuzz target: byte strings drive the connection tracker through
//! `conntrack::fuzzing::fuzz_conntrack` (random sequences of lookups,
//! commits with NAT, touches, expiry and time advances with invariant checks
//! after each step; or a frame through the packet summary and the NAT
//! rewrite). The module is included by path: it depends only on the packet
//! crate, so the target builds without DPDK.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../src/conntrack/mod.rs"]
mod conntrack;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    conntrack::fuzzing::fuzz_conntrack(data);
});
