//! Pairing: what the dataplane must forward, given which ends of a link are
//! attached.
//!
//! ADD never waits for the peer. Whichever end attaches first is recorded as
//! waiting (its frames are dropped: there is nowhere to send them); the second
//! end's ADD finds the first in the store and wires both directions. DEL
//! unwires both before the interface goes, so the remaining end is waiting
//! again and no frame is ever redirected to a dead ifindex. This module is the
//! pure part of that: records in, forwarding entries out.

use std::{collections::HashMap, fmt, net::Ipv4Addr};

use ratchet_common::{PEER_REMOTE, Peer};

use crate::store::records::EndRecord;

/// A link's state as its end records give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Neither end is attached.
    Down,
    /// One end is attached and waits for its peer.
    Waiting,
    /// Both ends are attached and frames flow.
    Up,
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkState::Down => "down",
            LinkState::Waiting => "waiting",
            LinkState::Up => "up",
        })
    }
}

/// A link's state by its end records, A first, wherever the ends are: what
/// `ratchet links` and the agent's metrics show.
pub fn state(ends: &[Option<EndRecord>; 2]) -> LinkState {
    match ends {
        [Some(_), Some(_)] => LinkState::Up,
        [None, None] => LinkState::Down,
        _ => LinkState::Waiting,
    }
}

/// What a node needs to know to wire links whose peer is elsewhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fabric {
    /// This node's name, as its end records carry it.
    pub node: String,
    /// This node's VXLAN device, when it has one (several nodes).
    pub vxlan_ifindex: Option<u32>,
    /// Every registered node's underlay address.
    pub node_ips: HashMap<String, Ipv4Addr>,
}

impl Fabric {
    /// A node that only wires links between its own pods.
    pub fn single(node: &str) -> Self {
        Self { node: node.into(), ..Self::default() }
    }
}

/// One map entry on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// `RATCHET_PEERS[from] = to`: frames entering host veth `from`.
    Peer {
        /// The host veth frames enter by, as an ifindex.
        from: u32,
        /// Where they go: the peer's host veth, or the VXLAN device with the
        /// link's VNI and the peer's node.
        to: Peer,
    },
    /// `RATCHET_VNIS[vni] = to`: frames arriving through the tunnel, from
    /// the peer's node (`from_node`, its underlay IPv4 in host order) only.
    Tunnel {
        /// The link's VNI, as the frame arrives with it.
        vni: u32,
        /// The host veth of this node's end: the frame goes into the pod behind it.
        to: u32,
        /// The peer's node's underlay IPv4, in host order: the only source
        /// accepted for this VNI.
        from_node: u32,
    },
}

impl Entry {
    /// Whether two entries occupy the same map slot.
    pub fn same_slot(&self, other: &Entry) -> bool {
        match (self, other) {
            (Entry::Peer { from: a, .. }, Entry::Peer { from: b, .. }) => a == b,
            (Entry::Tunnel { vni: a, .. }, Entry::Tunnel { vni: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// The entries this node needs for a link with these ends: both directions
/// when both ends are here; this end's two (out through the tunnel, in by
/// its VNI) when the peer is on another node this node knows the address of;
/// none while an end is missing.
pub fn forwarding(ends: &[Option<EndRecord>; 2], fabric: &Fabric) -> Vec<Entry> {
    let [Some(a), Some(b)] = ends else { return Vec::new() };
    let here = |end: &EndRecord| end.node == fabric.node;
    match (here(a), here(b)) {
        (true, true) => vec![local(a, b), local(b, a)],
        (true, false) => remote(a, b, fabric),
        (false, true) => remote(b, a, fabric),
        (false, false) => Vec::new(),
    }
}

fn local(from: &EndRecord, to: &EndRecord) -> Entry {
    let loss = from.impairment.loss_scaled();
    Entry::Peer { from: from.host_ifindex, to: Peer { ifindex: to.host_ifindex, loss, ..Peer::default() } }
}

fn remote(mine: &EndRecord, theirs: &EndRecord, fabric: &Fabric) -> Vec<Entry> {
    let (Some(vni), Some(vxlan), Some(ip)) = (mine.vni, fabric.vxlan_ifindex, fabric.node_ips.get(&theirs.node)) else {
        return Vec::new();
    };
    let loss = mine.impairment.loss_scaled();
    let to = Peer { ifindex: vxlan, vni, remote_ipv4: u32::from(*ip), flags: PEER_REMOTE, loss };
    let from_node = u32::from(*ip);
    vec![Entry::Peer { from: mine.host_ifindex, to }, Entry::Tunnel { vni, to: mine.host_ifindex, from_node }]
}

/// The map changes that take `before` to `after`: entries whose slot is no
/// longer wanted (to remove first), then entries to write.
pub fn rewire(before: &[Entry], after: &[Entry]) -> (Vec<Entry>, Vec<Entry>) {
    let stale = before.iter().filter(|old| !after.iter().any(|new| new.same_slot(old))).copied().collect();
    let fresh = after.iter().filter(|new| !before.contains(new)).copied().collect();
    (stale, fresh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::PodRef;

    fn end(ifindex: u32, node: &str) -> Option<EndRecord> {
        Some(EndRecord {
            container_id: format!("c{ifindex}"),
            cni_ifname: "eth0".into(),
            pod: PodRef::new("default", &format!("p{ifindex}")).unwrap(),
            netns: format!("/run/netns/p{ifindex}"),
            ifname: "in1".parse().unwrap(),
            host_ifname: format!("rt{ifindex}"),
            host_ifindex: ifindex,
            node: node.into(),
            generation: 1,
            vni: Some(7),
            pin_root: None,
            impairment: Default::default(),
            added_live: false,
        })
    }

    #[test]
    fn either_order_ends_up_wired_both_ways() {
        let n1 = Fabric::single("n1");
        let wired = vec![peer(10, 20), peer(20, 10)];
        for first in [0, 1] {
            let mut ends = [None, None];
            ends[first] = if first == 0 { end(10, "n1") } else { end(20, "n1") };
            assert_eq!(state(&ends), LinkState::Waiting);
            assert!(forwarding(&ends, &n1).is_empty(), "a lone end forwards nowhere");
            let before = forwarding(&ends, &n1);
            ends[1 - first] = if first == 0 { end(20, "n1") } else { end(10, "n1") };
            assert_eq!(state(&ends), LinkState::Up);
            let (stale, fresh) = rewire(&before, &forwarding(&ends, &n1));
            assert!(stale.is_empty());
            assert_eq!(fresh, wired);
        }
    }

    #[test]
    fn a_leaving_end_unwires_both_directions() {
        let n1 = Fabric::single("n1");
        let mut ends = [end(10, "n1"), end(20, "n1")];
        let before = forwarding(&ends, &n1);
        ends[1] = None;
        let (stale, fresh) = rewire(&before, &forwarding(&ends, &n1));
        assert_eq!(stale, vec![peer(10, 20), peer(20, 10)]);
        assert!(fresh.is_empty());
        assert_eq!(state(&ends), LinkState::Waiting);
    }

    #[test]
    fn a_replaced_end_rewires_to_its_new_interface() {
        let n1 = Fabric::single("n1");
        let mut ends = [end(10, "n1"), end(20, "n1")];
        let before = forwarding(&ends, &n1);
        ends[1] = end(30, "n1");
        let (stale, fresh) = rewire(&before, &forwarding(&ends, &n1));
        assert_eq!(stale, vec![peer(20, 10)]);
        assert_eq!(fresh, vec![peer(10, 30), peer(30, 10)]);
    }

    #[test]
    fn a_peer_on_another_node_goes_through_the_tunnel() {
        let mut fabric = Fabric { node: "n1".into(), vxlan_ifindex: Some(99), node_ips: HashMap::new() };
        let ends = [end(10, "n1"), end(20, "n2")];
        assert!(forwarding(&ends, &fabric).is_empty(), "the peer's node address is not known yet");
        fabric.node_ips.insert("n2".into(), Ipv4Addr::new(192, 0, 2, 2));
        let to = Peer { ifindex: 99, vni: 7, remote_ipv4: 0xc000_0202, flags: PEER_REMOTE, loss: 0 };
        assert_eq!(
            forwarding(&ends, &fabric),
            vec![Entry::Peer { from: 10, to }, Entry::Tunnel { vni: 7, to: 10, from_node: 0xc000_0202 }]
        );
        fabric.node = "n3".into();
        assert!(forwarding(&ends, &fabric).is_empty(), "neither end is here");
        assert_eq!(state(&[None, None]), LinkState::Down);
    }

    fn peer(from: u32, to: u32) -> Entry {
        Entry::Peer { from, to: Peer { ifindex: to, ..Peer::default() } }
    }

    /// One verb on one end of the link, as a node sees it.
    #[derive(Clone, Debug)]
    enum Op {
        /// ADD: the end attaches with this host ifindex on node n1 or n2.
        Attach { side: usize, ifindex: u32, remote: bool },
        /// DEL or GC: the end goes.
        Detach { side: usize },
        /// The peer node's address becomes known, or is forgotten (lease).
        PeerNode { known: bool },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..2usize, 1..6u32, any::<bool>()).prop_map(|(side, ifindex, remote)| Op::Attach {
                side,
                ifindex: ifindex * 10 + side as u32,
                remote
            }),
            (0..2usize).prop_map(|side| Op::Detach { side }),
            any::<bool>().prop_map(|known| Op::PeerNode { known }),
        ]
    }

    proptest::proptest! {
        /// Whatever order ADDs, DELs and node changes come in, applying each
        /// step's rewire to node n1's maps leaves exactly the entries the
        /// final ends call for, and no entry ever sends frames to an end that
        /// is gone or replaced.
        #[test]
        fn any_interleaving_leaves_the_maps_equal_to_the_ends(ops in proptest::collection::vec(op(), 0..40)) {
            let mut fabric = Fabric { node: "n1".into(), vxlan_ifindex: Some(99), node_ips: HashMap::new() };
            fabric.node_ips.insert("n1".into(), Ipv4Addr::new(192, 0, 2, 1));
            let mut ends: [Option<EndRecord>; 2] = [None, None];
            let mut maps: Vec<Entry> = Vec::new();
            for op in ops {
                let before = forwarding(&ends, &fabric);
                match op {
                    Op::Attach { side, ifindex, remote } => ends[side] = end(ifindex, if remote { "n2" } else { "n1" }),
                    Op::Detach { side } => ends[side] = None,
                    Op::PeerNode { known: true } => {
                        fabric.node_ips.insert("n2".into(), Ipv4Addr::new(192, 0, 2, 2));
                    }
                    Op::PeerNode { known: false } => {
                        fabric.node_ips.remove("n2");
                    }
                }
                let (stale, fresh) = rewire(&before, &forwarding(&ends, &fabric));
                maps.retain(|entry| !stale.iter().any(|gone| gone.same_slot(entry)));
                for entry in fresh {
                    maps.retain(|old| !old.same_slot(&entry));
                    maps.push(entry);
                }
                let live: Vec<u32> = ends.iter().flatten().filter(|e| e.node == "n1").map(|e| e.host_ifindex).collect();
                for entry in &maps {
                    let (from, to) = match entry {
                        Entry::Peer { from, to } => (*from, (to.flags & PEER_REMOTE == 0).then_some(to.ifindex)),
                        Entry::Tunnel { to, .. } => (*to, Some(*to)),
                    };
                    proptest::prop_assert!(live.contains(&from), "entry {entry:?} from a dead end; live {live:?}");
                    if let Some(to) = to {
                        proptest::prop_assert!(live.contains(&to), "entry {entry:?} to a dead end; live {live:?}");
                    }
                }
            }
            let mut want = forwarding(&ends, &fabric);
            let key = |e: &Entry| format!("{e:?}");
            want.sort_by_key(key);
            maps.sort_by_key(key);
            proptest::prop_assert_eq!(maps, want);
        }
    }
}
