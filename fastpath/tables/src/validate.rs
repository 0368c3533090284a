//! Complete validation of a slot before anyone reads it.
//!
//! Owns the checks that turn untrusted slot bytes into a [`ValidatedSlot`]:
//! header, checksum, table of contents (every section inside the slot, after
//! the table, aligned, non-overlapping, sizes consistent) and each known
//! kind's own hook. It must not touch the protocol or the mapping: it sees a
//! byte slice, so it can be fuzzed.
//!
//! The result holds *private copies* of the header and of the table of
//! contents. Accessors index the slot bytes only through these copies and
//! through `slice::get`, so even if the bytes change after validation (a
//! misbehaving writer) no access can leave the slot: the worst outcome is a
//! wrong value, never an out-of-bounds read.

use std::mem::size_of;

use crate::checksum::slot_checksum;
use crate::layout::{
    SectionEntry, SlotHeader, ABI_VERSION, CHECKSUM_START, MAX_SECTIONS, SLOT_MAGIC,
};
use crate::protocol::PinnedSlot;
use crate::refusal::{RefusalReason, RefusedSlot};
use crate::sections::{spec, SlotSections, KNOWN_SECTIONS};

/// A slot that passed every check: copies of its header and table of
/// contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedSlot {
    /// The slot header.
    pub header: SlotHeader,
    /// The table of contents, in slot order.
    pub toc: Vec<SectionEntry>,
}

impl ValidatedSlot {
    /// The sections over `bytes` (the same bytes that were validated).
    pub fn sections<'a>(&'a self, bytes: &'a [u8]) -> SlotSections<'a> {
        SlotSections::new(bytes, &self.toc)
    }
}

/// Validate slot bytes (starting at the slot header; may extend past the
/// used length). `bytes` must start on an 8-byte boundary.
pub fn validate_slot(bytes: &[u8]) -> Result<ValidatedSlot, RefusedSlot> {
    let header_bytes = bytes
        .get(..size_of::<SlotHeader>())
        .ok_or(RefusedSlot::new(0, RefusalReason::SlotBounds))?;
    let header: SlotHeader = bytemuck::pod_read_unaligned(header_bytes);
    let generation = header.generation;
    let refuse = |reason| RefusedSlot::new(generation, reason);
    if header.magic != SLOT_MAGIC {
        return Err(refuse(RefusalReason::BadMagic));
    }
    if header.abi_version != ABI_VERSION {
        return Err(refuse(RefusalReason::BadVersion));
    }
    if !(bytes.as_ptr() as usize).is_multiple_of(8) {
        return Err(refuse(RefusalReason::SlotMisaligned));
    }
    let length = usize::try_from(header.length)
        .ok()
        .filter(|length| (size_of::<SlotHeader>()..=bytes.len()).contains(length))
        .ok_or(refuse(RefusalReason::SlotBounds))?;
    let slot = &bytes[..length];
    if slot_checksum(&slot[CHECKSUM_START..]) != header.checksum {
        return Err(refuse(RefusalReason::BadChecksum));
    }
    if header.section_count > MAX_SECTIONS {
        return Err(refuse(RefusalReason::TocBounds));
    }
    let toc_end =
        size_of::<SlotHeader>() + header.section_count as usize * size_of::<SectionEntry>();
    let toc_bytes = slot
        .get(size_of::<SlotHeader>()..toc_end)
        .ok_or(refuse(RefusalReason::TocBounds))?;
    let toc: Vec<SectionEntry> = toc_bytes
        .chunks_exact(size_of::<SectionEntry>())
        .map(bytemuck::pod_read_unaligned)
        .collect();

    for entry in &toc {
        let refuse_section = |reason| RefusedSlot {
            generation,
            reason,
            section: Some(entry.kind),
        };
        let end = entry
            .offset
            .checked_add(entry.length)
            .ok_or(refuse_section(RefusalReason::SectionBounds))?;
        if entry.offset < toc_end as u64 || end > length as u64 {
            return Err(refuse_section(RefusalReason::SectionBounds));
        }
        if entry.offset % 8 != 0 {
            return Err(refuse_section(RefusalReason::SectionMisaligned));
        }
        if u64::from(entry.count) * u64::from(entry.element_size) != entry.length {
            return Err(refuse_section(RefusalReason::ElementSize));
        }
        if let Some(spec) = spec(crate::SectionKind(entry.kind)) {
            if entry.element_size != spec.element_size {
                return Err(refuse_section(RefusalReason::ElementSize));
            }
            if entry.flags != 0 {
                return Err(refuse_section(RefusalReason::UnknownFlags));
            }
        }
    }

    let mut by_offset: Vec<&SectionEntry> = toc.iter().collect();
    by_offset.sort_unstable_by_key(|entry| (entry.offset, entry.length));
    for pair in by_offset.windows(2) {
        // Entries were checked above: offset + length does not overflow.
        if pair[0].offset + pair[0].length > pair[1].offset {
            return Err(RefusedSlot {
                generation,
                reason: RefusalReason::SectionOverlap,
                section: Some(pair[1].kind),
            });
        }
    }
    let mut kinds: Vec<u32> = toc.iter().map(|entry| entry.kind).collect();
    kinds.sort_unstable();
    if let Some(pair) = kinds.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(RefusedSlot {
            generation,
            reason: RefusalReason::DuplicateSection,
            section: Some(pair[0]),
        });
    }

    let sections = SlotSections::new(slot, &toc);
    for spec in KNOWN_SECTIONS {
        if sections.entry(spec.kind).is_some() {
            (spec.validate)(&sections).map_err(|reason| RefusedSlot {
                generation,
                reason,
                section: Some(spec.kind.0),
            })?;
        }
    }
    Ok(ValidatedSlot { header, toc })
}

/// Validate slot bytes read for a pinned generation: also checks that the
/// slot header agrees with the descriptor in the file header.
pub fn validate_pinned(bytes: &[u8], pinned: &PinnedSlot) -> Result<ValidatedSlot, RefusedSlot> {
    let validated = validate_slot(bytes).map_err(|mut refused| {
        refused.generation = pinned.generation;
        refused
    })?;
    let header = &validated.header;
    if header.generation != pinned.generation
        || header.length != pinned.length
        || header.checksum != pinned.checksum
    {
        return Err(RefusedSlot::new(
            pinned.generation,
            RefusalReason::DescriptorMismatch,
        ));
    }
    Ok(validated)
}

/// 8-byte aligned private copy of some bytes.
pub(crate) struct AlignedBuf {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBuf {
    pub(crate) fn copy_of(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Self {
            words,
            len: bytes.len(),
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[..self.len]
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.words)[..self.len]
    }
}

/// Fuzz body: feed arbitrary bytes as a slot. Panics (the fuzzer's signal)
/// only if validation is inconsistent: a different answer for the same
/// bytes, or an accepted slot whose views cannot all be read.
pub fn fuzz_validate(data: &[u8]) {
    let mut buf = AlignedBuf::copy_of(data);
    check_consistent(buf.bytes());
    // Most random inputs fail the checksum; fix it up so the structural
    // checks behind it are reached too.
    if buf.bytes().len() >= size_of::<SlotHeader>() {
        let header: SlotHeader =
            bytemuck::pod_read_unaligned(&buf.bytes()[..size_of::<SlotHeader>()]);
        if let Ok(length) = usize::try_from(header.length) {
            if (CHECKSUM_START..=buf.bytes().len()).contains(&length) {
                let checksum = slot_checksum(&buf.bytes()[CHECKSUM_START..length]);
                buf.bytes_mut()[8..16].copy_from_slice(&checksum.to_le_bytes());
                check_consistent(buf.bytes());
            }
        }
    }
}

fn check_consistent(bytes: &[u8]) {
    let first = validate_slot(bytes);
    let second = validate_slot(bytes);
    assert_eq!(first, second, "validation is not deterministic");
    let Ok(validated) = first else {
        return;
    };
    let sections = validated.sections(bytes);
    for entry in sections.entries() {
        let kind = crate::SectionKind(entry.kind);
        let section = sections
            .bytes(kind)
            .expect("accepted section is within the slot");
        assert_eq!(section.len() as u64, entry.length);
        let dump = sections.dump(kind).expect("accepted section dumps");
        assert!(!dump.is_empty());
    }
    let ports = sections.ports();
    if let Some(entry) = sections.entry(crate::SectionKind::PORTS) {
        assert_eq!(
            ports.len(),
            entry.count as usize,
            "port view misses entries"
        );
    }
    for port in ports.entries() {
        assert!(
            ports.name(port).is_some(),
            "accepted port has an unreadable name"
        );
        assert_eq!(ports.get(port.port_id), Some(port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::SlotBuilder;
    use crate::sections::{Port, SectionKind};

    fn seeds() -> Vec<Vec<u8>> {
        let mut empty = SlotBuilder::new();
        let _ = &mut empty;
        let mut ports = SlotBuilder::new();
        let list: Vec<Port> = (0..6)
            .map(|id| Port {
                port_id: id * 3,
                datapath_key: 1,
                port_key: u32::from(id),
                name: format!("pod-{}.ns-é", id % 4),
                is_local: id % 2 == 0,
            })
            .collect();
        ports.add_ports(&list).unwrap();
        let mut mixed = SlotBuilder::new();
        mixed.add_ports(&list[..2]).unwrap();
        mixed.add_section(SectionKind(300), &[5u16, 6, 7]).unwrap();
        mixed.add_section(SectionKind(301), &[] as &[u64]).unwrap();
        vec![empty.finish(1, 2), ports.finish(3, 4), mixed.finish(5, 6)]
    }

    /// The fuzz body over valid seeds and ~100k xorshift mutations of them.
    #[test]
    fn fuzz_body_over_mutated_seeds() {
        let seeds = seeds();
        for seed in &seeds {
            assert!(validate_slot(AlignedBuf::copy_of(seed).bytes()).is_ok());
            fuzz_validate(seed);
        }
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let iterations = 100_000;
        let mut accepted_after_fixup = 0;
        for _ in 0..iterations {
            let mut data = seeds[(next() % seeds.len() as u64) as usize].clone();
            for _ in 0..1 + next() % 4 {
                let position = (next() % data.len() as u64) as usize;
                match next() % 4 {
                    0 => data[position] ^= 1 << (next() % 8),
                    1 => data[position] = next() as u8,
                    2 => data.truncate(position.max(1)),
                    _ => {
                        // Small integers where offsets, counts and sizes live.
                        let value = (next() % 512) as u32;
                        let at = position & !3;
                        if at + 4 <= data.len() {
                            data[at..at + 4].copy_from_slice(&value.to_le_bytes());
                        }
                    }
                }
            }
            fuzz_validate(&data);
            let mut buf = AlignedBuf::copy_of(&data);
            if buf.bytes().len() >= 64 {
                let length = u64::from_le_bytes(buf.bytes()[32..40].try_into().unwrap());
                if (16..=buf.bytes().len() as u64).contains(&length) {
                    let sum = slot_checksum(&buf.bytes()[16..length as usize]);
                    buf.bytes_mut()[8..16].copy_from_slice(&sum.to_le_bytes());
                    accepted_after_fixup += usize::from(validate_slot(buf.bytes()).is_ok());
                }
            }
        }
        // The mutations reach past the checksum: some mutants are still valid
        // slots, most are not.
        assert!(accepted_after_fixup > 0);
        assert!(accepted_after_fixup < iterations);
    }

    #[test]
    fn fuzz_body_takes_garbage_and_short_input() {
        for length in 0..200 {
            fuzz_validate(&vec![0xA5; length]);
        }
        let mut header = vec![0u8; 64];
        header[..8].copy_from_slice(&SLOT_MAGIC);
        header[16..20].copy_from_slice(&ABI_VERSION.to_le_bytes());
        header[32..40].copy_from_slice(&64u64.to_le_bytes());
        header[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        fuzz_validate(&header);
    }
}
