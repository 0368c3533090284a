//! The plugin configuration the runtime writes on stdin: the spec's keys
//! (`cniVersion`, `name`, `type`, `args`, `runtimeConfig`, `prevResult`,
//! `ipam`, `dns`, `cni.dev/valid-attachments`) and this plugin's own keys
//! (`socketPath`, `interfaceType`, the Kube-OVN vhost-user keys, ...).
//!
//! This module owns decoding and validating that document, keeping the whole
//! of it for the daemon; it does not read the environment or open sockets.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::spec::{CniError, CniResult, Dns, ErrorCode, SpecVersion, SUPPORTED_VERSIONS};

/// Where the node daemon listens when `socketPath` is not set.
pub const DEFAULT_DAEMON_SOCKET: &str = "/run/ovn-bridge/cni.sock";
/// The kubelet root directory when `kubeletDir` is not set.
pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet";
/// How long the plugin waits for the daemon's answer when `daemonTimeoutSeconds` is not set.
pub const DEFAULT_DAEMON_TIMEOUT_SECS: u64 = 60;

/// Why the configuration on stdin was refused. Each variant maps to one spec
/// error code ([`ConfigError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON, or not a JSON object (code 6).
    #[error("network configuration is not a JSON object: {0}")]
    Decode(String),
    /// `cniVersion` missing or not one this plugin speaks (code 1).
    #[error("cniVersion {found:?} is not supported; supported versions are {}", SUPPORTED_VERSIONS.join(", "))]
    UnsupportedVersion {
        /// The value given, `None` when the key is missing.
        found: Option<String>,
    },
    /// A key holds a value of the wrong type or an invalid value (code 7).
    #[error("network configuration key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A key holds a value this plugin does not support (code 2).
    #[error(
        "unsupported value {value:?} for network configuration key {key:?}; expected {expected}"
    )]
    UnsupportedValue {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// `prevResult` is not a result document (code 6).
    #[error("prevResult cannot be decoded: {0}")]
    PrevResult(String),
}

impl ConfigError {
    /// The spec error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ConfigError::Decode(_) | ConfigError::PrevResult(_) => ErrorCode::DecodingFailure,
            ConfigError::UnsupportedVersion { .. } => ErrorCode::IncompatibleVersion,
            ConfigError::InvalidKey { .. } => ErrorCode::InvalidNetworkConfig,
            ConfigError::UnsupportedValue { .. } => ErrorCode::UnsupportedField,
        }
    }

    /// This failure as a spec error.
    pub fn to_cni_error(&self) -> CniError {
        CniError::new(self.code(), self.to_string())
    }
}

/// What kind of pod interface the attachment gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InterfaceType {
    /// A kernel interface in the pod's netns whose other end the fastpath polls.
    Kernel,
    /// A vhost-user socket in a directory mounted into the pod (DPDK pods, VMs).
    VhostUser,
    /// The daemon decides from the pod's annotations.
    Auto,
}

impl InterfaceType {
    fn parse(text: &str) -> Option<InterfaceType> {
        match text {
            "kernel" => Some(InterfaceType::Kernel),
            "vhost-user" => Some(InterfaceType::VhostUser),
            "auto" => Some(InterfaceType::Auto),
            _ => None,
        }
    }
}

/// The vhost-user socket of a DPDK pod or VM, named as Kube-OVN names it:
/// an `emptyDir` volume of the pod and a socket file name inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostUserSocket {
    /// `vhost_user_socket_volume_name`: the pod volume holding the socket.
    pub volume_name: String,
    /// `vhost_user_socket_name`: the socket file name in that volume; the
    /// daemon picks one when absent.
    pub socket_name: Option<String>,
    /// `vhost_user_socket_consumption` (e.g. `kubevirt`), passed through.
    pub consumption: Option<String>,
}

impl VhostUserSocket {
    /// The host directory behind the volume: kubelet keeps `emptyDir`
    /// volumes at `<kubeletDir>/pods/<pod uid>/volumes/kubernetes.io~empty-dir/<volume>`.
    pub fn host_dir(&self, kubelet_dir: &Path, pod_uid: &str) -> PathBuf {
        kubelet_dir
            .join("pods")
            .join(pod_uid)
            .join("volumes")
            .join("kubernetes.io~empty-dir")
            .join(&self.volume_name)
    }
}

/// One still-valid attachment named in a GC request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttachmentId {
    /// `CNI_CONTAINERID` of the attachment's ADD.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `CNI_IFNAME` of the attachment's ADD.
    pub ifname: String,
}

/// The decoded plugin configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginConfig {
    /// `cniVersion`, one of [`SUPPORTED_VERSIONS`].
    pub cni_version: String,
    /// `name`: the network name.
    pub name: String,
    /// `type`: the plugin binary name.
    pub plugin_type: String,
    /// `socketPath` (or Kube-OVN's `server_socket`): the daemon's socket.
    pub socket_path: PathBuf,
    /// `interfaceType`; when absent, `vhost-user` if the vhost-user keys are
    /// present, else `kernel`.
    pub interface_type: InterfaceType,
    /// The vhost-user socket keys, when given.
    pub vhost_user: Option<VhostUserSocket>,
    /// `kubeletDir`: kubelet's root directory.
    pub kubelet_dir: PathBuf,
    /// `daemonTimeoutSeconds`: how long to wait for the daemon's answer.
    pub daemon_timeout_secs: u64,
    /// `mtu`: an MTU the administrator forces on the pod interface.
    pub mtu: Option<u32>,
    /// `dns`.
    pub dns: Dns,
    /// `ipam`, passed through.
    pub ipam: Option<Value>,
    /// `args`, passed through.
    pub args: Option<Value>,
    /// `runtimeConfig`, passed through.
    pub runtime_config: Option<Value>,
    /// `prevResult`, decoded.
    pub prev_result: Option<CniResult>,
    /// `cni.dev/valid-attachments` (GC); libcni's key, with the spec text's
    /// `cni.dev/attachments` accepted too. Absent or null means none.
    pub valid_attachments: Vec<AttachmentId>,
    /// The whole document as received, for keys the daemon reads itself.
    pub raw: Value,
}

/// Whether a network name follows the spec: an alphanumeric first character,
/// then alphanumerics, `_`, `.` or `-`. Container ids follow the same rule.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Whether `name` can be one path component (no separator, not `.`/`..`).
fn is_path_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

fn string_key(
    object: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, ConfigError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ConfigError::InvalidKey {
            key,
            reason: format!("expected a string, found {other}"),
        }),
    }
}

fn u64_key(object: &Map<String, Value>, key: &'static str) -> Result<Option<u64>, ConfigError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| ConfigError::InvalidKey {
            key,
            reason: format!("expected a non-negative integer, found {v}"),
        }),
    }
}

fn object_key(
    object: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<Value>, ConfigError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(other) => Err(ConfigError::InvalidKey {
            key,
            reason: format!("expected an object, found {other}"),
        }),
    }
}

/// Reads the cniVersion of a document without validating anything else;
/// `None` when the bytes are not an object with a string `cniVersion`.
pub fn peek_version(bytes: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    value.get("cniVersion")?.as_str().map(str::to_owned)
}

impl PluginConfig {
    /// Decodes and validates the configuration bytes from stdin.
    pub fn parse(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
        let raw: Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Decode(e.to_string()))?;
        let object = raw
            .as_object()
            .ok_or_else(|| ConfigError::Decode(format!("found {raw}")))?;

        let cni_version = string_key(object, "cniVersion")?;
        let cni_version = match cni_version {
            Some(v) if SpecVersion::is_supported(&v) => v,
            found => return Err(ConfigError::UnsupportedVersion { found }),
        };

        let name = string_key(object, "name")?.ok_or(ConfigError::InvalidKey {
            key: "name",
            reason: "missing network name".into(),
        })?;
        if !is_valid_name(&name) {
            return Err(ConfigError::InvalidKey {
                key: "name",
                reason: format!(
                    "{name:?} must start with an alphanumeric character and hold only alphanumerics, '_', '.' or '-'"
                ),
            });
        }
        let plugin_type = string_key(object, "type")?.ok_or(ConfigError::InvalidKey {
            key: "type",
            reason: "missing plugin type".into(),
        })?;

        let socket_path = match string_key(object, "socketPath")? {
            Some(p) => Some(p),
            None => string_key(object, "server_socket")?,
        }
        .unwrap_or_else(|| DEFAULT_DAEMON_SOCKET.to_owned());
        if !socket_path.starts_with('/') {
            return Err(ConfigError::InvalidKey {
                key: "socketPath",
                reason: format!("{socket_path:?} is not an absolute path"),
            });
        }

        let vhost_user = match string_key(object, "vhost_user_socket_volume_name")? {
            None => None,
            Some(volume_name) => {
                if !is_path_component(&volume_name) {
                    return Err(ConfigError::InvalidKey {
                        key: "vhost_user_socket_volume_name",
                        reason: format!("{volume_name:?} is not a volume name"),
                    });
                }
                let socket_name = string_key(object, "vhost_user_socket_name")?;
                if let Some(s) = &socket_name {
                    if !is_path_component(s) {
                        return Err(ConfigError::InvalidKey {
                            key: "vhost_user_socket_name",
                            reason: format!("{s:?} is not a file name"),
                        });
                    }
                }
                Some(VhostUserSocket {
                    volume_name,
                    socket_name,
                    consumption: string_key(object, "vhost_user_socket_consumption")?,
                })
            }
        };

        let interface_type = match string_key(object, "interfaceType")? {
            Some(text) => InterfaceType::parse(&text).ok_or(ConfigError::UnsupportedValue {
                key: "interfaceType",
                value: text,
                expected: "\"kernel\", \"vhost-user\" or \"auto\"",
            })?,
            None if vhost_user.is_some() => InterfaceType::VhostUser,
            None => InterfaceType::Kernel,
        };

        let kubelet_dir =
            string_key(object, "kubeletDir")?.unwrap_or_else(|| DEFAULT_KUBELET_DIR.to_owned());
        let daemon_timeout_secs = match u64_key(object, "daemonTimeoutSeconds")? {
            Some(0) => {
                return Err(ConfigError::InvalidKey {
                    key: "daemonTimeoutSeconds",
                    reason: "must be at least 1".into(),
                })
            }
            Some(n) => n,
            None => DEFAULT_DAEMON_TIMEOUT_SECS,
        };
        let mtu = match u64_key(object, "mtu")? {
            None => None,
            Some(n) => Some(
                u32::try_from(n)
                    .ok()
                    .filter(|m| (68..=65535).contains(m))
                    .ok_or_else(|| ConfigError::InvalidKey {
                        key: "mtu",
                        reason: format!("{n} is outside 68..=65535"),
                    })?,
            ),
        };

        let dns = match object_key(object, "dns")? {
            None => Dns::default(),
            Some(v) => serde_json::from_value(v).map_err(|e| ConfigError::InvalidKey {
                key: "dns",
                reason: e.to_string(),
            })?,
        };

        let prev_result = match object.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<CniResult>(with_version(v, &cni_version))
                    .map_err(|e| ConfigError::PrevResult(e.to_string()))?,
            ),
        };

        let attachments = match object.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => object.get("cni.dev/attachments"),
            found => found,
        };
        let valid_attachments = match attachments {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| ConfigError::InvalidKey {
                key: "cni.dev/valid-attachments",
                reason: e.to_string(),
            })?,
        };

        Ok(PluginConfig {
            cni_version,
            name,
            plugin_type,
            socket_path: PathBuf::from(socket_path),
            interface_type,
            vhost_user,
            kubelet_dir: PathBuf::from(kubelet_dir),
            daemon_timeout_secs,
            mtu,
            dns,
            ipam: object_key(object, "ipam")?,
            args: object_key(object, "args")?,
            runtime_config: object_key(object, "runtimeConfig")?,
            prev_result,
            valid_attachments,
            raw,
        })
    }
}

/// A prevResult may leave out `cniVersion`; it is then the request's.
fn with_version(value: &Value, cni_version: &str) -> Value {
    let mut value = value.clone();
    if let Value::Object(map) = &mut value {
        map.entry("cniVersion")
            .or_insert_with(|| Value::String(cni_version.to_owned()));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<PluginConfig, ConfigError> {
        PluginConfig::parse(value.to_string().as_bytes())
    }

    #[test]
    fn defaults_apply_to_a_minimal_config() {
        let c =
            parse(json!({"cniVersion": "1.1.0", "name": "ovn", "type": "fastpath-cni"})).unwrap();
        assert_eq!(c.socket_path, Path::new(DEFAULT_DAEMON_SOCKET));
        assert_eq!(c.interface_type, InterfaceType::Kernel);
        assert_eq!(c.kubelet_dir, Path::new(DEFAULT_KUBELET_DIR));
        assert_eq!(c.daemon_timeout_secs, DEFAULT_DAEMON_TIMEOUT_SECS);
        assert!(c.vhost_user.is_none());
        assert!(c.valid_attachments.is_empty());
    }

    #[test]
    fn kube_ovn_vhost_keys_select_vhost_user() {
        let c = parse(json!({
            "cniVersion": "0.3.1", "name": "ovn-dpdk", "type": "fastpath-cni",
            "server_socket": "/run/other/cni.sock",
            "vhost_user_socket_volume_name": "vhostuser-sockets",
            "vhost_user_socket_name": "sock"
        }))
        .unwrap();
        assert_eq!(c.interface_type, InterfaceType::VhostUser);
        assert_eq!(c.socket_path, Path::new("/run/other/cni.sock"));
        let v = c.vhost_user.unwrap();
        assert_eq!(
            v.host_dir(Path::new("/var/lib/kubelet"), "uid-1"),
            Path::new(
                "/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~empty-dir/vhostuser-sockets"
            )
        );
        assert_eq!(v.socket_name.as_deref(), Some("sock"));
    }

    #[test]
    fn errors_carry_the_spec_codes() {
        let cases: Vec<(Value, u32)> = vec![
            (json!([1, 2]), 6),
            (json!({"cniVersion": "9.9.9", "name": "n", "type": "t"}), 1),
            (json!({"name": "n", "type": "t"}), 1),
            (json!({"cniVersion": "1.1.0", "type": "t"}), 7),
            (
                json!({"cniVersion": "1.1.0", "name": "-bad", "type": "t"}),
                7,
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "n", "type": "t", "interfaceType": "sriov"}),
                2,
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "n", "type": "t", "socketPath": "rel.sock"}),
                7,
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "n", "type": "t", "mtu": 10}),
                7,
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "n", "type": "t", "vhost_user_socket_volume_name": "../x"}),
                7,
            ),
            (
                json!({"cniVersion": "1.1.0", "name": "n", "type": "t", "prevResult": {"ips": 3}}),
                6,
            ),
        ];
        for (value, code) in cases {
            let err = parse(value.clone()).expect_err(&value.to_string());
            assert_eq!(err.code().number(), code, "{value}: {err}");
        }
        assert_eq!(
            PluginConfig::parse(b"{not json")
                .unwrap_err()
                .code()
                .number(),
            6
        );
    }

    #[test]
    fn unsupported_field_names_key_and_value() {
        let err = parse(
            json!({"cniVersion": "1.1.0", "name": "n", "type": "t", "interfaceType": "sriov"}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("interfaceType") && err.contains("sriov"),
            "{err}"
        );
    }

    #[test]
    fn gc_attachments_use_either_key() {
        let attachments = json!([{"containerID": "c1", "ifname": "eth0"}]);
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let c =
                parse(json!({"cniVersion": "1.1.0", "name": "n", "type": "t", key: attachments}))
                    .unwrap();
            assert_eq!(
                c.valid_attachments,
                vec![AttachmentId {
                    container_id: "c1".into(),
                    ifname: "eth0".into()
                }]
            );
        }
    }

    #[test]
    fn prev_result_without_version_takes_the_request_version() {
        let c = parse(json!({
            "cniVersion": "1.0.0", "name": "n", "type": "t",
            "prevResult": {"interfaces": [{"name": "eth0"}]}
        }))
        .unwrap();
        assert_eq!(c.prev_result.unwrap().cni_version, "1.0.0");
    }

    #[test]
    fn names_follow_the_spec_rule() {
        assert!(is_valid_name("a"));
        assert!(is_valid_name("0abc_d.e-f"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("_a"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name("a b"));
    }
}
