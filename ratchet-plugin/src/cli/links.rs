//! `ratchet links`: every link of the store, both ends, and what this node
//! can say about each: counters, the pod interface as the kernel has it,
//! and why a link is not up.

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use ipnet::IpNet;
use serde::Serialize;

use crate::{
    config::Settings,
    dataplane::Counters,
    netlink::{Netlink, open_netns},
    pairing,
    store::{Store, records},
    topology::{MacAddr, Side},
};

/// `ratchet links -o`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Wide,
    Json,
    Yaml,
}

/// One link as `ratchet links` shows it.
#[derive(Serialize)]
struct LinkView {
    link: String,
    state: String,
    /// Why the link is not up (or what is wrong with it), for people.
    #[serde(skip_serializing_if = "String::is_empty")]
    reason: String,
    ends: Vec<EndView>,
}

/// One attached end; its counters are the direction leaving this end, read
/// only for an end whose host veth is on this node (`null`, `-` in the
/// table, for another node's: this node's maps know nothing of it).
#[derive(Serialize)]
struct EndView {
    side: Side,
    pod: String,
    ifname: String,
    /// The pod interface's addresses: as the kernel has them for an end on
    /// this node (those the pod added itself included, IPv6 link-local
    /// left out), else as the topology gives them.
    ips: Vec<String>,
    /// The pod interface's MAC, for an end on this node.
    mac: Option<String>,
    /// The pod interface: `up`, `no-carrier` (up, its host end down: a cut)
    /// or `down` (the pod set it down), for an end on this node.
    pod_if: Option<&'static str>,
    host_ifname: String,
    host_ifindex: u32,
    /// The host veth's MTU, read from the kernel on this node.
    mtu: Option<u32>,
    node: String,
    /// With etcd: whether the end's node has a live agent lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    node_alive: Option<bool>,
    container_id: String,
    /// What the frames this end sends go through.
    impairment: crate::topology::Impairment,
    packets: Option<u64>,
    bytes: Option<u64>,
    drops: Option<u64>,
    /// Frames the configured loss dropped.
    lost: Option<u64>,
}

pub async fn run(settings: &Settings, output: Output) -> anyhow::Result<()> {
    crate::dataplane::ensure_readable_bpffs(&settings.pin_root)?;
    let mut store = crate::ends::open_store(settings).await?;
    let store_is_etcd = store.is_etcd();
    let mut tx = store.begin().await?;
    let counters = Counters::open(&settings.pin_root)?;
    let by_link = records::links_with_ends(&mut tx).await?;
    let in_topology: std::collections::HashMap<String, crate::topology::Link> =
        records::topology(&mut tx).await?.links.into_iter().map(|link| (link.id(), link)).collect();
    let alive = if store_is_etcd { Some(records::alive_nodes(&mut tx).await?) } else { None };
    let cut = records::cut_links(&mut tx).await?;
    let failed = records::failed_adds(&mut tx).await?;
    drop(tx);
    let host = crate::netlink::Netlink::host()?;
    let mut views = Vec::with_capacity(by_link.len());
    for (link, ends) in by_link {
        // Ends of a link the topology dropped stay until their pods go;
        // the link is not up for that.
        let state = match (in_topology.contains_key(&link), cut.contains(&link)) {
            (false, _) => "removed".to_owned(),
            (true, true) => "cut".to_owned(),
            (true, false) => pairing::state(&ends).to_string(),
        };
        let unattached = unattached(&link, in_topology.get(&link), &ends, &failed);
        let reason = reason(&state, &unattached, &ends, alive.as_deref());
        let mut end_views = Vec::new();
        for (side, end) in [Side::A, Side::B].into_iter().zip(ends) {
            let Some(end) = end else { continue };
            // The ifindex is this node's only when the veth of that name is.
            let veth = host.link_by_name(&end.host_ifname).await?.filter(|veth| veth.index == end.host_ifindex);
            let (stats, lost) = match (&counters, &veth) {
                (Some(counters), Some(_)) => {
                    (Some(counters.get(end.host_ifindex)?.unwrap_or_default()), Some(counters.lost(end.host_ifindex)?))
                }
                (None, Some(_)) => (Some(Default::default()), Some(0)),
                (_, None) => (None, None),
            };
            let pod_end = match veth {
                Some(_) => pod_end(&end).await,
                None => None,
            };
            let topology_ips = || in_topology.get(&link).map(|l| l.end(side).ips.clone()).unwrap_or_default();
            let ips = pod_end.as_ref().map_or_else(topology_ips, |pod_end| pod_end.ips.clone());
            end_views.push(EndView {
                side,
                pod: end.pod.to_string(),
                ifname: end.ifname.to_string(),
                ips: ips.iter().map(|ip| ip.to_string()).collect(),
                mac: pod_end.as_ref().and_then(|pod_end| pod_end.mac.map(|mac| mac.to_string())),
                pod_if: pod_end.as_ref().map(|pod_end| pod_end.state),
                host_ifname: end.host_ifname,
                host_ifindex: end.host_ifindex,
                mtu: veth.map(|veth| veth.mtu),
                node_alive: alive.as_ref().map(|alive| alive.contains(&end.node)),
                node: end.node,
                container_id: end.container_id,
                impairment: end.impairment,
                packets: stats.map(|s| s.packets),
                bytes: stats.map(|s| s.bytes),
                drops: stats.map(|s| s.drops),
                lost,
            });
        }
        views.push(LinkView { link, state, reason, ends: end_views });
    }
    if let Some(counters) = &counters
        && crate::trace::left_on(&settings.state_dir, counters.switches()?)
    {
        eprintln!(
            "warning: per-frame tracing is on and no `ratchet trace` runs (one was killed): every frame on this \
             node is logged until the agent or the next `ratchet trace` turns it off"
        );
    }
    let mut out = io::stdout().lock();
    match output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut out, &views)?;
            writeln!(out)?;
        }
        Output::Yaml => write!(out, "{}", serde_norway::to_string(&views)?)?,
        Output::Table | Output::Wide => print_table(&mut out, &views, output == Output::Wide)?,
    }
    Ok(())
}

/// A pod interface as the kernel has it.
struct PodEnd {
    mac: Option<MacAddr>,
    state: &'static str,
    ips: Vec<IpNet>,
}

/// The pod interface of an end on this node; `None` when its pod's netns
/// cannot be read (a pod gone before its DEL), which the view leaves out.
async fn pod_end(end: &records::EndRecord) -> Option<PodEnd> {
    let netns = open_netns(&end.netns).ok()?;
    let in_pod = Netlink::in_netns(&netns, &end.netns).ok()?;
    let link = in_pod.link_by_name(end.ifname.as_str()).await.ok()??;
    let mut ips = in_pod.addresses(link.index).await.ok()?;
    ips.retain(|ip| !matches!(ip, IpNet::V6(v6) if v6.addr().is_unicast_link_local()));
    let state = match (link.up, link.carrier) {
        (false, _) => "down",
        (true, false) => "no-carrier",
        (true, true) => "up",
    };
    Some(PodEnd { mac: link.mac, state, ips })
}

/// The ends of `link` no ADD has attached, each with why its last ADD
/// failed when one did.
fn unattached(
    id: &str,
    link: Option<&crate::topology::Link>,
    ends: &[Option<records::EndRecord>; 2],
    failed: &BTreeMap<(String, Side), records::FailedAdd>,
) -> Vec<String> {
    let Some(link) = link else { return Vec::new() };
    let sides = [Side::A, Side::B].into_iter().filter(|side| ends[side.index()].is_none());
    sides
        .map(|side| {
            let end = format!("{} {}", link.end(side).pod, link.end(side).ifname);
            match failed.get(&(id.to_owned(), side)) {
                Some(failed) => format!("{end} (its last ADD, on node {}, failed: {})", failed.node, failed.error),
                None => end,
            }
        })
        .collect()
}

/// Why a link in `state` is not up, or what threatens it: the pod whose ADD
/// it waits for (`unattached`), a cut, a node without a live agent (`alive`:
/// with etcd).
fn reason(
    state: &str,
    unattached: &[String],
    ends: &[Option<records::EndRecord>; 2],
    alive: Option<&[String]>,
) -> String {
    let dead_nodes: Vec<&str> = ends
        .iter()
        .flatten()
        .map(|end| end.node.as_str())
        .filter(|node| alive.is_some_and(|alive| !alive.iter().any(|a| a == node)))
        .collect();
    let mut why = match state {
        "removed" => "not in the topology any more; its ends go with their pods".to_owned(),
        "cut" => "cut with `ratchet link down`".to_owned(),
        "waiting" | "down" => format!("no ADD has attached {}", unattached.join(" nor ")),
        _ => String::new(),
    };
    if !dead_nodes.is_empty() {
        let dead = format!("node {} has no live agent", dead_nodes.join(", "));
        why = if why.is_empty() { dead } else { format!("{why}; {dead}") };
    }
    why
}

/// A counter as the table shows it: `-` for an end on another node.
fn counter(value: Option<u64>) -> String {
    value.map_or_else(|| "-".into(), |value| value.to_string())
}

/// The table, one row per end (one for a link without ends); `wide` adds
/// each end's host ifindex and MTU, its pod interface's MAC, state and
/// addresses, and each link's reason.
fn print_table(out: &mut impl Write, views: &[LinkView], wide: bool) -> io::Result<()> {
    let mut header = vec![
        "LINK",
        "STATE",
        "SIDE",
        "POD",
        "IFNAME",
        "HOST IF",
        "NODE",
        "TX PACKETS",
        "TX BYTES",
        "DROPS",
        "LOST",
        "IMPAIRMENT",
    ];
    if wide {
        header.extend(["IFINDEX", "MTU", "MAC", "POD IF", "IPS", "REASON"]);
    }
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for view in views {
        if view.ends.is_empty() {
            let mut row = vec![String::new(); header.len()];
            row[0] = view.link.clone();
            row[1] = view.state.clone();
            if wide {
                row[header.len() - 1] = view.reason.clone();
            }
            rows.push(row);
        }
        for end in &view.ends {
            let mut row = vec![
                view.link.clone(),
                view.state.clone(),
                end.side.as_str().into(),
                end.pod.clone(),
                end.ifname.clone(),
                end.host_ifname.clone(),
                match end.node_alive {
                    Some(false) => format!("{} (down)", end.node),
                    _ => end.node.clone(),
                },
                counter(end.packets),
                counter(end.bytes),
                counter(end.drops),
                counter(end.lost),
                end.impairment.to_string(),
            ];
            if wide {
                let ips = if end.ips.is_empty() { "-".to_owned() } else { end.ips.join(",") };
                row.extend([
                    end.host_ifindex.to_string(),
                    counter(end.mtu.map(u64::from)),
                    end.mac.clone().unwrap_or_else(|| "-".into()),
                    end.pod_if.unwrap_or("-").into(),
                    ips,
                    view.reason.clone(),
                ]);
            }
            rows.push(row);
        }
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|col| rows.iter().map(|row| row[col].len()).max().unwrap_or(0)).collect();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}
