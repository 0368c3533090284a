//! Logical-flow actions into fastpath instructions.
//!
//! Owns the translation of the typed action syntax tree into
//! [`OvnInstruction`]s: field references into vector slices, port names into
//! keys, nested actions into a header followed by their body, conntrack
//! actions into an `op::CT` header with its operands (commit body, load
//! balancer backends) followed, for the actions that recirculate, by a
//! `next` to the following table. Every action the interpreter cannot run
//! yet becomes an `UNSUPPORTED` instruction naming it. It must not evaluate
//! anything.

use fastpath_tables::ovn::{
    base_slot, ct, ct_flag, hash_field, log_verdict, nested, op, pipeline, unsupported_index,
    FieldSlice, OvnInstruction,
};
use ovn_lflow::{
    Action, Arg, Constant, CtNatKind, FieldKind, FieldRef, Format, Function, LbSnat, NestedKind,
    SymbolTable,
};

use super::PortIndex;

/// Context of one logical flow's actions.
pub(crate) struct ActionContext<'a> {
    pub symtab: &'a SymbolTable,
    pub ports: &'a PortIndex,
    pub table: u8,
    pub pipeline: u8,
    /// Names of the unsupported actions met.
    pub unsupported: Vec<String>,
    /// Operands to emit after the instruction being compiled.
    pub pending: Vec<OvnInstruction>,
}

/// The vector slice of a field reference, or `None` if it has no storage.
pub fn field_slice(symtab: &SymbolTable, f: &FieldRef) -> Option<FieldSlice> {
    let field = symtab.get(&f.name)?;
    let (base, offset, width) = match field.kind {
        FieldKind::String => (field.name, 0, 32),
        FieldKind::Integer => {
            let loc = symtab.locate(&f.name)?;
            (loc.base, loc.offset, loc.width)
        }
        // `icmp4.frag_mtu` / `icmp6.frag_mtu`: 16 bits of the vector (an
        // IPv6 MTU above 65 535 needs jumbograms, which nothing here
        // carries; a load of such a value is refused).
        FieldKind::OvnWriteOnly => (field.name, 0, 16),
        _ => return None,
    };
    let slot = base_slot(base)?;
    let (lo, width) = match f.bits {
        Some((lo, hi)) if hi >= lo && hi < width => (offset + lo, hi - lo + 1),
        Some(_) => return None,
        None => (offset, width),
    };
    Some(FieldSlice {
        offset: slot.offset,
        bytes: slot.bytes,
        lo: u8::try_from(u32::from(slot.shift) + lo).ok()?,
        width: u8::try_from(width).ok()?,
        reserved: [0; 3],
    })
}

impl ActionContext<'_> {
    fn unsupported(&mut self, name: &str) -> OvnInstruction {
        self.unsupported.push(name.to_string());
        let mut i = OvnInstruction::new(op::UNSUPPORTED);
        i.arg = unsupported_index(name);
        i
    }

    /// `next;` to the following table of this pipeline (what a
    /// recirculating conntrack action continues with).
    fn next_table(&self) -> OvnInstruction {
        let mut i = OvnInstruction::new(op::NEXT);
        i.arg = u16::from(self.table) + 1;
        i.count = u32::from(self.pipeline);
        i
    }

    fn ct(&self, kind: u16, flags: u16) -> OvnInstruction {
        let mut i = OvnInstruction::new(op::CT);
        i.arg = kind | (flags << 8);
        i
    }

    fn slice(&self, f: &FieldRef) -> Option<FieldSlice> {
        field_slice(self.symtab, f)
    }

    fn arg_slice(&self, a: Option<&Arg>) -> Option<FieldSlice> {
        match a? {
            Arg::Name(f) => self.slice(f),
            _ => None,
        }
    }

    /// Compiles an action list.
    pub(crate) fn compile(&mut self, actions: &[Action]) -> Vec<OvnInstruction> {
        let mut out = Vec::new();
        for a in actions {
            self.one(a, &mut out);
        }
        out
    }

    fn one(&mut self, a: &Action, out: &mut Vec<OvnInstruction>) {
        let ins = match a {
            Action::Output => OvnInstruction::new(op::OUTPUT),
            Action::Drop => OvnInstruction::new(op::DROP),
            Action::Next { pipeline: p, table } => {
                let mut i = OvnInstruction::new(op::NEXT);
                let pipe = match p {
                    Some(ovn_lflow::Pipeline::Egress) => pipeline::EGRESS,
                    Some(ovn_lflow::Pipeline::Ingress) => pipeline::INGRESS,
                    None => self.pipeline,
                };
                let t = table.unwrap_or(u32::from(self.table) + 1);
                match u16::try_from(t) {
                    Ok(t) => i.arg = t,
                    Err(_) => return out.push(self.unsupported("other")),
                }
                i.count = u32::from(pipe);
                i
            }
            Action::Load { dst, value } => match self.slice(dst) {
                Some(s) if s.width < 128 && value.value >> s.width != 0 => {
                    self.unsupported("other")
                }
                Some(s) => {
                    let mut i = OvnInstruction::new(op::LOAD);
                    i.dst = s;
                    i.imm = value.value.to_le_bytes();
                    i
                }
                None => self.unsupported("other"),
            },
            Action::LoadString { dst, value } => match self.slice(dst) {
                Some(s) => {
                    let mut i = OvnInstruction::new(op::LOAD);
                    i.dst = s;
                    let key = self.ports.keys.get(value).map_or(0, |k| k.1);
                    i.imm = u128::from(key).to_le_bytes();
                    i
                }
                None => self.unsupported("other"),
            },
            Action::Move { dst, src } | Action::Exchange { a: dst, b: src } => {
                match (self.slice(dst), self.slice(src)) {
                    (Some(d), Some(s)) if d.width == s.width => {
                        let code = if matches!(a, Action::Move { .. }) {
                            op::MOVE
                        } else {
                            op::EXCHANGE
                        };
                        let mut i = OvnInstruction::new(code);
                        i.dst = d;
                        i.src = s;
                        i
                    }
                    _ => self.unsupported("other"),
                }
            }
            Action::DecTtl => OvnInstruction::new(op::DEC_TTL),
            Action::CtNext => {
                out.push(self.ct(ct::NEXT, 0));
                self.next_table()
            }
            Action::CtClear => self.ct(ct::CLEAR, 0),
            Action::CtCommit(body) => {
                let code = self.compile(body);
                if code.iter().any(|i| !matches!(i.op, op::LOAD | op::MOVE)) {
                    return out.push(self.unsupported("ct_commit"));
                }
                let mut i = self.ct(ct::COMMIT, 0);
                i.count = code.len() as u32;
                out.push(i);
                out.extend(code);
                return;
            }
            Action::CtCommitV1(_) => self.unsupported("ct_commit"),
            Action::CtCommitNat => {
                out.push(self.ct(ct::COMMIT_NAT, 0));
                self.next_table()
            }
            Action::CtSnatToVip => self.ct(ct::SNAT_TO_VIP, 0),
            Action::CtNat { kind, target } => {
                let k = match kind {
                    CtNatKind::Dnat => ct::DNAT,
                    CtNatKind::Snat => ct::SNAT,
                    CtNatKind::DnatInCzone => ct::DNAT_IN_CZONE,
                    CtNatKind::SnatInCzone => ct::SNAT_IN_CZONE,
                };
                let mut i = self.ct(k, 0);
                if let Some(t) = target {
                    let Some((addr, family)) = address(&t.addr) else {
                        return out.push(self.unsupported("ct_nat"));
                    };
                    let mut flags = ct_flag::TARGET;
                    if family == 6 {
                        flags |= ct_flag::TARGET_V6;
                    }
                    if let Some((lo, hi)) = t.ports {
                        flags |= ct_flag::PORTS;
                        i.dst.offset = lo;
                        i.src.offset = hi;
                    }
                    i.arg |= flags << 8;
                    i.imm = addr;
                }
                out.push(i);
                self.next_table()
            }
            Action::CtLb {
                mark,
                backends,
                hash_fields,
                snat,
            } => {
                let mut operands = Vec::new();
                for b in backends {
                    let Some((addr, family)) = address(&b.addr) else {
                        return out.push(self.unsupported("ct_lb"));
                    };
                    let mut a = OvnInstruction::new(op::CT_ADDRESS);
                    a.imm = addr;
                    a.count = u32::from(family);
                    a.arg = b.port.unwrap_or(0);
                    operands.push(a);
                }
                let flags = match snat {
                    Some(LbSnat::Skip) => ct_flag::SKIP_SNAT,
                    Some(LbSnat::Force) => ct_flag::FORCE_SNAT,
                    None => 0,
                };
                let mut i = self.ct(if *mark { ct::LB_MARK } else { ct::LB }, flags);
                i.count = operands.len() as u32;
                i.imm =
                    u128::from(hash_fields.as_deref().map_or(0, hash_field::parse)).to_le_bytes();
                out.push(i);
                out.extend(operands);
                self.next_table()
            }
            Action::Igmp => self.unsupported("igmp"),
            Action::HandleDhcpv6Reply => self.unsupported("dhcp"),
            Action::HandleBfdMsg => self.unsupported("bfd"),
            Action::Nested { kind, actions } => {
                let k = match kind {
                    NestedKind::Clone => nested::CLONE,
                    NestedKind::Arp => nested::ARP,
                    NestedKind::NdNs => nested::ND_NS,
                    NestedKind::NdNa => nested::ND_NA,
                    NestedKind::NdNaRouter => nested::ND_NA_ROUTER,
                    NestedKind::Icmp4 => nested::ICMP4,
                    NestedKind::Icmp4Error => nested::ICMP4_ERROR,
                    NestedKind::Icmp6 => nested::ICMP6,
                    NestedKind::TcpReset => nested::TCP_RESET,
                    NestedKind::Icmp6Error => nested::ICMP6_ERROR,
                    NestedKind::SctpAbort => return out.push(self.unsupported("sctp_abort")),
                    NestedKind::Reject => return out.push(self.unsupported("reject")),
                };
                let body = self.compile(actions);
                let mut i = OvnInstruction::new(op::NESTED);
                i.arg = k;
                i.count = body.len() as u32;
                out.push(i);
                out.extend(body);
                return;
            }
            Action::Call { func, args } => self.call(None, *func, args),
            Action::Assign { dst, func, args } => self.call(Some(dst), *func, args),
        };
        out.push(ins);
        out.append(&mut self.pending);
    }

    fn call(&mut self, dst: Option<&FieldRef>, func: Function, args: &[Arg]) -> OvnInstruction {
        if func == Function::CommitLbAff {
            return self.commit_lb_aff(args);
        }
        let d = dst.and_then(|f| self.slice(f));
        let a = |i: usize| self.arg_slice(args.get(i));
        let family = |f: Function| match f {
            Function::PutNd | Function::LookupNd | Function::GetNd => 6,
            _ => 4,
        };
        let built = match func {
            Function::PutArp | Function::PutNd => (|| {
                let mut i = OvnInstruction::new(op::PUT_BINDING);
                i.arg = family(func);
                i.dst = a(0)?;
                i.src = a(1)?;
                i.set_imm_slices(a(2)?, FieldSlice::default());
                Some(i)
            })(),
            Function::GetArp | Function::GetNd => (|| {
                let mut i = OvnInstruction::new(op::GET_BINDING);
                i.arg = family(func);
                i.dst = a(0)?;
                i.src = a(1)?;
                Some(i)
            })(),
            Function::LookupArp | Function::LookupNd => (|| {
                let mut i = OvnInstruction::new(op::LOOKUP_BINDING);
                i.arg = family(func);
                i.dst = d?;
                i.src = a(1)?;
                i.set_imm_slices(a(0)?, a(2)?);
                Some(i)
            })(),
            Function::CheckInPortSec | Function::CheckOutPortSec => (|| {
                let code = if func == Function::CheckInPortSec {
                    op::CHECK_IN_PORT_SEC
                } else {
                    op::CHECK_OUT_PORT_SEC
                };
                let mut i = OvnInstruction::new(code);
                i.dst = d?;
                Some(i)
            })(),
            Function::CheckPktLarger => (|| {
                let mut i = OvnInstruction::new(op::CHECK_PKT_LARGER);
                i.dst = d?;
                i.count = match args.first()? {
                    Arg::Int(c) => u32::try_from(c.value).ok()?,
                    _ => return None,
                };
                Some(i)
            })(),
            Function::GetFdb => (|| {
                let mut i = OvnInstruction::new(op::GET_FDB);
                i.dst = d?;
                i.src = a(0)?;
                Some(i)
            })(),
            Function::PutFdb => (|| {
                let mut i = OvnInstruction::new(op::PUT_FDB);
                i.dst = a(0)?;
                i.src = a(1)?;
                Some(i)
            })(),
            Function::ChkLbHairpin | Function::ChkLbHairpinReply => (|| {
                let mut i = OvnInstruction::new(op::CHK_LB_HAIRPIN);
                i.arg = u16::from(func == Function::ChkLbHairpinReply);
                i.dst = d?;
                Some(i)
            })(),
            Function::ChkLbAff => (|| {
                let mut i = OvnInstruction::new(op::CHK_LB_AFF);
                i.dst = d?;
                Some(i)
            })(),
            Function::SetMeter => (|| {
                let int = |a: Option<&Arg>| match a {
                    Some(Arg::Int(c)) => u64::try_from(c.value).ok(),
                    _ => None,
                };
                let rate = int(args.first())?;
                let burst = match args.get(1) {
                    None => 0,
                    some => int(some)?,
                };
                let mut i = OvnInstruction::new(op::SET_METER);
                i.imm = (u128::from(rate) | (u128::from(burst) << 64)).to_le_bytes();
                Some(i)
            })(),
            Function::Log => (|| {
                let mut i = OvnInstruction::new(op::LOG);
                i.count = 6; // info, OVN's default severity
                for a in args {
                    let Arg::Named { key, value } = a else {
                        continue;
                    };
                    let (Arg::Name(k), Arg::Name(v)) = (&**key, &**value) else {
                        continue;
                    };
                    match k.name.as_str() {
                        "verdict" => {
                            i.arg = match v.name.as_str() {
                                "allow" => log_verdict::ALLOW,
                                "drop" => log_verdict::DROP,
                                "reject" => log_verdict::REJECT,
                                _ => return None,
                            }
                        }
                        "severity" => {
                            i.count = match v.name.as_str() {
                                "alert" => 1,
                                "warning" => 4,
                                "notice" => 5,
                                "info" => 6,
                                "debug" => 7,
                                _ => return None,
                            }
                        }
                        _ => {}
                    }
                }
                Some(i)
            })(),
            Function::Select => (|| {
                let mut members = Vec::with_capacity(args.len());
                for a in args {
                    let (value, weight) = match a {
                        Arg::Int(c) => (c.value, 100),
                        Arg::Named { key, value } => match (&**key, &**value) {
                            (Arg::Int(k), Arg::Int(w)) => (k.value, u16::try_from(w.value).ok()?),
                            _ => return None,
                        },
                        _ => return None,
                    };
                    if weight == 0 {
                        return None;
                    }
                    let mut m = OvnInstruction::new(op::SELECT_MEMBER);
                    m.imm = value.to_le_bytes();
                    m.arg = weight;
                    members.push(m);
                }
                if members.is_empty() {
                    return None;
                }
                let mut i = OvnInstruction::new(op::SELECT);
                i.dst = d?;
                i.count = members.len() as u32;
                self.pending.extend(members);
                // Like a group bucket in OVN, the chosen member continues
                // in the next table.
                self.pending.push(self.next_table());
                Some(i)
            })(),
            Function::LookupFdb => (|| {
                let mut i = OvnInstruction::new(op::LOOKUP_FDB);
                i.dst = d?;
                i.src = a(1)?;
                i.set_imm_slices(a(0)?, FieldSlice::default());
                Some(i)
            })(),
            other => {
                let name = match other {
                    Function::PutDhcpOpts | Function::PutDhcpv6Opts => "dhcp",
                    Function::DnsLookup => "dns",
                    Function::PutNdRaOpts => "nd_ra",
                    Function::TriggerEvent => "controller_event",
                    Function::SetQueue => "meter_queue_log",
                    Function::CommitEcmpNh | Function::ChkEcmpNh | Function::ChkEcmpNhMac => "ecmp",
                    Function::BindVport | Function::HandleSvcCheck => "vport_svc",
                    _ => "other",
                };
                return self.unsupported(name);
            }
        };
        match built {
            Some(i) => i,
            None => self.unsupported("other"),
        }
    }
}

impl ActionContext<'_> {
    /// `commit_lb_aff(vip = "IP:PORT", backend = "IP:PORT", proto = P,
    /// timeout = T)`: the header, then the VIP and the backend.
    fn commit_lb_aff(&mut self, args: &[Arg]) -> OvnInstruction {
        let mut vip = None;
        let mut backend = None;
        let mut header = OvnInstruction::new(op::LB_AFF_COMMIT);
        for a in args {
            let Arg::Named { key, value } = a else {
                continue;
            };
            let Arg::Name(k) = &**key else { continue };
            match (k.name.as_str(), &**value) {
                ("vip", Arg::Str(s)) => vip = host_port(s),
                ("backend", Arg::Str(s)) => backend = host_port(s),
                ("proto", Arg::Name(p)) => {
                    header.arg = match p.name.as_str() {
                        "tcp" => 6,
                        "udp" => 17,
                        "sctp" => 132,
                        _ => 0,
                    }
                }
                ("timeout", Arg::Int(c)) => {
                    header.count = u32::try_from(c.value).unwrap_or(u32::MAX)
                }
                _ => {}
            }
        }
        match (vip, backend) {
            (Some(v), Some(b)) => {
                self.pending.extend([v, b]);
                header
            }
            _ => self.unsupported("lb_affinity_hairpin"),
        }
    }
}

/// The 16-byte address (IPv4 v4-mapped) and family of an address constant.
fn address(c: &Constant) -> Option<([u8; 16], u8)> {
    match c.format {
        Format::Ipv4 => Some((
            std::net::Ipv4Addr::from(u32::try_from(c.value).ok()?)
                .to_ipv6_mapped()
                .octets(),
            4,
        )),
        Format::Ipv6 => Some((c.value.to_be_bytes(), 6)),
        _ => None,
    }
}

/// An `IP:PORT` / `[IP6]:PORT` text as a [`op::CT_ADDRESS`] operand.
fn host_port(text: &str) -> Option<OvnInstruction> {
    use std::net::{IpAddr, SocketAddr};
    let (ip, port) = match text.parse::<SocketAddr>() {
        Ok(sa) => (sa.ip(), sa.port()),
        Err(_) => (text.trim_matches(['[', ']']).parse::<IpAddr>().ok()?, 0),
    };
    let mut i = OvnInstruction::new(op::CT_ADDRESS);
    let (bytes, family) = super::ip_bytes(ip);
    i.imm = bytes;
    i.count = u32::from(family);
    i.arg = port;
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovn_lflow::parse_actions;

    fn compile(text: &str) -> (Vec<OvnInstruction>, Vec<String>) {
        let symtab = SymbolTable::ovn_23_03();
        let ports = PortIndex {
            keys: [("p3".to_string(), (1, 3))].into_iter().collect(),
            resident: Default::default(),
        };
        let mut ctx = ActionContext {
            symtab: &symtab,
            ports: &ports,
            table: 4,
            pipeline: pipeline::INGRESS,
            unsupported: Vec::new(),
            pending: Vec::new(),
        };
        let code = ctx.compile(&parse_actions(text).unwrap());
        (code, ctx.unsupported)
    }

    #[test]
    fn loads_moves_and_next() {
        let (c, u) = compile("outport = \"p3\"; eth.dst <-> eth.src; reg0 = ip4.dst; next;");
        assert!(u.is_empty());
        assert_eq!(c[0].op, op::LOAD);
        assert_eq!(c[0].imm_value(), 3);
        assert_eq!(c[1].op, op::EXCHANGE);
        assert_eq!(
            (c[2].op, c[2].dst.lo, c[2].dst.width, c[2].src.offset),
            (op::MOVE, 96, 32, 60)
        );
        assert_eq!((c[3].op, c[3].arg, c[3].count), (op::NEXT, 5, 0));
    }

    #[test]
    fn select_compiles_to_weighted_members_then_next() {
        let (c, u) = compile("reg8[16..31] = select(1=100, 2=50);");
        assert!(u.is_empty(), "{u:?}");
        assert_eq!((c[0].op, c[0].count, c[0].dst.width), (op::SELECT, 2, 16));
        assert_eq!(
            (c[1].op, c[1].imm_value(), c[1].arg),
            (op::SELECT_MEMBER, 1, 100)
        );
        assert_eq!(
            (c[2].op, c[2].imm_value(), c[2].arg),
            (op::SELECT_MEMBER, 2, 50)
        );
        assert_eq!((c[3].op, c[3].arg), (op::NEXT, 5));
        // Unweighted members weigh 100; a zero weight is refused by name.
        let (c, _) = compile("reg8[16..31] = select(1, 2);");
        assert_eq!((c[1].arg, c[2].arg), (100, 100));
        let (_, u) = compile("reg8[16..31] = select(1=0);");
        assert_eq!(u, ["other"]);
    }

    #[test]
    fn nested_bodies_follow_their_header() {
        let (c, _) = compile("arp { eth.dst = ff:ff:ff:ff:ff:ff; arp.op = 1; output; }; next;");
        assert_eq!(
            (c[0].op, c[0].arg, c[0].count),
            (op::NESTED, nested::ARP, 3)
        );
        assert_eq!(c[3].op, op::OUTPUT);
        assert_eq!(c[4].op, op::NEXT);
    }

    #[test]
    fn conntrack_actions_compile_to_ct_headers_with_operands() {
        let (c, u) = compile("ct_next;");
        assert!(u.is_empty());
        assert_eq!((c[0].op, c[0].arg), (op::CT, ct::NEXT));
        assert_eq!((c[1].op, c[1].arg), (op::NEXT, 5));
        let (c, u) = compile(
            "reg0[1] = 0; ct_lb_mark(backends=10.0.0.12:8080,10.0.1.13:8080; hash_fields=\"ip_src\"; skip_snat);",
        );
        assert!(u.is_empty(), "{u:?}");
        assert_eq!(c[1].op, op::CT);
        assert_eq!(c[1].arg & 0xff, ct::LB_MARK);
        assert_eq!(c[1].arg >> 8, ct_flag::SKIP_SNAT);
        assert_eq!(c[1].count, 2);
        assert_eq!(c[1].imm_value() as u32, hash_field::IP_SRC);
        assert_eq!((c[2].op, c[2].arg, c[2].count), (op::CT_ADDRESS, 8080, 4));
        assert_eq!(&c[3].imm[12..], &[10, 0, 1, 13]);
        assert_eq!((c[4].op, c[4].arg), (op::NEXT, 5));
        let (c, u) = compile("ct_commit { ct_mark.blocked = 0; ct_label.label = reg3; }; next;");
        assert!(u.is_empty(), "{u:?}");
        assert_eq!((c[0].op, c[0].arg, c[0].count), (op::CT, ct::COMMIT, 2));
        assert_eq!((c[1].op, c[2].op, c[3].op), (op::LOAD, op::MOVE, op::NEXT));
        let (c, _) = compile("ct_dnat(10.0.1.13, 80-90);");
        assert_eq!(c[0].arg & 0xff, ct::DNAT);
        assert_eq!((c[0].dst.offset, c[0].src.offset), (80, 90));
        assert_eq!(&c[0].imm[12..], &[10, 0, 1, 13]);
        let (c, u) = compile(
            "commit_lb_aff(vip = \"10.0.0.101:53\", backend = \"10.0.0.12:5353\", proto = udp, timeout = 60); set_meter(1000, 100); log(name=\"np1\", severity=warning, verdict=drop);",
        );
        assert!(u.is_empty(), "{u:?}");
        assert_eq!((c[0].op, c[0].arg, c[0].count), (op::LB_AFF_COMMIT, 17, 60));
        assert_eq!((c[1].arg, c[2].arg), (53, 5353));
        assert_eq!(c[3].op, op::SET_METER);
        assert_eq!(c[3].imm_value(), 1000 | (100u128 << 64));
        assert_eq!(
            (c[4].op, c[4].arg, c[4].count),
            (op::LOG, log_verdict::DROP, 4)
        );
    }

    #[test]
    fn unsupported_actions_are_named() {
        let (c, u) = compile("reg0[1] = dns_lookup(); next;");
        assert_eq!(c[0].op, op::UNSUPPORTED);
        assert_eq!(u, vec!["dns".to_string()]);
        let (c, u) = compile("reg9[2] = lookup_arp(inport, arp.spa, arp.sha); next;");
        assert!(u.is_empty());
        assert_eq!(c[0].op, op::LOOKUP_BINDING);
        assert_eq!(
            c[0].imm_slice0().offset as usize,
            fastpath_tables::ovn::vector::INPORT.start
        );
    }
}
