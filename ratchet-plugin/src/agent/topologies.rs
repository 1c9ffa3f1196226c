//! `ratchet agent --watch-topologies`: the topology from the Kubernetes API,
//! as meshnet-cni's Topology objects give it, so tooling written for meshnet
//! (KNE, ...) drives ratchet unchanged.
//!
//! Every agent watches every Topology object (kube-rs's watcher and
//! reflector: a list, then a watch resumed where it left off) and writes the
//! topology they make ([`meshnet::to_topology`]) only when the store's
//! differs: writes are idempotent, so the agents of a cluster converge on
//! one topology with no leader to elect. Once the first list is complete the
//! objects *are* the topology: no objects, no links (`ratchet topology apply`
//! is for clusters without them). Objects that do not make a topology
//! (halves that disagree, a bad address) leave the store as it was, and their
//! status says why. The agent's rounds then bring running pods in line, as
//! after `ratchet topology apply`.
//!
//! Each object's status lists its links, `{uid, link, state}` with the state
//! `ratchet links` shows, refreshed every [`STATUS_EVERY`] and patched only
//! when it changed (RBAC: list and watch `topologies`, patch
//! `topologies/status`; deploy/rbac.yaml).
//!
//! On a thread of its own with its own runtime, as the HTTP endpoint (see
//! `http.rs`): a round blocks its thread, and the watch must not wait for it.
//! A failure (no API server, no CRD, no permission) is logged and retried
//! with backoff; the rounds never depend on it.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context;
use futures::StreamExt;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::{
    config::Settings,
    ends, pairing,
    store::{Store, Transaction, records},
    topology::{
        Topology,
        meshnet::{self, MeshnetTopology},
    },
};

/// How often each object's status is brought up to date with its links'
/// states (which change as pods come and go, with no event on the object).
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// How long to wait before watching again after the watch failed.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The namespace of an object without one (the API always gives one).
const DEFAULT_NAMESPACE: &str = "default";

/// Starts watching on a thread of its own; it runs until the process ends.
pub fn spawn(settings: Settings) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("topologies".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => return warn!(%error, "cannot watch Topology objects"),
            };
            runtime.block_on(async {
                loop {
                    if let Err(error) = watch(&settings).await {
                        warn!(error = format!("{error:#}"), "watching Topology objects; again in {RETRY_AFTER:?}");
                    }
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            })
        })
        .context("starting the Topology watch")?;
    Ok(())
}

/// The Topology resource: meshnet's group, version and kind.
fn resource() -> ApiResource {
    let kind = GroupVersionKind::gvk(meshnet::GROUP, meshnet::VERSION, meshnet::KIND);
    ApiResource::from_gvk_with_plural(&kind, "topologies")
}

/// Watches until the watch ends or fails.
async fn watch(settings: &Settings) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("connecting to the Kubernetes API")?;
    let resource = resource();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let writer = reflector::store::Writer::new(resource.clone());
    let reader = writer.as_reader();
    let events = reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    let mut events = std::pin::pin!(events);
    let mut sync = Sync { settings, client, resource, written: None, listed: false };
    let mut status_tick = tokio::time::interval(STATUS_EVERY);
    loop {
        tokio::select! {
            event = events.next() => match event.context("the watch ended")? {
                Ok(watcher::Event::InitDone) => {
                    info!(objects = reader.state().len(), "Topology objects listed");
                    sync.listed = true;
                    sync.objects_changed(&reader.state()).await?;
                }
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) if sync.listed => {
                    sync.objects_changed(&reader.state()).await?;
                }
                Ok(_) => {}
                Err(error) => warn!(%error, "watching Topology objects"),
            },
            _ = status_tick.tick(), if sync.listed => sync.report(&reader.state()).await?,
        }
    }
}

/// What the watch keeps between events.
struct Sync<'a> {
    settings: &'a Settings,
    client: Client,
    resource: ApiResource,
    /// The topology last made from the objects (written, or found in the
    /// store already), or why they made none.
    written: Option<Result<Topology, String>>,
    /// Whether the first list is complete.
    listed: bool,
}

impl Sync<'_> {
    /// Writes the topology the objects make, when it is new, then reports.
    async fn objects_changed(&mut self, objects: &[Arc<DynamicObject>]) -> anyhow::Result<()> {
        let made = parse(objects)
            .and_then(|parsed| meshnet::to_topology(&parsed, DEFAULT_NAMESPACE).map_err(|error| error.to_string()));
        match &made {
            Ok(topology) if self.written.as_ref().is_none_or(|last| last.as_ref() != Ok(topology)) => {
                let mut store = ends::open_store(self.settings).await?;
                let mut tx = store.begin().await?;
                records::ensure_topology(&mut tx, topology).await?;
                tx.commit().await?;
                info!(links = topology.links.len(), "topology from Topology objects");
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "Topology objects make no topology; the store keeps the last one"),
        }
        self.written = Some(made);
        self.report(objects).await
    }

    /// Patches the status of each object whose links' states changed.
    async fn report(&self, objects: &[Arc<DynamicObject>]) -> anyhow::Result<()> {
        let states = self.link_states().await?;
        let error = match &self.written {
            Some(Err(error)) => Some(error.clone()),
            _ => None,
        };
        for object in objects {
            let status = status_of(object, &states, error.as_deref());
            if object.data.get("status") == Some(&status) {
                continue;
            }
            // A merge patch keeps the keys it does not name: an error gone is
            // removed by naming it null.
            let mut patch = status;
            if error.is_none() {
                patch["error"] = Value::Null;
            }
            let (Some(namespace), Some(name)) = (&object.metadata.namespace, &object.metadata.name) else { continue };
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &self.resource);
            let patch = Patch::Merge(json!({"status": patch}));
            if let Err(error) = api.patch_status(name, &PatchParams::default(), &patch).await {
                warn!(%error, object = %format!("{namespace}/{name}"), "updating a Topology's status");
            }
        }
        Ok(())
    }

    /// Each stored link's state, by link id.
    async fn link_states(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut store = ends::open_store(self.settings).await?;
        let mut tx = store.begin().await?;
        let mut states = BTreeMap::new();
        for link in records::topology(&mut tx).await?.links {
            let ends = records::ends(&mut tx, &link.id()).await?;
            states.insert(link.id(), pairing::state(&ends).to_string());
        }
        tx.commit().await?;
        Ok(states)
    }
}

/// The objects as meshnet's shape, or which one is not.
fn parse(objects: &[Arc<DynamicObject>]) -> Result<Vec<MeshnetTopology>, String> {
    objects
        .iter()
        .map(|object| {
            let value = serde_json::to_value(object.as_ref()).map_err(|e| e.to_string())?;
            serde_json::from_value(value).map_err(|error| {
                let name = object.metadata.name.as_deref().unwrap_or_default();
                format!("Topology {name} is not meshnet's shape: {error}")
            })
        })
        .collect()
}

/// An object's status: each of its links with the stored link's state
/// (`not applied` when the store has no such link), and the error that
/// kept the objects from making a topology, if one did.
fn status_of(object: &DynamicObject, states: &BTreeMap<String, String>, error: Option<&str>) -> Value {
    let namespace = object.metadata.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let pod = object.metadata.name.as_deref().unwrap_or_default();
    let halves: Vec<meshnet::Half> = serde_json::from_value(object.data["spec"]["links"].clone()).unwrap_or_default();
    let links: Vec<Value> = halves
        .iter()
        .map(|half| {
            let link = meshnet::link_id(namespace, pod, half).ok();
            let state = link.as_ref().and_then(|id| states.get(id)).map_or("not applied", String::as_str);
            json!({"uid": half.uid, "link": link, "state": state})
        })
        .collect();
    let mut status = json!({"links": links});
    if let Some(error) = error {
        status["error"] = json!(error);
    }
    status
}
