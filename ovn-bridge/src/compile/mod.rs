//! Compilation of the OVN Southbound state into the fastpath's table
//! sections (`fastpath_tables::ovn`).
//!
//! Owns the translation of `Datapath_Binding`, `Port_Binding`,
//! `Multicast_Group`, `MAC_Binding`, `Address_Set`, `Port_Group` and
//! `Logical_Flow` rows (datapath groups expanded, matches normalised into
//! byte tests on the logical flow vector, actions into instructions) and the
//! `compile` entry point that keeps a table file in step with a Southbound
//! database. It must not touch the Northbound side (the controller role) nor
//! decide how the fastpath classifies: it emits one rule per conjunction and
//! leaves the classifier to the reader.
//!
//! Conntrack zones come from the node role's zone table
//! ([`compile_with_zones`]) or, for the one-shot entry point, are numbered
//! deterministically ([`deterministic_zones`]).
//!
//! Compilation is incremental across snapshots when the caller keeps a
//! [`CompileMemo`] ([`compile_incremental`]): the result of each logical
//! flow (instructions and per-datapath rules) is kept under its row UUID
//! with a fingerprint of everything it was computed from — its texts, table,
//! priority and datapaths, and the current values of the names it refers to
//! (ports' keys and residency, address sets, port groups and their members'
//! keys). A flow whose fingerprint is unchanged is not parsed, normalised
//! or compiled again, so a pod added or a policy edited costs the flows it
//! touches plus assembling the slot.
//!
//! A flow whose action cannot be executed by the fastpath yet compiles to an
//! explicit `UNSUPPORTED` instruction naming the action (the packet is dropped
//! and counted under that name), and the compiler logs each such action once
//! per compilation: never silently wrong.

pub mod actions;
pub mod chassis;
mod matches;
pub mod run;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use fastpath_tables::ovn::{
    datapath_kind, pipeline, port_kind, zone_kind, OvnCtZone, OvnDatapath, OvnFdbEntry, OvnFlow,
    OvnInstruction, OvnLogicalPort, OvnMacBinding, OvnMatchTest, OvnMulticastGroup,
    OvnPortSecurity, NONE_U16, NONE_U32, OVN_PORT_LOCAL, OVN_PORT_SECURED,
};
use fastpath_tables::{BuildError, SectionKind, SlotBuilder};
use ovn_lflow::{normalize, parse_actions, parse_match, Lookup, SymbolTable};
use ovsdb::{sb, Database, Uuid};

/// Errors of compiling a Southbound snapshot.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A Southbound table could not be read as typed rows.
    #[error("southbound table: {0}")]
    Rows(#[from] ovsdb::RowError),
    /// The slot could not be built.
    #[error("building the table slot: {0}")]
    Build(#[from] BuildError),
    /// The remote-chassis section could not be built.
    #[error(transparent)]
    Chassis(#[from] chassis::ChassisCompileError),
}

/// What the compiler needs besides the database.
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    /// Name of this chassis (`Chassis.name`): ports bound to it are local.
    pub chassis: String,
    /// Fastpath port id of each local logical port (VIFs, localnet). A
    /// mapped port is bound here (once this chassis' row exists) even before
    /// the Southbound shows this chassis' claim.
    pub port_map: HashMap<String, u16>,
}

/// Counts of one compilation, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Logical flows read.
    pub logical_flows: usize,
    /// Classifier rules emitted (one per datapath and conjunction).
    pub rules: usize,
    /// Logical flows whose match or actions did not parse (skipped).
    pub rejected: usize,
    /// Flows holding an unsupported action, by action name.
    pub unsupported: BTreeMap<String, usize>,
    /// Logical ports bound to a remote chassis (reached through Geneve).
    pub remote_ports: usize,
}

/// A compiled snapshot: the slot contents plus statistics.
#[derive(Debug)]
pub struct Compiled {
    /// The slot, ready for `Writer::publish`.
    pub builder: SlotBuilder,
    /// Statistics.
    pub stats: CompileStats,
}

/// The ports the compiler knows, by name.
#[derive(Debug)]
pub(crate) struct PortIndex {
    /// Logical port name -> (datapath key, port key).
    pub keys: rustc_hash::FxHashMap<String, (u32, u32)>,
    /// Logical port name -> bound to this chassis.
    pub resident: rustc_hash::FxHashMap<String, bool>,
}

/// Address sets and the per-datapath port groups of the Southbound.
struct SbSets<'a> {
    address_sets: &'a HashMap<String, Vec<String>>,
    port_groups: &'a HashMap<String, Vec<String>>,
    datapath_key: u32,
}

impl Lookup for SbSets<'_> {
    fn address_set(&self, name: &str) -> Option<Vec<String>> {
        self.address_sets.get(name).cloned()
    }
    fn port_group(&self, name: &str) -> Option<Vec<String>> {
        // Southbound port groups are per datapath: `<tunnel key>_<name>`.
        self.port_groups
            .get(&format!("{}_{name}", self.datapath_key))
            .or_else(|| self.port_groups.get(name))
            .cloned()
    }
}

fn uuid_prefix(u: &Uuid) -> u32 {
    let b = u.as_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn port_kind_of(t: &str) -> u8 {
    match t {
        "" => port_kind::VIF,
        "patch" | "router" => port_kind::PATCH,
        "localnet" => port_kind::LOCALNET,
        "localport" => port_kind::LOCALPORT,
        "chassisredirect" => port_kind::CHASSISREDIRECT,
        "l3gateway" => port_kind::L3GATEWAY,
        _ => port_kind::OTHER,
    }
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff`.
pub(crate) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// An IP address as 16 bytes (IPv4 v4-mapped) and its family (4 or 6).
pub(crate) fn ip_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 4),
        IpAddr::V6(v6) => (v6.octets(), 6),
    }
}

/// Parses `port_security` entries (`"MAC [IP[/PLEN]...]"`) into flat entries.
fn port_security_entries(specs: &[String]) -> Vec<OvnPortSecurity> {
    let mut out = Vec::new();
    for spec in specs {
        let mut words = spec.split_whitespace();
        let Some(mac) = words.next().and_then(parse_mac) else {
            log::warn!("port_security {spec:?}: no MAC address, ignored");
            continue;
        };
        let mut any_ip = false;
        for w in words {
            let (addr, plen) = match w.split_once('/') {
                Some((a, p)) => (a, p.parse::<u8>().ok()),
                None => (w, None),
            };
            let Ok(ip) = addr.parse::<IpAddr>() else {
                log::warn!("port_security {spec:?}: {w:?} is not an address, ignored");
                continue;
            };
            let (bytes, family) = ip_bytes(ip);
            let full = if family == 4 { 32 } else { 128 };
            out.push(OvnPortSecurity {
                mac,
                family,
                prefix: plen.unwrap_or(full).min(full),
                addr: bytes,
            });
            any_ip = true;
        }
        if !any_ip {
            out.push(OvnPortSecurity {
                mac,
                family: 0,
                prefix: 0,
                addr: [0; 16],
            });
        }
    }
    out
}

/// Compiles a Southbound snapshot, with deterministic conntrack zones
/// ([`deterministic_zones`]): for the one-shot `compile` entry point and
/// tests.
pub fn compile(db: &Database, opts: &CompileOptions) -> Result<Compiled, CompileError> {
    compile_with_zones(db, opts, None)
}

/// Conntrack zones numbered 1, 2, ... in a stable order: every port by
/// (datapath key, port key), then each datapath's DNAT and SNAT zone. Keys
/// are named as the node role's zone table names them: the logical port,
/// or `<datapath uuid>_dnat` / `<datapath uuid>_snat`.
pub fn deterministic_zones(db: &Database) -> Result<BTreeMap<String, u16>, CompileError> {
    let mut dps: Vec<sb::DatapathBinding> = rows(db)?;
    dps.sort_by_key(|d| d.tunnel_key);
    let key: HashMap<Uuid, i64> = dps.iter().map(|d| (d.uuid, d.tunnel_key)).collect();
    let mut ports: Vec<sb::PortBinding> = rows(db)?;
    ports.retain(|p| key.contains_key(&p.datapath));
    ports.sort_by_key(|p| (key[&p.datapath], p.tunnel_key));
    let mut owners: Vec<String> = ports.into_iter().map(|p| p.logical_port).collect();
    for d in &dps {
        owners.push(format!("{}_dnat", d.uuid));
        owners.push(format!("{}_snat", d.uuid));
    }
    Ok(owners.into_iter().zip(1..=u16::MAX).collect())
}

/// Compiles a Southbound snapshot with the given conntrack zones (by owner:
/// logical port name, `<datapath uuid>_dnat`, `<datapath uuid>_snat`;
/// owners without a zone get zone 0), or deterministic ones when `None`.
pub fn compile_with_zones(
    db: &Database,
    opts: &CompileOptions,
    zones: Option<&BTreeMap<String, u16>>,
) -> Result<Compiled, CompileError> {
    compile_incremental(db, opts, zones, &mut CompileMemo::default())
}

/// [`compile_with_zones`] reusing (and refreshing) the per-flow results
/// kept in `memo` by earlier calls; see the module documentation.
pub fn compile_incremental(
    db: &Database,
    opts: &CompileOptions,
    zones: Option<&BTreeMap<String, u16>>,
    memo: &mut CompileMemo,
) -> Result<Compiled, CompileError> {
    let own_zones;
    let zones = match zones {
        Some(z) => z,
        None => {
            own_zones = deterministic_zones(db)?;
            &own_zones
        }
    };
    let symtab = SymbolTable::ovn_23_03();
    // Sized like the last compilation's, which this one mostly repeats.
    let (n_strings, string_bytes) = memo.last_sizes.strings;
    let mut b = SlotBuilder::with_string_capacity(n_strings, string_bytes);
    let mut stats = CompileStats::default();

    let chassis: Vec<sb::Chassis> = rows(db)?;
    let own_chassis: Option<Uuid> = chassis
        .iter()
        .find(|c| c.name == opts.chassis)
        .map(|c| c.uuid);

    // Datapaths.
    let mut dp_rows: Vec<sb::DatapathBinding> = rows(db)?;
    dp_rows.sort_by_key(|d| d.tunnel_key);
    let mut dp_key: rustc_hash::FxHashMap<Uuid, u32> = Default::default();
    let mut datapaths = Vec::new();
    let mut ct_zones: Vec<OvnCtZone> = Vec::new();
    for d in &dp_rows {
        let Ok(key) = u32::try_from(d.tunnel_key) else {
            continue;
        };
        let kind = if d.external_ids.contains_key("logical-router") {
            datapath_kind::ROUTER
        } else {
            datapath_kind::SWITCH
        };
        let name = d
            .external_ids
            .get("name")
            .cloned()
            .unwrap_or_else(|| d.uuid.to_string());
        dp_key.insert(d.uuid, key);
        // Every datapath has its DNAT and SNAT zones, as ovn-controller
        // allocates them: a router's NAT, a switch's hairpin SNAT.
        for (suffix, zk) in [("dnat", zone_kind::DNAT), ("snat", zone_kind::SNAT)] {
            if let Some(&zone) = zones.get(&format!("{}_{suffix}", d.uuid)) {
                ct_zones.push(OvnCtZone {
                    datapath: key,
                    port: NONE_U32,
                    kind: zk,
                    reserved: 0,
                    zone,
                });
            }
        }
        datapaths.push(OvnDatapath {
            key,
            kind,
            reserved: [0; 3],
            name: b.intern(&name)?,
        });
    }

    // Ports.
    memo.port_rows.refresh(db)?;
    let mut pb_rows: Vec<std::sync::Arc<sb::PortBinding>> = memo.port_rows.rows().to_vec();
    pb_rows.retain(|p| dp_key.contains_key(&p.datapath) && u32::try_from(p.tunnel_key).is_ok());
    pb_rows.sort_by(|a, b| {
        (dp_key[&a.datapath], a.tunnel_key).cmp(&(dp_key[&b.datapath], b.tunnel_key))
    });
    // Bound here: claimed by this chassis, or a port this node has (its
    // claim may not be back from the Southbound yet: ovn-controller, too,
    // binds a port whose interface it has in the same pass as it claims it).
    let resident = |p: &sb::PortBinding| {
        own_chassis.is_some()
            && (p.chassis == own_chassis || opts.port_map.contains_key(&p.logical_port))
    };
    let index_of: HashMap<String, u32> = pb_rows
        .iter()
        .enumerate()
        .map(|(i, p)| (p.logical_port.clone(), i as u32))
        .collect();
    let mut ports = Vec::new();
    let mut security = Vec::new();
    let mut port_index = PortIndex {
        keys: Default::default(),
        resident: Default::default(),
    };
    for p in &pb_rows {
        let kind = port_kind_of(&p.r#type);
        let bound_here = resident(p);
        let everywhere = matches!(
            kind,
            port_kind::PATCH | port_kind::LOCALNET | port_kind::LOCALPORT
        );
        let mut flags = 0;
        if bound_here || everywhere {
            flags |= OVN_PORT_LOCAL;
        }
        let specs: Vec<String> = p.port_security.iter().cloned().collect();
        let entries = port_security_entries(&specs);
        if !entries.is_empty() {
            flags |= OVN_PORT_SECURED;
        }
        let first_security = security.len() as u32;
        security.extend_from_slice(&entries);
        // A chassisredirect port's "peer" is its distributed port.
        let peer = p
            .options
            .get("peer")
            .or_else(|| p.options.get("distributed-port"))
            .and_then(|n| index_of.get(n))
            .copied()
            .unwrap_or(NONE_U32);
        let key = p.tunnel_key as u32;
        let dp = dp_key[&p.datapath];
        if let Some(&zone) = zones.get(&p.logical_port) {
            ct_zones.push(OvnCtZone {
                datapath: dp,
                port: key,
                kind: zone_kind::PORT,
                reserved: 0,
                zone,
            });
        }
        port_index.keys.insert(p.logical_port.clone(), (dp, key));
        port_index
            .resident
            .insert(p.logical_port.clone(), bound_here);
        ports.push(OvnLogicalPort {
            datapath: dp,
            key,
            kind,
            flags,
            fastpath_port: opts
                .port_map
                .get(&p.logical_port)
                .copied()
                .unwrap_or(NONE_U16),
            peer,
            name: b.intern(&p.logical_port)?,
            first_security,
            security_count: entries.len() as u32,
        });
    }

    // Multicast groups.
    let mut mg_rows: Vec<sb::MulticastGroup> = rows(db)?;
    mg_rows.retain(|g| dp_key.contains_key(&g.datapath));
    mg_rows.sort_by_key(|g| (dp_key[&g.datapath], g.tunnel_key));
    let pb_index_by_uuid: HashMap<Uuid, u32> = pb_rows
        .iter()
        .enumerate()
        .map(|(i, p)| (p.uuid, i as u32))
        .collect();
    let mut groups = Vec::new();
    let mut members = Vec::new();
    for g in &mg_rows {
        let first = members.len() as u32;
        let mut these: Vec<u32> = g
            .ports
            .iter()
            .filter_map(|u| pb_index_by_uuid.get(u).copied())
            .collect();
        these.sort_unstable();
        members.extend_from_slice(&these);
        // Flows name groups like ports (`outport = "_MC_flood"`). OVN gives
        // each well-known group the same key in every datapath.
        let (dp, key) = (dp_key[&g.datapath], g.tunnel_key as u32);
        match port_index.keys.get(&g.name) {
            Some(&(_, k)) if k != key => log::warn!(
                "multicast group {} has key {k} and {key} in different datapaths; flows use {k}",
                g.name
            ),
            Some(_) => {}
            None => {
                port_index.keys.insert(g.name.clone(), (dp, key));
            }
        }
        groups.push(OvnMulticastGroup {
            datapath: dp_key[&g.datapath],
            key: g.tunnel_key as u32,
            name: b.intern(&g.name)?,
            first_member: first,
            member_count: these.len() as u32,
        });
    }

    // MAC bindings.
    let mb_rows: Vec<sb::MacBinding> = rows(db)?;
    let mut bindings = Vec::new();
    for m in &mb_rows {
        let (Some(dp), Some(&(_, port)), Some(mac), Ok(ip)) = (
            dp_key.get(&m.datapath),
            port_index.keys.get(&m.logical_port),
            parse_mac(&m.mac),
            m.ip.parse::<IpAddr>(),
        ) else {
            log::warn!(
                "MAC_Binding {} {} on {}: unusable, ignored",
                m.ip,
                m.mac,
                m.logical_port
            );
            continue;
        };
        bindings.push(OvnMacBinding {
            datapath: *dp,
            port_key: port,
            ip: ip_bytes(ip).0,
            mac,
            reserved: [0; 2],
        });
    }

    // FDB: MACs learned behind switch ports (`put_fdb`), for `get_fdb` and
    // `lookup_fdb`.
    let known_dp_keys: rustc_hash::FxHashSet<u32> = dp_key.values().copied().collect();
    let mut fdb: Vec<OvnFdbEntry> = rows::<sb::Fdb>(db)?
        .iter()
        .filter_map(|f| {
            let entry = OvnFdbEntry {
                datapath: u32::try_from(f.dp_key).ok()?,
                port_key: u32::try_from(f.port_key).ok()?,
                mac: parse_mac(&f.mac)?,
                reserved: [0; 2],
            };
            known_dp_keys.contains(&entry.datapath).then_some(entry)
        })
        .collect();
    fdb.sort_unstable_by_key(|e| (e.datapath, e.mac, e.port_key));

    // Sets.
    let address_sets: HashMap<String, Vec<String>> = rows::<sb::AddressSet>(db)?
        .into_iter()
        .map(|a| (a.name, a.addresses.into_iter().collect()))
        .collect();
    let port_groups: HashMap<String, Vec<String>> = rows::<sb::PortGroup>(db)?
        .into_iter()
        .map(|p| (p.name, p.ports.into_iter().collect()))
        .collect();
    let dp_groups: rustc_hash::FxHashMap<Uuid, Vec<Uuid>> = rows::<sb::LogicalDpGroup>(db)?
        .into_iter()
        .map(|g| (g.uuid, g.datapaths.into_iter().collect()))
        .collect();

    let port_groups_by_dp = port_groups_by_datapath(&port_groups);

    // Logical flows.
    memo.lflow_rows.refresh(db)?;
    // In uuid order already.
    let lflows = memo.lflow_rows.rows();
    stats.logical_flows = lflows.len();
    let mut flows: Vec<OvnFlow> = Vec::with_capacity(memo.last_sizes.flows);
    let mut tests: Vec<OvnMatchTest> = Vec::with_capacity(memo.last_sizes.tests);
    let mut program: Vec<OvnInstruction> = Vec::with_capacity(memo.last_sizes.program);
    // Entries this compilation visits carry its round; the others go.
    memo.round += 1;
    let round = memo.round;
    memo.reused = 0;
    memo.compiled = 0;
    // Taken: a compilation that fails part way leaves entries computed from
    // inputs no `last_inputs` describes, and the next one skips nothing.
    let changed = memo
        .last_inputs
        .take()
        .map(|last| ChangedNames::between(&last, &port_index, &address_sets, &port_groups));
    let mut dps_buf: Vec<u32> = Vec::new();
    for lf in lflows {
        let pipe = if lf.pipeline == "egress" {
            pipeline::EGRESS
        } else {
            pipeline::INGRESS
        };
        let (Ok(table), Ok(priority)) = (u8::try_from(lf.table_id), u16::try_from(lf.priority))
        else {
            stats.rejected += 1;
            continue;
        };
        // (One buffer for every flow: most are reused and need no copy.)
        let dps = &mut dps_buf;
        dps.clear();
        dps.extend(
            lf.logical_datapath
                .iter()
                .chain(
                    lf.logical_dp_group
                        .iter()
                        .flat_map(|g| dp_groups.get(g).into_iter().flatten()),
                )
                .filter_map(|u| dp_key.get(u).copied()),
        );
        dps.sort_unstable();
        dps.dedup();
        if dps.is_empty() {
            continue;
        }
        let inputs = FlowInputs {
            lf,
            pipe,
            table,
            priority,
            dps,
            ports: &port_index,
            address_sets: &address_sets,
            port_groups: &port_groups,
            port_groups_by_dp: &port_groups_by_dp,
        };
        let entry = match memo.flows.get_mut(&lf.uuid) {
            Some(e)
                if std::sync::Arc::ptr_eq(&e.row, lf)
                    && e.dps == *dps
                    && changed.as_ref().is_some_and(|c| !c.touches(&e.refs)) =>
            {
                memo.reused += 1;
                e.round = round;
                &*e
            }
            Some(e) if e.same_texts(lf) => {
                e.round = round;
                e.row = lf.clone();
                e.dps.clone_from(dps);
                let fp = inputs.fingerprint(&e.refs);
                if e.fingerprint == fp {
                    memo.reused += 1;
                    &*e
                } else {
                    memo.compiled += 1;
                    e.outcome = compile_flow(&inputs, &symtab);
                    e.fingerprint = fp;
                    &*e
                }
            }
            _ => {
                memo.compiled += 1;
                let refs = FlowRefs::of(&lf.r#match, &lf.actions);
                let e = MemoEntry {
                    round,
                    fingerprint: inputs.fingerprint(&refs),
                    dps: dps.clone(),
                    row: lf.clone(),
                    refs,
                    outcome: compile_flow(&inputs, &symtab),
                };
                memo.flows.insert(lf.uuid, e);
                &memo.flows[&lf.uuid]
            }
        };
        let outcome = &entry.outcome;
        if outcome.rejected {
            stats.rejected += 1;
        }
        let Some(code) = &outcome.code else {
            continue;
        };
        for name in &outcome.unsupported {
            let n = stats.unsupported.entry(name.clone()).or_insert(0);
            if *n == 0 && memo.logged_unsupported.insert(name.clone()) {
                log::info!(
                    "action {name} is not executable in the fastpath yet: flows using it drop and count (first: {} table {} {:?})",
                    lf.pipeline,
                    table,
                    lf.actions
                );
            }
            *n += 1;
        }
        let first_action = program.len() as u32;
        let action_count = code.len() as u32;
        program.extend_from_slice(code);
        let stage = b.intern(lf.external_ids.get("stage-name").map_or("", |s| s.as_str()))?;
        let match_text = b.intern(&lf.r#match)?;
        let actions_text = b.intern(&lf.actions)?;
        for (dp, rules) in &outcome.rules {
            for rule in rules {
                flows.push(OvnFlow {
                    datapath: *dp,
                    pipeline: pipe,
                    table,
                    priority,
                    first_test: tests.len() as u32,
                    test_count: rule.len() as u32,
                    first_action,
                    action_count,
                    stage,
                    match_text,
                    actions_text,
                    lflow: uuid_prefix(&lf.uuid),
                    reserved: 0,
                });
                tests.extend_from_slice(rule);
            }
        }
    }
    memo.flows.retain(|_, e| e.round == round);
    drop(port_groups_by_dp);
    memo.last_inputs = Some(LastInputs {
        ports: port_index,
        address_sets,
        port_groups,
    });
    stats.rules = flows.len();

    b.add_section(SectionKind::OVN_DATAPATHS, &datapaths)?;
    b.add_section(SectionKind::OVN_PORTS, &ports)?;
    b.add_section(SectionKind::OVN_PORT_SECURITY, &security)?;
    b.add_section(SectionKind::OVN_MCAST_GROUPS, &groups)?;
    b.add_section(SectionKind::OVN_MCAST_MEMBERS, &members)?;
    b.add_section(SectionKind::OVN_MAC_BINDINGS, &bindings)?;
    b.add_section(SectionKind::OVN_FDB, &fdb)?;
    b.add_section(SectionKind::OVN_MATCH_TESTS, &tests)?;
    b.add_section(SectionKind::OVN_ACTIONS, &program)?;
    b.add_section(SectionKind::OVN_CT_ZONES, &ct_zones)?;
    b.add_section(SectionKind::OVN_FLOWS, &flows)?;
    let remote = chassis::compile_remote_chassis(db, &opts.chassis, &mut b)?;
    // Ports bound to another chassis: the fastpath tunnels to them.
    let chassis_index: HashMap<&str, u32> = remote
        .chassis
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i as u32))
        .collect();
    let chassis_name: HashMap<Uuid, &str> =
        chassis.iter().map(|c| (c.uuid, c.name.as_str())).collect();
    let bindings: Vec<(u32, u32)> = pb_rows
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            !matches!(
                port_kind_of(&p.r#type),
                port_kind::PATCH | port_kind::LOCALNET | port_kind::LOCALPORT
            )
        })
        .filter(|(_, p)| !resident(p))
        .filter_map(|(i, p)| {
            let name = chassis_name.get(&p.chassis?)?;
            Some((i as u32, *chassis_index.get(name)?))
        })
        .collect();
    stats.remote_ports = bindings.len();
    fastpath_tables::chassis::add_remote_ports(&mut b, &bindings)?;
    memo.last_sizes = LastSizes {
        strings: b.string_stats(),
        flows: flows.len(),
        tests: tests.len(),
        program: program.len(),
    };
    Ok(Compiled { builder: b, stats })
}

/// The per-flow results kept between compilations (see the module
/// documentation).
#[derive(Debug, Default)]
pub struct CompileMemo {
    flows: rustc_hash::FxHashMap<Uuid, MemoEntry>,
    /// Typed Logical_Flow and Port_Binding rows, converted as they change.
    lflow_rows: ovsdb::RowCache<sb::LogicalFlow>,
    port_rows: ovsdb::RowCache<sb::PortBinding>,
    /// Unsupported actions already logged (each is logged once).
    logged_unsupported: std::collections::BTreeSet<String>,
    /// What the last compilation's fingerprints were computed from.
    last_inputs: Option<LastInputs>,
    /// The last compilation's sizes, to allocate the next one's at once.
    last_sizes: LastSizes,
    /// Counts compilations; an entry holds the last one that visited it.
    round: u64,
    /// Logical flows whose kept result was reused by the last compilation.
    pub reused: usize,
    /// Logical flows the last compilation compiled.
    pub compiled: usize,
}

impl CompileMemo {
    /// Logical flows held.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

/// Element counts of the last compilation's slot.
#[derive(Debug, Default, Clone, Copy)]
struct LastSizes {
    /// Distinct strings and their bytes in all.
    strings: (usize, usize),
    flows: usize,
    tests: usize,
    program: usize,
}

/// The ports, address sets and port groups of the last compilation.
#[derive(Debug)]
struct LastInputs {
    ports: PortIndex,
    address_sets: HashMap<String, Vec<String>>,
    port_groups: HashMap<String, Vec<String>>,
}

/// The names whose fingerprint input changed since the last compilation:
/// a flow whose row and datapaths are the same and that names none of them
/// has the same fingerprint, which need not be computed again.
#[derive(Default)]
struct ChangedNames {
    ports: rustc_hash::FxHashSet<String>,
    address_sets: rustc_hash::FxHashSet<String>,
    /// Port group names without their `<datapath key>_` prefix (a superset
    /// is harmless: it only costs a fingerprint).
    port_groups: rustc_hash::FxHashSet<String>,
}

impl ChangedNames {
    fn between(
        last: &LastInputs,
        ports: &PortIndex,
        address_sets: &HashMap<String, Vec<String>>,
        port_groups: &HashMap<String, Vec<String>>,
    ) -> ChangedNames {
        let mut c = ChangedNames::default();
        c.ports.extend(differing(&ports.keys, &last.ports.keys));
        c.ports
            .extend(differing(&ports.resident, &last.ports.resident));
        c.address_sets
            .extend(differing(address_sets, &last.address_sets));
        c.port_groups
            .extend(differing(port_groups, &last.port_groups));
        // A group whose member port changed changes its flows' fingerprints.
        for (name, members) in port_groups.iter().chain(&last.port_groups) {
            if members.iter().any(|m| c.ports.contains(m)) {
                c.port_groups.insert(name.clone());
            }
        }
        c.port_groups = c
            .port_groups
            .into_iter()
            .map(|name| match datapath_prefixed(&name) {
                Some((_, bare)) => bare.to_string(),
                None => name,
            })
            .collect();
        c
    }

    /// Whether a flow naming `refs` may have a new fingerprint.
    fn touches(&self, refs: &FlowRefs) -> bool {
        refs.strings.iter().any(|s| self.ports.contains(s))
            || refs
                .address_sets
                .iter()
                .any(|a| self.address_sets.contains(a))
            || refs
                .port_groups
                .iter()
                .any(|g| self.port_groups.contains(g))
    }
}

#[derive(Debug)]
struct MemoEntry {
    /// The last compilation that visited the entry.
    round: u64,
    fingerprint: u64,
    /// The datapath keys the flow was compiled for.
    dps: Vec<u32>,
    /// The row compiled (its texts).
    row: std::sync::Arc<sb::LogicalFlow>,
    refs: FlowRefs,
    outcome: FlowOutcome,
}

impl MemoEntry {
    fn same_texts(&self, lf: &std::sync::Arc<sb::LogicalFlow>) -> bool {
        // The same row allocation when the update left the row alone.
        std::sync::Arc::ptr_eq(&self.row, lf)
            || (self.row.r#match == lf.r#match && self.row.actions == lf.actions)
    }
}

/// What compiling one logical flow gave.
#[derive(Debug, Clone, Default)]
struct FlowOutcome {
    /// The instructions; `None` when the match or the actions did not parse.
    code: Option<Vec<OvnInstruction>>,
    /// Unsupported action names met.
    unsupported: Vec<String>,
    /// The rules (conjunctions of tests) per datapath key.
    rules: Vec<(u32, Vec<Vec<OvnMatchTest>>)>,
    /// The flow (or its match for some datapath) was refused.
    rejected: bool,
}

/// The names a flow's texts refer to: quoted strings (port and group
/// names), `$address_sets` and `@port_groups`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FlowRefs {
    strings: Vec<String>,
    address_sets: Vec<String>,
    port_groups: Vec<String>,
}

impl FlowRefs {
    fn of(match_text: &str, actions_text: &str) -> FlowRefs {
        use ovn_lflow::lexer::{tokenize, Token};
        let mut r = FlowRefs::default();
        for text in [match_text, actions_text] {
            // A text that does not tokenize is refused by the parser: its
            // result depends on nothing else.
            for (t, _) in tokenize(text).unwrap_or_default() {
                match t {
                    Token::Str(s) => r.strings.push(s),
                    Token::AddressSet(s) => r.address_sets.push(s),
                    Token::PortGroup(s) => r.port_groups.push(s),
                    _ => {}
                }
            }
        }
        for v in [&mut r.strings, &mut r.address_sets, &mut r.port_groups] {
            v.sort_unstable();
            v.dedup();
        }
        r
    }
}

/// Everything compiling one logical flow reads.
struct FlowInputs<'a> {
    lf: &'a sb::LogicalFlow,
    pipe: u8,
    table: u8,
    priority: u16,
    dps: &'a [u32],
    ports: &'a PortIndex,
    address_sets: &'a HashMap<String, Vec<String>>,
    port_groups: &'a HashMap<String, Vec<String>>,
    /// `port_groups` named `<datapath key>_<name>`, by (key, name).
    port_groups_by_dp: &'a PortGroupsByDatapath<'a>,
}

type PortGroupsByDatapath<'a> = rustc_hash::FxHashMap<(u32, &'a str), &'a Vec<String>>;

/// The per-datapath port groups (`<datapath key>_<name>`) by key and name.
fn port_groups_by_datapath(groups: &HashMap<String, Vec<String>>) -> PortGroupsByDatapath<'_> {
    groups
        .iter()
        .filter_map(|(k, v)| datapath_prefixed(k).map(|key_name| (key_name, v)))
        .collect()
}

/// A Southbound port group name `<datapath key>_<name>` split, if it is one
/// (exactly the names `format!("{key}_{name}")` gives).
fn datapath_prefixed(group: &str) -> Option<(u32, &str)> {
    let (dp, name) = group.split_once('_')?;
    let key: u32 = dp.parse().ok()?;
    (key.to_string() == dp).then_some((key, name))
}

/// The keys whose values differ between `a` and `b` (present in one only,
/// or different).
fn differing<'a, V: PartialEq, S: std::hash::BuildHasher>(
    a: &'a HashMap<String, V, S>,
    b: &'a HashMap<String, V, S>,
) -> impl Iterator<Item = String> + 'a {
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
}

impl FlowInputs<'_> {
    /// A hash of every input the flow's result depends on.
    fn fingerprint(&self, refs: &FlowRefs) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.pipe, self.table, self.priority, self.dps).hash(&mut h);
        let port = |name: &str, h: &mut std::collections::hash_map::DefaultHasher| {
            self.ports.keys.get(name).hash(h);
            self.ports.resident.get(name).hash(h);
        };
        for s in &refs.strings {
            s.hash(&mut h);
            port(s, &mut h);
        }
        for a in &refs.address_sets {
            a.hash(&mut h);
            self.address_sets.get(a).hash(&mut h);
        }
        for g in &refs.port_groups {
            g.hash(&mut h);
            for dp in self.dps {
                let members = self
                    .port_groups_by_dp
                    .get(&(*dp, g.as_str()))
                    .copied()
                    .or_else(|| self.port_groups.get(g));
                members.hash(&mut h);
                for m in members.into_iter().flatten() {
                    port(m, &mut h);
                }
            }
        }
        h.finish()
    }
}

/// Parses, normalises and compiles one logical flow.
fn compile_flow(i: &FlowInputs<'_>, symtab: &SymbolTable) -> FlowOutcome {
    let lf = i.lf;
    let mut out = FlowOutcome::default();
    let parsed_match = match parse_match(&lf.r#match) {
        Ok(m) => m,
        Err(e) => {
            log::warn!("logical flow {}: match {:?}: {e}", lf.uuid, lf.r#match);
            out.rejected = true;
            return out;
        }
    };
    let parsed_actions = match parse_actions(&lf.actions) {
        Ok(a) => a,
        Err(e) => {
            log::warn!("logical flow {}: actions {:?}: {e}", lf.uuid, lf.actions);
            out.rejected = true;
            return out;
        }
    };
    let mut ctx = actions::ActionContext {
        symtab,
        ports: i.ports,
        table: i.table,
        pipeline: i.pipe,
        unsupported: Vec::new(),
        pending: Vec::new(),
    };
    out.code = Some(ctx.compile(&parsed_actions));
    out.unsupported = ctx.unsupported;
    // A match naming port groups is normalised per datapath (SB port
    // groups are per datapath); others once for all.
    let per_datapath = lf.r#match.contains('@');
    let mut shared: Option<Vec<Vec<OvnMatchTest>>> = None;
    for &dp in i.dps {
        let sets = SbSets {
            address_sets: i.address_sets,
            port_groups: i.port_groups,
            datapath_key: dp,
        };
        let rules = if let (false, Some(r)) = (per_datapath, &shared) {
            r.clone()
        } else {
            let dnf = match normalize(&parsed_match, symtab, &sets) {
                Ok(d) => d,
                Err(e) => {
                    log::warn!("logical flow {}: match {:?}: {e}", lf.uuid, lf.r#match);
                    out.rejected = true;
                    break;
                }
            };
            let r = matches::compile_dnf(&dnf, i.ports);
            if !per_datapath {
                shared = Some(r.clone());
            }
            r
        };
        out.rules.push((dp, rules));
    }
    out
}

fn rows<T: ovsdb::TableRow>(db: &Database) -> Result<Vec<T>, CompileError> {
    if db.table(T::TABLE).is_none() {
        return Ok(Vec::new());
    }
    Ok(db.rows::<T>()?)
}

/// The Southbound tables the compiler reads.
pub const SB_TABLES: &[&str] = &[
    "Chassis",
    "Encap",
    "Datapath_Binding",
    "Port_Binding",
    "Multicast_Group",
    "MAC_Binding",
    "FDB",
    "Address_Set",
    "Port_Group",
    "Logical_DP_Group",
    "Logical_Flow",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_security_is_flattened_per_address() {
        let e = port_security_entries(&[
            "50:54:00:00:00:01 10.0.0.11 fd00::11/64".into(),
            "50:54:00:00:00:02".into(),
            "garbage".into(),
        ]);
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].family, e[0].prefix), (4, 32));
        assert_eq!(&e[0].addr[12..], &[10, 0, 0, 11]);
        assert_eq!((e[1].family, e[1].prefix), (6, 64));
        assert_eq!((e[2].family, e[2].mac[5]), (0, 2));
    }

    #[test]
    fn port_types_map_to_kinds() {
        assert_eq!(port_kind_of(""), port_kind::VIF);
        assert_eq!(port_kind_of("patch"), port_kind::PATCH);
        assert_eq!(port_kind_of("localnet"), port_kind::LOCALNET);
        assert_eq!(port_kind_of("vtep"), port_kind::OTHER);
        assert_eq!(parse_mac("0a:00:00:00:00:ff"), Some([10, 0, 0, 0, 0, 255]));
        assert_eq!(parse_mac("0a:00:00:00:00"), None);
    }
}
