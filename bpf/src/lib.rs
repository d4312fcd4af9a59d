//! Just enough eBPF for weft's programs: a few instruction encoders, `BPF_PROG_LOAD` with the
//! verifier's log, a tcx link (`BPF_LINK_CREATE`, kernel ≥ 6.6), a loaded program's
//! id (for the clsact/cls_bpf attachment of older kernels, made over netlink by
//! `weft-netlink`'s `tc` module), and an XDP link (kernel ≥ 5.9; the bench's underlay
//! shaping uses it).
//!
//! Why not `aya` or `libbpf-rs`: the one program weftd loads is 40 instructions whose
//! constants (our PublicIP, the underlay's ifindex) are known only at start, so it is
//! assembled here, at run time, from Rust; no BPF toolchain, ELF or BTF is involved,
//! and two syscalls are less than either crate.

use std::io;
use std::os::fd::{FromRawFd as _, OwnedFd};

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

/// Registers: r0 return value, r1–r5 arguments (clobbered by calls), r6–r9 kept across
/// calls, r10 the read-only frame pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg(u8);
pub const R0: Reg = Reg(0);
pub const R1: Reg = Reg(1);
pub const R2: Reg = Reg(2);
pub const R3: Reg = Reg(3);
pub const R4: Reg = Reg(4);
pub const R5: Reg = Reg(5);
pub const R6: Reg = Reg(6);
pub const R7: Reg = Reg(7);
pub const R10: Reg = Reg(10);

/// Memory access widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    B = 0x10,
    H = 0x08,
    W = 0x00,
}

const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_JMP: u8 = 0x05;
const CLASS_ALU64: u8 = 0x07;
const MODE_ABS: u8 = 0x20;
const MODE_IND: u8 = 0x40;
const MODE_MEM: u8 = 0x60;
const SRC_K: u8 = 0x00;
const SRC_X: u8 = 0x08;
const OP_ADD: u8 = 0x00;
const OP_OR: u8 = 0x40;
const OP_LSH: u8 = 0x60;
const OP_RSH: u8 = 0x70;
const OP_SUB: u8 = 0x10;
const OP_MOD: u8 = 0x90;
const OP_AND: u8 = 0x50;
const OP_XOR: u8 = 0xa0;
const OP_MOV: u8 = 0xb0;
const JMP_JEQ: u8 = 0x10;
const JMP_JGT: u8 = 0x20;
const JMP_JNE: u8 = 0x50;
const JMP_CALL: u8 = 0x80;
const JMP_EXIT: u8 = 0x90;

fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst.0 | (src.0 << 4),
        off,
        imm,
    }
}

/// `dst = imm` (64-bit, sign-extended).
pub fn mov_imm(dst: Reg, imm: i32) -> Insn {
    insn(CLASS_ALU64 | OP_MOV | SRC_K, dst, R0, 0, imm)
}
/// `dst = src`.
pub fn mov_reg(dst: Reg, src: Reg) -> Insn {
    insn(CLASS_ALU64 | OP_MOV | SRC_X, dst, src, 0, 0)
}
/// `dst += imm`.
pub fn add_imm(dst: Reg, imm: i32) -> Insn {
    insn(CLASS_ALU64 | OP_ADD | SRC_K, dst, R0, 0, imm)
}
/// `dst |= imm`.
pub fn or_imm(dst: Reg, imm: i32) -> Insn {
    insn(CLASS_ALU64 | OP_OR | SRC_K, dst, R0, 0, imm)
}
/// `dst <<= imm`.
pub fn lsh_imm(dst: Reg, imm: i32) -> Insn {
    insn(CLASS_ALU64 | OP_LSH | SRC_K, dst, R0, 0, imm)
}
/// `dst += src`.
pub fn add_reg(dst: Reg, src: Reg) -> Insn {
    insn(CLASS_ALU64 | OP_ADD | SRC_X, dst, src, 0, 0)
}
/// `dst -= src`.
pub fn sub_reg(dst: Reg, src: Reg) -> Insn {
    insn(CLASS_ALU64 | OP_SUB | SRC_X, dst, src, 0, 0)
}
/// `dst >>= imm` (logical).
pub fn rsh_imm(dst: Reg, imm: i32) -> Insn {
    insn(CLASS_ALU64 | OP_RSH | SRC_K, dst, R0, 0, imm)
}
/// `dst &= imm`.
pub fn and_imm(dst: Reg, imm: i32) -> Insn {
    insn(CLASS_ALU64 | OP_AND | SRC_K, dst, R0, 0, imm)
}
/// `dst %= imm` (unsigned; `imm` must not be 0, which the verifier refuses).
pub fn mod_imm(dst: Reg, imm: i32) -> Insn {
    insn(CLASS_ALU64 | OP_MOD | SRC_K, dst, R0, 0, imm)
}
/// `dst ^= src`.
pub fn xor_reg(dst: Reg, src: Reg) -> Insn {
    insn(CLASS_ALU64 | OP_XOR | SRC_X, dst, src, 0, 0)
}
/// `r0 = packet[offset]` of `size` (the legacy packet load of socket filters: r6 must
/// hold the context; a load past the packet's end ends the program with 0).
pub fn load_abs(size: Size, offset: i32) -> Insn {
    insn(CLASS_LD | MODE_ABS | size as u8, R0, R0, 0, offset)
}
/// `r0 = packet[src + offset]` of `size`, as [`load_abs`] at an offset in a register.
pub fn load_ind(size: Size, src: Reg, offset: i32) -> Insn {
    insn(CLASS_LD | MODE_IND | size as u8, R0, src, 0, offset)
}
/// `dst = imm` (three instructions instead of the two-slot `lddw`). The last one, an
/// OR, sign-extends its 32-bit immediate, so bit 31 must be clear (true of every flag
/// word used here; checked).
pub fn mov_imm64(dst: Reg, imm: u64) -> [Insn; 3] {
    assert!(
        imm & 0x8000_0000 == 0,
        "mov_imm64 cannot build {imm:#x} (bit 31 set)"
    );
    [
        mov_imm(dst, (imm >> 32) as i32),
        lsh_imm(dst, 32),
        or_imm(dst, imm as u32 as i32),
    ]
}
/// `dst = *(size *)(src + off)`.
pub fn load(size: Size, dst: Reg, src: Reg, off: i16) -> Insn {
    insn(CLASS_LDX | MODE_MEM | size as u8, dst, src, off, 0)
}
/// `*(size *)(dst + off) = src`.
pub fn store(size: Size, dst: Reg, off: i16, src: Reg) -> Insn {
    insn(CLASS_STX | MODE_MEM | size as u8, dst, src, off, 0)
}
/// `*(size *)(dst + off) = imm`.
pub fn store_imm(size: Size, dst: Reg, off: i16, imm: i32) -> Insn {
    insn(CLASS_ST | MODE_MEM | size as u8, dst, R0, off, imm)
}
/// `if dst != imm goto pc + 1 + off`.
pub fn jne_imm(dst: Reg, imm: i32, off: i16) -> Insn {
    insn(CLASS_JMP | JMP_JNE | SRC_K, dst, R0, off, imm)
}
/// `if dst == imm goto pc + 1 + off`.
pub fn jeq_imm(dst: Reg, imm: i32, off: i16) -> Insn {
    insn(CLASS_JMP | JMP_JEQ | SRC_K, dst, R0, off, imm)
}
/// `if dst > imm goto pc + 1 + off` (unsigned).
pub fn jgt_imm(dst: Reg, imm: i32, off: i16) -> Insn {
    insn(CLASS_JMP | JMP_JGT | SRC_K, dst, R0, off, imm)
}
/// `if dst > src goto pc + 1 + off` (unsigned).
pub fn jgt_reg(dst: Reg, src: Reg, off: i16) -> Insn {
    insn(CLASS_JMP | JMP_JGT | SRC_X, dst, src, off, 0)
}
/// Calls helper number `helper`; arguments in r1–r5, result in r0.
pub fn call(helper: i32) -> Insn {
    insn(CLASS_JMP | JMP_CALL, R0, R0, 0, helper)
}
/// Returns r0.
pub fn exit() -> Insn {
    insn(CLASS_JMP | JMP_EXIT, R0, R0, 0, 0)
}

/// Helper numbers (`enum bpf_func_id`).
pub mod helper {
    pub const SKB_STORE_BYTES: i32 = 9;
    pub const REDIRECT: i32 = 23;
    pub const SKB_LOAD_BYTES: i32 = 26;
    pub const SKB_ADJUST_ROOM: i32 = 50;
    pub const REDIRECT_NEIGH: i32 = 152;
}

/// `BPF_PROG_TYPE_SOCKET_FILTER`: a socket filter, also what TUN runs to steer packets.
pub const PROG_TYPE_SOCKET_FILTER: u32 = 1;
/// `BPF_PROG_TYPE_SCHED_CLS`: a tc classifier, run in direct-action mode by tcx.
pub const PROG_TYPE_SCHED_CLS: u32 = 3;
/// `BPF_PROG_TYPE_XDP`: runs on a device's receive path, before any skb exists.
pub const PROG_TYPE_XDP: u32 = 6;
/// `BPF_TCX_INGRESS`.
pub const ATTACH_TCX_INGRESS: u32 = 46;
/// `BPF_XDP`: the attach type of an XDP link.
pub const ATTACH_XDP: u32 = 37;

/// XDP verdicts (`enum xdp_action`).
pub mod xdp {
    pub const DROP: i32 = 1;
    pub const PASS: i32 = 2;
    pub const REDIRECT: i32 = 4;
    /// `struct xdp_md` offsets: the packet's first byte and one past its last.
    pub const MD_DATA: i16 = 0;
    pub const MD_DATA_END: i16 = 4;
}

const CMD_PROG_LOAD: libc::c_long = 5;
const CMD_PROG_TEST_RUN: libc::c_long = 10;
const CMD_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const CMD_LINK_CREATE: libc::c_long = 28;
/// Bytes of `union bpf_attr` we pass (every field we do not set is zero, which the
/// kernel requires of fields it knows and ignores).
const ATTR_LEN: usize = 144;

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("the kernel refused the eBPF program {name}: {source}{}", verifier_tail(.log))]
    Load {
        name: &'static str,
        #[source]
        source: io::Error,
        log: String,
    },
    #[error("attaching {name} to tcx ingress of ifindex {ifindex}: {source}")]
    Attach {
        name: &'static str,
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("attaching the XDP program {name} to ifindex {ifindex}: {source}")]
    AttachXdp {
        name: &'static str,
        ifindex: u32,
        #[source]
        source: io::Error,
    },
}

fn verifier_tail(log: &str) -> String {
    let log = log.trim();
    if log.is_empty() {
        String::new()
    } else {
        // The verifier's last lines say what it rejected.
        let tail: Vec<&str> = log.lines().rev().take(4).collect();
        format!(
            " (verifier: {})",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    }
}

#[repr(C, align(8))]
struct Attr([u8; ATTR_LEN]);

impl Attr {
    fn new() -> Attr {
        Attr([0; ATTR_LEN])
    }
    fn u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }
    fn u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }
}

fn bpf_call(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-initialised, 8-aligned `union bpf_attr` image of ATTR_LEN
    // bytes that lives across the call; every pointer stored in it (instructions,
    // license, log buffer, info buffer) points at memory the caller keeps alive until
    // we return.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), ATTR_LEN) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf_call(cmd, attr)?;
    // SAFETY: on success these commands return a new file descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// The ifindex a tcx link is attached to, or 0 once it was detached (`bpftool link
/// detach`) or its device deleted: the kernel clears the link's device then, while the
/// descriptor stays valid.
pub fn tcx_link_ifindex(link: &OwnedFd) -> io::Result<u32> {
    use std::os::fd::AsRawFd as _;
    // `struct bpf_link_info`: type, id, prog_id, then (8-aligned) the union whose tcx
    // member starts with the ifindex. Asking for fewer bytes than the kernel's struct is
    // allowed; it copies what fits.
    const TCX_IFINDEX: usize = 16;
    #[repr(C, align(8))]
    struct LinkInfo([u8; 64]);
    let mut info = LinkInfo([0; 64]);
    let mut attr = Attr::new();
    attr.u32(0, link.as_raw_fd() as u32);
    attr.u32(4, info.0.len() as u32);
    attr.u64(8, info.0.as_mut_ptr() as u64);
    bpf_call(CMD_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let bytes: [u8; 4] = info.0[TCX_IFINDEX..TCX_IFINDEX + 4]
        .try_into()
        .expect("four bytes");
    Ok(u32::from_ne_bytes(bytes))
}

/// The id the kernel gave a loaded program (`bpf_prog_info.id`), as `bpftool prog` and
/// tc's `TCA_BPF_ID` show it.
pub fn program_id(program: &OwnedFd) -> io::Result<u32> {
    use std::os::fd::AsRawFd as _;
    // `struct bpf_prog_info`: type, then id; fewer bytes than the kernel's struct is fine.
    #[repr(C, align(8))]
    struct ProgInfo([u8; 16]);
    let mut info = ProgInfo([0; 16]);
    let mut attr = Attr::new();
    attr.u32(0, program.as_raw_fd() as u32);
    attr.u32(4, info.0.len() as u32);
    attr.u64(8, info.0.as_mut_ptr() as u64);
    bpf_call(CMD_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let bytes: [u8; 4] = info.0[4..8].try_into().expect("four bytes");
    Ok(u32::from_ne_bytes(bytes))
}

/// Runs `program` once on a copy of `packet` (`BPF_PROG_TEST_RUN`; for a tc classifier,
/// an skb of that Ethernet frame) and returns the program's return value. Nothing is
/// sent: a redirect is only reported. Lets a caller ask the kernel whether the helpers'
/// flags it uses are accepted, which the verifier does not check.
pub fn test_run(program: &OwnedFd, packet: &[u8]) -> io::Result<u32> {
    use std::os::fd::AsRawFd as _;
    let mut attr = Attr::new();
    attr.u32(0, program.as_raw_fd() as u32);
    attr.u32(8, packet.len() as u32);
    attr.u64(16, packet.as_ptr() as u64);
    attr.u32(32, 1); // repeat
    bpf_call(CMD_PROG_TEST_RUN, &mut attr)?;
    let bytes: [u8; 4] = attr.0[4..8].try_into().expect("four bytes");
    Ok(u32::from_ne_bytes(bytes))
}

/// Loads `program` as a tc classifier; on refusal the error carries the verifier's verdict.
pub fn load_sched_cls(name: &'static str, program: &[Insn]) -> Result<OwnedFd, BpfError> {
    load_program(PROG_TYPE_SCHED_CLS, name, program)
}

/// Loads `program` as a socket filter (context `struct __sk_buff`); on refusal the error
/// carries the verifier's verdict.
pub fn load_socket_filter(name: &'static str, program: &[Insn]) -> Result<OwnedFd, BpfError> {
    load_program(PROG_TYPE_SOCKET_FILTER, name, program)
}

/// Loads `program` as an XDP program (context `struct xdp_md`, verdicts in [`xdp`]); on
/// refusal the error carries the verifier's verdict.
pub fn load_xdp(name: &'static str, program: &[Insn]) -> Result<OwnedFd, BpfError> {
    load_program(PROG_TYPE_XDP, name, program)
}

fn load_program(prog_type: u32, name: &'static str, program: &[Insn]) -> Result<OwnedFd, BpfError> {
    const LICENSE: &[u8] = b"Apache-2.0\0";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = Attr::new();
    attr.u32(0, prog_type);
    attr.u32(4, program.len() as u32);
    attr.u64(8, program.as_ptr() as u64);
    attr.u64(16, LICENSE.as_ptr() as u64);
    attr.u32(24, 1); // log_level: say why, if refused
    attr.u32(28, log.len() as u32);
    attr.u64(32, log.as_mut_ptr() as u64);
    let short_name = &name.as_bytes()[..name.len().min(15)];
    attr.0[48..48 + short_name.len()].copy_from_slice(short_name);
    bpf(CMD_PROG_LOAD, &mut attr).map_err(|source| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        BpfError::Load {
            name,
            source,
            log: String::from_utf8_lossy(&log[..end]).into_owned(),
        }
    })
}

/// Attaches a tc classifier to `ifindex`'s ingress with a tcx link: the program stays
/// attached exactly as long as the returned descriptor is open, so a weftd that exits or
/// is killed leaves nothing behind.
pub fn attach_tcx_ingress(
    name: &'static str,
    program: &OwnedFd,
    ifindex: u32,
) -> Result<OwnedFd, BpfError> {
    link_create(program, ifindex, ATTACH_TCX_INGRESS).map_err(|source| BpfError::Attach {
        name,
        ifindex,
        source,
    })
}

/// Attaches an XDP program to `ifindex` (in the calling thread's network namespace) in
/// the driver's mode, with an XDP link: the program stays attached exactly as long as
/// the returned descriptor is open, so a process that exits or is killed leaves nothing
/// behind.
pub fn attach_xdp(
    name: &'static str,
    program: &OwnedFd,
    ifindex: u32,
) -> Result<OwnedFd, BpfError> {
    // link_create.flags = 0: for XDP, the driver's native mode, where it has one.
    link_create(program, ifindex, ATTACH_XDP).map_err(|source| BpfError::AttachXdp {
        name,
        ifindex,
        source,
    })
}

/// `BPF_LINK_CREATE` of `program` on `ifindex` at `attach_type`, no flags: the link
/// lives as long as the returned descriptor.
fn link_create(program: &OwnedFd, ifindex: u32, attach_type: u32) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    let mut attr = Attr::new();
    attr.u32(0, program.as_raw_fd() as u32);
    attr.u32(4, ifindex);
    attr.u32(8, attach_type);
    bpf(CMD_LINK_CREATE, &mut attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_have_the_kernel_encoding() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        // r6 = r1 → bf 16 00 00 00 00 00 00 (as `llvm-objdump` prints it)
        let i = mov_reg(R6, R1);
        assert_eq!((i.code, i.regs), (0xbf, 0x16));
        // *(u16 *)(r10 - 22) = r1 → 6b 1a ea ff
        let i = store(Size::H, R10, -22, R1);
        assert_eq!((i.code, i.regs, i.off), (0x6b, 0x1a, -22));
        // r1 = *(u32 *)(r10 - 32) → 61 a1 e0 ff
        let i = load(Size::W, R1, R10, -32);
        assert_eq!((i.code, i.regs, i.off), (0x61, 0xa1, -32));
        assert_eq!(store_imm(Size::B, R10, -24, 0x45).code, 0x72);
        assert_eq!(jne_imm(R0, 0, 3).code, 0x55);
        assert_eq!(call(helper::REDIRECT_NEIGH).code, 0x85);
        assert_eq!(exit().code, 0x95);
        assert_eq!(add_imm(R3, -40).code, 0x07);
        assert_eq!(mov_imm(R2, 20).code, 0xb7);
        assert_eq!(lsh_imm(R4, 32).code, 0x67);
        assert_eq!(or_imm(R4, 1).code, 0x47);
        // if r4 > r3 goto +9 → 2d 34 09 00
        let i = jgt_reg(R4, R3, 9);
        assert_eq!((i.code, i.regs, i.off), (0x2d, 0x34, 9));
        assert_eq!(jeq_imm(R0, 4, 2).code, 0x15);
    }

    #[test]
    fn a_64_bit_constant_is_built_without_sign_extension_surprises() {
        // What the three instructions compute, for values whose low half has bit 31 set.
        for value in [0u64, 0x53, 0x0e00_0000_0000_0053, 0xffff_ffff_7fff_ffff] {
            let [hi, shift, or] = mov_imm64(R4, value);
            // What the kernel computes: each immediate sign-extended to 64 bits.
            let r = ((hi.imm as i64 as u64) << shift.imm) | or.imm as i64 as u64;
            assert_eq!(r, value, "{value:#x}");
        }
        assert!(std::panic::catch_unwind(|| mov_imm64(R4, 0x8000_0000)).is_err());
    }

    #[test]
    fn verifier_tail_keeps_the_last_lines() {
        assert_eq!(verifier_tail(""), "");
        assert_eq!(
            verifier_tail("a\nb\nc\nd\ne\n"),
            " (verifier: b | c | d | e)"
        );
    }
}
