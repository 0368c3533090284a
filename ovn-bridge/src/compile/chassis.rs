//! Compilation of the Southbound `Chassis` and `Encap` rows into the
//! remote-chassis section (`fastpath_tables::chassis`): for every other
//! chassis, its Geneve tunnel address, UDP port and checksum wish.
//!
//! Owns the reading of those two tables only. It must not touch the logical
//! flow compilation nor register this node's own chassis (the node role
//! does). A row it cannot use (no Geneve encap, an address that does not
//! parse, a bad `dst_port`) is skipped and reported in
//! [`RemoteChassisSet::skipped`], never a reason to fail the whole slot.

use std::collections::HashMap;
use std::net::IpAddr;

use fastpath_tables::chassis::{add_remote_chassis, Chassis};
use fastpath_tables::{BuildError, SlotBuilder};
use ovsdb::{sb, Database, Uuid};

/// The Geneve UDP port when `Encap.options:dst_port` is absent.
pub const DEFAULT_GENEVE_PORT: u16 = 6081;

/// Why compiling the remote chassis failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ChassisCompileError {
    /// A Southbound table could not be read as typed rows.
    #[error("southbound table: {0}")]
    Rows(#[from] ovsdb::RowError),
    /// The section could not be added to the slot.
    #[error("building the remote-chassis section: {0}")]
    Build(#[from] BuildError),
}

/// Why one chassis was left out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChassisSkip {
    /// The chassis has no `Encap` row of type `geneve`.
    #[error("chassis {chassis}: no geneve encap")]
    NoGeneveEncap {
        /// `Chassis.name`.
        chassis: String,
    },
    /// `Encap.ip` is not an IP address.
    #[error("chassis {chassis}: encap ip {ip:?} is not an address")]
    BadIp {
        /// `Chassis.name`.
        chassis: String,
        /// The value found.
        ip: String,
    },
    /// `Encap.options:dst_port` is not a port number.
    #[error("chassis {chassis}: encap dst_port {value:?} is not a port")]
    BadPort {
        /// `Chassis.name`.
        chassis: String,
        /// The value found.
        value: String,
    },
    /// Two chassis rows share a name; the later one (by row uuid) is left out.
    #[error("chassis {chassis}: name appears twice")]
    DuplicateName {
        /// `Chassis.name`.
        chassis: String,
    },
}

/// The remote chassis of a Southbound snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteChassisSet {
    /// Usable chassis, ascending by name.
    pub chassis: Vec<Chassis>,
    /// Rows left out, and why.
    pub skipped: Vec<ChassisSkip>,
}

/// Picks the Geneve endpoint of each chassis other than `local`. Among
/// several Geneve encaps of one chassis (several `ovn-encap-ip`s) the lowest
/// address is taken, so the choice is stable across compilations.
pub fn remote_chassis(
    chassis: &[sb::Chassis],
    encaps: &[sb::Encap],
    local: &str,
) -> RemoteChassisSet {
    let by_uuid: HashMap<Uuid, &sb::Encap> = encaps.iter().map(|e| (e.uuid, e)).collect();
    let mut rows: Vec<&sb::Chassis> = chassis.iter().filter(|c| c.name != local).collect();
    rows.sort_by(|a, b| (&a.name, a.uuid.as_bytes()).cmp(&(&b.name, b.uuid.as_bytes())));
    let mut set = RemoteChassisSet::default();
    let mut previous: Option<&str> = None;
    for c in rows {
        if previous == Some(c.name.as_str()) {
            set.skipped.push(ChassisSkip::DuplicateName {
                chassis: c.name.clone(),
            });
            continue;
        }
        previous = Some(c.name.as_str());
        match endpoint(c, &by_uuid) {
            Ok(entry) => set.chassis.push(entry),
            Err(skip) => set.skipped.push(skip),
        }
    }
    set
}

fn endpoint(c: &sb::Chassis, encaps: &HashMap<Uuid, &sb::Encap>) -> Result<Chassis, ChassisSkip> {
    let mut geneve: Vec<(IpAddr, &sb::Encap)> = Vec::new();
    let mut bad_ip = None;
    for e in c.encaps.iter().filter_map(|u| encaps.get(u)) {
        if e.r#type != "geneve" {
            continue;
        }
        match e.ip.parse::<IpAddr>() {
            Ok(ip) => geneve.push((ip, e)),
            Err(_) => bad_ip = Some(e.ip.clone()),
        }
    }
    geneve.sort_by_key(|(ip, _)| *ip);
    let Some((ip, encap)) = geneve.first() else {
        return Err(match bad_ip {
            Some(ip) => ChassisSkip::BadIp {
                chassis: c.name.clone(),
                ip,
            },
            None => ChassisSkip::NoGeneveEncap {
                chassis: c.name.clone(),
            },
        });
    };
    let dst_port = match encap.options.get("dst_port") {
        None => DEFAULT_GENEVE_PORT,
        Some(v) => {
            v.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| ChassisSkip::BadPort {
                    chassis: c.name.clone(),
                    value: v.clone(),
                })?
        }
    };
    Ok(Chassis {
        name: c.name.clone(),
        ip: *ip,
        dst_port,
        csum: encap.options.get("csum").is_some_and(|v| v == "true"),
    })
}

/// Reads `Chassis` and `Encap` from a Southbound snapshot and adds the
/// remote-chassis section to `builder`; returns what went in and what was
/// skipped (each skip is logged once here).
pub fn compile_remote_chassis(
    db: &Database,
    local: &str,
    builder: &mut SlotBuilder,
) -> Result<RemoteChassisSet, ChassisCompileError> {
    let chassis: Vec<sb::Chassis> = db.rows()?;
    let encaps: Vec<sb::Encap> = db.rows()?;
    let set = remote_chassis(&chassis, &encaps, local);
    for skip in &set.skipped {
        log::warn!("remote chassis left out: {skip}");
    }
    add_remote_chassis(builder, &set.chassis)?;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn uuid(n: u8) -> Uuid {
        let mut b = [0u8; 16];
        b[15] = n;
        Uuid::from_bytes(b)
    }

    fn encap(n: u8, name: &str, kind: &str, ip: &str, options: &[(&str, &str)]) -> sb::Encap {
        sb::Encap {
            uuid: uuid(n),
            chassis_name: name.into(),
            ip: ip.into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            r#type: kind.into(),
        }
    }

    fn chassis(n: u8, name: &str, encaps: &[u8]) -> sb::Chassis {
        sb::Chassis {
            uuid: uuid(n),
            name: name.into(),
            encaps: encaps.iter().map(|e| uuid(*e)).collect::<BTreeSet<_>>(),
            ..Default::default()
        }
    }

    #[test]
    fn rows_to_entries() {
        let encaps = [
            encap(10, "hv1", "geneve", "192.0.2.1", &[]),
            encap(11, "hv2", "geneve", "192.0.2.2", &[("csum", "true")]),
            encap(12, "hv3", "stt", "192.0.2.3", &[]),
            encap(13, "hv4", "geneve", "2001:db8::4", &[("dst_port", "7081")]),
            encap(14, "hv4", "geneve", "2001:db8::3", &[("csum", "false")]),
            encap(15, "hv5", "geneve", "not-an-ip", &[]),
            encap(16, "hv6", "geneve", "192.0.2.6", &[("dst_port", "70000")]),
        ];
        let rows = [
            chassis(1, "hv1", &[10]),
            chassis(2, "hv2", &[11]),
            chassis(3, "hv3", &[12]),
            chassis(4, "hv4", &[13, 14]),
            chassis(5, "hv5", &[15]),
            chassis(6, "hv6", &[16]),
            chassis(7, "hv2", &[11]),
            chassis(8, "hv7", &[99]),
        ];
        let set = remote_chassis(&rows, &encaps, "hv1");
        assert_eq!(
            set.chassis,
            vec![
                Chassis {
                    name: "hv2".into(),
                    ip: "192.0.2.2".parse().unwrap(),
                    dst_port: 6081,
                    csum: true,
                },
                Chassis {
                    name: "hv4".into(),
                    ip: "2001:db8::3".parse().unwrap(),
                    dst_port: 6081,
                    csum: false,
                },
            ]
        );
        assert_eq!(
            set.skipped,
            vec![
                ChassisSkip::DuplicateName {
                    chassis: "hv2".into()
                },
                ChassisSkip::NoGeneveEncap {
                    chassis: "hv3".into()
                },
                ChassisSkip::BadIp {
                    chassis: "hv5".into(),
                    ip: "not-an-ip".into()
                },
                ChassisSkip::BadPort {
                    chassis: "hv6".into(),
                    value: "70000".into()
                },
                ChassisSkip::NoGeneveEncap {
                    chassis: "hv7".into()
                },
            ]
        );
    }

    #[test]
    fn real_southbound_rows() {
        use ovsdb::testing::{sb_schema, server_rows, OvsdbServer};
        use ovsdb::{Row, TableRow};

        let sb_server = OvsdbServer::start_sb().expect("start SB ovsdb-server");
        for args in [
            &["chassis-add", "hv1", "geneve", "192.0.2.1"][..],
            &["chassis-add", "hv2", "geneve", "192.0.2.2"][..],
            &["chassis-add", "hv3", "geneve", "2001:db8::3"][..],
        ] {
            sb_server.sbctl(args).expect("ovn-sbctl chassis-add");
        }
        let encap_uuid = sb_server
            .sbctl(&[
                "--bare",
                "--columns=_uuid",
                "find",
                "Encap",
                "ip=\"192.0.2.2\"",
            ])
            .expect("find the Encap row");
        sb_server
            .sbctl(&["set", "Encap", encap_uuid.trim(), "options:csum=true"])
            .expect("set Encap options");
        let schema_text = std::fs::read_to_string(sb_schema()).expect("SB schema");
        let schema = ovsdb::schema::DatabaseSchema::parse(
            &serde_json::from_str(&schema_text).expect("SB schema JSON"),
        )
        .expect("SB schema parses");
        let typed = |table: &str| -> Vec<Row> {
            let ts = schema.tables.get(table).expect("table in schema");
            server_rows(&sb_server.remote, "OVN_Southbound", table)
                .expect("select rows")
                .iter()
                .map(|r| Row::from_json_select(table, ts, r).expect("row"))
                .collect()
        };
        let chassis: Vec<sb::Chassis> = typed("Chassis")
            .iter()
            .map(|r| sb::Chassis::from_row(r).expect("Chassis row"))
            .collect();
        let encaps: Vec<sb::Encap> = typed("Encap")
            .iter()
            .map(|r| sb::Encap::from_row(r).expect("Encap row"))
            .collect();
        assert_eq!(chassis.len(), 3);
        let set = remote_chassis(&chassis, &encaps, "hv1");
        assert!(set.skipped.is_empty(), "{:?}", set.skipped);
        let names: Vec<&str> = set.chassis.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["hv2", "hv3"]);
        assert_eq!(set.chassis[0].ip, "192.0.2.2".parse::<IpAddr>().unwrap());
        assert!(set.chassis[0].csum);
        assert_eq!(set.chassis[1].ip, "2001:db8::3".parse::<IpAddr>().unwrap());
        assert_eq!(set.chassis[1].dst_port, DEFAULT_GENEVE_PORT);

        let mut builder = SlotBuilder::new();
        add_remote_chassis(&mut builder, &set.chassis).expect("add section");
        assert!(builder.image_len() > 0);
    }
}
