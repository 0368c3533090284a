//! Safe layer over DPDK: the EAL, mempools, owned mbufs, burst arrays and
//! ethdev ports. This module (with `dpdk-sys`) is where the fastpath's
//! `unsafe` lives; everything above it is safe Rust. It owns no forwarding
//! logic: pipelines and the worker loop sit on top of it.
#![allow(unsafe_code)]

mod eal;
mod ethdev;
mod hugemem;
mod mbuf;
mod mempool;

pub use eal::{launch_on_lcore, main_lcore, pin_control_thread, tsc_hz, wait_lcore, Eal, EalError};
pub use ethdev::{EthPort, LinkStatus, PortConfig, PortError, PortStats};
pub use hugemem::{ArenaUsage, HugeArena, HUGE_PAGE};
pub use mbuf::{Mbuf, RxBurst, TxBuffer, TxResult, BURST_SIZE};
pub use mempool::{Mempool, MempoolConfig};

use std::ffi::CStr;

/// The time-stamp counter (`rte_rdtsc`), read inline: the worker reads it
/// twice per burst, and a call through the C shim cost more than the
/// instruction itself.
#[inline(always)]
pub fn rdtsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `rdtsc` reads the CPU's time-stamp counter; it touches no
    // memory and every x86_64 CPU has it.
    unsafe {
        std::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: reads the CPU's time-stamp counter; no memory is touched.
    unsafe {
        dpdk_sys::fp_rdtsc()
    }
}

/// Starts loading the cache line at `addr` into all cache levels: for an
/// address computed ahead of a locked access (a conntrack entry), where no
/// reference can be formed without the lock.
#[inline(always)]
pub fn prefetch_addr(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has; a
    // prefetch does not dereference its address and never faults, whatever
    // the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// Asks the CPU to bring the cache line holding `value` into every cache
/// level (`rte_prefetch0`), without waiting for it. A hint only: it never
/// faults and changes nothing the program can observe.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has; a
    // prefetch does not dereference its address and never faults, and the
    // address is that of a live reference anyway.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(value as *const T as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// The calling thread's DPDK lcore id (`u32::MAX` for a non-EAL thread).
pub fn lcore_id() -> u32 {
    // SAFETY: reads a thread-local set by EAL; valid on any thread.
    unsafe { dpdk_sys::fp_lcore_id() }
}

/// The last DPDK error of this thread (`rte_errno`) as readable text.
pub(crate) fn last_error() -> String {
    // SAFETY: rte_errno is a per-thread variable; reading it is always valid.
    let errno = unsafe { dpdk_sys::fp_errno() };
    strerror(errno)
}

/// DPDK's text for an error number (positive or negative).
pub(crate) fn strerror(errnum: i32) -> String {
    let e = errnum.abs();
    // SAFETY: rte_strerror returns a pointer to a static or per-thread
    // NUL-terminated buffer that stays valid until the next call on this thread;
    // we copy it out at once.
    unsafe {
        let p = dpdk_sys::rte_strerror(e);
        if p.is_null() {
            return format!("error {e}");
        }
        format!("{} ({e})", CStr::from_ptr(p).to_string_lossy())
    }
}
