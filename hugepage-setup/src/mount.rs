//! hugetlbfs mounts: reading the mount table (`/proc/mounts`), deciding
//! whether a mount point already holds an equivalent hugetlbfs mount, and
//! performing the mount through the [`Mounter`] trait (the `mount(2)` syscall
//! on a real node, a recorder in tests).
//!
//! This module never writes sysfs attributes and never unmounts.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::sysfs::{HugepageSize, Roots};

/// Errors about hugetlbfs mounts.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount table could not be read.
    #[error("cannot read the mount table {path}: {source}")]
    MountTable {
        /// The mount table file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The mount point already holds hugetlbfs with another page size.
    #[error("{mount_point} already holds hugetlbfs with pagesize={found}, not {wanted}; choose another --mount")]
    OtherPageSize {
        /// The mount point.
        mount_point: PathBuf,
        /// The page size found there ("unknown" when it could not be told).
        found: String,
        /// The page size asked for.
        wanted: HugepageSize,
    },
    /// The mount point already holds a filesystem that is not hugetlbfs.
    #[error("{mount_point} already holds a {fstype} filesystem; choose another --mount")]
    OtherFilesystem {
        /// The mount point.
        mount_point: PathBuf,
        /// The filesystem type found there.
        fstype: String,
    },
    /// The mount point directory could not be created.
    #[error("cannot create mount point {path}: {source}")]
    CreateMountPoint {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The mount syscall failed.
    #[error("mount -t hugetlbfs -o pagesize={size} at {mount_point} failed: {reason}")]
    MountFailed {
        /// The mount point.
        mount_point: PathBuf,
        /// The page size.
        size: HugepageSize,
        /// What the kernel said.
        reason: String,
    },
    /// The trees are redirected (tests, dry trees) but a real mount was
    /// needed: refused, because a real mount would not show in a fake mount
    /// table and would leave the host changed.
    #[error("a hugetlbfs mount at {mount_point} is needed, but the proc/sys roots are redirected; refusing to mount the real system (add the mount to the tree's mounts file, or pass --no-mount)")]
    RedirectedTree {
        /// The mount point.
        mount_point: PathBuf,
    },
}

/// One line of the mount table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountEntry {
    /// The source ("hugetlbfs", "/dev/sda1", ...).
    pub source: String,
    /// Where it is mounted, with octal escapes (`\040`) decoded.
    pub mount_point: PathBuf,
    /// The filesystem type.
    pub fstype: String,
    /// The comma separated options.
    pub options: Vec<String>,
}

/// A hugetlbfs mount and its page size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HugetlbfsMount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Its page size; `None` when the size is neither given nor known
    /// from `/proc/meminfo`, or is one we do not use.
    pub page_size: Option<HugepageSize>,
    /// The `pagesize=` option as written, or the default size it inherits.
    pub page_size_text: String,
}

/// Decodes the octal escapes the kernel uses in mount table fields.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a mount table (`/proc/mounts` format). Lines with fewer than four
/// fields are skipped.
pub fn parse_mount_table(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let source = fields.next()?;
            let mount_point = fields.next()?;
            let fstype = fields.next()?;
            let options = fields.next()?;
            Some(MountEntry {
                source: unescape_mount_field(source),
                mount_point: PathBuf::from(unescape_mount_field(mount_point)),
                fstype: fstype.to_string(),
                options: options.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// Parses a size as hugetlbfs writes it (`2M`, `1024M`, `1G`, `2048k`, or
/// plain bytes) into bytes.
pub fn parse_size_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, multiplier) = match text.char_indices().last()? {
        (i, 'k' | 'K') => (&text[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&text[..i], 1 << 20),
        (i, 'g' | 'G') => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(multiplier)
}

/// The default hugepage size from `/proc/meminfo` (`Hugepagesize: 2048 kB`).
pub fn default_hugepage_size(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("Hugepagesize:")?;
        let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        kib.checked_mul(1024)
    })
}

/// The hugetlbfs mounts of a mount table, with their page sizes. A mount
/// without `pagesize=` has the default size given (from `/proc/meminfo`).
pub fn hugetlbfs_mounts(entries: &[MountEntry], default_size: Option<u64>) -> Vec<HugetlbfsMount> {
    entries
        .iter()
        .filter(|e| e.fstype == "hugetlbfs")
        .map(|e| {
            let option = e.options.iter().find_map(|o| o.strip_prefix("pagesize="));
            let bytes = option.and_then(parse_size_bytes).or(default_size);
            let page_size_text = match (option, default_size) {
                (Some(o), _) => o.to_string(),
                (None, Some(d)) => format!("{}M (default)", d >> 20),
                (None, None) => "unknown".to_string(),
            };
            HugetlbfsMount {
                mount_point: e.mount_point.clone(),
                page_size: bytes.and_then(HugepageSize::from_bytes),
                page_size_text,
            }
        })
        .collect()
}

/// Reads the hugetlbfs mounts of the tree (`<proc>/mounts`, and
/// `<proc>/meminfo` for the default page size).
pub fn read_hugetlbfs_mounts(roots: &Roots) -> Result<Vec<HugetlbfsMount>, MountError> {
    let path = roots.proc_file("mounts");
    let table =
        fs::read_to_string(&path).map_err(|source| MountError::MountTable { path, source })?;
    let default_size = fs::read_to_string(roots.proc_file("meminfo"))
        .ok()
        .and_then(|m| default_hugepage_size(&m));
    Ok(hugetlbfs_mounts(&parse_mount_table(&table), default_size))
}

/// What to do about a mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountPlan {
    /// An equivalent hugetlbfs mount is there already.
    AlreadyMounted,
    /// Nothing is mounted there: mount it.
    Mount,
}

/// Normalises a path for comparison with mount table entries: drops trailing
/// slashes and `.` components.
fn normalise(path: &Path) -> PathBuf {
    path.components().collect()
}

/// Decides what to do about `mount_point` given the mount table. The last
/// mount at a point wins, as in the kernel (it hides the earlier ones).
pub fn plan_mount(
    entries: &[MountEntry],
    default_size: Option<u64>,
    mount_point: &Path,
    size: HugepageSize,
) -> Result<MountPlan, MountError> {
    let wanted = normalise(mount_point);
    let Some(top) = entries
        .iter()
        .rev()
        .find(|e| normalise(&e.mount_point) == wanted)
    else {
        return Ok(MountPlan::Mount);
    };
    if top.fstype != "hugetlbfs" {
        return Err(MountError::OtherFilesystem {
            mount_point: mount_point.to_path_buf(),
            fstype: top.fstype.clone(),
        });
    }
    let found = hugetlbfs_mounts(std::slice::from_ref(top), default_size)
        .into_iter()
        .next();
    match found {
        Some(m) if m.page_size == Some(size) => Ok(MountPlan::AlreadyMounted),
        Some(m) => Err(MountError::OtherPageSize {
            mount_point: mount_point.to_path_buf(),
            found: m.page_size_text,
            wanted: size,
        }),
        None => Ok(MountPlan::Mount),
    }
}

/// Performs a hugetlbfs mount. [`LiveMounter`] calls `mount(2)`; tests record
/// the call instead.
pub trait Mounter {
    /// Mounts hugetlbfs with `pagesize=<size>` at `mount_point`, creating the
    /// directory when missing.
    fn mount_hugetlbfs(&self, mount_point: &Path, size: HugepageSize) -> Result<(), MountError>;
}

/// Mounts through the `mount(2)` syscall.
#[derive(Debug, Default, Clone, Copy)]
pub struct LiveMounter;

impl Mounter for LiveMounter {
    fn mount_hugetlbfs(&self, mount_point: &Path, size: HugepageSize) -> Result<(), MountError> {
        fs::create_dir_all(mount_point).map_err(|source| MountError::CreateMountPoint {
            path: mount_point.to_path_buf(),
            source,
        })?;
        let options = format!("pagesize={}", size.mount_option());
        nix::mount::mount(
            Some("hugetlbfs"),
            mount_point,
            Some("hugetlbfs"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|errno| MountError::MountFailed {
            mount_point: mount_point.to_path_buf(),
            size,
            reason: errno.desc().to_string(),
        })
    }
}

/// Refuses every mount: used when the trees are redirected, so that a run
/// against a temporary tree can never change the host's mounts.
#[derive(Debug, Default, Clone, Copy)]
pub struct RefusingMounter;

impl Mounter for RefusingMounter {
    fn mount_hugetlbfs(&self, mount_point: &Path, _size: HugepageSize) -> Result<(), MountError> {
        Err(MountError::RedirectedTree {
            mount_point: mount_point.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0
nodev /mnt/huge\\0401g hugetlbfs rw,relatime,pagesize=1024M 0 0
none /mnt/plain hugetlbfs rw,relatime 0 0
tmpfs /run tmpfs rw 0 0
short line
";

    #[test]
    fn mount_table_parses_and_decodes_escapes() {
        let entries = parse_mount_table(TABLE);
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[2].mount_point, PathBuf::from("/mnt/huge 1g"));
        assert_eq!(entries[1].options, vec!["rw", "relatime", "pagesize=2M"]);
    }

    #[test]
    fn sizes_parse_in_hugetlbfs_notation() {
        assert_eq!(parse_size_bytes("2M"), Some(2 << 20));
        assert_eq!(parse_size_bytes("1024M"), Some(1 << 30));
        assert_eq!(parse_size_bytes("1G"), Some(1 << 30));
        assert_eq!(parse_size_bytes("2048k"), Some(2 << 20));
        assert_eq!(parse_size_bytes("4096"), Some(4096));
        assert_eq!(parse_size_bytes("M"), None);
        assert_eq!(parse_size_bytes(""), None);
        assert_eq!(parse_size_bytes("99999999999999999999G"), None);
    }

    #[test]
    fn default_size_comes_from_meminfo() {
        let meminfo = "MemTotal: 100 kB\nHugepagesize:       2048 kB\n";
        assert_eq!(default_hugepage_size(meminfo), Some(2 << 20));
        assert_eq!(default_hugepage_size("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn hugetlbfs_mounts_carry_page_sizes() {
        let entries = parse_mount_table(TABLE);
        let mounts = hugetlbfs_mounts(&entries, Some(1 << 30));
        let sizes: Vec<_> = mounts.iter().map(|m| m.page_size).collect();
        assert_eq!(
            sizes,
            vec![
                Some(HugepageSize::TwoMiB),
                Some(HugepageSize::OneGiB),
                Some(HugepageSize::OneGiB)
            ]
        );
        assert_eq!(mounts[2].page_size_text, "1024M (default)");
    }

    #[test]
    fn plan_recognises_equivalent_and_conflicting_mounts() {
        let entries = parse_mount_table(TABLE);
        let two = HugepageSize::TwoMiB;
        let one = HugepageSize::OneGiB;
        assert_eq!(
            plan_mount(&entries, None, Path::new("/dev/hugepages/"), two).unwrap(),
            MountPlan::AlreadyMounted
        );
        assert_eq!(
            plan_mount(&entries, None, Path::new("/mnt/huge 1g"), one).unwrap(),
            MountPlan::AlreadyMounted
        );
        assert_eq!(
            plan_mount(&entries, None, Path::new("/dev/hugepages1G"), one).unwrap(),
            MountPlan::Mount
        );
        assert!(matches!(
            plan_mount(&entries, None, Path::new("/dev/hugepages"), one),
            Err(MountError::OtherPageSize { .. })
        ));
        assert!(matches!(
            plan_mount(&entries, None, Path::new("/run"), two),
            Err(MountError::OtherFilesystem { .. })
        ));
    }

    #[test]
    fn later_mount_hides_earlier_one() {
        let table = "hugetlbfs /h hugetlbfs rw,pagesize=1G 0 0\nhugetlbfs /h hugetlbfs rw,pagesize=2M 0 0\n";
        let entries = parse_mount_table(table);
        assert_eq!(
            plan_mount(&entries, None, Path::new("/h"), HugepageSize::TwoMiB).unwrap(),
            MountPlan::AlreadyMounted
        );
    }

    #[test]
    fn refusing_mounter_refuses() {
        let err = RefusingMounter
            .mount_hugetlbfs(Path::new("/dev/hugepages"), HugepageSize::TwoMiB)
            .unwrap_err();
        assert!(err.to_string().contains("--no-mount"), "{err}");
    }
}
