//! IPv4 header view: IHL and options, total length, fragment bits, header
//! checksum helpers.
//!
//! [`Packet::check_len`] validates version, IHL (at least 5, options within the
//! buffer) and total length (at least the header, at most the buffer); after it
//! no accessor can panic. Bytes past the total length (Ethernet padding) are
//! ignored by [`Packet::payload`]. This module owns the IPv4 header only; the
//! upper-layer checksums are computed by their own modules.

use crate::{checksum, read_array, read_u16, write_u16, Field, FragState, ParseError};
use std::net::Ipv4Addr;

/// Field offsets.
pub mod field {
    use super::Field;
    /// Version (4 bits) and IHL (4 bits).
    pub const VER_IHL: usize = 0;
    /// DSCP (6 bits) and ECN (2 bits).
    pub const DSCP_ECN: usize = 1;
    /// Total length.
    pub const TOTAL_LEN: Field = 2..4;
    /// Identification.
    pub const IDENT: Field = 4..6;
    /// Flags (3 bits) and fragment offset (13 bits).
    pub const FLG_OFF: Field = 6..8;
    /// Time to live.
    pub const TTL: usize = 8;
    /// Protocol.
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECKSUM: Field = 10..12;
    /// Source address.
    pub const SRC_ADDR: Field = 12..16;
    /// Destination address.
    pub const DST_ADDR: Field = 16..20;
}

/// Length of the header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;
/// Don't-fragment flag in the flags/offset word.
pub const FLAG_DF: u16 = 0x4000;
/// More-fragments flag in the flags/offset word.
pub const FLAG_MF: u16 = 0x2000;
/// Fragment offset mask (in 8-octet units) in the flags/offset word.
pub const FRAG_OFFSET_MASK: u16 = 0x1fff;

/// A view over an IPv4 packet.
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

    /// Validates version, IHL and total length against the buffer; afterwards
    /// no accessor panics.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        let d = self.buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(ParseError::TruncatedIpv4);
        }
        if d[field::VER_IHL] >> 4 != 4 {
            return Err(ParseError::BadIpv4Version);
        }
        let hlen = ((d[field::VER_IHL] & 0x0f) as usize) * 4;
        if hlen < HEADER_LEN {
            return Err(ParseError::BadIpv4Ihl);
        }
        if d.len() < hlen {
            return Err(ParseError::TruncatedIpv4Options);
        }
        let total = read_u16(d, field::TOTAL_LEN.start) as usize;
        if total < hlen {
            return Err(ParseError::BadIpv4TotalLength);
        }
        if d.len() < total {
            return Err(ParseError::TruncatedIpv4Payload);
        }
        Ok(())
    }

    /// The underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version (4 once checked).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }
    /// Header length in bytes (IHL * 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        ((self.buffer.as_ref()[field::VER_IHL] & 0x0f) as usize) * 4
    }
    /// The whole DSCP/ECN byte (the old TOS).
    #[inline]
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }
    /// DSCP (6 bits).
    #[inline]
    pub fn dscp(&self) -> u8 {
        self.tos() >> 2
    }
    /// ECN (2 bits).
    #[inline]
    pub fn ecn(&self) -> u8 {
        self.tos() & 3
    }
    /// Total length.
    #[inline]
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TOTAL_LEN.start)
    }
    /// Identification.
    #[inline]
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT.start)
    }
    /// Don't-fragment flag.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF.start) & FLAG_DF != 0
    }
    /// More-fragments flag.
    #[inline]
    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF.start) & FLAG_MF != 0
    }
    /// Fragment offset in 8-octet units.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FLG_OFF.start) & FRAG_OFFSET_MASK
    }
    /// Fragmentation state, OVN style.
    #[inline]
    pub fn frag_state(&self) -> FragState {
        let w = read_u16(self.buffer.as_ref(), field::FLG_OFF.start);
        FragState::from_offset_and_more(w & FRAG_OFFSET_MASK, w & FLAG_MF != 0)
    }
    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }
    /// Protocol of the payload.
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }
    /// Header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }
    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.src_octets())
    }
    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst_octets())
    }
    /// Source address bytes.
    #[inline]
    pub fn src_octets(&self) -> [u8; 4] {
        read_array(self.buffer.as_ref(), field::SRC_ADDR.start)
    }
    /// Destination address bytes.
    #[inline]
    pub fn dst_octets(&self) -> [u8; 4] {
        read_array(self.buffer.as_ref(), field::DST_ADDR.start)
    }
    /// Options bytes (between the fixed header and IHL * 4).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
    /// The payload: from IHL * 4 to the total length (padding excluded).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len() as usize]
    }
    /// The checksum the header should carry (computed with the field as zero).
    #[inline]
    pub fn compute_checksum(&self) -> u16 {
        let h = &self.buffer.as_ref()[..self.header_len()];
        let s = checksum::sum(0, &h[..field::CHECKSUM.start]);
        checksum::finish(checksum::sum(s, &h[field::CHECKSUM.end..]))
    }
    /// True if the header checksum verifies.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(&self.buffer.as_ref()[..self.header_len()])
    }
    /// [`Packet::verify_checksum`] as a drop reason.
    #[inline]
    pub fn check_checksum(&self) -> Result<(), ParseError> {
        if self.verify_checksum() {
            Ok(())
        } else {
            Err(ParseError::BadIpv4Checksum)
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 4 and the header length (a multiple of 4, 20..=60).
    #[inline]
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }
    /// Sets the DSCP/ECN byte.
    #[inline]
    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = tos;
    }
    /// Sets DSCP, keeping ECN.
    #[inline]
    pub fn set_dscp(&mut self, dscp: u8) {
        let ecn = self.ecn();
        self.set_tos((dscp << 2) | ecn);
    }
    /// Sets ECN, keeping DSCP.
    #[inline]
    pub fn set_ecn(&mut self, ecn: u8) {
        let tos = (self.tos() & !3) | (ecn & 3);
        self.set_tos(tos);
    }
    /// Sets the total length.
    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::TOTAL_LEN.start, len);
    }
    /// Sets the identification.
    #[inline]
    pub fn set_ident(&mut self, ident: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT.start, ident);
    }
    /// Sets DF, MF and the fragment offset (8-octet units) at once.
    #[inline]
    pub fn set_frag(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut w = offset & FRAG_OFFSET_MASK;
        if dont_frag {
            w |= FLAG_DF;
        }
        if more_frags {
            w |= FLAG_MF;
        }
        write_u16(self.buffer.as_mut(), field::FLG_OFF.start, w);
    }
    /// Sets the TTL.
    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }
    /// Sets the TTL and updates the header checksum incrementally (RFC 1624).
    #[inline]
    pub fn set_ttl_update_checksum(&mut self, ttl: u8) {
        let old = read_u16(self.buffer.as_ref(), field::TTL);
        let new = ((ttl as u16) << 8) | (old & 0xff);
        let c = checksum::update_u16(self.checksum(), old, new);
        self.set_ttl(ttl);
        self.set_checksum(c);
    }
    /// Sets the protocol.
    #[inline]
    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol;
    }
    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, c);
    }
    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }
    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }
    /// Recomputes and stores the header checksum.
    #[inline]
    pub fn fill_checksum(&mut self) {
        let c = self.compute_checksum();
        self.set_checksum(c);
    }
    /// The payload, mutable (padding excluded).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len(), self.total_len() as usize);
        &mut self.buffer.as_mut()[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 10.0.0.1 -> 10.0.0.2, TCP, ident 0x1234, DF, TTL 64, DSCP 46 ECN 1,
    // 4 bytes of payload, 2 bytes of trailing padding.
    static PACKET: [u8; 26] = [
        0x45, 0xb9, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x13, 0xf1, 10, 0, 0, 1, 10, 0,
        0, 2, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x00,
    ];

    #[test]
    fn parse_fields() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.dscp(), 46);
        assert_eq!(p.ecn(), 1);
        assert_eq!(p.total_len(), 24);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.frag_state(), FragState::NotFragment);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 6);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 0, 0, 2));
        assert!(p.options().is_empty());
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert!(p.verify_checksum());
        assert_eq!(p.compute_checksum(), p.checksum());
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0u8; 26];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version_and_header_len(20);
        p.set_dscp(46);
        p.set_ecn(1);
        p.set_total_len(24);
        p.set_ident(0x1234);
        p.set_frag(true, false, 0);
        p.set_ttl(64);
        p.set_protocol(6);
        p.set_src_addr(Ipv4Addr::new(10, 0, 0, 1));
        p.set_dst_addr(Ipv4Addr::new(10, 0, 0, 2));
        p.payload_mut().copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        p.fill_checksum();
        assert_eq!(buf, PACKET);
    }

    #[test]
    fn fragment_bits() {
        let mut buf = PACKET;
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_frag(false, true, 0);
        assert_eq!(p.frag_state(), FragState::First);
        p.set_frag(false, true, 185);
        assert_eq!(
            (p.frag_offset(), p.more_frags(), p.dont_frag()),
            (185, true, false)
        );
        assert_eq!(p.frag_state(), FragState::Later);
        p.set_frag(false, false, 185);
        assert_eq!(p.frag_state(), FragState::Later);
    }

    #[test]
    fn ttl_incremental_checksum() {
        let mut buf = PACKET;
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_ttl_update_checksum(63);
        assert_eq!(p.ttl(), 63);
        assert!(p.verify_checksum());
        assert_eq!(p.check_checksum(), Ok(()));
        p.set_ttl(1);
        assert_eq!(p.check_checksum(), Err(ParseError::BadIpv4Checksum));
    }

    #[test]
    fn options_are_exposed() {
        // IHL 6 with one NOP-padded router alert option.
        let mut buf = [0u8; 24];
        buf[..20].copy_from_slice(&PACKET[..20]);
        buf[0] = 0x46;
        buf[2..4].copy_from_slice(&24u16.to_be_bytes());
        buf[20..24].copy_from_slice(&[0x94, 0x04, 0x00, 0x00]);
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        p.fill_checksum();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.options(), &[0x94, 0x04, 0x00, 0x00]);
        assert!(p.payload().is_empty());
        assert!(p.verify_checksum());
    }

    #[test]
    fn truncated_and_malformed() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&PACKET[..n]).unwrap_err(),
                ParseError::TruncatedIpv4
            );
        }
        for n in HEADER_LEN..24 {
            assert_eq!(
                Packet::new_checked(&PACKET[..n]).unwrap_err(),
                ParseError::TruncatedIpv4Payload
            );
        }
        let mut bad = PACKET;
        bad[0] = 0x65;
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            ParseError::BadIpv4Version
        );
        bad[0] = 0x44;
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            ParseError::BadIpv4Ihl
        );
        bad[0] = 0x4f;
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            ParseError::TruncatedIpv4Options
        );
        bad[0] = 0x45;
        bad[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&bad[..]).unwrap_err(),
            ParseError::BadIpv4TotalLength
        );
    }

    #[test]
    fn agrees_with_smoltcp() {
        use smoltcp::wire::{Ipv4Packet, Ipv4Repr};
        let p = Ipv4Packet::new_checked(&PACKET[..]).unwrap();
        assert!(p.verify_checksum());
        let repr = Ipv4Repr::parse(&p, &smoltcp::phy::ChecksumCapabilities::default()).unwrap();
        assert_eq!(repr.hop_limit, 64);
        assert_eq!(repr.payload_len, 4);
        assert_eq!(p.dscp(), 46);
        assert_eq!(p.ecn(), 1);
        assert!(p.dont_frag());
    }
}
