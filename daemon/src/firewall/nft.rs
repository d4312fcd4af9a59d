//! Reading `nft -j list ruleset`: the forward-hook base chains of tables weft does not
//! own that may drop pod traffic. weft cannot add accepts there (an accept in one table
//! does not overrule a drop in another), so it names them in a warning instead.

use serde_json::Value;

/// A base chain on the forward hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardChain {
    pub family: String,
    pub table: String,
    pub name: String,
    /// Its policy is `drop`.
    pub policy_drop: bool,
    /// One of its rules ends in `drop` or `reject`.
    pub drop_rule: bool,
}

impl ForwardChain {
    /// `inet filter forward`, as `nft list chain` takes it.
    pub fn path(&self) -> String {
        format!("{} {} {}", self.family, self.table, self.name)
    }

    /// Why it may drop pod traffic, for the warning.
    pub fn reason(&self) -> &'static str {
        if self.policy_drop {
            "policy drop"
        } else {
            "a drop or reject rule"
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("nft -j output is not the JSON expected: {0}")]
pub struct NftJsonError(String);

/// The forward base chains of families `ip` and `inet` (the ones IPv4 forwarding
/// crosses), with what their rules say, from `nft -j list ruleset`.
pub fn forward_chains(json: &str) -> Result<Vec<ForwardChain>, NftJsonError> {
    let doc: Value = serde_json::from_str(json).map_err(|e| NftJsonError(e.to_string()))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| NftJsonError("no top-level \"nftables\" array".to_owned()))?;
    let mut chains: Vec<ForwardChain> = Vec::new();
    for item in items {
        if let Some(chain) = item.get("chain") {
            let field = |key: &str| chain.get(key).and_then(Value::as_str).unwrap_or("");
            if field("hook") == "forward" && matches!(field("family"), "ip" | "inet") {
                chains.push(ForwardChain {
                    family: field("family").to_owned(),
                    table: field("table").to_owned(),
                    name: field("name").to_owned(),
                    policy_drop: field("policy") == "drop",
                    drop_rule: false,
                });
            }
        } else if let Some(rule) = item.get("rule") {
            let field = |key: &str| rule.get(key).and_then(Value::as_str).unwrap_or("");
            let drops = rule
                .get("expr")
                .and_then(Value::as_array)
                .is_some_and(|exprs| {
                    exprs
                        .iter()
                        .any(|e| e.get("drop").is_some() || e.get("reject").is_some())
                });
            if drops {
                if let Some(chain) = chains.iter_mut().find(|c| {
                    c.family == field("family")
                        && c.table == field("table")
                        && c.name == field("chain")
                }) {
                    chain.drop_rule = true;
                }
            }
        }
    }
    Ok(chains)
}

/// The chains that may drop forwarded pod traffic and that weft does not handle:
/// not weft's own table, and not iptables-nft's `ip filter FORWARD` when weft's jump
/// is in it (`iptables_nft_handled`).
pub fn blocking(chains: &[ForwardChain], iptables_nft_handled: bool) -> Vec<&ForwardChain> {
    chains
        .iter()
        .filter(|c| c.policy_drop || c.drop_rule)
        .filter(|c| !(c.family == "ip" && c.table == crate::masq::TABLE))
        .filter(|c| {
            !(iptables_nft_handled
                && c.family == "ip"
                && c.table == "filter"
                && c.name == "FORWARD")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nft -j list ruleset` (nftables 1.0.6) of a host with a pure nftables firewall
    /// (`inet fw forward`, policy drop), a table with a drop rule, an input chain, and
    /// iptables-nft's filter table.
    const RULESET: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
 {"table": {"family": "inet", "name": "fw", "handle": 1}},
 {"chain": {"family": "inet", "table": "fw", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
 {"chain": {"family": "inet", "table": "fw", "name": "input", "handle": 2, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
 {"table": {"family": "ip", "name": "strict", "handle": 2}},
 {"chain": {"family": "ip", "table": "strict", "name": "fwd", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
 {"rule": {"family": "ip", "table": "strict", "chain": "fwd", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "1.2.3.4"}}, {"drop": null}]}},
 {"table": {"family": "ip", "name": "filter", "handle": 3}},
 {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
 {"table": {"family": "bridge", "name": "br", "handle": 4}},
 {"chain": {"family": "bridge", "table": "br", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
 {"table": {"family": "ip", "name": "open", "handle": 5}},
 {"chain": {"family": "ip", "table": "open", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
 {"rule": {"family": "ip", "table": "open", "chain": "forward", "handle": 2, "expr": [{"accept": null}]}}
]}"#;

    #[test]
    fn finds_ip_and_inet_forward_chains_with_their_drops() {
        let chains = forward_chains(RULESET).unwrap();
        let paths: Vec<String> = chains.iter().map(ForwardChain::path).collect();
        assert_eq!(
            paths,
            [
                "inet fw forward",
                "ip strict fwd",
                "ip filter FORWARD",
                "ip open forward"
            ]
        );
        assert!(chains[0].policy_drop && !chains[0].drop_rule);
        assert!(!chains[1].policy_drop && chains[1].drop_rule);
        assert_eq!(chains[1].reason(), "a drop or reject rule");
        assert!(!chains[3].policy_drop && !chains[3].drop_rule);
    }

    #[test]
    fn blocking_skips_accepting_chains_and_the_iptables_chain_weft_handles() {
        let chains = forward_chains(RULESET).unwrap();
        let names = |handled| -> Vec<String> {
            blocking(&chains, handled)
                .into_iter()
                .map(ForwardChain::path)
                .collect()
        };
        assert_eq!(
            names(true),
            ["inet fw forward", "ip strict fwd"],
            "weft's jump makes iptables-nft's FORWARD accept pod traffic"
        );
        assert_eq!(
            names(false),
            ["inet fw forward", "ip strict fwd", "ip filter FORWARD"]
        );
    }

    #[test]
    fn bad_json_is_an_error_not_an_empty_list() {
        assert!(forward_chains("not json").is_err());
        assert!(forward_chains(r#"{"other": []}"#).is_err());
        assert_eq!(forward_chains(r#"{"nftables": []}"#).unwrap(), []);
    }
}
