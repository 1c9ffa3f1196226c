//! STATUS and GC (spec 1.1), called as a runtime calls them: a 1.1.0 config
//! and only `CNI_COMMAND` and `CNI_PATH` in the environment. The tests named
//! in `on_each_store!` run once per store backend.

use ratchet_tests::{
    Node, Pod, container_of, end, host_has_link, host_ifindex, host_ifnames, on_each_store, run, unique,
    with_prev_result,
};
use serde_json::{Value, json};

/// A 1.1.0 config for `node`.
fn config(node: &Node) -> Value {
    node.config_for("1.1.0")
}

/// Two links, alpha-beta and gamma-delta, all four ends added; `subnet`
/// keeps each test's addresses apart.
struct TwoLinks {
    alpha: Pod,
    beta: Pod,
    gamma: Pod,
    delta: Pod,
    l1: String,
    l2: String,
    /// Alpha's ADD result, as the runtime caches it.
    alpha_cached: Value,
}

fn two_links(node: &Node, subnet: u8) -> TwoLinks {
    let pods: Vec<Pod> = ["alpha", "beta", "gamma", "delta"].iter().map(|name| Pod::new("default", name)).collect();
    let (l1, l2) = (unique("lk"), unique("lk"));
    let ip = |link: u8, host: u8| format!("10.84.{}.{host}/24", subnet * 2 + link);
    node.apply(&json!({"links": [
        {"name": l1, "a": end(&pods[0], "in1", &[&ip(0, 1)]), "b": end(&pods[1], "in1", &[&ip(0, 2)])},
        {"name": l2, "a": end(&pods[2], "in1", &[&ip(1, 1)]), "b": end(&pods[3], "in1", &[&ip(1, 2)])},
    ]}));
    let added: Vec<Value> = pods
        .iter()
        .map(|pod| {
            let reply = node.call_pod("ADD", pod, &config(node));
            assert!(reply.success, "{}", reply.stdout);
            reply.json
        })
        .collect();
    let mut pods = pods.into_iter();
    let mut next = || pods.next().unwrap();
    TwoLinks { alpha: next(), beta: next(), gamma: next(), delta: next(), l1, l2, alpha_cached: added[0].clone() }
}

/// The (container, `CNI_IFNAME`) pair kubelet lists for a pod.
fn attachment(pod: &Pod) -> (String, &'static str) {
    (container_of(pod), "eth0")
}

#[test]
fn status_on_a_fresh_node_loads_and_keeps_the_pins() {
    let node = Node::new();
    assert!(!node.pin_root.exists());
    node.status(&config(&node)).assert_silent_success("STATUS");
    for pin in ["ratchet_to_peer", "peers", "stats"] {
        assert!(node.pin_root.join(pin).exists(), "{pin} is pinned");
    }
    let prog =
        run("bpftool", &["-j", "prog", "show", "pinned", node.pin_root.join("ratchet_to_peer").to_str().unwrap()]);
    assert!(prog.contains("ratchet_to_peer"), "{prog}");
    node.status(&config(&node)).assert_silent_success("STATUS again");
    assert!(node.peers().is_empty());
}

#[test]
fn status_with_an_unusable_state_dir_is_50() {
    let node = Node::new();
    let file = node.state_dir.path().join("a-regular-file");
    std::fs::write(&file, "").unwrap();
    let mut config = config(&node);
    config["state_dir"] = json!(file.join("state"));
    let reply = node.status(&config);
    reply.assert_error(50, &["store", "a-regular-file"]);
    assert_eq!(reply.json["cniVersion"], "1.1.0");
}

#[test]
fn status_with_the_pins_gone_while_ends_are_attached_is_51() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    node.apply(&json!({"links": [{"name": unique("lk"), "a": end(&alpha, "in1", &["10.84.100.1/24"]), "b": end(&beta, "in1", &["10.84.100.2/24"])}]}));
    node.add(&alpha);
    node.add(&beta);
    std::fs::remove_dir_all(&node.pin_root).unwrap();

    let reply = node.status(&config(&node));
    reply.assert_error(51, &[node.pin_root.to_str().unwrap(), "2 link end(s) are attached"]);
    assert!(!node.pin_root.exists(), "STATUS does not load a fresh program that the attached ends would never read");
    assert!(alpha.ping("10.84.100.2"), "the attached ends still forward (limited, not lost)");
}

#[test]
fn status_after_a_reboot_is_ready() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let l1 = unique("lk");
    node.apply(&json!({"links": [{"name": l1, "a": end(&alpha, "in1", &["10.84.101.1/24"]), "b": end(&beta, "in1", &["10.84.101.2/24"])}]}));
    node.add(&alpha);
    node.add(&beta);
    let hosts = host_ifnames(&node, &l1);
    // A reboot: every netns and veth is gone, and bpffs is empty; the store
    // (on disk) still holds the records until the runtime's DEL or GC.
    drop((alpha, beta));
    std::fs::remove_dir_all(&node.pin_root).unwrap();
    for _ in 0..50 {
        if hosts.iter().all(|h| !host_has_link(h)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(hosts.iter().all(|h| !host_has_link(h)), "the host ends went with their pods");

    node.status(&config(&node)).assert_silent_success("STATUS: no end is attached any more, so loading afresh is safe");
    assert!(node.pin_root.join("ratchet_to_peer").exists(), "STATUS loaded the pins");
}

on_each_store!(gc_removes_exactly_the_unlisted_ends);

fn gc_removes_exactly_the_unlisted_ends(node: &Node) {
    let pods = two_links(node, 0);
    let hosts1 = host_ifnames(node, &pods.l1);
    let (alpha_host, beta_host) = (&hosts1[0], &hosts1[1]);
    let kept: Vec<u64> =
        [alpha_host.clone()].iter().chain(&host_ifnames(node, &pods.l2)).map(|h| u64::from(host_ifindex(h))).collect();
    let l2_ifindexes: Vec<u64> = host_ifnames(node, &pods.l2).iter().map(|h| u64::from(host_ifindex(h))).collect();

    let reply = node.gc(&config(node), &[attachment(&pods.alpha), attachment(&pods.gamma), attachment(&pods.delta)]);
    reply.assert_silent_success("GC");

    assert!(!host_has_link(beta_host), "beta's host veth is gone");
    assert!(pods.beta.link("in1").is_none(), "and its pod end");
    assert!(host_has_link(alpha_host) && pods.alpha.link("in1").is_some(), "alpha's end stays");
    assert_eq!(node.link_state(&pods.l1), "waiting", "alpha waits for a peer again");
    let l1_ends = node.links().into_iter().find(|l| l["link"] == pods.l1.as_str()).unwrap()["ends"].clone();
    assert_eq!(l1_ends.as_array().unwrap().len(), 1, "beta's record is gone: {l1_ends}");
    assert_eq!(l1_ends[0]["side"], "a");
    let containers = node.store_keys("/ratchet/containers/");
    let listed: Vec<String> = [&pods.alpha, &pods.gamma, &pods.delta]
        .iter()
        .map(|p| format!("/ratchet/containers/{}", container_of(p)))
        .collect();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(containers, listed_sorted, "exactly beta's container record is gone");
    assert_eq!(node.link_state(&pods.l2), "up", "the other link is untouched");
    let mut sorted_l2 = l2_ifindexes.clone();
    sorted_l2.sort_unstable();
    assert_eq!(node.map_keys("peers"), sorted_l2, "only gamma-delta forwards");
    let mut sorted_kept = kept.clone();
    sorted_kept.sort_unstable();
    assert_eq!(node.map_keys("stats"), sorted_kept, "beta's counters are gone");
    assert!(pods.gamma.ping("10.84.1.2"), "gamma-delta still carries traffic");
}

#[test]
fn gc_keeps_the_listed_link_working() {
    let node = Node::new();
    let pods = two_links(&node, 2);
    let reply = node.gc(&config(&node), &[attachment(&pods.alpha), attachment(&pods.beta)]);
    reply.assert_silent_success("GC");
    assert!(pods.alpha.ping("10.84.4.2"), "alpha-beta carries traffic after GC");
    node.check(&pods.alpha, &config(&node), &pods.alpha_cached).assert_silent_success("CHECK after GC");
    assert_eq!(node.link_state(&pods.l1), "up");
    assert_eq!(node.link_state(&pods.l2), "down", "gamma-delta was not listed");
    assert!(pods.gamma.link("in1").is_none() && pods.delta.link("in1").is_none());
}

#[test]
fn gc_with_an_empty_list_removes_everything() {
    let node = Node::new();
    let pods = two_links(&node, 3);
    let hosts: Vec<String> = host_ifnames(&node, &pods.l1).into_iter().chain(host_ifnames(&node, &pods.l2)).collect();
    assert_eq!(hosts.len(), 4);
    node.gc(&config(&node), &[]).assert_silent_success("GC");
    assert!(hosts.iter().all(|h| !host_has_link(h)), "every host veth is gone");
    assert!(
        [&pods.alpha, &pods.beta, &pods.gamma, &pods.delta].iter().all(|p| p.links().len() == 1),
        "only lo is left in the pods"
    );
    assert_eq!(node.link_state(&pods.l1), "down");
    assert_eq!(node.link_state(&pods.l2), "down");
    assert!(node.map_keys("peers").is_empty());
    assert!(node.map_keys("stats").is_empty());
    // A DEL the runtime sends afterwards finds nothing and is fine.
    node.call_pod("DEL", &pods.alpha, &with_prev_result(&config(&node), &json!({"cniVersion": "1.1.0"})))
        .assert_silent_success("DEL after GC");
}

#[test]
fn gc_matches_the_ifname_too() {
    let node = Node::new();
    let pods = two_links(&node, 4);
    let reply = node.gc(&config(&node), &[(container_of(&pods.alpha), "net1")]);
    reply.assert_silent_success("GC");
    assert_eq!(node.link_state(&pods.l1), "down", "alpha's attachment is eth0, not net1: not valid");
}

#[test]
fn gc_removes_map_entries_no_record_holds() {
    let node = Node::new();
    let pods = two_links(&node, 5);
    // A forwarding entry and a counter for host ifindex 0xfffe, which no end holds.
    let (peers, stats) = (node.pin_root.join("peers"), node.pin_root.join("stats"));
    // A Peer value is 16 bytes: ifindex 1, no VNI, no remote, no flags.
    let mut peer_args =
        vec!["map", "update", "pinned", peers.to_str().unwrap(), "key", "0xfe", "0xff", "0", "0", "value", "1"];
    peer_args.extend(std::iter::repeat_n("0", 15));
    run("bpftool", &peer_args);
    let zeros: Vec<&str> = std::iter::repeat_n("0", 24).collect();
    let mut args = vec!["map", "update", "pinned", stats.to_str().unwrap(), "key", "0xfe", "0xff", "0", "0", "value"];
    args.extend(&zeros);
    run("bpftool", &args);
    assert!(node.map_keys("peers").contains(&0xfffe) && node.map_keys("stats").contains(&0xfffe));

    let everyone: Vec<_> = node
        .links()
        .iter()
        .flat_map(|l| l["ends"].as_array().cloned().unwrap())
        .map(|e| (e["container_id"].as_str().unwrap().to_owned(), "eth0"))
        .collect();
    assert_eq!(everyone.len(), 4, "{everyone:?}");
    node.gc(&config(&node), &everyone).assert_silent_success("GC");
    assert!(!node.map_keys("peers").contains(&0xfffe), "the stray forwarding entry is gone");
    assert!(!node.map_keys("stats").contains(&0xfffe), "the stray counter is gone");
    assert_eq!(node.map_keys("peers").len(), 4, "every recorded end still forwards");
    assert_eq!(node.link_state(&pods.l1), "up");
    assert!(pods.alpha.ping("10.84.10.2"));
}

#[test]
fn gc_without_the_list_removes_nothing() {
    let node = Node::new();
    let pods = two_links(&node, 6);
    let reply = node.call_node_verb("GC", &config(&node), "/usr/lib/cni");
    assert!(!reply.success, "GC without cni.dev/valid-attachments cannot know what is valid: {}", reply.stdout);
    assert!(reply.error_text().contains("cni.dev/valid-attachments"), "{}", reply.stdout);
    assert_eq!(node.link_state(&pods.l1), "up", "nothing was removed");
}

#[test]
fn gc_that_cannot_read_the_store_is_106() {
    let node = Node::new();
    let file = node.state_dir.path().join("a-regular-file");
    std::fs::write(&file, "").unwrap();
    let mut config = config(&node);
    config["state_dir"] = json!(file.join("state"));
    let reply = node.gc(&config, &[]);
    reply.assert_error(106, &["a-regular-file"]);
    assert_eq!(reply.json["cniVersion"], "1.1.0");
}
