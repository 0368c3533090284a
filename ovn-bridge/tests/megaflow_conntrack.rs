//! Megaflows of verdicts that went through conntrack: an lcore with
//! megaflows and a small flow cache decides every packet of a long random
//! mix exactly as an lcore without megaflows, each over its own connection
//! table, through the Kube-OVN layout of a Service and a NetworkPolicy
//! compiled by the real northd. No EAL.

#[path = "common/trace.rs"]
mod trace;

use std::sync::Arc;

use fastpath::conntrack::{Conntrack, ConntrackConfig};
use fastpath::ovn::ct_engine::{ConntrackEngine, LbAffinity, Mode};
use fastpath::ovn::lcore::{CtInput, OvnLcore};
use fastpath::stats::CacheCounters;
use trace::{ip, mac, Central, Net, Probe};

const GW0: &str = "00:00:00:00:ff:01";
const GW1: &str = "00:00:00:00:ff:02";
const VIP: &str = "10.96.0.10";

/// sw0 (p1, p2) and sw1 (p3) behind lr0; a TCP and a UDP Service whose
/// backends are p2 and p3; on p3 a default-deny NetworkPolicy with an
/// allow-related rule for p1 only.
fn topology(c: &Central) {
    trace::two_subnets(c);
    c.nb(&format!(
        "lb-add lb-tcp {VIP}:80 10.0.0.12:8080,10.0.1.13:8080 tcp"
    ));
    c.nb(&format!(
        "lb-add lb-udp {VIP}:53 10.0.0.12:53,10.0.1.13:53 udp"
    ));
    for lb in ["lb-tcp", "lb-udp"] {
        c.nb(&format!("ls-lb-add sw0 {lb}"));
        c.nb(&format!("ls-lb-add sw1 {lb}"));
    }
    trace::network_policy(c, "p3", &[]);
    c.sb("chassis-add hv1 geneve 127.0.0.1");
    c.sync();
    for p in ["p1", "p2", "p3"] {
        c.sb(&format!("lsp-bind {p} hv1"));
    }
    c.sync();
}

/// The pods: switch, name, MAC, address (p1 and p2 on sw0, p3 on sw1).
const PODS: [(&str, &str, &str, &str); 3] = trace::TWO_SUBNET_PODS;

/// A connection a packet opened: client, its port, protocol (6 or 17),
/// destination address and port.
#[derive(Clone, Copy)]
struct Opened {
    client: usize,
    sport: u16,
    proto: u8,
    dst: &'static str,
    dport: u16,
}

fn table() -> Arc<Conntrack> {
    Arc::new(Conntrack::new(&ConntrackConfig {
        capacity: 1 << 16,
        shards: 4,
        ..Default::default()
    }))
}

/// Every connection of a table as text, in order: tuples, state, marks,
/// counters and timers.
fn connections(t: &Conntrack) -> Vec<String> {
    let mut all: Vec<String> = t
        .list(&Default::default(), usize::MAX)
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    all.sort();
    all
}

#[test]
fn megaflows_with_conntrack_decide_as_the_interpreter_does() {
    let c = Central::start();
    topology(&c);
    let names: Vec<&str> = PODS.iter().map(|p| p.1).collect();
    let (program, _) = c.program_mapped(&names);
    let program = Arc::new(program);
    let learned = Arc::new(crossbeam::queue::ArrayQueue::new(1024));
    // A small flow cache: established packets and replies come back to
    // the megaflows (or the interpreter) often.
    let mut mega = OvnLcore::new(16, learned.clone());
    mega.set_megaflows(4096);
    mega.set_program(Some(program.clone()));
    let mut plain = OvnLcore::new(16, learned);
    plain.set_megaflows(0);
    plain.set_program(Some(program.clone()));
    let (tm, tp) = (table(), table());
    let mut em = ConntrackEngine::new(tm.clone(), Arc::new(LbAffinity::new(64)), Mode::Live);
    let mut ep = ConntrackEngine::new(tp.clone(), Arc::new(LbAffinity::new(64)), Mode::Live);
    let (cm, cp) = (CacheCounters::default(), CacheCounters::default());
    let mut next = trace::xorshift(0x6374_6d65_6761_666c);
    let mut opened: Vec<Opened> = Vec::new();
    let (mut compared, mut delivered, mut dropped) = (0, 0, 0);
    for round in 0..8_000u64 {
        let kind = next() % 10;
        // (in-port pod, eth dst, src, dst, proto, sport, dport, tcp flags)
        let (from, eth_dst, src, dst, proto, sport, dport, flags) = match (kind, opened.len()) {
            // A new connection to the Service, to a pod directly, or a
            // stray TCP segment that opens nothing.
            (0..=4, _) | (_, 0) => {
                let client = (next() % 2) as usize;
                let proto = if next().is_multiple_of(2) { 6 } else { 17 };
                let (dst, dport) = match next() % 4 {
                    0 => ("10.0.1.13", if proto == 6 { 8080 } else { 53 }),
                    _ => (VIP, if proto == 6 { 80 } else { 53 }),
                };
                let sport = 1024 + (next() % 30_000) as u16;
                let flags = match (proto, next() % 6) {
                    (6, 0) => 0x10,
                    (6, _) => 0x02,
                    _ => 0,
                };
                if flags != 0x10 {
                    opened.push(Opened {
                        client,
                        sport,
                        proto,
                        dst,
                        dport,
                    });
                }
                // (Both destinations are off the client's subnet.)
                (client, GW0, PODS[client].3, dst, proto, sport, dport, flags)
            }
            // The client again (established, unless the policy dropped it).
            (5 | 6, n) => {
                let o = opened[next() as usize % n];
                let flags = if o.proto == 6 { 0x10 } else { 0 };
                (
                    o.client,
                    GW0,
                    PODS[o.client].3,
                    o.dst,
                    o.proto,
                    o.sport,
                    o.dport,
                    flags,
                )
            }
            // A reply from either backend (one of them has no connection).
            (_, n) => {
                let o = opened[next() as usize % n];
                let backend = 1 + (next() % 2) as usize;
                let port = if o.proto == 6 { 8080 } else { 53 };
                let eth = if backend == 2 { GW1 } else { PODS[o.client].2 };
                let flags = if o.proto == 6 { 0x12 } else { 0 };
                let client = PODS[o.client].3;
                (
                    backend,
                    eth,
                    PODS[backend].3,
                    client,
                    o.proto,
                    port,
                    o.sport,
                    flags,
                )
            }
        };
        let probe = Probe {
            name: "megaflow-ct",
            datapath: "",
            inport: PODS[from].1,
            eth_src: mac(PODS[from].2),
            eth_dst: mac(eth_dst),
            net: if proto == 6 {
                Net::Tcp4 {
                    src: ip(src),
                    dst: ip(dst),
                    ttl: 64,
                    dport,
                }
            } else {
                Net::Udp4 {
                    src: ip(src),
                    dst: ip(dst),
                    ttl: 64,
                }
            },
        };
        let frame = probe.frame();
        let (mut key, _) = fastpath_packet::extract(&frame, from as u16).expect("a valid frame");
        key.set_tp_src(sport);
        key.set_tp_dst(dport);
        if proto == 6 {
            key.set_tcp_flags(flags);
        }
        let now = 1_000_000 * (round + 1);
        let ip_len = frame.len() as u32 - 14;
        let decide = |l: &mut OvnLcore, e: &mut ConntrackEngine, counters: &CacheCounters| {
            let input = CtInput {
                engine: e,
                now_ns: now,
                frame: None,
                ip_len,
            };
            l.decide_tracked(&key, frame.len() as u32, round, counters, input)
                .map(|d| {
                    let steps: Vec<_> = d.entry.ct.iter().map(|s| (s.zone, s.result)).collect();
                    (
                        d.entry.outputs.clone(),
                        d.entry.drop,
                        d.entry.meters.clone(),
                        steps,
                        format!("{:?}", d.generated),
                    )
                })
        };
        let a = decide(&mut mega, &mut em, &cm);
        let b = decide(&mut plain, &mut ep, &cp);
        assert_eq!(
            a,
            b,
            "packet {round}: {}",
            fastpath::ovn::trace::describe_key(&key)
        );
        match &b {
            Some(d) if d.0.is_empty() => dropped += 1,
            Some(_) => delivered += 1,
            None => {}
        }
        assert_eq!(tm.len(), tp.len(), "packet {round}: connections");
        if round % 500 == 0 {
            assert_eq!(connections(&tm), connections(&tp), "packet {round}");
        }
        compared += 1;
    }
    let served = cm.megaflow_hits.get();
    eprintln!(
        "{compared} packets ({delivered} delivered, {dropped} dropped), {served} served by {} megaflows ({} replays diverged), {} interpreter runs, {} connections",
        mega.megaflows(),
        cm.megaflow_diverged.get(),
        cm.misses.get() - served,
        tm.len()
    );
    assert_eq!(connections(&tm), connections(&tp));
    // Only a commit the table refuses for the packet (its reply tuple is
    // another connection's: the random ports collide now and then) can
    // answer otherwise than the preview promised on one lcore.
    let diverged = cm.megaflow_diverged.get();
    assert!(diverged * 100 < served, "{diverged} replays went astray");
    assert!(delivered > 2_000 && dropped > 500, "{delivered} {dropped}");
    assert!(served > 2_000, "only {served} megaflow hits");
}
