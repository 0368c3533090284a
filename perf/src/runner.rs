//! Scenario runner: starts the systems under test and the generator pinned
//! to different cores, collects figures, prints a table, writes JSON and a
//! plot.

use crate::plot;
use anyhow::{bail, Context, Result};
use clap::Args;
use fastpath_api::{Client, LcoreInfo, Request, StageCycles};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Known scenarios and what they measure.
pub const SCENARIOS: &[(&str, &str)] = &[
    ("xconnect", "fastpath xconnect between two vhost-user ports vs dpdk-testpmd io mode (the floor) and OVS-DPDK port-to-port"),
    ("l2", "OVN pipeline, cache hits: two pods on one logical switch, busy cycles per packet vs the xconnect floor, beside OVS-DPDK + ovn-controller"),
    ("l3", "OVN pipeline, cache hits: two pods on two switches behind a logical router, vs the xconnect floor, beside OVS-DPDK + ovn-controller"),
    ("new-flows", "OVN pipeline, every packet a flow-cache miss (more flows than cache entries): new flows per second per core"),
    ("acl-lb", "OVN pipeline with conntrack: a stateful NetworkPolicy ACL and a UDP load balancer, established connections (--connections N, default 1, 10000 and 100000), vs the xconnect floor, beside OVS-DPDK + ovn-controller"),
    ("new-connections", "OVN pipeline with conntrack: every packet opens a new connection through the ACL and load balancer: new connections per second per core"),
    ("pod-add", "the whole node with --pods-present pods (default 1000) over --nodes nodes: CNI ADD of --adds new pods to their first packet forwarded, and --edits manifest edits (egress_rate) to the new table generation in use"),
    ("tables", "publish-to-acknowledgement latency of table generations with traffic flowing, and the cost of a 10 MB slot"),
];

/// Arguments of `perf run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Scenario name (see `perf list`).
    pub scenario: String,
    /// Seconds of traffic per system.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Frame size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: u16,
    /// Distinct flows.
    #[arg(long, default_value_t = 1024)]
    pub flows: u32,
    /// Conntrack connections (acl-lb: distinct 5-tuples, all three of
    /// 1, 10000 and 100000 when unset; new-connections: connections opened,
    /// 1000000 when unset).
    #[arg(long)]
    pub connections: Option<u32>,
    /// Offered rate in packets per second (0 = as fast as the generator can).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Core for the system under test.
    #[arg(long, default_value_t = 1)]
    pub dut_core: u32,
    /// Core for the generator.
    #[arg(long, default_value_t = 0)]
    pub gen_core: u32,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG bar chart here (default: next to --json, else perf-<scenario>.svg).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Skip the testpmd floor run.
    #[arg(long)]
    pub no_floor: bool,
    /// l2, l3, new-flows, acl-lb, new-connections: run the OVN pipeline
    /// without megaflows (every flow-cache miss runs the interpreter).
    #[arg(long)]
    pub no_megaflows: bool,
    /// l2, l3, new-flows, acl-lb, new-connections: the fastpath caches one
    /// in N stateless verdicts a megaflow serves (its
    /// `--flow-cache-insert-inv-prob`; unset: the fastpath's default).
    #[arg(long, value_name = "N")]
    pub insert_inv_prob: Option<u32>,
    /// pod-add: pods in the manifests before the measured ones.
    #[arg(long, default_value_t = 1000)]
    pub pods_present: usize,
    /// pod-add: nodes the pods are spread over (this one included); the
    /// pods of this node are attached, at most 28 (one DPDK port each).
    #[arg(long, default_value_t = 40)]
    pub nodes: usize,
    /// pod-add: new pods measured.
    #[arg(long, default_value_t = 30)]
    pub adds: usize,
    /// pod-add: manifest edits measured.
    #[arg(long, default_value_t = 10)]
    pub edits: usize,
    /// Path of dpdk-testpmd.
    #[arg(long, default_value = "dpdk-testpmd")]
    pub testpmd: String,
    /// xconnect, l2, l3, acl-lb: skip the OVS-DPDK runs (its port-to-port
    /// floor, and OVS with ovn-controller on the scenario's topology).
    #[arg(long)]
    pub no_ovs: bool,
    /// Path of OVS-DPDK's ovs-vswitchd.
    #[arg(
        long,
        default_value = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"
    )]
    pub ovs_vswitchd: String,
    /// l2, l3, new-flows, acl-lb, new-connections: measure the floor and
    /// the scenario this many times, alternating which goes first, and
    /// report the round whose figure is the median (every round is
    /// printed and in the JSON as `rounds`). A shared host's speed drifts
    /// over seconds, so a ratio of two adjacent measurements, taken
    /// several times, is steadier than one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub rounds: u32,
}

/// One round of a `--rounds` run: the floor and the scenario measured next
/// to each other.
#[derive(Debug, Clone, Serialize)]
pub struct RoundFigures {
    /// Busy cycles per packet of the floor.
    pub floor_cycles_per_packet: f64,
    /// Busy cycles per packet of the scenario.
    pub cycles_per_packet: f64,
    /// `cycles_per_packet / floor_cycles_per_packet`.
    pub ratio: f64,
    /// Whether the scenario ran before the floor in this round.
    pub scenario_first: bool,
}

impl RoundFigures {
    /// A round's figures from its floor and the scenario's busy cycles per
    /// packet (a ratio of 0 when the floor measured nothing).
    pub(crate) fn new(floor: &SystemResult, cycles_per_packet: f64, scenario_first: bool) -> Self {
        let f = floor.cycles_per_packet;
        RoundFigures {
            floor_cycles_per_packet: f,
            cycles_per_packet,
            ratio: if f > 0.0 { cycles_per_packet / f } else { 0.0 },
            scenario_first,
        }
    }
}

/// Runs `rounds` rounds of `floor` and `scenario`, the floor first in even
/// rounds (counting from 0) and second in odd ones, so that a drift of the
/// host's speed favours neither; returns each round's two results.
pub(crate) fn alternate<F, T>(
    rounds: u32,
    mut floor: impl FnMut(u32) -> Result<F>,
    mut scenario: impl FnMut(u32) -> Result<T>,
) -> Result<Vec<(F, T, bool)>> {
    let mut out = Vec::new();
    for r in 0..rounds {
        let scenario_first = r % 2 == 1;
        let (f, s) = if scenario_first {
            let s = scenario(r)?;
            (floor(r)?, s)
        } else {
            let f = floor(r)?;
            (f, scenario(r)?)
        };
        out.push((f, s, scenario_first));
    }
    Ok(out)
}

/// Which way a figure is better, for choosing between the two middle
/// rounds of an even count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Better {
    /// A ratio to the floor, cycles.
    Lower,
    /// A rate.
    Higher,
}

/// The index of the median of `values`; of an even count, the worse of
/// the two middle ones (the report never flatters); `None` when there are
/// none or one is not a number.
pub(crate) fn median_index(values: &[f64], better: Better) -> Option<usize> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|a, b| values[*a].total_cmp(&values[*b]));
    let middle = match better {
        Better::Lower => values.len() / 2,
        Better::Higher => (values.len() - 1) / 2,
    };
    order.get(middle).copied()
}

/// The floor of round `round`: xconnect, announced as `perf: <what>round
/// i/n: fastpath xconnect ...` (`what` is empty or ends in `: `).
pub(crate) fn floor_round(
    args: &RunArgs,
    dir: &Path,
    what: &str,
    round: u32,
) -> Result<SystemResult> {
    eprintln!(
        "perf: {what}{}fastpath xconnect on core {}, pktgen on core {}",
        round_label(round, args.rounds),
        args.dut_core,
        args.gen_core
    );
    fastpath_xconnect(args, dir)
}

/// `perf: round i/n` before a round's measurements, when there are several.
pub(crate) fn round_label(round: u32, rounds: u32) -> String {
    if rounds > 1 {
        format!("round {}/{rounds}: ", round + 1)
    } else {
        String::new()
    }
}

/// Where a scenario's SVG chart goes: `--plot`, else next to `--json`,
/// else `perf-<scenario>.svg`.
pub(crate) fn plot_path(args: &RunArgs) -> PathBuf {
    args.plot.clone().unwrap_or_else(|| match &args.json {
        Some(j) => j.with_extension("svg"),
        None => PathBuf::from(format!("perf-{}.svg", args.scenario)),
    })
}

/// Where the stage chart goes: beside the run's chart, `NAME-stages.svg`.
fn stage_plot_path(chart: &Path) -> PathBuf {
    let stem = chart
        .file_stem()
        .map_or_else(|| "perf".into(), |s| s.to_string_lossy().into_owned());
    chart.with_file_name(format!("{stem}-stages.svg"))
}

/// Writes the stage split of the fastpath systems among `systems` as
/// stacked bars beside the run's chart, when any was split.
pub(crate) fn write_stage_plot(
    args: &RunArgs,
    title: &str,
    systems: &[SystemResult],
) -> Result<()> {
    let split: Vec<&SystemResult> = systems.iter().filter(|s| !s.stages.is_empty()).collect();
    let Some(first) = split.first() else {
        return Ok(());
    };
    let names: Vec<&str> = first.stages.iter().map(|s| s.stage.as_str()).collect();
    let bars: Vec<(String, Vec<f64>)> = split
        .iter()
        .map(|s| {
            let parts = s.stages.iter().map(|st| st.cycles_per_packet).collect();
            (s.system.clone(), parts)
        })
        .collect();
    let path = stage_plot_path(&plot_path(args));
    std::fs::write(
        &path,
        plot::stacked_bars(
            title,
            "cycles/packet by stage of the busy polls (one in sixteen timed)",
            &names,
            &bars,
        ),
    )?;
    eprintln!("perf: wrote {}", path.display());
    Ok(())
}

/// The bars of a chart of rounds: the floor and the scenario of each round
/// side by side (without round numbers when there is one round).
pub(crate) fn round_bars(
    rounds: &[RoundFigures],
    floor: &str,
    scenario: &str,
) -> Vec<(String, f64)> {
    let mut bars = Vec::new();
    for (i, r) in rounds.iter().enumerate() {
        let prefix = if rounds.len() > 1 {
            format!("round {}: ", i + 1)
        } else {
            String::new()
        };
        bars.push((format!("{prefix}{floor}"), r.floor_cycles_per_packet));
        bars.push((format!("{prefix}{scenario}"), r.cycles_per_packet));
    }
    bars
}

/// Prints the rounds of a `--rounds` run (nothing for a single round).
pub(crate) fn print_rounds(rounds: &[RoundFigures], chosen: usize) {
    if rounds.len() < 2 {
        return;
    }
    println!(
        "\n{:>6} {:>8} {:>12} {:>12} {:>8}",
        "ROUND", "FIRST", "FLOOR", "CYCLES/PKT", "RATIO"
    );
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "{:>6} {:>8} {:>12.1} {:>12.1} {:>8.3}{}",
            i + 1,
            if r.scenario_first {
                "scenario"
            } else {
                "floor"
            },
            r.floor_cycles_per_packet,
            r.cycles_per_packet,
            r.ratio,
            if i == chosen { "  <- median" } else { "" }
        );
    }
    let lo = rounds.iter().map(|r| r.ratio).fold(f64::INFINITY, f64::min);
    let hi = rounds.iter().map(|r| r.ratio).fold(0.0, f64::max);
    println!("ratio over {} rounds: {lo:.3}–{hi:.3}", rounds.len());
    if let Some(warning) = floor_drift(rounds) {
        println!("{warning}");
    }
}

/// Spread of the floor over the rounds above which a run says the host's
/// speed drifted (the same code measured that much apart).
const FLOOR_DRIFT: f64 = 1.2;

/// A warning when the floor itself moved by more than [`FLOOR_DRIFT`]
/// between rounds: the xconnect code did not change, so the host did, and
/// a ratio of one round may have been measured at two speeds.
pub(crate) fn floor_drift(rounds: &[RoundFigures]) -> Option<String> {
    let floors = rounds
        .iter()
        .map(|r| r.floor_cycles_per_packet)
        .filter(|f| *f > 0.0);
    let lo = floors.clone().fold(f64::INFINITY, f64::min);
    let hi = floors.fold(0.0, f64::max);
    (hi > lo * FLOOR_DRIFT).then(|| {
        format!(
            "perf: the floor itself ranged {lo:.1}–{hi:.1} cycles per packet over the rounds \
             (+{:.0} %): this host's speed drifted while it ran, so compare builds by the \
             medians of many alternated runs, not by one",
            (hi / lo - 1.0) * 100.0
        )
    })
}

/// One system's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SystemResult {
    /// Name of the system.
    pub system: String,
    /// Packets the generator sent.
    pub sent: u64,
    /// Packets it got back.
    pub received: u64,
    /// Received Mpps.
    pub mpps: f64,
    /// Received Gbit/s.
    pub gbps: f64,
    /// Busy cycles per packet on the forwarding core.
    pub cycles_per_packet: f64,
    /// The fastpath's busy cycles per packet split by stage of its polls
    /// (empty for another system).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageCycles>,
    /// The fastpath's packets per busy poll (0 for another system).
    pub packets_per_poll: f64,
}

/// Prints where each fastpath system's busy cycles per packet went, stage
/// by stage of its polls (the fastpath times one busy poll in sixteen).
pub(crate) fn print_stages(systems: &[SystemResult]) {
    let Some(names) = systems.iter().find(|s| !s.stages.is_empty()) else {
        return;
    };
    let width = systems
        .iter()
        .map(|s| s.system.chars().count())
        .max()
        .unwrap_or(0)
        .max(26);
    let mut header = format!("\n{:<width$}", "STAGE CYCLES/PKT");
    for st in &names.stages {
        header.push_str(&format!(" {:>9}", st.stage.to_uppercase()));
    }
    println!("{header} {:>10}", "PKTS/POLL");
    for s in systems.iter().filter(|s| !s.stages.is_empty()) {
        let mut row = format!("{:<width$}", s.system);
        for st in &s.stages {
            row.push_str(&format!(" {:>9.1}", st.cycles_per_packet));
        }
        println!("{row} {:>10.1}", s.packets_per_poll);
    }
    let (Some(floor), Some(scenario)) = (systems.first(), systems.get(1)) else {
        return;
    };
    if let (Some(added), Some(io)) = (pipeline_added(floor, scenario), io_cycles(scenario)) {
        let floor_io = io_cycles(floor).unwrap_or(0.0);
        println!(
            "the pipeline's own stages add {added:.1} cycles per packet to the floor's \
             ({:.2} × the floor's {:.1}); the vhost-user bursts (rx + tx) took {io:.1} \
             against the floor's {floor_io:.1} (those move with the host's memory traffic \
             from run to run)",
            added / floor.cycles_per_packet.max(f64::MIN_POSITIVE),
            floor.cycles_per_packet,
        );
    }
}

/// Cycles per packet of the named stages of a system.
fn stage_sum(s: &SystemResult, names: &[&str]) -> Option<f64> {
    let mut sum = 0.0;
    for n in names {
        sum += s.stages.iter().find(|st| st.stage == *n)?.cycles_per_packet;
    }
    Some(sum)
}

/// The rx and tx stages of a system: the vhost-user bursts and counters.
fn io_cycles(s: &SystemResult) -> Option<f64> {
    stage_sum(s, &["rx", "tx"])
}

/// What a scenario's pipeline adds per packet to the floor's work,
/// stage by stage: its parse, prefetch and decide against the floor's
/// (xconnect's decide moves the burst to the output's buffer). Unlike the
/// ratio of the totals, this leaves out the rx and tx bursts, whose cost
/// moves with the host's memory traffic from run to run.
pub(crate) fn pipeline_added(floor: &SystemResult, scenario: &SystemResult) -> Option<f64> {
    let own = ["parse", "prefetch", "decide"];
    Some(stage_sum(scenario, &own)? - stage_sum(floor, &own)?)
}

/// The JSON document of a run.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: String,
    /// Frame size.
    pub size: u16,
    /// Flows.
    pub flows: u32,
    /// Fastpath received Mpps.
    pub mpps: f64,
    /// Fastpath busy cycles per packet.
    pub cycles_per_packet: f64,
    /// Floor (testpmd io) busy cycles per packet.
    pub floor_cycles_per_packet: Option<f64>,
    /// `cycles_per_packet / floor_cycles_per_packet`.
    pub ratio: Option<f64>,
    /// Every system measured.
    pub systems: Vec<SystemResult>,
    /// OVS-DPDK's PMD counters of its port-to-port run (unless `--no-ovs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ovs: Option<crate::ovs::PmdStats>,
}

pub(crate) struct Killer(Option<Child>);
impl Drop for Killer {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(path: &Path, what: &str, timeout: Duration, child: &mut Child) -> Result<()> {
    let start = Instant::now();
    while !path.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            bail!("{what} exited ({st}) before {} appeared", path.display());
        }
        if start.elapsed() > timeout {
            bail!(
                "{what}: {} did not appear within {timeout:?}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub(crate) fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .stderr(Stdio::null())
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[derive(serde::Deserialize)]
pub(crate) struct GenReport {
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) rx_mpps: f64,
    pub(crate) rx_gbps: f64,
    #[serde(default)]
    pub(crate) replies_sent: u64,
    #[serde(default)]
    pub(crate) replies_received: u64,
}

pub(crate) fn run_pktgen(
    args: &RunArgs,
    dir: &Path,
    tag: &str,
    extra: &[String],
) -> Result<GenReport> {
    let out = Command::new("taskset")
        .args(["-c", &args.gen_core.to_string()])
        .arg(crate::sibling("pktgen"))
        .args(["--tx", &dir.join("a.sock").display().to_string()])
        .args(["--rx", &dir.join("b.sock").display().to_string()])
        .args([
            "--size",
            &args.size.to_string(),
            "--flows",
            &args.flows.to_string(),
        ])
        .args([
            "--rate",
            &args.rate.to_string(),
            "--duration",
            &args.duration.to_string(),
        ])
        .args([
            "--lcore",
            &args.gen_core.to_string(),
            "--file-prefix",
            &format!("pktgen-{tag}-{}", std::process::id()),
        ])
        .args(["--json", "--progress"])
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .context("starting pktgen")?;
    if !out.status.success() {
        bail!("pktgen failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("pktgen printed no JSON report")?;
    Ok(serde_json::from_str(line)?)
}

/// Starts the fastpath patching a.sock and b.sock on the DUT core. EAL pins
/// the worker lcore; the fastpath's control threads move to the other CPUs.
pub(crate) fn start_fastpath(
    args: &RunArgs,
    dir: &Path,
    extra: &[String],
) -> Result<(Killer, Client)> {
    let sock = dir.join("control.sock");
    let fp = Command::new(crate::sibling("fastpath"))
        .args([
            "--lcores",
            &args.dut_core.to_string(),
            "--in-memory",
            "--no-pci",
        ])
        .args(["--file-prefix", &format!("fp-perf-{}", std::process::id())])
        .arg("--port")
        .arg(format!(
            "a=net_vhost0,iface={},queues=1",
            dir.join("a.sock").display()
        ))
        .arg("--port")
        .arg(format!(
            "b=net_vhost1,iface={},queues=1",
            dir.join("b.sock").display()
        ))
        .args([
            "--worker",
            &format!("{}=a,b", args.dut_core),
            "--xconnect",
            "a,b",
        ])
        .args([
            "--socket",
            &sock.display().to_string(),
            "--eal-arg=--log-level=warning",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("fastpath.log"))?)
        .spawn()
        .context("starting fastpath")?;
    let mut fp = Killer(Some(fp));
    wait_for(
        &sock,
        "fastpath",
        Duration::from_secs(30),
        fp.0.as_mut().expect("child"),
    )?;
    let client = Client::connect(&sock.display().to_string())?;
    Ok((fp, client))
}

pub(crate) fn stop_fastpath(mut fp: Killer) {
    if let Some(c) = fp.0.as_mut() {
        terminate(c);
    }
    fp.0 = None;
}

pub(crate) fn fastpath_xconnect(args: &RunArgs, dir: &Path) -> Result<SystemResult> {
    let (fp, mut client) = start_fastpath(args, dir, &[])?;
    client.call(&Request::ClearStats)?;
    let gen = run_pktgen(args, dir, "fp", &[])?;
    let lcores: Vec<LcoreInfo> = client.call_as(&Request::Lcores)?;
    let cpp = lcores.first().map(|l| l.cycles_per_packet).unwrap_or(0.0);
    let stages = lcores.first().map(|l| l.stages.clone()).unwrap_or_default();
    let packets_per_poll = lcores.first().map_or(0.0, |l| l.packets_per_poll);
    stop_fastpath(fp);
    Ok(SystemResult {
        system: "fastpath xconnect".into(),
        sent: gen.sent,
        received: gen.received,
        mpps: gen.rx_mpps,
        gbps: gen.rx_gbps,
        cycles_per_packet: cpp,
        stages,
        packets_per_poll,
    })
}

/// Figures of the `tables` scenario.
#[derive(Debug, Serialize)]
pub struct TablesReport {
    /// Scenario name.
    pub scenario: String,
    /// Publishes measured.
    pub publishes: usize,
    /// Ports in each published port map.
    pub ports: usize,
    /// Median microseconds from publish to the last reader's acknowledgement.
    pub publish_to_ack_us_p50: f64,
    /// 99th percentile of the same.
    pub publish_to_ack_us_p99: f64,
    /// Worst case of the same.
    pub publish_to_ack_us_max: f64,
    /// Milliseconds to build, checksum and publish a 10 MB slot.
    pub publish_10mb_ms: f64,
    /// Traffic forwarded meanwhile (Mpps).
    pub mpps: f64,
    /// Busy cycles per packet meanwhile.
    pub cycles_per_packet: f64,
}

fn fp_tables(args: &[String]) -> Result<String> {
    let out = Command::new(crate::sibling("fp-tables"))
        .args(args)
        .output()
        .context("running fp-tables")?;
    if !out.status.success() {
        bail!(
            "fp-tables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A number that follows `marker` in `text`.
fn number_after(text: &str, marker: &str) -> Option<f64> {
    let i = text.find(marker)? + marker.len();
    let num: String = text[i..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().ok()
}

fn tables_scenario(args: &RunArgs, dir: &Path) -> Result<()> {
    const PORTS: usize = 1000;
    const PUBLISHES: usize = 50;
    let file = dir.join("tables");
    let port_args = |salt: usize| -> Vec<String> {
        let mut v = vec![
            "publish".to_string(),
            file.display().to_string(),
            "--capacity".into(),
            (24usize << 20).to_string(),
        ];
        for i in 0..PORTS {
            v.push("--port".into());
            v.push(format!(
                "{i}:pod-{i}-{salt}.ns:{}:{}",
                1 + i / 100,
                1 + i % 100
            ));
        }
        v
    };
    fp_tables(&port_args(0))?;
    let (fp, mut client) =
        start_fastpath(args, dir, &["--tables".into(), file.display().to_string()])?;
    client.call(&Request::ClearStats)?;
    eprintln!("perf: traffic through the fastpath while {PUBLISHES} generations of {PORTS} ports are published");
    let gen_args = RunArgs {
        duration: args.duration,
        ..args.clone()
    };
    let dir2 = dir.to_path_buf();
    let traffic = std::thread::spawn(move || run_pktgen(&gen_args, &dir2, "tables", &[]));
    std::thread::sleep(Duration::from_secs(1));
    let mut lat = Vec::new();
    for i in 0..PUBLISHES {
        let mut a = port_args(i + 1);
        a.push("--wait-acks".into());
        let out = fp_tables(&a)?;
        lat.push(number_after(&out, "acknowledged after").context("no acknowledgement figure")?);
        std::thread::sleep(Duration::from_millis(40));
    }
    let mut big = port_args(999);
    big.extend([
        "--filler".to_string(),
        (10usize << 20).to_string(),
        "--wait-acks".into(),
    ]);
    let out = fp_tables(&big)?;
    let publish_10mb_ms = number_after(&out, "in").context("no publish time")?;
    let gen = traffic
        .join()
        .map_err(|_| anyhow::anyhow!("pktgen thread panicked"))??;
    let lcores: Vec<LcoreInfo> = client.call_as(&Request::Lcores)?;
    stop_fastpath(fp);
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((p / 100.0) * (lat.len() - 1) as f64).round() as usize];
    let report = TablesReport {
        scenario: "tables".into(),
        publishes: lat.len(),
        ports: PORTS,
        publish_to_ack_us_p50: pct(50.0),
        publish_to_ack_us_p99: pct(99.0),
        publish_to_ack_us_max: *lat.last().unwrap_or(&0.0),
        publish_10mb_ms,
        mpps: gen.rx_mpps,
        cycles_per_packet: lcores.first().map(|l| l.cycles_per_packet).unwrap_or(0.0),
    };
    println!();
    println!("publish -> every reader acknowledged ({} publishes of {} ports, under {:.2} Mpps of traffic):", report.publishes, PORTS, report.mpps);
    println!(
        "  p50 {:.1} us   p99 {:.1} us   max {:.1} us",
        report.publish_to_ack_us_p50, report.publish_to_ack_us_p99, report.publish_to_ack_us_max
    );
    println!(
        "build + checksum + publish of a 10 MB slot: {:.2} ms",
        report.publish_10mb_ms
    );
    println!(
        "forwarding meanwhile: {:.1} busy cycles per packet",
        report.cycles_per_packet
    );
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
        eprintln!("perf: wrote {}", p.display());
    }
    let plot_path = args.plot.clone().unwrap_or_else(|| match &args.json {
        Some(j) => j.with_extension("svg"),
        None => PathBuf::from("perf-tables.svg"),
    });
    let bars = vec![
        (
            "p50 publish->ack (us)".to_string(),
            report.publish_to_ack_us_p50,
        ),
        (
            "p99 publish->ack (us)".to_string(),
            report.publish_to_ack_us_p99,
        ),
        (
            "max publish->ack (us)".to_string(),
            report.publish_to_ack_us_max,
        ),
    ];
    std::fs::write(
        &plot_path,
        plot::bar_chart(
            "tables: publish to every reader's acknowledgement (microseconds)",
            "microseconds",
            &bars,
        ),
    )?;
    eprintln!("perf: wrote {}", plot_path.display());
    Ok(())
}

/// Parses testpmd's `CPU cycles/packet=X` line (printed with --record-core-cycles).
pub fn parse_testpmd_cycles(out: &str) -> Option<f64> {
    out.lines().rev().find_map(|l| {
        let i = l.find("CPU cycles/packet=")?;
        let rest = &l[i + "CPU cycles/packet=".len()..];
        let num: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        num.parse().ok()
    })
}

fn testpmd_io(args: &RunArgs, dir: &Path) -> Result<SystemResult> {
    let _ = std::fs::remove_file(dir.join("a.sock"));
    let _ = std::fs::remove_file(dir.join("b.sock"));
    // testpmd needs a main lcore besides its forwarding lcore; the main one
    // only waits on stdin, so it shares the generator's core.
    let log_path = dir.join("testpmd.log");
    let mut tp = Command::new("taskset")
        .args(["-c", &format!("{},{}", args.gen_core, args.dut_core)])
        .arg(&args.testpmd)
        .args([
            "-l",
            &format!("{},{}", args.gen_core, args.dut_core),
            &format!("--main-lcore={}", args.gen_core),
        ])
        .args([
            "--in-memory",
            "--no-pci",
            &format!("--file-prefix=tp-perf-{}", std::process::id()),
        ])
        .arg(format!(
            "--vdev=net_vhost0,iface={},queues=1",
            dir.join("a.sock").display()
        ))
        .arg(format!(
            "--vdev=net_vhost1,iface={},queues=1",
            dir.join("b.sock").display()
        ))
        .args(["--log-level=warning", "--"])
        .args([
            "--forward-mode=io",
            "--auto-start",
            "--record-core-cycles",
            "--nb-cores=1",
        ])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&log_path)?)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} (Debian package dpdk-dev)", args.testpmd))?;
    let r = (|| {
        wait_for(
            &dir.join("b.sock"),
            "dpdk-testpmd",
            Duration::from_secs(30),
            &mut tp,
        )?;
        std::thread::sleep(Duration::from_millis(500));
        run_pktgen(args, dir, "tp", &[])
    })();
    // Enter ends testpmd, which then prints its statistics.
    if let Some(stdin) = tp.stdin.as_mut() {
        let _ = stdin.write_all(b"\n");
    }
    let start = Instant::now();
    while tp.try_wait()?.is_none() && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = tp.kill();
    let _ = tp.wait();
    let gen = r?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let cpp = parse_testpmd_cycles(&log).context("testpmd printed no 'CPU cycles/packet' line")?;
    Ok(SystemResult {
        system: "dpdk-testpmd io (floor)".into(),
        sent: gen.sent,
        received: gen.received,
        mpps: gen.rx_mpps,
        gbps: gen.rx_gbps,
        cycles_per_packet: cpp,
        stages: Vec::new(),
        packets_per_poll: 0.0,
    })
}

/// Runs `perf run`.
pub fn run(args: RunArgs) -> Result<()> {
    for out in [&args.json, &args.plot].into_iter().flatten() {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    if !SCENARIOS.iter().any(|(n, _)| *n == args.scenario) {
        bail!(
            "unknown scenario {:?}; `perf list` shows the known ones",
            args.scenario
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("fastpath-perf-")
        .tempdir()?;
    if args.scenario == "pod-add" {
        return crate::pod_add::run(&args, dir.path());
    }
    if args.scenario == "tables" {
        return tables_scenario(&args, dir.path());
    }
    if matches!(args.scenario.as_str(), "acl-lb" | "new-connections") {
        return crate::ct_scenarios::run(&args, dir.path());
    }
    if matches!(args.scenario.as_str(), "l2" | "l3" | "new-flows") {
        return crate::ovn_scenarios::run(&args, dir.path());
    }
    eprintln!(
        "perf: scenario {} — {}-byte frames, {} flows, {}s per system",
        args.scenario, args.size, args.flows, args.duration
    );
    eprintln!(
        "perf: [1/3] fastpath xconnect on core {}, pktgen on core {}",
        args.dut_core, args.gen_core
    );
    let mut systems = vec![fastpath_xconnect(&args, dir.path())?];
    if !args.no_floor {
        eprintln!(
            "perf: [2/3] dpdk-testpmd io on core {}, pktgen on core {}",
            args.dut_core, args.gen_core
        );
        systems.push(testpmd_io(&args, dir.path())?);
    }
    let mut ovs = None;
    if !args.no_ovs {
        eprintln!(
            "perf: [3/3] OVS-DPDK port-to-port, PMD on core {}, pktgen on core {}",
            args.dut_core, args.gen_core
        );
        let switch = crate::ovs::Ovs::start(&args, &dir.path().join("ovs"))?;
        switch.port_to_port()?;
        let run = switch.measure(&args, &switch.floor_dir(), "ovs-dpdk port-to-port", &[])?;
        drop(switch);
        systems.push(run.system.clone());
        ovs = Some(run);
    }
    let fp = &systems[0];
    let floor = (!args.no_floor).then(|| systems[1].cycles_per_packet);
    let ratio = floor.filter(|f| *f > 0.0).map(|f| fp.cycles_per_packet / f);
    let report = RunReport {
        scenario: args.scenario.clone(),
        size: args.size,
        flows: args.flows,
        mpps: fp.mpps,
        cycles_per_packet: fp.cycles_per_packet,
        floor_cycles_per_packet: floor,
        ratio,
        systems: systems.clone(),
        ovs: ovs.map(|r| r.pmd),
    };
    println!();
    println!(
        "{:<26} {:>12} {:>12} {:>9} {:>9} {:>12}",
        "SYSTEM", "SENT", "RECEIVED", "MPPS", "GBIT/S", "CYCLES/PKT"
    );
    for s in &systems {
        println!(
            "{:<26} {:>12} {:>12} {:>9.3} {:>9.3} {:>12.1}",
            s.system, s.sent, s.received, s.mpps, s.gbps, s.cycles_per_packet
        );
    }
    print_stages(&systems);
    if let Some(r) = ratio {
        println!("\nratio fastpath/floor of busy cycles per packet: {r:.3}");
    }
    if let Some(o) = systems.iter().find(|s| s.system.starts_with("ovs-dpdk")) {
        if o.cycles_per_packet > 0.0 {
            println!(
                "ratio fastpath/OVS-DPDK port-to-port of busy cycles per packet: {:.3}",
                fp.cycles_per_packet / o.cycles_per_packet
            );
        }
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
        eprintln!("perf: wrote {}", p.display());
    }
    let plot_path = plot_path(&args);
    let bars: Vec<(String, f64)> = systems
        .iter()
        .map(|s| (s.system.clone(), s.cycles_per_packet))
        .collect();
    std::fs::write(
        &plot_path,
        plot::bar_chart(
            &format!(
                "{}: busy cycles per packet, {}-byte frames (lower is better)",
                args.scenario, args.size
            ),
            "cycles/packet",
            &bars,
        ),
    )?;
    eprintln!("perf: wrote {}", plot_path.display());
    write_stage_plot(
        &args,
        &format!("{}: where the busy cycles go", args.scenario),
        &systems,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stage_chart_sits_beside_the_run_s_chart() {
        assert_eq!(
            stage_plot_path(Path::new("out/l2.svg")),
            Path::new("out/l2-stages.svg")
        );
        assert_eq!(
            stage_plot_path(Path::new("perf-acl-lb.svg")),
            Path::new("perf-acl-lb-stages.svg")
        );
    }

    #[test]
    fn the_median_is_the_middle_value_or_the_worse_middle_one() {
        for better in [Better::Lower, Better::Higher] {
            assert_eq!(median_index(&[3.0, 1.0, 2.0], better), Some(2));
            assert_eq!(median_index(&[7.0], better), Some(0));
            assert_eq!(median_index(&[], better), None);
            assert_eq!(median_index(&[1.0, f64::NAN], better), None);
        }
        // Of 1, 2, 3, 4: a ratio reports 3, a rate 2.
        assert_eq!(median_index(&[4.0, 1.0, 3.0, 2.0], Better::Lower), Some(2));
        assert_eq!(median_index(&[4.0, 1.0, 3.0, 2.0], Better::Higher), Some(3));
    }

    #[test]
    fn the_pipelines_share_leaves_the_bursts_out() {
        let system = |stages: [f64; 5]| SystemResult {
            system: String::new(),
            sent: 0,
            received: 0,
            mpps: 0.0,
            gbps: 0.0,
            cycles_per_packet: stages.iter().sum(),
            stages: ["rx", "parse", "prefetch", "decide", "tx"]
                .iter()
                .zip(stages)
                .map(|(s, c)| StageCycles {
                    stage: s.to_string(),
                    cycles_per_packet: c,
                })
                .collect(),
            packets_per_poll: 32.0,
        };
        let floor = system([60.0, 0.0, 0.0, 4.0, 90.0]);
        // The same pipeline on a slower host hour: bigger bursts' cost,
        // the same own stages.
        let fast = system([60.0, 26.0, 11.0, 33.0, 90.0]);
        let slow = system([110.0, 26.0, 11.0, 33.0, 140.0]);
        assert_eq!(pipeline_added(&floor, &fast), Some(66.0));
        assert_eq!(pipeline_added(&floor, &slow), Some(66.0));
        assert_eq!(io_cycles(&slow), Some(250.0));
        let other = SystemResult {
            stages: Vec::new(),
            ..floor.clone()
        };
        assert_eq!(pipeline_added(&other, &fast), None);
    }

    #[test]
    fn rounds_alternate_which_system_goes_first() {
        let order = std::cell::RefCell::new(Vec::new());
        let floor = |r: u32| {
            order.borrow_mut().push(format!("floor{r}"));
            Ok(SystemResult {
                system: "floor".into(),
                sent: 0,
                received: 0,
                mpps: 0.0,
                gbps: 0.0,
                cycles_per_packet: 100.0,
                stages: Vec::new(),
                packets_per_poll: 0.0,
            })
        };
        let scenario = |r: u32| {
            order.borrow_mut().push(format!("scenario{r}"));
            Ok(r)
        };
        let rounds = alternate(3, floor, scenario).unwrap();
        assert_eq!(
            *order.borrow(),
            [
                "floor0",
                "scenario0",
                "scenario1",
                "floor1",
                "floor2",
                "scenario2"
            ]
        );
        let firsts: Vec<bool> = rounds.iter().map(|r| r.2).collect();
        assert_eq!(firsts, [false, true, false]);
        assert_eq!(rounds.iter().map(|r| r.1).collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn a_floor_that_moved_between_rounds_is_reported() {
        let round = |floor: f64| RoundFigures {
            floor_cycles_per_packet: floor,
            cycles_per_packet: floor * 1.5,
            ratio: 1.5,
            scenario_first: false,
        };
        assert_eq!(
            floor_drift(&[round(170.0), round(200.0), round(180.0)]),
            None
        );
        let w = floor_drift(&[round(170.0), round(330.0), round(0.0)]).expect("a warning");
        assert!(w.contains("170.0–330.0") && w.contains("+94 %"), "{w}");
    }

    #[test]
    fn parses_testpmd_cycles_line() {
        let out = "  RX-packets: 5\n  CPU cycles/packet=61.25 (busy cycles=9063 / total io packets=560672) at 2600 MHz Clock\n";
        assert_eq!(parse_testpmd_cycles(out), Some(61.25));
        assert_eq!(parse_testpmd_cycles("nothing here"), None);
    }
}
