//! The link-end lifecycle: attach, release, tear down, sweep. ADD, DEL,
//! CHECK and GC (through `cni`) and the agent all come here; nothing here
//! knows CNI.
//!
//! Each operation runs inside one store transaction, in the same order:
//! resolve the pod's ends from the records, plan them (`plan`, pure),
//! apply with an undo log (veths, programs, counters, map entries), record,
//! commit. A failure anywhere undoes what was made. A released end is
//! unwired and forgotten inside the transaction (so no frame is redirected
//! to a dead ifindex); its veth is deleted after the commit, off the
//! runtime's clock ([`reap`]).
//!
//! [`Ends`] is the context every operation shares: the settings, the host's
//! netlink socket, the node's pinned dataplane and the fabric as the store
//! gives it in this transaction.

mod attach;
pub mod cut;
mod fabric;
pub mod impair;
mod inspect;
mod live;
mod orphans;
mod plan;
pub mod reap;
mod release;
mod sweep;
mod upgrade;

pub use self::{
    attach::{AttachedEnd, Sandbox, attach_pod},
    fabric::VXLAN_DEVICE,
    inspect::{Holding, Inspected, inspect_container},
    live::EndsByLink,
    release::{Released, release_container},
    sweep::collect_garbage,
};
use crate::{
    config::Settings,
    dataplane::{Counters, Dataplane, DataplaneError},
    netlink::{Netlink, NetlinkError},
    pairing::Fabric,
    store::{self, AnyStore, StoreError, Transaction, records, records::EndRecord},
    tc::TcError,
    topology::{Link, PodRef},
};

/// Every way a link-end operation can fail.
#[derive(Debug, thiserror::Error)]
pub enum EndsError {
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A netlink request (veth, address, netns) failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// Programs, maps or pins failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// A program could not be hung on or taken off an interface.
    #[error(transparent)]
    Tc(#[from] TcError),
    /// An interface a link end needs already exists in the pod.
    #[error("interface {ifname} already exists in netns {netns}")]
    IfNameTaken {
        /// The interface's name.
        ifname: String,
        /// The pod's netns path.
        netns: String,
    },
    /// An end is not as it was made (CHECK).
    #[error("{0}")]
    Drift(String),
    /// A link's MTU the underlay cannot carry once wrapped in VXLAN: on a
    /// node of several, either end may land on another node.
    #[error(
        "link {link}: mtu {mtu} is above what the underlay carries across nodes ({device}'s MTU {underlay} minus {overhead} bytes of VXLAN = {max})"
    )]
    MtuAboveUnderlay {
        /// The link's id.
        link: String,
        /// The MTU the topology gives it.
        mtu: u32,
        /// The interface holding the node's address.
        device: String,
        /// That interface's MTU.
        underlay: u32,
        /// The VXLAN overhead.
        overhead: u32,
        /// The largest link MTU it carries.
        max: u32,
    },
    /// An impairment that cannot be applied as asked.
    #[error("{0}")]
    BadImpairment(String),
    /// A pod end's qdisc could not be set as its impairment says.
    #[error(transparent)]
    Shaping(#[from] crate::shaping::ShapingError),
    /// A test's failpoint fired.
    #[error("failpoint {0} fired")]
    Failpoint(&'static str),
}

/// What every link-end operation shares within one transaction.
pub struct Ends<'a> {
    settings: &'a Settings,
    host: Netlink,
    /// `None` when nothing is pinned (after a reboot), for operations that
    /// only release; attaching always has one.
    dataplane: Option<Dataplane>,
    fabric: Fabric,
}

impl<'a> Ends<'a> {
    /// For operations that attach: loads and pins the programs if this node
    /// has none yet, and joins the fabric (node record, VXLAN device).
    pub async fn for_attach(
        tx: &mut impl Transaction,
        settings: &'a Settings,
        host: Netlink,
    ) -> Result<Self, EndsError> {
        let load = || Dataplane::open_or_load(&settings.pin_root, &settings.state_dir).map(Some);
        let Some(mut dataplane) = upgrade::current(tx, settings, &host, load).await? else {
            return Err(DataplaneError::NotLoaded { root: settings.pin_root.display().to_string() }.into());
        };
        let fabric = fabric::join(tx, settings, &host, &mut dataplane).await?;
        Ok(Self { settings, host, dataplane: Some(dataplane), fabric })
    }

    /// For operations that release or read: what is pinned, if anything.
    pub async fn for_release(
        tx: &mut impl Transaction,
        settings: &'a Settings,
        host: Netlink,
    ) -> Result<Self, EndsError> {
        let dataplane = upgrade::current(tx, settings, &host, || Dataplane::open(&settings.pin_root)).await?;
        let fabric = fabric::fabric(tx, settings, &host).await?;
        Ok(Self { settings, host, dataplane, fabric })
    }

    /// The fabric as this transaction read it.
    pub fn fabric(&self) -> &Fabric {
        &self.fabric
    }

    /// The host's netlink socket.
    pub fn host(&self) -> &Netlink {
        &self.host
    }

    /// The node's pinned dataplane, when there is one.
    pub fn dataplane(&mut self) -> Option<&mut Dataplane> {
        self.dataplane.as_mut()
    }

    /// The dataplane of a context made to attach.
    fn loaded(&mut self) -> Result<&mut Dataplane, EndsError> {
        let root = self.settings.pin_root.display().to_string();
        Ok(self.dataplane.as_mut().ok_or(DataplaneError::NotLoaded { root })?)
    }
}

/// The links the topology gives `pod`, the config's topology applied first
/// when it carries one.
pub async fn links_of_pod(
    tx: &mut impl Transaction,
    settings: &Settings,
    pod: &PodRef,
) -> Result<Vec<Link>, StoreError> {
    if let Some(topology) = &settings.topology {
        records::ensure_topology(tx, topology).await?;
    }
    records::links_of_pod(tx, pod).await
}

/// True when the record's host veth is still the one its ADD made: same
/// name, same ifindex. After a reboot it is not.
pub async fn is_live(host: &Netlink, record: &EndRecord) -> Result<bool, NetlinkError> {
    let found = host.link_by_name(&record.host_ifname).await?;
    Ok(found.is_some_and(|link| link.index == record.host_ifindex))
}

/// The store, told apart from a lost one: an embedded store found blank
/// while this node's pinned counters track ends is [`StoreError::Lost`].
/// Read as a new store, it would make every verb act as if the node held
/// nothing. (`ratchet reset` opens it with [`store::open`], as it is.)
pub async fn open_store(settings: &Settings) -> Result<AnyStore, StoreError> {
    let store = store::open(settings).await?;
    if let AnyStore::Embedded(embedded) = &store
        && embedded.is_blank()?
    {
        let ends = attached_ends(settings)?;
        if ends > 0 {
            return Err(StoreError::Lost {
                path: embedded.path().to_owned(),
                state_dir: settings.state_dir.display().to_string(),
                pin_root: settings.pin_root.display().to_string(),
                ends,
            });
        }
    }
    Ok(store)
}

/// How many host veths this node's pinned counters track (0 when nothing
/// is pinned): each attached end has its counters from ADD to DEL.
fn attached_ends(settings: &Settings) -> Result<usize, StoreError> {
    let failed =
        |e: DataplaneError| StoreError::Io { path: settings.pin_root.display().to_string(), message: e.to_string() };
    let counters = Counters::open(&settings.pin_root).map_err(failed)?;
    counters.map_or(Ok(0), |counters| counters.count().map_err(failed))
}

/// Returns from the enclosing function with [`EndsError::Failpoint`] when
/// the test named that step (`FAILPOINTS=<name>=return`). Compiled in only
/// with the `failpoints` feature, which `cargo xtask test` builds.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| Err($crate::ends::EndsError::Failpoint($name).into()));
    };
}
pub(crate) use failpoint;
