//! The `compile` entry point: follow a Southbound database and keep a table
//! file in step with it (the small stand-in until the node role exists).
//!
//! Owns the loop monitor -> compile -> publish. It must not write to the
//! Southbound database.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use fastpath_tables::{TableFile, Writer};
use ovsdb::{Client, ClientOptions, MonitorTable};

use super::{compile_incremental, CompileMemo, CompileOptions, SB_TABLES};

/// Slot capacity of a table file this command creates.
pub const DEFAULT_CAPACITY: usize = 64 << 20;

/// Parses `LOGICAL=FASTPATH_PORT_ID`.
pub fn parse_port_mapping(s: &str) -> Result<(String, u16), String> {
    let (name, id) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?}: expected LOGICAL=FASTPATH_PORT_ID"))?;
    let id: u16 = id
        .parse()
        .map_err(|_| format!("{s:?}: {id:?} is not a port id"))?;
    if name.is_empty() {
        return Err(format!("{s:?}: empty logical port name"));
    }
    Ok((name.to_string(), id))
}

/// Opens the table file, creating it if it does not exist.
pub fn open_tables(path: &Path) -> anyhow::Result<Writer> {
    if path.exists() {
        Writer::open(path).with_context(|| format!("open {}", path.display()))
    } else {
        TableFile::create(path, DEFAULT_CAPACITY)
            .with_context(|| format!("create {}", path.display()))
    }
}

/// Connects to the Southbound database, compiles and publishes, then
/// republishes on every change until the connection closes. With `once`,
/// returns after the first publish.
pub async fn follow(
    sb: &[String],
    chassis: &str,
    tables: &Path,
    port_map: HashMap<String, u16>,
    once: bool,
) -> anyhow::Result<()> {
    let client = Client::connect(sb, "OVN_Southbound", ClientOptions::default())
        .await
        .context("connect to the southbound database")?;
    let mut replica = client
        .monitor(SB_TABLES.iter().map(|t| MonitorTable::all(t)).collect())
        .await
        .context("monitor the southbound database")?;
    let mut writer = open_tables(tables)?;
    let opts = CompileOptions {
        chassis: chassis.to_string(),
        port_map,
    };
    let mut db = replica.snapshot();
    let mut memo = CompileMemo::default();
    loop {
        let started = std::time::Instant::now();
        let compiled = compile_incremental(&db, &opts, None, &mut memo).context("compile")?;
        let compile_time = started.elapsed();
        let generation = writer
            .publish(compiled.builder)
            .context("publish the tables")?;
        log::info!(
            "generation {generation}: {} logical flows ({} compiled, {} reused), {} rules, {} rejected, unsupported {:?}, compiled in {:.1} ms",
            compiled.stats.logical_flows,
            memo.compiled,
            memo.reused,
            compiled.stats.rules,
            compiled.stats.rejected,
            compiled.stats.unsupported,
            compile_time.as_secs_f64() * 1e3
        );
        if once {
            return Ok(());
        }
        db = replica
            .changed()
            .await
            .context("southbound monitor ended")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_parse_or_explain() {
        assert_eq!(parse_port_mapping("pod.ns=3"), Ok(("pod.ns".into(), 3)));
        assert!(parse_port_mapping("pod").unwrap_err().contains("expected"));
        assert!(parse_port_mapping("pod=x")
            .unwrap_err()
            .contains("not a port id"));
        assert!(parse_port_mapping("=1").unwrap_err().contains("empty"));
    }
}
