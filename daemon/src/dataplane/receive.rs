//! The receive half of a worker: underlay socket → validation → TUN queue, with
//! consecutive TCP segments of a flow coalesced into one super-packet per TUN write.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::batch::RecvQueue;
use super::io::write_packet;
use super::packet::{Accepted, VXLAN_OVERHEAD};
use super::worker::{LogLimiter, WorkerContext, MAX_INNER_PACKET};
use crate::metrics::{Direction, DropReason, PeerTally};
use weft_proto::gso::{self, FlowKey};
use weft_proto::ipv4::protocol;
use weft_proto::offload;
use weft_proto::udp_gro::{self, UdpCoalescer};
use weft_proto::vnet::{self, VirtioNetHdr};

/// Bytes per receive slot: the largest datagram, i.e. a 64 KB inner super-packet (a
/// peer kernel's GSO packet that crossed veth whole, see `weft_proto::offload`, or a
/// UDP_GRO train) plus encapsulation, with room for an outer IPv4 header with options
/// on the raw IPIP socket.
const RX_SLOT_LEN: usize = MAX_INNER_PACKET + VXLAN_OVERHEAD + 128;

/// The receive half of a queue worker: underlay socket → TUN queue.
///
/// With `UDP_GRO` on the VXLAN socket, one received buffer may hold a train of
/// datagrams of `gso_size` bytes each (a peer's `UDP_SEGMENT` send that crossed veth
/// whole). Each datagram is validated on its own; consecutive TCP segments of one flow
/// are coalesced (`weft_proto::gso::TcpCoalescer`) into one super-packet and written to
/// TUN with a GSO virtio-net header, so the kernel sees what it would have built with
/// GRO: one write per 64 KB instead of one per segment.
pub(super) struct Receiver {
    ctx: WorkerContext,
    tun: OwnedFd,
    pub(super) socket: Arc<OwnedFd>,
    queue: RecvQueue,
    coalescers: Coalescers,
    log: LogLimiter,
    tally: PeerTally,
}

impl Receiver {
    pub(super) fn new(ctx: WorkerContext, tun: OwnedFd, socket: Arc<OwnedFd>) -> Receiver {
        Receiver {
            ctx,
            tun,
            socket,
            queue: RecvQueue::new(RX_SLOT_LEN),
            coalescers: Coalescers::new(),
            log: LogLimiter::new(),
            tally: PeerTally::new(Direction::Rx),
        }
    }

    /// Receives and delivers one batch without blocking; `false` when the socket had
    /// nothing (after writing out what was being coalesced: a train of segments often
    /// spans several receive calls, but nothing may wait while the worker sleeps).
    pub(super) fn pump(&mut self) -> bool {
        let Receiver {
            ctx,
            tun,
            socket,
            queue,
            coalescers,
            log,
            tally,
        } = self;
        let ctx: &WorkerContext = ctx;
        let received = match queue.recv(socket.as_fd()) {
            Ok(received) => received,
            Err(error) => {
                RxOutput::new(tun, ctx, log, coalescers).flush();
                if !matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    if let Some(suppressed) = log.allow() {
                        tracing::warn!(%error, suppressed, "underlay receive failed");
                    }
                }
                return error.kind() == io::ErrorKind::Interrupted;
            }
        };
        ctx.metrics.rx_syscalls.fetch_add(1, Ordering::Relaxed);
        let peers = ctx.peers.load();
        let mut out = RxOutput::new(tun, ctx, log, coalescers);
        for n in 0..received {
            let (meta, slot) = queue.datagram(n);
            let source = meta.source;
            // An empty datagram is judged (and counted) like any other, so this walks
            // at least one datagram, where `chunks_mut` would yield none.
            let stride = if meta.stride == 0 {
                slot.len().max(1)
            } else {
                meta.stride
            };
            let delivered_before = (out.packets, out.bytes);
            let mut start = 0;
            loop {
                let end = (start + stride).min(slot.len());
                let datagram = &mut slot[start..end];
                let verdict = ctx.encap.accept(datagram, source, &ctx.own_subnet, &peers);
                match verdict {
                    Ok(accepted) => out.deliver(datagram, accepted),
                    Err(reason) => {
                        ctx.metrics.drop_packet(reason);
                        if let Some(suppressed) = out.log.allow() {
                            tracing::debug!(
                                reason = reason.name(),
                                suppressed,
                                "dropped received packet"
                            );
                        }
                    }
                }
                start = end;
                if start >= slot.len() {
                    break;
                }
            }
            if out.packets > delivered_before.0 {
                if let Some(subnet) = peers.subnet_of_public_ip(source) {
                    tally.count(
                        &ctx.metrics,
                        subnet,
                        source,
                        out.packets - delivered_before.0,
                        out.bytes - delivered_before.1,
                    );
                }
            }
        }
        tally.flush(&ctx.metrics);
        out.publish();
        true
    }
}

/// How many flows are coalesced at once on one receive thread.
const COALESCE_FLOWS: usize = 8;

/// A super-packet being built: TCP segments (`weft_proto::gso::TcpCoalescer`) or UDP
/// datagrams (`weft_proto::udp_gro::UdpCoalescer`) of one flow.
enum Coalescer {
    Tcp(gso::TcpCoalescer),
    Udp(UdpCoalescer),
}

impl Coalescer {
    fn try_append(&mut self, out: &mut [u8], packet: &[u8]) -> Result<(), gso::CoalesceReject> {
        match self {
            Coalescer::Tcp(c) => c.try_append(out, packet),
            Coalescer::Udp(c) => c.try_append(out, packet),
        }
    }

    fn finish(&self, out: &mut [u8]) -> std::ops::Range<usize> {
        match self {
            Coalescer::Tcp(c) => c.finish(out),
            Coalescer::Udp(c) => c.finish(out),
        }
    }
}

/// A flow as the coalescers key it: the transport protocol and the flow's addresses and
/// ports.
type CoalesceKey = (u8, FlowKey);

/// One super-packet being built in its own buffer.
struct CoalesceSlot {
    buffer: Vec<u8>,
    open: Option<(CoalesceKey, Coalescer)>,
}

/// Super-packets being built for up to [`COALESCE_FLOWS`] flows at once, so that
/// interleaved streams (`iperf3 -P 4`, several pods) still coalesce. They stay open
/// across receive calls and are written before the thread sleeps.
struct Coalescers {
    slots: Vec<CoalesceSlot>,
    /// The slot to reuse when all are busy.
    victim: usize,
}

impl Coalescers {
    fn new() -> Coalescers {
        Coalescers {
            slots: (0..COALESCE_FLOWS)
                .map(|_| CoalesceSlot {
                    buffer: vec![0u8; vnet::HEADER_LEN + MAX_INNER_PACKET],
                    open: None,
                })
                .collect(),
            victim: 0,
        }
    }
}

/// Where accepted inner packets go: into a super-packet of their flow, or written to
/// TUN one by one.
struct RxOutput<'a> {
    tun: &'a OwnedFd,
    ctx: &'a WorkerContext,
    log: &'a mut LogLimiter,
    coalescers: &'a mut Coalescers,
    packets: u64,
    bytes: u64,
    /// How much of `packets`/`bytes` is already in the metrics: counts are published
    /// before every TUN write, so a reader that saw the data arrive sees it counted.
    published: (u64, u64),
}

impl<'a> RxOutput<'a> {
    fn new(
        tun: &'a OwnedFd,
        ctx: &'a WorkerContext,
        log: &'a mut LogLimiter,
        coalescers: &'a mut Coalescers,
    ) -> RxOutput<'a> {
        RxOutput {
            tun,
            ctx,
            log,
            coalescers,
            packets: 0,
            bytes: 0,
            published: (0, 0),
        }
    }

    fn deliver(&mut self, datagram: &mut [u8], accepted: Accepted) {
        let Accepted { offset, len } = accepted;
        let inner = &datagram[offset..offset + len];
        let key = match FlowKey::of_tcp(inner) {
            Some(key) => Some((protocol::TCP, key)),
            None if self.ctx.udp_gro => udp_gro::flow_of(inner).map(|key| (protocol::UDP, key)),
            None => None,
        };
        if let Some(key) = key {
            // The flow's open super-packet, if any: continue it, or close it first so
            // that this packet never overtakes it.
            let same = self
                .coalescers
                .slots
                .iter()
                .position(|slot| slot.open.as_ref().is_some_and(|(k, _)| *k == key));
            if let Some(i) = same {
                let slot = &mut self.coalescers.slots[i];
                let (_, coalescer) = slot.open.as_mut().expect("slot is open");
                if coalescer.try_append(&mut slot.buffer, inner).is_ok() {
                    self.packets += 1;
                    self.bytes += len as u64;
                    return;
                }
                self.flush_slot(i);
            }
            if len <= self.ctx.mtu {
                let i = match same
                    .or_else(|| self.coalescers.slots.iter().position(|s| s.open.is_none()))
                {
                    Some(i) => i,
                    None => {
                        let i = self.coalescers.victim;
                        self.coalescers.victim = (i + 1) % self.coalescers.slots.len();
                        self.flush_slot(i);
                        i
                    }
                };
                let slot = &mut self.coalescers.slots[i];
                let started = if key.0 == protocol::TCP {
                    gso::TcpCoalescer::start(&mut slot.buffer, inner, true).map(Coalescer::Tcp)
                } else {
                    UdpCoalescer::start(&mut slot.buffer, inner, true).map(Coalescer::Udp)
                };
                if let Ok(coalescer) = started {
                    slot.open = Some((key, coalescer));
                    self.packets += 1;
                    self.bytes += len as u64;
                    return;
                }
            }
        }
        // Not coalescable (not TCP or UDP with payload, a partial checksum, a peer
        // kernel's super-packet): write it alone, in place, behind its own vnet header.
        let start = offset - vnet::HEADER_LEN;
        let vnet = offload::receive_header(&mut datagram[offset..offset + len], self.ctx.mtu);
        vnet.emit(&mut VirtioNetHdr::new_unchecked(
            &mut datagram[start..offset],
        ));
        // A whole super-packet counts as the segments it stands for, as on transmit.
        let segments = vnet.segments(len) as u64;
        self.packets += segments;
        self.bytes += len as u64;
        self.publish();
        self.ctx.metrics.tun_writes.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = write_packet(self.tun.as_fd(), &datagram[start..offset + len]) {
            // Counted as delivered just above: take it back.
            self.packets -= segments;
            self.bytes -= len as u64;
            self.published.0 -= segments;
            self.published.1 -= len as u64;
            let rx = &self.ctx.metrics.rx;
            rx.packets.fetch_sub(segments, Ordering::Relaxed);
            rx.bytes.fetch_sub(len as u64, Ordering::Relaxed);
            self.write_failed(&error);
        }
    }

    /// Writes every open super-packet (before sleeping).
    fn flush(&mut self) {
        for i in 0..self.coalescers.slots.len() {
            self.flush_slot(i);
        }
    }

    fn flush_slot(&mut self, i: usize) {
        let slot = &mut self.coalescers.slots[i];
        if let Some((_, coalescer)) = slot.open.take() {
            let range = coalescer.finish(&mut slot.buffer);
            self.publish();
            let slot = &mut self.coalescers.slots[i];
            self.ctx.metrics.tun_writes.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = write_packet(self.tun.as_fd(), &slot.buffer[range]) {
                self.write_failed(&error);
            }
        }
    }

    /// Adds what was delivered since the last call to the metrics.
    fn publish(&mut self) {
        let (packets, bytes) = self.published;
        if self.packets > packets {
            self.ctx
                .metrics
                .rx
                .add(self.packets - packets, self.bytes - bytes);
        }
        self.published = (self.packets, self.bytes);
    }

    fn write_failed(&mut self, error: &io::Error) {
        self.ctx.metrics.drop_packet(DropReason::RxTunWrite);
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(%error, suppressed, "TUN write failed");
        }
    }
}
