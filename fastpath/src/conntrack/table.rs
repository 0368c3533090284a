//! The shared connection table: shards, entries, lookups, commits with NAT,
//! expiry, flush and listing. See the parent module for the locking scheme.

use super::nat::{NatRange, Rewrite, Translation};
use super::proto::{
    tcp_can_open, tcp_next, tcp_open_state, Dir, L4State, TcpState, TimeoutsNs, Verdict,
};
use super::tuple::{addr_from_bytes, addr_to_bytes, icmp4, icmp6, CtPacket, PacketClass, Tuple};
use super::{ct_state, ConntrackConfig, CtCommit, CtEntryView, CtError, CtFilter, CtResult};
use crate::dpdk::HugeArena;
use allocator_api2::vec::Vec as ArenaVec;
use fastpath_packet::ip_proto;
use fastpath_packet::tcp::flags as tcpf;
use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Stable identity of a connection: its slot and the slot's incarnation. A
/// flow cache keeps it and hands it to [`Conntrack::touch`], which answers
/// `None` once the connection is gone or the slot holds another one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnId {
    slot: u32,
    incarnation: u32,
}

/// (zone, tuple): what the index is keyed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    zone: u16,
    tuple: Tuple,
}

impl Key {
    #[inline]
    fn hash(&self) -> u64 {
        self.tuple.symmetric_hash()
    }
}

/// One index entry: a key and the connection it belongs to. One cache
/// line, on a line boundary, so that a lookup comparing a key and an
/// insert writing one touch a single cold line of the index: unaligned,
/// every 64-byte entry sat 16 bytes into a line (the allocator's
/// alignment) and straddled two.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct KeyRef {
    key: Key,
    hash: u64,
    /// Shard whose slab holds the connection.
    home: u16,
    slot: u32,
    incarnation: u32,
    dir: Dir,
}

#[derive(Clone, Debug)]
struct Entry {
    live: bool,
    incarnation: u32,
    zone: u16,
    orig: Tuple,
    reply: Tuple,
    reply_shard: u16,
    l4: L4State,
    replied: bool,
    nat: u32,
    mark: u32,
    label: u128,
    created: u64,
    /// Bumped whenever what a packet's result depends on changes (protocol
    /// state, `replied`, mark, label): part of the [`Stamp`].
    seq: u32,
}

/// A connection's version as a flow cache last saw it: the slot's
/// incarnation, the entry's change count, and whether (and with which
/// timeout) a packet may refresh it without its shard lock. Zero is no
/// stamp. See [`Conntrack::touch_fast`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stamp(u64);

/// [`Stamp`] bits below the change count.
mod stamp {
    /// Timeout index + 1; 0: every packet takes the lock.
    pub const CLASS: u64 = 0x1f;
    /// TCP (only ACK-only segments keep ESTABLISHED as it is).
    pub const TCP: u64 = 0x20;
    /// A reply was seen (before that, a reply changes the result).
    pub const REPLIED: u64 = 0x40;
}

/// The part of a slot a flow-cache hit writes, outside the shard lock:
/// the [`Stamp`] (written under the lock, with release order), the expiry
/// and the counters. One cache line per slot. Stores into it are plain
/// (relaxed) stores: a lock-free refresh racing with a locked change may
/// leave the longer of two expiries, and two lcores counting the same
/// direction of one connection at the same instant may lose a count.
#[repr(align(64))]
#[derive(Default)]
struct Hot {
    stamp: AtomicU64,
    expires_at: AtomicU64,
    last_seen: AtomicU64,
    packets: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
}

impl Hot {
    #[inline(always)]
    fn expires_at(&self) -> u64 {
        self.expires_at.load(Ordering::Relaxed)
    }

    #[inline(always)]
    fn refresh(&self, now: u64, timeout: u64) {
        self.last_seen.store(now, Ordering::Relaxed);
        self.expires_at
            .store(now.saturating_add(timeout), Ordering::Relaxed);
    }

    #[inline(always)]
    fn count(&self, dir: Dir, len: u32) {
        let d = dir as usize;
        let p = &self.packets[d];
        p.store(p.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        let b = &self.bytes[d];
        b.store(
            b.load(Ordering::Relaxed) + u64::from(len),
            Ordering::Relaxed,
        );
    }

    /// A new connection: its first packet counted in the original direction.
    fn start(&self, now: u64, timeout: u64, len: u32) {
        self.refresh(now, timeout);
        self.packets[0].store(1, Ordering::Relaxed);
        self.packets[1].store(0, Ordering::Relaxed);
        self.bytes[0].store(u64::from(len), Ordering::Relaxed);
        self.bytes[1].store(0, Ordering::Relaxed);
    }

    fn counters(&self) -> ([u64; 2], [u64; 2]) {
        let l = |a: &[AtomicU64; 2]| [a[0].load(Ordering::Relaxed), a[1].load(Ordering::Relaxed)];
        (l(&self.packets), l(&self.bytes))
    }
}

impl Entry {
    fn dead() -> Entry {
        Entry {
            live: false,
            incarnation: 0,
            zone: 0,
            orig: Tuple::default(),
            reply: Tuple::default(),
            reply_shard: 0,
            l4: L4State::Other,
            replied: false,
            nat: 0,
            mark: 0,
            label: 0,
            created: 0,
            seq: 0,
        }
    }

    /// Runs a packet through the entry: state machine, then (with `hot`,
    /// the slot's) refresh, counters and a new stamp if the result
    /// changes. Without `hot` only the state moves (a trace's copy).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        hot: Option<&Hot>,
        dir: Dir,
        flags: u16,
        len: u32,
        now: u64,
        t: &TimeoutsNs,
        count: bool,
    ) -> Verdict {
        let v = match self.l4 {
            L4State::Tcp(st) => tcp_next(st, dir, flags),
            other => Verdict::Valid(other),
        };
        if let Verdict::Valid(st) = v {
            let changed = st != self.l4 || (dir == Dir::Reply && !self.replied);
            self.l4 = st;
            if dir == Dir::Reply {
                self.replied = true;
            }
            if let Some(hot) = hot {
                hot.refresh(now, t.of(st, self.replied));
                if count {
                    hot.count(dir, len);
                }
                if changed {
                    self.changed(hot);
                }
            }
        }
        v
    }

    /// Records a change of what results depend on: a new stamp.
    #[inline]
    fn changed(&mut self, hot: &Hot) {
        self.seq = self.seq.wrapping_add(1);
        hot.stamp.store(self.stamp().0, Ordering::Release);
    }

    /// Sets mark and label under their masks (a new stamp if they change).
    fn set_mark_label(&mut self, hot: &Hot, c: &CtCommit) {
        let mark = (self.mark & !c.mark_mask) | (c.mark & c.mark_mask);
        let label = (self.label & !c.label_mask) | (c.label & c.label_mask);
        if (mark, label) != (self.mark, self.label) {
            self.mark = mark;
            self.label = label;
            self.changed(hot);
        }
    }

    /// The entry's current [`Stamp`].
    fn stamp(&self) -> Stamp {
        let class = match self.l4 {
            L4State::Tcp(TcpState::Established) => {
                stamp::TCP | (TimeoutsNs::index(self.l4, self.replied) as u64 + 1)
            }
            L4State::Udp | L4State::Icmp | L4State::Other => {
                TimeoutsNs::index(self.l4, self.replied) as u64 + 1
            }
            L4State::Tcp(_) => 0,
        };
        let replied = if self.replied { stamp::REPLIED } else { 0 };
        Stamp(
            u64::from(self.incarnation) << 32
                | u64::from(self.seq & 0x00ff_ffff) << 8
                | replied
                | class,
        )
    }

    fn translation(&self, dir: Dir) -> Option<Translation> {
        if self.nat == 0 {
            return None;
        }
        let snat = self.nat & ct_state::SNAT != 0;
        let dnat = self.nat & ct_state::DNAT != 0;
        let rw = |from: ([u8; 16], u16), to: ([u8; 16], u16)| Rewrite {
            from_addr: from.0,
            to_addr: to.0,
            from_port: from.1,
            to_port: to.1,
        };
        let (src, dst) = match dir {
            Dir::Original => (
                snat.then(|| rw(self.orig.src_endpoint(), self.reply.dst_endpoint())),
                dnat.then(|| rw(self.orig.dst_endpoint(), self.reply.src_endpoint())),
            ),
            Dir::Reply => (
                dnat.then(|| rw(self.reply.src_endpoint(), self.orig.dst_endpoint())),
                snat.then(|| rw(self.reply.dst_endpoint(), self.orig.src_endpoint())),
            ),
        };
        Some(Translation {
            src,
            dst,
            proto: self.orig.proto,
            ipv6: self.orig.ipv6,
            related: false,
        })
    }

    fn result(&self, dir: Dir, id: ConnId) -> CtResult {
        let mut state = ct_state::TRK | self.nat;
        state |= if self.replied {
            ct_state::EST
        } else {
            ct_state::NEW
        };
        if dir == Dir::Reply {
            state |= ct_state::RPL;
        }
        CtResult {
            state,
            mark: self.mark,
            label: self.label,
            conn: Some(id),
            nat: self.translation(dir),
            original: Some(self.orig),
        }
    }

    fn related(&self, dir: Dir, id: ConnId) -> CtResult {
        let mut state = ct_state::TRK | ct_state::REL | self.nat;
        if dir == Dir::Reply {
            state |= ct_state::RPL;
        }
        CtResult {
            state,
            mark: self.mark,
            label: self.label,
            conn: Some(id),
            nat: self
                .translation(dir)
                .map(|t| Translation { related: true, ..t }),
            original: Some(self.orig),
        }
    }

    fn reopenable(&self) -> bool {
        matches!(self.l4, L4State::Tcp(TcpState::TimeWait | TcpState::Closed))
    }
}

/// The large arrays (index, entries, [`Hot`] lines) of every shard are
/// carved from one [`HugeArena`], so that huge pages back them whole.
struct Shard {
    index: HashTable<KeyRef, HugeArena>,
    entries: ArenaVec<Entry, HugeArena>,
    free: Vec<u32>,
    live: usize,
    cursor: usize,
}

#[repr(align(64))]
struct ShardCell {
    lock: Mutex<Shard>,
    /// Current incarnation of every slot, readable without the lock: an index
    /// entry whose incarnation differs is stale.
    incarnation: ArenaVec<AtomicU32, HugeArena>,
    /// Address of the shard's entry array (reserved at creation and never
    /// reallocated), for prefetching an entry before taking the lock.
    entries_at: usize,
    /// Every slot's stamp, expiry and counters ([`Hot`]).
    hot: ArenaVec<Hot, HugeArena>,
    /// Where the index keeps its control bytes, and its bucket count less
    /// one, for [`Conntrack::prefetch_key`] (0, 0: unknown).
    index_at: IndexAt,
}

/// Where a shard's index lays out a key's first probe, as hashbrown
/// 0.15 does it: one allocation of the buckets (64 bytes each, bucket `i`
/// ending `i * 64` bytes before the control bytes), then one control byte
/// per bucket plus a group; a key's probe starts at its hash masked by the
/// bucket count. Known only for an index carved from the arena (its block
/// ends where the arena's use did). A guess that went stale (the index
/// grew, or another layout) only prefetches a useless line.
#[derive(Clone, Copy, Default)]
struct IndexAt {
    ctrl: usize,
    mask: usize,
}

/// hashbrown's control-byte group on x86-64 (SSE2): the control array
/// has this many bytes beyond the bucket count.
const INDEX_GROUP: usize = 16;

impl IndexAt {
    fn of(index: &HashTable<KeyRef, HugeArena>, arena_end: usize) -> IndexAt {
        let capacity = index.capacity();
        // A table of 8 buckets or more holds 7/8 of its buckets.
        let buckets = capacity / 7 * 8;
        if arena_end == 0 || buckets < 8 || !buckets.is_power_of_two() {
            return IndexAt::default();
        }
        IndexAt {
            ctrl: arena_end - buckets - INDEX_GROUP,
            mask: buckets - 1,
        }
    }

    /// The control byte and the bucket where a key of hash `h` is probed
    /// first, and where a new one most likely goes.
    #[inline(always)]
    fn prefetch(&self, h: u64) {
        if self.ctrl == 0 {
            return;
        }
        let pos = h as usize & self.mask;
        crate::dpdk::prefetch_addr(self.ctrl + pos);
        crate::dpdk::prefetch_addr(self.ctrl - (pos + 1) * std::mem::size_of::<KeyRef>());
    }
}

/// An empty entry array with room for `n`, its memory written once so that
/// the kernel backs it now (with huge pages when they are on), not on the
/// packet path when the table fills.
fn prefaulted_vec(n: usize, arena: &HugeArena) -> ArenaVec<Entry, HugeArena> {
    let mut v = ArenaVec::with_capacity_in(n, arena.clone());
    v.resize(n, Entry::dead());
    v.clear();
    v
}

/// An empty index with room for `n` keys, prefaulted like
/// [`prefaulted_vec`]: filled with placeholders once, then cleared (which
/// keeps its memory).
fn prefaulted_index(n: usize, arena: &HugeArena) -> HashTable<KeyRef, HugeArena> {
    let mut t = HashTable::with_capacity_in(n, arena.clone());
    let placeholder = KeyRef {
        key: Key {
            zone: 0,
            tuple: Tuple::default(),
        },
        hash: 0,
        home: 0,
        slot: 0,
        incarnation: 0,
        dir: Dir::Original,
    };
    for i in 0..n as u64 {
        // Spread over the whole table (a multiplicative hash of i).
        let hash = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        t.insert_unique(
            hash,
            KeyRef {
                hash,
                ..placeholder
            },
            |k| k.hash,
        );
    }
    t.clear();
    t
}

/// Bytes of a shard's arrays: its entries, [`Hot`] lines and incarnations, and an index
/// for `index_keys` keys as hashbrown lays it out (a power of two of
/// buckets at most 7/8 full, each a key and a control byte, plus a group
/// of control bytes), with room for each array's alignment.
fn shard_bytes(per_shard: usize, index_keys: usize) -> usize {
    let buckets = (index_keys * 8 / 7 + 1).next_power_of_two();
    let index = buckets * (std::mem::size_of::<KeyRef>() + 1) + 64;
    let entries = per_shard * std::mem::size_of::<Entry>();
    let hot = per_shard * std::mem::size_of::<Hot>();
    let incarnation = per_shard * std::mem::size_of::<AtomicU32>();
    index + entries + hot + incarnation + 4 * 64
}

/// An index entry in another shard left to remove after a connection died.
struct Deferred {
    shard: usize,
    hash: u64,
    key: Key,
    home: u16,
    slot: u32,
}

/// The connection tracker shared by all lcores (`Send + Sync`).
pub struct Conntrack {
    shards: Box<[ShardCell]>,
    /// Where the shards' arrays live.
    arena: HugeArena,
    shard_bits: u32,
    per_shard: usize,
    timeouts: TimeoutsNs,
    max_timeout: u64,
    nat_attempts: usize,
    expire_start: AtomicUsize,
    /// Connections created per zone (wrapping), so that a flow cache can
    /// tell that nothing was committed in a zone since it looked.
    zone_commits: Box<[AtomicU32]>,
    /// One bit per zone, set for good once the zone has had a connection
    /// whose reply tuple goes from an address to itself (a client
    /// load-balanced to itself): until then no reply can be a hairpin's.
    self_replies: Box<[AtomicU64]>,
}

/// Spins on `try_lock` a bounded number of times (for a lock taken out of
/// the shard order, which must never block).
const TRY_LOCK_SPINS: usize = 256;

/// Most slots an expiry pass scans under one hold of a shard lock.
const EXPIRE_CHUNK: usize = 128;

enum Create {
    Done(CtResult),
    Retry,
}

impl Conntrack {
    /// A tracker with the given capacity, shard count (rounded up to a power
    /// of two, at most 1024) and timeouts. All memory for entries and index is
    /// reserved here; steady-state operation does not allocate.
    pub fn new(config: &ConntrackConfig) -> Conntrack {
        let shards = config.shards.clamp(1, 1024).next_power_of_two();
        let per_shard = (config.capacity / shards).max(1);
        let index_keys = per_shard * 2 + 8;
        let arena = HugeArena::new(
            shards * shard_bytes(per_shard, index_keys),
            config.huge_pages,
        );
        let cells = (0..shards)
            .map(|_| {
                let entries = prefaulted_vec(per_shard, &arena);
                let entries_at = entries.as_ptr() as usize;
                let index = prefaulted_index(index_keys, &arena);
                let index_at = IndexAt::of(&index, arena.end_of_used());
                ShardCell {
                    index_at,
                    lock: Mutex::new(Shard {
                        index,
                        entries,
                        free: Vec::with_capacity(per_shard),
                        live: 0,
                        cursor: 0,
                    }),
                    incarnation: {
                        let mut inc = ArenaVec::with_capacity_in(per_shard, arena.clone());
                        inc.resize_with(per_shard, || AtomicU32::new(0));
                        inc
                    },
                    entries_at,
                    hot: {
                        let mut hot = ArenaVec::with_capacity_in(per_shard, arena.clone());
                        hot.resize_with(per_shard, Hot::default);
                        hot
                    },
                }
            })
            .collect();
        Conntrack {
            shards: cells,
            arena,
            shard_bits: shards.trailing_zeros(),
            per_shard,
            timeouts: TimeoutsNs::new(&config.timeouts),
            max_timeout: config.timeouts.max_ns(),
            nat_attempts: config.nat_attempts.max(1),
            expire_start: AtomicUsize::new(0),
            zone_commits: (0..=u16::MAX).map(|_| AtomicU32::new(0)).collect(),
            self_replies: (0..=u16::MAX / 64).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Most connections the table holds (the configured capacity rounded
    /// down to a multiple of the shard count, at least one per shard).
    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// The huge-page arena the shards' arrays were carved from (all zero
    /// for a table too small to have one).
    pub fn memory(&self) -> crate::dpdk::ArenaUsage {
        self.arena.usage()
    }

    /// The longest timeout, in ns: no entry outlives its last packet by more.
    pub fn max_timeout_ns(&self) -> u64 {
        self.max_timeout
    }

    #[inline]
    fn shard_of(&self, hash: u64) -> usize {
        (hash >> 40) as usize & (self.shards.len() - 1)
    }

    #[inline]
    fn conn_id(&self, shard: usize, slot: u32, incarnation: u32) -> ConnId {
        ConnId {
            slot: slot << self.shard_bits | shard as u32,
            incarnation,
        }
    }

    /// The shard and slot of connection `id`.
    #[inline(always)]
    fn locate(&self, id: ConnId) -> (usize, usize) {
        (
            (id.slot as usize) & (self.shards.len() - 1),
            (id.slot >> self.shard_bits) as usize,
        )
    }

    /// The shard cell and the hot line of connection `id`'s slot.
    #[inline(always)]
    fn cell_and_hot(&self, id: ConnId) -> Option<(&ShardCell, &Hot)> {
        let (shard, slot) = self.locate(id);
        let cell = self.shards.get(shard)?;
        Some((cell, cell.hot.get(slot)?))
    }

    fn is_stale(&self, kr: &KeyRef) -> bool {
        self.shards[kr.home as usize].incarnation[kr.slot as usize].load(Ordering::Acquire)
            != kr.incarnation
    }

    /// Finds the live, unexpired connection `key` belongs to and runs `f` on
    /// it under its shard's lock.
    #[inline]
    fn with_entry<T>(
        &self,
        key: &Key,
        now: u64,
        f: impl FnOnce(&mut Entry, &Hot, Dir, ConnId) -> T,
    ) -> Option<T> {
        let h = key.hash();
        let s = self.shard_of(h);
        let mut g = self.shards[s].lock.lock();
        let kr = *g.index.find(h, |k| k.key == *key)?;
        let home = kr.home as usize;
        let mut other;
        let shard: &mut Shard = if home == s {
            &mut g
        } else {
            drop(g);
            other = self.shards[home].lock.lock();
            &mut other
        };
        let e = shard.entries.get_mut(kr.slot as usize)?;
        let hot = self.shards[home].hot.get(kr.slot as usize)?;
        if !e.live || e.incarnation != kr.incarnation || hot.expires_at() <= now {
            return None;
        }
        let id = self.conn_id(home, kr.slot, kr.incarnation);
        Some(f(e, hot, kr.dir, id))
    }

    /// `ct` without commit: classifies the packet against zone `zone`,
    /// refreshes the connection and advances its TCP state. A packet of no
    /// connection reports `trk|new` if it could open one (and leaves nothing
    /// behind), else `trk|inv`.
    pub fn lookup(&self, zone: u16, packet: &CtPacket, now: u64) -> CtResult {
        match packet.class {
            PacketClass::Untrackable => CtResult::invalid(),
            PacketClass::IcmpError { inner } => self.related(zone, &inner, now),
            PacketClass::Trackable => {
                let key = Key {
                    zone,
                    tuple: packet.tuple,
                };
                let t = &self.timeouts;
                let found = self.with_entry(&key, now, |e, hot, dir, id| {
                    match e.update(Some(hot), dir, packet.tcp_flags, packet.len, now, t, true) {
                        Verdict::Valid(_) => Some(e.result(dir, id)),
                        Verdict::Invalid => Some(CtResult::invalid()),
                        Verdict::Reopen => None,
                    }
                });
                match found {
                    Some(Some(r)) => r,
                    _ => new_or_invalid(packet),
                }
            }
        }
    }

    /// The connection a packet was already tracked to in this pass of the
    /// pipeline (OVS keeps it with the packet: a second `ct` in the same
    /// zone, after NAT rewrote the headers, acts on the same connection
    /// rather than looking the new headers up). With `commit`, its mark
    /// and label bits are set. No refresh and no state change (the first
    /// `ct` of the pass did that). `None` when the connection is gone.
    pub fn by_id(
        &self,
        id: ConnId,
        dir: Dir,
        commit: Option<&CtCommit>,
        now: u64,
    ) -> Option<CtResult> {
        let (cell, hot) = self.cell_and_hot(id)?;
        let mut g = cell.lock.lock();
        let e = g.entries.get_mut(self.locate(id).1)?;
        if !e.live || e.incarnation != id.incarnation || hot.expires_at() <= now {
            return None;
        }
        if let Some(c) = commit {
            e.set_mark_label(hot, c);
        }
        Some(e.result(dir, id))
    }

    /// What [`Conntrack::lookup`] answers a trackable packet of no
    /// connection: `trk|new` if it could open one, else `trk|inv`.
    pub fn no_connection(packet: &CtPacket) -> CtResult {
        new_or_invalid(packet)
    }

    /// [`Conntrack::lookup`] without side effects: the same classification,
    /// but no refresh, no state change and no counters (for traces).
    pub fn peek(&self, zone: u16, packet: &CtPacket, now: u64) -> CtResult {
        match packet.class {
            PacketClass::Untrackable => CtResult::invalid(),
            PacketClass::IcmpError { inner } => self.related(zone, &inner, now),
            PacketClass::Trackable => {
                let key = Key {
                    zone,
                    tuple: packet.tuple,
                };
                let t = &self.timeouts;
                let found = self.with_entry(&key, now, |e, _, dir, id| {
                    let mut copy = e.clone();
                    match copy.update(None, dir, packet.tcp_flags, packet.len, now, t, false) {
                        Verdict::Valid(_) => Some(copy.result(dir, id)),
                        Verdict::Invalid => Some(CtResult::invalid()),
                        Verdict::Reopen => None,
                    }
                });
                match found {
                    Some(Some(r)) => r,
                    _ => new_or_invalid(packet),
                }
            }
        }
    }

    /// How many connections zone `zone` has had created (wrapping): a
    /// lookup that found no connection gives the same answer for as long
    /// as this does not change.
    #[inline(always)]
    pub fn zone_commits(&self, zone: u16) -> u32 {
        self.zone_commits
            .get(usize::from(zone))
            .map_or(0, |n| n.load(Ordering::Acquire))
    }

    /// Whether zone `zone` ever had a connection whose reply tuple's source
    /// and destination addresses are the same (a hairpinned one). When it
    /// did not, no lookup of a tuple addressed back to its own source can
    /// find a reply there, and `chk_lb_hairpin_reply` needs none.
    #[inline(always)]
    pub fn had_self_replies(&self, zone: u16) -> bool {
        self.self_replies
            .get(usize::from(zone) / 64)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (zone % 64)) != 0)
    }

    /// The address and size of the entry of connection `id`, for a caller
    /// that prefetches what [`Conntrack::touch`] will read (the entry
    /// arrays are reserved whole at creation, so a slot's address never
    /// changes); `None` for a slot outside the table. Computing it reads
    /// nothing.
    #[inline(always)]
    pub fn entry_address(&self, id: ConnId) -> Option<(usize, usize)> {
        let (shard, slot) = self.locate(id);
        self.slot_address(shard, slot)
    }

    /// Starts loading the index lines a lookup of (`zone`, `tuple`) reads
    /// first and an insert of it most likely writes: for a packet that
    /// will probably open a connection, issued while earlier packets of
    /// the burst are worked on. A hint: it reads nothing the program sees.
    #[inline]
    pub fn prefetch_key(&self, zone: u16, tuple: &Tuple) {
        let h = Key {
            zone,
            tuple: *tuple,
        }
        .hash();
        if let Some(cell) = self.shards.get(self.shard_of(h)) {
            cell.index_at.prefetch(h);
        }
    }

    /// The address and size of the entry at `slot` of shard `shard`;
    /// `None` outside the table.
    #[inline(always)]
    fn slot_address(&self, shard: usize, slot: usize) -> Option<(usize, usize)> {
        if slot >= self.per_shard {
            return None;
        }
        let size = std::mem::size_of::<Entry>();
        Some((self.shards.get(shard)?.entries_at + slot * size, size))
    }

    /// The address of the one cache line [`Conntrack::touch_fast`] of
    /// connection `id` reads and writes, for prefetching; `None` for a
    /// slot outside the table.
    #[inline(always)]
    pub fn stamp_address(&self, id: ConnId) -> Option<usize> {
        let (_, hot) = self.cell_and_hot(id)?;
        Some(hot as *const Hot as usize)
    }

    /// The cheap per-packet path of a flow-cache hit: `id` from an earlier
    /// result, `dir` the packet's direction. Refreshes and advances the
    /// connection like [`Conntrack::lookup`]. `None` if the connection is
    /// gone, expired, replaced, or a SYN reopens it (the caller then takes
    /// the slow path); an invalid packet gives `trk|inv`.
    #[inline]
    pub fn touch(
        &self,
        id: ConnId,
        dir: Dir,
        tcp_flags: u16,
        len: u32,
        now: u64,
    ) -> Option<CtResult> {
        self.touch_stamped(id, dir, tcp_flags, len, now)
            .map(|(r, _)| r)
    }

    /// [`Conntrack::touch`], also answering the connection's [`Stamp`]
    /// after the packet (with which later packets may take
    /// [`Conntrack::touch_fast`]).
    #[inline]
    pub fn touch_stamped(
        &self,
        id: ConnId,
        dir: Dir,
        tcp_flags: u16,
        len: u32,
        now: u64,
    ) -> Option<(CtResult, Stamp)> {
        let (cell, hot) = self.cell_and_hot(id)?;
        let mut g = cell.lock.lock();
        let e = g.entries.get_mut(self.locate(id).1)?;
        if !e.live || e.incarnation != id.incarnation || hot.expires_at() <= now {
            return None;
        }
        match e.update(Some(hot), dir, tcp_flags, len, now, &self.timeouts, true) {
            Verdict::Valid(_) => Some((e.result(dir, id), e.stamp())),
            Verdict::Invalid => Some((CtResult::invalid(), Stamp::default())),
            Verdict::Reopen => None,
        }
    }

    /// The per-packet path of an established connection's flow-cache hit,
    /// without the shard lock: true if the connection is still the one
    /// `stamp` (from [`Conntrack::touch_stamped`]) names, unchanged, and
    /// this packet leaves its result as it was (a UDP, ICMP or other
    /// packet, a reply only once one was seen; an ACK-only TCP segment of
    /// an ESTABLISHED connection); then it is refreshed and counted, and
    /// its result is the one seen with the stamp. False: nothing was done,
    /// take [`Conntrack::touch_stamped`].
    #[inline(always)]
    pub fn touch_fast(
        &self,
        id: ConnId,
        dir: Dir,
        tcp_flags: u16,
        len: u32,
        now: u64,
        seen: Stamp,
    ) -> bool {
        let class = seen.0 & stamp::CLASS;
        if class == 0
            || (dir == Dir::Reply && seen.0 & stamp::REPLIED == 0)
            || (seen.0 & stamp::TCP != 0
                && (tcp_flags & (tcpf::SYN | tcpf::FIN | tcpf::RST) != 0
                    || tcp_flags & tcpf::ACK == 0))
        {
            return false;
        }
        let Some((_, hot)) = self.cell_and_hot(id) else {
            return false;
        };
        if hot.stamp.load(Ordering::Acquire) != seen.0 || hot.expires_at() <= now {
            return false;
        }
        hot.refresh(now, self.timeouts.by_index(class as usize - 1));
        hot.count(dir, len);
        true
    }

    fn related(&self, zone: u16, inner: &Tuple, now: u64) -> CtResult {
        let key = Key {
            zone,
            tuple: inner.reverse(),
        };
        self.with_entry(&key, now, |e, _, dir, id| e.related(dir, id))
            .unwrap_or_else(CtResult::invalid)
    }

    /// `ct(commit)`: like [`Conntrack::lookup`], and creates the connection
    /// if there is none (with the NAT of `commit`), then sets mark and label
    /// under their masks. Invalid packets and ICMP errors create nothing and
    /// report as a lookup would. An existing connection keeps its NAT.
    pub fn commit(
        &self,
        zone: u16,
        packet: &CtPacket,
        commit: &CtCommit,
        now: u64,
    ) -> Result<CtResult, CtError> {
        self.commit_from(zone, packet, commit, now, true)
    }

    /// [`Conntrack::commit`] of a packet that a lookup in `zone` found no
    /// connection for, moments before in the same pipeline pass (a new
    /// connection's `ct_next` then `ct_commit`, or `ct_lb_mark`'s own
    /// lookup): the first attempt goes straight to creating the
    /// connection. Creating looks the key up again under its shard's lock
    /// anyway, and when a connection appeared meanwhile (another lcore
    /// committed it) it falls back to updating that one, as `commit` does;
    /// only the lookup that would repeat the caller's is skipped.
    pub fn commit_new(
        &self,
        zone: u16,
        packet: &CtPacket,
        commit: &CtCommit,
        now: u64,
    ) -> Result<CtResult, CtError> {
        self.commit_from(zone, packet, commit, now, false)
    }

    /// [`Conntrack::commit`], whose first attempt looks the key up first
    /// when `look` (later attempts always do).
    fn commit_from(
        &self,
        zone: u16,
        packet: &CtPacket,
        commit: &CtCommit,
        now: u64,
        mut look: bool,
    ) -> Result<CtResult, CtError> {
        match packet.class {
            PacketClass::Untrackable => return Ok(CtResult::invalid()),
            PacketClass::IcmpError { inner } => return Ok(self.related(zone, &inner, now)),
            PacketClass::Trackable => {}
        }
        let key = Key {
            zone,
            tuple: packet.tuple,
        };
        let t = &self.timeouts;
        for _ in 0..4 {
            if look {
                let found = self.with_entry(&key, now, |e, hot, dir, id| {
                    match e.update(Some(hot), dir, packet.tcp_flags, packet.len, now, t, false) {
                        Verdict::Valid(_) => {
                            e.set_mark_label(hot, commit);
                            Some(e.result(dir, id))
                        }
                        Verdict::Invalid => Some(CtResult::invalid()),
                        Verdict::Reopen => None,
                    }
                });
                if let Some(Some(r)) = found {
                    return Ok(r);
                }
            }
            look = true;
            if !can_open(packet) {
                return Ok(CtResult::invalid());
            }
            match self.create(&key, packet, commit, now)? {
                Create::Done(r) => return Ok(r),
                Create::Retry => continue,
            }
        }
        Err(CtError::Contended)
    }

    fn create(&self, key: &Key, p: &CtPacket, c: &CtCommit, now: u64) -> Result<Create, CtError> {
        let h = key.hash();
        let s = self.shard_of(h);
        let mut deferred: Option<Deferred> = None;
        let out = self.create_locked(key, h, s, p, c, now, &mut deferred);
        if let Some(d) = deferred {
            self.finish_deferred(d);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn create_locked(
        &self,
        key: &Key,
        h: u64,
        s: usize,
        p: &CtPacket,
        c: &CtCommit,
        now: u64,
        deferred: &mut Option<Deferred>,
    ) -> Result<Create, CtError> {
        let mut gs = self.shards[s].lock.lock();
        // An entry for this key: stale, expired, closed (a SYN reopens it),
        // or live (someone committed meanwhile: retry the update path).
        if let Some(kr) = gs.index.find(h, |k| k.key == *key).copied() {
            if kr.home as usize == s {
                let e = &gs.entries[kr.slot as usize];
                if e.live && e.incarnation == kr.incarnation {
                    let expires_at = self.shards[s].hot[kr.slot as usize].expires_at();
                    if expires_at > now && !(e.reopenable() && p.tuple.proto == ip_proto::TCP) {
                        return Ok(Create::Retry);
                    }
                    *deferred = self.remove_locked(s, &mut gs, kr.slot);
                } else {
                    remove_keyref(&mut gs, &kr);
                }
            } else if self.is_stale(&kr) {
                remove_keyref(&mut gs, &kr);
            } else {
                // A live connection elsewhere answers to this key: let its
                // home shard judge it (expired or closed ones are removed).
                drop(gs);
                self.remove_if_finished(kr.home as usize, kr.slot, kr.incarnation, now);
                return Ok(Create::Retry);
            }
        }
        if gs.free.is_empty() && gs.entries.len() >= self.per_shard {
            return Err(CtError::TableFull);
        }
        let (nat_bits, cands) = self.candidates(key, c)?;
        // A candidate whose shard was busy out of order (another lcore or
        // the expiry pass held it): skipped, but not taken as proof that
        // the candidates are exhausted.
        let mut busy = None;
        for reply in cands.take(self.nat_attempts) {
            let rkey = Key {
                zone: key.zone,
                tuple: reply,
            };
            let rh = rkey.hash();
            let r = self.shard_of(rh);
            if r == s {
                if self.key_free(s, &mut gs, rh, &rkey, now, deferred) {
                    let res = self.insert(s, &mut gs, None, key, h, &rkey, rh, p, c, nat_bits, now);
                    return Ok(Create::Done(res));
                }
                continue;
            }
            let gr = if r > s {
                Some(self.shards[r].lock.lock())
            } else {
                (0..TRY_LOCK_SPINS).find_map(|_| {
                    let g = self.shards[r].lock.try_lock();
                    if g.is_none() {
                        std::hint::spin_loop();
                    }
                    g
                })
            };
            let Some(mut gr) = gr else {
                busy = Some(r);
                continue;
            };
            if self.key_free(r, &mut gr, rh, &rkey, now, &mut None) {
                let res = self.insert(
                    s,
                    &mut gs,
                    Some((r, &mut gr)),
                    key,
                    h,
                    &rkey,
                    rh,
                    p,
                    c,
                    nat_bits,
                    now,
                );
                return Ok(Create::Done(res));
            }
        }
        if let Some(r) = busy {
            // Wait for the busy shard without holding ours (no nesting out
            // of order), then start over: its holder is gone by then.
            drop(gs);
            drop(self.shards[r].lock.lock());
            return Ok(Create::Retry);
        }
        Err(if nat_bits != 0 {
            CtError::NatExhausted
        } else {
            CtError::TupleConflict
        })
    }

    /// True if no live connection holds `key` in shard `idx` (stale index
    /// entries and expired connections of this shard are cleared on the way).
    fn key_free(
        &self,
        idx: usize,
        g: &mut MutexGuard<'_, Shard>,
        h: u64,
        key: &Key,
        now: u64,
        deferred: &mut Option<Deferred>,
    ) -> bool {
        let Some(kr) = g.index.find(h, |k| k.key == *key).copied() else {
            return true;
        };
        if self.is_stale(&kr) {
            remove_keyref(g, &kr);
            return true;
        }
        if kr.home as usize == idx
            && deferred.is_none()
            && self.shards[idx].hot[kr.slot as usize].expires_at() <= now
        {
            *deferred = self.remove_locked(idx, g, kr.slot);
            return true;
        }
        false
    }

    /// Reply-tuple candidates for a new connection, in the order to try, and
    /// the NAT bits (`snat`/`dnat`) the connection will carry.
    fn candidates(&self, key: &Key, c: &CtCommit) -> Result<(u32, Candidates), CtError> {
        let orig = key.tuple;
        let seed = key.hash();
        let mut bits = 0;
        let mut base = orig;
        let dnat = match &c.dnat {
            Some(d) => Some((d, addr_span(d, orig.ipv6)?)),
            None => None,
        };
        if let Some((d, (lo, n))) = dnat {
            bits |= ct_state::DNAT;
            let a = lo.wrapping_add(spread(seed, n));
            base.dst = a.to_be_bytes();
            if orig.has_ports() {
                if let Some((pl, ph)) = d.ports {
                    let (pl, ph) = (pl.min(ph), pl.max(ph));
                    if !(pl..=ph).contains(&orig.dst_port) {
                        let span = (ph - pl) as u64 + 1;
                        base.dst_port = pl + ((seed >> 16) % span) as u16;
                    }
                }
            }
        }
        if let Some(sn) = &c.snat {
            bits |= ct_state::SNAT;
            let (lo, n) = addr_span(sn, orig.ipv6)?;
            let movable = orig.has_ports() || orig.is_icmp();
            let (pl, ph) = match sn.ports {
                Some((a, b)) => (a.min(b), a.max(b)),
                None if orig.is_icmp() => (1, u16::MAX),
                None => (1024, u16::MAX),
            };
            let span = (ph - pl) as u64 + 1;
            let ports = if movable {
                SnatPorts::Range {
                    first: (sn.ports.is_none() || (pl..=ph).contains(&orig.src_port))
                        .then_some(orig.src_port),
                    low: pl,
                    span,
                    offset: (seed >> 24) % span,
                    // Jump through the range by a stride coprime with its
                    // size: every port is visited once, and a run of taken
                    // ports (around popular original ports) is left after
                    // one probe instead of being walked.
                    stride: coprime_stride(span),
                }
            } else {
                SnatPorts::Fixed(orig.src_port)
            };
            return Ok((
                bits,
                Candidates::Snat {
                    base,
                    addrs: AddrWalk::new(lo, n, seed),
                    ports,
                    port: 0,
                },
            ));
        }
        if let Some((_, (lo, n))) = dnat {
            // DNAT alone: the chosen backend first, then the others of the range.
            return Ok((
                bits,
                Candidates::Dnat {
                    base,
                    addrs: AddrWalk::new(lo, n, seed),
                },
            ));
        }
        Ok((bits, Candidates::Once(Some(orig.reverse()))))
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        s: usize,
        gs: &mut MutexGuard<'_, Shard>,
        gr: Option<(usize, &mut MutexGuard<'_, Shard>)>,
        key: &Key,
        h: u64,
        rkey: &Key,
        rh: u64,
        p: &CtPacket,
        c: &CtCommit,
        nat_bits: u32,
        now: u64,
    ) -> CtResult {
        if let Some(n) = self.zone_commits.get(usize::from(key.zone)) {
            n.fetch_add(1, Ordering::Release);
        }
        if rkey.tuple.src == rkey.tuple.dst {
            let bit = 1 << (key.zone % 64);
            if let Some(w) = self.self_replies.get(usize::from(key.zone) / 64) {
                if w.load(Ordering::Relaxed) & bit == 0 {
                    w.fetch_or(bit, Ordering::Release);
                }
            }
        }
        let slot = match gs.free.pop() {
            Some(i) => i,
            None => {
                gs.entries.push(Entry::dead());
                (gs.entries.len() - 1) as u32
            }
        };
        self.prefetch_next_slot(s, gs);
        let incarnation = self.shards[s].incarnation[slot as usize].load(Ordering::Acquire);
        let l4 = match p.tuple.proto {
            ip_proto::TCP => L4State::Tcp(tcp_open_state(p.tcp_flags)),
            ip_proto::UDP => L4State::Udp,
            _ if p.tuple.is_icmp() => L4State::Icmp,
            _ => L4State::Other,
        };
        let reply_shard = gr.as_ref().map_or(s, |(r, _)| *r);
        let e = Entry {
            live: true,
            incarnation,
            zone: key.zone,
            orig: key.tuple,
            reply: rkey.tuple,
            reply_shard: reply_shard as u16,
            l4,
            replied: false,
            nat: nat_bits,
            mark: c.mark & c.mark_mask,
            label: c.label & c.label_mask,
            created: now,
            seq: 0,
        };
        let id = self.conn_id(s, slot, incarnation);
        let res = e.result(Dir::Original, id);
        let hot = &self.shards[s].hot[slot as usize];
        hot.start(now, self.timeouts.of(l4, false), p.len);
        hot.stamp.store(e.stamp().0, Ordering::Release);
        gs.entries[slot as usize] = e;
        gs.live += 1;
        let kr = KeyRef {
            key: *key,
            hash: h,
            home: s as u16,
            slot,
            incarnation,
            dir: Dir::Original,
        };
        gs.index.insert_unique(h, kr, |k| k.hash);
        let rkr = KeyRef {
            key: *rkey,
            hash: rh,
            dir: Dir::Reply,
            ..kr
        };
        match gr {
            Some((_, g)) => {
                g.index.insert_unique(rh, rkr, |k| k.hash);
            }
            None => {
                gs.index.insert_unique(rh, rkr, |k| k.hash);
            }
        }
        res
    }

    /// Starts loading the lines the shard's next new connection will write
    /// (its entry, stamp line and incarnation), so that the commit after
    /// this one, usually many packets later, does not wait for memory:
    /// a new connection's stores otherwise each wait for a cold line.
    #[inline]
    fn prefetch_next_slot(&self, s: usize, gs: &MutexGuard<'_, Shard>) {
        let next = gs.free.last().map_or(gs.entries.len(), |&i| i as usize);
        let Some((entry, size)) = self.slot_address(s, next) else {
            return;
        };
        let cell = &self.shards[s];
        let mut line = entry & !63;
        while line < entry + size {
            crate::dpdk::prefetch_addr(line);
            line += 64;
        }
        if let Some(hot) = cell.hot.get(next) {
            crate::dpdk::prefetch(hot);
        }
        if let Some(inc) = cell.incarnation.get(next) {
            crate::dpdk::prefetch(inc);
        }
    }

    /// Kills the entry at `slot` of shard `idx` (locked): frees the slot,
    /// bumps its incarnation, removes its index entries in this shard and
    /// returns the one left in another shard.
    fn remove_locked(&self, idx: usize, g: &mut Shard, slot: u32) -> Option<Deferred> {
        let e = g.entries.get_mut(slot as usize)?;
        if !e.live {
            return None;
        }
        e.live = false;
        let inc = e.incarnation;
        e.incarnation = inc.wrapping_add(1);
        self.shards[idx].incarnation[slot as usize].store(e.incarnation, Ordering::Release);
        self.shards[idx].hot[slot as usize]
            .stamp
            .store(0, Ordering::Release);
        let okey = Key {
            zone: e.zone,
            tuple: e.orig,
        };
        let rkey = Key {
            zone: e.zone,
            tuple: e.reply,
        };
        let reply_shard = e.reply_shard as usize;
        let home = idx as u16;
        let matches = |k: &KeyRef, key: &Key| k.key == *key && k.home == home && k.slot == slot;
        if let Ok(o) = g.index.find_entry(okey.hash(), |k| matches(k, &okey)) {
            o.remove();
        }
        g.free.push(slot);
        g.live -= 1;
        if reply_shard == idx {
            if let Ok(o) = g.index.find_entry(rkey.hash(), |k| matches(k, &rkey)) {
                o.remove();
            }
            None
        } else {
            Some(Deferred {
                shard: reply_shard,
                hash: rkey.hash(),
                key: rkey,
                home,
                slot,
            })
        }
    }

    fn finish_deferred(&self, d: Deferred) {
        let mut g = self.shards[d.shard].lock.lock();
        if let Ok(o) = g.index.find_entry(d.hash, |k| {
            k.key == d.key && k.home == d.home && k.slot == d.slot
        }) {
            o.remove();
        }
    }

    fn remove_if_finished(&self, home: usize, slot: u32, incarnation: u32, now: u64) {
        let d = {
            let mut g = self.shards[home].lock.lock();
            let expires_at = self.shards[home]
                .hot
                .get(slot as usize)
                .map_or(0, Hot::expires_at);
            match g.entries.get(slot as usize) {
                Some(e)
                    if e.live
                        && e.incarnation == incarnation
                        && (expires_at <= now || e.reopenable()) =>
                {
                    self.remove_locked(home, &mut g, slot)
                }
                _ => None,
            }
        };
        if let Some(d) = d {
            self.finish_deferred(d);
        }
    }

    /// Removes connections idle past their timeout at `now`, looking at no
    /// more than `budget` slots (over all shards, resuming where the last
    /// call stopped). Returns how many it removed. `expire(now, usize::MAX)`
    /// visits every slot once.
    pub fn expire(&self, now: u64, budget: usize) -> usize {
        let n = self.shards.len();
        let start = self.expire_start.fetch_add(1, Ordering::Relaxed) % n;
        let mut left = budget;
        let mut removed = 0;
        let mut deferred = Vec::new();
        for i in 0..n {
            if left == 0 {
                break;
            }
            let idx = (start + i) % n;
            let mut g = self.shards[idx].lock.lock();
            let scan = left.min(g.entries.len());
            for k in 0..scan {
                // A scan reads two cold lines a slot: every few, hand the
                // lock to an lcore waiting to commit into this shard (fair:
                // to the waiter, not back to this pass).
                if k > 0 && k % EXPIRE_CHUNK == 0 {
                    MutexGuard::unlocked_fair(&mut g, || {});
                }
                let len = g.entries.len();
                let slot = g.cursor % len;
                g.cursor = (slot + 1) % len;
                let e = &g.entries[slot];
                if e.live && self.shards[idx].hot[slot].expires_at() <= now {
                    deferred.extend(self.remove_locked(idx, &mut g, slot as u32));
                    removed += 1;
                }
            }
            left -= scan;
        }
        for d in deferred {
            self.finish_deferred(d);
        }
        removed
    }

    /// Removes every connection `filter` matches; returns how many.
    pub fn flush(&self, filter: &CtFilter) -> usize {
        let mut removed = 0;
        let mut deferred = Vec::new();
        for (idx, cell) in self.shards.iter().enumerate() {
            let mut g = cell.lock.lock();
            for slot in 0..g.entries.len() {
                let e = &g.entries[slot];
                if e.live && filter.matches(e.zone, &e.orig, &e.reply) {
                    deferred.extend(self.remove_locked(idx, &mut g, slot as u32));
                    removed += 1;
                }
            }
        }
        for d in deferred {
            self.finish_deferred(d);
        }
        removed
    }

    /// Up to `limit` connections `filter` matches (expired ones not yet
    /// removed included), for `fastpathctl conntrack`.
    pub fn list(&self, filter: &CtFilter, limit: usize) -> Vec<CtEntryView> {
        let mut out = Vec::new();
        for cell in self.shards.iter() {
            let g = cell.lock.lock();
            for (e, hot) in g
                .entries
                .iter()
                .zip(cell.hot.iter())
                .filter(|(e, _)| e.live)
            {
                if out.len() >= limit {
                    return out;
                }
                if filter.matches(e.zone, &e.orig, &e.reply) {
                    let (packets, bytes) = hot.counters();
                    out.push(CtEntryView {
                        zone: e.zone,
                        original: e.orig,
                        reply: e.reply,
                        state: e.l4.name(),
                        status: e.nat
                            | if e.replied {
                                ct_state::EST
                            } else {
                                ct_state::NEW
                            },
                        mark: e.mark,
                        label: e.label,
                        created: e.created,
                        last_seen: hot.last_seen.load(Ordering::Relaxed),
                        expires_at: hot.expires_at(),
                        packets,
                        bytes,
                    });
                }
            }
        }
        out
    }

    /// Number of connections in the table (expired ones not yet removed
    /// included).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|c| c.lock.lock().live).sum()
    }

    /// True if the table holds no connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn remove_keyref(g: &mut Shard, kr: &KeyRef) {
    if let Ok(o) = g.index.find_entry(kr.hash, |k| {
        k.key == kr.key && k.home == kr.home && k.slot == kr.slot && k.incarnation == kr.incarnation
    }) {
        o.remove();
    }
}

/// First address (as a number over the 16 v4-mapped bytes) and size of a
/// NAT range, checked against the connection's family.
/// `seed` reduced to an offset into a range of `n` (at least one)
/// addresses: a 64-bit division, or none for one address (a 128-bit one
/// is a library call, and most ranges are a single backend or address).
#[inline]
fn spread(seed: u64, n: u128) -> u128 {
    match u64::try_from(n) {
        Ok(1) => 0,
        Ok(n) => u128::from(seed % n),
        // A range wider than the seed: every seed is an offset in it.
        Err(_) => u128::from(seed),
    }
}

/// The offset of the `i`-th address from offset `start` in a range of `n`
/// addresses, wrapping (`start < n`, `i < n`).
#[inline]
fn nth_from(start: u128, i: u128, n: u128) -> u128 {
    let x = start + i;
    if x >= n {
        x - n
    } else {
        x
    }
}

fn addr_span(r: &NatRange, ipv6: bool) -> Result<(u128, u128), CtError> {
    let (a, fa) = addr_to_bytes(r.addr_min);
    let (b, fb) = addr_to_bytes(r.addr_max);
    if fa != ipv6 || fb != ipv6 {
        return Err(CtError::NatFamily);
    }
    let (a, b) = (u128::from_be_bytes(a), u128::from_be_bytes(b));
    let (lo, hi) = (a.min(b), a.max(b));
    Ok((lo, (hi - lo).saturating_add(1)))
}

/// The reply tuples a new connection may take, in the order to try (see
/// [`Conntrack::candidates`]): a plain iterator, so that a commit
/// allocates nothing.
enum Candidates {
    /// No translation: the original tuple reversed.
    Once(Option<Tuple>),
    /// DNAT alone: each destination address `addrs` walks.
    Dnat { base: Tuple, addrs: AddrWalk },
    /// SNAT (after any DNAT of `base`): for each source address `addrs`
    /// walks, every source port `ports` allows.
    Snat {
        base: Tuple,
        addrs: AddrWalk,
        ports: SnatPorts,
        /// The next port of the current address: 0 is `first` (when the
        /// range has one), `i + 1` the `i`-th port of the stride walk.
        port: u64,
    },
}

/// The addresses of a NAT range to try: the chosen one first (`start`
/// from `low`), then the next ones, wrapping, at most `count` in all.
struct AddrWalk {
    low: u128,
    n: u128,
    start: u128,
    count: u128,
    /// How many were passed.
    done: u128,
}

impl AddrWalk {
    /// The walk over a range of `n` addresses from `low`, starting at the
    /// one `seed` picks, at most sixteen.
    fn new(low: u128, n: u128, seed: u64) -> AddrWalk {
        AddrWalk {
            low,
            n,
            start: spread(seed, n),
            count: n.min(16),
            done: 0,
        }
    }

    /// The current address, if the walk is not over.
    fn current(&self) -> Option<[u8; 16]> {
        (self.done < self.count).then(|| {
            self.low
                .wrapping_add(nth_from(self.start, self.done, self.n))
                .to_be_bytes()
        })
    }
}

/// The source ports SNAT may give a connection.
#[derive(Clone, Copy)]
enum SnatPorts {
    /// The original port only (a protocol without ports).
    Fixed(u16),
    /// The original port when the range allows it, then every port of the
    /// range, `stride` apart from `offset`.
    Range {
        first: Option<u16>,
        low: u16,
        span: u64,
        offset: u64,
        stride: u64,
    },
}

impl Iterator for Candidates {
    type Item = Tuple;

    fn next(&mut self) -> Option<Tuple> {
        match self {
            Candidates::Once(t) => t.take(),
            Candidates::Dnat { base, addrs } => {
                let mut t = *base;
                t.dst = addrs.current()?;
                addrs.done += 1;
                Some(t.reverse())
            }
            Candidates::Snat {
                base,
                addrs,
                ports,
                port,
            } => loop {
                let addr = addrs.current()?;
                // The current address's ports are indices 0..=last.
                let last = match *ports {
                    SnatPorts::Fixed(_) => 0,
                    SnatPorts::Range { span, .. } => span,
                };
                if *port > last {
                    addrs.done += 1;
                    *port = 0;
                    continue;
                }
                let i = *port;
                *port += 1;
                let chosen = match *ports {
                    SnatPorts::Fixed(p) => Some(p),
                    SnatPorts::Range { first, .. } if i == 0 => first,
                    SnatPorts::Range {
                        low,
                        span,
                        offset,
                        stride,
                        ..
                    } => Some(low + ((offset + (i - 1) * stride) % span) as u16),
                };
                let Some(p) = chosen else {
                    continue;
                };
                let mut t = *base;
                t.src = addr;
                t.src_port = p;
                return Some(t.reverse());
            },
        }
    }
}

/// A step through `0..span` that visits every value: a large prime when it
/// is coprime with `span`, else 1.
fn coprime_stride(span: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    [40_503u64, 30_011, 20_011, 10_007, 7_919]
        .into_iter()
        .map(|p| p % span)
        .find(|&p| p > 1 && gcd(p, span) == 1)
        .unwrap_or(1)
}

/// True if a packet of no connection may open one: a TCP SYN, any UDP, SCTP
/// or other IP packet, an ICMP echo request.
fn can_open(p: &CtPacket) -> bool {
    let t = &p.tuple;
    match t.proto {
        ip_proto::TCP => tcp_can_open(p.tcp_flags),
        _ if t.is_icmp() => {
            let ty = t.icmp_type();
            (!t.ipv6 && ty == icmp4::ECHO_REQUEST) || (t.ipv6 && ty == icmp6::ECHO_REQUEST)
        }
        _ => true,
    }
}

fn new_or_invalid(p: &CtPacket) -> CtResult {
    if can_open(p) {
        CtResult {
            state: ct_state::TRK | ct_state::NEW,
            ..CtResult::invalid()
        }
    } else {
        CtResult::invalid()
    }
}

/// Formats a tuple like `tcp 10.0.0.1:1234 -> 10.0.0.2:80`.
pub fn format_tuple(t: &Tuple) -> String {
    let a = addr_from_bytes(&t.src, t.ipv6);
    let b = addr_from_bytes(&t.dst, t.ipv6);
    if t.is_icmp() {
        format!("icmp {a} -> {b} id={} type={}", t.src_port, t.icmp_type())
    } else {
        format!("proto={} {a}:{} -> {b}:{}", t.proto, t.src_port, t.dst_port)
    }
}

#[cfg(test)]
impl Conntrack {
    /// The shard a tuple's keys live in.
    pub(super) fn shard_of_tuple(&self, t: &Tuple) -> usize {
        self.shard_of(t.symmetric_hash())
    }

    /// Where in a cache line the index entry of `(zone, t)` starts, if
    /// the index holds it.
    pub(super) fn index_entry_line_offset(&self, zone: u16, t: &Tuple) -> Option<usize> {
        let key = Key { zone, tuple: *t };
        let g = self.shards[self.shard_of(key.hash())].lock.lock();
        let kr = g.index.find(key.hash(), |k| k.key == key)?;
        Some(kr as *const KeyRef as usize % 64)
    }

    /// The reply tuples a commit of `t` in `zone` under `c` would try, in
    /// order, and the NAT bits the connection would carry.
    pub(super) fn candidate_replies(
        &self,
        zone: u16,
        t: &Tuple,
        c: &CtCommit,
    ) -> Result<(u32, Vec<Tuple>), CtError> {
        let (bits, it) = self.candidates(&Key { zone, tuple: *t }, c)?;
        Ok((bits, it.collect()))
    }

    /// Runs `f` while holding shard `idx`'s lock (as an lcore or the expiry
    /// pass would).
    pub(super) fn with_shard_held(&self, idx: usize, f: impl FnOnce()) {
        let _g = self.shards[idx].lock.lock();
        f();
    }
}

#[cfg(test)]
mod index_at_tests {
    use super::*;

    /// The prefetch address rests on hashbrown's layout: checked here
    /// against what the index itself reports, so that a version that lays
    /// its table out otherwise fails this test rather than prefetching
    /// lines nobody reads.
    #[test]
    fn the_index_layout_the_prefetch_assumes_is_hashbrowns() {
        let ct = Conntrack::new(&super::super::ConntrackConfig::default());
        let (base, size) = {
            let m = ct.memory();
            (ct.arena.end_of_used() - m.used, m.size)
        };
        for cell in ct.shards.iter() {
            let at = cell.index_at;
            assert_ne!(at.ctrl, 0);
            let g = cell.lock.lock();
            let buckets = at.mask + 1;
            assert_eq!(g.index.capacity(), buckets / 8 * 7);
            // The allocation: the buckets, then a control byte per bucket
            // and a group, in one block of the arena.
            assert_eq!(
                g.index.allocation_size(),
                buckets * std::mem::size_of::<KeyRef>() + buckets + INDEX_GROUP
            );
            let start = at.ctrl - buckets * std::mem::size_of::<KeyRef>();
            assert_eq!(start % 64, 0);
            assert!(start >= base && at.ctrl + buckets + INDEX_GROUP <= base + size);
        }
        // A small table has no arena, so no address to prefetch.
        let small = Conntrack::new(&super::super::ConntrackConfig {
            capacity: 1000,
            ..Default::default()
        });
        assert!(small.shards.iter().all(|c| c.index_at.ctrl == 0));
    }
}
