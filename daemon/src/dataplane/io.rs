//! Thin, checked wrappers around the syscalls of the hot path: sockets with forced
//! buffer sizes, `poll` with a stop eventfd, non-blocking reads and plain writes.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use socket2::{Domain, Protocol, SockFilter, Socket, Type};

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
/// port of the flows hashed to it). Nothing is sent to it, so it never receives.
pub fn vxlan_send_socket() -> io::Result<OwnedFd> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into())?;
    size_buffers(&socket);
    Ok(socket.into())
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

/// Classic BPF for raw IPIP socket `index` of `count`: accept a packet when a hash of
/// its inner flow (addresses, plus ports for TCP and UDP: ICMP's third word changes with
/// every echo) modulo `count` is `index`. Packets too short to hold the inner headers go
/// to socket 0. Offsets assume the usual 20-byte outer and inner IPv4 headers; options
/// only make a flow hash other bytes, still the same ones for every packet of it.
pub fn ipip_share_filter(index: u32, count: u32) -> Vec<SockFilter> {
    const LD_LEN: u16 = 0x80;
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
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    const ACCEPT: u32 = u32::MAX;
    const INNER: u32 = 20;
    let op = SockFilter::new;
    vec![
        op(LD_LEN, 0, 0, 0),
        op(JGE_K, 1, 0, INNER + 24),
        op(RET_K, 0, 0, if index == 0 { ACCEPT } else { 0 }),
        op(LD_W_ABS, 0, 0, INNER + 12), // inner source
        op(TAX, 0, 0, 0),
        op(LD_W_ABS, 0, 0, INNER + 16), // inner destination
        op(XOR_X, 0, 0, 0),
        op(TAX, 0, 0, 0),
        op(LD_B_ABS, 0, 0, INNER + 9), // inner protocol
        op(JEQ_K, 3, 0, 6),
        op(JEQ_K, 2, 0, 17),
        op(TXA, 0, 0, 0),
        op(JA, 0, 0, 2),
        op(LD_W_ABS, 0, 0, INNER + 20), // ports
        op(XOR_X, 0, 0, 0),
        op(TAX, 0, 0, 0),
        op(RSH_K, 0, 0, 16),
        op(XOR_X, 0, 0, 0),
        op(AND_K, 0, 0, 0xffff),
        op(MOD_K, 0, 0, count),
        op(JEQ_K, 0, 1, index),
        op(RET_K, 0, 0, ACCEPT),
        op(RET_K, 0, 0, 0),
    ]
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
    for option in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        let value = SOCKET_BUFFER_BYTES;
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
            let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES as usize);
            let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES as usize);
        }
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
