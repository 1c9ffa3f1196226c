//! `cargo xtask demo`: ratchet's main job, end to end, on two throwaway pods.
//!
//! Each pod is a network namespace. The plugin is run the way a runtime runs
//! it through libcni: its entry of the conflist, with the list's `name` and
//! `cniVersion` injected, on stdin, and the `CNI_*` variables kubelet and
//! containerd set. Everything the demo makes has a name with our pid in it,
//! and a guard removes it all, even when a step fails.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail, ensure};
use ratchet_harness::runtime::{self, container_id, pod_args, verb_env};
use serde_json::{Value, json};

use crate::{
    setup,
    util::{self, command},
};

const NETWORK: &str = "ratchet-demo";
const CNI_VERSION: &str = "1.0.0";
const IPERF_PORT: &str = "5201";

/// One side of the demo link: a pod and what the topology gives it.
struct Pod {
    name: &'static str,
    netns: String,
    container_id: String,
    ifname: &'static str,
    ipv4: &'static str,
    ipv6: &'static str,
}

impl Pod {
    fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }

    fn exec(&self) -> Command {
        let mut cmd = command("ip");
        cmd.args(["netns", "exec", &self.netns]);
        cmd
    }

    fn addr(ip: &str) -> &str {
        ip.split('/').next().unwrap_or(ip)
    }
}

/// Everything the demo made, removed on drop: a failed step leaves nothing.
struct Guard {
    netns: Vec<String>,
    pin_root: PathBuf,
    temp: PathBuf,
    server: Option<Child>,
}

impl Guard {
    /// Removes what is still there and says what it removed.
    fn cleanup(&mut self) {
        if let Some(mut server) = self.server.take() {
            if matches!(server.try_wait(), Ok(None)) {
                println!("  stopping iperf3 server (pid {})", server.id());
                let _ = server.kill();
            }
            let _ = server.wait();
        }
        for netns in &self.netns {
            if Path::new("/run/netns").join(netns).exists() {
                println!("  ip netns del {netns}");
                let _ = command("ip").args(["netns", "del", netns]).status();
            }
        }
        if self.pin_root.exists() {
            println!("  rm -r {}", self.pin_root.display());
            let _ = fs::remove_dir_all(&self.pin_root);
        }
        if self.temp.exists() {
            println!("  rm -r {}", self.temp.display());
            let _ = fs::remove_dir_all(&self.temp);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Numbered step headers, so the output reads as a walkthrough.
struct Steps(u32);

impl Steps {
    fn next(&mut self, title: &str) {
        self.0 += 1;
        println!("\n==> {}. {title}", self.0);
    }
}

pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut steps = Steps(0);
    steps.next("Set up the machine");
    setup::run()?;
    util::require_root("the demo (netns, eBPF, bpffs)")?;
    sweep_leftovers()?;

    steps.next("Build the plugin (quietly: about 1.5 min the first time, then a second)");
    // Quiet: cargo replays the build script's progress lines (aya-build's
    // nested eBPF build, as warnings) on every build, even a no-op one.
    util::run(util::cargo().args(["build", "--quiet", "-p", "ratchet-plugin"]))?;
    let bin = util::target_dir().join("debug").join("ratchet");
    let bin = bin.canonicalize().with_context(|| format!("the build left no {}", bin.display()))?;

    let pid = std::process::id();
    let prefix = format!("ratchet-demo-{pid}");
    let pods = [
        Pod {
            name: "alpha",
            netns: format!("{prefix}-a"),
            container_id: unique_container_id(&format!("{prefix}-alpha")),
            ifname: "in1",
            ipv4: "10.99.0.1/24",
            ipv6: "fd99::1/64",
        },
        Pod {
            name: "beta",
            netns: format!("{prefix}-b"),
            container_id: unique_container_id(&format!("{prefix}-beta")),
            ifname: "in2",
            ipv4: "10.99.0.2/24",
            ipv6: "fd99::2/64",
        },
    ];
    let temp = std::env::temp_dir().join(&prefix);
    let state_dir = temp.join("state");
    let pin_root = Path::new("/sys/fs/bpf").join(&prefix);
    let mut guard = Guard {
        netns: pods.iter().map(|pod| pod.netns.clone()).collect(),
        pin_root: pin_root.clone(),
        temp: temp.clone(),
        server: None,
    };
    let demo = Demo { bin, state_dir, pin_root, temp, pods };

    let result = demo.walk(&mut steps, &mut guard);
    if let Err(error) = &result {
        println!("\n==> The demo failed ({error}); cleaning up");
        guard.cleanup();
        return result;
    }
    drop(guard);
    println!("\ndemo done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

struct Demo {
    bin: PathBuf,
    state_dir: PathBuf,
    pin_root: PathBuf,
    temp: PathBuf,
    pods: [Pod; 2],
}

impl Demo {
    fn walk(&self, steps: &mut Steps, guard: &mut Guard) -> anyhow::Result<()> {
        let [alpha, beta] = &self.pods;

        steps.next("Create two pods (network namespaces)");
        fs::create_dir_all(&self.temp).with_context(|| format!("creating {}", self.temp.display()))?;
        for pod in &self.pods {
            util::run(command("ip").args(["netns", "add", &pod.netns]))?;
        }

        steps.next("Write the network config (a conflist, as in /etc/cni/net.d)");
        // Written as text, in the order people write it (serde_json sorts keys).
        let conflist_text = format!(
            r#"{{
  "cniVersion": "{CNI_VERSION}",
  "name": "{NETWORK}",
  "plugins": [
    {{ "type": "ratchet", "state_dir": {}, "pin_root": {} }}
  ]
}}
"#,
            json!(self.state_dir),
            json!(self.pin_root)
        );
        let conflist_path = self.temp.join("10-ratchet-demo.conflist");
        write_file(&conflist_path, &conflist_text)?;
        let conflist: Value = serde_json::from_str(&conflist_text).context("the demo's conflist")?;

        steps.next("Apply the topology: one link between demo/alpha and demo/beta");
        let end = |pod: &Pod| {
            format!(
                r#"{{ "pod": "demo/{}", "ifname": "{}", "ips": ["{}", "{}"] }}"#,
                pod.name, pod.ifname, pod.ipv4, pod.ipv6
            )
        };
        let topology_text = format!(
            r#"{{
  "links": [
    {{
      "name": "demo",
      "a": {},
      "b": {},
      "mtu": 1500
    }}
  ]
}}
"#,
            end(alpha),
            end(beta)
        );
        let topology_path = self.temp.join("topology.json");
        write_file(&topology_path, &topology_text)?;
        util::run(self.ratchet(false).args(["topology", "apply"]).arg(&topology_path))?;

        // What libcni hands the plugin: its entry, with the list's name and
        // version injected (and, on DEL, the cached ADD result as prevResult).
        let mut plugin_conf = conflist["plugins"][0].clone();
        plugin_conf["name"] = json!(NETWORK);
        plugin_conf["cniVersion"] = json!(CNI_VERSION);

        let mut results = Vec::new();
        for pod in &self.pods {
            steps.next(&format!("CNI ADD demo/{} (as containerd runs the plugin)", pod.name));
            let result = self.cni("ADD", pod, &pod.netns_path(), &plugin_conf)?;
            let result: Value = serde_json::from_str(&result).context("the ADD result is not JSON")?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            results.push(result);
        }
        steps.next("What the pods see");
        for pod in &self.pods {
            util::run(pod.exec().args(["ip", "-brief", "address", "show", "dev", pod.ifname]))?;
        }

        steps.next("Ping across the link, IPv4 and IPv6");
        let v4 = Pod::addr(beta.ipv4);
        let v6 = Pod::addr(beta.ipv6);
        util::run(alpha.exec().args(["ping", "-c", "3", "-i", "0.2", "-W", "2", v4]))?;
        util::run(alpha.exec().args(["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", v6]))?;

        steps.next("Move a TCP stream across the link (iperf3, 2 s)");
        let mut server = beta.exec();
        server.args(["iperf3", "--server", "--one-off", "--bind", v4, "--port", IPERF_PORT, "--idle-timeout", "30"]);
        println!("+ {} &", util::show(&server));
        guard.server = Some(server.stdout(Stdio::null()).spawn().context("cannot start the iperf3 server")?);
        wait_listening(beta, IPERF_PORT)?;
        util::run(alpha.exec().args(["iperf3", "--client", v4, "--port", IPERF_PORT, "--time", "2", "--format", "m"]))?;
        if let Some(server) = guard.server.as_mut() {
            wait_exit(server, Duration::from_secs(5));
        }

        steps.next("ratchet links: the link, its ends and their counters");
        util::run(self.ratchet(true).arg("links"))?;
        let links: Value = serde_json::from_str(&util::stdout_of(self.ratchet(true).args(["links", "--json"]))?)
            .context("`ratchet links --json` is not JSON")?;
        let ends = links[0]["ends"].as_array().cloned().unwrap_or_default();
        ensure!(ends.len() == 2, "`ratchet links` shows {} attached end(s), not 2", ends.len());
        for end in &ends {
            let packets = end["packets"].as_u64().unwrap_or(0);
            ensure!(packets > 0, "end {} moved no packets", end["pod"]);
        }
        let host_ifs: Vec<String> =
            ends.iter().filter_map(|end| end["host_ifname"].as_str().map(String::from)).collect();

        steps.next("The datapath: the peers map and the program");
        util::run(command("bpftool").args(["map", "dump", "pinned"]).arg(self.pin_root.join("peers")))?;
        util::run(command("bpftool").args(["prog", "show", "name", "ratchet_to_peer"]))?;

        for (pod, result) in self.pods.iter().zip(&results) {
            steps.next(&format!("CNI DEL demo/{}", pod.name));
            let mut conf = plugin_conf.clone();
            conf["prevResult"] = result.clone();
            self.cni("DEL", pod, &pod.netns_path(), &conf)?;
            println!("(DEL prints nothing on success)");
        }
        steps.next("CNI DEL again with an empty CNI_NETNS, as containerd does once the sandbox is gone");
        for pod in &self.pods {
            self.cni("DEL", pod, "", &plugin_conf)?;
        }
        util::run(self.ratchet(true).arg("links"))?;
        // DEL leaves deleting the veths (an RCU wait each) to a detached
        // child: they go within milliseconds of it returning.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        for host_if in &host_ifs {
            while util::probe(command("ip").args(["link", "show", "dev", host_if]))?.status.success() {
                ensure!(std::time::Instant::now() < deadline, "host interface {host_if} is still there 2 s after DEL");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        println!("host interfaces {} are gone (deleted by DEL's detached child)", host_ifs.join(", "));

        steps.next("ratchet unload: remove the programs and maps");
        util::run(self.ratchet(true).arg("unload"))?;

        steps.next("Clean up the pods, the state dir and the pins");
        guard.cleanup();
        let netns = util::stdout_of(command("ip").args(["netns", "list"]))?;
        for pod in &self.pods {
            ensure!(
                !netns.lines().any(|line| line.split_whitespace().next() == Some(&pod.netns)),
                "{} is still there",
                pod.netns
            );
        }
        ensure!(!self.pin_root.exists(), "{} is still there", self.pin_root.display());
        ensure!(!self.temp.exists(), "{} is still there", self.temp.display());
        println!("nothing left: no netns, pins, state dir or host interfaces of this demo");
        Ok(())
    }

    /// The operator's CLI on the demo's store (and pins).
    fn ratchet(&self, pins: bool) -> Command {
        let mut cmd = command(&self.bin);
        cmd.arg("--state-dir").arg(&self.state_dir);
        if pins {
            cmd.arg("--pin-root").arg(&self.pin_root);
        }
        cmd
    }

    /// Runs one CNI verb the way libcni does and returns the plugin's stdout.
    fn cni(&self, verb: &str, pod: &Pod, netns: &str, conf: &Value) -> anyhow::Result<String> {
        let args = pod_args("demo", pod.name, Some(&pod.container_id));
        let vars = verb_env(verb, &pod.container_id, netns, &args);
        let stdin = serde_json::to_vec(conf)?;
        // In the order a reader wants them, one per line: the ids are long.
        let shown: Vec<String> =
            vars.iter().map(|(key, value)| format!("{key}={}", util::quote(value.as_ref()))).collect();
        println!("+ {} \\", shown.join(" \\\n  "));
        println!("  {} <<'EOF'\n{}\nEOF", self.bin.display(), String::from_utf8_lossy(&stdin));
        let reply = runtime::invoke(Command::new(&self.bin), &vars, &stdin)
            .with_context(|| format!("cannot run {}", self.bin.display()))?;
        let reply = reply.checked().with_context(|| format!("CNI {verb} for demo/{}", pod.name))?;
        Ok(reply.stdout)
    }
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("{}:\n{}", path.display(), text.trim_end());
    Ok(())
}

/// Waits until something listens on TCP `port` in the pod.
fn wait_listening(pod: &Pod, port: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listening = util::stdout_of(pod.exec().args(["ss", "-Hltn", &format!("sport = :{port}")]))?;
        if !listening.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing listens on port {port} in {} after 5 s", pod.netns);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Gives a child a moment to exit on its own (the guard kills it otherwise).
fn wait_exit(child: &mut Child, within: Duration) {
    let deadline = Instant::now() + within;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
}

/// Removes what demos killed before their guard ran (Ctrl-C, SIGKILL) left:
/// names with the pid of a process that is gone.
fn sweep_leftovers() -> anyhow::Result<()> {
    let dead = |name: &str| {
        let pid = name.strip_prefix("ratchet-demo-").and_then(|rest| rest.split('-').next()).unwrap_or_default();
        !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !alive(pid)
    };
    let ip_json = |args: &[&str]| -> anyhow::Result<Vec<Value>> {
        let text = util::stdout_of(command("ip").arg("-j").args(args))?;
        Ok(serde_json::from_str(&text).unwrap_or_default())
    };
    let leftovers: Vec<(String, Option<u64>)> = ip_json(&["netns", "list"])?
        .iter()
        .filter_map(|ns| Some((ns["name"].as_str()?.to_owned(), ns["id"].as_u64())))
        .filter(|(name, _)| dead(name))
        .collect();
    // The host ends of their veths: the kernel deletes them once the netns
    // is gone, but asynchronously, and this run's ADD wants their names.
    let ids: Vec<u64> = leftovers.iter().filter_map(|(_, id)| *id).collect();
    let host_ends: Vec<String> = ip_json(&["link", "show", "type", "veth"])?
        .iter()
        .filter(|link| link["link_netnsid"].as_u64().is_some_and(|id| ids.contains(&id)))
        .filter_map(|link| link["ifname"].as_str().map(String::from))
        .collect();
    for (name, _) in &leftovers {
        println!("  removing a leftover of an interrupted demo: netns {name}");
        util::run(command("ip").args(["netns", "del", name]))?;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for host_end in &host_ends {
        while util::probe(command("ip").args(["link", "show", "dev", host_end]))?.status.success() {
            if Instant::now() >= deadline {
                // It may go between the check and this: no matter.
                let _ = util::probe(command("ip").args(["link", "del", "dev", host_end]));
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    for dir in [Path::new("/sys/fs/bpf"), &std::env::temp_dir()] {
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if path.file_name().and_then(|name| name.to_str()).is_some_and(dead) {
                println!("  removing a leftover of an interrupted demo: {}", path.display());
                let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                removed.with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// True while the process runs (a zombie is not alive: it is only waiting
/// for its parent to reap it).
fn alive(pid: &str) -> bool {
    fs::read_to_string(Path::new("/proc").join(pid).join("stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_owned()))
        .is_some_and(|rest| !rest.starts_with(['Z', 'X']))
}

/// A container id shaped like containerd's: 64 hex digits, unique per run.
fn unique_container_id(seed: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    container_id(&format!("{seed}-{nanos}"))
}
