//! Frames of the packets that OVN actions generate (what `ovn-controller`'s
//! pinctrl builds): an ARP request (`arp { }`), ICMPv4 and ICMPv6 replies
//! and errors (`icmp4 { }`, `icmp4_error { }`, `icmp6 { }`,
//! `icmp6_error { }`, with the MTU of `icmp4.frag_mtu`/`icmp6.frag_mtu`), an IPv6
//! neighbour solicitation (`nd_ns { }`) or advertisement (`nd_na { }`,
//! `nd_na_router { }`) and a TCP reset (`tcp_reset { }`).
//!
//! The headers come from the emission's final vector; the received frame
//! is only read for what the vector cannot say: the part an ICMP error
//! quotes (the received IP header(s) and the first 8 bytes after them),
//! the identifier, sequence number and data an echo reply (ICMPv4 type 0,
//! ICMPv6 type 129) returns, and the sequence and acknowledgement numbers
//! of a reset (RFC 9293 §3.10.7.1: a segment with ACK set is answered
//! from its acknowledgement number, any other one is acknowledged).
//! Every checksum is computed over the built frame.
//!
//! Owns frame building over plain byte buffers; it must not run the
//! pipeline or touch mbufs. Kinds not built yet are refused with
//! [`GenerateError::Unsupported`] and the packet is dropped under a named
//! reason.

use fastpath_packet::checksum::{checksum, finish, pseudo_header_v4, pseudo_header_v6, sum};
use fastpath_packet::flowkey::{field, flags};
use fastpath_packet::Layout;
use fastpath_tables::ovn::vector;

use super::interpreter::Generated;
use super::vector::FlowVector;

/// Why a packet could not be generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    /// The fastpath does not build this kind of packet yet.
    #[error("generating {0:?} packets is not supported")]
    Unsupported(Generated),
    /// The received frame is shorter than its layout says.
    #[error("received frame shorter than its headers")]
    Truncated,
    /// The received packet is not of the kind the action answers (an echo
    /// reply to a packet that is no echo request, a reset to no TCP
    /// segment).
    #[error("received packet cannot be answered by this kind of packet")]
    Unanswerable,
}

/// ICMPv4 echo reply type.
const ICMP4_ECHO_REPLY: u8 = 0;
/// ICMPv6 echo reply type.
const ICMP6_ECHO_REPLY: u8 = 129;
/// Bytes of the received upper-layer header an ICMPv4 error quotes.
const ERROR_QUOTE_L4: usize = 8;
/// Most bytes of the received packet an ICMPv6 error quotes: the minimum
/// IPv6 MTU less the error's IPv6 and ICMPv6 headers (1280 - 40 - 8).
const ICMP6_ERROR_QUOTE_MAX: usize = 1232;
/// TCP flag bits.
const TCP_FIN: u16 = 0x01;
const TCP_SYN: u16 = 0x02;
const TCP_ACK: u16 = 0x10;

fn eth(out: &mut Vec<u8>, v: &FlowVector, ethertype: u16) {
    out.extend_from_slice(v.field(field::ETH_DST));
    out.extend_from_slice(v.field(field::ETH_SRC));
    out.extend_from_slice(&ethertype.to_be_bytes());
}

fn addr16(v: &FlowVector, f: std::ops::Range<usize>) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(v.field(f));
    a
}

fn addr4(v: &FlowVector, f: std::ops::Range<usize>) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(&v.field(f)[12..]);
    a
}

/// Appends a 20-byte IPv4 header (don't fragment) for `payload_len`
/// bytes of protocol `proto`, addresses, TOS and TTL from the vector.
fn ipv4_header(out: &mut Vec<u8>, v: &FlowVector, proto: u8, payload_len: usize) {
    let b = v.bytes();
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[1] = b[field::TOS];
    ip[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = b[field::TTL];
    ip[9] = proto;
    ip[12..16].copy_from_slice(&addr4(v, field::SRC));
    ip[16..20].copy_from_slice(&addr4(v, field::DST));
    let cs = checksum(&ip);
    ip[10..12].copy_from_slice(&cs.to_be_bytes());
    out.extend_from_slice(&ip);
}

/// Appends a 40-byte IPv6 header; hop limit and addresses from the vector.
fn ipv6_header(out: &mut Vec<u8>, v: &FlowVector, next_header: u8, payload_len: usize) {
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(payload_len as u16).to_be_bytes());
    out.push(next_header);
    out.push(v.bytes()[field::TTL]);
    out.extend_from_slice(v.field(field::SRC));
    out.extend_from_slice(v.field(field::DST));
}

/// Fills the checksum at `at + offset` of the upper-layer message that
/// starts at `at` (IPv6 pseudo-header).
fn fill_l4_checksum_v6(out: &mut [u8], v: &FlowVector, next_header: u8, at: usize, offset: usize) {
    let len = (out.len() - at) as u32;
    let init = pseudo_header_v6(
        &addr16(v, field::SRC),
        &addr16(v, field::DST),
        next_header,
        len,
    );
    let cs = finish(sum(init, &out[at..]));
    out[at + offset..at + offset + 2].copy_from_slice(&cs.to_be_bytes());
}

/// The part of the received packet an ICMP error quotes. ICMPv4 (`max`
/// `None`): its IP header and the first [`ERROR_QUOTE_L4`] bytes after
/// it, as pinctrl quotes (RFC 1812 §4.3.2.3 asks for no more). ICMPv6: as
/// much of the packet as fits in `max` bytes (RFC 4443 §2.4 (c): the error
/// must not exceed the minimum IPv6 MTU). Fewer if the packet is shorter.
fn error_quote<'a>(
    frame: &'a [u8],
    layout: &Layout,
    max: Option<usize>,
) -> Result<&'a [u8], GenerateError> {
    let l3 = usize::from(layout.l3);
    let l4 = usize::from(layout.l4);
    let packet_end = usize::from(layout.end).max(l4);
    let end = match max {
        None => (l4 + ERROR_QUOTE_L4).min(packet_end),
        Some(max) => (l3 + max).min(packet_end),
    };
    frame.get(l3..end).ok_or(GenerateError::Truncated)
}

/// Appends an ICMP header without its checksum: type and code from the
/// vector, then for an error the 4 bytes before the quote, which carry
/// the vector's `icmp4.frag_mtu` (RFC 1191: the next-hop MTU in the low
/// 16 bits) or `icmp6.frag_mtu` (RFC 4443 §3.2: a 32-bit MTU), zero when
/// the action set none.
fn icmp_header(out: &mut Vec<u8>, v: &FlowVector, echo: bool) {
    let b = v.bytes();
    out.extend_from_slice(&[b[field::ICMP_TYPE], b[field::ICMP_CODE], 0, 0]);
    if !echo {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&b[vector::FRAG_MTU]);
    }
}

/// The identifier, sequence number and data of a received echo request
/// (everything after the 4-byte ICMP type/code/checksum).
fn echo_body<'a>(frame: &'a [u8], layout: &Layout) -> Result<&'a [u8], GenerateError> {
    let l4 = usize::from(layout.l4);
    let end = usize::from(layout.end);
    if end < l4 + 8 {
        return Err(GenerateError::Unanswerable);
    }
    frame.get(l4 + 4..end).ok_or(GenerateError::Truncated)
}

/// The protocol of the received packet's upper layer, if it is IPv4 or an
/// IPv6 packet without extension headers.
fn received_proto(frame: &[u8], layout: &Layout) -> Option<u8> {
    let l3 = usize::from(layout.l3);
    let ethertype = u16::from_be_bytes([
        *frame.get(l3.checked_sub(2)?)?,
        *frame.get(l3.checked_sub(1)?)?,
    ]);
    match ethertype {
        0x0800 => frame.get(l3 + 9).copied(),
        0x86dd if usize::from(layout.l4) == l3 + 40 => frame.get(l3 + 6).copied(),
        _ => None,
    }
}

/// Builds the frame of a generated packet into `out` (cleared first).
/// `frame`/`layout` are the received packet's.
pub fn build(
    kind: Generated,
    v: &FlowVector,
    frame: &[u8],
    layout: &Layout,
    out: &mut Vec<u8>,
) -> Result<(), GenerateError> {
    out.clear();
    let b = v.bytes();
    match kind {
        Generated::Arp => {
            eth(out, v, 0x0806);
            out.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
            out.extend_from_slice(v.field(field::ARP_OP));
            out.extend_from_slice(v.field(field::SHA));
            out.extend_from_slice(&v.field(field::SRC)[12..]);
            out.extend_from_slice(v.field(field::THA));
            out.extend_from_slice(&v.field(field::DST)[12..]);
        }
        Generated::Icmp4 | Generated::Icmp4Error => {
            let echo = b[field::ICMP_TYPE] == ICMP4_ECHO_REPLY;
            let body = if echo {
                if received_proto(frame, layout) != Some(1)
                    || frame.get(usize::from(layout.l4)) != Some(&8)
                {
                    return Err(GenerateError::Unanswerable);
                }
                echo_body(frame, layout)?
            } else {
                error_quote(frame, layout, None)?
            };
            eth(out, v, 0x0800);
            ipv4_header(out, v, 1, 4 + if echo { 0 } else { 4 } + body.len());
            let icmp_at = out.len();
            icmp_header(out, v, echo);
            out.extend_from_slice(body);
            let cs = checksum(&out[icmp_at..]);
            out[icmp_at + 2..icmp_at + 4].copy_from_slice(&cs.to_be_bytes());
        }
        Generated::Icmp6 | Generated::Icmp6Error => {
            let echo = b[field::ICMP_TYPE] == ICMP6_ECHO_REPLY;
            let body = if echo {
                if received_proto(frame, layout) != Some(58)
                    || frame.get(usize::from(layout.l4)) != Some(&128)
                {
                    return Err(GenerateError::Unanswerable);
                }
                echo_body(frame, layout)?
            } else {
                error_quote(frame, layout, Some(ICMP6_ERROR_QUOTE_MAX))?
            };
            eth(out, v, 0x86dd);
            ipv6_header(out, v, 58, 4 + if echo { 0 } else { 4 } + body.len());
            let icmp_at = out.len();
            icmp_header(out, v, echo);
            out.extend_from_slice(body);
            fill_l4_checksum_v6(out, v, 58, icmp_at, 2);
        }
        Generated::NdNs => {
            eth(out, v, 0x86dd);
            ipv6_header(out, v, 58, 32);
            let icmp_at = out.len();
            out.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(v.field(field::ND_TARGET));
            // Source link-layer address option.
            out.extend_from_slice(&[1, 1]);
            out.extend_from_slice(v.field(field::SHA));
            fill_l4_checksum_v6(out, v, 58, icmp_at, 2);
        }
        Generated::NdNa | Generated::NdNaRouter => {
            eth(out, v, 0x86dd);
            ipv6_header(out, v, 58, 32);
            let icmp_at = out.len();
            // Solicited and override, plus router for `nd_na_router`.
            let flags: u8 = if kind == Generated::NdNaRouter {
                0xe0
            } else {
                0x60
            };
            out.extend_from_slice(&[136, 0, 0, 0, flags, 0, 0, 0]);
            out.extend_from_slice(v.field(field::ND_TARGET));
            // Target link-layer address option.
            out.extend_from_slice(&[2, 1]);
            out.extend_from_slice(v.field(field::THA));
            fill_l4_checksum_v6(out, v, 58, icmp_at, 2);
        }
        Generated::TcpReset => {
            if received_proto(frame, layout) != Some(6) {
                return Err(GenerateError::Unanswerable);
            }
            let l4 = usize::from(layout.l4);
            let tcp = frame.get(l4..l4 + 20).ok_or(GenerateError::Truncated)?;
            let their_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            let their_ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
            let their_flags = u16::from_be_bytes([tcp[12], tcp[13]]) & 0x01ff;
            let seg_len = usize::from(layout.end).saturating_sub(usize::from(layout.payload))
                + usize::from(their_flags & TCP_SYN != 0)
                + usize::from(their_flags & TCP_FIN != 0);
            let our_flags =
                u16::from_be_bytes([b[field::TCP_FLAGS.start], b[field::TCP_FLAGS.start + 1]]);
            let (seq, ack) = if their_flags & TCP_ACK != 0 {
                (their_ack, 0)
            } else {
                (0, their_seq.wrapping_add(seg_len as u32))
            };
            let mut t = [0u8; 20];
            t[0..2].copy_from_slice(v.field(field::TP_SRC));
            t[2..4].copy_from_slice(v.field(field::TP_DST));
            t[4..8].copy_from_slice(&seq.to_be_bytes());
            let flags_out = if their_flags & TCP_ACK != 0 {
                our_flags & !TCP_ACK
            } else {
                our_flags | TCP_ACK
            };
            if flags_out & TCP_ACK != 0 {
                t[8..12].copy_from_slice(&ack.to_be_bytes());
            }
            t[12..14].copy_from_slice(&(0x5000 | (flags_out & 0x01ff)).to_be_bytes());
            if b[field::FLAGS] & flags::IPV6 != 0 {
                eth(out, v, 0x86dd);
                ipv6_header(out, v, 6, 20);
                let at = out.len();
                out.extend_from_slice(&t);
                fill_l4_checksum_v6(out, v, 6, at, 16);
            } else {
                eth(out, v, 0x0800);
                ipv4_header(out, v, 6, 20);
                let at = out.len();
                out.extend_from_slice(&t);
                let init = pseudo_header_v4(addr4(v, field::SRC), addr4(v, field::DST), 6, 20);
                let cs = finish(sum(init, &out[at..]));
                out[at + 16..at + 18].copy_from_slice(&cs.to_be_bytes());
            }
        }
    }
    if out.len() < 60 {
        out.resize(60, 0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastpath_packet::checksum::{fold, verify};
    use fastpath_packet::{extract, FlowKey};

    const ROUTER_MAC: [u8; 6] = [0, 0, 0, 0, 0xff, 1];
    const HOST_MAC: [u8; 6] = [0x50, 0x54, 0, 0, 0, 1];
    const HOST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
    const ROUTER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    fn ipv4_frame(ttl: u8, proto: u8, mut l4: Vec<u8>) -> Vec<u8> {
        let mut f = [ROUTER_MAC, HOST_MAC].concat();
        f.extend_from_slice(&[8, 0]);
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 1, 0, 0, ttl, proto, 0, 0, 10, 0, 0, 11, 10, 0, 1, 13,
        ];
        ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        let cs = checksum(&ip);
        ip[10..12].copy_from_slice(&cs.to_be_bytes());
        let (at, init) = match proto {
            1 => (2, 0),
            p => (
                if p == 17 { 6 } else { 16 },
                pseudo_header_v4([10, 0, 0, 11], [10, 0, 1, 13], p, l4.len() as u16),
            ),
        };
        let cs = finish(sum(init, &l4));
        l4[at..at + 2].copy_from_slice(&cs.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4);
        f
    }

    fn ping_frame(ttl: u8) -> Vec<u8> {
        ipv4_frame(ttl, 1, vec![8, 0, 0, 0, 0, 7, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8])
    }

    fn ipv6_frame(hlim: u8, nh: u8, mut l4: Vec<u8>) -> Vec<u8> {
        let dst: [u8; 16] = [0xfd, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x13];
        let mut f = [ROUTER_MAC, HOST_MAC].concat();
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        f.extend_from_slice(&[nh, hlim]);
        f.extend_from_slice(&HOST6);
        f.extend_from_slice(&dst);
        let at = match nh {
            6 => 16,
            17 => 6,
            _ => 2,
        };
        let init = pseudo_header_v6(&HOST6, &dst, nh, l4.len() as u32);
        let cs = finish(sum(init, &l4));
        l4[at..at + 2].copy_from_slice(&cs.to_be_bytes());
        f.extend_from_slice(&l4);
        f
    }

    fn tcp_segment(flags: u16, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12..14].copy_from_slice(&(0x5000 | flags).to_be_bytes());
        t.extend_from_slice(payload);
        t
    }

    /// A reply's vector as the pipeline leaves it: L2 and L3 addresses
    /// swapped, the given kind's fields set by the caller.
    fn reply_vector(key: &FlowKey) -> FlowVector {
        let mut v = FlowVector::from_key(key, 1, 1);
        let (src, dst) = (key.src(), key.dst());
        v.field_mut(field::SRC).copy_from_slice(&dst);
        v.field_mut(field::DST).copy_from_slice(&src);
        v.field_mut(field::ETH_SRC).copy_from_slice(&ROUTER_MAC);
        v.field_mut(field::ETH_DST).copy_from_slice(&HOST_MAC);
        v.bytes_mut()[field::TTL] = 255;
        v
    }

    /// Parses a built frame and checks, from scratch, the IPv4 header
    /// checksum and the upper-layer checksum (with its pseudo-header).
    fn parse_and_verify(out: &[u8]) -> (FlowKey, Layout) {
        let (k, l) = extract(out, 0).expect("generated frame parses");
        let (l3, l4, end) = (usize::from(l.l3), usize::from(l.l4), usize::from(l.end));
        assert!(end <= out.len() && out.len() >= 60);
        let upper = &out[l4..end];
        let init = if k.is_ipv4() {
            assert!(verify(&out[l3..l4]), "IPv4 header checksum");
            let s = [out[l3 + 12], out[l3 + 13], out[l3 + 14], out[l3 + 15]];
            let d = [out[l3 + 16], out[l3 + 17], out[l3 + 18], out[l3 + 19]];
            if k.ip_proto() == 1 {
                0
            } else {
                pseudo_header_v4(s, d, k.ip_proto(), upper.len() as u16)
            }
        } else {
            pseudo_header_v6(&k.src(), &k.dst(), k.ip_proto(), upper.len() as u32)
        };
        assert_eq!(fold(sum(init, upper)), 0xffff, "upper-layer checksum");
        (k, l)
    }

    /// The parsed frame carries the vector's value of each field.
    fn assert_fields(k: &FlowKey, v: &FlowVector, fields: &[std::ops::Range<usize>]) {
        let parsed = FlowVector::from_key(k, 0, 0);
        for f in fields {
            assert_eq!(parsed.field(f.clone()), v.field(f.clone()), "field {f:?}");
        }
    }

    const L2_L3: [std::ops::Range<usize>; 7] = [
        field::ETH_DST,
        field::ETH_SRC,
        field::ETH_TYPE,
        field::SRC,
        field::DST,
        field::IP_PROTO..field::IP_PROTO + 1,
        field::TTL..field::TTL + 1,
    ];

    #[test]
    fn icmp4_error_quotes_the_received_header() {
        let frame = ping_frame(1);
        let (key, layout) = extract(&frame, 0).unwrap();
        let mut v = reply_vector(&key);
        v.bytes_mut()[field::ICMP_TYPE] = 11;
        v.bytes_mut()[field::ICMP_CODE] = 0;
        let mut out = Vec::new();
        build(Generated::Icmp4Error, &v, &frame, &layout, &mut out).unwrap();
        let (k2, _) = parse_and_verify(&out);
        assert_eq!(k2.icmp_type(), 11);
        assert_eq!(k2.ttl(), 255);
        assert_eq!(&k2.src()[12..], &[10, 0, 1, 13]);
        assert_fields(&k2, &v, &L2_L3);
        // Quoted: the 20-byte IP header and 8 bytes of ICMP.
        assert_eq!(&out[42..70], &frame[14..42]);
    }

    #[test]
    fn icmp4_echo_reply_returns_identifier_sequence_and_data() {
        let frame = ping_frame(64);
        let (key, layout) = extract(&frame, 0).unwrap();
        let mut v = reply_vector(&key);
        v.bytes_mut()[field::ICMP_TYPE] = 0;
        let mut out = Vec::new();
        build(Generated::Icmp4, &v, &frame, &layout, &mut out).unwrap();
        let (k, l) = parse_and_verify(&out);
        assert_eq!((k.icmp_type(), k.icmp_code()), (0, 0));
        assert_fields(&k, &v, &L2_L3);
        assert_eq!(
            &out[usize::from(l.l4) + 4..usize::from(l.end)],
            &frame[38..]
        );
    }

    #[test]
    fn icmp6_echo_reply_and_error() {
        let frame = ipv6_frame(
            64,
            58,
            vec![128, 0, 0, 0, 0x12, 0x34, 0, 9, 0xaa, 0xbb, 0xcc],
        );
        let (key, layout) = extract(&frame, 0).unwrap();
        let mut v = reply_vector(&key);
        v.bytes_mut()[field::ICMP_TYPE] = 129;
        let mut out = Vec::new();
        build(Generated::Icmp6, &v, &frame, &layout, &mut out).unwrap();
        let (k, l) = parse_and_verify(&out);
        assert!(k.is_ipv6());
        assert_eq!((k.icmp_type(), k.icmp_code()), (129, 0));
        assert_fields(&k, &v, &L2_L3);
        assert_eq!(
            &out[usize::from(l.l4) + 4..usize::from(l.end)],
            &[0x12, 0x34, 0, 9, 0xaa, 0xbb, 0xcc]
        );

        // Hop limit exceeded for a UDP datagram: the whole packet is
        // quoted after 4 unused bytes.
        let udp = vec![0x03, 0xe8, 0x07, 0xd0, 0, 12, 0, 0, 1, 2, 3, 4];
        let frame = ipv6_frame(1, 17, udp);
        let (key, layout) = extract(&frame, 0).unwrap();
        let mut v = reply_vector(&key);
        v.bytes_mut()[field::IP_PROTO] = 58;
        v.bytes_mut()[field::ICMP_TYPE] = 3;
        v.bytes_mut()[field::ICMP_CODE] = 0;
        build(Generated::Icmp6, &v, &frame, &layout, &mut out).unwrap();
        let (k, l) = parse_and_verify(&out);
        assert_eq!((k.icmp_type(), k.icmp_code()), (3, 0));
        assert_fields(&k, &v, &L2_L3);
        let l4 = usize::from(l.l4);
        assert_eq!(&out[l4 + 4..l4 + 8], &[0; 4]);
        assert_eq!(&out[l4 + 8..usize::from(l.end)], &frame[14..]);
    }

    #[test]
    fn icmp4_fragmentation_needed_carries_the_frag_mtu() {
        let frame = ipv4_frame(64, 17, vec![0x03, 0xe8, 0x07, 0xd0, 0, 8, 0, 0]);
        let (key, layout) = extract(&frame, 0).unwrap();
        let mut v = reply_vector(&key);
        v.bytes_mut()[field::ICMP_TYPE] = 3;
        v.bytes_mut()[field::ICMP_CODE] = 4;
        v.bytes_mut()[vector::FRAG_MTU].copy_from_slice(&1400u16.to_be_bytes());
        let mut out = Vec::new();
        build(Generated::Icmp4Error, &v, &frame, &layout, &mut out).unwrap();
        let (k, l) = parse_and_verify(&out);
        assert_eq!((k.icmp_type(), k.icmp_code()), (3, 4));
        let l4 = usize::from(l.l4);
        // Unused, then the next-hop MTU (RFC 1191).
        assert_eq!(&out[l4 + 4..l4 + 8], &[0, 0, 0x05, 0x78]);
        assert_eq!(&out[l4 + 8..usize::from(l.end)], &frame[14..14 + 28]);
    }

    #[test]
    fn icmp6_packet_too_big_carries_the_mtu_and_fits_the_minimum_mtu() {
        // A 1 500-byte IPv6 packet: more than an error may quote.
        let mut udp = vec![0u8; 1460];
        udp[..6].copy_from_slice(&[0x03, 0xe8, 0x07, 0xd0, 0x05, 0xb4]);
        for (i, b) in udp.iter_mut().enumerate().skip(8) {
            *b = i as u8;
        }
        let frame = ipv6_frame(64, 17, udp);
        let (key, layout) = extract(&frame, 0).unwrap();
        let mut v = reply_vector(&key);
        v.bytes_mut()[field::IP_PROTO] = 58;
        v.bytes_mut()[field::ICMP_TYPE] = 2;
        v.bytes_mut()[field::ICMP_CODE] = 0;
        v.bytes_mut()[vector::FRAG_MTU].copy_from_slice(&1400u16.to_be_bytes());
        let mut out = Vec::new();
        build(Generated::Icmp6Error, &v, &frame, &layout, &mut out).unwrap();
        let (k, l) = parse_and_verify(&out);
        assert_eq!((k.icmp_type(), k.icmp_code()), (2, 0));
        assert_fields(&k, &v, &L2_L3);
        let (l3, l4) = (usize::from(l.l3), usize::from(l.l4));
        assert_eq!(&out[l4 + 4..l4 + 8], &[0, 0, 0x05, 0x78]);
        // The error is exactly the minimum IPv6 MTU: the received packet
        // is quoted up to that.
        assert_eq!(usize::from(l.end) - l3, 1280);
        assert_eq!(&out[l4 + 8..usize::from(l.end)], &frame[14..14 + 1232]);
    }

    #[test]
    fn nd_ns_goes_to_the_solicited_node_address() {
        let frame = ipv6_frame(64, 17, vec![0x03, 0xe8, 0x07, 0xd0, 0, 8, 0, 0]);
        let (key, layout) = extract(&frame, 0).unwrap();
        let target: [u8; 16] = [0xfd, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56];
        let sol: [u8; 16] = [
            0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0x12, 0x34, 0x56,
        ];
        let mut v = FlowVector::from_key(&key, 1, 1);
        v.field_mut(field::ETH_DST)
            .copy_from_slice(&[0x33, 0x33, 0xff, 0x12, 0x34, 0x56]);
        v.field_mut(field::ETH_SRC).copy_from_slice(&ROUTER_MAC);
        v.field_mut(field::SRC).copy_from_slice(&ROUTER6);
        v.field_mut(field::DST).copy_from_slice(&sol);
        v.field_mut(field::ND_TARGET).copy_from_slice(&target);
        v.field_mut(field::SHA).copy_from_slice(&ROUTER_MAC);
        v.field_mut(field::THA).fill(0);
        let b = v.bytes_mut();
        b[field::IP_PROTO] = 58;
        b[field::TTL] = 255;
        b[field::ICMP_TYPE] = 135;
        b[field::TP_SRC.start..field::TP_DST.end].fill(0);
        let mut out = Vec::new();
        build(Generated::NdNs, &v, &frame, &layout, &mut out).unwrap();
        let (k, _) = parse_and_verify(&out);
        assert_eq!(k.icmp_type(), 135);
        assert_eq!(k.nd_target_octets(), target);
        assert_eq!(k.sha(), ROUTER_MAC);
        assert_eq!(k.dst(), sol);
        assert_fields(
            &k,
            &v,
            &[&L2_L3[..], &[field::ND_TARGET, field::SHA, field::THA]].concat(),
        );
    }

    #[test]
    fn nd_na_router_sets_the_router_flag() {
        let frame = ipv6_frame(255, 17, vec![0x03, 0xe8, 0x07, 0xd0, 0, 8, 0, 0]);
        let (key, layout) = extract(&frame, 0).unwrap();
        let mut v = reply_vector(&key);
        v.field_mut(field::SRC).copy_from_slice(&ROUTER6);
        v.field_mut(field::ND_TARGET).copy_from_slice(&ROUTER6);
        v.field_mut(field::THA).copy_from_slice(&ROUTER_MAC);
        v.field_mut(field::SHA).fill(0);
        v.bytes_mut()[field::IP_PROTO] = 58;
        v.bytes_mut()[field::ICMP_TYPE] = 136;
        let mut out = Vec::new();
        for (kind, flags) in [(Generated::NdNaRouter, 0xe0), (Generated::NdNa, 0x60)] {
            build(kind, &v, &frame, &layout, &mut out).unwrap();
            let (k, l) = parse_and_verify(&out);
            assert_eq!(out[usize::from(l.l4) + 4], flags);
            assert_eq!(k.tha(), ROUTER_MAC);
            assert_fields(
                &k,
                &v,
                &[&L2_L3[..], &[field::ND_TARGET, field::SHA, field::THA]].concat(),
            );
        }
    }

    fn reset_vector(key: &FlowKey) -> FlowVector {
        let mut v = reply_vector(key);
        let b = v.bytes_mut();
        b[field::TCP_FLAGS].copy_from_slice(&0x0014u16.to_be_bytes());
        b[field::TP_SRC].copy_from_slice(&80u16.to_be_bytes());
        b[field::TP_DST].copy_from_slice(&40000u16.to_be_bytes());
        v
    }

    #[test]
    fn tcp_reset_acknowledges_a_syn() {
        let frame = ipv4_frame(64, 6, tcp_segment(0x002, 1000, 0, &[]));
        let (key, layout) = extract(&frame, 0).unwrap();
        let v = reset_vector(&key);
        let mut out = Vec::new();
        build(Generated::TcpReset, &v, &frame, &layout, &mut out).unwrap();
        let (k, l) = parse_and_verify(&out);
        let t = &out[usize::from(l.l4)..];
        assert_eq!(k.tcp_flags(), 0x014);
        assert_eq!(u32::from_be_bytes([t[4], t[5], t[6], t[7]]), 0);
        assert_eq!(u32::from_be_bytes([t[8], t[9], t[10], t[11]]), 1001);
        assert_fields(
            &k,
            &v,
            &[
                &L2_L3[..],
                &[field::TP_SRC, field::TP_DST, field::TCP_FLAGS],
            ]
            .concat(),
        );
    }

    #[test]
    fn tcp_reset_answers_an_ack_from_its_acknowledgement_v6() {
        let frame = ipv6_frame(64, 6, tcp_segment(0x018, 5000, 777, b"hello"));
        let (key, layout) = extract(&frame, 0).unwrap();
        let v = reset_vector(&key);
        let mut out = Vec::new();
        build(Generated::TcpReset, &v, &frame, &layout, &mut out).unwrap();
        let (k, l) = parse_and_verify(&out);
        let t = &out[usize::from(l.l4)..];
        assert!(k.is_ipv6());
        assert_eq!(k.tcp_flags(), 0x004, "RST alone");
        assert_eq!(u32::from_be_bytes([t[4], t[5], t[6], t[7]]), 777);
        assert_eq!((k.tp_src(), k.tp_dst()), (80, 40000));
    }

    #[test]
    fn arp_request_and_unanswerable_packets() {
        let frame = ping_frame(64);
        let (key, layout) = extract(&frame, 0).unwrap();
        let mut v = FlowVector::from_key(&key, 1, 1);
        v.field_mut(field::ETH_DST).copy_from_slice(&[0xff; 6]);
        v.field_mut(field::ARP_OP).copy_from_slice(&[0, 1]);
        v.field_mut(field::SHA)
            .copy_from_slice(&[0, 0, 0, 0, 0xff, 2]);
        let mut out = Vec::new();
        build(Generated::Arp, &v, &frame, &layout, &mut out).unwrap();
        let (k, _) = extract(&out, 0).unwrap();
        assert!(k.is_arp());
        assert_eq!(k.arp_op(), 1);
        assert_eq!(k.sha(), [0, 0, 0, 0, 0xff, 2]);
        assert_eq!(&k.dst()[12..], &[10, 0, 1, 13]);
        assert_eq!(out.len(), 60);
        // A reset answers TCP only; an echo reply answers an echo request.
        assert_eq!(
            build(Generated::TcpReset, &v, &frame, &layout, &mut out),
            Err(GenerateError::Unanswerable)
        );
        let udp = ipv4_frame(64, 17, vec![0x03, 0xe8, 0x07, 0xd0, 0, 8, 0, 0]);
        let (key, layout) = extract(&udp, 0).unwrap();
        let v = reply_vector(&key);
        assert_eq!(
            build(Generated::Icmp4, &v, &udp, &layout, &mut out),
            Err(GenerateError::Unanswerable)
        );
    }

    #[test]
    fn a_truncated_received_frame_is_an_error_not_a_panic() {
        let frame = ipv4_frame(64, 6, tcp_segment(0x002, 1, 0, &[]));
        let (key, layout) = extract(&frame, 0).unwrap();
        let v = reset_vector(&key);
        let mut out = Vec::new();
        for cut in [0, 14, 20, 34, 40] {
            let r = build(Generated::TcpReset, &v, &frame[..cut], &layout, &mut out);
            assert!(r.is_err(), "cut at {cut}");
        }
        // A layout that does not describe the frame.
        let bogus = Layout::default();
        for (kind, icmp_type) in [
            (Generated::TcpReset, 0),
            (Generated::Icmp4, 0),
            (Generated::Icmp6, 129),
        ] {
            let mut v = v;
            v.bytes_mut()[field::ICMP_TYPE] = icmp_type;
            assert!(
                build(kind, &v, &frame, &bogus, &mut out).is_err(),
                "{kind:?}"
            );
        }
        let ping = ping_frame(1);
        let (key, layout) = extract(&ping, 0).unwrap();
        let v = reply_vector(&key);
        assert_eq!(
            build(Generated::Icmp4Error, &v, &ping[..30], &layout, &mut out),
            Err(GenerateError::Truncated)
        );
    }
}
