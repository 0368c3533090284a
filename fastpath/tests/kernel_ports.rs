//! Kernel-facing ports: a `net_tap` port (a kernel interface whose other
//! side the fastpath polls) patched to a `net_af_packet` port on one end of a
//! veth pair. The kernel in one namespace pings the kernel in another through
//! the fastpath.

mod common;

use common::Fastpath;
use fastpath_api::{Request, Stats};
use std::process::Command;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sysctl -w SETTING`, inside namespace `ns` unless it is empty.
fn sysctl_in(ns: &str, setting: &str) {
    let out = if ns.is_empty() {
        Command::new("sysctl").args(["-qw", setting]).output()
    } else {
        Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-qw", setting])
            .output()
    }
    .expect("sysctl (procps)");
    assert!(
        out.status.success(),
        "sysctl {setting} in {ns:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces and links made by the test, removed on drop.
struct Net {
    ns: Vec<String>,
    links: Vec<String>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).status();
        }
    }
}

#[test]
fn kernel_namespaces_ping_each_other_through_tap_and_af_packet_ports() {
    let id = std::process::id() % 100_000;
    let (ns_a, ns_b) = (format!("fpa{id}"), format!("fpb{id}"));
    let (veth_a, veth_b, tap) = (format!("fva{id}"), format!("fvb{id}"), format!("fpt{id}"));
    let _net = Net {
        ns: vec![ns_a.clone(), ns_b.clone()],
        links: vec![veth_a.clone()],
    };
    ip(&["netns", "add", &ns_a]);
    ip(&["netns", "add", &ns_b]);
    ip(&[
        "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b,
    ]);
    // No IPv6 chatter (router solicitations, MLD, DAD): a frame the
    // kernel sends before the other side is up would be dropped at a
    // port whose link is still down, and this test counts every drop.
    for ns in [&ns_a, &ns_b] {
        for conf in ["all", "default"] {
            sysctl_in(ns, &format!("net.ipv6.conf.{conf}.disable_ipv6=1"));
        }
    }
    sysctl_in("", &format!("net.ipv6.conf.{veth_a}.disable_ipv6=1"));
    ip(&["link", "set", &veth_b, "netns", &ns_b]);
    ip(&["-n", &ns_b, "addr", "add", "10.77.0.2/24", "dev", &veth_b]);
    ip(&["-n", &ns_b, "link", "set", &veth_b, "up"]);
    ip(&["link", "set", &veth_a, "up"]);

    let fp = Fastpath::start(&[
        "--port".into(),
        format!("t=net_tap0,iface={tap}"),
        "--port".into(),
        format!("k=net_af_packet0,iface={veth_a}"),
        "--worker".into(),
        "1=t,k".into(),
        "--xconnect".into(),
        "t,k".into(),
    ]);
    // The tap's kernel side moves into its own namespace (its file
    // descriptor, which the fastpath polls, keeps working).
    ip(&["link", "set", &tap, "netns", &ns_a]);
    ip(&["-n", &ns_a, "addr", "add", "10.77.0.1/24", "dev", &tap]);
    ip(&["-n", &ns_a, "link", "set", &tap, "up"]);

    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns_a,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            "10.77.0.2",
        ])
        .output()
        .expect("ping (iputils-ping)");
    assert!(
        out.status.success(),
        "ping failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        fp.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 received"));

    let stats: Stats = fp.client().call_as(&Request::Stats).unwrap();
    let (t, k) = (&stats.ports["t"], &stats.ports["k"]);
    // ARP request + 3 echo requests went tap -> veth, and the replies back.
    assert!(t.rx_packets >= 4 && k.tx_packets >= 4, "{stats:?}");
    assert!(k.rx_packets >= 4 && t.tx_packets >= 4, "{stats:?}");
    assert!(stats.drops.is_empty(), "{:?}", stats.drops);
}
