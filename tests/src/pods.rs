//! Pods as network namespaces: [`Pod`] (made fresh, deleted on drop), what
//! runs and what is seen inside one, TCP across a link ([`tcp_transfer`],
//! [`pattern`]), and a pod's place in a topology ([`end`]) and in the
//! runtime's bookkeeping ([`container_of`]).

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd,
    process::{Command, Output},
    time::Duration,
};

use serde_json::{Value, json};

use crate::util::{eventually, run, unique};

/// A pod's network namespace, deleted on drop.
pub struct Pod {
    pub netns: String,
    pub namespace: String,
    pub name: String,
}

impl Pod {
    /// A pod `namespace/name` with a fresh netns.
    pub fn new(namespace: &str, name: &str) -> Self {
        let netns = unique("rtt");
        run("ip", &["netns", "add", &netns]);
        Self { netns, namespace: namespace.into(), name: name.into() }
    }

    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }

    /// Runs a command inside the pod's netns.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", &self.netns]).args(args).output().expect("ip netns exec")
    }

    /// True when one ping to `ip` is answered within a second.
    pub fn ping(&self, ip: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "1", ip]).status.success()
    }

    /// Pings until answered, for at most `tries` seconds.
    pub fn ping_eventually(&self, ip: &str, tries: u32) -> bool {
        (0..tries).any(|_| self.ping(ip))
    }

    /// Runs `f` on a thread that entered this pod's netns.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let netns = File::open(self.netns_path()).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// The interfaces inside the pod, as `ip -j link` gives them.
    pub fn links(&self) -> Vec<Value> {
        serde_json::from_slice(&self.exec(&["ip", "-j", "link", "show"]).stdout).unwrap_or_default()
    }

    /// True once the pod has no interface of this name (within five
    /// seconds): a DEL'd link end goes with its host veth, in the background.
    pub fn link_gone(&self, ifname: &str) -> bool {
        eventually(|| self.link(ifname).is_none())
    }

    /// An interface inside the pod, if it exists.
    pub fn link(&self, ifname: &str) -> Option<Value> {
        self.links().into_iter().find(|l| l["ifname"] == ifname)
    }

    /// The global addresses of an interface inside the pod, as `addr/prefix`.
    pub fn addresses(&self, ifname: &str) -> Vec<String> {
        let out = self.exec(&["ip", "-j", "address", "show", "dev", ifname, "scope", "global"]);
        let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        links
            .iter()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            // iproute2 leaves an empty object for each address the scope filter drops.
            .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
            .collect()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

/// The container id the tests give a pod's sandbox.
pub fn container_of(pod: &Pod) -> String {
    format!("c-{}", pod.netns)
}

/// One link end for a topology.
pub fn end(pod: &Pod, ifname: &str, ips: &[&str]) -> Value {
    json!({"pod": format!("{}/{}", pod.namespace, pod.name), "ifname": ifname, "ips": ips})
}

/// Sends `bytes` over TCP from `client` to `server` at `ip`, and returns
/// what arrived.
pub fn tcp_transfer(server: &Pod, client: &Pod, ip: &str, bytes: usize) -> Vec<u8> {
    let addr: SocketAddr =
        format!("{}:5201", if ip.contains(':') { format!("[{ip}]") } else { ip.into() }).parse().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = server.within(move || {
        let listener = TcpListener::bind(addr).expect("bind");
        ready_tx.send(()).unwrap();
        let (mut stream, _) = listener.accept().expect("accept");
        let mut got = Vec::new();
        stream.read_to_end(&mut got).expect("read");
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("server listening");
    let payload = pattern(bytes);
    client
        .within(move || {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            stream.write_all(&payload).expect("write");
        })
        .join()
        .unwrap();
    receiver.join().unwrap()
}

/// Bytes that are not all the same, so a corrupted stream shows.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}
