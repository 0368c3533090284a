//! Raw bindings to the system DPDK 22.11, generated at build time by bindgen
//! from the headers that `pkg-config libdpdk` names, plus `fp_*` wrappers (a
//! small C shim) for the `static inline` functions of the data path.
//!
//! Nothing here is safe to call without reading DPDK's documentation; the
//! `fastpath` crate's `dpdk` module is the safe layer over it.
#![allow(unsafe_code)]
#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case)]
#![allow(
    unsafe_op_in_unsafe_fn,
    dead_code,
    improper_ctypes,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// `RTE_ETH_TX_OFFLOAD_MULTI_SEGS` (`RTE_BIT64(15)`), a macro bindgen cannot evaluate.
pub const RTE_ETH_TX_OFFLOAD_MULTI_SEGS: u64 = 1 << 15;
/// `SOCKET_ID_ANY`.
pub const SOCKET_ID_ANY: i32 = -1;
