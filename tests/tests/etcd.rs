//! The plugin with its store in etcd, where etcd itself is the subject: an
//! etcd that is down or hung makes a verb fail with 11 (try again later) and
//! leave nothing half-done, and the same call works once etcd is back; the
//! seed's `etcd_host`/`etcd_port` name an etcd as `etcd_endpoints` does; user
//! and password reach an etcd with authentication on. Every test starts an
//! etcd of its own on 127.0.0.1 (ports picked free), so they run in parallel.
//! The tests that run against both stores are in links, del, concurrency,
//! check and status_gc (`name::etcd`); the store itself is tested in store.rs.

use std::time::{Duration, Instant};

use ratchet_plugin::{naming, topology::Side};
use ratchet_tests::{Etcd, Node, Pod, container_of, end, host_has_link, host_link_gone, run, unique};
use serde_json::{Value, json};

/// Two pods and one link between them, applied; returns the link's id.
fn one_link(node: &Node, alpha: &Pod, beta: &Pod, subnet: u8) -> String {
    let link = unique("lk");
    node.apply(&json!({"links": [{"name": link,
        "a": end(alpha, "in1", &[&format!("10.85.{subnet}.1/24")]),
        "b": end(beta, "in2", &[&format!("10.85.{subnet}.2/24")])}]}));
    link
}

/// Panics unless nothing of `pod`'s end of `link` exists: no host veth, no
/// interface in the pod but `lo`.
fn assert_nothing_made(pod: &Pod, link: &str, side: Side) {
    let host = naming::host_ifname(link, side);
    assert!(!host_has_link(&host), "no host veth {host} is left");
    let inside: Vec<Value> = pod.links().into_iter().map(|l| l["ifname"].clone()).collect();
    assert_eq!(inside, [json!("lo")], "nothing but lo in the pod");
}

#[test]
fn with_etcd_stopped_add_fails_with_11_leaves_nothing_and_works_once_it_is_back() {
    let mut etcd = Etcd::new();
    let node = Node::with_etcd(&etcd);
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = one_link(&node, &alpha, &beta, 1);
    node.add(&alpha);
    assert!(node.peers().is_empty());

    etcd.stop();
    let started = Instant::now();
    let reply = node.call_pod("ADD", &beta, &node.config());
    let took = started.elapsed();
    reply.assert_error(11, &[&etcd.endpoint(), "unavailable"]);
    assert!(took < Duration::from_secs(10), "the runtime hears back soon: {took:?}");
    assert_nothing_made(&beta, &link, Side::B);
    assert!(node.peers().is_empty(), "no map entry: alpha is not wired to anything");
    assert!(alpha.link("in1").is_some(), "alpha's end is untouched");

    etcd.start();
    assert_eq!(node.link_state(&link), "waiting", "the failed ADD wrote nothing to etcd");
    assert_eq!(etcd.keys("/ratchet/containers/"), [format!("/ratchet/containers/{}", container_of(&alpha))]);
    node.add(&beta);
    assert_eq!(node.link_state(&link), "up", "the same ADD works once etcd is back");
    assert_eq!(node.peers().len(), 2);
    assert!(alpha.ping("10.85.1.2"));
    eprintln!("ADD with etcd stopped failed in {took:?}");
}

/// A hung etcd (it accepts connections, answers nothing) must not hang the
/// runtime: ADD gives up after the request timeout (5 s) with 11.
#[test]
fn with_etcd_hung_add_fails_with_11_in_bounded_time_and_leaves_nothing() {
    let etcd = Etcd::new();
    let node = Node::with_etcd(&etcd);
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = one_link(&node, &alpha, &beta, 2);

    etcd.pause();
    let started = Instant::now();
    let reply = node.call_pod("ADD", &alpha, &node.config());
    let took = started.elapsed();
    etcd.resume();
    reply.assert_error(11, &[&etcd.endpoint(), "unavailable"]);
    assert!(took < Duration::from_secs(15), "bounded by the request timeout: {took:?}");
    assert_nothing_made(&alpha, &link, Side::A);

    node.add(&alpha);
    node.add(&beta);
    assert_eq!(node.link_state(&link), "up");
    eprintln!("ADD with etcd hung failed in {took:?}");
}

/// DEL cannot forget an end without the store: it fails with 11 (the runtime
/// retries DEL) before it unwires or deletes anything, so the link keeps
/// working, and the retry once etcd is back removes everything.
#[test]
fn with_etcd_stopped_del_fails_with_11_touches_nothing_and_works_once_it_is_back() {
    let mut etcd = Etcd::new();
    let node = Node::with_etcd(&etcd);
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = one_link(&node, &alpha, &beta, 3);
    node.add(&alpha);
    node.add(&beta);
    let host = naming::host_ifname(&link, Side::A);

    etcd.stop();
    node.call_pod("DEL", &alpha, &node.config()).assert_error(11, &[&etcd.endpoint()]);
    assert!(host_has_link(&host) && alpha.link("in1").is_some(), "alpha's end is still there");
    assert_eq!(node.peers().len(), 2, "still wired both ways");
    assert!(alpha.ping("10.85.3.2"), "the link still carries traffic");

    etcd.start();
    node.del(&alpha);
    assert!(host_link_gone(&host) && alpha.link_gone("in1"));
    assert!(node.peers().is_empty());
    assert_eq!(node.link_state(&link), "waiting");
}

#[test]
fn with_etcd_stopped_status_is_50_and_ready_once_it_is_back() {
    let mut etcd = Etcd::new();
    let node = Node::with_etcd(&etcd);
    let config = node.config_for("1.1.0");
    node.status(&config).assert_silent_success("STATUS");
    etcd.stop();
    let reply = node.status(&config);
    reply.assert_error(50, &["store", &etcd.endpoint()]);
    etcd.start();
    node.status(&config).assert_silent_success("STATUS with etcd back");
}

/// The seed's config shape: `etcd_host` and `etcd_port` instead of
/// `etcd_endpoints` (here pointing at the test's own etcd on 127.0.0.1).
#[test]
fn the_seeds_etcd_host_and_etcd_port_select_that_etcd() {
    let etcd = Etcd::new();
    let node = Node::with_etcd(&etcd);
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = one_link(&node, &alpha, &beta, 4);
    let mut seed = node.config();
    seed.as_object_mut().unwrap().remove("etcd_endpoints");
    seed["etcd_host"] = json!("127.0.0.1");
    seed["etcd_port"] = json!(etcd.client_port);

    for pod in [&alpha, &beta] {
        let reply = node.call_pod("ADD", pod, &seed);
        assert!(reply.success, "ADD with etcd_host/etcd_port: {}", reply.stdout);
    }
    assert!(alpha.ping("10.85.4.2"));
    let ends = [format!("/ratchet/ends/{link}/a"), format!("/ratchet/ends/{link}/b")];
    assert_eq!(etcd.keys("/ratchet/ends/"), ends, "the records are in that etcd");
    assert_eq!(node.link_state(&link), "up", "and the CLI, given --etcd-endpoints, sees the same");
    assert!(!node.has_embedded_store(), "the embedded store was never opened");

    for pod in [&alpha, &beta] {
        node.call_pod("DEL", pod, &seed).assert_silent_success("DEL with etcd_host/etcd_port");
    }
    assert_eq!(etcd.keys("/ratchet/ends/"), Vec::<String>::new());
}

/// With authentication on, `etcd_username`/`etcd_password` let the plugin in;
/// a wrong password is refused and leaves nothing.
#[test]
fn etcd_username_and_password_reach_an_etcd_with_auth_on() {
    let etcd = Etcd::new();
    let node = Node::with_etcd(&etcd);
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    // The CLI has no credential options: apply the topology before auth is on.
    let link = one_link(&node, &alpha, &beta, 5);
    let endpoint = etcd.endpoint();
    run("etcdctl", &["--endpoints", &endpoint, "user", "add", "root", "--new-user-password=ratchet-test"]);
    run("etcdctl", &["--endpoints", &endpoint, "auth", "enable"]);
    let with = |password: &str| {
        let mut config = node.config();
        config["etcd_username"] = json!("root");
        config["etcd_password"] = json!(password);
        config
    };

    let refused = node.call_pod("ADD", &alpha, &with("wrong"));
    assert!(!refused.success, "a wrong password is refused: {}", refused.stdout);
    assert_eq!(refused.code(), Some(7), "a config error, not 'try again later': {}", refused.stdout);
    assert!(refused.error_text().contains(&endpoint), "names the etcd: {}", refused.stdout);
    eprintln!("ADD with a wrong etcd password: code {:?}: {}", refused.code(), refused.error_text());
    assert_nothing_made(&alpha, &link, Side::A);
    let anonymous = node.call_pod("ADD", &alpha, &node.config());
    assert!(!anonymous.success, "no credentials, no access: {}", anonymous.stdout);
    assert_nothing_made(&alpha, &link, Side::A);

    for pod in [&alpha, &beta] {
        let reply = node.call_pod("ADD", pod, &with("ratchet-test"));
        assert!(reply.success, "ADD with the right password: {}", reply.stdout);
    }
    assert!(alpha.ping("10.85.5.2"));
    let keys = run(
        "etcdctl",
        &["--endpoints", &endpoint, "--user", "root:ratchet-test", "get", "--prefix", "--keys-only", "/ratchet/ends/"],
    );
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 2, "{keys}");
}
