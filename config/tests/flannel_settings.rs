//! flanneld's knobs in weftd's settings: repeatable `--iface`, `--iface-regex`,
//! `--iface-can-reach`, `--subnet-lease-renew-margin`, the `FLANNELD_*` environment
//! below `WEFTD_*`, and flanneld flags weftd does without, refused or ignored by name.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_config::weftd::SettingsError;
use weft_config::Settings;

fn settings(
    config: &Path,
    flags: &[&str],
    env: &[(&str, &str)],
) -> Result<Settings, SettingsError> {
    let config_flag = format!("--config={}", config.display());
    let args = ["weftd", config_flag.as_str()]
        .into_iter()
        .chain(flags.iter().copied());
    Settings::from_args_and_env(args, env.iter().copied())
}

fn config(dir: &tempfile::TempDir, toml: &str) -> PathBuf {
    let path = dir.path().join("weftd.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn error(config: &Path, flags: &[&str], env: &[(&str, &str)]) -> String {
    match settings(config, flags, env) {
        Ok(s) => panic!("accepted: {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn interface_choices_repeat_and_come_from_every_layer() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(
        &dir,
        "iface = [\"eth9\", \"192.0.2.7\"]\niface-regex = [\"^en\", \"^192\\\\.0\\\\.2\\\\.\"]\n\
         iface-can-reach = \"198.51.100.1\"\n",
    );
    let s = settings(&file, &[], &[]).unwrap();
    assert_eq!(s.iface, ["eth9", "192.0.2.7"]);
    assert_eq!(s.iface_regex, ["^en", "^192\\.0\\.2\\."]);
    assert_eq!(s.iface_can_reach, Some(Ipv4Addr::new(198, 51, 100, 1)));

    // Flags repeat, in order, and replace the file's list whole.
    let s = settings(
        &file,
        &["--iface=ul9", "--iface", "ul1", "--iface-regex=^ul"],
        &[],
    )
    .unwrap();
    assert_eq!(s.iface, ["ul9", "ul1"]);
    assert_eq!(s.iface_regex, ["^ul"]);

    // One value from the environment (as flanneld reads it).
    let s = settings(&file, &[], &[("WEFTD_IFACE_REGEX", "^veth[0-9]{1,3}$")]).unwrap();
    assert_eq!(s.iface_regex, ["^veth[0-9]{1,3}$"]);
}

#[test]
fn bad_interface_choices_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(&dir, "");
    let err = error(&file, &["--iface-regex=eth("], &[]);
    let first = err.lines().next().unwrap();
    assert!(
        first.contains("--iface-regex")
            && first.contains("not a regular expression: unclosed group"),
        "{err}"
    );
    let err = error(&file, &["--iface-can-reach=example.com"], &[]);
    assert!(
        err.contains("--iface-can-reach") && err.contains("IPv4"),
        "{err}"
    );
    let err = error(&file, &[], &[("FLANNELD_IFACE_REGEX", "[")]);
    assert!(err.contains("FLANNELD_IFACE_REGEX"), "{err}");
    let file = config(&dir, "iface-regex = [\"ok\", 5]\n");
    let err = error(&file, &[], &[]);
    assert!(
        err.contains("iface-regex") && err.contains("array of strings"),
        "{err}"
    );
}

#[test]
fn renew_margin_is_flannels_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(&dir, "");
    let s = settings(&file, &[], &[]).unwrap();
    assert_eq!(s.subnet_lease_renew_margin, Duration::from_secs(3600));
    let s = settings(&file, &["--subnet-lease-renew-margin=5"], &[]).unwrap();
    assert_eq!(s.subnet_lease_renew_margin, Duration::from_secs(300));
    for bad in ["0", "1440", "5m", "-1"] {
        let err = error(&file, &[&format!("--subnet-lease-renew-margin={bad}")], &[]);
        assert!(
            err.contains("--subnet-lease-renew-margin") && err.contains("1 to 1439"),
            "{bad}: {err}"
        );
    }
    let file = config(&dir, "subnet-lease-renew-margin = 30\n");
    let s = settings(&file, &[], &[]).unwrap();
    assert_eq!(s.subnet_lease_renew_margin, Duration::from_secs(1800));
}

#[test]
fn flanneld_environment_sits_below_weftd_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(
        &dir,
        "etcd-prefix = \"/from/file\"\nsubnet-file = \"/file/subnet.env\"\n",
    );
    let env = [
        ("FLANNELD_ETCD_PREFIX", "/from/flannel"),
        ("FLANNELD_ETCD_ENDPOINTS", "http://192.0.2.254:2379"),
        ("FLANNELD_SUBNET_FILE", "/flannel/subnet.env"),
        ("WEFTD_SUBNET_FILE", "/weftd/subnet.env"),
        ("FLANNELD_IFACE", "ul0"),
        ("FLANNELD_IFACE_REGEX", "^ul"),
        ("FLANNELD_IFACE_CAN_REACH", "192.0.2.254"),
        ("FLANNELD_PUBLIC_IP", "192.0.2.9"),
        ("FLANNELD_IP_MASQ", "true"),
        ("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "20"),
        ("FLANNELD_IPTABLES_FORWARD_RULES", "false"),
        ("FLANNELD_UNKNOWN_THING", "x"),
    ];
    let s = settings(&file, &["--ip-masq=false"], &env).unwrap();
    assert_eq!(s.etcd_prefix, "/from/flannel", "FLANNELD_ beats the file");
    assert_eq!(s.etcd_endpoints, ["http://192.0.2.254:2379"]);
    assert_eq!(s.subnet_file, Path::new("/weftd/subnet.env"), "WEFTD_ wins");
    assert_eq!(s.iface, ["ul0"]);
    assert_eq!(s.iface_regex, ["^ul"]);
    assert_eq!(s.iface_can_reach, Some(Ipv4Addr::new(192, 0, 2, 254)));
    assert_eq!(s.public_ip, Some(Ipv4Addr::new(192, 0, 2, 9)));
    assert!(!s.ip_masq, "the flag wins");
    assert_eq!(s.subnet_lease_renew_margin, Duration::from_secs(1200));
    assert!(
        !s.forward_rules,
        "FLANNELD_IPTABLES_FORWARD_RULES is --forward-rules"
    );
    assert!(s
        .flannel_env_used
        .contains(&"FLANNELD_ETCD_PREFIX".to_owned()));
    assert!(s
        .flannel_env_overridden
        .contains(&"FLANNELD_SUBNET_FILE".to_owned()));
    assert!(s
        .flannel_env_overridden
        .contains(&"FLANNELD_IP_MASQ".to_owned()));
    assert!(!s.flannel_env_used.contains(&"FLANNELD_IP_MASQ".to_owned()));
    let notice = s.flannel_env_notice().unwrap();
    assert!(
        notice.contains("FLANNELD_IFACE_REGEX") && notice.contains("overridden"),
        "{notice}"
    );
    assert!(!notice.contains("UNKNOWN"), "{notice}");

    let none = settings(&file, &[], &[]).unwrap();
    assert_eq!(none.flannel_env_notice(), None);
}

#[test]
fn flannel_flags_weftd_does_without_are_named_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(&dir, "");
    // In the environment: harmless ones are ignored with a notice...
    let s = settings(
        &file,
        &[],
        &[
            ("FLANNELD_IPTABLES_RESYNC", "5"),
            ("FLANNELD_KUBE_SUBNET_MGR", "false"),
        ],
    )
    .unwrap();
    let notice = s.flannel_env_notice().unwrap();
    assert!(
        notice.contains("FLANNELD_IPTABLES_RESYNC (weftd checks"),
        "{notice}"
    );
    // ...the ones that change what a node is, refused.
    let err = error(&file, &[], &[("FLANNELD_KUBE_SUBNET_MGR", "true")]);
    assert!(
        err.contains("FLANNELD_KUBE_SUBNET_MGR") && err.contains("etcd only"),
        "{err}"
    );
    let err = error(&file, &[], &[("FLANNELD_PUBLIC_IPV6", "2001:db8::1")]);
    assert!(err.contains("IPv4-only"), "{err}");
    // On the command line, each is refused by name.
    for (flag, why) in [
        ("--kube-subnet-mgr", "etcd only"),
        ("--iptables-resync=5", "every 2 s"),
        ("-v=2", "--log-level"),
    ] {
        let err = error(&file, &[flag], &[]);
        assert!(
            err.contains("flanneld's") && err.contains(why),
            "{flag}: {err}"
        );
    }
    // flanneld's name for --forward-rules works on the command line too.
    let s = settings(&file, &["--iptables-forward-rules=false"], &[]).unwrap();
    assert!(!s.forward_rules);
}
