//! UDP header view: ports, length, checksum.
//!
//! [`Packet::check_len`] validates the length field (at least 8, at most the
//! buffer); after it no accessor can panic. The buffer is the IP payload; bytes
//! past the UDP length are ignored by [`Packet::payload`]. This module owns the
//! UDP header only (Geneve, carried on UDP 6081, is [`crate::geneve`]).

use crate::{checksum, ip_proto, read_u16, write_u16, Field, ParseError};

/// Field offsets.
pub mod field {
    use super::Field;
    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Length of header and payload.
    pub const LENGTH: Field = 4..6;
    /// Checksum (0 = none, IPv4 only).
    pub const CHECKSUM: Field = 6..8;
}

/// Length of the header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;
/// The Geneve port.
pub const GENEVE_PORT: u16 = 6081;

/// A view over a UDP datagram.
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

    /// Validates the length field; afterwards no accessor panics.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        let d = self.buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(ParseError::TruncatedUdp);
        }
        let len = self.len() as usize;
        if len < HEADER_LEN {
            return Err(ParseError::BadUdpLength);
        }
        if d.len() < len {
            return Err(ParseError::TruncatedUdpPayload);
        }
        Ok(())
    }

    /// The underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT.start)
    }
    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT.start)
    }
    /// Length field (header + payload).
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH.start)
    }
    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }
    /// Payload bytes, up to the length field.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.len() as usize]
    }

    /// Checksum to store for IPv4 (0 is sent as 0xffff).
    #[inline]
    pub fn compute_checksum_v4(&self, src: [u8; 4], dst: [u8; 4]) -> u16 {
        let s = checksum::pseudo_header_v4(src, dst, ip_proto::UDP, self.len());
        self.datagram_checksum(s)
    }
    /// Checksum to store for IPv6 (0 is sent as 0xffff).
    #[inline]
    pub fn compute_checksum_v6(&self, src: &[u8; 16], dst: &[u8; 16]) -> u16 {
        let s = checksum::pseudo_header_v6(src, dst, ip_proto::UDP, self.len() as u32);
        self.datagram_checksum(s)
    }
    /// True if the checksum verifies over IPv4; a zero checksum means "none".
    #[inline]
    pub fn verify_checksum_v4(&self, src: [u8; 4], dst: [u8; 4]) -> bool {
        self.checksum() == 0 || self.compute_checksum_v4(src, dst) == self.checksum()
    }
    /// True if the checksum verifies over IPv6 (where it is mandatory).
    #[inline]
    pub fn verify_checksum_v6(&self, src: &[u8; 16], dst: &[u8; 16]) -> bool {
        self.compute_checksum_v6(src, dst) == self.checksum()
    }

    fn datagram_checksum(&self, pseudo: u32) -> u16 {
        let d = &self.buffer.as_ref()[..self.len() as usize];
        let s = checksum::sum(pseudo, &d[..field::CHECKSUM.start]);
        match checksum::finish(checksum::sum(s, &d[field::CHECKSUM.end..])) {
            0 => 0xffff,
            c => c,
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source port.
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT.start, port);
    }
    /// Sets the destination port.
    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT.start, port);
    }
    /// Sets the length field.
    #[inline]
    pub fn set_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH.start, len);
    }
    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }
    /// Payload, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.len() as usize;
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
    /// Computes and stores the checksum for IPv4.
    #[inline]
    pub fn fill_checksum_v4(&mut self, src: [u8; 4], dst: [u8; 4]) {
        let c = self.compute_checksum_v4(src, dst);
        self.set_checksum(c);
    }
    /// Computes and stores the checksum for IPv6.
    #[inline]
    pub fn fill_checksum_v6(&mut self, src: &[u8; 16], dst: &[u8; 16]) {
        let c = self.compute_checksum_v6(src, dst);
        self.set_checksum(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    // 12345 -> 53, 4 bytes of payload, checksum over IPv6 fd00::1 -> fd00::2,
    // followed by 2 bytes that are not part of the datagram.
    static DATAGRAM: [u8; 14] = [
        0x30, 0x39, 0x00, 0x35, 0x00, 0x0c, 0x37, 0xc6, 0xde, 0xad, 0xbe, 0xef, 0x55, 0x55,
    ];

    #[test]
    fn parse_fields() {
        let p = Packet::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(p.src_port(), 12345);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 12);
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert!(p.verify_checksum_v6(&SRC, &DST));
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0u8; 14];
        buf[12..].copy_from_slice(&[0x55, 0x55]);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_port(12345);
        p.set_dst_port(53);
        p.set_len(12);
        p.payload_mut().copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        p.fill_checksum_v6(&SRC, &DST);
        assert_eq!(buf, DATAGRAM);
    }

    #[test]
    fn zero_checksum_is_none_on_v4() {
        let mut buf = DATAGRAM;
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_checksum(0);
        assert!(p.verify_checksum_v4([1, 2, 3, 4], [5, 6, 7, 8]));
        assert!(!p.verify_checksum_v6(&SRC, &DST));
        p.fill_checksum_v4([1, 2, 3, 4], [5, 6, 7, 8]);
        assert_ne!(p.checksum(), 0);
        assert!(p.verify_checksum_v4([1, 2, 3, 4], [5, 6, 7, 8]));
    }

    #[test]
    fn truncated_and_malformed() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&DATAGRAM[..n]).unwrap_err(),
                ParseError::TruncatedUdp
            );
        }
        for n in HEADER_LEN..12 {
            assert_eq!(
                Packet::new_checked(&DATAGRAM[..n]).unwrap_err(),
                ParseError::TruncatedUdpPayload
            );
        }
        for len in 0..8u16 {
            let mut bad = DATAGRAM;
            bad[4..6].copy_from_slice(&len.to_be_bytes());
            assert_eq!(
                Packet::new_checked(&bad[..]).unwrap_err(),
                ParseError::BadUdpLength
            );
        }
    }

    #[test]
    fn agrees_with_smoltcp() {
        use smoltcp::wire::{IpAddress, Ipv6Address, UdpPacket};
        let p = UdpPacket::new_checked(&DATAGRAM[..12]).unwrap();
        assert!(p.verify_checksum(
            &IpAddress::Ipv6(Ipv6Address::from(SRC)),
            &IpAddress::Ipv6(Ipv6Address::from(DST))
        ));
    }
}
