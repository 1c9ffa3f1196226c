//! etcd over TLS with client certificates: a real etcd started with
//! certificates this test makes (openssl), on 127.0.0.1 only.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use ratchet_tests::{Node, Pod, end, run, unique};
use serde_json::json;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all
/// signed by the CA, in `dir`.
fn make_certificates(dir: &Path) {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=ratchet-test-ca",
            "-keyout",
            &path("ca.key"),
            "-out",
            &path("ca.crt"),
        ],
    );
    for (name, usage) in [
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), usage).unwrap();
        run(
            "openssl",
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN=ratchet-test-{name}"),
                "-keyout",
                &path(&format!("{name}.key")),
                "-out",
                &path(&format!("{name}.csr")),
            ],
        );
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &path(&format!("{name}.csr")),
                "-CA",
                &path("ca.crt"),
                "-CAkey",
                &path("ca.key"),
                "-CAcreateserial",
                "-extfile",
                &path(&format!("{name}.ext")),
                "-out",
                &path(&format!("{name}.crt")),
            ],
        );
    }
}

/// etcd serving clients over TLS only to holders of a certificate the CA
/// signed; a plain-HTTP listener on another port answers `/health` alone.
struct TlsEtcd {
    child: Child,
    port: u16,
}

impl TlsEtcd {
    fn start(dir: &Path) -> Self {
        let ports: Vec<u16> =
            (0..3).map(|_| TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
        let (client, health, peer) = (ports[0], ports[1], ports[2]);
        let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .arg(format!("--data-dir={}", file("data")))
            .args(["--name", "default", "--heartbeat-interval=10", "--election-timeout=100"])
            .args(["--listen-client-urls", &format!("https://127.0.0.1:{client}")])
            .args(["--advertise-client-urls", &format!("https://127.0.0.1:{client}")])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{health}")])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(["--cert-file", &file("server.crt"), "--key-file", &file("server.key")])
            .args(["--trusted-ca-file", &file("ca.crt"), "--client-cert-auth"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let etcd = Self { child, port: client };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !healthy(health) {
            assert!(Instant::now() < deadline, "TLS etcd did not become healthy");
            thread::sleep(Duration::from_millis(20));
        }
        etcd
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let mut answer = String::new();
    stream.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.contains(r#""health":"true""#)
}

#[test]
fn etcd_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let etcd = TlsEtcd::start(dir.path());
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let file = |name: &str| dir.path().join(name);
    let mut config = node.config();
    config["etcd_endpoints"] = json!([format!("https://127.0.0.1:{}", etcd.port)]);
    config["etcd_ca_file"] = json!(file("ca.crt"));
    config["topology"] = json!({"links": [{"name": unique("lk"),
        "a": end(&alpha, "in1", &["10.87.0.1/24"]), "b": end(&beta, "in2", &["10.87.0.2/24"])}]});

    // Without a client certificate etcd refuses the connection: nothing is made.
    let refused = node.call_pod("ADD", &alpha, &config);
    assert!(!refused.success, "no client certificate, no store: {}", refused.stdout);
    assert!(alpha.link("in1").is_none());

    config["etcd_cert_file"] = json!(file("client.crt"));
    config["etcd_key_file"] = json!(file("client.key"));
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
