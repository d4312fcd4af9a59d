//! Issue 17, points 1 and 4 — real weftd on hosts with a firewall:
//! * a host whose iptables `FORWARD` policy is `DROP` (what Docker leaves behind):
//!   weftd's forward rules (`WEFT-FWD`, default on) let pods on different nodes reach
//!   each other, with iptables-nft and with iptables-legacy; with `--forward-rules=false`
//!   they cannot; a filter table that comes into use after weftd started (Docker
//!   started later) gets the rules too;
//! * the forward rules or the masquerade table deleted or altered under a running weftd
//!   are put back within a reconcile and counted in `weft_dataplane_repairs_total{what}`;
//! * `--ip-masq` survives SIGTERM: the table stays, and a pod's outbound TCP connection
//!   carries data while weftd is down and after it started again, always from the
//!   node's address;
//! * a pure-nftables forward chain with policy drop: weftd names it in a warning (and
//!   pods on that node stay unreachable until the user adds the accepts it names).

mod reliability_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::time::Duration;

use reliability_support::{log_tail, log_text, require_binaries};
use weft_tests::lab::{Lab, LabSpec, HEALTHZ_ADDR};
use weft_tests::link::{End, Veth};
use weft_tests::netns::{spawn_in, Netns};
use weft_tests::{require_root, wait_for, wait_until};

/// A reconcile runs every 2 s; this leaves room for a loaded machine.
const RECONCILE_DEADLINE: Duration = Duration::from_secs(15);
const CLUSTER: &str = "10.244.0.0/16";

/// A two-node lab whose node namespaces get `prepare` before weftd starts there (with
/// the extra `args`), and pods `a` on node 1 and `b` on node 2.
fn lab_with(args: &[&str], prepare: impl Fn(&Netns)) -> (Lab, Ipv4Addr, Ipv4Addr) {
    require_binaries(&["weftd"]);
    let mut lab = Lab::start(LabSpec {
        start_weftd: false,
        weftd_args: args.iter().map(|a| a.to_string()).collect(),
        ..LabSpec::weft(2)
    })
    .unwrap();
    for n in [1, 2] {
        prepare(&lab.node_ns(n).unwrap());
        lab.start_weftd(n).unwrap();
    }
    for n in [1, 2] {
        lab.wait_weftd_ready(n).unwrap();
    }
    let a = lab.add_pod(1, "a").unwrap();
    let b = lab.add_pod(2, "b").unwrap();
    (lab, a, b)
}

/// `weft_dataplane_repairs_total{what="<what>"}` of node `n`.
fn repairs(lab: &Lab, n: usize, what: &str) -> u64 {
    let (code, page) = lab
        .node_ns(n)
        .unwrap()
        .http_get(HEALTHZ_ADDR, "/metrics")
        .unwrap();
    assert_eq!(code, 200, "{page}");
    let series = format!("weft_dataplane_repairs_total{{what=\"{what}\"}} ");
    page.lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{page}"))
        .trim()
        .parse()
        .unwrap()
}

fn wait_repairs(lab: &Lab, n: usize, what: &str, at_least: u64) {
    wait_until(
        &format!("node {n}: repairs of {what} to reach {at_least}"),
        RECONCILE_DEADLINE,
        || repairs(lab, n, what) >= at_least,
    )
    .unwrap_or_else(|e| panic!("{e}; weftd log:\n{}", log_tail(lab, n, 20)));
}

fn both_ways(lab: &Lab, a: Ipv4Addr, b: Ipv4Addr) {
    wait_until("pod a to reach pod b", Duration::from_secs(15), || {
        lab.ping("a", b)
    })
    .unwrap_or_else(|e| panic!("{e}; node 1 log:\n{}", log_tail(lab, 1, 20)));
    wait_until("pod b to reach pod a", Duration::from_secs(15), || {
        lab.ping("b", a)
    })
    .unwrap_or_else(|e| panic!("{e}; node 2 log:\n{}", log_tail(lab, 2, 20)));
}

/// Lines of `iptables -S WEFT-FWD` plus the FORWARD rules that jump there.
fn weft_forward_rules(ns: &Netns, iptables: &str) -> (Vec<String>, usize) {
    let chain = ns
        .run(iptables, &["-w", "-S", "WEFT-FWD"])
        .unwrap_or_default();
    let rules = chain
        .lines()
        .filter(|l| l.starts_with("-A WEFT-FWD"))
        .map(str::to_owned)
        .collect();
    let jumps = ns
        .run(iptables, &["-w", "-S", "FORWARD"])
        .unwrap()
        .lines()
        .filter(|l| l.ends_with("-j WEFT-FWD"))
        .count();
    (rules, jumps)
}

fn forward_drop_host(iptables: &'static str) {
    require_binaries(&["weftd"]);
    let (lab, a, b) = lab_with(&[], |ns| {
        ns.run(iptables, &["-w", "-P", "FORWARD", "DROP"]).unwrap();
    });
    // With DROP as FORWARD's policy only weft's accepts let the pods' packets through.
    both_ways(&lab, a, b);
    let n1 = lab.node_ns(1).unwrap();
    let (rules, jumps) = weft_forward_rules(&n1, iptables);
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(rules[0].contains(&format!("-s {CLUSTER}")), "{rules:?}");
    assert!(rules[1].contains(&format!("-d {CLUSTER}")), "{rules:?}");
    assert_eq!(jumps, 1);
    let policy = n1.run(iptables, &["-w", "-S", "FORWARD"]).unwrap();
    assert!(
        policy.contains("-P FORWARD DROP"),
        "weft left the policy: {policy}"
    );

    // Flushed under a running weftd: back within a reconcile, counted, logged once.
    assert_eq!(repairs(&lab, 1, "forward_rules"), 0);
    n1.run(iptables, &["-w", "-F", "WEFT-FWD"]).unwrap();
    wait_repairs(&lab, 1, "forward_rules", 1);
    assert_eq!(weft_forward_rules(&n1, iptables), (rules.clone(), 1));
    both_ways(&lab, a, b);

    // The jump deleted: the same.
    n1.run(
        iptables,
        &[
            "-w",
            "-D",
            "FORWARD",
            "-m",
            "comment",
            "--comment",
            "weft forward",
            "-j",
            "WEFT-FWD",
        ],
    )
    .unwrap();
    wait_repairs(&lab, 1, "forward_rules", 2);
    assert_eq!(weft_forward_rules(&n1, iptables), (rules.clone(), 1));
    both_ways(&lab, a, b);

    // Altered (a DROP put in front of weft's accepts): replaced by weft's two rules.
    n1.run(iptables, &["-w", "-I", "WEFT-FWD", "1", "-j", "DROP"])
        .unwrap();
    wait_repairs(&lab, 1, "forward_rules", 3);
    assert_eq!(weft_forward_rules(&n1, iptables), (rules, 1));
    both_ways(&lab, a, b);
    let logged = wait_for("two repair lines in the log", RECONCILE_DEADLINE, || {
        let n = log_text(&lab, 1)
            .matches("the forward rules were missing: put back")
            .count();
        (n >= 2).then_some(n)
    })
    .unwrap();
    assert_eq!(logged, 2, "one log line per repair:\n{}", log_text(&lab, 1));
    let text = log_text(&lab, 1);
    assert_eq!(
        text.matches("the forward rules were altered: put back")
            .count(),
        1,
        "{text}"
    );
    assert_eq!(repairs(&lab, 1, "forward_rules"), 3);
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn forward_drop_host_iptables_nft_pods_reach_and_deleted_rules_come_back() {
    if !require_root("forward_drop_host_iptables_nft_pods_reach_and_deleted_rules_come_back") {
        return;
    }
    forward_drop_host("iptables-nft");
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn forward_drop_host_iptables_legacy_pods_reach_and_deleted_rules_come_back() {
    if !require_root("forward_drop_host_iptables_legacy_pods_reach_and_deleted_rules_come_back") {
        return;
    }
    forward_drop_host("iptables-legacy");
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn without_forward_rules_a_forward_drop_host_cuts_pods_off() {
    if !require_root("without_forward_rules_a_forward_drop_host_cuts_pods_off") {
        return;
    }
    let (lab, a, b) = lab_with(&["--forward-rules=false"], |ns| {
        ns.run("iptables-nft", &["-w", "-P", "FORWARD", "DROP"])
            .unwrap();
    });
    let n1 = lab.node_ns(1).unwrap();
    assert_eq!(weft_forward_rules(&n1, "iptables-nft"), (vec![], 0));
    assert!(
        !lab.ping("a", b),
        "pod a reached pod b through FORWARD DROP"
    );
    // The policy was the only obstacle: with ACCEPT the same pods reach each other.
    for n in [1, 2] {
        lab.node_ns(n)
            .unwrap()
            .run("iptables-nft", &["-w", "-P", "FORWARD", "ACCEPT"])
            .unwrap();
    }
    both_ways(&lab, a, b);
}

/// A TCP echo server in `ns` on `ip`: answers every byte it reads, and returns the
/// address the (single) client connected from.
fn echo_server(
    ns: &Netns,
    ip: Ipv4Addr,
) -> (u16, std::thread::JoinHandle<anyhow::Result<Ipv4Addr>>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = spawn_in(ns.name(), move || {
        let listener = TcpListener::bind(SocketAddrV4::new(ip, 0))?;
        ready_tx.send(listener.local_addr()?.port())?;
        let (mut stream, peer) = listener.accept()?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut buffer = [0u8; 64];
        loop {
            let n = stream.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            stream.write_all(&buffer[..n])?;
        }
        match peer.ip() {
            std::net::IpAddr::V4(v4) => Ok(v4),
            other => anyhow::bail!("unexpected peer {other}"),
        }
    });
    let port = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (port, server)
}

/// One round trip of `byte` on `stream`, from the pod's namespace.
fn round_trip(stream: &mut TcpStream, byte: u8) -> anyhow::Result<()> {
    stream.write_all(&[byte])?;
    let mut back = [0u8; 1];
    stream.read_exact(&mut back)?;
    anyhow::ensure!(back[0] == byte, "echoed {} for {byte}", back[0]);
    Ok(())
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn masquerade_survives_sigterm_restart_and_deletion() {
    if !require_root("masquerade_survives_sigterm_restart_and_deletion") {
        return;
    }
    let (mut lab, _a, _b) = lab_with(&["--ip-masq"], |_| {});
    let n1 = lab.node_ns(1).unwrap();
    let table = || n1.run("nft", &["list", "table", "ip", "weft"]);
    assert!(table().unwrap().contains("masquerade"));

    // Deleted under a running weftd: back within a reconcile, counted.
    assert_eq!(repairs(&lab, 1, "masquerade"), 0);
    n1.run("nft", &["delete", "table", "ip", "weft"]).unwrap();
    wait_repairs(&lab, 1, "masquerade", 1);
    let installed = table().unwrap();
    assert!(installed.contains("masquerade"), "{installed}");
    // Altered (a rule added): replaced by weft's own.
    n1.run(
        "nft",
        &[
            "insert",
            "rule",
            "ip",
            "weft",
            "postrouting",
            "ip",
            "saddr",
            CLUSTER,
            "accept",
        ],
    )
    .unwrap();
    wait_repairs(&lab, 1, "masquerade", 2);
    assert_eq!(table().unwrap(), installed);

    // An "external" host on the underlay that is not a node, counting every packet
    // that reaches it with a pod's address (there must be none: all come masqueraded).
    let external = Netns::new(&format!("{}-ext", lab.prefix())).unwrap();
    let external_ip = Ipv4Addr::new(192, 0, 2, 200);
    let _link = Veth::create(
        End::with_addr(&external, "eth0", "192.0.2.200/24"),
        End::new(&lab.underlay(), "ext"),
        None,
    )
    .unwrap();
    lab.underlay()
        .ip(&["link", "set", "ext", "master", "br0"])
        .unwrap();
    external
        .sh(&format!(
            "nft add table ip watch && \
             nft add chain ip watch pre '{{ type filter hook prerouting priority -300; }}' && \
             nft add rule ip watch pre ip saddr {CLUSTER} counter"
        ))
        .unwrap();
    let unmasqueraded = || -> u64 {
        let listing = external
            .run("nft", &["list", "chain", "ip", "watch", "pre"])
            .unwrap();
        listing
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {listing}"))
    };

    // The pod opens one connection and keeps it across weftd's stop and start.
    let (port, server) = echo_server(&external, external_ip);
    let pod = lab.pod_ns("a").unwrap();
    let (step_tx, step_rx) = std::sync::mpsc::channel::<u8>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let client = spawn_in(pod.name(), move || {
        let mut stream = TcpStream::connect_timeout(
            &SocketAddrV4::new(external_ip, port).into(),
            Duration::from_secs(10),
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        for byte in step_rx {
            done_tx.send(round_trip(&mut stream, byte))?;
        }
        Ok(())
    });
    let step = |byte: u8, when: &str| {
        step_tx.send(byte).unwrap();
        done_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap()
            .unwrap_or_else(|e| panic!("round trip {when}: {e:#}"));
    };
    step(1, "before the restart");

    lab.stop_weftd(1).unwrap();
    assert!(
        table().is_ok_and(|t| t.contains("masquerade")),
        "the masquerade table is gone after SIGTERM: {:?}",
        table()
    );
    step(2, "while weftd is stopped");

    lab.start_weftd(1).unwrap();
    lab.wait_weftd_ready(1).unwrap();
    step(3, "after the restart");
    assert_eq!(
        repairs(&lab, 1, "masquerade"),
        0,
        "the restarted weftd installs, it does not repair"
    );
    drop(step_tx);
    client.join().unwrap().unwrap();
    assert_eq!(server.join().unwrap().unwrap(), lab.node(1).unwrap().ip);
    assert_eq!(
        unmasqueraded(),
        0,
        "the external host saw packets with a pod's address"
    );
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn pure_nftables_forward_drop_is_named_in_a_warning() {
    if !require_root("pure_nftables_forward_drop_is_named_in_a_warning") {
        return;
    }
    let (lab, a, b) = lab_with(&[], |ns| {
        if ns.name().ends_with("-n1") {
            ns.sh(
                "nft add table inet hostfw && \
                 nft add chain inet hostfw forward '{ type filter hook forward priority 0; policy drop; }'",
            )
            .unwrap();
        }
    });
    let warning =
        "nftables chain inet hostfw forward (hook forward, policy drop) may drop pod traffic";
    wait_until("the warning in node 1's log", RECONCILE_DEADLINE, || {
        log_text(&lab, 1).contains(warning)
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", log_tail(&lab, 1, 20)));
    assert!(
        log_text(&lab, 1).contains(&format!("add `ip saddr {CLUSTER} accept`")),
        "{}",
        log_tail(&lab, 1, 20)
    );
    assert!(
        !log_text(&lab, 2).contains("may drop pod traffic"),
        "node 2 has no such chain:\n{}",
        log_tail(&lab, 2, 20)
    );
    // weft does not (cannot) fix another table's drop: the pod on node 1 is cut off…
    assert!(
        !lab.ping("b", a),
        "pod b reached pod a through inet hostfw's drop"
    );
    // …until the accepts the warning names are added.
    let n1 = lab.node_ns(1).unwrap();
    n1.sh(&format!(
        "nft insert rule inet hostfw forward ip saddr {CLUSTER} accept && \
         nft insert rule inet hostfw forward ip daddr {CLUSTER} accept"
    ))
    .unwrap();
    both_ways(&lab, a, b);
    // Once, not every reconcile.
    assert_eq!(log_text(&lab, 1).matches(warning).count(), 1);
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn a_filter_table_that_comes_into_use_after_start_gets_the_rules() {
    if !require_root("a_filter_table_that_comes_into_use_after_start_gets_the_rules") {
        return;
    }
    let (lab, a, b) = lab_with(&[], |_| {});
    both_ways(&lab, a, b);
    let n1 = lab.node_ns(1).unwrap();
    // No filter table in use: weft adds none.
    assert_eq!(
        n1.run("nft", &["list", "tables"]).unwrap().trim(),
        "",
        "weft created a table on a host without a firewall"
    );
    // Docker starts after weftd and sets FORWARD's policy to DROP on both nodes.
    for n in [1, 2] {
        lab.node_ns(n)
            .unwrap()
            .run("iptables-nft", &["-w", "-P", "FORWARD", "DROP"])
            .unwrap();
    }
    // Unused tables are looked at every 10 s.
    wait_until(
        "the forward rules in both nodes",
        Duration::from_secs(30),
        || {
            [1, 2]
                .iter()
                .all(|&n| weft_forward_rules(&lab.node_ns(n).unwrap(), "iptables-nft").1 == 1)
        },
    )
    .unwrap_or_else(|e| panic!("{e}; node 1 log:\n{}", log_tail(&lab, 1, 20)));
    both_ways(&lab, a, b);
    assert_eq!(
        repairs(&lab, 1, "forward_rules"),
        0,
        "a table that came into use is not a repair"
    );
    assert!(
        log_text(&lab, 1).contains("the filter table came into use: added"),
        "{}",
        log_tail(&lab, 1, 20)
    );
}
