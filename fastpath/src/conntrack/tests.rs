//! Unit tests of the tracker: states, timeouts, NAT, rewrites, sharing.

use super::*;
use fastpath_packet::checksum::{self, pseudo_header_v4, pseudo_header_v6};
use fastpath_packet::tcp::flags as tf;
use fastpath_packet::{extract, ip_proto};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

const SEC: u64 = 1_000_000_000;

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An IPv4 header (checksum filled) for `payload_len` bytes of `proto`.
fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize) -> Vec<u8> {
    let total = (20 + payload_len) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum::checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// A TCP segment with a payload, checksum filled for the IPv4 addresses.
fn tcp_segment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sp: u16,
    dp: u16,
    flags: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sp.to_be_bytes());
    t[2..4].copy_from_slice(&dp.to_be_bytes());
    t[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags as u8;
    t[14..16].copy_from_slice(&8192u16.to_be_bytes());
    t.extend_from_slice(payload);
    let s = pseudo_header_v4(src.octets(), dst.octets(), ip_proto::TCP, t.len() as u16);
    let c = checksum::finish(checksum::sum(s, &t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

fn udp_datagram_v4(src: Ipv4Addr, dst: Ipv4Addr, sp: u16, dp: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sp.to_be_bytes());
    u[2..4].copy_from_slice(&dp.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    let s = pseudo_header_v4(src.octets(), dst.octets(), ip_proto::UDP, u.len() as u16);
    let c = checksum::finish(checksum::sum(s, &u));
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

fn frame_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(0x0800);
    f.extend(ipv4_header(src, dst, proto, l4.len()));
    f.extend_from_slice(l4);
    f
}

fn tcp4(src: &str, sp: u16, dst: &str, dp: u16, flags: u16) -> Vec<u8> {
    let (s, d) = (ip4(src), ip4(dst));
    frame_v4(
        s,
        d,
        ip_proto::TCP,
        &tcp_segment(s, d, sp, dp, flags, b"hello"),
    )
}

fn udp4(src: &str, sp: u16, dst: &str, dp: u16) -> Vec<u8> {
    let (s, d) = (ip4(src), ip4(dst));
    frame_v4(
        s,
        d,
        ip_proto::UDP,
        &udp_datagram_v4(s, d, sp, dp, b"payload!"),
    )
}

fn icmp4_echo(src: &str, dst: &str, ty: u8, id: u16) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0xde, 0xad]);
    let c = checksum::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    frame_v4(ip4(src), ip4(dst), ip_proto::ICMPV4, &m)
}

/// An ICMPv4 error of `ty`/`code` from `src` to `dst` quoting `quoted` (an
/// IP packet).
fn icmp4_error(src: &str, dst: &str, ty: u8, quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(quoted);
    let c = checksum::checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    frame_v4(ip4(src), ip4(dst), ip_proto::ICMPV4, &m)
}

fn pkt(frame: &[u8]) -> CtPacket {
    let (key, layout) = extract(frame, 1).unwrap();
    CtPacket::from_frame(&key, &layout, frame)
}

fn table() -> Conntrack {
    Conntrack::new(&ConntrackConfig {
        capacity: 1024,
        shards: 8,
        ..ConntrackConfig::default()
    })
}

fn commit_plain() -> CtCommit {
    CtCommit::default()
}

const NEW: u32 = ct_state::TRK | ct_state::NEW;
const EST: u32 = ct_state::TRK | ct_state::EST;
const EST_RPL: u32 = ct_state::TRK | ct_state::EST | ct_state::RPL;
const INV: u32 = ct_state::TRK | ct_state::INV;

#[test]
fn tcp_handshake_new_est_reply() {
    let ct = table();
    let syn = pkt(&tcp4("10.0.0.1", 40000, "10.0.0.2", 80, tf::SYN));
    assert_eq!(ct.lookup(7, &syn, SEC).state, NEW);
    assert_eq!(ct.len(), 0, "a lookup creates nothing");
    let r = ct.commit(7, &syn, &commit_plain(), SEC).unwrap();
    assert_eq!(r.state, NEW);
    assert!(r.conn.is_some());
    assert_eq!(ct.len(), 1);
    // Retransmitted SYN before any reply: still new.
    assert_eq!(ct.lookup(7, &syn, SEC).state, NEW);
    let synack = pkt(&tcp4("10.0.0.2", 80, "10.0.0.1", 40000, tf::SYN | tf::ACK));
    let r = ct.lookup(7, &synack, 2 * SEC);
    assert_eq!(r.state, EST_RPL);
    assert_eq!(r.original, Some(syn.tuple));
    let ack = pkt(&tcp4("10.0.0.1", 40000, "10.0.0.2", 80, tf::ACK));
    assert_eq!(ct.lookup(7, &ack, 3 * SEC).state, EST);
    let v = ct.list(&CtFilter::default(), 10);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].state, "ESTABLISHED");
    assert_eq!(
        v[0].packets,
        [3, 1],
        "commit does not count an existing connection's packet"
    );
    // Established lasts 24 h by default, refreshed by the last packet.
    assert_eq!(v[0].expires_at, 3 * SEC + 24 * 3600 * SEC);
}

#[test]
fn half_open_reset_and_invalid_first_packets_are_invalid_and_not_committed() {
    let ct = table();
    for flags in [tf::SYN | tf::ACK, tf::RST, 0, tf::SYN | tf::FIN, tf::FIN] {
        let p = pkt(&tcp4("10.0.0.1", 1, "10.0.0.2", 2, flags));
        assert_eq!(ct.lookup(0, &p, SEC).state, INV, "flags {flags:#x}");
        let r = ct.commit(0, &p, &commit_plain(), SEC).unwrap();
        assert_eq!(r.state, INV);
        assert_eq!(r.conn, None);
    }
    assert_eq!(ct.len(), 0);
    // An SYN inside an established connection is invalid too.
    let syn = pkt(&tcp4("10.0.0.1", 1, "10.0.0.2", 2, tf::SYN));
    ct.commit(0, &syn, &commit_plain(), SEC).unwrap();
    let synack = pkt(&tcp4("10.0.0.2", 2, "10.0.0.1", 1, tf::SYN | tf::ACK));
    ct.lookup(0, &synack, SEC);
    let ack = pkt(&tcp4("10.0.0.1", 1, "10.0.0.2", 2, tf::ACK));
    assert_eq!(ct.lookup(0, &ack, SEC).state, EST);
    let bad = pkt(&tcp4("10.0.0.2", 2, "10.0.0.1", 1, tf::SYN));
    assert_eq!(ct.lookup(0, &bad, SEC).state, INV);
}

#[test]
fn mid_stream_packet_is_picked_up_as_new_and_committed_established() {
    let ct = table();
    for (port, flags) in [
        (1u16, tf::ACK),
        (2, tf::FIN | tf::ACK),
        (3, tf::PSH | tf::ACK),
    ] {
        let p = pkt(&tcp4("10.0.0.1", port, "10.0.0.2", 80, flags));
        assert_eq!(ct.lookup(0, &p, SEC).state, NEW, "flags {flags:#x}");
        assert_eq!(ct.len(), usize::from(port) - 1, "a lookup creates nothing");
        let r = ct.commit(0, &p, &commit_plain(), SEC).unwrap();
        assert!(r.conn.is_some(), "flags {flags:#x}");
    }
    let v = ct.list(&CtFilter::default(), 8);
    assert!(v.iter().any(|e| e.state == "ESTABLISHED"), "{v:?}");
    // The answer makes the picked-up connection established.
    let reply = pkt(&tcp4("10.0.0.2", 80, "10.0.0.1", 1, tf::ACK));
    assert_eq!(ct.lookup(0, &reply, SEC).state, EST_RPL);
}

fn established(ct: &Conntrack, zone: u16, now: u64) -> (CtPacket, CtPacket) {
    let syn = pkt(&tcp4("10.0.0.1", 1234, "10.0.0.2", 80, tf::SYN));
    ct.commit(zone, &syn, &commit_plain(), now).unwrap();
    let synack = pkt(&tcp4("10.0.0.2", 80, "10.0.0.1", 1234, tf::SYN | tf::ACK));
    ct.lookup(zone, &synack, now);
    let ack = pkt(&tcp4("10.0.0.1", 1234, "10.0.0.2", 80, tf::ACK));
    assert_eq!(ct.lookup(zone, &ack, now).state, EST);
    (ack, pkt(&tcp4("10.0.0.2", 80, "10.0.0.1", 1234, tf::ACK)))
}

#[test]
fn rst_closes_with_short_timeout_and_syn_reopens() {
    let ct = table();
    let (_, _) = established(&ct, 0, SEC);
    let rst = pkt(&tcp4("10.0.0.2", 80, "10.0.0.1", 1234, tf::RST | tf::ACK));
    assert_eq!(ct.lookup(0, &rst, 2 * SEC).state, EST_RPL);
    assert_eq!(ct.list(&CtFilter::default(), 1)[0].state, "CLOSED");
    // Closed lives 10 s: present at +9.9 s, gone at +10 s.
    assert_eq!(ct.expire(12 * SEC - 1, usize::MAX), 0);
    assert_eq!(ct.len(), 1);
    // A new SYN on the closed connection replaces it.
    let syn = pkt(&tcp4("10.0.0.1", 1234, "10.0.0.2", 80, tf::SYN));
    assert_eq!(ct.lookup(0, &syn, 3 * SEC).state, NEW);
    let old = ct.list(&CtFilter::default(), 1)[0].created;
    let r = ct.commit(0, &syn, &commit_plain(), 3 * SEC).unwrap();
    assert_eq!(r.state, NEW);
    assert_eq!(ct.len(), 1);
    assert_ne!(ct.list(&CtFilter::default(), 1)[0].created, old);
    ct.lookup(0, &rst, 4 * SEC);
    assert_eq!(ct.expire(14 * SEC, usize::MAX), 1);
    assert_eq!(ct.len(), 0);
}

#[test]
fn fin_both_ways_then_time_wait() {
    let ct = table();
    let (_, _) = established(&ct, 0, SEC);
    let fin_o = pkt(&tcp4("10.0.0.1", 1234, "10.0.0.2", 80, tf::FIN | tf::ACK));
    assert_eq!(ct.lookup(0, &fin_o, 2 * SEC).state, EST);
    assert_eq!(ct.list(&CtFilter::default(), 1)[0].state, "FIN_WAIT");
    let fin_r = pkt(&tcp4("10.0.0.2", 80, "10.0.0.1", 1234, tf::FIN | tf::ACK));
    assert_eq!(ct.lookup(0, &fin_r, 3 * SEC).state, EST_RPL);
    assert_eq!(ct.list(&CtFilter::default(), 1)[0].state, "CLOSING");
    let ack = pkt(&tcp4("10.0.0.1", 1234, "10.0.0.2", 80, tf::ACK));
    ct.lookup(0, &ack, 4 * SEC);
    let v = &ct.list(&CtFilter::default(), 1)[0];
    assert_eq!(v.state, "TIME_WAIT");
    assert_eq!(v.expires_at, 4 * SEC + 30 * SEC);
    assert_eq!(ct.expire(34 * SEC - 1, usize::MAX), 0);
    assert_eq!(ct.expire(34 * SEC, usize::MAX), 1);
}

#[test]
fn udp_single_then_multiple_timeouts() {
    let ct = table();
    let q = pkt(&udp4("10.0.0.1", 5353, "10.0.0.53", 53));
    assert_eq!(ct.lookup(0, &q, SEC).state, NEW);
    ct.commit(0, &q, &commit_plain(), SEC).unwrap();
    assert_eq!(ct.list(&CtFilter::default(), 1)[0].expires_at, 31 * SEC);
    assert_eq!(ct.expire(31 * SEC - 1, usize::MAX), 0);
    let a = pkt(&udp4("10.0.0.53", 53, "10.0.0.1", 5353));
    assert_eq!(ct.lookup(0, &a, 2 * SEC).state, EST_RPL);
    assert_eq!(ct.lookup(0, &q, 3 * SEC).state, EST);
    assert_eq!(ct.list(&CtFilter::default(), 1)[0].expires_at, 183 * SEC);
    assert_eq!(ct.expire(183 * SEC - 1, usize::MAX), 0);
    // Expired but not yet swept: lookups no longer see it.
    assert_eq!(ct.lookup(0, &a, 183 * SEC).state, NEW);
    assert_eq!(ct.expire(183 * SEC, usize::MAX), 1);
    assert!(ct.is_empty());
}

#[test]
fn icmp_echo_pseudo_connection() {
    let ct = table();
    let req = pkt(&icmp4_echo("10.0.0.1", "10.0.0.2", 8, 77));
    assert_eq!(req.tuple.src_port, 77);
    assert_eq!(ct.commit(0, &req, &commit_plain(), SEC).unwrap().state, NEW);
    let rep = pkt(&icmp4_echo("10.0.0.2", "10.0.0.1", 0, 77));
    assert_eq!(ct.lookup(0, &rep, SEC).state, EST_RPL);
    // Another identifier is another connection; a lone reply opens nothing.
    let other = pkt(&icmp4_echo("10.0.0.2", "10.0.0.1", 0, 78));
    assert_eq!(ct.lookup(0, &other, SEC).state, INV);
    assert_eq!(
        ct.commit(0, &other, &commit_plain(), SEC).unwrap().state,
        INV
    );
    assert_eq!(ct.len(), 1);
    assert_eq!(ct.expire(31 * SEC, usize::MAX), 1);
}

#[test]
fn zones_are_separate() {
    let ct = table();
    let syn = pkt(&tcp4("10.0.0.1", 1, "10.0.0.2", 2, tf::SYN));
    ct.commit(1, &syn, &commit_plain(), SEC).unwrap();
    let synack = pkt(&tcp4("10.0.0.2", 2, "10.0.0.1", 1, tf::SYN | tf::ACK));
    assert_eq!(ct.lookup(2, &synack, SEC).state, INV);
    assert_eq!(ct.lookup(1, &synack, SEC).state, EST_RPL);
    ct.commit(2, &syn, &commit_plain(), SEC).unwrap();
    assert_eq!(ct.len(), 2);
    let f = CtFilter {
        zone: Some(2),
        ..CtFilter::default()
    };
    assert_eq!(ct.list(&f, 10).len(), 1);
    assert_eq!(ct.flush(&f), 1);
    assert_eq!(ct.list(&CtFilter::default(), 10)[0].zone, 1);
}

#[test]
fn mark_and_label_under_mask() {
    let ct = table();
    let p = pkt(&udp4("10.0.0.1", 1, "10.0.0.2", 2));
    let c = CtCommit {
        mark: 0xffff_ffff,
        mark_mask: 0x0000_00f0,
        label: u128::MAX,
        label_mask: 1 << 100,
        ..CtCommit::default()
    };
    let r = ct.commit(0, &p, &c, SEC).unwrap();
    assert_eq!((r.mark, r.label), (0xf0, 1 << 100));
    let c2 = CtCommit {
        mark: 0x5,
        mark_mask: 0xf,
        label: 0,
        label_mask: 1 << 100,
        ..CtCommit::default()
    };
    let r = ct.commit(0, &p, &c2, SEC).unwrap();
    assert_eq!((r.mark, r.label), (0xf5, 0));
    let reply = pkt(&udp4("10.0.0.2", 2, "10.0.0.1", 1));
    assert_eq!(ct.lookup(0, &reply, SEC).mark, 0xf5);
}

#[test]
fn capacity_limit_is_a_clear_error() {
    let ct = Conntrack::new(&ConntrackConfig {
        capacity: 4,
        shards: 1,
        ..ConntrackConfig::default()
    });
    for port in 0..4 {
        ct.commit(
            0,
            &pkt(&udp4("10.0.0.1", port, "10.0.0.2", 53)),
            &commit_plain(),
            SEC,
        )
        .unwrap();
    }
    let e = ct
        .commit(
            0,
            &pkt(&udp4("10.0.0.1", 9, "10.0.0.2", 53)),
            &commit_plain(),
            SEC,
        )
        .unwrap_err();
    assert_eq!(e, CtError::TableFull);
    assert_eq!(e.drop_reason(), "ct_table_full");
    assert_eq!(ct.len(), 4);
    // Expiry frees room.
    assert_eq!(ct.expire(100 * SEC, 2), 2);
    ct.commit(
        0,
        &pkt(&udp4("10.0.0.1", 9, "10.0.0.2", 53)),
        &commit_plain(),
        100 * SEC,
    )
    .unwrap();
}

#[test]
fn expire_budget_is_bounded() {
    let ct = Conntrack::new(&ConntrackConfig {
        capacity: 64,
        shards: 1,
        ..ConntrackConfig::default()
    });
    for port in 0..40 {
        ct.commit(
            0,
            &pkt(&udp4("10.0.0.1", port, "10.0.0.2", 53)),
            &commit_plain(),
            SEC,
        )
        .unwrap();
    }
    assert_eq!(ct.expire(100 * SEC, 10), 10);
    assert_eq!(ct.len(), 30);
    assert_eq!(ct.expire(100 * SEC, usize::MAX), 30);
}

fn snat_to(addr: &str, ports: Option<(u16, u16)>) -> CtCommit {
    snat_range(addr, addr, ports)
}

fn snat_range(lo: &str, hi: &str, ports: Option<(u16, u16)>) -> CtCommit {
    CtCommit {
        snat: Some(nat_range(lo, hi, ports)),
        ..CtCommit::default()
    }
}

#[test]
fn snat_port_allocation_avoids_collisions() {
    let ct = table();
    let c = snat_to("192.0.2.1", Some((5000, 5001)));
    let a = ct
        .commit(0, &pkt(&udp4("10.0.0.1", 5000, "8.8.8.8", 53)), &c, SEC)
        .unwrap();
    assert_eq!(a.state, NEW | ct_state::SNAT);
    let t = a.nat.unwrap().src.unwrap();
    assert_eq!(t.to_port, 5000, "the original port is tried first");
    let b = ct
        .commit(0, &pkt(&udp4("10.0.0.2", 5000, "8.8.8.8", 53)), &c, SEC)
        .unwrap();
    assert_eq!(b.nat.unwrap().src.unwrap().to_port, 5001);
    let e = ct
        .commit(0, &pkt(&udp4("10.0.0.3", 5000, "8.8.8.8", 53)), &c, SEC)
        .unwrap_err();
    assert_eq!(e, CtError::NatExhausted);
    // Replies find their connections and are un-NATed.
    let r = ct.lookup(0, &pkt(&udp4("8.8.8.8", 53, "192.0.2.1", 5001)), SEC);
    assert_eq!(r.state, EST_RPL | ct_state::SNAT);
    let d = r.nat.unwrap().dst.unwrap();
    assert_eq!(addr_from_bytes(&d.to_addr, false), ip4("10.0.0.2"));
    assert_eq!(d.to_port, 5000);
    // Without a port range a colliding port moves to 1024..=65535.
    let c = snat_to("192.0.2.1", None);
    let x = ct
        .commit(0, &pkt(&udp4("10.0.0.4", 5000, "8.8.8.8", 53)), &c, SEC)
        .unwrap();
    let p = x.nat.unwrap().src.unwrap().to_port;
    assert!(p >= 1024 && p != 5000 && p != 5001, "port {p}");
}

fn nat_range(lo: &str, hi: &str, ports: Option<(u16, u16)>) -> NatRange {
    NatRange {
        addr_min: ip4(lo).into(),
        addr_max: ip4(hi).into(),
        ports,
    }
}

/// The reply candidates of a commit, as (source address, source port) of
/// the translated original direction, grouped by address.
fn snat_candidates(t: &Tuple, c: &CtCommit) -> Vec<(Ipv4Addr, Vec<u16>)> {
    let ct = table();
    let (bits, replies) = ct.candidate_replies(0, t, c).unwrap();
    assert_eq!(bits, ct_state::SNAT);
    let mut out: Vec<(Ipv4Addr, Vec<u16>)> = Vec::new();
    for r in replies {
        // A reply tuple is the translated original reversed.
        let o = r.reverse();
        assert_eq!((o.dst, o.dst_port, o.proto), (t.dst, t.dst_port, t.proto));
        let a: [u8; 4] = o.src[12..].try_into().unwrap();
        let a = Ipv4Addr::from(a);
        match out.last_mut() {
            Some((last, ports)) if *last == a => ports.push(o.src_port),
            _ => out.push((a, vec![o.src_port])),
        }
    }
    out
}

#[test]
fn nat_candidates_walk_every_address_and_port_once() {
    let t = pkt(&udp4("10.0.0.1", 5003, "8.8.8.8", 53)).tuple;
    // Three addresses, ten ports, the original port among them: per
    // address, the original port first, then all ten once.
    let got = snat_candidates(
        &t,
        &snat_range("192.0.2.1", "192.0.2.3", Some((5000, 5009))),
    );
    let mut addrs: Vec<Ipv4Addr> = got.iter().map(|(a, _)| *a).collect();
    addrs.sort();
    assert_eq!(addrs, ["192.0.2.1", "192.0.2.2", "192.0.2.3"].map(ip4));
    for (a, ports) in &got {
        assert_eq!(ports[0], 5003, "{a}: the original port first");
        let mut rest = ports[1..].to_vec();
        rest.sort();
        assert_eq!(rest, (5000..=5009).collect::<Vec<_>>(), "{a}");
    }
    // The original port outside the range: only the range's ports.
    let got = snat_candidates(&t, &snat_to("192.0.2.1", Some((6000, 6004))));
    assert_eq!(got.len(), 1);
    let mut ports = got[0].1.clone();
    ports.sort();
    assert_eq!(ports, (6000..=6004).collect::<Vec<_>>());
    // A protocol without ports keeps its port: one candidate per address.
    let mut gre = t;
    gre.proto = 47;
    gre.src_port = 0;
    gre.dst_port = 0;
    let got = snat_candidates(&gre, &snat_range("192.0.2.1", "192.0.2.2", None));
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|(_, p)| p == &[0]), "{got:?}");
    // At most sixteen addresses of a wide range.
    let got = snat_candidates(&gre, &snat_range("192.0.2.1", "192.0.2.100", None));
    assert_eq!(got.len(), 16);
    // DNAT alone: the chosen backend first, then the others once each,
    // at most sixteen.
    let ct = table();
    for (hi, n) in [("192.0.2.4", 4), ("192.0.2.40", 16)] {
        let c = CtCommit {
            dnat: Some(nat_range("192.0.2.1", hi, None)),
            ..CtCommit::default()
        };
        let (bits, replies) = ct.candidate_replies(0, &t, &c).unwrap();
        assert_eq!(bits, ct_state::DNAT);
        let mut dsts: Vec<[u8; 16]> = replies.iter().map(|r| r.src).collect();
        assert_eq!(dsts.len(), n);
        dsts.sort();
        dsts.dedup();
        assert_eq!(dsts.len(), n, "distinct backends");
    }
    // No NAT: the original reversed, alone.
    let (bits, replies) = ct.candidate_replies(0, &t, &commit_plain()).unwrap();
    assert_eq!((bits, replies), (0, vec![t.reverse()]));
}

fn verify_l4_v4(frame: &[u8]) {
    let (key, layout) = extract(frame, 0).unwrap();
    let l3 = &frame[layout.l3 as usize..layout.l4 as usize];
    assert!(checksum::verify(l3), "IPv4 header checksum");
    let l4 = &frame[layout.l4 as usize..layout.end as usize];
    let (s, d) = (&key.src()[12..], &key.dst()[12..]);
    let ph = pseudo_header_v4(
        s.try_into().unwrap(),
        d.try_into().unwrap(),
        key.ip_proto(),
        l4.len() as u16,
    );
    match key.ip_proto() {
        ip_proto::ICMPV4 => assert!(checksum::verify(l4), "ICMP checksum"),
        _ => assert_eq!(checksum::fold(checksum::sum(ph, l4)), 0xffff, "L4 checksum"),
    }
}

#[test]
fn snat_and_dnat_rewrite_frames_with_valid_checksums() {
    let ct = table();
    let c = CtCommit {
        dnat: Some(NatRange::addr_port(ip4("10.1.0.5").into(), 8080)),
        ..snat_to("192.0.2.1", Some((30000, 30000)))
    };
    let mut f = tcp4("10.0.0.1", 40000, "172.16.0.10", 80, tf::SYN);
    let r = ct.commit(0, &pkt(&f), &c, SEC).unwrap();
    assert_eq!(r.state, NEW | ct_state::SNAT | ct_state::DNAT);
    let (_, layout) = extract(&f, 0).unwrap();
    apply_translation(&mut f, &layout, &r.nat.unwrap()).unwrap();
    verify_l4_v4(&f);
    let after = pkt(&f).tuple;
    assert_eq!(addr_from_bytes(&after.src, false), ip4("192.0.2.1"));
    assert_eq!((after.src_port, after.dst_port), (30000, 8080));
    assert_eq!(addr_from_bytes(&after.dst, false), ip4("10.1.0.5"));
    // The reply as the backend sends it is un-NATed back to what the client expects.
    let mut back = tcp4("10.1.0.5", 8080, "192.0.2.1", 30000, tf::SYN | tf::ACK);
    let r = ct.lookup(0, &pkt(&back), SEC);
    assert_eq!(r.state, EST_RPL | ct_state::SNAT | ct_state::DNAT);
    assert_eq!(
        r.original.unwrap().dst_port,
        80,
        "ct_tp_dst is the VIP port"
    );
    let (_, layout) = extract(&back, 0).unwrap();
    apply_translation(&mut back, &layout, &r.nat.unwrap()).unwrap();
    verify_l4_v4(&back);
    assert_eq!(
        pkt(&back).tuple,
        pkt(&tcp4("10.0.0.1", 40000, "172.16.0.10", 80, 0x12))
            .tuple
            .reverse()
    );
}

#[test]
fn icmp_error_related_with_nat_translates_inner_header() {
    let ct = table();
    let c = snat_to("192.0.2.1", Some((30000, 30010)));
    let client_udp = udp4("10.0.0.1", 5555, "8.8.8.8", 53);
    let r = ct.commit(0, &pkt(&client_udp), &c, SEC).unwrap();
    let mut on_wire = client_udp.clone();
    let (_, layout) = extract(&on_wire, 0).unwrap();
    apply_translation(&mut on_wire, &layout, &r.nat.unwrap()).unwrap();
    let natted = pkt(&on_wire).tuple;
    // A router answers the translated packet with "port unreachable".
    let quoted = &on_wire[14..];
    let mut err = icmp4_error("203.0.113.9", "192.0.2.1", 3, quoted);
    let p = pkt(&err);
    assert!(matches!(p.class, PacketClass::IcmpError { .. }));
    let r = ct.lookup(0, &p, SEC);
    assert_eq!(
        r.state,
        ct_state::TRK | ct_state::REL | ct_state::RPL | ct_state::SNAT
    );
    let (_, layout) = extract(&err, 0).unwrap();
    apply_translation(&mut err, &layout, &r.nat.unwrap()).unwrap();
    // Outer: router address kept, destination back to the client.
    let (key, layout) = extract(&err, 0).unwrap();
    assert_eq!(key.ip_src(), Some(ip4("203.0.113.9").into()));
    assert_eq!(key.ip_dst(), Some(ip4("10.0.0.1").into()));
    // Every checksum, recomputed from scratch.
    let ip = &err[layout.l3 as usize..layout.l4 as usize];
    assert!(checksum::verify(ip), "outer IPv4 header");
    let icmp = &err[layout.l4 as usize..layout.end as usize];
    assert!(checksum::verify(icmp), "outer ICMP checksum");
    let inner = &icmp[8..];
    assert!(checksum::verify(&inner[..20]), "inner IPv4 header");
    assert_eq!(&inner[12..16], &ip4("10.0.0.1").octets());
    assert_eq!(u16::from_be_bytes([inner[20], inner[21]]), 5555);
    let ph = pseudo_header_v4(
        inner[12..16].try_into().unwrap(),
        inner[16..20].try_into().unwrap(),
        ip_proto::UDP,
        (inner.len() - 20) as u16,
    );
    assert_eq!(
        checksum::fold(checksum::sum(ph, &inner[20..])),
        0xffff,
        "inner UDP"
    );
    // The inner packet is now the client's original one.
    assert_eq!(inner, &client_udp[14..]);
    assert_ne!(natted, pkt(&client_udp).tuple);
    // An error quoting nothing we know is invalid.
    let stray = icmp4_error(
        "203.0.113.9",
        "192.0.2.1",
        3,
        &udp4("1.1.1.1", 1, "2.2.2.2", 2)[14..],
    );
    assert_eq!(ct.lookup(0, &pkt(&stray), SEC).state, INV);
}

fn udp6(src: &str, sp: u16, dst: &str, dp: u16) -> Vec<u8> {
    let (s, d): (Ipv6Addr, Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sp.to_be_bytes());
    u[2..4].copy_from_slice(&dp.to_be_bytes());
    u[4..6].copy_from_slice(&12u16.to_be_bytes());
    u.extend_from_slice(b"six!");
    let ph = pseudo_header_v6(&s.octets(), &d.octets(), ip_proto::UDP, 12);
    let c = checksum::finish(checksum::sum(ph, &u));
    u[6..8].copy_from_slice(&c.to_be_bytes());
    let mut f = eth(0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 12, ip_proto::UDP, 64]);
    f.extend_from_slice(&s.octets());
    f.extend_from_slice(&d.octets());
    f.extend(u);
    f
}

#[test]
fn ipv6_dnat_rewrite() {
    let ct = table();
    let c = CtCommit {
        dnat: Some(NatRange::addr_port(
            "fd00::5".parse::<Ipv6Addr>().unwrap().into(),
            9000,
        )),
        ..CtCommit::default()
    };
    let mut f = udp6("fd00::1", 1000, "fd00::100", 53);
    let r = ct.commit(3, &pkt(&f), &c, SEC).unwrap();
    let (_, layout) = extract(&f, 0).unwrap();
    apply_translation(&mut f, &layout, &r.nat.unwrap()).unwrap();
    let (key, layout) = extract(&f, 0).unwrap();
    assert_eq!(key.tp_dst(), 9000);
    let l4 = &f[layout.l4 as usize..layout.end as usize];
    let ph = pseudo_header_v6(&key.src(), &key.dst(), ip_proto::UDP, l4.len() as u32);
    assert_eq!(checksum::fold(checksum::sum(ph, l4)), 0xffff);
    let back = pkt(&udp6("fd00::5", 9000, "fd00::1", 1000));
    assert_eq!(ct.lookup(3, &back, SEC).state, EST_RPL | ct_state::DNAT);
    // A v4 range for a v6 packet is refused.
    let bad = CtCommit {
        dnat: Some(NatRange::addr(ip4("10.0.0.1").into())),
        ..CtCommit::default()
    };
    let e = ct.commit(3, &pkt(&udp6("fd00::1", 2, "fd00::100", 53)), &bad, SEC);
    assert_eq!(e, Err(CtError::NatFamily));
}

#[test]
fn touch_follows_the_connection_and_notices_replacement() {
    let ct = table();
    let q = pkt(&udp4("10.0.0.1", 7, "10.0.0.2", 8));
    let id = ct
        .commit(0, &q, &commit_plain(), SEC)
        .unwrap()
        .conn
        .unwrap();
    let r = ct.touch(id, Dir::Reply, 0, 100, 2 * SEC).unwrap();
    assert_eq!(r.state, EST_RPL);
    assert_eq!(r.original, Some(q.tuple));
    assert_eq!(
        ct.touch(id, Dir::Original, 0, 100, 3 * SEC).unwrap().state,
        EST
    );
    // The commit counted the 36-byte IP packet.
    assert_eq!(ct.list(&CtFilter::default(), 1)[0].bytes, [136, 100]);
    assert_eq!(ct.flush(&CtFilter::default()), 1);
    assert_eq!(ct.touch(id, Dir::Original, 0, 100, 3 * SEC), None);
    // The slot is reused by a new connection: the old id still misses.
    let id2 = ct
        .commit(0, &q, &commit_plain(), 4 * SEC)
        .unwrap()
        .conn
        .unwrap();
    assert_ne!(id, id2);
    assert_eq!(ct.touch(id, Dir::Original, 0, 100, 4 * SEC), None);
    assert!(ct.touch(id2, Dir::Original, 0, 100, 4 * SEC).is_some());
    // Expired: gone for touch even before the sweep.
    assert_eq!(ct.touch(id2, Dir::Original, 0, 100, 40 * SEC), None);
}

#[test]
fn two_threads_both_directions() {
    let ct = Arc::new(Conntrack::new(&ConntrackConfig {
        capacity: 4096,
        shards: 4,
        ..ConntrackConfig::default()
    }));
    const CONNS: u16 = 200;
    const ROUNDS: u64 = 50;
    let snat = snat_to("192.0.2.7", Some((20000, 29999)));
    let mut originals = Vec::new();
    for i in 0..CONNS {
        let q = pkt(&udp4("10.0.0.1", 1000 + i, "10.0.9.9", 53));
        let c = if i % 2 == 0 { snat } else { commit_plain() };
        let r = ct.commit(0, &q, &c, SEC).unwrap();
        let reply = match r.nat {
            Some(t) => {
                let s = t.src.unwrap();
                udp4("10.0.9.9", 53, "192.0.2.7", s.to_port)
            }
            None => udp4("10.0.9.9", 53, "10.0.0.1", 1000 + i),
        };
        originals.push((q, pkt(&reply)));
    }
    let originals = Arc::new(originals);
    let threads: Vec<_> = [Dir::Original, Dir::Reply]
        .into_iter()
        .map(|dir| {
            let ct = Arc::clone(&ct);
            let conns = Arc::clone(&originals);
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    for (o, r) in conns.iter() {
                        let p = if dir == Dir::Original { o } else { r };
                        let res = ct.lookup(0, p, SEC + round);
                        assert!(res.state & ct_state::TRK != 0 && res.state & ct_state::INV == 0);
                        assert_eq!(res.original, Some(o.tuple));
                        assert_eq!(res.dir(), dir);
                        let t = ct
                            .touch(res.conn.unwrap(), dir, 0, 10, SEC + round)
                            .unwrap();
                        assert_eq!(t.original, Some(o.tuple));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(ct.len(), CONNS as usize);
    for v in ct.list(&CtFilter::default(), usize::MAX) {
        assert_eq!(v.packets, [1 + 2 * ROUNDS, 2 * ROUNDS]);
        assert_eq!(v.state, "UDP");
    }
    // Concurrent commits of the same new connections from both threads: one wins each.
    let ct2 = Arc::new(table());
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let ct2 = Arc::clone(&ct2);
            std::thread::spawn(move || {
                for i in 0..300u16 {
                    let q = pkt(&udp4("10.0.0.3", i, "10.0.0.4", 9));
                    ct2.commit(1, &q, &snat_to("192.0.2.8", None), SEC).unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(ct2.len(), 300);
}

#[test]
fn timeouts_default_documented_values() {
    let t = CtTimeouts::default();
    assert_eq!(t.tcp_established, Duration::from_secs(86400));
    assert_eq!(t.udp_multiple, Duration::from_secs(180));
    assert_eq!(t.max_ns(), 86400 * SEC);
}

/// xorshift64*, for deterministic fuzz inputs without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn fuzz_invariants_over_seeded_sequences() {
    let mut rng = XorShift(0x5eed_c0ff_ee00_1234);
    for _ in 0..400 {
        let n = (rng.next() % 600) as usize;
        let mut data: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        if let Some(b) = data.first_mut() {
            *b &= !1;
        }
        fuzzing::fuzz_conntrack(&data);
    }
}

#[test]
fn fuzz_frames_from_seeds_and_mutations() {
    let seeds = [
        tcp4("10.0.0.1", 1, "10.0.0.2", 2, tf::SYN),
        udp4("10.0.0.1", 1, "10.0.0.2", 2),
        icmp4_echo("10.0.0.1", "10.0.0.2", 8, 5),
        icmp4_error(
            "10.9.9.9",
            "10.0.0.1",
            3,
            &udp4("10.0.0.1", 1, "10.0.0.2", 2)[14..],
        ),
        udp6("fd00::1", 1, "fd00::2", 2),
    ];
    let mut rng = XorShift(42);
    for s in &seeds {
        for _ in 0..500 {
            let mut f = s.clone();
            for _ in 0..(rng.next() % 4) {
                let i = (rng.next() as usize) % f.len();
                f[i] = rng.next() as u8;
            }
            f.truncate(f.len() - (rng.next() % 3) as usize * (rng.next() % 8) as usize);
            let mut data = vec![1u8];
            data.extend(f);
            fuzzing::fuzz_conntrack(&data);
        }
    }
}

#[test]
fn commits_without_nat_never_conflict_in_an_empty_zone() {
    let ct = Conntrack::new(&ConntrackConfig {
        capacity: 1 << 12,
        shards: 64,
        ..Default::default()
    });
    for port in 30000..31000u16 {
        let syn = pkt(&tcp4("10.0.0.11", port, "10.0.0.13", 8080, tf::SYN));
        let r = ct.commit(4, &syn, &commit_plain(), SEC);
        assert!(r.is_ok(), "port {port}: {r:?}");
    }
}

#[test]
fn a_client_balanced_to_itself_marks_its_zone_for_hairpin_replies() {
    let ct = table();
    let to = |addr: &str| CtCommit {
        dnat: Some(NatRange::addr_port(ip4(addr).into(), 8080)),
        ..CtCommit::default()
    };
    // Zone 3: a client balanced to another backend.
    let other = tcp4("10.0.0.1", 40000, "172.16.0.10", 80, tf::SYN);
    ct.commit(3, &pkt(&other), &to("10.0.0.2"), SEC).unwrap();
    assert!(!ct.had_self_replies(3) && !ct.had_self_replies(5));
    // Zone 5: the client is the backend it was sent to.
    let hairpin = tcp4("10.0.0.1", 40001, "172.16.0.10", 80, tf::SYN);
    let r = ct.commit(5, &pkt(&hairpin), &to("10.0.0.1"), SEC).unwrap();
    assert_eq!(r.state, NEW | ct_state::DNAT);
    assert!(ct.had_self_replies(5));
    assert!(!ct.had_self_replies(3) && !ct.had_self_replies(4) && !ct.had_self_replies(69));
    // The reply the bit lets through to a lookup: backend to itself.
    let reply = tcp4("10.0.0.1", 8080, "10.0.0.1", 40001, tf::SYN | tf::ACK);
    assert_eq!(
        ct.peek(5, &pkt(&reply), SEC).state,
        EST_RPL | ct_state::DNAT
    );
    // Zone 69 shares zone 5's bit word, not its bit.
    ct.commit(69, &pkt(&other), &commit_plain(), SEC).unwrap();
    assert!(!ct.had_self_replies(69));
}

#[test]
fn index_entries_start_on_a_cache_line() {
    // A key compared or inserted touches one line of the index, not two.
    let ct = table();
    let dnat = CtCommit {
        dnat: Some(NatRange::addr_port(ip4("10.1.0.5").into(), 8080)),
        ..CtCommit::default()
    };
    for sp in 1024..1056 {
        let p = pkt(&tcp4("10.0.0.1", sp, "172.16.0.10", 80, tf::SYN));
        ct.commit(3, &p, &dnat, SEC).unwrap();
        let reply = pkt(&tcp4("10.1.0.5", 8080, "10.0.0.1", sp, tf::SYN)).tuple;
        assert_eq!(ct.index_entry_line_offset(3, &p.tuple), Some(0));
        assert_eq!(ct.index_entry_line_offset(3, &reply), Some(0));
    }
}

#[test]
fn a_busy_reply_shard_delays_a_nat_commit_without_refusing_it() {
    let ct = Arc::new(table());
    let dnat = CtCommit {
        dnat: Some(NatRange::addr_port(ip4("10.1.0.5").into(), 8080)),
        ..CtCommit::default()
    };
    // A client port whose reply tuple (backend to client) lives in a shard
    // below the original's: the commit must take that lock out of order.
    let (frame, reply_shard) = (1024..u16::MAX)
        .find_map(|sp| {
            let f = tcp4("10.0.0.1", sp, "172.16.0.10", 80, tf::SYN);
            let reply = pkt(&tcp4("10.1.0.5", 8080, "10.0.0.1", sp, tf::SYN)).tuple;
            let r = ct.shard_of_tuple(&reply);
            (r < ct.shard_of_tuple(&pkt(&f).tuple)).then_some((f, r))
        })
        .unwrap();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let holder = {
        let ct = ct.clone();
        std::thread::spawn(move || {
            ct.with_shard_held(reply_shard, || {
                held_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            })
        })
    };
    held_rx.recv().unwrap();
    // The reply tuple is free: the commit waits for the shard, then opens
    // the connection (it used to give up with ct_nat_exhausted).
    let r = ct.commit(0, &pkt(&frame), &dnat, SEC);
    holder.join().unwrap();
    let r = r.unwrap();
    assert_eq!(r.state, NEW | ct_state::DNAT);
    assert_eq!(ct.len(), 1);
}

/// `commit_new` answers as `commit` does: it creates a connection the
/// caller just found missing, and one that another lcore committed since
/// the caller's lookup is found and updated, not created twice; a packet
/// that cannot open a connection stays invalid.
#[test]
fn commit_new_answers_as_commit_even_when_a_connection_appeared() {
    let marked = CtCommit {
        mark: 7,
        mark_mask: 0xff,
        ..CtCommit::default()
    };
    let q = pkt(&udp4("10.0.0.1", 5353, "10.0.0.53", 53));
    let (plain, fresh) = (table(), table());
    assert_eq!(plain.lookup(0, &q, SEC).state, NEW);
    assert_eq!(fresh.lookup(0, &q, SEC).state, NEW);
    let a = plain.commit(0, &q, &commit_plain(), SEC).unwrap();
    let b = fresh.commit_new(0, &q, &commit_plain(), SEC).unwrap();
    assert_eq!((a.state, a.mark), (b.state, b.mark));
    assert_eq!((plain.len(), fresh.len()), (1, 1));
    // The connection exists now (as if committed by another lcore after
    // the lookup): commit_new updates it, as commit does.
    let a = plain.commit(0, &q, &marked, 2 * SEC).unwrap();
    let b = fresh.commit_new(0, &q, &marked, 2 * SEC).unwrap();
    assert_eq!((a.state, a.mark, a.conn.is_some()), (b.state, 7, true));
    assert_eq!((plain.len(), fresh.len()), (1, 1));
    assert_eq!(fresh.lookup(0, &q, 3 * SEC).mark, 7);
    // A TCP segment that cannot open a connection.
    let rst = pkt(&tcp4("10.0.0.1", 40000, "10.0.0.80", 80, tf::ACK | tf::RST));
    let a = plain.commit(0, &rst, &commit_plain(), SEC).unwrap();
    let b = fresh.commit_new(0, &rst, &commit_plain(), SEC).unwrap();
    assert_eq!((a.state, b.state), (INV, INV));
    assert_eq!((plain.len(), fresh.len()), (1, 1));
}

#[test]
fn a_table_of_the_default_size_lives_in_one_huge_page_arena() {
    let ct = Conntrack::new(&ConntrackConfig::default());
    let m = ct.memory();
    // Every shard's arrays came from the arena (none from the system
    // allocator), and the estimate of their size was not short by more
    // than the last partly used huge page.
    assert_eq!(m.spilled, 0, "{m:?}");
    assert!(
        m.used <= m.size && m.size - m.used < crate::dpdk::HUGE_PAGE,
        "{m:?}"
    );
    // A table this small gets none.
    let small = Conntrack::new(&ConntrackConfig {
        capacity: 1000,
        ..ConntrackConfig::default()
    });
    assert_eq!(small.memory(), crate::dpdk::ArenaUsage::default());
}
