//! Node preparation for the fast path: reserve hugepages per NUMA node, mount
//! hugetlbfs, move NICs to vfio-pci and back, and check readiness.
//!
//! This crate owns the command line ([`Cli`]), the privilege rule and the
//! dispatch to its modules; the kernel is reached only through the
//! [`sysfs::Kernel`] and [`mount::Mounter`] traits so that everything runs
//! against sysfs-shaped temporary trees in tests. It touches nothing outside
//! the sysfs, procfs and devfs roots it is given and the mount point.

#![forbid(unsafe_code)]

pub mod bind;
pub mod check;
pub mod mount;
pub mod reserve;
pub mod sysfs;

use std::io::{self, Write};
use std::path::PathBuf;

use clap::Parser;

use bind::{BindError, PciAddress};
use check::CheckRequest;
use mount::Mounter;
use reserve::{ReservationRequest, ReserveError};
use sysfs::{HugepageSize, Kernel, Roots};

/// Prepare a node for the DPDK fast path: hugepages, hugetlbfs, vfio-pci.
#[derive(Debug, Clone, Parser)]
#[command(name = "hugepage-setup", version, about, long_about = None)]
pub struct Cli {
    /// Hugepage size: 2M or 1G.
    #[arg(long, default_value = "2M")]
    pub size: HugepageSize,

    /// Pages to reserve in each NUMA node (in the global pool without NUMA).
    /// With --check: pages each pool must hold.
    #[arg(long, value_name = "N")]
    pub pages: Option<u64>,

    /// Only this NUMA node.
    #[arg(long, value_name = "X")]
    pub node: Option<u32>,

    /// hugetlbfs mount point [default: /dev/hugepages for 2M,
    /// /dev/hugepages1G for 1G].
    #[arg(long, value_name = "DIR")]
    pub mount: Option<PathBuf>,

    /// Do not mount hugetlbfs (e.g. the fast path runs with --in-memory).
    #[arg(long, conflicts_with = "mount")]
    pub no_mount: bool,

    /// Exit 0 even when the kernel grants fewer pages than asked.
    #[arg(long)]
    pub allow_partial: bool,

    /// Report readiness and change nothing.
    #[arg(long, conflicts_with_all = ["bind", "unbind", "allow_partial"])]
    pub check: bool,

    /// With --check: a NIC that must be bound to vfio-pci (repeatable).
    #[arg(long = "device", value_name = "PCI", requires = "check")]
    pub devices: Vec<String>,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// Move a NIC to vfio-pci (DDDD:BB:DD.F or BB:DD.F).
    #[arg(long, value_name = "PCI", conflicts_with_all = ["unbind", "pages"])]
    pub bind: Option<String>,

    /// Give a NIC back from vfio-pci to its kernel driver.
    #[arg(long, value_name = "PCI", conflicts_with = "pages")]
    pub unbind: Option<String>,

    /// Bind or unbind even when a Linux interface of the device is up.
    #[arg(long)]
    pub force: bool,

    /// Root of the sysfs tree.
    #[arg(long, value_name = "DIR")]
    pub sysfs_root: Option<PathBuf>,

    /// Root of the procfs tree.
    #[arg(long, value_name = "DIR")]
    pub proc_root: Option<PathBuf>,

    /// Root of the device tree.
    #[arg(long, value_name = "DIR")]
    pub dev_root: Option<PathBuf>,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Reserve hugepages and mount hugetlbfs.
    Reserve(ReservationRequest),
    /// Readiness report.
    Check(CheckRequest),
    /// Move a NIC to vfio-pci.
    Bind(PciAddress),
    /// Give a NIC back to its kernel driver.
    Unbind(PciAddress),
}

impl Mode {
    /// True for the modes that change the node.
    pub fn changes_node(&self) -> bool {
        !matches!(self, Mode::Check(_))
    }
}

/// Errors that end a run with exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A mode that changes the node was asked for by a non-root user.
    #[error("must run as root to change hugepages, mounts or drivers (effective uid {euid}); --check works unprivileged")]
    NotRoot {
        /// The effective uid.
        euid: u32,
    },
    /// Reserve mode without `--pages`.
    #[error("--pages N is required to reserve hugepages (or use --check, --bind, --unbind)")]
    PagesMissing,
    /// `--pages 0`.
    #[error("--pages must be at least 1")]
    PagesZero,
    /// Binding or unbinding failed.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Reserving failed.
    #[error(transparent)]
    Reserve(#[from] ReserveError),
    /// The report could not be written.
    #[error("writing the report: {0}")]
    Output(#[from] io::Error),
    /// The report could not be serialised.
    #[error("serialising the report: {0}")]
    Json(#[from] serde_json::Error),
}

/// How a run that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done, or ready (exit 0).
    Satisfied,
    /// Not ready, a partial grant, or a bind that did not take (exit 1).
    Unsatisfied,
}

impl Outcome {
    /// The process exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Satisfied => 0,
            Outcome::Unsatisfied => 1,
        }
    }
}

/// Exit code for an [`Error`].
pub const EXIT_ERROR: u8 = 2;

/// The kernel and identity a run acts on.
pub struct Host<'a> {
    /// Attribute reads and writes.
    pub kernel: &'a dyn Kernel,
    /// hugetlbfs mounting.
    pub mounter: &'a dyn Mounter,
    /// The effective uid of the process.
    pub euid: u32,
}

impl Cli {
    /// The trees to act on.
    pub fn roots(&self) -> Roots {
        let default = Roots::default();
        Roots {
            sysfs: self.sysfs_root.clone().unwrap_or(default.sysfs),
            proc: self.proc_root.clone().unwrap_or(default.proc),
            dev: self.dev_root.clone().unwrap_or(default.dev),
        }
    }

    /// True when any tree is redirected away from the live system.
    pub fn redirected(&self) -> bool {
        self.sysfs_root.is_some() || self.proc_root.is_some() || self.dev_root.is_some()
    }

    fn mount_point(&self) -> Option<PathBuf> {
        if self.no_mount {
            return None;
        }
        Some(
            self.mount
                .clone()
                .unwrap_or_else(|| default_mount_point(self.size)),
        )
    }

    /// Works out the mode, validating what clap cannot.
    pub fn mode(&self) -> Result<Mode, Error> {
        if let Some(address) = &self.bind {
            return Ok(Mode::Bind(address.parse()?));
        }
        if let Some(address) = &self.unbind {
            return Ok(Mode::Unbind(address.parse()?));
        }
        if self.check {
            let devices = self
                .devices
                .iter()
                .map(|d| d.parse())
                .collect::<Result<Vec<PciAddress>, BindError>>()?;
            return Ok(Mode::Check(CheckRequest {
                size: self.size,
                pages: self.pages.unwrap_or(1).max(1),
                node: self.node,
                mount_point: self.mount.clone(),
                need_mount: !self.no_mount,
                devices,
            }));
        }
        let pages = self.pages.ok_or(Error::PagesMissing)?;
        if pages == 0 {
            return Err(Error::PagesZero);
        }
        Ok(Mode::Reserve(ReservationRequest {
            size: self.size,
            pages,
            node: self.node,
            mount_point: self.mount_point(),
        }))
    }
}

/// The conventional mount point for a page size.
pub fn default_mount_point(size: HugepageSize) -> PathBuf {
    PathBuf::from(match size {
        HugepageSize::TwoMiB => "/dev/hugepages",
        HugepageSize::OneGiB => "/dev/hugepages1G",
    })
}

/// The privilege rule: changing the node needs root, except against a
/// redirected sysfs tree; checking never does.
pub fn require_privilege(mode: &Mode, euid: u32, sysfs_redirected: bool) -> Result<(), Error> {
    if !mode.changes_node() || sysfs_redirected || euid == 0 {
        Ok(())
    } else {
        Err(Error::NotRoot { euid })
    }
}

fn emit<T: serde::Serialize + std::fmt::Display>(
    out: &mut dyn Write,
    json: bool,
    report: &T,
) -> Result<(), Error> {
    if json {
        serde_json::to_writer_pretty(&mut *out, report)?;
        writeln!(out)?;
    } else {
        write!(out, "{report}")?;
    }
    Ok(())
}

/// Runs the command line against `host`, writing the report to `out`.
pub fn run(cli: &Cli, host: &Host<'_>, out: &mut dyn Write) -> Result<Outcome, Error> {
    let mode = cli.mode()?;
    require_privilege(&mode, host.euid, cli.sysfs_root.is_some())?;
    let roots = cli.roots();
    match mode {
        Mode::Check(request) => {
            let readiness = check::check(&roots, host.kernel, &request);
            emit(out, cli.json, &readiness)?;
            Ok(if readiness.ready {
                Outcome::Satisfied
            } else {
                Outcome::Unsatisfied
            })
        }
        Mode::Reserve(request) => {
            let report = reserve::reserve(&roots, host.kernel, host.mounter, &request)?;
            emit(out, cli.json, &report)?;
            let short = report.shortfalls().count();
            if short > 0 && !cli.allow_partial {
                if !cli.json {
                    writeln!(
                        out,
                        "FAIL: the kernel granted fewer pages than asked in {short} pool(s) (memory fragmented or too small); pass --allow-partial to accept"
                    )?;
                }
                Ok(Outcome::Unsatisfied)
            } else {
                Ok(Outcome::Satisfied)
            }
        }
        Mode::Bind(address) => {
            let change = bind::bind_vfio(&roots, host.kernel, address, cli.force)?;
            emit(out, cli.json, &change)?;
            Ok(if change.succeeded {
                Outcome::Satisfied
            } else {
                Outcome::Unsatisfied
            })
        }
        Mode::Unbind(address) => {
            let change = bind::unbind_vfio(&roots, host.kernel, address, cli.force)?;
            emit(out, cli.json, &change)?;
            Ok(if change.succeeded {
                Outcome::Satisfied
            } else {
                Outcome::Unsatisfied
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("hugepage-setup").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn privilege_rule() {
        let reserve = parse(&["--pages", "8"]).mode().unwrap();
        let check = parse(&["--check"]).mode().unwrap();
        let bind = parse(&["--bind", "03:00.0"]).mode().unwrap();
        assert!(require_privilege(&reserve, 0, false).is_ok());
        assert!(matches!(
            require_privilege(&reserve, 1000, false),
            Err(Error::NotRoot { euid: 1000 })
        ));
        assert!(matches!(
            require_privilege(&bind, 1000, false),
            Err(Error::NotRoot { .. })
        ));
        assert!(require_privilege(&bind, 1000, true).is_ok());
        assert!(require_privilege(&check, 1000, false).is_ok());
    }

    #[test]
    fn not_root_error_names_the_uid_and_the_way_out() {
        let cli = parse(&["--pages", "8"]);
        let host = Host {
            kernel: &sysfs::LiveKernel,
            mounter: &mount::RefusingMounter,
            euid: 1000,
        };
        let err = run(&cli, &host, &mut Vec::new()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("root") && text.contains("1000") && text.contains("--check"),
            "{text}"
        );
    }

    #[test]
    fn modes_and_defaults() {
        match parse(&["--pages", "4", "--size", "1G"]).mode().unwrap() {
            Mode::Reserve(r) => {
                assert_eq!(r.pages, 4);
                assert_eq!(r.mount_point, Some(PathBuf::from("/dev/hugepages1G")));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["--pages", "4", "--no-mount"]).mode().unwrap() {
            Mode::Reserve(r) => assert_eq!(r.mount_point, None),
            other => panic!("{other:?}"),
        }
        match parse(&["--unbind", "0000:03:00.1"]).mode().unwrap() {
            Mode::Unbind(a) => assert_eq!(a.to_string(), "0000:03:00.1"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&[]).mode(), Err(Error::PagesMissing)));
        assert!(matches!(
            parse(&["--pages", "0"]).mode(),
            Err(Error::PagesZero)
        ));
        assert!(matches!(
            parse(&["--bind", "3:0.0"]).mode(),
            Err(Error::Bind(BindError::BadAddress(_)))
        ));
        assert!(Cli::try_parse_from(["hugepage-setup", "--check", "--bind", "03:00.0"]).is_err());
        assert!(Cli::try_parse_from(["hugepage-setup", "--size", "4M"]).is_err());
    }
}
