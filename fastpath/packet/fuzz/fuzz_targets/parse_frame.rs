//! Fuzz target: arbitrary bytes as an Ethernet frame through the flow-key
//! extractor and every packet view, with the invariants of
//! `fastpath_packet::fuzzing::fuzz_parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fastpath_packet::fuzzing::fuzz_parse(data);
});
