//! Against a real standalone ovsdb-server holding the OVN Northbound schema.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ovsdb::testing::{server_rows, OvsdbServer};
use ovsdb::{
    nb, transact_optimistic, Client, ClientOptions, Condition, Database, Datum, MonitorTable,
    Mutation, Mutator, Operation, Replica, Row, TableRow, TransactError, Uuid,
};

const NB: &str = "OVN_Northbound";

async fn connect(server: &OvsdbServer) -> Client {
    let opts = ClientOptions::default()
        .require_row::<nb::LogicalSwitch>()
        .require_row::<nb::LogicalSwitchPort>();
    Client::connect(std::slice::from_ref(&server.remote), NB, opts)
        .await
        .expect("connect")
}

fn select(table: &str, conds: Vec<Condition>) -> Operation {
    Operation::Select {
        table: table.into(),
        conditions: conds,
        columns: None,
    }
}

/// True when the replica's `table` equals the server's (all columns).
fn same_as_server(client: &Client, db: &Database, remote: &str, table: &str) -> bool {
    let schema = client.schema();
    let Some(ts) = schema.tables.get(table) else {
        return false;
    };
    let Ok(rows) = server_rows(remote, NB, table) else {
        return false;
    };
    let server: Vec<Row> = rows
        .iter()
        .filter_map(|r| Row::from_json_select(table, ts, r).ok())
        .collect();
    let Some(t) = db.table(table) else {
        return false;
    };
    t.len() == server.len()
        && server.iter().all(|s| {
            t.get(&s.uuid)
                .is_some_and(|r| ts.columns.keys().all(|c| r.get(c) == s.get(c)))
        })
}

async fn converge(client: &Client, replica: &mut Replica, remote: &str, tables: &[&str]) {
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let db = replica.snapshot();
            let remote = remote.to_string();
            let client2 = client.clone();
            let tables2: Vec<String> = tables.iter().map(|s| s.to_string()).collect();
            let ok = tokio::task::spawn_blocking(move || {
                tables2
                    .iter()
                    .all(|t| same_as_server(&client2, &db, &remote, t))
            })
            .await
            .unwrap();
            if ok {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), replica.changed()).await;
        }
    })
    .await;
    if r.is_err() {
        let db = replica.snapshot();
        for t in tables {
            eprintln!("replica {t}: {:?}", db.table(t));
            eprintln!("server {t}: {:?}", server_rows(remote, NB, t));
        }
    }
    assert!(r.is_ok(), "replica did not converge on {tables:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_kind() {
    let server = OvsdbServer::start_nb().unwrap();
    let client = connect(&server).await;

    // insert with uuid-name and named-uuid references, plus a comment.
    let port = nb::LogicalSwitchPort {
        name: "p1".into(),
        addresses: ["00:00:00:00:00:01 10.0.0.1".to_string()].into(),
        ..Default::default()
    };
    let mut ls = nb::LogicalSwitch {
        name: "sw0".into(),
        ..Default::default()
    }
    .to_columns();
    ls.insert("ports".into(), Datum::named_uuid("p1"));
    let r = client
        .transact(vec![
            port.insert_op(Some("p1")),
            Operation::insert("Logical_Switch", ls, Some("sw")),
            Operation::Comment("test insert".into()),
        ])
        .await
        .unwrap();
    assert_eq!(r.len(), 3);
    let port_uuid = r[0].uuid.expect("port uuid");
    let sw_uuid = r[1].uuid.expect("switch uuid");

    let r = client
        .transact(vec![select(
            "Logical_Switch",
            vec![Condition::uuid(sw_uuid)],
        )])
        .await
        .unwrap();
    let rows = r[0].rows.as_ref().unwrap();
    assert_eq!(rows.len(), 1);
    let sw = nb::LogicalSwitch::from_row(&rows[0]).unwrap();
    assert_eq!(sw.uuid, sw_uuid);
    assert_eq!(sw.ports, [port_uuid].into());

    // update and mutate (map insert/delete, set insert/delete, integer +=).
    let r = client
        .transact(vec![
            Operation::Update {
                table: "Logical_Switch".into(),
                conditions: vec![Condition::eq("name", "sw0")],
                row: [(
                    "other_config".to_string(),
                    Datum::map([("a", "1"), ("b", "2")]),
                )]
                .into(),
            },
            Operation::Mutate {
                table: "Logical_Switch".into(),
                conditions: vec![Condition::uuid(sw_uuid)],
                mutations: vec![
                    Mutation::new("other_config", Mutator::Delete, Datum::set(["a"])),
                    Mutation::new("external_ids", Mutator::Insert, Datum::map([("k", "v")])),
                ],
            },
            Operation::Mutate {
                table: "Logical_Switch_Port".into(),
                conditions: vec![Condition::eq("name", "p1")],
                mutations: vec![
                    Mutation::new("addresses", Mutator::Insert, Datum::set(["router"])),
                    Mutation::new(
                        "addresses",
                        Mutator::Delete,
                        Datum::set(["00:00:00:00:00:01 10.0.0.1"]),
                    ),
                ],
            },
            Operation::insert("NB_Global", Default::default(), None),
            Operation::Mutate {
                table: "NB_Global".into(),
                conditions: vec![],
                mutations: vec![Mutation::new("nb_cfg", Mutator::Add, 5i64)],
            },
        ])
        .await
        .unwrap();
    assert_eq!(r[0].count, Some(1));
    assert_eq!(r[1].count, Some(1));
    assert_eq!(r[4].count, Some(1));
    let r = client
        .transact(vec![
            select("Logical_Switch", vec![Condition::uuid(sw_uuid)]),
            select("Logical_Switch_Port", vec![]),
            select("NB_Global", vec![]),
        ])
        .await
        .unwrap();
    let sw = nb::LogicalSwitch::from_row(&r[0].rows.as_ref().unwrap()[0]).unwrap();
    assert_eq!(sw.other_config, [("b".to_string(), "2".to_string())].into());
    assert_eq!(sw.external_ids, [("k".to_string(), "v".to_string())].into());
    let p = nb::LogicalSwitchPort::from_row(&r[1].rows.as_ref().unwrap()[0]).unwrap();
    assert_eq!(p.addresses, ["router".to_string()].into());
    let g = nb::NbGlobal::from_row(&r[2].rows.as_ref().unwrap()[0]).unwrap();
    assert_eq!(g.nb_cfg, 5);

    // wait: the duplicate guard passes for a new name and fails for sw0.
    client
        .transact(vec![Operation::wait_absent(
            "Logical_Switch",
            "name",
            "other",
        )])
        .await
        .unwrap();
    let e = client
        .transact(vec![
            Operation::wait_absent("Logical_Switch", "name", "sw0"),
            nb::LogicalSwitch {
                name: "sw0".into(),
                ..Default::default()
            }
            .insert_op(None),
        ])
        .await
        .unwrap_err();
    match e {
        ovsdb::Error::Transaction(TransactError::OpFailed {
            index, op, error, ..
        }) => {
            assert_eq!(
                (index, op.as_str(), error.as_str()),
                (0, "wait", "timed out")
            );
        }
        other => panic!("unexpected {other:?}"),
    }

    // An op error names its index: tag outside 1..4095.
    let e = client
        .transact(vec![
            Operation::Comment("x".into()),
            Operation::insert(
                "Logical_Switch_Port",
                [
                    ("name".into(), Datum::atom("p9")),
                    ("tag".into(), Datum::atom(5000i64)),
                ]
                .into(),
                None,
            ),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ovsdb::Error::Transaction(TransactError::OpFailed { index: 1, error, .. }) if error == "constraint violation"),
        "{e:?}"
    );

    // Commit errors: a duplicate in a unique index, a dangling reference.
    // (Logical_Switch_Port is not a root table: an orphan port would be
    // collected, so the unique index is exercised on Address_Set.)
    let set = nb::AddressSet {
        name: "as1".into(),
        ..Default::default()
    };
    client.transact(vec![set.insert_op(None)]).await.unwrap();
    let e = client
        .transact(vec![set.insert_op(None)])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ovsdb::Error::Transaction(TransactError::CommitFailed { error, .. }) if error == "constraint violation"),
        "{e:?}"
    );
    let e = client
        .transact(vec![Operation::Mutate {
            table: "Logical_Switch".into(),
            conditions: vec![Condition::uuid(sw_uuid)],
            mutations: vec![Mutation::new(
                "ports",
                Mutator::Insert,
                Datum::uuid(Uuid::from_u128(42)),
            )],
        }])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ovsdb::Error::Transaction(TransactError::CommitFailed { error, .. }) if error == "referential integrity violation"),
        "{e:?}"
    );

    // delete (the port is removed from the switch first; strong reference).
    let r = client
        .transact(vec![
            Operation::Mutate {
                table: "Logical_Switch".into(),
                conditions: vec![Condition::uuid(sw_uuid)],
                mutations: vec![Mutation::new(
                    "ports",
                    Mutator::Delete,
                    Datum::uuid(port_uuid),
                )],
            },
            Operation::Delete {
                table: "Logical_Switch_Port".into(),
                conditions: vec![Condition::uuid(port_uuid)],
            },
        ])
        .await
        .unwrap();
    assert_eq!(r[1].count, Some(1));
    assert!(server
        .nbctl(&["--columns=name", "list", "Logical_Switch_Port"])
        .unwrap()
        .trim()
        .is_empty());
    // Aborted transactions fail at the abort.
    let e = client
        .transact(vec![Operation::Comment("c".into()), Operation::Abort])
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        ovsdb::Error::Transaction(TransactError::OpFailed { index: 1, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_applies_every_diff_kind() {
    let server = OvsdbServer::start_nb().unwrap();
    let client = connect(&server).await;
    let mut replica = client
        .monitor(vec![
            MonitorTable::all("Logical_Switch"),
            MonitorTable::all("Logical_Switch_Port"),
        ])
        .await
        .unwrap();
    let tables = ["Logical_Switch", "Logical_Switch_Port"];
    let steps: &[&[&str]] = &[
        &["ls-add", "sw0"],                                        // row insert
        &["set", "Logical_Switch", "sw0", "other_config:a=1"],     // map add
        &["set", "Logical_Switch", "sw0", "other_config:b=2"],     // map add
        &["set", "Logical_Switch", "sw0", "other_config:a=9"],     // map replace
        &["remove", "Logical_Switch", "sw0", "other_config", "b"], // map remove
        &["lsp-add", "sw0", "p0"],                                 // insert + set add
        &[
            "lsp-set-addresses",
            "p0",
            "00:00:00:00:00:01",
            "00:00:00:00:00:02",
        ], // set add
        &["lsp-set-addresses", "p0", "00:00:00:00:00:02"],         // set remove
        &["lsp-set-type", "p0", "localnet"],                       // scalar
        &["set", "Logical_Switch_Port", "p0", "tag_request=7"],    // optional set
        &["clear", "Logical_Switch_Port", "p0", "tag_request"],    // optional clear
        &["lsp-add", "sw0", "p1"],
        &["lsp-del", "p0"], // set remove + delete
        &["ls-del", "sw0"], // row delete
    ];
    for step in steps {
        eprintln!("step {step:?}");
        server.nbctl(step).unwrap();
        converge(&client, &mut replica, &server.remote, &tables).await;
    }
    assert!(replica
        .snapshot()
        .table("Logical_Switch")
        .unwrap()
        .is_empty());
    // A typed read after a change.
    server
        .nbctl(&[
            "ls-add",
            "sw1",
            "--",
            "set",
            "Logical_Switch",
            "sw1",
            "external_ids:x=y",
        ])
        .unwrap();
    let db = replica
        .wait_for(|db| db.table("Logical_Switch").is_some_and(|t| t.len() == 1))
        .await
        .unwrap();
    let sws = db.rows::<nb::LogicalSwitch>().unwrap();
    assert_eq!(sws[0].name, "sw1");
    assert!(db
        .changes()
        .iter()
        .any(|c| c.kind == ovsdb::ChangeKind::Insert));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_conditions_and_change() {
    let server = OvsdbServer::start_nb().unwrap();
    let client = connect(&server).await;
    for n in ["a", "b", "c"] {
        server.nbctl(&["ls-add", n]).unwrap();
    }
    let replica = client
        .monitor(vec![
            MonitorTable::all("Logical_Switch").with_conditions(vec![Condition::eq("name", "a")])
        ])
        .await
        .unwrap();
    let names = |db: &Database| -> Vec<String> {
        db.rows::<nb::LogicalSwitch>()
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect()
    };
    assert_eq!(names(&replica.snapshot()), vec!["a"]);
    replica
        .set_conditions(
            "Logical_Switch",
            vec![Condition::new("name", ovsdb::Function::Ne, "a")],
        )
        .await
        .unwrap();
    let mut r2 = replica.clone();
    let db = tokio::time::timeout(
        Duration::from_secs(10),
        r2.wait_for(|db| {
            let mut n = names(db);
            n.sort();
            n == ["b", "c"]
        }),
    )
    .await
    .expect("conditions changed")
    .unwrap();
    assert_eq!(db.table("Logical_Switch").unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_reconnects_and_converges() {
    let mut server = OvsdbServer::start_nb().unwrap();
    let opts = ClientOptions {
        backoff_min: Duration::from_millis(50),
        ..Default::default()
    };
    let client = Client::connect(std::slice::from_ref(&server.remote), NB, opts)
        .await
        .unwrap();
    let mut replica = client
        .monitor(vec![MonitorTable::all("Logical_Switch")])
        .await
        .unwrap();
    server.nbctl(&["ls-add", "before"]).unwrap();
    converge(&client, &mut replica, &server.remote, &["Logical_Switch"]).await;
    tokio::task::spawn_blocking(move || {
        server.restart().unwrap();
        server.nbctl(&["ls-add", "after"]).unwrap();
        server.nbctl(&["ls-del", "before"]).unwrap();
        server
    })
    .await
    .map(|server| async move {
        converge(&client, &mut replica, &server.remote, &["Logical_Switch"]).await;
        let names: Vec<String> = replica
            .snapshot()
            .rows::<nb::LogicalSwitch>()
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, vec!["after"]);
        assert!(client.status().sessions >= 2, "{:?}", client.status());
        // Transactions work again on the new connection.
        client
            .transact(vec![Operation::wait_absent("Logical_Switch", "name", "x")])
            .await
            .unwrap();
    })
    .unwrap()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_transaction_retries_on_conflict() {
    let server = OvsdbServer::start_nb().unwrap();
    let client = connect(&server).await;
    server
        .nbctl(&[
            "ls-add",
            "sw",
            "--",
            "set",
            "Logical_Switch",
            "sw",
            "external_ids:n=0",
        ])
        .unwrap();
    let mut replica = client
        .monitor(vec![MonitorTable::of::<nb::LogicalSwitch>()])
        .await
        .unwrap();
    let db = replica
        .wait_for(|db| db.table("Logical_Switch").is_some_and(|t| t.len() == 1))
        .await
        .unwrap();
    let uuid = db.rows::<nb::LogicalSwitch>().unwrap()[0].uuid;
    let attempts = AtomicUsize::new(0);
    let remote = server.remote.clone();
    let r = transact_optimistic(&client, &mut replica, 5, |txn| {
        let n = attempts.fetch_add(1, Ordering::SeqCst);
        let sw = txn
            .read_row::<nb::LogicalSwitch>(uuid)
            .expect("row")
            .expect("typed");
        let cur: i64 = sw
            .external_ids
            .get("n")
            .and_then(|v| v.parse().ok())
            .unwrap_or(-100);
        if n == 0 {
            // Someone else changes the value between our read and our commit.
            ovsdb::testing::run(
                "ovn-nbctl",
                &[
                    &format!("--db={remote}"),
                    "set",
                    "Logical_Switch",
                    "sw",
                    "external_ids:n=10",
                ],
            )
            .unwrap();
        }
        let mut sw2 = sw.clone();
        sw2.external_ids.insert("n".into(), (cur + 1).to_string());
        txn.push(sw2.update_op(&["external_ids"]));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].count, Some(1));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let out = server
        .nbctl(&["get", "Logical_Switch", "sw", "external_ids:n"])
        .unwrap();
    assert_eq!(out.trim().trim_matches('"'), "11");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_column_is_a_clear_error() {
    let server = OvsdbServer::start_nb().unwrap();
    let opts = ClientOptions {
        required: vec![(
            "Logical_Switch".into(),
            vec!["name".into(), "no_such_column".into()],
        )],
        ..Default::default()
    };
    let e = Client::connect(std::slice::from_ref(&server.remote), NB, opts)
        .await
        .err()
        .expect("must fail");
    let msg = e.to_string();
    assert!(msg.contains("Logical_Switch.no_such_column"), "{msg}");
    // And the SB rows are generated too.
    assert!(ovsdb::sb::TABLES.iter().any(|(t, _)| *t == "Port_Binding"));
    assert_eq!(<ovsdb::sb::PortBinding as TableRow>::TABLE, "Port_Binding");
}
