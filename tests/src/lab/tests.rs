use super::*;

#[test]
fn subnet_env_is_parsed() {
    let (s, mtu) = parse_subnet_env(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    assert_eq!(s.to_string(), "10.244.3.0/24");
    assert_eq!(mtu, 1400);
    assert!(parse_subnet_env("FLANNEL_MTU=1450\n").is_err());
    assert!(parse_subnet_env("FLANNEL_SUBNET=banana\n").is_err());
}

#[test]
fn generated_netconf_is_flannels() {
    let v: serde_json::Value = serde_json::from_str(&LabSpec::weft(2).netconf_json()).unwrap();
    assert_eq!(v["Network"], "10.244.0.0/16");
    assert_eq!(v["Backend"]["Type"], "vxlan");
    assert_eq!(v["Backend"]["Port"], 8472);
    let ipip = LabSpec {
        backend: Backend::Ipip,
        ..LabSpec::weft(2)
    };
    let v: serde_json::Value = serde_json::from_str(&ipip.netconf_json()).unwrap();
    assert_eq!(v["Backend"]["Type"], "ipip");
}

#[test]
fn bad_specs_are_rejected_with_the_reason() {
    let e = LabSpec {
        kernel_nodes: 1,
        backend: Backend::Ipip,
        ..LabSpec::weft(2)
    }
    .validate()
    .unwrap_err();
    assert!(e.to_string().contains("vxlan"), "{e}");
    let e = LabSpec {
        port: 1234,
        ..LabSpec::weft(2)
    }
    .validate()
    .unwrap_err();
    assert!(e.to_string().contains("1234"), "{e}");
    let e = LabSpec {
        prefix: Some("Bad-Prefix".into()),
        ..LabSpec::weft(2)
    }
    .validate()
    .unwrap_err();
    assert!(e.to_string().contains("Bad-Prefix"), "{e}");
    assert!(LabSpec::weft(0).validate().is_err());
}
