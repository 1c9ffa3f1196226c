//! The eBPF side of a node: load once, pin, and reuse from every ADD.
//!
//! The first verb on a node loads the embedded object, and pins the program
//! and its maps under the pin root (`/sys/fs/bpf/ratchet` by default). Every
//! later verb opens the pins: no load and no verification per ADD. Hanging
//! the programs on interfaces is [`crate::tc`]'s; this module gives it the
//! programs and keeps the tcx link pins.

use std::{
    fs, io,
    os::{fd::OwnedFd, unix::fs::DirBuilderExt},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues},
    programs::{
        ProgramError, SchedClassifier,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};
use ratchet_common::{
    EndStats, MAP_LOST, MAP_PEERS, MAP_STATS, MAP_SWITCHES, MAP_VNIS, MAX_ENDS, PROG_FROM_TUNNEL, PROG_TO_PEER, Peer,
    Switches, VniEnd,
};

mod layout;

pub use self::layout::{LAYOUT, Pinned, Staged, build_id, pinned};
use nix::fcntl::Flock;

use crate::{files::LOCK_WAIT, pairing::Entry};

/// The object `build.rs` compiled from `ratchet-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ratchet"));

/// Where bpffs lives when it is mounted at all.
const BPFFS: &str = "/sys/fs/bpf";

/// Pin names under the pin root (bpftool takes these paths).
const PIN_PROG: &str = PROG_TO_PEER;
const PIN_PROG_TUNNEL: &str = PROG_FROM_TUNNEL;
const PIN_PEERS: &str = "peers";
const PIN_VNIS: &str = "vnis";
const PIN_STATS: &str = "stats";
const PIN_LOST: &str = "lost";
const PIN_SWITCHES: &str = "switches";
/// tcx links, one pin per host veth.
const PIN_LINKS: &str = "links";

/// What can go wrong loading the object, or opening, writing or removing
/// the node's pins.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A file operation under the pin root (or on the load lock) failed.
    #[error("pin root {path}: {source}")]
    PinRoot {
        /// The file or directory it failed on.
        path: String,
        /// What went wrong, from the kernel or aya's pinning.
        source: io::Error,
    },
    /// Another verb holds the node's load lock for longer than we wait.
    #[error("{path} is held by another process for more than {waited:?}")]
    Busy {
        /// The lock file.
        path: String,
        /// How long we waited ([`LOCK_WAIT`]).
        waited: std::time::Duration,
    },
    /// bpffs was not mounted at `/sys/fs/bpf`, and mounting it failed.
    #[error("cannot mount bpffs at {BPFFS}: {0}")]
    Mount(nix::Error),
    /// Pins made under the pin root would be seen by this process alone and
    /// vanish when it exits: its mount namespace is not the host's, and the
    /// host's bpffs is not what it sees there (`ip netns exec` remounts /sys).
    #[error(
        "pin root {root}: {why}, so pins made here would vanish when this process exits and every link end \
         attached through them would stop forwarding. Run ratchet in the host's mount namespace (for a netns \
         \"node\", `nsenter --net=/run/netns/NAME` rather than `ip netns exec`), or give it the host's bpffs \
         (a DaemonSet mounts /sys/fs/bpf as a hostPath with Bidirectional propagation)"
    )]
    PrivateBpffs {
        /// The pin root.
        root: String,
        /// What was found.
        why: String,
    },
    /// The pin root is on a filesystem that is not bpffs.
    #[error("pin root {root} is not on a bpffs (pins need one; the default is under {BPFFS})")]
    NotBpffs {
        /// The pin root.
        root: String,
    },
    /// aya could not load the embedded object (parse it, or make its maps).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// Opening, loading or inspecting a program failed.
    #[error("{what}: {source}")]
    Program {
        /// The step, with the program or pin it was on.
        what: String,
        /// aya's error.
        source: ProgramError,
    },
    /// Opening a tcx link pin, or taking a new tcx link, failed.
    #[error("{what}: {source}")]
    Link {
        /// The step, with the pin or interface it was on.
        what: String,
        /// aya's error.
        source: LinkError,
    },
    /// Opening, reading or writing a pinned map failed.
    #[error("{what}: {source}")]
    Map {
        /// The step, with the pin or entry it was on (`write <entry>`).
        what: String,
        /// aya's error.
        source: MapError,
    },
    /// A pinned map's key or value size is not this build's: the pins were
    /// made by another version of ratchet, and must be unloaded first.
    #[error(
        "{path} was pinned by another version of ratchet ({source}): once no link end is attached on this node, \
         `ratchet unload` and retry"
    )]
    OtherVersion {
        /// The map's pin.
        path: String,
        /// aya's size mismatch.
        source: MapError,
    },
    /// A hash map refused a new key (E2BIG): the node already holds
    /// [`MAX_ENDS`] link ends.
    #[error("{what}: the {map} map is full ({MAX_ENDS} link ends per node); remove links or ends first")]
    Full {
        /// The write that failed, as [`DataplaneError::Map`] would have put it.
        what: String,
        /// The full map's name in the object.
        map: &'static str,
    },
    /// The pins are of another layout than this build's.
    #[error(
        "pin root {root} holds maps of layout {pinned}; this build speaks layout {ours}{}",
        if pinned > ours {
            ": a downgrade is refused (run the newer build; or, with no link end attached on this node, \
             `ratchet unload` first)"
        } else {
            ": they are rebuilt in this build's layout, under the store's lock, by this node's next verb or \
             its agent; retry"
        }
    )]
    Layout {
        /// The pin root.
        root: String,
        /// The layout its pins are in.
        pinned: u32,
        /// This build's ([`LAYOUT`]).
        ours: u32,
    },
    /// A verb that attaches found nothing loaded under its pin root.
    #[error("nothing is pinned under {root}")]
    NotLoaded {
        /// The pin root it looked under.
        root: String,
    },
    /// A name in `ratchet_common` the embedded object does not define: the
    /// two sides of the build disagree (the unit test below catches it).
    #[error("the eBPF object has no program or map named {name}")]
    NotInObject {
        /// The program or map asked for.
        name: &'static str,
    },
}

/// One of ratchet's two programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// [`PROG_TO_PEER`], on every host veth.
    ToPeer = 0,
    /// [`PROG_FROM_TUNNEL`], on the node's VXLAN device.
    FromTunnel = 1,
}

impl Program {
    /// Its name in the object, in `bpftool prog` and on its TC filter.
    pub fn name(self) -> &'static str {
        match self {
            Program::ToPeer => PROG_TO_PEER,
            Program::FromTunnel => PROG_FROM_TUNNEL,
        }
    }

    fn pin(self) -> &'static str {
        match self {
            Program::ToPeer => PIN_PROG,
            Program::FromTunnel => PIN_PROG_TUNNEL,
        }
    }
}

/// The pinned programs and maps of one node. A program is opened through
/// aya only for a tcx attachment: opening one probes the kernel's features,
/// a dozen test loads that a short-lived verb need not pay.
pub struct Dataplane {
    root: PathBuf,
    generation: u32,
    /// The build marker beside the pins is this build's.
    this_build: bool,
    /// Each [`Program`], once opened through aya.
    classifiers: [Option<SchedClassifier>; 2],
    peers: HashMap<MapData, u32, Peer>,
    vnis: HashMap<MapData, u32, VniEnd>,
    stats: PerCpuHashMap<MapData, u32, EndStats>,
    /// `None` in layout 1's pins, which an upgrade reads counters from.
    lost: Option<PerCpuHashMap<MapData, u32, u64>>,
}

impl Dataplane {
    /// Opens the node's pins, loading and pinning the object first if there
    /// are none. `lock_dir` holds the lock that keeps two first ADDs from
    /// loading twice.
    pub fn open_or_load(root: &Path, lock_dir: &Path) -> Result<Self, DataplaneError> {
        if let Some(dataplane) = Self::open(root)? {
            return Ok(dataplane);
        }
        ensure_bpffs(root)?;
        let _lock = Self::lock_loading(root, lock_dir)?;
        if let Some(dataplane) = Self::open(root)? {
            return Ok(dataplane);
        }
        load_and_pin(root)?;
        // Another process may unload between our pinning and this open.
        Self::open(root)?.ok_or_else(|| DataplaneError::PinRoot {
            path: root.display().to_string(),
            source: io::Error::new(io::ErrorKind::NotFound, "the pins just made are gone again"),
        })
    }

    /// Takes the node's load lock (in `lock_dir`), held while pins under
    /// `root` are made or replaced, so that two processes never do it at once.
    pub fn lock_loading(root: &Path, lock_dir: &Path) -> Result<Flock<fs::File>, DataplaneError> {
        let lock_path = lock_dir.join("dataplane.lock");
        let pin_root_error = |source| DataplaneError::PinRoot { path: root.display().to_string(), source };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(lock_dir).map_err(pin_root_error)?;
        let file = fs::File::create(&lock_path).map_err(pin_root_error)?;
        crate::files::lock_exclusive(file, LOCK_WAIT).map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut => {
                DataplaneError::Busy { path: lock_path.display().to_string(), waited: LOCK_WAIT }
            }
            _ => pin_root_error(e),
        })
    }

    /// Opens the node's pins; `None` when nothing is loaded on this node.
    pub fn open(root: &Path) -> Result<Option<Self>, DataplaneError> {
        let prog_pin = root.join(PIN_PROG);
        if !prog_pin.exists() {
            // Nothing pinned, or pins this process cannot see: say which.
            ensure_host_sees(root)?;
            return Ok(None);
        }
        let (pinned, build) = layout::markers(root)?;
        if pinned != LAYOUT {
            return Err(DataplaneError::Layout { root: root.display().to_string(), pinned, ours: LAYOUT });
        }
        let mut dataplane = Self::open_as_is(root)?;
        dataplane.this_build = build.as_deref() == Some(build_id().as_str());
        Ok(Some(dataplane))
    }

    /// Whether this build's programs are the pinned ones (another build of
    /// the same layout swaps its own in: see `ends::upgrade`).
    pub fn is_this_build(&self) -> bool {
        self.this_build
    }

    /// Opens pins known to be there, whatever their layout (a staging
    /// directory, or the old maps a layout upgrade copies counters from).
    pub fn open_as_is(root: &Path) -> Result<Self, DataplaneError> {
        // The peers map is opened once, for its kernel id and its entries.
        let peers_pin = root.join(PIN_PEERS);
        let failed = |source| DataplaneError::Map { what: format!("open {}", peers_pin.display()), source };
        let peers = MapData::from_pin(&peers_pin).map_err(failed)?;
        let generation = peers.info().map_err(failed)?.id();
        Ok(Self {
            root: root.to_owned(),
            generation,
            this_build: false,
            classifiers: [None, None],
            peers: typed_map(peers, &peers_pin)?,
            vnis: open_map(root, PIN_VNIS)?,
            stats: open_map(root, PIN_STATS)?,
            lost: root.join(PIN_LOST).exists().then(|| open_map(root, PIN_LOST)).transpose()?,
        })
    }

    /// The pin root these pins are under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Which load of the maps this is: the kernel id of the peers map, new
    /// whenever the pins are made afresh (after a reboot, or an unload). Map
    /// entries written under another generation are not in these maps.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// A new fd of a pinned program, for attaching it with ratchet's own
    /// netlink socket.
    pub fn program_fd(&self, program: Program) -> Result<OwnedFd, DataplaneError> {
        let pin = self.root.join(program.pin());
        obj_get(&pin, 0).map_err(|source| DataplaneError::PinRoot { path: pin.display().to_string(), source })
    }

    /// A pinned program's kernel id, without opening it as a program.
    pub fn program_id(&self, program: Program) -> Result<u32, DataplaneError> {
        let pin = self.root.join(program.pin());
        let info = aya::programs::ProgramInfo::from_pin(&pin)
            .map_err(|source| DataplaneError::Program { what: format!("info of {}", pin.display()), source })?;
        Ok(info.id())
    }

    /// A pinned program opened through aya (on first use: opening probes the
    /// kernel's features), for attaching it as a tcx link.
    pub fn classifier(&mut self, program: Program) -> Result<&mut SchedClassifier, DataplaneError> {
        let pin = self.root.join(program.pin());
        let slot = &mut self.classifiers[program as usize];
        if let Some(opened) = slot {
            return Ok(opened);
        }
        let opened = SchedClassifier::from_pin(&pin)
            .map_err(|source| DataplaneError::Program { what: format!("open {}", pin.display()), source })?;
        Ok(slot.insert(opened))
    }

    /// Pins a host veth's tcx link under `links/<ifname>`: the pin keeps
    /// the attachment alive after this process exits.
    pub fn pin_tcx_link(&self, ifname: &str, link: FdLink) -> Result<(), DataplaneError> {
        let links = self.root.join(PIN_LINKS);
        let pin_error = |source| DataplaneError::PinRoot { path: links.display().to_string(), source };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&links).map_err(pin_error)?;
        link.pin(links.join(ifname)).map_err(|e| pin_error(io::Error::other(e)))?;
        Ok(())
    }

    /// Removes a host veth's tcx link pin, which detaches the program. A
    /// missing pin is not an error.
    pub fn unpin_tcx_link(&self, ifname: &str) -> Result<(), DataplaneError> {
        let path = self.root.join(PIN_LINKS).join(ifname);
        if !path.exists() {
            return Ok(());
        }
        let pinned = PinnedLink::from_pin(&path)
            .map_err(|source| DataplaneError::Link { what: format!("open {}", path.display()), source })?;
        // Unpin, then drop our fd, the last reference: the detach is synchronous.
        drop(pinned.unpin().map_err(|source| DataplaneError::PinRoot { path: path.display().to_string(), source })?);
        Ok(())
    }

    /// Whether a host veth has a tcx link pin.
    pub fn tcx_link_pinned(&self, ifname: &str) -> bool {
        self.root.join(PIN_LINKS).join(ifname).exists()
    }

    /// Writes one forwarding entry.
    pub fn apply(&mut self, entry: &Entry) -> Result<(), DataplaneError> {
        let (map, written) = match *entry {
            Entry::Peer { from, to } => (MAP_PEERS, self.peers.insert(from, to, 0)),
            Entry::Tunnel { vni, to, from_node } => {
                (MAP_VNIS, self.vnis.insert(vni, VniEnd { ifindex: to, remote_ipv4: from_node }, 0))
            }
        };
        written.map_err(|source| {
            full_or(map, source, |source| DataplaneError::Map { what: format!("write {entry:?}"), source })
        })
    }

    /// Sets the loss of the frames entering host veth `from`, in its
    /// forwarding entry; none yet (its peer waits) is fine, as the entry
    /// written when the peer comes takes the loss from the end's record.
    pub fn set_loss(&mut self, from: u32, loss: u16) -> Result<(), DataplaneError> {
        let failed = |source| DataplaneError::Map { what: format!("set the loss of {MAP_PEERS}[{from}]"), source };
        let peer = match self.peers.get(&from, 0) {
            Ok(peer) => peer,
            Err(MapError::KeyNotFound) => return Ok(()),
            Err(source) => return Err(failed(source)),
        };
        if peer.loss == loss {
            return Ok(());
        }
        self.peers.insert(from, Peer { loss, ..peer }, 0).map_err(failed)
    }

    /// Removes whatever occupies an entry's slot. Missing is fine.
    pub fn remove(&mut self, entry: &Entry) -> Result<(), DataplaneError> {
        let removed = match *entry {
            Entry::Peer { from, .. } => self.peers.remove(&from),
            Entry::Tunnel { vni, .. } => self.vnis.remove(&vni),
        };
        ignore_missing(removed).map_err(|source| DataplaneError::Map { what: format!("remove {entry:?}"), source })
    }

    /// Every forwarding entry in the maps.
    pub fn entries(&self) -> Result<Vec<Entry>, DataplaneError> {
        let read_error = |map: &str, source| DataplaneError::Map { what: format!("list {map}"), source };
        let mut entries = Vec::new();
        for item in self.peers.iter() {
            let (from, to) = item.map_err(|e| read_error(MAP_PEERS, e))?;
            entries.push(Entry::Peer { from, to });
        }
        for item in self.vnis.iter() {
            let (vni, local) = item.map_err(|e| read_error(MAP_VNIS, e))?;
            entries.push(Entry::Tunnel { vni, to: local.ifindex, from_node: local.remote_ipv4 });
        }
        Ok(entries)
    }

    /// Every host ifindex with counters.
    pub fn tracked(&self) -> Result<Vec<u32>, DataplaneError> {
        self.stats
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|source| DataplaneError::Map { what: format!("list {MAP_STATS}"), source })
    }

    /// Starts counting for a host veth, from zero.
    pub fn track(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let map_error = |source| DataplaneError::Map { what: format!("{MAP_STATS}[{ifindex}] = 0"), source };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| map_error(MapError::from(e)))?;
        let zeros =
            PerCpuValues::try_from(vec![EndStats::default(); cpus]).map_err(|e| map_error(MapError::from(e)))?;
        self.stats.insert(ifindex, zeros, 0).map_err(|source| full_or(MAP_STATS, source, map_error))
    }

    /// Starts counting for a host veth where `from` (older maps) is now,
    /// CPU by CPU (from zero when it has no counters for it), and returns
    /// what it copied.
    pub fn carry_stats(&mut self, from: &Dataplane, ifindex: u32) -> Result<Vec<EndStats>, DataplaneError> {
        let copied = from.stats_per_cpu(ifindex)?;
        let failed = |source| DataplaneError::Map { what: format!("carry {MAP_STATS}[{ifindex}] over"), source };
        let values = PerCpuValues::try_from(copied.clone()).map_err(|e| failed(MapError::from(e)))?;
        self.stats.insert(ifindex, values, 0).map_err(|source| full_or(MAP_STATS, source, failed))?;
        if let (Some(old), Some(new)) = (&from.lost, &mut self.lost)
            && let Ok(lost) = old.get(&ifindex, 0)
        {
            new.insert(ifindex, lost, 0).map_err(|source| full_or(MAP_LOST, source, failed))?;
        }
        Ok(copied)
    }

    /// Adds what `from` counted for a host veth since [`Self::carry_stats`]
    /// copied `copied`: once the new program runs, the old counters are
    /// final. What this host veth counts during this read-add-write (a few
    /// microseconds) is lost.
    pub fn carry_stats_since(
        &mut self,
        from: &Dataplane,
        ifindex: u32,
        copied: &[EndStats],
    ) -> Result<(), DataplaneError> {
        let grown = from.stats_per_cpu(ifindex)?;
        let ours = self.stats_per_cpu(ifindex)?;
        let sum: Vec<EndStats> = ours
            .iter()
            .zip(grown.iter().zip(copied))
            .map(|(now, (last, first))| EndStats {
                packets: now.packets + last.packets.saturating_sub(first.packets),
                bytes: now.bytes + last.bytes.saturating_sub(first.bytes),
                drops: now.drops + last.drops.saturating_sub(first.drops),
            })
            .collect();
        let failed = |source| DataplaneError::Map { what: format!("carry {MAP_STATS}[{ifindex}] over"), source };
        let values = PerCpuValues::try_from(sum).map_err(|e| failed(MapError::from(e)))?;
        self.stats.insert(ifindex, values, 0).map_err(failed)
    }

    /// A host veth's counters, per CPU (zeros when not tracked).
    fn stats_per_cpu(&self, ifindex: u32) -> Result<Vec<EndStats>, DataplaneError> {
        match self.stats.get(&ifindex, 0) {
            Ok(values) => Ok(values.iter().copied().collect()),
            Err(MapError::KeyNotFound) => {
                let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Map {
                    what: format!("read {MAP_STATS}[{ifindex}]"),
                    source: MapError::from(e),
                })?;
                Ok(vec![EndStats::default(); cpus])
            }
            Err(source) => Err(DataplaneError::Map { what: format!("read {MAP_STATS}[{ifindex}]"), source }),
        }
    }

    /// Stops counting for a host veth. Missing is fine.
    pub fn untrack(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        ignore_missing(self.stats.remove(&ifindex))
            .map_err(|source| DataplaneError::Map { what: format!("remove {MAP_STATS}[{ifindex}]"), source })?;
        let Some(lost) = &mut self.lost else { return Ok(()) };
        ignore_missing(lost.remove(&ifindex))
            .map_err(|source| DataplaneError::Map { what: format!("remove {MAP_LOST}[{ifindex}]"), source })
    }

    /// A host veth's counters, summed over CPUs; `None` when not tracked.
    pub fn stats(&self, ifindex: u32) -> Result<Option<EndStats>, DataplaneError> {
        sum_stats(&self.stats, ifindex)
    }

    /// The run-time switches, as the programs read them.
    pub fn switches(&self) -> Result<Switches, DataplaneError> {
        let map: Array<MapData, Switches> = open_map(&self.root, PIN_SWITCHES)?;
        map.get(&0, 0).map_err(|source| DataplaneError::Map { what: format!("read {MAP_SWITCHES}"), source })
    }

    /// Sets the run-time switches every attached copy of the program reads.
    pub fn set_switches(&self, switches: Switches) -> Result<(), DataplaneError> {
        let mut map: Array<MapData, Switches> = open_map(&self.root, PIN_SWITCHES)?;
        map.set(0, switches, 0).map_err(|source| DataplaneError::Map { what: format!("write {MAP_SWITCHES}"), source })
    }

    /// Removes every pin under `root` (the CLI's `unload`): programs still
    /// attached keep running until their veths go, but nothing new can use them.
    pub fn unload(root: &Path) -> Result<(), DataplaneError> {
        match fs::remove_dir_all(root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.map_err(|source| DataplaneError::PinRoot { path: root.display().to_string(), source }),
        }
    }
}

fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// A full hash map refuses a new key with E2BIG: say so plainly, as the
/// operator has something to do about it.
fn full_or(map: &'static str, source: MapError, other: impl FnOnce(MapError) -> DataplaneError) -> DataplaneError {
    match &source {
        MapError::SyscallError(aya::sys::SyscallError { io_error, .. })
            if io_error.raw_os_error() == Some(libc::E2BIG) =>
        {
            DataplaneError::Full { what: format!("{}", other(source)), map }
        }
        _ => other(source),
    }
}

/// The per-end counters, opened read-only: all `ratchet links` needs, and
/// all an operator's view should be able to touch (the kernel refuses any
/// write through a read-only map fd).
pub struct Counters {
    stats: PerCpuHashMap<MapData, u32, EndStats>,
    /// `None` under layout 1's pins, until an upgrade rebuilds them.
    lost: Option<PerCpuHashMap<MapData, u32, u64>>,
    switches: Array<MapData, Switches>,
}

impl Counters {
    /// `None` when nothing is loaded on this node.
    pub fn open(root: &Path) -> Result<Option<Self>, DataplaneError> {
        let path = root.join(PIN_STATS);
        if !path.exists() {
            return Ok(None);
        }
        let lost = root.join(PIN_LOST);
        let lost = lost.exists().then(|| open_read_only(&lost)).transpose()?;
        let switches = open_read_only(&root.join(PIN_SWITCHES))?;
        Ok(Some(Self { stats: open_read_only(&path)?, lost, switches }))
    }

    /// A host veth's counters, summed over CPUs; `None` when not tracked.
    pub fn get(&self, ifindex: u32) -> Result<Option<EndStats>, DataplaneError> {
        sum_stats(&self.stats, ifindex)
    }

    /// The frames a host veth's configured loss dropped, summed over CPUs.
    pub fn lost(&self, ifindex: u32) -> Result<u64, DataplaneError> {
        let Some(lost) = &self.lost else { return Ok(0) };
        match lost.get(&ifindex, 0) {
            Ok(per_cpu) => Ok(per_cpu.iter().sum()),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(source) => Err(DataplaneError::Map { what: format!("read {MAP_LOST}[{ifindex}]"), source }),
        }
    }

    /// The run-time switches, as the programs read them.
    pub fn switches(&self) -> Result<Switches, DataplaneError> {
        self.switches.get(&0, 0).map_err(|source| DataplaneError::Map { what: format!("read {MAP_SWITCHES}"), source })
    }

    /// How many host veths have counters.
    pub fn count(&self) -> Result<usize, DataplaneError> {
        let mut count = 0;
        for key in self.stats.keys() {
            key.map_err(|source| DataplaneError::Map { what: format!("list {MAP_STATS}"), source })?;
            count += 1;
        }
        Ok(count)
    }
}

/// A pinned map opened read-only, as the type this build reads it as.
fn open_read_only<M>(path: &Path) -> Result<M, DataplaneError>
where
    M: TryFrom<Map, Error = MapError>,
{
    let map_error = |source| DataplaneError::Map { what: format!("open {} read-only", path.display()), source };
    let fd = obj_get_read_only(path).map_err(|io_error| {
        map_error(MapError::SyscallError(aya::sys::SyscallError { call: "BPF_OBJ_GET", io_error }))
    })?;
    typed_map(MapData::from_fd(fd).map_err(map_error)?, path)
}

/// `BPF_OBJ_GET` with `BPF_F_RDONLY`: aya 0.14 opens pins read-write only.
fn obj_get_read_only(path: &Path) -> io::Result<OwnedFd> {
    const BPF_F_RDONLY: u32 = 1 << 3;
    obj_get(path, BPF_F_RDONLY)
}

/// `BPF_OBJ_GET`: a new fd of a pinned object, with these file flags.
fn obj_get(path: &Path, file_flags: u32) -> io::Result<OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};

    /// The `BPF_OBJ_*` member of `union bpf_attr` (linux/bpf.h). The kernel
    /// refuses non-zero bytes past `path_fd`, so the padding is a field.
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        zero: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let attr = ObjGetAttr { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags, path_fd: 0, zero: 0 };
    // SAFETY: attr is a valid BPF_OBJ_GET attribute whose path outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &attr, size_of::<ObjGetAttr>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn sum_stats<T: std::borrow::Borrow<MapData>>(
    stats: &PerCpuHashMap<T, u32, EndStats>,
    ifindex: u32,
) -> Result<Option<EndStats>, DataplaneError> {
    match stats.get(&ifindex, 0) {
        Ok(per_cpu) => Ok(Some(per_cpu.iter().fold(EndStats::default(), |sum, cpu| sum + *cpu))),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(source) => Err(DataplaneError::Map { what: format!("read {MAP_STATS}[{ifindex}]"), source }),
    }
}

fn open_map<M>(root: &Path, pin: &str) -> Result<M, DataplaneError>
where
    M: TryFrom<Map, Error = MapError>,
{
    let path = root.join(pin);
    let data = MapData::from_pin(&path)
        .map_err(|source| DataplaneError::Map { what: format!("open {}", path.display()), source })?;
    typed_map(data, &path)
}

/// A pinned map opened from `path`, as the type this build reads it as; a
/// map of other key or value sizes is another version's.
fn typed_map<M>(data: MapData, path: &Path) -> Result<M, DataplaneError>
where
    M: TryFrom<Map, Error = MapError>,
{
    let map_error = |source| DataplaneError::Map { what: format!("open {}", path.display()), source };
    let map = Map::from_map_data(data).map_err(map_error)?;
    M::try_from(map).map_err(|source| match source {
        MapError::InvalidKeySize { .. } | MapError::InvalidValueSize { .. } => {
            DataplaneError::OtherVersion { path: path.display().to_string(), source }
        }
        other => map_error(other),
    })
}

/// Makes the pin root's bpffs ready: mounted at its usual place when the
/// pin root sits there and it is missing (some hosts do not mount it at
/// boot), and one the host sees, so pins outlive this process.
fn ensure_bpffs(root: &Path) -> Result<(), DataplaneError> {
    if !on_bpffs(&existing_ancestor(root)) && root.starts_with(BPFFS) && !on_bpffs(Path::new(BPFFS)) {
        // Mounting is only right in the host's mount namespace: anywhere
        // else the new bpffs, and every pin in it, dies with this process.
        if in_host_mount_namespace() != Some(true) {
            return Err(no_host_bpffs(root));
        }
        mount(Some("bpf"), BPFFS, Some("bpf"), MsFlags::empty(), None::<&str>).map_err(DataplaneError::Mount)?;
    }
    if !on_bpffs(&existing_ancestor(root)) {
        return Err(DataplaneError::NotBpffs { root: root.display().to_string() });
    }
    ensure_host_sees(root)
}

/// For an operator's view of the pins (`ratchet links`): a pin root with
/// no bpffs under it cannot hold pins, so what the host holds cannot be
/// read from here. Said, rather than shown as a node with no counters.
pub fn ensure_readable_bpffs(root: &Path) -> Result<(), DataplaneError> {
    if on_bpffs(&existing_ancestor(root)) {
        return ensure_host_sees(root);
    }
    match root.starts_with(BPFFS) {
        true => Err(no_host_bpffs(root)),
        false => Err(DataplaneError::NotBpffs { root: root.display().to_string() }),
    }
}

fn no_host_bpffs(root: &Path) -> DataplaneError {
    let why = format!(
        "no bpffs is mounted at {BPFFS} in this process's mount namespace, which is not known to be the host's \
         (`ip netns exec` remounts /sys)"
    );
    DataplaneError::PrivateBpffs { root: root.display().to_string(), why }
}

fn on_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Fails when this process runs in a mount namespace other than the host's
/// (PID 1's) and what it finds at the pin root is not what the host finds
/// there: a bpffs of its own, or none. Inside a container whose PID 1 is
/// the container's own, this compares with itself and passes: its mounts
/// are the manifest's to get right.
fn ensure_host_sees(root: &Path) -> Result<(), DataplaneError> {
    if in_host_mount_namespace() != Some(false) {
        return Ok(());
    }
    let here = existing_ancestor(root);
    let host = Path::new("/proc/1/root").join(here.strip_prefix("/").unwrap_or(&here));
    let on_bpffs = on_bpffs(&here);
    let same = match (fs::metadata(&here), fs::metadata(&host)) {
        (Ok(a), Ok(b)) => std::os::unix::fs::MetadataExt::dev(&a) == std::os::unix::fs::MetadataExt::dev(&b),
        _ => false,
    };
    if on_bpffs && same {
        return Ok(());
    }
    let why = match on_bpffs {
        true => format!("the bpffs at {} is this mount namespace's own, not the host's", here.display()),
        false => format!("{} is not on a bpffs in this mount namespace, which is not the host's", here.display()),
    };
    Err(DataplaneError::PrivateBpffs { root: root.display().to_string(), why })
}

/// Whether this process shares PID 1's mount namespace; `None` when that
/// cannot be told (PID 1's namespace is not ours to read, as in some
/// sandboxes and VMs).
fn in_host_mount_namespace() -> Option<bool> {
    let ours = fs::read_link("/proc/self/ns/mnt").ok()?;
    Some(ours == fs::read_link("/proc/1/ns/mnt").ok()?)
}

/// The path itself, or its nearest ancestor that exists.
fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors().find(|dir| dir.exists()).unwrap_or(Path::new("/")).to_path_buf()
}

/// Loads the object and pins what later verbs open; pins go to a fresh
/// directory first so a crash never leaves a half-pinned root behind.
fn load_and_pin(root: &Path) -> Result<(), DataplaneError> {
    let staging = staging_dir(root);
    let pin_error = |path: &Path, source| DataplaneError::PinRoot { path: path.display().to_string(), source };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&staging).map_err(|e| pin_error(&staging, e))?;
    let result = pin_into(&staging);
    let result = result.and_then(|()| fs::rename(&staging, root).map_err(|e| pin_error(root, e)));
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// Where this process stages a load beside `root`, once the stale staging
/// directories of dead processes are gone.
fn staging_dir(root: &Path) -> PathBuf {
    sweep_stale_staging(root);
    // bpffs refuses names with a dot in them.
    PathBuf::from(format!("{}-loading-{}", root.display(), std::process::id()))
}

/// Removes the staging directories of loads whose process died mid-load
/// (`<root>-loading-<pid>` with no such process): nothing else would.
fn sweep_stale_staging(root: &Path) {
    let (Some(parent), Some(name)) = (root.parent(), root.file_name()) else { return };
    let prefix = format!("{}-loading-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let pid = file_name.to_string_lossy().strip_prefix(&prefix).and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn pin_into(dir: &Path) -> Result<(), DataplaneError> {
    let mut ebpf: Ebpf = EbpfLoader::new().load(OBJECT)?;
    layout::pin_programs(&mut ebpf, dir)?;
    for (map, pin) in MAP_PINS {
        let found = ebpf.map(map).ok_or(DataplaneError::NotInObject { name: map })?;
        found.pin(dir.join(pin)).map_err(|e| DataplaneError::PinRoot {
            path: dir.join(pin).display().to_string(),
            source: io::Error::other(e),
        })?;
    }
    layout::mark(dir).map_err(|source| DataplaneError::PinRoot { path: dir.display().to_string(), source })
}

/// Each map of the object, by its name there, and its pin's name.
const MAP_PINS: [(&str, &str); 5] = [
    (MAP_PEERS, PIN_PEERS),
    (MAP_VNIS, PIN_VNIS),
    (MAP_STATS, PIN_STATS),
    (MAP_LOST, PIN_LOST),
    (MAP_SWITCHES, PIN_SWITCHES),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program and map name the plugin opens is one the embedded
    /// object defines: the names are constants in `ratchet-common`, used
    /// by both sides, and this load (as root, maps only) proves they agree.
    #[test]
    fn the_object_defines_every_name_the_plugin_uses() {
        let mut ebpf = EbpfLoader::new().load(OBJECT).expect("the object loads (run as root)");
        for program in [PROG_TO_PEER, PROG_FROM_TUNNEL] {
            assert!(ebpf.program_mut(program).is_some(), "no program {program}");
        }
        for map in [MAP_PEERS, MAP_VNIS, MAP_STATS, MAP_SWITCHES] {
            assert!(ebpf.map(map).is_some(), "no map {map}");
        }
    }
}
