//! The frozen binary layout of the table file and of a slot.
//!
//! Owns every `#[repr(C)]` type that sits in the file, their sizes (frozen by
//! `const` assertions), the magic numbers and the ABI version. It must not
//! hold behaviour beyond trivial constructors: validation lives in
//! [`crate::validate`], the protocol in [`crate::protocol`].
//!
//! All integers are little-endian, fixed-size, naturally aligned (the file is
//! only ever shared between processes of one x86-64 host, so native order is
//! little-endian; a big-endian host refuses the file by its magic). Nothing
//! holds a pointer: places are byte offsets from the start of the file (file
//! header) or from the start of the slot (sections).

use std::mem::{align_of, size_of};

use bytemuck::{Pod, Zeroable};

use crate::protocol::{PublishState, ReaderEntry};
use crate::sync::{AtomicU32, AtomicU64};

#[cfg(not(target_endian = "little"))]
compile_error!("the table file layout is little-endian");

/// Bumped on any incompatible change of the layout below.
pub const ABI_VERSION: u32 = 1;
/// First 8 bytes of the file.
pub const FILE_MAGIC: [u8; 8] = *b"FPTABLES";
/// First 8 bytes of a slot.
pub const SLOT_MAGIC: [u8; 8] = *b"FPSLOT\0\0";
/// Number of reader entries in the reader area.
pub const READER_CAPACITY: usize = 128;
/// Byte offset of the control block (atomics) in the file.
pub const CONTROL_OFFSET: usize = 64;
/// Byte offset of the reader area in the file.
pub const READER_AREA_OFFSET: usize = 4096;
/// Byte offset of slot 0 in the file.
pub const FIRST_SLOT_OFFSET: usize = READER_AREA_OFFSET + READER_CAPACITY * 64;
/// Slots start on this boundary.
pub const SLOT_ALIGN: usize = 4096;
/// The file size is a multiple of this (a 2 MiB huge page, so the same file
/// can live on hugetlbfs).
pub const FILE_SIZE_ALIGN: usize = 2 << 20;
/// Sections start on this boundary inside a slot.
pub const SECTION_ALIGN: usize = 64;
/// The largest table of contents a reader accepts.
pub const MAX_SECTIONS: u32 = 1024;
/// Bytes at the start of the slot header that the checksum does not cover
/// (the magic and the checksum itself).
pub const CHECKSUM_START: usize = 16;

/// The unchanging part of the file header, at offset 0, written once at
/// creation. Readers copy it at open and never trust it again afterwards.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct FileIdentity {
    /// [`FILE_MAGIC`].
    pub magic: [u8; 8],
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// Size of [`FileIdentity`], for sanity.
    pub identity_size: u32,
    /// Size of the whole file in bytes.
    pub file_size: u64,
    /// Capacity of each slot in bytes.
    pub slot_capacity: u64,
    /// Byte offsets of slot 0 and slot 1 from the start of the file.
    pub slot_offsets: [u64; 2],
    /// Byte offset of the reader area.
    pub reader_area_offset: u32,
    /// Number of reader entries.
    pub reader_capacity: u32,
    /// Size of one reader entry.
    pub reader_entry_size: u32,
    /// Reserved, zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<FileIdentity>() == 64 && align_of::<FileIdentity>() == 8);

/// The mutable part of the file header, at [`CONTROL_OFFSET`]: only atomics.
#[repr(C)]
#[derive(Debug)]
pub struct ControlBlock {
    /// Current generation and the two slot descriptors.
    pub publish: PublishState,
    /// Process id of the writer holding the file (0: none), for tools.
    pub writer_pid: AtomicU32,
    /// Non-zero once a newer file has replaced this one at the same path:
    /// readers should open the path again.
    pub superseded: AtomicU32,
    /// Source of reader registration tokens (fetch-add, never 0).
    pub next_reader_token: AtomicU64,
}
#[cfg(not(loom))]
const _: () = assert!(size_of::<PublishState>() == 80 && align_of::<PublishState>() == 8);
#[cfg(not(loom))]
const _: () = assert!(size_of::<ControlBlock>() == 96 && align_of::<ControlBlock>() == 8);
#[cfg(not(loom))]
const _: () = assert!(size_of::<ReaderEntry>() == 64 && align_of::<ReaderEntry>() == 64);
#[cfg(not(loom))]
const _: () = assert!(CONTROL_OFFSET + size_of::<ControlBlock>() <= READER_AREA_OFFSET);
const _: () = assert!(FIRST_SLOT_OFFSET.is_multiple_of(SLOT_ALIGN));

/// The header at the start of every slot.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct SlotHeader {
    /// [`SLOT_MAGIC`].
    pub magic: [u8; 8],
    /// Checksum of slot bytes `[CHECKSUM_START, length)` (see
    /// [`crate::checksum`]), widened to 64 bits.
    pub checksum: u64,
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// Number of [`SectionEntry`] right after this header.
    pub section_count: u32,
    /// Generation this slot was published as.
    pub generation: u64,
    /// Bytes used in the slot, this header included.
    pub length: u64,
    /// Wall-clock publish time, nanoseconds since the Unix epoch.
    pub publish_time_ns: u64,
    /// Reserved, zero.
    pub reserved: [u64; 2],
}
const _: () = assert!(size_of::<SlotHeader>() == 64 && align_of::<SlotHeader>() == 8);

/// One table-of-contents entry: where a section is and what it holds.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct SectionEntry {
    /// Section kind id (see [`crate::sections::SectionKind`]).
    pub kind: u32,
    /// Section flags (none defined yet; must be zero for known kinds).
    pub flags: u32,
    /// Byte offset from the start of the slot; a multiple of 8.
    pub offset: u64,
    /// Length in bytes; `count * element_size`.
    pub length: u64,
    /// Number of elements.
    pub count: u32,
    /// Size of one element in bytes (1 for byte blobs).
    pub element_size: u32,
}
const _: () = assert!(size_of::<SectionEntry>() == 32 && align_of::<SectionEntry>() == 8);

/// A string in the string blob section: byte offset and length, UTF-8.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct StrRef {
    /// Byte offset in the string blob.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}
const _: () = assert!(size_of::<StrRef>() == 8 && align_of::<StrRef>() == 4);

/// Round `value` up to a multiple of `align` (a power of two); `None` on
/// overflow.
pub fn align_up(value: usize, align: usize) -> Option<usize> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

/// Where things are in a file of a given slot capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileGeometry {
    /// Capacity of each slot.
    pub slot_capacity: usize,
    /// Offsets of the two slots.
    pub slot_offsets: [usize; 2],
    /// Whole file size.
    pub file_size: usize,
}

impl FileGeometry {
    /// Geometry for a slot capacity; `None` if it overflows.
    pub fn for_capacity(slot_capacity: usize) -> Option<Self> {
        let capacity = align_up(slot_capacity.max(SLOT_ALIGN), SLOT_ALIGN)?;
        let first = FIRST_SLOT_OFFSET;
        let second = first.checked_add(capacity)?;
        let file_size = align_up(second.checked_add(capacity)?, FILE_SIZE_ALIGN)?;
        Some(Self {
            slot_capacity: capacity,
            slot_offsets: [first, second],
            file_size,
        })
    }

    /// The identity block describing this geometry.
    pub fn identity(&self) -> FileIdentity {
        FileIdentity {
            magic: FILE_MAGIC,
            abi_version: ABI_VERSION,
            identity_size: size_of::<FileIdentity>() as u32,
            file_size: self.file_size as u64,
            slot_capacity: self.slot_capacity as u64,
            slot_offsets: [self.slot_offsets[0] as u64, self.slot_offsets[1] as u64],
            reader_area_offset: READER_AREA_OFFSET as u32,
            reader_capacity: READER_CAPACITY as u32,
            reader_entry_size: 64,
            reserved: 0,
        }
    }

    /// Check an identity block read from a file of `actual_file_size` bytes
    /// and return its geometry.
    pub fn from_identity(
        identity: &FileIdentity,
        actual_file_size: u64,
    ) -> Result<Self, crate::Error> {
        use crate::Error;
        if identity.magic != FILE_MAGIC {
            return Err(Error::BadFile("bad magic"));
        }
        if identity.abi_version != ABI_VERSION {
            return Err(Error::AbiVersion {
                found: identity.abi_version,
                expected: ABI_VERSION,
            });
        }
        let expected = usize::try_from(identity.slot_capacity)
            .ok()
            .and_then(Self::for_capacity)
            .ok_or(Error::BadFile("slot capacity out of range"))?;
        if identity.identity_size as usize != size_of::<FileIdentity>()
            || identity.reader_area_offset as usize != READER_AREA_OFFSET
            || identity.reader_capacity as usize != READER_CAPACITY
            || identity.reader_entry_size != 64
            || expected.identity() != *identity
        {
            return Err(Error::BadFile("header fields do not describe this layout"));
        }
        if identity.file_size != actual_file_size {
            return Err(Error::BadFile("file size differs from the header"));
        }
        Ok(expected)
    }
}
