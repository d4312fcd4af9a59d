//! Issue 8's memory target: a real weftd (the lab's, leases in a real etcd) with 1,000
//! peers stays under 30 MB resident. The leases are written straight to etcd in
//! flannel's schema; once weftd has a route for every one, its `VmRSS` is read and
//! printed (run with `--nocapture` to see it).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use weft_tests::lab::{Lab, LabSpec, ETCD_PREFIX};
use weft_tests::{require_root, wait_until};

const PEERS: u32 = 1000;
/// /28 subnets: 4,096 of them fit in the lab's 10.244.0.0/16.
const SUBNET_LEN: u8 = 28;
/// The target is 30 MB; the bound is the target itself, as resident memory does not
/// depend on timing.
const RSS_LIMIT_KB: u64 = 30 * 1024;

fn peer_subnet(n: u32) -> Ipv4Addr {
    // From the top of the network down, away from the subnets weftd picks (the lowest
    // free ones).
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 255, 240)) - n * 16)
}

fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn weftd_with_a_thousand_peers_stays_under_30_mb() {
    if !require_root("weftd_with_a_thousand_peers_stays_under_30_mb") {
        return;
    }
    let mut lab = Lab::start(LabSpec {
        nodes: 1,
        netconf: Some(format!(
            r#"{{"Network":"10.244.0.0/16","SubnetLen":{SUBNET_LEN},"Backend":{{"Type":"vxlan","VNI":1,"Port":8472}}}}"#
        )),
        ..LabSpec::default()
    })
    .unwrap();
    lab.wait_weftd_ready(1).unwrap();
    let pid = lab.weftd_pid(1).expect("weftd runs").pid;
    let idle_kb = vm_rss_kb(pid).expect("weftd's VmRSS");

    // Reservations (no etcd lease): peers in flannel's schema, on the lab's other
    // underlay range (PublicIPs shared by several peers; only routes to their subnets
    // are made, through the TUN device).
    let etcd = lab.etcd();
    std::thread::scope(|scope| {
        for worker in 0..4u32 {
            scope.spawn(move || {
                for n in (1..=PEERS).filter(|n| n % 4 == worker) {
                    let key = format!(
                        "{ETCD_PREFIX}/subnets/{}-{SUBNET_LEN}",
                        peer_subnet(n)
                    );
                    let value = format!(
                        r#"{{"PublicIP":"198.51.100.{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:{:02x}:{:02x}"}}}}"#,
                        n % 250 + 1,
                        n >> 8,
                        n & 0xff
                    );
                    etcd.put(&key, &value).unwrap();
                }
            });
        }
    });

    let expected: BTreeSet<String> = (1..=PEERS)
        .map(|n| format!("{}/{SUBNET_LEN}", peer_subnet(n)))
        .collect();
    wait_until(
        "weftd to route all 1,000 peers",
        Duration::from_secs(60),
        || {
            lab.exec("n1", &["ip", "route", "show", "proto", "87"])
                .map(|routes| {
                    let have: BTreeSet<String> = routes
                        .lines()
                        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                        .collect();
                    expected.is_subset(&have)
                })
                .unwrap_or(false)
        },
    )
    .unwrap();

    let rss_kb = vm_rss_kb(pid).expect("weftd's VmRSS");
    println!("weftd VmRSS: {idle_kb} kB with no peers, {rss_kb} kB with {PEERS} peers routed");
    assert!(
        rss_kb < RSS_LIMIT_KB,
        "weftd uses {rss_kb} kB resident with {PEERS} peers; the target is under {RSS_LIMIT_KB} kB"
    );
}
