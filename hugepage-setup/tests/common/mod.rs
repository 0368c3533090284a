//! Sysfs/procfs/devfs-shaped temporary trees for the integration tests, and
//! a fake kernel that reacts to attribute writes the way Linux does.

#![allow(dead_code)]

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use hugepage_setup::sysfs::{Kernel, LiveKernel};

pub const READY_CPUINFO: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme pse sse sse2 sse4_1 sse4_2 avx avx2 avx512f avx512bw pdpe1gb\n\nprocessor\t: 1\nflags\t\t: fpu vme pse sse sse2 sse4_1 sse4_2 avx avx2 avx512f avx512bw pdpe1gb\n";
pub const OLD_CPUINFO: &str = "processor\t: 0\nflags\t\t: fpu sse sse2 sse4_1\n";

/// A temporary node: `sys/`, `proc/` and `dev/` under one directory.
pub struct Tree {
    pub dir: tempfile::TempDir,
}

impl Tree {
    pub fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        for d in ["sys", "proc", "dev"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let tree = Tree { dir };
        tree.write("proc/mounts", "sysfs /sys sysfs rw,nosuid 0 0\n");
        tree.write(
            "proc/meminfo",
            "MemTotal: 16384000 kB\nHugepagesize:       2048 kB\n",
        );
        tree.write("proc/cpuinfo", READY_CPUINFO);
        tree
    }

    pub fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }
    pub fn proc(&self) -> PathBuf {
        self.dir.path().join("proc")
    }
    pub fn dev(&self) -> PathBuf {
        self.dir.path().join("dev")
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap()
    }

    /// Root arguments for the binary.
    pub fn root_args(&self) -> Vec<String> {
        vec![
            "--sysfs-root".into(),
            self.sys().display().to_string(),
            "--proc-root".into(),
            self.proc().display().to_string(),
            "--dev-root".into(),
            self.dev().display().to_string(),
        ]
    }

    /// A hugepage pool of `kib` on NUMA node `node` holding `nr` pages.
    pub fn numa_pool(&self, node: u32, kib: u64, nr: u64, free: u64) -> String {
        let rel = format!("sys/devices/system/node/node{node}/hugepages/hugepages-{kib}kB");
        self.write(&format!("{rel}/nr_hugepages"), &format!("{nr}\n"));
        self.write(&format!("{rel}/free_hugepages"), &format!("{free}\n"));
        format!("{rel}/nr_hugepages")
    }

    /// A node-less pool under /sys/kernel/mm/hugepages.
    pub fn global_pool(&self, kib: u64, nr: u64) -> String {
        let rel = format!("sys/kernel/mm/hugepages/hugepages-{kib}kB");
        self.write(&format!("{rel}/nr_hugepages"), &format!("{nr}\n"));
        self.write(&format!("{rel}/free_hugepages"), &format!("{nr}\n"));
        format!("{rel}/nr_hugepages")
    }

    pub fn add_mount(&self, line: &str) {
        let mut table = self.read("proc/mounts");
        table.push_str(line);
        table.push('\n');
        self.write("proc/mounts", &table);
    }

    /// A PCI driver directory with its `unbind` attribute.
    pub fn driver(&self, name: &str) -> PathBuf {
        let dir = self.path(&format!("sys/bus/pci/drivers/{name}"));
        fs::create_dir_all(&dir).unwrap();
        if !dir.join("unbind").exists() {
            fs::write(dir.join("unbind"), "").unwrap();
        }
        dir
    }

    /// A NIC at `addr` bound to `driver` (None: unbound).
    pub fn nic(&self, addr: &str, driver: Option<&str>, iface: Option<(&str, &str)>) {
        let dev = format!("sys/bus/pci/devices/{addr}");
        self.write(&format!("{dev}/class"), "0x020000\n");
        self.write(&format!("{dev}/vendor"), "0x8086\n");
        let over = match driver {
            Some("vfio-pci") => "vfio-pci\n",
            _ => "(null)\n",
        };
        self.write(&format!("{dev}/driver_override"), over);
        if let Some(d) = driver {
            let target = self.driver(d);
            symlink(target, self.path(&format!("{dev}/driver"))).unwrap();
        }
        if let Some((name, state)) = iface {
            self.write(
                &format!("{dev}/net/{name}/operstate"),
                &format!("{state}\n"),
            );
        }
        if !self.path("sys/bus/pci/drivers_probe").exists() {
            self.write("sys/bus/pci/drivers_probe", "");
        }
    }

    pub fn driver_of(&self, addr: &str) -> Option<String> {
        fs::read_link(self.path(&format!("sys/bus/pci/devices/{addr}/driver")))
            .ok()
            .map(|t| t.file_name().unwrap().to_string_lossy().into_owned())
    }

    /// Everything a ready 2M node has: 2 NUMA nodes with 512 free pages
    /// each, a hugetlbfs mount, IOMMU, vfio, vhost-net and one NIC on vfio-pci.
    pub fn ready_node(&self) {
        self.numa_pool(0, 2048, 512, 512);
        self.numa_pool(1, 2048, 512, 500);
        self.numa_pool(0, 1048576, 0, 0);
        self.numa_pool(1, 1048576, 0, 0);
        self.add_mount("hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0");
        for g in ["0", "1", "17"] {
            fs::create_dir_all(self.path(&format!("sys/kernel/iommu_groups/{g}/devices"))).unwrap();
        }
        self.write("dev/vfio/vfio", "");
        self.write("dev/vhost-net", "");
        fs::create_dir_all(self.path("sys/module/vfio_pci")).unwrap();
        self.nic("0000:03:00.0", Some("vfio-pci"), None);
        self.nic("0000:00:19.0", Some("e1000e"), Some(("eno1", "up")));
    }
}

/// A kernel stand-in for the library-level tests: writes land in the files,
/// and then the kernel's reaction is applied:
/// * `nr_hugepages`: clamped to the number in a `max_hugepages` side file of
///   the pool directory, when the test wrote one (memory ran out);
/// * `<driver>/unbind`: removes the device's `driver` link;
/// * `drivers_probe`: links the device to the driver named in its
///   `driver_override`, or to `native_driver` (a side file) without one.
pub struct FakeKernel {
    pub sysfs: PathBuf,
}

impl Kernel for FakeKernel {
    fn read_attribute(&self, path: &Path) -> io::Result<String> {
        LiveKernel.read_attribute(path)
    }

    fn write_attribute(&self, path: &Path, value: &str) -> io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let devices = self.sysfs.join("bus/pci/devices");
        match name {
            "nr_hugepages" => {
                let asked: u64 = value
                    .trim()
                    .parse()
                    .map_err(|_| io::ErrorKind::InvalidInput)?;
                let max = fs::read_to_string(path.with_file_name("max_hugepages"))
                    .ok()
                    .and_then(|m| m.trim().parse().ok())
                    .unwrap_or(u64::MAX);
                fs::write(path, format!("{}\n", asked.min(max)))
            }
            "unbind" => {
                LiveKernel.write_attribute(path, value)?;
                let link = devices.join(value.trim()).join("driver");
                fs::remove_file(link)
            }
            "drivers_probe" => {
                LiveKernel.write_attribute(path, value)?;
                let dev = devices.join(value.trim());
                let over = fs::read_to_string(dev.join("driver_override")).unwrap_or_default();
                let over = over.trim();
                let driver = if over.is_empty() || over == "(null)" {
                    fs::read_to_string(dev.join("native_driver")).unwrap_or_default()
                } else {
                    over.to_string()
                };
                let driver = driver.trim();
                if driver.is_empty() || dev.join("driver").exists() {
                    return Ok(());
                }
                let target = self.sysfs.join("bus/pci/drivers").join(driver);
                if !target.is_dir() {
                    return Ok(()); // no such driver loaded: stays unbound
                }
                symlink(target, dev.join("driver"))
            }
            _ => LiveKernel.write_attribute(path, value),
        }
    }
}
