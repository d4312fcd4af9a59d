//! `--ip-masq`: an nftables table `ip weft`, owned by weft and replaced atomically.
//!
//! The whole table is rewritten in one `nft -f -` transaction
//! (`table ip weft {}; delete table ip weft; table ip weft { ... }`): the first line
//! makes the delete succeed on a fresh host, and the kernel applies all three at once,
//! so there is never a moment without rules and no partial state after a failure. No
//! iptables lock is involved (flannel #933), and weft never touches another table.
//! The table stays when weftd stops (a restart replaces it in the same way, so
//! established connections keep their NAT); only `--cleanup-on-exit` removes it.
//! `crate::firewall` runs the scripts and puts the table back when it goes missing.
//!
//! The rules are flannel's:
//! * pod → pod (source and destination in the cluster network): untouched;
//! * pod → outside (not multicast): masqueraded to the node's address;
//! * outside → this node's pods: untouched;
//! * outside → other nodes' pods: masqueraded, so replies come back through this node.

use ipnet::Ipv4Net;

/// Name of weft's table (family `ip`).
pub const TABLE: &str = "weft";

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

/// `nft list table ip weft`, lines trimmed and blank ones dropped: what the reconcile
/// compares with the listing read right after installing (so the comparison does not
/// depend on how this nft version prints a rule).
pub fn normalize_listing(listing: &str) -> String {
    listing
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether nft's error for `list table ip weft` says the table does not exist.
pub fn is_absent_error(stderr: &str) -> bool {
    stderr.contains("No such file or directory")
}

/// Whether a listing read right after installing holds weft's masquerade rule.
pub fn looks_installed(normalized: &str) -> bool {
    normalized.starts_with(&format!("table ip {TABLE} {{")) && normalized.contains("masquerade")
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
    fn listings_compare_without_whitespace_noise() {
        let listed = "table ip weft {\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n\t}\n}\n";
        let normalized = normalize_listing(listed);
        assert_eq!(normalized, normalize_listing(&format!("\n{listed}\n\n")));
        assert!(looks_installed(&normalized));
        assert!(!looks_installed(&normalize_listing("table ip weft {\n}\n")));
        let edited = listed.replace("masquerade fully-random", "accept");
        assert_ne!(normalize_listing(&edited), normalized);
    }

    #[test]
    fn absence_is_told_from_other_errors() {
        assert!(is_absent_error(
            "Error: No such file or directory\nlist table ip weft\n              ^^^^"
        ));
        assert!(!is_absent_error("Error: Operation not permitted"));
    }

    #[test]
    fn removal_touches_only_weft() {
        assert_eq!(removal(), "table ip weft {}\ndelete table ip weft\n");
    }
}
