//! The packet layer of the fastpath: zero-copy views over byte buffers, one
//! module per protocol, and the flow-key extractor that the flow cache and the
//! logical-pipeline interpreter key on.
//!
//! This crate owns the wire formats and nothing else: it never allocates on the
//! parse path, never touches DPDK, mbufs, tables or counters. Callers hand it a
//! `&[u8]` (or `&mut [u8]` to rewrite in place) and get back either a view, a
//! [`FlowKey`] plus [`Layout`], or a [`ParseError`] naming the drop reason.
//!
//! Every view follows the same contract: `Packet::new_unchecked` wraps a buffer
//! without looking at it, `Packet::new_checked` calls `check_len`, and after a
//! successful `check_len` no accessor of that view can panic.
#![forbid(unsafe_code)]

pub mod arp;
pub mod checksum;
pub mod error;
pub mod ethernet;
pub mod flowkey;
pub mod fuzzing;
pub mod geneve;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vlan;

#[cfg(test)]
mod fixtures;

pub use error::ParseError;
pub use flowkey::{extract, extract_hashed, extract_into, FlowKey, Layout};

/// A byte range of a header field, as in `mod field` of every view.
pub type Field = core::ops::Range<usize>;
/// The rest of a header, from a start offset.
pub type Rest = core::ops::RangeFrom<usize>;

/// An Ethernet MAC address in wire order.
pub type MacAddr = [u8; 6];

/// IP protocol numbers (the IPv4 `protocol` / IPv6 `next header` field).
pub mod ip_proto {
    /// IPv6 hop-by-hop options extension header.
    pub const HOP_BY_HOP: u8 = 0;
    /// ICMP for IPv4.
    pub const ICMPV4: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 routing extension header.
    pub const IPV6_ROUTING: u8 = 43;
    /// IPv6 fragment extension header.
    pub const IPV6_FRAGMENT: u8 = 44;
    /// IPsec encapsulating security payload (opaque: ends header walking).
    pub const ESP: u8 = 50;
    /// IPsec authentication header.
    pub const AH: u8 = 51;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 "no next header".
    pub const IPV6_NO_NEXT: u8 = 59;
    /// IPv6 destination options extension header.
    pub const IPV6_DEST_OPTS: u8 = 60;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// Fragmentation state of an IP packet, with OVS/OVN semantics: `ip.is_frag`
/// is bit 0 of [`FragState::bits`], `ip.later_frag` is bit 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum FragState {
    /// Not a fragment (an "atomic" fragment with offset 0 and MF clear counts here).
    #[default]
    NotFragment = 0,
    /// First fragment: offset 0 and more-fragments set; the L4 header is present.
    First = 1,
    /// A later fragment: non-zero offset; no L4 header.
    Later = 3,
}

impl FragState {
    /// `ip.is_frag` bit.
    pub const IS_FRAG: u8 = 1;
    /// `ip.later_frag` bit.
    pub const LATER_FRAG: u8 = 2;

    /// The state from a fragment offset (in 8-octet units) and the MF flag.
    #[inline]
    pub const fn from_offset_and_more(offset: u16, more_fragments: bool) -> FragState {
        if offset != 0 {
            FragState::Later
        } else if more_fragments {
            FragState::First
        } else {
            FragState::NotFragment
        }
    }

    /// The bits as stored in a [`FlowKey`].
    #[inline]
    pub const fn bits(self) -> u8 {
        self as u8
    }

    /// Inverse of [`FragState::bits`]; unknown bit patterns map to `None`.
    #[inline]
    pub const fn from_bits(bits: u8) -> Option<FragState> {
        match bits {
            0 => Some(FragState::NotFragment),
            1 => Some(FragState::First),
            3 => Some(FragState::Later),
            _ => None,
        }
    }
}

#[inline(always)]
pub(crate) fn read_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

#[inline(always)]
pub(crate) fn read_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

#[inline(always)]
pub(crate) fn write_u16(data: &mut [u8], at: usize, value: u16) {
    data[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

#[inline(always)]
pub(crate) fn write_u32(data: &mut [u8], at: usize, value: u32) {
    data[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

#[inline(always)]
pub(crate) fn read_array<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&data[at..at + N]);
    out
}
