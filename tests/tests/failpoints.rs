//! Failure injected at each step of ADD, DEL and the agent's round (the
//! `failpoints` build, `FAILPOINTS=<step>=return`): the verb fails cleanly,
//! leaves nothing behind, and the next try succeeds.

use std::time::Duration;

use ratchet_plugin::{naming::host_ifname, topology::Side};
use ratchet_tests::{
    Agent, Node, Pod, Reply, call_binary, container_of, end, eventually, host_link_gone, kubelet_env, ratchet_bin,
    unique,
};
use serde_json::json;

/// Every step of ADD that makes something, in order.
const ADD_STEPS: [&str; 8] = [
    "add::veth-made",
    "add::host-end-up",
    "add::attached",
    "add::tracked",
    "add::addressed",
    "add::pod-end-up",
    "add::wired",
    "add::before-commit",
];
const DEL_STEPS: [&str; 2] = ["del::released", "del::committed"];

/// A verb for `pod` with a failpoint switched on.
fn call_failing(node: &Node, command: &str, pod: &Pod, failpoints: &str) -> Reply {
    let mut env = kubelet_env(command, pod);
    env.push(("FAILPOINTS", failpoints.to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    call_binary(&ratchet_bin(), &env, node.config().to_string().as_bytes())
}

fn assert_fired(reply: &Reply, step: &str) {
    assert!(
        !reply.success && reply.error_text().contains(&format!("failpoint {step} fired")),
        "{step} did not fail the verb (is {} built with --features failpoints? `cargo xtask test` builds it so): {}",
        ratchet_bin().display(),
        reply.stdout
    );
}

/// beta attached and waiting; alpha is the pod the failures hit.
fn pair(node: &Node) -> (Pod, Pod, String) {
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = unique("fp");
    node.apply(&json!({"links": [{"name": link,
        "a": end(&alpha, "in1", &["10.95.0.1/24"]), "b": end(&beta, "in1", &["10.95.0.2/24"])}]}));
    node.add(&beta);
    (alpha, beta, link)
}

/// Nothing of alpha's end: no veth, no pod end, no map entry, no record.
fn assert_alpha_absent(node: &Node, alpha: &Pod, link: &str, step: &str) {
    assert!(host_link_gone(&host_ifname(link, Side::A)), "{step}: alpha's host veth is gone");
    assert!(alpha.link_gone("in1"), "{step}: alpha's pod end is gone");
    assert!(node.peers().is_empty(), "{step}: no forwarding entry (beta waits)");
    assert_eq!(node.map_keys("stats").len(), 1, "{step}: only beta is counted");
    let record = format!("/ratchet/containers/{}", container_of(alpha));
    assert!(!node.store_keys("/ratchet/containers/").contains(&record), "{step}: no container record");
    assert_eq!(node.link_state(link), "waiting", "{step}: beta waits");
}

#[test]
fn an_add_failing_at_any_step_leaves_nothing_and_the_next_add_works() {
    let node = Node::new();
    let (alpha, _beta, link) = pair(&node);
    for step in ADD_STEPS {
        assert_fired(&call_failing(&node, "ADD", &alpha, &format!("{step}=return")), step);
        assert_alpha_absent(&node, &alpha, &link, step);
        node.add(&alpha);
        assert!(alpha.ping("10.95.0.2"), "{step}: the next ADD brings the link up");
        node.del(&alpha);
    }
}

#[test]
fn a_del_failing_at_any_step_is_finished_by_the_next_del() {
    let node = Node::new();
    let (alpha, _beta, link) = pair(&node);
    for step in DEL_STEPS {
        node.add(&alpha);
        assert_fired(&call_failing(&node, "DEL", &alpha, &format!("{step}=return")), step);
        node.del(&alpha);
        assert_alpha_absent(&node, &alpha, &link, step);
    }
}

/// The agent's rounds fail at each step for a while; it keeps going, and
/// once they pass it restores entries removed behind its back.
#[test]
fn the_agent_recovers_from_rounds_failing_at_any_step() {
    let node = Node::new();
    let (alpha, _beta, _link) = pair(&node);
    node.add(&alpha);
    let failpoints = "agent::entries-removed=20*return;agent::before-commit=20*return";
    let agent = Agent::start_with_env(&node, &[("FAILPOINTS", failpoints)]);
    std::thread::sleep(Duration::from_millis(100));
    let pin = node.pin_root.join("peers");
    for key in node.map_keys("peers") {
        let bytes = u32::try_from(key).unwrap().to_le_bytes().map(|b| b.to_string());
        let mut args = vec!["map", "delete", "pinned", pin.to_str().unwrap(), "key"];
        args.extend(bytes.iter().map(String::as_str));
        ratchet_tests::run("bpftool", &args);
    }
    assert!(eventually(|| node.peers().len() == 2), "the agent put both entries back once its rounds passed");
    assert!(alpha.ping("10.95.0.2"), "and the link carries traffic");
    let log = agent.log();
    for step in ["agent::entries-removed", "agent::before-commit"] {
        assert!(log.contains(&format!("failpoint {step} fired")), "rounds failed at {step} first: {log}");
    }
    assert!(agent.readiness_becomes(200, Duration::from_secs(5)), "ready once a round succeeds");
    let scrape = agent.scrape();
    let (errors, rounds) =
        (scrape.value("ratchet_agent_reconcile_errors_total", &[]), scrape.value("ratchet_agent_rounds_total", &[]));
    assert!(errors >= 40.0 && rounds > errors, "40 failed rounds counted, then good ones: {errors} of {rounds}");
}

/// A store another process keeps locked (a stuck writer: the embedded
/// store's file is busy) makes ADD wait a bounded time, then fail with 11
/// (try again later) before anything is made; once it is free, ADD works.
#[test]
fn an_add_while_the_store_is_held_elsewhere_fails_with_11_and_leaves_nothing() {
    let node = Node::new();
    let (alpha, _beta, link) = pair(&node);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut store = runtime.block_on(ratchet_plugin::store::open(&node.settings())).unwrap();
    let held = runtime.block_on(ratchet_plugin::store::Store::begin(&mut store)).unwrap();
    let started = std::time::Instant::now();
    let reply = node.call_pod("ADD", &alpha, &node.config());
    let took = started.elapsed();
    drop(held);
    assert_eq!(reply.code(), Some(11), "a busy store is 'try again later': {}", reply.stdout);
    assert!(reply.error_text().contains("store.sqlite"), "the error names the store: {}", reply.stdout);
    assert!(took < Duration::from_secs(30), "the wait is bounded: {took:?}");
    assert_alpha_absent(&node, &alpha, &link, "store held");
    node.add(&alpha);
    assert!(alpha.ping("10.95.0.2"), "once the store is free the ADD works");
}

/// The first ADD on a node loads the programs under a node-local lock; one
/// held by a stuck process makes ADD fail with 11 in bounded time (it
/// waited forever before), and once it is free, ADD works.
#[test]
fn an_add_while_the_load_lock_is_held_elsewhere_fails_with_11() {
    use std::io::BufRead;
    let node = Node::new();
    let (alpha, _beta, link) = pair(&node);
    node.cli(&["unload", "--force"]);
    let lock = node.state_dir.path().join("dataplane.lock");
    // --no-fork: the lock dies with the process killed below.
    let mut holder = std::process::Command::new("flock")
        .arg("--no-fork")
        .arg(&lock)
        .args(["sh", "-c", "echo held; exec sleep 60"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "held");
    let started = std::time::Instant::now();
    let reply = node.call_pod("ADD", &alpha, &node.config());
    let _ = holder.kill();
    holder.wait().unwrap();
    reply.assert_error(11, &["dataplane.lock", "another process"]);
    assert!(started.elapsed() < Duration::from_secs(15), "bounded: {:?}", started.elapsed());
    assert!(host_link_gone(&host_ifname(&link, Side::A)), "nothing was made");
    node.add(&alpha);
}
