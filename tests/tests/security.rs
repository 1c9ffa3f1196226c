//! What a hostile or careless caller can reach: names that would walk out
//! of a directory or into another pod's keys are refused before they are
//! used, what ratchet stores is root-only, and the operator's view of the
//! counters cannot change them.

use std::{os::unix::fs::PermissionsExt, path::Path};

use ratchet_tests::{Node, Pod, end, host_has_link, ratchet_bin, unique};
use serde_json::json;

/// Mode bits other than the owner's, of a path and everything under it.
fn group_or_other_bits(path: &Path) -> Vec<(String, u32)> {
    let mut open = Vec::new();
    let mode = std::fs::symlink_metadata(path).unwrap().permissions().mode();
    if mode & 0o077 != 0 {
        open.push((path.display().to_string(), mode & 0o777));
    }
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            open.extend(group_or_other_bits(&entry.unwrap().path()));
        }
    }
    open
}

fn linked_pair(node: &Node, subnet: u8) -> (Pod, Pod, String) {
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = unique("sec");
    node.apply(&json!({"links": [{"name": link,
        "a": end(&alpha, "in1", &[&format!("10.93.{subnet}.1/24")]),
        "b": end(&beta, "in1", &[&format!("10.93.{subnet}.2/24")])}]}));
    node.add(&alpha);
    node.add(&beta);
    (alpha, beta, link)
}

#[test]
fn the_state_and_the_pins_are_root_only_whatever_the_umask() {
    let node = Node::new();
    // A permissive umask in the caller (the runtime's) must not leak through.
    let _pods = nix_umask_scope(0o000, || linked_pair(&node, 1));
    node.cli(&["links"]);
    // The state dir itself is the test's (a temp dir); what ratchet wrote
    // in it is checked, minus the topology files the test wrote there.
    let state_files = std::fs::read_dir(node.state_dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| !path.file_name().unwrap().to_string_lossy().starts_with("topology-"));
    let made: Vec<_> = state_files.collect();
    assert!(made.iter().any(|path| path.ends_with("store.sqlite")), "the store is in the state dir: {made:?}");
    let open: Vec<_> = made.iter().chain([&node.pin_root]).flat_map(|path| group_or_other_bits(path)).collect();
    assert!(open.is_empty(), "readable or writable by others: {open:?}");
}

/// Runs `f` with the test process's umask set to `mask` (the plugin
/// inherits it), then puts it back.
fn nix_umask_scope<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    use nix::sys::stat::{Mode, umask};
    let before = umask(Mode::from_bits_truncate(mask));
    let out = f();
    umask(before);
    out
}

#[test]
fn links_opens_the_counters_read_only() {
    let node = Node::new();
    let _pods = linked_pair(&node, 2);
    let out = std::process::Command::new("strace")
        .args(["-f", "-e", "trace=bpf", "-o", "/dev/stdout", "-qq"])
        .arg(ratchet_bin())
        .arg("--state-dir")
        .arg(node.state_dir.path())
        .arg("--pin-root")
        .arg(&node.pin_root)
        .arg("links")
        .output()
        .unwrap();
    assert!(out.status.success(), "strace ratchet links: {}", String::from_utf8_lossy(&out.stderr));
    let trace = String::from_utf8_lossy(&out.stdout);
    let gets: Vec<&str> = trace.lines().filter(|line| line.contains("BPF_OBJ_GET,")).collect();
    assert!(!gets.is_empty(), "links opened no pin at all:\n{trace}");
    for get in &gets {
        assert!(get.contains("BPF_F_RDONLY"), "a pin opened writable by `ratchet links`: {get}");
    }
    assert!(!trace.contains("BPF_MAP_UPDATE_ELEM") && !trace.contains("BPF_MAP_DELETE_ELEM"), "{trace}");
}

/// Values a caller could pass to walk out of a directory, into another
/// pod's store keys, or past the kernel's interface name rules.
#[test]
fn hostile_names_are_refused_before_anything_is_made() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = unique("hn");
    node.apply(&json!({"links": [{"name": link,
        "a": end(&alpha, "in1", &["10.93.3.1/24"]), "b": end(&beta, "in1", &["10.93.3.2/24"])}]}));
    let long_id = "a".repeat(2000);
    let args = |ns: &str, name: &str| format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}");
    let cases: Vec<(String, String, String, &str)> = vec![
        ("../../etc/passwd".into(), "eth0".into(), args("default", "alpha"), "CNI_CONTAINERID"),
        ("c/../../x".into(), "eth0".into(), args("default", "alpha"), "CNI_CONTAINERID"),
        (".hidden".into(), "eth0".into(), args("default", "alpha"), "CNI_CONTAINERID"),
        ("c1\nc2".into(), "eth0".into(), args("default", "alpha"), "CNI_CONTAINERID"),
        (long_id, "eth0".into(), args("default", "alpha"), "CNI_CONTAINERID"),
        ("c1".into(), "../eth0".into(), args("default", "alpha"), "CNI_IFNAME"),
        ("c1".into(), "..".into(), args("default", "alpha"), "CNI_IFNAME"),
        ("c1".into(), "eth0 x".into(), args("default", "alpha"), "CNI_IFNAME"),
        ("c1".into(), "a-very-long-ifname".into(), args("default", "alpha"), "CNI_IFNAME"),
        ("c1".into(), "eth0".into(), args("default/../kube-system", "alpha"), "CNI_ARGS"),
        ("c1".into(), "eth0".into(), args("default", "../beta"), "CNI_ARGS"),
        ("c1".into(), "eth0".into(), args("default", "alpha/../beta"), "CNI_ARGS"),
        ("c1".into(), "eth0".into(), args("Default", "ALPHA"), "CNI_ARGS"),
    ];
    for (id, ifname, cni_args, variable) in &cases {
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", &alpha.netns_path()),
            ("CNI_IFNAME", ifname.as_str()),
            ("CNI_PATH", "/usr/lib/cni"),
            ("CNI_ARGS", cni_args.as_str()),
        ];
        let reply = node.call_raw(&env, node.config().to_string().as_bytes());
        assert!(!reply.success, "accepted {id:.40?} / {ifname:?} / {cni_args:?}");
        assert_eq!(reply.code(), Some(4), "{variable} is an invalid environment value: {}", reply.stdout);
        assert!(reply.error_text().contains(variable), "the error names {variable}: {}", reply.stdout);
    }
    // Nothing was made, nothing escaped the state dir.
    assert!(alpha.link("in1").is_none(), "no pod end in alpha");
    assert!(!host_has_link(&ratchet_plugin::naming::host_ifname(&link, ratchet_plugin::topology::Side::A)));
    assert!(node.store_keys("/ratchet/containers/").is_empty() && node.store_keys("/ratchet/ends/").is_empty());
    assert!(!Path::new("/etc/passwd.sqlite").exists() && !node.state_dir.path().join("..").join("x").exists());
}

#[test]
fn a_topology_with_hostile_names_is_refused() {
    let node = Node::new();
    let hostile = [
        json!({"name": "../../x", "a": {"pod": "default/a", "ifname": "in1", "ips": []}, "b": {"pod": "default/b", "ifname": "in1", "ips": []}}),
        json!({"a": {"pod": "default/../a", "ifname": "in1", "ips": []}, "b": {"pod": "default/b", "ifname": "in1", "ips": []}}),
        json!({"a": {"pod": "default/a", "ifname": "../in1", "ips": []}, "b": {"pod": "default/b", "ifname": "in1", "ips": []}}),
        json!({"a": {"pod": "a", "ifname": "in1", "ips": []}, "b": {"pod": "default/b", "ifname": "in1", "ips": []}}),
    ];
    for link in hostile {
        let file = node.state_dir.path().join("hostile.json");
        std::fs::write(&file, json!({"links": [link]}).to_string()).unwrap();
        let out = std::process::Command::new(ratchet_bin())
            .arg("--state-dir")
            .arg(node.state_dir.path())
            .arg("--pin-root")
            .arg(&node.pin_root)
            .args(["topology", "apply"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success(), "accepted {link}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("ratchet:"), "a clear error for {link}");
    }
    assert!(node.store_keys("/ratchet/topology/").iter().all(|key| !key.contains("..")), "nothing hostile was stored");
}

/// Map sizes are fixed (`MAX_ENDS` link ends per node): when the counters
/// map is full, an ADD fails with a clear dataplane error and undoes itself,
/// and works again once there is room.
#[test]
fn a_full_map_fails_the_add_clearly_and_leaves_nothing() {
    let node = Node::new();
    let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
    let link = unique("full");
    node.apply(&json!({"links": [{"name": link,
        "a": end(&alpha, "in1", &["10.93.4.1/24"]), "b": end(&beta, "in1", &["10.93.4.2/24"])}]}));
    node.add(&beta);
    let stats = node.pin_root.join("stats");
    let shown: serde_json::Value =
        serde_json::from_str(&ratchet_tests::run("bpftool", &["-j", "map", "show", "pinned", stats.to_str().unwrap()]))
            .unwrap();
    let max = usize::try_from(shown["max_entries"].as_u64().unwrap()).unwrap();
    let room = max - node.map_keys("stats").len();
    // Keys far above any real ifindex; a zero value on every CPU.
    let fake = |verb: &str, i: usize| {
        let key = (0x0010_0000 + i as u32).to_le_bytes().map(|b| format!("0x{b:02x}")).join(" ");
        let value = if verb == "update" { format!(" value {}", ["0x00"; 24].join(" ")) } else { String::new() };
        format!("map {verb} pinned {} key {key}{value}\n", stats.display())
    };
    let batch = |verb: &str| {
        let file = node.state_dir.path().join(format!("batch-{verb}"));
        std::fs::write(&file, (0..room).map(|i| fake(verb, i)).collect::<String>()).unwrap();
        ratchet_tests::run("bpftool", &["batch", "file", file.to_str().unwrap()]);
    };
    batch("update");
    assert_eq!(node.map_keys("stats").len(), max, "the counters map is full");

    let reply = node.call_pod("ADD", &alpha, &node.config());
    assert!(!reply.success, "ADD with a full map succeeded");
    assert_eq!(reply.code(), Some(103), "a dataplane error: {}", reply.stdout);
    let text = reply.error_text();
    assert!(
        text.contains("full") && text.contains(&max.to_string()),
        "the error says the map is full, and its size: {text}"
    );
    assert!(alpha.link("in1").is_none(), "no pod end left");
    assert!(!host_has_link(&ratchet_plugin::naming::host_ifname(&link, ratchet_plugin::topology::Side::A)));
    assert_eq!(node.link_state(&link), "waiting", "beta still waits");

    batch("delete");
    node.add(&alpha);
    assert!(alpha.ping("10.93.4.2"), "with room again the link comes up");
}

/// A config is a few KiB; stdin is read up to 1 MiB and no further, with an
/// error that says so.
#[test]
fn an_oversized_stdin_is_refused_with_a_clear_error() {
    let node = Node::new();
    let pod = Pod::new("default", "alpha");
    let mut config = node.config();
    config["padding"] = json!("x".repeat(2 << 20));
    let reply = node.call_pod("ADD", &pod, &config);
    assert!(!reply.success, "a 2 MiB config was accepted");
    assert!(reply.error_text().contains("larger than 1048576 bytes"), "says why: {}", reply.stdout);
    assert!(reply.json["code"].as_u64().is_some(), "a CNI error: {}", reply.stdout);
}
