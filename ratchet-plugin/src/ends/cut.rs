//! Cutting a link like pulling its cable (`ratchet link down`, `up`).
//!
//! A cut link's host veths are set administratively down, so each pod end
//! loses its carrier (NO-CARRIER, operstate DOWN: routing daemons in the pods
//! see the link fail) and the kernel drops what the pod sends on it,
//! counted as TX drops of the pod's interface. The datapath is untouched:
//! its map entries stay, so `link up` restores the link exactly as it was.
//! The cut is a store record ([`records::set_cut`]), so it holds for ends
//! on every node: the CLI applies it to the ends of its own node at once, an
//! ADD to an end it makes, and each node's agent to its node's ends.

use std::collections::{BTreeSet, HashMap};

use super::{EndsByLink, EndsError, is_live};
use crate::{netlink::Netlink, store::records::EndRecord};

/// Sets `end`'s host veth down (cut) or up, when the veth is on this node.
/// True when it was.
pub async fn apply(host: &Netlink, end: &EndRecord, cut: bool) -> Result<bool, EndsError> {
    if !is_live(host, end).await? {
        return Ok(false);
    }
    match cut {
        true => host.set_down(end.host_ifindex, &end.host_ifname).await?,
        false => host.set_up(end.host_ifindex, &end.host_ifname).await?,
    }
    Ok(true)
}

/// What an agent last applied to each of its node's host veths (by
/// ifindex), so that a round touches only those whose state changed.
#[derive(Debug, Default)]
pub struct Applied(HashMap<u32, bool>);

impl Applied {
    /// Brings this node's ends of `by_link` in line with `cut`: the first
    /// round sets every end, later ones those whose link's state changed.
    /// Returns how many veths it set.
    pub async fn sync(
        &mut self,
        host: &Netlink,
        node: &str,
        by_link: &EndsByLink,
        cut: &BTreeSet<String>,
    ) -> Result<usize, EndsError> {
        let mut seen = HashMap::with_capacity(self.0.len());
        let mut changed = 0;
        for (link, ends) in by_link {
            let wanted = cut.contains(link);
            for end in ends.iter().flatten().filter(|end| end.node == node) {
                if self.0.get(&end.host_ifindex) != Some(&wanted) {
                    changed += usize::from(apply(host, end, wanted).await?);
                }
                seen.insert(end.host_ifindex, wanted);
            }
        }
        self.0 = seen;
        Ok(changed)
    }
}
