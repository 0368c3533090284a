//! The run-to-completion loop of a worker lcore: for each of its rx queues,
//! rx burst → pipeline → per-port tx buffers → tx burst. Nothing on this path
//! allocates, locks or makes a system call; the only syscall is the idle
//! back-off's sleep, taken only when every queue came back empty.
//!
//! Cycle accounting follows the usual DPDK convention (testpmd's
//! `--record-core-cycles`): the TSC cycles of a poll that returned packets,
//! including their processing and transmission, are busy; the cycles of an
//! empty poll and of the idle sleep are idle. Busy cycles per packet is the
//! figure every pipeline is compared on.

use crate::config::IdleSection;
use crate::dpdk::{rdtsc, RxBurst, TxBuffer};
use crate::pipeline::{Pipeline, PortIndex};
use crate::stats::{DropReason, LcoreStats};
use crate::tables::WorkerTables;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An rx queue a worker polls.
#[derive(Debug, Clone, Copy)]
pub struct RxQueue {
    /// Port index in the configuration.
    pub port: PortIndex,
    /// DPDK port id.
    pub port_id: u16,
    /// Queue number.
    pub queue: u16,
}

/// Everything one worker needs; moved onto its lcore.
pub struct Worker {
    /// Queues to poll.
    pub rx: Vec<RxQueue>,
    /// DPDK port id of each port index.
    pub port_ids: Vec<u16>,
    /// The tx queue this worker owns on every port.
    pub tx_queue: u16,
    /// The pipeline.
    pub pipeline: Pipeline,
    /// Counters.
    pub stats: Arc<LcoreStats>,
    /// Set to stop.
    pub stop: Arc<AtomicBool>,
    /// Idle back-off.
    pub idle: IdleSection,
    /// The compiled tables, when configured.
    pub tables: Option<WorkerTables>,
}

impl Worker {
    /// Runs until `stop` is set. Returns 0.
    pub fn run(self) -> i32 {
        let Worker {
            rx,
            port_ids,
            tx_queue,
            pipeline,
            stats,
            stop,
            idle,
            mut tables,
        } = self;
        let mut burst = RxBurst::new();
        let mut tx: Vec<TxBuffer> = port_ids.iter().map(|_| TxBuffer::new()).collect();
        let sleep = Duration::from_micros(u64::from(idle.sleep_us));
        let mut empty_rounds: u32 = 0;
        log::info!(
            "lcore {}: polling {} queue(s), pipeline {}",
            stats.lcore,
            rx.len(),
            pipeline.name()
        );

        while !stop.load(Ordering::Relaxed) {
            // Burst boundary: the quiescent point where a new table
            // generation is taken up.
            if let Some(t) = tables.as_mut() {
                if t.at_burst_boundary(rdtsc()) {
                    stats.table_generation.set(t.generation());
                }
            }
            let mut round_packets = 0usize;
            for q in &rx {
                let t0 = rdtsc();
                let n = burst.receive(q.port_id, q.queue);
                if n == 0 {
                    stats.idle_cycles.add(rdtsc().wrapping_sub(t0));
                    continue;
                }
                round_packets += n;
                let pc = &stats.ports[q.port];
                let mut bytes = 0u64;
                for m in burst.as_slice() {
                    bytes += u64::from(m.pkt_len());
                }
                pc.rx_packets.add(n as u64);
                pc.rx_bytes.add(bytes);

                match &pipeline {
                    Pipeline::Xconnect(x) => match x.output(q.port) {
                        Some(out) => {
                            let buf = &mut tx[out];
                            for m in burst.drain() {
                                if let Err(m) = buf.push(m) {
                                    flush(buf, out, &port_ids, tx_queue, &stats);
                                    // The buffer is empty now, so this push fits.
                                    let _ = buf.push(m);
                                }
                            }
                            flush(buf, out, &port_ids, tx_queue, &stats);
                        }
                        None => {
                            stats.drop_packets(DropReason::NoOutput, n as u64);
                            burst.clear();
                        }
                    },
                }
                stats.packets.add(n as u64);
                stats.busy_cycles.add(rdtsc().wrapping_sub(t0));
            }
            stats.iterations.add(1);
            if round_packets == 0 {
                if idle.backoff {
                    empty_rounds = empty_rounds.saturating_add(1);
                    if empty_rounds >= idle.polls {
                        let t0 = rdtsc();
                        std::thread::sleep(sleep);
                        stats.idle_cycles.add(rdtsc().wrapping_sub(t0));
                    }
                }
            } else {
                empty_rounds = 0;
            }
        }
        for b in tx.iter_mut() {
            b.discard();
        }
        log::info!("lcore {}: stopped", stats.lcore);
        0
    }
}

#[inline(always)]
fn flush(buf: &mut TxBuffer, out: PortIndex, port_ids: &[u16], queue: u16, stats: &LcoreStats) {
    let r = buf.flush(port_ids[out], queue);
    let pc = &stats.ports[out];
    pc.tx_packets.add(u64::from(r.sent));
    pc.tx_bytes.add(r.sent_bytes);
    if r.dropped > 0 {
        pc.tx_dropped.add(u64::from(r.dropped));
        stats.drop_packets(DropReason::TxFull, u64::from(r.dropped));
    }
}
