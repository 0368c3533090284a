//! What the node keeps across restarts: the conntrack zone of every local
//! port and datapath, and the local pod ports the CNI plugin attached (the
//! analogue of ovn-controller's `ct-zone-*` keys in the Open_vSwitch
//! database's `external_ids`, and of the OVS Interface rows of local VIFs).
//!
//! Owns the state file (JSON, written atomically: temporary file, then
//! rename) and the zone allocator. It must not talk to any database.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "node-state.json";

/// Failures reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// The file is not a state document (it is left in place, untouched).
    #[error("{path}: not a node state file: {error}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The decode error.
        error: String,
    },
    /// Every conntrack zone (1..=65535) is in use.
    #[error("no free conntrack zone left")]
    ZonesExhausted,
}

/// How a pod's interface reaches the fastpath.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortKind {
    /// A kernel (tap) interface moved into the pod's netns.
    Kernel,
    /// A vhost-user socket in a directory mounted into the pod.
    VhostUser,
}

/// One pod port attached on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPort {
    /// `CNI_CONTAINERID` of the attachment.
    pub container_id: String,
    /// `CNI_IFNAME` inside the pod.
    pub ifname: String,
    /// CNI network name.
    pub network: String,
    /// The pod's netns path, when known.
    pub netns: Option<String>,
    /// Kernel or vhost-user.
    pub kind: PortKind,
    /// Host-side interface name (kernel) or socket path (vhost-user).
    pub endpoint: String,
    /// The fastpath's port id.
    pub fastpath_port: u16,
}

/// The persisted document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Conntrack zone by owner: a logical port name, or `<datapath uuid>_dnat`
    /// / `<datapath uuid>_snat` for a local router datapath.
    #[serde(default)]
    pub ct_zones: BTreeMap<String, u16>,
    /// Local pod ports by logical port name (`<pod>.<namespace>`).
    #[serde(default)]
    pub ports: BTreeMap<String, LocalPort>,
}

impl NodeState {
    /// Reads the state at `path`; an absent file is an empty state.
    pub fn load(path: &Path) -> Result<NodeState, StateError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Malformed {
                path: path.to_owned(),
                error: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeState::default()),
            Err(error) => Err(StateError::Io {
                path: path.to_owned(),
                error,
            }),
        }
    }

    /// Writes the state to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let io = |error| StateError::Io {
            path: path.to_owned(),
            error,
        };
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The zone of `owner`, allocating the lowest free one (zone 0 is
    /// reserved: it is the default zone of untracked traffic).
    pub fn zone(&mut self, owner: &str) -> Result<u16, StateError> {
        if let Some(z) = self.ct_zones.get(owner) {
            return Ok(*z);
        }
        let used: BTreeSet<u16> = self.ct_zones.values().copied().collect();
        let free = (1..=u16::MAX)
            .find(|z| !used.contains(z))
            .ok_or(StateError::ZonesExhausted)?;
        self.ct_zones.insert(owner.to_string(), free);
        Ok(free)
    }

    /// Keeps the zones of `owners` only; true when something was freed.
    pub fn retain_zones(&mut self, owners: &BTreeSet<String>) -> bool {
        let before = self.ct_zones.len();
        self.ct_zones.retain(|k, _| owners.contains(k));
        before != self.ct_zones.len()
    }

    /// The lowest fastpath port id no local port holds (0 is the uplink's).
    pub fn free_fastpath_port(&self) -> Option<u16> {
        let used: BTreeSet<u16> = self.ports.values().map(|p| p.fastpath_port).collect();
        (1..u16::MAX).find(|p| !used.contains(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_are_distinct_nonzero_and_reused_after_release() {
        let mut s = NodeState::default();
        let a = s.zone("a").unwrap();
        let b = s.zone("b").unwrap();
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert_eq!(s.zone("a").unwrap(), a);
        assert!(s.retain_zones(&["b".to_string()].into_iter().collect()));
        assert_eq!(
            s.zone("c").unwrap(),
            a,
            "the freed zone is handed out again"
        );
        assert_eq!(s.zone("b").unwrap(), b, "b kept its zone");
    }

    #[test]
    fn state_round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        assert_eq!(NodeState::load(&path).unwrap(), NodeState::default());
        let mut s = NodeState::default();
        s.zone("pod.ns").unwrap();
        s.ports.insert(
            "pod.ns".into(),
            LocalPort {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                network: "net".into(),
                netns: None,
                kind: PortKind::Kernel,
                endpoint: "fpc1".into(),
                fastpath_port: 1,
            },
        );
        s.save(&path).unwrap();
        assert_eq!(NodeState::load(&path).unwrap(), s);
        assert_eq!(s.free_fastpath_port(), Some(2));
        std::fs::write(&path, b"{\"ct_zones\": 5}").unwrap();
        assert!(matches!(
            NodeState::load(&path),
            Err(StateError::Malformed { .. })
        ));
    }
}
