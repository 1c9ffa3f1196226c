//! The topology files users already have, through the CLI: ratchet's own
//! format in YAML, meshnet-cni's Topology objects (a List, or several YAML
//! documents among other kinds), containerlab's topology; `topology
//! convert` prints what each becomes, `apply` stores it, and a pod ADDed
//! afterwards gets the link. Lab mistakes are refused with an error that
//! names the link and the field, and nothing is applied.

use std::process::{Command, Output};

use ratchet_tests::{Node, Pod, ratchet_bin, unique};
use serde_json::{Value, json};

/// The link every format below describes: r1's eth1 10.30.0.1/30 to r2's
/// eth1 10.30.0.2/30, in namespace `ns`.
fn expected(ns: &str) -> Value {
    json!({"links": [{
        "a": {"pod": format!("{ns}/r1"), "ifname": "eth1", "ips": ["10.30.0.1/30"]},
        "b": {"pod": format!("{ns}/r2"), "ifname": "eth1", "ips": ["10.30.0.2/30"]}}]})
}

fn ratchet_yaml(ns: &str) -> String {
    format!(
        "# ratchet's own format, as YAML\nlinks:\n  - a: {{pod: {ns}/r1, ifname: eth1, ips: [10.30.0.1/30]}}\n    \
         b: {{pod: {ns}/r2, ifname: eth1, ips: [10.30.0.2/30]}}\n"
    )
}

/// Both halves as separate documents, with a Pod and a Service between.
fn meshnet_stream(ns: &str) -> String {
    let half = |pod: &str, peer: &str, ip: &str, peer_ip: &str| {
        format!(
            "apiVersion: networkop.co.uk/v1beta1\nkind: Topology\nmetadata: {{name: {pod}, namespace: {ns}}}\nspec:\n  links:\n  \
             - {{uid: 1, peer_pod: {peer}, local_intf: eth1, peer_intf: eth1, local_ip: {ip}, peer_ip: {peer_ip}}}\n"
        )
    };
    [
        half("r1", "r2", "10.30.0.1/30", "10.30.0.2/30"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: r1}\nspec: {containers: []}\n".into(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n".into(),
        half("r2", "r1", "10.30.0.2/30", "10.30.0.1/30"),
    ]
    .join("---\n")
}

/// The same as a `kind: List` in JSON, the namespace left to the flag.
fn meshnet_list() -> String {
    let half = |pod: &str, peer: &str, ip: &str, peer_ip: &str| {
        json!({"apiVersion": "networkop.co.uk/v1beta1", "kind": "Topology", "metadata": {"name": pod},
            "spec": {"links": [{"uid": 1, "peer_pod": peer, "local_intf": "eth1", "peer_intf": "eth1",
                "local_ip": ip, "peer_ip": peer_ip}]}})
    };
    let items = [half("r1", "r2", "10.30.0.1/30", "10.30.0.2/30"), half("r2", "r1", "10.30.0.2/30", "10.30.0.1/30")];
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

fn ratchet(node: &Node, args: &[&str]) -> Output {
    let dirs = ["--state-dir", node.state_dir.path().to_str().unwrap(), "--pin-root", node.pin_root.to_str().unwrap()];
    Command::new(ratchet_bin()).args(dirs).args(args).output().unwrap()
}

fn write(node: &Node, text: &str) -> String {
    let file = node.state_dir.path().join(unique("topology-"));
    std::fs::write(&file, text).unwrap();
    file.to_str().unwrap().to_owned()
}

#[test]
fn each_format_converts_to_the_same_topology_and_applies() {
    let node = Node::new();
    let ns = "labfmt";
    for (format, text, flags) in [
        ("ratchet YAML", ratchet_yaml(ns), vec![]),
        ("meshnet documents", meshnet_stream(ns), vec![]),
        ("meshnet List", meshnet_list(), vec!["--namespace", ns]),
        (
            "containerlab",
            "name: lab\ntopology:\n  nodes: {r1: {kind: linux}, r2: {kind: linux}}\n  links:\n    \
             - endpoints: [\"r1:eth1\", \"r2:eth1\"]\n"
                .into(),
            vec!["--namespace", ns],
        ),
    ] {
        let file = write(&node, &text);
        let mut convert = vec!["topology", "convert", &file];
        convert.extend(&flags);
        let out = ratchet(&node, &convert);
        assert!(out.status.success(), "{format}: {}", String::from_utf8_lossy(&out.stderr));
        let converted: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut want = expected(ns);
        if format == "containerlab" {
            // containerlab has no addresses.
            for end in ["a", "b"] {
                want["links"][0][end]["ips"] = json!([]);
            }
        }
        assert_eq!(converted, want, "{format}");
        let mut apply = vec!["topology", "apply", &file];
        apply.extend(&flags);
        let out = ratchet(&node, &apply);
        assert!(out.status.success(), "{format}: {}", String::from_utf8_lossy(&out.stderr));
        let shown: Value = serde_json::from_str(&node.cli(&["topology", "show"])).unwrap();
        assert_eq!(shown, want, "{format}: the stored topology");
    }

    // A pod ADDed after a YAML apply gets its end with the file's address.
    node.cli(&["topology", "apply", &write(&node, &ratchet_yaml(ns))]);
    let r1 = Pod::new(ns, "r1");
    let reply = node.add(&r1);
    assert_eq!(reply["ips"][0]["address"], "10.30.0.1/30", "{reply}");
    node.del(&r1);
}

#[test]
fn lab_mistakes_are_refused_naming_the_link_and_the_field() {
    let node = Node::new();
    node.cli(&["topology", "apply", &write(&node, &ratchet_yaml("kept"))]);
    let before = node.cli(&["topology", "show"]);
    let disagreeing = meshnet_stream("lab").replacen("peer_ip: 10.30.0.2/30", "peer_ip: 10.30.0.6/30", 1);
    let one_interface_twice = format!(
        "{}  - a: {{pod: lab/r1, ifname: eth1, ips: [10.31.0.1/30]}}\n    b: {{pod: lab/r3, ifname: eth1, ips: [10.31.0.2/30]}}\n",
        ratchet_yaml("lab")
    );
    for (mistake, text, says) in [
        ("halves that disagree", disagreeing, vec!["uid 1", "peer_ip", "10.30.0.6/30"]),
        (
            "different subnets",
            ratchet_yaml("lab").replace("10.30.0.2/30", "10.31.0.2/30"),
            vec!["a.ips", "b.ips", "different subnets"],
        ),
        ("one interface in two links", one_interface_twice, vec!["lab/r1 eth1", "more than one link"]),
        (
            "a containerlab host endpoint",
            "topology:\n  links:\n    - endpoints: [\"r1:eth1\", \"host:r1-eth1\"]\n".into(),
            vec!["link 0", "host"],
        ),
        ("a file of no known format", "nodes: [r1]\n".into(), vec!["links", "meshnet", "containerlab"]),
        ("YAML that does not parse", "links: [\n".into(), vec!["not valid YAML"]),
    ] {
        let out = ratchet(&node, &["topology", "apply", &write(&node, &text)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mistake} is refused");
        for word in says {
            assert!(stderr.contains(word), "{mistake}: the error says {word:?}: {stderr}");
        }
        assert_eq!(node.cli(&["topology", "show"]), before, "{mistake}: nothing applied");
    }
}

/// A meshnet lab as KNE writes one: three routers in a ring, each a
/// Topology object with its two links (each link written once per side
/// under one uid). Applied as it is, the pods ADDed, every link carries
/// traffic with the addresses the objects give.
#[test]
fn a_meshnet_three_router_ring_comes_up() {
    let node = Node::new();
    let ns = unique("ring");
    // uid, the two routers, their interfaces and the /30 between them.
    let links =
        [(1, "r1", "eth1", "r2", "eth2", 12), (2, "r2", "eth1", "r3", "eth2", 23), (3, "r3", "eth1", "r1", "eth2", 31)];
    let router = |name: &str| {
        let mine = links.iter().filter_map(|&(uid, a, a_if, b, b_if, net)| {
            let (ip, peer_ip) = (format!("10.{net}.0.1/30"), format!("10.{net}.0.2/30"));
            match name {
                _ if name == a => Some(json!({"uid": uid, "peer_pod": b, "local_intf": a_if, "peer_intf": b_if,
                    "local_ip": ip, "peer_ip": peer_ip})),
                _ if name == b => Some(json!({"uid": uid, "peer_pod": a, "local_intf": b_if, "peer_intf": a_if,
                    "local_ip": peer_ip, "peer_ip": ip})),
                _ => None,
            }
        });
        json!({"apiVersion": "networkop.co.uk/v1beta1", "kind": "Topology",
            "metadata": {"name": name, "namespace": ns}, "spec": {"links": mine.collect::<Vec<_>>()}})
    };
    let documents: Vec<String> =
        ["r1", "r2", "r3"].iter().map(|name| serde_yaml::to_string(&router(name)).unwrap()).collect();
    let out = ratchet(&node, &["topology", "apply", &write(&node, &documents.join("---\n"))]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: Value = serde_json::from_str(&node.cli(&["topology", "show"])).unwrap();
    assert_eq!(shown["links"].as_array().unwrap().len(), 3, "one link per uid: {shown}");

    let pods = ["r1", "r2", "r3"].map(|name| Pod::new(&ns, name));
    for pod in &pods {
        node.add(pod);
    }
    for &(_, a, _, b, b_if, net) in &links {
        let from = pods.iter().find(|pod| pod.name == a).unwrap();
        assert!(from.ping(&format!("10.{net}.0.2")), "{a} reaches {b} over its {b_if}");
    }
    assert!(node.links().iter().all(|link| link["state"] == "up"), "{:?}", node.links());
    for pod in &pods {
        node.del(pod);
    }
}
