//! What the benchmarks share: loading a program from a saved table slot.

use fastpath::ovn::Program;

/// The program of a table slot saved with `fp-tables slot` (the bytes
/// from the slot header to its used length), as generation 1.
pub fn program(slot: &[u8]) -> Program {
    // The validator wants 8-byte alignment.
    let mut words = vec![0u64; slot.len().div_ceil(8)];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    bytes[..slot.len()].copy_from_slice(slot);
    let bytes = &bytes[..slot.len()];
    let validated = fastpath_tables::validate::validate_slot(bytes).expect("the slot validates");
    Program::load(&validated.sections(bytes), 1).expect("the program loads")
}
