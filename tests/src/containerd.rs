//! What the tests that start a private containerd (`containerd.rs`, kubelet's
//! path over CRI; `image.rs`, ratchet's image under `ctr`) use to find and
//! remove what it and its shims leave outside its own directory: processes,
//! mounts, cgroups.

use std::path::{Path, PathBuf};

/// Where a cgroup of this path lives: under each cgroup v1 hierarchy, and
/// under the root of a cgroup v2 only machine.
pub fn cgroup_dirs(cgroup: &str) -> Vec<PathBuf> {
    let relative = cgroup.trim_start_matches('/');
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten().map(|e| e.path());
    std::iter::once(PathBuf::from("/sys/fs/cgroup"))
        .chain(hierarchies)
        .map(|hierarchy| hierarchy.join(relative))
        .filter(|dir| dir.is_dir())
        .collect()
}

/// Every mount point at or under `dir`, deepest first, in the calling
/// thread's mount namespace (a test may have one of its own: see
/// `daemonset.rs`; `/proc/self` would show the main thread's).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    let mut mounts: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(dir))
        .map(String::from)
        .collect();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.len()));
    mounts
}

/// The PIDs of processes whose command line mentions `dir` (containerd and
/// its shims name our socket).
pub fn processes_mentioning(dir: &Path) -> Vec<i32> {
    let needle = dir.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

/// Starts containerd on `dir/config.toml`, its output to `dir/containerd.log`.
pub fn spawn(dir: &Path) -> std::process::Child {
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    std::process::Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn containerd (apt-get install containerd)")
}

/// Force-deletes every container runc keeps state for under `runc_root`
/// (a test's own): what a failed run left.
pub fn delete_containers(runc_root: &Path) {
    for container in std::fs::read_dir(runc_root).into_iter().flatten().flatten() {
        let _ = std::process::Command::new("runc")
            .arg("--root")
            .arg(runc_root)
            .args(["delete", "--force"])
            .arg(container.file_name())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// containerd's config (version 2) with its root, state, sockets and opt
/// dir under `dir`, the snapshotters and tracing it cannot use here off,
/// and `disabled` plugins off too; a caller appends its plugins' sections.
pub fn base_config(dir: &Path, disabled: &[&str]) -> String {
    let d = dir.display();
    let unused = [
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.tracing.processor.v1.otlp",
        "io.containerd.internal.v1.tracing",
    ];
    let off: Vec<String> = disabled.iter().chain(&unused).map(|plugin| format!("{plugin:?}")).collect();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [{}]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#,
        off.join(", ")
    )
}
