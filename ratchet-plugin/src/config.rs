//! Ratchet's own keys in the CNI network config, with their defaults.
//!
//! The runtime hands the whole config on stdin; the spec's keys are read by
//! [`rscni_types::types::NetConf`], ours from the same JSON here, so a key of
//! the wrong type is reported by name.

use std::path::PathBuf;

use serde::Deserialize;

use crate::topology::{DEFAULT_MTU, Topology};

/// A key of ratchet's that has a value it cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The key, as a path into the config (`topology.links[0].a.ips`).
    pub key: String,
    /// What is wrong with its value.
    pub reason: String,
}

/// How long a verb may take when its config does not say
/// (`verb_timeout_seconds`): well above the store's own waits (10 s for its
/// lock, etcd's timeouts), well below kubelet's two-minute CRI deadline.
pub const DEFAULT_VERB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Where the embedded store lives when the config names no `state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ratchet";
/// Where programs and maps are pinned when the config names no `pin_root`.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/ratchet";

/// How the redirect program is attached to a host veth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// A clsact qdisc and a direct-action filter, made over netlink. Deleting
    /// the veth removes it, and it costs about 1.5 ms per ADD here.
    #[default]
    Clsact,
    /// A tcx bpf_link pinned under `pin_root/links/`: survives `tc qdisc`
    /// changes by other tools, but each attach waits for an RCU grace period
    /// (about 8 ms per ADD here).
    Tcx,
}

/// The node-local settings every verb and the CLI share.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Settings {
    /// Where the embedded store and the node's lock files live;
    /// [`DEFAULT_STATE_DIR`] when not given.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The bpffs directory the programs, maps and tcx link pins go under;
    /// [`DEFAULT_PIN_ROOT`] when not given.
    #[serde(default = "default_pin_root")]
    pub pin_root: PathBuf,
    /// This node's name in link records; the host name when not given.
    #[serde(default)]
    pub node_name: Option<String>,
    /// How the program is hung on host veths; `clsact` when not given.
    #[serde(default)]
    pub attach: AttachMode,
    /// This node's underlay IPv4 address. Given, the node takes part in
    /// cross-node links: it gets a VXLAN device and registers in the store.
    #[serde(default)]
    pub node_ip: Option<std::net::Ipv4Addr>,
    /// How long a node counts as alive after its agent last renewed its
    /// lease (etcd); a node past it has a dead or unreachable agent.
    #[serde(default = "default_node_lease_seconds")]
    pub node_lease_seconds: u64,
    /// Where `ratchet agent` serves Prometheus metrics (`/metrics`) and its
    /// health (`/healthz`, `/readyz`); loopback unless the config (or
    /// `ratchet install --metrics-address`) says otherwise, since the
    /// metrics name every pod and link of the node.
    #[serde(default = "default_metrics_address")]
    pub metrics_address: std::net::SocketAddr,
    /// The UDP port of the VXLAN underlay.
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    /// A topology carried in the config itself (e.g. from a ConfigMap):
    /// when given, ADD makes it the store's topology before it looks up links.
    #[serde(default, deserialize_with = "crate::topology::optional_topology")]
    pub topology: Option<Topology>,
    /// How long a verb may take before it answers error 11 on its own
    /// (see `cni::deadline`); 60 s when unset.
    #[serde(default)]
    pub verb_timeout_seconds: Option<u32>,
    /// Where the one-line-per-verb log goes (appended); stderr when unset.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// How much a verb logs; `info` to a `log_file`, `warn` to stderr when
    /// not given.
    #[serde(default)]
    pub log_level: Option<LogLevel>,
    /// The seed's standalone mode: the full CNI config that pods without
    /// links are passed straight to.
    #[serde(default)]
    pub delegate: Option<serde_json::Value>,
    /// The seed's standalone mode: the primary network of pods that have
    /// links, run before ratchet adds them.
    #[serde(default)]
    pub boot_network: Option<serde_json::Value>,
    /// etcd endpoints (`http://host:port`): the store for several nodes.
    /// Without any, the embedded store in `state_dir` is used.
    #[serde(default)]
    pub etcd_endpoints: Vec<String>,
    /// The seed's way to name one etcd endpoint.
    #[serde(default)]
    pub etcd_host: Option<String>,
    /// The port of `etcd_host`; 2379 when not given.
    #[serde(default)]
    pub etcd_port: Option<u16>,
    /// etcd user and password, when its authentication is on.
    #[serde(default)]
    pub etcd_username: Option<String>,
    /// The password of `etcd_username`; either one alone is ignored.
    #[serde(default)]
    pub etcd_password: Option<String>,
    /// The CA that signed etcd's server certificate (PEM): given, etcd is
    /// reached over TLS (use `https://` endpoints).
    #[serde(default)]
    pub etcd_ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for etcd's `--client-cert-auth`.
    #[serde(default)]
    pub etcd_cert_file: Option<PathBuf>,
    /// The key of `etcd_cert_file`; either one alone is ignored.
    #[serde(default)]
    pub etcd_key_file: Option<PathBuf>,
    /// A seed key accepted as written and ignored: links come from the
    /// topology, not pod labels (see `unused_seed_keys`).
    #[serde(default)]
    pub use_labels: Option<bool>,
    /// A seed key accepted as written and ignored: ratchet forks no helper
    /// binary (see `unused_seed_keys`).
    #[serde(default)]
    pub child_path: Option<String>,
}

/// How much a verb logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only; ratchet's own lines are warnings or less, so it says nothing.
    Error,
    /// Failed verbs and ignored seed keys; the default to stderr.
    Warn,
    /// Every verb's outcome too; the default to a `log_file`.
    Info,
    /// The libraries' debugging detail too.
    Debug,
    /// Everything.
    Trace,
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

impl Default for Settings {
    /// What a config without any of ratchet's keys gets.
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every key has a default")
    }
}

fn default_node_lease_seconds() -> u64 {
    10
}

fn default_metrics_address() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9478))
}

fn default_vxlan_port() -> u16 {
    4789
}

/// The longest `verb_timeout_seconds`: kubelet gives up on a CRI call after
/// two minutes; longer would only hide a hang.
const MAX_VERB_TIMEOUT_SECONDS: u32 = 600;

/// The most etcd endpoints a config may name.
const MAX_ETCD_ENDPOINTS: usize = 16;

/// VXLAN over IPv4 adds 50 bytes (outer Ethernet, IPv4, UDP and VXLAN headers).
pub const VXLAN_OVERHEAD: u32 = 50;

fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}

fn default_pin_root() -> PathBuf {
    DEFAULT_PIN_ROOT.into()
}

impl Settings {
    /// Reads ratchet's keys from the raw config, naming the key that is wrong.
    pub fn from_config(raw: &serde_json::Value) -> Result<Self, ConfigError> {
        let settings: Self = serde_path_to_error::deserialize(raw)
            .map_err(|e| ConfigError { key: e.path().to_string(), reason: e.inner().to_string() })?;
        if let Some(topology) = &settings.topology {
            topology.validate().map_err(|e| ConfigError { key: "topology".into(), reason: e.to_string() })?;
        }
        settings.check_bounds()?;
        Ok(settings)
    }

    /// Limits that keep every verb bounded: a deadline a runtime can wait
    /// for, and no more etcd endpoints than a cluster has members (the etcd
    /// client stalls for good past 64).
    fn check_bounds(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| Err(ConfigError { key: key.into(), reason });
        if let Some(seconds) = self.verb_timeout_seconds
            && !(1..=MAX_VERB_TIMEOUT_SECONDS).contains(&seconds)
        {
            return invalid("verb_timeout_seconds", format!("{seconds} is outside 1..={MAX_VERB_TIMEOUT_SECONDS}"));
        }
        let endpoints = self.etcd_endpoints.len() + usize::from(self.etcd_host.is_some());
        if endpoints > MAX_ETCD_ENDPOINTS {
            let reason = format!("{endpoints} endpoints; at most {MAX_ETCD_ENDPOINTS} (one per etcd member)");
            return invalid("etcd_endpoints", reason);
        }
        Ok(())
    }

    /// How long a verb may run before it gives up and answers.
    pub fn verb_timeout(&self) -> std::time::Duration {
        self.verb_timeout_seconds.map_or(DEFAULT_VERB_TIMEOUT, |s| std::time::Duration::from_secs(s.into()))
    }

    /// The seed's keys this version accepts but does not act on, with why,
    /// so a verb can log them instead of failing a config that worked before.
    pub fn unused_seed_keys(&self) -> Vec<&'static str> {
        let mut unused = Vec::new();
        if self.use_labels.is_some() {
            unused.push("use_labels: links come from the topology, not pod labels");
        }
        if self.child_path.is_some() {
            unused.push("child_path: ratchet forks no helper binary");
        }
        unused
    }

    /// A link's MTU: its own, else a plain Ethernet frame, less the VXLAN
    /// overhead on a node that takes part in cross-node links (a pod may
    /// land on any node, so every link must fit the tunnel).
    pub fn link_mtu(&self, link: &crate::topology::Link) -> u32 {
        let default = if self.node_ip.is_some() { DEFAULT_MTU - VXLAN_OVERHEAD } else { DEFAULT_MTU };
        link.mtu.unwrap_or(default)
    }

    /// The node name records carry: the configured one, else the host name.
    pub fn node(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_when_absent() {
        let settings = Settings::from_config(&json!({"cniVersion": "1.0.0", "name": "n", "type": "ratchet"})).unwrap();
        assert_eq!(settings, Settings::default());
    }

    #[test]
    fn reads_ratchet_keys() {
        let raw = json!({"state_dir": "/tmp/s", "pin_root": "/sys/fs/bpf/t", "node_name": "n1", "attach": "tcx"});
        let settings = Settings::from_config(&raw).unwrap();
        assert_eq!(settings.attach, AttachMode::Tcx);
        assert_eq!(settings.node(), "n1");
    }

    #[test]
    fn names_a_key_of_the_wrong_type() {
        let err = Settings::from_config(&json!({"state_dir": 5})).unwrap_err();
        assert!(err.to_string().starts_with("state_dir: invalid type"), "{err}");
        let err = Settings::from_config(&json!({"attach": "bridge"})).unwrap_err();
        assert!(err.to_string().starts_with("attach: unknown variant"), "{err}");
        let link = json!({"a": {"pod": "default/a", "ifname": "in1", "ips": ["10.0.0.1/24"]}, "b": {"pod": "default/b", "ifname": "in1"}});
        let err = Settings::from_config(&json!({"topology": {"links": [link, link]}})).unwrap_err();
        assert!(err.to_string().starts_with("topology: two links have the id"), "{err}");
        let bad_ip = json!({"topology": {"links": [{"a": {"pod": "default/a", "ifname": "in1", "ips": ["10.0.0.1/40"]}, "b": {"pod": "default/b", "ifname": "in1"}}]}});
        let err = Settings::from_config(&bad_ip).unwrap_err();
        assert!(err.to_string().starts_with("topology.links[0].a.ips: ips[0] \"10.0.0.1/40\""), "{err}");
    }
}
