//! The data types of the CNI specification (1.1.0) that cross the plugin's
//! boundary: the ADD result, the VERSION result and the error structure with
//! its well-known codes, plus the list of spec versions this plugin speaks.
//!
//! This module owns the JSON shapes only; it does not read the environment,
//! parse network configurations or talk to the node daemon.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The spec version this plugin is written against.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Spec versions accepted in `cniVersion`, oldest first (as VERSION prints them).
///
/// 0.1.0 and 0.2.0 are left out: their result shape (`ip4`/`ip6`) predates
/// the interface list that a pod attachment needs.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A parsed `major.minor.patch` spec version, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpecVersion(pub u32, pub u32, pub u32);

impl SpecVersion {
    /// The version that introduced CHECK.
    pub const CHECK: SpecVersion = SpecVersion(0, 4, 0);
    /// The version that dropped `ips[].version` from results.
    pub const V1: SpecVersion = SpecVersion(1, 0, 0);
    /// The version that introduced STATUS and GC.
    pub const STATUS_AND_GC: SpecVersion = SpecVersion(1, 1, 0);

    /// Parses `major.minor.patch`; `None` for anything else.
    pub fn parse(text: &str) -> Option<SpecVersion> {
        let mut parts = text.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(SpecVersion(major, minor, patch))
    }

    /// Whether this plugin speaks `text`.
    pub fn is_supported(text: &str) -> bool {
        SUPPORTED_VERSIONS.contains(&text)
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The result of a successful ADD (spec section 5, "ADD Success").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// The spec version of this document; the same as the request's.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Every interface the attachment created, host-side ones included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned by the attachment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes created by the attachment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Resolver configuration.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// An empty result of the given spec version.
    pub fn new(cni_version: impl Into<String>) -> CniResult {
        CniResult {
            cni_version: cni_version.into(),
            interfaces: Vec::new(),
            ips: Vec::new(),
            routes: Vec::new(),
            dns: Dns::default(),
        }
    }

    /// Re-labels the result for `cni_version`: results before 1.0.0 carry
    /// `ips[].version` ("4" or "6"), results from 1.0.0 on must not.
    pub fn for_version(mut self, cni_version: &str) -> CniResult {
        let pre_v1 = SpecVersion::parse(cni_version).is_some_and(|v| v < SpecVersion::V1);
        for ip in &mut self.ips {
            ip.version = pre_v1.then(|| {
                match ip.address {
                    IpNet::V4(_) => "4",
                    IpNet::V6(_) => "6",
                }
                .to_owned()
            });
        }
        self.cni_version = cni_version.to_owned();
        self
    }

    /// Appends this result to `prev` (the `prevResult` of a chained ADD), as
    /// an interface plugin that is not first in its chain must: interface
    /// indexes of this result are shifted past the previous interfaces, and
    /// this result's DNS wins when it has any.
    pub fn chain_after(self, prev: CniResult) -> CniResult {
        let offset = u32::try_from(prev.interfaces.len()).unwrap_or(u32::MAX);
        let mut merged = prev;
        merged.cni_version = self.cni_version;
        merged.interfaces.extend(self.interfaces);
        merged.ips.extend(self.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i.saturating_add(offset));
            ip
        }));
        merged.routes.extend(self.routes);
        if !self.dns.is_empty() {
            merged.dns = self.dns;
        }
        merged
    }
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name (inside the sandbox for sandbox interfaces).
    pub name: String,
    /// Hardware address, `aa:bb:cc:dd:ee:ff`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU of the interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The isolation domain (netns path) holding the interface; absent for
    /// host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Absolute path of the socket backing this interface (vhost-user).
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    /// PCI identifier of the device backing this interface.
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Only in results before spec 1.0.0: "4" or "6".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address and prefix length, e.g. `10.16.0.5/16`.
    pub address: IpNet,
    /// Default gateway of the subnet, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`] of the interface holding the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<u32>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination prefix.
    pub dst: IpNet,
    /// Next hop; when absent the gateway of the matching `ips` entry applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// Path MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// MSS to advertise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Route priority, lower is preferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Scope: global (0), link (253), host (254).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Route {
    /// A route to `dst` through `gw` with no other attribute.
    pub fn via(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

/// Resolver configuration, in results and in network configurations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain for short names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when no field is set (the `dns` key is then left out).
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// The output of VERSION.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionResult {
    /// The `cniVersion` given on input.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Every spec version the plugin speaks.
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

impl VersionResult {
    /// This plugin's answer to VERSION for a request in `cni_version`.
    pub fn new(cni_version: impl Into<String>) -> VersionResult {
        VersionResult {
            cni_version: cni_version.into(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }
    }
}

/// The error codes of the spec (0–99 well known, 100 and up plugin specific).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: incompatible CNI version.
    IncompatibleVersion,
    /// 2: unsupported field in the network configuration (message names key and value).
    UnsupportedField,
    /// 3: container unknown or does not exist; the runtime need not clean up.
    UnknownContainer,
    /// 4: invalid or missing environment variables (message names them).
    InvalidEnvironmentVariables,
    /// 5: I/O failure, e.g. reading stdin.
    IoFailure,
    /// 6: failed to decode content, e.g. the network configuration.
    DecodingFailure,
    /// 7: invalid network configuration.
    InvalidNetworkConfig,
    /// 8: invalid network namespace (as libcni numbers it).
    InvalidNetNs,
    /// 11: transient condition; the runtime should retry later.
    TryAgainLater,
    /// 50 (STATUS): the plugin cannot service ADD requests.
    PluginNotAvailable,
    /// 51 (STATUS): not available, and existing containers may have limited connectivity.
    PluginNotAvailableLimitedConnectivity,
    /// 999: internal error of the plugin or the daemon (libcni's number).
    Internal,
    /// Any other number (0 "unknown", or plugin-specific 100+).
    Other(u32),
}

impl ErrorCode {
    /// The number on the wire.
    pub fn number(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironmentVariables => 4,
            ErrorCode::IoFailure => 5,
            ErrorCode::DecodingFailure => 6,
            ErrorCode::InvalidNetworkConfig => 7,
            ErrorCode::InvalidNetNs => 8,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::PluginNotAvailable => 50,
            ErrorCode::PluginNotAvailableLimitedConnectivity => 51,
            ErrorCode::Internal => 999,
            ErrorCode::Other(n) => n,
        }
    }

    /// The code for a wire number.
    pub fn from_number(n: u32) -> ErrorCode {
        match n {
            1 => ErrorCode::IncompatibleVersion,
            2 => ErrorCode::UnsupportedField,
            3 => ErrorCode::UnknownContainer,
            4 => ErrorCode::InvalidEnvironmentVariables,
            5 => ErrorCode::IoFailure,
            6 => ErrorCode::DecodingFailure,
            7 => ErrorCode::InvalidNetworkConfig,
            8 => ErrorCode::InvalidNetNs,
            11 => ErrorCode::TryAgainLater,
            50 => ErrorCode::PluginNotAvailable,
            51 => ErrorCode::PluginNotAvailableLimitedConnectivity,
            999 => ErrorCode::Internal,
            n => ErrorCode::Other(n),
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.number())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u32::deserialize(deserializer).map(ErrorCode::from_number)
    }
}

/// The error structure a plugin prints on failure (spec section 5, "Error").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CNI error {}: {msg}", code.number())]
pub struct CniError {
    /// The spec version in use.
    #[serde(rename = "cniVersion", default = "current_version")]
    pub cni_version: String,
    /// What kind of failure.
    pub code: ErrorCode,
    /// A short message characterising the error.
    pub msg: String,
    /// A longer description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

fn current_version() -> String {
    CURRENT_VERSION.to_owned()
}

impl CniError {
    /// An error with a message and no details, labelled with the current spec version.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> CniError {
        CniError {
            cni_version: current_version(),
            code,
            msg: msg.into(),
            details: None,
        }
    }

    /// Adds the longer description.
    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = Some(details.into());
        self
    }

    /// Labels the error with the request's spec version.
    pub fn for_version(mut self, cni_version: &str) -> CniError {
        self.cni_version = cni_version.to_owned();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The final result of the spec's "Add example" (appendix), bridge plugin.
    const SPEC_ADD_EXAMPLE: &str = r#"{
        "cniVersion": "1.1.0",
        "ips": [ { "address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2 } ],
        "routes": [ { "dst": "0.0.0.0/0" } ],
        "interfaces": [
            { "name": "cni0", "mac": "00:11:22:33:44:55" },
            { "name": "veth3243", "mac": "55:44:33:22:11:11" },
            { "name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue" }
        ],
        "dns": { "nameservers": [ "10.1.0.1" ] }
    }"#;

    #[test]
    fn spec_add_example_round_trips() {
        let parsed: CniResult = serde_json::from_str(SPEC_ADD_EXAMPLE).unwrap();
        assert_eq!(parsed.interfaces.len(), 3);
        assert_eq!(
            parsed.interfaces[2].sandbox.as_deref(),
            Some("/var/run/netns/blue")
        );
        assert_eq!(parsed.ips[0].interface, Some(2));
        assert_eq!(parsed.ips[0].gateway, Some("10.1.0.1".parse().unwrap()));
        assert_eq!(parsed.routes[0].dst, "0.0.0.0/0".parse::<IpNet>().unwrap());
        let written: Value = serde_json::to_value(&parsed).unwrap();
        let expected: Value = serde_json::from_str(SPEC_ADD_EXAMPLE).unwrap();
        assert_eq!(written, expected);
    }

    #[test]
    fn vhost_user_interface_serialises_socket_path_and_mtu() {
        let iface = Interface {
            name: "net1".into(),
            mac: Some("00:00:00:aa:bb:cc".into()),
            mtu: Some(1400),
            sandbox: Some("/var/run/netns/p".into()),
            socket_path: Some(
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/v/sock".into(),
            ),
            pci_id: None,
        };
        let v = serde_json::to_value(&iface).unwrap();
        assert_eq!(
            v["socketPath"],
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/v/sock"
        );
        assert_eq!(v["mtu"], 1400);
        assert!(v.get("pciID").is_none());
    }

    #[test]
    fn spec_error_example_round_trips() {
        let text = r#"{"cniVersion":"1.1.0","code":7,"msg":"Invalid Configuration","details":"Network 192.168.0.0/31 too small to allocate from."}"#;
        let err: CniError = serde_json::from_str(text).unwrap();
        assert_eq!(err.code, ErrorCode::InvalidNetworkConfig);
        assert_eq!(serde_json::to_string(&err).unwrap(), text);
    }

    #[test]
    fn error_codes_have_the_spec_numbers() {
        let table = [
            (ErrorCode::IncompatibleVersion, 1),
            (ErrorCode::UnsupportedField, 2),
            (ErrorCode::UnknownContainer, 3),
            (ErrorCode::InvalidEnvironmentVariables, 4),
            (ErrorCode::IoFailure, 5),
            (ErrorCode::DecodingFailure, 6),
            (ErrorCode::InvalidNetworkConfig, 7),
            (ErrorCode::TryAgainLater, 11),
            (ErrorCode::PluginNotAvailable, 50),
            (ErrorCode::PluginNotAvailableLimitedConnectivity, 51),
            (ErrorCode::Other(120), 120),
        ];
        for (code, n) in table {
            assert_eq!(code.number(), n);
            assert_eq!(ErrorCode::from_number(n), code);
        }
    }

    #[test]
    fn error_without_details_leaves_the_key_out() {
        let err = CniError::new(ErrorCode::TryAgainLater, "later").for_version("1.0.0");
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "later"})
        );
    }

    #[test]
    fn pre_v1_results_carry_ip_version() {
        let result: CniResult = serde_json::from_value(json!({
            "cniVersion": "1.1.0",
            "ips": [{"address": "10.0.0.2/24"}, {"address": "fd00::2/64"}]
        }))
        .unwrap();
        let old = result.clone().for_version("0.3.1");
        let v = serde_json::to_value(&old).unwrap();
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        let new = old.for_version("1.0.0");
        assert!(serde_json::to_value(&new).unwrap()["ips"][0]
            .get("version")
            .is_none());
    }

    #[test]
    fn chained_result_shifts_interface_indexes() {
        let prev: CniResult = serde_json::from_value(json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": "/ns"}],
            "ips": [{"address": "10.0.0.2/24", "interface": 0}],
            "dns": {"nameservers": ["10.0.0.1"]}
        }))
        .unwrap();
        let ours: CniResult = serde_json::from_value(json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "net1", "sandbox": "/ns"}],
            "ips": [{"address": "10.1.0.2/24", "interface": 0}]
        }))
        .unwrap();
        let merged = ours.chain_after(prev);
        assert_eq!(merged.interfaces.len(), 2);
        assert_eq!(merged.ips[0].interface, Some(0));
        assert_eq!(merged.ips[1].interface, Some(1));
        assert_eq!(merged.dns.nameservers, vec!["10.0.0.1".to_owned()]);
    }

    #[test]
    fn version_parsing_orders_and_rejects_garbage() {
        assert!(SpecVersion::parse("0.4.0").unwrap() < SpecVersion::parse("1.0.0").unwrap());
        assert_eq!(SpecVersion::parse("1.1"), None);
        assert_eq!(SpecVersion::parse("1.1.0.0"), None);
        assert_eq!(SpecVersion::parse("a.b.c"), None);
        assert!(SpecVersion::is_supported("1.1.0"));
        assert!(!SpecVersion::is_supported("2.0.0"));
        let v = VersionResult::new("1.1.0");
        assert_eq!(
            v.supported_versions.last().map(String::as_str),
            Some(CURRENT_VERSION)
        );
    }
}
