//! DEL removes everything ADD made, and is safe to repeat. The tests named
//! in `on_each_store!` run once per store backend.

use ratchet_tests::{Node, Pod, container_of, end, host_ifnames, host_link_gone, on_each_store, unique};
use serde_json::json;

on_each_store!(
    del_leaves_nothing_and_the_peer_waits,
    del_twice_is_fine,
    del_with_an_empty_netns_cleans_up,
    del_after_the_netns_is_gone,
    del_of_a_container_never_added,
    a_new_sandbox_replaces_a_stale_one,
    add_right_after_del_in_the_same_netns,
);

/// Two pods joined by one link, both added; returns them and the link's name.
fn linked_pair(node: &Node) -> (Pod, Pod, String) {
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let l1 = unique("lk");
    node.apply(&json!({"links": [{"name": l1,
        "a": end(&alpha, "in1", &["10.79.0.1/24"]), "b": end(&beta, "in2", &["10.79.0.2/24"])}]}));
    node.add(&alpha);
    node.add(&beta);
    (alpha, beta, l1)
}

fn del_leaves_nothing_and_the_peer_waits(node: &Node) {
    let (alpha, beta, l1) = linked_pair(node);
    let hosts = host_ifnames(node, &l1);
    node.del(&alpha);

    assert!(host_link_gone(&hosts[0]), "the host veth is gone");
    assert!(alpha.link_gone("in1"), "the pod end is gone");
    assert!(node.peers().is_empty(), "no map entry in either direction");
    let alpha_record = format!("/ratchet/containers/{}", container_of(&alpha));
    assert!(!node.store_keys("/ratchet/containers/").contains(&alpha_record), "alpha's container record is gone");
    assert_eq!(node.link_state(&l1), "waiting", "the peer waits again");
    let ends = &node.links()[0]["ends"];
    assert_eq!(ends.as_array().unwrap().len(), 1, "only the peer's record is left: {ends}");
    assert!(beta.link("in2").is_some(), "the peer keeps its end");
    let drops = |node: &Node| node.links()[0]["ends"][0]["drops"].as_u64().unwrap();
    let before = drops(node);
    assert!(!beta.ping("10.79.0.1"), "a waiting end reaches nobody");
    assert!(drops(node) > before, "and counts what it drops");

    node.del(&beta);
    assert!(host_link_gone(&hosts[1]));
    assert_eq!(node.link_state(&l1), "down");
    let left = [node.store_keys("/ratchet/ends/"), node.store_keys("/ratchet/containers/")].concat();
    assert!(left.is_empty(), "no end or container record is left: {left:?}");
}

/// DEL leaves deleting the veth to a detached child; an ADD that comes
/// before it is done finds the released veth (and its pod end, under the
/// name it wants) and takes its place. Repeated to meet the child mid-way.
fn add_right_after_del_in_the_same_netns(node: &Node) {
    let (alpha, beta, l1) = linked_pair(node);
    for round in 0..5 {
        node.del(&alpha);
        node.add(&alpha);
        assert!(alpha.ping("10.79.0.2"), "round {round}: the link carries traffic again");
    }
    // Long enough for any reaper still running to have finished.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let hosts = host_ifnames(node, &l1);
    assert_eq!(hosts.len(), 2, "one host veth per end");
    assert!(hosts.iter().all(|host| ratchet_tests::host_has_link(host)), "neither was reaped late: {hosts:?}");
    node.del(&alpha);
    node.del(&beta);
}

fn del_twice_is_fine(node: &Node) {
    let (alpha, _beta, _) = linked_pair(node);
    node.del(&alpha);
    node.del(&alpha);
}

fn del_with_an_empty_netns_cleans_up(node: &Node) {
    let (alpha, _beta, l1) = linked_pair(node);
    let host = host_ifnames(node, &l1)[0].clone();
    let reply = node.call("DEL", &container_of(&alpha), "", ("default", "alpha"), &node.config());
    assert!(reply.success, "{}", reply.stdout);
    assert!(host_link_gone(&host));
    assert!(node.peers().is_empty());
}

fn del_after_the_netns_is_gone(node: &Node) {
    let (alpha, _beta, l1) = linked_pair(node);
    let (path, id) = (alpha.netns_path(), container_of(&alpha));
    drop(alpha);
    let reply = node.call("DEL", &id, &path, ("default", "alpha"), &node.config());
    assert!(reply.success, "{}", reply.stdout);
    assert!(node.peers().is_empty(), "the peer no longer points at the dead end");
    assert_eq!(node.link_state(&l1), "waiting");
}

fn del_of_a_container_never_added(node: &Node) {
    let reply = node.call("DEL", "never-added", "", ("default", "ghost"), &node.config());
    assert!(reply.success, "{}", reply.stdout);
    assert!(reply.stdout.is_empty());
    assert_eq!(node.store_keys("/ratchet/"), Vec::<String>::new(), "a DEL of nothing writes nothing");
}

fn a_new_sandbox_replaces_a_stale_one(node: &Node) {
    let (alpha, beta, _) = linked_pair(node);
    // The runtime lost alpha's DEL; the pod comes back in a new sandbox.
    let (old_netns, old_id) = (alpha.netns_path(), container_of(&alpha));
    drop(alpha);
    let fresh = Pod::new("default", "alpha");
    node.add(&fresh);
    assert!(fresh.ping("10.79.0.2"), "the new sandbox is wired to the peer");
    assert_eq!(node.peers().len(), 2);

    let late = node.call("DEL", &old_id, &old_netns, ("default", "alpha"), &node.config());
    assert!(late.success, "{}", late.stdout);
    assert!(fresh.ping("10.79.0.2"), "the old sandbox's late DEL leaves the new one alone");
    node.del(&fresh);
    node.del(&beta);
}

/// A reboot as the plugin sees it: every pod's netns (and so every veth)
/// and every pin gone, the store's records still there.
fn reboot(node: &Node, pods: Vec<Pod>) {
    drop(pods);
    std::fs::remove_dir_all(&node.pin_root).unwrap();
}

#[test]
fn after_a_reboot_stale_records_are_forgotten_not_wired() {
    let node = Node::new();
    let (alpha, beta, l1) = linked_pair(&node);
    let old_beta = (container_of(&beta), beta.netns_path());
    reboot(&node, vec![alpha, beta]);

    let alpha = Pod::new("default", "alpha");
    node.add(&alpha);
    assert!(node.peers().is_empty(), "beta's end is stale: alpha must wait, not be wired to a dead ifindex");
    assert_eq!(node.link_state(&l1), "waiting");

    let beta = Pod::new("default", "beta");
    node.add(&beta);
    assert_eq!(node.peers().len(), 2);
    assert!(alpha.ping("10.79.0.2"), "both back: the link works");

    let late = node.call("DEL", &old_beta.0, &old_beta.1, ("default", "beta"), &node.config());
    assert!(late.success, "{}", late.stdout);
    assert!(alpha.ping("10.79.0.2"), "the pre-reboot sandbox's DEL leaves the new one alone");
    node.del(&alpha);
    node.del(&beta);
}

/// tcx mode: the netns (and with it both veth ends) goes before DEL. The
/// end's tcx link pin must go with DEL all the same, or the next ADD of the
/// pod cannot pin its own (it failed with 103 before).
#[test]
fn tcx_del_after_the_netns_is_gone_leaves_no_link_pin() {
    let node = Node::with_attach("tcx");
    for round in 0..3 {
        let (alpha, beta, l1) = linked_pair(&node);
        let (path, id) = (alpha.netns_path(), container_of(&alpha));
        drop(alpha);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let reply = node.call("DEL", &id, &path, ("default", "alpha"), &node.config());
        assert!(reply.success, "round {round}: {}", reply.stdout);
        let pins: Vec<_> =
            std::fs::read_dir(node.pin_root.join("links")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(pins.len(), 1, "round {round}: only beta's link pin is left: {pins:?}");
        let again = Pod::new("default", "alpha");
        node.add(&again);
        assert!(again.ping("10.79.0.2"), "round {round}: the next ADD of the pod works at once");
        node.del(&again);
        node.del(&beta);
        assert_eq!(node.link_state(&l1), "down");
    }
}
