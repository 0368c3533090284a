//! Packets through a running fastpath with the OVN pipeline: real NB and SB
//! ovsdb-servers and ovn-northd, the real `ovn-bridge compile` following the
//! Southbound into the table file, and the fastpath with two vhost-user
//! ports mapped to two logical ports behind a router; this test process is
//! the DPDK peer on both. Checks routed forwarding with its rewrites, the
//! gateway's ARP and ping answers, port security, a table change reaching a
//! cached flow, flow dumps and flushes, and the control-thread trace.

mod common;

use fastpath_packet::checksum::checksum;

use common::netns::wait_generation;
use common::{mac_text, receive, send, virtio_port, Fastpath};
use fastpath_api::{LcoreFlows, Request, Stats, TraceResult};
use ovsdb::testing::OvnCentral;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const P1: [u8; 6] = [0x50, 0x54, 0, 0, 0, 1];
const P3: [u8; 6] = [0x50, 0x54, 0, 0, 0, 3];
const GW0: [u8; 6] = [0, 0, 0, 0, 0xff, 1];
const GW1: [u8; 6] = [0, 0, 0, 0, 0xff, 2];

/// NB + SB + northd + `ovn-bridge compile`; killed on drop.
/// An OVN central (`ovsdb::testing::OvnCentral`) plus the `ovn-bridge
/// compile` process following its Southbound DB; all killed on drop.
struct Central {
    ovn: OvnCentral,
    compile: Option<Child>,
}

impl Drop for Central {
    fn drop(&mut self) {
        if let Some(c) = self.compile.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Central {
    fn start() -> Central {
        Central {
            ovn: OvnCentral::start().expect("NB, SB and ovn-northd"),
            compile: None,
        }
    }

    fn nb(&self, args: &[&str]) {
        self.ovn
            .nbctl(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }

    fn sync(&self) {
        self.ovn
            .sync(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("northd never caught up: {e}"));
    }

    /// sw0 (p1 10.0.0.11) and sw1 (p3 10.0.1.13) behind lr0, with port
    /// security on p1, both bound to chassis hv1.
    fn topology(&self) {
        for cmd in [
            "ls-add sw0",
            "ls-add sw1",
            "lr-add lr0",
            &format!("lrp-add lr0 lrp0 {} 10.0.0.1/24", mac_text(&GW0)),
            &format!("lrp-add lr0 lrp1 {} 10.0.1.1/24", mac_text(&GW1)),
        ] {
            self.nb(&cmd.split_whitespace().collect::<Vec<_>>());
        }
        for (sw, lsp, lrp) in [("sw0", "sw0-lr0", "lrp0"), ("sw1", "sw1-lr0", "lrp1")] {
            self.nb(&["lsp-add", sw, lsp]);
            self.nb(&["lsp-set-type", lsp, "router"]);
            self.nb(&["lsp-set-addresses", lsp, "router"]);
            self.nb(&["lsp-set-options", lsp, &format!("router-port={lrp}")]);
        }
        for (sw, p, m, ip) in [
            ("sw0", "p1", P1, "10.0.0.11"),
            ("sw1", "p3", P3, "10.0.1.13"),
        ] {
            let addr = format!("{} {ip}", mac_text(&m));
            self.nb(&["lsp-add", sw, p]);
            self.nb(&["lsp-set-addresses", p, &addr]);
            if p == "p1" {
                self.nb(&["lsp-set-port-security", p, &addr]);
            }
        }
        self.ovn
            .sbctl(&["chassis-add", "hv1", "geneve", "127.0.0.1"])
            .expect("chassis");
        self.sync();
        for p in ["p1", "p3"] {
            self.ovn.sbctl(&["lsp-bind", p, "hv1"]).expect("bind");
        }
        self.sync();
    }

    /// Starts `ovn-bridge compile` (built beside the fastpath binary)
    /// following the Southbound into `tables`.
    fn follow(&mut self, tables: &std::path::Path, log: PathBuf) {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_fastpath")).with_file_name("ovn-bridge");
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --workspace --bins` first",
            bin.display()
        );
        let log = std::fs::File::create(log).expect("log");
        self.compile = Some(
            Command::new(bin)
                .args(["compile", "--sb", &self.ovn.sb.remote, "--chassis", "hv1"])
                .arg("--tables")
                .arg(tables)
                .args(["--port", "p1=0", "--port", "p3=1"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("ovn-bridge compile"),
        );
    }
}

fn ipv4(src: [u8; 4], dst: [u8; 4], ttl: u8, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, ttl, proto, 0, 0];
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    if f.len() < 60 {
        f.resize(60, 0);
    }
    f
}

/// UDP (zero checksum) from p1's MAC to the gateway, from `src` to 10.0.1.13.
fn udp_to_p3(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut udp = vec![0u8; 8];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&5000u16.to_be_bytes());
    udp.extend_from_slice(&[0xab; 18]);
    let len = udp.len() as u16;
    udp[4..6].copy_from_slice(&len.to_be_bytes());
    eth(GW0, P1, 0x0800, &ipv4(src, [10, 0, 1, 13], 64, 17, &udp))
}

/// The fastpath with vhost-user ports `a` (p1) and `b` (p3) and the OVN
/// pipeline over the tables `ovn-bridge compile` publishes from
/// `central`.
fn start_following(central: &mut Central) -> Fastpath {
    let dir = tempfile::Builder::new()
        .prefix("fp-ovn-")
        .tempdir()
        .unwrap();
    let tables = dir.path().join("tables");
    central.follow(&tables, dir.path().join("compile.log"));
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
            "--pipeline".into(),
            "ovn".into(),
            "--tables".into(),
            tables.display().to_string(),
        ],
    )
}

/// The fastpath following `central`'s tables with this process as the
/// DPDK peer on both ports (`pa` is p1's, `pb` p3's), links up and the
/// first generation in use.
struct Routed {
    fp: Fastpath,
    _eal: fastpath::dpdk::Eal,
    pool: fastpath::dpdk::Mempool,
    pa: fastpath::dpdk::EthPort,
    pb: fastpath::dpdk::EthPort,
}

impl Routed {
    fn start(central: &mut Central) -> Routed {
        let fp = start_following(central);
        let (eal, pool) = common::peer_eal();
        let pa = virtio_port(0, &fp.path("a.sock"), &pool);
        let pb = virtio_port(1, &fp.path("b.sock"), &pool);
        fp.wait_links_up(&["a", "b"]);
        wait_generation(&fp, 0);
        Routed {
            fp,
            _eal: eal,
            pool,
            pa,
            pb,
        }
    }
}

fn stats(fp: &Fastpath) -> Stats {
    fp.client().call_as(&Request::Stats).unwrap()
}

#[test]
fn routed_arp_ping_port_security_and_table_change() {
    let mut central = Central::start();
    central.topology();
    let Routed {
        fp,
        _eal,
        pool,
        pa,
        pb,
    } = Routed::start(&mut central);

    // Routed: p1 -> gateway -> p3, rewritten and TTL decremented; later
    // packets of the flow hit the cache.
    for _ in 0..4 {
        send(&pa, &pool, &udp_to_p3([10, 0, 0, 11], 1000));
    }
    let got = receive(&pb, 4, Duration::from_secs(10));
    assert_eq!(got.len(), 4, "routed frames arrive on b:\n{}", fp.log());
    for f in &got {
        assert_eq!(&f[0..6], &P3, "destination MAC is p3's");
        assert_eq!(&f[6..12], &GW1, "source MAC is the router port's");
        assert_eq!(f[22], 63, "TTL decremented");
        assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum valid");
        assert_eq!(&f[30..34], &[10, 0, 1, 13]);
    }
    let s = stats(&fp);
    let l = &s.lcores[0];
    // One miss, then hits (a republished generation in between turns a hit
    // into a revalidation).
    assert_eq!(l.cache_misses, 1, "{l:?}");
    assert_eq!(l.cache_hits + l.cache_revalidations, 3, "{l:?}");
    assert!(l.cache_hits >= 1, "{l:?}");
    // The first busy poll was timed stage by stage: every stage of the
    // OVN pipeline took time (the miss ran the interpreter in `decide`).
    let names: Vec<&str> = l.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(names, ["rx", "parse", "prefetch", "decide", "tx"], "{l:?}");
    assert!(l.stage_packets > 0 && l.stage_packets <= l.packets, "{l:?}");
    assert!(
        l.stages.iter().all(|s| s.cycles_per_packet > 0.0),
        "{:?}",
        l.stages
    );

    // The gateway answers ARP.
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&P1);
    arp.extend_from_slice(&[10, 0, 0, 11]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 0, 0, 1]);
    send(&pa, &pool, &eth([0xff; 6], P1, 0x0806, &arp));
    let got = receive(&pa, 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "ARP reply:\n{}", fp.log());
    let r = &got[0];
    assert_eq!(&r[0..6], &P1);
    assert_eq!(&r[12..14], &[8, 6]);
    assert_eq!(&r[20..22], &[0, 2], "ARP reply op");
    assert_eq!(&r[22..28], &GW0, "sender MAC is the gateway's");
    assert_eq!(&r[28..32], &[10, 0, 0, 1]);
    assert_eq!(&r[38..42], &[10, 0, 0, 11]);

    // The gateway answers ping.
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8];
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    send(
        &pa,
        &pool,
        &eth(
            GW0,
            P1,
            0x0800,
            &ipv4([10, 0, 0, 11], [10, 0, 0, 1], 64, 1, &icmp),
        ),
    );
    let got = receive(&pa, 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "echo reply:\n{}", fp.log());
    let r = &got[0];
    assert_eq!((&r[0..6], &r[6..12]), (&P1[..], &GW0[..]));
    assert_eq!(&r[26..30], &[10, 0, 0, 1], "from the gateway");
    assert_eq!(&r[30..34], &[10, 0, 0, 11], "to the pinger");
    assert_eq!(r[34], 0, "echo reply type");
    assert_eq!(checksum(&r[14..34]), 0, "IPv4 header checksum valid");
    assert_eq!(checksum(&r[34..50]), 0, "ICMP checksum valid");

    // Port security: a spoofed source is dropped and counted.
    let before = stats(&fp);
    send(&pa, &pool, &udp_to_p3([10, 0, 0, 99], 1000));
    assert!(receive(&pb, 1, Duration::from_millis(500)).is_empty());
    let after = stats(&fp);
    let drops = |s: &Stats| s.drops.get("ovn_drop_action").copied().unwrap_or(0);
    assert_eq!(
        drops(&after),
        drops(&before) + 1,
        "spoofed packet counted: {:?}",
        after.drops
    );

    // Flow dump: the routed flow is there with its output and rewrites.
    let flows: Vec<LcoreFlows> = fp.client().call_as(&Request::Flows).unwrap();
    assert_eq!(flows.len(), 1);
    let routed = flows[0]
        .flows
        .iter()
        .find(|f| f.key.contains("ip4.src=10.0.0.11") && f.key.contains("ip4.dst=10.0.1.13"))
        .unwrap_or_else(|| panic!("routed flow in {flows:?}"));
    assert!(
        routed.actions.contains("output:p3(port 1)") && routed.actions.contains("ip.ttl=63"),
        "{routed:?}"
    );
    let routed_generation = routed.generation;
    if l.cache_revalidations == 0 {
        assert_eq!(routed.hits, 4, "{routed:?}");
    } else {
        assert!(routed.hits >= 1, "{routed:?}");
    }
    assert!(flows[0].flows.iter().any(
        |f| f.key.contains("ip4.src=10.0.0.99") && f.actions.contains("drop(ovn_drop_action)")
    ));

    // Trace on the control thread.
    let t: TraceResult = fp
        .client()
        .call_as(&Request::Trace {
            inport: "p1".into(),
            packet: format!(
                "eth.src={}, eth.dst={}, ip4.src=10.0.0.11, ip4.dst=10.0.1.13, ip.ttl=64, tcp.dst=80",
                mac_text(&P1),
                mac_text(&GW0)
            ),
        })
        .unwrap();
    assert_eq!(t.outputs.len(), 1, "{}", t.text);
    assert_eq!(t.outputs[0].port, "p3");
    assert_eq!(t.outputs[0].fastpath_port, Some(1));
    assert!(
        t.outputs[0].rewrite.contains("ip.ttl=63"),
        "{:?}",
        t.outputs
    );
    for stage in [
        "ls_in_check_port_sec",
        "lr_in_ip_routing",
        "ls_out_check_port_sec",
    ] {
        assert!(t.text.contains(stage), "trace names {stage}:\n{}", t.text);
    }
    assert!(t.text.contains("ingress(dp=\"lr0\")"), "{}", t.text);
    let spoof: TraceResult = fp
        .client()
        .call_as(&Request::Trace {
            inport: "p1".into(),
            packet: format!(
                "eth.src={}, eth.dst={}, ip4.src=10.0.0.99, ip4.dst=10.0.1.13",
                mac_text(&P1),
                mac_text(&GW0)
            ),
        })
        .unwrap();
    assert!(spoof.outputs.is_empty());
    assert_eq!(spoof.drop.as_deref(), Some("ovn_drop_action"));
    assert!(fp
        .client()
        .call(&Request::Trace {
            inport: "nope".into(),
            packet: "ip4.dst=10.0.0.1".into()
        })
        .unwrap_err()
        .to_string()
        .contains("no logical port"));

    // A table change reaches the flow already in the cache: p3 goes away,
    // and the next packet of the cached flow is revalidated and dropped.
    central.nb(&["lsp-del", "p3"]);
    central.sync();
    let routed_trace = Request::Trace {
        inport: "p1".into(),
        packet: format!(
            "eth.src={}, eth.dst={}, ip4.src=10.0.0.11, ip4.dst=10.0.1.13, udp.src=1000, udp.dst=5000",
            mac_text(&P1),
            mac_text(&GW0)
        ),
    };
    let start = Instant::now();
    while !fp
        .client()
        .call_as::<TraceResult>(&routed_trace)
        .unwrap()
        .outputs
        .is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "p3 never went away"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let g2 = wait_generation(&fp, 0);
    let before = stats(&fp);
    send(&pa, &pool, &udp_to_p3([10, 0, 0, 11], 1000));
    assert!(
        receive(&pb, 1, Duration::from_millis(500)).is_empty(),
        "the removed port gets nothing"
    );
    let after = stats(&fp);
    assert_eq!(
        after.lcores[0].cache_revalidations,
        before.lcores[0].cache_revalidations + 1
    );
    let dropped = |s: &Stats| -> u64 {
        s.drops
            .iter()
            .filter(|(k, _)| k.starts_with("ovn_"))
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(dropped(&after), dropped(&before) + 1, "{:?}", after.drops);
    let flows: Vec<LcoreFlows> = fp.client().call_as(&Request::Flows).unwrap();
    let routed = flows[0]
        .flows
        .iter()
        .find(|f| f.key.contains("ip4.src=10.0.0.11") && f.key.contains("ip4.dst=10.0.1.13"))
        .unwrap();
    // Either rebuilt from the new generation as a drop, or (the router now
    // generates an ARP request for the vanished address, which is never
    // cached) left stale, so that every packet is re-run.
    assert_eq!(flows[0].generation, g2);
    if routed.generation > routed_generation {
        assert!(routed.actions.starts_with("drop("), "{routed:?}");
    } else {
        assert!(routed.generation < g2, "{routed:?}");
    }

    // Flush empties every cache.
    let v = fp.client().call(&Request::FlowsFlush).unwrap();
    assert!(v["flushed"].as_u64().unwrap() >= 2, "{v}");
    let flows: Vec<LcoreFlows> = fp.client().call_as(&Request::Flows).unwrap();
    assert!(flows[0].flows.is_empty());
}

/// A UDP datagram of `len` bytes of IP from p1 to p3, through the gateway.
fn udp_to_p3_sized(len: usize) -> Vec<u8> {
    let mut udp = vec![0u8; len - 20];
    udp[0..2].copy_from_slice(&1000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&5000u16.to_be_bytes());
    let n = udp.len() as u16;
    udp[4..6].copy_from_slice(&n.to_be_bytes());
    eth(
        GW0,
        P1,
        0x0800,
        &ipv4([10, 0, 0, 11], [10, 0, 1, 13], 64, 17, &udp),
    )
}

/// `options:gateway_mtu` on the router port towards p3: a 1 500-byte
/// packet comes back to its sender as ICMP "fragmentation needed" with
/// the MTU, quoting its header, and never reaches p3; a 1 400-byte one
/// is routed. The trace shows the same with `len=`.
#[test]
fn gateway_mtu_answers_oversized_packets_over_vhost() {
    let mut central = Central::start();
    central.topology();
    central.nb(&[
        "set",
        "logical_router_port",
        "lrp1",
        "options:gateway_mtu=1400",
    ]);
    central.sync();
    let Routed {
        fp,
        _eal,
        pool,
        pa,
        pb,
    } = Routed::start(&mut central);

    let big = udp_to_p3_sized(1500);
    for _ in 0..2 {
        send(&pa, &pool, &big);
    }
    let got = receive(&pa, 2, Duration::from_secs(10));
    assert_eq!(got.len(), 2, "two errors back to p1:\n{}", fp.log());
    assert!(
        receive(&pb, 1, Duration::from_millis(300)).is_empty(),
        "nothing oversized reaches p3"
    );
    for r in &got {
        assert_eq!((&r[0..6], &r[6..12]), (&P1[..], &GW0[..]));
        assert_eq!(&r[12..14], &[8, 0]);
        assert_eq!(r[23], 1, "ICMP");
        assert_eq!(&r[26..30], &[10, 0, 0, 1], "from the gateway");
        assert_eq!(&r[30..34], &[10, 0, 0, 11], "to the sender");
        assert_eq!((r[34], r[35]), (3, 4), "fragmentation needed");
        assert_eq!(&r[38..42], &[0, 0, 0x05, 0x78], "next-hop MTU 1 400");
        assert_eq!(checksum(&r[14..34]), 0, "IPv4 header checksum valid");
        let ip_len = usize::from(u16::from_be_bytes([r[16], r[17]]));
        assert_eq!(ip_len, 20 + 8 + 28, "quotes the header and 8 bytes");
        assert_eq!(checksum(&r[34..14 + ip_len]), 0, "ICMP checksum valid");
        assert_eq!(&r[42..70], &big[14..42], "the quoted header");
    }

    let fits = udp_to_p3_sized(1400);
    send(&pa, &pool, &fits);
    let got = receive(&pb, 1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "1 400 bytes are routed:\n{}", fp.log());
    assert_eq!(got[0].len(), fits.len());
    assert_eq!(got[0][22], 63, "TTL decremented");

    let trace = |len: usize| -> TraceResult {
        fp.client()
            .call_as(&Request::Trace {
                inport: "p1".into(),
                packet: format!(
                    "eth.src={}, eth.dst={}, ip4.src=10.0.0.11, ip4.dst=10.0.1.13, udp.dst=5000, len={len}",
                    mac_text(&P1),
                    mac_text(&GW0)
                ),
            })
            .unwrap()
    };
    let t = trace(1514);
    assert_eq!(t.outputs.len(), 1, "{}", t.text);
    assert_eq!(t.outputs[0].port, "p1", "{}", t.text);
    assert!(t.text.contains("check_pkt_larger"), "{}", t.text);
    assert!(t.text.contains("icmp4_error"), "{}", t.text);
    let t = trace(1414);
    assert_eq!(t.outputs.len(), 1, "{}", t.text);
    assert_eq!(t.outputs[0].port, "p3", "{}", t.text);
}
