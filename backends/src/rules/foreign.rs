//! Accepts in base chains weft does not own, for nftables hosts whose forward policy is DROP in another table.
//!
//! In nftables every base chain at a hook sees the packet: an accept ends only its own chain, while a drop (a
//! rule's or the policy's) in any base chain is final. An accept in weft's own `ip flannel FWD` therefore cannot
//! get pod traffic past `inet filter forward { policy drop; }`: the accept has to sit in the chain that drops. So,
//! with the FORWARD accepts on and nftables as the applier, weft puts its accepts at the top of every forward base
//! chain of another table whose policy is drop, marked with its comment, and keeps them there (the same reconcile
//! pass that keeps its own tables): missing or moved ones are rewritten, and they are removed from a chain whose
//! policy is no longer drop, or when the accepts are no longer wanted.
//!
//! Left alone: the chains iptables-nft manages (`ip filter FORWARD`, `ip6 filter FORWARD`), where a rule written
//! by nft makes iptables unable to list or change the chain; with such a firewall, use the iptables applier
//! (`EnableNFTables: false`), which puts its jump there.

use std::fmt::Write as _;

use serde_json::Value;

use super::{nft, Hook, Policy, Rule, RuleOp, TableFamily, TableId};
use crate::Family;

/// A base chain of a table weft does not own, with the rules at its top as far as weft cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignChain {
    pub table: TableId,
    pub chain: String,
    pub hook: Hook,
    pub policy: Policy,
    /// Every rule of the chain in order, with its handle (what the model cannot express reads as
    /// [`Rule::Unknown`]).
    pub rules: Vec<(u64, Rule)>,
}

/// Rewrites the weft rules of one foreign chain: deletes those with the given handles and puts `insert` at the
/// top, in this order, in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignRewrite {
    pub table: TableId,
    pub chain: String,
    pub delete: Vec<u64>,
    pub insert: Vec<Rule>,
}

fn comment_of(rule: &Rule) -> Option<&str> {
    match rule {
        Rule::Rule { comment, .. } => comment.as_deref(),
        Rule::Unknown(_) => None,
    }
}

/// Whether every address match of `rule` is of a family that `table` carries.
fn fits(rule: &Rule, table: TableFamily) -> bool {
    match rule {
        Rule::Rule { matches, .. } => matches.iter().filter_map(|m| m.family()).all(|f: Family| table.carries(f)),
        Rule::Unknown(_) => false,
    }
}

/// The rewrites that put `wanted` (rules carrying the comment `marker`) at the top of every `hook` chain with
/// policy drop, and take weft's rules (found by `marker`) out of every other chain. A chain already in that state
/// needs nothing.
pub fn diff_foreign(wanted: &[Rule], hook: Hook, chains: &[ForeignChain], marker: &str) -> Vec<RuleOp> {
    let mut ops = Vec::new();
    for chain in chains {
        let here: Vec<Rule> = if chain.hook == hook && chain.policy == Policy::Drop {
            wanted.iter().filter(|r| fits(r, chain.table.family)).cloned().collect()
        } else {
            Vec::new()
        };
        let ours: Vec<u64> =
            chain.rules.iter().filter(|(_, r)| comment_of(r) == Some(marker)).map(|(handle, _)| *handle).collect();
        let top: Vec<&Rule> = chain.rules.iter().take(here.len()).map(|(_, r)| r).collect();
        let in_place = ours.len() == here.len() && top.iter().zip(&here).all(|(have, want)| *have == want);
        if !in_place {
            ops.push(RuleOp::RewriteForeign(ForeignRewrite {
                table: chain.table.clone(),
                chain: chain.chain.clone(),
                delete: ours,
                insert: here,
            }));
        }
    }
    ops
}

/// The `nft -f -` script of a rewrite: deletions by handle, then the inserts (each goes to the top, so they are
/// inserted last one first).
pub fn script(rewrite: &ForeignRewrite) -> String {
    let mut out = String::new();
    let at = format!("{} {}", rewrite.table, rewrite.chain);
    for handle in &rewrite.delete {
        let _ = writeln!(out, "delete rule {at} handle {handle}");
    }
    for rule in rewrite.insert.iter().rev() {
        let _ = writeln!(out, "insert rule {at} {}", nft::render_rule(rule));
    }
    out
}

/// Whether a name can be written into an nft script as it is.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The base chains at `hook` in the JSON of `nft -j list chains`, outside `owned`, without iptables-nft's own
/// chains; their rules are still to be read ([`parse_chain_rules`]).
pub fn parse_chains(json: &Value, hook: Hook, owned: &[TableId]) -> Result<Vec<ForeignChain>, String> {
    let mut out = Vec::new();
    for item in nft::items(json)? {
        let Some(chain) = item.get("chain") else { continue };
        let field = |key| chain.get(key).and_then(Value::as_str);
        if field("hook") != Some(hook.keyword()) {
            continue;
        }
        let (Some(family), Some(table), Some(name)) = (field("family"), field("table"), field("name")) else {
            return Err(format!("chain without family, table or name: {chain}"));
        };
        let Some(family) = TableFamily::parse(family) else { continue };
        let table = TableId::new(family, table);
        let iptables_nft = family != TableFamily::Inet && table.name == "filter" && name == "FORWARD";
        if owned.contains(&table) || iptables_nft || !is_plain_name(&table.name) || !is_plain_name(name) {
            continue;
        }
        let policy = if field("policy") == Some("drop") { Policy::Drop } else { Policy::Accept };
        out.push(ForeignChain { table, chain: name.to_string(), hook, policy, rules: Vec::new() });
    }
    Ok(out)
}

/// The rules, with their handles, in the JSON of `nft -j list chain <family> <table> <chain>`.
pub fn parse_chain_rules(json: &Value) -> Result<Vec<(u64, Rule)>, String> {
    let mut out = Vec::new();
    for item in nft::items(json)? {
        let Some(rule) = item.get("rule") else { continue };
        let handle =
            rule.get("handle").and_then(Value::as_u64).ok_or_else(|| format!("rule without handle: {rule}"))?;
        out.push((handle, nft::parse_rule(rule)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Match, Verdict};

    const MARK: &str = "flanneld forward";

    fn accept(net: &str) -> Rule {
        Rule::new(vec![Match::Source { net: net.parse().unwrap(), negated: false }], Verdict::Accept).with_comment(MARK)
    }

    fn chain(family: TableFamily, policy: Policy, rules: Vec<Rule>) -> ForeignChain {
        ForeignChain {
            table: TableId::new(family, "filter"),
            chain: "forward".into(),
            hook: Hook::Forward,
            policy,
            rules: rules.into_iter().enumerate().map(|(i, r)| (i as u64 + 10, r)).collect(),
        }
    }

    #[test]
    fn accepts_go_to_the_top_of_dropping_chains_only_and_leave_the_others() {
        let wanted = vec![accept("10.244.0.0/16"), accept("fd00:10:244::/56")];
        let theirs = Rule::new(vec![], Verdict::Drop);
        // An inet table takes both families, an ip6 table only the IPv6 accept.
        let ops =
            diff_foreign(&wanted, Hook::Forward, &[chain(TableFamily::Inet, Policy::Drop, vec![theirs.clone()])], MARK);
        let [RuleOp::RewriteForeign(rewrite)] = ops.as_slice() else { panic!("{ops:?}") };
        assert_eq!((rewrite.delete.clone(), rewrite.insert.clone()), (vec![], wanted.clone()));
        assert_eq!(
            script(rewrite),
            "insert rule inet filter forward ip6 saddr fd00:10:244::/56 accept comment \"flanneld forward\"\n\
             insert rule inet filter forward ip saddr 10.244.0.0/16 accept comment \"flanneld forward\"\n"
        );
        let ops = diff_foreign(&wanted, Hook::Forward, &[chain(TableFamily::Ip6, Policy::Drop, vec![])], MARK);
        let [RuleOp::RewriteForeign(rewrite)] = ops.as_slice() else { panic!("{ops:?}") };
        assert_eq!(rewrite.insert, vec![wanted[1].clone()]);

        // In place: nothing to do. Below someone else's rule, or a duplicate: rewritten.
        let done = chain(TableFamily::Inet, Policy::Drop, vec![wanted[0].clone(), wanted[1].clone(), theirs.clone()]);
        assert!(diff_foreign(&wanted, Hook::Forward, &[done], MARK).is_empty());
        let below = chain(TableFamily::Inet, Policy::Drop, vec![theirs.clone(), wanted[0].clone(), wanted[1].clone()]);
        let ops = diff_foreign(&wanted, Hook::Forward, &[below], MARK);
        assert!(matches!(&ops[..], [RuleOp::RewriteForeign(r)] if r.delete == vec![11, 12] && r.insert == wanted));

        // A chain that accepts by policy gets nothing, and loses ours; so does every chain once none is wanted.
        let accepting = chain(TableFamily::Inet, Policy::Accept, vec![wanted[0].clone(), theirs.clone()]);
        let ops = diff_foreign(&wanted, Hook::Forward, std::slice::from_ref(&accepting), MARK);
        assert!(matches!(&ops[..], [RuleOp::RewriteForeign(r)] if r.delete == vec![10] && r.insert.is_empty()));
        assert!(diff_foreign(&wanted, Hook::Forward, &[chain(TableFamily::Inet, Policy::Accept, vec![theirs])], MARK)
            .is_empty());
        let ops = diff_foreign(&[], Hook::Forward, &[accepting], MARK);
        assert!(matches!(&ops[..], [RuleOp::RewriteForeign(r)] if r.delete == vec![10]));
    }

    #[test]
    fn reads_foreign_forward_chains_but_not_ours_nor_iptables_nft_ones() {
        let json = serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 2, "type": "filter",
                       "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1, "type": "filter",
                       "hook": "input", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "ip", "table": "flannel", "name": "FWD", "handle": 3, "type": "filter",
                       "hook": "forward", "prio": 0, "policy": "accept"}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 4, "type": "filter",
                       "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "ip6", "table": "fw", "name": "fwd", "handle": 5, "type": "filter",
                       "hook": "forward", "prio": 0}},
        ]});
        let owned = [TableId::new(TableFamily::Ip, "flannel")];
        let chains = parse_chains(&json, Hook::Forward, &owned).unwrap();
        let found: Vec<(String, Policy)> =
            chains.iter().map(|c| (format!("{} {}", c.table, c.chain), c.policy)).collect();
        assert_eq!(found, vec![("inet filter forward".into(), Policy::Drop), ("ip6 fw fwd".into(), Policy::Accept)]);

        let rules = serde_json::json!({"nftables": [
            {"chain": {"family": "inet", "table": "filter", "name": "forward"}},
            {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 7, "comment": MARK,
                      "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                                          "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}},
                               {"accept": null}]}},
        ]});
        assert_eq!(parse_chain_rules(&rules).unwrap(), vec![(7, accept("10.244.0.0/16"))]);
    }
}
