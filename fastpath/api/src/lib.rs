//! The control-socket protocol of the fastpath: request and response types
//! shared by the daemon (which serves them off the worker lcores) and by
//! `fastpathctl`.
//!
//! Wire format: one JSON object per line in each direction. A request is
//! `{"cmd": "<name>", ...arguments}`; the answer is `{"ok": true, "result": ...}`
//! or `{"ok": false, "error": "<readable message>"}`. This crate owns only the
//! shapes; it never touches DPDK or the sockets themselves.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default path of the control socket.
pub const DEFAULT_SOCKET: &str = "/run/fastpath/control.sock";

/// A request sent to the fastpath.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Liveness check; answered with [`Pong`].
    Ping,
    /// The ports and their link state and counters.
    Ports,
    /// Counters of every port and lcore, and drops by reason.
    Stats,
    /// Per-lcore busy/idle cycles and cycles per packet.
    Lcores,
    /// Reset the software counters (ports and lcores).
    ClearStats,
    /// The compiled tables in use: generation, age, sections, readers.
    Tables,
    /// One section of the tables in use, as text.
    TablesDump {
        /// Section name (for instance `ports`) or numeric kind.
        section: String,
    },
    /// The flow cache of every lcore (pipeline `ovn`).
    Flows,
    /// Empty the flow cache of every lcore.
    FlowsFlush,
    /// Run the OVN pipeline on a described packet, on the control thread
    /// against the current program; answered with [`TraceResult`].
    Trace {
        /// Logical input port name.
        inport: String,
        /// `field=value, ...` terms, or the frame as hex digits.
        packet: String,
    },
    /// MAC bindings learned by `put_arp`/`put_nd` since start (most recent
    /// last, bounded).
    LearnedBindings,
    /// The Geneve tunnel: the uplink, this chassis's tunnel address, the
    /// remote chassis of the tables in use and the underlay neighbours;
    /// answered with [`TunnelInfo`].
    Tunnel,
    /// Creates a port at run time (DPDK hotplug) and hands it to the
    /// workers; answered with [`AddedPort`]. Adding a port that exists with
    /// the same kind answers its id again.
    AddPort {
        /// Port name (for instance the logical port `<pod>.<namespace>`).
        name: String,
        /// What device to create.
        kind: RuntimePortKind,
        /// The port id wanted (the id the tables map the logical port to);
        /// another free id is chosen when it is taken.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preferred_id: Option<u16>,
    },
    /// Removes a run-time port: the workers stop using it, then the device
    /// is stopped, closed and detached. Removing a missing port succeeds.
    RemovePort {
        /// Port name.
        name: String,
    },
    /// The tracked connections matching a filter (at most `limit`);
    /// answered with [`ConntrackList`].
    ConntrackList {
        /// Which connections.
        #[serde(default)]
        filter: ConntrackFilter,
        /// Most entries returned (0: the daemon's default).
        #[serde(default)]
        limit: usize,
    },
    /// How many connections are tracked; answered with [`ConntrackCount`].
    ConntrackCount,
    /// Removes the connections matching a filter (all without one);
    /// answered with [`ConntrackFlushed`].
    ConntrackFlush {
        /// Which connections.
        #[serde(default)]
        filter: ConntrackFilter,
    },
}

/// Which connections a conntrack request covers; an unset field matches
/// every connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackFilter {
    /// Zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<u16>,
    /// An address of the original or reply tuple (IPv4 or IPv6 text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// A TCP/UDP/SCTP port of the original or reply tuple.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// IP protocol number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<u8>,
}

/// One tracked connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConntrackEntry {
    /// Zone.
    pub zone: u16,
    /// Original direction, `proto src:port -> dst:port`.
    pub original: String,
    /// Reply direction (translated).
    pub reply: String,
    /// Protocol state (`ESTABLISHED`, `UDP`, ...).
    pub state: String,
    /// Status flags: `new` or `est`, `snat`, `dnat`.
    pub status: Vec<String>,
    /// `ct_mark`.
    pub mark: u32,
    /// `ct_label`, hex.
    pub label: String,
    /// Seconds since the last packet.
    pub idle_secs: f64,
    /// Seconds until it expires unless refreshed.
    pub expires_in_secs: f64,
    /// Packets [original, reply].
    pub packets: [u64; 2],
    /// Bytes [original, reply].
    pub bytes: [u64; 2],
}

/// Answer to [`Request::ConntrackList`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConntrackList {
    /// Entries.
    pub entries: Vec<ConntrackEntry>,
    /// Whether the limit cut the list short.
    pub truncated: bool,
}

/// Answer to [`Request::ConntrackCount`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackCount {
    /// Connections tracked.
    pub connections: usize,
    /// Capacity of the table.
    pub capacity: usize,
    /// Load-balancer affinity bindings.
    pub affinity: usize,
}

/// Answer to [`Request::ConntrackFlush`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackFlushed {
    /// Connections removed.
    pub flushed: usize,
}

/// The device behind a run-time port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum RuntimePortKind {
    /// A vhost-user socket (DPDK `net_vhost`).
    VhostUser {
        /// Socket path; its directory must exist.
        socket: String,
        /// Client mode: the fastpath connects to a socket the peer listens
        /// on (the peer may come later). Server mode when false.
        #[serde(default)]
        client: bool,
    },
    /// A kernel tap interface the fastpath creates (DPDK `net_tap`).
    Tap {
        /// Interface name (at most 15 bytes).
        iface: String,
    },
    /// An existing kernel interface polled through `AF_PACKET`.
    AfPacket {
        /// Interface name (at most 15 bytes).
        iface: String,
    },
}

/// Answer to [`Request::AddPort`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedPort {
    /// The fastpath port id (the index the tables' port map uses).
    pub port_id: u16,
    /// The DPDK devargs the device was created from.
    pub devargs: String,
    /// False when the port already existed (nothing was created).
    pub created: bool,
}

/// Answer to [`Request::RemovePort`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedPort {
    /// The id the port had; None when there was no such port.
    pub port_id: Option<u16>,
}

/// One lcore's flow cache, answer to [`Request::Flows`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LcoreFlows {
    /// DPDK lcore id.
    pub lcore_id: u32,
    /// Program generation the lcore forwards with.
    pub generation: u64,
    /// Maximum entries.
    pub capacity: usize,
    /// The entries.
    pub flows: Vec<FlowInfo>,
}

/// One flow cache entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowInfo {
    /// The exact-match key, summarised.
    pub key: String,
    /// Outputs with their rewrites, or the drop reason.
    pub actions: String,
    /// Generation it was built from (older than the lcore's: revalidated
    /// on its next packet).
    pub generation: u64,
    /// Packets that used it.
    pub hits: u64,
    /// Seconds since it was built.
    pub age_secs: f64,
}

/// Answer to [`Request::Trace`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceResult {
    /// The readable trace: every table, the flow hit, and the verdict.
    pub text: String,
    /// Outputs: logical port name, fastpath port, rewrite summary.
    pub outputs: Vec<TraceOutput>,
    /// Drop reason when nothing is output.
    pub drop: Option<String>,
}

/// One output of a traced packet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceOutput {
    /// Logical port.
    pub port: String,
    /// Fastpath port index, when local.
    pub fastpath_port: Option<u16>,
    /// `field=value` terms set, or what generated the packet.
    pub rewrite: String,
}

/// Answer to [`Request::Tunnel`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TunnelInfo {
    /// Whether a `[tunnel]` is configured (all else is empty otherwise).
    pub configured: bool,
    /// The uplink port's name.
    pub uplink: String,
    /// This chassis's tunnel address with prefix length.
    pub local_ip: String,
    /// The uplink's MAC.
    pub mac: String,
    /// Next hop outside the uplink's subnet, if any.
    pub gateway: Option<String>,
    /// Uplink MTU.
    pub mtu: u16,
    /// The MTU pods get (uplink MTU - 58).
    pub pod_mtu: u16,
    /// Remote chassis of the tables in use.
    pub chassis: Vec<RemoteChassisInfo>,
    /// Underlay neighbours learned by ARP: (address, MAC).
    pub neighbors: Vec<(String, String)>,
}

/// One remote chassis in [`TunnelInfo`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoteChassisInfo {
    /// `Chassis.name`.
    pub name: String,
    /// Tunnel address.
    pub ip: String,
    /// UDP port.
    pub port: u16,
    /// The next hop towards it and its MAC ("" when unresolved, or no
    /// route).
    pub next_hop: String,
    /// Logical ports bound to it in the tables in use.
    pub ports: usize,
}

/// A MAC binding learned by the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnedBinding {
    /// Logical datapath name.
    pub datapath: String,
    /// Logical port name (empty when unknown).
    pub port: String,
    /// IP address (empty for an FDB entry).
    pub ip: String,
    /// MAC address.
    pub mac: String,
}

/// A response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// A readable error when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A successful response carrying `value`.
    pub fn ok<T: Serialize>(value: &T) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => Response {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Response::error(format!("cannot encode result: {e}")),
        }
    }
    /// A failed response.
    pub fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }
}

/// Answer to [`Request::Ping`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    /// Process id of the fastpath.
    pub pid: u32,
    /// Seconds since the fastpath started.
    pub uptime_secs: f64,
    /// Name of the pipeline the workers run (for instance `xconnect`).
    pub pipeline: String,
}

/// One port as the fastpath sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortInfo {
    /// Fastpath port id: the index the tables' port map uses.
    pub port_id: u16,
    /// DPDK ethdev port id.
    #[serde(default)]
    pub dpdk_port_id: u16,
    /// Created at run time ([`Request::AddPort`]) rather than configured.
    #[serde(default)]
    pub runtime: bool,
    /// Configured name.
    pub name: String,
    /// DPDK devargs the port was created from (PCI address or vdev string).
    pub devargs: String,
    /// Driver name reported by DPDK (for instance `net_vhost`).
    pub driver: String,
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Link up.
    pub link_up: bool,
    /// Link speed in Mbit/s (0 when unknown).
    pub link_speed_mbps: u32,
    /// Number of rx queues.
    pub rx_queues: u16,
    /// Number of tx queues.
    pub tx_queues: u16,
    /// MTU.
    pub mtu: u16,
    /// Counters as seen by the fastpath software.
    pub counters: PortCounters,
    /// DPDK extended statistics (`rte_eth_xstats_get`), name to value.
    #[serde(default)]
    pub xstats: BTreeMap<String, u64>,
}

/// Software counters of a port, summed over lcores.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortCounters {
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets transmitted.
    pub tx_packets: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Packets the device could not take on transmit (dropped).
    pub tx_dropped: u64,
    /// Packets the device dropped on receive (`imissed` + `rx_nombuf`).
    pub rx_missed: u64,
}

/// One lcore's work counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LcoreInfo {
    /// DPDK lcore id.
    pub lcore_id: u32,
    /// The rx queues it polls, as `port:queue`.
    pub queues: Vec<String>,
    /// Packets processed.
    pub packets: u64,
    /// TSC cycles spent in iterations that received at least one packet.
    pub busy_cycles: u64,
    /// TSC cycles spent in iterations that received nothing (including sleep).
    pub idle_cycles: u64,
    /// Number of poll iterations.
    pub iterations: u64,
    /// `busy_cycles / packets` (0 when no packet).
    pub cycles_per_packet: f64,
    /// `busy / (busy + idle)` in percent.
    pub busy_percent: f64,
    /// Table generation the lcore currently forwards with (0 when none).
    #[serde(default)]
    pub table_generation: u64,
    /// Flow cache: packets that hit an entry.
    #[serde(default)]
    pub cache_hits: u64,
    /// Flow cache: packets no entry served (a megaflow served them, or
    /// they ran the interpreter).
    #[serde(default)]
    pub cache_misses: u64,
    /// Of the misses, packets a megaflow served without running the
    /// interpreter.
    #[serde(default)]
    pub cache_megaflow_hits: u64,
    /// Megaflows whose conntrack calls, replayed, answered otherwise than
    /// their preview promised (a commit the table refused for the packet,
    /// a race with another lcore): the interpreter ran those packets.
    #[serde(default)]
    pub cache_megaflow_diverged: u64,
    /// Flow cache: entries replaced to make room.
    #[serde(default)]
    pub cache_evictions: u64,
    /// Flow cache: entries of an older generation re-run.
    #[serde(default)]
    pub cache_revalidations: u64,
    /// Flow cache: entries held.
    #[serde(default)]
    pub cache_entries: u64,
    /// Times the kernel took the lcore's CPU from it while it could still
    /// run (its thread's `nonvoluntary_ctxt_switches`, not cleared by
    /// `clear-stats`). A polling lcore alone on its CPU sees next to none;
    /// a count that grows means another thread shares the CPU (isolate
    /// it). `None` when it cannot be read.
    #[serde(default)]
    pub preemptions: Option<u64>,
    /// Where the busy cycles went: cycles per packet of each stage of a
    /// busy poll (rx, parse, prefetch, decide, tx), measured on one poll
    /// in sixteen. Their sum is close to `cycles_per_packet`.
    #[serde(default)]
    pub stages: Vec<StageCycles>,
    /// Packets of the polls the stages were measured on.
    #[serde(default)]
    pub stage_packets: u64,
    /// Packets per busy poll (of those polls): up to the burst size, 32.
    /// Below it, the lcore keeps up with its queues and pays each burst's
    /// fixed costs over fewer packets, so its cycles per packet rise
    /// although it has time to spare (VPP's vectors per call).
    #[serde(default)]
    pub packets_per_poll: f64,
}

/// Cycles per packet of one stage of an lcore's busy polls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageCycles {
    /// The stage: `rx`, `parse`, `prefetch`, `decide` or `tx`.
    pub stage: String,
    /// TSC cycles per packet.
    pub cycles_per_packet: f64,
}

/// Answer to [`Request::Stats`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// TSC frequency in Hz, to turn cycles into time.
    pub tsc_hz: u64,
    /// Seconds since start.
    pub uptime_secs: f64,
    /// Per-port counters, by port name.
    pub ports: BTreeMap<String, PortCounters>,
    /// Per-lcore counters.
    pub lcores: Vec<LcoreInfo>,
    /// Drops by named reason, summed over lcores (only non-zero reasons).
    pub drops: BTreeMap<String, u64>,
}

/// Answer to [`Request::Tables`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TablesInfo {
    /// The shared-memory file (None when the fastpath runs without tables).
    pub path: Option<String>,
    /// Whether the file is open.
    pub open: bool,
    /// Generation the fastpath forwards with (0 = none yet).
    pub generation: u64,
    /// Latest generation the writer published.
    pub published_generation: u64,
    /// Wall-clock publish time of the generation in use, ns since the epoch.
    pub publish_time_ns: u64,
    /// Seconds since that publish.
    pub age_secs: f64,
    /// Sections of the generation in use.
    pub sections: Vec<SectionInfo>,
    /// Readers registered in the file (fastpath lcores and watcher).
    pub readers: Vec<TableReaderInfo>,
    /// Generation each worker lcore uses.
    pub lcores: Vec<(u32, u64)>,
    /// Slots refused, by reason.
    pub refused: BTreeMap<String, u64>,
}

/// One section of a table slot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SectionInfo {
    /// Section name.
    pub name: String,
    /// Kind id.
    pub kind: u32,
    /// Elements.
    pub count: u32,
    /// Bytes.
    pub bytes: u64,
}

/// One entry of the reader area.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableReaderInfo {
    /// Index in the reader area.
    pub index: usize,
    /// Process id.
    pub pid: u32,
    /// Who it is: `watcher`, `lcore N`, or a role number.
    pub role: String,
    /// Generation acknowledged.
    pub generation: u64,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
}

/// Errors of a control-socket client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket does not exist or nobody listens on it.
    #[error("fastpath is not running (no control socket at {path}): start it with `fastpath --config FILE`, or point to its socket with --socket")]
    NotRunning {
        /// The socket path tried.
        path: String,
    },
    /// Reading or writing the socket failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The answer was not valid protocol JSON.
    #[error("bad answer from fastpath: {0}")]
    Protocol(String),
    /// The fastpath refused the request.
    #[error("fastpath refused the request: {0}")]
    Refused(String),
}

/// A blocking client: one request, one answer, over a Unix socket.
pub struct Client {
    path: String,
    stream: std::io::BufReader<std::os::unix::net::UnixStream>,
}

impl Client {
    /// Connects to the fastpath's control socket.
    pub fn connect(path: &str) -> Result<Self, ClientError> {
        use std::io::ErrorKind;
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => {
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                Ok(Client {
                    path: path.to_string(),
                    stream: std::io::BufReader::new(s),
                })
            }
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                Err(ClientError::NotRunning {
                    path: path.to_string(),
                })
            }
            Err(e) => Err(ClientError::Io {
                path: path.to_string(),
                source: e,
            }),
        }
    }

    /// Sends `req` and returns the `result` value of a successful answer.
    pub fn call(&mut self, req: &Request) -> Result<serde_json::Value, ClientError> {
        use std::io::{BufRead, Write};
        let io = |e| ClientError::Io {
            path: self.path.clone(),
            source: e,
        };
        let mut line =
            serde_json::to_string(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        self.stream
            .get_mut()
            .write_all(line.as_bytes())
            .map_err(io)?;
        let mut answer = String::new();
        let n = self
            .stream
            .read_line(&mut answer)
            .map_err(|e| ClientError::Io {
                path: self.path.clone(),
                source: e,
            })?;
        if n == 0 {
            return Err(ClientError::Protocol(
                "connection closed before an answer".into(),
            ));
        }
        let resp: Response =
            serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if resp.ok {
            Ok(resp.result.unwrap_or(serde_json::Value::Null))
        } else {
            Err(ClientError::Refused(
                resp.error.unwrap_or_else(|| "no reason given".into()),
            ))
        }
    }

    /// Sends `req` and decodes the result as `T`.
    pub fn call_as<T: serde::de::DeserializeOwned>(
        &mut self,
        req: &Request,
    ) -> Result<T, ClientError> {
        let v = self.call(req)?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shape() {
        assert_eq!(
            serde_json::to_string(&Request::ClearStats).unwrap(),
            r#"{"cmd":"clear-stats"}"#
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"ports"}"#).unwrap();
        assert_eq!(r, Request::Ports);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"nope"}"#).is_err());
    }

    #[test]
    fn port_requests_wire_shape() {
        let r: Request = serde_json::from_str(
            r#"{"cmd":"add-port","name":"p.ns","kind":{"type":"vhost-user","socket":"/s/a.sock","client":true},"preferred_id":3}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::AddPort {
                name: "p.ns".into(),
                kind: RuntimePortKind::VhostUser {
                    socket: "/s/a.sock".into(),
                    client: true
                },
                preferred_id: Some(3)
            }
        );
        let t = Request::AddPort {
            name: "x".into(),
            kind: RuntimePortKind::Tap {
                iface: "fp1".into(),
            },
            preferred_id: None,
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"cmd":"add-port","name":"x","kind":{"type":"tap","iface":"fp1"}}"#
        );
        assert!(serde_json::from_str::<Request>(
            r#"{"cmd":"add-port","name":"x","kind":{"type":"floppy"}}"#
        )
        .is_err());
        let d: Request = serde_json::from_str(r#"{"cmd":"remove-port","name":"x"}"#).unwrap();
        assert_eq!(d, Request::RemovePort { name: "x".into() });
    }

    #[test]
    fn conntrack_requests_wire_shape() {
        let r: Request = serde_json::from_str(
            r#"{"cmd":"conntrack-list","filter":{"zone":3,"addr":"10.0.0.5"},"limit":10}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::ConntrackList {
                filter: ConntrackFilter {
                    zone: Some(3),
                    addr: Some("10.0.0.5".into()),
                    ..Default::default()
                },
                limit: 10
            }
        );
        let f: Request = serde_json::from_str(r#"{"cmd":"conntrack-flush"}"#).unwrap();
        assert_eq!(
            f,
            Request::ConntrackFlush {
                filter: ConntrackFilter::default()
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::ConntrackCount).unwrap(),
            r#"{"cmd":"conntrack-count"}"#
        );
        assert!(serde_json::from_str::<Request>(
            r#"{"cmd":"conntrack-list","filter":{"zone":"x"}}"#
        )
        .is_err());
    }

    #[test]
    fn response_roundtrip() {
        let p = Pong {
            pid: 7,
            uptime_secs: 1.5,
            pipeline: "xconnect".into(),
        };
        let line = serde_json::to_string(&Response::ok(&p)).unwrap();
        let back: Response = serde_json::from_str(&line).unwrap();
        assert!(back.ok);
        let p2: Pong = serde_json::from_value(back.result.unwrap()).unwrap();
        assert_eq!(p, p2);
        let e = serde_json::to_string(&Response::error("bad")).unwrap();
        assert_eq!(e, r#"{"ok":false,"error":"bad"}"#);
    }

    #[test]
    fn client_reports_not_running() {
        let err = Client::connect("/nonexistent/dir/control.sock")
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::NotRunning { .. }));
        assert!(err.to_string().contains("fastpath is not running"));
    }
}
