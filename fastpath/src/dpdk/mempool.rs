//! Packet-buffer mempools.

use std::ffi::CString;
use std::ptr::NonNull;

/// How a mempool is sized.
#[derive(Debug, Clone)]
pub struct MempoolConfig {
    /// Pool name (unique within the process).
    pub name: String,
    /// Number of mbufs.
    pub mbufs: u32,
    /// Per-lcore cache size.
    pub cache_size: u32,
    /// Data room per mbuf, headroom included.
    pub data_room: u16,
    /// NUMA socket (`-1` for any).
    pub socket: i32,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        MempoolConfig {
            name: "fp_mbufs".into(),
            mbufs: 16383,
            cache_size: 256,
            data_room: dpdk_sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
            socket: -1,
        }
    }
}

/// A DPDK packet mempool. Freed on drop; drop it only after every port that
/// uses it is closed.
pub struct Mempool {
    raw: NonNull<dpdk_sys::rte_mempool>,
    name: String,
}

// SAFETY: a DPDK mempool is designed for concurrent use from several lcores
// (per-lcore caches plus a lock-free ring); the handle is just a pointer.
unsafe impl Send for Mempool {}
// SAFETY: as above; all operations through &Mempool are thread-safe in DPDK.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a packet mempool.
    pub fn new(cfg: &MempoolConfig) -> Result<Mempool, String> {
        let name = CString::new(cfg.name.clone()).map_err(|_| "mempool name has a NUL byte")?;
        // SAFETY: name is a valid C string; the sizes are plain integers.
        let p = unsafe {
            dpdk_sys::rte_pktmbuf_pool_create(
                name.as_ptr(),
                cfg.mbufs,
                cfg.cache_size,
                0,
                cfg.data_room,
                cfg.socket,
            )
        };
        match NonNull::new(p) {
            Some(raw) => Ok(Mempool { raw, name: cfg.name.clone() }),
            None => Err(format!(
                "cannot create mempool {} ({} mbufs of {} bytes): {}. Reserve more hugepages or lower mempool.mbufs",
                cfg.name,
                cfg.mbufs,
                cfg.data_room,
                super::last_error()
            )),
        }
    }

    /// The raw pointer, for DPDK calls in this module.
    pub(crate) fn as_ptr(&self) -> *mut dpdk_sys::rte_mempool {
        self.raw.as_ptr()
    }

    /// Pool name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Mbufs currently free in the pool (approximate under concurrency).
    pub fn available(&self) -> u32 {
        // SAFETY: raw is a live mempool.
        unsafe { dpdk_sys::rte_mempool_avail_count(self.raw.as_ptr()) }
    }

    /// Mbufs currently in use.
    pub fn in_use(&self) -> u32 {
        // SAFETY: raw is a live mempool.
        unsafe { dpdk_sys::rte_mempool_in_use_count(self.raw.as_ptr()) }
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: the owner drops the pool after the ports using it are closed
        // and all mbufs are returned.
        unsafe { dpdk_sys::rte_mempool_free(self.raw.as_ptr()) }
    }
}
