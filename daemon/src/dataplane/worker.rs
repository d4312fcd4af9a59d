//! The hot path: one transmit and one receive thread per TUN queue.
//!
//! Plain OS threads doing blocking syscalls, not async tasks: each thread owns its
//! buffers (allocated once, reused forever), batches its syscalls (`sendmmsg`,
//! `recvmmsg`), loads the peer table once per batch and never takes a lock, allocates
//! or hops a channel per packet. A thread only sleeps in `poll` when it has nothing to
//! do, which is also where it notices the stop signal.
//!
//! Transmit: TUN read (non-blocking, until empty or the batch is full) → parse inner
//! IPv4 → peer lookup by destination → write VXLAN + Ethernet headers into the headroom
//! → one `sendmmsg` for the batch. Receive: `recvmmsg` → validate (peers.rs/packet.rs)
//! → zero vnet header in front of the inner packet → TUN write.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::Ipv4Net;

use super::io::{read_nonblocking, set_nonblocking, wait_readable, write_packet, StopSignal};
use super::packet::{
    accept_ipip, accept_vxlan, parse_inner_ipv4, rx_vnet_header, write_vxlan_headers, Accepted,
    HEADROOM, VXLAN_OVERHEAD,
};
use super::peers::{Encap, PeerTable};
use super::tun::VNET_HDR_LEN;
use crate::metrics::{DropReason, Metrics};

/// Packets per `sendmmsg`/`recvmmsg`.
pub const BATCH: usize = 64;

/// Largest IPv4 packet.
const MAX_INNER_PACKET: usize = 65_535;

/// Everything a worker pair needs; cloned per thread.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    pub encap: Encap,
    pub own_subnet: Ipv4Net,
    pub peers: Arc<ArcSwap<PeerTable>>,
    pub metrics: Arc<Metrics>,
    pub stop: Arc<StopSignal>,
    /// Largest inner packet (the overlay MTU).
    pub mtu: usize,
}

/// Logs at most once per second per call site owner, counting what it held back.
#[derive(Debug)]
struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    fn new() -> LogLimiter {
        LogLimiter {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(number suppressed since the last log)` when a log line may be written now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The transmit loop: TUN queue → peers. Returns when the stop signal is raised.
pub fn transmit(ctx: WorkerContext, tun: OwnedFd, socket: Arc<OwnedFd>) -> io::Result<()> {
    set_nonblocking(tun.as_fd())?;
    let slot_len = HEADROOM + ctx.mtu + 64;
    let mut buffers = vec![0u8; slot_len * BATCH];
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut addresses: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iovecs: Vec<libc::iovec> = vec![
        libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0
        };
        BATCH
    ];
    // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
    let mut messages: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut log = LogLimiter::new();

    loop {
        let peers = ctx.peers.load();
        let mut count = 0;
        let mut bytes = 0u64;
        while count < BATCH {
            let slot = &mut buffers[count * slot_len..(count + 1) * slot_len];
            let read = match read_nonblocking(tun.as_fd(), &mut slot[HEADROOM - VNET_HDR_LEN..]) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(error) => {
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(%error, suppressed, "TUN read failed");
                    }
                    break;
                }
            };
            if read < VNET_HDR_LEN {
                ctx.metrics.drop_packet(DropReason::TxMalformed);
                continue;
            }
            // Offloads are off, so the kernel hands over complete packets with a zero
            // vnet header; anything else cannot be forwarded by this path.
            let vnet = &slot[HEADROOM - VNET_HDR_LEN..HEADROOM];
            if vnet[0] != 0 || vnet[1] != 0 {
                ctx.metrics.drop_packet(DropReason::TxTooBig);
                continue;
            }
            let packet = &slot[HEADROOM..HEADROOM - VNET_HDR_LEN + read];
            let Some(inner) = parse_inner_ipv4(packet) else {
                ctx.metrics.drop_packet(DropReason::TxMalformed);
                continue;
            };
            let Some(peer) = peers.route(inner.dst) else {
                ctx.metrics.drop_packet(DropReason::TxNoPeer);
                continue;
            };
            let start = match &ctx.encap {
                Encap::Vxlan { vni, local_mac, .. } => {
                    let start = HEADROOM - VXLAN_OVERHEAD;
                    let headers: &mut [u8; VXLAN_OVERHEAD] = (&mut slot[start..HEADROOM])
                        .try_into()
                        .expect("headroom holds the VXLAN headers");
                    write_vxlan_headers(headers, *vni, local_mac, &peer.vtep_mac);
                    start
                }
                Encap::Ipip => HEADROOM,
            };
            addresses[count] = peer.sockaddr;
            iovecs[count] = libc::iovec {
                iov_base: slot[start..].as_mut_ptr().cast(),
                iov_len: HEADROOM - start + inner.len,
            };
            bytes += inner.len as u64;
            count += 1;
        }
        drop(peers);

        if count == 0 {
            if !wait_readable(tun.as_fd(), &ctx.stop)? {
                return Ok(());
            }
            continue;
        }
        for n in 0..count {
            let header = &mut messages[n].msg_hdr;
            header.msg_name = (&mut addresses[n] as *mut libc::sockaddr_in).cast();
            header.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            header.msg_iov = &mut iovecs[n];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
        }
        let mut sent = 0;
        let mut failed = 0u64;
        while sent < count {
            // SAFETY: messages[sent..count] point at live iovecs/addresses/buffers owned
            // by this thread, unchanged until the call returns.
            let rc = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    messages[sent..].as_mut_ptr(),
                    (count - sent) as libc::c_uint,
                    0,
                )
            };
            ctx.metrics.tx_syscalls.fetch_add(1, Ordering::Relaxed);
            if rc < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The first message failed (e.g. no route to that peer): skip it.
                ctx.metrics.drop_packet(DropReason::TxSendError);
                failed += 1;
                bytes = bytes.saturating_sub(inner_len(&iovecs[sent], &ctx.encap));
                if let Some(suppressed) = log.allow() {
                    tracing::warn!(%error, suppressed, "underlay send failed");
                }
                sent += 1;
                continue;
            }
            sent += rc as usize;
        }
        ctx.metrics.tx.add(count as u64 - failed, bytes);
    }
}

fn inner_len(iovec: &libc::iovec, encap: &Encap) -> u64 {
    let overhead = match encap {
        Encap::Vxlan { .. } => VXLAN_OVERHEAD,
        Encap::Ipip => 0,
    };
    iovec.iov_len.saturating_sub(overhead) as u64
}

/// The receive loop: underlay socket → TUN queue. Returns when the stop signal is
/// raised.
pub fn receive(ctx: WorkerContext, tun: OwnedFd, socket: Arc<OwnedFd>) -> io::Result<()> {
    // Largest datagram: a 64 KB inner super-packet (a peer kernel's GSO packet that
    // crossed veth whole, see `rx_vnet_header`) plus encapsulation, with room for an
    // outer IPv4 header with options on the raw IPIP socket.
    let slot_len = MAX_INNER_PACKET + VXLAN_OVERHEAD + 128;
    let mut buffers = vec![0u8; slot_len * BATCH];
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut addresses: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iovecs: Vec<libc::iovec> = (0..BATCH)
        .map(|n| libc::iovec {
            iov_base: buffers[n * slot_len..].as_mut_ptr().cast(),
            iov_len: slot_len,
        })
        .collect();
    // SAFETY: all-zero is a valid mmsghdr.
    let mut messages: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    for n in 0..BATCH {
        let header = &mut messages[n].msg_hdr;
        header.msg_iov = &mut iovecs[n];
        header.msg_iovlen = 1;
        header.msg_name = (&mut addresses[n] as *mut libc::sockaddr_in).cast();
    }
    let mut log = LogLimiter::new();

    loop {
        for message in messages.iter_mut() {
            message.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            message.msg_len = 0;
        }
        // SAFETY: every message points at a live iovec/buffer/address owned by this
        // thread; the kernel writes at most iov_len bytes into each buffer.
        let rc = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                messages.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::WouldBlock => {
                    if !wait_readable(socket.as_fd(), &ctx.stop)? {
                        return Ok(());
                    }
                }
                io::ErrorKind::Interrupted => {}
                _ => {
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(%error, suppressed, "underlay receive failed");
                    }
                    if !wait_readable(socket.as_fd(), &ctx.stop)? {
                        return Ok(());
                    }
                }
            }
            continue;
        }
        ctx.metrics.rx_syscalls.fetch_add(1, Ordering::Relaxed);
        let peers = ctx.peers.load();
        let mut packets = 0u64;
        let mut bytes = 0u64;
        for n in 0..rc as usize {
            let len = messages[n].msg_len as usize;
            let slot = &mut buffers[n * slot_len..n * slot_len + len.min(slot_len)];
            let verdict = match &ctx.encap {
                Encap::Vxlan { vni, .. } => {
                    let source = Ipv4Addr::from(u32::from_be(addresses[n].sin_addr.s_addr));
                    accept_vxlan(slot, source, *vni, &ctx.own_subnet, &peers)
                }
                Encap::Ipip => accept_ipip(slot, &ctx.own_subnet, &peers),
            };
            let Accepted { offset, len } = match verdict {
                Ok(accepted) => accepted,
                Err(reason) => {
                    ctx.metrics.drop_packet(reason);
                    if let Some(suppressed) = log.allow() {
                        tracing::debug!(
                            reason = reason.name(),
                            suppressed,
                            "dropped received packet"
                        );
                    }
                    continue;
                }
            };
            // Both encapsulations leave ≥ 20 bytes before the inner packet; the vnet
            // header goes in the last 10 of them.
            let start = offset - VNET_HDR_LEN;
            let vnet = rx_vnet_header(&mut slot[offset..offset + len], ctx.mtu);
            slot[start..offset].copy_from_slice(&vnet);
            match write_packet(tun.as_fd(), &slot[start..offset + len]) {
                Ok(()) => {
                    packets += 1;
                    bytes += len as u64;
                }
                Err(error) => {
                    ctx.metrics.drop_packet(DropReason::RxTunWrite);
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(%error, suppressed, "TUN write failed");
                    }
                }
            }
        }
        ctx.metrics.rx.add(packets, bytes);
    }
}
