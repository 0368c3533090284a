//! The flow key: every header field the OVN logical pipeline matches on, in one
//! fixed 104-byte layout, and [`extract`], which fills it from a frame.
//!
//! The key is plain bytes with named field ranges (see [`field`]), multi-byte
//! values in network order, so that hashing and comparing it are a single
//! memory compare and a compiled OVN match can address a field as
//! (offset, width, mask) inside the key. Fields a frame does not have are zero.
//! IPv4 addresses are stored v4-mapped (`::ffff:a.b.c.d`) in the same 16 bytes
//! as IPv6 ones; [`FlowKey::is_ipv4`] / [`FlowKey::is_ipv6`] give the family.
//!
//! [`Layout`] records where each header starts so that actions can rewrite the
//! frame in place. This module owns the key and the extraction; it never
//! rewrites frames and knows nothing of tables or of the cache.

use crate::ethernet::{self, ethertype};
use crate::{arp, icmpv4, icmpv6, ip_proto, ipv4, ipv6, tcp, udp, vlan};
use crate::{Field, FragState, MacAddr, ParseError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Byte ranges of the key's fields.
pub mod field {
    use crate::Field;
    /// Input port (u16): the fastpath port; for a packet that arrived
    /// through the Geneve tunnel, [`super::TUNNEL_IN_PORT`] | bits 0..15 of
    /// its VNI (see [`super::FlowKey::set_tunnel`]).
    pub const IN_PORT: Field = 0..2;
    /// EtherType after any VLAN tags (`eth.type`).
    pub const ETH_TYPE: Field = 2..4;
    /// TCI of the outer VLAN tag (`vlan.tci`, `vlan.vid`, `vlan.pcp`).
    pub const VLAN_TCI: Field = 4..6;
    /// Flag bits, see [`super::flags`].
    pub const FLAGS: usize = 6;
    /// Fragment state bits (`ip.is_frag` = 1, `ip.later_frag` = 2).
    pub const FRAG: usize = 7;
    /// `eth.dst`.
    pub const ETH_DST: Field = 8..14;
    /// `eth.src`.
    pub const ETH_SRC: Field = 14..20;
    /// TCI of the inner VLAN tag of a double-tagged frame.
    pub const INNER_VLAN_TCI: Field = 20..22;
    /// `ip.proto` (for IPv6: the upper-layer protocol after extension headers).
    pub const IP_PROTO: usize = 22;
    /// `ip.ttl` (IPv4 TTL or IPv6 hop limit).
    pub const TTL: usize = 23;
    /// IPv4 TOS / IPv6 traffic class: `ip.dscp` << 2 | `ip.ecn`.
    pub const TOS: usize = 24;
    /// `icmp4.type` / `icmp6.type`.
    pub const ICMP_TYPE: usize = 25;
    /// `icmp4.code` / `icmp6.code`.
    pub const ICMP_CODE: usize = 26;
    /// Bits 15..23 of a tunnelled packet's VNI; zero otherwise.
    pub const RESERVED: usize = 27;
    /// `tcp.flags` (12 bits).
    pub const TCP_FLAGS: Field = 28..30;
    /// `arp.op`.
    pub const ARP_OP: Field = 30..32;
    /// `ip4.src` (v4-mapped) / `ip6.src` / `arp.spa` (v4-mapped).
    pub const SRC: Field = 32..48;
    /// `ip4.dst` (v4-mapped) / `ip6.dst` / `arp.tpa` (v4-mapped).
    pub const DST: Field = 48..64;
    /// `tcp.src` / `udp.src` / `sctp.src`.
    pub const TP_SRC: Field = 64..66;
    /// `tcp.dst` / `udp.dst` / `sctp.dst`.
    pub const TP_DST: Field = 66..68;
    /// `ip6.label` (20 bits in a u32).
    pub const FLOW_LABEL: Field = 68..72;
    /// `nd.target`.
    pub const ND_TARGET: Field = 72..88;
    /// `arp.sha` / `nd.sll`.
    pub const SHA: Field = 88..94;
    /// `arp.tha` / `nd.tll`.
    pub const THA: Field = 94..100;
    /// A tunnelled packet's logical ingress port key (u16) then egress port
    /// key (u16), from the Geneve OVN option; zero otherwise. (Also the
    /// padding of the key to a multiple of 8.)
    pub const PAD: Field = 100..104;
}

/// Bits of the [`field::FLAGS`] byte.
pub mod flags {
    /// An outer VLAN tag is present (`vlan.present`).
    pub const VLAN: u8 = 0x01;
    /// A second (inner) VLAN tag is present.
    pub const INNER_VLAN: u8 = 0x02;
    /// The frame is IPv4.
    pub const IPV4: u8 = 0x04;
    /// The frame is IPv6.
    pub const IPV6: u8 = 0x08;
    /// The frame is Ethernet/IPv4 ARP.
    pub const ARP: u8 = 0x10;
    /// An L4 header (TCP, UDP, SCTP, ICMP) was parsed.
    pub const L4: u8 = 0x20;
}

/// The flag bit of [`field::IN_PORT`] that marks a packet received through
/// the Geneve tunnel (fastpath port ids stay below it).
pub const TUNNEL_IN_PORT: u16 = 0x8000;

/// The largest VNI a key can carry (23 bits: 15 in the in-port, 8 in the
/// reserved byte).
pub const MAX_KEY_VNI: u32 = (1 << 23) - 1;

/// Size of a [`FlowKey`] in bytes.
pub const KEY_LEN: usize = field::PAD.end;

/// The flow key. See the module documentation for the layout.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C, align(8))]
pub struct FlowKey {
    bytes: [u8; KEY_LEN],
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == KEY_LEN);
const _: () = assert!(KEY_LEN.is_multiple_of(8));

impl Default for FlowKey {
    fn default() -> Self {
        FlowKey::zeroed()
    }
}

macro_rules! u16_field {
    ($(#[$m:meta])* $get:ident, $set:ident, $f:expr) => {
        $(#[$m])*
        #[inline]
        pub fn $get(&self) -> u16 {
            u16::from_be_bytes([self.bytes[$f.start], self.bytes[$f.start + 1]])
        }
        #[doc = concat!("Sets the field read by [`FlowKey::", stringify!($get), "`].")]
        #[inline]
        pub fn $set(&mut self, v: u16) {
            self.bytes[$f].copy_from_slice(&v.to_be_bytes());
        }
    };
}

macro_rules! u8_field {
    ($(#[$m:meta])* $get:ident, $set:ident, $f:expr) => {
        $(#[$m])*
        #[inline]
        pub fn $get(&self) -> u8 {
            self.bytes[$f]
        }
        #[doc = concat!("Sets the field read by [`FlowKey::", stringify!($get), "`].")]
        #[inline]
        pub fn $set(&mut self, v: u8) {
            self.bytes[$f] = v;
        }
    };
}

macro_rules! array_field {
    ($(#[$m:meta])* $get:ident, $set:ident, $f:expr, $n:literal) => {
        $(#[$m])*
        #[inline]
        pub fn $get(&self) -> [u8; $n] {
            let mut out = [0u8; $n];
            out.copy_from_slice(&self.bytes[$f]);
            out
        }
        #[doc = concat!("Sets the field read by [`FlowKey::", stringify!($get), "`].")]
        #[inline]
        pub fn $set(&mut self, v: [u8; $n]) {
            self.bytes[$f].copy_from_slice(&v);
        }
    };
}

impl FlowKey {
    /// Size in bytes.
    pub const LEN: usize = KEY_LEN;

    /// The all-zero key.
    #[inline]
    pub const fn zeroed() -> FlowKey {
        FlowKey {
            bytes: [0; KEY_LEN],
        }
    }

    /// The raw bytes (for hashing, masked compares, shared-memory tables).
    #[inline]
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// Sets the whole key from its words, each in memory order (byte `k`
    /// of the key's word `i` is bits `8k..8k+8` of `words[i]`): one store
    /// per word.
    #[inline(always)]
    pub fn set_words(&mut self, words: &[u64; KEY_LEN / 8]) {
        for (chunk, w) in self.bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
    }

    /// The key's words, each in memory order (as [`FlowKey::set_words`]
    /// takes them).
    #[inline(always)]
    pub fn words(&self) -> [u64; KEY_LEN / 8] {
        let mut w = [0u64; KEY_LEN / 8];
        for (w, b) in w.iter_mut().zip(self.bytes.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            *w = u64::from_le_bytes(a);
        }
        w
    }

    /// The key's hash (see [`hash_words`]): what flow caches index keys by.
    #[inline(always)]
    pub fn hash(&self) -> u64 {
        hash_words(&self.words())
    }

    /// A key from raw bytes (as produced by [`FlowKey::as_bytes`]).
    #[inline]
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> FlowKey {
        FlowKey { bytes }
    }

    u16_field!(/// Input port (see [`field::IN_PORT`]).
        in_port, set_in_port, field::IN_PORT);

    /// Marks the key as a packet that arrived through the Geneve tunnel
    /// with datapath `vni` and logical ingress/egress port keys: the
    /// tunnel metadata becomes part of the key, so that flows from
    /// different remote ports or to different local ports are told apart.
    /// `false` (key unchanged) when `vni` exceeds [`MAX_KEY_VNI`].
    #[inline]
    pub fn set_tunnel(&mut self, vni: u32, ingress: u16, egress: u16) -> bool {
        if vni > MAX_KEY_VNI {
            return false;
        }
        self.set_in_port(TUNNEL_IN_PORT | (vni & 0x7fff) as u16);
        self.bytes[field::RESERVED] = (vni >> 15) as u8;
        self.bytes[field::PAD.start..field::PAD.start + 2].copy_from_slice(&ingress.to_be_bytes());
        self.bytes[field::PAD.start + 2..field::PAD.end].copy_from_slice(&egress.to_be_bytes());
        true
    }

    /// The tunnel metadata (VNI, ingress port key, egress port key) of a
    /// key made by [`FlowKey::set_tunnel`].
    #[inline]
    pub fn tunnel(&self) -> Option<(u32, u16, u16)> {
        let port = self.in_port();
        if port & TUNNEL_IN_PORT == 0 {
            return None;
        }
        let vni = u32::from(port & 0x7fff) | u32::from(self.bytes[field::RESERVED]) << 15;
        let p = field::PAD.start;
        Some((
            vni,
            u16::from_be_bytes([self.bytes[p], self.bytes[p + 1]]),
            u16::from_be_bytes([self.bytes[p + 2], self.bytes[p + 3]]),
        ))
    }
    u16_field!(/// `eth.type`, after any VLAN tags.
        eth_type, set_eth_type, field::ETH_TYPE);
    u16_field!(/// TCI of the outer VLAN tag, 0 if none.
        vlan_tci, set_vlan_tci, field::VLAN_TCI);
    u16_field!(/// TCI of the inner VLAN tag, 0 if none.
        inner_vlan_tci, set_inner_vlan_tci, field::INNER_VLAN_TCI);
    u8_field!(/// Flag bits ([`flags`]).
        flags, set_flags, field::FLAGS);
    u8_field!(/// `ip.proto`.
        ip_proto, set_ip_proto, field::IP_PROTO);
    u8_field!(/// `ip.ttl`.
        ttl, set_ttl, field::TTL);
    u8_field!(/// DSCP << 2 | ECN.
        tos, set_tos, field::TOS);
    u8_field!(/// `icmp4.type` / `icmp6.type`.
        icmp_type, set_icmp_type, field::ICMP_TYPE);
    u8_field!(/// `icmp4.code` / `icmp6.code`.
        icmp_code, set_icmp_code, field::ICMP_CODE);
    u16_field!(/// `tcp.flags`.
        tcp_flags, set_tcp_flags, field::TCP_FLAGS);
    u16_field!(/// `arp.op`.
        arp_op, set_arp_op, field::ARP_OP);
    u16_field!(/// L4 source port.
        tp_src, set_tp_src, field::TP_SRC);
    u16_field!(/// L4 destination port.
        tp_dst, set_tp_dst, field::TP_DST);
    array_field!(/// `eth.dst`.
        eth_dst, set_eth_dst, field::ETH_DST, 6);
    array_field!(/// `eth.src`.
        eth_src, set_eth_src, field::ETH_SRC, 6);
    array_field!(/// Source address bytes (IPv4 and ARP: v4-mapped).
        src, set_src, field::SRC, 16);
    array_field!(/// Destination address bytes (IPv4 and ARP: v4-mapped).
        dst, set_dst, field::DST, 16);
    array_field!(/// `nd.target`.
        nd_target_octets, set_nd_target_octets, field::ND_TARGET, 16);
    array_field!(/// `arp.sha` / `nd.sll`.
        sha, set_sha, field::SHA, 6);
    array_field!(/// `arp.tha` / `nd.tll`.
        tha, set_tha, field::THA, 6);

    /// `vlan.present`.
    #[inline]
    pub fn vlan_present(&self) -> bool {
        self.flags() & flags::VLAN != 0
    }
    /// `vlan.vid`.
    #[inline]
    pub fn vlan_vid(&self) -> u16 {
        self.vlan_tci() & vlan::VID_MASK
    }
    /// `vlan.pcp`.
    #[inline]
    pub fn vlan_pcp(&self) -> u8 {
        (self.vlan_tci() >> 13) as u8
    }
    /// True for IPv4.
    #[inline]
    pub fn is_ipv4(&self) -> bool {
        self.flags() & flags::IPV4 != 0
    }
    /// True for IPv6.
    #[inline]
    pub fn is_ipv6(&self) -> bool {
        self.flags() & flags::IPV6 != 0
    }
    /// True for ARP.
    #[inline]
    pub fn is_arp(&self) -> bool {
        self.flags() & flags::ARP != 0
    }
    /// True if an L4 header was parsed (never for a later fragment).
    #[inline]
    pub fn has_l4(&self) -> bool {
        self.flags() & flags::L4 != 0
    }
    /// `ip.dscp`.
    #[inline]
    pub fn dscp(&self) -> u8 {
        self.tos() >> 2
    }
    /// `ip.ecn`.
    #[inline]
    pub fn ecn(&self) -> u8 {
        self.tos() & 3
    }
    /// Fragment state (`ip.is_frag`, `ip.later_frag`).
    #[inline]
    pub fn frag(&self) -> FragState {
        FragState::from_bits(self.bytes[field::FRAG]).unwrap_or_default()
    }
    /// Sets the fragment state.
    #[inline]
    pub fn set_frag(&mut self, f: FragState) {
        self.bytes[field::FRAG] = f.bits();
    }
    /// `ip6.label`.
    #[inline]
    pub fn flow_label(&self) -> u32 {
        crate::read_u32(&self.bytes, field::FLOW_LABEL.start)
    }
    /// Sets `ip6.label` (20 bits kept).
    #[inline]
    pub fn set_flow_label(&mut self, v: u32) {
        crate::write_u32(&mut self.bytes, field::FLOW_LABEL.start, v & 0x000f_ffff);
    }
    /// The source IP address by family (IPv4 or IPv6 frames only).
    #[inline]
    pub fn ip_src(&self) -> Option<IpAddr> {
        self.ip_addr(field::SRC)
    }
    /// The destination IP address by family (IPv4 or IPv6 frames only).
    #[inline]
    pub fn ip_dst(&self) -> Option<IpAddr> {
        self.ip_addr(field::DST)
    }
    /// `arp.spa` (ARP frames only).
    #[inline]
    pub fn arp_spa(&self) -> Option<Ipv4Addr> {
        self.is_arp().then(|| self.v4_at(field::SRC))
    }
    /// `arp.tpa` (ARP frames only).
    #[inline]
    pub fn arp_tpa(&self) -> Option<Ipv4Addr> {
        self.is_arp().then(|| self.v4_at(field::DST))
    }
    /// `nd.target`.
    #[inline]
    pub fn nd_target(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.nd_target_octets())
    }

    #[inline]
    fn v4_at(&self, f: Field) -> Ipv4Addr {
        Ipv4Addr::new(
            self.bytes[f.start + 12],
            self.bytes[f.start + 13],
            self.bytes[f.start + 14],
            self.bytes[f.start + 15],
        )
    }

    #[inline]
    fn ip_addr(&self, f: Field) -> Option<IpAddr> {
        if self.is_ipv4() {
            Some(IpAddr::V4(self.v4_at(f)))
        } else if self.is_ipv6() {
            let mut a = [0u8; 16];
            a.copy_from_slice(&self.bytes[f]);
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        } else {
            None
        }
    }

    /// Stores an IPv4 address v4-mapped at `f`.
    #[inline]
    fn set_v4_at(&mut self, f: Field, a: [u8; 4]) {
        self.bytes[f.start + 10] = 0xff;
        self.bytes[f.start + 11] = 0xff;
        self.bytes[f.start + 12..f.start + 16].copy_from_slice(&a);
    }
}

impl core::fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut d = f.debug_struct("FlowKey");
        d.field("in_port", &self.in_port())
            .field("eth_src", &MacFmt(self.eth_src()))
            .field("eth_dst", &MacFmt(self.eth_dst()))
            .field("eth_type", &format_args!("{:#06x}", self.eth_type()));
        if self.vlan_present() {
            d.field("vlan_tci", &format_args!("{:#06x}", self.vlan_tci()));
        }
        if self.is_arp() {
            d.field("arp_op", &self.arp_op())
                .field("arp_spa", &self.arp_spa())
                .field("arp_tpa", &self.arp_tpa())
                .field("arp_sha", &MacFmt(self.sha()))
                .field("arp_tha", &MacFmt(self.tha()));
        }
        if self.is_ipv4() || self.is_ipv6() {
            d.field("ip_src", &self.ip_src())
                .field("ip_dst", &self.ip_dst())
                .field("ip_proto", &self.ip_proto())
                .field("ttl", &self.ttl())
                .field("tos", &self.tos())
                .field("frag", &self.frag());
        }
        if self.is_ipv6() {
            d.field("flow_label", &self.flow_label());
        }
        if self.has_l4() {
            d.field("tp_src", &self.tp_src())
                .field("tp_dst", &self.tp_dst())
                .field("tcp_flags", &self.tcp_flags())
                .field("icmp_type", &self.icmp_type())
                .field("icmp_code", &self.icmp_code());
        }
        if self.nd_target_octets() != [0; 16] {
            d.field("nd_target", &self.nd_target())
                .field("nd_sll", &MacFmt(self.sha()))
                .field("nd_tll", &MacFmt(self.tha()));
        }
        d.finish()
    }
}

struct MacFmt(MacAddr);

impl core::fmt::Debug for MacFmt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Where the headers of a parsed frame are, as offsets into the frame.
///
/// Always `l3 <= l4 <= payload <= end <= frame.len()`. `l3` is where the
/// header after Ethernet and VLAN tags starts (whatever the EtherType); `l4`
/// is where the upper layer starts (after IPv4 options or IPv6 extension
/// headers; equal to `payload` when there is no IP); `payload` is after the
/// last header that was parsed (L4 header, or the IP headers of a later
/// fragment or an unknown protocol, or the ARP packet); `end` is the end of
/// the IP datagram or ARP packet, before Ethernet padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Layout {
    /// Number of VLAN tags (0, 1 or 2); tag `i`'s TPID is at `12 + 4 * i`.
    pub vlan_tags: u8,
    /// Start of the L3 header.
    pub l3: u16,
    /// Start of the upper-layer (L4) header.
    pub l4: u16,
    /// Start of the L4 payload.
    pub payload: u16,
    /// End of the packet proper (IP total length), before padding.
    pub end: u16,
}

impl Layout {
    /// Offset of the TCI of VLAN tag `i` (0 = outer), if the frame has it.
    #[inline]
    pub fn vlan_tci_offset(&self, i: u8) -> Option<usize> {
        (i < self.vlan_tags).then_some(ethernet::HEADER_LEN + 4 * i as usize)
    }
    /// True if the offsets are ordered and within a frame of `frame_len` bytes.
    #[inline]
    pub fn is_consistent(&self, frame_len: usize) -> bool {
        self.l3 as usize == ethernet::HEADER_LEN + 4 * self.vlan_tags as usize
            && self.l3 <= self.l4
            && self.l4 <= self.payload
            && self.payload <= self.end
            && self.end as usize <= frame_len
    }
    /// Ethernet header and VLAN tags.
    #[inline]
    pub fn l2_header<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        frame.get(..self.l3 as usize)
    }
    /// L3 header(s): IPv4 with options, IPv6 with extension headers, or ARP.
    #[inline]
    pub fn l3_header<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        frame.get(self.l3 as usize..self.l4 as usize)
    }
    /// L4 header.
    #[inline]
    pub fn l4_header<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        frame.get(self.l4 as usize..self.payload as usize)
    }
    /// From the L3 header to the end of the packet (what an IP view wants).
    #[inline]
    pub fn l3_packet<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        frame.get(self.l3 as usize..self.end as usize)
    }
    /// From the L4 header to the end of the packet (what a TCP/UDP view wants).
    #[inline]
    pub fn l4_packet<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        frame.get(self.l4 as usize..self.end as usize)
    }
    /// L3 header to end of packet, mutable.
    #[inline]
    pub fn l3_packet_mut<'a>(&self, frame: &'a mut [u8]) -> Option<&'a mut [u8]> {
        frame.get_mut(self.l3 as usize..self.end as usize)
    }
    /// L4 header to end of packet, mutable.
    #[inline]
    pub fn l4_packet_mut<'a>(&self, frame: &'a mut [u8]) -> Option<&'a mut [u8]> {
        frame.get_mut(self.l4 as usize..self.end as usize)
    }
    /// The L4 payload.
    #[inline]
    pub fn payload<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        frame.get(self.payload as usize..self.end as usize)
    }
    /// Ethernet padding after the packet.
    #[inline]
    pub fn padding<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        frame.get(self.end as usize..)
    }
}

/// The most VLAN tags parsed; a third TPID is left as the EtherType.
pub const MAX_VLAN_TAGS: u8 = 2;

/// Parses `frame` received on logical port `in_port` into a [`FlowKey`] and
/// its [`Layout`].
///
/// Non-IP, non-ARP EtherTypes and IP protocols other than TCP, UDP, SCTP and
/// ICMP parse successfully with only the fields they have. A later fragment
/// has no L4 fields; a first fragment must hold its whole L4 header. Every
/// malformed or truncated header is a [`ParseError`]; nothing panics.
///
/// The commonest frame — untagged IPv4 without options, not a fragment,
/// carrying a whole TCP or UDP header — is read by a straight-line path
/// (`ipv4_tcp_udp`) that gives exactly what the general parser
/// gives; every other frame, and every frame that path is unsure of, goes
/// through the general parser.
#[inline]
pub fn extract(frame: &[u8], in_port: u16) -> Result<(FlowKey, Layout), ParseError> {
    let mut key = FlowKey::zeroed();
    let mut layout = Layout::default();
    extract_into(frame, in_port, &mut key, &mut layout)?;
    Ok((key, layout))
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

/// The hash of a key given as its words ([`FlowKey::words`]): the words
/// taken in pairs, each pair mixed with its own constants and multiplied
/// (128-bit product folded to 64), the seven products summed and mixed
/// once more. The products are independent of each other, so they run
/// side by side rather than as one chain of thirteen dependent
/// multiplies; every bit of both factors reaches the middle bits of the
/// product, and the final fold spreads them to the low bits (a cache's
/// home bucket), the middle bits and the top bits (its tag). A parser that
/// has just built the words in registers hashes them there
/// ([`extract_hashed`]), where the words a frame always leaves zero fold
/// into constants.
#[inline(always)]
pub fn hash_words(w: &[u64; KEY_LEN / 8]) -> u64 {
    let mut h = folded_multiply(w[12] ^ MIX[12], MIX[13]);
    for i in 0..6 {
        h = h.wrapping_add(folded_multiply(
            w[2 * i] ^ MIX[2 * i],
            w[2 * i + 1] ^ MIX[2 * i + 1],
        ));
    }
    folded_multiply(h, MIX[13])
}

/// [`extract_into`], answering the key's hash ([`FlowKey::hash`]) as well:
/// for a frame of the straight-line path it is computed from the words
/// while they are still in registers, before the key is stored.
#[inline]
pub fn extract_hashed(
    frame: &[u8],
    in_port: u16,
    key: &mut FlowKey,
    layout: &mut Layout,
) -> Result<u64, ParseError> {
    if let Some(w) = ipv4_tcp_udp(frame, in_port, layout) {
        key.set_words(&w);
        return Ok(hash_words(&w));
    }
    let (general, general_layout) = extract_general(frame, in_port)?;
    *key = general;
    *layout = general_layout;
    Ok(key.hash())
}

/// [`extract`] into `key` and `layout` in place (whatever they held
/// before): a worker parses straight into its staging arrays, and the
/// straight-line path stores the key as whole words, so reading it back
/// (hashing, comparing) is served from the store buffer instead of
/// stalling on byte stores, and no copy of either goes through the stack.
/// On an error both hold unspecified values.
#[inline]
pub fn extract_into(
    frame: &[u8],
    in_port: u16,
    key: &mut FlowKey,
    layout: &mut Layout,
) -> Result<(), ParseError> {
    if let Some(w) = ipv4_tcp_udp(frame, in_port, layout) {
        key.set_words(&w);
        return Ok(());
    }
    let (general, general_layout) = extract_general(frame, in_port)?;
    *key = general;
    *layout = general_layout;
    Ok(())
}

/// The straight-line parse of an untagged Ethernet/IPv4 frame with a
/// 20-byte header, neither fragment flag nor offset set, and a TCP or UDP
/// header that the datagram holds whole (with the lengths the general
/// parser checks): the key's words, for the caller to store whole (and to
/// hash while they are in registers). `None` for anything else, including
/// every frame the general parser would refuse; when some, the words and
/// `layout` are the key and layout [`extract`]'s general parser gives for
/// the same frame. `layout` is not written when the answer is `None`.
#[inline(always)]
fn ipv4_tcp_udp(frame: &[u8], in_port: u16, layout: &mut Layout) -> Option<[u64; KEY_LEN / 8]> {
    const L3: usize = ethernet::HEADER_LEN;
    const L4: usize = L3 + ipv4::HEADER_LEN;
    let h: &[u8; L4] = frame.first_chunk()?;
    if frame.len() > u16::MAX as usize
        || h[12] != 0x08
        || h[13] != 0x00
        || h[L3] != 0x45
        || u16::from_be_bytes([h[L3 + 6], h[L3 + 7]]) & (ipv4::FLAG_MF | ipv4::FRAG_OFFSET_MASK)
            != 0
    {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([h[L3 + 2], h[L3 + 3]]));
    if L3 + total > frame.len() {
        return None;
    }
    let proto = h[L3 + 9];
    // The L4 header, bounded by the datagram as the general parser bounds it.
    let upper = frame.get(L4..L3 + total)?;
    let (hlen, tcp_flags) = match proto {
        ip_proto::UDP => {
            let u: &[u8; udp::HEADER_LEN] = upper.first_chunk()?;
            let len = usize::from(u16::from_be_bytes([u[4], u[5]]));
            if len < udp::HEADER_LEN || len > upper.len() {
                return None;
            }
            (udp::HEADER_LEN, 0)
        }
        ip_proto::TCP => {
            let t: &[u8; tcp::HEADER_LEN] = upper.first_chunk()?;
            let hlen = usize::from(t[12] >> 4) * 4;
            if hlen < tcp::HEADER_LEN || hlen > upper.len() {
                return None;
            }
            (hlen, u16::from_be_bytes([t[12], t[13]]) & tcp::flags::MASK)
        }
        _ => return None,
    };
    // The key's words, byte k of a word being bits 8k..8k+8 (see the field
    // offsets): built in registers and stored whole.
    let le32 = |b: &[u8]| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let be16 = |v: u16| u64::from(v.swap_bytes());
    let mut w = [0u64; KEY_LEN / 8];
    // in_port, eth.type 0x0800, no VLAN, flags, not a fragment.
    w[0] = be16(in_port) | 0x08 << 16 | u64::from(flags::IPV4 | flags::L4) << 48;
    // eth.dst, then the first two bytes of eth.src.
    w[1] = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    // The rest of eth.src, no inner VLAN, ip.proto, ip.ttl.
    w[2] = le32(&h[8..12]) | u64::from(proto) << 48 | u64::from(h[L3 + 8]) << 56;
    // TOS, no ICMP type/code, no VNI bits, tcp.flags, no arp.op.
    w[3] = u64::from(h[L3 + 1]) | be16(tcp_flags) << 32;
    // ip4.src and ip4.dst as v4-mapped addresses (::ffff:a.b.c.d).
    w[5] = 0xffff << 16 | le32(&h[L3 + 12..L3 + 16]) << 32;
    w[7] = 0xffff << 16 | le32(&h[L3 + 16..L3 + 20]) << 32;
    // The L4 ports; no flow label.
    w[8] = le32(&upper[0..4]);
    *layout = Layout {
        vlan_tags: 0,
        l3: L3 as u16,
        l4: L4 as u16,
        payload: (L4 + hlen) as u16,
        end: (L3 + total) as u16,
    };
    Some(w)
}

/// The general parser behind [`extract`]: every EtherType, VLAN tags, IPv4
/// options and fragments, IPv6 extension headers, ICMP and ND, ARP.
pub fn extract_general(frame: &[u8], in_port: u16) -> Result<(FlowKey, Layout), ParseError> {
    if frame.len() > u16::MAX as usize {
        return Err(ParseError::FrameTooLong);
    }
    let mut key = FlowKey::zeroed();
    key.set_in_port(in_port);
    let eth = ethernet::Packet::new_checked(frame)?;
    key.bytes[field::ETH_DST].copy_from_slice(&frame[ethernet::field::DESTINATION]);
    key.bytes[field::ETH_SRC].copy_from_slice(&frame[ethernet::field::SOURCE]);
    let mut etype = eth.ethertype();
    let mut off = ethernet::HEADER_LEN;
    let mut tags = 0u8;
    let mut fl = 0u8;
    while ethertype::is_vlan(etype) && tags < MAX_VLAN_TAGS {
        let tag = vlan::Packet::new_checked(frame.get(off..).unwrap_or_default())?;
        if tags == 0 {
            key.set_vlan_tci(tag.tci());
            fl |= flags::VLAN;
        } else {
            key.set_inner_vlan_tci(tag.tci());
            fl |= flags::INNER_VLAN;
        }
        etype = tag.ethertype();
        off += vlan::HEADER_LEN;
        tags += 1;
    }
    key.set_eth_type(etype);
    let l3 = frame.get(off..).unwrap_or_default();
    let mut layout = Layout {
        vlan_tags: tags,
        l3: off as u16,
        l4: off as u16,
        payload: off as u16,
        end: frame.len() as u16,
    };
    match etype {
        ethertype::IPV4 => {
            fl |= flags::IPV4;
            let ip = ipv4::Packet::new_checked(l3)?;
            key.set_v4_at(field::SRC, ip.src_octets());
            key.set_v4_at(field::DST, ip.dst_octets());
            let proto = ip.protocol();
            key.bytes[field::IP_PROTO] = proto;
            key.bytes[field::TTL] = ip.ttl();
            key.bytes[field::TOS] = ip.tos();
            let frag = ip.frag_state();
            key.set_frag(frag);
            let hlen = ip.header_len();
            let total = ip.total_len() as usize;
            layout.end = (off + total) as u16;
            layout.l4 = (off + hlen) as u16;
            layout.payload = layout.l4;
            if frag != FragState::Later {
                let upper = l3.get(hlen..total).unwrap_or_default();
                fl |= parse_l4(proto, false, upper, &mut key, &mut layout)?;
            }
        }
        ethertype::IPV6 => {
            fl |= flags::IPV6;
            let ip = ipv6::Packet::new_checked(l3)?;
            key.bytes[field::SRC].copy_from_slice(&l3[ipv6::field::SRC_ADDR]);
            key.bytes[field::DST].copy_from_slice(&l3[ipv6::field::DST_ADDR]);
            key.bytes[field::TTL] = ip.hop_limit();
            key.bytes[field::TOS] = ip.traffic_class();
            key.set_flow_label(ip.flow_label());
            let up = ip.upper_layer()?;
            key.bytes[field::IP_PROTO] = up.protocol;
            key.set_frag(up.frag);
            let total = ipv6::HEADER_LEN + ip.payload_len() as usize;
            layout.end = (off + total) as u16;
            layout.l4 = (off + up.offset) as u16;
            layout.payload = layout.l4;
            if up.frag != FragState::Later {
                let upper = l3.get(up.offset..total).unwrap_or_default();
                fl |= parse_l4(up.protocol, true, upper, &mut key, &mut layout)?;
            }
        }
        ethertype::ARP => {
            let a = arp::Packet::new_checked(l3)?;
            fl |= flags::ARP;
            key.set_arp_op(a.oper());
            key.set_v4_at(field::SRC, a.spa().octets());
            key.set_v4_at(field::DST, a.tpa().octets());
            key.set_sha(a.sha());
            key.set_tha(a.tha());
            let end = (off + arp::PACKET_LEN) as u16;
            layout.l4 = end;
            layout.payload = end;
            layout.end = end;
        }
        _ => {}
    }
    key.bytes[field::FLAGS] = fl;
    Ok((key, layout))
}

/// Parses the upper-layer header in `data` (bounded by the IP datagram),
/// returning the flag bits to add.
#[inline(always)]
fn parse_l4(
    proto: u8,
    v6: bool,
    data: &[u8],
    key: &mut FlowKey,
    layout: &mut Layout,
) -> Result<u8, ParseError> {
    let hlen = match proto {
        ip_proto::TCP => {
            let t = tcp::Packet::new_checked(data)?;
            key.set_tp_src(t.src_port());
            key.set_tp_dst(t.dst_port());
            key.set_tcp_flags(t.flags());
            t.header_len()
        }
        ip_proto::UDP => {
            let u = udp::Packet::new_checked(data)?;
            key.set_tp_src(u.src_port());
            key.set_tp_dst(u.dst_port());
            udp::HEADER_LEN
        }
        ip_proto::SCTP => {
            // Common header: ports, verification tag, checksum.
            let h = data.first_chunk::<12>().ok_or(ParseError::TruncatedSctp)?;
            key.set_tp_src(u16::from_be_bytes([h[0], h[1]]));
            key.set_tp_dst(u16::from_be_bytes([h[2], h[3]]));
            12
        }
        ip_proto::ICMPV4 if !v6 => {
            let i = icmpv4::Packet::new_checked(data)?;
            key.set_icmp_type(i.msg_type());
            key.set_icmp_code(i.msg_code());
            icmpv4::HEADER_LEN
        }
        ip_proto::ICMPV6 if v6 => {
            let i = icmpv6::Packet::new_checked(data)?;
            key.set_icmp_type(i.msg_type());
            key.set_icmp_code(i.msg_code());
            if i.is_nd() {
                let nd = icmpv6::NdMessage::new_checked(data)?;
                key.set_nd_target_octets(nd.target_octets());
                let ll = nd.link_layer()?;
                key.set_sha(ll.sll);
                key.set_tha(ll.tll);
            }
            icmpv6::HEADER_LEN
        }
        _ => return Ok(0),
    };
    layout.payload = layout.l4 + hlen as u16;
    Ok(flags::L4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;

    const V4_1: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1];
    const V4_2: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2];
    const V6_1: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const V6_2: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const MAC_1: MacAddr = [2, 0, 0, 0, 0, 1];
    const MAC_2: MacAddr = [2, 0, 0, 0, 0, 2];

    #[test]
    fn tunnel_metadata_round_trips_and_is_part_of_the_key() {
        let mut k = FlowKey::zeroed();
        k.set_in_port(3);
        assert_eq!(k.tunnel(), None);
        assert!(k.set_tunnel(MAX_KEY_VNI, 0x7fff, 0xffff));
        assert_eq!(k.tunnel(), Some((MAX_KEY_VNI, 0x7fff, 0xffff)));
        let mut other = k;
        assert!(other.set_tunnel(5, 1, 2));
        assert_eq!(other.tunnel(), Some((5, 1, 2)));
        assert_ne!(k, other);
        let mut same = other;
        assert!(same.set_tunnel(5, 1, 2));
        assert_eq!(same, other);
        assert!(!other.set_tunnel(MAX_KEY_VNI + 1, 1, 2));
        assert_eq!(other.tunnel(), Some((5, 1, 2)));
    }

    /// (cut below this length, expected error), in increasing length.
    type Cuts = &'static [(usize, ParseError)];

    #[test]
    fn key_layout_is_frozen() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 104);
        assert_eq!(core::mem::align_of::<FlowKey>(), 8);
        // Field ranges tile the key without overlap.
        let ranges: [Field; 24] = [
            field::IN_PORT,
            field::ETH_TYPE,
            field::VLAN_TCI,
            6..7,
            7..8,
            field::ETH_DST,
            field::ETH_SRC,
            field::INNER_VLAN_TCI,
            22..23,
            23..24,
            24..25,
            25..26,
            26..27,
            27..28,
            field::TCP_FLAGS,
            field::ARP_OP,
            field::SRC,
            field::DST,
            field::TP_SRC,
            field::TP_DST,
            field::FLOW_LABEL,
            field::ND_TARGET,
            field::SHA,
            field::THA,
        ];
        let mut next = 0;
        for r in ranges {
            assert_eq!(r.start, next);
            next = r.end;
        }
        assert_eq!(next, field::PAD.start);
    }

    #[test]
    fn tcp_syn_v4() {
        let (k, l) = extract(&TCP_SYN_V4, 7).unwrap();
        assert_eq!(k.in_port(), 7);
        assert_eq!(
            (k.eth_src(), k.eth_dst(), k.eth_type()),
            (MAC_1, MAC_2, 0x0800)
        );
        assert!(!k.vlan_present());
        assert!(k.is_ipv4() && !k.is_ipv6() && !k.is_arp() && k.has_l4());
        assert_eq!((k.src(), k.dst()), (V4_1, V4_2));
        assert_eq!(k.ip_src(), Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        assert_eq!((k.ip_proto(), k.ttl(), k.dscp(), k.ecn()), (6, 64, 46, 1));
        assert_eq!(k.frag(), FragState::NotFragment);
        assert_eq!(
            (k.tp_src(), k.tp_dst(), k.tcp_flags()),
            (40000, 80, tcp::flags::SYN)
        );
        assert_eq!(
            l,
            Layout {
                vlan_tags: 0,
                l3: 14,
                l4: 34,
                payload: 58,
                end: 58
            }
        );
        assert_eq!(l.padding(&TCP_SYN_V4), Some(&[0u8, 0][..]));
    }

    #[test]
    fn arp_request() {
        let (k, l) = extract(&ARP_REQUEST, 1).unwrap();
        assert!(k.is_arp() && !k.has_l4());
        assert_eq!(k.eth_dst(), [0xff; 6]);
        assert_eq!(k.eth_type(), 0x0806);
        assert_eq!(k.arp_op(), 1);
        assert_eq!(k.arp_spa(), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(k.arp_tpa(), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!((k.sha(), k.tha()), (MAC_1, [0; 6]));
        assert_eq!(k.ip_src(), None);
        assert_eq!(
            l,
            Layout {
                vlan_tags: 0,
                l3: 14,
                l4: 42,
                payload: 42,
                end: 42
            }
        );
    }

    #[test]
    fn udp_v6_with_hop_by_hop_and_first_fragment() {
        let (k, l) = extract(&UDP_V6_HBH_FRAG, 2).unwrap();
        assert!(k.is_ipv6() && k.has_l4());
        assert_eq!((k.src(), k.dst()), (V6_1, V6_2));
        assert_eq!(k.ip_dst(), Some(IpAddr::V6(Ipv6Addr::from(V6_2))));
        assert_eq!(
            (k.ip_proto(), k.ttl(), k.tos(), k.flow_label()),
            (17, 64, 0xb8, 0x12345)
        );
        assert_eq!(k.frag(), FragState::First);
        assert_eq!((k.tp_src(), k.tp_dst()), (12345, 53));
        assert_eq!(
            l,
            Layout {
                vlan_tags: 0,
                l3: 14,
                l4: 70,
                payload: 78,
                end: 82
            }
        );
        assert_eq!(
            l.payload(&UDP_V6_HBH_FRAG),
            Some(&[0xde, 0xad, 0xbe, 0xef][..])
        );
    }

    #[test]
    fn vlan_icmp_echo() {
        let (k, l) = extract(&VLAN_ICMP_ECHO, 3).unwrap();
        assert!(k.vlan_present());
        assert_eq!((k.vlan_tci(), k.vlan_vid(), k.vlan_pcp()), (0xa064, 100, 5));
        assert_eq!(k.eth_type(), 0x0800);
        assert_eq!((k.ip_proto(), k.icmp_type(), k.icmp_code()), (1, 8, 0));
        assert_eq!((k.tp_src(), k.tp_dst()), (0, 0));
        assert_eq!(
            l,
            Layout {
                vlan_tags: 1,
                l3: 18,
                l4: 38,
                payload: 46,
                end: 50
            }
        );
        assert_eq!(l.vlan_tci_offset(0), Some(14));
        assert_eq!(l.vlan_tci_offset(1), None);
    }

    #[test]
    fn qinq_udp() {
        let (k, l) = extract(&QINQ_UDP, 3).unwrap();
        assert_eq!(
            k.flags() & (flags::VLAN | flags::INNER_VLAN),
            flags::VLAN | flags::INNER_VLAN
        );
        assert_eq!((k.vlan_vid(), k.inner_vlan_tci()), (10, 0x2014));
        assert_eq!((k.eth_type(), k.tp_src(), k.tp_dst()), (0x0800, 1000, 2000));
        assert_eq!((l.vlan_tags, l.l3, l.l4, l.payload), (2, 22, 42, 50));
        // A third tag is not parsed: its TPID is the EtherType.
        let mut three = QINQ_UDP.to_vec();
        three.splice(20..20, [0x81, 0x00, 0x00, 0x1e]);
        let (k, l) = extract(&three, 3).unwrap();
        assert_eq!(
            (k.eth_type(), k.is_ipv4(), l.vlan_tags, l.l3),
            (0x8100, false, 2, 22)
        );
    }

    #[test]
    fn geneve_frame_is_plain_udp() {
        let (k, l) = extract(&GENEVE_OVN, 4).unwrap();
        assert_eq!(
            (k.ip_proto(), k.tp_src(), k.tp_dst()),
            (17, 54321, udp::GENEVE_PORT)
        );
        let g = crate::geneve::Packet::new_checked(l.payload(&GENEVE_OVN).unwrap()).unwrap();
        assert_eq!(g.vni(), 5);
        assert_eq!(
            g.ovn_metadata(),
            Ok(Some(crate::geneve::OvnMetadata {
                ingress_port: 3,
                egress_port: 0x8001
            }))
        );
        let (inner, _) = extract(g.payload(), 0).unwrap();
        let (arp, _) = extract(&ARP_REQUEST[..42], 0).unwrap();
        assert_eq!(inner, arp);
    }

    #[test]
    fn neighbor_solicitation() {
        let (k, l) = extract(&ND_NS, 5).unwrap();
        assert_eq!(
            (k.ip_proto(), k.ttl(), k.icmp_type(), k.icmp_code()),
            (58, 255, 135, 0)
        );
        assert_eq!(k.nd_target_octets(), V6_2);
        assert_eq!((k.sha(), k.tha()), (MAC_1, [0; 6]));
        assert_eq!((l.l4, l.payload, l.end), (54, 62, 86));
        // The same frame as an NA carries a TLL instead.
        let mut na = ND_NS;
        na[54] = 136;
        na[78] = 2;
        let (k, _) = extract(&na, 5).unwrap();
        assert_eq!((k.icmp_type(), k.sha(), k.tha()), (136, [0; 6], MAC_1));
    }

    #[test]
    fn tcp_v6_and_later_fragment() {
        let (k, _) = extract(&TCP_V6, 6).unwrap();
        assert_eq!(
            (k.tp_src(), k.tp_dst(), k.tcp_flags()),
            (80, 40000, tcp::flags::SYN | tcp::flags::ACK)
        );
        let (k, l) = extract(&IPV4_LATER_FRAG, 6).unwrap();
        assert_eq!(k.frag(), FragState::Later);
        assert_eq!(k.frag().bits(), FragState::IS_FRAG | FragState::LATER_FRAG);
        assert!(!k.has_l4());
        assert_eq!((k.ip_proto(), k.tp_src(), k.tp_dst()), (17, 0, 0));
        assert_eq!((l.l4, l.payload, l.end), (34, 34, 50));
    }

    #[test]
    fn unknown_ethertype_and_protocol() {
        let mut f = TCP_SYN_V4;
        f[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());
        let (k, l) = extract(&f, 0).unwrap();
        assert_eq!((k.eth_type(), k.flags()), (0x88cc, 0));
        assert_eq!(
            l,
            Layout {
                vlan_tags: 0,
                l3: 14,
                l4: 14,
                payload: 14,
                end: 60
            }
        );
        let mut f = TCP_SYN_V4;
        f[23] = 47; // GRE
        let (k, l) = extract(&f, 0).unwrap();
        assert_eq!(
            (k.ip_proto(), k.has_l4(), l.l4, l.payload),
            (47, false, 34, 34)
        );
    }

    #[test]
    fn equal_frames_equal_keys_and_hashes() {
        use std::hash::{BuildHasher, RandomState};
        let s = RandomState::new();
        let (a, _) = extract(&TCP_SYN_V4, 7).unwrap();
        let (b, _) = extract(&TCP_SYN_V4.clone(), 7).unwrap();
        let (c, _) = extract(&TCP_SYN_V4, 8).unwrap();
        assert_eq!(a, b);
        assert_eq!(s.hash_one(a), s.hash_one(b));
        assert_ne!(a, c);
        assert_eq!(FlowKey::from_bytes(*a.as_bytes()), a);
        assert!(format!("{a:?}").contains("tp_dst: 80"));
    }

    /// Every prefix of every fixture either parses (when the cut falls in
    /// padding or past a complete packet) or fails with the reason naming the
    /// header that was cut; never a panic.
    #[test]
    fn truncation_at_every_length_names_the_header() {
        use ParseError::*;
        let cases: [(&[u8], Cuts); 8] = [
            // (frame, [(cut below this length -> this error)...]) in increasing length.
            (&ARP_REQUEST, &[(14, TruncatedEthernet), (42, TruncatedArp)]),
            (
                &TCP_SYN_V4,
                &[
                    (14, TruncatedEthernet),
                    (34, TruncatedIpv4),
                    (58, TruncatedIpv4Payload),
                ],
            ),
            (
                &UDP_V6_HBH_FRAG,
                &[
                    (14, TruncatedEthernet),
                    (54, TruncatedIpv6),
                    (82, TruncatedIpv6Payload),
                ],
            ),
            (
                &VLAN_ICMP_ECHO,
                &[
                    (14, TruncatedEthernet),
                    (18, TruncatedVlan),
                    (38, TruncatedIpv4),
                    (50, TruncatedIpv4Payload),
                ],
            ),
            (
                &QINQ_UDP,
                &[
                    (14, TruncatedEthernet),
                    (18, TruncatedVlan),
                    (22, TruncatedVlan),
                    (42, TruncatedIpv4),
                    (52, TruncatedIpv4Payload),
                ],
            ),
            (
                &ND_NS,
                &[
                    (14, TruncatedEthernet),
                    (54, TruncatedIpv6),
                    (86, TruncatedIpv6Payload),
                ],
            ),
            (
                &TCP_V6,
                &[
                    (14, TruncatedEthernet),
                    (54, TruncatedIpv6),
                    (74, TruncatedIpv6Payload),
                ],
            ),
            (
                &GENEVE_OVN,
                &[
                    (14, TruncatedEthernet),
                    (34, TruncatedIpv4),
                    (100, TruncatedIpv4Payload),
                ],
            ),
        ];
        for (frame, cuts) in cases {
            for n in 0..=frame.len() {
                let want = cuts.iter().find(|(below, _)| n < *below).map(|(_, e)| *e);
                match (extract(&frame[..n], 0), want) {
                    (Err(e), Some(w)) => assert_eq!(e, w, "len {n} of {frame:02x?}"),
                    (Ok(_), None) => {}
                    (got, w) => panic!("len {n}: got {got:?}, want {w:?}"),
                }
            }
        }
    }

    /// Shrinking the IP length fields instead cuts the upper layers: each cut
    /// names the upper-layer header.
    #[test]
    fn shrinking_ip_length_names_the_upper_header() {
        use ParseError::*;
        // (frame, l3 offset, is_v6, [(upper-layer length below this -> error)])
        let cases: [(&[u8], usize, bool, Cuts); 6] = [
            (
                &TCP_SYN_V4,
                14,
                false,
                &[(20, TruncatedTcp), (24, TruncatedTcpOptions)],
            ),
            (&VLAN_ICMP_ECHO, 18, false, &[(8, TruncatedIcmpv4)]),
            (
                &QINQ_UDP,
                22,
                false,
                &[(8, TruncatedUdp), (10, TruncatedUdpPayload)],
            ),
            (
                &UDP_V6_HBH_FRAG,
                14,
                true,
                &[
                    (16, TruncatedIpv6ExtHeader),
                    (8 + 16, TruncatedUdp),
                    (12 + 16, TruncatedUdpPayload),
                ],
            ),
            (&ND_NS, 14, true, &[(8, TruncatedIcmpv6), (24, TruncatedNd)]),
            (&TCP_V6, 14, true, &[(20, TruncatedTcp)]),
        ];
        for (frame, l3, v6, cuts) in cases {
            let hdr = if v6 {
                40
            } else {
                (frame[l3] & 0x0f) as usize * 4
            };
            let full = cuts.last().map(|c| c.0).unwrap_or(0);
            for upper in 0..=full {
                let mut f = frame.to_vec();
                if v6 {
                    f[l3 + 4..l3 + 6].copy_from_slice(&(upper as u16).to_be_bytes());
                } else {
                    f[l3 + 2..l3 + 4].copy_from_slice(&((hdr + upper) as u16).to_be_bytes());
                }
                let want = cuts
                    .iter()
                    .find(|(below, _)| upper < *below)
                    .map(|(_, e)| *e);
                match (extract(&f, 0), want) {
                    (Err(e), Some(w)) => assert_eq!(e, w, "upper len {upper} of {frame:02x?}"),
                    (Ok(_), None) => {}
                    (got, w) => panic!("upper len {upper}: got {got:?}, want {w:?}"),
                }
            }
        }
        // An NS without options is complete; a cut inside its SLL option is not.
        for upper in 25..32u16 {
            let mut f = ND_NS.to_vec();
            f[18..20].copy_from_slice(&upper.to_be_bytes());
            assert_eq!(extract(&f, 0), Err(TruncatedNdOption), "upper len {upper}");
        }
    }

    #[test]
    fn malformed_fields_name_the_reason() {
        use ParseError::*;
        let set = |f: &[u8], at: usize, v: u8| {
            let mut f = f.to_vec();
            f[at] = v;
            f
        };
        assert_eq!(extract(&set(&TCP_SYN_V4, 14, 0x55), 0), Err(BadIpv4Version));
        assert_eq!(extract(&set(&TCP_SYN_V4, 14, 0x43), 0), Err(BadIpv4Ihl));
        assert_eq!(
            extract(&set(&TCP_SYN_V4, 17, 19), 0),
            Err(BadIpv4TotalLength)
        );
        assert_eq!(
            extract(&set(&TCP_SYN_V4, 46, 0x40), 0),
            Err(BadTcpDataOffset)
        );
        assert_eq!(
            extract(&set(&TCP_SYN_V4, 46, 0x70), 0),
            Err(TruncatedTcpOptions)
        );
        assert_eq!(extract(&set(&QINQ_UDP, 47, 7), 0), Err(BadUdpLength));
        assert_eq!(extract(&set(&ARP_REQUEST, 18, 8), 0), Err(BadArpFormat));
        assert_eq!(extract(&set(&TCP_V6, 14, 0x40), 0), Err(BadIpv6Version));
        assert_eq!(
            extract(&set(&UDP_V6_HBH_FRAG, 54, 0), 0),
            Err(BadIpv6HopByHopPosition)
        );
        assert_eq!(extract(&set(&ND_NS, 79, 0), 0), Err(BadNdOptionLength));
        assert_eq!(extract(&vec![0u8; 70_000], 0), Err(FrameTooLong));
        let mut sctp = TCP_SYN_V4;
        sctp[14 + 9] = ip_proto::SCTP;
        let (k, l) = extract(&sctp, 0).unwrap();
        assert_eq!(
            (k.tp_src(), k.tp_dst(), k.tcp_flags(), l.payload),
            (40000, 80, 0, 46)
        );
        assert_eq!(
            extract(&set(&QINQ_UDP, 22 + 9, ip_proto::SCTP), 0),
            Err(TruncatedSctp)
        );
    }

    /// The key agrees with what smoltcp reads from the same frames.
    #[test]
    fn agrees_with_smoltcp() {
        use smoltcp::phy::ChecksumCapabilities as Caps;
        use smoltcp::wire::*;
        let caps = Caps::default();
        let eth = EthernetFrame::new_checked(&TCP_SYN_V4[..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let ip_repr = Ipv4Repr::parse(&ip, &caps).unwrap();
        let tcp_pkt = TcpPacket::new_checked(ip.payload()).unwrap();
        let tcp_repr = TcpRepr::parse(
            &tcp_pkt,
            &ip_repr.src_addr.into(),
            &ip_repr.dst_addr.into(),
            &caps,
        )
        .unwrap();
        let (k, _) = extract(&TCP_SYN_V4, 0).unwrap();
        assert_eq!(k.ip_src(), Some(IpAddr::V4(ip_repr.src_addr)));
        assert_eq!(k.ip_dst(), Some(IpAddr::V4(ip_repr.dst_addr)));
        assert_eq!(
            (k.tp_src(), k.tp_dst()),
            (tcp_repr.src_port, tcp_repr.dst_port)
        );
        assert_eq!(tcp_repr.control, TcpControl::Syn);

        let eth = EthernetFrame::new_checked(&ND_NS[..]).unwrap();
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        let repr = Icmpv6Repr::parse(&ip.src_addr(), &ip.dst_addr(), &icmp, &caps).unwrap();
        let (k, _) = extract(&ND_NS, 0).unwrap();
        match repr {
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
                target_addr,
                lladdr,
            }) => {
                assert_eq!(k.nd_target(), target_addr);
                assert_eq!(
                    lladdr.map(|a| a.as_bytes().to_vec()),
                    Some(k.sha().to_vec())
                );
            }
            other => panic!("smoltcp parsed {other:?}"),
        }

        let eth = EthernetFrame::new_checked(&ARP_REQUEST[..]).unwrap();
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        let (k, _) = extract(&ARP_REQUEST, 0).unwrap();
        match arp {
            ArpRepr::EthernetIpv4 {
                source_protocol_addr,
                target_protocol_addr,
                source_hardware_addr,
                ..
            } => {
                assert_eq!(k.arp_spa(), Some(source_protocol_addr));
                assert_eq!(k.arp_tpa(), Some(target_protocol_addr));
                assert_eq!(k.sha(), source_hardware_addr.0);
            }
            other => panic!("smoltcp parsed {other:?}"),
        }
    }

    /// The straight-line IPv4 TCP/UDP path answers exactly as the general
    /// parser does, for valid frames, every truncation and single-byte
    /// changes anywhere in the headers (including the ones that make the
    /// general parser refuse the frame or take another branch).
    #[test]
    fn ipv4_tcp_udp_path_matches_general_parser() {
        let bases: [&[u8]; 5] = [
            &TCP_SYN_V4,
            &GENEVE_OVN,
            &IPV4_LATER_FRAG,
            &ARP_REQUEST,
            &QINQ_UDP,
        ];
        let mut fast_answers = 0;
        let mut check = |f: &[u8]| {
            let general = extract_general(f, 7);
            if ipv4_tcp_udp(f, 7, &mut Layout::default()).is_some() {
                fast_answers += 1;
            }
            assert_eq!(extract(f, 7), general, "frame {f:02x?}");
            // In place over a key and layout that held something else: the
            // same.
            let mut key = FlowKey::from_bytes([0xa5; KEY_LEN]);
            let mut layout = Layout {
                vlan_tags: 9,
                l3: 99,
                l4: 99,
                payload: 99,
                end: 99,
            };
            let answer = extract_into(f, 7, &mut key, &mut layout);
            match &general {
                Ok((k, l)) => {
                    assert_eq!((&key, &layout, answer), (k, l, Ok(())), "frame {f:02x?}")
                }
                Err(e) => assert_eq!(answer, Err(*e), "frame {f:02x?}"),
            }
            // Hashed: the same key and layout, and the key's own hash.
            let mut hashed_key = FlowKey::from_bytes([0x5a; KEY_LEN]);
            let mut hashed_layout = layout;
            let hashed = extract_hashed(f, 7, &mut hashed_key, &mut hashed_layout);
            match &general {
                Ok((k, l)) => assert_eq!(
                    (&hashed_key, &hashed_layout, hashed),
                    (k, l, Ok(k.hash())),
                    "frame {f:02x?}"
                ),
                Err(e) => assert_eq!(hashed, Err(*e), "frame {f:02x?}"),
            }
        };
        for base in bases {
            for cut in 0..=base.len() {
                check(&base[..cut]);
            }
            for at in 0..base.len().min(64) {
                for v in [0u8, 1, 4, 5, 6, 0x11, 0x20, 0x40, 0x45, 0x46, 0x50, 0xff] {
                    let mut f = base.to_vec();
                    f[at] = v;
                    check(&f);
                    f[at] = base[at] ^ 0x80;
                    check(&f);
                }
            }
        }
        assert!(
            fast_answers > 100,
            "the fast path answered {fast_answers} times"
        );
    }
}
