//! Generates the typed rows of the OVN Northbound and Southbound databases
//! from the `.ovsschema` files that Debian's `ovn-common` installs.

#[path = "src/schema.rs"]
#[allow(dead_code)]
mod schema;

use std::fmt::Write as _;
use std::path::PathBuf;

use schema::{AtomicType, BaseType, ColumnType, DatabaseSchema};

const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "static", "struct", "trait", "true", "type", "unsafe", "use", "where", "while", "async",
    "await", "dyn", "abstract", "become", "box", "do", "final", "macro", "override", "priv",
    "typeof", "unsized", "virtual", "yield", "try", "gen",
];

fn struct_name(table: &str) -> String {
    table
        .split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect()
}

fn field_name(column: &str) -> String {
    if column == "uuid" {
        "uuid_".to_string()
    } else if KEYWORDS.contains(&column) {
        format!("r#{column}")
    } else {
        column.to_string()
    }
}

fn atomic(b: &BaseType) -> &'static str {
    match b.atomic {
        AtomicType::Integer => "i64",
        AtomicType::Real => "f64",
        AtomicType::Boolean => "bool",
        AtomicType::String => "String",
        AtomicType::Uuid => "Uuid",
    }
}

fn rust_type(t: &ColumnType) -> String {
    if let Some(v) = &t.value {
        if t.key.atomic == AtomicType::Real {
            // f64 keys have no total order in Rust's collections.
            panic!("map columns with real keys are not supported");
        }
        return format!("BTreeMap<{}, {}>", atomic(&t.key), atomic(v));
    }
    let k = atomic(&t.key);
    if t.min == 1 && t.max == Some(1) {
        k.to_string()
    } else if t.min == 0 && t.max == Some(1) {
        format!("Option<{k}>")
    } else if t.key.atomic == AtomicType::Real {
        format!("Vec<{k}>")
    } else {
        format!("BTreeSet<{k}>")
    }
}

fn generate(schema: &DatabaseSchema, file: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// Generated from {file} (schema {} {}). Do not edit.\n",
        schema.name, schema.version
    );
    let _ = writeln!(
        s,
        "/// Schema name these rows were generated from.\npub const SCHEMA_NAME: &str = {:?};",
        schema.name
    );
    let _ = writeln!(s, "/// Schema version these rows were generated from.\npub const SCHEMA_VERSION: &str = {:?};", schema.version);
    let _ = writeln!(
        s,
        "/// Every table and its columns, for the connect-time schema check."
    );
    let _ = writeln!(s, "pub const TABLES: &[(&str, &[&str])] = &[");
    for (t, ts) in &schema.tables {
        let cols: Vec<String> = ts.columns.keys().map(|c| format!("{c:?}")).collect();
        let _ = writeln!(s, "    ({t:?}, &[{}]),", cols.join(", "));
    }
    let _ = writeln!(s, "];\n");
    for (t, ts) in &schema.tables {
        let name = struct_name(t);
        let _ = writeln!(s, "/// A row of table `{t}`.");
        let _ = writeln!(
            s,
            "#[derive(Debug, Clone, PartialEq, Default)]\npub struct {name} {{"
        );
        let _ = writeln!(s, "    /// `_uuid`.\n    pub uuid: Uuid,");
        for (c, ct) in &ts.columns {
            let _ = writeln!(
                s,
                "    /// Column `{c}`.\n    pub {}: {},",
                field_name(c),
                rust_type(ct)
            );
        }
        let _ = writeln!(s, "}}\n");
        let cols: Vec<String> = ts.columns.keys().map(|c| format!("{c:?}")).collect();
        let _ = writeln!(s, "impl TableRow for {name} {{");
        let _ = writeln!(s, "    const TABLE: &'static str = {t:?};");
        let _ = writeln!(
            s,
            "    const COLUMNS: &'static [&'static str] = &[{}];",
            cols.join(", ")
        );
        let _ = writeln!(s, "    fn from_row(row: &Row) -> Result<Self, RowError> {{");
        let _ = writeln!(s, "        Ok(Self {{\n            uuid: row.uuid,");
        for c in ts.columns.keys() {
            let _ = writeln!(
                s,
                "            {}: column(row, {t:?}, {c:?})?,",
                field_name(c)
            );
        }
        let _ = writeln!(s, "        }})\n    }}");
        let _ = writeln!(
            s,
            "    fn to_columns(&self) -> Columns {{\n        let mut m = Columns::new();"
        );
        for c in ts.columns.keys() {
            let _ = writeln!(
                s,
                "        m.insert({c:?}.to_string(), self.{}.to_datum());",
                field_name(c)
            );
        }
        let _ = writeln!(s, "        m\n    }}");
        let _ = writeln!(
            s,
            "    fn uuid(&self) -> Uuid {{\n        self.uuid\n    }}\n}}\n"
        );
    }
    s
}

fn main() {
    println!("cargo:rerun-if-env-changed=OVN_SCHEMA_DIR");
    let dir = std::env::var("OVN_SCHEMA_DIR").unwrap_or_else(|_| "/usr/share/ovn".to_string());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    for (file, module) in [("ovn-nb.ovsschema", "nb"), ("ovn-sb.ovsschema", "sb")] {
        let path = PathBuf::from(&dir).join(file);
        println!("cargo:rerun-if-changed={}", path.display());
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => panic!(
                "cannot read the OVN schema {}: {e}. Install the Debian package `ovn-common` \
                 (it ships /usr/share/ovn/*.ovsschema) or set OVN_SCHEMA_DIR to a directory \
                 holding {file}.",
                path.display()
            ),
        };
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
        let schema =
            DatabaseSchema::parse(&json).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let code = generate(&schema, file);
        std::fs::write(out.join(format!("{module}.rs")), code).expect("write generated rows");
    }
}
