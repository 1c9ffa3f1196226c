//! The qdisc that shapes what a pod end sends: its rate, delay and jitter.
//!
//! It sits at the root of the pod end's egress, inside the pod's netns: the
//! one queue a link end's frames pass. The host veth's egress is no place
//! for it, as `bpf_redirect_peer` hands frames from the peer straight into
//! the pod past it. A rate alone is TBF (which this kernel has); any delay
//! or jitter is netem, rate included, where the kernel has it. Both are
//! made with this process's own netlink messages, as `tc qdisc replace dev
//! X root tbf|netem ...` makes them.

use futures::TryStreamExt;
use rtnetlink::{
    packet_core::{DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST},
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcHandle, TcMessage},
    },
};

use crate::{
    netlink::{Netlink, NetlinkError, errno},
    tc::send,
    topology::{Impairment, impair::Rate},
};

/// What can go wrong shaping a pod end.
#[derive(Debug, thiserror::Error)]
pub enum ShapingError {
    /// A qdisc request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// Delay and jitter need netem, which this kernel does not have.
    #[error(
        "{ifname}: delay and jitter need the netem qdisc, which this kernel does not have \
         (CONFIG_NET_SCH_NETEM); loss and rate work without it"
    )]
    NoNetem {
        /// The pod end it was for.
        ifname: String,
    },
}

/// Makes the root qdisc of the pod end `index` (`ifname`, of MTU `mtu`, in
/// the netns of `in_pod`) shape as `wanted` says (its loss is the
/// datapath's): netem, TBF, or none of ours.
pub async fn set(
    in_pod: &Netlink,
    (index, ifname, mtu): (u32, &str, u32),
    wanted: &Impairment,
) -> Result<(), ShapingError> {
    let (kind, options) = match (wanted.delay, wanted.rate) {
        (Some(_), _) => ("netem", netem_options(wanted)),
        (None, Some(rate)) => ("tbf", tbf_options(rate, mtu)),
        (None, None) => return Ok(remove(in_pod, index, ifname).await?),
    };
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.parent = TcHandle::ROOT;
    msg.attributes.push(TcAttribute::Kind(kind.into()));
    msg.attributes.push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, options)));
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    let mut sent = send(in_pod, RouteNetlinkMessage::NewQueueDiscipline(msg.clone()), flags).await;
    // The kernel loaded the qdisc's module on the first try: ask again.
    if sent.as_ref().is_err_and(|e| errno(e) == Some(libc::EAGAIN)) {
        sent = send(in_pod, RouteNetlinkMessage::NewQueueDiscipline(msg), flags).await;
    }
    match sent {
        Err(e) if errno(&e) == Some(libc::ENOENT) && kind == "netem" => {
            Err(ShapingError::NoNetem { ifname: ifname.into() })
        }
        other => Ok(other.map_err(|source| NetlinkError::Request { what: format!("{kind} on {ifname}"), source })?),
    }
}

/// Deletes the pod end's root qdisc if it is one ratchet makes; the pod's
/// own (any other kind) stays.
async fn remove(in_pod: &Netlink, index: u32, ifname: &str) -> Result<(), NetlinkError> {
    let failed = |source| NetlinkError::Request { what: format!("qdiscs of {ifname}"), source };
    let qdiscs: Vec<TcMessage> = in_pod.handle().qdisc().get().execute().try_collect().await.map_err(failed)?;
    let ours = qdiscs.into_iter().find(|qdisc| {
        qdisc.header.index == index as i32
            && qdisc.header.parent == TcHandle::ROOT
            && qdisc.attributes.iter().any(|a| matches!(a, TcAttribute::Kind(k) if k == "tbf" || k == "netem"))
    });
    let Some(mut qdisc) = ours else { return Ok(()) };
    qdisc.attributes.retain(|a| matches!(a, TcAttribute::Kind(_)));
    match send(in_pod, RouteNetlinkMessage::DelQueueDiscipline(qdisc), NLM_F_REQUEST | NLM_F_ACK).await {
        Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
        other => {
            other.map_err(|source| NetlinkError::Request { what: format!("delete the qdisc of {ifname}"), source })
        }
    }
}

/// `TCA_OPTIONS`, in `linux/rtnetlink.h`.
const TCA_OPTIONS: u16 = 2;

/// TBF's options (`linux/pkt_sched.h`): `tc_tbf_qopt` with the burst in
/// bytes. An Ethernet link layer spares the rate table older kernels took.
fn tbf_options(rate: Rate, mtu: u32) -> Vec<u8> {
    const TCA_TBF_PARMS: u16 = 1;
    const TCA_TBF_RATE64: u16 = 4;
    const TCA_TBF_BURST: u16 = 6;
    let bytes = rate.bytes_per_second();
    // A burst of 4 ms at the rate (a timer tick at HZ=250), and never below
    // one frame; a queue of 50 ms more, and never below three bursts.
    let frame = u64::from(mtu) + 14;
    let burst = (bytes / 250).max(frame);
    let limit = (burst + bytes / 20).max(3 * burst);
    let mut qopt = ratespec(bytes);
    qopt.extend([0; 12]); // no peak rate
    qopt.extend(clamp_u32(limit).to_ne_bytes());
    qopt.extend(0u32.to_ne_bytes()); // buffer: the burst below says it
    qopt.extend(0u32.to_ne_bytes()); // mtu: for the peak rate only
    let mut options = nla(TCA_TBF_PARMS, &qopt);
    if bytes > u64::from(u32::MAX) {
        options.extend(nla(TCA_TBF_RATE64, &bytes.to_ne_bytes()));
    }
    options.extend(nla(TCA_TBF_BURST, &clamp_u32(burst).to_ne_bytes()));
    options
}

/// netem's options: `tc_netem_qopt` followed by its attributes (not nested
/// in one, as other qdiscs' are), delays in nanoseconds.
fn netem_options(wanted: &Impairment) -> Vec<u8> {
    const TCA_NETEM_RATE: u16 = 6;
    const TCA_NETEM_RATE64: u16 = 8;
    const TCA_NETEM_LATENCY64: u16 = 10;
    const TCA_NETEM_JITTER64: u16 = 11;
    /// netem's default queue, in packets.
    const LIMIT: u32 = 1000;
    let nanos = |delay: Option<crate::topology::impair::Delay>| delay.map_or(0, |d| d.nanos());
    // latency, limit, loss, gap, duplicate, jitter: the delays in the
    // attributes below.
    let mut options: Vec<u8> = [0, LIMIT, 0, 0, 0, 0].iter().flat_map(|v: &u32| v.to_ne_bytes()).collect();
    options.extend(nla(TCA_NETEM_LATENCY64, &nanos(wanted.delay).to_ne_bytes()));
    options.extend(nla(TCA_NETEM_JITTER64, &nanos(wanted.jitter).to_ne_bytes()));
    if let Some(rate) = wanted.rate {
        let bytes = rate.bytes_per_second();
        // rate, packet_overhead, cell_size, cell_overhead
        let netem_rate: Vec<u8> = [clamp_u32(bytes), 0, 0, 0].iter().flat_map(|v| v.to_ne_bytes()).collect();
        options.extend(nla(TCA_NETEM_RATE, &netem_rate));
        if bytes > u64::from(u32::MAX) {
            options.extend(nla(TCA_NETEM_RATE64, &bytes.to_ne_bytes()));
        }
    }
    options
}

/// A `tc_ratespec` of `bytes` per second on an Ethernet link layer.
fn ratespec(bytes: u64) -> Vec<u8> {
    const TC_LINKLAYER_ETHERNET: u8 = 1;
    let mut spec = vec![0, TC_LINKLAYER_ETHERNET];
    spec.extend(0u16.to_ne_bytes()); // overhead
    spec.extend((-1i16).to_ne_bytes()); // cell_align, as tc sets it
    spec.extend(0u16.to_ne_bytes()); // mpu
    spec.extend(clamp_u32(bytes).to_ne_bytes());
    spec
}

/// One netlink attribute, padded to four bytes.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + value.len()).expect("qdisc options are small");
    let mut bytes = Vec::with_capacity(value.len() + 8);
    bytes.extend(len.to_ne_bytes());
    bytes.extend(kind.to_ne_bytes());
    bytes.extend(value);
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes
}

/// A 64-bit size in a 32-bit field: the largest it holds (the 64-bit
/// attribute then says the rest).
fn clamp_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_options_are_the_kernels_structs() {
        let options = tbf_options("100mbit".parse().unwrap(), 1500);
        // TCA_TBF_PARMS: 4 bytes of header, 36 of tc_tbf_qopt.
        assert_eq!(&options[..4], &[40, 0, 1, 0]);
        assert_eq!(options[5], 1, "an Ethernet link layer");
        assert_eq!(u32::from_ne_bytes(options[12..16].try_into().unwrap()), 12_500_000, "bytes per second");
        // TCA_TBF_BURST: 4 ms at 12.5 MB/s.
        assert_eq!(&options[40..44], &[8, 0, 6, 0]);
        assert_eq!(u32::from_ne_bytes(options[44..48].try_into().unwrap()), 50_000);
        assert_eq!(options.len(), 48);
    }

    #[test]
    fn netem_options_follow_its_struct_unnested() {
        let wanted: Impairment = serde_json::from_str(r#"{"delay": "10ms", "jitter": "1ms"}"#).unwrap();
        let options = netem_options(&wanted);
        assert_eq!(u32::from_ne_bytes(options[4..8].try_into().unwrap()), 1000, "limit");
        assert_eq!(&options[24..28], &[12, 0, 10, 0], "TCA_NETEM_LATENCY64 right after tc_netem_qopt");
        assert_eq!(u64::from_ne_bytes(options[28..36].try_into().unwrap()), 10_000_000);
        assert_eq!(u64::from_ne_bytes(options[40..48].try_into().unwrap()), 1_000_000);
    }
}
