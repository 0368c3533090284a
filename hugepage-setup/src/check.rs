//! The readiness check: reads CPU flags, hugepage pools, hugetlbfs mounts,
//! IOMMU groups, vfio and vhost device nodes, the vfio-pci module and NIC
//! bindings, and grades each as OK, WARN or FAIL for the requested mode.
//!
//! Read-only: this module never writes an attribute and never mounts.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use crate::bind::{self, PciAddress, PciDevice, VFIO_PCI};
use crate::mount::{self, HugetlbfsMount};
use crate::sysfs::{self, HugepageSize, Kernel, PoolScope, Roots};

/// The grade of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Status {
    /// Ready.
    #[serde(rename = "OK")]
    Ok,
    /// Works, but something is missing or worth a look.
    #[serde(rename = "WARN")]
    Warn,
    /// Not ready for the requested mode.
    #[serde(rename = "FAIL")]
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of the readiness table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckItem {
    /// What was checked (`cpu sse4.2`, `hugepages 2M node0`, ...).
    pub item: String,
    /// Its grade.
    pub status: Status,
    /// What was found.
    pub detail: String,
}

/// What the node must be ready for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    /// Page size the fast path will use.
    pub size: HugepageSize,
    /// Pages needed in each selected pool (at least 1).
    pub pages: u64,
    /// Only this NUMA node.
    pub node: Option<u32>,
    /// The hugetlbfs mount point required, if a particular one is; with
    /// `None` any hugetlbfs mount of the size will do.
    pub mount_point: Option<PathBuf>,
    /// False when the fast path runs without a hugetlbfs mount
    /// (`--in-memory`); a missing mount is then only a warning.
    pub need_mount: bool,
    /// NICs that must be bound to vfio-pci; with any given, IOMMU and vfio
    /// items become requirements.
    pub devices: Vec<PciAddress>,
}

/// A pool in the JSON output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolState {
    /// Node or global.
    pub scope: PoolScope,
    /// Page size.
    pub size: HugepageSize,
    /// `nr_hugepages`.
    pub total: u64,
    /// `free_hugepages`.
    pub free: u64,
}

/// A NIC in the JSON output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NicState {
    /// Its address.
    pub address: PciAddress,
    /// Its driver, if bound.
    pub driver: Option<String>,
    /// Its Linux interfaces.
    pub interfaces: Vec<bind::NetInterface>,
}

/// The full readiness report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// True when no item is FAIL.
    pub ready: bool,
    /// The page size checked for.
    pub size: HugepageSize,
    /// One line per item, in table order.
    pub items: Vec<CheckItem>,
    /// Every hugepage pool found.
    pub hugepages: Vec<PoolState>,
    /// Every hugetlbfs mount found.
    pub mounts: Vec<HugetlbfsMount>,
    /// Every network controller found.
    pub nics: Vec<NicState>,
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .items
            .iter()
            .map(|i| i.item.len())
            .max()
            .unwrap_or(4)
            .max(4);
        writeln!(f, "{:<width$}  {:<6} DETAIL", "ITEM", "STATUS")?;
        for i in &self.items {
            writeln!(
                f,
                "{:<width$}  {:<6} {}",
                i.item,
                i.status.to_string(),
                i.detail
            )?;
        }
        let fails = self
            .items
            .iter()
            .filter(|i| i.status == Status::Fail)
            .count();
        let warns = self
            .items
            .iter()
            .filter(|i| i.status == Status::Warn)
            .count();
        if self.ready {
            writeln!(f, "READY for {} hugepages ({warns} warning(s))", self.size)
        } else {
            writeln!(
                f,
                "NOT READY for {} hugepages: {fails} failure(s), {warns} warning(s)",
                self.size
            )
        }
    }
}

/// The flags of the first CPU in `/proc/cpuinfo` (x86 `flags` line).
pub fn cpu_flags(cpuinfo: &str) -> Option<BTreeSet<String>> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "flags").then(|| value.split_whitespace().map(str::to_string).collect())
    })
}

struct Items(Vec<CheckItem>);

impl Items {
    fn push(&mut self, item: impl Into<String>, status: Status, detail: impl Into<String>) {
        self.0.push(CheckItem {
            item: item.into(),
            status,
            detail: detail.into(),
        });
    }
}

fn check_cpu(roots: &Roots, request: &CheckRequest, items: &mut Items) {
    let path = roots.proc_file("cpuinfo");
    let flags = match fs::read_to_string(&path) {
        Ok(text) => cpu_flags(&text),
        Err(e) => {
            items.push(
                "cpu",
                Status::Fail,
                format!("cannot read {}: {e}", path.display()),
            );
            return;
        }
    };
    let Some(flags) = flags else {
        items.push(
            "cpu",
            Status::Fail,
            "no x86 'flags' line in cpuinfo: DPDK 22.11 builds here target x86-64 with SSE4.2",
        );
        return;
    };
    let has = |f: &str| flags.contains(f);
    if has("sse4_2") {
        items.push("cpu sse4.2", Status::Ok, "present");
    } else {
        items.push(
            "cpu sse4.2",
            Status::Fail,
            "absent: DPDK 22.11 needs SSE4.2 at minimum",
        );
    }
    if has("avx2") {
        items.push("cpu avx2", Status::Ok, "present");
    } else {
        items.push(
            "cpu avx2",
            Status::Warn,
            "absent: vector PMD paths will be slower",
        );
    }
    let avx512: Vec<&str> = ["avx512f", "avx512bw", "avx512vl", "avx512dq"]
        .into_iter()
        .filter(|f| has(f))
        .collect();
    if avx512.is_empty() {
        items.push("cpu avx512", Status::Ok, "absent (optional)");
    } else {
        items.push("cpu avx512", Status::Ok, avx512.join(" "));
    }
    match (has("pdpe1gb"), request.size) {
        (true, _) => items.push("cpu pdpe1gb", Status::Ok, "present: 1G pages possible"),
        (false, HugepageSize::OneGiB) => items.push(
            "cpu pdpe1gb",
            Status::Fail,
            "absent: 1G pages are impossible",
        ),
        (false, HugepageSize::TwoMiB) => items.push(
            "cpu pdpe1gb",
            Status::Warn,
            "absent: only 2M pages possible",
        ),
    }
}

fn check_hugepages(
    roots: &Roots,
    kernel: &dyn Kernel,
    request: &CheckRequest,
    items: &mut Items,
) -> Vec<PoolState> {
    let mut states = Vec::new();
    let mut requested_found = false;
    for pool in sysfs::all_pools(roots) {
        let name = format!("hugepages {} {}", pool.size, pool.scope);
        let (total, free) = match (pool.total(kernel), pool.free(kernel)) {
            (Ok(t), Ok(f)) => (t, f),
            (Err(e), _) | (_, Err(e)) => {
                items.push(name, Status::Fail, e.to_string());
                continue;
            }
        };
        states.push(PoolState {
            scope: pool.scope,
            size: pool.size,
            total,
            free,
        });
        let selected = pool.size == request.size
            && match (request.node, pool.scope) {
                (Some(n), PoolScope::Node(m)) => n == m,
                _ => true,
            };
        let detail = format!("free {free} / total {total}");
        let status = if !selected {
            Status::Ok
        } else if total < request.pages {
            Status::Fail
        } else if free == 0 {
            Status::Warn
        } else {
            Status::Ok
        };
        requested_found |= selected;
        let detail = match status {
            Status::Fail => format!("{detail} (need {})", request.pages),
            Status::Warn => format!("{detail} (all in use)"),
            Status::Ok => detail,
        };
        items.push(name, status, detail);
    }
    if !requested_found {
        let scope = request
            .node
            .map_or_else(String::new, |n| format!(" on node{n}"));
        items.push(
            format!("hugepages {}", request.size),
            Status::Fail,
            format!("the kernel shows no {} pool{scope}", request.size),
        );
    }
    states
}

fn check_mounts(roots: &Roots, request: &CheckRequest, items: &mut Items) -> Vec<HugetlbfsMount> {
    let mounts = match mount::read_hugetlbfs_mounts(roots) {
        Ok(m) => m,
        Err(e) => {
            items.push("hugetlbfs", Status::Fail, e.to_string());
            return Vec::new();
        }
    };
    for m in &mounts {
        items.push(
            format!("hugetlbfs {}", m.mount_point.display()),
            Status::Ok,
            format!("pagesize={}", m.page_size_text),
        );
    }
    let fitting = mounts.iter().any(|m| {
        m.page_size == Some(request.size)
            && request
                .mount_point
                .as_ref()
                .is_none_or(|p| p.components().eq(m.mount_point.components()))
    });
    let wanted = match &request.mount_point {
        Some(p) => format!("hugetlbfs pagesize={} at {}", request.size, p.display()),
        None => format!("hugetlbfs pagesize={}", request.size),
    };
    if fitting {
        items.push(
            format!("mount {}", request.size),
            Status::Ok,
            format!("{wanted} present"),
        );
    } else {
        let status = if request.need_mount {
            Status::Fail
        } else {
            Status::Warn
        };
        items.push(
            format!("mount {}", request.size),
            status,
            format!("no {wanted}"),
        );
    }
    mounts
}

fn check_vfio(
    roots: &Roots,
    kernel: &dyn Kernel,
    request: &CheckRequest,
    items: &mut Items,
) -> Vec<NicState> {
    let needs_vfio = !request.devices.is_empty();
    let missing = if needs_vfio {
        Status::Fail
    } else {
        Status::Warn
    };
    let groups = fs::read_dir(roots.sysfs.join("kernel/iommu_groups"))
        .map(|d| d.filter_map(Result::ok).count())
        .unwrap_or(0);
    if groups > 0 {
        items.push("iommu groups", Status::Ok, format!("{groups} group(s)"));
    } else {
        items.push(
            "iommu groups",
            missing,
            "none: enable VT-d/AMD-Vi and boot with intel_iommu=on iommu=pt",
        );
    }
    for (name, path) in [("/dev/vfio", "vfio"), ("/dev/vfio/vfio", "vfio/vfio")] {
        if roots.dev_path(path).exists() {
            items.push(name, Status::Ok, "present");
        } else {
            items.push(name, missing, "absent");
        }
    }
    if bind::vfio_pci_loaded(roots) {
        items.push("vfio-pci module", Status::Ok, "loaded");
    } else {
        items.push("vfio-pci module", missing, "not loaded (modprobe vfio-pci)");
    }
    if roots.dev_path("vhost-net").exists() {
        items.push("/dev/vhost-net", Status::Ok, "present");
    } else {
        items.push(
            "/dev/vhost-net",
            Status::Warn,
            "absent: kernel exception path via virtio-user unavailable (modprobe vhost_net)",
        );
    }
    let mut nics = Vec::new();
    let mut on_vfio = 0;
    for device in PciDevice::all(roots) {
        if !device.is_network_controller() && !request.devices.contains(&device.address) {
            continue;
        }
        let driver = device.driver();
        let interfaces = device.interfaces();
        let requested = request.devices.contains(&device.address);
        let bound = driver.as_deref() == Some(VFIO_PCI);
        on_vfio += usize::from(bound);
        let mut detail = format!("driver {}", driver.as_deref().unwrap_or("(none)"));
        if let Some(o) = device.driver_override(kernel) {
            detail.push_str(&format!(", driver_override {o}"));
        }
        for i in &interfaces {
            detail.push_str(&format!(", {} {}", i.name, i.operstate));
        }
        let status = if requested && !bound {
            Status::Fail
        } else {
            Status::Ok
        };
        if requested && !bound {
            detail.push_str(" (must be on vfio-pci: hugepage-setup --bind)");
        }
        items.push(format!("nic {}", device.address), status, detail);
        nics.push(NicState {
            address: device.address,
            driver,
            interfaces,
        });
    }
    for address in &request.devices {
        if !nics.iter().any(|n| n.address == *address) {
            items.push(format!("nic {address}"), Status::Fail, "not present");
        }
    }
    if on_vfio > 0 {
        items.push("nics on vfio-pci", Status::Ok, format!("{on_vfio}"));
    } else {
        items.push(
            "nics on vfio-pci",
            if needs_vfio {
                Status::Fail
            } else {
                Status::Warn
            },
            "none: only virtual ports (vhost-user, af_packet, tap) are possible",
        );
    }
    nics
}

/// Runs every check. Never writes anything.
pub fn check(roots: &Roots, kernel: &dyn Kernel, request: &CheckRequest) -> Readiness {
    let mut items = Items(Vec::new());
    check_cpu(roots, request, &mut items);
    let hugepages = check_hugepages(roots, kernel, request, &mut items);
    let mounts = check_mounts(roots, request, &mut items);
    let nics = check_vfio(roots, kernel, request, &mut items);
    let items = items.0;
    Readiness {
        ready: items.iter().all(|i| i.status != Status::Fail),
        size: request.size,
        items,
        hugepages,
        mounts,
        nics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::LiveKernel;

    #[test]
    fn cpu_flags_come_from_the_first_flags_line() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse4_2 avx2\n\nprocessor\t: 1\nflags\t\t: fpu\n";
        let flags = cpu_flags(info).unwrap();
        assert!(flags.contains("sse4_2") && flags.contains("avx2"));
        assert_eq!(cpu_flags("processor: 0\nFeatures: fp asimd\n"), None);
    }

    fn request(size: HugepageSize) -> CheckRequest {
        CheckRequest {
            size,
            pages: 1,
            node: None,
            mount_point: None,
            need_mount: true,
            devices: Vec::new(),
        }
    }

    fn item<'a>(r: &'a Readiness, name: &str) -> &'a CheckItem {
        r.items
            .iter()
            .find(|i| i.item == name)
            .unwrap_or_else(|| panic!("no item {name} in {r}"))
    }

    #[test]
    fn empty_tree_is_not_ready_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            sysfs: dir.path().join("sys"),
            proc: dir.path().join("proc"),
            dev: dir.path().join("dev"),
        };
        let r = check(&roots, &LiveKernel, &request(HugepageSize::TwoMiB));
        assert!(!r.ready);
        assert_eq!(item(&r, "cpu").status, Status::Fail);
        assert_eq!(item(&r, "hugepages 2M").status, Status::Fail);
        assert_eq!(item(&r, "hugetlbfs").status, Status::Fail);
        assert_eq!(item(&r, "iommu groups").status, Status::Warn);
        assert!(r.to_string().contains("NOT READY"));
    }

    #[test]
    fn one_gig_needs_pdpe1gb() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            sysfs: dir.path().join("sys"),
            proc: dir.path().join("proc"),
            dev: dir.path().join("dev"),
        };
        fs::create_dir_all(&roots.proc).unwrap();
        fs::write(roots.proc_file("cpuinfo"), "flags : sse4_2 avx2\n").unwrap();
        let r = check(&roots, &LiveKernel, &request(HugepageSize::OneGiB));
        assert_eq!(item(&r, "cpu pdpe1gb").status, Status::Fail);
        let r = check(&roots, &LiveKernel, &request(HugepageSize::TwoMiB));
        assert_eq!(item(&r, "cpu pdpe1gb").status, Status::Warn);
        assert_eq!(item(&r, "cpu sse4.2").status, Status::Ok);
    }
}
