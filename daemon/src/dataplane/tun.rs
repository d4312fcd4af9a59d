//! The TUN VTEP device (`weft.<VNI>` / `weft.ipip`), opened with raw ioctls.
//!
//! Why not the `tun`/`tun-tap` crates: none of them exposes `IFF_VNET_HDR`,
//! `TUNSETOFFLOAD` and `TUNSETVNETHDRSZ` together with `IFF_MULTI_QUEUE`, and those are
//! the levers that make a userspace tunnel competitive (measured here: a TUN relay
//! goes from 1.8 to 12.2 Gbit/s once the kernel hands over 64 KB TSO super-packets).
//! Four ioctls are less code than working around a crate.
//!
//! The device is **persistent** (`TUNSETPERSIST`): when weftd exits or restarts, the
//! device and every route through it stay, so a restart does not rebuild routes or make
//! pods' route lookups fail; packets sent while no process is attached are dropped,
//! exactly like packets sent while weftd is busy. A restarted weftd attaches to the
//! same device by name. `--cleanup-on-exit` clears persistence and deletes it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("opening /dev/net/tun: {0}")]
    Open(#[source] io::Error),
    #[error("TUN device name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("attaching queue {queue} of TUN device {name}: {source}")]
    Attach {
        name: String,
        queue: usize,
        #[source]
        source: io::Error,
    },
    #[error("{what} on TUN device {name}: {source}")]
    Ioctl {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// `TUN_F_UDP_TUNNEL_GSO` (Linux 6.17, newer than the libc crate's headers).
const TUN_F_UDP_TUNNEL_GSO: libc::c_uint = 0x080;
/// `TUN_F_UDP_TUNNEL_GSO_CSUM`: the outer UDP header has a checksum to complete.
const TUN_F_UDP_TUNNEL_GSO_CSUM: libc::c_uint = 0x100;

/// Offload features the kernel may use when handing packets to us (`TUNSETOFFLOAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    /// Packets may carry a partial checksum (`TUN_F_CSUM`); required by the others.
    pub csum: bool,
    /// TCPv4 super-packets up to 64 KB (`TUN_F_TSO4`).
    pub tso4: bool,
    /// UDPv4 super-packets (`TUN_F_USO4`, set with `TUN_F_USO6`).
    pub uso4: bool,
}

impl Offloads {
    fn bits(self) -> libc::c_uint {
        let mut bits = 0;
        if self.csum {
            bits |= libc::TUN_F_CSUM;
            if self.tso4 {
                bits |= libc::TUN_F_TSO4;
            }
            if self.uso4 {
                // The kernel takes USO only for both families at once (`tun_set_offload`
                // refuses one alone); IPv6 never reaches a peer here anyway.
                bits |= libc::TUN_F_USO4 | libc::TUN_F_USO6;
            }
        }
        bits
    }
}

/// A multi-queue TUN device with a `virtio_net_hdr` in front of every packet.
#[derive(Debug)]
pub struct Tun {
    name: String,
    queues: Vec<File>,
    offloads: Offloads,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tun,
    Tap,
}

impl Kind {
    fn flag(self) -> libc::c_int {
        match self {
            Kind::Tun => libc::IFF_TUN,
            Kind::Tap => libc::IFF_TAP,
        }
    }
}

/// `struct ifreq` for the TUN ioctls: name + flags.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tun {
    /// Creates the device `name` or attaches to the existing persistent one, with
    /// `queues` queues (one per worker), vnet headers on, and `offloads` enabled.
    pub fn open(name: &str, queues: usize, offloads: Offloads) -> Result<Tun, TunError> {
        Tun::open_kind(name, queues, offloads, Kind::Tun)
    }

    /// Creates the TAP device `name` (Ethernet frames, vnet headers on) with `queues`
    /// queues. It is not persistent: it disappears with the last descriptor, i.e. with
    /// weftd (see `tap_encap`).
    pub fn open_tap(name: &str, queues: usize) -> Result<Tun, TunError> {
        Tun::open_kind(name, queues, Offloads::default(), Kind::Tap)
    }

    fn open_kind(
        name: &str,
        queues: usize,
        offloads: Offloads,
        kind: Kind,
    ) -> Result<Tun, TunError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(TunError::BadName(name.to_owned()));
        }
        let mut tun = Tun {
            name: name.to_owned(),
            queues: Vec::with_capacity(queues),
            offloads: Offloads::default(),
        };
        for queue in 0..queues.max(1) {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .map_err(TunError::Open)?;
            let mut request = IfReq {
                name: [0; libc::IFNAMSIZ],
                flags: (kind.flag() | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE)
                    as libc::c_short,
                _pad: [0; 22],
            };
            for (dst, src) in request.name.iter_mut().zip(name.bytes()) {
                *dst = src as libc::c_char;
            }
            // SAFETY: `file` is an open /dev/net/tun descriptor and `request` is a valid,
            // properly sized `struct ifreq` that lives across the call.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
            if rc < 0 {
                return Err(TunError::Attach {
                    name: name.to_owned(),
                    queue,
                    source: io::Error::last_os_error(),
                });
            }
            // Every read and write starts with a `struct virtio_net_hdr` (no
            // `num_buffers`), weft_proto::vnet's format.
            let header_len: libc::c_int = weft_proto::vnet::HEADER_LEN as libc::c_int;
            tun.ioctl_ptr(&file, libc::TUNSETVNETHDRSZ, &header_len, "TUNSETVNETHDRSZ")?;
            tun.offloads = tun.set_offloads(&file, offloads)?;
            if queue == 0 && kind == Kind::Tun {
                tun.ioctl_value(&file, libc::TUNSETPERSIST, 1, "TUNSETPERSIST")?;
            }
            tun.queues.push(file);
        }
        Ok(tun)
    }

    /// Enables `wanted`, or the most of it this kernel accepts: without USO, then
    /// without TSO, then checksum offload only, then nothing (the path that moves one
    /// packet per read). Returns what is active.
    fn set_offloads(&self, file: &File, wanted: Offloads) -> Result<Offloads, TunError> {
        let candidates = [
            wanted,
            Offloads {
                uso4: false,
                ..wanted
            },
            Offloads {
                csum: wanted.csum,
                ..Offloads::default()
            },
            Offloads::default(),
        ];
        let mut last_error = None;
        for offloads in candidates {
            match self.ioctl_value(
                file,
                libc::TUNSETOFFLOAD,
                offloads.bits() as libc::c_ulong,
                "TUNSETOFFLOAD",
            ) {
                Ok(()) => return Ok(offloads),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// Turns on Linux's UDP-tunnel offloads for writes (6.17: `TUN_F_UDP_TUNNEL_GSO`,
    /// `TUN_F_UDP_TUNNEL_GSO_CSUM`) and makes every write's vnet header the 24-byte
    /// `virtio_net_hdr_v1_hash_tunnel` (`weft_proto::vnet::TUNNEL_HEADER_LEN`) on all
    /// queues (both settings are the device's). A kernel without them refuses the
    /// unknown offload bits (`EINVAL`), and the device is left as it was.
    pub fn enable_udp_tunnel_offload(&self) -> Result<(), TunError> {
        // Tunnel GSO is only accepted together with a plain one (TSO4 needs CSUM).
        let bits =
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | TUN_F_UDP_TUNNEL_GSO | TUN_F_UDP_TUNNEL_GSO_CSUM;
        let file = &self.queues[0];
        self.ioctl_value(
            file,
            libc::TUNSETOFFLOAD,
            bits as libc::c_ulong,
            "TUNSETOFFLOAD(udp tunnel)",
        )?;
        let header_len = weft_proto::vnet::TUNNEL_HEADER_LEN as libc::c_int;
        self.ioctl_ptr(
            file,
            libc::TUNSETVNETHDRSZ,
            &header_len,
            "TUNSETVNETHDRSZ(24)",
        )
    }

    /// The offloads in effect (see [`Tun::open`]).
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    fn ioctl_value(
        &self,
        file: &File,
        request: libc::Ioctl,
        value: libc::c_ulong,
        what: &'static str,
    ) -> Result<(), TunError> {
        // SAFETY: these TUN ioctls take their argument by value (an integer), and `file`
        // is an attached TUN descriptor.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, value) };
        if rc < 0 {
            return Err(self.ioctl_error(what));
        }
        Ok(())
    }

    fn ioctl_ptr(
        &self,
        file: &File,
        request: libc::Ioctl,
        value: &libc::c_int,
        what: &'static str,
    ) -> Result<(), TunError> {
        // SAFETY: TUNSETVNETHDRSZ and TUNSETSTEERINGEBPF read one `int` through the
        // pointer, which points to a live `c_int` for the duration of the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, value as *const libc::c_int) };
        if rc < 0 {
            return Err(self.ioctl_error(what));
        }
        Ok(())
    }

    fn ioctl_error(&self, what: &'static str) -> TunError {
        TunError::Ioctl {
            name: self.name.clone(),
            what,
            source: io::Error::last_os_error(),
        }
    }

    /// Sets (or with `None` removes) the eBPF program that picks each transmitted
    /// packet's queue (`TUNSETSTEERINGEBPF`, Linux 4.16+), in place of TUN's own flow
    /// steering. The device keeps a reference: the descriptor may be closed after.
    pub fn set_steering_program(&self, program: Option<&OwnedFd>) -> Result<(), TunError> {
        const TUNSETSTEERINGEBPF: libc::Ioctl = 0x8004_54e0;
        let fd: libc::c_int = program.map_or(-1, |program| program.as_raw_fd());
        self.ioctl_ptr(
            &self.queues[0],
            TUNSETSTEERINGEBPF,
            &fd,
            "TUNSETSTEERINGEBPF",
        )
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Queue `n` (one per worker; each worker reads and writes its own queue).
    pub fn queue(&self, n: usize) -> BorrowedFd<'_> {
        self.queues[n].as_fd()
    }

    /// Duplicates queue `n` so a worker thread can own it.
    pub fn clone_queue(&self, n: usize) -> io::Result<OwnedFd> {
        self.queues[n].as_fd().try_clone_to_owned()
    }

    /// Clears persistence so the device disappears when the last queue closes
    /// (`--cleanup-on-exit`).
    pub fn set_transient(&self) -> Result<(), TunError> {
        self.ioctl_value(&self.queues[0], libc::TUNSETPERSIST, 0, "TUNSETPERSIST(0)")
    }
}
