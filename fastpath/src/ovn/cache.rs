//! The per-lcore exact-match flow cache: what the OVN pipeline decided for
//! one microflow (a [`FlowKey`], which carries the receiving port), kept so
//! that the next packets of the flow skip the interpreter.
//!
//! Owns the entries, their lookup (an open-addressing `hashbrown` table of
//! slot indices, hashed by a multiply-fold over the key's thirteen words),
//! the bounded slot array and its replacement policy (clock: a slot used
//! since the hand last passed gets a second chance). It must not run the
//! pipeline, touch frames or mbufs, or be shared between lcores: each
//! worker owns one, so nothing here locks.
//!
//! Correctness across table changes: an entry records the program
//! generation it was built from, and the caller re-runs the interpreter for
//! an entry of an older generation before using it ([`FlowCache::lookup`]
//! reports it as [`Lookup::Stale`]), so a table change takes effect on the
//! next packet of every flow.
//!
//! # Conntrack (part 2)
//!
//! Entries are keyed by the packet's headers alone because part 1 runs no
//! `ct_*` action (a flow reaching one is dropped as unsupported). Part 2
//! adds conntrack by splitting a cached flow at its recirculations: the
//! first entry (keyed as now) holds the rewrites up to `ct_next`/`ct_lb`
//! and the conntrack zone; the packet is then looked up in the per-lcore
//! connection table, and a second entry keyed by (flow key, `ct_state`,
//! `ct_mark`/`ct_label` bits the pipeline matched, zone) holds the rest of
//! the pipeline after the recirculation. For established connections the
//! two lookups can be fused into a per-connection entry that points at the
//! conntrack entry directly (its NAT rewrite included), so a hit stays one
//! hash lookup plus the conntrack state update. Entries of both kinds carry
//! the generation and are revalidated the same way.

use fastpath_packet::FlowKey;
use hashbrown::HashTable;

use super::interpreter::DropCause;
use super::rewrite::Rewrite;

/// Why an entry drops its packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryDrop {
    /// The logical pipeline dropped it.
    Pipeline(DropCause),
    /// The pipeline changed a header the fastpath cannot rewrite.
    Rewrite,
    /// Every output port is on another chassis (no local fastpath port).
    RemoteOutport,
}

impl EntryDrop {
    /// The drop reason's counter name.
    pub fn name(self) -> String {
        match self {
            EntryDrop::Pipeline(DropCause::Unsupported(i)) => format!(
                "ovn_unsupported_{}",
                fastpath_tables::ovn::UNSUPPORTED_ACTIONS
                    .get(usize::from(i))
                    .unwrap_or(&"other")
            ),
            EntryDrop::Pipeline(c) => c.name().to_string(),
            EntryDrop::Rewrite => "ovn_rewrite_unsupported".into(),
            EntryDrop::RemoteOutport => "ovn_remote_outport".into(),
        }
    }
}

/// One output of a cached flow: a local fastpath port and the header
/// rewrites of the copy sent there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedOutput {
    /// Port index in the fastpath's configuration.
    pub port: u16,
    /// Logical output port index in the program (for dumps).
    pub logical_port: u32,
    /// Header rewrites.
    pub rewrite: Rewrite,
}

/// What the pipeline decided for one microflow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// Program generation it was built from.
    pub generation: u64,
    /// Outputs, in emission order (empty: dropped).
    pub outputs: Vec<CachedOutput>,
    /// Why it drops, when there is no output.
    pub drop: Option<EntryDrop>,
    /// Packets that used it.
    pub hits: u64,
    /// When it was (re)built, in the caller's time unit (TSC cycles).
    pub built_at: u64,
}

/// Result of a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// An entry of the current generation, at this slot.
    Hit(u32),
    /// An entry of an older generation, at this slot: re-run, then
    /// [`FlowCache::replace`].
    Stale(u32),
    /// No entry.
    Miss,
}

struct Slot {
    hash: u64,
    key: FlowKey,
    entry: FlowEntry,
    referenced: bool,
}

/// The cache: at most `capacity` entries.
pub struct FlowCache {
    table: HashTable<u32>,
    slots: Vec<Slot>,
    capacity: usize,
    hand: usize,
}

const K: u64 = 0x517c_c1b7_2722_0a95;

/// The hash of a key: a multiply-rotate fold over its 8-byte words (as
/// FxHash does) with a final avalanche, so both the low bits (bucket) and
/// the top bits (hashbrown's control byte) depend on every word.
#[inline(always)]
pub fn key_hash(key: &FlowKey) -> u64 {
    let mut h = 0u64;
    for w in key.as_bytes().chunks_exact(8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h.rotate_left(5) ^ u64::from_ne_bytes(b)).wrapping_mul(K);
    }
    let h = (h ^ (h >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

impl FlowCache {
    /// An empty cache of at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> FlowCache {
        let capacity = capacity.max(1);
        FlowCache {
            table: HashTable::with_capacity(capacity),
            slots: Vec::with_capacity(capacity),
            capacity,
            hand: 0,
        }
    }

    /// Maximum number of entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Looks `key` up for a packet, against program generation
    /// `generation`; marks the entry used.
    #[inline(always)]
    pub fn lookup(&mut self, key: &FlowKey, generation: u64) -> Lookup {
        let hash = key_hash(key);
        let slots = &self.slots;
        let Some(&i) = self.table.find(hash, |&i| {
            slots.get(i as usize).is_some_and(|s| s.key == *key)
        }) else {
            return Lookup::Miss;
        };
        let slot = &mut self.slots[i as usize];
        slot.referenced = true;
        if slot.entry.generation == generation {
            Lookup::Hit(i)
        } else {
            Lookup::Stale(i)
        }
    }

    /// The entry at a slot returned by [`FlowCache::lookup`] or
    /// [`FlowCache::insert`].
    #[inline(always)]
    pub fn entry(&self, slot: u32) -> &FlowEntry {
        &self.slots[slot as usize].entry
    }

    /// The entry at a slot, writable (hit counts).
    #[inline(always)]
    pub fn entry_mut(&mut self, slot: u32) -> &mut FlowEntry {
        &mut self.slots[slot as usize].entry
    }

    /// Replaces the entry of a slot (after revalidation).
    pub fn replace(&mut self, slot: u32, entry: FlowEntry) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.entry = entry;
        }
    }

    /// Installs an entry for `key` (which must not be present). Returns the
    /// slot and whether an entry was evicted to make room.
    pub fn insert(&mut self, key: FlowKey, entry: FlowEntry) -> (u32, bool) {
        let hash = key_hash(&key);
        if self.slots.len() < self.capacity {
            let i = self.slots.len() as u32;
            self.slots.push(Slot {
                hash,
                key,
                entry,
                referenced: false,
            });
            let slots = &self.slots;
            self.table
                .insert_unique(hash, i, |&j| slots[j as usize].hash);
            return (i, false);
        }
        // Clock: skip (and clear) slots used since the hand last passed.
        let victim = loop {
            let h = self.hand;
            self.hand = (self.hand + 1) % self.capacity;
            let s = &mut self.slots[h];
            if s.referenced {
                s.referenced = false;
            } else {
                break h;
            }
        };
        let old_hash = self.slots[victim].hash;
        if let Ok(e) = self.table.find_entry(old_hash, |&j| j as usize == victim) {
            e.remove();
        }
        self.slots[victim] = Slot {
            hash,
            key,
            entry,
            referenced: false,
        };
        let slots = &self.slots;
        self.table
            .insert_unique(hash, victim as u32, |&j| slots[j as usize].hash);
        (victim as u32, true)
    }

    /// Removes every entry.
    pub fn flush(&mut self) -> usize {
        let n = self.slots.len();
        self.table.clear();
        self.slots.clear();
        self.hand = 0;
        n
    }

    /// Every entry with its key.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, &FlowEntry)> {
        self.slots.iter().map(|s| (&s.key, &s.entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> FlowKey {
        let mut k = FlowKey::zeroed();
        k.set_in_port((n % 3) as u16);
        let mut src = [0u8; 16];
        src[12..].copy_from_slice(&n.to_be_bytes());
        k.set_src(src);
        k
    }

    fn entry(generation: u64, port: u16) -> FlowEntry {
        FlowEntry {
            generation,
            outputs: vec![CachedOutput {
                port,
                logical_port: 0,
                rewrite: Rewrite {
                    changed: 0,
                    key: FlowKey::zeroed(),
                },
            }],
            ..Default::default()
        }
    }

    #[test]
    fn hit_miss_and_stale_generation() {
        let mut c = FlowCache::new(8);
        assert_eq!(c.lookup(&key(1), 1), Lookup::Miss);
        let (slot, evicted) = c.insert(key(1), entry(1, 4));
        assert!(!evicted);
        assert_eq!(c.lookup(&key(1), 1), Lookup::Hit(slot));
        assert_eq!(c.entry(slot).outputs[0].port, 4);
        assert_eq!(c.lookup(&key(2), 1), Lookup::Miss);
        // A newer generation makes the entry stale until it is replaced.
        assert_eq!(c.lookup(&key(1), 2), Lookup::Stale(slot));
        c.replace(slot, entry(2, 5));
        assert_eq!(c.lookup(&key(1), 2), Lookup::Hit(slot));
        assert_eq!(c.entry(slot).outputs[0].port, 5);
    }

    #[test]
    fn bounded_with_clock_replacement() {
        let mut c = FlowCache::new(4);
        for n in 0..4 {
            c.insert(key(n), entry(1, n as u16));
        }
        // Keys 0 and 1 are in use; 2 and 3 are not.
        assert!(matches!(c.lookup(&key(0), 1), Lookup::Hit(_)));
        assert!(matches!(c.lookup(&key(1), 1), Lookup::Hit(_)));
        let (_, evicted) = c.insert(key(10), entry(1, 10));
        assert!(evicted);
        assert_eq!(c.len(), 4);
        assert_eq!(c.lookup(&key(2), 1), Lookup::Miss, "first unused slot goes");
        for n in [0, 1, 3, 10] {
            assert!(
                matches!(c.lookup(&key(n), 1), Lookup::Hit(_)),
                "key {n} kept"
            );
        }
        // Many more inserts never grow it, and every key inserted last is found.
        for n in 100..200 {
            c.insert(key(n), entry(1, 0));
            assert!(matches!(c.lookup(&key(n), 1), Lookup::Hit(_)));
        }
        assert_eq!(c.len(), 4);
        assert_eq!(c.iter().count(), 4);
        assert_eq!(c.flush(), 4);
        assert_eq!(c.lookup(&key(199), 1), Lookup::Miss);
    }

    #[test]
    fn hash_depends_on_every_word() {
        let base = key_hash(&FlowKey::zeroed());
        for byte in 0..FlowKey::LEN {
            let mut b = [0u8; FlowKey::LEN];
            b[byte] = 1;
            assert_ne!(key_hash(&FlowKey::from_bytes(b)), base, "byte {byte}");
        }
    }
}
