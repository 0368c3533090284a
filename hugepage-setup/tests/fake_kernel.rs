//! The library run against temporary trees with a kernel stand-in that
//! reacts to writes: partial hugepage grants and real rebinding.

mod common;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use clap::Parser;
use hugepage_setup::mount::{MountError, Mounter};
use hugepage_setup::sysfs::HugepageSize;
use hugepage_setup::{run, Cli, Host, Outcome};

use common::{FakeKernel, Tree};

#[derive(Default)]
struct RecordingMounter(RefCell<Vec<(PathBuf, HugepageSize)>>);

impl Mounter for RecordingMounter {
    fn mount_hugetlbfs(&self, point: &Path, size: HugepageSize) -> Result<(), MountError> {
        self.0.borrow_mut().push((point.to_path_buf(), size));
        Ok(())
    }
}

fn cli(tree: &Tree, args: &[&str]) -> Cli {
    let mut argv = vec!["hugepage-setup".to_string()];
    argv.extend(tree.root_args());
    argv.extend(args.iter().map(|s| s.to_string()));
    Cli::try_parse_from(argv).unwrap()
}

fn run_lib(tree: &Tree, mounter: &RecordingMounter, args: &[&str]) -> (Outcome, String) {
    let kernel = FakeKernel { sysfs: tree.sys() };
    let host = Host {
        kernel: &kernel,
        mounter,
        euid: 1000,
    };
    let mut out = Vec::new();
    let outcome = run(&cli(tree, args), &host, &mut out).unwrap();
    (outcome, String::from_utf8(out).unwrap())
}

#[test]
fn partial_grant_is_reported_and_fails_unless_allowed() {
    let tree = Tree::new();
    let n0 = tree.numa_pool(0, 2048, 0, 0);
    let n1 = tree.numa_pool(1, 2048, 0, 0);
    tree.write(
        "sys/devices/system/node/node1/hugepages/hugepages-2048kB/max_hugepages",
        "300\n",
    );
    tree.add_mount("hugetlbfs /dev/hugepages hugetlbfs rw,pagesize=2M 0 0");
    let mounter = RecordingMounter::default();
    let (outcome, text) = run_lib(&tree, &mounter, &["--pages", "512"]);
    assert_eq!(outcome, Outcome::Unsatisfied, "{text}");
    assert_eq!(outcome.exit_code(), 1);
    assert_eq!(tree.read(&n0).trim(), "512");
    assert_eq!(tree.read(&n1).trim(), "300");
    assert!(
        text.contains("PARTIAL: kernel granted 300 of 512 (212 short)"),
        "{text}"
    );
    assert!(
        text.contains("FAIL: the kernel granted fewer pages"),
        "{text}"
    );

    let (outcome, text) = run_lib(&tree, &mounter, &["--pages", "512", "--allow-partial"]);
    assert_eq!(outcome, Outcome::Satisfied, "{text}");
    assert!(text.contains("PARTIAL"), "{text}");
    assert!(mounter.0.borrow().is_empty(), "mount was already there");
}

#[test]
fn missing_mount_is_mounted_with_the_page_size() {
    let tree = Tree::new();
    tree.numa_pool(0, 1048576, 0, 0);
    let mounter = RecordingMounter::default();
    let (outcome, text) = run_lib(&tree, &mounter, &["--pages", "2", "--size", "1G"]);
    assert_eq!(outcome, Outcome::Satisfied, "{text}");
    assert_eq!(
        mounter.0.borrow().as_slice(),
        &[(PathBuf::from("/dev/hugepages1G"), HugepageSize::OneGiB)]
    );
    assert!(text.contains("/dev/hugepages1G: mounted"), "{text}");
}

#[test]
fn bind_then_unbind_round_trip() {
    let tree = Tree::new();
    tree.nic("0000:03:00.0", Some("ixgbe"), Some(("eth1", "down")));
    tree.write("sys/bus/pci/devices/0000:03:00.0/native_driver", "ixgbe");
    tree.driver("vfio-pci");
    let mounter = RecordingMounter::default();

    let (outcome, text) = run_lib(&tree, &mounter, &["--bind", "03:00.0"]);
    assert_eq!(outcome, Outcome::Satisfied, "{text}");
    assert_eq!(tree.driver_of("0000:03:00.0").as_deref(), Some("vfio-pci"));
    assert!(text.contains("driver before: ixgbe"), "{text}");
    assert!(text.contains("driver after:  vfio-pci"), "{text}");

    let (outcome, text) = run_lib(&tree, &mounter, &["--bind", "03:00.0"]);
    assert_eq!(outcome, Outcome::Satisfied);
    assert!(text.contains("nothing changed"), "{text}");

    let (outcome, text) = run_lib(&tree, &mounter, &["--unbind", "03:00.0"]);
    assert_eq!(outcome, Outcome::Satisfied, "{text}");
    assert_eq!(tree.driver_of("0000:03:00.0").as_deref(), Some("ixgbe"));
    assert!(text.contains("driver before: vfio-pci"), "{text}");
    assert!(text.contains("driver after:  ixgbe"), "{text}");
    assert_eq!(
        tree.read("sys/bus/pci/devices/0000:03:00.0/driver_override"),
        "\n"
    );
}

#[test]
fn bind_that_does_not_take_is_unsatisfied() {
    // driver_override names vfio-pci, but no vfio-pci driver directory exists
    // although the module directory does (e.g. a half-loaded module).
    let tree = Tree::new();
    tree.nic("0000:03:00.0", None, None);
    std::fs::create_dir_all(tree.path("sys/module/vfio_pci")).unwrap();
    let (outcome, text) = run_lib(&tree, &RecordingMounter::default(), &["--bind", "03:00.0"]);
    assert_eq!(outcome, Outcome::Unsatisfied, "{text}");
    assert!(text.contains("driver before: (none)"), "{text}");
    assert!(text.contains("FAIL"), "{text}");
}
