//! DEL: unwire the container's link ends, forget them, delete their veths.
//!
//! Forwarding stops first (both map entries go while the store is locked),
//! so the peer is waiting again before the interface disappears, and no
//! frame is ever redirected to a dead ifindex. Everything already gone
//! (netns, veth, map entry, record) counts as done, so DEL can be repeated.

use super::{Config, env::CniEnv, error::CniError};
use crate::{
    dataplane::Dataplane,
    netlink::Netlink,
    pairing,
    store::{
        EmbeddedStore, Store, Transaction,
        records::{self, EndRecord},
    },
    topology::Side,
};

/// Returns the ends it released (none for a container ratchet never served).
pub async fn del(config: &Config, env: &CniEnv) -> Result<Vec<EndRecord>, CniError> {
    let settings = &config.settings;
    let mut store = EmbeddedStore::open(&settings.state_dir)?;
    let mut tx = store.begin()?;
    let refs = records::container_ends(&mut tx, &env.container_id)?;
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    // After a reboot the pins are gone and there is nothing to unwire.
    let mut dataplane = Dataplane::open(&settings.pin_root)?;
    let mut released = Vec::with_capacity(refs.len());
    for end in refs {
        let holder = Some(env.container_id.as_str());
        released.extend(release(&mut tx, dataplane.as_mut(), &end.link, end.side, holder)?);
    }
    records::put_container_ends(&mut tx, &env.container_id, &[])?;
    tx.commit()?;
    let host = Netlink::host()?;
    for record in &released {
        teardown(&host, dataplane.as_ref(), record).await?;
    }
    Ok(released)
}

/// Unwires one attached end and forgets it: both directions stop forwarding,
/// its counters go, and its container no longer lists it. With `holder`, only
/// an end that container holds. Returns the record so the caller can delete
/// the veth once the transaction is committed.
pub fn release(
    tx: &mut impl Transaction,
    dataplane: Option<&mut Dataplane>,
    link: &str,
    side: Side,
    holder: Option<&str>,
) -> Result<Option<EndRecord>, CniError> {
    let mut ends = records::ends(tx, link)?;
    let Some(record) = ends[side.index()].clone() else {
        return Ok(None);
    };
    if holder.is_some_and(|holder| holder != record.container_id) {
        return Ok(None);
    }
    let before = pairing::forwarding(&ends, &record.node);
    ends[side.index()] = None;
    if let Some(dataplane) = dataplane {
        let (stale, _) = pairing::rewire(&before, &pairing::forwarding(&ends, &record.node));
        for from in stale {
            dataplane.unforward(from)?;
        }
        dataplane.untrack(record.host_ifindex)?;
    }
    records::delete_end(tx, link, side)?;
    let mut held = records::container_ends(tx, &record.container_id)?;
    held.retain(|end| !(end.link == link && end.side == side));
    records::put_container_ends(tx, &record.container_id, &held)?;
    Ok(Some(record))
}

/// Deletes a released end's veth (the pod end goes with it) and its tcx
/// link pin, if it had one. By ifindex: a new ADD may already have made a
/// veth with the same name.
pub async fn teardown(host: &Netlink, dataplane: Option<&Dataplane>, record: &EndRecord) -> Result<(), CniError> {
    if let Some(dataplane) = dataplane {
        dataplane.detach_tcx(&record.host_ifname)?;
    }
    host.delete_link(record.host_ifindex).await?;
    Ok(())
}
