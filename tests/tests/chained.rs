//! Ratchet as a later plugin of a conflist: the runtime ran bridge first
//! (really, through the protocol) and hands its result to ratchet as
//! `prevResult`; ratchet appends its link interfaces and IPs. A pod without
//! links gets the prevResult back unchanged.

use ratchet_plugin::{naming::host_ifname, topology::Side};
use ratchet_tests::{
    Bridge, HostLocal, Node, Pod, VERSIONS, end, has_check, host_has_link, host_link_gone, is_legacy, reference_plugin,
    unique, with_prev_result,
};
use serde_json::{Value, json};

/// The conflist's name, which the runtime puts in every plugin's config.
const NETWORK: &str = "ratchet-test";

/// The conflist's first plugin. Debian's bridge (1.1.1) speaks up to 1.0.0;
/// under a 1.1.0 list the runtime would run it at 1.0.0.
fn bridge_conf(bridge: &Bridge, ipam: &HostLocal, version: &str) -> Value {
    let version = if version == "1.1.0" { "1.0.0" } else { version };
    json!({"cniVersion": version, "name": NETWORK, "type": "bridge", "bridge": bridge.name, "isGateway": true, "ipam": ipam.ipam()})
}

/// Runs bridge for `pod` and returns its result as the runtime hands it to
/// the next plugin: converted to the list's version (1.0.0 and 1.1.0 share
/// the layout, so that is the version label).
fn bridge_add(bridge: &Bridge, ipam: &HostLocal, version: &str, pod: &Pod) -> Value {
    let reply = reference_plugin("bridge", "ADD", pod, &bridge_conf(bridge, ipam, version));
    assert!(reply.success, "bridge ADD: {}", reply.stdout);
    let mut prev = reply.json;
    prev["cniVersion"] = json!(version);
    prev
}

fn chained_after_bridge(version: &str, subnet: u8) {
    let node = Node::new();
    let (bridge, ipam) = (Bridge::new(), HostLocal::new(&format!("10.153.{subnet}.0/24")));
    let config = node.config_for(version);
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let l1 = unique("lk");
    let link_ip = |host: u8| format!("10.163.{subnet}.{host}");
    node.apply(&json!({"links": [{"name": l1, "a": end(&alpha, "in1", &[&format!("{}/24", link_ip(1))]), "b": end(&beta, "in2", &[&format!("{}/24", link_ip(2))])}]}));

    let mut cached = Vec::new();
    for (pod, side, ifname, host) in [(&alpha, Side::A, "in1", 1), (&beta, Side::B, "in2", 2)] {
        let prev = bridge_add(&bridge, &ipam, version, pod);
        let reply = node.call_pod("ADD", pod, &with_prev_result(&config, &prev));
        assert!(reply.success, "chained ADD at {version}: {}", reply.stdout);
        let result = reply.json;
        assert_eq!(result["cniVersion"], version, "{result}");
        let interfaces = result["interfaces"].as_array().unwrap();
        assert_eq!(interfaces.len(), 5, "bridge's three, then ratchet's two: {result}");
        assert_eq!(
            &interfaces[..3],
            prev["interfaces"].as_array().unwrap().as_slice(),
            "bridge's interfaces come first, as they were"
        );
        assert_eq!(interfaces[3]["name"], host_ifname(&l1, side));
        assert_eq!(interfaces[4]["name"], ifname);
        assert_eq!(interfaces[4]["sandbox"], pod.netns_path());
        let ips = result["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "{result}");
        assert_eq!(ips[0], prev["ips"][0], "bridge's address is kept as it was");
        assert_eq!(ips[1]["address"], format!("{}/24", link_ip(host)));
        assert_eq!(ips[1]["interface"], 4, "ratchet's address points past bridge's interfaces");
        if is_legacy(version) {
            assert_eq!(ips[1]["version"], "4");
        } else {
            assert!(ips[1].get("version").is_none(), "{result}");
        }
        assert!(pod.link("eth0").is_some(), "ratchet left bridge's eth0 alone");
        cached.push(result);
    }
    assert!(alpha.ping(&link_ip(2)), "across ratchet's link");
    assert!(alpha.ping(cached[1]["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap()), "across bridge");

    for (pod, result) in [(&alpha, &cached[0]), (&beta, &cached[1])] {
        let check = node.check(pod, &config, result);
        if has_check(version) {
            check.assert_silent_success("chained CHECK");
        } else {
            check.assert_error(1, &["CHECK"]);
        }
    }

    // The runtime DELs the list in reverse: ratchet, then bridge.
    for (pod, result) in [(&alpha, &cached[0]), (&beta, &cached[1])] {
        node.call_pod("DEL", pod, &with_prev_result(&config, result)).assert_silent_success("chained DEL");
        assert!(pod.link("eth0").is_some(), "ratchet's DEL leaves bridge's part to bridge");
        let reply = reference_plugin("bridge", "DEL", pod, &bridge_conf(&bridge, &ipam, version));
        assert!(reply.success, "bridge DEL: {}", reply.stdout);
    }
    assert!(host_link_gone(&host_ifname(&l1, Side::A)) && host_link_gone(&host_ifname(&l1, Side::B)));
    assert!(alpha.link_gone("in1") && beta.link_gone("in2"));
    assert_eq!(node.link_state(&l1), "down");
    assert!(bridge.ports().is_empty() && ipam.allocated(NETWORK).is_empty());
}

ratchet_tests::per_version!(chained_after_bridge);

/// A prevResult with every part a result can have, in `version`'s layout.
fn rich_prev_result(version: &str, pod: &Pod) -> Value {
    let mut prev = json!({
        "cniVersion": version,
        "interfaces": [
            {"name": "cni0", "mac": "02:00:00:00:00:01"},
            {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": pod.netns_path()},
        ],
        "ips": [
            {"interface": 1, "address": "10.153.9.5/24", "gateway": "10.153.9.1"},
            {"interface": 1, "address": "fd53::5/64"},
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.153.9.1"}, {"dst": "::/0"}],
        "dns": {"nameservers": ["10.153.9.53"], "domain": "cluster.local", "search": ["default.svc.cluster.local"], "options": ["ndots:5"]},
    });
    if is_legacy(version) {
        prev["ips"][0]["version"] = json!("4");
        prev["ips"][1]["version"] = json!("6");
    }
    if version == "1.1.0" {
        // The fields 1.1.0 added to interfaces and routes.
        prev["interfaces"][1]["mtu"] = json!(1450);
        prev["interfaces"][1]["socketPath"] = json!("/run/vhost-user/eth0.sock");
        prev["interfaces"][1]["pciID"] = json!("0000:00:1f.6");
        prev["routes"][0]["mtu"] = json!(1400);
        prev["routes"][0]["advmss"] = json!(1360);
        prev["routes"][0]["priority"] = json!(100);
        prev["routes"][0]["table"] = json!(254);
        prev["routes"][0]["scope"] = json!(0);
    }
    prev
}

#[test]
fn a_pod_without_links_gets_the_prev_result_back_unchanged() {
    let node = Node::new();
    let plain = Pod::new("default", "plain");
    for version in VERSIONS {
        let prev = rich_prev_result(version, &plain);
        let config = with_prev_result(&node.config_for(version), &prev);
        let reply = node.call_pod("ADD", &plain, &config);
        assert!(reply.success, "{version}: {}", reply.stdout);
        assert_eq!(reply.json, prev, "{version}: the prevResult passes through unchanged");
        if has_check(version) {
            node.call_pod("CHECK", &plain, &config).assert_silent_success("CHECK of a pod ratchet gave nothing");
        }
        node.call_pod("DEL", &plain, &config).assert_silent_success("DEL of a pod ratchet gave nothing");
    }
    assert_eq!(plain.links().len(), 1, "ratchet made nothing in the pod");
}

#[test]
fn a_pod_without_links_gets_bridges_result_back() {
    let node = Node::new();
    let (bridge, ipam) = (Bridge::new(), HostLocal::new("10.153.5.0/24"));
    let plain = Pod::new("default", "plain");
    let prev = bridge_add(&bridge, &ipam, "1.0.0", &plain);
    let reply = node.call_pod("ADD", &plain, &with_prev_result(&node.config(), &prev));
    assert!(reply.success, "{}", reply.stdout);
    let mut expected = prev.clone();
    // bridge prints an empty "dns": {}; a 1.0.0 result may leave it out, and
    // a runtime reads both the same.
    if expected["dns"] == json!({}) && reply.json.get("dns").is_none() {
        expected.as_object_mut().unwrap().remove("dns");
    }
    assert_eq!(reply.json, expected);
    assert!(reference_plugin("bridge", "DEL", &plain, &bridge_conf(&bridge, &ipam, "1.0.0")).success);
}

#[test]
fn a_prev_result_of_another_version_is_refused() {
    let node = Node::new();
    let (alpha, beta, plain) =
        (Pod::new("default", "alpha"), Pod::new("default", "beta"), Pod::new("default", "plain"));
    let l1 = unique("lk");
    node.apply(&json!({"links": [{"name": l1, "a": end(&alpha, "in1", &["10.163.8.1/24"]), "b": end(&beta, "in2", &["10.163.8.2/24"])}]}));
    for pod in [&alpha, &plain] {
        let prev = rich_prev_result("0.4.0", pod);
        let reply = node.call_pod("ADD", pod, &with_prev_result(&node.config(), &prev));
        reply.assert_error(1, &["prevResult", "0.4.0", "1.0.0"]);
        assert_eq!(reply.json["cniVersion"], "1.0.0");
    }
    assert!(alpha.link("in1").is_none(), "nothing made");
    assert!(!host_has_link(&host_ifname(&l1, Side::A)));
    assert_eq!(node.link_state(&l1), "down");
}

#[test]
fn alone_cni_ifname_must_be_free_chained_it_is_the_earlier_plugins() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let l1 = unique("lk");
    node.apply(&json!({"links": [{"name": l1, "a": end(&alpha, "in1", &["10.163.9.1/24"]), "b": end(&beta, "in2", &["10.163.9.2/24"])}]}));
    assert!(alpha.exec(&["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"]).status.success());

    // Alone, ratchet answers for CNI_IFNAME: someone else's eth0 is a conflict.
    node.call_pod("ADD", &alpha, &node.config()).assert_error(102, &["eth0", &alpha.netns_path()]);
    assert!(alpha.link("in1").is_none());
    assert_eq!(node.link_state(&l1), "down");

    // Chained, eth0 is what the earlier plugin made.
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": alpha.netns_path()}]});
    let reply = node.call_pod("ADD", &alpha, &with_prev_result(&node.config(), &prev));
    assert!(reply.success, "{}", reply.stdout);
    assert_eq!(reply.json["interfaces"][0]["name"], "eth0");
    assert_eq!(reply.json["interfaces"][2]["name"], "in1");
}
