//! Counters of the data plane: per lcore, per port and per drop reason.
//!
//! Every counter has exactly one writer (the lcore that owns it), so it is
//! bumped with a relaxed load and store (plain `mov` on x86-64, no locked
//! instruction); readers on the control thread load it relaxed. Nothing here
//! allocates or locks after start-up. Clearing is done by readers keeping a
//! baseline, never by writing into a live counter.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A single-writer counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (owner lcore only).
    #[inline(always)]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    /// Sets the value (owner lcore only).
    #[inline(always)]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
    /// Reads the value (any thread).
    #[inline(always)]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

macro_rules! drop_reasons {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, )*) => {
        /// Why the data plane dropped a packet. Declared once: the enum, the
        /// names and the counter slots all come from this list.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum DropReason {
            $( $(#[$doc])* $variant, )*
        }
        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[ $( DropReason::$variant, )* ];
            /// Number of reasons.
            pub const COUNT: usize = Self::ALL.len();
            /// The reason's name in counters and traces.
            pub const fn name(self) -> &'static str {
                match self { $( DropReason::$variant => $name, )* }
            }
            /// Counter slot.
            #[inline(always)]
            pub const fn index(self) -> usize {
                self as usize
            }
        }
    };
}

drop_reasons! {
    /// The output device did not take the packet (tx ring full or link down).
    TxFull = "tx_full",
    /// The pipeline has no output for the input port.
    NoOutput = "no_output",
    /// The frame could not be parsed (the packet layer names the header).
    Malformed = "malformed",
    /// OVN: no table generation with a loaded program yet.
    OvnNoProgram = "ovn_no_program",
    /// OVN: a `drop` action.
    OvnDropAction = "ovn_drop_action",
    /// OVN: a table had no matching flow.
    OvnNoMatch = "ovn_no_match",
    /// OVN: the actions ended without `output` or `next`.
    OvnImplicitDrop = "ovn_implicit_drop",
    /// OVN: an action the interpreter cannot execute (also counted by name).
    OvnUnsupportedAction = "ovn_unsupported_action",
    /// OVN: `outport == inport` without `flags.loopback`.
    OvnLoopback = "ovn_loopback",
    /// OVN: the outport is no port or group of the datapath.
    OvnUnknownOutport = "ovn_unknown_outport",
    /// OVN: `ip.ttl--` on a TTL of 0 or 1.
    OvnTtlExpired = "ovn_ttl_expired",
    /// OVN: more nested calls than the interpreter allows.
    OvnDepthLimit = "ovn_depth_limit",
    /// OVN: the receiving port is no logical port of the program.
    OvnUnknownInport = "ovn_unknown_inport",
    /// OVN: the pipeline changed a header the fastpath cannot rewrite.
    OvnRewrite = "ovn_rewrite_unsupported",
    /// OVN: the logical output port has no local fastpath port and no
    /// tunnel reaches it (a port bound nowhere, a chassis without a Geneve
    /// encap, or a fastpath without a `[tunnel]` uplink).
    OvnRemoteOutport = "ovn_remote_outport",
    /// OVN: a generated packet (ARP, ICMP, ND) could not be built.
    OvnGenerate = "ovn_generate_failed",
    /// OVN: no mbuf for a copy or a generated packet.
    NoMbuf = "no_mbuf",
    /// Conntrack: the connection's shard is full.
    CtTableFull = "ct_table_full",
    /// Conntrack: no free NAT address/port in the range.
    CtNatExhausted = "ct_nat_exhausted",
    /// Conntrack: the reply tuple is taken by another (NATed) connection.
    CtTupleConflict = "ct_tuple_conflict",
    /// Conntrack: the NAT address family differs from the packet's.
    CtNatFamily = "ct_nat_family",
    /// Conntrack: concurrent commits of one tuple kept racing.
    CtContended = "ct_contended",
    /// Conntrack: a NAT translation could not be written into the frame.
    CtNatRewrite = "ct_nat_rewrite",
    /// QoS: a `set_meter` policer dropped the packet above its rate.
    QosMeterDrop = "qos_meter_drop",
    /// Tunnel: a Geneve packet was refused (also counted by its reason).
    Tunnel = "tunnel",
    /// Tunnel: the next hop towards the remote chassis has not answered
    /// ARP yet (a request was sent).
    TunnelNeighborUnresolved = "tunnel_neighbor_unresolved",
    /// Tunnel: the inner packet does not fit the uplink MTU and cannot be
    /// answered with "fragmentation needed" (IPv4 without DF).
    TunnelInnerTooBig = "tunnel_inner_too_big",
    /// Tunnel: no route to the remote chassis (outside the uplink's
    /// subnet without a gateway, or not IPv4).
    TunnelNoRoute = "tunnel_no_route",
    /// Uplink: a frame that is neither Geneve to this chassis nor ARP.
    UplinkNotTunnel = "uplink_not_tunnel",
}

impl DropReason {
    /// The counter of a conntrack engine refusal.
    pub fn of_ct_error(e: crate::conntrack::CtError) -> DropReason {
        use crate::conntrack::CtError;
        match e {
            CtError::TableFull => DropReason::CtTableFull,
            CtError::NatExhausted => DropReason::CtNatExhausted,
            CtError::TupleConflict => DropReason::CtTupleConflict,
            CtError::NatFamily => DropReason::CtNatFamily,
            CtError::Contended => DropReason::CtContended,
        }
    }
}

/// Counter names of the drops at an unsupported OVN action:
/// `ovn_unsupported_<action>`, by `UNSUPPORTED_ACTIONS` index.
pub static UNSUPPORTED_DROP_NAMES: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| {
        fastpath_tables::ovn::UNSUPPORTED_ACTIONS
            .iter()
            .map(|a| &*Box::leak(format!("ovn_unsupported_{a}").into_boxed_str()))
            .collect()
    });

impl LcoreStats {
    /// Counts a drop at unsupported action `index` (and under the general
    /// reason).
    #[inline]
    pub fn drop_unsupported(&self, index: u16) {
        self.drop_packets(DropReason::OvnUnsupportedAction, 1);
        let last = self.unsupported_drops.len().saturating_sub(1);
        if let Some(c) = self
            .unsupported_drops
            .get(usize::from(index))
            .or(self.unsupported_drops.get(last))
        {
            c.add(1);
        }
    }

    /// Counts a refused tunnel packet (and under the general reason).
    #[cold]
    pub fn drop_tunnel(&self, e: &crate::tunnel::TunnelError) {
        if let crate::tunnel::TunnelError::Packet(p) = e {
            self.parse_drops[p.index()].add(1);
            return self.drop_packets(DropReason::Malformed, 1);
        }
        self.drop_packets(DropReason::Tunnel, 1);
        if let Some(c) = crate::tunnel::DROP_REASONS
            .iter()
            .position(|n| *n == e.name())
            .and_then(|i| self.tunnel_drops.get(i))
        {
            c.add(1);
        }
    }
}

/// Counters of one port as seen by one lcore.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PortCounters {
    /// Packets received.
    pub rx_packets: Counter,
    /// Bytes received.
    pub rx_bytes: Counter,
    /// Packets transmitted.
    pub tx_packets: Counter,
    /// Bytes transmitted.
    pub tx_bytes: Counter,
    /// Packets the device refused.
    pub tx_dropped: Counter,
}

/// Counters of one worker lcore.
#[derive(Debug)]
#[repr(align(64))]
pub struct LcoreStats {
    /// The lcore id.
    pub lcore: u32,
    /// Rx queues it polls, as `port:queue` (fixed at start).
    pub queues: Vec<String>,
    /// Packets received and processed.
    pub packets: Counter,
    /// TSC cycles of polls that returned packets (rx, processing and tx).
    pub busy_cycles: Counter,
    /// TSC cycles of polls that returned nothing, and of idle sleeps.
    pub idle_cycles: Counter,
    /// Poll rounds over all of the lcore's queues.
    pub iterations: Counter,
    /// Table generation in use (0 when none).
    pub table_generation: Counter,
    /// The kernel's id of the lcore's thread (0 until it runs), for its
    /// scheduling counters in `/proc`.
    pub thread_id: Counter,
    /// Per-port counters, by port index.
    pub ports: Box<[PortCounters]>,
    /// Drops by reason, by [`DropReason::index`].
    pub drops: Box<[Counter]>,
    /// Drops of malformed frames by the packet layer's parse error index.
    pub parse_drops: Box<[Counter]>,
    /// OVN drops at an unsupported action, by
    /// `fastpath_tables::ovn::UNSUPPORTED_ACTIONS` index.
    pub unsupported_drops: Box<[Counter]>,
    /// Refused tunnel packets, by `crate::tunnel::DROP_REASONS` index.
    pub tunnel_drops: Box<[Counter]>,
    /// Flow cache counters.
    pub cache: CacheCounters,
    /// Where the cycles of sampled busy polls went, stage by stage.
    pub stages: StageCounters,
}

/// The stages of a busy poll, in order, as [`StageCounters`] and
/// `fastpathctl lcores --stages` name them: the rx burst; parsing every
/// frame into its flow key (with its hash, and the tunnel's decapsulation
/// on the uplink); prefetching each key's flow-cache slot; deciding,
/// rewriting and queueing each packet; the tx bursts and the poll's
/// counters. The `xconnect` pipeline neither parses nor prefetches: its
/// `decide` is the move of the burst to the output's buffer.
pub const STAGES: [&str; 5] = ["rx", "parse", "prefetch", "decide", "tx"];

/// Indices into [`STAGES`], for [`StageClock::end`].
pub mod stage {
    /// The rx burst.
    pub const RX: usize = 0;
    /// Flow keys and hashes.
    pub const PARSE: usize = 1;
    /// Flow-cache slots.
    pub const PREFETCH: usize = 2;
    /// Cache or pipeline, rewrite, queueing.
    pub const DECIDE: usize = 3;
}

/// One busy poll in this many is timed stage by stage (five more reads of
/// the time-stamp counter, a few cycles per packet of that poll), so that
/// the breakdown costs the others nothing but a counter.
pub const STAGE_SAMPLE_EVERY: u64 = 16;

/// TSC cycles of the sampled busy polls per stage of [`STAGES`], and the
/// packets of those polls: cycles per packet of a stage is one over the
/// other. Sampling every [`STAGE_SAMPLE_EVERY`]th poll rather than timing
/// each keeps the time-stamp reads off the other polls; over the millions
/// of polls of a second the sample is large.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct StageCounters {
    /// Cycles per stage.
    pub cycles: [Counter; STAGES.len()],
    /// Packets of the sampled polls.
    pub packets: Counter,
    /// Sampled polls.
    pub polls: Counter,
}

/// The time-stamp counter at each boundary between the [`STAGES`] of one
/// busy poll, when the poll is sampled (see [`STAGE_SAMPLE_EVERY`]); a
/// poll that is not sampled reads nothing.
#[derive(Debug, Clone, Copy)]
pub struct StageClock {
    on: bool,
    /// `at[0]` the poll's start, `at[i + 1]` the end of stage `i`.
    at: [u64; STAGES.len() + 1],
}

impl StageClock {
    /// The clock of a poll that started at `t0`; `poll` counts the
    /// lcore's busy polls.
    #[inline(always)]
    pub fn new(poll: u64, t0: u64) -> StageClock {
        let mut at = [0; STAGES.len() + 1];
        at[0] = t0;
        StageClock {
            on: poll.is_multiple_of(STAGE_SAMPLE_EVERY),
            at,
        }
    }

    /// Marks the end of stage `stage` (an index into [`STAGES`]); a stage
    /// not marked lasted nothing.
    #[inline(always)]
    pub fn end(&mut self, stage: usize) {
        if self.on {
            if let Some(t) = self.at.get_mut(stage + 1) {
                *t = crate::dpdk::rdtsc();
            }
        }
    }

    /// Adds the poll's stages, of `packets` packets, to `counters` (the
    /// poll ended at `t_end`).
    #[inline(always)]
    pub fn record(mut self, t_end: u64, packets: u64, counters: &StageCounters) {
        if !self.on {
            return;
        }
        self.at[STAGES.len()] = t_end;
        let mut last = self.at[0];
        for (c, t) in counters.cycles.iter().zip(&self.at[1..]) {
            // An unmarked stage ends where the one before it ended.
            let end = (*t).max(last);
            c.add(end - last);
            last = end;
        }
        counters.packets.add(packets);
        counters.polls.add(1);
    }
}

/// Counters of one lcore's flow cache.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct CacheCounters {
    /// Packets forwarded (or dropped) from a cache entry.
    pub hits: Counter,
    /// Packets no entry served: served by a megaflow, or run through the
    /// interpreter.
    pub misses: Counter,
    /// Of the misses, packets a megaflow served (no interpreter run).
    pub megaflow_hits: Counter,
    /// Megaflows with conntrack calls whose replay answered otherwise than
    /// the preview promised (a commit refused for the packet, a race with
    /// another lcore): the interpreter ran the packet instead.
    pub megaflow_diverged: Counter,
    /// Entries replaced to make room.
    pub evictions: Counter,
    /// Entries of an older generation re-run through the interpreter.
    pub revalidations: Counter,
    /// Entries in the cache now.
    pub entries: Counter,
}

impl CacheCounters {
    /// Counts a packet whose cached entry could not serve it and was made
    /// again: a revalidation when a table change made it stale, else a
    /// miss.
    #[inline]
    pub fn count_rerun(&self, by_generation: bool) {
        if by_generation {
            self.revalidations.add(1);
        } else {
            self.misses.add(1);
        }
    }
}

impl LcoreStats {
    /// Counters for an lcore that may touch `nports` ports.
    pub fn new(lcore: u32, queues: Vec<String>, nports: usize) -> Self {
        LcoreStats {
            lcore,
            queues,
            packets: Counter::default(),
            busy_cycles: Counter::default(),
            idle_cycles: Counter::default(),
            iterations: Counter::default(),
            table_generation: Counter::default(),
            thread_id: Counter::default(),
            ports: (0..nports).map(|_| PortCounters::default()).collect(),
            drops: (0..DropReason::COUNT).map(|_| Counter::default()).collect(),
            parse_drops: (0..fastpath_packet::ParseError::COUNT)
                .map(|_| Counter::default())
                .collect(),
            unsupported_drops: (0..fastpath_tables::ovn::UNSUPPORTED_ACTIONS.len())
                .map(|_| Counter::default())
                .collect(),
            tunnel_drops: (0..crate::tunnel::DROP_REASONS.len())
                .map(|_| Counter::default())
                .collect(),
            cache: CacheCounters::default(),
            stages: StageCounters::default(),
        }
    }

    /// Counts `n` drops under `reason`.
    #[inline(always)]
    pub fn drop_packets(&self, reason: DropReason, n: u64) {
        self.drops[reason.index()].add(n);
    }
}

/// A point-in-time copy of one lcore's counters, for reporting.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LcoreSnapshot {
    /// Packets.
    pub packets: u64,
    /// Busy cycles.
    pub busy_cycles: u64,
    /// Idle cycles.
    pub idle_cycles: u64,
    /// Iterations.
    pub iterations: u64,
    /// Per-port `[rx_packets, rx_bytes, tx_packets, tx_bytes, tx_dropped]`.
    pub ports: Vec<[u64; 5]>,
    /// Drops by reason name.
    pub drops: Vec<(&'static str, u64)>,
    /// Flow cache `[hits, misses, evictions, revalidations, megaflow hits]`.
    pub cache: [u64; 6],
    /// Cycles of the sampled polls per stage ([`STAGES`]).
    pub stage_cycles: [u64; STAGES.len()],
    /// Packets of the sampled polls.
    pub stage_packets: u64,
    /// Sampled polls.
    pub stage_polls: u64,
}

impl LcoreStats {
    /// Copies the counters.
    pub fn snapshot(&self) -> LcoreSnapshot {
        let mut drops: Vec<(&'static str, u64)> = DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.drops[r.index()].get()))
            .collect();
        for e in fastpath_packet::ParseError::ALL.iter() {
            drops.push((e.name(), self.parse_drops[e.index()].get()));
        }
        for (name, c) in UNSUPPORTED_DROP_NAMES
            .iter()
            .zip(self.unsupported_drops.iter())
        {
            drops.push((name, c.get()));
        }
        for (name, c) in crate::tunnel::DROP_REASONS
            .iter()
            .zip(self.tunnel_drops.iter())
        {
            drops.push((name, c.get()));
        }
        LcoreSnapshot {
            packets: self.packets.get(),
            busy_cycles: self.busy_cycles.get(),
            idle_cycles: self.idle_cycles.get(),
            iterations: self.iterations.get(),
            cache: [
                self.cache.hits.get(),
                self.cache.misses.get(),
                self.cache.evictions.get(),
                self.cache.revalidations.get(),
                self.cache.megaflow_hits.get(),
                self.cache.megaflow_diverged.get(),
            ],
            ports: self
                .ports
                .iter()
                .map(|p| {
                    [
                        p.rx_packets.get(),
                        p.rx_bytes.get(),
                        p.tx_packets.get(),
                        p.tx_bytes.get(),
                        p.tx_dropped.get(),
                    ]
                })
                .collect(),
            drops,
            stage_cycles: std::array::from_fn(|k| self.stages.cycles[k].get()),
            stage_packets: self.stages.packets.get(),
            stage_polls: self.stages.polls.get(),
        }
    }
}

impl LcoreSnapshot {
    /// `self - base`, counter by counter (saturating).
    pub fn since(&self, base: &LcoreSnapshot) -> LcoreSnapshot {
        LcoreSnapshot {
            packets: self.packets.saturating_sub(base.packets),
            busy_cycles: self.busy_cycles.saturating_sub(base.busy_cycles),
            idle_cycles: self.idle_cycles.saturating_sub(base.idle_cycles),
            iterations: self.iterations.saturating_sub(base.iterations),
            cache: std::array::from_fn(|k| self.cache[k].saturating_sub(base.cache[k])),
            stage_cycles: std::array::from_fn(|k| {
                self.stage_cycles[k].saturating_sub(base.stage_cycles[k])
            }),
            stage_packets: self.stage_packets.saturating_sub(base.stage_packets),
            stage_polls: self.stage_polls.saturating_sub(base.stage_polls),
            ports: self
                .ports
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let b = base.ports.get(i).copied().unwrap_or_default();
                    std::array::from_fn(|k| p[k].saturating_sub(b[k]))
                })
                .collect(),
            drops: self
                .drops
                .iter()
                .map(|(n, v)| {
                    let b = base
                        .drops
                        .iter()
                        .find(|(bn, _)| bn == n)
                        .map(|x| x.1)
                        .unwrap_or(0);
                    (*n, v.saturating_sub(b))
                })
                .collect(),
        }
    }

    /// Cycles per packet of each of [`STAGES`] over the sampled polls
    /// (zeros without any).
    pub fn stage_cycles_per_packet(&self) -> [f64; STAGES.len()] {
        std::array::from_fn(|k| {
            if self.stage_packets == 0 {
                0.0
            } else {
                self.stage_cycles[k] as f64 / self.stage_packets as f64
            }
        })
    }

    /// Packets per sampled poll (0 without any).
    pub fn packets_per_poll(&self) -> f64 {
        if self.stage_polls == 0 {
            0.0
        } else {
            self.stage_packets as f64 / self.stage_polls as f64
        }
    }

    /// Busy cycles per packet (0 without packets).
    pub fn cycles_per_packet(&self) -> f64 {
        if self.packets == 0 {
            0.0
        } else {
            self.busy_cycles as f64 / self.packets as f64
        }
    }
}

/// The kernel's id of the calling thread, from `/proc/thread-self`.
pub fn current_thread_id() -> Option<u64> {
    std::fs::read_link("/proc/thread-self")
        .ok()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}

/// How many times the kernel took the CPU from thread `tid` of this
/// process while it could still run (`nonvoluntary_ctxt_switches`): a
/// polling lcore alone on its CPU sees next to none.
pub fn thread_preemptions(tid: u64) -> Option<u64> {
    if tid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    preemptions_in_status(&status)
}

/// `nonvoluntary_ctxt_switches` of a `/proc/.../status` text.
fn preemptions_in_status(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reason_table_is_consistent() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let names: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), DropReason::COUNT);
    }

    #[test]
    fn a_sampled_poll_splits_its_cycles_by_stage() {
        let c = StageCounters::default();
        // Poll 1 is not sampled: it reads no clock and records nothing.
        let mut off = StageClock::new(1, 100);
        off.end(0);
        off.record(200, 32, &c);
        assert_eq!(c.packets.get(), 0);
        // Poll 16 is: stages end where they were marked, an unmarked stage
        // (here prefetch) lasted nothing, and tx runs to the poll's end.
        let mut on = StageClock::new(STAGE_SAMPLE_EVERY, 1000);
        on.at[1] = 1050;
        on.at[2] = 1080;
        on.at[4] = 1200;
        on.record(1300, 32, &c);
        let cycles: Vec<u64> = c.cycles.iter().map(|x| x.get()).collect();
        assert_eq!(cycles, [50, 30, 0, 120, 100]);
        assert_eq!((c.packets.get(), c.polls.get()), (32, 1));
        // Marks read the clock in order.
        let mut live = StageClock::new(0, crate::dpdk::rdtsc());
        for stage in 0..STAGES.len() - 1 {
            live.end(stage);
        }
        let marked = &live.at[..STAGES.len()];
        assert!(marked.windows(2).all(|w| w[0] <= w[1]), "{marked:?}");
    }

    #[test]
    fn snapshot_since_subtracts() {
        let s = LcoreStats::new(1, vec![], 2);
        s.packets.add(10);
        s.busy_cycles.add(1000);
        s.ports[1].tx_packets.add(3);
        s.drop_packets(DropReason::TxFull, 2);
        let base = s.snapshot();
        s.packets.add(5);
        s.busy_cycles.add(400);
        s.ports[1].tx_packets.add(4);
        s.drop_packets(DropReason::TxFull, 1);
        let d = s.snapshot().since(&base);
        assert_eq!(d.packets, 5);
        assert_eq!(d.ports[1][2], 4);
        assert_eq!(d.cycles_per_packet(), 80.0);
        assert_eq!(d.drops.iter().find(|x| x.0 == "tx_full").unwrap().1, 1);
    }

    #[test]
    fn preemptions_come_from_the_status_line_of_that_name() {
        let status =
            "Name:\tfastpath\nvoluntary_ctxt_switches:\t4012\nnonvoluntary_ctxt_switches:\t37\n";
        assert_eq!(preemptions_in_status(status), Some(37));
        assert_eq!(preemptions_in_status("voluntary_ctxt_switches:\t4\n"), None);
        assert_eq!(
            preemptions_in_status("nonvoluntary_ctxt_switches:\tmany\n"),
            None
        );
        // This thread's own count is readable.
        let me = current_thread_id().unwrap();
        assert!(thread_preemptions(me).is_some());
        assert_eq!(thread_preemptions(0), None);
    }
}
