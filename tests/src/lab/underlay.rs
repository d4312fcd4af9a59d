//! How the lab's underlay carries packets between nodes: a veth pair as it is, or shaped
//! to stand for a real NIC (docs/bench.md, "Underlay modes").
//!
//! A veth pair hands the peer the sender's skb: 64 KB GSO super-packets cross whole and
//! checksums stay unfinished (`CHECKSUM_PARTIAL`). No NIC does either, and weft's
//! receive path behaves differently on MTU frames, so the bench and the tests can shape
//! the underlay:
//!
//! | mode | node `eth0` (every node) | underlay bridge port |
//! |---|---|---|
//! | `whole` | as it is | plain bridging |
//! | `nic` | no TSO/GSO/UDP segmentation, `tx off` (the sender completes checksums), `gro on` | XDP: tunnel frames redirected to the peer's port |
//! | `nic-nogro` | as `nic`, `gro off`, an XDP_PASS program (veth needs NAPI to take redirected frames) | as `nic` |
//! | `partial` | no TSO/GSO/UDP segmentation, checksum offload on (checksums left partial) | plain bridging |
//!
//! The XDP redirect is what makes `nic` a NIC: frames redirected by XDP reach the
//! receiving veth as `xdp_frame`s and are rebuilt as fresh skbs before GRO, as a NIC
//! driver builds them; plain bridging keeps the sender's skb and its marks (the kernel
//! refuses UDP GRO for skbs it encapsulated itself). The programs are assembled and
//! attached here (weft-bpf) through XDP links, only on the lab's own devices, and stay
//! attached exactly as long as the returned [`Underlay`] lives.

use std::os::fd::OwnedFd;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use weft_bpf::{self as bpf, Insn, Size, R0, R1, R2, R3, R4};

use super::*;

/// How the underlay carries the nodes' packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UnderlayMode {
    /// veth as it is: 64 KB super-packets cross whole (kind-style clusters).
    Whole,
    /// MTU frames, checksums completed by the sender, fresh skbs into GRO (a NIC).
    Nic,
    /// As `nic`, GRO off at the receiver.
    NicNogro,
    /// MTU frames whose checksums were left partial (a sender without TSO over veth or
    /// virtio), plain bridging.
    Partial,
}

impl UnderlayMode {
    pub const ALL: [UnderlayMode; 4] = [
        UnderlayMode::Whole,
        UnderlayMode::Nic,
        UnderlayMode::NicNogro,
        UnderlayMode::Partial,
    ];

    /// The name in flags, the bench's JSON and its table.
    pub fn name(self) -> &'static str {
        match self {
            UnderlayMode::Whole => "whole",
            UnderlayMode::Nic => "nic",
            UnderlayMode::NicNogro => "nic-nogro",
            UnderlayMode::Partial => "partial",
        }
    }

    /// Whether tunnel frames bypass the bridge through the XDP redirect.
    pub fn redirects(self) -> bool {
        matches!(self, UnderlayMode::Nic | UnderlayMode::NicNogro)
    }

    /// The `ethtool -K` settings of every node's underlay `eth0` (empty: left as is).
    fn offloads(self) -> &'static [(&'static str, &'static str)] {
        const NO_SEGMENTATION: [(&str, &str); 5] = [
            ("tso", "off"),
            ("gso", "off"),
            ("tx-udp_tnl-segmentation", "off"),
            ("tx-udp_tnl-csum-segmentation", "off"),
            ("tx-udp-segmentation", "off"),
        ];
        const NIC: [(&str, &str); 7] = [
            NO_SEGMENTATION[0],
            NO_SEGMENTATION[1],
            NO_SEGMENTATION[2],
            NO_SEGMENTATION[3],
            NO_SEGMENTATION[4],
            ("tx", "off"),
            ("gro", "on"),
        ];
        const NIC_NOGRO: [(&str, &str); 7] = [
            NO_SEGMENTATION[0],
            NO_SEGMENTATION[1],
            NO_SEGMENTATION[2],
            NO_SEGMENTATION[3],
            NO_SEGMENTATION[4],
            ("tx", "off"),
            ("gro", "off"),
        ];
        const PARTIAL: [(&str, &str); 6] = [
            NO_SEGMENTATION[0],
            NO_SEGMENTATION[1],
            NO_SEGMENTATION[2],
            NO_SEGMENTATION[3],
            NO_SEGMENTATION[4],
            ("tx", "on"),
        ];
        match self {
            UnderlayMode::Whole => &[],
            UnderlayMode::Nic => &NIC,
            UnderlayMode::NicNogro => &NIC_NOGRO,
            UnderlayMode::Partial => &PARTIAL,
        }
    }

    /// Sets only this mode's `ethtool -K` offloads on `node`'s underlay `eth0` (read
    /// back; no XDP): e.g. a NIC-like sender whose frames a capture on the bridge port
    /// should see.
    pub fn set_node_offloads(self, node: &Netns) -> anyhow::Result<()> {
        set_offloads(node, "eth0", self.offloads())
    }

    /// Shapes a two-node [`Lab`]'s underlay (its port carries the VXLAN traffic).
    /// Call it before weftd starts (see [`Lab::start_on`]), so weftd sees the underlay
    /// it will run on.
    pub fn apply(self, lab: &Lab) -> anyhow::Result<Underlay> {
        let nodes: Vec<Netns> = (1..=lab.state().nodes.len())
            .map(|n| lab.node_ns(n))
            .collect::<anyhow::Result<_>>()?;
        let nodes: Vec<&Netns> = nodes.iter().collect();
        self.apply_nodes(&lab.underlay(), &nodes, lab.state().port)
    }

    /// Shapes the underlay of nodes laid out as the lab lays them out: node `i` (1-based,
    /// `nodes[i - 1]`) has `eth0` paired with port `n<i>` of a bridge in `underlay`.
    /// The redirect needs exactly two nodes (each port redirects to the other).
    pub fn apply_nodes(
        self,
        underlay: &Netns,
        nodes: &[&Netns],
        vxlan_port: u16,
    ) -> anyhow::Result<Underlay> {
        let mut links = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if self == UnderlayMode::NicNogro {
                // A veth takes XDP-redirected frames only with NAPI on, which it turns on
                // for GRO or for an XDP program; without GRO, this program keeps it on.
                // Attaching it turns GRO on, so the offloads are set after it.
                links.push(attach(node, "eth0", "weft_ul_pass", pass_program())?);
            }
            self.set_node_offloads(node)
                .with_context(|| format!("{} underlay: node {}", self.name(), i + 1))?;
        }
        if self.redirects() {
            anyhow::ensure!(
                nodes.len() == 2,
                "the {} underlay redirects between two nodes; this lab has {}",
                self.name(),
                nodes.len()
            );
            for (from, to) in [("n1", "n2"), ("n2", "n1")] {
                let target = ifindex(underlay, to)?;
                let program = redirect_program(vxlan_port, target);
                links.push(attach(underlay, from, "weft_ul_redir", program)?);
            }
        }
        Ok(Underlay {
            mode: self,
            redirecting: self
                .redirects()
                .then(|| (underlay.name().to_string(), ["n1", "n2"])),
            _links: links,
        })
    }

    /// Shapes a direct veth pair (two namespaces, `eth0` each; no bridge to redirect
    /// through): only the offloads of both ends.
    pub fn apply_pair(self, a: &Netns, b: &Netns) -> anyhow::Result<Underlay> {
        let mut links = Vec::new();
        for ns in [a, b] {
            if self == UnderlayMode::NicNogro {
                links.push(attach(ns, "eth0", "weft_ul_pass", pass_program())?);
            }
            set_offloads(ns, "eth0", self.offloads())?;
        }
        Ok(Underlay {
            mode: self,
            redirecting: None,
            _links: links,
        })
    }
}

impl std::fmt::Display for UnderlayMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A shaped underlay: its XDP programs stay attached while this lives.
#[derive(Debug)]
pub struct Underlay {
    mode: UnderlayMode,
    /// The underlay namespace and the bridge ports whose XDP program redirects.
    redirecting: Option<(String, [&'static str; 2])>,
    _links: Vec<OwnedFd>,
}

impl Underlay {
    pub fn mode(&self) -> UnderlayMode {
        self.mode
    }

    /// How many frames the XDP programs have redirected past the bridge so far (the
    /// ports' `xdp_redirect` counters); `None` when this underlay does not redirect.
    pub fn redirected(&self) -> anyhow::Result<Option<u64>> {
        let Some((ns, ports)) = &self.redirecting else {
            return Ok(None);
        };
        let ns = Netns::existing(ns);
        let mut total = 0;
        for port in ports {
            total += driver_stats(&ns, port)?
                .iter()
                .filter(|(name, _)| name.ends_with("_xdp_redirect"))
                .map(|(_, n)| n)
                .sum::<u64>();
        }
        Ok(Some(total))
    }
}

impl Lab {
    /// [`Lab::start`] on a shaped underlay: the underlay is shaped after the nodes exist
    /// and before any weftd starts, so weftd probes the underlay it runs on. Keep the
    /// [`Underlay`] as long as the lab.
    pub fn start_on(spec: LabSpec, mode: UnderlayMode) -> anyhow::Result<(Lab, Underlay)> {
        let start_weftd = spec.start_weftd;
        let mut lab = Lab::start(LabSpec {
            start_weftd: false,
            ..spec
        })?;
        let underlay = mode.apply(&lab)?;
        if start_weftd {
            let weft = lab.weft_nodes();
            for &n in &weft {
                lab.start_weftd(n)?;
            }
            for &n in &weft {
                lab.wait_weftd_ready(n)?;
            }
            lab.sync_kernel_nodes()?;
        }
        Ok((lab, underlay))
    }
}

/// `ethtool -K ifname k v ...`, then checks with `ethtool -k` that every setting took
/// (ethtool succeeds when the kernel quietly keeps a feature fixed).
fn set_offloads(ns: &Netns, ifname: &str, settings: &[(&str, &str)]) -> anyhow::Result<()> {
    if settings.is_empty() {
        return Ok(());
    }
    let mut args = vec!["-K", ifname];
    for (feature, value) in settings {
        args.extend([*feature, *value]);
    }
    ns.run("ethtool", &args)
        .with_context(|| format!("ethtool {}", args.join(" ")))?;
    let now = features(ns, ifname)?;
    for (feature, value) in settings {
        let long = long_feature_name(feature);
        let actual = now
            .get(long)
            .with_context(|| format!("{ifname} has no feature {long}"))?;
        anyhow::ensure!(
            actual == value,
            "{ifname}: {long} is {actual} after `ethtool -K {ifname} {feature} {value}`"
        );
    }
    Ok(())
}

/// `ethtool -k`'s names for the short names `ethtool -K` takes.
fn long_feature_name(short: &str) -> &str {
    match short {
        "tso" => "tcp-segmentation-offload",
        "gso" => "generic-segmentation-offload",
        "gro" => "generic-receive-offload",
        "tx" => "tx-checksumming",
        other => other,
    }
}

/// `ethtool -k ifname`: every feature's state (`on`/`off`), by its long name.
pub fn features(ns: &Netns, ifname: &str) -> anyhow::Result<HashMap<String, String>> {
    let text = ns.run("ethtool", &["-k", ifname])?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.trim().split_once(':')?;
            let state = rest.split_whitespace().next()?;
            matches!(state, "on" | "off").then(|| (name.to_string(), state.to_string()))
        })
        .collect())
}

/// `ethtool -S ifname`: the driver's counters (for a veth: `rx_queue_0_xdp_redirect`,
/// `rx_queue_0_xdp_packets`, ...).
pub fn driver_stats(ns: &Netns, ifname: &str) -> anyhow::Result<HashMap<String, u64>> {
    let text = ns.run("ethtool", &["-S", ifname])?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (name, value) = line.trim().split_once(':')?;
            Some((name.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

/// A link's packet and byte counters (`ip -s link`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// The counters of `ifname` in `ns`.
pub fn link_counters(ns: &Netns, ifname: &str) -> anyhow::Result<LinkCounters> {
    let json = ns.ip(&["-j", "-s", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&json)
        .with_context(|| format!("parsing `ip -j -s link show dev {ifname}`"))?;
    let stats = v
        .get(0)
        .and_then(|l| l.get("stats64"))
        .with_context(|| format!("no stats64 for {ifname} in {json}"))?;
    let get = |dir: &str, what: &str| {
        stats
            .pointer(&format!("/{dir}/{what}"))
            .and_then(|n| n.as_u64())
            .with_context(|| format!("no {dir}.{what} for {ifname} in {json}"))
    };
    Ok(LinkCounters {
        rx_packets: get("rx", "packets")?,
        rx_bytes: get("rx", "bytes")?,
        tx_packets: get("tx", "packets")?,
        tx_bytes: get("tx", "bytes")?,
    })
}

/// The ifindex of `ifname` inside `ns` (what `bpf_redirect` and the XDP link take).
fn ifindex(ns: &Netns, ifname: &str) -> anyhow::Result<u32> {
    let name = ifname.to_string();
    ns.in_thread(move || {
        // The ioctl behind it uses a socket of this thread's namespace.
        nix::net::if_::if_nametoindex(name.as_str()).with_context(|| format!("no interface {name}"))
    })
    .with_context(|| format!("ifindex of {ifname} in {}", ns.name()))
}

/// Loads `program` and attaches it to `ifname` in `ns` with an XDP link.
fn attach(
    ns: &Netns,
    ifname: &str,
    name: &'static str,
    program: Vec<Insn>,
) -> anyhow::Result<OwnedFd> {
    let prog = bpf::load_xdp(name, &program)?;
    let index = ifindex(ns, ifname)?;
    // The link resolves the ifindex in the calling thread's namespace: attach from a
    // thread inside the lab's namespace, never from ours.
    ns.in_thread(move || Ok(bpf::attach_xdp(name, &prog, index)?))
        .with_context(|| format!("XDP on {ifname} in {}", ns.name()))
}

/// `return XDP_PASS;`
fn pass_program() -> Vec<Insn> {
    vec![bpf::mov_imm(R0, bpf::xdp::PASS), bpf::exit()]
}

/// Redirects IPv4 tunnel frames (UDP to `vxlan_port`, and IP protocol 4, IPIP) to
/// `target`'s transmit, skipping the bridge; passes everything else (ARP, etcd, ...)
/// on to it. IPv4 headers with options are passed too (tunnel traffic has none).
fn redirect_program(vxlan_port: u16, target: u32) -> Vec<Insn> {
    // Packet bytes as a little- or big-endian load sees them.
    let be16 = |v: u16| i32::from(u16::from_ne_bytes(v.to_be_bytes()));
    const ETH_TYPE: i16 = 12;
    const IP_VERSION_IHL: i16 = 14;
    const IP_PROTOCOL: i16 = 14 + 9;
    const UDP_DEST: i16 = 14 + 20 + 2;
    const NEEDED: i32 = 14 + 20 + 4;
    const PASS: usize = 18;
    const REDIRECT: usize = 14;
    // Jump offsets count from the instruction after the jump.
    let to = |from: usize, target: usize| (target - from - 1) as i16;
    let program = vec![
        /* 0 */ bpf::load(Size::W, R2, R1, bpf::xdp::MD_DATA),
        /* 1 */ bpf::load(Size::W, R3, R1, bpf::xdp::MD_DATA_END),
        /* 2 */ bpf::mov_reg(R4, R2),
        /* 3 */ bpf::add_imm(R4, NEEDED),
        /* 4 */ bpf::jgt_reg(R4, R3, to(4, PASS)),
        /* 5 */ bpf::load(Size::H, R4, R2, ETH_TYPE),
        /* 6 */ bpf::jne_imm(R4, be16(0x0800), to(6, PASS)),
        /* 7 */ bpf::load(Size::B, R4, R2, IP_VERSION_IHL),
        /* 8 */ bpf::jne_imm(R4, 0x45, to(8, PASS)),
        /* 9 */ bpf::load(Size::B, R4, R2, IP_PROTOCOL),
        /* 10 */ bpf::jeq_imm(R4, 4, to(10, REDIRECT)),
        /* 11 */ bpf::jne_imm(R4, 17, to(11, PASS)),
        /* 12 */ bpf::load(Size::H, R4, R2, UDP_DEST),
        /* 13 */ bpf::jne_imm(R4, be16(vxlan_port), to(13, PASS)),
        /* 14 */ bpf::mov_imm(R1, target as i32),
        /* 15 */ bpf::mov_imm(R2, 0),
        /* 16 */ bpf::call(bpf::helper::REDIRECT),
        /* 17 */ bpf::exit(),
        /* 18 */ bpf::mov_imm(R0, bpf::xdp::PASS),
        /* 19 */ bpf::exit(),
    ];
    debug_assert_eq!(program.len(), PASS + 2);
    program
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_have_their_documented_names() {
        let names: Vec<&str> = UnderlayMode::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names, ["whole", "nic", "nic-nogro", "partial"]);
        for mode in UnderlayMode::ALL {
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{}\"", mode.name()));
            let flag = <UnderlayMode as clap::ValueEnum>::from_str(mode.name(), false).unwrap();
            assert_eq!(flag, mode);
        }
    }

    #[test]
    fn nic_modes_complete_checksums_and_partial_leaves_them() {
        let get = |mode: UnderlayMode, f: &str| {
            mode.offloads()
                .iter()
                .find(|(name, _)| *name == f)
                .map(|(_, v)| *v)
        };
        assert_eq!(get(UnderlayMode::Nic, "tx"), Some("off"));
        assert_eq!(get(UnderlayMode::Nic, "gro"), Some("on"));
        assert_eq!(get(UnderlayMode::NicNogro, "gro"), Some("off"));
        assert_eq!(get(UnderlayMode::Partial, "tx"), Some("on"));
        for mode in [
            UnderlayMode::Nic,
            UnderlayMode::NicNogro,
            UnderlayMode::Partial,
        ] {
            assert_eq!(get(mode, "tso"), Some("off"), "{mode}");
            assert_eq!(get(mode, "tx-udp-segmentation"), Some("off"), "{mode}");
        }
        assert!(UnderlayMode::Whole.offloads().is_empty());
    }

    #[test]
    fn the_redirect_program_jumps_inside_itself() {
        let program = redirect_program(8472, 7);
        assert_eq!(program.len(), 20);
        // Every jump lands on an instruction of the program.
        for (pc, insn) in program.iter().enumerate() {
            let bytes: [u8; 8] =
                // SAFETY: `Insn` is `repr(C)`, 8 bytes, with no padding.
                unsafe { std::mem::transmute::<Insn, [u8; 8]>(*insn) };
            let class_jmp = bytes[0] & 0x07 == 0x05;
            let op = bytes[0] & 0xf0;
            if class_jmp && op != 0x80 && op != 0x90 {
                let off = i16::from_ne_bytes([bytes[2], bytes[3]]);
                let target = pc as i64 + 1 + i64::from(off);
                assert!((0..program.len() as i64).contains(&target), "pc {pc}");
            }
        }
    }
}
