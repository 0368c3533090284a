//! The OVN 23.03 logical-field symbol table.
//!
//! Owns the names, widths, kinds, storage and prerequisites of every
//! logical field that OVN 23.03's `ovn_init_symtab()` defines, and the
//! definitions of predicates (`ip4`, `tcp`, `nd_ns`, ...). It does not parse
//! matches or actions and does not evaluate anything.

use std::collections::HashMap;

use crate::expr::{parse_match, Expr};

/// What kind of value a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldKind {
    /// An integer of `width` bits.
    Integer,
    /// A logical port name (`inport`, `outport`); stored as a port key in a register.
    String,
    /// A 1-bit boolean defined by an expression over other fields.
    Predicate,
    /// A field that OVN can only write, with a controller action (`icmp4.frag_mtu`).
    OvnWriteOnly,
}

/// Where a field's bits live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// A whole packet or metadata field, named as OVS names it (`reg14`, `eth_src`).
    Base {
        /// OVS field name.
        ovs: &'static str,
    },
    /// Bits `offset .. offset+width` of another symbol.
    Subfield {
        /// The containing symbol.
        parent: &'static str,
        /// Least significant bit within the parent.
        offset: u32,
    },
    /// A predicate's definition, in the match language.
    Expansion(&'static str),
    /// No storage (write-only controller fields).
    None,
}

/// A logical field descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Name as used in matches and actions.
    pub name: &'static str,
    /// Width in bits (0 for string fields, 1 for predicates).
    pub width: u32,
    /// Kind of value.
    pub kind: FieldKind,
    /// Storage.
    pub storage: Storage,
    /// Match that must hold for the field to be meaningful (`tcp` for `tcp.dst`).
    pub prerequisite: Option<&'static str>,
    /// OVN "nominal" fields (`eth.type`, `ip.proto`, `icmp6.type`, `icmp6.code`) and
    /// predicates over them: only testable for equality, never masked.
    pub nominal: bool,
    /// Only writable inside `ct_commit { }` (`ct_mark`, `ct_label` and their bits).
    pub ct_commit_scope: bool,
}

/// Where the bits of an integer symbol live after following subfield chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitLocation {
    /// The base symbol (`xxreg0`, `flags`, `eth.dst`).
    pub base: &'static str,
    /// Width of the base symbol.
    pub base_width: u32,
    /// Least significant bit within the base.
    pub offset: u32,
    /// Number of bits.
    pub width: u32,
}

/// The symbol table: fields by name and the parsed predicate and prerequisite texts.
#[derive(Debug, Clone)]
pub struct SymbolTable {
    fields: HashMap<&'static str, Field>,
    parsed: HashMap<&'static str, Expr>,
}

const XXREGS: [&str; 2] = ["xxreg0", "xxreg1"];
const XREGS: [&str; 5] = ["xreg0", "xreg1", "xreg2", "xreg3", "xreg4"];
const REGS: [&str; 10] = [
    "reg0", "reg1", "reg2", "reg3", "reg4", "reg5", "reg6", "reg7", "reg8", "reg9",
];

/// Bits of the logical flags register (`MFF_LOG_FLAGS`, OVS `reg10`), as in
/// OVN 23.03 `include/ovn/logical-fields.h` (only those with a symbol).
pub const FLAG_BITS: [(&str, u32); 5] = [
    ("flags.loopback", 0),
    ("flags.force_snat_for_dnat", 2),
    ("flags.force_snat_for_lb", 3),
    ("flags.skip_snat_for_lb", 9),
    ("flags.use_snat_zone", 11),
];

/// Connection-tracking state bits (`ct.NAME` is `ct_state[bit]`).
pub const CT_STATE_BITS: [(&str, u32); 8] = [
    ("ct.new", 0),
    ("ct.est", 1),
    ("ct.rel", 2),
    ("ct.rpl", 3),
    ("ct.inv", 4),
    ("ct.trk", 5),
    ("ct.snat", 6),
    ("ct.dnat", 7),
];

struct Builder {
    fields: HashMap<&'static str, Field>,
}

impl Builder {
    fn add(&mut self, f: Field) {
        self.fields.insert(f.name, f);
    }

    fn base(
        &mut self,
        name: &'static str,
        ovs: &'static str,
        width: u32,
        prereq: Option<&'static str>,
        nominal: bool,
    ) {
        self.add(Field {
            name,
            width,
            kind: FieldKind::Integer,
            storage: Storage::Base { ovs },
            prerequisite: prereq,
            nominal,
            ct_commit_scope: false,
        });
    }

    fn sub(
        &mut self,
        name: &'static str,
        parent: &'static str,
        lo: u32,
        hi: u32,
        prereq: Option<&'static str>,
    ) {
        self.add(Field {
            name,
            width: hi - lo + 1,
            kind: FieldKind::Integer,
            storage: Storage::Subfield { parent, offset: lo },
            prerequisite: prereq,
            nominal: false,
            ct_commit_scope: parent.starts_with("ct_mark") || parent.starts_with("ct_label"),
        });
    }

    fn pred(&mut self, name: &'static str, expansion: &'static str) {
        self.add(Field {
            name,
            width: 1,
            kind: FieldKind::Predicate,
            storage: Storage::Expansion(expansion),
            prerequisite: None,
            nominal: false,
            ct_commit_scope: false,
        });
    }
}

impl SymbolTable {
    /// The logical fields of OVN 23.03 (`lib/logical-fields.c`, `ovn_init_symtab`).
    ///
    /// Registers follow OVN's layout: `xxreg0..1` (128 bits), `xreg0..4`
    /// (64 bits; `xreg0..3` are halves of the xxregs), `reg0..9` (32 bits;
    /// `reg0` is the most significant word of `xxreg0`).
    pub fn ovn_23_03() -> SymbolTable {
        let mut b = Builder {
            fields: HashMap::new(),
        };
        for (name, ovs) in [("inport", "reg14"), ("outport", "reg15")] {
            b.add(Field {
                name,
                width: 0,
                kind: FieldKind::String,
                storage: Storage::Base { ovs },
                prerequisite: None,
                nominal: false,
                ct_commit_scope: false,
            });
        }
        b.base("xxreg0", "xxreg0", 128, None, false);
        b.base("xxreg1", "xxreg1", 128, None, false);
        for (i, name) in XREGS.iter().enumerate() {
            if i < 4 {
                let lo = 64 * (1 - (i as u32 % 2));
                b.sub(name, XXREGS[i / 2], lo, lo + 63, None);
            } else {
                b.base(name, "xreg4", 64, None, false);
            }
        }
        for (i, name) in REGS.iter().enumerate() {
            if i < 8 {
                let lo = 32 * (3 - (i as u32 % 4));
                b.sub(name, XXREGS[i / 4], lo, lo + 31, None);
            } else {
                let lo = 32 * (1 - (i as u32 % 2));
                b.sub(name, XREGS[i / 2], lo, lo + 31, None);
            }
        }
        b.base("flags", "reg10", 32, None, false);
        for (name, bit) in FLAG_BITS {
            b.sub(name, "flags", bit, bit, None);
        }
        b.base("ct_mark", "ct_mark", 32, None, false);
        b.base("ct_label", "ct_label", 128, None, false);
        for f in ["ct_mark", "ct_label"] {
            if let Some(x) = b.fields.get_mut(f) {
                x.ct_commit_scope = true;
            }
        }
        b.sub("ct_mark.blocked", "ct_mark", 0, 0, None);
        b.sub("ct_mark.natted", "ct_mark", 1, 1, None);
        b.sub("ct_mark.skip_snat", "ct_mark", 2, 2, None);
        b.sub("ct_mark.force_snat", "ct_mark", 3, 3, None);
        b.sub("ct_mark.ecmp_reply_port", "ct_mark", 16, 31, None);
        b.sub("ct_label.blocked", "ct_label", 0, 0, None);
        b.sub("ct_label.natted", "ct_label", 1, 1, None);
        b.sub("ct_label.skip_snat", "ct_label", 2, 2, None);
        b.sub("ct_label.force_snat", "ct_label", 3, 3, None);
        b.sub("ct_label.ecmp_reply_eth", "ct_label", 32, 79, None);
        b.sub("ct_label.ecmp_reply_port", "ct_label", 80, 95, None);
        b.sub("ct_label.label", "ct_label", 96, 127, None);
        b.base("ct_state", "ct_state", 32, None, false);
        for (name, bit) in CT_STATE_BITS {
            let pre = if name == "ct.trk" {
                None
            } else {
                Some("ct.trk")
            };
            b.sub(name, "ct_state", bit, bit, pre);
        }

        b.base("eth.src", "eth_src", 48, None, false);
        b.base("eth.dst", "eth_dst", 48, None, false);
        b.base("eth.type", "eth_type", 16, None, true);
        b.pred("eth.bcast", "eth.dst == ff:ff:ff:ff:ff:ff");
        b.sub("eth.mcast", "eth.dst", 40, 40, None);
        b.pred("eth.mcastv6", "eth.dst[32..47] == 0x3333");
        b.base("vlan.tci", "vlan_tci", 16, None, false);
        b.pred("vlan.present", "vlan.tci[12]");
        b.sub("vlan.pcp", "vlan.tci", 13, 15, Some("vlan.present"));
        b.sub("vlan.vid", "vlan.tci", 0, 11, Some("vlan.present"));

        b.pred("ip4", "eth.type == 0x800");
        b.pred("ip6", "eth.type == 0x86dd");
        b.pred("ip", "ip4 || ip6");
        b.base("ip.proto", "nw_proto", 8, Some("ip"), true);
        b.base("ip.dscp", "ip_dscp", 6, Some("ip"), false);
        b.base("ip.ecn", "nw_ecn", 2, Some("ip"), false);
        b.base("ip.ttl", "nw_ttl", 8, Some("ip"), false);
        b.base("ip4.src", "ip_src", 32, Some("ip4"), false);
        b.base("ip4.dst", "ip_dst", 32, Some("ip4"), false);
        b.pred("ip4.src_mcast", "ip4.src[28..31] == 0xe");
        b.pred("ip4.mcast", "eth.mcast && ip4.dst[28..31] == 0xe");
        b.pred("icmp4", "ip4 && ip.proto == 1");
        b.base("icmp4.type", "icmp_type", 8, Some("icmp4"), false);
        b.base("icmp4.code", "icmp_code", 8, Some("icmp4"), false);
        b.pred("igmp", "ip4 && ip.proto == 2");
        b.base("ip6.src", "ipv6_src", 128, Some("ip6"), false);
        b.base("ip6.dst", "ipv6_dst", 128, Some("ip6"), false);
        b.base("ip6.label", "ipv6_label", 20, Some("ip6"), false);
        b.pred(
            "ip6.mcast_rsvd",
            "ip6.dst[116..127] == 0xff0 && ip6.dst[0..111] == 0x0",
        );
        b.pred(
            "ip6.mcast_all_nodes",
            "ip6.dst == ff01::1 || ip6.dst == ff02::1",
        );
        b.pred(
            "ip6.mcast_all_rtrs",
            "ip6.dst == ff01::2 || ip6.dst == ff02::2 || ip6.dst == ff05::2",
        );
        b.pred("ip6.mcast_sol_node", "ip6.dst == ff02::1:ff00:0000/104");
        b.pred(
            "ip6.mcast_flood",
            "eth.mcastv6 && (ip6.mcast_rsvd || ip6.mcast_all_nodes || ip6.mcast_all_rtrs || ip6.mcast_sol_node)",
        );
        b.pred("ip6.mcast", "eth.mcastv6 && ip6.dst[120..127] == 0xff");
        b.pred("icmp6", "ip6 && ip.proto == 58");
        b.base("icmp6.type", "icmpv6_type", 8, Some("icmp6"), true);
        b.base("icmp6.code", "icmpv6_code", 8, Some("icmp6"), true);
        b.pred("icmp", "icmp4 || icmp6");
        b.base("ip.frag", "ip_frag", 2, Some("ip"), false);
        b.pred("ip.is_frag", "ip.frag[0]");
        b.pred("ip.later_frag", "ip.frag[1]");
        b.pred("ip.first_frag", "ip.is_frag && !ip.later_frag");
        b.pred("arp", "eth.type == 0x806");
        b.base("arp.op", "arp_op", 16, Some("arp"), false);
        b.base("arp.spa", "arp_spa", 32, Some("arp"), false);
        b.base("arp.sha", "arp_sha", 48, Some("arp"), false);
        b.base("arp.tpa", "arp_tpa", 32, Some("arp"), false);
        b.base("arp.tha", "arp_tha", 48, Some("arp"), false);
        // RARP shares the ARP header fields.
        b.pred("rarp", "eth.type == 0x8035");
        b.base("rarp.op", "arp_op", 16, Some("rarp"), false);
        b.base("rarp.spa", "arp_spa", 32, Some("rarp"), false);
        b.base("rarp.sha", "arp_sha", 48, Some("rarp"), false);
        b.base("rarp.tpa", "arp_tpa", 32, Some("rarp"), false);
        b.base("rarp.tha", "arp_tha", 48, Some("rarp"), false);
        b.pred(
            "nd",
            "icmp6.type == {135, 136} && icmp6.code == 0 && ip.ttl == 255",
        );
        b.pred(
            "nd_ns",
            "icmp6.type == 135 && icmp6.code == 0 && ip.ttl == 255",
        );
        b.pred(
            "nd_na",
            "icmp6.type == 136 && icmp6.code == 0 && ip.ttl == 255",
        );
        b.pred(
            "nd_rs",
            "icmp6.type == 133 && icmp6.code == 0 && ip.ttl == 255",
        );
        b.pred(
            "nd_ra",
            "icmp6.type == 134 && icmp6.code == 0 && ip.ttl == 255",
        );
        b.base("nd.target", "nd_target", 128, Some("nd"), false);
        b.base("nd.sll", "nd_sll", 48, Some("nd_ns"), false);
        b.base("nd.tll", "nd_tll", 48, Some("nd_na"), false);
        b.pred(
            "mldv1",
            "ip6.src == fe80::/10 && icmp6.type == {130, 131, 132}",
        );
        b.pred("mldv2", "ip6.dst == ff02::16 && icmp6.type == 143");
        b.pred("tcp", "ip.proto == 6");
        b.base("tcp.src", "tcp_src", 16, Some("tcp"), false);
        b.base("tcp.dst", "tcp_dst", 16, Some("tcp"), false);
        b.base("tcp.flags", "tcp_flags", 12, Some("tcp"), false);
        b.pred("udp", "ip.proto == 17");
        b.base("udp.src", "udp_src", 16, Some("udp"), false);
        b.base("udp.dst", "udp_dst", 16, Some("udp"), false);
        b.pred("sctp", "ip.proto == 132");
        b.base("sctp.src", "sctp_src", 16, Some("sctp"), false);
        b.base("sctp.dst", "sctp_dst", 16, Some("sctp"), false);
        b.base("pkt.mark", "pkt_mark", 32, None, false);
        for (name, width) in [("icmp4.frag_mtu", 16), ("icmp6.frag_mtu", 32)] {
            b.add(Field {
                name,
                width,
                kind: FieldKind::OvnWriteOnly,
                storage: Storage::None,
                prerequisite: None,
                nominal: false,
                ct_commit_scope: false,
            });
        }

        let mut parsed = HashMap::new();
        for f in b.fields.values() {
            let texts = [
                f.prerequisite,
                match f.storage {
                    Storage::Expansion(t) => Some(t),
                    _ => None,
                },
            ];
            for t in texts.into_iter().flatten() {
                // The texts above are fixed, and a unit test parses every one.
                let e = parse_match(t).unwrap_or(Expr::Bool(false));
                parsed.insert(t, e);
            }
        }
        let mut table = SymbolTable {
            fields: b.fields,
            parsed,
        };
        // Predicates over nominal fields are nominal themselves (OVN's expression levels).
        let names: Vec<&'static str> = table.fields.keys().copied().collect();
        for name in names {
            let nominal = table.predicate_is_nominal(name, 0);
            if let Some(f) = table.fields.get_mut(name) {
                if f.kind == FieldKind::Predicate {
                    f.nominal = nominal;
                }
            }
        }
        table
    }

    fn predicate_is_nominal(&self, name: &str, depth: usize) -> bool {
        fn walk(t: &SymbolTable, e: &Expr, depth: usize) -> bool {
            match e {
                Expr::Cmp(c) => t
                    .fields
                    .get(c.field.name.as_str())
                    .is_some_and(|f| match f.kind {
                        FieldKind::Predicate => t.predicate_is_nominal(f.name, depth + 1),
                        _ => f.nominal,
                    }),
                Expr::Not(e) => walk(t, e, depth),
                Expr::And(v) | Expr::Or(v) => v.iter().any(|e| walk(t, e, depth)),
                _ => false,
            }
        }
        if depth > 16 {
            return false;
        }
        match self.fields.get(name).map(|f| &f.storage) {
            Some(Storage::Expansion(text)) => {
                self.parsed.get(text).is_some_and(|e| walk(self, e, depth))
            }
            _ => false,
        }
    }

    /// Looks a field up by name.
    pub fn get(&self, name: &str) -> Option<&Field> {
        self.fields.get(name)
    }

    /// Every field, in no particular order.
    pub fn fields(&self) -> impl Iterator<Item = &Field> {
        self.fields.values()
    }

    /// The parsed form of a predicate expansion or prerequisite text held by this table.
    pub fn parsed(&self, text: &str) -> Option<&Expr> {
        self.parsed.get(text)
    }

    /// Follows subfield chains down to the base field of an integer symbol.
    pub fn locate(&self, name: &str) -> Option<BitLocation> {
        let mut f = self.fields.get(name)?;
        let width = f.width;
        let mut offset = 0;
        for _ in 0..8 {
            match &f.storage {
                Storage::Base { .. } if f.kind == FieldKind::Integer => {
                    return Some(BitLocation {
                        base: f.name,
                        base_width: f.width,
                        offset,
                        width,
                    })
                }
                Storage::Subfield { parent, offset: o } => {
                    offset += o;
                    f = self.fields.get(parent)?;
                }
                _ => return None,
            }
        }
        None
    }

    /// The OVS field that stores a base symbol (`reg14` for `inport`).
    pub fn ovs_field(&self, name: &str) -> Option<&'static str> {
        match self.fields.get(name)?.storage {
            Storage::Base { ovs } => Some(ovs),
            _ => None,
        }
    }

    /// Prerequisite texts of a symbol and of every symbol it is a subfield of.
    pub fn prerequisites(&self, name: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut cur = self.fields.get(name);
        for _ in 0..8 {
            let Some(f) = cur else { break };
            if let Some(p) = f.prerequisite {
                out.push(p);
            }
            cur = match f.storage {
                Storage::Subfield { parent, .. } => self.fields.get(parent),
                _ => None,
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_definition_parses() {
        let t = SymbolTable::ovn_23_03();
        for f in t.fields() {
            for text in [
                f.prerequisite,
                if let Storage::Expansion(x) = f.storage {
                    Some(x)
                } else {
                    None
                },
            ]
            .into_iter()
            .flatten()
            {
                assert!(parse_match(text).is_ok(), "{}: {text}", f.name);
                assert_ne!(t.parsed(text), Some(&Expr::Bool(false)), "{text}");
            }
        }
    }

    #[test]
    fn register_layout_matches_ovn() {
        let t = SymbolTable::ovn_23_03();
        let l = t.locate("reg0").unwrap();
        assert_eq!((l.base, l.offset, l.width), ("xxreg0", 96, 32));
        let l = t.locate("reg7").unwrap();
        assert_eq!((l.base, l.offset), ("xxreg1", 0));
        let l = t.locate("reg9").unwrap();
        assert_eq!((l.base, l.offset, l.width), ("xreg4", 0, 32));
        let l = t.locate("xreg0").unwrap();
        assert_eq!((l.base, l.offset, l.width), ("xxreg0", 64, 64));
        let l = t.locate("flags.use_snat_zone").unwrap();
        assert_eq!((l.base, l.offset, l.width), ("flags", 11, 1));
        assert_eq!(t.ovs_field("flags"), Some("reg10"));
        assert_eq!(t.ovs_field("outport"), Some("reg15"));
        let l = t.locate("ct.est").unwrap();
        assert_eq!((l.base, l.offset), ("ct_state", 1));
        assert_eq!(t.prerequisites("ct.est"), vec!["ct.trk"]);
        assert_eq!(t.prerequisites("tcp.dst"), vec!["tcp"]);
        assert!(
            t.get("reg10").is_none(),
            "OVN 23.03 exposes reg0..reg9 only"
        );
    }

    #[test]
    fn nominal_levels() {
        let t = SymbolTable::ovn_23_03();
        for n in ["eth.type", "ip.proto", "ip4", "tcp", "nd_ns", "icmp6", "ip"] {
            assert!(t.get(n).unwrap().nominal, "{n}");
        }
        for n in [
            "ip.is_frag",
            "eth.bcast",
            "eth.mcast",
            "ip4.src",
            "vlan.present",
        ] {
            assert!(!t.get(n).unwrap().nominal, "{n}");
        }
    }
}
