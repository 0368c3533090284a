//! The fastpath daemon's command line.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::Parser;
use fastpath::config::{Config, PortSection, WorkerSection};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Poll-mode DPDK data plane. Options given here override the config file.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (see fastpath.example.toml).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// EAL lcore list (EAL -l).
    #[arg(long)]
    lcores: Option<String>,
    /// Add a port: NAME=DEVARGS (repeatable).
    #[arg(long = "port", value_name = "NAME=DEVARGS")]
    ports: Vec<String>,
    /// Add a worker: LCORE=PORT[:QUEUE],... (repeatable). A bare LCORE is a
    /// worker that starts with no queue and polls run-time ports.
    #[arg(long = "worker", value_name = "LCORE[=RXQ,...]")]
    workers: Vec<String>,
    /// Pipeline kind: `xconnect` or `ovn`.
    #[arg(long)]
    pipeline: Option<String>,
    /// Flow cache entries per worker (pipeline `ovn`).
    #[arg(long)]
    flow_cache_entries: Option<usize>,
    /// Megaflows per worker (pipeline `ovn`; 0: none).
    #[arg(long)]
    megaflow_entries: Option<usize>,
    /// One in N stateless verdicts a megaflow serves enters the flow
    /// cache (pipeline `ovn`; 1: every one).
    #[arg(long, value_name = "N")]
    flow_cache_insert_inv_prob: Option<u32>,
    /// Add an xconnect pair: A,B (repeatable).
    #[arg(long = "xconnect", value_name = "A,B")]
    xconnect: Vec<String>,
    /// Mbufs in the packet pool.
    #[arg(long)]
    mbufs: Option<u32>,
    /// Data room per mbuf in bytes.
    #[arg(long)]
    data_room: Option<u16>,
    /// Sleep when all queues are empty (for tests, labs, small machines).
    #[arg(long)]
    idle_backoff: bool,
    /// Control socket path.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// EAL --file-prefix.
    #[arg(long)]
    file_prefix: Option<String>,
    /// EAL --in-memory.
    #[arg(long)]
    in_memory: bool,
    /// EAL --no-pci.
    #[arg(long)]
    no_pci: bool,
    /// Extra EAL argument, verbatim (repeatable).
    #[arg(long = "eal-arg", allow_hyphen_values = true)]
    eal_args: Vec<String>,
    /// Shared-memory tables file to follow.
    #[arg(long)]
    tables: Option<PathBuf>,
    /// Geneve uplink: the port facing the underlay (sets `[tunnel] uplink`).
    #[arg(long, requires = "tunnel_ip")]
    tunnel_uplink: Option<String>,
    /// This chassis's tunnel address with prefix length, e.g.
    /// 192.168.100.11/24 (`[tunnel] local_ip`).
    #[arg(long, requires = "tunnel_uplink")]
    tunnel_ip: Option<String>,
    /// Next hop for remote chassis outside the uplink's subnet.
    #[arg(long, requires = "tunnel_uplink")]
    tunnel_gateway: Option<std::net::Ipv4Addr>,
    /// Uplink MTU (default: the port's, else 1500).
    #[arg(long, requires = "tunnel_uplink")]
    tunnel_mtu: Option<u16>,
    /// Print the resolved configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn apply(cli: &Cli, cfg: &mut Config) -> Result<()> {
    if let Some(l) = &cli.lcores {
        cfg.eal.lcores = l.clone();
    }
    for p in &cli.ports {
        let (name, devargs) = p
            .split_once('=')
            .with_context(|| format!("--port {p:?}: expected NAME=DEVARGS"))?;
        cfg.ports.push(PortSection {
            name: name.into(),
            devargs: devargs.into(),
            rx_queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
            mtu: None,
            promiscuous: true,
        });
    }
    for w in &cli.workers {
        let (lcore, rx) = w.split_once('=').unwrap_or((w.as_str(), ""));
        let lcore: u32 = lcore
            .parse()
            .with_context(|| format!("--worker {w:?}: {lcore:?} is not an lcore id"))?;
        cfg.workers.push(WorkerSection {
            lcore,
            rx: rx
                .split(',')
                .filter(|q| !q.trim().is_empty())
                .map(str::to_string)
                .collect(),
        });
    }
    for x in &cli.xconnect {
        let (a, b) = x
            .split_once(',')
            .with_context(|| format!("--xconnect {x:?}: expected A,B"))?;
        cfg.pipeline.xconnect.push([a.into(), b.into()]);
    }
    if let Some(k) = &cli.pipeline {
        cfg.pipeline.kind = k.clone();
    }
    if let Some(n) = cli.flow_cache_entries {
        cfg.pipeline.flow_cache_entries = n;
    }
    if let Some(n) = cli.megaflow_entries {
        cfg.pipeline.megaflow_entries = n;
    }
    if let Some(n) = cli.flow_cache_insert_inv_prob {
        cfg.pipeline.flow_cache_insert_inv_prob = n;
    }
    if let Some(m) = cli.mbufs {
        cfg.mempool.mbufs = m;
    }
    if let Some(d) = cli.data_room {
        cfg.mempool.data_room = d;
    }
    if cli.idle_backoff {
        cfg.idle.backoff = true;
    }
    if let Some(s) = &cli.socket {
        cfg.control.socket = s.clone();
    }
    if let Some(p) = &cli.file_prefix {
        cfg.eal.file_prefix = Some(p.clone());
    }
    if let Some(t) = &cli.tables {
        cfg.tables.path = Some(t.clone());
    }
    if let (Some(uplink), Some(ip)) = (&cli.tunnel_uplink, &cli.tunnel_ip) {
        cfg.tunnel = Some(fastpath::config::TunnelSection {
            uplink: uplink.clone(),
            local_ip: ip.clone(),
            gateway: cli.tunnel_gateway,
            mtu: cli.tunnel_mtu,
        });
    }
    cfg.eal.in_memory |= cli.in_memory;
    cfg.eal.no_pci |= cli.no_pci;
    cfg.eal.extra_args.extend(cli.eal_args.iter().cloned());
    cfg.validate()?;
    Ok(())
}

/// glibc's tunable that makes malloc ask for transparent huge pages.
const HUGETLB_TUNABLE: &str = "glibc.malloc.hugetlb=1";

/// Restarts this process (same pid, same arguments) with
/// [`HUGETLB_TUNABLE`] added to `GLIBC_TUNABLES`, which glibc reads only at
/// start; returns when it is there already or the restart failed (then
/// the tables use ordinary pages).
fn with_huge_page_tables() {
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current
        .split(':')
        .any(|t| t.starts_with("glibc.malloc.hugetlb="))
    {
        log::info!("tables: transparent huge pages asked for (GLIBC_TUNABLES={current})");
        return;
    }
    let tunables = if current.is_empty() {
        HUGETLB_TUNABLE.to_string()
    } else {
        format!("{current}:{HUGETLB_TUNABLE}")
    };
    let error = match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("GLIBC_TUNABLES", tunables)
            .exec(),
        Err(e) => e,
    };
    log::warn!("tables: ordinary pages (could not restart with {HUGETLB_TUNABLE}: {error})");
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let mut cfg = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::from_toml("", "(defaults)")?,
    };
    apply(&cli, &mut cfg)?;
    if cfg.workers.is_empty() {
        anyhow::bail!("no [[worker]] configured: say which lcore polls which rx queues (config [[worker]] or --worker LCORE=PORT,...)");
    }
    if cli.check_config {
        println!("{cfg:#?}");
        println!("EAL arguments: {}", cfg.eal.args().join(" "));
        return Ok(());
    }
    if cfg.memory.transparent_huge_pages {
        with_huge_page_tables();
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    fastpath::daemon::run(cfg, stop)
}
