//! `--forward-rules`, the pure part: the `iptables-restore` scripts that add and remove
//! weft's accept rules, and reading `iptables-save -t filter` back.
//!
//! The rules are flannel's (`FLANNEL-FWD`): a chain of weft's own,
//!
//! ```text
//! -A WEFT-FWD -s <network> -m comment --comment "weft forward" -j ACCEPT
//! -A WEFT-FWD -d <network> -m comment --comment "weft forward" -j ACCEPT
//! ```
//!
//! jumped to from the first rule of `filter FORWARD`. They live in iptables' own filter
//! table because an `accept` in another nftables table (weft's `ip weft`, say) does not
//! overrule that table's `DROP` policy: every base chain on the forward hook must accept.
//!
//! One `iptables-restore --noflush` transaction (re)declares the chain, which flushes it,
//! adds both rules and, when there is none, the jump: the table is committed whole, so
//! there is no moment without the rules and no duplicate after a restart.

use ipnet::Ipv4Net;

pub use super::Check;

/// weft's chain in the filter table.
pub const CHAIN: &str = "WEFT-FWD";
/// The comment on every rule weft adds, so `iptables -S` says who added it.
pub const COMMENT: &str = "weft forward";

/// Which iptables the host's filter table belongs to. Both can be in use at once (a
/// packet then crosses both FORWARD chains), so weft handles each on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flavour {
    /// The x_tables kernel tables (`iptables-legacy`), listed in
    /// `/proc/net/ip_tables_names` once loaded.
    Legacy,
    /// iptables over nftables (`iptables-nft`, Debian's default): table `ip filter`.
    Nft,
}

impl Flavour {
    pub const ALL: [Flavour; 2] = [Flavour::Legacy, Flavour::Nft];

    /// For logs: `iptables-legacy` / `iptables-nft`.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Legacy => "iptables-legacy",
            Flavour::Nft => "iptables-nft",
        }
    }

    /// The `(save, restore)` programs to try, in order: the explicit names first, then
    /// the plain ones (hosts that ship only one iptables).
    pub fn programs(self) -> [(&'static str, &'static str); 2] {
        match self {
            Flavour::Legacy => [
                ("iptables-legacy-save", "iptables-legacy-restore"),
                ("iptables-save", "iptables-restore"),
            ],
            Flavour::Nft => [
                ("iptables-nft-save", "iptables-nft-restore"),
                ("iptables-save", "iptables-restore"),
            ],
        }
    }
}

/// What `iptables-save -t filter` shows of the filter table and of weft's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterTable {
    /// The policy of the FORWARD chain, if listed (`ACCEPT`, `DROP`).
    pub forward_policy: Option<String>,
    /// Rules anywhere in the table, weft's included.
    pub rules: usize,
    /// User-defined chains, weft's included.
    pub user_chains: usize,
    /// iptables-nft found a table `ip filter` it did not create (a pure nftables
    /// firewall that happens to use the name): not ours to add to.
    pub incompatible: bool,
    /// weft's rules as they are.
    pub weft: WeftRules,
}

/// weft's part of the filter table, as `iptables-save` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeftRules {
    /// `:WEFT-FWD` is declared.
    pub chain: bool,
    /// The `-A WEFT-FWD ...` lines, in order.
    pub chain_rules: Vec<String>,
    /// The rule specs (after `-A FORWARD `) of every FORWARD rule that jumps to WEFT-FWD.
    pub jumps: Vec<String>,
}

impl FilterTable {
    /// Whether anything uses the filter table. iptables-nft-save prints the three
    /// built-in chains with policy ACCEPT even when the table does not exist, and such
    /// a table lets everything through anyway, so only a non-ACCEPT policy, a rule or a
    /// chain makes weft's rules needed.
    pub fn in_use(&self) -> bool {
        !self.incompatible
            && (self
                .forward_policy
                .as_deref()
                .is_some_and(|p| p != "ACCEPT")
                || self.rules > 0
                || self.user_chains > 0)
    }
}

/// Parses the output of `iptables-save -t filter`.
pub fn parse_save(text: &str) -> FilterTable {
    let mut table = FilterTable::default();
    let mut in_filter = false;
    for line in text.lines().map(str::trim) {
        if line.contains("incompatible") && line.starts_with('#') {
            table.incompatible = true;
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            in_filter = name == "filter";
            continue;
        }
        if !in_filter {
            continue;
        }
        if line == "COMMIT" {
            in_filter = false;
        } else if let Some(declaration) = line.strip_prefix(':') {
            let mut parts = declaration.split_whitespace();
            let (name, policy) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            match name {
                "INPUT" | "OUTPUT" => {}
                "FORWARD" => table.forward_policy = Some(policy.to_owned()),
                _ => {
                    table.user_chains += 1;
                    if name == CHAIN {
                        table.weft.chain = true;
                    }
                }
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            table.rules += 1;
            let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
            if chain == CHAIN {
                table.weft.chain_rules.push(line.to_owned());
            } else if chain == "FORWARD" && jumps_to_weft(spec) {
                table.weft.jumps.push(spec.to_owned());
            }
        }
    }
    table
}

fn jumps_to_weft(spec: &str) -> bool {
    let words: Vec<&str> = spec.split_whitespace().collect();
    words
        .windows(2)
        .any(|pair| matches!(pair[0], "-j" | "--jump" | "-g" | "--goto") && pair[1] == CHAIN)
}

/// The two accept rules, as restore lines.
pub fn chain_rules(network: Ipv4Net) -> [String; 2] {
    [
        format!("-A {CHAIN} -s {network} -m comment --comment \"{COMMENT}\" -j ACCEPT"),
        format!("-A {CHAIN} -d {network} -m comment --comment \"{COMMENT}\" -j ACCEPT"),
    ]
}

/// The rule spec of the jump from FORWARD.
pub fn jump_spec() -> String {
    format!("-m comment --comment \"{COMMENT}\" -j {CHAIN}")
}

/// The `iptables-restore --noflush` script that makes weft's rules right, given what is
/// there now: declaring the chain flushes it (restore's `--noflush` semantics for a user
/// chain), so its rules are replaced, never doubled; the jump is inserted first in
/// FORWARD when missing, and extra jumps (someone else's copy) are deleted.
pub fn install_script(network: Ipv4Net, now: &WeftRules) -> String {
    let mut script = format!("*filter\n:{CHAIN} - [0:0]\n");
    for rule in chain_rules(network) {
        script.push_str(&rule);
        script.push('\n');
    }
    match now.jumps.split_first() {
        None => script.push_str(&format!("-I FORWARD 1 {}\n", jump_spec())),
        Some((_, extra)) => {
            for spec in extra {
                script.push_str(&format!("-D FORWARD {spec}\n"));
            }
        }
    }
    script.push_str("COMMIT\n");
    script
}

/// The script that removes weft's rules and chain, or `None` when nothing is there.
pub fn removal_script(now: &WeftRules) -> Option<String> {
    if !now.chain && now.jumps.is_empty() {
        return None;
    }
    let mut script = String::from("*filter\n");
    for spec in &now.jumps {
        script.push_str(&format!("-D FORWARD {spec}\n"));
    }
    if now.chain {
        // A chain must be empty and unreferenced before it can be deleted.
        script.push_str(&format!("-F {CHAIN}\n-X {CHAIN}\n"));
    }
    script.push_str("COMMIT\n");
    Some(script)
}

/// Compares weft's rules now with those read back right after installing them (so
/// the comparison does not depend on how this iptables version prints a rule):
/// `Missing` when the chain, one of its rules or the jump is gone, `Altered` when all
/// are there but something changed (a rule added, a second jump).
pub fn check(now: &WeftRules, installed: &WeftRules) -> Check {
    if now == installed {
        Check::Intact
    } else if !now.chain
        || now.jumps.is_empty()
        || installed
            .chain_rules
            .iter()
            .any(|rule| !now.chain_rules.contains(rule))
    {
        Check::Missing
    } else {
        Check::Altered
    }
}

/// Whether what `iptables-save` shows right after an install is what the install
/// wrote: both rules for `network` and exactly one jump.
pub fn looks_installed(rules: &WeftRules, network: Ipv4Net) -> bool {
    let net = network.to_string();
    rules.chain
        && rules.jumps.len() == 1
        && rules.chain_rules.len() == 2
        && rules.chain_rules[0].contains(&format!("-s {net}"))
        && rules.chain_rules[1].contains(&format!("-d {net}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETWORK: &str = "10.244.0.0/16";

    fn network() -> Ipv4Net {
        NETWORK.parse().unwrap()
    }

    /// iptables-nft-save's output on a host whose FORWARD policy Docker set to DROP,
    /// with weft's rules installed.
    const INSTALLED: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables) on Sun Dec  6 04:41:47 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
:WEFT-FWD - [0:0]
-A FORWARD -m comment --comment "weft forward" -j WEFT-FWD
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -j RETURN
-A WEFT-FWD -s 10.244.0.0/16 -m comment --comment "weft forward" -j ACCEPT
-A WEFT-FWD -d 10.244.0.0/16 -m comment --comment "weft forward" -j ACCEPT
COMMIT
# Completed on Sun Dec  6 04:41:47 2026
"#;

    /// What iptables-nft-save prints where no filter table exists at all.
    const ABSENT: &str = "# Generated by iptables-nft-save v1.8.9\n*filter\n:INPUT ACCEPT [0:0]\n\
                          :FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n# Completed\n";

    #[test]
    fn parse_finds_policy_weft_rules_and_the_jump() {
        let table = parse_save(INSTALLED);
        assert_eq!(table.forward_policy.as_deref(), Some("DROP"));
        assert_eq!(table.rules, 5);
        assert_eq!(table.user_chains, 2);
        assert!(table.in_use());
        assert!(table.weft.chain);
        assert_eq!(
            table.weft.jumps,
            [r#"-m comment --comment "weft forward" -j WEFT-FWD"#]
        );
        assert_eq!(table.weft.chain_rules.len(), 2);
        assert!(looks_installed(&table.weft, network()));
        assert!(!looks_installed(
            &table.weft,
            "10.245.0.0/16".parse().unwrap()
        ));
    }

    #[test]
    fn an_absent_or_all_accepting_table_is_not_in_use() {
        let table = parse_save(ABSENT);
        assert_eq!(table.forward_policy.as_deref(), Some("ACCEPT"));
        assert!(!table.in_use());
        assert_eq!(table.weft, WeftRules::default());
        assert!(!parse_save("").in_use());
        let dropping = ABSENT.replace(":FORWARD ACCEPT", ":FORWARD DROP");
        assert!(parse_save(&dropping).in_use());
    }

    #[test]
    fn a_pure_nftables_table_named_filter_is_not_iptables() {
        let text = format!("# Table `filter' contains incompatible base-chains, use 'nft' tool to list them.\n{ABSENT}");
        let table = parse_save(&text);
        assert!(table.incompatible);
        assert!(!table.in_use());
    }

    #[test]
    fn other_tables_and_lookalike_chains_are_ignored() {
        let text = "*nat\n:WEFT-FWD - [0:0]\n-A POSTROUTING -j WEFT-FWD\nCOMMIT\n*filter\n\
                    :FORWARD ACCEPT [0:0]\n-A FORWARD -j WEFT-FWD-OTHER\nCOMMIT\n";
        let table = parse_save(text);
        assert_eq!(table.weft, WeftRules::default());
        assert_eq!(table.rules, 1);
    }

    #[test]
    fn install_on_a_fresh_host_declares_the_chain_and_inserts_one_jump_first() {
        let script = install_script(network(), &WeftRules::default());
        assert_eq!(
            script,
            "*filter\n:WEFT-FWD - [0:0]\n\
             -A WEFT-FWD -s 10.244.0.0/16 -m comment --comment \"weft forward\" -j ACCEPT\n\
             -A WEFT-FWD -d 10.244.0.0/16 -m comment --comment \"weft forward\" -j ACCEPT\n\
             -I FORWARD 1 -m comment --comment \"weft forward\" -j WEFT-FWD\n\
             COMMIT\n"
        );
    }

    #[test]
    fn install_over_an_existing_jump_adds_none_and_removes_extra_ones() {
        let mut now = parse_save(INSTALLED).weft;
        let script = install_script(network(), &now);
        assert!(!script.contains("FORWARD"), "{script}");
        assert!(script.starts_with("*filter\n:WEFT-FWD - [0:0]\n"));

        now.jumps.push("-j WEFT-FWD".to_owned());
        let script = install_script(network(), &now);
        assert!(script.contains("\n-D FORWARD -j WEFT-FWD\n"), "{script}");
        assert!(!script.contains("-I FORWARD"), "{script}");
    }

    #[test]
    fn removal_deletes_jumps_before_the_chain_and_nothing_when_absent() {
        let now = parse_save(INSTALLED).weft;
        assert_eq!(
            removal_script(&now).unwrap(),
            "*filter\n-D FORWARD -m comment --comment \"weft forward\" -j WEFT-FWD\n\
             -F WEFT-FWD\n-X WEFT-FWD\nCOMMIT\n"
        );
        assert_eq!(removal_script(&WeftRules::default()), None);
    }

    #[test]
    fn check_tells_missing_from_altered() {
        let installed = parse_save(INSTALLED).weft;
        assert_eq!(check(&installed, &installed), Check::Intact);

        let flushed = parse_save(&INSTALLED.replace("-A WEFT-FWD", "# gone"));
        assert_eq!(check(&flushed.weft, &installed), Check::Missing);

        let unjumped = parse_save(&INSTALLED.replace("-A FORWARD -m comment", "# gone"));
        assert_eq!(check(&unjumped.weft, &installed), Check::Missing);

        assert_eq!(check(&parse_save(ABSENT).weft, &installed), Check::Missing);

        let mut extra = installed.clone();
        extra
            .chain_rules
            .push("-A WEFT-FWD -s 10.0.0.0/8 -j DROP".to_owned());
        assert_eq!(check(&extra, &installed), Check::Altered);

        let mut doubled = installed.clone();
        doubled.jumps.push("-j WEFT-FWD".to_owned());
        assert_eq!(check(&doubled, &installed), Check::Altered);
    }
}
