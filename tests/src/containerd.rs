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

/// Every mount point at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
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
