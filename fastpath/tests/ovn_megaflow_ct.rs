//! The megaflow cache with conntrack, without an EAL, over the tables
//! `ovn-bridge compile` publishes for `perf run acl-lb` (a ClusterIP load
//! balancer with three backends behind a router, and a NetworkPolicy on
//! the backends' switch; the slot the benchmarks load): UDP connections
//! from the client to the VIP through an lcore's decision.
//!
//! A connection's first packet is not cached (its next packet finds the
//! connection it created), and an established packet of another
//! connection to the same backend is served by the megaflow the first
//! connection's established packet left: its preview follows the DNAT
//! into the backend's zone and finds the connection there, answered.

#[path = "../benches/common/mod.rs"]
mod slot;

use std::sync::Arc;

use crossbeam::queue::ArrayQueue;
use fastpath::config::PipelineSection;
use fastpath::conntrack::{Conntrack, ConntrackConfig};
use fastpath::ovn::ct_engine::{ConntrackEngine, LbAffinity, Mode};
use fastpath::ovn::lcore::{CtInput, OvnLcore};
use fastpath::stats::CacheCounters;
use fastpath_packet::extract;

const SLOT: &[u8] = include_bytes!("../benches/data/acl-lb.slot");

struct Lcore {
    lcore: OvnLcore,
    engine: ConntrackEngine,
    counters: CacheCounters,
    now: u64,
}

impl Lcore {
    fn new() -> Lcore {
        let ct = Arc::new(Conntrack::new(&ConntrackConfig {
            capacity: 1 << 12,
            ..Default::default()
        }));
        let mut lcore = OvnLcore::new(1024, Arc::new(ArrayQueue::new(64)));
        lcore.set_megaflows(PipelineSection::default().megaflow_entries);
        lcore.set_program(Some(Arc::new(slot::program(SLOT))));
        Lcore {
            lcore,
            engine: ConntrackEngine::new(ct, Arc::new(LbAffinity::new(64)), Mode::Live),
            counters: CacheCounters::default(),
            now: 0,
        }
    }

    /// Sends the client's packet from `sport` to the VIP; the backend
    /// (address, port) it was sent to.
    fn send(&mut self, sport: u16) -> ([u8; 4], u16) {
        let out = self.packet(0, slot::client_to_vip(sport, 5001));
        (out.dst()[12..].try_into().unwrap(), out.tp_dst())
    }

    /// Sends the backend's reply to the client's `sport`; the reply's
    /// (source address, source port) as it leaves.
    fn reply(&mut self, backend: ([u8; 4], u16), sport: u16) -> ([u8; 4], u16) {
        let out = self.packet(1, slot::backend_reply(backend.0, backend.1, sport));
        (out.src()[12..].try_into().unwrap(), out.tp_src())
    }

    /// One packet through the decision and its rewrite; the key of what
    /// leaves (one copy).
    fn packet(&mut self, in_port: u16, mut frame: Vec<u8>) -> fastpath_packet::FlowKey {
        self.now += 1_000_000;
        let (key, layout) = extract(&frame, in_port).expect("the frame parses");
        let input = CtInput {
            engine: &mut self.engine,
            now_ns: self.now,
            frame: Some((&layout, &frame)),
            ip_len: u32::from(layout.end - layout.l3),
        };
        let d = self
            .lcore
            .decide_tracked(&key, frame.len() as u32, self.now, &self.counters, input)
            .expect("a program");
        assert_eq!(d.entry.outputs.len(), 1, "{:?}", d.entry.drop);
        d.entry.outputs[0]
            .rewrite
            .apply(&mut frame, &layout)
            .expect("the rewrite applies");
        extract(&frame, 0).expect("the output parses").0
    }

    /// (misses, megaflow hits, flow-cache entries)
    fn counts(&self) -> (u64, u64, u64) {
        (
            self.counters.misses.get(),
            self.counters.megaflow_hits.get(),
            self.counters.entries.get(),
        )
    }
}

#[test]
fn an_established_packet_of_another_connection_to_the_backend_is_a_megaflow_hit() {
    const VIP: ([u8; 4], u16) = ([10, 96, 0, 10], 5001);
    let mut lc = Lcore::new();
    // Connection A: its first packet runs the interpreter and is not
    // cached; the backend's reply comes back from the VIP.
    let backend = lc.send(1000);
    assert_eq!(
        lc.counts(),
        (1, 0, 0),
        "A's first packet: a miss, not cached"
    );
    assert_eq!(
        lc.lcore.new_connection_zone(),
        None,
        "the interpreter, not a megaflow, made A"
    );
    assert_eq!(lc.reply(backend, 1000), VIP);
    // A's next packet, established in the client's zone and the
    // backend's, keeps its backend and is cached.
    assert_eq!(lc.send(1000), backend, "A keeps its backend");
    let entries = lc.counts().2;
    assert!(entries >= 1, "A's established packet is cached");
    // Connection B, from another port, to the same backend (the backend
    // is chosen by a hash of the packet: try ports until one lands
    // there), answered too.
    let sport = (1001..1200)
        .find(|&p| lc.send(p) == backend)
        .expect("some port's connection goes to A's backend");
    assert_eq!(lc.reply(backend, sport), VIP);
    let (misses, megaflow_hits, _) = lc.counts();
    // Those connections were opened by megaflows: the zone a miss now
    // prefetches index lines in is where the client's packet is first
    // looked up, before the backend is chosen: its connection from the
    // client's port there is to the VIP (the backend's zone has it to the
    // backend).
    let zone = lc
        .lcore
        .new_connection_zone()
        .expect("a megaflow made a connection");
    let filter = fastpath::conntrack::CtFilter {
        zone: Some(zone),
        port: Some(sport),
        ..Default::default()
    };
    let in_zone = lc.engine.conntrack().list(&filter, 8);
    assert!(
        in_zone
            .iter()
            .any(|c| c.original.src_port == sport && c.original.dst[12..] == VIP.0),
        "zone {zone}: {in_zone:?}"
    );
    // B's next packet is established in both zones, as A's was: the
    // megaflow A's packet left serves it (its preview finds B's
    // connection in each zone, the backend's by the translated tuple).
    assert_eq!(lc.send(sport), backend);
    let (m, h, _) = lc.counts();
    assert_eq!(
        (m, h),
        (misses + 1, megaflow_hits + 1),
        "B's established packet: a miss served by the megaflow"
    );
    assert_eq!(lc.counters.megaflow_diverged.get(), 0);
    // And then it is cached.
    let hits = lc.counters.hits.get();
    assert_eq!(lc.send(sport), backend);
    assert_eq!(lc.counters.hits.get(), hits + 1);
}
