//! What the agent's rounds tell the metrics and health endpoints.
//!
//! A round writes here when it begins and ends; a scrape or a probe reads a
//! copy. Both sides hold the lock only to copy a few fields, so a scrape
//! never waits on the store (the old endpoint opened a transaction per
//! scrape, on the embedded store a `BEGIN IMMEDIATE` that queued behind ADD
//! and DEL) and a round never waits on a slow scraper.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use crate::{
    ends::{EndsByLink, EndsError},
    pairing::{self, LinkState},
    store::StoreError,
    topology::Side,
};

/// A round may wait this long on the store and the node's locks
/// ([`crate::files::LOCK_WAIT`] each) and on etcd's timeouts; only a loop
/// that has neither begun nor ended a round for longer is stuck.
const STALL_FLOOR: Duration = Duration::from_secs(60);

/// A loop that misses this many ticks in a row is not running, whatever
/// the floor above allows.
const STALL_TICKS: u32 = 10;

/// How many links are in each state, cluster-wide, as the last successful
/// round read the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounts {
    /// Both ends attached.
    pub up: u64,
    /// One end attached, waiting for its peer.
    pub waiting: u64,
    /// In the topology, no end attached.
    pub down: u64,
    /// Cut with `ratchet link down`, whatever its ends.
    pub cut: u64,
}

/// One of this node's link ends, with what its metric labels carry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalEnd {
    /// The link's id.
    pub link: String,
    /// Which end of the link.
    pub side: Side,
    /// The pod, `namespace/name`.
    pub pod: String,
    /// The interface name inside the pod.
    pub ifname: String,
    /// The host veth, whose counters are the end's (read at scrape time).
    pub host_ifindex: u32,
}

/// The world as the last successful round left it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Links by state, cluster-wide.
    pub links: LinkCounts,
    /// This node's ends, in link order.
    pub ends: Vec<LocalEnd>,
}

impl Snapshot {
    /// From the topology's link ids and every attached end: links of the
    /// topology without ends are down; ends of links the topology dropped
    /// still count until their pods are deleted.
    pub fn of(topology: &BTreeSet<String>, by_link: &EndsByLink, cut: &BTreeSet<String>, node: &str) -> Self {
        let mut snapshot = Self::default();
        let unattached = topology.iter().filter(|link| !by_link.contains_key(*link) && !cut.contains(*link));
        snapshot.links.down = unattached.count() as u64;
        snapshot.links.cut = topology.intersection(cut).count() as u64;
        for (link, ends) in by_link {
            match pairing::state(ends) {
                _ if cut.contains(link) && topology.contains(link) => {}
                LinkState::Up => snapshot.links.up += 1,
                LinkState::Waiting => snapshot.links.waiting += 1,
                LinkState::Down => snapshot.links.down += 1,
            }
            for (side, end) in [Side::A, Side::B].into_iter().zip(ends) {
                let Some(end) = end.as_ref().filter(|end| end.node == node) else { continue };
                snapshot.ends.push(LocalEnd {
                    link: link.clone(),
                    side,
                    pod: end.pod.to_string(),
                    ifname: end.ifname.to_string(),
                    host_ifindex: end.host_ifindex,
                });
            }
        }
        snapshot.ends.sort();
        snapshot
    }
}

/// The agent loop's record of its own rounds.
#[derive(Clone, Debug)]
pub struct Health {
    /// Rounds that ended, well or not.
    pub rounds: u64,
    /// Rounds that ended in an error.
    pub errors: u64,
    /// When the last successful round committed; `None` before the first.
    pub last_success: Option<SystemTime>,
    /// Whether the store answered in the last round (at start: it opened).
    pub store_reachable: bool,
    /// Why the last round failed; `None` once one succeeds.
    pub last_error: Option<String>,
    /// When a round last began or ended: the loop's heartbeat.
    pub last_progress: Instant,
}

impl Health {
    /// Liveness: the loop began or ended a round within `window`. A round
    /// that waits on the store still counts until the window runs out.
    pub fn alive(&self, now: Instant, window: Duration) -> Result<(), String> {
        let quiet = now.saturating_duration_since(self.last_progress);
        if quiet > window {
            return Err(format!(
                "no round began or ended for {:.1} s (allowed {} s)",
                quiet.as_secs_f64(),
                window.as_secs()
            ));
        }
        Ok(())
    }

    /// Readiness: the store answered and the last round succeeded.
    pub fn ready(&self) -> Result<(), String> {
        let why = self.last_error.as_deref().unwrap_or("");
        if !self.store_reachable {
            return Err(format!("the store did not answer: {why}"));
        }
        if !why.is_empty() {
            return Err(format!("the last round failed: {why}"));
        }
        if self.last_success.is_none() {
            return Err("no round has completed yet".into());
        }
        Ok(())
    }
}

/// What the agent shares with its metrics and health server.
pub struct Status {
    /// This node's name, the `node` label of every series.
    pub node: String,
    /// How long the loop may go without a round before it counts as stuck.
    pub stall_window: Duration,
    shared: Mutex<(Arc<Snapshot>, Health)>,
}

impl Status {
    /// Before any round: nothing seen, the store just opened.
    pub fn new(node: String, interval: Duration) -> Self {
        let health = Health {
            rounds: 0,
            errors: 0,
            last_success: None,
            store_reachable: true,
            last_error: None,
            last_progress: Instant::now(),
        };
        let stall_window = (interval * STALL_TICKS).max(STALL_FLOOR);
        Self { node, stall_window, shared: Mutex::new((Arc::default(), health)) }
    }

    /// The latest snapshot and the loop's health, as of now.
    pub fn read(&self) -> (Arc<Snapshot>, Health) {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        (shared.0.clone(), shared.1.clone())
    }

    /// A round begins.
    pub fn round_began(&self) {
        self.update(|_, health| health.last_progress = Instant::now());
    }

    /// A round committed and left the world as `snapshot` says.
    pub fn round_succeeded(&self, snapshot: Snapshot) {
        self.update(|shared, health| {
            *shared = Arc::new(snapshot);
            health.rounds += 1;
            health.last_success = Some(SystemTime::now());
            health.store_reachable = true;
            health.last_error = None;
            health.last_progress = Instant::now();
        });
    }

    /// A round failed; the snapshot stays the last good one.
    pub fn round_failed(&self, error: &EndsError) {
        self.update(|_, health| {
            health.rounds += 1;
            health.errors += 1;
            health.store_reachable = store_answered(error);
            health.last_error = Some(error.to_string());
            health.last_progress = Instant::now();
        });
    }

    fn update(&self, change: impl FnOnce(&mut Arc<Snapshot>, &mut Health)) {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let (snapshot, health) = &mut *shared;
        change(snapshot, health);
    }
}

/// Whether the store answered in a round that failed with `error`: a busy,
/// unreadable, unreachable, refusing or lost store did not; a conflict, a
/// damaged record or any other step's failure came after it answered.
fn store_answered(error: &EndsError) -> bool {
    !matches!(
        error,
        EndsError::Store(
            StoreError::Busy { .. }
                | StoreError::Io { .. }
                | StoreError::Unavailable { .. }
                | StoreError::Refused { .. }
                | StoreError::Lost { .. }
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::EndRecord;

    fn end(node: &str, ifindex: u32) -> EndRecord {
        let json = serde_json::json!({"container_id": "c", "cni_ifname": "eth0", "pod": "default/p",
            "netns": "/run/netns/p", "ifname": "in1", "host_ifname": "rtx", "host_ifindex": ifindex, "node": node,
            "dataplane": 1});
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_snapshot_counts_links_cluster_wide_and_keeps_this_nodes_ends() {
        let topology: BTreeSet<String> = ["up", "waiting", "down", "cut", "cut-unattached"].map(String::from).into();
        let mut by_link = EndsByLink::new();
        by_link.insert("up".into(), [Some(end("n1", 7)), Some(end("n2", 8))]);
        by_link.insert("waiting".into(), [None, Some(end("n2", 9))]);
        by_link.insert("dropped".into(), [Some(end("n1", 10)), None]);
        by_link.insert("cut".into(), [Some(end("n2", 11)), Some(end("n2", 12))]);
        let cut: BTreeSet<String> = ["cut", "cut-unattached"].map(String::from).into();
        let snapshot = Snapshot::of(&topology, &by_link, &cut, "n1");
        assert_eq!(snapshot.links, LinkCounts { up: 1, waiting: 2, down: 1, cut: 2 });
        let ends: Vec<(&str, Side, u32)> =
            snapshot.ends.iter().map(|end| (end.link.as_str(), end.side, end.host_ifindex)).collect();
        assert_eq!(ends, [("dropped", Side::A, 10), ("up", Side::A, 7)]);
    }

    #[test]
    fn ready_after_a_good_round_until_the_store_stops_answering() {
        let status = Status::new("n1".into(), Duration::from_millis(20));
        assert_eq!(status.read().1.ready(), Err("no round has completed yet".into()));
        status.round_succeeded(Snapshot::default());
        assert_eq!(status.read().1.ready(), Ok(()));
        let busy = StoreError::Busy { path: "/s/store.sqlite".into(), waited: Duration::from_secs(10) };
        status.round_failed(&EndsError::Store(busy));
        let health = status.read().1;
        assert!(!health.store_reachable);
        assert!(health.ready().unwrap_err().starts_with("the store did not answer: store at /s/store.sqlite is busy"));
        status.round_failed(&EndsError::Drift("x".into()));
        let health = status.read().1;
        assert_eq!((health.rounds, health.errors, health.store_reachable), (3, 2, true));
        assert_eq!(health.ready(), Err("the last round failed: x".into()));
    }

    #[test]
    fn alive_while_rounds_begin_or_end_within_the_window() {
        let status = Status::new("n1".into(), Duration::from_millis(20));
        assert_eq!(status.stall_window, STALL_FLOOR, "ten 20 ms ticks are less than a store may take");
        assert_eq!(Status::new("n1".into(), Duration::from_secs(10)).stall_window, Duration::from_secs(100));
        let health = status.read().1;
        let window = status.stall_window;
        assert_eq!(health.alive(health.last_progress + window, window), Ok(()));
        let stuck = health.alive(health.last_progress + window + Duration::from_secs(1), window).unwrap_err();
        assert!(stuck.starts_with("no round began or ended for 61.0 s"), "{stuck}");
    }
}
