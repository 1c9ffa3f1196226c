//! meshnet-cni's Topology objects (`networkop.co.uk/v1beta1`, what KNE and
//! other lab tooling write) as ratchet links.
//!
//! meshnet describes a link once per side: the object named after a pod
//! lists that pod's links, each with a `uid` unique in the namespace, the
//! peer pod (in the same namespace), both interfaces and optionally both
//! addresses and MACs. Both halves of a link name the same uid and must
//! agree, mirrored; a link only one pod's object lists is taken from that
//! half alone. The link's id is ratchet's usual one, derived from its ends,
//! so the same lab gives the same host interfaces whichever tool applied it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;

use super::{Link, LinkEnd, Topology, TopologyError};

/// The API group, version and kind of meshnet's Topology objects.
pub const GROUP: &str = "networkop.co.uk";
/// See [`GROUP`].
pub const VERSION: &str = "v1beta1";
/// See [`GROUP`].
pub const KIND: &str = "Topology";

/// One Topology object: the links of the pod it is named after.
#[derive(Clone, Debug, Deserialize)]
pub struct MeshnetTopology {
    /// The pod (`name`) and its namespace.
    pub metadata: Metadata,
    /// The pod's links.
    #[serde(default)]
    pub spec: Spec,
}

/// The part of an object's metadata a link needs.
#[derive(Clone, Debug, Deserialize)]
pub struct Metadata {
    /// The pod's name.
    pub name: String,
    /// The pod's namespace; absent in a file, the caller's default.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// A Topology's spec: the links of one pod.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Spec {
    /// Each link of the pod, seen from it.
    #[serde(default)]
    pub links: Vec<Half>,
}

/// One link as one of its pods sees it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Half {
    /// The link's number, the same in both halves, unique in the namespace.
    pub uid: i64,
    /// The pod at the other end.
    pub peer_pod: String,
    /// This pod's interface.
    pub local_intf: String,
    /// The peer pod's interface.
    pub peer_intf: String,
    /// This pod's address with its prefix (`10.0.0.1/30`); empty for none.
    #[serde(default)]
    pub local_ip: String,
    /// The peer's address; empty for none.
    #[serde(default)]
    pub peer_ip: String,
    /// This pod's MAC; absent or empty for a random one.
    #[serde(default)]
    pub local_mac: Option<String>,
    /// The peer's MAC.
    #[serde(default)]
    pub peer_mac: Option<String>,
}

/// The half of a link one object gives, with the pod it came from.
struct Seen<'a> {
    pod: String,
    half: &'a Half,
}

/// The ratchet topology `objects` describe; `default_namespace` for objects
/// that name none. Errors name the link's uid and the field in question.
pub fn to_topology(objects: &[MeshnetTopology], default_namespace: &str) -> Result<Topology, TopologyError> {
    let mut halves: BTreeMap<(String, i64), Vec<Seen<'_>>> = BTreeMap::new();
    for object in objects {
        let namespace = object.metadata.namespace.as_deref().unwrap_or(default_namespace);
        for half in &object.spec.links {
            let seen = Seen { pod: object.metadata.name.clone(), half };
            halves.entry((namespace.to_owned(), half.uid)).or_default().push(seen);
        }
    }
    let mut links = Vec::with_capacity(halves.len());
    for ((namespace, uid), seen) in &halves {
        let link = match seen.as_slice() {
            [one] => link_of(namespace, *uid, one)?,
            [first, second] => {
                agree(*uid, first, second)?;
                link_of(namespace, *uid, first)?
            }
            more => {
                let pods: Vec<&str> = more.iter().map(|seen| seen.pod.as_str()).collect();
                return Err(invalid(
                    *uid,
                    format!("listed by {} objects ({}); a link has two halves", pods.len(), pods.join(", ")),
                ));
            }
        };
        links.push(link);
    }
    let topology = Topology { links };
    topology.validate()?;
    Ok(topology)
}

/// The id of the link `half` makes, seen from `pod` in `namespace`: the
/// same from either half.
pub fn link_id(namespace: &str, pod: &str, half: &Half) -> Result<String, TopologyError> {
    link_of(namespace, half.uid, &Seen { pod: pod.to_owned(), half }).map(|link| link.id())
}

/// Checks that two halves of link `uid` describe it mirrored.
fn agree(uid: i64, first: &Seen<'_>, second: &Seen<'_>) -> Result<(), TopologyError> {
    let (a, b) = (first.half, second.half);
    if a.peer_pod != second.pod || b.peer_pod != first.pod {
        return Err(invalid(
            uid,
            format!(
                "{}'s half names peer_pod {}, {}'s names peer_pod {}",
                first.pod, a.peer_pod, second.pod, b.peer_pod
            ),
        ));
    }
    let mirrored = [
        ("local_intf", &a.local_intf, "peer_intf", &b.peer_intf),
        ("peer_intf", &a.peer_intf, "local_intf", &b.local_intf),
        ("local_ip", &a.local_ip, "peer_ip", &b.peer_ip),
        ("peer_ip", &a.peer_ip, "local_ip", &b.local_ip),
    ];
    for (field, value, other_field, other) in mirrored {
        if value != other {
            return Err(invalid(
                uid,
                format!("{}'s {field} is {value:?} but {}'s {other_field} is {other:?}", first.pod, second.pod),
            ));
        }
    }
    let mac = |mac: &Option<String>| mac.clone().filter(|mac| !mac.is_empty());
    for (field, value, other_field, other) in
        [("local_mac", &a.local_mac, "peer_mac", &b.peer_mac), ("peer_mac", &a.peer_mac, "local_mac", &b.local_mac)]
    {
        if mac(value) != mac(other) {
            return Err(invalid(
                uid,
                format!("{}'s {field} is {value:?} but {}'s {other_field} is {other:?}", first.pod, second.pod),
            ));
        }
    }
    Ok(())
}

/// The link one half describes, its ends in a fixed order (the lesser pod
/// and interface is side a) so that either half gives the same link.
fn link_of(namespace: &str, uid: i64, seen: &Seen<'_>) -> Result<Link, TopologyError> {
    let half = seen.half;
    let local = end(namespace, uid, &seen.pod, &half.local_intf, &half.local_ip, half.local_mac.as_deref())?;
    let peer = end(namespace, uid, &half.peer_pod, &half.peer_intf, &half.peer_ip, half.peer_mac.as_deref())?;
    let (a, b) = match (&local.pod, local.ifname.as_str()) <= (&peer.pod, peer.ifname.as_str()) {
        true => (local, peer),
        false => (peer, local),
    };
    Ok(Link { name: None, a, b, mtu: None, loss: None, rate: None, delay: None, jitter: None })
}

/// One end, read through the same parser as a topology file's.
fn end(
    namespace: &str,
    uid: i64,
    pod: &str,
    ifname: &str,
    ip: &str,
    mac: Option<&str>,
) -> Result<LinkEnd, TopologyError> {
    let mut end = json!({"pod": format!("{namespace}/{pod}"), "ifname": ifname});
    if !ip.is_empty() {
        end["ips"] = json!([ip]);
    }
    if let Some(mac) = mac.filter(|mac| !mac.is_empty()) {
        end["mac"] = json!(mac);
    }
    serde_json::from_value(end).map_err(|e| invalid(uid, format!("{pod}'s end: {e}")))
}

fn invalid(uid: i64, reason: String) -> TopologyError {
    TopologyError::Meshnet { uid, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(pod: &str, links: serde_json::Value) -> MeshnetTopology {
        serde_json::from_value(json!({"apiVersion": "networkop.co.uk/v1beta1", "kind": "Topology",
            "metadata": {"name": pod, "namespace": "lab"}, "spec": {"links": links}}))
        .unwrap()
    }

    fn r1() -> MeshnetTopology {
        object(
            "r1",
            json!([{"uid": 1, "peer_pod": "r2", "local_intf": "eth1", "peer_intf": "eth2",
            "local_ip": "10.0.0.1/30", "peer_ip": "10.0.0.2/30"}]),
        )
    }

    fn r2() -> MeshnetTopology {
        object(
            "r2",
            json!([{"uid": 1, "peer_pod": "r1", "local_intf": "eth2", "peer_intf": "eth1",
            "local_ip": "10.0.0.2/30", "peer_ip": "10.0.0.1/30"}]),
        )
    }

    #[test]
    fn both_halves_give_one_link_in_a_fixed_order() {
        let both = to_topology(&[r2(), r1()], "default").unwrap();
        assert_eq!(both.links.len(), 1);
        let link = &both.links[0];
        assert_eq!((link.a.pod.to_string(), link.a.ifname.as_str()), ("lab/r1".into(), "eth1"));
        assert_eq!(link.b.ips[0].to_string(), "10.0.0.2/30");
        assert_eq!(to_topology(&[r1()], "default").unwrap(), both, "one half alone gives the same link");
        assert_eq!(to_topology(&[r2()], "default").unwrap(), both);
    }

    #[test]
    fn halves_that_disagree_are_refused_naming_uid_and_field() {
        let mut wrong = r2();
        wrong.spec.links[0].local_ip = "10.0.0.3/30".into();
        let error = to_topology(&[r1(), wrong], "default").unwrap_err().to_string();
        assert!(error.contains("uid 1") && error.contains("peer_ip") && error.contains("10.0.0.3/30"), "{error}");
        let mut elsewhere = r2();
        elsewhere.spec.links[0].peer_pod = "r3".into();
        let error = to_topology(&[r1(), elsewhere], "default").unwrap_err().to_string();
        assert!(error.contains("peer_pod"), "{error}");
    }

    #[test]
    fn a_bad_address_or_a_third_half_is_refused() {
        let mut bad = r1();
        bad.spec.links[0].local_ip = "10.0.0.1".into();
        assert!(matches!(to_topology(&[bad], "default"), Err(TopologyError::Meshnet { uid: 1, .. })));
        let third = object("r3", json!([{"uid": 1, "peer_pod": "r1", "local_intf": "e", "peer_intf": "eth1"}]));
        assert!(to_topology(&[r1(), r2(), third], "default").is_err());
    }

    #[test]
    fn the_namespace_defaults_and_uids_are_per_namespace() {
        let mut elsewhere = r1();
        elsewhere.metadata.namespace = None;
        let topology = to_topology(&[r1(), r2(), elsewhere], "other").unwrap();
        assert_eq!(topology.links.len(), 2, "uid 1 in lab and uid 1 in other");
    }
}
