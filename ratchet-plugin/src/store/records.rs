//! Typed records over a [`Transaction`]: every key ratchet writes is made
//! here, under [`ROOT`] (the store's backends only know that prefix, to
//! watch or scope it).

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{StoreError, Transaction};
use crate::topology::{IfName, Impairment, Link, PodRef, Side, Topology};

/// Every key ratchet writes starts with this.
pub const ROOT: &str = "/ratchet/";
const LINKS: &str = "/ratchet/topology/links/";
const PODS: &str = "/ratchet/topology/pods/";
const TOPOLOGY: &str = "/ratchet/topology/";
const ENDS: &str = "/ratchet/ends/";
const CONTAINERS: &str = "/ratchet/containers/";
const VNIS: &str = "/ratchet/vnis/";
/// The next VNI to hand out: counting up, so a VNI is never reused while an
/// end of a dropped link may still carry it.
const VNI_NEXT: &str = "/ratchet/vni-next";
const NODES: &str = "/ratchet/nodes/";
/// `alive/<node>`: present while the node's agent renews its lease.
pub const ALIVE: &str = "/ratchet/alive/";
const SANDBOXES: &str = "/ratchet/sandboxes/";
/// Counts topology applies, so the agent knows when to re-sync running pods.
const TOPOLOGY_REV: &str = "/ratchet/topology-rev";
/// Links cut with `ratchet link down`, by id, present while cut. Apart from
/// the topology, so applying it again leaves a cut link cut (and one it no
/// longer has, not cut: [`put_topology`] drops the record).
const CUT: &str = "/ratchet/cut/";
/// Impairments set with `ratchet link set`, by link id: `[a, b]`, what the
/// frames each side sends go through. Present, it overrides the topology's
/// keys for that link; apart from the topology for the same reason as [`CUT`].
const IMPAIRED: &str = "/ratchet/impaired/";
/// The last failed ADD of a link end, by `<link id>/<side>`, so that a view
/// of the waiting link can say why its peer is missing. Replaced by the
/// next failure, removed when the end attaches.
const FAILED: &str = "/ratchet/failed/";

/// Why a link end's last ADD failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedAdd {
    /// The node the ADD ran on.
    pub node: String,
    /// The error it answered, as the runtime saw it.
    pub error: String,
    /// When, in seconds since the Unix epoch.
    pub at: u64,
}

/// One attached link end: what DEL, CHECK and the CLI need to find it again
/// even when the pod's netns is already gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndRecord {
    /// The sandbox that holds the end (`CNI_CONTAINERID`): a DEL or GC on
    /// behalf of another container leaves the end alone.
    pub container_id: String,
    /// The `CNI_IFNAME` of the attachment, so GC can match valid attachments.
    pub cni_ifname: String,
    /// The end's pod, for `ratchet links` and the agent's metric labels.
    pub pod: PodRef,
    /// The pod's netns, by the path ADD was given; CHECK wants the same netns.
    pub netns: String,
    /// The interface inside the pod.
    pub ifname: IfName,
    /// The host veth's name ([`crate::naming::host_ifname`]).
    pub host_ifname: String,
    /// The host veth's ifindex as ADD made it: its key in the maps, and with
    /// the name how a verb tells the veth is still that one
    /// ([`crate::ends::is_live`]).
    pub host_ifindex: u32,
    /// The node the end is attached on ([`crate::config::Settings::node`]);
    /// against the peer's, it decides between a direct and a tunnelled link.
    pub node: String,
    /// The [`crate::dataplane::Dataplane::generation`] its map entries were
    /// written in; entries of an older generation died with their maps.
    /// Stored as `dataplane`, its name in records written before.
    #[serde(default, rename = "dataplane")]
    pub generation: u32,
    /// The link's VXLAN network identifier, for when its peer is elsewhere.
    #[serde(default)]
    pub vni: Option<u32>,
    /// The pin root its map entries were written under: a DEL whose config
    /// names another one still unwires them where they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_root: Option<std::path::PathBuf>,
    /// What the frames this end sends go through: the topology's keys, or
    /// what `ratchet link set` made them ([`impairments`]). Its loss is in
    /// the end's forwarding entry, the rest in a qdisc on the pod end.
    #[serde(default, skip_serializing_if = "Impairment::is_none")]
    pub impairment: Impairment,
    /// A topology change made this end in its running pod, after the pod's
    /// ADD: the runtime's cached result (CHECK's `prevResult`) predates it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub added_live: bool,
}

/// A pod's sandbox that ratchet gave links to: where the agent adds or
/// removes link ends when the topology changes while the pod runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// The sandbox's `CNI_CONTAINERID`: ends the agent adds are held under it.
    pub container_id: String,
    /// The attachment's `CNI_IFNAME`, carried into the records of ends the
    /// agent adds so GC matches them too.
    pub cni_ifname: String,
    /// The sandbox's netns, by path; the agent passes over a sandbox whose
    /// netns is gone.
    pub netns: String,
    /// The node the sandbox runs on: only that node's agent changes its ends.
    pub node: String,
}

/// A node that takes part in cross-node links.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Where other nodes send its links' VXLAN frames.
    pub underlay_ipv4: std::net::Ipv4Addr,
}

/// A link end a container attached, as listed under its container id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndRef {
    /// The link's id ([`Link::id`]).
    pub link: String,
    /// Which of the link's ends the container holds.
    pub side: Side,
}

async fn get_json<T: DeserializeOwned>(tx: &mut impl Transaction, key: &str) -> Result<Option<T>, StoreError> {
    match tx.get(key).await? {
        Some(bytes) => decode(key, &bytes).map(Some),
        None => Ok(None),
    }
}

async fn put_json<T: Serialize>(tx: &mut impl Transaction, key: &str, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).expect("records always serialize");
    tx.put(key, &bytes).await
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { key: key.into(), message: e.to_string() })
}

/// Replaces the whole topology. Attached ends stay: they are torn down by DEL.
pub async fn put_topology(tx: &mut impl Transaction, topology: &Topology) -> Result<(), StoreError> {
    for (key, _) in tx.scan(TOPOLOGY).await? {
        tx.delete(&key).await?;
    }
    let mut by_pod: std::collections::BTreeMap<&PodRef, Vec<String>> = Default::default();
    for link in &topology.links {
        put_json(tx, &format!("{LINKS}{}", link.id()), link).await?;
        for end in [&link.a, &link.b] {
            let ids = by_pod.entry(&end.pod).or_default();
            if !ids.contains(&link.id()) {
                ids.push(link.id());
            }
        }
    }
    for (pod, ids) in by_pod {
        put_json(tx, &format!("{PODS}{}/{}", pod.namespace, pod.name), &ids).await?;
    }
    assign_vnis(tx, topology).await?;
    // A cut or a live impairment belongs to a link of the topology: a link
    // that leaves it takes them along, so one of that id added later starts
    // whole.
    let ids: std::collections::BTreeSet<String> = topology.links.iter().map(Link::id).collect();
    for prefix in [CUT, IMPAIRED, FAILED] {
        for (key, _) in tx.scan(prefix).await? {
            // FAILED's keys go on with `/<side>`; a link id has no `/`.
            let id = key[prefix.len()..].split('/').next().unwrap_or_default();
            if !ids.contains(id) {
                tx.delete(&key).await?;
            }
        }
    }
    let rev: u64 = get_json(tx, TOPOLOGY_REV).await?.unwrap_or(0);
    put_json(tx, TOPOLOGY_REV, &(rev + 1)).await
}

/// How many times a topology was applied.
pub async fn topology_rev(tx: &mut impl Transaction) -> Result<u64, StoreError> {
    Ok(get_json(tx, TOPOLOGY_REV).await?.unwrap_or(0))
}

fn sandbox_key(pod: &PodRef) -> String {
    format!("{SANDBOXES}{}/{}", pod.namespace, pod.name)
}

/// Records the sandbox that holds `pod`'s ends, replacing an earlier one's.
pub async fn put_sandbox(tx: &mut impl Transaction, pod: &PodRef, sandbox: &SandboxRecord) -> Result<(), StoreError> {
    put_json(tx, &sandbox_key(pod), sandbox).await
}

/// The sandbox recorded for `pod`: the one ADD last gave links to, until
/// its DEL; `None` when there is none.
pub async fn sandbox(tx: &mut impl Transaction, pod: &PodRef) -> Result<Option<SandboxRecord>, StoreError> {
    get_json(tx, &sandbox_key(pod)).await
}

/// Forgets `pod`'s sandbox; one not recorded is not an error.
pub async fn delete_sandbox(tx: &mut impl Transaction, pod: &PodRef) -> Result<(), StoreError> {
    tx.delete(&sandbox_key(pod)).await
}

/// Every recorded sandbox, with its pod.
pub async fn sandboxes(tx: &mut impl Transaction) -> Result<Vec<(PodRef, SandboxRecord)>, StoreError> {
    let mut out = Vec::new();
    for (key, bytes) in tx.scan(SANDBOXES).await? {
        let pod = key[SANDBOXES.len()..]
            .parse()
            .map_err(|_| StoreError::Corrupt { key: key.clone(), message: "not a sandbox key".into() })?;
        out.push((pod, decode(&key, &bytes)?));
    }
    Ok(out)
}

/// Gives each link a VNI of its own, kept across applies, and forgets those
/// of links the topology dropped (their attached ends carry theirs).
async fn assign_vnis(tx: &mut impl Transaction, topology: &Topology) -> Result<(), StoreError> {
    let ids: std::collections::HashSet<String> = topology.links.iter().map(Link::id).collect();
    for (key, _) in tx.scan(VNIS).await? {
        if !ids.contains(&key[VNIS.len()..]) {
            tx.delete(&key).await?;
        }
    }
    let mut next: u32 = get_json(tx, VNI_NEXT).await?.unwrap_or(1);
    for id in &ids {
        if link_vni(tx, id).await?.is_none() {
            put_json(tx, &format!("{VNIS}{id}"), &next).await?;
            next += 1;
        }
    }
    put_json(tx, VNI_NEXT, &next).await
}

/// The VNI a link was given when a topology named it; `None` for a link
/// the stored topology does not have.
pub async fn link_vni(tx: &mut impl Transaction, link: &str) -> Result<Option<u32>, StoreError> {
    get_json(tx, &format!("{VNIS}{link}")).await
}

/// Registers (or updates) a node's underlay address.
pub async fn put_node(tx: &mut impl Transaction, name: &str, node: &NodeRecord) -> Result<(), StoreError> {
    put_json(tx, &format!("{NODES}{name}"), node).await
}

/// The nodes whose agent holds a live lease.
pub async fn alive_nodes(tx: &mut impl Transaction) -> Result<Vec<String>, StoreError> {
    Ok(tx.scan(ALIVE).await?.into_iter().map(|(key, _)| key[ALIVE.len()..].to_owned()).collect())
}

/// Every node registered for cross-node links, with its record.
pub async fn nodes(tx: &mut impl Transaction) -> Result<Vec<(String, NodeRecord)>, StoreError> {
    let mut out = Vec::new();
    for (key, bytes) in tx.scan(NODES).await? {
        out.push((key[NODES.len()..].to_owned(), decode(&key, &bytes)?));
    }
    Ok(out)
}

/// Makes `topology` the stored one, unless it already is (links compared
/// in id order, the order the store keeps them in).
pub async fn ensure_topology(tx: &mut impl Transaction, topology: &Topology) -> Result<(), StoreError> {
    let mut wanted = topology.links.clone();
    wanted.sort_by_key(Link::id);
    if self::topology(tx).await?.links != wanted {
        put_topology(tx, topology).await?;
    }
    Ok(())
}

/// The stored topology, its links in id order.
pub async fn topology(tx: &mut impl Transaction) -> Result<Topology, StoreError> {
    let links = tx.scan(LINKS).await?.iter().map(|(key, bytes)| decode(key, bytes)).collect::<Result<_, _>>()?;
    Ok(Topology { links })
}

/// Marks the link `id` cut (`ratchet link down`) or not.
pub async fn set_cut(tx: &mut impl Transaction, id: &str, cut: bool) -> Result<(), StoreError> {
    let key = format!("{CUT}{id}");
    match cut {
        true => put_json(tx, &key, &true).await,
        false => tx.delete(&key).await,
    }
}

/// Whether the link `id` is cut.
pub async fn is_cut(tx: &mut impl Transaction, id: &str) -> Result<bool, StoreError> {
    Ok(tx.get(&format!("{CUT}{id}")).await?.is_some())
}

/// The ids of every cut link.
pub async fn cut_links(tx: &mut impl Transaction) -> Result<std::collections::BTreeSet<String>, StoreError> {
    Ok(tx.scan(CUT).await?.into_iter().map(|(key, _)| key[CUT.len()..].to_owned()).collect())
}

/// Records that an ADD of `side` of link `id` failed.
pub async fn put_failed_add(
    tx: &mut impl Transaction,
    id: &str,
    side: Side,
    failed: &FailedAdd,
) -> Result<(), StoreError> {
    put_json(tx, &format!("{FAILED}{id}/{}", side.as_str()), failed).await
}

/// Forgets a failed ADD of `side` of link `id`: the end is attached now.
pub async fn clear_failed_add(tx: &mut impl Transaction, id: &str, side: Side) -> Result<(), StoreError> {
    tx.delete(&format!("{FAILED}{id}/{}", side.as_str())).await
}

/// The last failed ADD of each end that has one, by (link id, side).
pub async fn failed_adds(
    tx: &mut impl Transaction,
) -> Result<std::collections::BTreeMap<(String, Side), FailedAdd>, StoreError> {
    let mut failed = std::collections::BTreeMap::new();
    for (key, bytes) in tx.scan(FAILED).await? {
        let Some((id, side)) = key[FAILED.len()..].rsplit_once('/') else { continue };
        let side = match side {
            "a" => Side::A,
            "b" => Side::B,
            _ => continue,
        };
        failed.insert((id.to_owned(), side), decode(&key, &bytes)?);
    }
    Ok(failed)
}

/// Sets the link `id`'s impairments, `[a, b]`, over the topology's.
pub async fn set_impairments(tx: &mut impl Transaction, id: &str, sides: &[Impairment; 2]) -> Result<(), StoreError> {
    put_json(tx, &format!("{IMPAIRED}{id}"), sides).await
}

/// The link `id`'s impairments as `ratchet link set` left them; `None`
/// when it never set them, and the topology's keys hold.
pub async fn impairments(tx: &mut impl Transaction, id: &str) -> Result<Option<[Impairment; 2]>, StoreError> {
    let key = format!("{IMPAIRED}{id}");
    tx.get(&key).await?.map(|bytes| decode(&key, &bytes)).transpose()
}

/// The stored link with id `id`; `None` when the topology has none.
pub async fn link(tx: &mut impl Transaction, id: &str) -> Result<Option<Link>, StoreError> {
    get_json(tx, &format!("{LINKS}{id}")).await
}

/// The links that have an end in `pod`.
pub async fn links_of_pod(tx: &mut impl Transaction, pod: &PodRef) -> Result<Vec<Link>, StoreError> {
    let ids: Vec<String> = get_json(tx, &format!("{PODS}{}/{}", pod.namespace, pod.name)).await?.unwrap_or_default();
    let mut links = Vec::with_capacity(ids.len());
    for id in ids {
        // The index and the links are written together, so a miss is corruption.
        let link = link(tx, &id).await?.ok_or_else(|| StoreError::Corrupt {
            key: format!("{PODS}{}/{}", pod.namespace, pod.name),
            message: format!("names link {id}, which is not in the topology"),
        })?;
        links.push(link);
    }
    Ok(links)
}

fn end_key(link: &str, side: Side) -> String {
    format!("{ENDS}{link}/{}", side.as_str())
}

/// The record of a link's end on `side`; `None` while it is not attached.
pub async fn end(tx: &mut impl Transaction, link: &str, side: Side) -> Result<Option<EndRecord>, StoreError> {
    get_json(tx, &end_key(link, side)).await
}

/// Both ends of a link, A first.
pub async fn ends(tx: &mut impl Transaction, link: &str) -> Result<[Option<EndRecord>; 2], StoreError> {
    Ok([end(tx, link, Side::A).await?, end(tx, link, Side::B).await?])
}

/// Every attached end, with its link id and side.
pub async fn all_ends(tx: &mut impl Transaction) -> Result<Vec<(String, Side, EndRecord)>, StoreError> {
    let mut out = Vec::new();
    for (key, bytes) in tx.scan(ENDS).await? {
        let parsed = key.strip_prefix(ENDS).and_then(|rest| rest.rsplit_once('/'));
        let (link, side) = match parsed {
            Some((link, "a")) => (link, Side::A),
            Some((link, "b")) => (link, Side::B),
            _ => return Err(StoreError::Corrupt { key, message: "not an end key".into() }),
        };
        out.push((link.to_owned(), side, decode(&key, &bytes)?));
    }
    Ok(out)
}

/// Every link of the topology, and every link with an attached end (a link
/// the topology dropped keeps its ends until DEL), with both ends.
pub async fn links_with_ends(
    tx: &mut impl Transaction,
) -> Result<std::collections::BTreeMap<String, [Option<EndRecord>; 2]>, StoreError> {
    let mut by_link: std::collections::BTreeMap<String, [Option<EndRecord>; 2]> = Default::default();
    for link in topology(tx).await?.links {
        by_link.entry(link.id()).or_default();
    }
    for (link, side, record) in all_ends(tx).await? {
        by_link.entry(link).or_default()[side.index()] = Some(record);
    }
    Ok(by_link)
}

/// Writes an attached end's record, replacing any earlier one; its place in
/// the container's list is the caller's ([`put_container_ends`]).
pub async fn put_end(tx: &mut impl Transaction, link: &str, side: Side, record: &EndRecord) -> Result<(), StoreError> {
    put_json(tx, &end_key(link, side), record).await
}

async fn delete_end(tx: &mut impl Transaction, link: &str, side: Side) -> Result<(), StoreError> {
    tx.delete(&end_key(link, side)).await
}

/// The ends a container holds, as listed under its id; empty when none.
pub async fn container_ends(tx: &mut impl Transaction, container_id: &str) -> Result<Vec<EndRef>, StoreError> {
    Ok(get_json(tx, &format!("{CONTAINERS}{container_id}")).await?.unwrap_or_default())
}

/// Forgets one attached end: its record, and its place in its container's list.
pub async fn forget_end(
    tx: &mut impl Transaction,
    link: &str,
    side: Side,
    container_id: &str,
) -> Result<(), StoreError> {
    delete_end(tx, link, side).await?;
    let mut held = container_ends(tx, container_id).await?;
    held.retain(|end| !(end.link == link && end.side == side));
    put_container_ends(tx, container_id, &held).await
}

/// Records the ends a container holds; an empty list removes the record.
pub async fn put_container_ends(
    tx: &mut impl Transaction,
    container_id: &str,
    ends: &[EndRef],
) -> Result<(), StoreError> {
    let key = format!("{CONTAINERS}{container_id}");
    if ends.is_empty() { tx.delete(&key).await } else { put_json(tx, &key, &ends).await }
}

/// Forgets every record of `node`'s ends and sandboxes (`ratchet reset`);
/// returns how many records went.
pub async fn forget_node(tx: &mut impl Transaction, node: &str) -> Result<usize, StoreError> {
    let mut forgotten = 0;
    for (link, side, record) in all_ends(tx).await? {
        if record.node != node {
            continue;
        }
        forget_end(tx, &link, side, &record.container_id).await?;
        forgotten += 1;
    }
    for (pod, sandbox) in sandboxes(tx).await? {
        if sandbox.node == node {
            delete_sandbox(tx, &pod).await?;
            forgotten += 1;
        }
    }
    Ok(forgotten)
}
