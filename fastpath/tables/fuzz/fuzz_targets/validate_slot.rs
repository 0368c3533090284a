//! Arbitrary bytes as a slot: the validator never panics, answers the same
//! twice, and every view of an accepted slot is readable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fastpath_tables::fuzz_validate(data);
});
