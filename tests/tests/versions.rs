//! Every supported `cniVersion`, ratchet alone (a secondary network): the
//! ADD result in that version's layout, CHECK where the version has it, DEL,
//! VERSION, and STATUS and GC, which only 1.1.0 has.

use ratchet_plugin::{naming::host_ifname, topology::Side};
use ratchet_tests::{
    Node, Pod, VERSIONS, end, has_check, host_has_link, host_link_gone, is_legacy, unique, with_prev_result,
};
use serde_json::{Value, json};

/// The addresses of the two ends, IPv4 and IPv6 each.
const ALPHA_IPS: [&str; 2] = ["10.82.0.1/24", "fd82::1/64"];
const BETA_IPS: [&str; 2] = ["10.82.0.2/24", "fd82::2/64"];

/// Two pods and the link between them, applied but not added.
fn pair(node: &Node) -> (Pod, Pod, String) {
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let l1 = unique("lk");
    node.apply(
        &json!({"links": [{"name": l1, "a": end(&alpha, "in1", &ALPHA_IPS), "b": end(&beta, "in2", &BETA_IPS)}]}),
    );
    (alpha, beta, l1)
}

/// The result has the version's layout: `cniVersion` echoed, the host end
/// and the pod end, and each address on the pod end, with `version` "4"/"6"
/// in the legacy layouts and without it from 1.0.0.
fn assert_result_shape(result: &Value, version: &str, pod: &Pod, ifname: &str, ips: &[&str]) {
    assert_eq!(result["cniVersion"], version, "{result}");
    let keys: Vec<&String> = result.as_object().unwrap().keys().collect();
    assert!(
        keys.iter().all(|k| ["cniVersion", "interfaces", "ips", "routes", "dns"].contains(&k.as_str())),
        "{keys:?}"
    );
    let interfaces = result["interfaces"].as_array().unwrap();
    assert_eq!(interfaces.len(), 2, "{result}");
    assert!(interfaces[0]["name"].as_str().unwrap().starts_with("rt"), "{result}");
    assert!(interfaces[0].get("sandbox").is_none(), "the host end is on the host: {result}");
    assert_eq!(interfaces[1]["name"], ifname);
    assert_eq!(interfaces[1]["sandbox"], pod.netns_path());
    assert_eq!(interfaces[1]["mac"], pod.link(ifname).unwrap()["address"]);
    for interface in interfaces {
        assert!(interface.get("mtu").is_none() || version == "1.1.0", "mtu is a 1.1.0 field: {result}");
    }
    let listed = result["ips"].as_array().unwrap();
    assert_eq!(listed.len(), ips.len(), "{result}");
    for (ip, expected) in listed.iter().zip(ips) {
        assert_eq!(ip["address"], *expected);
        assert_eq!(ip["interface"], 1, "the pod end: {result}");
        let family = if expected.contains(':') { "6" } else { "4" };
        if is_legacy(version) {
            assert_eq!(ip["version"], family, "{version} marks the family: {result}");
        } else {
            assert!(ip.get("version").is_none(), "{version} has no ips[].version: {result}");
        }
    }
}

/// CHECK is answered as the version says: nothing printed from 0.4.0, code 1
/// (with the version echoed) before it.
fn assert_check(node: &Node, pod: &Pod, version: &str, cached: &Value) {
    let reply = node.check(pod, &node.config_for(version), cached);
    if has_check(version) {
        reply.assert_silent_success(&format!("CHECK {} at {version}", pod.name));
    } else {
        reply.assert_error(1, &["CHECK"]);
        assert_eq!(reply.json["cniVersion"], version, "the error echoes the version");
    }
}

fn add_check_del(version: &str, _: u8) {
    let node = Node::new();
    let (alpha, beta, l1) = pair(&node);
    let config = node.config_for(version);

    let alpha_added = node.call_pod("ADD", &alpha, &config);
    assert!(alpha_added.success, "ADD at {version}: {}", alpha_added.stdout);
    assert_result_shape(&alpha_added.json, version, &alpha, "in1", &ALPHA_IPS);
    assert_eq!(node.link_state(&l1), "waiting");
    assert_check(&node, &alpha, version, &alpha_added.json);

    let beta_added = node.call_pod("ADD", &beta, &config);
    assert!(beta_added.success, "ADD at {version}: {}", beta_added.stdout);
    assert_result_shape(&beta_added.json, version, &beta, "in2", &BETA_IPS);
    assert_eq!(node.link_state(&l1), "up");
    assert!(alpha.ping("10.82.0.2"), "IPv4 across the link");
    assert!(beta.ping("fd82::1"), "IPv6 across the link");
    assert_check(&node, &alpha, version, &alpha_added.json);
    assert_check(&node, &beta, version, &beta_added.json);

    for (pod, cached) in [(&alpha, &alpha_added.json), (&beta, &beta_added.json)] {
        node.call_pod("DEL", pod, &with_prev_result(&config, cached))
            .assert_silent_success(&format!("DEL at {version}"));
    }
    assert!(
        host_link_gone(&host_ifname(&l1, Side::A)) && host_link_gone(&host_ifname(&l1, Side::B)),
        "both host ends are gone"
    );
    assert!(alpha.link_gone("in1") && beta.link_gone("in2"), "both pod ends are gone");
    assert_eq!(node.link_state(&l1), "down");
    assert!(node.peers().is_empty());
}

/// The config in each mode: alone, chained (a prevResult), and the seed's
/// standalone mode (`delegate` and `boot_network`).
fn mode_configs(node: &Node, version: &str) -> Vec<(&'static str, Value)> {
    let alone = node.config_for(version);
    let chained = with_prev_result(&alone, &json!({"cniVersion": version}));
    let mut standalone = alone.clone();
    standalone["delegate"] = json!({"type": "bridge", "bridge": "rt-unused"});
    standalone["boot_network"] = json!({"type": "ptp"});
    vec![("alone", alone), ("chained", chained), ("standalone", standalone)]
}

fn version_lists_all_five(version: &str, _: u8) {
    let node = Node::new();
    let bare = json!({ "cniVersion": version });
    for (mode, config) in [("bare", bare)].into_iter().chain(mode_configs(&node, version)) {
        let reply = node.call_raw(&[("CNI_COMMAND", "VERSION")], config.to_string().as_bytes());
        assert!(reply.success, "{mode}: {}", reply.stdout);
        assert_eq!(reply.json, json!({"cniVersion": version, "supportedVersions": VERSIONS}), "{mode}");
    }
}

/// STATUS and GC exist from 1.1.0; an older config is refused with code 1
/// and GC removes nothing.
fn status_and_gc(version: &str, _: u8) {
    let node = Node::new();
    let (alpha, _beta, l1) = pair(&node);
    let config = node.config_for(version);
    assert!(node.call_pod("ADD", &alpha, &config).success);

    let status = node.status(&config);
    let listed = node.gc(&config, &[(ratchet_tests::container_of(&alpha), "eth0")]);
    if version == "1.1.0" {
        status.assert_silent_success("STATUS at 1.1.0");
        listed.assert_silent_success("GC at 1.1.0");
        assert_eq!(node.link_state(&l1), "waiting", "GC kept the listed end");
        node.gc(&config, &[]).assert_silent_success("GC with an empty list");
        assert_eq!(node.link_state(&l1), "down", "an empty list keeps nothing");
    } else {
        status.assert_error(1, &["STATUS"]);
        listed.assert_error(1, &["GC"]);
        assert_eq!(status.json["cniVersion"], version);
        node.gc(&config, &[]).assert_error(1, &["GC"]);
        // Refused before any delegate is asked, whatever the mode.
        for (mode, config) in mode_configs(&node, version) {
            let status = node.status(&config);
            assert_eq!(status.code(), Some(1), "STATUS, {mode}: {}", status.stdout);
            let gc = node.gc(&config, &[]);
            assert_eq!(gc.code(), Some(1), "GC, {mode}: {}", gc.stdout);
        }
        assert_eq!(node.link_state(&l1), "waiting", "a refused GC removes nothing");
        assert!(host_has_link(&host_ifname(&l1, Side::A)));
    }
}

ratchet_tests::per_version!(add_check_del, version_lists_all_five, status_and_gc);
