//! Upgrades under traffic: a node of its own (state dir and pin root beside
//! the lab's) with one link carrying a ping flood, taken over first by a
//! build of the next layout of the maps (new maps filled from the store,
//! programs swapped in place), then by another build of that layout
//! (programs swapped over the same maps). Each take-over is the new build's
//! first verb on the node, a CHECK; the figures are the frames the flood
//! lost across it and how long that verb took.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, bail};
use ratchet_harness::runtime;
use serde_json::{Value, json};

use super::Lab;
use crate::util;

/// Pings in each flood: enough to span a take-over on a slow machine.
const PINGS: u64 = 200_000;

#[derive(Debug)]
pub struct Upgrade {
    /// Across the take-over by the next layout's build.
    pub next_layout: TakeOver,
    /// Across the take-over by another build of the same layout.
    pub same_layout: TakeOver,
}

#[derive(Debug)]
pub struct TakeOver {
    pub pings: u64,
    pub lost: u64,
    /// The new build's first verb, which did the take-over, in ms.
    pub verb_ms: f64,
}

/// A node of its own for the upgrade: its dirs and its pods' netns.
struct Node {
    conf: Value,
    pods: [String; 2],
}

pub fn measure(lab: &mut Lab, next_bin: &Path) -> anyhow::Result<Upgrade> {
    let state_dir = lab.temp.join("upgrade-state");
    let pin_root = PathBuf::from(format!("{}-upgrade", lab.pin_root.display()));
    let conf = json!({"cniVersion": "1.0.0", "name": "rbench-upgrade", "type": "ratchet",
                      "state_dir": state_dir, "pin_root": pin_root});
    let topology = lab.temp.join("upgrade-topology.json");
    let end = |pod: &str, ip: &str| json!({"pod": format!("bench/{pod}"), "ifname": "u0", "ips": [ip]});
    let link = json!({"name": format!("{}-up", lab.prefix), "a": end("upa", "10.206.0.1/24"), "b": end("upb", "10.206.0.2/24")});
    std::fs::write(&topology, json!({"links": [link]}).to_string())?;
    let mut cli = util::command(&lab.bin);
    cli.arg("--state-dir").arg(&state_dir).arg("--pin-root").arg(&pin_root);
    util::run(cli.args(["topology", "apply"]).arg(&topology))?;
    let pods = [lab.add_netns("upa")?, lab.add_netns("upb")?];
    let node = Node { conf, pods };
    for (netns, pod) in node.pods.iter().zip(["upa", "upb"]) {
        lab.cni(&lab.bin, "ADD", netns, pod, &node.conf)?;
    }
    let next_layout = take_over(lab, &node, next_bin)?;
    // Another build of the same layout left these pins: its marker says so.
    let marker = std::fs::read_dir(&pin_root)?
        .flatten()
        .find(|entry| entry.file_name().to_string_lossy().starts_with("build-"))
        .context("the pins have no build marker")?;
    std::fs::rename(marker.path(), pin_root.join("build-0000000000000000"))?;
    let same_layout = take_over(lab, &node, next_bin)?;
    for (netns, pod) in node.pods.iter().zip(["upa", "upb"]) {
        cni_as(lab, next_bin, "DEL", netns, pod, &node.conf)?;
    }
    println!(
        "  next layout: {} of {} pings lost, take-over verb {:.1} ms; same layout: {} lost, {:.1} ms",
        next_layout.lost, next_layout.pings, next_layout.verb_ms, same_layout.lost, same_layout.verb_ms
    );
    Ok(Upgrade { next_layout, same_layout })
}

/// Floods pings across the link and lets `bin`'s CHECK take the node over
/// meanwhile.
fn take_over(lab: &Lab, node: &Node, bin: &Path) -> anyhow::Result<TakeOver> {
    let flood = start_flood(lab, &node.pods[0])?;
    thread::sleep(Duration::from_millis(300));
    let took = cni_as(lab, bin, "CHECK", &node.pods[0], "upa", &node.conf)?;
    let (pings, received) = flood_result(flood)?;
    Ok(TakeOver { pings, lost: pings - received, verb_ms: took.as_secs_f64() * 1000.0 })
}

/// A verb of `bin` for a pod the lab's build ADDed: the same container id.
fn cni_as(lab: &Lab, bin: &Path, verb: &str, netns: &str, pod: &str, conf: &Value) -> anyhow::Result<Duration> {
    let env = lab.cni_env(&lab.bin, verb, netns, pod);
    let reply = runtime::invoke(Command::new(bin), &env, &serde_json::to_vec(conf)?)
        .with_context(|| format!("cannot run {}", bin.display()))?;
    Ok(reply.checked().with_context(|| format!("CNI {verb} by {} for {pod}", bin.display()))?.took)
}

fn start_flood(lab: &Lab, netns: &str) -> anyhow::Result<Child> {
    let mut ping = lab.exec(netns, None);
    ping.args(["ping", "-n", "-q", "-f", "-c", &PINGS.to_string(), "-W", "1", "10.206.0.2"]);
    ping.stdout(Stdio::piped()).spawn().context("starting the ping flood")
}

/// (sent, received) from ping's summary.
fn flood_result(ping: Child) -> anyhow::Result<(u64, u64)> {
    let output = ping.wait_with_output().context("waiting for the ping flood")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let Some(line) = text.lines().find(|line| line.contains("packets transmitted")) else {
        bail!("ping printed no summary: {text}");
    };
    let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    match numbers[..] {
        [sent, received, ..] => Ok((sent, received)),
        _ => bail!("cannot read {line:?}"),
    }
}
