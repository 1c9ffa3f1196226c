//! The report: report.md (figures, targets, method, machine), report.json
//! (every sample and summary) and SVG plots drawn with plotters.

use std::{fs, path::Path};

use anyhow::Context;
use plotters::prelude::*;
use serde_json::{Value, json};

use super::{
    Plan, Plugin,
    control::{Control, Runs},
    crossnode::CrossNode,
    datapath::{self, Datapath, PathRuns},
    impair::{self, Impair},
    percentile,
    scale::Scale,
    sorted,
    upgrade::Upgrade,
};

pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':').map(|(_, model)| model.trim().to_owned()))
            .unwrap_or_else(|| "unknown".into());
        let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        Machine { kernel, cpus, cpu_model }
    }
}

pub struct Report {
    pub machine: Machine,
    pub plan: Plan,
    pub control: Control,
    pub datapath: Datapath,
    pub impair: Impair,
    pub crossnode: CrossNode,
    pub scale: Scale,
    pub upgrade: Upgrade,
    pub elapsed_s: f64,
    pub pinned: Option<(usize, usize)>,
}

/// One row of the second table: ratchet against one baseline of its own.
struct Figure {
    figure: String,
    value: f64,
    /// The baseline's name and value, when there is one.
    baseline: Option<(String, f64)>,
    /// (target text, pass), compared on value / baseline (or on value alone).
    target: Option<(&'static str, bool)>,
}

/// One row of the main table.
struct Row {
    figure: String,
    /// ratchet, veth, bridge, ptp (None: not measured for that column).
    values: [Option<f64>; 4],
    /// (ratio, its name, target text, outcome)
    target: Option<(f64, &'static str, &'static str, Outcome)>,
}

/// How a figure fares against its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Pass,
    Fail,
    /// The runs of ratchet and of the baseline overlap (min to max): the
    /// medians cannot tell them apart on this machine.
    WithinNoise,
}

impl Outcome {
    fn of(pass: bool) -> Self {
        if pass { Outcome::Pass } else { Outcome::Fail }
    }

    /// `pass` (judged on medians) only where the runs of the two do not
    /// overlap.
    fn of_runs(pass: bool, ours: &[f64], theirs: &[f64]) -> Self {
        let range = |runs: &[f64]| {
            let runs = sorted(runs);
            (runs.first().copied().unwrap_or(f64::NAN), runs.last().copied().unwrap_or(f64::NAN))
        };
        let ((our_min, our_max), (their_min, their_max)) = (range(ours), range(theirs));
        match our_min <= their_max && their_min <= our_max {
            true => Outcome::WithinNoise,
            false => Outcome::of(pass),
        }
    }

    fn text(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::WithinNoise => "within noise",
        }
    }
}

impl Report {
    fn runs(&self, plugin: Plugin) -> &Runs {
        self.control.runs.iter().find(|run| run.plugin == plugin).expect("every plugin was measured")
    }

    fn path(&self, name: &str) -> &PathRuns {
        self.datapath.paths.iter().find(|path| path.name == name).expect("every path was measured")
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let control = |select: fn(&Runs) -> &Vec<f64>, p: f64| {
            let value = |plugin| percentile(&sorted(select(self.runs(plugin))), p);
            [Some(value(Plugin::Ratchet)), None, Some(value(Plugin::Bridge)), Some(value(Plugin::Ptp))]
        };
        for (verb, select, limit, text) in [
            ("ADD", (|r: &Runs| &r.add_ms) as fn(&Runs) -> &Vec<f64>, 0.5, "<= 0.5x bridge"),
            ("DEL", |r: &Runs| &r.del_ms, 0.3, "<= 0.3x bridge"),
        ] {
            for p in [50.0, 95.0, 99.0] {
                let values = control(select, p);
                let target = (p == 50.0).then(|| {
                    let ratio = values[0].unwrap_or(f64::NAN) / values[2].unwrap_or(f64::NAN);
                    (ratio, "ratchet/bridge", text, Outcome::of(ratio <= limit))
                });
                rows.push(Row { figure: format!("CNI {verb} p{p:.0} (ms)"), values, target });
            }
        }
        let median = |select: fn(&PathRuns) -> &Vec<f64>| {
            ["ratchet", "veth", "bridge", "ptp"].map(|name| Some(percentile(&sorted(select(self.path(name))), 50.0)))
        };
        // Judged on the medians, where the runs do not overlap.
        let judged = |select: fn(&PathRuns) -> &Vec<f64>, baseline: &str, pass: bool| {
            Outcome::of_runs(pass, select(self.path("ratchet")), select(self.path(baseline)))
        };
        let values = median(|p| &p.gbps);
        let ratio = values[0].unwrap_or(f64::NAN) / values[1].unwrap_or(f64::NAN);
        rows.push(Row {
            figure: "TCP throughput, median (Gbit/s)".into(),
            values,
            target: Some((ratio, "ratchet/veth", ">= 1.0x veth", judged(|p| &p.gbps, "veth", ratio >= 1.0))),
        });
        let values = median(|p| &p.rr_per_s);
        let ratio = values[0].unwrap_or(f64::NAN) / values[2].unwrap_or(f64::NAN);
        rows.push(Row {
            figure: format!("cross-CPU TCP request/response, {} B, median (per s)", datapath::MESSAGE_BYTES),
            values,
            target: Some((ratio, "ratchet/bridge", ">= 1.2x bridge", judged(|p| &p.rr_per_s, "bridge", ratio >= 1.2))),
        });
        rows.push(Row {
            figure: "cross-CPU RR latency p50, median (µs, half RTT)".into(),
            values: median(|p| &p.lat_p50_us),
            target: None,
        });
        rows.push(Row {
            figure: "cross-CPU RR latency p99, median (µs, half RTT)".into(),
            values: median(|p| &p.lat_p99_us),
            target: None,
        });
        let values = median(|p| &p.cpu_us_per_tx);
        let ratio = values[0].unwrap_or(f64::NAN) / values[1].unwrap_or(f64::NAN);
        rows.push(Row {
            figure: "cross-CPU CPU per transaction, whole machine, median (µs)".into(),
            values,
            target: Some((ratio, "ratchet/veth", "<= 1.03x veth", judged(|p| &p.cpu_us_per_tx, "veth", ratio <= 1.03))),
        });
        if self.path("ratchet").one_cpu_rr_per_s.is_empty() {
            return rows;
        }
        let values = median(|p| &p.one_cpu_rr_per_s);
        let ratio = values[0].unwrap_or(f64::NAN) / values[1].unwrap_or(f64::NAN);
        rows.push(Row {
            figure: format!("one-CPU TCP request/response, {} B, median (per s)", datapath::MESSAGE_BYTES),
            values,
            target: Some((
                ratio,
                "ratchet/veth",
                ">= 0.98x veth",
                judged(|p| &p.one_cpu_rr_per_s, "veth", ratio >= 0.98),
            )),
        });
        rows.push(Row {
            figure: "one-CPU RR latency p50, median (µs, half RTT)".into(),
            values: median(|p| &p.one_cpu_lat_p50_us),
            target: None,
        });
        let values = median(|p| &p.one_cpu_cpu_us_per_tx);
        let ratio = values[0].unwrap_or(f64::NAN) / values[1].unwrap_or(f64::NAN);
        let pass = ratio <= 1.02;
        rows.push(Row {
            figure: "one-CPU CPU per transaction, that CPU, median (µs)".into(),
            values,
            target: Some((ratio, "ratchet/veth", "<= 1.02x veth", judged(|p| &p.one_cpu_cpu_us_per_tx, "veth", pass))),
        });
        rows
    }

    /// Cross-node figures (ratchet against a kernel VXLAN device per link,
    /// and how soon a peer's traffic flows) and scale figures (the last
    /// window of links against the first, what the maps and the agent hold).
    fn figures(&self) -> Vec<Figure> {
        let mut figures = self.impair_figures();
        figures.extend(self.crossnode_figures());
        figures.extend(self.scale_figures());
        figures.extend(self.upgrade_figures());
        figures
    }

    /// What traffic met against what was configured, and how soon a cut
    /// reached the pod.
    fn impair_figures(&self) -> Vec<Figure> {
        let x = &self.impair;
        let median = |samples: &[f64]| percentile(&sorted(samples), 50.0);
        let configured = |value: f64| Some(("configured".to_owned(), value));
        let mut figures = Vec::new();
        for run in &x.loss {
            figures.push(Figure {
                figure: format!("loss {}%: pings unanswered (% of {})", run.percent, run.sent),
                value: run.measured_percent(),
                baseline: configured(run.percent),
                target: None,
            });
            figures.push(Figure {
                figure: format!("loss {}%: the link's lost counter (% of the pings)", run.percent),
                value: run.counted_percent(),
                baseline: configured(run.percent),
                target: None,
            });
        }
        figures.push(Figure {
            figure: "rate: iperf3 TCP under the configured rate, median (Mbit/s)".into(),
            value: median(&x.rate_mbit),
            baseline: configured(impair::RATE_MBIT),
            target: None,
        });
        figures.push(Figure {
            figure: "`link down` to NO-CARRIER in the pod, median (ms, CLI start included)".into(),
            value: median(&x.down_ms),
            baseline: None,
            target: None,
        });
        figures.push(Figure {
            figure: "`link up` to the carrier back, median (ms)".into(),
            value: median(&x.up_ms),
            baseline: None,
            target: None,
        });
        figures
    }

    fn crossnode_figures(&self) -> Vec<Figure> {
        let x = &self.crossnode;
        let median = |name: &str, select: PathFigure| {
            let path = x.paths.iter().find(|path| path.name == name).expect("both cross-node paths were measured");
            percentile(&sorted(select(path)), 50.0)
        };
        let versus = |figure: &str, select: PathFigure| Figure {
            figure: format!("cross-node {figure}, median"),
            value: median("ratchet", select),
            baseline: Some(("kernel VXLAN per link".into(), median("vxlan-per-link", select))),
            target: None,
        };
        let peer = |figure: String, samples: &[f64], target: bool| {
            let p95 = percentile(&sorted(samples), 95.0);
            Figure { figure, value: p95, baseline: None, target: target.then_some(("<= 50 ms", p95 <= 50.0)) }
        };
        let one_cpu = !x.paths.iter().any(|path| path.one_cpu_rr_per_s.is_empty());
        let one_cpu_rows = one_cpu.then(|| {
            [
                versus(&format!("one-CPU TCP request/response, {} B (per s)", datapath::MESSAGE_BYTES), |p| {
                    &p.one_cpu_rr_per_s
                }),
                versus("one-CPU CPU per transaction, that CPU (µs)", |p| &p.one_cpu_cpu_us_per_tx),
            ]
        });
        let mut rows = vec![
            versus("TCP throughput (Gbit/s)", |p| &p.gbps),
            versus(&format!("cross-CPU TCP request/response, {} B (per s)", datapath::MESSAGE_BYTES), |p| &p.rr_per_s),
            versus("cross-CPU RR latency p50 (µs, half RTT)", |p| &p.lat_p50_us),
            versus("cross-CPU CPU per transaction, whole machine (µs)", |p| &p.cpu_us_per_tx),
            peer(
                "peer-appears-to-traffic, cross-node, p95 (ms from the peer's ADD returning)".into(),
                &x.peer_to_traffic_ms,
                true,
            ),
            peer(
                "the same, from the peer's ADD starting, p95 (ms)".into(),
                &x.peer_to_traffic_from_add_start_ms,
                false,
            ),
            peer(
                "peer-appears-to-traffic, same node, p95 (ms from the peer's ADD returning)".into(),
                &x.same_node_peer_to_traffic_ms,
                true,
            ),
        ];
        rows.splice(4..4, one_cpu_rows.into_iter().flatten());
        rows
    }

    fn scale_figures(&self) -> Vec<Figure> {
        let scale = &self.scale;
        let (links, window) = (scale.links(), scale.window);
        let p95 = |samples: &[f64]| percentile(&sorted(samples), 95.0);
        let (first, last) = (p95(scale.first_window()), p95(scale.last_window()));
        let agent = &scale.agent;
        vec![
            Figure {
                figure: format!("ADD p95 at links {}-{links} (ms)", links - window + 1),
                value: last,
                baseline: Some((format!("links 1-{window}"), first)),
                target: Some(("<= 1.2x", last / first <= 1.2)),
            },
            Figure {
                figure: format!("ADD p50 at links {}-{links} (ms)", links - window + 1),
                value: percentile(&sorted(scale.last_window()), 50.0),
                baseline: Some((format!("links 1-{window}"), percentile(&sorted(scale.first_window()), 50.0))),
                target: None,
            },
            Figure {
                figure: format!("pinned map memory, all maps (KiB, {} link ends max)", scale.maps.capacity_ends),
                value: scale.maps.bytes as f64 / 1024.0,
                baseline: None,
                target: None,
            },
            Figure {
                figure: "map memory per link at capacity (bytes)".into(),
                value: scale.maps.bytes_per_link(),
                baseline: None,
                target: None,
            },
            Figure {
                figure: format!("agent RSS with {links} links (MiB)"),
                value: agent.full.rss_kib as f64 / 1024.0,
                baseline: Some(("empty node".into(), agent.empty.rss_kib as f64 / 1024.0)),
                target: None,
            },
            Figure {
                figure: format!("agent peak RSS with {links} links (MiB)"),
                value: agent.full.peak_rss_kib as f64 / 1024.0,
                baseline: Some(("empty node".into(), agent.empty.peak_rss_kib as f64 / 1024.0)),
                target: None,
            },
            Figure {
                figure: format!("agent open fds with {links} links"),
                value: agent.full.fds as f64,
                baseline: Some(("empty node".into(), agent.empty.fds as f64)),
                target: None,
            },
        ]
    }

    fn upgrade_figures(&self) -> Vec<Figure> {
        let rows = [
            ("the next layout's build", &self.upgrade.next_layout),
            ("another build, same layout", &self.upgrade.same_layout),
        ];
        rows.into_iter()
            .flat_map(|(who, take_over)| {
                [
                    Figure {
                        figure: format!(
                            "frames lost while {who} takes a node over (of {} flooded pings)",
                            take_over.pings
                        ),
                        value: take_over.lost as f64,
                        baseline: None,
                        target: Some(("= 0", take_over.lost == 0)),
                    },
                    Figure {
                        figure: "its take-over verb, switch-over included (ms)".into(),
                        value: take_over.verb_ms,
                        baseline: None,
                        target: None,
                    },
                ]
            })
            .collect()
    }

    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        let (rows, figures) = (self.rows(), self.figures());
        let md = self.markdown(&rows, &figures);
        fs::write(out.join("report.md"), &md).context("writing report.md")?;
        fs::write(out.join("report.json"), serde_json::to_string_pretty(&self.json(&rows, &figures))?)
            .context("writing report.json")?;
        self.plot_control(&out.join("cni-latency.svg"))?;
        self.plot_datapath(&out.join("datapath.svg"))?;
        self.plot_scale(&out.join("scale.svg"))?;
        println!("\n{}\n{}", table(&rows), figure_table(&figures));
        Ok(())
    }

    fn markdown(&self, rows: &[Row], figures: &[Figure]) -> String {
        let m = &self.machine;
        let plan = &self.plan;
        let samples = self.control.runs.first().map_or(0, |run| run.add_ms.len());
        let pinning = match self.pinned {
            Some((client, server)) => {
                format!("clients pinned to CPU {client} and servers to CPU {server} with `taskset`")
            }
            None => "not pinned (fewer than 2 CPUs or no taskset)".into(),
        };
        format!(
            "# ratchet benchmark{quick}\n\n\
             Machine: Linux {kernel}, {cpus} CPU(s) ({model}). Run took {elapsed:.0} s.\n\n\
             {table}\n\
             {figures}\n\
             Ratios compare medians (p50) unless the figure says otherwise; a target is reported, never \
             asserted.\n\n\
             ![CNI ADD/DEL latency](cni-latency.svg)\n![datapath](datapath.svg)\n![scale](scale.svg)\n\n\
             ## Method\n\n\
             - **Control plane.** Each plugin binary is run as a runtime runs it through libcni: its config \
             (the conflist entry with `name` and `cniVersion`) on stdin, `CNI_COMMAND`, `CNI_CONTAINERID`, \
             `CNI_NETNS`, `CNI_IFNAME=eth0`, `CNI_PATH=/usr/lib/cni`, `CNI_ARGS` with `K8S_POD_*`; DEL gets \
             the ADD result as `prevResult`. Wall time is the whole process, spawn to exit. Every ADD is on a \
             fresh netns (made before the clock starts). ratchet: a topology of {links} links, one ADD per \
             link end (pod), {samples} ADDs; bridge (`isGateway`, no `ipMasq`) and ptp (no `ipMasq`), both \
             with host-local IPAM, get {samples} ADDs each, interleaved with ratchet's in a rotating order. \
             All ADDs come first (the node fills up to {samples} pods per plugin), then all DELs in the same \
             order. One ADD+DEL per plugin before that is a warm-up and not counted (ratchet's first ADD loads \
             and pins its program; bridge's makes the bridge). p50/p95/p99 are nearest-rank.\n\
             - **Datapath.** Two pods (netns) joined four ways: a ratchet link (clsact attach, the default), \
             a bare veth pair with no program (the floor), the bridge plugin and the ptp plugin, all MTU 1500, \
             IPv4. Throughput: `iperf3` one TCP stream, {secs} s per run{omit}, receiver's rate. \
             Request/response: `sockperf ping-pong --tcp --mps=max -m {msg}` ({msg}-byte messages each way, \
             one connection, {secs} s per run); rate = round trips / sockperf's valid duration; latency is \
             sockperf's (half a round trip). CPU per transaction: busy jiffies of the whole machine \
             (user+nice+system+irq+softirq from /proc/stat) over the sockperf run, divided by its round trips; \
             it includes both ends and anything else the machine did. These cross-CPU rows put client and \
             server on two CPUs: each round trip waits for two cross-CPU wakeups (hypervisor IPIs here), \
             which dominate and hide the path. The one-CPU rows run the same ping-pong with the client \
             beside the server on the server's CPU: a closed loop that keeps that CPU busy, so its busy \
             jiffies per round trip are the cost of application, stack and datapath with no idle gaps. \
             {reps} runs per path, paths interleaved in a rotating order; the table shows medians of the \
             runs, and a target is judged on them only where the runs of ratchet and the baseline do not \
             overlap (min to max; else \"within noise\"; the Spread section has the ranges). {pinning}.\n\
             - **Impairments.** On the datapath's ratchet link after its runs, set live with `ratchet link \
             set` (no re-ADD). Loss on side a at 1% and 10%: a ping flood (`ping -f -l 32`, {pings} pings, 32 \
             in flight so a lost request does not stall the next) from side a, whose replies are not impaired; \
             the figure is the share of pings unanswered, and the share the link's `lost` counter grew by. \
             Rate: {rate} Mbit/s on side a (a TBF on the pod interface), one iperf3 TCP stream from side a as \
             in the datapath runs, {reps} runs. Cable: `ip monitor link` runs in side a's pod; the figure is \
             from the `ratchet link down` (or `up`) process starting to the pod interface's NO-CARRIER (or \
             LOWER_UP) notification arriving, {cable} times each. The per-frame cost of an unimpaired link with \
             the loss check in the program (one compare) is the datapath table's ratchet/veth ratio.\n\
             - **Cross-node.** Two \"nodes\" on this machine as tests/tests/multinode.rs builds them: each a \
             netns with its own host veths, pin root, state dir and `ratchet agent`, joined by an underlay veth \
             (10.209.0.1/.2), a single-member etcd inside node 0 as the store; plugin and agents run inside \
             their node (`nsenter --net`). One pod on each node, joined two ways: a ratchet link (the program \
             redirects into the node's one collect-metadata VXLAN device, UDP 4789, MTU 1450) and the older \
             approach of ratchet-cni's Go prototype, one kernel VXLAN device per link made in the node (its \
             VNI, the other node as remote, UDP 4790 since ratchet's device holds 4789) and moved into the pod, \
             MTU 1450. Both measured as the same-node paths (servers on node 1); the agents and etcd run \
             meanwhile, so CPU per transaction includes their background load. Peer-appears-to-traffic: pod A \
             is attached and sends an 8-byte UDP datagram to B's link address every 1 ms (fixed MACs and a \
             permanent neighbour entry, so no ARP timer is in it); a socket in B's netns is bound before B's \
             ADD; the figure is from B's ADD returning to A's first datagram arriving in B (negative: it came \
             before the ADD returned; resolution about 1 ms), also from the ADD starting. B is DELeted between \
             samples, {peer_samples} samples per case. Cross-node: B on node 1, A's side wired by node 0's agent \
             from its etcd watch. Same node: both on node 0 (etcd store), B's ADD wires both sides itself.\n\
             - **Scale.** A node of its own (store and pin root) filled with {scale_links} links, one pod ADD at \
             a time as above (fresh netns each, whole process timed), nothing else running; the p95 of the \
             last {window} links' ADDs is compared with the first {window} links'. Map memory is bpftool's \
             `bytes_memlock` of every pinned map: they are preallocated hash maps, so it is the same empty or \
             full, and per link = total / (max link ends / 2); the per-CPU counters grow with the CPU count. \
             A warm-up link (its first ADD loads and pins the programs) is not counted. The agent (embedded \
             store: a reconcile every 20 ms over every end) runs for 2 s on the empty node and again on the \
             full one, never during the ADDs; RSS, peak RSS and fds are read from /proc at the end of each run. \
             The node is then emptied by deleting the netns.\n\
             - **Upgrade.** A node of its own with one link, its pods ADDed by this build; a ping flood (`ping \
             -f`, each request sent as the last reply returns) crosses it while a build of the next layout of \
             the maps (the `layout-next` feature) sends its first verb on the node, a CHECK, which takes the \
             node over: new maps filled from the store, counters carried, programs swapped in place on the \
             host veths. Then, its build marker changed to another build's, the same again with programs \
             swapped over the same maps. Frames lost are the flood's unanswered pings; the verb's wall time \
             includes loading the new build's programs.\n\n\
             ## Spread\n\n{spread}\n\
             ## Not measured\n\n\
             The tcx attach mode (ebpf-lifecycle.md measured its ADD at about 6x clsact's).\n",
            quick = if plan.quick { " (--quick: few samples, short runs; not for quoting)" } else { "" },
            kernel = m.kernel,
            cpus = m.cpus,
            model = m.cpu_model,
            elapsed = self.elapsed_s,
            table = table(rows),
            figures = figure_table(figures),
            scale_links = self.scale.links(),
            peer_samples = self.crossnode.peer_to_traffic_ms.len(),
            window = self.scale.window,
            links = plan.links,
            secs = plan.seconds,
            omit = if plan.quick { "" } else { " after a 1 s omitted warm-up" },
            msg = datapath::MESSAGE_BYTES,
            reps = plan.reps,
            spread = self.spread(),
            pings = self.impair.loss.first().map_or(0, |run| run.sent),
            rate = impair::RATE_MBIT,
            cable = self.impair.down_ms.len(),
        )
    }

    fn spread(&self) -> String {
        let mut text = String::from(
            "| CNI (ms) | ADD min | ADD p50 | ADD p95 | ADD p99 | ADD max | DEL min | DEL p50 | DEL p95 | DEL p99 | DEL max |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for run in &self.control.runs {
            let cells = |samples: &[f64]| {
                let s = sorted(samples);
                [0.0, 50.0, 95.0, 99.0, 100.0]
                    .map(|p| format!("{:.2}", if p == 0.0 { s[0] } else { percentile(&s, p) }))
                    .join(" | ")
            };
            text += &format!("| {} | {} | {} |\n", run.plugin.name(), cells(&run.add_ms), cells(&run.del_ms));
        }
        text += "\n| datapath, min / median / max of runs | Gbit/s | cross-CPU RR per s | cross-CPU CPU µs per RR | one-CPU RR per s | one-CPU CPU µs per RR |\n|---|---|---|---|---|---|\n";
        let paths = self.datapath.paths.iter().map(|path| (path.name.to_owned(), path));
        let crossnode = self.crossnode.paths.iter().map(|path| (format!("cross-node {}", path.name), path));
        for (name, path) in paths.chain(crossnode) {
            let cells = |samples: &[f64], digits: usize| {
                let s = sorted(samples);
                match (s.first(), s.last()) {
                    (Some(min), Some(max)) => {
                        format!("{min:.digits$} / {:.digits$} / {max:.digits$}", percentile(&s, 50.0))
                    }
                    _ => "—".into(),
                }
            };
            text += &format!(
                "| {name} | {} | {} | {} | {} | {} |\n",
                cells(&path.gbps, 2),
                cells(&path.rr_per_s, 0),
                cells(&path.cpu_us_per_tx, 1),
                cells(&path.one_cpu_rr_per_s, 0),
                cells(&path.one_cpu_cpu_us_per_tx, 1)
            );
        }
        text
    }

    fn json(&self, rows: &[Row], figures: &[Figure]) -> Value {
        json!({
            "machine": { "kernel": self.machine.kernel, "cpus": self.machine.cpus, "cpu_model": self.machine.cpu_model },
            "plan": { "quick": self.plan.quick, "links": self.plan.links, "reps": self.plan.reps, "seconds": self.plan.seconds },
            "pinned_cpus": self.pinned.map(|(client, server)| json!({ "client": client, "server": server })),
            "elapsed_s": self.elapsed_s,
            "figures": rows.iter().map(|row| json!({
                "figure": row.figure,
                "ratchet": row.values[0], "veth": row.values[1], "bridge": row.values[2], "ptp": row.values[3],
                "ratio": row.target.map(|t| json!({ "value": finite(t.0), "of": t.1 })),
                "target": row.target.map(|t| t.2),
                "result": row.target.map(|t| t.3.text()),
            })).collect::<Vec<_>>(),
            "scale_figures": figures.iter().map(|f| json!({
                "figure": f.figure, "ratchet": finite(f.value),
                "baseline": f.baseline.as_ref().map(|(name, value)| json!({ "name": name, "value": finite(*value) })),
                "target": f.target.map(|t| t.0), "pass": f.target.map(|t| t.1),
            })).collect::<Vec<_>>(),
            "samples": {
                "cni_ms": self.control.runs.iter().map(|run| (run.plugin.name().to_owned(), json!({ "add": run.add_ms, "del": run.del_ms }))).collect::<serde_json::Map<_, _>>(),
                "datapath": self.datapath.paths.iter().map(|path| (path.name.to_owned(), json!({
                    "gbps": path.gbps, "rr_per_s": path.rr_per_s, "latency_p50_us": path.lat_p50_us,
                    "latency_p99_us": path.lat_p99_us, "cpu_us_per_transaction": path.cpu_us_per_tx,
                    "one_cpu": { "rr_per_s": path.one_cpu_rr_per_s, "latency_p50_us": path.one_cpu_lat_p50_us,
                                 "cpu_us_per_transaction_of_that_cpu": path.one_cpu_cpu_us_per_tx },
                }))).collect::<serde_json::Map<_, _>>(),
                "scale_add_ms": self.scale.add_ms,
                "impairments": {
                    "loss": self.impair.loss.iter().map(|run| json!({
                        "percent": run.percent, "sent": run.sent, "received": run.received, "counted_lost": run.counted,
                    })).collect::<Vec<_>>(),
                    "rate_mbit": { "configured": impair::RATE_MBIT, "measured": self.impair.rate_mbit },
                    "link_down_to_no_carrier_ms": self.impair.down_ms,
                    "link_up_to_carrier_ms": self.impair.up_ms,
                },
                "crossnode": self.crossnode.paths.iter().map(|path| (path.name.to_owned(), json!({
                    "gbps": path.gbps, "rr_per_s": path.rr_per_s, "latency_p50_us": path.lat_p50_us,
                    "latency_p99_us": path.lat_p99_us, "cpu_us_per_transaction": path.cpu_us_per_tx,
                    "one_cpu": { "rr_per_s": path.one_cpu_rr_per_s, "latency_p50_us": path.one_cpu_lat_p50_us,
                                 "cpu_us_per_transaction_of_that_cpu": path.one_cpu_cpu_us_per_tx },
                }))).collect::<serde_json::Map<_, _>>(),
                "peer_to_traffic_ms": {
                    "cross_node_from_add_return": self.crossnode.peer_to_traffic_ms,
                    "cross_node_from_add_start": self.crossnode.peer_to_traffic_from_add_start_ms,
                    "same_node_from_add_return": self.crossnode.same_node_peer_to_traffic_ms,
                    "same_node_from_add_start": self.crossnode.same_node_peer_to_traffic_from_add_start_ms,
                },
            },
        })
    }

    /// ADD and DEL latency, one CDF per plugin, side by side.
    fn plot_control(&self, file: &Path) -> anyhow::Result<()> {
        let root = SVGBackend::new(file, (1000, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let panels = root.split_evenly((1, 2));
        for (panel, (verb, select)) in panels
            .iter()
            .zip([("ADD", (|r: &Runs| &r.add_ms) as fn(&Runs) -> &Vec<f64>), ("DEL", |r: &Runs| &r.del_ms)])
        {
            let max = self.control.runs.iter().flat_map(|run| select(run).iter().copied()).fold(1.0, f64::max);
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("CNI {verb} latency (whole process)"), ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(45)
                .build_cartesian_2d(0.0..max * 1.05, 0.0..1.0)
                .map_err(plot_error)?;
            chart.configure_mesh().x_desc("ms").y_desc("fraction of calls").draw().map_err(plot_error)?;
            for (i, run) in self.control.runs.iter().enumerate() {
                let s = sorted(select(run));
                let n = s.len() as f64;
                let color = Palette99::pick(i).to_rgba();
                let points = s.iter().enumerate().map(|(k, &x)| (x, (k + 1) as f64 / n));
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)))
                    .map_err(plot_error)?
                    .label(run.plugin.name())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            }
            draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        }
        root.present().map_err(plot_error)?;
        Ok(())
    }

    /// Throughput, request/response rate and CPU per transaction per path,
    /// each relative to the bare veth pair (median of runs, bars).
    fn plot_datapath(&self, file: &Path) -> anyhow::Result<()> {
        let root = SVGBackend::new(file, (1000, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let panels = root.split_evenly((1, 3));
        let figures: [(&str, PathFigure); 3] = [
            ("TCP throughput (Gbit/s)", |p| &p.gbps),
            ("request/response (per s)", |p| &p.rr_per_s),
            ("CPU per transaction (µs)", |p| &p.cpu_us_per_tx),
        ];
        let names: Vec<&str> = self.datapath.paths.iter().map(|path| path.name).collect();
        for (panel, (title, select)) in panels.iter().zip(figures) {
            let medians: Vec<f64> =
                self.datapath.paths.iter().map(|path| percentile(&sorted(select(path)), 50.0)).collect();
            let top = medians.iter().copied().filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-9) * 1.15;
            let mut chart = ChartBuilder::on(panel)
                .caption(title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(55)
                .build_cartesian_2d((0..names.len()).into_segmented(), 0.0..top)
                .map_err(plot_error)?;
            let labels = names.clone();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(names.len())
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) => labels.get(*i).map_or(String::new(), |name| (*name).to_owned()),
                    _ => String::new(),
                })
                .draw()
                .map_err(plot_error)?;
            chart
                .draw_series(medians.iter().enumerate().map(|(i, &value)| {
                    let color = Palette99::pick(i).to_rgba().filled();
                    let mut bar =
                        Rectangle::new([(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), value)], color);
                    bar.set_margin(0, 0, 8, 8);
                    bar
                }))
                .map_err(plot_error)?;
        }
        root.present().map_err(plot_error)?;
        Ok(())
    }
}

impl Report {
    /// Every scale ADD against its link's number, and the p95 of each
    /// window of links.
    fn plot_scale(&self, file: &Path) -> anyhow::Result<()> {
        let scale = &self.scale;
        let root = SVGBackend::new(file, (1000, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let top = scale.add_ms.iter().copied().fold(1.0, f64::max) * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("CNI ADD latency as the node fills (windows of {} links)", scale.window),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..scale.links() as f64 + 1.0, 0.0..top)
            .map_err(plot_error)?;
        chart.configure_mesh().x_desc("link number").y_desc("ADD ms (whole process)").draw().map_err(plot_error)?;
        let link_of = |k: usize| (k / 2 + 1) as f64;
        let dots = Palette99::pick(0).mix(0.35).filled();
        chart
            .draw_series(scale.add_ms.iter().enumerate().map(|(k, &ms)| Circle::new((link_of(k), ms), 2, dots)))
            .map_err(plot_error)?
            .label("one ADD")
            .legend(move |(x, y)| Circle::new((x + 10, y), 3, dots));
        let windows = (0..scale.links() / scale.window).map(|w| {
            let first = w * scale.window;
            ((first + scale.window / 2 + 1) as f64, percentile(&sorted(scale.window_at(first)), 95.0))
        });
        let line = Palette99::pick(1).to_rgba();
        chart
            .draw_series(LineSeries::new(windows, line.stroke_width(2)))
            .map_err(plot_error)?
            .label("p95 of a window")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], line.stroke_width(2)));
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        root.present().map_err(plot_error)?;
        Ok(())
    }
}

/// The second table in Markdown.
fn figure_table(figures: &[Figure]) -> String {
    let mut text =
        String::from("| figure | ratchet | baseline | ratio | target | result |\n|---|---|---|---|---|---|\n");
    for f in figures {
        let baseline = f.baseline.as_ref().map_or("—".into(), |(name, value)| format!("{} ({name})", number(*value)));
        let ratio = f.baseline.as_ref().map_or("—".into(), |(_, value)| format!("{:.2}", f.value / value));
        let (target, result) =
            f.target.map_or(("—", "—"), |(target, pass)| (target, if pass { "PASS" } else { "FAIL" }));
        text += &format!("| {} | {} | {baseline} | {ratio} | {target} | {result} |\n", f.figure, number(f.value));
    }
    text
}

/// Picks one figure's samples out of a path's runs.
type PathFigure = fn(&PathRuns) -> &Vec<f64>;

/// The series' labels in a framed box at `position`.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)
}

fn plot_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plotting: {error}")
}

fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

/// A figure for a table: whole numbers from 1000 up, two decimals below.
fn number(value: f64) -> String {
    if value.abs() >= 1000.0 { format!("{value:.0}") } else { format!("{value:.2}") }
}

/// The main table in Markdown.
fn table(rows: &[Row]) -> String {
    let mut text = String::from(
        "| figure | ratchet | veth (no program) | bridge | ptp | ratio | target | result |\n|---|---|---|---|---|---|---|---|\n",
    );
    let cell = |value: Option<f64>| value.map_or("—".into(), number);
    for row in rows {
        let (ratio, target, result) = match row.target {
            Some((ratio, of, target, outcome)) => {
                (format!("{ratio:.2} ({of})"), target.to_owned(), outcome.text().to_owned())
            }
            None => ("—".into(), "—".into(), "—".into()),
        };
        text += &format!(
            "| {} | {} | {} | {} | {} | {ratio} | {target} | {result} |\n",
            row.figure,
            cell(row.values[0]),
            cell(row.values[1]),
            cell(row.values[2]),
            cell(row.values[3])
        );
    }
    text
}
