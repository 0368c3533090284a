//! EAL initialisation (once per process) and lcore launching.

use std::ffi::{c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};

static EAL_STARTED: AtomicBool = AtomicBool::new(false);

/// The CPUs the process could run on before EAL pinned the main thread.
static ORIGINAL_CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();

fn current_affinity() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set, and
    // sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Moves the calling (non-worker) thread off the worker lcores' CPUs: onto
/// the CPUs the process had before EAL init minus those of enabled lcores,
/// or all of them when nothing is left. Control threads call this first, so
/// they never steal cycles from a polling lcore. Returns the CPUs chosen.
pub fn pin_control_thread() -> Vec<usize> {
    let Some(original) = ORIGINAL_CPUS.get() else {
        return Vec::new();
    };
    let lcore_cpus: Vec<usize> = (0..dpdk_sys::RTE_MAX_LCORE)
        // SAFETY: both functions only read EAL's lcore configuration.
        .filter(|&l| unsafe { dpdk_sys::rte_lcore_is_enabled(l) } != 0)
        // SAFETY: as above.
        .map(|l| unsafe { dpdk_sys::rte_lcore_to_cpu_id(l as i32) } as usize)
        .collect();
    let mut cpus: Vec<usize> = original
        .iter()
        .copied()
        .filter(|c| !lcore_cpus.contains(c))
        .collect();
    if cpus.is_empty() {
        cpus = original.clone();
    }
    // SAFETY: the set is built with the libc helpers from valid CPU numbers
    // (below CPU_SETSIZE, since they came from sched_getaffinity).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in &cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    cpus
}

/// Errors of EAL initialisation and lcore management.
#[derive(Debug, thiserror::Error)]
pub enum EalError {
    /// `rte_eal_init` was already called in this process (it can run once).
    #[error("the DPDK EAL is already initialised in this process (it can be initialised once)")]
    AlreadyInitialised,
    /// An argument contained a NUL byte.
    #[error("EAL argument {0:?} contains a NUL byte")]
    BadArgument(String),
    /// `rte_eal_init` failed.
    #[error("DPDK EAL initialisation failed: {reason} (arguments: {args}). Check that hugepages are reserved and hugetlbfs is mounted (`hugepage-setup --check`), and that no other DPDK process uses the same --file-prefix")]
    InitFailed {
        /// DPDK's reason.
        reason: String,
        /// The arguments passed.
        args: String,
    },
    /// Launching work on an lcore failed.
    #[error("cannot launch on lcore {lcore}: {reason}")]
    Launch {
        /// The lcore.
        lcore: u32,
        /// DPDK's reason.
        reason: String,
    },
}

/// The initialised Environment Abstraction Layer. Dropping it calls
/// `rte_eal_cleanup`, which releases hugepage files; drop ports and mempools
/// first.
pub struct Eal {
    _private: (),
}

impl Eal {
    /// Initialises the EAL with `args` (without the program name).
    pub fn init<S: AsRef<str>>(args: &[S]) -> Result<Eal, EalError> {
        if EAL_STARTED.swap(true, Ordering::SeqCst) {
            return Err(EalError::AlreadyInitialised);
        }
        let _ = ORIGINAL_CPUS.set(current_affinity());
        let mut owned: Vec<CString> = vec![CString::new("fastpath").expect("static")];
        for a in args {
            let a = a.as_ref();
            owned.push(CString::new(a).map_err(|_| EalError::BadArgument(a.to_string()))?);
        }
        // EAL may keep pointers into argv for the life of the process: leak it.
        let owned: &'static [CString] = Box::leak(owned.into_boxed_slice());
        let mut argv: Vec<*mut std::ffi::c_char> =
            owned.iter().map(|c| c.as_ptr() as *mut _).collect();
        argv.push(std::ptr::null_mut());
        let argv: &'static mut [*mut std::ffi::c_char] = Box::leak(argv.into_boxed_slice());
        // SAFETY: argv is a NUL-terminated array of valid C strings that lives
        // for the rest of the process; rte_eal_init is called once (guarded by
        // EAL_STARTED).
        let rc = unsafe { dpdk_sys::rte_eal_init((owned.len()) as c_int, argv.as_mut_ptr()) };
        if rc < 0 {
            let joined = args
                .iter()
                .map(|a| a.as_ref())
                .collect::<Vec<_>>()
                .join(" ");
            return Err(EalError::InitFailed {
                reason: super::last_error(),
                args: joined,
            });
        }
        Ok(Eal { _private: () })
    }

    /// The lcores EAL enabled, main lcore included, in ascending order.
    pub fn lcores(&self) -> Vec<u32> {
        (0..dpdk_sys::RTE_MAX_LCORE)
            // SAFETY: rte_lcore_is_enabled only reads EAL's lcore config.
            .filter(|&l| unsafe { dpdk_sys::rte_lcore_is_enabled(l) } != 0)
            .collect()
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: called once, after every worker has returned (the owner
        // waits for lcores before dropping) and ports are closed.
        unsafe {
            dpdk_sys::rte_eal_cleanup();
        }
    }
}

/// The main lcore's id.
pub fn main_lcore() -> u32 {
    // SAFETY: reads EAL configuration; valid after rte_eal_init.
    unsafe { dpdk_sys::rte_get_main_lcore() }
}

/// TSC frequency in Hz.
pub fn tsc_hz() -> u64 {
    // SAFETY: reads a value EAL computed at init.
    unsafe { dpdk_sys::rte_get_tsc_hz() }
}

type Job = Box<dyn FnOnce() -> i32 + Send + 'static>;

extern "C" fn trampoline(arg: *mut c_void) -> c_int {
    // SAFETY: arg is the Box<Job> leaked by launch_on_lcore, passed to exactly
    // one launch; we take ownership back here once.
    let job: Box<Job> = unsafe { Box::from_raw(arg as *mut Job) };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).unwrap_or(-1)
}

/// Runs `f` on worker lcore `lcore` (not the main lcore).
pub fn launch_on_lcore<F>(lcore: u32, f: F) -> Result<(), EalError>
where
    F: FnOnce() -> i32 + Send + 'static,
{
    let job: Box<Job> = Box::new(Box::new(f));
    let raw = Box::into_raw(job) as *mut c_void;
    // SAFETY: trampoline matches lcore_function_t; raw is a valid leaked box
    // that the trampoline reclaims. On failure we reclaim it ourselves.
    let rc = unsafe { dpdk_sys::rte_eal_remote_launch(Some(trampoline), raw, lcore) };
    if rc != 0 {
        // SAFETY: the launch did not happen, so the box is still ours.
        drop(unsafe { Box::from_raw(raw as *mut Job) });
        return Err(EalError::Launch {
            lcore,
            reason: super::strerror(rc),
        });
    }
    Ok(())
}

/// Waits for the job on `lcore` to finish; returns its return value.
pub fn wait_lcore(lcore: u32) -> i32 {
    // SAFETY: waits on EAL's lcore state; valid for any enabled worker lcore.
    unsafe { dpdk_sys::rte_eal_wait_lcore(lcore) }
}
