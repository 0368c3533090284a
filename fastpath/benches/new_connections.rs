//! The cost of opening a connection on the miss path, as `perf run
//! new-connections` opens them but without vhost-user: UDP packets from
//! the client `p1` (10.0.0.11) on switch `sw0` to the load balancer's VIP
//! 10.96.0.10, whose backends sit behind router `lr0` on `sw1` under a
//! NetworkPolicy (a default deny and an `allow-related` rule for the
//! client), each packet a new 5-tuple (pktgen's: UDP source port
//! `1024 + i % 64000`, destination port `5001 + i / 64000`). Every packet
//! misses the flow cache; after the first, the megaflow cache serves it by
//! replaying its conntrack calls (a backend chosen, two connections
//! committed: the client's zone and the backend's), and its entry is
//! installed in the flow cache, as in the worker.
//!
//! `data/acl-lb.slot` is the table slot `ovn-bridge compile` publishes for
//! the topology of `perf run acl-lb` (chassis `hv1`, `p1` on fastpath port
//! 0, `p3` on port 1), saved with `fp-tables slot FILE OUT`. Regenerate it
//! after a change to the compiler or the table ABI.
//!
//! Prints ns per connection and connections per second over
//! `NEW_CONNECTIONS=N` connections (100 000 by default; the conntrack table
//! and the flow cache are sized for them as `perf` sizes them), then runs
//! a smaller round under criterion. With `NEW_CONNECTIONS_ITERATIONS=N` set
//! it only opens N connections and exits (for instruction counts under
//! `valgrind --tool=callgrind`: the difference of two counts is the cost
//! of the connections between them).

mod common;

use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use crossbeam::queue::ArrayQueue;
use fastpath::config::PipelineSection;
use fastpath::conntrack::{Conntrack, ConntrackConfig};
use fastpath::ovn::ct_engine::{ConntrackEngine, LbAffinity, Mode};
use fastpath::ovn::lcore::{CtInput, OvnLcore};
use fastpath::ovn::Program;
use fastpath::stats::CacheCounters;
use fastpath_packet::{extract, FlowKey, Layout};

const SLOT: &[u8] = include_bytes!("data/acl-lb.slot");

fn program() -> Program {
    common::program(SLOT)
}

/// pktgen's frame `i` of `perf run new-connections`.
fn frame(i: u32) -> Vec<u8> {
    common::client_to_vip((1024 + i % 64000) as u16, (5001 + i / 64000) as u16)
}

/// A worker's OVN state for `n` connections: the flow cache and the
/// conntrack table sized as `perf run new-connections` sizes them.
struct Opener {
    lcore: OvnLcore,
    engine: ConntrackEngine,
    conntrack: Arc<Conntrack>,
    counters: CacheCounters,
}

impl Opener {
    fn new(program: &Arc<Program>, n: usize) -> Opener {
        let sized = |n: usize, min: usize| n.max(min).next_power_of_two();
        let conntrack = Arc::new(Conntrack::new(&ConntrackConfig {
            capacity: sized(2 * n, 1 << 16),
            ..Default::default()
        }));
        let mut lcore = OvnLcore::new(sized(n, 1 << 12), Arc::new(ArrayQueue::new(1024)));
        // As many megaflows as the fastpath keeps by default.
        lcore.set_megaflows(PipelineSection::default().megaflow_entries);
        lcore.set_program(Some(Arc::clone(program)));
        Opener {
            lcore,
            engine: ConntrackEngine::new(
                Arc::clone(&conntrack),
                Arc::new(LbAffinity::new(1024)),
                Mode::Live,
            ),
            conntrack,
            counters: CacheCounters::default(),
        }
    }

    /// One packet through the worker's decision and its rewrite; true when
    /// it was forwarded.
    #[inline(never)]
    fn open(&mut self, frame: &mut [u8], key: &FlowKey, layout: &Layout, now: u64) -> bool {
        let ip_len = u32::from(layout.end - layout.l3);
        let input = CtInput {
            engine: &mut self.engine,
            now_ns: now,
            frame: Some((layout, &*frame)),
            ip_len,
        };
        let Some(d) =
            self.lcore
                .decide_tracked(key, frame.len() as u32, now, &self.counters, input)
        else {
            return false;
        };
        let mut sent = false;
        for out in d.entry.outputs.iter() {
            sent |= out.rewrite.apply(frame, layout).is_ok();
        }
        sent
    }
}

/// Opens connections `from..to` (one packet each); returns how many were
/// forwarded.
fn open_range(o: &mut Opener, from: u32, to: u32) -> u32 {
    let mut sent = 0;
    for i in from..to {
        let mut f = frame(i);
        let (key, layout) = extract(&f, 0).expect("the frame parses");
        sent += u32::from(o.open(&mut f, &key, &layout, 1_000 + u64::from(i)));
    }
    sent
}

fn bench_new_connections(c: &mut Criterion) {
    let program = Arc::new(program());

    if let Some(n) = std::env::var("NEW_CONNECTIONS_ITERATIONS")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    {
        let mut o = Opener::new(&program, 200_000);
        black_box(open_range(&mut o, 0, n));
        println!("new_connections: {n} connections opened");
        std::process::exit(0);
    }

    let n: u32 = std::env::var("NEW_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    // Frames are built up front so that the timing holds only the path.
    let mut frames: Vec<(Vec<u8>, FlowKey, Layout)> = (0..n)
        .map(|i| {
            let f = frame(i);
            let (key, layout) = extract(&f, 0).expect("the frame parses");
            (f, key, layout)
        })
        .collect();
    let mut o = Opener::new(&program, n as usize);
    let start = Instant::now();
    let mut sent = 0u32;
    // (Each frame is rewritten in place: it is sent once.)
    for (i, (f, key, layout)) in frames.iter_mut().enumerate() {
        sent += u32::from(o.open(f, key, layout, 1_000 + i as u64));
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(sent, n, "every connection's packet is forwarded");
    assert_eq!(
        o.conntrack.len(),
        2 * n as usize,
        "two connections each: the client's zone and the backend's"
    );
    let ns = secs * 1e9 / f64::from(n);
    println!(
        "new_connections/{n}: {ns:.0} ns per connection, {:.0} connections/s \
         (megaflow hits {}, misses {})",
        1e9 / ns,
        o.counters.megaflow_hits.get(),
        o.counters.misses.get()
    );

    let mut g = c.benchmark_group("new_connections");
    g.sample_size(10);
    g.bench_function("4096", |b| {
        b.iter_batched(
            || Opener::new(&program, 4096),
            |mut o| black_box(open_range(&mut o, 0, 4096)),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_new_connections);
criterion_main!(benches);
