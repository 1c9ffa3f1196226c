//! The operator's CLI: what `ratchet` does when no runtime called it.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod links;

use links::Output;

use crate::{
    config::{DEFAULT_PIN_ROOT, DEFAULT_STATE_DIR, Settings},
    dataplane::Dataplane,
    ends::impair::{Change, Changes},
    store::{Store, Transaction, records},
    topology::{
        Side, Topology,
        impair::{Delay, Loss, Rate},
    },
};

/// ratchet: point-to-point pod links moved by TC eBPF.
///
/// Run by a container runtime (CNI_COMMAND set), it is a CNI plugin. Run by
/// a person, it manages the topology and shows the links.
#[derive(Parser)]
#[command(name = "ratchet", version)]
pub struct Cli {
    /// The state directory the plugin's config names (`state_dir`).
    #[arg(long, global = true, env = "RATCHET_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The bpffs directory the plugin's config names (`pin_root`).
    #[arg(long, global = true, env = "RATCHET_PIN_ROOT", default_value = DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    /// etcd endpoints, comma-separated, when the plugin's config names them
    /// (`etcd_endpoints`); without, the embedded store in --state-dir.
    #[arg(long, global = true, env = "RATCHET_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// etcd user, when its authentication is on (`etcd_username`).
    #[arg(long, global = true, env = "RATCHET_ETCD_USERNAME")]
    etcd_username: Option<String>,
    /// etcd password (`etcd_password`); prefer the environment variable.
    #[arg(long, global = true, env = "RATCHET_ETCD_PASSWORD", hide_env_values = true)]
    etcd_password: Option<String>,
    /// The CA etcd's certificate is checked against, PEM (`etcd_ca_file`).
    #[arg(long, global = true, env = "RATCHET_ETCD_CA_FILE")]
    etcd_ca_file: Option<PathBuf>,
    /// A client certificate for etcd, PEM (`etcd_cert_file`).
    #[arg(long, global = true, env = "RATCHET_ETCD_CERT_FILE")]
    etcd_cert_file: Option<PathBuf>,
    /// The client certificate's key, PEM (`etcd_key_file`).
    #[arg(long, global = true, env = "RATCHET_ETCD_KEY_FILE")]
    etcd_key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the topology: which pod interfaces are linked.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Cut a link or join it again, like pulling its cable and plugging it
    /// back: both pod ends lose their carrier (NO-CARRIER) and what the pods
    /// send on them is dropped (the pod interfaces' TX drops).
    #[command(subcommand)]
    Link(LinkCommand),
    /// Show every link, its ends and their counters; `-o wide` (and JSON
    /// and YAML) add why a link is not up.
    Links {
        /// How to print: a table, the table with each link's reason, JSON or YAML.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// The same as `-o json`.
        #[arg(long, conflicts_with = "output")]
        json: bool,
    },
    /// Print every frame the datapath moves on this node, named by link,
    /// side and pods, with its L3 header and what became of it, until
    /// Ctrl-C, SIGTERM or SIGHUP. Per-frame logging is the node's switch,
    /// on only while a trace runs (the agent turns off one a killed trace
    /// left on).
    Trace {
        /// Only this link's frames (repeatable).
        #[arg(long = "link", value_name = "LINK")]
        links: Vec<String>,
    },
    /// Copy this binary into a CNI bin dir and write a conflist naming it
    /// (idempotent). The plugin entry gets --state-dir, --pin-root and the
    /// etcd flags given here, plus the flags below.
    Install {
        #[command(flatten)]
        paths: InstallPaths,
        /// The network name in the conflist.
        #[arg(long, default_value = "ratchet")]
        network: String,
        #[command(flatten)]
        node: NodeFlags,
        /// A JSON file with the CNI config pods without links get (`delegate`).
        #[arg(long)]
        delegate: Option<PathBuf>,
        /// A JSON file with the primary network of linked pods (`boot_network`).
        #[arg(long)]
        boot_network: Option<PathBuf>,
        /// A topology file to carry in the config (`topology`).
        #[arg(long)]
        topology: Option<PathBuf>,
    },
    /// Remove what `install` put in place.
    Uninstall {
        #[command(flatten)]
        paths: InstallPaths,
    },
    /// Keep this node's maps equal to the store (one per node, for links
    /// across nodes), and serve /metrics, /healthz and /readyz on the
    /// config's `metrics_address`. Reads the plugin's network config (or
    /// the conflist `install` wrote) from FILE.
    Agent {
        #[arg(long)]
        config: PathBuf,
        /// How often to reconcile, in milliseconds.
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        /// Make the topology from meshnet-cni's Topology objects
        /// (networkop.co.uk/v1beta1) in the Kubernetes API (in-cluster, or
        /// KUBECONFIG) and report each link's state in their status. The
        /// objects are then the whole topology.
        #[arg(long)]
        watch_topologies: bool,
    },
    /// Remove this node's eBPF pins (programs and maps). Refused while link
    /// ends are attached, unless --force.
    Unload {
        /// Unload even while link ends of this node are attached (they stop
        /// forwarding into anything new, and cross-node ones stop at once).
        #[arg(long)]
        force: bool,
        /// This node's name in link records (`node_name`; default: the host name).
        #[arg(long)]
        node_name: Option<String>,
    },
    /// Remove every link end this node holds (the host veths its pins know,
    /// with their pod ends), its pins, and the store's records of its ends:
    /// how a node recovers when its store was deleted or damaged while pods
    /// were attached. Recreate the pods afterwards.
    Reset {
        /// This node's name in link records (`node_name`; default: the host name).
        #[arg(long)]
        node_name: Option<String>,
    },
    /// Delete host veths DEL released (DEL runs this in a detached child).
    #[command(name = crate::ends::reap::SUBCOMMAND, hide = true)]
    Reap {
        /// IFINDEX:NAME; a veth is deleted only while it still has NAME.
        #[arg(required = true)]
        veths: Vec<crate::ends::reap::Doomed>,
    },
}

/// What `install` writes about this node into the plugin entry.
#[derive(clap::Args)]
struct NodeFlags {
    /// This node's name in link records (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// This node's underlay IPv4 address, for links across nodes.
    #[arg(long)]
    node_ip: Option<std::net::Ipv4Addr>,
    /// Where `ratchet agent` serves /metrics, /healthz and /readyz
    /// (`metrics_address`; without it, 127.0.0.1:9478). An agent on the
    /// host network gives the node's address (NODE_IP:9478) so Prometheus
    /// and kubelet's probes reach it.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_address: Option<std::net::SocketAddr>,
}

/// Where `install` puts the plugin and its conflist.
#[derive(clap::Args)]
struct InstallPaths {
    /// The CNI bin dir, as the host sees it.
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// Where the conflist goes, as the host sees it: the runtime's dir
    /// (ratchet as a network of its own), or Multus's `confDir`
    /// (/etc/cni/multus/net.d: a secondary network by the name --network).
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The conflist's file name (runtimes take the first by name).
    #[arg(long, default_value = "10-ratchet.conflist")]
    conflist: String,
    /// Where the host's root is mounted (an init container's /host): every
    /// file is written under it, every path written into the conflist is
    /// the host's.
    #[arg(long, default_value = "/")]
    host_root: PathBuf,
    /// Where the etcd TLS files given (--etcd-ca-file, ...) are copied to on
    /// the host, for the plugin (which runs on the host) to read.
    #[arg(long, default_value = "/etc/ratchet/etcd-tls")]
    etcd_tls_dir: PathBuf,
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Validate a topology file and make it the topology. FILE is ratchet's
    /// own format (JSON or YAML), meshnet-cni's Topology objects or a
    /// containerlab topology, told apart by its content. On a node with the
    /// embedded store the running pods are brought in line at once; with
    /// etcd, each node's agent does it.
    Apply {
        file: PathBuf,
        #[command(flatten)]
        namespace: TopologyNamespace,
        /// This node's name as the plugin's config gives it (`node_name`),
        /// to find its running pods; the host name by default.
        #[arg(long, env = "RATCHET_NODE_NAME")]
        node_name: Option<String>,
    },
    /// Print the ratchet topology (JSON) that FILE, in any format `apply`
    /// reads, becomes; nothing is applied.
    Convert {
        file: PathBuf,
        #[command(flatten)]
        namespace: TopologyNamespace,
    },
    /// Print the topology as JSON.
    Show,
    /// Remove every link from the topology.
    Delete,
}

#[derive(Subcommand)]
enum LinkCommand {
    /// Cut LINK (an id as `ratchet links` shows it): its host veths go down
    /// on every node (here at once, elsewhere by each node's agent), and an
    /// end attached later starts down. It stays cut until `link up`.
    Down { link: String },
    /// Join LINK again: its host veths come back up, the pods' carrier with them.
    Up { link: String },
    /// Impair LINK live: the loss, rate, delay and jitter of the frames a
    /// side sends (both sides without --side). Keys not given stay as they
    /// are; `none` drops one, --clear drops them all first. It overrides the
    /// topology's keys for the link, here at once and elsewhere by each
    /// node's agent; no pod is re-added. Loss is the datapath's; rate is
    /// shaped on the sending pod interface (TBF), delay and jitter need the
    /// kernel's netem.
    Set {
        link: String,
        /// Only the frames this side sends: a or b.
        #[arg(long, value_parser = parse_side)]
        side: Option<Side>,
        /// Share of frames dropped, as 5% or 0.25%.
        #[arg(long)]
        loss: Option<Change<Loss>>,
        /// Most the side sends, in tc's units (100mbit, 1gbit; kbps is bytes).
        #[arg(long)]
        rate: Option<Change<Rate>>,
        /// Delay added, as 10ms (netem).
        #[arg(long)]
        delay: Option<Change<Delay>>,
        /// Random variation of the delay, as 2ms (netem).
        #[arg(long)]
        jitter: Option<Change<Delay>>,
        /// Drop every impairment (before the keys given, if any).
        #[arg(long)]
        clear: bool,
    },
}

fn parse_side(text: &str) -> Result<Side, String> {
    match text {
        "a" => Ok(Side::A),
        "b" => Ok(Side::B),
        _ => Err(format!("{text:?} is not a side: a or b")),
    }
}

#[derive(clap::Args)]
struct TopologyNamespace {
    /// The namespace of pods the file names without one (containerlab's
    /// nodes, meshnet objects without metadata.namespace).
    #[arg(long, default_value = "default")]
    namespace: String,
}

/// Reads a topology file in any format [`crate::topology::input`] knows.
fn read_topology(file: &std::path::Path, namespace: &TopologyNamespace) -> anyhow::Result<Topology> {
    let text = crate::files::read_text(file).with_context(|| format!("reading {}", file.display()))?;
    let (_, topology) =
        crate::topology::input::parse(&text, &namespace.namespace).with_context(|| format!("in {}", file.display()))?;
    Ok(topology)
}

/// Parses the command line and runs the command: the binary's entry point
/// when no runtime set `CNI_COMMAND`. A one-shot command gives up after
/// [`crate::config::DEFAULT_VERB_TIMEOUT`], as a verb does.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings {
        state_dir: cli.state_dir,
        pin_root: cli.pin_root,
        etcd_endpoints: cli.etcd_endpoints,
        etcd_username: cli.etcd_username,
        etcd_password: cli.etcd_password,
        etcd_ca_file: cli.etcd_ca_file,
        etcd_cert_file: cli.etcd_cert_file,
        etcd_key_file: cli.etcd_key_file,
        ..Settings::default()
    };
    // What install writes is for kubelet and the runtime to read: it sets
    // its own modes; everything else ratchet makes is root-only.
    if !matches!(cli.command, Command::Install { .. } | Command::Uninstall { .. }) {
        crate::keep_files_private();
    }
    if !matches!(cli.command, Command::Agent { .. } | Command::Trace { .. }) {
        exit_after(crate::config::DEFAULT_VERB_TIMEOUT);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Topology(command) => runtime.block_on(topology(&settings, command)),
        Command::Link(LinkCommand::Set { link, side, loss, rate, delay, jitter, clear }) => {
            let changes = Changes { clear, loss, rate, delay, jitter };
            runtime.block_on(link_set(&settings, &link, side, &changes))
        }
        Command::Link(LinkCommand::Down { link }) => runtime.block_on(link_cable(&settings, link, true)),
        Command::Link(LinkCommand::Up { link }) => runtime.block_on(link_cable(&settings, link, false)),
        Command::Links { output, json } => {
            runtime.block_on(links::run(&settings, if json { Output::Json } else { output }))
        }
        Command::Trace { links } => runtime.block_on(trace(&settings, &links)),
        Command::Install { paths, network, node, delegate, boot_network, topology } => {
            let files = PluginFiles { delegate, boot_network, topology };
            install(&settings, paths, network, node, files)
        }
        Command::Uninstall { paths } => {
            let (bin_dir, conf_dir) = (
                crate::install::under(&paths.host_root, &paths.bin_dir),
                crate::install::under(&paths.host_root, &paths.conf_dir),
            );
            crate::install::uninstall(&bin_dir, &conf_dir, &paths.conflist)
        }
        Command::Agent { config, interval_ms, watch_topologies } => {
            crate::agent::run(&config, std::time::Duration::from_millis(interval_ms), watch_topologies)
        }
        Command::Unload { force, node_name } => runtime.block_on(unload(&settings, node_name, force)),
        Command::Reset { node_name } => runtime.block_on(reset(&settings, node_name)),
        Command::Reap { veths } => runtime.block_on(async {
            let host = crate::netlink::Netlink::host()?;
            Ok(crate::ends::reap::delete_all(&host, &veths).await?)
        }),
    }
}

/// A one-shot command (everything but `agent` and `trace`, which run until
/// stopped) gives up after `deadline`, as a verb does: whatever it waits on,
/// a script or an operator gets an answer.
fn exit_after(deadline: std::time::Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        eprintln!("ratchet: gave up after {deadline:?}: something it waits on (the store, etcd) hangs");
        std::process::exit(1);
    });
}

/// The files `install` reads into the plugin's config.
struct PluginFiles {
    delegate: Option<PathBuf>,
    boot_network: Option<PathBuf>,
    topology: Option<PathBuf>,
}

/// `ratchet install`: the plugin entry gets the CLI's paths and etcd
/// endpoints, the node's name, address and metrics address, and the
/// files' JSON.
fn install(
    settings: &Settings,
    paths: InstallPaths,
    network: String,
    NodeFlags { node_name, node_ip, metrics_address }: NodeFlags,
    files: PluginFiles,
) -> anyhow::Result<()> {
    let mut plugin = serde_json::Map::new();
    plugin.insert("state_dir".into(), serde_json::json!(settings.state_dir));
    plugin.insert("pin_root".into(), serde_json::json!(settings.pin_root));
    if !settings.etcd_endpoints.is_empty() {
        plugin.insert("etcd_endpoints".into(), serde_json::json!(settings.etcd_endpoints));
    }
    let tls = [
        ("etcd_ca_file", &settings.etcd_ca_file, "ca.crt", 0o644),
        ("etcd_cert_file", &settings.etcd_cert_file, "client.crt", 0o644),
        ("etcd_key_file", &settings.etcd_key_file, "client.key", 0o600),
    ];
    for (key, given, name, mode) in tls {
        let Some(given) = given else { continue };
        let on_host = paths.etcd_tls_dir.join(name);
        let bytes = crate::files::read_bounded(given, crate::files::MAX_INPUT)
            .with_context(|| format!("reading {}", given.display()))?;
        crate::install::place(&crate::install::under(&paths.host_root, &on_host), &bytes, mode)?;
        plugin.insert(key.into(), serde_json::json!(on_host));
    }
    plugin.extend(node_name.map(|name| ("node_name".into(), serde_json::json!(name))));
    plugin.extend(node_ip.map(|ip| ("node_ip".into(), serde_json::json!(ip))));
    plugin.extend(metrics_address.map(|address| ("metrics_address".into(), serde_json::json!(address))));
    let PluginFiles { delegate, boot_network, topology } = files;
    for (key, file) in [("delegate", delegate), ("boot_network", boot_network)] {
        if let Some(file) = file {
            plugin.insert(key.into(), read_json(&file)?);
        }
    }
    if let Some(file) = topology {
        let namespace = TopologyNamespace { namespace: "default".into() };
        plugin.insert("topology".into(), serde_json::to_value(read_topology(&file, &namespace)?)?);
    }
    let InstallPaths { bin_dir, conf_dir, conflist, host_root, .. } = paths;
    let (bin_dir, conf_dir) =
        (crate::install::under(&host_root, &bin_dir), crate::install::under(&host_root, &conf_dir));
    crate::install::Install { bin_dir, conf_dir, conflist, network, plugin }.run()
}

/// `ratchet reset`, for the node named `node_name` (else this host's name).
async fn reset(settings: &Settings, node_name: Option<String>) -> anyhow::Result<()> {
    let node = Settings { node_name, ..settings.clone() }.node();
    let reset = crate::reset::reset(settings, &node).await?;
    println!(
        "removed {} host veth(s) ({}), the pins under {} and {} record(s) of node {node}",
        reset.veths.len(),
        reset.veths.join(", "),
        settings.pin_root.display(),
        reset.records
    );
    Ok(())
}

fn read_json(file: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text = crate::files::read_text(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))
}

/// `ratchet trace`, once every link of `--link` is known.
async fn trace(settings: &Settings, links: &[String]) -> anyhow::Result<()> {
    if !links.is_empty() {
        let mut store = crate::ends::open_store(settings).await?;
        let mut tx = store.begin().await?;
        for link in links {
            topology_link(&mut tx, link).await?;
        }
    }
    crate::trace::run(settings, links).await
}

/// The stored link `id`, or an error that says where the ids are.
async fn topology_link(tx: &mut impl Transaction, id: &str) -> anyhow::Result<crate::topology::Link> {
    match records::link(tx, id).await? {
        Some(link) => Ok(link),
        None => anyhow::bail!("no link {id} in the topology (`ratchet links` shows the ids)"),
    }
}

/// `ratchet link down|up`: the store's record, and this node's ends at
/// once, in one transaction (a failure leaves the link as it was).
async fn link_cable(settings: &Settings, link: String, cut: bool) -> anyhow::Result<()> {
    let mut store = crate::ends::open_store(settings).await?;
    let mut tx = store.begin().await?;
    if cut {
        topology_link(&mut tx, &link).await?;
    }
    records::set_cut(&mut tx, &link, cut).await?;
    let host = crate::netlink::Netlink::host()?;
    let mut here = Vec::new();
    for end in records::ends(&mut tx, &link).await?.into_iter().flatten() {
        if crate::ends::cut::apply(&host, &end, cut).await? {
            here.push(end.host_ifname);
        }
    }
    tx.commit().await?;
    let state = if cut { "down" } else { "up" };
    match here.is_empty() {
        true => println!("link {link} {state}; no end of it on this node (its node's agent sets it)"),
        false => println!("link {link} {state}; host end(s) set {state} here: {}", here.join(", ")),
    }
    Ok(())
}

/// `ratchet link set`: the store's records, and this node's ends at once,
/// in one transaction.
async fn link_set(settings: &Settings, id: &str, side: Option<Side>, changes: &Changes) -> anyhow::Result<()> {
    if changes.is_empty() {
        anyhow::bail!("nothing to set: give --loss, --rate, --delay, --jitter or --clear");
    }
    let mut store = crate::ends::open_store(settings).await?;
    let mut tx = store.begin().await?;
    let link = topology_link(&mut tx, id).await?;
    let host = crate::netlink::Netlink::host()?;
    let mut dataplane = Dataplane::open(&settings.pin_root)?;
    let sides = side.map_or(vec![Side::A, Side::B], |side| vec![side]);
    let done = crate::ends::impair::set_link(&mut tx, (&host, dataplane.as_mut()), &link, &sides, changes).await?;
    tx.commit().await?;
    for set in done {
        let (from, to) = (link.end(set.side), link.end(set.side.other()));
        let (side, impairment, effect) = (set.side.as_str(), set.impairment, set.effect);
        println!("{id} {side}: {} -> {} {}: {impairment}; {effect}", from.pod, to.pod, to.ifname);
    }
    Ok(())
}

async fn topology(settings: &Settings, command: TopologyCommand) -> anyhow::Result<()> {
    if let TopologyCommand::Convert { file, namespace } = &command {
        println!("{}", serde_json::to_string_pretty(&read_topology(file, namespace)?)?);
        return Ok(());
    }
    let mut store = crate::ends::open_store(settings).await?;
    let store_is_etcd = store.is_etcd();
    let mut tx = store.begin().await?;
    match command {
        TopologyCommand::Convert { .. } => unreachable!("handled above, without a store"),
        TopologyCommand::Apply { file, namespace, node_name } => {
            let topology = read_topology(&file, &namespace)?;
            records::put_topology(&mut tx, &topology).await?;
            let this_node =
                Settings { node_name: node_name.or_else(|| settings.node_name.clone()), ..settings.clone() };
            // Pins this build cannot open as they are (another layout) are a
            // node too: attaching takes them over, or says why it cannot.
            let pinned = crate::dataplane::Dataplane::open(&settings.pin_root).map_or(true, |found| found.is_some());
            let live = !store_is_etcd && pinned;
            let mut ends = match live {
                true => {
                    Some(crate::ends::Ends::for_attach(&mut tx, &this_node, crate::netlink::Netlink::host()?).await?)
                }
                false => None,
            };
            let unlinked = match &mut ends {
                Some(ends) => ends.sync_running_pods(&mut tx).await?,
                None => Vec::new(),
            };
            tx.commit().await?;
            for end in &unlinked {
                ends.as_ref().expect("synced").teardown(end).await?;
            }
            let synced = if live { "; running pods brought in line" } else { "" };
            println!("applied {} link(s){synced}", topology.links.len());
        }
        TopologyCommand::Show => {
            let topology = records::topology(&mut tx).await?;
            println!("{}", serde_json::to_string_pretty(&topology)?);
        }
        TopologyCommand::Delete => {
            records::put_topology(&mut tx, &Topology::default()).await?;
            tx.commit().await?;
            println!("topology deleted");
        }
    }
    Ok(())
}

/// `ratchet unload`: this node's pins and VXLAN device, once none of its
/// link ends is attached and its agent (which would pin again at once) is
/// stopped.
async fn unload(settings: &Settings, node_name: Option<String>, force: bool) -> anyhow::Result<()> {
    let node = Settings { node_name, ..settings.clone() }.node();
    let _no_agent = match settings.state_dir.exists() {
        true => {
            Some(crate::files::try_lock(&settings.state_dir.join(crate::agent::RUNNING_LOCK))?.with_context(|| {
                "this node's `ratchet agent` is running and would load and pin the programs again at once: stop it \
             first (delete its DaemonSet pod, or stop its service), then unload"
            })?)
        }
        false => None,
    };
    let mut store = crate::ends::open_store(settings).await?;
    let ends = records::all_ends(&mut store.begin().await?).await?;
    let attached = ends.iter().filter(|(_, _, end)| end.node == node).count();
    if attached > 0 && !force {
        anyhow::bail!("{attached} link end(s) are attached on node {node}; delete their pods first, or pass --force");
    }
    let host = crate::netlink::Netlink::host()?;
    let vxlan = host.link_by_name(crate::ends::VXLAN_DEVICE).await?;
    let pinned = settings.pin_root.exists();
    if !pinned && vxlan.is_none() {
        println!(
            "nothing to remove: no pins under {} and no {}",
            settings.pin_root.display(),
            crate::ends::VXLAN_DEVICE
        );
        return Ok(());
    }
    if pinned {
        Dataplane::unload(&settings.pin_root)?;
        println!("removed {}", settings.pin_root.display());
    }
    if let Some(vxlan) = vxlan {
        host.delete_link(vxlan.index).await?;
        println!("removed {}", crate::ends::VXLAN_DEVICE);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
