//! The express lane: one more worker, with its own TUN queue and its own VXLAN socket,
//! that carries the small packets (pings, pure ACKs, requests and replies of up to
//! [`EXPRESS_MAX_INNER`] bytes) in both directions.
//!
//! Why: on a busy node a bulk flow keeps its worker busy, and that worker's queues are
//! FIFOs. A light flow's request waited behind super-packets in the worker's TUN queue
//! (TUN orphans what it queues, so TCP small queues do not bound a bulk flow there, and
//! this kernel has no fair-queueing qdisc), its reply behind megabytes of GRO trains in
//! the worker's socket, and behind the worker itself while it wrote bulk: about 2 ms of
//! a 2.5 ms round trip beside 6 bulk streams in the lab, against 0.13 ms idle. The
//! kernel's vxlan has none of these queues. With the lane, small packets go to a worker
//! that is asleep almost always and so wakes at once: steering by size, the way a
//! fair-queueing scheduler serves sparse flows first.
//!
//! Two programs do the steering, both without maps or state:
//! * [`tun_steering`] on the TUN device (`TUNSETSTEERINGEBPF`): a packet of at most
//!   [`EXPRESS_MAX_INNER`] bytes goes to the express queue, any other to a worker by a
//!   hash of its flow (replacing TUN's own flow steering, which would send a flow to the
//!   queue that last wrote one of its packets: the express queue, for a bulk flow's
//!   ACKs);
//! * [`reuseport_steering`] on the VXLAN sockets' reuseport group: a datagram whose
//!   inner packet is at most [`EXPRESS_MAX_INNER`] bytes goes to the express socket
//!   (with a GRO train of them), any other to a worker by its outer source port, which
//!   follows the inner flow.
//!
//! A flow whose packets are of both kinds can be reordered between the lane and its
//! worker (a short tail segment overtaking the super-packet before it); TCP takes that
//! as reordering, not loss. `--express-lane=false` turns the lane off; without the
//! programs (a kernel refusing them) there is no lane, and `/v1/status` says so
//! (`offloads.express_lane`).

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use socket2::SockFilter;

use super::io;
use weft_bpf::{self as bpf, Insn, Size, R0, R1, R6, R7};

/// The largest inner IPv4 packet that takes the express lane: a ping, a pure ACK (with
/// SACK blocks), a small request or reply. Bulk segments are MTU-sized or super-packets.
pub const EXPRESS_MAX_INNER: u32 = 256;

/// How the express worker runs ahead of everything else on the node while it carries
/// sparse traffic: nice -20, the closest a thread comes to the softirq in which the
/// kernel's vxlan does this work. Measured beside 6 bulk streams on 2 CPUs: at nice 0 a
/// woken express worker still waited a scheduler slice behind the busy bulk workers
/// (0.7 ms per hop at the median); at -10, 30–45 µs; at -20, 16–34 µs, with the 90th
/// percentile cut from ms to ~0.1 ms.
pub const EXPRESS_NICE: libc::c_int = -20;

/// The share of its time the express worker may spend working before it counts as
/// flooded (see [`Priority`]).
const FLOODED_SHARE: f64 = 0.5;
/// The window over which that share is judged.
const PRIORITY_WINDOW: Duration = Duration::from_millis(2);

/// The express worker's priority, governed by how busy it is, the way a fair-queueing
/// scheduler serves a flow first only while it stays sparse. Small packets that come
/// as a flood (64-byte UDP at full rate) would otherwise have a nice -20 worker preempt
/// their sender for every packet and carry each alone: one send, one TUN write, one
/// wake-up apiece, at a third of the throughput. So a worker busy more than half of a
/// 2 ms window drops to the workers' nice 0 (and batches like them); it goes back to
/// [`EXPRESS_NICE`] once it has slept. Two `setpriority` calls per change, none per
/// packet.
#[derive(Debug)]
pub struct Priority {
    raised: bool,
    window_start: Instant,
    busy: Duration,
}

impl Priority {
    /// Raises the calling thread (the express worker) to [`EXPRESS_NICE`]; without the
    /// privilege (`CAP_SYS_NICE`) it says so once and the lane runs at the default.
    pub fn raise() -> Option<Priority> {
        if let Err(error) = set_nice(EXPRESS_NICE) {
            tracing::warn!(%error, nice = EXPRESS_NICE, "the express worker runs at the default priority");
            return None;
        }
        Some(Priority {
            raised: true,
            window_start: Instant::now(),
            busy: Duration::ZERO,
        })
    }

    /// A round that did work, from `start` to `now`.
    pub fn worked(&mut self, start: Instant, now: Instant) {
        self.busy += now.saturating_duration_since(start);
        let window = now.saturating_duration_since(self.window_start);
        if window < PRIORITY_WINDOW {
            return;
        }
        if self.raised && self.busy.as_secs_f64() > window.as_secs_f64() * FLOODED_SHARE {
            self.raised = set_nice(0).is_err();
        }
        self.window_start = now;
        self.busy = Duration::ZERO;
    }

    /// The worker is about to sleep: it is sparse again.
    pub fn sleeping(&mut self) {
        if !self.raised {
            self.raised = set_nice(EXPRESS_NICE).is_ok();
        }
        self.window_start = Instant::now();
        self.busy = Duration::ZERO;
    }
}

fn set_nice(nice: libc::c_int) -> std::io::Result<()> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority on our own thread id; no memory is passed.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The TUN device's queue selector for `workers` worker queues and the express queue
/// after them (index `workers`). TUN hands it the packet from its IPv4 header on and
/// takes its result modulo the number of queues. A packet of at most
/// [`EXPRESS_MAX_INNER`] bytes takes the express queue unless it is a TCP segment
/// without payload (a pure ACK); any other packet a worker by the inner flow hash of
/// `io::inner_flow_hash` (the same hash, so the worker that receives a flow's data is
/// the one that sends its ACKs, in the same rounds, as TUN's own steering had it).
/// Pure ACKs stay with their flow's worker for that reason: on the express worker each
/// ACK of a bulk flow cost a wake-up and a preemption, and halved a TCP stream.
pub fn tun_steering(workers: u32) -> Vec<Insn> {
    const LEN: i16 = 0; // struct __sk_buff: len
    let workers = workers.max(1) as i32;
    vec![
        /* 0 */ bpf::mov_reg(R6, R1), // the legacy packet loads take the context in r6
        /* 1 */ bpf::load(Size::W, R0, R1, LEN),
        /* 2 */ bpf::jgt_imm(R0, EXPRESS_MAX_INNER as i32, 16), // → 19, by flow
        /* 3 */ bpf::load_abs(Size::B, 9), // protocol
        /* 4 */ bpf::jne_imm(R0, 6, 12), // → 17, express
        /* 5 */ bpf::load_abs(Size::B, 0),
        /* 6 */ bpf::and_imm(R0, 0xf),
        /* 7 */ bpf::lsh_imm(R0, 2),
        /* 8 */ bpf::mov_reg(R7, R0), // IPv4 header length
        /* 9 */ bpf::load_ind(Size::B, R7, 12),
        /* 10 */ bpf::rsh_imm(R0, 4),
        /* 11 */ bpf::lsh_imm(R0, 2), // TCP header length
        /* 12 */ bpf::add_reg(R0, R7),
        /* 13 */ bpf::mov_reg(R7, R0),
        /* 14 */ bpf::load(Size::W, R0, R6, LEN),
        /* 15 */ bpf::sub_reg(R0, R7), // TCP payload
        /* 16 */ bpf::jeq_imm(R0, 0, 2), // → 19, a pure ACK goes by flow
        /* 17 */ bpf::mov_imm(R0, workers),
        /* 18 */ bpf::exit(),
        /* 19 */ bpf::load_abs(Size::W, 12), // source address
        /* 20 */ bpf::mov_reg(R7, R0),
        /* 21 */ bpf::load_abs(Size::W, 16), // destination address
        /* 22 */ bpf::xor_reg(R7, R0),
        /* 23 */ bpf::load_abs(Size::B, 9),
        /* 24 */ bpf::jeq_imm(R0, 6, 1),
        /* 25 */ bpf::jne_imm(R0, 17, 2),
        /* 26 */ bpf::load_abs(Size::W, 20), // ports
        /* 27 */ bpf::xor_reg(R7, R0),
        /* 28 */ bpf::mov_reg(R0, R7),
        /* 29 */ bpf::rsh_imm(R0, 16),
        /* 30 */ bpf::xor_reg(R0, R7),
        /* 31 */ bpf::and_imm(R0, 0xffff),
        /* 32 */ bpf::mod_imm(R0, workers),
        /* 33 */ bpf::exit(),
    ]
}

/// Loads [`tun_steering`] for `workers` worker queues.
pub fn load_tun_steering(workers: u32) -> Result<OwnedFd, bpf::BpfError> {
    bpf::load_socket_filter("weft_tun_steer", &tun_steering(workers))
}

/// Classic BPF for the VXLAN reuseport group: `workers` sockets (indices
/// `0..workers`), then the express socket (index `workers`). A datagram whose (first)
/// inner packet is at most [`EXPRESS_MAX_INNER`] bytes long, and not a TCP segment
/// without payload, goes to the express socket; any other to its worker by
/// `io::inner_flow_hash` (as [`tun_steering`] picks it). It judges the first inner
/// packet, not the buffer: a GRO train of small datagrams (a UDP flow's) takes the lane
/// like the same flow's lone datagrams, so the flow is never split between two workers
/// and reordered, and a TCP train (equal segments) goes by its segment size. The
/// program sees the skb after the UDP header (offset 0 is the VXLAN header); a datagram
/// too short for what it reads ends it with 0, the first worker's socket.
pub fn reuseport_steering(workers: u32) -> Vec<SockFilter> {
    const LD_H_ABS: u16 = 0x28;
    const LD_B_ABS: u16 = 0x30;
    const LD_B_IND: u16 = 0x50;
    const LDX_MSH: u16 = 0xb1;
    const LDX_MEM: u16 = 0x61;
    const ST: u16 = 0x02;
    const RSH_K: u16 = 0x74;
    const LSH_K: u16 = 0x64;
    const ADD_X: u16 = 0x0c;
    const SUB_X: u16 = 0x1c;
    const JGT_K: u16 = 0x25;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const RET_A: u16 = 0x16;
    const INNER: u32 = 8 + 14; // VXLAN, Ethernet
    let op = SockFilter::new;
    let mut program = vec![
        /* 0 */ op(LD_H_ABS, 0, 0, INNER + 2), // total length
        /* 1 */ op(JGT_K, 13, 0, EXPRESS_MAX_INNER), // → 15, by flow
        /* 2 */ op(LD_B_ABS, 0, 0, INNER + 9), // protocol
        /* 3 */ op(JEQ_K, 0, 10, 6), // not TCP → 14, express
        /* 4 */ op(LDX_MSH, 0, 0, INNER), // X = IPv4 header length
        /* 5 */ op(LD_B_IND, 0, 0, INNER + 12),
        /* 6 */ op(RSH_K, 0, 0, 4),
        /* 7 */ op(LSH_K, 0, 0, 2), // TCP header length
        /* 8 */ op(ADD_X, 0, 0, 0),
        /* 9 */ op(ST, 0, 0, 0), // M[0] = both headers
        /* 10 */ op(LD_H_ABS, 0, 0, INNER + 2),
        /* 11 */ op(LDX_MEM, 0, 0, 0),
        /* 12 */ op(SUB_X, 0, 0, 0), // TCP payload
        /* 13 */ op(JEQ_K, 1, 0, 0), // a pure ACK → 15, by flow
        /* 14 */ op(RET_K, 0, 0, workers),
    ];
    /* 15 */
    program.extend(io::inner_flow_hash(INNER, workers));
    program.push(op(RET_A, 0, 0, 0));
    program
}
