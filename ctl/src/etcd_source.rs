//! Where weftctl's etcd settings come from: its own flags (or `WEFTD_*` variables) first,
//! then what the node's weftd says in its `/v1/status` (endpoints, prefix, TLS file
//! paths, user name), then the defaults. So `weftctl leases` on a node needs no flags,
//! and `--verbose` says which source each setting came from.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use weft_daemon::subnet::status::EtcdClientView;
use weft_daemon::subnet::EtcdOptions;

const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";
const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// How to reach etcd: the same flags (and `WEFTD_*` variables) as weftd; whatever is
/// not given is learnt from the local weftd's `/v1/status`, else weftd's defaults.
#[derive(Debug, Clone, Default, Args)]
pub struct EtcdArgs {
    /// Comma-separated etcd endpoints [default: the local weftd's, else
    /// http://127.0.0.1:2379]
    #[arg(long, env = "WEFTD_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// flannel's etcd prefix [default: the local weftd's, else /coreos.com/network]
    #[arg(long, env = "WEFTD_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// CA certificate for TLS to etcd [default: the local weftd's]
    #[arg(long, env = "WEFTD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate for TLS to etcd [default: the local weftd's]
    #[arg(long, env = "WEFTD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key for TLS to etcd [default: the local weftd's]
    #[arg(long, env = "WEFTD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// etcd user name (with --etcd-password) [default: the local weftd's]
    #[arg(long, env = "WEFTD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// etcd password (with --etcd-username); weftd never tells it
    #[arg(long, env = "WEFTD_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// Say on stderr where each etcd setting came from (a flag, the local weftd, a
    /// default)
    #[arg(long, short)]
    pub verbose: bool,
}

/// The etcd options to use and where they came from.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub options: EtcdOptions,
    /// One `setting value (source)` entry per setting in use, for `--verbose`.
    pub sources: Vec<String>,
    /// Set when the endpoints are the built-in default because no weftd answered: a
    /// hint for an etcd error.
    pub default_endpoints_hint: Option<String>,
}

impl EtcdArgs {
    /// Whether every setting weftd could tell is given already (then weftd is not
    /// asked).
    pub fn needs_weftd(&self) -> bool {
        self.etcd_endpoints.is_empty() || self.etcd_prefix.is_none()
    }

    /// Merges the flags with the local weftd's `/v1/status` (`None`: weftd did not
    /// answer at `weftd_addr`) and the defaults. Pure.
    pub fn resolve(
        &self,
        weftd_status: Option<&serde_json::Value>,
        weftd_addr: SocketAddr,
    ) -> Result<Resolved, String> {
        let weftd: Option<EtcdClientView> = weftd_status
            .and_then(|status| serde_json::from_value(status.get("etcd")?.clone()).ok())
            .filter(|view: &EtcdClientView| !view.endpoints.is_empty());
        let from_weftd = format!("from weftd at {weftd_addr}");
        let mut sources = Vec::new();
        let mut pick = |name: &str, flag: Option<String>, learnt: Option<String>| {
            let (value, source) = match (flag, learnt) {
                (Some(v), _) => (Some(v), "from the command line or WEFTD_ environment"),
                (None, Some(v)) => (Some(v), from_weftd.as_str()),
                (None, None) => (None, ""),
            };
            if let Some(v) = &value {
                sources.push(format!("{name} {v} ({source})"));
            }
            value
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let flag_endpoints =
            (!self.etcd_endpoints.is_empty()).then(|| self.etcd_endpoints.join(","));
        let endpoints_from_flags = flag_endpoints.is_some();
        let endpoints = pick(
            "--etcd-endpoints",
            flag_endpoints,
            weftd.as_ref().map(|w| w.endpoints.join(",")),
        );
        // weftd's TLS files and user belong to weftd's endpoints: other endpoints given
        // by flag get none of them (a CA for one cluster is no use for another).
        let same_cluster = if endpoints_from_flags {
            None
        } else {
            weftd.as_ref()
        };
        let prefix = pick(
            "--etcd-prefix",
            self.etcd_prefix.clone(),
            weftd.as_ref().map(|w| w.prefix.clone()),
        );
        let cafile = pick(
            "--etcd-cafile",
            path(&self.etcd_cafile),
            same_cluster.and_then(|w| path(&w.cafile)),
        );
        let certfile = pick(
            "--etcd-certfile",
            path(&self.etcd_certfile),
            same_cluster.and_then(|w| path(&w.certfile)),
        );
        let keyfile = pick(
            "--etcd-keyfile",
            path(&self.etcd_keyfile),
            same_cluster.and_then(|w| path(&w.keyfile)),
        );
        let username = pick(
            "--etcd-username",
            self.etcd_username.clone(),
            same_cluster.and_then(|w| w.username.clone()),
        );
        let no_weftd = if weftd_status.is_some() {
            format!("weftd at {weftd_addr} did not say")
        } else {
            format!("no weftd answered at {weftd_addr}")
        };
        let mut default_endpoints_hint = None;
        let endpoints = endpoints.unwrap_or_else(|| {
            sources.push(format!(
                "--etcd-endpoints {DEFAULT_ENDPOINT} (default; {no_weftd})"
            ));
            default_endpoints_hint = Some(format!("default endpoint; {no_weftd}"));
            DEFAULT_ENDPOINT.to_owned()
        });
        let prefix = prefix.unwrap_or_else(|| {
            sources.push(format!("--etcd-prefix {DEFAULT_PREFIX} (default)"));
            DEFAULT_PREFIX.to_owned()
        });
        if username.is_some() && self.etcd_password.is_none() {
            return Err(format!(
                "etcd wants user {} to authenticate: give its password with --etcd-password \
                 or WEFTD_ETCD_PASSWORD (weftd never tells it)",
                username.unwrap_or_default()
            ));
        }
        Ok(Resolved {
            options: EtcdOptions {
                endpoints: endpoints.split(',').map(str::to_owned).collect(),
                prefix,
                cafile: cafile.map(PathBuf::from),
                certfile: certfile.map(PathBuf::from),
                keyfile: keyfile.map(PathBuf::from),
                username,
                password: self.etcd_password.clone(),
            },
            sources,
            default_endpoints_hint,
        })
    }
}

impl Resolved {
    /// `--verbose`'s line.
    pub fn describe(&self) -> String {
        format!("etcd settings: {}", self.sources.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:9842".parse().unwrap()
    }

    fn weftd_status() -> serde_json::Value {
        serde_json::json!({
            "ready": true,
            "etcd": {
                "state": "reachable",
                "endpoints": ["https://192.0.2.254:2379"],
                "prefix": "/weft/network",
                "cafile": "/etc/weft/ca.pem",
                "certfile": "/etc/weft/c.pem",
                "keyfile": "/etc/weft/k.pem"
            }
        })
    }

    #[test]
    fn weftd_fills_in_what_no_flag_gives() {
        let resolved = EtcdArgs::default()
            .resolve(Some(&weftd_status()), addr())
            .unwrap();
        assert_eq!(resolved.options.endpoints, ["https://192.0.2.254:2379"]);
        assert_eq!(resolved.options.prefix, "/weft/network");
        assert_eq!(
            resolved.options.keyfile.as_deref(),
            Some(std::path::Path::new("/etc/weft/k.pem"))
        );
        assert!(resolved.default_endpoints_hint.is_none());
        let line = resolved.describe();
        assert!(
            line.contains(
                "--etcd-endpoints https://192.0.2.254:2379 (from weftd at 127.0.0.1:9842)"
            ),
            "{line}"
        );
    }

    #[test]
    fn flags_win_and_the_defaults_come_last() {
        let args = EtcdArgs {
            etcd_prefix: Some("/mine".into()),
            ..EtcdArgs::default()
        };
        let resolved = args.resolve(Some(&weftd_status()), addr()).unwrap();
        assert_eq!(resolved.options.prefix, "/mine");
        assert_eq!(resolved.options.endpoints, ["https://192.0.2.254:2379"]);

        // Endpoints of another cluster by flag: weftd's TLS files do not come along.
        let other = EtcdArgs {
            etcd_endpoints: vec!["http://198.51.100.9:2379".into()],
            ..EtcdArgs::default()
        };
        let resolved = other.resolve(Some(&weftd_status()), addr()).unwrap();
        assert_eq!(resolved.options.prefix, "/weft/network");
        assert_eq!(resolved.options.cafile, None);
        assert_eq!(resolved.options.keyfile, None);

        let resolved = args.resolve(None, addr()).unwrap();
        assert_eq!(resolved.options.endpoints, [DEFAULT_ENDPOINT]);
        assert_eq!(resolved.options.cafile, None);
        let hint = resolved.default_endpoints_hint.unwrap();
        assert!(
            hint.contains("no weftd answered at 127.0.0.1:9842"),
            "{hint}"
        );
    }

    #[test]
    fn a_user_name_from_weftd_asks_for_the_password() {
        let mut status = weftd_status();
        status["etcd"]["username"] = "weft".into();
        let err = EtcdArgs::default()
            .resolve(Some(&status), addr())
            .unwrap_err();
        assert!(
            err.contains("user weft") && err.contains("--etcd-password"),
            "{err}"
        );
        let args = EtcdArgs {
            etcd_password: Some("pw".into()),
            ..EtcdArgs::default()
        };
        let resolved = args.resolve(Some(&status), addr()).unwrap();
        assert_eq!(resolved.options.username.as_deref(), Some("weft"));
    }
}
