//! How the kernel path's tc program hangs on the TAP (`--tc-attach`): a tcx link, a
//! clsact qdisc with a direct-action cls_bpf filter (kernels before 6.6), or none (the
//! userspace path). Every mode carries pod traffic between two weft nodes on both
//! backends and says which it took; a forced attachment that cannot be made fails the
//! start naming why; the netlink side is idempotent and names what is in its way.
//! Needs root.

mod dataplane_support;

use std::os::fd::AsFd as _;
use std::time::Duration;

use dataplane_support::{concurrent_transfers, in_netns, netconf, wait_ping, Cluster};
use weft_bpf as bpf;
use weft_config::TcAttach;
use weft_tests::netns::Netns;
use weft_tests::{require_root, run_prefix, wait_for};

const VXLAN: &str = r#"{"Type":"vxlan","VNI":1}"#;
const IPIP: &str = r#"{"Type":"ipip"}"#;

/// Two nodes in `mode`: each reports the attachment, the filter is really there for
/// `tc`, and streams both ways arrive intact.
fn carries_traffic(backend: &str, mode: TcAttach) {
    let cluster = Cluster::weft_with(2, &netconf(backend), |s| s.tc_attach = mode).unwrap();
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let expected = match mode {
        TcAttach::Tcx => Some("tcx"),
        TcAttach::Tc => Some("tc"),
        _ => None,
    };
    for node in [a, b] {
        // The data plane publishes what it runs on once its workers are up.
        let info = wait_for("the data plane's info", Duration::from_secs(10), || {
            node.metrics().dataplane()
        })
        .unwrap();
        assert_eq!(info.tc_attach, expected, "{mode}: {info:?}");
        assert_eq!(info.offloads.kernel_encap, expected.is_some(), "{info:?}");
        assert_eq!(
            info.transmit_path,
            if expected.is_some() {
                "kernel_encap"
            } else {
                "userspace"
            }
        );
    }
    let filters =
        a.ns.run("tc", &["filter", "show", "dev", "weft.encap", "ingress"]);
    match mode {
        TcAttach::Tc => {
            let text = filters.unwrap();
            assert!(
                text.contains("weft_encap") && text.contains("direct-action"),
                "{text}"
            );
        }
        TcAttach::Tcx => {
            // No clsact, no filter: the program hangs on a link.
            assert!(filters.unwrap_or_default().trim().is_empty());
        }
        _ => assert!(a.ns.ip(&["link", "show", "dev", "weft.encap"]).is_err()),
    }
    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();
    concurrent_transfers(a, b, 2, 1, 4 << 20);
}

macro_rules! mode_tests {
    ($($name:ident: $backend:expr, $mode:expr;)*) => {$(
        #[test]
        #[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
        fn $name() {
            if !require_root(stringify!($name)) {
                return;
            }
            carries_traffic($backend, $mode);
        }
    )*};
}

mode_tests! {
    vxlan_over_tcx: VXLAN, TcAttach::Tcx;
    vxlan_over_tc: VXLAN, TcAttach::Tc;
    vxlan_without_a_program: VXLAN, TcAttach::Off;
    ipip_over_tcx: IPIP, TcAttach::Tcx;
    ipip_over_tc: IPIP, TcAttach::Tc;
    ipip_without_a_program: IPIP, TcAttach::Off;
}

/// Forced means forced: when the TAP cannot be had (its name is taken by another
/// device), a forced `tc` or `tcx` fails the start naming the mode and the device,
/// while `auto` falls back to the userspace path and says why.
#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn a_forced_attachment_that_cannot_be_made_fails_the_start() {
    if !require_root("a_forced_attachment_that_cannot_be_made_fails_the_start") {
        return;
    }
    for mode in [TcAttach::Tc, TcAttach::Tcx, TcAttach::Auto] {
        let mut cluster = Cluster::new().unwrap();
        let i = cluster.add_node(1, &netconf(VXLAN)).unwrap();
        let node = &mut cluster.nodes[i];
        node.ns
            .ip(&["link", "add", "weft.encap", "type", "bridge"])
            .unwrap();
        node.settings.tc_attach = mode;
        let result = node.start();
        if mode == TcAttach::Auto {
            result.unwrap();
            let info = wait_for("the data plane's info", Duration::from_secs(10), || {
                node.metrics().dataplane()
            })
            .unwrap();
            assert_eq!((info.transmit_path, info.tc_attach), ("userspace", None));
            let reason = info.transmit_path_reason.unwrap_or_default();
            assert!(reason.contains("weft.encap"), "{reason}");
        } else {
            // The devices may be up before the TAP fails: the plane's own result says.
            let result = result.and_then(|()| node.running.take().expect("running").stop());
            let text = format!("{:#}", result.unwrap_err());
            assert!(
                text.contains(&format!("--tc-attach={mode}")) && text.contains("weft.encap"),
                "{mode}: {text}"
            );
        }
    }
}

/// The netlink side on a real device: clsact and the filter are added once and then
/// found in place (no second request), the filter reads back with its program's id, and
/// an `ingress` qdisc where clsact must go is named in the error.
#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn clsact_and_the_bpf_filter_are_idempotent_and_read_back() {
    if !require_root("clsact_and_the_bpf_filter_are_idempotent_and_read_back") {
        return;
    }
    let prefix = run_prefix();
    let ns = Netns::new(&format!("{prefix}-tc")).unwrap();
    // Both pairs live and die with the namespace.
    for (a, b) in [("t0", "t1"), ("t2", "t3")] {
        ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])
            .unwrap();
    }
    ns.run("tc", &["qdisc", "add", "dev", "t2", "ingress"])
        .unwrap();
    let result = in_netns(ns.name(), || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let netlink = weft_netlink::Netlink::connect()?;
            let t0 = netlink.require_link("t0").await?.index;
            let t2 = netlink.require_link("t2").await?.index;
            // r0 = 0 (TC_ACT_OK); exit.
            let program =
                bpf::load_sched_cls("weft_test_ok", &[bpf::mov_imm(bpf::R0, 0), bpf::exit()])?;
            let id = bpf::program_id(&program)?;
            let filter = weft_netlink::IngressBpf {
                program_fd: program.as_fd(),
                program_id: id,
                name: "weft_test_ok",
                priority: 1,
                handle: 1,
            };
            let first = (
                netlink.ensure_clsact(t0).await?,
                netlink.ensure_ingress_bpf(t0, &filter).await?,
            );
            let again = (
                netlink.ensure_clsact(t0).await?,
                netlink.ensure_ingress_bpf(t0, &filter).await?,
            );
            let filters = netlink.ingress_bpf_filters(t0).await?;
            let in_the_way = netlink.ensure_clsact(t2).await.unwrap_err().to_string();
            anyhow::Ok((id, first, again, filters, in_the_way))
        })
    })
    .join()
    .unwrap();
    let (id, first, again, filters, in_the_way) = result.unwrap();
    assert_eq!(first, (true, true));
    assert_eq!(again, (false, false), "already there: no change");
    assert_eq!(
        filters,
        [weft_netlink::BpfFilter {
            priority: 1,
            handle: 1,
            name: Some("weft_test_ok".into()),
            program_id: Some(id),
            direct_action: true,
        }]
    );
    let shown = ns
        .run("tc", &["filter", "show", "dev", "t0", "ingress"])
        .unwrap();
    assert!(
        shown.contains("direct-action") && shown.contains(&format!("id {id}")),
        "{shown}"
    );
    assert!(in_the_way.contains("ingress qdisc"), "{in_the_way}");
}

/// The verifier does not check helper flags, so weftd test-runs its program before
/// attaching it: here the kernel's verdict on weft's own program for both backends
/// (redirected) and on one asking `bpf_skb_adjust_room` for a flag no kernel has
/// (dropped), which is what a kernel too old for VXLAN's `ENCAP_L2_ETH` would do.
#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn a_test_run_tells_flags_the_kernel_refuses() {
    if !require_root("a_test_run_tells_flags_the_kernel_refuses") {
        return;
    }
    use weft_daemon::dataplane::tap_encap;
    const TC_ACT_SHOT: u32 = 2;
    const TC_ACT_REDIRECT: u32 = 7;
    // (outer headers, adjust_room flags) of IPIP and VXLAN; bit 40 is no flag at all.
    let ipip = 1 << 0 | 1 << 1;
    let vxlan = 0x0e00_0000_0000_0053;
    for (len, flags, expected) in [
        (20, ipip, TC_ACT_REDIRECT),
        (50, vxlan, TC_ACT_REDIRECT),
        (20, ipip | 1 << 40, TC_ACT_SHOT),
    ] {
        let program =
            bpf::load_sched_cls("weft_test_run", &tap_encap::program(len, flags, 1)).unwrap();
        let mut frame = vec![0u8; 14 + len + 40];
        frame[..6].copy_from_slice(&tap_encap::FRAME_DST_MAC);
        frame[6..12].copy_from_slice(&tap_encap::FRAME_SRC_MAC);
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        frame[14 + len] = 0x45;
        assert_eq!(
            bpf::test_run(&program, &frame).unwrap(),
            expected,
            "flags {flags:#x}"
        );
    }
}
