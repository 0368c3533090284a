//! OVSDB schemas (RFC 7047 section 3.2): parsing of `.ovsschema` documents and
//! of `get_schema` replies into column types.
//!
//! Owns the schema model only. It must not touch the network or row values;
//! it is also compiled into the build script that generates the typed rows, so
//! it depends on nothing but `serde_json`, `thiserror` and `std`.

use std::collections::BTreeMap;

use serde_json::Value;

/// A schema that could not be understood.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SchemaError {
    /// A required member is missing or has the wrong JSON type.
    #[error("schema: {what} is missing or malformed")]
    Malformed {
        /// Path of the member, e.g. `tables.Logical_Switch.columns.name.type`.
        what: String,
    },
    /// An atomic type that is not one of integer, real, boolean, string, uuid.
    #[error("schema: unknown atomic type {0:?}")]
    UnknownAtomicType(String),
}

/// The five OVSDB atomic types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AtomicType {
    /// 64-bit signed integer.
    Integer,
    /// IEEE double.
    Real,
    /// true / false.
    Boolean,
    /// UTF-8 string.
    String,
    /// Row UUID.
    Uuid,
}

impl AtomicType {
    fn parse(s: &str) -> Result<Self, SchemaError> {
        Ok(match s {
            "integer" => Self::Integer,
            "real" => Self::Real,
            "boolean" => Self::Boolean,
            "string" => Self::String,
            "uuid" => Self::Uuid,
            other => return Err(SchemaError::UnknownAtomicType(other.to_string())),
        })
    }
}

/// A base type: an atomic type plus the constraints the client cares about.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseType {
    /// The atomic type.
    pub atomic: AtomicType,
    /// For uuid columns: the referenced table.
    pub ref_table: Option<String>,
    /// For uuid columns: whether the reference is strong (default) or weak.
    pub ref_weak: bool,
}

impl BaseType {
    fn parse(v: &Value, what: &str) -> Result<Self, SchemaError> {
        match v {
            Value::String(s) => Ok(Self {
                atomic: AtomicType::parse(s)?,
                ref_table: None,
                ref_weak: false,
            }),
            Value::Object(o) => {
                let ty = o.get("type").and_then(Value::as_str).ok_or_else(|| {
                    SchemaError::Malformed {
                        what: format!("{what}.type"),
                    }
                })?;
                Ok(Self {
                    atomic: AtomicType::parse(ty)?,
                    ref_table: o
                        .get("refTable")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    ref_weak: o.get("refType").and_then(Value::as_str) == Some("weak"),
                })
            }
            _ => Err(SchemaError::Malformed {
                what: what.to_string(),
            }),
        }
    }
}

/// The type of a column: a key type, an optional value type (maps), and the
/// cardinality `min..=max` (`max == None` is "unlimited").
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnType {
    /// Key (or element) type.
    pub key: BaseType,
    /// Value type for a map.
    pub value: Option<BaseType>,
    /// Minimum number of elements (0 or 1).
    pub min: u64,
    /// Maximum number of elements; `None` means unlimited.
    pub max: Option<u64>,
}

impl ColumnType {
    /// Parses the `type` member of a column.
    pub fn parse(v: &Value, what: &str) -> Result<Self, SchemaError> {
        let bad = |m: &str| SchemaError::Malformed {
            what: format!("{what}{m}"),
        };
        match v {
            Value::String(_) => Ok(Self {
                key: BaseType::parse(v, what)?,
                value: None,
                min: 1,
                max: Some(1),
            }),
            Value::Object(o) => {
                let key = BaseType::parse(o.get("key").ok_or_else(|| bad(".key"))?, what)?;
                let value = match o.get("value") {
                    Some(v) => Some(BaseType::parse(v, what)?),
                    None => None,
                };
                let min = match o.get("min") {
                    None => 1,
                    Some(v) => v.as_u64().ok_or_else(|| bad(".min"))?,
                };
                let max = match o.get("max") {
                    None => Some(1),
                    Some(Value::String(s)) if s == "unlimited" => None,
                    Some(v) => Some(v.as_u64().ok_or_else(|| bad(".max"))?),
                };
                Ok(Self {
                    key,
                    value,
                    min,
                    max,
                })
            }
            _ => Err(bad("")),
        }
    }

    /// True for a map column.
    pub fn is_map(&self) -> bool {
        self.value.is_some()
    }

    /// True for a column holding exactly one atom (min 1, max 1, not a map).
    /// A "modify" in an `update2` diff replaces such a column.
    pub fn is_scalar(&self) -> bool {
        self.value.is_none() && self.min == 1 && self.max == Some(1)
    }

    /// True for an optional atom (min 0, max 1, not a map).
    pub fn is_optional(&self) -> bool {
        self.value.is_none() && self.min == 0 && self.max == Some(1)
    }
}

/// One table of a schema.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    /// Column name to type; excludes the implicit `_uuid` and `_version`.
    pub columns: BTreeMap<String, ColumnType>,
    /// Whether the table is a root table.
    pub is_root: bool,
    /// Index column sets declared in the schema.
    pub indexes: Vec<Vec<String>>,
}

/// A whole database schema.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseSchema {
    /// Database name, e.g. `OVN_Northbound`.
    pub name: String,
    /// Schema version, e.g. `7.0.0`.
    pub version: String,
    /// Table name to table.
    pub tables: BTreeMap<String, TableSchema>,
}

impl DatabaseSchema {
    /// Parses a schema document (an `.ovsschema` file or a `get_schema` reply).
    pub fn parse(v: &Value) -> Result<Self, SchemaError> {
        let bad = |what: String| SchemaError::Malformed { what };
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("name".into()))?
            .to_string();
        let version = v
            .get("version")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let tables_json = v
            .get("tables")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("tables".into()))?;
        let mut tables = BTreeMap::new();
        for (tname, t) in tables_json {
            let cols = t
                .get("columns")
                .and_then(Value::as_object)
                .ok_or_else(|| bad(format!("tables.{tname}.columns")))?;
            let mut columns = BTreeMap::new();
            for (cname, c) in cols {
                let what = format!("tables.{tname}.columns.{cname}.type");
                let ty = c.get("type").ok_or_else(|| bad(what.clone()))?;
                columns.insert(cname.clone(), ColumnType::parse(ty, &what)?);
            }
            let indexes = t
                .get("indexes")
                .and_then(Value::as_array)
                .map(|ixs| {
                    ixs.iter()
                        .filter_map(Value::as_array)
                        .map(|cols| {
                            cols.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_string)
                                .collect()
                        })
                        .collect()
                })
                .unwrap_or_default();
            tables.insert(
                tname.clone(),
                TableSchema {
                    columns,
                    is_root: t.get("isRoot").and_then(Value::as_bool).unwrap_or(false),
                    indexes,
                },
            );
        }
        Ok(Self {
            name,
            version,
            tables,
        })
    }

    /// Type of `table.column`, if the schema has it.
    pub fn column(&self, table: &str, column: &str) -> Option<&ColumnType> {
        self.tables.get(table)?.columns.get(column)
    }
}
