//! OVSDB values (RFC 7047 section 5.1): atoms, sets and maps, their JSON
//! encodings, and the `update2` diff rules that change them.
//!
//! Owns the value model. It must not know about connections, tables or rows;
//! column types come in from [`crate::schema`].

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{json, Value};

use crate::schema::{AtomicType, ColumnType};

pub use uuid::Uuid;

/// A value that does not follow the OVSDB JSON encoding, or does not fit the
/// column type it is meant for.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DatumError {
    /// The JSON is not an atom, `["set", ...]`, `["map", ...]`, `["uuid", ...]`
    /// or `["named-uuid", ...]`.
    #[error("not an OVSDB value: {0}")]
    Encoding(String),
    /// A uuid string that does not parse.
    #[error("bad uuid {0:?}")]
    BadUuid(String),
    /// An atom of the wrong atomic type for the column.
    #[error("expected {expected:?}, got {got}")]
    WrongType {
        /// The column's atomic type.
        expected: AtomicType,
        /// The atom that was received.
        got: String,
    },
    /// A set where the column wants a map, or the reverse.
    #[error("expected a {expected}, got {got}")]
    WrongShape {
        /// "set" or "map".
        expected: &'static str,
        /// The value that was received.
        got: String,
    },
}

/// One atomic value.
#[derive(Debug, Clone)]
pub enum Atom {
    /// `integer`.
    Integer(i64),
    /// `real`.
    Real(f64),
    /// `boolean`.
    Boolean(bool),
    /// `string`.
    String(String),
    /// `uuid`, encoded `["uuid", "..."]`.
    Uuid(Uuid),
    /// A reference to a row inserted earlier in the same transaction, encoded
    /// `["named-uuid", "name"]`. Only valid in requests.
    NamedUuid(String),
}

impl Atom {
    fn rank(&self) -> u8 {
        match self {
            Atom::Integer(_) => 0,
            Atom::Real(_) => 1,
            Atom::Boolean(_) => 2,
            Atom::String(_) => 3,
            Atom::Uuid(_) => 4,
            Atom::NamedUuid(_) => 5,
        }
    }

    /// Builds a string atom.
    pub fn string(s: impl Into<String>) -> Self {
        Atom::String(s.into())
    }

    /// JSON encoding of the atom.
    pub fn to_json(&self) -> Value {
        match self {
            Atom::Integer(i) => json!(i),
            Atom::Real(r) => json!(r),
            Atom::Boolean(b) => json!(b),
            Atom::String(s) => json!(s),
            Atom::Uuid(u) => json!(["uuid", u.to_string()]),
            Atom::NamedUuid(n) => json!(["named-uuid", n]),
        }
    }

    /// Decodes an atom without knowing its column type.
    pub fn from_json(v: &Value) -> Result<Self, DatumError> {
        match v {
            Value::Bool(b) => Ok(Atom::Boolean(*b)),
            Value::String(s) => Ok(Atom::String(s.clone())),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(Atom::Integer(i))
                } else if let Some(f) = n.as_f64() {
                    Ok(Atom::Real(f))
                } else {
                    Err(DatumError::Encoding(v.to_string()))
                }
            }
            Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                (Some("uuid"), Some(s)) => Uuid::parse_str(s)
                    .map(Atom::Uuid)
                    .map_err(|_| DatumError::BadUuid(s.to_string())),
                (Some("named-uuid"), Some(s)) => Ok(Atom::NamedUuid(s.to_string())),
                _ => Err(DatumError::Encoding(v.to_string())),
            },
            _ => Err(DatumError::Encoding(v.to_string())),
        }
    }

    /// Converts the atom to `ty`, accepting an integer where a real is wanted.
    pub fn coerce(self, ty: AtomicType) -> Result<Self, DatumError> {
        match (ty, self) {
            (AtomicType::Integer, a @ Atom::Integer(_)) => Ok(a),
            (AtomicType::Real, a @ Atom::Real(_)) => Ok(a),
            (AtomicType::Real, Atom::Integer(i)) => Ok(Atom::Real(i as f64)),
            (AtomicType::Boolean, a @ Atom::Boolean(_)) => Ok(a),
            (AtomicType::String, a @ Atom::String(_)) => Ok(a),
            (AtomicType::Uuid, a @ (Atom::Uuid(_) | Atom::NamedUuid(_))) => Ok(a),
            (expected, got) => Err(DatumError::WrongType {
                expected,
                got: got.to_string(),
            }),
        }
    }
}

impl PartialEq for Atom {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Atom {}
impl PartialOrd for Atom {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Atom {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Atom::Integer(a), Atom::Integer(b)) => a.cmp(b),
            (Atom::Real(a), Atom::Real(b)) => a.total_cmp(b),
            (Atom::Boolean(a), Atom::Boolean(b)) => a.cmp(b),
            (Atom::String(a), Atom::String(b)) => a.cmp(b),
            (Atom::Uuid(a), Atom::Uuid(b)) => a.cmp(b),
            (Atom::NamedUuid(a), Atom::NamedUuid(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

impl From<&str> for Atom {
    fn from(s: &str) -> Self {
        Atom::String(s.to_string())
    }
}
impl From<String> for Atom {
    fn from(s: String) -> Self {
        Atom::String(s)
    }
}
impl From<i64> for Atom {
    fn from(i: i64) -> Self {
        Atom::Integer(i)
    }
}
impl From<bool> for Atom {
    fn from(b: bool) -> Self {
        Atom::Boolean(b)
    }
}
impl From<f64> for Atom {
    fn from(r: f64) -> Self {
        Atom::Real(r)
    }
}
impl From<Uuid> for Atom {
    fn from(u: Uuid) -> Self {
        Atom::Uuid(u)
    }
}

/// A column value. Every OVSDB value is a set or a map; a scalar column is a
/// set of exactly one atom, an optional column a set of zero or one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Datum {
    /// A set of atoms (also scalars and optionals).
    Set(BTreeSet<Atom>),
    /// A map of key atoms to value atoms.
    Map(BTreeMap<Atom, Atom>),
}

impl Datum {
    /// A set holding one atom.
    pub fn atom(a: impl Into<Atom>) -> Self {
        Datum::Set(BTreeSet::from([a.into()]))
    }

    /// The empty set.
    pub fn empty_set() -> Self {
        Datum::Set(BTreeSet::new())
    }

    /// A set from atoms.
    pub fn set<A: Into<Atom>>(atoms: impl IntoIterator<Item = A>) -> Self {
        Datum::Set(atoms.into_iter().map(Into::into).collect())
    }

    /// A map from pairs.
    pub fn map<K: Into<Atom>, V: Into<Atom>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Datum::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// A `["uuid", ...]` atom.
    pub fn uuid(u: Uuid) -> Self {
        Datum::atom(Atom::Uuid(u))
    }

    /// A `["named-uuid", ...]` atom.
    pub fn named_uuid(name: impl Into<String>) -> Self {
        Datum::atom(Atom::NamedUuid(name.into()))
    }

    /// The single atom of a one-element set.
    pub fn as_atom(&self) -> Option<&Atom> {
        match self {
            Datum::Set(s) if s.len() == 1 => s.iter().next(),
            _ => None,
        }
    }

    /// Number of elements or pairs.
    pub fn len(&self) -> usize {
        match self {
            Datum::Set(s) => s.len(),
            Datum::Map(m) => m.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// JSON encoding; a one-element set is sent as a bare atom.
    pub fn to_json(&self) -> Value {
        match self {
            Datum::Set(s) if s.len() == 1 => {
                s.iter().next().map(Atom::to_json).unwrap_or(Value::Null)
            }
            Datum::Set(s) => json!(["set", s.iter().map(Atom::to_json).collect::<Vec<_>>()]),
            Datum::Map(m) => json!([
                "map",
                m.iter()
                    .map(|(k, v)| json!([k.to_json(), v.to_json()]))
                    .collect::<Vec<_>>()
            ]),
        }
    }

    /// Decodes a value without knowing its column type. An empty
    /// `["set", []]` stays a set; [`Datum::from_json_typed`] turns it into an
    /// empty map for map columns.
    pub fn from_json(v: &Value) -> Result<Self, DatumError> {
        if let Value::Array(a) = v {
            if a.len() == 2 {
                match (a[0].as_str(), &a[1]) {
                    (Some("set"), Value::Array(elems)) => {
                        return elems
                            .iter()
                            .map(Atom::from_json)
                            .collect::<Result<BTreeSet<_>, _>>()
                            .map(Datum::Set)
                    }
                    (Some("map"), Value::Array(pairs)) => {
                        let mut m = BTreeMap::new();
                        for p in pairs {
                            match p {
                                Value::Array(kv) if kv.len() == 2 => {
                                    m.insert(Atom::from_json(&kv[0])?, Atom::from_json(&kv[1])?);
                                }
                                _ => return Err(DatumError::Encoding(p.to_string())),
                            }
                        }
                        return Ok(Datum::Map(m));
                    }
                    _ => {}
                }
            }
        }
        Atom::from_json(v).map(Datum::atom)
    }

    /// Decodes a value for a column of type `ty`, checking atom types and
    /// shape (set or map).
    pub fn from_json_typed(v: &Value, ty: &ColumnType) -> Result<Self, DatumError> {
        let d = Self::from_json(v)?;
        match (d, &ty.value) {
            (Datum::Set(s), None) => Ok(Datum::Set(
                s.into_iter()
                    .map(|a| a.coerce(ty.key.atomic))
                    .collect::<Result<_, _>>()?,
            )),
            (Datum::Set(s), Some(_)) if s.is_empty() => Ok(Datum::Map(BTreeMap::new())),
            (Datum::Map(m), Some(vt)) => Ok(Datum::Map(
                m.into_iter()
                    .map(|(k, v)| Ok((k.coerce(ty.key.atomic)?, v.coerce(vt.atomic)?)))
                    .collect::<Result<_, DatumError>>()?,
            )),
            (Datum::Map(m), None) if m.is_empty() => Ok(Datum::Set(BTreeSet::new())),
            (d, vt) => Err(DatumError::WrongShape {
                expected: if vt.is_some() { "map" } else { "set" },
                got: d.to_json().to_string(),
            }),
        }
    }

    /// The default value of a column type: empty set or map, or for scalar
    /// columns the zero of the atomic type (what ovsdb-server uses).
    pub fn default_for(ty: &ColumnType) -> Self {
        if ty.is_map() {
            return Datum::Map(BTreeMap::new());
        }
        if ty.min == 0 {
            return Datum::empty_set();
        }
        Datum::atom(match ty.key.atomic {
            AtomicType::Integer => Atom::Integer(0),
            AtomicType::Real => Atom::Real(0.0),
            AtomicType::Boolean => Atom::Boolean(false),
            AtomicType::String => Atom::String(String::new()),
            AtomicType::Uuid => Atom::Uuid(Uuid::nil()),
        })
    }

    /// Applies an `update2`/`update3` "modify" diff for a column of type `ty`:
    /// a column of at most one atom (scalar or optional; not "composite" in
    /// ovsdb-server's terms) takes the new value; a set takes the symmetric difference; a
    /// map removes pairs present with the same value, replaces pairs present
    /// with a different value, and adds absent pairs.
    pub fn apply_diff(&mut self, diff: Datum, ty: &ColumnType) -> Result<(), DatumError> {
        if ty.value.is_none() && ty.max == Some(1) {
            *self = diff;
            return Ok(());
        }
        match (self, diff) {
            (Datum::Set(cur), Datum::Set(d)) => {
                for a in d {
                    if !cur.remove(&a) {
                        cur.insert(a);
                    }
                }
                Ok(())
            }
            (Datum::Map(cur), Datum::Map(d)) => {
                for (k, v) in d {
                    match cur.get(&k) {
                        Some(old) if *old == v => {
                            cur.remove(&k);
                        }
                        _ => {
                            cur.insert(k, v);
                        }
                    }
                }
                Ok(())
            }
            (_, d) => Err(DatumError::WrongShape {
                expected: if ty.is_map() { "map" } else { "set" },
                got: d.to_json().to_string(),
            }),
        }
    }
}

impl<A: Into<Atom>> From<A> for Datum {
    fn from(a: A) -> Self {
        Datum::atom(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::BaseType;

    fn ty(key: AtomicType, value: Option<AtomicType>, min: u64, max: Option<u64>) -> ColumnType {
        let b = |atomic| BaseType {
            atomic,
            ref_table: None,
            ref_weak: false,
        };
        ColumnType {
            key: b(key),
            value: value.map(b),
            min,
            max,
        }
    }

    #[test]
    fn one_element_set_is_a_bare_atom() {
        let d = Datum::set(["a"]);
        assert_eq!(d.to_json(), json!("a"));
        let d2 = Datum::set(["a", "b"]);
        assert_eq!(d2.to_json(), json!(["set", ["a", "b"]]));
        assert_eq!(Datum::from_json(&json!("a")).unwrap(), d);
        assert_eq!(Datum::from_json(&json!(["set", ["b", "a"]])).unwrap(), d2);
    }

    #[test]
    fn uuid_and_named_uuid_round_trip() {
        let u = Uuid::parse_str("6b3e7e53-3a5b-4d0b-8f8e-1b8e5f5e5e5e").unwrap();
        let d = Datum::uuid(u);
        assert_eq!(d.to_json(), json!(["uuid", u.to_string()]));
        assert_eq!(Datum::from_json(&d.to_json()).unwrap(), d);
        let n = Datum::named_uuid("row1");
        assert_eq!(n.to_json(), json!(["named-uuid", "row1"]));
        assert!(matches!(
            Datum::from_json(&json!(["uuid", "nope"])),
            Err(DatumError::BadUuid(_))
        ));
    }

    #[test]
    fn typed_decoding_checks_shape_and_type() {
        let map_ty = ty(AtomicType::String, Some(AtomicType::String), 0, None);
        assert_eq!(
            Datum::from_json_typed(&json!(["set", []]), &map_ty).unwrap(),
            Datum::Map(BTreeMap::new())
        );
        assert!(Datum::from_json_typed(&json!("x"), &map_ty).is_err());
        let int_ty = ty(AtomicType::Integer, None, 1, Some(1));
        assert!(matches!(
            Datum::from_json_typed(&json!("x"), &int_ty),
            Err(DatumError::WrongType { .. })
        ));
        let real_ty = ty(AtomicType::Real, None, 1, Some(1));
        assert_eq!(
            Datum::from_json_typed(&json!(3), &real_ty).unwrap(),
            Datum::atom(3.0)
        );
        assert!(Datum::from_json(&json!({"a": 1})).is_err());
        assert!(Datum::from_json(&json!(["map", [[1]]])).is_err());
    }

    #[test]
    fn diffs_follow_update2_rules() {
        let scalar = ty(AtomicType::String, None, 1, Some(1));
        let mut d = Datum::atom("old");
        d.apply_diff(Datum::atom("new"), &scalar).unwrap();
        assert_eq!(d, Datum::atom("new"));

        let set = ty(AtomicType::String, None, 0, None);
        let mut d = Datum::set(["a", "b"]);
        d.apply_diff(Datum::set(["b", "c"]), &set).unwrap();
        assert_eq!(d, Datum::set(["a", "c"]));

        // Optional columns carry the new value (empty when cleared).
        let opt = ty(AtomicType::Integer, None, 0, Some(1));
        let mut d = Datum::atom(5i64);
        d.apply_diff(Datum::atom(6i64), &opt).unwrap();
        assert_eq!(d, Datum::atom(6i64));
        d.apply_diff(Datum::empty_set(), &opt).unwrap();
        assert_eq!(d, Datum::empty_set());

        let map = ty(AtomicType::String, Some(AtomicType::String), 0, None);
        let mut d = Datum::map([("keep", "1"), ("del", "2"), ("repl", "3")]);
        d.apply_diff(
            Datum::map([("del", "2"), ("repl", "9"), ("add", "4")]),
            &map,
        )
        .unwrap();
        assert_eq!(d, Datum::map([("keep", "1"), ("repl", "9"), ("add", "4")]));

        assert!(d.apply_diff(Datum::set(["x"]), &map).is_err());
    }
}
