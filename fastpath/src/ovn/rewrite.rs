//! From a verdict back to the frame: the header fields that differ between
//! the received flow key and an emission's vector, written into the frame
//! in place with incremental checksum updates (RFC 1624).
//!
//! Owns [`Rewrite`] (what a flow-cache entry stores: the changed-field set
//! and the final key) and [`Rewrite::apply`]. It must not run the pipeline.
//! A change this module cannot write (the EtherType, VLAN tags, the IPv6
//! traffic class or flow label) is refused with [`RewriteError`], and the
//! packet is dropped under a named reason rather than sent half-rewritten.

use fastpath_packet::checksum::update_bytes;
use fastpath_packet::flowkey::{field, flags};
use fastpath_packet::{FlowKey, Layout};

use super::vector::FlowVector;

/// Why a rewrite cannot be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The pipeline changed a field this module does not write.
    #[error("the pipeline changed {0}, which the fastpath cannot rewrite")]
    Unsupported(&'static str),
    /// The frame is shorter than its layout says.
    #[error("frame shorter than its headers")]
    Truncated,
}

/// Fields a rewrite can change (bits of [`Rewrite::changed`]).
mod bit {
    pub const ETH_DST: u32 = 1 << 0;
    pub const ETH_SRC: u32 = 1 << 1;
    pub const TTL: u32 = 1 << 2;
    pub const TOS: u32 = 1 << 3;
    pub const SRC: u32 = 1 << 4;
    pub const DST: u32 = 1 << 5;
    pub const TP_SRC: u32 = 1 << 6;
    pub const TP_DST: u32 = 1 << 7;
    pub const ICMP: u32 = 1 << 8;
    pub const ARP_OP: u32 = 1 << 9;
    pub const SHA: u32 = 1 << 10;
    pub const THA: u32 = 1 << 11;
}

/// The header rewrites of one emission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    /// Changed fields.
    pub changed: u32,
    /// The final key.
    pub key: FlowKey,
}

impl Rewrite {
    /// The rewrite that turns `original` into the emission's headers.
    pub fn plan(original: &FlowKey, emitted: &FlowVector) -> Result<Rewrite, RewriteError> {
        let new = emitted.key();
        let (o, n) = (original.as_bytes(), new.as_bytes());
        let differs = |f: std::ops::Range<usize>| o[f.clone()] != n[f];
        let byte = |i: usize| o[i] != n[i];
        for (f, name) in [
            (field::ETH_TYPE, "eth.type"),
            (field::VLAN_TCI, "vlan.tci"),
            (field::INNER_VLAN_TCI, "vlan.tci"),
            (field::FLOW_LABEL, "ip6.label"),
            (field::ND_TARGET, "nd.target"),
            (field::TCP_FLAGS, "tcp.flags"),
        ] {
            if differs(f) {
                return Err(RewriteError::Unsupported(name));
            }
        }
        if byte(field::FLAGS) || byte(field::IP_PROTO) || byte(field::FRAG) {
            return Err(RewriteError::Unsupported("ip.proto"));
        }
        let is_arp = original.flags() & flags::ARP != 0;
        let mut changed = 0;
        for (cond, b) in [
            (differs(field::ETH_DST), bit::ETH_DST),
            (differs(field::ETH_SRC), bit::ETH_SRC),
            (byte(field::TTL), bit::TTL),
            (byte(field::TOS), bit::TOS),
            (differs(field::SRC), bit::SRC),
            (differs(field::DST), bit::DST),
            (differs(field::TP_SRC), bit::TP_SRC),
            (differs(field::TP_DST), bit::TP_DST),
            (byte(field::ICMP_TYPE) || byte(field::ICMP_CODE), bit::ICMP),
            (differs(field::ARP_OP), bit::ARP_OP),
            (differs(field::SHA), bit::SHA),
            (differs(field::THA), bit::THA),
        ] {
            if cond {
                changed |= b;
            }
        }
        if changed & (bit::SHA | bit::THA) != 0 && !is_arp {
            return Err(RewriteError::Unsupported("nd.sll"));
        }
        if original.is_ipv6() && changed & bit::TOS != 0 {
            return Err(RewriteError::Unsupported("ip.dscp"));
        }
        Ok(Rewrite { changed, key: new })
    }

    /// Whether nothing changes.
    pub fn is_identity(&self) -> bool {
        self.changed == 0
    }

    /// Writes the rewrite into a frame whose headers are at `layout` (the
    /// layout `extract` gave for the same key).
    pub fn apply(&self, frame: &mut [u8], layout: &Layout) -> Result<(), RewriteError> {
        if self.changed == 0 {
            return Ok(());
        }
        let k = self.key.as_bytes();
        let c = self.changed;
        if c & bit::ETH_DST != 0 {
            put(frame, 0, &k[field::ETH_DST])?;
        }
        if c & bit::ETH_SRC != 0 {
            put(frame, 6, &k[field::ETH_SRC])?;
        }
        let l3 = usize::from(layout.l3);
        let l4 = usize::from(layout.l4);
        let kf = self.key.flags();
        if kf & flags::ARP != 0 {
            if c & bit::ARP_OP != 0 {
                put(frame, l3 + 6, &k[field::ARP_OP])?;
            }
            if c & bit::SHA != 0 {
                put(frame, l3 + 8, &k[field::SHA])?;
            }
            if c & bit::SRC != 0 {
                put(frame, l3 + 14, &k[field::SRC.start + 12..field::SRC.end])?;
            }
            if c & bit::THA != 0 {
                put(frame, l3 + 18, &k[field::THA])?;
            }
            if c & bit::DST != 0 {
                put(frame, l3 + 24, &k[field::DST.start + 12..field::DST.end])?;
            }
            return Ok(());
        }
        let v4 = kf & flags::IPV4 != 0;
        let v6 = kf & flags::IPV6 != 0;
        if !v4 && !v6 {
            return Ok(());
        }
        let proto = k[field::IP_PROTO];
        let has_l4 = kf & flags::L4 != 0;
        // Offset of the L4 checksum, if the L4 header carries one that
        // covers the pseudo-header.
        let l4_csum = match proto {
            6 if has_l4 => Some(l4 + 16),
            17 if has_l4 => Some(l4 + 6),
            58 if has_l4 => Some(l4 + 2),
            _ => None,
        };
        let icmp4_csum = (proto == 1 && has_l4).then_some(l4 + 2);
        let l4_edit = |frame: &mut [u8], at: usize, new: &[u8]| {
            let old = old_bytes(frame, at..at + new.len())?;
            if let Some(cs) = l4_csum {
                // A zero UDP checksum over IPv4 means "none": leave it.
                let current = get16(frame, cs)?;
                if !(proto == 17 && v4 && current == 0) {
                    let updated =
                        update_bytes(current, &old, new).ok_or(RewriteError::Truncated)?;
                    let updated = if proto == 17 && updated == 0 {
                        0xffff
                    } else {
                        updated
                    };
                    frame[cs..cs + 2].copy_from_slice(&updated.to_be_bytes());
                }
            }
            put(frame, at, new)
        };
        if v4 {
            let ip_edit = |frame: &mut [u8], at: usize, new: &[u8]| -> Result<(), RewriteError> {
                let old = old_bytes(frame, at..at + new.len())?;
                let cs = get16(frame, l3 + 10)?;
                let updated = update_bytes(cs, &old, new).ok_or(RewriteError::Truncated)?;
                frame[l3 + 10..l3 + 12].copy_from_slice(&updated.to_be_bytes());
                put(frame, at, new)
            };
            if c & (bit::TTL) != 0 {
                ip_edit(frame, l3 + 8, &[k[field::TTL], proto])?;
            }
            if c & bit::TOS != 0 {
                let first = *frame.get(l3).ok_or(RewriteError::Truncated)?;
                ip_edit(frame, l3, &[first, k[field::TOS]])?;
            }
            if c & bit::SRC != 0 {
                let new = &k[field::SRC.start + 12..field::SRC.end];
                if l4_csum.is_some() {
                    let old = old_bytes(frame, l3 + 12..l3 + 16)?;
                    pseudo_update(frame, l4_csum, proto, v4, &old, new)?;
                }
                ip_edit(frame, l3 + 12, new)?;
            }
            if c & bit::DST != 0 {
                let new = &k[field::DST.start + 12..field::DST.end];
                if l4_csum.is_some() {
                    let old = old_bytes(frame, l3 + 16..l3 + 20)?;
                    pseudo_update(frame, l4_csum, proto, v4, &old, new)?;
                }
                ip_edit(frame, l3 + 16, new)?;
            }
        } else {
            if c & bit::TTL != 0 {
                put(frame, l3 + 7, &[k[field::TTL]])?;
            }
            if c & bit::SRC != 0 {
                let old = old_bytes(frame, l3 + 8..l3 + 24)?;
                pseudo_update(frame, l4_csum, proto, v4, &old, &k[field::SRC])?;
                put(frame, l3 + 8, &k[field::SRC])?;
            }
            if c & bit::DST != 0 {
                let old = old_bytes(frame, l3 + 24..l3 + 40)?;
                pseudo_update(frame, l4_csum, proto, v4, &old, &k[field::DST])?;
                put(frame, l3 + 24, &k[field::DST])?;
            }
        }
        if c & (bit::TP_SRC | bit::TP_DST) != 0 && has_l4 && matches!(proto, 6 | 17 | 132) {
            if c & bit::TP_SRC != 0 {
                l4_edit(frame, l4, &k[field::TP_SRC])?;
            }
            if c & bit::TP_DST != 0 {
                l4_edit(frame, l4 + 2, &k[field::TP_DST])?;
            }
        }
        if c & bit::ICMP != 0 && has_l4 {
            let new = [k[field::ICMP_TYPE], k[field::ICMP_CODE]];
            if let Some(cs) = icmp4_csum {
                let old = old_bytes(frame, l4..l4 + 2)?;
                let current = get16(frame, cs)?;
                let updated = update_bytes(current, &old, &new).ok_or(RewriteError::Truncated)?;
                frame[cs..cs + 2].copy_from_slice(&updated.to_be_bytes());
                put(frame, l4, &new)?;
            } else if proto == 58 {
                l4_edit(frame, l4, &new)?;
            }
        }
        Ok(())
    }
}

/// Up to 16 bytes copied out of a frame (on the stack: `apply` runs per
/// packet and must not allocate).
struct OldBytes {
    buf: [u8; 16],
    len: usize,
}

impl std::ops::Deref for OldBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[inline(always)]
fn old_bytes(frame: &[u8], range: std::ops::Range<usize>) -> Result<OldBytes, RewriteError> {
    let src = frame.get(range).ok_or(RewriteError::Truncated)?;
    let mut buf = [0u8; 16];
    let dst = buf.get_mut(..src.len()).ok_or(RewriteError::Truncated)?;
    dst.copy_from_slice(src);
    Ok(OldBytes {
        buf,
        len: src.len(),
    })
}

fn put(frame: &mut [u8], at: usize, bytes: &[u8]) -> Result<(), RewriteError> {
    frame
        .get_mut(at..at + bytes.len())
        .ok_or(RewriteError::Truncated)?
        .copy_from_slice(bytes);
    Ok(())
}

fn get16(frame: &[u8], at: usize) -> Result<u16, RewriteError> {
    let b = frame.get(at..at + 2).ok_or(RewriteError::Truncated)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

/// Updates an L4 checksum for an address change in the pseudo-header.
fn pseudo_update(
    frame: &mut [u8],
    l4_csum: Option<usize>,
    proto: u8,
    v4: bool,
    old: &[u8],
    new: &[u8],
) -> Result<(), RewriteError> {
    let Some(cs) = l4_csum else { return Ok(()) };
    let current = get16(frame, cs)?;
    if proto == 17 && v4 && current == 0 {
        return Ok(());
    }
    let updated = update_bytes(current, old, new).ok_or(RewriteError::Truncated)?;
    let updated = if proto == 17 && updated == 0 {
        0xffff
    } else {
        updated
    };
    frame[cs..cs + 2].copy_from_slice(&updated.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastpath_packet::checksum::verify;
    use fastpath_packet::extract;

    /// Ethernet + IPv4 + UDP with valid checksums.
    fn udp_frame() -> Vec<u8> {
        let mut f = vec![0x50, 0x54, 0, 0, 0, 2, 0x50, 0x54, 0, 0, 0, 1, 0x08, 0x00];
        let mut ip = vec![
            0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 11, 10, 0, 1, 13,
        ];
        let cs = fastpath_packet::checksum::checksum(&ip);
        ip[10..12].copy_from_slice(&cs.to_be_bytes());
        let mut udp = vec![0x03, 0xe8, 0x07, 0xd0, 0, 12, 0, 0, 1, 2, 3, 4];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip[12..20]);
        pseudo.extend_from_slice(&[0, 17, 0, 12]);
        pseudo.extend_from_slice(&udp);
        let cs = fastpath_packet::checksum::checksum(&pseudo);
        udp[6..8].copy_from_slice(&cs.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&udp);
        f
    }

    fn udp_checksum_ok(f: &[u8]) -> bool {
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 17, 0, 12]);
        pseudo.extend_from_slice(&f[34..46]);
        verify(&pseudo)
    }

    #[test]
    fn routed_rewrite_keeps_checksums_valid() {
        let mut frame = udp_frame();
        let (key, layout) = extract(&frame, 0).unwrap();
        let mut v = FlowVector::from_key(&key, 1, 1);
        v.field_mut(field::ETH_SRC)
            .copy_from_slice(&[0, 0, 0, 0, 0xff, 2]);
        v.field_mut(field::ETH_DST)
            .copy_from_slice(&[0x50, 0x54, 0, 0, 0, 3]);
        v.bytes_mut()[field::TTL] = 63;
        v.field_mut(field::DST.start + 12..field::DST.end)
            .copy_from_slice(&[192, 168, 0, 9]);
        v.field_mut(field::TP_DST).copy_from_slice(&[0x1f, 0x90]);
        let rw = Rewrite::plan(&key, &v).unwrap();
        assert!(!rw.is_identity());
        rw.apply(&mut frame, &layout).unwrap();
        assert_eq!(
            &frame[0..12],
            &[0x50, 0x54, 0, 0, 0, 3, 0, 0, 0, 0, 0xff, 2]
        );
        assert_eq!(frame[22], 63);
        assert_eq!(&frame[30..34], &[192, 168, 0, 9]);
        assert!(verify(&frame[14..34]), "IPv4 header checksum");
        assert!(
            udp_checksum_ok(&frame),
            "UDP checksum over the new pseudo-header"
        );
        let (again, _) = extract(&frame, 0).unwrap();
        assert_eq!(again, v.key());
    }

    #[test]
    fn unwritable_changes_are_refused() {
        let frame = udp_frame();
        let (key, _) = extract(&frame, 0).unwrap();
        let mut v = FlowVector::from_key(&key, 1, 1);
        v.field_mut(field::ETH_TYPE).copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(
            Rewrite::plan(&key, &v),
            Err(RewriteError::Unsupported("eth.type"))
        );
        let same = FlowVector::from_key(&key, 9, 9);
        assert!(Rewrite::plan(&key, &same).unwrap().is_identity());
    }
}
