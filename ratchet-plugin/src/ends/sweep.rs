//! Garbage collection (GC, spec 1.1): let go of every end the runtime no
//! longer knows.
//!
//! Every end whose attachment (container id and `CNI_IFNAME`) is not on the
//! runtime's list is released and its veth deleted; a veth of any link end
//! that no record holds (left by a killed verb) is deleted too; and
//! forwarding or counter entries that belong to no recorded end, or lead to
//! one that is gone, are removed. GC keeps going past errors and reports
//! them all.

use std::collections::HashSet;

use super::{
    Ends, EndsError, Released, orphans,
    reap::{self, Doomed},
};
use crate::{
    config::Settings,
    dataplane::Dataplane,
    netlink::Netlink,
    pairing::Entry,
    store::{Store, Transaction, records},
    topology::Side,
};

/// An attachment the runtime still has: (container id, `CNI_IFNAME`).
pub type Attachment<'a> = (&'a str, &'a str);

/// Releases every end not in `valid`; returns what went wrong (empty when
/// GC did all it had to).
pub async fn collect_garbage(settings: &Settings, valid: &HashSet<Attachment<'_>>) -> Vec<String> {
    let mut errors = Vec::new();
    let swept = async {
        let mut store = super::open_store(settings).await?;
        let mut tx = store.begin().await?;
        let mut ends = Ends::for_release(&mut tx, settings, Netlink::host()?).await?;
        let sweep = ends.release_invalid(&mut tx, valid, &mut errors).await?;
        tx.commit().await?;
        Ok::<_, EndsError>((ends, sweep))
    };
    let (mut ends, Sweep { released, orphans, kept }) = match swept.await {
        Ok(swept) => swept,
        Err(e) => return vec![e.to_string()],
    };
    for end in &released {
        if let Err(e) = ends.teardown(end).await {
            errors.push(e.to_string());
        }
    }
    if let Err(e) = reap::delete_all(&ends.host, &orphans).await {
        errors.push(e.to_string());
    }
    if let Some(dataplane) = ends.dataplane() {
        remove_unrecorded_entries(dataplane, &kept, &mut errors);
    }
    errors
}

/// What GC lets go of, and what stays.
struct Sweep {
    released: Vec<Released>,
    /// Veths no record holds, already unwired.
    orphans: Vec<Doomed>,
    /// The host ifindexes of the ends that stay.
    kept: HashSet<u32>,
}

impl Ends<'_> {
    /// Releases every end not in `valid` and unwires every orphan veth.
    async fn release_invalid(
        &mut self,
        tx: &mut impl Transaction,
        valid: &HashSet<Attachment<'_>>,
        errors: &mut Vec<String>,
    ) -> Result<Sweep, EndsError> {
        let mut released = Vec::new();
        let mut kept = HashSet::new();
        for (link, side, record) in records::all_ends(tx).await? {
            if valid.contains(&(record.container_id.as_str(), record.cni_ifname.as_str())) {
                kept.insert(record.host_ifindex);
                continue;
            }
            match self.release(tx, &link, side, Some(&record.container_id)).await {
                Ok(found) => released.extend(found),
                Err(e) => errors.push(format!("link {link} end {}: {e}", side.as_str())),
            }
        }
        let going = released.iter().map(|end: &Released| end.record.host_ifindex).collect();
        let topology = records::topology(tx).await?;
        let ends = topology.links.iter().flat_map(|link| [(link.id(), Side::A), (link.id(), Side::B)]);
        let orphans = orphans::find(tx, &self.host, ends, &going).await?;
        if let Some(dataplane) = self.dataplane() {
            orphans::unwire(dataplane, &orphans)?;
        }
        Ok(Sweep { released, orphans, kept })
    }
}

/// Map entries from or to a host veth no record holds are left over from a
/// killed verb or a lost DEL: nothing may forward from, to or count for them.
fn remove_unrecorded_entries(dataplane: &mut Dataplane, kept: &HashSet<u32>, errors: &mut Vec<String>) {
    let listed = dataplane.entries().and_then(|entries| Ok((entries, dataplane.tracked()?)));
    let (entries, tracked) = match listed {
        Ok(listed) => listed,
        Err(e) => return errors.push(e.to_string()),
    };
    let unrecorded: HashSet<u32> = entries
        .iter()
        .flat_map(|entry| match *entry {
            Entry::Peer { from, to } => vec![from, to.ifindex],
            Entry::Tunnel { to, .. } => vec![to],
        })
        .filter(|ifindex| !kept.contains(ifindex))
        .collect();
    for entry in entries.iter().filter(|entry| orphans::touches(entry, &unrecorded)) {
        if let Err(e) = dataplane.remove(entry) {
            errors.push(e.to_string());
        }
    }
    for ifindex in tracked.into_iter().filter(|i| !kept.contains(i)) {
        if let Err(e) = dataplane.untrack(ifindex) {
            errors.push(e.to_string());
        }
    }
}
