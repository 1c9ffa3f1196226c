//! Ends of running pods brought in line with a changed world: the agent's
//! part of the lifecycle. A topology that changed while a pod runs gives
//! it new ends, takes ends away and changes MTUs and MACs; pins made afresh
//! (removed by hand, bpffs remounted) leave every live end running the old
//! program on the old maps.

use std::{collections::HashMap, path::Path};

use tracing::info;

use super::{Ends, EndsError, Released, VXLAN_DEVICE};
use crate::{
    netlink::Netlink,
    store::{
        Transaction,
        records::{self, EndRecord},
    },
    tc::{self, Hook},
    topology::{Link, Side},
};

/// Both ends of each link, by link id.
pub type EndsByLink = HashMap<String, [Option<EndRecord>; 2]>;

impl Ends<'_> {
    /// Brings every running pod on this node in line with the topology: ends
    /// of links it gained are made, ends of links it lost are released
    /// (returned, to tear down once committed), and a changed MTU or MAC is
    /// set on the live interfaces. Only a pod ratchet ADDed is known, with
    /// its netns.
    pub async fn sync_running_pods(&mut self, tx: &mut impl Transaction) -> Result<Vec<Released>, EndsError> {
        let mut unlinked = Vec::new();
        for (pod, sandbox) in records::sandboxes(tx).await? {
            if sandbox.node != self.fabric.node || !Path::new(&sandbox.netns).exists() {
                continue;
            }
            let links = records::links_of_pod(tx, &pod).await?;
            let wanted: Vec<(&Link, Side)> =
                links.iter().flat_map(|link| link.sides_of(&pod).map(move |side| (link, side))).collect();
            let held = records::container_ends(tx, &sandbox.container_id).await?;
            for end in &held {
                if !wanted.iter().any(|(link, side)| link.id() == end.link && *side == end.side) {
                    let holder = Some(sandbox.container_id.as_str());
                    unlinked.extend(self.release(tx, &end.link, end.side, holder).await?);
                }
            }
            let in_pod = Netlink::in_netns(&crate::netlink::open_netns(&sandbox.netns)?, &sandbox.netns)?;
            for (link, side) in wanted {
                if held.iter().any(|end| end.link == link.id() && end.side == side) {
                    self.apply_link_settings(&in_pod, tx, link, side).await?;
                } else {
                    self.attach_one(tx, &sandbox, &pod, (link, side)).await?;
                    info!(pod = %pod, link = %link.id(), "attached a link end the topology gained");
                }
            }
        }
        Ok(unlinked)
    }

    /// Sets a link's MTU (both ends of this side's veth), the end's MAC and
    /// its impairment when the topology changed them.
    async fn apply_link_settings(
        &mut self,
        in_pod: &Netlink,
        tx: &mut impl Transaction,
        link: &Link,
        side: Side,
    ) -> Result<(), EndsError> {
        let Some(record) = records::end(tx, &link.id(), side).await? else { return Ok(()) };
        let Some(pod_end) = in_pod.link_by_name(record.ifname.as_str()).await? else { return Ok(()) };
        let mtu = self.settings.link_mtu(link);
        if pod_end.mtu != mtu {
            in_pod.set_mtu(pod_end.index, record.ifname.as_str(), mtu).await?;
            self.host.set_mtu(record.host_ifindex, &record.host_ifname, mtu).await?;
            info!(link = %link.id(), mtu, "changed a link end's MTU");
        }
        if let Some(mac) = link.end(side).mac
            && pod_end.mac != Some(mac)
        {
            in_pod.set_mac(pod_end.index, record.ifname.as_str(), mac).await?;
            info!(link = %link.id(), %mac, "changed a link end's MAC");
        }
        let impairment = super::impair::wanted(tx, link, side).await?;
        if record.impairment != impairment {
            super::impair::shape_pod_end(in_pod, record.ifname.as_str(), &impairment).await?;
            let record = EndRecord { impairment, ..record };
            super::impair::record(tx, self.dataplane.as_mut(), &link.id(), side, &record).await?;
            info!(link = %link.id(), side = side.as_str(), %impairment, "changed a link end's impairment");
        }
        Ok(())
    }

    /// After the pins were made afresh, gives every live end of this node
    /// the current program, restarts its counters and records the
    /// generation; likewise the VXLAN device's tunnel program.
    pub async fn restore_programs(
        &mut self,
        tx: &mut impl Transaction,
        by_link: &mut EndsByLink,
    ) -> Result<(), EndsError> {
        let (host, mode, node) = (self.host.clone(), self.settings.attach, self.fabric.node.clone());
        let dataplane = self.loaded()?;
        let generation = dataplane.generation();
        for (link, ends) in by_link.iter_mut() {
            for (side, end) in [Side::A, Side::B].into_iter().zip(ends.iter_mut()) {
                let Some(end) = end.as_mut().filter(|end| end.node == node && end.generation != generation) else {
                    continue;
                };
                tc::replace(&host, dataplane, Hook::to_peer(end.host_ifindex, &end.host_ifname, mode)).await?;
                dataplane.track(end.host_ifindex)?;
                end.generation = generation;
                records::put_end(tx, link, side, end).await?;
                info!(link = %link, end = %end.host_ifname, "restored the program on a host end");
            }
        }
        if let Some(index) = self.fabric.vxlan_ifindex {
            let hook = Hook::from_tunnel(index, VXLAN_DEVICE);
            let dataplane = self.loaded()?;
            if !tc::attached(&host, dataplane, hook).await? {
                tc::replace(&host, dataplane, hook).await?;
                info!("restored the tunnel program on {VXLAN_DEVICE}");
            }
        }
        Ok(())
    }
}
