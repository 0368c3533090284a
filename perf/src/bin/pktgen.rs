//! `pktgen`: a DPDK traffic generator that attaches to vhost-user sockets
//! through virtio-user, as a DPDK pod would. It sends UDP/IPv4 frames of a
//! chosen size over a chosen number of flows at a chosen (or the maximum)
//! rate for a chosen time, receives on another port, and reports sent,
//! received, lost, Mpps, Gbps and, in latency mode, latency percentiles from
//! TSC timestamps carried in the payload.
//!
//! Flow `i` of `--flows N` has UDP source port `1024 + i % 64000` and
//! destination port `5001 + i / 64000`, so any number of flows up to about
//! four billion are distinct 5-tuples. With `--reply` the generator also
//! answers: every frame received on the `--rx` port goes back out of it with
//! MACs, addresses and ports swapped (the reply direction of the flow, which
//! makes a UDP connection established in a stateful pipeline), and frames
//! coming back on the `--tx` port are counted as replies received.
#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use clap::Parser;
use fastpath::dpdk::{
    self, Eal, EthPort, Mempool, MempoolConfig, PortConfig, RxBurst, TxBuffer, BURST_SIZE,
};
use fastpath_packet::checksum::checksum;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// DPDK traffic generator over virtio-user.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// vhost-user socket to transmit into.
    #[arg(long)]
    tx: String,
    /// vhost-user socket to receive from (may equal --tx).
    #[arg(long)]
    rx: String,
    /// Frame size in bytes, FCS included (64..=9018).
    #[arg(long, default_value_t = 64)]
    size: u16,
    /// Number of distinct flows (UDP source ports, then destination ports).
    #[arg(long, default_value_t = 1)]
    flows: u32,
    /// Stop after sending this many packets (0: send for --duration).
    #[arg(long, default_value_t = 0)]
    packets: u64,
    /// Answer every frame received on --rx with its reply (addresses and
    /// ports swapped) sent back out of --rx; count what returns on --tx.
    #[arg(long)]
    reply: bool,
    /// Packets per second to offer; 0 means as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds to send.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Record per-packet latency (timestamps in the payload).
    #[arg(long)]
    latency: bool,
    /// Lcore to run on.
    #[arg(long, default_value_t = 0)]
    lcore: u32,
    /// EAL --file-prefix (unique per concurrent DPDK process).
    #[arg(long, default_value = "pktgen")]
    file_prefix: String,
    /// Hugepage memory in MB.
    #[arg(long, default_value_t = 256)]
    memory_mb: u32,
    /// Seconds to wait for the vhost-user peer's link before sending.
    #[arg(long, default_value_t = 10.0)]
    link_timeout: f64,
    /// Print the result as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Print a progress line every second on stderr.
    #[arg(long)]
    progress: bool,
    /// Destination MAC of generated frames.
    #[arg(long, default_value = "02:00:00:00:00:02")]
    dst_mac: String,
    /// Source MAC of generated frames.
    #[arg(long, default_value = "02:00:00:00:00:01")]
    src_mac: String,
    /// Source IPv4 address.
    #[arg(long, default_value = "10.0.0.1")]
    src_ip: std::net::Ipv4Addr,
    /// Destination IPv4 address.
    #[arg(long, default_value = "10.0.0.2")]
    dst_ip: std::net::Ipv4Addr,
}

/// The result of a run.
#[derive(Debug, Serialize)]
struct Report {
    size: u16,
    flows: u32,
    duration_secs: f64,
    sent: u64,
    received: u64,
    lost: u64,
    tx_backpressure: u64,
    replies_sent: u64,
    replies_received: u64,
    tx_mpps: f64,
    rx_mpps: f64,
    rx_gbps: f64,
    latency_us: Option<Latency>,
}

#[derive(Debug, Serialize)]
struct Latency {
    samples: u64,
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

const MAGIC: u32 = 0x6670_6b74; // "fpkt"
const L2L3L4: usize = 14 + 20 + 8;

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("MAC {s:?}: expected six hex bytes separated by ':'");
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16)
            .with_context(|| format!("MAC {s:?}: {p:?} is not a hex byte"))?;
    }
    Ok(m)
}

/// Flows per UDP destination port (the source ports 1024..65024).
const SOURCE_PORTS: u32 = 64000;

/// The UDP source and destination ports of flow `flow`.
fn flow_ports(flow: u32) -> (u16, u16) {
    let sport = 1024 + (flow % SOURCE_PORTS) as u16;
    let dport = 5001u32 + flow / SOURCE_PORTS;
    (sport, dport.min(u32::from(u16::MAX)) as u16)
}

/// The flow `dropped` flows before `flow`, counting modulo `flows`.
fn rewind(flow: u32, dropped: u32, flows: u32) -> u32 {
    let flows = flows.max(1);
    ((u64::from(flow) + u64::from(flows) - u64::from(dropped % flows)) % u64::from(flows)) as u32
}

/// Writes the UDP ports of flow `flow` into a frame built by [`build_frame`].
fn set_flow(frame: &mut [u8], flow: u32) {
    let (sport, dport) = flow_ports(flow);
    frame[34..36].copy_from_slice(&sport.to_be_bytes());
    frame[36..38].copy_from_slice(&dport.to_be_bytes());
}

/// Turns a received UDP/IPv4 frame into its reply in place: MACs, IPv4
/// addresses and UDP ports swapped (checksums are unchanged by a swap).
/// Returns false, leaving the frame alone, when it is not UDP over IPv4.
fn make_reply(f: &mut [u8]) -> bool {
    if f.len() < L2L3L4 || f[12..14] != [0x08, 0x00] || f[14] != 0x45 || f[23] != 17 {
        return false;
    }
    for (a, b, n) in [(0, 6, 6), (26, 30, 4), (34, 36, 2)] {
        for i in 0..n {
            f.swap(a + i, b + i);
        }
    }
    true
}

/// Builds the frame of flow `flow` (see [`flow_ports`]).
fn build_frame(cli: &Cli, src: [u8; 6], dst: [u8; 6], flow: u32) -> Vec<u8> {
    let len = usize::from(cli.size).saturating_sub(4).max(60);
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&cli.src_ip.octets());
    ip[16..20].copy_from_slice(&cli.dst_ip.octets());
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut f[34..42];
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    set_flow(&mut f, flow);
    f
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn wait_link(port: &EthPort, timeout: f64) -> Result<()> {
    let start = std::time::Instant::now();
    while !port.link().up {
        if start.elapsed().as_secs_f64() > timeout {
            bail!("port {} ({}): link did not come up within {timeout}s; is the vhost-user side running?", port.name(), port.devargs());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    if cli.size < 64 || cli.size > 9018 {
        bail!("--size {} out of range 64..=9018", cli.size);
    }
    if cli.flows == 0 {
        bail!("--flows must be at least 1");
    }
    if cli.reply && cli.rx == cli.tx {
        bail!("--reply needs distinct --tx and --rx ports");
    }
    let src = parse_mac(&cli.src_mac)?;
    let dst = parse_mac(&cli.dst_mac)?;
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    let eal_args = vec![
        "-l".to_string(),
        cli.lcore.to_string(),
        "--no-pci".into(),
        "--in-memory".into(),
        "--single-file-segments".into(),
        format!("--file-prefix={}", cli.file_prefix),
        "-m".into(),
        cli.memory_mb.to_string(),
        "--log-level=warning".into(),
    ];
    let eal = Eal::init(&eal_args)?;
    let data_room = (cli.size as u32 + 256).max(2176).min(u16::MAX as u32) as u16;
    let pool = Mempool::new(&MempoolConfig {
        name: "pktgen".into(),
        mbufs: 8191,
        cache_size: 256,
        data_room,
        socket: -1,
    })
    .map_err(anyhow::Error::msg)?;
    let mk = |name: &str, idx: usize, path: &str| PortConfig {
        name: name.into(),
        devargs: format!("net_virtio_user{idx},path={path},queues=1"),
        rx_queues: 1,
        tx_queues: 1,
        rx_desc: 1024,
        tx_desc: 1024,
        mtu: None,
        promiscuous: false,
    };
    let txp = EthPort::create(&mk("tx", 0, &cli.tx), &pool)?;
    let rxp = if cli.rx == cli.tx {
        None
    } else {
        Some(EthPort::create(&mk("rx", 1, &cli.rx), &pool)?)
    };
    wait_link(&txp, cli.link_timeout)?;
    if let Some(r) = &rxp {
        wait_link(r, cli.link_timeout)?;
    }
    let rx_id = rxp.as_ref().map(|p| p.id()).unwrap_or(txp.id());
    let tx_id = txp.id();

    let template = build_frame(&cli, src, dst, 0);
    let frame_len = template.len() as u16;
    let hz = dpdk::tsc_hz();
    let duration_tsc = (cli.duration * hz as f64) as u64;
    let per_pkt_tsc = if cli.rate > 0.0 {
        hz as f64 / cli.rate
    } else {
        0.0
    };

    let mut rx = RxBurst::new();
    let mut txb = TxBuffer::new();
    let mut fresh = RxBurst::new();
    let (mut sent, mut received, mut backpressure, mut rx_bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut lat: Vec<u64> = if cli.latency {
        Vec::with_capacity(4_000_000)
    } else {
        Vec::new()
    };
    let mut flow = 0u32;
    let mut replies = RxBurst::new();
    let mut reply_tx = TxBuffer::new();
    let (mut replies_sent, mut replies_received) = (0u64, 0u64);
    let mut seq = 0u32;
    let start = dpdk::rdtsc();
    let mut next_progress = start + hz;
    let (mut last_sent, mut last_recv) = (0u64, 0u64);
    let reply = cli.reply;
    let receive = |rx: &mut RxBurst, received: &mut u64, rx_bytes: &mut u64, lat: &mut Vec<u64>| {
        let n = rx.receive(rx_id, 0);
        if n == 0 {
            return;
        }
        *received += n as u64;
        let now = dpdk::rdtsc();
        for m in rx.as_slice() {
            *rx_bytes += u64::from(m.pkt_len());
            if cli.latency {
                let d = m.data();
                if d.len() >= L2L3L4 + 16
                    && d[L2L3L4..L2L3L4 + 4] == MAGIC.to_be_bytes()
                    && lat.len() < 50_000_000
                {
                    let mut t = [0u8; 8];
                    t.copy_from_slice(&d[L2L3L4 + 8..L2L3L4 + 16]);
                    lat.push(now.wrapping_sub(u64::from_le_bytes(t)));
                }
            }
        }
        if !reply {
            rx.clear();
        }
    };
    // The reply side: what came in on --rx goes back out of it reversed;
    // what comes back on --tx is counted and freed.
    let answer = |rx: &mut RxBurst,
                  out: &mut TxBuffer,
                  back: &mut RxBurst,
                  sent: &mut u64,
                  got: &mut u64| {
        for mut m in rx.drain() {
            if make_reply(m.data_mut()) {
                let _ = out.push(m);
            }
        }
        if !out.is_empty() {
            *sent += u64::from(out.flush(rx_id, 0).sent);
        }
        *got += back.receive(tx_id, 0) as u64;
        back.clear();
    };
    loop {
        let now = dpdk::rdtsc();
        let elapsed = now - start;
        if elapsed >= duration_tsc
            || stop.load(Ordering::Relaxed)
            || (cli.packets > 0 && sent >= cli.packets)
        {
            break;
        }
        let mut want = BURST_SIZE;
        if per_pkt_tsc > 0.0 {
            let allowed = (elapsed as f64 / per_pkt_tsc) as u64;
            want = allowed
                .saturating_sub(sent + backpressure)
                .min(BURST_SIZE as u64) as usize;
        }
        if cli.packets > 0 {
            want = want.min(cli.packets.saturating_sub(sent) as usize);
        }
        if want > 0 && fresh.alloc(&pool, want) {
            for mut m in fresh.drain() {
                if let Some(d) = m.append(frame_len) {
                    d.copy_from_slice(&template);
                    set_flow(d, flow);
                    if cli.latency {
                        d[L2L3L4..L2L3L4 + 4].copy_from_slice(&MAGIC.to_be_bytes());
                        d[L2L3L4 + 4..L2L3L4 + 8].copy_from_slice(&seq.to_be_bytes());
                        d[L2L3L4 + 8..L2L3L4 + 16].copy_from_slice(&dpdk::rdtsc().to_le_bytes());
                        seq = seq.wrapping_add(1);
                    }
                }
                flow += 1;
                if flow == cli.flows {
                    flow = 0;
                }
                let _ = txb.push(m);
            }
            let r = txb.flush(tx_id, 0);
            sent += u64::from(r.sent);
            backpressure += u64::from(r.dropped);
            // The frames the port refused carried the burst's last flows:
            // those go out next, so that with `--packets` equal to
            // `--flows` every 5-tuple is sent exactly once.
            flow = rewind(flow, r.dropped, cli.flows);
        }
        receive(&mut rx, &mut received, &mut rx_bytes, &mut lat);
        if reply {
            answer(
                &mut rx,
                &mut reply_tx,
                &mut replies,
                &mut replies_sent,
                &mut replies_received,
            );
        }
        if cli.progress && now >= next_progress {
            eprintln!(
                "pktgen: {:>5.1}s  tx {:>7.3} Mpps  rx {:>7.3} Mpps",
                elapsed as f64 / hz as f64,
                (sent - last_sent) as f64 / 1e6,
                (received - last_recv) as f64 / 1e6
            );
            last_sent = sent;
            last_recv = received;
            next_progress += hz;
        }
    }
    let send_end = dpdk::rdtsc();
    // Drain what is still in flight.
    let drain_until = send_end + hz / 5;
    while dpdk::rdtsc() < drain_until {
        receive(&mut rx, &mut received, &mut rx_bytes, &mut lat);
        if reply {
            answer(
                &mut rx,
                &mut reply_tx,
                &mut replies,
                &mut replies_sent,
                &mut replies_received,
            );
        }
    }
    let secs = (send_end - start) as f64 / hz as f64;
    let latency_us = if cli.latency {
        lat.sort_unstable();
        let us = |c: u64| c as f64 * 1e6 / hz as f64;
        Some(Latency {
            samples: lat.len() as u64,
            min: us(lat.first().copied().unwrap_or(0)),
            p50: us(percentile(&lat, 50.0)),
            p90: us(percentile(&lat, 90.0)),
            p99: us(percentile(&lat, 99.0)),
            p999: us(percentile(&lat, 99.9)),
            max: us(lat.last().copied().unwrap_or(0)),
        })
    } else {
        None
    };
    let report = Report {
        size: cli.size,
        flows: cli.flows,
        duration_secs: secs,
        sent,
        received,
        lost: sent.saturating_sub(received),
        tx_backpressure: backpressure,
        replies_sent,
        replies_received,
        tx_mpps: sent as f64 / secs / 1e6,
        rx_mpps: received as f64 / secs / 1e6,
        rx_gbps: (rx_bytes + 4 * received) as f64 * 8.0 / secs / 1e9,
        latency_us,
    };
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "sent {}  received {}  lost {}  (tx back-pressure {})\ntx {:.3} Mpps  rx {:.3} Mpps  {:.3} Gbit/s  over {:.2}s, {}-byte frames, {} flow(s)",
            report.sent, report.received, report.lost, report.tx_backpressure, report.tx_mpps, report.rx_mpps, report.rx_gbps, secs, cli.size, cli.flows
        );
        if let Some(l) = &report.latency_us {
            println!(
                "latency (us) over {} samples: min {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                l.samples, l.min, l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
    }
    drop(rx);
    drop(txb);
    drop(replies);
    drop(reply_tx);
    drop(rxp);
    drop(txp);
    drop(pool);
    drop(eal);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_frames_send_their_flows_again() {
        assert_eq!(rewind(10, 3, 100), 7);
        assert_eq!(rewind(2, 5, 100), 97, "wraps below zero");
        assert_eq!(rewind(0, 0, 100), 0);
        assert_eq!(rewind(5, 250, 100), 55, "more refused than flows");
        assert_eq!(rewind(0, 7, 1), 0);
    }

    #[test]
    fn flows_beyond_the_source_ports_are_distinct_tuples() {
        let all: std::collections::HashSet<(u16, u16)> = (0..200_000).map(flow_ports).collect();
        assert_eq!(all.len(), 200_000);
        assert_eq!(flow_ports(0), (1024, 5001));
        assert_eq!(flow_ports(64_000), (1024, 5002));
    }

    #[test]
    fn reply_swaps_addresses_and_ports_and_keeps_the_ip_checksum_valid() {
        let cli = Cli::parse_from(["pktgen", "--tx", "a", "--rx", "b"]);
        let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut f = build_frame(&cli, a, b, 70_000);
        assert!(make_reply(&mut f));
        assert_eq!((&f[0..6], &f[6..12]), (&a[..], &b[..]));
        assert_eq!(&f[26..30], &cli.dst_ip.octets());
        assert_eq!(&f[30..34], &cli.src_ip.octets());
        let (sport, dport) = flow_ports(70_000);
        assert_eq!(&f[34..36], &dport.to_be_bytes());
        assert_eq!(&f[36..38], &sport.to_be_bytes());
        assert!(fastpath_packet::checksum::verify(&f[14..34]));
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let before = arp.clone();
        assert!(!make_reply(&mut arp));
        assert_eq!(arp, before);
    }
}
