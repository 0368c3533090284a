//! Readable views of the OVN pipeline for operators: a packet described on
//! a command line turned into a frame ([`microflow_frame`]), the trace of
//! one interpreter run printed table by table with the flow that matched
//! (as `ovn-trace --detailed` does) plus the verdict ([`render`]), and the
//! one-line summaries of a flow key and of a rewrite that flow dumps use.
//!
//! Owns formatting and microflow parsing only; it runs on the control
//! thread, never on a worker, and must not touch a worker's cache.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use fastpath_packet::flowkey::{field, flags};
use fastpath_packet::FlowKey;
use fastpath_tables::ovn::{pipeline, vector};

use super::ct::{CtOpKind, NatDirection};
use super::interpreter::{Interpreter, TraceEvent};
use super::program::Program;
use super::rewrite::Rewrite;

/// Why a microflow cannot be turned into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MicroflowError {
    /// A term is not `field=value`.
    #[error("{0:?} is not FIELD=VALUE")]
    Syntax(String),
    /// The field is not one the trace command knows.
    #[error("unknown field {0:?} (known: eth.src, eth.dst, eth.type, ip4.src, ip4.dst, ip.ttl, ip.proto, ip.dscp, tcp.src, tcp.dst, udp.src, udp.dst, icmp4.type, icmp4.code, arp.op, arp.sha, arp.spa, arp.tha, arp.tpa)")]
    UnknownField(String),
    /// The value does not parse for its field.
    #[error("bad value {value:?} for {field}")]
    Value {
        /// Field.
        field: String,
        /// Value.
        value: String,
    },
    /// A hex frame has an odd length or a non-hex digit.
    #[error("bad hex frame: {0}")]
    Hex(String),
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut parts = s.split(':');
    for o in m.iter_mut() {
        *o = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(m)
}

fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn csum(d: &[u8]) -> [u8; 2] {
    fastpath_packet::checksum::checksum(d).to_be_bytes()
}

/// Longest frame `len=` asks for.
const MAX_TRACE_FRAME: u64 = 9216;

/// A frame from a microflow: either hex digits (a whole frame), or
/// `field=value` terms separated by `,` or `&&` (`==` also accepted).
/// Unset fields get defaults (an IPv4 packet when any `ip4.`/L4 field is
/// given, ARP when any `arp.` field is). `len=N` makes the frame `N` bytes
/// long (an IP packet's payload is padded, its lengths and checksums
/// follow), for flows that look at the length (`check_pkt_larger`).
pub fn microflow_frame(text: &str) -> Result<Vec<u8>, MicroflowError> {
    let t = text.trim();
    if !t.is_empty() && !t.contains('=') {
        let hex: String = t.chars().filter(|c| !c.is_whitespace()).collect();
        if !hex.len().is_multiple_of(2) {
            return Err(MicroflowError::Hex("odd number of digits".into()));
        }
        return (0..hex.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(&hex[i..i + 2], 16)
                    .map_err(|_| MicroflowError::Hex(format!("{:?}", &hex[i..i + 2])))
            })
            .collect();
    }
    let mut eth_src = [0x02, 0, 0, 0, 0, 1];
    let mut eth_dst = [0x02, 0, 0, 0, 0, 2];
    let mut eth_type: Option<u16> = None;
    let (mut src, mut dst) = (Ipv4Addr::new(0, 0, 0, 0), Ipv4Addr::new(0, 0, 0, 0));
    let (mut ttl, mut proto, mut dscp) = (64u8, None::<u8>, 0u8);
    let (mut sport, mut dport) = (None::<u16>, None::<u16>);
    let (mut icmp_type, mut icmp_code) = (8u8, 0u8);
    let mut arp = false;
    let mut ip = false;
    let (mut arp_op, mut sha, mut tha) = (1u16, None::<[u8; 6]>, [0u8; 6]);
    let mut len = 60usize;
    let normalized = t.replace("&&", ",");
    for term in normalized
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (f, v) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .ok_or_else(|| MicroflowError::Syntax(term.into()))?;
        let (f, v) = (f.trim(), v.trim().trim_matches('"'));
        let bad = || MicroflowError::Value {
            field: f.into(),
            value: v.into(),
        };
        let num = |max: u64| parse_num(v).filter(|n| *n <= max).ok_or_else(bad);
        match f {
            "eth.src" => eth_src = parse_mac(v).ok_or_else(bad)?,
            "eth.dst" => eth_dst = parse_mac(v).ok_or_else(bad)?,
            "eth.type" => eth_type = Some(num(0xffff)? as u16),
            "len" => len = num(MAX_TRACE_FRAME)?.max(60) as usize,
            "ip4.src" => (src, ip) = (v.parse().map_err(|_| bad())?, true),
            "ip4.dst" => (dst, ip) = (v.parse().map_err(|_| bad())?, true),
            "ip.ttl" => (ttl, ip) = (num(255)? as u8, true),
            "ip.proto" => (proto, ip) = (Some(num(255)? as u8), true),
            "ip.dscp" => (dscp, ip) = (num(63)? as u8, true),
            "tcp.src" => (sport, proto, ip) = (Some(num(0xffff)? as u16), Some(6), true),
            "tcp.dst" => (dport, proto, ip) = (Some(num(0xffff)? as u16), Some(6), true),
            "udp.src" => (sport, proto, ip) = (Some(num(0xffff)? as u16), Some(17), true),
            "udp.dst" => (dport, proto, ip) = (Some(num(0xffff)? as u16), Some(17), true),
            "icmp4.type" => (icmp_type, proto, ip) = (num(255)? as u8, Some(1), true),
            "icmp4.code" => (icmp_code, proto, ip) = (num(255)? as u8, Some(1), true),
            "arp.op" => (arp_op, arp) = (num(0xffff)? as u16, true),
            "arp.sha" => (sha, arp) = (Some(parse_mac(v).ok_or_else(bad)?), true),
            "arp.tha" => (tha, arp) = (parse_mac(v).ok_or_else(bad)?, true),
            "arp.spa" => (src, arp) = (v.parse().map_err(|_| bad())?, true),
            "arp.tpa" => (dst, arp) = (v.parse().map_err(|_| bad())?, true),
            other => return Err(MicroflowError::UnknownField(other.into())),
        }
    }
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    if arp {
        f.extend_from_slice(&0x0806u16.to_be_bytes());
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
        f.extend_from_slice(&arp_op.to_be_bytes());
        f.extend_from_slice(&sha.unwrap_or(eth_src));
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&tha);
        f.extend_from_slice(&dst.octets());
    } else if ip {
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let proto = proto.unwrap_or(253);
        let l4: Vec<u8> = match proto {
            6 => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.unwrap_or(40000).to_be_bytes());
                h[2..4].copy_from_slice(&dport.unwrap_or(80).to_be_bytes());
                h[12] = 0x50;
                h[13] = 0x02;
                h[14] = 0xff;
                h
            }
            17 => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.unwrap_or(40000).to_be_bytes());
                h[2..4].copy_from_slice(&dport.unwrap_or(53).to_be_bytes());
                h[4..6].copy_from_slice(&8u16.to_be_bytes());
                h
            }
            1 => vec![icmp_type, icmp_code, 0, 0, 0, 1, 0, 1],
            _ => Vec::new(),
        };
        let mut l4 = l4;
        l4.resize(l4.len().max(len.saturating_sub(14 + 20)), 0);
        match proto {
            17 => {
                let n = l4.len() as u16;
                l4[4..6].copy_from_slice(&n.to_be_bytes());
            }
            1 => {
                let c = csum(&l4);
                l4[2..4].copy_from_slice(&c);
            }
            _ => {}
        }
        let mut h = vec![0x45, dscp << 2, 0, 0, 0, 0, 0x40, 0, ttl, proto, 0, 0];
        h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        let c = csum(&h);
        h[10..12].copy_from_slice(&c);
        f.extend_from_slice(&h);
        f.extend_from_slice(&l4);
    } else {
        f.extend_from_slice(&eth_type.unwrap_or(0x88b5).to_be_bytes());
    }
    if f.len() < len {
        f.resize(len, 0);
    }
    Ok(f)
}

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn addr(k: &[u8], v4: bool) -> String {
    let mut a = [0u8; 16];
    a.copy_from_slice(k);
    if v4 {
        Ipv4Addr::new(a[12], a[13], a[14], a[15]).to_string()
    } else {
        Ipv6Addr::from(a).to_string()
    }
}

/// One line summarising a flow key (the match of a cache entry).
pub fn describe_key(k: &FlowKey) -> String {
    let b = k.as_bytes();
    let fl = k.flags();
    let port = match k.tunnel() {
        Some((vni, ingress, egress)) => format!("tunnel(vni={vni},in={ingress},out={egress})"),
        None => format!("in_port={}", k.in_port()),
    };
    let mut s = format!(
        "{port} eth.src={} eth.dst={}",
        mac(&b[field::ETH_SRC]),
        mac(&b[field::ETH_DST])
    );
    if fl & flags::VLAN != 0 {
        let _ = write!(s, " vlan.tci=0x{:04x}", k.vlan_tci());
    }
    if fl & flags::ARP != 0 {
        let _ = write!(
            s,
            " arp.op={} arp.spa={} arp.tpa={} arp.sha={}",
            k.arp_op(),
            addr(&b[field::SRC], true),
            addr(&b[field::DST], true),
            mac(&b[field::SHA])
        );
    } else if fl & (flags::IPV4 | flags::IPV6) != 0 {
        let v4 = fl & flags::IPV4 != 0;
        let _ = write!(
            s,
            " {}.src={} {}.dst={} ip.proto={} ip.ttl={}",
            if v4 { "ip4" } else { "ip6" },
            addr(&b[field::SRC], v4),
            if v4 { "ip4" } else { "ip6" },
            addr(&b[field::DST], v4),
            k.ip_proto(),
            k.ttl()
        );
        if fl & flags::L4 != 0 {
            match k.ip_proto() {
                1 | 58 => {
                    let _ = write!(
                        s,
                        " icmp.type={} icmp.code={}",
                        k.icmp_type(),
                        k.icmp_code()
                    );
                }
                6 => {
                    // The flags are part of the key: a SYN and an ACK of one
                    // connection are different entries.
                    let _ = write!(
                        s,
                        " tp.src={} tp.dst={} tcp.flags=0x{:03x}",
                        k.tp_src(),
                        k.tp_dst(),
                        k.tcp_flags()
                    );
                }
                _ => {
                    let _ = write!(s, " tp.src={} tp.dst={}", k.tp_src(), k.tp_dst());
                }
            }
        }
    } else {
        let _ = write!(s, " eth.type=0x{:04x}", k.eth_type());
    }
    s
}

/// The fields a rewrite sets, as `field=value` terms (`-` when none).
pub fn describe_rewrite(original: &FlowKey, rw: &Rewrite) -> String {
    let (o, n) = (original.as_bytes(), rw.key.as_bytes());
    let v4 = original.flags() & (flags::IPV4 | flags::ARP) != 0;
    let mut terms = Vec::new();
    let f = |r: std::ops::Range<usize>| o[r.clone()] != n[r];
    if f(field::ETH_SRC) {
        terms.push(format!("eth.src={}", mac(&n[field::ETH_SRC])));
    }
    if f(field::ETH_DST) {
        terms.push(format!("eth.dst={}", mac(&n[field::ETH_DST])));
    }
    if o[field::TTL] != n[field::TTL] {
        terms.push(format!("ip.ttl={}", n[field::TTL]));
    }
    if o[field::TOS] != n[field::TOS] {
        terms.push(format!("ip.dscp={}", n[field::TOS] >> 2));
    }
    if f(field::SRC) {
        terms.push(format!("src={}", addr(&n[field::SRC], v4)));
    }
    if f(field::DST) {
        terms.push(format!("dst={}", addr(&n[field::DST], v4)));
    }
    if f(field::TP_SRC) || f(field::TP_DST) {
        terms.push(format!(
            "tp.src={} tp.dst={}",
            rw.key.tp_src(),
            rw.key.tp_dst()
        ));
    }
    if o[field::ICMP_TYPE] != n[field::ICMP_TYPE] || o[field::ICMP_CODE] != n[field::ICMP_CODE] {
        terms.push(format!(
            "icmp.type={} icmp.code={}",
            n[field::ICMP_TYPE],
            n[field::ICMP_CODE]
        ));
    }
    if f(field::ARP_OP) {
        terms.push(format!("arp.op={}", rw.key.arp_op()));
    }
    if f(field::SHA) {
        terms.push(format!("arp.sha={}", mac(&n[field::SHA])));
    }
    if f(field::THA) {
        terms.push(format!("arp.tha={}", mac(&n[field::THA])));
    }
    if terms.is_empty() {
        "-".into()
    } else {
        terms.join(" ")
    }
}

/// The trace of the interpreter's last run (it must have run with
/// `tracing` on) for a packet with `key` received on logical port
/// `inport`: every table looked up and the flow that matched, every drop
/// and output, then the verdict.
pub fn render(program: &Program, inport: u32, key: &FlowKey, it: &Interpreter) -> String {
    let mut s = String::new();
    let port_name = |i: u32| {
        program
            .ports
            .get(i as usize)
            .map(|p| p.name.as_str())
            .unwrap_or("?")
    };
    let chassis_name = |i: u16| {
        program
            .chassis
            .get(usize::from(i))
            .map(|c| format!("{} ({})", c.name, c.ip))
            .unwrap_or_else(|| "?".into())
    };
    let _ = writeln!(s, "packet: {}", describe_key(key));
    let _ = writeln!(
        s,
        "inport \"{}\", program generation {}",
        port_name(inport),
        program.generation
    );
    let mut last: Option<(u32, u8)> = None;
    for ev in &it.trace {
        match ev {
            TraceEvent::Table {
                datapath,
                pipeline: pipe,
                table,
                flow,
                ..
            } => {
                if last != Some((*datapath, *pipe)) {
                    let dp = program
                        .datapaths
                        .get(*datapath as usize)
                        .map(|d| d.name.as_str())
                        .unwrap_or("?");
                    let _ = writeln!(
                        s,
                        "\n{}(dp=\"{}\")",
                        if *pipe == pipeline::INGRESS {
                            "ingress"
                        } else {
                            "egress"
                        },
                        dp
                    );
                    last = Some((*datapath, *pipe));
                }
                match flow.and_then(|f| program.flows.get(f as usize)) {
                    Some(f) => {
                        let _ = writeln!(
                            s,
                            " {table:>2}. {}, priority {}, uuid {:08x}\n     match: {}\n     actions: {}",
                            program.text(f.stage),
                            f.priority,
                            f.lflow,
                            program.text(f.match_text),
                            program.text(f.actions_text)
                        );
                    }
                    None => {
                        let _ = writeln!(s, " {table:>2}. no flow matched");
                    }
                }
            }
            TraceEvent::Drop { cause, .. } => {
                let _ = writeln!(s, "     drop ({})", cause.name());
            }
            TraceEvent::Output { port, .. } => {
                let _ = writeln!(s, "     output to \"{}\"", port_name(*port));
            }
            TraceEvent::Tunnel {
                port,
                outport,
                chassis,
                ..
            } => {
                let _ = writeln!(
                    s,
                    "     output to \"{}\" through the tunnel to chassis {} (outport key {outport})",
                    port_name(*port),
                    chassis_name(*chassis)
                );
            }
        }
    }
    let v = &it.verdict;
    let _ = writeln!(s, "\nverdict:");
    if v.emissions.is_empty() {
        let cause = v
            .drop_cause()
            .map(|c| c.name())
            .unwrap_or("ovn_implicit_drop");
        let _ = writeln!(s, "  drop ({cause})");
    }
    for em in &v.emissions {
        let fp = match em.tunnel {
            Some(c) => format!(
                "Geneve to chassis {}, vni {} inport key {} outport key {}",
                chassis_name(c),
                em.vector.u32_at(vector::DATAPATH.start),
                em.vector.inport(),
                em.vector.outport()
            ),
            None => program
                .ports
                .get(em.port as usize)
                .and_then(|p| p.fastpath_port)
                .map(|p| format!("fastpath port {p}"))
                .unwrap_or_else(|| "no local fastpath port".into()),
        };
        let what = match em.generated {
            Some(g) => format!("generated {g:?}: {}", describe_key(&em.vector.key())),
            None => match Rewrite::plan(key, &em.vector) {
                Ok(rw) => format!("rewrite {}", describe_rewrite(key, &rw)),
                Err(e) => format!("cannot rewrite: {e}"),
            },
        };
        let _ = writeln!(s, "  output \"{}\" ({fp}): {what}", port_name(em.port));
    }
    for l in &v.learned {
        let _ = writeln!(
            s,
            "  learned: port key {} ip {} mac {}",
            l.port_key,
            Ipv6Addr::from(l.ip),
            mac(&l.mac)
        );
    }
    for op in &v.ct_ops {
        let _ = writeln!(
            s,
            "  ct zone {}: {} -> ct_state={} ct_mark={:#x} ct_label={:#x}",
            op.zone,
            describe_ct_op(&op.kind),
            ct_state_text(op.result.state),
            op.result.mark,
            op.result.label
        );
    }
    for m in &v.meters {
        let _ = writeln!(
            s,
            "  meter {:08x} (lflow {:08x}): rate {} kbps burst {} kb",
            m.key, m.lflow, m.rate, m.burst
        );
    }
    for l in &v.logs {
        let text = program
            .flows
            .get(l.flow as usize)
            .map_or("?", |f| program.text(f.actions_text));
        let _ = writeln!(
            s,
            "  log (verdict {}, severity {}): {text}",
            l.verdict, l.severity
        );
    }
    if v.length_dependent {
        let _ = writeln!(s, "  (depends on the packet length: not cached)");
    }
    s
}

/// `ct_state` bits as ovn-trace names them (`trk|new|dnat`).
pub fn ct_state_text(state: u32) -> String {
    const NAMES: [&str; 8] = ["new", "est", "rel", "rpl", "inv", "trk", "snat", "dnat"];
    let names: Vec<&str> = (0..8)
        .filter(|b| state & (1 << b) != 0)
        .map(|b| NAMES[b])
        .collect();
    if names.is_empty() {
        "0".into()
    } else {
        names.join("|")
    }
}

fn addr_text(a: &[u8; 16]) -> String {
    let v6 = Ipv6Addr::from(*a);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => v6.to_string(),
    }
}

fn describe_ct_op(kind: &CtOpKind) -> String {
    match kind {
        CtOpKind::Track => "track".into(),
        CtOpKind::Clear => "clear".into(),
        CtOpKind::Nat(dir, target) => {
            let d = if *dir == NatDirection::Dnat {
                "dnat"
            } else {
                "snat"
            };
            match target {
                Some(t) => format!("{d} to {}", addr_text(&t.addr)),
                None => format!("{d} (existing)"),
            }
        }
        CtOpKind::LoadBalance(Some(b)) => {
            format!("load-balance to {}:{}", addr_text(&b.addr), b.port)
        }
        CtOpKind::LoadBalance(None) => "load-balance (existing)".into(),
        CtOpKind::Commit(c) => format!(
            "commit mark {:#x}/{:#x} label {:#x}/{:#x} nat {:?}",
            c.mark, c.mark_mask, c.label, c.label_mask, c.nat
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastpath_packet::extract;

    #[test]
    fn microflow_to_frame_and_back() {
        let f = microflow_frame(
            "eth.src=50:54:00:00:00:01, eth.dst=00:00:00:00:ff:01, ip4.src=10.0.0.11, ip4.dst=10.0.1.13, ip.ttl=64, tcp.dst=80",
        )
        .unwrap();
        let (k, _) = extract(&f, 0).unwrap();
        assert_eq!(k.eth_src(), [0x50, 0x54, 0, 0, 0, 1]);
        assert_eq!(&k.dst()[12..], &[10, 0, 1, 13]);
        assert_eq!((k.ip_proto(), k.ttl(), k.tp_dst()), (6, 64, 80));
        let d = describe_key(&k);
        assert_eq!(ct_state_text(0x21), "new|trk");
        assert_eq!(ct_state_text(0xa2), "est|trk|dnat");
        assert_eq!(ct_state_text(0), "0");
        assert!(
            d.contains("ip4.dst=10.0.1.13") && d.contains("tp.dst=80"),
            "{d}"
        );

        let a =
            microflow_frame("arp.op == 1 && arp.spa == 10.0.0.11 && arp.tpa == 10.0.0.1").unwrap();
        let (k, _) = extract(&a, 0).unwrap();
        assert!(k.is_arp());
        assert_eq!(&k.dst()[12..], &[10, 0, 0, 1]);

        let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(microflow_frame(&hex).unwrap(), f);

        // `len=`: a 1 514-byte UDP frame whose lengths and checksum agree.
        let big =
            microflow_frame("ip4.src=10.0.0.11, ip4.dst=10.0.1.13, udp.dst=53, len=1514").unwrap();
        assert_eq!(big.len(), 1514);
        let (k, l) = extract(&big, 0).unwrap();
        assert_eq!((k.ip_proto(), k.tp_dst()), (17, 53));
        assert_eq!(usize::from(l.end), 1514);
        assert_eq!(&big[16..18], &1500u16.to_be_bytes());
        assert_eq!(&big[38..40], &1480u16.to_be_bytes());
        let ping = microflow_frame("ip4.dst=10.0.1.13, icmp4.type=8, len=200").unwrap();
        assert!(fastpath_packet::checksum::verify(&ping[34..]));
        assert!(matches!(
            microflow_frame("len=100000"),
            Err(MicroflowError::Value { .. })
        ));
    }

    #[test]
    fn microflow_errors_are_named() {
        assert!(matches!(
            microflow_frame("ip4.src=10.0.0.300"),
            Err(MicroflowError::Value { .. })
        ));
        assert!(matches!(
            microflow_frame("reg0=1"),
            Err(MicroflowError::UnknownField(_))
        ));
        assert!(matches!(
            microflow_frame("abc"),
            Err(MicroflowError::Hex(_))
        ));
        assert!(matches!(
            microflow_frame("eth.src"),
            Err(MicroflowError::Hex(_))
        ));
    }
}
