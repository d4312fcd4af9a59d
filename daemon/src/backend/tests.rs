use super::*;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn peer(subnet: &str, ip: &str, backend: PeerBackend) -> Peer {
    Peer {
        subnet: net(subnet),
        public_ip: ip.parse().unwrap(),
        backend,
    }
}

fn vxlan_lease(vni: u32) -> PeerBackend {
    PeerBackend::Vxlan {
        vni,
        vtep_mac: [2, 0, 0, 0, 0, 9],
    }
}

const MAC: MacAddr = [2, 0, 0, 0, 0, 1];
const DEVICES: RouteDevices = RouteDevices {
    tunnel: 7,
    underlay: 2,
};

fn backend(json: &str) -> NodeBackend {
    let conf = weft_config::NetConf::parse(&format!(
        r#"{{"Network":"10.244.0.0/16","Backend":{json}}}"#
    ))
    .unwrap();
    NodeBackend::new(&conf.backend, MAC)
}

#[test]
fn the_net_conf_picks_the_backend_and_its_tunnel() {
    let vxlan = backend(r#"{"Type":"vxlan","VNI":4,"Port":4789}"#);
    assert_eq!(vxlan.type_name(), "vxlan");
    assert_eq!(vxlan.overhead(), 50);
    let tunnel = vxlan.tunnel().unwrap();
    assert_eq!(
        tunnel,
        Tunnel::Vxlan {
            vni: 4,
            port: 4789,
            local_mac: MAC
        }
    );
    assert_eq!(tunnel.device_name(), "weft.4");
    assert_eq!(
        (tunnel.peer_port(), tunnel.vni(), tunnel.is_udp()),
        (4789, Some(4), true)
    );

    let ipip = backend(r#"{"Type":"ipip"}"#);
    assert_eq!((ipip.type_name(), ipip.overhead()), ("ipip", 20));
    let tunnel = ipip.tunnel().unwrap();
    assert_eq!(tunnel.device_name(), "weft.ipip");
    assert_eq!(
        (tunnel.peer_port(), tunnel.vni(), tunnel.is_udp()),
        (0, None, false)
    );

    let host_gw = backend(r#"{"Type":"host-gw"}"#);
    assert_eq!((host_gw.type_name(), host_gw.overhead()), ("host-gw", 0));
    assert_eq!(
        host_gw.tunnel(),
        None,
        "host-gw has no device, sockets or workers"
    );
}

#[test]
fn device_names_fit_ifnamsiz() {
    for tunnel in [
        Tunnel::Ipip,
        Tunnel::Vxlan {
            vni: weft_config::netconf::MAX_VNI,
            port: 8472,
            local_mac: MAC,
        },
    ] {
        assert!(tunnel.device_name().len() < 16, "{}", tunnel.device_name());
    }
}

#[test]
fn tunnels_accept_their_own_kind_only() {
    let vxlan = backend(r#"{"Type":"vxlan"}"#).tunnel().unwrap();
    assert_eq!(vxlan.peer_mac(&vxlan_lease(1)), Some([2, 0, 0, 0, 0, 9]));
    assert_eq!(vxlan.peer_mac(&vxlan_lease(2)), None, "another VNI");
    assert_eq!(vxlan.peer_mac(&PeerBackend::Ipip), None);
    let ipip = Tunnel::Ipip;
    assert_eq!(ipip.peer_mac(&PeerBackend::Ipip), Some([0; 6]));
    assert_eq!(ipip.peer_mac(&PeerBackend::HostGw), None);
}

#[test]
fn host_gw_routes_on_link_peers_via_their_public_ip() {
    let host_gw = backend(r#"{"Type":"host-gw"}"#);
    let on_link = [net("192.0.2.0/24")];
    let a = peer("10.244.2.0/24", "192.0.2.2", PeerBackend::HostGw);
    assert_eq!(host_gw.reach(&a, &on_link), Ok(Reach::Direct));
    assert_eq!(
        Reach::Direct.route(&a, DEVICES),
        Route {
            dst: net("10.244.2.0/24").into(),
            gateway: Some("192.0.2.2".parse().unwrap()),
            oif: 2
        }
    );
    // Any of the interface's subnets will do: the kernel takes each as on link.
    let b = peer("10.244.3.0/24", "198.51.100.3", PeerBackend::HostGw);
    let two = [net("192.0.2.0/24"), net("198.51.100.0/24")];
    assert_eq!(host_gw.reach(&b, &two), Ok(Reach::Direct));
}

#[test]
fn host_gw_refuses_a_peer_off_the_underlay_subnet_naming_all_three() {
    let host_gw = backend(r#"{"Type":"host-gw"}"#);
    let far = peer("10.244.9.0/24", "198.51.100.9", PeerBackend::HostGw);
    let refusal = host_gw.reach(&far, &[net("192.0.2.0/24")]).unwrap_err();
    assert_eq!(refusal.reason(), RefusalReason::NotOnLink);
    let message = refusal.to_string();
    for part in [
        "10.244.9.0/24",
        "198.51.100.9",
        "192.0.2.0/24",
        "not a directly connected",
        "host-gw",
    ] {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
    let refusal = host_gw.reach(&far, &[]).unwrap_err();
    assert!(refusal.to_string().contains("subnet (none)"), "{refusal}");
}

#[test]
fn every_backend_refuses_leases_of_another_backend() {
    let on_link = [net("192.0.2.0/24")];
    let cases = [
        (
            r#"{"Type":"host-gw"}"#,
            vxlan_lease(1),
            "vxlan (VNI 1)",
            "network is host-gw",
        ),
        (
            r#"{"Type":"host-gw"}"#,
            PeerBackend::Other("udp".into()),
            "lease is udp",
            "host-gw",
        ),
        (
            r#"{"Type":"vxlan"}"#,
            vxlan_lease(2),
            "vxlan (VNI 2)",
            "network is vxlan (VNI 1)",
        ),
        (
            r#"{"Type":"vxlan"}"#,
            PeerBackend::HostGw,
            "lease is host-gw",
            "vxlan (VNI 1)",
        ),
        (
            r#"{"Type":"ipip"}"#,
            vxlan_lease(1),
            "vxlan (VNI 1)",
            "network is ipip",
        ),
    ];
    for (json, lease, theirs, ours) in cases {
        let p = peer("10.244.4.0/24", "192.0.2.4", lease);
        let refusal = backend(json).reach(&p, &on_link).unwrap_err();
        assert_eq!(refusal.reason(), RefusalReason::BackendMismatch, "{json}");
        let message = refusal.to_string();
        assert!(
            message.contains(theirs) && message.contains(ours),
            "{json}: {message}"
        );
        assert!(message.contains("10.244.4.0/24"), "{message}");
    }
}

#[test]
fn direct_routing_only_for_peers_on_the_underlay_subnet() {
    let on_link = [net("192.0.2.0/24")];
    let near = peer("10.244.2.0/24", "192.0.2.2", vxlan_lease(1));
    let far = peer("10.244.3.0/24", "198.51.100.3", vxlan_lease(1));
    let plain = backend(r#"{"Type":"vxlan"}"#);
    let direct = backend(r#"{"Type":"vxlan","DirectRouting":true}"#);
    assert_eq!(plain.reach(&near, &on_link), Ok(Reach::Tunnel));
    assert_eq!(direct.reach(&near, &on_link), Ok(Reach::Direct));
    assert_eq!(direct.reach(&far, &on_link), Ok(Reach::Tunnel));
    let ipip = backend(r#"{"Type":"ipip","DirectRouting":true}"#);
    let near = peer("10.244.2.0/24", "192.0.2.2", PeerBackend::Ipip);
    assert_eq!(ipip.reach(&near, &on_link), Ok(Reach::Direct));
    assert_eq!(
        Reach::Tunnel.route(&near, DEVICES),
        Route {
            dst: net("10.244.2.0/24").into(),
            gateway: None,
            oif: 7
        }
    );
}

#[test]
fn plan_skips_the_own_subnet_and_splits_routes_from_refusals() {
    let own = net("10.244.1.0/24");
    let peers = [
        peer("10.244.1.0/24", "192.0.2.1", PeerBackend::HostGw),
        peer("10.244.2.0/24", "192.0.2.2", PeerBackend::HostGw),
        peer("10.244.3.0/24", "198.51.100.3", PeerBackend::HostGw),
        peer("10.244.4.0/24", "192.0.2.4", vxlan_lease(1)),
    ];
    let on_link = [net("192.0.2.0/24")];
    let plan = plan(
        &backend(r#"{"Type":"host-gw"}"#),
        own,
        &peers,
        &on_link,
        DEVICES,
    );
    assert_eq!(
        plan.routes,
        [Route {
            dst: net("10.244.2.0/24").into(),
            gateway: Some("192.0.2.2".parse().unwrap()),
            oif: 2
        }]
    );
    assert_eq!(plan.reachable.len(), 1);
    assert!(!plan.reachable[0].1, "a host-gw peer is not tunnelled");
    let reasons: Vec<_> = plan.refused.iter().map(Refusal::reason).collect();
    assert_eq!(
        reasons,
        [RefusalReason::NotOnLink, RefusalReason::BackendMismatch]
    );
}
