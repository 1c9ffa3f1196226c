//! A damaged embedded store while pods are attached: deleted, truncated to
//! nothing, its table dropped, or its rows deleted. None of these may read
//! as a new, empty store (which made `ratchet links` show nothing, DEL
//! succeed while leaving veths and forwarding behind, and ADD answer 101):
//! every verb and view answers that the store was lost and what to do, and
//! `ratchet reset` takes the node back to a clean state from which the pods
//! can be added again.

use std::process::Command;

use ratchet_plugin::{naming::host_ifname, topology::Side};
use ratchet_tests::{Node, Pod, end, host_has_link, host_link_gone, ratchet_bin, unique};
use serde_json::json;

/// The ways the store's records can be lost under the pods.
const DAMAGE: [&str; 4] = ["delete", "truncate", "drop-table", "delete-rows"];

fn damage(node: &Node, how: &str) {
    let path = node.state_dir.path().join("store.sqlite");
    match how {
        "delete" => std::fs::remove_file(&path).unwrap(),
        "truncate" => std::fs::File::create(&path).map(drop).unwrap(),
        "drop-table" => rusqlite::Connection::open(&path).unwrap().execute_batch("DROP TABLE kv").unwrap(),
        "delete-rows" => rusqlite::Connection::open(&path).unwrap().execute_batch("DELETE FROM kv").unwrap(),
        other => unreachable!("{other}"),
    }
}

/// Runs the CLI against the node; returns (success, stdout + stderr).
fn cli(node: &Node, args: &[&str]) -> (bool, String) {
    let out = Command::new(ratchet_bin())
        .args(["--state-dir", node.state_dir.path().to_str().unwrap(), "--pin-root", node.pin_root.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_lost_store_is_an_error_everywhere_and_reset_cleans_the_node() {
    for how in DAMAGE {
        let node = Node::new();
        let (alpha, beta, gamma) =
            (Pod::new("default", "alpha"), Pod::new("default", "beta"), Pod::new("default", "gamma"));
        let link = unique("dmg");
        let topology = json!({"links": [{"name": link,
            "a": end(&alpha, "in1", &["10.96.0.1/24"]), "b": end(&beta, "in1", &["10.96.0.2/24"])}]});
        node.apply(&topology);
        let cached = node.add(&alpha);
        node.add(&beta);
        assert!(alpha.ping("10.96.0.2"), "{how}: the link is up before the damage");

        damage(&node, how);

        let (ok, said) = cli(&node, &["links"]);
        assert!(!ok && said.contains("holds no records") && said.contains("ratchet reset"), "{how}: links: {said}");
        let (ok, said) = cli(&node, &["topology", "show"]);
        assert!(!ok && said.contains("ratchet reset"), "{how}: topology show: {said}");
        node.call_pod("DEL", &alpha, &node.config()).assert_error(107, &["2 link end(s)", "ratchet reset"]);
        assert!(host_has_link(&host_ifname(&link, Side::A)), "{how}: a refused DEL removed nothing");
        node.check(&alpha, &node.config(), &cached).assert_error(107, &["ratchet reset"]);
        node.call_pod("ADD", &gamma, &node.config()).assert_error(107, &["ratchet reset"]);

        let (ok, said) = cli(&node, &["reset", "--node-name", "node-1"]);
        assert!(ok, "{how}: reset: {said}");
        assert!(said.contains("removed 2 host veth(s)"), "{how}: {said}");
        for side in [Side::A, Side::B] {
            assert!(host_link_gone(&host_ifname(&link, side)), "{how}: reset removed the {side:?} veth");
        }
        assert!(alpha.link_gone("in1") && beta.link_gone("in1"), "{how}: and the pod ends with them");
        assert!(!node.pin_root.exists(), "{how}: and the pins");

        // Recovered: the topology again, the pods again, the link again.
        node.apply(&topology);
        node.add(&alpha);
        node.add(&beta);
        assert!(alpha.ping("10.96.0.2"), "{how}: the link is up again after reset");
        node.del(&alpha);
        node.del(&beta);
    }
}

#[test]
fn a_new_node_still_starts_from_an_empty_store() {
    let node = Node::new();
    let (ok, said) = cli(&node, &["links"]);
    assert!(ok, "an empty store with nothing attached is just new: {said}");
    let (ok, said) = cli(&node, &["reset", "--node-name", "node-1"]);
    assert!(ok && said.contains("removed 0 host veth(s)"), "{said}");
}
