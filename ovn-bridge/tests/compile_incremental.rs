//! Incremental compilation against the real NB + ovn-northd + SB: a
//! compilation that reuses the per-flow results of earlier ones
//! (`compile_incremental` with a `CompileMemo`) must publish exactly the
//! slot a full compilation of the same snapshot publishes, after every kind
//! of change the node sees (a pod added and bound, an address set edited,
//! an ACL added, a port unbound), while compiling only the flows the change
//! touched. Prints the time of both (not asserted).

#[path = "common/trace.rs"]
mod trace;

use std::collections::HashMap;
use std::time::Instant;

use ovn_bridge::compile::{compile, compile_incremental, CompileMemo, CompileOptions};
use ovsdb::Database;
use trace::Central;

fn snapshot(c: &Central) -> std::sync::Arc<Database> {
    c.snapshot()
}

fn opts() -> CompileOptions {
    CompileOptions {
        chassis: "hv1".into(),
        port_map: HashMap::from([("p1".to_string(), 0u16), ("p2".to_string(), 1)]),
    }
}

/// Compiles `db` both ways; asserts the slots are equal and returns
/// (flows compiled, flows reused).
fn both(db: &Database, memo: &mut CompileMemo, what: &str) -> (usize, usize) {
    let t0 = Instant::now();
    let full = compile(db, &opts()).expect("full compile");
    let t_full = t0.elapsed();
    let t0 = Instant::now();
    let inc = compile_incremental(db, &opts(), None, memo).expect("incremental compile");
    let t_inc = t0.elapsed();
    assert_eq!(full.stats, inc.stats, "{what}: statistics differ");
    let (a, b) = (full.builder.finish(7, 0), inc.builder.finish(7, 0));
    assert!(
        a == b,
        "{what}: the incremental slot differs from the full one"
    );
    println!(
        "{what}: {} logical flows, {} compiled, {} reused; full {:.1} ms, incremental {:.1} ms",
        inc.stats.logical_flows,
        memo.compiled,
        memo.reused,
        t_full.as_secs_f64() * 1e3,
        t_inc.as_secs_f64() * 1e3
    );
    (memo.compiled, memo.reused)
}

#[test]
fn incremental_compilation_equals_a_full_one_after_each_change() {
    let c = Central::start();
    trace::switches_behind_a_router(&c);
    for i in 1..=20 {
        let sw = if i % 2 == 0 { "sw0" } else { "sw1" };
        let net = if i % 2 == 0 { 0 } else { 1 };
        let p = format!("p{i}");
        c.nb(&format!("lsp-add {sw} {p}"));
        let addr = format!("50:54:00:00:00:{i:02x} 10.0.{net}.{}", 10 + i);
        c.nb_args(&["lsp-set-addresses", &p, &addr]);
        c.nb_args(&["lsp-set-port-security", &p, &addr]);
    }
    // A NetworkPolicy as Kube-OVN writes it: a port group with an ACL on an
    // address set, and a Service.
    c.nb_args(&[
        "create",
        "Address_Set",
        "name=as_clients",
        "addresses=\"10.0.0.12\"",
    ]);
    c.nb("pg-add pg_web p1 p3");
    c.nb_args(&[
        "acl-add",
        "pg_web",
        "to-lport",
        "1001",
        "outport == @pg_web && ip4.src == $as_clients",
        "allow-related",
    ]);
    c.nb_args(&[
        "acl-add",
        "pg_web",
        "to-lport",
        "1000",
        "outport == @pg_web && ip",
        "drop",
    ]);
    c.nb_args(&[
        "lb-add",
        "lb0",
        "10.96.0.10:80",
        "10.0.1.11:8080,10.0.1.13:8080",
        "tcp",
    ]);
    c.nb("ls-lb-add sw0 lb0");
    c.sb("chassis-add hv1 geneve 127.0.0.1");
    c.sb("chassis-add hv2 geneve 127.0.0.2");
    c.sync();
    for i in 1..=20 {
        let ch = if i <= 10 { "hv1" } else { "hv2" };
        c.sb(&format!("lsp-bind p{i} {ch}"));
    }
    c.sync();

    let mut memo = CompileMemo::default();
    let (compiled, reused) = both(&snapshot(&c), &mut memo, "first compilation");
    assert_eq!(reused, 0);
    let flows = compiled;
    assert!(flows > 100, "{flows} flows");
    // The same snapshot again: nothing to compile.
    let (compiled, reused) = both(&snapshot(&c), &mut memo, "unchanged");
    assert_eq!((compiled, reused), (0, flows));

    // A pod added and bound here.
    c.nb("lsp-add sw0 p21");
    c.nb_args(&["lsp-set-addresses", "p21", "50:54:00:00:00:21 10.0.0.40"]);
    c.sync();
    // Mapped to a fastpath port here but not claimed yet, the pod compiles
    // as bound here: the node publishes these tables before its claim is
    // back from the Southbound, and the claim then changes nothing.
    let mapped = CompileOptions {
        port_map: opts()
            .port_map
            .into_iter()
            .chain([("p21".to_string(), 2u16)])
            .collect(),
        ..opts()
    };
    let unclaimed = snapshot(&c);
    c.sb("lsp-bind p21 hv1");
    c.sync();
    let claimed = snapshot(&c);
    let tables = |db: &Database, o: &CompileOptions| compile(db, o).expect("compile").builder;
    assert!(
        tables(&unclaimed, &mapped).same_content(&tables(&claimed, &mapped)),
        "a mapped port's claim changes the tables"
    );
    assert!(
        !tables(&unclaimed, &opts()).same_content(&tables(&claimed, &opts())),
        "an unmapped port's claim changes nothing"
    );
    let (compiled, reused) = both(&snapshot(&c), &mut memo, "pod added");
    assert!(
        compiled > 0 && compiled < flows / 4,
        "{compiled} of {flows}"
    );
    assert!(reused > flows / 2, "{reused}");

    // The policy's address set edited: its flows recompile, others not.
    c.nb_args(&[
        "add",
        "Address_Set",
        "as_clients",
        "addresses",
        "\"10.0.0.14\"",
    ]);
    c.sync();
    let (compiled, _) = both(&snapshot(&c), &mut memo, "address set edited");
    assert!(compiled > 0 && compiled < flows / 4, "{compiled}");

    // A port joins the port group; an ACL is added.
    c.nb("pg-set-ports pg_web p1 p3 p5");
    c.nb_args(&[
        "acl-add",
        "pg_web",
        "from-lport",
        "1002",
        "inport == @pg_web && udp",
        "allow",
    ]);
    c.sync();
    let (compiled, _) = both(&snapshot(&c), &mut memo, "port group and ACL");
    assert!(compiled > 0, "{compiled}");

    // A pod moves to another chassis (is_chassis_resident, remote ports).
    c.sb("lsp-unbind p3");
    c.sb("lsp-bind p3 hv2");
    c.sync();
    both(&snapshot(&c), &mut memo, "pod moved to another chassis");

    // A pod deleted: its flows leave the memo.
    let before = memo.len();
    c.nb("lsp-del p21");
    c.sync();
    both(&snapshot(&c), &mut memo, "pod deleted");
    assert!(memo.len() < before, "{} >= {before}", memo.len());
}
