//! The fastpath between two vhost-user ports, with this test process as the
//! DPDK peer on both (virtio-user): frames of every kind arrive
//! byte-identical, counters match, and a peer that disconnects and comes
//! back gets traffic again.

mod common;

use common::{frames, receive, send, virtio_port, Fastpath};
use fastpath_api::{PortInfo, Request, Stats};
use std::time::Duration;

fn start() -> Fastpath {
    let dir = tempfile::Builder::new()
        .prefix("fp-test-")
        .tempdir()
        .unwrap();
    let a = dir.path().join("a.sock");
    let b = dir.path().join("b.sock");
    Fastpath::start_in(
        dir,
        &[
            "--port".into(),
            format!("a=net_vhost0,iface={},queues=1", a.display()),
            "--port".into(),
            format!("b=net_vhost1,iface={},queues=1", b.display()),
            "--worker".into(),
            "1=a,b".into(),
            "--xconnect".into(),
            "a,b".into(),
        ],
    )
}

#[test]
fn frames_cross_byte_identical_and_counters_match() {
    let fp = start();
    let (_eal, pool) = common::peer_eal();
    let pa = virtio_port(0, &fp.path("a.sock"), &pool);
    let pb = virtio_port(1, &fp.path("b.sock"), &pool);
    fp.wait_links_up(&["a", "b"]);

    let mut sent_ab: Vec<Vec<u8>> = Vec::new();
    for i in 0..8u8 {
        sent_ab.push(frames::arp());
        sent_ab.push(frames::ipv4_tcp(i));
        sent_ab.push(frames::ipv6_udp_ext(i));
        sent_ab.push(frames::vlan_icmp(i));
        sent_ab.push(frames::jumbo(i));
    }
    for f in &sent_ab {
        send(&pa, &pool, f);
    }
    let got = receive(&pb, sent_ab.len(), Duration::from_secs(10));
    assert_eq!(
        got.len(),
        sent_ab.len(),
        "every frame a->b arrives:\n{}",
        fp.log()
    );
    for (i, (g, s)) in got.iter().zip(&sent_ab).enumerate() {
        assert_eq!(g.len(), s.len(), "frame {i} length");
        assert!(g == s, "frame {i} differs");
    }

    let sent_ba: Vec<Vec<u8>> = (0..16u8).map(frames::ipv4_tcp).collect();
    for f in &sent_ba {
        send(&pb, &pool, f);
    }
    let got = receive(&pa, sent_ba.len(), Duration::from_secs(10));
    assert_eq!(got, sent_ba, "every frame b->a arrives unchanged");

    let mut c = fp.client();
    let stats: Stats = c.call_as(&Request::Stats).unwrap();
    let bytes_ab: u64 = sent_ab.iter().map(|f| f.len() as u64).sum();
    let bytes_ba: u64 = sent_ba.iter().map(|f| f.len() as u64).sum();
    let a = &stats.ports["a"];
    let b = &stats.ports["b"];
    assert_eq!((a.rx_packets, a.rx_bytes), (sent_ab.len() as u64, bytes_ab));
    assert_eq!((b.tx_packets, b.tx_bytes), (sent_ab.len() as u64, bytes_ab));
    assert_eq!((b.rx_packets, b.rx_bytes), (sent_ba.len() as u64, bytes_ba));
    assert_eq!((a.tx_packets, a.tx_bytes), (sent_ba.len() as u64, bytes_ba));
    assert_eq!(stats.lcores.len(), 1);
    assert_eq!(
        stats.lcores[0].packets,
        (sent_ab.len() + sent_ba.len()) as u64
    );
    assert!(stats.lcores[0].busy_cycles > 0);
    assert!(stats.drops.is_empty(), "no drops: {:?}", stats.drops);
    // The first busy poll is always timed stage by stage; xconnect neither
    // parses nor prefetches.
    let l = &stats.lcores[0];
    let stage = |name: &str| {
        l.stages
            .iter()
            .find(|s| s.stage == name)
            .map(|s| s.cycles_per_packet)
            .unwrap_or_else(|| panic!("no stage {name}: {:?}", l.stages))
    };
    assert!(l.stage_packets > 0 && l.stage_packets <= l.packets, "{l:?}");
    assert!(stage("rx") > 0.0 && stage("tx") > 0.0, "{l:?}");
    assert_eq!((stage("parse"), stage("prefetch")), (0.0, 0.0), "{l:?}");

    let ports: Vec<PortInfo> = c.call_as(&Request::Ports).unwrap();
    assert_eq!(ports.len(), 2);
    assert!(ports.iter().all(|p| p.driver == "net_vhost" && p.link_up));
}

#[test]
fn peer_that_reconnects_gets_traffic_again() {
    let fp = start();
    let (_eal, pool) = common::peer_eal();
    let pa = virtio_port(0, &fp.path("a.sock"), &pool);
    let pb = virtio_port(1, &fp.path("b.sock"), &pool);
    fp.wait_links_up(&["a", "b"]);
    send(&pa, &pool, &frames::ipv4_tcp(1));
    assert_eq!(receive(&pb, 1, Duration::from_secs(10)).len(), 1);

    // The b peer goes away: the fastpath sees its link down, and traffic to
    // it is dropped under a named reason, not queued or crashed on.
    drop(pb);
    let mut c = fp.client();
    let start = std::time::Instant::now();
    loop {
        let ports: Vec<PortInfo> = c.call_as(&Request::Ports).unwrap();
        if !ports.iter().find(|p| p.name == "b").unwrap().link_up {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "link b never went down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..4 {
        send(&pa, &pool, &frames::ipv4_tcp(i));
    }
    let start = std::time::Instant::now();
    loop {
        let stats: Stats = c.call_as(&Request::Stats).unwrap();
        if stats.drops.get("tx_full").copied().unwrap_or(0) >= 4 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "drops not counted: {:?}",
            stats.drops
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // It comes back on the same socket and gets traffic again.
    let pb = virtio_port(2, &fp.path("b.sock"), &pool);
    fp.wait_links_up(&["a", "b"]);
    let frame = frames::ipv6_udp_ext(9);
    send(&pa, &pool, &frame);
    let got = receive(&pb, 1, Duration::from_secs(10));
    assert_eq!(
        got,
        vec![frame],
        "traffic reaches the reconnected peer:\n{}",
        fp.log()
    );
}
