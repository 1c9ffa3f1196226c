//! Inspecting a container's link ends (CHECK): is each still as it was made?
//!
//! The pod end (name, addresses, MTU, up), the host end (same ifindex, this
//! generation's program on its ingress), the forwarding entries (both
//! directions when the peer is attached, none while it waits) and the
//! counters. A link still waiting for its peer is fine; anything else that
//! differs is [`EndsError::Drift`], saying what and where.

use std::{collections::HashSet, fs::File, os::unix::fs::MetadataExt};

use super::{Ends, EndsError};
use crate::{
    dataplane::{Dataplane, Program},
    netlink::Netlink,
    pairing::{self, Entry},
    store::{
        Store, Transaction,
        records::{self, EndRecord},
    },
    tc::{self, Hook},
    topology::{Link, PodRef, Side},
};

/// One attached end of a container, with its link and both its ends.
pub struct Inspected {
    /// The container's side of the link.
    pub side: Side,
    /// Its record.
    pub record: EndRecord,
    /// The link, `None` once the topology dropped it (the end is still ours).
    pub link: Option<Link>,
    ends: [Option<EndRecord>; 2],
}

/// What a container holds, read in one transaction.
pub struct Holding<'a> {
    ends: Ends<'a>,
    held: Vec<Inspected>,
}

/// Reads the ends `container_id` holds. A container that holds none of its
/// pod's link ends is drift: it was never ADDed, a DEL or GC released it, or
/// a later ADD of the same pod (a new sandbox) took its ends over.
pub async fn inspect_container<'a>(
    settings: &'a crate::config::Settings,
    container_id: &str,
    pod: Option<&PodRef>,
) -> Result<Holding<'a>, EndsError> {
    let mut store = super::open_store(settings).await?;
    let mut tx = store.begin().await?;
    let ends = Ends::for_release(&mut tx, settings, Netlink::host()?).await?;
    let mut held = Vec::new();
    for end in records::container_ends(&mut tx, container_id).await? {
        let link_ends = records::ends(&mut tx, &end.link).await?;
        let Some(record) = link_ends[end.side.index()].clone().filter(|r| r.container_id == container_id) else {
            continue;
        };
        let link = records::link(&mut tx, &end.link).await?;
        held.push(Inspected { side: end.side, record, link, ends: link_ends });
    }
    if let Some(pod) = pod
        && held.is_empty()
        && let Some(why) = why_nothing_held(&mut tx, pod, container_id).await?
    {
        return Err(EndsError::Drift(why));
    }
    Ok(Holding { ends, held })
}

/// When the topology gives `pod` links but `container` holds none of their
/// ends: who holds them instead, if anyone.
async fn why_nothing_held(
    tx: &mut impl Transaction,
    pod: &PodRef,
    container: &str,
) -> Result<Option<String>, EndsError> {
    let links = records::links_of_pod(tx, pod).await?;
    if links.is_empty() {
        return Ok(None);
    }
    for link in &links {
        for side in link.sides_of(pod) {
            if let Some(holder) = records::end(tx, &link.id(), side).await? {
                return Ok(Some(format!(
                    "container {container} holds no link end of pod {pod}: container {} holds them (a later ADD \
                     of the pod took them over)",
                    holder.container_id
                )));
            }
        }
    }
    Ok(Some(format!(
        "container {container} holds no link end of pod {pod}: none is attached (it was never ADDed, or a DEL or GC \
         released it)"
    )))
}

impl Holding<'_> {
    /// True when the container holds no end (its pod has no link).
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Compares every held end with the kernel and the maps; `netns` (at
    /// `netns_path`) must be the netns the ends were attached in.
    pub async fn verify(self, netns: &File, netns_path: &str) -> Result<Vec<Inspected>, EndsError> {
        let Self { ends, held } = self;
        let Some(first) = held.first() else { return Ok(held) };
        let root = ends.settings.pin_root.display();
        let drift = |what: String| EndsError::Drift(what);
        let dataplane = ends.dataplane.as_ref().ok_or_else(|| drift(format!("no program is pinned under {root}")))?;
        same_netns(netns, netns_path, &first.record)?;
        let in_pod = Netlink::in_netns(netns, netns_path)?;
        for end in &held {
            check_pod_end(&in_pod, &ends, end).await?;
            check_host_end(&ends, dataplane, &end.record).await?;
            check_forwarding(dataplane, &ends, end)?;
        }
        Ok(held)
    }
}

/// The netns given must be the one the ends were attached in: the same
/// path, or another path to the same namespace.
fn same_netns(netns: &File, netns_path: &str, record: &EndRecord) -> Result<(), EndsError> {
    if netns_path == record.netns {
        return Ok(());
    }
    let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    match (netns.metadata(), std::fs::metadata(&record.netns)) {
        (Ok(a), Ok(b)) if same(&a, &b) => Ok(()),
        _ => Err(EndsError::Drift(format!(
            "CNI_NETNS {netns_path} is not the netns ADD attached this container to ({})",
            record.netns
        ))),
    }
}

async fn check_pod_end(in_pod: &Netlink, ends: &Ends<'_>, end: &Inspected) -> Result<(), EndsError> {
    let name = end.record.ifname.as_str();
    let drift = |what: String| EndsError::Drift(format!("pod end {name} in {}: {what}", end.record.netns));
    let found = in_pod.link_by_name(name).await?.ok_or_else(|| drift("is gone".into()))?;
    if !found.up {
        return Err(drift("is down".into()));
    }
    // The topology may have dropped the link since; the end is still ours.
    let Some(link) = &end.link else { return Ok(()) };
    let mtu = ends.settings.link_mtu(link);
    if found.mtu != mtu {
        return Err(drift(format!("MTU is {}, the link says {mtu}", found.mtu)));
    }
    let present: HashSet<_> = in_pod.addresses(found.index).await?.into_iter().collect();
    if let Some(missing) = link.end(end.side).ips.iter().find(|ip| !present.contains(*ip)) {
        return Err(drift(format!("address {missing} is missing")));
    }
    Ok(())
}

async fn check_host_end(ends: &Ends<'_>, dataplane: &Dataplane, record: &EndRecord) -> Result<(), EndsError> {
    let name = &record.host_ifname;
    let drift = |what: String| EndsError::Drift(format!("host end {name}: {what}"));
    let found = ends.host.link_by_name(name).await?.ok_or_else(|| drift("is gone".into()))?;
    if found.index != record.host_ifindex {
        return Err(drift(format!("is ifindex {}, ADD made {}", found.index, record.host_ifindex)));
    }
    let hook = Hook::to_peer(found.index, name, ends.settings.attach);
    if !tc::attached(&ends.host, dataplane, hook).await? {
        return Err(drift(format!("{} is not attached to its ingress", Program::ToPeer.name())));
    }
    Ok(())
}

fn check_forwarding(dataplane: &Dataplane, ends: &Ends<'_>, end: &Inspected) -> Result<(), EndsError> {
    let me = end.record.host_ifindex;
    let wanted = pairing::forwarding(&end.ends, &ends.fabric);
    let actual = dataplane.entries()?;
    let drift = |what: String| EndsError::Drift(format!("{} map: {what}", ratchet_common::MAP_PEERS));
    if wanted.is_empty() {
        // Waiting for the peer: nothing may forward from this end.
        let forwarding = actual.iter().find_map(|entry| match entry {
            Entry::Peer { from, to } if *from == me => Some(to.ifindex),
            _ => None,
        });
        return match forwarding {
            None => Ok(()),
            Some(to) => Err(drift(format!("waiting end {me} forwards to {to}"))),
        };
    }
    for entry in &wanted {
        if !actual.contains(entry) {
            let found = actual.iter().find(|other| other.same_slot(entry));
            let slot = match entry {
                Entry::Peer { from, .. } => format!("entry {from}"),
                Entry::Tunnel { vni, .. } => format!("VNI {vni}"),
            };
            return Err(drift(format!("{slot} is {found:?}, should be {entry:?}")));
        }
    }
    if dataplane.stats(me)?.is_none() {
        return Err(drift(format!("{} has no entry for {me}", ratchet_common::MAP_STATS)));
    }
    Ok(())
}
