//! Churn: many pods added and deleted concurrently, cycle after cycle, as a
//! busy node sees them (a new sandbox, so a new container id, each time),
//! with the agent running: afterwards nothing is left (veths, map entries,
//! store records, pins) and the agent's memory and fds did not grow.
//!
//! In the test command: 100 pods for 3 cycles. `RATCHET_SOAK=1`: 200 cycles
//! (20 000 ADDs and as many DELs: the "agent under 10 000 link changes").
//! The figures (duration, peak RSS of a plugin process, the agent's RSS and
//! fds before and after) are printed for the record.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    thread,
    time::Instant,
};

use ratchet_plugin::{naming::host_ifname, topology::Side};
use ratchet_tests::{Agent, Node, Pod, end, host_link_gone, unique};
use serde_json::json;

const PODS: usize = 100;
const WORKERS: usize = 8;

fn cycles() -> usize {
    if std::env::var_os("RATCHET_SOAK").is_some() { 200 } else { 3 }
}

/// Runs `verb` for every pod of the cycle from `WORKERS` threads at once.
fn all_at_once(node: &Node, pods: &[Pod], cycle: usize, verb: &str) {
    let next = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| {
                while let Some(pod) = pods.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let id = format!("c-{}-{cycle}", pod.netns);
                    let reply = node.call(verb, &id, &pod.netns_path(), (&pod.namespace, &pod.name), &node.config());
                    assert!(reply.success, "cycle {cycle}: {verb} {}: {}", pod.name, reply.stdout);
                }
            });
        }
    });
}

/// The largest RSS any finished child of this process had, in KiB.
fn children_peak_rss_kib() -> i64 {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage").max_rss()
}

#[test]
fn a_hundred_pods_churned_leave_nothing_and_the_agent_stays_flat() {
    let node = Node::new();
    let pods: Vec<Pod> = (0..PODS).map(|i| Pod::new("churn", &format!("p{i}"))).collect();
    let links: Vec<String> = (0..PODS / 2).map(|_| unique("ch")).collect();
    let topology: Vec<_> = links
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (a, b) = (&pods[2 * i], &pods[2 * i + 1]);
            json!({"name": name, "a": end(a, "in1", &[&format!("10.94.{i}.1/24")]), "b": end(b, "in1", &[&format!("10.94.{i}.2/24")])})
        })
        .collect();
    node.apply(&json!({ "links": topology }));
    // One ADD and DEL first, so the programs are loaded before the agent
    // starts and its first sample is of a settled process.
    all_at_once(&node, &pods[..2], 0, "ADD");
    all_at_once(&node, &pods[..2], 0, "DEL");
    let agent = Agent::start(&node);
    thread::sleep(std::time::Duration::from_millis(500));
    let (rss_before, fds_before) = (agent.status_kib("VmRSS"), agent.fds());

    let started = Instant::now();
    for cycle in 1..=cycles() {
        all_at_once(&node, &pods, cycle, "ADD");
        assert!(pods[0].ping("10.94.0.2"), "cycle {cycle}: a link carries traffic");
        all_at_once(&node, &pods, cycle, "DEL");
    }
    let took = started.elapsed();
    thread::sleep(std::time::Duration::from_millis(500));
    let (rss_after, fds_after, agent_peak) = (agent.status_kib("VmRSS"), agent.fds(), agent.status_kib("VmHWM"));
    println!(
        "churn: {PODS} pods x {} cycles in {:.1} s; plugin peak RSS {} KiB; agent RSS {rss_before} -> {rss_after} KiB \
         (peak {agent_peak}), fds {fds_before} -> {fds_after}",
        cycles(),
        took.as_secs_f64(),
        children_peak_rss_kib()
    );

    let left: Vec<String> = links
        .iter()
        .flat_map(|link| [host_ifname(link, Side::A), host_ifname(link, Side::B)])
        .filter(|veth| !host_link_gone(veth))
        .collect();
    assert!(left.is_empty(), "veths left: {left:?}");
    assert!(pods.iter().all(|pod| pod.link_gone("in1")), "a pod end was left");
    let maps = ["peers", "stats", "lost"];
    assert!(maps.iter().all(|map| node.map_keys(map).is_empty()), "map entries left");
    for prefix in ["/ratchet/ends/", "/ratchet/containers/", "/ratchet/sandboxes/"] {
        assert!(node.store_keys(prefix).is_empty(), "records left under {prefix}: {:?}", node.store_keys(prefix));
    }
    let pins: Vec<String> = std::fs::read_dir(&node.pin_root)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!pins.iter().any(|pin| pin == "links"), "no tcx link pins in clsact mode: {pins:?}");
    let markers = pins.iter().filter(|pin| pin.starts_with("layout-") || pin.starts_with("build-")).count();
    assert_eq!((pins.len(), markers), (9, 2), "the two programs, five maps and two markers, nothing else: {pins:?}");
    // A round in flight holds a netlink socket or a netns for a moment:
    // flat means back to where it was once the agent is idle.
    let settled = fds_after == fds_before || ratchet_tests::eventually(|| agent.fds() == fds_before);
    assert!(settled, "the agent's fds stayed flat: {fds_before} -> {fds_after}, now {}", agent.fds());
    assert!(rss_after <= rss_before + 4096, "the agent's RSS stayed flat: {rss_before} -> {rss_after} KiB");
}
