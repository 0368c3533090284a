//! The controller's loop: holds the observed state, the IPAM, the desired
//! rows per unit and the Northbound connection. A full pass places every
//! address and compares every row; an incremental pass (per batch of
//! changed objects) places the addresses of the pods and nodes concerned,
//! recomputes the units they touch and compares only the rows that moved.
//! Operations are committed in bounded transactions.
//!
//! Owns the NB session and the state file. It must not know where the
//! observed state comes from.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ovsdb::{Client, ClientOptions, MonitorTable, Replica};

use super::batch::{batches, resolve_names, DEFAULT_MAX_OPS_PER_TXN};
use super::desired::{Event, TABLES};
use super::incremental::{units_touched, DesiredCache};
use super::ipam::{journal_path, Allocation, Ipam, IpamError, StateFile, StateJournal};
use super::manifest::{load_dir, DirStamp};
use super::model::{annotation, keys, ClusterState, Object, ObjectRef};
use super::reconcile::{plan_changed_deltas, plan_with, RowIndex};
use super::{owner_of, owner_ref, sync_ipam_objects, sync_ipam_placed, Config};

/// Why a reconcile pass failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The Northbound database could not be reached or refused a transaction.
    #[error("northbound: {0}")]
    Ovsdb(#[from] ovsdb::Error),
    /// The state file could not be read or written.
    #[error(transparent)]
    State(#[from] IpamError),
    /// The database did not show our transaction in time.
    #[error("the northbound replica did not converge after a transaction")]
    NotConverged,
}

/// What one pass did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Operations sent (0: nothing changed).
    pub operations: usize,
    /// Transactions they were sent in.
    pub transactions: usize,
    /// Whether every row was compared (a full pass) rather than only the
    /// rows of the objects that changed.
    pub full: bool,
    /// Problems found (conflicts, bad annotations, bad subnets).
    pub events: Vec<Event>,
    /// Allocations that differ from what was recorded (to write back).
    pub new_allocations: BTreeMap<String, Allocation>,
}

/// Counters over the controller's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Transactions committed.
    pub transactions: u64,
    /// Operations in them.
    pub operations: u64,
    /// Passes that compared every row.
    pub full_passes: u64,
    /// Passes that compared only the rows of changed objects.
    pub incremental_passes: u64,
}

/// Tuning of the passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Most operations in one transaction (a larger plan is split).
    pub max_ops_per_txn: usize,
    /// A full pass at least this often, as a safety net under the
    /// incremental ones (`None`: only at start and when needed).
    pub full_resync: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_ops_per_txn: DEFAULT_MAX_OPS_PER_TXN,
            full_resync: Some(Duration::from_secs(300)),
        }
    }
}

/// The controller: observed state, IPAM, desired rows, NB session, state file.
pub struct Controller {
    /// Names and defaults.
    pub config: Config,
    options: Options,
    ipam: Ipam,
    client: Client,
    replica: Replica,
    /// The state file's journal (manifest source), when there is a file.
    journal: Option<StateJournal>,
    recorded: BTreeMap<String, Allocation>,
    state: ClusterState,
    cache: Option<DesiredCache>,
    index: RowIndex,
    last_full: Option<Instant>,
    /// The database may differ from the desired rows outside the rows
    /// the next event changes (a failed transaction): compare everything.
    db_suspect: bool,
    /// Pods and nodes that did not get the addresses they ask for
    /// (conflict, exhaustion): placed again on every pass.
    unplaced: BTreeSet<ObjectRef>,
    /// Counters.
    pub stats: Stats,
}

/// Allocations recorded in pod annotations by an earlier run (Kube-OVN's
/// `allocated` annotation with `ip_address`, `mac_address`, `logical_switch`).
pub fn recorded_from_annotations(state: &ClusterState) -> BTreeMap<String, Allocation> {
    let mut m = BTreeMap::new();
    for ((ns, name), pod) in &state.pods {
        let md = &pod.metadata;
        if annotation(md, keys::ALLOCATED) != Some("true") {
            continue;
        }
        let (Some(ips), Some(mac), Some(ls)) = (
            annotation(md, keys::IP_ADDRESS),
            annotation(md, keys::MAC_ADDRESS),
            annotation(md, keys::LOGICAL_SWITCH),
        ) else {
            continue;
        };
        let ips: Result<Vec<std::net::IpAddr>, _> =
            super::ipam::split_list(ips).map(str::parse).collect();
        let (Ok(mut ips), Some(mac)) = (ips, super::ipam::normalize_mac(mac)) else {
            continue;
        };
        ips.sort_by_key(|ip| ip.is_ipv6());
        m.insert(
            super::desired::pod_owner(ns, name),
            Allocation {
                subnet: ls.to_string(),
                ips,
                mac,
            },
        );
    }
    m
}

impl Controller {
    /// Connects to the Northbound database (one remote, or the members of a
    /// cluster) and loads the state file if one is given.
    pub async fn connect(
        remotes: &[String],
        config: Config,
        state_file: Option<PathBuf>,
    ) -> Result<Self, ControllerError> {
        let mut opts = ClientOptions::default();
        opts.max_message = opts.max_message.max(512 << 20);
        let client = Client::connect(remotes, "OVN_Northbound", opts).await?;
        let replica = client
            .monitor(TABLES.iter().map(|t| MonitorTable::all(t)).collect())
            .await?;
        let recorded = match &state_file {
            Some(p) => {
                let state = StateFile::load(p)?;
                // Fold a journal left by an earlier run into the file.
                if journal_path(p).exists() {
                    state.save(p)?;
                }
                state.allocations
            }
            None => BTreeMap::new(),
        };
        let journal = state_file.as_deref().map(StateJournal::new);
        Ok(Controller {
            config,
            options: Options::default(),
            ipam: Ipam::new(),
            client,
            replica,
            journal,
            recorded,
            state: ClusterState::default(),
            cache: None,
            index: RowIndex::default(),
            last_full: None,
            db_suspect: true,
            unplaced: BTreeSet::new(),
            stats: Stats::default(),
        })
    }

    /// Sets the tuning of later passes.
    pub fn set_options(&mut self, options: Options) {
        self.options = options;
    }

    /// The tuning of the passes.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The allocation table.
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// The observed state the last pass worked from.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The index of our rows in the replica.
    pub fn row_index(&self) -> &RowIndex {
        &self.index
    }

    /// Whether the periodic full pass is due.
    pub fn resync_due(&self) -> bool {
        match (self.last_full, self.options.full_resync) {
            (None, _) => true,
            (Some(t), Some(every)) => t.elapsed() >= every,
            (Some(_), None) => false,
        }
    }

    /// Replaces the observed state and makes a full pass.
    pub async fn reconcile(&mut self, state: &ClusterState) -> Result<Report, ControllerError> {
        self.replace_state(state.clone()).await
    }

    /// [`Controller::reconcile`] without copying the state.
    pub async fn replace_state(&mut self, state: ClusterState) -> Result<Report, ControllerError> {
        self.state = state;
        self.resync().await
    }

    /// A full pass over the current observed state: every address placed
    /// again, every unit recomputed, every row of ours compared with the
    /// database.
    pub async fn resync(&mut self) -> Result<Report, ControllerError> {
        let mut recorded = recorded_from_annotations(&self.state);
        for (o, a) in &self.recorded {
            recorded.entry(o.clone()).or_insert_with(|| a.clone());
        }
        let placed = sync_ipam_placed(&self.state, &self.config, &mut self.ipam, &recorded);
        let mut report = Report {
            full: true,
            events: placed.events,
            ..Default::default()
        };
        for (o, a) in self.ipam.allocations() {
            if recorded.get(o) != Some(a) {
                report.new_allocations.insert(o.clone(), a.clone());
            }
        }
        if let Some(journal) = self.journal.as_mut() {
            if self.ipam.allocations() != &self.recorded || journal.entries() > 0 {
                journal.compact(&self.ipam.to_state())?;
            }
        }
        self.recorded = self.ipam.allocations().clone();
        self.unplaced = placed.failed.iter().filter_map(|o| owner_ref(o)).collect();
        let cache = match self.cache.take() {
            Some(mut c) => {
                c.update_all(&self.state, &self.ipam, &self.config);
                c
            }
            None => DesiredCache::build(&self.state, &self.ipam, &self.config),
        };
        let cache = self.cache.insert(cache);
        report.events.extend(cache.desired().events.iter().cloned());
        let db = self.replica.snapshot();
        self.index.refresh(&db);
        let ops = plan_with(cache.desired(), &db, &self.index, None);
        self.stats.full_passes += 1;
        self.last_full = Some(Instant::now());
        self.db_suspect = false;
        self.commit(ops, &mut report).await?;
        Ok(report)
    }

    /// Applies changed and deleted objects to the observed state and makes
    /// an incremental pass: addresses placed for the pods and nodes among
    /// them, the units they touch recomputed, and only the rows that moved
    /// compared with the database. Falls back to a full pass at start,
    /// when the periodic one is due, after a failed transaction, and when
    /// the change reaches every unit (a Namespace or Subnet).
    pub async fn apply(
        &mut self,
        changed: &[Object],
        deleted: &[ObjectRef],
    ) -> Result<Report, ControllerError> {
        let mut refs: Vec<ObjectRef> = Vec::with_capacity(changed.len() + deleted.len());
        for o in changed {
            refs.push(o.object_ref());
            self.state.apply(o.clone());
        }
        for r in deleted {
            self.state.delete(r);
            refs.push(r.clone());
        }
        if self.cache.is_none() || self.db_suspect || self.resync_due() {
            return self.resync().await;
        }
        if units_touched(&self.state, &refs).is_none() {
            return self.resync().await;
        }
        // Addresses of the pods and nodes concerned, and of those that
        // waited for one.
        let mut owners_refs: BTreeSet<ObjectRef> = refs
            .iter()
            .filter(|r| owner_of(r).is_some())
            .cloned()
            .collect();
        owners_refs.extend(self.unplaced.iter().cloned());
        let owners_refs: Vec<ObjectRef> = owners_refs.into_iter().collect();
        let mut recorded: BTreeMap<String, Allocation> = BTreeMap::new();
        for r in &owners_refs {
            let Some(owner) = owner_of(r) else { continue };
            let from_annotation = match r {
                ObjectRef::Pod(k) => self.state.pods.get(k).and_then(|p| {
                    let mut one = ClusterState::default();
                    one.pods.insert(k.clone(), p.clone());
                    recorded_from_annotations(&one).remove(&owner)
                }),
                _ => None,
            };
            if let Some(a) = from_annotation.or_else(|| self.recorded.get(&owner).cloned()) {
                recorded.insert(owner, a);
            }
        }
        let before: Vec<Option<Allocation>> = owners_refs
            .iter()
            .map(|r| owner_of(r).and_then(|o| self.ipam.get(&o).cloned()))
            .collect();
        let placed = sync_ipam_objects(
            &self.state,
            &self.config,
            &mut self.ipam,
            &recorded,
            &owners_refs,
        );
        let mut report = Report {
            events: placed.events,
            ..Default::default()
        };
        let mut journal_lines: Vec<(String, Option<Allocation>)> = Vec::new();
        for (r, was) in owners_refs.iter().zip(before) {
            let Some(owner) = owner_of(r) else { continue };
            let now = self.ipam.get(&owner).cloned();
            if now != was && !refs.contains(r) {
                refs.push(r.clone());
            }
            if placed.failed.contains(&owner) {
                self.unplaced.insert(r.clone());
            } else {
                self.unplaced.remove(r);
            }
            if let Some(a) = &now {
                if recorded.get(&owner) != Some(a) {
                    report.new_allocations.insert(owner.clone(), a.clone());
                }
            }
            let prev = match &now {
                Some(a) => self.recorded.insert(owner.clone(), a.clone()),
                None => self.recorded.remove(&owner),
            };
            if prev != now {
                journal_lines.push((owner, now));
            }
        }
        if let Some(journal) = self.journal.as_mut() {
            journal.append(journal_lines.iter().map(|(o, a)| (o.as_str(), a.as_ref())))?;
            if journal.wants_compaction(self.recorded.len()) {
                journal.compact(&self.ipam.to_state())?;
            }
        }
        let Some(units) = units_touched(&self.state, &refs) else {
            return self.resync().await;
        };
        let Some(cache) = self.cache.as_mut() else {
            return self.resync().await;
        };
        let rows = cache.update(&units, &self.state, &self.ipam, &self.config);
        report.events.extend(cache.desired().events.iter().cloned());
        let db = self.replica.snapshot();
        self.index.refresh(&db);
        let ops = plan_changed_deltas(cache.desired(), &db, &self.index, &rows, cache.ref_deltas());
        self.stats.incremental_passes += 1;
        self.commit(ops, &mut report).await?;
        Ok(report)
    }

    /// Sends `ops` in bounded transactions, then waits until the replica
    /// shows them.
    async fn commit(
        &mut self,
        ops: Vec<ovsdb::Operation>,
        report: &mut Report,
    ) -> Result<(), ControllerError> {
        if ops.is_empty() {
            return Ok(());
        }
        report.operations = ops.len();
        let before = self.replica.snapshot().generation();
        let mut known: HashMap<String, ovsdb::Uuid> = HashMap::new();
        let mut inserted: Vec<(String, ovsdb::Uuid)> = Vec::new();
        for mut txn in batches(ops, self.options.max_ops_per_txn) {
            resolve_names(&mut txn, &known);
            let names: Vec<Option<(String, Option<String>)>> = txn
                .iter()
                .map(|o| match o {
                    ovsdb::Operation::Insert {
                        table, uuid_name, ..
                    } => Some((table.clone(), uuid_name.clone())),
                    _ => None,
                })
                .collect();
            let n = txn.len();
            let results = match self.client.transact(txn).await {
                Ok(r) => r,
                Err(e) => {
                    self.db_suspect = true;
                    return Err(e.into());
                }
            };
            self.stats.transactions += 1;
            self.stats.operations += n as u64;
            report.transactions += 1;
            for (r, name) in results.iter().zip(names) {
                if let (Some((table, name)), Some(u)) = (name, r.uuid) {
                    if let Some(name) = name {
                        known.insert(name, u);
                    }
                    inserted.push((table, u));
                }
            }
        }
        // The replica shows the transactions once it has moved on from the
        // snapshot the plan was made from and holds every inserted row.
        let wait = self.replica.wait_for(|db| {
            db.generation() > before
                && inserted
                    .iter()
                    .all(|(t, u)| db.table(t).is_some_and(|tb| tb.get(u).is_some()))
        });
        match tokio::time::timeout(Duration::from_secs(30), wait).await {
            Ok(r) => {
                let db = r?;
                self.index.refresh(&db);
            }
            Err(_) => {
                self.db_suspect = true;
                return Err(ControllerError::NotConverged);
            }
        }
        Ok(())
    }

    /// The NB replica, to notice outside changes.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }
}

/// Logs events the way the manifest source reports them.
pub fn log_events(events: &[Event]) {
    for e in events {
        log::warn!("{} {}: {}", e.object, e.reason, e.message);
    }
}

/// Wakes `wake` whenever a file of `dir` is written and closed, renamed in
/// or out, or deleted (inotify), from a thread of its own.
fn watch_dir(dir: &Path, wake: std::sync::Arc<tokio::sync::Notify>) -> std::io::Result<()> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
    inotify.add_watch(
        dir,
        AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE,
    )?;
    std::thread::Builder::new()
        .name("manifest-watch".into())
        .spawn(move || {
            while inotify.read_events().is_ok() {
                wake.notify_one();
            }
        })?;
    Ok(())
}

/// Runs the manifest source: reads `dir` and makes a full pass, then
/// whenever a file changes (told by inotify, and checked every `interval`
/// besides, for file systems without it) applies the objects that changed
/// between the two reads; makes a full pass again when the database
/// changes under us and when the periodic one is due.
pub async fn run_manifests(
    dir: &Path,
    ctl: &mut Controller,
    interval: Duration,
) -> Result<(), ControllerError> {
    let mut stamp = None;
    let mut db_rx = ctl.replica().subscribe();
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    match watch_dir(dir, wake.clone()) {
        Ok(()) => log::info!(
            "watching {} for changes (and checking every {interval:?})",
            dir.display()
        ),
        Err(e) => log::warn!(
            "cannot watch {} ({e}): checking it every {interval:?}",
            dir.display()
        ),
    }
    loop {
        let now = DirStamp::of(dir);
        let files_changed = stamp.as_ref() != Some(&now);
        let db_changed = db_rx.has_changed().unwrap_or(false);
        let mut next = None;
        if files_changed {
            let loaded = load_dir(dir);
            for e in &loaded.errors {
                log::error!("manifest skipped: {e}");
            }
            let (s, _) = loaded.into_state();
            next = Some(s);
            stamp = Some(now);
        }
        let full = db_changed || ctl.resync_due();
        let result = if let Some(s) = next {
            if full {
                db_rx.borrow_and_update();
                Some(ctl.replace_state(s).await)
            } else {
                let (changed, deleted) = ctl.state().diff(&s);
                if changed.is_empty() && deleted.is_empty() {
                    None
                } else {
                    Some(ctl.apply(&changed, &deleted).await)
                }
            }
        } else if full {
            db_rx.borrow_and_update();
            Some(ctl.resync().await)
        } else {
            None
        };
        if let Some(result) = result {
            match result {
                Ok(r) => {
                    log_events(&r.events);
                    log::info!(
                        "pass done: {} operations written; {} transactions since start ({} pass, {} transaction(s))",
                        r.operations,
                        ctl.stats.transactions,
                        if r.full { "full" } else { "incremental" },
                        r.transactions
                    );
                }
                Err(e) => log::error!("reconcile failed: {e}"),
            }
            db_rx.borrow_and_update();
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
