//! The plugin SIGKILLed at random moments during ADD and DEL, as a
//! runtime's timeout or the OOM killer would: the runtime's next DEL (or a
//! GC) removes everything the killed verb made, and the link beside it never
//! stops carrying traffic. `RATCHET_SOAK=1` runs many more rounds.

use std::time::Duration;

use ratchet_plugin::{naming::host_ifname, topology::Side};
use ratchet_tests::{Node, Pod, container_of, end, host_ifindex, host_link_gone, unique};
use serde_json::json;

fn rounds() -> u32 {
    if std::env::var_os("RATCHET_SOAK").is_some() { 300 } else { 12 }
}

/// The kill delay of a round: spread over `0..max_ms` by a fixed LCG, so a
/// failing round can be told by its number.
fn delay(round: u32, max_ms: u64) -> Duration {
    let mixed = u64::from(round).wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    Duration::from_micros((mixed >> 33) % (max_ms * 1000))
}

/// alpha-beta is the link the kills hit (beta attached, alpha not);
/// gamma-delta is the bystander, up throughout.
struct Scene {
    alpha: Pod,
    beta: Pod,
    gamma: Pod,
    delta: Pod,
    hit: String,
    bystander: String,
}

fn scene(node: &Node) -> Scene {
    let [alpha, beta, gamma, delta] = ["alpha", "beta", "gamma", "delta"].map(|name| Pod::new("default", name));
    let (hit, bystander) = (unique("kh"), unique("kb"));
    node.apply(&json!({"links": [
        {"name": hit, "a": end(&alpha, "in1", &["10.91.0.1/24"]), "b": end(&beta, "in1", &["10.91.0.2/24"])},
        {"name": bystander, "a": end(&gamma, "in1", &["10.91.1.1/24"]), "b": end(&delta, "in1", &["10.91.1.2/24"])},
    ]}));
    for pod in [&beta, &gamma, &delta] {
        node.add(pod);
    }
    assert!(gamma.ping("10.91.1.2"), "the bystander carries traffic");
    Scene { alpha, beta, gamma, delta, hit, bystander }
}

/// Nothing of alpha's end is left, beta waits with no entry, and the
/// bystander is as it was.
fn assert_only_alpha_gone(node: &Node, scene: &Scene, round: u32) {
    assert!(host_link_gone(&host_ifname(&scene.hit, Side::A)), "round {round}: alpha's host veth is gone");
    assert!(scene.alpha.link_gone("in1"), "round {round}: alpha's pod end is gone");
    let bystander: Vec<u64> =
        [Side::A, Side::B].map(|side| u64::from(host_ifindex(&host_ifname(&scene.bystander, side)))).into();
    let mut keys: Vec<u64> = node.peers().into_iter().map(|(from, _)| from).collect();
    keys.sort_unstable();
    let mut want = bystander.clone();
    want.sort_unstable();
    assert_eq!(keys, want, "round {round}: only the bystander's two entries are in the peers map");
    assert_eq!(node.link_state(&scene.hit), "waiting", "round {round}: beta waits");
    let alpha_record = format!("/ratchet/containers/{}", container_of(&scene.alpha));
    assert!(!node.store_keys("/ratchet/containers/").contains(&alpha_record), "round {round}: no record of alpha");
    assert_eq!(node.store_keys("/ratchet/ends/").len(), 3, "round {round}: beta's and the bystander's records");
    assert!(scene.gamma.ping("10.91.1.2"), "round {round}: the bystander still carries traffic");
}

/// Afterwards alpha comes up normally, and no load's staging dir is left.
fn assert_alpha_comes_up(node: &Node, scene: &Scene) {
    node.add(&scene.alpha);
    assert!(scene.alpha.ping("10.91.0.2"), "alpha reaches beta after all the kills");
    let parent = node.pin_root.parent().unwrap();
    let prefix = format!("{}-loading-", node.pin_root.file_name().unwrap().to_string_lossy());
    let staging: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    assert!(staging.is_empty(), "no staging dir is left: {staging:?}");
    for pod in [&scene.alpha, &scene.beta, &scene.gamma, &scene.delta] {
        node.del(pod);
    }
}

/// Runs the rounds on a fresh scene: each `round` kills a `verb` at some
/// moment and cleans up after it as the runtime would, returning whether the
/// kill came before the verb finished; then only alpha's end may be gone.
fn kill_rounds(verb: &str, mut round: impl FnMut(&Node, &Scene, u32) -> bool) {
    let node = Node::new();
    let scene = scene(&node);
    let mut killed = 0;
    for number in 0..rounds() {
        killed += u32::from(round(&node, &scene, number));
        assert_only_alpha_gone(&node, &scene, number);
    }
    assert!(killed > 0, "no {verb} was killed before it finished");
    assert_alpha_comes_up(&node, &scene);
}

#[test]
fn add_killed_at_random_moments_then_del_leaves_nothing() {
    kill_rounds("ADD", |node, scene, round| {
        let killed = !node.call_pod_killed("ADD", &scene.alpha, delay(round, 40));
        node.del(&scene.alpha);
        killed
    });
}

#[test]
fn del_killed_at_random_moments_then_del_again_leaves_nothing() {
    kill_rounds("DEL", |node, scene, round| {
        node.add(&scene.alpha);
        let killed = !node.call_pod_killed("DEL", &scene.alpha, delay(round, 30));
        node.del(&scene.alpha);
        killed
    });
}

#[test]
fn add_killed_at_random_moments_then_gc_leaves_nothing() {
    kill_rounds("ADD", |node, scene, round| {
        let killed = !node.call_pod_killed("ADD", &scene.alpha, delay(round, 40));
        let valid: Vec<(String, &str)> =
            [&scene.beta, &scene.gamma, &scene.delta].map(|pod| (container_of(pod), "eth0")).into();
        node.gc(&node.config_for("1.1.0"), &valid).assert_silent_success(&format!("round {round}: GC"));
        killed
    });
}
