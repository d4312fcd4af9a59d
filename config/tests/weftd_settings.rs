//! weftd's settings: precedence flag > WEFTD_* env > TOML file > default, and a clear
//! error for every bad flag, variable, file key and value.
//!
//! Tests pass the environment explicitly (`from_args_and_env`) and always name a config
//! file (a temporary one or a missing one whose absence is the point), so they neither
//! touch the process environment nor depend on /etc/weft on this machine.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use weft_config::weftd::{LogFormat, SettingsError, TcAttach};
use weft_config::Settings;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn config(&self, toml: &str) -> PathBuf {
        self.file("weftd.toml", toml)
    }
}

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

fn error(config: &Path, flags: &[&str], env: &[(&str, &str)]) -> String {
    match settings(config, flags, env) {
        Ok(s) => panic!("accepted: {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_are_the_documented_ones() {
    let fx = Fixture::new();
    let s = settings(&fx.config(""), &[], &[]).unwrap();
    let expected = Settings {
        config_file: Some(fx.dir.path().join("weftd.toml")),
        ..Settings::default()
    };
    assert_eq!(s, expected);
    assert_eq!(s.etcd_endpoints, ["http://127.0.0.1:2379"]);
    assert_eq!(s.etcd_prefix, "/coreos.com/network");
    assert_eq!(s.subnet_file, Path::new("/run/flannel/subnet.env"));
    assert_eq!(s.state_dir, Path::new("/var/lib/weft"));
    assert!(!s.ip_masq);
    assert!(s.forward_rules);
    assert_eq!(
        s.healthz_addr,
        "127.0.0.1:9842".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(s.lease_ttl_secs, 86400);
    assert_eq!(s.log_format, LogFormat::Text);
    assert_eq!(s.log_level, "info");
    assert_eq!(s.etcd_dial_timeout, Duration::from_secs(5));
    assert_eq!((s.iface.len(), s.public_ip), (0, None));
}

/// Four settings, each set in every layer that should lose, so each layer's win is seen.
#[test]
fn precedence_flag_over_env_over_file_over_default() {
    let fx = Fixture::new();
    let config = fx.config(
        r#"
etcd-prefix = "/from/file"
subnet-file = "/file/subnet.env"
state-dir = "/file/state"
lease-ttl-secs = 300
ip-masq = true
"#,
    );
    let env = [
        ("WEFTD_ETCD_PREFIX", "/from/env"),
        ("WEFTD_SUBNET_FILE", "/env/subnet.env"),
        ("WEFTD_IP_MASQ", "false"),
        ("UNRELATED", "ignored"),
    ];
    let s = settings(&config, &["--etcd-prefix", "/from/flag"], &env).unwrap();
    assert_eq!(s.etcd_prefix, "/from/flag", "flag beats env and file");
    assert_eq!(
        s.subnet_file,
        Path::new("/env/subnet.env"),
        "env beats file"
    );
    assert!(!s.ip_masq, "env false beats file true");
    assert_eq!(s.state_dir, Path::new("/file/state"), "file beats default");
    assert_eq!(s.lease_ttl_secs, 300, "file beats default");
    assert_eq!(s.healthz_addr, Settings::default().healthz_addr, "default");

    // A boolean flag beats env and file in both directions.
    let s = settings(&config, &["--ip-masq=false"], &[]).unwrap();
    assert!(!s.ip_masq, "--ip-masq=false beats file true");
    let s = settings(&config, &["--ip-masq"], &[("WEFTD_IP_MASQ", "false")]).unwrap();
    assert!(s.ip_masq, "bare --ip-masq beats env false");
}

#[test]
fn every_setting_from_flags() {
    let fx = Fixture::new();
    let ca = fx.file("ca.pem", "ca");
    let cert = fx.file("cert.pem", "cert");
    let key = fx.file("key.pem", "key");
    let (ca, cert, key) = (
        ca.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let s = settings(
        &fx.config(""),
        &[
            "--etcd-endpoints=https://192.0.2.254:2379, https://[2001:db8::1]:2379/",
            "--etcd-prefix=/weft/network/",
            "--etcd-cafile",
            ca,
            "--etcd-certfile",
            cert,
            "--etcd-keyfile",
            key,
            "--etcd-username=root",
            "--etcd-password=secret",
            "--etcd-dial-timeout=750ms",
            "--iface=eth0",
            "--public-ip=192.0.2.1",
            "--subnet-file=/tmp/x/subnet.env",
            "--state-dir=/tmp/x/state",
            "--ip-masq",
            "--cleanup-on-exit",
            "--healthz-addr=0.0.0.0:0",
            "--log-format=json",
            "--log-level=weft_daemon=debug,info",
            "--lease-ttl-secs=10",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(
        s.etcd_endpoints,
        ["https://192.0.2.254:2379", "https://[2001:db8::1]:2379"]
    );
    assert_eq!(s.etcd_prefix, "/weft/network");
    assert_eq!(s.etcd_cafile.as_deref(), Some(Path::new(ca)));
    assert_eq!(s.etcd_certfile.as_deref(), Some(Path::new(cert)));
    assert_eq!(s.etcd_keyfile.as_deref(), Some(Path::new(key)));
    assert_eq!(s.etcd_username.as_deref(), Some("root"));
    assert_eq!(s.etcd_password.as_deref(), Some("secret"));
    assert_eq!(s.etcd_dial_timeout, Duration::from_millis(750));
    assert_eq!(s.iface, ["eth0"]);
    assert_eq!(s.public_ip, Some(Ipv4Addr::new(192, 0, 2, 1)));
    assert!(s.ip_masq && s.cleanup_on_exit);
    assert_eq!(s.healthz_addr, "0.0.0.0:0".parse::<SocketAddr>().unwrap());
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.log_level, "weft_daemon=debug,info");
    assert_eq!(s.lease_ttl_secs, 10);
}

#[test]
fn file_accepts_endpoint_arrays_and_env_empty_means_unset() {
    let fx = Fixture::new();
    let config = fx.config(
        "etcd-endpoints = [\"http://192.0.2.254:2379\", \"http://192.0.2.253:2379\"]\niface = \"192.0.2.1\"\n",
    );
    let s = settings(&config, &[], &[("WEFTD_IFACE", "")]).unwrap();
    assert_eq!(
        s.etcd_endpoints,
        ["http://192.0.2.254:2379", "http://192.0.2.253:2379"]
    );
    assert_eq!(s.iface, ["192.0.2.1"]);
}

#[test]
fn config_file_location() {
    let fx = Fixture::new();
    // An explicit file that does not exist is an error naming it...
    let missing = fx.dir.path().join("nope.toml");
    let err = error(&missing, &[], &[]);
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("cannot read"), "{err}");
    // ... also when named by the environment.
    let err = Settings::from_args_and_env(["weftd"], [("WEFTD_CONFIG", missing.to_str().unwrap())])
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.toml"), "{err}");
    // The environment can point at the file.
    let config = fx.config("state-dir = \"/from/env/file\"\n");
    let s = Settings::from_args_and_env(["weftd"], [("WEFTD_CONFIG", config.to_str().unwrap())])
        .unwrap();
    assert_eq!(s.state_dir, Path::new("/from/env/file"));
    assert_eq!(s.config_file.as_deref(), Some(config.as_path()));
}

#[test]
fn help_and_version_come_back_as_clap_errors() {
    for flag in ["--help", "--version"] {
        match Settings::from_args_and_env(["weftd", flag], Vec::<(String, String)>::new()) {
            Err(SettingsError::Cli(e)) => assert!(!e.use_stderr(), "{flag}: {e}"),
            other => panic!("{flag}: {other:?}"),
        }
    }
    let help =
        match Settings::from_args_and_env(["weftd", "--help"], Vec::<(String, String)>::new()) {
            Err(SettingsError::Cli(e)) => e.to_string(),
            other => panic!("{other:?}"),
        };
    assert!(help.contains("--etcd-endpoints"), "{help}");
    assert!(help.contains("WEFTD_"), "{help}");
    assert!(
        !help.contains("--lease-ttl-secs"),
        "test-only flag is hidden: {help}"
    );
}

#[test]
fn bad_flags() {
    let fx = Fixture::new();
    let config = fx.config("");
    let cases: &[(&[&str], &[&str])] = &[
        (&["--no-such-flag"], &["--no-such-flag"]),
        (
            &["--etcd-endpoints=127.0.0.1:2379"],
            &[
                "--etcd-endpoints",
                "127.0.0.1:2379",
                "http://127.0.0.1:2379",
            ],
        ),
        (
            &["--etcd-endpoints=ftp://192.0.2.254:2379"],
            &["--etcd-endpoints", "scheme must be http or https"],
        ),
        (
            &["--etcd-endpoints=http://192.0.2.254:99999"],
            &["--etcd-endpoints", "port must be a number from 1 to 65535"],
        ),
        (
            &["--etcd-endpoints=http://192.0.2.254:2379,"],
            &["--etcd-endpoints", "empty entry"],
        ),
        (
            &["--etcd-endpoints=http://192.0.2.254:2379,http//x"],
            &[
                "--etcd-endpoints",
                "entry \"http//x\" is not an etcd endpoint",
            ],
        ),
        (
            &["--etcd-endpoints=http://user@192.0.2.254:2379"],
            &["--etcd-endpoints", "without path, query or user info"],
        ),
        (
            &["--etcd-prefix=coreos.com/network"],
            &["--etcd-prefix", "must start with '/'"],
        ),
        (
            &["--public-ip=192.0.2"],
            &["--public-ip", "not an IPv4 address"],
        ),
        (
            &["--public-ip=2001:db8::1"],
            &["--public-ip", "not an IPv4 address"],
        ),
        (&["--public-ip=0.0.0.0"], &["--public-ip", "unicast"]),
        (&["--public-ip=224.0.0.1"], &["--public-ip", "unicast"]),
        (
            &["--healthz-addr=localhost"],
            &["--healthz-addr", "address:port"],
        ),
        (
            &["--healthz-addr=127.0.0.1:70000"],
            &["--healthz-addr", "address:port"],
        ),
        (
            &["--iface=this-name-is-far-too-long"],
            &["--iface", "1 to 15 characters"],
        ),
        (&["--iface=eth/0"], &["--iface", "interface name"]),
        (
            &["--log-format=xml"],
            &["--log-format", "xml", "text", "json"],
        ),
        (
            &["--log-level=loud"],
            &["--log-level", "\"loud\"", "trace, debug, info"],
        ),
        (
            &["--lease-ttl-secs=0"],
            &["--lease-ttl-secs", "whole seconds from 1"],
        ),
        (
            &["--etcd-dial-timeout=5 parsecs"],
            &["--etcd-dial-timeout", "500ms"],
        ),
        (
            &["--ip-masq=perhaps"],
            &["--ip-masq", "perhaps", "expected true or false"],
        ),
        (&["--subnet-file="], &["--subnet-file", "must not be empty"]),
        (
            &["--etcd-username=root"],
            &["--etcd-username (from the command line) needs --etcd-password"],
        ),
    ];
    for (flags, expected) in cases {
        let err = error(&config, flags, &[]);
        eprintln!("{err}");
        for part in *expected {
            assert!(err.contains(part), "{flags:?}: {err:?} lacks {part:?}");
        }
    }
}

#[test]
fn bad_environment_names_the_variable() {
    let fx = Fixture::new();
    let config = fx.config("");
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "WEFTD_ETCD_ENDPOINTS",
            "etcd:2379",
            &["WEFTD_ETCD_ENDPOINTS=\"etcd:2379\"", "not an etcd endpoint"],
        ),
        (
            "WEFTD_IP_MASQ",
            "maybe",
            &["WEFTD_IP_MASQ=\"maybe\"", "expected true or false"],
        ),
        (
            "WEFTD_LEASE_TTL_SECS",
            "-5",
            &["WEFTD_LEASE_TTL_SECS=\"-5\"", "whole seconds"],
        ),
        (
            "WEFTD_LOG_FORMAT",
            "yaml",
            &["WEFTD_LOG_FORMAT=\"yaml\"", "text, json"],
        ),
        (
            "WEFTD_PUBLIC_IP",
            "192.0.2.300",
            &["WEFTD_PUBLIC_IP", "IPv4 address"],
        ),
    ];
    for (var, value, expected) in cases {
        let err = error(&config, &[], &[(var, value)]);
        eprintln!("{err}");
        assert!(err.starts_with("environment variable"), "{var}: {err}");
        for part in *expected {
            assert!(err.contains(part), "{var}: {err:?} lacks {part:?}");
        }
    }
}

#[test]
fn bad_config_files() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "bad TOML",
            "etcd-prefix = \"/unterminated\n",
            &["invalid TOML", "line 1"],
        ),
        ("not key = value", "etcd-prefix\n", &["invalid TOML"]),
        (
            "unknown key",
            "# weft\nsubnet-file = \"/x\"\netcd-prefx = \"/x\"\n",
            &[
                "line 3: unknown key `etcd-prefx`",
                "known keys: etcd-endpoints",
            ],
        ),
        (
            "snake_case key",
            "etcd_prefix = \"/x\"\n",
            &[
                "unknown key `etcd_prefix`",
                "did you mean `etcd-prefix`? keys are kebab-case",
            ],
        ),
        (
            "config in config",
            "config = \"/other.toml\"\n",
            &["unknown key `config`", "cannot name another config file"],
        ),
        (
            "a table",
            "[etcd]\nprefix = \"/x\"\n",
            &["unknown key `etcd` (a table; settings are top-level kebab-case keys)"],
        ),
        (
            "wrong type",
            "healthz-addr = [1, 2]\n",
            &[
                "line 1: healthz-addr = [1, 2]",
                "expected a string, a whole number or a boolean",
            ],
        ),
        (
            "float",
            "lease-ttl-secs = 1.5\n",
            &["lease-ttl-secs = 1.5", "expected a string"],
        ),
        (
            "bad value",
            "\nlease-ttl-secs = \"soon\"\n",
            &["line 2: lease-ttl-secs = \"soon\"", "whole seconds"],
        ),
        (
            "bad bool",
            "ip-masq = \"sometimes\"\n",
            &["ip-masq = \"sometimes\"", "expected true or false"],
        ),
        (
            "bad endpoint in array",
            "etcd-endpoints = [\"http://a:1\", 7]\n",
            &["etcd-endpoints", "array of URL strings"],
        ),
        (
            "bad endpoint",
            "etcd-endpoints = \"tcp://192.0.2.254:2379\"\n",
            &["etcd-endpoints = \"tcp://", "http or https"],
        ),
    ];
    for (name, toml, expected) in cases {
        let fx = Fixture::new();
        let config = fx.config(toml);
        let err = error(&config, &[], &[]);
        eprintln!("{err}");
        assert!(
            err.starts_with(&format!("config file {}", config.display())),
            "{name}: {err}"
        );
        for part in *expected {
            assert!(err.contains(part), "{name}: {err:?} lacks {part:?}");
        }
    }
}

#[test]
fn tls_and_auth_rules() {
    let fx = Fixture::new();
    let config = fx.config("");
    let cert = fx.file("cert.pem", "c");
    let cert = cert.to_str().unwrap();
    let https = "--etcd-endpoints=https://192.0.2.254:2379";

    let err = error(&config, &[https, "--etcd-certfile", cert], &[]);
    assert!(
        err.contains("--etcd-certfile (from the command line) needs --etcd-keyfile"),
        "{err}"
    );

    let err = error(&config, &[https], &[("WEFTD_ETCD_KEYFILE", cert)]);
    assert!(
        err.contains(
            "--etcd-keyfile (from environment variable WEFTD_ETCD_KEYFILE) needs --etcd-certfile"
        ),
        "{err}"
    );

    let absent = fx.dir.path().join("absent-ca.pem");
    let absent_flag = format!("--etcd-cafile={}", absent.display());
    let err = error(&config, &[https, &absent_flag], &[]);
    assert!(
        err.starts_with(&format!("--etcd-cafile {}", absent.display())),
        "{err}"
    );
    assert!(err.contains("no such file"), "{err}");

    let dir_flag = format!("--etcd-cafile={}", fx.dir.path().display());
    let err = error(&config, &[https, &dir_flag], &[]);
    assert!(err.contains("is not a regular file"), "{err}");

    // A TLS file named in the config file: the error says so.
    let fx2 = Fixture::new();
    let config2 = fx2.config(&format!(
        "etcd-endpoints = \"https://192.0.2.254:2379\"\netcd-cafile = \"{}\"\n",
        absent.display()
    ));
    let err = error(&config2, &[], &[]);
    assert!(
        err.contains(&format!("from config file {}", config2.display())),
        "{err}"
    );

    // TLS files with only http:// endpoints is a mistake worth stopping for.
    let err = error(&config, &["--etcd-cafile", cert], &[]);
    assert!(
        err.contains("--etcd-endpoints http://127.0.0.1:2379 (from the default)"),
        "{err}"
    );
    assert!(err.contains("no endpoint uses https://"), "{err}");

    let err = error(&config, &[], &[("WEFTD_ETCD_PASSWORD", "pw")]);
    assert!(
        err.contains(
            "--etcd-password (from environment variable WEFTD_ETCD_PASSWORD) needs --etcd-username"
        ),
        "{err}"
    );
}

#[test]
fn hidden_test_only_key_is_accepted_but_not_advertised() {
    let fx = Fixture::new();
    let s = settings(&fx.config("lease-ttl-secs = 30\n"), &[], &[]).unwrap();
    assert_eq!(s.lease_ttl_secs, 30);
    let err = error(&fx.config("bogus = 1\n"), &[], &[]);
    assert!(err.contains("known keys: etcd-endpoints"), "{err}");
    assert!(!err.contains("lease-ttl-secs"), "{err}");
}

const NAMES: &[&str] = &[
    "etcd-endpoints",
    "etcd-prefix",
    "etcd-cafile",
    "etcd-certfile",
    "etcd-keyfile",
    "etcd-username",
    "etcd-password",
    "etcd-dial-timeout",
    "iface",
    "public-ip",
    "subnet-file",
    "state-dir",
    "ip-masq",
    "forward-rules",
    "healthz-addr",
    "cleanup-on-exit",
    "log-format",
    "log-level",
    "lease-ttl-secs",
    "bogus",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary values in every layer give settings or an error, never a panic.
    #[test]
    fn arbitrary_values_never_panic(
        flags in prop::collection::vec((prop::sample::select(NAMES), ".{0,24}"), 0..4),
        env in prop::collection::vec((prop::sample::select(NAMES), ".{0,24}"), 0..4),
        file in prop::collection::vec((prop::sample::select(NAMES), "[ -~]{0,24}"), 0..4),
    ) {
        let fx = Fixture::new();
        let toml: String = file.iter().map(|(k, v)| format!("{k} = {v:?}\n")).collect();
        let config = fx.config(&toml);
        let flags: Vec<String> = flags.iter().map(|(k, v)| format!("--{k}={v}")).collect();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (format!("WEFTD_{}", k.replace('-', "_").to_uppercase()), v.to_string()))
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let _ = settings(&config, &flags, &env);
    }
}

#[test]
fn forward_rules_default_on_and_turn_off_in_every_layer() {
    let fx = Fixture::new();
    assert!(settings(&fx.config(""), &[], &[]).unwrap().forward_rules);
    let off_in_file = fx.config("forward-rules = false\n");
    assert!(!settings(&off_in_file, &[], &[]).unwrap().forward_rules);
    assert!(
        settings(&off_in_file, &[], &[("WEFTD_FORWARD_RULES", "true")])
            .unwrap()
            .forward_rules,
        "env true beats file false"
    );
    assert!(
        !settings(
            &fx.config(""),
            &["--forward-rules=false"],
            &[("WEFTD_FORWARD_RULES", "true")]
        )
        .unwrap()
        .forward_rules,
        "flag false beats env true"
    );
    assert!(
        settings(&off_in_file, &["--forward-rules"], &[])
            .unwrap()
            .forward_rules,
        "bare flag means true"
    );
    let err = error(&fx.config(""), &["--forward-rules=maybe"], &[]);
    assert!(
        err.contains("--forward-rules") && err.contains("expected true or false"),
        "{err}"
    );
    let err = error(
        &fx.config(""),
        &[],
        &[("WEFTD_FORWARD_RULES", "yes please")],
    );
    assert!(err.contains("WEFTD_FORWARD_RULES"), "{err}");
}

#[test]
fn data_plane_knobs_default_to_kernel_encapsulation_and_no_busy_polling() {
    let fx = Fixture::new();
    let s = settings(&fx.config(""), &[], &[]).unwrap();
    assert!(s.kernel_encap);
    assert_eq!(s.busy_poll, Duration::ZERO);

    let s = settings(
        &fx.config("busy-poll = \"20ms\"\n"),
        &["--kernel-encap=false"],
        &[],
    )
    .unwrap();
    assert!(!s.kernel_encap);
    assert_eq!(s.busy_poll, Duration::from_millis(20));
    let s = settings(&fx.config(""), &[], &[("WEFTD_BUSY_POLL", "500us")]).unwrap();
    assert_eq!(s.busy_poll, Duration::from_micros(500));
    assert_eq!(
        settings(&fx.config(""), &["--busy-poll=0"], &[])
            .unwrap()
            .busy_poll,
        Duration::ZERO
    );
}

#[test]
fn a_busy_poll_beyond_a_second_or_without_unit_is_refused_by_name() {
    let fx = Fixture::new();
    for bad in ["2s", "20", "fast", "-1ms"] {
        let text = error(&fx.config(""), &[&format!("--busy-poll={bad}")], &[]);
        assert!(text.contains("--busy-poll"), "{bad}: {text}");
        assert!(text.contains("at most 1s"), "{bad}: {text}");
    }
}

#[test]
fn tc_attach_comes_from_every_layer_and_kernel_encap_false_means_off() {
    let fx = Fixture::new();
    let s = settings(&fx.config(""), &[], &[]).unwrap();
    assert_eq!(
        (s.tc_attach, s.attach_mode()),
        (TcAttach::Auto, TcAttach::Auto)
    );
    let s = settings(&fx.config("tc-attach = \"tc\"\n"), &[], &[]).unwrap();
    assert_eq!(s.attach_mode(), TcAttach::Tc);
    let s = settings(
        &fx.config("tc-attach = \"tc\"\n"),
        &[],
        &[("WEFTD_TC_ATTACH", "tcx")],
    )
    .unwrap();
    assert_eq!(s.attach_mode(), TcAttach::Tcx, "env beats file");
    let s = settings(
        &fx.config(""),
        &["--tc-attach=off"],
        &[("WEFTD_TC_ATTACH", "tc")],
    )
    .unwrap();
    assert_eq!(s.attach_mode(), TcAttach::Off, "flag beats env");
    assert!(!s.kernel_encap, "off is the userspace path");

    // --kernel-encap=false is --tc-attach=off, alone or beside auto/off.
    for extra in [&[][..], &["--tc-attach=auto"][..], &["--tc-attach=off"][..]] {
        let mut flags = vec!["--kernel-encap=false"];
        flags.extend_from_slice(extra);
        let s = settings(&fx.config(""), &flags, &[]).unwrap();
        assert_eq!(s.attach_mode(), TcAttach::Off, "{flags:?}");
    }
    // ... and contradicts a forced attachment, naming both.
    let err = error(
        &fx.config("kernel-encap = false\n"),
        &[],
        &[("WEFTD_TC_ATTACH", "tc")],
    );
    assert!(
        err.contains("--tc-attach")
            && err.contains("WEFTD_TC_ATTACH")
            && err.contains("--kernel-encap=false"),
        "{err}"
    );
    let err = error(&fx.config(""), &["--tc-attach=bpf"], &[]);
    assert!(err.contains("--tc-attach") && err.contains("tcx"), "{err}");
}
