//! Logical-flow actions: the typed syntax tree and the parser of the `actions` column.
//!
//! Owns the grammar of every action OVN 23.03 defines (the `OVNACTS` list of
//! `include/ovn/actions.h`): assignments, moves and exchanges, `next`,
//! `output`, conntrack actions, load balancing, the nested packet-building
//! actions (`arp { }`, `icmp4 { }`, ...) and the controller actions with
//! their argument lists. Field names are kept as written; checking them
//! against the symbol table and compiling actions is the caller's job.

use crate::expr::{FieldRef, Parser};
use crate::lexer::{tokenize, Constant, Format, ParseError, Token};

/// Which logical pipeline `next(pipeline=...)` jumps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipeline {
    /// `ingress`
    Ingress,
    /// `egress`
    Egress,
}

/// The flavours of conntrack NAT actions with an optional target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtNatKind {
    /// `ct_dnat`
    Dnat,
    /// `ct_snat`
    Snat,
    /// `ct_dnat_in_czone` (common zone of a distributed router)
    DnatInCzone,
    /// `ct_snat_in_czone`
    SnatInCzone,
}

/// The NAT target of `ct_dnat(IP[, PORT[-PORT]])`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatTarget {
    /// IPv4 or IPv6 address.
    pub addr: Constant,
    /// Optional port range (inclusive; equal bounds for one port).
    pub ports: Option<(u16, u16)>,
}

/// One load-balancer backend of `ct_lb(backends=...)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbBackend {
    /// IPv4 or IPv6 address.
    pub addr: Constant,
    /// Transport port, if given.
    pub port: Option<u16>,
}

/// SNAT behaviour requested by a `ct_lb` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbSnat {
    /// `skip_snat`
    Skip,
    /// `force_snat`
    Force,
}

/// Actions that hold a nested action list (`name { ... };`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NestedKind {
    /// `clone`
    Clone,
    /// `arp`
    Arp,
    /// `nd_ns`
    NdNs,
    /// `nd_na`
    NdNa,
    /// `nd_na_router`
    NdNaRouter,
    /// `icmp4`
    Icmp4,
    /// `icmp4_error`
    Icmp4Error,
    /// `icmp6`
    Icmp6,
    /// `icmp6_error`
    Icmp6Error,
    /// `tcp_reset`
    TcpReset,
    /// `sctp_abort`
    SctpAbort,
    /// `reject`
    Reject,
}

macro_rules! functions {
    ($( $(#[$doc:meta])* $var:ident = $name:literal, $result:literal; )*) => {
        /// Functions called as `name(args);` or `field = name(args);`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Function { $( $(#[$doc])* $var, )* }

        impl Function {
            /// Looks a function up by its name in the language.
            pub fn from_name(s: &str) -> Option<Function> {
                match s { $( $name => Some(Function::$var), )* _ => None }
            }
            /// The name in the language.
            pub fn name(self) -> &'static str {
                match self { $( Function::$var => $name, )* }
            }
            /// Whether the function yields a value (`field = f(...)`) rather than being a statement.
            pub fn returns_result(self) -> bool {
                match self { $( Function::$var => $result, )* }
            }
        }
    };
}

functions! {
    /// `get_arp(port, ip)`: set `eth.dst` from the MAC binding table.
    GetArp = "get_arp", false;
    /// `put_arp(port, ip, mac)`: learn a MAC binding.
    PutArp = "put_arp", false;
    /// `get_nd(port, ip6)`
    GetNd = "get_nd", false;
    /// `put_nd(port, ip6, mac)`
    PutNd = "put_nd", false;
    /// `set_meter(rate[, burst])`
    SetMeter = "set_meter", false;
    /// `set_queue(id)`
    SetQueue = "set_queue", false;
    /// `log(name=, severity=, verdict=, meter=)`
    Log = "log", false;
    /// `trigger_event(event=, ...)`
    TriggerEvent = "trigger_event", false;
    /// `bind_vport(vport, port)`
    BindVport = "bind_vport", false;
    /// `handle_svc_check(port)`
    HandleSvcCheck = "handle_svc_check", false;
    /// `fwd_group(liveness=, childports=...)`
    FwdGroup = "fwd_group", false;
    /// `put_fdb(port, mac)`
    PutFdb = "put_fdb", false;
    /// `commit_ecmp_nh(ipv6=, proto=)`
    CommitEcmpNh = "commit_ecmp_nh", false;
    /// `commit_lb_aff(vip=, backend=, proto=, timeout=)`
    CommitLbAff = "commit_lb_aff", false;
    /// `sample(probability=, collector_set=, obs_domain=, obs_point=)`
    Sample = "sample", false;
    /// `push(field)`
    Push = "push", false;
    /// `pop(field)`
    Pop = "pop", false;
    /// `select(values)`
    Select = "select", true;
    /// `put_dhcp_opts(...)`
    PutDhcpOpts = "put_dhcp_opts", true;
    /// `put_dhcpv6_opts(...)`
    PutDhcpv6Opts = "put_dhcpv6_opts", true;
    /// `dns_lookup()`
    DnsLookup = "dns_lookup", true;
    /// `put_nd_ra_opts(...)`
    PutNdRaOpts = "put_nd_ra_opts", true;
    /// `check_pkt_larger(len)`
    CheckPktLarger = "check_pkt_larger", true;
    /// `lookup_arp(port, ip, mac)`
    LookupArp = "lookup_arp", true;
    /// `lookup_nd(port, ip6, mac)`
    LookupNd = "lookup_nd", true;
    /// `lookup_arp_ip(port, ip)`
    LookupArpIp = "lookup_arp_ip", true;
    /// `lookup_nd_ip(port, ip6)`
    LookupNdIp = "lookup_nd_ip", true;
    /// `chk_lb_hairpin()`
    ChkLbHairpin = "chk_lb_hairpin", true;
    /// `chk_lb_hairpin_reply()`
    ChkLbHairpinReply = "chk_lb_hairpin_reply", true;
    /// `get_fdb(mac)`
    GetFdb = "get_fdb", true;
    /// `lookup_fdb(port, mac)`
    LookupFdb = "lookup_fdb", true;
    /// `check_in_port_sec()`
    CheckInPortSec = "check_in_port_sec", true;
    /// `check_out_port_sec()`
    CheckOutPortSec = "check_out_port_sec", true;
    /// `chk_ecmp_nh_mac()`
    ChkEcmpNhMac = "chk_ecmp_nh_mac", true;
    /// `chk_ecmp_nh()`
    ChkEcmpNh = "chk_ecmp_nh", true;
    /// `chk_lb_aff()`
    ChkLbAff = "chk_lb_aff", true;
}

/// One argument of a function call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A field or keyword (`inport`, `reg0[1..3]`, `info`, `tcp`, `true`).
    Name(FieldRef),
    /// An integer constant, possibly masked.
    Int(Constant),
    /// An address with a port: `10.0.0.1:80`.
    HostPort(Constant, u16),
    /// A string.
    Str(String),
    /// `{a, b, ...}`
    Set(Vec<Arg>),
    /// `key = value` (`offerip = 10.0.0.2`, `1 = 100` in `select`).
    Named {
        /// Left of `=`.
        key: Box<Arg>,
        /// Right of `=`.
        value: Box<Arg>,
    },
}

/// A parsed logical-flow action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `output;`
    Output,
    /// `drop;` (only ever alone).
    Drop,
    /// `next;`, `next(N);`, `next(pipeline=P, table=N);`
    Next {
        /// Pipeline, when named.
        pipeline: Option<Pipeline>,
        /// Table, when given; otherwise the following table.
        table: Option<u32>,
    },
    /// `field = constant;`
    Load {
        /// Destination.
        dst: FieldRef,
        /// Value.
        value: Constant,
    },
    /// `inport = "name";` / `outport = "";`
    LoadString {
        /// Destination (`inport`/`outport`).
        dst: FieldRef,
        /// Port name.
        value: String,
    },
    /// `dst = src;`
    Move {
        /// Destination.
        dst: FieldRef,
        /// Source.
        src: FieldRef,
    },
    /// `a <-> b;`
    Exchange {
        /// First field.
        a: FieldRef,
        /// Second field.
        b: FieldRef,
    },
    /// `ip.ttl--;`
    DecTtl,
    /// `ct_next;`
    CtNext,
    /// `ct_clear;`
    CtClear,
    /// `ct_commit;` or `ct_commit { ... };`
    CtCommit(Vec<Action>),
    /// Legacy `ct_commit(ct_mark=..., ct_label=...);`
    CtCommitV1(Vec<Arg>),
    /// `ct_commit_nat;`
    CtCommitNat,
    /// `ct_snat_to_vip;`
    CtSnatToVip,
    /// `ct_dnat;`, `ct_snat(IP);`, ...
    CtNat {
        /// Which action.
        kind: CtNatKind,
        /// NAT target, absent for "pass through the existing NAT".
        target: Option<NatTarget>,
    },
    /// `ct_lb;`, `ct_lb_mark(backends=...; hash_fields="..."; skip_snat);`
    CtLb {
        /// `ct_lb_mark` (marks in `ct_mark`) rather than `ct_lb` (`ct_label`).
        mark: bool,
        /// Backends; empty for "use the existing connection".
        backends: Vec<LbBackend>,
        /// `hash_fields="..."`.
        hash_fields: Option<String>,
        /// `skip_snat` / `force_snat`.
        snat: Option<LbSnat>,
    },
    /// An action with a nested list: `clone { ... };`, `arp { ... };`, ...
    Nested {
        /// Which action.
        kind: NestedKind,
        /// Nested actions.
        actions: Vec<Action>,
    },
    /// `igmp;`
    Igmp,
    /// `handle_dhcpv6_reply;`
    HandleDhcpv6Reply,
    /// `handle_bfd_msg();`
    HandleBfdMsg,
    /// A statement call: `put_arp(inport, arp.spa, arp.sha);`
    Call {
        /// Function.
        func: Function,
        /// Arguments.
        args: Vec<Arg>,
    },
    /// A call whose result goes into a field: `reg9[2] = lookup_arp(...);`
    Assign {
        /// Destination.
        dst: FieldRef,
        /// Function.
        func: Function,
        /// Arguments.
        args: Vec<Arg>,
    },
}

/// Parses the text of an `actions` column.
pub fn parse_actions(text: &str) -> Result<Vec<Action>, ParseError> {
    let tokens = tokenize(text)?;
    let mut p = Parser {
        toks: &tokens,
        pos: 0,
        depth: 0,
        not: false,
    };
    list(&mut p, &Token::End)
}

const MAX_NESTING: usize = 32;

fn list(p: &mut Parser<'_>, end: &Token) -> Result<Vec<Action>, ParseError> {
    if p.id_is("drop") && p.peek_at(1) == &Token::Semicolon {
        p.bump();
        p.bump();
        if !p.eat(end) {
            return Err(p.unexpected("`drop;' must be the only action"));
        }
        return Ok(vec![Action::Drop]);
    }
    let mut out = Vec::new();
    while !p.eat(end) {
        if p.at(&Token::End) {
            return Err(p.unexpected(&format!("expecting {end}")));
        }
        out.push(action(p)?);
        p.expect(&Token::Semicolon)?;
    }
    Ok(out)
}

fn nested_kind(s: &str) -> Option<NestedKind> {
    Some(match s {
        "clone" => NestedKind::Clone,
        "arp" => NestedKind::Arp,
        "nd_ns" => NestedKind::NdNs,
        "nd_na" => NestedKind::NdNa,
        "nd_na_router" => NestedKind::NdNaRouter,
        "icmp4" => NestedKind::Icmp4,
        "icmp4_error" => NestedKind::Icmp4Error,
        "icmp6" => NestedKind::Icmp6,
        "icmp6_error" => NestedKind::Icmp6Error,
        "tcp_reset" => NestedKind::TcpReset,
        "sctp_abort" => NestedKind::SctpAbort,
        "reject" => NestedKind::Reject,
        _ => return None,
    })
}

fn nested(p: &mut Parser<'_>) -> Result<Vec<Action>, ParseError> {
    if p.depth >= MAX_NESTING {
        return Err(p.error("Actions nested too deeply."));
    }
    p.expect(&Token::LCurly)?;
    p.depth += 1;
    let r = list(p, &Token::RCurly);
    p.depth -= 1;
    r
}

fn action(p: &mut Parser<'_>) -> Result<Action, ParseError> {
    let Token::Id(name) = p.peek() else {
        return Err(p.unexpected("expecting action"));
    };
    if matches!(
        p.peek_at(1),
        Token::Equals | Token::Exchange | Token::LSquare
    ) {
        return set_action(p);
    }
    if name == "ip.ttl" {
        p.bump();
        p.expect(&Token::Decrement)?;
        return Ok(Action::DecTtl);
    }
    let start = p.span().start;
    p.bump();
    Ok(match name.as_str() {
        "output" => Action::Output,
        "next" => next_action(p)?,
        "ct_next" => Action::CtNext,
        "ct_clear" => Action::CtClear,
        "ct_commit_nat" => Action::CtCommitNat,
        "ct_snat_to_vip" => Action::CtSnatToVip,
        "igmp" => Action::Igmp,
        "handle_dhcpv6_reply" => Action::HandleDhcpv6Reply,
        "handle_bfd_msg" => {
            if p.eat(&Token::LParen) {
                p.expect(&Token::RParen)?;
            }
            Action::HandleBfdMsg
        }
        "ct_commit" => {
            if p.at(&Token::LCurly) {
                Action::CtCommit(nested(p)?)
            } else if p.at(&Token::LParen) {
                Action::CtCommitV1(args(p)?)
            } else {
                Action::CtCommit(Vec::new())
            }
        }
        "ct_dnat" => ct_nat(p, CtNatKind::Dnat)?,
        "ct_snat" => ct_nat(p, CtNatKind::Snat)?,
        "ct_dnat_in_czone" => ct_nat(p, CtNatKind::DnatInCzone)?,
        "ct_snat_in_czone" => ct_nat(p, CtNatKind::SnatInCzone)?,
        "ct_lb" => ct_lb(p, false)?,
        "ct_lb_mark" => ct_lb(p, true)?,
        other => {
            if let Some(kind) = nested_kind(other) {
                Action::Nested {
                    kind,
                    actions: nested(p)?,
                }
            } else if let Some(func) = Function::from_name(other) {
                if func.returns_result() {
                    return Err(crate::lexer::ParseError::new(
                        start,
                        format!("`{other}' returns a result and must be assigned: `field = {other}(...)'."),
                    ));
                }
                Action::Call {
                    func,
                    args: args(p)?,
                }
            } else {
                return Err(crate::lexer::ParseError::new(
                    start,
                    format!("Unknown action `{other}'."),
                ));
            }
        }
    })
}

fn set_action(p: &mut Parser<'_>) -> Result<Action, ParseError> {
    let dst = p.field()?;
    if p.eat(&Token::Exchange) {
        let b = p.field()?;
        return Ok(Action::Exchange { a: dst, b });
    }
    p.expect(&Token::Equals)?;
    match p.peek() {
        Token::Id(name) if p.peek_at(1) == &Token::LParen => {
            let start = p.span().start;
            let Some(func) = Function::from_name(name) else {
                return Err(ParseError::new(
                    start,
                    format!("Unknown function `{name}'."),
                ));
            };
            if !func.returns_result() {
                return Err(ParseError::new(
                    start,
                    format!("`{name}' does not return a result."),
                ));
            }
            p.bump();
            Ok(Action::Assign {
                dst,
                func,
                args: args(p)?,
            })
        }
        Token::Id(_) => Ok(Action::Move {
            dst,
            src: p.field()?,
        }),
        Token::Int(c) => {
            let value = *c;
            p.bump();
            Ok(Action::Load { dst, value })
        }
        Token::Str(s) => {
            let value = s.clone();
            p.bump();
            Ok(Action::LoadString { dst, value })
        }
        _ => Err(p.unexpected("expecting constant, string or field")),
    }
}

fn next_action(p: &mut Parser<'_>) -> Result<Action, ParseError> {
    let mut pipeline = None;
    let mut table = None;
    if p.eat(&Token::LParen) {
        if let Token::Int(_) = p.peek() {
            table = Some(p.small_int("table number")?);
        } else {
            loop {
                if p.id_is("pipeline") {
                    p.bump();
                    p.expect(&Token::Equals)?;
                    pipeline = Some(if p.id_is("ingress") {
                        Pipeline::Ingress
                    } else if p.id_is("egress") {
                        Pipeline::Egress
                    } else {
                        return Err(p.unexpected("expecting `ingress' or `egress'"));
                    });
                    p.bump();
                } else if p.id_is("table") {
                    p.bump();
                    p.expect(&Token::Equals)?;
                    table = Some(p.small_int("table number")?);
                } else {
                    return Err(p.unexpected("expecting `pipeline' or `table'"));
                }
                if !p.eat(&Token::Comma) {
                    break;
                }
            }
        }
        p.expect(&Token::RParen)?;
        if table.is_some_and(|t| t > 255) {
            return Err(p.error("Table number out of range."));
        }
    }
    Ok(Action::Next { pipeline, table })
}

fn ip_constant(p: &mut Parser<'_>) -> Result<Constant, ParseError> {
    match p.peek() {
        Token::Int(c) if matches!(c.format, Format::Ipv4 | Format::Ipv6) && c.mask.is_none() => {
            let c = *c;
            p.bump();
            Ok(c)
        }
        _ => Err(p.unexpected("expecting IPv4 or IPv6 address")),
    }
}

fn port(p: &mut Parser<'_>) -> Result<u16, ParseError> {
    let v = p.small_int("port number")?;
    u16::try_from(v).map_err(|_| p.error("Port number must be less than 65536."))
}

fn ct_nat(p: &mut Parser<'_>, kind: CtNatKind) -> Result<Action, ParseError> {
    if !p.eat(&Token::LParen) {
        return Ok(Action::CtNat { kind, target: None });
    }
    let addr = ip_constant(p)?;
    let mut ports = None;
    if p.eat(&Token::Comma) {
        let lo = port(p)?;
        if lo == 0 {
            return Err(p.error("range can't be 0"));
        }
        let hi = if p.eat(&Token::Hyphen) {
            let hi = port(p)?;
            if hi <= lo {
                return Err(p.error("range high should be greater than range low"));
            }
            hi
        } else {
            lo
        };
        ports = Some((lo, hi));
    }
    p.expect(&Token::RParen)?;
    Ok(Action::CtNat {
        kind,
        target: Some(NatTarget { addr, ports }),
    })
}

fn ct_lb(p: &mut Parser<'_>, mark: bool) -> Result<Action, ParseError> {
    let mut backends = Vec::new();
    let mut hash_fields = None;
    let mut snat = None;
    if p.eat(&Token::LParen) {
        if !p.id_is("backends") {
            return Err(p.unexpected("expecting `backends'"));
        }
        p.bump();
        p.expect(&Token::Equals)?;
        loop {
            let bracketed = p.eat(&Token::LSquare);
            let addr = ip_constant(p)?;
            if bracketed {
                p.expect(&Token::RSquare)?;
            }
            let port = if p.eat(&Token::Colon) {
                Some(port(p)?)
            } else {
                None
            };
            if addr.format == Format::Ipv6 && port.is_some() && !bracketed {
                return Err(p.error("IPv6 backend with a port must be written [address]:port."));
            }
            backends.push(LbBackend { addr, port });
            if !p.eat(&Token::Comma) {
                break;
            }
        }
        while p.eat(&Token::Semicolon) {
            if p.id_is("hash_fields") {
                p.bump();
                p.expect(&Token::Equals)?;
                let Token::Str(s) = p.peek() else {
                    return Err(p.unexpected("expecting string"));
                };
                hash_fields = Some(s.clone());
                p.bump();
            } else if p.id_is("skip_snat") {
                p.bump();
                snat = Some(LbSnat::Skip);
            } else if p.id_is("force_snat") {
                p.bump();
                snat = Some(LbSnat::Force);
            } else {
                return Err(p.unexpected("expecting `hash_fields', `skip_snat' or `force_snat'"));
            }
        }
        p.expect(&Token::RParen)?;
    }
    Ok(Action::CtLb {
        mark,
        backends,
        hash_fields,
        snat,
    })
}

fn args(p: &mut Parser<'_>) -> Result<Vec<Arg>, ParseError> {
    p.expect(&Token::LParen)?;
    let mut out = Vec::new();
    if p.eat(&Token::RParen) {
        return Ok(out);
    }
    loop {
        let a = arg_atom(p, 0)?;
        if p.eat(&Token::Equals) {
            let v = arg_atom(p, 0)?;
            out.push(Arg::Named {
                key: Box::new(a),
                value: Box::new(v),
            });
        } else {
            out.push(a);
        }
        if !p.eat(&Token::Comma) {
            break;
        }
    }
    p.expect(&Token::RParen)?;
    Ok(out)
}

fn arg_atom(p: &mut Parser<'_>, depth: usize) -> Result<Arg, ParseError> {
    match p.peek() {
        Token::Id(_) => Ok(Arg::Name(p.field()?)),
        Token::Str(s) => {
            let s = s.clone();
            p.bump();
            Ok(Arg::Str(s))
        }
        Token::Int(c) => {
            let c = *c;
            p.bump();
            if p.eat(&Token::Colon) {
                Ok(Arg::HostPort(c, port(p)?))
            } else {
                Ok(Arg::Int(c))
            }
        }
        Token::LCurly if depth < 4 => {
            p.bump();
            let mut items = Vec::new();
            while !p.eat(&Token::RCurly) {
                items.push(arg_atom(p, depth + 1)?);
                p.eat(&Token::Comma);
            }
            Ok(Arg::Set(items))
        }
        _ => Err(p.unexpected("expecting argument")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Action {
        let mut v = parse_actions(s).unwrap();
        assert_eq!(v.len(), 1, "{s}");
        v.remove(0)
    }

    #[test]
    fn basic_actions() {
        let v = parse_actions("eth.dst = eth.src; eth.src = 00:00:00:00:ff:01; arp.op = 2; /* reply */ arp.tpa <-> arp.spa; outport = inport; outport = \"\"; ip.ttl--; next;").unwrap();
        assert!(
            matches!(&v[0], Action::Move { dst, src } if dst.name == "eth.dst" && src.name == "eth.src")
        );
        assert!(matches!(&v[1], Action::Load { value, .. } if value.value == 0xff01));
        assert!(matches!(&v[3], Action::Exchange { .. }));
        assert!(matches!(&v[5], Action::LoadString { value, .. } if value.is_empty()));
        assert_eq!(v[6], Action::DecTtl);
        assert_eq!(
            v[7],
            Action::Next {
                pipeline: None,
                table: None
            }
        );
        assert_eq!(one("drop;"), Action::Drop);
        assert_eq!(
            one("next(3);"),
            Action::Next {
                pipeline: None,
                table: Some(3)
            }
        );
        assert_eq!(
            one("next(pipeline=egress, table=7);"),
            Action::Next {
                pipeline: Some(Pipeline::Egress),
                table: Some(7)
            }
        );
        assert!(
            matches!(one("reg0[1..3] = 5;"), Action::Load { dst, .. } if dst.bits == Some((1, 3)))
        );
    }

    #[test]
    fn conntrack_and_lb() {
        assert_eq!(one("ct_commit;"), Action::CtCommit(vec![]));
        let Action::CtCommit(v) = one("ct_commit { ct_mark.blocked = 0; ct_label.label = reg3; };")
        else {
            panic!()
        };
        assert_eq!(v.len(), 2);
        assert_eq!(
            one("ct_dnat;"),
            Action::CtNat {
                kind: CtNatKind::Dnat,
                target: None
            }
        );
        let Action::CtNat {
            target: Some(t), ..
        } = one("ct_snat(10.0.0.1, 1000-2000);")
        else {
            panic!()
        };
        assert_eq!(t.ports, Some((1000, 2000)));
        let Action::CtLb { mark, backends, hash_fields, snat } =
            one("ct_lb_mark(backends=10.0.0.2:8080,[fd00::2]:80,10.0.0.3; hash_fields=\"ip_src,ip_dst\"; skip_snat);")
        else {
            panic!()
        };
        assert!(mark);
        assert_eq!(backends.len(), 3);
        assert_eq!(backends[1].port, Some(80));
        assert_eq!(backends[2].port, None);
        assert_eq!(hash_fields.as_deref(), Some("ip_src,ip_dst"));
        assert_eq!(snat, Some(LbSnat::Skip));
        assert!(matches!(one("ct_lb;"), Action::CtLb { mark: false, .. }));
    }

    #[test]
    fn nested_and_calls() {
        let Action::Nested { kind, actions } =
            one("clone { ct_clear; next(pipeline=ingress, table=0); };")
        else {
            panic!()
        };
        assert_eq!(kind, NestedKind::Clone);
        assert_eq!(actions.len(), 2);
        let Action::Assign { func, args, .. } =
            one("reg9[2] = lookup_arp(inport, arp.spa, arp.sha);")
        else {
            panic!()
        };
        assert_eq!((func, args.len()), (Function::LookupArp, 3));
        let Action::Assign { args, .. } = one(
            "reg0[3] = put_dhcp_opts(offerip = 10.0.0.2, router = 10.0.0.1, dns_server = {8.8.8.8, 7.7.7.7}, domain_name = \"x\");",
        ) else {
            panic!()
        };
        assert!(
            matches!(&args[2], Arg::Named { value, .. } if matches!(**value, Arg::Set(ref s) if s.len() == 2))
        );
        let Action::Call { func, args } = one("commit_lb_aff(vip = \"10.96.0.1:80\", backend = \"10.0.1.2:8080\", proto = tcp, timeout = 60);") else { panic!() };
        assert_eq!((func, args.len()), (Function::CommitLbAff, 4));
        assert!(matches!(
            one("log(severity=info, verdict=drop);"),
            Action::Call {
                func: Function::Log,
                ..
            }
        ));
        assert!(matches!(
            one("reg8[0..15] = select(1=100, 2=50);"),
            Action::Assign {
                func: Function::Select,
                ..
            }
        ));
        assert!(matches!(
            one("reg0[15] = check_in_port_sec();"),
            Action::Assign {
                func: Function::CheckInPortSec,
                ..
            }
        ));
    }

    #[test]
    fn malformed_actions_give_positioned_errors() {
        for (s, pos) in [
            ("next", 4),
            ("drop; next;", 6),
            ("frobnicate;", 0),
            ("reg0 = ;", 7),
            ("lookup_arp(inport);", 0),
            ("reg0 = put_arp(a, b, c);", 7),
            ("reg0 = nosuch(1);", 7),
            ("ct_dnat(eth.src);", 8),
            ("ct_lb_mark(10.0.0.1);", 11),
            ("next(pipeline=sideways);", 14),
            ("clone { next; ", 14),
            ("ct_snat(1.1.1.1, 5-3);", 20),
            ("\"x\";", 0),
            ("next(table=999);", 15),
        ] {
            let e = parse_actions(s).unwrap_err();
            assert_eq!(e.pos, pos, "{s}: {e}");
        }
        let deep = "clone { ".repeat(40) + &"};".repeat(40);
        assert!(parse_actions(&deep)
            .unwrap_err()
            .message
            .contains("too deeply"));
    }
}
