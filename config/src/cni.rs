//! The `weft` CNI network config (one plugin entry of a conflist, as the runtime passes
//! it on stdin): `{"cniVersion":..,"name":..,"type":"weft","subnetFile":..,"bridge":..,
//! "mtu":..,"isDefaultGateway":..,"hairpinMode":..,"ipam":{..},"prevResult":{..}}`.
//!
//! INTERFACE: `CniNetConf::parse(&[u8])`, the public fields below, `CniConfigError::code()`
//! (the CNI spec's error code for the failure), `SUPPORTED_VERSIONS`.
//!
//! Fields (all optional except `cniVersion`, `name` and `type`):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `subnetFile` | `/run/flannel/subnet.env` | flannel's subnet.env to read |
//! | `bridge` | `cni0` | the node's pod bridge |
//! | `mtu` | `FLANNEL_MTU` | pod interface MTU |
//! | `subnet` | `FLANNEL_SUBNET` | node pod subnet, e.g. `10.244.1.0/24` (gateway `.1`) |
//! | `network` | `FLANNEL_NETWORK` | the cluster network (route when not default gateway) |
//! | `isDefaultGateway` | `true` | default route via the gateway; `false`: cluster route only |
//! | `hairpinMode` | `true` | hairpin on the host veth's bridge port (flannel's default: a pod reaches itself through its own Service or hostPort) |
//! | `dataDir` | `/var/lib/cni/networks` | built-in IPAM's store (host-local's layout) |
//! | `ipam` | none | delegate addressing to this IPAM plugin |
//! | `dns` | none | passed through into the result |
//!
//! Unknown keys are ignored, as the CNI spec asks of plugins (runtimes add their own);
//! keys that the reference `bridge` plugin knows but weft does not implement (`ipMasq`,
//! `vlan`, `promiscMode`, `macspoofchk`, …) are rejected with code 2 when they ask for
//! behaviour, so a config copied from `bridge` does not silently lose a feature.

use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde_json::{Map, Value};

/// cniVersions weft accepts, oldest first. Results are rendered in the version asked.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest spec version weft implements.
pub const LATEST_VERSION: &str = "1.1.0";
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_BRIDGE: &str = "cni0";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// CNI spec error codes used for configuration problems.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
}

#[derive(Debug, thiserror::Error)]
pub enum CniConfigError {
    #[error("network config on stdin is not a JSON object: {0}")]
    Decode(String),
    #[error("cniVersion {version:?} is not supported by weft; supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0")]
    IncompatibleVersion { version: String },
    #[error("network config field {field}: value {value} is not supported by weft ({why})")]
    Unsupported {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("network config field {field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

impl CniConfigError {
    /// The CNI spec's error code for this failure.
    pub fn code(&self) -> u32 {
        match self {
            CniConfigError::Decode(_) => code::DECODE,
            CniConfigError::IncompatibleVersion { .. } => code::INCOMPATIBLE_VERSION,
            CniConfigError::Unsupported { .. } => code::UNSUPPORTED_FIELD,
            CniConfigError::Invalid { .. } => code::INVALID_CONFIG,
        }
    }
}

/// A validated `weft` network config.
#[derive(Debug, Clone, PartialEq)]
pub struct CniNetConf {
    pub cni_version: String,
    pub name: String,
    /// `type`; normally `weft`.
    pub plugin_type: String,
    pub subnet_file: PathBuf,
    pub bridge: String,
    pub mtu: Option<u32>,
    /// Override of FLANNEL_SUBNET: the node subnet (any address inside it; gateway `.1`).
    pub subnet: Option<Ipv4Net>,
    /// Override of FLANNEL_NETWORK.
    pub network: Option<Ipv4Net>,
    pub is_default_gateway: bool,
    pub hairpin_mode: bool,
    pub data_dir: PathBuf,
    /// The `ipam` section, when addressing is delegated to an IPAM plugin.
    pub ipam: Option<Map<String, Value>>,
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC): (containerID, ifname) pairs still in use.
    pub valid_attachments: Option<Vec<(String, String)>>,
}

impl CniNetConf {
    /// Parse and validate the config bytes read from stdin.
    pub fn parse(bytes: &[u8]) -> Result<CniNetConf, CniConfigError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| CniConfigError::Decode(e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(CniConfigError::Decode(format!(
                "expected a JSON object, got {}",
                kind_of(&value)
            )));
        };
        Self::from_map(&obj)
    }

    fn from_map(obj: &Map<String, Value>) -> Result<CniNetConf, CniConfigError> {
        let cni_version = required_str(obj, "cniVersion")?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniConfigError::IncompatibleVersion {
                version: cni_version,
            });
        }
        let name = required_str(obj, "name")?;
        validate_network_name(&name)?;
        let plugin_type = required_str(obj, "type")?;

        for (field, why) in [
            ("ipMasq", "weftd masquerades with --ip-masq"),
            ("promiscMode", "the bridge is not put into promiscuous mode"),
            ("vlan", "VLAN tagging on the bridge is not implemented"),
            ("macspoofchk", "MAC spoof checking is not implemented"),
            ("enabledad", "weft is IPv4-only"),
        ] {
            if let Some(v) = obj.get(field) {
                if v != &Value::Bool(false) && !v.is_null() && v != &Value::from(0) {
                    return Err(CniConfigError::Unsupported {
                        field,
                        value: v.to_string(),
                        why,
                    });
                }
            }
        }

        let subnet_file = optional_str(obj, "subnetFile")?
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SUBNET_FILE));
        if subnet_file.as_os_str().is_empty() {
            return Err(invalid("subnetFile", "must not be empty"));
        }
        let bridge = optional_str(obj, "bridge")?.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        validate_ifname("bridge", &bridge)?;
        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(m) if (68..=65535).contains(&m) => Some(m as u32),
                _ => {
                    return Err(invalid(
                        "mtu",
                        format!("{v} is not an MTU; expected an integer from 68 to 65535"),
                    ))
                }
            },
        };
        let subnet = optional_net(obj, "subnet")?;
        if let Some(s) = subnet {
            if s.prefix_len() > 30 {
                return Err(invalid(
                    "subnet",
                    format!("{s} is too small for pods; use a /30 or larger"),
                ));
            }
        }
        let network = optional_net(obj, "network")?;
        let is_default_gateway = optional_bool(obj, "isDefaultGateway")?.unwrap_or(true);
        // flannel writes `hairpinMode: true` into its conflist; a pod whose own Service or
        // hostPort DNATs back to it needs the bridge to send the frame out the port it came in.
        let hairpin_mode = optional_bool(obj, "hairpinMode")?.unwrap_or(true);
        let data_dir = optional_str(obj, "dataDir")?
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if !data_dir.is_absolute() {
            return Err(invalid(
                "dataDir",
                format!("{} is not an absolute path", data_dir.display()),
            ));
        }
        let ipam = match obj.get("ipam") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) if m.is_empty() => None,
            Some(Value::Object(m)) => {
                match m.get("type") {
                    Some(Value::String(t)) if valid_plugin_type(t) => {}
                    Some(other) => {
                        return Err(invalid(
                            "ipam",
                            format!("ipam.type {other} is not a plugin name"),
                        ))
                    }
                    None => return Err(invalid("ipam", "an ipam section needs a \"type\"")),
                }
                Some(m.clone())
            }
            Some(other) => {
                return Err(invalid(
                    "ipam",
                    format!("expected an object, got {}", kind_of(other)),
                ))
            }
        };
        let dns = obj.get("dns").filter(|v| !v.is_null()).cloned();
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(invalid(
                    "prevResult",
                    format!("expected an object, got {}", kind_of(other)),
                ))
            }
        };
        let valid_attachments = match obj.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let id = item.get("containerID").and_then(Value::as_str);
                    let ifname = item.get("ifname").and_then(Value::as_str);
                    match (id, ifname) {
                        (Some(id), Some(ifname)) => out.push((id.to_string(), ifname.to_string())),
                        _ => {
                            return Err(invalid(
                                "cni.dev/valid-attachments",
                                format!("entry {item} needs string fields containerID and ifname"),
                            ))
                        }
                    }
                }
                Some(out)
            }
            Some(other) => {
                return Err(invalid(
                    "cni.dev/valid-attachments",
                    format!("expected an array, got {}", kind_of(other)),
                ))
            }
        };

        Ok(CniNetConf {
            cni_version,
            name,
            plugin_type,
            subnet_file,
            bridge,
            mtu,
            subnet,
            network,
            is_default_gateway,
            hairpin_mode,
            data_dir,
            ipam,
            dns,
            prev_result,
            valid_attachments,
        })
    }

    /// The IPAM plugin type when addressing is delegated.
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam
            .as_ref()
            .and_then(|m| m.get("type"))
            .and_then(Value::as_str)
    }

    /// Whether the config's version is at least `other` (both from SUPPORTED_VERSIONS or
    /// any dotted version).
    pub fn version_at_least(&self, other: &str) -> bool {
        version_at_least(&self.cni_version, other)
    }
}

/// Compare dotted versions numerically: `a >= b`.
pub fn version_at_least(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> {
        v.split('.')
            .map(|p| p.parse::<u64>().unwrap_or(0))
            .collect()
    };
    parse(a) >= parse(b)
}

fn invalid(field: &'static str, problem: impl Into<String>) -> CniConfigError {
    CniConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn required_str(obj: &Map<String, Value>, field: &'static str) -> Result<String, CniConfigError> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(invalid(field, "must not be empty")),
        None | Some(Value::Null) => Err(invalid(field, "is required")),
        Some(other) => Err(invalid(
            field,
            format!("expected a string, got {}", kind_of(other)),
        )),
    }
}

fn optional_str(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, CniConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(
            field,
            format!("expected a string, got {}", kind_of(other)),
        )),
    }
}

fn optional_bool(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<bool>, CniConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid(
            field,
            format!("expected true or false, got {other}"),
        )),
    }
}

fn optional_net(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<Ipv4Net>, CniConfigError> {
    match optional_str(obj, field)? {
        None => Ok(None),
        Some(s) => s.parse::<Ipv4Net>().map(Some).map_err(|_| {
            invalid(
                field,
                format!("{s:?} is not an IPv4 network in CIDR form such as 10.244.1.0/24"),
            )
        }),
    }
}

/// The CNI spec's rule for network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn validate_network_name(name: &str) -> Result<(), CniConfigError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return Err(invalid(
            "name",
            format!("{name:?} is not a network name: use letters, digits, '_', '.', '-', starting with a letter or digit"),
        ));
    }
    Ok(())
}

fn valid_plugin_type(t: &str) -> bool {
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && t != "."
        && t != ".."
}

/// Linux interface name rules: 1..=15 bytes, no '/', ':' or whitespace, not `.`/`..`.
pub fn validate_ifname(field: &'static str, name: &str) -> Result<(), CniConfigError> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(invalid(
            field,
            format!(
                "{name:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<CniNetConf, CniConfigError> {
        CniNetConf::parse(s.as_bytes())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(r#"{"cniVersion":"1.0.0","name":"weft","type":"weft"}"#).unwrap();
        assert_eq!(c.bridge, "cni0");
        assert_eq!(c.subnet_file, PathBuf::from(DEFAULT_SUBNET_FILE));
        assert!(c.is_default_gateway);
        assert!(c.hairpin_mode, "hairpin is on by default, as in flannel");
        assert_eq!(c.mtu, None);
        assert!(c.ipam.is_none());
    }

    #[test]
    fn full_config_is_read() {
        let c = parse(
            r#"{"cniVersion":"0.3.1","name":"n1","type":"weft","subnetFile":"/tmp/s.env",
            "bridge":"br9","mtu":1400,"isDefaultGateway":false,"hairpinMode":true,
            "dataDir":"/tmp/d","subnet":"10.244.9.0/24","network":"10.244.0.0/16",
            "ipam":{"type":"host-local"},"prevResult":{"ips":[]},
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.mtu, Some(1400));
        assert!(!c.is_default_gateway && c.hairpin_mode);
        assert_eq!(c.ipam_type(), Some("host-local"));
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![("a".into(), "eth0".into())]
        );
    }

    #[test]
    fn errors_carry_spec_codes_and_name_the_field() {
        let cases = [
            ("{", 6, "JSON"),
            ("[1]", 6, "JSON object"),
            (
                r#"{"cniVersion":"0.2.0","name":"n","type":"weft"}"#,
                1,
                "0.2.0",
            ),
            (r#"{"cniVersion":"1.0.0","type":"weft"}"#, 7, "name"),
            (
                r#"{"cniVersion":"1.0.0","name":"a b","type":"weft"}"#,
                7,
                "name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","mtu":"x"}"#,
                7,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","mtu":40}"#,
                7,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","bridge":"averyveryverylongname"}"#,
                7,
                "bridge",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","ipMasq":true}"#,
                2,
                "ipMasq",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","ipam":{}}"#,
                0,
                "",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","ipam":{"x":1}}"#,
                7,
                "ipam",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","dataDir":"rel"}"#,
                7,
                "dataDir",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","subnet":"10.1.1.1"}"#,
                7,
                "subnet",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"weft","hairpinMode":"yes"}"#,
                7,
                "hairpinMode",
            ),
        ];
        for (input, code, needle) in cases {
            match parse(input) {
                Ok(_) => assert_eq!(code, 0, "{input} should fail"),
                Err(e) => {
                    assert_eq!(e.code(), code, "{input}: {e}");
                    assert!(e.to_string().contains(needle), "{input}: {e}");
                }
            }
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(
                    |f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                ),
                ".{0,20}".prop_map(Value::String),
                prop::sample::select(vec![
                    "1.0.0",
                    "0.3.1",
                    "10.244.1.0/24",
                    "/tmp/x",
                    "cni0",
                    "weft"
                ])
                .prop_map(Value::from),
            ]
        }

        fn value() -> impl Strategy<Value = Value> {
            leaf().prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,8}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        const FIELDS: [&str; 18] = [
            "cniVersion",
            "name",
            "type",
            "subnetFile",
            "bridge",
            "mtu",
            "subnet",
            "network",
            "isDefaultGateway",
            "hairpinMode",
            "dataDir",
            "ipam",
            "dns",
            "prevResult",
            "cni.dev/valid-attachments",
            "ipMasq",
            "vlan",
            "runtimeConfig",
        ];

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = CniNetConf::parse(&bytes);
            }

            #[test]
            fn arbitrary_field_values_never_panic_and_errors_have_codes(
                fields in prop::collection::btree_map(prop::sample::select(FIELDS.to_vec()), value(), 0..10)
            ) {
                let mut obj: Map<String, Value> =
                    fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                obj.entry("cniVersion").or_insert_with(|| Value::from("1.0.0"));
                let text = Value::Object(obj).to_string();
                match CniNetConf::parse(text.as_bytes()) {
                    Ok(conf) => prop_assert!(SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str())),
                    Err(e) => {
                        prop_assert!([1, 2, 6, 7].contains(&e.code()));
                        prop_assert!(!e.to_string().is_empty());
                    }
                }
            }
        }
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_at_least("1.1.0", "1.0.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(version_at_least("0.10.0", "0.4.0"));
    }
}
