//! CNI ADD and DEL latency: the whole plugin process, as a runtime runs it,
//! for ratchet and the reference bridge and ptp plugins (with host-local),
//! interleaved so that all three see the same machine at the same moment.

use std::time::Duration;

use serde_json::Value;

use super::{Lab, Plan, Plugin, link_pods, plugin_conf};

#[derive(Debug)]
pub struct Control {
    /// Per plugin, in `Plugin::ALL` order: ADD and DEL wall times in ms.
    pub runs: Vec<Runs>,
}

#[derive(Debug)]
pub struct Runs {
    pub plugin: Plugin,
    pub add_ms: Vec<f64>,
    pub del_ms: Vec<f64>,
}

/// One pod of one plugin: its netns, name and ADD result.
struct Pod {
    plugin: Plugin,
    netns: String,
    name: String,
    result: Value,
}

pub fn measure(lab: &mut Lab, plan: &Plan) -> anyhow::Result<Control> {
    let confs: Vec<Value> = Plugin::ALL.iter().map(|&plugin| plugin_conf(lab, plugin)).collect();
    let mut runs: Vec<Runs> =
        Plugin::ALL.iter().map(|&plugin| Runs { plugin, add_ms: Vec::new(), del_ms: Vec::new() }).collect();

    // Warm-up, not counted: ratchet's first ADD loads and pins its program,
    // bridge's makes its bridge; the page cache gets the binaries.
    for (p, plugin) in Plugin::ALL.into_iter().enumerate() {
        for name in link_pods(0) {
            let pod = add(lab, plugin, &confs[p], &format!("w-{}-{name}", plugin.name()), &name)?.1;
            del(lab, &confs[p], pod)?;
        }
    }

    // Pod k of ratchet is one end of link k/2+1; bridge and ptp get a pod
    // each in the same round, in an order that rotates.
    let pods: Vec<String> = (1..=plan.links).flat_map(link_pods).collect();
    let mut added = Vec::new();
    for (k, name) in pods.iter().enumerate() {
        for p in rotation(k) {
            let plugin = Plugin::ALL[p];
            let (took, pod) = add(lab, plugin, &confs[p], &format!("{}-{k}", plugin.name()), name)?;
            runs[p].add_ms.push(ms(took));
            added.push((p, pod));
        }
    }
    println!("  {} ADDs per plugin done; now their DELs", pods.len());
    for (p, pod) in added {
        let took = del(lab, &confs[p], pod)?;
        runs[p].del_ms.push(ms(took));
    }
    for run in &runs {
        let (add, del) = (super::sorted(&run.add_ms), super::sorted(&run.del_ms));
        println!(
            "  {:8} ADD p50 {:6.2} ms p99 {:6.2} ms | DEL p50 {:6.2} ms p99 {:6.2} ms",
            run.plugin.name(),
            super::percentile(&add, 50.0),
            super::percentile(&add, 99.0),
            super::percentile(&del, 50.0),
            super::percentile(&del, 99.0)
        );
    }
    Ok(Control { runs })
}

/// The plugin order of round `k`: each plugin goes first, second and third
/// equally often.
fn rotation(k: usize) -> [usize; 3] {
    [k % 3, (k + 1) % 3, (k + 2) % 3]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// A fresh netns (not timed), then the timed ADD.
fn add(lab: &mut Lab, plugin: Plugin, conf: &Value, netns: &str, name: &str) -> anyhow::Result<(Duration, Pod)> {
    let netns = lab.add_netns(netns)?;
    let pod_name = if plugin == Plugin::Ratchet { name.to_owned() } else { netns.clone() };
    let (took, stdout) = lab.cni(&plugin.binary(lab), "ADD", &netns, &pod_name, conf)?;
    let result = serde_json::from_str(&stdout)
        .map_err(|error| anyhow::anyhow!("{} ADD printed no JSON result ({error}): {stdout}", plugin.name()))?;
    Ok((took, Pod { plugin, netns, name: pod_name, result }))
}

/// The timed DEL (with the ADD result as prevResult, as libcni sends it),
/// then the netns goes (not timed).
fn del(lab: &mut Lab, conf: &Value, pod: Pod) -> anyhow::Result<Duration> {
    let mut conf = conf.clone();
    conf["prevResult"] = pod.result;
    let (took, _) = lab.cni(&pod.plugin.binary(lab), "DEL", &pod.netns, &pod.name, &conf)?;
    lab.del_netns(&pod.netns)?;
    Ok(took)
}
