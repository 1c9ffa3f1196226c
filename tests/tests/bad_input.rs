//! Bad input gets a CNI error with the right code, on stdout, a non-zero
//! exit, and nothing left behind.

use ratchet_plugin::{naming::host_ifname, topology::Side};
use ratchet_tests::{Node, Pod, container_of, end, host_has_link, ratchet_bin, unique};
use serde_json::json;

fn assert_error(reply: &ratchet_tests::Reply, code: u64, mentions: &str) {
    assert!(!reply.success, "should fail: {}", reply.stdout);
    assert_eq!(reply.code(), Some(code), "{}", reply.stdout);
    assert_eq!(reply.json["cniVersion"], "1.0.0");
    let text = format!("{} {}", reply.json["msg"], reply.json["details"]);
    assert!(text.contains(mentions), "{text:?} should mention {mentions:?}");
}

/// Two pods and one link between them, applied but not added.
fn pair(node: &Node) -> (Pod, Pod, String) {
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let l1 = unique("lk");
    node.apply(&json!({"links": [{"name": l1,
        "a": end(&alpha, "in1", &["10.81.0.1/24"]), "b": end(&beta, "in2", &["10.81.0.2/24"])}]}));
    (alpha, beta, l1)
}

fn nothing_left(node: &Node, alpha: &Pod, link: &str) {
    assert!(!host_has_link(&host_ifname(link, Side::A)), "no host veth left");
    assert_eq!(alpha.links().len(), 1, "only lo in the pod: {:?}", alpha.links());
    assert_eq!(node.link_state(link), "down", "no record left");
}

#[test]
fn malformed_json_is_a_decoding_error() {
    let node = Node::new();
    let (alpha, _beta, l1) = pair(&node);
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", &alpha.netns_path()[..]),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=alpha"),
    ];
    let reply = node.call_raw(&env, b"{\"cniVersion\": \"1.0.0\", ");
    assert_error(&reply, 6, "config on stdin");
    nothing_left(&node, &alpha, &l1);
}

#[test]
fn missing_env_names_the_variable() {
    let node = Node::new();
    let (alpha, _beta, l1) = pair(&node);
    let config = node.config().to_string();
    let env = [("CNI_COMMAND", "ADD"), ("CNI_NETNS", &alpha.netns_path()[..]), ("CNI_IFNAME", "eth0")];
    assert_error(&node.call_raw(&env, config.as_bytes()), 4, "CNI_CONTAINERID");
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", &alpha.netns_path()[..]),
        ("CNI_IFNAME", "eth0"),
    ];
    assert_error(&node.call_raw(&env, config.as_bytes()), 4, "K8S_POD_NAMESPACE");
    nothing_left(&node, &alpha, &l1);
}

#[test]
fn a_pod_in_no_link_is_refused() {
    let node = Node::new();
    let (alpha, _beta, l1) = pair(&node);
    let stranger = Pod::new("default", "stranger");
    let reply =
        node.call("ADD", &container_of(&stranger), &stranger.netns_path(), ("default", "stranger"), &node.config());
    assert_error(&reply, 101, "default/stranger");
    assert_eq!(stranger.links().len(), 1);
    nothing_left(&node, &alpha, &l1);
}

#[test]
fn an_ifname_taken_in_the_pod_is_refused() {
    let node = Node::new();
    let (alpha, _beta, l1) = pair(&node);
    assert!(alpha.exec(&["ip", "link", "add", "in1", "type", "veth", "peer", "name", "in1peer"]).status.success());
    let reply = node.call("ADD", &container_of(&alpha), &alpha.netns_path(), ("default", "alpha"), &node.config());
    assert_error(&reply, 102, "in1");
    assert!(!host_has_link(&host_ifname(&l1, Side::A)), "no host veth left");
    assert!(alpha.link("in1peer").is_some(), "the pod's own in1 is untouched");
    assert_eq!(node.link_state(&l1), "down");
}

#[test]
fn an_invalid_cidr_in_the_config_topology_is_refused() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let mut config = node.config();
    config["topology"] = json!({"links": [{"name": unique("lk"),
        "a": end(&alpha, "in1", &["10.81.0.300/24"]), "b": end(&beta, "in2", &["10.81.0.2/24"])}]});
    let reply = node.call("ADD", &container_of(&alpha), &alpha.netns_path(), ("default", "alpha"), &config);
    assert_error(&reply, 7, "topology");
    assert_eq!(alpha.links().len(), 1);
}

#[test]
fn an_over_long_ifname_is_refused() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let mut config = node.config();
    config["topology"] = json!({"links": [{"name": unique("lk"),
        "a": end(&alpha, "an-ifname-too-long", &["10.81.0.1/24"]), "b": end(&beta, "in2", &["10.81.0.2/24"])}]});
    let reply = node.call("ADD", &container_of(&alpha), &alpha.netns_path(), ("default", "alpha"), &config);
    assert_error(&reply, 7, "an-ifname-too-long");
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", &alpha.netns_path()[..]),
        ("CNI_IFNAME", "eth0-is-far-too-long"),
    ];
    assert_error(&node.call_raw(&env, node.config().to_string().as_bytes()), 4, "CNI_IFNAME");
    assert_eq!(alpha.links().len(), 1);
}

#[test]
fn the_cli_rejects_a_bad_topology_file() {
    let node = Node::new();
    let file = node.state_dir.path().join("bad.json");
    std::fs::write(&file, r#"{"links": [{"a": {"pod": "default/a", "ifname": "in1", "ips": ["10.0.0.1/33"]}, "b": {"pod": "default/b", "ifname": "in1"}}]}"#).unwrap();
    let out = std::process::Command::new(ratchet_bin())
        .args(["--state-dir", node.state_dir.path().to_str().unwrap(), "--pin-root", node.pin_root.to_str().unwrap()])
        .args(["topology", "apply", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(r#"ips[0] "10.0.0.1/33""#),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_unsupported_version_is_refused() {
    let node = Node::new();
    let (alpha, _beta, l1) = pair(&node);
    let mut config = node.config();
    config["cniVersion"] = json!("9.9.9");
    let reply = node.call("ADD", &container_of(&alpha), &alpha.netns_path(), ("default", "alpha"), &config);
    assert!(!reply.success);
    assert_eq!(reply.code(), Some(1), "{}", reply.stdout);
    nothing_left(&node, &alpha, &l1);
}

#[test]
fn a_failure_after_the_veth_exists_rolls_it_back() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let l1 = unique("lk");
    node.apply(&json!({"links": [{"name": l1,
        "a": end(&alpha, "in1", &["10.81.0.1/24", "fd81::1/64"]), "b": end(&beta, "in2", &["10.81.0.2/24"])}]}));
    // With IPv6 off in the pod, the veth is made but its IPv6 address is refused.
    assert!(alpha.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]).status.success());
    assert!(alpha.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]).status.success());
    let reply = node.call("ADD", &container_of(&alpha), &alpha.netns_path(), ("default", "alpha"), &node.config());
    assert_error(&reply, 100, "fd81::1/64");
    nothing_left(&node, &alpha, &l1);

    node.add(&beta);
    assert!(node.peers().is_empty(), "the peer waits: the failed end never counted");
}

/// An IPv4-only link below IPv6's minimum MTU: the veth has no IPv6, so it
/// has no link-local address to switch off. ADD failed here (EAFNOSUPPORT)
/// and, before that was fixed, left its veth pair behind.
#[test]
fn an_ipv4_link_below_1280_bytes_comes_up() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let l1 = unique("lk");
    node.apply(&json!({"links": [{"name": l1, "mtu": 576,
        "a": end(&alpha, "in1", &["10.82.0.1/24"]), "b": end(&beta, "in2", &["10.82.0.2/24"])}]}));
    node.add(&alpha);
    node.add(&beta);
    assert_eq!(alpha.link("in1").unwrap()["mtu"], 576);
    assert!(alpha.ping("10.82.0.2"));
    node.del(&alpha);
    node.del(&beta);
}

/// `cniVersion` must be one ratchet speaks, written exactly: the parser
/// underneath also read "1" and "1.0" as 1.0.0 and "0.4" as 0.4.0.
#[test]
fn a_version_not_written_exactly_is_refused() {
    let node = Node::new();
    let (alpha, _beta, l1) = pair(&node);
    for version in ["1", "1.0", "01.0.0", "0.4", "1.0.0 ", "v1.0.0", ""] {
        let mut config = node.config();
        config["cniVersion"] = json!(version);
        let reply = node.call("ADD", &container_of(&alpha), &alpha.netns_path(), ("default", "alpha"), &config);
        assert_eq!(reply.code(), Some(1), "{version:?}: {}", reply.stdout);
        assert!(reply.error_text().contains("not supported"), "{version:?}: {}", reply.stdout);
    }
    nothing_left(&node, &alpha, &l1);
}

/// VERSION answers in the version asked for when ratchet speaks it, else in
/// the newest it speaks: it never echoes a version it does not know.
#[test]
fn version_never_echoes_an_unknown_version() {
    let node = Node::new();
    for (asked, answered) in
        [("0.4.0", "0.4.0"), ("1.1.0", "1.1.0"), ("9.9.9", "1.1.0"), ("1.0", "1.1.0"), ("x", "1.1.0")]
    {
        let reply = node.call_raw(&[("CNI_COMMAND", "VERSION")], json!({"cniVersion": asked}).to_string().as_bytes());
        assert!(reply.success, "{asked}: {}", reply.stdout);
        assert_eq!(reply.json["cniVersion"], answered, "{asked}: {}", reply.stdout);
    }
}

/// A config without a network name, or with a delegate that is no plugin
/// config, is refused for every pod and verb, not only when a pod first
/// needs the delegate.
#[test]
fn a_missing_name_or_a_malformed_delegate_is_a_config_error() {
    let node = Node::new();
    let (alpha, _beta, l1) = pair(&node);
    let mut nameless = node.config();
    nameless.as_object_mut().unwrap().remove("name");
    let mut bad_name = node.config();
    bad_name["name"] = json!("has space");
    let mut empty_delegate = node.config();
    empty_delegate["delegate"] = json!({});
    let mut plugins_number = node.config();
    plugins_number["boot_network"] = json!({"plugins": 5});
    for (what, config, key) in [
        ("no name", nameless, "name"),
        ("a bad name", bad_name, "name"),
        ("delegate {}", empty_delegate, "delegate"),
        ("boot_network plugins 5", plugins_number, "boot_network"),
    ] {
        for command in ["ADD", "DEL", "CHECK"] {
            let reply = node.call(command, &container_of(&alpha), &alpha.netns_path(), ("default", "alpha"), &config);
            assert_eq!(reply.code(), Some(7), "{what}, {command}: {}", reply.stdout);
            assert!(reply.error_text().contains(key), "{what}, {command}: {}", reply.stdout);
        }
    }
    nothing_left(&node, &alpha, &l1);
}

/// A DEL whose config names another pin root than the ADD's still unwires
/// the end where ADD wired it: no stale counter or forwarding entry.
#[test]
fn del_with_another_pin_root_unwires_where_add_wired() {
    let node = Node::new();
    let (alpha, beta, l1) = pair(&node);
    node.add(&alpha);
    node.add(&beta);
    assert_eq!(node.map_keys("stats").len(), 2);
    let other = Node::new();
    let mut config = node.config();
    config["pin_root"] = json!(other.pin_root);
    for pod in [&alpha, &beta] {
        let reply = node.call("DEL", &container_of(pod), &pod.netns_path(), (&pod.namespace, &pod.name), &config);
        assert!(reply.success, "{}", reply.stdout);
    }
    assert!(node.map_keys("stats").is_empty(), "no stale counters under the ADD's pin root");
    assert!(node.peers().is_empty(), "no stale forwarding entry");
    assert_eq!(node.link_state(&l1), "down");
}

/// A topology that validates is one every ADD can realise: these are
/// refused at `topology apply`, with the link and the reason named.
#[test]
fn topology_apply_refuses_what_no_add_can_make() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = |a: serde_json::Value, b: serde_json::Value| json!({"links": [{"name": "bad", "a": a, "b": b}]});
    let cases = [
        (link(end(&alpha, "in1", &["10.84.0.1/24", "10.84.0.1/24"]), end(&beta, "in1", &[])), "given twice"),
        (link(end(&alpha, "in1", &["224.0.0.5/24"]), end(&beta, "in1", &[])), "multicast"),
        (link(end(&alpha, "in1", &["ff02::5/64"]), end(&beta, "in1", &[])), "multicast"),
        (link(end(&alpha, "lo", &["10.84.0.1/24"]), end(&beta, "in1", &[])), "every netns"),
        (link(end(&alpha, "in1", &["10.221.8.010/24"]), end(&beta, "in1", &[])), "leading zero"),
        (json!([{"name": "bad", "a": end(&alpha, "in1", &[]), "b": end(&beta, "in1", &[])}]), "expected an object"),
    ];
    for (topology, says) in cases {
        let file = node.state_dir.path().join(unique("topology-"));
        std::fs::write(&file, topology.to_string()).unwrap();
        let out = std::process::Command::new(ratchet_bin())
            .args([
                "--state-dir",
                node.state_dir.path().to_str().unwrap(),
                "--pin-root",
                node.pin_root.to_str().unwrap(),
            ])
            .args(["topology", "apply", file.to_str().unwrap()])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && said.contains(says), "{topology}: {said}");
    }
    assert!(node.store_keys("/ratchet/topology/").is_empty());
}
