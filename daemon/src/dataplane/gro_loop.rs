//! IPIP transmit through a GRO loop: how userspace IPIP sends 64 KB at a time without
//! the kernel's `ipip` module.
//!
//! A raw IPIP socket sends one skb per 1,480-byte segment, and every one of them is
//! routed, bridged and received on its own (weft-bench: 2 Gbit/s, 7.5 CPU-s/GB). VXLAN
//! avoids that with `UDP_SEGMENT`, but nothing lets userspace ask for an IP-in-IP GSO
//! packet: the virtio-net header has no IPXIP4 type, and a TCPv4 GSO packet inside an
//! outer IPv4 header is refused by `ipip_gso_segment`. The kernel builds such packets
//! in one place only, GRO (`ipip_gro_receive`, core code, no module). So weftd writes
//! its already-encapsulated segments as Ethernet frames (`AF_PACKET`) into one end of
//! a veth pair it owns, [`TX_DEVICE`]; the other end, [`GRO_DEVICE`], has GRO on and a
//! GRO flush timeout, merges each burst back into one IPXIP4 super-packet and the
//! kernel forwards that out of the underlay device as one skb: across veth and bridges
//! whole, cut by the NIC (or by software GSO) only where it must be.
//!
//! What that needs, checked at start (else the raw socket path is used, and the reason
//! logged): TSO off on the sending end (veth only feeds GRO with non-TSO senders'
//! packets), GRO on the receiving end, `accept_local` and `rp_filter` 0 there (the
//! frames carry our own PublicIP as source), `net.ipv4.conf.all.rp_filter` 0 (the
//! effective value is the maximum) and `net.ipv4.ip_forward` 1 (pod traffic needs it
//! anyway). The GRO flush timeout is what lets segments written one `sendmmsg` message
//! at a time meet in GRO: without it each NAPI poll flushes what it merged. Threaded
//! NAPI moves GRO, forwarding and everything downstream of the loop off the sending
//! worker's CPU into a kernel thread, so the two form a pipeline (weft-bench on 2
//! cores, IPIP tcp-1: raw socket 2.0 Gbit/s; loop 1.4; loop + flush timeout + threaded
//! NAPI 4.7; threaded without the timeout 3.3).

use std::io;
use std::os::fd::AsRawFd;

use anyhow::Context;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::lease::MacAddr;
use crate::netlink::{Link, Netlink};

/// The end weftd writes frames into.
pub const TX_DEVICE: &str = "weft.ipip.tx";
/// The end where GRO merges them; forwarded from there to the underlay.
pub const GRO_DEVICE: &str = "weft.ipip.gro";
/// How long GRO holds a merged packet waiting for more segments. A burst arrives within
/// a few µs per segment; the last segment of a TCP burst usually carries PSH, which
/// flushes at once, so the timeout is only what a burst's tail waits without it.
pub const GRO_FLUSH_TIMEOUT_NS: u32 = 20_000;

/// Frames the sending end's qdisc may hold: more than the packet socket's send buffer
/// (`io::SOCKET_BUFFER_BYTES`, ~2.3 KB of it per frame) lets in, so a sender that gets
/// ahead of the NAPI thread blocks in `sendmmsg` until frames leave, rather than
/// seeing the qdisc refuse them.
const TX_QUEUE_FRAMES: u32 = 10_000;

/// The loop, ready: frames go from `tx_mac` to `gro_mac` through `tx_index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroLoop {
    pub tx_index: u32,
    pub tx_mac: MacAddr,
    pub gro_mac: MacAddr,
}

/// Creates (or finds) the veth pair and configures both ends; `Err` says why the loop
/// cannot be used here, and nothing is left half-configured that matters: the pair is
/// then simply unused.
pub async fn setup(netlink: &Netlink, underlay_mtu: u32) -> anyhow::Result<GroLoop> {
    check_sysctl("net/ipv4/ip_forward", "1")?;
    check_sysctl("net/ipv4/conf/all/rp_filter", "0")?;
    let ends = [
        netlink.link(TX_DEVICE).await?,
        netlink.link(GRO_DEVICE).await?,
    ];
    if ends.iter().any(Option::is_none) {
        // One end without the other (its peer moved away): start over.
        for stale in ends.into_iter().flatten() {
            netlink.delete_link(stale.index).await?;
        }
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(GRO_DEVICE.to_string())
            .mtu(underlay_mtu)
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(TX_DEVICE.to_string())
            .mtu(underlay_mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        netlink
            .handle()
            .link()
            .add(veth)
            .execute()
            .await
            .with_context(|| format!("creating the veth pair {TX_DEVICE}/{GRO_DEVICE}"))?;
    }
    // Before the devices come up: no IPv6 addresses, router solicitations or DAD on
    // devices that carry only our own IPv4 frames.
    for name in [TX_DEVICE, GRO_DEVICE] {
        let _ = write_sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "1");
    }
    write_sysctl(&format!("net/ipv4/conf/{GRO_DEVICE}/accept_local"), "1")?;
    write_sysctl(&format!("net/ipv4/conf/{GRO_DEVICE}/rp_filter"), "0")?;
    set_ethtool_flag(TX_DEVICE, ETHTOOL_STSO, false)
        .context("turning TSO off on the sending end")?;
    let tx = netlink.require_link(TX_DEVICE).await?;
    // Before the qdisc, whose limit it becomes.
    netlink
        .handle()
        .link()
        .set(
            LinkUnspec::new_with_index(tx.index)
                .txqueuelen(TX_QUEUE_FRAMES)
                .build(),
        )
        .execute()
        .await
        .with_context(|| format!("setting {TX_DEVICE}'s txqueuelen"))?;
    add_fifo_qdisc(netlink, tx.index)
        .await
        .with_context(|| format!("adding a pfifo qdisc to {TX_DEVICE}"))?;
    set_ethtool_flag(GRO_DEVICE, ETHTOOL_SGRO, true).context("turning GRO on")?;
    let tx: Link = netlink
        .ensure_link_up(TX_DEVICE, Some(underlay_mtu))
        .await?;
    let gro: Link = netlink
        .ensure_link_up(GRO_DEVICE, Some(underlay_mtu))
        .await?;
    set_gro_device_attribute(
        gro.index,
        "gro_flush_timeout",
        &GRO_FLUSH_TIMEOUT_NS.to_string(),
    )?;
    set_gro_device_attribute(gro.index, "threaded", "1")?;
    Ok(GroLoop {
        tx_index: tx.index,
        tx_mac: mac_of(&tx)?,
        gro_mac: mac_of(&gro)?,
    })
}

/// Removes the pair (`--cleanup-on-exit`); deleting one end deletes both.
pub async fn remove(netlink: &Netlink) -> anyhow::Result<()> {
    if let Some(link) = netlink.link(TX_DEVICE).await? {
        netlink.delete_link(link.index).await?;
    }
    Ok(())
}

/// A FIFO root qdisc on the sending end (`tc qdisc replace dev weft.ipip.tx root
/// pfifo`, limit = txqueuelen). veth has none by default, and without one a frame
/// that finds the peer's 256-slot ring full is dropped (`ENOBUFS`) — a 45-segment burst
/// often does while the NAPI thread is still waking. With a qdisc, veth stops its queue
/// instead and the qdisc holds the frames until the ring drains: backpressure in the
/// kernel, no drop, no retransmit.
async fn add_fifo_qdisc(netlink: &Netlink, index: u32) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use rtnetlink::packet_core::{
        NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
    };
    use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage};
    use rtnetlink::packet_route::RouteNetlinkMessage;

    let mut message = TcMessage::with_index(index as i32);
    message.header.parent = TcHandle::ROOT;
    message
        .attributes
        .push(TcAttribute::Kind("pfifo".to_string()));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    let mut responses = netlink.handle().clone().request(request)?;
    while let Some(response) = responses.next().await {
        if let NetlinkPayload::Error(error) = response.payload {
            if let Some(code) = error.code {
                return Err(std::io::Error::from_raw_os_error(-code.get()).into());
            }
        }
    }
    Ok(())
}

fn mac_of(link: &Link) -> anyhow::Result<MacAddr> {
    link.mac
        .with_context(|| format!("{} has no MAC address", link.name))
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{key}")
}

/// `/proc/sys` resolves `net/` in the namespace of whoever opens it: ours.
fn check_sysctl(key: &str, wanted: &str) -> anyhow::Result<()> {
    let value = std::fs::read_to_string(sysctl_path(key))
        .with_context(|| format!("reading {}", key.replace('/', ".")))?;
    anyhow::ensure!(
        value.trim() == wanted,
        "{} is {}, needs {wanted}",
        key.replace('/', "."),
        value.trim()
    );
    Ok(())
}

fn write_sysctl(key: &str, value: &str) -> anyhow::Result<()> {
    std::fs::write(sysctl_path(key), value)
        .with_context(|| format!("setting {} = {value}", key.replace('/', ".")))
}

/// Writes one of the GRO end's sysfs attributes, after checking that the sysfs in view
/// is our namespace's (the device there has our index): a process that entered the
/// namespace with `setns` still sees the sysfs of the one it came from.
fn set_gro_device_attribute(index: u32, attribute: &str, value: &str) -> anyhow::Result<()> {
    let dir = format!("/sys/class/net/{GRO_DEVICE}");
    let seen = std::fs::read_to_string(format!("{dir}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    anyhow::ensure!(
        seen == Some(index),
        "/sys shows another network namespace (mount sysfs for this one, e.g. `ip netns exec`): cannot set {GRO_DEVICE}'s {attribute}"
    );
    std::fs::write(format!("{dir}/{attribute}"), value)
        .with_context(|| format!("setting {dir}/{attribute} = {value}"))
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member: name, then a pointer, padded to 40 bytes.
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// One legacy ethtool flag (TSO, GRO) on `device`, as `ethtool -K` sets it.
fn set_ethtool_flag(device: &str, cmd: u32, on: bool) -> io::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let mut value = EthtoolValue {
        cmd,
        data: u32::from(on),
    };
    let mut request = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: (&mut value as *mut EthtoolValue).cast(),
        _pad: [0; 16],
    };
    if device.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "device name too long",
        ));
    }
    for (slot, byte) in request.name.iter_mut().zip(device.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: SIOCETHTOOL reads the NUL-terminated name and the ethtool_value that
    // `data` points at; both live until the call returns.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut request) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfreqData>(), 40);
        assert_eq!(std::mem::offset_of!(IfreqData, data), 16);
    }

    #[test]
    fn device_names_fit_ifnamsiz() {
        assert!(TX_DEVICE.len() < libc::IFNAMSIZ);
        assert!(GRO_DEVICE.len() < libc::IFNAMSIZ);
    }
}
