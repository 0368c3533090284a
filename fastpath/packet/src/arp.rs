//! ARP view for Ethernet/IPv4 (the only ARP the fastpath handles).
//!
//! [`Packet::check_len`] ensures the 28 bytes of an Ethernet/IPv4 ARP packet are
//! present; after it no accessor can panic. [`Packet::check_format`] also
//! requires hardware type 1, protocol type 0x0800 and address lengths 6 and 4,
//! which is what makes the fixed offsets below meaningful.

use crate::{read_array, read_u16, write_u16, Field, MacAddr, ParseError};
use std::net::Ipv4Addr;

/// Field offsets (Ethernet/IPv4 ARP).
pub mod field {
    use super::Field;
    /// Hardware type.
    pub const HTYPE: Field = 0..2;
    /// Protocol type.
    pub const PTYPE: Field = 2..4;
    /// Hardware address length.
    pub const HLEN: usize = 4;
    /// Protocol address length.
    pub const PLEN: usize = 5;
    /// Operation.
    pub const OPER: Field = 6..8;
    /// Sender hardware address.
    pub const SHA: Field = 8..14;
    /// Sender protocol address.
    pub const SPA: Field = 14..18;
    /// Target hardware address.
    pub const THA: Field = 18..24;
    /// Target protocol address.
    pub const TPA: Field = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::TPA.end;
/// Hardware type Ethernet.
pub const HTYPE_ETHERNET: u16 = 1;
/// Operation: request.
pub const OP_REQUEST: u16 = 1;
/// Operation: reply.
pub const OP_REPLY: u16 = 2;

/// A view over an ARP packet.
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

    /// Wraps a buffer after [`Packet::check_len`] and [`Packet::check_format`].
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Packet<T>, ParseError> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        p.check_format()?;
        Ok(p)
    }

    /// Ensures the 28 bytes are there; afterwards no accessor panics.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        if self.buffer.as_ref().len() < PACKET_LEN {
            Err(ParseError::TruncatedArp)
        } else {
            Ok(())
        }
    }

    /// Ensures the packet is Ethernet/IPv4 ARP. Call after `check_len`.
    #[inline]
    pub fn check_format(&self) -> Result<(), ParseError> {
        if self.htype() != HTYPE_ETHERNET
            || self.ptype() != crate::ethernet::ethertype::IPV4
            || self.hlen() != 6
            || self.plen() != 4
        {
            Err(ParseError::BadArpFormat)
        } else {
            Ok(())
        }
    }

    /// The underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Hardware type.
    #[inline]
    pub fn htype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HTYPE.start)
    }
    /// Protocol type.
    #[inline]
    pub fn ptype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PTYPE.start)
    }
    /// Hardware address length.
    #[inline]
    pub fn hlen(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }
    /// Protocol address length.
    #[inline]
    pub fn plen(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }
    /// Operation (1 request, 2 reply).
    #[inline]
    pub fn oper(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::OPER.start)
    }
    /// Sender hardware address.
    #[inline]
    pub fn sha(&self) -> MacAddr {
        read_array(self.buffer.as_ref(), field::SHA.start)
    }
    /// Sender protocol address.
    #[inline]
    pub fn spa(&self) -> Ipv4Addr {
        Ipv4Addr::from(read_array::<4>(self.buffer.as_ref(), field::SPA.start))
    }
    /// Target hardware address.
    #[inline]
    pub fn tha(&self) -> MacAddr {
        read_array(self.buffer.as_ref(), field::THA.start)
    }
    /// Target protocol address.
    #[inline]
    pub fn tpa(&self) -> Ipv4Addr {
        Ipv4Addr::from(read_array::<4>(self.buffer.as_ref(), field::TPA.start))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes the Ethernet/IPv4 fixed part (htype, ptype, hlen, plen).
    #[inline]
    pub fn set_ethernet_ipv4_format(&mut self) {
        let d = self.buffer.as_mut();
        write_u16(d, field::HTYPE.start, HTYPE_ETHERNET);
        write_u16(d, field::PTYPE.start, crate::ethernet::ethertype::IPV4);
        d[field::HLEN] = 6;
        d[field::PLEN] = 4;
    }
    /// Sets the operation.
    #[inline]
    pub fn set_oper(&mut self, op: u16) {
        write_u16(self.buffer.as_mut(), field::OPER.start, op);
    }
    /// Sets the sender hardware address.
    #[inline]
    pub fn set_sha(&mut self, a: MacAddr) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&a);
    }
    /// Sets the sender protocol address.
    #[inline]
    pub fn set_spa(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&a.octets());
    }
    /// Sets the target hardware address.
    #[inline]
    pub fn set_tha(&mut self, a: MacAddr) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&a);
    }
    /// Sets the target protocol address.
    #[inline]
    pub fn set_tpa(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&a.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Who has 10.0.0.2? Tell 10.0.0.1 (02:00:00:00:00:01).
    static REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // fixed part, op 1
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 10, 0, 0, 1, // sha, spa
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 0, 0, 2, // tha, tpa
    ];

    #[test]
    fn parse_fields() {
        let p = Packet::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.oper(), OP_REQUEST);
        assert_eq!(p.sha(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(p.spa(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.tha(), [0; 6]);
        assert_eq!(p.tpa(), Ipv4Addr::new(10, 0, 0, 2));
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0xeeu8; 28];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_ethernet_ipv4_format();
        p.set_oper(OP_REQUEST);
        p.set_sha([2, 0, 0, 0, 0, 1]);
        p.set_spa(Ipv4Addr::new(10, 0, 0, 1));
        p.set_tha([0; 6]);
        p.set_tpa(Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(buf, REQUEST);
    }

    #[test]
    fn truncated_and_malformed() {
        for n in 0..PACKET_LEN {
            assert_eq!(
                Packet::new_checked(&REQUEST[..n]).unwrap_err(),
                ParseError::TruncatedArp
            );
        }
        for (at, value) in [(1, 6u8), (2, 0x86), (4, 8), (5, 16)] {
            let mut bad = REQUEST;
            bad[at] = value;
            assert_eq!(
                Packet::new_checked(&bad[..]).unwrap_err(),
                ParseError::BadArpFormat
            );
        }
    }

    #[test]
    fn agrees_with_smoltcp() {
        use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress, Ipv4Address};
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            source_protocol_addr: Ipv4Address::new(10, 0, 0, 1),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: Ipv4Address::new(10, 0, 0, 2),
        };
        let mut buf = [0u8; 28];
        repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        assert_eq!(buf, REQUEST);
    }
}
