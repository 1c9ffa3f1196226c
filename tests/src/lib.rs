//! What every integration test needs: pods as network namespaces, a node
//! (its own state dir and bpffs pin root, so tests run in parallel), and the
//! real `ratchet` binary invoked the way a container runtime invokes it.
//!
//! Every guard removes what it made when dropped, also when a test fails.
//! The tests need root and a kernel with bpffs, tc and veth; the etcd tests
//! need `/usr/bin/etcd` and `etcdctl` (Debian's etcd-server and etcd-client),
//! which they start themselves on 127.0.0.1 only.

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// The plugin binary: `RATCHET_BIN` (set by `cargo xtask test`), else the
/// workspace's debug build.
pub fn ratchet_bin() -> PathBuf {
    let path = std::env::var_os("RATCHET_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ratchet"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask test` (or `cargo build -p ratchet-plugin`)",
        path.display()
    );
    path
}

/// A name no other test (or concurrent test run) uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pod's network namespace, deleted on drop.
pub struct Pod {
    pub netns: String,
    pub namespace: String,
    pub name: String,
}

impl Pod {
    /// A pod `namespace/name` with a fresh netns.
    pub fn new(namespace: &str, name: &str) -> Self {
        let netns = unique("rtt");
        run("ip", &["netns", "add", &netns]);
        Self { netns, namespace: namespace.into(), name: name.into() }
    }

    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }

    /// Runs a command inside the pod's netns.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", &self.netns]).args(args).output().expect("ip netns exec")
    }

    /// True when one ping to `ip` is answered within a second.
    pub fn ping(&self, ip: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "1", ip]).status.success()
    }

    /// Pings until answered, for at most `tries` seconds.
    pub fn ping_eventually(&self, ip: &str, tries: u32) -> bool {
        (0..tries).any(|_| self.ping(ip))
    }

    /// Runs `f` on a thread that entered this pod's netns.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let netns = File::open(self.netns_path()).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// The interfaces inside the pod, as `ip -j link` gives them.
    pub fn links(&self) -> Vec<Value> {
        serde_json::from_slice(&self.exec(&["ip", "-j", "link", "show"]).stdout).unwrap_or_default()
    }

    /// True once the pod has no interface of this name (within five
    /// seconds): a DEL'd link end goes with its host veth, in the background.
    pub fn link_gone(&self, ifname: &str) -> bool {
        eventually(|| self.link(ifname).is_none())
    }

    /// An interface inside the pod, if it exists.
    pub fn link(&self, ifname: &str) -> Option<Value> {
        self.links().into_iter().find(|l| l["ifname"] == ifname)
    }

    /// The global addresses of an interface inside the pod, as `addr/prefix`.
    pub fn addresses(&self, ifname: &str) -> Vec<String> {
        let out = self.exec(&["ip", "-j", "address", "show", "dev", ifname, "scope", "global"]);
        let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        links
            .iter()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            // iproute2 leaves an empty object for each address the scope filter drops.
            .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
            .collect()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

/// Sends `bytes` over TCP from `client` to `server` at `ip`, and returns
/// what arrived.
pub fn tcp_transfer(server: &Pod, client: &Pod, ip: &str, bytes: usize) -> Vec<u8> {
    let addr: SocketAddr =
        format!("{}:5201", if ip.contains(':') { format!("[{ip}]") } else { ip.into() }).parse().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = server.within(move || {
        let listener = TcpListener::bind(addr).expect("bind");
        ready_tx.send(()).unwrap();
        let (mut stream, _) = listener.accept().expect("accept");
        let mut got = Vec::new();
        stream.read_to_end(&mut got).expect("read");
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("server listening");
    let payload = pattern(bytes);
    client
        .within(move || {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            stream.write_all(&payload).expect("write");
        })
        .join()
        .unwrap();
    receiver.join().unwrap()
}

/// Bytes that are not all the same, so a corrupted stream shows.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// One node: a state dir and a pin root of its own, and the store its
/// config names (the embedded store in the state dir, or an etcd).
pub struct Node {
    pub state_dir: tempfile::TempDir,
    pub pin_root: PathBuf,
    pub attach: &'static str,
    /// The etcd endpoints the config and every CLI call name; empty for the
    /// embedded store.
    pub etcd_endpoints: Vec<String>,
}

/// What one plugin call printed and returned.
pub struct Reply {
    pub success: bool,
    pub json: Value,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    /// The CNI error code, if the call failed with one.
    pub fn code(&self) -> Option<u64> {
        self.json["code"].as_u64()
    }

    /// The error's `msg` and `details`, for looking for a word in either.
    pub fn error_text(&self) -> String {
        format!("{} {}", self.json["msg"].as_str().unwrap_or(""), self.json["details"].as_str().unwrap_or(""))
    }

    /// Panics unless the call succeeded and printed nothing (DEL, CHECK,
    /// STATUS and GC print nothing on success).
    pub fn assert_silent_success(&self, what: &str) {
        assert!(self.success, "{what} failed: {}", self.stdout);
        assert!(self.stdout.is_empty(), "{what} prints nothing on success, got {}", self.stdout);
    }

    /// Panics unless the call failed with `code` and its `msg` or `details`
    /// mention every one of `mentions`.
    pub fn assert_error(&self, code: u64, mentions: &[&str]) {
        assert!(!self.success, "should fail with code {code}: {}", self.stdout);
        assert_eq!(self.code(), Some(code), "{}", self.stdout);
        let text = self.error_text();
        for word in mentions {
            assert!(text.contains(word), "{text:?} should mention {word:?}");
        }
    }
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

    /// Calls the plugin exactly as a runtime does: the verb and identity in
    /// `CNI_*`, the config on stdin.
    pub fn call(&self, command: &str, container_id: &str, netns: &str, pod: (&str, &str), config: &Value) -> Reply {
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={container_id}",
            pod.0, pod.1
        );
        let env = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container_id),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
            ("CNI_ARGS", &args),
        ];
        self.call_raw(&env, config.to_string().as_bytes())
    }

    /// Calls the plugin with exactly this environment and stdin.
    pub fn call_raw(&self, env: &[(&str, &str)], stdin: &[u8]) -> Reply {
        call_binary(&ratchet_bin(), env, stdin)
    }

    /// The config for another `cniVersion`.
    pub fn config_for(&self, version: &str) -> Value {
        let mut config = self.config();
        config["cniVersion"] = json!(version);
        config
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

    /// A per-container verb for `pod`, with kubelet's identity and `eth0`.
    pub fn call_pod(&self, command: &str, pod: &Pod, config: &Value) -> Reply {
        self.call(command, &container_of(pod), &pod.netns_path(), (&pod.namespace, &pod.name), config)
    }

    /// CHECK for `pod`, with the runtime's cached ADD result as prevResult.
    pub fn check(&self, pod: &Pod, config: &Value, cached: &Value) -> Reply {
        self.call_pod("CHECK", pod, &with_prev_result(config, cached))
    }

    /// STATUS as a 1.1 runtime sends it: only `CNI_COMMAND` and `CNI_PATH`.
    pub fn status(&self, config: &Value) -> Reply {
        self.call_node_verb("STATUS", config, "/usr/lib/cni")
    }

    /// GC as a 1.1 runtime sends it (only `CNI_COMMAND` and `CNI_PATH`), the
    /// valid attachments (container id, `CNI_IFNAME`) in the config.
    pub fn gc(&self, config: &Value, valid: &[(String, &str)]) -> Reply {
        self.call_node_verb("GC", &with_valid_attachments(config, valid), "/usr/lib/cni")
    }

    /// STATUS or GC with a `CNI_PATH` of the caller's choosing.
    pub fn call_node_verb(&self, command: &str, config: &Value, cni_path: &str) -> Reply {
        self.call_raw(&[("CNI_COMMAND", command), ("CNI_PATH", cni_path)], config.to_string().as_bytes())
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

/// Runs a plugin binary with exactly this environment and stdin.
pub fn call_binary(binary: &Path, env: &[(&str, &str)], stdin: &[u8]) -> Reply {
    call_command(Command::new(binary), env, stdin)
}

/// Runs a prepared command (e.g. the plugin under `nsenter`) as a runtime
/// runs a plugin: exactly this environment, the config on stdin.
pub fn call_command(mut command: Command, env: &[(&str, &str)], stdin: &[u8]) -> Reply {
    let mut child = command
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    // A plugin may exit before it reads its stdin.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    Reply { success: out.status.success(), json, stdout, stderr }
}

/// The `CNI_*` variables kubelet (through containerd) sets for a verb on `pod`.
pub fn kubelet_env(command: &str, pod: &Pod) -> Vec<(&'static str, String)> {
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}", pod.namespace, pod.name);
    vec![
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", container_of(pod)),
        ("CNI_NETNS", pod.netns_path()),
        ("CNI_IFNAME", "eth0".to_owned()),
        ("CNI_PATH", "/usr/lib/cni".to_owned()),
        ("CNI_ARGS", args),
    ]
}

/// Runs a reference plugin from `/usr/lib/cni` for `pod`, as a runtime runs
/// the first plugin of a chain: kubelet's `CNI_*` variables, the config on stdin.
pub fn reference_plugin(plugin: &str, command: &str, pod: &Pod, config: &Value) -> Reply {
    let env = kubelet_env(command, pod);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    call_binary(&Path::new("/usr/lib/cni").join(plugin), &env, config.to_string().as_bytes())
}

/// The config with a `prevResult`, as a runtime sends CHECK, DEL and any
/// chained plugin.
pub fn with_prev_result(config: &Value, prev: &Value) -> Value {
    let mut config = config.clone();
    config["prevResult"] = prev.clone();
    config
}

/// The config with the `cni.dev/valid-attachments` GC reads.
pub fn with_valid_attachments(config: &Value, valid: &[(String, &str)]) -> Value {
    let mut config = config.clone();
    let list: Vec<Value> = valid.iter().map(|(id, ifname)| json!({"containerID": id, "ifname": ifname})).collect();
    config["cni.dev/valid-attachments"] = json!(list);
    config
}

/// Every version ratchet speaks, oldest first.
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Whether a version's ADD result has the 0.3.x/0.4.0 layout (`ips[].version`).
pub fn is_legacy(version: &str) -> bool {
    version.starts_with("0.")
}

/// Whether a config of this version may ask for CHECK (0.4.0 and later).
pub fn has_check(version: &str) -> bool {
    version != "0.3.0" && version != "0.3.1"
}

/// A bridge name for the bridge plugin, which makes the device on its first
/// ADD and never deletes it; the guard deletes it on drop.
pub struct Bridge {
    pub name: String,
}

impl Bridge {
    pub fn new() -> Self {
        let name = unique("rtbr");
        assert!(name.len() <= 15, "{name} is too long for an interface name");
        Self { name }
    }

    /// The interfaces enslaved to the bridge (the host ends of its pods).
    pub fn ports(&self) -> Vec<String> {
        let out = Command::new("ip").args(["-j", "link", "show", "master", &self.name]).output().unwrap();
        let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        links.iter().map(|l| l["ifname"].as_str().unwrap().to_owned()).collect()
    }
}

impl Default for Bridge {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

/// host-local IPAM whose allocations live in a directory of this test's own
/// (removed on drop), so tests neither share nor leak addresses.
pub struct HostLocal {
    pub data_dir: tempfile::TempDir,
    pub subnet: String,
}

impl HostLocal {
    pub fn new(subnet: &str) -> Self {
        Self { data_dir: tempfile::tempdir().unwrap(), subnet: subnet.into() }
    }

    /// The `ipam` section of a plugin config.
    pub fn ipam(&self) -> Value {
        json!({"type": "host-local", "subnet": self.subnet, "dataDir": self.data_dir.path()})
    }

    /// The addresses host-local holds for the network `name` (one file each).
    pub fn allocated(&self, network: &str) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.data_dir.path().join(network)) else { return Vec::new() };
        let mut ips: Vec<String> = dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
            .collect();
        ips.sort();
        ips
    }
}

/// A host interface's ifindex.
pub fn host_ifindex(name: &str) -> u32 {
    let links: Vec<Value> = serde_json::from_str(&run("ip", &["-j", "link", "show", "dev", name])).unwrap();
    u32::try_from(links[0]["ifindex"].as_u64().unwrap()).unwrap()
}

/// The container id the tests give a pod's sandbox.
pub fn container_of(pod: &Pod) -> String {
    format!("c-{}", pod.netns)
}

/// One link end for a topology.
pub fn end(pod: &Pod, ifname: &str, ips: &[&str]) -> Value {
    json!({"pod": format!("{}/{}", pod.namespace, pod.name), "ifname": ifname, "ips": ips})
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

/// Waits up to five seconds for `done`.
pub fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
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

/// How long a fresh or restarted etcd may take to report itself healthy
/// (about 0.1 s here with the short election timeout below).
const ETCD_HEALTHY_WITHIN: Duration = Duration::from_secs(10);

/// A real etcd (Debian's etcd-server) of this test's own: it listens on
/// 127.0.0.1 only, on ports picked free for it, with a temporary data dir.
/// Dropping it kills it, waits for it, and removes the data dir.
pub struct Etcd {
    pub client_port: u16,
    pub peer_port: u16,
    /// The data dir (`data/`) and etcd's output (`etcd.log`).
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Etcd {
    /// Starts a fresh, single-member etcd and waits until it is healthy.
    pub fn new() -> Self {
        let mut failures = Vec::new();
        // Another test may take a port between our probe and etcd's bind:
        // then try again with new ports.
        for _ in 0..5 {
            let (client_port, peer_port) = free_ports();
            let mut etcd = Self { client_port, peer_port, dir: tempfile::tempdir().unwrap(), child: None };
            match etcd.try_start() {
                Ok(()) => return etcd,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("etcd did not start: {failures:#?}");
    }

    /// The client URL, as `etcd_endpoints` and `--etcd-endpoints` take it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (as a crash would) and waits for it; its data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes etcd (SIGSTOP): it still accepts connections but answers
    /// nothing, as a hung or partitioned etcd does. [`Etcd::resume`] thaws it;
    /// dropping it kills it either way.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("etcd is running").id().to_string();
        run("kill", &[signal, &pid]);
    }

    /// Starts etcd again on the same ports and data dir, and waits until it is
    /// healthy.
    pub fn start(&mut self) {
        self.try_start().unwrap_or_else(|failure| panic!("etcd did not restart: {failure}"));
    }

    fn try_start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "etcd is already running");
        let log = File::options().create(true).append(true).open(self.dir.path().join("etcd.log")).unwrap();
        let (client, peer) =
            (format!("http://127.0.0.1:{}", self.client_port), format!("http://127.0.0.1:{}", self.peer_port));
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--name", "default", "--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--heartbeat-interval=10", "--election-timeout=100"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn etcd: {e}"))?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < ETCD_HEALTHY_WITHIN {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("etcd exited ({status}): {}", self.log_tail()));
            }
            if self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        Err(format!("etcd not healthy within {ETCD_HEALTHY_WITHIN:?}: {}", self.log_tail()))
    }

    /// True when `GET /health` answers `"health":"true"`.
    pub fn healthy(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let request = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        let mut answer = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.contains(r#""health":"true""#)
    }

    /// Every key under `prefix`, as etcdctl (an independent witness) lists it.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let endpoint = self.endpoint();
        let out = run("etcdctl", &["--endpoints", &endpoint, "get", "--prefix", "--keys-only", prefix]);
        out.lines().filter(|line| !line.is_empty()).map(String::from).collect()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Default for Etcd {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two distinct ports on 127.0.0.1 that are free right now.
fn free_ports() -> (u16, u16) {
    let first = TcpListener::bind("127.0.0.1:0").unwrap();
    let second = TcpListener::bind("127.0.0.1:0").unwrap();
    (first.local_addr().unwrap().port(), second.local_addr().unwrap().port())
}

/// Runs each named test body, a `fn name(node: &Node)` of the calling file,
/// once per store backend: as `name::embedded` on a node with the embedded
/// store, and as `name::etcd` on a node whose store is an etcd of that test's
/// own. The same assertions hold for both.
#[macro_export]
macro_rules! on_each_store {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn embedded() {
                super::$name(&$crate::Node::new());
            }

            #[test]
            fn etcd() {
                let etcd = $crate::Etcd::new();
                let node = $crate::Node::with_etcd(&etcd);
                super::$name(&node);
                assert!(!node.has_embedded_store(), "a node configured for etcd never falls back to the embedded store");
            }
        }
    )*};
}

/// For each CNI version ratchet speaks, a module (`v0_3_0` ... `v1_1_0`)
/// with one `#[test]` per named function, called as `f(version, index)`:
/// `index` (0 to 4) tells the versions apart, e.g. to give each its own
/// subnet, since the five run in parallel.
#[macro_export]
macro_rules! per_version {
    ($($test:ident),* $(,)?) => {
        $crate::per_version!(@versions [$($test),*]
            v0_3_0 "0.3.0" 0, v0_3_1 "0.3.1" 1, v0_4_0 "0.4.0" 2, v1_0_0 "1.0.0" 3, v1_1_0 "1.1.0" 4);
    };
    (@versions $tests:tt $($module:ident $version:literal $index:literal),*) => {$(
        mod $module {
            $crate::per_version!(@tests $tests $version $index);
        }
    )*};
    (@tests [$($test:ident),*] $version:literal $index:literal) => {$(
        #[test]
        fn $test() {
            super::$test($version, $index);
        }
    )*};
}
