//! The hot path: one worker thread per TUN queue, for both directions.
//!
//! Plain OS threads doing non-blocking, batched syscalls, not async tasks: each thread
//! owns its buffers (allocated once, reused forever), batches its syscalls (`sendmmsg`,
//! `recvmmsg`), loads the peer table once per batch and never takes a lock, allocates
//! or hops a channel per packet. A thread sleeps only in `poll` (on its TUN queue, its
//! socket and the stop signal) after [`SPIN_WINDOW`] without traffic, and once the wait
//! for a request's reply ([`ReplyWait`]) is over.
//!
//! This module is the loop and what it shares: [`WorkerContext`], [`run`] (pump both
//! halves, poll briefly, wait for a reply, sleep in `poll`), [`LogLimiter`]. The halves
//! are `transmit` (TUN → peers) and `receive` (sockets → TUN); their sends are paced in
//! `send` (policy in `pacer`), and `batch` makes the batched socket syscalls.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::Ipv4Net;

use super::io::{wait_readable, StopSignal};
use super::peers::{Encap, PeerTable};
use super::receive::Receiver;
use super::repair::PlaneFaults;
use super::reply_wait::{self, ReplyWait, WaitEnd};
use super::transmit::{Transmitter, TxRound};
use crate::metrics::Metrics;

pub use super::send::drain_send_error_queues;
pub use super::transmit::TapQueue;

/// Packets per `sendmmsg`/`recvmmsg`.
pub const BATCH: usize = 64;

/// Largest IPv4 packet.
pub(super) const MAX_INNER_PACKET: usize = 65_535;

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
    /// Whether received UDP datagrams of a flow are written to TUN as one
    /// `GSO_UDP_L4` super-packet (`weft_proto::udp_gro`): the kernel takes those
    /// writes from Linux 6.2, the release whose TUN accepts `TUN_F_USO4`.
    pub udp_gro: bool,
}

/// Logs at most once per second per call site owner, counting what it held back.
#[derive(Debug)]
pub(super) struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub(super) fn new() -> LogLimiter {
        LogLimiter {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(number suppressed since the last log)` when a log line may be written now.
    pub(super) fn allow(&mut self) -> Option<u64> {
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

/// What a worker's receive half is built from.
#[derive(Debug)]
pub struct ReceiveSetup {
    pub ctx: WorkerContext,
    /// The worker's TUN queue.
    pub tun: OwnedFd,
    /// The worker's underlay socket.
    pub socket: Arc<OwnedFd>,
}

/// A worker thread: moves packets TUN → underlay (`transmit`) and/or underlay → TUN
/// (`receive`). With both, one thread serves both directions of a queue, so a request
/// written to TUN and the reply the kernel queues right back (on the flow's TUN queue,
/// the one that wrote it) are handled without a hand-off to another thread. Returns
/// when the stop signal is raised.
pub fn run(
    stop: Arc<StopSignal>,
    transmit: Option<TransmitSetup>,
    receive: Option<ReceiveSetup>,
    mut priority: Option<super::express::Priority>,
) -> io::Result<()> {
    // Both halves share one context's settings and counters.
    let ctx = transmit
        .as_ref()
        .map(|setup| &setup.ctx)
        .or(receive.as_ref().map(|setup| &setup.ctx));
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
    let mut receiver = receive.map(|setup| Receiver::new(setup.ctx, setup.tun, setup.socket));
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
        // Only the express worker's priority needs a round's length.
        let round_start = priority.is_some().then(Instant::now);
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
            if let (Some(priority), Some(start)) = (priority.as_mut(), round_start) {
                priority.worked(start, now);
            }
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
        if let Some(priority) = priority.as_mut() {
            priority.sleeping();
        }
        if !wait_readable(tun, socket, &stop)? {
            return Ok(());
        }
        woke = true;
        if let Some(metrics) = metrics.as_ref() {
            metrics.worker_wakeups.fetch_add(1, Ordering::Relaxed);
        }
    }
}
