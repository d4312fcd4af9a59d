//! The transmit half of a worker: TUN queue → peer lookup → outer headers → the TAP
//! (the kernel encapsulates, `tap_encap`) or the underlay sockets (`send`).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::io::{read_nonblocking, set_nonblocking, write_packet};
use super::pacer::SendPacer;
use super::packet::{TapOuter, HEADROOM, VXLAN_OVERHEAD};
use super::peers::{Encap, PeerEntry};
use super::send::{send_failed, send_segmented, SendBatch};
use super::worker::{LogLimiter, WorkerContext, BATCH, MAX_INNER_PACKET};
use crate::metrics::{Direction, DropReason, PeerTally};
use weft_proto::error::WireError;
use weft_proto::ipv4::Ipv4Packet;
use weft_proto::vnet::{self, GsoType, VirtioNetHdr, VirtioNetRepr};
use weft_proto::{flow, gso, tap_offload};

/// IPIP's one sending socket when there is no encapsulating TAP (`tap_encap`), and for
/// the rare super-packet too long for one outer header.
const IPIP_RAW_SENDER: usize = 0;

/// A worker's queue of the encapsulating TAP (`tap_encap`): packets, super-packets
/// whole, leave by one `write` each, and the kernel marks and sends them.
#[derive(Debug)]
pub struct TapQueue {
    pub fd: OwnedFd,
    /// Our PublicIP: the outer source.
    pub local_ip: Ipv4Addr,
    /// The TAP takes UDP-tunnel GSO: VXLAN frames go with the 24-byte tunnel vnet
    /// header and outer UDP checksums (`tap_encap`'s module documentation).
    pub udp_tunnel_offload: bool,
}

impl TapQueue {
    /// Writes `slot[HEADROOM..HEADROOM + inner_len]` (read from TUN with `vnet`) as one
    /// frame: the complete outer headers in front of it, `vnet` in front of those with
    /// its offsets moved by their length.
    fn send(
        &self,
        encap: &Encap,
        slot: &mut [u8],
        inner_len: usize,
        vnet: &VirtioNetRepr,
        peer: &PeerEntry,
        ident: &mut OuterIdent,
    ) -> Result<(), TapSendError> {
        let outer = TapOuter {
            src: self.local_ip,
            dst: peer.public_ip,
            // The kernel's GSO gives each wire packet cut from a super-packet the next
            // ID: they take as many as there are segments.
            ident: ident.take(vnet.segments(inner_len)),
        };
        let inner = HEADROOM..HEADROOM + inner_len;
        let frame = encap
            .write_outer(slot, inner, &peer.vtep_mac, Some(&outer))
            .map_err(TapSendError::Encap)?;
        if self.udp_tunnel_offload {
            let header = tap_offload::tap_offload_header(&mut slot[frame.clone()], vnet)
                .map_err(TapSendError::Offload)?;
            let start = frame.start - vnet::TUNNEL_HEADER_LEN;
            header.emit(&mut slot[start..frame.start]);
            return write_packet(self.fd.as_fd(), &slot[start..frame.end])
                .map_err(TapSendError::Write);
        }
        let prefix = (HEADROOM - frame.start) as u16;
        let start = frame.start - vnet::HEADER_LEN;
        vnet.with_prefix(prefix)
            .emit(&mut VirtioNetHdr::new_unchecked(
                &mut slot[start..frame.start],
            ));
        write_packet(self.fd.as_fd(), &slot[start..frame.end]).map_err(TapSendError::Write)
    }
}

#[derive(Debug, thiserror::Error)]
enum TapSendError {
    #[error("no outer header fits: {0}")]
    Encap(weft_proto::error::EncapError),
    #[error("writing to the TAP: {0}")]
    Write(io::Error),
    #[error("no UDP-tunnel offload header fits: {0}")]
    Offload(tap_offload::TapOffloadError),
}

/// The outer IPv4 IDs of the packets a worker writes whole (the TAP path, where weft
/// writes the outer header itself). An ID must not repeat among a flow's packets that
/// may still be in flight: VXLAN's outer header allows fragmentation, and a receiver
/// reassembles by (source, destination, protocol, ID). A worker carries its flows alone
/// (one TUN queue each), so one counter per worker is unique per flow and per peer.
/// It starts at random, as the kernel's ID generators do, so a restarted weftd does not
/// reuse the IDs of its previous life, and advances by the number of wire packets each
/// packet becomes: the kernel's GSO gives the segments of a super-packet IDs `id`,
/// `id + 1`, ..., `id + n - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OuterIdent {
    next: u16,
}

impl OuterIdent {
    fn random() -> OuterIdent {
        OuterIdent {
            next: rand::random(),
        }
    }

    /// The ID for a packet that becomes `segments` wire packets (at least one).
    fn take(&mut self, segments: usize) -> u16 {
        let first = self.next;
        // An ID is 16 bits: more segments than IDs wrap around, as in the kernel.
        let used = segments.max(1) % (1 << 16);
        self.next = first.wrapping_add(used as u16);
        first
    }
}

/// Cuts a TUN super-packet into segments with `headroom` before each; a packet that
/// cannot be segmented is counted as `tx_too_big` (and logged, rate-limited) instead.
fn segment_or_drop(
    packet: &[u8],
    vnet: &VirtioNetRepr,
    out: &mut [u8],
    headroom: usize,
    ctx: &WorkerContext,
    log: &mut LogLimiter,
) -> Option<gso::Segmented> {
    match gso::segment(packet, vnet, out, headroom) {
        Ok(layout) => Some(layout),
        Err(error) => {
            ctx.metrics.drop_packet(DropReason::TxTooBig);
            if let Some(suppressed) = log.allow() {
                tracing::warn!(%error, suppressed, "cannot segment a TUN super-packet");
            }
            None
        }
    }
}

/// The sending socket for an inner packet's flow: the outer UDP source port follows the
/// inner flow, as the kernel's `udp_flow_src_port` does, so ECMP and RSS on the underlay
/// keep each flow on one path and spread different flows. A UDP GSO send has one source
/// port, so the choice is among a few sockets bound to different ephemeral ports.
#[inline]
fn pick_sender(inner: &[u8], senders: usize) -> usize {
    if senders <= 1 {
        0
    } else {
        flow::flow_hash(inner) as usize % senders
    }
}

/// Most datagrams one `UDP_SEGMENT` send may carry (the kernel's `UDP_MAX_SEGMENTS`).
const MAX_GSO_SEGMENTS: usize = 64;
/// Largest UDP payload of one send (65535 - IPv4 header - UDP header).
const MAX_UDP_PAYLOAD: usize = 65_507;

/// Bytes per transmit slot: headroom, the vnet header and the largest inner packet.
const TX_SLOT_LEN: usize = HEADROOM + MAX_INNER_PACKET + vnet::HEADER_LEN;

/// The transmit half of a queue worker: TUN queue → peers.
///
/// With TUN offloads on, a read returns either one ordinary packet (queued for the next
/// `sendmmsg`, its partial checksum completed if the kernel left one) or a TCP/UDP
/// super-packet of up to 64 KB: that one is cut into MTU-sized segments by
/// `weft_proto::gso::segment` straight into a buffer with VXLAN headroom before each,
/// and leaves in one `UDP_SEGMENT` send per 64 KB of datagrams (IPIP: one `sendmmsg`,
/// as a raw socket has no UDP GSO).
pub(super) struct Transmitter {
    ctx: WorkerContext,
    pub(super) tun: OwnedFd,
    senders: Arc<Vec<OwnedFd>>,
    buffers: Vec<u8>,
    train: Train,
    batch: SendBatch,
    log: LogLimiter,
    tally: PeerTally,
    /// IPIP or VXLAN through the kernel's encapsulation, when it is up.
    tap: Option<TapQueue>,
    /// Outer IPv4 IDs of the packets written to `tap`.
    outer_ident: OuterIdent,
    /// Whether ordinary VXLAN packets leave in `UDP_SEGMENT` trains (see
    /// [`Train::push`]); false without UDP GSO in the kernel, and for IPIP.
    small_trains: bool,
}

impl Transmitter {
    pub(super) fn new(
        ctx: WorkerContext,
        tun: OwnedFd,
        senders: Arc<Vec<OwnedFd>>,
        tap: Option<TapQueue>,
    ) -> io::Result<Transmitter> {
        set_nonblocking(tun.as_fd())?;
        let small_trains = ctx.encap.is_udp() && super::io::udp_gso_supported();
        Ok(Transmitter {
            ctx,
            tun,
            senders,
            buffers: vec![0u8; TX_SLOT_LEN * BATCH],
            train: Train::new(),
            batch: SendBatch::new(),
            log: LogLimiter::new(),
            tally: PeerTally::new(Direction::Tx),
            small_trains,
            tap,
            outer_ident: OuterIdent::random(),
        })
    }

    /// Reads and sends what the TUN queue holds (up to one batch), without blocking;
    /// says how much there was.
    pub(super) fn pump(&mut self) -> TxRound {
        const SLOT_LEN: usize = TX_SLOT_LEN;
        let Transmitter {
            ctx,
            tun,
            senders,
            buffers,
            train,
            batch,
            log,
            tally,
            tap,
            outer_ident,
            small_trains,
        } = self;
        let small_trains = *small_trains;
        let ctx: &WorkerContext = ctx;
        let senders: &[OwnedFd] = senders;
        let mut slot_index = 0;
        let peers = ctx.peers.load();
        let mut round = TxRound::default();
        while !batch.is_full() {
            let slot = &mut buffers[slot_index * SLOT_LEN..(slot_index + 1) * SLOT_LEN];
            let read = match read_nonblocking(tun.as_fd(), &mut slot[HEADROOM - vnet::HEADER_LEN..])
            {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(error) => {
                    // The device is gone (EBADFD) or broken: its queue now polls readable
                    // forever, so the worker must not go on polling it.
                    ctx.faults.report_tun_lost(&error);
                    round.tun_lost = true;
                    break;
                }
            };
            round.packets += 1;
            let (vnet_bytes, packet) =
                slot[HEADROOM - vnet::HEADER_LEN..][..read].split_at(read.min(vnet::HEADER_LEN));
            let Ok(vnet) = VirtioNetRepr::parse(&VirtioNetHdr::new_unchecked(vnet_bytes)) else {
                ctx.metrics.drop_packet(DropReason::TxMalformed);
                continue;
            };
            let (dst, inner_len) = match Ipv4Packet::new_checked(packet) {
                Ok(ip) => (ip.dst_addr(), usize::from(ip.total_len())),
                Err(error) => {
                    // The overlay is IPv4 only: IPv6 the host sends into the device
                    // (router solicitations, MLD) has no peer; anything else is malformed.
                    let reason = match error {
                        WireError::Version { version: 6, .. } => DropReason::TxNoPeer,
                        _ => DropReason::TxMalformed,
                    };
                    ctx.metrics.drop_packet(reason);
                    continue;
                }
            };
            let Some(peer) = peers.route(dst) else {
                ctx.metrics.drop_packet(DropReason::TxNoPeer);
                continue;
            };
            let segments = vnet.segments(inner_len);
            tally.count(
                &ctx.metrics,
                peer.subnet,
                peer.public_ip,
                segments as u64,
                inner_len as u64,
            );
            if vnet.gso_type != GsoType::None {
                round.super_packets += 1;
            }
            // The TAP takes TCP super-packets (one write, the kernel segments late). An
            // ordinary VXLAN packet joins a `UDP_SEGMENT` train instead: one send per
            // train rather than one write per packet, and the receiver's `UDP_GRO`
            // takes the train in one receive (a third of the syscalls per packet of
            // 64-byte UDP). UDP super-packets (a pod's own UDP GSO) are segmented here.
            let via_tap = match vnet.gso_type {
                GsoType::None => !small_trains,
                GsoType::UdpL4 => false,
                _ => true,
            };
            let tap_sent = tap.as_ref().filter(|_| via_tap).map(|tap| {
                // Keep packet order: whatever waits for a socket goes first.
                train.flush(senders, ctx, log);
                batch.flush(senders, ctx, log);
                tap.send(&ctx.encap, slot, inner_len, &vnet, peer, outer_ident)
            });
            match tap_sent {
                None => {}
                Some(Ok(())) => {
                    ctx.metrics.tx_syscalls.fetch_add(1, Ordering::Relaxed);
                    ctx.metrics.tx.add(segments as u64, inner_len as u64);
                    continue;
                }
                // Longer than one outer header can say: segmented below.
                Some(Err(TapSendError::Encap(_) | TapSendError::Offload(_)))
                    if vnet.gso_type != GsoType::None => {}
                // The TAP is gone or broken: this packet and all after it take the
                // userspace path, which needs nothing but the sockets.
                Some(Err(TapSendError::Write(error))) if tap_is_broken(&error) => {
                    ctx.faults.report_tap_failed(format!(
                        "writing to {}: {error}",
                        super::tap_encap::DEVICE
                    ));
                    *tap = None;
                }
                Some(Err(error)) => {
                    tap_send_failed(ctx, log, &error);
                    continue;
                }
            }
            let inner = HEADROOM..HEADROOM + inner_len;
            if vnet.gso_type != GsoType::None {
                // Keep packet order: whatever is queued goes first.
                batch.flush(senders, ctx, log);
                let packet = &slot[inner];
                let sender = pick_sender(packet, senders.len());
                // A UDP tunnel's segments leave in UDP GSO trains; a raw IP tunnel's in
                // one sendmmsg batch.
                if ctx.encap.is_udp() {
                    train.add(senders, sender, ctx, log, packet, &vnet, peer);
                } else {
                    send_ipip_segments(
                        ctx,
                        senders,
                        packet,
                        &vnet,
                        peer,
                        &mut train.buffer,
                        batch,
                        log,
                    );
                }
                continue;
            }
            if small_trains {
                let sender = pick_sender(&slot[inner.clone()], senders.len());
                train.push(senders, sender, ctx, log, &slot[inner], &vnet, peer);
                continue;
            }
            train.flush(senders, ctx, log);
            if vnet.needs_csum() && gso::complete_checksum(&mut slot[inner.clone()], &vnet).is_err()
            {
                ctx.metrics.drop_packet(DropReason::TxMalformed);
                continue;
            }
            // UDP flows spread over the sending sockets; IPIP has one.
            let sender = if ctx.encap.is_udp() {
                pick_sender(&slot[inner.clone()], senders.len())
            } else {
                IPIP_RAW_SENDER
            };
            let written = ctx.encap.write_outer(slot, inner, &peer.vtep_mac, None);
            let Ok(datagram) = written else {
                // Longer than one datagram can carry (an MTU near 64 KB).
                ctx.metrics.drop_packet(DropReason::TxTooBig);
                continue;
            };
            batch.push(
                senders,
                ctx,
                log,
                &mut slot[datagram],
                peer.sockaddr,
                inner_len,
                sender,
            );
            slot_index = (slot_index + 1) % BATCH;
        }
        drop(peers);
        tally.flush(&ctx.metrics);
        train.flush(senders, ctx, log);
        batch.flush(senders, ctx, log);
        round
    }
}

/// What one transmit round read from TUN.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct TxRound {
    pub(super) packets: usize,
    pub(super) super_packets: usize,
    /// The TUN queue failed (device deleted): the worker must park.
    pub(super) tun_lost: bool,
}

impl TxRound {
    /// One ordinary packet: what a request (ping, RPC) looks like, not a bulk transfer.
    pub(super) fn is_lone_packet(&self) -> bool {
        self.packets == 1 && self.super_packets == 0
    }
}

/// VXLAN datagrams cut from TUN super-packets, waiting to leave in one `UDP_SEGMENT`
/// send. A 64 KB super-packet makes ~47 datagrams but one send carries at most ~44
/// (65,507 bytes): instead of sending the 3 left over as a runt (which costs the kernel
/// almost as much as the full send, on both nodes), they wait at the front of the
/// buffer for the next super-packet of the same peer. The train leaves when the TUN
/// queue runs dry, when another peer or packet comes, or when it ends in a short
/// datagram (only the last datagram of a send may be short).
struct Train {
    buffer: Vec<u8>,
    /// Datagrams waiting at `buffer[..len]`: `count` of them, all exactly `stride`
    /// long but the last, which may be shorter (and then ends the train).
    count: usize,
    stride: usize,
    len: usize,
    to: libc::sockaddr_in,
    sender: usize,
    pacer: SendPacer,
}

impl Train {
    fn new() -> Train {
        Train {
            buffer: vec![0u8; 4 * (MAX_INNER_PACKET + 1)],
            count: 0,
            stride: 0,
            len: 0,
            // SAFETY: all-zero is a valid sockaddr_in.
            to: unsafe { std::mem::zeroed() },
            sender: 0,
            pacer: SendPacer::default(),
        }
    }

    fn bound_for(&self, to: &libc::sockaddr_in, sender: usize) -> bool {
        self.to.sin_addr.s_addr == to.sin_addr.s_addr
            && self.to.sin_port == to.sin_port
            && self.sender == sender
    }

    /// Sends the waiting datagrams.
    fn flush(&mut self, senders: &[OwnedFd], ctx: &WorkerContext, log: &mut LogLimiter) {
        if self.count > 0 {
            let (count, end) = (self.count, self.len);
            send_train(
                &senders[self.sender],
                ctx,
                log,
                &mut self.pacer,
                &mut self.buffer[..end],
                self.stride,
                count,
                &self.to,
            );
            self.count = 0;
            self.len = 0;
        }
    }

    /// Segments `packet` behind the waiting datagrams, sends every full send's worth and
    /// keeps the rest waiting (or sends it too when it ends short).
    // The hot path passes its pieces (sockets, counters, buffers) separately so each
    // borrow stays disjoint; bundling them would only move the arguments into a struct.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        senders: &[OwnedFd],
        sender: usize,
        ctx: &WorkerContext,
        log: &mut LogLimiter,
        packet: &[u8],
        vnet: &VirtioNetRepr,
        peer: &PeerEntry,
    ) {
        if self.count > 0 && !self.bound_for(&peer.sockaddr, sender) {
            self.flush(senders, ctx, log);
        }
        let base = self.len;
        let Some(layout) = segment_or_drop(
            packet,
            vnet,
            &mut self.buffer[base..],
            VXLAN_OVERHEAD,
            ctx,
            log,
        ) else {
            return;
        };
        for i in 0..layout.count {
            let segment = layout.segment(i);
            let inner = base + segment.start..base + segment.end;
            let written = ctx
                .encap
                .write_outer(&mut self.buffer, inner, &peer.vtep_mac, None);
            if written.is_err() {
                // Segments longer than one datagram can carry (an MTU near 64 KB).
                ctx.metrics.drop_packet(DropReason::TxTooBig);
                return;
            }
        }
        let mut start = 0;
        if self.count > 0 && layout.stride != self.stride {
            self.flush(senders, ctx, log);
            start = base;
        }
        let stride = layout.stride;
        let end = base + layout.total().end;
        let mut count = self.count + layout.count;
        self.count = 0;
        self.len = 0;
        let per_send = (MAX_UDP_PAYLOAD / stride).clamp(1, MAX_GSO_SEGMENTS);
        let ends_short = layout.last_len < layout.segment_len;
        while count >= per_send || (count > 0 && ends_short) {
            let n = count.min(per_send);
            let chunk_end = (start + n * stride).min(end);
            send_train(
                &senders[sender],
                ctx,
                log,
                &mut self.pacer,
                &mut self.buffer[start..chunk_end],
                stride,
                n,
                &peer.sockaddr,
            );
            start += n * stride;
            count -= n;
        }
        if count > 0 {
            self.buffer.copy_within(start..start + count * stride, 0);
            self.count = count;
            self.stride = stride;
            self.len = count * stride;
            self.to = peer.sockaddr;
            self.sender = sender;
        }
    }

    /// Encapsulates one ordinary packet behind the waiting datagrams: a flow of
    /// equal-sized packets (64-byte UDP, a stream of ACKs) to one peer leaves in one
    /// `UDP_SEGMENT` send per [`MAX_GSO_SEGMENTS`] packets or per TUN round. A packet of
    /// another peer, socket or a larger size sends the train first; a smaller one ends
    /// it.
    // The hot path passes its pieces (sockets, counters, buffers) separately so each
    // borrow stays disjoint; bundling them would only move the arguments into a struct.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        senders: &[OwnedFd],
        sender: usize,
        ctx: &WorkerContext,
        log: &mut LogLimiter,
        packet: &[u8],
        vnet: &VirtioNetRepr,
        peer: &PeerEntry,
    ) {
        let stride = VXLAN_OVERHEAD + packet.len();
        if self.count > 0 && (!self.bound_for(&peer.sockaddr, sender) || stride > self.stride) {
            self.flush(senders, ctx, log);
        }
        let base = self.len;
        if base + stride > self.buffer.len() {
            self.flush(senders, ctx, log);
            return self.push(senders, sender, ctx, log, packet, vnet, peer);
        }
        let inner = base + VXLAN_OVERHEAD..base + stride;
        self.buffer[inner.clone()].copy_from_slice(packet);
        if gso::complete_checksum(&mut self.buffer[inner.clone()], vnet).is_err() {
            ctx.metrics.drop_packet(DropReason::TxMalformed);
            return;
        }
        if ctx
            .encap
            .write_outer(&mut self.buffer, inner, &peer.vtep_mac, None)
            .is_err()
        {
            // Longer than one datagram can carry (an MTU near 64 KB).
            ctx.metrics.drop_packet(DropReason::TxTooBig);
            return;
        }
        if self.count == 0 {
            self.stride = stride;
            self.to = peer.sockaddr;
            self.sender = sender;
        }
        self.count += 1;
        self.len = base + stride;
        let per_send = (MAX_UDP_PAYLOAD / self.stride).clamp(1, MAX_GSO_SEGMENTS);
        if stride < self.stride || self.count >= per_send {
            self.flush(senders, ctx, log);
        }
    }
}

/// Sends `count` datagrams of `stride` bytes (the last may be shorter) in one
/// `UDP_SEGMENT` send, counting them (all sent, or all dropped: one send, one verdict).
// The hot path passes its pieces (sockets, counters, buffers) separately so each
// borrow stays disjoint; bundling them would only move the arguments into a struct.
#[allow(clippy::too_many_arguments)]
fn send_train(
    socket: &OwnedFd,
    ctx: &WorkerContext,
    log: &mut LogLimiter,
    pacer: &mut SendPacer,
    datagrams: &mut [u8],
    stride: usize,
    count: usize,
    to: &libc::sockaddr_in,
) {
    let inner_bytes = (datagrams.len() - count * VXLAN_OVERHEAD) as u64;
    match send_segmented(socket, ctx, pacer, datagrams, stride, to) {
        Ok(()) => ctx.metrics.tx.add(count as u64, inner_bytes),
        Err(failure) => {
            for _ in 1..count {
                ctx.metrics.drop_packet(failure.0);
            }
            send_failed(ctx, log, &failure);
        }
    }
}

/// IPIP without the encapsulating TAP: a raw socket has no GSO for IP-in-IP, so the
/// segments of a super-packet leave in one `sendmmsg`, each its own packet.
// The hot path passes its pieces (sockets, counters, buffers) separately so each
// borrow stays disjoint; bundling them would only move the arguments into a struct.
#[allow(clippy::too_many_arguments)]
fn send_ipip_segments(
    ctx: &WorkerContext,
    senders: &[OwnedFd],
    packet: &[u8],
    vnet: &VirtioNetRepr,
    peer: &PeerEntry,
    segments: &mut [u8],
    batch: &mut SendBatch,
    log: &mut LogLimiter,
) {
    let Some(layout) = segment_or_drop(packet, vnet, segments, 0, ctx, log) else {
        return;
    };
    for i in 0..layout.count {
        let range = layout.segment(i);
        let len = range.len();
        batch.push(
            senders,
            ctx,
            log,
            &mut segments[range],
            peer.sockaddr,
            len,
            IPIP_RAW_SENDER,
        );
    }
    batch.flush(senders, ctx, log);
}

/// Whether a TAP write error means the TAP is gone or unusable (as opposed to one
/// packet it refused, or a moment of memory pressure).
fn tap_is_broken(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EBADFD | libc::EIO | libc::ENODEV | libc::ENXIO | libc::EPIPE)
    )
}

/// Counts (and logs, rate-limited) a packet the TAP did not take.
#[cold]
fn tap_send_failed(ctx: &WorkerContext, log: &mut LogLimiter, error: &TapSendError) {
    let reason = match error {
        TapSendError::Encap(_) => DropReason::TxTooBig,
        TapSendError::Offload(_) => DropReason::TxMalformed,
        TapSendError::Write(_) => DropReason::TxSendError,
    };
    ctx.metrics.drop_packet(reason);
    if let Some(suppressed) = log.allow() {
        tracing::warn!(%error, suppressed, "packet not sent through the TAP");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_packet(src_port: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        weft_proto::ipv4::Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 244, 1, 2),
            dst_addr: Ipv4Addr::new(10, 244, 2, 2),
            protocol: weft_proto::ipv4::protocol::TCP,
            payload_len: 20,
            ttl: 64,
            tos: 0,
            ident: 1,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut p[..]));
        let mut tcp = weft_proto::tcp::TcpPacket::new_unchecked(&mut p[20..]);
        tcp.set_src_port(src_port);
        tcp.set_dst_port(5201);
        p
    }

    #[test]
    fn flows_spread_over_senders_and_stay_put() {
        let picks: std::collections::HashSet<usize> = (40000..40064)
            .map(|port| pick_sender(&tcp_packet(port), 8))
            .collect();
        assert!(
            picks.len() >= 6,
            "64 flows over 8 sockets used only {picks:?}"
        );
        assert!(picks.iter().all(|&p| p < 8));
        let packet = tcp_packet(40001);
        assert_eq!(pick_sender(&packet, 8), pick_sender(&packet, 8));
        assert_eq!(pick_sender(&packet, 1), 0);
    }

    #[test]
    fn outer_ids_advance_by_the_wire_packets_each_packet_becomes() {
        let mut ident = OuterIdent { next: 100 };
        assert_eq!(ident.take(1), 100);
        // A super-packet of 45 segments: the kernel's GSO numbers them 101..=145.
        assert_eq!(ident.take(45), 101);
        assert_eq!(ident.take(1), 146);
        // Zero segments (cannot happen) still takes an ID, never the same one twice.
        assert_eq!(ident.take(0), 147);
        assert_eq!(ident.take(1), 148);
        // Wrapping: IDs are 16 bits.
        let mut ident = OuterIdent { next: u16::MAX - 1 };
        assert_eq!(ident.take(3), u16::MAX - 1);
        assert_eq!(ident.take(1), 1);
    }

    #[test]
    fn outer_ids_never_repeat_within_a_window_of_wire_packets() {
        // Mixed packets and super-packets: every wire packet's ID (first + i) is unique
        // among the last 65,536 wire packets.
        let mut ident = OuterIdent::random();
        let mut wire: Vec<u16> = Vec::new();
        for round in 0..6_000usize {
            let segments = [1, 45, 1, 1, 12, 64][round % 6];
            let first = ident.take(segments);
            wire.extend((0..segments).map(|i| first.wrapping_add(i as u16)));
        }
        for window in wire.windows(1 << 16).step_by(4_096).take(3) {
            let distinct: std::collections::HashSet<u16> = window.iter().copied().collect();
            assert_eq!(distinct.len(), window.len());
        }
        assert!(wire.len() > 1 << 16);
    }

    #[test]
    fn workers_start_their_ids_at_random() {
        let starts: std::collections::HashSet<u16> =
            (0..16).map(|_| OuterIdent::random().next).collect();
        assert!(starts.len() > 8, "16 workers started at {starts:?}");
    }
}
