//! The manifest source: the same objects the Kubernetes watchers deliver,
//! read from YAML files in a directory (multi-document files and
//! `kind: List` included), re-read when a file changes (polling of
//! modification times).
//!
//! Owns parsing and per-document error reporting. A bad document is
//! reported with its file, document index and field, and skipped; the rest
//! of the directory still applies. It must not know about IPAM or OVN.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::model::{ClusterState, Object};

/// What is wrong with one manifest document (or file).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The directory or a file could not be read.
    #[error("{path}: {error}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The text is not YAML.
    #[error("{path} (document {document}): not YAML: {error}")]
    Yaml {
        /// File.
        path: PathBuf,
        /// Index of the document in the file (0-based).
        document: usize,
        /// The parser's message, with line and column.
        error: String,
    },
    /// `kind` or `apiVersion` is missing, or names an object we do not watch.
    #[error(
        "{path} (document {document}): unknown object kind {kind:?} apiVersion {api_version:?}"
    )]
    UnknownKind {
        /// File.
        path: PathBuf,
        /// Index of the document in the file.
        document: usize,
        /// The `kind` found (empty when missing).
        kind: String,
        /// The `apiVersion` found (empty when missing).
        api_version: String,
    },
    /// A field has the wrong type or a required field is missing.
    #[error("{path} (document {document}, {kind}): field `{field}`: {error}")]
    Field {
        /// File.
        path: PathBuf,
        /// Index of the document in the file.
        document: usize,
        /// The object kind.
        kind: String,
        /// Path of the field, e.g. `spec.containers[0].ports[0].containerPort`.
        field: String,
        /// What is wrong with it.
        error: String,
    },
    /// The object has no `metadata.name`.
    #[error("{path} (document {document}, {kind}): field `metadata.name`: missing")]
    MissingName {
        /// File.
        path: PathBuf,
        /// Index of the document in the file.
        document: usize,
        /// The object kind.
        kind: String,
    },
}

/// Objects read from a directory, and the documents that were refused.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid objects, in file then document order.
    pub objects: Vec<Object>,
    /// One entry per refused document or unreadable file.
    pub errors: Vec<ManifestError>,
}

impl Loaded {
    /// The observed state these objects make.
    pub fn into_state(self) -> (ClusterState, Vec<ManifestError>) {
        let mut s = ClusterState::default();
        for o in self.objects {
            s.apply(o);
        }
        (s, self.errors)
    }
}

fn decode<T: DeserializeOwned>(
    v: Value,
    path: &Path,
    document: usize,
    kind: &str,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let field = e.path().to_string();
        ManifestError::Field {
            path: path.to_path_buf(),
            document,
            kind: kind.to_string(),
            field,
            error: e.into_inner().to_string(),
        }
    })
}

/// Decodes one document (recursing into `kind: List`).
fn decode_value(v: Value, path: &Path, document: usize, out: &mut Loaded) {
    if v.is_null() {
        return; // an empty document ("---" at the end of a file)
    }
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let api_version = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let d = |v: Value| -> Result<Object, ManifestError> {
        let obj = match (kind.as_str(), api_version.as_str()) {
            ("Namespace", "v1") => Object::Namespace(decode(v, path, document, &kind)?),
            ("Pod", "v1") => Object::Pod(decode(v, path, document, &kind)?),
            ("Service", "v1") => Object::Service(decode(v, path, document, &kind)?),
            ("Node", "v1") => Object::Node(decode(v, path, document, &kind)?),
            ("EndpointSlice", "discovery.k8s.io/v1") => {
                Object::EndpointSlice(decode(v, path, document, &kind)?)
            }
            ("NetworkPolicy", "networking.k8s.io/v1") => {
                Object::NetworkPolicy(decode(v, path, document, &kind)?)
            }
            ("Subnet", "kubeovn.io/v1") => Object::Subnet(decode(v, path, document, &kind)?),
            _ => {
                return Err(ManifestError::UnknownKind {
                    path: path.to_path_buf(),
                    document,
                    kind: kind.clone(),
                    api_version: api_version.clone(),
                })
            }
        };
        Ok(obj)
    };
    if kind == "List" && api_version == "v1" {
        match v.get("items").and_then(Value::as_sequence) {
            Some(items) => {
                for item in items.clone() {
                    decode_value(item, path, document, out);
                }
            }
            None => out.errors.push(ManifestError::Field {
                path: path.to_path_buf(),
                document,
                kind,
                field: "items".into(),
                error: "missing or not a list".into(),
            }),
        }
        return;
    }
    match d(v) {
        Ok(obj) => {
            let named = match &obj {
                Object::Namespace(o) => o.metadata.name.is_some(),
                Object::Pod(o) => o.metadata.name.is_some(),
                Object::Service(o) => o.metadata.name.is_some(),
                Object::EndpointSlice(o) => o.metadata.name.is_some(),
                Object::NetworkPolicy(o) => o.metadata.name.is_some(),
                Object::Node(o) => o.metadata.name.is_some(),
                Object::Subnet(o) => o.metadata.name.is_some(),
            };
            if named {
                out.objects.push(obj);
            } else {
                out.errors.push(ManifestError::MissingName {
                    path: path.to_path_buf(),
                    document,
                    kind,
                });
            }
        }
        Err(e) => out.errors.push(e),
    }
}

/// Parses the text of one file.
pub fn parse_str(text: &str, path: &Path, out: &mut Loaded) {
    for (document, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match <Value as serde::Deserialize>::deserialize(de) {
            Ok(v) => decode_value(v, path, document, out),
            Err(e) => {
                out.errors.push(ManifestError::Yaml {
                    path: path.to_path_buf(),
                    document,
                    error: e.to_string(),
                });
                // serde_yaml cannot resume after a syntax error in a stream.
                break;
            }
        }
    }
}

/// The manifest files of a directory (`*.yaml`, `*.yml`, `*.json`), sorted.
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let rd = std::fs::read_dir(dir).map_err(|error| ManifestError::Io {
        path: dir.to_path_buf(),
        error,
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every manifest file of `dir`.
pub fn load_dir(dir: &Path) -> Loaded {
    let mut out = Loaded::default();
    match manifest_files(dir) {
        Ok(files) => {
            for f in files {
                match std::fs::read_to_string(&f) {
                    Ok(text) => parse_str(&text, &f, &mut out),
                    Err(error) => out.errors.push(ManifestError::Io { path: f, error }),
                }
            }
        }
        Err(e) => out.errors.push(e),
    }
    out
}

/// The modification times of a directory's manifest files: when it changes,
/// the directory is read again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirStamp(BTreeMap<PathBuf, (Option<SystemTime>, u64)>);

impl DirStamp {
    /// Takes the stamp of `dir` now.
    pub fn of(dir: &Path) -> Self {
        let mut m = BTreeMap::new();
        for f in manifest_files(dir).unwrap_or_default() {
            if let Ok(md) = std::fs::metadata(&f) {
                m.insert(f, (md.modified().ok(), md.len()));
            }
        }
        DirStamp(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_and_list() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: p1, namespace: a}
  spec: {containers: [{name: c}]}
- apiVersion: kubeovn.io/v1
  kind: Subnet
  metadata: {name: s1}
  spec: {cidrBlock: 10.1.0.0/16, namespaces: [a]}
---
"#;
        let mut out = Loaded::default();
        parse_str(text, Path::new("x.yaml"), &mut out);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.objects.len(), 3);
        let (s, _) = out.into_state();
        assert_eq!(s.subnets["s1"].spec.namespaces, vec!["a".to_string()]);
        assert!(s.pods.contains_key(&("a".into(), "p1".into())));
    }

    #[test]
    fn bad_documents_are_reported_with_field_and_skipped() {
        let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: bad}
spec:
  containers:
  - name: c
    ports: [{containerPort: "not-a-number"}]
---
apiVersion: v1
kind: Widget
metadata: {name: w}
---
apiVersion: kubeovn.io/v1
kind: Subnet
metadata: {name: nocidr}
spec: {protocol: IPv4}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: good}
spec: {containers: [{name: c}]}
"#;
        let mut out = Loaded::default();
        parse_str(text, Path::new("dir/bad.yaml"), &mut out);
        assert_eq!(out.objects.len(), 1);
        assert_eq!(out.errors.len(), 4, "{:?}", out.errors);
        let msgs: Vec<String> = out.errors.iter().map(ToString::to_string).collect();
        assert!(msgs[0].contains("dir/bad.yaml"), "{}", msgs[0]);
        assert!(
            msgs[0].contains("spec.containers[0].ports[0].containerPort"),
            "{}",
            msgs[0]
        );
        assert!(msgs[1].contains("Widget"), "{}", msgs[1]);
        assert!(msgs[2].contains("spec"), "{}", msgs[2]);
        assert!(msgs[2].contains("cidrBlock"), "{}", msgs[2]);
        assert!(msgs[3].contains("metadata.name"), "{}", msgs[3]);
    }

    #[test]
    fn syntax_error_is_reported() {
        let mut out = Loaded::default();
        parse_str("kind: [unclosed", Path::new("s.yaml"), &mut out);
        assert!(out.objects.is_empty());
        assert!(matches!(out.errors[0], ManifestError::Yaml { .. }));
    }
}
