//! Two fastpath processes as two OVN chassis, linked by a veth pair as the
//! underlay (each owns one end through DPDK's `net_af_packet`), with pods
//! as kernel network namespaces behind `net_tap` ports. One real NB + SB +
//! ovn-northd; one `ovn-bridge compile --follow` per chassis, each
//! publishing the tables of its own chassis (ports bound to the other one
//! become tunnel outputs). Checks: pods on different nodes ping each other
//! on one switch and across the distributed router (which runs on the
//! sending chassis, as OVN does), a TCP transfer crosses in both
//! directions, the fastpaths resolve each other by ARP on the underlay,
//! the tunnel headers decode in tshark as Geneve with the OVN option and
//! the right VNI and port keys, and an inner packet too big for the
//! uplink is answered with "fragmentation needed" carrying the pod MTU.

mod common;
#[path = "common/tshark.rs"]
mod tshark;

use common::netns::{follow, ip, run, Net};
use common::Fastpath;
use fastpath_api::{LcoreInfo, Request, Stats, TablesInfo, TunnelInfo};
use ovsdb::testing::OvnCentral;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Logical port, MAC, address/prefix, gateway, chassis ("a" or "b").
const PODS: [(&str, &str, &str, &str, &str); 3] = [
    ("a1", "50:54:00:00:01:11", "10.1.0.11/24", "10.1.0.1", "a"),
    ("b1", "50:54:00:00:01:12", "10.1.0.12/24", "10.1.0.1", "b"),
    ("b2", "50:54:00:00:02:12", "10.2.0.12/24", "10.2.0.1", "b"),
];
const UNDERLAY_A: &str = "192.168.77.1";
const UNDERLAY_B: &str = "192.168.77.2";
/// The uplink MTU; pods get 58 bytes less.
const UPLINK_MTU: u16 = 1500;
const POD_MTU: u16 = UPLINK_MTU - 58;

/// Waits until the fastpath's workers use a generation that has `remote`
/// ports bound to another chassis (the other chassis's claims have been
/// compiled in).
fn wait_tables(fp: &Fastpath, what: &str) {
    let start = Instant::now();
    loop {
        let t: TablesInfo = fp.client().call_as(&Request::Tables).unwrap();
        let lcores: Vec<LcoreInfo> = fp.client().call_as(&Request::Lcores).unwrap();
        let dump: String = fp
            .client()
            .call_as(&Request::TablesDump {
                section: "remote-ports".into(),
            })
            .unwrap_or_default();
        if t.generation > 0
            && t.generation == t.published_generation
            && lcores.iter().all(|l| l.table_generation == t.generation)
            && dump.contains(what)
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "tables with {what:?} never in use: {t:?}\nremote ports:\n{dump}\n{}",
            fp.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The non-zero drop counters, by reason.
fn drops(fp: &Fastpath) -> std::collections::BTreeMap<String, u64> {
    let s: Stats = fp.client().call_as(&Request::Stats).unwrap();
    s.drops
}

fn dropped(fp: &Fastpath, reason: &str) -> u64 {
    drops(fp).get(reason).copied().unwrap_or(0)
}

/// Pings `addr` from namespace `ns` until one answer comes back (the first
/// echo may be lost while a fastpath resolves its next hop by ARP).
fn ping_ok(ns: &str, addr: &str) -> bool {
    for _ in 0..10 {
        let out = run(
            "ip",
            &["netns", "exec", ns, "ping", "-c", "1", "-W", "1", addr],
        );
        if out.status.success() {
            return true;
        }
    }
    false
}

#[test]
fn pods_on_two_fastpath_nodes_talk_over_geneve() {
    let id = std::process::id() % 100_000;
    let ns = |p: &str| format!("gv{p}{id}");
    let (ula, ulb) = (format!("gvula{id}"), format!("gvulb{id}"));
    let mut net = Net::default();
    for p in PODS {
        net.add_ns(&ns(p.0));
    }
    // The underlay: a veth pair whose ends the fastpaths own; the kernel
    // holds no address on it.
    ip(&[
        "link", "add", &ula, "mtu", "1500", "type", "veth", "peer", "name", &ulb, "mtu", "1500",
    ]);
    net.links.push(ula.clone());
    for l in [&ula, &ulb] {
        let key = format!("net.ipv6.conf.{l}.disable_ipv6=1");
        let _ = run("sysctl", &["-qw", &key]);
        ip(&["link", "set", l, "up"]);
    }

    let central = OvnCentral::start().expect("NB, SB and ovn-northd");
    let nb = |args: &[&str]| {
        central
            .nbctl(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    };
    nb(&["lr-add", "lr0"]);
    for (sw, lrp, mac, net) in [
        ("sw1", "lrp1", "00:00:00:00:ff:01", "10.1.0.1/24"),
        ("sw2", "lrp2", "00:00:00:00:ff:02", "10.2.0.1/24"),
    ] {
        nb(&["ls-add", sw]);
        nb(&["lrp-add", "lr0", lrp, mac, net]);
        let rp = format!("{sw}-lr0");
        nb(&["lsp-add", sw, &rp]);
        nb(&["lsp-set-type", &rp, "router"]);
        nb(&["lsp-set-addresses", &rp, "router"]);
        nb(&["lsp-set-options", &rp, &format!("router-port={lrp}")]);
    }
    for (p, mac, addr, _, _) in PODS {
        let sw = if addr.starts_with("10.1.") {
            "sw1"
        } else {
            "sw2"
        };
        nb(&["lsp-add", sw, p]);
        let ip = addr.split('/').next().unwrap();
        nb(&["lsp-set-addresses", p, &format!("{mac} {ip}")]);
        nb(&["lsp-set-port-security", p, &format!("{mac} {ip}")]);
    }
    for (name, addr) in [("hv-a", UNDERLAY_A), ("hv-b", UNDERLAY_B)] {
        central
            .sbctl(&["chassis-add", name, "geneve", addr])
            .expect("chassis");
    }
    central.sync(Duration::from_secs(30)).expect("northd");
    for (p, _, _, _, node) in PODS {
        central
            .sbctl(&["lsp-bind", p, &format!("hv-{node}")])
            .expect("bind");
    }
    central.sync(Duration::from_secs(30)).expect("northd");

    // Node A: a1 on port 0, the uplink on port 1. Node B: b1, b2, uplink.
    let dir_a = tempfile::Builder::new().prefix("gv-a-").tempdir().unwrap();
    let dir_b = tempfile::Builder::new().prefix("gv-b-").tempdir().unwrap();
    let (tables_a, tables_b) = (dir_a.path().join("tables"), dir_b.path().join("tables"));
    let sb = central.sb.remote.clone();
    let _compilers = [
        follow(
            &sb,
            "hv-a",
            &[("a1", 0)],
            &tables_a,
            dir_a.path().join("compile.log"),
        ),
        follow(
            &sb,
            "hv-b",
            &[("b1", 0), ("b2", 1)],
            &tables_b,
            dir_b.path().join("compile.log"),
        ),
    ];
    let tap = |p: &str| format!("gvt{p}{id}");
    let node_args = |pods: &[&str], uplink: &str, local: &str, tables: &Path| {
        let mut args = Vec::new();
        for (i, p) in pods.iter().enumerate() {
            args.push("--port".to_string());
            args.push(format!("{p}=net_tap{i},iface={}", tap(p)));
        }
        args.push("--port".into());
        args.push(format!("uplink=net_af_packet0,iface={uplink}"));
        let rx: Vec<String> = pods.iter().map(|p| p.to_string()).collect();
        args.extend(
            [
                "--worker",
                &format!("1={},uplink", rx.join(",")),
                "--pipeline",
                "ovn",
                "--tables",
                &tables.display().to_string(),
                "--tunnel-uplink",
                "uplink",
                "--tunnel-ip",
                &format!("{local}/24"),
                "--tunnel-mtu",
                &UPLINK_MTU.to_string(),
            ]
            .map(String::from),
        );
        args
    };
    let fp_a = Fastpath::start_in(dir_a, &node_args(&["a1"], &ula, UNDERLAY_A, &tables_a));
    let fp_b = Fastpath::start_in(
        dir_b,
        &node_args(&["b1", "b2"], &ulb, UNDERLAY_B, &tables_b),
    );
    for (p, mac, addr, gw, _) in PODS {
        let (t, n) = (tap(p), ns(p));
        ip(&["link", "set", &t, "netns", &n]);
        ip(&["-n", &n, "link", "set", &t, "address", mac]);
        ip(&["-n", &n, "link", "set", &t, "mtu", &POD_MTU.to_string()]);
        ip(&["-n", &n, "addr", "add", addr, "dev", &t]);
        ip(&["-n", &n, "link", "set", &t, "up"]);
        ip(&["-n", &n, "link", "set", "lo", "up"]);
        ip(&["-n", &n, "route", "add", "default", "via", gw]);
    }
    wait_tables(&fp_a, "port b2 on chassis hv-b");
    wait_tables(&fp_b, "port a1 on chassis hv-a");

    // Capture the underlay while the pods talk: on both ends, since what a
    // fastpath sends bypasses the kernel's taps of its own end (the
    // af_packet PMD's qdisc bypass); each end sees what the other sent.
    let pcap = fp_a.path("underlay.pcap");
    let mut capture = Command::new("tshark")
        .args(["-i", &ula, "-i", &ulb, "-f", "udp port 6081", "-w"])
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tshark (Debian package tshark)");
    wait_capturing(&mut capture);

    let a1 = ns("a1");
    assert!(
        ping_ok(&a1, "10.1.0.12"),
        "a1 -> b1 (one switch, two chassis)\nA: {:?}\nB: {:?}\n{}",
        drops(&fp_a),
        drops(&fp_b),
        fp_a.log()
    );
    assert!(
        ping_ok(&a1, "10.2.0.12"),
        "a1 -> b2 (across the router)\nA: {:?}\nB: {:?}",
        drops(&fp_a),
        drops(&fp_b)
    );
    assert!(ping_ok(&ns("b2"), "10.1.0.11"), "b2 -> a1");
    // TCP both ways across the router: 200 kB to a1 and back from it.
    let payload = 200_000usize;
    for (server, client, addr) in [("a1", "b2", "10.1.0.11"), ("b2", "a1", "10.2.0.12")] {
        let got = tcp_transfer(&mut net, &ns(server), &ns(client), addr, payload);
        assert_eq!(
            got,
            payload,
            "TCP {client} -> {server}\nA: {:?}\nB: {:?}",
            drops(&fp_a),
            drops(&fp_b)
        );
    }

    // Each fastpath resolved the other by ARP on the underlay: the MAC of
    // the other end of the veth pair.
    let link_mac = |l: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{l}/address"))
            .expect("link address")
            .trim()
            .to_string()
    };
    for (fp, peer_ip, peer_link, peer_chassis, lports) in [
        (&fp_a, UNDERLAY_B, &ulb, "hv-b", 2),
        (&fp_b, UNDERLAY_A, &ula, "hv-a", 1),
    ] {
        let t: TunnelInfo = fp.client().call_as(&Request::Tunnel).unwrap();
        let mac = link_mac(peer_link);
        assert!(
            t.neighbors.contains(&(peer_ip.to_string(), mac.clone())),
            "{t:?}"
        );
        let c = t
            .chassis
            .iter()
            .find(|c| c.name == peer_chassis)
            .unwrap_or_else(|| panic!("{t:?}"));
        assert_eq!(c.next_hop, format!("{peer_ip} {mac}"), "{t:?}");
        assert_eq!(c.ports, lports, "{t:?}");
        assert_eq!(t.pod_mtu, POD_MTU);
    }

    // The flow caches: A holds entries that encapsulate to hv-b, B entries
    // keyed by the tunnel metadata they arrived with; both had hits.
    let flows = |fp: &Fastpath| -> Vec<fastpath_api::FlowInfo> {
        let l: Vec<fastpath_api::LcoreFlows> = fp.client().call_as(&Request::Flows).unwrap();
        l.into_iter().flat_map(|l| l.flows).collect()
    };
    let fa = flows(&fp_a);
    assert!(
        fa.iter()
            .any(|f| f.actions.contains("geneve(chassis=hv-b") && f.hits > 1),
        "{fa:#?}"
    );
    let fb = flows(&fp_b);
    assert!(
        fb.iter()
            .any(|f| f.key.starts_with("tunnel(vni=") && f.hits > 1),
        "{fb:#?}"
    );

    // Nothing was lost for want of a tunnel, a route or a valid header.
    for fp in [&fp_a, &fp_b] {
        for reason in [
            "ovn_remote_outport",
            "tunnel",
            "tunnel_no_route",
            "malformed",
        ] {
            assert_eq!(dropped(fp, reason), 0, "{reason}: {:?}", drops(fp));
        }
    }

    // An inner packet over the pod MTU (a pod configured with the uplink's
    // MTU) is answered with "fragmentation needed", MTU = the pod MTU.
    let t = tap("a1");
    ip(&["-n", &a1, "link", "set", &t, "mtu", "1500"]);
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            &a1,
            "ping",
            "-c",
            "2",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            "1460",
            "10.1.0.12",
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("mtu = {POD_MTU}")) || text.contains(&format!("mtu={POD_MTU}")),
        "no frag-needed with mtu {POD_MTU}: {text}\nA: {:?}",
        drops(&fp_a)
    );
    assert!(dropped(&fp_a, "tunnel_inner_too_big") >= 1);
    // The kernel took the MTU: a route exception for b1.
    let route = run("ip", &["-n", &a1, "route", "get", "10.1.0.12"]);
    let route = String::from_utf8_lossy(&route.stdout).to_string();
    assert!(route.contains(&format!("mtu {POD_MTU}")), "{route}");

    // The capture: Geneve with the OVN option, as OVS would decode it.
    let _ = Command::new("kill")
        .args(["-INT", &capture.id().to_string()])
        .status();
    let _ = capture.wait();
    check_capture(&pcap, &central, [&fp_a, &fp_b]);
    drop(net);
}

/// Waits until tshark reports that it captures.
fn wait_capturing(capture: &mut Child) {
    use std::io::{BufRead, BufReader};
    let stderr = capture.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Capturing on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("tshark never started capturing");
}

/// Sends `bytes` bytes from `client` to a server in `server` on
/// `addr:5001`; returns how many the server received.
fn tcp_transfer(net: &mut Net, server: &str, client: &str, addr: &str, bytes: usize) -> usize {
    let out_file = tempfile::NamedTempFile::new().expect("temp file");
    let pid = net.spawn(
        server,
        &format!("nc -l 5001 > {}", out_file.path().display()),
    );
    std::thread::sleep(Duration::from_millis(300));
    let send = format!("head -c {bytes} /dev/zero | nc -N -w 5 {addr} 5001");
    let sent = run("ip", &["netns", "exec", client, "sh", "-c", &send]);
    assert!(
        sent.status.success(),
        "nc client: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let start = Instant::now();
    loop {
        let len = std::fs::metadata(out_file.path()).map_or(0, |m| m.len() as usize);
        if len >= bytes || start.elapsed() > Duration::from_secs(10) {
            net.stop(pid);
            return len;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Drop reasons a fastpath counts for a tunnel packet whose headers it
/// could not accept.
fn malformed_tunnel_drops(fp: &Fastpath) -> Vec<(String, u64)> {
    drops(fp)
        .into_iter()
        .filter(|(reason, _)| {
            fastpath::tunnel::DROP_REASONS.contains(&reason.as_str())
                && !reason.starts_with("tunnel_too_big")
        })
        .collect()
}

/// Decodes the capture with tshark and checks every Geneve packet: the OVN
/// option, a VNI that is a logical switch's tunnel key, and port keys of
/// that switch; both directions and both switches appear.
///
/// A frame tshark does not decode as Geneve (no VNI) is shown in full on
/// standard error. It fails the test when a fastpath also counted a tunnel
/// packet it could not accept, or when there are more than two: a header
/// of ours that tshark cannot read would show up as both.
fn check_capture(pcap: &Path, central: &OvnCentral, fastpaths: [&Fastpath; 2]) {
    let rows = tshark::fields(
        pcap,
        &[],
        &[
            "frame.number",
            "ip.src",
            "geneve.vni",
            "geneve.option.class",
            "geneve.option.type",
            "geneve.option.unknown.data",
            "udp.srcport",
            "eth.type",
        ],
    );
    let (undecoded, rows): (Vec<Vec<String>>, Vec<Vec<String>>) =
        rows.into_iter().partition(|f| f[2].is_empty());
    if !undecoded.is_empty() {
        let frames: Vec<String> = undecoded
            .iter()
            .map(|f| format!("frame.number == {}", f[0]))
            .collect();
        let filter = frames.join(" || ");
        let out = Command::new("tshark")
            .arg("-r")
            .arg(pcap)
            .args(["-V", "-x", "-Y", &filter])
            .output()
            .expect("run tshark");
        let detail = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let malformed: Vec<_> = fastpaths
            .iter()
            .map(|fp| malformed_tunnel_drops(fp))
            .collect();
        eprintln!("frames tshark does not decode as Geneve:\n{detail}");
        assert!(
            undecoded.len() <= 2 && malformed.iter().all(Vec::is_empty),
            "{} frames not decoded as Geneve; malformed tunnel drops {malformed:?}:\n{detail}",
            undecoded.len()
        );
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(|f| f[1..].to_vec()).collect();
    // Tunnel keys of the switches and ports, from the Southbound.
    let key = |table: &str, condition: String| -> u64 {
        let s = central
            .sbctl(&["--bare", "--columns=tunnel_key", "find", table, &condition])
            .expect("sbctl");
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("key of {condition}: {s:?}"))
    };
    let dp_key = |name: &str| key("Datapath_Binding", format!("external_ids:name={name}"));
    let port_key = |name: &str| key("Port_Binding", format!("logical_port={name}"));
    let (sw1, sw2) = (dp_key("sw1"), dp_key("sw2"));
    let mut seen = std::collections::BTreeSet::new();
    let mut packets = 0;
    for f in &rows {
        let line = f.join("|");
        let num = tshark::number;
        packets += 1;
        let vni = num(&f[1]);
        assert_eq!(num(&f[2]), 0x0102, "option class in {line}");
        assert_eq!(num(&f[3]), 0x80, "option type in {line}");
        let (_, ingress, egress) = tshark::ovn_option(&f[4]);
        let (ingress, egress) = (u64::from(ingress), u64::from(egress));
        assert!((32768..=60999).contains(&num(&f[5])), "source port {line}");
        let from_a = f[0] == UNDERLAY_A;
        let flow = if vni == sw1 && from_a {
            // a1 -> b1 on sw1 (the router's traffic to sw1 comes from B).
            assert_eq!(egress, port_key("b1"), "{line}");
            assert_eq!(ingress, port_key("a1"), "{line}");
            "a1->b1"
        } else if vni == sw1 {
            assert_eq!(egress, port_key("a1"), "{line}");
            assert!(
                ingress == port_key("b1") || ingress == port_key("sw1-lr0"),
                "{line}"
            );
            if ingress == port_key("b1") {
                "b1->a1"
            } else {
                "b2->a1 (routed on B)"
            }
        } else if vni == sw2 {
            assert!(from_a, "{line}");
            assert_eq!(egress, port_key("b2"), "{line}");
            assert_eq!(ingress, port_key("sw2-lr0"), "{line}");
            "a1->b2 (routed on A)"
        } else {
            panic!("VNI {vni} is neither switch ({sw1}, {sw2}): {line}");
        };
        seen.insert(flow);
    }
    assert!(packets >= 8, "only {packets} Geneve packets:\n{rows:?}");
    for flow in [
        "a1->b1",
        "b1->a1",
        "a1->b2 (routed on A)",
        "b2->a1 (routed on B)",
    ] {
        assert!(seen.contains(flow), "no {flow} in the capture:\n{rows:?}");
    }
}
