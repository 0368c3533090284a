//! Building a slot image from typed Rust values.
//!
//! Owns [`SlotBuilder`]: sections of plain-data elements, the deduplicated
//! string blob, and the final image (header, table of contents, sections,
//! checksum). It must not touch the file: the [`crate::Writer`] copies the
//! finished image into a slot.

use std::mem::size_of;

use bytemuck::Pod;

use crate::checksum::slot_checksum;
use crate::layout::{
    align_up, SectionEntry, SlotHeader, StrRef, ABI_VERSION, CHECKSUM_START, MAX_SECTIONS,
    SECTION_ALIGN, SLOT_MAGIC,
};
use crate::sections::{Port, PortMapEntry, SectionKind, PORT_FLAG_LOCAL};

/// Errors while building a slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The same section kind was added twice.
    #[error("section kind {0} added twice")]
    DuplicateSection(u32),
    /// The string blob is built by the builder itself (see [`SlotBuilder::intern`]).
    #[error("the string section is built from interned strings, not added directly")]
    ReservedKind,
    /// More elements than a section can count (`u32`).
    #[error("section kind {kind} has {count} elements, more than a section holds")]
    TooManyElements {
        /// The kind.
        kind: u32,
        /// Elements given.
        count: usize,
    },
    /// More sections than a reader accepts.
    #[error("more than {MAX_SECTIONS} sections")]
    TooManySections,
    /// The string blob would exceed 4 GiB (offsets are `u32`).
    #[error("string blob exceeds 4 GiB")]
    StringsTooLarge,
    /// Two ports with the same fastpath port id.
    #[error("fastpath port id {0} appears twice in the port map")]
    DuplicatePort(u16),
}

/// Builds one slot image. Obtain one from [`crate::Writer::builder`] (or
/// [`SlotBuilder::new`]) and hand it to [`crate::Writer::publish`].
#[derive(Debug, Default)]
pub struct SlotBuilder {
    sections: Vec<(SectionEntry, Vec<u8>)>,
    strings: Vec<u8>,
    /// The interned strings, keyed by their bytes in `strings` (no copy of
    /// each string as a key: a compile interns every flow's texts).
    interned: hashbrown::HashTable<StrRef>,
}

/// The hash of an interned string.
fn string_hash(bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher as _;
    rustc_hash::FxBuildHasher.hash_one(bytes)
}

/// The bytes `r` refers to in `blob` (interned references lie within it).
fn interned_bytes(blob: &[u8], r: StrRef) -> &[u8] {
    &blob[r.offset as usize..(r.offset + r.len) as usize]
}

impl SlotBuilder {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty slot with room for `strings` distinct strings of
    /// `string_bytes` bytes in all (a compiler that builds one slot after
    /// another can pass the last one's [`Self::string_stats`]).
    pub fn with_string_capacity(strings: usize, string_bytes: usize) -> Self {
        Self {
            sections: Vec::new(),
            strings: Vec::with_capacity(string_bytes),
            interned: hashbrown::HashTable::with_capacity(strings),
        }
    }

    /// Distinct strings interned and their bytes in all.
    pub fn string_stats(&self) -> (usize, usize) {
        (self.interned.len(), self.strings.len())
    }

    /// Add a section of plain-data elements.
    pub fn add_section<T: Pod>(
        &mut self,
        kind: SectionKind,
        items: &[T],
    ) -> Result<(), BuildError> {
        if kind == SectionKind::STRINGS {
            return Err(BuildError::ReservedKind);
        }
        self.push_section(
            kind,
            size_of::<T>(),
            items.len(),
            bytemuck::cast_slice(items).to_vec(),
        )
    }

    fn push_section(
        &mut self,
        kind: SectionKind,
        element_size: usize,
        count: usize,
        bytes: Vec<u8>,
    ) -> Result<(), BuildError> {
        if self.sections.iter().any(|(entry, _)| entry.kind == kind.0) {
            return Err(BuildError::DuplicateSection(kind.0));
        }
        if self.sections.len() + 1 >= MAX_SECTIONS as usize {
            return Err(BuildError::TooManySections);
        }
        let count = u32::try_from(count).map_err(|_| BuildError::TooManyElements {
            kind: kind.0,
            count,
        })?;
        let entry = SectionEntry {
            kind: kind.0,
            flags: 0,
            offset: 0,
            length: bytes.len() as u64,
            count,
            element_size: element_size as u32,
        };
        self.sections.push((entry, bytes));
        Ok(())
    }

    /// Put a string in the blob (once, however often it is interned) and
    /// return its reference.
    pub fn intern(&mut self, string: &str) -> Result<StrRef, BuildError> {
        let bytes = string.as_bytes();
        let hash = string_hash(bytes);
        let blob = &self.strings;
        if let Some(existing) = self
            .interned
            .find(hash, |r| interned_bytes(blob, *r) == bytes)
        {
            return Ok(*existing);
        }
        let offset = u32::try_from(self.strings.len()).map_err(|_| BuildError::StringsTooLarge)?;
        let len = u32::try_from(bytes.len()).map_err(|_| BuildError::StringsTooLarge)?;
        offset.checked_add(len).ok_or(BuildError::StringsTooLarge)?;
        self.strings.extend_from_slice(bytes);
        let reference = StrRef { offset, len };
        let blob = &self.strings;
        self.interned
            .insert_unique(hash, reference, |r| string_hash(interned_bytes(blob, *r)));
        Ok(reference)
    }

    /// Add the port map, sorted by fastpath port id.
    pub fn add_ports(&mut self, ports: &[Port]) -> Result<(), BuildError> {
        let mut entries = Vec::with_capacity(ports.len());
        for port in ports {
            entries.push(PortMapEntry {
                port_id: port.port_id,
                flags: if port.is_local { PORT_FLAG_LOCAL } else { 0 },
                datapath_key: port.datapath_key,
                port_key: port.port_key,
                name: self.intern(&port.name)?,
                reserved: 0,
            });
        }
        entries.sort_unstable_by_key(|entry| entry.port_id);
        if let Some(pair) = entries
            .windows(2)
            .find(|pair| pair[0].port_id == pair[1].port_id)
        {
            return Err(BuildError::DuplicatePort(pair[0].port_id));
        }
        self.add_section(SectionKind::PORTS, &entries)
    }

    /// A copy of the sections and strings (without the interning index),
    /// to compare a later build with through [`Self::same_content`].
    pub fn content_copy(&self) -> SlotBuilder {
        SlotBuilder {
            sections: self.sections.clone(),
            strings: self.strings.clone(),
            interned: Default::default(),
        }
    }

    /// Whether both would publish the same sections and strings: a writer
    /// can skip publishing a build that changes nothing.
    pub fn same_content(&self, other: &SlotBuilder) -> bool {
        self.strings == other.strings
            && self.sections.len() == other.sections.len()
            && self
                .sections
                .iter()
                .zip(&other.sections)
                .all(|((ea, ba), (eb, bb))| {
                    bytemuck::bytes_of(ea) == bytemuck::bytes_of(eb) && ba == bb
                })
    }

    /// Size of the finished image in bytes.
    pub fn image_len(&self) -> usize {
        self.layout().1
    }

    /// Offsets of each section and total length.
    fn layout(&self) -> (Vec<u64>, usize) {
        let count = self.sections.len() + usize::from(!self.strings.is_empty());
        let mut cursor = size_of::<SlotHeader>() + count * size_of::<SectionEntry>();
        let mut offsets = Vec::with_capacity(count);
        let lengths = self
            .sections
            .iter()
            .map(|(entry, _)| entry.length as usize)
            .chain((!self.strings.is_empty()).then_some(self.strings.len()));
        for length in lengths {
            cursor = align_up(cursor, SECTION_ALIGN).unwrap_or(usize::MAX);
            offsets.push(cursor as u64);
            cursor = cursor.saturating_add(length);
        }
        (offsets, cursor)
    }

    /// The finished image for `generation`, checksummed.
    pub fn finish(&self, generation: u64, publish_time_ns: u64) -> Vec<u8> {
        let (offsets, length) = self.layout();
        let mut image = vec![0u8; length];
        let strings_entry = SectionEntry {
            kind: SectionKind::STRINGS.0,
            flags: 0,
            offset: 0,
            length: self.strings.len() as u64,
            count: self.strings.len() as u32,
            element_size: 1,
        };
        let sections = self
            .sections
            .iter()
            .map(|(entry, bytes)| (*entry, bytes.as_slice()))
            .chain((!self.strings.is_empty()).then_some((strings_entry, self.strings.as_slice())));
        let mut toc_cursor = size_of::<SlotHeader>();
        for ((mut entry, bytes), offset) in sections.zip(&offsets) {
            entry.offset = *offset;
            image[toc_cursor..toc_cursor + size_of::<SectionEntry>()]
                .copy_from_slice(bytemuck::bytes_of(&entry));
            toc_cursor += size_of::<SectionEntry>();
            let start = *offset as usize;
            image[start..start + bytes.len()].copy_from_slice(bytes);
        }
        let mut header = SlotHeader {
            magic: SLOT_MAGIC,
            checksum: 0,
            abi_version: ABI_VERSION,
            section_count: offsets.len() as u32,
            generation,
            length: length as u64,
            publish_time_ns,
            reserved: [0; 2],
        };
        image[..size_of::<SlotHeader>()].copy_from_slice(bytemuck::bytes_of(&header));
        header.checksum = slot_checksum(&image[CHECKSUM_START..]);
        image[..size_of::<SlotHeader>()].copy_from_slice(bytemuck::bytes_of(&header));
        image
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refusal::RefusalReason;
    use crate::validate::{validate_slot, AlignedBuf};

    #[test]
    fn interning_stores_each_string_once_across_growth() {
        let mut b = SlotBuilder::with_string_capacity(4, 16);
        let texts: Vec<String> = (0..5000).map(|i| format!("reg0[{i}] == 1")).collect();
        let first: Vec<StrRef> = texts.iter().map(|t| b.intern(t).unwrap()).collect();
        // Interned again (after the table grew many times): the same
        // references, and nothing added.
        let bytes = b.string_stats().1;
        for (t, r) in texts.iter().zip(&first).rev() {
            assert_eq!(b.intern(t).unwrap(), *r, "{t}");
        }
        assert_eq!(b.string_stats(), (5000, bytes));
        for (t, r) in texts.iter().zip(&first) {
            assert_eq!(interned_bytes(&b.strings, *r), t.as_bytes());
        }
        // The empty string and a prefix of another are strings of their own.
        let empty = b.intern("").unwrap();
        assert_eq!(empty.len, 0);
        let prefix = b.intern("reg0[1]").unwrap();
        assert_ne!(prefix, first[1]);
        assert_eq!(interned_bytes(&b.strings, prefix), b"reg0[1]");
    }

    fn ports() -> Vec<Port> {
        vec![
            Port {
                port_id: 7,
                datapath_key: 1,
                port_key: 3,
                name: "web-0.default".into(),
                is_local: true,
            },
            Port {
                port_id: 2,
                datapath_key: 1,
                port_key: 4,
                name: "db-0.default".into(),
                is_local: false,
            },
            Port {
                port_id: 9,
                datapath_key: 2,
                port_key: 1,
                name: "web-0.default".into(),
                is_local: true,
            },
        ]
    }

    #[test]
    fn same_content_compares_sections_and_strings() {
        let build = |extra: u64, name: &str| {
            let mut b = SlotBuilder::new();
            b.add_ports(&ports()).unwrap();
            b.add_section(SectionKind(77), &[1u64, extra]).unwrap();
            b.intern(name).unwrap();
            b
        };
        let a = build(2, "x");
        let copy = a.content_copy();
        assert!(copy.same_content(&a) && a.same_content(&build(2, "x")));
        assert!(!a.same_content(&build(3, "x")), "section bytes differ");
        assert!(!a.same_content(&build(2, "y")), "strings differ");
        let mut more = build(2, "x");
        more.add_section(SectionKind(78), &[0u8]).unwrap();
        assert!(!a.same_content(&more), "one more section");
        assert_eq!(copy.image_len(), a.image_len());
    }

    #[test]
    fn built_slot_validates_and_reads_back() {
        let mut builder = SlotBuilder::new();
        builder.add_ports(&ports()).unwrap();
        builder.add_section(SectionKind(77), &[1u64, 2, 3]).unwrap();
        let image = AlignedBuf::copy_of(&builder.finish(5, 123));
        let validated = validate_slot(image.bytes()).unwrap();
        assert_eq!(validated.header.generation, 5);
        assert_eq!(validated.header.publish_time_ns, 123);
        let sections = validated.sections(image.bytes());
        let view = sections.ports();
        let ids: Vec<u16> = view.entries().iter().map(|e| e.port_id).collect();
        assert_eq!(ids, vec![2, 7, 9]);
        let seven = view.get(7).unwrap();
        assert_eq!(view.name(seven).as_deref(), Some("web-0.default"));
        assert!(seven.is_local());
        // Deduplicated: both ports named web-0.default share one string.
        assert_eq!(seven.name, view.get(9).unwrap().name);
        assert_eq!(sections.strings().len(), "web-0.defaultdb-0.default".len());
        assert_eq!(
            sections.typed::<u64>(SectionKind(77)),
            Some(&[1u64, 2, 3][..])
        );
        assert_eq!(sections.typed::<u32>(SectionKind(77)), None);
        let dump = view.dump();
        assert_eq!(
            dump.lines().next(),
            Some("port 2 datapath 1 key 4 name db-0.default remote")
        );
        assert!(sections
            .dump(SectionKind(77))
            .unwrap()
            .contains("kind 77 (unknown) count 3 element_size 8"));
    }

    #[test]
    fn builder_refuses_bad_input() {
        let mut builder = SlotBuilder::new();
        let mut twice = ports();
        twice[1].port_id = 7;
        assert_eq!(builder.add_ports(&twice), Err(BuildError::DuplicatePort(7)));
        assert_eq!(
            builder.add_section::<u8>(SectionKind::STRINGS, &[1]),
            Err(BuildError::ReservedKind)
        );
        builder.add_section(SectionKind(9), &[1u32]).unwrap();
        assert_eq!(
            builder.add_section(SectionKind(9), &[1u32]),
            Err(BuildError::DuplicateSection(9))
        );
    }

    fn valid_image() -> AlignedBuf {
        let mut builder = SlotBuilder::new();
        builder.add_ports(&ports()).unwrap();
        AlignedBuf::copy_of(&builder.finish(1, 0))
    }

    fn reseal(buf: &mut AlignedBuf) {
        let checksum = slot_checksum(&buf.bytes()[CHECKSUM_START..]);
        buf.bytes_mut()[8..16].copy_from_slice(&checksum.to_le_bytes());
    }

    fn refusal(buf: &AlignedBuf) -> RefusalReason {
        validate_slot(buf.bytes()).unwrap_err().reason
    }

    #[test]
    fn validator_refuses_each_kind_of_damage() {
        let toc = size_of::<SlotHeader>();
        // ports is the first TOC entry, strings the second.
        let mut buf = valid_image();
        buf.bytes_mut()[100] ^= 1;
        assert_eq!(refusal(&buf), RefusalReason::BadChecksum);

        let mut buf = valid_image();
        buf.bytes_mut()[0] = b'X';
        assert_eq!(refusal(&buf), RefusalReason::BadMagic);

        let mut buf = valid_image();
        buf.bytes_mut()[16] = 99;
        assert_eq!(refusal(&buf), RefusalReason::BadVersion);

        let mut buf = valid_image();
        let len = buf.bytes().len() as u64 + 1;
        buf.bytes_mut()[32..40].copy_from_slice(&len.to_le_bytes());
        assert_eq!(refusal(&buf), RefusalReason::SlotBounds);

        // Section offset past the end.
        let mut buf = valid_image();
        buf.bytes_mut()[toc + 8..toc + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        reseal(&mut buf);
        assert_eq!(refusal(&buf), RefusalReason::SectionBounds);

        // The (short) strings section moved onto the ports section.
        let mut buf = valid_image();
        let strings_offset: [u8; 8] = buf.bytes()[toc + 32 + 8..toc + 32 + 16].try_into().unwrap();
        let ports_offset_bytes: [u8; 8] = buf.bytes()[toc + 8..toc + 16].try_into().unwrap();
        buf.bytes_mut()[toc + 32 + 8..toc + 32 + 16].copy_from_slice(&ports_offset_bytes);
        reseal(&mut buf);
        assert_eq!(refusal(&buf), RefusalReason::SectionOverlap);

        // Misaligned offset.
        let mut buf = valid_image();
        let offset = u64::from_le_bytes(buf.bytes()[toc + 8..toc + 16].try_into().unwrap()) + 4;
        buf.bytes_mut()[toc + 8..toc + 16].copy_from_slice(&offset.to_le_bytes());
        reseal(&mut buf);
        assert_eq!(refusal(&buf), RefusalReason::SectionMisaligned);

        // Count inconsistent with length.
        let mut buf = valid_image();
        buf.bytes_mut()[toc + 24] += 1;
        reseal(&mut buf);
        assert_eq!(refusal(&buf), RefusalReason::ElementSize);

        // A port name pointing past the string blob.
        let mut buf = valid_image();
        let ports_offset =
            u64::from_le_bytes(buf.bytes()[toc + 8..toc + 16].try_into().unwrap()) as usize;
        buf.bytes_mut()[ports_offset + 12..ports_offset + 16]
            .copy_from_slice(&1000u32.to_le_bytes());
        reseal(&mut buf);
        assert_eq!(refusal(&buf), RefusalReason::BadStringRef);

        // Ports out of order.
        let mut buf = valid_image();
        buf.bytes_mut()[ports_offset..ports_offset + 2].copy_from_slice(&200u16.to_le_bytes());
        reseal(&mut buf);
        assert_eq!(refusal(&buf), RefusalReason::PortOrder);

        // Duplicate kind.
        let mut buf = valid_image();
        buf.bytes_mut()[toc + 32..toc + 36].copy_from_slice(&2u32.to_le_bytes());
        reseal(&mut buf);
        assert!(matches!(
            refusal(&buf),
            RefusalReason::DuplicateSection | RefusalReason::ElementSize
        ));

        // Invalid UTF-8 in the blob.
        let mut buf = valid_image();
        let strings_offset = u64::from_le_bytes(strings_offset) as usize;
        buf.bytes_mut()[strings_offset] = 0xff;
        reseal(&mut buf);
        assert_eq!(refusal(&buf), RefusalReason::BadUtf8);

        // Too many sections for the slot.
        let mut buf = valid_image();
        buf.bytes_mut()[20..24].copy_from_slice(&1000u32.to_le_bytes());
        reseal(&mut buf);
        assert_eq!(refusal(&buf), RefusalReason::TocBounds);
    }
}
