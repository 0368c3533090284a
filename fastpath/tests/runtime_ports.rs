//! Run-time ports: a fastpath started with no port at all (pipeline `ovn`,
//! real NB/SB/northd and `ovn-bridge compile` following the Southbound)
//! gets a tap port and a vhost-user port through the control socket; a
//! kernel in a network namespace behind the tap pings its gateway and
//! answers the vhost-user peer; both ports are removed (the devices are
//! gone) and added again; bad requests are refused while everything else
//! keeps working.

mod common;

use common::{receive, send, virtio_port, Fastpath};
use fastpath_api::{AddedPort, LcoreInfo, PortInfo, RemovedPort, Request, RuntimePortKind};
use fastpath_packet::checksum::checksum;
use ovsdb::testing::OvnCentral;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const P1: [u8; 6] = [0x50, 0x54, 0, 0, 0, 1];
const P2: &str = "50:54:00:00:00:02";
const P2_BYTES: [u8; 6] = [0x50, 0x54, 0, 0, 0, 2];

/// OVN central plus `ovn-bridge compile`, killed on drop.
struct Central {
    _ovn: OvnCentral,
    compile: Option<Child>,
}

impl Drop for Central {
    fn drop(&mut self) {
        if let Some(c) = self.compile.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Central {
    /// sw0 with p1 (10.0.0.11, vhost-user) and p2 (10.0.0.12, tap) behind
    /// lr0 (10.0.0.1), both bound to hv1; the tables map p2 to port 0 and
    /// p1 to port 1.
    fn start(tables: &Path, log: PathBuf) -> Central {
        let ovn = OvnCentral::start().expect("NB, SB and ovn-northd");
        let nb = |args: &[&str]| {
            ovn.nbctl(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        };
        nb(&["ls-add", "sw0"]);
        nb(&["lr-add", "lr0"]);
        nb(&["lrp-add", "lr0", "lrp0", "00:00:00:00:ff:01", "10.0.0.1/24"]);
        nb(&["lsp-add", "sw0", "sw0-lr0"]);
        nb(&["lsp-set-type", "sw0-lr0", "router"]);
        nb(&["lsp-set-addresses", "sw0-lr0", "router"]);
        nb(&["lsp-set-options", "sw0-lr0", "router-port=lrp0"]);
        nb(&["lsp-add", "sw0", "p1"]);
        nb(&["lsp-set-addresses", "p1", "50:54:00:00:00:01 10.0.0.11"]);
        nb(&["lsp-add", "sw0", "p2"]);
        nb(&["lsp-set-addresses", "p2", &format!("{P2} 10.0.0.12")]);
        ovn.sbctl(&["chassis-add", "hv1", "geneve", "127.0.0.1"])
            .expect("chassis");
        ovn.sync(Duration::from_secs(30)).expect("northd");
        for p in ["p1", "p2"] {
            ovn.sbctl(&["lsp-bind", p, "hv1"]).expect("bind");
        }
        ovn.sync(Duration::from_secs(30)).expect("northd");
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_fastpath")).with_file_name("ovn-bridge");
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --workspace --bins` first",
            bin.display()
        );
        let compile = Command::new(bin)
            .args(["compile", "--sb", &ovn.sb.remote, "--chassis", "hv1"])
            .arg("--tables")
            .arg(tables)
            .args(["--port", "p2=0", "--port", "p1=1"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("ovn-bridge compile");
        Central {
            _ovn: ovn,
            compile: Some(compile),
        }
    }
}

/// A network namespace, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn link_exists(ns: Option<&str>, name: &str) -> bool {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["link", "show", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Moves the tap into `ns` and gives it p2's MAC and address.
fn plumb_tap(tap: &str, ns: &str) {
    ip(&["link", "set", tap, "netns", ns]);
    ip(&["-n", ns, "link", "set", tap, "address", P2]);
    ip(&["-n", ns, "addr", "add", "10.0.0.12/24", "dev", tap]);
    ip(&["-n", ns, "link", "set", tap, "up"]);
    ip(&["-n", ns, "route", "add", "default", "via", "10.0.0.1"]);
}

/// Pings the gateway from `ns` until a reply comes (the tables may still
/// be on their way).
fn ping_gateway(ns: &str, fp: &Fastpath) {
    let start = Instant::now();
    loop {
        let ok = Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-c", "1", "-W", "1", "10.0.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the namespace behind the tap never reached its gateway:\n{}",
            fp.log()
        );
    }
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// Echo request from p1 (the vhost-user peer) to p2 (the kernel).
fn echo_to_p2(seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x42, 0x42, 0, 0, 9, 8, 7, 6, 5, 4, 3, 2];
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&P2_BYTES);
    f.extend_from_slice(&P1);
    f.extend_from_slice(&[8, 0]);
    f.extend_from_slice(&ipv4([10, 0, 0, 11], [10, 0, 0, 12], 1, &icmp));
    f
}

/// The vhost-user peer pings the kernel behind the tap until an echo reply
/// from 10.0.0.12 comes back (its ARP for 10.0.0.11 is answered by the
/// pipeline, or flooded to the peer, which ignores it).
fn peer_pings_kernel(
    port: &fastpath::dpdk::EthPort,
    pool: &fastpath::dpdk::Mempool,
    fp: &Fastpath,
) {
    let start = Instant::now();
    let mut seq = 0u16;
    loop {
        seq += 1;
        send(port, pool, &echo_to_p2(seq));
        for f in receive(port, 8, Duration::from_millis(500)) {
            if f.len() >= 42
                && f[12..14] == [8, 0]
                && f[23] == 1
                && f[26..30] == [10, 0, 0, 12]
                && f[30..34] == [10, 0, 0, 11]
                && f[34] == 0
            {
                assert_eq!(&f[0..6], &P1, "reply addressed to the peer");
                assert_eq!(&f[6..12], &P2_BYTES, "reply from the tap's MAC");
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no echo reply from the kernel behind the tap:\n{}",
            fp.log()
        );
    }
}

fn ports(fp: &Fastpath) -> Vec<PortInfo> {
    fp.client().call_as(&Request::Ports).expect("ports")
}

fn add(fp: &Fastpath, name: &str, kind: RuntimePortKind, id: u16) -> AddedPort {
    fp.client()
        .call_as(&Request::AddPort {
            name: name.into(),
            kind,
            preferred_id: Some(id),
        })
        .unwrap_or_else(|e| panic!("add {name}: {e}\n{}", fp.log()))
}

fn remove(fp: &Fastpath, name: &str) -> RemovedPort {
    fp.client()
        .call_as(&Request::RemovePort { name: name.into() })
        .unwrap_or_else(|e| panic!("remove {name}: {e}\n{}", fp.log()))
}

fn wait_tables(fp: &Fastpath) {
    let start = Instant::now();
    loop {
        let lcores: Vec<LcoreInfo> = fp.client().call_as(&Request::Lcores).unwrap();
        if lcores.iter().all(|l| l.table_generation > 0) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no tables:\n{}",
            fp.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tap_and_vhost_ports_come_and_go_at_run_time() {
    let dir = tempfile::Builder::new()
        .prefix("fp-rtp-")
        .tempdir()
        .unwrap();
    let tables = dir.path().join("tables");
    let _central = Central::start(&tables, dir.path().join("compile.log"));
    let id = std::process::id() % 100_000;
    let tap = format!("fprt{id}");
    let ns = Netns(format!("fprt{id}"));
    ip(&["netns", "add", &ns.0]);
    let vsock = dir.path().join("p1.sock");
    let fp = Fastpath::start_in(
        dir,
        &[
            "--worker".into(),
            "1".into(),
            "--pipeline".into(),
            "ovn".into(),
            "--tables".into(),
            tables.display().to_string(),
        ],
    );
    assert!(ports(&fp).is_empty(), "started with no port");
    wait_tables(&fp);

    // Bad requests are refused, with a reason.
    let refused = |req: Request, what: &str| {
        let e = fp.client().call(&req).unwrap_err().to_string();
        assert!(e.contains(what), "{req:?}: {e}");
    };
    refused(
        Request::AddPort {
            name: "bad".into(),
            kind: RuntimePortKind::VhostUser {
                socket: "/nonexistent-dir/x/p.sock".into(),
                client: false,
            },
            preferred_id: None,
        },
        "does not exist",
    );
    refused(
        Request::AddPort {
            name: "bad".into(),
            kind: RuntimePortKind::Tap {
                iface: "a/b,c".into(),
            },
            preferred_id: None,
        },
        "not valid",
    );
    refused(
        Request::AddPort {
            name: "bad".into(),
            kind: RuntimePortKind::AfPacket {
                iface: format!("nx{id}"),
            },
            preferred_id: None,
        },
        "cannot probe",
    );
    // An unknown kind does not even decode.
    let mut raw = std::os::unix::net::UnixStream::connect(&fp.socket).unwrap();
    raw.write_all(b"{\"cmd\":\"add-port\",\"name\":\"x\",\"kind\":{\"type\":\"floppy\"}}\n")
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(raw).read_line(&mut line).unwrap();
    assert!(
        line.contains("\"ok\":false") && line.contains("bad request"),
        "{line}"
    );
    assert!(ports(&fp).is_empty(), "nothing was left behind");

    let (_eal, pool) = common::peer_eal();
    for round in 0..2u32 {
        let tap_kind = RuntimePortKind::Tap { iface: tap.clone() };
        let vhost_kind = RuntimePortKind::VhostUser {
            socket: vsock.display().to_string(),
            client: false,
        };
        let a = add(&fp, "p2", tap_kind.clone(), 0);
        assert_eq!((a.port_id, a.created), (0, true), "{a:?}");
        assert!(link_exists(None, &tap), "the tap interface exists");
        let again = add(&fp, "p2", tap_kind.clone(), 5);
        assert_eq!((again.port_id, again.created), (0, false), "idempotent add");
        // The same name as another kind is a conflict.
        let e = fp
            .client()
            .call(&Request::AddPort {
                name: "p2".into(),
                kind: vhost_kind.clone(),
                preferred_id: None,
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("already exists"), "{e}");
        let b = add(&fp, "p1", vhost_kind.clone(), 0);
        assert_eq!(b.port_id, 1, "preferred id taken: the next free one");
        assert!(vsock.exists(), "vhost-user socket created");

        plumb_tap(&tap, &ns.0);
        let peer = virtio_port(round, &vsock, &pool);
        fp.wait_links_up(&["p1"]);

        ping_gateway(&ns.0, &fp);
        peer_pings_kernel(&peer, &pool, &fp);

        let listed = ports(&fp);
        let p1 = listed.iter().find(|p| p.name == "p1").expect("p1 listed");
        let p2 = listed.iter().find(|p| p.name == "p2").expect("p2 listed");
        assert!(p1.runtime && p2.runtime);
        assert_eq!((p2.port_id, p1.port_id), (0, 1));
        assert_eq!(p1.driver, "net_vhost");
        assert!(
            p1.counters.rx_packets > 0 && p1.counters.tx_packets > 0,
            "{p1:?}"
        );
        assert!(
            p2.counters.rx_packets > 0 && p2.counters.tx_packets > 0,
            "{p2:?}"
        );
        let lcores: Vec<LcoreInfo> = fp.client().call_as(&Request::Lcores).unwrap();
        assert!(
            lcores[0].queues.contains(&"p1:0".to_string())
                && lcores[0].queues.contains(&"p2:0".to_string()),
            "{:?}",
            lcores[0].queues
        );

        // Removal: the devices are gone.
        drop(peer);
        assert_eq!(remove(&fp, "p1").port_id, Some(1));
        assert!(!vsock.exists(), "vhost-user socket removed");
        assert_eq!(remove(&fp, "p2").port_id, Some(0));
        assert!(
            !link_exists(Some(&ns.0), &tap),
            "tap gone from the namespace"
        );
        assert!(!link_exists(None, &tap), "tap gone");
        assert_eq!(remove(&fp, "p2").port_id, None, "removing twice is fine");
        assert!(ports(&fp).is_empty());
        let _ = Command::new("ip")
            .args(["-n", &ns.0, "route", "flush", "all"])
            .status();
    }
    let v = fp.client().call(&Request::Ping).unwrap();
    assert_eq!(v["pipeline"], "ovn");
    let mut fp = fp;
    assert!(fp.stop(), "clean exit:\n{}", fp.log());
}

/// Pod taps do not empty the packet buffer pool: the tap driver fills each
/// rx ring with mbufs when the queue is set up, so the ring size decides
/// how many pods a pool holds. With this helper's 4 095-mbuf pool, twelve
/// taps (two workers, so two rx queues each) are added, all forward-ready,
/// and all removed again.
#[test]
fn many_tap_pods_fit_in_the_buffer_pool() {
    let id = std::process::id() % 100_000;
    let fp = Fastpath::start(&[
        "--lcores".into(),
        "0,1".into(),
        "--worker".into(),
        "0".into(),
        "--worker".into(),
        "1".into(),
    ]);
    let taps: Vec<String> = (0..12).map(|i| format!("fpmt{id}x{i}")).collect();
    for (i, tap) in taps.iter().enumerate() {
        let name = format!("pod{i}");
        let added = fp
            .client()
            .call_as::<AddedPort>(&Request::AddPort {
                name: name.clone(),
                kind: RuntimePortKind::Tap { iface: tap.clone() },
                preferred_id: None,
            })
            .unwrap_or_else(|e| panic!("add {name} ({} added before): {e}\n{}", i, fp.log()));
        assert!(added.created, "{added:?}");
        assert!(link_exists(None, tap), "{tap} exists");
    }
    assert_eq!(ports(&fp).len(), taps.len());
    for i in 0..taps.len() {
        assert!(remove(&fp, &format!("pod{i}")).port_id.is_some());
    }
    assert!(ports(&fp).is_empty());
    assert!(!taps.iter().any(|t| link_exists(None, t)), "taps removed");
}
