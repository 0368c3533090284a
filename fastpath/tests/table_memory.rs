//! How the large tables are backed: by default the fastpath restarts
//! itself once (same pid) with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, so
//! that its prefaulted flow caches and conntrack table get transparent
//! huge pages; `[memory] transparent_huge_pages = false` keeps ordinary
//! pages; a tunable the operator set is left alone.

mod common;

use common::Fastpath;

fn environ(fp: &Fastpath) -> String {
    let pid = fp.child.as_ref().expect("running").id();
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    String::from_utf8_lossy(&raw).replace('\0', "\n")
}

fn anon_huge_kb(fp: &Fastpath) -> u64 {
    let pid = fp.child.as_ref().expect("running").id();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The kernel hands out transparent huge pages to regions that ask.
fn thp_on_request() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|m| m.contains("[madvise]") || m.contains("[always]"))
}

fn start(config: Option<&str>) -> Fastpath {
    let dir = tempfile::Builder::new()
        .prefix("fp-mem-")
        .tempdir()
        .unwrap();
    let mut args: Vec<String> = vec![
        "--port".into(),
        "a=net_null0".into(),
        "--worker".into(),
        "1=a".into(),
        "--pipeline".into(),
        "ovn".into(),
        "--tables".into(),
        dir.path().join("tables").display().to_string(),
    ];
    if let Some(text) = config {
        let path = dir.path().join("fastpath.toml");
        std::fs::write(&path, text).unwrap();
        args.extend(["--config".into(), path.display().to_string()]);
    }
    Fastpath::start_in(dir, &args)
}

#[test]
fn tables_get_transparent_huge_pages_unless_turned_off() {
    let fp = start(None);
    let env = environ(&fp);
    assert!(
        env.lines()
            .any(|l| l == "GLIBC_TUNABLES=glibc.malloc.hugetlb=1"),
        "{env}"
    );
    assert!(
        fp.log().contains("transparent huge pages asked for"),
        "{}",
        fp.log()
    );
    if thp_on_request() {
        // The conntrack table alone is ~100 MB, written at start, in one
        // arena that huge pages back whole.
        let arrays_mib = conntrack_arrays_mib(&fp.log());
        assert!(arrays_mib >= 64, "{}", fp.log());
        let huge_mib = anon_huge_kb(&fp) / 1024;
        assert!(
            huge_mib >= arrays_mib,
            "{huge_mib} MiB on huge pages, less than the {arrays_mib} MiB of conntrack arrays:\n{}",
            fp.log()
        );
    } else {
        eprintln!("kernel THP mode is never: AnonHugePages not checked");
    }
    drop(fp);

    let fp = start(Some("[memory]\ntransparent_huge_pages = false\n"));
    let env = environ(&fp);
    assert!(!env.contains("glibc.malloc.hugetlb"), "{env}");
    assert!(!fp.log().contains("transparent huge pages asked for"));
    if std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|m| m.contains("[madvise]"))
    {
        // Nothing asked, so nothing got them (the conntrack arena included).
        assert_eq!(anon_huge_kb(&fp), 0, "{}", fp.log());
    }
}

/// The MiB of conntrack arrays the fastpath logged at start.
fn conntrack_arrays_mib(log: &str) -> u64 {
    log.lines()
        .find_map(|l| {
            l.split_once("shards, ")?
                .1
                .split_once(" MiB of arrays")?
                .0
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no conntrack arena line in the log:\n{log}"))
}
