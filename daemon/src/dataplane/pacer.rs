//! What a send does after it failed: [`SendPacer`], a pure state machine (no sockets,
//! no clock of its own), so the policy is unit-tested with plain values.

use std::time::{Duration, Instant};

use crate::metrics::DropReason;

/// How long one send waits for room in a full socket buffer (`EAGAIN`) or device queue
/// (`ENOBUFS`) before it drops the packet as `tx_socket_full`: a queue full for longer
/// than this means the underlay is overloaded or stuck, not busy, and the worker has
/// its receive half to serve meanwhile.
pub(super) const TX_FULL_WAIT: Duration = Duration::from_millis(2);

/// One pause while a device's queue drains: `ENOBUFS` leaves nothing to poll for (the
/// socket has room, the qdisc behind it had none).
pub(super) const TX_FULL_PAUSE: Duration = Duration::from_micros(100);

/// What a send path does after a send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterSendError {
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
pub(super) struct SendPacer {
    /// Since when the current send has been waiting for room.
    full_since: Option<Instant>,
    /// A wait ran out and no send has succeeded since.
    congested: bool,
    /// The current send was already retried after a drain.
    retried: bool,
}

impl SendPacer {
    pub(super) fn after_error(&mut self, errno: i32, now: Instant) -> AfterSendError {
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
    pub(super) fn after_drain(&mut self, reports: usize) -> AfterSendError {
        if reports > 0 && !self.retried {
            self.retried = true;
            AfterSendError::Retry
        } else {
            self.give_up(DropReason::TxSendError)
        }
    }

    /// The send succeeded: the underlay takes packets again.
    pub(super) fn sent(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
