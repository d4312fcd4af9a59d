//! Value parsers shared by every layer (flags, `WEFTD_*` environment, TOML file): one
//! per kind of setting. Their messages complete the sentence "<flag> <value>: ...".
//! Also `--tc-attach`'s values and how they combine with `--kernel-encap`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

use super::{Endpoints, Origin, SettingsError, MAX_LEASE_TTL_SECS};

pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

pub(super) fn parse_nonempty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

pub(super) fn parse_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        Err("must not be empty: give a path".to_owned())
    } else if s.contains('\0') {
        Err("contains a NUL byte".to_owned())
    } else {
        Ok(PathBuf::from(s))
    }
}

pub(super) fn parse_endpoints(s: &str) -> Result<Endpoints, String> {
    let mut urls = Vec::new();
    for raw in s.split(',') {
        let url = raw.trim();
        if url.is_empty() {
            return Err(
                "has an empty entry: give comma-separated URLs such as http://127.0.0.1:2379"
                    .to_owned(),
            );
        }
        check_endpoint(url).map_err(|why| {
            if s.contains(',') {
                format!("entry {url:?} is not an etcd endpoint: {why}")
            } else {
                format!("is not an etcd endpoint: {why}")
            }
        })?;
        urls.push(url.trim_end_matches('/').to_owned());
    }
    Ok(Endpoints(urls))
}

pub(super) fn check_endpoint(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(why.to_owned());
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("expected a URL such as http://127.0.0.1:2379");
    };
    if scheme != "http" && scheme != "https" {
        return bad("the scheme must be http or https");
    }
    let authority = rest.trim_end_matches('/');
    if authority.contains(['/', '?', '#', '@']) {
        return bad("expected only scheme://host:port, without path, query or user info");
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((v6, after)) = bracketed.split_once(']') else {
            return bad("unclosed [ in an IPv6 address");
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("invalid IPv6 address");
        }
        (v6, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if !host_ok {
        return bad("the host is missing or has invalid characters");
    }
    if let Some(port) = port {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return bad("the port must be a number from 1 to 65535");
        }
    }
    Ok(())
}

pub(super) fn parse_prefix(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err("must start with '/', like flannel's /coreos.com/network".to_owned());
    }
    let trimmed = s.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("must name a key prefix below /, like /coreos.com/network".to_owned());
    }
    Ok(trimmed.to_owned())
}

pub(super) fn parse_iface(s: &str) -> Result<String, String> {
    if s.parse::<Ipv4Addr>().is_ok() {
        return Ok(s.to_owned());
    }
    // Linux interface names: 1..=15 bytes (IFNAMSIZ - 1), no '/', ':' or whitespace.
    let valid = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if valid {
        Ok(s.to_owned())
    } else {
        Err("is neither an IPv4 address nor a Linux interface name \
             (1 to 15 characters, no '/', ':' or spaces)"
            .to_owned())
    }
}

pub(super) fn parse_public_ip(s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|_| "is not an IPv4 address such as 192.0.2.1".to_owned())?;
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        return Err(
            "cannot be a node's address: use a unicast IPv4 address peers can reach".to_owned(),
        );
    }
    Ok(ip)
}

/// A regular expression (Rust's `regex` syntax, which is flanneld's Go RE2 syntax for
/// everything an interface pattern needs), unanchored as flanneld matches it.
pub(super) fn parse_iface_regex(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty: give a pattern such as ^eth or ^192\\.0\\.2\\.".to_owned());
    }
    regex::Regex::new(s).map(|_| s.to_owned()).map_err(|e| {
        format!(
            "is not a regular expression: {}",
            single_line_regex_error(&e)
        )
    })
}

/// The regex crate's message spans several lines (the pattern, a caret, the reason):
/// keep the reason.
fn single_line_regex_error(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .rev()
        .find(|l| l.trim_start().starts_with("error:"))
        .map(|l| {
            l.trim_start()
                .trim_start_matches("error:")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| super::single_line(&text))
}

pub(super) fn parse_can_reach(s: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|_| "is not an IPv4 address such as 192.0.2.254".to_owned())?;
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        return Err("must be a unicast IPv4 address the node routes to".to_owned());
    }
    Ok(ip)
}

/// Whole minutes, 1 to 1439 (flanneld's range: less than the 24 h lease).
pub(super) fn parse_renew_margin(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (1..24 * 60).contains(&n) => Ok(n),
        _ => Err("expected whole minutes from 1 to 1439 (the lease lives 24 h)".to_owned()),
    }
}

pub(super) fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "is not an address:port such as 127.0.0.1:9842 or [::1]:9842".to_owned())
}

/// `"250ms"` → `Some((250, "ms"))`: the leading whole number and what follows it.
pub(super) fn number_and_unit(s: &str) -> Option<(u64, &str)> {
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    Some((number.parse().ok()?, unit))
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || "is not a duration such as 5s, 500ms, 2m or 1h".to_owned();
    let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if duration.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(duration)
}

pub(super) fn parse_log_level(s: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |l: &str| LEVELS.iter().any(|x| x.eq_ignore_ascii_case(l));
    for directive in s.split(',') {
        let directive = directive.trim();
        let ok = match directive.split_once('=') {
            None => is_level(directive),
            Some((target, level)) => {
                !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'))
                    && is_level(level)
            }
        };
        if !ok {
            return Err(format!(
                "directive {directive:?} is not a level ({}) or target=level, e.g. weft_daemon=debug",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(s.to_owned())
}

/// `0`, or a whole number of `us` or `ms`, at most one second.
pub(super) fn parse_busy_poll(s: &str) -> Result<Duration, String> {
    let bad = || "is not a duration such as 0, 500us or 20ms (at most 1s)".to_owned();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
    let duration = match unit {
        "us" | "µs" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        _ => return Err(bad()),
    };
    if duration > Duration::from_secs(1) {
        return Err(bad());
    }
    Ok(duration)
}

pub(super) fn parse_ttl(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (1..=MAX_LEASE_TTL_SECS).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected whole seconds from 1 to {MAX_LEASE_TTL_SECS}"
        )),
    }
}

/// How the kernel-encapsulation path's tc program is attached (`--tc-attach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TcAttach {
    /// tcx where the kernel has it (6.6+), else clsact + cls_bpf, else userspace.
    Auto,
    /// A tcx link (`BPF_LINK_CREATE`, kernel 6.6+) or nothing: start fails without it.
    Tcx,
    /// A clsact qdisc and a direct-action cls_bpf filter (netlink) or nothing: start
    /// fails without it.
    Tc,
    /// No TAP and no program: segment and encapsulate in userspace.
    Off,
}

impl TcAttach {
    /// The setting's spelling (`auto`, `tcx`, `tc`, `off`).
    pub fn as_str(self) -> &'static str {
        match self {
            TcAttach::Auto => "auto",
            TcAttach::Tcx => "tcx",
            TcAttach::Tc => "tc",
            TcAttach::Off => "off",
        }
    }
}

impl fmt::Display for TcAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `--kernel-encap=false` is `--tc-attach=off`; asking for both it and a forced
/// attachment is a contradiction, refused naming both sources.
pub(super) fn attach_settings(
    kernel_encap: Option<(bool, Origin)>,
    tc_attach: Option<(TcAttach, Origin)>,
) -> Result<(bool, TcAttach), SettingsError> {
    match (kernel_encap, tc_attach) {
        (Some((false, _)), None | Some((TcAttach::Auto | TcAttach::Off, _))) => {
            Ok((false, TcAttach::Off))
        }
        (Some((false, encap_origin)), Some((mode, origin))) => Err(SettingsError::Invalid {
            flag: "--tc-attach",
            value: mode.to_string(),
            origin,
            reason: format!(
                "contradicts --kernel-encap=false (from {encap_origin}), which means \
                 --tc-attach=off; drop one of them"
            ),
        }),
        (_, Some((mode, _))) => Ok((mode != TcAttach::Off, mode)),
        (_, None) => Ok((true, TcAttach::Auto)),
    }
}
