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
use tracing::{info, warn};

use crate::{
    cni::{del, error::CniError},
    config::Settings,
    dataplane::Dataplane,
    netlink::Netlink,
    node,
    pairing::{self, Entry},
    store::{self, AnyStore, Store, Transaction, records},
};

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
    let text = std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    let settings = Settings::from_config(&raw)?;
    let _ = tracing_subscriber::fmt().with_ansi(false).with_target(false).with_writer(std::io::stderr).try_init();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut agent = Agent::start(&settings).await?;
        info!(node = %settings.node(), "agent running");
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
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

/// The agent's long-lived handles: one store connection, one netlink socket.
pub struct Agent<'a> {
    settings: &'a Settings,
    store: AnyStore,
    host: Netlink,
}

impl<'a> Agent<'a> {
    pub async fn start(settings: &'a Settings) -> Result<Self, CniError> {
        Ok(Self { settings, store: store::open(settings).await?, host: Netlink::host()? })
    }

    /// One reconcile round.
    pub async fn round(&mut self) -> Result<Round, CniError> {
        let settings = self.settings;
        let mut dataplane = Dataplane::open_or_load(&settings.pin_root, &settings.state_dir)?;
        let mut tx = self.store.begin().await?;
        let fabric = node::join(&mut tx, settings, &self.host, &mut dataplane).await?;
        let interfaces = self.host.links().await?;
        let mut by_link: HashMap<String, [Option<records::EndRecord>; 2]> = HashMap::new();
        let mut dead = Vec::new();
        for (link, side, end) in records::all_ends(&mut tx).await? {
            // An end of this node whose veth is gone: its pod went without a
            // DEL. It is forgotten, and nothing is wired to it.
            if end.node == fabric.node && interfaces.get(&end.host_ifname) != Some(&end.host_ifindex) {
                dead.push((link, side));
            } else {
                by_link.entry(link).or_default()[side.index()] = Some(end);
            }
        }
        let mut round = Round::default();
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
        for entry in wanted.iter().filter(|entry| !actual.contains(entry)) {
            dataplane.apply(entry)?;
            round.written += 1;
        }
        tx.commit().await?;
        Ok(round)
    }
}
