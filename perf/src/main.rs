//! `perf`: runs data-plane scenarios and compares the fastpath with the floor
//! (DPDK's own `dpdk-testpmd` in `io` mode on the same kind of ports) and
//! with OVS-DPDK (with `ovn-controller` on the same OVN topology), in the
//! same run. `perf run xconnect` starts the fastpath patching two vhost-user
//! ports on one core and `pktgen` on the other, then testpmd and OVS-DPDK
//! the same way, and prints busy cycles per packet of each and their ratios.
#![forbid(unsafe_code)]

mod ct_scenarios;
mod ovn_scenarios;
mod ovs;
mod plot;
mod pod_add;
mod runner;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Data-plane benchmarks.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a scenario.
    Run(Box<runner::RunArgs>),
    /// List the scenarios.
    List,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let r: Result<()> = match cli.cmd {
        Cmd::Run(args) => runner::run(*args),
        Cmd::List => {
            for (name, what) in runner::SCENARIOS {
                println!("{name:<16} {what}");
            }
            Ok(())
        }
    };
    if let Err(e) = r {
        eprintln!("perf: {e:#}");
        std::process::exit(1);
    }
}

/// Where the sibling binaries live (same directory as this one).
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}
