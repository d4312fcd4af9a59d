//! Thin, checked wrappers around the syscalls of the hot path: sockets with forced
//! buffer sizes, `poll` with a stop eventfd, non-blocking reads and plain writes.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use socket2::{Domain, Protocol, SockFilter, Socket, Type};

use crate::metrics::SendErrorReport;

/// Socket buffer size asked for with `SO_{RCV,SND}BUFFORCE`: big enough that a burst
/// of GSO super-datagrams is not dropped (measured between two namespaces: with default
/// buffers most were). Falls back silently to the sysctl-capped size when not privileged.
pub const SOCKET_BUFFER_BYTES: libc::c_int = 8 << 20;

/// A VXLAN receiving socket: UDP bound to `0.0.0.0:port` in the node's namespace, with
/// `SO_REUSEPORT` so that one per receive worker can share the port.
pub fn vxlan_socket(port: u16) -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())?;
    size_buffers(&socket);
    enable_gro(&socket);
    Ok(socket.into())
}

/// A VXLAN sending socket bound to an ephemeral port (its port is the outer UDP source
/// port of the flows hashed to it). Nothing is sent to it, so it never receives; see
/// [`prepare_sender`] for how it sends.
pub fn vxlan_send_socket() -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into())?;
    prepare_sender(&socket)?;
    Ok(socket.into())
}

/// IPIP's sending socket (raw, protocol 4; the kernel prepends the outer header). It is
/// not one of the receiving sockets: only a sender has `IP_RECVERR` on, so only a
/// sender has an error queue, and no socket a worker sleeps on can keep `poll` awake
/// with `POLLERR`. A raw socket sees every IPIP packet that arrives, so a filter drops
/// them all before they are queued (the receiving sockets get their own copies).
pub fn ipip_send_socket() -> io::Result<OwnedFd> {
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_IPIP)),
    )?;
    const RET_K: u16 = 0x06;
    socket.attach_filter(&[SockFilter::new(RET_K, 0, 0, 0)])?;
    prepare_sender(&socket)?;
    Ok(socket.into())
}

/// Bytes of error queue a sending socket keeps (`SO_RCVBUF`, which bounds the error
/// queue as it bounds the receive queue; the kernel doubles and floors it): room for a
/// few reports, which [`drain_error_queue`] reads after every failed send.
const SENDER_ERROR_QUEUE_BYTES: usize = 16 << 10;

/// How every sending socket is set up:
/// * non-blocking: a full send buffer fails the send with `EAGAIN` instead of putting
///   the worker (and with it the receive half it also serves) to sleep; the worker then
///   waits for room with a deadline (`pacer::SendPacer`);
/// * `IP_RECVERR`: without it Linux reports none of a UDP or raw socket's local drops
///   (`ENOBUFS` from a full queue is turned into success, `udp_send_skb`) nor ICMP
///   errors for unconnected sockets; with it they fail the send or land in the error
///   queue, where weft reads and counts them;
/// * a large send buffer (bursts of GSO sends) and a small receive buffer, which bounds
///   the error queue (nothing else is ever received).
pub fn prepare_sender(socket: &Socket) -> io::Result<()> {
    socket.set_nonblocking(true)?;
    let on: libc::c_int = 1;
    // SAFETY: valid socket fd; the option value is a live c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_RECVERR,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    force_buffer(socket, libc::SO_SNDBUFFORCE, SOCKET_BUFFER_BYTES);
    socket.set_recv_buffer_size(SENDER_ERROR_QUEUE_BYTES)?;
    Ok(())
}

/// Classifies a `struct sock_extended_err` by origin, ICMP type and code.
pub fn classify_send_error(origin: u8, icmp_type: u8, icmp_code: u8) -> SendErrorReport {
    const ORIGIN_ICMP: u8 = 2; // SO_EE_ORIGIN_ICMP
    const DEST_UNREACH: u8 = 3;
    match (origin, icmp_type, icmp_code) {
        (ORIGIN_ICMP, DEST_UNREACH, 0) => SendErrorReport::NetUnreachable,
        (ORIGIN_ICMP, DEST_UNREACH, 1) => SendErrorReport::HostUnreachable,
        (ORIGIN_ICMP, DEST_UNREACH, 3) => SendErrorReport::PortUnreachable,
        (ORIGIN_ICMP, DEST_UNREACH, 4) => SendErrorReport::FragNeeded,
        (ORIGIN_ICMP, ..) => SendErrorReport::OtherIcmp,
        _ => SendErrorReport::Local,
    }
}

/// The report in one error-queue message's control data: the `IP_RECVERR` record's
/// `sock_extended_err` (errno u32, origin u8, type u8, code u8, ...). `None` when the
/// control data holds no such record.
pub fn parse_send_error(control: &[u8]) -> Option<SendErrorReport> {
    const EXTENDED_ERR: usize = std::mem::size_of::<libc::sock_extended_err>();
    let err = control_data(control, libc::IPPROTO_IP, libc::IP_RECVERR, EXTENDED_ERR)?;
    // SAFETY: `control_data` returned at least `EXTENDED_ERR` bytes; `read_unaligned`
    // needs no alignment, and any bytes are a valid `sock_extended_err` (plain integers).
    let err: libc::sock_extended_err = unsafe { std::ptr::read_unaligned(err.as_ptr().cast()) };
    Some(classify_send_error(err.ee_origin, err.ee_type, err.ee_code))
}

/// The data of the first control message of `level`/`kind` carrying at least `min_len`
/// bytes, in a received message's control data. The `cmsghdr` records are walked by
/// hand (no pointer arithmetic): each is `{ len: usize, level: i32, type: i32 }`, its
/// data at the next 8-byte boundary, the next record at CMSG_ALIGN(len); a record whose
/// length lies ends the walk.
#[inline]
pub fn control_data(control: &[u8], level: i32, kind: i32, min_len: usize) -> Option<&[u8]> {
    const HEADER: usize = std::mem::size_of::<libc::cmsghdr>();
    const WORD: usize = std::mem::size_of::<usize>();
    let mut at = 0;
    while at + HEADER <= control.len() {
        let field = |offset: usize, len: usize| &control[at + offset..at + offset + len];
        let len = usize::from_ne_bytes(field(0, WORD).try_into().expect("word"));
        let record_level = i32::from_ne_bytes(field(WORD, 4).try_into().expect("i32"));
        let record_kind = i32::from_ne_bytes(field(WORD + 4, 4).try_into().expect("i32"));
        if len < HEADER || at + len > control.len() {
            return None;
        }
        if record_level == level && record_kind == kind && len >= HEADER + min_len {
            return Some(&control[at + HEADER..at + len]);
        }
        at += len.next_multiple_of(WORD);
    }
    None
}

/// Most error-queue messages one drain reads: the queue is small (see
/// [`SENDER_ERROR_QUEUE_BYTES`]), and a drain must end even while reports keep coming.
const DRAIN_LIMIT: usize = 64;

/// Reads (non-blocking) what `socket`'s error queue holds, calling `report` for each
/// message; returns how many there were.
pub fn drain_error_queue(
    socket: BorrowedFd<'_>,
    mut report: impl FnMut(Option<SendErrorReport>),
) -> usize {
    // The offending packet's start is copied to `data`; only the control data matters.
    let mut data = [0u8; 64];
    let mut control = [0u64; 16]; // 128 bytes, 8-byte aligned for the cmsghdr
    let mut drained = 0;
    while drained < DRAIN_LIMIT {
        let mut iovec = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: all-zero is a valid msghdr.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = &mut iovec;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: `message` points at live buffers of the sizes given.
        let rc = unsafe {
            libc::recvmsg(
                socket.as_raw_fd(),
                &mut message,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break; // EAGAIN: empty
        }
        let control_len = message.msg_controllen.min(std::mem::size_of_val(&control));
        // SAFETY: `control` is a live, initialised array of at least `control_len` bytes.
        let bytes =
            unsafe { std::slice::from_raw_parts(control.as_ptr().cast::<u8>(), control_len) };
        report(parse_send_error(bytes));
        drained += 1;
    }
    drained
}

/// Waits until `socket` has room to send (`POLLOUT`) or `timeout` passes; `true` when
/// it has room.
pub fn wait_writable(socket: BorrowedFd<'_>, timeout: std::time::Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one live pollfd and a live timespec; no signal mask.
    let rc = unsafe { libc::ppoll(&mut fd, 1, &timeout, std::ptr::null()) };
    rc > 0 && fd.revents & libc::POLLOUT != 0
}

/// Sleeps for `duration` (a short pause while a device's queue drains: the socket
/// itself has room, so there is nothing to poll for).
pub fn pause(duration: std::time::Duration) {
    let timeout = libc::timespec {
        tv_sec: duration.as_secs() as libc::time_t,
        tv_nsec: duration.subsec_nanos() as libc::c_long,
    };
    // SAFETY: no descriptors, a live timespec, no signal mask.
    unsafe { libc::ppoll(std::ptr::null_mut(), 0, &timeout, std::ptr::null()) };
}

/// Whether this kernel has UDP GSO (`UDP_SEGMENT`, Linux ≥ 4.18): probed by setting
/// and clearing the socket option on a scratch socket.
pub fn udp_gso_supported() -> bool {
    let Ok(socket) = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)) else {
        return false;
    };
    [1400, 0].iter().all(|size: &libc::c_int| {
        // SAFETY: valid socket fd; the option value is a live c_int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                (size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        rc == 0
    })
}

/// The IPIP sockets: raw IPv4 protocol 4, `count` of them, one per receiving worker.
/// The kernel prepends the outer header on send (source = the route's source address,
/// i.e. our PublicIP) and hands us packets with the outer header on receive; no `ipip`
/// module is needed (checked between two namespaces on a kernel without it).
///
/// Raw sockets have no `SO_REUSEPORT` spreading: every one of them gets every packet.
/// So each carries a classic BPF filter that keeps only its share of the inner flows
/// ([`ipip_share_filter`]); a packet is cloned to each socket (no data copy; one clone
/// per 64 KB with super-packets) and queued on exactly one, and receive spreads over
/// the workers as VXLAN's reuseport group does.
pub fn ipip_sockets(count: usize) -> io::Result<Vec<OwnedFd>> {
    let count = count.max(1);
    (0..count)
        .map(|index| {
            let socket = Socket::new(
                Domain::IPV4,
                Type::RAW,
                Some(Protocol::from(libc::IPPROTO_IPIP)),
            )?;
            if count > 1 {
                socket.attach_filter(&ipip_share_filter(index as u32, count as u32))?;
            }
            size_buffers(&socket);
            Ok(socket.into())
        })
        .collect()
}

/// Classic BPF for raw IPIP socket `index` of `count`: accept a packet when its inner
/// flow's [`inner_flow_hash`] is `index`. Packets too short to hold the inner headers
/// go to socket 0.
pub fn ipip_share_filter(index: u32, count: u32) -> Vec<SockFilter> {
    const LD_LEN: u16 = 0x80;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const ACCEPT: u32 = u32::MAX;
    const INNER: u32 = 20;
    let op = SockFilter::new;
    let mut program = vec![
        op(LD_LEN, 0, 0, 0),
        op(JGE_K, 1, 0, INNER + 24),
        op(RET_K, 0, 0, if index == 0 { ACCEPT } else { 0 }),
    ];
    program.extend(inner_flow_hash(INNER, count));
    program.extend([
        op(JEQ_K, 0, 1, index),
        op(RET_K, 0, 0, ACCEPT),
        op(RET_K, 0, 0, 0),
    ]);
    program
}

/// Classic BPF leaving in A the worker (`0..count`) of the inner IPv4 packet at
/// `inner`: a hash of its addresses, plus its ports for TCP and UDP (ICMP's third word
/// changes with every echo), folded to 16 bits. It is symmetric (a flow's two
/// directions get one worker) and the same as the TUN steering program's
/// (`express::tun_steering`), so a flow's data and its replies meet on one worker, as
/// TUN's own flow steering would have them. Offsets assume the usual 20-byte IPv4
/// header: options only make a flow hash other bytes, still the same ones for every
/// packet of it.
pub fn inner_flow_hash(inner: u32, count: u32) -> Vec<SockFilter> {
    const LD_W_ABS: u16 = 0x20;
    const LD_B_ABS: u16 = 0x30;
    const TAX: u16 = 0x07;
    const TXA: u16 = 0x87;
    const XOR_X: u16 = 0xac;
    const RSH_K: u16 = 0x74;
    const AND_K: u16 = 0x54;
    const MOD_K: u16 = 0x94;
    const JA: u16 = 0x05;
    const JEQ_K: u16 = 0x15;
    let op = SockFilter::new;
    vec![
        op(LD_W_ABS, 0, 0, inner + 12), // source
        op(TAX, 0, 0, 0),
        op(LD_W_ABS, 0, 0, inner + 16), // destination
        op(XOR_X, 0, 0, 0),
        op(TAX, 0, 0, 0),
        op(LD_B_ABS, 0, 0, inner + 9), // protocol
        op(JEQ_K, 3, 0, 6),
        op(JEQ_K, 2, 0, 17),
        op(TXA, 0, 0, 0),
        op(JA, 0, 0, 2),
        op(LD_W_ABS, 0, 0, inner + 20), // ports
        op(XOR_X, 0, 0, 0),
        op(TAX, 0, 0, 0),
        op(RSH_K, 0, 0, 16),
        op(XOR_X, 0, 0, 0),
        op(AND_K, 0, 0, 0xffff),
        op(MOD_K, 0, 0, count.max(1)),
    ]
}

/// Attaches `program` as the reuseport group's socket selector (`SO_ATTACH_REUSEPORT_CBPF`,
/// Linux 4.5+): on any member, for the whole group.
pub fn attach_reuseport_program(socket: BorrowedFd<'_>, program: &[SockFilter]) -> io::Result<()> {
    const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| io::ErrorKind::InvalidInput)?,
        // SockFilter is `repr(transparent)` over `sock_filter`.
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: valid socket fd; `fprog` points at `program`, alive for the call, and the
    // option value is a live sock_fprog of the size given (the kernel copies it).
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks for `UDP_GRO`: trains of equal datagrams (a peer's `UDP_SEGMENT` send) arrive
/// as one buffer plus their size. Older kernels refuse; receiving then works datagram
/// by datagram.
fn enable_gro(socket: &Socket) {
    let on: libc::c_int = 1;
    // SAFETY: valid socket fd; the option value is a live c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "UDP_GRO unavailable; receiving datagram by datagram");
    }
}

fn size_buffers(socket: &Socket) {
    force_buffer(socket, libc::SO_RCVBUFFORCE, SOCKET_BUFFER_BYTES);
    force_buffer(socket, libc::SO_SNDBUFFORCE, SOCKET_BUFFER_BYTES);
}

/// Sets a buffer size with `SO_{RCV,SND}BUFFORCE`, or as far as the sysctl cap allows
/// when not privileged.
fn force_buffer(socket: &Socket, option: libc::c_int, value: libc::c_int) {
    // SAFETY: valid socket fd; the option value is a live c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        let _ = if option == libc::SO_RCVBUFFORCE {
            socket.set_recv_buffer_size(value as usize)
        } else {
            socket.set_send_buffer_size(value as usize)
        };
    }
}

/// An eventfd that wakes every worker blocked in [`wait_readable`] at shutdown.
#[derive(Debug)]
pub struct StopSignal {
    fd: OwnedFd,
}

impl StopSignal {
    pub fn new() -> io::Result<StopSignal> {
        // SAFETY: eventfd has no memory-safety preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(StopSignal { fd })
    }

    /// Wakes all waiters, now and forever after (the counter is never read).
    pub fn raise(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn fd(&self) -> libc::c_int {
        self.fd.as_raw_fd()
    }
}

/// Blocks until `fd` or `other` (where given) is readable (`true`) or the stop signal is raised
/// (`false`).
pub fn wait_readable(
    fd: Option<BorrowedFd<'_>>,
    other: Option<BorrowedFd<'_>>,
    stop: &StopSignal,
) -> io::Result<bool> {
    let pollfd = |fd: libc::c_int| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [
        pollfd(stop.fd()),
        // poll ignores negative descriptors.
        pollfd(fd.map_or(-1, |fd| fd.as_raw_fd())),
        pollfd(other.map_or(-1, |fd| fd.as_raw_fd())),
    ];
    loop {
        // SAFETY: `fds` is a live array of three pollfd structs.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) };
        if rc < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        return Ok(fds[0].revents == 0);
    }
}

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a valid descriptor.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One `read(2)`; `Ok(None)` when nothing is ready on a non-blocking descriptor.
#[inline]
pub fn read_nonblocking(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: reads at most `buf.len()` bytes into the live, writable `buf`.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(error),
        }
    }
}

/// One `write(2)` of a whole packet.
#[inline]
pub fn write_packet(fd: BorrowedFd<'_>, packet: &[u8]) -> io::Result<()> {
    // SAFETY: writes `packet.len()` bytes from the live slice `packet`.
    let n = unsafe { libc::write(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One control message as the kernel lays it out (`cmsghdr`, data, padding to 8 bytes),
/// for tests that parse control data.
#[cfg(test)]
pub(crate) fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
    let header = std::mem::size_of::<libc::cmsghdr>();
    let len = header + data.len();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&len.to_ne_bytes());
    bytes.extend_from_slice(&level.to_ne_bytes());
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(data);
    bytes.resize(len.next_multiple_of(8), 0);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A `sock_extended_err` followed by the offender's `sockaddr_in`, as the kernel
    /// writes it.
    fn extended_err(errno: u32, origin: u8, icmp_type: u8, icmp_code: u8) -> Vec<u8> {
        let mut err = Vec::new();
        err.extend_from_slice(&errno.to_ne_bytes());
        err.extend_from_slice(&[origin, icmp_type, icmp_code, 0]);
        err.extend_from_slice(&0u32.to_ne_bytes()); // ee_info
        err.extend_from_slice(&0u32.to_ne_bytes()); // ee_data
        err.extend_from_slice(&[0u8; 16]); // offender
        err
    }

    #[test]
    fn send_errors_are_read_from_the_recverr_record() {
        let icmp = |t, c| {
            cmsg(
                libc::IPPROTO_IP,
                libc::IP_RECVERR,
                &extended_err(libc::EHOSTUNREACH as u32, 2, t, c),
            )
        };
        assert_eq!(
            parse_send_error(&icmp(3, 1)),
            Some(SendErrorReport::HostUnreachable)
        );
        assert_eq!(
            parse_send_error(&icmp(3, 3)),
            Some(SendErrorReport::PortUnreachable)
        );
        assert_eq!(
            parse_send_error(&icmp(3, 0)),
            Some(SendErrorReport::NetUnreachable)
        );
        assert_eq!(
            parse_send_error(&icmp(3, 4)),
            Some(SendErrorReport::FragNeeded)
        );
        assert_eq!(
            parse_send_error(&icmp(11, 0)),
            Some(SendErrorReport::OtherIcmp)
        );
        let local = cmsg(
            libc::IPPROTO_IP,
            libc::IP_RECVERR,
            &extended_err(libc::EMSGSIZE as u32, 1, 0, 0),
        );
        assert_eq!(parse_send_error(&local), Some(SendErrorReport::Local));
        // Behind another record; nothing; truncated or lying lengths: no panic.
        let mut two = cmsg(libc::IPPROTO_IP, libc::IP_TOS, &[0; 4]);
        two.extend_from_slice(&icmp(3, 3));
        assert_eq!(
            parse_send_error(&two),
            Some(SendErrorReport::PortUnreachable)
        );
        assert_eq!(parse_send_error(&[]), None);
        assert_eq!(parse_send_error(&icmp(3, 1)[..20]), None);
        let short = cmsg(libc::IPPROTO_IP, libc::IP_RECVERR, &[2, 0, 0, 0]);
        assert_eq!(parse_send_error(&short), None);
        let mut lying = icmp(3, 1);
        lying[..8].copy_from_slice(&999usize.to_ne_bytes());
        assert_eq!(parse_send_error(&lying), None);
    }

    /// A real socket's error queue: an unconnected UDP socket with `IP_RECVERR` sending
    /// to a closed port on loopback gets an ICMP port unreachable queued, which a drain
    /// reads, and the next drain finds the queue empty.
    #[test]
    fn a_drain_reads_what_the_kernel_queued() {
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = closed.local_addr().unwrap();
        drop(closed);
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        socket
            .bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())
            .unwrap();
        prepare_sender(&socket).unwrap();
        socket.send_to(b"x", &to.into()).unwrap();
        let fd = socket.as_fd();
        let mut reports = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // The ICMP error comes back through loopback's softirq: wait for it.
        while reports.is_empty() && std::time::Instant::now() < deadline {
            if !wait_error(fd) {
                continue;
            }
            drain_error_queue(fd, |r| reports.push(r));
        }
        assert_eq!(reports, vec![Some(SendErrorReport::PortUnreachable)]);
        assert_eq!(drain_error_queue(fd, |_| {}), 0, "the queue is empty now");
    }

    /// Polls `fd` for `POLLERR` for up to 100 ms.
    fn wait_error(fd: BorrowedFd<'_>) -> bool {
        let mut pollfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let rc = unsafe { libc::poll(&mut pollfd, 1, 100) };
        rc > 0 && pollfd.revents & libc::POLLERR != 0
    }
}
