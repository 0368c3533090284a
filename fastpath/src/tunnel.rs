//! Geneve tunnelling as OVN uses it: encapsulation of a logical packet for a
//! remote chassis, validation and decapsulation of what remote chassis send,
//! the MTU arithmetic of the overlay, and the ICMP "too big" answer for an
//! inner packet that cannot cross the tunnel.
//!
//! The wire contract (ovn-architecture(7), "Tunnel Encapsulations"): UDP
//! destination port 6081; VNI = tunnel key of the logical datapath; one
//! Geneve option of class 0x0102, type 0x80 (critical) with 4 bytes of data:
//! bit 31 reserved (zero), bits 30..16 the 15-bit logical ingress port key,
//! bits 15..0 the 16-bit logical egress port key. The outer headers follow
//! the defaults of an OVS Geneve port: IPv4 with DF set and TTL 64 (IPv6 hop
//! limit 64), outer UDP checksum off unless the receiving chassis asks for it
//! (`Encap.options:csum=true` in the Southbound), UDP source port taken from
//! a hash of the inner flow, in the Linux ephemeral range (32768..=60999) as
//! the kernel's `udp_flow_src_port` and OVS userspace tunnels do, so that one
//! flow always takes one path through ECMP and RSS.
//!
//! Everything here works on plain byte buffers: it owns the outer headers and
//! the option, and nothing else. It must not touch mbufs, tables, counters or
//! the logical pipeline: callers pass the buffer (for an mbuf, the inner frame
//! at an offset with headroom before it, see [`encapsulate_in_place`]), and
//! count a refusal under [`TunnelError::name`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fastpath_packet::ethernet::{self, ethertype};
use fastpath_packet::flowkey::field as key_field;
use fastpath_packet::geneve::{self, OvnMetadata};
use fastpath_packet::{
    checksum, icmpv4, icmpv6, ip_proto, ipv4, ipv6, udp, vlan, MacAddr, ParseError,
};

/// UDP destination port of Geneve (IANA).
pub const GENEVE_PORT: u16 = udp::GENEVE_PORT;
/// TTL (IPv4) and hop limit (IPv6) of the outer header, as OVS sets them.
pub const OUTER_TTL: u8 = 64;
/// Lowest outer UDP source port (Linux `ip_local_port_range` default).
pub const SOURCE_PORT_MIN: u16 = 32768;
/// Highest outer UDP source port (Linux `ip_local_port_range` default).
pub const SOURCE_PORT_MAX: u16 = 60999;
/// Geneve header as OVN emits it: 8 fixed bytes plus the 8-byte OVN option.
pub const GENEVE_LEN: usize = geneve::OVN_HEADER_LEN;

/// Bytes an IPv4 tunnel takes out of the uplink's IP MTU: 20 (outer IPv4) +
/// 8 (UDP) + 8 (Geneve) + 8 (OVN option) + 14 (the inner Ethernet header,
/// which travels inside the outer IP packet while the pod's MTU counts only
/// its IP packet). The outer Ethernet header is not part of any IP MTU. So a
/// pod behind a 1500-byte uplink gets an MTU of 1442.
pub const MTU_OVERHEAD_V4: u16 = 58;
/// Bytes an IPv6 tunnel takes out of the uplink's IP MTU: as
/// [`MTU_OVERHEAD_V4`] with a 40-byte outer IPv6 header.
pub const MTU_OVERHEAD_V6: u16 = 78;
/// Bytes [`encapsulate`] puts in front of the inner frame with an IPv4 outer
/// header: Ethernet 14 + IPv4 20 + UDP 8 + Geneve with OVN option 16.
pub const ENCAP_LEN_V4: usize =
    ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN + GENEVE_LEN;
/// Bytes [`encapsulate`] puts in front of the inner frame with an IPv6 outer
/// header.
pub const ENCAP_LEN_V6: usize =
    ethernet::HEADER_LEN + ipv6::HEADER_LEN + udp::HEADER_LEN + GENEVE_LEN;

/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;
/// Largest logical ingress port key the OVN option carries (15 bits).
pub const MAX_INGRESS_KEY: u16 = 0x7fff;

/// Bytes of the offending datagram quoted in an ICMPv4 error: RFC 1812
/// §4.3.2.3 allows up to a 576-byte error datagram (576 - 20 - 8).
const ICMPV4_QUOTE_MAX: usize = 548;
/// Bytes of the offending packet quoted in an ICMPv6 error: the error must
/// fit the IPv6 minimum MTU (RFC 4443 §2.4 (c)): 1280 - 40 - 8.
const ICMPV6_QUOTE_MAX: usize = 1232;

/// Why a tunnel operation refused a packet. Each variant has a stable
/// snake_case drop-reason name ([`TunnelError::name`]); the packet-layer
/// variant reuses the packet layer's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    /// An outer Ethernet, VLAN, IP or UDP header is malformed.
    #[error("outer header: {0}")]
    Packet(ParseError),
    /// The outer EtherType is neither IPv4 nor IPv6.
    #[error("outer frame is not IP")]
    OuterNotIp,
    /// The outer IPv4 packet is a fragment (tunnel packets are sent with DF
    /// and are not reassembled).
    #[error("outer IPv4 packet is a fragment")]
    OuterFragment,
    /// The outer IP packet does not carry UDP.
    #[error("outer IP packet is not UDP")]
    OuterNotUdp,
    /// The outer destination address is not this chassis's tunnel address.
    #[error("outer destination is not our tunnel address")]
    WrongDestination,
    /// The outer UDP destination port is not 6081.
    #[error("outer UDP destination port is not Geneve's")]
    WrongUdpPort,
    /// The outer UDP checksum is set and does not verify.
    #[error("outer UDP checksum does not verify")]
    BadUdpChecksum,
    /// The UDP payload is shorter than the 8-byte Geneve header.
    #[error("Geneve header truncated")]
    GeneveTruncated,
    /// The Geneve version is not 0.
    #[error("Geneve version is not 0")]
    GeneveBadVersion,
    /// The Geneve options length runs past the UDP payload.
    #[error("Geneve options run past the packet")]
    GeneveOptionsTruncated,
    /// A Geneve option runs past the options area.
    #[error("a Geneve option runs past the options area")]
    GeneveBadOption,
    /// The Geneve O bit is set: a control packet, not data.
    #[error("Geneve control (OAM) packet")]
    GeneveOam,
    /// The Geneve protocol type is not Ethernet (0x6558).
    #[error("Geneve payload is not an Ethernet frame")]
    GeneveNotEthernet,
    /// No OVN option (class 0x0102, type 0x80).
    #[error("no OVN Geneve option")]
    NoOvnOption,
    /// The OVN option's data is not 4 bytes.
    #[error("OVN Geneve option data is not 4 bytes")]
    BadOvnOption,
    /// The OVN option appears more than once.
    #[error("OVN Geneve option appears twice")]
    DuplicateOvnOption,
    /// A critical option other than OVN's: RFC 8926 requires dropping it.
    #[error("unknown critical Geneve option class {class:#06x} type {kind:#04x}")]
    UnknownCriticalOption {
        /// Option class.
        class: u16,
        /// Option type.
        kind: u8,
    },
    /// The encapsulated frame is shorter than an Ethernet header.
    #[error("inner frame shorter than an Ethernet header")]
    InnerTruncated,
    /// The inner frame is too short to encapsulate (no Ethernet header).
    #[error("inner frame of {0} bytes is shorter than an Ethernet header")]
    InnerTooShort(usize),
    /// The inner frame is too long for one outer IP packet.
    #[error("inner frame of {0} bytes does not fit an outer IP packet")]
    InnerTooLong(usize),
    /// Source and destination tunnel addresses are of different families.
    #[error("outer source and destination addresses are of different families")]
    AddressFamilyMismatch,
    /// The datapath key does not fit the 24-bit VNI.
    #[error("datapath key {0} does not fit the 24-bit VNI")]
    VniOutOfRange(u32),
    /// The logical ingress port key does not fit the option's 15 bits.
    #[error("ingress port key {0} does not fit 15 bits")]
    IngressKeyOutOfRange(u16),
    /// The output buffer cannot hold the result.
    #[error("buffer of {available} bytes, {needed} needed")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// Not enough headroom before the inner frame for the outer headers.
    #[error("headroom of {available} bytes, {needed} needed")]
    NoHeadroom {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A "too big" answer was asked for a frame that is not IPv4 or IPv6.
    #[error("no ICMP answer for a frame that is not IP")]
    TooBigNotIp,
    /// No ICMP error is sent about an ICMP error (RFC 1122 §3.2.2, RFC 4443 §2.4).
    #[error("no ICMP answer to an ICMP error")]
    TooBigAboutIcmpError,
    /// No ICMP error is sent about a non-initial fragment (RFC 1122 §3.2.2).
    #[error("no ICMP answer to a non-initial fragment")]
    TooBigLaterFragment,
}

/// Every drop-reason name of [`TunnelError`] except the packet-layer ones
/// (which are `fastpath_packet::ParseError::name`s), for counter registration.
pub const DROP_REASONS: &[&str] = &[
    "tunnel_outer_not_ip",
    "tunnel_outer_fragment",
    "tunnel_outer_not_udp",
    "tunnel_wrong_destination",
    "tunnel_wrong_udp_port",
    "tunnel_bad_udp_checksum",
    "geneve_truncated",
    "geneve_bad_version",
    "geneve_options_truncated",
    "geneve_bad_option",
    "geneve_oam",
    "geneve_not_ethernet",
    "geneve_no_ovn_option",
    "geneve_bad_ovn_option",
    "geneve_duplicate_ovn_option",
    "geneve_unknown_critical_option",
    "geneve_inner_truncated",
    "tunnel_inner_too_short",
    "tunnel_inner_too_long",
    "tunnel_address_family_mismatch",
    "tunnel_vni_out_of_range",
    "tunnel_ingress_key_out_of_range",
    "tunnel_buffer_too_small",
    "tunnel_no_headroom",
    "tunnel_too_big_not_ip",
    "tunnel_too_big_about_icmp_error",
    "tunnel_too_big_later_fragment",
];

impl TunnelError {
    /// The stable snake_case drop-reason name.
    pub fn name(&self) -> &'static str {
        match self {
            TunnelError::Packet(e) => e.name(),
            TunnelError::OuterNotIp => "tunnel_outer_not_ip",
            TunnelError::OuterFragment => "tunnel_outer_fragment",
            TunnelError::OuterNotUdp => "tunnel_outer_not_udp",
            TunnelError::WrongDestination => "tunnel_wrong_destination",
            TunnelError::WrongUdpPort => "tunnel_wrong_udp_port",
            TunnelError::BadUdpChecksum => "tunnel_bad_udp_checksum",
            TunnelError::GeneveTruncated => "geneve_truncated",
            TunnelError::GeneveBadVersion => "geneve_bad_version",
            TunnelError::GeneveOptionsTruncated => "geneve_options_truncated",
            TunnelError::GeneveBadOption => "geneve_bad_option",
            TunnelError::GeneveOam => "geneve_oam",
            TunnelError::GeneveNotEthernet => "geneve_not_ethernet",
            TunnelError::NoOvnOption => "geneve_no_ovn_option",
            TunnelError::BadOvnOption => "geneve_bad_ovn_option",
            TunnelError::DuplicateOvnOption => "geneve_duplicate_ovn_option",
            TunnelError::UnknownCriticalOption { .. } => "geneve_unknown_critical_option",
            TunnelError::InnerTruncated => "geneve_inner_truncated",
            TunnelError::InnerTooShort(_) => "tunnel_inner_too_short",
            TunnelError::InnerTooLong(_) => "tunnel_inner_too_long",
            TunnelError::AddressFamilyMismatch => "tunnel_address_family_mismatch",
            TunnelError::VniOutOfRange(_) => "tunnel_vni_out_of_range",
            TunnelError::IngressKeyOutOfRange(_) => "tunnel_ingress_key_out_of_range",
            TunnelError::BufferTooSmall { .. } => "tunnel_buffer_too_small",
            TunnelError::NoHeadroom { .. } => "tunnel_no_headroom",
            TunnelError::TooBigNotIp => "tunnel_too_big_not_ip",
            TunnelError::TooBigAboutIcmpError => "tunnel_too_big_about_icmp_error",
            TunnelError::TooBigLaterFragment => "tunnel_too_big_later_fragment",
        }
    }
}

impl From<ParseError> for TunnelError {
    fn from(e: ParseError) -> Self {
        TunnelError::Packet(e)
    }
}

/// What one encapsulation needs: the outer addresses, the logical datapath
/// and ports, and the receiving chassis's checksum wish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encap {
    /// Outer Ethernet source: the uplink's MAC.
    pub src_mac: MacAddr,
    /// Outer Ethernet destination: the next hop towards the remote chassis.
    pub dst_mac: MacAddr,
    /// This chassis's tunnel address.
    pub src_ip: IpAddr,
    /// The remote chassis's tunnel address (`Encap.ip`), same family.
    pub dst_ip: IpAddr,
    /// Tunnel key of the logical datapath (24 bits).
    pub vni: u32,
    /// Logical ingress (15 bits) and egress port keys.
    pub metadata: OvnMetadata,
    /// Fill the outer UDP checksum (`Encap.options:csum=true` of the remote
    /// chassis); otherwise it is zero, as an OVS Geneve port sends by default.
    pub udp_checksum: bool,
    /// The inner flow's hash when the caller already has one (flow cache,
    /// NIC RSS); `None` computes [`flow_hash`] of the inner frame.
    pub flow_hash: Option<u32>,
}

impl Encap {
    /// Bytes this encapsulation puts in front of the inner frame.
    pub fn header_len(&self) -> usize {
        if self.dst_ip.is_ipv6() {
            ENCAP_LEN_V6
        } else {
            ENCAP_LEN_V4
        }
    }

    fn check(&self, inner_len: usize) -> Result<(), TunnelError> {
        if self.src_ip.is_ipv6() != self.dst_ip.is_ipv6() {
            return Err(TunnelError::AddressFamilyMismatch);
        }
        if self.vni > MAX_VNI {
            return Err(TunnelError::VniOutOfRange(self.vni));
        }
        if self.metadata.ingress_port > MAX_INGRESS_KEY {
            return Err(TunnelError::IngressKeyOutOfRange(
                self.metadata.ingress_port,
            ));
        }
        if inner_len < ethernet::HEADER_LEN {
            return Err(TunnelError::InnerTooShort(inner_len));
        }
        // The IPv4 total length (or IPv6 payload length) must fit 16 bits.
        let ip_part = match self.dst_ip {
            IpAddr::V4(_) => ipv4::HEADER_LEN,
            IpAddr::V6(_) => 0,
        };
        if ip_part + udp::HEADER_LEN + GENEVE_LEN + inner_len > usize::from(u16::MAX) {
            return Err(TunnelError::InnerTooLong(inner_len));
        }
        Ok(())
    }
}

/// The outer UDP source port for a flow hash: the hash scaled onto
/// [`SOURCE_PORT_MIN`]`..=`[`SOURCE_PORT_MAX`] (multiply-shift, as Linux's
/// `udp_flow_src_port` does).
pub fn source_port(hash: u32) -> u16 {
    let span = u64::from(SOURCE_PORT_MAX - SOURCE_PORT_MIN) + 1;
    SOURCE_PORT_MIN + ((u64::from(hash) * span) >> 32) as u16
}

/// A hash of the inner flow, stable for every packet of it: Ethernet
/// addresses and type, VLAN, IP addresses and protocol, and the transport
/// ports unless the packet is a fragment (so every fragment of a datagram
/// takes the same outer port). A frame that does not parse is hashed by its
/// Ethernet header.
pub fn flow_hash(inner: &[u8]) -> u32 {
    let mut h = Fnv64::new();
    match fastpath_packet::extract(inner, 0) {
        Ok((key, _)) => {
            let b = key.as_bytes();
            h.write(&b[key_field::ETH_TYPE]);
            h.write(&b[key_field::VLAN_TCI]);
            h.write(&b[key_field::ETH_DST]);
            h.write(&b[key_field::ETH_SRC]);
            h.write(&[b[key_field::IP_PROTO]]);
            h.write(&b[key_field::SRC]);
            h.write(&b[key_field::DST]);
            if b[key_field::FRAG] == 0 {
                h.write(&b[key_field::TP_SRC]);
                h.write(&b[key_field::TP_DST]);
            }
        }
        Err(_) => h.write(inner.get(..ethernet::HEADER_LEN).unwrap_or(inner)),
    }
    h.finish32()
}

/// FNV-1a over the selected bytes, finished with the splitmix64 mixer so that
/// every input bit reaches the high bits [`source_port`] uses.
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish32(&self) -> u32 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 32) as u32
    }
}

/// Writes the outer headers (`hdr` is exactly [`Encap::header_len`] bytes)
/// for `inner`, which follows them.
fn write_outer(hdr: &mut [u8], inner: &[u8], p: &Encap) {
    let hash = p.flow_hash.unwrap_or_else(|| flow_hash(inner));
    let (l3_len, etype) = match p.dst_ip {
        IpAddr::V4(_) => (ipv4::HEADER_LEN, ethertype::IPV4),
        IpAddr::V6(_) => (ipv6::HEADER_LEN, ethertype::IPV6),
    };
    let (eth, rest) = hdr.split_at_mut(ethernet::HEADER_LEN);
    let mut e = ethernet::Packet::new_unchecked(eth);
    e.set_dst_addr(p.dst_mac);
    e.set_src_addr(p.src_mac);
    e.set_ethertype(etype);
    let (l3, l4) = rest.split_at_mut(l3_len);
    // Checked by Encap::check: fits 16 bits.
    let udp_len = (udp::HEADER_LEN + GENEVE_LEN + inner.len()) as u16;
    let (udp_hdr, gnv) = l4.split_at_mut(udp::HEADER_LEN);
    // Cannot fail: `gnv` is exactly GENEVE_LEN bytes.
    let _ = geneve::write_ovn_header(gnv, p.vni, p.metadata);
    let mut u = udp::Packet::new_unchecked(&mut *udp_hdr);
    u.set_src_port(source_port(hash));
    u.set_dst_port(GENEVE_PORT);
    u.set_len(udp_len);
    u.set_checksum(0);
    let pseudo = match (p.src_ip, p.dst_ip) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut ip = ipv4::Packet::new_unchecked(&mut *l3);
            ip.set_version_and_header_len(ipv4::HEADER_LEN);
            ip.set_tos(0);
            ip.set_total_len(ipv4::HEADER_LEN as u16 + udp_len);
            // DF is set, so the identification carries nothing (RFC 6864).
            ip.set_ident(0);
            ip.set_frag(true, false, 0);
            ip.set_ttl(OUTER_TTL);
            ip.set_protocol(ip_proto::UDP);
            ip.set_src_addr(src);
            ip.set_dst_addr(dst);
            ip.fill_checksum();
            checksum::pseudo_header_v4(src.octets(), dst.octets(), ip_proto::UDP, udp_len)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut ip = ipv6::Packet::new_unchecked(&mut *l3);
            // The flow label carries the flow hash too (RFC 6438).
            ip.set_version_tc_flow(0, hash & 0x000f_ffff);
            ip.set_payload_len(udp_len);
            ip.set_next_header(ip_proto::UDP);
            ip.set_hop_limit(OUTER_TTL);
            ip.set_src_addr(src);
            ip.set_dst_addr(dst);
            checksum::pseudo_header_v6(
                &src.octets(),
                &dst.octets(),
                ip_proto::UDP,
                u32::from(udp_len),
            )
        }
        // Encap::check refused mixed families.
        _ => return,
    };
    if p.udp_checksum {
        // UDP header and Geneve header are 24 bytes: even, so the inner
        // frame's words line up when summed separately.
        let s = checksum::sum(pseudo, udp_hdr);
        let s = checksum::sum(s, gnv);
        let c = match checksum::finish(checksum::sum(s, inner)) {
            0 => 0xffff,
            c => c,
        };
        udp::Packet::new_unchecked(udp_hdr).set_checksum(c);
    }
}

/// Encapsulates `inner` (an Ethernet frame) into `out`: outer Ethernet,
/// IPv4 or IPv6, UDP, Geneve with the OVN option, then a copy of `inner`.
/// Returns the length of the outer frame.
pub fn encapsulate(inner: &[u8], params: &Encap, out: &mut [u8]) -> Result<usize, TunnelError> {
    params.check(inner.len())?;
    let hl = params.header_len();
    let total = hl + inner.len();
    let available = out.len();
    let out = out.get_mut(..total).ok_or(TunnelError::BufferTooSmall {
        needed: total,
        available,
    })?;
    let (hdr, body) = out.split_at_mut(hl);
    body.copy_from_slice(inner);
    write_outer(hdr, inner, params);
    Ok(total)
}

/// Encapsulates in place the inner frame at `buf[inner_offset..inner_offset +
/// inner_len]` by writing the outer headers into the headroom just before it
/// (what prepending to an mbuf gives). Returns the offset where the outer
/// frame now starts; it ends where the inner frame ends.
pub fn encapsulate_in_place(
    buf: &mut [u8],
    inner_offset: usize,
    inner_len: usize,
    params: &Encap,
) -> Result<usize, TunnelError> {
    params.check(inner_len)?;
    let hl = params.header_len();
    let end = inner_offset
        .checked_add(inner_len)
        .filter(|end| *end <= buf.len())
        .ok_or(TunnelError::BufferTooSmall {
            needed: inner_offset.saturating_add(inner_len),
            available: buf.len(),
        })?;
    let start = inner_offset
        .checked_sub(hl)
        .ok_or(TunnelError::NoHeadroom {
            needed: hl,
            available: inner_offset,
        })?;
    let (head, tail) = buf[..end].split_at_mut(inner_offset);
    write_outer(&mut head[start..], tail, params);
    Ok(start)
}

/// The tunnel addresses of this chassis: decapsulation accepts packets sent
/// to these only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocalEndpoint {
    /// IPv4 tunnel address, if any.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 tunnel address, if any.
    pub ipv6: Option<Ipv6Addr>,
}

/// A validated tunnel packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decap {
    /// VNI: the logical datapath's tunnel key.
    pub vni: u32,
    /// Logical ingress and egress port keys.
    pub metadata: OvnMetadata,
    /// The sending chassis's tunnel address.
    pub remote_ip: IpAddr,
    /// The outer UDP source port (the sender's flow hash).
    pub source_port: u16,
    /// Offset of the inner Ethernet frame in the outer frame.
    pub inner_offset: usize,
    /// Length of the inner frame (outer padding excluded).
    pub inner_len: usize,
}

impl Decap {
    /// The inner frame within the outer frame it was decoded from.
    pub fn inner<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        frame.get(self.inner_offset..self.inner_offset.checked_add(self.inner_len)?)
    }
}

/// Validates a tunnel packet received from the uplink and returns what the
/// logical pipeline needs: the datapath key, the logical port keys and where
/// the inner frame is. Accepts one outer VLAN tag, IPv4 (header checksum
/// verified, not a fragment) or IPv6 with UDP directly after it, UDP to port
/// 6081 with a zero or correct checksum, Geneve version 0 carrying Ethernet
/// with exactly one well-formed OVN option and no other critical option.
pub fn decapsulate(frame: &[u8], local: &LocalEndpoint) -> Result<Decap, TunnelError> {
    let eth = ethernet::Packet::new_checked(frame)?;
    let mut etype = eth.ethertype();
    let mut l3 = ethernet::HEADER_LEN;
    if ethertype::is_vlan(etype) {
        let tag = vlan::Packet::new_checked(frame.get(l3..).unwrap_or_default())?;
        etype = tag.ethertype();
        l3 += vlan::HEADER_LEN;
    }
    let rest = frame.get(l3..).unwrap_or_default();
    let (l4, udp_datagram, remote_ip, udp_checked): (usize, &[u8], IpAddr, bool);
    match etype {
        ethertype::IPV4 => {
            let ip = ipv4::Packet::new_checked(rest)?;
            ip.check_checksum()?;
            if ip.frag_offset() != 0 || ip.more_frags() {
                return Err(TunnelError::OuterFragment);
            }
            if ip.protocol() != ip_proto::UDP {
                return Err(TunnelError::OuterNotUdp);
            }
            if local.ipv4 != Some(ip.dst_addr()) {
                return Err(TunnelError::WrongDestination);
            }
            l4 = l3 + ip.header_len();
            remote_ip = IpAddr::V4(ip.src_addr());
            let payload = &rest[ip.header_len()..usize::from(ip.total_len())];
            udp_datagram = payload;
            let u = udp::Packet::new_checked(payload)?;
            udp_checked = u.verify_checksum_v4(ip.src_octets(), ip.dst_octets());
        }
        ethertype::IPV6 => {
            let ip = ipv6::Packet::new_checked(rest)?;
            if ip.next_header() != ip_proto::UDP {
                return Err(TunnelError::OuterNotUdp);
            }
            if local.ipv6 != Some(ip.dst_addr()) {
                return Err(TunnelError::WrongDestination);
            }
            l4 = l3 + ipv6::HEADER_LEN;
            remote_ip = IpAddr::V6(ip.src_addr());
            let payload = &rest[ipv6::HEADER_LEN..ipv6::HEADER_LEN + usize::from(ip.payload_len())];
            udp_datagram = payload;
            let u = udp::Packet::new_checked(payload)?;
            // A zero checksum is allowed for tunnels over IPv6 (RFC 6935).
            udp_checked =
                u.checksum() == 0 || u.verify_checksum_v6(&ip.src_octets(), &ip.dst_octets());
        }
        _ => return Err(TunnelError::OuterNotIp),
    }
    let u = udp::Packet::new_checked(udp_datagram)?;
    if u.dst_port() != GENEVE_PORT {
        return Err(TunnelError::WrongUdpPort);
    }
    if !udp_checked {
        return Err(TunnelError::BadUdpChecksum);
    }
    let (vni, metadata, geneve_len, inner_len) = parse_geneve(u.payload())?;
    Ok(Decap {
        vni,
        metadata,
        remote_ip,
        source_port: u.src_port(),
        inner_offset: l4 + udp::HEADER_LEN + geneve_len,
        inner_len,
    })
}

/// Checks a Geneve header and its options; returns the VNI, the OVN
/// metadata, the header length and the inner frame's length.
fn parse_geneve(g: &[u8]) -> Result<(u32, OvnMetadata, usize, usize), TunnelError> {
    let p = geneve::Packet::new_checked(g).map_err(|e| match e {
        ParseError::BadGeneveVersion => TunnelError::GeneveBadVersion,
        ParseError::TruncatedGeneveOptions => TunnelError::GeneveOptionsTruncated,
        _ => TunnelError::GeneveTruncated,
    })?;
    if p.oam() {
        return Err(TunnelError::GeneveOam);
    }
    if p.protocol_type() != ethertype::TRANSPARENT_ETHERNET {
        return Err(TunnelError::GeneveNotEthernet);
    }
    let mut found = None;
    for opt in p.options() {
        let opt = opt.map_err(|_| TunnelError::GeneveBadOption)?;
        if opt.is_ovn() {
            let data: [u8; 4] = opt.data.try_into().map_err(|_| TunnelError::BadOvnOption)?;
            if found.is_some() {
                return Err(TunnelError::DuplicateOvnOption);
            }
            found = Some(OvnMetadata::from_bytes(data));
        } else if opt.kind & geneve::OPTION_TYPE_CRITICAL != 0 {
            return Err(TunnelError::UnknownCriticalOption {
                class: opt.class,
                kind: opt.kind,
            });
        }
    }
    let metadata = found.ok_or(TunnelError::NoOvnOption)?;
    let inner_len = p.payload().len();
    if inner_len < ethernet::HEADER_LEN {
        return Err(TunnelError::InnerTruncated);
    }
    Ok((p.vni(), metadata, p.header_len(), inner_len))
}

/// The pod MTU behind an uplink of `uplink_mtu` with IPv4 tunnels
/// (`uplink_mtu - 58`, see [`MTU_OVERHEAD_V4`]).
pub fn pod_mtu(uplink_mtu: u16) -> u16 {
    uplink_mtu.saturating_sub(MTU_OVERHEAD_V4)
}

/// The pod MTU behind an uplink of `uplink_mtu` with IPv6 tunnels.
pub fn pod_mtu_v6(uplink_mtu: u16) -> u16 {
    uplink_mtu.saturating_sub(MTU_OVERHEAD_V6)
}

/// Whether an inner frame of `inner_len` bytes (Ethernet header included)
/// fits an IPv4 tunnel over an uplink of `uplink_mtu`.
pub fn fits(inner_len: usize, uplink_mtu: u16) -> bool {
    inner_len + (ENCAP_LEN_V4 - ethernet::HEADER_LEN) <= usize::from(uplink_mtu)
}

/// Whether an inner frame fits an IPv6 tunnel over an uplink of `uplink_mtu`.
pub fn fits_v6(inner_len: usize, uplink_mtu: u16) -> bool {
    inner_len + (ENCAP_LEN_V6 - ethernet::HEADER_LEN) <= usize::from(uplink_mtu)
}

/// What to do with an inner frame before tunnelling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtuVerdict {
    /// It fits: encapsulate.
    Fits,
    /// Too big, and the sender expects to be told: answer with
    /// [`too_big_reply`] carrying this MTU (IPv4 with DF, or IPv6).
    SendTooBig {
        /// The MTU to report (the pod MTU).
        mtu: u16,
    },
    /// Too big and nothing to answer (IPv4 without DF, or not IP): the
    /// fastpath does not fragment, so it drops the frame under
    /// `tunnel_inner_too_big`.
    Drop,
}

/// Decides whether `inner` may go into a tunnel over an uplink of
/// `uplink_mtu` bytes (`ipv6_outer` for IPv6 tunnel addresses).
pub fn check_mtu(inner: &[u8], uplink_mtu: u16, ipv6_outer: bool) -> MtuVerdict {
    let (ok, mtu) = if ipv6_outer {
        (fits_v6(inner.len(), uplink_mtu), pod_mtu_v6(uplink_mtu))
    } else {
        (fits(inner.len(), uplink_mtu), pod_mtu(uplink_mtu))
    };
    if ok {
        return MtuVerdict::Fits;
    }
    match fastpath_packet::extract(inner, 0) {
        Ok((key, _)) if key.is_ipv6() => MtuVerdict::SendTooBig { mtu },
        Ok((key, layout)) if key.is_ipv4() => {
            let ip = ipv4::Packet::new_unchecked(&inner[usize::from(layout.l3)..]);
            if ip.dont_frag() {
                MtuVerdict::SendTooBig { mtu }
            } else {
                MtuVerdict::Drop
            }
        }
        _ => MtuVerdict::Drop,
    }
}

/// Name of the drop counter for [`MtuVerdict::Drop`].
pub const INNER_TOO_BIG: &str = "tunnel_inner_too_big";

/// Who answers a packet that is too big for the tunnel: the logical router
/// port the pod sends through (its MAC and addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Responder {
    /// MAC the answer comes from.
    pub mac: MacAddr,
    /// IPv4 source of an ICMPv4 answer.
    pub ipv4: Ipv4Addr,
    /// IPv6 source of an ICMPv6 answer.
    pub ipv6: Ipv6Addr,
}

/// Builds in `out` the answer to an inner frame that cannot fit the tunnel:
/// ICMPv4 destination unreachable / fragmentation needed (type 3 code 4,
/// RFC 1191) with the next-hop MTU, or ICMPv6 packet too big (type 2,
/// RFC 4443) with the MTU, addressed back to the sender (Ethernet and IP
/// source of `inner`), quoting as much of the offending packet as the error
/// may carry. Returns the frame's length.
pub fn too_big_reply(
    inner: &[u8],
    mtu: u16,
    responder: &Responder,
    out: &mut [u8],
) -> Result<usize, TunnelError> {
    let (key, layout) = fastpath_packet::extract(inner, 0)?;
    let l3 = usize::from(layout.l3);
    let end = usize::from(layout.end).min(inner.len());
    let packet = inner.get(l3..end).ok_or(TunnelError::TooBigNotIp)?;
    let sender_mac = ethernet::Packet::new_unchecked(inner).src_addr();
    let available = out.len();
    let too_small = |needed| TunnelError::BufferTooSmall { needed, available };
    if key.is_ipv4() {
        let ip = ipv4::Packet::new_checked(packet)?;
        if ip.frag_offset() != 0 {
            return Err(TunnelError::TooBigLaterFragment);
        }
        if ip.protocol() == ip_proto::ICMPV4
            && !matches!(
                key.as_bytes()[key_field::ICMP_TYPE],
                icmpv4::msg_type::ECHO_REPLY | icmpv4::msg_type::ECHO_REQUEST | 13..=18
            )
        {
            return Err(TunnelError::TooBigAboutIcmpError);
        }
        let quote = &packet[..packet.len().min(ICMPV4_QUOTE_MAX)];
        let icmp_len = icmpv4::HEADER_LEN + quote.len();
        let total = ethernet::HEADER_LEN + ipv4::HEADER_LEN + icmp_len;
        let frame = out.get_mut(..total).ok_or(too_small(total))?;
        let (eth, rest) = frame.split_at_mut(ethernet::HEADER_LEN);
        let mut e = ethernet::Packet::new_unchecked(eth);
        e.set_dst_addr(sender_mac);
        e.set_src_addr(responder.mac);
        e.set_ethertype(ethertype::IPV4);
        let (iph, icmp) = rest.split_at_mut(ipv4::HEADER_LEN);
        let mut o = ipv4::Packet::new_unchecked(iph);
        o.set_version_and_header_len(ipv4::HEADER_LEN);
        o.set_tos(0);
        o.set_total_len((ipv4::HEADER_LEN + icmp_len) as u16);
        o.set_ident(0);
        o.set_frag(false, false, 0);
        o.set_ttl(OUTER_TTL);
        o.set_protocol(ip_proto::ICMPV4);
        o.set_src_addr(responder.ipv4);
        o.set_dst_addr(ip.src_addr());
        o.fill_checksum();
        icmp[icmpv4::HEADER_LEN..].copy_from_slice(quote);
        // Rest of header: 16 unused bits, then the next-hop MTU (RFC 1191).
        icmp[icmpv4::field::REST_OF_HEADER].copy_from_slice(&u32::from(mtu).to_be_bytes());
        let mut m = icmpv4::Packet::new_unchecked(icmp);
        m.set_msg_type(icmpv4::msg_type::DST_UNREACHABLE);
        m.set_msg_code(4);
        m.fill_checksum();
        Ok(total)
    } else if key.is_ipv6() {
        let ip = ipv6::Packet::new_checked(packet)?;
        let icmp_type = key.as_bytes()[key_field::ICMP_TYPE];
        if key.as_bytes()[key_field::IP_PROTO] == ip_proto::ICMPV6 && icmp_type < 128 {
            return Err(TunnelError::TooBigAboutIcmpError);
        }
        let quote = &packet[..packet.len().min(ICMPV6_QUOTE_MAX)];
        let icmp_len = icmpv6::HEADER_LEN + quote.len();
        let total = ethernet::HEADER_LEN + ipv6::HEADER_LEN + icmp_len;
        let frame = out.get_mut(..total).ok_or(too_small(total))?;
        let (eth, rest) = frame.split_at_mut(ethernet::HEADER_LEN);
        let mut e = ethernet::Packet::new_unchecked(eth);
        e.set_dst_addr(sender_mac);
        e.set_src_addr(responder.mac);
        e.set_ethertype(ethertype::IPV6);
        let (iph, icmp) = rest.split_at_mut(ipv6::HEADER_LEN);
        let mut o = ipv6::Packet::new_unchecked(iph);
        o.set_version_tc_flow(0, 0);
        o.set_payload_len(icmp_len as u16);
        o.set_next_header(ip_proto::ICMPV6);
        o.set_hop_limit(OUTER_TTL);
        o.set_src_addr(responder.ipv6);
        o.set_dst_addr(ip.src_addr());
        icmp[icmpv6::HEADER_LEN..].copy_from_slice(quote);
        // The MTU field is the 32-bit rest of the header.
        icmp[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
        let mut m = icmpv6::Packet::new_unchecked(icmp);
        m.set_msg_type(icmpv6::msg_type::PACKET_TOO_BIG);
        m.set_msg_code(0);
        m.fill_checksum(&responder.ipv6.octets(), &ip.src_octets());
        Ok(total)
    } else {
        Err(TunnelError::TooBigNotIp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const REMOTE4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const LOCAL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const REMOTE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    const POD_MAC: MacAddr = [0x0a, 0x58, 0x0a, 0x10, 0, 5];
    const GW_MAC: MacAddr = [0x0a, 0x58, 0x0a, 0x10, 0, 1];

    /// An Ethernet/IPv4/UDP frame with `payload` bytes of data.
    fn inner_v4(src_port: u16, dst_port: u16, payload: usize, df: bool) -> Vec<u8> {
        let ip_len = ipv4::HEADER_LEN + udp::HEADER_LEN + payload;
        let mut f = vec![0u8; ethernet::HEADER_LEN + ip_len];
        let mut e = ethernet::Packet::new_unchecked(&mut f[..]);
        e.set_dst_addr(GW_MAC);
        e.set_src_addr(POD_MAC);
        e.set_ethertype(ethertype::IPV4);
        let mut ip = ipv4::Packet::new_unchecked(&mut f[ethernet::HEADER_LEN..]);
        ip.set_version_and_header_len(ipv4::HEADER_LEN);
        ip.set_total_len(ip_len as u16);
        ip.set_frag(df, false, 0);
        ip.set_ttl(63);
        ip.set_protocol(ip_proto::UDP);
        ip.set_src_addr(Ipv4Addr::new(10, 16, 0, 5));
        ip.set_dst_addr(Ipv4Addr::new(10, 16, 1, 9));
        ip.fill_checksum();
        let l4 = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
        for (i, b) in f[l4 + udp::HEADER_LEN..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut u = udp::Packet::new_unchecked(&mut f[l4..]);
        u.set_src_port(src_port);
        u.set_dst_port(dst_port);
        u.set_len((udp::HEADER_LEN + payload) as u16);
        u.fill_checksum_v4([10, 16, 0, 5], [10, 16, 1, 9]);
        f
    }

    /// An Ethernet/IPv6/UDP frame.
    fn inner_v6(payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; ethernet::HEADER_LEN + ipv6::HEADER_LEN + udp::HEADER_LEN + payload];
        let mut e = ethernet::Packet::new_unchecked(&mut f[..]);
        e.set_dst_addr(GW_MAC);
        e.set_src_addr(POD_MAC);
        e.set_ethertype(ethertype::IPV6);
        let mut ip = ipv6::Packet::new_unchecked(&mut f[ethernet::HEADER_LEN..]);
        ip.set_version_tc_flow(0, 0);
        ip.set_payload_len((udp::HEADER_LEN + payload) as u16);
        ip.set_next_header(ip_proto::UDP);
        ip.set_hop_limit(64);
        ip.set_src_addr("fd00::5".parse().unwrap());
        ip.set_dst_addr("fd00:1::9".parse().unwrap());
        let l4 = ethernet::HEADER_LEN + ipv6::HEADER_LEN;
        let mut u = udp::Packet::new_unchecked(&mut f[l4..]);
        u.set_src_port(5000);
        u.set_dst_port(53);
        u.set_len((udp::HEADER_LEN + payload) as u16);
        f
    }

    fn params_v4() -> Encap {
        Encap {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: IpAddr::V4(REMOTE4),
            dst_ip: IpAddr::V4(LOCAL4),
            vni: 0x00_1234,
            metadata: OvnMetadata {
                ingress_port: 0x7ffe,
                egress_port: 0x8001,
            },
            udp_checksum: false,
            flow_hash: None,
        }
    }

    fn params_v6() -> Encap {
        Encap {
            src_ip: IpAddr::V6(REMOTE6),
            dst_ip: IpAddr::V6(LOCAL6),
            udp_checksum: true,
            ..params_v4()
        }
    }

    fn local() -> LocalEndpoint {
        LocalEndpoint {
            ipv4: Some(LOCAL4),
            ipv6: Some(LOCAL6),
        }
    }

    fn encap(inner: &[u8], p: &Encap) -> Vec<u8> {
        let mut out = vec![0u8; inner.len() + 100];
        let n = encapsulate(inner, p, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn overheads_are_58_and_78() {
        assert_eq!(ENCAP_LEN_V4, 58);
        assert_eq!(ENCAP_LEN_V6, 78);
        assert_eq!(usize::from(MTU_OVERHEAD_V4), ENCAP_LEN_V4);
        assert_eq!(usize::from(MTU_OVERHEAD_V6), ENCAP_LEN_V6);
        assert_eq!(pod_mtu(1500), 1442);
        assert_eq!(pod_mtu_v6(9000), 8922);
    }

    #[test]
    fn round_trip_ipv4_outer() {
        let inner = inner_v4(40000, 80, 100, true);
        for csum in [false, true] {
            let p = Encap {
                udp_checksum: csum,
                ..params_v4()
            };
            let frame = encap(&inner, &p);
            assert_eq!(frame.len(), inner.len() + 58);
            let ip = ipv4::Packet::new_checked(&frame[14..]).unwrap();
            assert!(ip.verify_checksum());
            assert!(ip.dont_frag());
            assert_eq!(ip.ttl(), 64);
            let u = udp::Packet::new_checked(ip.payload()).unwrap();
            assert_eq!(u.dst_port(), 6081);
            assert!((SOURCE_PORT_MIN..=SOURCE_PORT_MAX).contains(&u.src_port()));
            if csum {
                assert_ne!(u.checksum(), 0);
                assert!(u.verify_checksum_v4(REMOTE4.octets(), LOCAL4.octets()));
            } else {
                assert_eq!(u.checksum(), 0);
            }
            let d = decapsulate(&frame, &local()).unwrap();
            assert_eq!(d.vni, 0x1234);
            assert_eq!(d.metadata, p.metadata);
            assert_eq!(d.remote_ip, IpAddr::V4(REMOTE4));
            assert_eq!(d.source_port, u.src_port());
            assert_eq!(d.inner_offset, 58);
            assert_eq!(d.inner(&frame), Some(&inner[..]));
        }
    }

    #[test]
    fn round_trip_ipv6_outer_and_vlan() {
        let inner = inner_v6(33);
        let frame = encap(&inner, &params_v6());
        assert_eq!(frame.len(), inner.len() + 78);
        let ip = ipv6::Packet::new_checked(&frame[14..]).unwrap();
        assert_eq!(ip.hop_limit(), 64);
        let u = udp::Packet::new_checked(ip.payload()).unwrap();
        assert!(u.verify_checksum_v6(&REMOTE6.octets(), &LOCAL6.octets()));
        let d = decapsulate(&frame, &local()).unwrap();
        assert_eq!(d.inner(&frame), Some(&inner[..]));
        assert_eq!(d.remote_ip, IpAddr::V6(REMOTE6));
        // The same frame behind an 802.1Q tag on the uplink.
        let mut tagged = frame[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        tagged.extend_from_slice(&frame[12..]);
        let d = decapsulate(&tagged, &local()).unwrap();
        assert_eq!(d.inner_offset, 82);
        assert_eq!(d.inner(&tagged), Some(&inner[..]));
    }

    #[test]
    fn in_place_matches_copy() {
        let inner = inner_v4(1234, 443, 64, false);
        let p = params_v4();
        let mut buf = vec![0xeeu8; 128 + inner.len()];
        buf[128..].copy_from_slice(&inner);
        let start = encapsulate_in_place(&mut buf, 128, inner.len(), &p).unwrap();
        assert_eq!(start, 128 - 58);
        assert_eq!(&buf[start..], &encap(&inner, &p)[..]);
        assert_eq!(
            encapsulate_in_place(&mut buf, 57, 14, &p),
            Err(TunnelError::NoHeadroom {
                needed: 58,
                available: 57
            })
        );
        assert!(matches!(
            encapsulate_in_place(&mut buf, 100, 1000, &p),
            Err(TunnelError::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn encapsulation_refusals() {
        let inner = inner_v4(1, 2, 0, false);
        let mut out = [0u8; 2048];
        let p = params_v4();
        let cases = [
            (
                Encap {
                    dst_ip: IpAddr::V6(LOCAL6),
                    ..p
                },
                "tunnel_address_family_mismatch",
            ),
            (Encap { vni: 1 << 24, ..p }, "tunnel_vni_out_of_range"),
            (
                Encap {
                    metadata: OvnMetadata {
                        ingress_port: 0x8000,
                        egress_port: 1,
                    },
                    ..p
                },
                "tunnel_ingress_key_out_of_range",
            ),
        ];
        for (bad, name) in cases {
            assert_eq!(
                encapsulate(&inner, &bad, &mut out).unwrap_err().name(),
                name
            );
        }
        assert_eq!(
            encapsulate(&inner[..13], &p, &mut out),
            Err(TunnelError::InnerTooShort(13))
        );
        assert_eq!(
            encapsulate(&vec![0u8; 65500], &p, &mut vec![0u8; 70000]),
            Err(TunnelError::InnerTooLong(65500))
        );
        assert!(matches!(
            encapsulate(&inner, &p, &mut out[..60]),
            Err(TunnelError::BufferTooSmall { needed, available: 60 }) if needed == inner.len() + 58
        ));
    }

    /// Re-fills the outer IPv4 checksum after a test edit.
    fn fix_ip(frame: &mut [u8]) {
        ipv4::Packet::new_unchecked(&mut frame[14..34]).fill_checksum();
    }

    /// A test edit of an encapsulated frame.
    type FrameEdit = Box<dyn Fn(&mut Vec<u8>)>;

    #[test]
    fn every_decapsulation_refusal() {
        let inner = inner_v4(40000, 80, 20, true);
        let good = encap(&inner, &params_v4());
        let refuse = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut frame = good.clone();
            f(&mut frame);
            decapsulate(&frame, &local()).unwrap_err()
        };
        // Offsets: IPv4 at 14, UDP at 34, Geneve at 42, OVN option at 50.
        let cases: Vec<(FrameEdit, &str)> = vec![
            (Box::new(|f| f.truncate(10)), "truncated_ethernet"),
            (
                Box::new(|f| f[12..14].copy_from_slice(&[0x08, 0x06])),
                "tunnel_outer_not_ip",
            ),
            (Box::new(|f| f[24] ^= 0xff), "bad_ipv4_checksum"),
            (Box::new(|f| f.truncate(30)), "truncated_ipv4"),
            (
                Box::new(|f| {
                    f[20] = 0x20; // MF
                    fix_ip(f)
                }),
                "tunnel_outer_fragment",
            ),
            (
                Box::new(|f| {
                    f[23] = ip_proto::TCP;
                    fix_ip(f)
                }),
                "tunnel_outer_not_udp",
            ),
            (
                Box::new(|f| {
                    f[33] = 99;
                    fix_ip(f)
                }),
                "tunnel_wrong_destination",
            ),
            (
                Box::new(|f| f[36..38].copy_from_slice(&4789u16.to_be_bytes())),
                "tunnel_wrong_udp_port",
            ),
            (
                Box::new(|f| f[40..42].copy_from_slice(&[0x12, 0x34])),
                "tunnel_bad_udp_checksum",
            ),
            (
                Box::new(|f| f[38..40].copy_from_slice(&4u16.to_be_bytes())),
                "bad_udp_length",
            ),
            (
                Box::new(|f| {
                    // A UDP datagram of 12 bytes: too short for Geneve.
                    f[38..40].copy_from_slice(&12u16.to_be_bytes());
                    let total = 20 + 12u16;
                    f[16..18].copy_from_slice(&total.to_be_bytes());
                    fix_ip(f)
                }),
                "geneve_truncated",
            ),
            (Box::new(|f| f[42] |= 0x40), "geneve_bad_version"),
            (Box::new(|f| f[42] = 0x3f), "geneve_options_truncated"),
            (Box::new(|f| f[53] = 0x1f), "geneve_bad_option"),
            (Box::new(|f| f[43] |= 0x80), "geneve_oam"),
            (
                Box::new(|f| f[44..46].copy_from_slice(&[0x08, 0x00])),
                "geneve_not_ethernet",
            ),
            (
                Box::new(|f| f[50..52].copy_from_slice(&[0x01, 0x03])),
                "geneve_unknown_critical_option",
            ),
            (
                Box::new(|f| {
                    // The same option, non-critical and of another class: ignored, so no OVN option.
                    f[50..52].copy_from_slice(&[0x01, 0x03]);
                    f[52] = 0x01;
                }),
                "geneve_no_ovn_option",
            ),
            (
                Box::new(|f| {
                    // OVN option claiming 8 bytes of data, the options area grown to match.
                    f[42] = 0x04;
                    f[53] = 0x02;
                }),
                "geneve_bad_ovn_option",
            ),
            (
                Box::new(|f| {
                    // Two OVN options: the second one is the first 8 inner bytes rewritten.
                    f[42] = 0x04;
                    let opt: Vec<u8> = f[50..58].to_vec();
                    f[58..66].copy_from_slice(&opt);
                }),
                "geneve_duplicate_ovn_option",
            ),
            (
                Box::new(|f| {
                    // Options area grown to eat all but 10 inner bytes.
                    let inner = f.len() - 58;
                    let words = ((8 + inner - 10) / 4) as u8;
                    f.truncate(58 + ((words as usize * 4) - 8) + 10);
                    f[42] = words;
                    let udp_len = (f.len() - 34) as u16;
                    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
                    f[16..18].copy_from_slice(&(udp_len + 20).to_be_bytes());
                    // The extra option words are a zero-length option walk of class 0x0000.
                    for b in &mut f[58..58 + (words as usize * 4 - 8)] {
                        *b = 0;
                    }
                    fix_ip(f)
                }),
                "geneve_inner_truncated",
            ),
        ];
        let mut seen = std::collections::HashSet::new();
        for (edit, name) in &cases {
            let e = refuse(edit.as_ref());
            assert_eq!(e.name(), *name, "{e}");
            seen.insert(e.name());
        }
        // Every decapsulation reason of DROP_REASONS was produced.
        for name in &DROP_REASONS[..17] {
            assert!(seen.contains(name), "{name} not exercised");
        }
        // IPv6 outer: only our address, and a zero UDP checksum is accepted.
        let mut v6 = encap(
            &inner,
            &Encap {
                udp_checksum: false,
                ..params_v6()
            },
        );
        assert!(decapsulate(&v6, &local()).is_ok());
        assert_eq!(
            decapsulate(
                &v6,
                &LocalEndpoint {
                    ipv4: Some(LOCAL4),
                    ipv6: None
                }
            ),
            Err(TunnelError::WrongDestination)
        );
        v6[20] = ip_proto::TCP;
        assert_eq!(decapsulate(&v6, &local()), Err(TunnelError::OuterNotUdp));
    }

    #[test]
    fn drop_reason_names_are_unique_and_listed() {
        let mut names: Vec<&str> = DROP_REASONS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DROP_REASONS.len());
        assert!(DROP_REASONS.contains(&TunnelError::NoOvnOption.name()));
        assert_eq!(TunnelError::NoOvnOption.name(), "geneve_no_ovn_option");
        assert_eq!(
            TunnelError::Packet(ParseError::TruncatedUdp).name(),
            "truncated_udp"
        );
    }

    #[test]
    fn source_port_is_stable_per_flow_and_spread() {
        let p = params_v4();
        let port_of = |inner: &[u8]| {
            let f = encap(inner, &p);
            u16::from_be_bytes([f[34], f[35]])
        };
        let a = inner_v4(40000, 80, 10, true);
        let a_longer = inner_v4(40000, 80, 900, false);
        assert_eq!(port_of(&a), port_of(&a_longer), "same flow, same port");
        assert_ne!(port_of(&a), port_of(&inner_v4(40001, 80, 10, true)));
        // Given hash wins over the computed one.
        let f = encap(
            &a,
            &Encap {
                flow_hash: Some(0),
                ..p
            },
        );
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), SOURCE_PORT_MIN);
        assert_eq!(source_port(u32::MAX), SOURCE_PORT_MAX);
        // Spread: 4096 flows over 16 equal slices of the range.
        let mut buckets = [0u32; 16];
        let span = u32::from(SOURCE_PORT_MAX - SOURCE_PORT_MIN) + 1;
        for sport in 0..4096u16 {
            let port = port_of(&inner_v4(10000 + sport, 443, 0, true));
            assert!((SOURCE_PORT_MIN..=SOURCE_PORT_MAX).contains(&port));
            buckets[(u32::from(port - SOURCE_PORT_MIN) * 16 / span) as usize] += 1;
        }
        for (i, n) in buckets.iter().enumerate() {
            assert!((192..=320).contains(n), "slice {i} holds {n} of 4096 flows");
        }
    }

    #[test]
    fn mtu_checks() {
        // 1442-byte IP packet = 1456-byte frame fits a 1500 uplink; one more byte does not.
        let fit = inner_v4(1, 2, 1442 - 28, true);
        assert_eq!(fit.len(), 1456);
        assert!(fits(fit.len(), 1500));
        assert!(!fits(fit.len() + 1, 1500));
        assert_eq!(check_mtu(&fit, 1500, false), MtuVerdict::Fits);
        let big_df = inner_v4(1, 2, 1443 - 28, true);
        assert_eq!(
            check_mtu(&big_df, 1500, false),
            MtuVerdict::SendTooBig { mtu: 1442 }
        );
        assert_eq!(
            check_mtu(&big_df, 1500, true),
            MtuVerdict::SendTooBig { mtu: 1422 }
        );
        let big_no_df = inner_v4(1, 2, 1443 - 28, false);
        assert_eq!(check_mtu(&big_no_df, 1500, false), MtuVerdict::Drop);
        let big6 = inner_v6(1500);
        assert_eq!(
            check_mtu(&big6, 1500, false),
            MtuVerdict::SendTooBig { mtu: 1442 }
        );
    }

    fn responder() -> Responder {
        Responder {
            mac: GW_MAC,
            ipv4: Ipv4Addr::new(10, 16, 0, 1),
            ipv6: "fd00::1".parse().unwrap(),
        }
    }

    #[test]
    fn frag_needed_reply() {
        let inner = inner_v4(40000, 80, 1500, true);
        let mut out = [0u8; 1600];
        let n = too_big_reply(&inner, 1442, &responder(), &mut out).unwrap();
        let f = &out[..n];
        let e = ethernet::Packet::new_checked(f).unwrap();
        assert_eq!(e.dst_addr(), POD_MAC);
        assert_eq!(e.src_addr(), GW_MAC);
        let ip = ipv4::Packet::new_checked(e.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.protocol(), ip_proto::ICMPV4);
        assert_eq!(ip.src_addr(), Ipv4Addr::new(10, 16, 0, 1));
        assert_eq!(ip.dst_addr(), Ipv4Addr::new(10, 16, 0, 5));
        assert_eq!(usize::from(ip.total_len()), 576);
        let m = icmpv4::Packet::new_checked(ip.payload()).unwrap();
        assert!(m.verify_checksum());
        assert_eq!((m.msg_type(), m.msg_code()), (3, 4));
        assert_eq!(m.rest_of_header(), 1442);
        assert_eq!(m.data(), &inner[14..14 + 548]);
        // Nothing about ICMP errors or later fragments.
        let mut icmp_err = inner.clone();
        icmp_err[23] = ip_proto::ICMPV4;
        icmp_err[34] = 3;
        fix_ip(&mut icmp_err);
        assert_eq!(
            too_big_reply(&icmp_err, 1442, &responder(), &mut out),
            Err(TunnelError::TooBigAboutIcmpError)
        );
        let mut later = inner.clone();
        later[20..22].copy_from_slice(&0x4010u16.to_be_bytes());
        fix_ip(&mut later);
        assert_eq!(
            too_big_reply(&later, 1442, &responder(), &mut out),
            Err(TunnelError::TooBigLaterFragment)
        );
        let mut arp = inner.clone();
        arp[12..14].copy_from_slice(&[0x88, 0xcc]);
        assert_eq!(
            too_big_reply(&arp, 1442, &responder(), &mut out),
            Err(TunnelError::TooBigNotIp)
        );
        assert!(matches!(
            too_big_reply(&inner, 1442, &responder(), &mut out[..100]),
            Err(TunnelError::BufferTooSmall { needed: 590, .. })
        ));
    }

    #[test]
    fn packet_too_big_reply() {
        let inner = inner_v6(1500);
        let mut out = [0u8; 1600];
        let n = too_big_reply(&inner, 1422, &responder(), &mut out).unwrap();
        assert_eq!(n, 14 + 1280);
        let e = ethernet::Packet::new_checked(&out[..n]).unwrap();
        assert_eq!(e.dst_addr(), POD_MAC);
        let ip = ipv6::Packet::new_checked(e.payload()).unwrap();
        assert_eq!(ip.next_header(), ip_proto::ICMPV6);
        assert_eq!(ip.dst_addr(), "fd00::5".parse::<Ipv6Addr>().unwrap());
        let m = icmpv6::Packet::new_checked(ip.payload()).unwrap();
        assert!(m.verify_checksum(&ip.src_octets(), &ip.dst_octets()));
        assert_eq!((m.msg_type(), m.msg_code()), (2, 0));
        assert_eq!(m.rest_of_header(), 1422);
        assert_eq!(m.data(), &inner[14..14 + 1232]);
    }
}
