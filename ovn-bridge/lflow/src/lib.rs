//! The OVN logical-flow language, as spoken by ovn-northd 23.03.
//!
//! This crate is the front end that turns the text of Southbound
//! `Logical_Flow` rows into structures a classifier compiler can use. It
//! owns the language only: it does not talk to OVSDB, does not know about
//! datapaths or chassis, and does not compile actions to opcodes.
//!
//! * [`lexer`]: tokens of the expression/action language (identifiers,
//!   integers in decimal/hex/IPv4/IPv6/Ethernet form, masks and CIDRs,
//!   strings, `$address_set`, `@port_group`, operators).
//! * [`expr`]: [`parse_match`] parses a `match` column into an [`Expr`].
//! * [`symtab`]: [`SymbolTable::ovn_23_03`] holds every logical field of OVN
//!   23.03 with its width, kind, storage (OVS register or header field),
//!   prerequisite, and the predicate definitions.
//! * [`normalize`](mod@normalize): [`normalize`](fn@normalize) resolves a
//!   parsed match into a disjunction of [`Conjunction`]s of `(field, value,
//!   mask)` tests, with prerequisites added, predicates, value sets, address
//!   sets and port groups expanded (through a caller's [`Lookup`]),
//!   negations pushed down and contradictions removed, under a size bound.
//! * [`actions`]: [`parse_actions`] parses an `actions` column into a typed
//!   [`Action`] list.
//!
//! ```
//! use ovn_lflow::{normalize, parse_actions, parse_match, NoSets, SymbolTable, Test};
//!
//! let symtab = SymbolTable::ovn_23_03();
//! let m = parse_match("ip4 && tcp.dst == 80").unwrap();
//! let dnf = normalize(&m, &symtab, &NoSets).unwrap();
//! assert_eq!(dnf.len(), 1);
//! assert!(dnf[0].tests.contains(&Test::Bits { field: "tcp.dst", value: 80, mask: 0xffff }));
//!
//! let acts = parse_actions("reg9[2] = lookup_arp(inport, arp.spa, arp.sha); next;").unwrap();
//! assert_eq!(acts.len(), 2);
//! ```
#![forbid(unsafe_code)]

pub mod actions;
pub mod expr;
pub mod lexer;
pub mod normalize;
pub mod symtab;

pub use actions::{
    parse_actions, Action, Arg, CtNatKind, Function, LbBackend, LbSnat, NatTarget, NestedKind,
    Pipeline,
};
pub use expr::{parse_match, Comparison, Expr, FieldRef, RelOp, Value};
pub use lexer::{Constant, Format, ParseError, Span};
pub use normalize::{
    normalize, normalize_with_limit, Conjunction, Lookup, NoSets, NormalizeError, Test,
};
pub use symtab::{BitLocation, Field, FieldKind, Storage, SymbolTable};
