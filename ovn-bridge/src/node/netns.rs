//! The pod side of a kernel port: moves the tap the fastpath created into
//! the pod's network namespace, names it as the CNI asked, and gives it the
//! port's MAC, addresses, MTU and default route.
//!
//! Uses the `ip` command of iproute2 (run inside the namespace through
//! `nsenter --net=PATH`, since the kubelet hands a netns path rather than a
//! name); every failing step is reported with the command and its stderr.
//! Owns no state; it must not talk to the fastpath or any database.

use std::net::IpAddr;
use std::process::Command;

use ipnet::IpNet;

/// What the interface inside the pod gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInterface {
    /// Name inside the pod (`CNI_IFNAME`).
    pub ifname: String,
    /// MAC address.
    pub mac: String,
    /// MTU, when configured.
    pub mtu: Option<u32>,
    /// Addresses with prefix length.
    pub ips: Vec<IpNet>,
    /// Default gateway, when the subnet has one.
    pub gateway: Option<IpAddr>,
}

/// A failed step.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The command could not be started (iproute2 or util-linux missing).
    #[error("cannot run {command}: {error}")]
    Spawn {
        /// The command line.
        command: String,
        /// The error.
        error: std::io::Error,
    },
    /// The command failed.
    #[error("{command} failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The namespace path does not exist.
    #[error("network namespace {0} does not exist")]
    NoNamespace(String),
    /// The tap is neither on the host nor in the namespace.
    #[error("interface {0} is neither on the host nor in the pod's namespace")]
    NoInterface(String),
}

fn run(program: &str, args: &[&str]) -> Result<(), NetnsError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|error| NetnsError::Spawn {
            command: command.clone(),
            error,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `ip ARGS` inside the namespace at `netns`.
fn ip_in(netns: &str, args: &[&str]) -> Result<(), NetnsError> {
    let net = format!("--net={netns}");
    let mut full = vec![net.as_str(), "ip"];
    full.extend_from_slice(args);
    run("nsenter", &full)
}

fn link_in(netns: Option<&str>, name: &str) -> bool {
    match netns {
        Some(ns) => ip_in(ns, &["link", "show", "dev", name]).is_ok(),
        None => run("ip", &["link", "show", "dev", name]).is_ok(),
    }
}

/// Moves host interface `tap` into `netns` as `iface.ifname` and configures
/// it. Idempotent: an interface already moved is configured again.
pub fn attach(tap: &str, netns: &str, iface: &KernelInterface) -> Result<(), NetnsError> {
    if !std::path::Path::new(netns).exists() {
        return Err(NetnsError::NoNamespace(netns.to_string()));
    }
    let name = iface.ifname.as_str();
    if link_in(None, tap) {
        run("ip", &["link", "set", "dev", tap, "down"])?;
        run("ip", &["link", "set", "dev", tap, "netns", netns])?;
    }
    if link_in(Some(netns), tap) && tap != name {
        ip_in(netns, &["link", "set", "dev", tap, "name", name])?;
    } else if !link_in(Some(netns), name) {
        return Err(NetnsError::NoInterface(tap.to_string()));
    }
    ip_in(netns, &["link", "set", "dev", name, "address", &iface.mac])?;
    if let Some(mtu) = iface.mtu {
        ip_in(
            netns,
            &["link", "set", "dev", name, "mtu", &mtu.to_string()],
        )?;
    }
    for ip in &iface.ips {
        ip_in(netns, &["addr", "replace", &ip.to_string(), "dev", name])?;
    }
    ip_in(netns, &["link", "set", "dev", name, "up"])?;
    if let Some(gw) = iface.gateway {
        let family = if gw.is_ipv4() { "-4" } else { "-6" };
        ip_in(
            netns,
            &[
                family,
                "route",
                "replace",
                "default",
                "via",
                &gw.to_string(),
                "dev",
                name,
            ],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_reported() {
        let e = attach(
            "fpnone0",
            "/nonexistent/netns/x",
            &KernelInterface {
                ifname: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: None,
                ips: vec![],
                gateway: None,
            },
        )
        .unwrap_err();
        assert!(matches!(e, NetnsError::NoNamespace(_)), "{e}");
    }

    #[test]
    fn a_failing_command_names_itself() {
        let e = run("ip", &["link", "show", "dev", "fp-no-such-if0"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("ip link show dev fp-no-such-if0 failed"),
            "{e}"
        );
    }
}
