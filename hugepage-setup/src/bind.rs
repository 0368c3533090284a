//! PCI devices and their driver: address parsing, reading a device's driver,
//! `driver_override` and network interfaces, and moving a NIC to `vfio-pci`
//! and back through `driver_override`, `driver/unbind` and `drivers_probe`.
//!
//! All writes go through [`Kernel`]. This module touches only
//! `/sys/bus/pci` and `/sys/module`; it never touches hugepages or mounts.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;

use crate::sysfs::{Kernel, Roots};

/// The driver DPDK needs a NIC bound to.
pub const VFIO_PCI: &str = "vfio-pci";

/// Errors while binding or unbinding a device.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The address is not `DDDD:BB:DD.F` nor `BB:DD.F` in hex.
    #[error("bad PCI address {0:?}: expected DDDD:BB:DD.F (e.g. 0000:03:00.0) or BB:DD.F (e.g. 03:00.0)")]
    BadAddress(String),
    /// No such device under `/sys/bus/pci/devices`.
    #[error("PCI device {address} is not present ({path} does not exist)")]
    NoSuchDevice {
        /// The address asked for.
        address: PciAddress,
        /// The directory that was looked for.
        path: PathBuf,
    },
    /// The device has a Linux network interface that is up.
    #[error("{address} has network interface(s) {interfaces} up; taking the device from its driver would cut them off (bring them down first, or pass --force)")]
    InterfaceUp {
        /// The device.
        address: PciAddress,
        /// The interfaces that are up, comma separated.
        interfaces: String,
    },
    /// The vfio-pci driver is not available.
    #[error("the vfio-pci driver is not loaded (no {module} nor {driver}); run `modprobe vfio-pci` first")]
    VfioNotLoaded {
        /// `/sys/module/vfio_pci`.
        module: PathBuf,
        /// `/sys/bus/pci/drivers/vfio-pci`.
        driver: PathBuf,
    },
    /// A sysfs attribute write failed.
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        /// The attribute.
        path: PathBuf,
        /// The value written.
        value: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// A PCI address: domain, bus, device, function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    /// Domain (segment), 16 bits.
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=0x1f.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl Serialize for PciAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn hex_field(text: &str, width: usize) -> Option<u32> {
    if text.len() != width || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

impl FromStr for PciAddress {
    type Err = BindError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BindError::BadAddress(text.to_string());
        let (head, function) = text.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = head.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [domain, bus, device] => (hex_field(domain, 4).ok_or_else(bad)?, *bus, *device),
            [bus, device] => (0, *bus, *device),
            _ => return Err(bad()),
        };
        let bus = hex_field(bus, 2).ok_or_else(bad)?;
        let device = hex_field(device, 2)
            .filter(|d| *d <= 0x1f)
            .ok_or_else(bad)?;
        let function = hex_field(function, 1).filter(|f| *f <= 7).ok_or_else(bad)?;
        Ok(PciAddress {
            domain: u16::try_from(domain).map_err(|_| bad())?,
            bus: u8::try_from(bus).map_err(|_| bad())?,
            device: u8::try_from(device).map_err(|_| bad())?,
            function: u8::try_from(function).map_err(|_| bad())?,
        })
    }
}

/// A Linux network interface of a PCI device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetInterface {
    /// Interface name (`eth0`).
    pub name: String,
    /// Contents of `operstate` (`up`, `down`, `unknown`, ...).
    pub operstate: String,
}

/// A PCI device present under `/sys/bus/pci/devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    /// Its address.
    pub address: PciAddress,
    /// `/sys/bus/pci/devices/<address>`.
    pub dir: PathBuf,
}

impl PciDevice {
    /// Finds a present device.
    pub fn find(roots: &Roots, address: PciAddress) -> Result<PciDevice, BindError> {
        let dir = roots.pci_bus().join("devices").join(address.to_string());
        if dir.exists() {
            Ok(PciDevice { address, dir })
        } else {
            Err(BindError::NoSuchDevice { address, path: dir })
        }
    }

    /// Every present device, sorted by address; entries whose names are not
    /// addresses are skipped.
    pub fn all(roots: &Roots) -> Vec<PciDevice> {
        let Ok(entries) = fs::read_dir(roots.pci_bus().join("devices")) else {
            return Vec::new();
        };
        let mut devices: Vec<PciDevice> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let address = e.file_name().to_str()?.parse().ok()?;
                Some(PciDevice {
                    address,
                    dir: e.path(),
                })
            })
            .collect();
        devices.sort_by_key(|d| d.address);
        devices
    }

    /// The driver the device is bound to (the name the `driver` link points
    /// at), or `None` when unbound.
    pub fn driver(&self) -> Option<String> {
        let target = fs::read_link(self.dir.join("driver")).ok()?;
        target.file_name()?.to_str().map(str::to_string)
    }

    /// The `driver_override` attribute, `None` when empty or `(null)`.
    pub fn driver_override(&self, kernel: &dyn Kernel) -> Option<String> {
        let text = kernel
            .read_attribute(&self.dir.join("driver_override"))
            .ok()?;
        let value = text.trim();
        (!value.is_empty() && value != "(null)").then(|| value.to_string())
    }

    /// The PCI class code (`0x020000` for an Ethernet controller).
    pub fn class(&self) -> Option<u32> {
        let text = fs::read_to_string(self.dir.join("class")).ok()?;
        let text = text.trim();
        let hex = text.strip_prefix("0x").unwrap_or(text);
        u32::from_str_radix(hex, 16).ok()
    }

    /// True for a network controller (class 0x02).
    pub fn is_network_controller(&self) -> bool {
        self.class().is_some_and(|c| c >> 16 == 0x02)
    }

    /// The Linux network interfaces of the device (`net/*`), sorted by name.
    pub fn interfaces(&self) -> Vec<NetInterface> {
        let Ok(entries) = fs::read_dir(self.dir.join("net")) else {
            return Vec::new();
        };
        let mut interfaces: Vec<NetInterface> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let operstate = fs::read_to_string(e.path().join("operstate"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "unknown".to_string());
                Some(NetInterface { name, operstate })
            })
            .collect();
        interfaces.sort_by(|a, b| a.name.cmp(&b.name));
        interfaces
    }

    fn refuse_if_interface_up(&self, force: bool) -> Result<(), BindError> {
        let up: Vec<String> = self
            .interfaces()
            .into_iter()
            .filter(|i| i.operstate == "up")
            .map(|i| i.name)
            .collect();
        if up.is_empty() || force {
            Ok(())
        } else {
            Err(BindError::InterfaceUp {
                address: self.address,
                interfaces: up.join(","),
            })
        }
    }
}

/// Whether the vfio-pci driver is loaded (module directory or driver
/// directory present; the latter also covers a built-in driver).
pub fn vfio_pci_loaded(roots: &Roots) -> bool {
    roots.sysfs.join("module/vfio_pci").is_dir() || vfio_driver_dir(roots).is_dir()
}

fn vfio_driver_dir(roots: &Roots) -> PathBuf {
    roots.pci_bus().join("drivers").join(VFIO_PCI)
}

/// What a bind or unbind did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriverChange {
    /// The device.
    pub address: PciAddress,
    /// `bind` or `unbind`.
    pub operation: &'static str,
    /// Driver before (`None`: unbound).
    pub before: Option<String>,
    /// Driver after (`None`: unbound).
    pub after: Option<String>,
    /// The attribute writes made, in order, as `path <- value`.
    pub writes: Vec<String>,
    /// False when the device was already in the wanted state.
    pub changed: bool,
    /// True when the device ended in the wanted state.
    pub succeeded: bool,
}

impl fmt::Display for DriverChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |d: &Option<String>| d.clone().unwrap_or_else(|| "(none)".to_string());
        writeln!(f, "{} {}", self.operation, self.address)?;
        writeln!(f, "  driver before: {}", name(&self.before))?;
        for w in &self.writes {
            writeln!(f, "  wrote {w}")?;
        }
        writeln!(f, "  driver after:  {}", name(&self.after))?;
        let verdict = match (self.changed, self.succeeded, self.operation) {
            (false, _, "bind") => "OK: already bound to vfio-pci, nothing changed".to_string(),
            (false, _, _) => "OK: not bound to vfio-pci, nothing changed".to_string(),
            (true, true, _) => "OK".to_string(),
            (true, false, "bind") => format!(
                "FAIL: device is on {} after drivers_probe, not vfio-pci (is it in an IOMMU group?)",
                name(&self.after)
            ),
            (true, false, _) => "FAIL: device is still on vfio-pci after unbind".to_string(),
        };
        writeln!(f, "  result: {verdict}")
    }
}

fn write(
    kernel: &dyn Kernel,
    path: &Path,
    value: &str,
    log: &mut Vec<String>,
) -> Result<(), BindError> {
    kernel
        .write_attribute(path, value)
        .map_err(|source| BindError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })?;
    log.push(format!("{} <- {:?}", path.display(), value.trim_end()));
    Ok(())
}

/// Moves a device to vfio-pci: `driver_override` = vfio-pci, unbind from the
/// current driver, `drivers_probe`. Refuses when a network interface of the
/// device is up (unless `force`) or vfio-pci is not loaded.
pub fn bind_vfio(
    roots: &Roots,
    kernel: &dyn Kernel,
    address: PciAddress,
    force: bool,
) -> Result<DriverChange, BindError> {
    let device = PciDevice::find(roots, address)?;
    let before = device.driver();
    let mut writes = Vec::new();
    if before.as_deref() == Some(VFIO_PCI)
        && device.driver_override(kernel).as_deref() == Some(VFIO_PCI)
    {
        return Ok(DriverChange {
            address,
            operation: "bind",
            after: before.clone(),
            before,
            writes,
            changed: false,
            succeeded: true,
        });
    }
    if !vfio_pci_loaded(roots) {
        return Err(BindError::VfioNotLoaded {
            module: roots.sysfs.join("module/vfio_pci"),
            driver: vfio_driver_dir(roots),
        });
    }
    device.refuse_if_interface_up(force)?;
    let addr = address.to_string();
    write(
        kernel,
        &device.dir.join("driver_override"),
        VFIO_PCI,
        &mut writes,
    )?;
    if before.is_some() && before.as_deref() != Some(VFIO_PCI) {
        write(
            kernel,
            &device.dir.join("driver/unbind"),
            &addr,
            &mut writes,
        )?;
    }
    if before.as_deref() != Some(VFIO_PCI) {
        write(
            kernel,
            &roots.pci_bus().join("drivers_probe"),
            &addr,
            &mut writes,
        )?;
    }
    let after = device.driver();
    Ok(DriverChange {
        address,
        operation: "bind",
        succeeded: after.as_deref() == Some(VFIO_PCI),
        before,
        after,
        writes,
        changed: true,
    })
}

/// Gives a device back to the kernel: clears `driver_override`, unbinds it
/// from vfio-pci and asks `drivers_probe` to find its own driver. Refuses
/// when a network interface of the device is up, unless `force`.
pub fn unbind_vfio(
    roots: &Roots,
    kernel: &dyn Kernel,
    address: PciAddress,
    force: bool,
) -> Result<DriverChange, BindError> {
    let device = PciDevice::find(roots, address)?;
    let before = device.driver();
    let on_vfio = before.as_deref() == Some(VFIO_PCI);
    let overridden = device.driver_override(kernel).as_deref() == Some(VFIO_PCI);
    let mut writes = Vec::new();
    if !on_vfio && !overridden {
        return Ok(DriverChange {
            address,
            operation: "unbind",
            after: before.clone(),
            before,
            writes,
            changed: false,
            succeeded: true,
        });
    }
    device.refuse_if_interface_up(force)?;
    let addr = address.to_string();
    write(
        kernel,
        &device.dir.join("driver_override"),
        "\n",
        &mut writes,
    )?;
    if on_vfio {
        write(
            kernel,
            &device.dir.join("driver/unbind"),
            &addr,
            &mut writes,
        )?;
    }
    if before.is_none() || on_vfio {
        write(
            kernel,
            &roots.pci_bus().join("drivers_probe"),
            &addr,
            &mut writes,
        )?;
    }
    let after = device.driver();
    Ok(DriverChange {
        address,
        operation: "unbind",
        succeeded: after.as_deref() != Some(VFIO_PCI),
        before,
        after,
        writes,
        changed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::LiveKernel;

    #[test]
    fn addresses_parse_long_and_short() {
        let a: PciAddress = "0000:03:00.0".parse().unwrap();
        assert_eq!(a.to_string(), "0000:03:00.0");
        let b: PciAddress = "3b:1f.7".parse().unwrap();
        assert_eq!(b.to_string(), "0000:3b:1f.7");
        let c: PciAddress = "ABCD:EF:01.2".parse().unwrap();
        assert_eq!(c.to_string(), "abcd:ef:01.2");
    }

    #[test]
    fn bad_addresses_are_refused() {
        for bad in [
            "",
            "03:00",
            "3:00.0",
            "0000:03:20.0",
            "0000:03:00.8",
            "00000:03:00.0",
            "0000:03:00.0.1",
            "zz:00.0",
            "0000:03:00.",
            "0:0000:03:00.0",
            "+3:00.0",
            "03:0+.0",
        ] {
            match bad.parse::<PciAddress>() {
                Err(BindError::BadAddress(s)) => assert_eq!(s, bad),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    fn device_tree() -> (tempfile::TempDir, Roots, PciAddress) {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots {
            sysfs: dir.path().join("sys"),
            proc: dir.path().join("proc"),
            dev: dir.path().join("dev"),
        };
        let address: PciAddress = "0000:03:00.0".parse().unwrap();
        let dev = roots.pci_bus().join("devices").join(address.to_string());
        fs::create_dir_all(dev.join("net/eth1")).unwrap();
        fs::write(dev.join("net/eth1/operstate"), "up\n").unwrap();
        fs::write(dev.join("class"), "0x020000\n").unwrap();
        fs::write(dev.join("driver_override"), "(null)\n").unwrap();
        let drv = roots.pci_bus().join("drivers/ixgbe");
        fs::create_dir_all(&drv).unwrap();
        fs::write(drv.join("unbind"), "").unwrap();
        std::os::unix::fs::symlink(&drv, dev.join("driver")).unwrap();
        fs::create_dir_all(roots.sysfs.join("module/vfio_pci")).unwrap();
        fs::write(roots.pci_bus().join("drivers_probe"), "").unwrap();
        (dir, roots, address)
    }

    #[test]
    fn device_reads_driver_class_and_interfaces() {
        let (_d, roots, address) = device_tree();
        let device = PciDevice::find(&roots, address).unwrap();
        assert_eq!(device.driver().as_deref(), Some("ixgbe"));
        assert_eq!(device.driver_override(&LiveKernel), None);
        assert!(device.is_network_controller());
        assert_eq!(
            device.interfaces(),
            vec![NetInterface {
                name: "eth1".into(),
                operstate: "up".into()
            }]
        );
        assert_eq!(PciDevice::all(&roots).len(), 1);
    }

    #[test]
    fn bind_refuses_up_interface_without_force() {
        let (_d, roots, address) = device_tree();
        let err = bind_vfio(&roots, &LiveKernel, address, false).unwrap_err();
        assert!(matches!(err, BindError::InterfaceUp { .. }), "{err}");
        let dev = roots.pci_bus().join("devices/0000:03:00.0");
        assert_eq!(
            fs::read_to_string(dev.join("driver_override")).unwrap(),
            "(null)\n",
            "nothing may be written when refusing"
        );
        let change = bind_vfio(&roots, &LiveKernel, address, true).unwrap();
        assert_eq!(change.writes.len(), 3);
        assert_eq!(
            fs::read_to_string(dev.join("driver_override")).unwrap(),
            "vfio-pci"
        );
    }

    #[test]
    fn bind_refuses_without_vfio_module() {
        let (_d, roots, address) = device_tree();
        fs::remove_dir(roots.sysfs.join("module/vfio_pci")).unwrap();
        let err = bind_vfio(&roots, &LiveKernel, address, true).unwrap_err();
        assert!(matches!(err, BindError::VfioNotLoaded { .. }), "{err}");
    }

    #[test]
    fn missing_device_is_refused() {
        let (_d, roots, _) = device_tree();
        let other: PciAddress = "0000:04:00.0".parse().unwrap();
        let err = unbind_vfio(&roots, &LiveKernel, other, false).unwrap_err();
        assert!(matches!(err, BindError::NoSuchDevice { .. }), "{err}");
    }

    #[test]
    fn unbind_of_device_not_on_vfio_changes_nothing() {
        let (_d, roots, address) = device_tree();
        let change = unbind_vfio(&roots, &LiveKernel, address, false).unwrap();
        assert!(!change.changed);
        assert!(change.writes.is_empty());
        assert_eq!(change.after.as_deref(), Some("ixgbe"));
    }
}
