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
        .args(["--state-dir", node.state_dir.path().to_str().unwrap(), "topology", "apply", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not valid JSON"),
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
