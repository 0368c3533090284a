//! ICMPv6 view (type, code, checksum, echo identifier/sequence) and the
//! neighbor discovery fields OVN matches on: the NS/NA target and the source /
//! target link-layer address options.
//!
//! [`Packet::check_len`] requires the 8-byte header; after it no accessor of
//! [`Packet`] can panic. [`NdMessage::new_checked`] requires the 24 bytes of an
//! NS/NA; after it no accessor of [`NdMessage`] can panic, and its option
//! walk reports malformed options as named errors. This module owns ICMPv6
//! only; the IPv6 header chain is [`crate::ipv6`].

use crate::{
    checksum, ip_proto, read_array, read_u16, read_u32, write_u16, Field, MacAddr, ParseError,
};
use std::net::Ipv6Addr;

/// Field offsets.
pub mod field {
    use super::Field;
    /// Type.
    pub const TYPE: usize = 0;
    /// Code.
    pub const CODE: usize = 1;
    /// Checksum.
    pub const CHECKSUM: Field = 2..4;
    /// Echo identifier.
    pub const ECHO_IDENT: Field = 4..6;
    /// Echo sequence number.
    pub const ECHO_SEQNO: Field = 6..8;
    /// NA flags (R, S, O) / reserved in NS.
    pub const ND_FLAGS: usize = 4;
    /// NS/NA target address.
    pub const ND_TARGET: Field = 8..24;
    /// Start of the NS/NA options.
    pub const ND_OPTIONS: usize = 24;
}

/// Length of the ICMPv6 header.
pub const HEADER_LEN: usize = 8;
/// Length of an NS/NA without options.
pub const ND_LEN: usize = field::ND_OPTIONS;

/// Message types used by OVN.
pub mod msg_type {
    /// Destination unreachable.
    pub const DST_UNREACHABLE: u8 = 1;
    /// Packet too big.
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
    /// Router solicitation.
    pub const ROUTER_SOLICIT: u8 = 133;
    /// Router advertisement.
    pub const ROUTER_ADVERT: u8 = 134;
    /// Neighbor solicitation.
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    /// Neighbor advertisement.
    pub const NEIGHBOR_ADVERT: u8 = 136;
}

/// ND option types.
pub mod nd_option {
    /// Source link-layer address.
    pub const SOURCE_LL_ADDR: u8 = 1;
    /// Target link-layer address.
    pub const TARGET_LL_ADDR: u8 = 2;
}

/// NA flag bits (in the byte at [`field::ND_FLAGS`]).
pub mod na_flags {
    /// Router.
    pub const ROUTER: u8 = 0x80;
    /// Solicited.
    pub const SOLICITED: u8 = 0x40;
    /// Override.
    pub const OVERRIDE: u8 = 0x20;
}

/// A view over an ICMPv6 message.
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

    /// Ensures the 8-byte header fits; afterwards no accessor panics.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(ParseError::TruncatedIcmpv6)
        } else {
            Ok(())
        }
    }

    /// The underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Message type.
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    /// Message code.
    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }
    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }
    /// Echo identifier.
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENT.start)
    }
    /// Echo sequence number.
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQNO.start)
    }
    /// The 4 type-specific header bytes as a number (MTU, pointer...).
    #[inline]
    pub fn rest_of_header(&self) -> u32 {
        read_u32(self.buffer.as_ref(), 4)
    }
    /// True for a neighbor solicitation or advertisement with code 0.
    #[inline]
    pub fn is_nd(&self) -> bool {
        matches!(
            self.msg_type(),
            msg_type::NEIGHBOR_SOLICIT | msg_type::NEIGHBOR_ADVERT
        ) && self.msg_code() == 0
    }
    /// Data after the 8-byte header.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
    /// Checksum over the message with the IPv6 pseudo-header, field taken as zero.
    #[inline]
    pub fn compute_checksum(&self, src: &[u8; 16], dst: &[u8; 16]) -> u16 {
        let d = self.buffer.as_ref();
        let s = checksum::pseudo_header_v6(src, dst, ip_proto::ICMPV6, d.len() as u32);
        let s = checksum::sum(s, &d[..field::CHECKSUM.start]);
        checksum::finish(checksum::sum(s, &d[field::CHECKSUM.end..]))
    }
    /// True if the checksum verifies.
    #[inline]
    pub fn verify_checksum(&self, src: &[u8; 16], dst: &[u8; 16]) -> bool {
        self.compute_checksum(src, dst) == self.checksum()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the message type.
    #[inline]
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }
    /// Sets the message code.
    #[inline]
    pub fn set_msg_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }
    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }
    /// Sets the echo identifier.
    #[inline]
    pub fn set_echo_ident(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_IDENT.start, v);
    }
    /// Sets the echo sequence number.
    #[inline]
    pub fn set_echo_seq_no(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_SEQNO.start, v);
    }
    /// Computes and stores the checksum.
    #[inline]
    pub fn fill_checksum(&mut self, src: &[u8; 16], dst: &[u8; 16]) {
        let c = self.compute_checksum(src, dst);
        self.set_checksum(c);
    }
}

/// One ND option: its type and its bytes (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdOption<'a> {
    /// Option type.
    pub kind: u8,
    /// The whole option, type and length bytes included.
    pub bytes: &'a [u8],
}

impl NdOption<'_> {
    /// The link-layer address of a one-unit (8-byte) source/target link-layer
    /// address option, as Ethernet uses.
    #[inline]
    pub fn link_layer_addr(&self) -> Option<MacAddr> {
        match self.bytes {
            [_, 1, a, b, c, d, e, f] => Some([*a, *b, *c, *d, *e, *f]),
            _ => None,
        }
    }
}

/// Iterator over ND options; yields an error once and then stops.
#[derive(Debug, Clone)]
pub struct NdOptions<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for NdOptions<'a> {
    type Item = Result<NdOption<'a>, ParseError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest;
        match rest {
            [] => None,
            [_] => {
                self.rest = &[];
                Some(Err(ParseError::TruncatedNdOption))
            }
            [kind, units, ..] => {
                let len = *units as usize * 8;
                if len == 0 {
                    self.rest = &[];
                    return Some(Err(ParseError::BadNdOptionLength));
                }
                match (rest.get(..len), rest.get(len..)) {
                    (Some(bytes), Some(tail)) => {
                        self.rest = tail;
                        Some(Ok(NdOption { kind: *kind, bytes }))
                    }
                    _ => {
                        self.rest = &[];
                        Some(Err(ParseError::TruncatedNdOption))
                    }
                }
            }
        }
    }
}

/// The link-layer addresses found in an NS/NA (zero when absent, as OVN expects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NdLinkLayer {
    /// Source link-layer address (from an NS).
    pub sll: MacAddr,
    /// Target link-layer address (from an NA).
    pub tll: MacAddr,
}

/// A view over a neighbor solicitation or advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdMessage<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> NdMessage<T> {
    /// Wraps a buffer without checking it.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> NdMessage<T> {
        NdMessage { buffer }
    }

    /// Wraps a buffer after [`NdMessage::check_len`].
    #[inline]
    pub fn new_checked(buffer: T) -> Result<NdMessage<T>, ParseError> {
        let p = NdMessage::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ensures the 24 bytes of an NS/NA fit; afterwards no accessor panics.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        if self.buffer.as_ref().len() < ND_LEN {
            Err(ParseError::TruncatedNd)
        } else {
            Ok(())
        }
    }

    /// Message type (135 NS or 136 NA).
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    /// NA flags byte (R, S, O in the top bits; see [`na_flags`]).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::ND_FLAGS]
    }
    /// Target address bytes.
    #[inline]
    pub fn target_octets(&self) -> [u8; 16] {
        read_array(self.buffer.as_ref(), field::ND_TARGET.start)
    }
    /// Target address.
    #[inline]
    pub fn target_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.target_octets())
    }
    /// The options.
    #[inline]
    pub fn options(&self) -> NdOptions<'_> {
        NdOptions {
            rest: &self.buffer.as_ref()[field::ND_OPTIONS..],
        }
    }

    /// The SLL (taken from an NS) and TLL (from an NA), first one of each wins;
    /// errors if any option is malformed.
    #[inline]
    pub fn link_layer(&self) -> Result<NdLinkLayer, ParseError> {
        let mut out = NdLinkLayer::default();
        let (mut have_sll, mut have_tll) = (false, false);
        let ns = self.msg_type() == msg_type::NEIGHBOR_SOLICIT;
        for opt in self.options() {
            let opt = opt?;
            match (opt.kind, ns) {
                (nd_option::SOURCE_LL_ADDR, true) if !have_sll => {
                    if let Some(a) = opt.link_layer_addr() {
                        out.sll = a;
                        have_sll = true;
                    }
                }
                (nd_option::TARGET_LL_ADDR, false) if !have_tll => {
                    if let Some(a) = opt.link_layer_addr() {
                        out.tll = a;
                        have_tll = true;
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> NdMessage<T> {
    /// Sets the NA flags byte.
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::ND_FLAGS] = flags;
    }
    /// Sets the target address.
    #[inline]
    pub fn set_target_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::ND_TARGET].copy_from_slice(&a.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    // Solicited-node multicast for fd00::2.
    const DST: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2];
    const TARGET: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    // NS for fd00::2 with an SLL option 02:00:00:00:00:01.
    static NS: [u8; 32] = [
        135, 0, 0x7c, 0x17, 0, 0, 0, 0, // type, code, checksum, reserved
        0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, // target
        1, 1, 0x02, 0, 0, 0, 0, 0x01, // SLL
    ];

    #[test]
    fn parse_ns() {
        let p = Packet::new_checked(&NS[..]).unwrap();
        assert_eq!(p.msg_type(), msg_type::NEIGHBOR_SOLICIT);
        assert_eq!(p.msg_code(), 0);
        assert!(p.is_nd());
        assert!(p.verify_checksum(&SRC, &DST));
        let nd = NdMessage::new_checked(&NS[..]).unwrap();
        assert_eq!(nd.target_octets(), TARGET);
        let ll = nd.link_layer().unwrap();
        assert_eq!(ll.sll, [2, 0, 0, 0, 0, 1]);
        assert_eq!(ll.tll, [0; 6]);
        assert_eq!(nd.options().count(), 1);
    }

    #[test]
    fn na_target_link_layer() {
        let mut na = NS;
        na[0] = msg_type::NEIGHBOR_ADVERT;
        na[24] = nd_option::TARGET_LL_ADDR;
        let mut nd = NdMessage::new_checked(&mut na[..]).unwrap();
        nd.set_flags(na_flags::SOLICITED | na_flags::OVERRIDE);
        assert_eq!(nd.flags(), 0x60);
        let ll = nd.link_layer().unwrap();
        assert_eq!((ll.sll, ll.tll), ([0; 6], [2, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0u8; 32];
        buf[24..].copy_from_slice(&NS[24..]);
        let mut nd = NdMessage::new_unchecked(&mut buf[..]);
        nd.set_target_addr(Ipv6Addr::from(TARGET));
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(msg_type::NEIGHBOR_SOLICIT);
        p.set_msg_code(0);
        p.fill_checksum(&SRC, &DST);
        assert_eq!(buf, NS);

        let mut echo = [0u8; 8];
        let mut p = Packet::new_unchecked(&mut echo[..]);
        p.set_msg_type(msg_type::ECHO_REQUEST);
        p.set_echo_ident(7);
        p.set_echo_seq_no(9);
        assert_eq!(echo, [128, 0, 0, 0, 0, 7, 0, 9]);
    }

    #[test]
    fn truncated_and_malformed() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&NS[..n]).unwrap_err(),
                ParseError::TruncatedIcmpv6
            );
        }
        for n in 0..ND_LEN {
            assert_eq!(
                NdMessage::new_checked(&NS[..n]).unwrap_err(),
                ParseError::TruncatedNd
            );
        }
        for n in ND_LEN + 1..NS.len() {
            let nd = NdMessage::new_checked(&NS[..n]).unwrap();
            assert_eq!(
                nd.link_layer().unwrap_err(),
                ParseError::TruncatedNdOption,
                "len {n}"
            );
        }
        let mut bad = NS;
        bad[25] = 0;
        let nd = NdMessage::new_checked(&bad[..]).unwrap();
        assert_eq!(nd.link_layer().unwrap_err(), ParseError::BadNdOptionLength);
    }

    #[test]
    fn agrees_with_smoltcp() {
        use smoltcp::wire::{
            EthernetAddress, Icmpv6Packet, Icmpv6Repr, Ipv6Address, NdiscRepr, RawHardwareAddress,
        };
        let repr = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
            target_addr: Ipv6Address::from(TARGET),
            lladdr: Some(RawHardwareAddress::from(EthernetAddress([
                2, 0, 0, 0, 0, 1,
            ]))),
        });
        let mut buf = [0u8; 32];
        repr.emit(
            &Ipv6Address::from(SRC),
            &Ipv6Address::from(DST),
            &mut Icmpv6Packet::new_unchecked(&mut buf[..]),
            &smoltcp::phy::ChecksumCapabilities::default(),
        );
        assert_eq!(buf, NS);
    }
}
