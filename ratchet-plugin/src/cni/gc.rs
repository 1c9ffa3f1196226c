//! GC (spec 1.1): remove every link end the runtime no longer knows.
//!
//! The runtime lists every attachment still valid (container id and
//! `CNI_IFNAME`); every ratchet end not on the list is unwired, forgotten and
//! its veth deleted; a veth of any link end that no record holds (left by a
//! killed verb) is deleted too; and forwarding or counter entries that belong
//! to no recorded end, or lead to one that is gone, are removed. GC keeps
//! going past errors and reports them all.

use std::collections::HashSet;

use super::{Config, del, error::CniError, orphans};
use crate::{
    config::Settings,
    dataplane::Dataplane,
    netlink::Netlink,
    node,
    pairing::Entry,
    reap::{self, Doomed},
    store::{self, AnyStore, Store, Transaction, records},
    topology::Side,
};

/// The config key the runtime lists valid attachments under.
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";

/// Returns what went wrong; empty when GC did all it had to.
pub async fn gc(config: &Config) -> Vec<String> {
    let Some(valid) = &config.netconf.valid_attachments else {
        return vec![format!("the config has no {VALID_ATTACHMENTS}")];
    };
    let valid: HashSet<(&str, &str)> = valid.iter().map(|a| (a.container_id.as_str(), a.ifname.as_str())).collect();
    let settings = &config.settings;
    let mut errors = Vec::new();
    let mut dataplane = match Dataplane::open(&settings.pin_root) {
        Ok(dataplane) => dataplane,
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    let mut store = match store::open(settings).await {
        Ok(store) => store,
        Err(e) => return vec![e.to_string()],
    };
    let host = match Netlink::host() {
        Ok(host) => host,
        Err(e) => return vec![e.to_string()],
    };
    let Sweep { released, orphans, kept } =
        match release_invalid(&mut store, settings, &host, dataplane.as_mut(), &valid, &mut errors).await {
            Ok(done) => done,
            Err(e) => return vec![e.to_string()],
        };
    for end in &released {
        if let Err(e) = del::teardown(&host, end).await {
            errors.push(e.to_string());
        }
    }
    if let Err(e) = reap::delete_all(&host, &orphans).await {
        errors.push(e.to_string());
    }
    if let Some(dataplane) = &mut dataplane {
        remove_unrecorded_entries(dataplane, &kept, &mut errors);
    }
    errors
}

/// What GC lets go of, and what stays.
struct Sweep {
    released: Vec<del::Released>,
    /// Veths no record holds, already unwired.
    orphans: Vec<Doomed>,
    /// The host ifindexes of the ends that stay.
    kept: HashSet<u32>,
}

/// Releases every end not in `valid` and unwires every orphan veth.
async fn release_invalid(
    store: &mut AnyStore,
    settings: &Settings,
    host: &Netlink,
    mut dataplane: Option<&mut Dataplane>,
    valid: &HashSet<(&str, &str)>,
    errors: &mut Vec<String>,
) -> Result<Sweep, CniError> {
    let mut tx = store.begin().await?;
    let fabric = node::fabric(&mut tx, settings, host).await?;
    let mut released = Vec::new();
    let mut kept = HashSet::new();
    for (link, side, record) in records::all_ends(&mut tx).await? {
        if valid.contains(&(record.container_id.as_str(), record.cni_ifname.as_str())) {
            kept.insert(record.host_ifindex);
            continue;
        }
        match del::release(&mut tx, host, dataplane.as_deref_mut(), &fabric, &link, side, Some(&record.container_id))
            .await
        {
            Ok(found) => released.extend(found),
            Err(e) => errors.push(format!("link {link} end {}: {e}", side.as_str())),
        }
    }
    let going = released.iter().map(|end: &del::Released| end.record.host_ifindex).collect();
    let topology = records::topology(&mut tx).await?;
    let ends = topology.links.iter().flat_map(|link| [(link.id(), Side::A), (link.id(), Side::B)]);
    let orphans = orphans::find(&mut tx, host, ends, &going).await?;
    if let Some(dataplane) = dataplane {
        orphans::unwire(dataplane, &orphans)?;
    }
    tx.commit().await?;
    Ok(Sweep { released, orphans, kept })
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
