//! The node's main loop: register the chassis, follow the Southbound
//! database with conditions limited to the datapaths this node needs, claim
//! and release the Port_Binding rows of local pod ports, keep conntrack
//! zones, and compile and publish the fastpath tables after every change
//! (Southbound updates debounced; a CNI request is acted on at once).
//!
//! A local port is bound here in the tables as soon as its fastpath port
//! exists (before any claim). Once those tables were published and taken
//! into use by every live reader of the table file (or half a second
//! passed), the port is "installed" (ovn-controller's `ovn-installed`): the
//! CNI answers ADD then, and the port is claimed (`chassis`) and marked
//! `up` in one write, without the pod waiting for that Southbound round
//! trip. After publishing the tables of a Southbound snapshot the node
//! copies SB_Global `nb_cfg` to its Chassis_Private row
//! (so `ovn-nbctl --wait=hv` works), and it writes the MAC bindings and
//! FDB entries the fastpath learned as MAC_Binding and FDB rows, as
//! ovn-controller does.
//!
//! Owns the Southbound session of the node and the table file's writer. It
//! must not write Northbound rows nor Southbound rows other than the
//! chassis' own, the `chassis`/`up` columns of local Port_Bindings,
//! MAC_Binding rows of local ports and FDB rows of local datapaths.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ovsdb::{
    sb, Client, ClientOptions, Condition, Database, Datum, MonitorTable, Operation, TableRow, Uuid,
};
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use super::chassis::{self, ChassisConfig};
use super::plumber::PortPlumber;
use super::port_bindings::{self, PortBindingCache, PortBindings};
use super::state::{NodeState, STATE_FILE};
use super::NodeError;
use crate::compile::{
    compile_incremental, run::open_tables, CompileMemo, CompileOptions, CompileStats,
};

/// Configuration of the node role.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Southbound remotes.
    pub sb: Vec<String>,
    /// The chassis rows.
    pub chassis: ChassisConfig,
    /// The shared-memory table file.
    pub tables: PathBuf,
    /// Directory of the state file.
    pub state_dir: PathBuf,
    /// Quiet time after a Southbound change before compiling (none after
    /// a CNI request).
    pub debounce: Duration,
    /// How long CNI ADD waits for the port's Port_Binding.
    pub port_wait: Duration,
}

impl NodeConfig {
    /// A configuration with the default timings.
    pub fn new(
        sb: Vec<String>,
        chassis: ChassisConfig,
        tables: PathBuf,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            sb,
            chassis,
            tables,
            state_dir,
            debounce: Duration::from_millis(5),
            port_wait: Duration::from_secs(30),
        }
    }
}

/// What one publish did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublishReport {
    /// Table generation published (0: nothing yet).
    pub generation: u64,
    /// Replica generation compiled.
    pub db_generation: u64,
    /// Time from the first Port_Binding change compiled in to the publish.
    pub port_binding_latency: Option<Duration>,
    /// Time spent compiling the snapshot into a slot.
    pub compile_time: Duration,
    /// Time spent checksumming and publishing the slot.
    pub publish_time: Duration,
    /// Compiler statistics.
    pub stats: CompileStats,
}

/// How the node stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Remove the chassis (its ports are released with it).
    Exit,
    /// Keep every row, for a restart that must not disturb traffic.
    Restart,
}

/// Counts of Southbound writes, to show a restart writes nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// Chassis transactions.
    pub chassis: u64,
    /// Port_Binding claims.
    pub claims: u64,
    /// Port_Binding releases.
    pub releases: u64,
    /// MAC_Binding inserts and updates.
    pub mac_bindings: u64,
    /// FDB inserts and updates.
    pub fdb: u64,
}

pub(crate) struct Shared {
    pub cfg: NodeConfig,
    pub client: Client,
    pub state: Mutex<NodeState>,
    pub wake: Notify,
    pub sb: watch::Receiver<Arc<Database>>,
    pub plumber: Arc<dyn PortPlumber>,
    pub published: watch::Sender<PublishReport>,
    /// Local ports (with their fastpath port) the tables in use by every
    /// fastpath reader map: they forward (what `ovn-installed` says for
    /// ovn-controller).
    pub installed: watch::Sender<BTreeMap<String, u16>>,
    pub writes: Mutex<WriteCounts>,
    /// Parsed Port_Binding rows of the last snapshot looked at.
    pub port_bindings: PortBindingCache,
}

impl Shared {
    fn state_path(&self) -> PathBuf {
        self.cfg.state_dir.join(STATE_FILE)
    }

    /// Saves the state file.
    pub fn save(&self, state: &NodeState) -> Result<(), NodeError> {
        state.save(&self.state_path()).map_err(NodeError::from)
    }

    /// Our Chassis row's uuid in the current snapshot.
    pub fn chassis_uuid(&self) -> Option<Uuid> {
        chassis::chassis_uuid(&self.sb.borrow(), &self.cfg.chassis.name)
    }
}

/// A running node.
pub struct Node {
    pub(crate) shared: Arc<Shared>,
    stop: Arc<Notify>,
    task: tokio::task::JoinHandle<Result<(), NodeError>>,
}

/// Columns the node reads of each Southbound table (`None`: all).
fn monitored_tables(conds: &Conditions) -> Vec<MonitorTable> {
    let mut t: Vec<MonitorTable> = crate::compile::SB_TABLES
        .iter()
        .map(|name| {
            let m = MonitorTable::all(name);
            match conds.get(*name) {
                Some(c) => m.with_conditions(c.clone()),
                None => m,
            }
        })
        .collect();
    t.push(MonitorTable::all(sb::SbGlobal::TABLE));
    t.push(
        MonitorTable::all(sb::ChassisPrivate::TABLE).with_conditions(
            conds
                .get(sb::ChassisPrivate::TABLE)
                .cloned()
                .unwrap_or_else(|| vec![Condition::Constant(false)]),
        ),
    );
    t
}

type Conditions = BTreeMap<&'static str, Vec<Condition>>;

fn or_false(c: Vec<Condition>) -> Vec<Condition> {
    if c.is_empty() {
        vec![Condition::Constant(false)]
    } else {
        c
    }
}

/// The datapaths this node needs: those of local ports, and every datapath
/// reachable from them through patch ports (as far as the snapshot shows).
pub fn local_datapaths(pbs: &PortBindings, local: &BTreeSet<String>) -> BTreeSet<Uuid> {
    let mut dps: BTreeSet<Uuid> = pbs
        .rows()
        .iter()
        .filter(|p| local.contains(&p.logical_port))
        .map(|p| p.datapath)
        .collect();
    loop {
        let mut added = false;
        for p in pbs.rows() {
            if !dps.contains(&p.datapath) || p.r#type != "patch" {
                continue;
            }
            let peer = p.options.get("peer").and_then(|n| pbs.get(n));
            if let Some(peer) = peer {
                added |= dps.insert(peer.datapath);
            }
        }
        if !added {
            return dps;
        }
    }
}

/// The monitor conditions for `db` and the local ports: Port_Binding rows
/// of local datapaths, of local ports not seen in one yet and of patch
/// peers; flows, multicast groups and MAC bindings of local datapaths (and
/// datapath groups holding one); our own Chassis_Private row. `pbs` are the
/// Port_Binding rows of `db`. A new pod of a switch the node follows
/// already changes no condition, so its ADD waits for no condition change.
pub fn conditions(
    db: &Database,
    pbs: &PortBindings,
    chassis_name: &str,
    own: Option<Uuid>,
    local: &BTreeSet<String>,
) -> Conditions {
    let dps = local_datapaths(pbs, local);
    let mut names: BTreeSet<String> = local
        .iter()
        .filter(|n| !pbs.get(n).is_some_and(|p| dps.contains(&p.datapath)))
        .cloned()
        .collect();
    for p in pbs
        .rows()
        .iter()
        .filter(|p| dps.contains(&p.datapath) && p.r#type == "patch")
    {
        if let Some(peer) = p.options.get("peer") {
            names.insert(peer.clone());
        }
    }
    let groups: Vec<sb::LogicalDpGroup> = db.rows().unwrap_or_default();
    let groups: BTreeSet<Uuid> = groups
        .iter()
        .filter(|g| g.datapaths.iter().any(|d| dps.contains(d)))
        .map(|g| g.uuid)
        .collect();

    let by_dp = |col: &str| -> Vec<Condition> {
        dps.iter()
            .map(|d| Condition::eq(col, Datum::uuid(*d)))
            .collect()
    };
    let mut pb = by_dp("datapath");
    pb.extend(
        names
            .iter()
            .map(|n| Condition::eq("logical_port", n.as_str())),
    );
    if let Some(own) = own {
        pb.push(Condition::eq("chassis", Datum::uuid(own)));
    }
    let mut lf = by_dp("logical_datapath");
    lf.extend(
        groups
            .iter()
            .map(|g| Condition::eq("logical_dp_group", Datum::uuid(*g))),
    );
    let mut c = Conditions::new();
    c.insert("Port_Binding", or_false(pb));
    c.insert("Logical_Flow", or_false(lf));
    c.insert("Multicast_Group", or_false(by_dp("datapath")));
    c.insert("MAC_Binding", or_false(by_dp("datapath")));
    c.insert(
        sb::ChassisPrivate::TABLE,
        vec![Condition::eq("name", chassis_name)],
    );
    c
}

/// Claims and releases for the snapshot: a local port not bound here is
/// claimed, and marked `up` in the same write, once it is in `ready` (its
/// fastpath port exists and published tables, which bind a mapped port here
/// before its claim, are in use); a claimed port is marked down again when
/// it leaves `ready`; VIF ports bound here that are no longer local are
/// released. Claiming only then keeps the claim's Southbound round trip,
/// and ovn-northd's work on it, out of the way of the compile a new pod
/// waits for, and makes claim and `up` one transaction.
pub fn binding_ops(
    pbs: &PortBindings,
    own: Uuid,
    local: &BTreeSet<String>,
    ready: &BTreeSet<String>,
) -> (Vec<Operation>, u64, u64) {
    let (mut ops, mut claims, mut releases) = (Vec::new(), 0, 0);
    for p in pbs.rows() {
        let is_local = local.contains(&p.logical_port);
        let here = p.chassis == Some(own);
        let up = ready.contains(&p.logical_port);
        let row: Option<ovsdb::ops::Columns> =
            if is_local && ((here && (p.up == Some(true)) != up) || (!here && up)) {
                if !here {
                    claims += 1;
                }
                Some(
                    [
                        ("chassis".to_string(), Datum::set([own])),
                        ("up".to_string(), Datum::set([up])),
                    ]
                    .into(),
                )
            } else if !is_local && here && p.r#type.is_empty() {
                releases += 1;
                Some(
                    [
                        ("chassis".to_string(), Datum::empty_set()),
                        ("up".to_string(), Datum::set([false])),
                    ]
                    .into(),
                )
            } else {
                None
            };
        if let Some(row) = row {
            ops.push(Operation::Update {
                table: sb::PortBinding::TABLE.into(),
                conditions: vec![Condition::uuid(p.uuid)],
                row,
            });
        }
    }
    (ops, claims, releases)
}

/// The update of our Chassis_Private row that acknowledges SB_Global
/// `nb_cfg` of `db` (call it once the tables compiled from `db` are
/// published); None when it is acknowledged already or a row is missing.
pub fn nb_cfg_op(db: &Database, chassis_name: &str, now_ms: i64) -> Option<Operation> {
    let global: Vec<sb::SbGlobal> = db.rows().ok()?;
    let nb_cfg = global.first()?.nb_cfg;
    let privates: Vec<sb::ChassisPrivate> = db.rows().ok()?;
    let own = privates.iter().find(|p| p.name == chassis_name)?;
    (own.nb_cfg != nb_cfg).then(|| Operation::Update {
        table: sb::ChassisPrivate::TABLE.into(),
        conditions: vec![Condition::uuid(own.uuid)],
        row: [
            ("nb_cfg".to_string(), Datum::from(nb_cfg)),
            ("nb_cfg_timestamp".to_string(), Datum::from(now_ms)),
        ]
        .into(),
    })
}

/// MAC_Binding writes for bindings the fastpath learned (oldest first):
/// the latest MAC of each (port, IP) is inserted, or updates the row that
/// has another MAC; a row that already says so is left alone. Bindings
/// without an IP (FDB entries) or a port this snapshot does not know are
/// skipped.
pub fn mac_binding_ops(
    db: &Database,
    learned: &[fastpath_api::LearnedBinding],
    now_ms: i64,
) -> Vec<Operation> {
    let mut latest: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for l in learned {
        if l.ip.is_empty() || l.port.is_empty() || l.mac.is_empty() {
            continue;
        }
        latest.insert((l.port.as_str(), l.ip.as_str()), l.mac.as_str());
    }
    if latest.is_empty() {
        return Vec::new();
    }
    // Only the rows of the ports that learned something are parsed.
    let ports: BTreeSet<&str> = latest.keys().map(|(p, _)| *p).collect();
    let pbs: Vec<sb::PortBinding> = port_bindings::rows_named(db, &ports);
    let rows: Vec<sb::MacBinding> = port_bindings::rows_named(db, &ports);
    let mut ops = Vec::new();
    for ((port, ip), mac) in latest {
        let Some(pb) = pbs.iter().find(|p| p.logical_port == port) else {
            continue;
        };
        match rows
            .iter()
            .find(|r| r.logical_port == port && r.ip == ip && r.datapath == pb.datapath)
        {
            Some(r) if r.mac.eq_ignore_ascii_case(mac) => {}
            Some(r) => ops.push(Operation::Update {
                table: sb::MacBinding::TABLE.into(),
                conditions: vec![Condition::uuid(r.uuid)],
                row: [
                    ("mac".to_string(), Datum::from(mac.to_string())),
                    ("timestamp".to_string(), Datum::from(now_ms)),
                ]
                .into(),
            }),
            None => ops.push(Operation::insert(
                sb::MacBinding::TABLE,
                sb::MacBinding {
                    datapath: pb.datapath,
                    ip: ip.to_string(),
                    logical_port: port.to_string(),
                    mac: mac.to_string(),
                    timestamp: now_ms,
                    ..Default::default()
                }
                .to_columns(),
                None,
            )),
        }
    }
    ops
}

/// FDB writes for MACs the fastpath learned behind switch ports
/// (`put_fdb`, oldest first), as ovn-controller makes them: a MAC of a
/// datapath not in the FDB is inserted with its port's key, a row that puts
/// it behind another port is updated, and a row that already says so is
/// left alone. Entries of a port this snapshot does not know are skipped.
pub fn fdb_ops(db: &Database, learned: &[fastpath_api::LearnedBinding]) -> Vec<Operation> {
    let fdb_entries: Vec<&fastpath_api::LearnedBinding> = learned
        .iter()
        .filter(|l| l.ip.is_empty() && !l.port.is_empty() && !l.mac.is_empty())
        .collect();
    if fdb_entries.is_empty() {
        return Vec::new();
    }
    let ports: BTreeSet<&str> = fdb_entries.iter().map(|l| l.port.as_str()).collect();
    let pbs: Vec<sb::PortBinding> = port_bindings::rows_named(db, &ports);
    let dp_keys: HashMap<Uuid, i64> = db
        .rows::<sb::DatapathBinding>()
        .unwrap_or_default()
        .into_iter()
        .map(|d| (d.uuid, d.tunnel_key))
        .collect();
    // The latest port of each (datapath, MAC).
    let mut latest: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for l in fdb_entries {
        let Some(pb) = pbs.iter().find(|p| p.logical_port == l.port) else {
            continue;
        };
        let Some(&dp_key) = dp_keys.get(&pb.datapath) else {
            continue;
        };
        latest.insert((dp_key, l.mac.to_ascii_lowercase()), pb.tunnel_key);
    }
    // Only the rows of the MACs learned are parsed (the learned list is
    // read every second and the FDB can be large).
    let macs: BTreeSet<&str> = latest.keys().map(|(_, mac)| mac.as_str()).collect();
    let rows: Vec<sb::Fdb> = port_bindings::rows_where(db, "mac", |m| {
        macs.contains(m)
            || (m.bytes().any(|b| b.is_ascii_uppercase())
                && macs.contains(m.to_ascii_lowercase().as_str()))
    });
    let mut ops = Vec::new();
    for ((dp_key, mac), port_key) in latest {
        match rows
            .iter()
            .find(|r| r.dp_key == dp_key && r.mac.eq_ignore_ascii_case(&mac))
        {
            Some(r) if r.port_key == port_key => {}
            Some(r) => ops.push(Operation::Update {
                table: sb::Fdb::TABLE.into(),
                conditions: vec![Condition::uuid(r.uuid)],
                row: [("port_key".to_string(), Datum::from(port_key))].into(),
            }),
            None => ops.push(Operation::insert(
                sb::Fdb::TABLE,
                sb::Fdb {
                    dp_key,
                    mac,
                    port_key,
                    ..Default::default()
                }
                .to_columns(),
                None,
            )),
        }
    }
    ops
}

/// The snapshot, its Port_Binding rows, the port map and the conntrack
/// zones of the last compile.
type LastCompiled = (
    Arc<Database>,
    Arc<PortBindings>,
    HashMap<String, u16>,
    BTreeMap<String, u16>,
);

/// Whether `b` holds the same compiler input as `a`: every table the
/// compiler reads is the same allocation (a snapshot shares the tables an
/// update left untouched; the caller keeps `a` alive, so an address is never
/// reused), or, for Port_Binding, the same rows once `up` is left out (the
/// compiler does not read it, and the node's own `up` writes must not cost
/// a compile). Chassis_Private and SB_Global are not compiler input.
pub fn same_compile_input(a: &Database, b: &Database) -> bool {
    same_other_tables(a, b)
        && (port_bindings::same_table(a, b)
            || PortBindings::of(a).same_except_up(&PortBindings::of(b)))
}

/// [`same_compile_input`] with the Port_Binding rows of both parsed
/// already, for a compiler that maps the ports of `mapped` (which it binds
/// here whatever their `chassis` says, see `CompileOptions::port_map`: their
/// claims and releases are no new input).
fn same_compile_input_parsed<V>(
    a: &Database,
    a_rows: &PortBindings,
    b: &Database,
    b_rows: &PortBindings,
    mapped: &HashMap<String, V>,
) -> bool {
    same_other_tables(a, b)
        && (port_bindings::same_table(a, b) || a_rows.same_for_compile(b_rows, mapped))
}

/// Whether every compiler input table but Port_Binding is the same
/// allocation in `a` and `b`.
fn same_other_tables(a: &Database, b: &Database) -> bool {
    crate::compile::SB_TABLES
        .iter()
        .filter(|name| **name != sb::PortBinding::TABLE)
        .all(|name| match (a.table(name), b.table(name)) {
            (None, None) => true,
            (Some(x), Some(y)) => std::ptr::eq(x, y),
            _ => false,
        })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How often the node asks the fastpath for learned MAC bindings.
const LEARNED_POLL: Duration = Duration::from_secs(1);

/// How long the node waits for every fastpath reader to use newly
/// published tables before it marks their new ports `up` anyway.
const IN_USE_WAIT: Duration = Duration::from_millis(500);

/// A table reader whose heartbeat is older than this is taken for gone
/// (fastpath lcores beat ten times a second).
const READER_ALIVE: Duration = Duration::from_secs(1);

/// Waits until every live reader of the table file (the fastpath's control
/// thread and lcores) uses `generation` or a later one, at most
/// [`IN_USE_WAIT`]; whether they all do. Publishing only hands the tables
/// over: a pod told its port is up before its lcore switched would lose its
/// first packets (and the kernel resends an unanswered ARP only after 1 s).
async fn wait_in_use(writer: &fastpath_tables::Writer, generation: u64) -> bool {
    let deadline = Instant::now() + IN_USE_WAIT;
    loop {
        let behind = writer.readers().iter().any(|r| {
            u128::from(r.heartbeat_age_ns) < READER_ALIVE.as_nanos() && r.generation < generation
        });
        if !behind {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl Node {
    /// Connects, registers the chassis and starts following the
    /// Southbound database.
    pub async fn start(cfg: NodeConfig, plumber: Arc<dyn PortPlumber>) -> Result<Node, NodeError> {
        std::fs::create_dir_all(&cfg.state_dir).map_err(|error| NodeError::Io {
            what: format!("create {}", cfg.state_dir.display()),
            error,
        })?;
        let state = NodeState::load(&cfg.state_dir.join(STATE_FILE))?;
        // The fastpath side of restored ports (idempotent).
        let mut state = state;
        for (name, p) in state.ports.iter_mut() {
            p.fastpath_port = plumber.add_port(name, p.kind, &p.endpoint, Some(p.fastpath_port))?;
        }
        let client = Client::connect(&cfg.sb, "OVN_Southbound", ClientOptions::default()).await?;
        let local: BTreeSet<String> = state.ports.keys().cloned().collect();
        let initial = conditions(
            &Database::default(),
            &PortBindings::default(),
            &cfg.chassis.name,
            None,
            &local,
        );
        let replica = client.monitor(monitored_tables(&initial)).await?;
        let (published, _) = watch::channel(PublishReport::default());
        let shared = Arc::new(Shared {
            sb: replica.subscribe(),
            cfg,
            client,
            state: Mutex::new(state),
            wake: Notify::new(),
            plumber,
            published,
            installed: watch::channel(BTreeMap::new()).0,
            writes: Mutex::new(WriteCounts::default()),
            port_bindings: PortBindingCache::default(),
        });
        let mut replica = replica;
        register(&shared, &mut replica).await?;
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(run(shared.clone(), replica, initial, stop.clone()));
        Ok(Node { shared, stop, task })
    }

    /// The CNI handler of this node.
    pub fn cni_handler(&self) -> super::cni::CniHandler {
        super::cni::CniHandler::new(self.shared.clone(), tokio::runtime::Handle::current())
    }

    /// A receiver of publish reports.
    pub fn published(&self) -> watch::Receiver<PublishReport> {
        self.shared.published.subscribe()
    }

    /// Southbound writes made so far.
    pub fn writes(&self) -> WriteCounts {
        *self.shared.writes.lock()
    }

    /// The node's current view of the Southbound database (only the rows
    /// its monitor conditions select).
    pub fn southbound(&self) -> Arc<Database> {
        self.shared.sb.borrow().clone()
    }

    /// The conntrack zones assigned so far.
    pub fn ct_zones(&self) -> BTreeMap<String, u16> {
        self.shared.state.lock().ct_zones.clone()
    }

    /// Waits for the loop to end (it ends on error or shutdown).
    pub async fn wait(&mut self) -> Result<(), NodeError> {
        (&mut self.task).await.map_err(|_| NodeError::Stopped)?
    }

    /// Stops the loop; with [`Shutdown::Exit`] also removes the chassis.
    pub async fn shutdown(self, how: Shutdown) -> Result<(), NodeError> {
        self.stop.notify_one();
        let _ = self.task.await;
        if how == Shutdown::Exit {
            // Release our ports explicitly (the weak reference would clear
            // `chassis` but leave `up` true), then remove the chassis.
            let db = self.shared.sb.borrow().clone();
            let mut ops = match chassis::chassis_uuid(&db, &self.shared.cfg.chassis.name) {
                Some(own) => {
                    let pbs = self.shared.port_bindings.get(&db);
                    binding_ops(&pbs, own, &BTreeSet::new(), &BTreeSet::new()).0
                }
                None => Vec::new(),
            };
            ops.extend(chassis::unregister_ops(&self.shared.cfg.chassis.name));
            self.shared.client.transact(ops).await?;
        }
        Ok(())
    }
}

async fn register(shared: &Shared, replica: &mut ovsdb::Replica) -> Result<(), NodeError> {
    let db = replica.snapshot();
    let ops = chassis::register_ops(&db, &shared.cfg.chassis)?;
    if !ops.is_empty() {
        shared.client.transact(ops).await?;
        shared.writes.lock().chassis += 1;
        let name = shared.cfg.chassis.name.clone();
        let cfg = shared.cfg.chassis.clone();
        tokio::time::timeout(
            Duration::from_secs(10),
            replica.wait_for(|db| {
                chassis::register_ops(db, &cfg).is_ok_and(|o| o.is_empty())
                    && chassis::chassis_uuid(db, &name).is_some()
            }),
        )
        .await
        .map_err(|_| NodeError::NotSeen("own Chassis row".into()))??;
    }
    Ok(())
}

/// Writes the MAC bindings the fastpath learned (a fastpath that does not
/// answer is logged, not fatal).
async fn write_learned(shared: &Shared, replica: &mut ovsdb::Replica) -> Result<(), NodeError> {
    let learned = match shared.plumber.learned() {
        Ok(l) => l,
        Err(e) => {
            log::debug!("learned bindings: {e}");
            return Ok(());
        }
    };
    let db = replica.snapshot();
    let mut ops = mac_binding_ops(&db, &learned, now_ms());
    let mac_bindings = ops.len();
    ops.extend(fdb_ops(&db, &learned));
    if ops.is_empty() {
        return Ok(());
    }
    let fdb = ops.len() - mac_bindings;
    shared.client.transact(ops).await?;
    {
        let mut w = shared.writes.lock();
        w.mac_bindings += mac_bindings as u64;
        w.fdb += fdb as u64;
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        replica.wait_for(|db| {
            mac_binding_ops(db, &learned, 0).is_empty() && fdb_ops(db, &learned).is_empty()
        }),
    )
    .await;
    Ok(())
}

/// Waits (at most 2 s) until the Southbound shows the claims, releases and
/// `up` values `binding_ops` asked for.
async fn wait_bindings_seen(
    shared: &Shared,
    replica: &mut ovsdb::Replica,
    own: Uuid,
    local: &BTreeSet<String>,
    ready: &BTreeSet<String>,
) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        replica.wait_for(|db| {
            binding_ops(&shared.port_bindings.get(db), own, local, ready)
                .0
                .is_empty()
        }),
    )
    .await;
}

async fn run(
    shared: Arc<Shared>,
    mut replica: ovsdb::Replica,
    mut sent: Conditions,
    stop: Arc<Notify>,
) -> Result<(), NodeError> {
    let mut writer =
        open_tables(&shared.cfg.tables).map_err(|e| NodeError::Tables(format!("{e:#}")))?;
    // The snapshot, port map and zones last compiled (the snapshot is held
    // so that its tables stay allocated: see `same_compile_input`).
    let mut last: Option<LastCompiled> = None;
    // Per-flow results kept from one compilation to the next.
    let mut memo = CompileMemo::default();
    // The content of the tables last published.
    let mut last_content: Option<fastpath_tables::SlotBuilder> = None;
    let mut learned_tick = tokio::time::interval(LEARNED_POLL);
    learned_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pb_changed_at: Option<Instant> = None;
    let mut prev_db: Option<Arc<Database>> = None;
    loop {
        let db = replica.snapshot();
        // Port_Binding changed since the last round (an updated table is a
        // new allocation; an untouched one is shared between snapshots).
        let pb_table = |d: &Database| d.table(sb::PortBinding::TABLE).map(|t| t as *const _);
        if prev_db
            .as_ref()
            .is_some_and(|p| pb_table(p) != pb_table(&db))
            && pb_changed_at.is_none()
        {
            pb_changed_at = Some(Instant::now());
        }
        prev_db = Some(db.clone());
        // The chassis (someone may have deleted or changed it).
        if chassis::register_ops(&db, &shared.cfg.chassis).is_ok_and(|o| !o.is_empty()) {
            register(&shared, &mut replica).await?;
            continue;
        }
        let own = chassis::chassis_uuid(&db, &shared.cfg.chassis.name);
        // One read of the local ports for the whole pass: a port the CNI
        // adds meanwhile waits for the next pass, so it is never compiled
        // in before it is claimed.
        let port_map: HashMap<String, u16> = shared
            .state
            .lock()
            .ports
            .iter()
            .map(|(n, p)| (n.clone(), p.fastpath_port))
            .collect();
        let local: BTreeSet<String> = port_map.keys().cloned().collect();
        // Parsed once for the whole pass (and shared with CNI waits).
        let pbs = shared.port_bindings.get(&db);

        // Conditions.
        let wanted = conditions(&db, &pbs, &shared.cfg.chassis.name, own, &local);
        let mut widened = false;
        for (table, c) in &wanted {
            if sent.get(table) != Some(c) {
                widened = true;
                let started = Instant::now();
                replica.set_conditions(table, c.clone()).await?;
                log::debug!(
                    "monitor conditions of {table} changed in {:.1} ms",
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
        }
        sent = wanted;
        if widened {
            // The rows the new conditions select (a new local datapath's
            // flows) are in a later snapshot: compiling this one would
            // publish tables without them.
            continue;
        }

        // Claims and releases; `up` for ports that exist and are published.
        // A port already up here (a restart) stays up while it exists.
        let up_here: BTreeSet<&str> = pbs
            .rows()
            .iter()
            .filter(|p| own.is_some() && p.chassis == own && p.up == Some(true))
            .map(|p| p.logical_port.as_str())
            .collect();
        let candidates: Vec<&String> = {
            let installed = shared.installed.borrow();
            local
                .iter()
                .filter(|n| installed.contains_key(*n) || up_here.contains(n.as_str()))
                .collect()
        };
        // One question to the fastpath for every candidate.
        let present = if candidates.is_empty() {
            BTreeSet::new()
        } else {
            shared.plumber.port_names().unwrap_or_else(|e| {
                log::warn!("cannot tell which fastpath ports exist: {e}");
                BTreeSet::new()
            })
        };
        let ready: BTreeSet<String> = candidates
            .into_iter()
            .filter(|n| present.contains(*n))
            .cloned()
            .collect();
        if let Some(own) = own {
            let (ops, claims, releases) = binding_ops(&pbs, own, &local, &ready);
            if !ops.is_empty() {
                let started = Instant::now();
                shared.client.transact(ops).await?;
                {
                    let mut w = shared.writes.lock();
                    w.claims += claims;
                    w.releases += releases;
                }
                wait_bindings_seen(&shared, &mut replica, own, &local, &ready).await;
                log::debug!(
                    "port bindings written ({claims} claims, {releases} releases) and seen in {:.1} ms",
                    started.elapsed().as_secs_f64() * 1e3
                );
                continue;
            }
        }

        // Conntrack zones.
        {
            let mut state = shared.state.lock();
            let mut owners: BTreeSet<String> = state.ports.keys().cloned().collect();
            let dps: Vec<sb::DatapathBinding> = db.rows().unwrap_or_default();
            let locals = local_datapaths(&pbs, &local);
            for d in dps.iter().filter(|d| locals.contains(&d.uuid)) {
                owners.insert(format!("{}_dnat", d.uuid));
                owners.insert(format!("{}_snat", d.uuid));
            }
            let mut changed = state.retain_zones(&owners);
            for o in &owners {
                if !state.ct_zones.contains_key(o) {
                    state.zone(o)?;
                    changed = true;
                }
            }
            if changed {
                shared.save(&state)?;
            }
        }

        // Compile and publish.
        let zones = shared.state.lock().ct_zones.clone();
        let no_ports: HashMap<String, u16> = HashMap::new();
        let unchanged = last.as_ref().is_some_and(|(prev, prev_pbs, map, z)| {
            // (Mapped ports are bound here only once this chassis exists.)
            let mapped = if own.is_some() { &port_map } else { &no_ports };
            *map == port_map
                && *z == zones
                && same_compile_input_parsed(prev, prev_pbs, &db, &pbs, mapped)
        });
        let compiled = if unchanged {
            None
        } else {
            let opts = CompileOptions {
                chassis: shared.cfg.chassis.name.clone(),
                port_map: port_map.clone(),
            };
            let started = Instant::now();
            let compiled = compile_incremental(&db, &opts, Some(&zones), &mut memo)?;
            let compile_time = started.elapsed();
            // A new input that compiles to the tables already out (a claim
            // coming back, a flow of another chassis) is not published again:
            // the fastpath would only revalidate its caches.
            if last_content
                .as_ref()
                .is_some_and(|c| c.same_content(&compiled.builder))
            {
                log::debug!(
                    "compiled in {:.1} ms to the tables already published",
                    compile_time.as_secs_f64() * 1e3
                );
                last = Some((db.clone(), pbs.clone(), port_map.clone(), zones.clone()));
                pb_changed_at = None;
                None
            } else {
                Some((compiled, compile_time))
            }
        };
        if let Some((compiled, compile_time)) = compiled {
            last_content = Some(compiled.builder.content_copy());
            let started = Instant::now();
            let generation = writer
                .publish(compiled.builder)
                .map_err(|e| NodeError::Tables(e.to_string()))?;
            let publish_time = started.elapsed();
            let latency = pb_changed_at.take().map(|t| t.elapsed());
            log::info!(
                "tables generation {generation}: {} logical flows, {} rules, compiled in {:.1} ms, published in {:.1} ms; port binding to publish {:?}",
                compiled.stats.logical_flows,
                compiled.stats.rules,
                compile_time.as_secs_f64() * 1e3,
                publish_time.as_secs_f64() * 1e3,
                latency
            );
            shared.published.send_replace(PublishReport {
                generation,
                db_generation: db.generation(),
                port_binding_latency: latency,
                compile_time,
                publish_time,
                stats: compiled.stats,
            });
            // Ports these tables map as bound here: only they may go up.
            let now_installed: BTreeMap<String, u16> = port_map
                .iter()
                .filter(|(n, _)| own.is_some() && pbs.get(n).is_some())
                .map(|(n, id)| (n.clone(), *id))
                .collect();
            last = Some((db.clone(), pbs.clone(), port_map, zones));
            let installed = shared.installed.borrow().clone();
            if now_installed != installed {
                // Ports that became mapped (or a replaced port's new
                // fastpath port) forward once every lcore uses these tables.
                if now_installed
                    .iter()
                    .any(|(n, id)| installed.get(n) != Some(id))
                {
                    let started = Instant::now();
                    let in_use = wait_in_use(&writer, generation).await;
                    log::debug!(
                        "tables generation {generation} in use by every reader: {in_use} after {:.1} ms",
                        started.elapsed().as_secs_f64() * 1e3
                    );
                    if !in_use {
                        log::warn!(
                            "tables generation {generation} not in use by every fastpath reader after {IN_USE_WAIT:?}; marking its ports up anyway"
                        );
                    }
                }
                let new_ports = !now_installed.keys().eq(installed.keys());
                shared.installed.send_replace(now_installed);
                if new_ports {
                    // Claims, releases and `up` in the next pass.
                    continue;
                }
            }
        }

        // The tables of this snapshot are out: acknowledge its nb_cfg.
        if let Some(op) = nb_cfg_op(&db, &shared.cfg.chassis.name, now_ms()) {
            shared.client.transact(vec![op]).await?;
            let name = shared.cfg.chassis.name.clone();
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                replica.wait_for(|db| nb_cfg_op(db, &name, 0).is_none()),
            )
            .await;
            continue;
        }

        // Wait for a change, then let a burst of Southbound updates settle
        // (a CNI request is acted on at once: a pod waits for it).
        let settle = tokio::select! {
            r = replica.changed() => { r?; true }
            _ = shared.wake.notified() => false,
            _ = learned_tick.tick() => {
                write_learned(&shared, &mut replica).await?;
                true
            }
            _ = stop.notified() => return Ok(()),
        };
        if settle {
            tokio::time::sleep(shared.cfg.debounce).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovsdb::testing::OvnCentral;

    /// The row of `logical_port` in `db`.
    fn binding(db: &Database, logical_port: &str) -> Option<sb::PortBinding> {
        PortBindings::of(db).get(logical_port).cloned()
    }

    fn nb_cfg(db: &Database) -> i64 {
        db.rows::<sb::SbGlobal>()
            .ok()
            .and_then(|g| g.first().map(|g| g.nb_cfg))
            .unwrap_or(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_compile_input_ignores_up_and_non_compiler_tables_only() {
        let central = OvnCentral::start().unwrap();
        for cmd in [
            vec!["ls-add", "ls0"],
            vec!["lsp-add", "ls0", "pod1.ns1"],
            vec![
                "lsp-set-addresses",
                "pod1.ns1",
                "0a:00:00:00:00:05 10.16.0.5",
            ],
        ] {
            central.nbctl(&cmd).unwrap();
        }
        central.sync(Duration::from_secs(10)).unwrap();
        central
            .sbctl(&["chassis-add", "node-1", "geneve", "192.0.2.11"])
            .unwrap();
        let client = Client::connect(
            std::slice::from_ref(&central.sb.remote),
            "OVN_Southbound",
            ClientOptions::default(),
        )
        .await
        .unwrap();
        let mut tables: Vec<MonitorTable> = crate::compile::SB_TABLES
            .iter()
            .map(|t| MonitorTable::all(t))
            .collect();
        tables.push(MonitorTable::all(sb::SbGlobal::TABLE));
        let mut replica = client.monitor(tables).await.unwrap();
        let wait = Duration::from_secs(10);
        let a = tokio::time::timeout(
            wait,
            replica.wait_for(|db| {
                binding(db, "pod1.ns1").is_some() && chassis::chassis_uuid(db, "node-1").is_some()
            }),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(same_compile_input(&a, &a));

        // The node's own `up` write: a new Port_Binding table, same input.
        central
            .sbctl(&["set", "Port_Binding", "pod1.ns1", "up=true"])
            .unwrap();
        let b = tokio::time::timeout(
            wait,
            replica.wait_for(|db| binding(db, "pod1.ns1").is_some_and(|p| p.up == Some(true))),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(!port_bindings::same_table(&a, &b));
        assert!(same_compile_input(&a, &b) && same_compile_input(&b, &a));
        assert!(same_compile_input_parsed(
            &a,
            &PortBindings::of(&a),
            &b,
            &PortBindings::of(&b),
            &HashMap::<String, u16>::new()
        ));

        // SB_Global (nb_cfg) is not compiler input.
        let before = nb_cfg(&b);
        central.nbctl(&["--wait=sb", "sync"]).unwrap();
        let c = tokio::time::timeout(wait, replica.wait_for(|db| nb_cfg(db) > before))
            .await
            .unwrap()
            .unwrap();
        assert!(same_compile_input(&b, &c));
        // The parse cache: one parse per Port_Binding table.
        let cache = PortBindingCache::default();
        let (rows_b, rows_c) = (cache.get(&b), cache.get(&c));
        assert!(Arc::ptr_eq(&rows_b, &rows_c));
        assert!(!Arc::ptr_eq(&rows_b, &cache.get(&a)));

        // A claim changes a column the compiler reads.
        central.sbctl(&["lsp-bind", "pod1.ns1", "node-1"]).unwrap();
        let d = tokio::time::timeout(
            wait,
            replica.wait_for(|db| binding(db, "pod1.ns1").is_some_and(|p| p.chassis.is_some())),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(!same_compile_input(&c, &d) && !same_compile_input(&d, &c));
        assert!(!same_compile_input_parsed(
            &c,
            &PortBindings::of(&c),
            &d,
            &PortBindings::of(&d),
            &HashMap::<String, u16>::new()
        ));
        // ... but not for a compiler that maps the port: it bound the port
        // here before the claim.
        let mapped = HashMap::from([("pod1.ns1".to_string(), 3u16)]);
        assert!(same_compile_input_parsed(
            &c,
            &PortBindings::of(&c),
            &d,
            &PortBindings::of(&d),
            &mapped
        ));
        let other = HashMap::from([("pod9.ns1".to_string(), 3u16)]);
        assert!(!same_compile_input_parsed(
            &c,
            &PortBindings::of(&c),
            &d,
            &PortBindings::of(&d),
            &other
        ));

        // A new port: new Port_Binding row and new logical flows.
        central.nbctl(&["lsp-add", "ls0", "pod2.ns1"]).unwrap();
        let e = tokio::time::timeout(
            wait,
            replica.wait_for(|db| binding(db, "pod2.ns1").is_some()),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(!same_compile_input(&d, &e));
        let rows = PortBindings::of(&e);
        assert_eq!(rows.rows().len(), 2);
        assert_eq!(
            rows.get("pod2.ns1").map(|p| p.logical_port.as_str()),
            Some("pod2.ns1")
        );
        assert!(rows.rows().windows(2).all(|w| w[0].uuid < w[1].uuid));
    }
}
