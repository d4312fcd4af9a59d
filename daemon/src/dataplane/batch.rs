//! Batched datagram I/O on the underlay sockets, in the manner of quinn-udp: one
//! `sendmmsg` for a queue of datagrams ([`SendQueue`]), one `sendmsg` with `UDP_SEGMENT`
//! for a train of equal datagrams ([`send_segmented`]), one `recvmmsg` into buffers
//! allocated once ([`RecvQueue`]) with each datagram's `UDP_GRO` segment size read from
//! its control messages ([`RecvMeta`]).
//!
//! It knows nothing of workers, peers or counters: each call makes one syscall and
//! returns its result, and the caller (`send`, `receive`) decides what a failure means.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::io::control_data;
use super::worker::BATCH;

/// Outgoing datagrams waiting for one `sendmmsg`: pointers into buffers owned by the
/// caller, rebuilt per batch, never reallocated.
pub struct SendQueue {
    addresses: Vec<libc::sockaddr_in>,
    iovecs: Vec<libc::iovec>,
    messages: Vec<libc::mmsghdr>,
    len: usize,
}

impl SendQueue {
    pub fn new() -> SendQueue {
        SendQueue {
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
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_full(&self) -> bool {
        self.len == BATCH
    }

    /// Queues `datagram` for `to`; it must stay untouched until the queue is sent and
    /// cleared. The queue must not be full.
    #[inline]
    pub fn push(&mut self, datagram: &mut [u8], to: libc::sockaddr_in) {
        let n = self.len;
        self.addresses[n] = to;
        self.iovecs[n] = libc::iovec {
            iov_base: datagram.as_mut_ptr().cast(),
            iov_len: datagram.len(),
        };
        self.len += 1;
    }

    /// Points the message headers at the queued datagrams and addresses: once before
    /// the first [`SendQueue::send_from`] of a batch.
    pub fn prepare(&mut self) {
        for n in 0..self.len {
            let header = &mut self.messages[n].msg_hdr;
            header.msg_name = (&mut self.addresses[n] as *mut libc::sockaddr_in).cast();
            header.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            header.msg_iov = &mut self.iovecs[n];
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
        }
    }

    /// One `sendmmsg` of the queued datagrams from the `first`: the syscall's result
    /// (how many left, or -1 with the error in `errno`).
    pub fn send_from(&mut self, socket: BorrowedFd<'_>, first: usize) -> isize {
        let messages = &mut self.messages[first..self.len];
        // SAFETY: `messages` point at live iovecs and addresses of this queue and at
        // buffers that the caller keeps untouched until the queue is cleared
        // (`prepare` set them for this batch).
        unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                messages.as_mut_ptr(),
                messages.len() as libc::c_uint,
                0,
            ) as isize
        }
    }

    /// Forgets the queued datagrams.
    pub fn clear(&mut self) {
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

/// One `sendmsg` with `UDP_SEGMENT`: `datagrams` holds datagrams of `stride` bytes
/// each (the last may be shorter), all to `to`. The kernel (or the NIC) cuts them; over
/// veth the whole train stays one packet up to a receiver with `UDP_GRO`. Returns the
/// syscall's result (-1 with the error in `errno`).
pub fn send_segmented(
    socket: BorrowedFd<'_>,
    datagrams: &mut [u8],
    stride: usize,
    to: &libc::sockaddr_in,
) -> isize {
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
    // SAFETY: `message` points at live buffers (iovec, address, control).
    unsafe { libc::sendmsg(socket.as_raw_fd(), &message, 0) }
}

/// Control-message space per received datagram (one `UDP_GRO` int: CMSG_SPACE(4) = 24).
const RX_CONTROL_LEN: usize = 64;

/// What the kernel said about one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes received (at most the slot's length).
    pub len: usize,
    /// The `UDP_GRO` segment size: the buffer holds a train of datagrams this long
    /// (the last may be shorter); 0 = one datagram.
    pub stride: usize,
    /// The sender's address.
    pub source: Ipv4Addr,
}

/// Buffers for one `recvmmsg` of up to [`BATCH`] datagrams of up to `slot_len` bytes.
pub struct RecvQueue {
    slot_len: usize,
    // `iovecs` point into `buffers`, `messages` into `iovecs`, `addresses` and
    // `control`: all heap allocations made once and never resized, so the pointers
    // stay valid when the struct moves.
    buffers: Vec<u8>,
    addresses: Vec<libc::sockaddr_in>,
    control: Vec<u8>,
    _iovecs: Vec<libc::iovec>,
    messages: Vec<libc::mmsghdr>,
}

impl RecvQueue {
    pub fn new(slot_len: usize) -> RecvQueue {
        let mut buffers = vec![0u8; slot_len * BATCH];
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut addresses: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; BATCH];
        let control = vec![0u8; BATCH * RX_CONTROL_LEN];
        let mut iovecs: Vec<libc::iovec> = (0..BATCH)
            .map(|n| libc::iovec {
                iov_base: buffers[n * slot_len..].as_mut_ptr().cast(),
                iov_len: slot_len,
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
        RecvQueue {
            slot_len,
            buffers,
            addresses,
            control,
            _iovecs: iovecs,
            messages,
        }
    }

    /// One non-blocking `recvmmsg` of at most `max` (≤ [`BATCH`]) datagrams: how many
    /// arrived (see [`RecvQueue::datagram`]), or the error (`WouldBlock` when there
    /// were none).
    pub fn recv(&mut self, socket: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        for (n, message) in self.messages.iter_mut().enumerate() {
            message.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            message.msg_hdr.msg_control = self.control[n * RX_CONTROL_LEN..].as_mut_ptr().cast();
            message.msg_hdr.msg_controllen = RX_CONTROL_LEN;
            message.msg_len = 0;
        }
        // SAFETY: every message points at a live iovec/buffer/address/control area
        // owned by this struct; the kernel writes at most the given lengths.
        let rc = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.messages.as_mut_ptr(),
                max.clamp(1, BATCH) as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }

    /// The `n`th datagram of the last [`RecvQueue::recv`]: what the kernel said of it,
    /// and its bytes (writable: the receive path writes a vnet header in place).
    #[inline]
    pub fn datagram(&mut self, n: usize) -> (RecvMeta, &mut [u8]) {
        let len = self.messages[n].msg_len as usize;
        let control_len = self.messages[n].msg_hdr.msg_controllen.min(RX_CONTROL_LEN);
        let stride = gro_size(&self.control[n * RX_CONTROL_LEN..n * RX_CONTROL_LEN + control_len]);
        let source = Ipv4Addr::from(u32::from_be(self.addresses[n].sin_addr.s_addr));
        let slot_len = self.slot_len;
        let len = len.min(slot_len);
        let slot = &mut self.buffers[n * slot_len..n * slot_len + len];
        (
            RecvMeta {
                len,
                stride,
                source,
            },
            slot,
        )
    }
}

/// The `UDP_GRO` segment size from a received message's control data (0 = none).
fn gro_size(control: &[u8]) -> usize {
    const INT: usize = std::mem::size_of::<libc::c_int>();
    control_data(control, libc::SOL_UDP, libc::UDP_GRO, INT).map_or(0, |data| {
        let size = libc::c_int::from_ne_bytes(data[..INT].try_into().expect("c_int"));
        usize::try_from(size).unwrap_or(0)
    })
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

    #[test]
    fn segment_control_matches_cmsg_macros() {
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(2) } as usize;
        // SAFETY: CMSG_LEN only computes a size.
        let len = unsafe { libc::CMSG_LEN(2) } as usize;
        assert_eq!(std::mem::size_of::<SegmentControl>(), space);
        assert_eq!(std::mem::offset_of!(SegmentControl, size) + 2, len);
    }
}
