//! Spec tests of the `weft` CNI plugin: the binary driven through CNI environment
//! variables and stdin, inside a node namespace with cni0 and pod namespaces the test
//! creates. Every operation, every supported cniVersion's result shape, error codes,
//! DEL idempotence, CHECK detecting a removed route, chaining, IPAM delegation.

mod cni_support;

use cni_support::*;
use serde_json::{json, Value};
use weft_tests::netns::Netns;

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn add_check_del_in_every_version() {
    if !weft_tests::require_root("add_check_del_in_every_version") {
        return;
    }
    let node = CniNode::standard("v").unwrap();
    for (i, version) in VERSIONS.iter().enumerate() {
        let pod = node.pod(&format!("p{i}")).unwrap();
        let path = netns_path(&pod);
        let id = format!("ctr-{i}");
        let conf = node.conf(version, json!({}));
        let call = |command| Call {
            command,
            container_id: &id,
            netns: &path,
            ifname: "eth0",
        };
        let result = node.weft(&call("ADD"), &conf).ok(&format!("ADD {version}"));

        // Result shape of the version asked for.
        assert_eq!(result["cniVersion"], *version);
        let ifaces = result["interfaces"].as_array().expect("interfaces");
        assert_eq!(ifaces.len(), 3, "{result}");
        assert_eq!(ifaces[0]["name"], "cni0");
        assert!(ifaces[1]["name"].as_str().unwrap().starts_with("wf"));
        assert_eq!(ifaces[2]["name"], "eth0");
        assert_eq!(ifaces[2]["sandbox"], path.as_str());
        let ip = &result["ips"][0];
        assert_eq!(ip["interface"], 2);
        assert_eq!(ip["gateway"], "10.244.1.1");
        let addr = ip["address"].as_str().unwrap();
        assert!(
            addr.starts_with("10.244.1.") && addr.ends_with("/24"),
            "{addr}"
        );
        if version.starts_with("0.") {
            assert_eq!(ip["version"], "4", "{version}: {result}");
        } else {
            assert!(ip.get("version").is_none(), "{version}: {result}");
        }
        assert_eq!(
            ifaces[2].get("mtu").is_some(),
            *version == "1.1.0",
            "{result}"
        );
        assert_eq!(
            result["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}])
        );

        // What is really there.
        assert_eq!(pod_addr(&pod, "eth0").as_deref(), Some(addr));
        let routes = pod.ip(&["-4", "route"]).unwrap();
        assert!(
            routes.contains("default via 10.244.1.1 dev eth0"),
            "{routes}"
        );
        let link = pod.ip(&["-d", "link", "show", "eth0"]).unwrap();
        assert!(
            link.contains("mtu 1450") && link.contains("state UP"),
            "{link}"
        );
        let host_veth = ifaces[1]["name"].as_str().unwrap();
        let host = node.ns.ip(&["-d", "link", "show", host_veth]).unwrap();
        assert!(
            host.contains("master cni0") && host.contains("mtu 1450"),
            "{host}"
        );
        assert!(
            host.contains("state UP"),
            "ADD returned before the host end was up: {host}"
        );
        let bridge = node.ns.ip(&["-4", "addr", "show", "cni0"]).unwrap();
        assert!(bridge.contains("10.244.1.1/24"), "{bridge}");
        let ip_only = addr.split('/').next().unwrap();
        assert!(node.allocations().contains(&ip_only.to_string()));
        pod.run("ping", &["-c1", "-W2", "10.244.1.1"])
            .expect("pod reaches its gateway");

        // CHECK: from 0.4.0 on it passes; 0.3.x does not allow it (code 1).
        let check = node.weft(&call("CHECK"), &with_prev(&conf, &result));
        if version.starts_with("0.3") {
            check.err(&format!("CHECK {version}"), 1);
        } else {
            check.ok(&format!("CHECK {version}"));
        }

        // DEL (with prevResult, as runtimes send it), twice.
        node.weft(&call("DEL"), &with_prev(&conf, &result))
            .ok(&format!("DEL {version}"));
        assert!(!node.allocations().contains(&ip_only.to_string()));
        assert!(!node.host_veths().contains(&host_veth.to_string()));
        assert!(!weft_tests::link::exists(&pod, "eth0"));
        node.weft(&call("DEL"), &conf)
            .ok(&format!("second DEL {version}"));
    }
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn version_status_and_gc() {
    if !weft_tests::require_root("version_status_and_gc") {
        return;
    }
    let node = CniNode::standard("s").unwrap();
    let none = Call {
        command: "VERSION",
        container_id: "",
        netns: "",
        ifname: "",
    };
    let v = node
        .weft(&none, &json!({"cniVersion": "1.1.0"}))
        .ok("VERSION");
    assert_eq!(v["supportedVersions"], json!(VERSIONS));

    let conf = node.conf("1.1.0", json!({}));
    node.weft(
        &Call {
            command: "STATUS",
            ..none.clone()
        },
        &conf,
    )
    .ok("STATUS");

    // Three attachments; GC keeps the two listed as valid.
    let pods: Vec<_> = (0..3)
        .map(|i| node.pod(&format!("g{i}")).unwrap())
        .collect();
    let paths: Vec<String> = pods.iter().map(netns_path).collect();
    let ids = ["keep-a", "keep-b", "stale-c"];
    for (id, path) in ids.iter().zip(&paths) {
        let call = Call {
            command: "ADD",
            container_id: id,
            netns: path,
            ifname: "eth0",
        };
        node.weft(&call, &conf).ok("ADD");
    }
    assert_eq!(node.allocations().len(), 3);
    assert_eq!(node.host_veths().len(), 3);
    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([
        {"containerID": "keep-a", "ifname": "eth0"},
        {"containerID": "keep-b", "ifname": "eth0"},
    ]);
    node.weft(
        &Call {
            command: "GC",
            ..none.clone()
        },
        &gc_conf,
    )
    .ok("GC");
    assert_eq!(node.allocations().len(), 2);
    assert_eq!(node.host_veths().len(), 2);
    assert!(
        !weft_tests::link::exists(&pods[2], "eth0"),
        "GC left the stale pod's veth"
    );
    assert!(weft_tests::link::exists(&pods[0], "eth0"));

    // GC below 1.1.0 and STATUS below 1.1.0 are refused with code 1.
    node.weft(
        &Call {
            command: "GC",
            ..none.clone()
        },
        &node.conf("1.0.0", json!({})),
    )
    .err("GC 1.0.0", 1);
    node.weft(
        &Call {
            command: "STATUS",
            ..none.clone()
        },
        &node.conf("1.0.0", json!({})),
    )
    .err("STATUS 1.0.0", 1);
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn errors_have_spec_codes() {
    if !weft_tests::require_root("errors_have_spec_codes") {
        return;
    }
    let node = CniNode::standard("e").unwrap();
    let pod = node.pod("p").unwrap();
    let path = netns_path(&pod);
    let add = Call {
        command: "ADD",
        container_id: "err-1",
        netns: &path,
        ifname: "eth0",
    };
    let conf = node.conf("1.0.0", json!({}));
    let run = |call: &Call<'_>, stdin: &str| node.invoke("weft", call, stdin.as_bytes()).unwrap();

    run(&add, &node.conf("0.2.0", json!({})).to_string()).err("old cniVersion", 1);
    run(&add, &node.conf("2.0.0", json!({})).to_string()).err("future cniVersion", 1);
    run(
        &add,
        &node.conf("1.0.0", json!({"ipMasq": true})).to_string(),
    )
    .err("ipMasq", 2);
    run(
        &Call {
            container_id: "",
            ..add.clone()
        },
        &conf.to_string(),
    )
    .err("no CNI_CONTAINERID", 4);
    run(
        &Call {
            container_id: "a/b",
            ..add.clone()
        },
        &conf.to_string(),
    )
    .err("bad container id", 4);
    run(
        &Call {
            ifname: "",
            ..add.clone()
        },
        &conf.to_string(),
    )
    .err("no CNI_IFNAME", 4);
    run(
        &Call {
            netns: "",
            ..add.clone()
        },
        &conf.to_string(),
    )
    .err("no CNI_NETNS", 4);
    run(
        &Call {
            command: "FROB",
            ..add.clone()
        },
        &conf.to_string(),
    )
    .err("unknown command", 4);
    run(&add, "{not json").err("garbage config", 6);
    let bad_mtu =
        run(&add, &node.conf("1.0.0", json!({"mtu": "big"})).to_string()).err("bad mtu", 7);
    assert!(
        bad_mtu["msg"].as_str().unwrap().contains("mtu"),
        "{bad_mtu}"
    );
    run(
        &add,
        &node.conf("1.0.0", json!({"name": "no spaces"})).to_string(),
    )
    .err("bad name", 7);

    // subnet.env not there yet: ADD says "try again later", STATUS "not available".
    let missing = node.conf(
        "1.1.0",
        json!({"subnetFile": node.dir.path().join("absent.env")}),
    );
    let e = run(&add, &missing.to_string()).err("ADD without subnet.env", 11);
    assert!(e["msg"].as_str().unwrap().contains("absent.env"), "{e}");
    run(
        &Call {
            command: "STATUS",
            ..add.clone()
        },
        &missing.to_string(),
    )
    .err("STATUS without subnet.env", 50);

    // Garbage subnet.env: a clear invalid-config error naming the file.
    let garbage = node.dir.path().join("garbage.env");
    std::fs::write(&garbage, "FLANNEL_SUBNET=banana\n").unwrap();
    let e = run(
        &add,
        &node
            .conf("1.0.0", json!({"subnetFile": garbage}))
            .to_string(),
    )
    .err("garbage subnet.env", 7);
    assert!(e["msg"].as_str().unwrap().contains("garbage.env"), "{e}");

    // A broken prevResult is refused before anything is set up.
    let bad_prev = node.conf(
        "1.0.0",
        json!({"prevResult": {"ips": [{"address": "nope"}]}}),
    );
    run(&add, &bad_prev.to_string()).err("broken prevResult", 7);

    // A subnet.env that cannot be read (a directory): invalid config, naming the path.
    let unreadable = node.dir.path().join("dir.env");
    std::fs::create_dir(&unreadable).unwrap();
    let conf_unreadable = node.conf("1.0.0", json!({ "subnetFile": unreadable }));
    let e = run(&add, &conf_unreadable.to_string()).err("unreadable subnet.env", 7);
    assert!(e["msg"].as_str().unwrap().contains("dir.env"), "{e}");

    // None of the failed ADDs left anything behind.
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    assert!(!weft_tests::link::exists(&pod, "eth0"));
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn failed_add_leaves_nothing_behind() {
    if !weft_tests::require_root("failed_add_leaves_nothing_behind") {
        return;
    }
    let node = CniNode::standard("f").unwrap();
    let pod = node.pod("p").unwrap();
    // The pod already has an eth0: ADD must fail after the IP was reserved, and undo it.
    pod.ip(&["link", "add", "eth0", "type", "bridge"]).unwrap();
    let path = netns_path(&pod);
    let call = Call {
        command: "ADD",
        container_id: "dup",
        netns: &path,
        ifname: "eth0",
    };
    node.weft(&call, &node.conf("1.0.0", json!({})))
        .err("ADD onto an existing eth0", 102);
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    // A namespace path that is not a namespace.
    let not_ns = node.dir.path().join("subnet.env");
    let call = Call {
        netns: not_ns.to_str().unwrap(),
        ..call
    };
    let e = node
        .weft(&call, &node.conf("1.0.0", json!({})))
        .err("ADD into a file that is not a netns", 4);
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("is not a network namespace"),
        "{e}"
    );
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn del_is_idempotent() {
    if !weft_tests::require_root("del_is_idempotent") {
        return;
    }
    let node = CniNode::standard("d").unwrap();
    let conf = node.conf("1.0.0", json!({}));
    // Unknown container, empty CNI_NETNS, before anything exists (no IPAM dir yet).
    let del = Call {
        command: "DEL",
        container_id: "never-added",
        netns: "",
        ifname: "eth0",
    };
    node.weft(&del, &conf).ok("DEL of an unknown container");
    node.weft(&del, &conf)
        .ok("DEL of an unknown container, again");

    // DEL after the pod namespace is gone: releases the address, no veth left.
    let pod = node.pod("p").unwrap();
    let path = netns_path(&pod);
    let add = Call {
        command: "ADD",
        container_id: "gone",
        netns: &path,
        ifname: "eth0",
    };
    node.weft(&add, &conf).ok("ADD");
    assert_eq!(node.allocations().len(), 1);
    drop(pod);
    let del = Call {
        command: "DEL",
        ..add.clone()
    };
    node.weft(&del, &conf).ok("DEL with a vanished CNI_NETNS");
    node.weft(
        &Call {
            netns: "",
            ..del.clone()
        },
        &conf,
    )
    .ok("DEL with an empty CNI_NETNS");
    assert!(node.allocations().is_empty());
    assert!(node.host_veths().is_empty());

    // The host end is gone under another name: DEL still removes the pod's veth.
    let pod = node.pod("q").unwrap();
    let path = netns_path(&pod);
    let add = Call {
        command: "ADD",
        container_id: "renamed",
        netns: &path,
        ifname: "eth0",
    };
    let result = node.weft(&add, &conf).ok("ADD");
    let host_veth = result["interfaces"][1]["name"].as_str().unwrap();
    node.ns.ip(&["link", "set", host_veth, "down"]).unwrap();
    node.ns
        .ip(&["link", "set", host_veth, "name", "renamed0"])
        .unwrap();
    node.weft(
        &Call {
            command: "DEL",
            ..add.clone()
        },
        &conf,
    )
    .ok("DEL with the host end renamed");
    assert!(!weft_tests::link::exists(&pod, "eth0"));
    assert!(!weft_tests::link::exists(&node.ns, "renamed0"));
    assert!(node.allocations().is_empty());
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn check_detects_removed_route_and_other_drift() {
    if !weft_tests::require_root("check_detects_removed_route_and_other_drift") {
        return;
    }
    let node = CniNode::standard("c").unwrap();
    let pod = node.pod("p").unwrap();
    let path = netns_path(&pod);
    let conf = node.conf("1.0.0", json!({}));
    let call = |command| Call {
        command,
        container_id: "chk",
        netns: &path,
        ifname: "eth0",
    };
    let result = node.weft(&call("ADD"), &conf).ok("ADD");
    let check_conf = with_prev(&conf, &result);
    node.weft(&call("CHECK"), &check_conf)
        .ok("CHECK of a fresh pod");

    pod.ip(&["route", "del", "default"]).unwrap();
    let e = node
        .weft(&call("CHECK"), &check_conf)
        .err("CHECK without the default route", 100);
    let msg = e["msg"].as_str().unwrap();
    assert!(msg.contains("0.0.0.0/0 via 10.244.1.1"), "{msg}");

    pod.ip(&["link", "set", "eth0", "mtu", "1400"]).unwrap();
    let host_veth = result["interfaces"][1]["name"].as_str().unwrap();
    node.ns.ip(&["link", "set", host_veth, "nomaster"]).unwrap();
    let e = node
        .weft(&call("CHECK"), &check_conf)
        .err("CHECK after drift", 100);
    let msg = e["msg"].as_str().unwrap();
    assert!(
        msg.contains("MTU") && msg.contains("not a port of cni0"),
        "{msg}"
    );

    node.weft(&call("CHECK"), &conf)
        .err("CHECK without prevResult", 7);
    node.weft(&call("DEL"), &conf).ok("DEL");
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn options_gateway_hairpin_and_stale_bridge_address() {
    if !weft_tests::require_root("options_gateway_hairpin_and_stale_bridge_address") {
        return;
    }
    let node = CniNode::new("o", &subnet_env("10.244.5.1/24", 1400)).unwrap();
    // A cni0 left from an earlier lease with another subnet and MTU.
    node.ns
        .ip(&["link", "add", "cni0", "mtu", "1500", "type", "bridge"])
        .unwrap();
    node.ns
        .ip(&["addr", "add", "10.244.9.1/24", "dev", "cni0"])
        .unwrap();

    let pod = node.pod("p").unwrap();
    let path = netns_path(&pod);
    let conf = node.conf(
        "1.1.0",
        json!({"isDefaultGateway": false, "hairpinMode": true}),
    );
    let call = Call {
        command: "ADD",
        container_id: "opt",
        netns: &path,
        ifname: "net1",
    };
    let result = node.weft(&call, &conf).ok("ADD");
    assert_eq!(
        result["routes"],
        json!([{"dst": "10.244.0.0/16", "gw": "10.244.5.1"}])
    );
    let routes = pod.ip(&["-4", "route"]).unwrap();
    assert!(!routes.contains("default"), "{routes}");
    assert!(
        routes.contains("10.244.0.0/16 via 10.244.5.1 dev net1"),
        "{routes}"
    );
    let bridge = node.ns.ip(&["-4", "-o", "addr", "show", "cni0"]).unwrap();
    assert!(
        bridge.contains("10.244.5.1/24") && !bridge.contains("10.244.9.1"),
        "{bridge}"
    );
    let bridge_link = node.ns.ip(&["link", "show", "cni0"]).unwrap();
    assert!(bridge_link.contains("mtu 1400"), "{bridge_link}");
    let host_veth = result["interfaces"][1]["name"].as_str().unwrap();
    let port = node.ns.ip(&["-d", "link", "show", host_veth]).unwrap();
    assert!(port.contains("hairpin on"), "{port}");
    assert_eq!(result["interfaces"][2]["mtu"], 1400);
    node.weft(
        &Call {
            command: "DEL",
            ..call.clone()
        },
        &conf,
    )
    .ok("DEL");
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn chaining_in_both_positions() {
    if !weft_tests::require_root("chaining_in_both_positions") {
        return;
    }
    let node = CniNode::standard("h").unwrap();
    let pod = node.pod("p").unwrap();
    let path = netns_path(&pod);
    let call = |command, ifname| Call {
        command,
        container_id: "chain",
        netns: &path,
        ifname,
    };

    // weft first, then the reference portmap with weft's result as its prevResult.
    let conf = node.conf("1.0.0", json!({}));
    let ours = node.weft(&call("ADD", "eth0"), &conf).ok("weft ADD");
    let portmap = json!({"cniVersion": "1.0.0", "name": node.network, "type": "portmap",
        "capabilities": {"portMappings": true}, "prevResult": ours});
    let out = node
        .invoke(
            "portmap",
            &call("ADD", "eth0"),
            portmap.to_string().as_bytes(),
        )
        .unwrap()
        .ok("portmap ADD after weft");
    assert_eq!(
        out["ips"], ours["ips"],
        "portmap must pass weft's result through"
    );

    // weft second: an earlier plugin's result comes in as prevResult (0.4.0 format),
    // weft appends its own attachment and re-bases the interface index.
    let prev = json!({"cniVersion": "0.4.0",
        "interfaces": [{"name": "lo", "sandbox": path}],
        "ips": [{"version": "4", "address": "127.0.0.1/8", "interface": 0}],
        "dns": {"nameservers": ["192.0.2.53"]}});
    let conf2 = with_prev(&node.conf("0.4.0", json!({})), &prev);
    let merged = node
        .weft(&call("ADD", "eth1"), &conf2)
        .ok("weft ADD with prevResult");
    assert_eq!(
        merged["interfaces"].as_array().unwrap().len(),
        4,
        "{merged}"
    );
    assert_eq!(merged["interfaces"][0]["name"], "lo");
    assert_eq!(merged["ips"][0]["address"], "127.0.0.1/8");
    assert_eq!(merged["ips"][1]["interface"], 3, "{merged}");
    assert_eq!(merged["ips"][1]["version"], "4");
    assert_eq!(merged["dns"]["nameservers"][0], "192.0.2.53");
    // CHECK finds eth1 among the merged interfaces.
    node.weft(
        &call("CHECK", "eth1"),
        &with_prev(&node.conf("0.4.0", json!({})), &merged),
    )
    .ok("CHECK of the chained attachment");

    for ifname in ["eth0", "eth1"] {
        node.weft(&call("DEL", ifname), &conf).ok("DEL");
    }
    assert!(node.allocations().is_empty());
}

#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn ipam_section_is_delegated() {
    if !weft_tests::require_root("ipam_section_is_delegated") {
        return;
    }
    let node = CniNode::standard("i").unwrap();
    let pod = node.pod("p").unwrap();
    let path = netns_path(&pod);
    let hl_dir = node.dir.path().join("host-local");
    let conf = node.conf(
        "1.0.0",
        json!({"ipam": {"type": "host-local", "dataDir": hl_dir,
            "ranges": [[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.100",
                         "gateway": "10.244.1.1"}]],
            "routes": [{"dst": "10.244.0.0/16"}]}}),
    );
    let call = |command| Call {
        command,
        container_id: "delegated",
        netns: &path,
        ifname: "eth0",
    };
    let result = node.weft(&call("ADD"), &conf).ok("ADD with host-local");
    assert_eq!(result["ips"][0]["address"], "10.244.1.100/24", "{result}");
    let routes: Vec<Value> = result["routes"].as_array().unwrap().clone();
    assert!(
        routes.contains(&json!({"dst": "10.244.0.0/16", "gw": "10.244.1.1"})),
        "{result}"
    );
    assert!(
        routes.contains(&json!({"dst": "0.0.0.0/0", "gw": "10.244.1.1"})),
        "{result}"
    );
    assert_eq!(pod_addr(&pod, "eth0").as_deref(), Some("10.244.1.100/24"));
    assert_eq!(list_ips(&hl_dir.join(&node.network)), vec!["10.244.1.100"]);
    assert!(
        node.allocations().is_empty(),
        "built-in IPAM must not be used"
    );
    node.weft(&call("CHECK"), &with_prev(&conf, &result))
        .ok("CHECK");

    // STATUS and GC at 1.1.0 with a host-local that predates them: weft asks the
    // plugin's VERSION first and does its own part (stale veths found on the bridge).
    let mut conf11 = conf.clone();
    conf11["cniVersion"] = json!("1.1.0");
    node.weft(&call("STATUS"), &conf11)
        .ok("STATUS with delegated IPAM");
    let mut gc = conf11.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "delegated", "ifname": "eth0"}]);
    node.weft(&call("GC"), &gc).ok("GC keeping the attachment");
    assert_eq!(node.host_veths().len(), 1);
    gc["cni.dev/valid-attachments"] = json!([]);
    node.weft(&call("GC"), &gc).ok("GC of everything");
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());

    node.weft(&call("DEL"), &conf).ok("DEL");
    assert!(list_ips(&hl_dir.join(&node.network)).is_empty());

    // An IPAM plugin that does not exist: a clear error, nothing left behind.
    let missing = node.conf("1.0.0", json!({"ipam": {"type": "no-such-ipam"}}));
    let e = node
        .weft(&call("ADD"), &missing)
        .err("missing IPAM plugin", 7);
    assert!(e["msg"].as_str().unwrap().contains("no-such-ipam"), "{e}");
    assert!(node.host_veths().is_empty());
}

// ---- the shipped conflist, driven as runtimes drive it -----------------------------

/// `deploy/cni/10-weft.conflist` with the weft entry pointed at this test node's
/// subnet.env and IPAM store (the shipped paths are the real node's), and the node's
/// network name.
fn shipped_conflist(node: &CniNode) -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/cni/10-weft.conflist"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut list: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    list["name"] = json!(node.network);
    let weft = &mut list["plugins"][0];
    assert_eq!(weft["type"], "weft", "{path}: weft first");
    weft["subnetFile"] = json!(node.subnet_file);
    weft["dataDir"] = json!(node.data_dir);
    list
}

fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap()).collect()
}

/// The version a runtime whose libcni speaks up to `runtime_max` runs the list at: the
/// highest of `cniVersions` and `cniVersion` it knows (libcni 1.2, CNI spec 1.1); a
/// libcni before 1.2 does not know `cniVersions` and reads `cniVersion` alone.
fn negotiated(list: &Value, runtime_max: &str) -> String {
    let single = list["cniVersion"].as_str().unwrap().to_owned();
    if version_key(runtime_max) < version_key("1.1.0") {
        return single;
    }
    let offered = list["cniVersions"].as_array().cloned().unwrap_or_default();
    offered
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .chain(std::iter::once(single))
        .filter(|v| version_key(v) <= version_key(runtime_max))
        .max_by_key(|v| version_key(v))
        .unwrap()
}

/// Plugin `i` of the list as libcni hands it over: the entry with the list's name and
/// the negotiated version, `runtimeConfig` for the capabilities it declares, and the
/// previous result.
fn plugin_conf(
    list: &Value,
    i: usize,
    version: &str,
    runtime: &Value,
    prev: Option<&Value>,
) -> Value {
    let mut conf = list["plugins"][i].clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = json!(version);
    let mut runtime_config = serde_json::Map::new();
    if let Some(caps) = conf["capabilities"].as_object() {
        for (cap, on) in caps {
            if on == true && !runtime[cap].is_null() {
                runtime_config.insert(cap.clone(), runtime[cap].clone());
            }
        }
    }
    if !runtime_config.is_empty() {
        conf["runtimeConfig"] = Value::Object(runtime_config);
    }
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    conf
}

/// The list's plugin types, each with whether its VERSION lists `version`.
fn speaks(node: &CniNode, list: &Value, version: &str) -> Vec<(String, bool)> {
    let none = Call {
        command: "VERSION",
        container_id: "",
        netns: "",
        ifname: "",
    };
    list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let kind = p["type"].as_str().unwrap().to_owned();
            let out = node
                .invoke(
                    &kind,
                    &none,
                    json!({"cniVersion": "1.0.0"}).to_string().as_bytes(),
                )
                .unwrap()
                .ok(&format!("{kind} VERSION"));
            let ok = out["supportedVersions"]
                .as_array()
                .unwrap()
                .contains(&json!(version));
            (kind, ok)
        })
        .collect()
}

/// ADD through the list as a runtime runs it; returns the final result.
fn add_chain(
    node: &CniNode,
    list: &Value,
    version: &str,
    runtime: &Value,
    call: &Call<'_>,
) -> Value {
    let mut prev: Option<Value> = None;
    for i in 0..list["plugins"].as_array().unwrap().len() {
        let conf = plugin_conf(list, i, version, runtime, prev.as_ref());
        let kind = conf["type"].as_str().unwrap().to_owned();
        let out = node
            .invoke(&kind, call, conf.to_string().as_bytes())
            .unwrap();
        prev = Some(out.ok(&format!("{kind} ADD at {version}")));
    }
    prev.unwrap()
}

/// `command` (CHECK, DEL, STATUS, GC) on every plugin of the list, DEL in reverse.
fn each_plugin(
    node: &CniNode,
    list: &Value,
    version: &str,
    runtime: &Value,
    call: &Call<'_>,
    prev: Option<&Value>,
    extra: Value,
) {
    let n = list["plugins"].as_array().unwrap().len();
    let order: Vec<usize> = if call.command == "DEL" {
        (0..n).rev().collect()
    } else {
        (0..n).collect()
    };
    for i in order {
        let mut conf = plugin_conf(list, i, version, runtime, prev);
        if let (Some(c), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let kind = conf["type"].as_str().unwrap().to_owned();
        let out = node
            .invoke(&kind, call, conf.to_string().as_bytes())
            .unwrap();
        // Debian's portmap 1.1.1 fails CHECK on an IPv4-only pod ("could not check ipv6
        // dnat": it looks for an ip6tables chain it never made), which no runtime here
        // calls; weft's own CHECK must pass.
        if call.command == "CHECK" && kind != "weft" && !out.success {
            eprintln!(
                "NOTE: {kind} CHECK at {version} failed (not weft's): {}",
                out.stdout.trim()
            );
            continue;
        }
        out.ok(&format!("{kind} {} at {version}", call.command));
    }
}

/// Issue 20 (3): the shipped conflist offers 1.1.0 in `cniVersions` and keeps
/// `cniVersion: 1.0.0`. A runtime speaking up to 1.0.0 (containerd 1.6's libcni) runs
/// the list at 1.0.0; one speaking 1.1.0 runs it at 1.1.0 and, being 1.1, also sends
/// STATUS and GC. Each is driven here as libcni drives the list, through ADD, CHECK,
/// STATUS, GC and DEL, with a port mapping for portmap. A chained plugin whose VERSION
/// does not list the negotiated version (Debian's portmap 1.1.1 stops at 1.0.0) would
/// fail that runtime: it is reported SKIPPED, never counted as passing.
#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn shipped_conflist_under_cni_1_0_and_1_1_runtimes() {
    if !weft_tests::require_root("shipped_conflist_under_cni_1_0_and_1_1_runtimes") {
        return;
    }
    let node = CniNode::standard("vl").unwrap();
    let list = shipped_conflist(&node);
    assert_eq!(list["cniVersion"], "1.0.0", "what containerd 1.6 reads");
    assert_eq!(list["cniVersions"], json!(["1.0.0", "1.1.0"]));
    let runtime =
        json!({"portMappings": [{"hostPort": 30081, "containerPort": 80, "protocol": "tcp"}]});

    for (runtime_max, want) in [("1.0.0", "1.0.0"), ("1.1.0", "1.1.0")] {
        let version = negotiated(&list, runtime_max);
        assert_eq!(version, want, "a runtime speaking up to {runtime_max}");
        let speakers = speaks(&node, &list, &version);
        assert_eq!(
            speakers[0],
            ("weft".to_owned(), true),
            "weft speaks {version}"
        );
        let mut chain = list.clone();
        for (kind, ok) in &speakers {
            if !ok {
                eprintln!(
                    "SKIPPED: {kind} in the {version} chain: this machine's {kind} does not \
                     speak {version}, so a CNI {version} runtime would fail at it; the rest of \
                     the chain runs"
                );
            }
        }
        chain["plugins"] = json!(list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&speakers)
            .filter(|(_, (_, ok))| *ok)
            .map(|(p, _)| p.clone())
            .collect::<Vec<_>>());

        let pod = node.pod(&format!("p{}", &version[..1])).unwrap();
        let path = netns_path(&pod);
        let id = format!("rt-{version}");
        let call = |command| Call {
            command,
            container_id: &id,
            netns: &path,
            ifname: "eth0",
        };
        let result = add_chain(&node, &chain, &version, &runtime, &call("ADD"));
        assert_eq!(result["cniVersion"], version.as_str(), "{result}");
        assert_eq!(result["interfaces"][2]["name"], "eth0");
        // 1.1 results carry the interface MTU; 1.0 results have no such field.
        assert_eq!(
            result["interfaces"][2].get("mtu").is_some(),
            version == "1.1.0",
            "{result}"
        );
        assert!(pod_addr(&pod, "eth0").is_some());
        each_plugin(
            &node,
            &chain,
            &version,
            &runtime,
            &call("CHECK"),
            Some(&result),
            json!({}),
        );
        if version == "1.1.0" {
            each_plugin(
                &node,
                &chain,
                &version,
                &runtime,
                &call("STATUS"),
                None,
                json!({}),
            );
            let keep =
                json!({"cni.dev/valid-attachments": [{"containerID": id, "ifname": "eth0"}]});
            each_plugin(&node, &chain, &version, &runtime, &call("GC"), None, keep);
            assert_eq!(node.host_veths().len(), 1, "GC kept the valid attachment");
            assert_eq!(node.allocations().len(), 1);
        }
        each_plugin(
            &node,
            &chain,
            &version,
            &runtime,
            &call("DEL"),
            Some(&result),
            json!({}),
        );
        assert!(node.host_veths().is_empty() && node.allocations().is_empty());
        if version == "1.1.0" {
            each_plugin(
                &node,
                &chain,
                &version,
                &runtime,
                &call("GC"),
                None,
                json!({"cni.dev/valid-attachments": []}),
            );
        }
    }
}

/// What a TCP server at `ip:port` says, asked from inside `pod` (bash's /dev/tcp, at
/// most 3 s), or why nothing came.
fn ask(pod: &Netns, ip: &str, port: u16) -> Result<String, String> {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port} && cat <&3");
    pod.run("timeout", &["3", "bash", "-c", &script])
        .map_err(|e| format!("{e:#}"))
}

/// Issue 20 (4), flannel parity: hairpin is on by default, so a pod reaches itself
/// through its own hostPort. The node namespace (forwarding on, as on a node) filters
/// bridged frames through iptables (bridge-nf-call-iptables, on by default in every
/// namespace), so portmap's DNAT turns the SYN back to the bridge port it came in on
/// (br_netfilter's bridged DNAT): only hairpin mode lets the bridge send it there.
/// `hairpinMode: false` still turns it off, and then the same connection times out.
#[test]
#[ignore = "needs root; scripts/test.sh runs it as root with --include-ignored"]
fn a_pod_reaches_itself_through_its_own_hostport() {
    if !weft_tests::require_root("a_pod_reaches_itself_through_its_own_hostport") {
        return;
    }
    let node = CniNode::standard("hp").unwrap();
    let nf = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    let filtered = node.ns.run("cat", &[nf]).unwrap_or_default();
    if filtered.trim() != "1" {
        eprintln!("SKIPPED: {nf} is not 1 in the node namespace ({filtered:?}): no DNAT of bridged frames, so nothing to hairpin");
        return;
    }
    // As on every node weft (or flannel) runs on.
    node.ns
        .run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    let list = shipped_conflist(&node);

    for (i, (hairpin, reaches)) in [(None, true), (Some(false), false)].into_iter().enumerate() {
        let mut list = list.clone();
        if let Some(on) = hairpin {
            list["plugins"][0]["hairpinMode"] = json!(on);
        }
        let host_port = 30090 + i as u16;
        let runtime = json!({"portMappings": [{"hostPort": host_port, "containerPort": 8080, "protocol": "tcp"}]});
        let pod = node.pod(&format!("h{i}")).unwrap();
        let path = netns_path(&pod);
        let id = format!("hairpin-{i}");
        let call = |command| Call {
            command,
            container_id: &id,
            netns: &path,
            ifname: "eth0",
        };
        let result = add_chain(&node, &list, "1.0.0", &runtime, &call("ADD"));
        let host_veth = result["interfaces"][1]["name"].as_str().unwrap().to_owned();
        let port = node.ns.ip(&["-d", "link", "show", &host_veth]).unwrap();
        let want = if reaches { "hairpin on" } else { "hairpin off" };
        assert!(port.contains(want), "{hairpin:?}: {port}");

        // A runtime brings lo up (the loopback plugin): the check below talks to the
        // pod's own address, which goes through lo.
        pod.ip(&["link", "set", "lo", "up"]).unwrap();
        let mut server = pod.command("busybox");
        server.args(["nc", "-ll", "-p", "8080", "-e", "/bin/echo", "it is me"]);
        let _server = pod.spawn(server).unwrap();
        let pod_ip = result["ips"][0]["address"].as_str().unwrap();
        let pod_ip = pod_ip.split('/').next().unwrap().to_owned();
        // The server answers on the pod's own address first (no NAT, no bridge).
        weft_tests::wait_for(
            "the server in the pod",
            std::time::Duration::from_secs(10),
            || ask(&pod, &pod_ip, 8080).ok(),
        )
        .unwrap();
        // The node's cni0 address is local there, so portmap DNATs the hostPort to us.
        let got = ask(&pod, "10.244.1.1", host_port);
        each_plugin(
            &node,
            &list,
            "1.0.0",
            &runtime,
            &call("DEL"),
            Some(&result),
            json!({}),
        );
        if reaches {
            assert_eq!(got.as_deref(), Ok("it is me\n"), "hairpin by default");
        } else {
            assert!(
                got.is_err(),
                "hairpinMode false must not reach itself: {got:?}"
            );
        }
    }
    assert!(node.host_veths().is_empty() && node.allocations().is_empty());
}
