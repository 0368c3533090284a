//! TCP header view: ports, sequence numbers, data offset, flags, checksum.
//!
//! [`Packet::check_len`] validates the data offset (at least 5, options within
//! the buffer); after it no accessor can panic. The buffer is taken to be the
//! whole segment (IP payload) for the checksum helpers. This module owns the
//! TCP header only.

use crate::{checksum, ip_proto, read_u16, read_u32, write_u16, write_u32, Field, ParseError};

/// Field offsets.
pub mod field {
    use super::Field;
    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Sequence number.
    pub const SEQ_NUM: Field = 4..8;
    /// Acknowledgement number.
    pub const ACK_NUM: Field = 8..12;
    /// Data offset (4 bits), reserved (3), flags (9).
    pub const OFF_FLAGS: Field = 12..14;
    /// Window.
    pub const WINDOW: Field = 14..16;
    /// Checksum.
    pub const CHECKSUM: Field = 16..18;
    /// Urgent pointer.
    pub const URGENT: Field = 18..20;
}

/// Length of the header without options.
pub const HEADER_LEN: usize = field::URGENT.end;

/// TCP flag bits (low 12 bits of the offset/flags word, as OVN's `tcp.flags`).
pub mod flags {
    /// FIN.
    pub const FIN: u16 = 0x001;
    /// SYN.
    pub const SYN: u16 = 0x002;
    /// RST.
    pub const RST: u16 = 0x004;
    /// PSH.
    pub const PSH: u16 = 0x008;
    /// ACK.
    pub const ACK: u16 = 0x010;
    /// URG.
    pub const URG: u16 = 0x020;
    /// ECE.
    pub const ECE: u16 = 0x040;
    /// CWR.
    pub const CWR: u16 = 0x080;
    /// NS (RFC 3540, historic).
    pub const NS: u16 = 0x100;
    /// All 12 bits that `tcp.flags` covers.
    pub const MASK: u16 = 0x0fff;
}

/// A view over a TCP segment.
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

    /// Validates the data offset against the buffer; afterwards no accessor panics.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        let d = self.buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(ParseError::TruncatedTcp);
        }
        let hlen = self.header_len();
        if hlen < HEADER_LEN {
            return Err(ParseError::BadTcpDataOffset);
        }
        if d.len() < hlen {
            return Err(ParseError::TruncatedTcpOptions);
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
    /// Sequence number.
    #[inline]
    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ_NUM.start)
    }
    /// Acknowledgement number.
    #[inline]
    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK_NUM.start)
    }
    /// Header length in bytes (data offset * 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        ((self.buffer.as_ref()[field::OFF_FLAGS.start] >> 4) as usize) * 4
    }
    /// The 12 flag bits (see [`flags`]).
    #[inline]
    pub fn flags(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::OFF_FLAGS.start) & flags::MASK
    }
    /// Window.
    #[inline]
    pub fn window(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW.start)
    }
    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }
    /// Urgent pointer.
    #[inline]
    pub fn urgent(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT.start)
    }
    /// Options bytes.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
    /// Payload bytes.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// Checksum over the segment with an IPv4 pseudo-header, field taken as zero.
    #[inline]
    pub fn compute_checksum_v4(&self, src: [u8; 4], dst: [u8; 4]) -> u16 {
        let d = self.buffer.as_ref();
        let s = checksum::pseudo_header_v4(src, dst, ip_proto::TCP, d.len() as u16);
        segment_checksum(s, d)
    }
    /// Checksum over the segment with an IPv6 pseudo-header, field taken as zero.
    #[inline]
    pub fn compute_checksum_v6(&self, src: &[u8; 16], dst: &[u8; 16]) -> u16 {
        let d = self.buffer.as_ref();
        let s = checksum::pseudo_header_v6(src, dst, ip_proto::TCP, d.len() as u32);
        segment_checksum(s, d)
    }
    /// True if the checksum verifies over IPv4.
    #[inline]
    pub fn verify_checksum_v4(&self, src: [u8; 4], dst: [u8; 4]) -> bool {
        self.compute_checksum_v4(src, dst) == self.checksum()
    }
    /// True if the checksum verifies over IPv6.
    #[inline]
    pub fn verify_checksum_v6(&self, src: &[u8; 16], dst: &[u8; 16]) -> bool {
        self.compute_checksum_v6(src, dst) == self.checksum()
    }
}

fn segment_checksum(pseudo: u32, d: &[u8]) -> u16 {
    let s = checksum::sum(pseudo, &d[..field::CHECKSUM.start]);
    checksum::finish(checksum::sum(s, &d[field::CHECKSUM.end..]))
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
    /// Sets the sequence number.
    #[inline]
    pub fn set_seq_number(&mut self, v: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ_NUM.start, v);
    }
    /// Sets the acknowledgement number.
    #[inline]
    pub fn set_ack_number(&mut self, v: u32) {
        write_u32(self.buffer.as_mut(), field::ACK_NUM.start, v);
    }
    /// Sets the header length (multiple of 4, 20..=60) and the 12 flag bits.
    #[inline]
    pub fn set_header_len_and_flags(&mut self, header_len: usize, flag_bits: u16) {
        let w = (((header_len / 4) as u16) << 12) | (flag_bits & flags::MASK);
        write_u16(self.buffer.as_mut(), field::OFF_FLAGS.start, w);
    }
    /// Sets the window.
    #[inline]
    pub fn set_window(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::WINDOW.start, v);
    }
    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }
    /// Sets the urgent pointer.
    #[inline]
    pub fn set_urgent(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT.start, v);
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

    const SRC: [u8; 4] = [10, 0, 0, 1];
    const DST: [u8; 4] = [10, 0, 0, 2];

    // SYN 40000 -> 80, seq 1, window 64240, MSS option 1460, no payload.
    static SYN: [u8; 24] = [
        0x9c, 0x40, 0x00, 0x50, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x60, 0x02, 0xfa,
        0xf0, 0xec, 0xa1, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
    ];

    #[test]
    fn parse_fields() {
        let p = Packet::new_checked(&SYN[..]).unwrap();
        assert_eq!(p.src_port(), 40000);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.seq_number(), 1);
        assert_eq!(p.ack_number(), 0);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.flags(), flags::SYN);
        assert_eq!(p.window(), 64240);
        assert_eq!(p.urgent(), 0);
        assert_eq!(p.options(), &[2, 4, 5, 0xb4]);
        assert!(p.payload().is_empty());
        assert!(p.verify_checksum_v4(SRC, DST));
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0u8; 24];
        buf[20..].copy_from_slice(&[2, 4, 5, 0xb4]);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_port(40000);
        p.set_dst_port(80);
        p.set_seq_number(1);
        p.set_ack_number(0);
        p.set_header_len_and_flags(24, flags::SYN);
        p.set_window(64240);
        p.set_urgent(0);
        p.fill_checksum_v4(SRC, DST);
        assert_eq!(buf, SYN);
    }

    #[test]
    fn truncated_and_malformed() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&SYN[..n]).unwrap_err(),
                ParseError::TruncatedTcp
            );
        }
        for n in HEADER_LEN..24 {
            assert_eq!(
                Packet::new_checked(&SYN[..n]).unwrap_err(),
                ParseError::TruncatedTcpOptions
            );
        }
        for off in 0..5u8 {
            let mut bad = SYN;
            bad[12] = off << 4;
            assert_eq!(
                Packet::new_checked(&bad[..]).unwrap_err(),
                ParseError::BadTcpDataOffset
            );
        }
    }

    #[test]
    fn checksum_agrees_with_smoltcp_v4_and_v6() {
        use smoltcp::wire::{IpAddress, Ipv4Address, Ipv6Address, TcpPacket};
        let p = TcpPacket::new_checked(&SYN[..]).unwrap();
        assert!(p.verify_checksum(
            &IpAddress::Ipv4(Ipv4Address::from(SRC)),
            &IpAddress::Ipv4(Ipv4Address::from(DST))
        ));
        let s6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let d6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut buf = SYN;
        Packet::new_unchecked(&mut buf[..]).fill_checksum_v6(&s6, &d6);
        let p = TcpPacket::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum(
            &IpAddress::Ipv6(Ipv6Address::from(s6)),
            &IpAddress::Ipv6(Ipv6Address::from(d6))
        ));
        assert!(Packet::new_checked(&buf[..])
            .unwrap()
            .verify_checksum_v6(&s6, &d6));
    }
}
