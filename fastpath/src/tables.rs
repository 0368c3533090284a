//! The compiled tables in the fastpath: a watcher thread (never a worker)
//! notices a new generation in the shared-memory file, validates it, and
//! makes it visible to the workers, which switch at a burst boundary with no
//! lock (one relaxed load per poll round; an `ArcSwap` load only when the
//! generation changed) and acknowledge in the file's reader area.
//!
//! Next to each validated snapshot the watcher builds the OVN
//! [`Program`] (off the hot path); a generation whose program fails to load
//! is refused and counted like a bad slot, and forwarding goes on with the
//! last good one. Workers take up the program with the snapshot. Anything
//! derived from the tables (flow cache entries) records the generation it
//! came from ([`WorkerTables::generation`]).
//!
//! When a program loads, the watcher also brings the node's shared
//! [`MeterBank`] (if one is attached: [`TablesShared::meters`]) to the
//! program's `set_meter` policers ([`Program::meters`]): keys are stable
//! across generations, so a rate change applies to the live meter and the
//! other meters are undisturbed.

use crate::meter::MeterBank;
use crate::ovn::Program;
use arc_swap::ArcSwapOption;
use fastpath_tables::{Reader, ReaderHandle, RefusalReason, Snapshot};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Role tag of a worker lcore's reader entry: `WORKER_ROLE_BASE + lcore`.
pub const WORKER_ROLE_BASE: u32 = 0x1000;

/// What the watcher shares with workers and the control thread.
pub struct TablesShared {
    /// The file.
    pub path: PathBuf,
    /// Generation of `snapshot` (0 = none yet).
    pub latest: AtomicU64,
    /// The last good snapshot.
    pub snapshot: ArcSwapOption<Snapshot>,
    /// The OVN program of `snapshot`.
    pub program: ArcSwapOption<Program>,
    /// Generations refused because their OVN program did not load.
    pub program_refused: AtomicU64,
    /// The open file, once it exists.
    pub reader: ArcSwapOption<Reader>,
    /// Slots refused, by reason (names from the tables crate).
    pub refused: Vec<AtomicU64>,
    /// Reader entries registered for the workers when the file is opened,
    /// before any snapshot is handed out (so the writer never overwrites a
    /// slot a worker is about to use); each worker takes its own once.
    handles: Mutex<Vec<(u32, ReaderHandle)>>,
    /// Worker lcores that need an entry.
    workers: Vec<u32>,
    /// Set when the watcher should stop.
    pub stop: AtomicBool,
    /// The node's QoS policers, synced with each program loaded (ticks of
    /// the TSC), when attached.
    pub meters: ArcSwapOption<MeterBank>,
    /// Programs whose meters the bank refused (the previous meters stay).
    pub meters_refused: AtomicU64,
}

impl TablesShared {
    /// Nothing loaded yet; `workers` are the lcores that will read.
    pub fn new(path: &Path, workers: &[u32]) -> Arc<TablesShared> {
        Arc::new(TablesShared {
            path: path.to_path_buf(),
            latest: AtomicU64::new(0),
            snapshot: ArcSwapOption::empty(),
            program: ArcSwapOption::empty(),
            program_refused: AtomicU64::new(0),
            reader: ArcSwapOption::empty(),
            refused: RefusalReason::ALL
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
            handles: Mutex::new(Vec::new()),
            workers: workers.to_vec(),
            stop: AtomicBool::new(false),
            meters: ArcSwapOption::empty(),
            meters_refused: AtomicU64::new(0),
        })
    }

    /// Refusal counters with their names (non-zero only).
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        RefusalReason::ALL
            .iter()
            .zip(&self.refused)
            .map(|(r, c)| (r.name(), c.load(Ordering::Relaxed)))
            .chain(std::iter::once((
                "program_load",
                self.program_refused.load(Ordering::Relaxed),
            )))
            .chain(std::iter::once((
                "meters",
                self.meters_refused.load(Ordering::Relaxed),
            )))
            .filter(|(_, v)| *v > 0)
            .collect()
    }
}

/// The watcher: opens the file (waiting for it to appear), then loads every
/// new generation. Runs on its own thread until `shared.stop`.
pub struct Watcher {
    shared: Arc<TablesShared>,
    handle: Option<ReaderHandle>,
    poll: Duration,
    last_refused: u64,
}

impl Watcher {
    /// A watcher polling every `poll`.
    pub fn new(shared: Arc<TablesShared>, poll: Duration) -> Watcher {
        Watcher {
            shared,
            handle: None,
            poll,
            last_refused: 0,
        }
    }

    /// Brings the attached meter bank to the program's policers.
    fn sync_meters(&self, program: &Program) {
        let Some(bank) = self.shared.meters.load_full() else {
            return;
        };
        let wanted = program.meters();
        if let Err(e) = bank.sync(&wanted, crate::dpdk::rdtsc()) {
            self.shared.meters_refused.fetch_add(1, Ordering::Relaxed);
            log::error!(
                "tables: generation {}: meters refused ({e}); the previous meters stay",
                program.generation
            );
        } else if !wanted.is_empty() {
            log::info!(
                "tables: generation {}: {} QoS meter(s)",
                program.generation,
                wanted.len()
            );
        }
    }

    /// Opens the file if it exists and loads its current generation. Called
    /// once before the workers start, so that a restarted fastpath forwards
    /// with the last published tables at once.
    pub fn try_load(&mut self) {
        if self.handle.is_none() {
            if !self.shared.path.exists() {
                return;
            }
            match Reader::open(&self.shared.path) {
                Ok(reader) => match reader.register_reader_as(fastpath_tables::CONTROL_ROLE) {
                    Ok(h) => {
                        let mut handles = self.shared.handles.lock();
                        for &lcore in &self.shared.workers {
                            match reader.register_reader_as(WORKER_ROLE_BASE + lcore) {
                                Ok(wh) => handles.push((lcore, wh)),
                                Err(e) => {
                                    log::error!("tables: no reader entry for lcore {lcore}: {e}")
                                }
                            }
                        }
                        drop(handles);
                        log::info!("tables: opened {}", self.shared.path.display());
                        self.handle = Some(h);
                        self.shared.reader.store(Some(Arc::new(reader)));
                    }
                    Err(e) => {
                        log::warn!(
                            "tables: {}: cannot register as a reader: {e}",
                            self.shared.path.display()
                        );
                        return;
                    }
                },
                Err(e) => {
                    log::warn!("tables: cannot open {}: {e}", self.shared.path.display());
                    return;
                }
            }
        }
        let Some(reader) = self.shared.reader.load_full() else {
            return;
        };
        let published = reader.generation();
        let current = self.shared.latest.load(Ordering::Relaxed);
        if published == current || published == 0 || published == self.last_refused {
            return;
        }
        let Some(handle) = &self.handle else { return };
        let started = std::time::Instant::now();
        match handle.current() {
            Ok(snap) => {
                let generation = snap.generation();
                let program = match Program::load(&snap.sections(), generation) {
                    Ok(p) => p,
                    Err(e) => {
                        self.shared.program_refused.fetch_add(1, Ordering::Relaxed);
                        self.last_refused = published;
                        log::error!(
                            "tables: generation {generation} refused (OVN program: {e}); forwarding goes on with generation {current}"
                        );
                        return;
                    }
                };
                // The watcher itself moves on at once; the workers' own
                // entries keep the previous slot until they switch.
                if let Err(e) = handle.ack(generation) {
                    log::warn!("tables: acknowledging generation {generation}: {e}");
                }
                self.sync_meters(&program);
                self.shared.program.store(Some(Arc::new(program)));
                self.shared.snapshot.store(Some(Arc::new(snap)));
                // Release: a worker that sees the new number finds the new
                // snapshot stored.
                self.shared.latest.store(generation, Ordering::Release);
                log::info!(
                    "tables: generation {generation} in use (validated and loaded in {:.1} ms)",
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
            Err(refused) => {
                if matches!(
                    refused.reason,
                    RefusalReason::NotPublished | RefusalReason::Contended
                ) {
                    return;
                }
                if let Some(i) = RefusalReason::ALL.iter().position(|r| *r == refused.reason) {
                    self.shared.refused[i].fetch_add(1, Ordering::Relaxed);
                }
                self.last_refused = published;
                log::error!(
                    "tables: generation {published} refused ({}); forwarding goes on with generation {}",
                    refused.reason.name(),
                    current
                );
            }
        }
    }

    /// Runs until `shared.stop`, keeping its own reader entry alive.
    pub fn run(mut self) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.try_load();
            if let Some(h) = &self.handle {
                let _ = h.heartbeat();
            }
            std::thread::sleep(self.poll);
        }
    }
}

/// A worker's view of the tables.
pub struct WorkerTables {
    shared: Arc<TablesShared>,
    lcore: u32,
    handle: Option<ReaderHandle>,
    current: Option<Arc<Snapshot>>,
    program: Option<Arc<Program>>,
    generation: u64,
    next_heartbeat_tsc: u64,
    heartbeat_every_tsc: u64,
}

impl WorkerTables {
    /// A view for worker `lcore`; `tsc_hz` paces its heartbeat (10 per second).
    pub fn new(shared: Arc<TablesShared>, lcore: u32, tsc_hz: u64) -> WorkerTables {
        WorkerTables {
            shared,
            lcore,
            handle: None,
            current: None,
            program: None,
            generation: 0,
            next_heartbeat_tsc: 0,
            heartbeat_every_tsc: tsc_hz / 10,
        }
    }

    /// The generation in use (0 when none).
    #[inline(always)]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The OVN program of the generation in use.
    #[inline(always)]
    pub fn program(&self) -> Option<&Arc<Program>> {
        self.program.as_ref()
    }

    /// The snapshot in use.
    #[inline(always)]
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.current.as_deref()
    }

    /// Called at every burst boundary: switches to a newer generation if the
    /// watcher published one. Returns true when it switched.
    #[inline(always)]
    pub fn at_burst_boundary(&mut self, now_tsc: u64) -> bool {
        let latest = self.shared.latest.load(Ordering::Acquire);
        let switched = latest != self.generation && self.switch(latest);
        if now_tsc >= self.next_heartbeat_tsc {
            self.next_heartbeat_tsc = now_tsc + self.heartbeat_every_tsc;
            if let Some(h) = &self.handle {
                let _ = h.heartbeat();
            }
        }
        switched
    }

    #[cold]
    fn switch(&mut self, latest: u64) -> bool {
        if self.handle.is_none() {
            // First generation: take the entry the watcher registered for us.
            let mut handles = self.shared.handles.lock();
            if let Some(i) = handles.iter().position(|(l, _)| *l == self.lcore) {
                self.handle = Some(handles.swap_remove(i).1);
            }
        }
        let Some(snap) = self.shared.snapshot.load_full() else {
            return false;
        };
        let generation = snap.generation();
        // The watcher stores the program before the snapshot; a program of
        // another generation means it is publishing right now: retry at the
        // next burst boundary.
        let program = self.shared.program.load_full();
        if program.as_ref().is_some_and(|p| p.generation != generation) {
            return false;
        }
        if let Some(h) = &self.handle {
            if let Err(e) = h.ack(generation) {
                log::warn!(
                    "lcore {}: acknowledging generation {generation}: {e}",
                    self.lcore
                );
            }
        }
        self.current = Some(snap);
        self.program = program;
        self.generation = generation;
        let _ = latest;
        true
    }
}
