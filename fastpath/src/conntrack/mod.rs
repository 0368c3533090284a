//! Connection tracking and NAT for the OVN pipeline's `ct_*` actions.
//!
//! This module owns the connection table ([`Conntrack`]), the per-protocol
//! state machines and timeouts ([`CtTimeouts`]), NAT port allocation and the
//! in-place NAT rewrite of frames ([`apply_translation`]). It must not touch
//! the OVN interpreter, the flow cache, counters or DPDK: callers hand it a
//! [`CtPacket`] and a time, and it hands back a [`CtResult`] (the `ct_state`
//! bits OVN's flows match on, `ct_mark`, `ct_label`, the [`ConnId`] a flow
//! cache may keep, and the [`Translation`] to apply) or a [`CtError`] whose
//! [`CtError::drop_reason`] the caller counts. It never reads a clock: `now`
//! (ns, any monotonic origin) always comes from the caller, so tests and
//! fuzzing are deterministic.
//!
//! # What the pipeline calls
//!
//! * `ct_next` → [`Conntrack::lookup`]: classifies and refreshes, creates
//!   nothing. An uncommitted new packet is `trk|new` and leaves nothing behind.
//! * `ct_commit`, `ct_lb_mark`, `ct_dnat(ip)`, `ct_snat(ip)` →
//!   [`Conntrack::commit`] with a [`CtCommit`] (mark/label value and mask,
//!   optional SNAT/DNAT range). Only a commit creates a connection.
//! * A flow-cache hit → [`Conntrack::touch_stamped`] with the cached
//!   [`ConnId`] and direction (one shard lock, one slab access), then, while
//!   the [`Stamp`] it answered holds and the packet cannot change the
//!   connection, [`Conntrack::touch_fast`]: no lock, one cache line.
//! * Housekeeping (off the lcores, or between bursts) → [`Conntrack::expire`]
//!   with a slot budget; `fastpathctl conntrack` → [`Conntrack::list`] and
//!   [`Conntrack::flush`].
//!
//! # Semantics (as OVS conntrack reports them)
//!
//! A connection is keyed by (zone, [`Tuple`]) in both directions: its original
//! tuple, and its reply tuple (the reverse of the translated original). The
//! `ct_state` bits are [`ct_state`]: packets of the original direction are
//! `new` until the first reply, then `est`; replies are `est|rpl`; ICMP errors
//! quoting a packet of a connection are `rel` (plus `rpl` when they travel in
//! the reply direction); connections with NAT add `snat` / `dnat`. TCP has a
//! state machine without window tracking: a plain SYN opens a connection, and
//! so does a mid-stream packet (picked up in ESTABLISHED, as OVS's userspace
//! conntrack does: OVN tracks some zones without committing them, where
//! every packet must be `new`), but not a SYN-ACK or a RST (`inv`); invalid
//! flag combinations are `inv`, FIN and RST move to closing states with short
//! timeouts, and a SYN on a closed or TIME-WAIT connection replaces it. UDP,
//! ICMP/ICMPv6 echo and other IP protocols are pseudo-connections; later IP
//! fragments are `inv` (no reassembly).
//!
//! # Sharing between lcores
//!
//! The table is split into a power-of-two number of shards, each a slab of
//! preallocated entries and a `hashbrown` index of keys, behind its own
//! `parking_lot` mutex held only for one table operation (no allocation in
//! steady state). The shard of a key comes from [`Tuple::symmetric_hash`], the
//! same for a tuple and its reverse and in every zone, so both directions of
//! a connection without NAT meet in one shard and one lock. A NATed connection's reply
//! tuple may hash elsewhere: its index entry then lives in that shard and
//! points at the home shard (the original tuple's), and a reply lookup takes
//! the two locks one after the other, never nested. A commit that needs both
//! locks takes them in shard order, or with a bounded `try_lock` out of
//! order (a busy candidate is skipped), so there is no deadlock. Index
//! entries carry the slot's incarnation; a per-slot atomic incarnation lets a
//! shard recognise an entry left behind by a connection that died elsewhere.
//! The uncontended cost of the mutex is one atomic swap to take and one to
//! release, the same as a spin lock, which this crate could not write without
//! `unsafe`; contention is rare since a shard lock covers 1/shards of the
//! connections and is held for tens of nanoseconds.
//!
//! Capacity is split evenly over the shards; a commit into a full shard fails
//! with [`CtError::TableFull`] (drop reason `ct_table_full`).
#![forbid(unsafe_code)]

pub mod fuzzing;
mod nat;
mod proto;
mod table;
#[cfg(test)]
mod tests;
mod tuple;

pub use nat::{apply_translation, NatRange, Rewrite, RewriteError, Translation};
pub use proto::{CtTimeouts, Dir, L4State, TcpState};
pub use table::{format_tuple, ConnId, Conntrack, Stamp};
pub use tuple::{addr_from_bytes, addr_to_bytes, CtPacket, PacketClass, Tuple};

use std::net::IpAddr;

/// The `ct_state` bits, with OVS's values.
pub mod ct_state {
    /// Start of a new connection.
    pub const NEW: u32 = 0x01;
    /// Part of an existing connection.
    pub const EST: u32 = 0x02;
    /// Related to an existing connection (an ICMP error quoting it).
    pub const REL: u32 = 0x04;
    /// In the reply direction.
    pub const RPL: u32 = 0x08;
    /// Invalid: conntrack could not make sense of it.
    pub const INV: u32 = 0x10;
    /// Went through conntrack.
    pub const TRK: u32 = 0x20;
    /// The connection has source NAT.
    pub const SNAT: u32 = 0x40;
    /// The connection has destination NAT.
    pub const DNAT: u32 = 0x80;
}

/// Sizes and timeouts of a [`Conntrack`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Most connections (rounded down to a multiple of `shards`).
    pub capacity: usize,
    /// Number of shards (rounded up to a power of two, at most 1024).
    pub shards: usize,
    /// Idle timeouts per state.
    pub timeouts: CtTimeouts,
    /// Most reply tuples a NAT commit tries before [`CtError::NatExhausted`].
    pub nat_attempts: usize,
    /// Ask the kernel for transparent huge pages for the table's arrays
    /// (`[memory] transparent_huge_pages`).
    pub huge_pages: bool,
}

impl Default for ConntrackConfig {
    /// 262 144 connections in 64 shards, default timeouts, 1024 NAT
    /// attempts, on huge pages.
    fn default() -> Self {
        ConntrackConfig {
            capacity: 1 << 18,
            shards: 64,
            timeouts: CtTimeouts::default(),
            nat_attempts: 1024,
            huge_pages: true,
        }
    }
}

/// What a commit sets: `ct_mark` and `ct_label` under masks (only the masked
/// bits change), and NAT for a new connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtCommit {
    /// New `ct_mark` bits.
    pub mark: u32,
    /// Which `ct_mark` bits to set.
    pub mark_mask: u32,
    /// New `ct_label` bits.
    pub label: u128,
    /// Which `ct_label` bits to set.
    pub label_mask: u128,
    /// Source NAT of a new connection (`ct_snat(ip)`).
    pub snat: Option<NatRange>,
    /// Destination NAT of a new connection (`ct_dnat(ip)`, `ct_lb_mark`).
    pub dnat: Option<NatRange>,
}

/// What the tracker says about a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtResult {
    /// `ct_state` bits ([`ct_state`]); always includes `trk`.
    pub state: u32,
    /// `ct_mark` of the connection (0 without one).
    pub mark: u32,
    /// `ct_label` of the connection (0 without one).
    pub label: u128,
    /// The connection, for [`Conntrack::touch`].
    pub conn: Option<ConnId>,
    /// The rewrite this packet needs when the action applies NAT.
    pub nat: Option<Translation>,
    /// The connection's original-direction tuple (`ct_nw_dst`, `ct_tp_dst`,
    /// hairpin checks).
    pub original: Option<Tuple>,
}

impl CtResult {
    /// `trk|inv`, no connection.
    pub fn invalid() -> CtResult {
        CtResult {
            state: ct_state::TRK | ct_state::INV,
            mark: 0,
            label: 0,
            conn: None,
            nat: None,
            original: None,
        }
    }

    /// The packet's direction within its connection.
    pub fn dir(&self) -> Dir {
        if self.state & ct_state::RPL != 0 {
            Dir::Reply
        } else {
            Dir::Original
        }
    }
}

/// Why a commit failed. The caller drops the packet under
/// [`CtError::drop_reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CtError {
    /// The connection's shard is full.
    #[error("conntrack table full")]
    TableFull,
    /// No NAT address/port in the range gives a reply tuple that is free.
    #[error("no free NAT address/port in the range")]
    NatExhausted,
    /// The reply tuple of a connection without NAT is taken by another
    /// (NATed) connection.
    #[error("reply tuple already used by another connection")]
    TupleConflict,
    /// The NAT range is of the other address family.
    #[error("NAT address family differs from the packet's")]
    NatFamily,
    /// Concurrent commits of the same tuple kept racing.
    #[error("commit raced with concurrent changes")]
    Contended,
}

impl CtError {
    /// The drop-reason name the caller counts the packet under.
    pub fn drop_reason(&self) -> &'static str {
        match self {
            CtError::TableFull => "ct_table_full",
            CtError::NatExhausted => "ct_nat_exhausted",
            CtError::TupleConflict => "ct_tuple_conflict",
            CtError::NatFamily => "ct_nat_family",
            CtError::Contended => "ct_contended",
        }
    }
}

/// Which connections [`Conntrack::flush`] and [`Conntrack::list`] cover; an
/// unset field matches everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtFilter {
    /// Zone.
    pub zone: Option<u16>,
    /// An address anywhere in the original or reply tuple.
    pub addr: Option<IpAddr>,
    /// A port anywhere in the original or reply tuple (TCP/UDP/SCTP).
    pub port: Option<u16>,
    /// IP protocol.
    pub proto: Option<u8>,
}

impl CtFilter {
    fn matches(&self, zone: u16, orig: &Tuple, reply: &Tuple) -> bool {
        if self.zone.is_some_and(|z| z != zone) || self.proto.is_some_and(|p| p != orig.proto) {
            return false;
        }
        if let Some(a) = self.addr {
            let (b, v6) = addr_to_bytes(a);
            if v6 != orig.ipv6 || ![orig.src, orig.dst, reply.src, reply.dst].contains(&b) {
                return false;
            }
        }
        if let Some(p) = self.port {
            if !orig.has_ports()
                || ![orig.src_port, orig.dst_port, reply.src_port, reply.dst_port].contains(&p)
            {
                return false;
            }
        }
        true
    }
}

/// One connection as `fastpathctl conntrack` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtEntryView {
    /// Zone.
    pub zone: u16,
    /// Original-direction tuple.
    pub original: Tuple,
    /// Reply-direction tuple (translated).
    pub reply: Tuple,
    /// Protocol state name (`ESTABLISHED`, `UDP`, ...).
    pub state: &'static str,
    /// `new` or `est`, plus `snat` / `dnat` ([`ct_state`] bits).
    pub status: u32,
    /// `ct_mark`.
    pub mark: u32,
    /// `ct_label`.
    pub label: u128,
    /// When it was committed (ns, caller's clock).
    pub created: u64,
    /// Last packet (ns).
    pub last_seen: u64,
    /// When it expires unless refreshed (ns).
    pub expires_at: u64,
    /// Packets [original, reply].
    pub packets: [u64; 2],
    /// Bytes [original, reply].
    pub bytes: [u64; 2],
}
