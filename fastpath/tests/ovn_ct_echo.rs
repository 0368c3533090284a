//! ICMP echo through stateful switches, without an EAL: a port isolated by
//! an ingress (to-lport) policy that admits only TCP 8080 from one peer,
//! as a Kubernetes NetworkPolicy compiles, and OVN's allow-related rule
//! that the replies of connections the port opened pass that policy. The
//! real ovn-northd compiles the NB, `ovn-bridge compile` the SB, and each
//! packet goes through an lcore's decision (`OvnLcore::decide_tracked`)
//! with its frame summary, as the poll loop gives it. An echo has no
//! identifier in its flow key: these cases need the engine to track each
//! conntrack step with the identifier the frame carries even after the
//! pipeline rewrote the headers (the router answering an echo request in
//! place; the router forwarding between subnets).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ethernet_frame, ipv4_packet, mac_text};
use fastpath::conntrack::{Conntrack, ConntrackConfig};
use fastpath::ovn::ct_engine::{frame_summary, ConntrackEngine, LbAffinity, Mode};
use fastpath::ovn::lcore::{CtInput, OvnLcore};
use fastpath::stats::LcoreStats;
use fastpath_packet::checksum::checksum;
use ovsdb::testing::OvnCentral;

const P1_MAC: [u8; 6] = [0x50, 0x54, 0, 0, 0, 1];
const P2_MAC: [u8; 6] = [0x50, 0x54, 0, 0, 0, 2];
const Q1_MAC: [u8; 6] = [0x50, 0x54, 0, 0, 1, 1];
const GW0_MAC: [u8; 6] = [0, 0, 0, 0, 0xff, 1];
const GW1_MAC: [u8; 6] = [0, 0, 0, 0, 0xff, 2];
const P1_IP: [u8; 4] = [10, 0, 0, 11];
const P2_IP: [u8; 4] = [10, 0, 0, 12];
const Q1_IP: [u8; 4] = [10, 1, 0, 11];
const GW0_IP: [u8; 4] = [10, 0, 0, 1];

/// Fastpath ports of p1, p2 and q1.
const P1: u16 = 0;
const P2: u16 = 1;
const Q1: u16 = 2;

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;

/// sw0 (p1 10.0.0.11, p2 10.0.0.12) and sw1 (q1 10.1.0.11) behind lr0
/// (10.0.0.1, 10.1.0.1); on sw0, p1 admits only TCP 8080 from p2
/// (allow-related), everything else to p1 is dropped; all ports on hv1.
fn central() -> OvnCentral {
    let ovn = OvnCentral::start().expect("NB, SB and ovn-northd");
    let nb = |args: &[&str]| {
        ovn.nbctl(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    };
    nb(&["lr-add", "lr0"]);
    for (sw, lrp, mac, net) in [
        ("sw0", "lrp0", GW0_MAC, "10.0.0.1/24"),
        ("sw1", "lrp1", GW1_MAC, "10.1.0.1/24"),
    ] {
        nb(&["ls-add", sw]);
        nb(&["lrp-add", "lr0", lrp, &mac_text(&mac), net]);
        let rp = format!("{sw}-lr0");
        nb(&["lsp-add", sw, &rp]);
        nb(&["lsp-set-type", &rp, "router"]);
        nb(&["lsp-set-addresses", &rp, "router"]);
        nb(&["lsp-set-options", &rp, &format!("router-port={lrp}")]);
    }
    for (sw, p, m, ip) in [
        ("sw0", "p1", P1_MAC, "10.0.0.11"),
        ("sw0", "p2", P2_MAC, "10.0.0.12"),
        ("sw1", "q1", Q1_MAC, "10.1.0.11"),
    ] {
        nb(&["lsp-add", sw, p]);
        nb(&["lsp-set-addresses", p, &format!("{} {ip}", mac_text(&m))]);
    }
    nb(&["pg-add", "pg_web", "p1"]);
    nb(&[
        "acl-add",
        "pg_web",
        "to-lport",
        "2000",
        "outport == @pg_web && ip",
        "drop",
    ]);
    nb(&[
        "acl-add",
        "pg_web",
        "to-lport",
        "2001",
        "outport == @pg_web && ip4.src == 10.0.0.12 && tcp.dst == 8080",
        "allow-related",
    ]);
    ovn.sbctl(&["chassis-add", "hv1", "geneve", "127.0.0.1"])
        .expect("chassis");
    ovn.sync(Duration::from_secs(30)).expect("northd");
    for p in ["p1", "p2", "q1"] {
        ovn.sbctl(&["lsp-bind", p, "hv1"]).expect("bind");
    }
    ovn.sync(Duration::from_secs(30)).expect("northd");
    ovn
}

/// An ICMP echo (request or reply) frame with valid checksums.
fn echo(
    ty: u8,
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    id: u16,
    seq: u16,
) -> Vec<u8> {
    let mut icmp = vec![ty, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"abcdefgh");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ethernet_frame(macs.0, macs.1, &ipv4_packet(1, src, dst, &icmp))
}

/// A TCP SYN frame with valid checksums.
fn syn(macs: ([u8; 6], [u8; 6]), src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Vec<u8> {
    common::tcp_frame(macs, src, dst, 0, 0x02, &[])
}

/// One echo delivered: fastpath port, source and destination addresses,
/// ICMP type and identifier of the frame as it leaves.
#[derive(Debug, PartialEq, Eq)]
struct EchoOut {
    port: u16,
    src: [u8; 4],
    dst: [u8; 4],
    icmp_type: u8,
    id: u16,
}

/// What one packet came to: the frames it left as (per port), or the
/// drop reason.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Out(Vec<(u16, Vec<u8>)>),
    Dropped(String),
}

struct Lcore {
    lcore: OvnLcore,
    engine: ConntrackEngine,
    stats: LcoreStats,
    now: u64,
}

impl Lcore {
    fn new() -> Lcore {
        let ct = Arc::new(Conntrack::new(&ConntrackConfig {
            capacity: 1024,
            shards: 4,
            ..Default::default()
        }));
        let learned = Arc::new(crossbeam::queue::ArrayQueue::new(64));
        Lcore {
            lcore: OvnLcore::new(1024, learned),
            engine: ConntrackEngine::new(ct, Arc::new(LbAffinity::new(64)), Mode::Live),
            stats: LcoreStats::new(0, Vec::new(), 4),
            now: 0,
        }
    }

    /// The packet through the lcore's decision, as the poll loop runs it
    /// (ICMP with its frame summary), and the rewritten frames.
    fn packet(&mut self, in_port: u16, frame: &[u8]) -> Fate {
        self.now += 1_000_000;
        let (key, layout) = fastpath_packet::extract(frame, in_port).expect("frame parses");
        let ct = CtInput {
            engine: &mut self.engine,
            now_ns: self.now,
            frame: Some((&layout, frame)),
            ip_len: u32::from(layout.end - layout.l3),
        };
        let d = self
            .lcore
            .decide_tracked(&key, frame.len() as u32, self.now, &self.stats.cache, ct)
            .expect("a program");
        if d.entry.outputs.is_empty() {
            return Fate::Dropped(d.entry.drop.map(|x| x.name()).unwrap_or_default());
        }
        let mut outs = Vec::new();
        for o in &d.entry.outputs {
            let mut f = frame.to_vec();
            o.rewrite.apply(&mut f, &layout).expect("rewrite");
            outs.push((o.port, f));
        }
        Fate::Out(outs)
    }

    /// The readable trace of a packet against the live table (read-only),
    /// for failure messages.
    fn trace(&self, in_port: u16, frame: &[u8]) -> String {
        let program = self.lcore.program().expect("a program").clone();
        let (key, layout) = fastpath_packet::extract(frame, in_port).expect("frame parses");
        let mut it = fastpath::ovn::Interpreter::new();
        it.tracing = true;
        let mut ct = ConntrackEngine::new(
            self.engine.conntrack().clone(),
            self.engine.affinity().clone(),
            Mode::ReadOnly,
        );
        ct.begin(self.now, 0, frame_summary(&key, &layout, frame));
        let inport = program.port_by_fastpath(in_port).expect("inport");
        it.run_with(&program, inport, &key, frame.len() as u32, &mut ct);
        fastpath::ovn::trace::render(&program, inport, &key, &it)
    }

    /// An echo that must leave through exactly one port: what it left as
    /// (the trace, taken before the packet, when it does not).
    fn echo_out(&mut self, in_port: u16, frame: &[u8], what: &str) -> EchoOut {
        let trace = self.trace(in_port, frame);
        match self.packet(in_port, frame) {
            Fate::Out(outs) if outs.len() == 1 => {
                let (port, f) = &outs[0];
                parse_echo(*port, f).unwrap_or_else(|| panic!("{what}: not an echo: {f:02x?}"))
            }
            other => panic!("{what}: {other:?}\n{trace}"),
        }
    }
}

fn parse_echo(port: u16, f: &[u8]) -> Option<EchoOut> {
    let ip = f.get(14..)?;
    if ip.first()? >> 4 != 4 || *ip.get(9)? != 1 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let icmp = ip.get(ihl..)?;
    let v4 = |b: &[u8]| [b[0], b[1], b[2], b[3]];
    Some(EchoOut {
        port,
        src: v4(ip.get(12..16)?),
        dst: v4(ip.get(16..20)?),
        icmp_type: *icmp.first()?,
        id: u16::from_be_bytes([*icmp.get(4)?, *icmp.get(5)?]),
    })
}

fn program(ovn: &OvnCentral, dir: &std::path::Path) -> fastpath::ovn::Program {
    common::compile_program(
        &ovn.sb.remote,
        "hv1",
        &[("p1", P1), ("p2", P2), ("q1", Q1)],
        &dir.join("tables"),
    )
}

#[test]
fn echo_opened_by_an_isolated_port_is_answered_and_others_stay_out() {
    let ovn = central();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lc = Lcore::new();
    lc.lcore
        .set_program(Some(Arc::new(program(&ovn, dir.path()))));

    // p1 pings its gateway: the router answers in place, and the answer,
    // a reply of the echo p1 opened, passes p1's ingress policy. Several
    // echoes with distinct identifiers, each answered with its own.
    for (id, seq) in [(0x1234u16, 1u16), (0x1234, 2), (0x0042, 1), (0x1234, 3)] {
        let req = echo(ECHO_REQUEST, (GW0_MAC, P1_MAC), P1_IP, GW0_IP, id, seq);
        let got = lc.echo_out(P1, &req, "p1 pings its gateway");
        assert_eq!(
            got,
            EchoOut {
                port: P1,
                src: GW0_IP,
                dst: P1_IP,
                icmp_type: ECHO_REPLY,
                id,
            },
            "echo {id:#x}/{seq}"
        );
    }

    // p1 pings q1 on the other subnet; q1's reply crosses the router back
    // and passes p1's policy as the reply of p1's echo.
    for (id, seq) in [(0x0777u16, 1u16), (0x0777, 2), (0x0778, 1)] {
        let req = echo(ECHO_REQUEST, (GW0_MAC, P1_MAC), P1_IP, Q1_IP, id, seq);
        let got = lc.echo_out(P1, &req, "p1 pings q1");
        assert_eq!(
            (got.port, got.dst, got.icmp_type, got.id),
            (Q1, Q1_IP, 8, id)
        );
        let rep = echo(ECHO_REPLY, (GW1_MAC, Q1_MAC), Q1_IP, P1_IP, id, seq);
        let got = lc.echo_out(Q1, &rep, "q1 answers p1");
        assert_eq!(
            got,
            EchoOut {
                port: P1,
                src: Q1_IP,
                dst: P1_IP,
                icmp_type: ECHO_REPLY,
                id,
            },
            "reply {id:#x}/{seq}"
        );
    }

    // A reply p1 never asked for (another identifier) is no reply of a
    // connection of p1's: the policy drops it.
    let stray = echo(ECHO_REPLY, (GW1_MAC, Q1_MAC), Q1_IP, P1_IP, 0x0999, 1);
    assert!(
        matches!(lc.packet(Q1, &stray), Fate::Dropped(_)),
        "an echo reply of no connection reaches the isolated port"
    );
    // Echoes opened towards p1 are not admitted, from either subnet.
    let from_q1 = echo(ECHO_REQUEST, (GW1_MAC, Q1_MAC), Q1_IP, P1_IP, 0x0500, 1);
    assert!(matches!(lc.packet(Q1, &from_q1), Fate::Dropped(_)));
    let from_p2 = echo(ECHO_REQUEST, (P1_MAC, P2_MAC), P2_IP, P1_IP, 0x0501, 1);
    assert!(matches!(lc.packet(P2, &from_p2), Fate::Dropped(_)));
    // What the policy admits is delivered.
    let tcp = syn((P1_MAC, P2_MAC), (P2_IP, 40000), (P1_IP, 8080));
    match lc.packet(P2, &tcp) {
        Fate::Out(outs) => assert_eq!(outs.iter().map(|o| o.0).collect::<Vec<_>>(), [P1]),
        other => panic!("TCP 8080 from p2 to p1: {other:?}"),
    }
    // And p2, which no policy selects, answers echoes.
    let req = echo(ECHO_REQUEST, (GW1_MAC, Q1_MAC), Q1_IP, P2_IP, 0x0600, 1);
    let got = lc.echo_out(Q1, &req, "q1 pings p2");
    assert_eq!((got.port, got.dst, got.id), (P2, P2_IP, 0x0600));
}
