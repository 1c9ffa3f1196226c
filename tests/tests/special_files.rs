//! Every input that names a path, fed what is not the file it expects: a
//! FIFO (a plain open would wait for a writer forever), /dev/zero (endless),
//! a directory, and for the netns a file that is not a network namespace.
//! Each must be refused with a clear error within seconds, never hang or
//! swamp the process; and a verb whose delegated plugin hangs answers by its
//! deadline.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use ratchet_tests::{Node, Pod, Reply, call_binary, end, kubelet_env, ratchet_bin, unique};
use serde_json::{Value, json};

/// Far above what refusing a file takes, far below the verb's deadline.
const PROMPTLY: Duration = Duration::from_secs(5);

/// A FIFO, /dev/zero and a directory, in a temporary directory of their own.
struct Specials {
    dir: tempfile::TempDir,
}

impl Specials {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        Self { dir }
    }

    /// Each special file, with what the error should call it.
    fn each(&self) -> [(PathBuf, &'static str); 3] {
        [
            (self.dir.path().join("fifo"), "FIFO"),
            ("/dev/zero".into(), "character device"),
            (self.dir.path().join("dir"), "directory"),
        ]
    }
}

/// Runs `f`, failing the test if it takes longer than [`PROMPTLY`].
fn promptly<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    assert!(started.elapsed() < PROMPTLY, "{what} took {:?}", started.elapsed());
    out
}

/// A verb on `pod` with this config and CNI_NETNS.
fn verb(command: &str, pod: &Pod, netns: &str, config: &Value) -> Reply {
    let mut env = kubelet_env(command, pod);
    env.retain(|(key, _)| *key != "CNI_NETNS");
    env.push(("CNI_NETNS", netns.to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    call_binary(&ratchet_bin(), &env, config.to_string().as_bytes())
}

/// The CLI with a kill switch: `timeout` ends it (status 124) if it hangs.
fn cli(args: &[&str]) -> (i32, String) {
    let out = Command::new("timeout").arg("30").arg(ratchet_bin()).args(args).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), said)
}

fn linked_pod(node: &Node) -> (Pod, Pod) {
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    node.apply(&json!({"links": [{"name": unique("sp"),
        "a": end(&alpha, "in1", &["10.97.0.1/24"]), "b": end(&beta, "in1", &["10.97.0.2/24"])}]}));
    (alpha, beta)
}

#[test]
fn cni_netns_that_is_not_a_network_namespace() {
    let node = Node::new();
    let (alpha, _beta) = linked_pod(&node);
    let specials = Specials::new();
    let regular = specials.dir.path().join("regular");
    std::fs::write(&regular, "not a netns").unwrap();
    let mut paths: Vec<PathBuf> = specials.each().into_iter().map(|(path, _)| path).collect();
    paths.extend([regular, "/proc/self/ns/mnt".into()]);
    for path in &paths {
        let netns = path.to_str().unwrap();
        let reply = promptly(netns, || verb("ADD", &alpha, netns, &node.config()));
        reply.assert_error(4, &["CNI_NETNS", netns]);
    }
    assert!(!node.pin_root.exists() || node.map_keys("stats").is_empty(), "nothing was attached");
    let cached = node.add(&alpha);
    let config = ratchet_tests::with_prev_result(&node.config(), &cached);
    for path in &paths {
        let netns = path.to_str().unwrap();
        promptly(netns, || verb("CHECK", &alpha, netns, &config)).assert_error(4, &["CNI_NETNS"]);
    }
}

#[test]
fn config_paths_that_are_not_regular_files() {
    let node = Node::new();
    let (alpha, _beta) = linked_pod(&node);
    let specials = Specials::new();
    for (path, kind) in specials.each() {
        let mut cases: Vec<(&str, Value)> = Vec::new();
        let with = |key: &str, extra: &[(&str, Value)]| {
            let mut config = node.config();
            config[key] = json!(path);
            for (key, value) in extra {
                config[*key] = value.clone();
            }
            config
        };
        let https = ("etcd_endpoints", json!(["https://127.0.0.1:1"]));
        let ca = ("etcd_ca_file", json!("/etc/ssl/certs/ca-certificates.crt"));
        cases.push(("etcd_ca_file", with("etcd_ca_file", std::slice::from_ref(&https))));
        cases.push(("etcd_cert_file", with("etcd_cert_file", &[https, ca, ("etcd_key_file", json!(path))])));
        if kind != "character device" {
            // /dev/null-like devices take log lines; these do not.
            cases.push(("log_file", with("log_file", &[])));
        }
        if kind == "FIFO" {
            cases.push(("state_dir", with("state_dir", &[])));
            cases.push(("pin_root", with("pin_root", &[])));
        }
        for (key, config) in cases {
            let what = format!("{key} = {}", path.display());
            let reply = promptly(&what, || verb("ADD", &alpha, &alpha.netns_path(), &config));
            assert!(!reply.success && reply.code().is_some(), "{what}: {}", reply.stdout);
            if key != "state_dir" && key != "pin_root" {
                assert_eq!(reply.code(), Some(7), "{what}: {}", reply.stdout);
                let said = reply.error_text();
                assert!(said.contains(kind) || said.contains("No such device"), "{what}: {said}");
            }
        }
    }
    assert!(alpha.link("in1").is_none(), "no ADD made anything");
}

#[test]
fn cli_paths_that_are_not_regular_files() {
    let node = Node::new();
    let specials = Specials::new();
    let dirs = ["--state-dir", node.state_dir.path().to_str().unwrap(), "--pin-root", node.pin_root.to_str().unwrap()];
    let bin_dir = tempfile::tempdir().unwrap();
    for (path, kind) in specials.each() {
        let path = path.to_str().unwrap();
        let mut runs: Vec<Vec<&str>> =
            vec![[&dirs[..], &["topology", "apply", path]].concat(), ["agent", "--config", path].to_vec()];
        for flag in ["--delegate", "--boot-network", "--topology"] {
            let install = [
                "install",
                "--bin-dir",
                bin_dir.path().to_str().unwrap(),
                "--conf-dir",
                bin_dir.path().to_str().unwrap(),
            ];
            runs.push([&dirs[..], &install[..], &[flag, path]].concat());
        }
        for args in runs {
            let (status, said) = promptly(&format!("{args:?}"), || cli(&args));
            assert!(status != 0 && status != 124, "{args:?} must fail at once: {status} {said}");
            assert!(said.contains(kind), "{args:?} says what the file is: {said}");
        }
    }
    let topology: Vec<String> = node.store_keys("/ratchet/topology/");
    assert!(topology.is_empty(), "nothing was applied: {topology:?}");
}

#[test]
fn more_etcd_endpoints_than_members_is_a_config_error() {
    let node = Node::new();
    let (alpha, _beta) = linked_pod(&node);
    let mut config = node.config_for("1.1.0");
    let endpoints: Vec<String> = (0..65).map(|i| format!("http://127.0.0.1:{}", 30000 + i)).collect();
    config["etcd_endpoints"] = json!(endpoints);
    for command in ["ADD", "DEL"] {
        let reply = promptly(command, || node.call_pod(command, &alpha, &config));
        reply.assert_error(7, &["etcd_endpoints", "65 endpoints"]);
    }
    promptly("STATUS", || node.status(&config)).assert_error(7, &["etcd_endpoints", "65 endpoints"]);
}

/// A delegated plugin that never answers: the verb answers 11 by its
/// deadline, and the plugin does not outlive it.
#[test]
fn a_hanging_delegate_is_cut_off_at_the_verb_deadline() {
    let node = Node::new();
    let plugins = tempfile::tempdir().unwrap();
    let pid_file = plugins.path().join("pid");
    let stub = plugins.path().join("hang");
    std::fs::write(&stub, format!("#!/bin/sh\necho $$ > {}\nexec sleep 300\n", pid_file.display())).unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let plain = Pod::new("default", "plain");
    let mut config = node.config();
    config["delegate"] = json!({"type": "hang"});
    config["verb_timeout_seconds"] = json!(2);
    let mut env = kubelet_env("ADD", &plain);
    env.retain(|(key, _)| *key != "CNI_PATH");
    env.push(("CNI_PATH", plugins.path().to_str().unwrap().to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let started = Instant::now();
    let reply = call_binary(&ratchet_bin(), &env, config.to_string().as_bytes());
    let took = started.elapsed();
    reply.assert_error(11, &["did not finish within 2 s", "verb_timeout_seconds"]);
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(4), "answered after {took:?}");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let gone = ratchet_tests::eventually(|| !Path::new(&format!("/proc/{}", pid.trim())).exists());
    assert!(gone, "the hanging plugin was killed");
}
