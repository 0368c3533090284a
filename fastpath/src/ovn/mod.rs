//! The OVN logical pipeline in the fastpath.
//!
//! Owns what the fastpath derives from the OVN table sections and runs on a
//! flow-cache miss: [`program::Program`] (lookup structures built off the hot
//! path when a generation is loaded, carrying that generation),
//! [`classifier`] (one tuple-space classifier per logical table),
//! [`interpreter`] (the ingress and egress pipelines over a
//! [`vector::FlowVector`], with patch ports, multicast groups and the
//! packet-generating actions) and [`rewrite`] (turning a verdict back into
//! header rewrites of a frame), [`cache`] (the per-lcore exact-match flow
//! cache), [`ct_engine`] (the conntrack hook over the process's connection
//! table, with load-balancer affinity), [`lcore`] (one lcore's decision for a packet: cache hit, or the
//! interpreter on a miss), [`megaflow`] (stateless verdicts kept under the
//! mask of what they depended on), [`generate`] (frames of generated packets) and
//! [`trace`] (a readable trace of one packet). Everything here is plain Rust over byte
//! buffers: it needs no EAL and must never touch DPDK, so it is tested (and
//! compared with `ovn-trace`) without one.
#![forbid(unsafe_code)]

pub mod cache;
pub mod classifier;
pub mod ct;
pub mod ct_engine;
pub mod generate;
pub mod interpreter;
pub mod lcore;
pub mod megaflow;
pub mod program;
pub mod replay;
pub mod rewrite;
pub mod trace;
pub mod vector;

pub use interpreter::{DropCause, Emission, Generated, Interpreter, Learned, TraceEvent, Verdict};
pub use program::{LoadError, Program};
pub use vector::FlowVector;
