//! weftd's settings: flags > `WEFTD_*` env > `--config` TOML (kebab-case keys) > defaults.
//!
//! INTERFACE: `Settings` (fields below; more may be added), built by
//! `Settings::from_args_env_file(args)`.
//!
//! One clap definition ([`Flags`]) parses all three layers, so a value means the same
//! and is checked the same wherever it comes from: an environment variable
//! `WEFTD_ETCD_PREFIX=x` is parsed as `--etcd-prefix=x`, a TOML line
//! `etcd-prefix = "x"` likewise. Every field of a layer is an `Option` with no clap
//! default, so "not given" stays visible and the layers merge field by field in
//! precedence order before the defaults fill the rest. (clap's own `env` support
//! would put the environment above the file correctly but could not put the file above
//! the defaults, and reads the process environment directly, which tests cannot
//! control safely.)

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, ValueEnum};

mod flannel;
mod layers;
mod values;
pub use flannel::{flannel_var, FLANNEL_FLAGS, FLANNEL_IGNORED, FLANNEL_REFUSED};
use layers::{env_layer, file_layer};
pub use values::TcAttach;
use values::*;

/// The config file read when `--config` is not given; it may be absent.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/weft/weftd.toml";
/// Prefix of the environment variables: `--etcd-prefix` is `WEFTD_ETCD_PREFIX`.
pub const ENV_PREFIX: &str = "WEFTD_";
/// etcd's own limit on a lease TTL, in seconds.
const MAX_LEASE_TTL_SECS: u64 = 9_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    pub etcd_cafile: Option<PathBuf>,
    pub etcd_certfile: Option<PathBuf>,
    pub etcd_keyfile: Option<PathBuf>,
    pub etcd_username: Option<String>,
    pub etcd_password: Option<String>,
    /// Underlay interfaces to try in order, each a name or an IPv4 address (flanneld's
    /// repeatable `--iface`); the first that exists is used.
    pub iface: Vec<String>,
    /// Regular expressions tried after `iface`, in order: the first interface with an
    /// IPv4 address, else a name, that matches (flanneld's `--iface-regex`).
    pub iface_regex: Vec<String>,
    /// Tried last: the interface the kernel routes this address through (`ip route
    /// get`, flanneld's `--iface-can-reach`). With none of the three, the interface of
    /// the default route.
    pub iface_can_reach: Option<Ipv4Addr>,
    /// Address peers send to; `None` = first IPv4 of `iface`.
    pub public_ip: Option<std::net::Ipv4Addr>,
    pub subnet_file: PathBuf,
    pub state_dir: PathBuf,
    pub ip_masq: bool,
    /// Accept traffic from and to the cluster network in the host's forward path
    /// (an iptables chain `WEFT-FWD` jumped to from `filter FORWARD`, where that exists).
    pub forward_rules: bool,
    pub healthz_addr: SocketAddr,
    pub cleanup_on_exit: bool,
    /// Let the kernel add the outer headers (TAP + tc program, `dataplane::tap_encap`)
    /// where this host allows it; `false` segments and encapsulates in userspace.
    pub kernel_encap: bool,
    /// How the tc program is attached to the TAP (`--tc-attach`). `--kernel-encap=false`
    /// is `--tc-attach=off`; read both through [`Settings::attach_mode`].
    pub tc_attach: TcAttach,
    /// How long a data-plane worker keeps polling after its last packet before it
    /// sleeps; zero keeps weftd's own short windows. Trades CPU for latency.
    pub busy_poll: Duration,
    /// Give small packets (≤ 256 bytes) a data-plane worker of their own, steered by
    /// size on TUN and on the VXLAN sockets (`dataplane::express`), so a light flow
    /// never queues behind a bulk one.
    pub express_lane: bool,
    /// Test-only: TTL of the etcd lease in seconds (default 24 h).
    pub lease_ttl_secs: u64,
    /// Renew the lease this long before it expires (flanneld's
    /// `--subnet-lease-renew-margin`, whole minutes, default 60).
    pub subnet_lease_renew_margin: Duration,
    pub log_format: LogFormat,
    /// A `tracing` filter: a level (`info`) or `target=level` directives, comma-separated.
    pub log_level: String,
    /// How long one attempt to connect to etcd may take before it is retried.
    pub etcd_dial_timeout: Duration,
    /// Test-only: how long etcd may be unreachable before `/readyz` fails (default 10 s).
    pub etcd_grace: Duration,
    /// The TOML file the settings were read from, if one was.
    pub config_file: Option<PathBuf>,
    /// flanneld's `FLANNELD_*` variables that set something (no flag or `WEFTD_*`
    /// variable set it too), for weftd's one notice at start.
    pub flannel_env_used: Vec<String>,
    /// `FLANNELD_*` variables a `WEFTD_*` variable or a flag overrode.
    pub flannel_env_overridden: Vec<String>,
    /// `FLANNELD_*` variables of flanneld flags weftd does without, each with the reason.
    pub flannel_env_ignored: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Settings {
    /// The documented defaults (docs/weftd.md; what weftd uses when nothing is configured).
    fn default() -> Self {
        Settings {
            etcd_endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            etcd_prefix: "/coreos.com/network".to_owned(),
            etcd_cafile: None,
            etcd_certfile: None,
            etcd_keyfile: None,
            etcd_username: None,
            etcd_password: None,
            iface: Vec::new(),
            iface_regex: Vec::new(),
            iface_can_reach: None,
            public_ip: None,
            subnet_file: PathBuf::from("/run/flannel/subnet.env"),
            state_dir: PathBuf::from("/var/lib/weft"),
            ip_masq: false,
            forward_rules: true,
            healthz_addr: SocketAddr::from(([127, 0, 0, 1], 9842)),
            cleanup_on_exit: false,
            kernel_encap: true,
            tc_attach: TcAttach::Auto,
            busy_poll: Duration::ZERO,
            express_lane: true,
            lease_ttl_secs: 24 * 60 * 60,
            subnet_lease_renew_margin: Duration::from_secs(60 * 60),
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
            etcd_dial_timeout: Duration::from_secs(5),
            etcd_grace: Duration::from_secs(10),
            config_file: None,
            flannel_env_used: Vec::new(),
            flannel_env_overridden: Vec::new(),
            flannel_env_ignored: Vec::new(),
        }
    }
}

/// Why the settings could not be built. `Cli` includes `--help` and `--version`: call
/// `err.exit()` on it to print them (or the usage error) the way clap does.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0}")]
    Cli(#[from] clap::Error),
    #[error("environment variable {var}={value:?}: {reason}")]
    Env {
        var: String,
        value: String,
        reason: String,
    },
    #[error("config file {}: cannot read it: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: invalid TOML: {message}", path.display())]
    Toml { path: PathBuf, message: String },
    #[error("config file {}{}: unknown key `{key}`{hint}; known keys: {}",
            path.display(), at_line(*line), documented_file_keys().join(", "))]
    UnknownKey {
        path: PathBuf,
        key: String,
        /// The 1-based line of the key, when it could be located.
        line: Option<usize>,
        hint: String,
    },
    #[error("config file {}{}: {key} = {value}: {reason}", path.display(), at_line(*line))]
    FileValue {
        path: PathBuf,
        key: String,
        value: String,
        line: Option<usize>,
        reason: String,
    },
    #[error("{flag} {value} (from {origin}): {reason}")]
    Invalid {
        /// The flag, e.g. `--etcd-certfile`.
        flag: &'static str,
        value: String,
        /// Where the value came from: the flag, `WEFTD_...`, or the config file.
        origin: Origin,
        reason: String,
    },
    #[error("flanneld's {flag} is not supported by weftd: {reason}")]
    FlannelFlag { flag: String, reason: String },
    #[error("{present} (from {origin}) needs {missing} as well: {reason}")]
    Incomplete {
        present: &'static str,
        origin: Origin,
        missing: &'static str,
        reason: &'static str,
    },
}

/// Where a setting's value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag(&'static str),
    Env(String),
    File(PathBuf),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(_) => f.write_str("the command line"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::Default => f.write_str("the default"),
        }
    }
}

/// The comma-separated `--etcd-endpoints` list, as one clap value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoints(Vec<String>);

/// weftd, the weft node daemon: leases this node's subnet from etcd (flannel's schema),
/// and carries pod traffic between nodes in userspace VXLAN or IPIP.
#[derive(Debug, Default, Clone, Parser)]
#[command(
    name = "weftd",
    version,
    after_help = "Every flag can also be set as an environment variable WEFTD_<FLAG> \
                  (e.g. WEFTD_ETCD_ENDPOINTS) or as a kebab-case key in the --config TOML \
                  file (e.g. etcd-endpoints = \"http://192.0.2.254:2379\"). flanneld's \
                  FLANNELD_<FLAG> variables (FLANNELD_IFACE, FLANNELD_ETCD_ENDPOINTS, ...) \
                  are read too, below WEFTD_<FLAG>. Precedence: flag > WEFTD_ > FLANNELD_ > \
                  file > default. Boolean flags take an optional value: --ip-masq, \
                  --ip-masq=false."
)]
struct Flags {
    /// TOML file with settings (kebab-case keys); a missing default file is fine
    /// [default: /etc/weft/weftd.toml]
    #[arg(long, value_name = "PATH", value_parser = parse_path)]
    config: Option<PathBuf>,
    /// etcd endpoints, comma-separated http:// or https:// URLs
    /// [default: http://127.0.0.1:2379]
    #[arg(long, value_name = "URLS", value_parser = parse_endpoints)]
    etcd_endpoints: Option<Endpoints>,
    /// etcd key prefix of the network [default: /coreos.com/network]
    #[arg(long, value_name = "PREFIX", value_parser = parse_prefix)]
    etcd_prefix: Option<String>,
    /// CA certificate to verify etcd's server certificate
    #[arg(long, value_name = "PATH", value_parser = parse_path)]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd (needs --etcd-keyfile)
    #[arg(long, value_name = "PATH", value_parser = parse_path)]
    etcd_certfile: Option<PathBuf>,
    /// Client key for etcd (needs --etcd-certfile)
    #[arg(long, value_name = "PATH", value_parser = parse_path)]
    etcd_keyfile: Option<PathBuf>,
    /// etcd user name (needs --etcd-password)
    #[arg(long, value_name = "NAME", value_parser = parse_nonempty)]
    etcd_username: Option<String>,
    /// etcd password (needs --etcd-username)
    #[arg(long, value_name = "PASSWORD", value_parser = parse_nonempty)]
    etcd_password: Option<String>,
    /// Time allowed for one attempt to connect to etcd, e.g. 5s, 500ms [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    etcd_dial_timeout: Option<Duration>,
    /// Underlay interface (name or IPv4 address); repeatable: the first that exists is
    /// used [default: interface of the default route]
    #[arg(long, value_name = "NAME|IP", value_parser = parse_iface, action = ArgAction::Append)]
    iface: Vec<String>,
    /// Regular expression for the underlay interface, tried after --iface; repeatable,
    /// in order: the first interface with a matching IPv4 address, else with a matching
    /// name (flanneld's rule)
    #[arg(long, value_name = "REGEX", value_parser = parse_iface_regex, action = ArgAction::Append)]
    iface_regex: Vec<String>,
    /// Use the interface the kernel routes this address through (as `ip route get`
    /// says), tried after --iface and --iface-regex
    #[arg(long, value_name = "IPV4", value_parser = parse_can_reach)]
    iface_can_reach: Option<Ipv4Addr>,
    /// IPv4 address peers send encapsulated traffic to [default: first IPv4 of --iface]
    #[arg(long, value_name = "IPV4", value_parser = parse_public_ip)]
    public_ip: Option<Ipv4Addr>,
    /// Where to write flannel's subnet.env [default: /run/flannel/subnet.env]
    #[arg(long, value_name = "PATH", value_parser = parse_path)]
    subnet_file: Option<PathBuf>,
    /// Directory for this node's persisted identity (VTEP MAC, lease) [default: /var/lib/weft]
    #[arg(long, value_name = "DIR", value_parser = parse_path)]
    state_dir: Option<PathBuf>,
    /// Renew the subnet lease this many minutes before it expires, 1 to 1439 (the lease
    /// lives 24 h) [default: 60]
    #[arg(long, value_name = "MINUTES", value_parser = parse_renew_margin)]
    subnet_lease_renew_margin: Option<u64>,
    /// Masquerade pod traffic leaving the cluster network [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_bool)]
    ip_masq: Option<bool>,
    /// Accept traffic from and to the cluster network in the host's forward path (an
    /// iptables chain WEFT-FWD jumped to from filter FORWARD, e.g. where Docker set its
    /// policy to DROP) [default: true]
    #[arg(long, alias = "iptables-forward-rules", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    forward_rules: Option<bool>,
    /// Address of the /healthz, /readyz, /metrics and /v1/status server [default: 127.0.0.1:9842]
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_socket_addr)]
    healthz_addr: Option<SocketAddr>,
    /// On exit, remove the devices, routes and rules weftd created [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_bool)]
    cleanup_on_exit: Option<bool>,
    /// Send whole 64 KB super-packets through the kernel's encapsulation (a TAP device and
    /// a tc program; needs CAP_BPF and kernel 6.6+) instead of segmenting in userspace;
    /// falls back by itself where unavailable [default: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_bool)]
    kernel_encap: Option<bool>,
    /// How the kernel-encapsulation path's tc program is attached to its TAP: tcx (a
    /// bpf link, kernel 6.6+), tc (a clsact qdisc and a direct-action cls_bpf filter,
    /// older kernels), auto (tcx, else tc, else the userspace path) or off (the
    /// userspace path, as --kernel-encap=false). A forced tcx or tc that cannot attach
    /// fails the start, naming why [default: auto]
    #[arg(long, value_name = "MODE")]
    tc_attach: Option<TcAttach>,
    /// Keep each data-plane worker polling this long after its last packet instead of
    /// sleeping, e.g. 20ms (up to 1s): round trips lose the sleeping worker's wake-up,
    /// at the cost of up to one CPU per worker that carried traffic within that time
    /// [default: 0, weftd's own 30 µs / 250 µs windows]
    #[arg(long, value_name = "DURATION", value_parser = parse_busy_poll)]
    busy_poll: Option<Duration>,
    /// Carry small packets (at most 256 bytes: pings, requests and replies; pure TCP
    /// ACKs stay with their flow) on a data-plane worker of their own, at high priority
    /// (nice -20) while its traffic stays sparse, steered by size by a TUN steering
    /// program and a reuseport program (VXLAN), so a light flow keeps its round trip
    /// beside bulk flows; false carries them with the rest [default: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_bool)]
    express_lane: Option<bool>,
    /// Log format [default: text]
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Log filter: a level (trace, debug, info, warn, error, off) or target=level
    /// directives, comma-separated [default: info]
    #[arg(long, value_name = "FILTER", value_parser = parse_log_level)]
    log_level: Option<String>,
    /// Test-only: TTL of the etcd lease in seconds [default: 86400]
    #[arg(long, value_name = "SECS", hide = true, value_parser = parse_ttl)]
    lease_ttl_secs: Option<u64>,
    /// Test-only: seconds etcd may be unreachable before /readyz fails [default: 10]
    #[arg(long, value_name = "SECS", hide = true, value_parser = parse_ttl)]
    etcd_grace_secs: Option<u64>,
}

impl Settings {
    /// The attachment weftd asks for: [`Settings::tc_attach`], or `off` when
    /// [`Settings::kernel_encap`] is false (either field may have been set alone).
    pub fn attach_mode(&self) -> TcAttach {
        if self.kernel_encap {
            self.tc_attach
        } else {
            TcAttach::Off
        }
    }

    /// Settings from `args` (the first item is the program name), the process
    /// environment and the config file.
    pub fn from_args_env_file<I, T>(args: I) -> Result<Settings, SettingsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Settings::from_args_and_env(args, std::env::vars_os())
    }

    /// Settings from the process's command line, environment and config file.
    pub fn from_env_and_args() -> Result<Settings, SettingsError> {
        Settings::from_args_env_file(std::env::args_os())
    }

    /// Like [`Settings::from_args_env_file`] with an explicit environment (tests use this
    /// instead of changing the process environment, which other threads share).
    /// Variables not named `WEFTD_<FLAG>` are ignored; an empty value counts as unset.
    pub fn from_args_and_env<I, T, E, K, V>(args: I, env: E) -> Result<Settings, SettingsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
        E: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        flannel::refuse_flannel_only_flags(&args)?;
        let matches = Flags::command().try_get_matches_from(&args)?;
        let flags = Flags::from_arg_matches(&matches)?;
        let on_command_line: Vec<String> = setting_names()
            .into_iter()
            .filter(|name| {
                matches.value_source(&name.replace('-', "_")) == Some(ValueSource::CommandLine)
            })
            .collect();
        let vars: HashMap<OsString, OsString> =
            env.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let (env, in_weftd_env) = env_layer(&vars)?;
        let flannel = flannel::flannel_layer(&vars)?;
        let (config_path, explicit) = match (&flags.config, &env.config) {
            (Some(path), _) | (None, Some(path)) => (path.clone(), true),
            (None, None) => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let (file, config_file) = match std::fs::read_to_string(&config_path) {
            Ok(text) => (file_layer(&config_path, &text)?, Some(config_path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                (Flags::default(), None)
            }
            Err(source) => {
                return Err(SettingsError::ReadFile {
                    path: config_path,
                    source,
                })
            }
        };
        let mut settings = merge(flags, env, flannel.flags, file, config_file)?;
        for (setting, var) in flannel.vars {
            if on_command_line.contains(&setting) || in_weftd_env.contains(&setting) {
                settings.flannel_env_overridden.push(var);
            } else {
                settings.flannel_env_used.push(var);
            }
        }
        settings.flannel_env_ignored = flannel.ignored;
        Ok(settings)
    }

    /// weftd's one notice about flanneld's environment variables: which it used, which
    /// a `WEFTD_*` variable or a flag overrode, which it ignored and why.
    pub fn flannel_env_notice(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.flannel_env_used.is_empty() {
            parts.push(format!(
                "using flanneld's {}",
                self.flannel_env_used.join(", ")
            ));
        }
        if !self.flannel_env_overridden.is_empty() {
            parts.push(format!(
                "overridden by a flag or WEFTD_ variable: {}",
                self.flannel_env_overridden.join(", ")
            ));
        }
        if !self.flannel_env_ignored.is_empty() {
            parts.push(format!("ignored: {}", self.flannel_env_ignored.join("; ")));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// The value of one setting and where it came from, taking the first layer that has it.
macro_rules! pick {
    ($flags:ident, $env:ident, $flannel:ident, $file:ident, $path:ident, $field:ident, $flag:literal) => {
        $flags
            .$field
            .take()
            .map(|v| (v, Origin::Flag($flag)))
            .or_else(|| {
                $env.$field
                    .take()
                    .map(|v| (v, Origin::Env(env_var_name($flag))))
            })
            .or_else(|| {
                $flannel.$field.take().map(|v| {
                    let var = flannel::var_of_setting($flag).unwrap_or_else(|| $flag.to_owned());
                    (v, Origin::Env(var))
                })
            })
            .or_else(|| {
                $file
                    .$field
                    .take()
                    .map(|v| (v, Origin::File($path.clone().unwrap_or_default())))
            })
    };
}

fn merge(
    mut flags: Flags,
    mut env: Flags,
    mut flannel: Flags,
    mut file: Flags,
    config_file: Option<PathBuf>,
) -> Result<Settings, SettingsError> {
    let d = Settings::default();
    let path = &config_file;
    macro_rules! value {
        ($field:ident, $flag:literal) => {
            pick!(flags, env, flannel, file, path, $field, $flag)
        };
    }
    // A list comes whole from the first layer that has one.
    macro_rules! list {
        ($field:ident) => {
            [
                std::mem::take(&mut flags.$field),
                std::mem::take(&mut env.$field),
                std::mem::take(&mut flannel.$field),
                std::mem::take(&mut file.$field),
            ]
            .into_iter()
            .find(|l| !l.is_empty())
            .unwrap_or_default()
        };
    }
    let endpoints = value!(etcd_endpoints, "--etcd-endpoints");
    let cafile = value!(etcd_cafile, "--etcd-cafile");
    let certfile = value!(etcd_certfile, "--etcd-certfile");
    let keyfile = value!(etcd_keyfile, "--etcd-keyfile");
    let username = value!(etcd_username, "--etcd-username");
    let password = value!(etcd_password, "--etcd-password");

    check_pair(
        &certfile,
        "--etcd-certfile",
        &keyfile,
        "--etcd-keyfile",
        "a TLS client certificate is useless without its key, and the other way round",
    )?;
    check_pair(
        &username,
        "--etcd-username",
        &password,
        "--etcd-password",
        "etcd authentication needs both",
    )?;
    for (file, flag) in [
        (&cafile, "--etcd-cafile"),
        (&certfile, "--etcd-certfile"),
        (&keyfile, "--etcd-keyfile"),
    ] {
        if let Some((path, origin)) = file {
            check_readable_file(flag, path, origin)?;
        }
    }
    let etcd_endpoints = endpoints
        .as_ref()
        .map_or(d.etcd_endpoints, |(e, _)| e.0.clone());
    let tls_file = [&cafile, &certfile, &keyfile].into_iter().flatten().next();
    if let Some((path, origin)) = tls_file {
        if !etcd_endpoints.iter().any(|e| e.starts_with("https://")) {
            return Err(SettingsError::Invalid {
                flag: "--etcd-endpoints",
                value: etcd_endpoints.join(","),
                origin: endpoints.map_or(Origin::Default, |(_, o)| o),
                reason: format!(
                    "TLS files are set ({} from {origin}) but no endpoint uses https://; \
                     use https:// URLs or drop the TLS files",
                    path.display()
                ),
            });
        }
    }

    let (kernel_encap, tc_attach) = attach_settings(
        value!(kernel_encap, "--kernel-encap"),
        value!(tc_attach, "--tc-attach"),
    )?;

    Ok(Settings {
        etcd_endpoints,
        etcd_prefix: value!(etcd_prefix, "--etcd-prefix").map_or(d.etcd_prefix, |v| v.0),
        etcd_cafile: cafile.map(|v| v.0),
        etcd_certfile: certfile.map(|v| v.0),
        etcd_keyfile: keyfile.map(|v| v.0),
        etcd_username: username.map(|v| v.0),
        etcd_password: password.map(|v| v.0),
        iface: list!(iface),
        iface_regex: list!(iface_regex),
        iface_can_reach: value!(iface_can_reach, "--iface-can-reach").map(|v| v.0),
        public_ip: value!(public_ip, "--public-ip").map(|v| v.0),
        subnet_file: value!(subnet_file, "--subnet-file").map_or(d.subnet_file, |v| v.0),
        state_dir: value!(state_dir, "--state-dir").map_or(d.state_dir, |v| v.0),
        ip_masq: value!(ip_masq, "--ip-masq").map_or(d.ip_masq, |v| v.0),
        forward_rules: value!(forward_rules, "--forward-rules").map_or(d.forward_rules, |v| v.0),
        healthz_addr: value!(healthz_addr, "--healthz-addr").map_or(d.healthz_addr, |v| v.0),
        cleanup_on_exit: value!(cleanup_on_exit, "--cleanup-on-exit")
            .map_or(d.cleanup_on_exit, |v| v.0),
        kernel_encap,
        tc_attach,
        busy_poll: value!(busy_poll, "--busy-poll").map_or(d.busy_poll, |v| v.0),
        express_lane: value!(express_lane, "--express-lane").map_or(d.express_lane, |v| v.0),
        lease_ttl_secs: value!(lease_ttl_secs, "--lease-ttl-secs")
            .map_or(d.lease_ttl_secs, |v| v.0),
        subnet_lease_renew_margin: value!(subnet_lease_renew_margin, "--subnet-lease-renew-margin")
            .map_or(d.subnet_lease_renew_margin, |v| {
                Duration::from_secs(v.0 * 60)
            }),
        log_format: value!(log_format, "--log-format").map_or(d.log_format, |v| v.0),
        log_level: value!(log_level, "--log-level").map_or(d.log_level, |v| v.0),
        etcd_dial_timeout: value!(etcd_dial_timeout, "--etcd-dial-timeout")
            .map_or(d.etcd_dial_timeout, |v| v.0),
        etcd_grace: value!(etcd_grace_secs, "--etcd-grace-secs")
            .map_or(d.etcd_grace, |v| Duration::from_secs(v.0)),
        config_file,
        flannel_env_used: Vec::new(),
        flannel_env_overridden: Vec::new(),
        flannel_env_ignored: Vec::new(),
    })
}

fn check_pair<A, B>(
    a: &Option<(A, Origin)>,
    a_flag: &'static str,
    b: &Option<(B, Origin)>,
    b_flag: &'static str,
    reason: &'static str,
) -> Result<(), SettingsError> {
    match (a, b) {
        (Some((_, origin)), None) => Err(SettingsError::Incomplete {
            present: a_flag,
            origin: origin.clone(),
            missing: b_flag,
            reason,
        }),
        (None, Some((_, origin))) => Err(SettingsError::Incomplete {
            present: b_flag,
            origin: origin.clone(),
            missing: a_flag,
            reason,
        }),
        _ => Ok(()),
    }
}

fn check_readable_file(
    flag: &'static str,
    path: &Path,
    origin: &Origin,
) -> Result<(), SettingsError> {
    let problem = match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => match std::fs::File::open(path) {
            Ok(_) => return Ok(()),
            Err(e) => format!("cannot be opened: {e}"),
        },
        Ok(_) => "is not a regular file".to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "no such file".to_owned(),
        Err(e) => format!("cannot be read: {e}"),
    };
    Err(SettingsError::Invalid {
        flag,
        value: path.display().to_string(),
        origin: origin.clone(),
        reason: problem,
    })
}

/// `--etcd-prefix` → `WEFTD_ETCD_PREFIX`.
fn env_var_name(flag: &str) -> String {
    let name = flag
        .trim_start_matches('-')
        .replace('-', "_")
        .to_uppercase();
    format!("{ENV_PREFIX}{name}")
}

/// Long names of every setting (`etcd-prefix`, ...), in definition order.
fn setting_names() -> Vec<String> {
    Flags::command()
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .filter(|long| !matches!(*long, "help" | "version"))
        .map(str::to_owned)
        .collect()
}

/// Keys a config file may set: every setting but `config`.
fn file_keys() -> Vec<String> {
    let mut names = setting_names();
    names.retain(|n| n != "config");
    names
}

/// The keys an error message lists: test-only (hidden) settings stay unadvertised.
fn documented_file_keys() -> Vec<String> {
    Flags::command()
        .get_arguments()
        .filter(|arg| !arg.is_hide_set())
        .filter_map(|arg| arg.get_long())
        .filter(|long| !matches!(*long, "help" | "version" | "config"))
        .map(str::to_owned)
        .collect()
}

/// `text` on one line: its lines trimmed, blank ones dropped, the rest joined by "; ".
pub fn single_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// An error and its causes on one line, each said once: many errors quote their source
/// in their own message already, which a plain `{:#}` would repeat ("...: Address
/// already in use (os error 98): Address already in use (os error 98)").
pub fn one_line_causes<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut line = String::new();
    for cause in chain {
        let text = single_line(&cause.to_string());
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// A clap usage error on one line, without the usage synopsis and the `--help` hint:
/// `unexpected argument '--ip-masquerade' found; tip: a similar argument exists:
/// '--ip-masq'`. `None` for `--help` and `--version`, which print as clap prints them.
pub fn clap_error_line(error: &clap::Error) -> Option<String> {
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        return None;
    }
    let rendered = error.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .map(|l| l.trim_start_matches("error: "))
        .collect();
    Some(parts.join("; "))
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(" line {l}")).unwrap_or_default()
}

/// Parses `--name=value` with the one clap definition, as the only argument, and
/// returns the clap error's reason (the part a user needs) on failure.
fn parse_one(name: &str, value: &str) -> Result<Flags, String> {
    let arg = format!("--{name}={value}");
    Flags::try_parse_from(["weftd", arg.as_str()]).map_err(|e| clap_reason(&e))
}

fn clap_reason(error: &clap::Error) -> String {
    if error.kind() == ErrorKind::InvalidValue {
        if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue) {
            return format!("expected one of: {}", valid.join(", "));
        }
    }
    if let Some(source) = std::error::Error::source(error) {
        return source.to_string();
    }
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Flags::command().debug_assert();
    }

    #[test]
    fn env_names_follow_flags() {
        assert_eq!(env_var_name("--etcd-prefix"), "WEFTD_ETCD_PREFIX");
        assert!(setting_names().contains(&"lease-ttl-secs".to_owned()));
    }

    #[test]
    fn clap_errors_fit_on_one_line_and_help_is_left_alone() {
        let err = Flags::try_parse_from(["weftd", "--ip-masquerade"]).unwrap_err();
        let line = clap_error_line(&err).unwrap();
        assert!(!line.contains('\n') && !line.contains("Usage"), "{line}");
        assert!(
            line.starts_with("unexpected argument '--ip-masquerade' found; tip:"),
            "{line}"
        );
        let help = Flags::try_parse_from(["weftd", "--help"]).unwrap_err();
        assert_eq!(clap_error_line(&help), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 s").is_err());
        assert!(parse_duration("s").is_err());
    }
}
