//! The node's side of the CNI plugin: ADD makes a pod's logical port
//! (`<pod>.<namespace>`) local, has the fastpath port created, configures
//! the pod's interface as soon as the Port_Binding's addresses are known
//! (while the node publishes tables that map it; a packet the pod sends
//! before that is dropped by the fastpath), waits until the port is
//! installed (every lcore forwards with tables that map it; the node claims
//! it and marks it `up` right after), and answers the addresses of its
//! Port_Binding; DEL and GC release; CHECK verifies; STATUS reports the
//! Southbound session.
//!
//! Owns the mapping of CNI attachments to local ports. It must not write
//! the Southbound database itself (the node loop claims and releases).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fastpath_cni::{
    Attachment, CniError, CniResult, ErrorCode, Handler, Interface, InterfaceType, IpConfig,
    PluginConfig, Route,
};
use ipnet::IpNet;
use ovsdb::{Database, Uuid};

use super::daemon::Shared;
use super::netns::KernelInterface;
use super::port_bindings::PortBindings;
use super::state::{LocalPort, PortKind};

/// Serves CNI requests for a running node (see [`super::Node::cni_handler`]).
pub struct CniHandler {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
}

/// Address facts read from the Southbound database for one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortAddresses {
    /// The port's MAC.
    pub mac: String,
    /// Its addresses with the subnet's prefix length.
    pub ips: Vec<IpNet>,
    /// The subnet gateway (the router port on the same switch), if any.
    pub gateway: Option<IpAddr>,
}

/// Reads the first `"MAC IP..."` entry of a `mac` column.
fn mac_entry(macs: &std::collections::BTreeSet<String>) -> Option<(String, Vec<IpAddr>)> {
    macs.iter().find_map(|m| {
        let mut words = m.split_whitespace();
        let mac = words.next()?;
        crate::compile::parse_mac(mac)?;
        let ips: Vec<IpAddr> = words.filter_map(|w| w.parse().ok()).collect();
        Some((mac.to_string(), ips))
    })
}

/// The addresses of `logical_port` as the Southbound snapshot's
/// Port_Binding rows `pbs` have them: the port's `mac` column and, for the
/// prefix and gateway, the router port peered with the switch
/// (`"MAC IP/PLEN"` in its `mac` column).
pub fn port_addresses(pbs: &PortBindings, logical_port: &str) -> Option<PortAddresses> {
    let pb = pbs.get(logical_port)?;
    let (mac, ips) = mac_entry(&pb.mac)?;
    let mut nets: Vec<IpNet> = Vec::new();
    let mut gateway = None;
    for ip in ips {
        let router_net = pbs
            .rows()
            .iter()
            .filter(|p| p.datapath == pb.datapath && p.r#type == "patch")
            .filter_map(|p| p.options.get("peer"))
            .filter_map(|peer| pbs.get(peer))
            .flat_map(|q| q.mac.iter())
            .flat_map(|m| m.split_whitespace().skip(1))
            .filter_map(|w| w.parse::<IpNet>().ok())
            .find(|n| n.contains(&ip));
        match router_net {
            Some(n) => {
                gateway.get_or_insert(n.addr());
                nets.push(IpNet::new(ip, n.prefix_len()).ok()?);
            }
            None => nets.push(IpNet::from(ip)),
        }
    }
    Some(PortAddresses {
        mac,
        ips: nets,
        gateway,
    })
}

/// Whether every patch peer of the port's switch is in the snapshot (the
/// router port holding the subnet's gateway is monitored only once the
/// port is local, one monitor update later).
fn peers_known(pbs: &PortBindings, logical_port: &str) -> bool {
    let Some(pb) = pbs.get(logical_port) else {
        return false;
    };
    pbs.rows()
        .iter()
        .filter(|p| p.datapath == pb.datapath && p.r#type == "patch")
        .filter_map(|p| p.options.get("peer"))
        .all(|peer| pbs.get(peer).is_some())
}

/// The port's addresses, once its switch's router peers are known too.
fn known_addresses(pbs: &PortBindings, logical_port: &str) -> Option<PortAddresses> {
    peers_known(pbs, logical_port)
        .then(|| port_addresses(pbs, logical_port))
        .flatten()
}

fn claimed(pbs: &PortBindings, logical_port: &str, own: Option<Uuid>) -> bool {
    let Some(own) = own else { return false };
    pbs.get(logical_port)
        .is_some_and(|p| p.chassis == Some(own) && p.up == Some(true))
}

fn internal(e: impl std::fmt::Display) -> CniError {
    CniError::new(ErrorCode::Internal, e.to_string())
}

/// Host-side tap name for a container: at most 15 bytes.
fn tap_name(container_id: &str) -> String {
    let id: String = container_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    format!("fp{id}")
}

impl CniHandler {
    pub(crate) fn new(shared: Arc<Shared>, runtime: tokio::runtime::Handle) -> Self {
        Self { shared, runtime }
    }

    fn logical_port(attachment: &Attachment) -> Result<String, CniError> {
        match (&attachment.args.pod_name, &attachment.args.pod_namespace) {
            (Some(pod), Some(ns)) => Ok(format!("{pod}.{ns}")),
            _ => Err(CniError::new(
                ErrorCode::InvalidEnvironmentVariables,
                "CNI_ARGS lacks K8S_POD_NAME or K8S_POD_NAMESPACE",
            )),
        }
    }

    /// Blocks until `pred` holds for a snapshot, or `timeout`.
    fn wait_sb(&self, timeout: Duration, pred: impl FnMut(&Arc<Database>) -> bool) -> bool {
        self.wait(self.shared.sb.clone(), timeout, pred)
    }

    /// Blocks until `pred` holds for the value `rx` watches, or `timeout`.
    fn wait<T>(
        &self,
        mut rx: tokio::sync::watch::Receiver<T>,
        timeout: Duration,
        mut pred: impl FnMut(&T) -> bool,
    ) -> bool {
        self.runtime.block_on(async move {
            tokio::time::timeout(timeout, rx.wait_for(|v| pred(v)))
                .await
                .is_ok_and(|r| r.is_ok())
        })
    }

    fn release(&self, name: &str) -> Result<(), CniError> {
        let mut state = self.shared.state.lock();
        if state.ports.remove(name).is_none() {
            return Ok(());
        }
        self.shared.save(&state).map_err(internal)?;
        drop(state);
        self.shared.plumber.remove_port(name).map_err(internal)?;
        self.shared.wake.notify_one();
        Ok(())
    }
}

impl Handler for CniHandler {
    fn add(&self, attachment: &Attachment, config: &PluginConfig) -> Result<CniResult, CniError> {
        let name = Self::logical_port(attachment)?;
        let started = std::time::Instant::now();
        let kind = match (config.interface_type, &attachment.vhost_socket_dir) {
            (InterfaceType::Kernel, _) | (InterfaceType::Auto, None) => PortKind::Kernel,
            (InterfaceType::VhostUser | InterfaceType::Auto, Some(_)) => PortKind::VhostUser,
            (InterfaceType::VhostUser, None) => {
                return Err(CniError::new(
                    ErrorCode::InvalidNetworkConfig,
                    "vhost-user interface without a socket volume (vhost_user_socket_volume_name and K8S_POD_UID)",
                ))
            }
        };
        let endpoint = match (&kind, &attachment.vhost_socket_dir) {
            (PortKind::VhostUser, Some(dir)) => {
                let file = config
                    .vhost_user
                    .as_ref()
                    .and_then(|v| v.socket_name.clone())
                    .unwrap_or_else(|| format!("{}.sock", tap_name(&attachment.container_id)));
                Path::new(dir).join(file).to_string_lossy().into_owned()
            }
            _ => tap_name(&attachment.container_id),
        };
        let fastpath_port = {
            let mut state = self.shared.state.lock();
            let same = state.ports.get(&name).is_some_and(|p| {
                p.container_id == attachment.container_id && p.ifname == attachment.ifname
            });
            if !same {
                // A new sandbox of the same pod replaces the old port.
                if state.ports.remove(&name).is_some() {
                    self.shared.plumber.remove_port(&name).map_err(internal)?;
                }
                let preferred = state.free_fastpath_port();
                let fastpath_port = self
                    .shared
                    .plumber
                    .add_port(&name, kind, &endpoint, preferred)
                    .map_err(internal)?;
                state.ports.insert(
                    name.clone(),
                    LocalPort {
                        container_id: attachment.container_id.clone(),
                        ifname: attachment.ifname.clone(),
                        network: config.name.clone(),
                        netns: attachment.netns.clone(),
                        kind,
                        endpoint: endpoint.clone(),
                        fastpath_port,
                    },
                );
                self.shared.save(&state).map_err(internal)?;
            }
            state.ports[&name].fastpath_port
        };
        self.shared.wake.notify_one();
        let port_created = started.elapsed();

        // The addresses: in the snapshot already when the node follows the
        // port's switch, else one monitor update after the wake-up.
        let cache = &self.shared.port_bindings;
        let mut early = None;
        let known = self.wait_sb(self.shared.cfg.port_wait, |db| {
            early = known_addresses(&cache.get(db), &name);
            early.is_some()
        });
        let not_ready = || {
            CniError::new(
                ErrorCode::TryAgainLater,
                format!(
                    "port binding {name} is not in the southbound database (or not installed) after {} s",
                    self.shared.cfg.port_wait.as_secs()
                ),
            )
        };
        let Some(early) = early.filter(|_| known) else {
            return Err(not_ready());
        };
        let addressed = started.elapsed();
        // The pod's interface, while the node claims the port and publishes
        // tables that map it.
        let attach = |addrs: &PortAddresses| -> Result<(), CniError> {
            if let (PortKind::Kernel, Some(netns)) = (kind, &attachment.netns) {
                let iface = KernelInterface {
                    ifname: attachment.ifname.clone(),
                    mac: addrs.mac.clone(),
                    mtu: config.mtu,
                    ips: addrs.ips.clone(),
                    gateway: addrs.gateway,
                };
                self.shared
                    .plumber
                    .attach_kernel(&endpoint, netns, &iface)
                    .map_err(internal)?;
            }
            Ok(())
        };
        attach(&early)?;
        let configured = started.elapsed();

        // Forwarding: the tables every lcore uses map the port. The claim
        // and `up` follow in the Southbound; the pod need not wait for
        // that round trip (a CNI for ovn-controller waits for
        // `ovn-installed`, not for `up`).
        let installed = self.wait(
            self.shared.installed.subscribe(),
            self.shared.cfg.port_wait,
            |m| m.get(&name) == Some(&fastpath_port),
        );
        let db = self.shared.sb.borrow().clone();
        let Some(addrs) = known_addresses(&cache.get(&db), &name).filter(|_| installed) else {
            return Err(not_ready());
        };
        if addrs != early {
            // The row changed while the node claimed it: configure again.
            log::info!(
                "CNI ADD {name}: addresses changed while installing ({early:?} -> {addrs:?})"
            );
            attach(&addrs)?;
        }

        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        log::info!(
            "CNI ADD {name}: fastpath port after {:.1} ms, addresses after {:.1} ms, interface configured after {:.1} ms, installed after {:.1} ms",
            ms(port_created),
            ms(addressed),
            ms(configured),
            ms(started.elapsed())
        );

        let mut result = CniResult::new(config.cni_version.clone());
        result.interfaces.push(Interface {
            name: attachment.ifname.clone(),
            mac: Some(addrs.mac.clone()),
            mtu: config.mtu,
            sandbox: match kind {
                PortKind::Kernel => attachment.netns.clone(),
                PortKind::VhostUser => None,
            },
            socket_path: (kind == PortKind::VhostUser).then(|| endpoint.clone()),
            pci_id: None,
        });
        for ip in &addrs.ips {
            let gateway = addrs.gateway.filter(|g| g.is_ipv4() == ip.addr().is_ipv4());
            result.ips.push(IpConfig {
                version: None,
                address: *ip,
                gateway,
                interface: Some(0),
            });
            if let Some(gw) = gateway {
                let default: IpNet = if gw.is_ipv4() {
                    "0.0.0.0/0".parse().map_err(internal)?
                } else {
                    "::/0".parse().map_err(internal)?
                };
                result.routes.push(Route::via(default, Some(gw)));
            }
        }
        result.dns = config.dns.clone();
        Ok(result)
    }

    fn del(&self, attachment: &Attachment, _config: &PluginConfig) -> Result<(), CniError> {
        let name = {
            let state = self.shared.state.lock();
            state
                .ports
                .iter()
                .find(|(_, p)| {
                    p.container_id == attachment.container_id && p.ifname == attachment.ifname
                })
                .map(|(n, _)| n.clone())
        };
        match name {
            Some(name) => self.release(&name),
            None => Ok(()),
        }
    }

    fn check(&self, attachment: &Attachment, _config: &PluginConfig) -> Result<(), CniError> {
        let name = Self::logical_port(attachment)?;
        let known = self.shared.state.lock().ports.get(&name).is_some_and(|p| {
            p.container_id == attachment.container_id && p.ifname == attachment.ifname
        });
        if !known {
            return Err(CniError::new(
                ErrorCode::UnknownContainer,
                format!(
                    "{name}: no attachment of container {}",
                    attachment.container_id
                ),
            ));
        }
        let db = self.shared.sb.borrow().clone();
        let pbs = self.shared.port_bindings.get(&db);
        // Bound here, or installed and not bound elsewhere (its claim is on
        // its way).
        let own = self.shared.chassis_uuid();
        let installed = self.shared.installed.borrow().contains_key(&name);
        let elsewhere = pbs
            .get(&name)
            .is_some_and(|p| p.chassis.is_some() && p.chassis != own);
        let on_its_way = installed && !elsewhere;
        if !claimed(&pbs, &name, own) && !on_its_way {
            return Err(CniError::new(
                ErrorCode::TryAgainLater,
                format!("port binding {name} is not bound to this chassis"),
            ));
        }
        Ok(())
    }

    fn status(&self, _config: &PluginConfig) -> Result<(), CniError> {
        if self.shared.client.status().connected.is_none() {
            return Err(CniError::new(
                ErrorCode::PluginNotAvailable,
                "not connected to the southbound database",
            ));
        }
        if self.shared.chassis_uuid().is_none() {
            return Err(CniError::new(
                ErrorCode::PluginNotAvailable,
                "chassis not registered",
            ));
        }
        Ok(())
    }

    fn gc(&self, config: &PluginConfig) -> Result<(), CniError> {
        let stale: Vec<String> = {
            let state = self.shared.state.lock();
            state
                .ports
                .iter()
                .filter(|(_, p)| {
                    p.network == config.name
                        && !config
                            .valid_attachments
                            .iter()
                            .any(|v| v.container_id == p.container_id && v.ifname == p.ifname)
                })
                .map(|(n, _)| n.clone())
                .collect()
        };
        for name in stale {
            self.release(&name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_the_kernel_limit() {
        assert_eq!(tap_name("0123456789abcdef0123"), "fp0123456789ab");
        assert!(tap_name("../x").len() <= 15);
        assert_eq!(tap_name("../x"), "fpx");
    }

    #[test]
    fn mac_entries_need_a_mac_first() {
        let set = [
            "router".to_string(),
            "0a:00:00:00:00:01 10.0.0.5".to_string(),
        ]
        .into_iter()
        .collect();
        let (mac, ips) = mac_entry(&set).unwrap();
        assert_eq!(mac, "0a:00:00:00:00:01");
        assert_eq!(ips, vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert!(mac_entry(&["unknown".to_string()].into_iter().collect()).is_none());
    }
}
