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

use std::{collections::HashSet, path::PathBuf};

use rscni_types::types::CNIResult;
use serde_json::Value;
use tracing::warn;

use super::{Config, add, check, del, encode_result, env::CniEnv, error::CniError, gc, status};
use crate::{
    delegate::Delegate,
    store::{self, records::EndRecord},
};

pub async fn add(config: &Config, env: &CniEnv) -> Result<CNIResult, CniError> {
    warn_unused_seed_keys(config);
    let pod = env.pod()?;
    // One store connection for the whole ADD (with etcd, a connection is
    // most of what a lookup costs).
    let mut store = store::open(&config.settings).await?;
    if !add::pod_has_links(config, &mut store, &pod).await? {
        if let Some(delegate) = delegate(config, "delegate")? {
            return delegate.add(env);
        }
        if let Some(prev) = &config.netconf.prev_result {
            return Ok(prev.clone());
        }
        return Err(CniError::PodNotInTopology { pod: pod.to_string() });
    }
    let boot = delegate(config, "boot_network")?;
    let base = match &boot {
        Some(boot) => Some(boot.add(env)?),
        None => config.netconf.prev_result.clone(),
    };
    // Ratchet alone owns CNI_IFNAME; behind a boot network or a chain, the
    // earlier plugin made it.
    let owns_cni_ifname = base.is_none();
    let ours = match add::add(config, &mut store, env, owns_cni_ifname).await {
        Ok(ours) => ours,
        Err(error) => {
            if let Some(boot) = &boot {
                let _ = boot.del(env, None);
            }
            return Err(error);
        }
    };
    Ok(merge(base.unwrap_or_default(), ours))
}

pub async fn del(config: &Config, env: &CniEnv) -> Result<(), CniError> {
    let released = del::del(config, env).await?;
    for delegate in delegates_for(config, env, !released.is_empty()).await? {
        delegate.del(env, prev_result_for(config, &delegate, &released).as_ref())?;
    }
    Ok(())
}

pub async fn check(config: &Config, env: &CniEnv) -> Result<(), CniError> {
    let ours = check::check(config, env).await?;
    for delegate in delegates_for(config, env, !ours.is_empty()).await? {
        delegate.check(env, prev_result_for(config, &delegate, &ours).as_ref())?;
    }
    Ok(())
}

pub async fn status(config: &Config, path: &[PathBuf]) -> Result<(), CniError> {
    status::status(config).await?;
    for delegate in node_delegates(config)? {
        delegate.call_node_verb("STATUS", path, None)?;
    }
    Ok(())
}

pub async fn gc(config: &Config, path: &[PathBuf]) -> Result<(), CniError> {
    let mut errors = gc::gc(config).await;
    let valid = config.raw.get(gc::VALID_ATTACHMENTS).cloned().unwrap_or(Value::Array(Vec::new()));
    for delegate in node_delegates(config)? {
        if let Err(error) = delegate.call_node_verb("GC", path, Some((gc::VALID_ATTACHMENTS, &valid))) {
            errors.push(error.to_string());
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(CniError::Gc(errors.join("; "))) }
}

/// Our links appended to an earlier result, IP interface indexes shifted.
fn merge(mut base: CNIResult, ours: CNIResult) -> CNIResult {
    let offset = u32::try_from(base.interfaces.len()).expect("a handful of interfaces");
    base.interfaces.extend(ours.interfaces);
    base.ips.extend(ours.ips.into_iter().map(|mut ip| {
        ip.interface = ip.interface.map(|index| index + offset);
        ip
    }));
    base
}

/// Reads both delegate keys, so a malformed one is a config error for every
/// verb and every pod, not only when a pod first needs it.
pub fn check_delegates(config: &Config) -> Result<(), CniError> {
    delegate(config, "delegate")?;
    delegate(config, "boot_network")?;
    Ok(())
}

fn delegate(config: &Config, role: &'static str) -> Result<Option<Delegate>, CniError> {
    let raw = match role {
        "delegate" => config.settings.delegate.as_ref(),
        _ => config.settings.boot_network.as_ref(),
    };
    raw.map(|raw| Delegate::new(role, raw, &config.raw)).transpose()
}

/// The delegate that served a container: the boot network when it holds (or
/// should hold) links, else the ordinary delegate; both when the pod is
/// unknown, since DEL and CHECK of a plugin that never saw it are harmless.
async fn delegates_for(config: &Config, env: &CniEnv, holds_links: bool) -> Result<Vec<Delegate>, CniError> {
    if config.settings.delegate.is_none() && config.settings.boot_network.is_none() {
        return Ok(Vec::new());
    }
    let linked = match env.pod() {
        Ok(_) if holds_links => Some(true),
        Ok(pod) => Some(add::pod_has_links(config, &mut store::open(&config.settings).await?, &pod).await?),
        Err(_) => None,
    };
    let mut chosen = Vec::new();
    if linked != Some(false) {
        chosen.extend(delegate(config, "boot_network")?);
    }
    if linked != Some(true) {
        chosen.extend(delegate(config, "delegate")?);
    }
    Ok(chosen)
}

/// The delegates STATUS and GC reach: those whose config version has them.
fn node_delegates(config: &Config) -> Result<Vec<Delegate>, CniError> {
    let all = [delegate(config, "boot_network")?, delegate(config, "delegate")?];
    Ok(all.into_iter().flatten().filter(Delegate::knows_status_and_gc).collect())
}

/// The runtime's prevResult as the delegate made it: our link interfaces
/// (and their IPs) taken out, and in the delegate's own version's layout.
fn prev_result_for(config: &Config, delegate: &Delegate, ours: &[EndRecord]) -> Option<Value> {
    let prev = config.netconf.prev_result.as_ref()?;
    let mine: HashSet<&str> = ours.iter().flat_map(|end| [end.host_ifname.as_str(), end.ifname.as_str()]).collect();
    let mut kept = CNIResult { interfaces: Vec::new(), ips: Vec::new(), ..prev.clone() };
    let mut new_index = Vec::with_capacity(prev.interfaces.len());
    for interface in &prev.interfaces {
        let is_ours = mine.contains(interface.name.as_str());
        new_index.push((!is_ours).then(|| u32::try_from(kept.interfaces.len()).expect("few interfaces")));
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

fn warn_unused_seed_keys(config: &Config) {
    for key in config.settings.unused_seed_keys() {
        warn!("ignoring {key}");
    }
}
