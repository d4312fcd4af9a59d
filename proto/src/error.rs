//! Typed errors for every decoder and builder in this crate.
//!
//! Decoders name the layer and the field that is wrong ("inner IPv4: total length
//! 1500 exceeds buffer 1400"), so a drop counter or a log line says exactly what the
//! peer sent. All errors are small `Copy` values: the data plane can count them per
//! packet without allocating.

use core::fmt;

/// Which header a [`WireError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    Ethernet,
    OuterEthernet,
    InnerEthernet,
    Arp,
    Ipv4,
    OuterIpv4,
    InnerIpv4,
    Udp,
    OuterUdp,
    Tcp,
    Vxlan,
    VirtioNet,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Ethernet => "Ethernet",
            Layer::OuterEthernet => "outer Ethernet",
            Layer::InnerEthernet => "inner Ethernet",
            Layer::Arp => "ARP",
            Layer::Ipv4 => "IPv4",
            Layer::OuterIpv4 => "outer IPv4",
            Layer::InnerIpv4 => "inner IPv4",
            Layer::Udp => "UDP",
            Layer::OuterUdp => "outer UDP",
            Layer::Tcp => "TCP",
            Layer::Vxlan => "VXLAN header",
            Layer::VirtioNet => "virtio-net header",
        })
    }
}

/// A packet (or part of one) that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{layer}: truncated: need {need} bytes, have {have}")]
    Truncated {
        layer: Layer,
        need: usize,
        have: usize,
    },
    #[error("{layer}: version {version} is not 4")]
    Version { layer: Layer, version: u8 },
    #[error("{layer}: header length {header_len} is below the minimum {min}")]
    HeaderLenTooShort {
        layer: Layer,
        header_len: usize,
        min: usize,
    },
    #[error("{layer}: header length {header_len} exceeds {what} {len}")]
    HeaderLenTooLong {
        layer: Layer,
        header_len: usize,
        what: &'static str,
        len: usize,
    },
    #[error("{layer}: total length {total_len} exceeds buffer {available}")]
    TotalLenExceedsBuffer {
        layer: Layer,
        total_len: usize,
        available: usize,
    },
    #[error("{layer}: header checksum mismatch (field 0x{found:04x}, expected 0x{expected:04x})")]
    Checksum {
        layer: Layer,
        found: u16,
        expected: u16,
    },
    #[error("{layer}: EtherType 0x{found:04x}, expected 0x{expected:04x}")]
    EtherType {
        layer: Layer,
        found: u16,
        expected: u16,
    },
    #[error("{layer}: IP protocol {found}, expected {expected}")]
    Protocol {
        layer: Layer,
        found: u8,
        expected: u8,
    },
    #[error("{layer}: fragment (offset {offset} bytes, more fragments: {more}) not supported")]
    Fragment {
        layer: Layer,
        offset: usize,
        more: bool,
    },
    #[error("VXLAN header: I flag not set (flags 0x{flags:02x})")]
    VxlanNoVniFlag { flags: u8 },
    #[error(
        "ARP: hardware type {hardware}, protocol 0x{protocol:04x}, address lengths \
         {hardware_len}/{protocol_len}: only Ethernet/IPv4 (1, 0x0800, 6/4) is supported"
    )]
    ArpFormat {
        hardware: u16,
        protocol: u16,
        hardware_len: u8,
        protocol_len: u8,
    },
    #[error("{layer}: unsupported {field} {value}")]
    Unsupported {
        layer: Layer,
        field: &'static str,
        value: u32,
    },
}

impl WireError {
    /// The same error, reported against `layer` (e.g. an IPv4 error found while
    /// decapsulating becomes an "inner IPv4" error).
    #[must_use]
    pub fn in_layer(self, layer: Layer) -> Self {
        let mut err = self;
        match &mut err {
            WireError::Truncated { layer: l, .. }
            | WireError::Version { layer: l, .. }
            | WireError::HeaderLenTooShort { layer: l, .. }
            | WireError::HeaderLenTooLong { layer: l, .. }
            | WireError::TotalLenExceedsBuffer { layer: l, .. }
            | WireError::Checksum { layer: l, .. }
            | WireError::EtherType { layer: l, .. }
            | WireError::Protocol { layer: l, .. }
            | WireError::Fragment { layer: l, .. }
            | WireError::Unsupported { layer: l, .. } => *l = layer,
            WireError::VxlanNoVniFlag { .. } | WireError::ArpFormat { .. } => {}
        }
        err
    }

    /// The layer this error is about.
    pub fn layer(&self) -> Layer {
        match self {
            WireError::Truncated { layer, .. }
            | WireError::Version { layer, .. }
            | WireError::HeaderLenTooShort { layer, .. }
            | WireError::HeaderLenTooLong { layer, .. }
            | WireError::TotalLenExceedsBuffer { layer, .. }
            | WireError::Checksum { layer, .. }
            | WireError::EtherType { layer, .. }
            | WireError::Protocol { layer, .. }
            | WireError::Fragment { layer, .. }
            | WireError::Unsupported { layer, .. } => *layer,
            WireError::VxlanNoVniFlag { .. } => Layer::Vxlan,
            WireError::ArpFormat { .. } => Layer::Arp,
        }
    }
}

/// The caller's buffer cannot hold the encapsulated packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    #[error("encapsulation needs {need} bytes of headroom before the inner packet, have {have}")]
    Headroom { need: usize, have: usize },
    #[error("inner packet {start}..{end} lies outside the buffer of {len} bytes")]
    OutOfBuffer {
        start: usize,
        end: usize,
        len: usize,
    },
    #[error("encapsulated packet of {len} bytes exceeds the IPv4 maximum of 65535")]
    TooLong { len: usize },
}

/// Checks a buffer-length precondition with a typed error.
#[inline]
pub(crate) fn need(layer: Layer, need: usize, have: usize) -> Result<(), WireError> {
    if have < need {
        Err(WireError::Truncated { layer, need, have })
    } else {
        Ok(())
    }
}

/// Checks that `buf` holds `inner_len` bytes at `inner_start` with `headroom` bytes
/// before them; returns the end of the inner packet.
#[inline]
pub(crate) fn check_geometry(
    buf_len: usize,
    inner_start: usize,
    inner_len: usize,
    headroom: usize,
) -> Result<usize, EncapError> {
    if inner_start < headroom {
        return Err(EncapError::Headroom {
            need: headroom,
            have: inner_start,
        });
    }
    match inner_start.checked_add(inner_len) {
        Some(end) if end <= buf_len => Ok(end),
        _ => Err(EncapError::OutOfBuffer {
            start: inner_start,
            end: inner_start.saturating_add(inner_len),
            len: buf_len,
        }),
    }
}
