//! `ratchet agent`: one per node, keeps this node's maps equal to the store.
//!
//! A plugin process wires what it can see when it runs; the agent covers
//! what happens elsewhere: a peer attached or gone on another node, a node
//! that registered its address after this end attached, entries a killed
//! plugin left behind. Each round it reads every end from the store (under
//! the same node lock as ADD and DEL, so it never races them), computes the
//! entries this node needs, and writes or removes the difference. The
//! datapath never depends on it: links keep forwarding while it is down.

use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::Context;
use ratchet_common::EndStats;
use tracing::{info, warn};

use crate::{
    cni::{add, del, error::CniError},
    config::Settings,
    dataplane::Dataplane,
    netlink::{self, Netlink},
    node,
    pairing::{self, Entry},
    store::{self, AnyStore, Store, Transaction, records},
    topology::{Link, Side},
};

/// One per-end counter: its metric name part, its help, how to read it.
type Counter = (&'static str, &'static str, fn(&EndStats) -> u64);

/// What one round changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub written: usize,
    pub removed: usize,
    /// Ends of this node whose pod is gone (no DEL came), forgotten.
    pub forgotten: usize,
}

/// Runs rounds every `interval` until SIGINT or SIGTERM.
pub fn run(config: &Path, interval: Duration) -> anyhow::Result<()> {
    let text = crate::files::read_text(config).with_context(|| format!("reading {}", config.display()))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    let settings = Settings::from_config(ratchet_entry(&raw).with_context(|| format!("in {}", config.display()))?)?;
    let _ = tracing_subscriber::fmt().with_ansi(false).with_target(false).with_writer(std::io::stderr).try_init();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut agent = Agent::start(&settings).await?;
        let metrics = tokio::net::TcpListener::bind(settings.metrics_address)
            .await
            .with_context(|| format!("serving metrics on {}", settings.metrics_address))?;
        info!(node = %settings.node(), metrics = %settings.metrics_address, "agent running");
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(interval);
        // With etcd, every change starts a round at once; the tick stays as
        // the floor (and is all there is with the embedded store).
        let mut changes = agent.store.watch().await?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
                changed = next_change(&mut changes) => {
                    if let Err(error) = changed {
                        warn!(%error, "etcd watch ended; polling until it is back");
                        changes = None;
                    }
                    if let Err(error) = agent.round().await {
                        warn!(%error, "round failed; retrying");
                    }
                }
                accepted = metrics.accept() => match accepted {
                    Ok((stream, _)) => {
                        if let Err(error) = agent.serve_metrics(stream).await {
                            warn!(%error, "metrics request failed");
                        }
                    }
                    Err(error) => warn!(%error, "accepting a metrics connection"),
                },
                _ = tick.tick() => match agent.round().await {
                    Ok(round) if round != Round::default() => {
                        info!(written = round.written, removed = round.removed, forgotten = round.forgotten, "reconciled")
                    }
                    Ok(_) => {}
                    Err(error) => warn!(%error, "round failed; retrying"),
                },
            }
        }
        info!("agent stopped");
        Ok(())
    })
}

/// ratchet's settings in a network config: the config itself, or in a
/// conflist (what `ratchet install` writes) the entry whose type is ratchet.
fn ratchet_entry(raw: &serde_json::Value) -> anyhow::Result<&serde_json::Value> {
    let Some(plugins) = raw.get("plugins").and_then(serde_json::Value::as_array) else { return Ok(raw) };
    plugins.iter().find(|plugin| plugin["type"] == "ratchet").context("a conflist without a ratchet plugin")
}

/// Waits for the next change the watch reports; forever without a watch.
async fn next_change(changes: &mut Option<etcd_client::WatchStream>) -> Result<(), etcd_client::Error> {
    match changes {
        Some(stream) => match stream.message().await? {
            Some(_) => Ok(()),
            None => Err(etcd_client::Error::WatchError("the watch stream closed".into())),
        },
        None => std::future::pending().await,
    }
}

/// The agent's long-lived handles: one store connection, one netlink socket.
pub struct Agent<'a> {
    settings: &'a Settings,
    store: AnyStore,
    host: Netlink,
    /// The topology revision running pods were last brought in line with.
    synced_rev: Option<u64>,
    /// When the node's lease was last renewed.
    renewed: Option<std::time::Instant>,
}

impl<'a> Agent<'a> {
    pub async fn start(settings: &'a Settings) -> Result<Self, CniError> {
        Ok(Self {
            settings,
            store: store::open(settings).await?,
            host: Netlink::host()?,
            synced_rev: None,
            renewed: None,
        })
    }

    /// Answers one HTTP request with the metrics, whatever it asked for:
    /// the endpoint serves nothing else.
    async fn serve_metrics(&mut self, mut stream: tokio::net::TcpStream) -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut request = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut request)).await;
        let body = self.metrics().await?;
        let head = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        Ok(())
    }

    /// Links by state (cluster-wide, from the store) and this node's ends'
    /// counters, in the Prometheus text format.
    pub async fn metrics(&mut self) -> Result<String, CniError> {
        let mut tx = self.store.begin().await?;
        let by_link = records::links_with_ends(&mut tx).await?;
        drop(tx);
        let mut out = String::from("# HELP ratchet_links Links by state.\n# TYPE ratchet_links gauge\n");
        for state in [pairing::LinkState::Up, pairing::LinkState::Waiting, pairing::LinkState::Down] {
            let count = by_link.values().filter(|ends| pairing::state(ends) == state).count();
            out.push_str(&format!("ratchet_links{{state=\"{state}\"}} {count}\n"));
        }
        let Some(dataplane) = Dataplane::open(&self.settings.pin_root)? else { return Ok(out) };
        let node = self.settings.node();
        let counters: [Counter; 3] = [
            ("packets", "Frames", |stats| stats.packets),
            ("bytes", "Bytes", |stats| stats.bytes),
            ("drops", "Frames dropped while the peer was missing", |stats| stats.drops),
        ];
        for (name, help, value_of) in counters {
            let metric = format!("ratchet_end_{name}_total");
            out.push_str(&format!(
                "# HELP {metric} {help} leaving a link end (this node's ends).\n# TYPE {metric} counter\n"
            ));
            for (link, ends) in &by_link {
                for (side, end) in [Side::A, Side::B].into_iter().zip(ends) {
                    let Some(end) = end.as_ref().filter(|end| end.node == node) else { continue };
                    let Some(stats) = dataplane.stats(end.host_ifindex)? else { continue };
                    let labels = format!(
                        "link=\"{link}\",side=\"{}\",pod=\"{}\",ifname=\"{}\"",
                        side.as_str(),
                        end.pod,
                        end.ifname
                    );
                    out.push_str(&format!("{metric}{{{labels}}} {}\n", value_of(&stats)));
                }
            }
        }
        Ok(out)
    }

    /// Renews the node's lease a few times per lease period.
    async fn renew_lease(&mut self) -> Result<(), CniError> {
        let ttl = Duration::from_secs(self.settings.node_lease_seconds);
        if self.renewed.is_some_and(|at| at.elapsed() < ttl / 3) {
            return Ok(());
        }
        self.store.keep_alive(&self.settings.node(), ttl).await?;
        self.renewed = Some(std::time::Instant::now());
        Ok(())
    }

    /// One reconcile round.
    pub async fn round(&mut self) -> Result<Round, CniError> {
        self.renew_lease().await?;
        let settings = self.settings;
        let mut dataplane = Dataplane::open_or_load(&settings.pin_root, &settings.state_dir)?;
        let mut tx = self.store.begin().await?;
        let fabric = node::join(&mut tx, settings, &self.host, &mut dataplane).await?;
        let rev = records::topology_rev(&mut tx).await?;
        let mut unlinked = Vec::new();
        if self.synced_rev != Some(rev) {
            unlinked = sync_running_pods(settings, &self.host, &mut tx, &mut dataplane, &fabric).await?;
        }
        let mut by_link: HashMap<String, [Option<records::EndRecord>; 2]> = HashMap::new();
        let mut dead = Vec::new();
        for (link, side, end) in records::all_ends(&mut tx).await? {
            // An end of this node whose veth is gone: its pod went without a
            // DEL. It is forgotten, and nothing is wired to it.
            if end.node == fabric.node && netlink::ifindex_of(&end.host_ifname)? != Some(end.host_ifindex) {
                dead.push((link, side));
            } else {
                by_link.entry(link).or_default()[side.index()] = Some(end);
            }
        }
        let mut round = Round::default();
        restore_programs(settings, &self.host, &mut tx, &mut dataplane, &fabric, &mut by_link).await?;
        for (link, side) in dead {
            let released = del::release(&mut tx, &self.host, Some(&mut dataplane), &fabric, &link, side, None).await?;
            round.forgotten += usize::from(released.is_some());
        }
        let wanted: Vec<Entry> = by_link.values().flat_map(|ends| pairing::forwarding(ends, &fabric)).collect();
        let actual = dataplane.entries()?;
        for entry in actual.iter().filter(|entry| !wanted.contains(entry)) {
            // A slot that gets a new value is overwritten below instead.
            if !wanted.iter().any(|w| w.same_slot(entry)) {
                dataplane.remove(entry)?;
                round.removed += 1;
            }
        }
        failpoint!("agent::entries-removed");
        for entry in wanted.iter().filter(|entry| !actual.contains(entry)) {
            dataplane.apply(entry)?;
            round.written += 1;
        }
        failpoint!("agent::before-commit");
        tx.commit().await?;
        self.synced_rev = Some(rev);
        for end in &unlinked {
            del::teardown(&self.host, end).await?;
        }
        Ok(round)
    }
}

/// Brings every running pod on this node in line with the topology: ends of
/// links it gained are made, ends of links it lost are released (returned,
/// to tear down once committed), and a changed MTU or MAC is set on the live
/// interfaces. Only a pod ratchet ADDed is known, with its netns.
async fn sync_running_pods(
    settings: &Settings,
    host: &Netlink,
    tx: &mut impl Transaction,
    dataplane: &mut Dataplane,
    fabric: &pairing::Fabric,
) -> Result<Vec<del::Released>, CniError> {
    let mut unlinked = Vec::new();
    for (pod, sandbox) in records::sandboxes(tx).await? {
        if sandbox.node != fabric.node || !Path::new(&sandbox.netns).exists() {
            continue;
        }
        let links = records::links_of_pod(tx, &pod).await?;
        let wanted: Vec<(&Link, Side)> =
            links.iter().flat_map(|link| link.sides_of(&pod).map(move |side| (link, side))).collect();
        let held = records::container_ends(tx, &sandbox.container_id).await?;
        for end in &held {
            if !wanted.iter().any(|(link, side)| link.id() == end.link && *side == end.side) {
                let holder = Some(sandbox.container_id.as_str());
                unlinked.extend(del::release(tx, host, Some(dataplane), fabric, &end.link, end.side, holder).await?);
            }
        }
        let in_pod = Netlink::in_netns(&crate::netlink::open_netns(&sandbox.netns)?, &sandbox.netns)?;
        for (link, side) in wanted {
            if held.iter().any(|end| end.link == link.id() && end.side == side) {
                apply_link_settings(settings, host, &in_pod, tx, link, side).await?;
            } else {
                add::attach_live(tx, settings, fabric, host, dataplane, &sandbox, link, side).await?;
                info!(pod = %pod, link = %link.id(), "attached a link end the topology gained");
            }
        }
    }
    Ok(unlinked)
}

/// Sets a link's MTU (both ends of this side's veth) and the end's MAC when
/// the topology changed them.
async fn apply_link_settings(
    settings: &Settings,
    host: &Netlink,
    in_pod: &Netlink,
    tx: &mut impl Transaction,
    link: &Link,
    side: Side,
) -> Result<(), CniError> {
    let Some(record) = records::end(tx, &link.id(), side).await? else { return Ok(()) };
    let Some(pod_end) = in_pod.link_by_name(record.ifname.as_str()).await? else { return Ok(()) };
    let mtu = settings.link_mtu(link);
    if pod_end.mtu != mtu {
        in_pod.set_mtu(pod_end.index, record.ifname.as_str(), mtu).await?;
        host.set_mtu(record.host_ifindex, &record.host_ifname, mtu).await?;
        info!(link = %link.id(), mtu, "changed a link end's MTU");
    }
    if let Some(mac) = link.end(side).mac
        && pod_end.mac != Some(mac)
    {
        in_pod.set_mac(pod_end.index, record.ifname.as_str(), mac).await?;
        info!(link = %link.id(), %mac, "changed a link end's MAC");
    }
    Ok(())
}

/// After the pins were made afresh (removed by hand, bpffs remounted),
/// every live end of this node still runs the old program on the old
/// maps: give each the current one, restart its counters, and record the
/// generation; likewise the VXLAN device's tunnel program.
async fn restore_programs(
    settings: &Settings,
    host: &Netlink,
    tx: &mut impl Transaction,
    dataplane: &mut Dataplane,
    fabric: &pairing::Fabric,
    by_link: &mut HashMap<String, [Option<records::EndRecord>; 2]>,
) -> Result<(), CniError> {
    let generation = dataplane.generation();
    for (link, ends) in by_link.iter_mut() {
        for (side, end) in [Side::A, Side::B].into_iter().zip(ends.iter_mut()) {
            let Some(end) = end.as_mut().filter(|end| end.node == fabric.node && end.dataplane != generation) else {
                continue;
            };
            dataplane.reattach(&end.host_ifname, settings.attach)?;
            dataplane.track(end.host_ifindex)?;
            end.dataplane = generation;
            records::put_end(tx, link, side, end).await?;
            info!(link = %link, end = %end.host_ifname, "restored the program on a host end");
        }
    }
    if let Some(vxlan) = fabric.vxlan_ifindex
        && !host.ingress_bpf_programs(vxlan).await?.contains(&dataplane.tunnel_program_id()?)
    {
        dataplane.reattach_tunnel(node::VXLAN_DEVICE)?;
        info!("restored the tunnel program on {}", node::VXLAN_DEVICE);
    }
    Ok(())
}
