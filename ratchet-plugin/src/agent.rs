//! `ratchet agent`: one per node, keeps this node's maps equal to the store.
//!
//! A plugin process wires what it can see when it runs; the agent covers
//! what happens elsewhere: a peer attached or gone on another node, a node
//! that registered its address after this end attached, entries a killed
//! plugin left behind. Each round it reads every end from the store (under
//! the same node lock as ADD and DEL, so it never races them), computes the
//! entries this node needs, and writes or removes the difference. The
//! datapath never depends on it: links keep forwarding while it is down.

use std::{os::unix::fs::DirBuilderExt, path::Path, time::Duration};

use anyhow::Context;
use ratchet_common::EndStats;
use tracing::{info, warn};

use crate::{
    config::Settings,
    dataplane::Dataplane,
    ends::{self, Ends, EndsByLink, EndsError, failpoint},
    netlink::{self, Netlink},
    pairing::{self, Entry},
    store::{AnyStore, Store, Transaction, records},
    topology::Side,
};

/// One per-end counter: its metric name part, its help, how to read it.
type Counter = (&'static str, &'static str, fn(&EndStats) -> u64);

/// What one round changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Map entries written.
    pub written: usize,
    /// Map entries removed.
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
    let _running = hold_running_lock(&settings)?;
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

/// The file an agent holds locked while it runs, in the state dir: one
/// agent per node, and `ratchet unload` can tell that one runs.
pub const RUNNING_LOCK: &str = "agent.lock";

/// Takes the node's agent lock, or says that another agent holds it.
fn hold_running_lock(settings: &Settings) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let dir = &settings.state_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(RUNNING_LOCK);
    crate::files::try_lock(&path)
        .with_context(|| format!("locking {}", path.display()))?
        .with_context(|| format!("another `ratchet agent` runs for this node (it holds {})", path.display()))
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
    /// Opens the store and the host's netlink socket, held for every round.
    pub async fn start(settings: &'a Settings) -> Result<Self, EndsError> {
        Ok(Self {
            settings,
            store: ends::open_store(settings).await?,
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
    pub async fn metrics(&mut self) -> Result<String, EndsError> {
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
    async fn renew_lease(&mut self) -> Result<(), EndsError> {
        let ttl = Duration::from_secs(self.settings.node_lease_seconds);
        if self.renewed.is_some_and(|at| at.elapsed() < ttl / 3) {
            return Ok(());
        }
        self.store.keep_alive(&self.settings.node(), ttl).await?;
        self.renewed = Some(std::time::Instant::now());
        Ok(())
    }

    /// One reconcile round, in one transaction.
    pub async fn round(&mut self) -> Result<Round, EndsError> {
        self.renew_lease().await?;
        let settings = self.settings;
        let mut tx = self.store.begin().await?;
        let mut ends = Ends::for_attach(&mut tx, settings, self.host.clone()).await?;
        let rev = records::topology_rev(&mut tx).await?;
        let mut unlinked = Vec::new();
        if self.synced_rev != Some(rev) {
            unlinked = ends.sync_running_pods(&mut tx).await?;
        }
        let (mut by_link, dead) = ends_by_link(&mut tx, &ends.fabric().node).await?;
        let mut round = Round::default();
        ends.restore_programs(&mut tx, &mut by_link).await?;
        for (link, side) in dead {
            round.forgotten += usize::from(ends.release(&mut tx, &link, side, None).await?.is_some());
        }
        let wanted: Vec<Entry> =
            by_link.values().flat_map(|ends_of| pairing::forwarding(ends_of, ends.fabric())).collect();
        if let Some(dataplane) = ends.dataplane() {
            reconcile(dataplane, &wanted, &mut round)?;
        }
        failpoint!("agent::before-commit");
        tx.commit().await?;
        self.synced_rev = Some(rev);
        for end in &unlinked {
            ends.teardown(end).await?;
        }
        Ok(round)
    }
}

/// Every end by link, but for the ends of this node whose veth is gone:
/// their pod went without a DEL. Those are returned apart, to be forgotten,
/// and nothing is wired to them.
async fn ends_by_link(tx: &mut impl Transaction, node: &str) -> Result<(EndsByLink, Vec<(String, Side)>), EndsError> {
    let mut by_link = EndsByLink::new();
    let mut dead = Vec::new();
    for (link, side, end) in records::all_ends(tx).await? {
        if end.node == node && netlink::ifindex_of(&end.host_ifname)? != Some(end.host_ifindex) {
            dead.push((link, side));
        } else {
            by_link.entry(link).or_default()[side.index()] = Some(end);
        }
    }
    Ok((by_link, dead))
}

/// Writes the wanted entries the maps lack and removes those nothing wants.
fn reconcile(dataplane: &mut Dataplane, wanted: &[Entry], round: &mut Round) -> Result<(), EndsError> {
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
    Ok(())
}
