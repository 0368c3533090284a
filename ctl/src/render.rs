//! Text tables for the commands' default output.

use fastpath_api::{LcoreFlows, LcoreInfo, LearnedBinding, PortInfo, Stats, TablesInfo};
use serde::Serialize;
use std::fmt::Write;

/// Formats rows as an aligned table with a header line.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < width.len() {
                width[i] = width[i].max(c.len());
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            // Left-align the first column, right-align the numbers.
            if i == 0 {
                let _ = write!(s, "{:<w$}", c, w = width[i]);
            } else {
                let _ = write!(s, "{:>w$}", c, w = width[i]);
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    for r in rows {
        line(&mut out, &mut r.iter().map(|s| s.as_str()));
    }
    out
}

/// `ports`.
pub fn ports(ports: &[PortInfo], xstats: bool) -> String {
    let rows: Vec<Vec<String>> = ports
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.port_id.to_string(),
                if p.runtime {
                    "run-time".into()
                } else {
                    "config".into()
                },
                p.driver.clone(),
                if p.link_up {
                    "up".into()
                } else {
                    "down".into()
                },
                p.mac.clone(),
                p.mtu.to_string(),
                format!("{}/{}", p.rx_queues, p.tx_queues),
                p.counters.rx_packets.to_string(),
                p.counters.tx_packets.to_string(),
                p.counters.tx_dropped.to_string(),
                p.counters.rx_missed.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "PORT", "ID", "ORIGIN", "DRIVER", "LINK", "MAC", "MTU", "RXQ/TXQ", "RX-PKTS",
            "TX-PKTS", "TX-DROP", "RX-MISS",
        ],
        &rows,
    );
    if xstats {
        for p in ports {
            let _ = writeln!(out, "\n{} xstats:", p.name);
            for (k, v) in &p.xstats {
                let _ = writeln!(out, "  {k:<40} {v}");
            }
        }
    }
    out
}

/// `tables`.
pub fn tables(t: &TablesInfo) -> String {
    let Some(path) = &t.path else {
        return "the fastpath runs without tables ([tables] path is not set)\n".into();
    };
    let mut out = format!(
        "file {path} ({})\n",
        if t.open { "open" } else { "not there yet" }
    );
    let _ = writeln!(
        out,
        "generation {} in use (writer's latest {}), published {:.3}s ago",
        t.generation, t.published_generation, t.age_secs
    );
    let rows: Vec<Vec<String>> = t
        .sections
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.kind.to_string(),
                s.count.to_string(),
                s.bytes.to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out += &table(&["SECTION", "KIND", "COUNT", "BYTES"], &rows);
    let rows: Vec<Vec<String>> = t
        .lcores
        .iter()
        .map(|(l, g)| vec![l.to_string(), g.to_string()])
        .collect();
    out.push('\n');
    out += &table(&["LCORE", "GENERATION"], &rows);
    let rows: Vec<Vec<String>> = t
        .readers
        .iter()
        .map(|r| {
            vec![
                r.index.to_string(),
                r.role.clone(),
                r.pid.to_string(),
                r.generation.to_string(),
                r.heartbeat_age_ms.to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out += &table(
        &["READER", "ROLE", "PID", "GENERATION", "HEARTBEAT-MS"],
        &rows,
    );
    if !t.refused.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = t
            .refused
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect();
        out += &table(&["REFUSED-SLOT-REASON", "COUNT"], &rows);
    }
    out
}

/// `lcores`.
pub fn lcores(l: &[LcoreInfo]) -> String {
    let rows: Vec<Vec<String>> = l
        .iter()
        .map(|c| {
            vec![
                c.lcore_id.to_string(),
                c.queues.join(","),
                c.packets.to_string(),
                format!("{:.1}", c.busy_percent),
                format!("{:.1}", c.cycles_per_packet),
                c.busy_cycles.to_string(),
                c.idle_cycles.to_string(),
                c.cache_hits.to_string(),
                c.cache_misses.to_string(),
                c.cache_megaflow_hits.to_string(),
                c.cache_megaflow_diverged.to_string(),
                c.cache_evictions.to_string(),
                c.cache_revalidations.to_string(),
                c.cache_entries.to_string(),
                c.preemptions.map_or("-".into(), |n| n.to_string()),
            ]
        })
        .collect();
    table(
        &[
            "LCORE",
            "RX-QUEUES",
            "PACKETS",
            "BUSY%",
            "CYCLES/PKT",
            "BUSY-CYCLES",
            "IDLE-CYCLES",
            "HITS",
            "MISSES",
            "MEGAFLOW",
            "DIVERGED",
            "EVICTED",
            "REVALIDATED",
            "ENTRIES",
            "PREEMPTED",
        ],
        &rows,
    )
}

/// `lcores --stages`: per lcore, busy cycles per packet split by stage
/// of the poll, with each stage's share.
pub fn lcore_stages(l: &[LcoreInfo]) -> String {
    let mut rows = Vec::new();
    for c in l {
        let sum: f64 = c.stages.iter().map(|s| s.cycles_per_packet).sum();
        for s in &c.stages {
            rows.push(vec![
                c.lcore_id.to_string(),
                s.stage.clone(),
                format!("{:.1}", s.cycles_per_packet),
                if sum > 0.0 {
                    format!("{:.0}", 100.0 * s.cycles_per_packet / sum)
                } else {
                    "-".into()
                },
            ]);
        }
        rows.push(vec![
            c.lcore_id.to_string(),
            format!(
                "sum ({} packets, {:.1} per poll)",
                c.stage_packets, c.packets_per_poll
            ),
            format!("{sum:.1}"),
            "100".into(),
        ]);
    }
    let mut out = table(&["LCORE", "STAGE", "CYCLES/PKT", "SHARE%"], &rows);
    out.push_str(
        "(timed on one busy poll in sixteen; rx: the rx burst; parse: flow keys and hashes; \
         prefetch: flow-cache slots; decide: cache or pipeline, rewrite, queueing; \
         tx: the tx bursts)\n",
    );
    out
}

/// `flows dump`: per lcore, one block per entry.
pub fn flows(l: &[LcoreFlows]) -> String {
    let mut out = String::new();
    for c in l {
        let _ = writeln!(
            out,
            "lcore {}: {} of {} entries, generation {}",
            c.lcore_id,
            c.flows.len(),
            c.capacity,
            c.generation
        );
        for f in &c.flows {
            let stale = if f.generation == c.generation {
                ""
            } else {
                " (stale)"
            };
            let _ = writeln!(
                out,
                "  hits={} age={:.1}s gen={}{stale} {}
    actions: {}",
                f.hits, f.age_secs, f.generation, f.key, f.actions
            );
        }
    }
    out
}

/// `tunnel`.
pub fn tunnel(t: &fastpath_api::TunnelInfo) -> String {
    if !t.configured {
        return "no tunnel configured ([tunnel] in the fastpath configuration)\n".into();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "uplink {} ({}), local {}, gateway {}, MTU {} (pods {})",
        t.uplink,
        t.mac,
        t.local_ip,
        t.gateway.as_deref().unwrap_or("none"),
        t.mtu,
        t.pod_mtu
    );
    let rows: Vec<Vec<String>> = t
        .chassis
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.ip.clone(),
                c.port.to_string(),
                c.ports.to_string(),
                c.next_hop.clone(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &["CHASSIS", "IP", "PORT", "LPORTS", "NEXT HOP"],
        &rows,
    ));
    let rows: Vec<Vec<String>> = t
        .neighbors
        .iter()
        .map(|(ip, mac)| vec![ip.clone(), mac.clone()])
        .collect();
    out.push('\n');
    out.push_str(&table(&["NEIGHBOR", "MAC"], &rows));
    out
}

/// `learned`.
pub fn learned(l: &[LearnedBinding]) -> String {
    let rows: Vec<Vec<String>> = l
        .iter()
        .map(|b| {
            vec![
                b.datapath.clone(),
                b.port.clone(),
                // An FDB entry (put_fdb) has no IP.
                if b.ip.is_empty() {
                    "(fdb)".into()
                } else {
                    b.ip.clone()
                },
                b.mac.clone(),
            ]
        })
        .collect();
    table(&["DATAPATH", "PORT", "IP", "MAC"], &rows)
}

/// `conntrack list`.
pub fn conntrack(l: &fastpath_api::ConntrackList) -> String {
    let rows: Vec<Vec<String>> = l
        .entries
        .iter()
        .map(|e| {
            vec![
                e.zone.to_string(),
                e.original.clone(),
                e.reply.clone(),
                e.state.clone(),
                e.status.join(","),
                format!("{:#x}", e.mark),
                format!("{}/{}", e.packets[0], e.packets[1]),
                format!("{:.0}", e.expires_in_secs),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ZONE", "ORIGINAL", "REPLY", "STATE", "STATUS", "MARK", "PACKETS", "EXPIRES",
        ],
        &rows,
    );
    if l.truncated {
        out.push_str("(more connections: raise --limit or filter)\n");
    }
    out
}

/// `stats`.
pub fn stats(s: &Stats) -> String {
    let rows: Vec<Vec<String>> = s
        .ports
        .iter()
        .map(|(n, c)| {
            vec![
                n.clone(),
                c.rx_packets.to_string(),
                c.rx_bytes.to_string(),
                c.tx_packets.to_string(),
                c.tx_bytes.to_string(),
                c.tx_dropped.to_string(),
                c.rx_missed.to_string(),
            ]
        })
        .collect();
    let mut out = format!(
        "uptime {:.1}s, TSC {} MHz\n\n",
        s.uptime_secs,
        s.tsc_hz / 1_000_000
    );
    out += &table(
        &[
            "PORT", "RX-PKTS", "RX-BYTES", "TX-PKTS", "TX-BYTES", "TX-DROP", "RX-MISS",
        ],
        &rows,
    );
    out.push('\n');
    out += &lcores(&s.lcores);
    out.push('\n');
    if s.drops.is_empty() {
        out += "drops: none\n";
    } else {
        let rows: Vec<Vec<String>> = s
            .drops
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect();
        out += &table(&["DROP-REASON", "PACKETS"], &rows);
    }
    out
}

/// Rates between two `stats` answers.
#[derive(Debug, Serialize, PartialEq)]
pub struct Rates {
    /// Seconds between the samples.
    pub interval_secs: f64,
    /// Per port: name, rx pps, rx bit/s, tx pps, tx bit/s, tx drops/s.
    pub ports: Vec<PortRate>,
    /// Per lcore: id, busy %, cycles per packet over the interval.
    pub lcores: Vec<LcoreRate>,
}

/// Rates of one port.
#[derive(Debug, Serialize, PartialEq)]
pub struct PortRate {
    /// Port name.
    pub name: String,
    /// Received packets per second.
    pub rx_pps: f64,
    /// Received bits per second.
    pub rx_bps: f64,
    /// Transmitted packets per second.
    pub tx_pps: f64,
    /// Transmitted bits per second.
    pub tx_bps: f64,
    /// Transmit drops per second.
    pub tx_drop_pps: f64,
}

/// Load of one lcore over the interval.
#[derive(Debug, Serialize, PartialEq)]
pub struct LcoreRate {
    /// Lcore id.
    pub lcore_id: u32,
    /// Packets per second.
    pub pps: f64,
    /// Busy percentage.
    pub busy_percent: f64,
    /// Busy cycles per packet.
    pub cycles_per_packet: f64,
}

/// Computes per-second rates from two samples `dt` seconds apart.
pub fn rates(prev: &Stats, cur: &Stats, dt: f64) -> Rates {
    let dt = if dt <= 0.0 { 1.0 } else { dt };
    let ports = cur
        .ports
        .iter()
        .map(|(n, c)| {
            let p = prev.ports.get(n).cloned().unwrap_or_default();
            PortRate {
                name: n.clone(),
                rx_pps: c.rx_packets.saturating_sub(p.rx_packets) as f64 / dt,
                rx_bps: 8.0 * c.rx_bytes.saturating_sub(p.rx_bytes) as f64 / dt,
                tx_pps: c.tx_packets.saturating_sub(p.tx_packets) as f64 / dt,
                tx_bps: 8.0 * c.tx_bytes.saturating_sub(p.tx_bytes) as f64 / dt,
                tx_drop_pps: c.tx_dropped.saturating_sub(p.tx_dropped) as f64 / dt,
            }
        })
        .collect();
    let lcores = cur
        .lcores
        .iter()
        .map(|c| {
            let p = prev
                .lcores
                .iter()
                .find(|p| p.lcore_id == c.lcore_id)
                .cloned()
                .unwrap_or_default();
            let pk = c.packets.saturating_sub(p.packets);
            let busy = c.busy_cycles.saturating_sub(p.busy_cycles);
            let idle = c.idle_cycles.saturating_sub(p.idle_cycles);
            LcoreRate {
                lcore_id: c.lcore_id,
                pps: pk as f64 / dt,
                busy_percent: if busy + idle == 0 {
                    0.0
                } else {
                    100.0 * busy as f64 / (busy + idle) as f64
                },
                cycles_per_packet: if pk == 0 {
                    0.0
                } else {
                    busy as f64 / pk as f64
                },
            }
        })
        .collect();
    Rates {
        interval_secs: dt,
        ports,
        lcores,
    }
}

fn human(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// `stats --watch` output for one interval.
pub fn rates_table(r: &Rates) -> String {
    let rows: Vec<Vec<String>> = r
        .ports
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                human(p.rx_pps),
                format!("{}b", human(p.rx_bps)),
                human(p.tx_pps),
                format!("{}b", human(p.tx_bps)),
                human(p.tx_drop_pps),
            ]
        })
        .collect();
    let mut out = table(
        &["PORT", "RX-PPS", "RX-BPS", "TX-PPS", "TX-BPS", "DROP/S"],
        &rows,
    );
    let rows: Vec<Vec<String>> = r
        .lcores
        .iter()
        .map(|l| {
            vec![
                l.lcore_id.to_string(),
                human(l.pps),
                format!("{:.1}", l.busy_percent),
                format!("{:.1}", l.cycles_per_packet),
            ]
        })
        .collect();
    out += &table(&["LCORE", "PPS", "BUSY%", "CYCLES/PKT"], &rows);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastpath_api::PortCounters;

    #[test]
    fn learned_fdb_entries_are_marked() {
        let l = [
            LearnedBinding {
                datapath: "ls0".into(),
                port: "pod1.ns1".into(),
                ip: "10.16.0.9".into(),
                mac: "0a:00:00:00:00:09".into(),
            },
            LearnedBinding {
                datapath: "ls0".into(),
                port: "vm1.ns1".into(),
                ip: String::new(),
                mac: "0a:00:00:00:07:01".into(),
            },
        ];
        let text = learned(&l);
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 3, "{text}");
        assert!(rows[1].contains("10.16.0.9"), "{text}");
        assert!(
            rows[2].contains("vm1.ns1") && rows[2].contains("(fdb)"),
            "{text}"
        );
    }

    #[test]
    fn conntrack_rows_show_both_directions_and_truncation() {
        let l = fastpath_api::ConntrackList {
            entries: vec![fastpath_api::ConntrackEntry {
                zone: 3,
                original: "tcp 10.0.0.11:40000 -> 10.0.0.100:80".into(),
                reply: "tcp 10.0.0.12:8080 -> 10.0.0.11:40000".into(),
                state: "ESTABLISHED".into(),
                status: vec!["est".into(), "dnat".into()],
                mark: 2,
                packets: [5, 4],
                expires_in_secs: 86399.0,
                ..Default::default()
            }],
            truncated: true,
        };
        let t = conntrack(&l);
        assert!(t.contains("10.0.0.100:80"));
        assert!(t.contains("10.0.0.12:8080"));
        assert!(t.contains("est,dnat"));
        assert!(t.contains("0x2"));
        assert!(t.contains("5/4"));
        assert!(t.contains("--limit"));
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["long-name".into(), "1".into()],
                vec!["x".into(), "12345".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A             BB");
        assert_eq!(lines[1], "long-name      1");
        assert_eq!(lines[2], "x          12345");
    }

    #[test]
    fn rates_are_per_second() {
        let mut a = Stats::default();
        a.ports.insert(
            "p".into(),
            PortCounters {
                rx_packets: 100,
                rx_bytes: 6400,
                ..Default::default()
            },
        );
        a.lcores.push(LcoreInfo {
            lcore_id: 1,
            packets: 100,
            busy_cycles: 1000,
            idle_cycles: 1000,
            ..Default::default()
        });
        let mut b = a.clone();
        b.ports.get_mut("p").unwrap().rx_packets = 300;
        b.ports.get_mut("p").unwrap().rx_bytes = 6400 + 12800;
        b.lcores[0].packets = 300;
        b.lcores[0].busy_cycles = 1000 + 20000;
        b.lcores[0].idle_cycles = 1000 + 20000;
        let r = rates(&a, &b, 2.0);
        assert_eq!(r.ports[0].rx_pps, 100.0);
        assert_eq!(r.ports[0].rx_bps, 8.0 * 6400.0);
        assert_eq!(r.lcores[0].cycles_per_packet, 100.0);
        assert_eq!(r.lcores[0].busy_percent, 50.0);
        assert!(rates_table(&r).contains("100"));
    }

    #[test]
    fn stage_table_gives_each_stage_its_share() {
        let stages = [
            ("rx", 50.0),
            ("parse", 25.0),
            ("prefetch", 0.0),
            ("decide", 25.0),
            ("tx", 100.0),
        ];
        let l = vec![LcoreInfo {
            lcore_id: 3,
            stages: stages
                .iter()
                .map(|(s, c)| fastpath_api::StageCycles {
                    stage: s.to_string(),
                    cycles_per_packet: *c,
                })
                .collect(),
            stage_packets: 640,
            packets_per_poll: 20.0,
            ..Default::default()
        }];
        let t = lcore_stages(&l);
        let row = |stage: &str| {
            t.lines()
                .find(|r| r.split_whitespace().nth(1) == Some(stage))
                .map(|r| r.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(row("rx"), ["3", "rx", "50.0", "25"], "{t}");
        assert_eq!(row("tx"), ["3", "tx", "100.0", "50"], "{t}");
        assert!(
            t.contains("sum (640 packets, 20.0 per poll)") && t.contains("200.0"),
            "{t}"
        );
    }

    #[test]
    fn flow_dump_marks_stale_entries() {
        let d = vec![LcoreFlows {
            lcore_id: 1,
            generation: 3,
            capacity: 8,
            flows: vec![
                fastpath_api::FlowInfo {
                    key: "in_port=0 k1".into(),
                    actions: "output:p3(port 1) ip.ttl=63".into(),
                    generation: 3,
                    hits: 7,
                    age_secs: 1.0,
                },
                fastpath_api::FlowInfo {
                    key: "in_port=0 k2".into(),
                    actions: "drop(ovn_drop_action)".into(),
                    generation: 2,
                    hits: 1,
                    age_secs: 2.0,
                },
            ],
        }];
        let t = flows(&d);
        assert!(t.contains("2 of 8 entries"), "{t}");
        assert!(t.contains("hits=7") && t.contains("output:p3"), "{t}");
        assert_eq!(t.matches("(stale)").count(), 1, "{t}");
    }
}
