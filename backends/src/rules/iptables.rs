//! The iptables form of the rule model, for hosts whose firewall must stay on iptables (nft tables and legacy
//! iptables chains do not see each other's rules in a predictable order).
//!
//! iptables has fixed tables (filter, nat) and fixed hook chains, so an nft table maps onto them like this: every
//! chain becomes a user chain `<TABLE>-<CHAIN>` (upper case) in the iptables table of the base chains that reach
//! it, each base chain is entered by a jump from its hook's built-in chain, and a drop policy becomes a final
//! DROP rule. The text is input for `iptables-restore --noflush` (`ip6tables-restore` for IPv6): declaring a chain
//! flushes it, so the chains are refilled in one commit and nobody else's chains are touched. The jumps from the
//! built-in chains are listed separately because restore cannot add a rule only if it is missing; an applier
//! checks each (`iptables -C`) and inserts it when absent. Base-chain priorities have no iptables equivalent.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{ChainType, Hook, Match, Policy, Rule, RulesError, Table, Verdict};
use crate::Family;

/// What one address family of a table becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore {
    pub family: Family,
    /// Input for `iptables-restore --noflush` (or `ip6tables-restore`).
    pub text: String,
    /// Rules for the built-in chains, as `-t <table> <CHAIN> -j <target>`, that must exist once each.
    pub jumps: Vec<String>,
}

/// iptables limits chain names to 28 characters.
const MAX_CHAIN_NAME: usize = 28;

/// The iptables rendering of `table`, one [`Restore`] per family the table carries.
pub fn render(table: &Table) -> Result<Vec<Restore>, RulesError> {
    let families: &[Family] = match table.id.family {
        super::TableFamily::Ip => &[Family::V4],
        super::TableFamily::Ip6 => &[Family::V6],
        super::TableFamily::Inet => &[Family::V4, Family::V6],
    };
    families.iter().map(|family| render_family(table, *family)).collect()
}

fn render_family(table: &Table, family: Family) -> Result<Restore, RulesError> {
    let mut text = String::new();
    let mut jumps = Vec::new();
    for chain_type in [ChainType::Filter, ChainType::Nat] {
        let bases: Vec<&String> = table
            .chains
            .iter()
            .filter(|(_, c)| c.base.is_some_and(|b| b.chain_type == chain_type))
            .map(|(n, _)| n)
            .collect();
        if bases.is_empty() {
            continue;
        }
        let reached = reachable(table, &bases);
        let _ = writeln!(text, "*{}", chain_type.keyword());
        for name in &reached {
            let _ = writeln!(text, ":{} - [0:0]", chain_name(table, name)?);
        }
        for name in &reached {
            let chain = &table.chains[*name];
            let user_chain = chain_name(table, name)?;
            for rule in &chain.rules {
                if let Some(line) = render_rule(table, rule, family)? {
                    let _ = writeln!(text, "-A {user_chain} {line}");
                }
            }
            if let Some(base) = chain.base {
                if base.policy == Policy::Drop {
                    let _ = writeln!(text, "-A {user_chain} -j DROP");
                }
                jumps.push(format!("-t {} {} -j {user_chain}", chain_type.keyword(), builtin(base.hook)));
            }
        }
        text.push_str("COMMIT\n");
    }
    Ok(Restore { family, text, jumps })
}

/// The chains reached from `bases` by jumps, the bases first, in name order within each.
fn reachable<'a>(table: &'a Table, bases: &[&'a String]) -> Vec<&'a String> {
    let mut seen: BTreeSet<&String> = bases.iter().copied().collect();
    let mut queue: Vec<&String> = bases.to_vec();
    let mut regular = BTreeSet::new();
    while let Some(name) = queue.pop() {
        for rule in table.chains.get(name).map(|c| c.rules.as_slice()).unwrap_or_default() {
            if let Rule::Rule { verdict: Verdict::Jump(target), .. } = rule {
                if let Some((key, _)) = table.chains.get_key_value(target) {
                    if seen.insert(key) {
                        regular.insert(key);
                        queue.push(key);
                    }
                }
            }
        }
    }
    bases.iter().copied().chain(regular).collect()
}

fn chain_name(table: &Table, chain: &str) -> Result<String, RulesError> {
    let name = format!("{}-{chain}", table.id.name).to_uppercase();
    if name.len() > MAX_CHAIN_NAME {
        return Err(RulesError::Invalid {
            table: table.id.clone(),
            chain: chain.to_string(),
            why: format!("iptables chain name {name} is longer than {MAX_CHAIN_NAME} characters"),
        });
    }
    Ok(name)
}

fn builtin(hook: Hook) -> &'static str {
    match hook {
        Hook::Prerouting => "PREROUTING",
        Hook::Input => "INPUT",
        Hook::Forward => "FORWARD",
        Hook::Output => "OUTPUT",
        Hook::Postrouting => "POSTROUTING",
    }
}

/// The rule's arguments after `-A <chain>`, or None when it matches only the other family.
fn render_rule(table: &Table, rule: &Rule, family: Family) -> Result<Option<String>, RulesError> {
    let Rule::Rule { matches, verdict, comment } = rule else {
        return Err(RulesError::Invalid {
            table: table.id.clone(),
            chain: String::new(),
            why: "an observed rule cannot be rendered".into(),
        });
    };
    if matches.iter().any(|m| m.family().is_some_and(|f| f != family)) {
        return Ok(None);
    }
    let mut words = Vec::new();
    for m in matches {
        let (flag, value, negated) = match m {
            Match::Source { net, negated } => ("-s", net.to_string(), *negated),
            Match::Destination { net, negated } => ("-d", net.to_string(), *negated),
            Match::InInterface { name, negated } => ("-i", name.clone(), *negated),
            Match::OutInterface { name, negated } => ("-o", name.clone(), *negated),
            Match::Mark { value, mask, negated } => {
                words.push(format!("-m mark {}--mark {value:#x}/{mask:#x}", if *negated { "! " } else { "" }));
                continue;
            }
        };
        words.push(format!("{}{flag} {value}", if negated { "! " } else { "" }));
    }
    if let Some(text) = comment {
        words.push(format!("-m comment --comment \"{text}\""));
    }
    words.push(match verdict {
        Verdict::Accept => "-j ACCEPT".into(),
        Verdict::Drop => "-j DROP".into(),
        Verdict::Return => "-j RETURN".into(),
        Verdict::Jump(target) => format!("-j {}", chain_name(table, target)?),
        Verdict::Masquerade { fully_random: false } => "-j MASQUERADE".into(),
        Verdict::Masquerade { fully_random: true } => "-j MASQUERADE --random-fully".into(),
    });
    Ok(Some(words.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::tests::masquerade_table;
    use crate::rules::{BaseChain, TableFamily, TableId};

    #[test]
    fn renders_the_masquerade_table_for_iptables_restore() {
        let restores = render(&masquerade_table()).unwrap();
        assert_eq!(restores.len(), 1);
        let expected = "\
*filter
:WEFT-FORWARD - [0:0]
:WEFT-PODS - [0:0]
-A WEFT-FORWARD -s 10.244.0.0/16 -j WEFT-PODS
-A WEFT-PODS -o eth0 -j ACCEPT
-A WEFT-PODS -j DROP
COMMIT
*nat
:WEFT-POSTROUTING - [0:0]
-A WEFT-POSTROUTING -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"pod to pod\" -j RETURN
-A WEFT-POSTROUTING -s 10.244.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully
-A WEFT-POSTROUTING ! -s 10.244.0.0/16 -d 10.244.1.0/24 -j RETURN
-A WEFT-POSTROUTING ! -s 10.244.0.0/16 -d 10.244.0.0/16 -j MASQUERADE --random-fully
COMMIT
";
        assert_eq!(restores[0].text, expected);
        assert_eq!(restores[0].family, Family::V4);
        assert_eq!(
            restores[0].jumps,
            vec!["-t filter FORWARD -j WEFT-FORWARD", "-t nat POSTROUTING -j WEFT-POSTROUTING"]
        );
    }

    #[test]
    fn an_inet_table_splits_by_family_and_a_drop_policy_becomes_a_rule() {
        let table = Table::new(TableId::new(TableFamily::Inet, "weft")).base_chain(
            "fwd",
            BaseChain { chain_type: ChainType::Filter, hook: Hook::Forward, priority: 0, policy: Policy::Drop },
            vec![
                Rule::new(
                    vec![Match::Source { net: "10.244.0.0/16".parse().unwrap(), negated: false }],
                    Verdict::Accept,
                ),
                Rule::new(
                    vec![Match::Source { net: "fd00:10:244::/56".parse().unwrap(), negated: false }],
                    Verdict::Accept,
                ),
                Rule::new(vec![Match::InInterface { name: "weft0".into(), negated: false }], Verdict::Accept),
            ],
        );
        let restores = render(&table).unwrap();
        let texts: Vec<(Family, &str)> = restores.iter().map(|r| (r.family, r.text.as_str())).collect();
        assert_eq!(
            texts,
            vec![
                (Family::V4, "*filter\n:WEFT-FWD - [0:0]\n-A WEFT-FWD -s 10.244.0.0/16 -j ACCEPT\n-A WEFT-FWD -i weft0 -j ACCEPT\n-A WEFT-FWD -j DROP\nCOMMIT\n"),
                (Family::V6, "*filter\n:WEFT-FWD - [0:0]\n-A WEFT-FWD -s fd00:10:244::/56 -j ACCEPT\n-A WEFT-FWD -i weft0 -j ACCEPT\n-A WEFT-FWD -j DROP\nCOMMIT\n"),
            ]
        );
    }

    #[test]
    fn chain_names_iptables_cannot_hold_are_refused() {
        let table = Table::new(TableId::new(TableFamily::Ip, "weft")).base_chain(
            "a-very-long-chain-name-indeed",
            BaseChain { chain_type: ChainType::Filter, hook: Hook::Input, priority: 0, policy: Policy::Accept },
            vec![],
        );
        assert!(render(&table).unwrap_err().to_string().contains("longer than 28"));
    }
}
