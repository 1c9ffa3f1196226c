//! CHECK: is every link end of this container still as ADD left it?
//!
//! The pod end (name, addresses, MTU, up), the host end (same ifindex, our
//! program attached), the forwarding entries (both directions when the peer
//! is attached, none while it waits) and the counters; and when the runtime
//! sends a prevResult, that it lists our interfaces and addresses. A link
//! still waiting for its peer is fine; anything else that differs is an error.

use std::collections::HashSet;

use super::{Config, env::CniEnv, error::CniError};
use crate::{
    config::{AttachMode, Settings},
    dataplane::Dataplane,
    netlink::Netlink,
    node,
    pairing::{self, Entry, Fabric},
    store::{
        self, Store, Transaction,
        records::{self, EndRecord},
    },
    topology::{Link, PodRef, Side},
};

/// One attached end of this container, with its link and both its ends.
struct Attached {
    side: Side,
    record: EndRecord,
    link: Option<Link>,
    ends: [Option<EndRecord>; 2],
}

/// Checks the container's ends; returns their records (empty when the
/// topology gives its pod no link, e.g. a pod passed to a delegate). A
/// container that holds none of its pod's link ends fails: it was never
/// ADDed, a DEL or GC released it, or a later ADD of the same pod (a new
/// sandbox) took its ends over.
pub async fn check(config: &Config, env: &CniEnv) -> Result<Vec<EndRecord>, CniError> {
    let settings = &config.settings;
    let host = Netlink::host()?;
    let Holdings { attached, fabric, missing } = read_attached(config, env, &host).await?;
    if let Some(missing) = missing {
        return Err(CniError::CheckDrift(missing));
    }
    if attached.is_empty() {
        return Ok(Vec::new());
    }
    let drift = |what: String| CniError::CheckDrift(what);
    let dataplane = Dataplane::open(&settings.pin_root)?
        .ok_or_else(|| drift(format!("no program is pinned under {}", settings.pin_root.display())))?;
    let netns = open_netns_of(env, &attached[0].record)?;
    let in_pod = Netlink::in_netns(&netns, &env.netns)?;
    for end in &attached {
        check_pod_end(&in_pod, &config.settings, end).await?;
        check_host_end(&host, &dataplane, settings.attach, &end.record).await?;
        check_forwarding(&dataplane, &fabric, end)?;
        check_prev_result(config, end)?;
    }
    Ok(attached.into_iter().map(|end| end.record).collect())
}

/// What the store says this container holds.
struct Holdings {
    attached: Vec<Attached>,
    fabric: Fabric,
    /// Why the container holds nothing though its pod has links.
    missing: Option<String>,
}

async fn read_attached(config: &Config, env: &CniEnv, host: &Netlink) -> Result<Holdings, CniError> {
    let mut store = store::open(&config.settings).await?;
    let mut tx = store.begin().await?;
    let fabric = node::fabric(&mut tx, &config.settings, host).await?;
    let mut attached = Vec::new();
    for held in records::container_ends(&mut tx, &env.container_id).await? {
        let ends = records::ends(&mut tx, &held.link).await?;
        let Some(record) = ends[held.side.index()].clone().filter(|r| r.container_id == env.container_id) else {
            continue;
        };
        let link = records::link(&mut tx, &held.link).await?;
        attached.push(Attached { side: held.side, record, link, ends });
    }
    let missing = match env.pod() {
        Ok(pod) if attached.is_empty() => why_nothing_held(&mut tx, &pod, &env.container_id).await?,
        _ => None,
    };
    Ok(Holdings { attached, fabric, missing })
}

/// When the topology gives `pod` links but `container` holds none of their
/// ends: who holds them instead, if anyone.
async fn why_nothing_held(
    tx: &mut impl Transaction,
    pod: &PodRef,
    container: &str,
) -> Result<Option<String>, CniError> {
    let links = records::links_of_pod(tx, pod).await?;
    if links.is_empty() {
        return Ok(None);
    }
    for link in &links {
        for side in link.sides_of(pod) {
            if let Some(holder) = records::end(tx, &link.id(), side).await? {
                return Ok(Some(format!(
                    "container {container} holds no link end of pod {pod}: container {} holds them (a later ADD \
                     of the pod took them over)",
                    holder.container_id
                )));
            }
        }
    }
    Ok(Some(format!(
        "container {container} holds no link end of pod {pod}: none is attached (it was never ADDed, or a DEL or GC \
         released it)"
    )))
}

/// Opens `CNI_NETNS`, which must be the netns ADD attached to: the same
/// path, or another path to the same namespace.
fn open_netns_of(env: &CniEnv, record: &EndRecord) -> Result<std::fs::File, CniError> {
    let opened = crate::netlink::open_netns(&env.netns)
        .map_err(|e| CniError::Env { var: "CNI_NETNS", reason: e.to_string() })?;
    if env.netns == record.netns {
        return Ok(opened);
    }
    let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        a.dev() == b.dev() && a.ino() == b.ino()
    };
    let recorded = std::fs::metadata(&record.netns);
    match (opened.metadata(), recorded) {
        (Ok(a), Ok(b)) if same(&a, &b) => Ok(opened),
        _ => Err(CniError::CheckDrift(format!(
            "CNI_NETNS {} is not the netns ADD attached this container to ({})",
            env.netns, record.netns
        ))),
    }
}

async fn check_pod_end(in_pod: &Netlink, settings: &Settings, end: &Attached) -> Result<(), CniError> {
    let name = end.record.ifname.as_str();
    let drift = |what: String| CniError::CheckDrift(format!("pod end {name} in {}: {what}", end.record.netns));
    let found = in_pod.link_by_name(name).await?.ok_or_else(|| drift("is gone".into()))?;
    if !found.up {
        return Err(drift("is down".into()));
    }
    // The topology may have dropped the link since; the end is still ours.
    let Some(link) = &end.link else { return Ok(()) };
    let mtu = settings.link_mtu(link);
    if found.mtu != mtu {
        return Err(drift(format!("MTU is {}, the link says {mtu}", found.mtu)));
    }
    let present: HashSet<_> = in_pod.addresses(found.index).await?.into_iter().collect();
    let spec = link.end(end.side);
    if let Some(missing) = spec.ips.iter().find(|ip| !present.contains(*ip)) {
        return Err(drift(format!("address {missing} is missing")));
    }
    Ok(())
}

async fn check_host_end(
    host: &Netlink,
    dataplane: &Dataplane,
    mode: AttachMode,
    record: &EndRecord,
) -> Result<(), CniError> {
    let name = &record.host_ifname;
    let drift = |what: String| CniError::CheckDrift(format!("host end {name}: {what}"));
    let found = host.link_by_name(name).await?.ok_or_else(|| drift("is gone".into()))?;
    if found.index != record.host_ifindex {
        return Err(drift(format!("is ifindex {}, ADD made {}", found.index, record.host_ifindex)));
    }
    let attached = match mode {
        AttachMode::Clsact => host.ingress_bpf_programs(found.index).await?.contains(&dataplane.program_id()?),
        AttachMode::Tcx => dataplane.tcx_attached(name)?,
    };
    if !attached {
        return Err(drift(format!("{} is not attached to its ingress", ratchet_common::PROG_TO_PEER)));
    }
    Ok(())
}

fn check_forwarding(dataplane: &Dataplane, fabric: &Fabric, end: &Attached) -> Result<(), CniError> {
    let me = end.record.host_ifindex;
    let wanted = pairing::forwarding(&end.ends, fabric);
    let actual = dataplane.entries()?;
    let drift = |what: String| CniError::CheckDrift(format!("{} map: {what}", ratchet_common::MAP_PEERS));
    if wanted.is_empty() {
        // Waiting for the peer: nothing may forward from this end.
        let forwarding = actual.iter().find_map(|entry| match entry {
            Entry::Peer { from, to } if *from == me => Some(to.ifindex),
            _ => None,
        });
        return match forwarding {
            None => Ok(()),
            Some(to) => Err(drift(format!("waiting end {me} forwards to {to}"))),
        };
    }
    for entry in &wanted {
        if !actual.contains(entry) {
            let found = actual.iter().find(|other| other.same_slot(entry));
            let slot = match entry {
                Entry::Peer { from, .. } => format!("entry {from}"),
                Entry::Tunnel { vni, .. } => format!("VNI {vni}"),
            };
            return Err(drift(format!("{slot} is {found:?}, should be {entry:?}")));
        }
    }
    if dataplane.stats(me)?.is_none() {
        return Err(drift(format!("{} has no entry for {me}", ratchet_common::MAP_STATS)));
    }
    Ok(())
}

/// The runtime's cached result must list the pod end and its addresses.
fn check_prev_result(config: &Config, end: &Attached) -> Result<(), CniError> {
    let Some(prev) = &config.netconf.prev_result else { return Ok(()) };
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
