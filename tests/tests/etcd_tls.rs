//! etcd over TLS with client certificates: a real etcd started with
//! certificates this test makes (openssl), on 127.0.0.1 only.

use ratchet_tests::{Etcd, Node, Pod, Tls, end, unique};
use serde_json::json;

#[test]
fn etcd_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let tls = Tls::generate(dir.path(), "127.0.0.1").expect("make the certificates");
    let etcd = Etcd::with_tls(&tls);
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let mut config = node.config();
    config["etcd_endpoints"] = json!([etcd.endpoint()]);
    config["etcd_ca_file"] = json!(tls.ca);
    config["topology"] = json!({"links": [{"name": unique("lk"),
        "a": end(&alpha, "in1", &["10.87.0.1/24"]), "b": end(&beta, "in2", &["10.87.0.2/24"])}]});

    // Without a client certificate etcd refuses the connection: nothing is made.
    let refused = node.call_pod("ADD", &alpha, &config);
    assert!(!refused.success, "no client certificate, no store: {}", refused.stdout);
    assert!(alpha.link("in1").is_none());

    config["etcd_cert_file"] = json!(tls.client_cert);
    config["etcd_key_file"] = json!(tls.client_key);
    for pod in [&alpha, &beta] {
        let added = node.call_pod("ADD", pod, &config);
        assert!(added.success, "ADD over TLS: {}", added.stdout);
    }
    assert!(alpha.ping("10.87.0.2"), "the link is up, its records in the TLS etcd");
    for pod in [&alpha, &beta] {
        let deleted = node.call_pod("DEL", pod, &config);
        assert!(deleted.success, "DEL over TLS: {}", deleted.stdout);
    }
}
