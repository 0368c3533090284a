//! Section kinds: their ids, names, element layouts, validation hooks, typed
//! views and text dumps.
//!
//! Owns the registry of known kinds ([`KNOWN_SECTIONS`]) and the per-kind
//! code; adding a table kind means adding a kind id, its `#[repr(C)]` element,
//! a validation hook and a dump here, and nothing anywhere else. It must not
//! touch the protocol or the mapping: views are built over byte slices that
//! [`crate::validate`] has already checked.
//!
//! Views hand out bounds-checked slices and copies. Strings are handed out as
//! bytes, or copied before their UTF-8 is checked, never as `&str` borrowed
//! from the shared mapping: a misbehaving writer could change the bytes after
//! the check, and a `&str` that stops being UTF-8 is undefined behaviour.

use std::fmt::Write as _;
use std::mem::size_of;

use bytemuck::{Pod, Zeroable};

use crate::layout::{SectionEntry, StrRef};
use crate::ovn;
use crate::refusal::RefusalReason;

/// A section kind id. New table kinds are new ids; readers skip ids they do
/// not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SectionKind(pub u32);

impl SectionKind {
    /// The deduplicated string blob (UTF-8 bytes, element size 1).
    pub const STRINGS: SectionKind = SectionKind(1);
    /// The port map ([`PortMapEntry`]).
    pub const PORTS: SectionKind = SectionKind(2);

    /// The registered name, or `None` for a kind this build does not know.
    pub fn known_name(self) -> Option<&'static str> {
        spec(self).map(|spec| spec.name)
    }

    /// The registered name, or `"unknown"`.
    pub fn name(self) -> &'static str {
        self.known_name().unwrap_or("unknown")
    }

    /// The kind registered under `name`.
    pub fn from_name(name: &str) -> Option<SectionKind> {
        KNOWN_SECTIONS
            .iter()
            .find(|spec| spec.name == name)
            .map(|spec| spec.kind)
    }
}

/// What the reader knows about one section kind.
pub struct SectionSpec {
    /// Kind id.
    pub kind: SectionKind,
    /// Short name used by `fastpathctl tables dump NAME`.
    pub name: &'static str,
    /// Required element size.
    pub element_size: u32,
    /// Checks the section's content and its references into other sections.
    /// Runs after the table of contents was checked.
    pub validate: fn(&SlotSections<'_>) -> Result<(), RefusalReason>,
    /// Text dump, one line per element.
    pub dump: fn(&SlotSections<'_>) -> String,
}

/// Every kind this build knows.
pub const KNOWN_SECTIONS: &[SectionSpec] = &[
    SectionSpec {
        kind: SectionKind::STRINGS,
        name: "strings",
        element_size: 1,
        validate: validate_strings,
        dump: dump_strings,
    },
    SectionSpec {
        kind: SectionKind::PORTS,
        name: "ports",
        element_size: size_of::<PortMapEntry>() as u32,
        validate: validate_ports,
        dump: dump_ports,
    },
    SectionSpec {
        kind: SectionKind::OVN_DATAPATHS,
        name: "ovn-datapaths",
        element_size: size_of::<ovn::OvnDatapath>() as u32,
        validate: ovn::validate_size_only,
        dump: ovn::dump_datapaths,
    },
    SectionSpec {
        kind: SectionKind::OVN_PORTS,
        name: "ovn-ports",
        element_size: size_of::<ovn::OvnLogicalPort>() as u32,
        validate: ovn::validate_size_only,
        dump: ovn::dump_ports,
    },
    SectionSpec {
        kind: SectionKind::OVN_PORT_SECURITY,
        name: "ovn-port-security",
        element_size: size_of::<ovn::OvnPortSecurity>() as u32,
        validate: ovn::validate_size_only,
        dump: ovn::dump_port_security,
    },
    SectionSpec {
        kind: SectionKind::OVN_MCAST_GROUPS,
        name: "ovn-mcast-groups",
        element_size: size_of::<ovn::OvnMulticastGroup>() as u32,
        validate: ovn::validate_size_only,
        dump: ovn::dump_groups,
    },
    SectionSpec {
        kind: SectionKind::OVN_MCAST_MEMBERS,
        name: "ovn-mcast-members",
        element_size: size_of::<u32>() as u32,
        validate: ovn::validate_size_only,
        dump: ovn::dump_members,
    },
    SectionSpec {
        kind: SectionKind::OVN_MAC_BINDINGS,
        name: "ovn-mac-bindings",
        element_size: size_of::<ovn::OvnMacBinding>() as u32,
        validate: ovn::validate_size_only,
        dump: ovn::dump_mac_bindings,
    },
    SectionSpec {
        kind: SectionKind::OVN_FDB,
        name: "ovn-fdb",
        element_size: size_of::<ovn::OvnFdbEntry>() as u32,
        validate: ovn::validate_size_only,
        dump: ovn::dump_fdb,
    },
    SectionSpec {
        kind: SectionKind::OVN_MATCH_TESTS,
        name: "ovn-match-tests",
        element_size: size_of::<ovn::OvnMatchTest>() as u32,
        validate: ovn::validate_size_only,
        dump: ovn::dump_tests,
    },
    SectionSpec {
        kind: SectionKind::OVN_ACTIONS,
        name: "ovn-actions",
        element_size: size_of::<ovn::OvnInstruction>() as u32,
        validate: ovn::validate_size_only,
        dump: ovn::dump_actions,
    },
    SectionSpec {
        kind: SectionKind::OVN_CT_ZONES,
        name: "ovn-ct-zones",
        element_size: size_of::<ovn::OvnCtZone>() as u32,
        validate: ovn::validate_size_only,
        dump: ovn::dump_ct_zones,
    },
    // Last: its hook checks the references between all OVN sections.
    SectionSpec {
        kind: SectionKind::OVN_FLOWS,
        name: "ovn-flows",
        element_size: size_of::<ovn::OvnFlow>() as u32,
        validate: ovn::validate_ovn,
        dump: ovn::dump_flows,
    },
    #[cfg(not(loom))]
    crate::chassis::REMOTE_CHASSIS_SPEC,
    // After the remote chassis and the OVN ports it refers to.
    #[cfg(not(loom))]
    crate::chassis::REMOTE_PORTS_SPEC,
];

/// The spec of a known kind.
pub fn spec(kind: SectionKind) -> Option<&'static SectionSpec> {
    KNOWN_SECTIONS.iter().find(|spec| spec.kind == kind)
}

/// The sections of one slot: the slot bytes plus a table of contents that
/// has been checked against them (every entry within the bytes).
#[derive(Clone, Copy)]
pub struct SlotSections<'a> {
    bytes: &'a [u8],
    toc: &'a [SectionEntry],
}

impl<'a> SlotSections<'a> {
    /// Pair slot bytes with a checked table of contents.
    pub(crate) fn new(bytes: &'a [u8], toc: &'a [SectionEntry]) -> Self {
        Self { bytes, toc }
    }

    /// The table of contents.
    pub fn entries(&self) -> &'a [SectionEntry] {
        self.toc
    }

    /// The entry of a kind.
    pub fn entry(&self, kind: SectionKind) -> Option<&'a SectionEntry> {
        self.toc.iter().find(|entry| entry.kind == kind.0)
    }

    /// The raw bytes of a section (bounds-checked).
    pub fn bytes(&self, kind: SectionKind) -> Option<&'a [u8]> {
        let entry = self.entry(kind)?;
        let start = usize::try_from(entry.offset).ok()?;
        let end = start.checked_add(usize::try_from(entry.length).ok()?)?;
        self.bytes.get(start..end)
    }

    /// A section as a slice of `T`, if its element size is `size_of::<T>()`
    /// and it is suitably aligned.
    pub fn typed<T: Pod>(&self, kind: SectionKind) -> Option<&'a [T]> {
        let entry = self.entry(kind)?;
        if entry.element_size as usize != size_of::<T>() {
            return None;
        }
        let slice: &[T] = bytemuck::try_cast_slice(self.bytes(kind)?).ok()?;
        (slice.len() == entry.count as usize).then_some(slice)
    }

    /// The string blob (empty if the slot has none).
    pub fn strings(&self) -> Strings<'a> {
        Strings {
            blob: self.bytes(SectionKind::STRINGS).unwrap_or(&[]),
        }
    }

    /// The port map (empty if the slot has none).
    pub fn ports(&self) -> PortMapView<'a> {
        PortMapView {
            entries: self.typed(SectionKind::PORTS).unwrap_or(&[]),
            strings: self.strings(),
        }
    }

    /// Text dump of one section: the kind's own dump for known kinds, a
    /// one-line description for the others.
    pub fn dump(&self, kind: SectionKind) -> Option<String> {
        let entry = self.entry(kind)?;
        Some(match spec(kind) {
            Some(spec) => {
                let text = (spec.dump)(self);
                // An empty section still says what it is, so a dump is never
                // silently blank.
                if text.is_empty() {
                    format!("{}: no entries\n", kind.name())
                } else {
                    text
                }
            }
            None => format!("{}\n", describe_entry(entry)),
        })
    }
}

/// One line describing a table-of-contents entry.
pub fn describe_entry(entry: &SectionEntry) -> String {
    format!(
        "kind {} ({}) count {} element_size {} bytes {} offset {} flags {:#x}",
        entry.kind,
        SectionKind(entry.kind).name(),
        entry.count,
        entry.element_size,
        entry.length,
        entry.offset,
        entry.flags
    )
}

/// The deduplicated string blob.
#[derive(Debug, Clone, Copy)]
pub struct Strings<'a> {
    blob: &'a [u8],
}

impl<'a> Strings<'a> {
    /// The bytes of a string, if the reference lies within the blob.
    pub fn bytes(&self, string: StrRef) -> Option<&'a [u8]> {
        let start = string.offset as usize;
        self.blob
            .get(start..start.checked_add(string.len as usize)?)
    }

    /// A copy of a string, if the reference is valid and the bytes are UTF-8.
    /// (Copied before the check, so the result cannot change afterwards.)
    pub fn get(&self, string: StrRef) -> Option<String> {
        String::from_utf8(self.bytes(string)?.to_vec()).ok()
    }

    /// The whole blob (strings are UTF-8 only once checked, see
    /// [`Self::get`]).
    pub fn blob(&self) -> &'a [u8] {
        self.blob
    }

    /// Size of the blob in bytes.
    pub fn len(&self) -> usize {
        self.blob.len()
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.blob.is_empty()
    }

    /// Whether `string` is a valid reference into an already UTF-8-checked
    /// blob: within bounds and on character boundaries.
    fn check_ref(blob: &str, string: StrRef) -> bool {
        let start = string.offset as usize;
        let Some(end) = start.checked_add(string.len as usize) else {
            return false;
        };
        blob.get(start..end).is_some()
    }
}

fn validate_strings(sections: &SlotSections<'_>) -> Result<(), RefusalReason> {
    std::str::from_utf8(sections.strings().blob)
        .map(|_| ())
        .map_err(|_| RefusalReason::BadUtf8)
}

fn dump_strings(sections: &SlotSections<'_>) -> String {
    let strings = sections.strings();
    // Copy first: the shared bytes must not change between check and use.
    let copy = strings.blob.to_vec();
    format!(
        "strings: {} bytes\n{}\n",
        strings.len(),
        String::from_utf8_lossy(&copy)
    )
}

/// Port flag: the port is bound on this chassis.
pub const PORT_FLAG_LOCAL: u16 = 1 << 0;

/// One entry of the port map: what the fastpath needs to know about one of
/// its ports.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct PortMapEntry {
    /// Fastpath port id (the DPDK port index).
    pub port_id: u16,
    /// `PORT_FLAG_*` bits; unknown bits are ignored.
    pub flags: u16,
    /// Tunnel key of the logical datapath the port belongs to.
    pub datapath_key: u32,
    /// Tunnel key of the logical port within its datapath.
    pub port_key: u32,
    /// Logical port name (e.g. `pod.namespace`), in the string blob.
    pub name: StrRef,
    /// Reserved, zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<PortMapEntry>() == 24 && std::mem::align_of::<PortMapEntry>() == 4);

impl PortMapEntry {
    /// Whether the port is bound on this chassis.
    pub fn is_local(&self) -> bool {
        self.flags & PORT_FLAG_LOCAL != 0
    }
}

/// A port as the control process knows it, for building a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Fastpath port id.
    pub port_id: u16,
    /// Datapath tunnel key.
    pub datapath_key: u32,
    /// Port tunnel key.
    pub port_key: u32,
    /// Logical port name.
    pub name: String,
    /// Bound on this chassis.
    pub is_local: bool,
}

/// Read-only view of the port map, sorted by fastpath port id.
#[derive(Debug, Clone, Copy)]
pub struct PortMapView<'a> {
    entries: &'a [PortMapEntry],
    strings: Strings<'a>,
}

impl<'a> PortMapView<'a> {
    /// All entries, ascending by port id.
    pub fn entries(&self) -> &'a [PortMapEntry] {
        self.entries
    }

    /// Number of ports.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no ports.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of a fastpath port (binary search).
    pub fn get(&self, port_id: u16) -> Option<&'a PortMapEntry> {
        self.entries
            .binary_search_by_key(&port_id, |entry| entry.port_id)
            .ok()
            .and_then(|index| self.entries.get(index))
    }

    /// A copy of a port's logical name.
    pub fn name(&self, entry: &PortMapEntry) -> Option<String> {
        self.strings.get(entry.name)
    }

    /// Text dump, one line per port.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for entry in self.entries {
            let name = self.name(entry).unwrap_or_else(|| "<invalid>".to_owned());
            let _ = writeln!(
                out,
                "port {} datapath {} key {} name {} {}",
                entry.port_id,
                entry.datapath_key,
                entry.port_key,
                name,
                if entry.is_local() { "local" } else { "remote" }
            );
        }
        out
    }
}

fn validate_ports(sections: &SlotSections<'_>) -> Result<(), RefusalReason> {
    let Some(entries) = sections.typed::<PortMapEntry>(SectionKind::PORTS) else {
        return Err(RefusalReason::ElementSize);
    };
    // The strings hook ran first (registry order), so the blob is UTF-8.
    let blob = std::str::from_utf8(sections.strings().blob).map_err(|_| RefusalReason::BadUtf8)?;
    let mut previous: Option<u16> = None;
    for entry in entries {
        if previous.is_some_and(|previous| previous >= entry.port_id) {
            return Err(RefusalReason::PortOrder);
        }
        previous = Some(entry.port_id);
        if !Strings::check_ref(blob, entry.name) {
            return Err(RefusalReason::BadStringRef);
        }
    }
    Ok(())
}

fn dump_ports(sections: &SlotSections<'_>) -> String {
    sections.ports().dump()
}
