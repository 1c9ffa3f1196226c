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

use std::os::fd::{AsFd, AsRawFd};

use aya::programs::{LinkOrder, ProgramError, TcAttachType, links::FdLink, tc::TcAttachOptions};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
    },
};

use crate::{
    config::AttachMode,
    dataplane::{Dataplane, DataplaneError, Program},
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
    Tcx { program: &'static str, ifname: String, source: ProgramError },
}

/// An interface of the host netns, by both handles TC needs: clsact speaks
/// ifindexes, tcx link pins are named after the interface.
#[derive(Clone, Copy, Debug)]
pub struct Iface<'a> {
    /// The interface's ifindex.
    pub index: u32,
    /// The interface's name.
    pub name: &'a str,
}

/// Hangs `program` on the interface's ingress, the way `mode` says.
pub async fn attach(
    host: &Netlink,
    dataplane: &mut Dataplane,
    iface: Iface<'_>,
    program: Program,
    mode: AttachMode,
) -> Result<(), TcError> {
    match mode {
        AttachMode::Clsact => attach_clsact(host, dataplane, iface, program).await,
        AttachMode::Tcx => attach_tcx(dataplane, iface, program),
    }
}

/// Takes every copy of `program` off the interface's ingress, clsact filter
/// or tcx link, and hangs this generation's on: after the pins were made
/// afresh, the old copy still reads the old maps, which nothing updates.
pub async fn replace(
    host: &Netlink,
    dataplane: &mut Dataplane,
    iface: Iface<'_>,
    program: Program,
    mode: AttachMode,
) -> Result<(), TcError> {
    detach_clsact(host, iface.index, program).await?;
    dataplane.unpin_tcx_link(iface.name)?;
    attach(host, dataplane, iface, program, mode).await
}

/// Removes a host veth's tcx link pin, which detaches it; none is fine. The
/// clsact filter needs nothing: it goes with the veth. Needs no interface,
/// so an end whose veth went with its netns is detached too.
pub fn detach_tcx(dataplane: &Dataplane, ifname: &str) -> Result<(), TcError> {
    Ok(dataplane.unpin_tcx_link(ifname)?)
}

/// True when this generation's `program` runs on the interface's ingress.
pub async fn attached(
    host: &Netlink,
    dataplane: &Dataplane,
    iface: Iface<'_>,
    program: Program,
    mode: AttachMode,
) -> Result<bool, TcError> {
    let ours = dataplane.program_id(program)?;
    match mode {
        AttachMode::Clsact => Ok(ingress_bpf_filters(host, iface.index).await?.iter().any(|f| f.id == ours)),
        AttachMode::Tcx => {
            if !dataplane.tcx_link_pinned(iface.name) {
                return Ok(false);
            }
            let (_, programs) = aya::programs::SchedClassifier::query_tcx(iface.name, TcAttachType::Ingress)
                .map_err(|source| TcError::Tcx { program: program.name(), ifname: iface.name.into(), source })?;
            Ok(programs.iter().any(|info| info.id() == ours))
        }
    }
}

async fn attach_clsact(
    host: &Netlink,
    dataplane: &Dataplane,
    iface: Iface<'_>,
    program: Program,
) -> Result<(), TcError> {
    let fd = dataplane.program_fd(program)?;
    add_clsact(host, iface.index).await?;
    let mut msg = TcMessage::with_index(ifindex(iface.index));
    msg.header.parent = INGRESS;
    // Priority 0 (the kernel picks one) and every protocol.
    msg.header.info = u32::from((libc::ETH_P_ALL as u16).to_be());
    // An open fd is never negative.
    let fd = fd.as_fd().as_raw_fd() as u32;
    msg.attributes.push(TcAttribute::Kind("bpf".into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(fd)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(program.name().into())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    let what = || format!("attach {} to {}", program.name(), iface.name);
    send(host, RouteNetlinkMessage::NewTrafficFilter(msg), CREATE).await.map_err(|source| request(what(), source))?;
    Ok(())
}

fn attach_tcx(dataplane: &mut Dataplane, iface: Iface<'_>, program: Program) -> Result<(), TcError> {
    let failed = |source| TcError::Tcx { program: program.name(), ifname: iface.name.into(), source };
    let classifier = dataplane.classifier(program)?;
    let options = TcAttachOptions::TcxOrder(LinkOrder::default());
    let id = classifier.attach_with_options(iface.name, TcAttachType::Ingress, options).map_err(failed)?;
    let link: FdLink = classifier
        .take_link(id)
        .map_err(failed)?
        .try_into()
        .map_err(|source| DataplaneError::Link { what: format!("tcx link of {}", iface.name), source })?;
    Ok(dataplane.pin_tcx_link(iface.name, link)?)
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
async fn send(host: &Netlink, msg: RouteNetlinkMessage, flags: u16) -> Result<(), rtnetlink::Error> {
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
