//! Every way a verb can fail, each with its CNI error code: the one place
//! the layers' errors become CNI's.
//!
//! Codes below 100 are the spec's; ratchet's own start at 100 and are listed
//! in the README. Messages name what failed and where (the variable, the
//! key, the interface, the netns), because the runtime shows them to people.

use rscni_types::error::Error as WireError;

use crate::{
    config::ConfigError, dataplane::DataplaneError, ends::EndsError, netlink::NetlinkError, shaping::ShapingError,
    store::StoreError, tc::TcError, topology::TopologyError,
};

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

/// Why a verb failed, as the runtime will be told.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// A `CNI_*` variable is missing or unusable (code 4).
    #[error("{var}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// stdin is not a JSON config (code 6).
    #[error("{0}")]
    Decode(String),
    /// A config key has a value ratchet cannot use (code 7).
    #[error("{key}: {reason}")]
    Config {
        /// The key, as a path into the config.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// The config's (or prevResult's) version is not one ratchet speaks (code 1).
    #[error("{0}")]
    IncompatibleVersion(String),
    /// Reading stdin, or the process's own plumbing, failed (code 5).
    #[error("{0}")]
    Io(String),
    /// The store failed: busy or unreachable (11), lost (107), else 5 or 7.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The topology is not valid (code 7).
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A netlink request failed (code 100).
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The eBPF side failed (code 103; 11 when another verb holds the load lock).
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// Hanging a program on an interface failed (code 103).
    #[error(transparent)]
    Tc(TcError),
    /// The pod has no link and nothing else serves it (code 101).
    #[error("pod {pod} has no link in the topology (apply one with `ratchet topology apply`)")]
    PodNotInTopology {
        /// The pod, `namespace/name`.
        pod: String,
    },
    /// An interface a link needs already exists in the pod (code 102).
    #[error("interface {ifname} already exists in netns {netns}")]
    IfNameTaken {
        /// The interface.
        ifname: String,
        /// The pod's netns.
        netns: String,
    },
    /// A delegate answered with a CNI error: passed on with its code.
    #[error("{role} plugin {plugin}: {}", delegate_said(.error))]
    Delegate {
        /// `delegate` or `boot_network`.
        role: &'static str,
        /// The plugin's type.
        plugin: String,
        /// Its error.
        error: WireError,
    },
    /// A delegate could not be run, or failed without a CNI error (code 104).
    #[error("{role} plugin {plugin}: {reason}")]
    DelegateFailed {
        /// `delegate` or `boot_network`.
        role: &'static str,
        /// The plugin's type.
        plugin: String,
        /// What went wrong.
        reason: String,
    },
    /// CHECK found an end not as ADD left it (code 105).
    #[error("{0}")]
    CheckDrift(String),
    /// GC could not remove everything (code 106).
    #[error("{0}")]
    Gc(String),
    /// STATUS: the plugin cannot serve ADD now (50, or 51 when links already up keep working).
    #[error("{reason}")]
    NotAvailable {
        /// Links already up keep forwarding.
        limited: bool,
        /// Why.
        reason: String,
    },
    /// The verb ran past its deadline (code 11).
    #[error(
        "the verb did not finish within {seconds} s (verb_timeout_seconds): something it waits on hangs \
         (the store, a delegated plugin, or stdin left open); what it made so far is swept by DEL, GC or the next ADD"
    )]
    DeadlineExceeded {
        /// The deadline it had.
        seconds: f64,
    },
}

impl From<ConfigError> for CniError {
    fn from(ConfigError { key, reason }: ConfigError) -> Self {
        CniError::Config { key, reason }
    }
}

impl From<TcError> for CniError {
    fn from(error: TcError) -> Self {
        match error {
            TcError::Netlink(e) => CniError::Netlink(e),
            TcError::Dataplane(e) => CniError::Dataplane(e),
            other => CniError::Tc(other),
        }
    }
}

/// The link-end layer's errors, as the verbs that called it report them.
impl From<EndsError> for CniError {
    fn from(error: EndsError) -> Self {
        match error {
            EndsError::Store(e) => CniError::Store(e),
            EndsError::Netlink(e) => CniError::Netlink(e),
            EndsError::Dataplane(e) => CniError::Dataplane(e),
            EndsError::Tc(e) => e.into(),
            EndsError::IfNameTaken { ifname, netns } => CniError::IfNameTaken { ifname, netns },
            EndsError::Drift(what) => CniError::CheckDrift(what),
            too_big @ EndsError::MtuAboveUnderlay { .. } => {
                CniError::Config { key: "topology".into(), reason: too_big.to_string() }
            }
            EndsError::Shaping(ShapingError::Netlink(e)) => CniError::Netlink(e),
            EndsError::Shaping(no_netem @ ShapingError::NoNetem { .. }) => {
                CniError::Config { key: "topology".into(), reason: no_netem.to_string() }
            }
            EndsError::BadImpairment(reason) => CniError::Config { key: "topology".into(), reason },
            failpoint @ EndsError::Failpoint(_) => CniError::Io(failpoint.to_string()),
        }
    }
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
            // Older pins are rebuilt by the next verb: retrying helps; newer ones never are.
            CniError::Dataplane(DataplaneError::Layout { pinned, ours, .. }) if pinned < ours => {
                WireError::TryAgainLater(details)
            }
            CniError::Dataplane(_) | CniError::Tc(_) => custom(codes::DATAPLANE, "eBPF dataplane failed"),
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
