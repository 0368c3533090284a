//! The lookup structures the fastpath derives from one generation of the
//! OVN sections, built by the table watcher off the hot path: datapaths by
//! key with one [`Classifier`] per (pipeline, table) and the pass-through
//! tables the interpreter may skip, ports by key and by name, multicast
//! groups, MAC bindings, the flows' instructions, and the remote chassis
//! (Geneve endpoints) that ports bound elsewhere are reached through.
//!
//! Owns loading and lookups; it must not execute actions. Everything is
//! copied out of the shared mapping, so a program outlives its snapshot and
//! a misbehaving writer cannot change it under a worker.

use std::ops::Range;

use hashbrown::HashMap;

use fastpath_tables::layout::StrRef;
use fastpath_tables::ovn::{
    datapath_kind, op, zone_kind, OvnInstruction, OvnPortSecurity, OvnSections, NONE_U16, NONE_U32,
    OVN_PORT_LOCAL,
};
use fastpath_tables::sections::SlotSections;

use super::classifier::{Classifier, Rule};
use crate::meter::{MeterConfig, MeterKey};

/// Why a generation's OVN sections could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// A flow names a datapath that has no `OvnDatapath` entry.
    #[error("flow {flow} names unknown datapath {datapath}")]
    UnknownDatapath {
        /// Flow index.
        flow: usize,
        /// Datapath key.
        datapath: u32,
    },
    /// A port names a datapath that has no `OvnDatapath` entry.
    #[error("port {port} names unknown datapath {datapath}")]
    PortDatapath {
        /// Port index.
        port: usize,
        /// Datapath key.
        datapath: u32,
    },
    /// Two ports share a (datapath, key) pair.
    #[error("port key {key} appears twice in datapath {datapath}")]
    DuplicatePort {
        /// Datapath key.
        datapath: u32,
        /// Port key.
        key: u32,
    },
}

/// One logical datapath.
#[derive(Debug)]
pub struct Datapath {
    /// Tunnel key.
    pub key: u32,
    /// Whether it is a router.
    pub is_router: bool,
    /// Name.
    pub name: String,
    /// Classifiers by pipeline then table id.
    pub tables: [Vec<Classifier>; 2],
    /// By pipeline then table id: the first table at or after it that is
    /// not a pass-through, and how many pass-through tables lie between
    /// (see [`Program::skip`]).
    pub skips: [Vec<(u16, u16)>; 2],
    /// Conntrack zone of a router's DNAT (and common) zone; 0 if none.
    pub dnat_zone: u16,
    /// Conntrack zone of a router's SNAT; 0 if none.
    pub snat_zone: u16,
}

/// One logical port.
#[derive(Debug, Clone)]
pub struct Port {
    /// Index of its datapath in [`Program::datapaths`].
    pub datapath: u32,
    /// Port key.
    pub key: u32,
    /// `fastpath_tables::ovn::port_kind`.
    pub kind: u8,
    /// Bound here (or present everywhere).
    pub local: bool,
    /// Fastpath port id, if delivered by one.
    pub fastpath_port: Option<u16>,
    /// Peer port index (patch ports).
    pub peer: Option<u32>,
    /// Name.
    pub name: String,
    /// Port-security entries (empty: no port security).
    pub security: Vec<OvnPortSecurity>,
    /// Conntrack zone of the port (switch ct); 0 if none.
    pub zone: u16,
    /// Index in [`Program::chassis`] of the remote chassis the port is
    /// bound to (its packets leave through the tunnel), if any.
    pub chassis: Option<u16>,
}

/// A remote chassis: where Geneve packets for its ports go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// `Chassis.name`.
    pub name: String,
    /// Tunnel address (`Encap.ip`).
    pub ip: std::net::IpAddr,
    /// UDP destination port.
    pub dst_port: u16,
    /// Fill outer UDP checksums.
    pub csum: bool,
}

/// One multicast group.
#[derive(Debug, Clone)]
pub struct Group {
    /// Name.
    pub name: String,
    /// Member port indices.
    pub members: Vec<u32>,
}

/// One classifier rule's action side and trace information.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Datapath index.
    pub datapath: u32,
    /// Pipeline.
    pub pipeline: u8,
    /// Table.
    pub table: u8,
    /// Priority.
    pub priority: u16,
    /// Instructions in [`Program::code`].
    pub actions: Range<usize>,
    /// Stage name (see [`Program::text`]).
    pub stage: StrRef,
    /// Match text.
    pub match_text: StrRef,
    /// Actions text.
    pub actions_text: StrRef,
    /// Logical flow UUID prefix.
    pub lflow: u32,
}

/// Everything the interpreter needs from one generation.
#[derive(Debug, Default)]
pub struct Program {
    /// The generation it was built from.
    pub generation: u64,
    /// Datapaths.
    pub datapaths: Vec<Datapath>,
    /// Ports.
    pub ports: Vec<Port>,
    /// Flows (classifier rule ids index this).
    pub flows: Vec<Flow>,
    /// All instructions.
    /// The generation's string blob (a copy): the flows' texts.
    pub texts: Box<[u8]>,
    pub code: Vec<OvnInstruction>,
    /// Remote chassis, by index (ascending by name).
    pub chassis: Vec<RemoteEndpoint>,
    /// Some flow runs a conntrack action (cache entries may then depend on
    /// connections, which the worker prefetches).
    pub uses_conntrack: bool,
    dp_by_key: HashMap<u32, u32>,
    port_by_key: HashMap<(u32, u32), u32>,
    port_by_name: HashMap<String, u32>,
    port_by_fastpath: HashMap<u16, u32>,
    groups: HashMap<(u32, u32), Group>,
    bindings: HashMap<(u32, u32, [u8; 16]), [u8; 6]>,
    /// (datapath index, MAC) -> port key.
    fdb: HashMap<(u32, [u8; 6]), u32>,
}

impl Program {
    /// Builds the program of a validated slot (which the tables crate has
    /// checked for every cross-reference).
    pub fn load(sections: &SlotSections<'_>, generation: u64) -> Result<Program, LoadError> {
        let s = OvnSections::of(sections);
        let mut p = Program {
            generation,
            ..Default::default()
        };
        // Sized up front: a node with many pods loads thousands of ports
        // and rules per generation.
        p.datapaths.reserve(s.datapaths.len());
        p.dp_by_key.reserve(s.datapaths.len());
        p.ports.reserve(s.ports.len());
        p.port_by_key.reserve(s.ports.len());
        p.port_by_name.reserve(s.ports.len());
        p.flows.reserve(s.flows.len());
        p.bindings.reserve(s.mac_bindings.len());
        p.fdb.reserve(s.fdb.len());
        for d in s.datapaths {
            p.dp_by_key.insert(d.key, p.datapaths.len() as u32);
            p.datapaths.push(Datapath {
                key: d.key,
                is_router: d.kind == datapath_kind::ROUTER,
                name: s.string(d.name),
                tables: [Vec::new(), Vec::new()],
                skips: [Vec::new(), Vec::new()],
                dnat_zone: 0,
                snat_zone: 0,
            });
        }
        for (i, lp) in s.ports.iter().enumerate() {
            let Some(&dp) = p.dp_by_key.get(&lp.datapath) else {
                return Err(LoadError::PortDatapath {
                    port: i,
                    datapath: lp.datapath,
                });
            };
            if p.port_by_key.insert((dp, lp.key), i as u32).is_some() {
                return Err(LoadError::DuplicatePort {
                    datapath: lp.datapath,
                    key: lp.key,
                });
            }
            let name = s.string(lp.name);
            p.port_by_name.insert(name.clone(), i as u32);
            if lp.fastpath_port != NONE_U16 {
                p.port_by_fastpath.insert(lp.fastpath_port, i as u32);
            }
            let security = s
                .port_security
                .get(lp.first_security as usize..)
                .and_then(|x| x.get(..lp.security_count as usize))
                .unwrap_or(&[])
                .to_vec();
            p.ports.push(Port {
                datapath: dp,
                key: lp.key,
                kind: lp.kind,
                local: lp.flags & OVN_PORT_LOCAL != 0,
                fastpath_port: (lp.fastpath_port != NONE_U16).then_some(lp.fastpath_port),
                peer: (lp.peer != NONE_U32).then_some(lp.peer),
                name,
                security,
                zone: 0,
                chassis: None,
            });
        }
        let view = sections.remote_chassis();
        for c in view.entries() {
            p.chassis.push(RemoteEndpoint {
                name: view.name(c).unwrap_or_default(),
                ip: c
                    .addr()
                    .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                dst_port: c.dst_port,
                csum: c.wants_checksum(),
            });
        }
        for r in sections.remote_ports() {
            // Both indices were checked by the slot validation; the
            // lookups stay defensive all the same.
            if let (Some(port), Ok(chassis)) =
                (p.ports.get_mut(r.port as usize), u16::try_from(r.chassis))
            {
                if usize::from(chassis) < p.chassis.len() && !port.local {
                    port.chassis = Some(chassis);
                }
            }
        }
        for z in s.ct_zones {
            let Some(&dp) = p.dp_by_key.get(&z.datapath) else {
                continue;
            };
            match z.kind {
                zone_kind::PORT => {
                    if let Some(&i) = p.port_by_key.get(&(dp, z.port)) {
                        p.ports[i as usize].zone = z.zone;
                    }
                }
                zone_kind::DNAT => p.datapaths[dp as usize].dnat_zone = z.zone,
                _ => p.datapaths[dp as usize].snat_zone = z.zone,
            }
        }
        for g in s.groups {
            let Some(&dp) = p.dp_by_key.get(&g.datapath) else {
                continue;
            };
            let members = s
                .members
                .get(g.first_member as usize..)
                .and_then(|m| m.get(..g.member_count as usize))
                .unwrap_or(&[])
                .iter()
                .copied()
                .filter(|m| (*m as usize) < p.ports.len())
                .collect();
            p.groups.insert(
                (dp, g.key),
                Group {
                    name: s.string(g.name),
                    members,
                },
            );
        }
        for b in s.mac_bindings {
            if let Some(&dp) = p.dp_by_key.get(&b.datapath) {
                p.bindings.insert((dp, b.port_key, b.ip), b.mac);
            }
        }
        for e in s.fdb {
            if let Some(&dp) = p.dp_by_key.get(&e.datapath) {
                p.fdb.insert((dp, e.mac), e.port_key);
            }
        }
        // One copy of the string blob for the flows' texts (shown by
        // traces and dumps only), not one allocation per text.
        p.texts = s.strings.blob().into();
        p.code = s.actions.to_vec();
        // (`ct_clear` alone tracks nothing.)
        p.uses_conntrack = p
            .code
            .iter()
            .any(|i| i.op == op::CT && i.arg & 0xff != fastpath_tables::ovn::ct::CLEAR);
        let mut rules: HashMap<(u32, u8, u8), Vec<Rule>> = HashMap::new();
        for (i, f) in s.flows.iter().enumerate() {
            let Some(&dp) = p.dp_by_key.get(&f.datapath) else {
                return Err(LoadError::UnknownDatapath {
                    flow: i,
                    datapath: f.datapath,
                });
            };
            let start = f.first_action as usize;
            p.flows.push(Flow {
                datapath: dp,
                pipeline: f.pipeline,
                table: f.table,
                priority: f.priority,
                actions: start..start + f.action_count as usize,
                stage: f.stage,
                match_text: f.match_text,
                actions_text: f.actions_text,
                lflow: f.lflow,
            });
            let tests = s
                .tests
                .get(f.first_test as usize..)
                .and_then(|t| t.get(..f.test_count as usize))
                .unwrap_or(&[]);
            if let Some(rule) = Rule::from_tests(f.priority, i as u32, tests) {
                rules
                    .entry((dp, f.pipeline.min(1), f.table))
                    .or_default()
                    .push(rule);
            }
        }
        for ((dp, pipe, table), list) in rules {
            let tables = &mut p.datapaths[dp as usize].tables[usize::from(pipe)];
            if tables.len() <= usize::from(table) {
                tables.resize_with(usize::from(table) + 1, Classifier::default);
            }
            tables[usize::from(table)] = Classifier::new(&list);
        }
        for d in 0..p.datapaths.len() {
            for pipe in 0..2u8 {
                let skips = p.pass_through_skips(d, pipe);
                p.datapaths[d].skips[usize::from(pipe)] = skips;
            }
        }
        Ok(p)
    }

    /// A text of the generation's string blob (`"<invalid>"` for a bad
    /// reference or bytes that are not UTF-8).
    pub fn text(&self, r: StrRef) -> &str {
        let start = r.offset as usize;
        start
            .checked_add(r.len as usize)
            .and_then(|end| self.texts.get(start..end))
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("<invalid>")
    }

    /// A table is a pass-through when every packet gets the same flow and
    /// that flow's only action is `next;` to the following table of the
    /// same pipeline (northd's default flow in a table with nothing else
    /// for this datapath). Running it changes nothing but the call depth.
    fn pass_through_skips(&self, datapath: usize, pipe: u8) -> Vec<(u16, u16)> {
        let tables = &self.datapaths[datapath].tables[usize::from(pipe)];
        let pass: Vec<bool> = tables
            .iter()
            .enumerate()
            .map(|(t, c)| {
                let Some(flow) = c.constant().and_then(|id| self.flows.get(id as usize)) else {
                    return false;
                };
                match self.code.get(flow.actions.clone()) {
                    Some([ins]) => {
                        ins.op == op::NEXT
                            && ins.count.min(1) == u32::from(pipe)
                            && usize::from(ins.arg) == t + 1
                    }
                    _ => false,
                }
            })
            .collect();
        let mut skips = vec![(0u16, 0u16); pass.len()];
        let mut target = pass.len();
        for t in (0..pass.len()).rev() {
            if !pass[t] {
                target = t;
            }
            skips[t] = (target as u16, (target - t) as u16);
        }
        skips
    }

    /// Where a packet entering `table` really starts: the first table at
    /// or after it that is not a pass-through, and the number of
    /// pass-through tables (each a `next;` call) in between.
    #[inline]
    pub fn skip(&self, datapath: u32, pipeline: u8, table: u16) -> (u16, u16) {
        self.datapaths
            .get(datapath as usize)
            .and_then(|d| d.skips[usize::from(pipeline.min(1))].get(usize::from(table)))
            .copied()
            .unwrap_or((table, 0))
    }

    /// The classifier of a table, if it has rules.
    #[inline]
    pub fn table(&self, datapath: u32, pipeline: u8, table: u16) -> Option<&Classifier> {
        self.datapaths
            .get(datapath as usize)?
            .tables
            .get(usize::from(pipeline.min(1)))?
            .get(usize::from(table))
            .filter(|c| !c.is_empty())
    }

    /// Datapath index of a tunnel key.
    pub fn datapath_by_key(&self, key: u32) -> Option<u32> {
        self.dp_by_key.get(&key).copied()
    }

    /// Port index by (datapath index, port key).
    #[inline]
    pub fn port(&self, datapath: u32, key: u32) -> Option<u32> {
        self.port_by_key.get(&(datapath, key)).copied()
    }

    /// Port index by logical name.
    pub fn port_by_name(&self, name: &str) -> Option<u32> {
        self.port_by_name.get(name).copied()
    }

    /// The logical port a fastpath port delivers.
    #[inline]
    pub fn port_by_fastpath(&self, port_id: u16) -> Option<u32> {
        self.port_by_fastpath.get(&port_id).copied()
    }

    /// A multicast group by (datapath index, key).
    pub fn group(&self, datapath: u32, key: u32) -> Option<&Group> {
        self.groups.get(&(datapath, key))
    }

    /// The MAC bound to `ip` on port `port_key` of a datapath.
    pub fn mac_binding(&self, datapath: u32, port_key: u32, ip: &[u8; 16]) -> Option<[u8; 6]> {
        self.bindings.get(&(datapath, port_key, *ip)).copied()
    }

    /// The key of the port the FDB of a datapath puts `mac` behind.
    pub fn fdb_port(&self, datapath: u32, mac: &[u8; 6]) -> Option<u32> {
        self.fdb.get(&(datapath, *mac)).copied()
    }

    /// Number of classifier rules.
    pub fn rule_count(&self) -> usize {
        self.flows.len()
    }

    /// The stable key of the meter of flow `flow` (`set_meter`): a hash
    /// (FNV-1a) of its datapath's tunnel key, pipeline, table, priority and
    /// match, so the same QoS rule keeps its meter (and bucket) across
    /// generations even when northd gives the flow a new rate or UUID.
    pub fn meter_key(&self, flow: u32) -> u32 {
        let Some(f) = self.flows.get(flow as usize) else {
            return 0;
        };
        let dp = self.datapaths.get(f.datapath as usize).map_or(0, |d| d.key);
        let mut h: u32 = 0x811c_9dc5;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u32::from(*b);
                h = h.wrapping_mul(0x0100_0193);
            }
        };
        eat(&dp.to_be_bytes());
        eat(&[f.pipeline, f.table]);
        eat(&f.priority.to_be_bytes());
        eat(self.text(f.match_text).as_bytes());
        h
    }

    /// Every `set_meter(rate[, burst])` of the program, by
    /// [`Program::meter_key`] (the first flow of a key wins; a zero rate,
    /// which no policer can have, is left out).
    pub fn meters(&self) -> Vec<(MeterKey, MeterConfig)> {
        let mut out: Vec<(MeterKey, MeterConfig)> = Vec::new();
        for (i, f) in self.flows.iter().enumerate() {
            let Some(code) = self.code.get(f.actions.clone()) else {
                continue;
            };
            for ins in code.iter().filter(|ins| ins.op == op::SET_METER) {
                let imm = ins.imm_value();
                let (rate, burst) = (imm as u64, (imm >> 64) as u64);
                let key = MeterKey(self.meter_key(i as u32));
                if rate == 0 || out.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                out.push((key, MeterConfig::kbps(rate, burst)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` appended to `blob`.
    fn text(blob: &mut Vec<u8>, text: &str) -> StrRef {
        let r = StrRef {
            offset: blob.len() as u32,
            len: text.len() as u32,
        };
        blob.extend_from_slice(text.as_bytes());
        r
    }

    fn flow(blob: &mut Vec<u8>, table: u8, match_text: &str, lflow: u32, at: usize) -> Flow {
        Flow {
            datapath: 0,
            pipeline: 0,
            table,
            priority: 100,
            actions: at..at + 2,
            stage: text(blob, "ls_in_qos_meter"),
            match_text: text(blob, match_text),
            actions_text: text(blob, ""),
            lflow,
        }
    }

    fn meter(rate: u64, burst: u64) -> OvnInstruction {
        let mut m = OvnInstruction::new(op::SET_METER);
        m.imm = (u128::from(rate) | (u128::from(burst) << 64)).to_le_bytes();
        m
    }

    fn program(rate: u64, lflow: u32) -> Program {
        let mut p = Program::default();
        p.datapaths.push(Datapath {
            key: 7,
            is_router: false,
            name: "sw0".into(),
            tables: [Vec::new(), Vec::new()],
            skips: [Vec::new(), Vec::new()],
            dnat_zone: 0,
            snat_zone: 0,
        });
        p.code = vec![
            meter(rate, 0),
            OvnInstruction::new(op::NEXT),
            meter(500, 50),
            OvnInstruction::new(op::NEXT),
        ];
        let mut blob = Vec::new();
        p.flows = vec![
            flow(&mut blob, 8, "inport == \"p1\"", lflow, 0),
            flow(&mut blob, 8, "inport == \"p2\"", 0x2222, 2),
        ];
        p.texts = blob.into();
        assert_eq!(p.text(p.flows[1].match_text), "inport == \"p2\"");
        assert_eq!(
            p.text(StrRef {
                offset: 9999,
                len: 1
            }),
            "<invalid>"
        );
        p
    }

    #[test]
    fn meter_keys_survive_a_rate_and_uuid_change_and_tell_rules_apart() {
        let a = program(1000, 0x1111);
        let b = program(2000, 0x9999);
        let (ma, mb) = (a.meters(), b.meters());
        assert_eq!(ma.len(), 2);
        assert_eq!(ma[0].0, mb[0].0, "same rule, same key");
        assert_ne!(ma[0].0, ma[1].0, "different matches, different keys");
        assert_eq!(ma[0].1, MeterConfig::kbps(1000, 0));
        assert_eq!(mb[0].1, MeterConfig::kbps(2000, 0));
        assert_eq!(ma[1].1, MeterConfig::kbps(500, 50));
        assert_eq!(a.meter_key(0), ma[0].0 .0);
        assert_eq!(a.meter_key(99), 0, "no such flow");
    }
}
