//! A fake server on a unix socket that misbehaves (garbage, truncated JSON, a
//! huge message, a wrong response id, a malformed update) before behaving: the
//! client reports errors, never panics, reconnects, and falls back from
//! `monitor_cond_since` to `monitor_cond` to `monitor`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ovsdb::codec::JsonStreamDecoder;
use ovsdb::{Client, ClientOptions, Datum, MonitorTable};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const ROW: &str = "0d1b4a6c-6c5e-4c47-9a1c-5dfd4a8e2b1c";

async fn read_msg(s: &mut UnixStream, dec: &mut JsonStreamDecoder) -> Option<Value> {
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(Some(v)) = dec.next_message() {
            return Some(v);
        }
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        dec.push(&buf[..n]);
    }
}

async fn send(s: &mut UnixStream, v: Value) {
    let _ = s.write_all(v.to_string().as_bytes()).await;
}

async fn serve(k: usize, mut s: UnixStream, echo_answered: Arc<AtomicBool>) {
    let mut dec = JsonStreamDecoder::new(1 << 20);
    let Some(first) = read_msg(&mut s, &mut dec).await else {
        return;
    };
    let id = first["id"].clone();
    match k {
        0 => return drop(s.write_all(b"garbage!!").await),
        1 => return drop(s.write_all(br#"{"id":1,"result":[{"rows":["#).await),
        2 => {
            let huge = format!(r#"{{"id":1,"result":"{}"}}"#, "a".repeat(200_000));
            return drop(s.write_all(huge.as_bytes()).await);
        }
        3 => return send(&mut s, json!({"id": 999, "result": [], "error": null})).await,
        _ => {}
    }
    // A well-behaved (if old) standalone server from here on.
    send(
        &mut s,
        json!({"id": "probe", "method": "echo", "params": ["hi"]}),
    )
    .await;
    let mut msg = Some(first);
    while let Some(m) = msg {
        let id = m["id"].clone();
        if id == json!("probe") {
            echo_answered.store(m["result"] == json!(["hi"]), Ordering::SeqCst);
        }
        match m["method"].as_str() {
            Some("transact") if m["params"][0] == json!("_Server") => {
                send(&mut s, json!({"id": id, "result": null, "error": {"error": "unknown database"}})).await
            }
            Some("get_schema") => {
                send(&mut s, json!({"id": id, "error": null, "result": {"name": "Test", "version": "1.0.0", "tables": {
                    "T": {"columns": {"name": {"type": "string"},
                                      "tags": {"type": {"key": "string", "min": 0, "max": "unlimited"}}}}}}}))
                .await
            }
            Some("monitor_cond_since") | Some("monitor_cond") => {
                send(&mut s, json!({"id": id, "result": null, "error": "unknown method"})).await
            }
            Some("monitor") => {
                send(&mut s, json!({"id": id, "error": null, "result": {"T": {ROW: {"new": {"name": "a", "tags": ["set", ["x", "y"]]}}}}})).await;
                if k == 4 {
                    // Malformed: a row key that is not a uuid.
                    send(&mut s, json!({"id": null, "method": "update", "params": [m["params"][1], {"T": {"nope": {}}}]})).await;
                } else {
                    send(&mut s, json!({"id": null, "method": "update", "params": [m["params"][1],
                        {"T": {ROW: {"old": {"name": "a"}, "new": {"name": "b", "tags": "z"}}}}]})).await;
                }
            }
            Some("echo") => send(&mut s, json!({"id": id, "result": m["params"], "error": null})).await,
            _ => {}
        }
        msg = read_msg(&mut s, &mut dec).await;
    }
    let _ = id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_server_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let echo = Arc::new(AtomicBool::new(false));
    let (a, e) = (accepted.clone(), echo.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let k = a.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(k, s, e.clone()));
        }
    });
    let opts = ClientOptions {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        max_message: 64 * 1024,
        ..Default::default()
    };
    let client = Client::connect(&[format!("unix:{}", path.display())], "Test", opts)
        .await
        .expect("connects after the bad attempts");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        5,
        "four bad connections were dropped"
    );
    let mut replica = client.monitor(vec![MonitorTable::all("T")]).await.unwrap();
    let uuid = ROW.parse().unwrap();
    let db = tokio::time::timeout(
        Duration::from_secs(10),
        replica.wait_for(|db| {
            db.table("T")
                .and_then(|t| t.get(&uuid))
                .is_some_and(|r| r.get("name") == Some(&Datum::atom("b")))
        }),
    )
    .await
    .expect("replica converges after the malformed update")
    .unwrap();
    let row = db.table("T").unwrap().get(&uuid).unwrap();
    assert_eq!(row.get("tags"), Some(&Datum::set(["z"])));
    assert!(
        accepted.load(Ordering::SeqCst) >= 6,
        "malformed update forced a reconnection"
    );
    assert!(client.status().sessions >= 2);
    assert!(echo.load(Ordering::SeqCst), "server echo was answered");
}
