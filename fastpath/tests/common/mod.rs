//! Shared helpers of the integration tests: start a real fastpath process,
//! and act as its DPDK peer (virtio-user ports in this test process, as a
//! DPDK pod would attach). Each test runs in its own process (cargo-nextest),
//! since the EAL can be initialised once per process.
#![allow(dead_code)]

use fastpath::dpdk::{Eal, EthPort, Mbuf, Mempool, MempoolConfig, PortConfig, RxBurst, TxBuffer};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running fastpath, stopped with SIGTERM on drop.
pub struct Fastpath {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Fastpath {
    /// Starts the fastpath binary with `extra` arguments plus a control
    /// socket, the idle back-off, and EAL options for a test peer next to it.
    pub fn start(extra: &[String]) -> Fastpath {
        let dir = tempfile::Builder::new()
            .prefix("fp-test-")
            .tempdir()
            .expect("tempdir");
        Self::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[String]) -> Fastpath {
        Self::start_with(dir, extra, true)
    }

    /// [`Fastpath::start`] without the idle back-off: the worker polls
    /// flat out, as in production.
    pub fn start_busy_polling(extra: &[String]) -> Fastpath {
        let dir = tempfile::Builder::new()
            .prefix("fp-test-")
            .tempdir()
            .expect("tempdir");
        Self::start_with(dir, extra, false)
    }

    fn start_with(dir: tempfile::TempDir, extra: &[String], backoff: bool) -> Fastpath {
        // DPDK 22.11's af_packet PMD names its PACKET_FANOUT group
        // (pid ^ ifindex) & 0xffff, and the kernel refuses a second group
        // of the same id on another device: two processes started with
        // consecutive pids on the two ends of a veth pair (consecutive
        // ifindexes) collide. Another start has another pid.
        let mut fp = Self::spawn_in(dir, extra, backoff);
        for _ in 0..3 {
            match fp.wait_ready() {
                Ok(()) => return fp,
                Err(log) if log.contains("could not set PACKET_FANOUT") => {
                    eprintln!("fastpath start: af_packet fanout group taken; starting again");
                    let dir = fp.dir_for_restart();
                    fp = Self::spawn_in(dir, extra, backoff);
                }
                Err(log) => panic!("fastpath exited early:\n{log}"),
            }
        }
        match fp.wait_ready() {
            Ok(()) => fp,
            Err(log) => panic!("fastpath exited early:\n{log}"),
        }
    }

    /// The directory of a fastpath that exited, for a new start in it.
    fn dir_for_restart(mut self) -> tempfile::TempDir {
        self.child = None;
        let dir = tempfile::Builder::new()
            .prefix("fp-test-")
            .tempdir()
            .expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    fn spawn_in(dir: tempfile::TempDir, extra: &[String], backoff: bool) -> Fastpath {
        let socket = dir.path().join("control.sock");
        // (Left by a start that failed.)
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::File::create(dir.path().join("fastpath.log")).expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fastpath"));
        if !extra.iter().any(|a| a == "--lcores") {
            cmd.args(["--lcores", "1"]);
        }
        let child = cmd
            .args(["--in-memory", "--no-pci"])
            .args(backoff.then_some("--idle-backoff"))
            .args(["--file-prefix", &format!("fpt-{}", std::process::id())])
            .args(["--mbufs", "4095", "--data-room", "10240"])
            .args(["--socket", &socket.display().to_string()])
            .arg("--eal-arg=-m")
            .arg("--eal-arg=256")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn fastpath");
        Fastpath {
            child: Some(child),
            dir,
            socket,
        }
    }

    /// Waits until the control socket answers; the log if the process
    /// exited first.
    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Ok(mut c) = fastpath_api::Client::connect(&self.socket.display().to_string()) {
                if c.call(&fastpath_api::Request::Ping).is_ok() {
                    return Ok(());
                }
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("({st}) {}", self.log()));
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "fastpath not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fastpath.log")).unwrap_or_default()
    }

    /// Waits until the fastpath reports every port in `names` with its link
    /// up (for vhost-user: the peer's rings are enabled), so no frame is sent
    /// into a port whose other side cannot take it yet.
    pub fn wait_links_up(&self, names: &[&str]) {
        let start = Instant::now();
        loop {
            let ports: Vec<fastpath_api::PortInfo> = self
                .client()
                .call_as(&fastpath_api::Request::Ports)
                .expect("ports");
            if names
                .iter()
                .all(|n| ports.iter().any(|p| p.name == *n && p.link_up))
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "links {names:?} not up: {ports:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn client(&self) -> fastpath_api::Client {
        fastpath_api::Client::connect(&self.socket.display().to_string()).expect("control socket")
    }

    /// Sends SIGTERM and waits; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Fastpath {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The EAL of this test process, acting as the fastpath's peer.
pub fn peer_eal() -> (Eal, Mempool) {
    let args: Vec<String> = vec![
        "-l".into(),
        "0".into(),
        "--no-pci".into(),
        "--in-memory".into(),
        "--single-file-segments".into(),
        format!("--file-prefix=peer-{}", std::process::id()),
        "-m".into(),
        "128".into(),
        "--log-level=warning".into(),
    ];
    let eal = Eal::init(&args).expect("peer EAL");
    let pool = Mempool::new(&MempoolConfig {
        name: "peer".into(),
        mbufs: 2047,
        cache_size: 64,
        data_room: 10240,
        socket: -1,
    })
    .expect("peer pool");
    (eal, pool)
}

/// A virtio-user port connected to the vhost-user socket at `path`.
pub fn virtio_port(index: u32, path: &Path, pool: &Mempool) -> EthPort {
    virtio_port_with(index, path, pool, "")
}

/// A virtio-user port in server mode: it creates the socket at `path` and
/// waits for the fastpath (a vhost-user client) to connect.
pub fn virtio_server_port(index: u32, path: &Path, pool: &Mempool) -> EthPort {
    virtio_port_with(index, path, pool, ",server=1")
}

fn virtio_port_with(index: u32, path: &Path, pool: &Mempool, extra: &str) -> EthPort {
    let cfg = PortConfig {
        name: format!("peer{index}"),
        devargs: format!(
            "net_virtio_user{index},path={},queues=1{extra}",
            path.display()
        ),
        rx_queues: 1,
        tx_queues: 1,
        rx_desc: 512,
        tx_desc: 512,
        mtu: Some(9000),
        promiscuous: false,
    };
    let port = EthPort::create(&cfg, pool).expect("virtio-user port");
    let start = Instant::now();
    while !port.link().up {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "virtio-user link to {} never came up",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    port
}

/// Sends `frame` on `port`, retrying while the ring is full.
pub fn send(port: &EthPort, pool: &Mempool, frame: &[u8]) {
    let mut m = Mbuf::alloc(pool).expect("mbuf");
    let d = m
        .append(frame.len() as u16)
        .expect("frame fits in one mbuf");
    d.copy_from_slice(frame);
    let mut tx = TxBuffer::new();
    let _ = tx.push(m);
    let start = Instant::now();
    loop {
        // A refused packet is freed by flush, so rebuild it for the retry.
        let r = tx.flush(port.id(), 0);
        if r.sent == 1 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "peer could not transmit"
        );
        let mut m = Mbuf::alloc(pool).expect("mbuf");
        m.append(frame.len() as u16)
            .expect("fits")
            .copy_from_slice(frame);
        let _ = tx.push(m);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Receives up to `n` frames on `port` within `timeout`.
pub fn receive(port: &EthPort, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut burst = RxBurst::new();
    let start = Instant::now();
    while out.len() < n && start.elapsed() < timeout {
        if burst.receive(port.id(), 0) == 0 {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        for m in burst.drain() {
            out.push(m.to_vec());
        }
    }
    out
}

/// Frames of several kinds, with distinct contents.
pub mod frames {
    use fastpath_packet::checksum::checksum;

    fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

    fn ipv4(proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![
            0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let len = (20 + payload.len()) as u16;
        h[2..4].copy_from_slice(&len.to_be_bytes());
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    /// ARP request who-has 10.0.0.2 tell 10.0.0.1.
    pub fn arp() -> Vec<u8> {
        let mut f = eth([0xff; 6], A, 0x0806);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&A);
        f.extend_from_slice(&[10, 0, 0, 1]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 0, 0, 2]);
        f.resize(60, 0);
        f
    }

    /// TCP SYN 10.0.0.1:40000 -> 10.0.0.2:80 with a payload tag.
    pub fn ipv4_tcp(tag: u8) -> Vec<u8> {
        let mut tcp = vec![
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
        ];
        tcp.extend_from_slice(&[tag; 26]);
        let mut f = eth(B, A, 0x0800);
        f.extend_from_slice(&ipv4(6, &tcp));
        f
    }

    /// IPv6 UDP with hop-by-hop and destination-options extension headers.
    pub fn ipv6_udp_ext(tag: u8) -> Vec<u8> {
        let mut f = eth(B, A, 0x86dd);
        let udp_payload = [tag; 40];
        let mut udp = vec![0x13, 0x88, 0x13, 0x89, 0, 0, 0, 0];
        udp[4..6].copy_from_slice(&((8 + udp_payload.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&udp_payload);
        let hbh = [60u8, 0, 1, 4, 0, 0, 0, 0]; // next: destination options; PadN
        let dst = [17u8, 0, 1, 4, 0, 0, 0, 0]; // next: UDP
        let plen = (hbh.len() + dst.len() + udp.len()) as u16;
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&plen.to_be_bytes());
        ip.push(0); // next header: hop-by-hop
        ip.push(64);
        ip.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&hbh);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&udp);
        f
    }

    /// 802.1Q (VID 100, PCP 3) tagged ICMP echo request.
    pub fn vlan_icmp(tag: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&B);
        f.extend_from_slice(&A);
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&((3u16 << 13) | 100).to_be_bytes());
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut icmp = vec![8, 0, 0, 0, 0, 7, 0, 1];
        icmp.extend_from_slice(&[tag; 32]);
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ipv4(1, &icmp));
        f
    }

    /// A 9000-byte-payload jumbo UDP frame with a varying pattern.
    pub fn jumbo(tag: u8) -> Vec<u8> {
        let payload: Vec<u8> = (0..8972u32)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(tag))
            .collect();
        let mut udp = vec![0x27, 0x10, 0x27, 0x11, 0, 0, 0, 0];
        udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&payload);
        let mut f = eth(B, A, 0x0800);
        f.extend_from_slice(&ipv4(17, &udp));
        f
    }
}

pub mod netns;

/// The `ovn-bridge` binary, built beside the fastpath binary.
/// Arguments for one worker, the main lcore, on CPU 1, polling a ring port.
pub fn ring_worker_on_cpu1() -> Vec<String> {
    [
        "--lcores",
        "1",
        "--port",
        "r0=net_ring0",
        "--worker",
        "1=r0",
    ]
    .map(String::from)
    .to_vec()
}

pub fn ovn_bridge_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_fastpath")).with_file_name("ovn-bridge");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// Compiles the Southbound at `sb` once (`ovn-bridge compile --once`) into
/// the table file `tables`, local ports mapped as `ports` (logical name,
/// fastpath port id), and loads the OVN program of the generation it
/// published.
pub fn compile_program(
    sb: &str,
    chassis: &str,
    ports: &[(&str, u16)],
    tables: &Path,
) -> fastpath::ovn::Program {
    let mut cmd = Command::new(ovn_bridge_bin());
    cmd.args(["compile", "--once", "--sb", sb, "--chassis", chassis])
        .arg("--tables")
        .arg(tables);
    for (name, id) in ports {
        cmd.args(["--port", &format!("{name}={id}")]);
    }
    let out = cmd.output().expect("ovn-bridge compile");
    assert!(
        out.status.success(),
        "ovn-bridge compile --once: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reader = fastpath_tables::Reader::open_readonly(tables).expect("table file");
    let snap = reader.current().expect("a published generation");
    fastpath::ovn::Program::load(&snap.sections(), snap.generation()).expect("OVN program")
}

/// A MAC address as `ovn-nbctl` writes it.
pub fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An IPv4 header (no options, DF, TTL 64, valid checksum) followed by `l4`.
pub fn ipv4_packet(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = fastpath_packet::checksum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(l4);
    ip
}

/// An untagged IPv4 Ethernet frame around `ip`.
pub fn ethernet_frame(dst: [u8; 6], src: [u8; 6], ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(ip);
    f
}

/// An Ethernet + IPv4 + TCP frame with valid checksums: `macs` is
/// (destination, source), `src`/`dst` are (address, port).
pub fn tcp_frame(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    seq: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&src.1.to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.1.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.0);
    pseudo.extend_from_slice(&dst.0);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&tcp);
    let c = fastpath_packet::checksum::checksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    ethernet_frame(macs.0, macs.1, &ipv4_packet(6, src.0, dst.0, &tcp))
}
