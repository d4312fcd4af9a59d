//! flannel's subnet.env: parse what flanneld writes, reject what weft cannot use with
//! the file and line, write atomically, round-trip.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use proptest::prelude::*;
use weft_config::subnet_env::SubnetEnvError;
use weft_config::SubnetEnv;

const DOCUMENTED_EXAMPLE: &str = "FLANNEL_NETWORK=10.244.0.0/16
FLANNEL_SUBNET=10.244.1.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=false
";

fn sample() -> SubnetEnv {
    SubnetEnv::parse(DOCUMENTED_EXAMPLE).unwrap()
}

#[test]
fn documented_example_parses_and_renders_byte_for_byte() {
    let env = sample();
    assert_eq!(env.network, "10.244.0.0/16".parse::<Ipv4Net>().unwrap());
    assert_eq!(env.subnet, "10.244.1.1/24".parse::<Ipv4Net>().unwrap());
    assert_eq!(env.mtu, 1450);
    assert!(!env.ipmasq);
    assert_eq!(env.render(), DOCUMENTED_EXAMPLE);
}

/// flannel's Documentation/configuration.md dual-stack example: the IPv6 keys are
/// tolerated and the IPv4 values read.
#[test]
fn flannel_dual_stack_file_is_tolerated() {
    let env = SubnetEnv::parse(
        "FLANNEL_NETWORK=10.42.0.0/16
FLANNEL_SUBNET=10.42.0.1/24
FLANNEL_IPV6_NETWORK=2001:cafe:42::/56
FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64
FLANNEL_MTU=1450
FLANNEL_IPMASQ=true
",
    )
    .unwrap();
    assert_eq!(env.network, "10.42.0.0/16".parse::<Ipv4Net>().unwrap());
    assert_eq!(env.gateway(), Ipv4Addr::new(10, 42, 0, 1));
    assert_eq!(
        env.subnet_network(),
        "10.42.0.0/24".parse::<Ipv4Net>().unwrap()
    );
    assert!(env.ipmasq);
}

#[test]
fn comments_blank_lines_crlf_and_order_are_tolerated() {
    let env = SubnetEnv::parse(
        "# written by hand\r\n\r\nFLANNEL_IPMASQ=true\r\nFLANNEL_MTU=1400\r\n  FLANNEL_SUBNET = 10.244.7.1/24\r\nFLANNEL_NETWORK=10.244.0.0/16",
    )
    .unwrap();
    assert_eq!(env.mtu, 1400);
    assert_eq!(env.subnet, "10.244.7.1/24".parse::<Ipv4Net>().unwrap());
}

#[test]
fn bad_files() {
    let full = |replace: &str, with: &str| DOCUMENTED_EXAMPLE.replace(replace, with);
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("empty", String::new(), &["FLANNEL_NETWORK is missing"]),
        (
            "no FLANNEL_SUBNET",
            full("FLANNEL_SUBNET=10.244.1.1/24\n", ""),
            &["FLANNEL_SUBNET is missing"],
        ),
        (
            "no FLANNEL_MTU",
            full("FLANNEL_MTU=1450\n", ""),
            &["FLANNEL_MTU is missing"],
        ),
        (
            "no FLANNEL_IPMASQ",
            full("FLANNEL_IPMASQ=false\n", ""),
            &["FLANNEL_IPMASQ is missing"],
        ),
        (
            "network not CIDR",
            full("10.244.0.0/16", "10.244.0.0"),
            &["line 1", "FLANNEL_NETWORK \"10.244.0.0\"", "IPv4 network"],
        ),
        (
            "subnet without prefix",
            full("10.244.1.1/24", "10.244.1.1"),
            &["line 2", "FLANNEL_SUBNET \"10.244.1.1\"", "prefix length"],
        ),
        (
            "subnet outside network",
            full("10.244.1.1/24", "10.99.1.1/24"),
            &["FLANNEL_SUBNET 10.99.1.1/24 is not inside FLANNEL_NETWORK 10.244.0.0/16"],
        ),
        (
            "subnet wider than network",
            full("10.244.1.1/24", "10.244.1.1/8"),
            &["FLANNEL_SUBNET 10.244.1.1/8 is not inside"],
        ),
        (
            "mtu not a number",
            full("1450", "large"),
            &["line 3", "FLANNEL_MTU \"large\"", "68 to 65535"],
        ),
        (
            "mtu too small",
            full("1450", "20"),
            &["line 3", "FLANNEL_MTU \"20\""],
        ),
        (
            "ipmasq yes",
            full("IPMASQ=false", "IPMASQ=yes"),
            &["line 4", "FLANNEL_IPMASQ \"yes\" must be true or false"],
        ),
        (
            "duplicate key",
            format!("{DOCUMENTED_EXAMPLE}FLANNEL_MTU=1400\n"),
            &["line 5", "FLANNEL_MTU appears twice"],
        ),
        (
            "line without =",
            format!("{DOCUMENTED_EXAMPLE}garbage here\n"),
            &["line 5", "expected KEY=VALUE", "garbage here"],
        ),
    ];
    for (name, text, expected) in &cases {
        let err = match SubnetEnv::parse(text) {
            Ok(env) => panic!("{name}: accepted as {env:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.starts_with("subnet.env"), "{name}: {err}");
        for part in *expected {
            assert!(err.contains(part), "{name}: {err:?} lacks {part:?}");
        }
    }
}

#[test]
fn read_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("subnet.env");
    std::fs::write(&path, DOCUMENTED_EXAMPLE.replace("1450", "x")).unwrap();
    let err = SubnetEnv::read(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{} line 3: FLANNEL_MTU", path.display())),
        "{err}"
    );

    let missing = dir.path().join("absent.env");
    let err = SubnetEnv::read(&missing).unwrap_err();
    assert!(matches!(err, SubnetEnvError::Read { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

#[test]
fn write_atomic_creates_the_directory_replaces_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/flannel/subnet.env");
    let mut env = sample();
    env.write_atomic(&path).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), DOCUMENTED_EXAMPLE);
    assert_eq!(SubnetEnv::read(&path).unwrap(), env);

    env.subnet = "10.244.9.1/24".parse().unwrap();
    env.ipmasq = true;
    env.write_atomic(&path).unwrap();
    assert_eq!(SubnetEnv::read(&path).unwrap(), env);

    let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["subnet.env"]);
}

#[test]
fn write_atomic_reports_the_path_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the parent directory should be.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "").unwrap();
    let path = blocker.join("subnet.env");
    let err = sample().write_atomic(&path).unwrap_err();
    assert!(matches!(err, SubnetEnvError::Write { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot write"), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

fn arb_subnet_env() -> impl Strategy<Value = SubnetEnv> {
    (
        any::<u32>(),
        1u8..=30,
        0u8..=2,
        any::<u32>(),
        68u32..=65535,
        any::<bool>(),
    )
        .prop_map(|(net_addr, net_len, extra, host, mtu, ipmasq)| {
            let network = Ipv4Net::new(Ipv4Addr::from(net_addr), net_len)
                .unwrap()
                .trunc();
            let sub_len = net_len + extra;
            let host_bits = !u32::from(network.netmask());
            let addr = u32::from(network.network()) | (host & host_bits);
            SubnetEnv {
                network,
                subnet: Ipv4Net::new(Ipv4Addr::from(addr), sub_len).unwrap(),
                mtu,
                ipmasq,
            }
        })
}

proptest! {
    #[test]
    fn parse_never_panics(text in "(?s).{0,300}") {
        let _ = SubnetEnv::parse(&text);
    }

    #[test]
    fn parse_never_panics_on_near_miss_lines(
        lines in prop::collection::vec(
            (prop::sample::select(vec!["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU",
                                       "FLANNEL_IPMASQ", "FLANNEL_IPV6_SUBNET", "X", ""]),
             "[0-9a-z./:=]{0,20}"),
            0..8),
    ) {
        let text: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let _ = SubnetEnv::parse(&text);
    }

    #[test]
    fn render_then_parse_round_trips(env in arb_subnet_env()) {
        prop_assert_eq!(SubnetEnv::parse(&env.render()).unwrap(), env);
    }
}
