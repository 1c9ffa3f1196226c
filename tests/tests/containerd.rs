//! kubelet's path end to end: kubelet -> CRI -> containerd -> libcni -> ratchet.
//!
//! The test starts a private containerd (Debian's 1.6, runc underneath; the
//! fixture is `ratchet_tests::cri`) whose CRI plugin has ratchet's conflist
//! and a CNI bin dir of its own, and makes the CRI calls kubelet makes:
//! RunPodSandbox, CreateContainer and StartContainer, PodSandboxStatus,
//! StopPodSandbox, RemovePodSandbox. DEL comes twice, the second time with an
//! empty `CNI_NETNS` and no prevResult.

use std::{path::Path, time::Instant};

use ratchet_plugin::{naming::host_ifname, topology::Side};
use ratchet_tests::{
    Bridge, HostLocal, Node, cgroup_dirs, cri::Containerd, host_link_gone, mounts_under, processes_mentioning, unique,
};
use serde_json::{Value, json};

/// The verbs ratchet's `log_file` has for a container, in order, each with
/// its outcome (`ADD ok`): what containerd actually asked of it.
fn logged_verbs(log: &Path, container: &str) -> Vec<String> {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let mine = format!("container={container}");
    log.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = fields.iter().position(|f| f.starts_with("verb="))?;
            let (verb, outcome) = (fields[at].strip_prefix("verb=")?, fields.get(at.checked_sub(1)?)?);
            fields.contains(&mine.as_str()).then(|| format!("{verb} {outcome}"))
        })
        .collect()
}

/// A bridge + host-local network, as `delegate` or `boot_network` takes it.
fn bridge_conf(bridge: &Bridge, ipam: &HostLocal) -> Value {
    json!({"type": "bridge", "bridge": bridge.name, "isGateway": true, "ipam": ipam.ipam()})
}

#[test]
fn kubelet_path_through_containerd() {
    let started = Instant::now();
    let node = Node::new();
    let network = unique("rtcri");
    let (delegate, delegate_ipam) = (Bridge::new(), HostLocal::new("10.155.0.0/24"));
    let (boot, boot_ipam) = (Bridge::new(), HostLocal::new("10.156.0.0/24"));
    let link = unique("lk");
    let mut ratchet = node.config();
    ratchet.as_object_mut().unwrap().retain(|key, _| key != "name" && key != "cniVersion");
    ratchet["delegate"] = bridge_conf(&delegate, &delegate_ipam);
    ratchet["boot_network"] = bridge_conf(&boot, &boot_ipam);
    let verbs_log = node.state_dir.path().join("verbs.log");
    ratchet["log_file"] = json!(verbs_log);
    ratchet["topology"] = json!({"links": [{"name": link,
        "a": {"pod": "default/alpha", "ifname": "in1", "ips": ["10.164.0.1/24"]},
        "b": {"pod": "default/beta", "ifname": "in2", "ips": ["10.164.0.2/24"]}}]});
    let conflist = json!({"cniVersion": "1.0.0", "name": network, "plugins": [ratchet]});

    let (dir, netns, cgroup_parent, pids) = {
        let mut containerd = Containerd::start(&conflist);
        let work = tempfile::tempdir().unwrap();
        containerd.import_test_images(work.path());

        let alpha = containerd.run_pod("default", "alpha");
        let beta = containerd.run_pod("default", "beta");
        let plain = containerd.run_pod("default", "plain");
        assert_eq!(node.link_state(&link), "up", "both ends attached through containerd");
        assert_eq!(node.map_keys("peers").len(), 2, "wired both ways");
        for (sandbox, subnet, what) in [
            (&alpha, "10.156.0.", "boot network"),
            (&beta, "10.156.0.", "boot network"),
            (&plain, "10.155.0.", "delegate"),
        ] {
            let ip = containerd.pod_ip(sandbox);
            assert!(ip.starts_with(subnet), "{}'s eth0 {ip} should be on the {what} ({subnet}0/24)", sandbox.id);
        }

        let (code, log) = containerd.run_to_exit(
            &alpha,
            "ping",
            &["/bin/busybox", "ping", "-c", "2", "-i", "0.2", "-W", "3", "10.164.0.2"],
        );
        assert_eq!(code, 0, "alpha pings beta over the link:\n{log}");

        for sandbox in [&alpha, &beta, &plain] {
            containerd.stop_and_remove(sandbox);
        }
        assert!(host_link_gone(&host_ifname(&link, Side::A)) && host_link_gone(&host_ifname(&link, Side::B)));
        assert!(node.map_keys("peers").is_empty(), "no forwarding entry left");
        assert_eq!(node.link_state(&link), "down");
        assert!(delegate.ports().is_empty() && boot.ports().is_empty(), "the bridges' veths are gone");
        assert!(delegate_ipam.allocated(&network).is_empty() && boot_ipam.allocated(&network).is_empty());
        for sandbox in [&alpha, &beta, &plain] {
            // DEL twice: on StopPodSandbox, and with an empty netns on RemovePodSandbox.
            assert_eq!(logged_verbs(&verbs_log, &sandbox.id), ["ADD ok", "DEL ok", "DEL ok"], "{}", sandbox.id);
        }
        let pids = containerd.pids.clone();
        (containerd.dir.path().to_owned(), containerd.netns.clone(), containerd.cgroup_parent.clone(), pids)
    };

    assert!(processes_mentioning(&dir).is_empty(), "containerd and its shims are gone");
    assert!(pids.iter().all(|pid| !Path::new(&format!("/proc/{pid}")).exists()), "and reaped: {pids:?}");
    assert!(mounts_under(&dir).is_empty(), "no mount left under {}", dir.display());
    assert!(!dir.exists());
    assert!(netns.iter().all(|n| !Path::new(n).exists()), "containerd removed the pods' netns: {netns:?}");
    assert!(cgroup_dirs(&cgroup_parent).is_empty(), "no cgroup left");
    eprintln!("containerd end to end in {:.1} s", started.elapsed().as_secs_f64());
}
