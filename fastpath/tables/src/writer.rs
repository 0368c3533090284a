//! The writer side: creating the file and publishing slots.
//!
//! Owns [`TableFile::create`], [`Writer`] and its wait for readers to leave a
//! slot, including reclaiming the entries of dead readers. It must not read
//! slot contents back or hold `unsafe` (the mapping is [`crate::shm`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::builder::SlotBuilder;
use crate::layout::FileGeometry;
use crate::protocol::ReaderEntry;
use crate::reader::{reader_infos, ReaderInfo};
use crate::shm::{self, Access, Mapping};
use crate::Error;

/// How the writer treats readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterOptions {
    /// A reader whose heartbeat is older than this is dead. Default 1 s.
    pub reader_timeout: Duration,
    /// How long `publish` waits for live readers to leave the slot. Default 5 s.
    pub publish_timeout: Duration,
    /// Also treat a reader as dead when its process is gone (`kill(pid, 0)`).
    /// Needs writer and readers in one pid namespace. Default true.
    pub check_pids: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            reader_timeout: Duration::from_secs(1),
            publish_timeout: Duration::from_secs(5),
            check_pids: true,
        }
    }
}

/// Creating table files.
pub struct TableFile;

impl TableFile {
    /// Create the table file at `path` (on hugetlbfs or /dev/shm), mode 0600,
    /// with room for slots of `capacity_bytes` each, and become its writer.
    ///
    /// If a table file is already there, the new file continues from its
    /// generation (generations never go back), replaces it atomically
    /// (rename), and the old file is marked superseded so that its readers
    /// open the path again. Fails with [`Error::WriterLocked`] if a live writer
    /// holds the old file.
    pub fn create(path: impl AsRef<Path>, capacity_bytes: usize) -> Result<Writer, Error> {
        Self::create_with(path, capacity_bytes, WriterOptions::default())
    }

    /// [`Self::create`] with options.
    pub fn create_with(
        path: impl AsRef<Path>,
        capacity_bytes: usize,
        options: WriterOptions,
    ) -> Result<Writer, Error> {
        let path = path.as_ref();
        let geometry = FileGeometry::for_capacity(capacity_bytes).ok_or(Error::CapacityTooLarge)?;
        let old = match Writer::open_with(path, options) {
            Ok(old) => Some(old),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
            Err(Error::WriterLocked) => return Err(Error::WriterLocked),
            Err(other) => {
                log::warn!("replacing unusable table file {}: {other}", path.display());
                None
            }
        };
        let temporary = temporary_path(path);
        let _ = std::fs::remove_file(&temporary);
        let io = |source| Error::Io {
            path: temporary.clone(),
            source,
        };
        let file = shm::create_file(&temporary, geometry.file_size as u64).map_err(io)?;
        if !shm::try_lock_writer(&file).map_err(io)? {
            return Err(Error::WriterLocked);
        }
        let map = Mapping::map(file, Access::ReadWrite).map_err(io)?;
        map.write_bytes(0, bytemuck::bytes_of(&geometry.identity()))
            .map_err(io)?;
        let control = map.control();
        let carried = old.as_ref().map_or(0, |old| old.generation());
        control.publish.generation.store(carried, Ordering::SeqCst);
        control
            .publish
            .current_slot
            .store(carried & 1, Ordering::SeqCst);
        control.writer_pid.store(shm::own_pid(), Ordering::SeqCst);
        std::fs::rename(&temporary, path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        if let Some(old) = old {
            old.map.control().superseded.store(1, Ordering::SeqCst);
        }
        Ok(Writer {
            map: Arc::new(map),
            geometry,
            path: path.to_owned(),
            options,
        })
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".new.{}", shm::own_pid()));
    path.with_file_name(name)
}

/// The only writer of a table file (an exclusive `flock` on the file).
pub struct Writer {
    map: Arc<Mapping>,
    geometry: FileGeometry,
    path: PathBuf,
    options: WriterOptions,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("path", &self.path)
            .field("geometry", &self.geometry)
            .field("generation", &self.generation())
            .finish()
    }
}

impl Writer {
    /// Become the writer of an existing table file; publishing continues from
    /// the file's generation.
    pub fn open(path: impl AsRef<Path>) -> Result<Writer, Error> {
        Self::open_with(path, WriterOptions::default())
    }

    /// [`Self::open`] with options.
    pub fn open_with(path: impl AsRef<Path>, options: WriterOptions) -> Result<Writer, Error> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let file = shm::open_file(path, Access::ReadWrite).map_err(io)?;
        if !shm::try_lock_writer(&file).map_err(io)? {
            return Err(Error::WriterLocked);
        }
        let map = Mapping::map(file, Access::ReadWrite).map_err(io)?;
        let geometry = FileGeometry::from_identity(&map.identity(), map.len() as u64)?;
        map.control()
            .writer_pid
            .store(shm::own_pid(), Ordering::SeqCst);
        Ok(Writer {
            map: Arc::new(map),
            geometry,
            path: path.to_owned(),
            options,
        })
    }

    /// A fresh builder for the next slot.
    pub fn builder(&self) -> SlotBuilder {
        SlotBuilder::new()
    }

    /// The last published generation.
    pub fn generation(&self) -> u64 {
        self.map.control().publish.generation()
    }

    /// Bytes available in each slot.
    pub fn capacity(&self) -> usize {
        self.geometry.slot_capacity
    }

    /// The reader entries in use.
    pub fn readers(&self) -> Vec<ReaderInfo> {
        reader_infos(&self.map)
    }

    /// Write `builder` into the free slot and publish it as the next
    /// generation, which is returned. Waits (at most
    /// [`WriterOptions::publish_timeout`]) for live readers to leave the
    /// slot; dead readers are reclaimed.
    pub fn publish(&mut self, builder: SlotBuilder) -> Result<u64, Error> {
        self.publish_paced(builder, usize::MAX, Duration::ZERO, |_| {})
    }

    /// [`Self::publish`], copying the image `chunk` bytes at a time with a
    /// pause between chunks and a callback after each (with the bytes copied
    /// so far). For tests that stop a writer in the middle of a slot.
    #[doc(hidden)]
    pub fn publish_paced(
        &mut self,
        builder: SlotBuilder,
        chunk: usize,
        pause: Duration,
        mut progress: impl FnMut(usize),
    ) -> Result<u64, Error> {
        let publish = &self.map.control().publish;
        let next = publish
            .generation()
            .checked_add(1)
            .ok_or(Error::GenerationOverflow)?;
        let publish_time_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        let image = builder.finish(next, publish_time_ns);
        if image.len() > self.geometry.slot_capacity {
            return Err(Error::SlotTooLarge {
                needed: image.len(),
                capacity: self.geometry.slot_capacity,
            });
        }
        let checksum = u64::from_le_bytes(image[8..16].try_into().unwrap_or_default());
        let slot = publish.claim_slot(next);
        self.wait_for_readers(next)?;
        let offset = self.geometry.slot_offsets[slot];
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let mut written = 0;
        for piece in image.chunks(chunk.max(1)) {
            self.map.write_bytes(offset + written, piece).map_err(io)?;
            written += piece.len();
            progress(written);
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
        publish.commit(slot, next, image.len() as u64, checksum, publish_time_ns);
        Ok(next)
    }

    fn wait_for_readers(&self, next: u64) -> Result<(), Error> {
        let started = Instant::now();
        let mut rounds = 0u32;
        loop {
            let mut busy = Vec::new();
            for (index, entry) in self.map.readers().iter().enumerate() {
                let Some((owner, ack)) = entry.blocks(next) else {
                    continue;
                };
                if let Some(reason) = self.dead_reason(entry) {
                    if entry.release(owner) {
                        log::warn!(
                            "table file {}: reclaiming reader entry {index} (pid {}, generation {ack}): {reason}",
                            self.path.display(),
                            entry.pid.load(Ordering::Relaxed),
                        );
                    }
                    continue;
                }
                busy.push(index);
            }
            if busy.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= self.options.publish_timeout {
                return Err(Error::ReadersBusy {
                    generation: next,
                    readers: busy,
                });
            }
            rounds += 1;
            if rounds < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    fn dead_reason(&self, entry: &ReaderEntry) -> Option<String> {
        let pid = entry.pid.load(Ordering::Relaxed);
        if self.options.check_pids && !shm::process_alive(pid) {
            return Some("process is gone".to_owned());
        }
        let age = shm::monotonic_ns().saturating_sub(entry.heartbeat_ns.load(Ordering::Relaxed));
        let timeout = self.options.reader_timeout.as_nanos() as u64;
        (age > timeout).then(|| format!("no heartbeat for {} ms", age / 1_000_000))
    }
}
