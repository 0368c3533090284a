//! The Kubernetes source: kube-rs watchers on Namespaces, Pods, Services,
//! EndpointSlices, NetworkPolicies, Nodes and Kube-OVN Subnets feeding the
//! same observed state as the manifest source; a coordination.k8s.io Lease
//! so that only one controller writes; pod annotations written back; the
//! problems a pass finds published as Kubernetes Events on their objects.
//!
//! Owns the API conversation. It must not compute addresses or rows.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::desired::Event as DesiredEvent;
use super::model::{ClusterState, Object, ObjectRef, Subnet};
use super::run::{log_events, Controller};

/// Errors of the Kubernetes source.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// An API request failed.
    #[error("kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// The kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Config(String),
}

/// The kinds the source watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Namespaces.
    Namespace,
    /// Pods.
    Pod,
    /// Services.
    Service,
    /// EndpointSlices.
    EndpointSlice,
    /// NetworkPolicies.
    NetworkPolicy,
    /// Nodes.
    Node,
    /// Subnets.
    Subnet,
}

/// A change reported by a watcher.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// Added or modified.
    Apply(Object),
    /// Deleted.
    Delete(ObjectRef),
    /// The watcher (re)listed everything of a kind: the objects replace
    /// all known objects of that kind (after a watch restart or 410 Gone).
    Resync(Kind, Vec<Object>),
}

/// Applies a watcher event to the observed state.
pub fn apply_event(state: &mut ClusterState, ev: SourceEvent) {
    match ev {
        SourceEvent::Apply(o) => state.apply(o),
        SourceEvent::Delete(r) => {
            state.delete(&r);
        }
        SourceEvent::Resync(kind, objs) => {
            match kind {
                Kind::Namespace => state.namespaces.clear(),
                Kind::Pod => state.pods.clear(),
                Kind::Service => state.services.clear(),
                Kind::EndpointSlice => state.endpoint_slices.clear(),
                Kind::NetworkPolicy => state.network_policies.clear(),
                Kind::Node => state.nodes.clear(),
                Kind::Subnet => state.subnets.clear(),
            }
            for o in objs {
                state.apply(o);
            }
        }
    }
}

/// Streams the events of one kind into `tx` until `tx` closes. The watcher
/// relists on a watch restart or 410 Gone; errors are logged and retried
/// with backoff.
pub async fn watch_kind<K>(
    api: Api<K>,
    kind: Kind,
    wrap: fn(K) -> Object,
    tx: mpsc::Sender<SourceEvent>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    use kube::runtime::WatchStreamExt;
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut buffer: Vec<Object> = Vec::new();
    while let Some(ev) = stream.next().await {
        let out = match ev {
            Ok(watcher::Event::Apply(k)) => Some(SourceEvent::Apply(wrap(k))),
            Ok(watcher::Event::Delete(k)) => Some(SourceEvent::Delete(wrap(k).object_ref())),
            Ok(watcher::Event::Init) => {
                buffer.clear();
                None
            }
            Ok(watcher::Event::InitApply(k)) => {
                buffer.push(wrap(k));
                None
            }
            Ok(watcher::Event::InitDone) => {
                Some(SourceEvent::Resync(kind, std::mem::take(&mut buffer)))
            }
            Err(e) => {
                log::warn!("{kind:?} watch: {e}");
                None
            }
        };
        if let Some(ev) = out {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}

/// Starts one watcher per kind; events arrive on the returned channel.
pub fn spawn_watchers(client: &Client) -> mpsc::Receiver<SourceEvent> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(watch_kind(
        Api::<Namespace>::all(client.clone()),
        Kind::Namespace,
        |k| Object::Namespace(Box::new(k)),
        tx.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<Pod>::all(client.clone()),
        Kind::Pod,
        |k| Object::Pod(Box::new(k)),
        tx.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<Service>::all(client.clone()),
        Kind::Service,
        |k| Object::Service(Box::new(k)),
        tx.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<EndpointSlice>::all(client.clone()),
        Kind::EndpointSlice,
        |k| Object::EndpointSlice(Box::new(k)),
        tx.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<NetworkPolicy>::all(client.clone()),
        Kind::NetworkPolicy,
        |k| Object::NetworkPolicy(Box::new(k)),
        tx.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<Node>::all(client.clone()),
        Kind::Node,
        |k| Object::Node(Box::new(k)),
        tx.clone(),
    ));
    tokio::spawn(watch_kind(
        Api::<Subnet>::all(client.clone()),
        Kind::Subnet,
        |k| Object::Subnet(Box::new(k)),
        tx,
    ));
    rx
}

/// A coordination.k8s.io Lease held by one controller at a time.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaseLock {
    /// A lock on Lease `namespace/name` for `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    /// Takes or renews the lease; true when we hold it afterwards. Uses the
    /// lease's resourceVersion, so two contenders cannot both win.
    pub async fn try_acquire(&self) -> Result<bool, KubeSourceError> {
        let now = k8s_openapi::jiff::Timestamp::now();
        let spec = |transitions: i32| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec(0)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            Some(mut lease) => {
                let cur = lease.spec.clone().unwrap_or_default();
                let mine = cur.holder_identity.as_deref() == Some(self.identity.as_str());
                let expired = match (&cur.renew_time, cur.lease_duration_seconds) {
                    (Some(MicroTime(t)), Some(d)) => now.as_second() > t.as_second() + i64::from(d),
                    _ => true,
                };
                if !mine && !expired {
                    return Ok(false);
                }
                let transitions = cur.lease_transitions.unwrap_or(0) + i32::from(!mine);
                let mut s = spec(transitions);
                if mine {
                    s.acquire_time = cur.acquire_time.clone();
                }
                lease.spec = Some(s);
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

/// Writes Kube-OVN's allocation annotations on a pod (merge patch).
pub async fn patch_pod_annotations(
    client: &Client,
    ns: &str,
    name: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<(), KubeSourceError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({"metadata": {"annotations": annotations}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The identity the controller's Kubernetes Events are reported under.
pub const EVENT_REPORTER: &str = "ovn-bridge-controller";

/// Publishes the problems a pass found (an address conflict, a bad
/// annotation, an invalid Subnet) as Kubernetes Events (`events.k8s.io/v1`,
/// type Warning) on the objects concerned, each once: a problem reported
/// again by a later pass is not published again, and one that a full pass
/// no longer reports is forgotten, so it is published if it comes back.
pub struct EventPublisher {
    recorder: Recorder,
    published: BTreeSet<DesiredEvent>,
}

impl EventPublisher {
    /// A publisher reporting as [`EVENT_REPORTER`] from `instance`.
    pub fn new(client: Client, instance: &str) -> Self {
        EventPublisher {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: EVENT_REPORTER.into(),
                    instance: Some(instance.into()),
                },
            ),
            published: BTreeSet::new(),
        }
    }

    /// Publishes the events not published yet; `full`: the events are all
    /// the problems that exist (a full pass). Returns how many were sent.
    pub async fn publish(
        &mut self,
        state: &ClusterState,
        events: &[DesiredEvent],
        full: bool,
    ) -> Result<usize, KubeSourceError> {
        if full {
            self.published.retain(|e| events.contains(e));
        }
        let mut sent = 0;
        for e in events {
            if self.published.contains(e) {
                continue;
            }
            let Some(reference) = e.regarding().map(|r| object_reference(state, &r)) else {
                continue;
            };
            let ev = KubeEvent {
                type_: EventType::Warning,
                reason: e.reason.to_string(),
                note: Some(e.message.clone()),
                action: "Reconcile".into(),
                secondary: None,
            };
            self.recorder.publish(&ev, &reference).await?;
            self.published.insert(e.clone());
            sent += 1;
        }
        Ok(sent)
    }
}

/// The reference of an observed object (with its uid when known).
pub fn object_reference(state: &ClusterState, r: &ObjectRef) -> ObjectReference {
    fn with_meta(m: &ObjectMeta, kind: &str, api_version: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            uid: m.uid.clone(),
            resource_version: m.resource_version.clone(),
            ..Default::default()
        }
    }
    let (kind, api_version, ns, name) = match r {
        ObjectRef::Pod(k) => {
            if let Some(p) = state.pods.get(k) {
                return with_meta(&p.metadata, "Pod", "v1");
            }
            ("Pod", "v1", Some(k.0.clone()), k.1.clone())
        }
        ObjectRef::Service(k) => ("Service", "v1", Some(k.0.clone()), k.1.clone()),
        ObjectRef::EndpointSlice(k) => (
            "EndpointSlice",
            "discovery.k8s.io/v1",
            Some(k.0.clone()),
            k.1.clone(),
        ),
        ObjectRef::NetworkPolicy(k) => {
            if let Some(p) = state.network_policies.get(k) {
                return with_meta(&p.metadata, "NetworkPolicy", "networking.k8s.io/v1");
            }
            (
                "NetworkPolicy",
                "networking.k8s.io/v1",
                Some(k.0.clone()),
                k.1.clone(),
            )
        }
        ObjectRef::Namespace(n) => ("Namespace", "v1", None, n.clone()),
        ObjectRef::Node(n) => ("Node", "v1", None, n.clone()),
        ObjectRef::Subnet(n) => {
            if let Some(s) = state.subnets.get(n) {
                return with_meta(&s.metadata, "Subnet", "kubeovn.io/v1");
            }
            ("Subnet", "kubeovn.io/v1", None, n.clone())
        }
    };
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(kind.into()),
        name: Some(name),
        namespace: ns,
        ..Default::default()
    }
}

/// Changes gathered from the watchers between two passes: the last word
/// on each object, or a relist that replaces the observed state.
#[derive(Debug, Default)]
pub struct Pending {
    /// Latest state of each object changed: `Some` applied, `None` deleted.
    pub objects: BTreeMap<ObjectRef, Option<Object>>,
    /// A watcher relisted: the whole state is replaced.
    pub relisted: Option<ClusterState>,
}

impl Pending {
    /// Records one watcher event; `current` is the state of the last pass.
    pub fn push(&mut self, current: &ClusterState, ev: SourceEvent) {
        if let Some(s) = self.relisted.as_mut() {
            apply_event(s, ev);
            return;
        }
        match ev {
            SourceEvent::Apply(o) => {
                self.objects.insert(o.object_ref(), Some(o));
            }
            SourceEvent::Delete(r) => {
                self.objects.insert(r, None);
            }
            ev @ SourceEvent::Resync(..) => {
                let mut s = current.clone();
                for (r, o) in std::mem::take(&mut self.objects) {
                    match o {
                        Some(o) => s.apply(o),
                        None => {
                            s.delete(&r);
                        }
                    }
                }
                apply_event(&mut s, ev);
                self.relisted = Some(s);
            }
        }
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.relisted.is_none()
    }
}

/// Runs the Kubernetes source: watches, and while holding the lease makes
/// a pass per batch of events (an incremental one unless a watcher
/// relisted) and writes the pod annotations.
pub async fn run_kube(
    client: Client,
    ctl: &mut Controller,
    lock: LeaseLock,
) -> Result<(), KubeSourceError> {
    let mut rx = spawn_watchers(&client);
    let mut publisher = EventPublisher::new(client.clone(), &lock.identity);
    let mut pending = Pending::default();
    let mut full = true;
    let mut renew = tokio::time::interval(lock.duration / 3);
    let mut resync = tokio::time::interval(Duration::from_secs(5));
    let mut leader = false;
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return Ok(()) };
                pending.push(ctl.state(), ev);
                // Drain what is queued before reconciling.
                while let Ok(ev) = rx.try_recv() {
                    pending.push(ctl.state(), ev);
                }
            }
            _ = renew.tick() => {
                let was = leader;
                leader = lock.try_acquire().await.unwrap_or_else(|e| { log::warn!("lease: {e}"); false });
                if leader && !was {
                    log::info!("became leader");
                    full = true;
                }
            }
            _ = resync.tick() => {
                full |= ctl.resync_due();
            }
        }
        if !leader || (pending.is_empty() && !full) {
            continue;
        }
        let batch = std::mem::take(&mut pending);
        let result = if let Some(s) = batch.relisted {
            ctl.replace_state(s).await
        } else if full {
            let mut s = ctl.state().clone();
            for (r, o) in batch.objects {
                match o {
                    Some(o) => s.apply(o),
                    None => {
                        s.delete(&r);
                    }
                }
            }
            ctl.replace_state(s).await
        } else {
            let mut changed = Vec::new();
            let mut deleted = Vec::new();
            for (r, o) in batch.objects {
                match o {
                    Some(o) => changed.push(o),
                    None => deleted.push(r),
                }
            }
            ctl.apply(&changed, &deleted).await
        };
        full = false;
        match result {
            Ok(r) => {
                log_events(&r.events);
                if let Err(e) = publisher.publish(ctl.state(), &r.events, r.full).await {
                    log::warn!("publish events: {e}");
                }
                for (owner, a) in &r.new_allocations {
                    if let Some((ns, name)) =
                        owner.strip_prefix("pod:").and_then(|k| k.split_once('/'))
                    {
                        let ann = super::pod_annotations(a, ctl.ipam());
                        if let Err(e) = patch_pod_annotations(&client, ns, name, &ann).await {
                            log::warn!("annotate pod {ns}/{name}: {e}");
                        }
                    }
                }
            }
            Err(e) => {
                log::error!("reconcile failed: {e}");
                // The state was taken in; the next pass compares everything.
                full = true;
            }
        }
    }
}
