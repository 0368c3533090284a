//! The remote-chassis section: the other OVN chassis this node tunnels to,
//! compiled from the Southbound `Chassis` and `Encap` rows, and what the
//! fastpath needs to send Geneve to each (address, UDP port, checksum wish).
//!
//! Owns the `#[repr(C)]` element [`RemoteChassis`], its kind id
//! ([`SectionKind::REMOTE_CHASSIS`], 40: kinds from 40 up are outside the OVN
//! pipeline's range), its validation hook, its text dump, the slot-building
//! helper [`add_remote_chassis`] and a typed view. It must not know how
//! packets are encapsulated (the fastpath's tunnel module) nor read the
//! Southbound (the compiler does). The hook and dump are registered in
//! [`crate::sections::KNOWN_SECTIONS`] through [`REMOTE_CHASSIS_SPEC`].
//!
//! Beside it, the remote-port section ([`SectionKind::REMOTE_PORTS`], 41,
//! [`RemotePort`]): which logical port (an index into the OVN port section)
//! is bound to which remote chassis (an index into this section), so that
//! the fastpath sends a packet for that port through the tunnel.

use std::fmt::Write as _;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytemuck::{Pod, Zeroable};

use crate::builder::{BuildError, SlotBuilder};
use crate::layout::StrRef;
use crate::refusal::RefusalReason;
use crate::sections::{SectionKind, SectionSpec, SlotSections, Strings};

impl SectionKind {
    /// Remote chassis ([`RemoteChassis`]).
    pub const REMOTE_CHASSIS: SectionKind = SectionKind(40);
    /// Logical ports bound to remote chassis ([`RemotePort`]).
    pub const REMOTE_PORTS: SectionKind = SectionKind(41);
}

/// The registry entry of the remote-port section.
pub const REMOTE_PORTS_SPEC: SectionSpec = SectionSpec {
    kind: SectionKind::REMOTE_PORTS,
    name: "remote-ports",
    element_size: size_of::<RemotePort>() as u32,
    validate: validate_remote_ports,
    dump: dump_remote_ports,
};

/// One logical port bound to a remote chassis.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct RemotePort {
    /// Index of the port in the OVN port section.
    pub port: u32,
    /// Index of its chassis in the remote-chassis section.
    pub chassis: u32,
}
const _: () = assert!(size_of::<RemotePort>() == 8);

/// The registry entry of the remote-chassis section.
pub const REMOTE_CHASSIS_SPEC: SectionSpec = SectionSpec {
    kind: SectionKind::REMOTE_CHASSIS,
    name: "remote-chassis",
    element_size: size_of::<RemoteChassis>() as u32,
    validate: validate_remote_chassis,
    dump: dump_remote_chassis,
};

/// Address family values of [`RemoteChassis::family`].
pub mod family {
    /// IPv4 (the address is stored v4-mapped).
    pub const IPV4: u8 = 4;
    /// IPv6.
    pub const IPV6: u8 = 6;
}

/// Flag: the chassis wants the outer UDP checksum (`Encap.options:csum=true`).
pub const CHASSIS_FLAG_CSUM: u8 = 1 << 0;
/// Every flag this build knows.
pub const CHASSIS_FLAGS_KNOWN: u8 = CHASSIS_FLAG_CSUM;

/// One remote chassis and its Geneve endpoint.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct RemoteChassis {
    /// `Chassis.name`, in the string blob.
    pub name: StrRef,
    /// `Encap.ip`: IPv6, or IPv4 stored v4-mapped (`::ffff:a.b.c.d`).
    pub ip: [u8; 16],
    /// [`family`].
    pub family: u8,
    /// `CHASSIS_FLAG_*` bits.
    pub flags: u8,
    /// UDP destination port (`Encap.options:dst_port`, default 6081).
    pub dst_port: u16,
    /// Reserved, zero.
    pub reserved: u32,
}
const _: () =
    assert!(size_of::<RemoteChassis>() == 32 && std::mem::align_of::<RemoteChassis>() == 4);

impl RemoteChassis {
    /// The tunnel address, if the entry is well formed.
    pub fn addr(&self) -> Option<IpAddr> {
        let v6 = Ipv6Addr::from(self.ip);
        match self.family {
            family::IPV4 => v6.to_ipv4_mapped().map(IpAddr::V4),
            family::IPV6 => Some(IpAddr::V6(v6)),
            _ => None,
        }
    }

    /// Whether the chassis wants outer UDP checksums.
    pub fn wants_checksum(&self) -> bool {
        self.flags & CHASSIS_FLAG_CSUM != 0
    }
}

/// A remote chassis as the control process knows it, for building a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chassis {
    /// `Chassis.name`.
    pub name: String,
    /// Geneve tunnel address.
    pub ip: IpAddr,
    /// UDP destination port.
    pub dst_port: u16,
    /// Send outer UDP checksums to it.
    pub csum: bool,
}

/// Why remote-chassis entries are malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChassisError {
    /// A name reference is outside the string blob.
    #[error("remote chassis {index}: name outside the string blob")]
    BadName {
        /// Entry index.
        index: usize,
    },
    /// The family is neither 4 nor 6, or an IPv4 address is not v4-mapped.
    #[error("remote chassis {index}: bad address family {family}")]
    BadAddress {
        /// Entry index.
        index: usize,
        /// The family byte.
        family: u8,
    },
    /// Unknown flag bits, or reserved bytes not zero.
    #[error("remote chassis {index}: unknown flags {flags:#x} or reserved bits set")]
    UnknownFlags {
        /// Entry index.
        index: usize,
        /// The flags byte.
        flags: u8,
    },
    /// The UDP port is zero.
    #[error("remote chassis {index}: UDP port 0")]
    ZeroPort {
        /// Entry index.
        index: usize,
    },
    /// Entries are not strictly ascending by name (a duplicate, or no binary search).
    #[error("remote chassis {index}: not in ascending name order")]
    Order {
        /// Entry index.
        index: usize,
    },
}

impl ChassisError {
    /// The slot refusal reason this maps to.
    pub fn refusal(&self) -> RefusalReason {
        match self {
            ChassisError::BadName { .. } => RefusalReason::BadStringRef,
            ChassisError::UnknownFlags { .. } => RefusalReason::UnknownFlags,
            // No dedicated reason exists yet: a malformed OVN-derived entry.
            _ => RefusalReason::OvnReference,
        }
    }
}

/// Checks every entry: names, families, flags, ports, ascending names.
pub fn check_entries(entries: &[RemoteChassis], strings: &Strings<'_>) -> Result<(), ChassisError> {
    let mut previous: Option<&[u8]> = None;
    for (index, c) in entries.iter().enumerate() {
        let name = strings
            .bytes(c.name)
            .ok_or(ChassisError::BadName { index })?;
        if c.addr().is_none() {
            return Err(ChassisError::BadAddress {
                index,
                family: c.family,
            });
        }
        if c.flags & !CHASSIS_FLAGS_KNOWN != 0 || c.reserved != 0 {
            return Err(ChassisError::UnknownFlags {
                index,
                flags: c.flags,
            });
        }
        if c.dst_port == 0 {
            return Err(ChassisError::ZeroPort { index });
        }
        if previous.is_some_and(|p| p >= name) {
            return Err(ChassisError::Order { index });
        }
        previous = Some(name);
    }
    Ok(())
}

fn validate_remote_chassis(sections: &SlotSections<'_>) -> Result<(), RefusalReason> {
    let entries = sections
        .typed::<RemoteChassis>(SectionKind::REMOTE_CHASSIS)
        .ok_or(RefusalReason::ElementSize)?;
    check_entries(entries, &sections.strings()).map_err(|e| e.refusal())
}

fn dump_remote_chassis(sections: &SlotSections<'_>) -> String {
    sections.remote_chassis().dump()
}

/// Why remote-port entries are malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemotePortError {
    /// The port index is outside the OVN port section.
    #[error("remote port {index}: port {port} outside the port section")]
    Port {
        /// Entry index.
        index: usize,
        /// The port index found.
        port: u32,
    },
    /// The chassis index is outside the remote-chassis section.
    #[error("remote port {index}: chassis {chassis} outside the remote-chassis section")]
    Chassis {
        /// Entry index.
        index: usize,
        /// The chassis index found.
        chassis: u32,
    },
    /// Entries are not strictly ascending by port (a port bound twice).
    #[error("remote port {index}: not in ascending port order")]
    Order {
        /// Entry index.
        index: usize,
    },
}

/// Checks every remote-port entry against the sizes of the port and
/// remote-chassis sections.
pub fn check_remote_ports(
    entries: &[RemotePort],
    ports: usize,
    chassis: usize,
) -> Result<(), RemotePortError> {
    let mut previous: Option<u32> = None;
    for (index, r) in entries.iter().enumerate() {
        if r.port as usize >= ports {
            return Err(RemotePortError::Port {
                index,
                port: r.port,
            });
        }
        if r.chassis as usize >= chassis {
            return Err(RemotePortError::Chassis {
                index,
                chassis: r.chassis,
            });
        }
        if previous.is_some_and(|p| p >= r.port) {
            return Err(RemotePortError::Order { index });
        }
        previous = Some(r.port);
    }
    Ok(())
}

fn validate_remote_ports(sections: &SlotSections<'_>) -> Result<(), RefusalReason> {
    let entries = sections
        .typed::<RemotePort>(SectionKind::REMOTE_PORTS)
        .ok_or(RefusalReason::ElementSize)?;
    let ports = sections
        .typed::<crate::ovn::OvnLogicalPort>(SectionKind::OVN_PORTS)
        .map_or(0, <[_]>::len);
    let chassis = sections.remote_chassis().entries().len();
    check_remote_ports(entries, ports, chassis).map_err(|_| RefusalReason::OvnReference)
}

fn dump_remote_ports(sections: &SlotSections<'_>) -> String {
    let view = sections.remote_chassis();
    let ports = crate::ovn::OvnSections::of(sections);
    let mut out = String::new();
    for r in sections.remote_ports() {
        let port = ports
            .ports
            .get(r.port as usize)
            .map(|p| ports.string(p.name))
            .unwrap_or_else(|| "<invalid>".into());
        let chassis = view
            .entries()
            .get(r.chassis as usize)
            .and_then(|c| view.name(c))
            .unwrap_or_else(|| "<invalid>".into());
        let _ = writeln!(out, "port {port} on chassis {chassis}");
    }
    out
}

/// Adds the remote-port section; `bindings` are (port index, chassis
/// index) pairs, sorted here.
pub fn add_remote_ports(
    builder: &mut SlotBuilder,
    bindings: &[(u32, u32)],
) -> Result<(), BuildError> {
    let mut entries: Vec<RemotePort> = bindings
        .iter()
        .map(|&(port, chassis)| RemotePort { port, chassis })
        .collect();
    entries.sort_by_key(|r| r.port);
    entries.dedup_by_key(|r| r.port);
    builder.add_section(SectionKind::REMOTE_PORTS, &entries)
}

/// Adds the remote-chassis section, sorted by name.
pub fn add_remote_chassis(
    builder: &mut SlotBuilder,
    chassis: &[Chassis],
) -> Result<(), BuildError> {
    let mut sorted: Vec<&Chassis> = chassis.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted.dedup_by(|a, b| a.name == b.name);
    let mut entries = Vec::with_capacity(sorted.len());
    for c in sorted {
        let (ip, fam) = match c.ip {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), family::IPV4),
            IpAddr::V6(v6) => (v6.octets(), family::IPV6),
        };
        entries.push(RemoteChassis {
            name: builder.intern(&c.name)?,
            ip,
            family: fam,
            flags: if c.csum { CHASSIS_FLAG_CSUM } else { 0 },
            dst_port: c.dst_port,
            reserved: 0,
        });
    }
    builder.add_section(SectionKind::REMOTE_CHASSIS, &entries)
}

/// Read-only view of the remote chassis, ascending by name.
#[derive(Debug, Clone, Copy)]
pub struct RemoteChassisView<'a> {
    entries: &'a [RemoteChassis],
    strings: Strings<'a>,
}

impl<'a> SlotSections<'a> {
    /// The logical ports bound to remote chassis (empty if none).
    pub fn remote_ports(&self) -> &'a [RemotePort] {
        self.typed(SectionKind::REMOTE_PORTS).unwrap_or(&[])
    }

    /// The remote chassis (empty if the slot has none).
    pub fn remote_chassis(&self) -> RemoteChassisView<'a> {
        RemoteChassisView {
            entries: self.typed(SectionKind::REMOTE_CHASSIS).unwrap_or(&[]),
            strings: self.strings(),
        }
    }
}

impl<'a> RemoteChassisView<'a> {
    /// All entries.
    pub fn entries(&self) -> &'a [RemoteChassis] {
        self.entries
    }

    /// The entry of a chassis name (binary search).
    pub fn by_name(&self, name: &str) -> Option<&'a RemoteChassis> {
        self.entries
            .binary_search_by(|c| {
                self.strings
                    .bytes(c.name)
                    .unwrap_or_default()
                    .cmp(name.as_bytes())
            })
            .ok()
            .and_then(|i| self.entries.get(i))
    }

    /// The entry whose tunnel address is `ip` (the sender of a tunnel packet).
    pub fn by_addr(&self, ip: IpAddr) -> Option<&'a RemoteChassis> {
        self.entries.iter().find(|c| c.addr() == Some(ip))
    }

    /// A copy of an entry's name.
    pub fn name(&self, c: &RemoteChassis) -> Option<String> {
        self.strings.get(c.name)
    }

    /// Text dump, one line per chassis.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for c in self.entries {
            let name = self.name(c).unwrap_or_else(|| "<invalid>".into());
            let addr = c
                .addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|| "<invalid>".into());
            let _ = write!(out, "chassis {name} geneve {addr} port {}", c.dst_port);
            if c.wants_checksum() {
                out.push_str(" csum");
            }
            out.push('\n');
        }
        out
    }
}

/// The IPv4 address of a v4-mapped entry, for callers that only tunnel over IPv4.
pub fn ipv4_of(c: &RemoteChassis) -> Option<Ipv4Addr> {
    match c.addr()? {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate_slot;

    fn chassis(name: &str, ip: &str, csum: bool) -> Chassis {
        Chassis {
            name: name.into(),
            ip: ip.parse().unwrap(),
            dst_port: 6081,
            csum,
        }
    }

    /// A slot image in 8-byte aligned memory.
    fn image(list: &[Chassis]) -> Vec<u64> {
        let mut b = SlotBuilder::new();
        add_remote_chassis(&mut b, list).unwrap();
        let bytes = b.finish(1, 0);
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(&bytes);
        words
    }

    #[test]
    fn build_validate_view_and_dump() {
        let words = image(&[
            chassis("hv3", "2001:db8::3", true),
            chassis("hv2", "192.0.2.2", false),
        ]);
        let bytes: &[u8] = bytemuck::cast_slice(&words);
        let slot = validate_slot(bytes).unwrap();
        let sections = slot.sections(bytes);
        assert_eq!(validate_remote_chassis(&sections), Ok(()));
        let view = sections.remote_chassis();
        assert_eq!(view.entries().len(), 2);
        let hv2 = view.by_name("hv2").unwrap();
        assert_eq!(hv2.addr(), Some("192.0.2.2".parse().unwrap()));
        assert_eq!(ipv4_of(hv2), Some(Ipv4Addr::new(192, 0, 2, 2)));
        assert!(!hv2.wants_checksum());
        let hv3 = view.by_addr("2001:db8::3".parse().unwrap()).unwrap();
        assert_eq!(view.name(hv3).as_deref(), Some("hv3"));
        assert!(hv3.wants_checksum());
        assert!(view.by_name("hv4").is_none());
        assert_eq!(
            dump_remote_chassis(&sections),
            "chassis hv2 geneve 192.0.2.2 port 6081\nchassis hv3 geneve 2001:db8::3 port 6081 csum\n"
        );
    }

    #[test]
    fn malformed_entries_are_refused() {
        let words = image(&[
            chassis("a", "192.0.2.2", false),
            chassis("b", "192.0.2.3", true),
        ]);
        let bytes: &[u8] = bytemuck::cast_slice(&words);
        let slot = validate_slot(bytes).unwrap();
        let strings = slot.sections(bytes).strings();
        let good: Vec<RemoteChassis> = slot.sections(bytes).remote_chassis().entries().to_vec();
        assert_eq!(check_entries(&good, &strings), Ok(()));
        let edit = |f: &dyn Fn(&mut Vec<RemoteChassis>)| {
            let mut e = good.clone();
            f(&mut e);
            check_entries(&e, &strings).unwrap_err()
        };
        assert_eq!(
            edit(&|e| e[1].name.offset = 1000),
            ChassisError::BadName { index: 1 }
        );
        assert_eq!(
            edit(&|e| e[0].family = 5),
            ChassisError::BadAddress {
                index: 0,
                family: 5
            }
        );
        // An IPv4 entry whose address is not v4-mapped.
        assert!(matches!(
            edit(&|e| e[0].ip[10] = 0),
            ChassisError::BadAddress { .. }
        ));
        assert!(matches!(
            edit(&|e| e[0].flags = 0x80),
            ChassisError::UnknownFlags { .. }
        ));
        assert!(matches!(
            edit(&|e| e[0].reserved = 1),
            ChassisError::UnknownFlags { .. }
        ));
        assert_eq!(
            edit(&|e| e[1].dst_port = 0),
            ChassisError::ZeroPort { index: 1 }
        );
        assert_eq!(edit(&|e| e.swap(0, 1)), ChassisError::Order { index: 1 });
        assert_eq!(
            ChassisError::BadName { index: 0 }.refusal(),
            RefusalReason::BadStringRef
        );
    }

    #[test]
    fn remote_ports_build_validate_and_refuse() {
        let mut b = SlotBuilder::new();
        add_remote_chassis(
            &mut b,
            &[
                chassis("a", "192.0.2.2", false),
                chassis("b", "192.0.2.3", false),
            ],
        )
        .unwrap();
        let name = b.intern("p0").unwrap();
        let port = crate::ovn::OvnLogicalPort {
            datapath: 1,
            key: 1,
            kind: 0,
            flags: 0,
            fastpath_port: crate::ovn::NONE_U16,
            peer: crate::ovn::NONE_U32,
            name,
            first_security: 0,
            security_count: 0,
        };
        b.add_section(SectionKind::OVN_PORTS, &[port, port])
            .unwrap();
        add_remote_ports(&mut b, &[(1, 1), (0, 0)]).unwrap();
        let bytes = b.finish(1, 0);
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(&bytes);
        let bytes: &[u8] = bytemuck::cast_slice(&words);
        let slot = validate_slot(bytes).unwrap();
        let sections = slot.sections(bytes);
        assert_eq!(validate_remote_ports(&sections), Ok(()));
        let entries = sections.remote_ports();
        assert_eq!(
            entries,
            &[
                RemotePort {
                    port: 0,
                    chassis: 0
                },
                RemotePort {
                    port: 1,
                    chassis: 1
                }
            ]
        );
        assert_eq!(
            dump_remote_ports(&sections),
            "port p0 on chassis a\nport p0 on chassis b\n"
        );
        assert_eq!(
            check_remote_ports(entries, 1, 2),
            Err(RemotePortError::Port { index: 1, port: 1 })
        );
        assert_eq!(
            check_remote_ports(entries, 2, 1),
            Err(RemotePortError::Chassis {
                index: 1,
                chassis: 1
            })
        );
        let swapped = [entries[1], entries[0]];
        assert_eq!(
            check_remote_ports(&swapped, 2, 2),
            Err(RemotePortError::Order { index: 1 })
        );
    }

    #[test]
    fn spec_matches_the_element() {
        assert_eq!(REMOTE_CHASSIS_SPEC.element_size, 32);
        assert_eq!(SectionKind::REMOTE_CHASSIS.0, 40);
        assert!(
            crate::sections::KNOWN_SECTIONS
                .iter()
                .all(|s| s.kind != SectionKind::REMOTE_CHASSIS || s.name == "remote-chassis"),
            "kind 40 is taken by another section"
        );
    }
}
