//! deploy/'s DaemonSet run as kubelet runs it, end to end.
//!
//! The test reads `deploy/daemonset.yaml` and `deploy/configmap.yaml`,
//! imports `cargo xtask image`'s archive into a private containerd (the
//! `ratchet_tests::cri` fixture) and makes the CRI calls kubelet makes for
//! the DaemonSet's pod: RunPodSandbox on the host network (privileged, since
//! a container is), the init container run to its end, then the agent, each
//! with the manifest's command ($(VAR) expanded as kubelet expands it), env
//! (fieldRef, configMapKeyRef), volume mounts (hostPath, ConfigMap and
//! Secret volumes; readOnly; mountPropagation Bidirectional and
//! HostToContainer), privileged flag and resources. Then two workload pods get
//! their link the way Multus delegates a secondary network (the installed
//! conflist's plugin entry, with `name` and `cniVersion` injected, run from
//! the host's CNI bin dir with the pod's `CNI_ARGS` and `CNI_IFNAME=net1`)
//! and ping across it; the agent answers /healthz and /readyz and its
//! /metrics on the node's address; stopping the DaemonSet's pod leaves the
//! link forwarding.
//!
//! **The node's real paths are never written.** The DaemonSet's hostPaths are
//! the node's own (/opt/cni/bin, /etc/cni/multus/net.d, /etc/ratchet,
//! /var/lib/ratchet), so the test thread first moves into a mount namespace
//! of its own with overlays over /etc, /opt and /var/lib
//! (`ratchet_tests::private_node`); containerd, the shims, the containers
//! and every plugin call are started from this thread and inherit it.
//! The overrides of the manifests are what a test node must not share
//! with a real one: `--pin-root` (a bpffs directory of its own, removed at the
//! end; /sys/fs/bpf is the host's, mounted Bidirectional as the manifest
//! says), the node's name and address (127.0.0.1, so the agent serves on
//! 127.0.0.1:9478 and the node makes `rtvx0`, deleted at the end when it
//! made it) and etcd (the harness's, TLS with client certificates, as the
//! Secret). The topology (the test's two pods) is applied with the installed
//! binary's `ratchet topology apply`; the agent's watch of Topology objects
//! finds no API server here and keeps retrying, which must not keep it from
//! serving or being ready.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ImageSpec, KeyValue, LinuxContainerConfig, LinuxContainerResources,
    LinuxContainerSecurityContext, Mount, MountPropagation, NamespaceMode, PortMapping, Protocol,
};
use ratchet_harness::{
    image::{elf_linkage, image_reference},
    runtime::pod_args,
};
use ratchet_tests::{
    Bridge, Etcd, HostLocal, Reply, Scrape, Tls, call_binary,
    cri::{Containerd, Sandbox},
    eventually, host_has_link, host_link_gone,
    private_node::{NodeLeftovers, PrivateMounts, VXLAN_DEVICE},
    ratchet_image,
    scrape::try_request,
    unique, with_prev_result,
};
use serde::Deserialize;
use serde_json::{Value, json};
use serde_yaml::Value as Yaml;

/// The node's address as the test gives it (`status.hostIP`).
const NODE_IP: &str = "127.0.0.1";

/// The directories overlaid in the test's mount namespace: every hostPath
/// the DaemonSet writes is under one of them.
const OVERLAID: [&str; 3] = ["/etc", "/opt", "/var/lib"];

/// What a node's ratchet makes by default that the test must never make
/// (`cargo xtask test` checks the same).
const NODE_DEFAULTS: [&str; 2] = ["/var/lib/ratchet", "/sys/fs/bpf/ratchet"];

/// Multus's `CNI_IFNAME` for a pod's first secondary network.
const SECONDARY_IFNAME: &str = "net1";

/// How long the agent may take to serve and be ready, and its round to
/// see both ends.
const AGENT_WITHIN: Duration = Duration::from_secs(20);

fn read_yaml(name: &str) -> Yaml {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// kubelet's `$(VAR)` expansion of a command, an arg or an env value:
/// `$(NAME)` becomes the value of a variable defined before, `$$` a `$`,
/// anything else stays as written.
fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(reference) = after.strip_prefix('(')
            && let Some(end) = reference.find(')')
        {
            let name = &reference[..end];
            match env.iter().rev().find(|(key, _)| key == name) {
                Some((_, value)) => out.push_str(value),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &reference[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A quantity as Kubernetes writes memory (`64Mi`, `1Gi`, `512Ki`, bytes).
fn bytes_of(quantity: &str) -> i64 {
    let (number, unit) = quantity.split_at(quantity.find(|c: char| !c.is_ascii_digit()).unwrap_or(quantity.len()));
    let number: i64 = number.parse().unwrap_or_else(|_| panic!("memory quantity {quantity}"));
    number
        * match unit {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            other => panic!("memory unit {other} in {quantity}"),
        }
}

/// kubelet's CPU shares for a CPU request (`10m`, `1`): 1024 per CPU, at
/// least 2.
fn cpu_shares(quantity: &str) -> i64 {
    let milli: i64 = match quantity.strip_suffix('m') {
        Some(milli) => milli.parse().unwrap(),
        None => quantity.parse::<i64>().unwrap() * 1000,
    };
    (milli * 1024 / 1000).max(2)
}

/// A Secret volume's `defaultMode` as Kubernetes reads the manifest (YAML
/// 1.1: a leading zero is octal; serde_yaml, YAML 1.2, leaves it a string).
fn file_mode(value: &Yaml) -> u32 {
    match value {
        Yaml::Number(number) => u32::try_from(number.as_u64().unwrap()).unwrap(),
        Yaml::String(octal) if octal.starts_with('0') => u32::from_str_radix(octal, 8).unwrap(),
        other => panic!("defaultMode {other:?}"),
    }
}

/// What kubelet knows of the node and the cluster when it makes the pod.
struct Cluster {
    node_name: String,
    /// The ConfigMap's name and data.
    configmap_name: String,
    configmap: BTreeMap<String, String>,
    configmap_dir: PathBuf,
    secret_dir: PathBuf,
    /// The test's pin root: `--pin-root` added to the installer's command.
    pin_root: PathBuf,
}

impl Cluster {
    /// A container's env as kubelet resolves it: literal values (expanded),
    /// `fieldRef` (spec.nodeName, status.hostIP) and `configMapKeyRef`.
    fn env(&self, container: &Yaml) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        for var in container["env"].as_sequence().into_iter().flatten() {
            let name = var["name"].as_str().expect("an env name").to_owned();
            let value = if let Some(value) = var["value"].as_str() {
                expand(value, &env)
            } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match field {
                    "spec.nodeName" => self.node_name.clone(),
                    "status.hostIP" => NODE_IP.to_owned(),
                    other => panic!("env {name}: the test does not know fieldRef {other}"),
                }
            } else if let Some(key) = var["valueFrom"]["configMapKeyRef"]["key"].as_str() {
                let of = var["valueFrom"]["configMapKeyRef"]["name"].as_str();
                assert_eq!(
                    of,
                    Some(self.configmap_name.as_str()),
                    "env {name} reads deploy/configmap.yaml's ConfigMap"
                );
                self.configmap.get(key).unwrap_or_else(|| panic!("env {name}: the ConfigMap has no {key}")).clone()
            } else {
                panic!("env {name}: the test does not know {var:?}")
            };
            env.push((name, value));
        }
        env
    }

    /// The pod's volumes as kubelet sets them up: hostPaths (made when
    /// `DirectoryOrCreate`; noted in `made` when outside the overlays), the
    /// ConfigMap and the Secret as directories of their files.
    fn volumes(&self, spec: &Yaml, made: &mut Vec<PathBuf>) -> BTreeMap<String, PathBuf> {
        let mut volumes = BTreeMap::new();
        for volume in spec["volumes"].as_sequence().expect("volumes") {
            let name = volume["name"].as_str().expect("a volume name").to_owned();
            let path = if let Some(path) = volume["hostPath"]["path"].as_str() {
                let path = PathBuf::from(path);
                match volume["hostPath"]["type"].as_str() {
                    Some("DirectoryOrCreate") if !path.exists() => {
                        if !OVERLAID.iter().any(|dir| path.starts_with(dir)) {
                            let first = path.ancestors().filter(|p| !p.exists()).last().unwrap().to_owned();
                            made.push(first);
                        }
                        std::fs::create_dir_all(&path).unwrap();
                    }
                    Some("DirectoryOrCreate") | None => assert!(path.exists(), "hostPath {}", path.display()),
                    Some(other) => panic!("hostPath type {other}: the test does not know it"),
                }
                path
            } else if let Some(configmap) = volume["configMap"]["name"].as_str() {
                assert_eq!(configmap, self.configmap_name, "volume {name}");
                self.configmap_dir.clone()
            } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
                assert_eq!(secret, "ratchet-etcd-tls", "volume {name}: the Secret the README tells to create");
                let mode = file_mode(&volume["secret"]["defaultMode"]);
                for file in std::fs::read_dir(&self.secret_dir).unwrap() {
                    std::fs::set_permissions(file.unwrap().path(), std::fs::Permissions::from_mode(mode)).unwrap();
                }
                self.secret_dir.clone()
            } else {
                panic!("volume {name}: the test does not know {volume:?}")
            };
            volumes.insert(name, path);
        }
        volumes
    }

    /// The CRI container config kubelet makes from the manifest's
    /// container: command and args with `$(VAR)` expanded, env, mounts,
    /// privileged, resources, the pod's namespaces.
    fn container(&self, container: &Yaml, volumes: &BTreeMap<String, PathBuf>, pod: &Sandbox) -> ContainerConfig {
        let name = container["name"].as_str().expect("a container name").to_owned();
        let env = self.env(container);
        let words = |key: &str| -> Vec<String> {
            let list = container[key].as_sequence().into_iter().flatten();
            list.map(|word| expand(word.as_str().expect("a string"), &env)).collect()
        };
        let (mut command, args) = (words("command"), words("args"));
        for word in command.iter().chain(&args) {
            assert!(!word.contains("$("), "{name}: {word} names a variable the container does not define");
        }
        if name == "install" {
            // The one change to the manifest's command: a pin root of the
            // test's own, never the node's real default.
            command.push(format!("--pin-root={}", self.pin_root.display()));
        }
        let mounts = container["volumeMounts"].as_sequence().into_iter().flatten().map(|mount| {
            let volume = mount["name"].as_str().expect("a volume name");
            let propagation = match mount["mountPropagation"].as_str() {
                None | Some("None") => MountPropagation::PropagationPrivate,
                Some("HostToContainer") => MountPropagation::PropagationHostToContainer,
                Some("Bidirectional") => MountPropagation::PropagationBidirectional,
                Some(other) => panic!("{name}: mountPropagation {other}"),
            };
            Mount {
                container_path: mount["mountPath"].as_str().expect("a mountPath").into(),
                host_path: volumes[volume].to_str().unwrap().into(),
                readonly: mount["readOnly"].as_bool().unwrap_or(false),
                propagation: propagation.into(),
                ..Default::default()
            }
        });
        let resources = &container["resources"];
        let linux = LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                cpu_period: 100_000,
                cpu_shares: resources["requests"]["cpu"].as_str().map_or(2, cpu_shares),
                memory_limit_in_bytes: resources["limits"]["memory"].as_str().map_or(0, bytes_of),
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                privileged: container["securityContext"]["privileged"].as_bool().unwrap_or(false),
                // kubelet gives each container the pod's namespaces.
                namespace_options: pod
                    .config
                    .linux
                    .as_ref()
                    .and_then(|linux| linux.security_context.as_ref())
                    .and_then(|context| context.namespace_options.clone()),
                ..Default::default()
            }),
        };
        let image = container["image"].as_str().expect("an image");
        assert_eq!(image, image_reference(), "{name} runs the image `cargo xtask image` built");
        ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.clone(), attempt: 0 }),
            image: Some(ImageSpec { image: image.into(), ..Default::default() }),
            command,
            args,
            envs: env.into_iter().map(|(key, value)| KeyValue { key, value }).collect(),
            mounts: mounts.collect(),
            log_path: format!("{}.log", unique(&format!("{name}-"))),
            linux: Some(linux),
            ..Default::default()
        }
    }
}

/// The installed plugin run as Multus runs a delegate from the node's
/// conflist: the list's `name` and `cniVersion` injected into its plugin
/// entry, the pod's `CNI_ARGS`, `CNI_IFNAME` net1, the host's CNI bin dir.
fn multus(command: &str, conflist: &Value, pod: &Sandbox, namespace: &str, name: &str, prev: Option<&Value>) -> Reply {
    let mut config = conflist["plugins"][0].clone();
    config["name"] = conflist["name"].clone();
    config["cniVersion"] = conflist["cniVersion"].clone();
    if let Some(prev) = prev {
        config = with_prev_result(&config, prev);
    }
    let netns = pod.netns.as_deref().expect("a pod netns");
    let args = pod_args(namespace, name, Some(&pod.id));
    let env = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", pod.id.as_str()),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", SECONDARY_IFNAME),
        ("CNI_PATH", "/opt/cni/bin"),
        ("CNI_ARGS", args.as_str()),
    ];
    call_binary(Path::new("/opt/cni/bin/ratchet"), &env, config.to_string().as_bytes())
}

/// The scrape of the agent's /metrics, if it answers 200.
fn scrape(address: SocketAddr) -> Option<Scrape> {
    let answer = try_request(address, "GET", "/metrics").ok()?;
    (answer.status == 200).then(|| Scrape::parse(&answer.body))
}

#[test]
fn the_daemonset_runs_as_kubelet_runs_it() {
    let Some(archive) = ratchet_image() else { return };
    let started = Instant::now();
    let daemonset = read_yaml("daemonset.yaml");
    let configmap = read_yaml("configmap.yaml");
    let spec = daemonset["spec"]["template"]["spec"].clone();
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    let (init, main) = (spec["initContainers"].as_sequence().unwrap(), spec["containers"].as_sequence().unwrap());
    assert_eq!((init.len(), main.len()), (1, 1), "the installer and the agent");
    let (install, agent) = (&init[0], &main[0]);
    let metrics_free = TcpListener::bind((NODE_IP, 9478)).is_ok();
    assert!(metrics_free, "{NODE_IP}:9478, where the DaemonSet's agent serves, is taken on this machine");

    // What a test must leave as it found it on the node's real filesystem.
    let host_paths: Vec<PathBuf> = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|volume| volume["hostPath"]["path"].as_str().map(PathBuf::from))
        .chain(NODE_DEFAULTS.iter().map(PathBuf::from))
        .collect();
    let absent_before: Vec<PathBuf> = host_paths.into_iter().filter(|path| !path.exists()).collect();
    let work = tempfile::Builder::new().prefix("ratchet-ds-").tempdir().unwrap();

    {
        let mounts = PrivateMounts::enter(&work.path().join("overlays"), &OVERLAID);
        the_daemonset_on_a_private_node(work.path(), &archive, &spec, install, agent, &configmap);
        drop(mounts);
    }

    for path in &absent_before {
        assert!(!path.exists(), "{} reached the node's real filesystem", path.display());
    }
    eprintln!("the DaemonSet run as kubelet runs it in {:.1} s", started.elapsed().as_secs_f64());
}

/// The scenario, inside the test's mount namespace.
fn the_daemonset_on_a_private_node(
    work: &Path,
    archive: &Path,
    spec: &Yaml,
    install: &Yaml,
    agent: &Yaml,
    configmap: &Yaml,
) {
    for dir in ["pki", "configmap", "secret", "images"] {
        std::fs::create_dir(work.join(dir)).unwrap();
    }
    let tls = Tls::generate(&work.join("pki"), NODE_IP).unwrap();
    let etcd = Etcd::with_tls(&tls);
    for (from, to) in [(&tls.ca, "ca.crt"), (&tls.client_cert, "tls.crt"), (&tls.client_key, "tls.key")] {
        std::fs::copy(from, work.join("secret").join(to)).unwrap();
    }

    // The cluster: the ConfigMap's data, with this test's etcd; its topology.
    let namespace = unique("lab");
    let link = unique("dslk");
    let (a_ip, b_ip) = ("10.165.0.1", "10.165.0.2");
    let topology = json!({"links": [{"name": link,
        "a": {"pod": format!("{namespace}/alpha"), "ifname": "in1", "ips": [format!("{a_ip}/24")]},
        "b": {"pod": format!("{namespace}/beta"), "ifname": "in1", "ips": [format!("{b_ip}/24")]}}]});
    let mut data: BTreeMap<String, String> = serde_yaml::from_value(configmap["data"].clone()).unwrap();
    assert!(
        data.insert("etcd-endpoints".into(), etcd.endpoint()).is_some(),
        "deploy/configmap.yaml has etcd-endpoints"
    );
    for (key, value) in &data {
        std::fs::write(work.join("configmap").join(key), value).unwrap();
    }
    let cluster = Cluster {
        node_name: unique("dsnode"),
        configmap_name: configmap["metadata"]["name"].as_str().unwrap().to_owned(),
        configmap: data,
        configmap_dir: work.join("configmap"),
        secret_dir: work.join("secret"),
        pin_root: PathBuf::from(format!("/sys/fs/bpf/{}", unique("rtds"))),
    };
    let mut leftovers = NodeLeftovers::new(cluster.pin_root.clone());

    // The pods' primary network, as the cluster's own CNI: bridge + host-local.
    let (bridge, ipam) = (Bridge::new(), HostLocal::new("10.157.0.0/24"));
    let primary = json!({"cniVersion": "1.0.0", "name": unique("rtprimary"), "plugins": [
        {"type": "bridge", "bridge": bridge.name, "isGateway": true, "ipam": ipam.ipam()}]});
    let mut containerd = Containerd::start(&primary);
    containerd.import_test_images(&work.join("images"));
    containerd.import(archive, &image_reference());

    // The DaemonSet's pod: host network, privileged (a container is), the
    // metrics port mapped to the node as kubelet maps a host-network pod's.
    let volumes = cluster.volumes(spec, &mut leftovers.made_dirs);
    let mut config = containerd.pod_config("kube-system", &unique("ratchet-"));
    config.hostname = String::new();
    let context = config.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    context.namespace_options.as_mut().unwrap().network = NamespaceMode::Node.into();
    context.privileged = true;
    config.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp.into(),
        container_port: 9478,
        host_port: 9478,
        ..Default::default()
    }];
    let pod = containerd.run_sandbox(config);

    // The init container: the binary and the conflist on the node.
    let (code, log) = containerd.run_config_to_exit(&pod, cluster.container(install, &volumes, &pod));
    assert_eq!(code, 0, "the installer:\n{log}");
    let binary = Path::new("/opt/cni/bin/ratchet");
    assert!(elf_linkage(binary).unwrap().is_static(), "the image's static binary is installed");
    let version = ratchet_tests::run(binary.to_str().unwrap(), &["--version"]);
    assert_eq!(version.trim(), format!("ratchet {}", env!("CARGO_PKG_VERSION")));
    let conflist_path = Path::new("/etc/cni/multus/net.d/ratchet-links.conflist");
    let conflist: Value = serde_json::from_str(&std::fs::read_to_string(conflist_path).unwrap()).unwrap();
    assert_eq!(conflist["name"].as_str(), Some(attachment_name().as_str()), "the network the attachment names");
    let plugin = &conflist["plugins"][0];
    let metrics: SocketAddr = format!("{NODE_IP}:9478").parse().unwrap();
    let expected = json!({"type": "ratchet", "state_dir": "/var/lib/ratchet", "pin_root": cluster.pin_root,
        "etcd_endpoints": [etcd.endpoint()], "etcd_ca_file": "/etc/ratchet/etcd-tls/ca.crt",
        "etcd_cert_file": "/etc/ratchet/etcd-tls/client.crt", "etcd_key_file": "/etc/ratchet/etcd-tls/client.key",
        "node_name": cluster.node_name, "node_ip": NODE_IP, "metrics_address": metrics.to_string()});
    assert_eq!(plugin, &expected, "the installed plugin entry");
    for (file, from, mode) in [("ca.crt", &tls.ca, 0o644), ("client.crt", &tls.client_cert, 0o644)]
        .into_iter()
        .chain([("client.key", &tls.client_key, 0o600)])
    {
        let path = Path::new("/etc/ratchet/etcd-tls").join(file);
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(from).unwrap(), "{}", path.display());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, mode, "{}", path.display());
    }

    // The agent: it serves on the node's address, alive and ready.
    let agent_config = cluster.container(agent, &volumes, &pod);
    let agent_log = agent_config.log_path.clone();
    let agent_id = containerd.start_container(&pod, agent_config);
    let deadline = Instant::now() + AGENT_WITHIN;
    for path in ["/healthz", "/readyz"] {
        loop {
            let answer = try_request(metrics, "GET", path);
            if answer.as_ref().is_ok_and(|answer| answer.status == 200) {
                break;
            }
            let log = containerd.container_log(&pod, &agent_log);
            assert!(containerd.is_running(&agent_id), "the agent exited:\n{log}");
            assert!(Instant::now() < deadline, "{path}: {answer:?} after {AGENT_WITHIN:?}\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Its first round loaded and pinned the programs from inside its
    // container: on the host's bpffs, through the Bidirectional mount.
    assert!(cluster.pin_root.exists(), "the agent pinned under {} on the host's bpffs", cluster.pin_root.display());

    // The topology, applied as on a cluster without Topology objects.
    let topology_file = work.join("topology.json");
    std::fs::write(&topology_file, topology.to_string()).unwrap();
    let endpoints = format!("--etcd-endpoints={}", etcd.endpoint());
    let apply = [
        "topology",
        "apply",
        topology_file.to_str().unwrap(),
        &endpoints,
        "--etcd-ca-file=/etc/ratchet/etcd-tls/ca.crt",
        "--etcd-cert-file=/etc/ratchet/etcd-tls/client.crt",
        "--etcd-key-file=/etc/ratchet/etcd-tls/client.key",
    ];
    ratchet_tests::run(binary.to_str().unwrap(), &apply);

    // Two pods with their link as a secondary network, as Multus adds it.
    let alpha = containerd.run_pod(&namespace, "alpha");
    let beta = containerd.run_pod(&namespace, "beta");
    let mut added = Vec::new();
    for (sandbox, name, ip) in [(&alpha, "alpha", a_ip), (&beta, "beta", b_ip)] {
        let reply = multus("ADD", &conflist, sandbox, &namespace, name, None);
        assert!(reply.success, "ADD {name}: {} {}", reply.stdout, reply.stderr);
        let interfaces = reply.json["interfaces"].as_array().expect("interfaces").clone();
        let in_pod = interfaces.iter().find(|i| i["sandbox"].is_string()).expect("the pod's end");
        assert_eq!((&in_pod["name"], &in_pod["sandbox"]), (&json!("in1"), &json!(sandbox.netns)), "{name}");
        assert_eq!(reply.json["ips"][0]["address"], format!("{ip}/24"), "{name}");
        let host_end = interfaces.iter().find(|i| i["sandbox"].is_null()).expect("the host end");
        added.push((host_end["name"].as_str().unwrap().to_owned(), reply.json.clone()));
    }
    if !leftovers.vxlan_was_there {
        assert!(host_has_link(VXLAN_DEVICE), "a node with node_ip makes {VXLAN_DEVICE}");
    }
    let ping = ["/bin/busybox", "ping", "-c", "2", "-i", "0.2", "-W", "3", b_ip];
    let (code, log) = containerd.run_to_exit(&alpha, "ping", &ping);
    assert_eq!(code, 0, "alpha pings beta over the link:\n{log}");

    // Scraped from the node's address: the link up, both ends counted.
    let node = cluster.node_name.as_str();
    let link_up = |scrape: &Scrape| {
        scrape.find("ratchet_links", &[("node", node), ("state", "up")]).first().is_some_and(|up| up.value == 1.0)
    };
    let deadline = Instant::now() + AGENT_WITHIN;
    let scraped = loop {
        let scraped = scrape(metrics);
        if let Some(scraped) = scraped.filter(link_up) {
            break scraped;
        }
        assert!(Instant::now() < deadline, "no ratchet_links{{state=\"up\"}} 1 at {metrics}");
        std::thread::sleep(Duration::from_millis(50));
    };
    for pod in ["alpha", "beta"] {
        let labels = [("node", node), ("link", link.as_str()), ("pod", &format!("{namespace}/{pod}"))];
        let packets = scraped.value("ratchet_end_packets_total", &labels);
        assert!(packets >= 2.0, "{pod}'s end sent the pings or their replies: {packets}");
    }
    assert_eq!(scraped.value("ratchet_agent_store_reachable", &[("node", node)]), 1.0);

    // kubelet ends the pod: the agent stopped within its grace period
    // (SIGTERM), then the sandbox. The link still forwards.
    let grace = daemonset_grace(spec);
    let stopping = Instant::now();
    containerd.stop_container(&agent_id, grace);
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(10), "the agent took {took:?} to stop on SIGTERM");
    containerd.stop_and_remove(&pod);
    assert!(try_request(metrics, "GET", "/healthz").is_err(), "nothing serves on {metrics} once the pod is gone");
    assert!(cluster.pin_root.exists(), "the pins outlive the pod");
    let (code, log) = containerd.run_to_exit(&alpha, "ping-after", &ping);
    assert_eq!(code, 0, "the link forwards with the DaemonSet's pod gone:\n{log}");

    // DEL, as Multus sends it (the cached result as prevResult); then the pods go.
    for ((sandbox, name), (host_end, result)) in [(&alpha, "alpha"), (&beta, "beta")].into_iter().zip(&added) {
        multus("DEL", &conflist, sandbox, &namespace, name, Some(result)).assert_silent_success(&format!("DEL {name}"));
        assert!(host_link_gone(host_end), "{name}'s host end {host_end} is deleted");
    }
    for sandbox in [&alpha, &beta] {
        containerd.stop_and_remove(sandbox);
    }
    assert!(eventually(|| bridge.ports().is_empty()), "the primary network's veths are gone");

    drop(containerd);
    let vxlan_was_there = leftovers.vxlan_was_there;
    drop(leftovers);
    assert!(!cluster.pin_root.exists(), "the test's pin root is removed");
    assert!(vxlan_was_there || !host_has_link(VXLAN_DEVICE), "the test's {VXLAN_DEVICE} is deleted");
    drop(etcd);
}

/// The name of deploy/network-attachment.yaml's NetworkAttachmentDefinition,
/// which Multus looks up in its confDir.
fn attachment_name() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/network-attachment.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let documents = serde_yaml::Deserializer::from_str(&text).map(|doc| Yaml::deserialize(doc).unwrap());
    let nad = documents.into_iter().find(|doc| doc["kind"] == "NetworkAttachmentDefinition").expect("the attachment");
    nad["metadata"]["name"].as_str().unwrap().to_owned()
}

/// The pod's `terminationGracePeriodSeconds` (Kubernetes' default: 30).
fn daemonset_grace(spec: &Yaml) -> i64 {
    spec["terminationGracePeriodSeconds"].as_i64().unwrap_or(30)
}
