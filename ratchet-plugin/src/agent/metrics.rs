//! The agent's metrics in the Prometheus text format (0.0.4), written by
//! prometheus-client: it escapes label values (an ifname may hold `"` or
//! `\`, which broke every scrape of the hand-written format) and gives
//! every series the `node` label.
//!
//! A registry is built per scrape from the last round's [`Snapshot`], the
//! loop's [`Health`] and the per-end counters read from the pinned maps
//! then: the values live elsewhere, the registry only writes them out.

use std::borrow::Cow;

use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use ratchet_common::EndStats;

use super::status::{Health, Snapshot};

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// `ratchet_links`' labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The labels of one end's counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    link: String,
    side: &'static str,
    pod: String,
    ifname: String,
}

/// One per-end counter: its name (prometheus-client adds `_total`), its
/// help, how to read it.
type EndCounter = (&'static str, &'static str, fn(&EndStats) -> u64);

const END_COUNTERS: [EndCounter; 3] = [
    ("ratchet_end_packets", "Frames leaving a link end of this node", |stats| stats.packets),
    ("ratchet_end_bytes", "Bytes leaving a link end of this node", |stats| stats.bytes),
    ("ratchet_end_drops", "Frames a link end of this node dropped while its peer was missing", |stats| stats.drops),
];

/// Every series, each labelled with `node`; `counters` reads a host veth's
/// counters (`None`: not tracked, or not readable: its series are left out).
pub fn render(node: &str, snapshot: &Snapshot, health: &Health, counters: impl Fn(u32) -> Option<EndStats>) -> String {
    let node_label = (Cow::Borrowed("node"), Cow::Owned(node.to_owned()));
    let mut registry = Registry::with_labels(std::iter::once(node_label));
    register_links(&mut registry, snapshot);
    register_ends(&mut registry, snapshot, counters);
    register_health(&mut registry, health);
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

fn register_links(registry: &mut Registry, snapshot: &Snapshot) {
    let links = Family::<StateLabels, Gauge>::default();
    let counts = snapshot.links;
    for (state, count) in [("up", counts.up), ("waiting", counts.waiting), ("down", counts.down), ("cut", counts.cut)] {
        links.get_or_create(&StateLabels { state }).set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    registry.register("ratchet_links", "Links by state, cluster-wide, as this node's agent last read the store", links);
}

fn register_ends(registry: &mut Registry, snapshot: &Snapshot, counters: impl Fn(u32) -> Option<EndStats>) {
    let families = END_COUNTERS.map(|_| Family::<EndLabels, Counter>::default());
    for end in &snapshot.ends {
        let Some(stats) = counters(end.host_ifindex) else { continue };
        let labels = EndLabels {
            link: end.link.clone(),
            side: end.side.as_str(),
            pod: end.pod.clone(),
            ifname: end.ifname.clone(),
        };
        for ((_, _, value_of), family) in END_COUNTERS.iter().zip(&families) {
            family.get_or_create(&labels).inc_by(value_of(&stats));
        }
    }
    for ((name, help, _), family) in END_COUNTERS.into_iter().zip(families) {
        registry.register(name, help, family);
    }
}

fn register_health(registry: &mut Registry, health: &Health) {
    let last_success = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    let since_epoch = health.last_success.and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok());
    last_success.set(since_epoch.map_or(0.0, |elapsed| elapsed.as_secs_f64()));
    registry.register(
        "ratchet_agent_last_reconcile_timestamp_seconds",
        "When the agent's last successful round committed, in Unix time (0: none yet)",
        last_success,
    );
    let counter = |value: u64| {
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        counter
    };
    registry.register("ratchet_agent_rounds", "Reconcile rounds the agent ended, well or not", counter(health.rounds));
    registry.register("ratchet_agent_reconcile_errors", "Reconcile rounds that failed", counter(health.errors));
    let reachable = Gauge::<i64>::default();
    reachable.set(i64::from(health.store_reachable));
    registry.register(
        "ratchet_agent_store_reachable",
        "1 when the store answered the agent's last round, else 0",
        reachable,
    );
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant, SystemTime};

    use super::*;
    use crate::{
        agent::status::{LinkCounts, LocalEnd},
        topology::Side,
    };

    fn health() -> Health {
        Health {
            rounds: 5,
            errors: 2,
            last_success: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_750_000_000_250)),
            store_reachable: true,
            last_error: None,
            last_progress: Instant::now(),
        }
    }

    fn hostile_end() -> LocalEnd {
        LocalEnd {
            link: "l1".into(),
            side: Side::B,
            pod: "default/beta".into(),
            ifname: "in\"1\\x".into(),
            host_ifindex: 7,
        }
    }

    #[test]
    fn writes_every_series_with_the_node_label_and_escapes_label_values() {
        let snapshot = Snapshot { links: LinkCounts { up: 1, waiting: 0, down: 2, cut: 3 }, ends: vec![hostile_end()] };
        let stats = EndStats { packets: 3, bytes: 294, drops: 1 };
        let text = render("node\"1", &snapshot, &health(), |ifindex| (ifindex == 7).then_some(stats));
        let end = r#"{node="node\"1",link="l1",side="b",pod="default/beta",ifname="in\"1\\x"}"#;
        for line in [
            "# TYPE ratchet_links gauge".to_owned(),
            r#"ratchet_links{node="node\"1",state="up"} 1"#.into(),
            r#"ratchet_links{node="node\"1",state="down"} 2"#.into(),
            r#"ratchet_links{node="node\"1",state="cut"} 3"#.into(),
            "# TYPE ratchet_end_packets_total counter".into(),
            format!("ratchet_end_packets_total{end} 3"),
            format!("ratchet_end_bytes_total{end} 294"),
            format!("ratchet_end_drops_total{end} 1"),
            r#"ratchet_agent_last_reconcile_timestamp_seconds{node="node\"1"} 1750000000.25"#.into(),
            r#"ratchet_agent_rounds_total{node="node\"1"} 5"#.into(),
            r#"ratchet_agent_reconcile_errors_total{node="node\"1"} 2"#.into(),
            r#"ratchet_agent_store_reachable{node="node\"1"} 1"#.into(),
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line} in\n{text}");
        }
        assert!(!text.contains("# EOF"), "the Prometheus format, not OpenMetrics");
    }

    #[test]
    fn an_end_without_counters_has_no_series_and_no_round_is_time_zero() {
        let snapshot = Snapshot { links: LinkCounts::default(), ends: vec![hostile_end()] };
        let never = Health { last_success: None, store_reachable: false, ..health() };
        let text = render("n1", &snapshot, &never, |_| None);
        assert!(!text.contains("ratchet_end_packets_total"), "an empty family is left out whole: {text}");
        assert!(text.contains("ratchet_agent_last_reconcile_timestamp_seconds{node=\"n1\"} 0.0\n"), "{text}");
        assert!(text.contains("ratchet_agent_store_reachable{node=\"n1\"} 0\n"), "{text}");
    }
}
