//! `CNI_ARGS`: the runtime's `KEY=VALUE;KEY=VALUE` extra arguments, with the
//! keys Kubernetes runtimes (containerd, CRI-O) set pulled out by name.
//!
//! This module owns the parsing of that one variable; it does not read the
//! environment itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why `CNI_ARGS` could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CniArgsError {
    /// A non-empty segment between semicolons has no `=`.
    #[error("CNI_ARGS: pair {0:?} has no '='")]
    MissingEquals(String),
    /// A pair has an empty key.
    #[error("CNI_ARGS: pair {0:?} has an empty key")]
    EmptyKey(String),
    /// The same key is given twice with different values.
    #[error("CNI_ARGS: key {0:?} is given twice")]
    DuplicateKey(String),
}

/// Parsed `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniArgs {
    /// `K8S_POD_NAMESPACE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID` (the sandbox container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_infra_container_id: Option<String>,
    /// `K8S_POD_UID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// `IgnoreUnknown` set to a true value (`1`, `true`).
    #[serde(default)]
    pub ignore_unknown: bool,
    /// Every other key, as given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other: BTreeMap<String, String>,
}

impl CniArgs {
    /// Parses the value of `CNI_ARGS`.
    ///
    /// Pairs are separated by `;`; a pair splits at its first `=` (so a
    /// value may hold `=`). Empty segments (a trailing `;`) are skipped.
    pub fn parse(text: &str) -> Result<CniArgs, CniArgsError> {
        let mut args = CniArgs::default();
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for pair in text.split(';') {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| CniArgsError::MissingEquals(pair.to_owned()))?;
            if key.is_empty() {
                return Err(CniArgsError::EmptyKey(pair.to_owned()));
            }
            if let Some(previous) = seen.insert(key, value) {
                if previous != value {
                    return Err(CniArgsError::DuplicateKey(key.to_owned()));
                }
            }
            let value = value.to_owned();
            match key {
                "K8S_POD_NAMESPACE" => args.pod_namespace = Some(value),
                "K8S_POD_NAME" => args.pod_name = Some(value),
                "K8S_POD_INFRA_CONTAINER_ID" => args.pod_infra_container_id = Some(value),
                "K8S_POD_UID" => args.pod_uid = Some(value),
                "IgnoreUnknown" => {
                    args.ignore_unknown =
                        matches!(value.to_ascii_lowercase().as_str(), "1" | "true")
                }
                _ => {
                    args.other.insert(key.to_owned(), value);
                }
            }
        }
        Ok(args)
    }

    /// `namespace/name` of the pod when both are known.
    pub fn pod_key(&self) -> Option<String> {
        Some(format!(
            "{}/{}",
            self.pod_namespace.as_deref()?,
            self.pod_name.as_deref()?
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_containerd_sends() {
        let args = CniArgs::parse(
            "K8S_POD_INFRA_CONTAINER_ID=0a1b;K8S_POD_UID=5e0c-11;IgnoreUnknown=1;\
             K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        )
        .unwrap();
        assert_eq!(args.pod_namespace.as_deref(), Some("default"));
        assert_eq!(args.pod_name.as_deref(), Some("web-0"));
        assert_eq!(args.pod_infra_container_id.as_deref(), Some("0a1b"));
        assert_eq!(args.pod_uid.as_deref(), Some("5e0c-11"));
        assert!(args.ignore_unknown);
        assert!(args.other.is_empty());
        assert_eq!(args.pod_key().as_deref(), Some("default/web-0"));
    }

    #[test]
    fn spec_example_keeps_unknown_keys() {
        let args = CniArgs::parse("FOO=BAR;ABC=123").unwrap();
        assert_eq!(args.other.get("FOO").map(String::as_str), Some("BAR"));
        assert_eq!(args.other.get("ABC").map(String::as_str), Some("123"));
        assert!(!args.ignore_unknown);
        assert_eq!(args.pod_key(), None);
    }

    #[test]
    fn empty_and_trailing_separators_are_fine() {
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        let args = CniArgs::parse("A=1;;B=;").unwrap();
        assert_eq!(args.other.get("A").map(String::as_str), Some("1"));
        assert_eq!(args.other.get("B").map(String::as_str), Some(""));
    }

    #[test]
    fn value_may_hold_equals() {
        let args = CniArgs::parse("X=a=b").unwrap();
        assert_eq!(args.other.get("X").map(String::as_str), Some("a=b"));
    }

    #[test]
    fn malformed_pairs_are_refused() {
        assert_eq!(
            CniArgs::parse("A=1;junk"),
            Err(CniArgsError::MissingEquals("junk".into()))
        );
        assert_eq!(
            CniArgs::parse("=1"),
            Err(CniArgsError::EmptyKey("=1".into()))
        );
        assert_eq!(
            CniArgs::parse("K8S_POD_NAME=a;K8S_POD_NAME=b"),
            Err(CniArgsError::DuplicateKey("K8S_POD_NAME".into()))
        );
        assert!(CniArgs::parse("A=1;A=1").is_ok());
    }
}
