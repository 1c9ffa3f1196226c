//! `ratchet install` / `uninstall`, and the manifests in deploy/.

use std::path::Path;

use ratchet_tests::{Agent, Node, Pod, call_binary, end, kubelet_env, ratchet_bin, unique};
use serde::Deserialize as _;
use serde_json::{Value, json};

fn install(bin: &Path, conf: &Path, extra: &[&str]) -> String {
    let mut args = vec!["install", "--bin-dir", bin.to_str().unwrap(), "--conf-dir", conf.to_str().unwrap()];
    args.extend(extra);
    ratchet_tests::run(ratchet_bin().to_str().unwrap(), &args)
}

#[test]
fn install_is_idempotent_and_the_installed_plugin_works_from_its_conflist() {
    let node = Node::new();
    let dirs = tempfile::tempdir().unwrap();
    let (bin, conf) = (dirs.path().join("bin"), dirs.path().join("net.d"));
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let topology = dirs.path().join("topology.json");
    std::fs::write(
        &topology,
        json!({"links": [{"name": unique("lk"),
        "a": end(&alpha, "in1", &["10.89.0.1/24"]), "b": end(&beta, "in2", &["10.89.0.2/24"])}]})
        .to_string(),
    )
    .unwrap();
    let flags = ["--state-dir", node.state_dir.path().to_str().unwrap(), "--pin-root", node.pin_root.to_str().unwrap()];
    let mut extra = flags.to_vec();
    extra.extend(["--topology", topology.to_str().unwrap()]);

    let first = install(&bin, &conf, &extra);
    assert!(first.contains("wrote"), "{first}");
    let again = install(&bin, &conf, &extra);
    assert_eq!(again.matches("up to date").count(), 2, "a second install changes nothing: {again}");
    assert_eq!(std::fs::read(bin.join("ratchet")).unwrap(), std::fs::read(ratchet_bin()).unwrap());

    // Run the installed binary the way a runtime reads the conflist.
    let conflist: Value = serde_json::from_slice(&std::fs::read(conf.join("10-ratchet.conflist")).unwrap()).unwrap();
    assert_eq!(conflist["cniVersions"].as_array().unwrap().len(), 5);
    // What a runtime without `cniVersions` support (libcni < 1.2) reads.
    assert_eq!(conflist["cniVersion"], "1.0.0");
    let mut plugin = conflist["plugins"][0].clone();
    assert_eq!(plugin["type"], "ratchet");
    plugin["name"] = conflist["name"].clone();
    plugin["cniVersion"] = conflist["cniVersion"].clone();
    for pod in [&alpha, &beta] {
        let env = kubelet_env("ADD", pod);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = call_binary(&bin.join("ratchet"), &env, plugin.to_string().as_bytes());
        assert!(reply.success, "ADD through the installed conflist: {}", reply.stdout);
        assert_eq!(reply.json["cniVersion"], "1.0.0");
    }
    assert!(alpha.ping("10.89.0.2"));
    for pod in [&alpha, &beta] {
        node.del(pod);
    }

    let args = ["uninstall", "--bin-dir", bin.to_str().unwrap(), "--conf-dir", conf.to_str().unwrap()];
    let removed = ratchet_tests::run(ratchet_bin().to_str().unwrap(), &args);
    assert_eq!(removed.matches("removed").count(), 2, "{removed}");
    let again = ratchet_tests::run(ratchet_bin().to_str().unwrap(), &args);
    assert_eq!(again.matches("was not there").count(), 2, "{again}");
}

/// Two networks can run the same binary: uninstalling one keeps it.
#[test]
fn uninstall_keeps_a_binary_another_conflist_names() {
    let dirs = tempfile::tempdir().unwrap();
    let (bin, conf) = (dirs.path().join("bin"), dirs.path().join("net.d"));
    install(&bin, &conf, &[]);
    install(&bin, &conf, &["--conflist", "20-lab.conflist", "--network", "lab"]);
    let dir_args = ["--bin-dir", bin.to_str().unwrap(), "--conf-dir", conf.to_str().unwrap()];
    let uninstall = |conflist: &str| {
        let mut args = vec!["uninstall", "--conflist", conflist];
        args.extend(dir_args);
        ratchet_tests::run(ratchet_bin().to_str().unwrap(), &args)
    };
    let first = uninstall("10-ratchet.conflist");
    assert!(first.contains("still names it") && first.contains("20-lab.conflist"), "{first}");
    assert!(bin.join("ratchet").exists());
    let second = uninstall("20-lab.conflist");
    assert_eq!(second.matches("removed").count(), 2, "{second}");
    assert!(!bin.join("ratchet").exists());
}

/// An init container sees the host at /host: files go under it, the
/// conflist names the host's paths, etcd's TLS files are copied where the
/// plugin (on the host) reads them, the key root-only.
#[test]
fn install_under_a_host_root_writes_host_paths_and_copies_the_etcd_tls_files() {
    use std::os::unix::fs::PermissionsExt;
    let dirs = tempfile::tempdir().unwrap();
    let (host, secret) = (dirs.path().join("host"), dirs.path().join("secret"));
    std::fs::create_dir_all(&secret).unwrap();
    for name in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::write(secret.join(name), format!("PEM of {name}")).unwrap();
    }
    let file = |name: &str| secret.join(name).to_str().unwrap().to_owned();
    let (ca, cert, key) = (file("ca.crt"), file("tls.crt"), file("tls.key"));
    let args = [
        "install",
        "--host-root",
        host.to_str().unwrap(),
        "--conf-dir",
        "/etc/cni/multus/net.d",
        "--conflist",
        "ratchet-links.conflist",
        "--network",
        "ratchet-links",
        "--etcd-endpoints",
        "https://192.0.2.10:2379",
        "--etcd-ca-file",
        &ca,
        "--etcd-cert-file",
        &cert,
        "--etcd-key-file",
        &key,
    ];
    ratchet_tests::run(ratchet_bin().to_str().unwrap(), &args);
    assert!(host.join("opt/cni/bin/ratchet").exists());
    let conflist: Value =
        serde_json::from_slice(&std::fs::read(host.join("etc/cni/multus/net.d/ratchet-links.conflist")).unwrap())
            .unwrap();
    assert_eq!(conflist["name"], "ratchet-links");
    let plugin = &conflist["plugins"][0];
    assert_eq!(plugin["etcd_ca_file"], "/etc/ratchet/etcd-tls/ca.crt");
    assert_eq!(plugin["etcd_key_file"], "/etc/ratchet/etcd-tls/client.key");
    let copied = host.join("etc/ratchet/etcd-tls/client.key");
    assert_eq!(std::fs::read_to_string(&copied).unwrap(), "PEM of tls.key");
    assert_eq!(std::fs::metadata(&copied).unwrap().permissions().mode() & 0o777, 0o600, "the key is root-only");
}

#[test]
fn install_refuses_a_bad_topology() {
    let dirs = tempfile::tempdir().unwrap();
    let topology = dirs.path().join("topology.json");
    std::fs::write(
        &topology,
        r#"{"links": [{"a": {"pod": "x", "ifname": "in1"}, "b": {"pod": "default/b", "ifname": "in1"}}]}"#,
    )
    .unwrap();
    let out = std::process::Command::new(ratchet_bin())
        .args(["install", "--bin-dir", dirs.path().join("bin").to_str().unwrap()])
        .args(["--conf-dir", dirs.path().join("conf").to_str().unwrap(), "--topology", topology.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!dirs.path().join("conf").exists(), "nothing written");
}

/// `--metrics-address` lands in the conflist's plugin entry, and an agent
/// reading the installed conflist serves metrics and health there; an
/// address without a port is refused before anything is written.
#[test]
fn install_sets_the_metrics_address_and_the_agent_serves_there() {
    let node = Node::new();
    let dirs = tempfile::tempdir().unwrap();
    let (bin, conf) = (dirs.path().join("bin"), dirs.path().join("net.d"));
    // A port nothing listens on now (the kernel's pick, let go at once).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let (state_dir, pin_root) = (node.state_dir.path().to_str().unwrap(), node.pin_root.to_str().unwrap());
    let flags = ["--state-dir", state_dir, "--pin-root", pin_root, "--node-name", "node-1"];
    let mut extra = flags.to_vec();
    extra.extend(["--metrics-address", &address]);
    install(&bin, &conf, &extra);
    let conflist = conf.join("10-ratchet.conflist");
    let written: Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
    assert_eq!(written["plugins"][0]["metrics_address"], address.as_str());

    let agent = Agent::with_config(&node, &conflist, &[]);
    assert_eq!(agent.metrics_address().to_string(), address);
    assert!(agent.readiness_becomes(200, std::time::Duration::from_secs(10)));
    assert_eq!(agent.get("/healthz").status, 200);

    let refused = std::process::Command::new(ratchet_bin())
        .args(["install", "--bin-dir", dirs.path().join("bin2").to_str().unwrap()])
        .args(["--conf-dir", dirs.path().join("conf2").to_str().unwrap(), "--metrics-address", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--metrics-address"), "{refused:?}");
    assert!(!dirs.path().join("conf2").exists(), "nothing written");
}

/// Every manifest parses, names its kind, and the example topology and the
/// ConfigMap's files are what ratchet accepts; the DaemonSet's agent serves
/// on the node's address, and kubelet probes it there.
#[test]
fn the_deploy_manifests_parse() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut kinds = Vec::new();
    let mut topologies = Vec::new();
    for entry in std::fs::read_dir(&deploy).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml") => {
                for document in serde_yaml::Deserializer::from_str(&text) {
                    let value =
                        serde_yaml::Value::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    let kind = value["kind"].as_str().unwrap_or_else(|| panic!("{}: no kind", path.display()));
                    assert!(value["metadata"]["name"].is_string(), "{}: {kind} has no name", path.display());
                    kinds.push(kind.to_owned());
                    if kind == "DaemonSet" {
                        assert_daemonset_fits_a_cluster(&value);
                    }
                    if kind == "NetworkAttachmentDefinition" {
                        assert!(value["spec"]["config"].is_null(), "Multus reads the node's conflist from its confDir");
                    }
                    if kind == "ConfigMap" {
                        let etcd = value["data"]["etcd-endpoints"].as_str().unwrap();
                        assert!(!etcd.contains(".svc"), "the host's resolver knows no cluster names: {etcd}");
                        for (key, data) in value["data"].as_mapping().unwrap() {
                            if key.as_str().unwrap().ends_with(".json") {
                                let json: Value = serde_json::from_str(data.as_str().unwrap()).unwrap();
                                assert!(json.is_object(), "{key:?}");
                            }
                        }
                    }
                    if kind == "Topology" {
                        topologies.push(serde_yaml::from_value(value).expect("a meshnet Topology"));
                    }
                }
            }
            Some("json") => {
                ratchet_plugin::topology::Topology::from_json(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            _ => {}
        }
    }
    kinds.sort();
    let expected = [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "CustomResourceDefinition",
        "DaemonSet",
        "NetworkAttachmentDefinition",
        "Pod",
        "ServiceAccount",
        "Topology",
        "Topology",
    ];
    assert_eq!(kinds, expected);
    let example = ratchet_plugin::topology::meshnet::to_topology(&topologies, "default").expect("the example's links");
    assert_eq!(example.links.len(), 1, "both halves of one link");
}

/// The DaemonSet runs as a cluster runs a node agent, installs ratchet as
/// the Multus network its attachment names (not the node's primary network),
/// with the metrics on the node's address where kubelet's probes ask.
fn assert_daemonset_fits_a_cluster(daemonset: &serde_yaml::Value) {
    let spec = &daemonset["spec"]["template"]["spec"];
    assert_eq!(spec["priorityClassName"].as_str(), Some("system-node-critical"));
    assert_eq!(spec["tolerations"][0]["operator"].as_str(), Some("Exists"), "every node");
    let install: Vec<&str> =
        spec["initContainers"][0]["command"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    for flag in [
        "--metrics-address=$(NODE_IP):9478",
        "--conf-dir=/etc/cni/multus/net.d",
        "--network=ratchet-links",
        "--host-root=/host",
    ] {
        assert!(install.contains(&flag), "the installer passes {flag}: {install:?}");
    }
    let agent = &spec["containers"][0];
    let config =
        agent["command"].as_sequence().unwrap().iter().filter_map(|a| a.as_str()).collect::<Vec<_>>().join(" ");
    assert!(config.contains("--config=/host/etc/cni/multus/net.d/ratchet-links.conflist"), "{config}");
    assert!(config.contains("--watch-topologies"), "{config}");
    assert_eq!(spec["serviceAccountName"].as_str(), Some("ratchet"), "the account deploy/rbac.yaml binds");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(agent[probe]["httpGet"]["path"].as_str(), Some(path), "{probe}");
        assert_eq!(agent[probe]["httpGet"]["port"].as_u64(), Some(9478), "{probe}");
    }
    for container in [&spec["initContainers"][0], agent] {
        assert!(container["resources"]["requests"]["memory"].is_string(), "{:?} asks for memory", container["name"]);
    }
    let bpffs = agent["volumeMounts"].as_sequence().unwrap().iter().find(|m| m["mountPath"] == "/sys/fs/bpf").unwrap();
    assert_eq!(bpffs["mountPropagation"].as_str(), Some("Bidirectional"), "pins outlive the pod");
}
