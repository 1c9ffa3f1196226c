//! What ratchet's eBPF programs and its user space must agree on: map and
//! program names, and the layout of every map key and value.
//!
//! Every value is `#[repr(C)]`, has no implicit padding and no `bool` or
//! `Option`, so the kernel, bpftool (through BTF) and user space read the
//! same bytes the same way.
#![no_std]
#![deny(missing_docs)]

/// The classifier on every host veth's ingress: frames from the pod go
/// straight to the peer's pod, or are dropped while the peer is missing.
pub const PROG_TO_PEER: &str = "ratchet_to_peer";

/// The classifier on the node's VXLAN device: frames from a peer on another
/// node go into the pod whose link the VNI names.
pub const PROG_FROM_TUNNEL: &str = "ratchet_from_vx";

/// Host ifindex -> [`Peer`]: where frames entering that host veth go.
pub const MAP_PEERS: &str = "RATCHET_PEERS";

/// VNI -> [`VniEnd`]: this node's end of that cross-node link. One name
/// everywhere: this map, its pin (`vnis`) and its value type.
pub const MAP_VNIS: &str = "RATCHET_VNIS";

/// Host ifindex -> [`EndStats`], per CPU: what each link end forwarded and dropped.
pub const MAP_STATS: &str = "RATCHET_STATS";

/// Host ifindex -> frames dropped, per CPU, because the link's configured
/// loss ([`Peer::loss`]) chose them. Apart from [`EndStats`] so a frame that
/// passes never touches it: only a lost frame pays the lookup.
pub const MAP_LOST: &str = "RATCHET_LOST";

/// The `.bss` section, which aya loads as a one-entry array map: run-time
/// switches ([`Switches`]) that user space flips without reloading.
pub const MAP_SWITCHES: &str = ".bss";

/// How many link ends one node can hold; the peers, stats and VNI maps (all
/// three hash maps) are each sized by it.
pub const MAX_ENDS: u32 = 16384;

/// [`Peer::flags`]: the peer is on another node, behind the VXLAN device.
pub const PEER_REMOTE: u16 = 1;

/// [`Peer::loss`] that drops every frame: the loss is `loss / LOSS_SCALE`.
pub const LOSS_SCALE: u16 = u16::MAX;

/// What became of a frame, as `ratchet trace` records give it (`verdict=`):
/// numbers, as strings picked at run time trip the verifier.
pub mod verdict {
    /// Redirected into the peer pod.
    pub const PEER: u32 = 0;
    /// Sent into the tunnel, to the peer's node.
    pub const TUNNEL: u32 = 1;
    /// Dropped by the link's configured loss.
    pub const LOST: u32 = 2;
    /// Dropped: the end has no peer entry (its peer is not wired).
    pub const NO_PEER: u32 = 3;
    /// From the tunnel, dropped: no link of this node has the VNI.
    pub const UNKNOWN_VNI: u32 = 4;
    /// From the tunnel, dropped: not from the node of the link's peer.
    pub const WRONG_NODE: u32 = 5;
}

/// Where a traced frame was seen (`hook=`): a host veth's ingress...
pub const HOOK_END: u32 = 0;
/// ...or the VXLAN device's.
pub const HOOK_TUNNEL: u32 = 1;

/// Where frames entering a host veth are sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// Same node: the peer's host veth (`bpf_redirect_peer` delivers into
    /// the pod end behind it). Another node: this node's VXLAN device.
    pub ifindex: u32,
    /// Another node: the link's VXLAN network identifier.
    pub vni: u32,
    /// Another node: its underlay IPv4 address, in host byte order (as
    /// `bpf_skb_set_tunnel_key` takes it).
    pub remote_ipv4: u32,
    /// [`PEER_REMOTE`] or 0.
    pub flags: u16,
    /// The share of frames to drop, out of [`LOSS_SCALE`]; 0 for none, the
    /// case that costs a frame one compare. (In layout 1 these two bytes
    /// were the zero upper half of a `u32` `flags`, read the same.)
    pub loss: u16,
}

/// This node's end of a cross-node link: where the VNI's frames go.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VniEnd {
    /// The end's host veth: decapsulated frames go into the pod behind it.
    pub ifindex: u32,
    /// The peer's node, the only underlay source accepted for this VNI, in
    /// host byte order (as `bpf_skb_get_tunnel_key` gives it).
    pub remote_ipv4: u32,
}

/// Counters for frames entering one host veth, i.e. one direction of a link.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndStats {
    /// Frames handed to the peer.
    pub packets: u64,
    /// Bytes of those frames (L2 length).
    pub bytes: u64,
    /// Frames dropped because the peer is not attached (yet, or any more).
    pub drops: u64,
}

/// Sums counters, e.g. the per-CPU copies of one end's.
impl core::ops::Add for EndStats {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self { packets: self.packets + other.packets, bytes: self.bytes + other.bytes, drops: self.drops + other.drops }
    }
}

/// The run-time switches in the program's `.bss`, laid out as one struct so
/// user space can write the whole section at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Switches {
    /// Non-zero: log every frame through aya-log (`ratchet trace`). Off by
    /// default: it roughly doubles the per-frame cost.
    pub trace: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers with no padding.
    unsafe impl aya::Pod for super::Peer {}
    unsafe impl aya::Pod for super::VniEnd {}
    unsafe impl aya::Pod for super::EndStats {}
    unsafe impl aya::Pod for super::Switches {}
}

const _: () = assert!(core::mem::size_of::<Peer>() == 16);
const _: () = assert!(core::mem::size_of::<VniEnd>() == 8);
const _: () = assert!(core::mem::size_of::<EndStats>() == 24);
const _: () = assert!(core::mem::size_of::<Switches>() == 4);
