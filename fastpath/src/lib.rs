//! The fastpath: a poll-mode DPDK data plane. `dpdk` is the safe layer over
//! DPDK (the only module with `unsafe`); `config` reads the daemon's
//! configuration; `worker` is the run-to-completion loop of each lcore;
//! `pipeline` decides where packets go; `stats` holds the counters;
//! `tables` follows the compiled tables in shared memory; `ovn` runs
//! the OVN logical pipeline over them (no EAL needed); `conntrack` tracks
//! connections and translates addresses for its `ct_*` actions; `meter`
//! holds the QoS policers; `tunnel` encapsulates and decapsulates Geneve;
//! `control` serves the control socket off the worker lcores; `daemon`
//! starts and stops it all.

pub mod config;
pub mod conntrack;
pub mod control;
pub mod daemon;
pub mod dpdk;
pub mod meter;
pub mod ovn;
pub mod pipeline;
pub mod stats;
pub mod tables;
pub mod tunnel;
pub mod underlay;
pub mod worker;
