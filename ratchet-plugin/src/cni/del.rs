//! DEL: unwire the container's link ends, forget them, delete their veths
//! (in a detached child, see `reap`), and any veth of the pod's link ends
//! that a killed ADD or DEL left with no record (see `orphans`).
//!
//! Forwarding stops first (both map entries go while the store is locked),
//! so the peer is waiting again before the interface disappears, and no
//! frame is ever redirected to a dead ifindex. Everything already gone
//! (netns, veth, map entry, record) counts as done, so DEL can be repeated.
//!
//! A record whose host veth is no longer the one its ADD made is not torn
//! down by ifindex (after a reboot that ifindex may name another interface),
//! and map entries are only removed from the maps they were written to: a
//! record from before the pins were made afresh has none in the new ones.

use super::{Config, env::CniEnv, error::CniError, orphans};
use crate::{
    dataplane::Dataplane,
    netlink::Netlink,
    node,
    pairing::{self, Fabric},
    reap::{self, Doomed},
    store::{
        self, Store, Transaction,
        records::{self, EndRecord},
    },
    topology::{PodRef, Side},
};

/// An end DEL, GC or a new ADD let go of.
pub struct Released {
    pub record: EndRecord,
    /// Its host veth was still the one ADD made, so there is something to tear down.
    pub live: bool,
}

/// Returns the ends it released (none for a container ratchet never served).
pub async fn del(config: &Config, env: &CniEnv) -> Result<Vec<EndRecord>, CniError> {
    let settings = &config.settings;
    let mut store = store::open(settings).await?;
    let mut tx = store.begin().await?;
    let refs = records::container_ends(&mut tx, &env.container_id).await?;
    let pod = env.pod().ok();
    let sandbox_pod = match &pod {
        Some(pod) => sandbox_of(&mut tx, pod, &env.container_id).await?,
        None => None,
    };
    // Where a killed ADD or DEL of this pod may have left a veth.
    let pod_ends = match &pod {
        Some(pod) => ends_of(&mut tx, pod).await?,
        None => Vec::new(),
    };
    if refs.is_empty() && sandbox_pod.is_none() && pod_ends.is_empty() {
        return Ok(Vec::new());
    }
    // After a reboot the pins are gone and there is nothing to unwire.
    let mut dataplane = Dataplane::open(&settings.pin_root)?;
    let host = Netlink::host()?;
    let fabric = node::fabric(&mut tx, settings, &host).await?;
    let held = !refs.is_empty();
    let mut released = Vec::with_capacity(refs.len());
    for end in refs {
        let holder = Some(env.container_id.as_str());
        released.extend(release(&mut tx, &host, dataplane.as_mut(), &fabric, &end.link, end.side, holder).await?);
    }
    let going = released.iter().map(|end| end.record.host_ifindex).collect();
    let orphans = orphans::find(&mut tx, &host, pod_ends, &going).await?;
    if let Some(dataplane) = dataplane.as_mut() {
        orphans::unwire(dataplane, &orphans)?;
    }
    if held {
        records::put_container_ends(&mut tx, &env.container_id, &[]).await?;
    }
    failpoint!("del::released");
    if let Some(pod) = &sandbox_pod {
        records::delete_sandbox(&mut tx, pod).await?;
    }
    tx.commit().await?;
    failpoint!("del::committed");
    // Nothing forwards to or from these veths any more: their deletion, the
    // slow part, need not hold the runtime up.
    let mut veths = orphans;
    veths.extend(released.iter().filter_map(doomed));
    reap::defer(&host, veths).await?;
    Ok(released.into_iter().map(|end| end.record).collect())
}

/// The pod, when this container is its recorded sandbox: that record goes
/// too (it may hold no end, e.g. after its links left the topology while it
/// ran).
async fn sandbox_of(tx: &mut impl Transaction, pod: &PodRef, container_id: &str) -> Result<Option<PodRef>, CniError> {
    let sandbox = records::sandbox(tx, pod).await?;
    Ok(sandbox.filter(|sandbox| sandbox.container_id == container_id).map(|_| pod.clone()))
}

/// Every link end the topology gives `pod`, as (link id, side).
async fn ends_of(tx: &mut impl Transaction, pod: &PodRef) -> Result<Vec<(String, Side)>, CniError> {
    let links = records::links_of_pod(tx, pod).await?;
    Ok(links.iter().flat_map(|link| link.sides_of(pod).map(|side| (link.id(), side))).collect())
}

/// True when the record's host veth is still the one its ADD made: same
/// name, same ifindex. After a reboot it is not.
pub async fn is_live(host: &Netlink, record: &EndRecord) -> Result<bool, CniError> {
    let found = host.link_by_name(&record.host_ifname).await?;
    Ok(found.is_some_and(|link| link.index == record.host_ifindex))
}

/// Unwires one attached end and forgets it: both directions stop forwarding,
/// its counters go, and its container no longer lists it. With `holder`, only
/// an end that container holds. The caller tears the veth down once the
/// transaction is committed.
pub async fn release(
    tx: &mut impl Transaction,
    host: &Netlink,
    dataplane: Option<&mut Dataplane>,
    fabric: &Fabric,
    link: &str,
    side: Side,
    holder: Option<&str>,
) -> Result<Option<Released>, CniError> {
    let mut ends = records::ends(tx, link).await?;
    let Some(record) = ends[side.index()].clone() else {
        return Ok(None);
    };
    if holder.is_some_and(|holder| holder != record.container_id) {
        return Ok(None);
    }
    let live = is_live(host, &record).await?;
    let before = pairing::forwarding(&ends, fabric);
    ends[side.index()] = None;
    let mut elsewhere;
    let dataplane = match &record.pin_root {
        Some(root) if dataplane.as_ref().is_none_or(|dataplane| dataplane.root() != root) => {
            elsewhere = Dataplane::open(root)?;
            elsewhere.as_mut()
        }
        _ => dataplane,
    };
    if let Some(dataplane) = dataplane {
        if dataplane.generation() == record.dataplane {
            let (stale, _) = pairing::rewire(&before, &pairing::forwarding(&ends, fabric));
            for entry in stale {
                dataplane.remove(&entry)?;
            }
            dataplane.untrack(record.host_ifindex)?;
        }
        // A tcx link pin outlives its veth (deleting a pod's netns takes
        // both veth ends): it goes here, under the store's lock, live or
        // not, or the next ADD of this end could not pin its own. After the
        // commit a new ADD may already hold a pin of the same name.
        dataplane.detach_tcx(&record.host_ifname)?;
    }
    records::forget_end(tx, link, side, &record.container_id).await?;
    Ok(Some(Released { record, live }))
}

/// The veth to delete for a released end (the pod end goes with it); none
/// for an end whose veth is not the one its ADD made.
fn doomed(end: &Released) -> Option<Doomed> {
    end.live.then(|| Doomed { index: end.record.host_ifindex, name: end.record.host_ifname.clone() })
}

/// Tears a released end down now, for callers that may reuse its name at
/// once (ADD, GC, the agent). By ifindex and name: a new ADD may already have
/// made a veth with the same name.
pub async fn teardown(host: &Netlink, end: &Released) -> Result<(), CniError> {
    reap::delete_all(host, doomed(end).as_slice()).await?;
    Ok(())
}
