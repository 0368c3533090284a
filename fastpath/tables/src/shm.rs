//! The shared mapping of the table file, and the few system calls around it.
//!
//! Owns every `unsafe` of the crate: `mmap`/`munmap`, turning offsets of the
//! mapping into references to the atomics of the header and the reader area,
//! turning slot ranges into byte slices, and copying a slot image into the
//! mapping. It must not interpret slot contents or decide protocol steps.
//!
//! # Why the references are sound enough
//!
//! The mapping is `MAP_SHARED`: another process (the writer, or readers) may
//! change any byte at any time. Header and reader-area words are only touched
//! through atomics, which is exactly right for memory shared with another
//! process. Slot bytes are handed out as `&[u8]`; the protocol guarantees a
//! registered reader that the writer does not change them while it uses them.
//! A misbehaving writer could still change them: then the reader sees wrong
//! *values* but never reaches outside the mapping, because every slice is cut
//! from the mapping with lengths checked here against the size fixed at map
//! time, and every later index goes through the reader's private copy of the
//! validated table of contents and `slice::get`. All element types are `Pod`
//! (every bit pattern is a valid value), and no `&str` is ever made from the
//! mapping.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;

use crate::layout::{
    ControlBlock, FileIdentity, CONTROL_OFFSET, READER_AREA_OFFSET, READER_CAPACITY,
};
use crate::protocol::ReaderEntry;

/// Access mode of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    ReadOnly,
    ReadWrite,
}

/// A whole table file mapped into this process.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    access: Access,
    /// Kept open for as long as the mapping: it holds the writer's `flock`.
    _file: File,
}

// SAFETY: the mapping is plain memory owned by this value until drop; all
// shared mutation goes through atomics or through `write_bytes`, which the
// protocol serialises (one writer, holding the file lock).
unsafe impl Send for Mapping {}
// SAFETY: see `Send`; `&Mapping` only hands out atomics and byte slices.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map all of `file` (its current size, at least the header).
    pub(crate) fn map(file: File, access: Access) -> io::Result<Self> {
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
        if len < READER_AREA_OFFSET + READER_CAPACITY * size_of::<ReaderEntry>() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "file too small for a table file header",
            ));
        }
        let prot = match access {
            Access::ReadOnly => libc::PROT_READ,
            Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        };
        // SAFETY: a fresh mapping chosen by the kernel (null hint) of a file
        // descriptor we own; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self {
            ptr,
            len,
            access,
            _file: file,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn access(&self) -> Access {
        self.access
    }

    /// A copy of the identity block at offset 0.
    pub(crate) fn identity(&self) -> FileIdentity {
        bytemuck::pod_read_unaligned(self.bytes(0, size_of::<FileIdentity>()).unwrap_or(&[0; 64]))
    }

    /// The control block (atomics).
    pub(crate) fn control(&self) -> &ControlBlock {
        // SAFETY: `map` checked that the mapping covers the whole header, so
        // CONTROL_OFFSET + size_of::<ControlBlock>() (< READER_AREA_OFFSET) is
        // inside it; the mapping is page-aligned, so the offset (64) keeps the
        // 8-byte alignment; ControlBlock is only atomics, valid for any bits,
        // and shared access through `&` is what atomics are for. Loads on a
        // read-only mapping are plain `mov`s on x86-64; stores only happen on
        // read-write mappings (writer and registered readers).
        unsafe { &*self.ptr.as_ptr().add(CONTROL_OFFSET).cast::<ControlBlock>() }
    }

    /// The reader area.
    pub(crate) fn readers(&self) -> &[ReaderEntry] {
        // SAFETY: `map` checked that READER_CAPACITY entries from
        // READER_AREA_OFFSET (4096, so 64-byte aligned on a page-aligned
        // mapping) lie inside the mapping; entries are atomics only.
        unsafe {
            std::slice::from_raw_parts(
                self.ptr
                    .as_ptr()
                    .add(READER_AREA_OFFSET)
                    .cast::<ReaderEntry>(),
                READER_CAPACITY,
            )
        }
    }

    /// The bytes `[offset, offset + len)`, if inside the mapping.
    pub(crate) fn bytes(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: the range was just checked to lie inside the mapping, which
        // lives as long as `self`. The bytes may be changed by another process
        // (see the module doc): readers rely only on bounds, never on values.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) })
    }

    /// Copy `data` into the mapping at `offset`. Only the writer, holding the
    /// file lock, calls this, on a slot no live reader uses.
    pub(crate) fn write_bytes(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        let in_bounds = offset
            .checked_add(data.len())
            .is_some_and(|end| end <= self.len);
        if self.access != Access::ReadWrite || !in_bounds {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write outside a writable mapping",
            ));
        }
        // SAFETY: the range is inside a writable mapping (checked above);
        // `data` is private memory, so the two cannot overlap. No reference to
        // these bytes is alive in this process while the writer owns the slot,
        // unless a same-process reader breaks the protocol; then it reads wrong
        // values but within bounds, as documented above.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len());
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; every reference
        // handed out borrows `self`, so none outlives this call.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Open a table file (no create).
pub(crate) fn open_file(path: &Path, access: Access) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(access == Access::ReadWrite)
        .open(path)
}

/// Create a new file (mode 0600) of `size` zero bytes; fails if it exists.
pub(crate) fn create_file(path: &Path, size: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.set_len(size)?;
    Ok(file)
}

/// Take the writer lock (exclusive `flock`). Returns `Ok(false)` if another
/// process holds it. Released when the file closes.
///
/// Retries for up to ~100 ms: a process that forks between our open and
/// close briefly shares the open file description (and so the lock of a
/// writer that just closed) until its child `exec`s and drops the
/// close-on-exec descriptor.
pub(crate) fn try_lock_writer(file: &File) -> io::Result<bool> {
    for _ in 0..50 {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(error);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Ok(false)
}

/// Whether process `pid` exists (`kill(pid, 0)`; EPERM means it exists).
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission checks.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// CLOCK_MONOTONIC in nanoseconds (system-wide, comparable across processes).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// This process's id.
pub(crate) fn own_pid() -> u32 {
    std::process::id()
}
