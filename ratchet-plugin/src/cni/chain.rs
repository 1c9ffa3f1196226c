//! Which networks serve a pod, and in what order.
//!
//! - ratchet alone (a secondary network, e.g. a Multus attachment): a linked
//!   pod gets its links and the result lists just those;
//! - chained after other plugins (`prevResult` present): a linked pod's links
//!   are added to the previous result; any other pod passes it through;
//! - the seed's standalone mode: `boot_network` is run first for linked
//!   pods and ratchet's links are merged into its result; every other pod
//!   goes straight to `delegate` and gets its result.
//!
//! A failure on one side undoes the other: a boot network whose ratchet part
//! fails is DELeted again.

use std::collections::HashSet;

use rscni_types::types::CNIResult;
use serde_json::Value;
use tracing::warn;

pub use super::delegate::Role;
use super::{delegate::Delegate, env::CniEnv, error::CniError, request::Config, version::encode_result};
use crate::{
    ends,
    store::{Store, Transaction, records::EndRecord},
    topology::PodRef,
};

/// Our links appended to an earlier result, IP interface indexes shifted.
pub fn merge(mut base: CNIResult, ours: CNIResult) -> CNIResult {
    // A handful of interfaces: the count fits.
    let offset = base.interfaces.len() as u32;
    base.interfaces.extend(ours.interfaces);
    base.ips.extend(ours.ips.into_iter().map(|mut ip| {
        ip.interface = ip.interface.map(|index| index + offset);
        ip
    }));
    base
}

/// The delegate the config names for `role`, if any.
pub fn delegate(config: &Config, role: Role) -> Result<Option<Delegate>, CniError> {
    Delegate::of(role, &config.settings, &config.raw)
}

/// The delegate that served a container: the boot network when it holds (or
/// should hold) links, else the ordinary delegate; both when the pod is
/// unknown, since DEL and CHECK of a plugin that never saw it are harmless.
pub async fn delegates_for(config: &Config, env: &CniEnv, holds_links: bool) -> Result<Vec<Delegate>, CniError> {
    if config.settings.delegate.is_none() && config.settings.boot_network.is_none() {
        return Ok(Vec::new());
    }
    let linked = match env.pod() {
        Ok(_) if holds_links => Some(true),
        Ok(pod) => Some(has_links(config, pod).await?),
        Err(_) => None,
    };
    let mut chosen = Vec::new();
    if linked != Some(false) {
        chosen.extend(delegate(config, Role::BootNetwork)?);
    }
    if linked != Some(true) {
        chosen.extend(delegate(config, Role::Delegate)?);
    }
    Ok(chosen)
}

/// Whether the topology gives `pod` a link (in a transaction of its own).
async fn has_links(config: &Config, pod: &PodRef) -> Result<bool, CniError> {
    let mut store = ends::open_store(&config.settings).await?;
    let mut tx = store.begin().await?;
    let linked = !ends::links_of_pod(&mut tx, &config.settings, pod).await?.is_empty();
    tx.commit().await?;
    Ok(linked)
}

/// The delegates STATUS and GC reach: those whose config version has them.
pub fn node_delegates(config: &Config) -> Result<Vec<Delegate>, CniError> {
    let all = [delegate(config, Role::BootNetwork)?, delegate(config, Role::Delegate)?];
    Ok(all.into_iter().flatten().filter(Delegate::knows_status_and_gc).collect())
}

/// The runtime's prevResult as the delegate made it: our link interfaces
/// (and their IPs) taken out, and in the delegate's own version's layout.
pub fn prev_result_for(config: &Config, delegate: &Delegate, ours: &[EndRecord]) -> Option<Value> {
    let prev = config.netconf.prev_result.as_ref()?;
    let mine: HashSet<&str> = ours.iter().flat_map(|end| [end.host_ifname.as_str(), end.ifname.as_str()]).collect();
    let mut kept = CNIResult { interfaces: Vec::new(), ips: Vec::new(), ..prev.clone() };
    let mut new_index = Vec::with_capacity(prev.interfaces.len());
    for interface in &prev.interfaces {
        let is_ours = mine.contains(interface.name.as_str());
        new_index.push((!is_ours).then_some(kept.interfaces.len() as u32));
        if !is_ours {
            kept.interfaces.push(interface.clone());
        }
    }
    for ip in &prev.ips {
        match ip.interface.map(|index| new_index.get(index as usize).copied().flatten()) {
            Some(None) => {}
            Some(Some(index)) => kept.ips.push(rscni_types::types::IpConfig { interface: Some(index), ..ip.clone() }),
            None => kept.ips.push(ip.clone()),
        }
    }
    Some(encode_result(delegate.version(), kept))
}

/// Logs the seed's keys this version ignores.
pub fn warn_unused_seed_keys(config: &Config) {
    for key in config.settings.unused_seed_keys() {
        warn!("ignoring {key}");
    }
}
