//! The cost of a flow-cache miss: the OVN interpreter over a compiled
//! program, for UDP/IPv4 packets routed from `p1` on switch `sw0` through
//! router `lr0` to `p3` on switch `sw1` (the `perf run new-flows`
//! topology), each packet a new microflow (source and destination ports
//! vary).
//!
//! `data/l3-router.slot` is one table slot as `ovn-bridge compile` publishes
//! it for that topology (chassis `hv1`, `p1` on fastpath port 0, `p3` on
//! port 1): the bytes of the active slot of its table file, from the slot
//! header's magic to its `length`. Regenerate it after a change to the
//! compiler or the table ABI.
//!
//! Prints ns per miss and misses per second for the interpreter alone and
//! for the whole per-lcore miss path (interpreter, rewrite plan, cache
//! insert with eviction), then runs the same under criterion. With
//! `MISS_PATH_ITERATIONS=N` set it runs only N misses of the lcore path and
//! exits (for instruction counts under a profiler); with
//! `MISS_PATH_TABLES` set it first lists the tables one miss visits, with
//! their rule and mask counts and where the pass-through skips lead.

mod common;

use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use crossbeam::queue::ArrayQueue;
use fastpath::ovn::lcore::OvnLcore;
use fastpath::ovn::{Interpreter, Program};
use fastpath::stats::CacheCounters;
use fastpath_packet::{extract, FlowKey};

const SLOT: &[u8] = include_bytes!("data/l3-router.slot");

/// Distinct microflows cycled through.
const FLOWS: u16 = 4096;

fn program() -> Program {
    common::program(SLOT)
}

/// A UDP/IPv4 frame from p1 (10.0.0.11) to p3 (10.0.1.13) through the
/// router's port on sw0.
fn frame(sport: u16, dport: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&[0x00, 0x00, 0x00, 0x00, 0xff, 0x01]); // GW0
    f.extend_from_slice(&[0x50, 0x54, 0x00, 0x00, 0x00, 0x01]); // P1
    f.extend_from_slice(&[0x08, 0x00]);
    let total: u16 = 20 + 8 + 18;
    f.extend_from_slice(&[0x45, 0x00]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&[10, 0, 0, 11, 10, 0, 1, 13]);
    let mut sum = 0u32;
    for c in f[14..34].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(8u16 + 18).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(64, 0);
    f
}

fn keys() -> Vec<FlowKey> {
    (0..FLOWS)
        .map(|i| {
            let (key, _) = extract(&frame(1024 + i, 5000 + i % 7), 0).expect("the frame parses");
            key
        })
        .collect()
}

fn lcore(program: &Arc<Program>) -> OvnLcore {
    // A cache far smaller than the flows offered: every packet misses.
    let mut l = OvnLcore::new(16, Arc::new(ArrayQueue::new(1024)));
    l.set_program(Some(Arc::clone(program)));
    l
}

fn report(name: &str, n: u64, secs: f64) {
    let ns = secs * 1e9 / n as f64;
    println!(
        "miss_path/{name}: {ns:.0} ns per miss, {:.0} misses/s",
        1e9 / ns
    );
}

fn bench_miss_path(c: &mut Criterion) {
    let program = Arc::new(program());
    let keys = keys();
    let p1 = program.port_by_name("p1").expect("p1 in the program");
    let p3 = program.port_by_name("p3").expect("p3 in the program");

    // Every flow is routed to p3 with the router's MAC as source.
    let mut interpreter = Interpreter::new();
    for key in &keys {
        let v = interpreter.run(&program, p1, key, 64);
        assert_eq!(v.emissions.len(), 1, "{:?}", v.drops);
        assert_eq!(v.emissions[0].port, p3);
        assert_eq!(v.emissions[0].vector.eth_src(), [0, 0, 0, 0, 0xff, 2]);
    }

    if std::env::var_os("MISS_PATH_TABLES").is_some() {
        // The tables one miss visits, with their classifier shapes.
        interpreter.tracing = true;
        interpreter.run(&program, p1, &keys[0], 64);
        for e in &interpreter.trace {
            if let fastpath::ovn::TraceEvent::Table {
                datapath,
                pipeline,
                table,
                flow,
                ..
            } = *e
            {
                let c = program.table(datapath, pipeline, table);
                let stage = flow.map_or("", |f| program.text(program.flows[f as usize].stage));
                println!(
                    "dp {datapath} pipe {pipeline} table {table:2} {stage:30} rules {:4} masks {:3} skip {:?}",
                    c.map_or(0, |c| c.len()),
                    c.map_or(0, |c| c.subtables()),
                    program.skip(datapath, pipeline, table),
                );
            }
        }
        interpreter.tracing = false;
    }

    let counters = CacheCounters::default();
    let mut l = lcore(&program);
    if let Some(n) = std::env::var("MISS_PATH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        for i in 0..n {
            let key = &keys[(i % u64::from(FLOWS)) as usize];
            black_box(
                l.decide(key, 64, i, &counters)
                    .map(|d| d.entry.outputs.len()),
            );
        }
        println!("miss_path: {n} lcore misses run");
        std::process::exit(0);
    }

    let n = 200_000u64;
    let start = Instant::now();
    for i in 0..n {
        let key = &keys[(i % u64::from(FLOWS)) as usize];
        black_box(
            interpreter
                .run(&program, p1, black_box(key), 64)
                .emissions
                .len(),
        );
    }
    report("interpreter", n, start.elapsed().as_secs_f64());
    let misses_before = counters.misses.get();
    let start = Instant::now();
    for i in 0..n {
        let key = &keys[(i % u64::from(FLOWS)) as usize];
        black_box(
            l.decide(black_box(key), 64, i, &counters)
                .map(|d| d.entry.outputs.len()),
        );
    }
    report("lcore", n, start.elapsed().as_secs_f64());
    assert_eq!(
        counters.misses.get() - misses_before,
        n,
        "every packet missed"
    );

    let mut g = c.benchmark_group("miss_path");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("interpreter", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            interpreter
                .run(&program, p1, black_box(&keys[i]), 64)
                .emissions
                .len()
        })
    });
    let mut now = 0u64;
    g.bench_function("lcore", |b| {
        b.iter(|| {
            now += 1;
            let key = &keys[(now % u64::from(FLOWS)) as usize];
            l.decide(black_box(key), 64, now, &counters)
                .map(|d| d.entry.outputs.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_miss_path);
criterion_main!(benches);
