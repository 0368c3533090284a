//! The hook through which the node asks the fastpath to create and remove
//! pod ports. [`FastpathPlumber`] talks to the fastpath's control socket
//! (`AddPort`/`RemovePort`, `Ports`, `LearnedBindings`) and, for kernel
//! ports, moves the tap into the pod's namespace ([`super::netns`]). The
//! [`RecordingPlumber`] creates nothing: it records what was asked and hands
//! out ids, for a node run without a fastpath.
//!
//! Owns no Southbound or state-file access (the node does both).

use std::collections::{BTreeMap, BTreeSet};

use parking_lot::Mutex;

use super::netns::{self, KernelInterface};
use super::state::PortKind;
use fastpath_api::{AddedPort, Client, LearnedBinding, PortInfo, Request, RuntimePortKind};

/// Failures of the fastpath port hook.
#[derive(Debug, thiserror::Error)]
pub enum PlumbError {
    /// No fastpath port id is free.
    #[error("no fastpath port id left")]
    Exhausted,
    /// The fastpath refused or failed the request.
    #[error("fastpath port {name}: {reason}")]
    Refused {
        /// Logical port name.
        name: String,
        /// What the fastpath said.
        reason: String,
    },
}

/// Creates and removes the fastpath side of pod ports.
pub trait PortPlumber: Send + Sync {
    /// Makes sure the fastpath has port `name` of `kind` at `endpoint` (tap
    /// interface name or vhost-user socket path) and returns its port id;
    /// `preferred` is the id the port had before a restart. Idempotent.
    fn add_port(
        &self,
        name: &str,
        kind: PortKind,
        endpoint: &str,
        preferred: Option<u16>,
    ) -> Result<u16, PlumbError>;
    /// Removes port `name`; success when it is already gone.
    fn remove_port(&self, name: &str) -> Result<(), PlumbError>;
    /// Whether port `name` exists in the fastpath now.
    fn has_port(&self, name: &str) -> Result<bool, PlumbError>;
    /// The names of every port the fastpath has now (one request, however
    /// many ports the node holds).
    fn port_names(&self) -> Result<BTreeSet<String>, PlumbError>;
    /// Moves the kernel side of kernel port `endpoint` into the pod's
    /// namespace `netns` and configures it as `iface`.
    fn attach_kernel(
        &self,
        endpoint: &str,
        netns: &str,
        iface: &KernelInterface,
    ) -> Result<(), PlumbError>;
    /// MAC bindings (`put_arp`/`put_nd`) and FDB entries (`put_fdb`) the
    /// fastpath learned.
    fn learned(&self) -> Result<Vec<LearnedBinding>, PlumbError>;
}

/// The fastpath's control socket.
#[derive(Debug, Clone)]
pub struct FastpathPlumber {
    socket: String,
}

impl FastpathPlumber {
    /// A plumber talking to the control socket at `socket`.
    pub fn new(socket: impl Into<String>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        req: &Request,
    ) -> Result<T, PlumbError> {
        let refused = |e: fastpath_api::ClientError| PlumbError::Refused {
            name: name.to_string(),
            reason: e.to_string(),
        };
        Client::connect(&self.socket)
            .map_err(refused)?
            .call_as(req)
            .map_err(refused)
    }
}

impl PortPlumber for FastpathPlumber {
    fn add_port(
        &self,
        name: &str,
        kind: PortKind,
        endpoint: &str,
        preferred: Option<u16>,
    ) -> Result<u16, PlumbError> {
        let kind = match kind {
            PortKind::Kernel => RuntimePortKind::Tap {
                iface: endpoint.to_string(),
            },
            PortKind::VhostUser => RuntimePortKind::VhostUser {
                socket: endpoint.to_string(),
                client: false,
            },
        };
        let added: AddedPort = self.call(
            name,
            &Request::AddPort {
                name: name.to_string(),
                kind,
                preferred_id: preferred,
            },
        )?;
        Ok(added.port_id)
    }

    fn remove_port(&self, name: &str) -> Result<(), PlumbError> {
        let _: serde_json::Value = self.call(
            name,
            &Request::RemovePort {
                name: name.to_string(),
            },
        )?;
        Ok(())
    }

    fn has_port(&self, name: &str) -> Result<bool, PlumbError> {
        let ports: Vec<PortInfo> = self.call(name, &Request::Ports)?;
        Ok(ports.iter().any(|p| p.name == name))
    }

    fn port_names(&self) -> Result<BTreeSet<String>, PlumbError> {
        let ports: Vec<PortInfo> = self.call("(ports)", &Request::Ports)?;
        Ok(ports.into_iter().map(|p| p.name).collect())
    }

    fn attach_kernel(
        &self,
        endpoint: &str,
        netns: &str,
        iface: &KernelInterface,
    ) -> Result<(), PlumbError> {
        netns::attach(endpoint, netns, iface).map_err(|e| PlumbError::Refused {
            name: endpoint.to_string(),
            reason: e.to_string(),
        })
    }

    fn learned(&self) -> Result<Vec<LearnedBinding>, PlumbError> {
        self.call("(learned bindings)", &Request::LearnedBindings)
    }
}

/// A port the [`RecordingPlumber`] was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedPort {
    /// Fastpath port id.
    pub id: u16,
    /// Kernel or vhost-user.
    pub kind: PortKind,
    /// Tap name or socket path.
    pub endpoint: String,
}

/// Records requests and allocates ids (lowest free from 1); creates nothing.
#[derive(Debug, Default)]
pub struct RecordingPlumber {
    ports: Mutex<BTreeMap<String, RecordedPort>>,
}

impl RecordingPlumber {
    /// The ports currently recorded.
    pub fn ports(&self) -> BTreeMap<String, RecordedPort> {
        self.ports.lock().clone()
    }
}

impl PortPlumber for RecordingPlumber {
    fn add_port(
        &self,
        name: &str,
        kind: PortKind,
        endpoint: &str,
        preferred: Option<u16>,
    ) -> Result<u16, PlumbError> {
        let mut ports = self.ports.lock();
        if let Some(p) = ports.get(name) {
            return Ok(p.id);
        }
        let used = |id: u16| ports.values().any(|p| p.id == id);
        let id = match preferred {
            Some(id) if id != 0 && !used(id) => id,
            _ => (1..u16::MAX)
                .find(|id| !used(*id))
                .ok_or(PlumbError::Exhausted)?,
        };
        ports.insert(
            name.to_string(),
            RecordedPort {
                id,
                kind,
                endpoint: endpoint.to_string(),
            },
        );
        Ok(id)
    }

    fn remove_port(&self, name: &str) -> Result<(), PlumbError> {
        self.ports.lock().remove(name);
        Ok(())
    }

    fn has_port(&self, name: &str) -> Result<bool, PlumbError> {
        Ok(self.ports.lock().contains_key(name))
    }

    fn port_names(&self) -> Result<BTreeSet<String>, PlumbError> {
        Ok(self.ports.lock().keys().cloned().collect())
    }

    /// Nothing was created, so there is nothing to move.
    fn attach_kernel(&self, _: &str, _: &str, _: &KernelInterface) -> Result<(), PlumbError> {
        Ok(())
    }

    /// Nothing forwards, so nothing is learned.
    fn learned(&self) -> Result<Vec<LearnedBinding>, PlumbError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_stable_and_honour_the_preferred_one() {
        let p = RecordingPlumber::default();
        let a = p.add_port("a", PortKind::Kernel, "fpa", None).unwrap();
        assert_eq!(p.add_port("a", PortKind::Kernel, "fpa", None).unwrap(), a);
        let b = p
            .add_port("b", PortKind::VhostUser, "/x.sock", Some(7))
            .unwrap();
        assert_eq!(b, 7);
        let c = p.add_port("c", PortKind::Kernel, "fpc", Some(7)).unwrap();
        assert!(c != a && c != b);
        assert!(p.has_port("a").unwrap());
        let names: Vec<String> = p.port_names().unwrap().into_iter().collect();
        assert_eq!(names, ["a", "b", "c"]);
        p.remove_port("a").unwrap();
        p.remove_port("a").unwrap();
        assert!(!p.ports().contains_key("a"));
        assert!(!p.has_port("a").unwrap());
    }

    #[test]
    fn fastpath_plumber_reports_a_missing_fastpath() {
        let p = FastpathPlumber::new("/nonexistent/fastpath.sock");
        let e = p.add_port("a", PortKind::Kernel, "fpa", None).unwrap_err();
        assert!(e.to_string().contains("fastpath is not running"), "{e}");
        let e = p.port_names().unwrap_err();
        assert!(e.to_string().contains("fastpath is not running"), "{e}");
    }
}
