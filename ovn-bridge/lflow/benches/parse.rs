//! Parses and normalises every flow of a dump captured from a real ovn-northd
//! (`tests/data/lflows.json`, refreshed by the `northd_flows` test with `LFLOW_UPDATE_FIXTURE=1`) and prints
//! flows per second.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ovn_lflow::{normalize, parse_actions, parse_match, Lookup, SymbolTable};

struct Sets(HashMap<String, Vec<String>>, HashMap<String, Vec<String>>);

impl Lookup for Sets {
    fn address_set(&self, n: &str) -> Option<Vec<String>> {
        self.0.get(n).cloned()
    }
    fn port_group(&self, n: &str) -> Option<Vec<String>> {
        self.1.get(n).cloned()
    }
}

fn load() -> (Vec<(String, String)>, Sets) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/lflows.json");
    let text = std::fs::read_to_string(path)
        .expect("run `cargo test --test northd_flows` first to capture the dump");
    let v: serde_json::Value = serde_json::from_str(&text).expect("fixture json");
    let flows = v["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| {
            (
                f["match"].as_str().unwrap_or_default().to_string(),
                f["actions"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let map = |k: &str| -> HashMap<String, Vec<String>> {
        serde_json::from_value(v[k].clone()).unwrap_or_default()
    };
    (flows, Sets(map("address_sets"), map("port_groups")))
}

fn compile_all(flows: &[(String, String)], symtab: &SymbolTable, sets: &Sets) -> usize {
    let mut conj = 0;
    for (m, a) in flows {
        if let Ok(e) = parse_match(m) {
            conj += normalize(&e, symtab, sets).map(|d| d.len()).unwrap_or(0);
        }
        conj += parse_actions(a).map(|v| v.len()).unwrap_or(0);
    }
    conj
}

fn bench(c: &mut Criterion) {
    let (flows, sets) = load();
    let symtab = SymbolTable::ovn_23_03();

    // A plain figure, independent of criterion's report format.
    let rounds = 200;
    let t = Instant::now();
    for _ in 0..rounds {
        black_box(compile_all(&flows, &symtab, &sets));
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} flows x {rounds} rounds: {:.0} flows parsed+normalised per second",
        flows.len(),
        (flows.len() * rounds) as f64 / secs
    );

    let mut g = c.benchmark_group("northd_dump");
    g.throughput(Throughput::Elements(flows.len() as u64));
    g.bench_function("parse_match", |b| {
        b.iter(|| flows.iter().filter(|(m, _)| parse_match(m).is_ok()).count())
    });
    g.bench_function("parse_actions", |b| {
        b.iter(|| {
            flows
                .iter()
                .filter(|(_, a)| parse_actions(a).is_ok())
                .count()
        })
    });
    g.bench_function("parse_normalize_all", |b| {
        b.iter(|| compile_all(&flows, &symtab, &sets))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
