//! The shared-memory table ABI between the control process (ovn-bridge, the
//! only writer) and the fastpath (readers), plus read-only inspection for
//! `fastpathctl`.
//!
//! This crate owns the file layout, the publish protocol, slot building and
//! slot validation. It knows nothing of DPDK, OVN or packets: a table kind is
//! a section of plain-data elements, registered in [`sections`].
//!
//! # File layout
//!
//! All integers are fixed-size little-endian (the file is shared between
//! processes of one x86-64 host), every place is an offset, never a pointer,
//! and every structure's size is frozen by a `const` assertion.
//!
//! ```text
//! offset 0      FileIdentity (64 B, written once)  magic "FPTABLES", ABI version,
//!                                                  file size, slot capacity, slot offsets
//! offset 64     ControlBlock (atomics)             generation (u64), current slot,
//!                                                  slot descriptor[2] {generation, length,
//!                                                  checksum, publish time}, writer pid,
//!                                                  superseded flag, reader token source
//! offset 4096   reader area: 128 x 64 B entries    {owner token, acked generation,
//!                                                  heartbeat (CLOCK_MONOTONIC ns),
//!                                                  registered at, pid, role}
//! offset 12288  slot 0 (capacity rounded to 4 KiB)
//!               slot 1
//!               (file size rounded to 2 MiB so it fits hugetlbfs)
//!
//! slot:  SlotHeader (64 B)  magic "FPSLOT", checksum (CRC-32C of bytes 16..length),
//!                           ABI version, section count, generation, length,
//!                           publish time (wall clock)
//!        SectionEntry[n]    {kind u32, flags u32, offset u64, length u64,
//!        (32 B each)         count u32, element size u32}
//!        sections           each 64-byte aligned, e.g. ports (PortMapEntry[]),
//!                           strings (deduplicated UTF-8 blob, referenced by
//!                           StrRef {offset u32, len u32})
//! ```
//!
//! # Protocol
//!
//! Generation `g` lives in slot `g % 2`. A reader's ack is the oldest
//! generation it may still use; an ack `a` keeps the writer from publishing
//! past `a + 1`.
//!
//! ```text
//!  writer (publishing g+1 into slot s = (g+1)%2)      reader (fastpath lcore / control thread)
//!  ─────────────────────────────────────────────      ─────────────────────────────────────────
//!  desc[s].generation = 0            (SeqCst)        register: ack = G (SeqCst), then check
//!  wait: every live ack >= g                           desc[G%2].generation == G, else retry
//!    (dead reader: heartbeat > timeout or pid gone    poll generation (one atomic load)
//!     -> logged and reclaimed; live and behind        g' != used? validate slot of g' completely
//!     past the publish timeout -> Error::ReadersBusy)   (bounds, checksum, TOC, per-kind hooks)
//!  copy image into slot s                               ok: switch at a burst boundary, ack g'
//!  desc[s] = {length, checksum, time}                   refused: count reason, keep last good
//!  desc[s].generation = g+1          (Release)
//!  generation = g+1                  (SeqCst)
//! ```
//!
//! The generation only moves after the slot is complete, so a writer that
//! dies while writing leaves readers on the previous generation, and a
//! restarted writer continues from the file's generation. A reader that
//! starts maps the file and gets the last published generation at once.
//!
//! Known limitation: with two slots, after a refused generation the readers
//! stay on the previous one, so the writer cannot reuse its slot and its next
//! publish fails with [`Error::ReadersBusy`] until the readers move on.
//!
//! The protocol logic ([`protocol`]) is separate from the mapping ([`shm`],
//! the only module with `unsafe`) and is model-checked with loom:
//! `RUSTFLAGS="--cfg loom" cargo test -p fastpath-tables --release --test loom`.

#[cfg(not(loom))]
mod builder;
#[cfg(not(loom))]
pub mod chassis;
#[cfg(not(loom))]
pub mod checksum;
#[cfg(not(loom))]
pub mod layout;
#[cfg(not(loom))]
pub mod ovn;
pub mod protocol;
#[cfg(not(loom))]
mod reader;
#[cfg(not(loom))]
pub mod refusal;
#[cfg(not(loom))]
pub mod sections;
#[cfg(not(loom))]
pub mod shm;
mod sync;
#[cfg(not(loom))]
pub mod validate;
#[cfg(not(loom))]
mod writer;

#[cfg(not(loom))]
pub use builder::{BuildError, SlotBuilder};
#[cfg(not(loom))]
pub use layout::StrRef;
#[cfg(not(loom))]
pub use reader::{Reader, ReaderHandle, ReaderInfo, Snapshot, Summary, CONTROL_ROLE};
#[cfg(not(loom))]
pub use refusal::{RefusalCounters, RefusalReason, RefusedSlot};
#[cfg(not(loom))]
pub use sections::{Port, PortMapEntry, PortMapView, SectionKind, Strings, PORT_FLAG_LOCAL};
#[cfg(not(loom))]
pub use validate::fuzz_validate;
#[cfg(not(loom))]
pub use writer::{TableFile, Writer, WriterOptions};

/// Errors of opening, writing and registering.
#[cfg(not(loom))]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on the table file failed.
    #[error("table file {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a table file of this layout.
    #[error("not a usable table file: {0}")]
    BadFile(&'static str),
    /// The file was written for another ABI version.
    #[error("table file ABI version {found}, this build speaks {expected}")]
    AbiVersion {
        /// Version in the file.
        found: u32,
        /// Version of this build.
        expected: u32,
    },
    /// Another live process is the writer of this file.
    #[error("another writer holds the table file")]
    WriterLocked,
    /// The requested slot capacity does not fit in memory addresses.
    #[error("slot capacity too large")]
    CapacityTooLarge,
    /// The slot image does not fit in a slot; re-create the file larger.
    #[error("slot needs {needed} bytes but the file's slots hold {capacity}")]
    SlotTooLarge {
        /// Bytes needed.
        needed: usize,
        /// Slot capacity of the file.
        capacity: usize,
    },
    /// Live readers did not leave the slot within the publish timeout.
    #[error("readers {readers:?} still use the slot needed for generation {generation}")]
    ReadersBusy {
        /// The generation that could not be published.
        generation: u64,
        /// Indices of the reader entries in the way.
        readers: Vec<usize>,
    },
    /// The generation counter is exhausted.
    #[error("generation counter overflow")]
    GenerationOverflow,
    /// All reader entries are taken.
    #[error("no free reader entry")]
    ReaderAreaFull,
    /// A read-only reader cannot register.
    #[error("the table file is mapped read-only")]
    ReadOnly,
    /// The writer kept publishing while a reader registered.
    #[error("the writer kept moving while registering")]
    Contended,
    /// The writer reclaimed this reader's entry (it looked dead).
    #[error("the reader entry was reclaimed by the writer")]
    Reclaimed,
    /// A reader tried to acknowledge a generation not yet published.
    #[error("ack of generation {generation} but only {published} is published")]
    AckAhead {
        /// Generation given.
        generation: u64,
        /// Generation published.
        published: u64,
    },
}
