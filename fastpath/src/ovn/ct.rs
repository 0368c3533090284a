//! The pipeline's conntrack hook: what the interpreter asks of connection
//! tracking at each `ct_*` action, load-balancer affinity and hairpin
//! check, and the two implementations that live beside the pipeline:
//! [`NoConntrack`] (no engine connected: every request is refused and the
//! packet is dropped under the action's unsupported name, as before
//! conntrack existed) and [`PinnedConntrack`] (`ovn-trace`'s model: the
//! `ct_state` of each tracking action is pinned in advance, the
//! load-balancer backend is pinned by `--lb-dst`).
//!
//! Owns the request and result types ([`CtResult`], [`CtCommit`],
//! [`NatRequest`], [`LbRequest`], [`CtOp`]) and the default backend choice
//! ([`choose_backend`]). It must not hold connection state beyond a packet
//! (that is the conntrack engine's, which implements [`ConntrackHook`]) and
//! must not touch frames.

use fastpath_packet::flowkey::{field, flags};
use fastpath_tables::ovn::{ct_state, hash_field, vector};

use super::vector::FlowVector;

/// A conntrack zone (0: the default zone of untracked traffic).
pub type CtZone = u16;

/// What a tracking or committing request reports: the connection's
/// `ct_state` bits ([`ct_state`]), `ct_mark` and `ct_label` as the packet
/// sees them afterwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CtResult {
    /// `ct_state` bits.
    pub state: u32,
    /// `ct_mark`.
    pub mark: u32,
    /// `ct_label`.
    pub label: u128,
}

impl CtResult {
    /// Reads the ct fields of a vector.
    pub fn of(v: &FlowVector) -> CtResult {
        let mut label = [0u8; 16];
        label.copy_from_slice(v.field(vector::CT_LABEL));
        CtResult {
            state: v.u32_at(vector::CT_STATE.start),
            mark: v.u32_at(vector::CT_MARK.start),
            label: u128::from_be_bytes(label),
        }
    }

    /// Writes the ct fields into a vector.
    pub fn store(&self, v: &mut FlowVector) {
        v.set_u32(vector::CT_STATE.start, self.state);
        v.set_u32(vector::CT_MARK.start, self.mark);
        v.field_mut(vector::CT_LABEL)
            .copy_from_slice(&self.label.to_be_bytes());
    }
}

/// A translation: an address (IPv4 v4-mapped) and an optional port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NatTarget {
    /// Address, 16 bytes (IPv4 v4-mapped).
    pub addr: [u8; 16],
    /// Inclusive port range, if any.
    pub ports: Option<(u16, u16)>,
}

/// Direction of a translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatDirection {
    /// Destination NAT.
    Dnat,
    /// Source NAT.
    Snat,
}

/// The NAT part of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NatRequest {
    /// No translation.
    #[default]
    None,
    /// Translate to this target (in this direction) for a new connection.
    To(NatDirection, NatTarget),
    /// Keep the connection's existing translation (`ct_commit_nat`).
    Existing,
}

/// `ct_commit { ct_mark = ...; ct_label = ...; }`: the new mark and label
/// bits (value under mask) and an optional translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CtCommit {
    /// `ct_mark` value.
    pub mark: u32,
    /// Bits of `ct_mark` to set.
    pub mark_mask: u32,
    /// `ct_label` value.
    pub label: u128,
    /// Bits of `ct_label` to set.
    pub label_mask: u128,
    /// Translation.
    pub nat: NatRequest,
}

/// One backend of a load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LbBackend {
    /// Address (IPv4 v4-mapped).
    pub addr: [u8; 16],
    /// 4 or 6.
    pub family: u8,
    /// Port (0: keep the packet's).
    pub port: u16,
}

/// `ct_lb` / `ct_lb_mark`.
#[derive(Debug, Clone, Copy)]
pub struct LbRequest<'a> {
    /// Backends (empty: only the connection's existing translation).
    pub backends: &'a [LbBackend],
    /// [`hash_field`] bits (0: the 5-tuple).
    pub hash_fields: u32,
    /// `ct_lb_mark` (the marks go to `ct_mark`) rather than `ct_lb`.
    pub mark: bool,
    /// `skip_snat`.
    pub skip_snat: bool,
    /// `force_snat`.
    pub force_snat: bool,
}

/// A `ct_lb`/`ct_lb_mark` request as a verdict keeps it, so that the
/// operation can be issued again for another packet (megaflow replay).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbCall {
    /// Backends.
    pub backends: Vec<LbBackend>,
    /// [`LbRequest::hash_fields`].
    pub hash_fields: u32,
    /// [`LbRequest::mark`].
    pub mark: bool,
    /// [`LbRequest::skip_snat`].
    pub skip_snat: bool,
    /// [`LbRequest::force_snat`].
    pub force_snat: bool,
}

impl LbCall {
    /// The request.
    pub fn request(&self) -> LbRequest<'_> {
        LbRequest {
            backends: &self.backends,
            hash_fields: self.hash_fields,
            mark: self.mark,
            skip_snat: self.skip_snat,
            force_snat: self.force_snat,
        }
    }
}

/// One call of a verdict into its [`ConntrackHook`] that changed what the
/// pipeline saw, in order: a conntrack operation or a hairpin check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtCall {
    /// The operation `Verdict::ct_ops[index]` (never a `ct_clear`), with
    /// its load-balancer request when it is `ct_lb`/`ct_lb_mark`.
    Op {
        /// Index in `ct_ops`.
        index: usize,
        /// The request of a `ct_lb`/`ct_lb_mark`.
        lb: Option<LbCall>,
    },
    /// `chk_lb_hairpin()` (`reply` false) or `chk_lb_hairpin_reply()`.
    Hairpin {
        /// Zone checked.
        zone: CtZone,
        /// The reply check.
        reply: bool,
        /// The answer.
        hit: bool,
    },
}

/// `ct_mark` bits northd 23.03 defines (`ct_mark.blocked`, `.natted`, ...).
pub mod mark_bit {
    /// `ct_mark.blocked`.
    pub const BLOCKED: u32 = 1 << 0;
    /// `ct_mark.natted`: the connection was load-balanced.
    pub const NATTED: u32 = 1 << 1;
    /// `ct_mark.ecmp_reply_port` is bits 16.. (not used here).
    pub const SKIP_SNAT: u32 = 1 << 2;
    /// `ct_mark.force_snat`.
    pub const FORCE_SNAT: u32 = 1 << 3;
}

/// The original-direction tuple of a connection (what OVS calls
/// `ct_nw_src`, `ct_nw_dst`, `ct_nw_proto`, `ct_tp_src`, `ct_tp_dst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CtTuple {
    /// Source address (IPv4 v4-mapped).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// IP protocol.
    pub proto: u8,
    /// Source port.
    pub tp_src: u16,
    /// Destination port.
    pub tp_dst: u16,
}

/// What a conntrack operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CtOpKind {
    /// `ct_next`.
    Track,
    /// `ct_dnat`/`ct_snat` (and `_in_czone`), with the target if any.
    Nat(NatDirection, Option<NatTarget>),
    /// `ct_lb`/`ct_lb_mark`; the backend chosen, if any.
    LoadBalance(Option<LbBackend>),
    /// `ct_commit { }` / `ct_commit_nat` / `ct_snat_to_vip`.
    Commit(CtCommit),
    /// `ct_clear`.
    Clear,
}

/// One conntrack operation of a verdict, in order: the zone, what was
/// asked and the result the packet saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CtOp {
    /// Zone.
    pub zone: CtZone,
    /// Operation.
    pub kind: CtOpKind,
    /// The ct fields afterwards.
    pub result: CtResult,
}

/// Why a hook could not serve a request: the packet is dropped under the
/// action's unsupported-action name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CtRefusal {
    /// No conntrack engine is connected.
    #[error("no conntrack engine")]
    NoEngine,
    /// The engine's table is full (the packet cannot be tracked).
    #[error("conntrack table full")]
    TableFull,
    /// The engine refused a commit (table full, NAT exhausted, ...): the
    /// packet is dropped under [`crate::conntrack::CtError::drop_reason`].
    #[error("conntrack: {0}")]
    Engine(crate::conntrack::CtError),
}

impl CtRefusal {
    /// The drop reason of an engine refusal (`None`: no engine, the packet
    /// is dropped under the action's unsupported name).
    pub fn drop_reason(&self) -> Option<&'static str> {
        match self {
            CtRefusal::NoEngine => None,
            CtRefusal::TableFull => Some("ct_table_full"),
            CtRefusal::Engine(e) => Some(e.drop_reason()),
        }
    }
}

/// What the interpreter asks of connection tracking.
///
/// Each `ct_*` action of the pipeline calls one method with the zone the
/// action runs in (the logical port's zone in a switch: the inport's in
/// ingress, the outport's in egress; a router's DNAT zone, or SNAT zone for
/// `ct_snat`, `ct_commit` and `ct_snat_to_vip`; the DNAT zone as the common
/// zone for `*_in_czone`). A method that tracks or translates updates the
/// vector's header fields itself (the translation) and returns the ct
/// fields; the interpreter stores them in the vector. Every call that
/// returns a result is recorded, in order, in the verdict's `ct_ops`
/// ([`CtOp`]: zone, kind, result seen), so that a flow cache can replay the
/// same operations on later packets of the flow and validate that each
/// still returns the same result (a different result means the cached
/// decision no longer holds and the packet must go through the interpreter
/// again).
pub trait ConntrackHook {
    /// `ct_next`: track the packet in `zone`.
    fn track(&mut self, zone: CtZone, v: &mut FlowVector) -> Result<CtResult, CtRefusal>;

    /// `ct_dnat`/`ct_snat` (and `_in_czone`): track in `zone`, apply the
    /// connection's existing translation in `direction`; with a target, a
    /// new connection is committed with that translation.
    fn nat(
        &mut self,
        zone: CtZone,
        v: &mut FlowVector,
        direction: NatDirection,
        target: Option<NatTarget>,
    ) -> Result<CtResult, CtRefusal>;

    /// `ct_lb`/`ct_lb_mark`: an established connection gets its existing
    /// translation; a new one is committed with DNAT to a backend
    /// ([`ConntrackHook::choose_backend`]) and `ct_mark.natted` (plus
    /// `skip_snat`/`force_snat`). Returns the result and the backend used.
    fn load_balance(
        &mut self,
        zone: CtZone,
        v: &mut FlowVector,
        lb: &LbRequest<'_>,
    ) -> Result<(CtResult, Option<LbBackend>), CtRefusal>;

    /// `ct_commit`, `ct_commit_nat`, `ct_snat_to_vip`: commit the
    /// connection with mark/label bits and an optional translation.
    fn commit(
        &mut self,
        zone: CtZone,
        v: &mut FlowVector,
        commit: &CtCommit,
    ) -> Result<CtResult, CtRefusal>;

    /// The backend of a new load-balanced connection (default: a hash of
    /// the 5-tuple, or of `hash_fields`: [`choose_backend`]).
    fn choose_backend(&mut self, v: &FlowVector, lb: &LbRequest<'_>) -> Option<LbBackend> {
        choose_backend(v, lb)
    }

    /// The original-direction tuple of the packet's connection in `zone`,
    /// if it is tracked there.
    fn original_tuple(&self, zone: CtZone, v: &FlowVector) -> Option<CtTuple>;

    /// `chk_lb_hairpin()` (`reply` false: a load-balanced packet whose
    /// backend is its own source) or `chk_lb_hairpin_reply()` (`reply`
    /// true: the reply of such a connection).
    fn lb_hairpin(&mut self, zone: CtZone, v: &FlowVector, reply: bool) -> Result<bool, CtRefusal>;

    /// `chk_lb_aff()`: the backend that the client of `v` is bound to for
    /// the VIP `v` is addressed to, if any.
    fn affinity_lookup(&mut self, v: &FlowVector) -> Result<Option<LbBackend>, CtRefusal>;

    /// `commit_lb_aff(vip, backend, proto, timeout)`: bind the client of `v`
    /// to `backend` for `vip` for `timeout` seconds.
    fn affinity_commit(
        &mut self,
        v: &FlowVector,
        vip: LbBackend,
        backend: LbBackend,
        proto: u8,
        timeout: u32,
    ) -> Result<(), CtRefusal>;
}

/// The default backend choice: a hash (word by word, then a 64-bit mix) of the
/// flow's 5-tuple, or of the `hash_fields`, modulo the backends of the
/// packet's family.
pub fn choose_backend(v: &FlowVector, lb: &LbRequest<'_>) -> Option<LbBackend> {
    let family = family_of(v)?;
    let usable = || lb.backends.iter().filter(move |b| b.family == family);
    let n = usable().count();
    if n == 0 {
        return None;
    }
    let b = v.bytes();
    let fields = if lb.hash_fields == 0 {
        hash_field::IP_SRC
            | hash_field::IP_DST
            | hash_field::TP_SRC
            | hash_field::TP_DST
            | hash_field::IP_PROTO
    } else {
        lb.hash_fields
    };
    // Each field is folded in 8 bytes at a time (a multiply per word, not
    // per byte: FNV-1a byte by byte over an IPv6-sized 5-tuple was a
    // chain of 37 dependent multiplies, twice per new connection), then
    // the result is mixed so that its low bits, which pick the backend,
    // depend on every input bit.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(27);
        }
    };
    let parts: [(u32, &[u8]); 7] = [
        (hash_field::ETH_SRC, &b[field::ETH_SRC]),
        (hash_field::ETH_DST, &b[field::ETH_DST]),
        (hash_field::IP_SRC | hash_field::IPV6_SRC, &b[field::SRC]),
        (hash_field::IP_DST | hash_field::IPV6_DST, &b[field::DST]),
        (hash_field::TP_SRC, &b[field::TP_SRC]),
        (hash_field::TP_DST, &b[field::TP_DST]),
        (
            hash_field::IP_PROTO,
            &b[field::IP_PROTO..field::IP_PROTO + 1],
        ),
    ];
    for (bits, bytes) in parts {
        if bits & fields != 0 {
            eat(bytes);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    usable().nth((h % n as u64) as usize).copied()
}

fn family_of(v: &FlowVector) -> Option<u8> {
    let f = v.key_flags();
    if f & flags::IPV4 != 0 {
        Some(4)
    } else if f & flags::IPV6 != 0 {
        Some(6)
    } else {
        None
    }
}

/// Rewrites the vector's source or destination address (and port) to a
/// translation target.
pub fn apply_translation(v: &mut FlowVector, direction: NatDirection, addr: &[u8; 16], port: u16) {
    let (a, p) = match direction {
        NatDirection::Dnat => (field::DST, field::TP_DST),
        NatDirection::Snat => (field::SRC, field::TP_SRC),
    };
    v.field_mut(a).copy_from_slice(addr);
    if port != 0 && v.key_flags() & flags::L4 != 0 {
        v.field_mut(p).copy_from_slice(&port.to_be_bytes());
    }
}

/// No conntrack engine: every request is refused, so a packet reaching a
/// conntrack action is dropped and counted under the action's name.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoConntrack;

impl ConntrackHook for NoConntrack {
    fn track(&mut self, _: CtZone, _: &mut FlowVector) -> Result<CtResult, CtRefusal> {
        Err(CtRefusal::NoEngine)
    }
    fn nat(
        &mut self,
        _: CtZone,
        _: &mut FlowVector,
        _: NatDirection,
        _: Option<NatTarget>,
    ) -> Result<CtResult, CtRefusal> {
        Err(CtRefusal::NoEngine)
    }
    fn load_balance(
        &mut self,
        _: CtZone,
        _: &mut FlowVector,
        _: &LbRequest<'_>,
    ) -> Result<(CtResult, Option<LbBackend>), CtRefusal> {
        Err(CtRefusal::NoEngine)
    }
    fn commit(
        &mut self,
        _: CtZone,
        _: &mut FlowVector,
        _: &CtCommit,
    ) -> Result<CtResult, CtRefusal> {
        Err(CtRefusal::NoEngine)
    }
    fn original_tuple(&self, _: CtZone, _: &FlowVector) -> Option<CtTuple> {
        None
    }
    fn lb_hairpin(&mut self, _: CtZone, _: &FlowVector, _: bool) -> Result<bool, CtRefusal> {
        Err(CtRefusal::NoEngine)
    }
    fn affinity_lookup(&mut self, _: &FlowVector) -> Result<Option<LbBackend>, CtRefusal> {
        Err(CtRefusal::NoEngine)
    }
    fn affinity_commit(
        &mut self,
        _: &FlowVector,
        _: LbBackend,
        _: LbBackend,
        _: u8,
        _: u32,
    ) -> Result<(), CtRefusal> {
        Err(CtRefusal::NoEngine)
    }
}

/// Why an `ovn-trace --ct` flag list does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinnedError {
    /// A flag is not one of trk, new, est, rel, rpl, inv, dnat, snat.
    #[error("unknown ct_state flag {0:?}")]
    UnknownFlag(String),
    /// `--lb-dst` is not `IP[:PORT]`.
    #[error("bad load-balancer destination {0:?}")]
    BadLbDst(String),
}

/// `ovn-trace`'s conntrack model, for differential tests: each tracking
/// action (`ct_next`, `ct_lb*`, and a NAT action on an untracked packet)
/// consumes the next pinned `ct_state` (default `trk,est`; `trk` is always
/// set); `ct_next` replaces the state, the others add to it. `ct_lb` with
/// backends picks the pinned `--lb-dst` if listed (once), else one by the
/// default hash; `ct_lb` without backends translates to `--lb-dst` if
/// given. NAT with a target translates and sets `dnat`/`snat`; without one
/// changes nothing. Commits change nothing; `chk_lb_hairpin` holds when
/// the packet was load-balanced to its own source. The model is for one
/// packet: make a new one for each.
#[derive(Debug, Clone, Default)]
pub struct PinnedConntrack {
    states: Vec<u32>,
    next: usize,
    lb_dst: Option<LbBackend>,
    /// The original destination (address, port) of the last translation.
    original: Option<([u8; 16], u16)>,
}

impl PinnedConntrack {
    /// A model with `ct_state`s given as `ovn-trace --ct` flag lists
    /// (`"new"`, `"trk,est"`, ...) and an optional `--lb-dst` (`IP[:PORT]`).
    pub fn new(ct: &[&str], lb_dst: Option<&str>) -> Result<PinnedConntrack, PinnedError> {
        let mut states = Vec::new();
        for list in ct {
            let mut s = ct_state::TRK;
            for f in list.split([',', ' ']).filter(|f| !f.is_empty()) {
                s |= match f {
                    "trk" => ct_state::TRK,
                    "new" => ct_state::NEW,
                    "est" => ct_state::EST,
                    "rel" => ct_state::REL,
                    "rpl" => ct_state::RPL,
                    "inv" => ct_state::INV,
                    "dnat" => ct_state::DNAT,
                    "snat" => ct_state::SNAT,
                    _ => return Err(PinnedError::UnknownFlag(f.to_string())),
                };
            }
            states.push(s);
        }
        let lb_dst = match lb_dst {
            None => None,
            Some(text) => {
                Some(parse_lb_dst(text).ok_or_else(|| PinnedError::BadLbDst(text.into()))?)
            }
        };
        Ok(PinnedConntrack {
            states,
            next: 0,
            lb_dst,
            original: None,
        })
    }

    fn next_state(&mut self) -> u32 {
        let s = self
            .states
            .get(self.next)
            .copied()
            .unwrap_or(ct_state::TRK | ct_state::EST);
        self.next += 1;
        s
    }

    /// How many pinned states the packet consumed.
    pub fn consumed(&self) -> usize {
        self.next
    }

    fn remember_original(&mut self, v: &FlowVector) {
        let mut dst = [0u8; 16];
        dst.copy_from_slice(v.field(field::DST));
        let port = u16::from_be_bytes([
            v.bytes()[field::TP_DST.start],
            v.bytes()[field::TP_DST.start + 1],
        ]);
        self.original = Some((dst, port));
    }
}

fn parse_lb_dst(text: &str) -> Option<LbBackend> {
    use std::net::{IpAddr, SocketAddr};
    if let Ok(sa) = text.parse::<SocketAddr>() {
        let (addr, family) = match sa.ip() {
            IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), 4),
            IpAddr::V6(a) => (a.octets(), 6),
        };
        return Some(LbBackend {
            addr,
            family,
            port: sa.port(),
        });
    }
    let ip: IpAddr = text.trim_matches(['[', ']']).parse().ok()?;
    let (addr, family) = match ip {
        IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), 4),
        IpAddr::V6(a) => (a.octets(), 6),
    };
    Some(LbBackend {
        addr,
        family,
        port: 0,
    })
}

impl ConntrackHook for PinnedConntrack {
    fn track(&mut self, _: CtZone, v: &mut FlowVector) -> Result<CtResult, CtRefusal> {
        let mut r = CtResult::of(v);
        r.state = self.next_state();
        Ok(r)
    }

    fn nat(
        &mut self,
        _: CtZone,
        v: &mut FlowVector,
        direction: NatDirection,
        target: Option<NatTarget>,
    ) -> Result<CtResult, CtRefusal> {
        let mut r = CtResult::of(v);
        if let Some(t) = target {
            if direction == NatDirection::Dnat {
                self.remember_original(v);
            }
            // ovn-trace translates the address only.
            apply_translation(v, direction, &t.addr, 0);
            r.state |= match direction {
                NatDirection::Dnat => ct_state::DNAT,
                NatDirection::Snat => ct_state::SNAT,
            };
        }
        if r.state & ct_state::TRK == 0 {
            r.state |= self.next_state();
        }
        Ok(r)
    }

    fn load_balance(
        &mut self,
        _: CtZone,
        v: &mut FlowVector,
        lb: &LbRequest<'_>,
    ) -> Result<(CtResult, Option<LbBackend>), CtRefusal> {
        let mut r = CtResult::of(v);
        let Some(family) = family_of(v) else {
            return Ok((r, None));
        };
        let chosen = if lb.backends.is_empty() {
            self.lb_dst.filter(|d| d.family == family)
        } else {
            match self.lb_dst.filter(|d| d.family == family).and_then(|d| {
                lb.backends
                    .iter()
                    .find(|b| b.family == family && b.addr == d.addr)
            }) {
                Some(b) => {
                    self.lb_dst = None;
                    Some(*b)
                }
                None => self.choose_backend(v, lb),
            }
        };
        if let Some(b) = chosen {
            self.remember_original(v);
            apply_translation(v, NatDirection::Dnat, &b.addr, b.port);
            r.state |= ct_state::DNAT;
        }
        r.state |= self.next_state();
        Ok((r, chosen))
    }

    fn commit(
        &mut self,
        _: CtZone,
        v: &mut FlowVector,
        _: &CtCommit,
    ) -> Result<CtResult, CtRefusal> {
        Ok(CtResult::of(v))
    }

    fn original_tuple(&self, _: CtZone, v: &FlowVector) -> Option<CtTuple> {
        let (dst, tp_dst) = self.original?;
        let b = v.bytes();
        let mut src = [0u8; 16];
        src.copy_from_slice(&b[field::SRC]);
        Some(CtTuple {
            src,
            dst,
            proto: b[field::IP_PROTO],
            tp_src: u16::from_be_bytes([b[field::TP_SRC.start], b[field::TP_SRC.start + 1]]),
            tp_dst,
        })
    }

    fn lb_hairpin(&mut self, zone: CtZone, v: &FlowVector, reply: bool) -> Result<bool, CtRefusal> {
        // As ovn-trace: the packet was load-balanced (its original
        // destination is known: the VIP) to its own source; the original
        // check also wants the original port to be the VIP's (true by
        // construction), the reply check wants the current destination
        // port to be the VIP's.
        let Some(original) = self.original_tuple(zone, v) else {
            return Ok(false);
        };
        let state = v.u32_at(vector::CT_STATE.start);
        let hairpin = state & ct_state::DNAT != 0 && v.field(field::SRC) == v.field(field::DST);
        let b = v.bytes();
        let tp_dst = u16::from_be_bytes([b[field::TP_DST.start], b[field::TP_DST.start + 1]]);
        Ok(hairpin && (!reply || original.tp_dst == tp_dst))
    }

    fn affinity_lookup(&mut self, _: &FlowVector) -> Result<Option<LbBackend>, CtRefusal> {
        // ovn-trace leaves the result unchanged: no affinity entry.
        Ok(None)
    }

    fn affinity_commit(
        &mut self,
        _: &FlowVector,
        _: LbBackend,
        _: LbBackend,
        _: u8,
        _: u32,
    ) -> Result<(), CtRefusal> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_vector(dst: [u8; 4], port: u16) -> FlowVector {
        let mut v = FlowVector::default();
        let b = v.bytes_mut();
        b[field::FLAGS] = flags::IPV4 | flags::L4;
        b[field::IP_PROTO] = 6;
        b[field::SRC].copy_from_slice(
            &std::net::Ipv4Addr::new(10, 0, 0, 11)
                .to_ipv6_mapped()
                .octets(),
        );
        b[field::DST].copy_from_slice(&std::net::Ipv4Addr::from(dst).to_ipv6_mapped().octets());
        b[field::TP_SRC].copy_from_slice(&1000u16.to_be_bytes());
        b[field::TP_DST].copy_from_slice(&port.to_be_bytes());
        v
    }

    #[test]
    fn pinned_states_are_consumed_in_order_with_trk_implied() {
        let mut ct = PinnedConntrack::new(&["new", "est,rpl"], None).unwrap();
        let mut v = tcp_vector([10, 0, 0, 12], 80);
        assert_eq!(
            ct.track(1, &mut v).unwrap().state,
            ct_state::TRK | ct_state::NEW
        );
        assert_eq!(
            ct.track(1, &mut v).unwrap().state,
            ct_state::TRK | ct_state::EST | ct_state::RPL
        );
        assert_eq!(
            ct.track(1, &mut v).unwrap().state,
            ct_state::TRK | ct_state::EST
        );
        assert_eq!(ct.consumed(), 3);
        assert!(PinnedConntrack::new(&["bogus"], None).is_err());
        assert!(PinnedConntrack::new(&[], Some("10.0.0.1:x")).is_err());
    }

    #[test]
    fn pinned_lb_prefers_lb_dst_and_translates_address_and_port() {
        let a = |x: u8| {
            std::net::Ipv4Addr::new(10, 0, 0, x)
                .to_ipv6_mapped()
                .octets()
        };
        let backends = [
            LbBackend {
                addr: a(12),
                family: 4,
                port: 8080,
            },
            LbBackend {
                addr: a(13),
                family: 4,
                port: 8080,
            },
        ];
        let lb = LbRequest {
            backends: &backends,
            hash_fields: 0,
            mark: true,
            skip_snat: false,
            force_snat: false,
        };
        let mut ct = PinnedConntrack::new(&["new"], Some("10.0.0.13:8080")).unwrap();
        let mut v = tcp_vector([10, 0, 0, 100], 80);
        let (r, b) = ct.load_balance(3, &mut v, &lb).unwrap();
        assert_eq!(b, Some(backends[1]));
        assert_eq!(r.state, ct_state::TRK | ct_state::NEW | ct_state::DNAT);
        assert_eq!(&v.field(field::DST)[12..], &[10, 0, 0, 13]);
        assert_eq!(v.field(field::TP_DST), &8080u16.to_be_bytes());
        assert_eq!(ct.original_tuple(3, &v).map(|t| t.tp_dst), Some(80));
    }

    #[test]
    fn default_choice_is_stable_and_spreads() {
        let a = |x: u8| {
            std::net::Ipv4Addr::new(10, 0, 0, x)
                .to_ipv6_mapped()
                .octets()
        };
        let backends = [
            LbBackend {
                addr: a(12),
                family: 4,
                port: 0,
            },
            LbBackend {
                addr: a(13),
                family: 4,
                port: 0,
            },
        ];
        let lb = LbRequest {
            backends: &backends,
            hash_fields: 0,
            mark: true,
            skip_snat: false,
            force_snat: false,
        };
        let mut seen = std::collections::HashSet::new();
        for port in 1000..1064u16 {
            let mut v = tcp_vector([10, 0, 0, 100], 80);
            v.bytes_mut()[field::TP_SRC].copy_from_slice(&port.to_be_bytes());
            let first = choose_backend(&v, &lb);
            assert_eq!(first, choose_backend(&v, &lb));
            seen.insert(first.map(|b| b.addr[15]));
        }
        assert_eq!(seen.len(), 2, "both backends are used");
        // Even source ports only (what Linux gives connect()).
        let mut even = std::collections::HashSet::new();
        for port in (32768..32800u16).step_by(2) {
            let mut v = tcp_vector([10, 0, 0, 100], 80);
            v.bytes_mut()[field::TP_SRC].copy_from_slice(&port.to_be_bytes());
            even.insert(choose_backend(&v, &lb).map(|b| b.addr[15]));
        }
        assert_eq!(even.len(), 2, "even source ports use both backends too");
        let only_src = LbRequest {
            hash_fields: hash_field::IP_SRC,
            ..lb
        };
        let x = choose_backend(&tcp_vector([10, 0, 0, 100], 80), &only_src);
        let y = choose_backend(&tcp_vector([10, 0, 0, 101], 81), &only_src);
        assert_eq!(x, y, "hash_fields=ip_src ignores the destination");
    }

    #[test]
    fn no_conntrack_refuses() {
        let mut v = tcp_vector([10, 0, 0, 12], 80);
        assert_eq!(NoConntrack.track(1, &mut v), Err(CtRefusal::NoEngine));
    }
}
