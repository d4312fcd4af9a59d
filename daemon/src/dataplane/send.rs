//! Sends on the underlay sockets as a worker makes them: paced by [`SendPacer`] (a
//! full queue waited out for a bounded time, an error queue read on failure), counted
//! into the metrics, logged at most once a second. The syscalls are `batch`'s.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::batch::{self, SendQueue};
use super::io::{drain_error_queue, pause, wait_writable};
use super::pacer::{AfterSendError, SendPacer};
use super::worker::{LogLimiter, WorkerContext, BATCH};
use crate::metrics::{DropReason, Metrics};

/// Why a send gave up: the drop reason and the last error.
pub(super) type SendFailure = (DropReason, io::Error);

/// Calls `send` (one send syscall, returning what it returns) until it succeeds or
/// `pacer` gives up; `Ok` holds the syscall's result.
pub(super) fn send_paced(
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
pub(super) fn send_failed(
    ctx: &WorkerContext,
    log: &mut LogLimiter,
    (reason, error): &SendFailure,
) {
    ctx.metrics.drop_packet(*reason);
    if let Some(suppressed) = log.allow() {
        tracing::warn!(%error, reason = reason.name(), suppressed, "underlay send failed");
    }
}

/// Outgoing datagrams waiting for one `sendmmsg` from one of the sending sockets,
/// with what the counters need and the pacing of their sends.
pub(super) struct SendBatch {
    queue: SendQueue,
    /// Inner bytes per queued datagram (for the counters).
    inner_bytes: Vec<u64>,
    /// Which of the sending sockets the queued datagrams leave from.
    sender: usize,
    pacer: SendPacer,
}

impl SendBatch {
    pub(super) fn new() -> SendBatch {
        SendBatch {
            queue: SendQueue::new(),
            inner_bytes: vec![0; BATCH],
            sender: 0,
            pacer: SendPacer::default(),
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    /// Queues `datagram` (which must stay untouched until [`SendBatch::flush`]) for
    /// sending from socket `sender`; what is queued for another socket leaves first.
    // The hot path passes its pieces (sockets, counters, buffers) separately so each
    // borrow stays disjoint; bundling them would only move the arguments into a struct.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push(
        &mut self,
        senders: &[OwnedFd],
        ctx: &WorkerContext,
        log: &mut LogLimiter,
        datagram: &mut [u8],
        to: libc::sockaddr_in,
        inner_bytes: usize,
        sender: usize,
    ) {
        if self.is_full() || (self.queue.len() > 0 && self.sender != sender) {
            self.flush(senders, ctx, log);
        }
        self.sender = sender;
        self.inner_bytes[self.queue.len()] = inner_bytes as u64;
        self.queue.push(datagram, to);
    }

    /// Sends everything queued, skipping (and counting) datagrams the kernel refuses.
    pub(super) fn flush(&mut self, senders: &[OwnedFd], ctx: &WorkerContext, log: &mut LogLimiter) {
        let socket = &senders[self.sender];
        let count = self.queue.len();
        if count == 0 {
            return;
        }
        self.queue.prepare();
        let mut sent = 0;
        let (mut packets, mut bytes) = (0u64, 0u64);
        while sent < count {
            let queue = &mut self.queue;
            let result = send_paced(socket, ctx, &mut self.pacer, || {
                queue.send_from(socket.as_fd(), sent)
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
        self.queue.clear();
    }
}

/// One `sendmsg` with `UDP_SEGMENT` (paced by `pacer`): `datagrams` holds datagrams of
/// `stride` bytes each (the last may be shorter), all to `to`.
pub(super) fn send_segmented(
    socket: &OwnedFd,
    ctx: &WorkerContext,
    pacer: &mut SendPacer,
    datagrams: &mut [u8],
    stride: usize,
    to: &libc::sockaddr_in,
) -> Result<(), SendFailure> {
    send_paced(socket, ctx, pacer, || {
        batch::send_segmented(socket.as_fd(), datagrams, stride, to)
    })
    .map(|_| ())
}
