//! Pairing: what the dataplane must forward, given which ends of a link are
//! attached.
//!
//! ADD never waits for the peer. Whichever end attaches first is recorded as
//! waiting (its frames are dropped: there is nowhere to send them); the second
//! end's ADD finds the first in the store and wires both directions. DEL
//! unwires both before the interface goes, so the remaining end is waiting
//! again and no frame is ever redirected to a dead ifindex. This module is the
//! pure part of that: records in, forwarding entries out.

use std::fmt;

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

pub fn state(ends: &[Option<EndRecord>; 2]) -> LinkState {
    match ends {
        [Some(_), Some(_)] => LinkState::Up,
        [None, None] => LinkState::Down,
        _ => LinkState::Waiting,
    }
}

/// One forwarding entry on a node: frames entering host interface `from`
/// leave into the pod behind host interface `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Forward {
    pub from: u32,
    pub to: u32,
}

/// The entries `node` needs for a link with these ends: both directions when
/// both ends are attached on this node, none otherwise.
pub fn forwarding(ends: &[Option<EndRecord>; 2], node: &str) -> Vec<Forward> {
    match ends {
        [Some(a), Some(b)] if a.node == node && b.node == node => vec![
            Forward { from: a.host_ifindex, to: b.host_ifindex },
            Forward { from: b.host_ifindex, to: a.host_ifindex },
        ],
        _ => Vec::new(),
    }
}

/// The map changes that take `before` to `after`: stale sources to remove
/// first, then entries to write.
pub fn rewire(before: &[Forward], after: &[Forward]) -> (Vec<u32>, Vec<Forward>) {
    let stale = before.iter().filter(|old| !after.iter().any(|new| new.from == old.from)).map(|old| old.from).collect();
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
            dataplane: 1,
        })
    }

    #[test]
    fn either_order_ends_up_wired_both_ways() {
        let wired = vec![Forward { from: 10, to: 20 }, Forward { from: 20, to: 10 }];
        for first in [0, 1] {
            let mut ends = [None, None];
            ends[first] = if first == 0 { end(10, "n1") } else { end(20, "n1") };
            assert_eq!(state(&ends), LinkState::Waiting);
            assert!(forwarding(&ends, "n1").is_empty(), "a lone end forwards nowhere");
            let before = forwarding(&ends, "n1");
            ends[1 - first] = if first == 0 { end(20, "n1") } else { end(10, "n1") };
            assert_eq!(state(&ends), LinkState::Up);
            let (stale, fresh) = rewire(&before, &forwarding(&ends, "n1"));
            assert!(stale.is_empty());
            assert_eq!(fresh, wired);
        }
    }

    #[test]
    fn a_leaving_end_unwires_both_directions() {
        let mut ends = [end(10, "n1"), end(20, "n1")];
        let before = forwarding(&ends, "n1");
        ends[1] = None;
        let (stale, fresh) = rewire(&before, &forwarding(&ends, "n1"));
        assert_eq!(stale, vec![10, 20]);
        assert!(fresh.is_empty());
        assert_eq!(state(&ends), LinkState::Waiting);
    }

    #[test]
    fn a_replaced_end_rewires_to_its_new_interface() {
        let mut ends = [end(10, "n1"), end(20, "n1")];
        let before = forwarding(&ends, "n1");
        ends[1] = end(30, "n1");
        let (stale, fresh) = rewire(&before, &forwarding(&ends, "n1"));
        assert_eq!(stale, vec![20]);
        assert_eq!(fresh, vec![Forward { from: 10, to: 30 }, Forward { from: 30, to: 10 }]);
    }

    #[test]
    fn ends_on_other_nodes_are_not_wired_here() {
        assert!(forwarding(&[end(10, "n1"), end(20, "n2")], "n1").is_empty());
        assert_eq!(state(&[None, None]), LinkState::Down);
    }
}
