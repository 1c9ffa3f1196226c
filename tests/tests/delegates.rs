//! The seed's standalone mode with the real reference plugins, which ratchet
//! runs through the CNI protocol as a runtime would: `delegate` serves pods
//! without links (they get its result), `boot_network` is the primary
//! network of linked pods (run first, ratchet's links merged after it).
//! CHECK and DEL reach them, and a failure on either side undoes the other.
//!
//! Debian's plugins (1.1.1) speak CNI up to 1.0.0, so under a 1.1.0 config
//! the delegate's own config says 1.0.0.

use std::{os::unix::fs::PermissionsExt, path::Path};

use ratchet_plugin::{naming::host_ifname, topology::Side};
use ratchet_tests::{
    Bridge, HostLocal, Node, Pod, end, has_check, host_has_link, host_link_gone, is_legacy, reference_plugin, unique,
    with_prev_result,
};
use serde_json::{Value, json};

/// The network name delegates inherit from ratchet's config; host-local
/// keeps its allocations under it.
const NETWORK: &str = "ratchet-test";

/// A bridge + host-local config as the seed's `delegate` or `boot_network`
/// carried it: no name, and no cniVersion unless `version` pins one.
fn bridge_conf(bridge: &Bridge, ipam: &HostLocal, version: Option<&str>) -> Value {
    let mut conf = json!({"type": "bridge", "bridge": bridge.name, "isGateway": true, "ipam": ipam.ipam()});
    if let Some(version) = version {
        conf["cniVersion"] = json!(version);
    }
    conf
}

/// The version a delegate's config must pin under ratchet's `version`.
fn delegate_version(version: &str) -> Option<&'static str> {
    (version == "1.1.0").then_some("1.0.0")
}

/// The address without its prefix length, as host-local names its files.
fn bare(address: &Value) -> String {
    address.as_str().unwrap().split('/').next().unwrap().to_owned()
}

/// The interface names of a result, in order.
fn names(result: &Value) -> Vec<String> {
    result["interfaces"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_owned()).collect()
}

/// An IP entry of a result: on interface `index`, in the layout of `version`.
fn assert_ip(ip: &Value, version: &str, index: u64, prefix: &str) {
    assert_eq!(ip["interface"], index, "{ip}");
    assert!(ip["address"].as_str().unwrap().starts_with(prefix), "{ip} should be in {prefix}");
    if is_legacy(version) {
        assert_eq!(ip["version"], "4", "{version} marks the family: {ip}");
    } else {
        assert!(ip.get("version").is_none(), "{version} has no ips[].version: {ip}");
    }
}

/// Ratchet's own part is absent: no host end, no pod end, no record.
fn nothing_of_ratchets(node: &Node, pod: &Pod, link: &str, ifname: &str) {
    assert!(host_link_gone(&host_ifname(link, Side::A)), "no host end");
    assert!(pod.link_gone(ifname), "no pod end");
    assert_eq!(node.link_state(link), "down", "no record");
}

fn delegate_serves_a_pod_without_links(version: &str, subnet: u8) {
    let node = Node::new();
    let (bridge, ipam) = (Bridge::new(), HostLocal::new(&format!("10.150.{subnet}.0/24")));
    let mut config = node.config_for(version);
    config["delegate"] = bridge_conf(&bridge, &ipam, delegate_version(version));
    let pod = Pod::new("default", "plain");

    let added = node.call_pod("ADD", &pod, &config);
    assert!(added.success, "ADD through the delegate: {}", added.stdout);
    let result = &added.json;
    assert_eq!(result["cniVersion"], version, "{result}");
    let interfaces = names(result);
    assert_eq!(interfaces.len(), 3, "bridge's result: bridge, host veth, eth0: {result}");
    assert_eq!((interfaces[0].as_str(), interfaces[2].as_str()), (bridge.name.as_str(), "eth0"));
    assert_eq!(result["interfaces"][2]["sandbox"], pod.netns_path());
    assert_eq!(bridge.ports(), [interfaces[1].clone()], "its host veth is on the bridge");
    let ips = result["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 1, "{result}");
    assert_ip(&ips[0], version, 2, &format!("10.150.{subnet}."));
    assert_eq!(ips[0]["gateway"], format!("10.150.{subnet}.1"));
    assert_eq!(pod.addresses("eth0"), [ips[0]["address"].as_str().unwrap()], "eth0 has the address");
    assert_eq!(ipam.allocated(NETWORK), [bare(&ips[0]["address"])], "host-local holds it");

    let check = node.check(&pod, &config, result);
    if has_check(version) {
        check.assert_silent_success("CHECK through the delegate");
    } else {
        check.assert_error(1, &["CHECK"]);
    }

    node.call_pod("DEL", &pod, &with_prev_result(&config, result)).assert_silent_success("DEL through the delegate");
    assert!(!host_has_link(&interfaces[1]), "the delegate's host veth is gone");
    assert!(pod.link("eth0").is_none(), "and eth0");
    assert!(ipam.allocated(NETWORK).is_empty(), "the address is released");
}

/// Two linked pods, each with bridge's eth0 first and ratchet's link after.
fn boot_network_serves_linked_pods(version: &str, subnet: u8) {
    let node = Node::new();
    let (bridge, ipam) = (Bridge::new(), HostLocal::new(&format!("10.151.{subnet}.0/24")));
    let mut config = node.config_for(version);
    config["boot_network"] = bridge_conf(&bridge, &ipam, delegate_version(version));
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let l1 = unique("lk");
    let link_ip = |host: u8| format!("10.161.{subnet}.{host}");
    node.apply(&json!({"links": [{"name": l1, "a": end(&alpha, "in1", &[&format!("{}/24", link_ip(1))]), "b": end(&beta, "in2", &[&format!("{}/24", link_ip(2))])}]}));

    let mut cached = Vec::new();
    for (pod, side, ifname, host) in [(&alpha, Side::A, "in1", 1), (&beta, Side::B, "in2", 2)] {
        let added = node.call_pod("ADD", pod, &config);
        assert!(added.success, "ADD with a boot network: {}", added.stdout);
        let result = added.json;
        assert_eq!(result["cniVersion"], version, "{result}");
        let interfaces = names(&result);
        assert_eq!(interfaces.len(), 5, "bridge's three, then ratchet's two: {result}");
        assert_eq!(interfaces[0], bridge.name);
        assert_eq!(interfaces[2], "eth0");
        assert_eq!(interfaces[3], host_ifname(&l1, side), "ratchet's host end after bridge's");
        assert_eq!(interfaces[4], ifname);
        assert_eq!(result["interfaces"][2]["sandbox"], pod.netns_path());
        assert_eq!(result["interfaces"][4]["sandbox"], pod.netns_path());
        let ips = result["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "{result}");
        assert_ip(&ips[0], version, 2, &format!("10.151.{subnet}."));
        assert_ip(&ips[1], version, 4, &format!("{}/24", link_ip(host)));
        assert_eq!(pod.addresses("eth0"), [ips[0]["address"].as_str().unwrap()]);
        cached.push(result);
    }
    assert_eq!(node.link_state(&l1), "up");
    assert!(alpha.ping(&link_ip(2)), "across ratchet's link");
    assert!(alpha.ping(&bare(&cached[1]["ips"][0]["address"])), "across the boot network's bridge");
    assert_eq!(bridge.ports().len(), 2);
    assert_eq!(ipam.allocated(NETWORK).len(), 2);

    if has_check(version) {
        node.check(&alpha, &config, &cached[0]).assert_silent_success("CHECK with a boot network");
        node.check(&beta, &config, &cached[1]).assert_silent_success("CHECK with a boot network");
        // Drift in the boot network's part is found by the boot network.
        assert!(alpha.exec(&["ip", "address", "flush", "dev", "eth0"]).status.success());
        let reply = node.check(&alpha, &config, &cached[0]);
        assert!(!reply.success, "CHECK reaches bridge: {}", reply.stdout);
        assert_ne!(reply.code(), Some(105), "ratchet's part is intact: {}", reply.stdout);
        assert!(reply.error_text().contains("boot_network plugin bridge"), "{}", reply.stdout);
    } else {
        node.check(&alpha, &config, &cached[0]).assert_error(1, &["CHECK"]);
    }

    for (pod, result) in [(&alpha, &cached[0]), (&beta, &cached[1])] {
        node.call_pod("DEL", pod, &with_prev_result(&config, result)).assert_silent_success("DEL with a boot network");
    }
    assert!(bridge.ports().is_empty(), "bridge's host veths are gone");
    assert!(ipam.allocated(NETWORK).is_empty(), "its addresses are released");
    assert!(alpha.link("eth0").is_none() && beta.link("eth0").is_none());
    nothing_of_ratchets(&node, &alpha, &l1, "in1");
    assert!(host_link_gone(&host_ifname(&l1, Side::B)));
}

ratchet_tests::per_version!(delegate_serves_a_pod_without_links, boot_network_serves_linked_pods);

#[test]
fn ptp_as_boot_network() {
    let node = Node::new();
    let ipam = HostLocal::new("10.152.1.0/24");
    let mut config = node.config();
    config["boot_network"] = json!({"type": "ptp", "ipam": ipam.ipam()});
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let l1 = unique("lk");
    node.apply(&json!({"links": [{"name": l1, "a": end(&alpha, "in1", &["10.162.1.1/24"]), "b": end(&beta, "in2", &["10.162.1.2/24"])}]}));

    let mut cached = Vec::new();
    for pod in [&alpha, &beta] {
        let added = node.call_pod("ADD", pod, &config);
        assert!(added.success, "ADD with ptp as boot network: {}", added.stdout);
        let result = added.json;
        let interfaces = names(&result);
        assert_eq!(interfaces.len(), 4, "ptp's host veth and eth0, then ratchet's two: {result}");
        assert_eq!(interfaces[1], "eth0");
        assert!(interfaces[2].starts_with("rt"));
        let ips = result["ips"].as_array().unwrap();
        assert_ip(&ips[0], "1.0.0", 1, "10.152.1.");
        assert_ip(&ips[1], "1.0.0", 3, "10.162.1.");
        cached.push(result);
    }
    assert!(alpha.ping("10.162.1.2"), "across ratchet's link");
    let gateway = cached[0]["ips"][0]["gateway"].as_str().unwrap();
    assert!(alpha.ping(gateway), "to the host over ptp");
    node.check(&alpha, &config, &cached[0]).assert_silent_success("CHECK with ptp");

    let ptp_hosts: Vec<String> = cached.iter().map(|r| names(r)[0].clone()).collect();
    for (pod, result) in [(&alpha, &cached[0]), (&beta, &cached[1])] {
        node.call_pod("DEL", pod, &with_prev_result(&config, result)).assert_silent_success("DEL with ptp");
    }
    assert!(ptp_hosts.iter().all(|h| !host_has_link(h)), "ptp's host veths are gone");
    assert!(ipam.allocated(NETWORK).is_empty());
    nothing_of_ratchets(&node, &alpha, &l1, "in1");
}

#[test]
fn the_seed_config_shape_serves_both_kinds_of_pod() {
    let node = Node::new();
    let (plain_bridge, plain_ipam) = (Bridge::new(), HostLocal::new("10.152.4.0/24"));
    let (boot_bridge, boot_ipam) = (Bridge::new(), HostLocal::new("10.152.5.0/24"));
    let mut config = node.config();
    config["delegate"] = bridge_conf(&plain_bridge, &plain_ipam, None);
    config["boot_network"] = bridge_conf(&boot_bridge, &boot_ipam, None);
    // etcd_host/etcd_port are the seed's too, but they now select the etcd
    // store: the etcd tests cover them.
    for (key, value) in [("use_labels", json!(true)), ("child_path", json!("/opt/cni/bin/ratchet-child"))] {
        config[key] = value;
    }
    let (alpha, beta, plain) =
        (Pod::new("default", "alpha"), Pod::new("default", "beta"), Pod::new("default", "plain"));
    let l1 = unique("lk");
    node.apply(&json!({"links": [{"name": l1, "a": end(&alpha, "in1", &["10.162.5.1/24"]), "b": end(&beta, "in2", &["10.162.5.2/24"])}]}));

    let linked = node.call_pod("ADD", &alpha, &config);
    assert!(linked.success, "{}", linked.stdout);
    assert_eq!(names(&linked.json)[0], boot_bridge.name, "a linked pod gets the boot network");
    assert!(alpha.link("in1").is_some());
    let unlinked = node.call_pod("ADD", &plain, &config);
    assert!(unlinked.success, "{}", unlinked.stdout);
    assert_eq!(names(&unlinked.json).len(), 3, "an unlinked pod gets only the delegate's result: {}", unlinked.json);
    assert_eq!(names(&unlinked.json)[0], plain_bridge.name);
    assert_eq!((boot_ipam.allocated(NETWORK).len(), plain_ipam.allocated(NETWORK).len()), (1, 1));

    node.call_pod("DEL", &plain, &with_prev_result(&config, &unlinked.json))
        .assert_silent_success("DEL of the unlinked pod");
    assert_eq!(
        (boot_ipam.allocated(NETWORK).len(), plain_ipam.allocated(NETWORK).len()),
        (1, 0),
        "only the delegate released"
    );
    node.call_pod("DEL", &alpha, &with_prev_result(&config, &linked.json))
        .assert_silent_success("DEL of the linked pod");
    assert_eq!(boot_ipam.allocated(NETWORK).len(), 0);
    nothing_of_ratchets(&node, &alpha, &l1, "in1");
}

#[test]
fn a_delegate_missing_from_cni_path_is_104() {
    let node = Node::new();
    let mut config = node.config();
    config["delegate"] = json!({"type": "ratchet-no-such-plugin"});
    config["boot_network"] = json!({"type": "ratchet-no-such-boot"});
    let (alpha, beta, plain) =
        (Pod::new("default", "alpha"), Pod::new("default", "beta"), Pod::new("default", "plain"));
    let l1 = unique("lk");
    node.apply(&json!({"links": [{"name": l1, "a": end(&alpha, "in1", &["10.162.6.1/24"]), "b": end(&beta, "in2", &["10.162.6.2/24"])}]}));

    node.call_pod("ADD", &plain, &config).assert_error(104, &["delegate", "ratchet-no-such-plugin", "CNI_PATH"]);
    assert_eq!(plain.links().len(), 1, "only lo in the pod");
    node.call_pod("ADD", &alpha, &config).assert_error(104, &["boot_network", "ratchet-no-such-boot", "CNI_PATH"]);
    assert_eq!(alpha.links().len(), 1, "only lo in the pod");
    nothing_of_ratchets(&node, &alpha, &l1, "in1");
}

#[test]
fn a_failing_delegate_passes_its_own_error_through() {
    let node = Node::new();
    let bridge = Bridge::new();
    let ipam = HostLocal::new("10.999.0.0/24");
    let conf = bridge_conf(&bridge, &ipam, None);
    // What bridge itself answers to this config, run as the first plugin.
    let witness = Pod::new("default", "witness");
    let mut direct_conf = conf.clone();
    direct_conf["name"] = json!(NETWORK);
    direct_conf["cniVersion"] = json!("1.0.0");
    let direct = reference_plugin("bridge", "ADD", &witness, &direct_conf);
    assert!(!direct.success && direct.code().is_some(), "bridge refuses the subnet: {}", direct.stdout);
    let direct_msg = direct.json["msg"].as_str().unwrap();
    assert!(direct_msg.contains("10.999.0.0/24"), "{direct_msg}");

    let (alpha, beta, plain) =
        (Pod::new("default", "alpha"), Pod::new("default", "beta"), Pod::new("default", "plain"));
    let l1 = unique("lk");
    node.apply(&json!({"links": [{"name": l1, "a": end(&alpha, "in1", &["10.162.7.1/24"]), "b": end(&beta, "in2", &["10.162.7.2/24"])}]}));
    for (role, pod) in [("boot_network", &alpha), ("delegate", &plain)] {
        let mut config = node.config();
        config[role] = conf.clone();
        let reply = node.call_pod("ADD", pod, &config);
        reply.assert_error(direct.code().unwrap(), &[direct_msg, &format!("{role} plugin bridge")]);
        assert_eq!(reply.json["cniVersion"], "1.0.0");
    }
    nothing_of_ratchets(&node, &alpha, &l1, "in1");
    assert!(ipam.allocated(NETWORK).is_empty());
}

#[test]
fn a_delegate_refusing_the_version_passes_its_code_1_through() {
    let node = Node::new();
    let (bridge, ipam) = (Bridge::new(), HostLocal::new("10.152.8.0/24"));
    let mut config = node.config_for("1.1.0");
    // No cniVersion of its own: it inherits 1.1.0, which bridge 1.1.1 does not speak.
    config["delegate"] = bridge_conf(&bridge, &ipam, None);
    let plain = Pod::new("default", "plain");
    let reply = node.call_pod("ADD", &plain, &config);
    reply.assert_error(1, &["delegate plugin bridge", "1.1.0"]);
    assert!(ipam.allocated(NETWORK).is_empty());
}

#[test]
fn a_ratchet_failure_after_the_boot_network_deletes_it_again() {
    let node = Node::new();
    let (bridge, ipam) = (Bridge::new(), HostLocal::new("10.152.3.0/24"));
    let mut config = node.config();
    config["boot_network"] = bridge_conf(&bridge, &ipam, None);
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let l1 = unique("lk");
    node.apply(&json!({"links": [{"name": l1, "a": end(&alpha, "in1", &["10.162.3.1/24"]), "b": end(&beta, "in2", &["10.162.3.2/24"])}]}));
    assert!(alpha.exec(&["ip", "link", "add", "in1", "type", "veth", "peer", "name", "in1peer"]).status.success());

    let reply = node.call_pod("ADD", &alpha, &config);
    reply.assert_error(102, &["in1"]);
    assert!(bridge.ports().is_empty(), "bridge's host veth is gone again");
    assert!(ipam.allocated(NETWORK).is_empty(), "and its address released");
    assert!(alpha.link("eth0").is_none(), "no eth0 left in the pod");
    assert!(alpha.link("in1peer").is_some(), "the pod's own in1 is untouched");
    assert!(!host_has_link(&host_ifname(&l1, Side::A)));
    assert_eq!(node.link_state(&l1), "down");
    // The runtime's DEL after a failed ADD finds nothing to undo.
    node.call_pod("DEL", &alpha, &config).assert_silent_success("DEL after the failed ADD");
}

#[test]
fn status_and_gc_skip_a_delegate_that_predates_them() {
    let node = Node::new();
    let (bridge, ipam) = (Bridge::new(), HostLocal::new("10.152.6.0/24"));
    let mut config = node.config_for("1.1.0");
    config["delegate"] = bridge_conf(&bridge, &ipam, Some("1.0.0"));
    let plain = Pod::new("default", "plain");
    let added = node.call_pod("ADD", &plain, &config);
    assert!(added.success, "{}", added.stdout);
    assert_eq!(added.json["cniVersion"], "1.1.0", "the result is in ratchet's version");

    node.status(&config).assert_silent_success("STATUS (bridge 1.0.0 knows no STATUS)");
    node.gc(&config, &[]).assert_silent_success("GC (bridge 1.0.0 knows no GC)");
    assert_eq!(ipam.allocated(NETWORK).len(), 1, "GC was not sent to a delegate that predates it");
    assert!(plain.link("eth0").is_some());
    node.call_pod("DEL", &plain, &with_prev_result(&config, &added.json)).assert_silent_success("DEL");
    assert!(ipam.allocated(NETWORK).is_empty());
}

/// A stand-in delegate, for what no reference plugin here does (speak
/// 1.1.0, fail on purpose): it records each call's environment and stdin,
/// and answers the verbs in `errors` with that error object and exit 1.
fn recording_stub(dir: &Path, errors: &[(&str, &str)]) {
    let answers: String = errors
        .iter()
        .map(|(verb, error)| format!("if [ \"$CNI_COMMAND\" = {verb} ]; then echo '{error}'; exit 1; fi\n"))
        .collect();
    let script = format!(
        "#!/bin/sh\nenv > \"{dir}/env.$CNI_COMMAND\"\ncat > \"{dir}/stdin.$CNI_COMMAND\"\n{answers}exit 0\n",
        dir = dir.display()
    );
    let path = dir.join("ratchet-stub");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn status_and_gc_reach_a_1_1_0_delegate() {
    let node = Node::new();
    let stub = tempfile::tempdir().unwrap();
    recording_stub(stub.path(), &[]);
    let cni_path = format!("{}:/usr/lib/cni", stub.path().display());
    let mut config = node.config_for("1.1.0");
    config["boot_network"] = json!({"type": "ratchet-stub", "marker": "boot"});

    node.call_node_verb("STATUS", &config, &cni_path).assert_silent_success("STATUS");
    let env = std::fs::read_to_string(stub.path().join("env.STATUS")).expect("STATUS reached the delegate");
    assert!(env.lines().any(|l| l == "CNI_COMMAND=STATUS"), "{env}");
    assert!(env.lines().any(|l| l == format!("CNI_PATH={cni_path}")), "{env}");
    for absent in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
        assert!(!env.contains(absent), "STATUS carries no {absent}: {env}");
    }
    let stdin: Value =
        serde_json::from_str(&std::fs::read_to_string(stub.path().join("stdin.STATUS")).unwrap()).unwrap();
    assert_eq!(
        (&stdin["type"], &stdin["name"], &stdin["cniVersion"], &stdin["marker"]),
        (&json!("ratchet-stub"), &json!(NETWORK), &json!("1.1.0"), &json!("boot"))
    );

    let valid = [("c-one".to_owned(), "eth0"), ("c-two".to_owned(), "net1")];
    let gc_config = ratchet_tests::with_valid_attachments(&config, &valid);
    node.call_node_verb("GC", &gc_config, &cni_path).assert_silent_success("GC");
    let stdin: Value =
        serde_json::from_str(&std::fs::read_to_string(stub.path().join("stdin.GC")).expect("GC reached the delegate"))
            .unwrap();
    assert_eq!(
        stdin["cni.dev/valid-attachments"], gc_config["cni.dev/valid-attachments"],
        "the delegate gets the same list"
    );
}

#[test]
fn a_delegate_not_ready_makes_status_fail_with_its_code() {
    let node = Node::new();
    let stub = tempfile::tempdir().unwrap();
    recording_stub(
        stub.path(),
        &[(
            "STATUS",
            r#"{"cniVersion": "1.1.0", "code": 50, "msg": "Plugin not available", "details": "the stub is not ready"}"#,
        )],
    );
    let cni_path = format!("{}:/usr/lib/cni", stub.path().display());
    let mut config = node.config_for("1.1.0");
    config["delegate"] = json!({"type": "ratchet-stub"});
    node.call_node_verb("STATUS", &config, &cni_path)
        .assert_error(50, &["delegate plugin ratchet-stub", "the stub is not ready"]);
}

#[test]
fn a_delegate_error_keeps_its_message() {
    let node = Node::new();
    let stub = tempfile::tempdir().unwrap();
    // As the reference skel words many errors: a spec code, a msg, no details.
    recording_stub(stub.path(), &[("ADD", r#"{"code": 7, "msg": "bridge name rtbr-stub-is-bad is not valid"}"#)]);
    let cni_path = format!("{}:/usr/lib/cni", stub.path().display());
    let mut config = node.config();
    config["delegate"] = json!({"type": "ratchet-stub"});
    let plain = Pod::new("default", "plain");
    let container = ratchet_tests::container_of(&plain);
    let netns = plain.netns_path();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", container.as_str()),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", cni_path.as_str()),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=plain"),
    ];
    let reply = node.call_raw(&env, config.to_string().as_bytes());
    reply.assert_error(7, &["delegate plugin ratchet-stub", "bridge name rtbr-stub-is-bad is not valid"]);
}

#[test]
fn del_with_a_boot_network_is_repeatable_with_an_empty_netns() {
    let node = Node::new();
    let (bridge, ipam) = (Bridge::new(), HostLocal::new("10.152.9.0/24"));
    let mut config = node.config();
    config["boot_network"] = bridge_conf(&bridge, &ipam, None);
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let l1 = unique("lk");
    node.apply(&json!({"links": [{"name": l1, "a": end(&alpha, "in1", &["10.162.9.1/24"]), "b": end(&beta, "in2", &["10.162.9.2/24"])}]}));
    let added = node.call_pod("ADD", &alpha, &config);
    assert!(added.success, "{}", added.stdout);
    let config = with_prev_result(&config, &added.json);

    node.call_pod("DEL", &alpha, &config).assert_silent_success("DEL");
    // containerd's second DEL, once the sandbox is gone: CNI_NETNS is empty.
    let container = ratchet_tests::container_of(&alpha);
    let again = node.call("DEL", &container, "", ("default", "alpha"), &config);
    again.assert_silent_success("DEL again with an empty CNI_NETNS");
    assert!(bridge.ports().is_empty() && ipam.allocated(NETWORK).is_empty());
    nothing_of_ratchets(&node, &alpha, &l1, "in1");
}

#[test]
fn a_conflist_delegate_runs_its_plugins_in_order_at_its_best_version() {
    let node = Node::new();
    let (bridge, ipam) = (Bridge::new(), HostLocal::new("10.152.10.0/24"));
    let mut config = node.config();
    let first = bridge_conf(&bridge, &ipam, None);
    // tuning only works on a prevResult: it proves bridge's result reached it.
    config["delegate"] = json!({"name": "plain-list", "cniVersions": ["0.4.0", "1.0.0", "9.9.9"],
        "plugins": [first, {"type": "tuning", "mtu": 1400}]});
    let pod = Pod::new("default", "plain");

    let added = node.call_pod("ADD", &pod, &config);
    assert!(added.success, "ADD through a conflist delegate: {}", added.stdout);
    assert_eq!(names(&added.json).len(), 3, "{}", added.json);
    assert_eq!(pod.link("eth0").unwrap()["mtu"], 1400, "tuning ran after bridge, on its result");
    let address = bare(&added.json["ips"][0]["address"]);
    assert_eq!(ipam.allocated("plain-list"), [address], "the list's name reached bridge's IPAM");

    node.check(&pod, &config, &added.json).assert_silent_success("CHECK through the conflist");
    node.call_pod("DEL", &pod, &with_prev_result(&config, &added.json))
        .assert_silent_success("DEL through the conflist");
    assert!(bridge.ports().is_empty(), "bridge's veth is gone");
    assert!(ipam.allocated("plain-list").is_empty(), "the address is released");
}

#[test]
fn a_conflist_delegate_with_no_version_ratchet_speaks_is_refused() {
    let node = Node::new();
    let mut config = node.config();
    config["delegate"] = json!({"name": "x", "cniVersions": ["9.9.9"], "plugins": [{"type": "bridge"}]});
    let pod = Pod::new("default", "plain");
    node.call_pod("ADD", &pod, &config).assert_error(7, &["delegate", "9.9.9"]);
}
