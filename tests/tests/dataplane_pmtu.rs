//! A smaller path MTU on the underlay must not blackhole pods. Node 1 (192.0.2.1) and
//! node 2 (198.51.100.2) reach each other only through a router namespace whose link
//! towards both has an MTU of 1,400 bytes, less than the 1,500 the nodes' own links
//! and the overlay MTU assume: full-sized tunnel packets cannot cross it whole. A TCP
//! transfer of a few MB between pods must complete intact both ways, and a ping with
//! full-sized DF packets must get an answer or a "fragmentation needed", never silence;
//! on both backends, with and without the kernel encapsulation path. Needs root.

mod dataplane_support;

use std::net::Ipv4Addr;
use std::time::Duration;

use dataplane_support::{concurrent_transfers, netconf, wait_ping, Cluster};
use weft_tests::require_root;

const VXLAN: &str = r#"{"Type":"vxlan","VNI":1}"#;
const IPIP: &str = r#"{"Type":"ipip"}"#;
/// The router's link: smaller than the nodes' 1,500.
const NARROW_MTU: &str = "1400";

/// Two nodes on either side of the narrow router, started, each with a pod.
fn routed_pair(backend: &str, kernel_encap: bool) -> Cluster {
    let netconf = netconf(backend);
    let mut cluster = Cluster::new().unwrap();
    let router = &cluster.underlay;
    // The underlay namespace routes between the two subnets over its bridge, whose
    // MTU (the routed packets' egress) is the narrow link.
    router
        .ip(&["addr", "add", "192.0.2.254/24", "dev", "br0"])
        .unwrap();
    router
        .ip(&["addr", "add", "198.51.100.254/24", "dev", "br0"])
        .unwrap();
    router
        .ip(&["link", "set", "br0", "mtu", NARROW_MTU])
        .unwrap();
    router
        .run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    for n in 1..=2u8 {
        let i = cluster.add_node(n, &netconf).unwrap();
        let node = &mut cluster.nodes[i];
        node.settings.kernel_encap = kernel_encap;
        if n == 2 {
            node.ns.ip(&["addr", "flush", "dev", "eth0"]).unwrap();
            node.ns
                .ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"])
                .unwrap();
            node.ns
                .ip(&["route", "add", "default", "via", "198.51.100.254"])
                .unwrap();
            node.lease.public_ip = Ipv4Addr::new(198, 51, 100, 2);
        } else {
            node.ns
                .ip(&["route", "add", "198.51.100.0/24", "via", "192.0.2.254"])
                .unwrap();
        }
        node.start().unwrap();
        let prefix = cluster.prefix.clone();
        cluster.nodes[i].add_pod(&prefix).unwrap();
    }
    cluster.announce_all().unwrap();
    cluster
}

/// A ping of the overlay MTU (payload = MTU − 28) with DF from pod to pod: an answer,
/// or ping's report of a "Frag needed" from the path, but not silence.
fn big_df_ping_is_answered_or_refused(cluster: &Cluster) {
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let payload = (a.lease.mtu - 28).to_string();
    let target = b.pod_ip().to_string();
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            a.pod().name(),
            "ping",
            "-c",
            "3",
            "-W",
            "2",
        ])
        .args(["-M", "do", "-s", &payload, &target])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let answered = text.contains("bytes from");
    let refused = text.contains("Frag needed") || text.contains("message too long");
    assert!(
        answered || refused,
        "silence for DF pings of {payload} bytes:\n{text}"
    );
}

fn survives_a_narrow_link(backend: &str, kernel_encap: bool) {
    let cluster = routed_pair(backend, kernel_encap);
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    assert_eq!(
        a.metrics().dataplane().unwrap().offloads.kernel_encap,
        kernel_encap
    );
    // Small packets cross anyway.
    wait_ping(a.pod(), b.pod_ip(), Duration::from_secs(10)).unwrap();
    wait_ping(b.pod(), a.pod_ip(), Duration::from_secs(10)).unwrap();
    let fragmented = router_fragments(&cluster);
    concurrent_transfers(a, b, 1, 1, 4 << 20);
    big_df_ping_is_answered_or_refused(&cluster);
    // The narrow link was on the path: the router had to cut tunnel packets.
    assert!(router_fragments(&cluster) > fragmented);
}

/// `Ip: FragCreates` of the router namespace (its own /proc/net/snmp).
fn router_fragments(cluster: &Cluster) -> u64 {
    let snmp = cluster.underlay.run("cat", &["/proc/net/snmp"]).unwrap();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "FragCreates")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

macro_rules! pmtu_tests {
    ($($name:ident: $backend:expr, $kernel_encap:expr;)*) => {$(
        #[test]
        #[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
        fn $name() {
            if !require_root(stringify!($name)) {
                return;
            }
            survives_a_narrow_link($backend, $kernel_encap);
        }
    )*};
}

pmtu_tests! {
    ipip_kernel_path_survives_a_narrow_link: IPIP, true;
    ipip_userspace_path_survives_a_narrow_link: IPIP, false;
    vxlan_kernel_path_survives_a_narrow_link: VXLAN, true;
    vxlan_userspace_path_survives_a_narrow_link: VXLAN, false;
}
