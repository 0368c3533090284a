//! Conntrack, load balancing and QoS through a running fastpath with real
//! TCP/UDP stacks: three kernel network namespaces behind `net_tap` ports
//! (a client and two backends on one switch behind a router, as Kube-OVN
//! lays out a subnet), the real NB + SB + ovn-northd and `ovn-bridge
//! compile` following the Southbound. Checks a ClusterIP (an OVN load
//! balancer on the switch) reached through the gateway, with the answer
//! coming back from the VIP; session affinity; a default-deny policy
//! (Kube-OVN's port-group layout) that drops new connections but lets the
//! answers of allowed ones pass; a QoS rate that holds a UDP flow within
//! ±10% and follows a rate change; and `conntrack list` / `count` /
//! `flush` over the control socket.

mod common;

use common::netns::{ip, run, settle, Central, Net};
use common::Fastpath;
use fastpath_api::{
    ConntrackCount, ConntrackFilter, ConntrackFlushed, ConntrackList, Request, Stats,
};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const VIP: &str = "10.96.0.10";

/// The pods: logical port, MAC, address, namespace suffix, fastpath port.
/// p1 is the client, p2 and p3 the backends of the ClusterIP, p4 the pod
/// under a network policy.
const PODS: [(&str, &str, &str, &str, u16); 4] = [
    ("p1", "50:54:00:00:00:01", "10.0.0.11", "c", 0),
    ("p2", "50:54:00:00:00:02", "10.0.0.12", "a", 1),
    ("p3", "50:54:00:00:00:03", "10.0.0.13", "b", 2),
    ("p4", "50:54:00:00:00:04", "10.0.0.14", "d", 3),
];

/// Connects from namespace `ns` to `addr:port` and returns what the server
/// said (empty when the connection failed). Retries briefly: a server
/// restarts its listener between connections.
fn connect(ns: &str, addr: &str, port: u16, attempts: usize) -> String {
    for _ in 0..attempts {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "nc",
                "-N",
                "-w",
                "2",
                addr,
                &port.to_string(),
            ],
        );
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !said.is_empty() {
            return said;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    String::new()
}

/// UDP from namespace `ns` to `addr` at `offered` for `secs`; the rate in
/// kbit/s of the frames that arrived (1000-byte datagrams: 1042-byte
/// frames, what the policer counts).
fn udp_rate_kbps(server_ns: &str, ns: &str, addr: &str, offered: &str, secs: u32) -> f64 {
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", "5201",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(500));
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "iperf3",
            "-c",
            addr,
            "-p",
            "5201",
            "-u",
            "-b",
            offered,
            "-l",
            "1000",
            "-t",
            &secs.to_string(),
            "--json",
        ],
    );
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 output ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let sum = &v["end"]["sum"];
    let packets = sum["packets"].as_f64().expect("packets");
    let lost = sum["lost_packets"].as_f64().expect("lost_packets");
    let seconds = sum["seconds"].as_f64().expect("seconds");
    (packets - lost) * 1042.0 * 8.0 / seconds / 1000.0
}

/// Drops, lcore cache counters and connections, for failure messages.
fn diagnostics(fp: &Fastpath) -> String {
    let stats: Stats = fp.client().call_as(&Request::Stats).unwrap();
    let list: ConntrackList = fp
        .client()
        .call_as(&Request::ConntrackList {
            filter: ConntrackFilter::default(),
            limit: 50,
        })
        .unwrap();
    let mut s = format!("drops {:?}\nports {:?}\n", stats.drops, stats.ports);
    for e in &list.entries {
        s.push_str(&format!(
            "zone {} {} | {} {} {:?} {:?}\n",
            e.zone, e.original, e.reply, e.state, e.status, e.packets
        ));
    }
    // The path a retransmitted SYN of an unanswered ClusterIP connection
    // takes now.
    if let Some(e) = list
        .entries
        .iter()
        .find(|e| e.state == "SYN_SENT" && e.status.contains(&"dnat".to_string()))
    {
        let sport = e
            .original
            .split(" -> ")
            .next()
            .and_then(|a| a.rsplit(':').next())
            .unwrap_or("40000")
            .to_string();
        if let Ok(t) = fp.client().call_as::<fastpath_api::TraceResult>(&Request::Trace {
            inport: "p1".into(),
            packet: format!(
                "eth.src=50:54:00:00:00:01, eth.dst=00:00:00:00:ff:01, ip4.src=10.0.0.11, ip4.dst={VIP}, tcp.src={sport}, tcp.dst=80"
            ),
        }) {
            s.push_str(&t.text);
        }
    }
    s
}

#[test]
fn cluster_ip_affinity_network_policy_and_qos_through_the_fastpath() {
    let id = std::process::id() % 100_000;
    let ns = |s: &str| format!("fp{s}{id}");
    let mut net = Net::default();
    for p in PODS {
        net.add_ns(&ns(p.3));
    }

    let mut central = Central::start();
    central.nb(&["ls-add", "sw0"]);
    central.nb(&["lr-add", "lr0"]);
    central.nb(&["lrp-add", "lr0", "lrp0", "00:00:00:00:ff:01", "10.0.0.1/24"]);
    central.nb(&["lsp-add", "sw0", "sw0-lr0"]);
    central.nb(&["lsp-set-type", "sw0-lr0", "router"]);
    central.nb(&["lsp-set-addresses", "sw0-lr0", "router"]);
    central.nb(&["lsp-set-options", "sw0-lr0", "router-port=lrp0"]);
    for (p, mac, addr, _, _) in PODS {
        central.nb(&["lsp-add", "sw0", p]);
        central.nb(&["lsp-set-addresses", p, &format!("{mac} {addr}")]);
    }
    central.nb(&[
        "lb-add",
        "lb0",
        &format!("{VIP}:80"),
        "10.0.0.12:8080,10.0.0.13:8080",
        "tcp",
    ]);
    central.nb(&["ls-lb-add", "sw0", "lb0"]);
    // NetworkPolicy on p4 as Kube-OVN writes it: a port group, default
    // deny both ways at low priority, ingress allowed (stateful) from the
    // client. (Not on a backend of the load balancer: for a VIP reached
    // through the router, northd's ACL hints leave two flows of the same
    // priority matching in the backend's egress, which OVS leaves
    // undefined.)
    central.nb(&["pg-add", "pg_d", "p4"]);
    central.nb(&[
        "acl-add",
        "pg_d",
        "to-lport",
        "1000",
        "outport == @pg_d && ip",
        "drop",
    ]);
    central.nb(&[
        "acl-add",
        "pg_d",
        "from-lport",
        "1000",
        "inport == @pg_d && ip",
        "drop",
    ]);
    central.nb(&[
        "acl-add",
        "pg_d",
        "to-lport",
        "1001",
        "outport == @pg_d && ip4.src == 10.0.0.11",
        "allow-related",
    ]);
    central
        .ovn
        .sbctl(&["chassis-add", "hv1", "geneve", "127.0.0.1"])
        .expect("chassis");
    central.sync();
    for (p, ..) in PODS {
        central.ovn.sbctl(&["lsp-bind", p, "hv1"]).expect("bind");
    }
    central.sync();

    let dir = tempfile::Builder::new()
        .prefix("fp-ct-")
        .tempdir()
        .expect("tempdir");
    let tables = dir.path().join("tables");
    let ports: Vec<(&str, u16)> = PODS.iter().map(|p| (p.0, p.4)).collect();
    central.follow(&ports, &tables, dir.path().join("compile.log"));
    let taps: Vec<String> = PODS.iter().map(|p| format!("fpt{}{id}", p.3)).collect();
    let mut args = Vec::new();
    for (i, t) in taps.iter().enumerate() {
        args.push("--port".to_string());
        args.push(format!("{}=net_tap{i},iface={t}", PODS[i].0));
    }
    args.extend(
        [
            "--worker",
            "1=p1,p2,p3,p4",
            "--pipeline",
            "ovn",
            "--tables",
            &tables.display().to_string(),
        ]
        .map(String::from),
    );
    let fp = Fastpath::start_in(dir, &args);
    for (i, (_, mac, addr, suffix, _)) in PODS.iter().enumerate() {
        let (t, n) = (&taps[i], ns(suffix));
        ip(&["link", "set", t, "netns", &n]);
        ip(&["-n", &n, "link", "set", t, "address", mac]);
        ip(&["-n", &n, "addr", "add", &format!("{addr}/24"), "dev", t]);
        ip(&["-n", &n, "link", "set", t, "up"]);
        ip(&["-n", &n, "link", "set", "lo", "up"]);
        ip(&["-n", &n, "route", "add", "default", "via", "10.0.0.1"]);
    }
    // (A tap moved into another namespace reports its link down to the
    // fastpath, which keeps polling its file descriptor.)
    settle(&fp);
    let (client, a, b, d) = (ns("c"), ns("a"), ns("b"), ns("d"));
    net.serve(&a, 8080, "backend-a");
    net.serve(&b, 8080, "backend-b");
    net.serve(&d, 8080, "policed");
    std::thread::sleep(Duration::from_millis(300));

    // ClusterIP: the client reaches a backend through the gateway; the
    // answer comes from the VIP (nc connected to the VIP gets it).
    let first = connect(&client, VIP, 80, 5);
    assert!(
        first.starts_with("backend-"),
        "no answer through the ClusterIP ({first:?}):\n{}",
        diagnostics(&fp)
    );
    // Without affinity, connections spread over both backends.
    let mut seen = BTreeSet::new();
    for _ in 0..16 {
        seen.insert(connect(&client, VIP, 80, 3));
    }
    assert_eq!(
        seen,
        BTreeSet::from(["backend-a".to_string(), "backend-b".to_string()]),
        "both backends serve the VIP\n{}",
        diagnostics(&fp)
    );

    // The connections are in the table, with the VIP as original
    // destination and the backend in the reply.
    let list: ConntrackList = fp
        .client()
        .call_as(&Request::ConntrackList {
            filter: ConntrackFilter {
                addr: Some(VIP.into()),
                ..Default::default()
            },
            limit: 100,
        })
        .expect("conntrack list");
    assert!(
        list.entries
            .iter()
            .any(|e| e.original.contains(&format!("{VIP}:80")) && e.status.contains(&"dnat".into())),
        "{list:?}"
    );
    let ctl = PathBuf::from(env!("CARGO_BIN_EXE_fastpath")).with_file_name("fastpathctl");
    if ctl.exists() {
        let out = Command::new(&ctl)
            .args(["--socket", &fp.socket.display().to_string()])
            .args(["conntrack", "list", "--addr", VIP])
            .output()
            .expect("fastpathctl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("{VIP}:80")),
            "fastpathctl conntrack list:\n{text}"
        );
    }

    // Session affinity: every connection of the client lands on one backend.
    central.nb(&["set", "load_balancer", "lb0", "options:affinity_timeout=60"]);
    central.sync();
    settle(&fp);
    let mut bound = BTreeSet::new();
    for _ in 0..10 {
        bound.insert(connect(&client, VIP, 80, 3));
    }
    assert_eq!(bound.len(), 1, "affinity keeps one backend: {bound:?}");
    assert!(bound.iter().all(|s| s.starts_with("backend-")), "{bound:?}");
    let count: ConntrackCount = fp.client().call_as(&Request::ConntrackCount).unwrap();
    assert!(count.affinity >= 1, "{count:?}");

    // Network policy: backend a cannot open a connection to d, the client
    // can (and d's answers pass the default deny of its egress); d cannot
    // open one to a.
    assert_eq!(
        connect(&a, "10.0.0.14", 8080, 1),
        "",
        "a -> d must be dropped"
    );
    assert_eq!(connect(&client, "10.0.0.14", 8080, 3), "policed");
    assert_eq!(
        connect(&d, "10.0.0.12", 8080, 1),
        "",
        "d -> a must be dropped"
    );
    let stats: Stats = fp.client().call_as(&Request::Stats).unwrap();
    // (An ACL's drop is northd's `/* drop */`: no action at all.)
    let policy_drops: u64 = ["ovn_drop_action", "ovn_implicit_drop"]
        .iter()
        .map(|r| stats.drops.get(*r).copied().unwrap_or(0))
        .sum();
    assert!(policy_drops > 0, "{:?}", stats.drops);

    // Flush: the table empties on request.
    let flushed: ConntrackFlushed = fp
        .client()
        .call_as(&Request::ConntrackFlush {
            filter: ConntrackFilter::default(),
        })
        .unwrap();
    assert!(flushed.flushed > 0);

    // QoS: 2000 kbit/s on the client's port holds an 8 Mbit/s UDP flow
    // within ±10%, then follows a change to 4000 kbit/s.
    central.nb(&[
        "qos-add",
        "sw0",
        "from-lport",
        "100",
        "inport == \"p1\"",
        "rate=2000",
    ]);
    central.sync();
    settle(&fp);
    let r = udp_rate_kbps(&a, &client, "10.0.0.12", "8M", 3);
    println!("QoS 2000 kbit/s: measured {r:.0} kbit/s");
    assert!(
        (1800.0..=2200.0).contains(&r),
        "rate {r:.0} kbit/s for 2000"
    );
    central.nb(&["qos-del", "sw0"]);
    central.nb(&[
        "qos-add",
        "sw0",
        "from-lport",
        "100",
        "inport == \"p1\"",
        "rate=4000",
    ]);
    central.sync();
    settle(&fp);
    let r = udp_rate_kbps(&a, &client, "10.0.0.12", "8M", 3);
    println!("QoS 4000 kbit/s: measured {r:.0} kbit/s");
    assert!(
        (3600.0..=4400.0).contains(&r),
        "rate {r:.0} kbit/s for 4000"
    );
    let stats: Stats = fp.client().call_as(&Request::Stats).unwrap();
    assert!(
        stats.drops.get("qos_meter_drop").copied().unwrap_or(0) > 0,
        "{:?}",
        stats.drops
    );
}
