//! `fastpathctl`: a view into a running fastpath through its control socket.
//! Every command prints a readable table by default and JSON with `--json`.
#![forbid(unsafe_code)]

mod render;

use anyhow::Result;
use clap::{Parser, Subcommand};
use fastpath_api::{Client, LcoreInfo, PortInfo, Request, Stats};
use std::time::{Duration, Instant};

/// Inspect and control a running fastpath.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Control socket of the fastpath.
    #[arg(long, global = true, default_value = fastpath_api::DEFAULT_SOCKET, env = "FASTPATH_SOCKET")]
    socket: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Is the fastpath alive? Prints pid, uptime and pipeline.
    Ping,
    /// Ports: driver, link, queues, MTU and counters. `ports add` and
    /// `ports del` create and remove run-time ports.
    Ports {
        /// Also print each port's DPDK extended statistics.
        #[arg(long)]
        xstats: bool,
        #[command(subcommand)]
        what: Option<PortsCmd>,
    },
    /// Counters of ports and lcores, and drops by reason.
    Stats {
        /// Refresh every INTERVAL seconds and show rates per second.
        #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
        /// With --watch: stop after this many refreshes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Per-lcore busy percentage and busy cycles per packet.
    Lcores {
        /// Split each lcore's busy cycles per packet by stage of the poll
        /// (rx, parse, prefetch, decide, tx), measured on one busy poll in
        /// sixteen since the last `clear-stats`.
        #[arg(long)]
        stages: bool,
    },
    /// Reset the software counters.
    ClearStats,
    /// The compiled tables in use: generation, age, sections, and which
    /// generation each lcore uses. `tables dump SECTION` prints a section.
    Tables {
        /// Read this table file directly (read-only) instead of asking the fastpath.
        #[arg(long)]
        file: Option<String>,
        #[command(subcommand)]
        what: Option<TablesCmd>,
    },
    /// The OVN flow cache (pipeline `ovn`).
    Flows {
        #[command(subcommand)]
        what: FlowsCmd,
    },
    /// Run the OVN pipeline on a packet, in the fastpath's control thread
    /// against the current tables, and print every table and flow it hit
    /// and the verdict. PACKET is `field=value, ...` (eth.src, eth.dst,
    /// ip4.src, ip4.dst, ip.ttl, tcp.dst, udp.src, icmp4.type, arp.op,
    /// arp.spa, arp.tpa, ...) or the frame in hex.
    Trace {
        /// Logical input port.
        #[arg(long)]
        inport: String,
        /// The packet.
        packet: String,
    },
    /// MAC bindings (put_arp, put_nd) and FDB entries (put_fdb) the
    /// pipeline learned.
    Learned,
    /// The Geneve tunnel: uplink, tunnel address, remote chassis and their
    /// next hops, underlay neighbours.
    Tunnel,
    /// The connection table (ct_next, ct_commit, ct_lb_mark, NAT).
    Conntrack {
        #[command(subcommand)]
        what: ConntrackCmd,
    },
}

/// Filters of `conntrack list` and `conntrack flush`.
#[derive(clap::Args, Debug, Clone, Default)]
struct CtFilterArgs {
    /// Only connections in this zone.
    #[arg(long)]
    zone: Option<u16>,
    /// Only connections with this address in either direction.
    #[arg(long)]
    addr: Option<std::net::IpAddr>,
    /// Only connections with this TCP/UDP/SCTP port in either direction.
    #[arg(long)]
    port: Option<u16>,
    /// Only this IP protocol (number, or tcp, udp, icmp, icmp6, sctp).
    #[arg(long, value_parser = parse_proto)]
    proto: Option<u8>,
}

impl CtFilterArgs {
    fn filter(&self) -> fastpath_api::ConntrackFilter {
        fastpath_api::ConntrackFilter {
            zone: self.zone,
            addr: self.addr.map(|a| a.to_string()),
            port: self.port,
            proto: self.proto,
        }
    }
}

fn parse_proto(s: &str) -> Result<u8, String> {
    Ok(match s {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "icmp6" => 58,
        "sctp" => 132,
        n => n
            .parse()
            .map_err(|_| format!("{n:?} is no protocol name or number"))?,
    })
}

#[derive(Subcommand, Debug)]
enum ConntrackCmd {
    /// The tracked connections: zone, both directions, state, mark.
    List {
        #[command(flatten)]
        filter: CtFilterArgs,
        /// Most entries printed.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// How many connections are tracked.
    Count,
    /// Remove connections (all of them without a filter).
    Flush {
        #[command(flatten)]
        filter: CtFilterArgs,
    },
}

#[derive(Subcommand, Debug)]
enum PortsCmd {
    /// Create a run-time port (exactly one of --vhost-user, --tap,
    /// --af-packet). Adding an existing identical port prints its id.
    Add {
        /// Port name.
        name: String,
        /// A vhost-user port at this socket path.
        #[arg(long, value_name = "SOCKET", group = "kind")]
        vhost_user: Option<String>,
        /// With --vhost-user: connect to the peer's socket (client mode).
        #[arg(long, requires = "vhost_user")]
        client: bool,
        /// A tap port: the fastpath creates this kernel interface.
        #[arg(long, value_name = "IFACE", group = "kind")]
        tap: Option<String>,
        /// An existing kernel interface, polled through AF_PACKET.
        #[arg(long, value_name = "IFACE", group = "kind")]
        af_packet: Option<String>,
        /// The port id wanted (another free one is used when it is taken).
        #[arg(long)]
        id: Option<u16>,
    },
    /// Remove a run-time port (nothing to do when it does not exist).
    Del {
        /// Port name.
        name: String,
    },
}

/// The request of `ports add`.
fn add_port_request(
    name: &str,
    vhost_user: Option<&String>,
    client: bool,
    tap: Option<&String>,
    af_packet: Option<&String>,
    id: Option<u16>,
) -> Result<Request> {
    use fastpath_api::RuntimePortKind;
    let kind = match (vhost_user, tap, af_packet) {
        (Some(socket), None, None) => RuntimePortKind::VhostUser {
            socket: socket.clone(),
            client,
        },
        (None, Some(iface), None) => RuntimePortKind::Tap {
            iface: iface.clone(),
        },
        (None, None, Some(iface)) => RuntimePortKind::AfPacket {
            iface: iface.clone(),
        },
        _ => anyhow::bail!(
            "say what the port is: one of --vhost-user SOCKET, --tap IFACE, --af-packet IFACE"
        ),
    };
    Ok(Request::AddPort {
        name: name.to_string(),
        kind,
        preferred_id: id,
    })
}

#[derive(Subcommand, Debug)]
enum FlowsCmd {
    /// Print every lcore's flow cache: match, actions and rewrites, hits, age.
    Dump,
    /// Empty every lcore's flow cache.
    Flush,
}

#[derive(Subcommand, Debug)]
enum TablesCmd {
    /// Print one section (for instance `ports`).
    Dump {
        /// Section name or numeric kind.
        section: String,
    },
}

/// `tables --file`: reads the file read-only, without the fastpath.
fn tables_from_file(file: &str, what: Option<&TablesCmd>, json: bool) -> Result<()> {
    let reader = fastpath_tables::Reader::open_readonly(file)?;
    let snap = reader.current().map_err(|r| {
        anyhow::anyhow!(
            "{file}: generation {} refused: {}",
            r.generation,
            r.reason.name()
        )
    })?;
    match what {
        Some(TablesCmd::Dump { section }) => {
            let kind = fastpath_tables::SectionKind::from_name(section)
                .or_else(|| section.parse().ok().map(fastpath_tables::SectionKind))
                .ok_or_else(|| anyhow::anyhow!("unknown section {section:?}"))?;
            let text = snap.dump(kind).ok_or_else(|| {
                anyhow::anyhow!(
                    "generation {} has no section {section:?}",
                    snap.generation()
                )
            })?;
            if json {
                println!("{}", serde_json::to_string(&text)?);
            } else {
                print!("{text}");
            }
        }
        None => print!("{}", snap.summary()),
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("fastpathctl: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<()> {
    if let Cmd::Tables {
        file: Some(file),
        what,
    } = &cli.cmd
    {
        return tables_from_file(file, what.as_ref(), cli.json);
    }
    let mut client = Client::connect(&cli.socket)?;
    match &cli.cmd {
        Cmd::Ping => {
            let v = client.call(&Request::Ping)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let p: fastpath_api::Pong = serde_json::from_value(v)?;
                println!(
                    "fastpath pid {} up {:.1}s, pipeline {}",
                    p.pid, p.uptime_secs, p.pipeline
                );
            }
        }
        Cmd::Ports {
            what:
                Some(PortsCmd::Add {
                    name,
                    vhost_user,
                    client: is_client,
                    tap,
                    af_packet,
                    id,
                }),
            ..
        } => {
            let req = add_port_request(
                name,
                vhost_user.as_ref(),
                *is_client,
                tap.as_ref(),
                af_packet.as_ref(),
                *id,
            )?;
            let v = client.call(&req)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let a: fastpath_api::AddedPort = serde_json::from_value(v)?;
                println!(
                    "port {name}: id {}{} ({})",
                    a.port_id,
                    if a.created { "" } else { ", already there" },
                    a.devargs
                );
            }
        }
        Cmd::Ports {
            what: Some(PortsCmd::Del { name }),
            ..
        } => {
            let v = client.call(&Request::RemovePort { name: name.clone() })?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let r: fastpath_api::RemovedPort = serde_json::from_value(v)?;
                match r.port_id {
                    Some(id) => println!("port {name}: removed (id {id})"),
                    None => println!("port {name}: not there, nothing to do"),
                }
            }
        }
        Cmd::Ports { xstats, what: None } => {
            let v = client.call(&Request::Ports)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let ports: Vec<PortInfo> = serde_json::from_value(v)?;
                print!("{}", render::ports(&ports, *xstats));
            }
        }
        Cmd::Stats { watch: None, .. } => {
            let v = client.call(&Request::Stats)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let s: Stats = serde_json::from_value(v)?;
                print!("{}", render::stats(&s));
            }
        }
        Cmd::Stats {
            watch: Some(interval),
            count,
        } => {
            let interval = Duration::from_secs_f64(interval.max(0.1));
            let mut prev: Stats = client.call_as(&Request::Stats)?;
            let mut prev_t = Instant::now();
            let mut n = 0u64;
            loop {
                std::thread::sleep(interval);
                let cur: Stats = client.call_as(&Request::Stats)?;
                let now = Instant::now();
                let rates = render::rates(&prev, &cur, now.duration_since(prev_t).as_secs_f64());
                if cli.json {
                    println!("{}", serde_json::to_string(&rates)?);
                } else {
                    print!("{}", render::rates_table(&rates));
                }
                prev = cur;
                prev_t = now;
                n += 1;
                if count.is_some_and(|c| n >= c) {
                    break;
                }
            }
        }
        Cmd::Lcores { stages } => {
            let v = client.call(&Request::Lcores)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let l: Vec<LcoreInfo> = serde_json::from_value(v)?;
                if *stages {
                    print!("{}", render::lcore_stages(&l));
                } else {
                    print!("{}", render::lcores(&l));
                }
            }
        }
        Cmd::Tables {
            what: Some(TablesCmd::Dump { section }),
            ..
        } => {
            let v = client.call(&Request::TablesDump {
                section: section.clone(),
            })?;
            if cli.json {
                println!("{v}");
            } else {
                print!("{}", v.as_str().unwrap_or_default());
            }
        }
        Cmd::Tables { what: None, .. } => {
            let v = client.call(&Request::Tables)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let t: fastpath_api::TablesInfo = serde_json::from_value(v)?;
                print!("{}", render::tables(&t));
            }
        }
        Cmd::Flows {
            what: FlowsCmd::Dump,
        } => {
            let v = client.call(&Request::Flows)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let f: Vec<fastpath_api::LcoreFlows> = serde_json::from_value(v)?;
                print!("{}", render::flows(&f));
            }
        }
        Cmd::Flows {
            what: FlowsCmd::Flush,
        } => {
            let v = client.call(&Request::FlowsFlush)?;
            if cli.json {
                println!("{v}");
            } else {
                println!("flushed {} entries", v["flushed"].as_u64().unwrap_or(0));
            }
        }
        Cmd::Trace { inport, packet } => {
            let v = client.call(&Request::Trace {
                inport: inport.clone(),
                packet: packet.clone(),
            })?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let t: fastpath_api::TraceResult = serde_json::from_value(v)?;
                print!("{}", t.text);
            }
        }
        Cmd::Tunnel => {
            let v = client.call(&Request::Tunnel)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let t: fastpath_api::TunnelInfo = serde_json::from_value(v)?;
                print!("{}", render::tunnel(&t));
            }
        }
        Cmd::Learned => {
            let v = client.call(&Request::LearnedBindings)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let l: Vec<fastpath_api::LearnedBinding> = serde_json::from_value(v)?;
                print!("{}", render::learned(&l));
            }
        }
        Cmd::Conntrack { what } => {
            let req = match what {
                ConntrackCmd::List { filter, limit } => Request::ConntrackList {
                    filter: filter.filter(),
                    limit: *limit,
                },
                ConntrackCmd::Count => Request::ConntrackCount,
                ConntrackCmd::Flush { filter } => Request::ConntrackFlush {
                    filter: filter.filter(),
                },
            };
            let v = client.call(&req)?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                match what {
                    ConntrackCmd::List { .. } => {
                        let l: fastpath_api::ConntrackList = serde_json::from_value(v)?;
                        print!("{}", render::conntrack(&l));
                    }
                    ConntrackCmd::Count => {
                        let c: fastpath_api::ConntrackCount = serde_json::from_value(v)?;
                        println!(
                            "{} connections (capacity {}), {} affinity bindings",
                            c.connections, c.capacity, c.affinity
                        );
                    }
                    ConntrackCmd::Flush { .. } => {
                        let f: fastpath_api::ConntrackFlushed = serde_json::from_value(v)?;
                        println!("flushed {} connections", f.flushed);
                    }
                }
            }
        }
        Cmd::ClearStats => {
            let v = client.call(&Request::ClearStats)?;
            if cli.json {
                println!("{v}");
            } else {
                println!("counters cleared");
            }
        }
    }
    Ok(())
}
