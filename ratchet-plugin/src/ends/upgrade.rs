//! A new build taking over a node's pins while its links carry traffic: the
//! first verb (or agent round) of the new build on the node does it, under
//! the store's lock and the node's load lock.
//!
//! Same layout, other build: the new programs are loaded over the same
//! maps and swapped in on every live end and on the VXLAN device; the maps,
//! their entries and counters, and the records stay as they are. A newer
//! layout: fresh maps are loaded beside the old ones, filled from the store
//! (every entry this node needs) and with each live end's counters, then
//! the programs that read them are swapped in; the records name the new
//! maps' generation. Both swaps are in place (see [`crate::tc::swap`]), so
//! no frame meets an interface without a program or a program without its
//! entries. An older layout than the pins' is a downgrade, refused.

use tracing::info;

use super::{EndsByLink, EndsError, VXLAN_DEVICE, fabric};
use crate::{
    config::Settings,
    dataplane::{self, Dataplane, DataplaneError, LAYOUT, Pinned, Staged},
    netlink::Netlink,
    pairing,
    store::{
        Transaction,
        records::{self, EndRecord},
    },
    tc::{self, Hook},
    topology::Side,
};

/// The node's dataplane as `open` opens it, taken over first when another
/// build's programs or an older layout is pinned. The common case costs
/// nothing more than the open: its markers say this build is current.
pub(super) async fn current(
    tx: &mut impl Transaction,
    settings: &Settings,
    host: &Netlink,
    open: impl Fn() -> Result<Option<Dataplane>, DataplaneError>,
) -> Result<Option<Dataplane>, EndsError> {
    match open() {
        Ok(Some(dataplane)) if !dataplane.is_this_build() => {}
        Err(DataplaneError::Layout { pinned, ours, .. }) if pinned < ours => {}
        opened => return Ok(opened?),
    }
    bring_current(tx, settings, host).await?;
    Ok(open()?)
}

/// Makes the pins this build's, if they are another's.
async fn bring_current(tx: &mut impl Transaction, settings: &Settings, host: &Netlink) -> Result<(), EndsError> {
    let root = &settings.pin_root;
    // Another process may have taken the node over while we waited.
    let _loading = Dataplane::lock_loading(root, &settings.state_dir)?;
    match dataplane::pinned(root)? {
        Pinned::Nothing | Pinned::Current => Ok(()),
        Pinned::Newer(pinned) => {
            Err(DataplaneError::Layout { root: root.display().to_string(), pinned, ours: LAYOUT }.into())
        }
        Pinned::OtherBuild => swap_programs(tx, settings, host).await,
        Pinned::Older(pinned) => rebuild_maps(tx, settings, host, pinned).await,
    }
}

/// Same layout: this build's programs over the same maps.
async fn swap_programs(tx: &mut impl Transaction, settings: &Settings, host: &Netlink) -> Result<(), EndsError> {
    let staged = Staged::new(&settings.pin_root, true)?;
    let live = live_ends(records::all_ends(tx).await?, settings, host).await?;
    swap_all(host, &staged, settings, &live).await?;
    staged.commit()?;
    info!(ends = live.len(), build = %dataplane::build_id(), "swapped in this build's programs");
    Ok(())
}

/// A newer layout: new maps, filled, then the programs that read them.
async fn rebuild_maps(
    tx: &mut impl Transaction,
    settings: &Settings,
    host: &Netlink,
    pinned: u32,
) -> Result<(), EndsError> {
    let staged = Staged::new(&settings.pin_root, false)?;
    let mut fresh = Dataplane::open_as_is(staged.dir())?;
    let old = Dataplane::open_as_is(&settings.pin_root)?;
    let fabric = fabric::fabric(tx, settings, host).await?;
    let all = records::all_ends(tx).await?;
    let live = live_ends(all.clone(), settings, host).await?;
    let mut by_link = EndsByLink::new();
    for (link, side, end) in all {
        if end.node != fabric.node || live.iter().any(|(_, _, live)| live == &end) {
            by_link.entry(link).or_default()[side.index()] = Some(end);
        }
    }
    for entry in by_link.values().flat_map(|ends| pairing::forwarding(ends, &fabric)) {
        fresh.apply(&entry)?;
    }
    let mut copied = Vec::with_capacity(live.len());
    for (_, _, end) in &live {
        copied.push(fresh.carry_stats(&old, end.host_ifindex)?);
    }
    swap_all(host, &staged, settings, &live).await?;
    for ((_, _, end), copied) in live.iter().zip(&copied) {
        fresh.carry_stats_since(&old, end.host_ifindex, copied)?;
    }
    staged.commit()?;
    for (link, side, mut end) in live.iter().cloned() {
        end.generation = fresh.generation();
        records::put_end(tx, &link, side, &end).await?;
    }
    info!(ends = live.len(), from = pinned, to = LAYOUT, "rebuilt the maps in this build's layout");
    Ok(())
}

/// Of `ends`, this node's whose host veth is still the one ADD made.
async fn live_ends(
    ends: Vec<(String, Side, EndRecord)>,
    settings: &Settings,
    host: &Netlink,
) -> Result<Vec<(String, Side, EndRecord)>, EndsError> {
    let node = settings.node();
    let mut live = Vec::new();
    for (link, side, end) in ends {
        if end.node == node && super::is_live(host, &end).await? {
            live.push((link, side, end));
        }
    }
    Ok(live)
}

/// The staged programs on every live end and on the VXLAN device.
async fn swap_all(
    host: &Netlink,
    staged: &Staged,
    settings: &Settings,
    live: &[(String, Side, EndRecord)],
) -> Result<(), EndsError> {
    for (_, _, end) in live {
        tc::swap(host, staged, Hook::to_peer(end.host_ifindex, &end.host_ifname, settings.attach)).await?;
    }
    if let Some(vxlan) = host.link_by_name(VXLAN_DEVICE).await? {
        tc::swap(host, staged, Hook::from_tunnel(vxlan.index, VXLAN_DEVICE)).await?;
    }
    Ok(())
}
