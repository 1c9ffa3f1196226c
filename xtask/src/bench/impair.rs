//! Impairments on the datapath's ratchet link, once its runs are done: how
//! close a configured loss and rate come to what traffic meets, and how soon
//! `ratchet link down` and `up` reach the pods' carrier. The link is left
//! as it was (`link set --clear`, `link up`).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

use super::{Lab, Plan, datapath};
use crate::util;

/// The configured losses, in percent of the frames side a sends.
pub const LOSSES: [f64; 2] = [1.0, 10.0];
/// The configured rate of side a, Mbit/s.
pub const RATE_MBIT: f64 = 100.0;

#[derive(Debug)]
pub struct Impair {
    pub loss: Vec<LossRun>,
    /// iperf3 from side a under [`RATE_MBIT`], Mbit/s, one per repetition.
    pub rate_mbit: Vec<f64>,
    /// From `ratchet link down` starting to the pod interface's NO-CARRIER, ms.
    pub down_ms: Vec<f64>,
    /// From `ratchet link up` starting to its carrier back, ms.
    pub up_ms: Vec<f64>,
}

#[derive(Debug)]
pub struct LossRun {
    /// Configured, percent.
    pub percent: f64,
    /// Pings side a sent and the replies that came back (replies are not
    /// impaired: side b's direction is clean).
    pub sent: u64,
    pub received: u64,
    /// What the link's `lost` counter grew by meanwhile.
    pub counted: u64,
}

impl LossRun {
    pub fn measured_percent(&self) -> f64 {
        100.0 * (self.sent - self.received) as f64 / self.sent as f64
    }

    pub fn counted_percent(&self) -> f64 {
        100.0 * self.counted as f64 / self.sent as f64
    }
}

pub fn measure(lab: &mut Lab, plan: &Plan) -> anyhow::Result<Impair> {
    let path = datapath::ratchet_path(lab);
    let link = format!("{}-dp", lab.prefix);
    let pings = if plan.quick { 2_000 } else { 20_000 };
    let mut loss = Vec::new();
    for percent in LOSSES {
        link_set(lab, &link, &["--side", "a", "--loss", &format!("{percent}%")])?;
        let before = lost_counter(lab, &link)?;
        let (sent, received) = flood(lab, &path, pings)?;
        let counted = lost_counter(lab, &link)? - before;
        let run = LossRun { percent, sent, received, counted };
        println!(
            "  loss {percent}%: {:.2}% of {sent} pings unanswered, {:.2}% counted lost",
            run.measured_percent(),
            run.counted_percent()
        );
        loss.push(run);
    }
    link_set(lab, &link, &["--clear"])?;

    link_set(lab, &link, &["--side", "a", "--rate", &format!("{RATE_MBIT}mbit")])?;
    let mut rate_mbit = Vec::new();
    for _ in 0..plan.reps {
        let mbit = datapath::iperf(lab, plan, &path)? * 1000.0;
        println!("  rate {RATE_MBIT} Mbit/s: iperf3 {mbit:.1} Mbit/s");
        rate_mbit.push(mbit);
    }
    link_set(lab, &link, &["--clear"])?;

    let (mut down_ms, mut up_ms) = (Vec::new(), Vec::new());
    let monitor = CarrierMonitor::start(&path.client)?;
    for _ in 0..plan.reps.max(3) {
        down_ms.push(monitor.time(lab, &link, "down")?);
        up_ms.push(monitor.time(lab, &link, "up")?);
        println!(
            "  link down -> NO-CARRIER {:.1} ms, link up -> carrier {:.1} ms",
            down_ms.last().unwrap_or(&0.0),
            up_ms.last().unwrap_or(&0.0)
        );
    }
    Ok(Impair { loss, rate_mbit, down_ms, up_ms })
}

fn link_set(lab: &Lab, link: &str, args: &[&str]) -> anyhow::Result<()> {
    util::run(lab.cli().args(["link", "set", link]).args(args))
}

/// The `lost` counter of the link's side a, as `ratchet links` reads it.
fn lost_counter(lab: &Lab, link: &str) -> anyhow::Result<u64> {
    let text = util::stdout_of(lab.cli().args(["links", "-o", "json"]))?;
    let links: Value = serde_json::from_str(&text).context("`ratchet links -o json` is not JSON")?;
    let view = links.as_array().into_iter().flatten().find(|view| view["link"] == link);
    let end = view.and_then(|view| view["ends"].as_array()?.iter().find(|end| end["side"] == "a"));
    end.and_then(|end| end["lost"].as_u64()).with_context(|| format!("no lost counter for {link} side a: {text}"))
}

/// A ping flood from the client with 32 in flight, so that a lost request
/// does not stall the next: (sent, received).
fn flood(lab: &Lab, path: &datapath::Path, pings: u64) -> anyhow::Result<(u64, u64)> {
    let mut ping = lab.exec(&path.client, None);
    ping.args(["ping", "-n", "-q", "-f", "-l", "32", "-W", "1", "-c", &pings.to_string(), &path.server_ip]);
    // ping exits 1 when replies are missing: that is the point here.
    let output = util::probe(&mut ping)?;
    let text = String::from_utf8_lossy(&output.stdout);
    let Some(line) = text.lines().find(|line| line.contains("packets transmitted")) else {
        bail!("ping printed no summary: {text}{}", String::from_utf8_lossy(&output.stderr));
    };
    let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    match numbers[..] {
        [sent, received, ..] if sent > 0 => Ok((sent, received)),
        _ => bail!("cannot read {line:?}"),
    }
}

/// `ip monitor link` in the client pod: each line as it arrives, with the
/// moment it did.
struct CarrierMonitor {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl CarrierMonitor {
    fn start(netns: &str) -> anyhow::Result<Self> {
        let mut cmd = util::command("ip");
        cmd.args(["-n", netns, "monitor", "link"]).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().context("starting ip monitor link")?;
        let stdout = child.stdout.take().context("ip monitor's stdout")?;
        let (send, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        // Let it subscribe before anything changes.
        thread::sleep(Duration::from_millis(200));
        Ok(Self { child, lines })
    }

    /// `ratchet link <verb> LINK`, and the time from its start to the pod
    /// interface reporting the carrier lost (`down`) or back (`up`), ms.
    fn time(&self, lab: &Lab, link: &str, verb: &str) -> anyhow::Result<f64> {
        while self.lines.try_recv().is_ok() {}
        let started = Instant::now();
        util::run(lab.cli().args(["link", verb, link]))?;
        let deadline = started + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("no carrier change within 5 s of link {verb}"))?;
            let is_pod_end = line.contains(&format!(" {}@", super::POD_IFNAME));
            let done = match verb {
                "down" => line.contains("NO-CARRIER"),
                _ => line.contains("LOWER_UP"),
            };
            if is_pod_end && done {
                return Ok(at.duration_since(started).as_secs_f64() * 1000.0);
            }
        }
    }
}

impl Drop for CarrierMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
