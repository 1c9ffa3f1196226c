//! Cross-node: two "nodes" on this machine, the rig of
//! `ratchet_harness::rig` that tests/tests/multinode.rs uses too (each a netns
//! with its own host veths, pin root, state dir and `ratchet agent`, joined
//! by an underlay veth, a real etcd inside node 0 as the store), and two
//! figures over them.
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
//! the node's runtime would run them (see the harness's rig). etcd and the
//! agents are stopped, and the rig's pins and state removed, as soon as the
//! figures are taken; the nodes' and pods' netns are the lab's, named after
//! its prefix, so the lab's guard removes them.

use std::{
    fs::File,
    io,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::Path as FsPath,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use ratchet_harness::rig::{Rig, RigOptions, UNDERLAY_DEVICE};
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

pub fn measure(lab: &mut Lab, plan: &Plan) -> anyhow::Result<CrossNode> {
    let rig = start_rig(lab)?;
    apply_topology(lab, &rig)?;
    let paths = measure_paths(lab, plan, &rig)?;
    let samples = if plan.quick { 3 } else { 20 };
    println!("  peer-appears-to-traffic, B on the other node ({samples} samples)");
    let (peer_to_traffic_ms, peer_to_traffic_from_add_start_ms) =
        peer_to_traffic(lab, &rig, &CROSS_NODE_PEER, samples)?;
    println!("  peer-appears-to-traffic, both on one node ({samples} samples)");
    let (same_node_peer_to_traffic_ms, same_node_peer_to_traffic_from_add_start_ms) =
        peer_to_traffic(lab, &rig, &SAME_NODE_PEER, samples)?;
    // etcd and the agents stop here, not at the lab's cleanup: they keep
    // working (rounds every 20 ms, etcd's ticks) while idle, and would weigh
    // on the later measurements.
    drop(rig);
    Ok(CrossNode {
        paths,
        peer_to_traffic_ms,
        peer_to_traffic_from_add_start_ms,
        same_node_peer_to_traffic_ms,
        same_node_peer_to_traffic_from_add_start_ms,
    })
}

/// Two nodes joined by an underlay, etcd in node 0, an agent in each; the
/// nodes' netns are the lab's. Dropping the rig (after the last sample, or
/// on an error or a panic) stops the agents and etcd.
fn start_rig(lab: &mut Lab) -> anyhow::Result<Rig> {
    let netns = [lab.add_netns("n0")?, lab.add_netns("n1")?];
    let mut rig = Rig::new(RigOptions {
        bin: lab.bin.clone(),
        netns,
        underlay: UNDERLAY_IPS.map(String::from),
        network: "rbench-crossnode".into(),
        extra_config: json!({}),
        dir: lab.temp.join("crossnode"),
        echo: Some(|cmd| println!("+ {}", util::show(cmd))),
    })?;
    rig.start_agent(0)?;
    rig.start_agent(1)?;
    Ok(rig)
}

/// The ratchet datapath link and the two probe links, each end with its
/// MAC where the probe needs one.
fn apply_topology(lab: &Lab, rig: &Rig) -> anyhow::Result<()> {
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
    rig.apply(&json!({ "links": links }))
}

/// ADDs `pod` (a fresh netns) on node `node`; returns its netns and the
/// ifindex of its host veth, the key of its entry in the peers map.
fn add_pod(lab: &mut Lab, rig: &Rig, node: usize, pod: &str) -> anyhow::Result<(String, u64)> {
    let netns = lab.add_netns(&format!("x-{pod}"))?;
    let result = cni(lab, rig, node, "ADD", &netns, pod)?;
    let result: Value = serde_json::from_str(&result).context("the ADD result is not JSON")?;
    let host_veth = result["interfaces"][0]["name"].as_str().context("the ADD result names no host veth")?;
    let node_netns = &rig.node(node).netns;
    let link = util::stdout_of(command("ip").args(["-n", node_netns, "-j", "link", "show", "dev", host_veth]))?;
    let link: Value = serde_json::from_str(&link)?;
    let ifindex = link[0]["ifindex"].as_u64().with_context(|| format!("no ifindex for {host_veth}: {link}"))?;
    Ok((netns, ifindex))
}

/// A CNI verb for `pod` on node `node`, run again while the answer is "try
/// again later" (11: another writer, e.g. an agent, committed to the records
/// it read first), as kubelet does. Returns its stdout.
fn cni(lab: &Lab, rig: &Rig, node: usize, verb: &str, netns: &str, pod: &str) -> anyhow::Result<String> {
    let env = lab.cni_env(&lab.bin, verb, netns, pod);
    let reply = rig.cni(node, &env)?.checked();
    Ok(reply.with_context(|| format!("CNI {verb} for {pod} on {}", rig.node(node).name))?.stdout)
}

/// Waits until node `node`'s peers map has no entry for the host veth
/// `ifindex`.
fn wait_unwired(rig: &Rig, node: usize, ifindex: u64) -> anyhow::Result<()> {
    let wired = |peers: &[Value]| peers.iter().any(|entry| entry["formatted"]["key"].as_u64() == Some(ifindex));
    if !rig.peers_until(node, UNWIRE_TIMEOUT, |peers| !wired(peers)) {
        bail!("host veth {ifindex} in {} is still wired {UNWIRE_TIMEOUT:?} after its peer's DEL", rig.node(node).netns);
    }
    Ok(())
}

/// Runs `ip ARGS`, shown, failing on non-zero.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    util::run(command("ip").args(args))
}

/// Both datapaths between node 0 and node 1, servers on node 1, measured
/// as datapath.rs measures the same-node paths.
fn measure_paths(lab: &mut Lab, plan: &Plan, rig: &Rig) -> anyhow::Result<Vec<PathRuns>> {
    let paths = [ratchet_path(lab, rig)?, kernel_vxlan_path(lab, rig)?];
    datapath::measure_interleaved(lab, plan, &paths)
}

/// A ratchet link across the nodes: A ADDed on node 0, B on node 1.
fn ratchet_path(lab: &mut Lab, rig: &Rig) -> anyhow::Result<Path> {
    let (client, _) = add_pod(lab, rig, 0, RATCHET_PODS[0])?;
    let (server, _) = add_pod(lab, rig, 1, RATCHET_PODS[1])?;
    let server_ip = RATCHET_IPS[1].split('/').next().unwrap_or_default().to_owned();
    Ok(Path { name: "ratchet", client, server, server_ip })
}

/// The baseline: in each node a VXLAN device for this one link (its VNI,
/// the other node as remote), moved into the node's pod.
fn kernel_vxlan_path(lab: &mut Lab, rig: &Rig) -> anyhow::Result<Path> {
    let pods = [lab.add_netns("x-kva")?, lab.add_netns("x-kvb")?];
    for (i, pod) in pods.iter().enumerate() {
        let (node, remote) = (rig.node(i), &rig.node(1 - i).ip);
        util::run(
            command("ip")
                .args(["-n", &node.netns, "link", "add", KERNEL_VXLAN_DEVICE, "type", "vxlan", "id", KERNEL_VXLAN_VNI])
                .args(["local", &node.ip, "remote", remote, "dstport", KERNEL_VXLAN_PORT, "dev", UNDERLAY_DEVICE]),
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
    let [a_node, b_node] = link.nodes;
    let [a_pod, b_pod] = link.pods;
    let (a_netns, a_host_veth) = add_pod(lab, rig, a_node, a_pod)?;
    ip(&["-n", &a_netns, "neigh", "replace", link.ips[1], "lladdr", link.macs[1], "dev", IFNAME, "nud", "permanent"])?;
    let b_netns = lab.add_netns(&format!("x-{b_pod}"))?;
    let b_ip: Ipv4Addr = link.ips[1].parse()?;
    let _sending = Sender::start(&a_netns, SocketAddr::from((b_ip, PROBE_PORT)))?;
    let (mut after_return, mut after_start) = (Vec::new(), Vec::new());
    for sample in 0..samples {
        // The previous DEL of B has reached A's node: A's frames are dropped
        // again, so the next arrival is the new attachment's.
        wait_unwired(rig, a_node, a_host_veth)?;
        let (returned, started) = time_attach(lab, rig, b_node, &b_netns, b_pod)?;
        println!("    sample {sample}: {returned:6.2} ms after B's ADD returned, {started:6.2} ms after it started");
        after_return.push(returned);
        after_start.push(started);
        cni(lab, rig, b_node, "DEL", &b_netns, b_pod)?;
    }
    Ok((after_return, after_start))
}

/// ADDs `pod` on node `node` while a socket in its netns waits for the
/// first datagram; returns ms from the ADD returning and from its start to
/// that datagram's arrival.
fn time_attach(lab: &Lab, rig: &Rig, node: usize, netns: &str, pod: &str) -> anyhow::Result<(f64, f64)> {
    let socket = in_netns(netns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PROBE_PORT)))?;
    socket.set_read_timeout(Some(TRAFFIC_TIMEOUT))?;
    let first_arrival = thread::spawn(move || socket.recv(&mut [0; 64]).map(|_| Instant::now()));
    let started = Instant::now();
    let added = cni(lab, rig, node, "ADD", netns, pod);
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

/// setns(2) for the calling thread only.
fn enter_netns(netns: &File) -> io::Result<()> {
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}
