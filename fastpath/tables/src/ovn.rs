//! The OVN logical-pipeline sections: what the control process compiles out
//! of the Southbound database and the fastpath interprets.
//!
//! Owns the *logical flow vector* (the `#[repr(C)]` byte layout that both the
//! compiler and the interpreter address: the packet's flow key followed by
//! OVN's metadata and registers), the mapping of every OVN base field onto
//! it ([`base_slot`]), and the plain-data elements of the OVN sections with
//! their validation hooks and dumps. It must not know how flows are
//! classified or executed: that is the fastpath's business.
//!
//! Every multi-byte value in the vector is big-endian (network order), as in
//! the flow key, so a field is a byte range and bit `b` of a field of `n`
//! bytes lives in byte `n - 1 - b / 8`. A compiled match is a list of
//! [`OvnMatchTest`]s (byte range, value, mask) on the vector; an action
//! program is a list of [`OvnInstruction`]s whose operands are
//! [`FieldSlice`]s of the vector.

use std::fmt::Write as _;
use std::mem::size_of;

use bytemuck::{Pod, Zeroable};

use crate::layout::StrRef;
use crate::refusal::RefusalReason;
use crate::sections::{SectionKind, SlotSections, Strings};

/// Byte ranges of the logical flow vector.
pub mod vector {
    use std::ops::Range;
    /// The packet's flow key (104 bytes, `fastpath_packet::flowkey::field`).
    pub const KEY: Range<usize> = 0..104;
    /// Tunnel key of the logical datapath (OVS `metadata`).
    pub const DATAPATH: Range<usize> = 104..108;
    /// `inport` (OVS `reg14`): the logical input port key.
    pub const INPORT: Range<usize> = 108..112;
    /// `outport` (OVS `reg15`): the logical output port or group key.
    pub const OUTPORT: Range<usize> = 112..116;
    /// `flags` (OVS `reg10`).
    pub const FLAGS: Range<usize> = 116..120;
    /// `xxreg0` (`reg0..reg3`).
    pub const XXREG0: Range<usize> = 120..136;
    /// `xxreg1` (`reg4..reg7`).
    pub const XXREG1: Range<usize> = 136..152;
    /// `xreg4` (`reg8`, `reg9`).
    pub const XREG4: Range<usize> = 152..160;
    /// `ct_state` (OVS bit values: see [`super::ct_state`]).
    pub const CT_STATE: Range<usize> = 160..164;
    /// `ct_mark`.
    pub const CT_MARK: Range<usize> = 164..168;
    /// `ct_label`.
    pub const CT_LABEL: Range<usize> = 168..184;
    /// `pkt.mark`.
    pub const PKT_MARK: Range<usize> = 184..188;
    /// `vlan.tci` as OVS sees it: the TCI with bit 12 set when a tag is present.
    pub const VLAN_TCI: Range<usize> = 188..190;
    /// `icmp4.frag_mtu` / `icmp6.frag_mtu`: the MTU a generated ICMP
    /// "fragmentation needed" / "packet too big" error carries (written
    /// only inside `icmp4_error { }` / `icmp6_error { }`, never matched).
    pub const FRAG_MTU: Range<usize> = 190..192;
    /// Size of the vector in bytes.
    pub const LEN: usize = 192;
    /// Size of the vector in 64-bit words.
    pub const WORDS: usize = LEN / 8;
}

/// Where an OVN base field lives in the vector: `bytes` big-endian bytes at
/// `offset`, the field's bit 0 being bit `shift` of that integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseSlot {
    /// Byte offset.
    pub offset: u16,
    /// Number of bytes (1..=16).
    pub bytes: u8,
    /// Bit position of the field's bit 0.
    pub shift: u8,
}

/// The vector slot of an OVN base symbol (as `ovn_lflow::SymbolTable::locate`
/// names it), or `None` for a symbol that has no storage here.
pub fn base_slot(name: &str) -> Option<BaseSlot> {
    // Flow-key offsets (see fastpath_packet::flowkey::field).
    let (offset, bytes, shift): (usize, u8, u8) = match name {
        "eth.type" => (2, 2, 0),
        "eth.dst" => (8, 6, 0),
        "eth.src" => (14, 6, 0),
        "ip.frag" => (7, 1, 0),
        "ip.proto" => (22, 1, 0),
        "ip.ttl" => (23, 1, 0),
        "ip.dscp" => (24, 1, 2),
        "ip.ecn" => (24, 1, 0),
        "icmp4.type" | "icmp6.type" => (25, 1, 0),
        "icmp4.code" | "icmp6.code" => (26, 1, 0),
        "tcp.flags" => (28, 2, 0),
        "arp.op" | "rarp.op" => (30, 2, 0),
        "ip6.src" => (32, 16, 0),
        "ip4.src" | "arp.spa" | "rarp.spa" => (44, 4, 0),
        "ip6.dst" => (48, 16, 0),
        "ip4.dst" | "arp.tpa" | "rarp.tpa" => (60, 4, 0),
        "tcp.src" | "udp.src" | "sctp.src" => (64, 2, 0),
        "tcp.dst" | "udp.dst" | "sctp.dst" => (66, 2, 0),
        "ip6.label" => (68, 4, 0),
        "nd.target" => (72, 16, 0),
        "arp.sha" | "rarp.sha" | "nd.sll" => (88, 6, 0),
        "arp.tha" | "rarp.tha" | "nd.tll" => (94, 6, 0),
        "icmp4.frag_mtu" | "icmp6.frag_mtu" => (vector::FRAG_MTU.start, 2, 0),
        "inport" => (vector::INPORT.start, 4, 0),
        "outport" => (vector::OUTPORT.start, 4, 0),
        "flags" => (vector::FLAGS.start, 4, 0),
        "xxreg0" => (vector::XXREG0.start, 16, 0),
        "xxreg1" => (vector::XXREG1.start, 16, 0),
        "xreg4" => (vector::XREG4.start, 8, 0),
        "ct_state" => (vector::CT_STATE.start, 4, 0),
        "ct_mark" => (vector::CT_MARK.start, 4, 0),
        "ct_label" => (vector::CT_LABEL.start, 16, 0),
        "pkt.mark" => (vector::PKT_MARK.start, 4, 0),
        "vlan.tci" => (vector::VLAN_TCI.start, 2, 0),
        _ => return None,
    };
    Some(BaseSlot {
        offset: offset as u16,
        bytes,
        shift,
    })
}

/// Bits `lo .. lo + width` of the big-endian integer of `bytes` bytes at
/// `offset` of the vector: the operand of an instruction.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Pod, Zeroable)]
pub struct FieldSlice {
    /// Byte offset in the vector.
    pub offset: u16,
    /// Bytes of the containing integer (1..=16).
    pub bytes: u8,
    /// Least significant bit.
    pub lo: u8,
    /// Number of bits (1..=128).
    pub width: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
}
const _: () = assert!(size_of::<FieldSlice>() == 8);

impl FieldSlice {
    /// Whether the slice lies inside the vector and inside its integer.
    pub fn is_valid(&self) -> bool {
        (1..=16).contains(&self.bytes)
            && self.width >= 1
            && u32::from(self.lo) + u32::from(self.width) <= u32::from(self.bytes) * 8
            && usize::from(self.offset) + usize::from(self.bytes) <= vector::LEN
    }

    /// Reads the slice from vector bytes (which must hold it: see [`Self::is_valid`]).
    #[inline]
    pub fn read(&self, vector: &[u8]) -> u128 {
        let start = usize::from(self.offset);
        let mut value: u128 = 0;
        for &b in &vector[start..start + usize::from(self.bytes)] {
            value = (value << 8) | u128::from(b);
        }
        (value >> self.lo) & width_mask(self.width)
    }

    /// Writes `value` (truncated to the width) into the slice.
    #[inline]
    pub fn write(&self, vector: &mut [u8], value: u128) {
        let start = usize::from(self.offset);
        let bytes = usize::from(self.bytes);
        let mask = width_mask(self.width) << self.lo;
        let mut current: u128 = 0;
        for &b in &vector[start..start + bytes] {
            current = (current << 8) | u128::from(b);
        }
        let next = (current & !mask) | ((value << self.lo) & mask);
        for i in 0..bytes {
            vector[start + bytes - 1 - i] = (next >> (8 * i)) as u8;
        }
    }
}

/// The mask of the low `width` bits.
#[inline]
pub fn width_mask(width: u8) -> u128 {
    if width >= 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    }
}

/// Logical datapath kinds.
pub mod datapath_kind {
    /// A logical switch.
    pub const SWITCH: u8 = 0;
    /// A logical router.
    pub const ROUTER: u8 = 1;
}

/// One logical datapath (`Datapath_Binding`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OvnDatapath {
    /// Tunnel key.
    pub key: u32,
    /// [`datapath_kind`].
    pub kind: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
    /// Name (`external_ids:name`), for traces.
    pub name: StrRef,
}
const _: () = assert!(size_of::<OvnDatapath>() == 16);

/// Logical port kinds (`Port_Binding.type`).
pub mod port_kind {
    /// A VIF (empty type): a pod or VM interface.
    pub const VIF: u8 = 0;
    /// A patch port: its peer is in another datapath (`router` switch ports
    /// and router ports).
    pub const PATCH: u8 = 1;
    /// A localnet port: the physical network.
    pub const LOCALNET: u8 = 2;
    /// A localport: present on every chassis, never leaves it.
    pub const LOCALPORT: u8 = 3;
    /// The chassis-redirect port of a distributed gateway port.
    pub const CHASSISREDIRECT: u8 = 4;
    /// A gateway router port (`l3gateway`).
    pub const L3GATEWAY: u8 = 5;
    /// Any other type (`vtep`, `external`, `virtual`, ...).
    pub const OTHER: u8 = 6;
    /// Names, by kind.
    pub const NAMES: [&str; 7] = [
        "vif",
        "patch",
        "localnet",
        "localport",
        "chassisredirect",
        "l3gateway",
        "other",
    ];
}

/// Port flag: bound on this chassis (or present on every chassis).
pub const OVN_PORT_LOCAL: u8 = 1 << 0;
/// Port flag: `port_security` is set (check_in/out_port_sec apply).
pub const OVN_PORT_SECURED: u8 = 1 << 1;
/// No fastpath port / no peer.
pub const NONE_U16: u16 = u16::MAX;
/// No index.
pub const NONE_U32: u32 = u32::MAX;

/// One logical port (`Port_Binding`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OvnLogicalPort {
    /// Tunnel key of its datapath.
    pub datapath: u32,
    /// Port tunnel key.
    pub key: u32,
    /// [`port_kind`].
    pub kind: u8,
    /// `OVN_PORT_*` bits.
    pub flags: u8,
    /// The fastpath port that delivers it, or [`NONE_U16`].
    pub fastpath_port: u16,
    /// Index of the peer port (patch ports; for a chassisredirect port,
    /// its distributed port), or [`NONE_U32`].
    pub peer: u32,
    /// Logical port name.
    pub name: StrRef,
    /// First port-security entry ([`OvnPortSecurity`]).
    pub first_security: u32,
    /// Number of port-security entries.
    pub security_count: u32,
}
const _: () = assert!(size_of::<OvnLogicalPort>() == 32);

/// One `MAC [IP...]` clause of a port's `port_security`, flattened: one
/// entry per address (an entry with no IP stands for the MAC alone).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OvnPortSecurity {
    /// Allowed source (in) / destination (out) MAC.
    pub mac: [u8; 6],
    /// 4 for an IPv4 prefix, 6 for IPv6, 0 for none.
    pub family: u8,
    /// Prefix length.
    pub prefix: u8,
    /// Address (IPv4 v4-mapped).
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<OvnPortSecurity>() == 24);

/// One multicast group (`Multicast_Group`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OvnMulticastGroup {
    /// Tunnel key of its datapath.
    pub datapath: u32,
    /// Group tunnel key (>= 32768).
    pub key: u32,
    /// Group name (`_MC_flood`, ...).
    pub name: StrRef,
    /// First member in the member section (port indices, `u32`).
    pub first_member: u32,
    /// Number of members.
    pub member_count: u32,
}
const _: () = assert!(size_of::<OvnMulticastGroup>() == 24);

/// One `MAC_Binding`: the MAC of an IP behind a router port.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OvnMacBinding {
    /// Tunnel key of the datapath.
    pub datapath: u32,
    /// Key of the logical port it was learned on.
    pub port_key: u32,
    /// IP (IPv4 v4-mapped).
    pub ip: [u8; 16],
    /// MAC.
    pub mac: [u8; 6],
    /// Reserved, zero.
    pub reserved: [u8; 2],
}
const _: () = assert!(size_of::<OvnMacBinding>() == 32);

/// One `FDB` row: a MAC learned on a logical switch port (`put_fdb`),
/// read by `get_fdb` and `lookup_fdb`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OvnFdbEntry {
    /// Tunnel key of the datapath.
    pub datapath: u32,
    /// Key of the logical port the MAC is behind.
    pub port_key: u32,
    /// MAC.
    pub mac: [u8; 6],
    /// Reserved, zero.
    pub reserved: [u8; 2],
}
const _: () = assert!(size_of::<OvnFdbEntry>() == 16);

/// Pipelines.
pub mod pipeline {
    /// The ingress pipeline.
    pub const INGRESS: u8 = 0;
    /// The egress pipeline.
    pub const EGRESS: u8 = 1;
}

/// One classifier rule: one conjunction of a logical flow's match, on one
/// datapath (datapath groups are expanded).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OvnFlow {
    /// Tunnel key of the datapath.
    pub datapath: u32,
    /// [`pipeline`].
    pub pipeline: u8,
    /// Logical table id.
    pub table: u8,
    /// Priority.
    pub priority: u16,
    /// First test in the match-test section.
    pub first_test: u32,
    /// Number of tests (all must hold).
    pub test_count: u32,
    /// First instruction in the action section.
    pub first_action: u32,
    /// Number of instructions.
    pub action_count: u32,
    /// Stage name (`ls_in_l2_lkup`), for traces.
    pub stage: StrRef,
    /// The logical flow's match text, for traces.
    pub match_text: StrRef,
    /// The logical flow's actions text, for traces.
    pub actions_text: StrRef,
    /// First 32 bits of the logical flow's UUID, for traces.
    pub lflow: u32,
    /// Reserved, zero.
    pub reserved: u32,
}
const _: () = assert!(size_of::<OvnFlow>() == 56);

/// One test of a match: `(vector[offset .. offset + bytes] & mask) == value`,
/// with `value` and `mask` in the first `bytes` bytes of their arrays.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OvnMatchTest {
    /// Byte offset in the vector.
    pub offset: u16,
    /// Number of bytes (1..=16).
    pub bytes: u8,
    /// Reserved, zero.
    pub reserved: u8,
    /// Value bytes.
    pub value: [u8; 16],
    /// Mask bytes.
    pub mask: [u8; 16],
}
const _: () = assert!(size_of::<OvnMatchTest>() == 36);

/// Opcodes of [`OvnInstruction`].
pub mod op {
    /// `next(pipeline=count, table=arg)`.
    pub const NEXT: u16 = 1;
    /// `output`.
    pub const OUTPUT: u16 = 2;
    /// `drop`.
    pub const DROP: u16 = 3;
    /// `dst = imm` (imm: little-endian u128).
    pub const LOAD: u16 = 4;
    /// `dst = src`.
    pub const MOVE: u16 = 5;
    /// `dst <-> src`.
    pub const EXCHANGE: u16 = 6;
    /// `ip.ttl--`.
    pub const DEC_TTL: u16 = 7;
    /// A nested action of kind `arg` ([`super::nested`]); its body is the
    /// next `count` instructions.
    pub const NESTED: u16 = 8;
    /// `put_arp(dst=port, src=ip, imm[0..8]=mac slice)`; `arg` 6 for `put_nd`.
    pub const PUT_BINDING: u16 = 9;
    /// `dst = lookup_arp(imm[0..8]=port, src=ip, imm[8..16]=mac)`; `arg` 6 for `lookup_nd`.
    pub const LOOKUP_BINDING: u16 = 10;
    /// `get_arp(dst=port, src=ip)` sets `eth.dst`; `arg` 6 for `get_nd`.
    pub const GET_BINDING: u16 = 11;
    /// `dst = check_in_port_sec()`.
    pub const CHECK_IN_PORT_SEC: u16 = 12;
    /// `dst = check_out_port_sec()`.
    pub const CHECK_OUT_PORT_SEC: u16 = 13;
    /// `dst = check_pkt_larger(count)`.
    pub const CHECK_PKT_LARGER: u16 = 14;
    /// `dst = get_fdb(src=mac)`.
    pub const GET_FDB: u16 = 15;
    /// `put_fdb(dst=port, src=mac)`.
    pub const PUT_FDB: u16 = 16;
    /// `dst = lookup_fdb(imm[0..8]=port, src=mac)`.
    pub const LOOKUP_FDB: u16 = 17;
    /// An action this build cannot execute: drop, counted under
    /// `UNSUPPORTED_ACTIONS[arg]`.
    pub const UNSUPPORTED: u16 = 18;
    /// A conntrack action of kind `arg & 0xff` ([`super::ct`]) with the
    /// [`super::ct_flag`] bits in `arg >> 8`. `count` is the number of
    /// instructions that follow as its operands: the nested body of
    /// `ct_commit { }` (loads into `ct_mark`/`ct_label`), or one
    /// [`CT_ADDRESS`] per `ct_lb` backend. NAT kinds with a target carry the
    /// address in `imm` (IPv4 v4-mapped) and the port range in `dst.offset`
    /// (low) and `src.offset` (high); `ct_lb` carries its `hash_fields`
    /// bits ([`super::hash_field`]) in the low 32 bits of `imm`. Actions
    /// that recirculate (`ct_next`, `ct_lb`, NAT) are followed by a
    /// [`NEXT`] to the following table.
    pub const CT: u16 = 19;
    /// An operand of the preceding [`CT`] or [`LB_AFF_COMMIT`]: an address
    /// in `imm` (IPv4 v4-mapped), its family (4 or 6) in `count` and a port
    /// in `arg` (0: none).
    pub const CT_ADDRESS: u16 = 20;
    /// `dst = chk_lb_hairpin()` (`arg` 0) or `dst = chk_lb_hairpin_reply()`
    /// (`arg` 1).
    pub const CHK_LB_HAIRPIN: u16 = 21;
    /// `dst = chk_lb_aff()`: on a hit also loads the backend into `reg4`
    /// (IPv4) / `xxreg1` (IPv6) and its port into `reg8[0..15]`.
    pub const CHK_LB_AFF: u16 = 22;
    /// `commit_lb_aff(vip, backend, proto = arg, timeout = count)`: the two
    /// following [`CT_ADDRESS`] instructions are the VIP and the backend.
    pub const LB_AFF_COMMIT: u16 = 23;
    /// `set_meter(rate, burst)`: rate (kbps) in the low 64 bits of `imm`,
    /// burst (kb) in the high 64 bits.
    pub const SET_METER: u16 = 24;
    /// `log(...)`: `arg` the verdict ([`super::log_verdict`]), `count` the
    /// severity (syslog number); name and meter are in the flow's text.
    pub const LOG: u16 = 25;
    /// `dst = select(...)`: the next `count` instructions are its
    /// [`SELECT_MEMBER`] operands; one is chosen by a hash of the packet's
    /// addresses, protocol and ports, in proportion to the weights. Followed
    /// by a [`NEXT`] to the following table (OVN continues there, as a
    /// group bucket does).
    pub const SELECT: u16 = 26;
    /// An operand of the preceding [`SELECT`]: the value in `imm`, its
    /// weight in `arg` (at least 1).
    pub const SELECT_MEMBER: u16 = 27;
    /// Highest opcode.
    pub const MAX: u16 = 27;
}

/// OVS `ct_state` bits, as the vector's `ct_state` slot holds them.
pub mod ct_state {
    /// Start of a new connection.
    pub const NEW: u32 = 0x01;
    /// Part of an established connection.
    pub const EST: u32 = 0x02;
    /// Related to an established connection.
    pub const REL: u32 = 0x04;
    /// In the reply direction.
    pub const RPL: u32 = 0x08;
    /// Invalid.
    pub const INV: u32 = 0x10;
    /// Tracked.
    pub const TRK: u32 = 0x20;
    /// Source NAT applied.
    pub const SNAT: u32 = 0x40;
    /// Destination NAT applied.
    pub const DNAT: u32 = 0x80;
}

/// Kinds of [`op::CT`].
pub mod ct {
    /// `ct_next;`: track in the zone, continue with the next table.
    pub const NEXT: u16 = 0;
    /// `ct_commit { ... };`: commit with `ct_mark`/`ct_label` from the body.
    pub const COMMIT: u16 = 1;
    /// `ct_dnat;` / `ct_dnat(ip[, ports]);`
    pub const DNAT: u16 = 2;
    /// `ct_snat;` / `ct_snat(ip[, ports]);`
    pub const SNAT: u16 = 3;
    /// `ct_dnat_in_czone` (the router's common zone).
    pub const DNAT_IN_CZONE: u16 = 4;
    /// `ct_snat_in_czone` (the router's common zone).
    pub const SNAT_IN_CZONE: u16 = 5;
    /// `ct_lb;` / `ct_lb(backends=...)` (marks in `ct_label`).
    pub const LB: u16 = 6;
    /// `ct_lb_mark` (marks in `ct_mark`).
    pub const LB_MARK: u16 = 7;
    /// `ct_clear;`
    pub const CLEAR: u16 = 8;
    /// `ct_commit_nat;`: commit with the connection's existing NAT.
    pub const COMMIT_NAT: u16 = 9;
    /// `ct_snat_to_vip;`: commit with SNAT to the original destination.
    pub const SNAT_TO_VIP: u16 = 10;
    /// Names, by kind.
    pub const NAMES: [&str; 11] = [
        "ct_next",
        "ct_commit",
        "ct_dnat",
        "ct_snat",
        "ct_dnat_in_czone",
        "ct_snat_in_czone",
        "ct_lb",
        "ct_lb_mark",
        "ct_clear",
        "ct_commit_nat",
        "ct_snat_to_vip",
    ];
}

/// Flag bits of [`op::CT`] (in `arg >> 8`).
pub mod ct_flag {
    /// A NAT target address is in `imm`.
    pub const TARGET: u16 = 1 << 0;
    /// The target is IPv6.
    pub const TARGET_V6: u16 = 1 << 1;
    /// A port range is given.
    pub const PORTS: u16 = 1 << 2;
    /// `ct_lb(...; skip_snat)`.
    pub const SKIP_SNAT: u16 = 1 << 3;
    /// `ct_lb(...; force_snat)`.
    pub const FORCE_SNAT: u16 = 1 << 4;
}

/// Bits of `ct_lb`'s `hash_fields` (none: the default 5-tuple hash).
pub mod hash_field {
    /// `eth_src`
    pub const ETH_SRC: u32 = 1 << 0;
    /// `eth_dst`
    pub const ETH_DST: u32 = 1 << 1;
    /// `ip_src`
    pub const IP_SRC: u32 = 1 << 2;
    /// `ip_dst`
    pub const IP_DST: u32 = 1 << 3;
    /// `ipv6_src`
    pub const IPV6_SRC: u32 = 1 << 4;
    /// `ipv6_dst`
    pub const IPV6_DST: u32 = 1 << 5;
    /// `tp_src`
    pub const TP_SRC: u32 = 1 << 6;
    /// `tp_dst`
    pub const TP_DST: u32 = 1 << 7;
    /// `ip_proto`
    pub const IP_PROTO: u32 = 1 << 8;
    /// Names, by bit.
    pub const NAMES: [&str; 9] = [
        "eth_src", "eth_dst", "ip_src", "ip_dst", "ipv6_src", "ipv6_dst", "tp_src", "tp_dst",
        "ip_proto",
    ];
    /// The bits of a `hash_fields` text (`"ip_src,ip_dst"`); unknown names
    /// are ignored.
    pub fn parse(text: &str) -> u32 {
        text.split(',')
            .filter_map(|n| NAMES.iter().position(|x| *x == n.trim()))
            .fold(0, |acc, i| acc | (1 << i))
    }
}

/// Verdicts of [`op::LOG`].
pub mod log_verdict {
    /// `verdict=allow`
    pub const ALLOW: u16 = 0;
    /// `verdict=drop`
    pub const DROP: u16 = 1;
    /// `verdict=reject`
    pub const REJECT: u16 = 2;
}

/// Kinds of [`OvnCtZone`].
pub mod zone_kind {
    /// The conntrack zone of a logical port (switch ingress from it,
    /// egress to it).
    pub const PORT: u8 = 0;
    /// A datapath's DNAT zone (a router's NAT and common zone).
    pub const DNAT: u8 = 1;
    /// A datapath's SNAT zone (a router's SNAT; a switch's hairpin
    /// `ct_snat_to_vip`).
    pub const SNAT: u8 = 2;
}

/// One conntrack zone assignment.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OvnCtZone {
    /// Tunnel key of the datapath.
    pub datapath: u32,
    /// Port key ([`zone_kind::PORT`]), else [`NONE_U32`].
    pub port: u32,
    /// [`zone_kind`].
    pub kind: u8,
    /// Reserved, zero.
    pub reserved: u8,
    /// The zone (1..=65535; 0 is untracked traffic's default zone).
    pub zone: u16,
}
const _: () = assert!(size_of::<OvnCtZone>() == 12);

/// Kinds of [`op::NESTED`].
pub mod nested {
    /// `clone { }`
    pub const CLONE: u16 = 0;
    /// `arp { }`
    pub const ARP: u16 = 1;
    /// `nd_ns { }`
    pub const ND_NS: u16 = 2;
    /// `nd_na { }`
    pub const ND_NA: u16 = 3;
    /// `nd_na_router { }`
    pub const ND_NA_ROUTER: u16 = 4;
    /// `icmp4 { }`
    pub const ICMP4: u16 = 5;
    /// `icmp4_error { }`
    pub const ICMP4_ERROR: u16 = 6;
    /// `icmp6 { }`
    pub const ICMP6: u16 = 7;
    /// `icmp6_error { }`
    pub const ICMP6_ERROR: u16 = 8;
    /// `tcp_reset { }`
    pub const TCP_RESET: u16 = 9;
    /// Names, by kind.
    pub const NAMES: [&str; 10] = [
        "clone",
        "arp",
        "nd_ns",
        "nd_na",
        "nd_na_router",
        "icmp4",
        "icmp4_error",
        "icmp6",
        "icmp6_error",
        "tcp_reset",
    ];
}

/// Actions the interpreter cannot execute yet, by [`op::UNSUPPORTED`] index.
/// A packet reaching one is dropped and counted under its name.
pub const UNSUPPORTED_ACTIONS: &[&str] = &[
    "ct_next",
    "ct_commit",
    "ct_nat",
    "ct_lb",
    "ct_clear",
    "ct_other",
    "dhcp",
    "dns",
    "nd_ra",
    // Executable since; kept so that the indices after it stay stable.
    "icmp6_error",
    "sctp_abort",
    "reject",
    "igmp",
    "bfd",
    "controller_event",
    "meter_queue_log",
    "lb_affinity_hairpin",
    "ecmp",
    // Executable since; kept so that the indices after it stay stable.
    "select",
    "vport_svc",
    "other",
];

/// The index of an unsupported-action name (`"other"` if not listed).
pub fn unsupported_index(name: &str) -> u16 {
    let other = UNSUPPORTED_ACTIONS.len() - 1;
    UNSUPPORTED_ACTIONS
        .iter()
        .position(|n| *n == name)
        .unwrap_or(other) as u16
}

/// One action instruction.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OvnInstruction {
    /// Opcode ([`op`]).
    pub op: u16,
    /// First small operand.
    pub arg: u16,
    /// Second operand (nested body length, pipeline, length).
    pub count: u32,
    /// Destination field.
    pub dst: FieldSlice,
    /// Source field.
    pub src: FieldSlice,
    /// Immediate: a little-endian u128, or two further field slices.
    pub imm: [u8; 16],
}
const _: () = assert!(size_of::<OvnInstruction>() == 40);

impl OvnInstruction {
    /// An instruction with no operands.
    pub fn new(op: u16) -> Self {
        OvnInstruction {
            op,
            ..Zeroable::zeroed()
        }
    }
    /// The immediate as an integer.
    pub fn imm_value(&self) -> u128 {
        u128::from_le_bytes(self.imm)
    }
    /// The immediate's first field slice.
    pub fn imm_slice0(&self) -> FieldSlice {
        bytemuck::pod_read_unaligned(&self.imm[..8])
    }
    /// The immediate's second field slice.
    pub fn imm_slice1(&self) -> FieldSlice {
        bytemuck::pod_read_unaligned(&self.imm[8..])
    }
    /// Sets the immediate to two field slices.
    pub fn set_imm_slices(&mut self, a: FieldSlice, b: FieldSlice) {
        self.imm[..8].copy_from_slice(bytemuck::bytes_of(&a));
        self.imm[8..].copy_from_slice(bytemuck::bytes_of(&b));
    }
    /// Which operands are field slices that must be valid.
    fn slices(&self) -> (bool, bool, u8) {
        match self.op {
            op::LOAD
            | op::CHECK_IN_PORT_SEC
            | op::CHECK_OUT_PORT_SEC
            | op::CHECK_PKT_LARGER
            | op::CHK_LB_HAIRPIN
            | op::CHK_LB_AFF
            | op::SELECT => (true, false, 0),
            op::MOVE | op::EXCHANGE | op::GET_BINDING | op::GET_FDB | op::PUT_FDB => {
                (true, true, 0)
            }
            op::PUT_BINDING => (true, true, 1),
            op::LOOKUP_BINDING => (true, true, 2),
            op::LOOKUP_FDB => (true, true, 1),
            _ => (false, false, 0),
        }
    }
}

/// The OVN section kinds.
impl SectionKind {
    /// Logical datapaths ([`OvnDatapath`]).
    pub const OVN_DATAPATHS: SectionKind = SectionKind(16);
    /// Logical ports ([`OvnLogicalPort`]).
    pub const OVN_PORTS: SectionKind = SectionKind(17);
    /// Port-security entries ([`OvnPortSecurity`]).
    pub const OVN_PORT_SECURITY: SectionKind = SectionKind(18);
    /// Multicast groups ([`OvnMulticastGroup`]).
    pub const OVN_MCAST_GROUPS: SectionKind = SectionKind(19);
    /// Multicast group members (`u32` port indices).
    pub const OVN_MCAST_MEMBERS: SectionKind = SectionKind(20);
    /// MAC bindings ([`OvnMacBinding`]).
    pub const OVN_MAC_BINDINGS: SectionKind = SectionKind(21);
    /// Classifier rules ([`OvnFlow`]).
    pub const OVN_FLOWS: SectionKind = SectionKind(22);
    /// Match tests ([`OvnMatchTest`]).
    pub const OVN_MATCH_TESTS: SectionKind = SectionKind(23);
    /// Action instructions ([`OvnInstruction`]).
    pub const OVN_ACTIONS: SectionKind = SectionKind(24);
    /// Conntrack zones ([`OvnCtZone`]); absent: every zone is 0.
    pub const OVN_CT_ZONES: SectionKind = SectionKind(25);
    /// FDB entries ([`OvnFdbEntry`]); absent: the FDB is empty.
    pub const OVN_FDB: SectionKind = SectionKind(26);
}

/// All OVN sections of a slot, typed (each empty when absent).
#[derive(Debug, Clone, Copy)]
pub struct OvnSections<'a> {
    /// Datapaths.
    pub datapaths: &'a [OvnDatapath],
    /// Ports.
    pub ports: &'a [OvnLogicalPort],
    /// Port security.
    pub port_security: &'a [OvnPortSecurity],
    /// Multicast groups.
    pub groups: &'a [OvnMulticastGroup],
    /// Multicast members.
    pub members: &'a [u32],
    /// MAC bindings.
    pub mac_bindings: &'a [OvnMacBinding],
    /// FDB entries.
    pub fdb: &'a [OvnFdbEntry],
    /// Flows.
    pub flows: &'a [OvnFlow],
    /// Match tests.
    pub tests: &'a [OvnMatchTest],
    /// Instructions.
    pub actions: &'a [OvnInstruction],
    /// Conntrack zones.
    pub ct_zones: &'a [OvnCtZone],
    /// The string blob.
    pub strings: Strings<'a>,
}

impl<'a> OvnSections<'a> {
    /// The OVN sections of a validated slot.
    pub fn of(sections: &SlotSections<'a>) -> OvnSections<'a> {
        OvnSections {
            datapaths: sections.typed(SectionKind::OVN_DATAPATHS).unwrap_or(&[]),
            ports: sections.typed(SectionKind::OVN_PORTS).unwrap_or(&[]),
            port_security: sections
                .typed(SectionKind::OVN_PORT_SECURITY)
                .unwrap_or(&[]),
            groups: sections.typed(SectionKind::OVN_MCAST_GROUPS).unwrap_or(&[]),
            members: sections
                .typed(SectionKind::OVN_MCAST_MEMBERS)
                .unwrap_or(&[]),
            mac_bindings: sections.typed(SectionKind::OVN_MAC_BINDINGS).unwrap_or(&[]),
            fdb: sections.typed(SectionKind::OVN_FDB).unwrap_or(&[]),
            flows: sections.typed(SectionKind::OVN_FLOWS).unwrap_or(&[]),
            tests: sections.typed(SectionKind::OVN_MATCH_TESTS).unwrap_or(&[]),
            actions: sections.typed(SectionKind::OVN_ACTIONS).unwrap_or(&[]),
            ct_zones: sections.typed(SectionKind::OVN_CT_ZONES).unwrap_or(&[]),
            strings: sections.strings(),
        }
    }

    /// A copy of a string, `"<invalid>"` if the reference is bad.
    pub fn string(&self, s: StrRef) -> String {
        self.strings.get(s).unwrap_or_else(|| "<invalid>".into())
    }
}

fn range_ok(first: u32, count: u32, len: usize) -> bool {
    (first as u64) + (count as u64) <= len as u64
}

fn str_ok(strings: &Strings<'_>, s: StrRef) -> bool {
    strings.bytes(s).is_some()
}

/// Checks every cross-reference of the OVN sections. Runs once, as the hook
/// of the flows section (the last OVN kind); the per-kind hooks only check
/// element sizes.
pub(crate) fn validate_ovn(sections: &SlotSections<'_>) -> Result<(), RefusalReason> {
    let s = OvnSections::of(sections);
    let refs = RefusalReason::OvnReference;
    for d in s.datapaths {
        if d.kind > datapath_kind::ROUTER || !str_ok(&s.strings, d.name) {
            return Err(refs);
        }
    }
    for p in s.ports {
        if p.kind > port_kind::OTHER
            || (p.peer != NONE_U32 && p.peer as usize >= s.ports.len())
            || !str_ok(&s.strings, p.name)
            || !range_ok(p.first_security, p.security_count, s.port_security.len())
        {
            return Err(refs);
        }
    }
    for g in s.groups {
        if !range_ok(g.first_member, g.member_count, s.members.len()) || !str_ok(&s.strings, g.name)
        {
            return Err(refs);
        }
    }
    if s.members.iter().any(|m| *m as usize >= s.ports.len()) {
        return Err(refs);
    }
    for f in s.flows {
        if f.pipeline > pipeline::EGRESS
            || !range_ok(f.first_test, f.test_count, s.tests.len())
            || !range_ok(f.first_action, f.action_count, s.actions.len())
            || ![f.stage, f.match_text, f.actions_text]
                .iter()
                .all(|x| str_ok(&s.strings, *x))
        {
            return Err(refs);
        }
        // Nested bodies stay inside their flow's program.
        let program = &s.actions[f.first_action as usize..][..f.action_count as usize];
        for (i, ins) in program.iter().enumerate() {
            let operands = match ins.op {
                op::NESTED | op::CT | op::SELECT => u64::from(ins.count),
                op::LB_AFF_COMMIT => 2,
                _ => 0,
            };
            if i as u64 + 1 + operands > program.len() as u64 {
                return Err(refs);
            }
            if ins.op == op::SELECT {
                let members = &program[i + 1..i + 1 + operands as usize];
                if members.is_empty()
                    || members
                        .iter()
                        .any(|x| x.op != op::SELECT_MEMBER || x.arg == 0)
                {
                    return Err(refs);
                }
            }
            if ins.op == op::LB_AFF_COMMIT || (ins.op == op::CT && ins.arg & 0xff != ct::COMMIT) {
                let n = operands as usize;
                if program[i + 1..i + 1 + n]
                    .iter()
                    .any(|x| x.op != op::CT_ADDRESS)
                {
                    return Err(refs);
                }
            }
        }
    }
    for t in s.tests {
        if !(1..=16).contains(&t.bytes)
            || usize::from(t.offset) + usize::from(t.bytes) > vector::LEN
        {
            return Err(refs);
        }
    }
    for ins in s.actions {
        if ins.op == 0 || ins.op > op::MAX {
            return Err(refs);
        }
        let (dst, src, extra) = ins.slices();
        if (dst && !ins.dst.is_valid())
            || (src && !ins.src.is_valid())
            || (extra >= 1 && !ins.imm_slice0().is_valid())
            || (extra >= 2 && !ins.imm_slice1().is_valid())
        {
            return Err(refs);
        }
        if (ins.op == op::MOVE || ins.op == op::EXCHANGE) && ins.dst.width != ins.src.width {
            return Err(refs);
        }
        if ins.op == op::NESTED && usize::from(ins.arg) >= nested::NAMES.len() {
            return Err(refs);
        }
        if ins.op == op::UNSUPPORTED && usize::from(ins.arg) >= UNSUPPORTED_ACTIONS.len() {
            return Err(refs);
        }
        if ins.op == op::CT && usize::from(ins.arg & 0xff) >= ct::NAMES.len() {
            return Err(refs);
        }
        if ins.op == op::CT_ADDRESS && !matches!(ins.count, 4 | 6) {
            return Err(refs);
        }
    }
    for z in s.ct_zones {
        if z.kind > zone_kind::SNAT || !s.datapaths.iter().any(|d| d.key == z.datapath) {
            return Err(refs);
        }
    }
    Ok(())
}

pub(crate) fn validate_size_only(_: &SlotSections<'_>) -> Result<(), RefusalReason> {
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

pub(crate) fn dump_datapaths(sections: &SlotSections<'_>) -> String {
    let s = OvnSections::of(sections);
    let mut out = String::new();
    for d in s.datapaths {
        let kind = if d.kind == datapath_kind::ROUTER {
            "router"
        } else {
            "switch"
        };
        let _ = writeln!(out, "datapath {} {kind} {}", d.key, s.string(d.name));
    }
    out
}

pub(crate) fn dump_ports(sections: &SlotSections<'_>) -> String {
    let s = OvnSections::of(sections);
    let mut out = String::new();
    for (i, p) in s.ports.iter().enumerate() {
        let kind = port_kind::NAMES
            .get(usize::from(p.kind))
            .copied()
            .unwrap_or("?");
        let _ = write!(
            out,
            "port {i} {} datapath {} key {} {kind}",
            s.string(p.name),
            p.datapath,
            p.key
        );
        if p.flags & OVN_PORT_LOCAL != 0 {
            out.push_str(" local");
        }
        if p.fastpath_port != NONE_U16 {
            let _ = write!(out, " fastpath-port {}", p.fastpath_port);
        }
        if p.peer != NONE_U32 {
            let _ = write!(out, " peer {}", p.peer);
        }
        if p.security_count > 0 {
            let _ = write!(out, " port-security {}", p.security_count);
        }
        out.push('\n');
    }
    out
}

pub(crate) fn dump_port_security(sections: &SlotSections<'_>) -> String {
    let s = OvnSections::of(sections);
    let mut out = String::new();
    for e in s.port_security {
        let _ = writeln!(
            out,
            "mac {} family {} addr {}/{}",
            mac(&e.mac),
            e.family,
            hex(&e.addr),
            e.prefix
        );
    }
    out
}

pub(crate) fn dump_groups(sections: &SlotSections<'_>) -> String {
    let s = OvnSections::of(sections);
    let mut out = String::new();
    for g in s.groups {
        let members: Vec<String> = s
            .members
            .get(g.first_member as usize..(g.first_member + g.member_count) as usize)
            .unwrap_or(&[])
            .iter()
            .map(|m| {
                s.ports
                    .get(*m as usize)
                    .map(|p| s.string(p.name))
                    .unwrap_or_default()
            })
            .collect();
        let _ = writeln!(
            out,
            "group {} datapath {} key {} members {}",
            s.string(g.name),
            g.datapath,
            g.key,
            members.join(",")
        );
    }
    out
}

pub(crate) fn dump_members(sections: &SlotSections<'_>) -> String {
    let s = OvnSections::of(sections);
    format!("{} member entries\n", s.members.len())
}

pub(crate) fn dump_mac_bindings(sections: &SlotSections<'_>) -> String {
    let s = OvnSections::of(sections);
    let mut out = String::new();
    for b in s.mac_bindings {
        let _ = writeln!(
            out,
            "datapath {} port {} ip {} mac {}",
            b.datapath,
            b.port_key,
            hex(&b.ip),
            mac(&b.mac)
        );
    }
    out
}

pub(crate) fn dump_fdb(sections: &SlotSections<'_>) -> String {
    let s = OvnSections::of(sections);
    let mut out = String::new();
    for e in s.fdb {
        let _ = writeln!(
            out,
            "datapath {} port {} mac {}",
            e.datapath,
            e.port_key,
            mac(&e.mac)
        );
    }
    out
}

pub(crate) fn dump_flows(sections: &SlotSections<'_>) -> String {
    let s = OvnSections::of(sections);
    let mut out = String::new();
    for f in s.flows {
        let _ = writeln!(
            out,
            "datapath {} {} table {} ({}) priority {} tests {} actions {} lflow {:08x}: match ({}) actions ({})",
            f.datapath,
            if f.pipeline == pipeline::EGRESS { "egress" } else { "ingress" },
            f.table,
            s.string(f.stage),
            f.priority,
            f.test_count,
            f.action_count,
            f.lflow,
            s.string(f.match_text),
            s.string(f.actions_text)
        );
    }
    out
}

pub(crate) fn dump_ct_zones(sections: &SlotSections<'_>) -> String {
    let s = OvnSections::of(sections);
    let mut out = String::new();
    for z in s.ct_zones {
        let what = match z.kind {
            zone_kind::PORT => format!("port {}", z.port),
            zone_kind::DNAT => "dnat".to_string(),
            _ => "snat".to_string(),
        };
        let _ = writeln!(out, "datapath {} {what} zone {}", z.datapath, z.zone);
    }
    out
}

pub(crate) fn dump_tests(sections: &SlotSections<'_>) -> String {
    let s = OvnSections::of(sections);
    let mut out = String::new();
    for t in s.tests {
        let n = usize::from(t.bytes).min(16);
        let _ = writeln!(
            out,
            "offset {} bytes {} value {} mask {}",
            t.offset,
            t.bytes,
            hex(&t.value[..n]),
            hex(&t.mask[..n])
        );
    }
    out
}

pub(crate) fn dump_actions(sections: &SlotSections<'_>) -> String {
    let s = OvnSections::of(sections);
    let mut out = String::new();
    for i in s.actions {
        let _ = writeln!(
            out,
            "op {} arg {} count {} dst {}/{}/{}+{} src {}/{}/{}+{} imm {}",
            i.op,
            i.arg,
            i.count,
            i.dst.offset,
            i.dst.bytes,
            i.dst.lo,
            i.dst.width,
            i.src.offset,
            i.src.bytes,
            i.src.lo,
            i.src.width,
            hex(&i.imm)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_read_and_write_big_endian_bits() {
        let mut v = [0u8; vector::LEN];
        let eth_dst = base_slot("eth.dst").unwrap();
        let mcast = FieldSlice {
            offset: eth_dst.offset,
            bytes: eth_dst.bytes,
            lo: 40,
            width: 1,
            reserved: [0; 3],
        };
        mcast.write(&mut v, 1);
        assert_eq!(v[8], 0x01, "eth.mcast is the I/G bit of the first byte");
        assert_eq!(mcast.read(&v), 1);
        let reg0 = FieldSlice {
            offset: vector::XXREG0.start as u16,
            bytes: 16,
            lo: 96,
            width: 32,
            reserved: [0; 3],
        };
        reg0.write(&mut v, 0x0a00_0001);
        assert_eq!(&v[120..124], &[10, 0, 0, 1]);
        assert_eq!(reg0.read(&v), 0x0a00_0001);
        let dscp = base_slot("ip.dscp").unwrap();
        let s = FieldSlice {
            offset: dscp.offset,
            bytes: 1,
            lo: 2,
            width: 6,
            reserved: [0; 3],
        };
        v[24] = 0x03;
        s.write(&mut v, 0x2e);
        assert_eq!(v[24], 0xbb);
        assert!(s.is_valid());
        assert!(!FieldSlice { lo: 3, ..s }.is_valid());
    }

    /// A slot with one router datapath, one flow running `program`, and
    /// `zones`; whether it validates.
    fn validates(program: &[OvnInstruction], zones: &[OvnCtZone]) -> bool {
        let mut b = crate::builder::SlotBuilder::new();
        let name = b.intern("lr0").unwrap();
        let text = b.intern("").unwrap();
        let dp = OvnDatapath {
            key: 1,
            kind: datapath_kind::ROUTER,
            reserved: [0; 3],
            name,
        };
        let flow = OvnFlow {
            datapath: 1,
            pipeline: pipeline::INGRESS,
            table: 0,
            priority: 0,
            first_test: 0,
            test_count: 0,
            first_action: 0,
            action_count: program.len() as u32,
            stage: text,
            match_text: text,
            actions_text: text,
            lflow: 0,
            reserved: 0,
        };
        b.add_section(SectionKind::OVN_DATAPATHS, &[dp]).unwrap();
        b.add_section(SectionKind::OVN_ACTIONS, program).unwrap();
        b.add_section(SectionKind::OVN_CT_ZONES, zones).unwrap();
        b.add_section(SectionKind::OVN_FLOWS, &[flow]).unwrap();
        let image = b.finish(1, 0);
        let mut words = vec![0u64; image.len().div_ceil(8)];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        bytes[..image.len()].copy_from_slice(&image);
        crate::validate::validate_slot(&bytes[..image.len()]).is_ok()
    }

    #[test]
    fn conntrack_operands_and_zones_are_validated() {
        let mut lb = OvnInstruction::new(op::CT);
        lb.arg = ct::LB_MARK | (ct_flag::SKIP_SNAT << 8);
        lb.count = 2;
        let mut backend = OvnInstruction::new(op::CT_ADDRESS);
        backend.count = 4;
        let next = OvnInstruction::new(op::NEXT);
        let zone = OvnCtZone {
            datapath: 1,
            port: NONE_U32,
            kind: zone_kind::DNAT,
            reserved: 0,
            zone: 7,
        };
        assert!(validates(&[lb, backend, backend, next], &[zone]));
        // An operand that is not an address, operands past the program, a
        // bad family, an unknown kind, a zone of an unknown datapath.
        assert!(!validates(&[lb, backend, next, next], &[zone]));
        assert!(!validates(&[lb, backend], &[zone]));
        let bad_family = OvnInstruction {
            count: 5,
            ..backend
        };
        assert!(!validates(&[lb, backend, bad_family, next], &[zone]));
        let unknown = OvnInstruction {
            arg: 200,
            count: 0,
            ..lb
        };
        assert!(!validates(&[unknown, next], &[zone]));
        assert!(!validates(
            &[next],
            &[OvnCtZone {
                datapath: 9,
                ..zone
            }]
        ));
        // A commit's body is loads, not addresses.
        let mut commit = OvnInstruction::new(op::CT);
        commit.arg = ct::COMMIT;
        commit.count = 1;
        let mut load = OvnInstruction::new(op::LOAD);
        load.dst = FieldSlice {
            offset: vector::CT_MARK.start as u16,
            bytes: 4,
            lo: 0,
            width: 1,
            reserved: [0; 3],
        };
        assert!(validates(&[commit, load, next], &[]));
        let mut hairpin = OvnInstruction::new(op::CHK_LB_HAIRPIN);
        assert!(
            !validates(&[hairpin], &[]),
            "its destination must be a valid slice"
        );
        hairpin.dst = load.dst;
        assert!(validates(&[hairpin, next], &[]));
        assert_eq!(
            hash_field::parse("ip_src, tp_dst,bogus"),
            hash_field::IP_SRC | hash_field::TP_DST
        );
    }

    #[test]
    fn every_slot_fits_the_vector() {
        for name in [
            "eth.dst",
            "ip6.dst",
            "nd.target",
            "xxreg1",
            "xreg4",
            "ct_label",
            "vlan.tci",
        ] {
            let s = base_slot(name).unwrap();
            assert!(usize::from(s.offset) + usize::from(s.bytes) <= vector::LEN);
        }
        assert!(
            base_slot("reg0").is_none(),
            "subfields resolve to their base"
        );
    }
}
