//! STATUS (spec 1.1): can this node serve ADD right now?
//!
//! Ready means the store answers, bpffs is mounted and the program and maps
//! are pinned. On a node with no link yet, STATUS makes them so (mounting
//! bpffs, loading and pinning: what the first ADD would do anyway), so a
//! fresh node reports ready instead of waiting for an ADD that a runtime
//! would not send while the plugin is not ready. Pins gone while ends are
//! attached is error 51: those links still forward, but cannot be changed.

use std::path::PathBuf;

use super::{chain, error::CniError, request::Config};
use crate::{
    dataplane::Dataplane,
    ends,
    netlink::Netlink,
    store::{Store, StoreError, records},
};

/// Ready when ratchet is, and every delegate that knows STATUS says so.
pub async fn cmd_status(config: &Config, path: &[PathBuf]) -> Result<(), CniError> {
    ours(config).await?;
    for delegate in chain::node_delegates(config)? {
        delegate.call_node_verb("STATUS", path, None)?;
    }
    Ok(())
}

async fn ours(config: &Config) -> Result<(), CniError> {
    let settings = &config.settings;
    let unanswered =
        |e: StoreError| CniError::NotAvailable { limited: false, reason: format!("the store does not answer: {e}") };
    let mut store = ends::open_store(settings).await.map_err(unanswered)?;
    let ends = async { records::all_ends(&mut store.begin().await?).await }.await.map_err(unanswered)?;
    // An end counts as attached while its host veth is still the one ADD
    // made: after a reboot the store still holds records until DEL or GC,
    // but no filter reads the old maps any more.
    let host = Netlink::host()?;
    let node = settings.node();
    let mut attached = 0;
    for (_, _, end) in &ends {
        if end.node == node && ends::is_live(&host, end).await? {
            attached += 1;
        }
    }
    let pinned = Dataplane::open(&settings.pin_root)
        .map_err(|e| CniError::NotAvailable { limited: attached > 0, reason: e.to_string() })?;
    if pinned.is_none() && attached > 0 {
        // Loading afresh would give new maps that the attached ends' filters
        // never read: their forwarding can no longer be changed.
        let reason = format!(
            "the pins under {} are gone while {attached} link end(s) are attached",
            settings.pin_root.display()
        );
        return Err(CniError::NotAvailable { limited: true, reason });
    }
    Dataplane::open_or_load(&settings.pin_root, &settings.state_dir).map_err(|e| {
        // Links already up keep forwarding (their filters hold the program),
        // but nothing can update their maps: say so.
        let limited = attached > 0;
        let also = if limited { format!("; {attached} attached link end(s) cannot be changed") } else { String::new() };
        CniError::NotAvailable { limited, reason: format!("{e}{also}") }
    })?;
    Ok(())
}
