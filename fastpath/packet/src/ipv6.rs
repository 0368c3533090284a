//! IPv6 fixed-header view and the extension-header walk (hop-by-hop, routing,
//! fragment, destination options, AH) that finds the upper-layer protocol, its
//! offset and the fragment state.
//!
//! [`Packet::check_len`] validates the version and that the payload length fits
//! the buffer; after it no accessor can panic. [`Packet::upper_layer`] checks
//! every extension header against the payload length and returns a named
//! error for each way the chain can be malformed. ESP and "no next header" end
//! the walk and are reported as the upper-layer protocol. Bytes past the
//! payload length (Ethernet padding) are ignored. This module owns the IPv6
//! header chain only.

use crate::{
    ip_proto, read_array, read_u16, read_u32, write_u16, write_u32, Field, FragState, ParseError,
};
use std::net::Ipv6Addr;

/// Field offsets.
pub mod field {
    use super::Field;
    /// Version (4), traffic class (8), flow label (20).
    pub const VER_TC_FLOW: Field = 0..4;
    /// Payload length.
    pub const PAYLOAD_LEN: Field = 4..6;
    /// Next header.
    pub const NEXT_HEADER: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address.
    pub const SRC_ADDR: Field = 8..24;
    /// Destination address.
    pub const DST_ADDR: Field = 24..40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;
/// Length of the fragment extension header.
pub const FRAGMENT_HEADER_LEN: usize = 8;
/// The walk refuses chains longer than this (bounds per-packet work).
pub const MAX_EXT_HEADERS: usize = 8;

/// The fragment extension header, as found by [`Packet::upper_layer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentHeader {
    /// Offset of the fragment header from the start of the IPv6 header.
    pub header_offset: usize,
    /// Fragment offset in 8-octet units.
    pub offset: u16,
    /// More-fragments flag.
    pub more_frags: bool,
    /// Identification.
    pub ident: u32,
}

/// Where the extension-header chain ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpperLayer {
    /// Upper-layer protocol (for a later fragment: the fragment's next header).
    pub protocol: u8,
    /// Offset of the upper-layer header from the start of the IPv6 header.
    pub offset: usize,
    /// Fragmentation state, OVN style.
    pub frag: FragState,
    /// The fragment header, if any.
    pub fragment: Option<FragmentHeader>,
}

/// A view over an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after [`Packet::check_len`].
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>, ParseError> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validates the version and the payload length; afterwards no accessor panics.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        let d = self.buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(ParseError::TruncatedIpv6);
        }
        if d[0] >> 4 != 6 {
            return Err(ParseError::BadIpv6Version);
        }
        if d.len() < HEADER_LEN + read_u16(d, field::PAYLOAD_LEN.start) as usize {
            return Err(ParseError::TruncatedIpv6Payload);
        }
        Ok(())
    }

    /// The underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version (6 once checked).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }
    /// Traffic class (DSCP << 2 | ECN).
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (read_u32(self.buffer.as_ref(), 0) >> 20) as u8
    }
    /// Flow label (20 bits).
    #[inline]
    pub fn flow_label(&self) -> u32 {
        read_u32(self.buffer.as_ref(), 0) & 0x000f_ffff
    }
    /// Payload length.
    #[inline]
    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PAYLOAD_LEN.start)
    }
    /// Next header of the fixed header.
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }
    /// Hop limit.
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }
    /// Source address bytes.
    #[inline]
    pub fn src_octets(&self) -> [u8; 16] {
        read_array(self.buffer.as_ref(), field::SRC_ADDR.start)
    }
    /// Destination address bytes.
    #[inline]
    pub fn dst_octets(&self) -> [u8; 16] {
        read_array(self.buffer.as_ref(), field::DST_ADDR.start)
    }
    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.src_octets())
    }
    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.dst_octets())
    }
    /// The payload (extension headers included), padding excluded.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.payload_len() as usize]
    }

    /// Walks the extension headers to the upper layer.
    ///
    /// Stops at the first header that is not hop-by-hop, routing, fragment,
    /// destination options or AH, and after a fragment header with a non-zero
    /// offset (a later fragment carries no upper-layer header).
    #[inline]
    pub fn upper_layer(&self) -> Result<UpperLayer, ParseError> {
        let d = self.buffer.as_ref();
        let end = HEADER_LEN + self.payload_len() as usize;
        let mut next = self.next_header();
        let mut off = HEADER_LEN;
        let mut count = 0;
        let mut fragment = None;
        loop {
            let len = match next {
                ip_proto::HOP_BY_HOP
                | ip_proto::IPV6_ROUTING
                | ip_proto::IPV6_DEST_OPTS
                | ip_proto::IPV6_FRAGMENT
                | ip_proto::AH => {
                    if next == ip_proto::HOP_BY_HOP && off != HEADER_LEN {
                        return Err(ParseError::BadIpv6HopByHopPosition);
                    }
                    count += 1;
                    if count > MAX_EXT_HEADERS {
                        return Err(ParseError::TooManyIpv6ExtHeaders);
                    }
                    // Every extension header is at least 8 bytes long.
                    if off + 8 > end {
                        return Err(ParseError::TruncatedIpv6ExtHeader);
                    }
                    match next {
                        ip_proto::IPV6_FRAGMENT => FRAGMENT_HEADER_LEN,
                        ip_proto::AH => (d[off + 1] as usize + 2) * 4,
                        _ => (d[off + 1] as usize + 1) * 8,
                    }
                }
                _ => {
                    let frag = match fragment {
                        Some(FragmentHeader {
                            more_frags: true, ..
                        }) => FragState::First,
                        _ => FragState::NotFragment,
                    };
                    return Ok(UpperLayer {
                        protocol: next,
                        offset: off,
                        frag,
                        fragment,
                    });
                }
            };
            if off + len > end {
                return Err(ParseError::TruncatedIpv6ExtHeader);
            }
            if next == ip_proto::IPV6_FRAGMENT {
                let w = read_u16(d, off + 2);
                let f = FragmentHeader {
                    header_offset: off,
                    offset: w >> 3,
                    more_frags: w & 1 != 0,
                    ident: read_u32(d, off + 4),
                };
                fragment = Some(f);
                if f.offset != 0 {
                    return Ok(UpperLayer {
                        protocol: d[off],
                        offset: off + len,
                        frag: FragState::Later,
                        fragment,
                    });
                }
            }
            next = d[off];
            off += len;
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 6, traffic class and flow label at once.
    #[inline]
    pub fn set_version_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let w = (6u32 << 28) | ((traffic_class as u32) << 20) | (flow_label & 0x000f_ffff);
        write_u32(self.buffer.as_mut(), 0, w);
    }
    /// Sets the traffic class, keeping version and flow label.
    #[inline]
    pub fn set_traffic_class(&mut self, tc: u8) {
        let fl = self.flow_label();
        self.set_version_tc_flow(tc, fl);
    }
    /// Sets the flow label, keeping version and traffic class.
    #[inline]
    pub fn set_flow_label(&mut self, fl: u32) {
        let tc = self.traffic_class();
        self.set_version_tc_flow(tc, fl);
    }
    /// Sets the payload length.
    #[inline]
    pub fn set_payload_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::PAYLOAD_LEN.start, len);
    }
    /// Sets the next header.
    #[inline]
    pub fn set_next_header(&mut self, nh: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = nh;
    }
    /// Sets the hop limit.
    #[inline]
    pub fn set_hop_limit(&mut self, hl: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hl;
    }
    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }
    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    /// IPv6 header (tc 0xb8, flow 0x12345, hop limit 64, next header 0 = HBH)
    /// + hop-by-hop (8 bytes, PadN) + routing type 4 (16 bytes)
    /// + destination options (8) + AH (12 bytes, payload len 1)
    /// + fragment (offset 0, M=1, id 0xdeadbeef) + 4 bytes of UDP header start.
    fn chain() -> Vec<u8> {
        let mut v = vec![0x6b, 0x81, 0x23, 0x45, 0, 0, 0, 64];
        v.extend_from_slice(&SRC);
        v.extend_from_slice(&DST);
        v.extend_from_slice(&[43, 0, 1, 4, 0, 0, 0, 0]); // HBH -> routing
        v.extend_from_slice(&[60, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // routing -> dstopts
        v.extend_from_slice(&[51, 0, 1, 4, 0, 0, 0, 0]); // dstopts -> AH
        v.extend_from_slice(&[44, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]); // AH -> fragment
        v.extend_from_slice(&[17, 0, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef]); // frag -> UDP
        v.extend_from_slice(&[0x30, 0x39, 0x00, 0x35]);
        let plen = (v.len() - HEADER_LEN) as u16;
        v[4..6].copy_from_slice(&plen.to_be_bytes());
        v
    }

    #[test]
    fn parse_fixed_header() {
        let v = chain();
        let p = Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len() as usize, v.len() - 40);
        assert_eq!(p.next_header(), 0);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_octets(), SRC);
        assert_eq!(p.dst_addr(), Ipv6Addr::from(DST));
    }

    #[test]
    fn walks_every_extension_header() {
        let v = chain();
        let u = Packet::new_checked(&v[..]).unwrap().upper_layer().unwrap();
        assert_eq!(u.protocol, ip_proto::UDP);
        assert_eq!(u.offset, 40 + 8 + 16 + 8 + 12 + 8);
        assert_eq!(u.frag, FragState::First);
        assert_eq!(
            u.fragment,
            Some(FragmentHeader {
                header_offset: 84,
                offset: 0,
                more_frags: true,
                ident: 0xdeadbeef
            })
        );
    }

    #[test]
    fn later_fragment_stops_the_walk() {
        let mut v = chain();
        v[86..88].copy_from_slice(&((100u16 << 3) | 1).to_be_bytes());
        let u = Packet::new_checked(&v[..]).unwrap().upper_layer().unwrap();
        assert_eq!(
            (u.protocol, u.offset, u.frag),
            (ip_proto::UDP, 92, FragState::Later)
        );
        // Offset 0 with M clear is an atomic fragment: not a fragment.
        v[86..88].copy_from_slice(&0u16.to_be_bytes());
        let u = Packet::new_checked(&v[..]).unwrap().upper_layer().unwrap();
        assert_eq!(u.frag, FragState::NotFragment);
        assert!(u.fragment.is_some());
    }

    #[test]
    fn no_extension_headers() {
        let mut v = chain();
        v.truncate(40);
        v[4..6].copy_from_slice(&0u16.to_be_bytes());
        v[6] = ip_proto::TCP;
        let u = Packet::new_checked(&v[..]).unwrap().upper_layer().unwrap();
        assert_eq!(
            (u.protocol, u.offset, u.frag, u.fragment),
            (6, 40, FragState::NotFragment, None)
        );
        v[6] = ip_proto::IPV6_NO_NEXT;
        let u = Packet::new_checked(&v[..]).unwrap().upper_layer().unwrap();
        assert_eq!(u.protocol, ip_proto::IPV6_NO_NEXT);
    }

    #[test]
    fn setters_round_trip() {
        let v = chain();
        let mut buf = v.clone();
        buf[..40].fill(0);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version_tc_flow(0, 0);
        p.set_traffic_class(0xb8);
        p.set_flow_label(0x12345);
        p.set_payload_len((v.len() - 40) as u16);
        p.set_next_header(0);
        p.set_hop_limit(64);
        p.set_src_addr(Ipv6Addr::from(SRC));
        p.set_dst_addr(Ipv6Addr::from(DST));
        assert_eq!(buf, v);
    }

    #[test]
    fn truncated_and_malformed() {
        let v = chain();
        for n in 0..v.len() {
            let e = Packet::new_checked(&v[..n]).unwrap_err();
            let want = if n < 40 {
                ParseError::TruncatedIpv6
            } else {
                ParseError::TruncatedIpv6Payload
            };
            assert_eq!(e, want, "len {n}");
        }
        // Shrinking the payload length cuts the chain: every cut inside an
        // extension header is a truncated extension header.
        for plen in 0..(v.len() - 40 - 4) {
            let mut w = v.clone();
            w[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
            let e = Packet::new_checked(&w[..])
                .unwrap()
                .upper_layer()
                .unwrap_err();
            assert_eq!(e, ParseError::TruncatedIpv6ExtHeader, "payload len {plen}");
        }
        let mut w = v.clone();
        w[0] = 0x4b;
        assert_eq!(
            Packet::new_checked(&w[..]).unwrap_err(),
            ParseError::BadIpv6Version
        );
        let mut w = v.clone();
        w[64] = 0; // destination options -> hop-by-hop in the wrong place
        let e = Packet::new_checked(&w[..])
            .unwrap()
            .upper_layer()
            .unwrap_err();
        assert_eq!(e, ParseError::BadIpv6HopByHopPosition);
    }

    #[test]
    fn too_many_extension_headers() {
        let mut v = vec![0x60, 0, 0, 0, 0, 0, 60, 64];
        v.extend_from_slice(&SRC);
        v.extend_from_slice(&DST);
        for _ in 0..MAX_EXT_HEADERS + 1 {
            v.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
        }
        let plen = (v.len() - 40) as u16;
        v[4..6].copy_from_slice(&plen.to_be_bytes());
        let e = Packet::new_checked(&v[..])
            .unwrap()
            .upper_layer()
            .unwrap_err();
        assert_eq!(e, ParseError::TooManyIpv6ExtHeaders);
    }

    #[test]
    fn agrees_with_smoltcp() {
        use smoltcp::wire::{Ipv6FragmentHeader, Ipv6Packet};
        let v = chain();
        let p = Ipv6Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.traffic_class(), 0xb8);
        let f = Ipv6FragmentHeader::new_checked(&v[86..92]).unwrap();
        assert_eq!(f.frag_offset(), 0);
        assert!(f.more_frags());
        assert_eq!(f.ident(), 0xdeadbeef);
    }
}
