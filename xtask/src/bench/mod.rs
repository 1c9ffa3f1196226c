//! `cargo xtask bench`: ratchet against its baselines, each figure measured
//! in the same run as the baselines it is compared with, repeated, and
//! written as a report (Markdown, JSON, SVG plots). Targets are reported as
//! pass or fail, never asserted: only a crash or a broken measurement fails.
//!
//! - control.rs: CNI ADD and DEL latency, ratchet vs bridge and ptp.
//! - datapath.rs: TCP throughput, request/response rate and CPU per
//!   transaction over a ratchet link, a bare veth pair, bridge and ptp.
//! - crossnode.rs: two nodes (netns, etcd, agents): a ratchet link vs a
//!   kernel VXLAN device per link, and peer-appears-to-traffic latency.
//! - impair.rs: configured loss and rate against what traffic meets on the
//!   datapath link, and how soon a cut reaches the pods' carrier.
//! - scale.rs: ADD latency as one node fills with links, map memory, the
//!   agent's memory and fds.
//! - report.rs: the tables, targets and plots.
//! - lab.rs: the scratch netns, devices and pins, and their guard.

mod control;
mod crossnode;
mod datapath;
mod impair;
mod lab;
mod report;
mod scale;
mod upgrade;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context;
use serde_json::{Value, json};

use crate::{setup, util};

pub use lab::Lab;

/// How much to measure. `--quick` runs the same code with less of it.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub quick: bool,
    /// Links in the control-plane topology: two measured ADDs each, and as
    /// many for each baseline.
    pub links: usize,
    /// Datapath runs per path, interleaved across paths.
    pub reps: usize,
    /// Length of each iperf3 and sockperf run.
    pub seconds: u32,
    /// Links the scale run fills one node with, and how many of them the
    /// first and the last window (compared with each other) hold.
    pub scale_links: usize,
    pub scale_window: usize,
}

pub fn run(quick: bool, out: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("==> setup");
    setup::run()?;
    util::require_root("the benchmark (netns, eBPF, bpffs)")?;
    println!("\n==> build the plugin (release), and a build of the next layout of its maps");
    let next_bin = build_plugin(&["--features", "layout-next"], "ratchet-next")?;
    let bin = build_plugin(&[], "ratchet")?;

    let plan = if quick {
        Plan { quick, links: 4, reps: 2, seconds: 1, scale_links: 20, scale_window: 5 }
    } else {
        Plan { quick, links: 150, reps: 5, seconds: 4, scale_links: 1000, scale_window: 20 }
    };
    let machine = report::Machine::probe();
    let mut lab = Lab::new(bin)?;
    println!("\n==> bench {plan:?} in {} (pinned to CPUs: {:?})", lab.prefix, lab.cpus);
    let measured = measure(&mut lab, &plan, &next_bin);
    println!("\n==> clean up");
    lab.cleanup();
    lab.verify_clean()?;
    let Measured { control, datapath, impair, crossnode, scale, upgrade } = measured?;
    let elapsed = started.elapsed();
    let report = report::Report {
        machine,
        plan,
        control,
        datapath,
        impair,
        crossnode,
        scale,
        upgrade,
        elapsed_s: elapsed.as_secs_f64(),
        pinned: lab.cpus,
    };
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    report.write(out)?;
    println!("\nbench done in {:.1} s; report in {}", elapsed.as_secs_f64(), out.display());
    Ok(())
}

struct Measured {
    control: control::Control,
    datapath: datapath::Datapath,
    impair: impair::Impair,
    crossnode: crossnode::CrossNode,
    scale: scale::Scale,
    upgrade: upgrade::Upgrade,
}

/// Builds the plugin (release) with `flags` and copies it to
/// `target/bench-bin/<name>`, out of the way of the next build.
fn build_plugin(flags: &[&str], name: &str) -> anyhow::Result<PathBuf> {
    util::run(util::cargo().args(["build", "--release", "--quiet", "-p", "ratchet-plugin"]).args(flags))?;
    let built = util::target_dir().join("release").join("ratchet");
    let bin = util::target_dir().join("bench-bin").join(name);
    fs::create_dir_all(bin.parent().context("a dir")?)?;
    fs::copy(&built, &bin).with_context(|| format!("copying {} to {}", built.display(), bin.display()))?;
    Ok(bin.canonicalize()?)
}

fn measure(lab: &mut Lab, plan: &Plan, next_bin: &Path) -> anyhow::Result<Measured> {
    fs::create_dir_all(&lab.state_dir).with_context(|| format!("creating {}", lab.state_dir.display()))?;
    apply_topology(lab, plan)?;
    println!("\n==> control plane: CNI ADD and DEL, ratchet vs bridge vs ptp");
    let control = control::measure(lab, plan)?;
    println!("\n==> datapath: TCP throughput and request/response over each path");
    let datapath = datapath::measure(lab, plan)?;
    println!("\n==> impairments on the datapath link: loss and rate against traffic, link down/up to the carrier");
    let impair = impair::measure(lab, plan)?;
    println!("\n==> cross-node: a ratchet link vs a kernel VXLAN device per link; peer-appears-to-traffic");
    let crossnode = crossnode::measure(lab, plan)?;
    // Last: its thousands of netns and veths would weigh on the others.
    println!("\n==> scale: ADD latency as one node fills with {} links", plan.scale_links);
    let scale = scale::measure(lab, plan)?;
    println!("\n==> upgrade: a ping flood across a link while new builds take its node over");
    let upgrade = upgrade::measure(lab, next_bin)?;
    Ok(Measured { control, datapath, impair, crossnode, scale, upgrade })
}

/// The ratchet pod names of control-plane link `i` (0 is the warm-up).
pub fn link_pods(i: usize) -> [String; 2] {
    [format!("l{i}a"), format!("l{i}b")]
}

/// The datapath link's pods and addresses.
pub const DP_PODS: [&str; 2] = ["dpa", "dpb"];
pub const DP_IPS: [&str; 2] = ["10.205.0.1/24", "10.205.0.2/24"];
/// The pod interface of every bench link.
pub const POD_IFNAME: &str = "r0";

/// One topology for the whole run: the control-plane links (one /24 each)
/// and the datapath link.
fn apply_topology(lab: &Lab, plan: &Plan) -> anyhow::Result<()> {
    let end = |pod: &str, ip: String| json!({ "pod": format!("bench/{pod}"), "ifname": POD_IFNAME, "ips": [ip] });
    let mut links: Vec<Value> = (0..=plan.links)
        .map(|i| {
            let [a, b] = link_pods(i);
            let net = format!("10.{}.{}", 201 + i / 250, i % 250);
            json!({ "name": format!("{}-{i}", lab.prefix), "a": end(&a, format!("{net}.1/24")), "b": end(&b, format!("{net}.2/24")), "mtu": 1500 })
        })
        .collect();
    links.push(json!({
        "name": format!("{}-dp", lab.prefix),
        "a": end(DP_PODS[0], DP_IPS[0].into()),
        "b": end(DP_PODS[1], DP_IPS[1].into()),
        "mtu": 1500,
    }));
    let path = lab.temp.join("topology.json");
    fs::write(&path, serde_json::to_string_pretty(&json!({ "links": links }))?)
        .with_context(|| format!("writing {}", path.display()))?;
    util::run(lab.cli().args(["topology", "apply"]).arg(&path))
}

/// The CNI configs each plugin gets on stdin (the conflist entry with the
/// list's name and version injected, as libcni does).
pub fn plugin_conf(lab: &Lab, plugin: Plugin) -> Value {
    let ipam = |subnet: &str, dir: &str| json!({ "type": "host-local", "ranges": [[{ "subnet": subnet }]], "dataDir": lab.temp.join(dir) });
    match plugin {
        Plugin::Ratchet => json!({
            "cniVersion": "1.0.0", "name": "rbench-ratchet", "type": "ratchet",
            "state_dir": lab.state_dir, "pin_root": lab.pin_root,
        }),
        Plugin::Bridge => json!({
            "cniVersion": "1.0.0", "name": "rbench-bridge", "type": "bridge",
            "bridge": lab.bridge, "isGateway": true, "ipMasq": false,
            "ipam": ipam("10.202.0.0/16", "ipam-bridge"),
        }),
        Plugin::Ptp => json!({
            "cniVersion": "1.0.0", "name": "rbench-ptp", "type": "ptp", "ipMasq": false,
            "ipam": ipam("10.203.0.0/16", "ipam-ptp"),
        }),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    Ratchet,
    Bridge,
    Ptp,
}

impl Plugin {
    pub const ALL: [Plugin; 3] = [Plugin::Ratchet, Plugin::Bridge, Plugin::Ptp];

    pub fn name(self) -> &'static str {
        match self {
            Plugin::Ratchet => "ratchet",
            Plugin::Bridge => "bridge",
            Plugin::Ptp => "ptp",
        }
    }

    pub fn binary(self, lab: &Lab) -> PathBuf {
        match self {
            Plugin::Ratchet => lab.bin.clone(),
            other => Path::new("/usr/lib/cni").join(other.name()),
        }
    }
}

/// `p` (0..=100) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// The first address of a CNI result, without its prefix length.
pub fn result_ip(result: &str) -> anyhow::Result<String> {
    let result: Value = serde_json::from_str(result).context("the ADD result is not JSON")?;
    let address = result["ips"][0]["address"].as_str().context("the ADD result has no ips[0].address")?;
    Ok(address.split('/').next().unwrap_or(address).to_owned())
}
