//! Start-up and shut-down of the fastpath process: EAL, mempool, ports,
//! workers on their lcores, the control thread, and a clean stop on
//! SIGTERM/SIGINT that releases ports, sockets and hugepage memory.

use crate::config::Config;
use crate::control::{ControlServer, Handler};
use crate::dpdk::{self, Eal, EthPort, Mempool, MempoolConfig, PortConfig};
use crate::pipeline::Pipeline;
use crate::stats::{LcoreSnapshot, LcoreStats};
use crate::tables::{TablesShared, Watcher, WorkerTables, WORKER_ROLE_BASE};
use crate::worker::{RxQueue, Worker};
use anyhow::{bail, Context, Result};
use fastpath_api::{
    LcoreInfo, PortCounters, PortInfo, Request, Response, SectionInfo, Stats, TableReaderInfo,
    TablesInfo,
};
use parking_lot::Mutex;
use std::collections::BTreeMap;
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
}

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
    drop(pool);
    drop(eal);
    log::info!("fastpath stopped");
    Ok(())
}
