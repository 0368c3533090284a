//! Connection tuples and the packet summary the tracker classifies.
//!
//! Owns [`Tuple`] (one direction of a connection), its direction-independent
//! hash, and [`CtPacket`], built from a parsed frame ([`CtPacket::from_frame`])
//! or from a flow key alone ([`CtPacket::from_key`]). It reads frames but never
//! writes them and knows nothing of the connection table.

use fastpath_packet::{ip_proto, FlowKey, FragState, Layout};
use std::net::IpAddr;

/// One direction of a connection.
///
/// Addresses are 16 bytes, IPv4 ones v4-mapped (`::ffff:a.b.c.d`) as in
/// [`FlowKey`]. For TCP, UDP and SCTP the ports are the L4 ports. For ICMP and
/// ICMPv6 echo, `src_port` is the echo identifier and `dst_port` is
/// `type << 8 | code` of the message (request in the original direction,
/// reply in the reply direction). Other protocols have both ports zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Tuple {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port, or ICMP echo identifier.
    pub src_port: u16,
    /// Destination port, or ICMP `type << 8 | code`.
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// IPv6 (true) or IPv4 (false).
    pub ipv6: bool,
}

/// ICMPv4 message types the tracker knows.
pub(crate) mod icmp4 {
    pub const ECHO_REPLY: u8 = 0;
    pub const DST_UNREACHABLE: u8 = 3;
    pub const SOURCE_QUENCH: u8 = 4;
    pub const REDIRECT: u8 = 5;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// ICMPv6 message types the tracker knows.
pub(crate) mod icmp6 {
    pub const DST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAMETER_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
}

/// True for the ICMP protocol of the family (ICMPv4 over IPv4, ICMPv6 over IPv6).
#[inline]
pub(crate) fn is_icmp(proto: u8, ipv6: bool) -> bool {
    (proto == ip_proto::ICMPV4 && !ipv6) || (proto == ip_proto::ICMPV6 && ipv6)
}

/// True if the ICMP type is an error that quotes the offending packet.
#[inline]
pub(crate) fn is_icmp_error(icmp_type: u8, ipv6: bool) -> bool {
    if ipv6 {
        matches!(
            icmp_type,
            icmp6::DST_UNREACHABLE
                | icmp6::PACKET_TOO_BIG
                | icmp6::TIME_EXCEEDED
                | icmp6::PARAMETER_PROBLEM
        )
    } else {
        matches!(
            icmp_type,
            icmp4::DST_UNREACHABLE
                | icmp4::SOURCE_QUENCH
                | icmp4::REDIRECT
                | icmp4::TIME_EXCEEDED
                | icmp4::PARAMETER_PROBLEM
        )
    }
}

/// The echo type answering `t` (request <-> reply), if `t` is an echo type.
#[inline]
fn echo_counterpart(t: u8, ipv6: bool) -> Option<u8> {
    match (ipv6, t) {
        (false, icmp4::ECHO_REQUEST) => Some(icmp4::ECHO_REPLY),
        (false, icmp4::ECHO_REPLY) => Some(icmp4::ECHO_REQUEST),
        (true, icmp6::ECHO_REQUEST) => Some(icmp6::ECHO_REPLY),
        (true, icmp6::ECHO_REPLY) => Some(icmp6::ECHO_REQUEST),
        _ => None,
    }
}

impl Tuple {
    /// True for an ICMP/ICMPv6 echo tuple.
    #[inline]
    pub fn is_icmp(&self) -> bool {
        is_icmp(self.proto, self.ipv6)
    }

    /// True for protocols whose tuple carries L4 ports (TCP, UDP, SCTP).
    #[inline]
    pub fn has_ports(&self) -> bool {
        matches!(self.proto, ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP)
    }

    /// The ICMP type of an ICMP tuple.
    #[inline]
    pub fn icmp_type(&self) -> u8 {
        (self.dst_port >> 8) as u8
    }

    /// The tuple a packet going the other way carries.
    #[inline]
    pub fn reverse(&self) -> Tuple {
        if self.is_icmp() {
            let t = echo_counterpart(self.icmp_type(), self.ipv6).unwrap_or(self.icmp_type());
            Tuple {
                src: self.dst,
                dst: self.src,
                src_port: self.src_port,
                dst_port: (t as u16) << 8 | (self.dst_port & 0xff),
                proto: self.proto,
                ipv6: self.ipv6,
            }
        } else {
            Tuple {
                src: self.dst,
                dst: self.src,
                src_port: self.dst_port,
                dst_port: self.src_port,
                proto: self.proto,
                ipv6: self.ipv6,
            }
        }
    }

    /// The source endpoint: address and port (ICMP: echo identifier).
    #[inline]
    pub fn src_endpoint(&self) -> ([u8; 16], u16) {
        (self.src, self.src_port)
    }

    /// The destination endpoint: address and port (ICMP: the echo
    /// identifier, which both ends share).
    #[inline]
    pub fn dst_endpoint(&self) -> ([u8; 16], u16) {
        if self.is_icmp() {
            (self.dst, self.src_port)
        } else {
            (self.dst, self.dst_port)
        }
    }

    /// Source address as an [`IpAddr`].
    pub fn src_addr(&self) -> IpAddr {
        addr_from_bytes(&self.src, self.ipv6)
    }

    /// Destination address as an [`IpAddr`].
    pub fn dst_addr(&self) -> IpAddr {
        addr_from_bytes(&self.dst, self.ipv6)
    }

    /// A hash that is the same for a tuple and its [`Tuple::reverse`]: the
    /// endpoints are ordered before hashing and the ICMP type is left out.
    /// The zone is left out too: a connection's tuples in every zone it
    /// crosses (a load-balanced one is looked up and committed in the
    /// client's zone and again, translated, in the backend's) share an
    /// index group, which the first of them brings into the cache.
    #[inline]
    pub fn symmetric_hash(&self) -> u64 {
        let a = (u128::from_be_bytes(self.src), self.src_port);
        let b = (
            u128::from_be_bytes(self.dst),
            if self.is_icmp() {
                self.src_port
            } else {
                self.dst_port
            },
        );
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut h = mix(
            0x243f_6a88_85a3_08d3,
            (self.proto as u64) << 1 | self.ipv6 as u64,
        );
        h = mix(h, (lo.0 >> 64) as u64);
        h = mix(h, lo.0 as u64);
        h = mix(h, (hi.0 >> 64) as u64);
        h = mix(h, hi.0 as u64);
        h = mix(h, (lo.1 as u64) << 16 | hi.1 as u64);
        finalize(h)
    }
}

#[inline(always)]
fn mix(h: u64, v: u64) -> u64 {
    (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(31)
}

#[inline(always)]
fn finalize(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// 16 address bytes (v4-mapped for IPv4) as an [`IpAddr`].
pub fn addr_from_bytes(b: &[u8; 16], ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6((*b).into())
    } else {
        IpAddr::V4([b[12], b[13], b[14], b[15]].into())
    }
}

/// An [`IpAddr`] as 16 bytes (IPv4 v4-mapped) and its family (true = IPv6).
pub fn addr_to_bytes(a: IpAddr) -> ([u8; 16], bool) {
    match a {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), false),
        IpAddr::V6(v6) => (v6.octets(), true),
    }
}

/// What the tracker can do with a packet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PacketClass {
    /// A packet of a trackable connection (TCP, UDP, SCTP, ICMP echo, other IP).
    Trackable,
    /// An ICMP/ICMPv6 error quoting the packet whose tuple is `inner` (as it
    /// was sent, in the direction opposite to the error).
    IcmpError {
        /// The quoted packet's tuple.
        inner: Tuple,
    },
    /// Not trackable: not IP, a later fragment, an ICMP type that is neither
    /// echo nor error, or an error whose quoted packet does not parse. The
    /// tracker reports `trk|inv`.
    Untrackable,
}

/// The fields of a packet the tracker needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CtPacket {
    /// The packet's tuple (for an ICMP error: its own addresses, ports zero).
    pub tuple: Tuple,
    /// TCP flags (zero for other protocols).
    pub tcp_flags: u16,
    /// IP length in bytes (for the byte counters).
    pub len: u32,
    /// Classification.
    pub class: PacketClass,
}

impl CtPacket {
    /// A packet summary from its flow key alone. Exact for TCP, UDP, SCTP and
    /// other IP protocols; the key holds no ICMP echo identifier (it counts
    /// as 0) and no quoted header, so ICMP errors come out
    /// [`PacketClass::Untrackable`]: use [`CtPacket::from_frame`] for ICMP.
    pub fn from_key(key: &FlowKey) -> CtPacket {
        Self::build(key, None, 0)
    }

    /// A packet summary from its flow key and the frame it was extracted
    /// from (with the [`Layout`] that [`fastpath_packet::extract`] returned):
    /// reads the ICMP echo identifier and, for an ICMP error, the quoted
    /// packet's tuple. Never panics on a short or malformed frame.
    pub fn from_frame(key: &FlowKey, layout: &Layout, frame: &[u8]) -> CtPacket {
        let l4 = frame.get(layout.l4 as usize..(layout.end as usize).min(frame.len()));
        let len = layout.end.saturating_sub(layout.l3) as u32;
        Self::build(key, Some(l4.unwrap_or_default()), len)
    }

    fn build(key: &FlowKey, l4: Option<&[u8]>, len: u32) -> CtPacket {
        let ipv6 = key.is_ipv6();
        let mut tuple = Tuple {
            src: key.src(),
            dst: key.dst(),
            src_port: 0,
            dst_port: 0,
            proto: key.ip_proto(),
            ipv6,
        };
        let untrackable = CtPacket {
            tuple,
            tcp_flags: 0,
            len,
            class: PacketClass::Untrackable,
        };
        if !(key.is_ipv4() || ipv6) || key.frag() == FragState::Later {
            return untrackable;
        }
        let mut tcp_flags = 0;
        let mut class = PacketClass::Trackable;
        match tuple.proto {
            ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP => {
                if !key.has_l4() {
                    return untrackable;
                }
                tuple.src_port = key.tp_src();
                tuple.dst_port = key.tp_dst();
                if tuple.proto == ip_proto::TCP {
                    tcp_flags = key.tcp_flags();
                }
            }
            p if is_icmp(p, ipv6) => {
                if !key.has_l4() {
                    return untrackable;
                }
                let (t, code) = (key.icmp_type(), key.icmp_code());
                if echo_counterpart(t, ipv6).is_some() {
                    let id = l4
                        .and_then(|d| d.get(4..6))
                        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
                    tuple.src_port = id;
                    tuple.dst_port = (t as u16) << 8 | code as u16;
                } else if is_icmp_error(t, ipv6) {
                    match l4
                        .and_then(|d| d.get(8..))
                        .and_then(|d| parse_quoted(d, ipv6))
                    {
                        Some(inner) => class = PacketClass::IcmpError { inner },
                        None => return untrackable,
                    }
                } else {
                    return untrackable;
                }
            }
            _ => {}
        }
        CtPacket {
            tuple,
            tcp_flags,
            len,
            class,
        }
    }
}

/// Where the quoted header's parts are, as offsets into the quoted bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quoted {
    pub tuple: Tuple,
    /// Offset of the quoted L4 header.
    pub l4: usize,
}

/// Parses the packet quoted by an ICMP error (IP header, then at least the
/// first 8 bytes of the L4 header; IPv6 extension headers are not walked).
pub(crate) fn parse_quoted_at(d: &[u8], ipv6: bool) -> Option<Quoted> {
    let (src, dst, proto, l4) = if ipv6 {
        if d.len() < 40 || d[0] >> 4 != 6 {
            return None;
        }
        let mut s = [0u8; 16];
        let mut t = [0u8; 16];
        s.copy_from_slice(&d[8..24]);
        t.copy_from_slice(&d[24..40]);
        (s, t, d[6], 40)
    } else {
        if d.len() < 20 || d[0] >> 4 != 4 {
            return None;
        }
        let ihl = (d[0] & 0x0f) as usize * 4;
        let frag_off = u16::from_be_bytes([d[6], d[7]]) & 0x1fff;
        if ihl < 20 || frag_off != 0 {
            return None;
        }
        let mut s = [0u8; 16];
        let mut t = [0u8; 16];
        s[10] = 0xff;
        s[11] = 0xff;
        t[10] = 0xff;
        t[11] = 0xff;
        s[12..].copy_from_slice(&d[12..16]);
        t[12..].copy_from_slice(&d[16..20]);
        (s, t, d[9], ihl)
    };
    let l4b = d.get(l4..)?;
    let mut tuple = Tuple {
        src,
        dst,
        src_port: 0,
        dst_port: 0,
        proto,
        ipv6,
    };
    match proto {
        ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP => {
            let p = l4b.get(..4)?;
            tuple.src_port = u16::from_be_bytes([p[0], p[1]]);
            tuple.dst_port = u16::from_be_bytes([p[2], p[3]]);
        }
        p if is_icmp(p, ipv6) => {
            let h = l4b.get(..8)?;
            echo_counterpart(h[0], ipv6)?;
            tuple.src_port = u16::from_be_bytes([h[4], h[5]]);
            tuple.dst_port = (h[0] as u16) << 8 | h[1] as u16;
        }
        _ => {}
    }
    Some(Quoted { tuple, l4 })
}

fn parse_quoted(d: &[u8], ipv6: bool) -> Option<Tuple> {
    parse_quoted_at(d, ipv6).map(|q| q.tuple)
}
