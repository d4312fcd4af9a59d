//! What `weftctl trace` reads from a network namespace's kernel state over netlink:
//! links (kind, state, MTU, bridge master, veth peer index, vxlan parameters),
//! addresses, `RTM_GETROUTE` lookups (what `ip route get` asks), neighbours and the
//! bridge fdb. Each namespace is read from a thread that entered it (`setns`), with a
//! netlink socket opened there, so the caller's namespace is never changed.

use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use crate::{kind_name, mac_string, request_error, Error, Netlink, Result};

/// A network interface with what the path walk needs.
#[derive(Debug, Clone, Default)]
pub struct LinkView {
    pub index: u32,
    pub name: String,
    /// `veth`, `bridge`, `tun`, `vxlan`, ... (`None` for physical devices and `lo`).
    pub kind: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier (`IFF_LOWER_UP`): for a TUN device, a process has it open.
    pub lower_up: bool,
    pub mtu: u32,
    /// Index of the bridge this link is a port of.
    pub master: Option<u32>,
    /// `IFLA_LINK`: for a veth, the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    pub mac: Option<String>,
    pub addresses: Vec<Ipv4Net>,
    pub vxlan: Option<VxlanParams>,
}

/// A kernel vxlan device's parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VxlanParams {
    pub vni: Option<u32>,
    pub local: Option<Ipv4Addr>,
    pub port: Option<u16>,
}

/// The answer of one `RTM_GETROUTE` lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLookup {
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
    pub prefsrc: Option<Ipv4Addr>,
    /// `unicast`, `local`, `unreachable`, ...
    pub kind: String,
}

/// One neighbour (ARP) or fdb entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourView {
    pub ifindex: u32,
    /// IPv4 address: the neighbour's for ARP entries, the remote VTEP for fdb entries.
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<String>,
    pub permanent: bool,
    /// `NTF_SELF`: an fdb entry of the device itself (how flanneld programs vxlan).
    pub self_entry: bool,
}

/// What was read from one namespace.
#[derive(Debug, Clone, Default)]
pub struct NsView {
    pub links: Vec<LinkView>,
    /// `RTM_GETROUTE` per destination asked for: the route, or the kernel's refusal.
    pub routes: HashMap<Ipv4Addr, std::result::Result<RouteLookup, String>>,
    pub neighbours: Vec<NeighbourView>,
    pub fdb: Vec<NeighbourView>,
}

impl NsView {
    pub fn link(&self, index: u32) -> Option<&LinkView> {
        self.links.iter().find(|l| l.index == index)
    }

    pub fn link_named(&self, name: &str) -> Option<&LinkView> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The link holding `ip`, and the network it is on.
    pub fn holder_of(&self, ip: Ipv4Addr) -> Option<(&LinkView, Ipv4Net)> {
        self.links
            .iter()
            .find_map(|l| l.addresses.iter().find(|a| a.addr() == ip).map(|a| (l, *a)))
    }

    pub fn route(&self, dst: Ipv4Addr) -> std::result::Result<&RouteLookup, String> {
        match self.routes.get(&dst) {
            Some(Ok(route)) => Ok(route),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!("no route lookup for {dst} was made")),
        }
    }
}

/// What to read besides links and addresses.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub route_to: Vec<Ipv4Addr>,
    pub neighbours: bool,
}

/// Reads the namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`, or
/// `/proc/self/ns/net` for our own). Blocking: it drives its own netlink socket on a
/// thread of its own, so it can be called from inside a runtime or from none.
pub fn inspect(path: &Path, query: Query) -> Result<NsView> {
    in_netns(
        path,
        move |netlink| async move { read(&netlink, &query).await },
    )
}

/// Runs `f` with a netlink connection opened inside the namespace at `path`, on a
/// short-lived thread with a runtime of its own; the caller's thread and namespace are
/// left alone.
fn in_netns<T, F, Fut>(path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let path: PathBuf = path.to_owned();
    let shown = path.display().to_string();
    let thread_error = |what: &str, source: std::io::Error| Error::Netns {
        what: format!("reading namespace {shown}: {what}"),
        source,
    };
    let thread = std::thread::Builder::new()
        .name("weft-netns".into())
        .spawn(move || -> Result<T> {
            // Built here, not by the caller: a runtime must not be dropped inside
            // another one, and the caller may be running in one.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| Error::Netns {
                    what: format!(
                        "reading namespace {}: starting a runtime for netlink",
                        path.display()
                    ),
                    source,
                })?;
            runtime.block_on(async move { f(Netlink::connect_at(&path)?).await })
        })
        .map_err(|e| thread_error("starting a thread", e))?;
    thread
        .join()
        .map_err(|_| thread_error("the thread panicked", std::io::Error::other("panic")))?
}

async fn read(netlink: &Netlink, query: &Query) -> Result<NsView> {
    let handle = &netlink.handle;
    let messages: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(request_error("listing links"))?;
    let mut links: Vec<LinkView> = messages.iter().map(link_view).collect();
    let addresses: Vec<_> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(request_error("listing addresses"))?;
    for message in addresses {
        let prefix = message.header.prefix_len;
        for attribute in &message.attributes {
            if let AddressAttribute::Local(std::net::IpAddr::V4(ip)) = attribute {
                if let (Some(link), Ok(net)) = (
                    links.iter_mut().find(|l| l.index == message.header.index),
                    Ipv4Net::new(*ip, prefix),
                ) {
                    link.addresses.push(net);
                }
            }
        }
    }
    let mut view = NsView {
        links,
        ..NsView::default()
    };
    for dst in &query.route_to {
        view.routes.insert(*dst, route_get(handle, *dst).await);
    }
    if query.neighbours {
        view.neighbours = neighbours(handle, AddressFamily::Inet).await?;
        view.fdb = neighbours(handle, AddressFamily::Bridge).await?;
    }
    Ok(view)
}

fn mac_of(bytes: &[u8]) -> Option<String> {
    (bytes.len() == 6).then(|| mac_string(bytes))
}

fn link_view(message: &LinkMessage) -> LinkView {
    let mut link = LinkView {
        index: message.header.index,
        up: message.header.flags.contains(LinkFlags::Up),
        lower_up: message.header.flags.contains(LinkFlags::LowerUp),
        ..LinkView::default()
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Controller(master) => link.master = Some(*master),
            LinkAttribute::Link(peer) => link.peer_index = Some(*peer),
            LinkAttribute::Address(mac) => link.mac = mac_of(mac),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        NlLinkInfo::Kind(kind) => link.kind = Some(kind_name(kind)),
                        NlLinkInfo::Data(InfoData::Vxlan(params)) => {
                            let mut vxlan = VxlanParams::default();
                            for p in params {
                                match p {
                                    InfoVxlan::Id(vni) => vxlan.vni = Some(*vni),
                                    InfoVxlan::Local(ip) => vxlan.local = Some(*ip),
                                    InfoVxlan::Port(port) => vxlan.port = Some(*port),
                                    _ => {}
                                }
                            }
                            link.vxlan = Some(vxlan);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// `ip route get DST`: the kernel's own route selection.
async fn route_get(
    handle: &rtnetlink::Handle,
    dst: Ipv4Addr,
) -> std::result::Result<RouteLookup, String> {
    let message = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, 32)
        .build();
    let answer = handle.route().get(message).execute().try_next().await;
    let message = match answer {
        Ok(Some(message)) => message,
        Ok(None) => return Err(format!("the kernel gave no route to {dst}")),
        Err(rtnetlink::Error::NetlinkError(e)) => {
            let errno = e.code.map(|c| -c.get()).unwrap_or(0);
            return Err(std::io::Error::from_raw_os_error(errno).to_string());
        }
        Err(e) => return Err(e.to_string()),
    };
    let mut lookup = RouteLookup {
        oif: None,
        gateway: None,
        prefsrc: None,
        kind: match message.header.kind {
            RouteType::Unicast => "unicast".into(),
            RouteType::Local => "local".into(),
            other => format!("{other:?}").to_lowercase(),
        },
    };
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Oif(oif) => lookup.oif = Some(*oif),
            RouteAttribute::Gateway(RouteAddress::Inet(gw)) => lookup.gateway = Some(*gw),
            RouteAttribute::PrefSource(RouteAddress::Inet(src)) => lookup.prefsrc = Some(*src),
            _ => {}
        }
    }
    Ok(lookup)
}

async fn neighbours(
    handle: &rtnetlink::Handle,
    family: AddressFamily,
) -> Result<Vec<NeighbourView>> {
    let messages: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .map_err(request_error(format!("listing {family:?} neighbours")))?;
    Ok(messages.iter().map(neighbour_view).collect())
}

fn neighbour_view(message: &NeighbourMessage) -> NeighbourView {
    let mut view = NeighbourView {
        ifindex: message.header.ifindex,
        ip: None,
        mac: None,
        // NUD_PERMANENT may come with other state bits (fdb entries: NOARP too).
        permanent: u16::from(message.header.state) & u16::from(NeighbourState::Permanent) != 0,
        self_entry: message.header.flags.contains(NeighbourFlags::Own),
    };
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => view.ip = Some(*ip),
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) if bytes.len() == 4 => {
                view.ip = Some(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]));
            }
            NeighbourAttribute::LinkLayerAddress(mac) => view.mac = mac_of(mac),
            _ => {}
        }
    }
    view
}

/// Every named namespace (`/run/netns/*`), sorted by name.
pub fn named_namespaces() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| Some((e.file_name().to_str()?.to_owned(), e.path())))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The name under `/run/netns` of the namespace this process is in, if it has one.
pub fn own_namespace_name() -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let own = std::fs::metadata("/proc/self/ns/net").ok()?;
    named_namespaces().into_iter().find_map(|(name, path)| {
        let meta = std::fs::metadata(&path).ok()?;
        (meta.dev() == own.dev() && meta.ino() == own.ino()).then_some(name)
    })
}
