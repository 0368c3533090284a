//! Differential-test harness: a real OVN central, the Southbound compiled
//! and loaded as the fastpath loads it, `ovn-trace --minimal` (with `--ct`
//! and `--lb-dst`) as the oracle, and the comparison of verdicts.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::Ipv4Addr;
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
                .any(|f| f.actions_text.contains(marker))
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

    /// Compiles the current Southbound for chassis `hv1` (deterministic
    /// conntrack zones) and loads it; also returns the compile statistics.
    pub fn program(&self) -> (Program, ovn_bridge::compile::CompileStats) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let db = rt.block_on(async {
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
        });
        let opts = ovn_bridge::compile::CompileOptions {
            chassis: "hv1".into(),
            port_map: HashMap::new(),
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

    /// `ovn-trace --minimal` with pinned conntrack states and LB backend.
    pub fn trace(
        &self,
        datapath: &str,
        microflow: &str,
        ct: &[&str],
        lb_dst: Option<&str>,
    ) -> String {
        let mut cmd = Command::new("ovn-trace");
        cmd.arg(format!("--db={}", self.sb.remote)).arg("--minimal");
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
