//! Every logical flow that a real ovn-northd 23.03 emits for a rich topology
//! must parse (match and actions) and normalise.
//!
//! Starts NB and SB ovsdb-servers and ovn-northd in a private temporary
//! directory (killed when the test ends), builds the topology with
//! ovn-nbctl, dumps `Logical_Flow`, `Address_Set` and `Port_Group`, and
//! with `LFLOW_UPDATE_FIXTURE=1` writes the dump to `tests/data/lflows.json`
//! for the benchmark.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ovn_lflow::{normalize, parse_actions, parse_match, Lookup, SymbolTable};
use serde_json::Value;

/// The OVN central processes of one test; killed on drop.
struct OvnCentral {
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Drop for OvnCentral {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl OvnCentral {
    fn start() -> OvnCentral {
        let dir = tempfile::tempdir().unwrap();
        let mut me = OvnCentral {
            dir,
            children: Vec::new(),
        };
        let d = me.dir.path().to_path_buf();
        for (db, schema) in [("nb", "ovn-nb.ovsschema"), ("sb", "ovn-sb.ovsschema")] {
            let file = d.join(format!("{db}.db"));
            run(
                "ovsdb-tool",
                &[
                    "create",
                    file.to_str().unwrap(),
                    &format!("/usr/share/ovn/{schema}"),
                ],
            );
            let child = Command::new("ovsdb-server")
                .arg(format!(
                    "--remote=punix:{}",
                    d.join(format!("{db}.sock")).display()
                ))
                .arg(format!(
                    "--unixctl={}",
                    d.join(format!("{db}.ctl")).display()
                ))
                .arg(format!(
                    "--pidfile={}",
                    d.join(format!("{db}.pid")).display()
                ))
                .arg(format!(
                    "--log-file={}",
                    d.join(format!("{db}.log")).display()
                ))
                .arg(&file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("ovsdb-server");
            me.children.push(child);
            wait_for(&d.join(format!("{db}.sock")));
        }
        let child = Command::new("ovn-northd")
            .arg(format!("--ovnnb-db=unix:{}", d.join("nb.sock").display()))
            .arg(format!("--ovnsb-db=unix:{}", d.join("sb.sock").display()))
            .arg(format!("--unixctl={}", d.join("northd.ctl").display()))
            .arg(format!("--pidfile={}", d.join("northd.pid").display()))
            .arg(format!("--log-file={}", d.join("northd.log").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ovn-northd");
        me.children.push(child);
        me
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn nbctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.path("nb.sock").display());
        let mut all = vec![db.as_str()];
        all.extend_from_slice(args);
        run("ovn-nbctl", &all)
    }

    fn sbctl(&self, args: &[&str]) -> String {
        let db = format!("--db=unix:{}", self.path("sb.sock").display());
        let mut all = vec![db.as_str()];
        all.extend_from_slice(args);
        run("ovn-sbctl", &all)
    }

    fn sb_table(&self, table: &str) -> Vec<HashMap<String, Value>> {
        let text = self.sbctl(&["--format=json", "list", table]);
        let v: Value = serde_json::from_str(&text).expect("sbctl json");
        let heads: Vec<String> = v["headings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_string())
            .collect();
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                heads
                    .iter()
                    .cloned()
                    .zip(row.as_array().unwrap().iter().cloned())
                    .collect()
            })
            .collect()
    }
}

/// An OVSDB set column (`"x"` or `["set", [...]]`) as strings.
fn ovsdb_set(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) if a.first().and_then(Value::as_str) == Some("set") => a[1]
            .as_array()
            .map(|x| {
                x.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Address sets and port groups from the SB dump. SB port groups are named
/// `<datapath key>_<name>`; this lookup unions them over datapaths.
struct SbSets {
    address_sets: HashMap<String, Vec<String>>,
    port_groups: HashMap<String, Vec<String>>,
}

impl Lookup for SbSets {
    fn address_set(&self, name: &str) -> Option<Vec<String>> {
        self.address_sets.get(name).cloned()
    }
    fn port_group(&self, name: &str) -> Option<Vec<String>> {
        self.port_groups.get(name).cloned()
    }
}

fn build_topology(o: &OvnCentral) {
    let n = |s: &str| {
        let args: Vec<&str> = s.split_whitespace().collect();
        o.nbctl(&args);
    };
    o.sbctl(&["chassis-add", "hv1", "geneve", "127.0.0.1"]);
    o.sbctl(&["chassis-add", "hv2", "geneve", "127.0.0.2"]);
    n("set NB_Global . options:controller_event=true");
    n("ls-add sw0");
    n("ls-add sw1");
    n("lr-add lr0");
    n("lrp-add lr0 lrp0 00:00:00:00:ff:01 10.0.0.1/24 fd00::1/64");
    n("lrp-add lr0 lrp1 00:00:00:00:ff:02 10.0.1.1/24 fd01::1/64");
    n("set logical_router_port lrp0 ipv6_ra_configs:address_mode=dhcpv6_stateful ipv6_ra_configs:send_periodic=true ipv6_ra_configs:mtu=1400");
    n("set logical_router_port lrp1 options:gateway_mtu=1400");
    for (sw, p, lrp) in [("sw0", "sw0-lr0", "lrp0"), ("sw1", "sw1-lr0", "lrp1")] {
        n(&format!("lsp-add {sw} {p} -- lsp-set-type {p} router -- lsp-set-addresses {p} router -- lsp-set-options {p} router-port={lrp}"));
    }
    o.nbctl(&[
        "lsp-add",
        "sw0",
        "p1",
        "--",
        "lsp-set-addresses",
        "p1",
        "00:00:00:00:00:01 10.0.0.2 fd00::2",
    ]);
    o.nbctl(&[
        "lsp-set-port-security",
        "p1",
        "00:00:00:00:00:01 10.0.0.2 fd00::2",
    ]);
    o.nbctl(&[
        "lsp-add",
        "sw1",
        "p2",
        "--",
        "lsp-set-addresses",
        "p2",
        "00:00:00:00:00:02 10.0.1.2",
    ]);
    o.nbctl(&[
        "lsp-add",
        "sw1",
        "p3",
        "--",
        "lsp-set-addresses",
        "p3",
        "unknown",
    ]);
    n("lsp-add sw0 ln0 -- lsp-set-type ln0 localnet -- lsp-set-addresses ln0 unknown -- lsp-set-options ln0 network_name=phys");
    // A virtual port (keepalived VIP style).
    n("lsp-add sw0 vip0 -- lsp-set-type vip0 virtual -- lsp-set-addresses vip0 00:00:00:00:00:99 -- lsp-set-options vip0 virtual-ip=10.0.0.99 virtual-parents=p1");
    // Load balancers, one with session affinity, one with an empty backend set.
    n("lb-add lb0 10.96.0.1:80 10.0.0.2:8080,10.0.1.2:8080 tcp");
    n("set load_balancer lb0 options:affinity_timeout=60");
    n("lb-add lb1 10.96.0.2:53 10.0.0.2:53 udp");
    n("lb-add lb1 [fd02::10]:80 [fd00::2]:8080 tcp");
    o.nbctl(&[
        "create",
        "Load_Balancer",
        "name=lbe",
        "protocol=tcp",
        "vips:\"10.96.0.3:80\"=\"\"",
    ]);
    for lb in ["lb0", "lb1", "lbe"] {
        n(&format!("ls-lb-add sw0 {lb}"));
    }
    n("lr-lb-add lr0 lb0");
    n("set load_balancer lb1 selection_fields=ip_src,ip_dst");
    // Kube-OVN NetworkPolicy style ACLs with port groups and address sets.
    n("pg-add pg1 p1 p2");
    o.nbctl(&[
        "create",
        "Address_Set",
        "name=as1",
        "addresses=\"10.0.0.0/24\",\"10.0.2.5\"",
    ]);
    o.nbctl(&[
        "acl-add",
        "pg1",
        "from-lport",
        "1001",
        "inport == @pg1 && ip4",
        "allow-related",
    ]);
    o.nbctl(&[
        "acl-add",
        "pg1",
        "to-lport",
        "1000",
        "outport == @pg1 && ip4.src == $as1 && tcp.dst == 80",
        "allow-related",
    ]);
    o.nbctl(&[
        "acl-add",
        "pg1",
        "to-lport",
        "900",
        "outport == @pg1 && ip4.src == $pg1_ip4",
        "drop",
    ]);
    o.nbctl(&[
        "acl-add",
        "pg1",
        "to-lport",
        "800",
        "outport == @pg1 && 1000 <= udp.dst <= 2000",
        "reject",
    ]);
    o.nbctl(&[
        "--log",
        "--severity=alert",
        "--name=deny6",
        "acl-add",
        "sw1",
        "to-lport",
        "700",
        "ip6",
        "drop",
    ]);
    o.nbctl(&[
        "acl-add",
        "sw1",
        "from-lport",
        "600",
        "ip4 && icmp4",
        "allow",
    ]);
    o.nbctl(&[
        "qos-add",
        "sw0",
        "from-lport",
        "100",
        "inport == \"p1\"",
        "rate=1000",
        "burst=100",
        "dscp=10",
    ]);
    o.nbctl(&[
        "qos-add",
        "sw1",
        "to-lport",
        "90",
        "ip4.dst == 10.0.1.2",
        "dscp=20",
    ]);
    // Gateway router with SNAT/DNAT/dnat_and_snat.
    n("lr-add gw0");
    n("lrp-add gw0 gw0-ext 00:00:00:00:ee:01 172.16.0.1/24");
    n("lr-nat-add gw0 snat 172.16.0.1 10.0.0.0/24");
    n("lr-nat-add gw0 dnat 172.16.0.10 10.0.0.2");
    n("lr-nat-add gw0 dnat_and_snat 172.16.0.11 10.0.1.2");
    n("set logical_router gw0 options:chassis=hv1 options:lb_force_snat_ip=router_ip");
    n("lr-lb-add gw0 lb1");
    // Distributed gateway port with a distributed dnat_and_snat.
    n("lrp-add lr0 lr0-ext 00:00:00:00:ee:02 172.16.1.1/24");
    n("lrp-set-gateway-chassis lr0-ext hv1 10");
    n("lrp-set-gateway-chassis lr0-ext hv2 5");
    n("lr-nat-add lr0 dnat_and_snat 172.16.1.11 10.0.0.2 p1 00:00:00:00:ee:11");
    n("lr-nat-add lr0 snat 172.16.1.1 10.0.1.0/24");
    // Routes, ECMP with symmetric reply, and a reroute policy.
    n("lr-route-add lr0 0.0.0.0/0 172.16.1.254");
    n("--ecmp-symmetric-reply lr-route-add lr0 192.168.0.0/16 172.16.1.253");
    n("--ecmp-symmetric-reply lr-route-add lr0 192.168.0.0/16 172.16.1.252");
    o.nbctl(&[
        "lr-policy-add",
        "lr0",
        "100",
        "ip4.src == 10.0.1.0/24 && ip4.dst == 8.8.8.8",
        "reroute",
        "10.0.0.2",
    ]);
    o.nbctl(&["lr-policy-add", "lr0", "90", "ip4.dst == 1.1.1.1", "drop"]);
    // DHCPv4 and DHCPv6 options.
    let uuid = o.nbctl(&[
        "create",
        "DHCP_Options",
        "cidr=10.0.0.0/24",
        "options=\"lease_time\"=\"3600\" \"router\"=\"10.0.0.1\" \"server_id\"=\"10.0.0.1\" \"server_mac\"=\"00:00:00:00:ff:01\" \"dns_server\"=\"{8.8.8.8,7.7.7.7}\" \"domain_name\"=\"\\\"cluster.local\\\"\"",
    ]);
    o.nbctl(&["lsp-set-dhcpv4-options", "p1", uuid.trim()]);
    let uuid6 = o.nbctl(&[
        "create",
        "DHCP_Options",
        "cidr=\"fd00::/64\"",
        "options=\"server_id\"=\"00:00:00:00:ff:01\" \"dns_server\"=\"{fd00::53}\"",
    ]);
    o.nbctl(&["lsp-set-dhcpv6-options", "p1", uuid6.trim()]);
    // Multicast snooping and querier.
    n("ls-add mc0");
    n("set logical_switch mc0 other_config:mcast_snoop=true other_config:mcast_querier=true other_config:mcast_eth_src=00:00:00:00:aa:01 other_config:mcast_ip4_src=10.9.0.1 other_config:mcast_ip6_src=fe80::1");
    n("lsp-add mc0 mcp1 -- lsp-set-addresses mcp1 00:00:00:00:aa:02");
    n("set logical_router lr0 options:mcast_relay=true");
    n("--wait=sb sync");
}

#[test]
fn every_northd_flow_parses_and_normalises() {
    let o = OvnCentral::start();
    build_topology(&o);

    let flows = o.sb_table("Logical_Flow");
    let address_sets: HashMap<String, Vec<String>> = o
        .sb_table("Address_Set")
        .into_iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").to_string(),
                ovsdb_set(&r["addresses"]),
            )
        })
        .collect();
    let mut port_groups: HashMap<String, Vec<String>> = HashMap::new();
    for r in o.sb_table("Port_Group") {
        let name = r["name"].as_str().unwrap_or("");
        let nb_name = name.split_once('_').map(|(_, n)| n).unwrap_or(name);
        port_groups
            .entry(nb_name.to_string())
            .or_default()
            .extend(ovsdb_set(&r["ports"]));
    }
    let sets = SbSets {
        address_sets,
        port_groups,
    };
    assert!(
        flows.len() > 300,
        "northd produced only {} flows",
        flows.len()
    );

    let symtab = SymbolTable::ovn_23_03();
    let mut failures = Vec::new();
    let mut sizes: Vec<(usize, String)> = Vec::new();
    let mut fixture = Vec::new();
    for f in &flows {
        let m = f["match"].as_str().unwrap_or_default();
        let a = f["actions"].as_str().unwrap_or_default();
        let stage = f["external_ids"].to_string();
        fixture.push(serde_json::json!({"match": m, "actions": a}));
        match parse_match(m) {
            Ok(e) => match normalize(&e, &symtab, &sets) {
                Ok(d) => sizes.push((d.len(), m.to_string())),
                Err(err) => {
                    failures.push(format!("normalise {stage}\n  match: {m}\n  error: {err}"))
                }
            },
            Err(err) => failures.push(format!("match {stage}\n  match: {m}\n  error: {err}")),
        }
        if let Err(err) = parse_actions(a) {
            failures.push(format!("actions {stage}\n  actions: {a}\n  error: {err}"));
        }
    }
    sizes.sort_by_key(|s| std::cmp::Reverse(s.0));
    println!("{} logical flows", flows.len());
    println!("largest normalised matches:");
    for (n, m) in sizes.iter().take(8) {
        println!("  {n:5} conjunctions: {m}");
    }
    for f in &failures {
        println!("FAILED {f}");
    }

    let out = serde_json::json!({
        "flows": fixture,
        "address_sets": sets.address_sets,
        "port_groups": sets.port_groups,
    });
    // The committed fixture feeds the benchmark; refresh it on request only,
    // so that running the tests never changes the source tree.
    if std::env::var_os("LFLOW_UPDATE_FIXTURE").is_some() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lflows.json");
        std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).expect("write fixture");
    }

    assert!(
        failures.is_empty(),
        "{} of {} flows failed",
        failures.len(),
        flows.len()
    );
}

#[test]
fn processes_are_reaped_on_drop() {
    let o = OvnCentral::start();
    let pids: Vec<u32> = o.children.iter().map(Child::id).collect();
    o.nbctl(&["ls-add", "x"]);
    drop(o);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived"
        );
    }
}
