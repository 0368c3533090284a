//! Fuzzes the JSON-RPC stream codec and message classification.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ovsdb::fuzz_codec(data);
});
