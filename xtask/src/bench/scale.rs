//! Scale: one node filled with links, one ADD at a time, to see whether an
//! ADD costs more as the node fills (store lookups, netlink, map updates all
//! grow with what is there); what the pinned maps cost in memory; and the
//! agent's memory and fds with the node full.
//!
//! The scale links have a store and pin root of their own (not the lab's),
//! so the node starts empty and the figures do not depend on the other
//! measurements; a warm-up link, not counted, loads the programs first. The
//! agent runs for a while on the empty node and again on the full one, not
//! during the ADDs: with the embedded store it reconciles every 20 ms under
//! the node lock, which would put its own load into the latencies compared.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Lab, Plan};
use crate::util::{self, command};

/// The maps the plugin pins, by pin name.
const MAPS: [&str; 4] = ["peers", "vnis", "stats", "switches"];

#[derive(Debug)]
pub struct Scale {
    /// ADD wall time of every pod, in order: link k's ends are 2k and 2k+1.
    pub add_ms: Vec<f64>,
    /// Links per window for the first-vs-last comparison.
    pub window: usize,
    pub maps: MapMemory,
    pub agent: AgentFootprint,
}

#[derive(Debug)]
pub struct MapMemory {
    /// bytes_memlock of every pinned map, summed (bpftool).
    pub bytes: u64,
    /// Link ends the maps hold at most (their max_entries).
    pub capacity_ends: u64,
}

#[derive(Debug)]
pub struct AgentFootprint {
    pub empty: AgentSample,
    pub full: AgentSample,
}

/// The agent after two seconds of rounds.
#[derive(Debug)]
pub struct AgentSample {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM, KiB: the most it held at any moment.
    pub peak_rss_kib: u64,
    pub fds: usize,
}

impl Scale {
    pub fn links(&self) -> usize {
        self.add_ms.len() / 2
    }

    /// The ADDs of links `first..first + window` (0-based).
    pub fn window_at(&self, first: usize) -> &[f64] {
        &self.add_ms[2 * first..2 * (first + self.window)]
    }

    pub fn first_window(&self) -> &[f64] {
        self.window_at(0)
    }

    pub fn last_window(&self) -> &[f64] {
        self.window_at(self.links() - self.window)
    }
}

impl MapMemory {
    /// The maps are preallocated: this is what a link costs at capacity,
    /// whether or not it exists.
    pub fn bytes_per_link(&self) -> f64 {
        self.bytes as f64 / (self.capacity_ends as f64 / 2.0)
    }
}

/// The scale run's own store, pins and pods.
struct Node {
    state_dir: PathBuf,
    pin_root: PathBuf,
    conf: Value,
}

pub fn measure(lab: &mut Lab, plan: &Plan) -> anyhow::Result<Scale> {
    let node = Node::new(lab);
    let mut netns = Vec::new();
    let measured = fill_and_measure(lab, plan, &node, &mut netns);
    let emptied = node.empty(lab, &netns);
    let scale = measured?;
    emptied?;
    Ok(scale)
}

/// ADDs every pod of `plan.scale_links` links, one at a time, then reads
/// the maps and the agent. `netns` gets each pod's netns as it is made.
fn fill_and_measure(lab: &mut Lab, plan: &Plan, node: &Node, netns: &mut Vec<String>) -> anyhow::Result<Scale> {
    fs::create_dir_all(&node.state_dir).with_context(|| format!("creating {}", node.state_dir.display()))?;
    node.apply_topology(lab, plan.scale_links)?;
    for pod in pods(0) {
        add(lab, node, netns, &pod)?;
    }
    let empty = node.run_agent(lab)?;
    let mut add_ms = Vec::with_capacity(2 * plan.scale_links);
    for link in 1..=plan.scale_links {
        for pod in pods(link) {
            add_ms.push(add(lab, node, netns, &pod)?);
        }
        if link % 100 == 0 {
            println!("  {link} links");
        }
    }
    let maps = node.map_memory()?;
    let agent = AgentFootprint { empty, full: node.run_agent(lab)? };
    println!(
        "  maps {} KiB for {} ends | agent RSS {} -> {} KiB, fds {} -> {}",
        maps.bytes / 1024,
        maps.capacity_ends,
        agent.empty.rss_kib,
        agent.full.rss_kib,
        agent.empty.fds,
        agent.full.fds
    );
    Ok(Scale { add_ms, window: plan.scale_window, maps, agent })
}

/// A fresh netns for `pod` (not timed), then its ADD: wall time in ms.
fn add(lab: &mut Lab, node: &Node, netns: &mut Vec<String>, pod: &str) -> anyhow::Result<f64> {
    netns.push(lab.add_netns(pod)?);
    let (took, _) = lab.cni(&lab.bin, "ADD", netns.last().expect("just pushed"), pod, &node.conf)?;
    Ok(took.as_secs_f64() * 1e3)
}

/// Link `i`'s two pods (also their netns suffixes); link 0 is the warm-up.
fn pods(link: usize) -> [String; 2] {
    [format!("s{link}a"), format!("s{link}b")]
}

impl Node {
    fn new(lab: &Lab) -> Node {
        let state_dir = lab.temp.join("scale-state");
        let pin_root = lab.pin_root.join("scale");
        let conf = json!({
            "cniVersion": "1.0.0", "name": "rbench-scale", "type": "ratchet",
            "state_dir": state_dir, "pin_root": pin_root,
            // Only what the agent reads; no verb uses it.
            "metrics_address": "127.0.0.1:0",
        });
        Node { state_dir, pin_root, conf }
    }

    fn cli(&self, lab: &Lab) -> std::process::Command {
        let mut cli = command(&lab.bin);
        cli.arg("--state-dir").arg(&self.state_dir).arg("--pin-root").arg(&self.pin_root);
        cli
    }

    /// The warm-up link and `links` more, 10.230.0.0/24 onwards, one /24 each.
    fn apply_topology(&self, lab: &Lab, links: usize) -> anyhow::Result<()> {
        let end = |pod: &str, ip: String| json!({ "pod": format!("bench/{pod}"), "ifname": "s0", "ips": [ip] });
        let links: Vec<Value> = (0..=links)
            .map(|i| {
                let [a, b] = pods(i);
                let net = format!("10.{}.{}", 230 + i / 250, i % 250);
                json!({ "name": format!("{}-s{i}", lab.prefix), "a": end(&a, format!("{net}.1/24")), "b": end(&b, format!("{net}.2/24")), "mtu": 1500 })
            })
            .collect();
        let path = lab.temp.join("scale-topology.json");
        fs::write(&path, serde_json::to_string(&json!({ "links": links }))?)
            .with_context(|| format!("writing {}", path.display()))?;
        util::run(self.cli(lab).args(["topology", "apply"]).arg(&path))
    }

    fn map_memory(&self) -> anyhow::Result<MapMemory> {
        let (mut bytes, mut capacity_ends) = (0, 0);
        for map in MAPS {
            let pin = self.pin_root.join(map);
            let shown = util::stdout_of(command("bpftool").args(["-j", "map", "show", "pinned"]).arg(&pin))?;
            let shown: Value = serde_json::from_str(&shown).with_context(|| format!("bpftool on {}", pin.display()))?;
            bytes += shown["bytes_memlock"].as_u64().context("bpftool printed no bytes_memlock")?;
            if map == "peers" {
                capacity_ends = shown["max_entries"].as_u64().context("bpftool printed no max_entries")?;
            }
        }
        Ok(MapMemory { bytes, capacity_ends })
    }

    /// Runs the agent for two seconds of rounds, reads its footprint, stops it.
    fn run_agent(&self, lab: &Lab) -> anyhow::Result<AgentSample> {
        let config = lab.temp.join("scale-agent.json");
        fs::write(&config, serde_json::to_string(&self.conf)?)?;
        let mut agent = Agent(
            self.cli(lab)
                .arg("agent")
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting ratchet agent")?,
        );
        thread::sleep(Duration::from_secs(2));
        let sample =
            AgentSample { rss_kib: agent.status("VmRSS")?, peak_rss_kib: agent.status("VmHWM")?, fds: agent.fds()? };
        agent.stop()?;
        Ok(sample)
    }

    /// The host veths the store knows, from `ratchet links --json`.
    fn host_veths(&self, lab: &Lab) -> anyhow::Result<Vec<String>> {
        let links: Value = serde_json::from_str(&util::stdout_of(self.cli(lab).args(["links", "--json"]))?)?;
        let ends =
            links.as_array().into_iter().flatten().flat_map(|link| link["ends"].as_array().into_iter().flatten());
        Ok(ends.filter_map(|end| end["host_ifname"].as_str().map(String::from)).collect())
    }

    /// Empties the node the quick way, without DELs: the netns go (their
    /// veths with them, torn down by the kernel in batches), then the pins;
    /// waits until none of the veths is left.
    fn empty(&self, lab: &mut Lab, netns: &[String]) -> anyhow::Result<()> {
        let veths = if self.state_dir.exists() { self.host_veths(lab)? } else { Vec::new() };
        for netns in netns {
            lab.del_netns(netns)?;
        }
        if self.pin_root.exists() {
            util::run(self.cli(lab).args(["unload", "--force"]))?;
            let _ = fs::remove_dir_all(&self.pin_root);
        }
        let left = || veths.iter().filter(|veth| Path::new("/sys/class/net").join(veth).exists()).count();
        let deadline = Instant::now() + Duration::from_secs(120);
        while left() > 0 {
            if Instant::now() > deadline {
                bail!("{} scale veths still there after 120 s", left());
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

/// The agent process, killed if a step fails.
struct Agent(Child);

impl Agent {
    /// A `kB` field of /proc/<pid>/status.
    fn status(&self, field: &str) -> anyhow::Result<u64> {
        let path = Path::new("/proc").join(self.0.id().to_string()).join("status");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {} (did the agent die?)", path.display()))?;
        let line = text.lines().find_map(|line| line.strip_prefix(&format!("{field}:")));
        let kib = line.and_then(|rest| rest.split_whitespace().next()).and_then(|n| n.parse().ok());
        kib.with_context(|| format!("no {field} in {}", path.display()))
    }

    fn fds(&self) -> anyhow::Result<usize> {
        let dir = Path::new("/proc").join(self.0.id().to_string()).join("fd");
        Ok(fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?.count())
    }

    /// SIGTERM (the agent's clean stop), then reap it.
    fn stop(&mut self) -> anyhow::Result<()> {
        util::run(command("kill").args(["-TERM", &self.0.id().to_string()]))?;
        let status = self.0.wait()?;
        if !status.success() {
            bail!("ratchet agent exited with {status}");
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
