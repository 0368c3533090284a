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
//!
//! The OVN pipeline works on the burst in stages, so that the memory each
//! packet needs is loading while other packets are worked on rather than
//! one dependent load after another: (1) prefetch every frame's headers;
//! (2) extract every flow key, hash it and prefetch its flow-cache bucket;
//! (3) prefetch the cache slot each bucket names, then the conntrack steps
//! of each slot's entry, then the conntrack entries (and shard locks) those
//! steps will touch on a hit; (4) per packet, the decision, the rewrite and
//! the enqueue. The burst's cache hits are
//! counted once.
//!
//! One busy poll in [`crate::stats::STAGE_SAMPLE_EVERY`] is timed stage by
//! stage (rx, parse = stages 1–2, prefetch = stage 3, decide = stage 4,
//! tx), which `fastpathctl lcores --stages` and `perf` report as cycles
//! per packet of each: the busy figure, split where it is spent.
//!
//! When the program tracks connections, stage 3 runs ahead of stage 4
//! instead of over the whole burst: before deciding packet `i`, the
//! worker prefetches the slot of packet `i + SLOT_AHEAD` and the conntrack
//! lines of packet `i + CT_AHEAD` (whose slot has arrived by then), and
//! stage 3 does only the first packets'. A stateful hit reads about eight
//! lines at random (bucket, slot, two connections' stamps); asked for a
//! whole burst at once, some two hundred line requests queued behind a
//! dozen fill buffers, and the prefetches for the last packets arrived
//! no sooner than their own loads would have.
//!
//! The set of ports changes at run time only through [`PortCommand`]s,
//! taken at the burst boundary: a worker attaches a new port (its tx queue,
//! and an rx queue when it is given one) or detaches one (stops polling it,
//! frees what it had queued for it, forgets its DPDK id) and acknowledges.
//! The control thread frees a device only after every worker acknowledged
//! its detach; this module never creates or frees a device itself.

use crate::config::IdleSection;
use crate::dpdk::{rdtsc, Mbuf, Mempool, RxBurst, TxBuffer, BURST_SIZE};
use crate::ovn::cache::{EntryDrop, FlowEntry, Probe};
use crate::ovn::lcore::OvnLcore;
use crate::ovn::DropCause;
use crate::pipeline::{Pipeline, PortIndex};
use crate::stats::{stage, DropReason, LcoreStats, StageClock};
use crate::tables::WorkerTables;
use crate::tunnel::{self, MtuVerdict, TunnelError};
use crate::underlay::{ArpOutcome, ArpThrottle, NextHopError, Underlay};
use crossbeam::channel::{Receiver, Sender};
use fastpath_packet::{FlowKey, Layout};
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

/// The DPDK id of a port slot that has no device (a port index the tables
/// name but that does not exist, or a removed run-time port).
pub const NO_PORT: u16 = u16::MAX;

/// A change of the port set, sent by the control thread and applied by
/// every worker at a burst boundary; `done` is answered once applied (it
/// is a bounded channel with room for the answer, so answering never
/// blocks).
pub enum PortCommand {
    /// Start using a port: transmit to it on the worker's tx queue, and
    /// poll `rx_queue` when given.
    Attach {
        /// Fastpath port index.
        index: PortIndex,
        /// DPDK port id.
        port_id: u16,
        /// The rx queue this worker polls, if any.
        rx_queue: Option<u16>,
        /// Acknowledgement.
        done: Sender<()>,
    },
    /// Stop using a port entirely: after the acknowledgement the worker
    /// never touches the device again.
    Detach {
        /// Fastpath port index.
        index: PortIndex,
        /// Acknowledgement.
        done: Sender<()>,
    },
}

/// A request from the control thread to a worker, served at a burst
/// boundary (the control thread never reads a worker's cache itself).
pub enum LcoreCommand {
    /// Copy the flow cache out.
    DumpFlows(Sender<FlowDump>),
    /// Empty the flow cache; answers the number of entries removed.
    FlushFlows(Sender<usize>),
}

/// A copy of one lcore's flow cache.
pub struct FlowDump {
    /// The lcore.
    pub lcore: u32,
    /// TSC when the copy was taken (entry ages are relative to it).
    pub now_tsc: u64,
    /// Capacity of the cache.
    pub capacity: usize,
    /// The program in use (names the logical ports of its entries).
    pub program: Option<Arc<crate::ovn::Program>>,
    /// Entries with their keys.
    pub entries: Vec<(FlowKey, FlowEntry)>,
}

/// The OVN pipeline's per-worker state.
pub struct OvnWorker {
    /// Cache, interpreter and program.
    pub lcore: OvnLcore,
    /// Pool for packet copies and generated packets.
    pub pool: Arc<Mempool>,
    /// Requests from the control thread.
    pub commands: Receiver<LcoreCommand>,
    /// Scratch buffer for generated frames.
    pub frame: Vec<u8>,
    /// The conntrack hook over the process's connection table.
    pub conntrack: crate::ovn::ct_engine::ConntrackEngine,
    /// The node's QoS policers (TSC ticks).
    pub meters: Arc<crate::meter::MeterBank>,
    /// TSC ticks per second (the conntrack clock is in ns).
    pub tsc_hz: u64,
    /// The meters as of this burst (taken at each burst boundary).
    pub meter_view: Option<crate::meter::MeterView>,
    /// The Geneve uplink and its neighbours, when a tunnel is configured.
    pub underlay: Option<Arc<Underlay>>,
    /// ARP requests this worker sent for unresolved next hops.
    pub arp_throttle: ArpThrottle,
    /// The program in use (the remote chassis of tunnelled outputs).
    pub program: Option<Arc<crate::ovn::Program>>,
    /// The conntrack clock (ns) as of the burst in hand: converted from the
    /// TSC once a burst, not per packet.
    pub clock_ns: u64,
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
    /// OVN state (pipeline `ovn`).
    pub ovn: Option<OvnWorker>,
    /// Port set changes from the control thread.
    pub port_commands: Receiver<PortCommand>,
}

impl Worker {
    /// Runs until `stop` is set. Returns 0.
    pub fn run(self) -> i32 {
        let Worker {
            mut rx,
            mut port_ids,
            tx_queue,
            pipeline,
            stats,
            stop,
            idle,
            mut tables,
            mut ovn,
            port_commands,
        } = self;
        let mut burst = RxBurst::new();
        let mut staged = Staged::new();
        let mut tx: Vec<TxBuffer> = port_ids.iter().map(|_| TxBuffer::new()).collect();
        let sleep = Duration::from_micros(u64::from(idle.sleep_us));
        let mut empty_rounds: u32 = 0;
        let mut busy_polls: u64 = 0;
        if let Some(tid) = crate::stats::current_thread_id() {
            stats.thread_id.set(tid);
        }
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
                    if let Some(o) = ovn.as_mut() {
                        o.lcore.set_program(t.program().cloned());
                        o.program = t.program().cloned();
                    }
                }
            }
            if let Some(o) = ovn.as_mut() {
                o.meter_view = Some(o.meters.view());
                if let Ok(cmd) = o.commands.try_recv() {
                    serve_command(cmd, o, &stats);
                }
            }
            if let Ok(cmd) = port_commands.try_recv() {
                apply_port_command(cmd, &mut rx, &mut port_ids, &mut tx, &stats);
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
                let mut clock = StageClock::new(busy_polls, t0);
                busy_polls += 1;
                clock.end(stage::RX);
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
                            clock.end(stage::DECIDE);
                            flush(buf, out, &port_ids, tx_queue, &stats);
                        }
                        None => {
                            stats.drop_packets(DropReason::NoOutput, n as u64);
                            burst.clear();
                        }
                    },
                    Pipeline::Ovn { .. } => match ovn.as_mut() {
                        Some(o) => {
                            o.clock_ns = crate::ovn::ct_engine::tsc_to_ns(t0, o.tsc_hz);
                            if o.underlay
                                .as_ref()
                                .is_some_and(|u| u.config.uplink == q.port)
                            {
                                stage_uplink(
                                    &mut burst,
                                    q.port,
                                    o,
                                    &mut staged,
                                    &mut tx,
                                    &port_ids,
                                    tx_queue,
                                    &stats,
                                );
                            } else {
                                stage_burst(&mut burst, q.port, &o.lcore, &mut staged, &stats);
                            }
                            clock.end(stage::PARSE);
                            prefetch_staged(&mut staged, &o.lcore, o.conntrack.conntrack());
                            clock.end(stage::PREFETCH);
                            let mut hits = 0u64;
                            let ahead = o.lcore.tracks_connections();
                            for (i, m) in burst.drain().enumerate() {
                                if ahead {
                                    prefetch_ahead(
                                        &mut staged,
                                        i,
                                        &o.lcore,
                                        o.conntrack.conntrack(),
                                    );
                                }
                                // A packet that failed stage 2 was counted
                                // there; dropping it frees it.
                                if staged.parsed & (1 << i) != 0 {
                                    hits += u64::from(ovn_packet(
                                        m, &staged, i, o, &mut tx, &port_ids, tx_queue, &stats, t0,
                                    ));
                                }
                            }
                            stats.cache.hits.add(hits);
                            o.lcore.end_burst();
                            clock.end(stage::DECIDE);
                            for (out, buf) in tx.iter_mut().enumerate() {
                                if !buf.is_empty() {
                                    flush(buf, out, &port_ids, tx_queue, &stats);
                                }
                            }
                        }
                        None => {
                            stats.drop_packets(DropReason::OvnNoProgram, n as u64);
                            burst.clear();
                        }
                    },
                }
                stats.packets.add(n as u64);
                let t_end = rdtsc();
                stats.busy_cycles.add(t_end.wrapping_sub(t0));
                clock.record(t_end, n as u64, &stats.stages);
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

/// Applies a port set change (see [`PortCommand`]).
#[cold]
fn apply_port_command(
    cmd: PortCommand,
    rx: &mut Vec<RxQueue>,
    port_ids: &mut Vec<u16>,
    tx: &mut Vec<TxBuffer>,
    stats: &LcoreStats,
) {
    match cmd {
        PortCommand::Attach {
            index,
            port_id,
            rx_queue,
            done,
        } => {
            if index < stats.ports.len() {
                if port_ids.len() <= index {
                    port_ids.resize(index + 1, NO_PORT);
                }
                while tx.len() <= index {
                    tx.push(TxBuffer::new());
                }
                port_ids[index] = port_id;
                rx.retain(|q| q.port != index);
                if let Some(queue) = rx_queue {
                    rx.push(RxQueue {
                        port: index,
                        port_id,
                        queue,
                    });
                }
                log::info!(
                    "lcore {}: port {index} (dpdk {port_id}) attached{}",
                    stats.lcore,
                    rx_queue
                        .map(|q| format!(", polling queue {q}"))
                        .unwrap_or_default()
                );
            } else {
                log::error!(
                    "lcore {}: port {index} is beyond the {} port counters; not attached",
                    stats.lcore,
                    stats.ports.len()
                );
            }
            let _ = done.try_send(());
        }
        PortCommand::Detach { index, done } => {
            rx.retain(|q| q.port != index);
            if let Some(b) = tx.get_mut(index) {
                b.discard();
            }
            if let Some(id) = port_ids.get_mut(index) {
                *id = NO_PORT;
            }
            log::info!("lcore {}: port {index} detached", stats.lcore);
            let _ = done.try_send(());
        }
    }
}

#[cold]
fn serve_command(cmd: LcoreCommand, o: &mut OvnWorker, stats: &LcoreStats) {
    match cmd {
        LcoreCommand::DumpFlows(reply) => {
            let _ = reply.send(FlowDump {
                lcore: stats.lcore,
                now_tsc: rdtsc(),
                capacity: o.lcore.cache.capacity(),
                program: o.lcore.program().cloned(),
                entries: o.lcore.cache.iter().map(|(k, e)| (*k, e.clone())).collect(),
            });
        }
        LcoreCommand::FlushFlows(reply) => {
            let n = o.lcore.cache.flush();
            o.lcore.flush_megaflows();
            stats.cache.entries.set(0);
            let _ = reply.send(n);
        }
    }
}

/// The drop reason of a cached drop.
#[inline]
fn count_entry_drop(d: EntryDrop, stats: &LcoreStats) {
    let reason = match d {
        EntryDrop::Rewrite => DropReason::OvnRewrite,
        EntryDrop::RemoteOutport => DropReason::OvnRemoteOutport,
        EntryDrop::Pipeline(c) => match c {
            DropCause::Action => DropReason::OvnDropAction,
            DropCause::NoMatch => DropReason::OvnNoMatch,
            DropCause::Implicit => DropReason::OvnImplicitDrop,
            DropCause::Unsupported(i) => return stats.drop_unsupported(i),
            DropCause::Loopback => DropReason::OvnLoopback,
            DropCause::UnknownOutport => DropReason::OvnUnknownOutport,
            DropCause::TtlExpired => DropReason::OvnTtlExpired,
            DropCause::DepthLimit => DropReason::OvnDepthLimit,
            DropCause::UnknownInport => DropReason::OvnUnknownInport,
            DropCause::Conntrack(e) => DropReason::of_ct_error(e),
        },
    };
    stats.drop_packets(reason, 1);
}

/// Queues a packet on a port's tx buffer, flushing a full buffer first.
#[inline(always)]
fn enqueue(
    m: Mbuf,
    out: usize,
    tx: &mut [TxBuffer],
    port_ids: &[u16],
    queue: u16,
    stats: &LcoreStats,
) {
    let Some(buf) = tx.get_mut(out) else {
        stats.drop_packets(DropReason::OvnRemoteOutport, 1);
        return;
    };
    if port_ids.get(out).is_none_or(|id| *id == NO_PORT) {
        // A port index the tables name but no device is attached at.
        stats.drop_packets(DropReason::NoOutput, 1);
        return;
    }
    if let Err(m) = buf.push(m) {
        flush(buf, out, port_ids, queue, stats);
        let _ = buf.push(m);
    }
}

/// A received burst after its first stages: per packet, its flow key,
/// header layout and the key's flow-cache [`Probe`] (fixed arrays, kept
/// across bursts, so that staging copies each key once).
struct Staged {
    keys: [FlowKey; BURST_SIZE],
    layouts: [Layout; BURST_SIZE],
    probes: [Probe; BURST_SIZE],
    /// Bit `i`: packet `i` parsed (the others are malformed).
    parsed: u32,
}

impl Staged {
    fn new() -> Staged {
        Staged {
            keys: [FlowKey::zeroed(); BURST_SIZE],
            layouts: [Layout::default(); BURST_SIZE],
            probes: [Probe::new(0); BURST_SIZE],
            parsed: 0,
        }
    }

    /// Stages 1 and 2 for packet `i`: parses its frame into the key of
    /// slot `i` in place, hashes the key and starts loading its flow-cache
    /// bucket; false when the frame is malformed (counted).
    #[inline(always)]
    fn stage(
        &mut self,
        i: usize,
        frame: &[u8],
        in_port: u16,
        lcore: &OvnLcore,
        stats: &LcoreStats,
    ) -> bool {
        match fastpath_packet::extract_hashed(
            frame,
            in_port,
            &mut self.keys[i],
            &mut self.layouts[i],
        ) {
            Ok(hash) => {
                self.hashed(i, hash, lcore);
                true
            }
            Err(e) => {
                count_parse_drop(e, stats);
                false
            }
        }
    }

    /// Stage 2 for packet `i` whose key and layout are in place: hashes
    /// the key and starts loading its flow-cache bucket.
    #[inline(always)]
    fn keyed(&mut self, i: usize, lcore: &OvnLcore) {
        let hash = crate::ovn::cache::key_hash(&self.keys[i]);
        self.hashed(i, hash, lcore);
    }

    /// Stage 2 for packet `i` whose key (of hash `hash`) and layout are in
    /// place: starts loading its flow-cache bucket.
    #[inline(always)]
    fn hashed(&mut self, i: usize, hash: u64, lcore: &OvnLcore) {
        lcore.prefetch(hash);
        self.probes[i] = Probe::new(hash);
        self.parsed |= 1 << i;
    }
}

/// Counts a frame the packet layer could not parse.
#[cold]
fn count_parse_drop(e: fastpath_packet::ParseError, stats: &LcoreStats) {
    stats.parse_drops[e.index()].add(1);
    stats.drop_packets(DropReason::Malformed, 1);
}

/// Stages 1 and 2 of the OVN pipeline over a received burst (see the
/// module doc): fills `staged`; a malformed packet is counted here and
/// left out of `staged.parsed` (the caller drops it).
#[inline(always)]
fn stage_burst(
    burst: &mut RxBurst,
    in_port: PortIndex,
    lcore: &OvnLcore,
    staged: &mut Staged,
    stats: &LcoreStats,
) {
    staged.parsed = 0;
    for m in burst.as_slice() {
        m.prefetch_data();
    }
    for (i, m) in burst.as_mut_slice().iter_mut().enumerate().take(BURST_SIZE) {
        if m.segments() > 1 && !m.linearize() {
            stats.drop_packets(DropReason::Malformed, 1);
            continue;
        }
        staged.stage(i, m.data(), in_port as u16, lcore, stats);
    }
}

/// How many packets ahead of the one being decided stage 4 prefetches a
/// flow-cache slot when the program tracks connections (see the module
/// doc); stage 3 does the first ones.
const SLOT_AHEAD: usize = 5;

/// How many packets ahead of the one being decided stage 4 prefetches the
/// conntrack lines of a hit (its connections' stamps, or its steps and
/// their entries) or, for a likely new connection, its index lines
/// ([`OvnLcore::prefetch_new_connection`]); stage 3 does the first ones.
/// Five, then two: `perf run acl-lb` at 100 000 connections measured
/// 396–489 busy cycles per packet against 500–669 with every prefetch
/// issued for the whole burst in stage 3 (five runs each, in alternation);
/// slot ahead by eight and conntrack by three gave 427–554.
const CT_AHEAD: usize = 2;

/// Stage 3's work for packet `i`, done from stage 4 a few packets ahead
/// (see the module doc).
#[inline(always)]
fn prefetch_ahead(
    staged: &mut Staged,
    i: usize,
    lcore: &OvnLcore,
    conntrack: &crate::conntrack::Conntrack,
) {
    let parsed = |j: usize| j < BURST_SIZE && staged.parsed & (1 << j) != 0;
    let s = i + SLOT_AHEAD;
    if parsed(s) {
        lcore.prefetch_slot(&mut staged.probes[s]);
    }
    let c = i + CT_AHEAD;
    if parsed(c) {
        prefetch_ct(staged, c, lcore, conntrack);
    }
}

/// The conntrack lines packet `i` will need: its hit's (stamps, or steps
/// and then the entries they name) or, for a likely new connection, its
/// index lines.
#[inline(always)]
fn prefetch_ct(staged: &Staged, i: usize, lcore: &OvnLcore, ct: &crate::conntrack::Conntrack) {
    let probe = &staged.probes[i];
    if lcore.prefetch_ct_first(probe, ct) {
        lcore.prefetch_conntrack(probe, ct);
    }
    lcore.prefetch_new_connection(probe, &staged.keys[i], ct);
}

/// Stage 3 over a staged burst: the cache slot of each parsed packet.
/// When the program tracks connections, only the first [`SLOT_AHEAD`]
/// packets' slots and the first [`CT_AHEAD`] packets' conntrack lines
/// (see [`prefetch_ct`]): stage 4 does the rest a few packets ahead of
/// its decisions ([`prefetch_ahead`]).
#[inline(always)]
fn prefetch_staged(staged: &mut Staged, lcore: &OvnLcore, conntrack: &crate::conntrack::Conntrack) {
    let parsed = staged.parsed;
    let parsed = |i: usize| parsed & (1 << i) != 0;
    // With connections, stage 4 prefetches the later packets' slots.
    let ahead = lcore.tracks_connections();
    for (i, probe) in staged.probes.iter_mut().enumerate() {
        if parsed(i) && (!ahead || i < SLOT_AHEAD) {
            lcore.prefetch_slot(probe);
        }
    }
    if !ahead {
        return;
    }
    for i in 0..CT_AHEAD {
        if parsed(i) {
            prefetch_ct(staged, i, lcore, conntrack);
        }
    }
}

/// Stages 1 and 2 for a burst from the Geneve uplink: ARP is answered or
/// learned from; a Geneve packet to this chassis is decapsulated in place
/// (the mbuf then holds the inner frame) and staged with the tunnel
/// metadata in its key; anything else is dropped under a named reason.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn stage_uplink(
    burst: &mut RxBurst,
    in_port: PortIndex,
    o: &mut OvnWorker,
    staged: &mut Staged,
    tx: &mut [TxBuffer],
    port_ids: &[u16],
    queue: u16,
    stats: &LcoreStats,
) {
    staged.parsed = 0;
    let Some(underlay) = o.underlay.clone() else {
        return;
    };
    let local = underlay.local_endpoint();
    for m in burst.as_slice() {
        m.prefetch_data();
    }
    for (i, m) in burst.as_mut_slice().iter_mut().enumerate().take(BURST_SIZE) {
        if m.segments() > 1 && !m.linearize() {
            stats.drop_packets(DropReason::Malformed, 1);
            continue;
        }
        let d = match tunnel::decapsulate(m.data(), &local) {
            Ok(d) => d,
            Err(
                TunnelError::OuterNotIp
                | TunnelError::OuterNotUdp
                | TunnelError::WrongUdpPort
                | TunnelError::WrongDestination,
            ) => {
                if o.frame.len() < crate::underlay::ARP_FRAME_LEN {
                    o.frame.resize(crate::underlay::ARP_FRAME_LEN, 0);
                }
                match underlay.handle_arp(m.data(), &mut o.frame) {
                    ArpOutcome::Reply(n) => send_frame(
                        &o.pool,
                        &o.frame[..n],
                        underlay.config.uplink,
                        tx,
                        port_ids,
                        queue,
                        stats,
                    ),
                    ArpOutcome::Consumed => {}
                    ArpOutcome::Malformed => stats.drop_packets(DropReason::Malformed, 1),
                    ArpOutcome::NotArp => stats.drop_packets(DropReason::UplinkNotTunnel, 1),
                }
                continue;
            }
            Err(e) => {
                stats.drop_tunnel(&e);
                continue;
            }
        };
        let tail = m.data_len().saturating_sub(d.inner_offset + d.inner_len);
        if !m.adj(d.inner_offset as u16) || !m.trim(tail as u16) {
            stats.drop_tunnel(&TunnelError::InnerTruncated);
            continue;
        }
        match fastpath_packet::extract_into(
            m.data(),
            in_port as u16,
            &mut staged.keys[i],
            &mut staged.layouts[i],
        ) {
            Ok(()) => {
                let meta = d.metadata;
                if !staged.keys[i].set_tunnel(d.vni, meta.ingress_port, meta.egress_port) {
                    stats.drop_tunnel(&TunnelError::VniOutOfRange(d.vni));
                    continue;
                }
                staged.keyed(i, &o.lcore);
            }
            Err(e) => count_parse_drop(e, stats),
        }
    }
}

/// Sends a frame built in a buffer (ARP, ICMP) from a fresh mbuf.
#[cold]
fn send_frame(
    pool: &Mempool,
    frame: &[u8],
    out: PortIndex,
    tx: &mut [TxBuffer],
    port_ids: &[u16],
    queue: u16,
    stats: &LcoreStats,
) {
    match Mbuf::from_bytes(pool, frame) {
        Some(p) => enqueue(p, out, tx, port_ids, queue, stats),
        None => stats.drop_packets(DropReason::NoMbuf, 1),
    }
}

/// The parts of a worker a tunnelled copy needs.
struct TunnelSend<'a> {
    underlay: &'a Underlay,
    program: &'a crate::ovn::Program,
    pool: &'a Mempool,
    /// Scratch for ARP requests and ICMP answers.
    frame: &'a mut Vec<u8>,
    throttle: &'a mut ArpThrottle,
    tsc_hz: u64,
    now: u64,
}

impl<'a> TunnelSend<'a> {
    /// The parts, when the worker has an uplink and a program.
    #[inline(always)]
    fn of(
        underlay: &'a Option<Arc<Underlay>>,
        program: &'a Option<Arc<crate::ovn::Program>>,
        pool: &'a Mempool,
        frame: &'a mut Vec<u8>,
        throttle: &'a mut ArpThrottle,
        tsc_hz: u64,
        now: u64,
    ) -> Option<TunnelSend<'a>> {
        Some(TunnelSend {
            underlay: underlay.as_deref()?,
            program: program.as_deref()?,
            pool,
            frame,
            throttle,
            tsc_hz,
            now,
        })
    }
}

/// Encapsulates `pkt` (the inner frame, rewritten) for the remote chassis
/// of `t` and queues it on the uplink. An inner packet too big for the
/// uplink is answered with "fragmentation needed" / "packet too big" on
/// `reply_port` (the port it came from) when the sender can be told; an
/// unresolved next hop drops the packet and asks for it with ARP (at most
/// ten times a second per worker and next hop).
#[allow(clippy::too_many_arguments)]
fn send_tunnelled(
    mut pkt: Mbuf,
    t: &crate::ovn::cache::TunnelOut,
    reply_port: Option<PortIndex>,
    ts: &mut TunnelSend<'_>,
    tx: &mut [TxBuffer],
    port_ids: &[u16],
    queue: u16,
    stats: &LcoreStats,
) {
    let Some(chassis) = ts.program.chassis.get(usize::from(t.chassis)) else {
        stats.drop_packets(DropReason::OvnRemoteOutport, 1);
        return;
    };
    let uplink = ts.underlay.config.uplink;
    let encap = match ts.underlay.encap(chassis, t) {
        Ok(e) => e,
        Err(NextHopError::NoRoute(_)) => {
            stats.drop_packets(DropReason::TunnelNoRoute, 1);
            return;
        }
        Err(NextHopError::Unresolved(hop)) => {
            stats.drop_packets(DropReason::TunnelNeighborUnresolved, 1);
            if ts.throttle.should_request(hop, ts.now, ts.tsc_hz / 10) {
                ts.frame.resize(crate::underlay::ARP_FRAME_LEN, 0);
                if let Some(n) = ts.underlay.arp_request(hop, ts.frame) {
                    send_frame(ts.pool, &ts.frame[..n], uplink, tx, port_ids, queue, stats);
                }
            }
            return;
        }
    };
    match tunnel::check_mtu(pkt.data(), ts.underlay.config.mtu, false) {
        MtuVerdict::Fits => {}
        MtuVerdict::SendTooBig { mtu } => {
            answer_too_big(&pkt, mtu, reply_port, ts, tx, port_ids, queue, stats);
            stats.drop_packets(DropReason::TunnelInnerTooBig, 1);
            return;
        }
        MtuVerdict::Drop => {
            stats.drop_packets(DropReason::TunnelInnerTooBig, 1);
            return;
        }
    }
    let hl = encap.header_len();
    let inner_len = pkt.data_len();
    if pkt.prepend(hl as u16).is_none() {
        stats.drop_tunnel(&TunnelError::NoHeadroom {
            needed: hl,
            available: usize::from(pkt.headroom()),
        });
        return;
    }
    if let Err(e) = tunnel::encapsulate_in_place(pkt.data_mut(), hl, inner_len, &encap) {
        stats.drop_tunnel(&e);
        return;
    }
    enqueue(pkt, uplink, tx, port_ids, queue, stats);
}

/// Answers an inner packet too big for the tunnel, back on the port it
/// came from, from the address it was sent to (as Linux answers for a
/// bridged tunnel).
#[cold]
#[allow(clippy::too_many_arguments)]
fn answer_too_big(
    pkt: &Mbuf,
    mtu: u16,
    reply_port: Option<PortIndex>,
    ts: &mut TunnelSend<'_>,
    tx: &mut [TxBuffer],
    port_ids: &[u16],
    queue: u16,
    stats: &LcoreStats,
) {
    let Some(port) = reply_port else {
        return;
    };
    let Ok((key, _)) = fastpath_packet::extract(pkt.data(), 0) else {
        return;
    };
    let dst = std::net::Ipv6Addr::from(key.dst());
    let responder = tunnel::Responder {
        mac: key.eth_dst(),
        ipv4: dst
            .to_ipv4_mapped()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        ipv6: dst,
    };
    ts.frame.resize(2048, 0);
    match tunnel::too_big_reply(pkt.data(), mtu, &responder, ts.frame) {
        Ok(n) => send_frame(ts.pool, &ts.frame[..n], port, tx, port_ids, queue, stats),
        Err(e) => stats.drop_tunnel(&e),
    }
}

/// Stage 4: one staged packet through the OVN pipeline: cache (or
/// interpreter), rewrite, copies for extra outputs, generated packets.
/// Returns whether the decision was a cache hit (the caller counts a
/// burst's hits at once).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn ovn_packet(
    mut m: Mbuf,
    staged: &Staged,
    index: usize,
    o: &mut OvnWorker,
    tx: &mut [TxBuffer],
    port_ids: &[u16],
    queue: u16,
    stats: &LcoreStats,
    now: u64,
) -> bool {
    let (Some(key), Some(&layout), Some(&probe)) = (
        staged.keys.get(index),
        staged.layouts.get(index),
        staged.probes.get(index),
    ) else {
        return false;
    };
    let pkt_len = m.pkt_len();
    let OvnWorker {
        lcore,
        pool,
        frame,
        conntrack,
        meter_view,
        tsc_hz,
        underlay,
        arp_throttle,
        program,
        clock_ns,
        ..
    } = o;
    let ct = crate::ovn::lcore::CtInput {
        engine: conntrack,
        now_ns: *clock_ns,
        frame: Some((&layout, m.data())),
        ip_len: u32::from(layout.end.saturating_sub(layout.l3)),
    };
    let Some(d) = lcore.decide_hashed(key, probe, pkt_len, now, &stats.cache, Some(ct)) else {
        stats.drop_packets(DropReason::OvnNoProgram, 1);
        return false;
    };
    let hit = d.hit;
    // QoS: every meter of the decision polices the packet (hits too).
    if let Some(view) = meter_view.as_ref() {
        for key in d.meters() {
            if view.police(*key, pkt_len, now) == Some(crate::meter::Verdict::Drop) {
                stats.drop_packets(DropReason::QosMeterDrop, 1);
                return hit;
            }
        }
    }
    for t in d.frame_nat {
        if crate::conntrack::apply_translation(m.data_mut(), &layout, t).is_err() {
            stats.drop_packets(DropReason::CtNatRewrite, 1);
            return hit;
        }
    }
    // The port a packet came in on (none for one from the tunnel).
    let in_port = key.tunnel().is_none().then(|| usize::from(key.in_port()));
    for g in d.generated {
        let built = crate::ovn::generate::build(g.kind, &g.vector, m.data(), &layout, frame);
        if built.is_err() {
            stats.drop_packets(DropReason::OvnGenerate, 1);
            continue;
        }
        let Some(p) = Mbuf::from_bytes(pool, frame) else {
            stats.drop_packets(DropReason::NoMbuf, 1);
            continue;
        };
        let Some(t) = g.tunnel else {
            enqueue(p, usize::from(g.port), tx, port_ids, queue, stats);
            continue;
        };
        match TunnelSend::of(underlay, program, pool, frame, arp_throttle, *tsc_hz, now) {
            Some(mut ts) => send_tunnelled(p, &t, in_port, &mut ts, tx, port_ids, queue, stats),
            None => stats.drop_packets(DropReason::OvnRemoteOutport, 1),
        }
    }
    let outs = &d.entry.outputs;
    if outs.is_empty() {
        if let Some(dr) = d.entry.drop {
            count_entry_drop(dr, stats);
        }
        return hit;
    }
    let last = outs.len() - 1;
    let mut original = Some(m);
    let mut ts = TunnelSend::of(underlay, program, pool, frame, arp_throttle, *tsc_hz, now);
    for (i, out) in outs.iter().enumerate() {
        let pkt = if i == last {
            original.take()
        } else {
            original.as_ref().and_then(|m| m.copy(pool))
        };
        let Some(mut pkt) = pkt else {
            stats.drop_packets(DropReason::NoMbuf, 1);
            continue;
        };
        if out.rewrite.apply(pkt.data_mut(), &layout).is_err() {
            stats.drop_packets(DropReason::OvnRewrite, 1);
            continue;
        }
        match (&out.tunnel, ts.as_mut()) {
            (None, _) => enqueue(pkt, usize::from(out.port), tx, port_ids, queue, stats),
            (Some(t), Some(ts)) => send_tunnelled(pkt, t, in_port, ts, tx, port_ids, queue, stats),
            (Some(_), None) => stats.drop_packets(DropReason::OvnRemoteOutport, 1),
        }
    }
    hit
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
