//! `fastpath-cni`: a thin CNI 1.1 plugin and the protocol it speaks with the
//! ovn-bridge node daemon.
//!
//! The plugin binary validates what the container runtime hands it (the
//! `CNI_*` environment and the configuration on stdin), answers VERSION
//! itself and forwards ADD, DEL, CHECK, STATUS and GC as one
//! newline-delimited JSON request over a unix socket. The node daemon links
//! this library, implements [`Handler`] and runs [`serve`].
//!
//! This crate owns the CNI wire formats and the plugin–daemon protocol; it
//! does not create ports, touch network namespaces or allocate addresses
//! (the daemon does all of that behind [`Handler`]).

#![forbid(unsafe_code)]

pub mod args;
pub mod config;
pub mod plugin;
pub mod protocol;
pub mod spec;

pub use args::{CniArgs, CniArgsError};
pub use config::{
    AttachmentId, ConfigError, InterfaceType, PluginConfig, VhostUserSocket, DEFAULT_DAEMON_SOCKET,
};
pub use protocol::{
    bind, call, dispatch, serve, serve_connection, Attachment, CallError, Command, DaemonReply,
    DaemonRequest, Handler,
};
pub use spec::{
    CniError, CniResult, Dns, ErrorCode, Interface, IpConfig, Route, VersionResult,
    CURRENT_VERSION, SUPPORTED_VERSIONS,
};
