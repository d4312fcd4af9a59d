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

use socket2::SockFilter;
use weft_bpf::{self as bpf, Insn, Size, R0, R1, R6, R7};

/// The largest inner IPv4 packet that takes the express lane: a ping, a pure ACK (with
/// SACK blocks), a small request or reply. Bulk segments are MTU-sized or super-packets.
pub const EXPRESS_MAX_INNER: u32 = 256;

/// How the express worker runs ahead of everything else on the node: nice -20, the
/// closest a thread comes to the softirq in which the kernel's vxlan does this work.
/// Measured beside 6 bulk streams on 2 CPUs: at nice 0 a woken express worker still
/// waited a scheduler slice behind the busy bulk workers (0.7 ms per hop at the median);
/// at -10, 30–45 µs; at -20, 16–34 µs, with the 90th percentile cut from ms to ~0.1 ms.
/// It only ever carries small packets and sleeps when there are none.
pub const EXPRESS_NICE: libc::c_int = -20;

/// Raises the calling thread (the express worker) to [`EXPRESS_NICE`]; without the
/// privilege (`CAP_SYS_NICE`) it says so once and runs at the default.
pub fn raise_priority() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority on our own thread id; no memory is passed.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, EXPRESS_NICE) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        tracing::warn!(%error, nice = EXPRESS_NICE, "the express worker runs at the default priority");
    }
}

/// The TUN device's queue selector for `workers` worker queues and the express queue
/// after them (index `workers`). TUN hands it the packet from its IPv4 header on and
/// takes its result modulo the number of queues. The flow hash covers the addresses
/// and, for TCP and UDP, the ports (assuming a 20-byte IPv4 header: options only make
/// it hash other bytes, the same ones for every packet of a flow).
pub fn tun_steering(workers: u32) -> Vec<Insn> {
    const LEN: i16 = 0; // struct __sk_buff: len
    let workers = workers.max(1) as i32;
    vec![
        bpf::mov_reg(R6, R1), // the legacy packet loads take the context in r6
        bpf::load(Size::W, R0, R1, LEN),
        bpf::jgt_imm(R0, EXPRESS_MAX_INNER as i32, 2),
        bpf::mov_imm(R0, workers),
        bpf::exit(),
        bpf::load_abs(Size::W, 12), // source address
        bpf::mov_reg(R7, R0),
        bpf::load_abs(Size::W, 16), // destination address
        bpf::xor_reg(R7, R0),
        bpf::load_abs(Size::B, 9), // protocol
        bpf::jeq_imm(R0, 6, 1),
        bpf::jne_imm(R0, 17, 2),
        bpf::load_abs(Size::W, 20), // ports
        bpf::xor_reg(R7, R0),
        bpf::mov_reg(R0, R7),
        bpf::rsh_imm(R0, 16),
        bpf::xor_reg(R0, R7),
        bpf::and_imm(R0, 0xffff),
        bpf::mod_imm(R0, workers),
        bpf::exit(),
    ]
}

/// Loads [`tun_steering`] for `workers` worker queues.
pub fn load_tun_steering(workers: u32) -> Result<OwnedFd, bpf::BpfError> {
    bpf::load_socket_filter("weft_tun_steer", &tun_steering(workers))
}

/// Classic BPF for the VXLAN reuseport group: `workers` sockets (indices
/// `0..workers`), then the express socket (index `workers`). A datagram whose (first)
/// inner IPv4 packet is at most [`EXPRESS_MAX_INNER`] bytes long goes to the express
/// socket; any other to socket `outer UDP source port % workers`. It judges the first
/// inner packet, not the buffer: a GRO train of small datagrams (a UDP flow's) takes
/// the lane like the same flow's lone datagrams, so the flow is never split between two
/// workers and reordered, and a TCP train (equal segments) goes by its segment size.
/// The program sees the skb after the UDP header (offset 0 is the VXLAN header) and the
/// outer headers at negative offsets from the network header (a 20-byte outer IPv4
/// header assumed, as above); a datagram too short to hold the inner length ends the
/// program with 0, the first worker's socket.
pub fn reuseport_steering(workers: u32) -> Vec<SockFilter> {
    const LD_H_ABS: u16 = 0x28;
    const MOD_K: u16 = 0x94;
    const JGT_K: u16 = 0x25;
    const RET_K: u16 = 0x06;
    const RET_A: u16 = 0x16;
    const SKF_NET_OFF: i32 = -0x10_0000;
    const INNER_TOTAL_LEN: u32 = 8 + 14 + 2; // VXLAN, Ethernet, IPv4 total length
    let op = SockFilter::new;
    vec![
        op(LD_H_ABS, 0, 0, INNER_TOTAL_LEN),
        op(JGT_K, 1, 0, EXPRESS_MAX_INNER),
        op(RET_K, 0, 0, workers),
        op(LD_H_ABS, 0, 0, (SKF_NET_OFF + 20) as u32), // outer UDP source port
        op(MOD_K, 0, 0, workers.max(1)),
        op(RET_A, 0, 0, 0),
    ]
}
