//! The Kubernetes source against recorded API responses served by a
//! `tower_test` mock: list, watch, watch restart after 410 Gone, and the
//! leader-election Lease.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::client::Body;
use kube::Client;
use ovn_bridge::controller::kube_source::{apply_event, watch_kind, Kind, LeaseLock, SourceEvent};
use ovn_bridge::controller::model::{ClusterState, Object, ObjectRef};
use serde_json::json;
use tokio::sync::mpsc;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn pod(name: &str, rv: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "a", "resourceVersion": rv},
           "spec": {"containers": [{"name": "c"}]}})
}

fn pod_list(rv: &str, items: Vec<serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": rv}, "items": items})).unwrap()
}

fn watch_lines(events: &[serde_json::Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend(serde_json::to_vec(e).unwrap());
        out.push(b'\n');
    }
    out
}

async fn serve(handle: &mut Handle, expect_watch: bool, body: Vec<u8>) -> String {
    let (req, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("the watcher sent a request")
        .expect("service alive");
    let uri = req.uri().to_string();
    assert_eq!(uri.contains("watch=true"), expect_watch, "{uri}");
    send.send_response(
        Response::builder()
            .status(StatusCode::OK)
            .body(Body::from(body))
            .unwrap(),
    );
    uri
}

async fn next(rx: &mut mpsc::Receiver<SourceEvent>) -> SourceEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event")
        .expect("channel open")
}

fn names(objs: &[Object]) -> Vec<String> {
    objs.iter()
        .map(|o| match o.object_ref() {
            ObjectRef::Pod((_, n)) => n,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn pods_are_listed_watched_and_relisted_after_410_gone() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let (tx, mut rx) = mpsc::channel(16);
    tokio::spawn(watch_kind(
        Api::<Pod>::all(client),
        Kind::Pod,
        |p| Object::Pod(Box::new(p)),
        tx,
    ));
    let mut state = ClusterState::default();

    // Initial list.
    let uri = serve(&mut handle, false, pod_list("10", vec![pod("p1", "9")])).await;
    assert!(uri.starts_with("/api/v1/pods"), "{uri}");
    let ev = next(&mut rx).await;
    match &ev {
        SourceEvent::Resync(Kind::Pod, objs) => assert_eq!(names(objs), ["p1"]),
        other => panic!("{other:?}"),
    }
    apply_event(&mut state, ev);

    // Watch from the list's resourceVersion: one pod added, then 410 Gone.
    let uri = serve(
        &mut handle,
        true,
        watch_lines(&[
            json!({"type": "ADDED", "object": pod("p2", "11")}),
            json!({"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "status": "Failure",
                    "message": "too old resource version", "reason": "Expired", "code": 410}}),
        ]),
    )
    .await;
    assert!(uri.contains("resourceVersion=10"), "{uri}");
    let ev = next(&mut rx).await;
    assert!(
        matches!(&ev, SourceEvent::Apply(o) if names(std::slice::from_ref(o)) == ["p2"]),
        "{ev:?}"
    );
    apply_event(&mut state, ev);
    assert_eq!(state.pods.len(), 2);

    // The watcher starts over with a list; p1 is gone meanwhile.
    serve(&mut handle, false, pod_list("20", vec![pod("p2", "11")])).await;
    let ev = next(&mut rx).await;
    match &ev {
        SourceEvent::Resync(Kind::Pod, objs) => assert_eq!(names(objs), ["p2"]),
        other => panic!("{other:?}"),
    }
    apply_event(&mut state, ev);
    assert_eq!(
        state.pods.keys().map(|k| k.1.as_str()).collect::<Vec<_>>(),
        ["p2"],
        "the relist replaced the store"
    );

    // Watch again, from the new resourceVersion: a deletion.
    let uri = serve(
        &mut handle,
        true,
        watch_lines(&[json!({"type": "DELETED", "object": pod("p2", "21")})]),
    )
    .await;
    assert!(uri.contains("resourceVersion=20"), "{uri}");
    let ev = next(&mut rx).await;
    assert!(
        matches!(&ev, SourceEvent::Delete(ObjectRef::Pod((ns, n))) if ns == "a" && n == "p2"),
        "{ev:?}"
    );
    apply_event(&mut state, ev);
    assert!(state.pods.is_empty());
}

#[tokio::test]
async fn lease_is_created_when_absent_and_respected_when_held() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let lock = LeaseLock::new(
        client,
        "kube-system",
        "ovn-bridge-controller",
        "me",
        Duration::from_secs(15),
    );

    let server = tokio::spawn(async move {
        // 1st attempt: GET 404, then POST.
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), "GET");
        assert!(req
            .uri()
            .path()
            .ends_with("/namespaces/kube-system/leases/ovn-bridge-controller"));
        let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404});
        send.send_response(
            Response::builder()
                .status(404)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), "POST");
        let body = http_body_util::BodyExt::collect(req.into_body())
            .await
            .unwrap()
            .to_bytes();
        let lease: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "me");
        send.send_response(
            Response::builder()
                .status(201)
                .body(Body::from(body.to_vec()))
                .unwrap(),
        );
        // 2nd attempt: held by someone else, renewed just now.
        let (_req, send) = handle.next_request().await.unwrap();
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let held = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "ovn-bridge-controller", "namespace": "kube-system", "resourceVersion": "5"},
            "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15, "renewTime": now}});
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(serde_json::to_vec(&held).unwrap()))
                .unwrap(),
        );
    });
    assert!(lock.try_acquire().await.unwrap(), "absent lease is taken");
    assert!(
        !lock.try_acquire().await.unwrap(),
        "a fresh lease of another holder is respected"
    );
    server.await.unwrap();
}

/// Two pods ask for one static address: the loser gets a Warning Event
/// (events.k8s.io/v1) naming the address and the holder, published once.
#[tokio::test]
async fn address_conflict_becomes_a_kubernetes_event_on_the_pod() {
    use ovn_bridge::controller::ipam::Ipam;
    use ovn_bridge::controller::kube_source::{EventPublisher, EVENT_REPORTER};
    use ovn_bridge::controller::{sync_ipam, Config};

    let mut state = ClusterState::default();
    for (name, uid) in [("first", "uid-1"), ("second", "uid-2")] {
        let p: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "a", "uid": uid, "resourceVersion": "7",
                         "annotations": {"ovn.kubernetes.io/ip_address": "10.16.0.9"}},
            "spec": {"containers": [{"name": "c"}]}}))
        .unwrap();
        state.apply(Object::Pod(Box::new(p)));
    }
    let mut ipam = Ipam::new();
    let events = sync_ipam(&state, &Config::default(), &mut ipam, &Default::default());
    assert_eq!(
        ipam.holder(&"10.16.0.9".parse().unwrap()),
        Some("pod:a/first"),
        "one holder"
    );
    assert_eq!(events.len(), 1, "{events:?}");

    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "default");
    let mut publisher = EventPublisher::new(client, "controller-0");
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), "POST");
        assert_eq!(
            req.uri().path(),
            "/apis/events.k8s.io/v1/namespaces/a/events"
        );
        let body = http_body_util::BodyExt::collect(req.into_body())
            .await
            .unwrap()
            .to_bytes();
        let ev: serde_json::Value = serde_json::from_slice(&body).unwrap();
        send.send_response(
            Response::builder()
                .status(201)
                .body(Body::from(body.to_vec()))
                .unwrap(),
        );
        // Nothing else is sent: the same problem is published once.
        let more = tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await;
        assert!(more.is_err(), "a second request was sent");
        ev
    });
    let sent = publisher.publish(&state, &events, true).await.unwrap();
    assert_eq!(sent, 1);
    let again = publisher.publish(&state, &events, true).await.unwrap();
    assert_eq!(again, 0, "already published");
    let ev = server.await.unwrap();
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["reason"], "AddressConflict");
    assert_eq!(ev["reportingController"], EVENT_REPORTER);
    assert_eq!(ev["regarding"]["kind"], "Pod");
    assert_eq!(ev["regarding"]["name"], "second");
    assert_eq!(ev["regarding"]["uid"], "uid-2");
    let note = ev["note"].as_str().unwrap();
    assert!(
        note.contains("10.16.0.9") && note.contains("pod a/first"),
        "{note}"
    );
}
