//! The topology changes while the pods run: the agent adds a link's ends to
//! running pods, removes the ends of a link that left, and applies a changed
//! MTU or MAC to the live interfaces. On a node with the embedded store,
//! `ratchet topology apply` does it at once, with no agent running.

use ratchet_tests::{Agent, Node, Pod, end, eventually, unique};
use serde_json::{Value, json};

fn link(name: &str, a: Value, b: Value) -> Value {
    json!({"name": name, "a": a, "b": b})
}

#[test]
fn links_come_and_go_in_running_pods() {
    let node = Node::new();
    let (alpha, beta, gamma) =
        (Pod::new("default", "alpha"), Pod::new("default", "beta"), Pod::new("default", "gamma"));
    let (l1, l2, l3) = (unique("lk"), unique("lk"), unique("lk"));
    let first = link(&l1, end(&alpha, "in1", &["10.86.1.1/24"]), end(&beta, "in1", &["10.86.1.2/24"]));
    let second = link(&l2, end(&alpha, "in2", &["10.86.2.1/24"]), end(&gamma, "in2", &["10.86.2.2/24"]));
    node.apply(&json!({"links": [first, second]}));
    for pod in [&alpha, &beta, &gamma] {
        node.add(pod);
    }
    let _agent = Agent::start(&node);

    // A link between two running pods appears.
    let third = link(&l3, end(&beta, "in3", &["10.86.3.1/24"]), end(&gamma, "in3", &["10.86.3.2/24"]));
    node.apply(&json!({"links": [first.clone(), second.clone(), third.clone()]}));
    assert!(eventually(|| beta.link("in3").is_some() && gamma.link("in3").is_some()), "the new link's ends are made");
    assert!(eventually(|| node.link_state(&l3) == "up"), "and wired");
    assert!(beta.ping_eventually("10.86.3.2", 3), "and carry traffic");

    // A link leaves the topology: its ends go from the running pods.
    node.apply(&json!({"links": [second.clone(), third.clone()]}));
    assert!(eventually(|| alpha.link("in1").is_none() && beta.link("in1").is_none()), "l1's ends are gone");
    assert!(!node.links().iter().any(|l| l["link"] == l1.as_str()), "and its records");
    assert!(alpha.ping("10.86.2.2"), "the other links are untouched");

    // A link's MTU and one end's MAC change.
    let mut changed = second.clone();
    changed["mtu"] = json!(9000);
    changed["b"]["mac"] = json!("02:00:00:00:86:02");
    node.apply(&json!({"links": [changed, third]}));
    assert!(eventually(|| alpha.link("in2").unwrap()["mtu"] == 9000 && gamma.link("in2").unwrap()["mtu"] == 9000));
    assert!(eventually(|| gamma.link("in2").unwrap()["address"] == "02:00:00:00:86:02"), "the MAC is set live");
    let jumbo = alpha.exec(&["ping", "-c", "1", "-W", "1", "-M", "do", "-s", "8972", "10.86.2.2"]);
    assert!(jumbo.status.success(), "a 9000-byte frame crosses the changed link");

    for pod in [&alpha, &beta, &gamma] {
        node.del(pod);
    }
}

#[test]
fn on_a_single_node_apply_changes_running_pods_without_an_agent() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let (l1, l2) = (unique("lk"), unique("lk"));
    let first = link(&l1, end(&alpha, "in1", &["10.87.1.1/24"]), end(&beta, "in1", &["10.87.1.2/24"]));
    node.apply(&json!({"links": [first.clone()]}));
    let alpha_cached = node.add(&alpha);
    node.add(&beta);
    let apply = |topology: Value| {
        let file = node.state_dir.path().join(unique("topology-"));
        std::fs::write(&file, topology.to_string()).unwrap();
        node.cli(&["topology", "apply", file.to_str().unwrap(), "--node-name", "node-1"])
    };

    let second = link(&l2, end(&alpha, "in2", &["10.87.2.1/24"]), end(&beta, "in2", &["10.87.2.2/24"]));
    let said = apply(json!({"links": [first, second.clone()]}));
    assert!(said.contains("running pods brought in line"), "{said}");
    assert!(alpha.link("in2").is_some() && beta.link("in2").is_some(), "the new link's ends are there at once");
    assert!(alpha.ping("10.87.2.2"), "and carry traffic");
    // The runtime's cached result is from alpha's ADD: it lists in1 only.
    // CHECK verifies in2 in the kernel and the maps, not in that result.
    node.check(&alpha, &node.config(), &alpha_cached).assert_silent_success("CHECK after a live change");
    assert!(alpha.exec(&["ip", "link", "set", "in2", "down"]).status.success());
    node.check(&alpha, &node.config(), &alpha_cached).assert_error(105, &["pod end in2", "down"]);
    assert!(alpha.exec(&["ip", "link", "set", "in2", "up"]).status.success());

    apply(json!({"links": [second]}));
    assert!(alpha.link("in1").is_none() && beta.link("in1").is_none(), "the dropped link's ends are gone at once");
    assert_eq!(node.link_state(&l2), "up");
    node.del(&alpha);
    node.del(&beta);
}
