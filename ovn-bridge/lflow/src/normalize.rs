//! Normalisation of a parsed match into classifier form.
//!
//! Owns name resolution against the [`SymbolTable`], OVN's type rules
//! (nominal fields, ordering operators, constant widths), prerequisite
//! insertion, predicate expansion, address-set and port-group expansion
//! through a [`Lookup`], negation push-down and the conversion to a bounded
//! disjunctive normal form. It does not parse text (see [`crate::expr`])
//! and does not decide how the classifier stores the result.
//!
//! Negation: `field != value/mask` becomes, as in OVN, a disjunction of
//! one-bit tests (`field[i] == !value[i]` for each mask bit). String
//! comparisons (`inport != "p"`) and `is_chassis_resident` keep a `negated`
//! flag, because their domain is not known here.

use std::collections::HashSet;

use crate::expr::{Comparison, Expr, RelOp, Value};
use crate::lexer::{tokenize, Constant, Span, Token};
use crate::symtab::{FieldKind, SymbolTable};

/// Default bound on the number of conjunctions one match may expand into.
pub const DEFAULT_MAX_CONJUNCTIONS: usize = 16_384;

const MAX_DEPTH: usize = 32;

/// Resolves the named sets a match refers to; called during normalisation.
pub trait Lookup {
    /// Addresses of the address set `$name` (as SB `Address_Set.addresses`:
    /// `"10.0.0.1"`, `"10.0.0.0/24"`, `"fd00::/64"`, MAC addresses).
    fn address_set(&self, name: &str) -> Option<Vec<String>>;
    /// Logical port names of the port group `@name`.
    fn port_group(&self, name: &str) -> Option<Vec<String>>;
}

/// A [`Lookup`] that knows no sets.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSets;

impl Lookup for NoSets {
    fn address_set(&self, _: &str) -> Option<Vec<String>> {
        None
    }
    fn port_group(&self, _: &str) -> Option<Vec<String>> {
        None
    }
}

/// One atomic test of a conjunction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Test {
    /// `(base & mask) == value`, bits relative to the base field's bit 0.
    Bits {
        /// Base symbol (`xxreg0`, `eth.dst`, `flags`); see [`SymbolTable::ovs_field`].
        field: &'static str,
        /// Required bit values (zero outside `mask`).
        value: u128,
        /// Bits that are tested.
        mask: u128,
    },
    /// `inport`/`outport` compared with a logical port name.
    Port {
        /// `inport` or `outport`.
        field: &'static str,
        /// Logical port name.
        name: String,
        /// `!=` instead of `==`.
        negated: bool,
    },
    /// `is_chassis_resident("port")` (or its negation).
    ChassisResident {
        /// Logical port name.
        port: String,
        /// Negated.
        negated: bool,
    },
}

/// A conjunction of tests; a normalised match is a disjunction of these.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Conjunction {
    /// Tests, sorted; at most one [`Test::Bits`] per base field.
    pub tests: Vec<Test>,
}

/// Why a match could not be normalised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    /// A name, type or value problem, with the byte offset in the match text.
    #[error("at offset {pos}: {message}")]
    Semantic {
        /// Byte offset of the offending construct.
        pos: usize,
        /// What is wrong.
        message: String,
    },
    /// The disjunctive normal form would exceed the configured bound.
    #[error("match expands to more than {limit} conjunctions")]
    TooLarge {
        /// The bound that was hit.
        limit: usize,
    },
    /// Predicates or prerequisites nest deeper than any OVN definition does.
    #[error("predicate expansion nested too deeply at offset {pos}")]
    TooDeep {
        /// Byte offset of the construct being expanded.
        pos: usize,
    },
}

fn sem(span: Span, message: impl Into<String>) -> NormalizeError {
    NormalizeError::Semantic {
        pos: span.start,
        message: message.into(),
    }
}

/// Intermediate negation-normal form.
#[derive(Debug, Clone)]
enum Nnf {
    Const(bool),
    Atom(Test),
    And(Vec<Nnf>),
    Or(Vec<Nnf>),
}

/// Normalises `expr` with the default expansion bound.
pub fn normalize(
    expr: &Expr,
    symtab: &SymbolTable,
    lookup: &dyn Lookup,
) -> Result<Vec<Conjunction>, NormalizeError> {
    normalize_with_limit(expr, symtab, lookup, DEFAULT_MAX_CONJUNCTIONS)
}

/// Normalises `expr`; fails with [`NormalizeError::TooLarge`] beyond `limit` conjunctions.
///
/// The result is a disjunction: an empty vector means the match never holds,
/// a vector holding one empty conjunction means it always holds.
pub fn normalize_with_limit(
    expr: &Expr,
    symtab: &SymbolTable,
    lookup: &dyn Lookup,
    limit: usize,
) -> Result<Vec<Conjunction>, NormalizeError> {
    let r = Resolver { symtab, lookup };
    let nnf = r.resolve(expr, false, 0)?;
    let mut out = dnf(&nnf, limit)?;
    let mut seen = HashSet::with_capacity(out.len());
    out.retain(|c| seen.insert(c.clone()));
    Ok(out)
}

struct Resolver<'a> {
    symtab: &'a SymbolTable,
    lookup: &'a dyn Lookup,
}

impl Resolver<'_> {
    fn resolve(&self, e: &Expr, neg: bool, depth: usize) -> Result<Nnf, NormalizeError> {
        Ok(match e {
            Expr::Bool(b) => Nnf::Const(*b != neg),
            Expr::Not(e) => self.resolve(e, !neg, depth)?,
            Expr::And(v) | Expr::Or(v) => {
                let items = v
                    .iter()
                    .map(|e| self.resolve(e, neg, depth))
                    .collect::<Result<Vec<_>, _>>()?;
                if matches!(e, Expr::And(_)) != neg {
                    Nnf::And(items)
                } else {
                    Nnf::Or(items)
                }
            }
            Expr::ChassisResident { port, .. } => Nnf::Atom(Test::ChassisResident {
                port: port.clone(),
                negated: neg,
            }),
            Expr::Cmp(c) => self.comparison(c, neg, depth)?,
        })
    }

    fn prereqs(&self, name: &str, span: Span, depth: usize) -> Result<Vec<Nnf>, NormalizeError> {
        let mut out = Vec::new();
        for text in self.symtab.prerequisites(name) {
            let e = self
                .symtab
                .parsed(text)
                .ok_or_else(|| sem(span, format!("bad prerequisite {text}")))?;
            out.push(self.resolve(e, false, depth + 1)?);
        }
        Ok(out)
    }

    fn comparison(&self, c: &Comparison, neg: bool, depth: usize) -> Result<Nnf, NormalizeError> {
        if depth > MAX_DEPTH {
            return Err(NormalizeError::TooDeep { pos: c.span.start });
        }
        let fspan = c.field.span;
        let name = c.field.name.as_str();
        let sym = self.symtab.get(name).ok_or_else(|| {
            sem(
                fspan,
                format!("Unknown field `{name}' (expecting field name)."),
            )
        })?;
        if sym.kind == FieldKind::OvnWriteOnly {
            return Err(sem(
                fspan,
                format!("Field {name} can only be assigned, not matched."),
            ));
        }
        let (lo, hi) = match c.field.bits {
            None => (0, sym.width.saturating_sub(1)),
            Some((lo, hi)) => {
                if sym.kind == FieldKind::String {
                    return Err(sem(
                        fspan,
                        format!("Cannot select subfield of string field {name}."),
                    ));
                }
                if hi >= sym.width {
                    return Err(sem(
                        fspan,
                        format!(
                            "Cannot select bits {lo} to {hi} of {}-bit field {name}.",
                            sym.width
                        ),
                    ));
                }
                if sym.nominal && (lo != 0 || hi != sym.width - 1) {
                    return Err(sem(
                        fspan,
                        format!("Cannot select subfield of nominal field {name}."),
                    ));
                }
                (lo, hi)
            }
        };
        let nbits = hi - lo + 1;
        if c.bare && nbits > 1 && !c.under_not {
            return Err(sem(
                fspan,
                "Explicit `!= 0' is required for inequality test of multibit field against 0.",
            ));
        }
        let op = if neg { c.op.negate() } else { c.op };

        // Expand the value set (address sets and port groups included).
        let is_string = sym.kind == FieldKind::String;
        let mut ints: Vec<Constant> = Vec::new();
        let mut strs: Vec<String> = Vec::new();
        for v in &c.values {
            match v {
                Value::Int(k) => ints.push(*k),
                Value::Str(s) => strs.push(s.clone()),
                Value::AddressSet(n) => {
                    let addrs = self
                        .lookup
                        .address_set(n)
                        .ok_or_else(|| sem(c.span, format!("Unknown address set `${n}'.")))?;
                    for a in addrs {
                        ints.push(parse_address(&a).ok_or_else(|| {
                            sem(
                                c.span,
                                format!("Address set `${n}' holds `{a}', which is not an address."),
                            )
                        })?);
                    }
                }
                Value::PortGroup(n) => {
                    let ports = self
                        .lookup
                        .port_group(n)
                        .ok_or_else(|| sem(c.span, format!("Unknown port group `@{n}'.")))?;
                    strs.extend(ports);
                }
            }
        }
        if (is_string && !ints.is_empty()) || (!is_string && !strs.is_empty()) {
            let (fk, ck) = if is_string {
                ("String", "integer")
            } else {
                ("Integer", "string")
            };
            return Err(sem(
                c.span,
                format!("{fk} field {name} is not compatible with {ck} constant."),
            ));
        }
        if op.is_ordering() {
            if c.in_curlies {
                return Err(sem(
                    c.span,
                    "Only == and != operators may be used with value sets.",
                ));
            }
            if sym.nominal || sym.kind == FieldKind::Predicate || is_string {
                return Err(sem(
                    c.span,
                    format!(
                        "Only == and != operators may be used with {} field {name}.",
                        if sym.nominal { "nominal" } else { "this" }
                    ),
                ));
            }
            if ints.iter().any(|k| k.mask.is_some()) {
                return Err(sem(
                    c.span,
                    "Only == and != operators may be used with masked constants.",
                ));
            }
        }
        for k in &ints {
            if k.width() > nbits {
                return Err(sem(
                    c.span,
                    format!(
                        "{}-bit constant is not compatible with {nbits}-bit field {name}.",
                        k.width()
                    ),
                ));
            }
        }
        if sym.nominal && sym.kind != FieldKind::Predicate && op != RelOp::Eq {
            return Err(sem(
                c.span,
                format!("Nominal field {name} may only be tested for equality (taking enclosing `!' operators into account)."),
            ));
        }
        let n_values = ints.len() + strs.len();
        if n_values == 0 {
            return Ok(Nnf::Const(op == RelOp::Ne));
        }

        let mut atoms = Vec::with_capacity(n_values);
        if sym.kind == FieldKind::Predicate {
            let crate::symtab::Storage::Expansion(text) = sym.storage else {
                return Err(sem(fspan, format!("Predicate {name} has no definition.")));
            };
            let def = self
                .symtab
                .parsed(text)
                .ok_or_else(|| sem(fspan, "missing predicate definition"))?;
            for k in &ints {
                let positive = (k.value & 1 == 1) != (op == RelOp::Ne);
                if sym.nominal && !positive {
                    return Err(sem(
                        c.span,
                        format!("Nominal predicate {name} may only be tested positively, e.g. `{name}' or `{name} == 1' but not `!{name}' or `{name} == 0'."),
                    ));
                }
                atoms.push(self.resolve(def, !positive, depth + 1)?);
            }
        } else if is_string {
            let field = sym.name;
            for s in strs {
                atoms.push(Nnf::Atom(Test::Port {
                    field,
                    name: s,
                    negated: op == RelOp::Ne,
                }));
            }
        } else {
            let loc = self
                .symtab
                .locate(name)
                .ok_or_else(|| sem(fspan, format!("Field {name} has no storage.")))?;
            let off = loc.offset + lo;
            let field = loc.base;
            let sel_mask = ones(nbits) << off;
            for k in &ints {
                let mask = (k.mask.unwrap_or(ones(nbits)) << off) & sel_mask;
                let value = (k.value << off) & mask;
                atoms.push(match op {
                    RelOp::Eq => Nnf::Atom(Test::Bits { field, value, mask }),
                    RelOp::Ne => {
                        let mut bits = Vec::new();
                        let mut m = mask;
                        while m != 0 {
                            let bit = m & m.wrapping_neg();
                            m &= m - 1;
                            bits.push(Nnf::Atom(Test::Bits {
                                field,
                                value: !value & bit,
                                mask: bit,
                            }));
                        }
                        Nnf::Or(bits)
                    }
                    _ => {
                        let max = ones(nbits);
                        let v = k.value;
                        let (a, b) = match op {
                            RelOp::Lt if v == 0 => {
                                atoms.push(Nnf::Const(false));
                                continue;
                            }
                            RelOp::Lt => (0, v - 1),
                            RelOp::Le => (0, v),
                            RelOp::Gt if v >= max => {
                                atoms.push(Nnf::Const(false));
                                continue;
                            }
                            RelOp::Gt => (v + 1, max),
                            _ => (v, max),
                        };
                        Nnf::Or(
                            range_prefixes(a, b, nbits)
                                .into_iter()
                                .map(|(pv, pm)| {
                                    Nnf::Atom(Test::Bits {
                                        field,
                                        value: pv << off,
                                        mask: pm << off,
                                    })
                                })
                                .collect(),
                        )
                    }
                });
            }
        }
        let combined = if atoms.len() == 1 {
            atoms.pop().unwrap_or(Nnf::Const(false))
        } else if op == RelOp::Ne {
            Nnf::And(atoms)
        } else {
            Nnf::Or(atoms)
        };
        let mut pre = self.prereqs(name, fspan, depth)?;
        if pre.is_empty() {
            Ok(combined)
        } else {
            pre.push(combined);
            Ok(Nnf::And(pre))
        }
    }
}

fn ones(n: u32) -> u128 {
    if n >= 128 {
        u128::MAX
    } else {
        (1u128 << n) - 1
    }
}

/// Splits the inclusive range `[a, b]` of an `n`-bit field into value/mask prefixes.
fn range_prefixes(mut a: u128, b: u128, n: u32) -> Vec<(u128, u128)> {
    let full = ones(n);
    let mut out = Vec::new();
    loop {
        // Largest aligned block starting at `a` that stays within `b`.
        let mut size_bits = if a == 0 { n } else { a.trailing_zeros().min(n) };
        while size_bits > 0 {
            let last = a.checked_add(ones(size_bits));
            if matches!(last, Some(l) if l <= b) {
                break;
            }
            size_bits -= 1;
        }
        out.push((a, full & !ones(size_bits)));
        let next = a
            .checked_add(ones(size_bits))
            .and_then(|l| l.checked_add(1));
        match next {
            Some(nx) if nx <= b && nx <= full => a = nx,
            _ => break,
        }
    }
    out
}

/// Parses one SB address-set entry with the match lexer.
pub fn parse_address(s: &str) -> Option<Constant> {
    match tokenize(s).ok()?.as_slice() {
        [(Token::Int(c), _), (Token::End, _)] => Some(*c),
        _ => None,
    }
}

/// Adds `t` to `c`; `false` if the conjunction became unsatisfiable.
fn add_test(c: &mut Vec<Test>, t: &Test) -> bool {
    match t {
        Test::Bits { field, value, mask } => {
            for x in c.iter_mut() {
                if let Test::Bits {
                    field: f2,
                    value: v2,
                    mask: m2,
                } = x
                {
                    if f2 == field {
                        if (*v2 ^ value) & *m2 & mask != 0 {
                            return false;
                        }
                        *v2 |= value;
                        *m2 |= mask;
                        return true;
                    }
                }
            }
        }
        Test::Port {
            field,
            name,
            negated,
        } => {
            let mut drop_negated_others = false;
            for x in c.iter() {
                if let Test::Port {
                    field: f2,
                    name: n2,
                    negated: g2,
                } = x
                {
                    if f2 != field {
                        continue;
                    }
                    let same = n2 == name;
                    match (*negated, *g2) {
                        (false, false) if !same => return false,
                        (false, true) if same => return false,
                        (true, false) if same => return false,
                        // Already implied by a positive test on another name.
                        (true, false) => return true,
                        (false, true) => drop_negated_others = true,
                        _ if same => return true,
                        _ => {}
                    }
                }
            }
            if drop_negated_others {
                c.retain(
                    |x| !matches!(x, Test::Port { field: f2, negated: true, .. } if f2 == field),
                );
            }
        }
        Test::ChassisResident { port, negated } => {
            for x in c.iter() {
                if let Test::ChassisResident {
                    port: p2,
                    negated: g2,
                } = x
                {
                    if p2 == port {
                        return negated == g2;
                    }
                }
            }
        }
    }
    let pos = c.binary_search(t).unwrap_or_else(|p| p);
    c.insert(pos, t.clone());
    true
}

fn dnf(n: &Nnf, limit: usize) -> Result<Vec<Conjunction>, NormalizeError> {
    Ok(match n {
        Nnf::Const(true) => vec![Conjunction::default()],
        Nnf::Const(false) => Vec::new(),
        Nnf::Atom(t) => vec![Conjunction {
            tests: vec![t.clone()],
        }],
        Nnf::Or(v) => {
            let mut out = Vec::new();
            for x in v {
                out.extend(dnf(x, limit)?);
                if out.len() > limit {
                    return Err(NormalizeError::TooLarge { limit });
                }
            }
            out
        }
        Nnf::And(v) => {
            let mut acc = vec![Conjunction::default()];
            for x in v {
                let rhs = dnf(x, limit)?;
                if acc.len().saturating_mul(rhs.len()) > limit.saturating_mul(4) {
                    return Err(NormalizeError::TooLarge { limit });
                }
                let mut next = Vec::with_capacity(acc.len() * rhs.len());
                for a in &acc {
                    'r: for b in &rhs {
                        let mut tests = a.tests.clone();
                        for t in &b.tests {
                            if !add_test(&mut tests, t) {
                                continue 'r;
                            }
                        }
                        next.push(Conjunction { tests });
                    }
                }
                if next.len() > limit {
                    return Err(NormalizeError::TooLarge { limit });
                }
                acc = next;
                if acc.is_empty() {
                    break;
                }
            }
            acc
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::parse_match;
    use std::collections::HashMap;

    struct Sets(
        HashMap<&'static str, Vec<String>>,
        HashMap<&'static str, Vec<String>>,
    );
    impl Lookup for Sets {
        fn address_set(&self, n: &str) -> Option<Vec<String>> {
            self.0.get(n).cloned()
        }
        fn port_group(&self, n: &str) -> Option<Vec<String>> {
            self.1.get(n).cloned()
        }
    }

    fn norm(s: &str) -> Result<Vec<Conjunction>, NormalizeError> {
        let t = SymbolTable::ovn_23_03();
        let sets = Sets(
            HashMap::from([
                ("as1", vec!["10.0.0.0/24".into(), "10.0.2.5".into()]),
                ("empty", vec![]),
            ]),
            HashMap::from([("pg1", vec!["p1".into(), "p2".into()])]),
        );
        normalize(&parse_match(s).unwrap(), &t, &sets)
    }

    fn bits(field: &'static str, value: u128, mask: u128) -> Test {
        Test::Bits { field, value, mask }
    }

    #[test]
    fn prerequisites_and_predicates_expand() {
        let r = norm("tcp.dst == 80").unwrap();
        // ip4 || ip6 from `ip.proto`'s prerequisite.
        assert_eq!(r.len(), 2);
        for c in &r {
            assert!(c.tests.contains(&bits("tcp.dst", 80, 0xffff)));
            assert!(c.tests.contains(&bits("ip.proto", 6, 0xff)));
        }
        assert!(r[0].tests.contains(&bits("eth.type", 0x800, 0xffff)));
        assert!(r[1].tests.contains(&bits("eth.type", 0x86dd, 0xffff)));
        let r = norm("ct.est && !ct.rel").unwrap();
        assert_eq!(
            r,
            vec![Conjunction {
                tests: vec![bits("ct_state", 0b10_0010, 0b10_0110)]
            }]
        );
    }

    #[test]
    fn registers_and_masks_land_in_base_fields() {
        let r = norm("reg0[3] == 1 && reg9[16..31] == 0x50 && flags.loopback == 0").unwrap();
        assert_eq!(r.len(), 1);
        assert!(r[0].tests.contains(&bits("xxreg0", 1 << 99, 1 << 99)));
        assert!(r[0]
            .tests
            .contains(&bits("xreg4", 0x50 << 16, 0xffff << 16)));
        assert!(r[0].tests.contains(&bits("flags", 0, 1)));
    }

    #[test]
    fn sets_address_sets_and_port_groups() {
        let r = norm("ip4.src == $as1 && outport == @pg1").unwrap();
        assert_eq!(r.len(), 4);
        let r = norm("ip4 && ip4.dst != {10.0.0.1, 10.0.0.2}").unwrap();
        // none-of: no conjunction may admit either excluded address.
        assert!(r.len() > 32);
        for c in &r {
            for addr in [0x0a00_0001u128, 0x0a00_0002] {
                assert!(c.tests.iter().any(|t| matches!(t,
                    Test::Bits { field: "ip4.dst", value, mask } if addr & mask != *value)));
            }
        }
        assert_eq!(norm("ip4.src == $empty").unwrap(), vec![]);
        assert_eq!(norm("ip4.src != $empty").unwrap().len(), 1);
        let r = norm("inport != \"p1\" && inport == \"p2\"").unwrap();
        assert_eq!(
            r[0].tests,
            vec![Test::Port {
                field: "inport",
                name: "p2".into(),
                negated: false
            }]
        );
    }

    #[test]
    fn contradictions_are_removed() {
        assert!(norm("ip4 && ip6").unwrap().is_empty());
        assert!(norm("inport == \"a\" && inport == \"b\"")
            .unwrap()
            .is_empty());
        assert!(norm("reg0 == 1 && reg0 == 2").unwrap().is_empty());
        assert_eq!(norm("1").unwrap(), vec![Conjunction::default()]);
        assert!(norm("0").unwrap().is_empty());
    }

    #[test]
    fn ordering_becomes_prefixes() {
        let r = norm("tcp.dst >= 1024 && ip4").unwrap();
        // [1024, 65535] = 0x0400/0xfc00, 0x0800/0xf800, 0x1000/0xf000, ..., 0x8000/0x8000
        assert_eq!(r.len(), 6);
        let r = norm("1 < reg0[0..3] < 6").unwrap();
        let vals: Vec<_> = r.iter().map(|c| c.tests.clone()).collect();
        assert_eq!(vals.len(), 2, "{vals:?}");
        assert_eq!(range_prefixes(2, 5, 4), vec![(2, 0xe), (4, 0xe)]);
        assert_eq!(range_prefixes(0, 15, 4), vec![(0, 0)]);
    }

    #[test]
    fn negated_masked_value_expands_per_bit() {
        let r = norm("eth.dst != 00:00:00:00:00:00/01:00:00:00:00:00").unwrap();
        assert_eq!(
            r,
            vec![Conjunction {
                tests: vec![bits("eth.dst", 1 << 40, 1 << 40)]
            }]
        );
        let r = norm("!(reg0[0..1] == 2)").unwrap();
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn ovn_type_rules() {
        for (s, frag) in [
            ("eth.type != 0x800", "Nominal field"),
            ("!ip4", "Nominal predicate"),
            ("ip4 == 0", "Nominal predicate"),
            ("tcp.dst < {5, 6}", "value sets"),
            ("ip.proto < 6", "== and !="),
            ("reg0", "Explicit `!= 0'"),
            ("inport == 5", "not compatible"),
            ("tcp.dst == \"x\"", "not compatible"),
            ("tcp.dst == 0x10000", "17-bit constant"),
            ("reg0[30..40] == 1", "Cannot select bits"),
            ("inport[0] == 1", "string field"),
            ("nosuch == 1", "Unknown field"),
            ("ip4.src == $nosuch", "Unknown address set"),
            ("icmp4.frag_mtu == 1", "only be assigned"),
            ("tcp.dst < 5/7", "masked"),
        ] {
            let e = norm(s).unwrap_err().to_string();
            assert!(e.contains(frag), "{s}: {e}");
        }
        // Allowed forms.
        norm("!reg0").unwrap();
        norm("ip4 == 1").unwrap();
        norm("!ip.later_frag").unwrap();
    }

    #[test]
    fn explosion_is_an_error_not_a_hang() {
        let t = SymbolTable::ovn_23_03();
        let e =
            parse_match("ip6.src != fd00::1 && ip6.dst != fd00::2 && xxreg0 != 1 && xxreg1 != 2")
                .unwrap();
        let r = normalize_with_limit(&e, &t, &NoSets, 10_000);
        assert_eq!(r, Err(NormalizeError::TooLarge { limit: 10_000 }));
    }
}
