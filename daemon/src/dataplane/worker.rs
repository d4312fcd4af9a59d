//! The hot path: one worker thread per TUN queue, for both directions.
//!
//! Plain OS threads doing non-blocking, batched syscalls, not async tasks: each thread
//! owns its buffers (allocated once, reused forever), batches its syscalls (`sendmmsg`,
//! `recvmmsg`), loads the peer table once per batch and never takes a lock, allocates
//! or hops a channel per packet. A thread sleeps only in `poll` (on its TUN queue, its
//! socket and the stop signal) after [`SPIN_WINDOW`] without traffic, and once the wait
//! for a request's reply ([`ReplyWait`]) is over.
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

use super::io::{
    control_data, drain_error_queue, pause, read_nonblocking, set_nonblocking, wait_readable,
    wait_writable, write_packet, StopSignal,
};
use super::packet::{
    accept_ipip, accept_vxlan, parse_inner_ipv4, rx_vnet_header, write_vxlan_headers, Accepted,
    HEADROOM, VXLAN_OVERHEAD,
};
use super::peers::{Encap, PeerEntry, PeerTable};
use super::repair::PlaneFaults;
use super::reply_wait::{self, ReplyWait, WaitEnd};
use super::tun::VNET_HDR_LEN;
use crate::lease::MacAddr;
use crate::metrics::{Direction, DropReason, Metrics, PeerTally};
use weft_proto::ipv4::OuterIpv4;
use weft_proto::udp::UdpChecksum;
use weft_proto::vnet::{GsoType, VirtioNetHdr, VirtioNetRepr};
use weft_proto::{flow, gso, ipip, vxlan};

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
    /// `--busy-poll`: the least time a worker polls after its last packet.
    pub busy_poll: Duration,
    /// Where workers report a lost TUN queue or a failed TAP (see `repair`).
    pub faults: Arc<PlaneFaults>,
}

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
}

/// The most a TAP frame puts before the inner packet: vnet header, Ethernet, VXLAN's
/// outer headers.
const TAP_PREFIX: usize = VNET_HDR_LEN + weft_proto::vxlan::HEADROOM;
const _: () = assert!(HEADROOM >= TAP_PREFIX);

/// Ports the outer UDP source port is chosen from, by inner flow: the kernel vxlan
/// device's default (the local ephemeral range).
const VXLAN_SRC_PORTS: (u16, u16) = (32_768, 61_000);

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
        let mut outer = OuterIpv4 {
            src_addr: self.local_ip,
            dst_addr: peer.public_ip,
            ttl: super::tap_encap::OUTER_TTL,
            tos: 0,
            // The kernel's GSO gives each wire packet cut from a super-packet the next
            // ID: they take as many as there are segments.
            ident: ident.take(vnet.segments(inner_len)),
            dont_frag: true,
        };
        let frame = match encap {
            Encap::Ipip => ipip::encap_frame(
                slot,
                HEADROOM,
                inner_len,
                &ipip::IpipFrame {
                    outer_src_mac: weft_proto::MacAddr(super::tap_encap::FRAME_SRC_MAC),
                    outer_dst_mac: weft_proto::MacAddr(super::tap_encap::FRAME_DST_MAC),
                    outer,
                },
            ),
            Encap::Vxlan {
                vni,
                port,
                local_mac,
            } => {
                // As the kernel's vxlan device: fragments allowed on the way.
                outer.dont_frag = false;
                let inner = &slot[HEADROOM..HEADROOM + inner_len];
                let src_port = flow::flow_src_port(inner, VXLAN_SRC_PORTS.0, VXLAN_SRC_PORTS.1);
                vxlan::encap_frame(
                    slot,
                    HEADROOM,
                    inner_len,
                    &vxlan::VxlanFrame {
                        encap: vxlan::VxlanEncap {
                            vni: *vni,
                            src_mac: weft_proto::MacAddr(*local_mac),
                            dst_mac: weft_proto::MacAddr(peer.vtep_mac),
                        },
                        outer_src_mac: weft_proto::MacAddr(super::tap_encap::FRAME_SRC_MAC),
                        outer_dst_mac: weft_proto::MacAddr(super::tap_encap::FRAME_DST_MAC),
                        outer,
                        src_port,
                        dst_port: *port,
                        udp_checksum: UdpChecksum::None,
                    },
                )
            }
        }
        .map_err(TapSendError::Encap)?;
        let prefix = (HEADROOM - frame.start) as u16;
        let mut moved = *vnet;
        if moved.gso_type != GsoType::None || moved.needs_csum() {
            moved.hdr_len = moved.hdr_len.saturating_add(prefix);
            moved.csum_start = moved.csum_start.saturating_add(prefix);
        }
        let start = frame.start - VNET_HDR_LEN;
        moved.emit(&mut VirtioNetHdr::new_unchecked(
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

/// How long one send waits for room in a full socket buffer (`EAGAIN`) or device queue
/// (`ENOBUFS`) before it drops the packet as `tx_socket_full`: a queue full for longer
/// than this means the underlay is overloaded or stuck, not busy, and the worker has
/// its receive half to serve meanwhile.
const TX_FULL_WAIT: Duration = Duration::from_millis(2);

/// One pause while a device's queue drains: `ENOBUFS` leaves nothing to poll for (the
/// socket has room, the qdisc behind it had none).
const TX_FULL_PAUSE: Duration = Duration::from_micros(100);

/// What a send path does after a send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterSendError {
    /// Interrupted by a signal: send again at once.
    Retry,
    /// The socket's buffer is full: poll for room up to this long, then send again.
    WaitWritable(Duration),
    /// The device's queue is full: pause this long, then send again.
    Pause(Duration),
    /// Some other error: read the socket's error queue (counting its reports), then ask
    /// [`SendPacer::after_drain`].
    Drain,
    /// Give up on this packet and count it.
    Drop(DropReason),
}

/// A worker's policy for failed sends, as plain state so it is tested without sockets.
///
/// * A full socket or device queue is waited out for up to [`TX_FULL_WAIT`] per send.
///   When that runs out, the underlay is taken as congested: later sends that find it
///   full are dropped at once, without waiting, until one succeeds. So an overloaded
///   underlay costs one syscall per packet, never a wait per packet, and the receive
///   half is never held up for more than one wait.
/// * Any other error may be an ICMP error for an earlier packet that the kernel
///   reports on this send (`IP_RECVERR` sets the socket's error): when the error queue
///   held reports, the send is tried once more; otherwise the packet is dropped.
#[derive(Debug, Default)]
struct SendPacer {
    /// Since when the current send has been waiting for room.
    full_since: Option<Instant>,
    /// A wait ran out and no send has succeeded since.
    congested: bool,
    /// The current send was already retried after a drain.
    retried: bool,
}

impl SendPacer {
    fn after_error(&mut self, errno: i32, now: Instant) -> AfterSendError {
        match errno {
            libc::EINTR => AfterSendError::Retry,
            libc::EAGAIN | libc::ENOBUFS => {
                if self.congested {
                    return self.give_up(DropReason::TxSocketFull);
                }
                let waited = now.saturating_duration_since(*self.full_since.get_or_insert(now));
                let Some(left) = TX_FULL_WAIT.checked_sub(waited).filter(|l| !l.is_zero()) else {
                    self.congested = true;
                    return self.give_up(DropReason::TxSocketFull);
                };
                if errno == libc::EAGAIN {
                    AfterSendError::WaitWritable(left)
                } else {
                    AfterSendError::Pause(left.min(TX_FULL_PAUSE))
                }
            }
            _ => AfterSendError::Drain,
        }
    }

    /// After [`AfterSendError::Drain`] read `reports` reports.
    fn after_drain(&mut self, reports: usize) -> AfterSendError {
        if reports > 0 && !self.retried {
            self.retried = true;
            AfterSendError::Retry
        } else {
            self.give_up(DropReason::TxSendError)
        }
    }

    /// The send succeeded: the underlay takes packets again.
    fn sent(&mut self) {
        self.congested = false;
        self.full_since = None;
        self.retried = false;
    }

    fn give_up(&mut self, reason: DropReason) -> AfterSendError {
        self.full_since = None;
        self.retried = false;
        AfterSendError::Drop(reason)
    }
}

/// Why a send gave up: the drop reason and the last error.
type SendFailure = (DropReason, io::Error);

/// Calls `send` (one send syscall, returning what it returns) until it succeeds or
/// `pacer` gives up; `Ok` holds the syscall's result.
fn send_paced(
    socket: &OwnedFd,
    ctx: &WorkerContext,
    pacer: &mut SendPacer,
    mut send: impl FnMut() -> isize,
) -> Result<usize, SendFailure> {
    loop {
        let rc = send();
        ctx.metrics.tx_syscalls.fetch_add(1, Ordering::Relaxed);
        if rc >= 0 {
            pacer.sent();
            return Ok(rc as usize);
        }
        let error = io::Error::last_os_error();
        let mut next = pacer.after_error(error.raw_os_error().unwrap_or(0), Instant::now());
        if next == AfterSendError::Drain {
            next = pacer.after_drain(drain_send_errors(socket, &ctx.metrics));
        }
        match next {
            AfterSendError::Retry => {}
            AfterSendError::WaitWritable(timeout) => {
                ctx.metrics.tx_full_waits.fetch_add(1, Ordering::Relaxed);
                wait_writable(socket.as_fd(), timeout);
            }
            AfterSendError::Pause(duration) => {
                ctx.metrics.tx_full_waits.fetch_add(1, Ordering::Relaxed);
                pause(duration);
            }
            AfterSendError::Drop(reason) => return Err((reason, error)),
            AfterSendError::Drain => unreachable!("after_drain decides"),
        }
    }
}

/// Reads `socket`'s error queue, counting each report; returns how many there were.
fn drain_send_errors(socket: &OwnedFd, metrics: &Metrics) -> usize {
    drain_error_queue(socket.as_fd(), |report| {
        if let Some(kind) = report {
            metrics.count_send_error_report(kind);
        }
    })
}

/// Reads and counts what waits in the sending sockets' error queues. A send reads its
/// socket's queue when it fails, but not every report fails a send (a raw socket's
/// sends never do), so the control task calls this periodically too: the counters stay
/// current and the queues empty even when no send fails.
pub fn drain_send_error_queues(senders: &[OwnedFd], metrics: &Metrics) {
    for socket in senders {
        drain_send_errors(socket, metrics);
    }
}

/// Counts (and logs, rate-limited) a packet a send gave up on.
#[cold]
fn send_failed(ctx: &WorkerContext, log: &mut LogLimiter, (reason, error): &SendFailure) {
    ctx.metrics.drop_packet(*reason);
    if let Some(suppressed) = log.allow() {
        tracing::warn!(%error, reason = reason.name(), suppressed, "underlay send failed");
    }
}

/// Outgoing datagrams waiting for one `sendmmsg`: pointers into buffers owned by the
/// transmit loop, rebuilt per batch, never reallocated.
struct SendBatch {
    addresses: Vec<libc::sockaddr_in>,
    iovecs: Vec<libc::iovec>,
    messages: Vec<libc::mmsghdr>,
    /// Inner bytes per queued datagram (for the counters).
    inner_bytes: Vec<u64>,
    len: usize,
    /// Which of the sending sockets the queued datagrams leave from.
    sender: usize,
    pacer: SendPacer,
}

impl SendBatch {
    fn new() -> SendBatch {
        SendBatch {
            // SAFETY: all-zero is a valid sockaddr_in.
            addresses: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                BATCH
            ],
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
            messages: vec![unsafe { std::mem::zeroed() }; BATCH],
            inner_bytes: vec![0; BATCH],
            len: 0,
            sender: 0,
            pacer: SendPacer::default(),
        }
    }

    fn is_full(&self) -> bool {
        self.len == BATCH
    }

    /// Queues `datagram` (which must stay untouched until [`SendBatch::flush`]) for
    /// sending from socket `sender`; what is queued for another socket leaves first.
    // The hot path passes its pieces (sockets, counters, buffers) separately so each
    // borrow stays disjoint; bundling them would only move the arguments into a struct.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        senders: &[OwnedFd],
        ctx: &WorkerContext,
        log: &mut LogLimiter,
        datagram: &mut [u8],
        to: libc::sockaddr_in,
        inner_bytes: usize,
        sender: usize,
    ) {
        if self.is_full() || (self.len > 0 && self.sender != sender) {
            self.flush(senders, ctx, log);
        }
        self.sender = sender;
        let n = self.len;
        self.addresses[n] = to;
        self.iovecs[n] = libc::iovec {
            iov_base: datagram.as_mut_ptr().cast(),
            iov_len: datagram.len(),
        };
        self.inner_bytes[n] = inner_bytes as u64;
        self.len += 1;
    }

    /// Sends everything queued, skipping (and counting) datagrams the kernel refuses.
    fn flush(&mut self, senders: &[OwnedFd], ctx: &WorkerContext, log: &mut LogLimiter) {
        let socket = &senders[self.sender];
        let count = self.len;
        if count == 0 {
            return;
        }
        for n in 0..count {
            let header = &mut self.messages[n].msg_hdr;
            header.msg_name = (&mut self.addresses[n] as *mut libc::sockaddr_in).cast();
            header.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            header.msg_iov = &mut self.iovecs[n];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
        }
        let mut sent = 0;
        let (mut packets, mut bytes) = (0u64, 0u64);
        while sent < count {
            let messages = &mut self.messages[sent..count];
            let result = send_paced(socket, ctx, &mut self.pacer, || {
                // SAFETY: `messages` point at live iovecs, addresses and buffers that the
                // caller keeps untouched until this call returns.
                unsafe {
                    libc::sendmmsg(
                        socket.as_raw_fd(),
                        messages.as_mut_ptr(),
                        messages.len() as libc::c_uint,
                        0,
                    ) as isize
                }
            });
            match result {
                Ok(n) => {
                    for bytes_of in &self.inner_bytes[sent..sent + n] {
                        packets += 1;
                        bytes += bytes_of;
                    }
                    sent += n;
                }
                Err(failure) => {
                    // The first message failed (a full queue, no route to that peer):
                    // skip it.
                    send_failed(ctx, log, &failure);
                    sent += 1;
                }
            }
        }
        ctx.metrics.tx.add(packets, bytes);
        self.len = 0;
    }
}

/// The `UDP_SEGMENT` control message, laid out as `CMSG_SPACE(2)` bytes: the header,
/// the 16-bit segment size at `CMSG_DATA` (the header is already 8-byte aligned), and
/// padding to the next alignment boundary.
#[repr(C)]
struct SegmentControl {
    header: libc::cmsghdr,
    size: u16,
    _pad: [u8; 6],
}

/// One `sendmsg` with `UDP_SEGMENT` (paced by `pacer`): `datagrams` holds `count`
/// datagrams of `stride` bytes each (the last may be shorter), all to `to`. The kernel
/// (or the NIC) cuts them; over veth the whole train stays one packet up to a receiver
/// with `UDP_GRO`.
fn send_segmented(
    socket: &OwnedFd,
    ctx: &WorkerContext,
    pacer: &mut SendPacer,
    datagrams: &mut [u8],
    stride: usize,
    to: &libc::sockaddr_in,
) -> Result<(), SendFailure> {
    let mut control = SegmentControl {
        header: libc::cmsghdr {
            cmsg_len: std::mem::offset_of!(SegmentControl, size) + 2,
            cmsg_level: libc::SOL_UDP,
            cmsg_type: libc::UDP_SEGMENT,
        },
        size: stride as u16,
        _pad: [0; 6],
    };
    let mut iovec = libc::iovec {
        iov_base: datagrams.as_mut_ptr().cast(),
        iov_len: datagrams.len(),
    };
    // SAFETY: all-zero is a valid msghdr.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_name = (to as *const libc::sockaddr_in).cast_mut().cast();
    message.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    message.msg_iov = &mut iovec;
    message.msg_iovlen = 1;
    if datagrams.len() > stride {
        message.msg_control = (&mut control as *mut SegmentControl).cast();
        message.msg_controllen = std::mem::size_of::<SegmentControl>();
    }
    send_paced(socket, ctx, pacer, || {
        // SAFETY: `message` points at live buffers (iovec, address, control).
        unsafe { libc::sendmsg(socket.as_raw_fd(), &message, 0) }
    })
    .map(|_| ())
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
const TX_SLOT_LEN: usize = HEADROOM + MAX_INNER_PACKET + VNET_HDR_LEN;

/// The transmit half of a queue worker: TUN queue → peers.
///
/// With TUN offloads on, a read returns either one ordinary packet (queued for the next
/// `sendmmsg`, its partial checksum completed if the kernel left one) or a TCP/UDP
/// super-packet of up to 64 KB: that one is cut into MTU-sized segments by
/// `weft_proto::gso::segment` straight into a buffer with VXLAN headroom before each,
/// and leaves in one `UDP_SEGMENT` send per 64 KB of datagrams (IPIP: one `sendmmsg`,
/// as a raw socket has no UDP GSO).
struct Transmitter {
    ctx: WorkerContext,
    tun: OwnedFd,
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
}

impl Transmitter {
    fn new(
        ctx: WorkerContext,
        tun: OwnedFd,
        senders: Arc<Vec<OwnedFd>>,
        tap: Option<TapQueue>,
    ) -> io::Result<Transmitter> {
        set_nonblocking(tun.as_fd())?;
        Ok(Transmitter {
            ctx,
            tun,
            senders,
            buffers: vec![0u8; TX_SLOT_LEN * BATCH],
            train: Train::new(),
            batch: SendBatch::new(),
            log: LogLimiter::new(),
            tally: PeerTally::new(Direction::Tx),
            tap,
            outer_ident: OuterIdent::random(),
        })
    }

    /// Reads and sends what the TUN queue holds (up to one batch), without blocking;
    /// says how much there was.
    fn pump(&mut self) -> TxRound {
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
        } = self;
        let ctx: &WorkerContext = ctx;
        let senders: &[OwnedFd] = senders;
        let mut slot_index = 0;
        let peers = ctx.peers.load();
        let mut round = TxRound::default();
        while !batch.is_full() {
            let slot = &mut buffers[slot_index * SLOT_LEN..(slot_index + 1) * SLOT_LEN];
            let read = match read_nonblocking(tun.as_fd(), &mut slot[HEADROOM - VNET_HDR_LEN..]) {
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
            if read < VNET_HDR_LEN {
                ctx.metrics.drop_packet(DropReason::TxMalformed);
                continue;
            }
            let (vnet_bytes, packet) = slot
                [HEADROOM - VNET_HDR_LEN..HEADROOM - VNET_HDR_LEN + read]
                .split_at_mut(VNET_HDR_LEN);
            let Ok(vnet) = VirtioNetRepr::parse(&VirtioNetHdr::new_unchecked(&*vnet_bytes)) else {
                ctx.metrics.drop_packet(DropReason::TxMalformed);
                continue;
            };
            let Some(inner) = parse_inner_ipv4(packet) else {
                // The overlay is IPv4 only: IPv6 the host sends into the device (router
                // solicitations, MLD) has no peer; anything else is malformed.
                let reason = if packet.first().is_some_and(|b| b >> 4 == 6) {
                    DropReason::TxNoPeer
                } else {
                    DropReason::TxMalformed
                };
                ctx.metrics.drop_packet(reason);
                continue;
            };
            let Some(peer) = peers.route(inner.dst) else {
                ctx.metrics.drop_packet(DropReason::TxNoPeer);
                continue;
            };
            let segments = vnet.segments(inner.len);
            tally.count(
                &ctx.metrics,
                peer.subnet,
                peer.public_ip,
                segments as u64,
                inner.len as u64,
            );
            if vnet.gso_type != GsoType::None {
                round.super_packets += 1;
            }
            let tap_sent = tap.as_ref().map(|tap| {
                // Keep packet order: whatever waits for a socket goes first.
                train.flush(senders, ctx, log);
                batch.flush(senders, ctx, log);
                tap.send(&ctx.encap, slot, inner.len, &vnet, peer, outer_ident)
            });
            match tap_sent {
                None => {}
                Some(Ok(())) => {
                    ctx.metrics.tx_syscalls.fetch_add(1, Ordering::Relaxed);
                    ctx.metrics.tx.add(segments as u64, inner.len as u64);
                    continue;
                }
                // Longer than one outer header can say: segmented below.
                Some(Err(TapSendError::Encap(_))) if vnet.gso_type != GsoType::None => {}
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
            let packet = &mut slot[HEADROOM..HEADROOM + inner.len];
            if vnet.gso_type != GsoType::None {
                // Keep packet order: whatever is queued goes first.
                batch.flush(senders, ctx, log);
                let packet = &packet[..inner.len];
                let sender = pick_sender(packet, senders.len());
                match &ctx.encap {
                    Encap::Vxlan { vni, local_mac, .. } => train.add(
                        senders, sender, ctx, log, packet, &vnet, peer, *vni, local_mac,
                    ),
                    Encap::Ipip => send_ipip_segments(
                        ctx,
                        senders,
                        packet,
                        &vnet,
                        peer,
                        &mut train.buffer,
                        batch,
                        log,
                    ),
                }
                continue;
            }
            train.flush(senders, ctx, log);
            if vnet.needs_csum() && gso::complete_checksum(&mut packet[..inner.len], &vnet).is_err()
            {
                ctx.metrics.drop_packet(DropReason::TxMalformed);
                continue;
            }
            let inner_range = HEADROOM..HEADROOM + inner.len;
            let (start, to, sender) = match &ctx.encap {
                Encap::Vxlan { vni, local_mac, .. } => {
                    let start = HEADROOM - VXLAN_OVERHEAD;
                    let headers: &mut [u8; VXLAN_OVERHEAD] = (&mut slot[start..HEADROOM])
                        .try_into()
                        .expect("headroom holds the VXLAN headers");
                    write_vxlan_headers(headers, *vni, local_mac, &peer.vtep_mac);
                    let sender = pick_sender(&slot[inner_range], senders.len());
                    (start, peer.sockaddr, sender)
                }
                Encap::Ipip => (HEADROOM, peer.sockaddr, IPIP_RAW_SENDER),
            };
            batch.push(
                senders,
                ctx,
                log,
                &mut slot[start..HEADROOM + inner.len],
                to,
                inner.len,
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
struct TxRound {
    packets: usize,
    super_packets: usize,
    /// The TUN queue failed (device deleted): the worker must park.
    tun_lost: bool,
}

impl TxRound {
    /// One ordinary packet: what a request (ping, RPC) looks like, not a bulk transfer.
    fn is_lone_packet(&self) -> bool {
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
    /// Datagrams waiting at `buffer[..count * stride]`, all exactly `stride` long.
    count: usize,
    stride: usize,
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
            let (count, end) = (self.count, self.count * self.stride);
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
        vni: u32,
        local_mac: &MacAddr,
    ) {
        if self.count > 0 && !self.bound_for(&peer.sockaddr, sender) {
            self.flush(senders, ctx, log);
        }
        let base = self.count * self.stride;
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
            let start = base + i * layout.stride;
            let headers: &mut [u8; VXLAN_OVERHEAD] = (&mut self.buffer
                [start..start + VXLAN_OVERHEAD])
                .try_into()
                .expect("segment headroom holds the VXLAN headers");
            write_vxlan_headers(headers, vni, local_mac, &peer.vtep_mac);
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
            self.to = peer.sockaddr;
            self.sender = sender;
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

/// Counts (and logs, rate-limited) an IPIP packet the TAP did not take.
#[cold]
fn tap_send_failed(ctx: &WorkerContext, log: &mut LogLimiter, error: &TapSendError) {
    let reason = match error {
        TapSendError::Encap(_) => DropReason::TxTooBig,
        TapSendError::Write(_) => DropReason::TxSendError,
    };
    ctx.metrics.drop_packet(reason);
    if let Some(suppressed) = log.allow() {
        tracing::warn!(%error, suppressed, "IPIP packet not sent");
    }
}

/// How many packets of at most the overlay MTU the packet behind `vnet` (a header from
/// [`rx_vnet_header`]) stands for: 1, or a super-packet's segment count.
fn wire_segments(vnet: &[u8; VNET_HDR_LEN], len: usize) -> u64 {
    VirtioNetRepr::parse(&VirtioNetHdr::new_unchecked(&vnet[..]))
        .map_or(1, |repr| repr.segments(len) as u64)
}

/// Control-message space per received datagram (one `UDP_GRO` int: CMSG_SPACE(4) = 24).
const RX_CONTROL_LEN: usize = 64;

/// Bytes per receive slot: the largest datagram, i.e. a 64 KB inner super-packet (a
/// peer kernel's GSO packet that crossed veth whole, see `rx_vnet_header`, or a
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
struct Receiver {
    ctx: WorkerContext,
    tun: OwnedFd,
    socket: Arc<OwnedFd>,
    // `iovecs` point into `buffers`, `messages` into `iovecs`, `addresses` and
    // `control`: all heap allocations made once and never resized, so the pointers
    // stay valid when the struct moves.
    buffers: Vec<u8>,
    addresses: Vec<libc::sockaddr_in>,
    control: Vec<u8>,
    _iovecs: Vec<libc::iovec>,
    messages: Vec<libc::mmsghdr>,
    coalescers: Coalescers,
    log: LogLimiter,
    tally: PeerTally,
}

impl Receiver {
    fn new(ctx: WorkerContext, tun: OwnedFd, socket: Arc<OwnedFd>) -> Receiver {
        let mut buffers = vec![0u8; RX_SLOT_LEN * BATCH];
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut addresses: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; BATCH];
        let control = vec![0u8; BATCH * RX_CONTROL_LEN];
        let mut iovecs: Vec<libc::iovec> = (0..BATCH)
            .map(|n| libc::iovec {
                iov_base: buffers[n * RX_SLOT_LEN..].as_mut_ptr().cast(),
                iov_len: RX_SLOT_LEN,
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
        Receiver {
            ctx,
            tun,
            socket,
            buffers,
            addresses,
            control,
            _iovecs: iovecs,
            messages,
            coalescers: Coalescers::new(),
            log: LogLimiter::new(),
            tally: PeerTally::new(Direction::Rx),
        }
    }

    /// Receives and delivers one batch without blocking; `false` when the socket had
    /// nothing (after writing out what was being coalesced: a train of segments often
    /// spans several receive calls, but nothing may wait while the worker sleeps).
    fn pump(&mut self) -> bool {
        let Receiver {
            ctx,
            tun,
            socket,
            buffers,
            addresses,
            control,
            _iovecs: _,
            messages,
            coalescers,
            log,
            tally,
        } = self;
        let ctx: &WorkerContext = ctx;
        for (n, message) in messages.iter_mut().enumerate() {
            message.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            message.msg_hdr.msg_control = control[n * RX_CONTROL_LEN..].as_mut_ptr().cast();
            message.msg_hdr.msg_controllen = RX_CONTROL_LEN;
            message.msg_len = 0;
        }
        // SAFETY: every message points at a live iovec/buffer/address/control area
        // owned by this struct; the kernel writes at most the given lengths.
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
        ctx.metrics.rx_syscalls.fetch_add(1, Ordering::Relaxed);
        let peers = ctx.peers.load();
        let mut out = RxOutput::new(tun, ctx, log, coalescers);
        for n in 0..rc as usize {
            let len = messages[n].msg_len as usize;
            let control_len = messages[n].msg_hdr.msg_controllen.min(RX_CONTROL_LEN);
            let gso_size = gro_size(&control[n * RX_CONTROL_LEN..n * RX_CONTROL_LEN + control_len]);
            let source = Ipv4Addr::from(u32::from_be(addresses[n].sin_addr.s_addr));
            let slot = &mut buffers[n * RX_SLOT_LEN..n * RX_SLOT_LEN + len.min(RX_SLOT_LEN)];
            // An empty datagram is judged (and counted) like any other, so this walks
            // at least one datagram, where `chunks_mut` would yield none.
            let stride = if gso_size == 0 {
                slot.len().max(1)
            } else {
                gso_size
            };
            let delivered_before = (out.packets, out.bytes);
            let mut start = 0;
            loop {
                let end = (start + stride).min(slot.len());
                let datagram = &mut slot[start..end];
                let verdict = match &ctx.encap {
                    Encap::Vxlan { vni, .. } => {
                        accept_vxlan(datagram, source, *vni, &ctx.own_subnet, &peers)
                    }
                    Encap::Ipip => accept_ipip(datagram, &ctx.own_subnet, &peers),
                };
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

/// How long a worker keeps polling its TUN queue and socket after the last packet
/// before it sleeps in `poll`. A request/response exchange (ping, RPC) often comes back
/// within this window; catching it awake saves a wake-up (tens of µs on a virtualised
/// machine). Each idle round yields the CPU, so a process the packet just woke (on 2
/// cores, often the one this worker runs on) is not kept waiting. Measured (weft-bench,
/// 2 cores): 30 µs cut the median RTT from ~265 to ~195 µs at equal throughput; longer
/// windows gained no RTT and cost throughput, busy spinning without yielding made both
/// worse.
const SPIN_WINDOW: Duration = Duration::from_micros(30);
const _: () = assert!(SPIN_WINDOW.as_nanos() == reply_wait::MIN_WAIT.as_nanos());

/// What a worker's transmit half is built from.
#[derive(Debug)]
pub struct TransmitSetup {
    pub ctx: WorkerContext,
    /// The worker's TUN queue.
    pub tun: OwnedFd,
    /// The underlay sockets (shared by all workers).
    pub senders: Arc<Vec<OwnedFd>>,
    /// The worker's queue of the encapsulating TAP, if the kernel encapsulates.
    pub tap: Option<TapQueue>,
}

/// A worker thread: moves packets TUN → underlay (`transmit`) and/or underlay → TUN
/// (`receive`). With both, one thread serves both directions of a queue, so a request
/// written to TUN and the reply the kernel queues right back (on the flow's TUN queue,
/// the one that wrote it) are handled without a hand-off to another thread. Returns
/// when the stop signal is raised.
pub fn run(
    stop: Arc<StopSignal>,
    transmit: Option<TransmitSetup>,
    receive: Option<(WorkerContext, OwnedFd, Arc<OwnedFd>)>,
) -> io::Result<()> {
    // Both halves share one context's settings and counters.
    let ctx = transmit
        .as_ref()
        .map(|setup| &setup.ctx)
        .or(receive.as_ref().map(|(ctx, ..)| ctx));
    let busy_poll = ctx.map_or(Duration::ZERO, |ctx| ctx.busy_poll);
    let metrics = ctx.map(|ctx| Arc::clone(&ctx.metrics));
    let mut transmitter = match transmit {
        Some(setup) => Some(Transmitter::new(
            setup.ctx,
            setup.tun,
            setup.senders,
            setup.tap,
        )?),
        None => None,
    };
    let mut receiver = receive.map(|(ctx, tun, socket)| Receiver::new(ctx, tun, socket));
    let mut last_busy = Instant::now();
    let spin_window = SPIN_WINDOW.max(busy_poll);
    // Whether the worker slept in `poll` since it last had work.
    let mut woke = true;
    // A request (a lone packet the worker woke up for) catches its reply awake if the
    // worker keeps polling until it comes; `ReplyWait` learns how long that is worth.
    let mut reply_wait = ReplyWait::new();
    // Since when the worker has been polling without work, if it is.
    let mut polling_since: Option<Instant> = None;
    let account_polling = |since: &mut Option<Instant>, now: Instant| {
        if let (Some(since), Some(metrics)) = (since.take(), metrics.as_ref()) {
            let polled = now.saturating_duration_since(since).as_nanos();
            metrics
                .worker_polling_ns
                .fetch_add(u64::try_from(polled).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    };
    let count_wait_end = |end: WaitEnd| {
        if let Some(metrics) = metrics.as_ref() {
            let counter = match end {
                WaitEnd::Answered => &metrics.reply_waits_answered,
                WaitEnd::Expired => &metrics.reply_waits_expired,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        let sent = match transmitter.as_mut() {
            Some(transmitter) => transmitter.pump(),
            None => TxRound::default(),
        };
        if sent.tun_lost {
            // Park until the control task rebuilds the plane (it stops this worker and
            // starts a new one on the new device): no descriptor but the stop signal.
            while wait_readable(None, None, &stop)? {}
            return Ok(());
        }
        let received = match receiver.as_mut() {
            Some(receiver) => receiver.pump(),
            None => false,
        };
        let now = Instant::now();
        if sent.packets > 0 || received {
            account_polling(&mut polling_since, now);
            if received {
                if let Some(end) = reply_wait.received(now) {
                    count_wait_end(end);
                }
            }
            if woke && !received && sent.is_lone_packet() {
                reply_wait.request_sent(now);
            }
            last_busy = now;
            woke = false;
            continue;
        }
        if reply_wait.expire_if_due(now) {
            count_wait_end(WaitEnd::Expired);
        }
        let awake_until = reply_wait
            .deadline()
            .map_or(last_busy + spin_window, |d| d.max(last_busy + spin_window));
        if now < awake_until {
            polling_since.get_or_insert(now);
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
            continue;
        }
        account_polling(&mut polling_since, now);
        let tun = transmitter.as_ref().map(|t| t.tun.as_fd());
        let socket = receiver.as_ref().map(|r| r.socket.as_fd());
        if !wait_readable(tun, socket, &stop)? {
            return Ok(());
        }
        woke = true;
        if let Some(metrics) = metrics.as_ref() {
            metrics.worker_wakeups.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The `UDP_GRO` segment size from a received message's control data (0 = none).
fn gro_size(control: &[u8]) -> usize {
    control_data(control, libc::SOL_UDP, libc::UDP_GRO, 4).map_or(0, |data| {
        let size = i32::from_ne_bytes(data[..4].try_into().expect("i32"));
        usize::try_from(size).unwrap_or(0)
    })
}

/// How many TCP flows are coalesced at once on one receive thread.
const COALESCE_FLOWS: usize = 8;

/// A TCP flow's identity: addresses and ports.
type FlowKey = [u8; 12];

/// The flow of an unfragmented IPv4/TCP packet.
fn tcp_flow(packet: &[u8]) -> Option<FlowKey> {
    let header_len = usize::from(packet.first()? & 0x0f) * 4;
    if packet.len() < header_len + 4
        || packet[9] != 6
        || u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0
    {
        return None;
    }
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&packet[12..20]);
    key[8..].copy_from_slice(&packet[header_len..header_len + 4]);
    Some(key)
}

/// One super-packet being built (`weft_proto::gso::TcpCoalescer`) in its own buffer.
struct CoalesceSlot {
    buffer: Vec<u8>,
    open: Option<(FlowKey, gso::TcpCoalescer)>,
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
                    buffer: vec![0u8; VNET_HDR_LEN + MAX_INNER_PACKET],
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
        if let Some(key) = tcp_flow(inner) {
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
                if let Ok(coalescer) = gso::TcpCoalescer::start(&mut slot.buffer, inner, true) {
                    slot.open = Some((key, coalescer));
                    self.packets += 1;
                    self.bytes += len as u64;
                    return;
                }
            }
        }
        // Not coalescable (not TCP with payload, a partial checksum, a peer kernel's
        // super-packet): write it alone, in place, behind its own vnet header.
        let start = offset - VNET_HDR_LEN;
        let vnet = rx_vnet_header(&mut datagram[offset..offset + len], self.ctx.mtu);
        datagram[start..offset].copy_from_slice(&vnet);
        // A whole super-packet counts as the segments it stands for, as on transmit.
        let segments = wire_segments(&vnet, len);
        self.packets += segments;
        self.bytes += len as u64;
        self.publish();
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

#[cfg(test)]
mod tests {
    use super::super::io::cmsg;
    use super::*;

    #[test]
    fn gro_size_is_found_among_control_messages() {
        assert_eq!(gro_size(&[]), 0);
        let gro = cmsg(libc::SOL_UDP, libc::UDP_GRO, &1472i32.to_ne_bytes());
        assert_eq!(gro_size(&gro), 1472);
        let mut two = cmsg(libc::SOL_IP, libc::IP_TOS, &[0; 4]);
        two.extend_from_slice(&gro);
        assert_eq!(gro_size(&two), 1472);
        // Truncated or lying lengths end the walk without panicking.
        assert_eq!(gro_size(&gro[..10]), 0);
        let mut lying = gro.clone();
        lying[..8].copy_from_slice(&999usize.to_ne_bytes());
        assert_eq!(gro_size(&lying), 0);
    }

    fn tcp_packet(src_port: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 2]);
        p[20..22].copy_from_slice(&src_port.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
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
    fn tcp_flow_keys_addresses_and_ports() {
        let a = tcp_packet(40000);
        let b = tcp_packet(40001);
        assert_eq!(tcp_flow(&a), tcp_flow(&a.clone()));
        assert_ne!(tcp_flow(&a), tcp_flow(&b));
        let mut udp = a.clone();
        udp[9] = 17;
        assert_eq!(tcp_flow(&udp), None);
        let mut fragment = a.clone();
        fragment[6] = 0x20; // more fragments
        assert_eq!(tcp_flow(&fragment), None);
        assert_eq!(tcp_flow(&a[..22]), None);
        assert_eq!(tcp_flow(&[]), None);
    }

    #[test]
    fn segment_control_matches_cmsg_macros() {
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(2) } as usize;
        // SAFETY: CMSG_LEN only computes a size.
        let len = unsafe { libc::CMSG_LEN(2) } as usize;
        assert_eq!(std::mem::size_of::<SegmentControl>(), space);
        assert_eq!(std::mem::offset_of!(SegmentControl, size) + 2, len);
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

    #[test]
    fn a_full_queue_is_waited_out_for_a_bounded_time_then_dropped_at_once() {
        let t0 = Instant::now();
        let mut pacer = SendPacer::default();
        // A full socket buffer: poll for room, for what is left of TX_FULL_WAIT.
        assert_eq!(
            pacer.after_error(libc::EAGAIN, t0),
            AfterSendError::WaitWritable(TX_FULL_WAIT)
        );
        let later = t0 + TX_FULL_WAIT / 4;
        assert_eq!(
            pacer.after_error(libc::EAGAIN, later),
            AfterSendError::WaitWritable(TX_FULL_WAIT - TX_FULL_WAIT / 4)
        );
        // A full device queue: short pauses within the same budget.
        assert_eq!(
            pacer.after_error(libc::ENOBUFS, later),
            AfterSendError::Pause(TX_FULL_PAUSE)
        );
        // The budget spent: dropped, and the underlay is congested.
        assert_eq!(
            pacer.after_error(libc::ENOBUFS, t0 + TX_FULL_WAIT),
            AfterSendError::Drop(DropReason::TxSocketFull)
        );
        // Congested: the next packets are dropped without a wait, however fresh.
        let t1 = t0 + TX_FULL_WAIT * 10;
        for errno in [libc::EAGAIN, libc::ENOBUFS, libc::EAGAIN] {
            assert_eq!(
                pacer.after_error(errno, t1),
                AfterSendError::Drop(DropReason::TxSocketFull)
            );
        }
        // One send went through: the next full queue is waited for again.
        pacer.sent();
        assert_eq!(
            pacer.after_error(libc::EAGAIN, t1),
            AfterSendError::WaitWritable(TX_FULL_WAIT)
        );
        // A success in between resets the budget of the send after it.
        pacer.sent();
        assert_eq!(
            pacer.after_error(libc::ENOBUFS, t1 + TX_FULL_WAIT * 3),
            AfterSendError::Pause(TX_FULL_PAUSE)
        );
    }

    #[test]
    fn other_errors_retry_once_only_when_the_error_queue_had_reports() {
        let now = Instant::now();
        let mut pacer = SendPacer::default();
        assert_eq!(pacer.after_error(libc::EINTR, now), AfterSendError::Retry);
        // No route: nothing in the error queue, so the error is this packet's.
        assert_eq!(
            pacer.after_error(libc::ENETUNREACH, now),
            AfterSendError::Drain
        );
        assert_eq!(
            pacer.after_drain(0),
            AfterSendError::Drop(DropReason::TxSendError)
        );
        // An earlier packet's ICMP error reported on this send: once more, then drop.
        assert_eq!(
            pacer.after_error(libc::EHOSTUNREACH, now),
            AfterSendError::Drain
        );
        assert_eq!(pacer.after_drain(1), AfterSendError::Retry);
        assert_eq!(
            pacer.after_error(libc::EHOSTUNREACH, now),
            AfterSendError::Drain
        );
        assert_eq!(
            pacer.after_drain(1),
            AfterSendError::Drop(DropReason::TxSendError)
        );
        // The next packet gets its own retry.
        assert_eq!(pacer.after_drain(2), AfterSendError::Retry);
        pacer.sent();
        assert_eq!(pacer.after_drain(1), AfterSendError::Retry);
    }

    #[test]
    fn a_super_packet_counts_as_its_segments() {
        let header = |gso_type, hdr_len, gso_size| {
            let mut bytes = [0u8; VNET_HDR_LEN];
            VirtioNetRepr {
                gso_type,
                hdr_len,
                gso_size,
                ..VirtioNetRepr::default()
            }
            .emit(&mut VirtioNetHdr::new_unchecked(&mut bytes[..]));
            bytes
        };
        assert_eq!(wire_segments(&header(GsoType::None, 0, 0), 1400), 1);
        let tso = header(GsoType::TcpV4, 52, 1398);
        assert_eq!(wire_segments(&tso, 52 + 3 * 1398), 3);
        assert_eq!(wire_segments(&tso, 52 + 3 * 1398 + 10), 4);
        assert_eq!(wire_segments(&header(GsoType::TcpV4, 52, 0), 9000), 1);
    }
}
