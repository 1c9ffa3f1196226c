//! Two "nodes" on this machine: each a netns of its own (its own host veths,
//! VXLAN device, pin root and state dir), joined by an underlay veth; a real
//! etcd inside the first node, reached over the underlay, as the store; the
//! plugin, the CLI and `ratchet agent` run inside a node with `nsenter
//! --net`, as its runtime would run them (`ip netns exec` would remount /sys
//! and hide the host's bpffs, where the pins live).
//!
//! The caller makes (and deletes) the two netns; the rig makes the rest and
//! removes it on drop: the agents and etcd are killed (the agents first),
//! the pins and the rig's directory removed. The underlay goes with the netns.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{Value, json};

use crate::{
    Echo,
    etcd::{Etcd, EtcdOptions},
    run,
    runtime::{self, Reply},
};

/// The underlay veth, the same name in both nodes.
pub const UNDERLAY_DEVICE: &str = "ul0";

/// etcd's client port, on node 0's underlay address.
pub const ETCD_PORT: u16 = 2379;

/// How many times a verb answered "try again later" (11) is run again, and
/// how long apart, as kubelet retries.
const TRIES: usize = 10;
const RETRY_AFTER: Duration = Duration::from_millis(100);

pub struct RigOptions {
    /// The plugin binary.
    pub bin: PathBuf,
    /// The two nodes' netns, made by the caller, who deletes them after the
    /// rig is dropped. A node's pin root is `/sys/fs/bpf/<its netns>`.
    pub netns: [String; 2],
    /// Each node's IPv4 address on the underlay, both in one /24.
    pub underlay: [String; 2],
    /// The network name in every node's config.
    pub network: String,
    /// Keys added to every node's config (e.g. `node_lease_seconds`).
    pub extra_config: Value,
    /// The rig's own directory (state dirs, agent configs and logs, etcd's
    /// data): made by the rig, removed on drop.
    pub dir: PathBuf,
    /// Shown every command the rig runs, when the caller wants them shown.
    pub echo: Option<Echo>,
}

/// One node of the rig.
pub struct RigNode {
    /// Its `node_name`: `node-0`, `node-1`.
    pub name: String,
    pub netns: String,
    /// Its underlay address, its config's `node_ip`.
    pub ip: String,
    /// Its agent's config and log, and its state dir (`state/`).
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub pin_root: PathBuf,
    agent: Option<Child>,
}

pub struct Rig {
    nodes: [RigNode; 2],
    options: RigOptions,
    /// Declared after `nodes`: dropped (killed) after the agents.
    etcd: Etcd,
}

impl Rig {
    /// Joins the nodes by the underlay, starts etcd in node 0 and waits until
    /// node 1 sees it healthy. No agent runs yet ([`Rig::start_agent`]).
    pub fn new(options: RigOptions) -> anyhow::Result<Rig> {
        let [n0, n1] = options.netns.each_ref().map(String::as_str);
        let ip = |args: &[&str]| run(Command::new("ip").args(args), options.echo).map(drop);
        ip(&["-n", n0, "link", "add", UNDERLAY_DEVICE, "type", "veth", "peer", "name", UNDERLAY_DEVICE, "netns", n1])?;
        for (netns, address) in options.netns.iter().zip(&options.underlay) {
            ip(&["-n", netns, "address", "add", &format!("{address}/24"), "dev", UNDERLAY_DEVICE])?;
            ip(&["-n", netns, "link", "set", UNDERLAY_DEVICE, "up"])?;
            // etcd's peer URL and the agents' metrics are on loopback.
            ip(&["-n", netns, "link", "set", "lo", "up"])?;
        }
        let nodes: [RigNode; 2] = std::array::from_fn(|i| {
            let dir = options.dir.join(format!("node-{i}"));
            RigNode {
                name: format!("node-{i}"),
                netns: options.netns[i].clone(),
                ip: options.underlay[i].clone(),
                state_dir: dir.join("state"),
                dir,
                pin_root: Path::new("/sys/fs/bpf").join(&options.netns[i]),
                agent: None,
            }
        });
        for node in &nodes {
            std::fs::create_dir_all(&node.state_dir)
                .with_context(|| format!("creating {}", node.state_dir.display()))?;
        }
        let etcd = Etcd::start_with(EtcdOptions {
            netns: Some(options.netns[0].clone()),
            host: options.underlay[0].clone(),
            ports: Some((ETCD_PORT, 2380)),
            dir: Some(options.dir.join("etcd")),
            // Seen from the other node, as its plugin and agent will reach it.
            checked_from: Some(options.netns[1].clone()),
            echo: options.echo,
            ..EtcdOptions::default()
        });
        let etcd = match etcd {
            Ok(etcd) => etcd,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&options.dir);
                return Err(error);
            }
        };
        Ok(Rig { nodes, options, etcd })
    }

    pub fn node(&self, index: usize) -> &RigNode {
        &self.nodes[index]
    }

    pub fn etcd_endpoint(&self) -> String {
        self.etcd.endpoint()
    }

    /// The network config node `index`'s runtime hands the plugin.
    pub fn config(&self, index: usize) -> Value {
        let node = &self.nodes[index];
        let mut config = json!({
            "cniVersion": "1.0.0",
            "name": self.options.network,
            "type": "ratchet",
            "state_dir": node.state_dir,
            "pin_root": node.pin_root,
            "node_name": node.name,
            "node_ip": node.ip,
            "etcd_endpoints": [self.etcd_endpoint()],
        });
        for (key, value) in self.options.extra_config.as_object().into_iter().flatten() {
            config[key] = value.clone();
        }
        config
    }

    /// `ratchet ARGS` inside node `index`.
    pub fn ratchet(&self, index: usize, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/run/netns/{}", self.nodes[index].netns)).arg(&self.options.bin).args(args);
        command
    }

    /// The CLI on node `index`, with that node's own state dir, pin root and
    /// etcd: never the defaults, which belong to the machine's ratchet.
    pub fn cli(&self, index: usize, args: &[&str]) -> Command {
        let node = &self.nodes[index];
        let mut command = self.ratchet(index, &[]);
        command.arg("--state-dir").arg(&node.state_dir).arg("--pin-root").arg(&node.pin_root);
        command.args(["--etcd-endpoints", &self.etcd_endpoint()]).args(args);
        command
    }

    /// `ratchet topology apply` of `topology`, on node 0.
    pub fn apply(&self, topology: &Value) -> anyhow::Result<()> {
        let file = self.options.dir.join("topology.json");
        std::fs::write(&file, serde_json::to_string_pretty(topology)?)
            .with_context(|| format!("writing {}", file.display()))?;
        run(&mut self.cli(0, &["topology", "apply", &file.display().to_string()]), self.options.echo).map(drop)
    }

    /// `ratchet links --json`, from node 0.
    pub fn links(&self) -> anyhow::Result<Vec<Value>> {
        let out = run(&mut self.cli(0, &["links", "--json"]), None)?;
        serde_json::from_str(&out).with_context(|| format!("`ratchet links --json` printed {out}"))
    }

    /// Starts node `index`'s agent on the node's config, its stderr in
    /// `agent.log` in the node's directory.
    pub fn start_agent(&mut self, index: usize) -> anyhow::Result<()> {
        let dir = &self.nodes[index].dir;
        let config = dir.join("agent.json");
        std::fs::write(&config, self.config(index).to_string())
            .with_context(|| format!("writing {}", config.display()))?;
        let log = File::create(dir.join("agent.log"))?;
        let mut agent = self.ratchet(index, &["agent", "--config", &config.display().to_string()]);
        agent.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        if let Some(echo) = self.options.echo {
            echo(&agent);
        }
        self.nodes[index].agent = Some(agent.spawn().context("cannot start ratchet agent")?);
        Ok(())
    }

    /// Kills node `index`'s agent (as a crash would) and waits for it.
    pub fn stop_agent(&mut self, index: usize) {
        if let Some(mut agent) = self.nodes[index].agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
    }

    /// Runs the plugin inside node `index` with exactly this environment and
    /// stdin (see [`runtime::invoke`]).
    pub fn invoke<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
        &self,
        index: usize,
        env: &[(K, V)],
        stdin: &[u8],
    ) -> anyhow::Result<Reply> {
        runtime::invoke(self.ratchet(index, &[]), env, stdin).context("cannot run the plugin under nsenter")
    }

    /// A CNI verb (`env`) on node `index` with the node's config, run again
    /// while the answer is "try again later" (11: another writer, e.g. an
    /// agent, committed first), as kubelet does; the last reply.
    pub fn cni<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
        &self,
        index: usize,
        env: &[(K, V)],
    ) -> anyhow::Result<Reply> {
        let config = self.config(index).to_string();
        let mut reply = self.invoke(index, env, config.as_bytes())?;
        for _ in 1..TRIES {
            if reply.code() != Some(11) {
                break;
            }
            thread::sleep(RETRY_AFTER);
            reply = self.invoke(index, env, config.as_bytes())?;
        }
        Ok(reply)
    }

    /// Node `index`'s peers map as bpftool dumps it; `None` while it is not
    /// pinned.
    pub fn peers(&self, index: usize) -> Option<Vec<Value>> {
        let pin = self.nodes[index].pin_root.join("peers");
        let out = Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(pin).output().ok()?;
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    /// Waits up to `within` for node `index`'s peers map to be pinned and to
    /// satisfy `done`.
    pub fn peers_until(&self, index: usize, within: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.peers(index).is_some_and(|peers| done(&peers)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The agents before the etcd they talk to (a field, dropped after).
        for index in 0..self.nodes.len() {
            self.stop_agent(index);
        }
        for node in &self.nodes {
            let _ = std::fs::remove_dir_all(&node.pin_root);
            // A load an agent was killed in the middle of.
            let loading = format!("{}-loading-", node.netns);
            for entry in std::fs::read_dir("/sys/fs/bpf").into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(&loading) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        self.etcd.stop();
        let _ = std::fs::remove_dir_all(&self.options.dir);
    }
}
