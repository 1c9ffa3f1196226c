//! ratchet's datapath: one TC classifier on the ingress of every host veth.
//!
//! A frame the pod sends arrives at its host veth's ingress; the program looks
//! up the link's other end and hands the frame straight into the peer pod with
//! `bpf_redirect_peer`, which skips the host stack and the peer's host veth.
//! Nothing else forwards (no bridge, no routes, no proxy ARP), so the pair
//! behaves like a cable and ARP and IPv6 neighbour discovery just cross it.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    btf_maps::{HashMap, PerCpuHashMap},
    helpers::bpf_redirect_peer,
    macros::{btf_map, classifier},
    programs::TcContext,
};
use aya_log_ebpf::info;
use ratchet_common::{EndStats, MAX_ENDS, Peer, Switches};

#[btf_map]
static RATCHET_PEERS: HashMap<u32, Peer, { MAX_ENDS as usize }> = HashMap::new();

#[btf_map]
static RATCHET_STATS: PerCpuHashMap<u32, EndStats, { MAX_ENDS as usize }> = PerCpuHashMap::new();

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
    // SAFETY: a plain read of a word user space may change at any time.
    if unsafe { core::ptr::read_volatile(&raw const SWITCHES.trace) } != 0 {
        info!(&ctx, "ifindex {} len {} -> peer {}", ifindex, ctx.len(), peer.map_or(0, |p| p.ifindex));
    }
    match peer {
        Some(peer) => {
            if let Some(stats) = stats {
                // SAFETY: per-CPU value: no other CPU writes this copy.
                unsafe {
                    (*stats).packets += 1;
                    (*stats).bytes += u64::from(ctx.len());
                }
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// aya-log's ring buffer output is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
