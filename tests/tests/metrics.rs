//! The agent's metrics and health endpoint: `/metrics` in the Prometheus
//! text format (every series with the `node` label, label values escaped),
//! `/healthz` and `/readyz`, served without the store: a held store lock
//! does not delay a scrape, and readiness follows whether the store answers.

use std::{
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ratchet_tests::{Agent, Etcd, Node, Pod, end, scrape, unique};
use serde_json::json;

/// A pod interface name the kernel takes (anything but `/`, `:` and
/// whitespace) that the old hand-written format wrote unescaped.
const HOSTILE_IFNAME: &str = r#"in"1\x"#;

/// alpha (its end named [`HOSTILE_IFNAME`]) linked to beta, both added.
fn linked_pair(node: &Node, subnet: u8) -> (Pod, Pod, String) {
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = unique("mt");
    node.apply(&json!({"links": [{"name": link,
        "a": end(&alpha, HOSTILE_IFNAME, &[&format!("10.97.{subnet}.1/24")]),
        "b": end(&beta, "in1", &[&format!("10.97.{subnet}.2/24")])}]}));
    node.add(&alpha);
    node.add(&beta);
    (alpha, beta, link)
}

#[test]
fn a_scrape_parses_with_a_hostile_ifname_and_every_series_names_the_node() {
    let node = Node::new();
    let (alpha, _beta, link) = linked_pair(&node, 1);
    assert!(alpha.link(HOSTILE_IFNAME).is_some(), "the kernel took the name");
    let agent = Agent::start(&node);
    assert!(agent.readiness_becomes(200, Duration::from_secs(10)), "ready after its first round");
    assert!(alpha.ping("10.97.1.2"));

    let answer = agent.get("/metrics");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let scrape = scrape::Scrape::parse(&answer.body);
    assert!(scrape.0.iter().all(|s| s.labels.get("node").map(String::as_str) == Some("node-1")), "{scrape:?}");
    assert_eq!(scrape.value("ratchet_links", &[("state", "up")]), 1.0);
    assert_eq!(scrape.value("ratchet_links", &[("state", "waiting")]), 0.0);
    let alpha_end = [("link", link.as_str()), ("side", "a")];
    let sent = scrape.one("ratchet_end_packets_total", &alpha_end);
    assert_eq!(sent.labels["ifname"], HOSTILE_IFNAME, "escaped on the wire, the same name once parsed");
    assert_eq!(sent.labels["pod"], "default/alpha");
    assert!(sent.value >= 1.0, "the ping left alpha: {sent:?}");
    for counter in ["ratchet_end_bytes_total", "ratchet_end_drops_total"] {
        scrape.one(counter, &alpha_end);
    }

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let last = scrape.value("ratchet_agent_last_reconcile_timestamp_seconds", &[]);
    assert!((now - 60.0..=now + 1.0).contains(&last), "the last round was just now: {last} vs {now}");
    assert!(scrape.value("ratchet_agent_rounds_total", &[]) >= 1.0);
    assert_eq!(scrape.value("ratchet_agent_reconcile_errors_total", &[]), 0.0);
    assert_eq!(scrape.value("ratchet_agent_store_reachable", &[]), 1.0);

    assert_eq!((agent.get("/healthz").status, agent.get("/healthz").body.as_str()), (200, "alive\n"));
    assert_eq!(agent.get("/readyz").body, "ready\n");
    assert_eq!(agent.get("/").status, 404);
    assert_eq!(agent.get("/metrics/../secret").status, 404);
    assert_eq!(scrape::request(agent.metrics_address(), "POST", "/metrics").status, 405);
    assert_eq!(scrape::request(agent.metrics_address(), "HEAD", "/readyz").status, 200);
}

/// The old endpoint opened a store transaction per scrape (on the embedded
/// store, `BEGIN IMMEDIATE`): a scrape queued behind every ADD and DEL, and
/// a stuck writer hung it. Now a scrape reads the last round's view: with
/// the store held by another process, scrapes answer at once while the
/// agent's round waits; when that round gives up, readiness says the store
/// did not answer (liveness stays: the loop runs), and comes back with it.
#[test]
fn a_scrape_never_waits_for_the_store_and_readiness_follows_it() {
    let node = Node::new();
    let (_alpha, _beta, link) = linked_pair(&node, 2);
    let agent = Agent::start(&node);
    assert!(agent.readiness_becomes(200, Duration::from_secs(10)));

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut store = runtime.block_on(ratchet_plugin::store::open(&node.settings())).unwrap();
    let held = runtime.block_on(ratchet_plugin::store::Store::begin(&mut store)).unwrap();
    for _ in 0..5 {
        let started = Instant::now();
        let scrape = agent.scrape();
        let took = started.elapsed();
        assert!(took < Duration::from_millis(500), "a scrape with the store held took {took:?}");
        scrape.one("ratchet_end_packets_total", &[("link", &link), ("side", "b")]);
        assert_eq!(agent.get("/healthz").status, 200, "a round waiting on the store is a live loop");
        thread::sleep(Duration::from_millis(200));
    }
    assert!(agent.readiness_becomes(503, Duration::from_secs(20)), "the round gave up on the busy store");
    let why = agent.get("/readyz").body;
    assert!(why.starts_with("not ready: the store did not answer: ") && why.contains("busy"), "{why}");
    let scrape = agent.scrape();
    assert_eq!(scrape.value("ratchet_agent_store_reachable", &[]), 0.0);
    assert!(scrape.value("ratchet_agent_reconcile_errors_total", &[]) >= 1.0);
    assert_eq!(scrape.value("ratchet_links", &[("state", "up")]), 1.0, "the last good view stays");
    assert_eq!(agent.get("/healthz").status, 200);

    drop(held);
    assert!(agent.readiness_becomes(200, Duration::from_secs(15)), "ready again once the store is free");
    assert_eq!(agent.scrape().value("ratchet_agent_store_reachable", &[]), 1.0);
}

#[test]
fn readiness_is_lost_while_etcd_is_down_and_regained_when_it_is_back() {
    let mut etcd = Etcd::new();
    let node = Node::with_etcd(&etcd);
    let agent = Agent::start(&node);
    assert!(agent.readiness_becomes(200, Duration::from_secs(10)));

    etcd.stop();
    assert!(agent.readiness_becomes(503, Duration::from_secs(20)), "a round failed to reach etcd");
    let why = agent.get("/readyz").body;
    assert!(why.contains("the store did not answer") && why.contains(&etcd.endpoint()), "{why}");
    let started = Instant::now();
    let scrape = agent.scrape();
    assert!(started.elapsed() < Duration::from_millis(500), "scrapes do not wait for etcd");
    assert_eq!(scrape.value("ratchet_agent_store_reachable", &[]), 0.0);
    assert_eq!(agent.get("/healthz").status, 200, "the loop still runs");

    etcd.start();
    assert!(agent.readiness_becomes(200, Duration::from_secs(20)), "ready once etcd is back");
    assert_eq!(agent.scrape().value("ratchet_agent_store_reachable", &[]), 1.0);
}
