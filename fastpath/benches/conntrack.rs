//! The cost of connection tracking on the fast path: `touch_fast` (the
//! flow-cache hit path while the connection's stamp holds: no lock),
//! `touch` (the same under the shard lock) and `lookup` of an established
//! UDP connection with 1, 10 000 and 100 000 connections in the table, and commits of new connections per
//! second (plain and with SNAT). Prints ns per operation and operations per
//! second, then runs the same under criterion.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use fastpath::conntrack::{
    ConnId, Conntrack, ConntrackConfig, CtCommit, CtPacket, Dir, NatRange, PacketClass, Stamp,
    Tuple,
};
use std::net::Ipv4Addr;

fn v4(a: u32) -> [u8; 16] {
    Ipv4Addr::from(a).to_ipv6_mapped().octets()
}

fn udp(i: u32) -> CtPacket {
    CtPacket {
        tuple: Tuple {
            src: v4(0x0a00_0000 | (i >> 14)),
            dst: v4(0x0a01_0001),
            src_port: 1024 + (i & 0x3fff) as u16,
            dst_port: 53,
            proto: 17,
            ipv6: false,
        },
        tcp_flags: 0,
        len: 64,
        class: PacketClass::Trackable,
    }
}

fn table(n: u32) -> (Conntrack, Vec<(CtPacket, ConnId)>) {
    let ct = Conntrack::new(&ConntrackConfig {
        capacity: (n as usize * 2).max(1024),
        ..ConntrackConfig::default()
    });
    let conns = (0..n)
        .map(|i| {
            let p = udp(i);
            let r = ct.commit(0, &p, &CtCommit::default(), 1).expect("commit");
            let mut reply = p;
            reply.tuple = p.tuple.reverse();
            ct.lookup(0, &reply, 2);
            (p, r.conn.expect("connection"))
        })
        .collect();
    (ct, conns)
}

/// The stamp of each connection after one locked touch (what a flow
/// cache keeps for its lock-free touches).
fn stamps(ct: &Conntrack, conns: &[(CtPacket, ConnId)]) -> Vec<Stamp> {
    conns
        .iter()
        .map(|(_, id)| {
            ct.touch_stamped(*id, Dir::Original, 0, 64, 3)
                .expect("live")
                .1
        })
        .collect()
}

fn per_op(label: &str, ops: u64, f: impl FnOnce()) {
    let t = Instant::now();
    f();
    let ns = t.elapsed().as_nanos() as f64 / ops as f64;
    println!("{label:<44} {ns:8.1} ns/op  {:12.0} op/s", 1e9 / ns);
}

fn figures() {
    for n in [1u32, 10_000, 100_000] {
        let (ct, conns) = table(n);
        let rounds = (2_000_000 / n as u64).max(1);
        let ops = rounds * n as u64;
        let stamps = stamps(&ct, &conns);
        per_op(
            &format!("touch_fast, established, {n} connections"),
            ops,
            || {
                for r in 0..rounds {
                    for ((_, id), stamp) in conns.iter().zip(&stamps) {
                        black_box(ct.touch_fast(*id, Dir::Original, 0, 64, 3 + r, *stamp));
                    }
                }
            },
        );
        per_op(&format!("touch, established, {n} connections"), ops, || {
            for r in 0..rounds {
                for (_, id) in &conns {
                    black_box(ct.touch(*id, Dir::Original, 0, 64, 3 + r));
                }
            }
        });
        per_op(
            &format!("lookup, established, {n} connections"),
            ops,
            || {
                for r in 0..rounds {
                    for (p, _) in &conns {
                        black_box(ct.lookup(0, p, 3 + r));
                    }
                }
            },
        );
    }
    let n: u32 = std::env::var("CONNTRACK_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let ct = Conntrack::new(&ConntrackConfig {
        capacity: n as usize * 2,
        ..ConntrackConfig::default()
    });
    per_op("commit, new UDP connections", n as u64, || {
        for i in 0..n {
            black_box(ct.commit(0, &udp(i), &CtCommit::default(), 1).ok());
        }
    });
    let ct = Conntrack::new(&ConntrackConfig {
        capacity: n as usize * 2,
        ..ConntrackConfig::default()
    });
    let snat = CtCommit {
        snat: Some(NatRange {
            addr_min: Ipv4Addr::new(192, 0, 2, 1).into(),
            addr_max: Ipv4Addr::new(192, 0, 2, 16).into(),
            ports: Some((1024, 65535)),
        }),
        ..CtCommit::default()
    };
    per_op("commit, new UDP connections with SNAT", n as u64, || {
        for i in 0..n {
            black_box(ct.commit(0, &udp(i), &snat, 1).ok());
        }
    });
}

fn bench(c: &mut Criterion) {
    figures();
    let (ct, conns) = table(10_000);
    let mut i = 0usize;
    let stamps = stamps(&ct, &conns);
    c.bench_function("conntrack touch_fast (10k)", |b| {
        b.iter(|| {
            i = (i + 1) % conns.len();
            black_box(ct.touch_fast(conns[i].1, Dir::Original, 0, 64, 3, stamps[i]))
        })
    });
    c.bench_function("conntrack touch (10k)", |b| {
        b.iter(|| {
            i = (i + 1) % conns.len();
            black_box(ct.touch(conns[i].1, Dir::Original, 0, 64, 3))
        })
    });
    c.bench_function("conntrack lookup (10k)", |b| {
        b.iter(|| {
            i = (i + 1) % conns.len();
            black_box(ct.lookup(0, &conns[i].0, 3))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
