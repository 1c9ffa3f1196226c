//! A node's pins taken over by a new build while a link carries traffic:
//! not one frame lost, counters carried over, and an older build refused
//! afterwards. `RATCHET_NEXT_BIN` is the plugin built with `layout-next`
//! (its maps are of the next layout), which `cargo xtask test` builds.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use ratchet_tests::{Node, Pod, call_binary, end, eventually, kubelet_env, unique};
use serde_json::{Value, json};

fn next_bin() -> PathBuf {
    std::env::var_os("RATCHET_NEXT_BIN").expect("RATCHET_NEXT_BIN (run through `cargo xtask test`)").into()
}

/// Two pods joined by a link that is up, on a node of the normal build.
fn linked(node: &Node) -> (Pod, Pod, String) {
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = unique("up");
    node.apply(&json!({"links": [
        {"name": link, "a": end(&alpha, "in1", &["10.95.0.1/24"]), "b": end(&beta, "in1", &["10.95.0.2/24"])},
    ]}));
    node.add(&alpha);
    node.add(&beta);
    assert!(alpha.ping_eventually("10.95.0.2", 5), "the link is up");
    (alpha, beta, link)
}

/// How many pings cross the link while it is taken over.
const PINGS: u64 = 100_000;

/// [`PINGS`] pings from alpha to beta, flooded (each sent as the last reply
/// comes back, thousands a second): a gap of a few microseconds without
/// a program or without entries would lose some.
fn start_pings(alpha: &Pod) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &alpha.netns,
            "ping",
            "-n",
            "-q",
            "-f",
            "-c",
            &PINGS.to_string(),
            "-W",
            "1",
            "10.95.0.2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ping")
}

/// (sent, received) from ping's summary.
fn ping_result(ping: Child) -> (u64, u64) {
    let output = ping.wait_with_output().expect("ping finishes");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let line = text.lines().find(|line| line.contains("packets transmitted")).unwrap_or_else(|| panic!("{text}"));
    let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    (numbers[0], numbers[1])
}

/// The packets alpha's end has sent so far, as `ratchet links` (of `bin`) counts them.
fn alpha_packets(node: &Node, bin: &Path, link: &str) -> u64 {
    let output = Command::new(bin)
        .args(["--state-dir", node.state_dir.path().to_str().unwrap()])
        .args(["--pin-root", node.pin_root.to_str().unwrap(), "links", "--json"])
        .output()
        .expect("ratchet links");
    let links: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{output:?}"));
    let found = links.iter().find(|l| l["link"] == link).expect("the link");
    let alpha = found["ends"].as_array().unwrap().iter().find(|e| e["side"] == "a").expect("alpha's end");
    alpha["packets"].as_u64().unwrap()
}

/// The pin root's markers: (layout, build).
fn markers(node: &Node) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&node.pin_root)
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("layout-") || name.starts_with("build-"))
        .collect();
    names.sort();
    names
}

/// The id of the program on a host veth's ingress, as tc shows it.
fn program_id(host_ifname: &str) -> String {
    let shown = ratchet_tests::run("tc", &["filter", "show", "dev", host_ifname, "ingress"]);
    let id = shown.split_whitespace().skip_while(|word| *word != "id").nth(1);
    id.unwrap_or_else(|| panic!("no program on {host_ifname}: {shown}")).to_owned()
}

/// The layout the pin root's marker names.
fn layout_of(node: &Node) -> u32 {
    let markers = markers(node);
    let layout = markers.iter().find_map(|m| m.strip_prefix("layout-"));
    layout.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no layout marker: {markers:?}"))
}

/// The new build's first verb on the node: a CHECK of alpha, as kubelet's
/// runtime sends one (an agent round does the same at its start).
fn first_verb_of(bin: &Path, node: &Node, alpha: &Pod) -> ratchet_tests::Reply {
    let env = kubelet_env("CHECK", alpha);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    call_binary(bin, &env, node.config().to_string().as_bytes())
}

#[test]
fn a_build_of_the_next_layout_takes_over_a_live_link_without_losing_a_frame() {
    let node = Node::new();
    let (alpha, _beta, link) = linked(&node);
    let old_layout = layout_of(&node);
    let old_bin = ratchet_tests::ratchet_bin();
    let ping = start_pings(&alpha);
    std::thread::sleep(Duration::from_millis(300));
    assert!(alpha_packets(&node, &old_bin, &link) > 0, "pings are crossing");

    let checked = first_verb_of(&next_bin(), &node, &alpha);
    assert!(checked.success, "the next build's CHECK passes after the upgrade: {}", checked.stdout);
    assert_eq!(layout_of(&node), old_layout + 1, "the next build's maps took over");
    let (sent, received) = ping_result(ping);
    assert_eq!((sent, received), (PINGS, PINGS), "no ping is lost across the upgrade");
    let after = alpha_packets(&node, &next_bin(), &link);
    // What alpha's end counts during the few microseconds the old counters
    // are added to the new ones is lost: a handful at most at flood rate.
    assert!(after >= PINGS - 10, "every ping is counted, before the upgrade and after: {after}");
    assert!(!std::fs::read_dir("/sys/fs/bpf").unwrap().flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with(&format!("{}-", node.pin_root.file_name().unwrap().to_string_lossy()))
    }));

    let refused = first_verb_of(&ratchet_tests::ratchet_bin(), &node, &alpha);
    let newer = format!("layout {}", old_layout + 1);
    refused.assert_error(103, &[newer.as_str(), "downgrade is refused"]);
}

#[test]
fn a_build_of_the_same_layout_swaps_its_programs_in_under_a_live_link() {
    let node = Node::new();
    let (alpha, _beta, link) = linked(&node);
    let host_veth = ratchet_plugin::naming::host_ifname(&link, ratchet_plugin::topology::Side::A);
    let old_program = program_id(&host_veth);
    let ours = markers(&node);
    let build = ours.iter().find(|m| m.starts_with("build-")).expect("a build marker").clone();
    // Another build of the same layout left these pins: its marker says so.
    std::fs::rename(node.pin_root.join(&build), node.pin_root.join("build-0000000000000000")).unwrap();

    let ping = start_pings(&alpha);
    std::thread::sleep(Duration::from_millis(300));
    let checked = first_verb_of(&ratchet_tests::ratchet_bin(), &node, &alpha);
    assert!(checked.success, "CHECK passes after the swap: {}", checked.stdout);
    assert_eq!(ping_result(ping), (PINGS, PINGS), "no ping is lost across the swap");
    assert_eq!(markers(&node), ours, "the pins are this build's again");
    assert_ne!(program_id(&host_veth), old_program, "the host veth runs the new program");
    assert!(eventually(|| alpha.ping("10.95.0.2")));
}
