//! Differential tests: the compiler and the fastpath's OVN interpreter
//! against the real `ovn-trace --minimal` over the same Southbound database.
//!
//! Each test starts NB and SB ovsdb-servers and ovn-northd in a temporary
//! directory, builds a topology with ovn-nbctl, binds its ports to a chassis,
//! compiles the Southbound with `ovn_bridge::compile`, loads the slot the
//! way the fastpath does, and for a table of packets compares the verdicts:
//! the same output ports, and per output the same final header fields (every
//! flow-key byte for a forwarded packet; for a generated one the same
//! generating action, the fields ovn-trace assigns, and a frame built by
//! `fastpath::ovn::generate` that parses, has valid checksums and carries
//! the vector's fields), or a drop on both sides. Any difference fails.
//! No EAL. More topologies are in `ovn_trace_topologies.rs`.

#[path = "common/trace.rs"]
mod trace;

use std::net::Ipv4Addr;

use fastpath::ovn::Program;
use trace::{ip, mac, Central, Net, Probe};

/// A test packet.
#[derive(Debug, Clone)]
enum L3 {
    Udp {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
    },
    Ping {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
    },
    Arp {
        op: u16,
        sha: [u8; 6],
        spa: Ipv4Addr,
        tpa: Ipv4Addr,
    },
}

#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    inport: &'static str,
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    l3: L3,
}

impl Case {
    fn probe(&self, datapath: &'static str) -> Probe {
        let net = match self.l3 {
            L3::Udp { src, dst, ttl } => Net::Udp4 { src, dst, ttl },
            L3::Ping { src, dst, ttl } => Net::Ping4 { src, dst, ttl },
            L3::Arp { op, sha, spa, tpa } => Net::Arp { op, sha, spa, tpa },
        };
        Probe {
            name: self.name,
            datapath,
            inport: self.inport,
            eth_src: self.eth_src,
            eth_dst: self.eth_dst,
            net,
        }
    }
}

/// Runs every case through both (the shared harness: output ports, the
/// final headers of forwarded packets, and for generated packets the
/// generating action, ovn-trace's assignments and the built frame) and
/// returns the differences.
fn differences(
    c: &Central,
    program: &Program,
    datapath: &'static str,
    cases: &[Case],
) -> Vec<String> {
    let probes: Vec<Probe> = cases.iter().map(|x| x.probe(datapath)).collect();
    trace::probe_differences(c, program, &probes).0
}

const P1: &str = "50:54:00:00:00:01";
const P2: &str = "50:54:00:00:00:02";
const P3: &str = "50:54:00:00:00:03";
const GW0: &str = "00:00:00:00:ff:01";
const GW1: &str = "00:00:00:00:ff:02";

/// sw0 (p1, p2, 10.0.0.0/24) and sw1 (p3, 10.0.1.0/24) behind lr0.
fn two_switches_behind_a_router(c: &Central, port_security: bool) {
    trace::two_subnets(c);
    if port_security {
        for (_, p, m, ip) in trace::TWO_SUBNET_PODS {
            c.nb_args(&["lsp-set-port-security", p, &format!("{m} {ip}")]);
        }
    }
    c.sb("chassis-add hv1 geneve 127.0.0.1");
    c.sync();
    for p in ["p1", "p2", "p3"] {
        c.sb(&format!("lsp-bind {p} hv1"));
    }
    c.sync();
}

fn routed_cases() -> Vec<Case> {
    let p1 = mac(P1);
    vec![
        Case {
            name: "l2 same switch",
            inport: "p1",
            eth_src: p1,
            eth_dst: mac(P2),
            l3: L3::Udp {
                src: ip("10.0.0.11"),
                dst: ip("10.0.0.12"),
                ttl: 64,
            },
        },
        Case {
            name: "l3 across the router",
            inport: "p1",
            eth_src: p1,
            eth_dst: mac(GW0),
            l3: L3::Udp {
                src: ip("10.0.0.11"),
                dst: ip("10.0.1.13"),
                ttl: 64,
            },
        },
        Case {
            name: "l3 back",
            inport: "p3",
            eth_src: mac(P3),
            eth_dst: mac(GW1),
            l3: L3::Ping {
                src: ip("10.0.1.13"),
                dst: ip("10.0.0.12"),
                ttl: 9,
            },
        },
        Case {
            name: "arp for the gateway",
            inport: "p1",
            eth_src: p1,
            eth_dst: [0xff; 6],
            l3: L3::Arp {
                op: 1,
                sha: p1,
                spa: ip("10.0.0.11"),
                tpa: ip("10.0.0.1"),
            },
        },
        Case {
            name: "arp for a neighbour (switch responder)",
            inport: "p1",
            eth_src: p1,
            eth_dst: [0xff; 6],
            l3: L3::Arp {
                op: 1,
                sha: p1,
                spa: ip("10.0.0.11"),
                tpa: ip("10.0.0.12"),
            },
        },
        Case {
            name: "arp for an unknown address floods",
            inport: "p1",
            eth_src: p1,
            eth_dst: [0xff; 6],
            l3: L3::Arp {
                op: 1,
                sha: p1,
                spa: ip("10.0.0.11"),
                tpa: ip("10.0.0.99"),
            },
        },
        Case {
            name: "broadcast floods",
            inport: "p2",
            eth_src: mac(P2),
            eth_dst: [0xff; 6],
            l3: L3::Udp {
                src: ip("10.0.0.12"),
                dst: ip("255.255.255.255"),
                ttl: 64,
            },
        },
        Case {
            name: "ping the gateway",
            inport: "p1",
            eth_src: p1,
            eth_dst: mac(GW0),
            l3: L3::Ping {
                src: ip("10.0.0.11"),
                dst: ip("10.0.0.1"),
                ttl: 64,
            },
        },
        Case {
            name: "ping the far gateway",
            inport: "p1",
            eth_src: p1,
            eth_dst: mac(GW0),
            l3: L3::Ping {
                src: ip("10.0.0.11"),
                dst: ip("10.0.1.1"),
                ttl: 64,
            },
        },
        Case {
            name: "unknown destination mac",
            inport: "p1",
            eth_src: p1,
            eth_dst: mac("50:54:00:00:00:99"),
            l3: L3::Udp {
                src: ip("10.0.0.11"),
                dst: ip("10.0.0.99"),
                ttl: 64,
            },
        },
        Case {
            name: "ttl expiry",
            inport: "p1",
            eth_src: p1,
            eth_dst: mac(GW0),
            l3: L3::Udp {
                src: ip("10.0.0.11"),
                dst: ip("10.0.1.13"),
                ttl: 1,
            },
        },
        Case {
            name: "unknown ip behind the router: arp request",
            inport: "p1",
            eth_src: p1,
            eth_dst: mac(GW0),
            l3: L3::Udp {
                src: ip("10.0.0.11"),
                dst: ip("10.0.1.99"),
                ttl: 64,
            },
        },
        Case {
            name: "no route",
            inport: "p1",
            eth_src: p1,
            eth_dst: mac(GW0),
            l3: L3::Udp {
                src: ip("10.0.0.11"),
                dst: ip("192.168.7.7"),
                ttl: 64,
            },
        },
    ]
}

#[test]
fn two_switches_behind_a_router_match_ovn_trace() {
    let c = Central::start();
    two_switches_behind_a_router(&c, false);
    let (program, _) = c.program();
    let cases = routed_cases();
    let mut diffs = differences(&c, &program, "sw0", &cases[..2]);
    diffs.extend(differences(&c, &program, "sw1", &cases[2..3]));
    diffs.extend(differences(&c, &program, "sw0", &cases[3..]));
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

#[test]
fn port_security_matches_ovn_trace() {
    let c = Central::start();
    two_switches_behind_a_router(&c, true);
    let (program, _) = c.program();
    let p1 = mac(P1);
    let mut cases = routed_cases();
    cases.retain(|x| x.inport == "p1");
    cases.extend([
        Case {
            name: "spoofed source ip",
            inport: "p1",
            eth_src: p1,
            eth_dst: mac(P2),
            l3: L3::Udp {
                src: ip("10.0.0.99"),
                dst: ip("10.0.0.12"),
                ttl: 64,
            },
        },
        Case {
            name: "spoofed source mac",
            inport: "p1",
            eth_src: mac("50:54:00:00:00:77"),
            eth_dst: mac(P2),
            l3: L3::Udp {
                src: ip("10.0.0.11"),
                dst: ip("10.0.0.12"),
                ttl: 64,
            },
        },
        Case {
            name: "spoofed arp sender",
            inport: "p1",
            eth_src: p1,
            eth_dst: [0xff; 6],
            l3: L3::Arp {
                op: 1,
                sha: p1,
                spa: ip("10.0.0.77"),
                tpa: ip("10.0.0.1"),
            },
        },
        Case {
            name: "spoofed arp sender mac",
            inport: "p1",
            eth_src: p1,
            eth_dst: [0xff; 6],
            l3: L3::Arp {
                op: 1,
                sha: mac("50:54:00:00:00:77"),
                spa: ip("10.0.0.11"),
                tpa: ip("10.0.0.1"),
            },
        },
    ]);
    let diffs = differences(&c, &program, "sw0", &cases);
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

#[test]
fn minimal_trace_parser_reads_nested_outputs() {
    let text = "# udp,reg14=0x2\nip.ttl--;\neth.src = 00:00:00:00:ff:02;\narp {\n    eth.dst = ff:ff:ff:ff:ff:ff;\n    output(\"p3\");\n};\n";
    let o = trace::parse_generated(text);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].port, "p3");
    assert_eq!(o[0].generated.as_deref(), Some("arp"));
    assert_eq!(o[0].edits, vec!["eth.dst = ff:ff:ff:ff:ff:ff;".to_string()]);
}
