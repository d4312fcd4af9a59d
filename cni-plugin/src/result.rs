//! CNI results across spec versions. Entries are kept as JSON objects so that fields
//! another plugin put into a `prevResult` survive chaining untouched; only the
//! version-specific parts are adjusted when rendering:
//!
//! * 0.3.0, 0.3.1, 0.4.0: every `ips[]` entry carries `"version": "4"|"6"`;
//! * 1.0.0+: no `version`;
//! * before 1.1.0: no interface `mtu`/`socketPath`/`pciID`, no route `mtu`/`advmss`/
//!   `priority`/`table`/`scope`.

use ipnet::IpNet;
use serde_json::{Map, Value};
use weft_config::cni::version_at_least;

use crate::error::{code, CniError};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Map<String, Value>>,
    pub ips: Vec<Map<String, Value>>,
    pub routes: Vec<Map<String, Value>>,
    pub dns: Option<Value>,
}

const V11_INTERFACE_FIELDS: [&str; 3] = ["mtu", "socketPath", "pciID"];
const V11_ROUTE_FIELDS: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];

impl CniResult {
    /// Read a result of any supported version (a `prevResult` or an IPAM plugin's
    /// output). `what` names the source for error messages.
    pub fn from_value(value: &Value, what: &str) -> Result<CniResult, CniError> {
        let bad =
            |problem: String| CniError::new(code::INVALID_CONFIG, format!("{what}: {problem}"));
        let Value::Object(obj) = value else {
            return Err(bad("expected a JSON object".into()));
        };
        let list = |field: &str| -> Result<Vec<Map<String, Value>>, CniError> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| match item {
                        Value::Object(m) => Ok(m.clone()),
                        other => Err(bad(format!("{field} entry {other} is not an object"))),
                    })
                    .collect(),
                Some(other) => Err(bad(format!("{field} is not an array: {other}"))),
            }
        };
        let interfaces = list("interfaces")?;
        let mut ips = list("ips")?;
        for ip in &mut ips {
            ip.remove("version");
            match ip.get("address").and_then(Value::as_str) {
                Some(a) if a.parse::<IpNet>().is_ok() => {}
                _ => return Err(bad(format!("ips entry {ip:?} has no valid address"))),
            }
        }
        let routes = list("routes")?;
        let dns = obj.get("dns").filter(|d| !d.is_null()).cloned();
        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns,
        })
    }

    /// Append `other` (e.g. our attachment after a prevResult), re-basing its
    /// `ips[].interface` indexes.
    pub fn append(&mut self, other: CniResult) {
        let offset = self.interfaces.len() as u64;
        self.interfaces.extend(other.interfaces);
        for mut ip in other.ips {
            if let Some(i) = ip.get("interface").and_then(Value::as_u64) {
                ip.insert("interface".into(), Value::from(i + offset));
            }
            self.ips.push(ip);
        }
        self.routes.extend(other.routes);
        if self.dns.is_none() {
            self.dns = other.dns;
        }
    }

    /// The result document for `cni_version`.
    pub fn render(&self, cni_version: &str) -> Value {
        let v1 = version_at_least(cni_version, "1.0.0");
        let v11 = version_at_least(cni_version, "1.1.0");
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut i = i.clone();
                if !v11 {
                    V11_INTERFACE_FIELDS.iter().for_each(|f| {
                        i.remove(*f);
                    });
                }
                Value::Object(i)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut ip = ip.clone();
                if !v1 {
                    let family = match ip
                        .get("address")
                        .and_then(Value::as_str)
                        .and_then(|a| a.parse::<IpNet>().ok())
                    {
                        Some(IpNet::V6(_)) => "6",
                        _ => "4",
                    };
                    ip.insert("version".into(), Value::from(family));
                }
                Value::Object(ip)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut r = r.clone();
                if !v11 {
                    V11_ROUTE_FIELDS.iter().for_each(|f| {
                        r.remove(*f);
                    });
                }
                Value::Object(r)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), Value::from(cni_version));
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        out.insert("ips".into(), Value::Array(ips));
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert(
            "dns".into(),
            self.dns
                .clone()
                .unwrap_or_else(|| Value::Object(Map::new())),
        );
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult::from_value(
            &json!({"cniVersion":"0.4.0",
                "interfaces":[{"name":"eth0","mac":"02:00:00:00:00:01","sandbox":"/x","mtu":1400}],
                "ips":[{"version":"4","address":"10.244.1.5/24","gateway":"10.244.1.1","interface":0}],
                "routes":[{"dst":"0.0.0.0/0","gw":"10.244.1.1","priority":5}]}),
            "prevResult",
        )
        .unwrap()
    }

    #[test]
    fn old_versions_carry_ip_version_new_ones_do_not() {
        let r = sample();
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let out = r.render(v);
            assert_eq!(out["ips"][0]["version"], "4", "{v}");
            assert_eq!(out["cniVersion"], v);
            assert!(out["interfaces"][0].get("mtu").is_none());
        }
        for v in ["1.0.0", "1.1.0"] {
            assert!(r.render(v)["ips"][0].get("version").is_none(), "{v}");
        }
        assert_eq!(r.render("1.1.0")["interfaces"][0]["mtu"], 1400);
        assert_eq!(r.render("1.1.0")["routes"][0]["priority"], 5);
        assert!(r.render("1.0.0")["routes"][0].get("priority").is_none());
    }

    #[test]
    fn append_rebases_interface_indexes() {
        let mut a = sample();
        a.append(sample());
        assert_eq!(a.interfaces.len(), 2);
        assert_eq!(a.ips[1]["interface"], 1);
    }

    #[test]
    fn bad_results_are_rejected() {
        assert!(CniResult::from_value(&json!([]), "x").is_err());
        assert!(CniResult::from_value(&json!({"ips":[{"address":"nope"}]}), "x").is_err());
        assert!(CniResult::from_value(&json!({"ips":"x"}), "x").is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                prop::sample::select(vec!["10.244.1.5/24", "fd00::5/64", "x", "", "4"])
                    .prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(
                        prop::sample::select(vec![
                            "interfaces",
                            "ips",
                            "routes",
                            "dns",
                            "address",
                            "gateway",
                            "interface",
                            "version",
                            "name",
                            "mtu",
                            "dst",
                        ]),
                        inner,
                        0..5
                    )
                    .prop_map(|m| Value::Object(
                        m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                    )),
                ]
            })
        }

        proptest! {
            #[test]
            fn any_result_parses_or_errors_and_renders_in_every_version(v in value()) {
                if let Ok(r) = CniResult::from_value(&v, "prop") {
                    for version in weft_config::cni::SUPPORTED_VERSIONS {
                        let out = r.render(version);
                        prop_assert_eq!(&out["cniVersion"], version);
                        // A rendered result reads back as the same result.
                        prop_assert_eq!(CniResult::from_value(&out, "again").map(|x| x.ips.len()).ok(), Some(r.ips.len()));
                    }
                }
            }
        }
    }
}
