//! The conntrack fuzz body, shared by the cargo-fuzz target and a seeded unit
//! test: bytes drive a sequence of (zone, packet, lookup / commit / touch,
//! time advance) steps against a small table, and invariants are checked
//! after every step. Owns nothing but the driver; it panics only when an
//! invariant breaks.

use super::{
    apply_translation, ct_state, Conntrack, ConntrackConfig, CtCommit, CtFilter, CtPacket,
    CtTimeouts, NatRange, PacketClass, Tuple,
};
use fastpath_packet::{extract, ip_proto};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
}

fn v4(last: u8) -> [u8; 16] {
    Ipv4Addr::new(10, 0, 0, last).to_ipv6_mapped().octets()
}

/// Runs one fuzz input. The first byte picks the mode: odd runs a frame
/// through [`CtPacket::from_frame`], a commit with NAT and
/// [`apply_translation`]; even runs a sequence of table operations.
pub fn fuzz_conntrack(data: &[u8]) {
    match data.split_first() {
        Some((m, rest)) if m & 1 == 1 => fuzz_frame(rest),
        Some((_, rest)) => fuzz_sequence(rest),
        None => {}
    }
}

fn small_table() -> Conntrack {
    Conntrack::new(&ConntrackConfig {
        capacity: 32,
        shards: 4,
        timeouts: CtTimeouts {
            tcp_established: Duration::from_secs(300),
            ..CtTimeouts::default()
        },
        nat_attempts: 64,
        huge_pages: false,
    })
}

/// Table operations with invariants: never a panic; `len() <= capacity()`;
/// a reply is never `est|rpl` unless its original tuple was committed; after
/// `expire(now, usize::MAX)` no entry is due, and none outlives its last
/// packet by more than the longest timeout; a [`super::ConnId`] keeps
/// answering for the same connection; a lock-free touch is taken only
/// while the connection's result is the one its stamp was seen with.
pub fn fuzz_sequence(data: &[u8]) {
    let ct = small_table();
    let mut b = Bytes(data);
    let mut now: u64 = 1_000_000_000;
    let mut committed: HashSet<(u16, Tuple)> = HashSet::new();
    let mut conns = Vec::new();
    let mut stamps = HashMap::new();
    while let (Some(op), Some(a), Some(c)) = (b.u8(), b.u8(), b.u8()) {
        let zone = (op >> 6) as u16;
        let proto = [ip_proto::TCP, ip_proto::UDP, ip_proto::ICMPV4, 47][(a & 3) as usize];
        let mut tuple = Tuple {
            src: v4(1 + ((a >> 2) & 3)),
            dst: v4(1 + ((a >> 4) & 3)),
            src_port: 1000 + (c & 3) as u16,
            dst_port: 80 + ((c >> 2) & 1) as u16,
            proto,
            ipv6: false,
        };
        if proto == ip_proto::ICMPV4 {
            tuple.dst_port = if c & 0x10 != 0 { 0 } else { 8 << 8 };
        } else if proto == 47 {
            tuple.src_port = 0;
            tuple.dst_port = 0;
        }
        let flags = [0x002, 0x012, 0x010, 0x011, 0x004, 0x003, 0x018, 0][((c >> 5) & 7) as usize];
        let class = if a & 0x40 != 0 && c & 0x80 != 0 {
            let mut inner = tuple;
            inner.proto = ip_proto::UDP;
            PacketClass::IcmpError {
                inner: inner.reverse(),
            }
        } else {
            PacketClass::Trackable
        };
        let packet = CtPacket {
            tuple,
            tcp_flags: if proto == ip_proto::TCP { flags } else { 0 },
            len: 60,
            class,
        };
        match op & 7 {
            0..=2 => {
                let r = ct.lookup(zone, &packet, now);
                check_result(&r, &committed, zone);
                conns.extend(r.conn.zip(r.original).map(|(i, o)| (i, o, zone)));
            }
            3 | 4 => {
                let mut commit = CtCommit {
                    mark: (a as u32) << 4,
                    mark_mask: 0xff0,
                    label: c as u128,
                    label_mask: 0xff,
                    ..CtCommit::default()
                };
                if op & 8 != 0 {
                    commit.snat = Some(NatRange {
                        addr_min: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)),
                        addr_max: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)),
                        ports: Some((2000, 2001)),
                    });
                }
                if op & 0x10 != 0 {
                    commit.dnat = Some(NatRange::addr_port(
                        IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1 + (c & 1))),
                        8080,
                    ));
                }
                if let Ok(r) = ct.commit(zone, &packet, &commit, now) {
                    check_result(&r, &committed, zone);
                    if let Some(o) = r.original {
                        assert!(r.conn.is_some(), "a connection result without an id");
                        committed.insert((zone, o));
                        if r.state & ct_state::REL == 0 {
                            assert_eq!(r.mark & 0xff0, (a as u32) << 4, "mark under mask");
                        }
                    }
                    conns.extend(r.conn.zip(r.original).map(|(i, o)| (i, o, zone)));
                }
            }
            5 => {
                if let Some(&(id, orig, czone)) = conns.get(c as usize % conns.len().max(1)) {
                    let dir = if op & 8 != 0 {
                        super::Dir::Reply
                    } else {
                        super::Dir::Original
                    };
                    // The lock-free touch with the stamp an earlier touch of
                    // this connection and direction answered: when it takes
                    // the packet, the connection must still give the result
                    // seen with that stamp.
                    let seen = stamps.get(&(id, dir)).copied();
                    let fast = seen.filter(|_| op & 0x10 != 0).is_some_and(|(stamp, was)| {
                        if !ct.touch_fast(id, dir, flags, 60, now, stamp) {
                            return false;
                        }
                        let r = ct
                            .by_id(id, dir, None, now)
                            .expect("a stamped connection is live");
                        assert_eq!((r.state, r.mark, r.label), was, "a stale stamp was taken");
                        check_result(&r, &committed, czone);
                        true
                    });
                    let slow = if fast {
                        None
                    } else {
                        ct.touch_stamped(id, dir, flags, 60, now)
                    };
                    if let Some((r, stamp)) = slow {
                        stamps.insert((id, dir), (stamp, (r.state, r.mark, r.label)));
                        if r.state & ct_state::INV == 0 {
                            assert_eq!(
                                r.original,
                                Some(orig),
                                "ConnId answered for another connection"
                            );
                        }
                        check_result(&r, &committed, czone);
                    }
                }
            }
            6 => {
                ct.expire(now, (c as usize) % 8);
            }
            _ => {
                now = now.saturating_add((1u64 << (c % 44)) + a as u64);
            }
        }
        assert!(ct.len() <= ct.capacity(), "len exceeds capacity");
        if op & 0x20 != 0 {
            ct.expire(now, usize::MAX);
            for e in ct.list(&CtFilter::default(), usize::MAX) {
                assert!(e.expires_at > now, "an expired entry survived expire()");
                assert!(
                    e.expires_at - e.last_seen <= ct.max_timeout_ns(),
                    "an entry outlives its timeout"
                );
            }
        }
    }
}

fn check_result(r: &super::CtResult, committed: &HashSet<(u16, Tuple)>, zone: u16) {
    assert!(r.state & ct_state::TRK != 0, "every result is tracked");
    let est_rpl = ct_state::EST | ct_state::RPL;
    if r.state & est_rpl == est_rpl {
        let o = r.original.expect("an est|rpl result names its connection");
        assert!(
            committed.contains(&(zone, o)),
            "est|rpl for a connection never committed"
        );
    }
    if r.state & ct_state::INV != 0 {
        assert!(r.conn.is_none());
    }
}

/// A frame through the packet summary, a NAT commit and the rewrite: no
/// panic, and a frame that parsed before the rewrite parses after it.
pub fn fuzz_frame(data: &[u8]) {
    let Ok((key, layout)) = extract(data, 0) else {
        return;
    };
    let p = CtPacket::from_frame(&key, &layout, data);
    let ct = small_table();
    let nat = if key.is_ipv6() {
        IpAddr::V6("fd00::99".parse().unwrap_or(std::net::Ipv6Addr::LOCALHOST))
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99))
    };
    let commit = CtCommit {
        snat: Some(NatRange::addr(nat)),
        dnat: Some(NatRange::addr_port(nat, 8080)),
        ..CtCommit::default()
    };
    let first = ct.commit(0, &p, &commit, 1);
    let r = match p.class {
        PacketClass::IcmpError { .. } => ct.lookup(0, &p, 2),
        _ => match first {
            Ok(r) => r,
            Err(_) => return,
        },
    };
    if let Some(t) = r.nat {
        let mut frame = data.to_vec();
        if apply_translation(&mut frame, &layout, &t).is_ok() {
            assert!(
                extract(&frame, 0).is_ok(),
                "a translated frame no longer parses"
            );
        }
    }
}
