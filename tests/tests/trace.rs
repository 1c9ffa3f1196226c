//! `ratchet trace` turns per-frame logging on for the whole node while it
//! runs and names each frame by link, side, pods and L3 header. Ended as a
//! supervisor, `timeout` or a closed terminal ends it (SIGTERM, SIGHUP) as
//! well as by Ctrl-C (SIGINT), it turns logging off again; killed outright,
//! it leaves logging on, which `ratchet links` reports and the agent or the
//! next trace undoes.

use std::{
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use ratchet_tests::{Agent, Node, Pod, Rig, end, eventually, ratchet_bin, run, unique};
use serde_json::{Value, json};

/// The `trace` switch as bpftool (an independent witness) reads it from the pinned `.bss`.
fn tracing_on(node: &Node) -> bool {
    let dump = run("bpftool", &["-j", "map", "dump", "pinned", node.pin_root.join("switches").to_str().unwrap()]);
    let entries: Value = serde_json::from_str(&dump).unwrap();
    let bytes = &entries[0]["value"];
    // The raw value is the struct's bytes; `trace` is the first u32.
    let first = bytes.as_array().map(|b| b.iter().take(4).map(|x| x.as_str().unwrap_or("0x00").to_owned()));
    first.is_some_and(|mut b| b.any(|byte| byte != "0x00"))
        || entries[0]["formatted"]["value"]["trace"].as_u64().is_some_and(|t| t != 0)
}

/// The CLI on the node's store and pins, with `args`.
fn ratchet(node: &Node, args: &[&str]) -> Command {
    let mut command = Command::new(ratchet_bin());
    command.args([
        "--state-dir",
        node.state_dir.path().to_str().unwrap(),
        "--pin-root",
        node.pin_root.to_str().unwrap(),
    ]);
    command.args(args);
    command
}

/// `ratchet trace` on the node's store and pins, with `args`, its output
/// piped; running once the switch is on.
fn start_trace(node: &Node, args: &[&str]) -> Child {
    let trace = ratchet(node, &["trace"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ratchet trace");
    assert!(eventually(|| tracing_on(node)), "trace turns tracing on");
    trace
}

/// Sends `signal` and waits (five seconds at most) for the trace to end.
fn stop_trace(trace: Child, signal: Signal) -> Output {
    kill(Pid::from_raw(trace.id() as i32), signal).unwrap();
    let (send, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || send.send(trace.wait_with_output().unwrap()));
    ended.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| panic!("trace ends on {signal}"))
}

/// Two pods and one link between them, both added: (alpha, beta, link).
fn linked_pair(node: &Node, subnet: u8) -> (Pod, Pod, String) {
    let [alpha, beta] = ["alpha", "beta"].map(|name| Pod::new("default", name));
    let link = unique("tr");
    node.apply(&json!({"links": [{"name": link,
        "a": end(&alpha, "in1", &[&format!("10.{subnet}.0.1/24")]),
        "b": end(&beta, "in1", &[&format!("10.{subnet}.0.2/24")])}]}));
    node.add(&alpha);
    node.add(&beta);
    (alpha, beta, link)
}

#[test]
fn a_trace_ended_by_sigterm_or_sighup_turns_tracing_off() {
    let node = Node::new();
    let [alpha, beta] = ["alpha", "beta"].map(|name| Pod::new("default", name));
    node.apply(&json!({"links": [
        {"name": unique("tr"), "a": end(&alpha, "in1", &["10.96.0.1/24"]), "b": end(&beta, "in1", &["10.96.0.2/24"])},
    ]}));
    node.add(&alpha);
    assert!(!tracing_on(&node));
    for signal in [Signal::SIGTERM, Signal::SIGHUP] {
        let trace = start_trace(&node, &[]);
        stop_trace(trace, signal);
        assert!(!tracing_on(&node), "tracing is off again after {signal}");
    }
    node.del(&alpha);
}

#[test]
fn frames_are_named_by_link_side_and_pods_and_filtered_by_link() {
    let node = Node::new();
    let (alpha, beta, link) = linked_pair(&node, 86);
    // A second link on the node, whose frames the filter leaves out.
    let [gamma, delta] = ["gamma", "delta"].map(|name| Pod::new("default", name));
    let other = unique("tr");
    let mut topology: Value = serde_json::from_str(&node.cli(&["topology", "show"])).unwrap();
    topology["links"].as_array_mut().unwrap().push(json!({"name": other,
        "a": end(&gamma, "in1", &["10.87.0.1/24"]), "b": end(&delta, "in1", &["10.87.0.2/24"])}));
    node.apply(&topology);
    node.add(&gamma);
    node.add(&delta);

    let trace = start_trace(&node, &["--link", &link]);
    assert!(alpha.ping("10.86.0.2"));
    assert!(gamma.ping("10.87.0.2"));
    node.cli(&["link", "set", &link, "--side", "b", "--loss", "100%"]);
    assert!(!alpha.ping("10.86.0.2"), "beta's replies are lost");
    std::thread::sleep(Duration::from_millis(300));
    let out = stop_trace(trace, Signal::SIGINT);
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    let request = format!("{link} a->b default/alpha in1 > default/beta in1: ipv4 10.86.0.1 > 10.86.0.2 icmp len 98");
    assert!(lines.lines().any(|line| line == request), "an echo request, named: {lines}");
    let lost = format!(
        "{link} b->a default/beta in1 > default/alpha in1: ipv4 10.86.0.2 > 10.86.0.1 icmp len 98: dropped by the link's loss"
    );
    assert!(lines.lines().any(|line| line == lost), "a reply the loss took: {lines}");
    assert!(lines.lines().any(|line| line.contains(": arp len")), "ARP is named too: {lines}");
    assert!(!lines.contains(&other) && !lines.contains("10.87."), "the filter leaves the other link out: {lines}");
    assert!(!tracing_on(&node));

    let unknown = ratchet(&node, &["trace", "--link", "no-such-link"]).output().unwrap();
    assert!(!unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("no link no-such-link"));
    assert!(!tracing_on(&node), "a refused trace leaves the switch alone");
    for pod in [&alpha, &beta, &gamma, &delta] {
        node.del(pod);
    }
}

#[test]
fn a_killed_trace_is_reported_and_undone_by_the_next_trace_or_the_agent() {
    let node = Node::new();
    let (alpha, beta, _link) = linked_pair(&node, 88);
    let warned = |node: &Node| {
        let out = ratchet(node, &["links"]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).contains("per-frame tracing is on and no `ratchet trace` runs")
    };

    let running = start_trace(&node, &[]);
    assert!(!warned(&node), "a running trace is no reason to warn");
    let second = ratchet(&node, &["trace"]).output().unwrap();
    assert!(!second.status.success(), "one trace at a time");
    assert!(String::from_utf8_lossy(&second.stderr).contains("another `ratchet trace` runs"));
    stop_trace(running, Signal::SIGKILL);
    assert!(tracing_on(&node), "SIGKILL leaves the switch on");
    assert!(warned(&node), "links says so");

    // The next trace turns it off when it ends (the switch is on already:
    // it runs once it holds the lock, which ends the warning).
    let next = start_trace(&node, &[]);
    assert!(eventually(|| !warned(&node)), "the next trace holds the lock");
    let out = stop_trace(next, Signal::SIGTERM);
    assert!(String::from_utf8_lossy(&out.stderr).contains("a trace that was killed had left tracing on"));
    assert!(!tracing_on(&node) && !warned(&node));

    // Killed again: the agent turns it off within its check period.
    stop_trace(start_trace(&node, &[]), Signal::SIGKILL);
    assert!(tracing_on(&node));
    let agent = Agent::start(&node);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tracing_on(&node) {
        assert!(std::time::Instant::now() < deadline, "the agent turns tracing off: {}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.log().contains("a killed `ratchet trace` had left per-frame tracing on"), "{}", agent.log());
    drop(agent);
    node.del(&alpha);
    node.del(&beta);
}

/// Across nodes, a trace on the receiving node names a frame from the
/// tunnel by the node it came from, its VNI and the end it goes to; the
/// sending node's trace shows it going into the tunnel.
#[test]
fn frames_from_the_tunnel_are_named_by_node_vni_and_end() {
    let mut rig = Rig::new();
    let (alpha, beta, link) = rig.linked_across("trx", 85);
    let traces: Vec<Child> = (0..2)
        .map(|index| rig.cli(index, &["trace"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(alpha.ping("10.85.0.2"));
    std::thread::sleep(Duration::from_millis(300));
    let [sent, received]: [String; 2] = traces
        .into_iter()
        .map(|trace| String::from_utf8_lossy(&stop_trace(trace, Signal::SIGINT).stdout).into_owned())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let request = format!(
        "{link} a->b default/alpha in1 > default/beta in1: ipv4 10.85.0.1 > 10.85.0.2 icmp len 98: into the tunnel, vni "
    );
    assert!(sent.lines().any(|line| line.starts_with(&request)), "node 0 sends it into the tunnel: {sent}");
    let arrival = format!("{link} b <- tunnel from node 10.203.0.1 vni ");
    let delivered =
        received.lines().find(|line| line.starts_with(&arrival) && line.contains("10.85.0.1 > 10.85.0.2 icmp"));
    assert!(
        delivered.is_some_and(|line| line.ends_with("len 98 -> default/beta in1")),
        "node 1 names the arrival: {received}"
    );
    assert!(rig.cni(0, "DEL", &alpha).success);
    assert!(rig.cni(1, "DEL", &beta).success);
}
