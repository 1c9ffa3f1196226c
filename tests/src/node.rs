//! One node of ratchet for a test: [`Node`] (a config, a state dir and a
//! bpffs pin root of its own, so tests run in parallel; its store the
//! embedded one or an [`Etcd`]), the plugin called on it as a runtime calls
//! it, the CLI and bpftool as witnesses, its [`Agent`], and what the host
//! netns shows of its link ends.

use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ratchet_harness::runtime::CNI_PATH;
use serde_json::{Value, json};

use crate::{
    etcd::Etcd,
    plugins::{with_prev_result, with_valid_attachments},
    pods::{Pod, container_of},
    runtime::{Reply, call_binary, kubelet_env, sandbox_env},
    scrape::{self, Answer, Scrape},
    util::{eventually, ratchet_bin, run, unique},
};

/// One node: a state dir and a pin root of its own, and the store its
/// config names (the embedded store in the state dir, or an etcd). The pins
/// are removed on drop, the state dir with its `TempDir`.
pub struct Node {
    pub state_dir: tempfile::TempDir,
    pub pin_root: PathBuf,
    pub attach: &'static str,
    /// The etcd endpoints the config and every CLI call name; empty for the
    /// embedded store.
    pub etcd_endpoints: Vec<String>,
}

impl Node {
    pub fn new() -> Self {
        Self::with_attach("clsact")
    }

    pub fn with_attach(attach: &'static str) -> Self {
        Self {
            state_dir: tempfile::tempdir().unwrap(),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/{}", unique("rtt"))),
            attach,
            etcd_endpoints: Vec::new(),
        }
    }

    /// A node whose store is `etcd`: its config carries `etcd_endpoints` and
    /// every CLI call `--etcd-endpoints`.
    pub fn with_etcd(etcd: &Etcd) -> Self {
        let mut node = Self::new();
        node.etcd_endpoints = vec![etcd.endpoint()];
        node
    }

    /// The plugin's config as a runtime hands it over.
    pub fn config(&self) -> Value {
        let mut config = json!({
            "cniVersion": "1.0.0",
            "name": "ratchet-test",
            "type": "ratchet",
            "state_dir": self.state_dir.path(),
            "pin_root": self.pin_root,
            "node_name": "node-1",
            "attach": self.attach,
        });
        if !self.etcd_endpoints.is_empty() {
            config["etcd_endpoints"] = json!(self.etcd_endpoints);
        }
        config
    }

    /// The config for another `cniVersion`.
    pub fn config_for(&self, version: &str) -> Value {
        let mut config = self.config();
        config["cniVersion"] = json!(version);
        config
    }

    /// The settings the plugin reads from [`Node::config`], for opening the
    /// node's store from a test.
    pub fn settings(&self) -> ratchet_plugin::config::Settings {
        ratchet_plugin::config::Settings::from_config(&self.config()).expect("the test config is valid")
    }

    /// Every key under `prefix` in the node's store, read through the
    /// plugin's own store code (either backend), in key order.
    pub fn store_keys(&self, prefix: &str) -> Vec<String> {
        use ratchet_plugin::store::{self, Store, Transaction};
        let settings = self.settings();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut store = store::open(&settings).await.expect("open the node's store");
            let mut tx = store.begin().await.expect("begin");
            tx.scan(prefix).await.expect("scan").into_iter().map(|(key, _)| key).collect()
        })
    }

    /// Whether the embedded store's file exists in the state dir.
    pub fn has_embedded_store(&self) -> bool {
        self.state_dir.path().join("store.sqlite").exists()
    }

    /// Runs the CLI against this node; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let endpoints = self.etcd_endpoints.join(",");
        let mut full =
            vec!["--state-dir", self.state_dir.path().to_str().unwrap(), "--pin-root", self.pin_root.to_str().unwrap()];
        if !endpoints.is_empty() {
            full.extend(["--etcd-endpoints", &endpoints]);
        }
        full.extend(args);
        run(ratchet_bin().to_str().unwrap(), &full)
    }

    /// Applies a topology given as JSON.
    pub fn apply(&self, topology: &Value) {
        let file = self.state_dir.path().join(unique("topology-"));
        std::fs::write(&file, topology.to_string()).unwrap();
        self.cli(&["topology", "apply", file.to_str().unwrap()]);
    }

    /// `ratchet links --json`.
    pub fn links(&self) -> Vec<Value> {
        serde_json::from_str(&self.cli(&["links", "--json"])).unwrap()
    }

    /// The state of one link as the CLI reports it.
    pub fn link_state(&self, link: &str) -> String {
        let links = self.links();
        let found = links.iter().find(|l| l["link"] == link).unwrap_or_else(|| panic!("no link {link} in {links:?}"));
        found["state"].as_str().unwrap().into()
    }

    /// The pinned peers map as bpftool (an independent witness) dumps it.
    pub fn peers(&self) -> Vec<(u64, u64)> {
        let dump = run("bpftool", &["-j", "map", "dump", "pinned", self.pin_root.join("peers").to_str().unwrap()]);
        let entries: Vec<Value> = serde_json::from_str(&dump).unwrap();
        // With BTF, JSON mode puts the decoded entry under "formatted".
        let decoded =
            |e: &Value| (e["formatted"]["key"].as_u64().unwrap(), e["formatted"]["value"]["ifindex"].as_u64().unwrap());
        entries.iter().map(decoded).collect()
    }

    /// The keys (host ifindexes) of a pinned map, `peers` or `stats`, as
    /// bpftool dumps them.
    pub fn map_keys(&self, map: &str) -> Vec<u64> {
        let dump = run("bpftool", &["-j", "map", "dump", "pinned", self.pin_root.join(map).to_str().unwrap()]);
        let entries: Vec<Value> = serde_json::from_str(&dump).unwrap();
        let mut keys: Vec<u64> = entries.iter().map(|e| e["formatted"]["key"].as_u64().unwrap()).collect();
        keys.sort_unstable();
        keys
    }

    /// Calls the plugin exactly as a runtime does: the verb and identity in
    /// `CNI_*`, the config on stdin.
    pub fn call(&self, command: &str, container_id: &str, netns: &str, pod: (&str, &str), config: &Value) -> Reply {
        let env = sandbox_env(command, container_id, netns, pod);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.call_raw(&env, config.to_string().as_bytes())
    }

    /// Calls the plugin with exactly this environment and stdin.
    pub fn call_raw(&self, env: &[(&str, &str)], stdin: &[u8]) -> Reply {
        call_binary(&ratchet_bin(), env, stdin)
    }

    /// A per-container verb for `pod`, with kubelet's identity and `eth0`.
    pub fn call_pod(&self, command: &str, pod: &Pod, config: &Value) -> Reply {
        self.call(command, &container_of(pod), &pod.netns_path(), (&pod.namespace, &pod.name), config)
    }

    /// Starts a per-container verb for `pod` (as `call_pod`) and SIGKILLs
    /// the plugin after `after`, as a runtime's timeout or the OOM killer
    /// would. Returns true if it had finished by then.
    pub fn call_pod_killed(&self, command: &str, pod: &Pod, after: std::time::Duration) -> bool {
        let env = kubelet_env(command, pod);
        let mut child = Command::new(ratchet_bin())
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(self.config().to_string().as_bytes());
        std::thread::sleep(after);
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        child.wait().unwrap();
        finished
    }

    /// CHECK for `pod`, with the runtime's cached ADD result as prevResult.
    pub fn check(&self, pod: &Pod, config: &Value, cached: &Value) -> Reply {
        self.call_pod("CHECK", pod, &with_prev_result(config, cached))
    }

    /// STATUS as a 1.1 runtime sends it: only `CNI_COMMAND` and `CNI_PATH`.
    pub fn status(&self, config: &Value) -> Reply {
        self.call_node_verb("STATUS", config, CNI_PATH)
    }

    /// GC as a 1.1 runtime sends it (only `CNI_COMMAND` and `CNI_PATH`), the
    /// valid attachments (container id, `CNI_IFNAME`) in the config.
    pub fn gc(&self, config: &Value, valid: &[(String, &str)]) -> Reply {
        self.call_node_verb("GC", &with_valid_attachments(config, valid), CNI_PATH)
    }

    /// STATUS or GC with a `CNI_PATH` of the caller's choosing.
    pub fn call_node_verb(&self, command: &str, config: &Value, cni_path: &str) -> Reply {
        self.call_raw(&[("CNI_COMMAND", command), ("CNI_PATH", cni_path)], config.to_string().as_bytes())
    }

    /// ADD for a pod; panics with the plugin's error if it fails.
    pub fn add(&self, pod: &Pod) -> Value {
        let reply =
            self.call("ADD", &container_of(pod), &pod.netns_path(), (&pod.namespace, &pod.name), &self.config());
        assert!(reply.success, "ADD {}/{} failed: {}", pod.namespace, pod.name, reply.stdout);
        reply.json
    }

    /// DEL for a pod; panics if it fails.
    pub fn del(&self, pod: &Pod) {
        let reply =
            self.call("DEL", &container_of(pod), &pod.netns_path(), (&pod.namespace, &pod.name), &self.config());
        assert!(reply.success, "DEL {}/{} failed: {}", pod.namespace, pod.name, reply.stdout);
        assert!(reply.stdout.is_empty(), "DEL prints nothing on success, got {}", reply.stdout);
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_root);
    }
}

/// `ratchet agent` for a node (its config, the kernel's pick of metrics
/// port so agents can run side by side), its log in the state dir, killed
/// on drop.
pub struct Agent(std::process::Child, PathBuf);

impl Agent {
    pub fn start(node: &Node) -> Self {
        Self::start_with_env(node, &[])
    }

    /// The same, with these variables added to its environment.
    pub fn start_with_env(node: &Node, env: &[(&str, &str)]) -> Self {
        let mut config = node.config();
        config["metrics_address"] = json!("127.0.0.1:0");
        let file = node.state_dir.path().join("agent.json");
        std::fs::write(&file, config.to_string()).unwrap();
        Self::with_config(node, &file, env)
    }

    /// `ratchet agent --config FILE` (a config or a conflist), its log in
    /// the node's state dir.
    pub fn with_config(node: &Node, file: &Path, env: &[(&str, &str)]) -> Self {
        let log = node.state_dir.path().join("agent.log");
        let child = Command::new(ratchet_bin())
            .args(["agent", "--config", file.to_str().unwrap()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the agent");
        Self(child, log)
    }

    /// Where it serves metrics and health, as its start line logs it
    /// (`metrics=ADDR:PORT`); waits up to ten seconds for that line.
    pub fn metrics_address(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            let logged = log.split_whitespace().find_map(|word| word.strip_prefix("metrics="));
            if let Some(address) = logged {
                return address.parse().unwrap_or_else(|e| panic!("metrics={address}: {e}"));
            }
            assert!(Instant::now() < deadline, "the agent never said where it serves metrics: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` from its endpoint.
    pub fn get(&self, path: &str) -> Answer {
        scrape::get(self.metrics_address(), path)
    }

    /// `GET /metrics`, which must answer 200 in the Prometheus text format.
    pub fn scrape(&self) -> Scrape {
        let answer = self.get("/metrics");
        assert_eq!(answer.status, 200, "{answer:?}");
        Scrape::parse(&answer.body)
    }

    /// Waits up to `within` for `/readyz` to answer `status`.
    pub fn readiness_becomes(&self, status: u16, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let answer = self.get("/readyz");
            if answer.status == status {
                return true;
            }
            if Instant::now() > deadline {
                eprintln!("/readyz still answers {answer:?}\nagent log:\n{}", self.log());
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }

    /// A `kB` line of /proc/<pid>/status (VmRSS, VmHWM).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).expect("the agent is running");
        let line = status.lines().find_map(|line| line.strip_prefix(&format!("{field}:"))).unwrap();
        line.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Its open file descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.0.id())).expect("the agent is running").count()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A host interface's ifindex.
pub fn host_ifindex(name: &str) -> u32 {
    let links: Vec<Value> = serde_json::from_str(&run("ip", &["-j", "link", "show", "dev", name])).unwrap();
    u32::try_from(links[0]["ifindex"].as_u64().unwrap()).unwrap()
}

/// True once the host netns has no interface of this name (within five
/// seconds): DEL leaves deleting its veths to a detached child.
pub fn host_link_gone(name: &str) -> bool {
    eventually(|| !host_has_link(name))
}

/// True when the host netns has an interface of this name.
pub fn host_has_link(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// The host veths of a link, from `ratchet links --json`.
pub fn host_ifnames(node: &Node, link: &str) -> Vec<String> {
    node.links()
        .into_iter()
        .filter(|l| l["link"] == link)
        .flat_map(|l| l["ends"].as_array().cloned().unwrap_or_default())
        .map(|e| e["host_ifname"].as_str().unwrap().to_owned())
        .collect()
}
