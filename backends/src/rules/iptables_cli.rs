//! [`Rules`] for hosts whose firewall is iptables (flannel's default, `EnableNFTables: false`): runs
//! `iptables-restore`/`iptables-save` and their IPv6 twins, with the rendering of [`super::iptables`].
//!
//! A table becomes user chains `<TABLE>-<CHAIN>` in iptables' fixed tables, entered by one jump each from a
//! built-in chain, inserted at the top as flannel does so our verdicts come before the host's own rules. A
//! replacement is one `iptables-restore --noflush` per family (declaring a chain flushes it, so the chains are
//! refilled in one commit) followed by the missing jumps; chains of the table that are no longer wanted go.
//!
//! iptables cannot read its rules back into the model, so observation compares the chains' rules as
//! `iptables-save` prints them with the rendering of the table this applier last applied: equal (and every jump in
//! place) reads as that table, anything else (a flushed chain, a stranger's rule, chains of an earlier run) reads
//! as a table holding [`Rule::Unknown`], which the reconcile loop then replaces or deletes.

use std::collections::{BTreeMap, BTreeSet};

use super::iptables::{render, Restore};
use super::{Chain, Rule, RuleOp, RuleSet, Rules, RulesError, Table, TableFamily, TableId};
use crate::Family;

/// Which iptables: the host's default (the `iptables` alternative, which is what the host's other tools use,
/// and what flanneld runs), or one backend explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesVariant {
    Default,
    Legacy,
    Nft,
}

impl IptablesVariant {
    /// The program of this variant for `family`, e.g. `ip6tables-legacy-save` for (V6, "-save").
    pub fn program(self, family: Family, tool: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let variant = match self {
            IptablesVariant::Default => "",
            IptablesVariant::Legacy => "-legacy",
            IptablesVariant::Nft => "-nft",
        };
        format!("{base}{variant}{tool}")
    }
}

/// The iptables applier.
#[derive(Debug, Clone)]
pub struct IptablesRules {
    /// The arguments before the program (e.g. `ip netns exec NAME`); empty for weftd's own namespace.
    wrapper: Vec<String>,
    variant: IptablesVariant,
    /// What this applier last applied, by table: observation reads a table back as this when iptables holds
    /// exactly its rendering.
    applied: BTreeMap<TableId, Table>,
}

/// The chains of one table as `iptables-save` shows them: (iptables table, chain) -> rule lines, and the jump
/// lines in other chains that enter them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Saved {
    chains: BTreeMap<(String, String), Vec<String>>,
    jumps: BTreeSet<(String, String)>,
}

impl IptablesRules {
    pub fn system(variant: IptablesVariant) -> IptablesRules {
        IptablesRules { wrapper: Vec::new(), variant, applied: BTreeMap::new() }
    }

    /// Chooses the iptables backend the host's other tools use, as Kubernetes' iptables wrapper does: when only
    /// the legacy backend holds rules (or a DROP policy), legacy; otherwise the `iptables` alternative. Rules in
    /// the other backend would be traversed too, but an ACCEPT there cannot undo a DROP here, so the FORWARD
    /// accepts must sit next to the host's own rules.
    pub async fn detect_variant(&self) -> IptablesVariant {
        let legacy = self.clone().with_variant(IptablesVariant::Legacy);
        let nft = self.clone().with_variant(IptablesVariant::Nft);
        if legacy.holds_rules().await && !nft.holds_rules().await {
            IptablesVariant::Legacy
        } else {
            IptablesVariant::Default
        }
    }

    /// Whether this backend has any rule or a DROP policy, in either family (a missing program has none).
    async fn holds_rules(&self) -> bool {
        for family in [Family::V4, Family::V6] {
            let program = self.variant.program(family, "-save");
            if let Ok(text) = self.run("detect iptables", &program, &[], None).await {
                if text.lines().any(|l| l.starts_with("-A ") || (l.starts_with(':') && l.contains(" DROP "))) {
                    return true;
                }
            }
        }
        false
    }

    /// The same applier using `variant`.
    pub fn with_variant(self, variant: IptablesVariant) -> IptablesRules {
        IptablesRules { variant, ..self }
    }

    /// The same applier, taking `expected` as what it last applied: observing then reads a table as that table
    /// exactly when iptables holds its rendering. `weftctl doctor` compares what weftd wants with the host so.
    pub fn expecting(mut self, expected: &RuleSet) -> IptablesRules {
        self.applied = expected.tables.iter().map(|(id, t)| (id.clone(), t.clone())).collect();
        self
    }

    /// iptables inside the named network namespace, for tests and the lab.
    pub fn in_named_netns(name: &str, variant: IptablesVariant) -> IptablesRules {
        let wrapper = ["ip", "netns", "exec", name].map(String::from).to_vec();
        IptablesRules { wrapper, variant, applied: BTreeMap::new() }
    }

    async fn run(&self, what: &str, program: &str, args: &[&str], input: Option<&str>) -> Result<String, RulesError> {
        let full: Vec<&str> = self.wrapper.iter().map(String::as_str).chain([program]).collect();
        super::command::run(what, &full, args, input).await
    }

    async fn save(&self, what: &str, id: &TableId, family: Family) -> Result<Saved, RulesError> {
        let text = self.run(what, &self.variant.program(family, "-save"), &[], None).await?;
        Ok(parse_save(&text, &chain_prefix(id)))
    }

    /// Removes the jumps into, then the rules of, then the chains themselves.
    async fn remove_chains(
        &self,
        what: &str,
        family: Family,
        saved: &Saved,
        keep: &BTreeSet<String>,
    ) -> Result<(), RulesError> {
        let program = self.variant.program(family, "");
        for (table, line) in &saved.jumps {
            let Some(target) = jump_target(line) else { continue };
            if keep.contains(target) {
                continue;
            }
            let mut args = vec!["-w", "-t", table.as_str()];
            let words = split_words(line.strip_prefix("-A ").unwrap_or(line));
            args.push("-D");
            args.extend(words.iter().map(String::as_str));
            self.run(what, &program, &args, None).await?;
        }
        let gone: Vec<&(String, String)> = saved.chains.keys().filter(|(_, c)| !keep.contains(c)).collect();
        for (table, chain) in &gone {
            self.run(what, &program, &["-w", "-t", table, "-F", chain], None).await?;
        }
        for (table, chain) in &gone {
            self.run(what, &program, &["-w", "-t", table, "-X", chain], None).await?;
        }
        Ok(())
    }

    async fn replace(&mut self, what: &str, table: &Table) -> Result<(), RulesError> {
        for restore in render(table)? {
            let family = restore.family;
            let saved = self.save(what, &table.id, family).await?;
            let wanted = wanted_chains(&restore);
            // Chains of an earlier version of the table that this one no longer has.
            self.remove_chains(what, family, &saved, &wanted).await?;
            let program = self.variant.program(family, "-restore");
            self.run(what, &program, &["-w", "--noflush"], Some(&restore.text)).await?;
            let iptables = self.variant.program(family, "");
            for jump in &restore.jumps {
                let words: Vec<&str> = jump.split_whitespace().collect();
                let (table_args, rule) = words.split_at(2);
                let check: Vec<&str> = ["-w"].iter().chain(table_args).chain(&["-C"]).chain(rule).copied().collect();
                if self.run(what, &iptables, &check, None).await.is_err() {
                    let (chain, spec) = rule.split_at(1);
                    let insert: Vec<&str> =
                        ["-w"].iter().chain(table_args).chain(&["-I", chain[0], "1"]).chain(spec).copied().collect();
                    self.run(what, &iptables, &insert, None).await?;
                }
            }
        }
        self.applied.insert(table.id.clone(), table.clone());
        Ok(())
    }
}

fn families(id: &TableId) -> &'static [Family] {
    match id.family {
        TableFamily::Ip => &[Family::V4],
        TableFamily::Ip6 => &[Family::V6],
        TableFamily::Inet => &[Family::V4, Family::V6],
    }
}

/// User chains of a table start with this (see [`super::iptables`]).
fn chain_prefix(id: &TableId) -> String {
    format!("{}-", id.name.to_uppercase())
}

fn wanted_chains(restore: &Restore) -> BTreeSet<String> {
    restore
        .text
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// The chain a rule line jumps to.
fn jump_target(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        if word == "-j" {
            return words.next();
        }
    }
    None
}

/// Splits a rule line into arguments, keeping a double-quoted comment as one argument without its quotes.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            c => {
                current.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(current);
    }
    words
}

/// Our chains and the jumps into them in `iptables-save` output. Quotes are dropped from rule lines: iptables-save
/// quotes a comment only when it has spaces, and the rendering always does.
fn parse_save(text: &str, prefix: &str) -> Saved {
    let mut saved = Saved::default();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.trim().to_string();
        } else if let Some(decl) = line.strip_prefix(':') {
            let chain = decl.split_whitespace().next().unwrap_or_default();
            if chain.starts_with(prefix) {
                saved.chains.entry((table.clone(), chain.to_string())).or_default();
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or_default();
            let normal = line.replace('"', "");
            if chain.starts_with(prefix) {
                saved.chains.entry((table.clone(), chain.to_string())).or_default().push(normal);
            } else if jump_target(line).is_some_and(|t| t.starts_with(prefix)) {
                saved.jumps.insert((table.clone(), line.to_string()));
            }
        }
    }
    saved
}

/// What `iptables-save` shows for `restore` once applied: its chains with their rule lines, and its jumps.
fn expected_save(restore: &Restore, prefix: &str) -> Saved {
    let mut saved = parse_save(&restore.text, prefix);
    saved.jumps = restore
        .jumps
        .iter()
        .filter_map(|j| {
            let words: Vec<&str> = j.split_whitespace().collect();
            (words.len() > 2 && words[0] == "-t")
                .then(|| (words[1].to_string(), format!("-A {}", words[2..].join(" "))))
        })
        .collect();
    saved
}

impl Rules for IptablesRules {
    async fn observe(&mut self, tables: &[TableId]) -> Result<RuleSet, RulesError> {
        let mut set = RuleSet::default();
        for id in tables {
            let prefix = chain_prefix(id);
            let mut found = false;
            let mut matches_applied = self.applied.contains_key(id);
            let rendered = match self.applied.get(id) {
                Some(table) => render(table)?,
                None => Vec::new(),
            };
            let mut unknown = Vec::new();
            for &family in families(id) {
                let saved = self.save(&format!("list table {id}"), id, family).await?;
                found |= !saved.chains.is_empty() || !saved.jumps.is_empty();
                match rendered.iter().find(|r| r.family == family) {
                    Some(restore) => {
                        let expected = expected_save(restore, &prefix);
                        if expected.chains != saved.chains || !expected.jumps.is_subset(&saved.jumps) {
                            matches_applied = false;
                        }
                    }
                    None => matches_applied &= saved.chains.is_empty(),
                }
                unknown.extend(saved.chains.values().flatten().cloned());
            }
            if !found {
                continue;
            }
            match self.applied.get(id) {
                Some(table) if matches_applied => set.add(table.clone()),
                _ => {
                    let mut table = Table::new(id.clone());
                    let rules = unknown.into_iter().map(Rule::Unknown).collect();
                    table.chains.insert("iptables".into(), Chain { base: None, rules });
                    set.add(table);
                }
            }
        }
        Ok(set)
    }

    async fn apply(&mut self, op: &RuleOp) -> Result<(), RulesError> {
        let what = op.to_string();
        match op {
            RuleOp::ReplaceTable(table) => self.replace(&what, table).await,
            RuleOp::DeleteTable(id) => {
                for &family in families(id) {
                    let saved = self.save(&what, id, family).await?;
                    self.remove_chains(&what, family, &saved, &BTreeSet::new()).await?;
                }
                self.applied.remove(id);
                Ok(())
            }
            // observe_foreign reads no chain here, so no rewrite is ever asked of this applier.
            RuleOp::RewriteForeign(r) => Err(RulesError::Invalid {
                table: r.table.clone(),
                chain: r.chain.clone(),
                why: "the iptables applier writes only into its own chains".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = r#"# Generated by iptables-nft-save v1.8.9
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:FLANNEL-FWD - [0:0]
-A FORWARD -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
*nat
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
:DOCKER - [0:0]
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A POSTROUTING -j DOCKER
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
COMMIT
"#;

    #[test]
    fn save_output_yields_our_chains_and_the_jumps_into_them() {
        let saved = parse_save(SAVE, "FLANNEL-");
        let chains: Vec<&(String, String)> = saved.chains.keys().collect();
        assert_eq!(chains, vec![&("filter".into(), "FLANNEL-FWD".into()), &("nat".into(), "FLANNEL-POSTRTG".into())]);
        assert_eq!(
            saved.chains[&("filter".into(), "FLANNEL-FWD".into())],
            vec!["-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment flanneld forward -j ACCEPT"]
        );
        let jumps: Vec<&str> = saved.jumps.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            jumps,
            vec![
                "-A FORWARD -j FLANNEL-FWD",
                "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG"
            ]
        );
    }

    #[test]
    fn rule_lines_split_into_arguments_with_quoted_comments_whole() {
        assert_eq!(
            split_words("POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG"),
            vec!["POSTROUTING", "-m", "comment", "--comment", "flanneld masq", "-j", "FLANNEL-POSTRTG"]
        );
        assert_eq!(jump_target("-A FORWARD -s 10.0.0.0/8 -j FLANNEL-FWD"), Some("FLANNEL-FWD"));
    }

    #[test]
    fn programs_follow_the_variant_and_family() {
        assert_eq!(IptablesVariant::Default.program(Family::V4, "-save"), "iptables-save");
        assert_eq!(IptablesVariant::Legacy.program(Family::V6, "-restore"), "ip6tables-legacy-restore");
        assert_eq!(IptablesVariant::Nft.program(Family::V4, ""), "iptables-nft");
    }
}
