//! One worker lcore's OVN state: its flow cache, its interpreter, the
//! program it forwards with, and the decision for one packet — a cache hit,
//! or on a miss (or a stale entry) a run of the interpreter turned into a
//! [`FlowEntry`] (rewrites per local output port, or a drop reason) that is
//! installed unless it depends on more than the flow key.
//!
//! With a conntrack engine ([`OvnLcore::decide_tracked`]) the `ct_*`
//! actions go to the process's connection table, and a hit on an entry
//! that depends on connections is used only once each of them was touched
//! and reported the state the entry was built with (see the cache's
//! `# Conntrack`). QoS meters met by the pipeline are recorded in the entry
//! for the worker to police every packet with.
//!
//! A worker with a burst decides in stages ([`OvnLcore::decide_hashed`]):
//! it hashes every key and prefetches the cache first, then decides each
//! packet with its precomputed [`Probe`] (hash and the slot its bucket
//! named), and adds the burst's hits to the counters once.
//!
//! Owns the per-packet decision; it must not touch mbufs or devices (the
//! worker applies the decision to the frame) and must not be shared between
//! lcores. Learned MAC bindings leave through a bounded lock-free queue that
//! the control thread drains.

use std::sync::Arc;

use crossbeam::queue::ArrayQueue;
use fastpath_packet::FlowKey;

use super::cache::{
    tunnel_flow_hash, CachedCt, CachedOutput, EntryDrop, FastCt, FlowCache, FlowEntry, Lookup,
    Probe, TunnelOut, MAX_CACHED_CT,
};
use super::ct::{ConntrackHook, CtOpKind, CtResult, NoConntrack};
use super::ct_engine::ConntrackEngine;
use super::interpreter::{Generated, Interpreter, Learned};
use super::megaflow::{KeyMask, Megaflows};
use super::program::Program;
use super::replay::{self, ReplayStep};
use super::rewrite::Rewrite;
use super::vector::FlowVector;
use crate::conntrack::{ct_state, CtPacket, PacketClass, Stamp, Translation};
use crate::meter::MeterKey;
use crate::stats::CacheCounters;

/// A packet an action generated, to be built and sent.
#[derive(Debug, Clone, Copy)]
pub struct GeneratedPacket {
    /// Fastpath port index it leaves through.
    pub port: u16,
    /// What generated it.
    pub kind: Generated,
    /// Its final vector.
    pub vector: FlowVector,
    /// Sent through the tunnel (`port` is then the uplink).
    pub tunnel: Option<TunnelOut>,
}

/// What to do with one packet.
#[derive(Debug)]
pub struct Decision<'a> {
    /// The entry (cached or not).
    pub entry: &'a FlowEntry,
    /// Generated packets (never cached).
    pub generated: &'a [GeneratedPacket],
    /// Conntrack translations to apply to the frame, in order, before the
    /// entry's rewrites (which are relative to the translated headers):
    /// only for packets whose NAT a header rewrite cannot express (ICMP
    /// errors, ICMP echo identifiers), never for a cache hit.
    pub frame_nat: &'a [Translation],
    /// The entry was a cache hit (the caller of
    /// [`OvnLcore::decide_hashed`] counts it).
    pub hit: bool,
    /// The entry has meters (known without reading them).
    metered: bool,
}

impl<'a> Decision<'a> {
    /// The decision of a packet that missed the cache, for `entry`.
    fn missed(
        entry: &'a FlowEntry,
        generated: &'a [GeneratedPacket],
        frame_nat: &'a [Translation],
    ) -> Decision<'a> {
        Decision {
            entry,
            generated,
            frame_nat,
            hit: false,
            metered: !entry.meters.is_empty(),
        }
    }

    /// The QoS meters that police the packet, in order: the entry's,
    /// read only when it has any (they lie past a hit's hot lines).
    #[inline(always)]
    pub fn meters(&self) -> &[MeterKey] {
        if self.metered {
            &self.entry.meters
        } else {
            &[]
        }
    }
}

/// The conntrack side of one packet for [`OvnLcore::decide_tracked`].
pub struct CtInput<'a> {
    /// The lcore's hook over the process's connection table.
    pub engine: &'a mut ConntrackEngine,
    /// The conntrack clock (ns).
    pub now_ns: u64,
    /// The received frame and its layout: a miss summarises an ICMP packet
    /// from it (echo identifier, quoted header; see
    /// `ct_engine::frame_summary`). `None` summarises from the key.
    pub frame: Option<(&'a fastpath_packet::Layout, &'a [u8])>,
    /// IP length of the packet (connection byte counters).
    pub ip_len: u32,
}

/// Per-lcore OVN state.
pub struct OvnLcore {
    /// The flow cache.
    pub cache: FlowCache,
    interpreter: Interpreter,
    program: Option<Arc<Program>>,
    scratch: FlowEntry,
    generated: Vec<GeneratedPacket>,
    frame_nat: Vec<Translation>,
    learned: Arc<ArrayQueue<Learned>>,
    /// Bindings lost because the queue was full.
    pub learned_lost: u64,
    /// The fastpath port of the Geneve uplink, if a tunnel is configured.
    uplink: Option<u16>,
    /// A hit of this burst depended on connections.
    ct_in_burst: bool,
    /// The last burst had such hits: prefetch conntrack state for this one.
    prefetch_ct: bool,
    /// Stateless verdicts under the mask of what they depended on.
    megaflows: Megaflows,
    /// What the previews of megaflow variants found for this packet.
    previewed: replay::Previewed,
    /// The zone of the first conntrack step of the last megaflow whose
    /// replay made a connection: where a flow-cache miss of the next
    /// bursts most likely looks its packet up first.
    new_conn_zone: Option<super::ct::CtZone>,
    /// A megaflow replay of this burst made a connection.
    new_in_burst: bool,
    /// The last burst's did: prefetch index lines for this one's misses.
    prefetch_new: bool,
    /// One stateless verdict a megaflow served in this many goes into
    /// the flow cache (1: every one); see [`OvnLcore::set_insert_one_in`].
    insert_one_in: u32,
    /// The state of the generator that picks them (xorshift64).
    insert_dice: u64,
}

impl OvnLcore {
    /// A cache of `capacity` entries; learned bindings go to `learned`.
    pub fn new(capacity: usize, learned: Arc<ArrayQueue<Learned>>) -> OvnLcore {
        OvnLcore {
            cache: FlowCache::new(capacity),
            interpreter: Interpreter::new(),
            program: None,
            scratch: FlowEntry::default(),
            generated: Vec::new(),
            frame_nat: Vec::new(),
            learned,
            learned_lost: 0,
            uplink: None,
            ct_in_burst: false,
            prefetch_ct: true,
            megaflows: Megaflows::new(0),
            previewed: replay::Previewed::default(),
            new_conn_zone: None,
            new_in_burst: false,
            prefetch_new: false,
            insert_one_in: 1,
            insert_dice: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Keeps up to `capacity` megaflows (0: none; the default).
    pub fn set_megaflows(&mut self, capacity: usize) {
        self.megaflows = Megaflows::new(capacity);
        self.interpreter.consulting = capacity > 0;
    }

    /// Megaflows held now.
    pub fn megaflows(&self) -> usize {
        self.megaflows.len()
    }

    /// Puts into the flow cache only one in `n` (on average) of the
    /// stateless verdicts a megaflow serves, as OVS-DPDK's
    /// `emc-insert-inv-prob` does for its EMC: a flow of many packets is
    /// cached after about `n` of them, and a flood of short flows, each
    /// of which a megaflow serves at a fraction of an insert's cost (the
    /// slot written, an entry evicted), leaves the established flows'
    /// entries in place. Verdicts the interpreter made and verdicts with
    /// conntrack steps are always cached (theirs cost far more to make
    /// again). 0 or 1: every one.
    pub fn set_insert_one_in(&mut self, n: u32) {
        self.insert_one_in = n.max(1);
    }

    /// Whether this stateless, megaflow-served verdict goes into the
    /// cache: true one time in [`OvnLcore::insert_one_in`], picked by a
    /// xorshift generator (a counter would pick the same flows again and
    /// again from traffic that cycles through a multiple of `n` flows).
    #[inline(always)]
    fn insert_this_one(&mut self) -> bool {
        if self.insert_one_in <= 1 {
            return true;
        }
        let mut x = self.insert_dice;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.insert_dice = x;
        // The top 32 bits scaled to 0..n (a multiply, not a division):
        // 0 with probability 1/n.
        ((x >> 32) * u64::from(self.insert_one_in)) >> 32 == 0
    }

    /// A flow-cache miss (or an entry `stale` at its slot, with whether a
    /// generation change made it so) served by the stateless megaflow
    /// `index`: its entry, made for `key`, is written where it is used
    /// (the stale slot, a new slot one time in
    /// [`OvnLcore::set_insert_one_in`], else the scratch entry) rather
    /// than built and moved there.
    #[inline]
    fn serve_stateless(
        &mut self,
        index: u32,
        key: &FlowKey,
        stale: Option<(u32, bool)>,
        now: u64,
        counters: &CacheCounters,
    ) -> Decision<'_> {
        self.generated.clear();
        self.frame_nat.clear();
        counters.megaflow_hits.add(1);
        let insert = stale.is_none() && self.insert_this_one();
        let megaflows = &self.megaflows;
        let fill = |e: &mut FlowEntry| {
            megaflows.fill_for(index, key, e);
            e.built_at = now;
            e.hits = 1;
        };
        match stale {
            Some((slot, by_generation)) => {
                counters.count_rerun(by_generation);
                self.cache.replace_with(slot, fill);
                Decision::missed(self.cache.entry(slot), &self.generated, &self.frame_nat)
            }
            None if insert => {
                counters.misses.add(1);
                let slot = insert_counted(&mut self.cache, key, fill, counters);
                Decision::missed(self.cache.entry(slot), &self.generated, &self.frame_nat)
            }
            None => {
                counters.misses.add(1);
                fill(&mut self.scratch);
                Decision::missed(&self.scratch, &self.generated, &self.frame_nat)
            }
        }
    }

    /// Forgets every megaflow (`fastpathctl flows flush`).
    pub fn flush_megaflows(&mut self) {
        self.megaflows.clear();
    }

    /// Sends copies for ports of remote chassis through the Geneve uplink
    /// `uplink` (a fastpath port index); without one they are dropped as
    /// `ovn_remote_outport`.
    pub fn set_uplink(&mut self, uplink: Option<u16>) {
        self.uplink = uplink;
    }

    /// Takes up a new program (at a burst boundary). Entries of older
    /// generations are revalidated when next used.
    pub fn set_program(&mut self, program: Option<Arc<Program>>) {
        self.program = program;
    }

    /// The program in use.
    pub fn program(&self) -> Option<&Arc<Program>> {
        self.program.as_ref()
    }

    /// The decision for a packet with `key` (whose in-port is the fastpath
    /// port index) and frame length `pkt_len`; `None` when no program is
    /// loaded. `now` stamps new entries. Without a conntrack engine: a
    /// packet reaching a `ct_*` action is dropped as unsupported.
    #[inline]
    pub fn decide(
        &mut self,
        key: &FlowKey,
        pkt_len: u32,
        now: u64,
        counters: &CacheCounters,
    ) -> Option<Decision<'_>> {
        let d = self.decide_hashed(key, Probe::of(key), pkt_len, now, counters, None)?;
        if d.hit {
            counters.hits.add(1);
        }
        Some(d)
    }

    /// [`OvnLcore::decide`] with conntrack: the pipeline's `ct_*` actions
    /// go to `ct.engine`, and a cached entry that depends on connections is
    /// used only when touching them reports the state it was built with.
    #[inline]
    pub fn decide_tracked(
        &mut self,
        key: &FlowKey,
        pkt_len: u32,
        now: u64,
        counters: &CacheCounters,
        ct: CtInput<'_>,
    ) -> Option<Decision<'_>> {
        let d = self.decide_hashed(key, Probe::of(key), pkt_len, now, counters, Some(ct))?;
        if d.hit {
            counters.hits.add(1);
        }
        Some(d)
    }

    /// Stage one of a burst's decisions: starts loading the cache bucket
    /// of a key whose [`super::cache::key_hash`] is `hash`.
    #[inline(always)]
    pub fn prefetch(&self, hash: u64) {
        self.cache.prefetch(hash);
    }

    /// Stage two: starts loading the cache slot the (prefetched) bucket
    /// names for the probe's hash, and keeps the slot in the probe.
    #[inline(always)]
    pub fn prefetch_slot(&self, probe: &mut Probe) {
        self.cache.prefetch_slot(probe);
    }

    /// Whether stage three should prefetch conntrack state: the program
    /// runs conntrack actions and the last burst's hits depended on
    /// connections (stateless traffic skips the two passes).
    #[inline(always)]
    pub fn tracks_connections(&self) -> bool {
        (self.prefetch_ct || self.prefetch_new)
            && self.program.as_ref().is_some_and(|p| p.uses_conntrack)
    }

    /// The zone whose index lines a flow-cache miss prefetches (see
    /// [`OvnLcore::prefetch_ct_first`]): the first conntrack zone of the
    /// last megaflow that made a connection.
    pub fn new_connection_zone(&self) -> Option<super::ct::CtZone> {
        self.new_conn_zone
    }

    /// Ends a burst: what its hits were decides stage three of the next.
    #[inline(always)]
    pub fn end_burst(&mut self) {
        self.prefetch_ct = self.ct_in_burst;
        self.ct_in_burst = false;
        self.prefetch_new = self.new_in_burst;
        self.new_in_burst = false;
    }

    /// Stage three (a): for the entry the (prefetched) slot of `probe`
    /// holds, starts loading what its hit's conntrack touches read: the
    /// stamps of its lock-free connections, else its conntrack steps
    /// (`ct` list). True when it has steps to follow, which
    /// [`OvnLcore::prefetch_conntrack`] does next.
    #[inline(always)]
    pub fn prefetch_ct_first(&self, probe: &Probe, ct: &crate::conntrack::Conntrack) -> bool {
        let Some(e) = self.cache.tagged_entry(probe) else {
            return false;
        };
        if !e.fast_ct.is_empty() {
            for ((id, _), _) in e.fast_ct.iter() {
                if let Some(hot) = ct.stamp_address(id) {
                    crate::dpdk::prefetch_addr(hot);
                }
            }
            return false;
        }
        match e.ct.first() {
            Some(first) => {
                crate::dpdk::prefetch(first);
                true
            }
            None => false,
        }
    }

    /// For a packet without a flow-cache entry (a miss: most likely a new
    /// connection when such packets have lately been), starts loading the
    /// conntrack index lines of its first lookup: the megaflow replay that
    /// will serve it looks its tuple up in that zone, then commits it
    /// there. (The other zones' keys depend on the backend it gets.) The
    /// worker asks this a couple of packets ahead, not for the whole burst
    /// at once: thirty-two packets' index lines at a time left the
    /// prefetches waiting for fill buffers.
    #[inline(always)]
    pub fn prefetch_new_connection(
        &self,
        probe: &Probe,
        key: &FlowKey,
        ct: &crate::conntrack::Conntrack,
    ) {
        let Some(zone) = self.new_conn_zone.filter(|_| self.prefetch_new) else {
            return;
        };
        if self.cache.tagged_entry(probe).is_some() {
            return;
        }
        let p = crate::conntrack::CtPacket::from_key(key);
        if p.class == crate::conntrack::PacketClass::Trackable {
            ct.prefetch_key(zone, &p.tuple);
        }
    }

    /// Stage three (b), for entries without lock-free touches: starts
    /// loading the conntrack entries their steps (prefetched by
    /// [`OvnLcore::prefetch_ct_first`]) name, so that an established
    /// connection's `touch` does not wait for memory.
    #[inline(always)]
    pub fn prefetch_conntrack(&self, probe: &Probe, ct: &crate::conntrack::Conntrack) {
        let Some(e) = self.cache.tagged_entry(probe) else {
            return;
        };
        if !e.fast_ct.is_empty() {
            return;
        }
        for c in &e.ct {
            let Some((id, _)) = c.conn else { continue };
            // With a stamp, a hit touches one line without the lock.
            // Without, it takes the lock (a few lines that stay cached:
            // only the entry is worth a fill buffer).
            if c.stamp != Stamp::default() {
                if let Some(hot) = ct.stamp_address(id) {
                    crate::dpdk::prefetch_addr(hot);
                }
            } else if let Some((entry, size)) = ct.entry_address(id) {
                crate::dpdk::prefetch_addr(entry);
                if size > 64 {
                    crate::dpdk::prefetch_addr(entry + 64);
                }
            }
        }
    }

    /// The decision for a packet whose key's [`Probe`] is `probe`, with
    /// conntrack when `ct` is given: what
    /// [`OvnLcore::decide`] and [`OvnLcore::decide_tracked`] do, except
    /// that a hit is not added to `counters` (the decision says
    /// [`Decision::hit`]; a worker adds a burst's hits at once). Misses,
    /// revalidations and evictions are counted here.
    #[inline(always)]
    pub fn decide_hashed(
        &mut self,
        key: &FlowKey,
        probe: Probe,
        pkt_len: u32,
        now: u64,
        counters: &CacheCounters,
        mut ct: Option<CtInput<'_>>,
    ) -> Option<Decision<'_>> {
        let program = self.program.as_ref()?;
        let generation = program.generation;
        // (slot, whether a generation change made it stale)
        let stale = match self.cache.lookup_probed(key, probe, generation) {
            Lookup::Hit(slot) => {
                let (e, hints) = self.cache.entry_mut(slot);
                self.ct_in_burst |= hints.tracked;
                if !hints.tracked || touch_tracked(e, key, ct.as_ref()) {
                    e.hits += 1;
                    return Some(Decision {
                        entry: self.cache.entry(slot),
                        generated: &[],
                        frame_nat: &[],
                        hit: true,
                        metered: hints.metered,
                    });
                }
                Some((slot, false))
            }
            Lookup::Stale(slot) => Some((slot, true)),
            Lookup::Miss => None,
        };
        self.previewed.clear();
        let previewed = &mut self.previewed;
        let found = self.megaflows.find_with(key, generation, |steps| {
            ct.as_ref().is_some_and(|c| {
                replay::preview(steps, c.engine, key, c.ip_len, c.now_ns, previewed)
            })
        });
        if let Some(index) = found.filter(|i| self.megaflows.steps(*i).is_empty()) {
            return Some(self.serve_stateless(index, key, stale, now, counters));
        }
        let had_megaflow = found.is_some();
        // A megaflow's entry, made in the scratch entry, once its
        // conntrack calls answered this packet as they did the first:
        // whether it may be cached.
        let served = found.and_then(|index| {
            let steps = self.megaflows.steps(index);
            let c = ct.as_mut()?;
            begin(c, key);
            c.engine.assume_absent(previewed.absent());
            c.engine.assume_chosen(&mut previewed.choices);
            if !replay::replay(steps, c.engine, key) {
                counters.megaflow_diverged.add(1);
                return None;
            }
            self.megaflows.fill_for(index, key, &mut self.scratch);
            let results = steps.iter().filter_map(|s| match s {
                ReplayStep::Op { op, .. } => Some(op.result),
                ReplayStep::Hairpin { .. } => None,
            });
            let caching = cached_steps(&mut self.scratch, results, c.engine);
            if caching == Caching::Later {
                // It made a connection: the next misses likely will too.
                self.new_in_burst = true;
                self.new_conn_zone = steps.iter().find_map(|s| match s {
                    ReplayStep::Op { op, .. } => Some(op.zone),
                    ReplayStep::Hairpin { .. } => None,
                });
            }
            Some(caching == Caching::Now)
        });
        // The verdict is in the scratch entry from here on: a new
        // connection's (never cached) is used where it was made, a
        // cached one is swapped into its slot.
        let cacheable = match served {
            Some(cacheable) => {
                self.generated.clear();
                self.frame_nat.clear();
                counters.megaflow_hits.add(1);
                cacheable
            }
            None => {
                let (entry, cacheable, kept) = run(
                    &mut self.interpreter,
                    &mut self.generated,
                    &mut self.frame_nat,
                    &self.learned,
                    &mut self.learned_lost,
                    self.uplink,
                    program,
                    key,
                    pkt_len,
                    ct.as_mut(),
                );
                // (Not after a replay that went astray: the interpreter saw
                // the connections the replay made.)
                if let (Some((mask, steps)), false) = (kept, had_megaflow) {
                    self.megaflows.insert(key, mask, &entry, steps, generation);
                }
                self.scratch = entry;
                cacheable
            }
        };
        self.scratch.built_at = now;
        self.scratch.hits = 1;
        let scratch = &mut self.scratch;
        let take = |e: &mut FlowEntry| std::mem::swap(e, scratch);
        let slot = match stale {
            Some((slot, by_generation)) => {
                counters.count_rerun(by_generation);
                // (Not cacheable: the stale entry stays out of use, and
                // the next packet runs again.)
                cacheable.then(|| {
                    self.cache.replace_with(slot, take);
                    slot
                })
            }
            None => {
                counters.misses.add(1);
                cacheable.then(|| insert_counted(&mut self.cache, key, take, counters))
            }
        };
        let entry = match slot {
            Some(slot) => self.cache.entry(slot),
            None => &self.scratch,
        };
        Some(Decision::missed(entry, &self.generated, &self.frame_nat))
    }
}

/// Inserts the entry `fill` writes for `key` into the flow cache and
/// counts what that did (an eviction, the entries held); the slot.
#[inline]
fn insert_counted(
    cache: &mut FlowCache,
    key: &FlowKey,
    fill: impl FnOnce(&mut FlowEntry),
    counters: &CacheCounters,
) -> u32 {
    let (slot, evicted) = cache.insert_with(key, fill);
    if evicted {
        counters.evictions.add(1);
    }
    counters.entries.set(cache.len() as u64);
    slot
}

/// Touches the connections of a cached entry for a hit: without their
/// locks while the entry's [`FastCt`] stamps hold, else every step (and the
/// stamps are taken again). Whether the entry's results still hold.
#[inline(always)]
fn touch_tracked(e: &mut FlowEntry, key: &FlowKey, ct: Option<&CtInput<'_>>) -> bool {
    let Some(input) = ct else {
        return false;
    };
    if !e.fast_ct.is_empty() {
        let table = input.engine.conntrack();
        let flags = key.tcp_flags();
        if e.fast_ct.iter().all(|((conn, dir), stamp)| {
            table.touch_fast(conn, dir, flags, input.ip_len, input.now_ns, stamp)
        }) {
            return true;
        }
    }
    let valid = still_valid(&mut e.ct, key, ct);
    e.fast_ct = if valid {
        FastCt::of(&e.ct)
    } else {
        FastCt::default()
    };
    valid
}

/// Touches each connection of a cached entry once (per direction) and
/// tells whether every result is the one the entry was built with: without
/// the lock while the step's stamp holds, else with it (keeping the stamp
/// it answers for the next packet).
#[inline]
fn still_valid(cts: &mut [CachedCt], key: &FlowKey, ct: Option<&CtInput<'_>>) -> bool {
    let Some(ct) = ct else {
        return false;
    };
    let table = ct.engine.conntrack();
    let flags = key.tcp_flags();
    let mut seen: [Option<CtResult>; MAX_CACHED_CT] = [None; MAX_CACHED_CT];
    for i in 0..cts.len() {
        let c = cts[i];
        let now = match c.conn {
            Some((conn, dir)) => {
                let earlier = cts[..i].iter().position(|d| d.conn == c.conn);
                match earlier.and_then(|j| Some((j, seen.get(j).copied().flatten()?))) {
                    // Touched once for both steps: the stamp is the same.
                    Some((j, r)) => {
                        if r == c.result {
                            cts[i].stamp = cts[j].stamp;
                        }
                        r
                    }
                    None if table.touch_fast(conn, dir, flags, ct.ip_len, ct.now_ns, c.stamp) => {
                        c.result
                    }
                    None => match table.touch_stamped(conn, dir, flags, ct.ip_len, ct.now_ns) {
                        Some((r, stamp)) => {
                            let r = CtResult {
                                state: r.state,
                                mark: r.mark,
                                label: r.label,
                            };
                            // Only a stamp of the result the entry holds
                            // may stand for it.
                            if r == c.result {
                                cts[i].stamp = stamp;
                            }
                            r
                        }
                        None => return false,
                    },
                }
            }
            // Nothing created in the zone since the entry found no
            // connection there: the lookup would find none again.
            None if c
                .zone_commits
                .is_some_and(|n| table.zone_commits(c.zone) == n) =>
            {
                c.result
            }
            None => {
                let p = CtPacket {
                    tuple: c.tuple,
                    tcp_flags: flags,
                    len: ct.ip_len,
                    class: PacketClass::Trackable,
                };
                let r = table.lookup(c.zone, &p, ct.now_ns);
                CtResult {
                    state: r.state,
                    mark: r.mark,
                    label: r.label,
                }
            }
        };
        if i < MAX_CACHED_CT {
            seen[i] = Some(now);
        }
        if now != c.result {
            return false;
        }
    }
    true
}

/// Runs the interpreter; returns the entry, whether it may be cached, and
/// (when the interpreter recorded what it consulted and the verdict is a
/// function of the key and the tables alone) the mask under which it holds
/// for other keys.
/// (A function of the lcore's parts, so that the program stays borrowed
/// from the lcore rather than cloned per miss.)
#[allow(clippy::too_many_arguments)]
fn run(
    interpreter: &mut Interpreter,
    generated: &mut Vec<GeneratedPacket>,
    frame_nat: &mut Vec<Translation>,
    learned: &ArrayQueue<Learned>,
    learned_lost: &mut u64,
    uplink: Option<u16>,
    program: &Program,
    key: &FlowKey,
    pkt_len: u32,
    ct: Option<&mut CtInput<'_>>,
) -> (FlowEntry, bool, Option<(KeyMask, Vec<ReplayStep>)>) {
    generated.clear();
    frame_nat.clear();
    let mut entry = FlowEntry {
        generation: program.generation,
        ..Default::default()
    };
    // A packet from the tunnel enters the egress pipeline the sender
    // chose; any other enters the ingress pipeline of its port.
    let entry_point = match key.tunnel() {
        Some((vni, ingress, egress)) => Entry::Tunnel((vni, u32::from(ingress), u32::from(egress))),
        None => match program.port_by_fastpath(key.in_port()) {
            Some(inport) => Entry::Port(inport),
            None => {
                entry.drop = Some(EntryDrop::Pipeline(super::DropCause::UnknownInport));
                return (entry, true, None);
            }
        },
    };
    let consulting = interpreter.consulting;
    let mut no_engine = NoConntrack;
    let (verdict, engine) = match ct {
        Some(ct) => {
            begin(ct, key);
            let hook: &mut dyn ConntrackHook = &mut *ct.engine;
            let v = entry_point.run(interpreter, program, key, pkt_len, hook);
            (v, Some(&*ct.engine))
        }
        None => (
            entry_point.run(interpreter, program, key, pkt_len, &mut no_engine),
            None,
        ),
    };
    // The conntrack operations the entry depends on; a step that found no
    // connection, or NAT that needs the frame, makes it uncacheable.
    let mut caching = Caching::Now;
    if let Some(engine) = engine {
        let results = verdict
            .ct_ops
            .iter()
            .filter(|op| !matches!(op.kind, CtOpKind::Clear))
            .map(|op| op.result);
        caching = cached_steps(&mut entry, results, engine);
        if engine.ops().iter().any(|o| o.needs_frame) {
            frame_nat.extend(engine.ops().iter().filter_map(|o| o.translation));
        }
    }
    entry
        .meters
        .extend(verdict.meters.iter().map(|m| MeterKey(m.key)));
    // Rewrites are relative to the headers after the frame's own NAT.
    let base = if frame_nat.is_empty() {
        *key
    } else {
        super::ct_engine::translate_key(key, frame_nat)
    };
    let mut remote = false;
    let mut unwritable = false;
    for em in &verdict.emissions {
        if let Some(chassis) = em.tunnel {
            let Some(t) = uplink.and_then(|_| tunnel_out(chassis, key, &em.vector)) else {
                remote = true;
                continue;
            };
            let port = uplink.unwrap_or_default();
            if let Some(kind) = em.generated {
                generated.push(GeneratedPacket {
                    port,
                    kind,
                    vector: em.vector,
                    tunnel: Some(t),
                });
                continue;
            }
            match Rewrite::plan(&base, &em.vector) {
                Ok(rewrite) => entry.outputs.push(CachedOutput {
                    port,
                    logical_port: em.port,
                    rewrite,
                    tunnel: Some(t),
                }),
                Err(_) => unwritable = true,
            }
            continue;
        }
        let Some(port) = program
            .ports
            .get(em.port as usize)
            .and_then(|p| p.fastpath_port)
        else {
            remote = true;
            continue;
        };
        if let Some(kind) = em.generated {
            generated.push(GeneratedPacket {
                port,
                kind,
                vector: em.vector,
                tunnel: None,
            });
            continue;
        }
        match Rewrite::plan(&base, &em.vector) {
            Ok(rewrite) => entry.outputs.push(CachedOutput {
                port,
                logical_port: em.port,
                rewrite,
                tunnel: None,
            }),
            Err(_) => unwritable = true,
        }
    }
    for l in &verdict.learned {
        if learned.push(*l).is_err() {
            *learned_lost += 1;
        }
    }
    if entry.outputs.is_empty() && generated.is_empty() {
        entry.drop = Some(if let Some(cause) = verdict.drop_cause() {
            EntryDrop::Pipeline(cause)
        } else if unwritable {
            EntryDrop::Rewrite
        } else if remote {
            EntryDrop::RemoteOutport
        } else {
            EntryDrop::Pipeline(super::DropCause::Implicit)
        });
    }
    // (A verdict cached only from a later packet still makes a megaflow:
    // the next packets of its connection, and the first packets of other
    // connections, reuse it.)
    let cacheable = !verdict.length_dependent && !verdict.generated && caching != Caching::Never;
    let keepable = consulting
        && cacheable
        && verdict.learned.is_empty()
        && verdict.logs.is_empty()
        && generated.is_empty()
        && frame_nat.is_empty();
    // Whether a copy can be rewritten at all, and a rewrite's checksum
    // deltas, depend on the old values of the fields the pipeline changed
    // (for copies that became drops too).
    let steps = if keepable {
        replay::record(verdict, engine, key)
    } else {
        None
    };
    let mut changed = KeyMask::none();
    if steps.is_some() {
        for em in &verdict.emissions {
            changed.add_differences(key, &em.vector.key());
        }
    }
    // (`opaque` is read after the verdict's last use: the verdict borrows
    // the interpreter.)
    let kept = steps.filter(|_| !interpreter.opaque).map(|steps| {
        let mut m = KeyMask::from_consulted(&interpreter.consulted);
        m.union(&changed);
        // A rewrite writes whole fields, unchanged ones included.
        for o in entry.outputs.iter() {
            o.rewrite.for_each_written(|f| m.add(f));
        }
        (m, steps)
    });
    (entry, cacheable && caching == Caching::Now, kept)
}

/// Starts the packet `key` in the conntrack engine (its time, length and
/// frame summary).
fn begin(ct: &mut CtInput<'_>, key: &FlowKey) {
    let received = ct
        .frame
        .and_then(|(layout, frame)| super::ct_engine::frame_summary(key, layout, frame));
    ct.engine.begin(ct.now_ns, ct.ip_len, received);
}

/// Adds to `entry` the conntrack steps of a verdict: the result the
/// pipeline saw of each operation (other than `ct_clear`), with what the
/// engine found for it. Whether an entry can stand for them on later
/// packets: a step that found no connection (other than an uncommitted new
/// packet of a trackable kind, which a hit re-classifies), needed the
/// frame, or more steps than an entry keeps, make it uncacheable.
///
/// So does a step that found no connection in a zone where one was
/// created while the pass ran (the zone's creation count moved since the
/// step looked): almost always this packet's own commit (`ct_lb_mark` of
/// a new connection after the `ct_lb_mark` that only tracked it, or
/// `ct_commit` after `ct_next`). The flow's next packet finds that
/// connection, so the entry would be stale on its first use: the first
/// packet of every connection would write a slot (cold memory) that the
/// second replaces, and a burst of new connections would evict the
/// established flows the cache is there for. A flow is cached from its
/// second packet instead, once its connections answer as they will.
/// (Creation by another lcore inside that window only delays caching to
/// a later packet.) The steps are recorded only for an entry that will be
/// cached: an uncached one is used for this packet alone.
fn cached_steps(
    entry: &mut FlowEntry,
    results: impl Iterator<Item = CtResult> + Clone,
    engine: &ConntrackEngine,
) -> Caching {
    let table = engine.conntrack();
    let mut steps = 0;
    let mut later = false;
    for (result, found) in results.clone().zip(engine.ops()) {
        steps += 1;
        let uncommitted_new = result.state == ct_state::TRK | ct_state::NEW
            && found.packet.class == PacketClass::Trackable;
        if (found.conn.is_none() && !uncommitted_new) || found.needs_frame {
            return Caching::Never;
        }
        // Found nothing, and the zone has created something since.
        later |= found.conn.is_none()
            && found
                .zone_commits
                .is_some_and(|n| table.zone_commits(found.zone) != n);
    }
    if steps > MAX_CACHED_CT {
        return Caching::Never;
    }
    if later {
        return Caching::Later;
    }
    entry
        .ct
        .extend(results.zip(engine.ops()).map(|(result, found)| CachedCt {
            zone: found.zone,
            conn: found.conn,
            tuple: found.packet.tuple,
            result,
            zone_commits: found.zone_commits,
            stamp: Stamp::default(),
        }));
    Caching::Now
}

/// Whether the entry a packet's verdict became may be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caching {
    /// Now: it stands for the flow's next packets.
    Now,
    /// Not from this packet: the connection it created changes what the
    /// next packet's conntrack steps find (a megaflow may still keep it).
    Later,
    /// Never: a step the entry cannot stand for.
    Never,
}

/// Where a packet enters the logical pipeline.
#[derive(Clone, Copy)]
enum Entry {
    /// The ingress pipeline of a local logical port (index).
    Port(u32),
    /// The egress pipeline, from the tunnel: (datapath, inport, outport)
    /// keys.
    Tunnel((u32, u32, u32)),
}

impl Entry {
    fn run<'i>(
        self,
        interpreter: &'i mut Interpreter,
        program: &Program,
        key: &FlowKey,
        pkt_len: u32,
        hook: &mut dyn ConntrackHook,
    ) -> &'i super::Verdict {
        match self {
            Entry::Port(inport) => interpreter.run_with(program, inport, key, pkt_len, hook),
            Entry::Tunnel(meta) => interpreter.run_from_tunnel(program, meta, key, pkt_len, hook),
        }
    }
}

/// The Geneve metadata of a copy for `chassis`: the datapath, inport and
/// outport keys of its vector, and a hash of the flow for the outer source
/// port. `None` when a key does not fit the Geneve header (a datapath key
/// over 24 bits, an inport key over 15): such a copy cannot be tunnelled.
fn tunnel_out(chassis: u16, key: &FlowKey, v: &FlowVector) -> Option<TunnelOut> {
    let vni = v.u32_at(fastpath_tables::ovn::vector::DATAPATH.start);
    let ingress = u16::try_from(v.inport()).ok()?;
    let egress = u16::try_from(v.outport()).ok()?;
    if vni > crate::tunnel::MAX_VNI || ingress > crate::tunnel::MAX_INGRESS_KEY {
        return None;
    }
    Some(TunnelOut {
        chassis,
        flow_hash: tunnel_flow_hash(key),
        vni,
        ingress,
        egress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::{ConntrackConfig, CtCommit, Dir};
    use crate::ovn::ct_engine::{LbAffinity, Mode};
    use fastpath_packet::flowkey::flags;

    const SYN: u16 = 0x02;
    const ACK: u16 = 0x10;

    fn key(src: u8, sport: u16, dst: u8, dport: u16, tcp_flags: u16) -> FlowKey {
        let v4 = |a: u8| {
            std::net::Ipv4Addr::new(10, 0, 0, a)
                .to_ipv6_mapped()
                .octets()
        };
        let mut k = FlowKey::zeroed();
        k.set_flags(flags::IPV4 | flags::L4);
        k.set_eth_type(0x0800);
        k.set_ip_proto(6);
        k.set_ttl(64);
        k.set_src(v4(src));
        k.set_dst(v4(dst));
        k.set_tp_src(sport);
        k.set_tp_dst(dport);
        k.set_tcp_flags(tcp_flags);
        k
    }

    #[test]
    fn one_stateless_verdict_in_n_enters_the_cache_whatever_the_flows_order() {
        let learned = Arc::new(ArrayQueue::new(4));
        let mut lcore = OvnLcore::new(16, learned);
        assert!((0..1000).all(|_| lcore.insert_this_one()));
        lcore.set_insert_one_in(100);
        let picked = (0..100_000).filter(|_| lcore.insert_this_one()).count();
        assert!((800..=1200).contains(&picked), "{picked} of 100 000");
        // Traffic cycling through exactly 100 flows: a counter would pick
        // the same flow every time; here every flow is picked within a
        // few thousand rounds.
        let mut cached = [false; 100];
        for _ in 0..5_000 {
            for c in &mut cached {
                *c |= lcore.insert_this_one();
            }
        }
        assert!(cached.iter().all(|c| *c));
    }

    /// A small connection table and a live engine over it.
    fn table_and_engine() -> (Arc<crate::conntrack::Conntrack>, ConntrackEngine) {
        let ct = Arc::new(crate::conntrack::Conntrack::new(&ConntrackConfig {
            capacity: 64,
            shards: 4,
            ..Default::default()
        }));
        let engine = ConntrackEngine::new(ct.clone(), Arc::new(LbAffinity::new(16)), Mode::Live);
        (ct, engine)
    }

    /// The step a cache entry records for packet `k` that `r` (a result
    /// with a connection, original direction) classified in `zone`.
    fn established_step(zone: u16, k: &FlowKey, r: &crate::conntrack::CtResult) -> CachedCt {
        CachedCt {
            zone,
            conn: Some((r.conn.expect("a connection"), Dir::Original)),
            tuple: CtPacket::from_key(k).tuple,
            result: CtResult {
                state: r.state,
                mark: r.mark,
                label: r.label,
            },
            zone_commits: None,
            stamp: Stamp::default(),
        }
    }

    /// A hit's conntrack input at `now` for a 40-byte IP packet.
    fn input(engine: &mut ConntrackEngine, now: u64) -> CtInput<'_> {
        CtInput {
            engine,
            now_ns: now,
            frame: None,
            ip_len: 40,
        }
    }

    #[test]
    fn an_uncommitted_step_is_looked_up_again_only_after_a_commit_in_its_zone() {
        let (ct, mut engine) = table_and_engine();
        let valid =
            |engine: &mut ConntrackEngine, steps: &mut [CachedCt], k: &FlowKey, now: u64| {
                still_valid(steps, k, Some(&input(engine, now)))
            };
        // A mid-stream segment in a zone where nothing is committed: new,
        // without a connection.
        let ack = key(11, 5555, 12, 80, ACK);
        let p = CtPacket::from_key(&ack);
        let r = ct.lookup(7, &p, 1);
        assert!(r.conn.is_none());
        assert_eq!(r.state, ct_state::TRK | ct_state::NEW);
        let mut step = [CachedCt {
            zone: 7,
            conn: None,
            tuple: p.tuple,
            result: CtResult {
                state: r.state,
                mark: r.mark,
                label: r.label,
            },
            zone_commits: Some(ct.zone_commits(7)),
            stamp: Stamp::default(),
        }];
        assert!(valid(&mut engine, &mut step, &ack, 2));
        // A connection created in another zone changes nothing here.
        let syn = key(11, 5555, 12, 80, SYN);
        let before = ct.zone_commits(7);
        ct.commit(8, &CtPacket::from_key(&syn), &CtCommit::default(), 3)
            .unwrap();
        assert_eq!(ct.zone_commits(7), before);
        assert!(valid(&mut engine, &mut step, &ack, 4));
        // Committed in its zone and answered: the segment is established
        // now, and the hit must not keep answering "new".
        ct.commit(7, &CtPacket::from_key(&syn), &CtCommit::default(), 5)
            .unwrap();
        assert_ne!(ct.zone_commits(7), before);
        let synack = key(12, 80, 11, 5555, SYN | ACK);
        ct.lookup(7, &CtPacket::from_key(&synack), 6);
        assert!(!valid(&mut engine, &mut step, &ack, 7));
        // A step recorded without a count is always looked up.
        let mut unknown = step;
        unknown[0].zone_commits = None;
        assert!(!valid(&mut engine, &mut unknown, &ack, 8));
    }

    #[test]
    fn a_stamped_step_is_touched_without_the_lock_until_the_connection_changes() {
        const SEC: u64 = 1_000_000_000;
        const FIN: u16 = 0x01;
        let (ct, mut engine) = table_and_engine();
        let valid =
            |engine: &mut ConntrackEngine, steps: &mut [CachedCt], k: &FlowKey, now: u64| {
                still_valid(steps, k, Some(&input(engine, now)))
            };
        // An established TCP connection, as a cache entry of the client's
        // segments saw it.
        let syn = key(11, 5555, 12, 80, SYN);
        ct.commit(7, &CtPacket::from_key(&syn), &CtCommit::default(), 1)
            .unwrap();
        ct.lookup(7, &CtPacket::from_key(&key(12, 80, 11, 5555, SYN | ACK)), 2);
        let ack = key(11, 5555, 12, 80, ACK);
        let r = ct.lookup(7, &CtPacket::from_key(&ack), 3);
        assert_eq!(r.state, ct_state::TRK | ct_state::EST);
        let mut step = [established_step(7, &ack, &r)];
        // The first hit takes the lock and keeps the stamp; the next ones
        // refresh without it, well past the first timeout.
        assert!(valid(&mut engine, &mut step, &ack, 4 * SEC));
        assert_ne!(step[0].stamp, Stamp::default());
        let established = ConntrackConfig::default().timeouts.tcp_established;
        let later = 4 * SEC + established.as_nanos() as u64 * 3 / 4;
        let (id, dir) = step[0].conn.unwrap();
        assert!(ct.touch_fast(id, dir, ACK, 40, later, step[0].stamp));
        let much_later = later + established.as_nanos() as u64 * 3 / 4;
        assert!(valid(&mut engine, &mut step, &ack, much_later));
        let listed = ct.list(&Default::default(), 8);
        assert_eq!(listed[0].packets[0], 5, "{listed:?}");
        assert_eq!(listed[0].last_seen, much_later);
        // A segment that could change the connection takes the lock.
        let fin = key(11, 5555, 12, 80, FIN | ACK);
        assert!(!ct.touch_fast(id, dir, FIN | ACK, 40, much_later, step[0].stamp));
        // A new mark makes the stamp stale: the hit is refused.
        let stamp = step[0].stamp;
        let marked = CtCommit {
            mark: 1,
            mark_mask: 1,
            ..Default::default()
        };
        ct.commit(7, &CtPacket::from_key(&ack), &marked, much_later + 1)
            .unwrap();
        assert!(!ct.touch_fast(id, dir, ACK, 40, much_later + 2, stamp));
        assert!(!valid(&mut engine, &mut step, &ack, much_later + 2));
        assert_eq!(step[0].stamp, stamp, "no stamp kept for another result");
        // A FIN moves the state under the lock (the result OVN sees stays
        // `est`): the old stamp is refused, and the closing connection has
        // no lock-free path.
        let mut step2 = step;
        step2[0].result.mark = 1;
        assert!(valid(&mut engine, &mut step2, &ack, much_later + 3));
        let s2 = step2[0].stamp;
        assert!(valid(&mut engine, &mut step2, &fin, much_later + 4));
        assert_ne!(step2[0].stamp, s2);
        assert!(!ct.touch_fast(id, dir, ACK, 40, much_later + 5, s2));
        assert!(!ct.touch_fast(id, dir, ACK, 40, much_later + 5, step2[0].stamp));
        // Gone: refused.
        ct.flush(&Default::default());
        assert!(!ct.touch_fast(id, dir, ACK, 40, much_later + 6, s2));
    }

    #[test]
    fn an_entry_keeps_its_connections_inline_while_their_stamps_hold() {
        let (ct, mut engine) = table_and_engine();
        // One UDP flow committed in two zones and answered in both (the
        // client's and the backend's zone of a ClusterIP packet), the
        // second zone with two steps (a lookup and a commit).
        let mut udp = key(11, 5555, 12, 53, 0);
        udp.set_ip_proto(17);
        let mut reply = key(12, 53, 11, 5555, 0);
        reply.set_ip_proto(17);
        let mut steps = Vec::new();
        for zone in [3u16, 4] {
            ct.commit(zone, &CtPacket::from_key(&udp), &CtCommit::default(), 1)
                .unwrap();
            ct.lookup(zone, &CtPacket::from_key(&reply), 2);
            let r = ct.lookup(zone, &CtPacket::from_key(&udp), 3);
            for _ in 0..usize::from(zone == 4) + 1 {
                steps.push(established_step(zone, &udp, &r));
            }
        }
        let mut e = FlowEntry {
            ct: steps,
            ..Default::default()
        };
        let hit = |engine: &mut ConntrackEngine, e: &mut FlowEntry, now: u64| {
            touch_tracked(e, &udp, Some(&input(engine, now)))
        };
        assert!(FastCt::of(&e.ct).is_empty(), "no stamps yet");
        // The first hit checks every step and keeps both connections.
        assert!(hit(&mut engine, &mut e, 10));
        assert_eq!(e.fast_ct.iter().count(), 2);
        assert_eq!(e.fast_ct, FastCt::of(&e.ct));
        // Later hits touch them without locks: counted on each.
        assert!(hit(&mut engine, &mut e, 11));
        assert!(hit(&mut engine, &mut e, 12));
        for c in ct.list(&Default::default(), 8) {
            assert_eq!(c.packets[0], 2 + 3, "{c:?}");
        }
        // A new mark in one zone: the inline stamps fail, the full check
        // sees another result, and nothing stays inline.
        let marked = CtCommit {
            mark: 2,
            mark_mask: 2,
            ..Default::default()
        };
        ct.commit(4, &CtPacket::from_key(&udp), &marked, 13)
            .unwrap();
        assert!(!hit(&mut engine, &mut e, 14));
        assert!(e.fast_ct.is_empty());
        // A step without a connection, or more connections than fit,
        // keep nothing inline.
        let mut steps = e.ct.clone();
        steps[0].conn = None;
        assert!(FastCt::of(&steps).is_empty());
        let mut three = e.ct.clone();
        for (i, s) in three.iter_mut().enumerate() {
            s.stamp = Stamp::default();
            s.conn = Some((
                ct.commit(
                    10 + i as u16,
                    &CtPacket::from_key(&udp),
                    &CtCommit::default(),
                    15,
                )
                .unwrap()
                .conn
                .unwrap(),
                Dir::Original,
            ));
            s.stamp = ct
                .touch_stamped(s.conn.unwrap().0, Dir::Original, 0, 40, 16)
                .unwrap()
                .1;
        }
        assert!(FastCt::of(&three[..2]).iter().count() == 2);
        assert!(FastCt::of(&three).is_empty());
    }
}
