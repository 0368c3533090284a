//! The per-lcore exact-match flow cache: what the OVN pipeline decided for
//! one microflow (a [`FlowKey`], which carries the receiving port), kept so
//! that the next packets of the flow skip the interpreter. (A miss may
//! still skip it: see [`super::megaflow`], which serves new connections
//! too by issuing a kept verdict's conntrack calls again,
//! [`super::replay`].)
//!
//! Owns the entries, their lookup (an index of cache-line buckets of slot
//! indices, hashed by independent folded multiplies over pairs of the
//! key's thirteen words), the bounded slot array and its replacement policy
//! (clock: a slot used since the hand last passed gets a second chance).
//!
//! # Lookup in stages
//!
//! A lookup is a chain of dependent loads: the bucket, then the slot it
//! names (key and entry), then the entry's outputs. A worker that has a
//! burst of packets breaks the chain across the burst: it hashes every key
//! ([`key_hash`]) and [`FlowCache::prefetch`]es each home bucket, then
//! [`FlowCache::prefetch_slot`]s the slot each bucket names, and only then
//! looks each key up with [`FlowCache::lookup_probed`], so the loads of
//! different packets overlap instead of queueing one after the other. A
//! key's [`Probe`] carries its hash and the slot its bucket named from one
//! stage to the next, so that the lookup reads the bucket only when that
//! slot does not hold the key. The index is ours rather than a general
//! hash table so that a bucket has an address to prefetch: a bucket is one
//! 64-byte cache line of eight (16-bit tag, slot) ways; a key lives in its
//! home bucket, or in its alternate bucket when the home one was full (the
//! home bucket then says so, and only then does a lookup read the
//! alternate). When both are full an entry of the home bucket is evicted.
//! The output of a unicast entry is held inline in the entry
//! ([`Outputs`]), so that its hit reads no heap memory beyond the slot. It
//! must not run the pipeline, touch frames or mbufs, or be shared between
//! lcores: each worker owns one, so nothing here locks.
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
//! packet: the client's zone and the backend's zone). The first hit
//! touches under the connection's shard lock and keeps the connection's
//! [`Stamp`] in the entry; later hits whose packet cannot change the
//! connection (UDP, ICMP, an ACK-only segment of an established TCP
//! connection) touch it without the lock while the stamp holds: one
//! load to compare, plain stores for expiry and counters, one cache line
//! per connection, no atomic read-modify-write. A verdict with an
//! invalid conntrack step is not cached, nor is one whose NAT needs the
//! frame (the quoted header of an ICMP error, an ICMP echo identifier):
//! those go through the interpreter every time. Nor is the verdict of a
//! packet that created a connection its own earlier step had found absent
//! (a new connection's first packet): the next packet finds that
//! connection, so the entry would be stale on first use; the flow is
//! cached from its next packet, and a burst of new connections does not
//! evict established flows. One kind of step without a
//! connection is cached: a zone OVN tracks without ever committing (the
//! egress zone of a router port on a switch with a load balancer), where
//! every packet of an established flow is an uncommitted `trk|new`; a hit
//! re-classifies such a step by a lookup of the tuple it saw (no state is
//! created), so a connection committed there later invalidates the entry. The NAT of a connection is part of
//! the entry's rewrites (addresses and ports of the header), so a hit
//! translates like the connection would. Entries also record the stable
//! keys of the QoS meters (`set_meter`) their packets are policed by.

use fastpath_packet::FlowKey;

use super::ct::CtResult;
use super::interpreter::DropCause;
use super::rewrite::Rewrite;
use crate::conntrack::{ConnId, Dir, Stamp, Tuple};
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
    /// For a step without a connection: the zone's creation count when it
    /// found none (while unchanged, a hit skips the lookup).
    pub zone_commits: Option<u32>,
    /// The connection's stamp when a hit last touched it under its lock
    /// (zero before): while it holds, a hit touches it without the lock
    /// (`Conntrack::touch_fast`).
    pub stamp: Stamp,
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
/// rewrites of the copy sent there, or the uplink and the Geneve header
/// of a copy sent to a remote chassis.
// Laid out in order: what a hit reads first, the logical port (dumps) last.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedOutput {
    /// Port index in the fastpath's configuration (the uplink for a
    /// tunnelled copy).
    pub port: u16,
    /// The copy is encapsulated to a remote chassis.
    pub tunnel: Option<TunnelOut>,
    /// Header rewrites (of the inner frame for a tunnelled copy).
    pub rewrite: Rewrite,
    /// Logical output port index in the program (for dumps).
    pub logical_port: u32,
}

/// The Geneve metadata of a tunnelled output: everything of the outer
/// headers that depends on the flow (addresses and the next hop's MAC
/// come from the remote chassis and the neighbour table when sent, so
/// that a neighbour change needs no revalidation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelOut {
    /// Remote chassis index in the program.
    pub chassis: u16,
    /// The inner flow's hash (the outer UDP source port derives from it).
    pub flow_hash: u32,
    /// VNI: the logical datapath's tunnel key.
    pub vni: u32,
    /// Logical ingress port key.
    pub ingress: u16,
    /// Logical egress port key, or a multicast group key.
    pub egress: u16,
}

/// The outputs of an entry, in emission order: one held inline (unicast,
/// the case that matters for speed), more (a mirror, a flood) in a heap
/// vector. Reads as a slice.
// The inline variant is large on purpose: a unicast hit reads its output
// from the slot it already loaded rather than from the heap. A second
// inline output would add 232 bytes to every slot (712 instead of 480),
// which costs more in cache and TLB reach at 100 000 connections than the
// heap read costs the rare entry with two outputs.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Outputs {
    /// Dropped.
    #[default]
    None,
    /// One output.
    One(CachedOutput),
    /// Two or more.
    Many(Vec<CachedOutput>),
}

impl Outputs {
    /// Appends an output.
    pub fn push(&mut self, output: CachedOutput) {
        *self = match std::mem::take(self) {
            Outputs::None => Outputs::One(output),
            Outputs::One(a) => Outputs::Many(vec![a, output]),
            Outputs::Many(mut v) => {
                v.push(output);
                Outputs::Many(v)
            }
        };
    }

    /// Makes these outputs a copy of `other` in place: a unicast output
    /// is overwritten where it lies, a vector keeps its allocation.
    #[inline]
    pub fn assign(&mut self, other: &Outputs) {
        match (&mut *self, other) {
            (Outputs::One(a), Outputs::One(b)) => *a = *b,
            (Outputs::Many(v), Outputs::Many(w)) => v.clone_from(w),
            _ => *self = other.clone(),
        }
    }

    /// The outputs as a writable slice.
    pub fn as_mut_slice(&mut self) -> &mut [CachedOutput] {
        match self {
            Outputs::None => &mut [],
            Outputs::One(o) => std::slice::from_mut(o),
            Outputs::Many(v) => v,
        }
    }

    /// The outputs as a slice.
    #[inline(always)]
    pub fn as_slice(&self) -> &[CachedOutput] {
        match self {
            Outputs::None => &[],
            Outputs::One(o) => std::slice::from_ref(o),
            Outputs::Many(v) => v,
        }
    }
}

impl std::ops::Deref for Outputs {
    type Target = [CachedOutput];
    #[inline(always)]
    fn deref(&self) -> &[CachedOutput] {
        self.as_slice()
    }
}

impl<'a> IntoIterator for &'a Outputs {
    type Item = &'a CachedOutput;
    type IntoIter = std::slice::Iter<'a, CachedOutput>;
    #[inline(always)]
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl FromIterator<CachedOutput> for Outputs {
    fn from_iter<I: IntoIterator<Item = CachedOutput>>(iter: I) -> Outputs {
        let mut o = Outputs::None;
        for x in iter {
            o.push(x);
        }
        o
    }
}

/// Most connections a [`FastCt`] holds.
pub const FAST_CT: usize = 2;

/// The connections of an entry's conntrack steps with the stamps they had
/// when a hit last checked every step, held in the slot itself: while
/// every stamp holds, a hit touches each connection without its lock
/// (`Conntrack::touch_fast`) and reads no heap memory. Empty (`n == 0`)
/// when the entry has a step without a connection, more than [`FAST_CT`]
/// connections, or a stamp that failed: the hit then checks every step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastCt {
    n: u8,
    conns: [(ConnId, Dir); FAST_CT],
    stamps: [Stamp; FAST_CT],
}

impl FastCt {
    /// The distinct connections of `steps` with their stamps, if every
    /// step has a connection and a stamp and there are at most
    /// [`FAST_CT`].
    pub fn of(steps: &[CachedCt]) -> FastCt {
        let mut f = FastCt::default();
        for s in steps {
            let Some(conn) = s.conn else {
                return FastCt::default();
            };
            if s.stamp == Stamp::default() {
                return FastCt::default();
            }
            let n = usize::from(f.n);
            if f.conns[..n].contains(&conn) {
                continue;
            }
            if n == FAST_CT {
                return FastCt::default();
            }
            f.conns[n] = conn;
            f.stamps[n] = s.stamp;
            f.n += 1;
        }
        f
    }

    /// Whether there is anything to touch.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The connections and their stamps.
    #[inline(always)]
    pub fn iter(&self) -> impl Iterator<Item = ((ConnId, Dir), Stamp)> + '_ {
        let n = usize::from(self.n).min(FAST_CT);
        self.conns[..n]
            .iter()
            .copied()
            .zip(self.stamps[..n].iter().copied())
    }
}

/// What the pipeline decided for one microflow. The fields a hit reads
/// come first (laid out in order), so that they share the slot's first
/// lines with the key.
#[repr(C)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// Program generation it was built from.
    pub generation: u64,
    /// Packets that used it.
    pub hits: u64,
    /// The connections of `ct`, for a hit's lock-free touches.
    pub fast_ct: FastCt,
    /// Outputs, in emission order (empty: dropped).
    pub outputs: Outputs,
    /// Why it drops, when there is no output.
    pub drop: Option<EntryDrop>,
    /// QoS meters every packet is policed by, in order (read only when
    /// the fastpath has meters).
    pub meters: Vec<MeterKey>,
    /// The conntrack operations it depends on, in verdict order (empty:
    /// the pipeline tracked nothing).
    pub ct: Vec<CachedCt>,
    /// When it was (re)built, in the caller's time unit (TSC cycles).
    pub built_at: u64,
}

impl FlowEntry {
    /// Makes this entry a copy of `other` in place: what a slot (or the
    /// miss path's scratch entry) already holds is overwritten where it
    /// lies and its vectors keep their allocations, instead of a copy of
    /// the whole entry being built and moved in.
    #[inline]
    pub fn assign(&mut self, other: &FlowEntry) {
        self.generation = other.generation;
        self.hits = other.hits;
        self.fast_ct = other.fast_ct;
        self.outputs.assign(&other.outputs);
        self.drop = other.drop;
        self.meters.clone_from(&other.meters);
        self.ct.clone_from(&other.ct);
        self.built_at = other.built_at;
    }
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

/// One cached flow. The key comes first so that a hit's key comparison and
/// the entry's head share the lines [`FlowCache::prefetch_slot`] fetches;
/// `referenced`, which every hit writes, and the [`Hints`], which every
/// hit reads, sit on the key's last line rather than on a line of their
/// own at the end. What a unicast IPv4 hit reads (key, hints, generation,
/// hit count, lock-free conntrack touches, the output port and its
/// compiled rewrite) lies in the first [`HOT_BYTES`]; the hash (used when
/// the index is rebuilt) comes last.
///
/// Slots are not aligned to cache lines: consecutive 480-byte slots start
/// at two offsets half a line apart, so a hit reads four or five lines.
/// Aligning them (512 or 576 bytes, always four lines) measured slower at
/// 100 000 connections, probably because 512-byte strides put every
/// slot's hot lines in the same half of the cache sets and 576 bytes made
/// the table a fifth larger.
#[repr(C)]
struct Slot {
    key: FlowKey,
    referenced: bool,
    /// What a hit must know before it reads the entry's cold tail.
    hints: Hints,
    entry: FlowEntry,
    hash: u64,
}

/// Whether an entry has conntrack steps and meters: lists that lie past
/// the bytes of its slot a hit reads, so that a hit of an entry with
/// neither (a stateless, unpoliced flow) does not read their lines to find
/// them empty. Set by [`FlowCache::insert`] and [`FlowCache::replace`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hints {
    /// `ct` is not empty.
    pub tracked: bool,
    /// `meters` is not empty.
    pub metered: bool,
}

impl Hints {
    fn of(e: &FlowEntry) -> Hints {
        Hints {
            tracked: !e.ct.is_empty(),
            metered: !e.meters.is_empty(),
        }
    }
}

/// Bytes at the start of a [`Slot`] that a unicast IPv4 hit reads.
const HOT_BYTES: usize = 240;
// `prefetch_slot` names the lines of the first 256 bytes one by one.
const _: () = assert!(HOT_BYTES > 192 && HOT_BYTES <= 256);

/// An empty slot array with room for `n`, its memory written once so that
/// the kernel backs it at start (with huge pages when they are on) rather
/// than on the miss path as the cache fills.
fn prefaulted_slots(n: usize) -> Vec<Slot> {
    let mut v = Vec::with_capacity(n);
    v.resize_with(n, || Slot {
        key: FlowKey::zeroed(),
        hash: 0,
        entry: FlowEntry::default(),
        referenced: false,
        hints: Hints::default(),
    });
    v.clear();
    v
}

/// Ways of a bucket.
const WAYS: usize = 8;

/// The tag of an empty way.
const EMPTY: u16 = 0;

/// One cache line of the index: eight ways, each a tag (16 bits of the
/// hash, never [`EMPTY`]) and the slot it names.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    /// The ways' tags, way `w` in bits `16 w ..16 w + 16` (one integer, so
    /// that all eight compare at once).
    tags: u128,
    slots: [u32; WAYS],
    /// A key whose home this is went to its alternate bucket (never
    /// cleared before a flush: a lookup then reads one line more).
    spilled: bool,
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        tags: 0,
        slots: [0; WAYS],
        spilled: false,
    };

    /// The tag of way `w`.
    #[inline(always)]
    fn tag(&self, w: usize) -> u16 {
        (self.tags >> (16 * (w % WAYS))) as u16
    }

    /// Sets the tag of way `w`.
    #[inline(always)]
    fn set_tag(&mut self, w: usize, t: u16) {
        let shift = 16 * (w % WAYS);
        self.tags = (self.tags & !(0xffff << shift)) | (u128::from(t) << shift);
    }

    /// The ways whose tag is `t`, as a mask with bit `16 w + 15` set for
    /// way `w`: all eight lanes compared at once (a lane is zero after the
    /// xor exactly when it matched; adding `0x7fff` to its low 15 bits
    /// sets its top bit unless they are zero, and never carries into the
    /// next lane).
    #[inline(always)]
    fn ways_tagged(&self, t: u16) -> u128 {
        const LOW: u128 = 0x7fff_7fff_7fff_7fff_7fff_7fff_7fff_7fff;
        const HIGH: u128 = !LOW;
        let t = u64::from(t) * 0x0001_0001_0001_0001;
        let x = self.tags ^ ((u128::from(t) << 64) | u128::from(t));
        !(((x & LOW) + LOW) | x) & HIGH
    }

    /// The first free way.
    #[inline(always)]
    fn free_way(&self) -> Option<usize> {
        match self.ways_tagged(EMPTY) {
            0 => None,
            m => Some(m.trailing_zeros() as usize / 16),
        }
    }
}

/// A hash's tag: its top 16 bits, never [`EMPTY`].
#[inline(always)]
fn tag(hash: u64) -> u16 {
    ((hash >> 48) as u16) | 1
}

/// A lookup of one key between the stages of a burst: the key's
/// [`key_hash`] and, once [`FlowCache::prefetch_slot`] has read the home
/// bucket, the slot that bucket's first way of the key's tag names. That
/// slot is a guess, which [`FlowCache::lookup_probed`] confirms by
/// comparing keys instead of reading the bucket again: every slot holds an
/// indexed entry or none, so a slot holding the key is the key's entry,
/// whatever happened to the index in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The key's [`key_hash`].
    pub hash: u64,
    /// The slot named, or [`Probe::NO_SLOT`].
    slot: u32,
}

impl Probe {
    /// No slot named (yet).
    const NO_SLOT: u32 = u32::MAX;

    /// The probe of a key of hash `hash`, before its bucket is read.
    #[inline(always)]
    pub fn new(hash: u64) -> Probe {
        Probe {
            hash,
            slot: Probe::NO_SLOT,
        }
    }

    /// The probe of `key`, before its bucket is read.
    #[inline(always)]
    pub fn of(key: &FlowKey) -> Probe {
        Probe::new(key_hash(key))
    }
}

/// The cache: at most `capacity` entries.
pub struct FlowCache {
    buckets: Vec<Bucket>,
    /// `buckets.len() - 1` (a power of two less one).
    mask: usize,
    slots: Vec<Slot>,
    capacity: usize,
    hand: usize,
}

/// The hash the cache indexes a key by: [`FlowKey::hash`] (see
/// [`fastpath_packet::flowkey::hash_words`]), whose low bits pick the home
/// bucket, middle bits the alternate one and top bits the tag.
#[inline(always)]
pub fn key_hash(key: &FlowKey) -> u64 {
    key.hash()
}

/// The flow hash a tunnelled copy of `key` carries (the outer UDP source
/// port derives from it): the top half of [`key_hash`].
#[inline]
pub fn tunnel_flow_hash(key: &FlowKey) -> u32 {
    (key_hash(key) >> 32) as u32
}

/// Whether two keys are equal, compared as words (no call to `memcmp`).
#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    let (a, b) = (a.words(), b.words());
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
        // Eight ways per bucket and a quarter as many buckets as entries:
        // a full cache fills half the ways, and a bucket overflows to its
        // alternate rarely.
        let buckets = capacity.div_ceil(4).next_power_of_two().max(2);
        FlowCache {
            buckets: vec![Bucket::EMPTY; buckets],
            mask: buckets - 1,
            slots: prefaulted_slots(capacity),
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

    /// The home bucket of a hash.
    #[inline(always)]
    fn home(&self, hash: u64) -> usize {
        (hash as usize) & self.mask
    }

    /// The alternate bucket of a hash (never its home).
    #[inline(always)]
    fn alternate(&self, hash: u64) -> usize {
        let home = self.home(hash);
        let alt = ((hash >> 24) as usize) & self.mask;
        if alt == home {
            home ^ 1
        } else {
            alt
        }
    }

    /// Starts loading the index bucket a lookup of `hash` reads first
    /// (stage one of a staged lookup; see the module's `# Lookup in
    /// stages`).
    #[inline(always)]
    pub fn prefetch(&self, hash: u64) {
        if let Some(b) = self.buckets.get(self.home(hash)) {
            crate::dpdk::prefetch(b);
        }
    }

    /// Starts loading the slot (key and entry) that the home bucket names
    /// for the probe's hash, if any, and keeps that slot in the probe
    /// (stage two: the bucket should have arrived).
    #[inline(always)]
    pub fn prefetch_slot(&self, probe: &mut Probe) {
        let Some(b) = self.buckets.get(self.home(probe.hash)) else {
            return;
        };
        let m = b.ways_tagged(tag(probe.hash));
        if m != 0 {
            let w = m.trailing_zeros() as usize / 16 % WAYS;
            probe.slot = b.slots[w];
            if let Some(s) = self.slots.get(b.slots[w] as usize) {
                // The lines a hit reads: the key, the entry's head (its
                // generation, hits and lock-free conntrack touches) and
                // the first output with its compiled rewrite.
                // The addresses are taken, not read: reading the outputs'
                // variant here would wait for the line just asked for.
                let at = s as *const Slot as usize;
                for offset in [0, 64, 128, 192, HOT_BYTES - 1] {
                    crate::dpdk::prefetch_addr(at + offset);
                }
            }
        }
    }

    /// The entry of the slot a probe's tag named
    /// ([`FlowCache::prefetch_slot`]), without comparing keys (a hint for
    /// prefetching what a hit will touch: a tag collision only prefetches
    /// the wrong lines).
    #[inline(always)]
    pub fn tagged_entry(&self, probe: &Probe) -> Option<&FlowEntry> {
        self.slots.get(probe.slot as usize).map(|s| &s.entry)
    }

    /// The slot of bucket `b` holding `key` (of tag `t`).
    #[inline(always)]
    fn find_in(&self, b: &Bucket, t: u16, key: &FlowKey) -> Option<u32> {
        let mut m = b.ways_tagged(t);
        while m != 0 {
            let i = b.slots[m.trailing_zeros() as usize / 16 % WAYS];
            m &= m - 1;
            if self
                .slots
                .get(i as usize)
                .is_some_and(|s| same_key(&s.key, key))
            {
                return Some(i);
            }
        }
        None
    }

    /// The slot holding `key` (of hash `hash`).
    #[inline(always)]
    fn find(&self, key: &FlowKey, hash: u64) -> Option<u32> {
        let t = tag(hash);
        let home = &self.buckets[self.home(hash)];
        match self.find_in(home, t, key) {
            Some(i) => Some(i),
            None if home.spilled => self.find_in(&self.buckets[self.alternate(hash)], t, key),
            None => None,
        }
    }

    /// Looks `key` up for a packet, against program generation
    /// `generation`; marks the entry used.
    #[inline(always)]
    pub fn lookup(&mut self, key: &FlowKey, generation: u64) -> Lookup {
        self.lookup_probed(key, Probe::of(key), generation)
    }

    /// [`FlowCache::lookup`] of a key whose [`Probe`] is `probe`: the slot
    /// the probe names, when it holds the key, without reading the index
    /// again; else the lookup by hash.
    #[inline(always)]
    pub fn lookup_probed(&mut self, key: &FlowKey, probe: Probe, generation: u64) -> Lookup {
        let named = self
            .slots
            .get(probe.slot as usize)
            .is_some_and(|s| same_key(&s.key, key));
        let found = if named {
            Some(probe.slot)
        } else {
            self.find(key, probe.hash)
        };
        let Some(i) = found else {
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

    /// The entry at a slot, writable (hit counts, conntrack stamps), with
    /// its [`Hints`]. The caller must not empty or fill its `ct` or
    /// `meters` (that is [`FlowCache::replace`]'s job).
    #[inline(always)]
    pub fn entry_mut(&mut self, slot: u32) -> (&mut FlowEntry, Hints) {
        let s = &mut self.slots[slot as usize];
        (&mut s.entry, s.hints)
    }

    /// Replaces the entry of a slot (after revalidation).
    pub fn replace(&mut self, slot: u32, entry: FlowEntry) {
        self.replace_with(slot, |e| *e = entry);
    }

    /// Replaces the entry of a slot by writing it in place with `fill`.
    #[inline]
    pub fn replace_with(&mut self, slot: u32, fill: impl FnOnce(&mut FlowEntry)) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            fill(&mut s.entry);
            s.hints = Hints::of(&s.entry);
        }
    }

    /// Removes slot `slot` from the index (the slot itself stays).
    fn unindex(&mut self, slot: u32) {
        let hash = self.slots[slot as usize].hash;
        let t = tag(hash);
        for b in [self.home(hash), self.alternate(hash)] {
            let bucket = &mut self.buckets[b];
            if let Some(w) = (0..WAYS).find(|&w| bucket.tag(w) == t && bucket.slots[w] == slot) {
                bucket.set_tag(w, EMPTY);
                return;
            }
        }
    }

    /// Installs an entry for `key` (which must not be present). Returns the
    /// slot and whether an entry was evicted to make room.
    pub fn insert(&mut self, key: FlowKey, entry: FlowEntry) -> (u32, bool) {
        self.insert_with(&key, |e| *e = entry)
    }

    /// [`FlowCache::insert`] of the entry `fill` writes in place, into
    /// the slot that takes it (over the evicted entry, if any).
    #[inline]
    pub fn insert_with(&mut self, key: &FlowKey, fill: impl FnOnce(&mut FlowEntry)) -> (u32, bool) {
        let (i, evicted) = self.place(key);
        let s = &mut self.slots[i as usize];
        fill(&mut s.entry);
        s.hints = Hints::of(&s.entry);
        (i, evicted)
    }

    /// Indexes `key` (which must not be present) at a slot, evicting an
    /// entry if there is no room, and gives the slot its key; the caller
    /// writes its entry. Returns the slot and whether an entry was
    /// evicted.
    fn place(&mut self, key: &FlowKey) -> (u32, bool) {
        let hash = key_hash(key);
        let t = tag(hash);
        let home = self.home(hash);
        let alt = self.alternate(hash);
        let set_key = |s: &mut Slot| {
            s.key = *key;
            s.hash = hash;
            s.referenced = false;
        };
        // Where in the index.
        let (b, w) = match self.buckets[home].free_way() {
            Some(w) => (home, w),
            None => match self.buckets[alt].free_way() {
                Some(w) => {
                    self.buckets[home].spilled = true;
                    (alt, w)
                }
                None => {
                    // Both buckets full: the home bucket's first entry not
                    // used since the clock hand passed (else its first)
                    // makes room, and its slot takes the new entry.
                    let bucket = &self.buckets[home];
                    let w = (0..WAYS)
                        .find(|&w| {
                            self.slots
                                .get(bucket.slots[w] as usize)
                                .is_some_and(|s| !s.referenced)
                        })
                        .unwrap_or(0);
                    let i = bucket.slots[w];
                    self.buckets[home].set_tag(w, t);
                    set_key(&mut self.slots[i as usize]);
                    return (i, true);
                }
            },
        };
        let (i, evicted) = if self.slots.len() < self.capacity {
            self.slots.push(Slot {
                key: *key,
                referenced: false,
                hints: Hints::default(),
                entry: FlowEntry::default(),
                hash,
            });
            ((self.slots.len() - 1) as u32, false)
        } else {
            // Clock: skip (and clear) slots used since the hand last passed.
            let victim = loop {
                let h = self.hand;
                self.hand = (self.hand + 1) % self.capacity;
                let s = &mut self.slots[h];
                if s.referenced {
                    s.referenced = false;
                } else {
                    break h as u32;
                }
            };
            self.unindex(victim);
            set_key(&mut self.slots[victim as usize]);
            (victim, true)
        };
        self.buckets[b].set_tag(w, t);
        self.buckets[b].slots[w] = i;
        (i, evicted)
    }

    /// Removes every entry.
    pub fn flush(&mut self) -> usize {
        let n = self.slots.len();
        self.buckets.fill(Bucket::EMPTY);
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
            outputs: Outputs::One(CachedOutput {
                port,
                logical_port: 0,
                rewrite: Rewrite::identity(FlowKey::zeroed()),
                tunnel: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_entry_assigned_in_place_equals_the_one_it_copies() {
        let meter = MeterKey(1);
        let many = FlowEntry {
            outputs: [entry(1, 4).outputs[0], entry(1, 5).outputs[0]]
                .into_iter()
                .collect(),
            meters: vec![meter, meter],
            drop: Some(EntryDrop::RemoteOutport),
            built_at: 9,
            ..entry(3, 0)
        };
        let one = FlowEntry {
            hits: 7,
            ..entry(2, 6)
        };
        let none = FlowEntry::default();
        // Every pair of shapes, each way: one output over two, two over
        // one, none over either, and the vectors' contents replaced.
        for from in [&many, &one, &none] {
            for to in [&many, &one, &none] {
                let mut e = to.clone();
                e.assign(from);
                assert_eq!(&e, from);
            }
        }
    }

    #[test]
    fn an_entry_inserted_in_place_replaces_the_evicted_one() {
        let mut c = FlowCache::new(2);
        let mut evictions = 0;
        for n in 0..20u32 {
            let (slot, evicted) = c.insert_with(&key(n), |e| e.assign(&entry(1, n as u16)));
            evictions += u32::from(evicted);
            assert_eq!(c.lookup(&key(n), 1), Lookup::Hit(slot));
            assert_eq!(c.entry(slot).outputs[0].port, n as u16);
            assert_eq!(c.iter().filter(|(k, _)| **k == key(n)).count(), 1);
            c.replace_with(slot, |e| e.generation = 2);
            assert_eq!(c.lookup(&key(n), 2), Lookup::Hit(slot));
        }
        assert_eq!(c.len(), 2);
        assert_eq!(evictions, 18);
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
    fn hints_follow_the_entry_through_insert_replace_and_eviction() {
        let tracked_metered = || FlowEntry {
            meters: vec![MeterKey(7)],
            ct: vec![CachedCt {
                zone: 1,
                conn: None,
                tuple: Tuple::default(),
                result: CtResult::default(),
                zone_commits: None,
                stamp: Stamp::default(),
            }],
            ..entry(1, 1)
        };
        let mut c = FlowCache::new(1);
        let (slot, _) = c.insert(key(1), tracked_metered());
        let both = Hints {
            tracked: true,
            metered: true,
        };
        assert_eq!(c.entry_mut(slot).1, both);
        c.replace(slot, entry(1, 2));
        assert_eq!(c.entry_mut(slot).1, Hints::default());
        c.replace(
            slot,
            FlowEntry {
                ct: Vec::new(),
                ..tracked_metered()
            },
        );
        assert_eq!(
            c.entry_mut(slot).1,
            Hints {
                tracked: false,
                metered: true
            }
        );
        // A full cache evicts into the same slot: the new entry's hints.
        let (again, evicted) = c.insert(key(2), entry(1, 3));
        assert!(evicted);
        assert_eq!(again, slot);
        assert_eq!(c.entry_mut(again).1, Hints::default());
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

    /// Every entry the slots hold is found through the index, and the
    /// index names nothing else.
    fn assert_index_consistent(c: &mut FlowCache) {
        let keys: Vec<FlowKey> = c.iter().map(|(k, _)| *k).collect();
        for k in &keys {
            assert!(
                matches!(c.lookup(k, 1), Lookup::Hit(_)),
                "an entry the index lost"
            );
        }
        let named: usize = c
            .buckets
            .iter()
            .map(|b| (0..WAYS).filter(|&w| b.tag(w) != EMPTY).count())
            .sum();
        assert_eq!(named, c.len(), "index ways in use");
    }

    #[test]
    fn full_buckets_spill_then_evict_and_stay_consistent() {
        // 64 entries, 16 buckets: 400 keys overflow buckets as well as
        // the slot array.
        let mut c = FlowCache::new(64);
        assert_eq!(c.buckets.len(), 16);
        let mut evictions = 0;
        for n in 0..400 {
            let (slot, evicted) = c.insert(key(n), entry(1, n as u16));
            evictions += usize::from(evicted);
            assert_eq!(c.lookup(&key(n), 1), Lookup::Hit(slot), "key {n} just in");
            assert_eq!(c.entry(slot).outputs[0].port, n as u16);
            assert!(c.len() <= 64);
        }
        assert_eq!(evictions, 400 - c.len());
        assert!(c.buckets.iter().any(|b| b.spilled), "some bucket spilled");
        assert_index_consistent(&mut c);
        let n = c.len();
        assert_eq!(c.flush(), n);
        assert!(c.is_empty());
        assert_index_consistent(&mut c);
        assert!(c.buckets.iter().all(|b| !b.spilled));
    }

    #[test]
    fn a_bucket_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
        assert_eq!(std::mem::align_of::<Bucket>(), 64);
    }

    #[test]
    fn a_unicast_ipv4_hit_reads_only_the_hot_bytes_of_its_slot() {
        use std::mem::offset_of;
        let key = FlowKey::zeroed();
        let slot = Slot {
            key,
            referenced: false,
            hints: Hints::default(),
            entry: FlowEntry {
                outputs: Outputs::One(CachedOutput {
                    port: 0,
                    tunnel: None,
                    rewrite: Rewrite::identity(key),
                    logical_port: 0,
                }),
                ..Default::default()
            },
            hash: 0,
        };
        let Outputs::One(out) = &slot.entry.outputs else {
            unreachable!()
        };
        let at = |p: *const u8| p as usize - &slot as *const Slot as usize;
        let entry = offset_of!(Slot, entry);
        // Everything a hit reads, and where it ends.
        let read = [
            (0, std::mem::size_of::<FlowKey>()),
            (offset_of!(Slot, referenced), 1),
            (offset_of!(Slot, hints), std::mem::size_of::<Hints>()),
            (entry + offset_of!(FlowEntry, generation), 8),
            (entry + offset_of!(FlowEntry, hits), 8),
            (
                entry + offset_of!(FlowEntry, fast_ct),
                std::mem::size_of::<FastCt>(),
            ),
            (at(&out.port as *const u16 as *const u8), 2),
            (
                at(&out.tunnel as *const Option<TunnelOut> as *const u8),
                std::mem::size_of::<Option<TunnelOut>>(),
            ),
            (
                at(&out.rewrite as *const Rewrite as *const u8),
                super::super::rewrite::IPV4_APPLY_BYTES,
            ),
        ];
        let end = read.iter().map(|(o, n)| o + n).max().unwrap_or(0);
        assert!(
            end <= HOT_BYTES,
            "a hit reads {end} bytes of its slot, more than the {HOT_BYTES} prefetched: {read:?}"
        );
    }

    #[test]
    fn bucket_tag_match_is_exact() {
        let mut b = Bucket::EMPTY;
        assert_eq!(b.free_way(), Some(0));
        let tags = [
            0x0001,
            0x8001,
            0x7fff,
            0xffff,
            0x8000 | 1,
            0x0101,
            0x0001,
            0x1235,
        ];
        for (w, t) in tags.iter().enumerate() {
            b.set_tag(w, *t);
        }
        assert_eq!(b.free_way(), None);
        for probe in [
            0x0001u16, 0x8001, 0x7fff, 0xffff, 0x0101, 0x1235, 0x1233, 0x0003,
        ] {
            let m = b.ways_tagged(probe);
            let want: Vec<usize> = (0..WAYS).filter(|&w| tags[w] == probe).collect();
            let got: Vec<usize> = (0..WAYS).filter(|&w| m >> (16 * w + 15) & 1 == 1).collect();
            assert_eq!(got, want, "tag {probe:#x}");
            assert_eq!(
                m & !(0x8000u128 * 0x0001_0001_0001_0001_0001_0001_0001_0001),
                0
            );
        }
        b.set_tag(3, EMPTY);
        assert_eq!(b.free_way(), Some(3));
        assert_eq!(b.tag(2), 0x7fff);
    }

    #[test]
    fn staged_lookup_equals_lookup() {
        let mut c = FlowCache::new(1024);
        for n in 0..300 {
            c.insert(key(n), entry(1, n as u16));
        }
        for n in 0..600 {
            let k = key(n);
            let mut p = Probe::of(&k);
            c.prefetch(p.hash);
            c.prefetch_slot(&mut p);
            assert_eq!(p.slot != Probe::NO_SLOT, n < 300, "key {n}");
            let staged = c.lookup_probed(&k, p, 1);
            assert_eq!(staged, c.lookup(&k, 1), "key {n}");
            assert_eq!(matches!(staged, Lookup::Hit(_)), n < 300);
        }
    }

    /// A probe staged before the cache changed: a slot that went to
    /// another key falls back to the index, a flushed one to a miss.
    #[test]
    fn a_stale_probe_is_confirmed_or_ignored() {
        let mut c = FlowCache::new(4);
        for n in 0..4 {
            c.insert(key(n), entry(1, n as u16));
        }
        let mut p0 = Probe::of(&key(0));
        c.prefetch_slot(&mut p0);
        let Lookup::Hit(slot0) = c.lookup_probed(&key(0), p0, 1) else {
            panic!("key 0 is cached");
        };
        assert_eq!(p0.slot, slot0);
        // A probe that names key 0's slot for key 1 finds key 1 by hash.
        let wrong = Probe {
            slot: slot0,
            ..Probe::of(&key(1))
        };
        assert_eq!(c.lookup_probed(&key(1), wrong, 1), c.lookup(&key(1), 1));
        assert!(matches!(c.lookup(&key(1), 1), Lookup::Hit(s) if s != slot0));
        // Evict everything: key 0's old probe now names another key's slot.
        for n in 10..20 {
            c.insert(key(n), entry(1, n as u16));
        }
        assert_eq!(c.lookup_probed(&key(0), p0, 1), c.lookup(&key(0), 1));
        c.flush();
        assert_eq!(c.lookup_probed(&key(0), p0, 1), Lookup::Miss);
    }

    #[test]
    fn outputs_inline_then_spill() {
        let out = |port| CachedOutput {
            port,
            logical_port: u32::from(port),
            rewrite: Rewrite::identity(FlowKey::zeroed()),
            tunnel: None,
        };
        let mut o = Outputs::default();
        assert!(o.is_empty());
        o.push(out(1));
        assert!(matches!(o, Outputs::One(_)));
        o.push(out(2));
        assert!(matches!(o, Outputs::Many(_)));
        o.push(out(3));
        o.push(out(4));
        assert!(matches!(o, Outputs::Many(_)));
        let ports: Vec<u16> = (&o).into_iter().map(|x| x.port).collect();
        assert_eq!(ports, [1, 2, 3, 4]);
        let back: Outputs = o.iter().copied().collect();
        assert_eq!(back, o);
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
