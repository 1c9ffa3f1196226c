//! What a pod's link ends will be, decided from the topology alone: which
//! side of which link, the host veth's name, the MTU. Pure, so the rules are
//! unit-tested without a kernel; applying the plan is [`super::attach`]'s.

use crate::{
    config::Settings,
    naming,
    topology::{Link, LinkEnd, PodRef, Side},
};

/// One link end to make for a pod.
#[derive(Debug, PartialEq, Eq)]
pub struct PlannedEnd<'l> {
    /// The link it belongs to.
    pub link: &'l Link,
    /// `link.id()`, computed once.
    pub link_id: String,
    /// Which end of the link the pod holds.
    pub side: Side,
    /// The host veth's name: one per link end, whatever pod holds it.
    pub host_ifname: String,
    /// Both veth ends' MTU.
    pub mtu: u32,
}

impl PlannedEnd<'_> {
    /// The topology's word on this end (pod, ifname, addresses, MAC).
    pub fn spec(&self) -> &LinkEnd {
        self.link.end(self.side)
    }
}

/// Every end `links` give `pod`, in topology order (both ends of a link
/// from the pod to itself).
pub fn pod_ends<'l>(settings: &Settings, pod: &PodRef, links: &'l [Link]) -> Vec<PlannedEnd<'l>> {
    let ends = links.iter().flat_map(|link| link.sides_of(pod).map(move |side| (link, side)));
    ends.map(|(link, side)| planned(settings, link, side)).collect()
}

/// One end of `link`, whichever pod holds it (the agent adds single ends).
pub fn end<'l>(settings: &Settings, link: &'l Link, side: Side) -> PlannedEnd<'l> {
    planned(settings, link, side)
}

fn planned<'l>(settings: &Settings, link: &'l Link, side: Side) -> PlannedEnd<'l> {
    let link_id = link.id();
    let host_ifname = naming::host_ifname(&link_id, side);
    PlannedEnd { link, link_id, side, host_ifname, mtu: settings.link_mtu(link) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;

    fn topology(json: &str) -> Topology {
        Topology::from_json(json).unwrap()
    }

    const TRIANGLE: &str = r#"{"links": [
        {"a": {"pod": "default/r1", "ifname": "eth1"}, "b": {"pod": "default/r2", "ifname": "eth1"}},
        {"a": {"pod": "default/r2", "ifname": "eth2"}, "b": {"pod": "default/r3", "ifname": "eth1"}, "mtu": 9000},
        {"a": {"pod": "default/r3", "ifname": "eth2"}, "b": {"pod": "default/r1", "ifname": "eth2"}}
    ]}"#;

    #[test]
    fn a_pod_gets_its_side_of_each_of_its_links_in_order() {
        let topology = topology(TRIANGLE);
        let r2 = PodRef::new("default", "r2").unwrap();
        let ends = pod_ends(&Settings::default(), &r2, &topology.links);
        let got: Vec<_> = ends.iter().map(|end| (end.spec().ifname.as_str(), end.side, end.mtu)).collect();
        assert_eq!(got, [("eth1", Side::B, 1500), ("eth2", Side::A, 9000)]);
    }

    #[test]
    fn a_link_from_a_pod_to_itself_gives_it_both_ends_with_distinct_host_veths() {
        let topology =
            topology(r#"{"links": [{"a": {"pod": "x/p", "ifname": "l1"}, "b": {"pod": "x/p", "ifname": "l2"}}]}"#);
        let pod = PodRef::new("x", "p").unwrap();
        let ends = pod_ends(&Settings::default(), &pod, &topology.links);
        assert_eq!(ends.iter().map(|end| end.side).collect::<Vec<_>>(), [Side::A, Side::B]);
        assert_ne!(ends[0].host_ifname, ends[1].host_ifname);
    }

    #[test]
    fn host_veths_are_named_for_the_link_end_not_the_pod() {
        let topology = topology(TRIANGLE);
        let r1 = PodRef::new("default", "r1").unwrap();
        let mine = pod_ends(&Settings::default(), &r1, &topology.links);
        let theirs = end(&Settings::default(), &topology.links[0], Side::A);
        assert_eq!(mine[0].host_ifname, theirs.host_ifname);
        assert!(mine.iter().all(|end| naming::is_host_ifname(&end.host_ifname)));
    }

    #[test]
    fn a_node_with_a_tunnel_leaves_room_for_vxlan_unless_the_link_says() {
        let topology = topology(TRIANGLE);
        let settings = Settings { node_ip: Some("192.0.2.1".parse().unwrap()), ..Settings::default() };
        let r2 = PodRef::new("default", "r2").unwrap();
        let mtus: Vec<_> = pod_ends(&settings, &r2, &topology.links).iter().map(|end| end.mtu).collect();
        assert_eq!(mtus, [1450, 9000]);
    }

    #[test]
    fn a_pod_without_links_gets_nothing() {
        let topology = topology(TRIANGLE);
        let stranger = PodRef::new("default", "r9").unwrap();
        assert!(pod_ends(&Settings::default(), &stranger, &topology.links).is_empty());
    }
}
