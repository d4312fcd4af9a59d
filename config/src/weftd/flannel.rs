//! flanneld's names for weftd's settings: its `FLANNELD_<FLAG>` environment variables
//! (flannel's rule: every flag `--x-y` is also `FLANNELD_X_Y`) read as one more layer
//! below `WEFTD_*`, and flanneld's flags weftd has no use for, each with the reason, so
//! a flannel manifest moved to weft says what it loses instead of silently losing it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;

use super::{parse_one, Flags, SettingsError};
use clap::Parser;

/// Prefix of flanneld's environment variables.
pub const FLANNEL_ENV_PREFIX: &str = "FLANNELD_";

/// flanneld's flags weftd takes, as (flanneld's name, weftd's setting). All but one are
/// the same name.
pub const FLANNEL_FLAGS: &[(&str, &str)] = &[
    ("etcd-endpoints", "etcd-endpoints"),
    ("etcd-prefix", "etcd-prefix"),
    ("etcd-keyfile", "etcd-keyfile"),
    ("etcd-certfile", "etcd-certfile"),
    ("etcd-cafile", "etcd-cafile"),
    ("etcd-username", "etcd-username"),
    ("etcd-password", "etcd-password"),
    ("iface", "iface"),
    ("iface-regex", "iface-regex"),
    ("iface-can-reach", "iface-can-reach"),
    ("public-ip", "public-ip"),
    ("subnet-file", "subnet-file"),
    ("subnet-lease-renew-margin", "subnet-lease-renew-margin"),
    ("ip-masq", "ip-masq"),
    ("iptables-forward-rules", "forward-rules"),
];

const KUBE_ONLY: &str =
    "only used by flannel's Kubernetes subnet manager, which weft does not have";

/// flanneld's flags weftd does without: set in the environment they are ignored with a
/// notice; given on weftd's command line they are refused with the reason.
pub const FLANNEL_IGNORED: &[(&str, &str)] = &[
    (
        "iptables-resync",
        "weftd checks its firewall rules every 2 s by itself",
    ),
    (
        "healthz-ip",
        "weftd always serves /healthz, /readyz and /metrics, on --healthz-addr",
    ),
    (
        "healthz-port",
        "weftd always serves /healthz, /readyz and /metrics, on --healthz-addr",
    ),
    ("v", "weftd's verbosity is --log-level"),
    ("vmodule", "weftd's verbosity is --log-level"),
    ("log_backtrace_at", "weftd's verbosity is --log-level"),
    (
        "persistent-mac",
        "weftd always keeps its VTEP MAC in --state-dir/node.json",
    ),
    ("net-config-path", KUBE_ONLY),
    ("kube-api-url", KUBE_ONLY),
    ("kube-annotation-prefix", KUBE_ONLY),
    ("kubeconfig-file", KUBE_ONLY),
    ("set-node-network-unavailable", KUBE_ONLY),
    ("use-multi-cluster-cidr", KUBE_ONLY),
];

/// flanneld's flags that would change what the node does in a way weftd cannot: refused
/// wherever they are set (in the environment, unless set to false or empty).
pub const FLANNEL_REFUSED: &[(&str, &str)] = &[
    (
        "kube-subnet-mgr",
        "weft leases subnets from etcd only (flannel's etcd schema); flannel's Kubernetes \
         subnet manager is not implemented",
    ),
    (
        "public-ipv6",
        "weft is IPv4-only (a net-conf with EnableIPv6 is refused too)",
    ),
];

/// `iface-regex` → `FLANNELD_IFACE_REGEX`.
pub fn flannel_var(flannel_flag: &str) -> String {
    format!(
        "{FLANNEL_ENV_PREFIX}{}",
        flannel_flag.replace('-', "_").to_uppercase()
    )
}

/// The flanneld variable that sets weftd's setting `--name` (`--forward-rules` →
/// `FLANNELD_IPTABLES_FORWARD_RULES`), if flanneld has one.
pub(super) fn var_of_setting(flag: &str) -> Option<String> {
    let setting = flag.trim_start_matches('-');
    FLANNEL_FLAGS
        .iter()
        .find(|(_, weft)| *weft == setting)
        .map(|(flannel, _)| flannel_var(flannel))
}

/// The `FLANNELD_*` layer: the settings it sets, and which variable set each.
#[derive(Debug, Default)]
pub(super) struct FlannelLayer {
    pub flags: Flags,
    /// weftd setting (kebab-case) → the `FLANNELD_*` variable that set it.
    pub vars: BTreeMap<String, String>,
    /// `FLANNELD_*` variables of flags weftd does without, with the reason.
    pub ignored: Vec<String>,
}

pub(super) fn flannel_layer(
    vars: &HashMap<OsString, OsString>,
) -> Result<FlannelLayer, SettingsError> {
    let value_of = |var: &str| -> Result<Option<String>, SettingsError> {
        match vars.get(&OsString::from(var)) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => match v.to_str() {
                Some(s) => Ok(Some(s.to_owned())),
                None => Err(SettingsError::Env {
                    var: var.to_owned(),
                    value: v.to_string_lossy().into_owned(),
                    reason: "is not valid UTF-8".to_owned(),
                }),
            },
        }
    };
    let mut layer = FlannelLayer::default();
    for (flannel, why) in FLANNEL_REFUSED {
        let var = flannel_var(flannel);
        if let Some(value) = value_of(&var)? {
            if !matches!(value.to_ascii_lowercase().as_str(), "false" | "0") {
                return Err(SettingsError::Env {
                    var,
                    value,
                    reason: format!("flanneld's --{flannel} is not supported: {why}"),
                });
            }
        }
    }
    for (flannel, why) in FLANNEL_IGNORED {
        let var = flannel_var(flannel);
        if value_of(&var)?.is_some() {
            layer.ignored.push(format!("{var} ({why})"));
        }
    }
    let mut args = vec!["weftd".to_owned()];
    for (flannel, setting) in FLANNEL_FLAGS {
        let var = flannel_var(flannel);
        let Some(value) = value_of(&var)? else {
            continue;
        };
        parse_one(setting, &value).map_err(|reason| SettingsError::Env {
            var: var.clone(),
            value: value.clone(),
            reason,
        })?;
        args.push(format!("--{setting}={value}"));
        layer.vars.insert((*setting).to_owned(), var);
    }
    layer.flags = Flags::try_parse_from(args)?;
    Ok(layer)
}

/// Refuses a flanneld flag weftd does not take, naming why, before clap would call it
/// merely unexpected.
pub(super) fn refuse_flannel_only_flags(args: &[OsString]) -> Result<(), SettingsError> {
    for arg in args.iter().skip(1) {
        let Some(arg) = arg.to_str() else { continue };
        if arg == "--" {
            break;
        }
        let Some(name) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            continue;
        };
        let name = name.split_once('=').map_or(name, |(n, _)| n);
        let known = FLANNEL_REFUSED
            .iter()
            .chain(FLANNEL_IGNORED)
            .find(|(flag, _)| *flag == name);
        if let Some((flag, why)) = known {
            return Err(SettingsError::FlannelFlag {
                flag: format!("--{flag}"),
                reason: (*why).to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_names_follow_flannels_rule() {
        assert_eq!(flannel_var("iface-regex"), "FLANNELD_IFACE_REGEX");
        assert_eq!(
            var_of_setting("--forward-rules").as_deref(),
            Some("FLANNELD_IPTABLES_FORWARD_RULES")
        );
        assert_eq!(var_of_setting("--state-dir"), None);
    }

    #[test]
    fn every_flannel_flag_names_a_weftd_setting() {
        let names = super::super::setting_names();
        for (flannel, setting) in FLANNEL_FLAGS {
            assert!(
                names.iter().any(|n| n == setting),
                "flanneld's --{flannel} maps to --{setting}, which weftd does not have"
            );
        }
    }
}
