//! Flow-key extraction cost per frame: TCP/IPv4, UDP/IPv6 with extension
//! headers, ARP. Criterion prints the time per `extract` call.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use fastpath_packet::extract;

const TCP_SYN_V4: &[u8] = include_bytes!("../fuzz/corpus/parse_frame/seed-tcp-syn-v4");
const UDP_V6_HBH_FRAG: &[u8] = include_bytes!("../fuzz/corpus/parse_frame/seed-udp-v6-hbh-frag");
const ARP_REQUEST: &[u8] = include_bytes!("../fuzz/corpus/parse_frame/seed-arp-request");
const VLAN_ICMP_ECHO: &[u8] = include_bytes!("../fuzz/corpus/parse_frame/seed-vlan-icmp-echo");
const ND_NS: &[u8] = include_bytes!("../fuzz/corpus/parse_frame/seed-nd-ns");

fn bench_extract(c: &mut Criterion) {
    let mut g = c.benchmark_group("extract");
    g.throughput(Throughput::Elements(1));
    for (name, frame) in [
        ("tcp_ipv4", TCP_SYN_V4),
        ("udp_ipv6_hbh_frag", UDP_V6_HBH_FRAG),
        ("arp", ARP_REQUEST),
        ("vlan_icmp_ipv4", VLAN_ICMP_ECHO),
        ("nd_ns", ND_NS),
    ] {
        assert!(extract(frame, 1).is_ok(), "{name} fixture parses");
        g.bench_function(name, |b| b.iter(|| extract(black_box(frame), black_box(1))));
    }
    g.finish();

    // A flow-cache style probe: extract, then hash the key.
    let mut g = c.benchmark_group("extract_and_hash");
    let state = std::hash::RandomState::new();
    g.bench_function("tcp_ipv4", |b| {
        b.iter(|| {
            use std::hash::BuildHasher;
            let (key, _) = extract(black_box(TCP_SYN_V4), 1).unwrap_or_default();
            state.hash_one(key)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_extract);
criterion_main!(benches);
