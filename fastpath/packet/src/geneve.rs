//! Geneve (RFC 8926) header view, its TLV options, and the OVN option.
//!
//! OVN carries the logical datapath's tunnel key in the VNI and, in one option
//! of class 0x0102 and type 0x80 (critical) with 4 bytes of data, the logical
//! ingress and egress port keys: bit 31 zero, bits 30..16 the 15-bit ingress
//! port key, bits 15..0 the 16-bit egress port key (ovn-controller loads the
//! egress key into bits 0..31 of the option and moves the ingress key into
//! bits 16..30).
//!
//! [`Packet::check_len`] validates the version and that the options area fits
//! the buffer; after it no accessor can panic. The option walk reports each
//! malformed option as a named error. This module owns the Geneve header only;
//! the outer UDP/IP headers and the inner frame are parsed by their modules.

use crate::{read_u16, read_u32, write_u16, write_u32, Field, ParseError};

/// Field offsets.
pub mod field {
    use super::Field;
    /// Version (2 bits) and options length in 4-byte words (6 bits).
    pub const VER_OPT_LEN: usize = 0;
    /// O (control packet) and C (critical options present) bits.
    pub const FLAGS: usize = 1;
    /// Protocol type of the payload (an EtherType).
    pub const PROTOCOL: Field = 2..4;
    /// VNI (24 bits) and a reserved byte.
    pub const VNI_RSVD: Field = 4..8;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = field::VNI_RSVD.end;
/// Length of an option header.
pub const OPTION_HEADER_LEN: usize = 4;
/// O bit: control packet.
pub const FLAG_OAM: u8 = 0x80;
/// C bit: critical options present.
pub const FLAG_CRITICAL: u8 = 0x40;
/// Option type bit meaning "critical".
pub const OPTION_TYPE_CRITICAL: u8 = 0x80;

/// OVN's option class.
pub const OVN_OPTION_CLASS: u16 = 0x0102;
/// OVN's option type (critical bit set).
pub const OVN_OPTION_TYPE: u8 = 0x80;
/// Length of OVN's option data.
pub const OVN_OPTION_DATA_LEN: usize = 4;

/// The logical port keys OVN puts in its Geneve option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OvnMetadata {
    /// Logical ingress port key (15 bits).
    pub ingress_port: u16,
    /// Logical egress port key (16 bits).
    pub egress_port: u16,
}

impl OvnMetadata {
    /// The 4 option data bytes. The ingress key is truncated to 15 bits.
    #[inline]
    pub const fn to_bytes(self) -> [u8; 4] {
        let v = (((self.ingress_port & 0x7fff) as u32) << 16) | self.egress_port as u32;
        v.to_be_bytes()
    }

    /// Decodes the 4 option data bytes (bit 31 is ignored, as OVN does).
    #[inline]
    pub const fn from_bytes(b: [u8; 4]) -> OvnMetadata {
        let v = u32::from_be_bytes(b);
        OvnMetadata {
            ingress_port: ((v >> 16) & 0x7fff) as u16,
            egress_port: v as u16,
        }
    }
}

/// One Geneve option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneveOption<'a> {
    /// Offset of the option from the start of the Geneve header.
    pub offset: usize,
    /// Option class.
    pub class: u16,
    /// Option type (top bit: critical).
    pub kind: u8,
    /// Option data (length is a multiple of 4).
    pub data: &'a [u8],
}

impl GeneveOption<'_> {
    /// True for the OVN option class and type.
    #[inline]
    pub fn is_ovn(&self) -> bool {
        self.class == OVN_OPTION_CLASS && self.kind == OVN_OPTION_TYPE
    }
}

/// Iterator over the options; yields an error once and then stops.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    area: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<GeneveOption<'a>, ParseError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let area = self.area;
        let rest = area.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let Some(hdr) = rest.first_chunk::<OPTION_HEADER_LEN>() else {
            self.pos = area.len();
            return Some(Err(ParseError::TruncatedGeneveOption));
        };
        let data_len = (hdr[3] & 0x1f) as usize * 4;
        let Some(data) = rest.get(OPTION_HEADER_LEN..OPTION_HEADER_LEN + data_len) else {
            self.pos = area.len();
            return Some(Err(ParseError::TruncatedGeneveOption));
        };
        let opt = GeneveOption {
            offset: HEADER_LEN + self.pos,
            class: u16::from_be_bytes([hdr[0], hdr[1]]),
            kind: hdr[2],
            data,
        };
        self.pos += OPTION_HEADER_LEN + data_len;
        Some(Ok(opt))
    }
}

/// A view over a Geneve header and what follows it.
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

    /// Validates version 0 and the options length; afterwards no accessor panics.
    #[inline]
    pub fn check_len(&self) -> Result<(), ParseError> {
        let d = self.buffer.as_ref();
        if d.len() < HEADER_LEN {
            return Err(ParseError::TruncatedGeneve);
        }
        if self.version() != 0 {
            return Err(ParseError::BadGeneveVersion);
        }
        if d.len() < self.header_len() {
            return Err(ParseError::TruncatedGeneveOptions);
        }
        Ok(())
    }

    /// The underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version (0 once checked).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_OPT_LEN] >> 6
    }
    /// Length of the options area in bytes.
    #[inline]
    pub fn options_len(&self) -> usize {
        ((self.buffer.as_ref()[field::VER_OPT_LEN] & 0x3f) as usize) * 4
    }
    /// Length of header plus options: the offset of the inner frame.
    #[inline]
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len()
    }
    /// O bit.
    #[inline]
    pub fn oam(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_OAM != 0
    }
    /// C bit.
    #[inline]
    pub fn critical(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_CRITICAL != 0
    }
    /// Protocol type of the payload (0x6558 for an Ethernet frame).
    #[inline]
    pub fn protocol_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PROTOCOL.start)
    }
    /// VNI (24 bits): OVN's datapath tunnel key.
    #[inline]
    pub fn vni(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VNI_RSVD.start) >> 8
    }
    /// The options area.
    #[inline]
    pub fn options_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
    /// The options.
    #[inline]
    pub fn options(&self) -> Options<'_> {
        Options {
            area: self.options_bytes(),
            pos: 0,
        }
    }
    /// Checks every option is well formed.
    #[inline]
    pub fn check_options(&self) -> Result<(), ParseError> {
        self.options().try_for_each(|o| o.map(|_| ()))
    }
    /// The OVN option if present; errors on a malformed option walk or an OVN
    /// option whose data is not 4 bytes.
    #[inline]
    pub fn ovn_metadata(&self) -> Result<Option<OvnMetadata>, ParseError> {
        for opt in self.options() {
            let opt = opt?;
            if opt.is_ovn() {
                let data: [u8; 4] = opt
                    .data
                    .try_into()
                    .map_err(|_| ParseError::BadGeneveOvnOption)?;
                return Ok(Some(OvnMetadata::from_bytes(data)));
            }
        }
        Ok(None)
    }
    /// The encapsulated payload (an Ethernet frame for OVN).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 0 and the options length in bytes (a multiple of 4, ≤ 252).
    #[inline]
    pub fn set_options_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::VER_OPT_LEN] = ((len / 4) as u8) & 0x3f;
    }
    /// Sets the O and C bits (reserved bits cleared).
    #[inline]
    pub fn set_flags(&mut self, oam: bool, critical: bool) {
        let mut f = 0;
        if oam {
            f |= FLAG_OAM;
        }
        if critical {
            f |= FLAG_CRITICAL;
        }
        self.buffer.as_mut()[field::FLAGS] = f;
    }
    /// Sets the protocol type.
    #[inline]
    pub fn set_protocol_type(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::PROTOCOL.start, v);
    }
    /// Sets the VNI (24 bits), clearing the reserved byte.
    #[inline]
    pub fn set_vni(&mut self, vni: u32) {
        write_u32(
            self.buffer.as_mut(),
            field::VNI_RSVD.start,
            (vni & 0x00ff_ffff) << 8,
        );
    }
    /// Rewrites the data of an existing OVN option; errors as
    /// [`Packet::ovn_metadata`] does, and with [`ParseError::BadGeneveOvnOption`]
    /// if there is no OVN option.
    #[inline]
    pub fn set_ovn_metadata(&mut self, meta: OvnMetadata) -> Result<(), ParseError> {
        let mut at = None;
        for opt in self.options() {
            let opt = opt?;
            if opt.is_ovn() {
                if opt.data.len() != OVN_OPTION_DATA_LEN {
                    return Err(ParseError::BadGeneveOvnOption);
                }
                at = Some(opt.offset + OPTION_HEADER_LEN);
                break;
            }
        }
        let at = at.ok_or(ParseError::BadGeneveOvnOption)?;
        self.buffer.as_mut()[at..at + OVN_OPTION_DATA_LEN].copy_from_slice(&meta.to_bytes());
        Ok(())
    }
}

/// Length of the Geneve header OVN emits: fixed header plus its one option.
pub const OVN_HEADER_LEN: usize = HEADER_LEN + OPTION_HEADER_LEN + OVN_OPTION_DATA_LEN;

/// Writes the 16-byte Geneve header OVN emits (C bit set, protocol type
/// Ethernet, the OVN option) at the start of `buf`, returning its length.
pub fn write_ovn_header(buf: &mut [u8], vni: u32, meta: OvnMetadata) -> Result<usize, ParseError> {
    let buf = buf
        .get_mut(..OVN_HEADER_LEN)
        .ok_or(ParseError::TruncatedGeneve)?;
    let mut p = Packet::new_unchecked(&mut *buf);
    p.set_options_len(OPTION_HEADER_LEN + OVN_OPTION_DATA_LEN);
    p.set_flags(false, true);
    p.set_protocol_type(crate::ethernet::ethertype::TRANSPARENT_ETHERNET);
    p.set_vni(vni);
    write_u16(buf, HEADER_LEN, OVN_OPTION_CLASS);
    buf[HEADER_LEN + 2] = OVN_OPTION_TYPE;
    buf[HEADER_LEN + 3] = (OVN_OPTION_DATA_LEN / 4) as u8;
    buf[HEADER_LEN + OPTION_HEADER_LEN..].copy_from_slice(&meta.to_bytes());
    Ok(OVN_HEADER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    // VNI 5, C bit, Ethernet payload; an unrelated 8-byte option (class 0xffff,
    // type 0x01), then the OVN option: ingress port 3, egress port 0x8001; then
    // two bytes of inner frame.
    static HEADER: [u8; 30] = [
        0x04, 0x40, 0x65, 0x58, 0x00, 0x00, 0x05, 0x00, // fixed, opt len 4 words
        0xff, 0xff, 0x01, 0x01, 0xaa, 0xbb, 0xcc, 0xdd, // other option
        0x01, 0x02, 0x80, 0x01, 0x00, 0x03, 0x80, 0x01, // OVN option
        0x00, 0x00, 0x00, 0x00, 0x02, 0x00, // inner frame start
    ];

    #[test]
    fn parse_fields_and_options() {
        let p = Packet::new_checked(&HEADER[..]).unwrap();
        assert_eq!(p.version(), 0);
        assert_eq!(p.options_len(), 16);
        assert_eq!(p.header_len(), 24);
        assert!(p.critical());
        assert!(!p.oam());
        assert_eq!(p.protocol_type(), 0x6558);
        assert_eq!(p.vni(), 5);
        let opts: Vec<_> = p.options().collect::<Result<_, _>>().unwrap();
        assert_eq!(opts.len(), 2);
        assert_eq!(
            (opts[0].class, opts[0].kind, opts[0].data),
            (0xffff, 1, &[0xaa, 0xbb, 0xcc, 0xdd][..])
        );
        assert!(opts[1].is_ovn());
        assert_eq!(opts[1].offset, 16);
        assert_eq!(
            p.ovn_metadata().unwrap(),
            Some(OvnMetadata {
                ingress_port: 3,
                egress_port: 0x8001
            })
        );
        assert_eq!(p.payload(), &[0, 0, 0, 0, 2, 0]);
    }

    #[test]
    fn option_walk_errors() {
        // 5 words of options: the fifth is a zero-length option header.
        let mut h = HEADER;
        h[0] = 0x05;
        let p = Packet::new_checked(&h[..]).unwrap();
        assert_eq!(p.check_options(), Ok(()));
        assert_eq!(p.options().count(), 3);
        // ... and once it claims 4 bytes of data, it runs past the area.
        h[27] = 0x01;
        let p = Packet::new_checked(&h[..]).unwrap();
        assert_eq!(p.check_options(), Err(ParseError::TruncatedGeneveOption));
        // An option whose data runs past the area.
        let mut h = HEADER;
        h[11] = 0x05;
        let p = Packet::new_checked(&h[..]).unwrap();
        assert_eq!(p.ovn_metadata(), Err(ParseError::TruncatedGeneveOption));
        // An OVN option with 8 bytes of data.
        let mut h = HEADER;
        h[0] = 0x03;
        h[8..12].copy_from_slice(&[0x01, 0x02, 0x80, 0x01]);
        h[11] = 2;
        let p = Packet::new_checked(&h[..]).unwrap();
        assert_eq!(p.ovn_metadata(), Err(ParseError::BadGeneveOvnOption));
    }

    #[test]
    fn truncated_and_malformed() {
        let mut h = HEADER;
        for n in 0..HEADER_LEN {
            assert_eq!(
                Packet::new_checked(&h[..n]).unwrap_err(),
                ParseError::TruncatedGeneve
            );
        }
        for n in HEADER_LEN..24 {
            assert_eq!(
                Packet::new_checked(&h[..n]).unwrap_err(),
                ParseError::TruncatedGeneveOptions
            );
        }
        h[0] = 0x44;
        assert_eq!(
            Packet::new_checked(&h[..]).unwrap_err(),
            ParseError::BadGeneveVersion
        );
    }

    #[test]
    fn ovn_metadata_bit_layout() {
        let m = OvnMetadata {
            ingress_port: 0x7fff,
            egress_port: 0xffff,
        };
        assert_eq!(m.to_bytes(), [0x7f, 0xff, 0xff, 0xff]);
        let m = OvnMetadata {
            ingress_port: 1,
            egress_port: 2,
        };
        assert_eq!(m.to_bytes(), [0x00, 0x01, 0x00, 0x02]);
        assert_eq!(OvnMetadata::from_bytes([0x80, 0x01, 0x00, 0x02]), m);
        // The 16th ingress bit cannot be carried.
        assert_eq!(
            OvnMetadata {
                ingress_port: 0x8001,
                egress_port: 0
            }
            .to_bytes(),
            [0, 1, 0, 0]
        );
    }

    #[test]
    fn write_and_rewrite_round_trip() {
        let mut buf = [0u8; 20];
        let meta = OvnMetadata {
            ingress_port: 3,
            egress_port: 0x8001,
        };
        assert_eq!(write_ovn_header(&mut buf, 5, meta), Ok(16));
        assert_eq!(&buf[..8], &[0x02, 0x40, 0x65, 0x58, 0x00, 0x00, 0x05, 0x00]);
        assert_eq!(&buf[8..16], &HEADER[16..24]);
        let mut p = Packet::new_checked(&mut buf[..]).unwrap();
        assert_eq!(p.ovn_metadata(), Ok(Some(meta)));
        let other = OvnMetadata {
            ingress_port: 9,
            egress_port: 10,
        };
        p.set_ovn_metadata(other).unwrap();
        p.set_vni(0x123456);
        assert_eq!(p.ovn_metadata(), Ok(Some(other)));
        assert_eq!(p.vni(), 0x123456);
        assert_eq!(
            write_ovn_header(&mut [0u8; 15], 5, meta),
            Err(ParseError::TruncatedGeneve)
        );
        let mut none = [0u8; 8];
        let mut p = Packet::new_checked(&mut none[..]).unwrap();
        assert_eq!(
            p.set_ovn_metadata(other),
            Err(ParseError::BadGeneveOvnOption)
        );
    }
}
