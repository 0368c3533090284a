//! IP address management for subnets, the Kube-OVN way: CIDR(s) of the
//! subnet (IPv4, IPv6 or both), the gateway, `excludeIps` (addresses and
//! `first..last` ranges), dynamic allocation, static addresses and MACs,
//! pools, and conflict detection so no two owners ever hold one address.
//!
//! Owns the allocation table and its JSON state file (with its journal). It must not know
//! where requests come from (pod annotations, node objects) nor about OVN.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Why an address could not be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// The subnet is not known to the IPAM.
    #[error("subnet {0} does not exist")]
    UnknownSubnet(String),
    /// `cidrBlock` is not one CIDR or an IPv4,IPv6 pair.
    #[error("subnet {subnet}: bad cidrBlock {value:?}")]
    BadCidr {
        /// Subnet.
        subnet: String,
        /// The value.
        value: String,
    },
    /// A gateway, excluded address or requested address does not parse.
    #[error("{what}: bad address {value:?}")]
    BadAddress {
        /// Which field or annotation.
        what: String,
        /// The value.
        value: String,
    },
    /// A requested MAC does not parse.
    #[error("bad MAC address {0:?}")]
    BadMac(String),
    /// A requested address lies outside the subnet.
    #[error("address {ip} is not in subnet {subnet}")]
    OutOfSubnet {
        /// Address.
        ip: IpAddr,
        /// Subnet.
        subnet: String,
    },
    /// A requested address is the subnet's gateway or network address.
    #[error("address {ip} is reserved in subnet {subnet}")]
    Reserved {
        /// Address.
        ip: IpAddr,
        /// Subnet.
        subnet: String,
    },
    /// A requested address is held by someone else.
    #[error("address {ip} is already used by {owner}")]
    AddressInUse {
        /// Address.
        ip: IpAddr,
        /// Current holder.
        owner: String,
    },
    /// A requested MAC is held by someone else.
    #[error("MAC {mac} is already used by {owner}")]
    MacInUse {
        /// MAC.
        mac: String,
        /// Current holder.
        owner: String,
    },
    /// No free address is left (in the subnet, or in the pool).
    #[error("no free {family} address left in {subnet}{pool}")]
    Exhausted {
        /// Subnet.
        subnet: String,
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// " (pool)" when the pool ran out.
        pool: &'static str,
    },
    /// The state file could not be read or written.
    #[error("state file {path}: {error}")]
    StateFile {
        /// Path.
        path: String,
        /// What went wrong.
        error: String,
    },
}

/// The addressing of one subnet, from its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetPlan {
    /// Name.
    pub name: String,
    /// CIDRs, IPv4 first.
    pub cidrs: Vec<IpNet>,
    /// Gateways, one per CIDR, same order.
    pub gateways: Vec<IpAddr>,
    /// Excluded inclusive ranges.
    pub excludes: Vec<(IpAddr, IpAddr)>,
}

fn parse_ip(what: &str, s: &str) -> Result<IpAddr, IpamError> {
    s.trim().parse().map_err(|_| IpamError::BadAddress {
        what: what.to_string(),
        value: s.to_string(),
    })
}

/// Splits a Kube-OVN address list (`,` or `;` separated).
pub fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split([',', ';']).map(str::trim).filter(|x| !x.is_empty())
}

impl SubnetPlan {
    /// Builds the plan from Kube-OVN's `cidrBlock`, `gateway` and `excludeIps`.
    pub fn new(
        name: &str,
        cidr_block: &str,
        gateway: Option<&str>,
        exclude_ips: &[String],
    ) -> Result<Self, IpamError> {
        let bad = || IpamError::BadCidr {
            subnet: name.to_string(),
            value: cidr_block.to_string(),
        };
        let mut cidrs = Vec::new();
        for c in split_list(cidr_block) {
            let net: IpNet = c.parse().map_err(|_| bad())?;
            cidrs.push(net.trunc());
        }
        cidrs.sort_by_key(|c| matches!(c, IpNet::V6(_)));
        let families_ok = matches!(cidrs.as_slice(), [_] | [IpNet::V4(_), IpNet::V6(_)]);
        if !families_ok {
            return Err(bad());
        }
        let what = format!("subnet {name} gateway");
        let mut gateways = Vec::new();
        let given: Vec<IpAddr> = match gateway {
            Some(g) => split_list(g)
                .map(|g| parse_ip(&what, g))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        for c in &cidrs {
            let g = match given.iter().find(|g| c.contains(*g)) {
                Some(g) => *g,
                None => from_u128(c, to_u128(&c.network()) + 1),
            };
            gateways.push(g);
        }
        for g in &given {
            if !cidrs.iter().any(|c| c.contains(g)) {
                return Err(IpamError::OutOfSubnet {
                    ip: *g,
                    subnet: name.to_string(),
                });
            }
        }
        let what = format!("subnet {name} excludeIps");
        let mut excludes = Vec::new();
        for e in exclude_ips.iter().flat_map(|e| split_list(e)) {
            let (a, b) = match e.split_once("..") {
                Some((a, b)) => (parse_ip(&what, a)?, parse_ip(&what, b)?),
                None => {
                    let a = parse_ip(&what, e)?;
                    (a, a)
                }
            };
            if a.is_ipv4() != b.is_ipv4() || to_u128(&a) > to_u128(&b) {
                return Err(IpamError::BadAddress {
                    what,
                    value: e.to_string(),
                });
            }
            excludes.push((a, b));
        }
        Ok(SubnetPlan {
            name: name.to_string(),
            cidrs,
            gateways,
            excludes,
        })
    }

    /// `cidrBlock` as Kube-OVN writes it into the `cidr` annotation.
    pub fn cidr_string(&self) -> String {
        join(self.cidrs.iter())
    }

    /// Gateways as Kube-OVN writes them into the `gateway` annotation.
    pub fn gateway_string(&self) -> String {
        join(self.gateways.iter())
    }
}

/// Joins displayable values with commas.
pub fn join<T: std::fmt::Display>(it: impl Iterator<Item = T>) -> String {
    it.map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

fn to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(*a) as u128,
        IpAddr::V6(a) => u128::from(*a),
    }
}
fn from_u128(net: &IpNet, v: u128) -> IpAddr {
    match net {
        IpNet::V4(_) => IpAddr::V4((v as u32).into()),
        IpNet::V6(_) => IpAddr::V6(v.into()),
    }
}

/// One owner's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// The subnet.
    pub subnet: String,
    /// Addresses, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// MAC address, `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
}

impl Allocation {
    /// The addresses as Kube-OVN writes them into `ip_address`.
    pub fn ip_string(&self) -> String {
        join(self.ips.iter())
    }
}

/// What an owner asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Static addresses (`ovn.kubernetes.io/ip_address`).
    pub ips: Vec<IpAddr>,
    /// Static MAC (`ovn.kubernetes.io/mac_address`).
    pub mac: Option<String>,
    /// Pool to take an address from (`ovn.kubernetes.io/ip_pool`).
    pub pool: Vec<IpAddr>,
}

impl Request {
    /// Parses the annotation values.
    pub fn from_annotations(
        ip: Option<&str>,
        mac: Option<&str>,
        pool: Option<&str>,
    ) -> Result<Self, IpamError> {
        let parse = |what: &str, v: Option<&str>| -> Result<Vec<IpAddr>, IpamError> {
            v.map(|v| split_list(v).map(|x| parse_ip(what, x)).collect())
                .unwrap_or(Ok(Vec::new()))
        };
        let mac = match mac {
            Some(m) => Some(normalize_mac(m).ok_or_else(|| IpamError::BadMac(m.to_string()))?),
            None => None,
        };
        Ok(Request {
            ips: parse("ip_address", ip)?,
            mac,
            pool: parse("ip_pool", pool)?,
        })
    }
}

/// Lower-case colon-separated form of a unicast MAC, or `None`.
pub fn normalize_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut bytes = [0u8; 6];
    for (b, p) in bytes.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    if bytes[0] & 1 == 1 {
        return None; // multicast
    }
    Some(
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// A deterministic MAC for `owner` (Kube-OVN's `00:00:00` prefix), the
/// `attempt`-th candidate.
pub fn derived_mac(owner: &str, attempt: u32) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    owner.hash(&mut h);
    attempt.hash(&mut h);
    let v = h.finish();
    format!(
        "00:00:00:{:02x}:{:02x}:{:02x}",
        (v >> 16) as u8,
        (v >> 8) as u8,
        v as u8
    )
}

#[derive(Debug, Clone)]
struct Range {
    net: IpNet,
    lo: u128,
    hi: u128,
    /// Merged inclusive intervals not given dynamically.
    reserved: Vec<(u128, u128)>,
    reserved_count: u128,
    /// Addresses held that are outside `reserved`.
    used_dynamic: u128,
    cursor: u128,
}

impl Range {
    fn new(net: IpNet, gateway: IpAddr, excludes: &[(IpAddr, IpAddr)]) -> Self {
        let first = to_u128(&net.network());
        let last = to_u128(&net.broadcast());
        let (lo, hi) = match net {
            IpNet::V4(n) if n.prefix_len() < 31 => (first + 1, last - 1),
            IpNet::V4(_) => (first, last),
            IpNet::V6(n) if n.prefix_len() < 128 => (first + 1, last),
            IpNet::V6(_) => (first, last),
        };
        let mut iv: Vec<(u128, u128)> = excludes
            .iter()
            .filter(|(a, _)| a.is_ipv4() == net.network().is_ipv4())
            .map(|(a, b)| (to_u128(a).max(lo), to_u128(b).min(hi)))
            .filter(|(a, b)| a <= b)
            .collect();
        let g = to_u128(&gateway);
        if (lo..=hi).contains(&g) {
            iv.push((g, g));
        }
        iv.sort();
        let mut merged: Vec<(u128, u128)> = Vec::new();
        for (a, b) in iv {
            match merged.last_mut() {
                Some(l) if a <= l.1.saturating_add(1) => l.1 = l.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let reserved_count = merged.iter().map(|(a, b)| b - a + 1).sum();
        Range {
            net,
            lo,
            hi,
            reserved: merged,
            reserved_count,
            used_dynamic: 0,
            cursor: lo,
        }
    }
    fn reserved_interval(&self, v: u128) -> Option<(u128, u128)> {
        let i = self.reserved.partition_point(|(_, b)| *b < v);
        self.reserved.get(i).copied().filter(|(a, _)| *a <= v)
    }
    fn capacity(&self) -> u128 {
        (self.hi - self.lo + 1) - self.reserved_count
    }
    fn family(&self) -> &'static str {
        match self.net {
            IpNet::V4(_) => "IPv4",
            IpNet::V6(_) => "IPv6",
        }
    }
}

#[derive(Debug, Clone)]
struct SubnetPool {
    plan: SubnetPlan,
    ranges: Vec<Range>,
}

/// The allocation table of every subnet.
#[derive(Debug, Clone, Default)]
pub struct Ipam {
    subnets: BTreeMap<String, SubnetPool>,
    owners: BTreeMap<String, Allocation>,
    ips: BTreeMap<IpAddr, String>,
    macs: BTreeMap<String, String>,
}

/// The JSON state file: every allocation, so a restart never moves an address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// Allocations by owner (`pod:<ns>/<name>`, `node:<name>`).
    pub allocations: BTreeMap<String, Allocation>,
}

impl StateFile {
    /// Reads the file, then replays its journal ([`StateJournal`]); a
    /// missing file is an empty state. A journal line cut short by a crash
    /// (the last one) is skipped with a warning; any other bad line is an
    /// error.
    pub fn load(path: &Path) -> Result<Self, IpamError> {
        let err = |p: &Path, e: String| IpamError::StateFile {
            path: p.display().to_string(),
            error: e,
        };
        let mut state: StateFile = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| err(path, e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(e) => return Err(err(path, e.to_string())),
        };
        let jpath = journal_path(path);
        let text = match std::fs::read_to_string(&jpath) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
            Err(e) => return Err(err(&jpath, e.to_string())),
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_str::<JournalEntry>(line) {
                Ok(JournalEntry { owner, allocation }) => match allocation {
                    Some(a) => {
                        state.allocations.insert(owner, a);
                    }
                    None => {
                        state.allocations.remove(&owner);
                    }
                },
                Err(e) if i + 1 == lines.len() && !text.ends_with('\n') => {
                    log::warn!("{}: last line cut short, skipped: {e}", jpath.display());
                }
                Err(e) => return Err(err(&jpath, format!("line {}: {e}", i + 1))),
            }
        }
        Ok(state)
    }

    /// Writes the file atomically (temp file and rename).
    pub fn save(&self, path: &Path) -> Result<(), IpamError> {
        let err = |e: String| IpamError::StateFile {
            path: path.display().to_string(),
            error: e,
        };
        let text = serde_json::to_vec_pretty(self).map_err(|e| err(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
        // The file now holds every journalled change.
        match std::fs::remove_file(journal_path(path)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(e.to_string())),
        }
    }
}

/// The journal of a state file: `<file>.journal` next to it.
pub fn journal_path(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".journal");
    p.into()
}

/// One journal line: an owner's allocation set (`Some`) or released (`None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct JournalEntry {
    owner: String,
    allocation: Option<Allocation>,
}

/// Changes to a state file appended one line each, so that one pod's
/// allocation costs one short write instead of rewriting every allocation.
/// [`StateFile::load`] replays the journal over the file; the journal is
/// folded into the file ([`StateJournal::compact`]) once it grows past a
/// bound or on a full pass.
#[derive(Debug)]
pub struct StateJournal {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
    entries: usize,
}

impl StateJournal {
    /// The journal of state file `path` (opened on the first change).
    pub fn new(path: &Path) -> Self {
        StateJournal {
            path: path.to_path_buf(),
            file: None,
            entries: 0,
        }
    }

    /// The state file this journal belongs to.
    pub fn state_path(&self) -> &Path {
        &self.path
    }

    /// Lines written since the last compaction.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Appends the changes (owner, new allocation or `None` when released)
    /// in one write.
    pub fn append<'a>(
        &mut self,
        changes: impl IntoIterator<Item = (&'a str, Option<&'a Allocation>)>,
    ) -> Result<(), IpamError> {
        use std::io::Write;
        let jpath = journal_path(&self.path);
        let err = |e: String| IpamError::StateFile {
            path: jpath.display().to_string(),
            error: e,
        };
        let mut buf = Vec::new();
        let mut n = 0;
        for (owner, allocation) in changes {
            let entry = JournalEntry {
                owner: owner.to_string(),
                allocation: allocation.cloned(),
            };
            serde_json::to_writer(&mut buf, &entry).map_err(|e| err(e.to_string()))?;
            buf.push(b'\n');
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&jpath)
                .map_err(|e| err(e.to_string()))?;
            self.file = Some(f);
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(&buf).map_err(|e| err(e.to_string()))?;
        }
        self.entries += n;
        Ok(())
    }

    /// Whether the journal is long enough to fold into the file, given the
    /// number of allocations the file holds.
    pub fn wants_compaction(&self, allocations: usize) -> bool {
        self.entries > 1024.max(allocations / 4)
    }

    /// Rewrites the state file with `state` and empties the journal.
    pub fn compact(&mut self, state: &StateFile) -> Result<(), IpamError> {
        self.file = None;
        state.save(&self.path)?;
        self.entries = 0;
        Ok(())
    }
}

impl Ipam {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a subnet. Allocations of a replaced subnet that still
    /// fit stay; the others are released.
    pub fn set_subnet(&mut self, plan: SubnetPlan) {
        if self.subnets.get(&plan.name).is_some_and(|p| p.plan == plan) {
            return;
        }
        let ranges = plan
            .cidrs
            .iter()
            .zip(&plan.gateways)
            .map(|(c, g)| Range::new(*c, *g, &plan.excludes))
            .collect();
        let name = plan.name.clone();
        self.subnets
            .insert(name.clone(), SubnetPool { plan, ranges });
        let held: Vec<(String, Allocation)> = self
            .owners
            .iter()
            .filter(|(_, a)| a.subnet == name)
            .map(|(o, a)| (o.clone(), a.clone()))
            .collect();
        for (o, a) in held {
            self.release(&o);
            let _ = self.restore(&o, a);
        }
    }

    /// Removes a subnet and every allocation in it.
    pub fn remove_subnet(&mut self, name: &str) {
        let held: Vec<String> = self
            .owners
            .iter()
            .filter(|(_, a)| a.subnet == name)
            .map(|(o, _)| o.clone())
            .collect();
        for o in held {
            self.release(&o);
        }
        self.subnets.remove(name);
    }

    /// The plan of a subnet.
    pub fn plan(&self, subnet: &str) -> Option<&SubnetPlan> {
        self.subnets.get(subnet).map(|p| &p.plan)
    }

    /// Current allocations by owner.
    pub fn allocations(&self) -> &BTreeMap<String, Allocation> {
        &self.owners
    }

    /// The allocation of `owner`.
    pub fn get(&self, owner: &str) -> Option<&Allocation> {
        self.owners.get(owner)
    }

    /// Who holds `ip`.
    pub fn holder(&self, ip: &IpAddr) -> Option<&str> {
        self.ips.get(ip).map(String::as_str)
    }

    fn check_free(&self, owner: &str, subnet: &SubnetPool, ip: IpAddr) -> Result<usize, IpamError> {
        let idx = subnet
            .ranges
            .iter()
            .position(|r| r.net.contains(&ip))
            .ok_or_else(|| IpamError::OutOfSubnet {
                ip,
                subnet: subnet.plan.name.clone(),
            })?;
        let r = &subnet.ranges[idx];
        let v = to_u128(&ip);
        let is_gw = subnet.plan.gateways.contains(&ip);
        if is_gw || v < r.lo || v > r.hi {
            return Err(IpamError::Reserved {
                ip,
                subnet: subnet.plan.name.clone(),
            });
        }
        if let Some(o) = self.ips.get(&ip) {
            if o != owner {
                return Err(IpamError::AddressInUse {
                    ip,
                    owner: o.clone(),
                });
            }
        }
        Ok(idx)
    }

    fn take(&mut self, owner: &str, a: Allocation) {
        if let Some(pool) = self.subnets.get_mut(&a.subnet) {
            for ip in &a.ips {
                if let Some(r) = pool.ranges.iter_mut().find(|r| r.net.contains(ip)) {
                    if r.reserved_interval(to_u128(ip)).is_none() {
                        r.used_dynamic += 1;
                    }
                }
                self.ips.insert(*ip, owner.to_string());
            }
        }
        self.macs.insert(a.mac.clone(), owner.to_string());
        self.owners.insert(owner.to_string(), a);
    }

    /// Re-reserves an allocation recorded before (annotations or state
    /// file), exactly as recorded.
    pub fn restore(&mut self, owner: &str, a: Allocation) -> Result<(), IpamError> {
        if self.owners.get(owner) == Some(&a) {
            return Ok(());
        }
        let pool = self
            .subnets
            .get(&a.subnet)
            .ok_or_else(|| IpamError::UnknownSubnet(a.subnet.clone()))?;
        for ip in &a.ips {
            self.check_free(owner, pool, *ip)?;
        }
        if let Some(o) = self.macs.get(&a.mac).filter(|o| *o != owner) {
            return Err(IpamError::MacInUse {
                mac: a.mac.clone(),
                owner: o.clone(),
            });
        }
        self.release(owner);
        self.take(owner, a);
        Ok(())
    }

    /// Gives `owner` addresses in `subnet` as `req` asks. An owner that
    /// already holds a matching allocation keeps it.
    pub fn allocate(
        &mut self,
        owner: &str,
        subnet: &str,
        req: &Request,
    ) -> Result<Allocation, IpamError> {
        let pool = self
            .subnets
            .get(subnet)
            .ok_or_else(|| IpamError::UnknownSubnet(subnet.to_string()))?;
        if let Some(cur) = self.owners.get(owner) {
            let ips_ok = req.ips.is_empty() || req.ips == cur.ips;
            let mac_ok = req.mac.as_ref().is_none_or(|m| *m == cur.mac);
            let pool_ok = req.pool.is_empty() || cur.ips.iter().all(|ip| req.pool.contains(ip));
            if cur.subnet == subnet && ips_ok && mac_ok && pool_ok {
                return Ok(cur.clone());
            }
        }
        // Static addresses: all must be free (or ours).
        let mut ips: Vec<IpAddr> = Vec::new();
        if !req.ips.is_empty() {
            for ip in &req.ips {
                self.check_free(owner, pool, *ip)?;
            }
            ips = req.ips.clone();
        } else {
            for (idx, r) in pool.ranges.iter().enumerate() {
                let ip = if req.pool.iter().any(|ip| r.net.contains(ip)) {
                    req.pool
                        .iter()
                        .filter(|ip| r.net.contains(*ip))
                        .find(|ip| self.check_free(owner, pool, **ip).is_ok())
                        .copied()
                        .ok_or(IpamError::Exhausted {
                            subnet: subnet.to_string(),
                            family: r.family(),
                            pool: " (pool)",
                        })?
                } else {
                    self.next_free(owner, subnet, idx)?
                };
                ips.push(ip);
            }
        }
        ips.sort_by_key(|ip| ip.is_ipv6());
        let mac = match &req.mac {
            Some(m) => {
                if let Some(o) = self.macs.get(m).filter(|o| *o != owner) {
                    return Err(IpamError::MacInUse {
                        mac: m.clone(),
                        owner: o.clone(),
                    });
                }
                m.clone()
            }
            None => match self.owners.get(owner) {
                Some(cur) => cur.mac.clone(),
                None => {
                    let mut attempt = 0;
                    loop {
                        let m = derived_mac(owner, attempt);
                        if !self.macs.contains_key(&m) {
                            break m;
                        }
                        attempt += 1;
                    }
                }
            },
        };
        let a = Allocation {
            subnet: subnet.to_string(),
            ips,
            mac,
        };
        self.release(owner);
        self.take(owner, a.clone());
        // Move the cursor past what was just given dynamically.
        let dynamic = req.ips.is_empty() && req.pool.is_empty();
        if let Some(pool) = self.subnets.get_mut(subnet).filter(|_| dynamic) {
            for ip in &a.ips {
                if let Some(r) = pool.ranges.iter_mut().find(|r| r.net.contains(ip)) {
                    let v = to_u128(ip);
                    if v >= r.cursor {
                        r.cursor = if v >= r.hi { r.lo } else { v + 1 };
                    }
                }
            }
        }
        Ok(a)
    }

    fn next_free(&self, owner: &str, subnet: &str, idx: usize) -> Result<IpAddr, IpamError> {
        let pool = &self.subnets[subnet];
        let r = &pool.ranges[idx];
        let exhausted = IpamError::Exhausted {
            subnet: subnet.to_string(),
            family: r.family(),
            pool: "",
        };
        if r.used_dynamic >= r.capacity() {
            return Err(exhausted);
        }
        let mut v = r.cursor.clamp(r.lo, r.hi);
        let mut wrapped = false;
        loop {
            if let Some((_, end)) = r.reserved_interval(v) {
                if end >= r.hi {
                    if wrapped {
                        return Err(exhausted);
                    }
                    wrapped = true;
                    v = r.lo;
                } else {
                    v = end + 1;
                }
                continue;
            }
            let ip = from_u128(&r.net, v);
            match self.ips.get(&ip) {
                Some(o) if o != owner => {}
                _ => return Ok(ip),
            }
            if v >= r.hi {
                if wrapped {
                    return Err(exhausted);
                }
                wrapped = true;
                v = r.lo;
            } else {
                v += 1;
            }
        }
    }

    /// Frees everything `owner` holds.
    pub fn release(&mut self, owner: &str) {
        if let Some(a) = self.owners.remove(owner) {
            for ip in &a.ips {
                if self.ips.get(ip).is_some_and(|o| o == owner) {
                    self.ips.remove(ip);
                    if let Some(pool) = self.subnets.get_mut(&a.subnet) {
                        if let Some(r) = pool.ranges.iter_mut().find(|r| r.net.contains(ip)) {
                            if r.reserved_interval(to_u128(ip)).is_none() {
                                r.used_dynamic = r.used_dynamic.saturating_sub(1);
                            }
                        }
                    }
                }
            }
            if self.macs.get(&a.mac).is_some_and(|o| o == owner) {
                self.macs.remove(&a.mac);
            }
        }
    }

    /// The allocations as a state file.
    pub fn to_state(&self) -> StateFile {
        StateFile {
            allocations: self.owners.clone(),
        }
    }

    /// Owners that hold allocations, for garbage collection.
    pub fn owners(&self) -> BTreeSet<String> {
        self.owners.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(subnet: &str, ip: &str, mac: &str) -> Allocation {
        Allocation {
            subnet: subnet.into(),
            ips: vec![ip.parse().unwrap()],
            mac: mac.into(),
        }
    }

    #[test]
    fn state_journal_replays_over_the_file_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let a = alloc("ovn-default", "10.16.0.2", "00:00:00:00:00:02");
        let b = alloc("ovn-default", "10.16.0.3", "00:00:00:00:00:03");
        let c = alloc("ovn-default", "10.16.0.4", "00:00:00:00:00:04");
        let base = StateFile {
            allocations: BTreeMap::from([("pod:a/x".to_string(), a.clone())]),
        };
        base.save(&path).unwrap();
        let mut j = StateJournal::new(&path);
        j.append([("pod:a/y", Some(&b))]).unwrap();
        j.append([("pod:a/x", None), ("pod:a/z", Some(&c))])
            .unwrap();
        assert_eq!(j.entries(), 3);
        let file_before = std::fs::read(&path).unwrap();
        let loaded = StateFile::load(&path).unwrap();
        assert_eq!(
            loaded.allocations,
            BTreeMap::from([
                ("pod:a/y".to_string(), b.clone()),
                ("pod:a/z".to_string(), c.clone())
            ])
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            file_before,
            "appending never rewrites the file"
        );

        // A last line cut short by a crash is skipped; the rest replays.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(journal_path(&path))
            .unwrap();
        f.write_all(b"{\"owner\":\"pod:a/w\",\"alloc").unwrap();
        drop(f);
        assert_eq!(StateFile::load(&path).unwrap(), loaded);

        // A bad line in the middle is an error naming the journal and line.
        std::fs::write(
            journal_path(&path),
            "garbage\n{\"owner\":\"pod:a/q\",\"allocation\":null}\n",
        )
        .unwrap();
        let e = StateFile::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("state.json.journal") && e.contains("line 1"),
            "{e}"
        );

        // Compaction folds everything into the file and drops the journal.
        let mut j = StateJournal::new(&path);
        j.compact(&loaded).unwrap();
        assert!(!journal_path(&path).exists());
        assert_eq!(j.entries(), 0);
        assert_eq!(StateFile::load(&path).unwrap(), loaded);
        assert!(!j.wants_compaction(10_000));
        for i in 0..2600 {
            j.append([("pod:a/y", Some(&b))]).unwrap();
            if i == 1000 {
                assert!(!j.wants_compaction(10_000), "a quarter of the file first");
            }
        }
        assert!(j.wants_compaction(10_000));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ipam(name: &str, cidr: &str, excl: &[&str]) -> Ipam {
        let mut i = Ipam::new();
        let ex: Vec<String> = excl.iter().map(|s| s.to_string()).collect();
        i.set_subnet(SubnetPlan::new(name, cidr, None, &ex).unwrap());
        i
    }

    #[test]
    fn dynamic_allocation_skips_gateway_and_exhausts() {
        let mut i = ipam("s", "10.0.0.0/29", &[]);
        // .0 network, .1 gateway, .7 broadcast: .2 .. .6 are free.
        let mut got = Vec::new();
        for n in 0..5 {
            let a = i
                .allocate(&format!("pod:a/{n}"), "s", &Request::default())
                .unwrap();
            got.push(a.ips[0]);
        }
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ip)
        );
        let e = i.allocate("pod:a/x", "s", &Request::default()).unwrap_err();
        assert!(
            matches!(e, IpamError::Exhausted { family: "IPv4", .. }),
            "{e}"
        );
        // Releasing one frees exactly that address.
        i.release("pod:a/2");
        let a = i.allocate("pod:a/x", "s", &Request::default()).unwrap();
        assert_eq!(a.ips, vec![ip("10.0.0.4")]);
    }

    #[test]
    fn exclude_ranges_are_never_given() {
        let mut i = ipam("s", "10.0.0.0/28", &["10.0.0.2..10.0.0.10", "10.0.0.12"]);
        let a = i.allocate("pod:a/1", "s", &Request::default()).unwrap();
        let b = i.allocate("pod:a/2", "s", &Request::default()).unwrap();
        let c = i.allocate("pod:a/3", "s", &Request::default()).unwrap();
        assert_eq!(a.ips, vec![ip("10.0.0.11")]);
        assert_eq!(b.ips, vec![ip("10.0.0.13")]);
        assert_eq!(c.ips, vec![ip("10.0.0.14")]);
        assert!(i.allocate("pod:a/4", "s", &Request::default()).is_err());
        // A static address may sit in an excluded range.
        let req = Request::from_annotations(Some("10.0.0.5"), None, None).unwrap();
        assert_eq!(
            i.allocate("pod:a/5", "s", &req).unwrap().ips,
            vec![ip("10.0.0.5")]
        );
    }

    #[test]
    fn static_conflicts_are_refused() {
        let mut i = ipam("s", "10.0.0.0/24", &[]);
        let req =
            Request::from_annotations(Some("10.0.0.50"), Some("00:00:00:AA:BB:CC"), None).unwrap();
        let a = i.allocate("pod:a/1", "s", &req).unwrap();
        assert_eq!(a.mac, "00:00:00:aa:bb:cc");
        let e = i.allocate("pod:a/2", "s", &req).unwrap_err();
        assert_eq!(
            e,
            IpamError::AddressInUse {
                ip: ip("10.0.0.50"),
                owner: "pod:a/1".into()
            }
        );
        let req_mac = Request::from_annotations(None, Some("00:00:00:aa:bb:cc"), None).unwrap();
        assert!(matches!(
            i.allocate("pod:a/3", "s", &req_mac),
            Err(IpamError::MacInUse { .. })
        ));
        let gw = Request::from_annotations(Some("10.0.0.1"), None, None).unwrap();
        assert!(matches!(
            i.allocate("pod:a/4", "s", &gw),
            Err(IpamError::Reserved { .. })
        ));
        let out = Request::from_annotations(Some("10.9.0.1"), None, None).unwrap();
        assert!(matches!(
            i.allocate("pod:a/4", "s", &out),
            Err(IpamError::OutOfSubnet { .. })
        ));
        assert!(Request::from_annotations(None, Some("01:00:00:00:00:00"), None).is_err());
        // Dynamic allocation never hands out the static address.
        for n in 0..60 {
            let a = i
                .allocate(&format!("pod:b/{n}"), "s", &Request::default())
                .unwrap();
            assert_ne!(a.ips[0], ip("10.0.0.50"));
        }
        assert_eq!(i.holder(&ip("10.0.0.50")), Some("pod:a/1"));
    }

    #[test]
    fn dual_stack_gives_one_address_per_family() {
        let mut i = ipam("d", "fd00:10::/120,10.16.0.0/24", &["fd00:10::2"]);
        let p = i.plan("d").unwrap();
        assert_eq!(p.cidr_string(), "10.16.0.0/24,fd00:10::/120");
        assert_eq!(p.gateway_string(), "10.16.0.1,fd00:10::1");
        let a = i.allocate("pod:a/1", "d", &Request::default()).unwrap();
        assert_eq!(a.ips, vec![ip("10.16.0.2"), ip("fd00:10::3")]);
        assert_eq!(a.ip_string(), "10.16.0.2,fd00:10::3");
        let req = Request::from_annotations(Some("10.16.0.9,fd00:10::9"), None, None).unwrap();
        let b = i.allocate("pod:a/2", "d", &req).unwrap();
        assert_eq!(b.ips, vec![ip("10.16.0.9"), ip("fd00:10::9")]);
        assert!(SubnetPlan::new("x", "10.0.0.0/24,10.1.0.0/24", None, &[]).is_err());
        assert!(SubnetPlan::new("x", "nonsense", None, &[]).is_err());
    }

    #[test]
    fn pools_take_the_first_free_member() {
        let mut i = ipam("s", "10.0.0.0/24", &[]);
        let req = Request::from_annotations(None, None, Some("10.0.0.100;10.0.0.101")).unwrap();
        let a = i.allocate("pod:a/1", "s", &req).unwrap();
        let b = i.allocate("pod:a/2", "s", &req).unwrap();
        assert_eq!(a.ips, vec![ip("10.0.0.100")]);
        assert_eq!(b.ips, vec![ip("10.0.0.101")]);
        assert!(matches!(
            i.allocate("pod:a/3", "s", &req),
            Err(IpamError::Exhausted {
                pool: " (pool)",
                ..
            })
        ));
        // The owner keeps its pool address on a second call.
        assert_eq!(i.allocate("pod:a/1", "s", &req).unwrap(), a);
    }

    #[test]
    fn restart_keeps_addresses_through_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut i = ipam("s", "10.0.0.0/24,fd00::/120", &[]);
        let mut before = BTreeMap::new();
        for n in 0..20 {
            let o = format!("pod:a/{n}");
            before.insert(o.clone(), i.allocate(&o, "s", &Request::default()).unwrap());
        }
        // Free a few in the middle so a naive restart would shift addresses.
        for n in [3, 7] {
            let o = format!("pod:a/{n}");
            i.release(&o);
            before.remove(&o);
        }
        i.to_state().save(&path).unwrap();
        let state = StateFile::load(&path).unwrap();
        let mut j = ipam("s", "10.0.0.0/24,fd00::/120", &[]);
        for (o, a) in state.allocations {
            j.restore(&o, a).unwrap();
        }
        for (o, a) in &before {
            assert_eq!(j.allocate(o, "s", &Request::default()).unwrap(), *a);
        }
        // New owners never get an address someone holds.
        let n = j.allocate("pod:a/new", "s", &Request::default()).unwrap();
        assert!(before
            .values()
            .all(|a| a.ips[0] != n.ips[0] && a.mac != n.mac));
        assert!(StateFile::load(&dir.path().join("missing.json"))
            .unwrap()
            .allocations
            .is_empty());
        std::fs::write(&path, "{not json").unwrap();
        assert!(StateFile::load(&path).is_err());
    }

    #[test]
    fn large_ipv6_subnet_does_not_enumerate() {
        let mut i = ipam("v6", "fd00::/64", &["fd00::2..fd00::ffff"]);
        let a = i.allocate("pod:a/1", "v6", &Request::default()).unwrap();
        assert_eq!(a.ips, vec![ip("fd00::1:0")]);
    }
}
