//! NAT: what a commit asks for ([`NatRange`]), what a tracked packet must have
//! rewritten ([`Translation`]), and [`apply_translation`], which rewrites a
//! frame in place with incremental checksum updates (RFC 1624).
//!
//! Owns header rewriting for translated connections, the embedded header of
//! ICMP errors included. It never decides a translation (the table does) and
//! never touches anything outside the frame it is given.

use super::tuple::{is_icmp, is_icmp_error, parse_quoted_at};
use fastpath_packet::checksum::{self, update_bytes};
use fastpath_packet::{ip_proto, Layout};
use std::net::IpAddr;

/// A NAT target: an address range and an optional port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatRange {
    /// First address of the range.
    pub addr_min: IpAddr,
    /// Last address of the range (equal to `addr_min` for one address).
    pub addr_max: IpAddr,
    /// Inclusive port range; `None` keeps the port (SNAT still moves it to
    /// 1024..=65535 when the original port collides).
    pub ports: Option<(u16, u16)>,
}

impl NatRange {
    /// One address, any port.
    pub fn addr(a: IpAddr) -> NatRange {
        NatRange {
            addr_min: a,
            addr_max: a,
            ports: None,
        }
    }

    /// One address and one port.
    pub fn addr_port(a: IpAddr, port: u16) -> NatRange {
        NatRange {
            addr_min: a,
            addr_max: a,
            ports: Some((port, port)),
        }
    }
}

/// One endpoint rewrite: address (16 bytes, IPv4 v4-mapped) and port (for
/// ICMP echo: the identifier) from their old to their new value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewrite {
    /// Address the packet carries.
    pub from_addr: [u8; 16],
    /// Address to write.
    pub to_addr: [u8; 16],
    /// Port (or echo identifier) the packet carries.
    pub from_port: u16,
    /// Port (or echo identifier) to write.
    pub to_port: u16,
}

/// The translation a packet of a NATed connection needs, for its direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Rewrite of the source endpoint.
    pub src: Option<Rewrite>,
    /// Rewrite of the destination endpoint.
    pub dst: Option<Rewrite>,
    /// IP protocol of the connection.
    pub proto: u8,
    /// IPv6 (true) or IPv4.
    pub ipv6: bool,
    /// For an ICMP/ICMPv6 error related to the connection: the outer header
    /// is ICMP and the quoted packet is translated too.
    pub related: bool,
}

/// Why a frame could not be translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The layout points outside the frame, or a header is cut short.
    #[error("frame too short for the headers to rewrite")]
    Truncated,
    /// The frame's IP version is not the translation's family.
    #[error("frame family differs from the connection's")]
    FamilyMismatch,
    /// A translation for a related packet, but the frame is no ICMP error.
    #[error("related translation on a frame that is not an ICMP error")]
    NotIcmpError,
}

type R<T> = Result<T, RewriteError>;

fn get(f: &mut [u8], at: usize, n: usize) -> R<&mut [u8]> {
    f.get_mut(at..at + n).ok_or(RewriteError::Truncated)
}

fn read16(f: &[u8], at: usize) -> R<u16> {
    f.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(RewriteError::Truncated)
}

/// Folds the change `old -> new` of a covered field into the checksum at `c`.
/// `udp_zero`: a zero checksum means "none" (UDP over IPv4) and stays zero.
fn fix(f: &mut [u8], c: usize, old: &[u8], new: &[u8], udp_zero: bool) -> R<()> {
    let cur = read16(f, c)?;
    if udp_zero && cur == 0 {
        return Ok(());
    }
    let mut v = update_bytes(cur, old, new).ok_or(RewriteError::Truncated)?;
    if udp_zero && v == 0 {
        v = 0xffff;
    }
    get(f, c, 2)?.copy_from_slice(&v.to_be_bytes());
    Ok(())
}

/// Offsets inside one IP packet (outer or quoted).
struct Ip {
    l3: usize,
    l4: usize,
    /// Where the L4 bytes we may touch end.
    end: usize,
    ipv6: bool,
    proto: u8,
}

impl Ip {
    fn addr_at(&self, src: bool) -> (usize, usize) {
        match (self.ipv6, src) {
            (false, true) => (self.l3 + 12, 4),
            (false, false) => (self.l3 + 16, 4),
            (true, true) => (self.l3 + 8, 16),
            (true, false) => (self.l3 + 24, 16),
        }
    }

    /// L4 checksum offset and whether the pseudo-header is covered, if the
    /// checksum lies inside the bytes we have.
    fn l4_csum(&self) -> Option<(usize, bool, bool)> {
        let (off, pseudo, udp) = match self.proto {
            ip_proto::TCP => (16, true, false),
            ip_proto::UDP => (6, true, !self.ipv6),
            p if is_icmp(p, self.ipv6) => (2, self.ipv6, false),
            _ => return None,
        };
        (self.l4 + off + 2 <= self.end).then_some((self.l4 + off, pseudo, udp))
    }

    /// Rewrites the src (or dst) address to `to` if it currently is `from`
    /// (or unconditionally with `force`). Returns whether it changed.
    fn set_addr(&self, f: &mut [u8], src: bool, rw: &Rewrite, force: bool) -> R<bool> {
        let (at, n) = self.addr_at(src);
        let from = &rw.from_addr[16 - n..];
        let to = &rw.to_addr[16 - n..];
        let cur = get(f, at, n)?;
        if cur != from && !force {
            return Ok(false);
        }
        let old: [u8; 16] = {
            let mut o = [0u8; 16];
            o[..n].copy_from_slice(cur);
            o
        };
        if &old[..n] == to {
            return Ok(false);
        }
        cur.copy_from_slice(to);
        if !self.ipv6 {
            fix(f, self.l3 + 10, &old[..n], to, false)?;
        }
        if let Some((c, true, udp)) = self.l4_csum() {
            fix(f, c, &old[..n], to, udp)?;
        }
        Ok(true)
    }

    /// Rewrites the L4 port (TCP/UDP/SCTP) or ICMP echo identifier.
    fn set_port(&self, f: &mut [u8], src: bool, to: u16) -> R<()> {
        let at = match self.proto {
            ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP => self.l4 + if src { 0 } else { 2 },
            p if is_icmp(p, self.ipv6) => self.l4 + 4,
            _ => return Ok(()),
        };
        if at + 2 > self.end {
            return Err(RewriteError::Truncated);
        }
        let old = read16(f, at)?;
        if old == to {
            return Ok(());
        }
        get(f, at, 2)?.copy_from_slice(&to.to_be_bytes());
        if let Some((c, _, udp)) = self.l4_csum() {
            fix(f, c, &old.to_be_bytes(), &to.to_be_bytes(), udp)?;
        }
        Ok(())
    }
}

/// Applies `t` to the frame in place: IP addresses, L4 ports or ICMP echo
/// identifier, IPv4 header and L4 checksums updated incrementally.
///
/// For an ICMP error (related to a translated connection) the quoted packet
/// is translated the opposite way (its source is the connection's
/// destination for this direction), with its IPv4 header checksum and, when
/// quoted, its L4 checksum; an outer address is rewritten only where it is
/// the translated one (an error from a router in between keeps the router's
/// address); the outer ICMP checksum is then recomputed over the message.
pub fn apply_translation(frame: &mut [u8], layout: &Layout, t: &Translation) -> R<()> {
    let end = (layout.end as usize).min(frame.len());
    let l3 = layout.l3 as usize;
    let ver = frame.get(l3).ok_or(RewriteError::Truncated)? >> 4;
    if ver != if t.ipv6 { 6 } else { 4 } {
        return Err(RewriteError::FamilyMismatch);
    }
    let ip = Ip {
        l3,
        l4: layout.l4 as usize,
        end,
        ipv6: t.ipv6,
        proto: t.proto,
    };
    if t.related {
        let ty = frame.get(ip.l4).copied().ok_or(RewriteError::Truncated)?;
        if !is_icmp_error(ty, t.ipv6) {
            return Err(RewriteError::NotIcmpError);
        }
        let outer = Ip {
            proto: if t.ipv6 {
                ip_proto::ICMPV6
            } else {
                ip_proto::ICMPV4
            },
            ..ip
        };
        return apply_related(frame, &outer, t);
    }
    if let Some(rw) = &t.src {
        ip.set_addr(frame, true, rw, true)?;
        ip.set_port(frame, true, rw.to_port)?;
    }
    if let Some(rw) = &t.dst {
        ip.set_addr(frame, false, rw, true)?;
        ip.set_port(frame, false, rw.to_port)?;
    }
    Ok(())
}

fn apply_related(frame: &mut [u8], outer: &Ip, t: &Translation) -> R<()> {
    let q_start = outer.l4 + 8;
    let quoted = frame
        .get(q_start..outer.end)
        .ok_or(RewriteError::Truncated)?;
    let q = parse_quoted_at(quoted, t.ipv6).ok_or(RewriteError::Truncated)?;
    let inner = Ip {
        l3: q_start,
        l4: q_start + q.l4,
        end: outer.end,
        ipv6: t.ipv6,
        proto: q.tuple.proto,
    };
    // The quoted packet went the other way: its source is this direction's
    // destination and its destination this direction's source.
    if let Some(rw) = &t.dst {
        inner.set_addr(frame, true, rw, false)?;
        if q.tuple.has_ports() || q.tuple.is_icmp() {
            inner.set_port(frame, true, rw.to_port)?;
        }
        outer.set_addr(frame, false, rw, false)?;
    }
    if let Some(rw) = &t.src {
        inner.set_addr(frame, false, rw, false)?;
        if q.tuple.has_ports() || (q.tuple.is_icmp() && t.dst.is_none()) {
            inner.set_port(frame, false, rw.to_port)?;
        }
        outer.set_addr(frame, true, rw, false)?;
    }
    // Outer ICMP checksum over the whole message, from scratch.
    let c = outer.l4 + 2;
    get(frame, c, 2)?.copy_from_slice(&[0, 0]);
    let msg = frame
        .get(outer.l4..outer.end)
        .ok_or(RewriteError::Truncated)?;
    let sum = if t.ipv6 {
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s.copy_from_slice(&frame[outer.l3 + 8..outer.l3 + 24]);
        d.copy_from_slice(&frame[outer.l3 + 24..outer.l3 + 40]);
        let len = u32::try_from(msg.len()).map_err(|_| RewriteError::Truncated)?;
        checksum::sum(
            checksum::pseudo_header_v6(&s, &d, ip_proto::ICMPV6, len),
            msg,
        )
    } else {
        checksum::sum(0, msg)
    };
    let v = checksum::finish(sum);
    get(frame, c, 2)?.copy_from_slice(&v.to_be_bytes());
    Ok(())
}
