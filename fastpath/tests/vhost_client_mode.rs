//! A vhost-user port in client mode: the fastpath connects to a socket the
//! peer serves, and reconnects by itself when the peer goes away and comes
//! back.

mod common;

use common::{frames, receive, send, virtio_port, virtio_server_port, Fastpath};
use std::time::Duration;

#[test]
fn client_port_reconnects_to_a_restarted_peer() {
    let dir = tempfile::Builder::new()
        .prefix("fp-test-")
        .tempdir()
        .unwrap();
    let a = dir.path().join("a.sock");
    let b = dir.path().join("b.sock");
    // The fastpath starts first: its client port keeps trying to connect
    // until the peer serves b.sock (a DPDK virtio-user server blocks in
    // accept() until its backend connects).
    let fp = Fastpath::start_in(
        dir,
        &[
            "--port".into(),
            format!("a=net_vhost0,iface={},queues=1", a.display()),
            "--port".into(),
            format!("b=net_vhost1,iface={},queues=1,client=1", b.display()),
            "--worker".into(),
            "1=a,b".into(),
            "--xconnect".into(),
            "a,b".into(),
        ],
    );
    let (_eal, pool) = common::peer_eal();
    let pb = virtio_server_port(1, &b, &pool);
    let pa = virtio_port(0, &a, &pool);
    fp.wait_links_up(&["a", "b"]);
    let f = frames::ipv4_tcp(3);
    send(&pa, &pool, &f);
    assert_eq!(
        receive(&pb, 1, Duration::from_secs(10)),
        vec![f.clone()],
        "{}",
        fp.log()
    );

    // The serving peer restarts: its socket disappears and comes back.
    drop(pb);
    std::thread::sleep(Duration::from_millis(300));
    let pb = virtio_server_port(2, &b, &pool);
    let f2 = frames::vlan_icmp(4);
    // The fastpath's reconnect loop may take a moment: keep offering frames
    // until one arrives, then check that it is intact.
    let start = std::time::Instant::now();
    let got = loop {
        send(&pa, &pool, &f2);
        let got = receive(&pb, 1, Duration::from_millis(200));
        if !got.is_empty() {
            break got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "client port never reconnected:\n{}",
            fp.log()
        );
    };
    assert_eq!(got[0], f2);
}
