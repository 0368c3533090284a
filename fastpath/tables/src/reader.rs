//! The reader side: mapping the file, reader entries, validated snapshots.
//!
//! Owns [`Reader`], [`ReaderHandle`], [`Snapshot`] and the summaries that
//! `fastpathctl tables` prints. It must not write slots and holds no
//! `unsafe` (the mapping is [`crate::shm`]).
//!
//! A read-write reader (the fastpath) reads slots in place: its reader entry
//! keeps the writer away from the slot it validated. A read-only reader
//! (inspection tools) has no entry, so it copies the slot into private memory
//! first and validates the copy; a copy torn by a concurrent publish fails
//! its checksum and is read again.

use std::fmt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytemuck::Pod;

use crate::layout::{FileGeometry, SectionEntry};
use crate::protocol::{Pin, PinnedSlot};
use crate::refusal::{RefusalCounters, RefusalReason, RefusedSlot};
use crate::sections::{describe_entry, PortMapView, SectionKind, SlotSections, Strings};
use crate::shm::{self, Access, Mapping};
use crate::validate::{validate_pinned, AlignedBuf, ValidatedSlot};
use crate::Error;

/// Role tag of the entry that [`Reader::current`] registers for itself.
pub const CONTROL_ROLE: u32 = u32::MAX;

/// A mapped table file, for reading.
pub struct Reader {
    map: Arc<Mapping>,
    geometry: FileGeometry,
    refusals: Arc<RefusalCounters>,
    own: Mutex<Option<ReaderHandle>>,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("geometry", &self.geometry)
            .field("generation", &self.generation())
            .finish()
    }
}

impl Reader {
    /// Map the file read-write (the fastpath: it writes its reader entries).
    pub fn open(path: impl AsRef<Path>) -> Result<Reader, Error> {
        Self::open_mode(path.as_ref(), Access::ReadWrite)
    }

    /// Map the file read-only (inspection). Snapshots are private copies.
    pub fn open_readonly(path: impl AsRef<Path>) -> Result<Reader, Error> {
        Self::open_mode(path.as_ref(), Access::ReadOnly)
    }

    fn open_mode(path: &Path, access: Access) -> Result<Reader, Error> {
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let file = shm::open_file(path, access).map_err(io)?;
        let map = Mapping::map(file, access).map_err(io)?;
        let geometry = FileGeometry::from_identity(&map.identity(), map.len() as u64)?;
        Ok(Reader {
            map: Arc::new(map),
            geometry,
            refusals: Arc::new(RefusalCounters::default()),
            own: Mutex::new(None),
        })
    }

    /// The last published generation: one atomic load, for polling.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.map.control().publish.generation()
    }

    /// Whether a newer file has replaced this one at its path (open again).
    pub fn is_superseded(&self) -> bool {
        self.map.control().superseded.load(Ordering::Acquire) != 0
    }

    /// Process id of the last writer (0: never written).
    pub fn writer_pid(&self) -> u32 {
        self.map.control().writer_pid.load(Ordering::Relaxed)
    }

    /// Refusal counters of this reader and its handles.
    pub fn refusals(&self) -> &RefusalCounters {
        &self.refusals
    }

    /// Take a free reader entry (role 0).
    pub fn register_reader(&self) -> Result<ReaderHandle, Error> {
        self.register_reader_as(0)
    }

    /// Take a free reader entry with a role tag (e.g. lcore id + 1). Its ack
    /// starts at the current generation.
    pub fn register_reader_as(&self, role: u32) -> Result<ReaderHandle, Error> {
        if self.map.access() != Access::ReadWrite {
            return Err(Error::ReadOnly);
        }
        let control = self.map.control();
        let token = loop {
            let token = control.next_reader_token.fetch_add(1, Ordering::Relaxed);
            if token != 0 {
                break token;
            }
        };
        let now = shm::monotonic_ns();
        let index = self
            .map
            .readers()
            .iter()
            .position(|entry| entry.try_claim(token, shm::own_pid(), role, now))
            .ok_or(Error::ReaderAreaFull)?;
        let handle = ReaderHandle {
            map: Arc::clone(&self.map),
            geometry: self.geometry,
            refusals: Arc::clone(&self.refusals),
            index,
            token,
        };
        match control.publish.establish(handle.entry()) {
            Pin::Pinned(_) | Pin::NotPublished => Ok(handle),
            Pin::Contended | Pin::Reclaimed => Err(Error::Contended),
        }
    }

    /// The current generation, completely validated. A read-write reader
    /// reads in place, protected by its own reader entry (registered on first
    /// use, role [`CONTROL_ROLE`]) which then acknowledges the new generation:
    /// keep older snapshots only under a [`ReaderHandle`] whose ack is not
    /// past them. A read-only reader gets a private copy. On refusal the
    /// reason is counted and the caller keeps its last good snapshot.
    pub fn current(&self) -> Result<Snapshot, RefusedSlot> {
        if self.map.access() == Access::ReadOnly {
            return self.current_copy();
        }
        let mut own = self.own.lock().unwrap_or_else(|poison| poison.into_inner());
        for _ in 0..2 {
            if own.is_none() {
                *own = Some(self.register_reader_as(CONTROL_ROLE).map_err(|_| {
                    self.refusals.record(RefusalReason::Contended);
                    RefusedSlot::new(self.generation(), RefusalReason::Contended)
                })?);
            }
            let Some(handle) = own.as_ref() else { break };
            match handle.current() {
                Ok(snapshot) => {
                    // Acking what we just pinned cannot fail unless reclaimed,
                    // which the next call notices.
                    let _ = handle.ack(snapshot.generation());
                    return Ok(snapshot);
                }
                Err(refused) if refused.reason == RefusalReason::ReaderReclaimed => {
                    *own = None;
                }
                Err(refused) => return Err(refused),
            }
        }
        Err(RefusedSlot::new(
            self.generation(),
            RefusalReason::ReaderReclaimed,
        ))
    }

    fn current_copy(&self) -> Result<Snapshot, RefusedSlot> {
        let mut last = RefusedSlot::new(0, RefusalReason::Contended);
        for _ in 0..8 {
            let pinned = match self.map.control().publish.peek() {
                Pin::Pinned(pinned) => pinned,
                Pin::NotPublished => {
                    last = RefusedSlot::new(0, RefusalReason::NotPublished);
                    break;
                }
                Pin::Contended | Pin::Reclaimed => {
                    std::thread::yield_now();
                    continue;
                }
            };
            let copy = match slot_bytes(&self.map, &self.geometry, &pinned) {
                Ok(bytes) => AlignedBuf::copy_of(bytes),
                Err(refused) => {
                    last = refused;
                    break;
                }
            };
            match validate_pinned(copy.bytes(), &pinned) {
                Ok(validated) => {
                    return Ok(Snapshot {
                        map: Arc::clone(&self.map),
                        backing: Backing::Copy(Arc::new(copy)),
                        validated: Arc::new(validated),
                    })
                }
                Err(refused) => {
                    last = refused;
                    // Torn by a concurrent publish? Then read again.
                    if self.map.control().publish.peek() == Pin::Pinned(pinned) {
                        break;
                    }
                }
            }
        }
        self.refusals.record(last.reason);
        Err(last)
    }

    /// The reader entries in use.
    pub fn readers(&self) -> Vec<ReaderInfo> {
        reader_infos(&self.map)
    }
}

/// The bytes of a pinned slot within the mapping.
fn slot_bytes<'a>(
    map: &'a Mapping,
    geometry: &FileGeometry,
    pinned: &PinnedSlot,
) -> Result<&'a [u8], RefusedSlot> {
    let refused = RefusedSlot::new(pinned.generation, RefusalReason::SlotBounds);
    let length = usize::try_from(pinned.length)
        .ok()
        .filter(|length| *length <= geometry.slot_capacity)
        .ok_or(refused)?;
    map.bytes(geometry.slot_offsets[pinned.slot], length)
        .ok_or(refused)
}

/// One reader entry: a fastpath lcore or control thread.
pub struct ReaderHandle {
    map: Arc<Mapping>,
    geometry: FileGeometry,
    refusals: Arc<RefusalCounters>,
    index: usize,
    token: u64,
}

impl fmt::Debug for ReaderHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReaderHandle")
            .field("index", &self.index)
            .field("acked", &self.acked())
            .finish()
    }
}

impl ReaderHandle {
    fn entry(&self) -> &crate::protocol::ReaderEntry {
        &self.map.readers()[self.index]
    }

    /// Index of the entry in the reader area.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The generation this entry has acknowledged.
    pub fn acked(&self) -> u64 {
        self.entry().acked()
    }

    /// Record that this reader now uses `generation` and nothing older. Only
    /// moves forward, and never past the published generation.
    pub fn ack(&self, generation: u64) -> Result<(), Error> {
        let entry = self.entry();
        if entry.owner() != self.token {
            return Err(Error::Reclaimed);
        }
        let published = self.map.control().publish.generation();
        if generation > published {
            return Err(Error::AckAhead {
                generation,
                published,
            });
        }
        entry.ack(generation);
        entry
            .heartbeat_ns
            .store(shm::monotonic_ns(), Ordering::Relaxed);
        Ok(())
    }

    /// Record a sign of life (call more often than the writer's reader
    /// timeout, e.g. every few hundred bursts).
    pub fn heartbeat(&self) -> Result<(), Error> {
        let entry = self.entry();
        if entry.owner() != self.token {
            return Err(Error::Reclaimed);
        }
        entry
            .heartbeat_ns
            .store(shm::monotonic_ns(), Ordering::Relaxed);
        Ok(())
    }

    /// The current generation, validated in place. Safe to use for as long as
    /// this handle's ack is not moved past it; call [`Self::ack`] once the
    /// reader has switched to it. Refusals are counted.
    pub fn current(&self) -> Result<Snapshot, RefusedSlot> {
        let result = self.current_uncounted();
        if let Err(refused) = &result {
            self.refusals.record(refused.reason);
        }
        result
    }

    fn current_uncounted(&self) -> Result<Snapshot, RefusedSlot> {
        let generation = self.map.control().publish.generation();
        let pinned = match self.map.control().publish.pin(self.entry(), self.token) {
            Pin::Pinned(pinned) => pinned,
            Pin::NotPublished => {
                return Err(RefusedSlot::new(generation, RefusalReason::NotPublished))
            }
            Pin::Contended => return Err(RefusedSlot::new(generation, RefusalReason::Contended)),
            Pin::Reclaimed => {
                return Err(RefusedSlot::new(generation, RefusalReason::ReaderReclaimed))
            }
        };
        let bytes = slot_bytes(&self.map, &self.geometry, &pinned)?;
        let validated = validate_pinned(bytes, &pinned)?;
        Ok(Snapshot {
            map: Arc::clone(&self.map),
            backing: Backing::InPlace {
                offset: self.geometry.slot_offsets[pinned.slot],
                len: bytes.len(),
            },
            validated: Arc::new(validated),
        })
    }
}

impl Drop for ReaderHandle {
    fn drop(&mut self) {
        self.entry().release(self.token);
    }
}

#[derive(Clone)]
enum Backing {
    InPlace { offset: usize, len: usize },
    Copy(Arc<AlignedBuf>),
}

/// A validated generation. Cheap to clone. Every accessor is a bounds-checked
/// slice of the validated slot.
#[derive(Clone)]
pub struct Snapshot {
    map: Arc<Mapping>,
    backing: Backing,
    validated: Arc<ValidatedSlot>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation())
            .field("sections", &self.validated.toc.len())
            .finish()
    }
}

impl Snapshot {
    fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::InPlace { offset, len } => self.map.bytes(*offset, *len).unwrap_or(&[]),
            Backing::Copy(copy) => copy.bytes(),
        }
    }

    /// The slot's bytes, from its header to its used length: what
    /// [`crate::validate::validate_slot`] takes (for saving one generation
    /// to a file, as the benchmarks' table data is).
    pub fn slot_bytes(&self) -> &[u8] {
        self.bytes()
    }

    /// The sections of this slot.
    pub fn sections(&self) -> SlotSections<'_> {
        self.validated.sections(self.bytes())
    }

    /// The generation.
    pub fn generation(&self) -> u64 {
        self.validated.header.generation
    }

    /// Wall-clock publish time, nanoseconds since the Unix epoch.
    pub fn publish_time_ns(&self) -> u64 {
        self.validated.header.publish_time_ns
    }

    /// A section as typed elements (`None` if absent or of another size).
    pub fn section<T: Pod>(&self, kind: SectionKind) -> Option<&[T]> {
        self.sections().typed(kind)
    }

    /// A section's raw bytes.
    pub fn section_bytes(&self, kind: SectionKind) -> Option<&[u8]> {
        self.sections().bytes(kind)
    }

    /// The string blob.
    pub fn strings(&self) -> Strings<'_> {
        self.sections().strings()
    }

    /// The port map.
    pub fn ports(&self) -> PortMapView<'_> {
        self.sections().ports()
    }

    /// Text dump of a section (`None` if the slot has no such section).
    pub fn dump(&self, kind: SectionKind) -> Option<String> {
        self.sections().dump(kind)
    }

    /// What `fastpathctl tables` prints: generation, publish time, sections
    /// and the generation each reader uses.
    pub fn summary(&self) -> Summary {
        Summary {
            generation: self.generation(),
            publish_time_ns: self.publish_time_ns(),
            sections: self.validated.toc.clone(),
            readers: reader_infos(&self.map),
        }
    }
}

/// One reader entry in use, as seen in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderInfo {
    /// Index in the reader area.
    pub index: usize,
    /// Owner's process id.
    pub pid: u32,
    /// Owner's role tag.
    pub role: u32,
    /// The generation it has acknowledged.
    pub generation: u64,
    /// Nanoseconds since its last heartbeat.
    pub heartbeat_age_ns: u64,
}

pub(crate) fn reader_infos(map: &Mapping) -> Vec<ReaderInfo> {
    let now = shm::monotonic_ns();
    map.readers()
        .iter()
        .enumerate()
        .filter(|(_, entry)| entry.owner() != 0)
        .map(|(index, entry)| ReaderInfo {
            index,
            pid: entry.pid.load(Ordering::Relaxed),
            role: entry.role.load(Ordering::Relaxed),
            generation: entry.acked(),
            heartbeat_age_ns: now.saturating_sub(entry.heartbeat_ns.load(Ordering::Relaxed)),
        })
        .collect()
}

/// Summary of a snapshot and of the readers of its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The generation.
    pub generation: u64,
    /// Wall-clock publish time, nanoseconds since the Unix epoch.
    pub publish_time_ns: u64,
    /// The table of contents.
    pub sections: Vec<SectionEntry>,
    /// The readers of the file.
    pub readers: Vec<ReaderInfo>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.publish_time_ns / 1_000_000_000;
        let nanos = self.publish_time_ns % 1_000_000_000;
        writeln!(f, "generation {}", self.generation)?;
        writeln!(f, "published {secs}.{nanos:09} (unix time)")?;
        for entry in &self.sections {
            writeln!(f, "section {}", describe_entry(entry))?;
        }
        for reader in &self.readers {
            let role = match reader.role {
                CONTROL_ROLE => "control".to_owned(),
                role => format!("role {role}"),
            };
            writeln!(
                f,
                "reader {} pid {} {role} generation {} heartbeat {} ms ago",
                reader.index,
                reader.pid,
                reader.generation,
                reader.heartbeat_age_ns / 1_000_000
            )?;
        }
        Ok(())
    }
}
