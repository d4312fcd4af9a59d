//! weftd's settings: flags > `WEFTD_*` env > `--config` TOML (kebab-case keys) > defaults.
//!
//! INTERFACE: `Settings` (fields below; more may be added), built by
//! `Settings::from_args_env_file(args)`.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    pub etcd_cafile: Option<PathBuf>,
    pub etcd_certfile: Option<PathBuf>,
    pub etcd_keyfile: Option<PathBuf>,
    pub etcd_username: Option<String>,
    pub etcd_password: Option<String>,
    /// Underlay interface, name or IP; `None` = interface of the default route.
    pub iface: Option<String>,
    /// Address peers send to; `None` = first IPv4 of `iface`.
    pub public_ip: Option<std::net::Ipv4Addr>,
    pub subnet_file: PathBuf,
    pub state_dir: PathBuf,
    pub ip_masq: bool,
    pub healthz_addr: SocketAddr,
    pub cleanup_on_exit: bool,
    /// Test-only: TTL of the etcd lease in seconds (default 24 h).
    pub lease_ttl_secs: u64,
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}
