//! Differential-test harness: a real OVN central, the Southbound compiled
//! and loaded as the fastpath loads it, `ovn-trace --minimal` (with `--ct`
//! and `--lb-dst`) as the oracle, and the comparison of verdicts.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::Duration;

use fastpath::ovn::ct::PinnedConntrack;
use fastpath::ovn::{FlowVector, Interpreter, Program, Verdict};
use fastpath_packet::extract;
use ovn_lflow::{parse_actions, Action, SymbolTable};
use ovsdb::testing::OvnCentral;

/// NB + SB + northd (`ovsdb::testing::OvnCentral`), with panicking helpers.
pub struct Central(pub OvnCentral);

impl std::ops::Deref for Central {
    type Target = OvnCentral;
    fn deref(&self) -> &OvnCentral {
        &self.0
    }
}

/// A xorshift generator seeded with `seed` (reproducible random tests).
pub fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// A NetworkPolicy on `port` as Kube-OVN writes it: port group `pg_np`,
/// a default deny on egress to it (priority 2000) and an `allow-related`
/// rule (2001, with `allow_options` such as `--log`) for the address set
/// `as_np_allow`, which holds 10.0.0.11.
pub fn network_policy(c: &Central, port: &str, allow_options: &[&str]) {
    c.nb(&format!("pg-add pg_np {port}"));
    c.nb("create Address_Set name=as_np_allow addresses=10.0.0.11");
    c.nb_args(&[
        "--type=port-group",
        "acl-add",
        "pg_np",
        "to-lport",
        "2000",
        "outport == @pg_np && ip",
        "drop",
    ]);
    let mut allow = vec!["--type=port-group"];
    allow.extend_from_slice(allow_options);
    allow.extend_from_slice(&[
        "acl-add",
        "pg_np",
        "to-lport",
        "2001",
        "outport == @pg_np && ip4.src == $as_np_allow",
        "allow-related",
    ]);
    c.nb_args(&allow);
}

/// The pods of [`two_subnets`]: switch, port, MAC, address.
pub const TWO_SUBNET_PODS: [(&str, &str, &str, &str); 3] = [
    ("sw0", "p1", "50:54:00:00:00:01", "10.0.0.11"),
    ("sw0", "p2", "50:54:00:00:00:02", "10.0.0.12"),
    ("sw1", "p3", "50:54:00:00:00:03", "10.0.1.13"),
];

/// sw0 (p1, p2, 10.0.0.0/24) and sw1 (p3, 10.0.1.0/24) behind lr0
/// ([`switches_behind_a_router`]). Nothing bound.
pub fn two_subnets(c: &Central) {
    switches_behind_a_router(c);
    for (sw, p, m, a) in TWO_SUBNET_PODS {
        c.nb(&format!("lsp-add {sw} {p}"));
        c.nb_args(&["lsp-set-addresses", p, &format!("{m} {a}")]);
    }
}

/// sw0 (10.0.0.0/24) and sw1 (10.0.1.0/24) behind lr0, whose ports are
/// 00:00:00:00:ff:01 (10.0.0.1) and 00:00:00:00:ff:02 (10.0.1.1); no pod.
pub fn switches_behind_a_router(c: &Central) {
    c.nb("ls-add sw0");
    c.nb("ls-add sw1");
    c.nb("lr-add lr0");
    c.nb("lrp-add lr0 lrp0 00:00:00:00:ff:01 10.0.0.1/24");
    c.nb("lrp-add lr0 lrp1 00:00:00:00:ff:02 10.0.1.1/24");
    for (sw, lsp, lrp) in [("sw0", "sw0-lr0", "lrp0"), ("sw1", "sw1-lr0", "lrp1")] {
        c.nb(&format!("lsp-add {sw} {lsp}"));
        c.nb(&format!("lsp-set-type {lsp} router"));
        c.nb(&format!("lsp-set-addresses {lsp} router"));
        c.nb(&format!("lsp-set-options {lsp} router-port={lrp}"));
    }
}

impl Central {
    pub fn start() -> Central {
        Central(OvnCentral::start().expect("NB, SB and ovn-northd"))
    }

    pub fn nb(&self, cmd: &str) {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        self.nb_args(&args);
    }

    pub fn nb_args(&self, args: &[&str]) {
        self.nb
            .nbctl(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }

    pub fn sb(&self, cmd: &str) {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        self.sb
            .sbctl(&args)
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    }

    pub fn sync(&self) {
        self.0
            .sync(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("northd never caught up: {e}"));
    }

    /// Announces on chassis `hv1` the features ovn-controller 23.03 (and
    /// the node role) announce, so that northd switches to `ct_lb_mark`,
    /// `ct_mark` bits and `ct_commit_nat`; waits until the compiled program
    /// holds a flow whose actions contain `marker`.
    pub fn announce_features(&self, marker: &str) -> (Program, ovn_bridge::compile::CompileStats) {
        let mut args = vec!["set".to_string(), "Chassis".into(), "hv1".into()];
        for f in ovn_bridge::node::chassis::FEATURES {
            args.push(format!("other_config:{f}=true"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.sb
            .sbctl(&args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let start = std::time::Instant::now();
        loop {
            self.sync();
            let (program, stats) = self.program();
            if program
                .flows
                .iter()
                .any(|f| program.text(f.actions_text).contains(marker))
            {
                return (program, stats);
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "northd never emitted {marker}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A snapshot of the whole Southbound the compiler reads.
    pub fn snapshot(&self) -> std::sync::Arc<ovsdb::Database> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = ovsdb::Client::connect(
                std::slice::from_ref(&self.sb.remote),
                "OVN_Southbound",
                ovsdb::ClientOptions::default(),
            )
            .await
            .expect("connect sb");
            let replica = client
                .monitor(
                    ovn_bridge::compile::SB_TABLES
                        .iter()
                        .map(|t| ovsdb::MonitorTable::all(t))
                        .collect(),
                )
                .await
                .expect("monitor sb");
            replica.snapshot()
        })
    }

    /// Compiles the current Southbound for chassis `hv1` (deterministic
    /// conntrack zones) and loads it; also returns the compile statistics.
    pub fn program(&self) -> (Program, ovn_bridge::compile::CompileStats) {
        self.program_mapped(&[])
    }

    /// [`Central::program`] with `ports` mapped to fastpath ports 0, 1, ...
    /// in order (what the node role does for its pods).
    pub fn program_mapped(&self, ports: &[&str]) -> (Program, ovn_bridge::compile::CompileStats) {
        let db = self.snapshot();
        let opts = ovn_bridge::compile::CompileOptions {
            chassis: "hv1".into(),
            port_map: ports
                .iter()
                .enumerate()
                .map(|(i, p)| (p.to_string(), i as u16))
                .collect(),
        };
        let compiled = ovn_bridge::compile::compile(&db, &opts).expect("compile");
        assert!(compiled.stats.rules > 100, "{:?}", compiled.stats);
        assert_eq!(compiled.stats.rejected, 0, "{:?}", compiled.stats);
        let image = compiled.builder.finish(1, 0);
        let mut words = vec![0u64; image.len().div_ceil(8)];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        bytes[..image.len()].copy_from_slice(&image);
        let bytes = &bytes[..image.len()];
        let validated = fastpath_tables::validate::validate_slot(bytes).expect("slot validates");
        let program = Program::load(&validated.sections(bytes), 1).expect("program loads");
        (program, compiled.stats)
    }

    /// `ovn-trace --minimal` without conntrack flags; `Err` holds its
    /// standard error when it fails (it aborts on some actions).
    pub fn try_trace(&self, datapath: &str, microflow: &str) -> Result<String, String> {
        let out = Command::new("ovn-trace")
            .arg(format!("--db={}", self.sb.remote))
            .arg("--minimal")
            .arg(datapath)
            .arg(microflow)
            .output()
            .expect("ovn-trace");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `ovn-trace --minimal` with pinned conntrack states and LB backend.
    pub fn trace(
        &self,
        datapath: &str,
        microflow: &str,
        ct: &[&str],
        lb_dst: Option<&str>,
    ) -> String {
        self.trace_with(datapath, microflow, ct, lb_dst, &[])
    }

    /// [`Central::trace`] with further options (`--select-id=N`).
    pub fn trace_with(
        &self,
        datapath: &str,
        microflow: &str,
        ct: &[&str],
        lb_dst: Option<&str>,
        extra: &[&str],
    ) -> String {
        let mut cmd = Command::new("ovn-trace");
        cmd.arg(format!("--db={}", self.sb.remote))
            .arg("--minimal")
            .args(extra);
        for c in ct {
            cmd.arg(format!("--ct={c}"));
        }
        if let Some(d) = lb_dst {
            cmd.arg(format!("--lb-dst={d}"));
        }
        let out = cmd
            .arg(datapath)
            .arg(microflow)
            .output()
            .expect("ovn-trace");
        assert!(
            out.status.success(),
            "ovn-trace {microflow}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The transport of a test packet.
#[derive(Debug, Clone, Copy)]
pub enum L4 {
    Tcp { src: u16, dst: u16 },
    Udp { src: u16, dst: u16 },
}

/// A test packet with its pinned conntrack model.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub datapath: &'static str,
    pub inport: &'static str,
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub l4: L4,
    /// `--ct` flag lists, one per tracking action.
    pub ct: Vec<&'static str>,
    /// `--lb-dst`.
    pub lb_dst: Option<&'static str>,
}

pub fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (o, p) in m.iter_mut().zip(s.split(':')) {
        *o = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

impl Case {
    pub fn microflow(&self) -> String {
        let (proto, s, d) = match self.l4 {
            L4::Tcp { src, dst } => ("tcp", src, dst),
            L4::Udp { src, dst } => ("udp", src, dst),
        };
        format!(
            "inport == \"{}\" && eth.src == {} && eth.dst == {} && ip4.src == {} && ip4.dst == {} && ip.ttl == 64 && {proto}.src == {s} && {proto}.dst == {d}",
            self.inport,
            mac_text(&self.eth_src),
            mac_text(&self.eth_dst),
            self.src,
            self.dst
        )
    }

    pub fn frame(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        let (proto, l4): (u8, Vec<u8>) = match self.l4 {
            L4::Tcp { src, dst } => {
                let mut t = vec![0u8; 20];
                t[0..2].copy_from_slice(&src.to_be_bytes());
                t[2..4].copy_from_slice(&dst.to_be_bytes());
                t[12] = 0x50;
                t[13] = 0x02;
                (6, t)
            }
            L4::Udp { src, dst } => {
                let mut u = vec![0u8; 12];
                u[0..2].copy_from_slice(&src.to_be_bytes());
                u[2..4].copy_from_slice(&dst.to_be_bytes());
                u[4..6].copy_from_slice(&12u16.to_be_bytes());
                (17, u)
            }
        };
        let total = (20 + l4.len()) as u16;
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        let cs = fastpath_packet::checksum::checksum(&h);
        h[10..12].copy_from_slice(&cs.to_be_bytes());
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&h);
        f.extend_from_slice(&l4);
        while f.len() < 60 {
            f.push(0);
        }
        f
    }
}

/// One output of ovn-trace: the port and the header edits on the way.
#[derive(Debug, Clone)]
pub struct TraceOutput {
    pub port: String,
    pub edits: Vec<String>,
}

/// What `ovn-trace --minimal` reported: outputs and the ACL log lines.
#[derive(Debug, Clone, Default)]
pub struct Minimal {
    pub outputs: Vec<TraceOutput>,
    pub logs: usize,
}

/// Parses `ovn-trace --minimal` output. Conntrack blocks (`ct_next(...)`,
/// `ct_lb ...`, `ct_dnat(ip4.dst=X)`, ...) continue the packet like a
/// clone; their translation becomes an edit, and a `ct_lb` block applies
/// `lb_dst` (ovn-trace does not print it).
pub fn parse_minimal(text: &str, lb_dst: Option<&str>) -> Minimal {
    let mut m = Minimal::default();
    let mut stack: Vec<Vec<String>> = vec![Vec::new()];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with("/*")
            || line.starts_with("***")
        {
            continue;
        }
        if line.starts_with("LOG:") {
            m.logs += 1;
        } else if let Some(rest) = line.strip_prefix("output(\"") {
            let port = rest.trim_end_matches("\");").to_string();
            let edits = stack.last().cloned().unwrap_or_default();
            m.outputs.push(TraceOutput { port, edits });
        } else if line == "};" {
            stack.pop();
            assert!(!stack.is_empty(), "unbalanced ovn-trace output:\n{text}");
        } else if let Some(head) = line.strip_suffix('{') {
            let head = head.trim();
            let mut edits = stack.last().cloned().unwrap_or_default();
            // `ct_dnat(ip4.dst=X)`, `ct_snatin_czone(ip4.src=X)` (sic).
            let target = |dir: &str| {
                head.split_once(&format!("(ip4.{dir}="))
                    .map(|(_, rest)| rest.trim_end_matches(')').to_string())
            };
            if let (true, Some(a)) = (head.starts_with("ct_dnat"), target("dst")) {
                edits.push(format!("ip4.dst = {a};"));
            } else if let (true, Some(a)) = (head.starts_with("ct_snat"), target("src")) {
                edits.push(format!("ip4.src = {a};"));
            } else if head.starts_with("ct_lb") {
                if let Some(d) = lb_dst {
                    let (a, p) = d.split_once(':').unwrap_or((d, ""));
                    edits.push(format!("ip4.dst = {a};"));
                    if !p.is_empty() {
                        edits.push(format!("tp_dst = {p};"));
                    }
                }
            } else if !(head == "clone" || head.starts_with("ct_")) {
                panic!("unexpected block {head:?} in:\n{text}");
            }
            stack.push(edits);
        } else if line == "drop;" {
        } else if line.ends_with(';') {
            if let Some(top) = stack.last_mut() {
                top.push(line.to_string());
            }
        } else {
            panic!("unexpected ovn-trace line {line:?} in:\n{text}");
        }
    }
    m
}

/// Applies trace edits to a vector (for the expected final headers).
pub fn apply_edits(symtab: &SymbolTable, v: &mut FlowVector, edits: &[String]) {
    for e in edits {
        if let Some(port) = e.strip_prefix("tp_dst = ") {
            let p: u16 = port.trim_end_matches(';').parse().expect("port");
            v.bytes_mut()[fastpath_packet::flowkey::field::TP_DST]
                .copy_from_slice(&p.to_be_bytes());
            continue;
        }
        let actions = parse_actions(e).unwrap_or_else(|err| panic!("trace edit {e:?}: {err}"));
        for a in actions {
            match a {
                Action::DecTtl => {
                    v.bytes_mut()[fastpath_packet::flowkey::field::TTL] -= 1;
                }
                Action::Load { dst, value } => {
                    let slice = ovn_bridge::compile::actions::field_slice(symtab, &dst)
                        .unwrap_or_else(|| panic!("no slice for {dst:?}"));
                    v.write(&slice, value.value);
                }
                other => panic!("unexpected trace edit {other:?}"),
            }
        }
    }
}

/// Runs every case through the interpreter (with [`PinnedConntrack`]) and
/// ovn-trace; returns the differences and the verdicts.
pub fn differences(c: &Central, program: &Program, cases: &[Case]) -> (Vec<String>, Vec<Verdict>) {
    let symtab = SymbolTable::ovn_23_03();
    let mut diffs = Vec::new();
    let mut verdicts = Vec::new();
    let mut interp = Interpreter::new();
    interp.tracing = true;
    for case in cases {
        let text = c.trace(case.datapath, &case.microflow(), &case.ct, case.lb_dst);
        let expected = parse_minimal(&text, case.lb_dst);
        let frame = case.frame();
        let (key, _) = extract(&frame, 0).expect("test frame parses");
        let inport = program.port_by_name(case.inport).expect("inport known");
        let mut ct = PinnedConntrack::new(&case.ct, case.lb_dst).expect("pinned conntrack");
        let verdict = interp
            .run_with(program, inport, &key, frame.len() as u32, &mut ct)
            .clone();
        let mut mine: Vec<String> = verdict
            .emissions
            .iter()
            .map(|e| program.ports[e.port as usize].name.clone())
            .collect();
        let mut theirs: Vec<String> = expected.outputs.iter().map(|o| o.port.clone()).collect();
        mine.sort();
        theirs.sort();
        if mine != theirs {
            diffs.push(format!(
                "{}: outputs {mine:?} (drops {:?}), ovn-trace {theirs:?}\n{text}\nfastpath:\n{}",
                case.name,
                verdict.drops,
                fastpath::ovn::trace::render(program, inport, &key, &interp)
            ));
        } else {
            for out in &expected.outputs {
                let Some(e) = verdict
                    .emissions
                    .iter()
                    .find(|e| program.ports[e.port as usize].name == out.port)
                else {
                    continue;
                };
                let mut want = FlowVector::from_key(&key, 0, 0);
                apply_edits(&symtab, &mut want, &out.edits);
                if e.vector.key() != want.key() {
                    diffs.push(format!(
                        "{}: headers to {} differ:\n mine {:?}\n want {:?}\n edits {:?}",
                        case.name,
                        out.port,
                        e.vector.key(),
                        want.key(),
                        out.edits
                    ));
                }
            }
        }
        if verdict.logs.len() != expected.logs {
            diffs.push(format!(
                "{}: {} log events, ovn-trace {}",
                case.name,
                verdict.logs.len(),
                expected.logs
            ));
        }
        verdicts.push(verdict);
    }
    (diffs, verdicts)
}

// ---------------------------------------------------------------------------
// Stateless probes: IPv4, IPv6, ARP and ND packets whose verdict may hold
// generated packets (`arp { }`, `icmp4 { }`, `nd_na_router { }`, ...).
// ---------------------------------------------------------------------------

/// The network part of a [`Probe`].
#[derive(Debug, Clone, Copy)]
pub enum Net {
    /// UDP 1000 → 2000 over IPv4.
    Udp4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
    },
    /// A TCP SYN to `dport` over IPv4.
    Tcp4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
        dport: u16,
    },
    /// An ICMPv4 echo request.
    Ping4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
    },
    /// An ARP packet (`tha` zero).
    Arp {
        op: u16,
        sha: [u8; 6],
        spa: Ipv4Addr,
        tpa: Ipv4Addr,
    },
    /// UDP 1000 → 2000 over IPv6.
    Udp6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hlim: u8,
    },
    /// A TCP SYN to `dport` over IPv6.
    Tcp6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hlim: u8,
        dport: u16,
    },
    /// An ICMPv6 echo request.
    Ping6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hlim: u8,
    },
    /// A neighbour solicitation for `target`, to its solicited-node
    /// multicast address, with a source link-layer option.
    NdNs {
        src: Ipv6Addr,
        target: Ipv6Addr,
        sll: [u8; 6],
    },
}

/// A packet of a stateless differential test.
#[derive(Debug, Clone)]
pub struct Probe {
    pub name: &'static str,
    /// Logical switch of `inport` (ovn-trace's datapath argument).
    pub datapath: &'static str,
    pub inport: &'static str,
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub net: Net,
}

pub fn ip6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// The solicited-node multicast address of `a` (RFC 4291 §2.7.1).
pub fn solicited_node(a: &Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet multicast address of an IPv6 multicast address.
pub fn multicast_mac(a: &Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

impl Probe {
    /// The microflow for `ovn-trace`.
    pub fn microflow(&self) -> String {
        let mut s = format!(
            "inport == \"{}\" && eth.src == {} && eth.dst == {}",
            self.inport,
            mac_text(&self.eth_src),
            mac_text(&self.eth_dst)
        );
        match self.net {
            Net::Udp4 { src, dst, ttl } => s += &format!(
                " && ip4.src == {src} && ip4.dst == {dst} && ip.ttl == {ttl} && udp.src == 1000 && udp.dst == 2000"
            ),
            Net::Tcp4 { src, dst, ttl, dport } => s += &format!(
                " && ip4.src == {src} && ip4.dst == {dst} && ip.ttl == {ttl} && tcp.src == 1000 && tcp.dst == {dport} && tcp.flags == 2"
            ),
            Net::Ping4 { src, dst, ttl } => s += &format!(
                " && ip4.src == {src} && ip4.dst == {dst} && ip.ttl == {ttl} && icmp4.type == 8 && icmp4.code == 0"
            ),
            Net::Arp { op, sha, spa, tpa } => s += &format!(
                " && arp.op == {op} && arp.sha == {} && arp.spa == {spa} && arp.tpa == {tpa} && arp.tha == 00:00:00:00:00:00",
                mac_text(&sha)
            ),
            Net::Udp6 { src, dst, hlim } => s += &format!(
                " && ip6.src == {src} && ip6.dst == {dst} && ip.ttl == {hlim} && udp.src == 1000 && udp.dst == 2000"
            ),
            Net::Tcp6 { src, dst, hlim, dport } => s += &format!(
                " && ip6.src == {src} && ip6.dst == {dst} && ip.ttl == {hlim} && tcp.src == 1000 && tcp.dst == {dport} && tcp.flags == 2"
            ),
            Net::Ping6 { src, dst, hlim } => s += &format!(
                " && ip6.src == {src} && ip6.dst == {dst} && ip.ttl == {hlim} && icmp6.type == 128 && icmp6.code == 0"
            ),
            Net::NdNs { src, target, sll } => s += &format!(
                " && ip6.src == {src} && ip6.dst == {} && ip.ttl == 255 && icmp6.type == 135 && icmp6.code == 0 && nd.target == {target} && nd.sll == {}",
                solicited_node(&target),
                mac_text(&sll)
            ),
        }
        s
    }

    /// The frame, with valid checksums.
    pub fn frame(&self) -> Vec<u8> {
        self.frame_with_udp_payload(4)
    }

    /// [`Probe::frame`] with `payload` bytes of UDP data (for a UDP probe;
    /// other probes ignore it).
    pub fn frame_with_udp_payload(&self, payload: usize) -> Vec<u8> {
        use fastpath_packet::checksum::{finish, pseudo_header_v4, pseudo_header_v6, sum};
        let mut f = Vec::new();
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        let tcp_syn = |dport: u16| {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&1000u16.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            t[12] = 0x50;
            t[13] = 0x02;
            t[14] = 0xff;
            t
        };
        let udp = || {
            let mut u = vec![0x03, 0xe8, 0x07, 0xd0, 0, 0, 0, 0];
            u[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
            u.extend((1..=payload).map(|i| i as u8));
            u
        };
        let v4 =
            |f: &mut Vec<u8>, src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, proto: u8, mut l4: Vec<u8>| {
                let len = l4.len() as u16;
                let at = match proto {
                    6 => Some(16),
                    17 => Some(6),
                    _ => None,
                };
                let init = match at {
                    Some(_) => pseudo_header_v4(src.octets(), dst.octets(), proto, len),
                    None => 0,
                };
                let cs = finish(sum(init, &l4));
                l4[at.unwrap_or(2)..at.unwrap_or(2) + 2].copy_from_slice(&cs.to_be_bytes());
                let mut h = vec![0x45, 0, 0, 0, 0, 0, 0, 0, ttl, proto, 0, 0];
                h[2..4].copy_from_slice(&(20 + len).to_be_bytes());
                h.extend_from_slice(&src.octets());
                h.extend_from_slice(&dst.octets());
                let cs = fastpath_packet::checksum::checksum(&h);
                h[10..12].copy_from_slice(&cs.to_be_bytes());
                f.extend_from_slice(&[0x08, 0x00]);
                f.extend_from_slice(&h);
                f.extend_from_slice(&l4);
            };
        let v6 =
            |f: &mut Vec<u8>, src: Ipv6Addr, dst: Ipv6Addr, hlim: u8, nh: u8, mut l4: Vec<u8>| {
                let len = l4.len() as u16;
                let at = match nh {
                    6 => 16,
                    17 => 6,
                    _ => 2,
                };
                let cs = finish(sum(
                    pseudo_header_v6(&src.octets(), &dst.octets(), nh, u32::from(len)),
                    &l4,
                ));
                l4[at..at + 2].copy_from_slice(&cs.to_be_bytes());
                f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
                f.extend_from_slice(&len.to_be_bytes());
                f.extend_from_slice(&[nh, hlim]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
                f.extend_from_slice(&l4);
            };
        match self.net {
            Net::Udp4 { src, dst, ttl } => v4(&mut f, src, dst, ttl, 17, udp()),
            Net::Tcp4 {
                src,
                dst,
                ttl,
                dport,
            } => v4(&mut f, src, dst, ttl, 6, tcp_syn(dport)),
            Net::Ping4 { src, dst, ttl } => v4(
                &mut f,
                src,
                dst,
                ttl,
                1,
                vec![8, 0, 0, 0, 0, 1, 0, 1, 0xaa, 0xbb],
            ),
            Net::Arp { op, sha, spa, tpa } => {
                f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
                f.extend_from_slice(&op.to_be_bytes());
                f.extend_from_slice(&sha);
                f.extend_from_slice(&spa.octets());
                f.extend_from_slice(&[0; 6]);
                f.extend_from_slice(&tpa.octets());
            }
            Net::Udp6 { src, dst, hlim } => v6(&mut f, src, dst, hlim, 17, udp()),
            Net::Tcp6 {
                src,
                dst,
                hlim,
                dport,
            } => v6(&mut f, src, dst, hlim, 6, tcp_syn(dport)),
            Net::Ping6 { src, dst, hlim } => v6(
                &mut f,
                src,
                dst,
                hlim,
                58,
                vec![128, 0, 0, 0, 0, 1, 0, 1, 0xaa, 0xbb],
            ),
            Net::NdNs { src, target, sll } => {
                let mut l4 = vec![135, 0, 0, 0, 0, 0, 0, 0];
                l4.extend_from_slice(&target.octets());
                l4.extend_from_slice(&[1, 1]);
                l4.extend_from_slice(&sll);
                v6(&mut f, src, solicited_node(&target), 255, 58, l4);
            }
        }
        while f.len() < 60 {
            f.push(0);
        }
        f
    }
}

/// One output of ovn-trace for a stateless probe.
#[derive(Debug, Clone)]
pub struct ProbeOutput {
    pub port: String,
    /// `field = value;` texts and `ip.ttl--;`, in order (for a generated
    /// packet, only those inside its block).
    pub edits: Vec<String>,
    /// The action that generated the packet (`arp`, `icmp4`, `nd_na_router`,
    /// ...), innermost first is what counts.
    pub generated: Option<String>,
}

/// Parses `ovn-trace --minimal` output of a stateless probe. `clone` and
/// conntrack blocks continue the packet; any other block is a generated
/// packet whose printed edits are the only ones ovn-trace shows.
pub fn parse_generated(text: &str) -> Vec<ProbeOutput> {
    let mut outputs = Vec::new();
    let mut stack: Vec<(Vec<String>, Option<String>)> = vec![(Vec::new(), None)];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with("/*")
            || line.starts_with("***")
        {
            continue;
        }
        if let Some(rest) = line.strip_prefix("output(\"") {
            let port = rest.trim_end_matches("\");").to_string();
            let (edits, generated) = stack.last().cloned().unwrap_or_default();
            outputs.push(ProbeOutput {
                port,
                edits,
                generated,
            });
        } else if line == "};" {
            stack.pop();
            assert!(!stack.is_empty(), "unbalanced ovn-trace output:\n{text}");
        } else if let Some(head) = line.strip_suffix('{') {
            let head = head.trim();
            let top = stack.last().cloned().unwrap_or_default();
            if head == "clone" || head.starts_with("ct_") {
                stack.push(top);
            } else if let Some(choice) = head.strip_prefix("select: ") {
                // `select: reg8[16..31] = 2 /* Randomly selected. ... */ {`
                let mut top = top;
                let assignment = choice.split(" /*").next().unwrap_or(choice);
                top.0.push(format!("{};", assignment.trim()));
                stack.push(top);
            } else {
                let kind = head.split('(').next().unwrap_or(head).to_string();
                stack.push((Vec::new(), Some(kind)));
            }
        } else if line == "drop;" {
        } else if line.ends_with(';') {
            if let Some(top) = stack.last_mut() {
                top.0.push(line.to_string());
            }
        } else {
            panic!("unexpected ovn-trace line {line:?} in:\n{text}");
        }
    }
    outputs
}

/// The ovn-trace name of a generating action.
pub fn generated_name(g: fastpath::ovn::Generated) -> &'static str {
    use fastpath::ovn::Generated as G;
    match g {
        G::Arp => "arp",
        G::NdNs => "nd_ns",
        G::NdNa => "nd_na",
        G::NdNaRouter => "nd_na_router",
        // ovn-trace prints `icmp4_error { }` and `icmp6_error { }` blocks
        // as `icmp4` and `icmp6`.
        G::Icmp4 | G::Icmp4Error => "icmp4",
        G::Icmp6 | G::Icmp6Error => "icmp6",
        G::TcpReset => "tcp_reset",
    }
}

/// The header fields a generated packet carries, by kind: what the
/// fastpath writes into its frame (see `fastpath::ovn::generate`).
fn generated_fields(g: fastpath::ovn::Generated) -> Vec<(&'static str, std::ops::Range<usize>)> {
    use fastpath::ovn::Generated as G;
    use fastpath_packet::flowkey::field;
    let mut f = vec![
        ("eth.dst", field::ETH_DST),
        ("eth.src", field::ETH_SRC),
        ("eth.type", field::ETH_TYPE),
        ("src", field::SRC),
        ("dst", field::DST),
    ];
    match g {
        G::Arp => f.extend([
            ("arp.op", field::ARP_OP),
            ("arp.sha", field::SHA),
            ("arp.tha", field::THA),
        ]),
        G::Icmp4 | G::Icmp4Error | G::Icmp6 | G::Icmp6Error => f.extend([
            ("ip.proto", field::IP_PROTO..field::IP_PROTO + 1),
            ("ip.ttl", field::TTL..field::TTL + 1),
            ("icmp.type", field::ICMP_TYPE..field::ICMP_TYPE + 1),
            ("icmp.code", field::ICMP_CODE..field::ICMP_CODE + 1),
        ]),
        G::NdNs | G::NdNa | G::NdNaRouter => f.extend([
            ("ip.proto", field::IP_PROTO..field::IP_PROTO + 1),
            ("ip.ttl", field::TTL..field::TTL + 1),
            ("icmp.type", field::ICMP_TYPE..field::ICMP_TYPE + 1),
            ("nd.target", field::ND_TARGET),
            ("nd.sll", field::SHA),
            ("nd.tll", field::THA),
        ]),
        G::TcpReset => f.extend([
            ("ip.proto", field::IP_PROTO..field::IP_PROTO + 1),
            ("tcp.src", field::TP_SRC),
            ("tcp.dst", field::TP_DST),
            ("tcp.flags", field::TCP_FLAGS),
        ]),
    }
    f
}

/// Builds the frame of a generated emission with
/// `fastpath::ovn::generate::build`, parses it back with the packet crate,
/// verifies its checksums from scratch and compares the parsed header
/// fields with the emission's vector. Returns what disagrees.
pub fn check_generated_frame(
    name: &str,
    port: &str,
    g: fastpath::ovn::Generated,
    vector: &FlowVector,
    received: &[u8],
) -> Vec<String> {
    use fastpath::ovn::Generated as G;
    use fastpath_packet::checksum::{fold, pseudo_header_v4, pseudo_header_v6, sum};
    let mut diffs = Vec::new();
    let (_, layout) = extract(received, 0).expect("test frame parses");
    let mut out = Vec::new();
    if let Err(e) = fastpath::ovn::generate::build(g, vector, received, &layout, &mut out) {
        return vec![format!("{name}: generated packet to {port}: {e}")];
    }
    let (k, l) = match extract(&out, 0) {
        Ok(x) => x,
        Err(e) => {
            return vec![format!(
                "{name}: generated frame to {port} does not parse: {e}"
            )]
        }
    };
    let l3 = usize::from(l.l3);
    let l4 = usize::from(l.l4);
    let end = usize::from(l.end);
    if k.is_ipv4() && !fastpath_packet::checksum::verify(&out[l3..l4]) {
        diffs.push(format!(
            "{name}: generated frame to {port}: bad IPv4 header checksum"
        ));
    }
    if k.has_l4() {
        let upper = &out[l4..end];
        let init = if k.is_ipv4() {
            if k.ip_proto() == 1 {
                0
            } else {
                let mut s = [0u8; 4];
                let mut d = [0u8; 4];
                s.copy_from_slice(&out[l3 + 12..l3 + 16]);
                d.copy_from_slice(&out[l3 + 16..l3 + 20]);
                pseudo_header_v4(s, d, k.ip_proto(), upper.len() as u16)
            }
        } else {
            pseudo_header_v6(&k.src(), &k.dst(), k.ip_proto(), upper.len() as u32)
        };
        if fold(sum(init, upper)) != 0xffff {
            diffs.push(format!(
                "{name}: generated frame to {port}: bad L4 checksum"
            ));
        }
    }
    // An ICMP error's 4 bytes before the quote carry the vector's
    // `icmp4.frag_mtu`/`icmp6.frag_mtu` (zero when none was set).
    let icmp_error = matches!(
        (g, k.icmp_type()),
        (G::Icmp4 | G::Icmp4Error, t) if t != 0
    ) || matches!((g, k.icmp_type()), (G::Icmp6 | G::Icmp6Error, t) if t < 128);
    let mtu = fastpath_tables::ovn::vector::FRAG_MTU;
    if icmp_error && out.get(l4 + 6..l4 + 8) != Some(vector.field(mtu.clone())) {
        diffs.push(format!(
            "{name}: generated frame to {port}: MTU field {:02x?}, {:02x?} in the vector",
            out.get(l4 + 4..l4 + 8),
            vector.field(mtu)
        ));
    }
    let parsed = FlowVector::from_key(&k, 0, 0);
    for (field_name, r) in generated_fields(g) {
        if parsed.field(r.clone()) != vector.field(r.clone()) {
            diffs.push(format!(
                "{name}: generated frame to {port}: {field_name} {:02x?} in the frame, {:02x?} in the vector",
                parsed.field(r.clone()),
                vector.field(r)
            ));
        }
    }
    diffs
}

/// Runs every probe through the interpreter (no conntrack) and ovn-trace:
/// the same output ports; for a forwarded packet every flow-key byte
/// equal after ovn-trace's edits; for a generated one the same generating
/// action, every field ovn-trace assigns inside it equal, and a frame that
/// parses with valid checksums and carries the vector's fields. Returns
/// the differences and the verdicts.
pub fn probe_differences(
    c: &Central,
    program: &Program,
    probes: &[Probe],
) -> (Vec<String>, Vec<Verdict>) {
    probe_differences_with(c, program, probes, &[])
}

/// [`probe_differences`] with further `ovn-trace` options.
pub fn probe_differences_with(
    c: &Central,
    program: &Program,
    probes: &[Probe],
    extra: &[&str],
) -> (Vec<String>, Vec<Verdict>) {
    probe_differences_framed(c, program, probes, extra, |p| (p.microflow(), p.frame()))
}

/// [`probe_differences_with`] with each probe's microflow and frame given
/// by `framed` (a frame longer than the probe's own, with the microflow
/// pinning what ovn-trace cannot know of its length).
pub fn probe_differences_framed(
    c: &Central,
    program: &Program,
    probes: &[Probe],
    extra: &[&str],
    framed: impl Fn(&Probe) -> (String, Vec<u8>),
) -> (Vec<String>, Vec<Verdict>) {
    let symtab = SymbolTable::ovn_23_03();
    let mut diffs = Vec::new();
    let mut verdicts = Vec::new();
    let mut interp = Interpreter::new();
    interp.tracing = true;
    for p in probes {
        let (microflow, frame) = framed(p);
        let text = c.trace_with(p.datapath, &microflow, &[], None, extra);
        let expected = parse_generated(&text);
        let (key, _) = extract(&frame, 0).expect("test frame parses");
        let inport = program.port_by_name(p.inport).expect("inport known");
        let verdict = interp
            .run(program, inport, &key, frame.len() as u32)
            .clone();
        let mut mine: Vec<String> = verdict
            .emissions
            .iter()
            .map(|e| program.ports[e.port as usize].name.clone())
            .collect();
        let mut theirs: Vec<String> = expected.iter().map(|o| o.port.clone()).collect();
        mine.sort();
        theirs.sort();
        if mine != theirs {
            diffs.push(format!(
                "{}: outputs {mine:?} (drops {:?}), ovn-trace {theirs:?}\n{text}\nfastpath:\n{}",
                p.name,
                verdict.drops,
                fastpath::ovn::trace::render(program, inport, &key, &interp)
            ));
            verdicts.push(verdict);
            continue;
        }
        let mut used = vec![false; verdict.emissions.len()];
        for out in &expected {
            let Some(i) = (0..verdict.emissions.len()).find(|&i| {
                !used[i] && program.ports[verdict.emissions[i].port as usize].name == out.port
            }) else {
                continue;
            };
            used[i] = true;
            let e = &verdict.emissions[i];
            let mut want = FlowVector::from_key(&key, 0, 0);
            match (&out.generated, e.generated) {
                (None, None) => {
                    apply_edits(&symtab, &mut want, &out.edits);
                    if e.vector.key() != want.key() {
                        diffs.push(format!(
                            "{}: headers to {} differ:\n mine {:?}\n want {:?}\n edits {:?}",
                            p.name,
                            out.port,
                            e.vector.key(),
                            want.key(),
                            out.edits
                        ));
                    }
                }
                (Some(kind), Some(g)) => {
                    if kind != generated_name(g) {
                        diffs.push(format!(
                            "{}: packet to {} generated by {} here, by {kind} in ovn-trace",
                            p.name,
                            out.port,
                            generated_name(g)
                        ));
                    }
                    // Only what ovn-trace assigns inside the block is
                    // compared: the rest of its generated flow is a
                    // copy of the received one, so a relative edit
                    // (`ip.ttl--`) counts only after an assignment of
                    // the TTL inside the block.
                    let mut ttl_known = false;
                    let mut absolute = Vec::new();
                    for e in &out.edits {
                        if e.starts_with("ip.ttl = ") {
                            ttl_known = true;
                        }
                        if e.contains(" = ") || ttl_known {
                            absolute.push(e.clone());
                        }
                    }
                    let mut got = e.vector;
                    let before = got;
                    apply_edits(&symtab, &mut got, &absolute);
                    let frag_mtu = fastpath_tables::ovn::vector::FRAG_MTU;
                    if got.key() != before.key()
                        || got.field(frag_mtu.clone()) != before.field(frag_mtu)
                    {
                        diffs.push(format!(
                            "{}: generated packet to {} differs from ovn-trace's edits {:?}:\n mine {:?}\n want {:?}",
                            p.name,
                            out.port,
                            out.edits,
                            before.key(),
                            got.key()
                        ));
                    }
                    diffs.extend(check_generated_frame(
                        p.name, &out.port, g, &e.vector, &frame,
                    ));
                }
                (theirs, mine) => diffs.push(format!(
                    "{}: packet to {}: generated by {:?} here, by {theirs:?} in ovn-trace\n{text}",
                    p.name,
                    out.port,
                    mine.map(generated_name)
                )),
            }
        }
        verdicts.push(verdict);
    }
    (diffs, verdicts)
}
