//! The pod side of a kernel port: moves the tap the fastpath created into
//! the pod's network namespace, names it as the CNI asked, and gives it the
//! port's MAC, addresses, MTU and default route.
//!
//! Uses the `ip` command of iproute2 with as few processes as possible: one
//! `ip link set dev TAP netns PATH` on the host, then one `ip -batch -`
//! inside the namespace (through `nsenter --net=PATH`, since the kubelet
//! hands a netns path rather than a name) that renames, configures and
//! brings up the interface, brings up `lo` and sets the default routes. A
//! failing batch line is mapped back to its step, so every failure names
//! the step, the command and what iproute2 said. Owns no state; it must not
//! talk to the fastpath or any database.

use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

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
    /// A step of the configuration inside the namespace failed.
    #[error("{step}: `ip {line}` in {netns} failed: {stderr}")]
    Step {
        /// What the step does, e.g. `set MAC 0a:00:00:00:00:01 on eth0`.
        step: String,
        /// The `ip` command of the step.
        line: String,
        /// The namespace path.
        netns: String,
        /// What iproute2 printed on stderr.
        stderr: String,
    },
    /// The namespace path does not exist.
    #[error("network namespace {0} does not exist")]
    NoNamespace(String),
    /// The tap is neither on the host nor in the namespace.
    #[error(
        "interface {tap} is neither on the host nor in the pod's namespace (moving it: {moving})"
    )]
    NoInterface {
        /// The host-side interface name.
        tap: String,
        /// What `ip link set dev TAP netns PATH` said.
        moving: String,
    },
}

/// One step of the configuration inside the namespace: what it does, and
/// the `ip` command (one `ip -batch` line, without the leading `ip`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the step does, for error messages.
    pub what: String,
    /// The `ip` arguments.
    pub line: String,
}

impl Step {
    fn new(what: String, line: String) -> Step {
        Step { what, line }
    }
}

/// The steps that configure `iface` inside the namespace, in order; the
/// interface is `tap` until the rename step (present when `rename`).
/// Interfaces arrive down in a namespace, so the MAC can be set before `up`.
pub fn steps(tap: &str, iface: &KernelInterface, rename: bool) -> Vec<Step> {
    let name = iface.ifname.as_str();
    let mut s = Vec::new();
    if rename && tap != name {
        s.push(Step::new(
            format!("rename {tap} to {name}"),
            format!("link set dev {tap} name {name}"),
        ));
    }
    s.push(Step::new(
        format!("set MAC {} on {name}", iface.mac),
        format!("link set dev {name} address {}", iface.mac),
    ));
    if let Some(mtu) = iface.mtu {
        s.push(Step::new(
            format!("set MTU {mtu} on {name}"),
            format!("link set dev {name} mtu {mtu}"),
        ));
    }
    for ip in &iface.ips {
        s.push(Step::new(
            format!("add address {ip} to {name}"),
            format!("addr replace {ip} dev {name}"),
        ));
    }
    s.push(Step::new(
        format!("bring {name} up"),
        format!("link set dev {name} up"),
    ));
    s.push(Step::new("bring lo up".into(), "link set dev lo up".into()));
    if let Some(gw) = iface.gateway {
        // An explicit prefix: the family of `default` is not inferred in a
        // batch line.
        let default = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
        s.push(Step::new(
            format!("set the default route via {gw}"),
            format!("route replace {default} via {gw} dev {name}"),
        ));
    }
    s
}

/// The 1-based line number of the failing command in `ip -batch` stderr
/// (`Command failed -:N`).
fn failed_line(stderr: &str) -> Option<usize> {
    stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Command failed -:"))
        .find_map(|n| n.trim().parse().ok())
}

/// `stderr` without iproute2's `Command failed` trailer.
fn reason(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.trim_start().starts_with("Command failed "))
        .collect::<Vec<_>>()
        .join("; ")
        .trim()
        .to_string()
}

fn run(program: &str, args: &[&str]) -> Result<(), NetnsError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
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

/// Runs `steps` as one `ip -batch -` inside the namespace at `netns`; stops
/// at the first failing step and reports it.
fn run_batch(netns: &str, steps: &[Step]) -> Result<(), NetnsError> {
    let net = format!("--net={netns}");
    let command = format!("nsenter {net} ip -batch -");
    let spawn_err = |error| NetnsError::Spawn {
        command: command.clone(),
        error,
    };
    let mut child = Command::new("nsenter")
        .args([net.as_str(), "ip", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let script: String = steps.iter().map(|s| format!("{}\n", s.line)).collect();
    if let Some(mut stdin) = child.stdin.take() {
        // A write error shows up as the batch's failure below.
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    match failed_line(&stderr).and_then(|n| steps.get(n.checked_sub(1)?)) {
        Some(step) => Err(NetnsError::Step {
            step: step.what.clone(),
            line: step.line.clone(),
            netns: netns.to_string(),
            stderr: reason(&stderr),
        }),
        None => Err(NetnsError::Failed {
            command,
            stderr: stderr.trim().to_string(),
        }),
    }
}

/// Whether interface `name` is in the namespace at `netns`.
fn link_in(netns: &str, name: &str) -> bool {
    run(
        "nsenter",
        &[&format!("--net={netns}"), "ip", "link", "show", "dev", name],
    )
    .is_ok()
}

/// Moves host interface `tap` into `netns` as `iface.ifname` and configures
/// it: two processes when the tap is on the host. Idempotent: an interface
/// already moved (a repeated ADD) is configured again, at the cost of one
/// more process to find out whether it was renamed.
pub fn attach(tap: &str, netns: &str, iface: &KernelInterface) -> Result<(), NetnsError> {
    if !std::path::Path::new(netns).exists() {
        return Err(NetnsError::NoNamespace(netns.to_string()));
    }
    // Moving an interface to another namespace takes it down.
    let rename = match run("ip", &["link", "set", "dev", tap, "netns", netns]) {
        Ok(()) => true,
        Err(NetnsError::Failed { stderr, .. }) => {
            if link_in(netns, tap) {
                true
            } else if link_in(netns, &iface.ifname) {
                false
            } else {
                return Err(NetnsError::NoInterface {
                    tap: tap.to_string(),
                    moving: stderr,
                });
            }
        }
        Err(e) => return Err(e),
    };
    run_batch(netns, &steps(tap, iface, rename))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface() -> KernelInterface {
        KernelInterface {
            ifname: "eth0".into(),
            mac: "0a:00:00:00:00:05".into(),
            mtu: Some(1400),
            ips: vec!["10.9.0.5/24".parse().unwrap()],
            gateway: Some("10.9.0.1".parse().unwrap()),
        }
    }

    #[test]
    fn a_missing_namespace_is_reported() {
        let mut i = iface();
        i.ips.clear();
        i.gateway = None;
        let e = attach("fpnone0", "/nonexistent/netns/x", &i).unwrap_err();
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

    #[test]
    fn one_batch_renames_configures_and_routes_in_order() {
        let lines: Vec<String> = steps("fpabc", &iface(), true)
            .into_iter()
            .map(|s| s.line)
            .collect();
        assert_eq!(
            lines,
            [
                "link set dev fpabc name eth0",
                "link set dev eth0 address 0a:00:00:00:00:05",
                "link set dev eth0 mtu 1400",
                "addr replace 10.9.0.5/24 dev eth0",
                "link set dev eth0 up",
                "link set dev lo up",
                "route replace 0.0.0.0/0 via 10.9.0.1 dev eth0",
            ]
        );
        // Already renamed: no rename step; no MTU, IPv6 gateway.
        let mut v6 = iface();
        v6.mtu = None;
        v6.ips = vec!["fd00::5/64".parse().unwrap()];
        v6.gateway = Some("fd00::1".parse().unwrap());
        let s = steps("fpabc", &v6, false);
        assert_eq!(s[0].line, "link set dev eth0 address 0a:00:00:00:00:05");
        assert!(!s.iter().any(|s| s.line.contains("mtu")));
        assert_eq!(
            s.last().map(|s| s.line.as_str()),
            Some("route replace ::/0 via fd00::1 dev eth0")
        );
        // The tap already has the wanted name: nothing to rename.
        let mut same = iface();
        same.ifname = "fpabc".into();
        assert!(!steps("fpabc", &same, true)
            .iter()
            .any(|s| s.line.contains(" name ")));
    }

    #[test]
    fn batch_errors_map_back_to_their_line() {
        let stderr = "Error: ipv4: Nexthop has invalid gateway.\nCommand failed -:7\n";
        assert_eq!(failed_line(stderr), Some(7));
        assert_eq!(reason(stderr), "Error: ipv4: Nexthop has invalid gateway.");
        assert_eq!(failed_line("Cannot find device \"x\""), None);
    }

    /// Root and iproute2 are needed to make namespaces and veth pairs.
    fn skip_reason() -> Option<&'static str> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        (String::from_utf8_lossy(&uid.stdout).trim() != "0")
            .then_some("not root (network namespaces and veth pairs need it)")
    }

    /// A namespace and a veth pair whose first end plays the tap, removed
    /// when dropped.
    struct Sandbox {
        netns: String,
        tap: String,
        peer: String,
    }

    impl Sandbox {
        fn new(tag: &str) -> Sandbox {
            let id = std::process::id() % 100_000;
            let s = Sandbox {
                netns: format!("fpnt{tag}{id}"),
                tap: format!("fpnt{tag}{id}a"),
                peer: format!("fpnt{tag}{id}b"),
            };
            run("ip", &["netns", "add", &s.netns]).unwrap();
            run(
                "ip",
                &[
                    "link", "add", &s.tap, "type", "veth", "peer", "name", &s.peer,
                ],
            )
            .unwrap();
            run("ip", &["link", "set", "dev", &s.peer, "up"]).unwrap();
            s
        }

        fn path(&self) -> String {
            format!("/var/run/netns/{}", self.netns)
        }

        fn inside(&self, args: &[&str]) -> String {
            let out = Command::new("ip")
                .args(["-n", &self.netns])
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }

    impl Drop for Sandbox {
        fn drop(&mut self) {
            let _ = run("ip", &["netns", "del", &self.netns]);
            let _ = run("ip", &["link", "del", &self.peer]);
        }
    }

    #[test]
    fn attach_configures_the_interface_and_is_idempotent() {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let sb = Sandbox::new("c");
        attach(&sb.tap, &sb.path(), &iface()).unwrap();
        let link = sb.inside(&["-o", "link", "show", "dev", "eth0"]);
        assert!(link.contains("link/ether 0a:00:00:00:00:05"), "{link}");
        assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
        let lo = sb.inside(&["-o", "link", "show", "dev", "lo"]);
        assert!(lo.contains(",UP"), "{lo}");
        let addr = sb.inside(&["-o", "-4", "addr", "show", "dev", "eth0"]);
        assert!(addr.contains("10.9.0.5/24"), "{addr}");
        let route = sb.inside(&["-4", "route", "show", "default"]);
        assert!(route.contains("via 10.9.0.1 dev eth0"), "{route}");
        // Again (a repeated ADD): the interface is in the namespace already.
        let mut again = iface();
        again.mtu = Some(1300);
        attach(&sb.tap, &sb.path(), &again).unwrap();
        let link = sb.inside(&["-o", "link", "show", "dev", "eth0"]);
        assert!(link.contains("mtu 1300"), "{link}");
    }

    #[test]
    fn a_failing_step_is_named() {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let sb = Sandbox::new("f");
        let mut bad = iface();
        bad.mac = "not-a-mac".into();
        let e = attach(&sb.tap, &sb.path(), &bad).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, NetnsError::Step { step, .. } if step == "set MAC not-a-mac on eth0"),
            "{text}"
        );
        assert!(
            text.contains("`ip link set dev eth0 address not-a-mac`"),
            "{text}"
        );
        // The rename before it went through; a gateway outside every
        // address of the interface fails at the route step.
        let mut unreachable = iface();
        unreachable.gateway = Some("192.0.2.1".parse().unwrap());
        let e = attach(&sb.tap, &sb.path(), &unreachable).unwrap_err();
        assert!(
            matches!(&e, NetnsError::Step { step, .. } if step == "set the default route via 192.0.2.1"),
            "{e}"
        );
        let mut elsewhere = iface();
        elsewhere.ifname = "eth9".into();
        let e = attach("fpnt-none0", &sb.path(), &elsewhere).unwrap_err();
        assert!(matches!(e, NetnsError::NoInterface { .. }), "{e}");
    }
}
