//! The files in `deploy/` checked against the code they configure: the Kubernetes
//! manifest parses and has the expected objects, every weftd flag in the DaemonSet and
//! the systemd unit is one the real `weftd --help` lists and its value is accepted by
//! the settings loader, the conflist passes the CNI plugin's own validation, the example
//! TOML and environment load, and the unit grants exactly CAP_NET_ADMIN, CAP_NET_RAW and
//! CAP_BPF.
//! No root and no cluster needed (only the built `weftd` binary, for its `--help`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize as _;
use serde_json::Value;
use weft_config::cni::{CniNetConf, SUPPORTED_VERSIONS};
use weft_config::{NetConf, Settings, SettingsError};

/// The capabilities weftd needs (deploy/README.md says what each is for).
const NEEDED_CAPS: [&str; 3] = ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF"];

fn deploy(rel: &str) -> PathBuf {
    weft_tests::workspace_root().join("deploy").join(rel)
}

fn read(rel: &str) -> String {
    let path = deploy(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Long flag names (without `--`) that the real weftd binary documents in `--help`.
fn weftd_flags() -> BTreeSet<String> {
    let weftd = weft_tests::bin_path("weftd");
    let out = Command::new(&weftd)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {} --help: {e} (build it: cargo build -p weft-daemon --bins)",
                weftd.display()
            )
        });
    assert!(out.status.success(), "weftd --help failed: {out:?}");
    let help = String::from_utf8(out.stdout).expect("weftd --help is UTF-8");
    let mut flags = BTreeSet::new();
    for (i, _) in help.match_indices("--") {
        let name: String = help[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        if !name.is_empty() && !matches!(name.as_str(), "help" | "version") {
            flags.insert(name);
        }
    }
    // A sanity check of the parsing itself, so an empty set cannot pass everything.
    for known in ["etcd-endpoints", "subnet-file", "healthz-addr", "config"] {
        assert!(
            flags.contains(known),
            "weftd --help lacks --{known}:\n{help}"
        );
    }
    flags
}

/// Where paths named in the deploy files are found in this checkout / test: the config
/// file the unit names is the example in `deploy/`, TLS files become empty temp files
/// (the loader only checks that they can be opened).
struct PathMap {
    _dir: tempfile::TempDir,
    map: BTreeMap<String, PathBuf>,
}

impl PathMap {
    fn new() -> PathMap {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut map = BTreeMap::new();
        map.insert("/etc/weft/weftd.toml".to_owned(), deploy("weftd.toml"));
        for name in ["ca.crt", "tls.crt", "tls.key"] {
            let file = dir.path().join(name);
            std::fs::write(&file, "").expect("temp TLS file");
            map.insert(format!("/etc/weft/pki/{name}"), file);
        }
        let empty = dir.path().join("empty.toml");
        std::fs::write(&empty, "").expect("empty config");
        map.insert("(empty config)".to_owned(), empty);
        PathMap { _dir: dir, map }
    }

    fn apply(&self, value: &str) -> String {
        match self.map.get(value) {
            Some(p) => p.display().to_string(),
            None => value.to_owned(),
        }
    }

    fn empty_config(&self) -> String {
        self.apply("(empty config)")
    }
}

/// Checks weftd arguments (`--name=value` or `--name value`) and `WEFTD_*` environment
/// variables as the real weftd would take them: every name is a documented flag, and
/// the settings loader accepts the values. Returns the resulting settings.
fn check_weftd_invocation(
    what: &str,
    args: &[String],
    env: &[(String, String)],
    paths: &PathMap,
) -> Settings {
    let flags = weftd_flags();
    let mut argv = vec!["weftd".to_owned()];
    let mut iter = args.iter().peekable();
    while let Some(arg) = iter.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            panic!("{what}: weftd takes no positional argument, got {arg:?}");
        };
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (flag, None),
        };
        assert!(
            flags.contains(name),
            "{what}: --{name} is not a weftd flag; weftd --help lists: {flags:?}"
        );
        // A value in the next argument, unless it is a flag or the flag is a switch.
        let value = value.or_else(|| {
            let is_switch = matches!(name, "ip-masq" | "cleanup-on-exit");
            match iter.peek() {
                Some(next) if !next.starts_with("--") && !is_switch => iter.next().cloned(),
                _ => None,
            }
        });
        argv.push(match value {
            Some(v) => format!("--{name}={}", paths.apply(&v)),
            None => format!("--{name}"),
        });
    }
    let mut env_vars: Vec<(String, String)> = Vec::new();
    for (var, value) in env {
        let Some(flag) = var.strip_prefix("WEFTD_") else {
            continue;
        };
        let name = flag.to_lowercase().replace('_', "-");
        assert!(
            flags.contains(&name),
            "{what}: environment variable {var} names no weftd flag (--{name})"
        );
        env_vars.push((var.clone(), paths.apply(value)));
    }
    // Hermetic: never read this machine's /etc/weft/weftd.toml.
    if !argv.iter().any(|a| a.starts_with("--config")) {
        env_vars.push(("WEFTD_CONFIG".to_owned(), paths.empty_config()));
    }
    Settings::from_args_and_env(&argv, env_vars)
        .unwrap_or_else(|e| panic!("{what}: weftd would reject {argv:?}: {e}"))
}

// ---- Kubernetes ------------------------------------------------------------------

fn manifest_documents() -> Vec<Value> {
    let text = read("kubernetes/weft.yaml");
    let mut docs = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(document)
            .unwrap_or_else(|e| panic!("weft.yaml document {}: invalid YAML: {e}", i + 1));
        if !value.is_null() {
            docs.push(value);
        }
    }
    docs
}

fn by_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("weft.yaml has no {kind}"))
}

fn str_list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|v| v.as_str().expect("a list of strings").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Expands kubelet's `$(VAR)` references from the container's environment.
fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = arg.to_owned();
    for (name, value) in env {
        out = out.replace(&format!("$({name})"), value);
    }
    assert!(
        !out.contains("$("),
        "{arg:?} refers to a variable the container does not define"
    );
    out
}

#[test]
fn manifest_has_the_expected_objects() {
    let docs = manifest_documents();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ServiceAccount", "ConfigMap", "DaemonSet"]);
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        assert!(doc["apiVersion"].is_string(), "{kind} without apiVersion");
        assert!(doc["metadata"]["name"].is_string(), "{kind} without a name");
        assert_eq!(doc["metadata"]["namespace"], "kube-system", "{kind}");
    }
    let ds = by_kind(&docs, "DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"], true,
        "weftd configures the node's namespace"
    );
    assert_eq!(
        pod["serviceAccountName"],
        by_kind(&docs, "ServiceAccount")["metadata"]["name"]
    );
    let selector = ds["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (key, value) in selector {
        assert_eq!(
            &labels[key], value,
            "the selector must match the pod labels"
        );
    }
    let tolerates_all = pod["tolerations"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["operator"] == "Exists" && t["key"].is_null())
    });
    assert!(
        tolerates_all,
        "the network DaemonSet must tolerate every taint"
    );

    // Every volume a container mounts exists.
    let volumes: BTreeSet<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for list in ["initContainers", "containers"] {
        for c in pod[list].as_array().expect("containers") {
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let name = m["name"].as_str().unwrap_or_default();
                assert!(volumes.contains(name), "{}: no volume {name}", c["name"]);
            }
        }
    }
}

#[test]
fn daemonset_weftd_flags_are_real_and_accepted() {
    let docs = manifest_documents();
    let pod = &by_kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let weftd = pod["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| {
            str_list(&c["command"])
                .first()
                .is_some_and(|c| c.ends_with("/weftd"))
        })
        .expect("a container running weftd");

    // The container's environment: literal values as given, fieldRefs as a node would
    // have them (status.hostIP = a node address).
    let mut env = BTreeMap::new();
    for var in weftd["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name").to_owned();
        let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => v.clone(),
            (_, Value::String(path)) if path == "status.hostIP" => "192.0.2.21".to_owned(),
            other => panic!("env {name}: unexpected source {other:?}"),
        };
        env.insert(name, value);
    }
    let args: Vec<String> = str_list(&weftd["args"])
        .iter()
        .map(|a| expand(a, &env))
        .collect();
    assert!(
        args.iter().any(|a| a.starts_with("--etcd-endpoints"))
            || env.contains_key("WEFTD_ETCD_ENDPOINTS"),
        "weft uses etcd directly: the DaemonSet must give --etcd-endpoints"
    );
    let paths = PathMap::new();
    let env_list: Vec<(String, String)> = env.into_iter().collect();
    let settings = check_weftd_invocation("DaemonSet weftd", &args, &env_list, &paths);
    assert_eq!(settings.public_ip, Some("192.0.2.21".parse().unwrap()));

    // Least privilege: not privileged, only the three capabilities added, all dropped.
    let sc = &weftd["securityContext"];
    assert_ne!(sc["privileged"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    let added: BTreeSet<String> = str_list(&sc["capabilities"]["add"]).into_iter().collect();
    let needed: BTreeSet<String> = NEEDED_CAPS
        .iter()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect();
    assert_eq!(added, needed, "capabilities added to weftd");
    assert!(str_list(&sc["capabilities"]["drop"]).contains(&"ALL".to_owned()));
    for init in pod["initContainers"].as_array().into_iter().flatten() {
        let isc = &init["securityContext"];
        assert_ne!(isc["privileged"], true, "{}", init["name"]);
        assert!(
            str_list(&isc["capabilities"]["add"]).is_empty(),
            "{} needs no capability",
            init["name"]
        );
    }

    // What weftd writes and opens is mounted from the host.
    let host_path = |mount_path: &Path| -> Option<(String, String)> {
        let mount = weftd["volumeMounts"]
            .as_array()?
            .iter()
            .find(|m| m["mountPath"].as_str() == mount_path.to_str())?;
        let volume = pod["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == mount["name"])?;
        Some((
            volume["hostPath"]["path"].as_str()?.to_owned(),
            volume["hostPath"]["type"].as_str().unwrap_or("").to_owned(),
        ))
    };
    let subnet_dir = settings.subnet_file.parent().expect("subnet file dir");
    for (dir, why) in [
        (subnet_dir, "subnet.env for the CNI plugin on the host"),
        (settings.state_dir.as_path(), "the node identity"),
    ] {
        let (host, _) = host_path(dir)
            .unwrap_or_else(|| panic!("{} ({why}) is not a hostPath mount", dir.display()));
        assert_eq!(Path::new(&host), dir, "{why}");
    }
    assert_eq!(
        host_path(Path::new("/dev/net/tun")),
        Some(("/dev/net/tun".to_owned(), "CharDevice".to_owned()))
    );
    for tls in [
        &settings.etcd_cafile,
        &settings.etcd_certfile,
        &settings.etcd_keyfile,
    ] {
        // The loader saw the temp stand-ins; the manifest's own paths must be mounted.
        assert!(tls.is_some(), "the DaemonSet talks TLS to etcd");
    }
    let mounted = |p: &str| {
        weftd["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["mountPath"].as_str().is_some_and(|mp| p.starts_with(mp)))
    };
    for arg in &args {
        if let Some(p) = arg
            .split_once('=')
            .map(|(_, v)| v)
            .filter(|v| v.starts_with("/etc/weft/pki/"))
        {
            assert!(mounted(p), "{p} is not inside a mounted volume");
        }
    }

    // The probes reach weftd's health endpoint.
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &weftd[probe]["httpGet"];
        assert_eq!(get["port"], settings.healthz_addr.port(), "{probe} port");
        assert_eq!(
            get["host"].as_str(),
            Some(settings.healthz_addr.ip().to_string().as_str()),
            "{probe} host"
        );
    }
    assert_eq!(weftd["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(weftd["livenessProbe"]["httpGet"]["path"], "/healthz");
}

#[test]
fn configmap_holds_a_valid_netconf_and_the_shipped_conflist() {
    let docs = manifest_documents();
    let data = &by_kind(&docs, "ConfigMap")["data"];
    let netconf = data["net-conf.json"].as_str().expect("net-conf.json");
    let netconf = NetConf::parse(netconf).unwrap_or_else(|e| panic!("net-conf.json: {e}"));
    assert_eq!(netconf.network.to_string(), "10.244.0.0/16");

    let in_map: Value = serde_json::from_str(data["10-weft.conflist"].as_str().expect("conflist"))
        .expect("the ConfigMap's conflist is JSON");
    let shipped: Value = serde_json::from_str(&read("cni/10-weft.conflist")).expect("JSON");
    assert_eq!(
        in_map, shipped,
        "ConfigMap and deploy/cni/10-weft.conflist differ"
    );

    // The init container installs exactly that key where the runtime looks.
    let pod = &by_kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let init = &pod["initContainers"][0];
    let script = str_list(&init["args"]).join("\n");
    for needle in [
        "/usr/local/bin/weft ",
        "10-weft.conflist",
        "/host/opt/cni/bin/weft",
        "/host/etc/cni/net.d/10-weft.conflist",
    ] {
        assert!(
            script.contains(needle),
            "install-cni script lacks {needle:?}:\n{script}"
        );
    }
    let mounts: BTreeMap<&str, &str> = init["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap(),
                m["name"].as_str().unwrap(),
            )
        })
        .collect();
    let host_of = |mount: &str| {
        let name = mounts[mount];
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()["hostPath"]["path"]
            .clone()
    };
    assert_eq!(host_of("/host/opt/cni/bin"), "/opt/cni/bin");
    assert_eq!(host_of("/host/etc/cni/net.d"), "/etc/cni/net.d");
}

// ---- CNI ------------------------------------------------------------------------

#[test]
fn conflist_passes_the_plugins_validation() {
    let conflist: Value = serde_json::from_str(&read("cni/10-weft.conflist"))
        .unwrap_or_else(|e| panic!("deploy/cni/10-weft.conflist is not JSON: {e}"));
    let version = conflist["cniVersion"].as_str().expect("cniVersion");
    assert!(
        SUPPORTED_VERSIONS.contains(&version),
        "cniVersion {version}"
    );
    let plugins = conflist["plugins"].as_array().expect("plugins");
    let types: Vec<&str> = plugins.iter().filter_map(|p| p["type"].as_str()).collect();
    assert_eq!(types, ["weft", "portmap"]);

    // What the runtime hands the plugin: the entry plus the list's name and version.
    let mut weft = plugins[0].as_object().expect("object").clone();
    weft.insert("cniVersion".into(), conflist["cniVersion"].clone());
    weft.insert("name".into(), conflist["name"].clone());
    let conf = CniNetConf::parse(&serde_json::to_vec(&weft).unwrap())
        .unwrap_or_else(|e| panic!("the weft entry is rejected by the plugin: {e}"));
    assert_eq!(conf.plugin_type, "weft");
    assert_eq!(conf.bridge, "cni0");
    assert_eq!(
        conf.subnet_file,
        Settings::default().subnet_file,
        "the plugin must read the subnet.env weftd writes by default"
    );
    assert_eq!(plugins[1]["capabilities"]["portMappings"], true);
}

// ---- weftd.toml and weftd.env ---------------------------------------------------------

/// `key = value` lines of the example that are commented out: `# key = value`.
fn commented_settings(text: &str, flags: &BTreeSet<String>) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter_map(|l| {
            let (key, _) = l.split_once(" = ")?;
            flags.contains(key).then(|| (key.to_owned(), l.to_owned()))
        })
        .collect()
}

#[test]
fn example_toml_loads_documents_every_setting_and_states_the_defaults() {
    let path = deploy("weftd.toml");
    let text = read("weftd.toml");
    let none: [(&str, &str); 0] = [];
    let loaded = Settings::from_args_and_env(["weftd", "--config", path.to_str().unwrap()], none)
        .unwrap_or_else(|e| panic!("weftd rejects deploy/weftd.toml: {e}"));
    let expected = Settings {
        config_file: Some(path.clone()),
        ..Settings::default()
    };
    assert_eq!(
        loaded, expected,
        "the example's active values are meant to be the defaults"
    );

    let flags = weftd_flags();
    let active: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
        .filter(|k| !k.starts_with('#'))
        .collect();
    let commented = commented_settings(&text, &flags);
    for flag in flags.iter().filter(|f| f.as_str() != "config") {
        assert!(
            active.contains(flag.as_str()) || commented.iter().any(|(k, _)| k == flag),
            "deploy/weftd.toml does not document `{flag}`"
        );
    }
    // Each commented-out example value is valid on its own: the loader gets past the key
    // and value checks (a TLS file that does not exist here, or a half of a pair, may
    // still be refused by the cross-field checks that follow).
    let dir = tempfile::tempdir().unwrap();
    for (key, line) in &commented {
        let file = dir.path().join(format!("{key}.toml"));
        std::fs::write(&file, format!("{line}\n")).unwrap();
        match Settings::from_args_and_env(["weftd", "--config", file.to_str().unwrap()], none) {
            Ok(_) | Err(SettingsError::Invalid { .. } | SettingsError::Incomplete { .. }) => {}
            Err(e) => panic!("commented example `{line}` is not valid: {e}"),
        }
    }
}

#[test]
fn example_env_names_real_flags_with_valid_values() {
    let text = read("systemd/weftd.env");
    let vars: Vec<(String, String)> = text
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .filter(|l| l.starts_with("WEFTD_"))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("VAR=value");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    assert!(vars.len() >= 5, "the example shows its variables: {vars:?}");
    let paths = PathMap::new();
    let settings = check_weftd_invocation("weftd.env", &[], &vars, &paths);
    assert!(settings.ip_masq);
    assert_eq!(settings.etcd_endpoints.len(), 3);
}

// ---- systemd --------------------------------------------------------------------------

/// `(section, key) -> values` of a unit file (one entry per assignment line).
fn parse_unit(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut section = String::new();
    let mut entries: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "line {}: continuation lines are not expected",
            i + 1
        );
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("weftd.service line {}: not key=value: {raw:?}", i + 1));
        entries
            .entry((section.clone(), key.trim().to_owned()))
            .or_default()
            .push(value.trim().to_owned());
    }
    entries
}

#[test]
fn systemd_unit_grants_exactly_net_admin_net_raw_and_bpf() {
    let unit = parse_unit(&read("systemd/weftd.service"));
    let service = |key: &str| -> Vec<String> {
        unit.get(&("Service".to_owned(), key.to_owned()))
            .cloned()
            .unwrap_or_default()
    };
    let one = |key: &str| -> String {
        let values = service(key);
        assert_eq!(
            values.len(),
            1,
            "[Service] {key}= must be set exactly once: {values:?}"
        );
        values[0].clone()
    };
    let words = |key: &str| -> BTreeSet<String> {
        one(key).split_whitespace().map(str::to_owned).collect()
    };
    let needed: BTreeSet<String> = NEEDED_CAPS.iter().map(|c| c.to_string()).collect();
    assert_eq!(words("CapabilityBoundingSet"), needed);
    // CAP_BPF is useless if seccomp refuses bpf(2): `~@privileged` holds it, so a later
    // allow-list entry must give it back (systemd applies the entries in order).
    let filters = service("SystemCallFilter");
    let denied = filters
        .iter()
        .position(|f| f.starts_with('~') && f.contains("@privileged"));
    let allowed = filters.iter().rposition(|f| f == "bpf");
    assert!(
        matches!((denied, allowed), (Some(d), Some(a)) if a > d),
        "SystemCallFilter= must allow bpf after denying @privileged: {filters:?}"
    );
    assert_eq!(words("AmbientCapabilities"), needed);
    assert_eq!(one("NoNewPrivileges"), "yes");
    let user = one("User");
    assert!(
        user != "root" && user != "0",
        "weftd runs as a dedicated user, not {user}"
    );
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("ProtectHome"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("Restart"), "always");
    assert_eq!(one("RestartSec"), "1");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("DeviceAllow"), "/dev/net/tun rw");
    assert_ne!(
        service("PrivateDevices"),
        ["yes"],
        "PrivateDevices hides /dev/net/tun"
    );
    let families: BTreeSet<String> = ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"]
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert_eq!(words("RestrictAddressFamilies"), families);
    let after = unit
        .get(&("Unit".to_owned(), "After".to_owned()))
        .map(|v| v.join(" "))
        .unwrap_or_default();
    assert!(after.contains("network-online.target"), "After={after}");

    // ExecStart runs weftd with flags it has, and the config it names (installed from
    // deploy/weftd.toml) puts subnet.env and the state where the unit lets it write.
    let exec: Vec<String> = one("ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(exec[0], "/usr/local/bin/weftd");
    let paths = PathMap::new();
    let settings = check_weftd_invocation("ExecStart", &exec[1..], &[], &paths);
    assert_eq!(settings.config_file, Some(deploy("weftd.toml")));
    let writable: BTreeSet<PathBuf> = words("ReadWritePaths").iter().map(PathBuf::from).collect();
    let subnet_dir = settings.subnet_file.parent().unwrap().to_path_buf();
    assert!(
        writable.contains(&subnet_dir),
        "{} not writable",
        subnet_dir.display()
    );
    assert!(
        writable.contains(&settings.state_dir),
        "{} not writable",
        settings.state_dir.display()
    );
    assert_eq!(
        one("RuntimeDirectory"),
        subnet_dir.strip_prefix("/run").unwrap().to_str().unwrap()
    );
    assert_eq!(
        one("StateDirectory"),
        settings
            .state_dir
            .strip_prefix("/var/lib")
            .unwrap()
            .to_str()
            .unwrap()
    );
}

/// systemd's own parser, where systemd is installed: an unknown directive or a value it
/// cannot parse is only a warning at load time, so the unit must load without any.
#[test]
fn systemd_accepts_the_unit_without_warnings() {
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        eprintln!(
            "SKIPPED (systemd-analyze not installed): systemd_accepts_the_unit_without_warnings"
        );
        return;
    }
    // `verify` wants ExecStart's program to exist: point it at the built weftd.
    let weftd = weft_tests::bin_path("weftd");
    assert!(
        weftd.is_file(),
        "{} missing: cargo build -p weft-daemon --bins",
        weftd.display()
    );
    let unit = read("systemd/weftd.service").replace(
        "ExecStart=/usr/local/bin/weftd ",
        &format!("ExecStart={} ", weftd.display()),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weftd.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("running systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify weftd.service ({}):\n{stderr}",
        out.status
    );
}
