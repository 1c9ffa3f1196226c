//! Cross-node: two "nodes" on this machine, as tests/tests/multinode.rs
//! builds them (each a netns with its own host veths, pin root, state dir and
//! `ratchet agent`, joined by an underlay veth, a real etcd inside node 0 as
//! the store), and two figures over them.
//!
//! - Datapath: a pod on node 0 and a pod on node 1, joined two ways and
//!   measured as datapath.rs measures the same-node paths (iperf3 TCP
//!   throughput, sockperf TCP ping-pong rate and latency, CPU per
//!   transaction), the paths interleaved within each repetition. `ratchet`:
//!   a topology link whose program redirects into the node's one external
//!   VXLAN device (UDP 4789). `vxlan-per-link`: the older approach (ratchet-cni's
//!   Go prototype), one kernel VXLAN device per link, made in the node with
//!   the link's VNI and the other node as its remote, then moved into the
//!   pod; it uses UDP 4790, since ratchet's device already holds 4789 in each
//!   node and the kernel refuses a second VXLAN socket on that port. Both
//!   have MTU 1450.
//! - Peer-appears-to-traffic: pod A is attached and sends a small UDP
//!   datagram to pod B's link address every millisecond, from a socket made
//!   in A's netns; a socket in B's netns, bound before B's ADD, waits for the
//!   first. B's ADD is then run; the figure is the time from that ADD
//!   returning to A's first datagram arriving in B (negative when it arrived
//!   before the ADD returned), and also from the ADD starting. Both ends have
//!   fixed MACs and A a permanent neighbour entry for B, so no ARP timer is
//!   in it. Between samples B is deleted and the next sample waits until A's
//!   entry is gone from its node's peers map. Cross-node (B on node 1: A's
//!   side is wired by node 0's agent, from its etcd watch) and same-node
//!   (both on node 0: B's ADD wires both sides itself).
//!
//! The plugin and the agent run inside their node with `nsenter --net`, as
//! the node's runtime would run them: `ip netns exec` would remount /sys and
//! hide the host's bpffs, where the pins live. etcd and the agents are
//! stopped as soon as the figures are taken; everything else is named after
//! the lab's prefix, so the lab's guard removes it: netns, and the pin roots
//! beside the lab's.

use std::{
    fs::{self, File},
    io,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path as FsPath, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{
    Lab, Plan,
    datapath::{self, Path, PathRuns},
};
use crate::util::{self, command};

#[derive(Debug)]
pub struct CrossNode {
    /// Pods on two nodes: `ratchet` and `vxlan-per-link`, in that order;
    /// units as in the same-node datapath (Gbit/s, round trips per s, µs).
    pub paths: Vec<PathRuns>,
    /// Peer-appears-to-traffic, B on the other node: ms from B's ADD
    /// returning to A's first datagram arriving in B (negative: it arrived
    /// before the ADD returned). One per sample.
    pub peer_to_traffic_ms: Vec<f64>,
    /// The same samples, from B's ADD starting (the ADD itself included).
    pub peer_to_traffic_from_add_start_ms: Vec<f64>,
    /// Peer-appears-to-traffic with both pods on one node, ms as above.
    pub same_node_peer_to_traffic_ms: Vec<f64>,
    pub same_node_peer_to_traffic_from_add_start_ms: Vec<f64>,
}

/// The underlay address of node `i`: a /24 of its own, clear of the
/// same-node bench's ranges (10.201-10.205 for links, 10.202/16 and
/// 10.203/16 for bridge and ptp).
const UNDERLAY_IPS: [&str; 2] = ["10.209.0.1", "10.209.0.2"];
const UNDERLAY_DEVICE: &str = "ul0";
const ETCD_PORT: u16 = 2379;
/// The pods' interface on every link.
const IFNAME: &str = "r0";
/// ratchet's default on a multi-node node: 1500 less VXLAN's 50 bytes.
const LINK_MTU: &str = "1450";

/// The ratchet datapath link, A on node 0 and B on node 1.
const RATCHET_PODS: [&str; 2] = ["xdpa", "xdpb"];
const RATCHET_IPS: [&str; 2] = ["10.210.0.1/24", "10.210.0.2/24"];

/// The kernel VXLAN device of the baseline link, the same in both pods.
const KERNEL_VXLAN_DEVICE: &str = "vx4210";
const KERNEL_VXLAN_VNI: &str = "4210";
const KERNEL_VXLAN_PORT: &str = "4790";
const KERNEL_VXLAN_IPS: [&str; 2] = ["10.210.1.1/24", "10.210.1.2/24"];

/// A link for the peer-appears-to-traffic probe: A (`[0]`) sends, B (`[1]`)
/// is added again and again.
struct PeerLink {
    name: &'static str,
    pods: [&'static str; 2],
    ips: [&'static str; 2],
    macs: [&'static str; 2],
    /// The rig node each pod is on.
    nodes: [usize; 2],
}

const CROSS_NODE_PEER: PeerLink = PeerLink {
    name: "xpeer",
    pods: ["xpa", "xpb"],
    ips: ["10.210.2.1", "10.210.2.2"],
    macs: ["02:72:62:02:00:01", "02:72:62:02:00:02"],
    nodes: [0, 1],
};

const SAME_NODE_PEER: PeerLink = PeerLink {
    name: "speer",
    pods: ["spa", "spb"],
    ips: ["10.210.3.1", "10.210.3.2"],
    macs: ["02:72:62:03:00:01", "02:72:62:03:00:02"],
    nodes: [0, 0],
};

/// Where B listens for A's datagrams, and how often A sends one: the
/// figure's resolution.
const PROBE_PORT: u16 = 7777;
const SEND_EVERY: Duration = Duration::from_millis(1);
/// Far beyond the 50 ms target: a sample that waits this long is broken.
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(5);
const UNWIRE_TIMEOUT: Duration = Duration::from_secs(5);
const ETCD_TIMEOUT: Duration = Duration::from_secs(10);

pub fn measure(lab: &mut Lab, plan: &Plan) -> anyhow::Result<CrossNode> {
    let rig = Rig::new(lab)?;
    rig.apply_topology(lab)?;
    let paths = measure_paths(lab, plan, &rig)?;
    let samples = if plan.quick { 3 } else { 20 };
    println!("  peer-appears-to-traffic, B on the other node ({samples} samples)");
    let (peer_to_traffic_ms, peer_to_traffic_from_add_start_ms) =
        peer_to_traffic(lab, &rig, &CROSS_NODE_PEER, samples)?;
    println!("  peer-appears-to-traffic, both on one node ({samples} samples)");
    let (same_node_peer_to_traffic_ms, same_node_peer_to_traffic_from_add_start_ms) =
        peer_to_traffic(lab, &rig, &SAME_NODE_PEER, samples)?;
    // etcd and the agents stop here, not at the lab's cleanup: see `Rig::daemons`.
    drop(rig);
    Ok(CrossNode {
        paths,
        peer_to_traffic_ms,
        peer_to_traffic_from_add_start_ms,
        same_node_peer_to_traffic_ms,
        same_node_peer_to_traffic_from_add_start_ms,
    })
}

/// Two nodes joined by an underlay, etcd in node 0, an agent in each.
struct Rig {
    nodes: Vec<Node>,
    etcd: String,
    /// etcd and the agents, which keep working (rounds every 20 ms, etcd's
    /// ticks) while idle: dropping the rig kills them, after the last sample
    /// or on an error or a panic, so that they weigh on no later
    /// measurement. The lab's guard removes the rest (netns, pins).
    daemons: Vec<Child>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The agents before the etcd they talk to.
        for mut daemon in self.daemons.drain(..).rev() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}

struct Node {
    netns: String,
    ip: &'static str,
    state_dir: PathBuf,
    pin_root: PathBuf,
    /// The network config the node's runtime hands the plugin.
    conf: Value,
    /// A script that runs the plugin inside the node, as its runtime would:
    /// `Lab::cni` runs it in the plugin's place.
    plugin: PathBuf,
}

impl Rig {
    fn new(lab: &mut Lab) -> anyhow::Result<Rig> {
        let netns = [lab.add_netns("n0")?, lab.add_netns("n1")?];
        join_underlay(&netns)?;
        let etcd = format!("http://{}:{ETCD_PORT}", UNDERLAY_IPS[0]);
        let mut rig = Rig { nodes: Vec::new(), etcd, daemons: Vec::new() };
        rig.daemons.push(start_etcd(lab, &netns[0], &rig.etcd)?);
        // Seen from the other node, as its plugin and agent will reach it.
        wait_etcd_healthy(lab, &netns[1], &rig.etcd)?;
        for (netns, ip) in netns.into_iter().zip(UNDERLAY_IPS) {
            let node = Node::new(lab, netns, ip, &rig.etcd)?;
            rig.daemons.push(node.start_agent(lab)?);
            rig.nodes.push(node);
        }
        Ok(rig)
    }

    /// The ratchet datapath link and the two probe links, each end with its
    /// MAC where the probe needs one.
    fn apply_topology(&self, lab: &Lab) -> anyhow::Result<()> {
        let end = |pod: &str, ip: &str| json!({ "pod": format!("bench/{pod}"), "ifname": IFNAME, "ips": [ip] });
        let mut links = vec![json!({
            "name": format!("{}-xdp", lab.prefix),
            "a": end(RATCHET_PODS[0], RATCHET_IPS[0]),
            "b": end(RATCHET_PODS[1], RATCHET_IPS[1]),
        })];
        for peer in [&CROSS_NODE_PEER, &SAME_NODE_PEER] {
            let [a, b] = [0, 1].map(|i| {
                let mut end = end(peer.pods[i], &format!("{}/24", peer.ips[i]));
                end["mac"] = peer.macs[i].into();
                end
            });
            links.push(json!({ "name": format!("{}-{}", lab.prefix, peer.name), "a": a, "b": b }));
        }
        let path = lab.temp.join("crossnode-topology.json");
        fs::write(&path, serde_json::to_string_pretty(&json!({ "links": links }))?)
            .with_context(|| format!("writing {}", path.display()))?;
        util::run(
            // The first node's own state dir and pins, never the machine's.
            in_node(&self.nodes[0].netns, &lab.bin)
                .arg("--state-dir")
                .arg(&self.nodes[0].state_dir)
                .arg("--pin-root")
                .arg(&self.nodes[0].pin_root)
                .args(["--etcd-endpoints", &self.etcd, "topology", "apply"])
                .arg(&path),
        )
    }
}

impl Node {
    /// Its state dir, config and plugin script under the lab's temp dir; its
    /// pin root beside the lab's (`<prefix>-n0`), where the guard finds it.
    fn new(lab: &Lab, netns: String, ip: &'static str, etcd: &str) -> anyhow::Result<Node> {
        let dir = lab.temp.join(format!("crossnode-{netns}"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pin_root = lab.pin_root.with_file_name(&netns);
        let state_dir = dir.join("state");
        let conf = json!({
            "cniVersion": "1.0.0", "name": "rbench-crossnode", "type": "ratchet",
            "state_dir": state_dir, "pin_root": pin_root,
            "node_name": netns, "node_ip": ip, "etcd_endpoints": [etcd],
        });
        let plugin = dir.join("ratchet");
        let script = format!("#!/bin/sh\nexec nsenter --net=/run/netns/{netns} {} \"$@\"\n", lab.bin.display());
        fs::write(&plugin, script).with_context(|| format!("writing {}", plugin.display()))?;
        fs::set_permissions(&plugin, fs::Permissions::from_mode(0o755))?;
        Ok(Node { netns, ip, state_dir, pin_root, conf, plugin })
    }

    fn start_agent(&self, lab: &Lab) -> anyhow::Result<Child> {
        let config = self.plugin.with_file_name("agent.json");
        fs::write(&config, self.conf.to_string()).with_context(|| format!("writing {}", config.display()))?;
        let mut agent = in_node(&self.netns, &lab.bin);
        agent.arg("agent").arg("--config").arg(&config);
        spawn_daemon(agent)
    }

    /// ADDs `pod` (a fresh netns) on this node; returns its netns and the
    /// ifindex of its host veth, the key of its entry in the peers map.
    fn add_pod(&self, lab: &mut Lab, pod: &str) -> anyhow::Result<(String, u64)> {
        let netns = lab.add_netns(&format!("x-{pod}"))?;
        let result = self.cni(lab, "ADD", &netns, pod)?;
        let result: Value = serde_json::from_str(&result).context("the ADD result is not JSON")?;
        let host_veth = result["interfaces"][0]["name"].as_str().context("the ADD result names no host veth")?;
        let link = util::stdout_of(command("ip").args(["-n", &self.netns, "-j", "link", "show", "dev", host_veth]))?;
        let link: Value = serde_json::from_str(&link)?;
        let ifindex = link[0]["ifindex"].as_u64().with_context(|| format!("no ifindex for {host_veth}: {link}"))?;
        Ok((netns, ifindex))
    }

    /// A CNI verb for `pod` on this node, run again while the answer is "try
    /// again later" (11: another writer, e.g. an agent, committed to the
    /// records it read first), as kubelet does. Returns its stdout.
    fn cni(&self, lab: &Lab, verb: &str, netns: &str, pod: &str) -> anyhow::Result<String> {
        for attempt in 1.. {
            match lab.cni(&self.plugin, verb, netns, pod, &self.conf) {
                Ok((_, stdout)) => return Ok(stdout),
                // Lab::cni's error carries the plugin's JSON error.
                Err(error) if attempt < 10 && format!("{error:#}").contains(r#""code":11,"#) => {
                    println!("    ({verb} {pod}: try again later; retrying)");
                    thread::sleep(Duration::from_millis(100));
                }
                Err(error) => return Err(error),
            }
        }
        unreachable!("the loop returns")
    }

    /// Whether this node's peers map has an entry for the host veth `ifindex`.
    fn wired(&self, ifindex: u64) -> anyhow::Result<bool> {
        let pin = self.pin_root.join("peers");
        let text = util::stdout_of(command("bpftool").args(["-j", "map", "dump", "pinned"]).arg(&pin))?;
        let entries: Vec<Value> = serde_json::from_str(&text).with_context(|| format!("bpftool printed: {text}"))?;
        Ok(entries.iter().any(|entry| entry["formatted"]["key"].as_u64() == Some(ifindex)))
    }

    fn wait_unwired(&self, ifindex: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + UNWIRE_TIMEOUT;
        while self.wired(ifindex)? {
            if Instant::now() >= deadline {
                bail!("host veth {ifindex} in {} is still wired {UNWIRE_TIMEOUT:?} after its peer's DEL", self.netns);
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

/// Runs `ip ARGS`, shown, failing on non-zero.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    util::run(command("ip").args(args))
}

/// `program` run inside a node: `nsenter --net` keeps the host's mounts, and
/// with them the bpffs the pins are on.
fn in_node(netns: &str, program: &FsPath) -> Command {
    let mut cmd = command("nsenter");
    cmd.arg(format!("--net=/run/netns/{netns}")).arg(program);
    cmd
}

/// One veth between the two nodes, each end addressed and up, and each
/// node's loopback up (etcd's peer URL and the agents' metrics are on it).
fn join_underlay(netns: &[String; 2]) -> anyhow::Result<()> {
    let [n0, n1] = netns.each_ref().map(String::as_str);
    ip(&["-n", n0, "link", "add", UNDERLAY_DEVICE, "type", "veth", "peer", "name", UNDERLAY_DEVICE, "netns", n1])?;
    for (ns, address) in netns.iter().zip(UNDERLAY_IPS) {
        ip(&["-n", ns, "address", "add", &format!("{address}/24"), "dev", UNDERLAY_DEVICE])?;
        ip(&["-n", ns, "link", "set", UNDERLAY_DEVICE, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

/// A single-member etcd inside `netns`, serving clients on the underlay
/// (`client`) and its peer port on loopback; its data under the lab's temp
/// dir; the short election timeout of the tests, so that it leads within a
/// fraction of a second.
fn start_etcd(lab: &Lab, netns: &str, client: &str) -> anyhow::Result<Child> {
    let peer = "http://127.0.0.1:2380";
    let mut etcd = lab.exec(netns, None);
    etcd.args(["etcd", "--name", "n0", "--data-dir"])
        .arg(lab.temp.join("crossnode-etcd"))
        .args(["--listen-client-urls", client, "--advertise-client-urls", client])
        .args(["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer])
        .args(["--initial-cluster", &format!("n0={peer}")])
        .args(["--heartbeat-interval=10", "--election-timeout=100"]);
    spawn_daemon(etcd)
}

/// Starts a process of the rig, quietly (`ip netns exec` and `nsenter`
/// exec it: the child is the daemon itself).
fn spawn_daemon(mut cmd: Command) -> anyhow::Result<Child> {
    println!("+ {} &", util::show(&cmd));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", util::show(&cmd)))
}

fn wait_etcd_healthy(lab: &Lab, netns: &str, endpoint: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + ETCD_TIMEOUT;
    loop {
        let mut health = lab.exec(netns, None);
        health.args(["etcdctl", "--endpoints", endpoint, "--dial-timeout=200ms", "endpoint", "health"]);
        if util::probe(&mut health)?.status.success() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("etcd at {endpoint} is not healthy after {ETCD_TIMEOUT:?}, seen from {netns}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Both datapaths between node 0 and node 1, servers on node 1, measured
/// as datapath.rs measures the same-node paths.
fn measure_paths(lab: &mut Lab, plan: &Plan, rig: &Rig) -> anyhow::Result<Vec<PathRuns>> {
    let paths = [ratchet_path(lab, rig)?, kernel_vxlan_path(lab, rig)?];
    datapath::measure_interleaved(lab, plan, &paths)
}

/// A ratchet link across the nodes: A ADDed on node 0, B on node 1.
fn ratchet_path(lab: &mut Lab, rig: &Rig) -> anyhow::Result<Path> {
    let (client, _) = rig.nodes[0].add_pod(lab, RATCHET_PODS[0])?;
    let (server, _) = rig.nodes[1].add_pod(lab, RATCHET_PODS[1])?;
    let server_ip = RATCHET_IPS[1].split('/').next().unwrap_or_default().to_owned();
    Ok(Path { name: "ratchet", client, server, server_ip })
}

/// The baseline: in each node a VXLAN device for this one link (its VNI,
/// the other node as remote), moved into the node's pod.
fn kernel_vxlan_path(lab: &mut Lab, rig: &Rig) -> anyhow::Result<Path> {
    let pods = [lab.add_netns("x-kva")?, lab.add_netns("x-kvb")?];
    for (i, (node, pod)) in rig.nodes.iter().zip(&pods).enumerate() {
        let remote = rig.nodes[1 - i].ip;
        util::run(
            command("ip")
                .args(["-n", &node.netns, "link", "add", KERNEL_VXLAN_DEVICE, "type", "vxlan", "id", KERNEL_VXLAN_VNI])
                .args(["local", node.ip, "remote", remote, "dstport", KERNEL_VXLAN_PORT, "dev", UNDERLAY_DEVICE]),
        )?;
        ip(&["-n", &node.netns, "link", "set", KERNEL_VXLAN_DEVICE, "netns", pod])?;
        ip(&["-n", pod, "address", "add", KERNEL_VXLAN_IPS[i], "dev", KERNEL_VXLAN_DEVICE])?;
        ip(&["-n", pod, "link", "set", KERNEL_VXLAN_DEVICE, "mtu", LINK_MTU, "up"])?;
    }
    let [client, server] = pods;
    let server_ip = KERNEL_VXLAN_IPS[1].split('/').next().unwrap_or_default().to_owned();
    Ok(Path { name: "vxlan-per-link", client, server, server_ip })
}

/// `samples` peer-appears-to-traffic samples over `link`: A attached and
/// sending throughout, B deleted and added again for each. Returns the
/// samples from B's ADD returning and from its start, in ms.
fn peer_to_traffic(lab: &mut Lab, rig: &Rig, link: &PeerLink, samples: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let [a_node, b_node] = link.nodes.map(|i| &rig.nodes[i]);
    let [a_pod, b_pod] = link.pods;
    let (a_netns, a_host_veth) = a_node.add_pod(lab, a_pod)?;
    ip(&["-n", &a_netns, "neigh", "replace", link.ips[1], "lladdr", link.macs[1], "dev", IFNAME, "nud", "permanent"])?;
    let b_netns = lab.add_netns(&format!("x-{b_pod}"))?;
    let b_ip: Ipv4Addr = link.ips[1].parse()?;
    let _sending = Sender::start(&a_netns, SocketAddr::from((b_ip, PROBE_PORT)))?;
    let (mut after_return, mut after_start) = (Vec::new(), Vec::new());
    for sample in 0..samples {
        // The previous DEL of B has reached A's node: A's frames are dropped
        // again, so the next arrival is the new attachment's.
        a_node.wait_unwired(a_host_veth)?;
        let (returned, started) = time_attach(lab, b_node, &b_netns, b_pod)?;
        println!("    sample {sample}: {returned:6.2} ms after B's ADD returned, {started:6.2} ms after it started");
        after_return.push(returned);
        after_start.push(started);
        b_node.cni(lab, "DEL", &b_netns, b_pod)?;
    }
    Ok((after_return, after_start))
}

/// ADDs `pod` on `node` while a socket in its netns waits for the first
/// datagram; returns ms from the ADD returning and from its start to that
/// datagram's arrival.
fn time_attach(lab: &Lab, node: &Node, netns: &str, pod: &str) -> anyhow::Result<(f64, f64)> {
    let socket = in_netns(netns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PROBE_PORT)))?;
    socket.set_read_timeout(Some(TRAFFIC_TIMEOUT))?;
    let first_arrival = thread::spawn(move || socket.recv(&mut [0; 64]).map(|_| Instant::now()));
    let started = Instant::now();
    let added = node.cni(lab, "ADD", netns, pod);
    let returned = Instant::now();
    let arrived = first_arrival.join().expect("the receiver never panics");
    added?;
    let arrived = arrived.with_context(|| format!("no datagram reached {pod} within {TRAFFIC_TIMEOUT:?}"))?;
    Ok((ms_between(returned, arrived), ms_between(started, arrived)))
}

/// Signed: negative when `to` came first.
fn ms_between(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(later) => later.as_secs_f64() * 1e3,
        None => -(from - to).as_secs_f64() * 1e3,
    }
}

/// A datagram to `to` every `SEND_EVERY` from a socket in A's netns, until
/// dropped (on any exit from the probe, an error's included).
struct Sender {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sender {
    fn start(netns: &str, to: SocketAddr) -> anyhow::Result<Sender> {
        let socket = in_netns(netns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                // A send that fails costs one datagram: the probe needs the
                // steady rate, not every datagram.
                let _ = socket.send_to(b"ratchet", to);
                thread::sleep(SEND_EVERY);
            }
        });
        Ok(Sender { stop, thread: Some(thread) })
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs `make` on a thread that has joined `netns`: a socket made there
/// stays in that netns whichever thread uses it later.
fn in_netns<T: Send + 'static>(
    netns: &str,
    make: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = FsPath::new("/run/netns").join(netns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let made = thread::spawn(move || {
        enter_netns(&file)?;
        make()
    })
    .join()
    .expect("the netns thread never panics");
    made.with_context(|| format!("in netns {netns}"))
}

/// setns(2) for the calling thread, from the C library std already links:
/// xtask has no libc or nix dependency, so that it builds before setup.
fn enter_netns(netns: &File) -> io::Result<()> {
    const CLONE_NEWNET: std::ffi::c_int = 0x4000_0000;
    unsafe extern "C" {
        fn setns(fd: std::ffi::c_int, nstype: std::ffi::c_int) -> std::ffi::c_int;
    }
    // SAFETY: setns only reads the descriptor, which `netns` keeps open.
    if unsafe { setns(netns.as_raw_fd(), CLONE_NEWNET) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
