//! Conversions between column values and Rust types, and the trait the
//! generated typed rows (`nb::*`, `sb::*`) implement.
//!
//! Owns the mapping of OVSDB types to Rust types: integer `i64`, real `f64`,
//! boolean `bool`, string `String`, uuid `Uuid`; `Option<T>` for min 0 max 1;
//! `BTreeSet<T>` (`Vec<f64>` for reals) for sets; `BTreeMap<K, V>` for maps.
//! It must not know any particular table.

use std::collections::{BTreeMap, BTreeSet};

use crate::datum::{Atom, Datum, Uuid};
use crate::ops::{Columns, Condition, Operation};
use crate::replica::Row;

/// A row that does not fit its typed struct.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum RowError {
    /// A required column is absent from the row (not monitored?).
    #[error("{table}.{column}: column missing from row")]
    MissingColumn {
        /// Table.
        table: &'static str,
        /// Column.
        column: &'static str,
    },
    /// The value does not have the type of the field.
    #[error("{table}.{column}: {error}")]
    BadValue {
        /// Table.
        table: &'static str,
        /// Column.
        column: &'static str,
        /// What is wrong.
        error: String,
    },
}

/// An atom convertible to a Rust value.
pub trait FromAtom: Sized {
    /// Converts, or says what was expected.
    fn from_atom(a: &Atom) -> Result<Self, String>;
}
/// A Rust value convertible to an atom.
pub trait ToAtom {
    /// Converts.
    fn to_atom(&self) -> Atom;
}

macro_rules! atom_conv {
    ($t:ty, $variant:ident, $name:literal) => {
        impl FromAtom for $t {
            fn from_atom(a: &Atom) -> Result<Self, String> {
                match a {
                    Atom::$variant(v) => Ok(v.clone()),
                    other => Err(format!("expected {}, got {}", $name, other)),
                }
            }
        }
        impl ToAtom for $t {
            fn to_atom(&self) -> Atom {
                Atom::$variant(self.clone())
            }
        }
    };
}
atom_conv!(i64, Integer, "integer");
atom_conv!(f64, Real, "real");
atom_conv!(bool, Boolean, "boolean");
atom_conv!(String, String, "string");
atom_conv!(Uuid, Uuid, "uuid");

/// A column value convertible to a Rust value.
pub trait FromDatum: Sized {
    /// Converts; `None` means the column is absent from the row.
    fn from_datum(d: Option<&Datum>) -> Result<Self, String>;
}
/// A Rust value convertible to a column value.
pub trait ToDatum {
    /// Converts.
    fn to_datum(&self) -> Datum;
}

fn elements(d: &Datum) -> Result<&BTreeSet<Atom>, String> {
    match d {
        Datum::Set(s) => Ok(s),
        Datum::Map(m) if m.is_empty() => {
            static EMPTY: BTreeSet<Atom> = BTreeSet::new();
            Ok(&EMPTY)
        }
        Datum::Map(_) => Err("expected a set, got a map".into()),
    }
}

macro_rules! scalar_datum {
    ($t:ty) => {
        impl FromDatum for $t {
            fn from_datum(d: Option<&Datum>) -> Result<Self, String> {
                let d = d.ok_or_else(|| "missing".to_string())?;
                match d.as_atom() {
                    Some(a) => <$t as FromAtom>::from_atom(a),
                    None => Err(format!("expected one atom, got {} elements", d.len())),
                }
            }
        }
        impl ToDatum for $t {
            fn to_datum(&self) -> Datum {
                Datum::atom(self.to_atom())
            }
        }
    };
}
scalar_datum!(i64);
scalar_datum!(f64);
scalar_datum!(bool);
scalar_datum!(String);
scalar_datum!(Uuid);

impl<T: FromAtom> FromDatum for Option<T> {
    fn from_datum(d: Option<&Datum>) -> Result<Self, String> {
        let Some(d) = d else { return Ok(None) };
        let s = elements(d)?;
        match s.len() {
            0 => Ok(None),
            1 => s.iter().next().map(T::from_atom).transpose(),
            n => Err(format!("expected at most one element, got {n}")),
        }
    }
}
impl<T: ToAtom> ToDatum for Option<T> {
    fn to_datum(&self) -> Datum {
        Datum::Set(self.iter().map(ToAtom::to_atom).collect())
    }
}

impl<T: FromAtom + Ord> FromDatum for BTreeSet<T> {
    fn from_datum(d: Option<&Datum>) -> Result<Self, String> {
        let Some(d) = d else {
            return Ok(BTreeSet::new());
        };
        elements(d)?.iter().map(T::from_atom).collect()
    }
}
impl<T: ToAtom> ToDatum for BTreeSet<T> {
    fn to_datum(&self) -> Datum {
        Datum::Set(self.iter().map(ToAtom::to_atom).collect())
    }
}

impl<T: FromAtom> FromDatum for Vec<T> {
    fn from_datum(d: Option<&Datum>) -> Result<Self, String> {
        let Some(d) = d else { return Ok(Vec::new()) };
        elements(d)?.iter().map(T::from_atom).collect()
    }
}
impl<T: ToAtom> ToDatum for Vec<T> {
    fn to_datum(&self) -> Datum {
        Datum::Set(self.iter().map(ToAtom::to_atom).collect())
    }
}

impl<K: FromAtom + Ord, V: FromAtom> FromDatum for BTreeMap<K, V> {
    fn from_datum(d: Option<&Datum>) -> Result<Self, String> {
        match d {
            None => Ok(BTreeMap::new()),
            Some(Datum::Map(m)) => m
                .iter()
                .map(|(k, v)| Ok((K::from_atom(k)?, V::from_atom(v)?)))
                .collect(),
            Some(Datum::Set(s)) if s.is_empty() => Ok(BTreeMap::new()),
            Some(Datum::Set(_)) => Err("expected a map, got a set".into()),
        }
    }
}
impl<K: ToAtom, V: ToAtom> ToDatum for BTreeMap<K, V> {
    fn to_datum(&self) -> Datum {
        Datum::Map(
            self.iter()
                .map(|(k, v)| (k.to_atom(), v.to_atom()))
                .collect(),
        )
    }
}

/// Reads `column` of `row` as `T` (used by the generated code).
pub fn column<T: FromDatum>(
    row: &Row,
    table: &'static str,
    column: &'static str,
) -> Result<T, RowError> {
    let d = row.get(column);
    T::from_datum(d).map_err(|error| match d {
        None => RowError::MissingColumn { table, column },
        Some(_) => RowError::BadValue {
            table,
            column,
            error,
        },
    })
}

/// A typed row of one table, generated from the schema.
pub trait TableRow: Sized {
    /// Table name.
    const TABLE: &'static str;
    /// Column names (without `_uuid`).
    const COLUMNS: &'static [&'static str];

    /// Converts a replica row.
    fn from_row(row: &Row) -> Result<Self, RowError>;

    /// All column values.
    fn to_columns(&self) -> Columns;

    /// The row's uuid (nil for a row not yet inserted).
    fn uuid(&self) -> Uuid;

    /// An insert of this row (every column), with an optional `uuid-name`.
    fn insert_op(&self, uuid_name: Option<&str>) -> Operation {
        Operation::insert(Self::TABLE, self.to_columns(), uuid_name)
    }

    /// An update of this row (by uuid) that writes `columns` (all when
    /// empty). Unknown column names are ignored.
    fn update_op(&self, columns: &[&str]) -> Operation {
        let mut row = self.to_columns();
        if !columns.is_empty() {
            row.retain(|k, _| columns.contains(&k.as_str()));
        }
        Operation::Update {
            table: Self::TABLE.into(),
            conditions: vec![Condition::uuid(self.uuid())],
            row,
        }
    }

    /// A delete of this row (by uuid).
    fn delete_op(&self) -> Operation {
        Operation::Delete {
            table: Self::TABLE.into(),
            conditions: vec![Condition::uuid(self.uuid())],
        }
    }
}
