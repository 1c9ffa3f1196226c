//! `ratchet reset`: take a node back to holding no link end, for when its
//! store was lost (deleted, truncated, emptied) while pods were attached.
//!
//! Without their records no end can be paired or released safely, and the
//! records cannot be rebuilt from the node: a host veth's name is a hash of
//! its link, and the container that holds it is known only from the runtime.
//! So reset removes what the node holds instead: every host veth its pinned
//! maps know (the pod end goes with it), the pins, and the store's records of
//! this node's ends. Pods get their links again when they are recreated.

use std::collections::BTreeSet;

use crate::{
    config::Settings,
    dataplane::Dataplane,
    naming,
    netlink::Netlink,
    pairing::Entry,
    store::{self, Store, Transaction, records},
};

/// What a reset removed.
pub struct Reset {
    /// The host veths deleted, by name; their pod ends went with them.
    pub veths: Vec<String>,
    /// How many of the node's end and sandbox records the store forgot.
    pub records: usize,
}

/// Resets the node named `node` whose settings are `settings`.
pub async fn reset(settings: &Settings, node: &str) -> anyhow::Result<Reset> {
    let host = Netlink::host()?;
    let mut veths = Vec::new();
    if let Some(dataplane) = Dataplane::open(&settings.pin_root)? {
        for ifindex in known_ifindexes(&dataplane)? {
            let Some(name) = ratchet_veth(ifindex) else { continue };
            host.delete_link(ifindex).await?;
            veths.push(name);
        }
    }
    Dataplane::unload(&settings.pin_root)?;
    let mut store = store::open(settings).await?;
    let mut tx = store.begin().await?;
    let records = records::forget_node(&mut tx, node).await?;
    tx.commit().await?;
    Ok(Reset { veths, records })
}

/// Every host ifindex the maps count or forward from.
fn known_ifindexes(dataplane: &Dataplane) -> anyhow::Result<BTreeSet<u32>> {
    let mut known: BTreeSet<u32> = dataplane.tracked()?.into_iter().collect();
    for entry in dataplane.entries()? {
        if let Entry::Peer { from, .. } = entry {
            known.insert(from);
        }
    }
    Ok(known)
}

/// The name of the interface at `ifindex` when it is one of ratchet's host
/// veths (an ifindex the maps still hold may have gone, or, rarely, have
/// been reused by another interface).
fn ratchet_veth(ifindex: u32) -> Option<String> {
    let name = nix::net::if_::if_indextoname(ifindex).ok()?.into_string().ok()?;
    naming::is_host_ifname(&name).then_some(name)
}
