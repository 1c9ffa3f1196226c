//! Links across nodes: two "nodes" on this machine, each a network namespace
//! of its own (its own host veths, VXLAN device, pin root and state dir),
//! joined by an underlay veth; a real etcd inside the first node, reached over
//! the underlay; a plugin run inside each node the way its kubelet would run
//! it, and an agent per node.

use std::{
    thread,
    time::{Duration, Instant},
};

use ratchet_tests::{Pod, Rig, Scrape, call_command, end, kubelet_env, pattern, run, scrape, tcp_transfer, unique};
use serde_json::{Value, json};

/// Pings until answered, for at most `seconds`.
fn eventually_pings(pod: &Pod, ip: &str, seconds: u32) -> bool {
    (0..seconds * 5).any(|_| {
        let ok = pod.exec(&["ping", "-c", "1", "-W", "1", ip]).status.success();
        if !ok {
            thread::sleep(Duration::from_millis(200));
        }
        ok
    })
}

fn cross_node_pair(rig: &Rig) -> (Pod, Pod, String) {
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = unique("lk");
    rig.apply(&json!({"links": [{"name": link,
        "a": end(&alpha, "in1", &["10.77.0.1/24", "fd77::1/64"]),
        "b": end(&beta, "in2", &["10.77.0.2/24", "fd77::2/64"])}]}));
    (alpha, beta, link)
}

#[test]
fn a_link_across_nodes_carries_traffic_and_unwires_on_del() {
    let mut rig = Rig::new();
    let (alpha, beta, _) = cross_node_pair(&rig);
    rig.start_agent(0);
    rig.start_agent(1);

    let added = rig.cni(0, "ADD", &alpha);
    assert!(added.success, "ADD alpha on node 0: {}", added.stdout);
    let added = rig.cni(1, "ADD", &beta);
    assert!(added.success, "ADD beta on node 1: {}", added.stdout);
    assert_eq!(alpha.link("in1").unwrap()["mtu"], 1450, "the default MTU leaves room for VXLAN");

    assert!(eventually_pings(&alpha, "10.77.0.2", 5), "IPv4 across nodes");
    assert!(eventually_pings(&beta, "fd77::1", 5), "IPv6 across nodes");
    let sent = 1 << 20;
    assert_eq!(tcp_transfer(&beta, &alpha, "10.77.0.2", sent), pattern(sent), "a TCP stream across nodes");
    for index in 0..2 {
        let peers = rig.peers(index);
        assert_eq!(peers.len(), 1, "node {index} forwards its one end into the tunnel: {peers:?}");
        assert_eq!(peers[0]["formatted"]["value"]["flags"], 1, "through the tunnel: {peers:?}");
    }

    let deleted = rig.cni(0, "DEL", &alpha);
    assert!(deleted.success, "DEL alpha: {}", deleted.stdout);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !rig.peers(1).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(rig.peers(1).is_empty(), "node 1's agent unwired beta: its peer went away");
    assert!(!beta.exec(&["ping", "-c", "1", "-W", "1", "10.77.0.1"]).status.success());
    let deleted = rig.cni(1, "DEL", &beta);
    assert!(deleted.success, "DEL beta: {}", deleted.stdout);
}

#[test]
fn two_ends_added_at_once_on_two_nodes_make_one_link() {
    let mut rig = Rig::new();
    let (alpha, beta, link) = cross_node_pair(&rig);
    rig.start_agent(0);
    rig.start_agent(1);
    thread::scope(|scope| {
        let (rig, alpha, beta) = (&rig, &alpha, &beta);
        let a = scope.spawn(move || rig.cni(0, "ADD", alpha));
        let b = scope.spawn(move || rig.cni(1, "ADD", beta));
        for reply in [a.join().unwrap(), b.join().unwrap()] {
            assert!(reply.success, "{}", reply.stdout);
        }
    });
    assert!(eventually_pings(&alpha, "10.77.0.2", 5), "one link, carrying traffic");
    let out = rig.cli(0, &["links", "--json"]).output().unwrap();
    let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ours = links.iter().find(|l| l["link"] == link.as_str()).unwrap();
    assert_eq!(ours["state"], "up", "{ours}");
    let ends = ours["ends"].as_array().unwrap();
    assert_eq!(ends.len(), 2);
    // Node 0's maps count only its own end; node 1's is not read from them.
    let end_on = |node: &str| ends.iter().find(|e| e["node"] == node).unwrap_or_else(|| panic!("{ours}"));
    assert!(end_on("node-0")["packets"].as_u64().is_some_and(|sent| sent > 0), "{ours}");
    assert!(end_on("node-1")["packets"].is_null(), "another node's counters are not this node's: {ours}");
}

/// Two nodes with agents and one live link between alpha (node 0) and beta (node 1).
fn live_cross_node_link() -> (Rig, Pod, Pod, String) {
    let mut rig = Rig::new();
    let (alpha, beta, link) = cross_node_pair(&rig);
    rig.start_agent(0);
    rig.start_agent(1);
    assert!(rig.cni(0, "ADD", &alpha).success);
    assert!(rig.cni(1, "ADD", &beta).success);
    assert!(eventually_pings(&alpha, "10.77.0.2", 5));
    (rig, alpha, beta, link)
}

#[test]
fn links_keep_forwarding_without_the_agent_and_a_restarted_agent_catches_up() {
    let (mut rig, alpha, beta, _) = live_cross_node_link();
    rig.stop_agent(1);
    assert!(
        beta.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.77.0.1"]).status.success(),
        "no agent, still a cable"
    );

    // While node 1's agent is down, alpha goes away on node 0.
    assert!(rig.cni(0, "DEL", &alpha).success);
    assert_eq!(rig.peers(1).len(), 1, "nobody has told node 1 yet");
    rig.start_agent(1);
    assert!(rig.peers_settle(1, 0), "the restarted agent unwires beta");
    assert!(rig.cni(1, "DEL", &beta).success);
}

#[test]
fn an_end_whose_pod_vanished_is_forgotten_and_its_peer_unwired() {
    let (rig, alpha, beta, link) = live_cross_node_link();
    // beta's sandbox disappears without a DEL (its netns, and so its veth, are gone).
    drop(beta);
    assert!(rig.peers_settle(1, 0), "node 1 drops the dead end's entries");
    assert!(rig.peers_settle(0, 0), "and node 0 stops sending alpha's frames into the tunnel");
    let links = rig.links();
    let ours = links.iter().find(|l| l["link"] == link.as_str()).unwrap();
    assert_eq!(ours["state"], "waiting", "only alpha is left: {ours}");
    assert!(rig.cni(0, "DEL", &alpha).success);
}

/// Scrapes node `index`'s agent over HTTP, from inside the node (the rig's
/// agents serve on the default address, 127.0.0.1:9478, each in its netns).
fn scrape(rig: &Rig, index: usize) -> Scrape {
    let answer = rig.nodes[index].within(|| scrape::get("127.0.0.1:9478".parse().unwrap(), "/metrics")).join().unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    Scrape::parse(&answer.body)
}

#[test]
fn the_agent_serves_links_and_counters_as_prometheus_metrics() {
    let (rig, alpha, _beta, link) = live_cross_node_link();
    // A scrape shows the agent's last round, which may predate beta's ADD
    // (rounds run late on a loaded machine).
    let up = |scrape: &Scrape| scrape.value("ratchet_links", &[("node", "node-0"), ("state", "up")]) == 1.0;
    let mut first = scrape(&rig, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !up(&first) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        first = scrape(&rig, 0);
    }
    assert!(up(&first), "{first:?}");
    let sent = [("node", "node-0"), ("link", link.as_str()), ("side", "a")];
    let before = first.value("ratchet_end_packets_total", &sent);
    assert!(alpha.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.77.0.2"]).status.success());
    let after = scrape(&rig, 0).value("ratchet_end_packets_total", &sent);
    assert!(after >= before + 3.0, "alpha's counter moved: {before} -> {after}");
    assert_eq!(first.find("ratchet_end_packets_total", &[("side", "b")]).len(), 0, "node 0 reports only its own ends");
    let other = scrape(&rig, 1);
    assert_eq!(other.value("ratchet_links", &[("node", "node-1"), ("state", "up")]), 1.0, "each node labels its own");
    other.one("ratchet_end_packets_total", &[("node", "node-1"), ("link", &link), ("side", "b")]);
}

#[test]
fn the_agent_restores_forwarding_after_the_pins_are_removed() {
    let (rig, alpha, beta, _) = live_cross_node_link();
    // Programs and maps lose their pins (bpffs remounted, or removed by hand):
    // the attached copies keep forwarding on the old maps meanwhile.
    std::fs::remove_dir_all(&rig.node(0).pin_root).unwrap();
    assert!(rig.peers_settle(0, 1), "the agent loaded the programs again and wrote node 0's entry");
    let tunnel = rig.node(0).pin_root.join("ratchet_from_vx");
    assert!(tunnel.exists(), "pins are back");
    assert!(eventually_pings(&alpha, "10.77.0.2", 5), "forwarding runs on the new maps");
    let program = rig.node(0).pin_root.join("ratchet_to_peer");
    let shown: Value =
        serde_json::from_str(&run("bpftool", &["-j", "prog", "show", "pinned", program.to_str().unwrap()])).unwrap();
    let links = rig.links();
    let alpha_end =
        links.iter().flat_map(|l| l["ends"].as_array().unwrap().clone()).find(|e| e["pod"] == "default/alpha");
    let host_end = alpha_end.unwrap()["host_ifname"].as_str().unwrap().to_owned();
    let filters =
        run("ip", &["netns", "exec", &rig.nodes[0].netns, "tc", "filter", "show", "dev", &host_end, "ingress"]);
    assert!(
        filters.contains(&format!(" id {} ", shown["id"])),
        "alpha's host end runs the reloaded program: {filters}"
    );

    // The new maps are the live ones: a DEL on node 1 unwires node 0 through them.
    assert!(rig.cni(1, "DEL", &beta).success);
    assert!(rig.peers_settle(0, 0), "node 0 unwired alpha in the restored maps");
    assert!(!alpha.exec(&["ping", "-c", "1", "-W", "1", "10.77.0.2"]).status.success());
}

#[test]
fn a_node_whose_agent_died_is_shown_down_once_its_lease_runs_out() {
    let (mut rig, _alpha, _beta, link) = live_cross_node_link();
    let alive = |rig: &Rig| -> Vec<(String, Value)> {
        let links = rig.links();
        let ours = links.iter().find(|l| l["link"] == link.as_str()).unwrap();
        ours["ends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["pod"].as_str().unwrap().to_owned(), e["node_alive"].clone()))
            .collect()
    };
    let settles = |rig: &Rig, expected: &[(&str, bool)]| {
        let deadline = Instant::now() + Duration::from_secs(6);
        loop {
            let seen = alive(rig);
            let wanted: Vec<(String, Value)> = expected.iter().map(|(pod, up)| (pod.to_string(), json!(up))).collect();
            if seen == wanted {
                return true;
            }
            if Instant::now() > deadline {
                eprintln!("seen {seen:?}");
                return false;
            }
            thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(settles(&rig, &[("default/alpha", true), ("default/beta", true)]), "both agents hold leases");
    rig.stop_agent(1);
    assert!(settles(&rig, &[("default/alpha", true), ("default/beta", false)]), "node 1's lease ran out");
    rig.start_agent(1);
    assert!(settles(&rig, &[("default/alpha", true), ("default/beta", true)]), "a restarted agent registers again");
}

#[test]
fn the_second_node_may_attach_first() {
    let mut rig = Rig::new();
    let (alpha, beta, _) = cross_node_pair(&rig);
    rig.start_agent(0);
    rig.start_agent(1);
    assert!(rig.cni(1, "ADD", &beta).success, "beta first, on node 1");
    assert!(rig.peers(1).is_empty(), "beta waits");
    assert!(rig.cni(0, "ADD", &alpha).success);
    assert!(eventually_pings(&beta, "10.77.0.1", 5), "then alpha on node 0: the link works");
}

/// VXLAN is unauthenticated: node 1 takes a link's VNI only from the peer's
/// node. An intruder on a second underlay sends beta ARP requests inside
/// VXLAN with the link's VNI: from its own address they never reach beta;
/// spoofing node 0's address (the control) they do, so the source check is
/// what stopped them.
#[test]
fn only_the_peers_node_may_send_into_a_link() {
    let mut rig = Rig::new();
    let (alpha, beta, _) = cross_node_pair(&rig);
    rig.start_agent(0);
    rig.start_agent(1);
    assert!(rig.cni(0, "ADD", &alpha).success && rig.cni(1, "ADD", &beta).success);
    assert!(eventually_pings(&alpha, "10.77.0.2", 5), "the link is up");
    let pin = rig.node(1).pin_root.join("vnis");
    let vnis: Vec<Value> =
        serde_json::from_str(&run("bpftool", &["-j", "map", "dump", "pinned", pin.to_str().unwrap()])).unwrap();
    let vni = vnis[0]["formatted"]["key"].as_u64().unwrap().to_string();

    let intruder = Pod::new("nodes", "intruder");
    let node1 = &rig.nodes[1].netns;
    run("ip", &["-n", node1, "link", "add", "ulx", "type", "veth", "peer", "name", "ulx", "netns", &intruder.netns]);
    run("ip", &["-n", node1, "addr", "add", "10.203.9.1/24", "dev", "ulx"]);
    run("ip", &["-n", node1, "link", "set", "ulx", "up"]);
    run("ip", &["-n", &intruder.netns, "addr", "add", "10.203.9.2/24", "dev", "ulx"]);
    run("ip", &["-n", &intruder.netns, "addr", "add", &format!("{}/32", rig.node(0).ip), "dev", "ulx"]);
    run("ip", &["-n", &intruder.netns, "link", "set", "ulx", "up"]);
    let beta_knows_intruder = || !beta.exec(&["ip", "neigh", "show", "10.77.0.9"]).stdout.is_empty();
    for (source, reaches) in [("10.203.9.2".to_owned(), false), (rig.node(0).ip.clone(), true)] {
        let vxlan = ["link", "add", "vxi", "type", "vxlan", "id", &vni, "local", &source, "remote", "10.203.9.1"];
        run("ip", &[&["-n", &intruder.netns][..], &vxlan, &["dstport", "4789"]].concat());
        run("ip", &["-n", &intruder.netns, "addr", "add", "10.77.0.9/24", "dev", "vxi"]);
        run("ip", &["-n", &intruder.netns, "link", "set", "vxi", "up"]);
        let _ = intruder.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.77.0.2"]);
        assert_eq!(beta_knows_intruder(), reaches, "ARP from underlay source {source} reached beta: {reaches}");
        run("ip", &["-n", &intruder.netns, "link", "del", "vxi"]);
    }
}

/// The VXLAN device is made by a node's first cross-node ADD; an ADD that
/// fails right after making it takes it away again, so a later ADD never
/// takes a device without the tunnel program for a ready one.
#[test]
fn an_add_failing_after_the_vxlan_device_is_made_removes_it() {
    let rig = Rig::new();
    let (alpha, _beta, _) = cross_node_pair(&rig);
    let mut env = kubelet_env("ADD", &alpha);
    env.push(("FAILPOINTS", "add::vxlan-made=return".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let reply = call_command(rig.ratchet(0, &[]), &env, rig.config(0).to_string().as_bytes());
    assert!(!reply.success && reply.error_text().contains("add::vxlan-made"), "{}", reply.stdout);
    let node = &rig.nodes[0];
    assert!(node.link("rtvx0").is_none(), "the VXLAN device went with the failed ADD");
    assert!(alpha.link("in1").is_none(), "and nothing of alpha's end was made");

    assert!(rig.cni(0, "ADD", &alpha).success);
    let filters = node.exec(&["tc", "filter", "show", "dev", "rtvx0", "ingress"]);
    assert!(String::from_utf8_lossy(&filters.stdout).contains("ratchet_from_vx"), "the next ADD made it whole");
}

/// On a node of several, a link MTU the underlay cannot carry in VXLAN is
/// refused at ADD, naming the link, the field and the limit, before
/// anything is made.
#[test]
fn a_link_mtu_above_the_underlay_is_refused() {
    let rig = Rig::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = unique("jumbo");
    rig.apply(&json!({"links": [{"name": link, "mtu": 1451,
        "a": end(&alpha, "in1", &["10.78.0.1/24"]), "b": end(&beta, "in1", &["10.78.0.2/24"])}]}));
    let refused = rig.cni(0, "ADD", &alpha);
    assert!(!refused.success, "ADD with mtu 1451 over a 1500-byte underlay: {}", refused.stdout);
    assert_eq!(refused.json["code"], 7, "{}", refused.stdout);
    let details = refused.json["details"].as_str().unwrap_or_default();
    for word in [link.as_str(), "mtu 1451", "1450"] {
        assert!(details.contains(word), "the error names {word}: {details}");
    }
    assert!(alpha.link("in1").is_none(), "nothing was made in the pod");
    assert!(rig.links().iter().all(|l| l["ends"].as_array().is_none_or(|ends| ends.is_empty())), "no end recorded");

    rig.apply(&json!({"links": [{"name": link, "mtu": 1450,
        "a": end(&alpha, "in1", &["10.78.0.1/24"]), "b": end(&beta, "in1", &["10.78.0.2/24"])}]}));
    let added = rig.cni(0, "ADD", &alpha);
    assert!(added.success, "mtu 1450 fits: {}", added.stdout);
    assert!(rig.cni(0, "DEL", &alpha).success);
}
