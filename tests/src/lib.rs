//! What every integration test needs, by concern:
//!
//! - [`pods`]: pods as network namespaces, and TCP across a link;
//! - [`node`]: a node of ratchet (a config, a state dir and a pin root of its
//!   own, so tests run in parallel), its agent, and the host's view of it;
//! - [`runtime`]: the plugin invoked the way a container runtime invokes it;
//! - [`plugins`]: the reference plugins and the configs a runtime sends them;
//! - [`etcd`]: an etcd of a test's own (plain, or TLS with client certificates);
//! - [`rig`]: two netns nodes joined by an underlay, for the multi-node tests;
//! - [`scrape`]: the agent's HTTP endpoint, and a strict parser of what
//!   `/metrics` serves;
//! - [`versions`]: every CNI version, `per_version!` and `on_each_store!`;
//! - [`containerd`]: a private containerd's processes, mounts and cgroups;
//! - [`cri`]: a private containerd driven over CRI as kubelet drives it;
//! - [`private_node`]: a test playing a whole node kept off the node's real
//!   files (its own mount namespace, overlays) and what it leaves removed;
//! - [`kube`]: a single-node Kubernetes cluster built from source
//!   (`cargo xtask k8s`) on a private containerd;
//! - [`util`]: the binary and image under test, unique names, commands, waiting.
//!
//! What xtask shares with them (invoking a plugin, the etcd launcher, the
//! rig) lives once in `ratchet-harness` (`tests/harness`); the modules here
//! add what only tests need. Everything is re-exported here, so a test says
//! `use ratchet_tests::{Node, Pod, ...}`.
//!
//! Every guard removes what it made when dropped, also when a test fails.
//! The tests need root and a kernel with bpffs, tc and veth; the etcd tests
//! need `/usr/bin/etcd` and `etcdctl` (Debian's etcd-server and etcd-client),
//! which they start themselves on 127.0.0.1 only (or inside the rig's nodes).

pub mod containerd;
pub mod cri;
pub mod etcd;
pub mod kube;
pub mod node;
pub mod plugins;
pub mod pods;
pub mod private_node;
pub mod rig;
pub mod runtime;
pub mod scrape;
pub mod util;
pub mod versions;

pub use containerd::{cgroup_dirs, mounts_under, processes_mentioning};
pub use etcd::{Etcd, Tls};
pub use node::{Agent, Node, host_has_link, host_ifindex, host_ifnames, host_link_gone};
pub use plugins::{Bridge, HostLocal, reference_plugin, with_prev_result, with_valid_attachments};
pub use pods::{Pod, container_of, end, pattern, tcp_transfer};
pub use rig::Rig;
pub use runtime::{Reply, call_binary, call_command, kubelet_env, sandbox_env};
pub use scrape::{Answer, Sample, Scrape};
pub use util::{eventually, ratchet_bin, ratchet_image, run, unique, within};
pub use versions::{VERSIONS, has_check, is_legacy};
