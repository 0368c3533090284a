//! Differential tests over more topologies: two routers (the Kube-OVN
//! shape: the `ovn-cluster` router, the `join` switch and a gateway router
//! per node, with static and ECMP routes), a switch with a localnet port,
//! a switch with `unknown`-address ports and an FDB row (`get_fdb`,
//! `lookup_fdb`, `put_fdb`),
//! an IPv6 network behind a router (ND, ping6, hop limit, `icmp6_error`),
//! and a router's own addresses hit by TCP (`tcp_reset`), UDP and
//! multicast. Each test starts a real NB, SB and ovn-northd, binds its VIF
//! ports to chassis `hv1`, compiles the Southbound the way the node role
//! does and, for a table of packets, compares the interpreter's verdict
//! with `ovn-trace --minimal` on the same database: output ports, the
//! final headers of forwarded packets, and for generated packets the
//! generating action, the fields ovn-trace assigns and the frame the
//! fastpath builds (parsed back, checksums verified). Any difference
//! fails. No EAL.

#[path = "common/trace.rs"]
mod trace;

use fastpath::ovn::{DropCause, Verdict};
use trace::{ip, ip6, mac, multicast_mac, solicited_node, Central, Net, Probe};

fn assert_no_differences(diffs: &[String]) {
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// The names of the unsupported-action drops of a verdict.
fn unsupported(v: &Verdict) -> Vec<&'static str> {
    v.drops
        .iter()
        .filter_map(|d| match d {
            DropCause::Unsupported(i) => fastpath_tables::ovn::UNSUPPORTED_ACTIONS
                .get(usize::from(*i))
                .copied(),
            _ => None,
        })
        .collect()
}

/// The names of the ports a verdict outputs to, sorted.
fn emitted_ports(program: &fastpath::ovn::Program, v: &Verdict) -> Vec<String> {
    let mut p: Vec<String> = v
        .emissions
        .iter()
        .map(|e| program.ports[e.port as usize].name.clone())
        .collect();
    p.sort();
    p
}

fn bind(c: &Central, ports: &[&str]) {
    c.sb("chassis-add hv1 geneve 127.0.0.1");
    c.sync();
    for p in ports {
        c.sb(&format!("lsp-bind {p} hv1"));
    }
    c.sync();
}

/// Connects logical switch `sw` to router port `lrp` through `lsp`.
fn attach(c: &Central, sw: &str, lsp: &str, lrp: &str) {
    c.nb(&format!("lsp-add {sw} {lsp}"));
    c.nb(&format!("lsp-set-type {lsp} router"));
    c.nb(&format!("lsp-set-addresses {lsp} router"));
    c.nb(&format!("lsp-set-options {lsp} router-port={lrp}"));
}

fn vif(c: &Central, sw: &str, p: &str, m: &str, addrs: &str) {
    c.nb(&format!("lsp-add {sw} {p}"));
    c.nb_args(&["lsp-set-addresses", p, &format!("{m} {addrs}")]);
}

// ---------------------------------------------------------------- routers

const POD1: &str = "50:54:00:00:01:01";
const POD2: &str = "50:54:00:00:01:02";
const EXT1: &str = "50:54:00:00:02:01";
const CLUSTER_GW: &str = "00:00:00:00:10:01";
const CLUSTER_JOIN: &str = "00:00:00:00:10:02";
const NODE1_JOIN: &str = "00:00:00:00:20:01";
const NODE1_EXT: &str = "00:00:00:00:20:02";

/// The Kube-OVN shape: pods on `ovn-default` (10.16.0.0/16) behind the
/// `ovn-cluster` router, which reaches the `join` switch (100.64.0.0/16)
/// and through it two gateway routers; `gw-node1` owns the external
/// switch `ext` (172.18.0.0/24). Static routes: the cluster router's
/// default route to node1, an ECMP route for 192.168.0.0/24 via both
/// nodes; node1 routes the pod subnet back via the cluster router.
fn kube_ovn_routers(c: &Central) {
    c.nb("ls-add ovn-default");
    c.nb("ls-add join");
    c.nb("ls-add ext");
    c.nb("lr-add ovn-cluster");
    c.nb(&format!(
        "lrp-add ovn-cluster ovn-cluster-ovn-default {CLUSTER_GW} 10.16.0.1/16"
    ));
    c.nb(&format!(
        "lrp-add ovn-cluster ovn-cluster-join {CLUSTER_JOIN} 100.64.0.1/16"
    ));
    attach(
        c,
        "ovn-default",
        "ovn-default-ovn-cluster",
        "ovn-cluster-ovn-default",
    );
    attach(c, "join", "join-ovn-cluster", "ovn-cluster-join");
    for (n, join_mac, join_ip) in [
        (1, NODE1_JOIN, "100.64.0.2"),
        (2, "00:00:00:00:30:01", "100.64.0.3"),
    ] {
        c.nb(&format!("lr-add gw-node{n}"));
        c.nb(&format!(
            "set Logical_Router gw-node{n} options:chassis=hv1"
        ));
        c.nb(&format!(
            "lrp-add gw-node{n} gw-node{n}-join {join_mac} {join_ip}/16"
        ));
        attach(
            c,
            "join",
            &format!("join-gw-node{n}"),
            &format!("gw-node{n}-join"),
        );
        c.nb(&format!("lr-route-add gw-node{n} 10.16.0.0/16 100.64.0.1"));
    }
    c.nb(&format!(
        "lrp-add gw-node1 gw-node1-ext {NODE1_EXT} 172.18.0.1/24"
    ));
    attach(c, "ext", "ext-gw-node1", "gw-node1-ext");
    c.nb("ls-add ext2");
    c.nb("lrp-add gw-node2 gw-node2-ext 00:00:00:00:30:02 172.19.0.1/24");
    attach(c, "ext2", "ext2-gw-node2", "gw-node2-ext");
    // Behind each node's external network, 192.168.0.0/24.
    c.nb("lr-route-add gw-node1 192.168.0.0/24 172.18.0.100");
    c.nb("lr-route-add gw-node2 192.168.0.0/24 172.19.0.100");
    c.nb("lr-route-add ovn-cluster 0.0.0.0/0 100.64.0.2");
    c.nb("--ecmp lr-route-add ovn-cluster 192.168.0.0/24 100.64.0.2");
    c.nb("--ecmp lr-route-add ovn-cluster 192.168.0.0/24 100.64.0.3");
    vif(c, "ovn-default", "pod1", POD1, "10.16.0.11");
    vif(c, "ovn-default", "pod2", POD2, "10.16.0.12");
    vif(c, "ext", "ext1", EXT1, "172.18.0.100");
    vif(c, "ext2", "ext2", "50:54:00:00:02:02", "172.19.0.100");
    bind(c, &["pod1", "pod2", "ext1", "ext2"]);
}

#[test]
fn router_to_router_matches_ovn_trace() {
    let c = Central::start();
    kube_ovn_routers(&c);
    let (program, _) = c.program();
    let pod = |name, dst: &str, ttl| Probe {
        name,
        datapath: "ovn-default",
        inport: "pod1",
        eth_src: mac(POD1),
        eth_dst: mac(CLUSTER_GW),
        net: Net::Udp4 {
            src: ip("10.16.0.11"),
            dst: ip(dst),
            ttl,
        },
    };
    let probes = vec![
        pod(
            "pod to the external switch across both routers",
            "172.18.0.100",
            64,
        ),
        Probe {
            name: "external host back to the pod",
            datapath: "ext",
            inport: "ext1",
            eth_src: mac(EXT1),
            eth_dst: mac(NODE1_EXT),
            net: Net::Udp4 {
                src: ip("172.18.0.100"),
                dst: ip("10.16.0.11"),
                ttl: 64,
            },
        },
        Probe {
            name: "ping the gateway router's join address",
            datapath: "ovn-default",
            inport: "pod1",
            eth_src: mac(POD1),
            eth_dst: mac(CLUSTER_GW),
            net: Net::Ping4 {
                src: ip("10.16.0.11"),
                dst: ip("100.64.0.2"),
                ttl: 64,
            },
        },
        Probe {
            name: "ping the gateway router's external address",
            datapath: "ovn-default",
            inport: "pod1",
            eth_src: mac(POD1),
            eth_dst: mac(CLUSTER_GW),
            net: Net::Ping4 {
                src: ip("10.16.0.11"),
                dst: ip("172.18.0.1"),
                ttl: 64,
            },
        },
        pod(
            "default route, then a miss on the gateway router",
            "8.8.8.8",
            64,
        ),
        pod("ttl expires on the second router", "172.18.0.100", 2),
        pod(
            "unknown external host: the gateway router asks",
            "172.18.0.99",
            64,
        ),
        pod("pod to pod stays on the switch", "10.16.0.12", 64),
    ];
    let mut probes = probes;
    probes[7].eth_dst = mac(POD2);
    let (diffs, verdicts) = trace::probe_differences(&c, &program, &probes);
    assert_no_differences(&diffs);
    // The first packet really crossed two routers.
    let e = &verdicts[0].emissions[0];
    assert_eq!(e.vector.key().ttl(), 62);
    assert_eq!(e.vector.key().eth_src(), mac(NODE1_EXT));
    assert_eq!(e.vector.key().eth_dst(), mac(EXT1));
}

#[test]
fn ecmp_route_matches_ovn_trace_with_the_choice_pinned() {
    let c = Central::start();
    kube_ovn_routers(&c);
    let (program, _) = c.program();
    assert!(
        program
            .flows
            .iter()
            .any(|f| program.text(f.actions_text).contains("select(")),
        "northd emits select() for the ECMP route"
    );
    // Many flows to the ECMP prefix: each takes one next hop, the one
    // ovn-trace takes when told to pick the same member (`--select-id`),
    // and both next hops are used.
    let probes: Vec<Probe> = (0..24u8)
        .map(|i| Probe {
            name: "ecmp route",
            datapath: "ovn-default",
            inport: "pod1",
            eth_src: mac(POD1),
            eth_dst: mac(CLUSTER_GW),
            net: Net::Udp4 {
                src: ip("10.16.0.11"),
                dst: std::net::Ipv4Addr::new(192, 168, 0, 7 + i),
                ttl: 64,
            },
        })
        .collect();
    let mut chosen = std::collections::BTreeSet::new();
    for probe in &probes {
        let mut matched = None;
        let mut all = Vec::new();
        for id in ["1", "2"] {
            let arg = format!("--select-id={id}");
            let (diffs, verdicts) = trace::probe_differences_with(
                &c,
                &program,
                std::slice::from_ref(probe),
                &[arg.as_str()],
            );
            assert!(unsupported(&verdicts[0]).is_empty(), "{verdicts:?}");
            if diffs.is_empty() {
                matched = Some((id, verdicts[0].emissions.len()));
            }
            all.extend(diffs);
        }
        let (id, outputs) = matched
            .unwrap_or_else(|| panic!("no select-id makes ovn-trace agree:\n{}", all.join("\n")));
        assert_eq!(outputs, 1);
        chosen.insert(id);
    }
    assert_eq!(chosen.len(), 2, "every flow took one next hop: {chosen:?}");
}

// --------------------------------------------------------------- localnet

const V1: &str = "50:54:00:00:03:01";
const V2: &str = "50:54:00:00:03:02";

/// Switch `provider` with VIFs v1, v2 and a localnet port `ln` on
/// `physnet1` (addresses `unknown`, as Kube-OVN's underlay subnets).
fn localnet_switch(c: &Central) {
    c.nb("ls-add provider");
    vif(c, "provider", "v1", V1, "192.168.50.11");
    vif(c, "provider", "v2", V2, "192.168.50.12");
    c.nb("lsp-add provider ln");
    c.nb("lsp-set-type ln localnet");
    c.nb("lsp-set-addresses ln unknown");
    c.nb("lsp-set-options ln network_name=physnet1");
    bind(c, &["v1", "v2"]);
}

#[test]
fn localnet_port_matches_ovn_trace() {
    let c = Central::start();
    localnet_switch(&c);
    let (program, _) = c.program();
    let v1 = |name, eth_dst: [u8; 6], dst: &str| Probe {
        name,
        datapath: "provider",
        inport: "v1",
        eth_src: mac(V1),
        eth_dst,
        net: Net::Udp4 {
            src: ip("192.168.50.11"),
            dst: ip(dst),
            ttl: 64,
        },
    };
    let probes = vec![
        v1("vif to vif stays local", mac(V2), "192.168.50.12"),
        v1(
            "broadcast reaches the localnet port",
            [0xff; 6],
            "255.255.255.255",
        ),
        v1(
            "unknown mac goes to the localnet port",
            mac("50:54:00:00:03:99"),
            "192.168.50.99",
        ),
        Probe {
            name: "arp for a vif is answered locally",
            datapath: "provider",
            inport: "v1",
            eth_src: mac(V1),
            eth_dst: [0xff; 6],
            net: Net::Arp {
                op: 1,
                sha: mac(V1),
                spa: ip("192.168.50.11"),
                tpa: ip("192.168.50.12"),
            },
        },
        Probe {
            name: "arp for an outside host floods to the localnet port",
            datapath: "provider",
            inport: "v1",
            eth_src: mac(V1),
            eth_dst: [0xff; 6],
            net: Net::Arp {
                op: 1,
                sha: mac(V1),
                spa: ip("192.168.50.11"),
                tpa: ip("192.168.50.1"),
            },
        },
        Probe {
            name: "from the physical network to a vif",
            datapath: "provider",
            inport: "ln",
            eth_src: mac("50:54:00:00:03:77"),
            eth_dst: mac(V2),
            net: Net::Udp4 {
                src: ip("192.168.50.77"),
                dst: ip("192.168.50.12"),
                ttl: 64,
            },
        },
    ];
    let (diffs, verdicts) = trace::probe_differences(&c, &program, &probes);
    assert_no_differences(&diffs);
    let ports = |v: &Verdict| emitted_ports(&program, v);
    assert_eq!(ports(&verdicts[0]), ["v2"]);
    assert_eq!(ports(&verdicts[1]), ["ln", "v2"]);
    assert_eq!(ports(&verdicts[2]), ["ln"]);
}

// -------------------------------------------------------------------- FDB

const F1: &str = "50:54:00:00:07:01";
/// A MAC learned behind `vm1` (an FDB row).
const LEARNED: &str = "50:54:00:00:07:77";

/// Switch `fdbsw`: `f1` with its address, `vm1` and `vm2` with addresses
/// `unknown` (VMs bridging other MACs: northd learns their source MACs with
/// `put_fdb` and forwards to learned MACs with `get_fdb`); the FDB holds
/// `LEARNED` behind `vm1`, as the node writes it after `put_fdb`.
fn fdb_switch(c: &Central) {
    c.nb("ls-add fdbsw");
    vif(c, "fdbsw", "f1", F1, "192.168.60.11");
    for vm in ["vm1", "vm2"] {
        c.nb(&format!("lsp-add fdbsw {vm}"));
        c.nb(&format!("lsp-set-addresses {vm} unknown"));
    }
    bind(c, &["f1", "vm1", "vm2"]);
    let key = |args: &[&str]| -> String {
        c.sbctl(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .trim()
            .to_string()
    };
    let dp = key(&[
        "--bare",
        "--columns=tunnel_key",
        "find",
        "Datapath_Binding",
        "external_ids:name=fdbsw",
    ]);
    let port = key(&[
        "--bare",
        "--columns=tunnel_key",
        "find",
        "Port_Binding",
        "logical_port=vm1",
    ]);
    c.sb(&format!(
        "create FDB mac=\"{LEARNED}\" dp_key={dp} port_key={port}"
    ));
    c.sync();
}

#[test]
fn fdb_lookups_and_learning_match_ovn_trace() {
    let c = Central::start();
    fdb_switch(&c);
    let (program, _) = c.program();
    let probe = |name, inport, eth_src: &str, eth_dst: &str| Probe {
        name,
        datapath: "fdbsw",
        inport,
        eth_src: mac(eth_src),
        eth_dst: mac(eth_dst),
        net: Net::Udp4 {
            src: ip("192.168.60.11"),
            dst: ip("192.168.60.77"),
            ttl: 64,
        },
    };
    let probes = vec![
        probe(
            "get_fdb hit: only the port the MAC is behind",
            "f1",
            F1,
            LEARNED,
        ),
        probe(
            "get_fdb miss: flooded to the unknown ports",
            "f1",
            F1,
            "50:54:00:00:07:99",
        ),
        probe(
            "from the port the source is learned behind: nothing to learn",
            "vm1",
            LEARNED,
            F1,
        ),
        probe(
            "a new source behind vm1 is learned",
            "vm1",
            "50:54:00:00:07:88",
            F1,
        ),
        probe("a learned source seen behind vm2 moves", "vm2", LEARNED, F1),
    ];
    let (diffs, verdicts) = trace::probe_differences(&c, &program, &probes);
    assert_no_differences(&diffs);
    let ports = |v: &Verdict| emitted_ports(&program, v);
    assert_eq!(ports(&verdicts[0]), ["vm1"]);
    assert_eq!(ports(&verdicts[1]), ["vm1", "vm2"]);
    for v in &verdicts[2..] {
        assert_eq!(ports(v), ["f1"]);
    }
    // What put_fdb learned: (port name, MAC, family 0).
    let learned = |v: &Verdict| -> Vec<(String, [u8; 6], u8)> {
        v.learned
            .iter()
            .map(|l| {
                let port = program
                    .port(l.datapath, l.port_key)
                    .map(|p| program.ports[p as usize].name.clone())
                    .unwrap_or_default();
                (port, l.mac, l.family)
            })
            .collect()
    };
    assert_eq!(learned(&verdicts[2]), []);
    assert_eq!(
        learned(&verdicts[3]),
        [("vm1".to_string(), mac("50:54:00:00:07:88"), 0)]
    );
    assert_eq!(
        learned(&verdicts[4]),
        [("vm2".to_string(), mac(LEARNED), 0)]
    );
}

// ------------------------------------------------------------------- IPv6

const Q1: &str = "50:54:00:00:04:01";
const Q2: &str = "50:54:00:00:04:02";
const Q3: &str = "50:54:00:00:04:03";
const R0: &str = "00:00:00:00:40:01";
const R1: &str = "00:00:00:00:40:02";

/// Dual-stack sw0 (q1, q2: 10.1.0.0/24, fd00::/64) and sw1 (q3:
/// 10.1.1.0/24, fd01::/64) behind lr6.
fn dual_stack(c: &Central) {
    c.nb("ls-add sw0");
    c.nb("ls-add sw1");
    c.nb("lr-add lr6");
    c.nb(&format!("lrp-add lr6 lr6-sw0 {R0} 10.1.0.1/24 fd00::1/64"));
    c.nb(&format!("lrp-add lr6 lr6-sw1 {R1} 10.1.1.1/24 fd01::1/64"));
    attach(c, "sw0", "sw0-lr6", "lr6-sw0");
    attach(c, "sw1", "sw1-lr6", "lr6-sw1");
    vif(c, "sw0", "q1", Q1, "10.1.0.11 fd00::11");
    vif(c, "sw0", "q2", Q2, "10.1.0.12 fd00::12");
    vif(c, "sw1", "q3", Q3, "10.1.1.13 fd01::13");
    bind(c, &["q1", "q2", "q3"]);
}

#[test]
fn ipv6_behind_a_router_matches_ovn_trace() {
    let c = Central::start();
    dual_stack(&c);
    let (program, _) = c.program();
    let q1 = |name, eth_dst: [u8; 6], net| Probe {
        name,
        datapath: "sw0",
        inport: "q1",
        eth_src: mac(Q1),
        eth_dst,
        net,
    };
    let src = ip6("fd00::11");
    let probes = vec![
        q1(
            "neighbour solicitation for a neighbour",
            multicast_mac(&solicited_node(&ip6("fd00::12"))),
            Net::NdNs {
                src,
                target: ip6("fd00::12"),
                sll: mac(Q1),
            },
        ),
        q1(
            "ping6 the router",
            mac(R0),
            Net::Ping6 {
                src,
                dst: ip6("fd00::1"),
                hlim: 64,
            },
        ),
        q1(
            "ping6 the far router port",
            mac(R0),
            Net::Ping6 {
                src,
                dst: ip6("fd01::1"),
                hlim: 64,
            },
        ),
        q1(
            "routed with the hop limit decremented",
            mac(R0),
            Net::Udp6 {
                src,
                dst: ip6("fd01::13"),
                hlim: 64,
            },
        ),
        q1(
            "same switch",
            mac(Q2),
            Net::Udp6 {
                src,
                dst: ip6("fd00::12"),
                hlim: 64,
            },
        ),
        q1(
            "unknown neighbour: the router solicits",
            mac(R0),
            Net::Udp6 {
                src,
                dst: ip6("fd01::99"),
                hlim: 64,
            },
        ),
        q1(
            "no ipv6 route",
            mac(R0),
            Net::Udp6 {
                src,
                dst: ip6("fd99::1"),
                hlim: 64,
            },
        ),
        Probe {
            name: "back from the far switch",
            datapath: "sw1",
            inport: "q3",
            eth_src: mac(Q3),
            eth_dst: mac(R1),
            net: Net::Udp6 {
                src: ip6("fd01::13"),
                dst: ip6("fd00::12"),
                hlim: 9,
            },
        },
    ];
    let (diffs, verdicts) = trace::probe_differences(&c, &program, &probes);
    assert_no_differences(&diffs);
    let na = &verdicts[0].emissions[0];
    assert_eq!(na.generated, Some(fastpath::ovn::Generated::NdNa));
    assert_eq!(na.vector.key().tha(), mac(Q2));
    let ns = &verdicts[5].emissions[0];
    assert_eq!(ns.generated, Some(fastpath::ovn::Generated::NdNs));
    assert_eq!(
        ns.vector.key().dst(),
        solicited_node(&ip6("fd01::99")).octets()
    );
}

/// ovn-trace 23.03 aborts on `nd_na_router` (it reads the action as an
/// `nd_na`: an assertion in `ovnact_get_ND_NA`), so while it does, the
/// advertisement is checked against what the Southbound flow says; once
/// it traces, it is compared like every other probe.
#[test]
fn ipv6_router_solicitation_is_answered_by_nd_na_router() {
    let c = Central::start();
    dual_stack(&c);
    let (program, _) = c.program();
    let target = ip6("fd00::1");
    let probe = Probe {
        name: "neighbour solicitation for the router",
        datapath: "sw0",
        inport: "q1",
        eth_src: mac(Q1),
        eth_dst: multicast_mac(&solicited_node(&target)),
        net: Net::NdNs {
            src: ip6("fd00::11"),
            target,
            sll: mac(Q1),
        },
    };
    match c.try_trace(probe.datapath, &probe.microflow()) {
        Ok(_) => {
            let (diffs, _) = trace::probe_differences(&c, &program, std::slice::from_ref(&probe));
            assert_no_differences(&diffs);
        }
        Err(e) => assert!(e.contains("OVNACT_ND_NA"), "ovn-trace failed: {e}"),
    }
    let frame = probe.frame();
    let (key, _) = fastpath_packet::extract(&frame, 0).expect("probe parses");
    let inport = program.port_by_name("q1").expect("q1");
    let mut interp = fastpath::ovn::Interpreter::new();
    let v = interp
        .run(&program, inport, &key, frame.len() as u32)
        .clone();
    assert_eq!(v.emissions.len(), 1, "{v:?}");
    let e = &v.emissions[0];
    assert_eq!(program.ports[e.port as usize].name, "q1");
    assert_eq!(e.generated, Some(fastpath::ovn::Generated::NdNaRouter));
    // The flow: `nd_na_router { eth.src = R0; ip6.src = fd00::1;
    // nd.target = fd00::1; nd.tll = R0; outport = inport;
    // flags.loopback = 1; output; }`, replying to the solicitor.
    let k = e.vector.key();
    assert_eq!(k.eth_src(), mac(R0));
    assert_eq!(k.eth_dst(), mac(Q1));
    assert_eq!(k.src(), target.octets());
    assert_eq!(k.dst(), ip6("fd00::11").octets());
    assert_eq!(k.nd_target_octets(), target.octets());
    assert_eq!(k.tha(), mac(R0));
    assert_eq!(k.icmp_type(), 136);
    let diffs = trace::check_generated_frame(
        probe.name,
        "q1",
        fastpath::ovn::Generated::NdNaRouter,
        &e.vector,
        &frame,
    );
    assert_no_differences(&diffs);
}

#[test]
fn ipv6_hop_limit_expiry_matches_ovn_trace() {
    let c = Central::start();
    dual_stack(&c);
    let (program, _) = c.program();
    let probe = Probe {
        name: "hop limit expiry",
        datapath: "sw0",
        inport: "q1",
        eth_src: mac(Q1),
        eth_dst: mac(R0),
        net: Net::Udp6 {
            src: ip6("fd00::11"),
            dst: ip6("fd01::13"),
            hlim: 1,
        },
    };
    let (diffs, verdicts) = trace::probe_differences(&c, &program, &[probe]);
    assert_no_differences(&diffs);
    assert_eq!(verdicts[0].emissions.len(), 1, "{:?}", verdicts[0]);
    let e = &verdicts[0].emissions[0];
    assert_eq!(program.ports[e.port as usize].name, "q1");
    assert_eq!(e.vector.key().icmp_type(), 3);
}

// ------------------------------------------- router addresses, multicast

#[test]
fn tcp_udp_and_multicast_to_a_router_match_ovn_trace() {
    let c = Central::start();
    dual_stack(&c);
    let (program, _) = c.program();
    let q1 = |name, eth_dst: [u8; 6], net| Probe {
        name,
        datapath: "sw0",
        inport: "q1",
        eth_src: mac(Q1),
        eth_dst,
        net,
    };
    let probes = vec![
        q1(
            "tcp to the router: reset",
            mac(R0),
            Net::Tcp4 {
                src: ip("10.1.0.11"),
                dst: ip("10.1.0.1"),
                ttl: 64,
                dport: 80,
            },
        ),
        q1(
            "udp to the router: port unreachable",
            mac(R0),
            Net::Udp4 {
                src: ip("10.1.0.11"),
                dst: ip("10.1.0.1"),
                ttl: 64,
            },
        ),
        q1(
            "tcp6 to the router: reset",
            mac(R0),
            Net::Tcp6 {
                src: ip6("fd00::11"),
                dst: ip6("fd00::1"),
                hlim: 64,
                dport: 80,
            },
        ),
        q1(
            "udp6 to the router: port unreachable",
            mac(R0),
            Net::Udp6 {
                src: ip6("fd00::11"),
                dst: ip6("fd00::1"),
                hlim: 64,
            },
        ),
        q1(
            "ipv4 multicast floods the switch",
            [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb],
            Net::Udp4 {
                src: ip("10.1.0.11"),
                dst: ip("224.0.0.251"),
                ttl: 1,
            },
        ),
        q1(
            "ipv6 multicast floods the switch",
            [0x33, 0x33, 0, 0, 0, 0xfb],
            Net::Udp6 {
                src: ip6("fd00::11"),
                dst: ip6("ff02::fb"),
                hlim: 1,
            },
        ),
    ];
    let (diffs, verdicts) = trace::probe_differences(&c, &program, &probes);
    assert_no_differences(&diffs);
    let rst = &verdicts[0].emissions[0];
    assert_eq!(rst.generated, Some(fastpath::ovn::Generated::TcpReset));
    let rst6 = &verdicts[2].emissions[0];
    assert_eq!(rst6.generated, Some(fastpath::ovn::Generated::TcpReset));
}

// ------------------------------------------------------------ gateway MTU

/// A router port with `options:gateway_mtu`: northd checks the length of
/// packets routed out of it (`check_pkt_larger`) and answers an oversized
/// one with `icmp4_error { }` (fragmentation needed) or `icmp6_error { }`
/// (packet too big) carrying the MTU (`icmp4.frag_mtu`/`icmp6.frag_mtu`).
/// ovn-trace has no packet length (its `check_pkt_larger` leaves the
/// register as it was), so the oversized probes enter at the router with
/// the register bit pinned in the microflow, and the fastpath gets the
/// real 1 514-byte frame; both must then agree on the whole error. The
/// same frames from the pod's switch and frames that fit are checked too.
#[test]
fn gateway_mtu_answers_oversized_packets_with_icmp_errors() {
    let c = Central::start();
    dual_stack(&c);
    c.nb("set logical_router_port lr6-sw1 options:gateway_mtu=1400");
    c.sync();
    let (program, stats) = c.program();
    // Every flow northd writes for the gateway MTU compiles (`dhcp`,
    // `sctp_abort` and `vport_svc` stay unsupported, unrelated).
    assert!(
        !["icmp6_error", "other"]
            .iter()
            .any(|a| stats.unsupported.contains_key(*a)),
        "unsupported: {:?}",
        stats.unsupported
    );
    let v4 = Net::Udp4 {
        src: ip("10.1.0.11"),
        dst: ip("10.1.1.13"),
        ttl: 64,
    };
    let v6 = Net::Udp6 {
        src: ip6("fd00::11"),
        dst: ip6("fd01::13"),
        hlim: 64,
    };
    let at_router = |name, net| Probe {
        name,
        datapath: "lr6",
        inport: "lr6-sw0",
        eth_src: mac(Q1),
        eth_dst: mac(R0),
        net,
    };
    // 1 500-byte IP packets (1 514-byte frames): larger than 1 400.
    let payload = |p: &Probe| match p.net {
        Net::Udp6 { .. } => 1452,
        _ => 1472,
    };
    let oversized = [
        at_router("IPv4 larger than the gateway MTU", v4),
        at_router("IPv6 larger than the gateway MTU", v6),
    ];
    // `REGBIT_PKT_LARGER` of northd 23.03.
    let (diffs, verdicts) = trace::probe_differences_framed(&c, &program, &oversized, &[], |p| {
        (
            format!("{} && reg9[1] == 1", p.microflow()),
            p.frame_with_udp_payload(payload(p)),
        )
    });
    assert_no_differences(&diffs);
    let from_q1 = |name, net| Probe {
        name,
        datapath: "sw0",
        inport: "q1",
        eth_src: mac(Q1),
        eth_dst: mac(R0),
        net,
    };
    let mut interp = fastpath::ovn::Interpreter::new();
    for (i, (kind, icmp)) in [
        (fastpath::ovn::Generated::Icmp4Error, (3, 4)),
        (fastpath::ovn::Generated::Icmp6Error, (2, 0)),
    ]
    .into_iter()
    .enumerate()
    {
        let name = oversized[i].name;
        assert_eq!(verdicts[i].emissions.len(), 1, "{name}: {:?}", verdicts[i]);
        let e = &verdicts[i].emissions[0];
        assert_eq!(program.ports[e.port as usize].name, "q1", "{name}");
        assert_eq!(e.generated, Some(kind), "{name}");
        let k = e.vector.key();
        assert_eq!((k.icmp_type(), k.icmp_code()), icmp, "{name}");
        assert_eq!(
            e.vector.field(fastpath_tables::ovn::vector::FRAG_MTU),
            1400u16.to_be_bytes(),
            "{name}"
        );
        // From the pod's switch, the same frame gets the same error; one
        // byte under the limit (1 400 bytes of IP) it is routed.
        let probe = from_q1(name, oversized[i].net);
        let frame = probe.frame_with_udp_payload(payload(&probe));
        let (key, _) = fastpath_packet::extract(&frame, 0).expect("probe parses");
        let q1 = program.port_by_name("q1").expect("q1");
        let v = interp.run(&program, q1, &key, frame.len() as u32).clone();
        assert_eq!(v.emissions.len(), 1, "{name} from q1: {v:?}");
        assert_eq!(v.emissions[0].generated, Some(kind), "{name} from q1");
        assert_eq!(v.emissions[0].vector, e.vector, "{name} from q1");
        let v = interp.run(&program, q1, &key, 1400 + 14).clone();
        assert_eq!(emitted_ports(&program, &v), ["q3"], "{name}, 1 400 bytes");
        assert_eq!(v.emissions[0].generated, None, "{name}, 1 400 bytes");
    }
    // Packets that fit are routed as ovn-trace routes them.
    let fitting = [
        from_q1("IPv4 within the gateway MTU", v4),
        from_q1("IPv6 within the gateway MTU", v6),
    ];
    let (diffs, verdicts) = trace::probe_differences(&c, &program, &fitting);
    assert_no_differences(&diffs);
    for v in &verdicts {
        assert_eq!(emitted_ports(&program, v), ["q3"], "{v:?}");
    }
}

// -------------------------------------------------------------- megaflows

/// A pod for the megaflow test: name, MAC, its router's MAC, addresses.
struct Pod {
    name: &'static str,
    mac: &'static str,
    gateway: &'static str,
    ips: &'static [&'static str],
}

/// Megaflows keep a stateless verdict under the mask of the key bits it
/// depended on. For several topologies (the Kube-OVN routers with static
/// and ECMP routes, a dual-stack router with a gateway MTU, a localnet
/// switch, a switch with `unknown` ports and an FDB row), thousands of
/// packets between every pair of pods and to unknown places, with
/// random ports, TTLs, protocols, spoofed sources and unknown MACs, get
/// exactly the decision of an lcore without megaflows: the same outputs
/// with the same rewrites, the same drop, the same generated packets. Many
/// of them must come from megaflows for the test to count.
#[test]
fn megaflows_decide_as_the_interpreter_does() {
    use fastpath::ovn::lcore::OvnLcore;
    use fastpath::stats::CacheCounters;
    use std::sync::Arc;
    let kube: &[Pod] = &[
        Pod {
            name: "pod1",
            mac: POD1,
            gateway: CLUSTER_GW,
            ips: &["10.16.0.11"],
        },
        Pod {
            name: "pod2",
            mac: POD2,
            gateway: CLUSTER_GW,
            ips: &["10.16.0.12"],
        },
        Pod {
            name: "ext1",
            mac: EXT1,
            gateway: NODE1_EXT,
            ips: &["172.18.0.100"],
        },
        Pod {
            name: "ext2",
            mac: "50:54:00:00:02:02",
            gateway: "00:00:00:00:30:02",
            ips: &["172.19.0.100"],
        },
    ];
    let dual: &[Pod] = &[
        Pod {
            name: "q1",
            mac: Q1,
            gateway: R0,
            ips: &["10.1.0.11", "fd00::11"],
        },
        Pod {
            name: "q2",
            mac: Q2,
            gateway: R0,
            ips: &["10.1.0.12", "fd00::12"],
        },
        Pod {
            name: "q3",
            mac: Q3,
            gateway: R1,
            ips: &["10.1.1.13", "fd01::13"],
        },
    ];
    let local: &[Pod] = &[
        Pod {
            name: "v1",
            mac: V1,
            gateway: V2,
            ips: &["192.168.50.11"],
        },
        Pod {
            name: "v2",
            mac: V2,
            gateway: V1,
            ips: &["192.168.50.12"],
        },
    ];
    let fdb: &[Pod] = &[
        Pod {
            name: "f1",
            mac: F1,
            gateway: F1,
            ips: &["192.168.60.11"],
        },
        Pod {
            name: "vm1",
            mac: "50:54:00:00:06:21",
            gateway: F1,
            ips: &["192.168.60.21"],
        },
        Pod {
            name: "vm2",
            mac: "50:54:00:00:06:22",
            gateway: F1,
            ips: &["192.168.60.22"],
        },
    ];
    let gateway_mtu = |c: &Central| {
        dual_stack(c);
        c.nb("set logical_router_port lr6-sw1 options:gateway_mtu=1400");
    };
    type Topology<'a> = (&'a str, &'a dyn Fn(&Central), &'a [Pod]);
    let topologies: [Topology; 4] = [
        ("kube-ovn routers", &kube_ovn_routers, kube),
        ("dual stack with a gateway MTU", &gateway_mtu, dual),
        ("localnet", &localnet_switch, local),
        ("fdb", &fdb_switch, fdb),
    ];
    let mut next = trace::xorshift(0x6d65_6761_666c_6f77);
    for (topology, build, pods) in topologies {
        let c = Central::start();
        build(&c);
        c.sync();
        let names: Vec<&str> = pods.iter().map(|p| p.name).collect();
        let (program, _) = c.program_mapped(&names);
        let program = Arc::new(program);
        let learned = Arc::new(crossbeam::queue::ArrayQueue::new(1024));
        let mut mega = OvnLcore::new(1 << 16, learned.clone());
        mega.set_megaflows(4096);
        mega.set_program(Some(program.clone()));
        // Megaflows too, but only one verdict they serve in three enters
        // the flow cache: the others are made in the scratch entry.
        let mut sparse = OvnLcore::new(1 << 16, learned.clone());
        sparse.set_megaflows(4096);
        sparse.set_insert_one_in(3);
        sparse.set_program(Some(program.clone()));
        let mut plain = OvnLcore::new(1 << 16, learned);
        plain.set_program(Some(program.clone()));
        let (cm, cp, cs) = (
            CacheCounters::default(),
            CacheCounters::default(),
            CacheCounters::default(),
        );
        let mut compared = 0;
        for round in 0..6_000u32 {
            let src = &pods[next() as usize % pods.len()];
            let dst = &pods[next() as usize % pods.len()];
            let v6 = src.ips.len() > 1 && dst.ips.len() > 1 && next().is_multiple_of(2);
            let pick = |p: &Pod| p.ips[usize::from(v6 && p.ips.len() > 1)];
            let eth_dst = match next() % 8 {
                0 => "ff:ff:ff:ff:ff:ff",
                1 => "50:54:00:00:99:99",
                2..=4 => dst.mac,
                _ => src.gateway,
            };
            let eth_src = if next().is_multiple_of(16) {
                "50:54:00:00:98:98"
            } else {
                src.mac
            };
            let dst_ip = match next() % 6 {
                0 => {
                    if v6 {
                        "fd00::77"
                    } else {
                        "10.16.0.77"
                    }
                }
                1 => {
                    if v6 {
                        "fd01::1"
                    } else {
                        "192.168.0.5"
                    }
                }
                _ => pick(dst),
            };
            let ttl = match next() % 8 {
                0 => 1,
                1 => 2,
                _ => 64,
            };
            let probe = Probe {
                name: "megaflow",
                datapath: "",
                inport: src.name,
                eth_src: mac(eth_src),
                eth_dst: mac(eth_dst),
                net: match (v6, next() % 3) {
                    (false, 0) => Net::Tcp4 {
                        src: ip(pick(src)),
                        dst: ip(dst_ip),
                        ttl,
                        dport: 80,
                    },
                    (false, 1) => Net::Ping4 {
                        src: ip(pick(src)),
                        dst: ip(dst_ip),
                        ttl,
                    },
                    (false, _) => Net::Udp4 {
                        src: ip(pick(src)),
                        dst: ip(dst_ip),
                        ttl,
                    },
                    (true, 0) => Net::Tcp6 {
                        src: ip6(pick(src)),
                        dst: ip6(dst_ip),
                        hlim: ttl,
                        dport: 80,
                    },
                    (true, 1) => Net::Ping6 {
                        src: ip6(pick(src)),
                        dst: ip6(dst_ip),
                        hlim: ttl,
                    },
                    (true, _) => Net::Udp6 {
                        src: ip6(pick(src)),
                        dst: ip6(dst_ip),
                        hlim: ttl,
                    },
                },
            };
            let len = if next().is_multiple_of(8) { 1500 } else { 100 };
            let frame = probe.frame_with_udp_payload(len - 62);
            let in_port = names.iter().position(|n| *n == src.name).unwrap() as u16;
            let Ok((mut key, _)) = fastpath_packet::extract(&frame, in_port) else {
                continue;
            };
            if key.has_l4() && key.ip_proto() != 1 && key.ip_proto() != 58 {
                key.set_tp_src(1024 + (next() % 60_000) as u16);
                key.set_tp_dst([53, 80, 443, 8080][next() as usize % 4]);
            }
            let pkt_len = frame.len() as u32;
            let a = mega.decide(&key, pkt_len, u64::from(round), &cm).map(|d| {
                (
                    d.entry.outputs.clone(),
                    d.entry.drop,
                    d.entry.meters.clone(),
                    format!("{:?}", d.generated),
                )
            });
            let b = plain.decide(&key, pkt_len, u64::from(round), &cp).map(|d| {
                (
                    d.entry.outputs.clone(),
                    d.entry.drop,
                    d.entry.meters.clone(),
                    format!("{:?}", d.generated),
                )
            });
            let c = sparse
                .decide(&key, pkt_len, u64::from(round), &cs)
                .map(|d| {
                    (
                        d.entry.outputs.clone(),
                        d.entry.drop,
                        d.entry.meters.clone(),
                        format!("{:?}", d.generated),
                    )
                });
            assert_eq!(
                a,
                b,
                "{topology}: {}",
                fastpath::ovn::trace::describe_key(&key)
            );
            assert_eq!(
                c,
                b,
                "{topology}, one in three cached: {}",
                fastpath::ovn::trace::describe_key(&key)
            );
            compared += 1;
        }
        let served = cm.megaflow_hits.get();
        eprintln!(
            "{topology}: {compared} packets, {served} served by {} megaflows, {} interpreter runs",
            mega.megaflows(),
            cm.misses.get() - served
        );
        assert!(compared > 5_000, "{topology}: {compared}");
        assert!(served > 1_000, "{topology}: only {served} megaflow hits");
        // Every verdict the megaflows served became an entry of `mega`'s
        // cache, one in three (about) of `sparse`'s.
        let (all, some) = (mega.cache.len() as f64, sparse.cache.len() as f64);
        let expected = all - served as f64 * 2.0 / 3.0;
        eprintln!("{topology}: {all} cache entries, {some} with one in three cached");
        assert!(
            (some - expected).abs() < served as f64 / 10.0,
            "{topology}: {some} entries, about {expected} expected"
        );
    }
}
