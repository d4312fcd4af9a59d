//! flannel's net-conf: documented examples parse to flannel's values; every broken
//! config gets its own clear message; arbitrary input never panics.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use weft_config::netconf::{NetConfError, DEFAULT_VXLAN_PORT};
use weft_config::{Backend, NetConf};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn vxlan(vni: u32, port: u16, direct_routing: bool) -> Backend {
    Backend::Vxlan {
        vni,
        port,
        direct_routing,
    }
}

/// flannel's Documentation/configuration.md example, with its backend switched from
/// `udp` (which weft does not support, see `bad_configs`) to `vxlan`.
#[test]
fn configuration_md_example_with_vxlan() {
    let c = NetConf::parse(
        r#"{
	"Network": "10.0.0.0/8",
	"SubnetLen": 20,
	"SubnetMin": "10.10.0.0",
	"SubnetMax": "10.99.0.0",
	"Backend": {
		"Type": "vxlan",
		"Port": 7890
	}
}"#,
    )
    .unwrap();
    assert_eq!(c.network, "10.0.0.0/8".parse().unwrap());
    assert_eq!(c.subnet_len, 20);
    assert_eq!(c.subnet_min, ip("10.10.0.0"));
    assert_eq!(c.subnet_max, ip("10.99.0.0"));
    assert_eq!(c.backend, vxlan(1, 7890, false));
    // 10.10.0.0 .. 10.99.0.0 in /20 steps: (99 - 10) * 16 + 1.
    assert_eq!(c.subnet_count(), 89 * 16 + 1);
    assert_eq!(c.subnets().next(), Some("10.10.0.0/20".parse().unwrap()));
    assert_eq!(c.subnets().last(), Some("10.99.0.0/20".parse().unwrap()));
}

/// The same example verbatim: `udp` is rejected with a message saying what to use.
#[test]
fn configuration_md_example_verbatim_names_udp() {
    let err = NetConf::parse(
        r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0",
            "Backend":{"Type":"udp","Port":7890}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("\"udp\" is not supported by weft"), "{err}");
    assert!(err.contains("\"vxlan\""), "{err}");
}

/// kube-flannel.yml's net-conf.json (current and older releases).
#[test]
fn kube_flannel_net_conf() {
    for text in [
        r#"{ "Network": "10.244.0.0/16", "EnableNFTables": false, "Backend": { "Type": "vxlan" } }"#,
        r#"{ "Network": "10.244.0.0/16", "Backend": { "Type": "vxlan" } }"#,
    ] {
        let c = NetConf::parse(text).unwrap();
        assert_eq!(c.network, "10.244.0.0/16".parse().unwrap());
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, ip("10.244.1.0"));
        assert_eq!(c.subnet_max, ip("10.244.255.0"));
        assert_eq!(c.backend, vxlan(1, DEFAULT_VXLAN_PORT, false));
    }
}

/// flannel's own tests (pkg/subnet/config_test.go): TestConfigDefaults uses a
/// lower-case key, which Go's encoding/json matches case-insensitively.
#[test]
fn flannel_config_test_defaults_and_overrides() {
    let c = NetConf::parse(r#"{ "network": "10.3.0.0/16" }"#).unwrap();
    assert_eq!(c.network, "10.3.0.0/16".parse().unwrap());
    assert_eq!(c.subnet_min, ip("10.3.1.0"));
    assert_eq!(c.subnet_max, ip("10.3.255.0"));
    assert_eq!(c.subnet_len, 24);

    let c = NetConf::parse(
        r#"{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.5.0", "SubnetMax": "10.3.8.0", "SubnetLen": 28 }"#,
    )
    .unwrap();
    assert_eq!(c.subnet_min, ip("10.3.5.0"));
    assert_eq!(c.subnet_max, ip("10.3.8.0"));
    assert_eq!(c.subnet_len, 28);
    assert_eq!(c.subnet_count(), (0x0800 - 0x0500) / 16 + 1);
}

/// The contract's example, Documentation/backends.md's VXLAN options and the
/// DirectRouting / IANA-port variants.
#[test]
fn vxlan_backend_options() {
    let c = NetConf::parse(
        r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#,
    )
    .unwrap();
    assert_eq!(c.backend, vxlan(1, 8472, false));
    assert_eq!(c.backend.overhead(), 50);

    let c = NetConf::parse(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":4096,"Port":4789,
            "GBP":false,"Learning":true,"DirectRouting":true,"MTU":9000}}"#,
    )
    .unwrap();
    assert_eq!(c.backend, vxlan(4096, 4789, true));
    assert!(c.backend.direct_routing());
    assert_eq!(c.underlay_mtu, Some(9000));
    assert_eq!(c.overlay_mtu(1500), 8950);

    // flannel: Port 0 means the kernel's default, 8472; VNI 0 is a valid VNI.
    let c = NetConf::parse(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":0,"Port":0}}"#,
    )
    .unwrap();
    assert_eq!(c.backend, vxlan(0, 8472, false));
    assert_eq!(c.overlay_mtu(1500), 1450);
}

/// Documentation/backends.md's IPIP backend.
#[test]
fn ipip_backend() {
    let c = NetConf::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"ipip"}}"#).unwrap();
    assert_eq!(
        c.backend,
        Backend::Ipip {
            direct_routing: false
        }
    );
    assert_eq!(c.backend.type_name(), "ipip");
    assert_eq!(c.overlay_mtu(1500), 1480);
    let c = NetConf::parse(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"ipip","DirectRouting":true}}"#,
    )
    .unwrap();
    assert_eq!(
        c.backend,
        Backend::Ipip {
            direct_routing: true
        }
    );
}

/// Documentation/backends.md's host-gw backend: no options, no overhead.
#[test]
fn host_gw_backend() {
    let c = NetConf::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#).unwrap();
    assert_eq!(c.backend, Backend::HostGw);
    assert_eq!(c.backend.type_name(), "host-gw");
    assert_eq!(
        c.overlay_mtu(1500),
        1500,
        "no encapsulation: the underlay MTU"
    );
    assert_eq!(c.overlay_mtu(9000), 9000);
    assert!(c.backend.direct_routing());
    assert_eq!(c.underlay_mtu, None);
    assert_eq!(NetConf::parse(&c.to_json()), Ok(c.clone()));
    assert!(
        c.to_json().contains(r#""Backend":{"Type":"host-gw"}"#),
        "{}",
        c.to_json()
    );
    // Go's encoding/json matches keys case-insensitively; the type itself is exact.
    let c = NetConf::parse(r#"{"network":"10.244.0.0/16","backend":{"type":"host-gw"}}"#).unwrap();
    assert_eq!(c.backend, Backend::HostGw);
}

#[test]
fn missing_backend_means_vxlan_and_null_means_absent() {
    for text in [
        r#"{"Network":"10.244.0.0/16"}"#,
        r#"{"Network":"10.244.0.0/16","Backend":null,"SubnetLen":null,"SubnetMin":"0.0.0.0"}"#,
        r#"{"Network":"10.244.0.0/16","SubnetLen":0}"#,
    ] {
        let c = NetConf::parse(text).unwrap();
        assert_eq!(c.backend, vxlan(1, 8472, false), "{text}");
        assert_eq!(c.subnet_len, 24, "{text}");
        assert_eq!(c.subnet_min, ip("10.244.1.0"), "{text}");
    }
}

#[test]
fn host_bits_are_cleared_like_flannel() {
    let c = NetConf::parse(r#"{"Network":"10.244.7.9/16"}"#).unwrap();
    assert_eq!(c.network, "10.244.0.0/16".parse().unwrap());
}

#[test]
fn smallest_network_and_subnet_len_edges() {
    // /28 is flannel's smallest network: four /30s, the first skipped.
    let c = NetConf::parse(r#"{"Network":"10.244.0.0/28"}"#).unwrap();
    assert_eq!(c.subnet_len, 30);
    assert_eq!(c.subnet_count(), 3);
    // SubnetLen exactly prefix + 2 and exactly 30 are allowed.
    assert!(NetConf::parse(r#"{"Network":"10.244.0.0/16","SubnetLen":18}"#).is_ok());
    assert!(NetConf::parse(r#"{"Network":"10.244.0.0/16","SubnetLen":30}"#).is_ok());
}

#[test]
fn to_json_round_trips_with_flannel_names() {
    for text in [
        r#"{"Network":"10.244.0.0/16"}"#,
        r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0","Backend":{"Type":"vxlan","VNI":7,"Port":4789,"DirectRouting":true,"MTU":1400}}"#,
        r#"{"Network":"192.168.0.0/24","Backend":{"Type":"ipip","DirectRouting":true}}"#,
    ] {
        let c = NetConf::parse(text).unwrap();
        let json = c.to_json();
        for name in [
            "\"Network\"",
            "\"SubnetLen\"",
            "\"SubnetMin\"",
            "\"SubnetMax\"",
            "\"Backend\"",
            "\"Type\"",
        ] {
            assert!(json.contains(name), "{json} lacks {name}");
        }
        assert_eq!(NetConf::parse(&json), Ok(c), "{json}");
    }
}

#[test]
fn with_defaults_builds_a_valid_conf() {
    let c = NetConf::with_defaults(
        "10.244.0.0/16".parse().unwrap(),
        Backend::Ipip {
            direct_routing: false,
        },
    )
    .unwrap();
    assert_eq!(c.subnet_len, 24);
    assert_eq!(c.backend.type_name(), "ipip");
}

/// Each broken config, and words its message must contain (the field, the value, and
/// what is allowed).
#[test]
fn bad_configs() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "truncated JSON",
            r#"{"Network": "10.244.0.0/16""#,
            &["invalid JSON", "line 1 column"],
        ),
        (
            "syntax error on line 3",
            "{\n  \"Network\": \"10.244.0.0/16\",\n  \"SubnetLen\": 24,,\n}",
            &["invalid JSON at line 3 column"],
        ),
        ("empty input", "", &["invalid JSON", "line 1 column 0"]),
        (
            "not an object",
            r#"["10.244.0.0/16"]"#,
            &["expected a JSON object", "an array"],
        ),
        (
            "Network missing",
            r#"{"SubnetLen": 24}"#,
            &["Network is missing", "10.244.0.0/16"],
        ),
        (
            "Network not a string",
            r#"{"Network": 10}"#,
            &["Network must be a string", "10 (a number)"],
        ),
        (
            "Network not CIDR",
            r#"{"Network": "10.244.0.0"}"#,
            &["Network \"10.244.0.0\"", "no prefix length"],
        ),
        (
            "Network garbage",
            r#"{"Network": "ten.0.0.0/8"}"#,
            &["Network \"ten.0.0.0/8\"", "not an IPv4 network"],
        ),
        (
            "Network prefix 33",
            r#"{"Network": "10.0.0.0/33"}"#,
            &["Network \"10.0.0.0/33\"", "CIDR"],
        ),
        (
            "Network IPv6",
            r#"{"Network": "fd00::/64"}"#,
            &["Network \"fd00::/64\"", "IPv6", "IPv4-only"],
        ),
        (
            "Network /0",
            r#"{"Network": "0.0.0.0/0"}"#,
            &["Network \"0.0.0.0/0\"", "every IPv4 address"],
        ),
        (
            "Network too small",
            r#"{"Network": "10.244.0.0/29"}"#,
            &["Network \"10.244.0.0/29\"", "too small", "/28"],
        ),
        (
            "SubnetLen too small",
            r#"{"Network": "10.244.0.0/16", "SubnetLen": 15}"#,
            &["SubnetLen 15", "at least 18", "prefix /16", "18 to 30"],
        ),
        (
            "SubnetLen leaves fewer than four subnets",
            r#"{"Network": "10.244.0.0/16", "SubnetLen": 17}"#,
            &["SubnetLen 17", "at least 18", "four subnets"],
        ),
        (
            "SubnetLen too large",
            r#"{"Network": "10.244.0.0/16", "SubnetLen": 31}"#,
            &["SubnetLen 31", "at most 30"],
        ),
        (
            "SubnetLen negative",
            r#"{"Network": "10.244.0.0/16", "SubnetLen": -24}"#,
            &["SubnetLen -24", "at least 18"],
        ),
        (
            "SubnetLen as string",
            r#"{"Network": "10.244.0.0/16", "SubnetLen": "24"}"#,
            &["SubnetLen must be a whole number", "\"24\" (a string)"],
        ),
        (
            "SubnetLen fractional",
            r#"{"Network": "10.244.0.0/16", "SubnetLen": 24.5}"#,
            &["SubnetLen must be a whole number", "24.5 (a number)"],
        ),
        (
            "SubnetMin outside network",
            r#"{"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0"}"#,
            &["SubnetMin \"10.245.0.0\"", "outside Network 10.244.0.0/16"],
        ),
        (
            "SubnetMin misaligned",
            r#"{"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.128"}"#,
            &[
                "SubnetMin \"10.244.1.128\"",
                "SubnetLen boundary (/24)",
                "10.244.1.0",
            ],
        ),
        (
            "SubnetMax outside network",
            r#"{"Network": "10.244.0.0/16", "SubnetMax": "10.0.0.0"}"#,
            &["SubnetMax \"10.0.0.0\"", "outside Network"],
        ),
        (
            "SubnetMax misaligned",
            r#"{"Network": "10.244.0.0/16", "SubnetLen": 20, "SubnetMax": "10.244.33.0"}"#,
            &["SubnetMax \"10.244.33.0\"", "(/20)", "10.244.32.0"],
        ),
        (
            "SubnetMin not an address",
            r#"{"Network": "10.244.0.0/16", "SubnetMin": "10.244.1"}"#,
            &["SubnetMin \"10.244.1\"", "not an IPv4 address"],
        ),
        (
            "SubnetMin after SubnetMax",
            r#"{"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.2.0"}"#,
            &["SubnetMin \"10.244.9.0\"", "after SubnetMax \"10.244.2.0\""],
        ),
        (
            "VNI too large",
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 16777216}}"#,
            &["Backend.VNI 16777216", "0 to 16777215"],
        ),
        (
            "VNI negative",
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": -1}}"#,
            &["Backend.VNI -1", "24 bits"],
        ),
        (
            "Port too large",
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "Port": 65536}}"#,
            &["Backend.Port 65536", "1 to 65535", "8472"],
        ),
        (
            "Port as string",
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "Port": "8472"}}"#,
            &["Backend.Port must be a whole number", "\"8472\" (a string)"],
        ),
        (
            "MTU too small",
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "MTU": 100}}"#,
            &["Backend.MTU 100", "between 118", "65535"],
        ),
        (
            "GBP",
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "GBP": true}}"#,
            &["Backend.GBP true", "not supported"],
        ),
        (
            "DirectRouting not a bool",
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "ipip", "DirectRouting": "yes"}}"#,
            &[
                "Backend.DirectRouting must be true or false",
                "\"yes\" (a string)",
            ],
        ),
        (
            "Backend udp",
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}"#,
            &[
                "Backend.Type \"udp\" is not supported by weft",
                "\"vxlan\"",
                "\"ipip\"",
                "historical default",
            ],
        ),
        (
            "Backend host-gw with an option it does not have",
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw", "DirectRouting": true}}"#,
            &[
                "unknown field \"Backend.DirectRouting\"",
                "of a host-gw Backend",
                "known fields of a host-gw Backend: Type",
            ],
        ),
        (
            "Backend hostgw",
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "hostgw"}}"#,
            &["\"hostgw\" is not supported", "\"host-gw\""],
        ),
        (
            "Backend wireguard",
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "wireguard"}}"#,
            &["\"wireguard\" is not supported", "supported are \"vxlan\""],
        ),
        (
            "Backend type in upper case",
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "VXLAN"}}"#,
            &["\"VXLAN\" is not supported", "case-sensitive"],
        ),
        (
            "Backend type unknown",
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "carrier-pigeon"}}"#,
            &["\"carrier-pigeon\" is not supported"],
        ),
        (
            "Backend without Type",
            r#"{"Network": "10.244.0.0/16", "Backend": {"VNI": 2}}"#,
            &["Backend.Type is missing"],
        ),
        (
            "Backend not an object",
            r#"{"Network": "10.244.0.0/16", "Backend": "vxlan"}"#,
            &["Backend must be an object", "\"vxlan\" (a string)"],
        ),
        (
            "unknown top-level field",
            "{\n  \"Network\": \"10.244.0.0/16\",\n  \"SubnetLenght\": 24\n}",
            &[
                "unknown field \"SubnetLenght\" at line 3 column 3",
                "SubnetLen",
            ],
        ),
        (
            "unknown backend field",
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VIN": 2}}"#,
            &[
                "unknown field \"Backend.VIN\" at line 1 column",
                "of a vxlan Backend",
                "VNI",
            ],
        ),
        (
            "vxlan option on ipip",
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "ipip", "VNI": 2}}"#,
            &[
                "unknown field \"Backend.VNI\"",
                "of an ipip Backend",
                "Type, DirectRouting",
            ],
        ),
        (
            "IPv6 enabled",
            r#"{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00::/56"}"#,
            &["EnableIPv6 true", "IPv4-only"],
        ),
        (
            "IPv4 disabled (flannel's TestIPv6ConfigDefaults)",
            r#"{ "enableIPv6": true, "ipv6Network": "fc00::/48", "enableIPv4": false }"#,
            &["EnableIPv4 false", "IPv4"],
        ),
    ];
    assert!(cases.len() >= 15);
    let mut messages = std::collections::HashSet::new();
    for (name, text, expected) in cases {
        let err = match NetConf::parse(text) {
            Ok(c) => panic!("{name}: accepted as {c:?}"),
            Err(e) => e.to_string(),
        };
        eprintln!("{name:45} {err}");
        assert!(err.starts_with("net-conf: "), "{name}: {err}");
        for part in *expected {
            assert!(err.contains(part), "{name}: {err:?} lacks {part:?}");
        }
        assert!(
            messages.insert(err.clone()),
            "{name}: message not specific: {err}"
        );
    }
}

#[test]
fn syntax_errors_carry_position() {
    let err = NetConf::parse("{\n\"Network\": \"10.244.0.0/16\"\n\"SubnetLen\": 24}").unwrap_err();
    match err {
        NetConfError::Syntax { line, column, .. } => assert_eq!((line, column), (3, 1)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn defaults_follow_flannel() {
    let c = NetConf::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
    assert_eq!(c.subnet_len, 24);
    assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
    assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
    assert_eq!(c.backend, Backend::default());
    assert_eq!(c.subnet_count(), 255);
    assert_eq!(c.underlay_mtu, None);
}

#[test]
fn small_networks_get_prefix_plus_two() {
    let c = NetConf::parse(r#"{"Network":"10.244.0.0/26"}"#).unwrap();
    assert_eq!(c.subnet_len, 28);
    assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 0, 16));
    assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 0, 48));
    assert_eq!(c.subnet_count(), 3);
    let c = NetConf::parse(r#"{"Network":"10.244.0.0/22"}"#).unwrap();
    assert_eq!(c.subnet_len, 24);
    let c = NetConf::parse(r#"{"Network":"10.244.0.0/23"}"#).unwrap();
    assert_eq!(c.subnet_len, 25);
}

#[test]
fn subnets_iterates_min_to_max() {
    let c = NetConf::parse(
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.12.0"}"#,
    )
    .unwrap();
    let all: Vec<String> = c.subnets().map(|s| s.to_string()).collect();
    assert_eq!(all, ["10.244.10.0/24", "10.244.11.0/24", "10.244.12.0/24"]);
    assert!(c.is_leasable("10.244.11.0/24".parse().unwrap()));
    assert!(!c.is_leasable("10.244.13.0/24".parse().unwrap()));
    assert!(!c.is_leasable("10.244.11.0/25".parse().unwrap()));
    assert!(!c.is_leasable("10.244.11.1/24".parse().unwrap()));
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_text(text in ".{0,200}") {
        let _ = NetConf::parse(&text);
    }

    #[test]
    fn parse_never_panics_on_plausible_configs(
        a in 0u8..=255, b in 0u8..=255, prefix in 0u8..=34,
        len in proptest::option::of(-3i64..=40),
        min in proptest::option::of((0u8..=255, 0u8..=255)),
        max in proptest::option::of((0u8..=255, 0u8..=255)),
        vni in proptest::option::of(-2i64..=(1 << 25)),
        port in proptest::option::of(-2i64..=70000),
        backend in prop::sample::select(vec!["vxlan", "ipip", "host-gw", "udp", ""]),
    ) {
        let mut text = format!(r#"{{"Network":"{a}.{b}.0.0/{prefix}""#);
        if let Some(len) = len { text += &format!(r#","SubnetLen":{len}"#); }
        if let Some((x, y)) = min { text += &format!(r#","SubnetMin":"{a}.{b}.{x}.{y}""#); }
        if let Some((x, y)) = max { text += &format!(r#","SubnetMax":"{a}.{b}.{x}.{y}""#); }
        text += &format!(r#","Backend":{{"Type":"{backend}""#);
        if backend == "vxlan" {
            if let Some(vni) = vni { text += &format!(r#","VNI":{vni}"#); }
            if let Some(port) = port { text += &format!(r#","Port":{port}"#); }
        }
        text += "}}";
        if let Ok(c) = NetConf::parse(&text) {
            // Whatever is accepted is internally consistent and round-trips.
            prop_assert!(c.subnet_len <= 30 && c.subnet_len >= c.network.prefix_len() + 2);
            prop_assert!(c.subnet_count() >= 1);
            prop_assert!(c.is_leasable(c.subnets().next().unwrap()));
            prop_assert!(c.is_leasable(ipnet::Ipv4Net::new(c.subnet_max, c.subnet_len).unwrap()));
            prop_assert_eq!(NetConf::parse(&c.to_json()), Ok(c));
        }
    }
}
