//! The publish / acknowledge / reuse protocol over two slots.
//!
//! Owns the atomic control words that live in the file header (current
//! generation, the two slot descriptors, the reader entries) and the exact
//! order in which the writer and the readers touch them. It must not touch
//! slot contents, the mapping, clocks or processes: that keeps it small enough
//! to be model-checked with loom (`--cfg loom` swaps the atomics, see
//! `sync`), and the real writer and reader call these same functions.
//!
//! # Rules
//!
//! * Generation `g` always lives in slot `g % 2`; generation 0 means "nothing
//!   published".
//! * A reader entry's `generation` (its acknowledgement, *ack*) is the oldest
//!   generation that reader may still be using. Once established, an ack `a`
//!   keeps the writer from publishing beyond `a + 1`, so both `a` and `a + 1`
//!   are safe for that reader to read.
//! * Writer, publishing `next` into slot `s = next % 2`:
//!   1. [`PublishState::claim_slot`]: `slots[s].generation = 0` (SeqCst);
//!   2. wait until no live reader [`ReaderEntry::blocks`] `next`, i.e. every
//!      live ack is `>= next - 1` (every reader has left slot `s`);
//!   3. write and checksum the slot;
//!   4. [`PublishState::commit`]: descriptor fields, then
//!      `slots[s].generation = next` (Release), then `generation = next`.
//! * Reader registering ([`PublishState::establish`]): load `g`, store
//!   `ack = g` (SeqCst), then load `slots[g % 2].generation` (SeqCst); retry if
//!   it is no longer `g`. Steps 1–2 of the writer and this form a Dekker pair:
//!   each side stores, issues a `SeqCst` fence, then loads, so either the
//!   reader sees the claim (and retries on the newer generation) or the writer
//!   sees the ack (and waits). (Fences rather than `SeqCst` accesses alone:
//!   that is what C11 and loom both guarantee.)

use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};

/// How many times a reader retries when the writer moves under it.
pub const PIN_ATTEMPTS: u32 = 64;

/// The slot that holds generation `generation`.
#[inline]
pub fn slot_of(generation: u64) -> usize {
    (generation & 1) as usize
}

/// One of the two slot descriptors in the file header.
#[repr(C)]
#[derive(Debug)]
pub struct SlotDescriptor {
    /// Generation held by the slot; 0 while being written or never written.
    pub(crate) generation: AtomicU64,
    /// Bytes used in the slot (header, table of contents and sections).
    pub(crate) length: AtomicU64,
    /// Checksum of the slot bytes, equal to the one in the slot header.
    pub(crate) checksum: AtomicU64,
    /// Wall-clock publish time, nanoseconds since the Unix epoch.
    pub(crate) publish_time_ns: AtomicU64,
}

/// The control words of the protocol: current generation and slot descriptors.
#[repr(C)]
#[derive(Debug)]
pub struct PublishState {
    /// The last published generation (0: nothing yet).
    pub(crate) generation: AtomicU64,
    /// The slot that holds it; always `slot_of(generation)`, kept for tools.
    pub(crate) current_slot: AtomicU64,
    /// The two slot descriptors.
    pub(crate) slots: [SlotDescriptor; 2],
}

/// One reader's entry in the reader area: one cache line in the file.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct ReaderEntry {
    /// 0: free; otherwise the registration token of the owner.
    pub(crate) owner: AtomicU64,
    /// The oldest generation this reader may still use (its ack).
    pub(crate) generation: AtomicU64,
    /// Last sign of life, CLOCK_MONOTONIC nanoseconds.
    pub(crate) heartbeat_ns: AtomicU64,
    /// When the entry was registered, CLOCK_MONOTONIC nanoseconds.
    pub(crate) registered_ns: AtomicU64,
    /// Process id of the owner.
    pub(crate) pid: AtomicU32,
    /// Free-form role tag chosen by the owner (e.g. lcore id + 1, 0 = control).
    pub(crate) role: AtomicU32,
    pub(crate) _reserved: [AtomicU64; 3],
}

/// Where a reader may read the current generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedSlot {
    /// The generation.
    pub generation: u64,
    /// The slot holding it.
    pub slot: usize,
    /// Bytes used in the slot, from the descriptor.
    pub length: u64,
    /// Checksum from the descriptor.
    pub checksum: u64,
    /// Wall-clock publish time from the descriptor.
    pub publish_time_ns: u64,
}

/// Outcome of trying to find a readable slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// The slot is safe to read while the reader's ack stays where it is.
    Pinned(PinnedSlot),
    /// No generation has been published into this file (or the file carried a
    /// generation over from a replaced file, without its contents).
    NotPublished,
    /// The writer kept moving for [`PIN_ATTEMPTS`] attempts.
    Contended,
    /// The reader's entry was reclaimed by the writer (it looked dead), or the
    /// generation ran ahead of the ack, which only a reclaimed entry allows.
    Reclaimed,
}

#[cfg(loom)]
fn spin() {
    loom::thread::yield_now();
}
#[cfg(not(loom))]
fn spin() {
    std::hint::spin_loop();
}

impl SlotDescriptor {
    /// An empty descriptor.
    pub fn new() -> Self {
        Self {
            generation: AtomicU64::new(0),
            length: AtomicU64::new(0),
            checksum: AtomicU64::new(0),
            publish_time_ns: AtomicU64::new(0),
        }
    }
}

impl Default for SlotDescriptor {
    fn default() -> Self {
        Self::new()
    }
}

impl PublishState {
    /// A state with nothing published (for models and tests; in a file the
    /// zero-filled bytes are the same thing).
    pub fn new() -> Self {
        Self {
            generation: AtomicU64::new(0),
            current_slot: AtomicU64::new(0),
            slots: [SlotDescriptor::new(), SlotDescriptor::new()],
        }
    }

    /// The last published generation (cheap; poll it).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Writer step 1: announce that the slot for `next` is being rewritten.
    /// Returns the slot index.
    pub fn claim_slot(&self, next: u64) -> usize {
        let slot = slot_of(next);
        self.slots[slot].generation.store(0, Ordering::SeqCst);
        // Dekker with `establish`: the claim is globally visible before the
        // writer loads any reader ack.
        fence(Ordering::SeqCst);
        slot
    }

    /// Writer step 4: make generation `next`, already written in `slot`, the
    /// current one.
    pub fn commit(&self, slot: usize, next: u64, length: u64, checksum: u64, publish_time_ns: u64) {
        let descriptor = &self.slots[slot];
        descriptor.length.store(length, Ordering::Relaxed);
        descriptor.checksum.store(checksum, Ordering::Relaxed);
        descriptor
            .publish_time_ns
            .store(publish_time_ns, Ordering::Relaxed);
        descriptor.generation.store(next, Ordering::Release);
        self.current_slot.store(slot as u64, Ordering::Relaxed);
        self.generation.store(next, Ordering::SeqCst);
    }

    /// Read the descriptor of `generation` if its slot still holds it.
    fn descriptor_of(&self, generation: u64, order: Ordering) -> Option<PinnedSlot> {
        let slot = slot_of(generation);
        let descriptor = &self.slots[slot];
        if descriptor.generation.load(order) != generation {
            return None;
        }
        Some(PinnedSlot {
            generation,
            slot,
            length: descriptor.length.load(Ordering::Relaxed),
            checksum: descriptor.checksum.load(Ordering::Relaxed),
            publish_time_ns: descriptor.publish_time_ns.load(Ordering::Relaxed),
        })
    }

    /// Reader, at registration: make `entry`'s ack cover the current
    /// generation (the Dekker handshake with [`Self::claim_slot`]).
    pub fn establish(&self, entry: &ReaderEntry) -> Pin {
        for _ in 0..PIN_ATTEMPTS {
            let generation = self.generation.load(Ordering::SeqCst);
            entry.generation.store(generation, Ordering::SeqCst);
            // Dekker with `claim_slot`: the ack is globally visible before
            // the descriptor is loaded.
            fence(Ordering::SeqCst);
            if generation == 0 {
                if self.generation.load(Ordering::SeqCst) == 0 {
                    return Pin::NotPublished;
                }
            } else if let Some(pinned) = self.descriptor_of(generation, Ordering::SeqCst) {
                return Pin::Pinned(pinned);
            } else if self.generation.load(Ordering::SeqCst) == generation {
                // Stable generation without its slot: carried over, empty.
                return Pin::NotPublished;
            }
            spin();
        }
        Pin::Contended
    }

    /// Reader with an established ack: the current generation, which is safe
    /// to read as long as the ack is not moved past it.
    pub fn pin(&self, entry: &ReaderEntry, token: u64) -> Pin {
        for _ in 0..PIN_ATTEMPTS {
            if entry.owner.load(Ordering::Relaxed) != token {
                return Pin::Reclaimed;
            }
            let generation = self.generation.load(Ordering::Acquire);
            let ack = entry.generation.load(Ordering::Relaxed);
            if generation == 0 {
                return Pin::NotPublished;
            }
            if generation > ack.saturating_add(1) {
                return Pin::Reclaimed;
            }
            if let Some(pinned) = self.descriptor_of(generation, Ordering::Acquire) {
                return Pin::Pinned(pinned);
            }
            // The generation we loaded was already old: the writer has
            // published a newer one and claimed this slot. The claim
            // (acquired above) happened after that publish, so loading the
            // generation again sees the newer one.
            if self.generation.load(Ordering::Acquire) == generation {
                // Stable generation without its slot: carried over, empty.
                return Pin::NotPublished;
            }
            spin();
        }
        Pin::Contended
    }

    /// Without any reader entry (read-only inspection): the descriptor of the
    /// current generation, with no protection at all. The caller must copy
    /// the slot and check the copy.
    pub fn peek(&self) -> Pin {
        let generation = self.generation.load(Ordering::Acquire);
        if generation == 0 {
            return Pin::NotPublished;
        }
        match self.descriptor_of(generation, Ordering::Acquire) {
            Some(pinned) => Pin::Pinned(pinned),
            None => Pin::Contended,
        }
    }
}

impl Default for PublishState {
    fn default() -> Self {
        Self::new()
    }
}

impl ReaderEntry {
    /// A free entry (for models and tests).
    pub fn new() -> Self {
        Self {
            owner: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            heartbeat_ns: AtomicU64::new(0),
            registered_ns: AtomicU64::new(0),
            pid: AtomicU32::new(0),
            role: AtomicU32::new(0),
            _reserved: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Take this entry if it is free. `token` must be non-zero.
    pub fn try_claim(&self, token: u64, pid: u32, role: u32, now_ns: u64) -> bool {
        debug_assert!(token != 0);
        if self
            .owner
            .compare_exchange(0, token, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.pid.store(pid, Ordering::Relaxed);
        self.role.store(role, Ordering::Relaxed);
        self.registered_ns.store(now_ns, Ordering::Relaxed);
        self.heartbeat_ns.store(now_ns, Ordering::Relaxed);
        true
    }

    /// Give the entry back (owner leaving, or writer reclaiming a dead one).
    /// Returns false if the owner changed meanwhile.
    pub fn release(&self, token: u64) -> bool {
        self.owner
            .compare_exchange(token, 0, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    /// Reader: acknowledge that it no longer uses anything older than
    /// `generation`. Acks only move forward.
    pub fn ack(&self, generation: u64) {
        if generation > self.generation.load(Ordering::Relaxed) {
            self.generation.store(generation, Ordering::SeqCst);
        }
    }

    /// The current owner token (0: free).
    pub fn owner(&self) -> u64 {
        self.owner.load(Ordering::SeqCst)
    }

    /// The acknowledged generation.
    pub fn acked(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Writer: if this entry is live and keeps the slot for `next` busy,
    /// return its owner token and ack.
    pub fn blocks(&self, next: u64) -> Option<(u64, u64)> {
        let owner = self.owner.load(Ordering::SeqCst);
        if owner == 0 {
            return None;
        }
        let ack = self.generation.load(Ordering::SeqCst);
        (ack.saturating_add(1) < next).then_some((owner, ack))
    }
}

impl Default for ReaderEntry {
    fn default() -> Self {
        Self::new()
    }
}
