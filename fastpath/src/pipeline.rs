//! Forwarding pipelines: what happens to a received burst. `xconnect`
//! patches port pairs to each other without looking at the packets; it is the
//! floor every other pipeline is measured against, and what a raw PVP test
//! runs. `ovn` runs the OVN logical pipeline over the compiled tables, with
//! a per-lcore flow cache (`crate::ovn`).

use crate::config::Config;

/// Output of a pipeline for one packet.
pub type PortIndex = usize;

/// The `xconnect` pipeline: for each input port index, the output port index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xconnect {
    peer: Vec<Option<PortIndex>>,
}

impl Xconnect {
    /// Builds the patch table from the configuration's pairs.
    pub fn from_config(cfg: &Config) -> Xconnect {
        let mut peer = vec![None; cfg.ports.len()];
        for [a, b] in &cfg.pipeline.xconnect {
            if let (Some(ia), Some(ib)) = (cfg.port_index(a), cfg.port_index(b)) {
                peer[ia] = Some(ib);
                peer[ib] = Some(ia);
            }
        }
        Xconnect { peer }
    }

    /// The port that packets received on `port` go to.
    #[inline(always)]
    pub fn output(&self, port: PortIndex) -> Option<PortIndex> {
        self.peer.get(port).copied().flatten()
    }
}

/// The pipeline a worker runs.
#[derive(Debug, Clone)]
pub enum Pipeline {
    /// Port pairs patched to each other.
    Xconnect(Xconnect),
    /// The OVN logical pipeline.
    Ovn {
        /// Flow cache entries per lcore.
        cache_entries: usize,
        /// Megaflows per lcore (0: none).
        megaflow_entries: usize,
        /// One in this many megaflow-served stateless verdicts is cached.
        insert_inv_prob: u32,
    },
}

impl Pipeline {
    /// The pipeline named by the configuration.
    pub fn from_config(cfg: &Config) -> Pipeline {
        match cfg.pipeline.kind.as_str() {
            "ovn" => Pipeline::Ovn {
                cache_entries: cfg.pipeline.flow_cache_entries,
                megaflow_entries: cfg.pipeline.megaflow_entries,
                insert_inv_prob: cfg.pipeline.flow_cache_insert_inv_prob,
            },
            _ => Pipeline::Xconnect(Xconnect::from_config(cfg)),
        }
    }

    /// The pipeline's name.
    pub fn name(&self) -> &'static str {
        match self {
            Pipeline::Xconnect(_) => "xconnect",
            Pipeline::Ovn { .. } => "ovn",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_symmetric_and_unpaired_ports_have_no_output() {
        let cfg = Config::from_toml(
            r#"
[[port]]
name = "a"
devargs = "net_null0"
[[port]]
name = "b"
devargs = "net_null1"
[[port]]
name = "c"
devargs = "net_null2"
[pipeline]
xconnect = [["b", "a"]]
"#,
            "t",
        )
        .unwrap();
        let x = Xconnect::from_config(&cfg);
        assert_eq!(x.output(0), Some(1));
        assert_eq!(x.output(1), Some(0));
        assert_eq!(x.output(2), None);
        assert_eq!(x.output(9), None);
    }
}
