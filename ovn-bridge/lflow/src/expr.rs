//! Match expressions: the syntax tree and the parser of the `match` column.
//!
//! Owns the grammar of ovn-sb(5) matches: comparisons, subfields, value
//! sets, range expressions, `!`, `&&`, `||`, parentheses, boolean constants
//! and `is_chassis_resident()`. Parsing is purely syntactic; field names are
//! resolved, type-checked and expanded by [`crate::normalize`] against a
//! [`crate::SymbolTable`]. This module must not know about fields.

use crate::lexer::{tokenize, Constant, Format, ParseError, Span, Token};

/// Deepest nesting of parentheses accepted (OVN uses the same bound).
pub const MAX_PAREN_DEPTH: usize = 100;

/// A relational operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl RelOp {
    fn from_token(t: &Token) -> Option<RelOp> {
        Some(match t {
            Token::Eq => RelOp::Eq,
            Token::Ne => RelOp::Ne,
            Token::Lt => RelOp::Lt,
            Token::Le => RelOp::Le,
            Token::Gt => RelOp::Gt,
            Token::Ge => RelOp::Ge,
            _ => return None,
        })
    }

    /// The operator that holds exactly when this one does not.
    pub fn negate(self) -> RelOp {
        match self {
            RelOp::Eq => RelOp::Ne,
            RelOp::Ne => RelOp::Eq,
            RelOp::Lt => RelOp::Ge,
            RelOp::Le => RelOp::Gt,
            RelOp::Gt => RelOp::Le,
            RelOp::Ge => RelOp::Lt,
        }
    }

    /// The operator with its operands swapped (`a < b` is `b > a`).
    pub fn turn(self) -> RelOp {
        match self {
            RelOp::Lt => RelOp::Gt,
            RelOp::Le => RelOp::Ge,
            RelOp::Gt => RelOp::Lt,
            RelOp::Ge => RelOp::Le,
            other => other,
        }
    }

    /// Whether this is one of `<`, `<=`, `>`, `>=`.
    pub fn is_ordering(self) -> bool {
        !matches!(self, RelOp::Eq | RelOp::Ne)
    }
}

/// A field name with an optional bit selection `name[lo..hi]` / `name[n]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRef {
    /// Symbol name as written (`reg0`, `ip4.src`).
    pub name: String,
    /// Selected bits, inclusive, least significant bit is 0.
    pub bits: Option<(u32, u32)>,
    /// Where the field was written.
    pub span: Span,
}

/// One element of a value set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// An integer constant, possibly masked.
    Int(Constant),
    /// A string (logical port name).
    Str(String),
    /// `$name`: the addresses of an address set (resolved at normalisation).
    AddressSet(String),
    /// `@name`: the ports of a port group (resolved at normalisation).
    PortGroup(String),
}

/// A field compared with a value or a `{...}` set of values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// Left-hand side.
    pub field: FieldRef,
    /// Operator, with the field on the left.
    pub op: RelOp,
    /// Right-hand side: one value, or several for a set (`==` any-of, `!=` none-of).
    pub values: Vec<Value>,
    /// Whether the values were written inside `{}`.
    pub in_curlies: bool,
    /// Written as a bare field (`ct.est`), meaning `field != 0`.
    pub bare: bool,
    /// Parity of the `!` operators enclosing this comparison when it was parsed.
    pub under_not: bool,
    /// Where the comparison was written.
    pub span: Span,
}

/// A parsed match expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `1` or `0`.
    Bool(bool),
    /// A comparison.
    Cmp(Comparison),
    /// `!expr`.
    Not(Box<Expr>),
    /// Conjunction.
    And(Vec<Expr>),
    /// Disjunction.
    Or(Vec<Expr>),
    /// `is_chassis_resident("port")`: true on the chassis where the port is bound.
    ChassisResident {
        /// Logical port name.
        port: String,
        /// Where it was written.
        span: Span,
    },
}

/// Parses the text of a `match` column.
pub fn parse_match(text: &str) -> Result<Expr, ParseError> {
    let tokens = tokenize(text)?;
    let mut p = Parser {
        toks: &tokens,
        pos: 0,
        depth: 0,
        not: false,
    };
    let e = p.expr()?;
    if !p.at(&Token::End) {
        return Err(p.unexpected("expecting `&&', `||' or end of input"));
    }
    Ok(e)
}

pub(crate) struct Parser<'t> {
    pub(crate) toks: &'t [(Token, Span)],
    pub(crate) pos: usize,
    pub(crate) depth: usize,
    pub(crate) not: bool,
}

impl<'t> Parser<'t> {
    pub(crate) fn peek(&self) -> &'t Token {
        &self.toks[self.pos.min(self.toks.len() - 1)].0
    }

    pub(crate) fn peek_at(&self, n: usize) -> &'t Token {
        &self.toks[(self.pos + n).min(self.toks.len() - 1)].0
    }

    pub(crate) fn span(&self) -> Span {
        self.toks[self.pos.min(self.toks.len() - 1)].1
    }

    pub(crate) fn prev_end(&self) -> usize {
        if self.pos == 0 {
            0
        } else {
            self.toks[(self.pos - 1).min(self.toks.len() - 1)].1.end
        }
    }

    pub(crate) fn at(&self, t: &Token) -> bool {
        self.peek() == t
    }

    pub(crate) fn bump(&mut self) -> &'t Token {
        let t = self.peek();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    pub(crate) fn eat(&mut self, t: &Token) -> bool {
        if self.at(t) {
            self.bump();
            true
        } else {
            false
        }
    }

    pub(crate) fn error(&self, msg: impl Into<String>) -> ParseError {
        ParseError::new(self.span().start, msg)
    }

    pub(crate) fn unexpected(&self, what: &str) -> ParseError {
        self.error(format!("Syntax error at {}: {what}.", self.peek()))
    }

    pub(crate) fn expect(&mut self, t: &Token) -> Result<(), ParseError> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("expecting {t}")))
        }
    }

    pub(crate) fn id_is(&self, name: &str) -> bool {
        matches!(self.peek(), Token::Id(s) if s == name)
    }

    pub(crate) fn small_int(&mut self, what: &str) -> Result<u32, ParseError> {
        match self.peek() {
            Token::Int(c) if c.mask.is_none() && c.value <= u128::from(u32::MAX) => {
                self.bump();
                Ok(c.value as u32)
            }
            _ => Err(self.unexpected(&format!("expecting {what}"))),
        }
    }

    /// `name`, `name[n]` or `name[lo..hi]`.
    pub(crate) fn field(&mut self) -> Result<FieldRef, ParseError> {
        let start = self.span().start;
        let Token::Id(name) = self.peek() else {
            return Err(self.unexpected("expecting field name"));
        };
        self.bump();
        let mut bits = None;
        if self.eat(&Token::LSquare) {
            let lo = self.small_int("bit index")?;
            let hi = if self.eat(&Token::Ellipsis) {
                self.small_int("bit index")?
            } else {
                lo
            };
            if lo > hi {
                return Err(ParseError::new(
                    start,
                    format!("Invalid bit range {lo} to {hi}."),
                ));
            }
            self.expect(&Token::RSquare)?;
            bits = Some((lo, hi));
        }
        Ok(FieldRef {
            name: name.clone(),
            bits,
            span: Span {
                start,
                end: self.prev_end(),
            },
        })
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        let first = self.not_expr()?;
        let op = self.peek().clone();
        if op != Token::LogAnd && op != Token::LogOr {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.eat(&op) {
            items.push(self.not_expr()?);
        }
        if matches!(self.peek(), Token::LogAnd | Token::LogOr) {
            return Err(self.error("&& and || must be parenthesized when used together."));
        }
        Ok(if op == Token::LogAnd {
            Expr::And(items)
        } else {
            Expr::Or(items)
        })
    }

    fn not_expr(&mut self) -> Result<Expr, ParseError> {
        if self.eat(&Token::LogNot) {
            self.not = !self.not;
            let r = self.primary();
            self.not = !self.not;
            let (e, atomic) = r?;
            if !atomic {
                return Err(self.error("Missing parentheses around operand of !."));
            }
            Ok(Expr::Not(Box::new(e)))
        } else {
            Ok(self.primary()?.0)
        }
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        let v = match self.peek() {
            Token::Int(c) => Value::Int(*c),
            Token::Str(s) => Value::Str(s.clone()),
            Token::AddressSet(s) => Value::AddressSet(s.clone()),
            Token::PortGroup(s) => Value::PortGroup(s.clone()),
            _ => return Err(self.unexpected("expecting constant")),
        };
        self.bump();
        Ok(v)
    }

    fn value_set(&mut self) -> Result<(Vec<Value>, bool), ParseError> {
        if self.eat(&Token::LCurly) {
            let mut vs = Vec::new();
            while !self.eat(&Token::RCurly) {
                vs.push(self.value()?);
                self.eat(&Token::Comma);
            }
            Ok((vs, true))
        } else {
            Ok((vec![self.value()?], false))
        }
    }

    fn primary(&mut self) -> Result<(Expr, bool), ParseError> {
        let start = self.span().start;
        if self.eat(&Token::LParen) {
            if self.depth >= MAX_PAREN_DEPTH {
                return Err(ParseError::new(start, "Parentheses nested too deeply."));
            }
            self.depth += 1;
            let e = self.expr()?;
            self.depth -= 1;
            self.expect(&Token::RParen)?;
            return Ok((e, true));
        }
        if let Token::Id(name) = self.peek() {
            if self.peek_at(1) == &Token::LParen {
                if name != "is_chassis_resident" {
                    return Err(self.error(format!("Unknown function `{name}' in match.")));
                }
                self.bump();
                self.bump();
                let Token::Str(port) = self.peek() else {
                    return Err(self.unexpected("expecting string"));
                };
                self.bump();
                self.expect(&Token::RParen)?;
                let span = Span {
                    start,
                    end: self.prev_end(),
                };
                return Ok((
                    Expr::ChassisResident {
                        port: port.clone(),
                        span,
                    },
                    true,
                ));
            }
            let field = self.field()?;
            let Some(op) = RelOp::from_token(self.peek()) else {
                if self.at(&Token::Equals) {
                    return Err(self.unexpected("expecting relational operator"));
                }
                let span = field.span;
                return Ok((
                    Expr::Cmp(Comparison {
                        field,
                        op: RelOp::Ne,
                        values: vec![Value::Int(Constant::new(0, Format::Hex))],
                        in_curlies: false,
                        bare: true,
                        under_not: self.not,
                        span,
                    }),
                    true,
                ));
            };
            self.bump();
            let (values, in_curlies) = self.value_set()?;
            let span = Span {
                start,
                end: self.prev_end(),
            };
            return Ok((
                Expr::Cmp(Comparison {
                    field,
                    op,
                    values,
                    in_curlies,
                    bare: false,
                    under_not: self.not,
                    span,
                }),
                false,
            ));
        }
        // A constant first: boolean, or `c relop field [relop c]`.
        let (c1, curl1) = self.value_set()?;
        if RelOp::from_token(self.peek()).is_none() && !curl1 {
            if let [Value::Int(c)] = c1.as_slice() {
                if c.format == Format::Decimal && c.mask.is_none() && c.value <= 1 {
                    return Ok((Expr::Bool(c.value == 1), true));
                }
            }
        }
        let Some(r1) = RelOp::from_token(self.peek()) else {
            return Err(self.unexpected("expecting relational operator"));
        };
        self.bump();
        let field = self.field()?;
        let mk = |field: FieldRef, op, values, in_curlies, end, not| {
            Expr::Cmp(Comparison {
                field,
                op,
                values,
                in_curlies,
                bare: false,
                under_not: not,
                span: Span { start, end },
            })
        };
        let Some(r2) = RelOp::from_token(self.peek()) else {
            return Ok((
                mk(field, r1.turn(), c1, curl1, self.prev_end(), self.not),
                false,
            ));
        };
        self.bump();
        let (c2, curl2) = self.value_set()?;
        let ok = (matches!(r1, RelOp::Lt | RelOp::Le) && matches!(r2, RelOp::Lt | RelOp::Le))
            || (matches!(r1, RelOp::Gt | RelOp::Ge) && matches!(r2, RelOp::Gt | RelOp::Ge));
        if !ok {
            return Err(ParseError::new(
                start,
                "Range expressions must have the form `x < field < y' or `x > field > y', \
                 with each `<' optionally replaced by `<=' or `>' by `>='.",
            ));
        }
        let end = self.prev_end();
        let e1 = mk(field.clone(), r1.turn(), c1, curl1, end, self.not);
        let e2 = mk(field, r2, c2, curl2, end, self.not);
        Ok((Expr::And(vec![e1, e2]), false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(e: &Expr) -> &Comparison {
        match e {
            Expr::Cmp(c) => c,
            other => panic!("not a comparison: {other:?}"),
        }
    }

    #[test]
    fn comparisons_and_sets() {
        let e = parse_match("ip4.src == {10.0.0.1, 10.0.0.0/8} && tcp.dst != 80").unwrap();
        let Expr::And(v) = &e else { panic!() };
        let c = cmp(&v[0]);
        assert_eq!(c.field.name, "ip4.src");
        assert_eq!(c.op, RelOp::Eq);
        assert_eq!(c.values.len(), 2);
        assert!(c.in_curlies);
        assert_eq!(cmp(&v[1]).op, RelOp::Ne);
    }

    #[test]
    fn subfields_bare_fields_and_not() {
        let e = parse_match("reg0[3..5] == 2 || !ct.est || reg9[2]").unwrap();
        let Expr::Or(v) = &e else { panic!() };
        assert_eq!(cmp(&v[0]).field.bits, Some((3, 5)));
        let Expr::Not(inner) = &v[1] else { panic!() };
        assert!(cmp(inner).bare && cmp(inner).under_not);
        assert_eq!(cmp(&v[2]).field.bits, Some((2, 2)));
    }

    #[test]
    fn booleans_ranges_groups_functions() {
        assert_eq!(parse_match("1").unwrap(), Expr::Bool(true));
        assert_eq!(parse_match("(0)").unwrap(), Expr::Bool(false));
        let Expr::And(v) = parse_match("1 <= tcp.dst < 1024").unwrap() else {
            panic!()
        };
        assert_eq!((cmp(&v[0]).op, cmp(&v[1]).op), (RelOp::Ge, RelOp::Lt));
        let c = parse_match("80 == tcp.dst").unwrap();
        assert_eq!(cmp(&c).op, RelOp::Eq);
        let e =
            parse_match("inport == @pg1 && ip4.src == $pg1_ip4 && is_chassis_resident(\"cr-lrp\")")
                .unwrap();
        let Expr::And(v) = e else { panic!() };
        assert_eq!(cmp(&v[0]).values, vec![Value::PortGroup("pg1".into())]);
        assert_eq!(cmp(&v[1]).values, vec![Value::AddressSet("pg1_ip4".into())]);
        assert!(matches!(&v[2], Expr::ChassisResident { port, .. } if port == "cr-lrp"));
    }

    #[test]
    fn malformed_matches_give_positioned_errors() {
        for (s, pos) in [
            ("ip4 && tcp || udp", 11),
            ("!tcp.dst == 80", 14),
            ("ip4.src ==", 10),
            ("ip4.src = 1", 8),
            ("(ip4", 4),
            ("foo(1)", 0),
            ("1 == tcp.dst > 2", 0),
            ("reg0[5..3] == 1", 0),
            ("ip4 ip6", 4),
            ("is_chassis_resident(1)", 20),
            ("", 0),
            ("{1, 2}", 6),
        ] {
            let e = parse_match(s).unwrap_err();
            assert_eq!(e.pos, pos, "{s}: {e}");
        }
        let deep = "(".repeat(200) + "1" + &")".repeat(200);
        assert!(parse_match(&deep)
            .unwrap_err()
            .message
            .contains("too deeply"));
    }
}
