//! Link impairments, per direction and live: `ratchet link set` and the
//! topology's keys. Each is checked by its effect on real traffic between
//! two pods (ping, iperf3), with `tc` and `ip` as independent witnesses of
//! what sits on the pod interfaces. Loss is the datapath's and counted
//! apart; rate is TBF on the sending pod end; delay and jitter need netem,
//! which this machine's kernel lacks: the tests ask the kernel and assert
//! whichever behaviour matches.

use std::process::Command;

use ratchet_tests::{Node, Pod, Rig, end, eventually, unique};
use serde_json::{Value, json};

/// Sends `count` pings as fast as replies come; the share lost, 0.0-1.0.
fn ping_loss(pod: &Pod, ip: &str, count: u32) -> f64 {
    let out = pod.exec(&["ping", "-q", "-n", "-i", "0", "-W", "1", "-c", &count.to_string(), ip]);
    let text = String::from_utf8_lossy(&out.stdout);
    let percent = text
        .split(',')
        .find_map(|part| part.trim().strip_suffix("% packet loss"))
        .unwrap_or_else(|| panic!("ping said: {text}"));
    percent.parse::<f64>().unwrap() / 100.0
}

fn pings(pod: &Pod, ip: &str) -> bool {
    pod.exec(&["ping", "-c", "1", "-W", "1", ip]).status.success()
}

/// One end of a link as `ratchet links --json` shows it.
fn end_view(links: &[Value], link: &str, side: &str) -> Value {
    let found = links.iter().find(|l| l["link"] == link).unwrap_or_else(|| panic!("{link} in {links:?}"));
    let ends = found["ends"].as_array().unwrap();
    ends.iter().find(|e| e["side"] == side).cloned().unwrap_or_else(|| panic!("side {side} of {found}"))
}

/// The root qdisc of a pod interface, as `tc -j qdisc show` gives it.
fn root_qdisc(pod: &Pod, ifname: &str) -> Value {
    let out = pod.exec(&["tc", "-j", "qdisc", "show", "dev", ifname, "root"]);
    let qdiscs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    qdiscs.into_iter().next().unwrap_or(Value::Null)
}

/// Whether this kernel has netem: asked by making one, in a netns of the
/// test's own on a veth (this kernel has no dummy driver either).
fn kernel_has_netem() -> bool {
    let netns = unique("netem");
    let ip = |args: &[&str]| Command::new("ip").args(args).status().unwrap().success();
    assert!(ip(&["netns", "add", &netns]));
    let made = ip(&["-n", &netns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    let has = made
        && Command::new("tc")
            .args(["-n", &netns, "qdisc", "add", "dev", "v0", "root", "netem", "delay", "1ms"])
            .output()
            .unwrap()
            .status
            .success();
    ip(&["netns", "del", &netns]);
    assert!(made, "the probe could not make a veth");
    has
}

/// iperf3 from `client` to `server_ip` (a server in `server`) for a
/// couple of seconds: what arrived, in Mbit/s.
fn iperf_mbits(client: &Pod, server: &Pod, server_ip: &str) -> f64 {
    let mut daemon = Command::new("ip")
        .args(["netns", "exec", &server.netns, "iperf3", "-s", "-1", "-B", server_ip])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(|| pings(client, server_ip)));
    // The server is up once its socket listens (a client before that is refused).
    let listening = || !server.exec(&["ss", "-Hltn", "sport = :5201"]).stdout.is_empty();
    assert!(eventually(listening), "the iperf3 server listens");
    let out = client.exec(&["iperf3", "-c", server_ip, "-t", "2", "-J"]);
    let _ = daemon.kill();
    let _ = daemon.wait();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("iperf3: {out:?}"));
    let received = report["end"]["sum_received"]["bits_per_second"].as_f64();
    received.unwrap_or_else(|| panic!("iperf3 moved nothing: {report}")) / 1e6
}

fn two_pods_linked(node: &Node, subnet: u8, extra: Value) -> (Pod, Pod, String) {
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = unique("lab");
    let mut spec = json!({"name": link,
        "a": end(&alpha, "in1", &[&format!("10.{subnet}.0.1/24")]),
        "b": end(&beta, "in1", &[&format!("10.{subnet}.0.2/24")])});
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    node.apply(&json!({"links": [spec]}));
    (alpha, beta, link)
}

#[test]
fn loss_drops_its_share_of_one_direction_and_counts_it_apart() {
    let node = Node::new();
    let (alpha, beta, link) = two_pods_linked(&node, 91, json!({}));
    node.add(&alpha);
    node.add(&beta);
    assert!(pings(&alpha, "10.91.0.2"));
    let in1 = alpha.link("in1").unwrap()["ifindex"].clone();
    let entries_before = node.peers();

    let said = node.cli(&["link", "set", &link, "--side", "a", "--loss", "30%"]);
    assert!(said.contains("loss 30%") && said.contains("set here"), "{said}");
    let sent = 3000;
    let lost = ping_loss(&alpha, "10.91.0.2", sent);
    assert!((0.25..=0.35).contains(&lost), "30% of alpha's requests are lost, measured {lost}");
    let links = node.links();
    let (a, b) = (end_view(&links, &link, "a"), end_view(&links, &link, "b"));
    assert_eq!(a["impairment"], json!({"loss": "30%"}));
    assert_eq!(b["impairment"], json!({}), "side b's frames are not impaired");
    let counted = a["lost"].as_u64().unwrap() as f64;
    assert!(
        (counted - lost * f64::from(sent)).abs() <= 0.05 * f64::from(sent),
        "the datapath counted the lost requests ({counted}) apart from its drops ({})",
        a["drops"]
    );
    assert_eq!(b["lost"], 0);
    assert_eq!(alpha.link("in1").unwrap()["ifindex"], in1, "no pod was re-added");
    assert_eq!(node.peers(), entries_before, "the forwarding is the same but for the loss");

    node.cli(&["link", "set", &link, "--clear"]);
    assert_eq!(ping_loss(&alpha, "10.91.0.2", 200), 0.0, "cleared, nothing is lost");
    assert_eq!(end_view(&node.links(), &link, "a")["impairment"], json!({}));
    node.del(&alpha);
    node.del(&beta);
}

#[test]
fn a_rate_shapes_what_its_side_sends_and_only_that() {
    let node = Node::new();
    let (alpha, beta, link) = two_pods_linked(&node, 92, json!({}));
    node.add(&alpha);
    node.add(&beta);
    node.cli(&["link", "set", &link, "--side", "a", "--rate", "20mbit"]);
    let qdisc = root_qdisc(&alpha, "in1");
    assert_eq!(qdisc["kind"], "tbf", "alpha's in1 is shaped: {qdisc}");
    assert_eq!(root_qdisc(&beta, "in1")["kind"], "noqueue", "beta's is not");

    let shaped = iperf_mbits(&alpha, &beta, "10.92.0.2");
    assert!((14.0..=21.0).contains(&shaped), "alpha sends at most 20 Mbit/s: {shaped:.1}");
    let other_way = iperf_mbits(&beta, &alpha, "10.92.0.1");
    assert!(other_way > 100.0, "beta is not limited: {other_way:.1} Mbit/s");

    node.cli(&["link", "set", &link, "--side", "a", "--rate", "none"]);
    assert_eq!(root_qdisc(&alpha, "in1")["kind"], "noqueue", "the shaping is gone");
    node.del(&alpha);
    node.del(&beta);
}

#[test]
fn a_delay_uses_netem_where_the_kernel_has_it_and_is_refused_where_not() {
    let node = Node::new();
    let (alpha, beta, link) = two_pods_linked(&node, 93, json!({}));
    node.add(&alpha);
    node.add(&beta);
    node.cli(&["link", "set", &link, "--loss", "1%"]);
    let out = Command::new(ratchet_tests::ratchet_bin())
        .args(["--state-dir", node.state_dir.path().to_str().unwrap(), "--pin-root", node.pin_root.to_str().unwrap()])
        .args(["link", "set", &link, "--delay", "30ms", "--jitter", "1ms"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if kernel_has_netem() {
        assert!(out.status.success(), "{stderr}");
        assert_eq!(root_qdisc(&alpha, "in1")["kind"], "netem");
        let rtt = alpha.exec(&["ping", "-c", "3", "-n", "10.93.0.2"]);
        assert!(String::from_utf8_lossy(&rtt.stdout).contains("time=6"), "two ways of 30 ms: {rtt:?}");
    } else {
        assert!(!out.status.success() && stderr.contains("netem"), "says netem is missing: {stderr}");
        let a = end_view(&node.links(), &link, "a");
        assert_eq!(a["impairment"], json!({"loss": "1%"}), "nothing was recorded");
        assert_eq!(root_qdisc(&alpha, "in1")["kind"], "noqueue", "nothing was left on the pod end");
    }
    node.del(&alpha);
    node.del(&beta);
}

#[test]
fn the_topologys_keys_apply_at_add() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = unique("lab");
    // Side b drops everything it sends: alpha's pings go out, no reply returns.
    let mut topology = json!({"links": [{"name": link, "rate": "50mbit",
        "a": end(&alpha, "in1", &["10.94.0.1/24"]),
        "b": end(&beta, "in1", &["10.94.0.2/24"])}]});
    topology["links"][0]["b"]["loss"] = json!("100%");
    node.apply(&topology);
    node.add(&alpha);
    node.add(&beta);
    for pod in [&alpha, &beta] {
        let qdisc = root_qdisc(pod, "in1");
        assert_eq!(qdisc["kind"], "tbf", "{}'s in1: {qdisc}", pod.name);
    }
    assert!(!pings(&alpha, "10.94.0.2"), "beta's replies are all lost");
    let links = node.links();
    assert_eq!(end_view(&links, &link, "b")["impairment"], json!({"loss": "100%", "rate": "50mbit"}));
    assert!(end_view(&links, &link, "b")["lost"].as_u64().unwrap() > 0);

    // A live change overrides the file; no re-ADD.
    node.cli(&["link", "set", &link, "--side", "b", "--loss", "none"]);
    assert!(eventually(|| pings(&alpha, "10.94.0.2")));
    node.del(&alpha);
    node.del(&beta);
}

#[test]
fn a_change_before_the_add_is_what_the_add_applies() {
    let node = Node::new();
    let (alpha, beta, link) = two_pods_linked(&node, 98, json!({"rate": "50mbit"}));
    let said = node.cli(&["link", "set", &link, "--side", "b", "--rate", "none", "--loss", "100%"]);
    assert!(
        said.contains("b: default/beta -> default/alpha in1: loss 100%; not attached yet: its ADD applies it"),
        "{said}"
    );
    node.add(&alpha);
    node.add(&beta);
    assert_eq!(root_qdisc(&alpha, "in1")["kind"], "tbf", "side a keeps the topology's rate");
    assert_eq!(root_qdisc(&beta, "in1")["kind"], "noqueue", "side b's rate was dropped before its ADD");
    assert!(!pings(&alpha, "10.98.0.2"), "beta's ADD applied the loss");
    assert_eq!(end_view(&node.links(), &link, "b")["impairment"], json!({"loss": "100%"}));
    node.del(&alpha);
    node.del(&beta);
}

#[test]
fn a_delay_in_the_topology_fails_add_clearly_where_the_kernel_has_no_netem() {
    if kernel_has_netem() {
        return;
    }
    let node = Node::new();
    let (alpha, _beta, _link) = two_pods_linked(&node, 95, json!({"delay": "10ms"}));
    let reply = node.call_pod("ADD", &alpha, &node.config());
    assert!(!reply.success, "ADD fails");
    let error = &reply.json;
    assert_eq!(error["code"], 7, "an invalid network configuration: {error}");
    assert!(error["details"].as_str().unwrap().contains("netem"), "{error}");
    assert!(alpha.link("in1").is_none(), "the failed ADD left no interface behind");
}

#[test]
fn bad_values_are_refused_before_anything_changes() {
    let node = Node::new();
    let (alpha, beta, link) = two_pods_linked(&node, 96, json!({}));
    node.add(&alpha);
    node.add(&beta);
    let set = |args: &[&str]| {
        let mut full = vec!["link", "set", &link];
        full.extend(args);
        Command::new(ratchet_tests::ratchet_bin())
            .args(["--state-dir", node.state_dir.path().to_str().unwrap()])
            .args(["--pin-root", node.pin_root.to_str().unwrap()])
            .args(&full)
            .output()
            .unwrap()
    };
    for (args, says) in [
        (&["--loss", "120%"][..], "0% to 100%"),
        (&["--rate", "fast"][..], "tc's units"),
        (&["--jitter", "2ms"][..], "needs a delay"),
        (&["--side", "c", "--loss", "1%"][..], "not a side"),
        (&[][..], "nothing to set"),
    ] {
        let out = set(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(end_view(&node.links(), &link, "a")["impairment"], json!({}));
    node.del(&alpha);
    node.del(&beta);
}

#[test]
fn the_far_nodes_agent_applies_an_impairment_set_elsewhere() {
    let mut rig = Rig::new();
    let (alpha, beta, link) = rig.linked_across("lab", 97);

    // Set from node 0 on side b, whose end is on node 1.
    let out =
        rig.cli(0, &["link", "set", &link, "--side", "b", "--loss", "100%", "--rate", "10mbit"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && said.contains("b: default/beta -> default/alpha in1: loss 100% rate 10mbit; on node ")
            && said.contains("its agent applies it"),
        "{said}"
    );
    assert!(eventually(|| root_qdisc(&beta, "in1")["kind"] == "tbf"), "node 1's agent shapes beta's end");
    assert!(eventually(|| !pings(&alpha, "10.97.0.2")), "node 1's agent drops beta's frames");

    let out = rig.cli(0, &["link", "set", &link, "--clear"]).output().unwrap();
    assert!(out.status.success());
    assert!(eventually(|| pings(&alpha, "10.97.0.2")), "cleared on node 1 too");
    assert!(eventually(|| root_qdisc(&beta, "in1")["kind"] == "noqueue"));
    assert!(rig.cni(0, "DEL", &alpha).success);
    assert!(rig.cni(1, "DEL", &beta).success);
}

#[test]
fn a_link_that_leaves_the_topology_takes_its_live_settings_along() {
    let node = Node::new();
    let (alpha, beta, link) = two_pods_linked(&node, 99, json!({}));
    let topology: Value = serde_json::from_str(&node.cli(&["topology", "show"])).unwrap();
    node.cli(&["link", "set", &link, "--side", "a", "--loss", "100%"]);
    node.cli(&["link", "down", &link]);
    let settings = |node: &Node| [node.store_keys("/ratchet/impaired/"), node.store_keys("/ratchet/cut/")].concat();
    assert_eq!(settings(&node).len(), 2, "{:?}", settings(&node));
    node.apply(&json!({"links": []}));
    assert!(settings(&node).is_empty(), "{:?}", settings(&node));
    node.apply(&topology);
    node.add(&alpha);
    node.add(&beta);
    assert!(pings(&alpha, "10.99.0.2"), "the link came back whole: neither cut nor lossy");
    node.del(&alpha);
    node.del(&beta);
}
