//! The lab itself: kernel-flannel nodes carry pod traffic; two labs side by side do not
//! collide; `weft-lab down` cleans up after `kill -9`.

use std::time::Duration;

use weft_tests::lab::{CniKind, Lab, LabSpec, NodeKind};
use weft_tests::netns;
use weft_tests::require_root;

fn namespaces_with(prefix: &str) -> Vec<String> {
    netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect()
}

#[test]
fn two_kernel_flannel_nodes_carry_pod_traffic() {
    if !require_root("two_kernel_flannel_nodes_carry_pod_traffic") {
        return;
    }
    let mut lab = Lab::start(LabSpec::kernel(2)).unwrap();
    let prefix = lab.prefix().to_owned();
    assert_eq!(lab.kernel_nodes(), vec![1, 2]);
    assert!(lab
        .state()
        .nodes
        .iter()
        .all(|n| n.kind == NodeKind::KernelFlannel));
    let leases = lab.wait_leases(2, Duration::from_secs(5)).unwrap();
    assert_eq!(leases.len(), 2);
    assert!(leases
        .iter()
        .all(|l| l.backend_type == "vxlan" && l.vtep_mac.is_some()));

    let a = lab.add_pod(1, "a").unwrap();
    let b = lab.add_pod(2, "b").unwrap();
    assert_ne!(a, b);
    assert!(lab.ping("a", b), "pod a ({a}) cannot reach pod b ({b})");
    assert!(lab.ping("b", a), "pod b ({b}) cannot reach pod a ({a})");
    // The route is flanneld's: via the peer's .0 on flannel.1, onlink.
    let routes = lab.exec("n1", &["ip", "route"]).unwrap();
    let peer = lab.node(2).unwrap().subnet.unwrap();
    assert!(
        routes.contains(&format!(
            "{peer} via {} dev flannel.1 onlink",
            peer.network()
        )),
        "{routes}"
    );
    // No route out of the lab from a pod.
    assert!(!lab.ping("a", "198.18.0.1".parse().unwrap()));

    drop(lab);
    assert!(
        namespaces_with(&prefix).is_empty(),
        "namespaces left: {:?}",
        namespaces_with(&prefix)
    );
    assert!(!weft_tests::lab::state::state_file(&prefix).exists());
}

#[test]
fn containerd_pods_with_the_reference_bridge_reach_each_other() {
    if !require_root("containerd_pods_with_the_reference_bridge_reach_each_other") {
        return;
    }
    let mut lab = Lab::start(LabSpec {
        cni: CniKind::Bridge,
        ..LabSpec::kernel(2)
    })
    .unwrap();
    let prefix = lab.prefix().to_owned();
    let a = lab.ctr_pod(1, "ca").unwrap();
    let b = lab.ctr_pod(2, "cb").unwrap();
    let fast = lab.add_pod(2, "fb").unwrap();
    assert!(lab.node(1).unwrap().subnet.unwrap().contains(&a), "{a}");
    assert!(
        lab.ping("ca", b),
        "ctr pod ca ({a}) cannot reach ctr pod cb ({b})"
    );
    assert!(
        lab.ping("ca", fast),
        "ctr pod ca cannot reach fast-path pod fb ({fast})"
    );
    // The pod really is the container: its namespace is the task's.
    let task_pid = lab.ctr(&["task", "ls"]).unwrap();
    assert!(task_pid.contains(&format!("{prefix}-ca")), "{task_pid}");
    // Nothing of the lab in the host's CNI config dir.
    assert!(!std::path::Path::new("/etc/cni/net.d/10-weft.conflist").exists());
    let sock = lab.state().containerd_socket.clone().unwrap();
    drop(lab);
    assert!(
        namespaces_with(&prefix).is_empty(),
        "{:?}",
        namespaces_with(&prefix)
    );
    assert!(
        weft_tests::proc::pids_with_arg(&sock.to_string_lossy()).is_empty(),
        "shims left"
    );
    assert!(!std::path::Path::new(&format!("/etc/netns/{prefix}-n1")).exists());
}
