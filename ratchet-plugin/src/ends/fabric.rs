//! This node's part in cross-node links: its VXLAN device, its entry in the
//! store's node registry, and the [`Fabric`] every verb wires with.

use std::collections::HashMap;

use super::{EndsError, failpoint};
use crate::{
    config::Settings,
    dataplane::Dataplane,
    netlink::Netlink,
    pairing::Fabric,
    store::{
        Transaction,
        records::{self, NodeRecord},
    },
    tc::{self, Hook},
};

/// The node's one VXLAN device: every cross-node link goes through it.
pub const VXLAN_DEVICE: &str = "rtvx0";

/// What this node knows of the fabric now. On a node without `node_ip` the
/// fabric is this node alone.
pub async fn fabric(tx: &mut impl Transaction, settings: &Settings, host: &Netlink) -> Result<Fabric, EndsError> {
    let node = settings.node();
    if settings.node_ip.is_none() {
        return Ok(Fabric::single(&node));
    }
    let node_ips: HashMap<_, _> =
        records::nodes(tx).await?.into_iter().map(|(name, n)| (name, n.underlay_ipv4)).collect();
    let vxlan_ifindex = host.link_by_name(VXLAN_DEVICE).await?.map(|link| link.index);
    Ok(Fabric { node, vxlan_ifindex, node_ips })
}

/// Makes this node ready for cross-node links: registered with its underlay
/// address, and a VXLAN device with the tunnel program on its ingress.
/// Returns the fabric as it is then. Runs inside the caller's transaction,
/// so two verbs on one node never both create the device.
pub async fn join(
    tx: &mut impl Transaction,
    settings: &Settings,
    host: &Netlink,
    dataplane: &mut Dataplane,
) -> Result<Fabric, EndsError> {
    let Some(ip) = settings.node_ip else {
        return Ok(Fabric::single(&settings.node()));
    };
    let mut fabric = fabric(tx, settings, host).await?;
    if fabric.node_ips.get(&fabric.node) != Some(&ip) {
        records::put_node(tx, &fabric.node, &NodeRecord { underlay_ipv4: ip }).await?;
        fabric.node_ips.insert(fabric.node.clone(), ip);
    }
    if fabric.vxlan_ifindex.is_none() {
        let vxlan = host.create_vxlan(VXLAN_DEVICE, ip, settings.vxlan_port).await?;
        // A device without the tunnel program would be taken as ready by
        // every later verb: it goes again if the program cannot go on.
        if let Err(error) = attach_tunnel(host, dataplane, vxlan.index).await {
            let _ = host.delete_link(vxlan.index).await;
            return Err(error);
        }
        fabric.vxlan_ifindex = Some(vxlan.index);
    }
    Ok(fabric)
}

async fn attach_tunnel(host: &Netlink, dataplane: &mut Dataplane, index: u32) -> Result<(), EndsError> {
    failpoint!("add::vxlan-made");
    Ok(tc::attach(host, dataplane, Hook::from_tunnel(index, VXLAN_DEVICE)).await?)
}
