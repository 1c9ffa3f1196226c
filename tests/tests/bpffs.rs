//! Pins must outlive the process that makes them. A plugin, agent or CLI
//! run in a mount namespace of its own (`ip netns exec` remounts /sys)
//! would mount a private bpffs, pin into it, and lose every pin when it
//! exits: links re-ADDed later would be dead and `ratchet links` would read
//! zeros. Each refuses with an error that names the fix instead, and under
//! `nsenter --net` (the host's mounts, the node's network) the same calls
//! work.

use std::{path::Path, process::Command};

use ratchet_tests::{Node, Pod, call_command, end, kubelet_env, ratchet_bin, unique};
use serde_json::json;

/// The plugin as `ip netns exec <netns>` runs it: a new mount namespace
/// with a fresh /sys.
fn under_ip_netns_exec(netns: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns]).arg(ratchet_bin());
    command
}

/// The plugin as `nsenter --net` runs it: the node's network, the host's mounts.
fn under_nsenter(netns: &str) -> Command {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net=/run/netns/{netns}")).arg("--").arg(ratchet_bin());
    command
}

#[test]
fn a_plugin_in_a_private_mount_namespace_refuses_to_pin_and_says_how() {
    let node = Node::new();
    let host = Pod::new("default", "host");
    let [alpha, beta] = ["alpha", "beta"].map(|name| Pod::new("default", name));
    let link = unique("bf");
    node.apply(&json!({"links": [
        {"name": link, "a": end(&alpha, "in1", &["10.93.0.1/24"]), "b": end(&beta, "in1", &["10.93.0.2/24"])},
    ]}));
    let env = kubelet_env("ADD", &alpha);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = node.config().to_string();

    let refused = call_command(under_ip_netns_exec(&host.netns), &env, config.as_bytes());
    refused.assert_error(103, &["mount namespace", "nsenter --net"]);
    assert!(!node.pin_root.exists(), "nothing was pinned where the host sees it");
    assert!(alpha.link_gone("in1"), "the failed ADD left no pod end");

    let mut links = under_ip_netns_exec(&host.netns);
    links.args(["--state-dir", &node.state_dir.path().display().to_string()]);
    links.args(["--pin-root", &node.pin_root.display().to_string(), "links"]);
    let output = links.output().expect("run ratchet links");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("nsenter --net"), "links refuses too: {stderr}");

    let added = call_command(under_nsenter(&host.netns), &env, config.as_bytes());
    assert!(added.success, "ADD under nsenter --net: {}", added.stdout);
    assert!(Path::new(&node.pin_root).join("ratchet_to_peer").exists(), "the pins are the host's");
}
