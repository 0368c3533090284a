//! A 3-member clustered Northbound database whose leader is killed while
//! transactions flow: the client follows the new leader and its replica
//! ends equal to the server's contents.

use std::collections::BTreeSet;
use std::time::Duration;

use ovsdb::testing::{server_rows, Cluster};
use ovsdb::{nb, Client, ClientOptions, MonitorTable, Operation, TableRow};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_new_leader_without_losing_updates() {
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::start_nb(3))
        .await
        .unwrap()
        .unwrap();
    let remotes = cluster.remotes();
    let opts = ClientOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..Default::default()
    };
    let reader = Client::connect(&remotes, "OVN_Northbound", opts.clone())
        .await
        .unwrap();
    let mut replica = reader
        .monitor(vec![MonitorTable::of::<nb::LogicalSwitch>()])
        .await
        .unwrap();
    let writer = Client::connect(&remotes, "OVN_Northbound", opts)
        .await
        .unwrap();
    let first_leader = reader.status().connected.clone().unwrap();

    const N: usize = 60;
    let w = writer.clone();
    let writes = tokio::spawn(async move {
        for i in 0..N {
            let name = format!("ls{i}");
            let ls = nb::LogicalSwitch {
                name: name.clone(),
                ..Default::default()
            };
            // The guard makes a retry after an ambiguous failure idempotent.
            loop {
                let r = w
                    .transact(vec![
                        Operation::wait_absent("Logical_Switch", "name", name.as_str()),
                        ls.insert_op(None),
                    ])
                    .await;
                match r {
                    Ok(_) => break,
                    Err(ovsdb::Error::Transaction(e)) if e.error() == "timed out" => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    });
    // Kill the leader once a third of the switches exist.
    replica
        .wait_for(|db| db.table("Logical_Switch").is_some_and(|t| t.len() >= N / 3))
        .await
        .unwrap();
    let leader = cluster.leader().expect("a leader");
    assert_eq!(cluster.remotes()[leader], first_leader);
    cluster.kill(leader);
    tokio::time::timeout(Duration::from_secs(60), writes)
        .await
        .expect("writes finish")
        .unwrap();

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_leader(Duration::from_secs(30)).unwrap();
        cluster
    })
    .await
    .unwrap();
    let new_leader = cluster.remotes()[cluster.leader().unwrap()].clone();
    let db = tokio::time::timeout(
        Duration::from_secs(30),
        replica.wait_for(|db| db.table("Logical_Switch").is_some_and(|t| t.len() == N)),
    )
    .await
    .expect("replica has every switch")
    .unwrap();
    // Same rows as the server, and no duplicates.
    let server = {
        let r = new_leader.clone();
        tokio::task::spawn_blocking(move || server_rows(&r, "OVN_Northbound", "Logical_Switch"))
            .await
            .unwrap()
            .unwrap()
    };
    let schema = reader.schema();
    let ts = &schema.tables["Logical_Switch"];
    let server_rows: BTreeSet<_> = server
        .iter()
        .map(|r| ovsdb::Row::from_json_select("Logical_Switch", ts, r).unwrap())
        .map(|r| (r.uuid, nb::LogicalSwitch::from_row(&r).unwrap().name))
        .collect();
    let replica_rows: BTreeSet<_> = db
        .rows::<nb::LogicalSwitch>()
        .unwrap()
        .into_iter()
        .map(|s| (s.uuid, s.name))
        .collect();
    assert_eq!(server_rows.len(), N);
    assert_eq!(replica_rows, server_rows);
    let status = reader.status();
    assert_eq!(
        status.connected.as_deref(),
        Some(new_leader.as_str()),
        "{status:?}"
    );
    assert!(status.sessions >= 2);
}
