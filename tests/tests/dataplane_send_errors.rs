//! Issue 17, point 7 — the send path's hygiene, with the userspace send path
//! (`--kernel-encap=false`), on a real lab:
//!
//! * an underlay whose queue overflows (a `tbf` qdisc of a few KB at 1 Mbit/s on node
//!   1's `eth0`, under a UDP flood from a pod): the kernel's local drops reach weft
//!   (`IP_RECVERR`; without it Linux reports a full qdisc's drop as a successful UDP
//!   send) and are counted as `tx_socket_full`; once the flood ends weftd idles, and
//!   once the qdisc is gone traffic flows again;
//! * a peer that does not exist (a lease in etcd whose PublicIP nobody holds): the
//!   kernel's ICMP host-unreachable errors for IPIP packets weft sent are read from the
//!   sending socket's error queue and counted under `host_unreachable`; while such an
//!   error waits in the queue, weftd idles (no socket a worker sleeps on stays readable
//!   with `POLLERR`), and pod traffic to the real peer is unaffected.

mod reliability_support;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use reliability_support::{drops, require_binaries, spawn_in, status};
use weft_tests::lab::kernel::lease_key;
use weft_tests::lab::{Backend, Lab, LabSpec, ETCD_PREFIX};
use weft_tests::proc::cpu_time;
use weft_tests::{require_root, wait_for, wait_until};

/// How long weftd's CPU use is watched while it should idle, and the most it may use
/// then: a spinning worker would use the whole window.
const IDLE_WINDOW: Duration = Duration::from_secs(2);
const IDLE_CPU_LIMIT: Duration = Duration::from_millis(300);
const IDLE_CPU_SHARE: f64 = 0.15;

/// The flood: at most this many datagrams, for at most this long.
const FLOOD_PACKETS: u64 = 40_000;
const FLOOD_TIME: Duration = Duration::from_secs(4);

fn lab(backend: Backend) -> Lab {
    require_binaries(&["weftd"]);
    Lab::start(LabSpec {
        backend,
        weftd_args: vec!["--kernel-encap=false".to_owned()],
        ..LabSpec::weft(2)
    })
    .unwrap()
}

/// `send_error_reports` of node `n` by kind, from `/v1/status`.
fn send_error_reports(lab: &Lab, n: usize) -> std::collections::BTreeMap<String, u64> {
    weft_tests::named_counts(&status(lab, n).unwrap()["dataplane"]["send_error_reports"])
}

fn drop_count(lab: &Lab, n: usize, reason: &str) -> u64 {
    drops(&status(lab, n).unwrap())
        .get(reason)
        .copied()
        .unwrap_or(0)
}

/// CPU time weftd `pid` uses in [`IDLE_WINDOW`] (a measurement window, not a
/// synchronisation).
fn cpu_in_window(pid: u32) -> Duration {
    let before = cpu_time(pid).expect("weftd runs");
    std::thread::sleep(IDLE_WINDOW);
    cpu_time(pid).expect("weftd runs") - before
}

/// Sends UDP datagrams of 1,200 bytes from the namespace `ns` to `to:9` as fast as it
/// can, bounded by [`FLOOD_PACKETS`] and [`FLOOD_TIME`]; returns how many it sent.
fn udp_flood(ns: &str, to: Ipv4Addr) -> u64 {
    spawn_in(ns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        let payload = [0x5au8; 1200];
        let start = Instant::now();
        let mut sent = 0;
        while sent < FLOOD_PACKETS && start.elapsed() < FLOOD_TIME {
            // A full queue in the pod's own stack is no failure of the test.
            if socket.send_to(&payload, (to, 9)).is_ok() {
                sent += 1;
            }
        }
        anyhow::Ok(sent)
    })
    .join()
    .expect("flood thread")
    .unwrap()
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn a_full_underlay_queue_is_counted_and_weftd_neither_spins_nor_stalls() {
    if !require_root("a_full_underlay_queue_is_counted_and_weftd_neither_spins_nor_stalls") {
        return;
    }
    let mut lab = lab(Backend::Vxlan);
    let a = lab.add_pod(1, "a").unwrap();
    let b = lab.add_pod(2, "b").unwrap();
    wait_until("pod a to reach pod b", Duration::from_secs(15), || {
        lab.ping("a", b)
    })
    .unwrap();
    let node = lab.node_ns(1).unwrap();
    let pid = lab.weftd_pid(1).expect("weftd on node 1 runs").pid;
    let full_before = drop_count(&lab, 1, "tx_socket_full");

    // A queue of a few packets drained at 1 Mbit/s: the flood overflows it at once.
    node.run(
        "tc",
        &[
            "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "1mbit", "burst", "4kb",
            "limit", "4kb",
        ],
    )
    .unwrap();
    let sent = udp_flood(lab.pod("a").unwrap().netns.as_str(), b);
    let qdisc = node
        .run("tc", &["-s", "qdisc", "show", "dev", "eth0"])
        .unwrap();
    let full = drop_count(&lab, 1, "tx_socket_full") - full_before;
    let waits = status(&lab, 1).unwrap()["dataplane"]["tx_full_waits"]
        .as_u64()
        .unwrap_or(0);
    println!(
        "flood: {sent} datagrams from pod a; weftd dropped {full} as tx_socket_full after \
         {waits} waits for room; qdisc: {}",
        qdisc.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    assert!(
        full > 0,
        "the qdisc dropped packets ({qdisc}) but weftd counted no tx_socket_full drop"
    );

    // The flood is over (the qdisc still in place): weftd idles.
    let used = cpu_in_window(pid);
    println!("weftd on node 1 used {used:?} of CPU in {IDLE_WINDOW:?} after the flood");
    assert!(
        used <= IDLE_CPU_LIMIT,
        "weftd used {used:?} of CPU in {IDLE_WINDOW:?} after the flood (limit {IDLE_CPU_LIMIT:?})"
    );

    // Without the qdisc, traffic flows again, both ways.
    node.run("tc", &["qdisc", "del", "dev", "eth0", "root"])
        .unwrap();
    wait_until(
        "pod a to reach pod b again",
        Duration::from_secs(10),
        || lab.ping("a", b),
    )
    .unwrap();
    assert!(lab.ping("b", a), "pod b reaches pod a");
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn icmp_errors_for_sent_packets_are_counted_and_do_not_keep_weftd_awake() {
    if !require_root("icmp_errors_for_sent_packets_are_counted_and_do_not_keep_weftd_awake") {
        return;
    }
    let mut lab = lab(Backend::Ipip);
    let a = lab.add_pod(1, "a").unwrap();
    let b = lab.add_pod(2, "b").unwrap();
    wait_until("pod a to reach pod b", Duration::from_secs(15), || {
        lab.ping("a", b)
    })
    .unwrap();
    let pid = lab.weftd_pid(1).expect("weftd on node 1 runs").pid;

    // A peer whose PublicIP nobody on the underlay holds: ARP for it fails, and the
    // kernel answers each packet weft sent it with an ICMP host unreachable.
    let held: Vec<u8> = [1, 2]
        .iter()
        .map(|n| lab.node_subnet(*n).unwrap().0.network().octets()[2])
        .collect();
    let ghost_octet = (200..=250u8).find(|o| !held.contains(o)).unwrap();
    let ghost_subnet: ipnet::Ipv4Net = format!("10.244.{ghost_octet}.0/24").parse().unwrap();
    let ghost_pod = Ipv4Addr::new(10, 244, ghost_octet, 2);
    let ghost_ip = Ipv4Addr::new(192, 0, 2, 177);
    lab.etcd()
        .put(
            &lease_key(ETCD_PREFIX, ghost_subnet),
            &weft_proto::lease::LeaseAttrs::ipip(ghost_ip).to_json(),
        )
        .unwrap();
    let node = lab.node_ns(1).unwrap();
    wait_until(
        "node 1 to route the ghost's subnet",
        Duration::from_secs(10),
        || {
            node.ip(&["-4", "route", "show", &ghost_subnet.to_string()])
                .is_ok_and(|r| !r.trim().is_empty())
        },
    )
    .unwrap();

    // Each ping is sent, and the kernel's ICMP error for it is queued on weft's IPIP
    // socket, where weftd reads it (at its next failed send or periodic drain).
    let reports = wait_for(
        "a host_unreachable report read from the error queue",
        Duration::from_secs(30),
        || {
            let _ = lab.exec("a", &["ping", "-c1", "-W1", "-q", &ghost_pod.to_string()]);
            let reports = send_error_reports(&lab, 1);
            (reports.get("host_unreachable").copied().unwrap_or(0) > 0).then_some(reports)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", send_error_reports(&lab, 1)));
    println!("node 1 read from its error queue: {reports:?}");

    // One more ping, then none: its error arrives seconds later (ARP gives up after its
    // retries) and is read without any traffic to wake a worker. Throughout, weftd
    // must sleep: nothing it polls may stay ready with an error.
    let counted = reports["host_unreachable"];
    let _ = lab.exec("a", &["ping", "-c1", "-W1", "-q", &ghost_pod.to_string()]);
    let cpu_before = cpu_time(pid).expect("weftd runs");
    let since = Instant::now();
    wait_until(
        "the errors for the last pings to be read",
        Duration::from_secs(15),
        || send_error_reports(&lab, 1)["host_unreachable"] > counted,
    )
    .unwrap();
    // Let the window cover at least IDLE_WINDOW (measurement, not synchronisation).
    if let Some(rest) = IDLE_WINDOW.checked_sub(since.elapsed()) {
        std::thread::sleep(rest);
    }
    let (used, window) = (
        cpu_time(pid).expect("weftd runs") - cpu_before,
        since.elapsed(),
    );
    println!("weftd on node 1 used {used:?} of CPU in {window:?} while ICMP errors came in");
    assert!(
        used.as_secs_f64() <= IDLE_CPU_SHARE * window.as_secs_f64(),
        "weftd used {used:?} of CPU in {window:?} while ICMP errors came in \
         (limit {:.0}%)",
        IDLE_CPU_SHARE * 100.0
    );
    assert_eq!(
        raw_ipip_queued_bytes(&lab),
        0,
        "no IPIP socket of weftd keeps a queue (the sender's is drained, the receivers' \
         get no errors)"
    );
    assert!(lab.ping("a", b), "pod a still reaches pod b");
    assert!(lab.ping("b", a), "pod b still reaches pod a");
    assert_eq!(
        lab.weftd_pid(1).map(|p| p.pid),
        Some(pid),
        "weftd on node 1 runs on"
    );
}

/// Bytes queued on node 1's raw IPIP sockets (`/proc/net/raw`, protocol 4; the
/// `rx_queue` column counts error-queue messages too).
fn raw_ipip_queued_bytes(lab: &Lab) -> u64 {
    let Ok(text) = lab.exec("n1", &["cat", "/proc/net/raw"]) else {
        return 0;
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !fields.get(1)?.ends_with(":0004") {
                return None;
            }
            let (_, rx) = fields.get(4)?.split_once(':')?;
            u64::from_str_radix(rx, 16).ok()
        })
        .sum()
}
