//! ratchet under a real Kubernetes: deploy/ applied with kubectl to a
//! single-node cluster built from source (`ratchet_tests::kube`), kubelet on
//! the test's private containerd.
//!
//! `kubectl apply -k` of deploy/'s ConfigMap, DaemonSet, RBAC and Topology
//! CRD; the DaemonSet's pod Running and Ready under kubelet's own probes, the
//! node Ready once the installer wrote ratchet's conflist; the agent's
//! service account may do exactly what deploy/rbac.yaml says. Then
//! deploy/topology-example.yaml's Topology objects (meshnet's format) make
//! the topology: lab pods get their link and ping across it, a pod without
//! links gets the primary network only, each object's status says `up`;
//! changed objects add a link to the running pods; a rolling update of the
//! DaemonSet to a new image tag, with a ping across the link the whole time,
//! loses no frame; deleted objects take the links out of the running pods;
//! deleting a pod DELs it (its host end goes); deleting the rest leaves
//! nothing.
//!
//! **No Multus.** The Go module proxy does not serve it (docs/
//! kubernetes-from-source.md), so ratchet is the node's network here, as the
//! seed ran it: its conflist in the runtime's conf dir, the primary network
//! (bridge + host-local, the reference plugins) as its `delegate` for pods
//! without links and `boot_network` for pods with links. deploy/'s
//! NetworkAttachmentDefinition path stays covered below kubelet by
//! `daemonset.rs`.
//!
//! The overrides of the manifests (the only changes to deploy/, as JSON
//! patches of a kustomization): the installer's `--pin-root` (a bpffs
//! directory of the test's own), `--delegate` and `--boot-network` (the file
//! the ConfigMap gains), the hostPaths of the CNI bin and conf dirs (the
//! test's containerd's), the ConfigMap's etcd endpoint (the test's etcd, TLS
//! with client certificates, as the Secret the README tells to create), and
//! the agent's `KUBERNETES_SERVICE_HOST`/`_PORT`: no kube-proxy runs here to
//! route the `kubernetes` Service, so the agent is pointed at the apiserver
//! directly. Writes to the node's other hostPaths (/etc/ratchet,
//! /var/lib/ratchet) and kubelet's (/var/log) land in overlays of the
//! test's (`ratchet_tests::private_node`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ratchet_harness::image::image_reference;
use ratchet_tests::{
    Bridge, Etcd, HostLocal, Tls,
    cri::{BUSYBOX_IMAGE, Containerd},
    eventually, host_link_gone,
    kube::Kubernetes,
    private_node::{NodeLeftovers, PrivateMounts},
    ratchet_image, unique, within,
};
use serde::Deserialize;
use serde_json::{Value, json};
use serde_yaml::Value as Yaml;

/// Where the test's writes to the node's own paths land in overlays.
const OVERLAID: [&str; 3] = ["/etc", "/var/lib", "/var/log"];

/// What a node's ratchet makes by default that the test must never make.
const NODE_DEFAULTS: [&str; 2] = ["/var/lib/ratchet", "/sys/fs/bpf/ratchet"];

/// What `kubectl apply -k` takes from deploy/: everything but the examples.
const DEPLOYED: [&str; 4] = ["configmap.yaml", "daemonset.yaml", "rbac.yaml", "topology-crd.yaml"];

/// The lab pods' namespace and names, as deploy/topology-example.yaml has
/// them, with the addresses it gives their `in1`.
const LAB: &str = "lab";
const ROUTERS: [(&str, &str); 2] = [("router-1", "192.0.2.1/30"), ("router-2", "192.0.2.2/30")];

/// The second link the test adds to the example: `in2` <-> `in2`.
const SECOND_LINK: [(&str, &str); 2] = [("router-1", "192.0.2.5/30"), ("router-2", "192.0.2.6/30")];

/// How long the agent may take to bring running pods or a status in line
/// with changed objects (its watch, a round, a status refresh every 2 s).
const CONVERGE_WITHIN: Duration = Duration::from_secs(20);

/// What the test gives the manifests: its etcd, pin root, CNI dirs and
/// primary network.
struct Overrides {
    etcd_endpoint: String,
    pin_root: PathBuf,
    cni_bin: PathBuf,
    cni_conf: PathBuf,
    primary: Value,
}

impl Overrides {
    /// A kustomization in `dir`: deploy/'s cluster-wide manifests copied
    /// unchanged, and the overrides as JSON patches on them, for `kubectl
    /// apply -k`.
    fn kustomization(&self, dir: &Path, apiserver_port: u16) {
        std::fs::create_dir_all(dir).unwrap();
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        for file in DEPLOYED {
            std::fs::copy(deploy.join(file), dir.join(file)).unwrap();
        }
        let configmap = json!([
            {"op": "replace", "path": "/data/etcd-endpoints", "value": self.etcd_endpoint},
            {"op": "add", "path": "/data/primary.json", "value": self.primary.to_string()},
        ]);
        let mut daemonset: Vec<Value> = [
            format!("--pin-root={}", self.pin_root.display()),
            "--delegate=/config/primary.json".into(),
            "--boot-network=/config/primary.json".into(),
        ]
        .into_iter()
        .map(|flag| json!({"op": "add", "path": "/spec/template/spec/initContainers/0/command/-", "value": flag}))
        .collect();
        let apiserver = [
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_owned()),
            ("KUBERNETES_SERVICE_PORT", apiserver_port.to_string()),
        ]
        .map(|(name, value)| json!({"name": name, "value": value}));
        daemonset.push(json!({"op": "add", "path": "/spec/template/spec/containers/0/env", "value": apiserver}));
        for (volume, path) in [("cni-bin", &self.cni_bin), ("multus-conf", &self.cni_conf)] {
            let index = volume_index(&deploy.join("daemonset.yaml"), volume);
            let path_of = format!("/spec/template/spec/volumes/{index}/hostPath/path");
            daemonset.push(json!({"op": "replace", "path": path_of, "value": path}));
        }
        let kustomization = json!({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": DEPLOYED,
            "patches": [
                {"target": {"kind": "ConfigMap", "name": "ratchet"}, "patch": configmap.to_string()},
                {"target": {"kind": "DaemonSet", "name": "ratchet"}, "patch": Value::from(daemonset).to_string()},
            ],
        });
        std::fs::write(dir.join("kustomization.yaml"), kustomization.to_string()).unwrap();
    }
}

/// Where the volume `name` is in the DaemonSet's list of volumes.
fn volume_index(daemonset: &Path, name: &str) -> usize {
    let text = std::fs::read_to_string(daemonset).unwrap();
    let manifest: Yaml = serde_yaml::from_str(&text).unwrap();
    let volumes = manifest["spec"]["template"]["spec"]["volumes"].as_sequence().expect("volumes");
    volumes.iter().position(|volume| volume["name"] == name).unwrap_or_else(|| panic!("no volume {name}"))
}

/// Polls `done` until it holds, for up to [`CONVERGE_WITHIN`].
fn converges(done: impl FnMut() -> bool) -> bool {
    within(CONVERGE_WITHIN, done)
}

/// deploy/topology-example.yaml, as kubectl applies it.
fn topology_example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/topology-example.yaml")
}

/// The example's Topology objects with [`SECOND_LINK`] added (uid 2).
fn topology_with_second_link() -> String {
    let text = std::fs::read_to_string(topology_example()).unwrap();
    let mut objects: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde_yaml::from_value(Yaml::deserialize(document).unwrap()).unwrap())
        .collect();
    for (object, (pod, ip)) in objects.iter_mut().zip(SECOND_LINK) {
        assert_eq!(object["metadata"]["name"], pod);
        let (peer, peer_ip) = SECOND_LINK.into_iter().find(|(other, _)| *other != pod).unwrap();
        let half = json!({"uid": 2, "peer_pod": peer, "local_intf": "in2", "peer_intf": "in2", "local_ip": ip, "peer_ip": peer_ip});
        object["spec"]["links"].as_array_mut().unwrap().push(half);
    }
    json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string()
}

/// The states each Topology object's status gives its links, by uid.
fn topology_states(kube: &Kubernetes) -> BTreeMap<String, Vec<(u64, String)>> {
    let list: Value = serde_json::from_str(&kube.kubectl(&["-n", LAB, "get", "topologies", "-o", "json"])).unwrap();
    let items = list["items"].as_array().unwrap();
    items
        .iter()
        .map(|object| {
            let links = object["status"]["links"].as_array().cloned().unwrap_or_default();
            let states = links.iter().map(|l| (l["uid"].as_u64().unwrap(), l["state"].as_str().unwrap().to_owned()));
            (object["metadata"]["name"].as_str().unwrap().to_owned(), states.collect())
        })
        .collect()
}

/// Whether every object reports exactly `states` (uid, state) for its links.
fn every_topology_says(kube: &Kubernetes, states: &[(u64, &str)]) -> bool {
    let reported = topology_states(kube);
    let wanted: Vec<(u64, String)> = states.iter().map(|(uid, state)| (*uid, (*state).to_owned())).collect();
    reported.len() == ROUTERS.len() && reported.values().all(|links| *links == wanted)
}

/// The lab: deploy/'s two routers and a pod without links, each a busybox
/// that sleeps (and stops at once when deleted).
fn lab_manifests() -> String {
    let pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": LAB},
            "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "main", "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "Never", "command": ["/bin/busybox", "sleep", "86400"]}]}})
    };
    let items: Vec<Value> = ROUTERS.iter().map(|(name, _)| pod(name)).chain([pod("plain")]).collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// `ip -j addr` inside a netns.
fn addresses(netns: &str) -> Vec<(String, String)> {
    let out = ratchet_tests::run("nsenter", &[&format!("--net={netns}"), "ip", "-j", "addr"]);
    let links: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut addresses = Vec::new();
    for link in links {
        for address in link["addr_info"].as_array().into_iter().flatten() {
            let cidr = format!("{}/{}", address["local"].as_str().unwrap(), address["prefixlen"]);
            addresses.push((link["ifname"].as_str().unwrap().to_owned(), cidr));
        }
    }
    addresses
}

/// Pings `to` from `netns` `count` times, 10 ms apart; (sent, received).
fn ping(netns: &str, to: &str, count: u32) -> (u64, u64) {
    let out = Command::new("nsenter")
        .args([&format!("--net={netns}"), "ping", "-q", "-n", "-i", "0.01", "-W", "1", "-c", &count.to_string(), to])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text.lines().find(|line| line.contains("packets transmitted")).unwrap_or_else(|| panic!("{text}"));
    let numbers: Vec<u64> =
        summary.split(',').filter_map(|part| part.split_whitespace().next()?.parse().ok()).collect();
    (numbers[0], numbers[1])
}

/// The DaemonSet's pods: (name, uid, images, ready).
fn ratchet_pods(kube: &Kubernetes) -> Vec<(String, String, Vec<String>, bool)> {
    let list: Value =
        serde_json::from_str(&kube.kubectl(&["-n", "kube-system", "get", "pods", "-l", "app=ratchet", "-o", "json"]))
            .unwrap();
    let items = list["items"].as_array().unwrap();
    items
        .iter()
        .map(|pod| {
            let images = pod["spec"]["containers"].as_array().unwrap();
            let ready = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|condition| condition["type"] == "Ready" && condition["status"] == "True");
            (
                pod["metadata"]["name"].as_str().unwrap().to_owned(),
                pod["metadata"]["uid"].as_str().unwrap().to_owned(),
                images.iter().map(|c| c["image"].as_str().unwrap().to_owned()).collect(),
                ready && pod["status"]["phase"] == "Running",
            )
        })
        .collect()
}

#[test]
fn deploy_under_a_real_kubelet() {
    let Some(archive) = ratchet_image() else { return };
    let started = Instant::now();
    let absent_before: Vec<&str> = NODE_DEFAULTS.into_iter().filter(|path| !Path::new(path).exists()).collect();
    let work = tempfile::Builder::new().prefix("ratchet-k8s-").tempdir().unwrap();
    {
        let mounts = PrivateMounts::enter(&work.path().join("overlays"), &OVERLAID);
        deploy_on_a_private_node(work.path(), &archive);
        drop(mounts);
    }
    for path in absent_before {
        assert!(!Path::new(path).exists(), "{path} reached the node's real filesystem");
    }
    eprintln!("ratchet under a real kubelet in {:.1} s", started.elapsed().as_secs_f64());
}

/// The scenario, inside the test's mount namespace.
fn deploy_on_a_private_node(work: &Path, archive: &Path) {
    std::fs::create_dir(work.join("etcd-pki")).unwrap();
    let tls = Tls::generate(&work.join("etcd-pki"), "127.0.0.1").unwrap();
    let etcd = Etcd::with_tls(&tls);
    let (bridge, ipam) = (Bridge::new(), HostLocal::new("10.158.0.0/24"));
    let overrides = Overrides {
        etcd_endpoint: etcd.endpoint(),
        pin_root: PathBuf::from(format!("/sys/fs/bpf/{}", unique("rtk8s"))),
        cni_bin: work.join("cni-bin"),
        cni_conf: work.join("cni-conf"),
        primary: json!({"cniVersion": "1.0.0", "name": unique("rtprimary"), "plugins": [
            {"type": "bridge", "bridge": bridge.name, "isGateway": true, "ipam": ipam.ipam()}]}),
    };
    let leftovers = NodeLeftovers::new(overrides.pin_root.clone());
    let k8s_cgroup_was_there = !ratchet_tests::cgroup_dirs("/k8s.io").is_empty();

    let containerd = Containerd::start_node(&overrides.cni_bin, &overrides.cni_conf);
    std::fs::create_dir(work.join("images")).unwrap();
    containerd.import_test_images(&work.join("images"));
    let (image, next_image) = (image_reference(), format!("{}-next", image_reference()));
    containerd.import(archive, &image);
    containerd.tag(&image, &next_image);
    let kube = Kubernetes::start(&work.join("k8s"), &containerd.socket());
    let node = format!("node/{}", kube.node_name);

    // deploy/, as the README says to apply it.
    let secret_files = [("ca.crt", &tls.ca), ("tls.crt", &tls.client_cert), ("tls.key", &tls.client_key)]
        .map(|(key, path)| format!("--from-file={key}={}", path.display()));
    let mut create_secret = vec!["-n", "kube-system", "create", "secret", "generic", "ratchet-etcd-tls"];
    create_secret.extend(secret_files.iter().map(String::as_str));
    kube.kubectl(&create_secret);
    overrides.kustomization(&work.join("deploy"), kube.apiserver_port);
    kube.kubectl(&["apply", "-k", work.join("deploy").to_str().unwrap()]);
    let rollout = ["-n", "kube-system", "rollout", "status", "daemonset/ratchet", "--timeout=120s"];
    kube.expect(&rollout);
    let pods = ratchet_pods(&kube);
    assert_eq!(pods.len(), 1, "one ratchet pod on the one node: {pods:?}");
    assert!(pods[0].3, "the DaemonSet's pod is Running and Ready: {pods:?}");
    assert_eq!(pods[0].2, vec![image.clone()]);
    kube.expect(&["wait", "--for=condition=Ready", &node, "--timeout=60s"]);
    assert!(overrides.cni_bin.join("ratchet").is_file(), "the installer put the plugin in the CNI bin dir");
    assert!(overrides.pin_root.exists(), "the agent pinned the programs under the test's pin root");

    // The agent may do exactly what deploy/rbac.yaml grants.
    let account = "--as=system:serviceaccount:kube-system:ratchet";
    let can =
        |verb: &str, resource: &str| kube.try_kubectl(&["auth", "can-i", account, verb, resource]).status.success();
    for (verb, resource) in [("list", "topologies.networkop.co.uk"), ("watch", "topologies.networkop.co.uk")] {
        assert!(can(verb, resource), "the agent may {verb} {resource}");
    }
    let status = ["auth", "can-i", account, "patch", "topologies.networkop.co.uk", "--subresource=status"];
    assert!(kube.try_kubectl(&status).status.success(), "the agent may patch Topology status");
    for (verb, resource) in [
        ("patch", "topologies.networkop.co.uk"),
        ("create", "topologies.networkop.co.uk"),
        ("list", "pods"),
        ("get", "secrets"),
    ] {
        assert!(!can(verb, resource), "the agent may not {verb} {resource}");
    }

    // The topology from deploy/'s example objects, before the pods.
    kube.kubectl(&["create", "namespace", LAB]);
    kube.kubectl(&["apply", "-f", topology_example().to_str().unwrap()]);
    assert!(
        converges(|| every_topology_says(&kube, &[(1, "down")])),
        "the objects' status: {:?}",
        topology_states(&kube)
    );

    // The lab: the routers get their link, the plain pod only the primary network.
    kube.apply(&lab_manifests());
    kube.expect(&["-n", LAB, "wait", "--for=condition=Ready", "pod", "--all", "--timeout=120s"]);
    let netns: BTreeMap<&str, String> = ["router-1", "router-2", "plain"]
        .into_iter()
        .map(|name| (name, containerd.netns_of_pod(LAB, name).unwrap_or_else(|| panic!("{name}'s sandbox"))))
        .collect();
    for (name, address) in ROUTERS {
        let addresses = addresses(&netns[name]);
        assert!(addresses.contains(&("in1".into(), address.into())), "{name}'s in1 has {address}: {addresses:?}");
        assert!(addresses.iter().any(|(ifname, ip)| ifname == "eth0" && ip.starts_with("10.158.0.")), "{addresses:?}");
    }
    let plain = addresses(&netns["plain"]);
    assert!(plain.iter().all(|(ifname, _)| ifname != "in1"), "the plain pod has no link: {plain:?}");
    assert!(plain.iter().any(|(ifname, ip)| ifname == "eth0" && ip.starts_with("10.158.0.")), "{plain:?}");
    let (r1, r2_ip) = (&netns["router-1"], ROUTERS[1].1.split('/').next().unwrap());
    assert_eq!(ping(r1, r2_ip, 3), (3, 3), "router-1 pings router-2 over the link");
    assert!(
        converges(|| every_topology_says(&kube, &[(1, "up")])),
        "the objects' status: {:?}",
        topology_states(&kube)
    );

    // Changed objects: a second link reaches the running pods.
    kube.apply(&topology_with_second_link());
    let has = |pod: &str, ifname: &str, ip: &str| addresses(&netns[pod]).contains(&(ifname.into(), ip.into()));
    for (pod, ip) in SECOND_LINK {
        assert!(converges(|| has(pod, "in2", ip)), "{pod} gains in2 {ip}: {:?}", addresses(&netns[pod]));
    }
    let second_ip = SECOND_LINK[1].1.split('/').next().unwrap();
    assert_eq!(ping(r1, second_ip, 3), (3, 3), "router-1 pings router-2 over the new link");
    let both_up = [(1, "up"), (2, "up")];
    assert!(converges(|| every_topology_says(&kube, &both_up)), "the objects' status: {:?}", topology_states(&kube));

    // Halves that disagree: the store keeps the last topology, the status says why.
    let wrong = [r#"[{"op": "replace", "path": "/spec/links/1/local_ip", "value": "192.0.2.7/30"}]"#, "--type=json"];
    kube.kubectl(&["-n", LAB, "patch", "topology", "router-2", "-p", wrong[0], wrong[1]]);
    let error = || kube.kubectl(&["-n", LAB, "get", "topology", "router-1", "-o", "jsonpath={.status.error}"]);
    assert!(converges(|| error().contains("uid 2")), "the status names the link: {:?}", error());
    assert!(error().contains("local_ip") && error().contains("192.0.2.7/30"), "and the field: {}", error());
    assert!(has("router-2", "in2", SECOND_LINK[1].1), "the running pods keep the last good topology");
    kube.apply(&topology_with_second_link());
    assert!(converges(|| error().is_empty()), "the error goes with the fix: {}", error());

    // A rolling update to a new tag, with the link pinged throughout.
    let (sent, received) = ping_while(r1, r2_ip, || {
        let images = [format!("install={next_image}"), format!("agent={next_image}")];
        kube.kubectl(&["-n", "kube-system", "set", "image", "daemonset/ratchet", &images[0], &images[1]]);
        kube.expect(&rollout);
    });
    let after = ratchet_pods(&kube);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after[0].1, pods[0].1, "the rolling update replaced the pod");
    assert_eq!(after[0].2, vec![next_image.clone()], "the new pod runs the new tag");
    assert!(sent >= 100, "the ping ran through the update: {sent} sent");
    assert_eq!(received, sent, "no frame lost across the rolling update");

    // Deleted objects: the links leave the running pods, their host ends go.
    let links = || links_view(&overrides, &tls);
    let host_end = |links: &[Value], pod: &str| {
        let ends = links.iter().flat_map(|link| link["ends"].as_array().cloned().unwrap_or_default());
        ends.filter(|end| end["pod"] == pod)
            .map(|end| end["host_ifname"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let host_ends = host_end(&links(), "lab/router-1");
    assert_eq!(host_ends.len(), 2, "router-1's two ends: {:?}", links());
    kube.kubectl(&["-n", LAB, "delete", "topologies", "--all"]);
    for (pod, _) in ROUTERS {
        let linked = || addresses(&netns[pod]).iter().any(|(ifname, _)| ifname == "in1" || ifname == "in2");
        assert!(converges(|| !linked()), "{pod} loses its links: {:?}", addresses(&netns[pod]));
    }
    for end in &host_ends {
        assert!(host_link_gone(end), "router-1's host end {end} is deleted");
    }

    // The example again, then kubelet deleting a pod DELs it: its host end goes.
    kube.kubectl(&["apply", "-f", topology_example().to_str().unwrap()]);
    assert!(converges(|| has("router-1", "in1", ROUTERS[0].1)), "the link comes back to the running pods");
    let before = links();
    let [r1_end] = host_end(&before, "lab/router-1").try_into().unwrap_or_else(|e| panic!("router-1's end: {e:?}"));
    kube.kubectl(&["-n", LAB, "delete", "pod", "router-1", "--wait=true", "--timeout=60s"]);
    assert!(eventually(|| host_link_gone(&r1_end)), "router-1's host end {r1_end} is deleted");
    assert!(host_end(&links(), "lab/router-1").is_empty(), "the store forgot router-1's end");

    // The rest goes: nothing of the pods is left on the node.
    let [r2_end] = host_end(&before, "lab/router-2").try_into().unwrap_or_else(|e| panic!("router-2's end: {e:?}"));
    kube.kubectl(&["delete", "namespace", LAB, "--wait=true", "--timeout=60s"]);
    assert!(eventually(|| host_link_gone(&r2_end)), "router-2's host end {r2_end} is deleted");
    assert!(eventually(|| bridge.ports().is_empty()), "the primary network's veths are gone");
    let primary = overrides.primary["name"].as_str().unwrap();
    let released = eventually(|| ipam.allocated(primary).is_empty());
    assert!(released, "host-local released every address: {:?}", ipam.allocated(primary));
    kube.kubectl(&["-n", "kube-system", "delete", "daemonset/ratchet", "configmap/ratchet", "--wait=true"]);
    assert!(eventually(|| ratchet_pods(&kube).is_empty()), "the DaemonSet's pod is gone");

    drop(kube);
    drop(containerd);
    drop(leftovers);
    assert!(!overrides.pin_root.exists(), "the test's pin root is removed");
    assert!(ratchet_tests::cgroup_dirs("/k8s.io").is_empty() || k8s_cgroup_was_there, "no pod cgroup is left");
    drop(etcd);
}

/// `ratchet links --json` from the installed binary, on the test's store and pins.
fn links_view(overrides: &Overrides, tls: &Tls) -> Vec<Value> {
    let binary = overrides.cni_bin.join("ratchet");
    let out = ratchet_tests::run(
        binary.to_str().unwrap(),
        &[
            "links",
            "--json",
            &format!("--pin-root={}", overrides.pin_root.display()),
            &format!("--etcd-endpoints={}", overrides.etcd_endpoint),
            &format!("--etcd-ca-file={}", tls.ca.display()),
            &format!("--etcd-cert-file={}", tls.client_cert.display()),
            &format!("--etcd-key-file={}", tls.client_key.display()),
        ],
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ratchet links --json: {e}\n{out}"))
}

/// Pings `to` from `netns` in back-to-back rounds of 2 s while `during`
/// runs, and one round after; (sent, received) over all rounds.
fn ping_while(netns: &str, to: &str, during: impl FnOnce()) -> (u64, u64) {
    let done = Arc::new(AtomicBool::new(false));
    let pinger = {
        let (done, netns, to) = (done.clone(), netns.to_owned(), to.to_owned());
        std::thread::spawn(move || {
            let mut total = (0, 0);
            loop {
                let last = done.load(Ordering::SeqCst);
                let (sent, received) = ping(&netns, &to, 200);
                total = (total.0 + sent, total.1 + received);
                if last {
                    return total;
                }
            }
        })
    };
    during();
    done.store(true, Ordering::SeqCst);
    pinger.join().unwrap()
}
