//! ADD: the pod's link ends, on their own, after the earlier plugins of a
//! chain, or merged into the result of the `boot_network`; a pod without
//! links goes to the `delegate` (or passes the chain's result through).

use rscni_types::types::{CNIResult, Interface, IpConfig};

use super::{chain, env::CniEnv, error::CniError, request::Config};
use crate::{
    ends::{self, AttachedEnd, Sandbox},
    store::{
        Store, Transaction,
        records::{self, FailedAdd},
    },
    topology::{Link, MacAddr, PodRef},
};

/// One store transaction for the lookup and the attach (two behind a boot
/// network, which runs outside the store's lock: it may take long, and
/// every other verb of the node would wait for it).
pub async fn cmd_add(config: &Config, env: &CniEnv) -> Result<CNIResult, CniError> {
    chain::warn_unused_seed_keys(config);
    let (settings, pod) = (&config.settings, env.pod()?);
    let mut store = ends::open_store(settings).await?;
    let mut tx = store.begin().await?;
    let links = ends::links_of_pod(&mut tx, settings, pod).await?;
    if links.is_empty() {
        tx.commit().await?;
        return unlinked(config, env, pod);
    }
    let netns = env.open_netns()?;
    let Some(boot) = chain::delegate(config, chain::Role::BootNetwork)? else {
        let base = config.netconf.prev_result.clone();
        let attached = attach(tx, config, env, (pod, &netns), &links, base.is_none()).await;
        let ours = record_failure(&mut store, settings, pod, &links, attached).await?;
        return Ok(chain::merge(base.unwrap_or_default(), ours));
    };
    tx.commit().await?;
    let base = boot.add(env)?;
    let attached = async {
        let mut tx = store.begin().await?;
        let links = ends::links_of_pod(&mut tx, settings, pod).await?;
        let attached = attach(tx, config, env, (pod, &netns), &links, false).await;
        record_failure(&mut store, settings, pod, &links, attached).await
    };
    match attached.await {
        Ok(ours) => Ok(chain::merge(base, ours)),
        Err(error) => {
            let _ = boot.del(env, None);
            Err(error)
        }
    }
}

/// Passes `attached` through; when it failed, first records the failure
/// against each of the pod's ends (best effort: the ADD's own error is what
/// the runtime gets), so that `ratchet links` can say why a link waits.
async fn record_failure<T>(
    store: &mut impl Store,
    settings: &crate::config::Settings,
    pod: &PodRef,
    links: &[Link],
    attached: Result<T, CniError>,
) -> Result<T, CniError> {
    let Err(error) = &attached else { return attached };
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let failed = FailedAdd { node: settings.node(), error: error.to_string(), at };
    let recorded = async {
        let mut tx = store.begin().await?;
        for link in links {
            for side in link.sides_of(pod) {
                records::put_failed_add(&mut tx, &link.id(), side, &failed).await?;
            }
        }
        tx.commit().await
    };
    if let Err(store_error) = recorded.await {
        tracing::warn!(%store_error, "could not record the failed ADD for `ratchet links`");
    }
    attached
}

/// A pod the topology gives no link: the delegate's, or the chain's.
fn unlinked(config: &Config, env: &CniEnv, pod: &PodRef) -> Result<CNIResult, CniError> {
    if let Some(delegate) = chain::delegate(config, chain::Role::Delegate)? {
        return delegate.add(env);
    }
    match &config.netconf.prev_result {
        Some(prev) => Ok(prev.clone()),
        None => Err(CniError::PodNotInTopology { pod: pod.to_string() }),
    }
}

/// Attaches the pod's ends and commits; `alone`: ratchet is the only plugin
/// of this attachment, so `CNI_IFNAME` must be free too.
async fn attach(
    tx: impl Transaction,
    config: &Config,
    env: &CniEnv,
    (pod, netns): (&PodRef, &std::fs::File),
    links: &[Link],
    alone: bool,
) -> Result<CNIResult, CniError> {
    let sandbox = Sandbox {
        pod,
        container_id: &env.container_id,
        cni_ifname: &env.ifname,
        netns_path: &env.netns,
        netns,
        claims_cni_ifname: alone,
        live: false,
    };
    let attached = ends::attach_pod(tx, &config.settings, &sandbox, links).await?;
    Ok(result(&attached, &env.netns))
}

/// The result lists each end's host veth, then its pod interface with the
/// pod's addresses.
fn result(attached: &[AttachedEnd], netns: &str) -> CNIResult {
    let mut result = CNIResult::default();
    for end in attached {
        result.interfaces.push(interface(&end.host_ifname, end.host_mac, None));
        result.interfaces.push(interface(&end.ifname, end.mac, Some(netns)));
        // A handful of interfaces: the index fits.
        let pod_index = (result.interfaces.len() - 1) as u32;
        result.ips.extend(end.ips.iter().map(|ip| IpConfig {
            interface: Some(pod_index),
            address: *ip,
            gateway: None,
        }));
    }
    result
}

fn interface(name: &str, mac: Option<MacAddr>, sandbox: Option<&str>) -> Interface {
    Interface {
        name: name.into(),
        mac: mac.map(|m| m.to_string()).unwrap_or_default(),
        mtu: None,
        sandbox: sandbox.map(Into::into),
        socket_path: None,
        pci_id: None,
    }
}
