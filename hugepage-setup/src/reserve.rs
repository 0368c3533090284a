//! Reserving hugepages: raising each pool's `nr_hugepages` to the requested
//! count, reading back what the kernel granted, and making sure a hugetlbfs
//! mount of that page size exists. Never lowers a pool (pages may be in use by
//! a running fast path) and never unmounts.

use std::fmt;
use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use crate::mount::{self, MountError, MountPlan, Mounter};
use crate::sysfs::{self, HugepageSize, Kernel, PoolScope, Roots, SysfsError};

/// Errors that stop a reservation before it reports.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// A pool could not be found, read or written.
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    /// The mount table could not be read, or the mount point is taken by
    /// something else.
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// What to reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRequest {
    /// Page size.
    pub size: HugepageSize,
    /// Pages wanted in each pool (each NUMA node, or the global pool).
    pub pages: u64,
    /// Only this NUMA node.
    pub node: Option<u32>,
    /// Where hugetlbfs must be mounted; `None` skips the mount step.
    pub mount_point: Option<PathBuf>,
}

/// What happened to one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolAction {
    /// The pool already had at least the requested pages.
    Unchanged,
    /// The pool was raised and the kernel granted everything.
    Reserved,
    /// The pool was raised and the kernel granted fewer pages than asked.
    Partial,
}

/// One pool's line in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolOutcome {
    /// Node or global.
    pub scope: PoolScope,
    /// Pages before the run.
    pub before: u64,
    /// Pages asked for.
    pub requested: u64,
    /// Pages the pool holds after the run.
    pub granted: u64,
    /// What happened.
    pub action: PoolAction,
}

/// What happened to the mount point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum MountOutcome {
    /// An equivalent mount was already there.
    AlreadyMounted {
        /// The mount point.
        mount_point: PathBuf,
    },
    /// hugetlbfs was mounted.
    Mounted {
        /// The mount point.
        mount_point: PathBuf,
    },
    /// The mount step was not asked for.
    Skipped,
}

/// The whole reservation report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReservationReport {
    /// Page size.
    pub size: HugepageSize,
    /// One entry per pool.
    pub pools: Vec<PoolOutcome>,
    /// The mount step.
    pub mount: MountOutcome,
    /// True when anything was written or mounted.
    pub changed: bool,
}

impl ReservationReport {
    /// The pools where the kernel granted fewer pages than asked.
    pub fn shortfalls(&self) -> impl Iterator<Item = &PoolOutcome> {
        self.pools
            .iter()
            .filter(|p| p.action == PoolAction::Partial)
    }
}

impl fmt::Display for ReservationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "hugepages {}:", self.size)?;
        writeln!(
            f,
            "  {:<8} {:>8} {:>10} {:>8}  RESULT",
            "POOL", "BEFORE", "REQUESTED", "GRANTED"
        )?;
        for p in &self.pools {
            let result = match p.action {
                PoolAction::Unchanged => "unchanged".to_string(),
                PoolAction::Reserved => "reserved".to_string(),
                PoolAction::Partial => format!(
                    "PARTIAL: kernel granted {} of {} ({} short)",
                    p.granted,
                    p.requested,
                    p.requested - p.granted
                ),
            };
            writeln!(
                f,
                "  {:<8} {:>8} {:>10} {:>8}  {}",
                p.scope.to_string(),
                p.before,
                p.requested,
                p.granted,
                result
            )?;
        }
        match &self.mount {
            MountOutcome::AlreadyMounted { mount_point } => writeln!(
                f,
                "hugetlbfs pagesize={} at {}: already mounted",
                self.size,
                mount_point.display()
            )?,
            MountOutcome::Mounted { mount_point } => writeln!(
                f,
                "hugetlbfs pagesize={} at {}: mounted",
                self.size,
                mount_point.display()
            )?,
            MountOutcome::Skipped => writeln!(f, "hugetlbfs: mount step skipped (--no-mount)")?,
        }
        if self.changed {
            writeln!(f, "changes made")
        } else {
            writeln!(f, "nothing changed: node already prepared")
        }
    }
}

/// Raises every selected pool to `request.pages` and mounts hugetlbfs.
/// Pools already at or above the count are left alone. A partial grant is not
/// an error here: it is in the report, and the caller decides.
pub fn reserve(
    roots: &Roots,
    kernel: &dyn Kernel,
    mounter: &dyn Mounter,
    request: &ReservationRequest,
) -> Result<ReservationReport, ReserveError> {
    let pools = sysfs::pools_for(roots, request.size, request.node)?;
    // Decide about the mount before writing anything, so that a taken mount
    // point fails the run with the node untouched.
    let mount_plan = match &request.mount_point {
        None => None,
        Some(point) => {
            let path = roots.proc_file("mounts");
            let table = fs::read_to_string(&path)
                .map_err(|source| MountError::MountTable { path, source })?;
            let default_size = fs::read_to_string(roots.proc_file("meminfo"))
                .ok()
                .and_then(|m| mount::default_hugepage_size(&m));
            let entries = mount::parse_mount_table(&table);
            Some((
                point.clone(),
                mount::plan_mount(&entries, default_size, point, request.size)?,
            ))
        }
    };
    // Mount before raising the pools: a refused or failed mount leaves the
    // pools untouched, and an empty hugetlbfs mount costs nothing.
    let mount = match mount_plan {
        None => MountOutcome::Skipped,
        Some((mount_point, MountPlan::AlreadyMounted)) => {
            MountOutcome::AlreadyMounted { mount_point }
        }
        Some((mount_point, MountPlan::Mount)) => {
            mounter.mount_hugetlbfs(&mount_point, request.size)?;
            MountOutcome::Mounted { mount_point }
        }
    };
    let mut outcomes = Vec::with_capacity(pools.len());
    for pool in &pools {
        let before = pool.total(kernel)?;
        if before >= request.pages {
            outcomes.push(PoolOutcome {
                scope: pool.scope,
                before,
                requested: request.pages,
                granted: before,
                action: PoolAction::Unchanged,
            });
            continue;
        }
        let path = pool.nr_hugepages_path();
        kernel
            .write_attribute(&path, &request.pages.to_string())
            .map_err(|source| SysfsError::Io { path, source })?;
        let granted = pool.total(kernel)?;
        outcomes.push(PoolOutcome {
            scope: pool.scope,
            before,
            requested: request.pages,
            granted,
            action: if granted >= request.pages {
                PoolAction::Reserved
            } else {
                PoolAction::Partial
            },
        });
    }
    let changed = outcomes.iter().any(|p| p.action != PoolAction::Unchanged)
        || matches!(mount, MountOutcome::Mounted { .. });
    Ok(ReservationReport {
        size: request.size,
        pools: outcomes,
        mount,
        changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::LiveKernel;
    use std::cell::RefCell;
    use std::path::Path;

    #[derive(Default)]
    struct RecordingMounter(RefCell<Vec<(PathBuf, HugepageSize)>>);

    impl Mounter for RecordingMounter {
        fn mount_hugetlbfs(&self, p: &Path, s: HugepageSize) -> Result<(), MountError> {
            self.0.borrow_mut().push((p.to_path_buf(), s));
            Ok(())
        }
    }

    fn tree(nodes: &[u32], mounts: &str) -> (tempfile::TempDir, Roots) {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            sysfs: dir.path().join("sys"),
            proc: dir.path().join("proc"),
            dev: dir.path().join("dev"),
        };
        for n in nodes {
            let pool = roots
                .numa_dir()
                .join(format!("node{n}/hugepages/hugepages-2048kB"));
            fs::create_dir_all(&pool).unwrap();
            fs::write(pool.join("nr_hugepages"), "0\n").unwrap();
        }
        fs::create_dir_all(&roots.proc).unwrap();
        fs::write(roots.proc_file("mounts"), mounts).unwrap();
        (dir, roots)
    }

    fn request(pages: u64, mount: Option<&str>) -> ReservationRequest {
        ReservationRequest {
            size: HugepageSize::TwoMiB,
            pages,
            node: None,
            mount_point: mount.map(PathBuf::from),
        }
    }

    #[test]
    fn reserves_then_mounts_then_is_idempotent() {
        let (_d, roots) = tree(&[0, 1], "");
        let mounter = RecordingMounter::default();
        let report = reserve(
            &roots,
            &LiveKernel,
            &mounter,
            &request(64, Some("/dev/hugepages")),
        )
        .unwrap();
        assert!(report.changed);
        assert!(report
            .pools
            .iter()
            .all(|p| p.action == PoolAction::Reserved && p.granted == 64));
        assert_eq!(
            mounter.0.borrow().as_slice(),
            &[(PathBuf::from("/dev/hugepages"), HugepageSize::TwoMiB)]
        );
        // The mount now shows in the table, as the kernel would show it.
        fs::write(
            roots.proc_file("mounts"),
            "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n",
        )
        .unwrap();
        let again = reserve(
            &roots,
            &LiveKernel,
            &mounter,
            &request(64, Some("/dev/hugepages")),
        )
        .unwrap();
        assert!(!again.changed);
        assert_eq!(mounter.0.borrow().len(), 1);
        assert!(again.to_string().contains("nothing changed"));
    }

    #[test]
    fn never_lowers_a_pool() {
        let (_d, roots) = tree(&[0], "");
        let pool = roots
            .numa_dir()
            .join("node0/hugepages/hugepages-2048kB/nr_hugepages");
        fs::write(&pool, "128\n").unwrap();
        let report = reserve(
            &roots,
            &LiveKernel,
            &RecordingMounter::default(),
            &request(64, None),
        )
        .unwrap();
        assert_eq!(report.pools[0].action, PoolAction::Unchanged);
        assert_eq!(report.pools[0].granted, 128);
        assert_eq!(fs::read_to_string(pool).unwrap(), "128\n");
        assert_eq!(report.mount, MountOutcome::Skipped);
    }

    #[test]
    fn taken_mount_point_fails_before_any_write() {
        let (_d, roots) = tree(&[0], "tmpfs /dev/hugepages tmpfs rw 0 0\n");
        let err = reserve(
            &roots,
            &LiveKernel,
            &RecordingMounter::default(),
            &request(8, Some("/dev/hugepages")),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            ReserveError::Mount(MountError::OtherFilesystem { .. })
        ));
        let pool = roots
            .numa_dir()
            .join("node0/hugepages/hugepages-2048kB/nr_hugepages");
        assert_eq!(fs::read_to_string(pool).unwrap(), "0\n");
    }
}
