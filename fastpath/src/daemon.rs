//! Start-up and shut-down of the fastpath process: EAL, mempool, ports,
//! workers on their lcores, the control thread, and a clean stop on
//! SIGTERM/SIGINT that releases ports, sockets and hugepage memory.
//!
//! Also owns the port table: the configured ports and the run-time ports
//! the control socket adds and removes (`AddPort`/`RemovePort`), each at a
//! stable fastpath port index (the index the tables' port map uses). The
//! control thread creates and frees devices; workers only learn of them
//! through `worker::PortCommand`s, and a device is freed only after every
//! worker acknowledged it no longer uses it.
//!
//! And the node's shared OVN state: one connection table ([`Conntrack`],
//! sized by `[conntrack]`) with its load-balancer affinity table, expired
//! by a housekeeping thread off the lcores with a bounded budget per pass,
//! and one QoS [`MeterBank`] the table watcher keeps in step with the
//! program's `set_meter`s. The control socket lists, counts and flushes
//! connections; traces classify against the live table read-only.

use crate::config::Config;
use crate::conntrack::{ct_state, format_tuple, Conntrack, CtFilter};
use crate::control::{ControlServer, Handler};
use crate::dpdk::{self, Eal, EthPort, Mempool, MempoolConfig, PortConfig};
use crate::meter::MeterBank;
use crate::ovn::ct_engine::{self, ConntrackEngine, LbAffinity, Mode};
use crate::ovn::lcore::OvnLcore;
use crate::ovn::{Interpreter, Learned};
use crate::pipeline::Pipeline;
use crate::stats::{LcoreSnapshot, LcoreStats};
use crate::tables::{TablesShared, Watcher, WorkerTables, WORKER_ROLE_BASE};
use crate::worker::{FlowDump, LcoreCommand, OvnWorker, PortCommand, RxQueue, Worker};
use anyhow::{bail, Context, Result};
use crossbeam::channel::Sender;
use crossbeam::queue::ArrayQueue;
use fastpath_api::{
    AddedPort, ConntrackCount, ConntrackEntry, ConntrackFilter, ConntrackFlushed, ConntrackList,
    FlowInfo, LcoreFlows, LcoreInfo, LearnedBinding, PortCounters, PortInfo, RemovedPort, Request,
    Response, RuntimePortKind, SectionInfo, Stats, TableReaderInfo, TablesInfo, TraceOutput,
    TraceResult,
};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Number of fastpath port indexes (configured and run-time ports share
/// them; the per-lcore port counters are sized for all of them).
pub const MAX_PORTS: usize = 256;
const _: () = assert!(MAX_PORTS <= fastpath_packet::flowkey::TUNNEL_IN_PORT as usize);

/// The uplink MTU when neither `[tunnel] mtu` nor the port's `mtu` is set.
pub const DEFAULT_UPLINK_MTU: u16 = 1500;

/// Descriptors per queue of a run-time port.
const RUNTIME_DESC: u16 = 1024;

/// Rx descriptors per queue of a run-time tap. The tap driver fills its rx
/// ring with mbufs when the queue is set up, so with 1 024 the default pool
/// (16 383 mbufs) held 15 pods with one worker and 7 with two. A kernel
/// pod's tap is read one frame per system call, at most a burst per poll:
/// 128 posted buffers keep up, and the pool holds 64 pods per worker.
const RUNTIME_TAP_RX_DESC: u16 = 128;

/// How long the control thread waits for a worker's acknowledgement.
const WORKER_ACK: std::time::Duration = std::time::Duration::from_secs(5);

/// One port at its fastpath index.
struct PortSlot {
    port: EthPort,
    /// The request it was created from; None for a configured port.
    runtime: Option<RuntimePortKind>,
    /// For a run-time port: the rx queue each worker (by position) polls.
    polled: Vec<Option<u16>>,
}

/// Why a run-time port request is refused.
#[derive(Debug, thiserror::Error)]
pub enum PortRequestError {
    /// The port name is empty, too long, or has control characters.
    #[error("port name {0:?} is not usable (1 to 255 printable characters)")]
    BadName(String),
    /// A kernel interface name is not valid.
    #[error("interface name {0:?} is not valid (1 to 15 bytes, no '/', ',', '=', ':' or spaces)")]
    BadInterface(String),
    /// The vhost-user socket path cannot be used.
    #[error("vhost-user socket {path:?}: {reason}")]
    BadSocket {
        /// The path given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The name exists with another kind or endpoint.
    #[error("port {name:?} already exists as {existing}")]
    Conflict {
        /// Port name.
        name: String,
        /// What it is.
        existing: String,
    },
    /// Another port uses the same socket or interface.
    #[error("{endpoint} is already used by port {other:?}")]
    EndpointInUse {
        /// Socket path or interface.
        endpoint: String,
        /// The port using it.
        other: String,
    },
    /// Every port index is taken.
    #[error("no free port index (all {MAX_PORTS} are in use)")]
    Full,
    /// DPDK's own port table is full: the DPDK build caps ethdev ports.
    #[error("DPDK port table full: this DPDK build allows {max} ports (RTE_MAX_ETHPORTS); {in_use} in use")]
    DpdkPortTableFull {
        /// RTE_MAX_ETHPORTS of the linked DPDK.
        max: usize,
        /// Ports the fastpath holds.
        in_use: usize,
    },
    /// The device could not be created or set up.
    #[error("{0}")]
    Device(#[from] crate::dpdk::PortError),
    /// The device has fewer tx queues than there are workers.
    #[error("port {name:?}: the device has {got} tx queue(s) but {need} workers need one each")]
    TxQueues {
        /// Port name.
        name: String,
        /// Queues the device has.
        got: u16,
        /// Workers.
        need: u16,
    },
    /// A configured port cannot be removed at run time.
    #[error("port {0:?} is configured, not a run-time port; it cannot be removed")]
    Configured(String),
    /// A worker did not acknowledge in time; the device is left as is.
    #[error("lcore {lcore} did not acknowledge the change of port {name:?}; the device is kept")]
    NoAck {
        /// Port name.
        name: String,
        /// The lcore.
        lcore: u32,
    },
}

fn valid_iface(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b',' | b'=' | b':'))
}

/// The DPDK devargs of a run-time port at `index`, after checking its
/// parameters.
pub fn runtime_devargs(
    index: usize,
    kind: &RuntimePortKind,
    queues: u16,
) -> Result<String, PortRequestError> {
    match kind {
        RuntimePortKind::VhostUser { socket, client } => {
            let bad = |reason: &str| PortRequestError::BadSocket {
                path: socket.clone(),
                reason: reason.into(),
            };
            if socket.is_empty() || socket.contains(',') || socket.chars().any(char::is_control) {
                return Err(bad("empty, or has a comma or control character"));
            }
            let path = std::path::Path::new(socket);
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            if !dir.is_dir() {
                return Err(bad(&format!("directory {} does not exist", dir.display())));
            }
            if path.file_name().is_none() {
                return Err(bad("no file name"));
            }
            Ok(format!(
                "net_vhost_fp{index},iface={socket},client={},queues={queues}",
                u8::from(*client)
            ))
        }
        RuntimePortKind::Tap { iface } => {
            if !valid_iface(iface) {
                return Err(PortRequestError::BadInterface(iface.clone()));
            }
            Ok(format!("net_tap_fp{index},iface={iface}"))
        }
        RuntimePortKind::AfPacket { iface } => {
            if !valid_iface(iface) {
                return Err(PortRequestError::BadInterface(iface.clone()));
            }
            Ok(format!(
                "net_af_packet_fp{index},iface={iface},qpairs={queues}"
            ))
        }
    }
}

/// The socket path or interface of a run-time port.
fn endpoint(kind: &RuntimePortKind) -> &str {
    match kind {
        RuntimePortKind::VhostUser { socket, .. } => socket,
        RuntimePortKind::Tap { iface } | RuntimePortKind::AfPacket { iface } => iface,
    }
}

/// What the control thread reads.
struct State {
    /// Ports by fastpath index (`MAX_PORTS` slots).
    ports: Mutex<Vec<Option<PortSlot>>>,
    /// The packet pool run-time ports take their rx buffers from.
    pool: Arc<Mempool>,
    /// Port-set channels of the workers, in worker order.
    port_commands: Vec<(u32, Sender<PortCommand>)>,
    lcores: Vec<Arc<LcoreStats>>,
    pipeline: &'static str,
    started: Instant,
    tsc_hz: u64,
    /// Baseline per lcore, taken by `clear-stats`.
    baseline: Mutex<Vec<LcoreSnapshot>>,
    /// The compiled tables, when configured.
    tables: Option<Arc<TablesShared>>,
    /// Command channels of the OVN workers, by lcore.
    commands: Vec<(u32, Sender<LcoreCommand>)>,
    /// Bindings the workers learned (drained into `learned`).
    learned_queue: Arc<ArrayQueue<Learned>>,
    /// The most recent learned bindings.
    learned: Mutex<VecDeque<Learned>>,
    /// The connection table of the process.
    conntrack: Arc<Conntrack>,
    /// Load-balancer affinity bindings.
    affinity: Arc<LbAffinity>,
    /// The Geneve uplink, when configured.
    underlay: Option<Arc<crate::underlay::Underlay>>,
    /// Its port name.
    uplink_name: String,
}

/// Entries `conntrack list` returns when the request names no limit.
const CT_LIST_DEFAULT: usize = 1000;
/// How often the housekeeping thread runs an expiry pass.
const CT_EXPIRE_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The conntrack clock: nanoseconds of the TSC (the same on every lcore
/// and on the control thread).
pub fn ct_now(tsc_hz: u64) -> u64 {
    ct_engine::tsc_to_ns(dpdk::rdtsc(), tsc_hz)
}

fn ct_filter(f: &ConntrackFilter) -> Result<CtFilter, String> {
    let addr = match &f.addr {
        None => None,
        Some(a) => Some(
            a.parse()
                .map_err(|_| format!("{a:?} is not an IPv4 or IPv6 address"))?,
        ),
    };
    Ok(CtFilter {
        zone: f.zone,
        addr,
        port: f.port,
        proto: f.proto,
    })
}

/// Learned bindings kept for `LearnedBindings`.
const LEARNED_KEPT: usize = 4096;
/// Capacity of the queue from the workers.
const LEARNED_QUEUE: usize = 4096;

impl State {
    fn snapshots(&self) -> Vec<LcoreSnapshot> {
        let base = self.baseline.lock();
        self.lcores
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let s = l.snapshot();
                match base.get(i) {
                    Some(b) => s.since(b),
                    None => s,
                }
            })
            .collect()
    }

    /// Counters of every present port, by index.
    fn port_counters(
        &self,
        ports: &[Option<PortSlot>],
        snaps: &[LcoreSnapshot],
    ) -> Vec<(usize, PortCounters)> {
        ports
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| {
                let slot = slot.as_ref()?;
                let mut o = PortCounters::default();
                for s in snaps {
                    if let Some(p) = s.ports.get(i) {
                        o.rx_packets += p[0];
                        o.rx_bytes += p[1];
                        o.tx_packets += p[2];
                        o.tx_bytes += p[3];
                        o.tx_dropped += p[4];
                    }
                }
                let hw = slot.port.stats();
                o.rx_missed = hw.imissed + hw.rx_nombuf;
                Some((i, o))
            })
            .collect()
    }

    /// The rx queues of run-time ports worker `w` polls, as `name:queue`.
    fn runtime_queues(&self, w: usize) -> Vec<String> {
        self.ports
            .lock()
            .iter()
            .flatten()
            .filter_map(|slot| {
                let q = slot.polled.get(w).copied().flatten()?;
                Some(format!("{}:{q}", slot.port.name()))
            })
            .collect()
    }

    fn lcore_infos(&self, snaps: &[LcoreSnapshot]) -> Vec<LcoreInfo> {
        self.lcores
            .iter()
            .zip(snaps)
            .enumerate()
            .map(|(w, (l, s))| {
                let total = s.busy_cycles + s.idle_cycles;
                let mut queues = l.queues.clone();
                queues.extend(self.runtime_queues(w));
                LcoreInfo {
                    lcore_id: l.lcore,
                    queues,
                    packets: s.packets,
                    busy_cycles: s.busy_cycles,
                    idle_cycles: s.idle_cycles,
                    iterations: s.iterations,
                    cycles_per_packet: s.cycles_per_packet(),
                    busy_percent: if total == 0 {
                        0.0
                    } else {
                        100.0 * s.busy_cycles as f64 / total as f64
                    },
                    table_generation: l.table_generation.get(),
                    cache_hits: s.cache[0],
                    cache_misses: s.cache[1],
                    cache_evictions: s.cache[2],
                    cache_revalidations: s.cache[3],
                    cache_megaflow_hits: s.cache[4],
                    cache_megaflow_diverged: s.cache[5],
                    cache_entries: l.cache.entries.get(),
                    preemptions: crate::stats::thread_preemptions(l.thread_id.get()),
                    stages: crate::stats::STAGES
                        .iter()
                        .zip(s.stage_cycles_per_packet())
                        .map(|(stage, c)| fastpath_api::StageCycles {
                            stage: stage.to_string(),
                            cycles_per_packet: c,
                        })
                        .collect(),
                    stage_packets: s.stage_packets,
                    packets_per_poll: s.packets_per_poll(),
                }
            })
            .collect()
    }
}

impl State {
    fn tables_info(&self) -> TablesInfo {
        let Some(t) = &self.tables else {
            return TablesInfo::default();
        };
        let mut info = TablesInfo {
            path: Some(t.path.display().to_string()),
            lcores: self
                .lcores
                .iter()
                .map(|l| (l.lcore, l.table_generation.get()))
                .collect(),
            refused: t
                .refusals()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            ..Default::default()
        };
        if let Some(reader) = t.reader.load_full() {
            info.open = true;
            info.published_generation = reader.generation();
            info.readers = reader
                .readers()
                .into_iter()
                .map(|r| TableReaderInfo {
                    index: r.index,
                    pid: r.pid,
                    role: match r.role {
                        fastpath_tables::CONTROL_ROLE => "watcher".into(),
                        x if x >= WORKER_ROLE_BASE => format!("lcore {}", x - WORKER_ROLE_BASE),
                        x => format!("role {x}"),
                    },
                    generation: r.generation,
                    heartbeat_age_ms: r.heartbeat_age_ns / 1_000_000,
                })
                .collect();
        }
        if let Some(snap) = t.snapshot.load_full() {
            let sum = snap.summary();
            info.generation = sum.generation;
            info.publish_time_ns = sum.publish_time_ns;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            info.age_secs = now.saturating_sub(sum.publish_time_ns) as f64 / 1e9;
            info.sections = sum
                .sections
                .iter()
                .map(|e| SectionInfo {
                    name: fastpath_tables::SectionKind(e.kind).name().to_string(),
                    kind: e.kind,
                    count: e.count,
                    bytes: e.length,
                })
                .collect();
        }
        info
    }

    fn tables_dump(&self, section: &str) -> Response {
        let Some(t) = &self.tables else {
            return Response::error("the fastpath runs without tables ([tables] path is not set)");
        };
        let Some(snap) = t.snapshot.load_full() else {
            return Response::error(format!(
                "no table generation loaded yet from {}",
                t.path.display()
            ));
        };
        let kind = match fastpath_tables::SectionKind::from_name(section) {
            Some(k) => k,
            None => match section.parse::<u32>() {
                Ok(n) => fastpath_tables::SectionKind(n),
                Err(_) => return Response::error(format!("unknown section {section:?}")),
            },
        };
        match snap.dump(kind) {
            Some(text) => Response::ok(&text),
            None => Response::error(format!(
                "generation {} has no section {section:?}",
                snap.generation()
            )),
        }
    }
}

impl State {
    /// Asks every OVN worker for something and collects the answers.
    fn ask_workers<T>(&self, make: impl Fn(Sender<T>) -> LcoreCommand) -> Result<Vec<T>, String> {
        if self.commands.is_empty() {
            return Err(
                "the fastpath does not run the ovn pipeline ([pipeline] kind = \"ovn\")".into(),
            );
        }
        let mut out = Vec::new();
        for (lcore, tx) in &self.commands {
            let (reply, answer) = crossbeam::channel::bounded(1);
            tx.try_send(make(reply))
                .map_err(|_| format!("lcore {lcore} has requests pending; try again"))?;
            match answer.recv_timeout(std::time::Duration::from_secs(5)) {
                Ok(v) => out.push(v),
                Err(_) => return Err(format!("lcore {lcore} did not answer")),
            }
        }
        Ok(out)
    }

    fn flows(&self) -> Response {
        let dumps: Vec<FlowDump> = match self.ask_workers(LcoreCommand::DumpFlows) {
            Ok(d) => d,
            Err(e) => return Response::error(e),
        };
        let hz = self.tsc_hz.max(1) as f64;
        let out: Vec<LcoreFlows> = dumps
            .into_iter()
            .map(|d| {
                let generation = d.program.as_ref().map(|p| p.generation).unwrap_or(0);
                let port_name = |i: u32, built: u64| match d.program.as_ref() {
                    Some(p) if p.generation == built => p
                        .ports
                        .get(i as usize)
                        .map(|p| p.name.clone())
                        .unwrap_or_else(|| format!("#{i}")),
                    _ => format!("#{i}@{built}"),
                };
                LcoreFlows {
                    lcore_id: d.lcore,
                    generation,
                    capacity: d.capacity,
                    flows: d
                        .entries
                        .iter()
                        .map(|(k, e)| FlowInfo {
                            key: crate::ovn::trace::describe_key(k),
                            actions: if e.outputs.is_empty() {
                                format!(
                                    "drop({})",
                                    e.drop.map(|x| x.name()).unwrap_or_else(|| "-".into())
                                )
                            } else {
                                e.outputs
                                    .iter()
                                    .map(|o| {
                                        let geneve = o
                                            .tunnel
                                            .map(|t| {
                                                let chassis = d
                                                    .program
                                                    .as_ref()
                                                    .and_then(|p| {
                                                        p.chassis.get(usize::from(t.chassis))
                                                    })
                                                    .map_or_else(
                                                        || t.chassis.to_string(),
                                                        |c| c.name.clone(),
                                                    );
                                                format!(
                                                    " geneve(chassis={chassis},vni={},in={},out={})",
                                                    t.vni, t.ingress, t.egress
                                                )
                                            })
                                            .unwrap_or_default();
                                        format!(
                                            "output:{}(port {}){geneve} {}",
                                            port_name(o.logical_port, e.generation),
                                            o.port,
                                            crate::ovn::trace::describe_rewrite(k, &o.rewrite)
                                        )
                                    })
                                    .collect::<Vec<_>>()
                                    .join("; ")
                            },
                            generation: e.generation,
                            hits: e.hits,
                            age_secs: d.now_tsc.saturating_sub(e.built_at) as f64 / hz,
                        })
                        .collect(),
                }
            })
            .collect();
        Response::ok(&out)
    }

    fn trace(&self, inport: &str, packet: &str) -> Response {
        let Some(program) = self.tables.as_ref().and_then(|t| t.program.load_full()) else {
            return Response::error("no OVN program loaded yet (no table generation)");
        };
        let Some(index) = program.port_by_name(inport) else {
            return Response::error(format!(
                "no logical port {inport:?} in generation {}",
                program.generation
            ));
        };
        let frame = match crate::ovn::trace::microflow_frame(packet) {
            Ok(f) => f,
            Err(e) => return Response::error(e.to_string()),
        };
        let fp = program.ports[index as usize].fastpath_port.unwrap_or(0);
        let (key, layout) = match fastpath_packet::extract(&frame, fp) {
            Ok(x) => x,
            Err(e) => {
                return Response::error(format!("the packet does not parse: {}", e.description()))
            }
        };
        let mut it = Interpreter::new();
        it.tracing = true;
        // Classified against the live table, read-only: the trace shows
        // the state and NAT each ct action sees and creates nothing.
        let mut ct = ConntrackEngine::new(
            self.conntrack.clone(),
            self.affinity.clone(),
            Mode::ReadOnly,
        );
        ct.begin(
            ct_now(self.tsc_hz),
            u32::from(layout.end.saturating_sub(layout.l3)),
            Some(ct_engine::received_packet(&key, &layout, &frame)),
        );
        it.run_with(&program, index, &key, frame.len() as u32, &mut ct);
        let text = crate::ovn::trace::render(&program, index, &key, &it);
        let v = &it.verdict;
        let outputs = v
            .emissions
            .iter()
            .map(|em| {
                let port = program.ports.get(em.port as usize);
                TraceOutput {
                    port: port.map(|p| p.name.clone()).unwrap_or_default(),
                    fastpath_port: port.and_then(|p| p.fastpath_port),
                    rewrite: match em.generated {
                        Some(g) => format!("generated {g:?}"),
                        None => crate::ovn::rewrite::Rewrite::plan(&key, &em.vector)
                            .map(|rw| crate::ovn::trace::describe_rewrite(&key, &rw))
                            .unwrap_or_else(|e| e.to_string()),
                    },
                }
            })
            .collect();
        Response::ok(&TraceResult {
            text,
            outputs,
            drop: v
                .drop_cause()
                .map(|c| crate::ovn::cache::EntryDrop::Pipeline(c).name()),
        })
    }

    fn conntrack_list(&self, filter: &ConntrackFilter, limit: usize) -> Response {
        let filter = match ct_filter(filter) {
            Ok(f) => f,
            Err(e) => return Response::error(e),
        };
        let limit = if limit == 0 { CT_LIST_DEFAULT } else { limit };
        let now = ct_now(self.tsc_hz);
        let mut views = self.conntrack.list(&filter, limit.saturating_add(1));
        let truncated = views.len() > limit;
        views.truncate(limit);
        let secs = |ns: u64| ns as f64 / 1e9;
        let entries = views
            .into_iter()
            .map(|e| {
                let mut status = vec![if e.status & ct_state::EST != 0 {
                    "est"
                } else {
                    "new"
                }
                .to_string()];
                if e.status & ct_state::SNAT != 0 {
                    status.push("snat".into());
                }
                if e.status & ct_state::DNAT != 0 {
                    status.push("dnat".into());
                }
                ConntrackEntry {
                    zone: e.zone,
                    original: format_tuple(&e.original),
                    reply: format_tuple(&e.reply),
                    state: e.state.to_string(),
                    status,
                    mark: e.mark,
                    label: format!("{:#x}", e.label),
                    idle_secs: secs(now.saturating_sub(e.last_seen)),
                    expires_in_secs: secs(e.expires_at.saturating_sub(now)),
                    packets: e.packets,
                    bytes: e.bytes,
                }
            })
            .collect();
        Response::ok(&ConntrackList { entries, truncated })
    }

    fn tunnel_info(&self) -> fastpath_api::TunnelInfo {
        let Some(u) = &self.underlay else {
            return fastpath_api::TunnelInfo::default();
        };
        let c = &u.config;
        let mac = |m: &[u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
        let program = self.tables.as_ref().and_then(|t| t.program.load_full());
        let chassis = program
            .as_ref()
            .map(|p| {
                p.chassis
                    .iter()
                    .enumerate()
                    .map(|(i, ch)| fastpath_api::RemoteChassisInfo {
                        name: ch.name.clone(),
                        ip: ch.ip.to_string(),
                        port: ch.dst_port,
                        next_hop: match u.next_hop(ch.ip) {
                            Ok(hop) => match u.neighbor(hop) {
                                Some(m) => format!("{hop} {}", mac(&m)),
                                None => format!("{hop} unresolved"),
                            },
                            Err(e) => e.to_string(),
                        },
                        ports: p
                            .ports
                            .iter()
                            .filter(|port| port.chassis == Some(i as u16))
                            .count(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        fastpath_api::TunnelInfo {
            configured: true,
            uplink: self.uplink_name.clone(),
            local_ip: format!("{}/{}", c.ip, c.prefix),
            mac: mac(&c.mac),
            gateway: c.gateway.map(|g| g.to_string()),
            mtu: c.mtu,
            pod_mtu: crate::tunnel::pod_mtu(c.mtu),
            chassis,
            neighbors: u
                .neighbors()
                .into_iter()
                .map(|(ip, m)| (ip.to_string(), mac(&m)))
                .collect(),
        }
    }

    fn learned_bindings(&self) -> Response {
        let mut kept = self.learned.lock();
        while let Some(l) = self.learned_queue.pop() {
            if kept.len() == LEARNED_KEPT {
                kept.pop_front();
            }
            kept.push_back(l);
        }
        let program = self.tables.as_ref().and_then(|t| t.program.load_full());
        let out: Vec<LearnedBinding> = kept
            .iter()
            .map(|l| {
                let dp = program
                    .as_ref()
                    .and_then(|p| p.datapaths.get(l.datapath as usize));
                let port = program.as_ref().and_then(|p| {
                    p.port(l.datapath, l.port_key)
                        .and_then(|i| p.ports.get(i as usize))
                        .map(|x| x.name.clone())
                });
                let ip = std::net::Ipv6Addr::from(l.ip);
                LearnedBinding {
                    datapath: dp.map(|d| d.name.clone()).unwrap_or_default(),
                    port: port.unwrap_or_default(),
                    ip: match l.family {
                        0 => String::new(),
                        4 => ip
                            .to_ipv4_mapped()
                            .map(|a| a.to_string())
                            .unwrap_or_default(),
                        _ => ip.to_string(),
                    },
                    mac: l
                        .mac
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                }
            })
            .collect();
        Response::ok(&out)
    }
}

impl State {
    /// Sends `make(done)` to every worker and waits for each answer.
    fn tell_workers(
        &self,
        name: &str,
        make: impl Fn(usize, Sender<()>) -> PortCommand,
    ) -> Result<(), PortRequestError> {
        let mut waits = Vec::new();
        for (w, (lcore, tx)) in self.port_commands.iter().enumerate() {
            let (done, ack) = crossbeam::channel::bounded(1);
            if tx.send_timeout(make(w, done), WORKER_ACK).is_err() {
                return Err(PortRequestError::NoAck {
                    name: name.to_string(),
                    lcore: *lcore,
                });
            }
            waits.push((*lcore, ack));
        }
        for (lcore, ack) in waits {
            if ack.recv_timeout(WORKER_ACK).is_err() {
                return Err(PortRequestError::NoAck {
                    name: name.to_string(),
                    lcore,
                });
            }
        }
        Ok(())
    }

    fn add_port(
        &self,
        name: &str,
        kind: RuntimePortKind,
        preferred: Option<u16>,
    ) -> Result<AddedPort, PortRequestError> {
        if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
            return Err(PortRequestError::BadName(name.to_string()));
        }
        let mut slots = self.ports.lock();
        for (i, slot) in slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            if slot.port.name() == name {
                return match &slot.runtime {
                    Some(k) if *k == kind => Ok(AddedPort {
                        port_id: i as u16,
                        devargs: slot.port.devargs().to_string(),
                        created: false,
                    }),
                    Some(k) => Err(PortRequestError::Conflict {
                        name: name.to_string(),
                        existing: format!("{k:?}"),
                    }),
                    None => Err(PortRequestError::Conflict {
                        name: name.to_string(),
                        existing: format!("configured port {}", slot.port.devargs()),
                    }),
                };
            }
            if let Some(k) = &slot.runtime {
                if endpoint(k) == endpoint(&kind)
                    && std::mem::discriminant(k) == std::mem::discriminant(&kind)
                {
                    return Err(PortRequestError::EndpointInUse {
                        endpoint: endpoint(&kind).to_string(),
                        other: slot.port.name().to_string(),
                    });
                }
            }
        }
        let index = match preferred.map(usize::from) {
            Some(p) if p < slots.len() && slots[p].is_none() => p,
            _ => slots
                .iter()
                .position(Option::is_none)
                .ok_or(PortRequestError::Full)?,
        };
        let nworkers = self.port_commands.len().max(1) as u16;
        let devargs = runtime_devargs(index, &kind, nworkers)?;
        // Each port is one DPDK ethdev; DPDK refuses a probe past its
        // compile-time cap with an opaque error, so say so first.
        let in_use = slots.iter().filter(|s| s.is_some()).count();
        let max = dpdk_sys::RTE_MAX_ETHPORTS as usize;
        if in_use >= max {
            return Err(PortRequestError::DpdkPortTableFull { max, in_use });
        }
        let started = std::time::Instant::now();
        let port = EthPort::create(
            &PortConfig {
                name: name.to_string(),
                devargs: devargs.clone(),
                rx_queues: nworkers,
                tx_queues: nworkers,
                rx_desc: match kind {
                    RuntimePortKind::Tap { .. } => RUNTIME_TAP_RX_DESC,
                    _ => RUNTIME_DESC,
                },
                tx_desc: RUNTIME_DESC,
                mtu: None,
                promiscuous: true,
            },
            &self.pool,
        )?;
        if port.tx_queues() < nworkers {
            return Err(PortRequestError::TxQueues {
                name: name.to_string(),
                got: port.tx_queues(),
                need: nworkers,
            });
        }
        let polled: Vec<Option<u16>> = (0..nworkers)
            .map(|w| (w < port.rx_queues()).then_some(w))
            .collect();
        let port_id = port.id();
        log::info!(
            "run-time port {name} (index {index}, dpdk {port_id}, driver {}) from {devargs}, created in {:.1} ms",
            port.driver(),
            started.elapsed().as_secs_f64() * 1e3
        );
        slots[index] = Some(PortSlot {
            port,
            runtime: Some(kind),
            polled: polled.clone(),
        });
        drop(slots);
        self.tell_workers(name, |w, done| PortCommand::Attach {
            index,
            port_id,
            rx_queue: polled.get(w).copied().flatten(),
            done,
        })?;
        Ok(AddedPort {
            port_id: index as u16,
            devargs,
            created: true,
        })
    }

    fn remove_port(&self, name: &str) -> Result<RemovedPort, PortRequestError> {
        let index = {
            let slots = self.ports.lock();
            let found = slots.iter().enumerate().find_map(|(i, s)| {
                s.as_ref()
                    .filter(|s| s.port.name() == name)
                    .map(|s| (i, s.runtime.is_some()))
            });
            match found {
                None => return Ok(RemovedPort { port_id: None }),
                Some((_, false)) => return Err(PortRequestError::Configured(name.to_string())),
                Some((i, true)) => i,
            }
        };
        // Every worker lets go of the device before it is freed.
        self.tell_workers(name, |_, done| PortCommand::Detach { index, done })?;
        let slot = self.ports.lock()[index].take();
        if let Some(slot) = slot {
            log::info!(
                "run-time port {name} (index {index}) removed: {}",
                slot.port.devargs()
            );
            drop(slot);
        }
        Ok(RemovedPort {
            port_id: Some(index as u16),
        })
    }
}

impl Handler for State {
    fn handle(&self, req: Request) -> Response {
        match req {
            Request::Ping => Response::ok(&fastpath_api::Pong {
                pid: std::process::id(),
                uptime_secs: self.started.elapsed().as_secs_f64(),
                pipeline: self.pipeline.to_string(),
            }),
            Request::Ports => {
                let snaps = self.snapshots();
                let slots = self.ports.lock();
                let counters = self.port_counters(&slots, &snaps);
                let ports: Vec<PortInfo> = counters
                    .into_iter()
                    .filter_map(|(i, c)| Some((i, slots[i].as_ref()?, c)))
                    .map(|(i, slot, c)| {
                        let p = &slot.port;
                        let link = p.link();
                        let m = p.mac();
                        PortInfo {
                            port_id: i as u16,
                            dpdk_port_id: p.id(),
                            runtime: slot.runtime.is_some(),
                            name: p.name().to_string(),
                            devargs: p.devargs().to_string(),
                            driver: p.driver().to_string(),
                            mac: format!(
                                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                                m[0], m[1], m[2], m[3], m[4], m[5]
                            ),
                            link_up: link.up,
                            link_speed_mbps: link.speed_mbps,
                            rx_queues: p.rx_queues(),
                            tx_queues: p.tx_queues(),
                            mtu: p.mtu(),
                            counters: c,
                            xstats: p.xstats(),
                        }
                    })
                    .collect();
                Response::ok(&ports)
            }
            Request::Stats => {
                let snaps = self.snapshots();
                let port_counters: BTreeMap<String, PortCounters> = {
                    let slots = self.ports.lock();
                    self.port_counters(&slots, &snaps)
                        .into_iter()
                        .filter_map(|(i, c)| Some((slots[i].as_ref()?.port.name().to_string(), c)))
                        .collect()
                };
                let mut drops = BTreeMap::new();
                for s in &snaps {
                    for (name, v) in &s.drops {
                        if *v > 0 {
                            *drops.entry(name.to_string()).or_insert(0) += v;
                        }
                    }
                }
                Response::ok(&Stats {
                    tsc_hz: self.tsc_hz,
                    uptime_secs: self.started.elapsed().as_secs_f64(),
                    ports: port_counters,
                    lcores: self.lcore_infos(&snaps),
                    drops,
                })
            }
            Request::Lcores => {
                let snaps = self.snapshots();
                Response::ok(&self.lcore_infos(&snaps))
            }
            Request::Tables => Response::ok(&self.tables_info()),
            Request::TablesDump { section } => self.tables_dump(&section),
            Request::Flows => self.flows(),
            Request::FlowsFlush => match self.ask_workers(LcoreCommand::FlushFlows) {
                Ok(n) => Response::ok(&serde_json::json!({"flushed": n.iter().sum::<usize>()})),
                Err(e) => Response::error(e),
            },
            Request::Trace { inport, packet } => self.trace(&inport, &packet),
            Request::LearnedBindings => self.learned_bindings(),
            Request::Tunnel => Response::ok(&self.tunnel_info()),
            Request::ConntrackList { filter, limit } => self.conntrack_list(&filter, limit),
            Request::ConntrackCount => Response::ok(&ConntrackCount {
                connections: self.conntrack.len(),
                capacity: self.conntrack.capacity(),
                affinity: self.affinity.len(),
            }),
            Request::ConntrackFlush { filter } => match ct_filter(&filter) {
                Ok(f) => Response::ok(&ConntrackFlushed {
                    flushed: self.conntrack.flush(&f),
                }),
                Err(e) => Response::error(e),
            },
            Request::AddPort {
                name,
                kind,
                preferred_id,
            } => match self.add_port(&name, kind, preferred_id) {
                Ok(a) => Response::ok(&a),
                Err(e) => Response::error(e.to_string()),
            },
            Request::RemovePort { name } => match self.remove_port(&name) {
                Ok(r) => Response::ok(&r),
                Err(e) => Response::error(e.to_string()),
            },
            Request::ClearStats => {
                *self.baseline.lock() = self.lcores.iter().map(|l| l.snapshot()).collect();
                Response::ok(&serde_json::json!({"cleared": true}))
            }
        }
    }
}

/// Housekeeping off the lcores: every [`CT_EXPIRE_EVERY`], one expiry pass
/// over at most `budget` connection slots (the table resumes where the
/// last pass stopped), and once a second the expired affinity bindings.
fn expire_loop(ct: &Conntrack, aff: &LbAffinity, budget: usize, tsc_hz: u64, stop: &AtomicBool) {
    let mut passes: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(CT_EXPIRE_EVERY);
        let now = ct_now(tsc_hz);
        ct.expire(now, budget);
        passes += 1;
        if passes.is_multiple_of(20) {
            aff.expire(now);
        }
    }
}

/// Starts a housekeeping thread: it first moves itself off the worker
/// lcores' CPUs ([`dpdk::pin_control_thread`]), then runs `f` with the CPUs
/// it went to.
fn spawn_housekeeping<T: Send + 'static>(
    name: &str,
    f: impl FnOnce(&[usize]) -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let cpus = dpdk::pin_control_thread();
            f(&cpus)
        })
}

/// Runs the fastpath until SIGTERM/SIGINT (or until `stop` is set).
pub fn run(cfg: Config, stop: Arc<AtomicBool>) -> Result<()> {
    let eal = Eal::init(&cfg.eal.args()).context("starting DPDK")?;
    let enabled = eal.lcores();
    let main = dpdk::main_lcore();
    for w in &cfg.workers {
        if !enabled.contains(&w.lcore) {
            bail!(
                "worker lcore {} is not in the EAL lcore list {:?} (eal.lcores = {:?})",
                w.lcore,
                enabled,
                cfg.eal.lcores
            );
        }
    }
    let nworkers = cfg.workers.len().max(1) as u16;
    let pool = Mempool::new(&MempoolConfig {
        name: "fp_mbufs".into(),
        mbufs: cfg.mempool.mbufs,
        cache_size: cfg.mempool.cache_size,
        data_room: cfg.mempool.data_room,
        socket: -1,
    })
    .map_err(anyhow::Error::msg)?;
    let pool = Arc::new(pool);

    let mut ports = Vec::new();
    for p in &cfg.ports {
        let port = EthPort::create(
            &PortConfig {
                name: p.name.clone(),
                devargs: p.devargs.clone(),
                rx_queues: p.rx_queues,
                tx_queues: nworkers,
                rx_desc: p.rx_desc,
                tx_desc: p.tx_desc,
                mtu: p.mtu,
                promiscuous: p.promiscuous,
            },
            &pool,
        )?;
        if port.tx_queues() < nworkers {
            bail!(
                "port {} has {} tx queue(s) but there are {} workers; each worker needs its own tx queue (for vhost ports raise queues= in the devargs)",
                p.name,
                port.tx_queues(),
                nworkers
            );
        }
        log::info!(
            "port {} (id {}, driver {}) up: {} rx / {} tx queues",
            p.name,
            port.id(),
            port.driver(),
            port.rx_queues(),
            port.tx_queues()
        );
        ports.push(port);
    }
    if ports.len() > MAX_PORTS {
        bail!("{} ports configured; at most {MAX_PORTS}", ports.len());
    }
    let port_ids: Vec<u16> = ports.iter().map(|p| p.id()).collect();
    let pipeline = Pipeline::from_config(&cfg);

    let tsc_hz = dpdk::tsc_hz();
    let conntrack = Arc::new(Conntrack::new(&crate::conntrack::ConntrackConfig {
        huge_pages: cfg.memory.transparent_huge_pages,
        ..cfg.conntrack.engine_config()
    }));
    let affinity = Arc::new(LbAffinity::new(cfg.conntrack.affinity_capacity));
    let meters = Arc::new(MeterBank::new(tsc_hz).context("QoS meters")?);
    let memory = conntrack.memory();
    log::info!(
        "conntrack: {} connections in {} shards, {} MiB of arrays in a {} MiB huge-page arena{}",
        conntrack.capacity(),
        cfg.conntrack.shards,
        memory.used >> 20,
        memory.size >> 20,
        if memory.size == 0 {
            " (none: the table is small)"
        } else {
            ""
        }
    );

    let worker_lcores: Vec<u32> = cfg.workers.iter().map(|w| w.lcore).collect();
    let tables = cfg.tables.path.as_ref().map(|p| {
        let t = TablesShared::new(p, &worker_lcores);
        t.meters.store(Some(meters.clone()));
        t
    });
    let mut watcher = tables.as_ref().map(|t| {
        Watcher::new(
            t.clone(),
            std::time::Duration::from_micros(cfg.tables.poll_us.max(10)),
        )
    });
    if let Some(w) = watcher.as_mut() {
        // A restarted fastpath forwards with the last published tables at once.
        w.try_load();
    }
    let underlay = match &cfg.tunnel {
        Some(t) => {
            let index = cfg
                .port_index(&t.uplink)
                .context("[tunnel] uplink names no port")?;
            let (ip, prefix) = t.address()?;
            let mtu = t.mtu.or(cfg.ports[index].mtu).unwrap_or(DEFAULT_UPLINK_MTU);
            let config = crate::underlay::UnderlayConfig {
                uplink: index,
                mac: ports[index].mac(),
                ip,
                prefix,
                gateway: t.gateway,
                mtu,
            };
            log::info!(
                "tunnel: Geneve on port {} ({}), local {ip}/{prefix}, uplink MTU {mtu}, pod MTU {}",
                t.uplink,
                config.mac.map(|b| format!("{b:02x}")).join(":"),
                crate::tunnel::pod_mtu(mtu)
            );
            Some(Arc::new(crate::underlay::Underlay::new(config)))
        }
        None => None,
    };
    let learned_queue = Arc::new(ArrayQueue::new(LEARNED_QUEUE));
    let mut commands = Vec::new();
    let mut port_commands = Vec::new();
    let mut workers = Vec::new();
    let mut lcore_stats = Vec::new();
    for (i, w) in cfg.workers.iter().enumerate() {
        let mut rx = Vec::new();
        let mut names = Vec::new();
        for spec in &w.rx {
            let r = cfg.resolve_rx(spec)?;
            rx.push(RxQueue {
                port: r.port,
                port_id: port_ids[r.port],
                queue: r.queue,
            });
            names.push(format!("{}:{}", cfg.ports[r.port].name, r.queue));
        }
        let stats = Arc::new(LcoreStats::new(w.lcore, names, MAX_PORTS));
        let (port_tx, port_rx) = crossbeam::channel::bounded(4);
        port_commands.push((w.lcore, port_tx));
        lcore_stats.push(stats.clone());
        let ovn = match &pipeline {
            Pipeline::Ovn {
                cache_entries,
                megaflow_entries,
                insert_inv_prob,
            } => {
                let (tx, rx) = crossbeam::channel::bounded(4);
                commands.push((w.lcore, tx));
                let mut lcore = OvnLcore::new(*cache_entries, learned_queue.clone());
                lcore.set_megaflows(*megaflow_entries);
                lcore.set_insert_one_in(*insert_inv_prob);
                lcore.set_uplink(underlay.as_ref().map(|u| u.config.uplink as u16));
                Some(OvnWorker {
                    lcore,
                    underlay: underlay.clone(),
                    arp_throttle: Default::default(),
                    program: None,
                    conntrack: ConntrackEngine::new(
                        conntrack.clone(),
                        affinity.clone(),
                        Mode::Live,
                    ),
                    meters: meters.clone(),
                    tsc_hz,
                    meter_view: None,
                    pool: pool.clone(),
                    commands: rx,
                    frame: Vec::with_capacity(2048),
                    clock_ns: 0,
                })
            }
            Pipeline::Xconnect(_) => None,
        };
        workers.push((
            w.lcore,
            Worker {
                rx,
                port_ids: port_ids.clone(),
                tx_queue: i as u16,
                pipeline: pipeline.clone(),
                stats,
                stop: stop.clone(),
                idle: cfg.idle.clone(),
                tables: tables
                    .as_ref()
                    .map(|t| WorkerTables::new(t.clone(), w.lcore, tsc_hz)),
                ovn,
                port_commands: port_rx,
            },
        ));
    }
    let mut slots: Vec<Option<PortSlot>> = Vec::with_capacity(MAX_PORTS);
    slots.extend(ports.into_iter().map(|port| {
        Some(PortSlot {
            port,
            runtime: None,
            polled: Vec::new(),
        })
    }));
    slots.resize_with(MAX_PORTS, || None);

    let state = Arc::new(State {
        ports: Mutex::new(slots),
        pool: pool.clone(),
        port_commands,
        lcores: lcore_stats,
        pipeline: pipeline.name(),
        started: Instant::now(),
        tsc_hz,
        baseline: Mutex::new(Vec::new()),
        tables: tables.clone(),
        commands,
        learned_queue,
        learned: Mutex::new(VecDeque::new()),
        conntrack: conntrack.clone(),
        affinity: affinity.clone(),
        underlay,
        uplink_name: cfg
            .tunnel
            .as_ref()
            .map(|t| t.uplink.clone())
            .unwrap_or_default(),
    });
    let expiry_stop = Arc::new(AtomicBool::new(false));
    let expiry = {
        let stop = expiry_stop.clone();
        let ct = conntrack.clone();
        let aff = affinity.clone();
        let budget = cfg.conntrack.expire_budget;
        spawn_housekeeping("fp-ct-expire", move |_| {
            expire_loop(&ct, &aff, budget, tsc_hz, &stop)
        })?
    };
    let watcher_thread = match watcher {
        Some(w) => Some(spawn_housekeeping("fp-tables", move |_| w.run())?),
        None => None,
    };
    let server = ControlServer::bind(&cfg.control.socket)
        .with_context(|| format!("binding control socket {}", cfg.control.socket.display()))?;
    let control_stop = Arc::new(AtomicBool::new(false));
    let control = {
        let stop = control_stop.clone();
        let handler: Arc<dyn Handler> = state.clone();
        spawn_housekeeping("fp-control", move |cpus| {
            log::info!("housekeeping threads (control, tables, conntrack expiry) on CPUs {cpus:?}, off the worker lcores");
            if let Err(e) = server.serve(handler, stop) {
                log::error!("control socket stopped: {e}");
            }
        })?
    };
    log::info!("control socket at {}", cfg.control.socket.display());

    let mut on_main = None;
    let mut launched = Vec::new();
    for (lcore, w) in workers {
        if lcore == main {
            on_main = Some(w);
        } else {
            dpdk::launch_on_lcore(lcore, move || w.run())?;
            launched.push(lcore);
        }
    }
    log::info!(
        "fastpath running ({} worker(s)); stop with SIGTERM or SIGINT",
        cfg.workers.len()
    );
    match on_main {
        Some(w) => {
            w.run();
        }
        None => {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
    for l in launched {
        dpdk::wait_lcore(l);
    }
    control_stop.store(true, Ordering::Relaxed);
    let _ = control.join();
    expiry_stop.store(true, Ordering::Relaxed);
    let _ = expiry.join();
    if let Some(t) = &tables {
        t.stop.store(true, Ordering::Relaxed);
    }
    if let Some(w) = watcher_thread {
        let _ = w.join();
    }
    // The workers have returned: the devices are freed here.
    match Arc::try_unwrap(state) {
        Ok(state) => drop(state),
        Err(_) => log::warn!("port table still referenced at shutdown"),
    }
    match Arc::try_unwrap(pool) {
        Ok(pool) => drop(pool),
        Err(_) => log::warn!("mempool still referenced at shutdown"),
    }
    drop(eal);
    log::info!("fastpath stopped");
    Ok(())
}
