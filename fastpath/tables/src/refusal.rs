//! Why a slot was refused, and how many times.
//!
//! Owns the list of refusal reasons (declared once: the enum, the names and
//! the counters all come from it) and the [`RefusalCounters`]. It must not
//! decide anything: [`crate::validate`] and the reader pick reasons.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! refusal_reasons {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Why a reader refused a slot. Each reason has a counter.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum RefusalReason {
            $($(#[doc = $doc])* $variant,)*
        }

        impl RefusalReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [RefusalReason] = &[$(RefusalReason::$variant,)*];

            /// Stable short name, for counters and logs.
            pub fn name(self) -> &'static str {
                match self {
                    $(RefusalReason::$variant => $name,)*
                }
            }
        }
    };
}

refusal_reasons! {
    /// No generation has been published in this file yet.
    NotPublished => "not_published",
    /// The writer kept replacing the slot while the reader tried to read it.
    Contended => "contended",
    /// The reader's entry was reclaimed by the writer, which took it for dead.
    ReaderReclaimed => "reader_reclaimed",
    /// The slot is shorter than its header, or its length exceeds the slot.
    SlotBounds => "slot_bounds",
    /// The slot does not start with the slot magic.
    BadMagic => "bad_magic",
    /// The slot was written for another ABI version.
    BadVersion => "bad_version",
    /// The slot checksum does not match its bytes.
    BadChecksum => "bad_checksum",
    /// The slot header disagrees with its descriptor in the file header
    /// (generation, length or checksum).
    DescriptorMismatch => "descriptor_mismatch",
    /// The table of contents does not fit in the slot, or is too long.
    TocBounds => "toc_bounds",
    /// A section lies (partly) outside the slot or inside the table of contents.
    SectionBounds => "section_bounds",
    /// A section offset is not a multiple of 8.
    SectionMisaligned => "section_misaligned",
    /// Two sections overlap.
    SectionOverlap => "section_overlap",
    /// Two sections have the same kind.
    DuplicateSection => "duplicate_section",
    /// Element size times count differs from the section length, or a known
    /// kind has the wrong element size.
    ElementSize => "element_size",
    /// A known kind has flags set that this reader does not know.
    UnknownFlags => "unknown_flags",
    /// A string reference points outside the string blob or splits a character.
    BadStringRef => "bad_string_ref",
    /// The string blob is not UTF-8.
    BadUtf8 => "bad_utf8",
    /// The port map is not strictly ascending by fastpath port id (so it
    /// holds a port twice, or cannot be binary-searched).
    PortOrder => "port_order",
    /// The slot does not start on an 8-byte boundary in memory.
    SlotMisaligned => "slot_misaligned",
    /// An OVN section refers outside another section, or holds an unknown
    /// opcode or a field slice outside the logical flow vector.
    OvnReference => "ovn_reference",
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A slot that a reader would not use, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("slot of generation {generation} refused: {reason}{}", section_suffix(*.section))]
pub struct RefusedSlot {
    /// The generation that was refused (0 if unknown).
    pub generation: u64,
    /// Why.
    pub reason: RefusalReason,
    /// The section kind at fault, when one is.
    pub section: Option<u32>,
}

fn section_suffix(section: Option<u32>) -> String {
    section
        .map(|kind| format!(" (section kind {kind})"))
        .unwrap_or_default()
}

impl RefusedSlot {
    /// A refusal not tied to one section.
    pub fn new(generation: u64, reason: RefusalReason) -> Self {
        Self {
            generation,
            reason,
            section: None,
        }
    }
}

/// One counter per [`RefusalReason`].
#[derive(Debug)]
pub struct RefusalCounters {
    counts: Vec<AtomicU64>,
}

impl Default for RefusalCounters {
    fn default() -> Self {
        Self {
            counts: RefusalReason::ALL
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl RefusalCounters {
    /// Count one refusal.
    pub fn record(&self, reason: RefusalReason) {
        if let Some(counter) = self.counts.get(reason as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count for one reason.
    pub fn get(&self, reason: RefusalReason) -> u64 {
        self.counts
            .get(reason as usize)
            .map_or(0, |counter| counter.load(Ordering::Relaxed))
    }

    /// All counters, by name.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        RefusalReason::ALL
            .iter()
            .map(|reason| (reason.name(), self.get(*reason)))
            .collect()
    }

    /// Sum of all counters.
    pub fn total(&self) -> u64 {
        RefusalReason::ALL
            .iter()
            .map(|reason| self.get(*reason))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_counters_count() {
        let mut names: Vec<_> = RefusalReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RefusalReason::ALL.len());
        let counters = RefusalCounters::default();
        counters.record(RefusalReason::BadChecksum);
        counters.record(RefusalReason::BadChecksum);
        assert_eq!(counters.get(RefusalReason::BadChecksum), 2);
        assert_eq!(counters.total(), 2);
        assert!(counters.snapshot().contains(&("bad_checksum", 2)));
    }
}
