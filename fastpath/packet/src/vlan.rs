//! 802.1Q / 802.1ad (QinQ) VLAN tag view.
//!
//! The view starts after the TPID (which is the EtherType of the enclosing
//! header, 0x8100 or 0x88a8): two bytes of TCI, then the inner EtherType.
//! After [`Packet::new_checked`] succeeds, no accessor can panic. This module
//! owns the tag only.

use crate::{read_u16, write_u16, Field, ParseError, Rest};

/// Field offsets, relative to the TCI.
pub mod field {
    use super::{Field, Rest};
    /// Tag control information: PCP(3) DEI(1) VID(12).
    pub const TCI: Field = 0..2;
    /// EtherType of what follows (or the TPID of the next tag).
    pub const ETHERTYPE: Field = 2..4;
    /// What follows the tag.
    pub const PAYLOAD: Rest = 4..;
}

/// Length of a tag as seen by this view (TCI + EtherType).
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// Mask of the VLAN id in the TCI.
pub const VID_MASK: u16 = 0x0fff;
/// Mask of the drop-eligible indicator (formerly CFI) in the TCI.
pub const DEI_MASK: u16 = 0x1000;

/// A view over a VLAN tag.
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

    /// Ensures the tag fits; afterwards no accessor panics.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(ParseError::TruncatedVlan)
        } else {
            Ok(())
        }
    }

    /// The underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole TCI.
    #[inline]
    pub fn tci(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TCI.start)
    }

    /// VLAN id (12 bits).
    #[inline]
    pub fn vid(&self) -> u16 {
        self.tci() & VID_MASK
    }

    /// Priority code point (3 bits).
    #[inline]
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// Drop-eligible indicator.
    #[inline]
    pub fn dei(&self) -> bool {
        self.tci() & DEI_MASK != 0
    }

    /// EtherType of the encapsulated payload.
    #[inline]
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ETHERTYPE.start)
    }

    /// Everything after the tag.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the whole TCI.
    #[inline]
    pub fn set_tci(&mut self, tci: u16) {
        write_u16(self.buffer.as_mut(), field::TCI.start, tci);
    }

    /// Sets the VLAN id, keeping PCP and DEI.
    #[inline]
    pub fn set_vid(&mut self, vid: u16) {
        let tci = (self.tci() & !VID_MASK) | (vid & VID_MASK);
        self.set_tci(tci);
    }

    /// Sets the priority code point, keeping DEI and VID.
    #[inline]
    pub fn set_pcp(&mut self, pcp: u8) {
        let tci = (self.tci() & 0x1fff) | (((pcp & 7) as u16) << 13);
        self.set_tci(tci);
    }

    /// Sets the inner EtherType.
    #[inline]
    pub fn set_ethertype(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE.start, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // PCP 5, DEI 0, VID 100; inner EtherType IPv4.
    static TAG: [u8; 4] = [0xa0, 0x64, 0x08, 0x00];

    #[test]
    fn parse_fields() {
        let p = Packet::new_checked(&TAG[..]).unwrap();
        assert_eq!(p.tci(), 0xa064);
        assert_eq!(p.vid(), 100);
        assert_eq!(p.pcp(), 5);
        assert!(!p.dei());
        assert_eq!(p.ethertype(), 0x0800);
        assert!(p.payload().is_empty());
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0xffu8; 4];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_tci(0);
        p.set_vid(100);
        p.set_pcp(5);
        p.set_ethertype(0x0800);
        assert_eq!(buf, TAG);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_vid(0xfff);
        assert_eq!(p.pcp(), 5);
        assert_eq!(p.vid(), 0xfff);
    }

    #[test]
    fn truncated_at_every_length() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&TAG[..n]).unwrap_err(),
                ParseError::TruncatedVlan
            );
        }
    }
}
