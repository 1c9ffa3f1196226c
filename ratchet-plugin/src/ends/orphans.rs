//! What a killed verb leaves behind: host veths no record holds.
//!
//! A plugin killed between making a veth and committing its record, or
//! between committing a DEL and starting its reaper, leaves a host veth (and
//! its pod end) under a name only one link end can have
//! (`naming::host_ifname`), and maybe map entries to or from it. No record
//! leads to it, so DEL (for the pod's ends) and GC (for every end of the
//! topology) look for it by that name, unwire it and delete it.

use std::collections::HashSet;

use ratchet_common::PEER_REMOTE;

use super::{EndsError, reap::Doomed};
use crate::{
    dataplane::Dataplane,
    naming,
    netlink::Netlink,
    pairing::Entry,
    store::{Transaction, records},
    tc,
    topology::Side,
};

/// The host veths named for these link ends that no record holds, other
/// than the `released` ones (already on their way out).
pub async fn find(
    tx: &mut impl Transaction,
    host: &Netlink,
    ends: impl IntoIterator<Item = (String, Side)>,
    released: &HashSet<u32>,
) -> Result<Vec<Doomed>, EndsError> {
    let mut orphans = Vec::new();
    for (link, side) in ends {
        let name = naming::host_ifname(&link, side);
        let Some(found) = host.link_by_name(&name).await? else { continue };
        if released.contains(&found.index) {
            continue;
        }
        let held = records::end(tx, &link, side).await?.is_some_and(|record| record.host_ifindex == found.index);
        if !held {
            orphans.push(Doomed { index: found.index, name });
        }
    }
    Ok(orphans)
}

/// Removes every map entry from or to an orphan (a peer may already point
/// at one), its counters and its tcx link pin.
pub fn unwire(dataplane: &mut Dataplane, orphans: &[Doomed]) -> Result<(), EndsError> {
    if orphans.is_empty() {
        return Ok(());
    }
    let dead: HashSet<u32> = orphans.iter().map(|orphan| orphan.index).collect();
    for entry in dataplane.entries()? {
        if touches(&entry, &dead) {
            dataplane.remove(&entry)?;
        }
    }
    for orphan in orphans {
        dataplane.untrack(orphan.index)?;
        tc::detach_tcx(dataplane, &orphan.name)?;
    }
    Ok(())
}

/// Whether an entry forwards from, or to, one of these host veths.
pub fn touches(entry: &Entry, ifindexes: &HashSet<u32>) -> bool {
    match *entry {
        Entry::Peer { from, to } => {
            ifindexes.contains(&from) || (to.flags & PEER_REMOTE == 0 && ifindexes.contains(&to.ifindex))
        }
        Entry::Tunnel { to, .. } => ifindexes.contains(&to),
    }
}
