//! `ratchet link down` / `up`: pulling a link's cable and plugging it back.
//! Both pod ends lose their carrier (what a routing daemon in the pod
//! watches), frames are dropped and counted (the pod interface's TX drops),
//! `ratchet links` says `cut`; `up` restores the link as it was. The cut is
//! the store's, so it holds for an end attached later, and for a node the
//! CLI does not run on: that node's agent applies it.

use ratchet_tests::{Node, Pod, Rig, end, eventually, unique};
use serde_json::{Value, json};

/// The pod interface as `ip -j link` shows it.
fn interface(pod: &Pod, ifname: &str) -> Value {
    pod.link(ifname).unwrap_or_else(|| panic!("{ifname} in {}", pod.name))
}

fn has_carrier(pod: &Pod, ifname: &str) -> bool {
    let flags = interface(pod, ifname)["flags"].as_array().cloned().unwrap_or_default();
    !flags.contains(&json!("NO-CARRIER"))
}

fn pings(pod: &Pod, ip: &str) -> bool {
    pod.exec(&["ping", "-c", "1", "-W", "1", ip]).status.success()
}

fn tx_dropped(pod: &Pod, ifname: &str) -> u64 {
    let out = pod.exec(&["ip", "-s", "-j", "link", "show", "dev", ifname]);
    let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    links[0]["stats64"]["tx"]["dropped"].as_u64().unwrap()
}

fn state(links: &[Value], link: &str) -> String {
    let found = links.iter().find(|l| l["link"] == link).unwrap_or_else(|| panic!("{link} in {links:?}"));
    found["state"].as_str().unwrap().to_owned()
}

#[test]
fn a_cut_link_loses_carrier_drops_and_counts_and_comes_back() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = unique("cable");
    node.apply(&json!({"links": [{"name": link,
        "a": end(&alpha, "in1", &["10.88.0.1/24"]), "b": end(&beta, "in1", &["10.88.0.2/24"])}]}));
    node.add(&alpha);
    node.add(&beta);
    assert!(pings(&alpha, "10.88.0.2"));

    let said = node.cli(&["link", "down", &link]);
    assert!(said.contains("down") && said.contains("rt"), "names the host ends it set down: {said}");
    for pod in [&alpha, &beta] {
        assert!(!has_carrier(pod, "in1"), "{}'s in1 has no carrier: {}", pod.name, interface(pod, "in1"));
        assert_eq!(interface(pod, "in1")["operstate"], "DOWN");
    }
    let dropped = tx_dropped(&alpha, "in1");
    assert!(!pings(&alpha, "10.88.0.2"), "nothing crosses a cut link");
    assert!(tx_dropped(&alpha, "in1") > dropped, "what alpha sent was dropped and counted");
    assert_eq!(state(&node.links(), &link), "cut");

    // An end attached while the link is cut starts cut.
    node.del(&beta);
    node.add(&beta);
    assert!(!has_carrier(&beta, "in1"), "a new end of a cut link has no carrier");

    let said = node.cli(&["link", "up", &link]);
    assert!(said.contains("up"), "{said}");
    for pod in [&alpha, &beta] {
        assert!(has_carrier(pod, "in1"), "{}'s in1 has its carrier back", pod.name);
    }
    assert!(eventually(|| pings(&alpha, "10.88.0.2")), "the link carries traffic again");
    assert_eq!(state(&node.links(), &link), "up");
    node.del(&alpha);
    node.del(&beta);
}

#[test]
fn cutting_a_link_the_topology_lacks_is_refused() {
    let node = Node::new();
    let out = std::process::Command::new(ratchet_tests::ratchet_bin())
        .args(["--state-dir", node.state_dir.path().to_str().unwrap(), "--pin-root", node.pin_root.to_str().unwrap()])
        .args(["link", "down", "no-such-link"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no link no-such-link"), "{stderr}");
}

#[test]
fn the_far_nodes_agent_cuts_its_end() {
    let mut rig = Rig::new();
    let (alpha, beta, link) = rig.linked_across("cable", 89);

    // Cut from node 0: its end at once, node 1's end by node 1's agent.
    let out = rig.cli(0, &["link", "down", &link]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!has_carrier(&alpha, "in1"), "node 0's end is cut at once");
    assert!(eventually(|| !has_carrier(&beta, "in1")), "node 1's agent cuts its end");
    assert_eq!(state(&rig.links(), &link), "cut");

    let out = rig.cli(0, &["link", "up", &link]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(eventually(|| has_carrier(&beta, "in1")), "node 1's agent joins its end again");
    assert!(eventually(|| pings(&alpha, "10.89.0.2")), "traffic crosses again");
    assert!(rig.cni(0, "DEL", &alpha).success);
    assert!(rig.cni(1, "DEL", &beta).success);
}
