//! Controller benchmark, run by hand:
//! `cargo run --release -p ovn-bridge --example controller_bench [pods services policies namespaces max-ops-per-txn repeat]`.
//!
//! Starts a real Northbound ovsdb-server in a temporary directory and prints:
//! cold start until NB is complete (in bounded transactions), a restart with
//! nothing changed (and the operations it wrote), then on the incremental
//! path one pod added and deleted (`repeat` times: median and worst), and
//! one policy edited until committed and seen, and one pod added through a full pass for comparison.

use std::fmt::Write;
use std::path::Path;
use std::time::Instant;

use ovn_bridge::controller::batch::DEFAULT_MAX_OPS_PER_TXN;
use ovn_bridge::controller::manifest::{parse_str, Loaded};
use ovn_bridge::controller::model::Object;
use ovn_bridge::controller::run::{Controller, Options};
use ovn_bridge::controller::Config;

/// One object from YAML.
fn one(yaml: &str) -> anyhow::Result<Object> {
    let mut l = Loaded::default();
    parse_str(yaml, Path::new("extra.yaml"), &mut l);
    anyhow::ensure!(l.errors.is_empty(), "{:?}", l.errors.first());
    l.objects.pop().ok_or_else(|| anyhow::anyhow!("no object"))
}

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Median and worst of (milliseconds, operations) samples.
fn figures(samples: &[(f64, usize)]) -> String {
    let mut ms: Vec<f64> = samples.iter().map(|s| s.0).collect();
    ms.sort_by(f64::total_cmp);
    let ops = samples.first().map_or(0, |s| s.1);
    match (ms.get(ms.len() / 2), ms.last()) {
        (Some(median), Some(worst)) if ms.len() > 1 => {
            format!(
                "median {median:.1} ms, worst {worst:.1} ms over {} runs, {ops} operations",
                ms.len()
            )
        }
        (Some(one), _) => format!("{one:.1} ms, {ops} operations"),
        _ => "no runs".to_string(),
    }
}

fn main() -> anyhow::Result<()> {
    let (pods, services, policies, namespaces) =
        (arg(1, 10_000), arg(2, 1_000), arg(3, 500), arg(4, 50));
    let max_ops_per_txn = arg(5, DEFAULT_MAX_OPS_PER_TXN);
    let repeat = arg(6, 20).max(1);
    let mut y = String::new();
    for n in 0..namespaces {
        writeln!(
            y,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}}}"
        )?;
    }
    writeln!(y, "---\napiVersion: kubeovn.io/v1\nkind: Subnet\nmetadata: {{name: ovn-default}}\nspec: {{cidrBlock: 10.16.0.0/16, default: true}}")?;
    for n in 0..4 {
        writeln!(
            y,
            "---\napiVersion: v1\nkind: Node\nmetadata: {{name: node{n}}}"
        )?;
    }
    for p in 0..pods {
        let ns = p % namespaces;
        writeln!(y, "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod{p}, namespace: ns{ns}, labels: {{app: app{}}}, annotations: {{ovn.kubernetes.io/ingress_rate: \"{}\"}}}}\nspec: {{containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}", p % 20, if p % 10 == 0 { 100 } else { 0 })?;
    }
    for s in 0..services {
        let ns = s % namespaces;
        writeln!(y, "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{s}, namespace: ns{ns}}}\nspec: {{clusterIP: 10.96.{}.{}, ports: [{{name: http, port: 80}}]}}", s / 250, s % 250 + 1)?;
        writeln!(y, "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc{s}-x, namespace: ns{ns}, labels: {{kubernetes.io/service-name: svc{s}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [10.16.{}.{}]}}, {{addresses: [10.16.{}.{}]}}]", s / 200, s % 200 + 2, s / 200 + 10, s % 200 + 2)?;
    }
    for p in 0..policies {
        let ns = p % namespaces;
        writeln!(y, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{p}, namespace: ns{ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: app{}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: app{}}}}}}}, {{ipBlock: {{cidr: 192.168.0.0/16}}}}]\n    ports: [{{port: http}}, {{port: 443}}]", p % 20, (p + 1) % 20)?;
    }
    let mut loaded = Loaded::default();
    parse_str(&y, Path::new("generated.yaml"), &mut loaded);
    anyhow::ensure!(loaded.errors.is_empty(), "{:?}", loaded.errors.first());
    let (state, _) = loaded.into_state();

    let server = ovsdb::testing::OvsdbServer::start_nb()?;
    let remotes = vec![server.remote.clone()];
    let dir = tempfile::tempdir()?;
    let state_file = dir.path().join("state.json");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let t = Instant::now();
        let mut ctl = Controller::connect(&remotes, Config::default(), Some(state_file.clone())).await?;
        ctl.set_options(Options { max_ops_per_txn, ..Options::default() });
        let r = ctl.reconcile(&state).await?;
        let cold = t.elapsed();
        println!("cold start: {pods} pods, {services} services, {policies} policies, {namespaces} namespaces: {:.2} s, {} operations in {} transaction(s), {} events", cold.as_secs_f64(), r.operations, ctl.stats.transactions, r.events.len());
        drop(ctl);

        let t = Instant::now();
        let mut ctl = Controller::connect(&remotes, Config::default(), Some(state_file.clone())).await?;
        let r = ctl.reconcile(&state).await?;
        println!("restart, nothing changed: {:.2} s, {} operations written", t.elapsed().as_secs_f64(), r.operations);

        println!("  full pass on the same controller: {}", {
            let t = Instant::now();
            let r = ctl.resync().await?;
            format!("{:.2} s, {} operations", t.elapsed().as_secs_f64(), r.operations)
        });

        let extra = one("apiVersion: v1\nkind: Pod\nmetadata: {name: extra, namespace: ns0, labels: {app: app1}}\nspec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}")?;
        let (mut added, mut deleted) = (Vec::new(), Vec::new());
        for _ in 0..repeat {
            let t = Instant::now();
            let r = ctl.apply(std::slice::from_ref(&extra), &[]).await?;
            anyhow::ensure!(!r.full, "one pod took the full path");
            added.push((t.elapsed().as_secs_f64() * 1e3, r.operations));
            let t = Instant::now();
            let r = ctl.apply(&[], &[extra.object_ref()]).await?;
            deleted.push((t.elapsed().as_secs_f64() * 1e3, r.operations));
        }
        let (a, d) = (figures(&added), figures(&deleted));
        println!("one pod added (incremental) until committed and seen: {a}");
        println!("that pod deleted (incremental): {d}");
        let r = ctl.apply(std::slice::from_ref(&extra), &[]).await?;
        let r2 = ctl.apply(&[], &[extra.object_ref()]).await?;
        anyhow::ensure!(r.operations > 0 && r2.operations > 0, "the pod was written and removed");

        let np = one("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np0, namespace: ns0}\nspec:\n  podSelector: {matchLabels: {app: app0}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: app2}}}]\n    ports: [{port: 9090}]")?;
        let t = Instant::now();
        let r = ctl.apply(&[np], &[]).await?;
        println!("one policy edited (incremental): {:.1} ms, {} operations", t.elapsed().as_secs_f64() * 1e3, r.operations);

        let mut more = ctl.state().clone();
        more.apply(one("apiVersion: v1\nkind: Pod\nmetadata: {name: extra2, namespace: ns0}\nspec: {containers: [{name: c}]}")?);
        let t = Instant::now();
        let r = ctl.reconcile(&more).await?;
        println!("one pod added through a full pass (for comparison): {:.1} ms, {} operations", t.elapsed().as_secs_f64() * 1e3, r.operations);
        println!("passes: {} full, {} incremental; {} transactions, {} operations; row index built {} time(s)", ctl.stats.full_passes, ctl.stats.incremental_passes, ctl.stats.transactions, ctl.stats.operations, ctl.row_index().rebuilds());
        anyhow::Ok(())
    })?;
    Ok(())
}
