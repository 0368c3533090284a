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
//! The burst goes through the stages the worker uses: extract and hash
//! every packet in place (`extract_hashed`) and prefetch its cache bucket,
//! prefetch the slots (each packet's `Probe` keeps the slot its bucket
//! named), then decide (`OvnLcore::decide_hashed`) and rewrite each
//! packet, and count the burst's hits once. The `unstaged` variant decides packet by packet
//! (`OvnLcore::decide`, hash and hit count per packet) for comparison.
//!
//! With `HIT_PATH_FLOWS=N` it instead compares the staged and unstaged
//! paths over N cached flows (e.g. 1024, as `perf run l3` sends) and exits.
//!
//! Prints ns per packet for the copy alone, extraction alone, and the whole
//! hit path, staged and not; then runs both under criterion. With
//! `HIT_PATH_ITERATIONS=N` set it runs only N bursts of the staged hit path
//! (of the unstaged one with `HIT_PATH_UNSTAGED=1` as well) and exits (for
//! instruction counts under `valgrind --tool=callgrind` or `perf stat`).

mod common;

use std::sync::Arc;
use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use crossbeam::queue::ArrayQueue;
use fastpath::ovn::cache::Probe;
use fastpath::ovn::lcore::OvnLcore;
use fastpath::ovn::Program;
use fastpath::stats::CacheCounters;
use fastpath_packet::{extract, extract_hashed, FlowKey, Layout};

const SLOT: &[u8] = include_bytes!("data/l3-router.slot");

/// Packets per burst (the worker's rx burst size).
const BURST: usize = 32;

fn program() -> Program {
    common::program(SLOT)
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

/// Per packet of a burst: its key, layout and cache probe, and which
/// packets parsed; kept across bursts as the worker keeps it.
struct Staging {
    keys: [FlowKey; BURST],
    layouts: [Layout; BURST],
    probes: [Probe; BURST],
    parsed: u32,
}

impl Staging {
    fn new() -> Staging {
        Staging {
            keys: [FlowKey::zeroed(); BURST],
            layouts: [Layout::default(); BURST],
            probes: [Probe::new(0); BURST],
            parsed: 0,
        }
    }
}

/// One burst through the hit path in the worker's stages: extract and
/// hash in place and prefetch all; prefetch the slots; decide and rewrite each; count
/// the hits once. Returns the sum over outputs of (port + 1).
#[inline(never)]
fn hit_burst(
    l: &mut OvnLcore,
    bufs: &mut [[u8; 64]; BURST],
    now: u64,
    counters: &CacheCounters,
    staged: &mut Staging,
) -> usize {
    staged.parsed = 0;
    for (i, buf) in bufs.iter().enumerate() {
        if let Ok(hash) = extract_hashed(&buf[..], 0, &mut staged.keys[i], &mut staged.layouts[i]) {
            l.prefetch(hash);
            staged.probes[i] = Probe::new(hash);
            staged.parsed |= 1 << i;
        }
    }
    for (i, probe) in staged.probes.iter_mut().enumerate() {
        if staged.parsed & (1 << i) != 0 {
            l.prefetch_slot(probe);
        }
    }
    let mut sent = 0;
    let mut hits = 0u64;
    for (i, buf) in bufs.iter_mut().enumerate() {
        if staged.parsed & (1 << i) == 0 {
            continue;
        }
        let layout = staged.layouts[i];
        let Some(d) = l.decide_hashed(&staged.keys[i], staged.probes[i], 64, now, counters, None)
        else {
            continue;
        };
        hits += u64::from(d.hit);
        for out in d.entry.outputs.iter() {
            if out.rewrite.apply(&mut buf[..], &layout).is_ok() {
                sent += usize::from(out.port) + 1;
            }
        }
    }
    counters.hits.add(hits);
    sent
}

/// One burst decided packet by packet: extract, decide, rewrite.
#[inline(never)]
fn hit_burst_unstaged(
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

/// The staged and the unstaged hit path over `flows` cached microflows (a
/// multiple of the burst), bursts taking the flows in turn, so that the
/// cache's buckets and slots do not all stay in L1 as they do with one
/// burst's worth of flows. Prints ns per packet of each, alternating.
fn many_flows(program: &Arc<Program>, flows: usize) {
    let flows = flows.div_ceil(BURST).max(1) * BURST;
    let frames: Vec<[u8; 64]> = (0..flows)
        .map(|i| {
            let mut f = [0u8; 64];
            f.copy_from_slice(&frame(
                1024 + (i % 50_000) as u16,
                5000 + (i / 50_000) as u16,
            ));
            f
        })
        .collect();
    let counters = CacheCounters::default();
    let mut l = OvnLcore::new(65536, Arc::new(ArrayQueue::new(1024)));
    l.set_program(Some(Arc::clone(program)));
    let mut staged = Staging::new();
    let mut bufs = [[0u8; 64]; BURST];
    let bursts = flows / BURST;
    for b in 0..bursts {
        bufs.copy_from_slice(&frames[b * BURST..(b + 1) * BURST]);
        hit_burst(&mut l, &mut bufs, 0, &counters, &mut staged);
    }
    assert_eq!(counters.misses.get(), flows as u64, "every flow cached");
    let passes = (4_000_000 / flows).max(1) as u64;
    for _ in 0..3 {
        for unstaged in [false, true] {
            let hits = counters.hits.get();
            let start = Instant::now();
            for _ in 0..passes {
                for b in 0..bursts {
                    bufs.copy_from_slice(&frames[b * BURST..(b + 1) * BURST]);
                    if unstaged {
                        black_box(hit_burst_unstaged(&mut l, &mut bufs, 1, &counters));
                    } else {
                        black_box(hit_burst(&mut l, &mut bufs, 1, &counters, &mut staged));
                    }
                }
            }
            let secs = start.elapsed().as_secs_f64();
            let name = if unstaged { "unstaged" } else { "staged" };
            report(
                &format!("{flows}flows copy+hit {name}"),
                passes * bursts as u64,
                secs,
            );
            assert_eq!(counters.hits.get() - hits, passes * flows as u64);
        }
    }
}

fn bench_hit_path(c: &mut Criterion) {
    let program = Arc::new(program());
    if let Some(flows) = std::env::var("HIT_PATH_FLOWS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
    {
        many_flows(&program, flows);
        std::process::exit(0);
    }
    let mut frames = [[0u8; 64]; BURST];
    for (i, f) in frames.iter_mut().enumerate() {
        f.copy_from_slice(&frame(1024 + i as u16, 5000));
    }
    let counters = CacheCounters::default();
    let mut l = OvnLcore::new(65536, Arc::new(ArrayQueue::new(1024)));
    l.set_program(Some(Arc::clone(&program)));
    let mut bufs = frames;
    let mut staged = Staging::new();

    // Warm the cache: every flow misses once, then every packet hits and is
    // routed to fastpath port 1 with the router's MAC, TTL 63 and valid
    // checksums.
    refill(&mut bufs, &frames);
    assert_eq!(
        hit_burst(&mut l, &mut bufs, 0, &counters, &mut staged),
        2 * BURST
    );
    assert_eq!(counters.misses.get(), BURST as u64);
    refill(&mut bufs, &frames);
    assert_eq!(
        hit_burst(&mut l, &mut bufs, 1, &counters, &mut staged),
        2 * BURST
    );
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
        let unstaged = std::env::var_os("HIT_PATH_UNSTAGED").is_some();
        for i in 0..n {
            refill(&mut bufs, &frames);
            if unstaged {
                black_box(hit_burst_unstaged(
                    &mut l,
                    black_box(&mut bufs),
                    i,
                    &counters,
                ));
            } else {
                black_box(hit_burst(
                    &mut l,
                    black_box(&mut bufs),
                    i,
                    &counters,
                    &mut staged,
                ));
            }
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
        black_box(hit_burst(
            &mut l,
            black_box(&mut bufs),
            i,
            &counters,
            &mut staged,
        ));
    }
    report("copy+hit", bursts, start.elapsed().as_secs_f64());
    assert_eq!(
        counters.hits.get() - hits,
        bursts * BURST as u64,
        "every packet hit"
    );
    let start = Instant::now();
    for i in 0..bursts {
        refill(&mut bufs, black_box(&frames));
        black_box(hit_burst_unstaged(
            &mut l,
            black_box(&mut bufs),
            i,
            &counters,
        ));
    }
    report("copy+hit unstaged", bursts, start.elapsed().as_secs_f64());

    let mut g = c.benchmark_group("hit_path");
    g.throughput(Throughput::Elements(BURST as u64));
    let mut now = 0u64;
    g.bench_function("burst32", |b| {
        b.iter(|| {
            now += 1;
            refill(&mut bufs, &frames);
            hit_burst(&mut l, black_box(&mut bufs), now, &counters, &mut staged)
        })
    });
    g.bench_function("burst32_unstaged", |b| {
        b.iter(|| {
            now += 1;
            refill(&mut bufs, &frames);
            hit_burst_unstaged(&mut l, black_box(&mut bufs), now, &counters)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_hit_path);
criterion_main!(benches);
