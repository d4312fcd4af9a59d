//! Thin, checked wrappers around the syscalls of the hot path: sockets with forced
//! buffer sizes, `poll` with a stop eventfd, non-blocking reads and plain writes.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size asked for with `SO_{RCV,SND}BUFFORCE`: big enough that a burst
/// of GSO super-datagrams is not dropped (MEASUREMENTS.md: with default buffers most
/// were). Falls back silently to the sysctl-capped size when not privileged.
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

/// The IPIP socket: raw IPv4 protocol 4. The kernel prepends the outer header on send
/// (source = the route's source address, i.e. our PublicIP) and hands us packets with
/// the outer header on receive; no `ipip` module is needed (MEASUREMENTS.md).
pub fn ipip_socket() -> io::Result<OwnedFd> {
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_IPIP)),
    )?;
    size_buffers(&socket);
    Ok(socket.into())
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
