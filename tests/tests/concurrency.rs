//! Kubelet runs ADDs in parallel: ten links, twenty ADDs at once, each its
//! own process, must all come up with a consistent store, with either store
//! backend.

use std::thread;

use ratchet_tests::{Node, Pod, end, on_each_store, unique};
use serde_json::json;

on_each_store!(twenty_concurrent_adds_make_ten_links);

fn twenty_concurrent_adds_make_ten_links(node: &Node) {
    let pods: Vec<(Pod, Pod)> = (0..10)
        .map(|i| (Pod::new("default", &format!("left{i}")), Pod::new("default", &format!("right{i}"))))
        .collect();
    let prefix = unique("lk");
    let links: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, (a, b))| json!({"name": format!("{prefix}-{i}"), "a": end(a, "in1", &[&format!("10.80.{i}.1/24")]), "b": end(b, "in1", &[&format!("10.80.{i}.2/24")])}))
        .collect();
    node.apply(&json!({ "links": links }));

    thread::scope(|scope| {
        for (a, b) in &pods {
            for pod in [a, b] {
                scope.spawn(move || node.add(pod));
            }
        }
    });

    let links = node.links();
    assert_eq!(links.len(), 10);
    assert!(links.iter().all(|l| l["state"] == "up" && l["ends"].as_array().unwrap().len() == 2), "{links:?}");
    assert_eq!(node.peers().len(), 20, "every link wired both ways, exactly once");
    assert_eq!(node.store_keys("/ratchet/ends/").len(), 20, "one record per end");
    assert_eq!(node.store_keys("/ratchet/containers/").len(), 20, "one record per container");
    for (i, (a, _)) in pods.iter().enumerate() {
        assert!(a.ping(&format!("10.80.{i}.2")), "link l{i} carries traffic");
    }
}
