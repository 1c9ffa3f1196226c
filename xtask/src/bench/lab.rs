//! The bench's scratch space: every netns, device, pin, directory and server
//! it makes has `rbench-<pid>` (or `rbb<pid>`) in its name and is listed here,
//! and the guard removes it all on drop, a failed step or a panic included.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use ratchet_harness::runtime::{self, container_id, pod_args, verb_env};
use serde_json::Value;

use crate::util::{self, command};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

pub struct Lab {
    pub prefix: String,
    pub bin: PathBuf,
    pub temp: PathBuf,
    pub state_dir: PathBuf,
    pub pin_root: PathBuf,
    /// The bridge plugin's bridge (an interface name: 15 bytes at most).
    pub bridge: String,
    /// CPUs for the client and the server, when there are two to pin to.
    pub cpus: Option<(usize, usize)>,
    netns: Vec<String>,
    servers: Vec<Child>,
    /// bridge (isGateway) and ptp turn forwarding on; it is put back.
    ip_forward: Option<String>,
}

impl Lab {
    pub fn new(bin: PathBuf) -> anyhow::Result<Lab> {
        let pid = std::process::id();
        let prefix = format!("rbench-{pid}");
        let temp = std::env::temp_dir().join(&prefix);
        fs::create_dir_all(&temp).with_context(|| format!("creating {}", temp.display()))?;
        let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        let taskset = util::probe(command("taskset").arg("--version")).is_ok_and(|out| out.status.success());
        Ok(Lab {
            state_dir: temp.join("state"),
            pin_root: Path::new("/sys/fs/bpf").join(&prefix),
            bridge: format!("rbb{pid}"),
            cpus: (cpus >= 2 && taskset).then_some((0, 1)),
            ip_forward: fs::read_to_string(IP_FORWARD).ok(),
            prefix,
            bin,
            temp,
            netns: Vec::new(),
            servers: Vec::new(),
        })
    }

    /// The operator's CLI on the lab's node (its store and pins).
    pub fn cli(&self) -> Command {
        let mut cli = command(&self.bin);
        cli.arg("--state-dir").arg(&self.state_dir).arg("--pin-root").arg(&self.pin_root);
        cli
    }

    /// Makes a netns named `<prefix>-<suffix>` and returns its name.
    pub fn add_netns(&mut self, suffix: &str) -> anyhow::Result<String> {
        let name = format!("{}-{suffix}", self.prefix);
        let out = util::probe(command("ip").args(["netns", "add", &name]))?;
        if !out.status.success() {
            bail!("ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        self.netns.push(name.clone());
        Ok(name)
    }

    pub fn del_netns(&mut self, name: &str) -> anyhow::Result<()> {
        let out = util::probe(command("ip").args(["netns", "del", name]))?;
        if !out.status.success() {
            bail!("ip netns del {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        self.netns.retain(|ns| ns != name);
        Ok(())
    }

    /// A command run inside `netns`, pinned to `cpu` when we pin.
    pub fn exec(&self, netns: &str, cpu: Option<usize>) -> Command {
        let mut cmd = command("ip");
        cmd.args(["netns", "exec", netns]);
        if let Some(cpu) = cpu {
            cmd.args(["taskset", "-c", &cpu.to_string()]);
        }
        cmd
    }

    pub fn client_cpu(&self) -> Option<usize> {
        self.cpus.map(|(client, _)| client)
    }

    pub fn server_cpu(&self) -> Option<usize> {
        self.cpus.map(|(_, server)| server)
    }

    /// Starts a server that lives until cleanup (`ip netns exec` and
    /// `taskset` exec it: its pid is the server's).
    pub fn spawn_server(&mut self, mut cmd: Command) -> anyhow::Result<()> {
        println!("+ {} &", util::show(&cmd));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", util::show(&cmd)))?;
        self.servers.push(child);
        Ok(())
    }

    /// The `CNI_*` variables kubelet would set for a verb of `plugin` on
    /// the bench pod `pod` in `netns`: a container id of its own per plugin
    /// and pod.
    pub fn cni_env(&self, plugin: &Path, verb: &str, netns: &str, pod: &str) -> Vec<(&'static str, String)> {
        let id = container_id(&format!("{}-{}-{pod}", self.prefix, plugin.display()));
        verb_env(verb, &id, &format!("/run/netns/{netns}"), &pod_args("bench", pod, Some(&id)))
    }

    /// Runs one CNI verb the way libcni does (the plugin's entry on stdin,
    /// the `CNI_*` variables) and returns its wall time and stdout.
    pub fn cni(
        &self,
        plugin: &Path,
        verb: &str,
        netns: &str,
        pod: &str,
        conf: &Value,
    ) -> anyhow::Result<(Duration, String)> {
        let env = self.cni_env(plugin, verb, netns, pod);
        let reply = runtime::invoke(Command::new(plugin), &env, &serde_json::to_vec(conf)?)
            .with_context(|| format!("cannot run {}", plugin.display()))?;
        let reply = reply.checked().with_context(|| format!("CNI {verb} by {} for {pod}", plugin.display()))?;
        Ok((reply.took, reply.stdout))
    }

    /// Removes what is still there and says what it removed.
    pub fn cleanup(&mut self) {
        for mut server in self.servers.drain(..) {
            if matches!(server.try_wait(), Ok(None)) {
                println!("  stopping server pid {}", server.id());
                let _ = server.kill();
            }
            let _ = server.wait();
        }
        if self.pin_root.exists() {
            println!("  ratchet unload --force ({})", self.pin_root.display());
            let _ = util::probe(self.cli().args(["unload", "--force"]));
        }
        if !self.netns.is_empty() {
            // Their host-side veth ends go once the netns is torn down, which
            // the kernel does later: wait for them, so nothing is left.
            let ids = self.netns_ids();
            println!("  ip netns del: {} namespace(s) of {}", self.netns.len(), self.prefix);
            for netns in std::mem::take(&mut self.netns) {
                let _ = util::probe(command("ip").args(["netns", "del", &netns]));
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while !host_veths_of(&ids).is_empty() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
        }
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            println!("  ip link del {}", self.bridge);
            let _ = util::probe(command("ip").args(["link", "del", &self.bridge]));
        }
        for dir in self.pin_dirs().iter().chain([&self.temp]) {
            if dir.exists() {
                println!("  rm -r {}", dir.display());
                let _ = fs::remove_dir_all(dir);
            }
        }
        if let Some(before) = self.ip_forward.take()
            && fs::read_to_string(IP_FORWARD).is_ok_and(|now| now != before)
        {
            println!("  net.ipv4.ip_forward back to {}", before.trim());
            let _ = fs::write(IP_FORWARD, before);
        }
    }

    /// Fails when anything of ours is still there after cleanup.
    pub fn verify_clean(&self) -> anyhow::Result<()> {
        let netns = util::stdout_of(command("ip").args(["netns", "list"]))?;
        let links = util::stdout_of(command("ip").args(["-br", "link"]))?;
        let mut left: Vec<String> = netns
            .lines()
            .chain(links.lines())
            .filter(|line| line.contains(&self.prefix) || line.split_whitespace().next() == Some(&self.bridge))
            .map(String::from)
            .collect();
        for dir in self.pin_dirs().iter().chain([&self.temp]) {
            if dir.exists() {
                left.push(dir.display().to_string());
            }
        }
        if !left.is_empty() {
            bail!("the bench left these behind: {}", left.join("; "));
        }
        Ok(())
    }

    /// Every bpffs entry named `<prefix>` or `<prefix>-…`: the lab's pin
    /// root, the pin roots of nodes a measurement makes beside it, and the
    /// `-loading-<pid>` staging directory of a load that was killed.
    fn pin_dirs(&self) -> Vec<PathBuf> {
        let bpffs = self.pin_root.parent().unwrap_or(&self.pin_root);
        let ours =
            |name: &str| name.strip_prefix(&self.prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('-'));
        fs::read_dir(bpffs)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| ours(&entry.file_name().to_string_lossy()))
            .map(|entry| entry.path())
            .collect()
    }

    fn netns_ids(&self) -> Vec<u64> {
        let text = util::stdout_of(command("ip").args(["-j", "netns", "list"])).unwrap_or_default();
        let list: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
        list.iter()
            .filter(|ns| ns["name"].as_str().is_some_and(|name| self.netns.iter().any(|ours| ours == name)))
            .filter_map(|ns| ns["id"].as_u64())
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Host veths whose peer sits in one of the netns `ids`.
fn host_veths_of(ids: &[u64]) -> Vec<String> {
    let text = util::stdout_of(command("ip").args(["-j", "link", "show", "type", "veth"])).unwrap_or_default();
    let links: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
    links
        .iter()
        .filter(|link| link["link_netnsid"].as_u64().is_some_and(|id| ids.contains(&id)))
        .filter_map(|link| link["ifname"].as_str().map(String::from))
        .collect()
}
