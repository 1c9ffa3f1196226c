//! ratchet's datapath: one TC classifier on the ingress of every host veth.
//!
//! A frame the pod sends arrives at its host veth's ingress; the program looks
//! up the link's other end and hands the frame straight into the peer pod with
//! `bpf_redirect_peer`, which skips the host stack and the peer's host veth.
//! Nothing else forwards (no bridge, no routes, no proxy ARP), so the pair
//! behaves like a cable and ARP and IPv6 neighbour discovery just cross it.
//!
//! A peer on another node is reached through the node's one VXLAN device in
//! collect-metadata mode: the program sets the tunnel key (the link's VNI,
//! the remote node's address) and redirects to it; on the far side a second
//! program on the VXLAN device's ingress maps the VNI to the local end.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, bpf_tunnel_key},
    btf_maps::{HashMap, PerCpuHashMap},
    helpers::{bpf_get_prandom_u32, bpf_redirect, bpf_redirect_peer, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use aya_log_ebpf::info;
use ratchet_common::{
    EndStats, HOOK_END, HOOK_TUNNEL, LOSS_SCALE, MAX_ENDS, PEER_REMOTE, Peer, Switches, VniEnd, verdict,
};

#[btf_map]
static RATCHET_PEERS: HashMap<u32, Peer, { MAX_ENDS as usize }> = HashMap::new();

#[btf_map]
static RATCHET_STATS: PerCpuHashMap<u32, EndStats, { MAX_ENDS as usize }> = PerCpuHashMap::new();

#[btf_map]
static RATCHET_LOST: PerCpuHashMap<u32, u64, { MAX_ENDS as usize }> = PerCpuHashMap::new();

#[btf_map]
static RATCHET_VNIS: HashMap<u32, VniEnd, { MAX_ENDS as usize }> = HashMap::new();

/// `skb->pkt_type` values (linux/if_packet.h).
const PACKET_HOST: u32 = 0;
const PACKET_OTHERHOST: u32 = 3;

/// Outer TTL for encapsulated frames.
const TUNNEL_TTL: u8 = 64;

/// Flipped by user space through the pinned `.bss` map; read with a plain
/// load, so checking it costs no helper call.
#[unsafe(no_mangle)]
static mut SWITCHES: Switches = Switches { trace: 0 };

#[classifier]
pub fn ratchet_to_peer(ctx: TcContext) -> i32 {
    // SAFETY: the kernel hands every classifier a valid __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the entry is only read here, and user space replaces it whole.
    let peer = unsafe { RATCHET_PEERS.get(ifindex) }.copied();
    let stats = RATCHET_STATS.get_ptr_mut(ifindex);
    let lost = matches!(peer, Some(peer) if peer.loss != 0 && is_lost(peer.loss));
    if tracing() {
        let verdict = match peer {
            None => verdict::NO_PEER,
            Some(_) if lost => verdict::LOST,
            Some(peer) if peer.flags & PEER_REMOTE != 0 => verdict::TUNNEL,
            Some(_) => verdict::PEER,
        };
        let (to, vni) = peer.map_or((0, 0), |peer| (peer.ifindex, peer.vni));
        trace_frame(&ctx, &Traced { hook: HOOK_END, ifindex, vni, node: 0, verdict, to });
    }
    match peer {
        Some(_) if lost => {
            count_lost(ifindex);
            TC_ACT_SHOT
        }
        Some(peer) => {
            if let Some(stats) = stats {
                // SAFETY: per-CPU value: no other CPU writes this copy.
                unsafe {
                    (*stats).packets += 1;
                    (*stats).bytes += u64::from(ctx.len());
                }
            }
            if peer.flags & PEER_REMOTE != 0 {
                return into_tunnel(&ctx, &peer);
            }
            // SAFETY: the helper only reads its arguments.
            unsafe { bpf_redirect_peer(peer.ifindex, 0) as i32 }
        }
        None => {
            if let Some(stats) = stats {
                // SAFETY: as above.
                unsafe { (*stats).drops += 1 };
            }
            TC_ACT_SHOT
        }
    }
}

/// Whether `ratchet trace` is on.
#[inline(always)]
fn tracing() -> bool {
    // SAFETY: a plain read of a word user space may change at any time.
    unsafe { core::ptr::read_volatile(&raw const SWITCHES.trace) != 0 }
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

/// What `ratchet trace` is told of a frame, besides its L3 header. One
/// struct, as a BPF call takes at most five registers of arguments.
struct Traced {
    /// [`HOOK_END`] or [`HOOK_TUNNEL`].
    hook: u32,
    /// The host veth it entered by (`end`); 0 for `tunnel`.
    ifindex: u32,
    vni: u32,
    /// The node it came from (`tunnel`), host order; 0 for `end`.
    node: u32,
    /// One of [`verdict`].
    verdict: u32,
    /// The interface it goes to (a pod's host veth, or the VXLAN device).
    to: u32,
}

/// Logs a traced frame as one record of `key=value` fields, which `ratchet
/// trace` reads back and names: one record, so frames traced on two CPUs
/// at once cannot interleave. The common fields are spelled out in each
/// arm: aya-log takes its format as one string literal.
#[inline(never)]
fn trace_frame(ctx: &TcContext, t: &Traced) {
    let ethertype = ctx.load::<u16>(12).map_or(0, u16::from_be);
    let len = ctx.len();
    match ethertype {
        ETH_P_IP => {
            let (src, dst) = (ctx.load::<u32>(26).map_or(0, u32::from_be), ctx.load::<u32>(30).map_or(0, u32::from_be));
            let proto = ctx.load::<u8>(23).unwrap_or(0);
            info!(
                ctx,
                "hook={} if={} vni={} node={:i} len={} verdict={} to={} l3=ipv4 src={:i} dst={:i} proto={}",
                t.hook,
                t.ifindex,
                t.vni,
                t.node,
                len,
                t.verdict,
                t.to,
                src,
                dst,
                proto
            );
        }
        ETH_P_IPV6 => {
            let (src, dst) = (ctx.load::<[u8; 16]>(22).unwrap_or([0; 16]), ctx.load::<[u8; 16]>(38).unwrap_or([0; 16]));
            let next = ctx.load::<u8>(20).unwrap_or(0);
            info!(
                ctx,
                "hook={} if={} vni={} node={:i} len={} verdict={} to={} l3=ipv6 src={:i} dst={:i} proto={}",
                t.hook,
                t.ifindex,
                t.vni,
                t.node,
                len,
                t.verdict,
                t.to,
                src,
                dst,
                next
            );
        }
        ETH_P_ARP => info!(
            ctx,
            "hook={} if={} vni={} node={:i} len={} verdict={} to={} l3=arp",
            t.hook,
            t.ifindex,
            t.vni,
            t.node,
            len,
            t.verdict,
            t.to
        ),
        other => info!(
            ctx,
            "hook={} if={} vni={} node={:i} len={} verdict={} to={} l3={:x}",
            t.hook,
            t.ifindex,
            t.vni,
            t.node,
            len,
            t.verdict,
            t.to,
            other
        ),
    }
}

/// Whether the link's configured loss (out of [`LOSS_SCALE`]) takes this
/// frame. Only lossy links get here, so unimpaired ones never draw.
#[inline(always)]
fn is_lost(loss: u16) -> bool {
    // SAFETY: the helper takes no arguments.
    let draw = unsafe { bpf_get_prandom_u32() } % u32::from(LOSS_SCALE);
    draw < u32::from(loss)
}

/// Counts a frame the configured loss dropped, apart from the forwarding
/// counters: the first loss on an end makes its entry.
#[inline(always)]
fn count_lost(ifindex: u32) {
    match RATCHET_LOST.get_ptr_mut(ifindex) {
        // SAFETY: per-CPU value: no other CPU writes this copy.
        Some(lost) => unsafe { *lost += 1 },
        None => {
            let _ = RATCHET_LOST.insert(ifindex, 1, 0);
        }
    }
}

/// Sends a frame to a peer on another node: tunnel key, then out of the
/// node's VXLAN device.
fn into_tunnel(ctx: &TcContext, peer: &Peer) -> i32 {
    // SAFETY: all-zero is a valid bpf_tunnel_key (it has no Default).
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = peer.vni;
    key.__bindgen_anon_1.remote_ipv4 = peer.remote_ipv4;
    key.tunnel_ttl = TUNNEL_TTL;
    let size = core::mem::size_of::<bpf_tunnel_key>() as u32;
    // SAFETY: the key lives on this stack frame for the call.
    if unsafe { bpf_skb_set_tunnel_key(ctx.skb.skb, &mut key, size, 0) } != 0 {
        return TC_ACT_SHOT;
    }
    // SAFETY: the helper only reads its arguments.
    unsafe { bpf_redirect(peer.ifindex, 0) as i32 }
}

/// On the VXLAN device's ingress: a decapsulated frame goes into the pod
/// whose end the VNI names, or is dropped.
#[classifier]
pub fn ratchet_from_vx(ctx: TcContext) -> i32 {
    // SAFETY: all-zero is a valid bpf_tunnel_key.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    let size = core::mem::size_of::<bpf_tunnel_key>() as u32;
    // SAFETY: the key lives on this stack frame for the call.
    if unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size, 0) } != 0 {
        return TC_ACT_SHOT;
    }
    // SAFETY: the entry is only read here.
    let local = unsafe { RATCHET_VNIS.get(key.tunnel_id) };
    // SAFETY: the union member the helper filled for an IPv4 tunnel.
    let from = unsafe { key.__bindgen_anon_1.remote_ipv4 };
    if tracing() {
        let (verdict, to) = match local {
            None => (verdict::UNKNOWN_VNI, 0),
            Some(local) if local.remote_ipv4 != from => (verdict::WRONG_NODE, local.ifindex),
            Some(local) => (verdict::PEER, local.ifindex),
        };
        trace_frame(&ctx, &Traced { hook: HOOK_TUNNEL, ifindex: 0, vni: key.tunnel_id, node: from, verdict, to });
    }
    let Some(local) = local else {
        return TC_ACT_SHOT;
    };
    // VXLAN is unauthenticated: only the peer's node may send into this link.
    if local.remote_ipv4 != from {
        return TC_ACT_SHOT;
    }
    // The VXLAN device's MAC is not the pod's, so a unicast frame was marked
    // for another host; the pod's IP layer would drop it as such.
    // SAFETY: the kernel hands every classifier a valid __sk_buff.
    if unsafe { (*ctx.skb.skb).pkt_type } == PACKET_OTHERHOST && ctx.change_type(PACKET_HOST).is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: the helper only reads its arguments.
    unsafe { bpf_redirect_peer(local.ifindex, 0) as i32 }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// aya-log's ring buffer output is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
