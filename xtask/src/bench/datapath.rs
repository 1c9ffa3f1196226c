//! Same-node datapath: two pods (netns) joined four ways, each measured with
//! iperf3 (TCP throughput) and sockperf ping-pong (request/response rate,
//! latency, and machine CPU per transaction from /proc/stat), the paths
//! interleaved within each repetition.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

use super::{DP_IPS, DP_PODS, Lab, Plan, Plugin, plugin_conf, result_ip};
use crate::util::{self, command};

const IPERF_PORT: &str = "5201";
const SOCKPERF_PORT: &str = "11111";
/// sockperf's message size, each way.
pub const MESSAGE_BYTES: u32 = 64;

#[derive(Debug)]
pub struct Datapath {
    pub paths: Vec<PathRuns>,
}

#[derive(Debug)]
pub struct PathRuns {
    pub name: &'static str,
    /// iperf3, receiver side, Gbit/s.
    pub gbps: Vec<f64>,
    /// sockperf ping-pong round trips per second.
    pub rr_per_s: Vec<f64>,
    /// sockperf's p50 and p99 latency (half a round trip), µs.
    pub lat_p50_us: Vec<f64>,
    pub lat_p99_us: Vec<f64>,
    /// Busy CPU of the whole machine per round trip, µs.
    pub cpu_us_per_tx: Vec<f64>,
    /// The same ping-pong with client and server on one CPU (the server's):
    /// a closed loop with no cross-CPU wakeup, so the figures are the
    /// datapath's cost. Round trips per second, p50 latency, and that CPU's
    /// busy time per round trip (µs). Empty when the bench cannot pin.
    pub one_cpu_rr_per_s: Vec<f64>,
    pub one_cpu_lat_p50_us: Vec<f64>,
    pub one_cpu_cpu_us_per_tx: Vec<f64>,
}

/// Two pods and the address the server listens on.
pub(super) struct Path {
    pub(super) name: &'static str,
    pub(super) client: String,
    pub(super) server: String,
    pub(super) server_ip: String,
}

pub fn measure(lab: &mut Lab, plan: &Plan) -> anyhow::Result<Datapath> {
    let paths = [ratchet(lab)?, direct(lab)?, plugin_path(lab, Plugin::Bridge)?, plugin_path(lab, Plugin::Ptp)?];
    Ok(Datapath { paths: measure_interleaved(lab, plan, &paths)? })
}

/// Starts an iperf3 and a sockperf server behind each path, proves each
/// path, then measures them `plan.reps` times, interleaved in a rotating
/// order within each repetition.
pub(super) fn measure_interleaved(lab: &mut Lab, plan: &Plan, paths: &[Path]) -> anyhow::Result<Vec<PathRuns>> {
    for path in paths {
        let mut iperf = lab.exec(&path.server, lab.server_cpu());
        iperf.args(["iperf3", "--server", "--bind", &path.server_ip, "--port", IPERF_PORT]);
        lab.spawn_server(iperf)?;
        let mut sockperf = lab.exec(&path.server, lab.server_cpu());
        sockperf.args(["sockperf", "server", "--tcp", "-i", &path.server_ip, "-p", SOCKPERF_PORT]);
        lab.spawn_server(sockperf)?;
    }
    for path in paths {
        wait_listening(lab, &path.server, IPERF_PORT)?;
        wait_listening(lab, &path.server, SOCKPERF_PORT)?;
        wait_reachable(lab, path)?;
    }
    let clk_tck: f64 = util::stdout_of(command("getconf").arg("CLK_TCK"))?.trim().parse().context("CLK_TCK")?;
    let mut runs: Vec<PathRuns> = paths
        .iter()
        .map(|path| PathRuns {
            name: path.name,
            gbps: Vec::new(),
            rr_per_s: Vec::new(),
            lat_p50_us: Vec::new(),
            lat_p99_us: Vec::new(),
            cpu_us_per_tx: Vec::new(),
            one_cpu_rr_per_s: Vec::new(),
            one_cpu_lat_p50_us: Vec::new(),
            one_cpu_cpu_us_per_tx: Vec::new(),
        })
        .collect();
    for rep in 0..plan.reps {
        for i in 0..paths.len() {
            let p = (rep + i) % paths.len();
            let (path, run) = (&paths[p], &mut runs[p]);
            let gbps = retry(|| iperf(lab, plan, path))?;
            let rr = retry(|| sockperf(lab, plan, path, clk_tck, Placement::CrossCpu))?;
            println!(
                "  rep {rep} {:14} {gbps:6.2} Gbit/s | {:8.0} RR/s p50 {:5.1} us | {:5.1} us CPU/RR",
                path.name, rr.per_s, rr.p50_us, rr.cpu_us
            );
            run.gbps.push(gbps);
            run.rr_per_s.push(rr.per_s);
            run.lat_p50_us.push(rr.p50_us);
            run.lat_p99_us.push(rr.p99_us);
            run.cpu_us_per_tx.push(rr.cpu_us);
            if let Some(cpu) = lab.server_cpu() {
                let rr = retry(|| sockperf(lab, plan, path, clk_tck, Placement::OneCpu(cpu)))?;
                println!(
                    "  rep {rep} {:14} one CPU:      | {:8.0} RR/s p50 {:5.1} us | {:5.1} us CPU {cpu}/RR",
                    path.name, rr.per_s, rr.p50_us, rr.cpu_us
                );
                run.one_cpu_rr_per_s.push(rr.per_s);
                run.one_cpu_lat_p50_us.push(rr.p50_us);
                run.one_cpu_cpu_us_per_tx.push(rr.cpu_us);
            }
        }
    }
    Ok(runs)
}

/// Pings until answered (a cross-node link carries traffic once the other
/// node's agent has wired it), so neighbours are resolved and the path is
/// proven before anything is timed.
fn wait_reachable(lab: &Lab, path: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ping = util::probe(lab.exec(&path.client, None).args(["ping", "-c", "1", "-W", "1", &path.server_ip]))?;
        if ping.status.success() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{}: no ping from {} to {} in 5 s", path.name, path.client, path.server_ip);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A run that fails for a passing reason (a server still finishing the
/// previous test, a lost SYN on a loaded machine) gets two more tries; a
/// measurement that fails three times in a row is broken.
fn retry<T>(mut run: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    for attempt in 1.. {
        match run() {
            Ok(value) => return Ok(value),
            Err(error) if attempt < 3 => {
                println!("  (attempt {attempt} failed, retrying in 1 s: {error:#})");
                thread::sleep(Duration::from_secs(1));
            }
            Err(error) => return Err(error),
        }
    }
    unreachable!("the loop returns")
}

/// A ratchet link: the topology's datapath link, both pods ADDed.
fn ratchet(lab: &mut Lab) -> anyhow::Result<Path> {
    let conf = plugin_conf(lab, Plugin::Ratchet);
    for pod in DP_PODS {
        let ns = lab.add_netns(&ratchet_netns_suffix(pod))?;
        lab.cni(&lab.bin, "ADD", &ns, pod, &conf)?;
    }
    Ok(ratchet_path(lab))
}

fn ratchet_netns_suffix(pod: &str) -> String {
    format!("dp-ratchet-{pod}")
}

/// The ratchet link's path, once [`measure`] has made it.
pub(super) fn ratchet_path(lab: &Lab) -> Path {
    let [client, server] = DP_PODS.map(|pod| format!("{}-{}", lab.prefix, ratchet_netns_suffix(pod)));
    let server_ip = DP_IPS[1].split('/').next().unwrap_or_default().to_owned();
    Path { name: "ratchet", client, server, server_ip }
}

/// The floor: a bare veth pair between the two netns, no program.
fn direct(lab: &mut Lab) -> anyhow::Result<Path> {
    let client = lab.add_netns("dp-veth-a")?;
    let server = lab.add_netns("dp-veth-b")?;
    let ifname = format!("rbv{}", std::process::id());
    util::run(command("ip").args(["link", "add", &format!("{ifname}a"), "netns", &client, "type", "veth"]).args([
        "peer",
        "name",
        &format!("{ifname}b"),
        "netns",
        &server,
    ]))?;
    for (ns, side, ip) in [(&client, "a", "10.204.0.1/24"), (&server, "b", "10.204.0.2/24")] {
        let dev = format!("{ifname}{side}");
        util::run(command("ip").args(["-n", ns, "address", "add", ip, "dev", &dev]))?;
        util::run(command("ip").args(["-n", ns, "link", "set", &dev, "up"]))?;
    }
    Ok(Path { name: "veth", client, server, server_ip: "10.204.0.2".into() })
}

/// Two pods ADDed by a reference plugin (bridge: one shared bridge; ptp:
/// host routes).
fn plugin_path(lab: &mut Lab, plugin: Plugin) -> anyhow::Result<Path> {
    let conf = plugin_conf(lab, plugin);
    let client = lab.add_netns(&format!("dp-{}-a", plugin.name()))?;
    let server = lab.add_netns(&format!("dp-{}-b", plugin.name()))?;
    lab.cni(&plugin.binary(lab), "ADD", &client, &client, &conf)?;
    let (_, result) = lab.cni(&plugin.binary(lab), "ADD", &server, &server, &conf)?;
    Ok(Path { name: plugin.name(), client, server, server_ip: result_ip(&result)? })
}

/// One iperf3 TCP run over `path`: what the receiver got, Gbit/s.
pub(super) fn iperf(lab: &Lab, plan: &Plan, path: &Path) -> anyhow::Result<f64> {
    let mut cmd = lab.exec(&path.client, lab.client_cpu());
    cmd.args(["iperf3", "--client", &path.server_ip, "--port", IPERF_PORT, "--json"]).args([
        "--time",
        &plan.seconds.to_string(),
        "--omit",
        if plan.quick { "0" } else { "1" },
    ]);
    let text = util::stdout_of(&mut cmd)?;
    let report: Value = serde_json::from_str(&text).with_context(|| format!("iperf3 --json printed: {text}"))?;
    let bps = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no end.sum_received.bits_per_second in iperf3's report: {text}"))?;
    if bps <= 0.0 {
        bail!("{}: iperf3 moved nothing", path.name);
    }
    Ok(bps / 1e9)
}

struct Rr {
    per_s: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us: f64,
}

/// Where a ping-pong's client runs, and whose CPU time it is charged.
#[derive(Clone, Copy)]
enum Placement {
    /// The client on its CPU, the server on the other: each round trip
    /// wakes the other CPU twice. Charged the whole machine's busy time.
    CrossCpu,
    /// The client beside the server on this CPU: a closed loop that keeps
    /// it busy. Charged that CPU's busy time.
    OneCpu(usize),
}

fn sockperf(lab: &Lab, plan: &Plan, path: &Path, clk_tck: f64, placement: Placement) -> anyhow::Result<Rr> {
    let (client_cpu, charged) = match placement {
        Placement::CrossCpu => (lab.client_cpu(), None),
        Placement::OneCpu(cpu) => (Some(cpu), Some(cpu)),
    };
    let mut cmd = lab.exec(&path.client, client_cpu);
    cmd.args(["sockperf", "ping-pong", "--tcp", "-i", &path.server_ip, "-p", SOCKPERF_PORT, "--mps=max"]).args([
        "-m",
        &MESSAGE_BYTES.to_string(),
        "-t",
        &plan.seconds.to_string(),
    ]);
    let before = busy_jiffies(charged)?;
    let output = util::probe(&mut cmd)?;
    let after = busy_jiffies(charged)?;
    let text =
        strip_ansi(&format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)));
    if !output.status.success() {
        bail!("{}: `{}` failed: {}\n{text}", path.name, util::show(&cmd), output.status);
    }
    let field = |line: &str, key: &str| -> Option<f64> {
        let rest = line[line.find(key)? + key.len()..].trim_start();
        rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?.parse().ok()
    };
    let line = |marker: &str| text.lines().find(|line| line.contains(marker));
    let parsed = (|| {
        let valid = line("[Valid Duration]")?;
        let total = line("[Total Run]")?;
        let per_s = field(valid, "ReceivedMessages=")? / field(valid, "RunTime=")?;
        let all_received = field(total, "ReceivedMessages=")?;
        let p50_us = field(line("percentile 50.000")?, "=")?;
        let p99_us = field(line("percentile 99.000")?, "=")?;
        Some((per_s, all_received, p50_us, p99_us))
    })();
    let Some((per_s, all_received, p50_us, p99_us)) = parsed else {
        bail!("{}: cannot read sockperf's summary:\n{text}", path.name);
    };
    if per_s <= 0.0 || all_received <= 0.0 {
        bail!("{}: sockperf made no round trips:\n{text}", path.name);
    }
    let cpu_us = (after - before) as f64 / clk_tck * 1e6 / all_received;
    Ok(Rr { per_s, p50_us, p99_us, cpu_us })
}

/// Busy jiffies of the whole machine, or of one CPU: user, nice, system,
/// irq and softirq (idle, iowait and steal left out) from /proc/stat's
/// `cpu` (or `cpuN`) line.
fn busy_jiffies(cpu: Option<usize>) -> anyhow::Result<u64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let name = cpu.map_or_else(|| "cpu".to_owned(), |cpu| format!("cpu{cpu}"));
    let line = stat.lines().find(|line| line.split_whitespace().next() == Some(name.as_str()));
    let line = line.with_context(|| format!("/proc/stat has no {name} line"))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    if fields.len() < 7 {
        bail!("/proc/stat's {name} line has {} fields", fields.len());
    }
    Ok(fields[0] + fields[1] + fields[2] + fields[5] + fields[6])
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ ... letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits until something listens on TCP `port` in `netns`.
fn wait_listening(lab: &Lab, netns: &str, port: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listening = util::stdout_of(lab.exec(netns, None).args(["ss", "-Hltn", &format!("sport = :{port}")]))?;
        if !listening.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing listens on port {port} in {netns} after 5 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
}
