//! `ratchet unload`: this node's pins and VXLAN device, and only when none
//! of this node's link ends is attached and its agent is stopped; and the
//! agent's lock that makes "one agent per node" and that refusal possible.

use std::process::Command;

use ratchet_tests::{Agent, Node, Pod, end, eventually, ratchet_bin, unique};
use serde_json::json;

/// `ratchet unload` with the node's dirs and these arguments: (success, stdout + stderr).
fn unload(node: &Node, args: &[&str]) -> (bool, String) {
    let output = Command::new(ratchet_bin())
        .args(["--state-dir", node.state_dir.path().to_str().unwrap()])
        .args(["--pin-root", node.pin_root.to_str().unwrap(), "unload"])
        .args(args)
        .output()
        .expect("run ratchet unload");
    let said = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), said)
}

#[test]
fn unload_counts_this_nodes_ends_refuses_while_its_agent_runs_and_says_when_there_is_nothing() {
    let node = Node::new();
    let [alpha, beta] = ["alpha", "beta"].map(|name| Pod::new("default", name));
    node.apply(&json!({"links": [
        {"name": unique("ul"), "a": end(&alpha, "in1", &["10.94.0.1/24"]), "b": end(&beta, "in1", &["10.94.0.2/24"])},
    ]}));
    node.add(&alpha);

    let (ok, said) = unload(&node, &["--node-name", "node-1"]);
    assert!(!ok && said.contains("1 link end(s) are attached on node node-1"), "{said}");
    let (ok, said) = unload(&node, &["--node-name", "node-2"]);
    assert!(ok && said.contains("removed"), "another node's ends do not count: {said}");
    assert!(!node.pin_root.exists());

    let agent = Agent::start(&node);
    assert!(eventually(|| node.pin_root.exists()), "the agent pins again: {}", agent.log());
    let second = Agent::start(&node);
    assert!(eventually(|| second.log().contains("another `ratchet agent` runs for this node")), "{}", second.log());
    let (ok, said) = unload(&node, &["--force"]);
    assert!(!ok && said.contains("`ratchet agent` is running"), "{said}");
    drop(agent);
    node.del(&alpha);

    let (ok, said) = unload(&node, &[]);
    assert!(ok && said.contains(&format!("removed {}", node.pin_root.display())), "{said}");
    let (ok, said) = unload(&node, &[]);
    assert!(ok && said.contains("nothing to remove"), "{said}");
}

#[test]
fn unload_removes_the_nodes_vxlan_device() {
    let node = Node::new();
    let host = Pod::new("default", "host");
    let made = host.exec(&["ip", "link", "add", "rtvx0", "type", "vxlan", "external", "dstport", "4789"]);
    assert!(made.status.success(), "{made:?}");
    let output = Command::new("nsenter")
        .arg(format!("--net={}", host.netns_path()))
        .arg("--")
        .arg(ratchet_bin())
        .args(["--state-dir", node.state_dir.path().to_str().unwrap()])
        .args(["--pin-root", node.pin_root.to_str().unwrap(), "unload"])
        .output()
        .expect("run ratchet unload");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && said.contains("removed rtvx0"), "{said}");
    assert!(host.link("rtvx0").is_none(), "rtvx0 is gone");
}
