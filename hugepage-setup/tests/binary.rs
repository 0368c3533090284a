//! Runs the real `hugepage-setup` binary against temporary sysfs/procfs/devfs
//! trees.

mod common;

use std::process::{Command, Output};

use common::{Tree, OLD_CPUINFO};

fn run(tree: &Tree, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hugepage-setup"))
        .args(tree.root_args())
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn two_node_tree() -> (Tree, String, String) {
    let tree = Tree::new();
    let n0 = tree.numa_pool(0, 2048, 0, 0);
    let n1 = tree.numa_pool(1, 2048, 16, 16);
    tree.add_mount("hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0");
    (tree, n0, n1)
}

#[test]
fn reserves_on_two_numa_nodes() {
    let (tree, n0, n1) = two_node_tree();
    let o = run(&tree, &["--pages", "512"]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}{}", stderr(&o));
    assert_eq!(tree.read(&n0).trim(), "512");
    assert_eq!(tree.read(&n1).trim(), "512");
    let node1 = text
        .lines()
        .find(|l| l.trim_start().starts_with("node1"))
        .unwrap();
    let cols: Vec<&str> = node1.split_whitespace().collect();
    assert_eq!(
        cols[..5],
        ["node1", "16", "512", "512", "reserved"],
        "{text}"
    );
    assert!(text.contains("already mounted"), "{text}");
    assert!(text.contains("changes made"), "{text}");
}

#[test]
fn second_run_changes_nothing_and_says_so() {
    let (tree, n0, _) = two_node_tree();
    assert_eq!(run(&tree, &["--pages", "64"]).status.code(), Some(0));
    // A marker that a rewrite would destroy.
    tree.write(&n0, "64\n");
    let before = std::fs::metadata(tree.path(&n0))
        .unwrap()
        .modified()
        .unwrap();
    let o = run(&tree, &["--pages", "64"]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("nothing changed"), "{text}");
    assert_eq!(text.matches("unchanged").count(), 2, "{text}");
    let after = std::fs::metadata(tree.path(&n0))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "the pool file was rewritten");
}

#[test]
fn json_reservation_report() {
    let (tree, _, _) = two_node_tree();
    let o = run(&tree, &["--pages", "32", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["size"], "2M");
    assert_eq!(v["pools"][0]["scope"]["node"], 0);
    assert_eq!(v["pools"][1]["before"], 16);
    assert_eq!(v["pools"][1]["granted"], 32);
    assert_eq!(v["mount"]["state"], "already_mounted");
    assert_eq!(v["changed"], true);
}

#[test]
fn single_node_only_touches_that_node() {
    let (tree, n0, n1) = two_node_tree();
    let o = run(&tree, &["--pages", "100", "--node", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(tree.read(&n0).trim(), "0");
    assert_eq!(tree.read(&n1).trim(), "100");
    let o = run(&tree, &["--pages", "100", "--node", "7"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("NUMA node 7 does not exist"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn falls_back_to_global_pool_without_numa() {
    let tree = Tree::new();
    let pool = tree.global_pool(2048, 0);
    let o = run(&tree, &["--pages", "8", "--no-mount"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(tree.read(&pool).trim(), "8");
    assert!(stdout(&o).contains("global"));
    assert!(stdout(&o).contains("skipped"));
}

#[test]
fn one_gig_pages() {
    let tree = Tree::new();
    let two = tree.numa_pool(0, 2048, 0, 0);
    let one = tree.numa_pool(0, 1048576, 0, 0);
    tree.add_mount("hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0");
    tree.add_mount("hugetlbfs /dev/hugepages1G hugetlbfs rw,relatime,pagesize=1024M 0 0");
    let o = run(&tree, &["--size", "1G", "--pages", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(tree.read(&one).trim(), "4");
    assert_eq!(tree.read(&two).trim(), "0");
    assert!(stdout(&o).contains("hugepages 1G"));
    assert!(
        stdout(&o).contains("/dev/hugepages1G: already mounted"),
        "{}",
        stdout(&o)
    );
    // The 2M mount point cannot serve 1G pages.
    let o = run(
        &tree,
        &["--size", "1G", "--pages", "4", "--mount", "/dev/hugepages"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("pagesize=2M, not 1G"), "{}", stderr(&o));
}

#[test]
fn unsupported_size_is_a_clear_error() {
    let tree = Tree::new();
    tree.numa_pool(0, 2048, 0, 0);
    let o = run(&tree, &["--size", "1G", "--pages", "1", "--no-mount"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no 1G hugepage pool"), "{}", stderr(&o));
    let o = run(&tree, &["--size", "4M", "--pages", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("use 2M or 1G"), "{}", stderr(&o));
}

#[test]
fn redirected_tree_never_mounts_for_real() {
    let tree = Tree::new();
    let pool = tree.numa_pool(0, 2048, 0, 0);
    let target = tree.path("mnt/huge");
    let o = run(
        &tree,
        &["--pages", "2", "--mount", target.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--no-mount"), "{}", stderr(&o));
    assert!(!target.exists(), "mount point must not be created");
    assert_eq!(
        tree.read(&pool).trim(),
        "0",
        "a refused mount leaves the pools alone"
    );
}

#[test]
fn check_on_a_ready_node() {
    let tree = Tree::new();
    tree.ready_node();
    let o = run(&tree, &["--check"]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.starts_with("ITEM"), "{text}");
    for (item, status) in [
        ("cpu sse4.2", "OK"),
        ("cpu avx2", "OK"),
        ("cpu pdpe1gb", "OK"),
        ("hugepages 2M node1", "OK"),
        ("hugetlbfs /dev/hugepages", "OK"),
        ("mount 2M", "OK"),
        ("iommu groups", "OK"),
        ("/dev/vfio/vfio", "OK"),
        ("/dev/vhost-net", "OK"),
        ("vfio-pci module", "OK"),
        ("nic 0000:03:00.0", "OK"),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{item} ")))
            .unwrap_or_else(|| panic!("no {item} in {text}"));
        assert!(
            line[item.len()..].trim_start().starts_with(status),
            "{line}"
        );
    }
    assert!(text.contains("free 500 / total 512"), "{text}");
    assert!(text.contains("driver e1000e, eno1 up"), "{text}");
    assert!(text.contains("READY"), "{text}");

    let o = run(&tree, &["--check", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ready"], true);
    assert!(v["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["status"] != "FAIL"));
    assert_eq!(v["mounts"][0]["page_size"], "2M");
    let nics = v["nics"].as_array().unwrap();
    assert!(nics
        .iter()
        .any(|n| n["address"] == "0000:03:00.0" && n["driver"] == "vfio-pci"));
    let pools = v["hugepages"].as_array().unwrap();
    assert!(pools
        .iter()
        .any(|p| p["size"] == "2M" && p["scope"]["node"] == 1 && p["free"] == 500));
}

#[test]
fn check_on_a_node_that_is_not_ready() {
    let tree = Tree::new();
    tree.write("proc/cpuinfo", OLD_CPUINFO);
    tree.numa_pool(0, 2048, 0, 0);
    tree.nic("0000:04:00.0", Some("ixgbe"), Some(("eth2", "down")));
    let o = run(&tree, &["--check", "--device", "04:00.0"]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    for (item, status) in [
        ("cpu sse4.2", "FAIL"),
        ("cpu avx2", "WARN"),
        ("hugepages 2M node0", "FAIL"),
        ("mount 2M", "FAIL"),
        ("iommu groups", "FAIL"),
        ("vfio-pci module", "FAIL"),
        ("nic 0000:04:00.0", "FAIL"),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{item} ")))
            .unwrap_or_else(|| panic!("no {item} in {text}"));
        assert!(
            line[item.len()..].trim_start().starts_with(status),
            "{line}"
        );
    }
    assert!(text.contains("NOT READY"), "{text}");

    let o = run(&tree, &["--check", "--json", "--device", "04:00.0"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ready"], false);
    let fails: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "FAIL")
        .map(|i| i["item"].as_str().unwrap())
        .collect();
    assert!(
        fails.contains(&"cpu sse4.2") && fails.contains(&"nic 0000:04:00.0"),
        "{fails:?}"
    );
}

#[test]
fn check_without_vfio_requirements_only_warns_about_vfio() {
    let tree = Tree::new();
    tree.numa_pool(0, 2048, 8, 8);
    tree.add_mount("hugetlbfs /dev/hugepages hugetlbfs rw,relatime 0 0");
    let o = run(&tree, &["--check"]);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(text.contains("pagesize=2M (default)"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    assert!(text
        .lines()
        .any(|l| l.starts_with("iommu groups") && l.contains("WARN")));
    // Asking for more pages than the pool holds makes it not ready.
    let o = run(&tree, &["--check", "--pages", "9"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("(need 9)"));
}

#[test]
fn check_changes_nothing() {
    let tree = Tree::new();
    tree.ready_node();
    let snapshot = |t: &Tree| {
        let mut v = Vec::new();
        for e in walk(t.dir.path()) {
            v.push((e.clone(), std::fs::read(&e).ok()));
        }
        v
    };
    let before = snapshot(&tree);
    run(&tree, &["--check", "--pages", "100000"]);
    assert_eq!(before, snapshot(&tree));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_symlink() || p.is_file() {
            out.push(p);
        } else if p.is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

#[test]
fn bind_writes_driver_override_unbind_and_probe() {
    let tree = Tree::new();
    tree.nic("0000:03:00.0", Some("ixgbe"), Some(("eth1", "down")));
    std::fs::create_dir_all(tree.path("sys/module/vfio_pci")).unwrap();
    let o = run(&tree, &["--bind", "03:00.0"]);
    let text = stdout(&o);
    assert_eq!(
        tree.read("sys/bus/pci/devices/0000:03:00.0/driver_override"),
        "vfio-pci"
    );
    assert_eq!(
        tree.read("sys/bus/pci/drivers/ixgbe/unbind"),
        "0000:03:00.0"
    );
    assert_eq!(tree.read("sys/bus/pci/drivers_probe"), "0000:03:00.0");
    assert!(text.contains("driver before: ixgbe"), "{text}");
    // A plain tree has no kernel to rebind the device: the tool must notice
    // that the device did not end on vfio-pci, and say so.
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL: device is on ixgbe after drivers_probe"),
        "{text}"
    );
}

#[test]
fn unbind_clears_override_and_reprobes() {
    let tree = Tree::new();
    tree.nic("0000:03:00.1", Some("vfio-pci"), None);
    let o = run(&tree, &["--unbind", "0000:03:00.1", "--json"]);
    assert_eq!(
        tree.read("sys/bus/pci/devices/0000:03:00.1/driver_override"),
        "\n"
    );
    assert_eq!(
        tree.read("sys/bus/pci/drivers/vfio-pci/unbind"),
        "0000:03:00.1"
    );
    assert_eq!(tree.read("sys/bus/pci/drivers_probe"), "0000:03:00.1");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["before"], "vfio-pci");
    assert_eq!(v["operation"], "unbind");
    assert_eq!(v["writes"].as_array().unwrap().len(), 3);
}

#[test]
fn already_bound_device_is_left_alone() {
    let tree = Tree::new();
    tree.nic("0000:03:00.0", Some("vfio-pci"), None);
    let o = run(&tree, &["--bind", "0000:03:00.0"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("already bound to vfio-pci, nothing changed"));
    assert_eq!(tree.read("sys/bus/pci/drivers_probe"), "");
}

#[test]
fn bad_pci_address_is_refused() {
    let tree = Tree::new();
    for bad in ["3:00.0", "0000:03:00.9", "eth0", "0000:03:00:0"] {
        let o = run(&tree, &["--bind", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(stderr(&o).contains("bad PCI address"), "{}", stderr(&o));
    }
}

#[test]
fn missing_device_is_refused() {
    let tree = Tree::new();
    tree.nic("0000:03:00.0", Some("ixgbe"), None);
    let o = run(&tree, &["--bind", "0000:05:00.0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("0000:05:00.0 is not present"),
        "{}",
        stderr(&o)
    );
    let o = run(&tree, &["--unbind", "05:00.0"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn device_with_interface_up_needs_force() {
    let tree = Tree::new();
    tree.nic("0000:00:19.0", Some("e1000e"), Some(("eno1", "up")));
    std::fs::create_dir_all(tree.path("sys/module/vfio_pci")).unwrap();
    let o = run(&tree, &["--bind", "00:19.0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("eno1 up"), "{}", stderr(&o));
    assert_eq!(
        tree.read("sys/bus/pci/devices/0000:00:19.0/driver_override"),
        "(null)\n"
    );
    let o = run(&tree, &["--bind", "00:19.0", "--force"]);
    assert_eq!(
        tree.read("sys/bus/pci/devices/0000:00:19.0/driver_override"),
        "vfio-pci"
    );
    assert!(stdout(&o).contains("driver before: e1000e"));
}

#[test]
fn missing_pages_argument_is_a_usage_error() {
    let tree = Tree::new();
    let o = run(&tree, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--pages N is required"),
        "{}",
        stderr(&o)
    );
}
