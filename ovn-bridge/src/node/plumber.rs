//! The hook through which the node asks the fastpath to create and remove
//! pod ports. The fastpath's run-time port control is not wired yet; the
//! [`RecordingPlumber`] only records what was asked and hands out ids.
//!
//! Owns the port-id bookkeeping of that stand-in. It must not touch the
//! Southbound database or the state file (the node does both).

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::state::PortKind;

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
        p.remove_port("a").unwrap();
        p.remove_port("a").unwrap();
        assert!(!p.ports().contains_key("a"));
    }
}
