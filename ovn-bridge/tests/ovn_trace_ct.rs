//! Differential tests of the conntrack, load-balancer, NAT, ACL-log and
//! meter actions: the fastpath's interpreter with `PinnedConntrack` (the
//! conntrack model of `ovn-trace`) against the real `ovn-trace --minimal
//! --ct=... --lb-dst=...` over the same Southbound database. Each packet
//! must leave through the same ports with the same headers (or be dropped
//! on both sides) and log the same number of ACL events. No EAL.

#[path = "common/trace.rs"]
mod trace;

use trace::{ip, mac, Case, Central, L4};

const P1: &str = "50:54:00:00:00:01";
const P2: &str = "50:54:00:00:00:02";
const P3: &str = "50:54:00:00:00:03";
const GW0: &str = "00:00:00:00:ff:01";
const VIP: &str = "10.0.0.100";

/// sw0 (p1, p2, 10.0.0.0/24) and sw1 (p3, 10.0.1.0/24) behind lr0.
fn topology(c: &Central) {
    trace::two_subnets(c);
}

fn bind(c: &Central) {
    c.sb("chassis-add hv1 geneve 127.0.0.1");
    c.sync();
    for p in ["p1", "p2", "p3"] {
        c.sb(&format!("lsp-bind {p} hv1"));
    }
    c.sync();
}

/// A TCP case (a table row reads better with every field positional).
#[allow(clippy::too_many_arguments)]
fn tcp(
    name: &'static str,
    inport: &'static str,
    eth: (&str, &str),
    src: &str,
    dst: &str,
    dport: u16,
    ct: Vec<&'static str>,
    lb_dst: Option<&'static str>,
) -> Case {
    Case {
        name,
        datapath: if inport == "p3" { "sw1" } else { "sw0" },
        inport,
        eth_src: mac(eth.0),
        eth_dst: mac(eth.1),
        src: ip(src),
        dst: ip(dst),
        l4: L4::Tcp {
            src: 40000,
            dst: dport,
        },
        ct,
        lb_dst,
    }
}

/// No conntrack, load-balancer, NAT, meter or log action compiled to an
/// unsupported instruction (northd's DHCP, `sctp_abort` and service-monitor
/// flows are other work).
fn assert_conntrack_supported(stats: &ovn_bridge::compile::CompileStats) {
    let ours = [
        "ct_next",
        "ct_commit",
        "ct_nat",
        "ct_lb",
        "ct_clear",
        "ct_other",
        "meter_queue_log",
        "lb_affinity_hairpin",
        "other",
    ];
    let left: Vec<&String> = stats
        .unsupported
        .keys()
        .filter(|k| ours.contains(&k.as_str()))
        .collect();
    assert!(left.is_empty(), "unsupported: {:?}", stats.unsupported);
}

fn assert_no_differences(diffs: &[String]) {
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

#[test]
fn load_balancer_and_hairpin_match_ovn_trace() {
    let c = Central::start();
    topology(&c);
    c.nb(&format!(
        "lb-add lb0 {VIP}:80 10.0.0.12:8080,10.0.1.13:8080 tcp"
    ));
    c.nb("ls-lb-add sw0 lb0");
    c.nb("lr-lb-add lr0 lb0");
    // Session affinity (chk_lb_aff / commit_lb_aff).
    c.nb("lb-add lb1 10.0.0.101:53 10.0.0.12:5353 udp");
    c.nb("set Load_Balancer lb1 options:affinity_timeout=60");
    c.nb("ls-lb-add sw0 lb1");
    bind(&c);
    let (program, stats) = c.program();
    assert_conntrack_supported(&stats);
    let cases = vec![
        tcp(
            "vip to a backend on the same switch",
            "p1",
            (P1, GW0),
            "10.0.0.11",
            VIP,
            80,
            vec!["new", "new"],
            Some("10.0.0.12:8080"),
        ),
        tcp(
            "vip to a backend across the router",
            "p1",
            (P1, GW0),
            "10.0.0.11",
            VIP,
            80,
            vec!["new", "new"],
            Some("10.0.1.13:8080"),
        ),
        tcp(
            "vip established",
            "p1",
            (P1, GW0),
            "10.0.0.11",
            VIP,
            80,
            vec!["est", "est"],
            Some("10.0.0.12:8080"),
        ),
        tcp(
            "vip from across the router",
            "p3",
            (P3, "00:00:00:00:ff:02"),
            "10.0.1.13",
            VIP,
            80,
            vec!["new", "new", "new"],
            Some("10.0.0.12:8080"),
        ),
        tcp(
            "hairpin: a backend reaches its own vip",
            "p2",
            (P2, GW0),
            "10.0.0.12",
            VIP,
            80,
            vec!["new", "new"],
            Some("10.0.0.12:8080"),
        ),
        tcp(
            "not the vip port",
            "p1",
            (P1, P2),
            "10.0.0.11",
            "10.0.0.12",
            22,
            vec!["new"],
            None,
        ),
        tcp(
            "reply from a backend",
            "p2",
            (P2, P1),
            "10.0.0.12",
            "10.0.0.11",
            40000,
            vec!["est,rpl"],
            None,
        ),
    ];
    let mut cases = cases;
    cases.push(Case {
        l4: L4::Udp {
            src: 40000,
            dst: 53,
        },
        ..tcp(
            "udp vip with session affinity",
            "p1",
            (P1, GW0),
            "10.0.0.11",
            "10.0.0.101",
            53,
            vec!["new", "new"],
            Some("10.0.0.12:5353"),
        )
    });
    // Legacy flows (`ct_lb`, `ct_label` bits) first, then those of a chassis
    // announcing ovn-controller 23.03's features (`ct_lb_mark`, `ct_mark`).
    let (diffs, _) = trace::differences(&c, &program, &cases);
    assert_no_differences(&diffs);
    let (program, stats) = c.announce_features("ct_lb_mark");
    assert_conntrack_supported(&stats);
    let (diffs, verdicts) = trace::differences(&c, &program, &cases);
    assert_no_differences(&diffs);
    // northd 23.03's affinity-learn flow is `commit_lb_aff(...); /* drop */`:
    // ovn-trace and the interpreter both end the first packet there, after
    // the backend was chosen.
    assert!(
        verdicts[7].ct_ops.iter().any(|op| matches!(
            op.kind,
            fastpath::ovn::ct::CtOpKind::LoadBalance(Some(b)) if b.port == 5353
        )),
        "{:?}",
        verdicts[7].ct_ops
    );
    // The load-balanced packets went through conntrack and chose a backend.
    for v in &verdicts[..2] {
        assert!(
            v.ct_ops
                .iter()
                .any(|op| matches!(op.kind, fastpath::ovn::ct::CtOpKind::LoadBalance(Some(_)))),
            "{:?}",
            v.ct_ops
        );
        assert!(v.ct_ops.iter().all(|op| op.zone != 0), "{:?}", v.ct_ops);
    }
    let dst = |v: &fastpath::ovn::Verdict, i: usize| {
        let k = v.emissions[i].vector.key();
        (
            program.ports[v.emissions[i].port as usize].name.clone(),
            k.dst()[12..].to_vec(),
            k.tp_dst(),
        )
    };
    assert_eq!(
        dst(&verdicts[0], 0),
        ("p2".to_string(), vec![10, 0, 0, 12], 8080)
    );
    assert_eq!(
        dst(&verdicts[1], 0),
        ("p3".to_string(), vec![10, 0, 1, 13], 8080)
    );
    // Hairpin: back out of the backend's own port, SNATed to the VIP.
    assert_eq!(
        dst(&verdicts[4], 0),
        ("p2".to_string(), vec![10, 0, 0, 12], 8080)
    );
    assert!(
        verdicts[4].ct_ops.iter().any(|op| matches!(
            op.kind,
            fastpath::ovn::ct::CtOpKind::Commit(fastpath::ovn::ct::CtCommit {
                nat: fastpath::ovn::ct::NatRequest::To(fastpath::ovn::ct::NatDirection::Snat, t),
                ..
            }) if t.addr[12..] == [10, 0, 0, 100]
        )),
        "{:?}",
        verdicts[4].ct_ops
    );
}

#[test]
fn stateful_acls_match_ovn_trace() {
    let c = Central::start();
    topology(&c);
    // Kube-OVN NetworkPolicy layout: the pods of the policy in a port
    // group, default deny, allow-related from an address set, logged.
    trace::network_policy(&c, "p2", &["--log", "--name=np-allow"]);
    bind(&c);
    let (program, stats) = c.program();
    assert_conntrack_supported(&stats);
    let cases = vec![
        tcp(
            "allowed new connection",
            "p1",
            (P1, P2),
            "10.0.0.11",
            "10.0.0.12",
            80,
            vec!["new", "new"],
            None,
        ),
        tcp(
            "allowed established",
            "p1",
            (P1, P2),
            "10.0.0.11",
            "10.0.0.12",
            80,
            vec!["est", "est"],
            None,
        ),
        tcp(
            "denied: routed from outside the set",
            "p3",
            (P3, "00:00:00:00:ff:02"),
            "10.0.1.13",
            "10.0.0.12",
            80,
            vec!["new", "new"],
            None,
        ),
        tcp(
            "reply leaves the policy's pod",
            "p2",
            (P2, P1),
            "10.0.0.12",
            "10.0.0.11",
            40000,
            vec!["est,rpl", "est,rpl"],
            None,
        ),
        tcp(
            "invalid",
            "p1",
            (P1, P2),
            "10.0.0.11",
            "10.0.0.12",
            80,
            vec!["inv", "inv"],
            None,
        ),
        tcp(
            "related (ct_commit_nat)",
            "p1",
            (P1, P2),
            "10.0.0.11",
            "10.0.0.12",
            80,
            vec!["rel", "rel"],
            None,
        ),
        tcp(
            "not affected: to p1",
            "p2",
            (P2, P1),
            "10.0.0.12",
            "10.0.0.11",
            80,
            vec!["new", "new"],
            None,
        ),
    ];
    // Legacy flows (`ct_lb`, `ct_label` bits) first, then those of a chassis
    // announcing ovn-controller 23.03's features (`ct_lb_mark`, `ct_mark`).
    let (diffs, _) = trace::differences(&c, &program, &cases);
    assert_no_differences(&diffs);
    let (program, stats) = c.announce_features("ct_commit_nat");
    assert_conntrack_supported(&stats);
    let (diffs, verdicts) = trace::differences(&c, &program, &cases);
    assert_no_differences(&diffs);
    assert!(
        !verdicts[0].emissions.is_empty(),
        "allowed packet delivered"
    );
    assert_eq!(verdicts[0].logs.len(), 1, "the allow-related ACL logs");
    assert!(
        verdicts[5].ct_ops.iter().any(|op| matches!(
            op.kind,
            fastpath::ovn::ct::CtOpKind::Commit(fastpath::ovn::ct::CtCommit {
                nat: fastpath::ovn::ct::NatRequest::Existing,
                ..
            })
        )),
        "related traffic is committed with its existing NAT: {:?}",
        verdicts[5].ct_ops
    );
    // Ingress ct runs in p1's zone, egress ct in p2's.
    let zones: std::collections::BTreeSet<u16> =
        verdicts[0].ct_ops.iter().map(|o| o.zone).collect();
    assert!(
        zones.len() >= 2 && !zones.contains(&0),
        "{:?}",
        verdicts[0].ct_ops
    );
    assert!(verdicts[2].emissions.is_empty(), "default deny");
    assert!(
        verdicts[0]
            .ct_ops
            .iter()
            .any(|op| matches!(op.kind, fastpath::ovn::ct::CtOpKind::Commit(_))),
        "allow-related commits: {:?}",
        verdicts[0].ct_ops
    );
}

#[test]
fn router_nat_matches_ovn_trace() {
    let c = Central::start();
    topology(&c);
    // A distributed gateway port (ovn-trace cannot follow `ct_snat;` on a
    // gateway router: it treats it as the end of the pipeline).
    c.nb("ls-add ext");
    c.nb("lrp-add lr0 lrp-ext 00:00:00:00:ff:03 172.16.0.1/24");
    c.nb("lrp-set-gateway-chassis lrp-ext hv1");
    c.nb("lsp-add ext ext-lr0");
    c.nb("lsp-set-type ext-lr0 router");
    c.nb("lsp-set-addresses ext-lr0 router");
    c.nb("lsp-set-options ext-lr0 router-port=lrp-ext");
    c.nb("lsp-add ext pext");
    c.nb_args(&["lsp-set-addresses", "pext", "50:54:00:00:00:99 172.16.0.99"]);
    c.nb("lr-nat-add lr0 snat 172.16.0.1 10.0.0.0/24");
    c.nb("lr-nat-add lr0 dnat_and_snat 172.16.0.50 10.0.1.13");
    c.sb("chassis-add hv1 geneve 127.0.0.1");
    c.sync();
    for p in ["p1", "p2", "p3", "pext", "cr-lrp-ext"] {
        c.sb(&format!("lsp-bind {p} hv1"));
    }
    c.sync();
    let (program, stats) = c.program();
    assert_conntrack_supported(&stats);
    let ext = |name, src: &str, dst: &str, ct| Case {
        datapath: "ext",
        ..tcp(
            name,
            "pext",
            ("50:54:00:00:00:99", "00:00:00:00:ff:03"),
            src,
            dst,
            80,
            ct,
            None,
        )
    };
    let cases = vec![
        ext(
            "dnat to the floating ip's pod",
            "172.16.0.99",
            "172.16.0.50",
            vec!["new", "new", "new"],
        ),
        tcp(
            "snat of the floating ip's pod",
            "p3",
            (P3, "00:00:00:00:ff:02"),
            "10.0.1.13",
            "172.16.0.99",
            80,
            vec!["new", "new", "new"],
            None,
        ),
        tcp(
            "snat of the subnet",
            "p1",
            (P1, GW0),
            "10.0.0.11",
            "172.16.0.99",
            80,
            vec!["new", "new", "new"],
            None,
        ),
    ];
    // Legacy flows (`ct_lb`, `ct_label` bits) first, then those of a chassis
    // announcing ovn-controller 23.03's features (`ct_lb_mark`, `ct_mark`).
    let (diffs, _) = trace::differences(&c, &program, &cases);
    assert_no_differences(&diffs);
    let (program, stats) = c.announce_features("ct_mark");
    assert_conntrack_supported(&stats);
    let (diffs, verdicts) = trace::differences(&c, &program, &cases);
    assert_no_differences(&diffs);
    assert!(
        verdicts.iter().all(|v| !v.emissions.is_empty()),
        "{verdicts:?}"
    );
}

#[test]
fn qos_meter_is_recorded_and_forwarding_matches_ovn_trace() {
    let c = Central::start();
    topology(&c);
    c.nb_args(&[
        "qos-add",
        "sw0",
        "from-lport",
        "100",
        "inport == \"p1\"",
        "rate=1000",
        "burst=100",
    ]);
    bind(&c);
    let (program, stats) = c.program();
    assert_conntrack_supported(&stats);
    let cases = vec![
        tcp(
            "metered",
            "p1",
            (P1, P2),
            "10.0.0.11",
            "10.0.0.12",
            80,
            vec![],
            None,
        ),
        tcp(
            "not metered",
            "p2",
            (P2, P1),
            "10.0.0.12",
            "10.0.0.11",
            80,
            vec![],
            None,
        ),
    ];
    let (diffs, verdicts) = trace::differences(&c, &program, &cases);
    assert_no_differences(&diffs);
    assert_eq!(verdicts[0].meters.len(), 1, "{:?}", verdicts[0].meters);
    assert_eq!(
        (verdicts[0].meters[0].rate, verdicts[0].meters[0].burst),
        (1000, 100)
    );
    assert_ne!(verdicts[0].meters[0].lflow, 0);
    assert!(verdicts[1].meters.is_empty());
    assert!(
        !verdicts[0].emissions.is_empty(),
        "a meter never drops by itself"
    );
}

#[test]
fn minimal_parser_reads_conntrack_blocks_and_logs() {
    let text = "# tcp\nct_lb /* default (use --ct to customize) */ {\n    reg0[6] = 0;\n    ct_dnat(ip4.dst=10.0.1.13) {\n        LOG: ACL name=np1, direction=OUT, verdict=allow, severity=info, packet=\"x\";\n        output(\"p3\");\n    };\n};\n";
    let m = trace::parse_minimal(text, Some("10.0.0.12:8080"));
    assert_eq!(m.logs, 1);
    assert_eq!(m.outputs.len(), 1);
    assert_eq!(m.outputs[0].port, "p3");
    assert_eq!(
        m.outputs[0].edits,
        vec![
            "ip4.dst = 10.0.0.12;".to_string(),
            "tp_dst = 8080;".to_string(),
            "reg0[6] = 0;".to_string(),
            "ip4.dst = 10.0.1.13;".to_string()
        ]
    );
}
