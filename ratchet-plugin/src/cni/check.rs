//! CHECK: is every link end of this container still as ADD left it (see
//! [`crate::ends::inspect_container`]), does the runtime's cached result
//! list it, and does the delegate that served the container agree?

use std::collections::HashSet;

use super::{chain, env::CniEnv, error::CniError, request::Config};
use crate::{
    ends::{self, Inspected},
    store::records::EndRecord,
};

/// Checks the ends, then the delegate.
pub async fn cmd_check(config: &Config, env: &CniEnv) -> Result<(), CniError> {
    let holding = ends::inspect_container(&config.settings, &env.container_id, env.pod().ok()).await?;
    let ours = match holding.is_empty() {
        true => Vec::new(),
        false => holding.verify(&env.open_netns()?, &env.netns).await?,
    };
    for end in &ours {
        check_prev_result(config, end)?;
    }
    let ours: Vec<EndRecord> = ours.into_iter().map(|end| end.record).collect();
    for delegate in chain::delegates_for(config, env, !ours.is_empty()).await? {
        delegate.check(env, chain::prev_result_for(config, &delegate, &ours).as_ref())?;
    }
    Ok(())
}

/// The runtime's cached result must list the pod end and its addresses,
/// unless a topology change added the end after the ADD that result came
/// from: the runtime never hears of such an end (CNI has no verb to tell
/// it), so CHECK verifies it in the kernel and the maps like the others and
/// does not look for it in `prevResult`.
fn check_prev_result(config: &Config, end: &Inspected) -> Result<(), CniError> {
    let Some(prev) = &config.netconf.prev_result else { return Ok(()) };
    if end.record.added_live {
        return Ok(());
    }
    let name = end.record.ifname.as_str();
    let drift = |what: String| CniError::CheckDrift(format!("prevResult: {what}"));
    let position = prev
        .interfaces
        .iter()
        .position(|i| i.name == name && i.sandbox.as_deref() == Some(end.record.netns.as_str()))
        .ok_or_else(|| drift(format!("has no interface {name} in {}", end.record.netns)))?;
    let Some(link) = &end.link else { return Ok(()) };
    let listed: HashSet<_> =
        prev.ips.iter().filter(|ip| ip.interface == Some(position as u32)).map(|ip| ip.address).collect();
    match link.end(end.side).ips.iter().find(|ip| !listed.contains(*ip)) {
        Some(missing) => Err(drift(format!("does not list {missing} on {name}"))),
        None => Ok(()),
    }
}
