//! The OVN scenarios of `perf run`: `l2` (two pods on one logical switch),
//! `l3` (two pods on two switches behind a logical router) and `new-flows`
//! (the `l3` path with more distinct flows than flow-cache entries, so every
//! packet runs the interpreter). Each starts real NB and SB ovsdb-servers and
//! ovn-northd, builds the topology with `ovn-nbctl`, compiles the Southbound
//! with the real `ovn-bridge compile --once`, measures the xconnect floor and
//! then the fastpath with `--pipeline ovn`, both on the DUT core with pktgen
//! on the other, in the same run.
//!
//! Owns these scenarios only; the generator and the shared start/stop
//! helpers are `runner`'s.

use crate::runner::{
    alternate, floor_round, median_index, plot_path, print_rounds, round_bars, round_label,
    run_pktgen, start_fastpath, stop_fastpath, Better, RoundFigures, RunArgs, SystemResult,
};
use anyhow::{bail, Context, Result};
use fastpath_api::{LcoreInfo, Request, TablesInfo};
use ovsdb::testing::OvnCentral;
use serde::Serialize;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const P1: &str = "50:54:00:00:00:01";
const P2: &str = "50:54:00:00:00:02";
const P3: &str = "50:54:00:00:00:03";
const GW0: &str = "00:00:00:00:ff:01";
const GW1: &str = "00:00:00:00:ff:02";

/// The JSON document of an OVN scenario.
#[derive(Debug, Serialize)]
pub struct OvnReport {
    /// Scenario name.
    pub scenario: String,
    /// Frame size.
    pub size: u16,
    /// Distinct flows offered.
    pub flows: u32,
    /// Flow cache entries per lcore in the OVN run.
    pub flow_cache_entries: usize,
    /// Busy cycles per packet with the OVN pipeline.
    pub cycles_per_packet: f64,
    /// Busy cycles per packet of xconnect (the floor), same run.
    pub floor_cycles_per_packet: f64,
    /// `cycles_per_packet / floor_cycles_per_packet`.
    pub ratio: f64,
    /// Received Mpps with the OVN pipeline.
    pub mpps: f64,
    /// Flow-cache hits and misses during the OVN run.
    pub cache_hits: u64,
    /// Misses.
    pub cache_misses: u64,
    /// Of the misses, packets a megaflow served (no interpreter run).
    pub megaflow_hits: u64,
    /// Misses per second of busy time on the core (new-flows).
    pub new_flows_per_second: Option<f64>,
    /// What the pipeline's own stages (parse, prefetch, decide) add per
    /// packet to the floor's, from the sampled stage split: the part of
    /// the difference the vhost-user bursts do not blur.
    pub pipeline_cycles_per_packet: Option<f64>,
    /// Times the kernel preempted the lcore during the OVN run.
    pub lcore_preemptions: Option<u64>,
    /// Every system measured (of the reported round).
    pub systems: Vec<SystemResult>,
    /// Every round of `--rounds` (one when it is not given); the figures
    /// above are those of the median round.
    pub rounds: Vec<RoundFigures>,
    /// OVS-DPDK with ovn-controller on the same topology and traffic, and
    /// its port-to-port floor (l2 and l3, unless `--no-ovs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ovs: Option<crate::ovs::OvsComparison>,
    /// new-flows: OVS's packets per second of busy time on its PMD core
    /// with the same flows (its exact-match cache missed by most).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ovs_new_flows_per_second: Option<f64>,
}

/// The OVN central of a scenario (`ovsdb::testing::OvnCentral`).
pub(crate) struct Central(pub(crate) OvnCentral);

impl Central {
    pub(crate) fn start() -> Result<Central> {
        Ok(Central(
            OvnCentral::start().context("starting NB, SB and ovn-northd")?,
        ))
    }

    pub(crate) fn nb(&self, args: &[&str]) -> Result<()> {
        self.0
            .nbctl(args)
            .with_context(|| format!("ovn-nbctl {args:?}"))?;
        Ok(())
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.0
            .sync(Duration::from_secs(30))
            .context("ovn-northd never caught up")
    }

    /// sw0 (p1, p2) and sw1 (p3) behind lr0, all bound to hv1.
    fn topology(&self) -> Result<()> {
        self.nb(&["ls-add", "sw0"])?;
        self.nb(&["ls-add", "sw1"])?;
        self.nb(&["lr-add", "lr0"])?;
        self.nb(&["lrp-add", "lr0", "lrp0", GW0, "10.0.0.1/24"])?;
        self.nb(&["lrp-add", "lr0", "lrp1", GW1, "10.0.1.1/24"])?;
        for (sw, lsp, lrp) in [("sw0", "sw0-lr0", "lrp0"), ("sw1", "sw1-lr0", "lrp1")] {
            self.nb(&["lsp-add", sw, lsp])?;
            self.nb(&["lsp-set-type", lsp, "router"])?;
            self.nb(&["lsp-set-addresses", lsp, "router"])?;
            self.nb(&["lsp-set-options", lsp, &format!("router-port={lrp}")])?;
        }
        for (sw, p, m, ip) in [
            ("sw0", "p1", P1, "10.0.0.11"),
            ("sw0", "p2", P2, "10.0.0.12"),
            ("sw1", "p3", P3, "10.0.1.13"),
        ] {
            self.nb(&["lsp-add", sw, p])?;
            self.nb(&["lsp-set-addresses", p, &format!("{m} {ip}")])?;
        }
        self.0
            .sbctl(&["chassis-add", "hv1", "geneve", "127.0.0.1"])
            .context("chassis-add")?;
        self.sync()?;
        for p in ["p1", "p2", "p3"] {
            self.0.sbctl(&["lsp-bind", p, "hv1"]).context("lsp-bind")?;
        }
        self.sync()
    }
}

/// Compiles the Southbound of `central` for chassis hv1 into `tables` with
/// the real `ovn-bridge compile --once`, binding logical ports to fastpath
/// port ids.
pub(crate) fn compile_tables(
    central: &Central,
    tables: &Path,
    ports: &[(&str, u16)],
) -> Result<()> {
    let mut cmd = Command::new(crate::sibling("ovn-bridge"));
    cmd.args(["compile", "--sb", &central.0.sb.remote, "--chassis", "hv1"])
        .arg("--tables")
        .arg(tables)
        .arg("--once");
    for (lsp, id) in ports {
        cmd.args(["--port", &format!("{lsp}={id}")]);
    }
    let out = cmd.output().context(
        "running ovn-bridge compile (build it with `cargo build --release --workspace --bins`)",
    )?;
    if !out.status.success() {
        bail!(
            "ovn-bridge compile failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// How many times the kernel has preempted the (first) lcore so far.
pub(crate) fn lcore_preemptions(client: &mut fastpath_api::Client) -> Result<Option<u64>> {
    let lcores: Vec<LcoreInfo> = client.call_as(&Request::Lcores)?;
    Ok(lcores.first().and_then(|l| l.preemptions))
}

/// Preemptions between two readings, printed: a measurement the kernel
/// interrupted often is not the fastpath's own figure.
pub(crate) fn report_preemptions(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    let n = after.zip(before).map(|(a, b)| a.saturating_sub(b));
    if let Some(n) = n {
        eprintln!(
            "perf: the kernel preempted the fastpath's lcore {n} time(s) during the measurement"
        );
    }
    n
}

/// Waits until the fastpath has loaded a generation of the tables.
pub(crate) fn wait_tables(client: &mut fastpath_api::Client) -> Result<()> {
    let start = Instant::now();
    loop {
        let t: TablesInfo = client.call_as(&Request::Tables)?;
        if t.generation > 0 {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("the fastpath never loaded the tables");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `perf run l2|l3|new-flows`.
/// One measurement of the OVN pipeline.
struct OvnPhase {
    system: SystemResult,
    lcore: LcoreInfo,
    stats: fastpath_api::Stats,
    preemptions: Option<u64>,
}

/// The fastpath's arguments for the OVN pipeline over the table file
/// `tables` with `cache_entries` flow cache entries per lcore (and no
/// megaflows with `--no-megaflows`).
pub(crate) fn ovn_pipeline_args(
    args: &RunArgs,
    tables: &Path,
    cache_entries: usize,
) -> Vec<String> {
    let mut a = vec![
        "--pipeline".into(),
        "ovn".into(),
        "--tables".into(),
        tables.display().to_string(),
        "--flow-cache-entries".into(),
        cache_entries.to_string(),
    ];
    if args.no_megaflows {
        a.extend(["--megaflow-entries".into(), "0".into()]);
    }
    if let Some(n) = args.insert_inv_prob {
        a.extend(["--flow-cache-insert-inv-prob".into(), n.to_string()]);
    }
    a
}

/// pktgen's addresses: from p1 to p2 on the same switch, or to p3 through
/// the router.
fn frames(routed: bool) -> Vec<String> {
    let (dst_mac, dst_ip) = if routed {
        (GW0, "10.0.1.13")
    } else {
        (P2, "10.0.0.12")
    };
    [
        "--src-mac",
        P1,
        "--dst-mac",
        dst_mac,
        "--src-ip",
        "10.0.0.11",
        "--dst-ip",
        dst_ip,
    ]
    .map(String::from)
    .to_vec()
}

/// Starts the fastpath with the OVN pipeline, sends the scenario's traffic
/// and collects its figures.
fn ovn_phase(
    args: &RunArgs,
    dir: &Path,
    tables: &Path,
    cache_entries: usize,
    routed: bool,
) -> Result<OvnPhase> {
    let fastpath_args = ovn_pipeline_args(args, tables, cache_entries);
    let (fp, mut client) = start_fastpath(args, dir, &fastpath_args)?;
    wait_tables(&mut client)?;
    client.call(&Request::ClearStats)?;
    let preempted_before = lcore_preemptions(&mut client)?;
    let gen = run_pktgen(args, dir, "ovn", &frames(routed))?;
    let lcores: Vec<LcoreInfo> = client.call_as(&Request::Lcores)?;
    let stats: fastpath_api::Stats = client.call_as(&Request::Stats)?;
    stop_fastpath(fp);
    let preemptions =
        report_preemptions(preempted_before, lcores.first().and_then(|l| l.preemptions));
    let lcore = lcores.first().cloned().unwrap_or_default();
    if gen.received == 0 {
        bail!(
            "no packet came through the OVN pipeline; drops: {:?}",
            stats.drops
        );
    }
    let system = SystemResult {
        system: format!("fastpath ovn {}", args.scenario),
        sent: gen.sent,
        received: gen.received,
        mpps: gen.rx_mpps,
        gbps: gen.rx_gbps,
        cycles_per_packet: lcore.cycles_per_packet,
        stages: lcore.stages.clone(),
        packets_per_poll: lcore.packets_per_poll,
    };
    Ok(OvnPhase {
        system,
        lcore,
        stats,
        preemptions,
    })
}

pub fn run(args: &RunArgs, dir: &Path) -> Result<()> {
    let routed = args.scenario != "l2";
    let new_flows = args.scenario == "new-flows";
    eprintln!("perf: starting NB, SB and ovn-northd; building the topology");
    let central = Central::start()?;
    central.topology()?;
    let tables = dir.join("tables");
    let target = if routed { "p3" } else { "p2" };
    compile_tables(&central, &tables, &[("p1", 0), (target, 1)])?;

    // new-flows: a cache much smaller than the flows offered, cycled
    // through in order, so every packet misses.
    let cache_entries = if new_flows {
        (args.flows as usize / 16).max(16)
    } else {
        65536
    };
    let rounds = alternate(
        args.rounds,
        |r| floor_round(args, dir, "", r),
        |r| {
            eprintln!(
                "perf: {}fastpath ovn ({}) on core {}, pktgen on core {}",
                round_label(r, args.rounds),
                args.scenario,
                args.dut_core,
                args.gen_core
            );
            ovn_phase(args, dir, &tables, cache_entries, routed)
        },
    )?;
    let new_flows_per_second = |p: &OvnPhase| {
        let busy_secs = p.lcore.busy_cycles as f64 / p.stats.tsc_hz.max(1) as f64;
        (new_flows && busy_secs > 0.0).then(|| p.lcore.cache_misses as f64 / busy_secs)
    };
    let figures: Vec<RoundFigures> = rounds
        .iter()
        .map(|(floor, p, first)| RoundFigures::new(floor, p.system.cycles_per_packet, *first))
        .collect();
    // new-flows is judged by its rate, the others by their ratio.
    let keys: Vec<f64> = if new_flows {
        rounds
            .iter()
            .map(|(_, p, _)| new_flows_per_second(p).unwrap_or(0.0))
            .collect()
    } else {
        figures.iter().map(|f| f.ratio).collect()
    };
    let better = if new_flows {
        Better::Higher
    } else {
        Better::Lower
    };
    let chosen = median_index(&keys, better).context("no round measured")?;
    let (floor, phase, _) = &rounds[chosen];
    let ovs = if args.no_ovs {
        None
    } else {
        Some(crate::ovs::compare(
            args,
            dir,
            &central,
            ("p1", target),
            &args.scenario,
            &frames(routed),
            |_| Ok(()),
        )?)
    };
    let (ovn, l, stats) = (&phase.system, &phase.lcore, &phase.stats);
    let ratio = figures[chosen].ratio;
    let new_flows_per_second = new_flows_per_second(phase);
    let report = OvnReport {
        scenario: args.scenario.clone(),
        size: args.size,
        flows: args.flows,
        flow_cache_entries: cache_entries,
        cycles_per_packet: ovn.cycles_per_packet,
        floor_cycles_per_packet: floor.cycles_per_packet,
        ratio,
        mpps: ovn.mpps,
        cache_hits: l.cache_hits,
        cache_misses: l.cache_misses,
        megaflow_hits: l.cache_megaflow_hits,
        new_flows_per_second,
        pipeline_cycles_per_packet: crate::runner::pipeline_added(floor, ovn),
        lcore_preemptions: phase.preemptions,
        systems: vec![floor.clone(), ovn.clone()],
        ovs_new_flows_per_second: ovs
            .as_ref()
            .filter(|_| new_flows)
            .map(|o| o.scenario.per_second(stats.tsc_hz)),
        rounds: figures,
        ovs,
    };
    print_rounds(&report.rounds, chosen);
    println!();
    println!(
        "{:<26} {:>12} {:>12} {:>9} {:>12}",
        "SYSTEM", "SENT", "RECEIVED", "MPPS", "CYCLES/PKT"
    );
    for s in &report.systems {
        println!(
            "{:<26} {:>12} {:>12} {:>9.3} {:>12.1}",
            s.system, s.sent, s.received, s.mpps, s.cycles_per_packet
        );
    }
    crate::runner::print_stages(&report.systems);
    println!(
        "\ncache hits {} misses {} (megaflow {}); ratio ovn/xconnect busy cycles per packet: {ratio:.3}",
        l.cache_hits, l.cache_misses, l.cache_megaflow_hits
    );
    if let Some(n) = new_flows_per_second {
        println!("new flows per second per core: {n:.0}");
    }
    if let Some(o) = &report.ovs {
        crate::ovs::print_comparison(floor, ovn, o);
    }
    if let (Some(o), Some(rate)) = (&report.ovs, report.ovs_new_flows_per_second) {
        println!(
            "OVS-DPDK + ovn-controller: {rate:.0} packets per second per core ({} of {} passes \
             missed its exact-match cache)",
            o.scenario.pmd.megaflow_hits + o.scenario.pmd.smc_hits + o.scenario.pmd.upcalls,
            (o.scenario.pmd.packets as f64 * o.scenario.pmd.passes_per_packet).round()
        );
    }
    if !stats.drops.is_empty() {
        println!("drops: {:?}", stats.drops);
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
        eprintln!("perf: wrote {}", p.display());
    }
    let path = plot_path(args);
    let what = match new_flows_per_second {
        Some(n) => format!("every packet a new flow, {:.2} M new flows/s", n / 1e6),
        None => "flow-cache hits".to_string(),
    };
    std::fs::write(
        &path,
        crate::plot::bar_chart(
            &format!(
                "{}: busy cycles per packet, {what}, {}-byte frames",
                args.scenario, args.size
            ),
            "cycles/packet",
            &crate::ovs::with_bars(
                round_bars(
                    &report.rounds,
                    "xconnect floor",
                    &format!("ovn {}", args.scenario),
                ),
                report.ovs.as_ref(),
            ),
        ),
    )?;
    eprintln!("perf: wrote {}", path.display());
    crate::runner::write_stage_plot(
        args,
        &format!("{}: where the busy cycles go, {what}", args.scenario),
        &report.systems,
    )
}
