//! The node role of `ovn-bridge`: what ovn-controller is to OVS, for the
//! fastpath. It registers the node as an OVN chassis, follows the
//! Southbound database with conditions limited to the datapaths the node
//! needs, claims the Port_Binding rows of local pod ports, keeps conntrack
//! zones stable across restarts, compiles and publishes the fastpath
//! tables, and serves the CNI plugin.
//!
//! Owns the node's Southbound writes (its Chassis, Encap and
//! Chassis_Private rows; `chassis` and `up` of local Port_Bindings) and its
//! state file. It must not write the Northbound database (the controller
//! role does) nor create fastpath ports itself (it asks a [`PortPlumber`]).

pub mod chassis;
pub mod cni;
pub mod daemon;
pub mod netns;
pub mod plumber;
pub mod port_bindings;
pub mod state;

pub use chassis::{ChassisConfig, FEATURES};
pub use cni::CniHandler;
pub use daemon::{Node, NodeConfig, PublishReport, Shutdown, WriteCounts};
pub use netns::{KernelInterface, NetnsError};
pub use plumber::{FastpathPlumber, PlumbError, PortPlumber, RecordingPlumber};
pub use port_bindings::{PortBindingCache, PortBindings};
pub use state::{LocalPort, NodeState, PortKind, StateError};

/// Failures of the node role.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The Southbound session failed.
    #[error("southbound: {0}")]
    Ovsdb(#[from] ovsdb::Error),
    /// A Southbound row does not fit its type.
    #[error("southbound row: {0}")]
    Row(#[from] ovsdb::RowError),
    /// Compiling the tables failed.
    #[error("compile: {0}")]
    Compile(#[from] crate::compile::CompileError),
    /// The table file could not be opened or published.
    #[error("tables: {0}")]
    Tables(String),
    /// The state file could not be read or written.
    #[error("state: {0}")]
    State(#[from] StateError),
    /// The fastpath port hook failed.
    #[error("fastpath port: {0}")]
    Plumb(#[from] PlumbError),
    /// A file operation failed.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        error: std::io::Error,
    },
    /// A row the node wrote did not show up in its replica in time.
    #[error("{0} did not appear in the southbound replica")]
    NotSeen(String),
    /// The node's loop ended abnormally.
    #[error("node loop stopped")]
    Stopped,
}
