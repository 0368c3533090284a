//! Logical-flow actions into fastpath instructions.
//!
//! Owns the translation of the typed action syntax tree into
//! [`OvnInstruction`]s: field references into vector slices, port names into
//! keys, nested actions into a header followed by their body. Every action
//! the interpreter cannot run yet becomes an `UNSUPPORTED` instruction
//! naming it. It must not evaluate anything.

use fastpath_tables::ovn::{
    base_slot, nested, op, pipeline, unsupported_index, FieldSlice, OvnInstruction,
};
use ovn_lflow::{Action, Arg, FieldKind, FieldRef, Function, NestedKind, SymbolTable};

use super::PortIndex;

/// Context of one logical flow's actions.
pub(crate) struct ActionContext<'a> {
    pub symtab: &'a SymbolTable,
    pub ports: &'a PortIndex,
    pub table: u8,
    pub pipeline: u8,
    /// Names of the unsupported actions met.
    pub unsupported: Vec<String>,
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
            Action::CtNext => self.unsupported("ct_next"),
            Action::CtClear => {
                // Without connection tracking the ct fields are zero; clearing
                // keeps them so.
                for name in ["ct_state", "ct_mark", "ct_label"] {
                    let f = FieldRef {
                        name: name.into(),
                        bits: None,
                        span: Default::default(),
                    };
                    if let Some(s) = self.slice(&f) {
                        let mut i = OvnInstruction::new(op::LOAD);
                        i.dst = s;
                        out.push(i);
                    }
                }
                return;
            }
            Action::CtCommit(_) | Action::CtCommitV1(_) | Action::CtCommitNat => {
                self.unsupported("ct_commit")
            }
            Action::CtSnatToVip | Action::CtNat { .. } => self.unsupported("ct_nat"),
            Action::CtLb { .. } => self.unsupported("ct_lb"),
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
                    NestedKind::Icmp6Error => return out.push(self.unsupported("icmp6_error")),
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
    }

    fn call(&mut self, dst: Option<&FieldRef>, func: Function, args: &[Arg]) -> OvnInstruction {
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
                    Function::SetMeter | Function::SetQueue | Function::Log => "meter_queue_log",
                    Function::Select => "select",
                    Function::ChkLbHairpin
                    | Function::ChkLbHairpinReply
                    | Function::CommitLbAff
                    | Function::ChkLbAff => "lb_affinity_hairpin",
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

#[cfg(test)]
mod tests {
    use super::*;
    use ovn_lflow::parse_actions;
    use std::collections::HashMap;

    fn compile(text: &str) -> (Vec<OvnInstruction>, Vec<String>) {
        let symtab = SymbolTable::ovn_23_03();
        let ports = PortIndex {
            keys: HashMap::from([("p3".to_string(), (1, 3))]),
            resident: HashMap::new(),
        };
        let mut ctx = ActionContext {
            symtab: &symtab,
            ports: &ports,
            table: 4,
            pipeline: pipeline::INGRESS,
            unsupported: Vec::new(),
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
    fn unsupported_actions_are_named() {
        let (c, u) = compile("ct_next;");
        assert_eq!(c[0].op, op::UNSUPPORTED);
        assert_eq!(u, vec!["ct_next".to_string()]);
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
