//! The conntrack engine behind the pipeline's [`ConntrackHook`]: each
//! `ct_*` action of the interpreter becomes a [`Conntrack`] lookup or commit
//! of the packet as the vector holds it at that point, in the action's zone,
//! at the packet's time; a translation is written back into the vector only
//! when the OVN action asks for NAT (`ct_dnat`, `ct_snat`, `ct_lb*`,
//! `ct_commit_nat`, `ct_snat_to_vip`), although the engine always reports
//! the connection's. It also owns the load-balancer affinity table
//! ([`LbAffinity`]: `chk_lb_aff` / `commit_lb_aff`, a small shared table with
//! timeouts) and answers the hairpin checks from the connection the packet
//! was last tracked in.
//!
//! It lives beside the pipeline rather than in `crate::conntrack` because it
//! speaks the pipeline's language (vectors, zones, OVN's mark bits), which
//! the engine must not know. It must not touch frames (the caller applies
//! [`EngineOp::translation`] to a frame when a rewrite of header fields
//! cannot express it: ICMP errors and ICMP echo identifiers), the flow cache
//! or counters.
//!
//! One [`ConntrackEngine`] belongs to one lcore (or to one trace): call
//! [`ConntrackEngine::begin`] before each packet; afterwards
//! [`ConntrackEngine::ops`] holds, for each conntrack operation of the
//! verdict (in the order of `Verdict::ct_ops`), the connection and
//! direction it found, so a flow cache can `touch` them on later packets.
//! A [`Mode::ReadOnly`] engine (for `fastpathctl trace`) classifies with
//! [`Conntrack::peek`] and creates, refreshes and commits nothing.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fastpath_packet::flowkey::{field, flags};
use fastpath_packet::FlowKey;
use fastpath_tables::ovn::ct_state;
use hashbrown::HashMap;
use parking_lot::Mutex;

use super::ct::{
    ConntrackHook, CtCommit, CtRefusal, CtResult, CtTuple, CtZone, LbBackend, LbRequest,
    NatDirection, NatRequest, NatTarget,
};
use super::vector::FlowVector;

// The connection table's `ct_state` bits are the ones the compiled tables
// match on (the conntrack module keeps its own copy: it is also built
// alone, for fuzzing, without the tables crate).
const _: () = {
    use crate::conntrack::ct_state as engine;
    use fastpath_tables::ovn::ct_state as tables;
    assert!(
        engine::NEW == tables::NEW
            && engine::EST == tables::EST
            && engine::REL == tables::REL
            && engine::RPL == tables::RPL
            && engine::INV == tables::INV
            && engine::TRK == tables::TRK
            && engine::SNAT == tables::SNAT
            && engine::DNAT == tables::DNAT
    );
};
use crate::conntrack::{
    self, addr_from_bytes, ConnId, Conntrack, CtPacket, Dir, NatRange, PacketClass, Translation,
    Tuple,
};

/// `ct_mark.natted` (and `ct_label.natted` for `ct_lb`).
pub const MARK_NATTED: u32 = 1 << 1;
/// `ct_mark.skip_snat`.
pub const MARK_SKIP_SNAT: u32 = 1 << 2;
/// `ct_mark.force_snat`.
pub const MARK_FORCE_SNAT: u32 = 1 << 3;

/// Whether the engine may change the connection table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The packet path: lookups refresh, commits create.
    Live,
    /// Traces: lookups only, nothing is created or refreshed.
    ReadOnly,
}

/// What one conntrack operation of a verdict found, for the flow cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOp {
    /// Zone.
    pub zone: CtZone,
    /// The connection and the packet's direction in it (none: the packet
    /// is new and uncommitted, or invalid).
    pub conn: Option<(ConnId, Dir)>,
    /// The translation written into the vector, if the action applied one.
    pub translation: Option<Translation>,
    /// The operation depends on what only the frame holds: the packet is
    /// an ICMP echo (its identifier tells connections apart) or an ICMP
    /// error (its quoted header names the connection), or the translation
    /// rewrites such a part. A flow-key cache entry cannot stand for it
    /// (another echo with the same key is another connection), and a
    /// header-field rewrite cannot express the translation.
    pub needs_frame: bool,
    /// The packet as this operation classified it (its headers at this
    /// point of the pipeline).
    pub packet: CtPacket,
    /// The zone's creation count (`Conntrack::zone_commits`) read just
    /// before the operation looked the packet up (`None`: it did not look
    /// up): while it stays the same, a lookup that found no connection
    /// would find none again.
    pub zone_commits: Option<u32>,
}

/// One affinity binding: client, VIP (address, port) and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct AffinityKey {
    client: [u8; 16],
    vip: [u8; 16],
    vip_port: u16,
    proto: u8,
}

#[derive(Debug, Clone, Copy)]
struct AffinityEntry {
    backend: LbBackend,
    expires_at: u64,
}

/// The load-balancer affinity table (`commit_lb_aff` writes it,
/// `chk_lb_aff` reads it): which backend a client is bound to for a VIP,
/// until a timeout after the last connection that committed it. Shared by
/// all lcores; used only on the miss path (OVN checks affinity for new
/// connections only). Bounded: when full, expired bindings are dropped, and
/// if none is, the new binding is not kept (counted in
/// [`LbAffinity::lost`]).
#[derive(Debug)]
pub struct LbAffinity {
    table: Mutex<HashMap<AffinityKey, AffinityEntry>>,
    capacity: usize,
    lost: AtomicU64,
}

impl LbAffinity {
    /// A table of at most `capacity` bindings.
    pub fn new(capacity: usize) -> LbAffinity {
        LbAffinity {
            table: Mutex::new(HashMap::with_capacity(capacity.min(1 << 16))),
            capacity: capacity.max(1),
            lost: AtomicU64::new(0),
        }
    }

    fn lookup(&self, key: &AffinityKey, now: u64) -> Option<LbBackend> {
        self.table
            .lock()
            .get(key)
            .filter(|e| e.expires_at > now)
            .map(|e| e.backend)
    }

    fn commit(&self, key: AffinityKey, backend: LbBackend, expires_at: u64, now: u64) {
        let mut t = self.table.lock();
        if t.len() >= self.capacity && !t.contains_key(&key) {
            t.retain(|_, e| e.expires_at > now);
            if t.len() >= self.capacity {
                self.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        t.insert(
            key,
            AffinityEntry {
                backend,
                expires_at,
            },
        );
    }

    /// Removes bindings expired at `now`; returns how many.
    pub fn expire(&self, now: u64) -> usize {
        let mut t = self.table.lock();
        let before = t.len();
        t.retain(|_, e| e.expires_at > now);
        before - t.len()
    }

    /// Live bindings (expired ones not yet removed included).
    pub fn len(&self) -> usize {
        self.table.lock().len()
    }

    /// True when there is no binding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bindings not kept because the table was full.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// The last result of a zone (for `original_tuple` and the hairpin checks).
#[derive(Debug, Clone, Copy)]
struct ZoneResult {
    zone: CtZone,
    conn: Option<(ConnId, Dir)>,
    state: u32,
    original: Option<Tuple>,
    nat: Option<Translation>,
    /// The packet's tuple as tracked, and after the translation the
    /// operation applied (the same when none): a later operation in the
    /// zone is the same packet only while it still carries one of them.
    tracked: [Tuple; 2],
}

/// The backends chosen for one packet's load balancers: (hash fields,
/// the backends chosen among, the packet's tuple at that step) → choice.
/// The megaflow preview fills it; the replay hands it to the engine
/// ([`ConntrackEngine::assume_chosen`]) so that the same choice is not
/// hashed twice.
#[derive(Default)]
pub struct BackendChoices {
    /// (hash fields, the backends' range in `backends`, tuple, choice)
    chosen: Vec<(u32, std::ops::Range<usize>, Tuple, Option<LbBackend>)>,
    backends: Vec<LbBackend>,
}

impl BackendChoices {
    /// Forgets every choice.
    pub fn clear(&mut self) {
        self.chosen.clear();
        self.backends.clear();
    }

    /// Whether no choice is kept.
    pub fn is_empty(&self) -> bool {
        self.chosen.is_empty() && self.backends.is_empty()
    }

    /// The choice kept for these hash fields, backends and tuple.
    pub fn find(
        &self,
        fields: u32,
        backends: &[LbBackend],
        tuple: &Tuple,
    ) -> Option<Option<LbBackend>> {
        self.chosen
            .iter()
            .find(|(f, r, t, _)| {
                *f == fields && t == tuple && self.backends[r.clone()] == *backends
            })
            .map(|&(_, _, _, choice)| choice)
    }

    /// Keeps a choice.
    pub fn push(
        &mut self,
        fields: u32,
        backends: &[LbBackend],
        tuple: Tuple,
        choice: Option<LbBackend>,
    ) {
        let start = self.backends.len();
        self.backends.extend_from_slice(backends);
        self.chosen
            .push((fields, start..self.backends.len(), tuple, choice));
    }
}

/// The [`ConntrackHook`] over a shared [`Conntrack`] and [`LbAffinity`].
pub struct ConntrackEngine {
    ct: Arc<Conntrack>,
    affinity: Arc<LbAffinity>,
    mode: Mode,
    now: u64,
    len: u32,
    /// The packet as received, with its frame-derived summary (ICMP echo
    /// identifier, quoted header of an ICMP error).
    received: Option<(FlowKey, CtPacket)>,
    /// The ICMP echo identifier the frame carries now: the received one,
    /// changed by each translation written into the packet since.
    echo_id: Option<u16>,
    ops: Vec<EngineOp>,
    zones: Vec<ZoneResult>,
    /// The zone creation count read by the last lookup, for the operation
    /// that records it.
    zone_commits: std::cell::Cell<Option<u32>>,
    /// The zone of the last operation of this packet (what OVS's
    /// `ct_nw_dst` / `ct_tp_dst` describe: the last `ct()` executed).
    last_zone: Option<CtZone>,
    /// Tuples this packet's megaflow preview found no connection for,
    /// with their zone's creation count read before it looked
    /// ([`ConntrackEngine::assume_absent`]).
    absent: Vec<(CtZone, Tuple, u32)>,
    /// Backends this packet's megaflow preview chose
    /// ([`ConntrackEngine::assume_chosen`]).
    chosen: BackendChoices,
}

impl ConntrackEngine {
    /// An engine over `ct` and `affinity`.
    pub fn new(ct: Arc<Conntrack>, affinity: Arc<LbAffinity>, mode: Mode) -> ConntrackEngine {
        ConntrackEngine {
            ct,
            affinity,
            mode,
            now: 0,
            len: 0,
            received: None,
            echo_id: None,
            ops: Vec::new(),
            zones: Vec::new(),
            zone_commits: std::cell::Cell::new(None),
            last_zone: None,
            absent: Vec::new(),
            chosen: BackendChoices::default(),
        }
    }

    /// The connection table.
    pub fn conntrack(&self) -> &Arc<Conntrack> {
        &self.ct
    }

    /// The affinity table.
    pub fn affinity(&self) -> &Arc<LbAffinity> {
        &self.affinity
    }

    /// Starts a packet: its time (ns, the table's clock), its IP length
    /// (byte counters) and, when the frame is at hand, its summary from
    /// [`CtPacket::from_frame`] with the key it was made from (used while
    /// the vector still holds that key).
    pub fn begin(&mut self, now: u64, len: u32, received: Option<(FlowKey, CtPacket)>) {
        self.now = now;
        self.len = len;
        self.echo_id = received
            .as_ref()
            .filter(|(_, p)| p.class == PacketClass::Trackable && p.tuple.is_icmp())
            .map(|(_, p)| p.tuple.src_port);
        self.received = received;
        self.ops.clear();
        self.zones.clear();
        self.last_zone = None;
        self.absent.clear();
        self.chosen.clear();
    }

    /// Tells the engine, after [`ConntrackEngine::begin`], which tuples a
    /// look without side effects found no connection for moments ago
    /// (zone, tuple, and the zone's creation count read before that
    /// look). A lookup of one of them, while the zone has created nothing
    /// since, answers as a lookup that finds nothing without taking the
    /// shard's lock: nothing can have appeared (a connection appears only
    /// by creation), and a lookup that finds nothing changes nothing. The
    /// megaflow replay of a new connection thus looks each key up once,
    /// not twice.
    pub fn assume_absent(&mut self, absent: impl Iterator<Item = (CtZone, Tuple, u32)>) {
        if self.mode == Mode::Live {
            self.absent.extend(absent);
        }
    }

    /// Tells the engine, after [`ConntrackEngine::begin`], which backend
    /// the megaflow preview chose for this packet (the tuple it had at
    /// that step) among which backends and on which hash fields, so that
    /// the replay's `ct_lb` does not hash the same fields again. The
    /// choice is a function of the packet's fields alone, and a tuple
    /// stands for the packet at one step of its own pass.
    ///
    /// The choices are taken, not copied: `choices` is left with the
    /// engine's own, empty since [`ConntrackEngine::begin`].
    pub fn assume_chosen(&mut self, choices: &mut BackendChoices) {
        std::mem::swap(&mut self.chosen, choices);
    }

    /// The backend [`ConntrackHook::choose_backend`] picks for the packet
    /// `v` (whose tuple is `tuple`), from the preview's choices if it made
    /// this one.
    fn backend_for(
        &mut self,
        v: &FlowVector,
        lb: &LbRequest<'_>,
        tuple: &Tuple,
    ) -> Option<LbBackend> {
        match self.chosen.find(lb.hash_fields, lb.backends, tuple) {
            Some(choice) => choice,
            None => self.choose_backend(v, lb),
        }
    }

    /// The operations of the last packet, in the order of its verdict's
    /// `ct_ops`.
    pub fn ops(&self) -> &[EngineOp] {
        &self.ops
    }

    /// The packet as the vector holds it now. Once the pipeline has
    /// changed its headers (a router answering an echo request in place,
    /// a translation) the key no longer matches the received one, but the
    /// frame still carries its ICMP echo identifier (as translated since):
    /// the summary keeps it, or the packet would be tracked as echo 0 and
    /// miss its connection.
    fn packet(&self, v: &FlowVector) -> CtPacket {
        let key = v.key();
        let mut p = match &self.received {
            Some((k, p)) if *k == key => *p,
            _ => {
                let mut p = CtPacket::from_key(&key);
                if let Some(id) = self.echo_id {
                    if p.class == PacketClass::Trackable && p.tuple.is_icmp() {
                        p.tuple.src_port = id;
                    }
                }
                p
            }
        };
        if p.len == 0 {
            p.len = self.len;
        }
        p
    }

    /// The connection this packet was already tracked to in `zone` during
    /// this pass, as it is now (with `commit`'s marks set when live). Only
    /// while the packet is the one tracked (`p` carries the tuple it was
    /// tracked with, or the one its translation gave it): a packet the
    /// pipeline turned around or readdressed since (a router answering an
    /// echo in place, a hop through a router, which clears the conntrack
    /// state) is looked up afresh, as it would be in the kernel's
    /// conntrack, where it may be the reply of that connection.
    fn again(
        &self,
        zone: CtZone,
        p: &CtPacket,
        commit: Option<&conntrack::CtCommit>,
    ) -> Option<conntrack::CtResult> {
        let z = self.zone_result(zone)?;
        if !z.tracked.contains(&p.tuple) {
            return None;
        }
        let (id, dir) = z.conn?;
        let commit = commit.filter(|_| self.mode == Mode::Live);
        self.ct.by_id(id, dir, commit, self.now)
    }

    fn lookup(&self, zone: CtZone, p: &CtPacket) -> conntrack::CtResult {
        if let Some(r) = self.again(zone, p, None) {
            return r;
        }
        let commits = self.ct.zone_commits(zone);
        self.zone_commits.set(Some(commits));
        if p.class == PacketClass::Trackable && self.absent.contains(&(zone, p.tuple, commits)) {
            return Conntrack::no_connection(p);
        }
        match self.mode {
            Mode::Live => self.ct.lookup(zone, p, self.now),
            Mode::ReadOnly => self.ct.peek(zone, p, self.now),
        }
    }

    /// Commits `p` in `zone`; `looked_up` when this very operation has
    /// just looked the packet up and found no connection.
    fn commit_engine(
        &self,
        zone: CtZone,
        p: &CtPacket,
        c: &conntrack::CtCommit,
        looked_up: bool,
    ) -> Result<conntrack::CtResult, CtRefusal> {
        if let Some(r) = self.again(zone, p, Some(c)) {
            return Ok(r);
        }
        // An earlier operation of this pass looked the packet up in the
        // zone and found no connection either.
        let fresh = looked_up
            || self
                .zone_result(zone)
                .is_some_and(|z| z.conn.is_none() && z.tracked.contains(&p.tuple));
        match self.mode {
            Mode::Live if fresh => self
                .ct
                .commit_new(zone, p, c, self.now)
                .map_err(CtRefusal::Engine),
            Mode::Live => self
                .ct
                .commit(zone, p, c, self.now)
                .map_err(CtRefusal::Engine),
            Mode::ReadOnly => Ok(self.ct.peek(zone, p, self.now)),
        }
    }

    /// Records an operation and turns the engine's result into the
    /// pipeline's, applying the translation when `apply_nat`.
    fn finish(
        &mut self,
        zone: CtZone,
        v: &mut FlowVector,
        r: conntrack::CtResult,
        apply_nat: bool,
        packet: CtPacket,
    ) -> CtResult {
        let mut op = EngineOp {
            zone,
            conn: r.conn.map(|c| (c, r.dir())),
            translation: None,
            needs_frame: needs_frame(&packet),
            packet,
            zone_commits: self.zone_commits.take(),
        };
        let mut tracked = [packet.tuple; 2];
        if apply_nat {
            if let Some(t) = r.nat {
                op.needs_frame |= translate_vector(v, &t);
                op.translation = Some(t);
                if !t.related {
                    // The frame's echo identifier is the last one written.
                    for rw in [t.src, t.dst].into_iter().flatten() {
                        if self.echo_id.is_some() && rw.from_port != rw.to_port {
                            self.echo_id = Some(rw.to_port);
                        }
                    }
                }
                tracked[1] = self.packet(v).tuple;
            }
        }
        self.ops.push(op);
        let zr = ZoneResult {
            zone,
            conn: r.conn.map(|c| (c, r.dir())),
            state: r.state,
            original: r.original,
            nat: r.nat,
            tracked,
        };
        match self.zones.iter_mut().find(|z| z.zone == zone) {
            Some(z) => *z = zr,
            None => self.zones.push(zr),
        }
        self.last_zone = Some(zone);
        CtResult {
            state: r.state,
            mark: r.mark,
            label: r.label,
        }
    }

    fn zone_result(&self, zone: CtZone) -> Option<&ZoneResult> {
        self.zones.iter().find(|z| z.zone == zone)
    }

    /// `chk_lb_hairpin_reply()` as ovn-controller implements it: the
    /// hairpinned connection taught a flow that matches its reply as the
    /// backend sends it, from the backend's address and port to the
    /// address its client was translated to (the VIP, `ct_snat_to_vip`'s
    /// default) at the client's port. Here: the packet is such a reply
    /// when `zone` holds a load-balanced connection whose client is the
    /// backend itself (its reply tuple is the packet's, addressed back to
    /// its own source) and whose VIP is the packet's destination. Read
    /// only, in both modes.
    fn hairpin_reply_to_vip(&self, zone: CtZone, v: &FlowVector) -> bool {
        if !self.ct.had_self_replies(zone) {
            return false;
        }
        let mut p = CtPacket::from_key(&v.key());
        if p.class != PacketClass::Trackable || !has_ports(p.tuple.proto) {
            return false;
        }
        let vip = p.tuple.dst;
        p.tuple.dst = p.tuple.src;
        let r = self.ct.peek(zone, &p, self.now);
        r.conn.is_some()
            && r.state & ct_state::RPL != 0
            && r.state & ct_state::DNAT != 0
            && r.original
                .is_some_and(|o| o.src == p.tuple.src && o.dst == vip)
    }

    /// A read-only commit of a new connection shows what the commit would
    /// translate, without creating it.
    fn preview_nat(v: &mut FlowVector, r: &mut conntrack::CtResult, c: &conntrack::CtCommit) {
        if r.conn.is_some() || r.state & ct_state::NEW == 0 {
            return;
        }
        for (range, dir, bit) in [
            (c.dnat, NatDirection::Dnat, ct_state::DNAT),
            (c.snat, NatDirection::Snat, ct_state::SNAT),
        ] {
            if let Some(range) = range {
                let (addr, _) = conntrack::addr_to_bytes(range.addr_min);
                let port = range.ports.map_or(0, |p| p.0);
                super::ct::apply_translation(v, dir, &addr, port);
                r.state |= bit;
            }
        }
    }
}

/// Writes a translation into the vector's header fields; true when the
/// frame needs more than that (related ICMP errors, ICMP echo identifiers).
pub(crate) fn translate_vector(v: &mut FlowVector, t: &Translation) -> bool {
    let l4 = v.key_flags() & flags::L4 != 0 && !t.related && has_ports(t.proto);
    let mut needs_frame = t.related;
    for (rw, a, p) in [
        (t.src, field::SRC, field::TP_SRC),
        (t.dst, field::DST, field::TP_DST),
    ] {
        let Some(rw) = rw else { continue };
        // An ICMP error from a router in between keeps the router's address.
        if !t.related || v.field(a.clone()) == rw.from_addr {
            v.field_mut(a).copy_from_slice(&rw.to_addr);
        }
        if rw.from_port != rw.to_port {
            if l4 {
                v.field_mut(p).copy_from_slice(&rw.to_port.to_be_bytes());
            } else {
                needs_frame = true;
            }
        }
    }
    needs_frame
}

/// The flow key of a packet after translations applied to its frame in
/// order (`apply_translation`): the addresses they rewrite (ports that a
/// header rewrite cannot express, such as an ICMP identifier, are not in
/// the key).
pub fn translate_key(key: &FlowKey, translations: &[Translation]) -> FlowKey {
    let mut v = FlowVector::from_key(key, 0, 0);
    for t in translations {
        translate_vector(&mut v, t);
    }
    v.key()
}

fn has_ports(proto: u8) -> bool {
    use fastpath_packet::ip_proto;
    matches!(proto, ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP)
}

fn ip_of(addr: &[u8; 16], ipv6: bool) -> IpAddr {
    addr_from_bytes(addr, ipv6)
}

fn nat_range(t: &NatTarget, ipv6: bool) -> NatRange {
    let a = ip_of(&t.addr, ipv6);
    NatRange {
        addr_min: a,
        addr_max: a,
        ports: t.ports,
    }
}

fn is_ipv6(v: &FlowVector) -> bool {
    v.key_flags() & flags::IPV6 != 0
}

fn port_of(v: &FlowVector, f: std::ops::Range<usize>) -> u16 {
    let b = v.field(f);
    u16::from_be_bytes([b[0], b[1]])
}

impl ConntrackHook for ConntrackEngine {
    fn track(&mut self, zone: CtZone, v: &mut FlowVector) -> Result<CtResult, CtRefusal> {
        let p = self.packet(v);
        let r = self.lookup(zone, &p);
        Ok(self.finish(zone, v, r, false, p))
    }

    fn nat(
        &mut self,
        zone: CtZone,
        v: &mut FlowVector,
        direction: NatDirection,
        target: Option<NatTarget>,
    ) -> Result<CtResult, CtRefusal> {
        let p = self.packet(v);
        let r = match target {
            None => self.lookup(zone, &p),
            Some(t) => {
                let range = nat_range(&t, is_ipv6(v));
                let c = conntrack::CtCommit {
                    dnat: (direction == NatDirection::Dnat).then_some(range),
                    snat: (direction == NatDirection::Snat).then_some(range),
                    ..Default::default()
                };
                let mut r = self.commit_engine(zone, &p, &c, false)?;
                if self.mode == Mode::ReadOnly {
                    Self::preview_nat(v, &mut r, &c);
                }
                r
            }
        };
        Ok(self.finish(zone, v, r, true, p))
    }

    fn load_balance(
        &mut self,
        zone: CtZone,
        v: &mut FlowVector,
        lb: &LbRequest<'_>,
    ) -> Result<(CtResult, Option<LbBackend>), CtRefusal> {
        let p = self.packet(v);
        let found = self.lookup(zone, &p);
        let is_new = found.conn.is_none() && found.state & ct_state::NEW != 0;
        if lb.backends.is_empty() || !is_new {
            return Ok((self.finish(zone, v, found, true, p), None));
        }
        let Some(backend) = self.backend_for(v, lb, &p.tuple) else {
            return Ok((self.finish(zone, v, found, true, p), None));
        };
        let ipv6 = backend.family == 6;
        let addr = ip_of(&backend.addr, ipv6);
        let mut bits = MARK_NATTED;
        if lb.skip_snat {
            bits |= MARK_SKIP_SNAT;
        }
        if lb.force_snat {
            bits |= MARK_FORCE_SNAT;
        }
        let mut c = conntrack::CtCommit {
            dnat: Some(if backend.port != 0 {
                NatRange::addr_port(addr, backend.port)
            } else {
                NatRange::addr(addr)
            }),
            ..Default::default()
        };
        if lb.mark {
            c.mark = bits;
            c.mark_mask = bits;
        } else {
            c.label = u128::from(bits);
            c.label_mask = u128::from(bits);
        }
        let mut r = self.commit_engine(zone, &p, &c, true)?;
        if self.mode == Mode::ReadOnly {
            Self::preview_nat(v, &mut r, &c);
            return Ok((self.finish(zone, v, r, false, p), Some(backend)));
        }
        Ok((self.finish(zone, v, r, true, p), Some(backend)))
    }

    fn commit(
        &mut self,
        zone: CtZone,
        v: &mut FlowVector,
        commit: &CtCommit,
    ) -> Result<CtResult, CtRefusal> {
        let p = self.packet(v);
        let mut c = conntrack::CtCommit {
            mark: commit.mark,
            mark_mask: commit.mark_mask,
            label: commit.label,
            label_mask: commit.label_mask,
            ..Default::default()
        };
        let apply = match commit.nat {
            NatRequest::None => false,
            NatRequest::Existing => true,
            NatRequest::To(direction, t) => {
                let range = nat_range(&t, is_ipv6(v));
                match direction {
                    NatDirection::Dnat => c.dnat = Some(range),
                    NatDirection::Snat => c.snat = Some(range),
                }
                true
            }
        };
        let mut r = self.commit_engine(zone, &p, &c, false)?;
        if self.mode == Mode::ReadOnly {
            if apply {
                Self::preview_nat(v, &mut r, &c);
            }
            return Ok(self.finish(zone, v, r, false, p));
        }
        Ok(self.finish(zone, v, r, apply, p))
    }

    fn original_tuple(&self, zone: CtZone, _: &FlowVector) -> Option<CtTuple> {
        // A zone the packet was not tracked in yet (`ct_snat_to_vip` commits
        // in the switch's SNAT zone, after `ct_lb` in the port's zone):
        // the connection of the last operation, as OVS's `ct_nw_dst` is.
        let z = self
            .zone_result(zone)
            .or_else(|| self.last_zone.and_then(|l| self.zone_result(l)))?;
        let t = z.original?;
        Some(CtTuple {
            src: t.src,
            dst: t.dst,
            proto: t.proto,
            tp_src: t.src_port,
            tp_dst: t.dst_port,
        })
    }

    fn lb_hairpin(&mut self, zone: CtZone, v: &FlowVector, reply: bool) -> Result<bool, CtRefusal> {
        // A load-balanced connection whose client is the backend it was
        // sent to. Original direction: the translated packet goes from the
        // backend to itself (and its port is still the backend's). Reply:
        // the backend answers itself; after the reverse translation the
        // source is the VIP again, with the VIP's port.
        if reply && self.hairpin_reply_to_vip(zone, v) {
            return Ok(true);
        }
        let Some(z) = self.zone_result(zone) else {
            return Ok(false);
        };
        let (Some(orig), Some(nat)) = (z.original, z.nat) else {
            return Ok(false);
        };
        if z.state & ct_state::DNAT == 0 {
            return Ok(false);
        }
        let rpl = z.state & ct_state::RPL != 0;
        if reply != rpl {
            return Ok(false);
        }
        let backend = if rpl {
            nat.src.map(|rw| rw.from_addr)
        } else {
            nat.dst.map(|rw| rw.to_addr)
        };
        let hit = backend == Some(orig.src)
            && if rpl {
                // The packet, un-translated, now comes from the VIP.
                v.field(field::SRC) == orig.dst && port_of(v, field::TP_SRC) == orig.dst_port
            } else {
                v.field(field::SRC) == v.field(field::DST)
            };
        Ok(hit)
    }

    fn affinity_lookup(&mut self, v: &FlowVector) -> Result<Option<LbBackend>, CtRefusal> {
        let key = affinity_key(v, v.bytes()[field::IP_PROTO]);
        Ok(self.affinity.lookup(&key, self.now))
    }

    fn affinity_commit(
        &mut self,
        v: &FlowVector,
        vip: LbBackend,
        backend: LbBackend,
        proto: u8,
        timeout: u32,
    ) -> Result<(), CtRefusal> {
        if self.mode == Mode::ReadOnly {
            return Ok(());
        }
        let mut client = [0u8; 16];
        client.copy_from_slice(v.field(field::SRC));
        let key = AffinityKey {
            client,
            vip: vip.addr,
            vip_port: vip.port,
            proto,
        };
        let expires = self
            .now
            .saturating_add(u64::from(timeout).saturating_mul(1_000_000_000));
        self.affinity.commit(key, backend, expires, self.now);
        Ok(())
    }
}

fn affinity_key(v: &FlowVector, proto: u8) -> AffinityKey {
    let mut client = [0u8; 16];
    client.copy_from_slice(v.field(field::SRC));
    let mut vip = [0u8; 16];
    vip.copy_from_slice(v.field(field::DST));
    AffinityKey {
        client,
        vip,
        vip_port: port_of(v, field::TP_DST),
        proto,
    }
}

/// Nanoseconds of `tsc` ticks of a clock of `hz` ticks per second (the
/// conntrack clock from the TSC).
#[inline]
pub fn tsc_to_ns(tsc: u64, hz: u64) -> u64 {
    if hz == 0 {
        return 0;
    }
    (u128::from(tsc) * 1_000_000_000 / u128::from(hz)) as u64
}

/// The [`CtPacket`] of a received packet whose ICMP summary needs the
/// frame; other packets are summarised from the key alone.
pub fn received_packet(
    key: &FlowKey,
    layout: &fastpath_packet::Layout,
    frame: &[u8],
) -> (FlowKey, CtPacket) {
    (*key, CtPacket::from_frame(key, layout, frame))
}

/// The frame summary of a received ICMP packet (echo identifier, quoted
/// header of an error), which its key does not carry; `None` for other
/// packets, which are summarised from the key alone.
#[inline]
pub fn frame_summary(
    key: &FlowKey,
    layout: &fastpath_packet::Layout,
    frame: &[u8],
) -> Option<(FlowKey, CtPacket)> {
    use fastpath_packet::ip_proto;
    let p = key.ip_proto();
    let icmp = (p == ip_proto::ICMPV4 && key.is_ipv4()) || (p == ip_proto::ICMPV6 && key.is_ipv6());
    icmp.then(|| received_packet(key, layout, frame))
}

/// True when the summary of a received packet differs from its key's (an
/// ICMP echo or error: the frame carries what the key does not).
pub fn needs_frame(p: &CtPacket) -> bool {
    matches!(p.class, PacketClass::IcmpError { .. }) || p.tuple.is_icmp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::ConntrackConfig;
    use crate::ovn::ct::choose_backend;
    use fastpath_packet::flowkey::{field, flags};
    use fastpath_tables::ovn::hash_field;

    fn a4(x: u8) -> [u8; 16] {
        std::net::Ipv4Addr::new(10, 0, 0, x)
            .to_ipv6_mapped()
            .octets()
    }

    fn tcp(src: u8, sport: u16, dst: u8, dport: u16, tcp_flags: u16) -> FlowVector {
        let mut v = FlowVector::default();
        let b = v.bytes_mut();
        b[field::FLAGS] = flags::IPV4 | flags::L4;
        b[field::IP_PROTO] = 6;
        b[field::SRC].copy_from_slice(&a4(src));
        b[field::DST].copy_from_slice(&a4(dst));
        b[field::TP_SRC].copy_from_slice(&sport.to_be_bytes());
        b[field::TP_DST].copy_from_slice(&dport.to_be_bytes());
        b[field::TCP_FLAGS].copy_from_slice(&tcp_flags.to_be_bytes());
        v
    }

    const SYN: u16 = 0x02;
    const ACK: u16 = 0x10;

    fn engine(mode: Mode) -> (ConntrackEngine, Arc<Conntrack>) {
        let ct = Arc::new(Conntrack::new(&ConntrackConfig {
            capacity: 64,
            shards: 4,
            ..Default::default()
        }));
        (
            ConntrackEngine::new(ct.clone(), Arc::new(LbAffinity::new(16)), mode),
            ct,
        )
    }

    fn backends() -> [LbBackend; 2] {
        [
            LbBackend {
                addr: a4(12),
                family: 4,
                port: 8080,
            },
            LbBackend {
                addr: a4(13),
                family: 4,
                port: 8080,
            },
        ]
    }

    fn lb(b: &[LbBackend]) -> LbRequest<'_> {
        LbRequest {
            backends: b,
            hash_fields: 0,
            mark: true,
            skip_snat: false,
            force_snat: false,
        }
    }

    #[test]
    fn load_balanced_connection_is_translated_both_ways() {
        let (mut e, ct) = engine(Mode::Live);
        let b = backends();
        e.begin(1, 60, None);
        let mut v = tcp(11, 40000, 100, 80, SYN);
        let (r, chosen) = e.load_balance(5, &mut v, &lb(&b)).unwrap();
        let chosen = chosen.unwrap();
        assert_eq!(r.state & ct_state::NEW, ct_state::NEW);
        assert_eq!(r.state & ct_state::DNAT, ct_state::DNAT);
        assert_eq!(r.mark & MARK_NATTED, MARK_NATTED);
        assert_eq!(v.field(field::DST), chosen.addr);
        assert_eq!(port_of(&v, field::TP_DST), 8080);
        assert_eq!(ct.len(), 1);
        let (conn, dir) = e.ops()[0].conn.unwrap();
        assert_eq!(dir, Dir::Original);

        // The reply from the backend comes back from the VIP.
        e.begin(2, 60, None);
        let mut reply = tcp(chosen.addr[15], 8080, 11, 40000, SYN | ACK);
        let (r, none) = e.load_balance(5, &mut reply, &lb(&[])).unwrap();
        assert_eq!(none, None);
        assert_eq!(r.state & ct_state::RPL, ct_state::RPL);
        assert_eq!(reply.field(field::SRC), a4(100));
        assert_eq!(port_of(&reply, field::TP_SRC), 80);
        assert_eq!(e.ops()[0].conn.map(|c| c.0), Some(conn));
        assert_eq!(e.ops()[0].conn.map(|c| c.1), Some(Dir::Reply));

        // An established packet with backends listed keeps its backend.
        e.begin(3, 60, None);
        let mut again = tcp(11, 40000, 100, 80, ACK);
        let (r, _) = e.load_balance(5, &mut again, &lb(&b)).unwrap();
        assert_eq!(r.state & ct_state::EST, ct_state::EST);
        assert_eq!(again.field(field::DST), chosen.addr);
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn a_preview_choice_is_taken_for_its_tuple_backends_and_fields_only() {
        let (mut e, _) = engine(Mode::Live);
        let b = backends();
        let syn = tcp(11, 40000, 100, 80, SYN);
        let tuple = CtPacket::from_key(&syn.key()).tuple;
        let hashed = choose_backend(&syn, &lb(&b)).unwrap();
        let other = *b.iter().find(|x| **x != hashed).unwrap();
        // Told the other backend (as no hash of this packet would say):
        // the engine takes the told choice, so it did not hash again.
        e.begin(1, 60, None);
        let mut told = BackendChoices::default();
        told.push(0, &b, tuple, Some(other));
        e.assume_chosen(&mut told);
        let (_, chosen) = e.load_balance(5, &mut syn.clone(), &lb(&b)).unwrap();
        assert_eq!(chosen, Some(other));
        // Another tuple, other backends or other hash fields: not this
        // choice, so the engine hashes.
        let other_tuple = CtPacket::from_key(&tcp(11, 40001, 100, 80, SYN).key()).tuple;
        let told = [
            (0, &b[..], other_tuple),
            (0, &b[..1], tuple),
            (hash_field::IP_SRC, &b[..], tuple),
        ];
        for (i, (fields, backends, t)) in told.into_iter().enumerate() {
            let mut v = tcp(11, 41000 + i as u16, 100, 80, SYN);
            let hashed = choose_backend(&v, &lb(&b));
            let t = if t == tuple {
                CtPacket::from_key(&v.key()).tuple
            } else {
                t
            };
            e.begin(2 + i as u64, 60, None);
            let wrong = b.iter().copied().find(|x| Some(*x) != hashed);
            let mut told = BackendChoices::default();
            told.push(fields, backends, t, wrong);
            e.assume_chosen(&mut told);
            let (_, chosen) = e.load_balance(5, &mut v, &lb(&b)).unwrap();
            assert_eq!(chosen, hashed, "case {i}");
        }
        // A new packet forgets the last one's choices.
        e.begin(9, 60, None);
        assert!(e.chosen.is_empty());
    }

    #[test]
    fn an_assumed_absence_holds_only_while_the_zone_creates_nothing() {
        let (mut e, ct) = engine(Mode::Live);
        let packet = |v: &FlowVector| CtPacket::from_key(&v.key());
        let syn = tcp(11, 40000, 12, 80, SYN);
        let ack = tcp(11, 40000, 12, 80, ACK);
        let tuple = packet(&syn).tuple;
        // Absent, as a preview found: the lookup answers new.
        e.begin(1, 60, None);
        e.assume_absent([(5, tuple, ct.zone_commits(5))].into_iter());
        let r = e.track(5, &mut syn.clone()).unwrap();
        assert_eq!(r.state, ct_state::TRK | ct_state::NEW);
        assert_eq!(e.ops()[0].zone_commits, Some(ct.zone_commits(5)));
        // The connection is created after the count was read: the
        // absence no longer holds and the lookup finds it.
        let before = ct.zone_commits(5);
        e.begin(2, 60, None);
        e.commit(5, &mut syn.clone(), &CtCommit::default()).unwrap();
        e.begin(3, 60, None);
        e.assume_absent([(5, tuple, before)].into_iter());
        let r = e.track(5, &mut ack.clone()).unwrap();
        assert!(e.ops()[0].conn.is_some(), "found: {r:?}");
        // While the count holds, the claim is taken without a lookup (so
        // a false one would be believed: only a look made moments before
        // in the same packet's pass may make it).
        e.begin(4, 60, None);
        e.assume_absent([(5, tuple, ct.zone_commits(5))].into_iter());
        let r = e.track(5, &mut ack.clone()).unwrap();
        assert!(e.ops()[0].conn.is_none(), "taken on trust: {r:?}");
        // A read-only engine (traces) never takes such claims.
        let (mut ro, ct) = engine(Mode::ReadOnly);
        ro.begin(1, 60, None);
        ro.assume_absent([(5, tuple, ct.zone_commits(5))].into_iter());
        assert!(ro.absent.is_empty());
    }

    #[test]
    fn track_does_not_translate_and_read_only_creates_nothing() {
        let (mut e, ct) = engine(Mode::ReadOnly);
        let b = backends();
        e.begin(1, 60, None);
        let mut v = tcp(11, 40000, 100, 80, SYN);
        let (r, chosen) = e.load_balance(5, &mut v, &lb(&b)).unwrap();
        assert!(chosen.is_some());
        assert_eq!(r.state & ct_state::NEW, ct_state::NEW);
        assert_eq!(
            v.field(field::DST),
            chosen.unwrap().addr,
            "trace shows the NAT"
        );
        let c = e.commit(5, &mut v, &CtCommit::default()).unwrap();
        assert_eq!(c.state & ct_state::NEW, ct_state::NEW);
        assert!(ct.is_empty(), "a read-only engine creates nothing");

        let (mut live, ct) = engine(Mode::Live);
        live.begin(1, 60, None);
        let mut v = tcp(11, 40000, 100, 80, SYN);
        live.nat(
            7,
            &mut v,
            NatDirection::Dnat,
            Some(NatTarget {
                addr: a4(12),
                ports: None,
            }),
        )
        .unwrap();
        assert_eq!(v.field(field::DST), a4(12));
        live.begin(2, 60, None);
        let mut reply = tcp(12, 80, 11, 40000, SYN | ACK);
        let r = live.track(7, &mut reply).unwrap();
        assert_eq!(
            r.state & (ct_state::RPL | ct_state::DNAT),
            ct_state::RPL | ct_state::DNAT
        );
        assert_eq!(reply.field(field::SRC), a4(12), "ct_next does not un-NAT");
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn commit_sets_mark_and_new_becomes_established_after_reply() {
        let (mut e, _) = engine(Mode::Live);
        e.begin(1, 60, None);
        let mut v = tcp(11, 1000, 12, 80, SYN);
        assert_eq!(
            e.track(3, &mut v).unwrap().state,
            ct_state::TRK | ct_state::NEW
        );
        assert_eq!(
            e.ops()[0].conn,
            None,
            "an uncommitted new packet has no connection"
        );
        let c = CtCommit {
            mark: 0x10,
            mark_mask: 0x10,
            ..Default::default()
        };
        let r = e.commit(3, &mut v, &c).unwrap();
        assert_eq!(r.mark, 0x10);
        e.begin(2, 60, None);
        let mut reply = tcp(12, 80, 11, 1000, SYN | ACK);
        let r = e.track(3, &mut reply).unwrap();
        assert_eq!(r.state, ct_state::TRK | ct_state::EST | ct_state::RPL);
        assert_eq!(r.mark, 0x10);
        // A mid-stream packet of no connection is picked up as new; a
        // SYN-ACK of none is invalid.
        e.begin(3, 60, None);
        let mut stray = tcp(11, 1001, 12, 80, ACK);
        assert_eq!(
            e.track(3, &mut stray).unwrap().state,
            ct_state::TRK | ct_state::NEW
        );
        let mut half = tcp(11, 1002, 12, 80, SYN | ACK);
        assert_eq!(
            e.track(3, &mut half).unwrap().state,
            ct_state::TRK | ct_state::INV
        );
    }

    #[test]
    fn a_second_action_in_a_zone_acts_on_the_connection_already_found() {
        let (mut e, ct) = engine(Mode::Live);
        let b = backends();
        e.begin(1, 60, None);
        let mut v = tcp(11, 40000, 100, 80, SYN);
        e.load_balance(5, &mut v, &lb(&b)).unwrap();
        // A retransmitted SYN: found (translated), then committed again
        // with its translated headers, as OVN's ACL stage does.
        e.begin(2, 60, None);
        let mut again = tcp(11, 40000, 100, 80, SYN);
        let (r, _) = e.load_balance(5, &mut again, &lb(&[])).unwrap();
        assert_eq!(r.state & ct_state::DNAT, ct_state::DNAT);
        let c = CtCommit {
            label: 1,
            label_mask: 1,
            ..Default::default()
        };
        let r = e.commit(5, &mut again, &c).unwrap();
        assert_eq!(r.label, 1, "the marks go to the connection found");
        assert_eq!(
            ct.len(),
            1,
            "no second connection for the translated headers"
        );
        assert_eq!(e.ops()[0].conn, e.ops()[1].conn);
    }

    #[test]
    fn affinity_binds_a_client_until_the_timeout() {
        let (mut e, _) = engine(Mode::Live);
        let b = backends();
        let vip = LbBackend {
            addr: a4(100),
            family: 4,
            port: 80,
        };
        e.begin(1_000, 60, None);
        let v = tcp(11, 1000, 100, 80, SYN);
        assert_eq!(e.affinity_lookup(&v).unwrap(), None);
        e.affinity_commit(&v, vip, b[1], 6, 2).unwrap();
        e.begin(1_500_000_000, 60, None);
        let other_port = tcp(11, 1001, 100, 80, SYN);
        assert_eq!(e.affinity_lookup(&other_port).unwrap(), Some(b[1]));
        let other_client = tcp(99, 1001, 100, 80, SYN);
        assert_eq!(e.affinity_lookup(&other_client).unwrap(), None);
        e.begin(3_000_000_000, 60, None);
        assert_eq!(e.affinity_lookup(&other_port).unwrap(), None, "expired");
        assert_eq!(e.affinity().expire(3_000_000_000), 1);
        assert!(e.affinity().is_empty());
    }

    #[test]
    fn affinity_table_is_bounded() {
        let aff = LbAffinity::new(2);
        let b = backends()[0];
        for c in 0..3u8 {
            let key = AffinityKey {
                client: a4(c),
                vip: a4(100),
                vip_port: 80,
                proto: 6,
            };
            aff.commit(key, b, 10, 0);
        }
        assert_eq!(aff.len(), 2);
        assert_eq!(aff.lost(), 1);
    }

    #[test]
    fn hairpin_is_seen_in_both_directions() {
        let (mut e, _) = engine(Mode::Live);
        // Backend 10.0.0.12 reaches its own VIP.
        let only = [backends()[0]];
        e.begin(1, 60, None);
        let mut v = tcp(12, 5555, 100, 80, SYN);
        e.load_balance(5, &mut v, &lb(&only)).unwrap();
        assert!(e.lb_hairpin(5, &v, false).unwrap());
        assert!(!e.lb_hairpin(5, &v, true).unwrap());
        // `ct_snat_to_vip` in another zone (the switch's SNAT zone) learns
        // the VIP from the connection of the last operation.
        let t = e.original_tuple(9, &v).expect("the last operation's");
        assert_eq!((t.dst, t.tp_dst), (a4(100), 80));
        e.begin(2, 60, None);
        let mut reply = tcp(12, 8080, 12, 5555, SYN | ACK);
        e.load_balance(5, &mut reply, &lb(&[])).unwrap();
        assert!(e.lb_hairpin(5, &reply, true).unwrap());
        assert!(!e.lb_hairpin(5, &reply, false).unwrap());
        // The reply as the backend sends it after `ct_snat_to_vip`: to the
        // VIP at the client's port, unknown in this zone.
        e.begin(3, 60, None);
        let mut to_vip = tcp(12, 8080, 100, 5555, ACK);
        e.load_balance(5, &mut to_vip, &lb(&[])).unwrap();
        assert!(e.lb_hairpin(5, &to_vip, true).unwrap());
        assert!(!e.lb_hairpin(5, &to_vip, false).unwrap());
        // Not to the VIP, or not at the client's port: no hairpin reply.
        let elsewhere = tcp(12, 8080, 101, 5555, ACK);
        assert!(!e.lb_hairpin(5, &elsewhere, true).unwrap());
        let other_port = tcp(12, 8080, 100, 5556, ACK);
        assert!(!e.lb_hairpin(5, &other_port, true).unwrap());

        // An ordinary client is no hairpin.
        e.begin(4, 60, None);
        let mut w = tcp(11, 5555, 100, 80, SYN);
        e.load_balance(5, &mut w, &lb(&only)).unwrap();
        assert!(!e.lb_hairpin(5, &w, false).unwrap());
    }

    #[test]
    fn table_full_is_a_refusal_with_the_engine_reason() {
        let ct = Arc::new(Conntrack::new(&ConntrackConfig {
            capacity: 1,
            shards: 1,
            ..Default::default()
        }));
        let mut e = ConntrackEngine::new(ct, Arc::new(LbAffinity::new(1)), Mode::Live);
        e.begin(1, 60, None);
        let mut v = tcp(11, 1, 12, 80, SYN);
        e.commit(1, &mut v, &CtCommit::default()).unwrap();
        e.begin(2, 60, None);
        let mut w = tcp(11, 2, 12, 80, SYN);
        let err = e.commit(1, &mut w, &CtCommit::default()).unwrap_err();
        assert_eq!(err, CtRefusal::Engine(conntrack::CtError::TableFull));
        assert_eq!(err.drop_reason(), Some("ct_table_full"));
    }
}
