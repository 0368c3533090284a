//! The conntrack scenarios of `perf run`: `acl-lb` (established UDP
//! connections through a stateful NetworkPolicy ACL and a load balancer)
//! and `new-connections` (every packet opens a connection through the same
//! pipeline). Both start a real OVN central, build the topology with
//! `ovn-nbctl`, compile it with `ovn-bridge compile`, and measure the
//! xconnect floor and the fastpath with `--pipeline ovn` on the DUT core,
//! pktgen on the other, in the same run.
//!
//! The topology is Kube-OVN's: the client p1 (10.0.0.11) on sw0, a
//! ClusterIP-style load balancer 10.96.0.10 on sw0 whose three backends
//! (10.0.1.13-15) are addresses of p3 on sw1, the switches joined by the
//! router lr0, and a NetworkPolicy on p3 as Kube-OVN writes it: a port
//! group, a default deny on ingress and an `allow-related` ingress rule for
//! an address set holding the client. p3 is pktgen's receiving port, so it
//! accepts whichever backend the load balancer picks.
//!
//! Owns these scenarios only; the generator, the start/stop helpers and the
//! OVN central are `runner`'s and `ovn_scenarios`'.

use crate::ovn_scenarios::{
    compile_tables, lcore_preemptions, ovn_pipeline_args, report_preemptions, wait_tables, Central,
};
use crate::ovs::{Ovs, OvsComparison};
use crate::plot;
use crate::runner::{
    alternate, floor_round, median_index, plot_path, print_rounds, round_bars, round_label,
    run_pktgen, start_fastpath, stop_fastpath, Better, GenReport, RoundFigures, RunArgs,
    SystemResult,
};
use anyhow::{bail, Context, Result};
use fastpath_api::{Client, ConntrackCount, ConntrackList, LcoreInfo, Request, Stats};
use serde::Serialize;
use std::path::Path;

const P1: &str = "50:54:00:00:00:01";
const P3: &str = "50:54:00:00:00:03";
const GW0: &str = "00:00:00:00:ff:01";
const GW1: &str = "00:00:00:00:ff:02";
const CLIENT: &str = "10.0.0.11";
const VIP: &str = "10.96.0.10";
const BACKENDS: [&str; 3] = ["10.0.1.13", "10.0.1.14", "10.0.1.15"];
/// Connection counts of `acl-lb` when `--connections` is not given.
const DEFAULT_CONNECTIONS: [u32; 3] = [1, 10_000, 100_000];
/// Connections `new-connections` opens when `--connections` is not given.
const DEFAULT_NEW_CONNECTIONS: u32 = 1_000_000;
/// Packets per second offered while connections are being established.
const WARMUP_RATE: f64 = 1_000_000.0;
/// Warm-up rounds before the state of the connections is reported as is.
const WARMUP_ROUNDS: usize = 20;

/// Figures of one `acl-lb` measurement.
#[derive(Debug, Clone, Serialize)]
pub struct AclLbRun {
    /// Distinct UDP 5-tuples offered (connections through the pipeline).
    pub connections: u32,
    /// Conntrack table capacity configured.
    pub conntrack_capacity: usize,
    /// Conntrack entries after the warm-up (one per connection and zone).
    pub conntrack_entries: usize,
    /// Of those, entries that had seen a reply (`est`).
    pub conntrack_established: usize,
    /// Flow cache entries per lcore.
    pub flow_cache_entries: usize,
    /// Busy cycles per packet with the OVN pipeline.
    pub cycles_per_packet: f64,
    /// Busy cycles per packet of xconnect (the floor), same run.
    pub floor_cycles_per_packet: f64,
    /// `cycles_per_packet / floor_cycles_per_packet`.
    pub ratio: f64,
    /// What the pipeline's own stages (parse, prefetch, decide) add per
    /// packet to the floor's, from the sampled stage split: the part of
    /// the difference the vhost-user bursts do not blur.
    pub pipeline_cycles_per_packet: Option<f64>,
    /// Received Mpps with the OVN pipeline.
    pub mpps: f64,
    /// Flow-cache hits during the measurement.
    pub cache_hits: u64,
    /// Flow-cache misses during the measurement.
    pub cache_misses: u64,
    /// Times the kernel preempted the lcore during the measurement.
    pub lcore_preemptions: Option<u64>,
    /// Every system measured (of the reported round).
    pub systems: Vec<SystemResult>,
    /// Every round of `--rounds` (one when it is not given); the figures
    /// above are those of the round with the median ratio.
    pub rounds: Vec<RoundFigures>,
    /// OVS-DPDK with ovn-controller on the same topology and traffic, and
    /// its port-to-port floor (unless `--no-ovs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ovs: Option<crate::ovs::OvsComparison>,
}

/// The JSON document of `acl-lb`: the top-level figures are those of the
/// largest connection count, `runs` holds every count.
#[derive(Debug, Serialize)]
pub struct AclLbReport {
    /// Scenario name.
    pub scenario: String,
    /// Frame size.
    pub size: u16,
    /// Connections of the largest run.
    pub connections: u32,
    /// Busy cycles per packet of the largest run.
    pub cycles_per_packet: f64,
    /// Floor of the largest run.
    pub floor_cycles_per_packet: f64,
    /// Ratio of the largest run.
    pub ratio: f64,
    /// Received Mpps of the largest run.
    pub mpps: f64,
    /// Every connection count measured.
    pub runs: Vec<AclLbRun>,
}

/// The JSON document of `new-connections`.
#[derive(Debug, Serialize)]
pub struct NewConnectionsReport {
    /// Scenario name.
    pub scenario: String,
    /// Frame size.
    pub size: u16,
    /// Distinct UDP 5-tuples offered, each sent once.
    pub flows: u32,
    /// Packets the fastpath received from the generator (each one a new
    /// connection).
    pub new_connections: u64,
    /// Conntrack entries created (one per connection and zone).
    pub conntrack_entries: usize,
    /// Conntrack table capacity configured.
    pub conntrack_capacity: usize,
    /// Flow cache entries per lcore.
    pub flow_cache_entries: usize,
    /// New connections per second of busy time on the core.
    pub new_connections_per_second: f64,
    /// Busy cycles per packet with the OVN pipeline.
    pub cycles_per_packet: f64,
    /// Busy cycles per packet of xconnect (the floor), same run.
    pub floor_cycles_per_packet: f64,
    /// `cycles_per_packet / floor_cycles_per_packet`.
    pub ratio: f64,
    /// Received Mpps with the OVN pipeline.
    pub mpps: f64,
    /// Flow-cache hits and misses during the run.
    pub cache_hits: u64,
    /// Misses.
    pub cache_misses: u64,
    /// Of the misses, packets a megaflow served (its conntrack calls
    /// replayed, no interpreter run).
    pub megaflow_hits: u64,
    /// Megaflow replays that answered otherwise than their preview (the
    /// interpreter ran those packets).
    pub megaflow_diverged: u64,
    /// Drops by reason during the run.
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Times the kernel preempted the lcore during the run.
    pub lcore_preemptions: Option<u64>,
    /// Every round of `--rounds` (one when it is not given); the figures
    /// above are those of the round with the median rate.
    pub rounds: Vec<RoundFigures>,
    /// Every system measured.
    pub systems: Vec<SystemResult>,
    /// OVS-DPDK with ovn-controller sent the same new connections (its
    /// conntrack flushed before each round), and its port-to-port floor
    /// (unless `--no-ovs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ovs: Option<OvsComparison>,
    /// OVS's new connections per second of busy time on its PMD core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ovs_new_connections_per_second: Option<f64>,
}

impl Central {
    /// sw0 (p1, the load balancer) and sw1 (p3 holding the backends, under
    /// the NetworkPolicy) behind lr0, p1 and p3 bound to hv1.
    fn acl_lb_topology(&self) -> Result<()> {
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
        self.nb(&["lsp-add", "sw0", "p1"])?;
        self.nb(&["lsp-set-addresses", "p1", &format!("{P1} {CLIENT}")])?;
        self.nb(&["lsp-add", "sw1", "p3"])?;
        self.nb(&[
            "lsp-set-addresses",
            "p3",
            &format!("{P3} {}", BACKENDS.join(" ")),
        ])?;
        self.nb(&["lb-add", "lb0", VIP, &BACKENDS.join(",")])?;
        self.nb(&["ls-lb-add", "sw0", "lb0"])?;
        // NetworkPolicy "np" on p3, ingress from the client only.
        self.nb(&["pg-add", "np.perf", "p3"])?;
        self.nb(&[
            "create",
            "Address_Set",
            "name=np.perf.ingress.allow",
            &format!("addresses=\"{CLIENT}\""),
        ])?;
        self.nb(&[
            "acl-add",
            "np.perf",
            "to-lport",
            "1000",
            "outport == @np.perf && ip",
            "drop",
        ])?;
        self.nb(&[
            "acl-add",
            "np.perf",
            "to-lport",
            "2000",
            "outport == @np.perf && ip4.src == $np.perf.ingress.allow",
            "allow-related",
        ])?;
        self.0
            .sbctl(&["chassis-add", "hv1", "geneve", "127.0.0.1"])
            .context("chassis-add")?;
        self.sync()?;
        for p in ["p1", "p3"] {
            self.0.sbctl(&["lsp-bind", p, "hv1"]).context("lsp-bind")?;
        }
        self.sync()
    }
}

/// pktgen's addresses: from the client to the VIP through the gateway.
fn client_frames() -> Vec<String> {
    [
        "--src-mac",
        P1,
        "--dst-mac",
        GW0,
        "--src-ip",
        CLIENT,
        "--dst-ip",
        VIP,
    ]
    .map(String::from)
    .to_vec()
}

/// The smallest power of two at least `n`, and at least `min`.
fn sized(n: usize, min: usize) -> usize {
    n.max(min).next_power_of_two()
}

/// Starts the fastpath with the OVN pipeline, a conntrack table of
/// `capacity` and `cache` flow cache entries.
fn start_ovn(
    args: &RunArgs,
    dir: &Path,
    tables: &Path,
    capacity: usize,
    cache: usize,
) -> Result<(crate::runner::Killer, Client)> {
    let config = dir.join("fastpath-ct.toml");
    std::fs::write(&config, format!("[conntrack]\ncapacity = {capacity}\n"))
        .with_context(|| format!("writing {}", config.display()))?;
    let mut fastpath_args = vec!["--config".into(), config.display().to_string()];
    fastpath_args.extend(ovn_pipeline_args(args, tables, cache));
    let (fp, mut client) = start_fastpath(args, dir, &fastpath_args)?;
    wait_tables(&mut client)?;
    Ok((fp, client))
}

/// Conntrack entries, and how many of them are established.
fn conntrack_states(client: &mut Client, capacity: usize) -> Result<(usize, usize)> {
    let list: ConntrackList = client.call_as(&Request::ConntrackList {
        filter: Default::default(),
        limit: capacity,
    })?;
    let est = list
        .entries
        .iter()
        .filter(|e| e.status.iter().any(|s| s == "est"))
        .count();
    Ok((list.entries.len(), est))
}

fn lcore(client: &mut Client) -> Result<(LcoreInfo, Stats)> {
    let lcores: Vec<LcoreInfo> = client.call_as(&Request::Lcores)?;
    let stats: Stats = client.call_as(&Request::Stats)?;
    Ok((lcores.first().cloned().unwrap_or_default(), stats))
}

/// A run's systems, the floor's name saying which connection count it
/// was measured beside.
fn labelled_systems(r: &AclLbRun) -> Vec<SystemResult> {
    r.systems
        .iter()
        .map(|s| SystemResult {
            system: if s.system.contains(" conn") {
                s.system.clone()
            } else {
                format!("{} ({} conn)", s.system, r.connections)
            },
            ..s.clone()
        })
        .collect()
}

fn ovn_system(name: &str, gen: &GenReport, l: &LcoreInfo) -> SystemResult {
    SystemResult {
        system: name.into(),
        sent: gen.sent,
        received: gen.received,
        mpps: gen.rx_mpps,
        gbps: gen.rx_gbps,
        cycles_per_packet: l.cycles_per_packet,
        stages: l.stages.clone(),
        packets_per_poll: l.packets_per_poll,
    }
}

/// `acl-lb` with `n` connections: `--rounds` rounds of the floor and the
/// scenario; the round of the median ratio, with every round's figures.
fn acl_lb_once(args: &RunArgs, dir: &Path, tables: &Path, n: u32) -> Result<AclLbRun> {
    let run_args = RunArgs {
        flows: n,
        ..args.clone()
    };
    let rounds = alternate(
        args.rounds,
        |r| floor_round(&run_args, dir, &format!("acl-lb, {n} connection(s): "), r),
        |r| {
            eprintln!(
                "perf: acl-lb, {n} connection(s): {}fastpath ovn",
                round_label(r, args.rounds)
            );
            acl_lb_ovn(&run_args, dir, tables, n)
        },
    )?;
    let figures: Vec<RoundFigures> = rounds
        .iter()
        .map(|(floor, run, first)| RoundFigures::new(floor, run.cycles_per_packet, *first))
        .collect();
    let mut runs: Vec<AclLbRun> = rounds
        .into_iter()
        .zip(&figures)
        .map(|((floor, mut run, _), f)| {
            run.floor_cycles_per_packet = f.floor_cycles_per_packet;
            run.ratio = f.ratio;
            run.pipeline_cycles_per_packet = run
                .systems
                .first()
                .and_then(|s| crate::runner::pipeline_added(&floor, s));
            run.systems.insert(0, floor);
            run
        })
        .collect();
    let ratios: Vec<f64> = figures.iter().map(|f| f.ratio).collect();
    let chosen = median_index(&ratios, Better::Lower).context("no round measured")?;
    if args.rounds > 1 {
        println!("\nacl-lb, {n} connection(s):");
        print_rounds(&figures, chosen);
    }
    let mut run = runs.swap_remove(chosen);
    run.rounds = figures;
    Ok(run)
}

/// The warm-up's pktgen settings for `n` connections: every flow about
/// three times per round at [`WARMUP_RATE`], answered from the backend
/// side (`--reply`) so that each connection sees a reply.
fn warm_up(run_args: &RunArgs, n: u32) -> (RunArgs, Vec<String>) {
    let warm = RunArgs {
        rate: WARMUP_RATE,
        duration: (3.0 * f64::from(n) / WARMUP_RATE).max(1.0),
        ..run_args.clone()
    };
    let mut extra = client_frames();
    extra.push("--reply".into());
    (warm, extra)
}

/// One measurement of the OVN pipeline with `n` established connections
/// (the floor figures are left for the caller).
fn acl_lb_ovn(run_args: &RunArgs, dir: &Path, tables: &Path, n: u32) -> Result<AclLbRun> {
    // Two conntrack entries per connection (the client's zone with the
    // load balancer, the backend's zone with the ACL), two flow cache
    // entries (one per direction), with room to spare.
    let capacity = sized(4 * n as usize, 1 << 18);
    let cache = sized(4 * n as usize, 1 << 16);
    eprintln!(
        "perf: acl-lb, {n} connection(s): conntrack capacity {capacity}, {cache} flow cache entries"
    );
    let (fp, mut client) = start_ovn(run_args, dir, tables, capacity, cache)?;
    let r = (|| {
        // Warm-up: pktgen answers every packet from the backend side, so
        // each connection sees a reply and becomes established.
        let (warm, extra) = warm_up(run_args, n);
        let (mut entries, mut est, mut previous) = (0, 0, usize::MAX);
        for round in 1..=WARMUP_ROUNDS {
            let gen = run_pktgen(&warm, dir, "warm", &extra)?;
            (entries, est) = conntrack_states(&mut client, capacity)?;
            eprintln!(
                "perf: warm-up round {round}: {} replies sent, {} came back to the client; conntrack: {entries} entries, {est} established",
                gen.replies_sent, gen.replies_received
            );
            // Done when a whole round established nothing more: pktgen's
            // flows are not sent in a fixed order, so one round may not
            // reach every connection, and a connection holds one entry
            // per zone it crosses, so counting entries against the
            // connections offered says nothing. (What is left then is not
            // the offered traffic's: the measured run's misses say whether
            // any of its packets still open connections.)
            let settled = est == previous;
            previous = est;
            if settled {
                break;
            }
        }
        if est < entries {
            eprintln!(
                "perf: {} of {entries} conntrack entries are not established ({n} connections offered)",
                entries - est
            );
        }
        client.call(&Request::ClearStats)?;
        let preempted_before = lcore_preemptions(&mut client)?;
        let gen = run_pktgen(run_args, dir, "ovn", &client_frames())?;
        let (l, stats) = lcore(&mut client)?;
        let preempted = report_preemptions(preempted_before, l.preemptions);
        if gen.received == 0 {
            bail!(
                "no packet came through the OVN pipeline; drops: {:?}",
                stats.drops
            );
        }
        let ovn = ovn_system(&format!("fastpath acl-lb {n} conn"), &gen, &l);
        Ok(AclLbRun {
            connections: n,
            conntrack_capacity: capacity,
            conntrack_entries: entries,
            conntrack_established: est,
            flow_cache_entries: cache,
            cycles_per_packet: ovn.cycles_per_packet,
            floor_cycles_per_packet: 0.0,
            ratio: 0.0,
            pipeline_cycles_per_packet: None,
            mpps: ovn.mpps,
            cache_hits: l.cache_hits,
            cache_misses: l.cache_misses,
            lcore_preemptions: preempted,
            systems: vec![ovn],
            rounds: Vec::new(),
            ovs: None,
        })
    })();
    stop_fastpath(fp);
    r
}

fn write_json<T: Serialize>(args: &RunArgs, report: &T) -> Result<()> {
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(report)?)?;
        eprintln!("perf: wrote {}", p.display());
    }
    Ok(())
}

/// OVS-DPDK with ovn-controller on the acl-lb topology with `n`
/// established connections, warmed up as the fastpath is (pktgen answering
/// from the backends), and its port-to-port floor.
fn acl_lb_ovs(args: &RunArgs, dir: &Path, central: &Central, n: u32) -> Result<OvsComparison> {
    let run_args = RunArgs {
        flows: n,
        ..args.clone()
    };
    let warm_up = |ovs: &Ovs| {
        let (warm, extra) = warm_up(&run_args, n);
        let mut previous = u64::MAX;
        for round in 1..=WARMUP_ROUNDS {
            let gen = ovs.pktgen(&warm, &extra)?;
            let conns = ovs.conntrack_count()?;
            eprintln!(
                "perf: OVS warm-up round {round}: {} replies sent, {} came back to the client; conntrack: {conns} entries",
                gen.replies_sent, gen.replies_received
            );
            // Settled when a round neither opened nor lost a connection
            // and every reply made it back (the connections are
            // established).
            if conns == previous && gen.replies_received >= gen.replies_sent {
                break;
            }
            previous = conns;
        }
        Ok(())
    };
    crate::ovs::compare(
        &run_args,
        dir,
        central,
        ("p1", "p3"),
        &format!("acl-lb {n} conn"),
        &client_frames(),
        warm_up,
    )
}

fn acl_lb(args: &RunArgs, dir: &Path, central: &Central, tables: &Path) -> Result<()> {
    let counts: Vec<u32> = match args.connections {
        Some(0) => bail!("--connections must be at least 1"),
        Some(n) => vec![n],
        None => DEFAULT_CONNECTIONS.to_vec(),
    };
    let mut runs = Vec::new();
    for n in counts {
        let mut run = acl_lb_once(args, dir, tables, n)?;
        if !args.no_ovs {
            run.ovs = Some(acl_lb_ovs(args, dir, central, n)?);
        }
        runs.push(run);
    }
    println!();
    println!(
        "{:>12} {:>12} {:>12} {:>10} {:>8} {:>9} {:>12} {:>12}",
        "CONNECTIONS",
        "CT ENTRIES",
        "ESTABLISHED",
        "CYCLES/PKT",
        "FLOOR",
        "RATIO",
        "MPPS",
        "HITS/MISSES"
    );
    for r in &runs {
        println!(
            "{:>12} {:>12} {:>12} {:>10.1} {:>8.1} {:>9.3} {:>12.3} {:>6}/{}",
            r.connections,
            r.conntrack_entries,
            r.conntrack_established,
            r.cycles_per_packet,
            r.floor_cycles_per_packet,
            r.ratio,
            r.mpps,
            r.cache_hits,
            r.cache_misses
        );
    }
    for r in &runs {
        crate::runner::print_stages(&labelled_systems(r));
    }
    for r in &runs {
        if let (Some(o), [floor, fastpath, ..]) = (&r.ovs, labelled_systems(r).as_slice()) {
            crate::ovs::print_comparison(floor, fastpath, o);
        }
    }
    if runs.iter().any(|r| r.ovs.is_some()) {
        println!(
            "\n{:>12} {:>12} {:>9} {:>12} {:>9} {:>14}",
            "CONNECTIONS", "FASTPATH", "× FLOOR", "OVS-DPDK", "× FLOOR", "FASTPATH / OVS"
        );
        for r in &runs {
            let Some(o) = &r.ovs else { continue };
            let ovs = o.scenario.system.cycles_per_packet;
            println!(
                "{:>12} {:>12.1} {:>9.3} {:>12.1} {:>9.3} {:>14.3}",
                r.connections,
                r.cycles_per_packet,
                r.ratio,
                ovs,
                o.ratio,
                r.cycles_per_packet / ovs.max(f64::MIN_POSITIVE)
            );
        }
    }
    let Some(last) = runs.last().cloned() else {
        bail!("no run");
    };
    println!(
        "\nratio acl-lb/xconnect busy cycles per packet at {} connections: {:.3}",
        last.connections, last.ratio
    );
    let report = AclLbReport {
        scenario: args.scenario.clone(),
        size: args.size,
        connections: last.connections,
        cycles_per_packet: last.cycles_per_packet,
        floor_cycles_per_packet: last.floor_cycles_per_packet,
        ratio: last.ratio,
        mpps: last.mpps,
        runs: runs.clone(),
    };
    write_json(args, &report)?;
    let mut bars = Vec::new();
    for r in &runs {
        bars.extend(round_bars(
            &r.rounds,
            &format!("xconnect floor ({} flows)", r.connections),
            &format!("acl-lb, {} connections", r.connections),
        ));
        if let Some(o) = &r.ovs {
            bars.push((
                format!("ovs-dpdk port-to-port ({} flows)", r.connections),
                o.floor.system.cycles_per_packet,
            ));
            bars.push((
                o.scenario.system.system.clone(),
                o.scenario.system.cycles_per_packet,
            ));
        }
    }
    let path = plot_path(args);
    std::fs::write(
        &path,
        plot::bar_chart(
            &format!(
                "acl-lb: busy cycles per packet, established UDP connections, {}-byte frames",
                args.size
            ),
            "cycles/packet",
            &bars,
        ),
    )?;
    eprintln!("perf: wrote {}", path.display());
    let systems: Vec<SystemResult> = runs.iter().flat_map(labelled_systems).collect();
    crate::runner::write_stage_plot(
        args,
        "acl-lb: where the busy cycles go, established UDP connections",
        &systems,
    )
}

/// One `new-connections` measurement: every packet opens a connection.
struct NewConnectionsPhase {
    gen: GenReport,
    lcore: LcoreInfo,
    stats: Stats,
    count: ConntrackCount,
    preemptions: Option<u64>,
}

impl NewConnectionsPhase {
    /// New connections per second of busy time.
    fn per_second(&self) -> f64 {
        let busy_secs = self.lcore.busy_cycles as f64 / self.stats.tsc_hz.max(1) as f64;
        if busy_secs > 0.0 {
            self.lcore.packets as f64 / busy_secs
        } else {
            0.0
        }
    }
}

fn new_connections_phase(
    run_args: &RunArgs,
    dir: &Path,
    tables: &Path,
    capacity: usize,
    cache: usize,
) -> Result<NewConnectionsPhase> {
    let (fp, mut client) = start_ovn(run_args, dir, tables, capacity, cache)?;
    let r: Result<_> = (|| {
        client.call(&Request::ClearStats)?;
        let preempted_before = lcore_preemptions(&mut client)?;
        let mut extra = client_frames();
        extra.extend(["--packets".into(), run_args.flows.to_string()]);
        let gen = run_pktgen(run_args, dir, "ovn", &extra)?;
        let (l, stats) = lcore(&mut client)?;
        let count: ConntrackCount = client.call_as(&Request::ConntrackCount)?;
        Ok((gen, l, stats, count, preempted_before))
    })();
    stop_fastpath(fp);
    let (gen, lcore, stats, count, preempted_before) = r?;
    let preemptions = report_preemptions(preempted_before, lcore.preemptions);
    if gen.received == 0 {
        bail!(
            "no packet came through the OVN pipeline; drops: {:?}",
            stats.drops
        );
    }
    Ok(NewConnectionsPhase {
        gen,
        lcore,
        stats,
        count,
        preemptions,
    })
}

fn new_connections(args: &RunArgs, dir: &Path, central: &Central, tables: &Path) -> Result<()> {
    let n = match args.connections {
        Some(0) => bail!("--connections must be at least 1"),
        Some(n) => n,
        None => DEFAULT_NEW_CONNECTIONS,
    };
    let run_args = RunArgs {
        flows: n,
        ..args.clone()
    };
    // Each 5-tuple is sent once (pktgen --packets), so every packet the
    // fastpath receives opens a connection: two conntrack entries each
    // (client and backend zones), and a flow cache far smaller than the
    // connections.
    let capacity = sized(2 * n as usize + (1 << 16), 1 << 18);
    let cache = 4096;
    let rounds = alternate(
        args.rounds,
        |r| floor_round(&run_args, dir, "new-connections: ", r),
        |r| {
            eprintln!(
                "perf: new-connections: {}fastpath ovn, {n} connections, conntrack capacity {capacity}, {cache} flow cache entries",
                round_label(r, args.rounds)
            );
            new_connections_phase(&run_args, dir, tables, capacity, cache)
        },
    )?;
    let figures: Vec<RoundFigures> = rounds
        .iter()
        .map(|(floor, p, first)| RoundFigures::new(floor, p.lcore.cycles_per_packet, *first))
        .collect();
    let rates: Vec<f64> = rounds.iter().map(|(_, p, _)| p.per_second()).collect();
    let chosen = median_index(&rates, Better::Higher).context("no round measured")?;
    if rounds.len() > 1 {
        print_rounds(&figures, chosen);
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        println!("new connections per second over the rounds: {lo:.0}–{hi:.0}");
    }
    let (floor, phase, _) = rounds
        .into_iter()
        .nth(chosen)
        .context("no round measured")?;
    let per_second = phase.per_second();
    let ovs = if args.no_ovs {
        None
    } else {
        let mut extra = client_frames();
        extra.extend(["--packets".into(), n.to_string()]);
        Some(crate::ovs::compare(
            &run_args,
            dir,
            central,
            ("p1", "p3"),
            "new-connections",
            &extra,
            Ovs::flush_conntrack,
        )?)
    };
    let ovs_per_second = ovs
        .as_ref()
        .map(|o| o.scenario.per_second(phase.stats.tsc_hz));
    let NewConnectionsPhase {
        gen,
        lcore: l,
        stats,
        count,
        preemptions: preempted,
    } = phase;
    let ovn = ovn_system("fastpath new-connections", &gen, &l);
    let report = NewConnectionsReport {
        scenario: args.scenario.clone(),
        size: args.size,
        flows: n,
        new_connections: l.packets,
        conntrack_entries: count.connections,
        conntrack_capacity: count.capacity,
        flow_cache_entries: cache,
        new_connections_per_second: per_second,
        cycles_per_packet: ovn.cycles_per_packet,
        floor_cycles_per_packet: floor.cycles_per_packet,
        ratio: figures[chosen].ratio,
        mpps: ovn.mpps,
        cache_hits: l.cache_hits,
        cache_misses: l.cache_misses,
        megaflow_hits: l.cache_megaflow_hits,
        megaflow_diverged: l.cache_megaflow_diverged,
        drops: stats.drops.clone(),
        lcore_preemptions: preempted,
        systems: vec![floor, ovn],
        rounds: figures,
        ovs,
        ovs_new_connections_per_second: ovs_per_second,
    };
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
        "\n{} packets into the pipeline, each a new connection; {} conntrack entries; cache hits {} misses {} (megaflow {}, diverged {})",
        report.new_connections,
        report.conntrack_entries,
        report.cache_hits,
        report.cache_misses,
        report.megaflow_hits,
        report.megaflow_diverged
    );
    println!(
        "new connections per second per core: {:.0}",
        report.new_connections_per_second
    );
    if let (Some(o), Some(rate)) = (&report.ovs, report.ovs_new_connections_per_second) {
        crate::ovs::print_comparison(&report.systems[0], &report.systems[1], o);
        println!(
            "OVS-DPDK + ovn-controller: {rate:.0} new connections per second per core ({} \
             conntrack entries after {} packets); the fastpath opens {:.2} × as many",
            o.scenario.conntrack_entries,
            o.scenario.pmd.packets,
            report.new_connections_per_second / rate.max(f64::MIN_POSITIVE)
        );
    }
    if !report.drops.is_empty() {
        println!("drops: {:?}", report.drops);
    }
    write_json(args, &report)?;
    let path = plot_path(args);
    std::fs::write(
        &path,
        plot::bar_chart(
            &format!(
                "new-connections: busy cycles per packet, every packet a new connection, {}-byte frames",
                args.size
            ),
            "cycles/packet",
            &crate::ovs::with_bars(
                round_bars(&report.rounds, "xconnect floor", "new connection"),
                report.ovs.as_ref(),
            ),
        ),
    )?;
    eprintln!("perf: wrote {}", path.display());
    crate::runner::write_stage_plot(
        args,
        "new-connections: where the busy cycles go, every packet a new connection",
        &report.systems,
    )
}

/// Runs `perf run acl-lb|new-connections`.
pub fn run(args: &RunArgs, dir: &Path) -> Result<()> {
    eprintln!("perf: starting NB, SB and ovn-northd; building the acl-lb topology");
    let central = Central::start()?;
    central.acl_lb_topology()?;
    let tables = dir.join("tables");
    compile_tables(&central, &tables, &[("p1", 0), ("p3", 1)])?;
    if args.scenario == "new-connections" {
        new_connections(args, dir, &central, &tables)
    } else {
        acl_lb(args, dir, &central, &tables)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_powers_of_two_with_a_floor() {
        assert_eq!(sized(4, 1 << 16), 1 << 16);
        assert_eq!(sized(400_000, 1 << 16), 1 << 19);
        assert_eq!(sized(1 << 20, 16), 1 << 20);
    }
}
