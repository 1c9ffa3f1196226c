//! `ratchet agent`: one per node, keeps this node's maps equal to the store.
//!
//! A plugin process wires what it can see when it runs; the agent covers
//! what happens elsewhere: a peer attached or gone on another node, a node
//! that registered its address after this end attached, entries a killed
//! plugin left behind. Each round it reads every end from the store (under
//! the same node lock as ADD and DEL, so it never races them), computes the
//! entries this node needs, and writes or removes the difference. The
//! datapath never depends on it: links keep forwarding while it is down.
//!
//! Beside the rounds, on a thread of its own (`http`), it serves
//! Prometheus metrics (`metrics`) and liveness and readiness from what
//! each round records ([`status`]): a scrape reads the last round's view
//! and the pinned counters, never the store. With `--watch-topologies`, a
//! third thread (`topologies`) makes the topology from the Kubernetes API.

mod http;
mod metrics;
pub mod status;
mod topologies;

use std::{collections::BTreeSet, os::unix::fs::DirBuilderExt, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use tracing::{info, warn};

use self::status::{Snapshot, Status};

/// How often the agent looks for a trace switch a killed `ratchet trace`
/// left on: rarely, as tracing only costs while someone is debugging.
const TRACE_CHECK: Duration = Duration::from_secs(5);
use crate::{
    config::Settings,
    dataplane::Dataplane,
    ends::{self, Ends, EndsByLink, EndsError, failpoint},
    netlink::{self, Netlink},
    pairing::{self, Entry},
    store::{AnyStore, Store, Transaction, records},
    topology::Side,
};

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

/// Serves metrics and health on `metrics_address`, watches Topology objects
/// when `watch_topologies`, and runs rounds every `interval` until SIGINT or
/// SIGTERM.
pub fn run(config: &Path, interval: Duration, watch_topologies: bool) -> anyhow::Result<()> {
    let text = crate::files::read_text(config).with_context(|| format!("reading {}", config.display()))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    let settings = Settings::from_config(ratchet_entry(&raw).with_context(|| format!("in {}", config.display()))?)?;
    let _ = tracing_subscriber::fmt().with_ansi(false).with_target(false).with_writer(std::io::stderr).try_init();
    // Bound before anything else, so a taken port fails the start.
    let listener = std::net::TcpListener::bind(settings.metrics_address)
        .with_context(|| format!("serving metrics on {}", settings.metrics_address))?;
    let serving = listener.local_addr()?;
    let status = Arc::new(Status::new(settings.node(), interval));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _running = hold_running_lock(&settings)?;
    runtime.block_on(async {
        let mut agent = Agent::start(&settings, status.clone()).await?;
        http::spawn(listener, status, settings.pin_root.clone())?;
        if watch_topologies {
            topologies::spawn(settings.clone())?;
        }
        info!(node = %settings.node(), metrics = %serving, "agent running");
        agent.run_until_stopped(interval).await?;
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
    /// The topology's link ids, and the revision they were read at: read
    /// again only when it changes, for the links that have no end.
    topology: Option<(u64, BTreeSet<String>)>,
    /// When the node's lease was last renewed.
    renewed: Option<std::time::Instant>,
    /// Where each round's outcome goes, for the metrics and health endpoint.
    status: Arc<Status>,
    /// Which of this node's host veths were last set down for a cut link.
    cut: ends::cut::Applied,
    /// What its node's pod ends were last shaped to.
    shaped: ends::impair::Applied,
}

impl<'a> Agent<'a> {
    /// Opens the store and the host's netlink socket, held for every round.
    pub async fn start(settings: &'a Settings, status: Arc<Status>) -> Result<Self, EndsError> {
        Ok(Self {
            settings,
            store: ends::open_store(settings).await?,
            host: Netlink::host()?,
            synced_rev: None,
            topology: None,
            renewed: None,
            status,
            cut: ends::cut::Applied::default(),
            shaped: ends::impair::Applied::default(),
        })
    }

    /// Runs a round on every tick and (with etcd) every change, until SIGINT
    /// or SIGTERM. A failed round is logged and retried on the next one.
    async fn run_until_stopped(&mut self, interval: Duration) -> anyhow::Result<()> {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(interval);
        // With etcd, every change starts a round at once; the tick stays as
        // the floor (and is all there is with the embedded store).
        let mut changes = self.store.watch().await?;
        let mut trace_check = tokio::time::interval(TRACE_CHECK);
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
                _ = trace_check.tick() => {
                    self.reset_killed_trace();
                    continue;
                }
                changed = next_change(&mut changes) => {
                    if let Err(error) = changed {
                        warn!(%error, "etcd watch ended; polling until it is back");
                        changes = None;
                    }
                }
                _ = tick.tick() => {}
            }
            match self.round().await {
                Ok(round) if round != Round::default() => {
                    info!(written = round.written, removed = round.removed, forgotten = round.forgotten, "reconciled")
                }
                Ok(_) => {}
                Err(error) => warn!(%error, "round failed; retrying"),
            }
        }
    }

    /// Turns per-frame tracing off when a killed `ratchet trace` left it on.
    fn reset_killed_trace(&self) {
        let (state_dir, pin_root) = (&self.settings.state_dir, &self.settings.pin_root);
        let reset = Dataplane::open(pin_root)
            .and_then(|dataplane| dataplane.map_or(Ok(false), |d| crate::trace::reset_if_left_on(state_dir, &d)));
        match reset {
            Ok(true) => warn!("a killed `ratchet trace` had left per-frame tracing on; turned it off"),
            Ok(false) => {}
            Err(error) => warn!(%error, "could not read the trace switch"),
        }
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

    /// One reconcile round, its outcome recorded for the metrics and
    /// health endpoint.
    pub async fn round(&mut self) -> Result<Round, EndsError> {
        self.status.round_began();
        match self.reconcile().await {
            Ok((round, snapshot)) => {
                self.status.round_succeeded(snapshot);
                Ok(round)
            }
            Err(error) => {
                self.status.round_failed(&error);
                Err(error)
            }
        }
    }

    /// The round itself, in one transaction; what it leaves, for the metrics.
    async fn reconcile(&mut self) -> Result<(Round, Snapshot), EndsError> {
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
            write_difference(dataplane, &wanted, &mut round)?;
        }
        let cut = records::cut_links(&mut tx).await?;
        self.cut.sync(&self.host, &ends.fabric().node, &by_link, &cut).await?;
        self.shaped.sync(&self.host, &ends.fabric().node, &by_link).await;
        let links = topology_links(&mut tx, rev, &mut self.topology).await?;
        let snapshot = Snapshot::of(links, &by_link, &cut, &ends.fabric().node);
        failpoint!("agent::before-commit");
        tx.commit().await?;
        self.synced_rev = Some(rev);
        for end in &unlinked {
            ends.teardown(end).await?;
        }
        Ok((round, snapshot))
    }
}

/// The topology's link ids at revision `rev`, read from the store only when
/// `cache` holds another revision's.
async fn topology_links<'c>(
    tx: &mut impl Transaction,
    rev: u64,
    cache: &'c mut Option<(u64, BTreeSet<String>)>,
) -> Result<&'c BTreeSet<String>, EndsError> {
    if cache.as_ref().is_none_or(|(cached, _)| *cached != rev) {
        let ids = records::topology(tx).await?.links.iter().map(crate::topology::Link::id).collect();
        *cache = Some((rev, ids));
    }
    Ok(&cache.as_ref().expect("filled above").1)
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
fn write_difference(dataplane: &mut Dataplane, wanted: &[Entry], round: &mut Round) -> Result<(), EndsError> {
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
