//! The flow cache with conntrack, without an EAL: a ClusterIP load balancer
//! and a stateful ACL compiled by the real ovn-northd and `ovn-bridge
//! compile`, one TCP connection driven through an lcore's decision
//! (`OvnLcore::decide_tracked`) over the process-wide connection table.
//! The first packets of the connection miss (a packet that created a
//! connection is not cached: its next packet finds that connection),
//! established packets hit (one
//! cache hit plus one conntrack touch per connection the verdict saw), a
//! flush of the connection makes the next packet miss again and be treated
//! as OVN treats a mid-stream packet of no connection (picked up as new and
//! load-balanced again), and a half-open packet of no connection is invalid
//! (dropped by the stateful ACL).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::mac_text;
use fastpath::conntrack::{Conntrack, ConntrackConfig, CtFilter};
use fastpath::ovn::ct_engine::{received_packet, ConntrackEngine, LbAffinity, Mode};
use fastpath::ovn::lcore::{CtInput, OvnLcore};
use fastpath::stats::LcoreStats;
use ovsdb::testing::OvnCentral;

const P1_MAC: [u8; 6] = [0x50, 0x54, 0, 0, 0, 1];
const P2_MAC: [u8; 6] = [0x50, 0x54, 0, 0, 0, 2];
const GW_MAC: [u8; 6] = [0, 0, 0, 0, 0xff, 1];
const P1_IP: [u8; 4] = [10, 0, 0, 11];
const P2_IP: [u8; 4] = [10, 0, 0, 12];
const VIP: [u8; 4] = [10, 96, 0, 10];

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// sw0 (p1 10.0.0.11, p2 10.0.0.12) behind lr0 (10.0.0.1), a TCP load
/// balancer 10.96.0.10:80 -> 10.0.0.12:8080 on sw0 and a stateful ACL
/// (allow-related), p1 and p2 bound to hv1.
fn central() -> OvnCentral {
    let ovn = OvnCentral::start().expect("NB, SB and ovn-northd");
    let nb = |args: &[&str]| {
        ovn.nbctl(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    };
    nb(&["ls-add", "sw0"]);
    nb(&["lr-add", "lr0"]);
    nb(&["lrp-add", "lr0", "lrp0", &mac_text(&GW_MAC), "10.0.0.1/24"]);
    nb(&["lsp-add", "sw0", "sw0-lr0"]);
    nb(&["lsp-set-type", "sw0-lr0", "router"]);
    nb(&["lsp-set-addresses", "sw0-lr0", "router"]);
    nb(&["lsp-set-options", "sw0-lr0", "router-port=lrp0"]);
    for (p, m, ip) in [("p1", P1_MAC, "10.0.0.11"), ("p2", P2_MAC, "10.0.0.12")] {
        nb(&["lsp-add", "sw0", p]);
        nb(&["lsp-set-addresses", p, &format!("{} {ip}", mac_text(&m))]);
    }
    nb(&["lb-add", "lb0", "10.96.0.10:80", "10.0.0.12:8080", "tcp"]);
    nb(&["ls-lb-add", "sw0", "lb0"]);
    nb(&[
        "acl-add",
        "sw0",
        "from-lport",
        "1000",
        "ip4",
        "allow-related",
    ]);
    ovn.sbctl(&["chassis-add", "hv1", "geneve", "127.0.0.1"])
        .expect("chassis");
    ovn.sync(Duration::from_secs(30)).expect("northd");
    for p in ["p1", "p2"] {
        ovn.sbctl(&["lsp-bind", p, "hv1"]).expect("bind");
    }
    ovn.sync(Duration::from_secs(30)).expect("northd");
    ovn
}

/// An Ethernet + IPv4 + TCP frame with valid checksums.
fn tcp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    flags: u8,
) -> Vec<u8> {
    common::tcp_frame((dst_mac, src_mac), src, dst, 1, flags, b"ping")
}

/// One copy delivered: fastpath port, source and destination (address,
/// port) after the rewrite.
type Delivery = (u16, [u8; 4], u16, [u8; 4], u16);

/// What one packet came to: the fastpath ports it left through, with the
/// destination (address, port) the rewrite gives it, or the drop reason.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Out(Vec<Delivery>),
    Dropped(String),
}

struct Lcore {
    lcore: OvnLcore,
    engine: ConntrackEngine,
    stats: LcoreStats,
    now: u64,
}

impl Lcore {
    /// The readable trace of a packet against the live table (read-only),
    /// for failure messages.
    fn trace(&self, in_port: u16, frame: &[u8]) -> String {
        let program = self.lcore.program().expect("a program").clone();
        let (key, layout) = fastpath_packet::extract(frame, in_port).expect("frame parses");
        let mut it = fastpath::ovn::Interpreter::new();
        it.tracing = true;
        let mut ct = ConntrackEngine::new(
            self.engine.conntrack().clone(),
            self.engine.affinity().clone(),
            Mode::ReadOnly,
        );
        ct.begin(self.now, 0, Some(received_packet(&key, &layout, frame)));
        let inport = program.port_by_fastpath(in_port).expect("inport");
        it.run_with(&program, inport, &key, frame.len() as u32, &mut ct);
        fastpath::ovn::trace::render(&program, inport, &key, &it)
    }

    /// Sends a packet and checks its fate, with the trace (taken before
    /// the packet) when it is not the one expected.
    fn expect(&mut self, in_port: u16, frame: &[u8], want: &Fate, what: &str) {
        let trace = self.trace(in_port, frame);
        let got = self.packet(in_port, frame);
        assert_eq!(&got, want, "{what}:\n{trace}");
    }

    fn packet(&mut self, in_port: u16, frame: &[u8]) -> Fate {
        self.now += 1_000_000;
        let (key, layout) = fastpath_packet::extract(frame, in_port).expect("frame parses");
        let ct = CtInput {
            engine: &mut self.engine,
            now_ns: self.now,
            frame: Some((&layout, frame)),
            ip_len: u32::from(layout.end - layout.l3),
        };
        let d = self
            .lcore
            .decide_tracked(&key, frame.len() as u32, self.now, &self.stats.cache, ct)
            .expect("a program");
        if d.entry.outputs.is_empty() {
            return Fate::Dropped(d.entry.drop.map(|x| x.name()).unwrap_or_default());
        }
        let mut outs = Vec::new();
        for o in &d.entry.outputs {
            let mut f = frame.to_vec();
            o.rewrite.apply(&mut f, &layout).expect("rewrite");
            let (k, _) = fastpath_packet::extract(&f, 0).expect("rewritten frame parses");
            let v4 = |a: [u8; 16]| [a[12], a[13], a[14], a[15]];
            outs.push((o.port, v4(k.src()), k.tp_src(), v4(k.dst()), k.tp_dst()));
        }
        Fate::Out(outs)
    }
}

#[test]
fn established_connection_hits_the_cache_and_a_flush_makes_it_new_again() {
    let ovn = central();
    let dir = tempfile::tempdir().expect("tempdir");
    let program = common::compile_program(
        &ovn.sb.remote,
        "hv1",
        &[("p1", 0), ("p2", 1)],
        &dir.path().join("tables"),
    );
    let ct = Arc::new(Conntrack::new(&ConntrackConfig {
        capacity: 1024,
        shards: 4,
        ..Default::default()
    }));
    let learned = Arc::new(crossbeam::queue::ArrayQueue::new(64));
    let mut lc = Lcore {
        lcore: OvnLcore::new(1024, learned),
        engine: ConntrackEngine::new(ct.clone(), Arc::new(LbAffinity::new(64)), Mode::Live),
        stats: LcoreStats::new(0, Vec::new(), 4),
        now: 0,
    };
    lc.lcore.set_program(Some(Arc::new(program)));
    let (sport, vport, bport) = (40000u16, 80u16, 8080u16);
    let to_vip = |flags| tcp_frame(GW_MAC, P1_MAC, (P1_IP, sport), (VIP, vport), flags);
    let from_backend = |flags| tcp_frame(P1_MAC, P2_MAC, (P2_IP, bport), (P1_IP, sport), flags);
    let at_backend = Fate::Out(vec![(1, P1_IP, sport, P2_IP, bport)]);
    let at_client = Fate::Out(vec![(0, VIP, vport, P1_IP, sport)]);
    let cache = |lc: &Lcore| (lc.stats.cache.hits.get(), lc.stats.cache.misses.get());

    // Handshake: every packet misses (the SYN and SYN-ACK see a new
    // connection; the first ACK builds the entry of the established one).
    lc.expect(0, &to_vip(SYN), &at_backend, "SYN reaches the backend");
    // The SYN created the connection its next packet finds: an entry of
    // it would be stale on first use, so it is not cached.
    assert_eq!(lc.stats.cache.entries.get(), 0, "the SYN is not cached");
    lc.expect(
        1,
        &from_backend(SYN | ACK),
        &at_client,
        "reply from the VIP",
    );
    // The reply created nothing: its entry is cached.
    assert_eq!(lc.stats.cache.entries.get(), 1, "the SYN-ACK is cached");
    lc.expect(0, &to_vip(ACK), &at_backend, "ACK");
    lc.expect(1, &from_backend(ACK), &at_client, "ACK back");
    let (hits, misses) = cache(&lc);
    assert_eq!((hits, misses), (0, 4), "handshake packets all miss");

    // Established: both directions hit, and every hit refreshes the
    // connection (its packet counters move).
    let before = ct.list(&CtFilter::default(), 16);
    for _ in 0..5 {
        lc.expect(0, &to_vip(PSH | ACK), &at_backend, "data");
        lc.expect(1, &from_backend(PSH | ACK), &at_client, "data back");
    }
    let (hits, misses2) = cache(&lc);
    assert_eq!(
        misses2,
        misses + 2,
        "only the first established packet of each way misses"
    );
    assert_eq!(hits, 8);
    let after = ct.list(&CtFilter::default(), 16);
    let total = |v: &[fastpath::conntrack::CtEntryView]| {
        v.iter().map(|e| e.packets[0] + e.packets[1]).sum::<u64>()
    };
    assert!(
        total(&after) >= total(&before) + 10,
        "hits touch the connections: {before:?} -> {after:?}"
    );
    assert!(
        after
            .iter()
            .any(|e| e.status & 0x80 != 0 && e.original.dst[12..] == VIP),
        "the load-balanced connection is tracked with DNAT: {after:?}"
    );

    // Flushed: the next packet misses, and is what OVN makes of a
    // mid-stream packet of no connection: picked up as new (as OVS's
    // conntrack does), load-balanced and committed again.
    assert!(ct.flush(&CtFilter::default()) >= 1);
    assert!(ct.is_empty());
    let (h0, m0) = cache(&lc);
    lc.expect(
        0,
        &to_vip(PSH | ACK),
        &at_backend,
        "the first packet after a flush",
    );
    assert_eq!(
        cache(&lc),
        (h0, m0 + 1),
        "after a flush the cached entry is not used"
    );
    let again = ct.list(&CtFilter::default(), 16);
    assert!(
        again
            .iter()
            .any(|e| e.status & 0x80 != 0 && e.status & 0x02 == 0 && e.original.dst[12..] == VIP),
        "a new (not yet answered) load-balanced connection: {again:?}"
    );
    // Its reply makes it established again, and the flow is cached anew.
    lc.expect(
        1,
        &from_backend(PSH | ACK),
        &at_client,
        "reply after the flush",
    );
    for _ in 0..3 {
        lc.expect(0, &to_vip(PSH | ACK), &at_backend, "data after the flush");
    }
    assert!(cache(&lc).0 > h0, "established again: hits resume");

    // A SYN-ACK of no connection is invalid; the stateful ACL drops it.
    let stray = tcp_frame(P1_MAC, P2_MAC, (P2_IP, bport), (P1_IP, 40001), SYN | ACK);
    let got = lc.packet(1, &stray);
    assert_eq!(
        got,
        Fate::Dropped("ovn_drop_action".into()),
        "{}",
        lc.trace(1, &stray)
    );

    // A new SYN opens a new connection through the load balancer.
    // A new connection from another port is load-balanced as well.
    let n = ct.len();
    let syn = tcp_frame(GW_MAC, P1_MAC, (P1_IP, 40002), (VIP, vport), SYN);
    let want = Fate::Out(vec![(1, P1_IP, 40002, P2_IP, bport)]);
    lc.expect(0, &syn, &want, "a new connection");
    assert!(ct.len() > n);
}
