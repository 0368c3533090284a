//! From a verdict back to the frame: the header fields that differ between
//! the received flow key and an emission's vector, written into the frame
//! in place with incremental checksum updates (RFC 1624).
//!
//! Owns [`Rewrite`] (what a flow-cache entry stores: the changed-field set,
//! the final key, and the same rewrite precompiled for its flow as a few
//! stores plus a constant checksum delta per checksum) and
//! [`Rewrite::apply`] (the precompiled form; [`Rewrite::apply_fieldwise`]
//! is the field-by-field reference it is tested against). It must not run the pipeline.
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

/// The header rewrites of one emission. What [`Rewrite::apply`] reads
/// comes first (laid out in order): a cache hit reads the compiled form,
/// dumps and traces the final key.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    /// The same rewrite as stores and checksum deltas, for [`Rewrite::apply`].
    compiled: Compiled,
    /// Changed fields.
    pub changed: u32,
    /// The final key.
    pub key: FlowKey,
}

/// Bytes from the start of a [`Rewrite`] that applying it to an IPv4
/// flow reads (the compiled form up to the IPv4 addresses; an IPv6 flow
/// reads its 32 address bytes, ARP the block after them).
pub const IPV4_APPLY_BYTES: usize = std::mem::offset_of!(Compiled, addrs) + 8;

/// Blocks of a [`Compiled`] rewrite (bits of `Compiled::ops`).
mod op {
    /// Write `eth` (destination and source MAC) at offset 0.
    pub const ETH: u8 = 1 << 0;
    /// Write IPv4 TOS, TTL, source and destination; add `ip_delta` to the
    /// header checksum.
    pub const IP4: u8 = 1 << 1;
    /// Write the IPv6 hop limit, source and destination.
    pub const IP6: u8 = 1 << 2;
    /// Write the L4 source port.
    pub const SPORT: u8 = 1 << 3;
    /// Write the ICMP type and code.
    pub const ICMP: u8 = 1 << 4;
    /// Add `l4_delta` to the L4 checksum at `l4 + l4_csum`.
    pub const L4_CSUM: u8 = 1 << 5;
    /// Write the ARP operation, addresses and hardware addresses.
    pub const ARP: u8 = 1 << 6;
    /// Write the L4 destination port.
    pub const DPORT: u8 = 1 << 7;
}

/// A rewrite precompiled for its flow: the bytes to store and, per checksum,
/// the constant one's-complement sum of (`!old` + `new`) over the words it
/// covers. A cache entry matches every rewritable field exactly, so the old
/// values are the flow key's and the delta is the same for every packet of
/// the flow; only the checksum field itself (which covers the IPv4
/// identification, the payload, ...) is read per packet.
// Laid out in order, what every IP rewrite reads first (ARP last).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Compiled {
    ops: u8,
    /// UDP: a zero checksum over IPv4 means none (left alone), and a
    /// computed zero is sent as 0xffff.
    udp: bool,
    /// The flow is IPv4 (a zero UDP checksum there means none).
    ipv4: bool,
    /// Offset of the L4 checksum from the L4 header.
    l4_csum: u8,
    ip_delta: u32,
    l4_delta: u32,
    ttl: u8,
    tos: u8,
    icmp: [u8; 2],
    ports: [u8; 4],
    eth: [u8; 12],
    /// IPv4: source and destination (8 bytes); IPv6: both (32 bytes).
    addrs: [u8; 32],
    /// ARP from the operation to the target protocol address.
    arp: [u8; 22],
}

/// The one's-complement sum of `!old + new` over the 16-bit words of a field.
fn delta(old: &[u8], new: &[u8]) -> u32 {
    let mut s = 0u32;
    for (o, n) in old.chunks(2).zip(new.chunks(2)) {
        let o = u16::from_be_bytes([o[0], o.get(1).copied().unwrap_or(0)]);
        let n = u16::from_be_bytes([n[0], n.get(1).copied().unwrap_or(0)]);
        s += u32::from(!o) + u32::from(n);
        s = (s & 0xffff) + (s >> 16);
    }
    s
}

/// A checksum field after adding a precomputed delta (RFC 1624 eqn. 3).
#[inline(always)]
fn add_delta(checksum: u16, delta: u32) -> u16 {
    !fastpath_packet::checksum::fold(u32::from(!checksum) + delta)
}

impl Compiled {
    /// The stores and deltas that turn a frame of flow `o` into `n`, for the
    /// changed-field set `c` (checked by [`Rewrite::plan`]).
    fn new(o: &FlowKey, n: &FlowKey, c: u32) -> Compiled {
        let (ob, nb) = (o.as_bytes(), n.as_bytes());
        let mut x = Compiled::default();
        if c & (bit::ETH_DST | bit::ETH_SRC) != 0 {
            x.ops |= op::ETH;
            x.eth
                .copy_from_slice(&nb[field::ETH_DST.start..field::ETH_SRC.end]);
        }
        let kf = o.flags();
        if kf & flags::ARP != 0 {
            if c & (bit::ARP_OP | bit::SHA | bit::SRC | bit::THA | bit::DST) != 0 {
                x.ops |= op::ARP;
                x.arp[0..2].copy_from_slice(&nb[field::ARP_OP]);
                x.arp[2..8].copy_from_slice(&nb[field::SHA]);
                x.arp[8..12].copy_from_slice(&nb[field::SRC.start + 12..field::SRC.end]);
                x.arp[12..18].copy_from_slice(&nb[field::THA]);
                x.arp[18..22].copy_from_slice(&nb[field::DST.start + 12..field::DST.end]);
            }
            return x;
        }
        let v4 = kf & flags::IPV4 != 0;
        let v6 = kf & flags::IPV6 != 0;
        x.ipv4 = v4;
        if !v4 && !v6 {
            return x;
        }
        let proto = ob[field::IP_PROTO];
        let has_l4 = kf & flags::L4 != 0;
        let l4_csum = match proto {
            6 if has_l4 => Some(16u8),
            17 if has_l4 => Some(6),
            58 if has_l4 => Some(2),
            _ => None,
        };
        let icmp4 = proto == 1 && has_l4;
        x.udp = proto == 17;
        let addr = |f: std::ops::Range<usize>| if v4 { f.start + 12..f.end } else { f };
        let (src, dst) = (addr(field::SRC), addr(field::DST));
        let mut l4 = 0u32;
        if v4 && c & (bit::TTL | bit::TOS | bit::SRC | bit::DST) != 0 {
            x.ops |= op::IP4;
            x.ttl = nb[field::TTL];
            x.tos = nb[field::TOS];
            x.addrs[0..4].copy_from_slice(&nb[src.clone()]);
            x.addrs[4..8].copy_from_slice(&nb[dst.clone()]);
            let mut ip = 0u32;
            if c & bit::TTL != 0 {
                ip += delta(&[ob[field::TTL], proto], &[nb[field::TTL], proto]);
            }
            if c & bit::TOS != 0 {
                ip += delta(&[0, ob[field::TOS]], &[0, nb[field::TOS]]);
            }
            ip += delta(&ob[src.clone()], &nb[src.clone()]);
            ip += delta(&ob[dst.clone()], &nb[dst.clone()]);
            x.ip_delta = u32::from(fastpath_packet::checksum::fold(ip));
        }
        if v6 && c & (bit::TTL | bit::SRC | bit::DST) != 0 {
            x.ops |= op::IP6;
            x.ttl = nb[field::TTL];
            x.addrs
                .copy_from_slice(&nb[field::SRC.start..field::DST.end]);
        }
        if c & (bit::SRC | bit::DST) != 0 && l4_csum.is_some() {
            l4 += delta(&ob[src.clone()], &nb[src]);
            l4 += delta(&ob[dst.clone()], &nb[dst]);
        }
        // Each port is written only when it changes, so that a rewrite
        // does not depend on the other (a megaflow of a translated
        // destination serves every source port).
        if has_l4 && matches!(proto, 6 | 17 | 132) {
            for (b, o, f, at) in [
                (bit::TP_SRC, op::SPORT, field::TP_SRC, 0),
                (bit::TP_DST, op::DPORT, field::TP_DST, 2),
            ] {
                if c & b != 0 {
                    x.ops |= o;
                    x.ports[at..at + 2].copy_from_slice(&nb[f.clone()]);
                    if l4_csum.is_some() {
                        l4 += delta(&ob[f.clone()], &nb[f]);
                    }
                }
            }
        }
        if c & bit::ICMP != 0 && has_l4 && (icmp4 || proto == 58) {
            x.ops |= op::ICMP;
            x.icmp = [nb[field::ICMP_TYPE], nb[field::ICMP_CODE]];
            let d = delta(
                &[ob[field::ICMP_TYPE], ob[field::ICMP_CODE]],
                &[nb[field::ICMP_TYPE], nb[field::ICMP_CODE]],
            );
            if icmp4 {
                x.ops |= op::L4_CSUM;
                x.l4_csum = 2;
                x.udp = false;
            }
            l4 += d;
        }
        if let Some(cs) = l4_csum {
            if l4 != 0 {
                x.ops |= op::L4_CSUM;
                x.l4_csum = cs;
            }
        }
        x.l4_delta = u32::from(fastpath_packet::checksum::fold(l4));
        // An IPv4 UDP checksum of zero is "none"; the zero-means-none rule
        // does not hold over IPv6, where the computed value is still mapped.
        x.udp = x.udp && x.ops & op::L4_CSUM != 0;
        x
    }
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
        Ok(Rewrite {
            changed,
            key: new,
            compiled: Compiled::new(original, &new, changed),
        })
    }

    /// The rewrite that changes nothing, for a flow whose final key is `key`.
    pub fn identity(key: FlowKey) -> Rewrite {
        Rewrite {
            changed: 0,
            key,
            compiled: Compiled::default(),
        }
    }

    /// Calls `f` with each flow-key field [`Rewrite::apply`] writes into a
    /// frame (each block writes every field it covers, changed or not).
    pub fn for_each_written(&self, mut f: impl FnMut(std::ops::Range<usize>)) {
        let ops = self.compiled.ops;
        let mut each = |fields: &[std::ops::Range<usize>]| fields.iter().cloned().for_each(&mut f);
        if ops & op::ETH != 0 {
            each(&[field::ETH_DST, field::ETH_SRC]);
        }
        if ops & (op::IP4 | op::IP6) != 0 {
            each(&[
                field::TOS..field::TOS + 1,
                field::TTL..field::TTL + 1,
                field::SRC,
                field::DST,
            ]);
        }
        if ops & op::SPORT != 0 {
            each(&[field::TP_SRC]);
        }
        if ops & op::DPORT != 0 {
            each(&[field::TP_DST]);
        }
        if ops & op::ICMP != 0 {
            each(&[
                field::ICMP_TYPE..field::ICMP_TYPE + 1,
                field::ICMP_CODE..field::ICMP_CODE + 1,
            ]);
        }
        if ops & op::ARP != 0 {
            each(&[
                field::ARP_OP,
                field::SHA,
                field::SRC,
                field::THA,
                field::DST,
            ]);
        }
    }

    /// Whether nothing changes.
    pub fn is_identity(&self) -> bool {
        self.changed == 0
    }

    /// Writes the rewrite into a frame whose headers are at `layout` (the
    /// layout `extract` gave for the same key): the precompiled stores, and
    /// each checksum moved by its precomputed delta.
    #[inline]
    pub fn apply(&self, frame: &mut [u8], layout: &Layout) -> Result<(), RewriteError> {
        let x = &self.compiled;
        if x.ops == 0 {
            return Ok(());
        }
        if x.ops & op::ETH != 0 {
            put(frame, 0, &x.eth)?;
        }
        let l3 = usize::from(layout.l3);
        let l4 = usize::from(layout.l4);
        if x.ops & op::IP4 != 0 {
            let h = frame.get_mut(l3..l3 + 20).ok_or(RewriteError::Truncated)?;
            h[1] = x.tos;
            h[8] = x.ttl;
            let cs = add_delta(u16::from_be_bytes([h[10], h[11]]), x.ip_delta);
            h[10..12].copy_from_slice(&cs.to_be_bytes());
            h[12..20].copy_from_slice(&x.addrs[..8]);
        } else if x.ops & op::IP6 != 0 {
            let h = frame.get_mut(l3..l3 + 40).ok_or(RewriteError::Truncated)?;
            h[7] = x.ttl;
            h[8..40].copy_from_slice(&x.addrs);
        } else if x.ops & op::ARP != 0 {
            return put(frame, l3 + 6, &x.arp);
        }
        if x.ops & op::SPORT != 0 {
            put(frame, l4, &x.ports[..2])?;
        }
        if x.ops & op::DPORT != 0 {
            put(frame, l4 + 2, &x.ports[2..])?;
        }
        if x.ops & op::ICMP != 0 {
            put(frame, l4, &x.icmp)?;
        }
        if x.ops & op::L4_CSUM != 0 {
            let at = l4 + usize::from(x.l4_csum);
            let current = get16(frame, at)?;
            if x.udp && current == 0 && x.ipv4 {
                return Ok(());
            }
            let updated = add_delta(current, x.l4_delta);
            let updated = if x.udp && updated == 0 {
                0xffff
            } else {
                updated
            };
            frame[at..at + 2].copy_from_slice(&updated.to_be_bytes());
        }
        Ok(())
    }

    /// The same rewrite done field by field, reading each old value from
    /// the frame and updating the checksums one field at a time: the
    /// reference [`Rewrite::apply`] is tested against.
    pub fn apply_fieldwise(&self, frame: &mut [u8], layout: &Layout) -> Result<(), RewriteError> {
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

    /// A small deterministic generator (xorshift) for the rewrite sets.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, out: &mut [u8]) {
            for b in out {
                *b = self.next() as u8;
            }
        }
    }

    /// A frame with valid checksums: IPv4 (with `options` bytes of IPv4
    /// options) or IPv6, carrying `proto` (TCP, UDP, ICMPv4, ICMPv6) with
    /// 13 bytes of payload; `udp_zero` leaves a UDP checksum at zero.
    fn frame(v6: bool, proto: u8, options: usize, udp_zero: bool, rng: &mut Rng) -> Vec<u8> {
        use fastpath_packet::checksum::{
            checksum, finish, pseudo_header_v4, pseudo_header_v6, sum,
        };
        let mut l4 = match proto {
            6 => {
                let mut t = vec![0u8; 20];
                rng.bytes(&mut t[..12]);
                t[12] = 0x50;
                t[13] = 0x18;
                t
            }
            17 => {
                let mut u = vec![0u8; 8];
                rng.bytes(&mut u[..4]);
                u
            }
            _ => {
                let mut i = vec![0u8; 8];
                rng.bytes(&mut i[..2]);
                rng.bytes(&mut i[4..]);
                i
            }
        };
        let mut payload = [0u8; 13];
        rng.bytes(&mut payload);
        l4.extend_from_slice(&payload);
        let len = l4.len() as u16;
        if proto == 17 {
            l4[4..6].copy_from_slice(&len.to_be_bytes());
        }
        let mut f = vec![0u8; 12];
        rng.bytes(&mut f);
        f[0] &= 0xfe;
        let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
        rng.bytes(&mut src);
        rng.bytes(&mut dst);
        let cs_at = match proto {
            6 => 16,
            17 => 6,
            _ => 2,
        };
        if v6 {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&len.to_be_bytes());
            f.extend_from_slice(&[proto, 1 + rng.next() as u8 % 255]);
            f.extend_from_slice(&src);
            f.extend_from_slice(&dst);
            let ph = pseudo_header_v6(&src, &dst, proto, u32::from(len));
            let cs = finish(sum(ph, &l4));
            l4[cs_at..cs_at + 2].copy_from_slice(&cs.to_be_bytes());
        } else {
            let hlen = 20 + options;
            let mut ip = vec![0u8; hlen];
            ip[0] = 0x40 | (hlen / 4) as u8;
            ip[1] = rng.next() as u8 & 0xfc;
            ip[2..4].copy_from_slice(&(hlen as u16 + len).to_be_bytes());
            rng.bytes(&mut ip[4..6]);
            ip[8] = 2 + rng.next() as u8 % 250;
            ip[9] = proto;
            ip[12..16].copy_from_slice(&src[12..]);
            ip[16..20].copy_from_slice(&dst[12..]);
            for o in ip[20..].iter_mut() {
                *o = 1; // NOP options
            }
            let cs = checksum(&ip);
            ip[10..12].copy_from_slice(&cs.to_be_bytes());
            f.extend_from_slice(&[0x08, 0x00]);
            f.extend_from_slice(&ip);
            if proto != 1 && !udp_zero {
                let s4 = |a: &[u8; 16]| [a[12], a[13], a[14], a[15]];
                let ph = pseudo_header_v4(s4(&src), s4(&dst), proto, len);
                let cs = finish(sum(ph, &l4));
                l4[cs_at..cs_at + 2].copy_from_slice(&cs.to_be_bytes());
            } else if proto == 1 {
                let cs = checksum(&l4);
                l4[2..4].copy_from_slice(&cs.to_be_bytes());
            }
        }
        f.extend_from_slice(&l4);
        f.resize(f.len().max(60), 0);
        f
    }

    /// Whether the IPv4 header and L4 checksums of a frame verify (a zero
    /// UDP checksum over IPv4 counts as valid).
    fn checksums_valid(f: &[u8]) -> bool {
        use fastpath_packet::checksum::{fold, pseudo_header_v4, pseudo_header_v6, sum};
        let (key, layout) = extract(f, 0).unwrap();
        let (l3, l4, end) = (
            usize::from(layout.l3),
            usize::from(layout.l4),
            usize::from(layout.end),
        );
        let proto = key.ip_proto();
        let len = (end - l4) as u16;
        let upper = &f[l4..end];
        if key.is_ipv4() {
            if !verify(&f[l3..l4]) {
                return false;
            }
            if proto == 1 {
                return verify(upper);
            }
            if proto == 17 && upper[6..8] == [0, 0] {
                return true;
            }
            let a = |at: usize| [f[at], f[at + 1], f[at + 2], f[at + 3]];
            let ph = pseudo_header_v4(a(l3 + 12), a(l3 + 16), proto, len);
            fold(sum(ph, upper)) == 0xffff
        } else {
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&f[l3 + 8..l3 + 24]);
            dst.copy_from_slice(&f[l3 + 24..l3 + 40]);
            let ph = pseudo_header_v6(&src, &dst, proto, u32::from(len));
            fold(sum(ph, upper)) == 0xffff
        }
    }

    /// On a set of frames (IPv4 with and without options, IPv6; TCP, UDP
    /// with and without checksum, ICMP) and random sets of changed fields,
    /// the precompiled rewrite writes exactly the bytes the field-by-field
    /// rewrite writes, the checksums verify, and the frame parses back to
    /// the planned key.
    #[test]
    fn precompiled_rewrite_matches_fieldwise_and_keeps_checksums_valid() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut checked = 0;
        for round in 0..3000 {
            let v6 = round % 3 == 2;
            let proto = match (round / 3) % 4 {
                0 => 6,
                1 => 17,
                _ if v6 => 58,
                _ => 1,
            };
            let options = if !v6 && round % 5 == 0 { 8 } else { 0 };
            let udp_zero = !v6 && proto == 17 && round % 7 == 0;
            let original = frame(v6, proto, options, udp_zero, &mut rng);
            assert!(checksums_valid(&original), "fixture {round}");
            let (key, layout) = extract(&original, 3).unwrap();
            let mut v = FlowVector::from_key(&key, 1, 1);
            let which = rng.next();
            let mut set = |f: std::ops::Range<usize>, bit: u32, rng: &mut Rng| {
                if which & (1 << bit) != 0 {
                    rng.bytes(v.field_mut(f));
                }
            };
            set(field::ETH_DST, 0, &mut rng);
            set(field::ETH_SRC, 1, &mut rng);
            set(field::TTL..field::TTL + 1, 2, &mut rng);
            if !v6 {
                set(field::TOS..field::TOS + 1, 3, &mut rng);
                set(field::SRC.start + 12..field::SRC.end, 4, &mut rng);
                set(field::DST.start + 12..field::DST.end, 5, &mut rng);
            } else {
                set(field::SRC, 4, &mut rng);
                set(field::DST, 5, &mut rng);
            }
            if matches!(proto, 6 | 17) {
                set(field::TP_SRC, 6, &mut rng);
                set(field::TP_DST, 7, &mut rng);
            } else {
                set(field::ICMP_TYPE..field::ICMP_CODE + 1, 8, &mut rng);
            }
            let rw = Rewrite::plan(&key, &v).unwrap();
            let mut fast = original.clone();
            let mut reference = original.clone();
            rw.apply(&mut fast, &layout).unwrap();
            rw.apply_fieldwise(&mut reference, &layout).unwrap();
            assert_eq!(fast, reference, "round {round}: changed {:#x}", rw.changed);
            assert!(checksums_valid(&fast), "round {round}: checksums");
            let (again, _) = extract(&fast, 3).unwrap();
            assert_eq!(again, rw.key, "round {round}: parses to the planned key");
            checked += usize::from(!rw.is_identity());
        }
        assert!(checked > 2900, "{checked} non-identity rewrites checked");
    }

    #[test]
    fn precompiled_rewrite_of_arp_and_truncated_frames() {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 10, 0, 0, 1]);
        f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
        f.resize(60, 0);
        let (key, layout) = extract(&f, 0).unwrap();
        let mut v = FlowVector::from_key(&key, 1, 1);
        v.field_mut(field::ARP_OP).copy_from_slice(&[0, 2]);
        v.field_mut(field::THA).copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        v.field_mut(field::SHA).copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        v.field_mut(field::SRC.start + 12..field::SRC.end)
            .copy_from_slice(&[10, 0, 0, 2]);
        v.field_mut(field::DST.start + 12..field::DST.end)
            .copy_from_slice(&[10, 0, 0, 1]);
        v.field_mut(field::ETH_DST)
            .copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        let rw = Rewrite::plan(&key, &v).unwrap();
        let (mut a, mut b) = (f.clone(), f.clone());
        rw.apply(&mut a, &layout).unwrap();
        rw.apply_fieldwise(&mut b, &layout).unwrap();
        assert_eq!(a, b);
        assert_eq!(extract(&a, 0).unwrap().0, rw.key);
        // A frame shorter than the layout says is refused, not a panic.
        let mut short = udp_frame();
        let (key, layout) = extract(&short, 0).unwrap();
        let mut v = FlowVector::from_key(&key, 1, 1);
        v.field_mut(field::TP_DST).copy_from_slice(&[0, 53]);
        let rw = Rewrite::plan(&key, &v).unwrap();
        short.truncate(36);
        assert_eq!(rw.apply(&mut short, &layout), Err(RewriteError::Truncated));
    }
}
