//! The daemon's configuration: a TOML file (see `fastpath.example.toml`)
//! plus command-line overrides. This module only parses and checks; it
//! creates nothing.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Errors of loading or checking a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with line and column.
        message: String,
    },
    /// The values are inconsistent.
    #[error("config: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// EAL options.
    #[serde(default)]
    pub eal: EalConfig,
    /// Packet buffer pool.
    #[serde(default)]
    pub mempool: MempoolSection,
    /// Ports.
    #[serde(default, rename = "port")]
    pub ports: Vec<PortSection>,
    /// Worker lcores and the rx queues each polls.
    #[serde(default, rename = "worker")]
    pub workers: Vec<WorkerSection>,
    /// The forwarding pipeline.
    #[serde(default)]
    pub pipeline: PipelineSection,
    /// Idle back-off.
    #[serde(default)]
    pub idle: IdleSection,
    /// Control socket.
    #[serde(default)]
    pub control: ControlSection,
    /// Compiled tables in shared memory.
    #[serde(default)]
    pub tables: TablesSection,
    /// Connection tracking, load-balancer affinity and expiry.
    #[serde(default)]
    pub conntrack: ConntrackSection,
    /// The Geneve uplink to other chassis (none: ports bound elsewhere are
    /// unreachable).
    pub tunnel: Option<TunnelSection>,
    /// How the large tables (flow caches, conntrack) are backed.
    #[serde(default)]
    pub memory: MemorySection,
}

/// `[memory]`: the flow caches and the conntrack table are reserved whole
/// and written once at start, so that the kernel backs them then and not
/// on the packet path. With `transparent_huge_pages` (the default) the
/// fastpath runs with glibc's `glibc.malloc.hugetlb=1`, which asks for
/// transparent huge pages for them (`madvise`): a connection or flow
/// touched at random then costs no TLB miss per access. It takes effect
/// when the kernel's THP mode is `madvise` or `always`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemorySection {
    /// Ask for transparent huge pages.
    #[serde(default = "yes")]
    pub transparent_huge_pages: bool,
}

impl Default for MemorySection {
    fn default() -> Self {
        MemorySection {
            transparent_huge_pages: true,
        }
    }
}

/// `[tunnel]`: the port Geneve packets to and from other chassis use, and
/// this chassis's tunnel address on it (the `Encap` IP the node role
/// registers).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TunnelSection {
    /// The `[[port]]` that faces the underlay.
    pub uplink: String,
    /// This chassis's tunnel address with the underlay subnet's prefix
    /// length, e.g. `192.168.100.11/24` (IPv4).
    pub local_ip: String,
    /// Next hop for remote chassis outside that subnet.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// The uplink MTU (outer IP packets); default: the port's `mtu`, else
    /// 1500. Pods get 58 bytes less.
    pub mtu: Option<u16>,
}

impl TunnelSection {
    /// The tunnel address and prefix length.
    pub fn address(&self) -> Result<(std::net::Ipv4Addr, u8), ConfigError> {
        let bad = || {
            ConfigError::Invalid(format!(
                "[tunnel] local_ip {:?} is not an IPv4 address with a prefix length (a.b.c.d/n)",
                self.local_ip
            ))
        };
        let (ip, prefix) = self.local_ip.split_once('/').ok_or_else(bad)?;
        let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            return Err(bad());
        }
        Ok((ip, prefix))
    }
}

/// Where the compiled tables come from.
/// `[conntrack]`: the one connection table of the process, shared by all
/// workers. Timeouts are idle times in seconds; unset ones keep the
/// defaults of `crate::conntrack::CtTimeouts` (Linux's).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConntrackSection {
    /// Most connections.
    #[serde(default = "default_ct_capacity")]
    pub capacity: usize,
    /// Shards (locks) of the table, rounded up to a power of two.
    #[serde(default = "default_ct_shards")]
    pub shards: usize,
    /// Most load-balancer affinity bindings (`commit_lb_aff`).
    #[serde(default = "default_ct_affinity")]
    pub affinity_capacity: usize,
    /// Most table slots one expiry pass visits (bounds the time an idle
    /// worker or the control thread spends in it).
    #[serde(default = "default_ct_expire_budget")]
    pub expire_budget: usize,
    /// TCP established.
    pub tcp_established_s: Option<u64>,
    /// TCP before the handshake completes (SYN sent / received).
    pub tcp_syn_s: Option<u64>,
    /// TCP closing (FIN seen, TIME-WAIT, reset).
    pub tcp_closing_s: Option<u64>,
    /// UDP seen both ways.
    pub udp_s: Option<u64>,
    /// UDP seen one way.
    pub udp_single_s: Option<u64>,
    /// ICMP echo.
    pub icmp_s: Option<u64>,
}

fn default_ct_capacity() -> usize {
    1 << 18
}
fn default_ct_shards() -> usize {
    64
}
fn default_ct_affinity() -> usize {
    1 << 16
}
fn default_ct_expire_budget() -> usize {
    4096
}

impl Default for ConntrackSection {
    fn default() -> Self {
        ConntrackSection {
            capacity: default_ct_capacity(),
            shards: default_ct_shards(),
            affinity_capacity: default_ct_affinity(),
            expire_budget: default_ct_expire_budget(),
            tcp_established_s: None,
            tcp_syn_s: None,
            tcp_closing_s: None,
            udp_s: None,
            udp_single_s: None,
            icmp_s: None,
        }
    }
}

impl ConntrackSection {
    /// The engine's configuration.
    pub fn engine_config(&self) -> crate::conntrack::ConntrackConfig {
        use std::time::Duration;
        let mut t = crate::conntrack::CtTimeouts::default();
        let secs = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_secs);
        t.tcp_established = secs(self.tcp_established_s, t.tcp_established);
        t.tcp_syn_sent = secs(self.tcp_syn_s, t.tcp_syn_sent);
        t.tcp_syn_recv = secs(self.tcp_syn_s, t.tcp_syn_recv);
        t.tcp_fin_wait = secs(self.tcp_closing_s, t.tcp_fin_wait);
        t.tcp_closing = secs(self.tcp_closing_s, t.tcp_closing);
        t.tcp_time_wait = secs(self.tcp_closing_s, t.tcp_time_wait);
        t.tcp_closed = secs(self.tcp_closing_s, t.tcp_closed);
        t.udp_multiple = secs(self.udp_s, t.udp_multiple);
        t.udp_single = secs(self.udp_single_s, t.udp_single);
        t.icmp = secs(self.icmp_s, t.icmp);
        crate::conntrack::ConntrackConfig {
            capacity: self.capacity,
            shards: self.shards,
            timeouts: t,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TablesSection {
    /// The shared-memory file the control process publishes into (hugetlbfs
    /// or /dev/shm). Unset: no tables (the xconnect pipeline needs none).
    pub path: Option<PathBuf>,
    /// How often the watcher looks for a new generation, in microseconds
    /// (default 1000: a new generation waits half a millisecond on average,
    /// and the watcher wakes a thousand times a second on its housekeeping
    /// CPU).
    #[serde(default = "default_tables_poll")]
    pub poll_us: u64,
}

fn default_tables_poll() -> u64 {
    1000
}

impl Default for TablesSection {
    fn default() -> Self {
        TablesSection {
            path: None,
            poll_us: default_tables_poll(),
        }
    }
}

/// EAL options.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EalConfig {
    /// Lcore list as EAL's `-l` (for instance `"1"` or `"0-2"`).
    #[serde(default = "default_lcores")]
    pub lcores: String,
    /// Main lcore (`--main-lcore`); defaults to the first of `lcores`.
    pub main_lcore: Option<u32>,
    /// Hugepage memory in MB (`-m`); unset lets EAL take what it needs.
    pub memory_mb: Option<u32>,
    /// `--file-prefix`, to run several DPDK processes side by side.
    pub file_prefix: Option<String>,
    /// `--huge-dir`.
    pub huge_dir: Option<String>,
    /// `--in-memory`: no shared files at all (no secondary processes).
    #[serde(default)]
    pub in_memory: bool,
    /// `--no-pci`: do not scan the PCI bus (virtual ports only).
    #[serde(default)]
    pub no_pci: bool,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// Any further EAL arguments, verbatim.
    #[serde(default)]
    pub extra_args: Vec<String>,
}

fn default_lcores() -> String {
    "0".into()
}

impl Default for EalConfig {
    fn default() -> Self {
        EalConfig {
            lcores: default_lcores(),
            main_lcore: None,
            memory_mb: None,
            file_prefix: None,
            huge_dir: None,
            in_memory: false,
            no_pci: false,
            log_level: None,
            extra_args: Vec::new(),
        }
    }
}

impl EalConfig {
    /// The EAL argument vector (without the program name).
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["-l".to_string(), self.lcores.clone()];
        if let Some(m) = self.main_lcore {
            a.push(format!("--main-lcore={m}"));
        }
        if let Some(m) = self.memory_mb {
            a.push("-m".into());
            a.push(m.to_string());
        }
        if let Some(p) = &self.file_prefix {
            a.push(format!("--file-prefix={p}"));
        }
        if let Some(d) = &self.huge_dir {
            a.push(format!("--huge-dir={d}"));
        }
        if self.in_memory {
            a.push("--in-memory".into());
        }
        if self.no_pci {
            a.push("--no-pci".into());
        }
        if let Some(l) = &self.log_level {
            a.push(format!("--log-level={l}"));
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// Packet buffer pool sizing.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MempoolSection {
    /// Number of mbufs.
    #[serde(default = "default_mbufs")]
    pub mbufs: u32,
    /// Per-lcore cache.
    #[serde(default = "default_cache")]
    pub cache_size: u32,
    /// Data room per mbuf in bytes (headroom included). 2176 holds a
    /// 1518-byte frame; raise it (for instance 10240) for jumbo frames in one
    /// segment.
    #[serde(default = "default_data_room")]
    pub data_room: u16,
}

fn default_mbufs() -> u32 {
    16383
}
fn default_cache() -> u32 {
    256
}
fn default_data_room() -> u16 {
    2176
}

impl Default for MempoolSection {
    fn default() -> Self {
        MempoolSection {
            mbufs: default_mbufs(),
            cache_size: default_cache(),
            data_room: default_data_room(),
        }
    }
}

/// One port.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PortSection {
    /// Name used everywhere else in the config and in counters.
    pub name: String,
    /// DPDK devargs: a PCI address or a vdev string.
    pub devargs: String,
    /// Rx queues (default 1).
    #[serde(default = "one")]
    pub rx_queues: u16,
    /// Rx descriptors per queue.
    #[serde(default = "default_desc")]
    pub rx_desc: u16,
    /// Tx descriptors per queue.
    #[serde(default = "default_desc")]
    pub tx_desc: u16,
    /// MTU.
    pub mtu: Option<u16>,
    /// Promiscuous mode (default on).
    #[serde(default = "yes")]
    pub promiscuous: bool,
}

fn one() -> u16 {
    1
}
fn yes() -> bool {
    true
}
fn default_desc() -> u16 {
    1024
}

/// A worker lcore and the rx queues it polls.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    /// The lcore id (must be in `eal.lcores`).
    pub lcore: u32,
    /// Rx queues as `port` (queue 0) or `port:queue`.
    pub rx: Vec<String>,
}

/// The pipeline.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Pipeline kind: `xconnect`, or `ovn` (the OVN logical pipeline over
    /// the compiled tables; needs `[tables] path`).
    #[serde(default = "default_pipeline")]
    pub kind: String,
    /// For `xconnect`: pairs of port names patched to each other.
    #[serde(default)]
    pub xconnect: Vec<[String; 2]>,
    /// For `ovn`: flow cache entries per worker lcore.
    #[serde(default = "default_flow_cache")]
    pub flow_cache_entries: usize,
    /// For `ovn`: megaflows per worker lcore (stateless verdicts kept under
    /// the mask of the key bits they depended on; 0: none).
    #[serde(default = "default_megaflows")]
    pub megaflow_entries: usize,
    /// For `ovn`: one in this many stateless verdicts a megaflow serves
    /// enters the flow cache (OVS-DPDK's `emc-insert-inv-prob`; 1: every
    /// one).
    #[serde(default = "default_insert_inv_prob")]
    pub flow_cache_insert_inv_prob: u32,
}

fn default_insert_inv_prob() -> u32 {
    100
}

fn default_megaflows() -> usize {
    8192
}

fn default_flow_cache() -> usize {
    65536
}

fn default_pipeline() -> String {
    "xconnect".into()
}

impl Default for PipelineSection {
    fn default() -> Self {
        PipelineSection {
            kind: default_pipeline(),
            xconnect: Vec::new(),
            flow_cache_entries: default_flow_cache(),
            megaflow_entries: default_megaflows(),
            flow_cache_insert_inv_prob: default_insert_inv_prob(),
        }
    }
}

/// Idle back-off: after `polls` consecutive empty polls of all its queues a
/// worker sleeps `sleep_us` microseconds per further empty round. Off by
/// default (a production lcore busy-polls); tests and the lab turn it on so a
/// small machine is not starved.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdleSection {
    /// Sleep when idle.
    #[serde(default)]
    pub backoff: bool,
    /// Empty rounds before sleeping.
    #[serde(default = "default_idle_polls")]
    pub polls: u32,
    /// Sleep per empty round, in microseconds.
    #[serde(default = "default_sleep")]
    pub sleep_us: u32,
}

fn default_idle_polls() -> u32 {
    1000
}
fn default_sleep() -> u32 {
    100
}

impl Default for IdleSection {
    fn default() -> Self {
        IdleSection {
            backoff: false,
            polls: default_idle_polls(),
            sleep_us: default_sleep(),
        }
    }
}

/// Control socket.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Unix socket path.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
}

fn default_socket() -> PathBuf {
    PathBuf::from(fastpath_api::DEFAULT_SOCKET)
}

impl Default for ControlSection {
    fn default() -> Self {
        ControlSection {
            socket: default_socket(),
        }
    }
}

/// A resolved rx queue: index into `Config::ports` and queue number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxQueueRef {
    /// Index of the port in `Config::ports`.
    pub port: usize,
    /// Queue number.
    pub queue: u16,
}

impl Config {
    /// Parses a configuration from TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Index of the port called `name`.
    pub fn port_index(&self, name: &str) -> Option<usize> {
        self.ports.iter().position(|p| p.name == name)
    }

    /// Resolves a `port[:queue]` reference.
    pub fn resolve_rx(&self, spec: &str) -> Result<RxQueueRef, ConfigError> {
        let (name, queue) = match spec.rsplit_once(':') {
            Some((n, q)) => {
                let q: u16 = q.parse().map_err(|_| {
                    ConfigError::Invalid(format!("rx queue {spec:?}: {q:?} is not a queue number"))
                })?;
                (n, q)
            }
            None => (spec, 0),
        };
        let port = self.port_index(name).ok_or_else(|| {
            ConfigError::Invalid(format!("rx queue {spec:?}: no port named {name:?}"))
        })?;
        if queue >= self.ports[port].rx_queues {
            return Err(ConfigError::Invalid(format!(
                "rx queue {spec:?}: port {name:?} has {} rx queue(s)",
                self.ports[port].rx_queues
            )));
        }
        Ok(RxQueueRef { port, queue })
    }

    /// Checks cross-references and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.conntrack.capacity == 0 || self.conntrack.expire_budget == 0 {
            return Err(ConfigError::Invalid(
                "[conntrack] capacity and expire_budget must be positive".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.ports {
            if p.name.is_empty() {
                return Err(ConfigError::Invalid("a port has an empty name".into()));
            }
            if !seen.insert(p.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "port name {:?} is used twice",
                    p.name
                )));
            }
            if p.devargs.trim().is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "port {:?} has empty devargs",
                    p.name
                )));
            }
            if p.rx_queues == 0 {
                return Err(ConfigError::Invalid(format!(
                    "port {:?} needs at least one rx queue",
                    p.name
                )));
            }
        }
        let mut polled = std::collections::HashSet::new();
        let mut lcores = std::collections::HashSet::new();
        for w in &self.workers {
            if !lcores.insert(w.lcore) {
                return Err(ConfigError::Invalid(format!(
                    "lcore {} has two [[worker]] sections",
                    w.lcore
                )));
            }
            for spec in &w.rx {
                let r = self.resolve_rx(spec)?;
                if !polled.insert((r.port, r.queue)) {
                    return Err(ConfigError::Invalid(format!(
                        "rx queue {spec:?} is polled by two workers; a queue has one poller"
                    )));
                }
            }
        }
        if let Some(t) = &self.tunnel {
            if self.pipeline.kind != "ovn" {
                return Err(ConfigError::Invalid(
                    "[tunnel] needs pipeline kind \"ovn\"".into(),
                ));
            }
            if self.port_index(&t.uplink).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "[tunnel] uplink {:?}: no port of that name",
                    t.uplink
                )));
            }
            t.address()?;
            if t.mtu.is_some_and(|m| m < 576 + 58) {
                return Err(ConfigError::Invalid(
                    "[tunnel] mtu must leave pods at least 576 bytes (at least 634)".into(),
                ));
            }
        }
        match self.pipeline.kind.as_str() {
            "xconnect" => {
                let mut used = std::collections::HashSet::new();
                for [a, b] in &self.pipeline.xconnect {
                    for n in [a, b] {
                        if self.port_index(n).is_none() {
                            return Err(ConfigError::Invalid(format!(
                                "xconnect pair [{a:?}, {b:?}]: no port named {n:?}"
                            )));
                        }
                    }
                    if a == b {
                        return Err(ConfigError::Invalid(format!(
                            "xconnect pair [{a:?}, {b:?}] patches a port to itself"
                        )));
                    }
                    if !used.insert(a.clone()) || !used.insert(b.clone()) {
                        return Err(ConfigError::Invalid(format!(
                            "xconnect pair [{a:?}, {b:?}]: a port can be in one pair only"
                        )));
                    }
                }
            }
            "ovn" => {
                if self.tables.path.is_none() {
                    return Err(ConfigError::Invalid(
                        "pipeline kind \"ovn\" needs the compiled tables: set [tables] path (or --tables)".into(),
                    ));
                }
                if self.ports.len() > usize::from(u16::MAX) {
                    return Err(ConfigError::Invalid("too many ports".into()));
                }
                if self.pipeline.flow_cache_entries == 0 {
                    return Err(ConfigError::Invalid(
                        "[pipeline] flow_cache_entries must be at least 1".into(),
                    ));
                }
            }
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown pipeline kind {other:?} (known: xconnect, ovn)"
                )))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../fastpath.example.toml");

    #[test]
    fn memory_section_defaults_to_huge_pages() {
        let c = Config::from_toml("", "x").unwrap();
        assert!(c.memory.transparent_huge_pages);
        let c = Config::from_toml("[memory]\ntransparent_huge_pages = false\n", "x").unwrap();
        assert!(!c.memory.transparent_huge_pages);
        assert!(Config::from_toml("[memory]\nhuge = 1\n", "x").is_err());
    }

    #[test]
    fn example_config_parses() {
        let c = Config::from_toml(EXAMPLE, "example").unwrap();
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.pipeline.kind, "xconnect");
        assert_eq!(c.workers[0].rx.len(), 2);
        let args = c.eal.args();
        assert_eq!(&args[..2], &["-l".to_string(), "1".to_string()]);
    }

    #[test]
    fn tunnel_section_is_checked() {
        let base = r#"
[[port]]
name = "uplink"
devargs = "net_null0"
[tables]
path = "t"
[pipeline]
kind = "ovn"
"#;
        let ok = format!("{base}[tunnel]\nuplink = \"uplink\"\nlocal_ip = \"192.168.9.1/24\"\ngateway = \"192.168.9.254\"\n");
        let c = Config::from_toml(&ok, "x").unwrap();
        let t = c.tunnel.unwrap();
        assert_eq!(t.address().unwrap(), ("192.168.9.1".parse().unwrap(), 24));
        for (bad, says) in [
            (
                "uplink = \"nope\"\nlocal_ip = \"192.168.9.1/24\"",
                "no port of that name",
            ),
            (
                "uplink = \"uplink\"\nlocal_ip = \"192.168.9.1\"",
                "prefix length",
            ),
            (
                "uplink = \"uplink\"\nlocal_ip = \"192.168.9.1/33\"",
                "prefix length",
            ),
            ("uplink = \"uplink\"\nlocal_ip = \"fd00::1/64\"", "IPv4"),
            (
                "uplink = \"uplink\"\nlocal_ip = \"192.168.9.1/24\"\nmtu = 600",
                "576",
            ),
        ] {
            let text = format!("{base}[tunnel]\n{bad}\n");
            let e = Config::from_toml(&text, "x").unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let xconnect = ok.replace("kind = \"ovn\"", "kind = \"xconnect\"");
        assert!(Config::from_toml(&xconnect, "x")
            .unwrap_err()
            .to_string()
            .contains("needs pipeline kind"));
    }

    #[test]
    fn refuses_unknown_fields_with_location() {
        let e = Config::from_toml("[eal]\nlcorez = \"1\"\n", "t.toml").unwrap_err();
        let s = e.to_string();
        assert!(s.contains("t.toml") && s.contains("lcorez"), "{s}");
    }

    #[test]
    fn refuses_bad_references() {
        let base = r#"
[[port]]
name = "a"
devargs = "net_null0"
[[port]]
name = "b"
devargs = "net_null1"
"#;
        let bad_rx = format!("{base}[[worker]]\nlcore = 1\nrx = [\"c\"]\n");
        assert!(Config::from_toml(&bad_rx, "x")
            .unwrap_err()
            .to_string()
            .contains("no port named \"c\""));
        let bad_q = format!("{base}[[worker]]\nlcore = 1\nrx = [\"a:3\"]\n");
        assert!(Config::from_toml(&bad_q, "x")
            .unwrap_err()
            .to_string()
            .contains("1 rx queue"));
        let twice = format!(
            "{base}[[worker]]\nlcore = 1\nrx = [\"a\"]\n[[worker]]\nlcore = 2\nrx = [\"a:0\"]\n"
        );
        assert!(Config::from_toml(&twice, "x")
            .unwrap_err()
            .to_string()
            .contains("two workers"));
        let pair = format!("{base}[pipeline]\nxconnect = [[\"a\", \"a\"]]\n");
        assert!(Config::from_toml(&pair, "x")
            .unwrap_err()
            .to_string()
            .contains("itself"));
        let kind = format!("{base}[pipeline]\nkind = \"magic\"\n");
        assert!(Config::from_toml(&kind, "x")
            .unwrap_err()
            .to_string()
            .contains("unknown pipeline"));
        let dup = format!("{base}[[port]]\nname = \"a\"\ndevargs = \"x\"\n");
        assert!(Config::from_toml(&dup, "x")
            .unwrap_err()
            .to_string()
            .contains("used twice"));
    }

    #[test]
    fn ovn_pipeline_needs_tables() {
        let e = Config::from_toml("[pipeline]\nkind = \"ovn\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("[tables] path"), "{e}");
        let c = Config::from_toml(
            "[pipeline]\nkind = \"ovn\"\nflow_cache_entries = 128\n[tables]\npath = \"/dev/shm/t\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.pipeline.flow_cache_entries, 128);
    }

    #[test]
    fn eal_args_from_options() {
        let e = EalConfig {
            lcores: "0-1".into(),
            main_lcore: Some(0),
            memory_mb: Some(512),
            file_prefix: Some("fp".into()),
            huge_dir: None,
            in_memory: true,
            no_pci: true,
            log_level: Some("info".into()),
            extra_args: vec!["--vdev=net_null0".into()],
        };
        assert_eq!(
            e.args(),
            vec![
                "-l",
                "0-1",
                "--main-lcore=0",
                "-m",
                "512",
                "--file-prefix=fp",
                "--in-memory",
                "--no-pci",
                "--log-level=info",
                "--vdev=net_null0"
            ]
        );
    }

    #[test]
    fn conntrack_section_sets_capacity_and_timeouts() {
        let c = Config::from_toml(
            "[conntrack]\ncapacity = 1000\nshards = 4\ntcp_established_s = 60\nudp_s = 5\n",
            "t",
        )
        .unwrap();
        let e = c.conntrack.engine_config();
        assert_eq!((e.capacity, e.shards), (1000, 4));
        assert_eq!(
            e.timeouts.tcp_established,
            std::time::Duration::from_secs(60)
        );
        assert_eq!(e.timeouts.udp_multiple, std::time::Duration::from_secs(5));
        let d = crate::conntrack::CtTimeouts::default();
        assert_eq!(e.timeouts.icmp, d.icmp, "unset timeouts keep the defaults");
        assert!(Config::from_toml("[conntrack]\ncapacity = 0\n", "t").is_err());
        assert!(Config::from_toml("[conntrack]\nbogus = 1\n", "t").is_err());
    }
}
