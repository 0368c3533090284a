//! OVS-DPDK, the data plane operators compare us with, measured in the same
//! harness: the same `pktgen` on the same core, the same vhost-user sockets,
//! OVS's PMD thread on the core the fastpath uses, and the same OVN
//! topology, which a real `ovn-controller` turns into OpenFlow on `br-int`.
//! Every scenario that has an OVS counterpart measures two OVS systems, one
//! next to the other:
//!
//! * `ovs-dpdk port-to-port`: `br0` with one OpenFlow rule per direction
//!   (`in_port=a.sock,actions=output:b.sock`), OVS's own floor (its
//!   "simple match" path: no EMC, no classifier);
//! * `ovs-dpdk + ovn-controller`: `br-int` with the scenario's logical
//!   ports bound by `external_ids:iface-id`.
//!
//! The figure is OVS's own: `dpif-netdev/pmd-stats-show`'s average
//! processing cycles per packet, busy cycles over packets received, which is
//! what the fastpath's `cycles_per_packet` counts too.
//!
//! Everything runs in a directory of its own under the run's temporary
//! directory (database, sockets, logs, control sockets), started in the
//! foreground and stopped when the [`Ovs`] is dropped. While OVS runs, its
//! PMD thread polls the DUT core; the fastpath never runs at the same time.

use crate::ovn_scenarios::Central;
use crate::runner::{
    alternate, median_index, print_rounds, round_label, run_pktgen, Better, GenReport,
    RoundFigures, RunArgs, SystemResult,
};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The OVS schema Debian's `openvswitch-common` installs.
const VSWITCH_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// Hugepage memory OVS's EAL takes, in MB (its shared mbuf pool for the
/// two vhost-user ports fits with room to spare).
const SOCKET_MEM_MB: u32 = 512;

/// Lines of each OVS log an error quotes.
const LOG_TAIL: usize = 8;

/// The chassis name `ovn-controller` registers.
pub(crate) const SYSTEM_ID: &str = "ovs-perf";

/// What `dpif-netdev/pmd-stats-show` says about the PMD thread that
/// forwarded the traffic.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PmdStats {
    /// Packets received.
    pub packets: u64,
    /// Processing (busy) cycles per packet.
    pub cycles_per_packet: f64,
    /// Datapath passes per packet (more than 1: recirculations, as after
    /// every `ct` action).
    pub passes_per_packet: f64,
    /// Hits of the port-to-port "simple match" path.
    pub simple_match_hits: u64,
    /// Exact-match cache hits.
    pub emc_hits: u64,
    /// Signature-match cache hits.
    pub smc_hits: u64,
    /// Megaflow (classifier) hits.
    pub megaflow_hits: u64,
    /// Misses sent to the slow path (upcalls).
    pub upcalls: u64,
}

impl PmdStats {
    /// The figures of the first PMD thread of a `pmd-stats-show` output
    /// that received packets (the main thread's block comes last and
    /// receives none in these runs); `None` when there is none.
    pub fn parse(text: &str) -> Option<PmdStats> {
        let mut best: Option<PmdStats> = None;
        let mut current: Option<PmdStats> = None;
        let flush = |current: &mut Option<PmdStats>, best: &mut Option<PmdStats>| {
            if let Some(s) = current.take() {
                if s.packets > 0 && best.is_none() {
                    *best = Some(s);
                }
            }
        };
        for line in text.lines() {
            if line.starts_with("pmd thread") || line.starts_with("main thread") {
                flush(&mut current, &mut best);
                current = Some(PmdStats::default());
                continue;
            }
            let Some(s) = current.as_mut() else { continue };
            let Some((name, value)) = line.trim().split_once(':') else {
                continue;
            };
            let first = value.split_whitespace().next().unwrap_or("");
            let int = || first.parse::<u64>().ok();
            let float = || first.parse::<f64>().ok();
            match name {
                "packets received" => s.packets = int()?,
                "avg processing cycles per packet" => s.cycles_per_packet = float()?,
                "avg. datapath passes per packet" => s.passes_per_packet = float()?,
                "simple match hits" => s.simple_match_hits = int()?,
                "emc hits" => s.emc_hits = int()?,
                "smc hits" => s.smc_hits = int()?,
                "megaflow hits" => s.megaflow_hits = int()?,
                "miss with success upcall" => s.upcalls = int()?,
                _ => {}
            }
        }
        flush(&mut current, &mut best);
        best
    }
}

/// One OVS system's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct OvsRun {
    /// The generator's and OVS's common figures.
    pub system: SystemResult,
    /// OVS's PMD counters.
    pub pmd: PmdStats,
    /// Connections in OVS's conntrack after the run (all zones).
    pub conntrack_entries: u64,
}

impl OvsRun {
    /// Packets per second of busy time on the PMD core, for a TSC of
    /// `tsc_hz` (OVS counts its cycles with the TSC): the rate of the
    /// scenarios where every packet is new (a flow, a connection).
    pub fn per_second(&self, tsc_hz: u64) -> f64 {
        if self.pmd.cycles_per_packet > 0.0 {
            tsc_hz as f64 / self.pmd.cycles_per_packet
        } else {
            0.0
        }
    }
}

/// OVS-DPDK beside a fastpath scenario: its own floor and the scenario,
/// measured one after the other (of the round with the median ratio).
#[derive(Debug, Clone, Serialize)]
pub struct OvsComparison {
    /// `ovs-dpdk port-to-port`.
    pub floor: OvsRun,
    /// `ovs-dpdk + ovn-controller` on the scenario's topology.
    pub scenario: OvsRun,
    /// `scenario / floor` of busy cycles per packet: what the fastpath's
    /// ratio to its own floor compares with.
    pub ratio: f64,
    /// Every round of `--rounds`.
    pub rounds: Vec<RoundFigures>,
    /// The index in `rounds` of the round reported.
    pub median_round: usize,
}

/// A running OVS-DPDK: `ovsdb-server`, `ovs-vswitchd` and, once a
/// chassis, `ovn-controller`, all in `dir`.
pub struct Ovs {
    dir: PathBuf,
    db: String,
    /// The generator's core, where every OVS process but the PMD thread
    /// runs (none of them on the core measured).
    gen_core: u32,
    /// Started processes, stopped in reverse order on drop.
    children: Vec<(&'static str, Child)>,
}

impl Drop for Ovs {
    fn drop(&mut self) {
        while let Some((_, mut c)) = self.children.pop() {
            crate::runner::terminate(&mut c);
        }
    }
}

impl Ovs {
    /// Starts the database and `ovs-vswitchd` (from `args.ovs_vswitchd`)
    /// in `dir` (created): DPDK on, the PMD thread on the DUT core, the
    /// other threads (and the other OVS processes) on the generator's
    /// core.
    pub fn start(args: &RunArgs, dir: &Path) -> Result<Ovs> {
        if !Path::new(&args.ovs_vswitchd).exists() {
            bail!(
                "{} is missing: OVS-DPDK comes with Debian's openvswitch-switch-dpdk \
                 (deploy/setup.sh installs it), or run with --no-ovs",
                args.ovs_vswitchd
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let conf = dir.join("conf.db");
        let _ = std::fs::remove_file(&conf);
        run(
            Command::new("ovsdb-tool")
                .arg("create")
                .arg(&conf)
                .arg(VSWITCH_SCHEMA),
            "ovsdb-tool create",
        )?;
        let db_sock = dir.join("db.sock");
        let mut ovs = Ovs {
            dir: dir.to_path_buf(),
            db: format!("unix:{}", db_sock.display()),
            gen_core: args.gen_core,
            children: Vec::new(),
        };
        let server = ovs
            .pinned("ovsdb-server")
            .arg(&conf)
            .arg(format!("--remote=punix:{}", db_sock.display()))
            .arg(format!(
                "--unixctl={}",
                dir.join("ovsdb-server.ctl").display()
            ))
            .arg(format!(
                "--log-file={}",
                dir.join("ovsdb-server.log").display()
            ))
            .spawn()
            .context("starting ovsdb-server (Debian package openvswitch-common)")?;
        ovs.children.push(("ovsdb-server", server));
        ovs.wait_path(&db_sock, "ovsdb-server")?;
        ovs.vsctl(&["--no-wait", "init"])?;
        ovs.vsctl(&[
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            "other_config:dpdk-init=true",
            &format!("other_config:dpdk-socket-mem={SOCKET_MEM_MB}"),
            &format!("other_config:pmd-cpu-mask={:#x}", 1u64 << args.dut_core),
            &format!("other_config:dpdk-lcore-mask={:#x}", 1u64 << args.gen_core),
            &format!(
                "other_config:dpdk-extra=--in-memory --no-pci --file-prefix=ovs-perf-{}",
                std::process::id()
            ),
        ])?;
        let vswitchd = ovs
            .pinned(&args.ovs_vswitchd)
            .arg(&ovs.db)
            .arg(format!("--unixctl={}", ovs.vswitchd_ctl().display()))
            .arg(format!(
                "--log-file={}",
                dir.join("ovs-vswitchd.log").display()
            ))
            .spawn()
            .with_context(|| format!("starting {}", args.ovs_vswitchd))?;
        ovs.children.push(("ovs-vswitchd", vswitchd));
        ovs.wait_path(&ovs.vswitchd_ctl(), "ovs-vswitchd")?;
        Ok(ovs)
    }

    /// The directory pktgen finds the vhost-user sockets in (`a.sock`,
    /// `b.sock`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn vswitchd_ctl(&self) -> PathBuf {
        self.dir.join("ovs-vswitchd.ctl")
    }

    /// A command with OVS's and OVN's run, log and database directories
    /// set to this one, its output to the void.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for var in [
            "OVS_RUNDIR",
            "OVS_LOGDIR",
            "OVS_DBDIR",
            "OVN_RUNDIR",
            "OVN_LOGDIR",
        ] {
            c.env(var, &self.dir);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// [`Ovs::command`] of `program` started on the generator's core
    /// (`taskset`, which then runs it in its own place).
    fn pinned(&self, program: &str) -> Command {
        let mut c = self.command("taskset");
        c.args(["-c", &self.gen_core.to_string()]).arg(program);
        c
    }

    /// Waits until `path` exists, or fails when a started process exited.
    fn wait_path(&mut self, path: &Path, what: &str) -> Result<()> {
        let start = Instant::now();
        while !path.exists() {
            for (name, c) in &mut self.children {
                if let Ok(Some(st)) = c.try_wait() {
                    bail!("{name} exited ({st}){}", log_tails(&self.dir));
                }
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("{what}: {} did not appear within 60 s", path.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `ovs-vsctl` against this database (waiting up to 60 s for
    /// `ovs-vswitchd` to apply a change, unless `--no-wait` is given).
    fn vsctl(&self, args: &[&str]) -> Result<String> {
        output(
            self.command("ovs-vsctl")
                .arg(format!("--db={}", self.db))
                .arg("--timeout=60")
                .args(args),
            "ovs-vsctl",
        )
    }

    /// `ovs-appctl` to `ovs-vswitchd`.
    fn appctl(&self, args: &[&str]) -> Result<String> {
        output(
            self.command("ovs-appctl")
                .arg("-t")
                .arg(self.vswitchd_ctl())
                .args(args),
            "ovs-appctl",
        )
    }

    /// `ovs-ofctl` on bridge `bridge`.
    fn ofctl(&self, bridge: &str, args: &[&str]) -> Result<String> {
        let mgmt = format!("unix:{}", self.dir.join(format!("{bridge}.mgmt")).display());
        output(
            self.command("ovs-ofctl")
                .arg(args[0])
                .arg(mgmt)
                .args(&args[1..]),
            "ovs-ofctl",
        )
    }

    /// A userspace bridge `bridge` with two vhost-user server ports
    /// (sockets of the same names in [`Ovs::dir`]), each with
    /// `external_ids:iface-id` when given, and `settings` on the bridge.
    fn bridge(
        &self,
        bridge: &str,
        settings: &[&str],
        ports: [(&str, Option<&str>); 2],
    ) -> Result<()> {
        let mut args: Vec<String> = vec![
            "--may-exist".into(),
            "add-br".into(),
            bridge.into(),
            "--".into(),
            "set".into(),
            "Bridge".into(),
            bridge.into(),
            "datapath_type=netdev".into(),
        ];
        args.extend(settings.iter().map(|s| s.to_string()));
        for (port, id) in ports {
            args.extend(
                [
                    "--",
                    "add-port",
                    bridge,
                    port,
                    "--",
                    "set",
                    "Interface",
                    port,
                ]
                .map(String::from),
            );
            args.push("type=dpdkvhostuser".into());
            if let Some(id) = id {
                args.push(format!("external_ids:iface-id={id}"));
            }
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.vsctl(&refs)?;
        Ok(())
    }

    /// OVS's floor: `br0` forwarding port `fa.sock` to `fb.sock` and back
    /// by one OpenFlow rule each way; its sockets are `a.sock` and
    /// `b.sock` (links) in [`Ovs::floor_dir`], for pktgen, so that it can
    /// stay beside `br-int`, whose ports take the names `a.sock` and
    /// `b.sock` in [`Ovs::dir`].
    pub fn port_to_port(&self) -> Result<()> {
        self.bridge("br0", &[], [("fa.sock", None), ("fb.sock", None)])?;
        self.ofctl("br0", &["del-flows"])?;
        self.ofctl(
            "br0",
            &["add-flow", "in_port=fa.sock,actions=output:fb.sock"],
        )?;
        self.ofctl(
            "br0",
            &["add-flow", "in_port=fb.sock,actions=output:fa.sock"],
        )?;
        let floor = self.floor_dir();
        std::fs::create_dir_all(&floor)?;
        for (link, port) in [("a.sock", "fa.sock"), ("b.sock", "fb.sock")] {
            let link = floor.join(link);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(self.dir.join(port), &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        Ok(())
    }

    /// Where pktgen finds `br0`'s sockets as `a.sock` and `b.sock`.
    pub fn floor_dir(&self) -> PathBuf {
        self.dir.join("port-to-port")
    }

    /// Makes this OVS an OVN chassis ([`SYSTEM_ID`]) of `central`'s
    /// Southbound DB: `br-int` with `a.sock` bound to logical port `a` and
    /// `b.sock` to `b`, and `ovn-controller` started; returns once both
    /// ports are up in the Southbound DB and OVS has the flows of the
    /// current Northbound state (`ovn-nbctl --wait=hv sync`). Any other
    /// chassis of the Southbound (the fastpath's `hv1`) is removed first,
    /// so that `ovn-controller` tunnels to nothing.
    pub fn ovn_chassis(&mut self, central: &Central, a: &str, b: &str) -> Result<()> {
        central
            .0
            .sbctl(&["--if-exists", "chassis-del", "hv1"])
            .context("ovn-sbctl chassis-del hv1")?;
        self.vsctl(&[
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            &format!("external_ids:system-id={SYSTEM_ID}"),
            &format!("external_ids:ovn-remote={}", central.0.sb.remote),
            "external_ids:ovn-encap-type=geneve",
            "external_ids:ovn-encap-ip=127.0.0.1",
            "external_ids:ovn-bridge-datapath-type=netdev",
        ])?;
        self.bridge(
            "br-int",
            &["fail-mode=secure", "other_config:disable-in-band=true"],
            [("a.sock", Some(a)), ("b.sock", Some(b))],
        )?;
        let controller = self
            .pinned("ovn-controller")
            .arg(&self.db)
            .arg(format!(
                "--log-file={}",
                self.dir.join("ovn-controller.log").display()
            ))
            .spawn()
            .context("starting ovn-controller (Debian package ovn-host)")?;
        self.children.push(("ovn-controller", controller));
        let start = Instant::now();
        loop {
            let up = [a, b].iter().all(|p| {
                central
                    .0
                    .sbctl(&[
                        "--bare",
                        "--columns=up",
                        "find",
                        "Port_Binding",
                        &format!("logical_port={p}"),
                    ])
                    .is_ok_and(|o| o.trim() == "true")
            });
            if up {
                break;
            }
            if let Some((name, c)) = self.children.last_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    bail!("{name} exited ({st}){}", log_tails(&self.dir));
                }
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "ovn-controller did not bind {a} and {b} within 60 s{}",
                    log_tails(&self.dir)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        central
            .nb(&["--timeout=60", "--wait=hv", "sync"])
            .context("waiting for ovn-controller to install the flows")
    }

    /// Connections in OVS's conntrack (all zones).
    pub fn conntrack_count(&self) -> Result<u64> {
        let text = self.appctl(&["dpctl/ct-get-nconns"])?;
        text.trim()
            .parse()
            .with_context(|| format!("dpctl/ct-get-nconns answered {text:?}"))
    }

    /// Forgets every connection of OVS's conntrack.
    pub fn flush_conntrack(&self) -> Result<()> {
        self.appctl(&["dpctl/flush-conntrack"])?;
        Ok(())
    }

    /// Zeroes the PMD counters.
    pub fn clear_stats(&self) -> Result<()> {
        self.appctl(&["dpif-netdev/pmd-stats-clear"])?;
        Ok(())
    }

    /// The PMD counters since [`Ovs::clear_stats`].
    pub fn pmd_stats(&self) -> Result<PmdStats> {
        let text = self.appctl(&["dpif-netdev/pmd-stats-show"])?;
        PmdStats::parse(&text).with_context(|| format!("no PMD thread received packets:\n{text}"))
    }

    /// Clears the counters, runs pktgen over the sockets `a.sock` and
    /// `b.sock` in `sockets` with `extra` arguments, and reads the
    /// counters: the system `name`.
    pub fn measure(
        &self,
        args: &RunArgs,
        sockets: &Path,
        name: &str,
        extra: &[String],
    ) -> Result<OvsRun> {
        self.clear_stats()?;
        let gen = run_pktgen(args, sockets, "ovs", extra)?;
        let pmd = self.pmd_stats()?;
        let conntrack_entries = self.conntrack_count()?;
        if gen.received == 0 {
            bail!(
                "{name}: no packet came back through OVS{}",
                log_tails(&self.dir)
            );
        }
        Ok(OvsRun {
            system: SystemResult {
                system: name.into(),
                sent: gen.sent,
                received: gen.received,
                mpps: gen.rx_mpps,
                gbps: gen.rx_gbps,
                cycles_per_packet: pmd.cycles_per_packet,
                stages: Vec::new(),
                packets_per_poll: 0.0,
            },
            pmd,
            conntrack_entries,
        })
    }

    /// Runs pktgen over `br-int`'s sockets (nothing measured).
    pub fn pktgen(&self, args: &RunArgs, extra: &[String]) -> Result<GenReport> {
        run_pktgen(args, &self.dir, "ovs", extra)
    }
}

/// The last lines of every log of the OVS in `dir`, for an error message
/// (the directory goes with the run).
fn log_tails(dir: &Path) -> String {
    let mut out = String::new();
    for log in ["ovsdb-server.log", "ovs-vswitchd.log", "ovn-controller.log"] {
        let Ok(text) = std::fs::read_to_string(dir.join(log)) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("\n--- last lines of {log}:"));
        for l in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
            out.push('\n');
            out.push_str(l);
        }
    }
    out
}

/// Runs a command to completion; its stderr in the error when it fails.
fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    output(cmd, what).map(|_| ())
}

/// Measures OVS's floor and OVS + `ovn-controller` on `central`'s
/// topology, the generator's logical ports `a` (it sends there) and `b`
/// (it receives there), pktgen given `extra` (the scenario's addresses) in
/// the OVN runs; `before_scenario` runs on the chassis before each
/// measurement of the scenario (a warm-up, or forgetting the connections
/// of the round before). `--rounds` rounds, alternating which goes first as the
/// fastpath's do; the round of the median ratio is reported. OVS runs in
/// `dir/ovs` and is stopped before this returns.
pub fn compare(
    args: &RunArgs,
    dir: &Path,
    central: &Central,
    ports: (&str, &str),
    name: &str,
    extra: &[String],
    mut before_scenario: impl FnMut(&Ovs) -> Result<()>,
) -> Result<OvsComparison> {
    eprintln!("perf: OVS-DPDK ({name}): starting it and binding the ports");
    let mut ovs = Ovs::start(args, &dir.join("ovs"))?;
    ovs.port_to_port()?;
    ovs.ovn_chassis(central, ports.0, ports.1)?;
    let what = |r: u32, system: &str| {
        eprintln!(
            "perf: {}{system}, PMD on core {}, pktgen on core {}",
            round_label(r, args.rounds),
            args.dut_core,
            args.gen_core
        );
    };
    let rounds = alternate(
        args.rounds,
        |r| {
            what(r, "OVS-DPDK port-to-port");
            ovs.measure(args, &ovs.floor_dir(), "ovs-dpdk port-to-port", &[])
        },
        |r| {
            before_scenario(&ovs)?;
            what(r, &format!("OVS-DPDK + ovn-controller ({name})"));
            ovs.measure(args, ovs.dir(), &format!("ovs-dpdk + ovn {name}"), extra)
        },
    )?;
    let figures: Vec<RoundFigures> = rounds
        .iter()
        .map(|(floor, run, first)| {
            RoundFigures::new(&floor.system, run.system.cycles_per_packet, *first)
        })
        .collect();
    let ratios: Vec<f64> = figures.iter().map(|f| f.ratio).collect();
    let chosen = median_index(&ratios, Better::Lower).context("no OVS round measured")?;
    let (floor, scenario, _) = rounds.into_iter().nth(chosen).context("no OVS round")?;
    Ok(OvsComparison {
        floor,
        ratio: figures[chosen].ratio,
        scenario,
        rounds: figures,
        median_round: chosen,
    })
}

/// A chart's bars with OVS's two systems appended, when measured.
pub fn with_bars(mut bars: Vec<(String, f64)>, ovs: Option<&OvsComparison>) -> Vec<(String, f64)> {
    if let Some(o) = ovs {
        for r in [&o.floor, &o.scenario] {
            bars.push((r.system.system.clone(), r.system.cycles_per_packet));
        }
    }
    bars
}

/// Prints the comparison: each system's busy cycles per packet and its
/// ratio to its own floor, and the fastpath's cycles against OVS's.
pub fn print_comparison(
    fastpath_floor: &SystemResult,
    fastpath: &SystemResult,
    ovs: &OvsComparison,
) {
    let own = |s: &SystemResult, f: &SystemResult| {
        if f.cycles_per_packet > 0.0 {
            format!("{:.3}", s.cycles_per_packet / f.cycles_per_packet)
        } else {
            "-".into()
        }
    };
    println!(
        "\n{:<32} {:>12} {:>14} {:>10} {:>10} {:>9} {:>8}",
        "SIDE BY SIDE", "CYCLES/PKT", "× OWN FLOOR", "EMC HITS", "MEGAFLOW", "UPCALLS", "PASSES"
    );
    for (s, f) in [(fastpath_floor, fastpath_floor), (fastpath, fastpath_floor)] {
        println!(
            "{:<32} {:>12.1} {:>14} {:>10} {:>10} {:>9} {:>8}",
            s.system,
            s.cycles_per_packet,
            own(s, f),
            "",
            "",
            "",
            ""
        );
    }
    for r in [&ovs.floor, &ovs.scenario] {
        println!(
            "{:<32} {:>12.1} {:>14} {:>10} {:>10} {:>9} {:>8.2}",
            r.system.system,
            r.system.cycles_per_packet,
            own(&r.system, &ovs.floor.system),
            r.pmd.emc_hits,
            r.pmd.megaflow_hits,
            r.pmd.upcalls,
            r.pmd.passes_per_packet
        );
    }
    if ovs.rounds.len() > 1 {
        println!("OVS-DPDK, ovn-controller against port-to-port:");
        print_rounds(&ovs.rounds, ovs.median_round);
    }
    if ovs.scenario.system.cycles_per_packet > 0.0 {
        println!(
            "the fastpath spends {:.2} × the busy cycles per packet OVS-DPDK spends on the same \
             traffic ({:.1} against {:.1})",
            fastpath.cycles_per_packet / ovs.scenario.system.cycles_per_packet,
            fastpath.cycles_per_packet,
            ovs.scenario.system.cycles_per_packet
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ovs-appctl dpif-netdev/pmd-stats-show` of OVS 3.1 after an OVN
    /// run with conntrack (recirculations) on one PMD thread.
    const SHOW: &str = "pmd thread numa_id 0 core_id 1:
  packets received: 51182624
  packet recirculations: 102365248
  avg. datapath passes per packet: 3.00
  phwol hits: 0
  mfex opt hits: 0
  simple match hits: 0
  emc hits: 51080780
  smc hits: 7
  megaflow hits: 101843
  avg. subtable lookups per megaflow hit: 1.00
  miss with success upcall: 12
  miss with failed upcall: 0
  avg. packets per output batch: 32.00
  idle cycles: 2485044998 (16.99%)
  processing cycles: 12140364891 (83.01%)
  avg cycles per packet: 285.75 (14625409889/51182624)
  avg processing cycles per packet: 237.20 (12140364891/51182624)
main thread:
  packets received: 0
  packet recirculations: 0
  avg. datapath passes per packet: 0.00
  emc hits: 0
";

    #[test]
    fn reads_the_forwarding_pmd_thread_s_figures() {
        assert_eq!(
            PmdStats::parse(SHOW),
            Some(PmdStats {
                packets: 51182624,
                cycles_per_packet: 237.20,
                passes_per_packet: 3.0,
                simple_match_hits: 0,
                emc_hits: 51080780,
                smc_hits: 7,
                megaflow_hits: 101843,
                upcalls: 12,
            })
        );
    }

    #[test]
    fn an_idle_or_garbled_output_has_no_figures() {
        // Threads that received nothing.
        let idle = SHOW.replace("packets received: 51182624", "packets received: 0");
        assert_eq!(PmdStats::parse(&idle), None);
        assert_eq!(PmdStats::parse(""), None);
        // A figure that is not a number is refused, not read as zero.
        let garbled = SHOW.replace("237.20 (", "n/a (");
        assert_eq!(PmdStats::parse(&garbled), None);
    }

    #[test]
    fn an_error_quotes_the_end_of_each_log_there_is() {
        let dir = tempfile::tempdir().unwrap();
        let log: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        std::fs::write(dir.path().join("ovs-vswitchd.log"), log).unwrap();
        let tails = log_tails(dir.path());
        assert!(tails.starts_with("\n--- last lines of ovs-vswitchd.log:"));
        assert!(tails.contains("line 13\n") && tails.ends_with("line 20"));
        assert!(!tails.contains("line 12\n"));
        assert!(!tails.contains("ovn-controller"));
        assert_eq!(log_tails(&dir.path().join("nothing")), "");
    }

    #[test]
    fn the_chart_gets_both_ovs_systems() {
        let run = |name: &str, c: f64| OvsRun {
            system: SystemResult {
                system: name.into(),
                sent: 0,
                received: 0,
                mpps: 0.0,
                gbps: 0.0,
                cycles_per_packet: c,
                stages: Vec::new(),
                packets_per_poll: 0.0,
            },
            pmd: PmdStats::default(),
            conntrack_entries: 0,
        };
        let comparison = OvsComparison {
            floor: run("ovs-dpdk port-to-port", 200.0),
            scenario: run("ovs-dpdk + ovn l2", 240.0),
            ratio: 1.2,
            rounds: Vec::new(),
            median_round: 0,
        };
        let ours = vec![("xconnect floor".to_string(), 150.0)];
        assert_eq!(with_bars(ours.clone(), None), ours);
        assert_eq!(
            with_bars(ours, Some(&comparison)),
            [
                ("xconnect floor".to_string(), 150.0),
                ("ovs-dpdk port-to-port".to_string(), 200.0),
                ("ovs-dpdk + ovn l2".to_string(), 240.0),
            ]
        );
    }
}
