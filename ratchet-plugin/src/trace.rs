//! `ratchet trace`: watch the datapath frame by frame, by link name.
//!
//! The programs log through aya-log only while their `trace` switch is on,
//! so the per-frame cost is one load and a branch when nobody is watching.
//! Each traced frame is one record of `key=value` fields (the hook, the
//! host veth or VNI, the verdict, the L3 header); this side names them from
//! the store's records of this node's ends: link, side, direction, pods.
//!
//! The switch is the node's. A trace holds [`LOCK`] in the state dir while
//! it runs and turns the switch off on SIGINT, SIGTERM and SIGHUP; a trace
//! killed outright (SIGKILL) leaves it on with the lock free, which
//! `ratchet links` reports and the next trace or the node's agent undoes
//! ([`left_on`], [`reset_if_left_on`]).

use std::{
    collections::{BTreeSet, HashMap},
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use ratchet_common::{HOOK_TUNNEL, Switches, verdict};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    config::Settings,
    dataplane::{Dataplane, DataplaneError},
    netlink::Netlink,
    store::{Store, records},
    topology::Side,
};

/// The file a running trace holds an exclusive lock on.
pub const LOCK: &str = "trace.lock";

fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join(LOCK)
}

/// Takes the trace lock; `None` when another trace holds it.
fn take_lock(state_dir: &Path) -> anyhow::Result<Option<Flock<File>>> {
    let path = lock_path(state_dir);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(errno).with_context(|| format!("locking {}", path.display())),
    }
}

/// Whether a running trace holds the lock. Without the file, no trace
/// ever ran with this state dir (each makes it).
fn trace_running(state_dir: &Path) -> bool {
    let Ok(file) = File::open(lock_path(state_dir)) else { return false };
    // A lock we can take is one nobody holds; it is dropped (released) at once.
    matches!(Flock::lock(file, FlockArg::LockExclusiveNonblock), Err((_, nix::errno::Errno::EWOULDBLOCK)))
}

/// Whether this node's switch is on with no trace running: a trace was
/// killed before it could turn it off.
pub fn left_on(state_dir: &Path, switches: Switches) -> bool {
    switches.trace != 0 && !trace_running(state_dir)
}

/// Turns the switch off when a killed trace left it on (the agent calls
/// this now and then). True when it did.
pub fn reset_if_left_on(state_dir: &Path, dataplane: &Dataplane) -> Result<bool, DataplaneError> {
    if !left_on(state_dir, dataplane.switches()?) {
        return Ok(false);
    }
    dataplane.set_switches(Switches::default())?;
    Ok(true)
}

/// Runs a trace until SIGINT, SIGTERM or SIGHUP: only the frames of
/// `links` when any are given.
pub async fn run(settings: &Settings, links: &[String]) -> anyhow::Result<()> {
    let pin_root = &settings.pin_root;
    let dataplane = Dataplane::open(pin_root)?.with_context(|| {
        format!("nothing is loaded under {}: no link was ever added on this node", pin_root.display())
    })?;
    // SIGINT (Ctrl-C), and SIGTERM and SIGHUP as `timeout`, a supervisor or
    // a closed terminal send them: each ends the trace, and with it the
    // per-frame logging of the whole node. Caught from before the lock is
    // taken, so a trace seen running can always be stopped cleanly.
    let stop = Signals::catch()?;
    let Some(_lock) = take_lock(&settings.state_dir)? else {
        anyhow::bail!("another `ratchet trace` runs on this node; one at a time, as they share the node's switch");
    };
    let mut store = crate::ends::open_store(settings).await?;
    let host = Netlink::host()?;
    let names = Arc::new(Mutex::new(Names::read(&mut store, &host).await?));
    let printer = Printer { names: names.clone(), links: links.iter().cloned().collect() };
    let mut logger = aya_log::EbpfLogger::init_from_id_with_logger(
        dataplane.program_id(crate::dataplane::Program::ToPeer)?,
        printer,
    )
    .context("opening the program's log buffer")?;
    if dataplane.switches()?.trace != 0 {
        eprintln!("a trace that was killed had left tracing on; this one turns it off when it ends");
    }
    dataplane.set_switches(Switches { trace: 1 })?;
    eprintln!("tracing every frame on {}; Ctrl-C stops", pin_root.display());
    let watched = watch(stop, &mut logger, (&mut store, &host), &names).await;
    // Turn tracing off even when a signal handler failed.
    dataplane.set_switches(Switches::default())?;
    watched
}

/// Prints records as they come and rereads the names each second, until
/// a signal ends the trace.
async fn watch(
    mut stop: Signals,
    logger: &mut aya_log::EbpfLogger<Printer>,
    (store, host): (&mut crate::store::AnyStore, &Netlink),
    names: &Mutex<Names>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut reread = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.interrupt.recv() => return Ok(()),
            _ = stop.terminate.recv() => return Ok(()),
            _ = stop.hangup.recv() => return Ok(()),
            _ = tick.tick() => logger.flush(),
            _ = reread.tick() => {
                // A failed reread keeps the names it had: the trace goes on.
                if let Ok(fresh) = Names::read(store, host).await {
                    *names.lock().expect("the printer does not panic") = fresh;
                }
            }
        }
    }
}

/// The signals that end a trace.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn catch() -> anyhow::Result<Self> {
        let catch = |kind| signal(kind).context("catching the signals that end a trace");
        Ok(Self {
            interrupt: catch(SignalKind::interrupt())?,
            terminate: catch(SignalKind::terminate())?,
            hangup: catch(SignalKind::hangup())?,
        })
    }
}

/// One end of this node, as a traced frame is named by.
#[derive(Clone, Debug)]
struct EndName {
    link: String,
    side: Side,
    /// `namespace/pod ifname` of this end and of its peer.
    here: String,
    peer: String,
}

/// This node's ends by host ifindex, from the store.
#[derive(Debug, Default)]
struct Names {
    by_ifindex: HashMap<u32, EndName>,
}

impl Names {
    /// Reads the names of this node's ends (`host`: its netlink).
    async fn read(store: &mut crate::store::AnyStore, host: &Netlink) -> anyhow::Result<Self> {
        let mut tx = store.begin().await?;
        let by_link = records::links_with_ends(&mut tx).await?;
        drop(tx);
        let mut by_ifindex = HashMap::new();
        for (link, ends) in by_link {
            let label = |end: &Option<records::EndRecord>| {
                end.as_ref().map_or_else(|| "(not attached)".to_owned(), |end| format!("{} {}", end.pod, end.ifname))
            };
            for side in [Side::A, Side::B] {
                let Some(end) = &ends[side.index()] else { continue };
                // Another node's ifindex may be taken here by something else.
                if !crate::ends::is_live(host, end).await? {
                    continue;
                }
                let name = EndName {
                    link: link.clone(),
                    side,
                    here: label(&ends[side.index()]),
                    peer: label(&ends[side.other().index()]),
                };
                by_ifindex.insert(end.host_ifindex, name);
            }
        }
        Ok(Self { by_ifindex })
    }
}

/// Names and prints each record; frames of other links are left out when
/// `links` is not empty.
struct Printer {
    names: Arc<Mutex<Names>>,
    links: BTreeSet<String>,
}

impl log::Log for Printer {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let text = record.args().to_string();
        let names = self.names.lock().expect("the trace loop does not panic");
        if let Some(line) = describe(&text, &names, &self.links) {
            println!("{line}");
        }
    }

    fn flush(&self) {}
}

/// The line for one record; `None` when the filter leaves it out. A record
/// in no known shape is printed as it came.
fn describe(text: &str, names: &Names, links: &BTreeSet<String>) -> Option<String> {
    let fields: HashMap<&str, &str> = text.split(' ').filter_map(|field| field.split_once('=')).collect();
    let number = |key: &str| fields.get(key).and_then(|value| value.parse::<u32>().ok()).unwrap_or(0);
    if !fields.contains_key("hook") {
        return links.is_empty().then(|| text.to_owned());
    }
    let hook = if number("hook") == HOOK_TUNNEL { "tunnel" } else { "end" };
    // The end the frame belongs to: where it entered, or (from the tunnel)
    // where it goes.
    let ifindex = if hook == "tunnel" { number("to") } else { number("if") };
    let end = names.by_ifindex.get(&ifindex);
    if !links.is_empty() && !end.is_some_and(|end| links.contains(&end.link)) {
        return None;
    }
    let l3 = l3_of(&fields);
    let len = number("len");
    let verdict = number("verdict");
    let node = fields.get("node").copied().unwrap_or("?");
    let vni = number("vni");
    Some(match (hook, end) {
        ("tunnel", Some(end)) => {
            let (link, side, here) = (&end.link, end.side.as_str(), &end.here);
            let arrival = format!("{link} {side} <- tunnel from node {node} vni {vni}: {l3} len {len}");
            match verdict {
                verdict::PEER => format!("{arrival} -> {here}"),
                verdict::WRONG_NODE => format!("{arrival}: dropped, not from the peer's node"),
                other => format!("{arrival}: verdict {other}"),
            }
        }
        ("tunnel", None) => match verdict {
            verdict::UNKNOWN_VNI => {
                format!("tunnel from node {node} vni {vni}: {l3} len {len}: dropped, no link has this VNI here")
            }
            other => format!("tunnel from node {node} vni {vni}: {l3} len {len}: verdict {other}"),
        },
        (_, Some(end)) => {
            let (link, from, to) = (&end.link, end.side.as_str(), end.side.other().as_str());
            let head = format!("{link} {from}->{to} {} > {}: {l3} len {len}", end.here, end.peer);
            match verdict {
                verdict::PEER => head,
                verdict::TUNNEL => format!("{head}: into the tunnel, vni {vni}"),
                verdict::LOST => format!("{head}: dropped by the link's loss"),
                verdict::NO_PEER => format!("{head}: dropped, the peer end is not wired"),
                other => format!("{head}: verdict {other}"),
            }
        }
        (_, None) => format!("host veth {ifindex} (no link end of this node): {l3} len {len}: verdict {verdict}"),
    })
}

/// `ipv4 10.0.0.1 > 10.0.0.2 icmp`, `arp`, or the ethertype.
fn l3_of(fields: &HashMap<&str, &str>) -> String {
    let l3 = fields.get("l3").copied().unwrap_or("?");
    let (Some(src), Some(dst)) = (fields.get("src"), fields.get("dst")) else {
        return match l3 {
            "arp" => "arp".to_owned(),
            other => format!("ethertype 0x{other}"),
        };
    };
    let proto = match (l3, fields.get("proto").copied().unwrap_or("")) {
        (_, "6") => "tcp".to_owned(),
        (_, "17") => "udp".to_owned(),
        ("ipv4", "1") => "icmp".to_owned(),
        ("ipv6", "58") => "icmpv6".to_owned(),
        ("ipv6", "0") => "hop-by-hop".to_owned(),
        (_, other) => format!("proto {other}"),
    };
    format!("{l3} {src} > {dst} {proto}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        let end =
            |side, here: &str, peer: &str| EndName { link: "r1-r2".into(), side, here: here.into(), peer: peer.into() };
        let by_ifindex = HashMap::from([
            (7, end(Side::A, "lab/r1 eth1", "lab/r2 eth1")),
            (8, end(Side::B, "lab/r2 eth1", "lab/r1 eth1")),
        ]);
        Names { by_ifindex }
    }

    #[test]
    fn a_frame_is_named_by_its_link_side_and_pods() {
        let record = "hook=0 if=7 vni=0 node=0.0.0.0 len=98 verdict=0 to=8 l3=ipv4 src=10.0.12.1 dst=10.0.12.2 proto=1";
        let line = describe(record, &names(), &BTreeSet::new()).unwrap();
        assert_eq!(line, "r1-r2 a->b lab/r1 eth1 > lab/r2 eth1: ipv4 10.0.12.1 > 10.0.12.2 icmp len 98");
    }

    #[test]
    fn verdicts_say_why_a_frame_went_nowhere() {
        let lost = "hook=0 if=8 vni=0 node=0.0.0.0 len=42 verdict=2 to=7 l3=arp";
        let line = describe(lost, &names(), &BTreeSet::new()).unwrap();
        assert_eq!(line, "r1-r2 b->a lab/r2 eth1 > lab/r1 eth1: arp len 42: dropped by the link's loss");
        let stray = "hook=1 if=0 vni=99 node=192.0.2.9 len=60 verdict=4 to=0 l3=86dd";
        let line = describe(stray, &names(), &BTreeSet::new()).unwrap();
        assert!(line.contains("no link has this VNI here") && line.contains("192.0.2.9"), "{line}");
    }

    #[test]
    fn a_tunnel_arrival_is_named_by_the_end_it_goes_to() {
        let record = "hook=1 if=0 vni=5 node=192.0.2.1 len=98 verdict=0 to=8 l3=ipv6 src=fd::1 dst=fd::2 proto=58";
        let line = describe(record, &names(), &BTreeSet::new()).unwrap();
        assert_eq!(
            line,
            "r1-r2 b <- tunnel from node 192.0.2.1 vni 5: ipv6 fd::1 > fd::2 icmpv6 len 98 -> lab/r2 eth1"
        );
    }

    #[test]
    fn the_link_filter_leaves_other_links_and_unknown_ends_out() {
        let record = "hook=0 if=7 vni=0 node=0.0.0.0 len=98 verdict=0 to=8 l3=arp";
        let only = |link: &str| BTreeSet::from([link.to_owned()]);
        assert!(describe(record, &names(), &only("r1-r2")).is_some());
        assert!(describe(record, &names(), &only("r2-r3")).is_none());
        let unknown = "hook=0 if=99 vni=0 node=0.0.0.0 len=98 verdict=3 to=0 l3=arp";
        assert!(describe(unknown, &names(), &only("r1-r2")).is_none());
        assert!(describe(unknown, &names(), &BTreeSet::new()).unwrap().starts_with("host veth 99"));
    }
}
