//! Differential tests: the compiler and the fastpath's OVN interpreter
//! against the real `ovn-trace --minimal` over the same Southbound database.
//!
//! Each test starts NB and SB ovsdb-servers and ovn-northd in a temporary
//! directory, builds a topology with ovn-nbctl, binds its ports to a chassis,
//! compiles the Southbound with `ovn_bridge::compile`, loads the slot the
//! way the fastpath does, and for a table of packets compares the verdicts:
//! the same output ports, and per output the same final header fields (every
//! flow-key byte for a forwarded packet; the fields ovn-trace prints for a
//! generated one), or a drop on both sides. Any difference fails. No EAL.

#[path = "common/trace.rs"]
mod trace;

use std::collections::HashMap;
use std::net::Ipv4Addr;

use fastpath::ovn::{FlowVector, Interpreter, Program};
use fastpath_packet::extract;
use ovn_lflow::{parse_actions, Action, SymbolTable};
use trace::{ip, mac, mac_text, Central};

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
    fn microflow(&self) -> String {
        let mut s = format!(
            "inport == \"{}\" && eth.src == {} && eth.dst == {}",
            self.inport,
            mac_text(&self.eth_src),
            mac_text(&self.eth_dst)
        );
        match &self.l3 {
            L3::Udp { src, dst, ttl } => s += &format!(
                " && ip4.src == {src} && ip4.dst == {dst} && ip.ttl == {ttl} && udp.src == 1000 && udp.dst == 2000"
            ),
            L3::Ping { src, dst, ttl } => s += &format!(
                " && ip4.src == {src} && ip4.dst == {dst} && ip.ttl == {ttl} && icmp4.type == 8 && icmp4.code == 0"
            ),
            L3::Arp { op, sha, spa, tpa } => s += &format!(
                " && arp.op == {op} && arp.sha == {} && arp.spa == {spa} && arp.tpa == {tpa} && arp.tha == 00:00:00:00:00:00",
                mac_text(sha)
            ),
        }
        s
    }

    fn frame(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        let ipv4 =
            |f: &mut Vec<u8>, src: &Ipv4Addr, dst: &Ipv4Addr, ttl: u8, proto: u8, l4: &[u8]| {
                let total = (20 + l4.len()) as u16;
                let mut h = vec![0x45, 0, 0, 0, 0, 0, 0, 0, ttl, proto, 0, 0];
                h[2..4].copy_from_slice(&total.to_be_bytes());
                h.extend_from_slice(&src.octets());
                h.extend_from_slice(&dst.octets());
                let cs = fastpath_packet::checksum::checksum(&h);
                h[10..12].copy_from_slice(&cs.to_be_bytes());
                f.extend_from_slice(&[0x08, 0x00]);
                f.extend_from_slice(&h);
                f.extend_from_slice(l4);
            };
        match &self.l3 {
            L3::Udp { src, dst, ttl } => {
                let l4 = [0x03, 0xe8, 0x07, 0xd0, 0, 12, 0, 0, 1, 2, 3, 4];
                ipv4(&mut f, src, dst, *ttl, 17, &l4);
            }
            L3::Ping { src, dst, ttl } => {
                let mut l4 = vec![8, 0, 0, 0, 0, 1, 0, 1, 0xaa, 0xbb];
                let cs = fastpath_packet::checksum::checksum(&l4);
                l4[2..4].copy_from_slice(&cs.to_be_bytes());
                ipv4(&mut f, src, dst, *ttl, 1, &l4);
            }
            L3::Arp { op, sha, spa, tpa } => {
                f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
                f.extend_from_slice(&op.to_be_bytes());
                f.extend_from_slice(sha);
                f.extend_from_slice(&spa.octets());
                f.extend_from_slice(&[0; 6]);
                f.extend_from_slice(&tpa.octets());
            }
        }
        while f.len() < 60 {
            f.push(0);
        }
        f
    }
}

/// One output of ovn-trace: the port and the assignments on the way.
#[derive(Debug, Clone)]
struct TraceOutput {
    port: String,
    /// `field = value;` texts and `ip.ttl--;`, in order.
    edits: Vec<String>,
    generated: bool,
}

/// Parses `ovn-trace --minimal` output into its outputs.
fn parse_minimal(text: &str) -> Vec<TraceOutput> {
    let mut outputs = Vec::new();
    // Stack of (edits so far, generated).
    let mut stack: Vec<(Vec<String>, bool)> = vec![(Vec::new(), false)];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("/*") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("output(\"") {
            let port = rest.trim_end_matches("\");").to_string();
            let (edits, generated) = stack.last().cloned().unwrap_or_default();
            outputs.push(TraceOutput {
                port,
                edits,
                generated,
            });
        } else if line == "};" {
            stack.pop();
            assert!(!stack.is_empty(), "unbalanced ovn-trace output:\n{text}");
        } else if let Some(kind) = line.strip_suffix(" {") {
            let (edits, generated) = stack.last().cloned().unwrap_or_default();
            if kind == "clone" {
                stack.push((edits, generated));
            } else {
                // A generated packet: only the nested edits say what it is.
                stack.push((Vec::new(), true));
            }
        } else if line == "drop;" {
        } else if line.ends_with(';') {
            if let Some(top) = stack.last_mut() {
                top.0.push(line.to_string());
            }
        } else {
            panic!("unexpected ovn-trace line {line:?} in:\n{text}");
        }
    }
    outputs
}

/// Applies trace edits to a vector (for the expected final headers).
fn apply_edits(
    symtab: &SymbolTable,
    v: &mut FlowVector,
    edits: &[String],
) -> HashMap<String, u128> {
    let mut checks = HashMap::new();
    for e in edits {
        let actions = parse_actions(e).unwrap_or_else(|err| panic!("trace edit {e:?}: {err}"));
        for a in actions {
            match a {
                Action::DecTtl => {
                    let b = v.bytes_mut();
                    b[fastpath_packet::flowkey::field::TTL] -= 1;
                }
                Action::Load { dst, value } => {
                    let slice = ovn_bridge::compile::actions::field_slice(symtab, &dst)
                        .unwrap_or_else(|| panic!("no slice for {dst:?}"));
                    v.write(&slice, value.value);
                    checks.insert(dst.name.clone(), value.value);
                }
                other => panic!("unexpected trace edit {other:?}"),
            }
        }
    }
    checks
}

/// Runs every case through both and returns the differences.
fn differences(c: &Central, program: &Program, datapath: &str, cases: &[Case]) -> Vec<String> {
    let symtab = SymbolTable::ovn_23_03();
    let mut diffs = Vec::new();
    let mut interp = Interpreter::new();
    for case in cases {
        let expected = parse_minimal(&c.trace(datapath, &case.microflow(), &[], None));
        let frame = case.frame();
        let (key, _) = extract(&frame, 0).expect("test frame parses");
        let inport = program.port_by_name(case.inport).expect("inport known");
        let verdict = interp
            .run(program, inport, &key, frame.len() as u32)
            .clone();
        let mine: Vec<String> = verdict
            .emissions
            .iter()
            .map(|e| program.ports[e.port as usize].name.clone())
            .collect();
        let mut theirs: Vec<String> = expected.iter().map(|o| o.port.clone()).collect();
        let mut mine_sorted = mine.clone();
        mine_sorted.sort();
        theirs.sort();
        if mine_sorted != theirs {
            diffs.push(format!(
                "{}: outputs {mine:?} (drops {:?}), ovn-trace {theirs:?}",
                case.name, verdict.drops
            ));
            continue;
        }
        for out in &expected {
            let Some(e) = verdict
                .emissions
                .iter()
                .find(|e| program.ports[e.port as usize].name == out.port)
            else {
                continue;
            };
            let original = FlowVector::from_key(&key, 0, 0);
            let mut want = original;
            let checks = apply_edits(&symtab, &mut want, &out.edits);
            if out.generated {
                if e.generated.is_none() {
                    diffs.push(format!(
                        "{}: {} not a generated packet",
                        case.name, out.port
                    ));
                }
                for (name, value) in &checks {
                    let f = ovn_lflow::FieldRef {
                        name: name.clone(),
                        bits: None,
                        span: Default::default(),
                    };
                    let s = ovn_bridge::compile::actions::field_slice(&symtab, &f).unwrap();
                    let got = e.vector.read(&s);
                    if got != *value {
                        diffs.push(format!(
                            "{}: generated packet to {}: {name} = {got:#x}, ovn-trace {value:#x}",
                            case.name, out.port
                        ));
                    }
                }
            } else if e.vector.key() != want.key() {
                diffs.push(format!(
                    "{}: headers to {} differ:\n mine {:?}\n want {:?}\n edits {:?}",
                    case.name,
                    out.port,
                    e.vector.key(),
                    want.key(),
                    out.edits
                ));
            }
        }
    }
    diffs
}

const P1: &str = "50:54:00:00:00:01";
const P2: &str = "50:54:00:00:00:02";
const P3: &str = "50:54:00:00:00:03";
const GW0: &str = "00:00:00:00:ff:01";
const GW1: &str = "00:00:00:00:ff:02";

/// sw0 (p1, p2, 10.0.0.0/24) and sw1 (p3, 10.0.1.0/24) behind lr0.
fn two_switches_behind_a_router(c: &Central, port_security: bool) {
    c.nb("ls-add sw0");
    c.nb("ls-add sw1");
    c.nb("lr-add lr0");
    c.nb(&format!("lrp-add lr0 lrp0 {GW0} 10.0.0.1/24"));
    c.nb(&format!("lrp-add lr0 lrp1 {GW1} 10.0.1.1/24"));
    for (sw, lsp, lrp) in [("sw0", "sw0-lr0", "lrp0"), ("sw1", "sw1-lr0", "lrp1")] {
        c.nb(&format!("lsp-add {sw} {lsp}"));
        c.nb(&format!("lsp-set-type {lsp} router"));
        c.nb(&format!("lsp-set-addresses {lsp} router"));
        c.nb(&format!("lsp-set-options {lsp} router-port={lrp}"));
    }
    for (sw, p, m, ip) in [
        ("sw0", "p1", P1, "10.0.0.11"),
        ("sw0", "p2", P2, "10.0.0.12"),
        ("sw1", "p3", P3, "10.0.1.13"),
    ] {
        c.nb(&format!("lsp-add {sw} {p}"));
        c.nb_args(&["lsp-set-addresses", p, &format!("{m} {ip}")]);
        if port_security {
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
    let o = parse_minimal(text);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].port, "p3");
    assert!(o[0].generated);
    assert_eq!(o[0].edits, vec!["eth.dst = ff:ff:ff:ff:ff:ff;".to_string()]);
}
