//! Attaching link ends: ADD's whole job, and the agent's when the topology
//! gives a running pod a new link.
//!
//! For every planned end: a veth whose pod end is born in the pod's netns
//! with the link's name, addresses and MTU; the redirect program on the host
//! end; counters; a record; and, when the peer is already attached, the
//! forwarding entries for both directions. Attaching never waits for the
//! peer. Every step is written to an undo log first, so a failure (or a
//! commit that does not happen) takes back everything made.

use std::fs::File;

use ipnet::IpNet;

use super::{
    Ends, EndsError, failpoint, orphans,
    plan::PlannedEnd,
    reap::{self, Doomed},
};
use crate::{
    config::AttachMode,
    dataplane::Dataplane,
    netlink::{LinkInfo, Netlink, VethSpec},
    pairing::{self, Entry},
    store::{
        Transaction,
        records::{self, EndRecord, EndRef, SandboxRecord},
    },
    tc::{self, Hook},
    topology::{Impairment, Link, MacAddr, PodRef, Side},
};

/// The pod sandbox ends are attached to, as the runtime names it.
pub struct Sandbox<'a> {
    /// The pod the topology knows.
    pub pod: &'a PodRef,
    /// The runtime's id for the sandbox (`CNI_CONTAINERID`).
    pub container_id: &'a str,
    /// The attachment's `CNI_IFNAME`.
    pub cni_ifname: &'a str,
    /// The sandbox's netns, by path (recorded) and opened (used).
    pub netns_path: &'a str,
    /// The same netns, opened once by the caller.
    pub netns: &'a File,
    /// Ratchet is the attachment's only plugin, so `CNI_IFNAME` must be free
    /// in the pod too (behind a boot network or a chain, an earlier plugin
    /// made it).
    pub claims_cni_ifname: bool,
    /// A topology change adds the ends to the running sandbox, not its ADD:
    /// the runtime's cached result will not list them.
    pub live: bool,
}

/// One end as attached: what the runtime's result lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedEnd {
    /// The host veth.
    pub host_ifname: String,
    /// The host veth's MAC.
    pub host_mac: Option<MacAddr>,
    /// The interface in the pod.
    pub ifname: String,
    /// The pod interface's MAC.
    pub mac: Option<MacAddr>,
    /// The pod interface's addresses.
    pub ips: Vec<IpNet>,
}

/// ADD: attaches every end `links` give the sandbox's pod and commits. Ends
/// of the pod still held by an earlier sandbox (its DEL was lost, or this is
/// a retry) are released and their veths deleted first, so ours can take
/// their names. On failure nothing is left behind.
pub async fn attach_pod(
    mut tx: impl Transaction,
    settings: &crate::config::Settings,
    sandbox: &Sandbox<'_>,
    links: &[Link],
) -> Result<Vec<AttachedEnd>, EndsError> {
    let host = Netlink::host()?;
    fits_the_underlay(&host, settings, links).await?;
    let mut ends = Ends::for_attach(&mut tx, settings, host).await?;
    let mut attach = Attach::new(&mut ends, sandbox)?;
    let attached = attach.all_ends(&mut tx, links).await;
    let attached = match attached {
        Ok(attached) => commit(tx).await.map(|()| attached),
        Err(error) => Err(error),
    };
    if attached.is_err() {
        attach.undo().await;
    }
    attached
}

/// On a node of several (`node_ip`), refuses a link whose MTU the underlay
/// cannot carry in VXLAN: its frames would be dropped (or fragmented)
/// between nodes, whichever node its peer lands on. Before anything is made.
async fn fits_the_underlay(
    host: &Netlink,
    settings: &crate::config::Settings,
    links: &[Link],
) -> Result<(), EndsError> {
    let Some(node_ip) = settings.node_ip else { return Ok(()) };
    let Some(mtu) = links.iter().filter_map(|link| link.mtu.map(|mtu| (link, mtu))).max_by_key(|(_, mtu)| *mtu) else {
        return Ok(());
    };
    let Some((device, underlay)) = host.holder_of(node_ip.into()).await? else { return Ok(()) };
    let overhead = crate::config::VXLAN_OVERHEAD;
    let max = underlay.saturating_sub(overhead);
    match mtu {
        (link, mtu) if mtu > max => {
            Err(EndsError::MtuAboveUnderlay { link: link.id(), mtu, device, underlay, overhead, max })
        }
        _ => Ok(()),
    }
}

async fn commit(tx: impl Transaction) -> Result<(), EndsError> {
    failpoint!("add::before-commit");
    Ok(tx.commit().await?)
}

impl<'a> Ends<'a> {
    /// Gives a running sandbox one more link end (the agent, when the
    /// topology gained a link for a pod that is already up). Undoes itself
    /// on failure; the caller commits.
    pub async fn attach_one(
        &mut self,
        tx: &mut impl Transaction,
        sandbox: &SandboxRecord,
        pod: &PodRef,
        (link, side): (&Link, Side),
    ) -> Result<(), EndsError> {
        let netns = crate::netlink::open_netns(&sandbox.netns)?;
        let sandbox = Sandbox {
            pod,
            container_id: &sandbox.container_id,
            cni_ifname: &sandbox.cni_ifname,
            netns_path: &sandbox.netns,
            netns: &netns,
            claims_cni_ifname: false,
            live: true,
        };
        let mut attach = Attach::new(self, &sandbox)?;
        let planned = super::plan::end(attach.ends.settings, link, side);
        let attached = async {
            attach.one_end(tx, &planned).await?;
            let mut held = records::container_ends(tx, sandbox.container_id).await?;
            held.push(EndRef { link: planned.link_id.clone(), side });
            Ok::<_, EndsError>(records::put_container_ends(tx, sandbox.container_id, &held).await?)
        }
        .await;
        if attached.is_err() {
            attach.undo().await;
        }
        attached
    }
}

/// One attach in progress: the context, the pod's netns, and what it made.
struct Attach<'e, 'a, 's> {
    ends: &'e mut Ends<'a>,
    sandbox: &'s Sandbox<'s>,
    in_pod: Netlink,
    made: UndoLog,
}

impl<'e, 'a, 's> Attach<'e, 'a, 's> {
    fn new(ends: &'e mut Ends<'a>, sandbox: &'s Sandbox<'s>) -> Result<Self, EndsError> {
        let in_pod = Netlink::in_netns(sandbox.netns, sandbox.netns_path)?;
        Ok(Self { ends, sandbox, in_pod, made: UndoLog::default() })
    }

    /// Every end of the pod, then the sandbox's records.
    async fn all_ends(&mut self, tx: &mut impl Transaction, links: &[Link]) -> Result<Vec<AttachedEnd>, EndsError> {
        let sandbox = self.sandbox;
        if sandbox.claims_cni_ifname {
            self.ensure_free(sandbox.cni_ifname).await?;
        }
        let planned = super::plan::pod_ends(self.ends.settings, sandbox.pod, links);
        self.ends.release_held(tx, &planned).await?;
        let mut attached = Vec::with_capacity(planned.len());
        for end in &planned {
            attached.push(self.one_end(tx, end).await?);
        }
        let held: Vec<EndRef> =
            planned.iter().map(|end| EndRef { link: end.link_id.clone(), side: end.side }).collect();
        records::put_container_ends(tx, sandbox.container_id, &held).await?;
        let record = SandboxRecord {
            container_id: sandbox.container_id.into(),
            cni_ifname: sandbox.cni_ifname.into(),
            netns: sandbox.netns_path.into(),
            node: self.ends.fabric.node.clone(),
        };
        records::put_sandbox(tx, sandbox.pod, &record).await?;
        Ok(attached)
    }

    /// One end: veth, program, counters, addresses, record, forwarding.
    async fn one_end(&mut self, tx: &mut impl Transaction, end: &PlannedEnd<'_>) -> Result<AttachedEnd, EndsError> {
        self.clear_leftovers(end).await?;
        self.ensure_free(end.spec().ifname.as_str()).await?;
        let veth = self.make_veth(end).await?;
        let impairment = super::impair::wanted(tx, end.link, end.side).await?;
        let pod_end = self.configure_pod_end(end, &impairment).await?;
        let record = EndRecord {
            container_id: self.sandbox.container_id.into(),
            cni_ifname: self.sandbox.cni_ifname.into(),
            pod: end.spec().pod.clone(),
            netns: self.sandbox.netns_path.into(),
            ifname: end.spec().ifname.clone(),
            host_ifname: end.host_ifname.clone(),
            host_ifindex: veth.index,
            node: self.ends.fabric.node.clone(),
            generation: self.ends.loaded()?.generation(),
            vni: records::link_vni(tx, &end.link_id).await?,
            pin_root: Some(self.ends.settings.pin_root.clone()),
            impairment,
            added_live: self.sandbox.live,
        };
        self.wire(tx, end, record).await?;
        failpoint!("add::wired");
        Ok(AttachedEnd {
            host_ifname: end.host_ifname.clone(),
            host_mac: veth.mac,
            ifname: end.spec().ifname.to_string(),
            mac: pod_end.mac,
            ips: end.spec().ips.clone(),
        })
    }

    /// No record holds this end's host veth name (held ends were released
    /// first), so an interface with it is the leftover of an ADD that was
    /// killed, or a veth a DEL released and its reaper has not deleted yet
    /// (its pod end may be in this netns under our name: it goes too). A
    /// tcx link pin of the name with no veth (its netns went, then a killed
    /// verb) would make a tcx attach fail with EEXIST.
    async fn clear_leftovers(&mut self, end: &PlannedEnd<'_>) -> Result<(), EndsError> {
        let host = self.ends.host.clone();
        if let Some(orphan) = host.link_by_name(&end.host_ifname).await? {
            let orphan = [Doomed { index: orphan.index, name: end.host_ifname.clone() }];
            orphans::unwire(self.ends.loaded()?, &orphan)?;
            reap::delete_all(&host, &orphan).await?;
        }
        if self.ends.settings.attach == AttachMode::Tcx {
            tc::detach_tcx(self.ends.loaded()?, &end.host_ifname)?;
        }
        Ok(())
    }

    async fn ensure_free(&self, ifname: &str) -> Result<(), EndsError> {
        if self.in_pod.link_by_name(ifname).await?.is_some() {
            let netns = self.sandbox.netns_path.into();
            return Err(EndsError::IfNameTaken { ifname: ifname.into(), netns });
        }
        Ok(())
    }

    /// The veth, its host end ready, the program on its ingress (before the
    /// pod end is up, so the pod's first frame already meets it), counted.
    async fn make_veth(&mut self, end: &PlannedEnd<'_>) -> Result<LinkInfo, EndsError> {
        let spec = VethSpec {
            host_ifname: &end.host_ifname,
            pod_ifname: end.spec().ifname.as_str(),
            pod_netns: self.sandbox.netns,
            mtu: end.mtu,
            pod_mac: end.spec().mac,
        };
        let host = self.ends.host.clone();
        let veth = host.create_veth(&spec).await?;
        self.made.veths.push(Doomed { index: veth.index, name: end.host_ifname.clone() });
        failpoint!("add::veth-made");
        host.ready_host_end(veth.index, &end.host_ifname).await?;
        failpoint!("add::host-end-up");
        let hook = Hook::to_peer(veth.index, &end.host_ifname, self.ends.settings.attach);
        tc::attach(&host, self.ends.loaded()?, hook).await?;
        failpoint!("add::attached");
        self.ends.loaded()?.track(veth.index)?;
        self.made.tracked.push(veth.index);
        failpoint!("add::tracked");
        Ok(veth)
    }

    /// The pod end's addresses and shaping, then up.
    async fn configure_pod_end(&self, end: &PlannedEnd<'_>, impairment: &Impairment) -> Result<LinkInfo, EndsError> {
        let ifname = end.spec().ifname.as_str();
        let pod_end = self.in_pod.link_by_name(ifname).await?.ok_or_else(|| EndsError::IfNameTaken {
            ifname: format!("{ifname} (vanished right after it was made)"),
            netns: self.sandbox.netns_path.into(),
        })?;
        self.in_pod.add_addresses(pod_end.index, ifname, &end.spec().ips).await?;
        failpoint!("add::addressed");
        if !impairment.shaping().is_none() {
            crate::shaping::set(&self.in_pod, (pod_end.index, ifname, pod_end.mtu), &impairment.shaping()).await?;
        }
        self.in_pod.set_up(pod_end.index, ifname).await?;
        failpoint!("add::pod-end-up");
        Ok(pod_end)
    }

    /// Records the end and writes the forwarding its link now needs: both
    /// directions when the peer is attached, nothing while it waits. A peer
    /// on this node whose host veth is not the one its ADD made (its netns
    /// went without a DEL, or the node rebooted) is released rather than
    /// wired to: its ifindex is dead, or names another interface now. It is
    /// attached again when its pod comes back.
    async fn wire(
        &mut self,
        tx: &mut impl Transaction,
        end: &PlannedEnd<'_>,
        record: EndRecord,
    ) -> Result<(), EndsError> {
        let mut link_ends = records::ends(tx, &end.link_id).await?;
        let peer_side = end.side.other();
        if let Some(peer) = &link_ends[peer_side.index()]
            && peer.node == self.ends.fabric.node
            && !super::is_live(&self.ends.host, peer).await?
        {
            self.ends.release(tx, &end.link_id, peer_side, None).await?;
            link_ends[peer_side.index()] = None;
        }
        let before = pairing::forwarding(&link_ends, &self.ends.fabric);
        link_ends[end.side.index()] = Some(record.clone());
        let (stale, fresh) = pairing::rewire(&before, &pairing::forwarding(&link_ends, &self.ends.fabric));
        let dataplane = self.ends.loaded()?;
        for entry in stale {
            dataplane.remove(&entry)?;
        }
        for entry in fresh {
            dataplane.apply(&entry)?;
            self.made.entries.push(entry);
        }
        if records::is_cut(tx, &end.link_id).await? {
            super::cut::apply(&self.ends.host, &record, true).await?;
        }
        records::clear_failed_add(tx, &end.link_id, end.side).await?;
        Ok(records::put_end(tx, &end.link_id, end.side, &record).await?)
    }

    /// Takes back what this attach made. Best effort: the error that got us
    /// here is what the caller must see, and whatever fails to go here dies
    /// with the pod's netns anyway.
    async fn undo(&mut self) {
        let made = std::mem::take(&mut self.made);
        let host = self.ends.host.clone();
        if let Ok(dataplane) = self.ends.loaded() {
            made.undo(&host, dataplane).await;
        }
    }
}

/// What an attach made so far, so a failure can take it back.
#[derive(Default)]
struct UndoLog {
    veths: Vec<Doomed>,
    tracked: Vec<u32>,
    entries: Vec<Entry>,
}

impl UndoLog {
    async fn undo(self, host: &Netlink, dataplane: &mut Dataplane) {
        for entry in self.entries {
            let _ = dataplane.remove(&entry);
        }
        for ifindex in self.tracked {
            let _ = dataplane.untrack(ifindex);
        }
        for veth in self.veths {
            let _ = tc::detach_tcx(dataplane, &veth.name);
            let _ = host.delete_link(veth.index).await;
        }
    }
}
