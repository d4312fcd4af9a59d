//! `--ip-masq`: an nftables table `ip weft`, owned by weft and replaced atomically.
//!
//! The whole table is rewritten in one `nft -f -` transaction
//! (`table ip weft {}; delete table ip weft; table ip weft { ... }`): the first line
//! makes the delete succeed on a fresh host, and the kernel applies all three at once,
//! so there is never a moment without rules and no partial state after a failure. No
//! iptables lock is involved (flannel #933), and weft never touches another table.
//!
//! The rules are flannel's:
//! * pod → pod (source and destination in the cluster network): untouched;
//! * pod → outside (not multicast): masqueraded to the node's address;
//! * outside → this node's pods: untouched;
//! * outside → other nodes' pods: masqueraded, so replies come back through this node.

use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

/// Name of weft's table (family `ip`).
pub const TABLE: &str = "weft";

#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error("running nft (is nftables installed?): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft rejected weft's ruleset ({status}): {stderr}")]
    Rejected { status: String, stderr: String },
}

/// The nft script that (re)creates weft's table for `network` and this node's `subnet`.
pub fn ruleset(network: Ipv4Net, subnet: Ipv4Net) -> String {
    format!(
        "table ip {TABLE} {{}}
delete table ip {TABLE}
table ip {TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {network} ip daddr {network} return
        ip saddr {network} ip daddr != 224.0.0.0/4 masquerade fully-random
        ip saddr != {network} ip daddr {subnet} return
        ip saddr != {network} ip daddr {network} masquerade fully-random
    }}
}}
"
    )
}

/// The nft script that removes weft's table (and nothing else).
pub fn removal() -> String {
    format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n")
}

/// Installs or replaces the masquerade rules in the current network namespace.
pub fn install(network: Ipv4Net, subnet: Ipv4Net) -> Result<(), MasqError> {
    nft(&ruleset(network, subnet))
}

/// Removes weft's table; success when it is not there.
pub fn remove() -> Result<(), MasqError> {
    nft(&removal())
}

fn nft(script: &str) -> Result<(), MasqError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(MasqError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(MasqError::Spawn)?;
    }
    let output = child.wait_with_output().map_err(MasqError::Spawn)?;
    if !output.status.success() {
        return Err(MasqError::Rejected {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_is_one_transaction_with_flannels_rules() {
        let script = ruleset(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.3.0/24".parse().unwrap(),
        );
        let lines: Vec<&str> = script.lines().map(str::trim).collect();
        assert_eq!(lines[0], "table ip weft {}");
        assert_eq!(lines[1], "delete table ip weft");
        assert!(lines.contains(&"ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return"));
        assert!(lines
            .contains(&"ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random"));
        assert!(lines.contains(&"ip saddr != 10.244.0.0/16 ip daddr 10.244.3.0/24 return"));
        // pod↔pod return comes before any masquerade rule.
        let ret = lines
            .iter()
            .position(|l| l.ends_with("10.244.0.0/16 return"))
            .unwrap();
        let masq = lines.iter().position(|l| l.contains("masquerade")).unwrap();
        assert!(ret < masq);
    }

    #[test]
    fn removal_touches_only_weft() {
        assert_eq!(removal(), "table ip weft {}\ndelete table ip weft\n");
    }
}
