//! The kernel's hugepage pools as sysfs shows them: the roots of the sysfs,
//! procfs and devfs trees, the page sizes, NUMA node discovery, and the
//! per-node counters (`nr_hugepages`, `free_hugepages`).
//!
//! Every write to a kernel attribute goes through the [`Kernel`] trait, so that
//! tests can stand in for the kernel's reaction to a write (granting fewer
//! pages, rebinding a device). This module reads and writes attribute files
//! only; it never mounts anything and never touches PCI devices.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Errors met while reading or writing the hugepage pools.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// An attribute file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The attribute file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// An attribute held something other than a decimal count.
    #[error("{path}: expected a decimal number, found {found:?}")]
    NotANumber {
        /// The attribute file.
        path: PathBuf,
        /// What it held, trimmed.
        found: String,
    },
    /// The kernel has no pool for this page size (on this node).
    #[error("the kernel has no {size} hugepage pool at {path} (page size not supported, or for 1G: CPU lacks pdpe1gb)")]
    SizeUnsupported {
        /// The requested page size.
        size: HugepageSize,
        /// The pool directory that is missing.
        path: PathBuf,
    },
    /// `--node` named a NUMA node that does not exist.
    #[error("NUMA node {node} does not exist (nodes present: {present})")]
    NoSuchNode {
        /// The requested node.
        node: u32,
        /// The nodes found, comma separated, or "none".
        present: String,
    },
}

/// Where the sysfs, procfs and devfs trees are. `/sys`, `/proc` and `/dev` on
/// a real node; temporary trees of the same shape in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// The sysfs root (`/sys`).
    pub sysfs: PathBuf,
    /// The procfs root (`/proc`).
    pub proc: PathBuf,
    /// The device root (`/dev`).
    pub dev: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            sysfs: PathBuf::from("/sys"),
            proc: PathBuf::from("/proc"),
            dev: PathBuf::from("/dev"),
        }
    }
}

impl Roots {
    /// `/sys/devices/system/node`.
    pub fn numa_dir(&self) -> PathBuf {
        self.sysfs.join("devices/system/node")
    }

    /// `/sys/kernel/mm/hugepages`, the node-less pools.
    pub fn global_hugepages_dir(&self) -> PathBuf {
        self.sysfs.join("kernel/mm/hugepages")
    }

    /// `/sys/bus/pci`.
    pub fn pci_bus(&self) -> PathBuf {
        self.sysfs.join("bus/pci")
    }

    /// A file under the procfs root, e.g. `proc_file("mounts")`.
    pub fn proc_file(&self, name: &str) -> PathBuf {
        self.proc.join(name)
    }

    /// A path under the device root, e.g. `dev_path("vfio/vfio")`.
    pub fn dev_path(&self, name: &str) -> PathBuf {
        self.dev.join(name)
    }
}

/// Reads and writes kernel attribute files. On a real node a write is the
/// request and a later read is the kernel's answer; [`LiveKernel`] does
/// exactly that. Tests provide their own implementation to simulate how the
/// kernel reacts to a write.
pub trait Kernel {
    /// Reads an attribute file as text.
    fn read_attribute(&self, path: &Path) -> io::Result<String>;
    /// Writes `value` to an attribute file (no truncation semantics beyond
    /// what sysfs gives: the whole value is one write).
    fn write_attribute(&self, path: &Path, value: &str) -> io::Result<()>;
}

/// The kernel reached through the files themselves.
#[derive(Debug, Default, Clone, Copy)]
pub struct LiveKernel;

impl Kernel for LiveKernel {
    fn read_attribute(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }

    fn write_attribute(&self, path: &Path, value: &str) -> io::Result<()> {
        fs::write(path, value)
    }
}

/// A hugepage size that DPDK uses on x86-64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum HugepageSize {
    /// 2 MiB pages.
    #[serde(rename = "2M")]
    TwoMiB,
    /// 1 GiB pages (needs the CPU flag `pdpe1gb`).
    #[serde(rename = "1G")]
    OneGiB,
}

impl HugepageSize {
    /// The size in KiB, as sysfs names the pools (`hugepages-2048kB`).
    pub fn kib(self) -> u64 {
        match self {
            HugepageSize::TwoMiB => 2048,
            HugepageSize::OneGiB => 1024 * 1024,
        }
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.kib() * 1024
    }

    /// The pool directory name: `hugepages-2048kB`.
    pub fn pool_dir_name(self) -> String {
        format!("hugepages-{}kB", self.kib())
    }

    /// The value of the hugetlbfs `pagesize=` mount option.
    pub fn mount_option(self) -> &'static str {
        match self {
            HugepageSize::TwoMiB => "2M",
            HugepageSize::OneGiB => "1G",
        }
    }

    /// The size whose pool is named `hugepages-<kib>kB`, if it is one we know.
    pub fn from_kib(kib: u64) -> Option<HugepageSize> {
        [HugepageSize::TwoMiB, HugepageSize::OneGiB]
            .into_iter()
            .find(|s| s.kib() == kib)
    }

    /// The size of `bytes`, if it is one we know.
    pub fn from_bytes(bytes: u64) -> Option<HugepageSize> {
        Self::from_kib(bytes / 1024).filter(|s| s.bytes() == bytes)
    }
}

impl fmt::Display for HugepageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mount_option())
    }
}

impl std::str::FromStr for HugepageSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "2M" | "2MB" | "2048K" | "2048KB" => Ok(HugepageSize::TwoMiB),
            "1G" | "1GB" | "1024M" | "1024MB" => Ok(HugepageSize::OneGiB),
            other => Err(format!("unsupported hugepage size {other:?}: use 2M or 1G")),
        }
    }
}

/// Which pool a counter belongs to: a NUMA node, or the node-less global pool
/// of a kernel without NUMA node directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolScope {
    /// `/sys/devices/system/node/node<N>`.
    Node(u32),
    /// `/sys/kernel/mm/hugepages`.
    Global,
}

impl fmt::Display for PoolScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolScope::Node(n) => write!(f, "node{n}"),
            PoolScope::Global => f.write_str("global"),
        }
    }
}

/// One hugepage pool: a page size on a NUMA node (or the global pool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Node or global.
    pub scope: PoolScope,
    /// Page size.
    pub size: HugepageSize,
    /// The pool directory (`.../hugepages-2048kB`).
    pub dir: PathBuf,
}

impl Pool {
    /// The `nr_hugepages` attribute: the pool's size, writable.
    pub fn nr_hugepages_path(&self) -> PathBuf {
        self.dir.join("nr_hugepages")
    }

    /// The `free_hugepages` attribute.
    pub fn free_hugepages_path(&self) -> PathBuf {
        self.dir.join("free_hugepages")
    }

    /// Reads `nr_hugepages`.
    pub fn total(&self, kernel: &dyn Kernel) -> Result<u64, SysfsError> {
        read_count(kernel, &self.nr_hugepages_path())
    }

    /// Reads `free_hugepages`.
    pub fn free(&self, kernel: &dyn Kernel) -> Result<u64, SysfsError> {
        read_count(kernel, &self.free_hugepages_path())
    }
}

/// Reads a decimal count from an attribute file.
pub fn read_count(kernel: &dyn Kernel, path: &Path) -> Result<u64, SysfsError> {
    let text = kernel
        .read_attribute(path)
        .map_err(|source| SysfsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let trimmed = text.trim();
    trimmed.parse().map_err(|_| SysfsError::NotANumber {
        path: path.to_path_buf(),
        found: trimmed.to_string(),
    })
}

/// The NUMA nodes present, in ascending order. Empty when the kernel has no
/// `/sys/devices/system/node` (built without NUMA) or it lists no node.
pub fn numa_nodes(roots: &Roots) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(roots.numa_dir()) else {
        return Vec::new();
    };
    let mut nodes: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("node"))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    nodes.sort_unstable();
    nodes
}

/// The pools of `size` to act on: one per NUMA node (only `only_node` if
/// given), or the global pool when there is no NUMA node directory.
pub fn pools_for(
    roots: &Roots,
    size: HugepageSize,
    only_node: Option<u32>,
) -> Result<Vec<Pool>, SysfsError> {
    let nodes = numa_nodes(roots);
    if nodes.is_empty() {
        if let Some(node) = only_node {
            return Err(SysfsError::NoSuchNode {
                node,
                present: "none".to_string(),
            });
        }
        let dir = roots.global_hugepages_dir().join(size.pool_dir_name());
        if !dir.is_dir() {
            return Err(SysfsError::SizeUnsupported { size, path: dir });
        }
        return Ok(vec![Pool {
            scope: PoolScope::Global,
            size,
            dir,
        }]);
    }
    let chosen: Vec<u32> = match only_node {
        Some(node) if nodes.contains(&node) => vec![node],
        Some(node) => {
            let present = nodes
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            return Err(SysfsError::NoSuchNode { node, present });
        }
        None => nodes,
    };
    chosen
        .into_iter()
        .map(|node| {
            let dir = roots
                .numa_dir()
                .join(format!("node{node}"))
                .join("hugepages")
                .join(size.pool_dir_name());
            if dir.is_dir() {
                Ok(Pool {
                    scope: PoolScope::Node(node),
                    size,
                    dir,
                })
            } else {
                Err(SysfsError::SizeUnsupported { size, path: dir })
            }
        })
        .collect()
}

/// Every pool the tree shows, of every known size: per NUMA node when there
/// are node directories, otherwise the global pools. Sizes the kernel offers
/// that we do not know (e.g. 64K on other architectures) are skipped.
pub fn all_pools(roots: &Roots) -> Vec<Pool> {
    let nodes = numa_nodes(roots);
    let parents: Vec<(PoolScope, PathBuf)> = if nodes.is_empty() {
        vec![(PoolScope::Global, roots.global_hugepages_dir())]
    } else {
        nodes
            .into_iter()
            .map(|n| {
                (
                    PoolScope::Node(n),
                    roots.numa_dir().join(format!("node{n}")).join("hugepages"),
                )
            })
            .collect()
    };
    let mut pools = Vec::new();
    for (scope, parent) in parents {
        let Ok(entries) = fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let Some(size) = name
                .to_str()
                .and_then(|n| n.strip_prefix("hugepages-"))
                .and_then(|n| n.strip_suffix("kB"))
                .and_then(|n| n.parse().ok())
                .and_then(HugepageSize::from_kib)
            else {
                continue;
            };
            pools.push(Pool {
                scope,
                size,
                dir: entry.path(),
            });
        }
    }
    pools.sort_by_key(|p| (p.size, p.scope));
    pools
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, Roots) {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            sysfs: dir.path().join("sys"),
            proc: dir.path().join("proc"),
            dev: dir.path().join("dev"),
        };
        (dir, roots)
    }

    fn make_pool(dir: &Path, nr: u64) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("nr_hugepages"), format!("{nr}\n")).unwrap();
        fs::write(dir.join("free_hugepages"), format!("{nr}\n")).unwrap();
    }

    #[test]
    fn sizes_parse_and_name_their_pools() {
        assert_eq!("2M".parse::<HugepageSize>(), Ok(HugepageSize::TwoMiB));
        assert_eq!("1g".parse::<HugepageSize>(), Ok(HugepageSize::OneGiB));
        assert!("4M".parse::<HugepageSize>().is_err());
        assert_eq!(HugepageSize::TwoMiB.pool_dir_name(), "hugepages-2048kB");
        assert_eq!(HugepageSize::OneGiB.pool_dir_name(), "hugepages-1048576kB");
        assert_eq!(
            HugepageSize::from_bytes(1 << 30),
            Some(HugepageSize::OneGiB)
        );
        assert_eq!(HugepageSize::from_bytes(4096), None);
    }

    #[test]
    fn nodes_are_found_in_numeric_order() {
        let (_d, roots) = tree();
        for n in [10, 2, 0] {
            fs::create_dir_all(roots.numa_dir().join(format!("node{n}"))).unwrap();
        }
        fs::create_dir_all(roots.numa_dir().join("power")).unwrap();
        fs::write(roots.numa_dir().join("online"), "0,2,10").unwrap();
        assert_eq!(numa_nodes(&roots), vec![0, 2, 10]);
    }

    #[test]
    fn pools_fall_back_to_global_without_numa() {
        let (_d, roots) = tree();
        make_pool(&roots.global_hugepages_dir().join("hugepages-2048kB"), 0);
        let pools = pools_for(&roots, HugepageSize::TwoMiB, None).unwrap();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].scope, PoolScope::Global);
        assert!(matches!(
            pools_for(&roots, HugepageSize::OneGiB, None),
            Err(SysfsError::SizeUnsupported { .. })
        ));
        assert!(matches!(
            pools_for(&roots, HugepageSize::TwoMiB, Some(0)),
            Err(SysfsError::NoSuchNode { node: 0, .. })
        ));
    }

    #[test]
    fn pools_per_node_and_single_node() {
        let (_d, roots) = tree();
        for n in [0, 1] {
            make_pool(
                &roots
                    .numa_dir()
                    .join(format!("node{n}/hugepages/hugepages-2048kB")),
                n,
            );
        }
        let pools = pools_for(&roots, HugepageSize::TwoMiB, None).unwrap();
        let scopes: Vec<_> = pools.iter().map(|p| p.scope).collect();
        assert_eq!(scopes, vec![PoolScope::Node(0), PoolScope::Node(1)]);
        assert_eq!(pools[1].total(&LiveKernel).unwrap(), 1);
        let one = pools_for(&roots, HugepageSize::TwoMiB, Some(1)).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].scope, PoolScope::Node(1));
        match pools_for(&roots, HugepageSize::TwoMiB, Some(5)) {
            Err(SysfsError::NoSuchNode { node: 5, present }) => assert_eq!(present, "0,1"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn garbage_counter_is_a_clear_error() {
        let (_d, roots) = tree();
        let dir = roots.global_hugepages_dir().join("hugepages-2048kB");
        make_pool(&dir, 0);
        fs::write(dir.join("nr_hugepages"), "lots\n").unwrap();
        let pools = pools_for(&roots, HugepageSize::TwoMiB, None).unwrap();
        let err = pools[0].total(&LiveKernel).unwrap_err();
        assert!(err.to_string().contains("\"lots\""), "{err}");
    }

    #[test]
    fn all_pools_lists_known_sizes_only() {
        let (_d, roots) = tree();
        let base = roots.numa_dir().join("node0/hugepages");
        make_pool(&base.join("hugepages-2048kB"), 4);
        make_pool(&base.join("hugepages-1048576kB"), 1);
        make_pool(&base.join("hugepages-64kB"), 1);
        let pools = all_pools(&roots);
        let sizes: Vec<_> = pools.iter().map(|p| p.size).collect();
        assert_eq!(sizes, vec![HugepageSize::TwoMiB, HugepageSize::OneGiB]);
    }
}
