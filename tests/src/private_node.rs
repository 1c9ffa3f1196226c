//! A test that plays a whole node (deploy/'s DaemonSet under the test's
//! kubelet emulation in `daemonset.rs`, or under a real kubelet in
//! `kubernetes.rs`) writes where a node's ratchet writes: hostPaths such as
//! /opt/cni/bin, /etc/ratchet, /var/lib/ratchet. These keep the node's real
//! files out of its reach and remove what it leaves on the host.
//!
//! [`PrivateMounts`] moves the test thread into a mount namespace of its own
//! (`unshare(CLONE_NEWNS)`: per thread, since it unshares the thread's fs
//! struct too, so it works in the multi-threaded test process and leaves the
//! main thread, and cargo's other test binaries, alone), cuts it from the
//! host's (`/` rprivate), makes it shared again inside (so containerd accepts
//! Bidirectional and HostToContainer mounts), and lays overlays over the
//! given directories whose writes land in the test's temp dir. Everything the
//! thread starts from then on (containerd, the shims, kubelet, the plugin)
//! inherits the namespace; the overlays go with it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, unshare},
};

use crate::node::host_has_link;

/// The VXLAN device a node with `node_ip` makes in the host netns.
pub const VXLAN_DEVICE: &str = "rtvx0";

/// The test thread's own mount namespace, cut from the host's, with each of
/// `overlaid` an overlay whose upper layer is under `dir`. Dropping it
/// unmounts the overlays: the thread sees the node's real files again.
pub struct PrivateMounts {
    overlays: Vec<&'static str>,
}

impl PrivateMounts {
    pub fn enter(dir: &Path, overlaid: &[&'static str]) -> Self {
        // CLONE_NEWNS unshares this thread's fs struct with it: only this
        // thread (and what it starts from now on) moves.
        unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS) (needs root)");
        let none = None::<&str>;
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).expect("make / rprivate");
        // Shared again, among this namespace's mounts only: containerd
        // refuses Bidirectional (HostToContainer) propagation from a mount
        // that is not shared (shared or a slave).
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SHARED, none).expect("make / rshared");
        let mut mounts = Self { overlays: Vec::new() };
        for &lower in overlaid {
            let layers = dir.join(lower.trim_start_matches('/').replace('/', "-"));
            let (upper, work) = (layers.join("upper"), layers.join("work"));
            std::fs::create_dir_all(&upper).unwrap();
            std::fs::create_dir_all(&work).unwrap();
            let options = format!("lowerdir={lower},upperdir={},workdir={}", upper.display(), work.display());
            mount(Some("overlay"), lower, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
                .unwrap_or_else(|e| panic!("overlay on {lower} ({options}): {e}"));
            mounts.overlays.push(lower);
        }
        mounts
    }
}

impl Drop for PrivateMounts {
    fn drop(&mut self) {
        for lower in self.overlays.iter().rev() {
            let _ = umount2(*lower, MntFlags::MNT_DETACH);
        }
    }
}

/// What the node keeps of the test that no fixture removes: the pin root
/// (on the host's bpffs) and [`VXLAN_DEVICE`] (in the host netns, when the
/// test made it), and the hostPath directories made outside the overlays.
pub struct NodeLeftovers {
    pub pin_root: PathBuf,
    pub vxlan_was_there: bool,
    pub made_dirs: Vec<PathBuf>,
}

impl NodeLeftovers {
    pub fn new(pin_root: PathBuf) -> Self {
        Self { pin_root, vxlan_was_there: host_has_link(VXLAN_DEVICE), made_dirs: Vec::new() }
    }
}

impl Drop for NodeLeftovers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_root);
        if !self.vxlan_was_there && host_has_link(VXLAN_DEVICE) {
            let _ = Command::new("ip").args(["link", "del", VXLAN_DEVICE]).stderr(Stdio::null()).status();
        }
        for dir in self.made_dirs.iter().rev() {
            // Fails, as it should, if anything else put a file there meanwhile.
            let _ = std::fs::remove_dir(dir);
        }
    }
}
