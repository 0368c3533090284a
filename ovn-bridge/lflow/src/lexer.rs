//! Lexer for the OVN expression and action language.
//!
//! Owns the token vocabulary (identifiers, integer constants in every OVN
//! format, masked constants, quoted strings, `$address_set`, `@port_group`,
//! punctuation) and the byte positions of tokens. It knows nothing about
//! fields or semantics: that belongs to the parsers and the symbol table.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A byte range of the input text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// Offset of the first byte.
    pub start: usize,
    /// Offset one past the last byte.
    pub end: usize,
}

/// The written form of an integer constant; it matters for CIDR masks,
/// boolean constants (only decimal `0`/`1`) and for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `123`
    Decimal,
    /// `0x1f`
    Hex,
    /// `10.0.0.1`
    Ipv4,
    /// `fd00::1`
    Ipv6,
    /// `00:11:22:33:44:55`
    Ethernet,
}

/// An integer constant of up to 128 bits, optionally masked (`value/mask`).
///
/// The invariant `value & !mask == 0` holds for masked constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Constant {
    /// The value, right-aligned (an IPv4 address occupies the low 32 bits).
    pub value: u128,
    /// The mask, when the constant was written `value/mask` or as a CIDR.
    pub mask: Option<u128>,
    /// How the value was written.
    pub format: Format,
}

impl Constant {
    /// An unmasked constant.
    pub fn new(value: u128, format: Format) -> Self {
        Constant {
            value,
            mask: None,
            format,
        }
    }

    /// Number of significant bits: of the mask when masked, of the value otherwise.
    pub fn width(&self) -> u32 {
        let v = self.mask.unwrap_or(self.value);
        128 - v.leading_zeros()
    }
}

impl fmt::Display for Constant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn one(f: &mut fmt::Formatter<'_>, v: u128, format: Format) -> fmt::Result {
            match format {
                Format::Decimal => write!(f, "{v}"),
                Format::Hex => write!(f, "{v:#x}"),
                Format::Ipv4 => write!(f, "{}", Ipv4Addr::from(v as u32)),
                Format::Ipv6 => write!(f, "{}", Ipv6Addr::from(v)),
                Format::Ethernet => {
                    let b = (v as u64).to_be_bytes();
                    write!(
                        f,
                        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                        b[2], b[3], b[4], b[5], b[6], b[7]
                    )
                }
            }
        }
        one(f, self.value, self.format)?;
        if let Some(m) = self.mask {
            f.write_str("/")?;
            one(f, m, self.format)?;
        }
        Ok(())
    }
}

/// One token of the language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// Identifier, possibly dotted: `ip4.src`, `ct.est`, `next`.
    Id(String),
    /// Integer constant, possibly masked.
    Int(Constant),
    /// Double-quoted string, escapes resolved.
    Str(String),
    /// `$name`: an address set.
    AddressSet(String),
    /// `@name`: a port group.
    PortGroup(String),
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
    /// `&&`
    LogAnd,
    /// `||`
    LogOr,
    /// `!`
    LogNot,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `{`
    LCurly,
    /// `}`
    RCurly,
    /// `[`
    LSquare,
    /// `]`
    RSquare,
    /// `..`
    Ellipsis,
    /// `,`
    Comma,
    /// `;`
    Semicolon,
    /// `=`
    Equals,
    /// `<->`
    Exchange,
    /// `--`
    Decrement,
    /// `-`
    Hyphen,
    /// `:`
    Colon,
    /// End of input.
    End,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Token::Id(s) => return write!(f, "`{s}'"),
            Token::Int(c) => return write!(f, "`{c}'"),
            Token::Str(s) => return write!(f, "string {s:?}"),
            Token::AddressSet(s) => return write!(f, "`${s}'"),
            Token::PortGroup(s) => return write!(f, "`@{s}'"),
            Token::Eq => "==",
            Token::Ne => "!=",
            Token::Lt => "<",
            Token::Le => "<=",
            Token::Gt => ">",
            Token::Ge => ">=",
            Token::LogAnd => "&&",
            Token::LogOr => "||",
            Token::LogNot => "!",
            Token::LParen => "(",
            Token::RParen => ")",
            Token::LCurly => "{",
            Token::RCurly => "}",
            Token::LSquare => "[",
            Token::RSquare => "]",
            Token::Ellipsis => "..",
            Token::Comma => ",",
            Token::Semicolon => ";",
            Token::Equals => "=",
            Token::Exchange => "<->",
            Token::Decrement => "--",
            Token::Hyphen => "-",
            Token::Colon => ":",
            Token::End => return f.write_str("end of input"),
        };
        write!(f, "`{s}'")
    }
}

/// A syntax or semantic error with the byte offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at offset {pos}: {message}")]
pub struct ParseError {
    /// Byte offset into the parsed text.
    pub pos: usize,
    /// What is wrong, in words.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(pos: usize, message: impl Into<String>) -> Self {
        ParseError {
            pos,
            message: message.into(),
        }
    }
}

fn is_id1(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b'.'
}

fn is_idn(c: u8) -> bool {
    is_id1(c) || c.is_ascii_digit()
}

/// Splits `input` into tokens with their spans; the last token is [`Token::End`].
pub fn tokenize(input: &str) -> Result<Vec<(Token, Span)>, ParseError> {
    let b = input.as_bytes();
    let mut out = Vec::with_capacity(input.len() / 3 + 2);
    let mut p = 0usize;
    loop {
        while p < b.len() && b[p].is_ascii_whitespace() {
            p += 1;
        }
        let start = p;
        if p >= b.len() {
            out.push((Token::End, Span { start, end: start }));
            return Ok(out);
        }
        let c = b[p];
        let at = |n: usize| b.get(n).copied().unwrap_or(0);
        let (tok, end) = match c {
            b'/' => {
                if at(p + 1) == b'/' {
                    while p < b.len() && b[p] != b'\n' {
                        p += 1;
                    }
                    continue;
                } else if at(p + 1) == b'*' {
                    p += 2;
                    loop {
                        if p + 1 < b.len() && b[p] == b'*' && b[p + 1] == b'/' {
                            p += 2;
                            break;
                        }
                        if p >= b.len() || b[p] == b'\n' {
                            return Err(ParseError::new(start, "`/*' without matching `*/'."));
                        }
                        p += 1;
                    }
                    continue;
                } else {
                    return Err(ParseError::new(
                        start,
                        "`/' is only valid as part of `//' or `/*'.",
                    ));
                }
            }
            b'(' => (Token::LParen, p + 1),
            b')' => (Token::RParen, p + 1),
            b'{' => (Token::LCurly, p + 1),
            b'}' => (Token::RCurly, p + 1),
            b'[' => (Token::LSquare, p + 1),
            b']' => (Token::RSquare, p + 1),
            b',' => (Token::Comma, p + 1),
            b';' => (Token::Semicolon, p + 1),
            b'=' if at(p + 1) == b'=' => (Token::Eq, p + 2),
            b'=' => (Token::Equals, p + 1),
            b'!' if at(p + 1) == b'=' => (Token::Ne, p + 2),
            b'!' => (Token::LogNot, p + 1),
            b'&' if at(p + 1) == b'&' => (Token::LogAnd, p + 2),
            b'&' => return Err(ParseError::new(start, "`&' is only valid as part of `&&'.")),
            b'|' if at(p + 1) == b'|' => (Token::LogOr, p + 2),
            b'|' => return Err(ParseError::new(start, "`|' is only valid as part of `||'.")),
            b'<' if at(p + 1) == b'=' => (Token::Le, p + 2),
            b'<' if at(p + 1) == b'-' && at(p + 2) == b'>' => (Token::Exchange, p + 3),
            b'<' => (Token::Lt, p + 1),
            b'>' if at(p + 1) == b'=' => (Token::Ge, p + 2),
            b'>' => (Token::Gt, p + 1),
            b'.' if at(p + 1) == b'.' => (Token::Ellipsis, p + 2),
            b'.' => {
                return Err(ParseError::new(
                    start,
                    "`.' is only valid as part of `..' or a number.",
                ))
            }
            b'-' if at(p + 1) == b'-' => (Token::Decrement, p + 2),
            b'-' => (Token::Hyphen, p + 1),
            b':' if at(p + 1) != b':' => (Token::Colon, p + 1),
            b'$' | b'@' => {
                let s = p + 1;
                if !is_id1(at(s)) {
                    return Err(ParseError::new(
                        start,
                        format!("`{}' must be followed by a valid identifier.", c as char),
                    ));
                }
                let mut e = s;
                while e < b.len() && is_idn(b[e]) {
                    e += 1;
                }
                let name = input[s..e].to_string();
                let t = if c == b'$' {
                    Token::AddressSet(name)
                } else {
                    Token::PortGroup(name)
                };
                (t, e)
            }
            b'"' => lex_string(input, p)?,
            b':' | b'0'..=b'9' => lex_integer(input, p)?,
            b'a'..=b'f' | b'A'..=b'F' => {
                let mut e = p;
                while e < b.len() && b[e].is_ascii_hexdigit() {
                    e += 1;
                }
                if at(e) == b':' {
                    lex_integer(input, p)?
                } else {
                    lex_id(input, p)
                }
            }
            _ if is_id1(c) => lex_id(input, p),
            _ => {
                let ch = input[p..].chars().next().unwrap_or('?');
                return Err(ParseError::new(
                    start,
                    format!("Invalid character `{ch}' in input."),
                ));
            }
        };
        out.push((tok, Span { start, end }));
        p = end;
    }
}

fn lex_id(input: &str, p: usize) -> (Token, usize) {
    let b = input.as_bytes();
    let mut e = p;
    while e < b.len() && is_idn(b[e]) {
        e += 1;
    }
    (Token::Id(input[p..e].to_string()), e)
}

fn lex_string(input: &str, p: usize) -> Result<(Token, usize), ParseError> {
    let mut out = String::new();
    let mut chars = input[p + 1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((Token::Str(out), p + 1 + i + 1)),
            '\\' => {
                let Some((j, e)) = chars.next() else { break };
                match e {
                    '"' | '\\' | '/' => out.push(e),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'u' => {
                        let hex = input.get(p + 1 + j + 1..p + 1 + j + 5).unwrap_or("");
                        let code = u32::from_str_radix(hex, 16).ok().filter(|_| hex.len() == 4);
                        match code.and_then(char::from_u32) {
                            Some(ch) => out.push(ch),
                            None => {
                                return Err(ParseError::new(
                                    p + j,
                                    "Invalid \\u escape in string (expecting 4 hex digits of a non-surrogate code point).",
                                ))
                            }
                        }
                        for _ in 0..4 {
                            chars.next();
                        }
                    }
                    other => {
                        return Err(ParseError::new(
                            p + j,
                            format!("Invalid escape `\\{other}' in string."),
                        ))
                    }
                }
            }
            _ => out.push(c),
        }
    }
    Err(ParseError::new(p, "Input ends inside quoted string."))
}

/// Scans the extent of a numeric token like OVN: alphanumerics, colons
/// (not after a dot, so `1.2.3.4:80` is three tokens) and single dots.
fn numeric_extent(b: &[u8], p: usize) -> usize {
    let mut e = p;
    let mut saw_dot = false;
    while e < b.len() {
        let c = b[e];
        if c.is_ascii_alphanumeric() || (c == b':' && !saw_dot) {
            e += 1;
        } else if c == b'.' && b.get(e + 1) != Some(&b'.') {
            saw_dot = true;
            e += 1;
        } else {
            break;
        }
    }
    e
}

fn parse_numeric(text: &str, pos: usize) -> Result<Constant, ParseError> {
    let err = |m: &str| ParseError::new(pos, m.to_string());
    if text.is_empty() {
        return Err(err("Integer constant expected."));
    }
    if text.len() == 17 && text.as_bytes()[2] == b':' {
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() == 6 && parts.iter().all(|p| p.len() == 2) {
            let mut v: u128 = 0;
            for part in parts {
                let byte =
                    u8::from_str_radix(part, 16).map_err(|_| err("Invalid Ethernet address."))?;
                v = (v << 8) | u128::from(byte);
            }
            return Ok(Constant::new(v, Format::Ethernet));
        }
    }
    if text.bytes().all(|c| c.is_ascii_digit()) {
        if text.len() > 1 && text.starts_with('0') {
            return Err(err("Decimal constants must not have leading zeros."));
        }
        let v: u64 = text
            .parse()
            .map_err(|_| err("Decimal constants must be less than 2**64."))?;
        return Ok(Constant::new(u128::from(v), Format::Decimal));
    }
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        if hex.is_empty() {
            return Err(err("Hex digits expected following 0x."));
        }
        let digits = hex.trim_start_matches('0');
        if digits.len() > 32 {
            return Err(err(
                "Hex constant wider than 128 bits (no OVN field is that wide).",
            ));
        }
        if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(err("Invalid hex constant."));
        }
        let v = if digits.is_empty() {
            0
        } else {
            u128::from_str_radix(digits, 16).map_err(|_| err("Invalid hex constant."))?
        };
        return Ok(Constant::new(v, Format::Hex));
    }
    if let Ok(a) = text.parse::<Ipv4Addr>() {
        return Ok(Constant::new(u128::from(u32::from(a)), Format::Ipv4));
    }
    if let Ok(a) = text.parse::<Ipv6Addr>() {
        return Ok(Constant::new(u128::from(a), Format::Ipv6));
    }
    Err(err("Invalid numeric constant."))
}

fn prefix_mask(bits: u32, width: u32) -> u128 {
    if bits == 0 {
        0
    } else {
        let ones = u128::MAX << (128 - bits);
        ones >> (128 - width)
    }
}

fn lex_integer(input: &str, p: usize) -> Result<(Token, usize), ParseError> {
    let b = input.as_bytes();
    let e = numeric_extent(b, p);
    let mut c = parse_numeric(&input[p..e], p)?;
    if b.get(e) != Some(&b'/') {
        return Ok((Token::Int(c), e));
    }
    let ms = e + 1;
    let me = numeric_extent(b, ms);
    let m = parse_numeric(&input[ms..me], ms)?;
    let mask = if m.format == c.format {
        m.value
    } else if c.format == Format::Ipv4 && m.format == Format::Decimal && m.value <= 32 {
        prefix_mask(m.value as u32, 32)
    } else if c.format == Format::Ipv6 && m.format == Format::Decimal && m.value <= 128 {
        prefix_mask(m.value as u32, 128)
    } else if c.format == Format::Decimal && m.format == Format::Hex && c.value == 0 {
        c.format = Format::Hex;
        m.value
    } else {
        return Err(ParseError::new(
            ms,
            "Value and mask have incompatible formats.",
        ));
    };
    c.value &= mask;
    c.mask = Some(mask);
    Ok((Token::Int(c), me))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Token> {
        tokenize(s).unwrap().into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn identifiers_and_operators() {
        assert_eq!(
            toks("ip4.src == 10.0.0.1 && !ct.est || reg0[1..3] <-> xxreg1"),
            vec![
                Token::Id("ip4.src".into()),
                Token::Eq,
                Token::Int(Constant::new(0x0a00_0001, Format::Ipv4)),
                Token::LogAnd,
                Token::LogNot,
                Token::Id("ct.est".into()),
                Token::LogOr,
                Token::Id("reg0".into()),
                Token::LSquare,
                Token::Int(Constant::new(1, Format::Decimal)),
                Token::Ellipsis,
                Token::Int(Constant::new(3, Format::Decimal)),
                Token::RSquare,
                Token::Exchange,
                Token::Id("xxreg1".into()),
                Token::End,
            ]
        );
        assert_eq!(
            toks("< <= > >= != = ; , : - -- { } ( )"),
            vec![
                Token::Lt,
                Token::Le,
                Token::Gt,
                Token::Ge,
                Token::Ne,
                Token::Equals,
                Token::Semicolon,
                Token::Comma,
                Token::Colon,
                Token::Hyphen,
                Token::Decrement,
                Token::LCurly,
                Token::RCurly,
                Token::LParen,
                Token::RParen,
                Token::End
            ]
        );
    }

    #[test]
    fn numbers_in_every_format() {
        assert_eq!(
            toks("0x800")[0],
            Token::Int(Constant::new(0x800, Format::Hex))
        );
        assert_eq!(
            toks("ff:ff:ff:ff:ff:ff")[0],
            Token::Int(Constant::new(0xffff_ffff_ffff, Format::Ethernet))
        );
        assert_eq!(
            toks("fe80::1")[0],
            Token::Int(Constant::new(0xfe80 << 112 | 1, Format::Ipv6))
        );
        assert_eq!(
            toks("::ffff:1.2.3.4")[0],
            Token::Int(Constant::new(0xffff_0102_0304, Format::Ipv6))
        );
        let Token::Int(c) = &toks("10.0.0.7/24")[0] else {
            panic!()
        };
        assert_eq!((c.value, c.mask), (0x0a00_0000, Some(0xffff_ff00)));
        let Token::Int(c) = &toks("fd00::/64")[0] else {
            panic!()
        };
        assert_eq!(c.mask, Some(u128::MAX << 64));
        let Token::Int(c) = &toks("0/0x3")[0] else {
            panic!()
        };
        assert_eq!((c.value, c.mask, c.format), (0, Some(3), Format::Hex));
        let Token::Int(c) = &toks("0x10/0x30")[0] else {
            panic!()
        };
        assert_eq!((c.value, c.mask), (0x10, Some(0x30)));
        // An address followed by a port is three tokens.
        assert_eq!(toks("10.0.0.1:80").len(), 4);
    }

    #[test]
    fn strings_sets_groups_comments() {
        assert_eq!(
            toks(r#""a\"b\\c\u0041" $as1 @pg_1 /* c */ x // tail"#),
            vec![
                Token::Str("a\"b\\cA".into()),
                Token::AddressSet("as1".into()),
                Token::PortGroup("pg_1".into()),
                Token::Id("x".into()),
                Token::End
            ]
        );
    }

    #[test]
    fn malformed_input_is_positioned() {
        for (s, pos) in [
            ("a & b", 2),
            ("x == 01", 5),
            ("\"abc", 0),
            ("a /* b", 2),
            ("1.2.3.4/ff:ff:ff:ff:ff:ff", 8),
            ("$ x", 0),
            ("x == 1.2.3", 5),
            ("x # y", 2),
            ("99999999999999999999", 0),
            ("\"\\q\"", 1),
        ] {
            let e = tokenize(s).unwrap_err();
            assert_eq!(e.pos, pos, "{s}: {e}");
        }
    }
}
