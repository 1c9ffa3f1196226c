//! The topology: which pod ends are joined by which point-to-point links.
//!
//! A topology file lists links; each link has two ends, and each end names a
//! pod (as kubelet passes it in `CNI_ARGS`), the interface the pod sees, its
//! addresses and optionally its MAC. Everything is validated when the file is
//! read, so the plugin never meets a malformed link at ADD time.

pub mod impair;
pub mod input;
pub mod meshnet;

pub use self::impair::Impairment;

use std::{collections::HashSet, fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Why a topology (or one of its parts) was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    /// A pod that is not `namespace/name` of DNS-1123 names; carries it as written.
    #[error("pod {0:?} is not namespace/name with DNS-1123 names")]
    BadPod(String),
    /// An interface name the kernel would refuse; carries it as written.
    #[error("interface name {0:?} must be 1-15 bytes without '/', ':', whitespace or NUL, and not '.' or '..'")]
    BadIfName(String),
    /// A MAC that is malformed, multicast or all zero; carries it as written.
    #[error("MAC address {0:?} must be six hex octets (aa:bb:cc:dd:ee:ff), unicast and not all zero")]
    BadMac(String),
    /// A link name that is not safe in a store key; carries it as written.
    #[error("link name {0:?} must be 1-63 characters of A-Z a-z 0-9 . _ -")]
    BadLinkName(String),
    /// An end named like an interface every netns already has (`lo`, a
    /// tunnel module's fallback device): its veth could never be made.
    #[error("link {link}: interface name {ifname} is one the kernel gives every netns; pick another")]
    ReservedIfName {
        /// The link's id ([`Link::id`]).
        link: String,
        /// The reserved name the end asked for.
        ifname: String,
    },
    /// An MTU the link's addresses cannot run over, or above 65535.
    #[error("link {link}: MTU {mtu} is outside {min}..=65535")]
    BadMtu {
        /// The link's id ([`Link::id`]).
        link: String,
        /// The MTU the topology gives, in bytes.
        mtu: u32,
        /// The least MTU this link allows: 1280 when an end has an IPv6
        /// address (RFC 8200), else 68.
        min: u32,
    },
    /// An address that names a subnet rather than a host, or has a /0 prefix.
    #[error(
        "link {link}: address {ip} is a network or has a /0 prefix; give a host address with its prefix, e.g. 10.0.0.1/24"
    )]
    BadAddress {
        /// The link's id ([`Link::id`]).
        link: String,
        /// The address as written, with its prefix.
        ip: IpNet,
    },
    /// An address no link end can use: the kernel refuses it, or it never
    /// reaches the peer as a unicast host address.
    #[error(
        "link {link}: address {ip} is {what}, which a point-to-point link end cannot use; give a unicast host address"
    )]
    UnusableAddress {
        /// The link's id ([`Link::id`]).
        link: String,
        /// The address as written, with its prefix.
        ip: IpNet,
        /// What kind of address it is, for the message (`multicast`, `loopback`, ...).
        what: &'static str,
    },
    /// One end lists the same address twice (compared without the prefix).
    #[error("link {link}: address {ip} is given twice on side {side}")]
    DuplicateAddress {
        /// The link's id ([`Link::id`]).
        link: String,
        /// The second mention of the address, with its prefix.
        ip: IpNet,
        /// The end that repeats it: `a` or `b` ([`Side::as_str`]).
        side: &'static str,
    },
    /// A link whose two ends are the same interface of the same pod; carries the link's id.
    #[error("link {0}: both ends are the same pod interface")]
    SelfLink(String),
    /// One pod interface is an end of two links; carries `namespace/name
    /// ifname` and the two links' ids.
    #[error("{0} appears in more than one link end")]
    DuplicateEnd(String),
    /// The two ends' addresses of one family are on different subnets: each
    /// end would need a route to reach the other.
    #[error("link {link}: a.ips {a} and b.ips {b} are in different subnets; give both ends addresses of one subnet")]
    DifferentSubnets {
        /// The link's id ([`Link::id`]).
        link: String,
        /// Side a's address.
        a: IpNet,
        /// Side b's address of the same family.
        b: IpNet,
    },
    /// An impairment that cannot be applied as written.
    #[error("link {link}: side {side}: {reason}")]
    BadImpairment {
        /// The link's id.
        link: String,
        /// The side whose frames it impairs.
        side: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Two links share an id (the same name, or unnamed with the same ends).
    #[error("two links have the id {0:?}")]
    DuplicateLink(String),
    /// The text is no topology in any format read; carries why.
    #[error("not a topology: {0}")]
    Parse(String),
    /// meshnet Topology objects that do not make a link: halves that
    /// disagree, or an end ratchet cannot read.
    #[error("meshnet link uid {uid}: {reason}")]
    Meshnet {
        /// The link's `uid`, as both halves give it.
        uid: i64,
        /// What is wrong, naming the pods and fields.
        reason: String,
    },
}

/// Interfaces a pod's netns has from birth (`lo`) or as soon as a tunnel
/// module is loaded on the node (its fallback devices appear in every
/// netns): a link end can never be made under these names.
const RESERVED_IFNAMES: [&str; 10] =
    ["lo", "tunl0", "sit0", "ip6tnl0", "gre0", "gretap0", "erspan0", "ip6gre0", "ip_vti0", "ip6_vti0"];

/// A pod, identified as kubelet identifies it: `K8S_POD_NAMESPACE`/`K8S_POD_NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PodRef {
    /// `K8S_POD_NAMESPACE`: an RFC 1123 label, checked by [`PodRef::new`].
    pub namespace: String,
    /// `K8S_POD_NAME`: an RFC 1123 subdomain, checked by [`PodRef::new`].
    pub name: String,
}

impl PodRef {
    /// Builds a pod reference from the two `CNI_ARGS` values, checking both.
    pub fn new(namespace: &str, name: &str) -> Result<Self, TopologyError> {
        let whole = || TopologyError::BadPod(format!("{namespace}/{name}"));
        if !is_dns_label(namespace) || !is_dns_subdomain(name) {
            return Err(whole());
        }
        Ok(Self { namespace: namespace.to_owned(), name: name.to_owned() })
    }
}

impl FromStr for PodRef {
    type Err = TopologyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (namespace, name) = s.split_once('/').ok_or_else(|| TopologyError::BadPod(s.into()))?;
        Self::new(namespace, name)
    }
}

impl TryFrom<String> for PodRef {
    type Error = TopologyError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<PodRef> for String {
    fn from(pod: PodRef) -> Self {
        pod.to_string()
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Kubernetes namespace: an RFC 1123 label.
fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A pod name: an RFC 1123 subdomain (labels joined by dots).
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A Linux interface name, checked the way the kernel's `dev_valid_name` does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

impl IfName {
    /// The name as netlink requests and messages take it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IfName {
    type Error = TopologyError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let valid = (1..=15).contains(&s.len())
            && s != "."
            && s != ".."
            && !s.bytes().any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
        if valid { Ok(Self(s)) } else { Err(TopologyError::BadIfName(s)) }
    }
}

impl FromStr for IfName {
    type Err = TopologyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.to_owned().try_into()
    }
}

impl From<IfName> for String {
    fn from(name: IfName) -> Self {
        name.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A unicast Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = TopologyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TopologyError::BadMac(s.into());
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        let multicast = octets[0] & 1 == 1;
        if parts.next().is_some() || multicast || octets == [0; 6] {
            return Err(bad());
        }
        Ok(Self(octets))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = TopologyError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> Self {
        mac.to_string()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// One end of a link: the interface a pod sees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkEnd {
    /// The pod whose ADD makes this end.
    pub pod: PodRef,
    /// The interface inside the pod; no pod interface is an end of two links.
    pub ifname: IfName,
    /// The pod interface's addresses, each a host address with its prefix;
    /// none leaves the interface without an address.
    #[serde(default, deserialize_with = "unambiguous_addresses")]
    pub ips: Vec<IpNet>,
    /// The pod interface's MAC; absent, the kernel picks a random one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Loss of the frames this end sends, as `5%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<impair::Loss>,
    /// The rate this end sends at most, as `100mbit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<impair::Rate>,
    /// Delay added to what this end sends, as `10ms` (needs netem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<impair::Delay>,
    /// Jitter of that delay, as `1ms` (needs netem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<impair::Delay>,
}

/// Reads addresses, refusing an IPv4 octet written with a leading zero
/// (`10.0.0.010`): some tools read it as octal (8), others as decimal (10),
/// and the parser underneath silently takes the second.
fn unambiguous_addresses<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let address = text.split('/').next().unwrap_or_default();
            let octets: Vec<&str> = address.split('.').collect();
            if octets.len() == 4 && octets.iter().any(|octet| octet.len() > 1 && octet.starts_with('0')) {
                return Err(serde::de::Error::custom(format!(
                    "ips[{i}] {text:?} has an octet with a leading zero, which tools read as octal or as decimal: \
                     write it without"
                )));
            }
            text.parse().map_err(|e| serde::de::Error::custom(format!("ips[{i}] {text:?}: {e}")))
        })
        .collect()
}

/// Which end of a link; `A` is the first end written in the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The end written first, [`Link::a`].
    A,
    /// The end written second, [`Link::b`].
    B,
}

impl Side {
    /// The side of this end's peer.
    pub fn other(self) -> Self {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// The end's position in a `[a, b]` pair.
    pub fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    /// `a` or `b`: the side as store keys, host interface names and the
    /// topology's JSON spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }
}

/// The MTU a link gets when the topology names none and no tunnel shrinks
/// it: a plain Ethernet frame.
pub const DEFAULT_MTU: u32 = 1500;

/// A point-to-point link between two pod interfaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// An optional stable name; without one the id is derived from the ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The end written first ([`Side::A`]).
    #[serde(deserialize_with = "map_only")]
    pub a: LinkEnd,
    /// The end written second ([`Side::B`]).
    #[serde(deserialize_with = "map_only")]
    pub b: LinkEnd,
    /// The MTU of both ends' veths, in bytes; absent, the node's default (see
    /// [`crate::config::Settings::link_mtu`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    // The four impairment keys are spelled out here and in `LinkEnd` rather
    // than a flattened `Impairment`: serde's `flatten` cannot be combined
    // with `deny_unknown_fields`, which is what catches a mistyped key.
    /// Loss of the frames each end sends, as `5%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<impair::Loss>,
    /// The rate each end sends at most, as `100mbit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<impair::Rate>,
    /// Delay added to what each end sends, as `10ms` (needs netem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<impair::Delay>,
    /// Jitter of that delay, as `1ms` (needs netem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<impair::Delay>,
}

impl Link {
    /// The link's identity in the store and in host interface names: its name,
    /// or `ns:pod:ifname=ns:pod:ifname` (no `/`, so it is safe in store keys).
    pub fn id(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => {
                let end = |e: &LinkEnd| format!("{}:{}:{}", e.pod.namespace, e.pod.name, e.ifname);
                format!("{}={}", end(&self.a), end(&self.b))
            }
        }
    }

    /// The end on `side`, for code that holds a [`Side`] rather than a field.
    pub fn end(&self, side: Side) -> &LinkEnd {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// What the frames `side` sends go through, as the topology says: that
    /// end's keys, else the link's.
    pub fn impairment(&self, side: Side) -> Impairment {
        let end = self.end(side);
        let of_end = Impairment { loss: end.loss, rate: end.rate, delay: end.delay, jitter: end.jitter };
        of_end.or(Impairment { loss: self.loss, rate: self.rate, delay: self.delay, jitter: self.jitter })
    }

    /// The sides of this link that belong to `pod` (both, for a pod linked to itself).
    pub fn sides_of<'a>(&'a self, pod: &'a PodRef) -> impl Iterator<Item = Side> + 'a {
        [Side::A, Side::B].into_iter().filter(move |side| &self.end(*side).pod == pod)
    }

    fn validate(&self) -> Result<(), TopologyError> {
        let id = self.id();
        if let Some(name) = &self.name {
            let ok = (1..=63).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(TopologyError::BadLinkName(name.clone()));
            }
        }
        if self.a.pod == self.b.pod && self.a.ifname == self.b.ifname {
            return Err(TopologyError::SelfLink(id));
        }
        let ips = || self.a.ips.iter().chain(&self.b.ips);
        // IPv6 will not run on a link below 1280 bytes (RFC 8200).
        let min = if ips().any(|ip| ip.addr().is_ipv6()) { 1280 } else { 68 };
        if let Some(mtu) = self.mtu
            && !(min..=65535).contains(&mtu)
        {
            return Err(TopologyError::BadMtu { link: id, mtu, min });
        }
        if let Some(ip) = ips().find(|ip| !is_host_address(ip)) {
            return Err(TopologyError::BadAddress { link: id, ip: *ip });
        }
        if let Some((ip, what)) = ips().find_map(|ip| unusable(ip).map(|what| (ip, what))) {
            return Err(TopologyError::UnusableAddress { link: id, ip: *ip, what });
        }
        for side in [Side::A, Side::B] {
            let end = self.end(side);
            if RESERVED_IFNAMES.contains(&end.ifname.as_str()) {
                return Err(TopologyError::ReservedIfName { link: id, ifname: end.ifname.to_string() });
            }
            let mut seen = HashSet::new();
            if let Some(ip) = end.ips.iter().find(|ip| !seen.insert(ip.addr())) {
                return Err(TopologyError::DuplicateAddress { link: id, ip: *ip, side: side.as_str() });
            }
        }
        if let Some((a, b)) = different_subnets(&self.a.ips, &self.b.ips) {
            return Err(TopologyError::DifferentSubnets { link: id, a: *a, b: *b });
        }
        for side in [Side::A, Side::B] {
            if let Err(reason) = self.impairment(side).validate() {
                return Err(TopologyError::BadImpairment { link: id, side: side.as_str(), reason });
            }
        }
        Ok(())
    }
}

/// A pair of addresses, one per end and of one family, that share no
/// subnet while neither end has another address that does. Host routes (/32,
/// /128: the ends reach each other by a peer route, not a subnet) and
/// link-local addresses (always on the link) are left out.
fn different_subnets<'a>(a: &'a [IpNet], b: &'a [IpNet]) -> Option<(&'a IpNet, &'a IpNet)> {
    let on_subnet = |ip: &&IpNet| {
        let link_local = match ip.addr() {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
        ip.prefix_len() < ip.max_prefix_len() && !link_local
    };
    // One subnet: the same network and the same prefix (a /24 and a /25 of
    // it are a mask mistake, even where each reaches the other).
    let shared = |x: &IpNet, y: &IpNet| x.trunc() == y.trunc();
    for x in a.iter().filter(on_subnet) {
        let same_family: Vec<&IpNet> =
            b.iter().filter(on_subnet).filter(|y| y.addr().is_ipv4() == x.addr().is_ipv4()).collect();
        let reachable = same_family.iter().any(|y| shared(x, y))
            || a.iter().any(|other| same_family.iter().any(|y| shared(other, y)));
        if let (false, Some(y)) = (reachable, same_family.first()) {
            return Some((x, y));
        }
    }
    None
}

/// What makes an address useless on a link end: the kernel refuses some
/// (IPv6 multicast, loopback, unspecified), and the rest never reach a
/// peer as a unicast host address.
fn unusable(ip: &IpNet) -> Option<&'static str> {
    match ip.addr() {
        IpAddr::V4(v4) if v4.is_multicast() => Some("multicast"),
        IpAddr::V4(v4) if v4.is_loopback() => Some("loopback"),
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("in 0.0.0.0/8 (this host on this network)"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the limited broadcast address"),
        IpAddr::V4(_) if ip.prefix_len() < 31 && ip.addr() == ip.broadcast() => Some("its subnet's broadcast address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("multicast"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("loopback"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("unspecified"),
        _ => None,
    }
}

/// True when `ip` names a host on its subnet, not the subnet itself (a /31,
/// /32, /127 or /128 has no separate network address).
fn is_host_address(ip: &IpNet) -> bool {
    let point_to_point = match ip.addr() {
        IpAddr::V4(_) => ip.prefix_len() >= 31,
        IpAddr::V6(_) => ip.prefix_len() >= 127,
    };
    ip.prefix_len() > 0 && (point_to_point || ip.addr() != ip.network())
}

/// Every link of the node's (or cluster's) topology.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The links; once validated, no two share an id or a pod interface.
    /// Read back from the store, they come in id order.
    #[serde(deserialize_with = "maps_only")]
    pub links: Vec<Link>,
}

/// Deserializes `T` only from a map. serde lets a struct come from a
/// sequence too, its fields taken by position, so `[[...]]` would pass for
/// `{"links": [...]}`: nobody writes a topology that way on purpose.
struct MapOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for MapVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_map(MapVisitor(std::marker::PhantomData)).map(MapOnly)
    }
}

fn map_only<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    MapOnly::deserialize(deserializer).map(|only| only.0)
}

fn maps_only<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Vec<T>, D::Error> {
    Ok(Vec::<MapOnly<T>>::deserialize(deserializer)?.into_iter().map(|only| only.0).collect())
}

/// A topology as a config key carries it: an object, like a topology file.
pub fn optional_topology<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Topology>, D::Error> {
    Ok(Option::<MapOnly<Topology>>::deserialize(deserializer)?.map(|only| only.0))
}

impl Topology {
    /// Parses and validates a topology file's text.
    pub fn from_json(text: &str) -> Result<Self, TopologyError> {
        let MapOnly::<Self>(topology) =
            serde_json::from_str(text).map_err(|e| TopologyError::Parse(format!("not valid JSON: {e}")))?;
        topology.validate()?;
        Ok(topology)
    }

    /// Checks each link, and that no link id or pod interface is used twice.
    pub fn validate(&self) -> Result<(), TopologyError> {
        let mut ids = HashSet::new();
        let mut ends = std::collections::HashMap::new();
        for link in &self.links {
            link.validate()?;
            if !ids.insert(link.id()) {
                return Err(TopologyError::DuplicateLink(link.id()));
            }
            for end in [&link.a, &link.b] {
                if let Some(first) = ends.insert((&end.pod, &end.ifname), link.id()) {
                    let links = format!("links {first} and {}", link.id());
                    return Err(TopologyError::DuplicateEnd(format!("{} {} ({links})", end.pod, end.ifname)));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// No text makes the parser panic.
        #[test]
        fn any_text_is_a_topology_or_an_error(text in "\\PC{0,300}") {
            let _ = Topology::from_json(&text);
        }

        /// A topology that passes validation only has link ids safe in store
        /// keys and host interface names within the kernel's 15 bytes.
        #[test]
        fn an_accepted_topology_is_safe_to_use(
            name in proptest::option::of("\\PC{0,70}|[a-z0-9._/-]{0,70}"),
            pods in proptest::collection::vec("\\PC{0,10}|[a-z0-9.-]{0,10}/[a-z0-9./-]{0,10}", 2),
            ifnames in proptest::collection::vec("\\PC{0,17}|[a-z0-9./]{0,17}", 2),
        ) {
            let end = |i: usize| serde_json::json!({ "pod": pods[i], "ifname": ifnames[i], "ips": ["10.9.0.1/24"] });
            let link = serde_json::json!({ "name": name, "a": end(0), "b": end(1) });
            let Ok(topology) = Topology::from_json(&serde_json::json!({ "links": [link] }).to_string()) else {
                return Ok(());
            };
            for link in &topology.links {
                proptest::prop_assert!(!link.id().contains('/'), "{}", link.id());
                for side in [Side::A, Side::B] {
                    let host = crate::naming::host_ifname(&link.id(), side);
                    proptest::prop_assert!(host.len() <= 15 && host.starts_with("rt"), "{host}");
                }
            }
        }
    }

    const PAIR: &str = r#"{"links": [{"name": "l1", "mtu": 9000,
        "a": {"pod": "default/alpha", "ifname": "in1", "ips": ["10.9.0.1/24", "fd00:9::1/64"]},
        "b": {"pod": "default/beta", "ifname": "in2", "ips": ["10.9.0.2/24"], "mac": "02:00:00:00:00:02"}}]}"#;

    #[test]
    fn subnets_are_compared_per_family_leaving_host_routes_and_link_local_alone() {
        for (a, b) in [
            (r#"["10.9.0.1/32"]"#, r#"["10.9.7.2/32"]"#),
            (r#"["fe80::1/64", "10.9.0.1/24"]"#, r#"["10.9.0.2/24"]"#),
            (r#"["10.9.0.1/24", "fd00::1/64"]"#, r#"["fd00::2/64"]"#),
            (r#"["10.9.0.1/24", "10.8.0.1/24"]"#, r#"["10.8.0.2/24"]"#),
        ] {
            let text = format!(
                r#"{{"links": [{{"a": {{"pod": "default/x", "ifname": "e1", "ips": {a}}}, "b": {{"pod": "default/y", "ifname": "e1", "ips": {b}}}}}]}}"#
            );
            assert!(Topology::from_json(&text).is_ok(), "{a} {b}: {:?}", Topology::from_json(&text));
        }
    }

    #[test]
    fn parses_a_pair() {
        let topology = Topology::from_json(PAIR).unwrap();
        let link = &topology.links[0];
        assert_eq!(link.id(), "l1");
        assert_eq!(link.mtu, Some(9000));
        assert_eq!(link.b.mac.unwrap().to_string(), "02:00:00:00:00:02");
        let alpha = PodRef::new("default", "alpha").unwrap();
        assert_eq!(link.sides_of(&alpha).collect::<Vec<_>>(), vec![Side::A]);
    }

    #[test]
    fn derives_an_id_without_slashes() {
        let mut topology = Topology::from_json(PAIR).unwrap();
        topology.links[0].name = None;
        assert_eq!(topology.links[0].id(), "default:alpha:in1=default:beta:in2");
    }

    #[test]
    fn round_trips_through_json() {
        let topology = Topology::from_json(PAIR).unwrap();
        let again = Topology::from_json(&serde_json::to_string(&topology).unwrap()).unwrap();
        assert_eq!(topology, again);
    }

    #[test]
    fn rejects_bad_parts() {
        let cases = [
            (PAIR.replace("default/alpha", "Default/alpha"), "is not namespace/name"),
            (PAIR.replace("default/alpha", "alpha"), "is not namespace/name"),
            (PAIR.replace("\"in1\"", "\"a-very-long-ifname\""), "1-15 bytes"),
            (PAIR.replace("\"in1\"", "\"../x\""), "1-15 bytes"),
            (PAIR.replace("10.9.0.1/24", "10.9.0.300/24"), "not valid JSON"),
            (PAIR.replace("10.9.0.1/24", "10.9.0.0/24"), "is a network"),
            (PAIR.replace("02:00:00:00:00:02", "01:00:00:00:00:02"), "unicast"),
            (PAIR.replace("9000", "1000"), "outside 1280..=65535"),
            (PAIR.replace("\"l1\"", "\"l/1\""), "link name"),
            (PAIR.replace("default/beta", "default/alpha").replace("in2", "in1"), "same pod interface"),
            (PAIR.replace("\"mtu\"", "\"mtux\""), "unknown field"),
            (PAIR.replace("10.9.0.1/24", "10.9.0.010/24"), "leading zero"),
            (PAIR.replace("10.9.0.1/24", "10.9.0.1/24\", \"10.9.0.1/24"), "given twice on side a"),
            (PAIR.replace("10.9.0.1/24", "224.0.0.1/24"), "multicast"),
            (PAIR.replace("fd00:9::1/64", "ff02::1/64"), "multicast"),
            (PAIR.replace("fd00:9::1/64", "::1/128"), "loopback"),
            (PAIR.replace("10.9.0.1/24", "10.9.0.255/24"), "broadcast"),
            (PAIR.replace("\"in1\"", "\"lo\""), "every netns"),
            (PAIR.replace("10.9.0.2/24", "10.9.1.2/24"), "a.ips 10.9.0.1/24 and b.ips 10.9.1.2/24 are in different subnets"),
            (PAIR.replace("10.9.0.2/24", "10.9.0.2/25"), "different subnets"),
            (format!("[{PAIR}]"), "expected an object"),
            (r#"{"links": [[null, {"pod": "default/a", "ifname": "x"}, {"pod": "default/b", "ifname": "y"}]]}"#.into(), "expected an object"),
            (PAIR.replace("\"a\": {\"pod\": \"default/alpha\", \"ifname\": \"in1\", \"ips\": [\"10.9.0.1/24\", \"fd00:9::1/64\"]}", "\"a\": [\"default/alpha\", \"in1\"]"), "expected an object"),
        ];
        for (text, expected) in cases {
            let err = Topology::from_json(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn rejects_an_end_used_twice() {
        let mut topology = Topology::from_json(PAIR).unwrap();
        let mut second = topology.links[0].clone();
        second.name = Some("l2".into());
        second.b.pod = PodRef::new("default", "gamma").unwrap();
        topology.links.push(second);
        assert!(matches!(topology.validate(), Err(TopologyError::DuplicateEnd(_))));
    }

    #[test]
    fn accepts_point_to_point_prefixes() {
        for ip in ["10.0.0.0/31", "10.0.0.1/32", "fd00::/127"] {
            assert!(is_host_address(&ip.parse().unwrap()), "{ip}");
        }
    }
}
