//! Frames of the packets that OVN actions generate (what `ovn-controller`'s
//! pinctrl builds): an ARP request (`arp { }`), an ICMPv4 error or reply
//! (`icmp4 { }`, `icmp4_error { }`, quoting the received IP header and the
//! first 8 bytes after it) and an IPv6 neighbour advertisement
//! (`nd_na { }`, `nd_na_router { }`). The headers come from the emission's
//! final vector; the received frame is only quoted.
//!
//! Owns frame building over plain byte buffers; it must not run the
//! pipeline or touch mbufs. Kinds not built yet are refused with
//! [`GenerateError::Unsupported`] and the packet is dropped under a named
//! reason.

use fastpath_packet::checksum::checksum;
use fastpath_packet::flowkey::field;
use fastpath_packet::Layout;

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
}

fn eth(out: &mut Vec<u8>, v: &FlowVector, ethertype: u16) {
    out.extend_from_slice(v.field(field::ETH_DST));
    out.extend_from_slice(v.field(field::ETH_SRC));
    out.extend_from_slice(&ethertype.to_be_bytes());
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
    match kind {
        Generated::Arp => {
            eth(out, v, 0x0806);
            out.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
            out.extend_from_slice(v.field(field::ARP_OP));
            out.extend_from_slice(v.field(field::SHA));
            out.extend_from_slice(&v.field(field::SRC)[12..]);
            out.extend_from_slice(v.field(field::THA));
            out.extend_from_slice(&v.field(field::DST)[12..]);
            out.resize(60, 0);
        }
        Generated::Icmp4 | Generated::Icmp4Error => {
            let l3 = usize::from(layout.l3);
            let ihl = usize::from(frame.get(l3).ok_or(GenerateError::Truncated)? & 0x0f) * 4;
            let quote_end = (l3 + ihl + 8).min(usize::from(layout.end).max(l3 + ihl));
            let quote = frame.get(l3..quote_end).ok_or(GenerateError::Truncated)?;
            eth(out, v, 0x0800);
            let total = (20 + 8 + quote.len()) as u16;
            let b = v.bytes();
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[1] = b[field::TOS];
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[6] = 0x40; // don't fragment
            ip[8] = b[field::TTL];
            ip[9] = 1;
            ip[12..16].copy_from_slice(&v.field(field::SRC)[12..]);
            ip[16..20].copy_from_slice(&v.field(field::DST)[12..]);
            let cs = checksum(&ip);
            ip[10..12].copy_from_slice(&cs.to_be_bytes());
            out.extend_from_slice(&ip);
            let icmp_at = out.len();
            out.extend_from_slice(&[b[field::ICMP_TYPE], b[field::ICMP_CODE], 0, 0, 0, 0, 0, 0]);
            out.extend_from_slice(quote);
            let cs = checksum(&out[icmp_at..]);
            out[icmp_at + 2..icmp_at + 4].copy_from_slice(&cs.to_be_bytes());
        }
        Generated::NdNa | Generated::NdNaRouter => {
            eth(out, v, 0x86dd);
            let b = v.bytes();
            let payload_len: u16 = 32;
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&payload_len.to_be_bytes());
            out.push(58);
            out.push(b[field::TTL]);
            out.extend_from_slice(v.field(field::SRC));
            out.extend_from_slice(v.field(field::DST));
            let icmp_at = out.len();
            let flags: u8 = if kind == Generated::NdNaRouter {
                0xe0
            } else {
                0x60
            };
            out.extend_from_slice(&[136, 0, 0, 0, flags, 0, 0, 0]);
            out.extend_from_slice(v.field(field::ND_TARGET));
            out.extend_from_slice(&[2, 1]);
            out.extend_from_slice(v.field(field::THA));
            let mut pseudo = Vec::with_capacity(40 + 32);
            pseudo.extend_from_slice(v.field(field::SRC));
            pseudo.extend_from_slice(v.field(field::DST));
            pseudo.extend_from_slice(&u32::from(payload_len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            pseudo.extend_from_slice(&out[icmp_at..]);
            let cs = checksum(&pseudo);
            out[icmp_at + 2..icmp_at + 4].copy_from_slice(&cs.to_be_bytes());
        }
        other => return Err(GenerateError::Unsupported(other)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastpath_packet::checksum::verify;
    use fastpath_packet::extract;

    fn ping_frame(ttl: u8) -> Vec<u8> {
        let mut f = vec![0, 0, 0, 0, 0xff, 1, 0x50, 0x54, 0, 0, 0, 1, 8, 0];
        let mut ip = vec![
            0x45, 0, 0, 36, 0, 1, 0, 0, ttl, 1, 0, 0, 10, 0, 0, 11, 10, 0, 1, 13,
        ];
        let cs = checksum(&ip);
        ip[10..12].copy_from_slice(&cs.to_be_bytes());
        let mut icmp = vec![8, 0, 0, 0, 0, 7, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8];
        let cs = checksum(&icmp);
        icmp[2..4].copy_from_slice(&cs.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&icmp);
        f
    }

    #[test]
    fn icmp4_error_quotes_the_received_header() {
        let frame = ping_frame(1);
        let (key, layout) = extract(&frame, 0).unwrap();
        let mut v = FlowVector::from_key(&key, 1, 1);
        let b = v.bytes_mut();
        b[field::TTL] = 255;
        b[field::ICMP_TYPE] = 11;
        b[field::ICMP_CODE] = 0;
        // Router replies from its address to the sender.
        v.field_mut(field::SRC.start + 12..field::SRC.end)
            .copy_from_slice(&[10, 0, 0, 1]);
        v.field_mut(field::DST.start + 12..field::DST.end)
            .copy_from_slice(&[10, 0, 0, 11]);
        let mut out = Vec::new();
        build(Generated::Icmp4Error, &v, &frame, &layout, &mut out).unwrap();
        let (k2, l2) = extract(&out, 0).unwrap();
        assert_eq!(k2.icmp_type(), 11);
        assert_eq!(k2.ttl(), 255);
        assert_eq!(&k2.src()[12..], &[10, 0, 0, 1]);
        assert!(verify(&out[14..34]));
        assert!(verify(&out[usize::from(l2.l4)..]));
        // Quoted: the 20-byte IP header and 8 bytes of ICMP.
        assert_eq!(&out[42..70], &frame[14..42]);
    }

    #[test]
    fn arp_request_and_unsupported_kinds() {
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
        assert_eq!(
            build(Generated::TcpReset, &v, &frame, &layout, &mut out),
            Err(GenerateError::Unsupported(Generated::TcpReset))
        );
    }
}
