//! The netlink requests ratchet makes, in the host netns or a pod's.
//!
//! A netlink socket belongs to the netns it was opened in, so a pod's socket
//! is opened on a throw-away thread that entered the pod's netns (`setns`
//! only ever changes that thread, never a runtime worker; see
//! containernetworking/plugins pkg/ns/README.md for why that matters). All
//! requests then run on the caller's runtime.

use std::{
    fs::File,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::OpenOptionsExt,
    },
};

use futures::TryStreamExt;
use ipnet::IpNet;
use nix::sched::{CloneFlags, setns};
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth,
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags},
        link::{AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage},
    },
};

use crate::topology::MacAddr;

/// What can go wrong reaching a netns or asking its kernel side.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A netns could not be opened, is not a network namespace, or no
    /// netlink socket could be made in it.
    #[error("cannot open netns {path}: {source}")]
    Netns {
        /// The netns's path (`/proc/self/ns/net` for the host's).
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// Looking an interface up by name failed other than by its absence.
    #[error("look up {name}: {source}")]
    Lookup {
        /// The interface's name.
        name: String,
        /// The errno.
        source: nix::Error,
    },
    /// The kernel refused a request, or the socket failed.
    #[error("{what}: {source}")]
    Request {
        /// The request, with the interface or address it was for.
        what: String,
        /// rtnetlink's error; a kernel NACK carries the errno.
        source: rtnetlink::Error,
    },
}

/// The ifindex of an interface of this process's netns, by name; `None`
/// when there is none. One ioctl and no allocation: the agent checks every
/// end of its node each round, and a netlink dump would parse every
/// interface of the node (kilobytes each, all buffered at once, 35 MiB of
/// heap at 2000 interfaces) to learn the same.
pub fn ifindex_of(name: &str) -> Result<Option<u32>, NetlinkError> {
    match nix::net::if_::if_nametoindex(name) {
        Ok(index) => Ok(Some(index)),
        Err(nix::Error::ENODEV) => Ok(None),
        Err(source) => Err(NetlinkError::Lookup { name: name.into(), source }),
    }
}

/// Opens a network namespace by path, never blocking (a FIFO named as a
/// netns would block a plain open until a writer came) and refusing any file
/// that is not a network namespace, so every later step can trust the fd.
pub fn open_netns(path: &str) -> Result<File, NetlinkError> {
    let failed = |source| NetlinkError::Netns { path: path.into(), source };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(failed)?;
    let on_nsfs = nix::sys::statfs::fstatfs(&file).is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC);
    // SAFETY: NS_GET_NSTYPE takes no argument; the fd is open for the call.
    let kind = on_nsfs.then(|| unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) });
    if kind != Some(libc::CLONE_NEWNET) {
        return Err(failed(std::io::Error::other("not a network namespace")));
    }
    Ok(file)
}

/// A netlink handle bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// What the kernel says about one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// The ifindex, unique in its netns while the interface lives.
    pub index: u32,
    /// The hardware address; `None` when the kernel gave no six-byte one.
    pub mac: Option<MacAddr>,
    /// The MTU, in bytes; 0 when the kernel gave none.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// The carrier is there (`LOWER_UP`): for a veth, its peer is up.
    pub carrier: bool,
}

/// One end of a veth pair to create: the host end stays in the caller's
/// netns, the pod end is born inside the pod's.
pub struct VethSpec<'a> {
    /// The host end's name ([`crate::naming::host_ifname`]).
    pub host_ifname: &'a str,
    /// The pod end's name, as the topology gives it.
    pub pod_ifname: &'a str,
    /// The pod's netns, from [`open_netns`]: the pod end is created in it.
    pub pod_netns: &'a File,
    /// The MTU of both ends, in bytes.
    pub mtu: u32,
    /// The pod end's MAC; `None` lets the kernel pick a random one.
    pub pod_mac: Option<MacAddr>,
}

impl Netlink {
    /// A handle in the netns this process runs in (the host's).
    pub fn host() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetlinkError::Netns { path: "/proc/self/ns/net".into(), source: e })?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// A handle whose socket lives in `netns` (from [`open_netns`], whose
    /// path `path` is, for errors): the caller opens a pod's netns once.
    pub fn in_netns(netns: &File, path: &str) -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Handle::current();
        let opened = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)?;
                    // The socket registers with the caller's reactor, which drives it.
                    let _entered = runtime.enter();
                    let (conn, handle, _) = rtnetlink::new_connection()?;
                    runtime.spawn(conn);
                    Ok::<_, std::io::Error>(handle)
                })
                .join()
                .expect("the netns thread does not panic")
        });
        Ok(Self { handle: opened.map_err(|source| NetlinkError::Netns { path: path.into(), source })? })
    }

    /// The rtnetlink handle, for the TC requests [`crate::tc`] makes.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Looks an interface up by name; `None` when there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let found = self.handle.link().get().match_name(name).execute().try_next().await;
        match found {
            Ok(msg) => Ok(msg.map(link_info)),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(NetlinkError::Request { what: format!("look up {name}"), source }),
        }
    }

    /// Creates the veth pair in one request, so a failure leaves no half.
    /// The caller owns the pair from here on (and deletes it if a later
    /// step fails): nothing else is configured, see [`Netlink::ready_host_end`].
    pub async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<LinkInfo, NetlinkError> {
        let mut peer = LinkUnspec::new_with_name(spec.pod_ifname).mtu(spec.mtu).setns_by_fd(spec.pod_netns.as_raw_fd());
        if let Some(mac) = spec.pod_mac {
            peer = peer.address(mac.0.to_vec());
        }
        let veth = LinkVeth::new(spec.host_ifname, spec.pod_ifname)
            .mtu(spec.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        let what = || format!("create veth {} <-> {}", spec.host_ifname, spec.pod_ifname);
        self.add_link(veth, spec.host_ifname, what).await
    }

    /// Readies a new host end and sets it up. It gets no IPv6 link-local
    /// address: it is a wire, not a host, and must not send router or
    /// multicast chatter into the pod. The kernel refuses the
    /// address-generation mode at creation, so it is a request of its own;
    /// a device without IPv6 (an MTU below 1280, or IPv6 switched off)
    /// answers EAFNOSUPPORT and has no link-local address to suppress.
    pub async fn ready_host_end(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let no_link_local = LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
            In6AddrGenMode::None,
        )])]);
        let change = LinkUnspec::new_with_index(index).append_extra_attribute(no_link_local).build();
        match self.handle.link().change(change).execute().await {
            Err(e) if errno(&e) == Some(libc::EAFNOSUPPORT) => {}
            other => other
                .map_err(|source| NetlinkError::Request { what: format!("set addrgenmode none on {name}"), source })?,
        }
        self.set_up(index, name).await
    }

    /// Creates a VXLAN device in external (collect-metadata) mode: one for
    /// all links, the eBPF program gives each frame its VNI and remote.
    pub async fn create_vxlan(
        &self,
        name: &str,
        local: std::net::Ipv4Addr,
        port: u16,
    ) -> Result<LinkInfo, NetlinkError> {
        let vxlan =
            rtnetlink::LinkVxlan::new(name, 0).collect_metadata(true).local(local).port(port).learning(false).build();
        let what = || format!("create VXLAN device {name} (local {local}, port {port})");
        let made = self.add_link(vxlan, name, what).await?;
        self.set_up(made.index, name).await?;
        Ok(made)
    }

    /// Sets an interface's MTU; `name` is for the error only.
    pub async fn set_mtu(&self, index: u32, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        self.change(LinkUnspec::new_with_index(index).mtu(mtu).build(), || format!("set MTU {mtu} on {name}")).await
    }

    /// Sets an interface's MAC; `name` is for the error only.
    pub async fn set_mac(&self, index: u32, name: &str, mac: MacAddr) -> Result<(), NetlinkError> {
        let change = LinkUnspec::new_with_index(index).address(mac.0.to_vec()).build();
        self.change(change, || format!("set MAC {mac} on {name}")).await
    }

    /// Sets an interface administratively up; `name` is for the error only.
    pub async fn set_up(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        self.change(LinkUnspec::new_with_index(index).up().build(), || format!("set {name} up")).await
    }

    /// Sets an interface administratively down; `name` is for the error only.
    /// A veth's peer then has no carrier.
    pub async fn set_down(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        self.change(LinkUnspec::new_with_index(index).down().build(), || format!("set {name} down")).await
    }

    /// Creates an interface and looks it up: the kernel's answer to a
    /// create carries no ifindex.
    async fn add_link(
        &self,
        msg: LinkMessage,
        name: &str,
        what: impl Fn() -> String,
    ) -> Result<LinkInfo, NetlinkError> {
        let failed = |source| NetlinkError::Request { what: what(), source };
        self.handle.link().add(msg).execute().await.map_err(failed)?;
        self.link_by_name(name).await?.ok_or_else(|| failed(rtnetlink::Error::RequestFailed))
    }

    async fn change(&self, msg: LinkMessage, what: impl Fn() -> String) -> Result<(), NetlinkError> {
        self.handle.link().change(msg).execute().await.map_err(|source| NetlinkError::Request { what: what(), source })
    }

    /// Adds addresses without duplicate address detection: the link has one
    /// peer whose addresses the topology fixed, and DAD would hold IPv6
    /// back for seconds after ADD returns.
    pub async fn add_addresses(&self, index: u32, name: &str, ips: &[IpNet]) -> Result<(), NetlinkError> {
        for ip in ips {
            let mut request = self.handle.address().add(index, ip.addr(), ip.prefix_len());
            if ip.addr().is_ipv6() {
                request.message_mut().header.flags = AddressHeaderFlags::Nodad;
                request.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            let what = format!("add address {ip} to {name}");
            request.execute().await.map_err(|source| NetlinkError::Request { what, source })?;
        }
        Ok(())
    }

    /// The addresses on an interface, with their prefix lengths.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        let request = self.handle.address().get().set_link_index_filter(index).execute();
        let messages: Vec<_> = request
            .try_collect()
            .await
            .map_err(|source| NetlinkError::Request { what: format!("list addresses of ifindex {index}"), source })?;
        let address = |msg: &rtnetlink::packet_route::address::AddressMessage| {
            msg.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(ip) => IpNet::new(*ip, msg.header.prefix_len).ok(),
                _ => None,
            })
        };
        Ok(messages.iter().filter_map(address).collect())
    }

    /// The name and MTU of the interface that holds `ip`; `None` when none does.
    pub async fn holder_of(&self, ip: std::net::IpAddr) -> Result<Option<(String, u32)>, NetlinkError> {
        let request = self.handle.address().get().set_address_filter(ip).execute();
        let messages: Vec<_> = request
            .try_collect()
            .await
            .map_err(|source| NetlinkError::Request { what: format!("find the interface with {ip}"), source })?;
        let Some(index) = messages.first().map(|msg| msg.header.index) else { return Ok(None) };
        let found = self.handle.link().get().match_index(index).execute().try_next().await;
        let link =
            found.map_err(|source| NetlinkError::Request { what: format!("look up ifindex {index}"), source })?;
        Ok(link.map(|msg| {
            let name = msg.attributes.iter().find_map(|attr| match attr {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            });
            (name.unwrap_or_else(|| format!("ifindex {index}")), link_info(msg).mtu)
        }))
    }

    /// Deletes an interface by index; one already gone is not an error.
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        match self.handle.link().del(index).execute().await {
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            other => other.map_err(|source| NetlinkError::Request { what: format!("delete ifindex {index}"), source }),
        }
    }
}

fn link_info(msg: LinkMessage) -> LinkInfo {
    let flags = msg.header.flags;
    let (up, carrier) = (flags.contains(LinkFlags::Up), flags.contains(LinkFlags::LowerUp));
    let mut info = LinkInfo { index: msg.header.index, mac: None, mtu: 0, up, carrier };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::Address(bytes) => info.mac = bytes.try_into().ok().map(MacAddr),
            LinkAttribute::Mtu(mtu) => info.mtu = mtu,
            _ => {}
        }
    }
    info
}

/// The positive errno of a kernel NACK.
pub(crate) fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|code| -code.get()),
        _ => None,
    }
}
