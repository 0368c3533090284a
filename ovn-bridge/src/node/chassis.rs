//! The node's OVN chassis: the `Chassis`, `Encap` and `Chassis_Private`
//! rows ovn-controller writes for a hypervisor, with the `other_config`
//! keys of ovn-controller 23.03 so that ovn-northd generates the flows of
//! that version (`ct_lb_mark` rather than `ct_lb`, `ct_commit_nat` for
//! related traffic, MAC_Binding timestamps).
//!
//! Owns the transactions that create, refresh and delete those rows. It
//! must not write any other Southbound table.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ovsdb::{sb, Condition, Database, Datum, Operation, TableRow, Uuid};

/// Feature flags ovn-controller 23.03 announces (include/ovn/features.h of
/// that release); ovn-northd uses a feature only when every chassis has it.
pub const FEATURES: &[&str] = &[
    // Port_Binding.up is set by the chassis once the port is ready.
    "port-up-notif",
    // `ct_lb_mark` / `ct_mark.natted` instead of `ct_lb` / `ct_label` bits.
    "ct-no-masked-label",
    // MAC_Binding.timestamp is maintained, so MAC_Binding aging works.
    "mac-binding-timestamp",
    // `ct_commit_nat` for related traffic of load-balanced connections.
    "ovn-ct-lb-related",
];

/// What the chassis rows say about this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChassisConfig {
    /// `Chassis.name` (the system-id).
    pub name: String,
    /// `Chassis.hostname`.
    pub hostname: String,
    /// Tunnel endpoint address (Encap.ip).
    pub encap_ip: IpAddr,
    /// `ovn-bridge-mappings`: `physnet:bridge,...` (empty when none).
    pub bridge_mappings: String,
    /// `ovn-cms-options` (e.g. `enable-chassis-as-gw`).
    pub cms_options: String,
}

impl ChassisConfig {
    /// The `other_config` of the Chassis row, as ovn-controller 23.03 fills it.
    pub fn other_config(&self) -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> = [
            ("ovn-bridge-mappings", self.bridge_mappings.as_str()),
            // A userspace datapath, like OVS-DPDK's.
            ("datapath-type", "netdev"),
            (
                "iface-types",
                "dpdk,dpdkvhostuser,dpdkvhostuserclient,geneve,tap",
            ),
            ("ovn-chassis-mac-mappings", ""),
            ("ovn-cms-options", self.cms_options.as_str()),
            ("ovn-monitor-all", "false"),
            ("ovn-enable-lflow-cache", "true"),
            ("ovn-limit-lflow-cache", ""),
            ("ovn-memlimit-lflow-cache-kb", ""),
            ("ovn-trim-limit-lflow-cache", ""),
            ("ovn-trim-wmark-perc-lflow-cache", ""),
            ("ovn-trim-timeout-ms", ""),
            ("is-interconn", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for f in FEATURES {
            m.insert((*f).to_string(), "true".into());
        }
        m
    }

    fn encap_options() -> BTreeMap<String, String> {
        [("csum".to_string(), "true".to_string())].into()
    }
}

/// The transaction that makes the Southbound rows of this chassis what
/// `cfg` says, given the current snapshot; empty when they already are (so a
/// restart writes nothing).
pub fn register_ops(db: &Database, cfg: &ChassisConfig) -> Result<Vec<Operation>, ovsdb::RowError> {
    let chassis: Vec<sb::Chassis> = rows(db)?;
    let encaps: Vec<sb::Encap> = rows(db)?;
    let privates: Vec<sb::ChassisPrivate> = rows(db)?;
    let other_config = cfg.other_config();
    let encap_ip = cfg.encap_ip.to_string();
    let mut ops = Vec::new();

    let existing = chassis.iter().find(|c| c.name == cfg.name);
    let chassis_ref = match existing {
        None => {
            let encap = sb::Encap {
                r#type: "geneve".into(),
                ip: encap_ip.clone(),
                options: ChassisConfig::encap_options(),
                chassis_name: cfg.name.clone(),
                ..Default::default()
            };
            ops.push(encap.insert_op(Some("encap")));
            let mut row = sb::Chassis {
                name: cfg.name.clone(),
                hostname: cfg.hostname.clone(),
                other_config: other_config.clone(),
                ..Default::default()
            }
            .to_columns();
            row.insert(
                "encaps".into(),
                Datum::set([ovsdb::Atom::NamedUuid("encap".into())]),
            );
            ops.push(Operation::insert(sb::Chassis::TABLE, row, Some("chassis")));
            Datum::named_uuid("chassis")
        }
        Some(c) => {
            let ours: Vec<&sb::Encap> = encaps
                .iter()
                .filter(|e| c.encaps.contains(&e.uuid))
                .collect();
            let encap_ok = ours.len() == 1
                && ours[0].r#type == "geneve"
                && ours[0].ip == encap_ip
                && ours[0].options == ChassisConfig::encap_options()
                && ours[0].chassis_name == cfg.name;
            let mut row = ovsdb::ops::Columns::new();
            if !encap_ok {
                let encap = sb::Encap {
                    r#type: "geneve".into(),
                    ip: encap_ip.clone(),
                    options: ChassisConfig::encap_options(),
                    chassis_name: cfg.name.clone(),
                    ..Default::default()
                };
                ops.push(encap.insert_op(Some("encap")));
                row.insert(
                    "encaps".into(),
                    Datum::set([ovsdb::Atom::NamedUuid("encap".into())]),
                );
            }
            if c.other_config != other_config {
                row.insert("other_config".into(), Datum::map(other_config.clone()));
            }
            if c.hostname != cfg.hostname {
                row.insert("hostname".into(), Datum::atom(cfg.hostname.clone()));
            }
            if !row.is_empty() {
                ops.push(Operation::Update {
                    table: sb::Chassis::TABLE.into(),
                    conditions: vec![Condition::uuid(c.uuid)],
                    row,
                });
            }
            Datum::uuid(c.uuid)
        }
    };

    match privates.iter().find(|p| p.name == cfg.name) {
        Some(p) if existing.is_some_and(|c| p.chassis == Some(c.uuid)) => {}
        Some(p) => {
            let mut row = ovsdb::ops::Columns::new();
            row.insert("chassis".into(), chassis_ref);
            ops.push(Operation::Update {
                table: sb::ChassisPrivate::TABLE.into(),
                conditions: vec![Condition::uuid(p.uuid)],
                row,
            });
        }
        None => {
            let mut row = sb::ChassisPrivate {
                name: cfg.name.clone(),
                ..Default::default()
            }
            .to_columns();
            row.insert("chassis".into(), chassis_ref);
            ops.push(Operation::insert(sb::ChassisPrivate::TABLE, row, None));
        }
    }
    Ok(ops)
}

/// The transaction that removes this chassis (Encap rows go with it, being
/// referenced only by the Chassis row; Port_Binding.chassis references are
/// weak and clear themselves).
pub fn unregister_ops(name: &str) -> Vec<Operation> {
    vec![
        Operation::Delete {
            table: sb::Chassis::TABLE.into(),
            conditions: vec![Condition::eq("name", name)],
        },
        Operation::Delete {
            table: sb::ChassisPrivate::TABLE.into(),
            conditions: vec![Condition::eq("name", name)],
        },
    ]
}

/// The uuid of chassis `name` in the snapshot.
pub fn chassis_uuid(db: &Database, name: &str) -> Option<Uuid> {
    rows::<sb::Chassis>(db)
        .ok()?
        .into_iter()
        .find(|c| c.name == name)
        .map(|c| c.uuid)
}

/// Names of the feature flags a chassis row lacks (for diagnostics).
pub fn missing_features(chassis: &sb::Chassis) -> BTreeSet<&'static str> {
    FEATURES
        .iter()
        .copied()
        .filter(|f| chassis.other_config.get(*f).map(String::as_str) != Some("true"))
        .collect()
}

fn rows<T: TableRow>(db: &Database) -> Result<Vec<T>, ovsdb::RowError> {
    if db.table(T::TABLE).is_none() {
        return Ok(Vec::new());
    }
    db.rows::<T>()
}
