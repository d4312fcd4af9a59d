//! How long a worker stays awake for the reply to a request it just sent.
//!
//! A worker that woke for one lone packet from TUN (a ping, an RPC) and sent it can
//! catch the reply awake, which saves its next wake-up: tens of µs of round trip on a
//! virtual machine. But polling costs a CPU for as long as it lasts, and a reply that
//! takes longer than the wait (a slow server, a distant node) is not caught at all: a
//! fixed wait then burns its whole length on every request for nothing (0.6 ms of CPU
//! per exchange in the lab with a server answering after 1 ms, on both nodes, since
//! the server's answer is itself a lone packet).
//!
//! So the wait adapts to the replies this worker sees, the way the kernel's halt-polling
//! governor adapts its window to the wake-ups it sees: a wait that runs out halves the
//! next one (down to nothing), and a reply that comes within [`MAX_WAIT`] of its request,
//! caught or not, lets the wait grow to twice that delay. Pure logic over the instants
//! the worker passes in; no clock, no I/O.

use std::time::{Duration, Instant};

/// The longest a worker waits for a reply. Two underlay round trips in the lab; a
/// reply slower than this is not worth a core's polling.
pub const MAX_WAIT: Duration = Duration::from_micros(250);

/// Below this a wait is dropped altogether: the worker's ordinary spin after a packet
/// (`worker::SPIN_WINDOW`) covers as much.
pub const MIN_WAIT: Duration = Duration::from_micros(30);

/// How a wait for a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// A packet came while the worker waited.
    Answered,
    /// The wait ran out first; the next one is shorter.
    Expired,
}

/// One worker's reply wait: its current length and the request it is for.
#[derive(Debug, Clone)]
pub struct ReplyWait {
    window: Duration,
    /// When the last request left, until a packet comes back: the delay it learns from.
    sent_at: Option<Instant>,
    /// Until when the worker stays awake for that request's reply, while it does.
    deadline: Option<Instant>,
}

impl Default for ReplyWait {
    fn default() -> Self {
        ReplyWait::new()
    }
}

impl ReplyWait {
    /// Starts at [`MAX_WAIT`]: the first replies teach it nothing if it starts short.
    pub fn new() -> ReplyWait {
        ReplyWait {
            window: MAX_WAIT,
            sent_at: None,
            deadline: None,
        }
    }

    /// The current wait (zero: the worker does not wait for replies).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Until when the worker should stay awake, if it is waiting for a reply.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// A request left at `now`. A wait for an earlier request that is still running is
    /// replaced, neither answered nor expired.
    pub fn request_sent(&mut self, now: Instant) {
        self.sent_at = Some(now);
        self.deadline = (!self.window.is_zero()).then(|| now + self.window);
    }

    /// A packet came in at `now`: it ends a running wait (answered, or expired if its
    /// deadline had passed unnoticed) and, if it came within [`MAX_WAIT`] of the
    /// request, lets the wait grow to twice that delay.
    pub fn received(&mut self, now: Instant) -> Option<WaitEnd> {
        let end = self.deadline.take().map(|deadline| {
            if now <= deadline {
                WaitEnd::Answered
            } else {
                self.shrink();
                WaitEnd::Expired
            }
        });
        if let Some(sent_at) = self.sent_at.take() {
            let delay = now.saturating_duration_since(sent_at);
            if delay <= MAX_WAIT {
                self.window = self.window.max((delay * 2).clamp(MIN_WAIT, MAX_WAIT));
            }
        }
        end
    }

    /// Ends a wait whose deadline has passed by `now`; true if one did.
    pub fn expire_if_due(&mut self, now: Instant) -> bool {
        match self.deadline {
            Some(deadline) if now > deadline => {
                self.deadline = None;
                self.shrink();
                true
            }
            _ => false,
        }
    }

    fn shrink(&mut self) {
        self.window /= 2;
        if self.window < MIN_WAIT {
            self.window = Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// One exchange whose reply comes `delay` after the request, driven the way the
    /// worker drives it: expired at its deadline if the reply is later.
    fn exchange(wait: &mut ReplyWait, start: Instant, delay: Duration) -> Option<WaitEnd> {
        wait.request_sent(start);
        let reply = start + delay;
        if let Some(deadline) = wait.deadline() {
            if reply > deadline {
                assert!(wait.expire_if_due(deadline + us(1)));
                assert_eq!(wait.received(reply), None);
                return Some(WaitEnd::Expired);
            }
        }
        wait.received(reply)
    }

    #[test]
    fn quick_replies_keep_the_full_wait() {
        let mut wait = ReplyWait::new();
        let t0 = Instant::now();
        for i in 0..100 {
            let end = exchange(&mut wait, t0 + us(10_000) * i, us(90));
            assert_eq!(end, Some(WaitEnd::Answered));
        }
        assert_eq!(wait.window(), MAX_WAIT);
    }

    #[test]
    fn replies_slower_than_the_longest_wait_stop_the_waiting() {
        let mut wait = ReplyWait::new();
        let t0 = Instant::now();
        let mut expired = 0;
        for i in 0..100 {
            match exchange(&mut wait, t0 + us(10_000) * i, us(1_000)) {
                Some(WaitEnd::Expired) => expired += 1,
                Some(WaitEnd::Answered) => panic!("a 1 ms reply caught by a {MAX_WAIT:?} wait"),
                None => {}
            }
        }
        // 250 → 125 → 62.5 → 31.25 → 0 µs.
        assert_eq!(expired, 4);
        assert_eq!(wait.window(), Duration::ZERO);
        assert_eq!(wait.deadline(), None);
    }

    #[test]
    fn a_reply_within_the_longest_wait_brings_the_wait_back() {
        let mut wait = ReplyWait::new();
        let t0 = Instant::now();
        for i in 0..10 {
            exchange(&mut wait, t0 + us(10_000) * i, us(5_000));
        }
        assert_eq!(wait.window(), Duration::ZERO);
        // Not waited for (window 0), but seen 100 µs after its request.
        assert_eq!(exchange(&mut wait, t0 + us(200_000), us(100)), None);
        assert_eq!(wait.window(), us(200));
        assert_eq!(
            exchange(&mut wait, t0 + us(210_000), us(150)),
            Some(WaitEnd::Answered)
        );
        assert_eq!(wait.window(), MAX_WAIT);
    }

    #[test]
    fn an_occasional_slow_reply_costs_half_the_wait_once() {
        let mut wait = ReplyWait::new();
        let t0 = Instant::now();
        assert_eq!(exchange(&mut wait, t0, us(300)), Some(WaitEnd::Expired));
        assert_eq!(wait.window(), us(125));
        // The next quick one is caught, and the wait covers twice its delay again.
        assert_eq!(
            exchange(&mut wait, t0 + us(10_000), us(100)),
            Some(WaitEnd::Answered)
        );
        assert_eq!(wait.window(), us(200));
    }

    #[test]
    fn a_reply_noticed_after_the_deadline_counts_as_expired() {
        let mut wait = ReplyWait::new();
        let t0 = Instant::now();
        wait.request_sent(t0);
        // The worker was busy with other traffic past the deadline.
        assert_eq!(wait.received(t0 + us(260)), Some(WaitEnd::Expired));
        assert_eq!(wait.window(), us(125));
        assert!(!wait.expire_if_due(t0 + us(1_000)));
    }

    #[test]
    fn nothing_to_end_without_a_request() {
        let mut wait = ReplyWait::new();
        let t0 = Instant::now();
        assert_eq!(wait.received(t0), None);
        assert!(!wait.expire_if_due(t0 + us(1_000)));
        assert_eq!(wait.window(), MAX_WAIT);
    }
}
