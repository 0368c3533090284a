//! The cost of a flow-cache hit: what a worker does per packet once a flow
//! is cached — flow-key extraction, the per-lcore decision (hash, lookup,
//! entry) and the header rewrite — over bursts of 32 UDP/IPv4 packets routed
//! from `p1` on switch `sw0` through router `lr0` to `p3` on switch `sw1`
//! (the `perf run l3` path), 32 distinct microflows, all cached.
//!
//! Uses the same table slot as `miss_path` (`data/l3-router.slot`). Each
//! round copies the received frames into the burst's buffers first (as the
//! vhost dequeue does), so every packet is rewritten from its original
//! bytes; a `copy` line reports that copy alone so it can be subtracted.
//!
//! Prints ns per packet for the copy alone, extraction alone, and the whole
//! hit path; then runs the hit path under criterion. With
//! `HIT_PATH_ITERATIONS=N` set it runs only N bursts of the hit path and
//! exits (for instruction counts under `valgrind --tool=callgrind` or
//! `perf stat`).

use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use crossbeam::queue::ArrayQueue;
use fastpath::ovn::lcore::OvnLcore;
use fastpath::ovn::Program;
use fastpath::stats::CacheCounters;
use fastpath_packet::extract;

const SLOT: &[u8] = include_bytes!("data/l3-router.slot");

/// Packets per burst (the worker's rx burst size).
const BURST: usize = 32;

fn program() -> Program {
    // The validator wants 8-byte alignment.
    let mut words = vec![0u64; SLOT.len().div_ceil(8)];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    bytes[..SLOT.len()].copy_from_slice(SLOT);
    let bytes = &bytes[..SLOT.len()];
    let validated = fastpath_tables::validate::validate_slot(bytes).expect("the slot validates");
    Program::load(&validated.sections(bytes), 1).expect("the program loads")
}

/// A UDP/IPv4 frame from p1 (10.0.0.11) to p3 (10.0.1.13) through the
/// router's port on sw0, with valid IPv4 and UDP checksums.
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
    let cs = fastpath_packet::checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&cs.to_be_bytes());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(8u16 + 18).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(14 + usize::from(total), 0);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&f[26..34]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(8u16 + 18).to_be_bytes());
    pseudo.extend_from_slice(&f[34..]);
    let cs = fastpath_packet::checksum::checksum(&pseudo);
    f[40..42].copy_from_slice(&cs.to_be_bytes());
    f.resize(64, 0);
    f
}

/// One burst through the hit path: extract, decide, rewrite. Returns the
/// packets that leave through a port.
#[inline(never)]
fn hit_burst(
    l: &mut OvnLcore,
    bufs: &mut [[u8; 64]; BURST],
    now: u64,
    counters: &CacheCounters,
) -> usize {
    let mut sent = 0;
    for buf in bufs.iter_mut() {
        let Ok((key, layout)) = extract(&buf[..], 0) else {
            continue;
        };
        let Some(d) = l.decide(&key, 64, now, counters) else {
            continue;
        };
        for out in d.entry.outputs.iter() {
            if out.rewrite.apply(&mut buf[..], &layout).is_ok() {
                sent += usize::from(out.port) + 1;
            }
        }
    }
    sent
}

fn refill(bufs: &mut [[u8; 64]; BURST], frames: &[[u8; 64]; BURST]) {
    bufs.copy_from_slice(frames);
}

fn report(name: &str, bursts: u64, secs: f64) {
    let ns = secs * 1e9 / (bursts * BURST as u64) as f64;
    println!("hit_path/{name}: {ns:.1} ns per packet");
}

fn bench_hit_path(c: &mut Criterion) {
    let program = Arc::new(program());
    let mut frames = [[0u8; 64]; BURST];
    for (i, f) in frames.iter_mut().enumerate() {
        f.copy_from_slice(&frame(1024 + i as u16, 5000));
    }
    let counters = CacheCounters::default();
    let mut l = OvnLcore::new(65536, Arc::new(ArrayQueue::new(1024)));
    l.set_program(Some(Arc::clone(&program)));
    let mut bufs = frames;

    // Warm the cache: every flow misses once, then every packet hits and is
    // routed to fastpath port 1 with the router's MAC, TTL 63 and valid
    // checksums.
    refill(&mut bufs, &frames);
    assert_eq!(hit_burst(&mut l, &mut bufs, 0, &counters), 2 * BURST);
    assert_eq!(counters.misses.get(), BURST as u64);
    refill(&mut bufs, &frames);
    assert_eq!(hit_burst(&mut l, &mut bufs, 1, &counters), 2 * BURST);
    assert_eq!(counters.hits.get(), BURST as u64, "the second burst hits");
    for b in &bufs {
        assert_eq!(&b[6..12], &[0, 0, 0, 0, 0xff, 2], "eth.src is lrp1's MAC");
        assert_eq!(b[22], 63, "TTL decremented");
        assert!(
            fastpath_packet::checksum::verify(&b[14..34]),
            "IPv4 checksum"
        );
    }

    if let Some(n) = std::env::var("HIT_PATH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        for i in 0..n {
            refill(&mut bufs, &frames);
            black_box(hit_burst(&mut l, black_box(&mut bufs), i, &counters));
        }
        println!("hit_path: {n} bursts of {BURST} run");
        std::process::exit(0);
    }

    let bursts = 200_000u64;
    let start = Instant::now();
    for _ in 0..bursts {
        refill(&mut bufs, black_box(&frames));
        black_box(&mut bufs);
    }
    report("copy", bursts, start.elapsed().as_secs_f64());
    let start = Instant::now();
    for _ in 0..bursts {
        for b in black_box(&bufs).iter() {
            black_box(extract(&b[..], 0).is_ok());
        }
    }
    report("extract", bursts, start.elapsed().as_secs_f64());
    let hits = counters.hits.get();
    let start = Instant::now();
    for i in 0..bursts {
        refill(&mut bufs, black_box(&frames));
        black_box(hit_burst(&mut l, black_box(&mut bufs), i, &counters));
    }
    report("copy+hit", bursts, start.elapsed().as_secs_f64());
    assert_eq!(
        counters.hits.get() - hits,
        bursts * BURST as u64,
        "every packet hit"
    );

    let mut g = c.benchmark_group("hit_path");
    g.throughput(Throughput::Elements(BURST as u64));
    let mut now = 0u64;
    g.bench_function("burst32", |b| {
        b.iter(|| {
            now += 1;
            refill(&mut bufs, &frames);
            hit_burst(&mut l, black_box(&mut bufs), now, &counters)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_hit_path);
criterion_main!(benches);
