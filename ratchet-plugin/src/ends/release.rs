//! Releasing link ends: DEL's whole job, and what ADD (ends an earlier
//! sandbox still holds, a dead peer), GC and the agent do to ends that go.
//!
//! Forwarding stops first (both map entries go while the store is locked),
//! so the peer is waiting again before the interface disappears, and no
//! frame is ever redirected to a dead ifindex. Everything already gone
//! (netns, veth, map entry, record) counts as done, so a release can be
//! repeated. A record whose host veth is no longer the one its ADD made is
//! not torn down by ifindex (after a reboot that ifindex may name another
//! interface), and map entries are only removed from the maps they were
//! written to: a record from before the pins were made afresh has none in
//! the new ones.

use super::{
    Ends, EndsError, failpoint, orphans,
    plan::PlannedEnd,
    reap::{self, Doomed},
};
use crate::{
    config::Settings,
    dataplane::Dataplane,
    netlink::Netlink,
    pairing,
    store::{
        Transaction,
        records::{self, EndRecord},
    },
    tc,
    topology::{PodRef, Side},
};

/// An end let go of.
pub struct Released {
    /// Its record, as it was.
    pub record: EndRecord,
    /// Its host veth was still the one ADD made, so there is something to tear down.
    pub live: bool,
}

impl Released {
    /// The veth to delete (the pod end goes with it); none for an end whose
    /// veth is not the one its ADD made.
    fn doomed(&self) -> Option<Doomed> {
        self.live.then(|| Doomed { index: self.record.host_ifindex, name: self.record.host_ifname.clone() })
    }
}

/// DEL: releases every end the container holds, and deletes any veth of its
/// pod's ends that a killed ADD or DEL left with no record (see
/// `orphans`); commits; then hands the veths to a detached reaper.
/// Returns the released ends' records (none for a container ratchet never
/// served).
pub async fn release_container(
    mut tx: impl Transaction,
    settings: &Settings,
    container_id: &str,
    pod: Option<&PodRef>,
) -> Result<Vec<EndRecord>, EndsError> {
    let refs = records::container_ends(&mut tx, container_id).await?;
    // The pod's sandbox record goes too when it is this container's (it may
    // hold no end, e.g. after its links left the topology while it ran).
    let sandbox_pod = match pod {
        Some(pod) => records::sandbox(&mut tx, pod).await?.filter(|s| s.container_id == container_id).map(|_| pod),
        None => None,
    };
    // Where a killed ADD or DEL of this pod may have left a veth.
    let pod_ends = match pod {
        Some(pod) => ends_of(&mut tx, pod).await?,
        None => Vec::new(),
    };
    if refs.is_empty() && sandbox_pod.is_none() && pod_ends.is_empty() {
        return Ok(Vec::new());
    }
    let mut ends = Ends::for_release(&mut tx, settings, Netlink::host()?).await?;
    let mut released = Vec::with_capacity(refs.len());
    for end in &refs {
        released.extend(ends.release(&mut tx, &end.link, end.side, Some(container_id)).await?);
    }
    let going = released.iter().map(|end| end.record.host_ifindex).collect();
    let orphans = orphans::find(&mut tx, &ends.host, pod_ends, &going).await?;
    if let Some(dataplane) = ends.dataplane() {
        orphans::unwire(dataplane, &orphans)?;
    }
    if !refs.is_empty() {
        records::put_container_ends(&mut tx, container_id, &[]).await?;
    }
    failpoint!("del::released");
    if let Some(pod) = sandbox_pod {
        records::delete_sandbox(&mut tx, pod).await?;
    }
    tx.commit().await?;
    failpoint!("del::committed");
    // Nothing forwards to or from these veths any more: their deletion, the
    // slow part, need not hold the runtime up.
    let mut veths = orphans;
    veths.extend(released.iter().filter_map(Released::doomed));
    reap::defer(&ends.host, veths).await?;
    Ok(released.into_iter().map(|end| end.record).collect())
}

/// Every link end the topology gives `pod`, as (link id, side).
async fn ends_of(tx: &mut impl Transaction, pod: &PodRef) -> Result<Vec<(String, Side)>, EndsError> {
    let links = records::links_of_pod(tx, pod).await?;
    Ok(links.iter().flat_map(|link| link.sides_of(pod).map(|side| (link.id(), side))).collect())
}

impl Ends<'_> {
    /// Unwires one attached end and forgets it: both directions stop
    /// forwarding, its counters and tcx link pin go, and its container no
    /// longer lists it. With `holder`, only an end that container holds.
    /// The caller tears the veth down once the transaction is committed.
    pub async fn release(
        &mut self,
        tx: &mut impl Transaction,
        link: &str,
        side: Side,
        holder: Option<&str>,
    ) -> Result<Option<Released>, EndsError> {
        let mut link_ends = records::ends(tx, link).await?;
        let Some(record) = link_ends[side.index()].clone() else {
            return Ok(None);
        };
        if holder.is_some_and(|holder| holder != record.container_id) {
            return Ok(None);
        }
        let live = super::is_live(&self.host, &record).await?;
        let before = pairing::forwarding(&link_ends, &self.fabric);
        link_ends[side.index()] = None;
        let after = pairing::forwarding(&link_ends, &self.fabric);
        let mut elsewhere = None;
        if let Some(dataplane) = self.dataplane_of(&record, &mut elsewhere)? {
            if dataplane.generation() == record.generation {
                for entry in pairing::rewire(&before, &after).0 {
                    dataplane.remove(&entry)?;
                }
                dataplane.untrack(record.host_ifindex)?;
            }
            // A tcx link pin outlives its veth (deleting a pod's netns takes
            // both veth ends): it goes here, under the store's lock, live or
            // not, or the next ADD of this end could not pin its own. After
            // the commit a new ADD may already hold a pin of the same name.
            tc::detach_tcx(dataplane, &record.host_ifname)?;
        }
        records::forget_end(tx, link, side, &record.container_id).await?;
        Ok(Some(Released { record, live }))
    }

    /// The dataplane a record's entries were written to: the node's, or the
    /// one under the pin root the record names when a DEL's config names
    /// another (opened into `elsewhere`).
    fn dataplane_of<'d>(
        &'d mut self,
        record: &EndRecord,
        elsewhere: &'d mut Option<Dataplane>,
    ) -> Result<Option<&'d mut Dataplane>, EndsError> {
        match &record.pin_root {
            Some(root) if self.dataplane.as_ref().is_none_or(|dataplane| dataplane.root() != root) => {
                *elsewhere = Dataplane::open(root)?;
                Ok(elsewhere.as_mut())
            }
            _ => Ok(self.dataplane.as_mut()),
        }
    }

    /// Tears a released end down now, for callers that may reuse its name at
    /// once (ADD, GC, the agent). By ifindex and name: a new ADD may already
    /// have made a veth with the same name.
    pub async fn teardown(&self, end: &Released) -> Result<(), EndsError> {
        Ok(reap::delete_all(&self.host, end.doomed().as_slice()).await?)
    }

    /// Releases the planned ends whoever holds them (an earlier sandbox of
    /// the pod whose DEL was lost, or this one on a retry) and deletes their
    /// veths now, so the new ones can take the same names.
    pub(super) async fn release_held(
        &mut self,
        tx: &mut impl Transaction,
        planned: &[PlannedEnd<'_>],
    ) -> Result<(), EndsError> {
        for end in planned {
            if let Some(released) = self.release(tx, &end.link_id, end.side, None).await? {
                self.teardown(&released).await?;
            }
        }
        Ok(())
    }
}
