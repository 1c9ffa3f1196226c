//! CHECK catches tampering: each kind of drift is a code-105 error that
//! names what drifted; an untouched link, or one waiting for its peer, passes
//! (with either store backend: `on_each_store!`).

use ratchet_tests::{Node, Pod, end, host_ifindex, host_ifnames, on_each_store, run, unique};
use serde_json::{Value, json};

/// Two pods joined by one link, both added, with the ADD results the
/// runtime cached (and sends back as prevResult on CHECK).
struct Pair {
    alpha: Pod,
    beta: Pod,
    link: String,
    alpha_cached: Value,
    beta_cached: Value,
}

/// Alpha's end has an IPv4 and an IPv6 address, beta's one IPv4 address;
/// `subnet` keeps each test's addresses apart.
fn linked_pair(node: &Node, subnet: u8) -> Pair {
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = unique("lk");
    let (a, b) = (format!("10.83.{subnet}.1/24"), format!("10.83.{subnet}.2/24"));
    node.apply(&json!({"links": [{"name": link, "a": end(&alpha, "in1", &[&a, &format!("fd83:{subnet}::1/64")]), "b": end(&beta, "in2", &[&b])}]}));
    let alpha_cached = node.add(&alpha);
    let beta_cached = node.add(&beta);
    assert!(alpha.ping(&format!("10.83.{subnet}.2")));
    Pair { alpha, beta, link, alpha_cached, beta_cached }
}

/// CHECK with a cached result.
fn check(node: &Node, pod: &Pod, cached: &Value) -> ratchet_tests::Reply {
    node.check(pod, &node.config(), cached)
}

on_each_store!(an_untouched_link_passes);

fn an_untouched_link_passes(node: &Node) {
    let pair = linked_pair(node, 1);
    check(node, &pair.alpha, &pair.alpha_cached).assert_silent_success("CHECK");
    check(node, &pair.beta, &pair.beta_cached).assert_silent_success("CHECK of the peer");
}

#[test]
fn a_link_waiting_for_its_peer_passes() {
    let node = Node::new();
    let pair = linked_pair(&node, 2);
    node.del(&pair.beta);
    assert_eq!(node.link_state(&pair.link), "waiting");
    check(&node, &pair.alpha, &pair.alpha_cached).assert_silent_success("CHECK of a waiting end");
}

#[test]
fn the_pod_end_deleted() {
    let node = Node::new();
    let pair = linked_pair(&node, 3);
    assert!(pair.alpha.exec(&["ip", "link", "del", "in1"]).status.success());
    check(&node, &pair.alpha, &pair.alpha_cached).assert_error(105, &["pod end in1", &pair.alpha.netns_path(), "gone"]);
}

#[test]
fn the_pod_end_set_down() {
    let node = Node::new();
    let pair = linked_pair(&node, 4);
    assert!(pair.alpha.exec(&["ip", "link", "set", "in1", "down"]).status.success());
    check(&node, &pair.alpha, &pair.alpha_cached).assert_error(105, &["pod end in1", "down"]);
}

#[test]
fn the_program_detached_from_the_host_end() {
    let node = Node::new();
    let pair = linked_pair(&node, 5);
    let host = &host_ifnames(&node, &pair.link)[0];
    run("tc", &["filter", "del", "dev", host, "ingress"]);
    check(&node, &pair.alpha, &pair.alpha_cached)
        .assert_error(105, &[&format!("host end {host}"), "ratchet_to_peer", "not attached"]);
    check(&node, &pair.beta, &pair.beta_cached).assert_silent_success("CHECK of the untouched peer");
}

#[test]
fn the_tcx_link_unpinned() {
    let node = Node::with_attach("tcx");
    let pair = linked_pair(&node, 6);
    let host = &host_ifnames(&node, &pair.link)[0];
    std::fs::remove_file(node.pin_root.join("links").join(host)).unwrap();
    assert!(!pair.alpha.ping("10.83.6.2"), "with its last reference gone the tcx link detaches");
    check(&node, &pair.alpha, &pair.alpha_cached).assert_error(105, &[&format!("host end {host}"), "not attached"]);
}

#[test]
fn a_map_entry_removed() {
    let node = Node::new();
    let pair = linked_pair(&node, 7);
    let ifindex = host_ifindex(&host_ifnames(&node, &pair.link)[0]);
    let key: Vec<String> = ifindex.to_le_bytes().iter().map(|b| format!("0x{b:02x}")).collect();
    let peers = node.pin_root.join("peers");
    let mut args = vec!["map", "delete", "pinned", peers.to_str().unwrap(), "key"];
    args.extend(key.iter().map(String::as_str));
    run("bpftool", &args);
    assert_eq!(node.peers().len(), 1, "one direction is gone");
    check(&node, &pair.alpha, &pair.alpha_cached).assert_error(105, &["RATCHET_PEERS", &format!("entry {ifindex}")]);
}

#[test]
fn the_mtu_changed() {
    let node = Node::new();
    let pair = linked_pair(&node, 8);
    assert!(pair.alpha.exec(&["ip", "link", "set", "in1", "mtu", "1400"]).status.success());
    check(&node, &pair.alpha, &pair.alpha_cached).assert_error(105, &["pod end in1", "MTU is 1400", "1500"]);
}

#[test]
fn an_address_removed() {
    let node = Node::new();
    let pair = linked_pair(&node, 9);
    assert!(pair.alpha.exec(&["ip", "address", "del", "fd83:9::1/64", "dev", "in1"]).status.success());
    check(&node, &pair.alpha, &pair.alpha_cached).assert_error(105, &["pod end in1", "fd83:9::1/64", "missing"]);
}

#[test]
fn a_prev_result_without_the_interface() {
    let node = Node::new();
    let pair = linked_pair(&node, 10);
    let mut lacking = pair.alpha_cached.clone();
    lacking["interfaces"].as_array_mut().unwrap().retain(|i| i["name"] != "in1");
    lacking["ips"] = json!([]);
    check(&node, &pair.alpha, &lacking).assert_error(105, &["prevResult", "in1"]);
}

#[test]
fn a_prev_result_without_an_address() {
    let node = Node::new();
    let pair = linked_pair(&node, 11);
    let mut lacking = pair.alpha_cached.clone();
    lacking["ips"].as_array_mut().unwrap().retain(|ip| ip["address"] != "10.83.11.1/24");
    assert_eq!(lacking["ips"].as_array().unwrap().len(), 1);
    check(&node, &pair.alpha, &lacking).assert_error(105, &["prevResult", "10.83.11.1/24"]);
}

#[test]
fn a_prev_result_with_the_address_on_another_interface() {
    let node = Node::new();
    let pair = linked_pair(&node, 12);
    let mut moved = pair.alpha_cached.clone();
    for ip in moved["ips"].as_array_mut().unwrap() {
        ip["interface"] = json!(0);
    }
    check(&node, &pair.alpha, &moved).assert_error(105, &["prevResult", "in1"]);
}

/// A second ADD of the same pod as a new container (a new sandbox) takes
/// the pod's link ends over: the first container then holds nothing, so its
/// CHECK fails saying who holds them, and its late DEL leaves them alone.
#[test]
fn a_container_whose_ends_a_later_sandbox_took_over_fails_check() {
    let node = Node::new();
    let pair = linked_pair(&node, 12);
    let old = (pair.alpha.netns_path(), ratchet_tests::container_of(&pair.alpha));
    let fresh = Pod::new("default", "alpha");
    let fresh_cached = node.add(&fresh);
    assert!(pair.alpha.link("in1").is_none(), "the interface moved to the new sandbox");

    let config = ratchet_tests::with_prev_result(&node.config(), &pair.alpha_cached);
    let reply = node.call("CHECK", &old.1, &old.0, ("default", "alpha"), &config);
    reply.assert_error(105, &["holds no link end", &ratchet_tests::container_of(&fresh), "took them over"]);
    check(&node, &fresh, &fresh_cached).assert_silent_success("CHECK of the new sandbox");

    let late = node.call("DEL", &old.1, &old.0, ("default", "alpha"), &node.config());
    assert!(late.success, "{}", late.stdout);
    assert!(fresh.ping("10.83.12.2"), "the old container's DEL leaves the new one's link alone");
    check(&node, &fresh, &fresh_cached).assert_silent_success("CHECK of the new sandbox after the old DEL");
}

/// CHECK of a container that was never added, or whose CNI_NETNS is not a
/// network namespace, fails.
#[test]
fn a_container_never_added_or_a_bad_netns_fails_check() {
    let node = Node::new();
    let pair = linked_pair(&node, 13);
    let config = ratchet_tests::with_prev_result(&node.config(), &pair.alpha_cached);
    let never = node.call("CHECK", "never-added", &pair.alpha.netns_path(), ("default", "alpha"), &config);
    never.assert_error(105, &["never-added holds no link end", "container"]);

    let id = ratchet_tests::container_of(&pair.alpha);
    let bad = node.call("CHECK", &id, "/proc/self/ns/mnt", ("default", "alpha"), &config);
    bad.assert_error(4, &["CNI_NETNS", "not a network namespace"]);
    let other = node.call("CHECK", &id, &pair.beta.netns_path(), ("default", "alpha"), &config);
    other.assert_error(105, &["not the netns ADD attached"]);

    // A pod the topology gives no link holds nothing, and that is right.
    let plain = Pod::new("default", "plain");
    let reply = node.call_pod(
        "CHECK",
        &plain,
        &ratchet_tests::with_prev_result(&node.config(), &json!({"cniVersion": "1.0.0"})),
    );
    reply.assert_silent_success("CHECK of a pod without links");
}
