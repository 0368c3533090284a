//! Start-up and shut-down of the fastpath process: EAL, mempool, ports,
//! workers on their lcores, the control thread, and a clean stop on
//! SIGTERM/SIGINT that releases ports, sockets and hugepage memory.

use crate::config::Config;
use crate::control::{ControlServer, Handler};
use crate::dpdk::{self, Eal, EthPort, Mempool, MempoolConfig, PortConfig};
use crate::ovn::lcore::OvnLcore;
use crate::ovn::{Interpreter, Learned};
use crate::pipeline::Pipeline;
use crate::stats::{LcoreSnapshot, LcoreStats};
use crate::tables::{TablesShared, Watcher, WorkerTables, WORKER_ROLE_BASE};
use crate::worker::{FlowDump, LcoreCommand, OvnWorker, RxQueue, Worker};
use anyhow::{bail, Context, Result};
use crossbeam::channel::Sender;
use crossbeam::queue::ArrayQueue;
use fastpath_api::{
    FlowInfo, LcoreFlows, LcoreInfo, LearnedBinding, PortCounters, PortInfo, Request, Response,
    SectionInfo, Stats, TableReaderInfo, TablesInfo, TraceOutput, TraceResult,
};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What the control thread reads.
struct State {
    ports: Arc<Vec<EthPort>>,
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

    fn port_counters(&self, snaps: &[LcoreSnapshot]) -> Vec<PortCounters> {
        let mut out: Vec<PortCounters> = vec![PortCounters::default(); self.ports.len()];
        for s in snaps {
            for (i, p) in s.ports.iter().enumerate() {
                if let Some(o) = out.get_mut(i) {
                    o.rx_packets += p[0];
                    o.rx_bytes += p[1];
                    o.tx_packets += p[2];
                    o.tx_bytes += p[3];
                    o.tx_dropped += p[4];
                }
            }
        }
        for (i, port) in self.ports.iter().enumerate() {
            let hw = port.stats();
            out[i].rx_missed = hw.imissed + hw.rx_nombuf;
        }
        out
    }

    fn lcore_infos(&self, snaps: &[LcoreSnapshot]) -> Vec<LcoreInfo> {
        self.lcores
            .iter()
            .zip(snaps)
            .map(|(l, s)| {
                let total = s.busy_cycles + s.idle_cycles;
                LcoreInfo {
                    lcore_id: l.lcore,
                    queues: l.queues.clone(),
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
                    cache_entries: l.cache.entries.get(),
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
                                        format!(
                                            "output:{}(port {}) {}",
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
        let (key, _) = match fastpath_packet::extract(&frame, fp) {
            Ok(x) => x,
            Err(e) => {
                return Response::error(format!("the packet does not parse: {}", e.description()))
            }
        };
        let mut it = Interpreter::new();
        it.tracing = true;
        it.run(&program, index, &key, frame.len() as u32);
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
                let counters = self.port_counters(&snaps);
                let ports: Vec<PortInfo> = self
                    .ports
                    .iter()
                    .zip(counters)
                    .map(|(p, c)| {
                        let link = p.link();
                        let m = p.mac();
                        PortInfo {
                            port_id: p.id(),
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
                let counters = self.port_counters(&snaps);
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
                    ports: self
                        .ports
                        .iter()
                        .map(|p| p.name().to_string())
                        .zip(counters)
                        .collect(),
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
            Request::ClearStats => {
                *self.baseline.lock() = self.lcores.iter().map(|l| l.snapshot()).collect();
                Response::ok(&serde_json::json!({"cleared": true}))
            }
        }
    }
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
    let ports = Arc::new(ports);
    let port_ids: Vec<u16> = ports.iter().map(|p| p.id()).collect();
    let pipeline = Pipeline::from_config(&cfg);

    let worker_lcores: Vec<u32> = cfg.workers.iter().map(|w| w.lcore).collect();
    let tables = cfg
        .tables
        .path
        .as_ref()
        .map(|p| TablesShared::new(p, &worker_lcores));
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
    let tsc_hz = dpdk::tsc_hz();
    let learned_queue = Arc::new(ArrayQueue::new(LEARNED_QUEUE));
    let mut commands = Vec::new();
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
        let stats = Arc::new(LcoreStats::new(w.lcore, names, ports.len()));
        lcore_stats.push(stats.clone());
        let ovn = match &pipeline {
            Pipeline::Ovn { cache_entries } => {
                let (tx, rx) = crossbeam::channel::bounded(4);
                commands.push((w.lcore, tx));
                Some(OvnWorker {
                    lcore: OvnLcore::new(*cache_entries, learned_queue.clone()),
                    pool: pool.clone(),
                    commands: rx,
                    frame: Vec::with_capacity(2048),
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
            },
        ));
    }

    let state = Arc::new(State {
        ports: ports.clone(),
        lcores: lcore_stats,
        pipeline: pipeline.name(),
        started: Instant::now(),
        tsc_hz,
        baseline: Mutex::new(Vec::new()),
        tables: tables.clone(),
        commands,
        learned_queue,
        learned: Mutex::new(VecDeque::new()),
    });
    let watcher_thread = match watcher {
        Some(w) => Some(
            std::thread::Builder::new()
                .name("fp-tables".into())
                .spawn(move || w.run())?,
        ),
        None => None,
    };
    let server = ControlServer::bind(&cfg.control.socket)
        .with_context(|| format!("binding control socket {}", cfg.control.socket.display()))?;
    let control_stop = Arc::new(AtomicBool::new(false));
    let control = {
        let stop = control_stop.clone();
        let handler: Arc<dyn Handler> = state.clone();
        std::thread::Builder::new()
            .name("fp-control".into())
            .spawn(move || {
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
    if let Some(t) = &tables {
        t.stop.store(true, Ordering::Relaxed);
    }
    if let Some(w) = watcher_thread {
        let _ = w.join();
    }
    drop(state);
    match Arc::try_unwrap(ports) {
        Ok(ports) => drop(ports),
        Err(_) => log::warn!("ports still referenced at shutdown"),
    }
    match Arc::try_unwrap(pool) {
        Ok(pool) => drop(pool),
        Err(_) => log::warn!("mempool still referenced at shutdown"),
    }
    drop(eal);
    log::info!("fastpath stopped");
    Ok(())
}
