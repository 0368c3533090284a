//! The per-lcore exact-match flow cache: what the OVN pipeline decided for
//! one microflow (a [`FlowKey`], which carries the receiving port), kept so
//! that the next packets of the flow skip the interpreter.
//!
//! Owns the entries, their lookup (an open-addressing `hashbrown` table of
//! slot indices, hashed by independent folded multiplies over pairs of the
//! key's thirteen words),
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
//! # Conntrack
//!
//! A verdict that went through `ct_*` actions is cached as one fused entry
//! per established connection: the entry records, for each conntrack
//! operation of the verdict, the connection and direction the engine found
//! and the result the pipeline saw ([`CachedCt`]: `ct_state`, `ct_mark`,
//! `ct_label`). The lcore ([`super::lcore::OvnLcore::decide_tracked`])
//! uses a hit only after it has `touch`ed each connection of the entry
//! (once per connection and direction: the refresh, the TCP state machine
//! and the counters of the connection) and every result came back
//! unchanged (same connection, same state, mark and label); otherwise the
//! packet goes through the interpreter and the entry is replaced, and it
//! counts as a miss. An established connection thus costs one cache hit
//! plus one `touch` per packet and per connection it crosses (a ClusterIP
//! packet: the client's zone and the backend's zone). A verdict with an
//! invalid conntrack step is not cached, nor is one whose NAT needs the
//! frame (the quoted header of an ICMP error, an ICMP echo identifier):
//! those go through the interpreter every time. One kind of step without a
//! connection is cached: a zone OVN tracks without ever committing (the
//! egress zone of a router port on a switch with a load balancer), where
//! every packet of an established flow is an uncommitted `trk|new`; a hit
//! re-classifies such a step by a lookup of the tuple it saw (no state is
//! created), so a connection committed there later invalidates the entry. The NAT of a connection is part of
//! the entry's rewrites (addresses and ports of the header), so a hit
//! translates like the connection would. Entries also record the stable
//! keys of the QoS meters (`set_meter`) their packets are policed by.

use fastpath_packet::FlowKey;
use hashbrown::HashTable;

use super::ct::CtResult;
use super::interpreter::DropCause;
use super::rewrite::Rewrite;
use crate::conntrack::{ConnId, Dir, Tuple};
use crate::meter::MeterKey;

/// One conntrack operation a cached entry depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedCt {
    /// Zone.
    pub zone: u16,
    /// The connection and the packet's direction in it; `None` for a zone
    /// the pipeline tracks without committing (every packet `trk|new`),
    /// re-classified by a lookup of `tuple` on each hit.
    pub conn: Option<(ConnId, Dir)>,
    /// The packet's tuple at this operation.
    pub tuple: Tuple,
    /// What the pipeline saw (a hit is valid while `touch` reports the
    /// same).
    pub result: CtResult,
}

/// Most conntrack operations a cacheable verdict may have.
pub const MAX_CACHED_CT: usize = 8;

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
    /// The conntrack operations it depends on, in verdict order (empty:
    /// the pipeline tracked nothing).
    pub ct: Vec<CachedCt>,
    /// QoS meters every packet is policed by, in order.
    pub meters: Vec<MeterKey>,
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

/// Odd constants (digits of pi and e) that the key's word pairs are mixed
/// with before they are multiplied, one pair per product.
const MIX: [u64; 14] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d1,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
    0xbe54_66cf_34e9_0c6d,
    0xc0ac_29b7_c97c_50dd,
    0x3f84_d5b5_b547_0917,
    0x9216_d5d9_8979_fb1b,
    0xb7e1_5162_8aed_2a6b,
    0xbf71_5880_9cf4_f3c7,
    0x62e7_160f_38b4_da57,
    0xa784_d904_5190_cfef,
    0x324e_7738_926c_fbe5,
];

/// The 128-bit product of two words folded to 64 bits.
#[inline(always)]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let p = u128::from(a).wrapping_mul(u128::from(b));
    (p as u64) ^ ((p >> 64) as u64)
}

/// The key's thirteen 8-byte words.
#[inline(always)]
fn words(key: &FlowKey) -> [u64; FlowKey::LEN / 8] {
    let mut w = [0u64; FlowKey::LEN / 8];
    for (w, b) in w.iter_mut().zip(key.as_bytes().chunks_exact(8)) {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        *w = u64::from_ne_bytes(a);
    }
    w
}

/// The hash of a key: the key's words taken in pairs, each pair mixed with
/// its own constants and multiplied (128-bit product folded to 64), the
/// seven products summed. The products are independent of each other, so
/// they run side by side rather than as one chain of thirteen dependent
/// multiplies; every bit of both factors reaches the middle bits of the
/// product, and the final fold spreads them to the low bits (bucket) and
/// the top bits (hashbrown's control byte).
#[inline(always)]
pub fn key_hash(key: &FlowKey) -> u64 {
    let w = words(key);
    let mut h = folded_multiply(w[12] ^ MIX[12], MIX[13]);
    for i in 0..6 {
        h = h.wrapping_add(folded_multiply(
            w[2 * i] ^ MIX[2 * i],
            w[2 * i + 1] ^ MIX[2 * i + 1],
        ));
    }
    folded_multiply(h, MIX[13])
}

/// Whether two keys are equal, compared as words (no call to `memcmp`).
#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    let (a, b) = (words(a), words(b));
    let mut d = 0u64;
    for i in 0..a.len() {
        d |= a[i] ^ b[i];
    }
    d == 0
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
            slots.get(i as usize).is_some_and(|s| same_key(&s.key, key))
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
                rewrite: Rewrite::identity(FlowKey::zeroed()),
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
