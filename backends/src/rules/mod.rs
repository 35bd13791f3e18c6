//! Firewall rules as plain values, shaped like nftables tables.
//!
//! A backend's desired [`RuleSet`] holds whole tables. A table is the unit of ownership and of change: the applier
//! (re)creates a table in one transaction when it differs from what the host has, and deletes a table weft owns
//! but no longer wants ([`diff_rules`]). Rules are a small structured vocabulary rather than nft text, so the same
//! model renders as nft ([`nft::render_table`]) and as iptables-restore input ([`iptables::render`]) for hosts
//! that need iptables, and so observed tables parse back into values that compare exactly.

pub mod cni_masq;
#[cfg(feature = "runtime")]
mod command;
pub mod foreign;
pub mod iptables;
#[cfg(feature = "runtime")]
mod iptables_cli;
pub mod nft;
#[cfg(feature = "runtime")]
mod nft_cli;
pub mod traffic;

#[cfg(feature = "runtime")]
pub use iptables_cli::{IptablesRules, IptablesVariant};
#[cfg(feature = "runtime")]
pub use nft_cli::NftRules;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use ipnetwork::IpNetwork;

use crate::Family;

/// The nftables address family of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableFamily {
    Ip,
    Ip6,
    /// Both: one table whose rules may match IPv4 or IPv6.
    Inet,
}

impl TableFamily {
    pub fn keyword(self) -> &'static str {
        match self {
            TableFamily::Ip => "ip",
            TableFamily::Ip6 => "ip6",
            TableFamily::Inet => "inet",
        }
    }

    pub fn parse(keyword: &str) -> Option<TableFamily> {
        match keyword {
            "ip" => Some(TableFamily::Ip),
            "ip6" => Some(TableFamily::Ip6),
            "inet" => Some(TableFamily::Inet),
            _ => None,
        }
    }

    /// Whether packets of `family` pass through tables of this family.
    pub fn carries(self, family: Family) -> bool {
        matches!(
            (self, family),
            (TableFamily::Inet, _) | (TableFamily::Ip, Family::V4) | (TableFamily::Ip6, Family::V6)
        )
    }
}

/// A table's identity: nftables keeps one table per family and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId {
    pub family: TableFamily,
    pub name: String,
}

impl TableId {
    pub fn new(family: TableFamily, name: impl Into<String>) -> TableId {
        TableId { family, name: name.into() }
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.family.keyword(), self.name)
    }
}

/// The kind of a base chain, which decides what its rules may do (nat chains may masquerade).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainType {
    Filter,
    Nat,
}

impl ChainType {
    pub fn keyword(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }
}

/// Where in the packet path a base chain is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub fn keyword(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }

    pub const ALL: [Hook; 5] = [Hook::Prerouting, Hook::Input, Hook::Forward, Hook::Output, Hook::Postrouting];
}

/// What happens to a packet that reaches the end of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    Accept,
    Drop,
}

impl Policy {
    pub fn keyword(self) -> &'static str {
        match self {
            Policy::Accept => "accept",
            Policy::Drop => "drop",
        }
    }
}

/// The attachment of a base chain. A chain without one is only reached by a jump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BaseChain {
    pub chain_type: ChainType,
    pub hook: Hook,
    /// Lower runs first; srcnat is 100, filter 0.
    pub priority: i32,
    pub policy: Policy,
}

/// One condition of a rule. Every condition of a rule must hold for its verdict to apply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Match {
    /// The source address is (or, negated, is not) inside `net`.
    Source {
        net: IpNetwork,
        negated: bool,
    },
    Destination {
        net: IpNetwork,
        negated: bool,
    },
    InInterface {
        name: String,
        negated: bool,
    },
    OutInterface {
        name: String,
        negated: bool,
    },
    /// The packet mark, masked, equals (or, negated, differs from) `value`: kube-proxy marks what it wants
    /// masqueraded itself with 0x4000/0x4000.
    Mark {
        value: u32,
        mask: u32,
        negated: bool,
    },
}

impl Match {
    /// The address family the condition restricts a rule to, if any.
    pub fn family(&self) -> Option<Family> {
        match self {
            Match::Source { net, .. } | Match::Destination { net, .. } => Some(Family::of(net.ip())),
            Match::InInterface { .. } | Match::OutInterface { .. } | Match::Mark { .. } => None,
        }
    }
}

impl Match {
    /// Why nft would not hold this match as written: an address with host bits set comes back from nft as its
    /// network, so it would never compare equal; a name with quotes or control characters cannot be quoted.
    fn problem(&self) -> Option<String> {
        match self {
            Match::Source { net, .. } | Match::Destination { net, .. } if net.ip() != net.network() => {
                Some(format!("{net} has host bits set; write {}/{}", net.network(), net.prefix()))
            }
            Match::InInterface { name, .. } | Match::OutInterface { name, .. } if !is_plain_text(name) => {
                Some(format!("interface name {name:?} has quotes or control characters"))
            }
            Match::Mark { value, mask, .. } if value & !mask != 0 => {
                Some(format!("mark {value:#x} has bits outside its mask {mask:#x}"))
            }
            _ => None,
        }
    }
}

fn is_plain_text(text: &str) -> bool {
    !text.chars().any(|c| c == '"' || c == '\\' || c.is_control())
}

fn rule_comment(rule: &Rule) -> Option<&str> {
    match rule {
        Rule::Rule { comment, .. } => comment.as_deref(),
        Rule::Unknown(_) => None,
    }
}

/// What a rule does with a packet that meets all its conditions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    /// Leave this chain (back to the one that jumped here, or the base chain's policy).
    Return,
    /// Continue in another chain of the same table.
    Jump(String),
    /// Source NAT to the outgoing interface's address; `fully_random` picks source ports at random (flannel's
    /// `--random-fully`).
    Masquerade {
        fully_random: bool,
    },
}

/// One rule: conditions, a verdict, and an optional comment kept with the rule in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    Rule {
        matches: Vec<Match>,
        verdict: Verdict,
        comment: Option<String>,
    },
    /// An observed rule this model cannot express (someone else's expression in our table). It is never desired,
    /// so its table is replaced. Holds the rule as the applier reported it, for logs.
    Unknown(String),
}

impl Rule {
    pub fn new(matches: Vec<Match>, verdict: Verdict) -> Rule {
        Rule::Rule { matches, verdict, comment: None }
    }

    pub fn with_comment(self, text: impl Into<String>) -> Rule {
        match self {
            Rule::Rule { matches, verdict, .. } => Rule::Rule { matches, verdict, comment: Some(text.into()) },
            unknown => unknown,
        }
    }
}

/// A chain with its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

/// A table, the unit the applier replaces in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub id: TableId,
    /// By name; rendered in name order, which is also how an observation is ordered.
    pub chains: BTreeMap<String, Chain>,
}

impl Table {
    pub fn new(id: TableId) -> Table {
        Table { id, chains: BTreeMap::new() }
    }

    /// Adds a base chain attached to `base.hook`.
    pub fn base_chain(mut self, name: &str, base: BaseChain, rules: Vec<Rule>) -> Table {
        self.chains.insert(name.to_string(), Chain { base: Some(base), rules });
        self
    }

    /// Adds a chain that is only reached by a jump.
    pub fn regular_chain(mut self, name: &str, rules: Vec<Rule>) -> Table {
        self.chains.insert(name.to_string(), Chain { base: None, rules });
        self
    }

    /// Problems the kernel would refuse the table for, found before anything is sent: a jump to a chain the table
    /// does not have, a rule matching another family than the table carries, masquerade outside a nat chain.
    pub fn check(&self) -> Result<(), RulesError> {
        let invalid =
            |chain: &str, why: String| RulesError::Invalid { table: self.id.clone(), chain: chain.into(), why };
        for (name, chain) in &self.chains {
            for rule in &chain.rules {
                let Rule::Rule { matches, verdict, .. } = rule else {
                    return Err(invalid(name, "an observed rule cannot be applied".into()));
                };
                if let Some(family) = matches.iter().find_map(|m| m.family().filter(|f| !self.id.family.carries(*f))) {
                    return Err(invalid(name, format!("an {family} match in a {} table", self.id.family.keyword())));
                }
                for m in matches {
                    if let Some(why) = m.problem() {
                        return Err(invalid(name, why));
                    }
                }
                if let Some(text) = rule_comment(rule).filter(|t| !is_plain_text(t)) {
                    return Err(invalid(name, format!("comment {text:?} has quotes or control characters")));
                }
                let families: Vec<Family> = matches.iter().filter_map(Match::family).collect();
                if families.windows(2).any(|w| w[0] != w[1]) {
                    return Err(invalid(name, "IPv4 and IPv6 matches in one rule".into()));
                }
                match verdict {
                    Verdict::Jump(target) if !self.chains.contains_key(target) => {
                        return Err(invalid(name, format!("jump to missing chain {target}")))
                    }
                    Verdict::Masquerade { .. } if chain.base.is_some_and(|b| b.chain_type != ChainType::Nat) => {
                        return Err(invalid(name, "masquerade outside a nat chain".into()))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Every table weft wants (or has), by identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    pub tables: BTreeMap<TableId, Table>,
    /// Accepts weft puts at the top of every forward base chain with policy drop in a table it does not own
    /// (nftables only: see [`foreign`]). Each carries [`traffic::FORWARD_COMMENT`], which is how they are found.
    pub foreign_forward: Vec<Rule>,
}

impl RuleSet {
    pub fn add(&mut self, table: Table) {
        self.tables.insert(table.id.clone(), table);
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.foreign_forward.is_empty()
    }

    /// The nft text of every table, in identity order. Golden tests compare this.
    pub fn render(&self) -> String {
        self.tables.values().map(nft::render_table).collect()
    }
}

/// One change to the host's firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleOp {
    /// Create the table, or replace it whole, in one transaction.
    ReplaceTable(Table),
    /// Delete a table weft owns and no longer wants (deleting a missing one succeeds).
    DeleteTable(TableId),
    /// Rewrite weft's rules in a base chain of a table weft does not own, in one transaction.
    RewriteForeign(foreign::ForeignRewrite),
}

impl RuleOp {
    pub fn kind(&self) -> &'static str {
        match self {
            RuleOp::ReplaceTable(_) => "replace_table",
            RuleOp::DeleteTable(_) => "delete_table",
            RuleOp::RewriteForeign(_) => "rewrite_foreign_chain",
        }
    }
}

impl fmt::Display for RuleOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleOp::ReplaceTable(t) => write!(f, "replace table {}", t.id),
            RuleOp::DeleteTable(id) => write!(f, "delete table {id}"),
            RuleOp::RewriteForeign(r) => write!(
                f,
                "rewrite weft's rules in chain {} {}: delete {}, insert {} at the top",
                r.table,
                r.chain,
                r.delete.len(),
                r.insert.len()
            ),
        }
    }
}

/// The operations that make `observed` (tables inside the scope) equal to `desired`: a table that differs in
/// any chain or rule is replaced whole, a table that is not wanted is deleted. Replacements come first, so
/// traffic is never left without the rules it needs while a stale table goes.
pub fn diff_rules(desired: &RuleSet, observed: &RuleSet) -> Vec<RuleOp> {
    let mut ops: Vec<RuleOp> = desired
        .tables
        .iter()
        .filter(|(id, table)| observed.tables.get(*id) != Some(*table))
        .map(|(_, table)| RuleOp::ReplaceTable(table.clone()))
        .collect();
    ops.extend(observed.tables.keys().filter(|id| !desired.tables.contains_key(*id)).cloned().map(RuleOp::DeleteTable));
    ops
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("table {table}, chain {chain}: {why}")]
    Invalid { table: TableId, chain: String, why: String },
    #[error("{op}: running {program}: {source}")]
    Spawn {
        op: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: {program} failed ({status}): {stderr}")]
    Failed { op: String, program: String, status: std::process::ExitStatus, stderr: String },
    #[error("listing table {table}: unexpected JSON from nft: {why}")]
    Parse { table: TableId, why: String },
}

impl RulesError {
    /// What went wrong, without the operation (see [`crate::kernel::KernelError::cause`]).
    pub fn cause(&self) -> String {
        match self {
            RulesError::Spawn { program, source, .. } => format!("running {program}: {source}"),
            RulesError::Failed { program, status, stderr, .. } => format!("{program} failed ({status}): {stderr}"),
            RulesError::Invalid { .. } | RulesError::Parse { .. } => self.to_string(),
        }
    }
}

/// The host's firewall, as far as weft is concerned: the seam between the reconcile loop and nft (or a fake).
pub trait Rules: Send {
    /// The tables among `tables` that exist now, with their chains and rules. Tables not in the list are never
    /// read.
    fn observe(&mut self, tables: &[TableId]) -> impl Future<Output = Result<RuleSet, RulesError>> + Send;

    /// Applies one operation atomically: after a failure the table is as it was before.
    fn apply(&mut self, op: &RuleOp) -> impl Future<Output = Result<(), RulesError>> + Send;

    /// The base chains at `hook` of tables outside `owned`, with their rules, where this applier puts accepts
    /// ([`foreign`]). None by default: only nftables needs them (an iptables jump sits in the built-in chain
    /// itself).
    fn observe_foreign(
        &mut self,
        _hook: Hook,
        _owned: &[TableId],
    ) -> impl Future<Output = Result<Vec<foreign::ForeignChain>, RulesError>> + Send {
        async { Ok(Vec::new()) }
    }
}

/// The applier the daemon runs, chosen by the network config's `EnableNFTables`.
#[cfg(feature = "runtime")]
#[derive(Debug, Clone)]
pub enum AnyRules {
    Nft(NftRules),
    Iptables(IptablesRules),
}

#[cfg(feature = "runtime")]
impl Rules for AnyRules {
    async fn observe(&mut self, tables: &[TableId]) -> Result<RuleSet, RulesError> {
        match self {
            AnyRules::Nft(r) => r.observe(tables).await,
            AnyRules::Iptables(r) => r.observe(tables).await,
        }
    }

    async fn apply(&mut self, op: &RuleOp) -> Result<(), RulesError> {
        match self {
            AnyRules::Nft(r) => r.apply(op).await,
            AnyRules::Iptables(r) => r.apply(op).await,
        }
    }

    async fn observe_foreign(
        &mut self,
        hook: Hook,
        owned: &[TableId],
    ) -> Result<Vec<foreign::ForeignChain>, RulesError> {
        match self {
            AnyRules::Nft(r) => r.observe_foreign(hook, owned).await,
            AnyRules::Iptables(r) => r.observe_foreign(hook, owned).await,
        }
    }
}

/// The outcome of reconciling the rules.
#[derive(Debug, Default)]
pub struct RulesReport {
    pub applied: Vec<RuleOp>,
    pub failed: Vec<(RuleOp, RulesError)>,
}

/// Observes the owned tables, diffs against `desired` and applies every operation, carrying on past failures.
/// With no owned tables (a backend that wants no rules) it does nothing at all, so a host without nft is fine.
pub async fn reconcile_rules<R: Rules>(
    rules: &mut R,
    owned: &[TableId],
    desired: &RuleSet,
) -> Result<RulesReport, RulesError> {
    let mut report = RulesReport::default();
    if owned.is_empty() && desired.is_empty() {
        return Ok(report);
    }
    let observed = rules.observe(owned).await?;
    for op in diff_rules(desired, &observed) {
        if let RuleOp::ReplaceTable(table) = &op {
            if let Err(e) = table.check() {
                report.failed.push((op, e));
                continue;
            }
        }
        match rules.apply(&op).await {
            Ok(()) => report.applied.push(op),
            Err(e) => report.failed.push((op, e)),
        }
    }
    // Then the accepts in other tables' forward chains, once our own tables are in place.
    let chains = rules.observe_foreign(Hook::Forward, owned).await?;
    let marker = traffic::FORWARD_COMMENT;
    for op in foreign::diff_foreign(&desired.foreign_forward, Hook::Forward, &chains, marker) {
        match rules.apply(&op).await {
            Ok(()) => report.applied.push(op),
            Err(e) => report.failed.push((op, e)),
        }
    }
    Ok(report)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// flannel's masquerade rules for 10.244.0.0/16 with our subnet 10.244.1.0/24, and its FORWARD accepts.
    pub fn masquerade_table() -> Table {
        let pods: IpNetwork = "10.244.0.0/16".parse().unwrap();
        let own: IpNetwork = "10.244.1.0/24".parse().unwrap();
        let multicast: IpNetwork = "224.0.0.0/4".parse().unwrap();
        let src = |negated| Match::Source { net: pods, negated };
        let dst = |net, negated| Match::Destination { net, negated };
        Table::new(TableId::new(TableFamily::Ip, "weft"))
            .base_chain(
                "postrouting",
                BaseChain {
                    chain_type: ChainType::Nat,
                    hook: Hook::Postrouting,
                    priority: 100,
                    policy: Policy::Accept,
                },
                vec![
                    Rule::new(vec![src(false), dst(pods, false)], Verdict::Return).with_comment("pod to pod"),
                    Rule::new(vec![src(false), dst(multicast, true)], Verdict::Masquerade { fully_random: true }),
                    Rule::new(vec![src(true), dst(own, false)], Verdict::Return),
                    Rule::new(vec![src(true), dst(pods, false)], Verdict::Masquerade { fully_random: true }),
                ],
            )
            .base_chain(
                "forward",
                BaseChain { chain_type: ChainType::Filter, hook: Hook::Forward, priority: 0, policy: Policy::Accept },
                vec![Rule::new(vec![src(false)], Verdict::Jump("pods".into()))],
            )
            .regular_chain(
                "pods",
                vec![
                    Rule::new(vec![Match::OutInterface { name: "eth0".into(), negated: false }], Verdict::Accept),
                    Rule::new(vec![], Verdict::Drop),
                ],
            )
    }

    #[test]
    fn a_differing_table_is_replaced_whole_and_a_stale_one_deleted() {
        let mut desired = RuleSet::default();
        desired.add(masquerade_table());
        assert_eq!(diff_rules(&desired, &desired), vec![]);
        assert_eq!(diff_rules(&desired, &RuleSet::default()), vec![RuleOp::ReplaceTable(masquerade_table())]);

        // One rule gone (someone flushed a chain): the whole table is replaced, not the rule patched.
        let mut drifted = desired.clone();
        let id = TableId::new(TableFamily::Ip, "weft");
        drifted.tables.get_mut(&id).unwrap().chains.get_mut("pods").unwrap().rules.pop();
        assert_eq!(diff_rules(&desired, &drifted), vec![RuleOp::ReplaceTable(masquerade_table())]);

        // A rule we cannot express in our table forces a replacement too.
        let mut foreign = desired.clone();
        foreign.tables.get_mut(&id).unwrap().chains.get_mut("pods").unwrap().rules.push(Rule::Unknown("x".into()));
        assert_eq!(diff_rules(&desired, &foreign).len(), 1);

        // A table of ours that is no longer wanted is deleted, after the replacements.
        let stale = Table::new(TableId::new(TableFamily::Ip6, "weft"));
        let mut observed = drifted.clone();
        observed.add(stale.clone());
        let ops: Vec<String> = diff_rules(&desired, &observed).iter().map(ToString::to_string).collect();
        assert_eq!(ops, vec!["replace table ip weft", "delete table ip6 weft"]);
    }

    #[test]
    fn tables_the_kernel_would_refuse_are_caught_before_applying() {
        assert!(masquerade_table().check().is_ok());
        let v6: IpNetwork = "fd00::/64".parse().unwrap();
        let wrong_family = Table::new(TableId::new(TableFamily::Ip, "t"))
            .regular_chain("c", vec![Rule::new(vec![Match::Source { net: v6, negated: false }], Verdict::Accept)]);
        assert!(wrong_family.check().unwrap_err().to_string().contains("IPv6 match in a ip table"));
        let missing = Table::new(TableId::new(TableFamily::Inet, "t"))
            .regular_chain("c", vec![Rule::new(vec![], Verdict::Jump("nowhere".into()))]);
        assert!(missing.check().unwrap_err().to_string().contains("jump to missing chain nowhere"));
        let filter_masq = Table::new(TableId::new(TableFamily::Inet, "t")).base_chain(
            "c",
            BaseChain { chain_type: ChainType::Filter, hook: Hook::Forward, priority: 0, policy: Policy::Drop },
            vec![Rule::new(vec![], Verdict::Masquerade { fully_random: false })],
        );
        assert!(filter_masq.check().is_err());
        let host_bits = Table::new(TableId::new(TableFamily::Ip, "t")).regular_chain(
            "c",
            vec![Rule::new(
                vec![Match::Destination { net: "10.244.1.7/24".parse().unwrap(), negated: false }],
                Verdict::Accept,
            )],
        );
        assert!(host_bits.check().unwrap_err().to_string().contains("write 10.244.1.0/24"));
        let quoted = Table::new(TableId::new(TableFamily::Ip, "t"))
            .regular_chain("c", vec![Rule::new(vec![], Verdict::Accept).with_comment("say \"hi\"")]);
        assert!(quoted.check().is_err());
    }
}
