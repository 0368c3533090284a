//! Load-balancer hairpin and ICMP through NAT, with real TCP/UDP/ICMP
//! stacks behind a running fastpath: kernel network namespaces behind
//! `net_tap` ports, the real NB + SB + ovn-northd, and `ovn-bridge
//! compile` following the Southbound.
//!
//! The layout is Kube-OVN's: one switch for the pods behind the cluster
//! router, the ClusterIP load balancers on the switch (`ls-lb-add`, the
//! default hairpin SNAT address, i.e. the VIP), and an external switch on
//! a distributed gateway port of the router with a floating IP
//! (`dnat_and_snat`) for one pod.
//!
//! * Hairpin: a pod that is itself a backend of a Service reaches the
//!   Service. The connections that land on the pod itself come back to it
//!   with their source translated to the VIP (northd's `chk_lb_hairpin` /
//!   `ct_snat_to_vip`), so the answer returns through the fastpath; the
//!   others land on the second backend.
//! * ICMP related to a NATed connection: a UDP datagram to a VIP whose
//!   backend has no listener draws a port unreachable from the backend's
//!   kernel; the client's connected socket sees `ECONNREFUSED` only if the
//!   quoted header was translated back to the VIP.
//! * ICMP echo through the router's `dnat_and_snat`: the external host
//!   pings the floating IP and gets the answer from it; the pod pings the
//!   external host through the same translation.

mod common;

use common::netns::{in_ns, ip, settle, Central, Net};
use common::Fastpath;
use fastpath_api::{ConntrackEntry, ConntrackFilter, ConntrackList, Request};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The ClusterIP of the Service (TCP 80 and UDP 53).
const VIP: &str = "10.96.0.10";
/// The router's address on the external network.
const GATEWAY_EXT: &str = "172.16.0.1";
/// The floating IP of pod b.
const FLOATING_IP: &str = "172.16.0.50";
/// The host on the external network.
const EXTERNAL_HOST: &str = "172.16.0.99";

/// A port of the fastpath with its kernel side in a namespace.
struct Pod {
    /// Logical switch port.
    lsp: &'static str,
    mac: &'static str,
    addr: &'static str,
    prefix: u8,
    gateway: &'static str,
    /// Namespace (and tap) name suffix.
    suffix: &'static str,
    /// Fastpath port id.
    port: u16,
}

/// p1 is the client; p2 and p3 the backends of the Service (p2 reaches
/// the Service itself); p3 owns the floating IP; pext is the external
/// host.
const PODS: [Pod; 4] = [
    Pod {
        lsp: "p1",
        mac: "50:54:00:00:00:01",
        addr: "10.0.0.11",
        prefix: 24,
        gateway: "10.0.0.1",
        suffix: "c",
        port: 0,
    },
    Pod {
        lsp: "p2",
        mac: "50:54:00:00:00:02",
        addr: "10.0.0.12",
        prefix: 24,
        gateway: "10.0.0.1",
        suffix: "a",
        port: 1,
    },
    Pod {
        lsp: "p3",
        mac: "50:54:00:00:00:03",
        addr: "10.0.0.13",
        prefix: 24,
        gateway: "10.0.0.1",
        suffix: "b",
        port: 2,
    },
    Pod {
        lsp: "pext",
        mac: "50:54:00:00:00:99",
        addr: EXTERNAL_HOST,
        prefix: 24,
        gateway: GATEWAY_EXT,
        suffix: "e",
        port: 3,
    },
];

/// What one TCP connection attempt gave.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Attempt {
    /// The server answered with its name.
    Answer(String),
    /// A reset: the path works, the server was between two listeners.
    Refused,
    /// No answer within the timeout (or another error): the path failed.
    Failed(String),
}

/// One connection from namespace `ns` to `addr:port` (a fresh source
/// port each time).
fn connect_once(ns: &str, addr: &str, port: u16) -> Attempt {
    let out = in_ns(ns, &["nc", "-v", "-N", "-w", "2", addr, &port.to_string()]);
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !said.is_empty() {
        Attempt::Answer(said)
    } else if err.contains("refused") {
        Attempt::Refused
    } else {
        Attempt::Failed(err)
    }
}

/// A connection that a server between two listeners does not spoil: a
/// reset is retried, anything else is the outcome.
fn connect(ns: &str, addr: &str, port: u16) -> Attempt {
    let mut last = Attempt::Refused;
    for _ in 0..5 {
        last = connect_once(ns, addr, port);
        if last != Attempt::Refused {
            return last;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

/// The Northbound of the test, as Kube-OVN writes it: the pod switch
/// behind the cluster router with the Service's load balancers, and the
/// external network on a distributed gateway port with a floating IP.
fn northbound(c: &Central) {
    c.nb(&["ls-add", "sw0"]);
    c.nb(&["lr-add", "lr0"]);
    c.nb(&["lrp-add", "lr0", "lrp0", "00:00:00:00:ff:01", "10.0.0.1/24"]);
    c.nb(&["lsp-add", "sw0", "sw0-lr0"]);
    c.nb(&["lsp-set-type", "sw0-lr0", "router"]);
    c.nb(&["lsp-set-addresses", "sw0-lr0", "router"]);
    c.nb(&["lsp-set-options", "sw0-lr0", "router-port=lrp0"]);
    c.nb(&["ls-add", "ext"]);
    c.nb(&[
        "lrp-add",
        "lr0",
        "lrp-ext",
        "00:00:00:00:ff:03",
        &format!("{GATEWAY_EXT}/24"),
    ]);
    c.nb(&["lrp-set-gateway-chassis", "lrp-ext", "hv1"]);
    c.nb(&["lsp-add", "ext", "ext-lr0"]);
    c.nb(&["lsp-set-type", "ext-lr0", "router"]);
    c.nb(&["lsp-set-addresses", "ext-lr0", "router"]);
    c.nb(&["lsp-set-options", "ext-lr0", "router-port=lrp-ext"]);
    for p in &PODS {
        let sw = if p.lsp == "pext" { "ext" } else { "sw0" };
        c.nb(&["lsp-add", sw, p.lsp]);
        c.nb(&["lsp-set-addresses", p.lsp, &format!("{} {}", p.mac, p.addr)]);
    }
    c.nb(&[
        "lb-add",
        "cluster-tcp-loadbalancer",
        &format!("{VIP}:80"),
        "10.0.0.12:8080,10.0.0.13:8080",
        "tcp",
    ]);
    c.nb(&[
        "lb-add",
        "cluster-udp-loadbalancer",
        &format!("{VIP}:53"),
        "10.0.0.13:5353",
        "udp",
    ]);
    c.nb(&["ls-lb-add", "sw0", "cluster-tcp-loadbalancer"]);
    c.nb(&["ls-lb-add", "sw0", "cluster-udp-loadbalancer"]);
    c.nb(&[
        "lr-nat-add",
        "lr0",
        "dnat_and_snat",
        FLOATING_IP,
        "10.0.0.13",
    ]);
    c.ovn
        .sbctl(&["chassis-add", "hv1", "geneve", "127.0.0.1"])
        .expect("chassis");
    c.sync();
    for p in PODS.iter().map(|p| p.lsp).chain(["cr-lrp-ext"]) {
        c.ovn.sbctl(&["lsp-bind", p, "hv1"]).expect("bind");
    }
    c.sync();
}

/// The running lab: namespaces, OVN central with the compiler, fastpath.
/// Field order is drop order: the fastpath stops before its namespaces go.
struct Lab {
    fp: Fastpath,
    /// Kept alive: the compiler follows its Southbound.
    _central: Central,
    net: Net,
    id: u32,
}

impl Lab {
    fn start() -> Lab {
        let id = std::process::id() % 100_000;
        let mut net = Net::default();
        for p in PODS.iter() {
            net.add_ns(&format!("fph{}{id}", p.suffix));
        }
        let mut central = Central::start();
        northbound(&central);

        let dir = tempfile::Builder::new()
            .prefix("fp-hairpin-")
            .tempdir()
            .expect("tempdir");
        let tables = dir.path().join("tables");
        let ports: Vec<(&str, u16)> = PODS.iter().map(|p| (p.lsp, p.port)).collect();
        central.follow(&ports, &tables, dir.path().join("compile.log"));
        let taps: Vec<String> = PODS
            .iter()
            .map(|p| format!("fph{}{id}", p.suffix))
            .collect();
        let mut args = Vec::new();
        for (p, t) in PODS.iter().zip(&taps) {
            args.push("--port".to_string());
            args.push(format!("{}=net_tap{},iface={t}", p.lsp, p.port));
        }
        let ports: Vec<&str> = PODS.iter().map(|p| p.lsp).collect();
        args.extend(
            [
                "--worker",
                &format!("1={}", ports.join(",")),
                "--pipeline",
                "ovn",
                "--tables",
                &tables.display().to_string(),
            ]
            .map(String::from),
        );
        let fp = Fastpath::start_in(dir, &args);
        for (p, (t, n)) in PODS.iter().zip(taps.iter().zip(&net.ns)) {
            ip(&["link", "set", t, "netns", n]);
            ip(&["-n", n, "link", "set", t, "address", p.mac]);
            let cidr = format!("{}/{}", p.addr, p.prefix);
            ip(&["-n", n, "addr", "add", &cidr, "dev", t]);
            ip(&["-n", n, "link", "set", t, "up"]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
            ip(&["-n", n, "route", "add", "default", "via", p.gateway]);
        }
        settle(&fp);
        Lab {
            fp,
            _central: central,
            net,
            id,
        }
    }

    /// The namespace of the pod with namespace suffix `suffix`.
    fn ns(&self, suffix: &str) -> String {
        format!("fph{suffix}{}", self.id)
    }

    fn conntrack(&self, addr: &str) -> Vec<ConntrackEntry> {
        let list: ConntrackList = self
            .fp
            .client()
            .call_as(&Request::ConntrackList {
                filter: ConntrackFilter {
                    addr: Some(addr.into()),
                    ..Default::default()
                },
                limit: 200,
            })
            .expect("conntrack list");
        list.entries
    }

    /// Drops, port counters, connections and the compiler's log, for
    /// failure messages.
    fn diagnostics(&self) -> String {
        let stats: fastpath_api::Stats = self.fp.client().call_as(&Request::Stats).expect("stats");
        let list: ConntrackList = self
            .fp
            .client()
            .call_as(&Request::ConntrackList {
                filter: ConntrackFilter::default(),
                limit: 60,
            })
            .expect("conntrack list");
        let mut s = format!("drops {:?}\nports {:?}\n", stats.drops, stats.ports);
        for e in &list.entries {
            s.push_str(&format!(
                "zone {} {} | {} {} {:?} {:?}\n",
                e.zone, e.original, e.reply, e.state, e.status, e.packets
            ));
        }
        let compile = std::fs::read_to_string(self.fp.path("compile.log")).unwrap_or_default();
        let tail: Vec<&str> = compile.lines().rev().take(10).collect();
        s.push_str(&format!(
            "compile log (last lines, newest first): {tail:?}\n"
        ));
        s
    }

    /// The fastpath's trace of a SYN from pod a to the VIP that the load
    /// balancer sends back to pod a (the first source port that does).
    fn hairpin_trace(&self) -> String {
        let mut last = String::new();
        for sport in 40000..40064 {
            last = self.trace(
                "p2",
                &format!(
                    "eth.src=50:54:00:00:00:02, eth.dst=00:00:00:00:ff:01, ip4.src=10.0.0.12, \
                     ip4.dst={VIP}, tcp.src={sport}, tcp.dst=80"
                ),
            );
            if last.contains("load-balance to 10.0.0.12:8080") {
                break;
            }
        }
        last
    }

    /// The fastpath's trace of a packet entering `inport`.
    fn trace(&self, inport: &str, packet: &str) -> String {
        self.fp
            .client()
            .call_as::<fastpath_api::TraceResult>(&Request::Trace {
                inport: inport.into(),
                packet: packet.into(),
            })
            .map(|t| t.text)
            .unwrap_or_else(|e| format!("trace failed: {e}"))
    }
}

#[test]
fn pod_reaches_its_own_service_through_hairpin_snat() {
    let mut lab = Lab::start();
    let (a, b) = (lab.ns("a"), lab.ns("b"));
    lab.net.serve(&a, 8080, "backend-a");
    lab.net.serve(&b, 8080, "backend-b");
    std::thread::sleep(Duration::from_millis(300));

    // Pod a (10.0.0.12, a backend of the VIP) opens 20 connections to the
    // VIP, each from a fresh source port. Every one must be answered: by a
    // itself (hairpinned, its source translated to the VIP) or by b.
    let mut answers: BTreeMap<Attempt, usize> = BTreeMap::new();
    for _ in 0..20 {
        *answers.entry(connect(&a, VIP, 80)).or_default() += 1;
        // The server in the namespace that answered listens again soon.
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("connections from pod a to its own Service: {answers:?}");
    let failed: Vec<&Attempt> = answers
        .keys()
        .filter(|k| !matches!(k, Attempt::Answer(_)))
        .collect();
    assert!(
        failed.is_empty(),
        "connections from a backend to its own VIP failed: {answers:?}\n\
         (`ct_snat_to_vip` / `ct_snat` of a switch must use the switch's SNAT \
         zone, not the port's, or the hairpin SNAT lands on the load-balanced \
         connection itself)\n{}\n{}",
        lab.diagnostics(),
        lab.hairpin_trace()
    );
    let count = |name: &str| {
        answers
            .get(&Attempt::Answer(name.into()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(
        count("backend-a") + count("backend-b"),
        20,
        "only the two backends answer: {answers:?}"
    );
    assert!(
        count("backend-a") > 0,
        "no connection landed on the pod itself (hairpin untested): {answers:?}"
    );
    assert!(
        count("backend-b") > 0,
        "no connection landed on the other backend: {answers:?}"
    );

    // The hairpinned connections are tracked with their source translated
    // to the VIP: original a -> a:8080, reply a:8080 -> VIP.
    let entries = lab.conntrack(VIP);
    for e in &entries {
        println!("{} | {} {:?}", e.original, e.reply, e.status);
    }
    let hairpin = entries.iter().find(|e| {
        e.original.contains("10.0.0.12:")
            && e.original.contains("-> 10.0.0.12:8080")
            && e.reply.starts_with("proto=6 10.0.0.12:8080 -> ")
            && e.reply.contains(&format!("-> {VIP}:"))
            && e.status.iter().any(|s| s == "snat")
    });
    assert!(
        hairpin.is_some(),
        "no hairpin SNAT to the VIP in conntrack:\n{}",
        lab.diagnostics()
    );
    // And the load-balanced side: a -> VIP:80 translated to a backend.
    assert!(
        entries
            .iter()
            .any(|e| e.original.contains("proto=6 10.0.0.12:")
                && e.original.contains(&format!("-> {VIP}:80"))
                && e.status.iter().any(|s| s == "dnat")),
        "no DNAT of a -> VIP:80 in conntrack:\n{}",
        lab.diagnostics()
    );

    // fastpathctl shows the same.
    let ctl = PathBuf::from(env!("CARGO_BIN_EXE_fastpath")).with_file_name("fastpathctl");
    if ctl.exists() {
        let out = Command::new(&ctl)
            .args(["--socket", &lab.fp.socket.display().to_string()])
            .args(["conntrack", "list", "--addr", VIP])
            .output()
            .expect("fastpathctl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("10.0.0.12:8080") && text.contains(VIP),
            "fastpathctl conntrack list:\n{text}"
        );
    }
}

/// Sends one datagram from namespace `ns` on a UDP socket connected to
/// `addr:port` and waits up to 3 s for an answer; returns bash's stderr
/// (`Connection refused` when an ICMP error matched the socket) and
/// whether the read timed out.
fn udp_probe(ns: &str, addr: &str, port: u16) -> (String, bool) {
    // bash's /dev/udp connects the socket: the kernel reports an ICMP
    // error to it only when the quoted header names its own addresses.
    let script = format!(
        "exec 3<>/dev/udp/{addr}/{port} || exit 2; echo probe >&3; read -t 3 line <&3; echo \"read=$?\" >&2"
    );
    let out = in_ns(ns, &["bash", "-c", &script]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let timed_out = err.lines().any(|l| {
        l.strip_prefix("read=")
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| c > 128)
    });
    (err, timed_out)
}

#[test]
fn icmp_errors_and_echo_through_nat() {
    let lab = Lab::start();
    let (client, b, ext) = (lab.ns("c"), lab.ns("b"), lab.ns("e"));

    // UDP to VIP:53, load-balanced to b:5353 where nothing listens: b's
    // kernel answers with a port unreachable quoting 10.0.0.11 ->
    // 10.0.0.13:5353; the client's socket is connected to VIP:53 and sees
    // the error only if the quoted header (and the outer source) came back
    // translated.
    let (err, timed_out) = udp_probe(&client, VIP, 53);
    assert!(
        err.contains("Connection refused"),
        "the client's UDP socket connected to {VIP}:53 did not see ECONNREFUSED \
         (timed out: {timed_out}): {err}\n{}",
        lab.diagnostics()
    );
    let entries = lab.conntrack(VIP);
    assert!(
        entries
            .iter()
            .any(|e| e.original.starts_with("proto=17 10.0.0.11:")
                && e.original.ends_with(&format!("-> {VIP}:53"))
                && e.reply.starts_with("proto=17 10.0.0.13:5353 -> 10.0.0.11:")
                && e.status.iter().any(|s| s == "dnat")),
        "no DNAT of the UDP probe in conntrack:\n{}",
        lab.diagnostics()
    );
    // Control: directly to b:5353 the error comes back untranslated and is
    // seen too (the backend does answer with a port unreachable).
    let (direct, _) = udp_probe(&client, "10.0.0.13", 5353);
    assert!(
        direct.contains("Connection refused"),
        "no port unreachable from b directly: {direct}"
    );

    // ICMP echo through the floating IP: the external host pings it and
    // the answer comes from it (b's reply SNATed back).
    let out = in_ns(
        &ext,
        &["ping", "-c", "3", "-i", "0.3", "-W", "2", FLOATING_IP],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains(&format!("from {FLOATING_IP}")),
        "ping {FLOATING_IP} from the external host:\n{text}{}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.diagnostics(),
        lab.trace(
            "pext",
            &format!(
                "eth.src=50:54:00:00:00:99, eth.dst=00:00:00:00:ff:03, ip4.src={EXTERNAL_HOST}, ip4.dst={FLOATING_IP}, icmp4.type=8"
            )
        )
    );
    // The pod pings the external host: its echo leaves as the floating IP
    // and the answer comes back from the external host.
    let out = in_ns(
        &b,
        &["ping", "-c", "3", "-i", "0.3", "-W", "2", EXTERNAL_HOST],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains(&format!("from {EXTERNAL_HOST}")),
        "ping {EXTERNAL_HOST} from pod b:\n{text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.diagnostics()
    );
    let entries = lab.conntrack(FLOATING_IP);
    assert!(
        entries
            .iter()
            .any(|e| e.original.starts_with("icmp") && e.status.iter().any(|s| s == "snat")),
        "no SNAT of the pod's echo to {FLOATING_IP} in conntrack:\n{}",
        lab.diagnostics()
    );
    assert!(
        entries
            .iter()
            .any(|e| e.original.starts_with("icmp") && e.status.iter().any(|s| s == "dnat")),
        "no DNAT of the external echo to the pod in conntrack:\n{}",
        lab.diagnostics()
    );
}

/// The hairpin decision without an EAL: a SYN from pod a to the VIP that
/// the load balancer sends back to pod a, through the interpreter with a
/// live conntrack engine (it commits, as the poll loop's does). It must
/// leave through a's own port, addressed to a's backend port, with its
/// source translated to the VIP.
#[test]
fn hairpinned_syn_leaves_through_its_own_port_from_the_vip() {
    use fastpath::conntrack::{Conntrack, ConntrackConfig};
    use fastpath::ovn::ct_engine::{received_packet, ConntrackEngine, LbAffinity, Mode};
    use std::sync::Arc;

    let central = Central::start();
    northbound(&central);
    let dir = tempfile::tempdir().expect("tempdir");
    let ports: Vec<(&str, u16)> = PODS.iter().map(|p| (p.lsp, p.port)).collect();
    let program = common::compile_program(
        &central.ovn.sb.remote,
        "hv1",
        &ports,
        &dir.path().join("tables"),
    );
    let ct = Arc::new(Conntrack::new(&ConntrackConfig {
        capacity: 1024,
        shards: 4,
        ..Default::default()
    }));
    let affinity = Arc::new(LbAffinity::new(64));
    let a_mac = [0x50, 0x54, 0, 0, 0, 2];
    let gw_mac = [0, 0, 0, 0, 0xff, 1];
    let (a_ip, vip) = ([10, 0, 0, 12], [10, 96, 0, 10]);
    let inport = program.port_by_fastpath(1).expect("p2 is local");
    let mut now = 1_000_000u64;
    let mut seen = Vec::new();
    for sport in 40000..40064u16 {
        let frame = common::tcp_frame((gw_mac, a_mac), (a_ip, sport), (vip, 80), 1, 0x02, b"");
        let (key, layout) = fastpath_packet::extract(&frame, 1).expect("frame parses");
        let mut engine = ConntrackEngine::new(ct.clone(), affinity.clone(), Mode::Live);
        now += 1_000_000;
        engine.begin(
            now,
            u32::from(layout.end - layout.l3),
            Some(received_packet(&key, &layout, &frame)),
        );
        let mut it = fastpath::ovn::Interpreter::new();
        it.tracing = true;
        let verdict = it.run_with(&program, inport, &key, frame.len() as u32, &mut engine);
        let outs: Vec<(u32, FlowKeySummary)> = verdict
            .emissions
            .iter()
            .map(|e| (e.port, FlowKeySummary::of(&e.vector.key())))
            .collect();
        let to_self = outs
            .iter()
            .any(|(_, k)| k.dst == (a_ip, 8080) && k.src.0 == a_ip);
        let hairpinned = outs
            .iter()
            .any(|(p, k)| *p == inport && k.dst == (a_ip, 8080) && k.src == (vip, sport));
        let trace = fastpath::ovn::trace::render(&program, inport, &key, &it);
        if to_self || hairpinned {
            assert!(
                hairpinned,
                "the SYN load-balanced to its own sender must come back through \
                 its port from the VIP (`ct_snat_to_vip` commits in the switch's \
                 SNAT zone, apart from the port's zone that holds the \
                 load-balanced connection): {outs:?}\n{trace}"
            );
            return;
        }
        seen.push(outs);
    }
    panic!("no source port was load-balanced to the sender: {seen:?}");
}

/// The addresses and ports of a vector's key, for assertions.
#[derive(Debug, PartialEq, Eq)]
struct FlowKeySummary {
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
}

impl FlowKeySummary {
    fn of(k: &fastpath_packet::FlowKey) -> FlowKeySummary {
        let v4 = |a: [u8; 16]| [a[12], a[13], a[14], a[15]];
        FlowKeySummary {
            src: (v4(k.src()), k.tp_src()),
            dst: (v4(k.dst()), k.tp_dst()),
        }
    }
}
