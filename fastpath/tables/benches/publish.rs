//! Publishing figures: checksum speed (CRC-32C vs XXH3-64), the cost of
//! building + checksumming + publishing a 10 MB slot, and the time from
//! publish until a polling reader thread has seen and acknowledged it.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fastpath_tables::{Port, Reader, SectionKind, TableFile};

const TEN_MB: usize = 10 << 20;

fn ports() -> Vec<Port> {
    (0..1000u16)
        .map(|id| Port {
            port_id: id,
            datapath_key: u32::from(id % 16),
            port_key: u32::from(id),
            name: format!("pod-{id}.namespace-{}", id % 16),
            is_local: id % 3 == 0,
        })
        .collect()
}

fn checksum(c: &mut Criterion) {
    let data: Vec<u8> = (0..TEN_MB).map(|i| (i * 31 % 251) as u8).collect();
    let mut group = c.benchmark_group("checksum_10MB");
    group.throughput(Throughput::Bytes(TEN_MB as u64));
    group.bench_function("crc32c", |b| b.iter(|| crc32c::crc32c(black_box(&data))));
    group.bench_function("xxh3_64", |b| {
        b.iter(|| xxhash_rust::xxh3::xxh3_64(black_box(&data)))
    });
    group.finish();
}

fn publish(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tables");
    let mut writer = TableFile::create(&path, 12 << 20).unwrap();
    let payload: Vec<u64> = (0..(TEN_MB - 64 * 1024) / 8).map(|i| i as u64).collect();
    let ports = ports();
    let mut group = c.benchmark_group("publish");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(TEN_MB as u64));
    group.bench_function("build_checksum_publish_10MB", |b| {
        b.iter(|| {
            let mut builder = writer.builder();
            builder.add_ports(&ports).unwrap();
            builder.add_section(SectionKind(100), &payload).unwrap();
            writer.publish(builder).unwrap()
        })
    });
    group.finish();
}

fn publish_to_ack(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tables");
    let mut writer = TableFile::create(&path, 1 << 20).unwrap();
    let ports = ports();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = Arc::new(Reader::open(&path).unwrap());
    let handle = Arc::new(reader.register_reader().unwrap());
    let poller = {
        let (reader, handle, stop) = (reader.clone(), handle.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut used = 0;
            while !stop.load(Ordering::Relaxed) {
                let generation = reader.generation();
                if generation != used {
                    if let Ok(snapshot) = handle.current() {
                        used = snapshot.generation();
                        black_box(snapshot.ports().len());
                        handle.ack(used).unwrap();
                    }
                }
                std::hint::spin_loop();
            }
        })
    };
    c.bench_function("publish_to_reader_ack_1000_ports", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let mut builder = writer.builder();
                builder.add_ports(&ports).unwrap();
                let generation = writer.publish(builder).unwrap();
                // `publish` returns right after the generation store.
                let published = Instant::now();
                while handle.acked() < generation {
                    std::hint::spin_loop();
                }
                total += published.elapsed();
            }
            total
        })
    });
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();
}

criterion_group!(benches, checksum, publish, publish_to_ack);
criterion_main!(benches);
