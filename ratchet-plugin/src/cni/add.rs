//! ADD: give the pod one end of each of its links.
//!
//! For every link the topology gives the pod: a veth whose pod end is born in
//! the pod's netns with the link's name, addresses and MTU; the redirect
//! program on the host end; a record in the store; and, when the peer is
//! already attached, the forwarding entries for both directions. ADD never
//! waits for the peer. It all happens inside one store transaction, and a
//! failure undoes what was made, so nothing is left half-built.

use std::{fs::File, os::fd::AsFd};

use ratchet_common::PROG_TO_PEER;
use rscni_types::types::{CNIResult, Interface, IpConfig};

use super::{Config, del, env::CniEnv, error::CniError, orphans};
use crate::{
    config::{AttachMode, Settings},
    dataplane::Dataplane,
    naming,
    netlink::{Netlink, VethSpec},
    node,
    pairing::{self, Entry, Fabric},
    reap::{self, Doomed},
    store::{
        AnyStore, Store, Transaction,
        records::{self, EndRecord, EndRef, SandboxRecord},
    },
    topology::{Link, PodRef, Side},
};

/// True when the topology gives `pod` at least one link.
pub async fn pod_has_links(config: &Config, store: &mut AnyStore, pod: &PodRef) -> Result<bool, CniError> {
    let mut tx = store.begin().await?;
    if let Some(topology) = &config.settings.topology {
        records::ensure_topology(&mut tx, topology).await?;
    }
    let linked = !records::links_of_pod(&mut tx, pod).await?.is_empty();
    tx.commit().await?;
    Ok(linked)
}

/// Attaches every link end of the pod. `owns_cni_ifname`: ratchet is the
/// pod's only plugin for this attachment, so `CNI_IFNAME` must be free too.
pub async fn add(
    config: &Config,
    store: &mut AnyStore,
    env: &CniEnv,
    owns_cni_ifname: bool,
) -> Result<CNIResult, CniError> {
    let settings = &config.settings;
    let pod = env.pod()?;
    let netns = open_netns(&env.netns)?;
    let mut dataplane = Dataplane::open_or_load(&settings.pin_root, &settings.state_dir)?;
    let host = Netlink::host()?;
    let in_pod = Netlink::in_netns(&netns, &env.netns)?;
    if owns_cni_ifname && in_pod.link_by_name(&env.ifname).await?.is_some() {
        return Err(CniError::IfNameTaken { ifname: env.ifname.clone(), netns: env.netns.clone() });
    }

    let mut tx = store.begin().await?;
    let links = records::links_of_pod(&mut tx, &pod).await?;
    if links.is_empty() {
        return Err(CniError::PodNotInTopology { pod: pod.to_string() });
    }
    let fabric = node::join(&mut tx, settings, &host, &mut dataplane).await?;
    // Ends still held by an earlier sandbox of this pod (its DEL was lost, or
    // this is a retry) are released first, in their own transaction, so
    // their veths can go before ours take the same names.
    let stale = release_held_ends(&mut tx, &host, &mut dataplane, &fabric, &links, &pod).await?;
    if !stale.is_empty() {
        tx.commit().await?;
        for end in &stale {
            del::teardown(&host, end).await?;
        }
        tx = store.begin().await?;
    }

    let mut attach = Attach {
        env,
        settings,
        fabric: &fabric,
        host: &host,
        in_pod: &in_pod,
        netns: &netns,
        dataplane: &mut dataplane,
        made: Made::default(),
        result: CNIResult::default(),
    };
    let attached = attach.all(&mut tx, &links, &pod).await.and_then(|()| {
        failpoint!("add::before-commit");
        Ok(())
    });
    let committed = match attached {
        Ok(()) => tx.commit().await.map_err(CniError::from),
        Err(error) => Err(error),
    };
    match committed {
        Ok(()) => Ok(attach.result),
        Err(error) => {
            let made = std::mem::take(&mut attach.made);
            made.undo(&host, &mut dataplane).await;
            Err(error)
        }
    }
}

/// Gives a running sandbox one more link end: the agent, when the topology
/// gained a link for a pod that is already up. Undoes itself on failure.
#[allow(clippy::too_many_arguments)]
pub async fn attach_live(
    tx: &mut impl Transaction,
    settings: &Settings,
    fabric: &Fabric,
    host: &Netlink,
    dataplane: &mut Dataplane,
    sandbox: &SandboxRecord,
    link: &Link,
    side: Side,
) -> Result<(), CniError> {
    let env = CniEnv {
        container_id: sandbox.container_id.clone(),
        netns: sandbox.netns.clone(),
        ifname: sandbox.cni_ifname.clone(),
        args: Default::default(),
        path: Vec::new(),
    };
    let netns = open_netns(&env.netns)?;
    let in_pod = Netlink::in_netns(&netns, &env.netns)?;
    let mut attach = Attach {
        env: &env,
        settings,
        fabric,
        host,
        in_pod: &in_pod,
        netns: &netns,
        dataplane,
        made: Made::default(),
        result: CNIResult::default(),
    };
    let attached = async {
        attach.end(tx, link, side).await?;
        let mut held = records::container_ends(tx, &env.container_id).await?;
        held.push(EndRef { link: link.id(), side });
        records::put_container_ends(tx, &env.container_id, &held).await?;
        Ok::<(), CniError>(())
    }
    .await;
    if attached.is_err() {
        let made = std::mem::take(&mut attach.made);
        made.undo(host, &mut *attach.dataplane).await;
    }
    attached
}

/// Releases every end of `pod`'s links that some container still holds.
async fn release_held_ends(
    tx: &mut impl Transaction,
    host: &Netlink,
    dataplane: &mut Dataplane,
    fabric: &Fabric,
    links: &[Link],
    pod: &PodRef,
) -> Result<Vec<del::Released>, CniError> {
    let mut released = Vec::new();
    for link in links {
        for side in link.sides_of(pod) {
            released.extend(del::release(tx, host, Some(dataplane), fabric, &link.id(), side, None).await?);
        }
    }
    Ok(released)
}

/// Everything one ADD needs while it attaches ends.
struct Attach<'a> {
    env: &'a CniEnv,
    settings: &'a Settings,
    fabric: &'a Fabric,
    host: &'a Netlink,
    in_pod: &'a Netlink,
    netns: &'a File,
    dataplane: &'a mut Dataplane,
    made: Made,
    result: CNIResult,
}

impl Attach<'_> {
    async fn all(&mut self, tx: &mut impl Transaction, links: &[Link], pod: &PodRef) -> Result<(), CniError> {
        let mut held = records::container_ends(tx, &self.env.container_id).await?;
        for link in links {
            for side in link.sides_of(pod) {
                self.end(tx, link, side).await?;
                held.retain(|end| !(end.link == link.id() && end.side == side));
                held.push(EndRef { link: link.id(), side });
            }
        }
        records::put_container_ends(tx, &self.env.container_id, &held).await?;
        let sandbox = SandboxRecord {
            container_id: self.env.container_id.clone(),
            cni_ifname: self.env.ifname.clone(),
            netns: self.env.netns.clone(),
            node: self.fabric.node.clone(),
        };
        records::put_sandbox(tx, pod, &sandbox).await?;
        Ok(())
    }

    async fn end(&mut self, tx: &mut impl Transaction, link: &Link, side: Side) -> Result<(), CniError> {
        let end = link.end(side);
        let ifname = end.ifname.as_str();
        let host_ifname = naming::host_ifname(&link.id(), side);
        // No record holds this name (held ends were released above), so an
        // interface with it is the leftover of an ADD that was killed, or a
        // veth a DEL released and its reaper has not deleted yet (its pod end
        // may be in this netns under our name: it goes too).
        if let Some(orphan) = self.host.link_by_name(&host_ifname).await? {
            let orphan = [Doomed { index: orphan.index, name: host_ifname.clone() }];
            orphans::unwire(self.dataplane, &orphan)?;
            reap::delete_all(self.host, &orphan).await?;
        }
        // A tcx link pin of this name with no veth (its netns went, then a
        // killed verb) would make the tcx attach below fail with EEXIST.
        if self.settings.attach == AttachMode::Tcx {
            self.dataplane.detach_tcx(&host_ifname)?;
        }
        if self.in_pod.link_by_name(ifname).await?.is_some() {
            return Err(CniError::IfNameTaken { ifname: ifname.into(), netns: self.env.netns.clone() });
        }
        let spec = VethSpec {
            host_ifname: &host_ifname,
            pod_ifname: ifname,
            pod_netns: self.netns,
            mtu: self.settings.link_mtu(link),
            pod_mac: end.mac,
        };
        let veth = self.host.create_veth(&spec).await?;
        self.made.veths.push((veth.index, host_ifname.clone()));
        failpoint!("add::veth-made");
        self.host.ready_host_end(veth.index, &host_ifname).await?;
        failpoint!("add::host-end-up");
        // Attach before the pod end is up, so the pod's first frame already
        // meets the program.
        self.attach(veth.index, &host_ifname).await?;
        failpoint!("add::attached");
        self.dataplane.track(veth.index)?;
        self.made.tracked.push(veth.index);
        failpoint!("add::tracked");
        let pod_end = self.in_pod.link_by_name(ifname).await?.ok_or_else(|| CniError::IfNameTaken {
            ifname: format!("{ifname} (vanished right after it was made)"),
            netns: self.env.netns.clone(),
        })?;
        self.in_pod.add_addresses(pod_end.index, ifname, &end.ips).await?;
        failpoint!("add::addressed");
        self.in_pod.set_up(pod_end.index, ifname).await?;
        failpoint!("add::pod-end-up");

        let record = EndRecord {
            container_id: self.env.container_id.clone(),
            cni_ifname: self.env.ifname.clone(),
            pod: end.pod.clone(),
            netns: self.env.netns.clone(),
            ifname: end.ifname.clone(),
            host_ifname: host_ifname.clone(),
            host_ifindex: veth.index,
            node: self.fabric.node.clone(),
            dataplane: self.dataplane.generation(),
            vni: records::link_vni(tx, &link.id()).await?,
            pin_root: Some(self.settings.pin_root.clone()),
        };
        let mut ends = records::ends(tx, &link.id()).await?;
        self.forget_dead_peer(tx, link, side.other(), &mut ends).await?;
        let before = pairing::forwarding(&ends, self.fabric);
        ends[side.index()] = Some(record.clone());
        let (stale, fresh) = pairing::rewire(&before, &pairing::forwarding(&ends, self.fabric));
        for entry in stale {
            self.dataplane.remove(&entry)?;
        }
        for entry in fresh {
            self.dataplane.apply(&entry)?;
            self.made.entries.push(entry);
        }
        records::put_end(tx, &link.id(), side, &record).await?;
        failpoint!("add::wired");

        self.result.interfaces.push(interface(host_ifname, veth.mac, None));
        self.result.interfaces.push(interface(ifname.into(), pod_end.mac, Some(self.env.netns.clone())));
        let pod_index = u32::try_from(self.result.interfaces.len() - 1).expect("a handful of interfaces");
        self.result.ips.extend(end.ips.iter().map(|ip| IpConfig {
            interface: Some(pod_index),
            address: *ip,
            gateway: None,
        }));
        Ok(())
    }
}

impl Attach<'_> {
    /// The redirect program on a host end's ingress. clsact through this
    /// process's own netlink socket: aya's attach would open the program
    /// (probing the kernel's features, a dozen test loads) and two sockets
    /// of its own. tcx through aya.
    async fn attach(&mut self, index: u32, host_ifname: &str) -> Result<(), CniError> {
        match self.settings.attach {
            AttachMode::Clsact => {
                let program = self.dataplane.program_fd()?;
                self.host.add_clsact(index).await?;
                self.host.attach_ingress_bpf(index, program.as_fd(), PROG_TO_PEER).await?;
            }
            AttachMode::Tcx => self.dataplane.attach(host_ifname, AttachMode::Tcx)?,
        }
        Ok(())
    }

    /// A peer on this node whose host veth is not the one its ADD made (its
    /// netns went away without a DEL, or the node rebooted) is forgotten
    /// rather than wired to: its ifindex is dead, or names another interface
    /// now. It is attached again when its pod comes back.
    async fn forget_dead_peer(
        &mut self,
        tx: &mut impl Transaction,
        link: &Link,
        peer_side: Side,
        ends: &mut [Option<EndRecord>; 2],
    ) -> Result<(), CniError> {
        let Some(peer) = &ends[peer_side.index()] else { return Ok(()) };
        if peer.node != self.fabric.node || del::is_live(self.host, peer).await? {
            return Ok(());
        }
        del::release(tx, self.host, Some(self.dataplane), self.fabric, &link.id(), peer_side, None).await?;
        ends[peer_side.index()] = None;
        Ok(())
    }
}

/// The pod's netns, or an error that names `CNI_NETNS`.
fn open_netns(path: &str) -> Result<File, CniError> {
    crate::netlink::open_netns(path).map_err(|e| CniError::Env { var: "CNI_NETNS", reason: e.to_string() })
}

fn interface(name: String, mac: Option<crate::topology::MacAddr>, sandbox: Option<String>) -> Interface {
    Interface {
        name,
        mac: mac.map(|m| m.to_string()).unwrap_or_default(),
        mtu: None,
        sandbox,
        socket_path: None,
        pci_id: None,
    }
}

/// What an ADD made so far, so a failure can take it back.
#[derive(Default)]
struct Made {
    veths: Vec<(u32, String)>,
    tracked: Vec<u32>,
    entries: Vec<Entry>,
}

impl Made {
    /// Best effort: the error that got us here is what the runtime must see,
    /// and whatever fails to go here dies with the pod's netns anyway.
    async fn undo(self, host: &Netlink, dataplane: &mut Dataplane) {
        for entry in self.entries {
            let _ = dataplane.remove(&entry);
        }
        for ifindex in self.tracked {
            let _ = dataplane.untrack(ifindex);
        }
        for (ifindex, ifname) in self.veths {
            let _ = dataplane.detach_tcx(&ifname);
            let _ = host.delete_link(ifindex).await;
        }
    }
}
