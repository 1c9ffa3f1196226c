//! TC: the one place ratchet's programs are hung on interfaces, replaced,
//! taken off and looked for, for host veths and the VXLAN device alike.
//!
//! clsact is done with this process's own netlink messages (the qdisc, then
//! a direct-action `bpf` filter holding a fd of the pinned program), as
//! `tc filter add dev X ingress bpf da fd N` does: aya's attach would open
//! the program first (probing the kernel's features, a dozen test loads per
//! verb) and two sockets of its own, about a millisecond of every ADD. The
//! filter holds the program and goes with the interface. tcx goes through
//! aya, whose link is pinned (see [`Dataplane::pin_tcx_link`]) so that it
//! outlives the plugin process.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::programs::{LinkOrder, ProgramError, TcAttachType, links::FdLink, tc::TcAttachOptions};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
    },
};

use crate::{
    config::AttachMode,
    dataplane::{Dataplane, DataplaneError, Program, Staged},
    netlink::{Netlink, NetlinkError, errno},
};

/// What can go wrong hanging a program on an interface.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    /// A clsact request (qdisc, filter, listing) failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The program or a tcx link pin could not be opened or made.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The kernel refused the tcx attachment.
    #[error("attach {program} to {ifname} (tcx): {source}")]
    Tcx {
        /// The program's name ([`Program::name`]).
        program: &'static str,
        /// The interface it was to go on.
        ifname: String,
        /// aya's error.
        source: ProgramError,
    },
}

/// Where a program goes: which one, on which interface's ingress of the
/// host netns, and how. The interface by both handles TC needs: clsact
/// speaks ifindexes, tcx link pins are named after the interface.
#[derive(Clone, Copy, Debug)]
pub struct Hook<'a> {
    /// The interface's ifindex.
    pub index: u32,
    /// The interface's name.
    pub name: &'a str,
    /// The program.
    pub program: Program,
    /// clsact or tcx.
    pub mode: AttachMode,
}

impl<'a> Hook<'a> {
    /// The redirect program on a host veth, attached as the config says.
    pub fn to_peer(index: u32, name: &'a str, mode: AttachMode) -> Self {
        Self { index, name, program: Program::ToPeer, mode }
    }

    /// The tunnel program on the node's VXLAN device, always clsact: one
    /// device per node, made and removed by ratchet alone.
    pub fn from_tunnel(index: u32, name: &'a str) -> Self {
        Self { index, name, program: Program::FromTunnel, mode: AttachMode::Clsact }
    }
}

/// Hangs the hook's program on its interface's ingress.
pub async fn attach(host: &Netlink, dataplane: &mut Dataplane, hook: Hook<'_>) -> Result<(), TcError> {
    match hook.mode {
        AttachMode::Clsact => attach_clsact(host, dataplane, hook).await,
        AttachMode::Tcx => attach_tcx(dataplane, hook),
    }
}

/// Takes every copy of the hook's program off its interface's ingress,
/// clsact filter or tcx link, and hangs this generation's on: after the
/// pins were made afresh, the old copy still reads the old maps, which
/// nothing updates any more.
pub async fn replace(host: &Netlink, dataplane: &mut Dataplane, hook: Hook<'_>) -> Result<(), TcError> {
    detach_clsact(host, hook.index, hook.program).await?;
    dataplane.unpin_tcx_link(hook.name)?;
    attach(host, dataplane, hook).await
}

/// Removes a host veth's tcx link pin, which detaches it; none is fine. The
/// clsact filter needs nothing: it goes with the veth. Needs no interface,
/// so an end whose veth went with its netns is detached too.
pub fn detach_tcx(dataplane: &Dataplane, ifname: &str) -> Result<(), TcError> {
    Ok(dataplane.unpin_tcx_link(ifname)?)
}

/// True when this generation's program runs where the hook says.
pub async fn attached(host: &Netlink, dataplane: &Dataplane, hook: Hook<'_>) -> Result<bool, TcError> {
    let ours = dataplane.program_id(hook.program)?;
    match hook.mode {
        AttachMode::Clsact => Ok(ingress_bpf_filters(host, hook.index).await?.iter().any(|f| f.id == ours)),
        AttachMode::Tcx => {
            if !dataplane.tcx_link_pinned(hook.name) {
                return Ok(false);
            }
            let (_, programs) = aya::programs::SchedClassifier::query_tcx(hook.name, TcAttachType::Ingress)
                .map_err(|source| tcx_error(hook, source))?;
            Ok(programs.iter().any(|info| info.id() == ours))
        }
    }
}

fn tcx_error(hook: Hook<'_>, source: ProgramError) -> TcError {
    TcError::Tcx { program: hook.program.name(), ifname: hook.name.into(), source }
}

async fn attach_clsact(host: &Netlink, dataplane: &Dataplane, hook: Hook<'_>) -> Result<(), TcError> {
    let fd = dataplane.program_fd(hook.program)?;
    add_clsact(host, hook.index).await?;
    Ok(put_filter(host, hook, fd.as_fd(), None).await?)
}

/// Swaps the program on the hook's interface for the staged build's, in
/// place: the clsact filter replaced on its own priority and handle, the
/// tcx link updated. Both are one kernel operation, so no frame ever meets
/// an interface without one. A clsact hook with nothing on it yet gets the
/// staged program.
pub async fn swap(host: &Netlink, staged: &Staged, hook: Hook<'_>) -> Result<(), TcError> {
    if hook.mode == AttachMode::Tcx {
        return Ok(staged.update_tcx_link(hook.name, hook.program)?);
    }
    let fd = staged.program_fd(hook.program)?;
    let running: Vec<BpfFilter> =
        ingress_bpf_filters(host, hook.index).await?.into_iter().filter(|f| f.name == hook.program.name()).collect();
    if running.is_empty() {
        add_clsact(host, hook.index).await?;
        return Ok(put_filter(host, hook, fd.as_fd(), None).await?);
    }
    for filter in &running {
        put_filter(host, hook, fd.as_fd(), Some(filter)).await?;
    }
    Ok(())
}

/// A direct-action `bpf` filter running `program` on the hook's ingress, as
/// `tc filter add dev X ingress bpf da fd N` makes it; with `replacing`,
/// that filter's program is replaced (`tc filter replace ... prio P handle H`).
async fn put_filter(
    host: &Netlink,
    hook: Hook<'_>,
    program: BorrowedFd<'_>,
    replacing: Option<&BpfFilter>,
) -> Result<(), NetlinkError> {
    let mut msg = TcMessage::with_index(ifindex(hook.index));
    msg.header.parent = INGRESS;
    // A new filter: priority 0 (the kernel picks one) and every protocol.
    msg.header.info = replacing.map_or(u32::from((libc::ETH_P_ALL as u16).to_be()), |f| f.info);
    if let Some(filter) = replacing {
        msg.header.handle = filter.handle;
    }
    // An open fd is never negative.
    let fd = program.as_raw_fd() as u32;
    msg.attributes.push(TcAttribute::Kind("bpf".into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(fd)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(hook.program.name().into())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    let flags = if replacing.is_some() { NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE } else { CREATE };
    let what = || format!("attach {} to {}", hook.program.name(), hook.name);
    send(host, RouteNetlinkMessage::NewTrafficFilter(msg), flags).await.map_err(|source| request(what(), source))
}

fn attach_tcx(dataplane: &mut Dataplane, hook: Hook<'_>) -> Result<(), TcError> {
    let failed = |source| tcx_error(hook, source);
    let classifier = dataplane.classifier(hook.program)?;
    let options = TcAttachOptions::TcxOrder(LinkOrder::default());
    let id = classifier.attach_with_options(hook.name, TcAttachType::Ingress, options).map_err(failed)?;
    let link: FdLink = classifier
        .take_link(id)
        .map_err(failed)?
        .try_into()
        .map_err(|source| DataplaneError::Link { what: format!("tcx link of {}", hook.name), source })?;
    Ok(dataplane.pin_tcx_link(hook.name, link)?)
}

/// Gives an interface a clsact qdisc, the hook TC programs hang off; one
/// already there is fine.
async fn add_clsact(host: &Netlink, index: u32) -> Result<(), NetlinkError> {
    let mut msg = TcMessage::with_index(ifindex(index));
    msg.header.parent = TcHandle::CLSACT;
    msg.header.handle = TcHandle { major: 0xffff, minor: 0 };
    msg.attributes.push(TcAttribute::Kind("clsact".into()));
    match send(host, RouteNetlinkMessage::NewQueueDiscipline(msg), CREATE).await {
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        other => other.map_err(|source| request(format!("clsact on ifindex {index}"), source)),
    }
}

/// Deletes every ingress filter running a program of this name. None is fine.
async fn detach_clsact(host: &Netlink, index: u32, program: Program) -> Result<(), NetlinkError> {
    for filter in ingress_bpf_filters(host, index).await?.into_iter().filter(|f| f.name == program.name()) {
        let mut msg = TcMessage::with_index(ifindex(index));
        msg.header.parent = INGRESS;
        msg.header.info = filter.info;
        msg.header.handle = filter.handle;
        msg.attributes.push(TcAttribute::Kind("bpf".into()));
        match send(host, RouteNetlinkMessage::DelTrafficFilter(msg), NLM_F_REQUEST | NLM_F_ACK).await {
            Err(e) if errno(&e) == Some(libc::ENOENT) => {}
            other => other.map_err(|source| request(format!("detach {} from ifindex {index}", filter.name), source))?,
        }
    }
    Ok(())
}

/// One `bpf` filter on an ingress hook, as a listing shows it.
struct BpfFilter {
    /// Priority and protocol, which (with the handle) name the filter.
    info: u32,
    handle: TcHandle,
    id: u32,
    name: String,
}

async fn ingress_bpf_filters(host: &Netlink, index: u32) -> Result<Vec<BpfFilter>, NetlinkError> {
    let listing = host.handle().traffic_filter(ifindex(index)).get().ingress().execute();
    let filters: Vec<TcMessage> = match listing.try_collect().await {
        // No clsact qdisc: no filter.
        Err(e) if errno(&e) == Some(libc::EINVAL) => Vec::new(),
        other => other.map_err(|source| request(format!("list ingress filters of ifindex {index}"), source))?,
    };
    Ok(filters.into_iter().filter_map(bpf_filter).collect())
}

fn bpf_filter(msg: TcMessage) -> Option<BpfFilter> {
    let (mut id, mut name) = (None, String::new());
    let options = msg.attributes.into_iter().filter_map(|attr| match attr {
        TcAttribute::Options(options) => Some(options),
        _ => None,
    });
    for option in options.flatten() {
        match option {
            TcOption::Bpf(TcFilterBpfOption::ProgId(found)) => id = Some(found),
            TcOption::Bpf(TcFilterBpfOption::ProgName(found)) => name = found,
            _ => {}
        }
    }
    Some(BpfFilter { info: msg.header.info, handle: msg.header.handle, id: id?, name })
}

/// The clsact qdisc's ingress hook.
const INGRESS: TcHandle = TcHandle { major: 0xffff, minor: TcHandle::MIN_INGRESS };

/// Flags of a request that makes something new and must not replace it.
const CREATE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;

/// Sends one request and waits for its acknowledgement.
pub(crate) async fn send(host: &Netlink, msg: RouteNetlinkMessage, flags: u16) -> Result<(), rtnetlink::Error> {
    let mut request = NetlinkMessage::from(msg);
    request.header.flags = flags;
    let mut response = host.handle().clone().request(request)?;
    while let Some(message) = response.next().await {
        if let NetlinkPayload::Error(error) = message.payload
            && error.code.is_some()
        {
            return Err(rtnetlink::Error::NetlinkError(error));
        }
    }
    Ok(())
}

fn request(what: String, source: rtnetlink::Error) -> NetlinkError {
    NetlinkError::Request { what, source }
}

/// Kernel ifindexes are positive `int`s; netlink's TC header takes them signed.
fn ifindex(index: u32) -> i32 {
    index as i32
}
