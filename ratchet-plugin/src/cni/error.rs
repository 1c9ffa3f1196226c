//! Every way a verb can fail, each with its CNI error code.
//!
//! Codes below 100 are the spec's; ratchet's own start at 100 and are listed
//! in the README. Messages name what failed and where (the variable, the
//! key, the interface, the netns), because the runtime shows them to people.

use rscni_types::error::Error as WireError;

use crate::{dataplane::DataplaneError, netlink::NetlinkError, store::StoreError, topology::TopologyError};

/// Ratchet's own error codes (the spec leaves 100 and up to plugins).
pub mod codes {
    /// A netlink request (veth, address, link state) failed.
    pub const NETLINK: u32 = 100;
    /// The pod has no link in the topology, so ratchet has nothing to give it.
    pub const POD_NOT_IN_TOPOLOGY: u32 = 101;
    /// An interface the link needs already exists in the pod.
    pub const IFNAME_TAKEN: u32 = 102;
    /// Loading, pinning or attaching the eBPF programs, or a map update, failed.
    pub const DATAPLANE: u32 = 103;
    /// A delegated plugin could not be run, or failed without a CNI error of its own.
    pub const DELEGATE: u32 = 104;
    /// CHECK found a link end that is not as ADD left it.
    pub const CHECK_DRIFT: u32 = 105;
    /// GC could not remove everything it should have; `details` lists each failure.
    pub const GC_INCOMPLETE: u32 = 106;
    /// The store lost its records while link ends are attached on this node.
    pub const STORE_LOST: u32 = 107;
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("{var}: {reason}")]
    Env { var: &'static str, reason: String },
    #[error("{0}")]
    Decode(String),
    #[error("{key}: {reason}")]
    Config { key: String, reason: String },
    #[error("{0}")]
    IncompatibleVersion(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("pod {pod} has no link in the topology (apply one with `ratchet topology apply`)")]
    PodNotInTopology { pod: String },
    #[error("interface {ifname} already exists in netns {netns}")]
    IfNameTaken { ifname: String, netns: String },
    #[error("{role} plugin {plugin}: {}", delegate_said(.error))]
    Delegate { role: &'static str, plugin: String, error: WireError },
    #[error("{role} plugin {plugin}: {reason}")]
    DelegateFailed { role: &'static str, plugin: String, reason: String },
    #[error("{0}")]
    CheckDrift(String),
    #[error("{0}")]
    Gc(String),
    #[error("{reason}")]
    NotAvailable { limited: bool, reason: String },
    #[error(
        "the verb did not finish within {seconds} s (verb_timeout_seconds): something it waits on hangs \
         (the store, a delegated plugin, or stdin left open); what it made so far is swept by DEL, GC or the next ADD"
    )]
    DeadlineExceeded { seconds: f64 },
}

impl CniError {
    /// The error as the spec's error result carries it: code, short message, details.
    pub fn to_wire(&self) -> WireError {
        let details = self.to_string();
        let custom = |code, msg: &str| WireError::Custom(code, msg.into(), details.clone());
        match self {
            CniError::Env { .. } => WireError::InvalidEnvValue(details),
            CniError::Decode(_) => WireError::FailedToDecode(details),
            CniError::Config { .. } | CniError::Topology(_) => WireError::InvalidNetworkConfig(details),
            CniError::IncompatibleVersion(_) => WireError::IncompatibleVersion(details),
            CniError::Io(_) => WireError::IOFailure(details),
            CniError::Store(error) if error.is_transient() => WireError::TryAgainLater(details),
            CniError::Store(StoreError::Refused { .. }) => WireError::InvalidNetworkConfig(details),
            CniError::Store(StoreError::Lost { .. }) => custom(codes::STORE_LOST, "the store lost its records"),
            CniError::Store(_) => WireError::IOFailure(details),
            CniError::Netlink(_) => custom(codes::NETLINK, "netlink request failed"),
            CniError::Dataplane(DataplaneError::Busy { .. }) => WireError::TryAgainLater(details),
            CniError::Dataplane(_) => custom(codes::DATAPLANE, "eBPF dataplane failed"),
            CniError::PodNotInTopology { .. } => custom(codes::POD_NOT_IN_TOPOLOGY, "pod has no link in the topology"),
            CniError::IfNameTaken { .. } => custom(codes::IFNAME_TAKEN, "interface already exists in the pod"),
            // The delegate's own code and message, with who said it in the details.
            CniError::Delegate { error, .. } => WireError::Custom(u32::from(error), error.msg().into(), details),
            CniError::DelegateFailed { .. } => custom(codes::DELEGATE, "delegated plugin failed"),
            CniError::CheckDrift(_) => custom(codes::CHECK_DRIFT, "link end differs from what ADD made"),
            CniError::Gc(_) => custom(codes::GC_INCOMPLETE, "garbage collection incomplete"),
            CniError::NotAvailable { limited: false, .. } => WireError::PluginNotAvailable(details),
            CniError::NotAvailable { limited: true, .. } => WireError::PluginNotAvailableLimitedConnectivity(details),
            CniError::DeadlineExceeded { .. } => WireError::TryAgainLater(details),
        }
    }
}

/// What a delegate's error says: its details, or its message when it gave none.
fn delegate_said(error: &WireError) -> &str {
    if error.details().is_empty() { error.msg() } else { error.details() }
}
