//! A link comes up and carries traffic, moved by our program alone. The
//! tests named in `on_each_store!` run once per store backend.

use ratchet_tests::{Node, Pod, end, host_ifnames, on_each_store, pattern, run, tcp_transfer, unique};
use serde_json::json;

/// A one-link topology; link names are unique because host veth names
/// derive from them and tests share the host netns.
fn pair_topology(link: &str, alpha: &Pod, beta: &Pod) -> serde_json::Value {
    json!({"links": [{"name": link,
        "a": end(alpha, "in1", &["10.77.0.1/24", "fd77::1/64"]),
        "b": end(beta, "in2", &["10.77.0.2/24", "fd77::2/64"])}]})
}

on_each_store!(
    comes_up_when_the_first_end_is_added_first,
    comes_up_when_the_second_end_is_added_first,
    one_pod_holds_three_links,
);

/// Two pods and one link between them, applied (not added).
fn applied_pair(node: &Node) -> (Pod, Pod, String) {
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let l1 = unique("lk");
    node.apply(&pair_topology(&l1, &alpha, &beta));
    (alpha, beta, l1)
}

fn comes_up_and_carries_traffic(node: &Node, alpha_first: bool) {
    let (alpha, beta, l1) = applied_pair(node);
    let (first, second) = if alpha_first { (&alpha, &beta) } else { (&beta, &alpha) };

    let result = node.add(first);
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(node.link_state(&l1), "waiting");
    assert!(node.peers().is_empty(), "a lone end forwards nowhere");
    node.add(second);
    assert_eq!(node.link_state(&l1), "up");
    assert_eq!(node.peers().len(), 2, "both directions are wired");

    assert!(alpha.ping("10.77.0.2"), "IPv4 across the link");
    assert!(beta.ping("fd77::1"), "IPv6 across the link");
    let sent = 4 << 20;
    assert_eq!(tcp_transfer(&beta, &alpha, "10.77.0.2", sent), pattern(sent), "a TCP stream arrives intact");
    assert_eq!(tcp_transfer(&alpha, &beta, "fd77::1", sent), pattern(sent), "and over IPv6");

    let links = node.links();
    let ends = links[0]["ends"].as_array().unwrap();
    // Each end sent one stream's payload (in GSO super-frames, so few packets).
    let sent_by = |e: &serde_json::Value| e["bytes"].as_u64().unwrap();
    assert!(ends.iter().all(|e| sent_by(e) > sent as u64), "counters move both ways: {ends:?}");
}

fn comes_up_when_the_first_end_is_added_first(node: &Node) {
    comes_up_and_carries_traffic(node, true);
}

fn comes_up_when_the_second_end_is_added_first(node: &Node) {
    comes_up_and_carries_traffic(node, false);
}

#[test]
fn the_add_result_has_the_spec_shape() {
    let node = Node::new();
    let (alpha, _beta, _l1) = applied_pair(&node);
    let result = node.add(&alpha);
    let interfaces = result["interfaces"].as_array().unwrap();
    assert_eq!(interfaces.len(), 2, "{result}");
    assert!(interfaces[0]["name"].as_str().unwrap().starts_with("rt"));
    assert!(interfaces[0].get("sandbox").is_none(), "the host end is on the host");
    assert_eq!(interfaces[1]["name"], "in1");
    assert_eq!(interfaces[1]["sandbox"], alpha.netns_path());
    let mac = alpha.link("in1").unwrap()["address"].clone();
    assert_eq!(interfaces[1]["mac"], mac);
    assert_eq!(
        result["ips"],
        json!([{"address": "10.77.0.1/24", "interface": 1}, {"address": "fd77::1/64", "interface": 1}])
    );
}

#[test]
fn only_the_program_forwards() {
    let node = Node::new();
    let (alpha, beta, l1) = applied_pair(&node);
    node.add(&alpha);
    node.add(&beta);
    assert!(alpha.ping("10.77.0.2"));

    let host_end = &host_ifnames(&node, &l1)[0];
    run("tc", &["filter", "del", "dev", host_end, "ingress"]);
    assert!(!alpha.ping("10.77.0.2"), "with the program detached nothing crosses");
    assert!(!alpha.ping("fd77::2"));

    let prog = node.pin_root.join("ratchet_to_peer");
    run("tc", &["filter", "add", "dev", host_end, "ingress", "bpf", "direct-action", "pinned", prog.to_str().unwrap()]);
    assert!(alpha.ping_eventually("10.77.0.2", 3), "re-attached, traffic flows again");
}

fn one_pod_holds_three_links(node: &Node) {
    let hub = Pod::new("default", "hub");
    let spokes: Vec<Pod> = (1..=3).map(|i| Pod::new("default", &format!("spoke{i}"))).collect();
    let prefix = unique("lk");
    let links: Vec<_> = spokes
        .iter()
        .enumerate()
        .map(|(i, spoke)| {
            json!({"name": format!("{prefix}-{i}"),
                "a": end(&hub, &format!("in{i}"), &[&format!("10.78.{i}.1/24")]),
                "b": end(spoke, "up0", &[&format!("10.78.{i}.2/24")])})
        })
        .collect();
    node.apply(&json!({ "links": links }));
    node.add(&hub);
    for spoke in &spokes {
        node.add(spoke);
    }
    let result_links = node.links();
    assert!(result_links.iter().all(|l| l["state"] == "up"), "{result_links:?}");
    for (i, spoke) in spokes.iter().enumerate() {
        assert!(hub.ping(&format!("10.78.{i}.2")), "hub reaches spoke {i}");
        assert!(spoke.ping(&format!("10.78.{i}.1")), "spoke {i} reaches hub");
    }
}

#[test]
fn a_custom_mtu_holds_end_to_end() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let l1 = unique("lk");
    let mut topology = pair_topology(&l1, &alpha, &beta);
    topology["links"][0]["mtu"] = json!(9000);
    topology["links"][0]["b"]["mac"] = json!("02:00:00:00:be:7a");
    node.apply(&topology);
    node.add(&alpha);
    node.add(&beta);
    assert_eq!(alpha.link("in1").unwrap()["mtu"], 9000);
    assert_eq!(beta.link("in2").unwrap()["mtu"], 9000);
    assert_eq!(beta.link("in2").unwrap()["address"], "02:00:00:00:be:7a");
    let full = alpha.exec(&["ping", "-c", "1", "-W", "1", "-M", "do", "-s", "8972", "10.77.0.2"]);
    assert!(full.status.success(), "a 9000-byte frame crosses unfragmented");
    let too_big = alpha.exec(&["ping", "-c", "1", "-W", "1", "-M", "do", "-s", "8973", "10.77.0.2"]);
    assert!(!too_big.status.success(), "one byte more does not fit");
}

#[test]
fn tcx_attachment_works_too() {
    let node = Node::with_attach("tcx");
    let (alpha, beta, _l1) = applied_pair(&node);
    node.add(&alpha);
    node.add(&beta);
    assert!(alpha.ping("10.77.0.2"));
    let pins = std::fs::read_dir(node.pin_root.join("links")).unwrap().count();
    assert_eq!(pins, 2, "one pinned tcx link per host end");
    node.del(&alpha);
    let pins = std::fs::read_dir(node.pin_root.join("links")).unwrap().count();
    assert_eq!(pins, 1, "DEL unpins its link");
    node.del(&beta);
}

/// A link the topology no longer has keeps its attached ends until their
/// pods go; `ratchet links` says it was removed rather than `up`.
#[test]
fn a_link_dropped_from_the_topology_shows_as_removed_not_up() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = unique("lk");
    node.apply(&pair_topology(&link, &alpha, &beta));
    node.add(&alpha);
    node.add(&beta);
    assert_eq!(node.link_state(&link), "up");
    node.cli(&["topology", "delete"]);
    assert_eq!(node.link_state(&link), "removed");
    node.del(&alpha);
    node.del(&beta);
}

#[test]
fn the_topology_can_be_shown_and_deleted() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let l1 = unique("lk");
    let topology = pair_topology(&l1, &alpha, &beta);
    node.apply(&topology);
    let shown: serde_json::Value = serde_json::from_str(&node.cli(&["topology", "show"])).unwrap();
    assert_eq!(shown, topology);
    node.cli(&["topology", "delete"]);
    let shown: serde_json::Value = serde_json::from_str(&node.cli(&["topology", "show"])).unwrap();
    assert_eq!(shown, json!({"links": []}));
    let reply = node.call(
        "ADD",
        &ratchet_tests::container_of(&alpha),
        &alpha.netns_path(),
        ("default", "alpha"),
        &node.config(),
    );
    assert_eq!(reply.code(), Some(101), "no topology, no links: {}", reply.stdout);
}

/// `ratchet links -o wide|json|yaml` say why a link is not up: the pods
/// whose ADD it waits for, or that it was cut.
#[test]
fn the_views_say_why_a_link_is_not_up() {
    let node = Node::new();
    let (alpha, beta, l1) = applied_pair(&node);
    let reason = |node: &Node| {
        let links: Vec<serde_json::Value> = serde_json::from_str(&node.cli(&["links", "-o", "json"])).unwrap();
        let link = links.into_iter().find(|link| link["link"] == l1.as_str()).unwrap();
        (link["state"].as_str().unwrap().to_owned(), link["reason"].as_str().unwrap_or_default().to_owned())
    };
    let (state, why) = reason(&node);
    assert_eq!(state, "down");
    assert!(why.contains("default/alpha in1") && why.contains("default/beta in2"), "{why}");
    node.add(&alpha);
    let (state, why) = reason(&node);
    assert_eq!(state, "waiting");
    assert_eq!(why, "no ADD has attached default/beta in2");
    let wide = node.cli(&["links", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().ends_with("REASON") && wide.contains(&why), "{wide}");
    assert!(!node.cli(&["links"]).contains("REASON"), "the plain table keeps its columns");
    // The same fields either way (counters aside: the pod's own chatter
    // may count a drop between the two reads).
    let summary = |views: serde_json::Value| -> Vec<(serde_json::Value, serde_json::Value, serde_json::Value)> {
        let views = views.as_array().unwrap().iter();
        views.map(|view| (view["link"].clone(), view["state"].clone(), view["reason"].clone())).collect()
    };
    let yaml: serde_json::Value = serde_yaml::from_str(&node.cli(&["links", "-o", "yaml"])).unwrap();
    let json: serde_json::Value = serde_json::from_str(&node.cli(&["links", "--json"])).unwrap();
    assert_eq!(summary(yaml), summary(json), "YAML and JSON say the same");
    node.add(&beta);
    assert_eq!(reason(&node), ("up".into(), String::new()));
    node.cli(&["link", "down", &l1]);
    assert_eq!(reason(&node), ("cut".into(), "cut with `ratchet link down`".into()));
    node.del(&alpha);
    node.del(&beta);
}

/// For an end on this node the view reads the pod interface itself: its
/// MAC and state as the pod sees them, and the addresses it holds,
/// including one the pod added on its own (as a router in a lab does).
#[test]
fn the_view_shows_each_pod_interface_as_the_kernel_has_it() {
    let node = Node::new();
    let (alpha, beta, l1) = applied_pair(&node);
    node.add(&alpha);
    node.add(&beta);
    assert!(alpha.exec(&["ip", "address", "add", "192.0.2.1/32", "dev", "in1"]).status.success());
    let end_a = |node: &Node| {
        let links = node.links();
        let link = links.into_iter().find(|link| link["link"] == l1.as_str()).unwrap();
        link["ends"].as_array().unwrap().iter().find(|end| end["side"] == "a").unwrap().clone()
    };
    let a = end_a(&node);
    assert_eq!(a["mac"], alpha.link("in1").unwrap()["address"], "{a}");
    assert_eq!(a["pod_if"], "up");
    assert_eq!(a["ips"], json!(["10.77.0.1/24", "192.0.2.1/32", "fd77::1/64"]), "the kernel's, link-local left out");
    node.cli(&["link", "down", &l1]);
    assert_eq!(end_a(&node)["pod_if"], "no-carrier", "a cut shows on the pod interface");
    node.cli(&["link", "up", &l1]);
    assert!(alpha.exec(&["ip", "link", "set", "in1", "down"]).status.success());
    assert_eq!(end_a(&node)["pod_if"], "down", "the pod set it down");
    let wide = node.cli(&["links", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("MAC") && wide.contains(a["mac"].as_str().unwrap()), "{wide}");
    node.del(&alpha);
    node.del(&beta);
}

/// A waiting link says why its peer is missing when the peer's ADD failed:
/// the error that ADD answered, and on which node; the next ADD that
/// attaches the end clears it.
#[test]
fn a_waiting_link_says_its_peers_add_failed_and_why() {
    let node = Node::new();
    let (alpha, beta, l1) = applied_pair(&node);
    node.add(&alpha);
    // Something of the pod's own already holds the interface name.
    assert!(beta.exec(&["ip", "link", "add", "in2", "type", "veth", "peer", "name", "x2"]).status.success());
    let reply = node.call_pod("ADD", &beta, &node.config());
    assert!(!reply.success, "the ADD fails: {}", reply.stdout);
    let reason = |node: &Node| {
        let links = node.links();
        let link = links.into_iter().find(|link| link["link"] == l1.as_str()).unwrap();
        (link["state"].as_str().unwrap().to_owned(), link["reason"].as_str().unwrap_or_default().to_owned())
    };
    let (state, why) = reason(&node);
    assert_eq!(state, "waiting");
    assert!(
        why.starts_with("no ADD has attached default/beta in2 (its last ADD, on node node-1, failed: ")
            && why.contains("in2"),
        "{why}"
    );
    assert!(beta.exec(&["ip", "link", "del", "in2"]).status.success());
    node.add(&beta);
    assert_eq!(reason(&node), ("up".into(), String::new()), "the attach cleared it");
    assert!(node.store_keys("/ratchet/failed/").is_empty());
    node.del(&alpha);
    node.del(&beta);
}
