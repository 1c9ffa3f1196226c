//! The two-node rig for the multi-node tests: the harness's
//! [`ratchet_harness::rig::Rig`] (an underlay between two node netns, etcd
//! in the first, the plugin and an agent run inside each) on two netns made
//! as [`Pod`]s, so a test can look inside a node as it looks inside a pod;
//! verbs run for a [`Pod`] with kubelet's variables, and a panic where the
//! harness gives an error. Dropping it stops the agents and etcd, removes
//! the pins and state, then the nodes' netns.

use std::{
    ops::{Deref, DerefMut},
    time::Duration,
};

use ratchet_harness::rig::{self, RigOptions};
use serde_json::{Value, json};

use crate::{
    pods::{Pod, end},
    runtime::{Reply, kubelet_env},
    util::{eventually, ratchet_bin, unique},
};

/// Two nodes, an underlay (10.203.0.0/24: node `i` has 10.203.0.`i+1`)
/// between them and etcd in the first.
pub struct Rig {
    /// Declared before `nodes`: its agents and etcd stop before the netns go.
    inner: rig::Rig,
    /// The nodes' netns.
    pub nodes: [Pod; 2],
}

impl Rig {
    pub fn new() -> Self {
        let nodes = [Pod::new("nodes", "node0"), Pod::new("nodes", "node1")];
        let inner = rig::Rig::new(RigOptions {
            bin: ratchet_bin(),
            netns: [nodes[0].netns.clone(), nodes[1].netns.clone()],
            underlay: ["10.203.0.1".into(), "10.203.0.2".into()],
            network: "ratchet-multinode".into(),
            extra_config: json!({"node_lease_seconds": 2}),
            dir: std::env::temp_dir().join(unique("rtrig")),
            echo: None,
        })
        .unwrap_or_else(|failure| panic!("the rig: {failure:#}"));
        Self { inner, nodes }
    }

    /// `ratchet topology apply` of `topology`.
    pub fn apply(&self, topology: &Value) {
        self.inner.apply(topology).unwrap_or_else(|failure| panic!("topology apply: {failure:#}"));
    }

    /// A link named `<prefix>-…` between pod alpha on node 0 (10.`subnet`.0.1)
    /// and pod beta on node 1 (10.`subnet`.0.2), both agents running, both
    /// pods added, and traffic crossing it: (alpha, beta, link).
    pub fn linked_across(&mut self, prefix: &str, subnet: u8) -> (Pod, Pod, String) {
        let (alpha, beta) = (Pod::new("default", "alpha"), Pod::new("default", "beta"));
        let link = unique(prefix);
        let [a, b] = [1, 2].map(|host| format!("10.{subnet}.0.{host}/24"));
        self.apply(&json!({"links": [{"name": link, "a": end(&alpha, "in1", &[&a]), "b": end(&beta, "in1", &[&b])}]}));
        self.start_agent(0);
        self.start_agent(1);
        assert!(self.cni(0, "ADD", &alpha).success);
        assert!(self.cni(1, "ADD", &beta).success);
        let to_beta = format!("10.{subnet}.0.2");
        assert!(eventually(|| alpha.ping(&to_beta)), "the link carries traffic across nodes");
        (alpha, beta, link)
    }

    pub fn start_agent(&mut self, index: usize) {
        self.inner.start_agent(index).expect("start agent");
    }

    /// A CNI verb for `pod` on node `index`, retried while the answer is
    /// "try again later" (11), as kubelet retries.
    pub fn cni(&self, index: usize, command: &str, pod: &Pod) -> Reply {
        let reply = self.inner.cni(index, &kubelet_env(command, pod)).expect("run the plugin");
        assert_ne!(reply.code(), Some(11), "{command} kept answering 11");
        reply
    }

    /// The peers map of node `index`, as bpftool dumps it.
    pub fn peers(&self, index: usize) -> Vec<Value> {
        self.inner.peers(index).expect("node's peers map is pinned")
    }

    /// Waits up to five seconds for node `index`'s peers map to hold `count` entries.
    pub fn peers_settle(&self, index: usize, count: usize) -> bool {
        self.inner.peers_until(index, Duration::from_secs(5), |peers| peers.len() == count)
    }

    /// `ratchet links --json`.
    pub fn links(&self) -> Vec<Value> {
        self.inner.links().unwrap_or_else(|failure| panic!("{failure:#}"))
    }
}

impl Default for Rig {
    fn default() -> Self {
        Self::new()
    }
}

impl Deref for Rig {
    type Target = rig::Rig;

    fn deref(&self) -> &rig::Rig {
        &self.inner
    }
}

impl DerefMut for Rig {
    fn deref_mut(&mut self) -> &mut rig::Rig {
        &mut self.inner
    }
}
