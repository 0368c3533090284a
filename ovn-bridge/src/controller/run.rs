//! The controller's loop: holds the IPAM and the Northbound connection,
//! and for each observed state computes addresses and rows and commits the
//! difference in one transaction.
//!
//! Owns the NB session and the state file. It must not know where the
//! observed state comes from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ovsdb::{Client, ClientOptions, MonitorTable, Replica};

use super::desired::{desired_nb, Event, TABLES};
use super::ipam::{Allocation, Ipam, IpamError, StateFile};
use super::manifest::{load_dir, DirStamp};
use super::model::{annotation, keys, ClusterState};
use super::reconcile::plan;
use super::{sync_ipam, Config};

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
}

/// The controller: IPAM, NB session, state file.
pub struct Controller {
    /// Names and defaults.
    pub config: Config,
    ipam: Ipam,
    client: Client,
    replica: Replica,
    state_file: Option<PathBuf>,
    recorded: BTreeMap<String, Allocation>,
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
            Some(p) => StateFile::load(p)?.allocations,
            None => BTreeMap::new(),
        };
        Ok(Controller {
            config,
            ipam: Ipam::new(),
            client,
            replica,
            state_file,
            recorded,
            stats: Stats::default(),
        })
    }

    /// The allocation table.
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// One pass: addresses, desired rows, one transaction with the
    /// difference (none when nothing differs), then waits until the replica
    /// shows it.
    pub async fn reconcile(&mut self, state: &ClusterState) -> Result<Report, ControllerError> {
        let mut recorded = recorded_from_annotations(state);
        for (o, a) in &self.recorded {
            recorded.entry(o.clone()).or_insert_with(|| a.clone());
        }
        let mut report = Report {
            events: sync_ipam(state, &self.config, &mut self.ipam, &recorded),
            ..Default::default()
        };
        for (o, a) in self.ipam.allocations() {
            if recorded.get(o) != Some(a) {
                report.new_allocations.insert(o.clone(), a.clone());
            }
        }
        if let Some(path) = &self.state_file {
            if self.ipam.allocations() != &self.recorded {
                self.ipam.to_state().save(path)?;
            }
        }
        self.recorded = self.ipam.allocations().clone();
        let desired = desired_nb(state, &self.ipam, &self.config);
        report.events.extend(desired.events.iter().cloned());
        let ops = plan(&desired, &self.replica.snapshot());
        if ops.is_empty() {
            return Ok(report);
        }
        report.operations = ops.len();
        let inserts: Vec<Option<String>> = ops
            .iter()
            .map(|o| match o {
                ovsdb::Operation::Insert { table, .. } => Some(table.clone()),
                _ => None,
            })
            .collect();
        let before = self.replica.snapshot().generation();
        let results = self.client.transact(ops).await?;
        self.stats.transactions += 1;
        self.stats.operations += report.operations as u64;
        // The replica shows the transaction once it has moved on from the
        // snapshot the plan was made from and holds every inserted row.
        let inserted: Vec<(String, ovsdb::Uuid)> = results
            .iter()
            .zip(inserts)
            .filter_map(|(r, t)| Some((t?, r.uuid?)))
            .collect();
        let wait = self.replica.wait_for(|db| {
            db.generation() > before
                && inserted
                    .iter()
                    .all(|(t, u)| db.table(t).is_some_and(|tb| tb.get(u).is_some()))
        });
        match tokio::time::timeout(Duration::from_secs(30), wait).await {
            Ok(r) => {
                r?;
            }
            Err(_) => return Err(ControllerError::NotConverged),
        }
        Ok(report)
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

/// Runs the manifest source: reads `dir`, reconciles, and again whenever a
/// file changes (polled every `interval`) or the database changes under us.
pub async fn run_manifests(
    dir: &Path,
    ctl: &mut Controller,
    interval: Duration,
) -> Result<(), ControllerError> {
    let mut stamp = None;
    let mut state = ClusterState::default();
    let mut db_rx = ctl.replica().subscribe();
    loop {
        let now = DirStamp::of(dir);
        let files_changed = stamp.as_ref() != Some(&now);
        let db_changed = db_rx.has_changed().unwrap_or(false);
        if files_changed {
            let loaded = load_dir(dir);
            for e in &loaded.errors {
                log::error!("manifest skipped: {e}");
            }
            let (s, _) = loaded.into_state();
            state = s;
            stamp = Some(now);
        }
        if files_changed || db_changed {
            db_rx.borrow_and_update();
            match ctl.reconcile(&state).await {
                Ok(r) => {
                    log_events(&r.events);
                    log::info!(
                        "pass done: {} operations written; {} transactions since start",
                        r.operations,
                        ctl.stats.transactions
                    );
                }
                Err(e) => log::error!("reconcile failed: {e}"),
            }
            db_rx.borrow_and_update();
        }
        tokio::time::sleep(interval).await;
    }
}
