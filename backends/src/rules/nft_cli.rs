//! [`Rules`] for a real host: runs the `nft` program. Each operation is one `nft -f -` script, which nft applies
//! as one transaction; observation reads `nft -j list` output back into the model.

use serde_json::Value;

use super::foreign::{self, ForeignChain};
use super::{nft, Hook, RuleOp, RuleSet, Rules, RulesError, TableId};

/// Runs nft, optionally through a wrapper that places it in another network namespace.
#[derive(Debug, Clone)]
pub struct NftRules {
    /// The program and the arguments before nft's own (e.g. `ip netns exec NAME nft`).
    command: Vec<String>,
}

impl NftRules {
    /// nft in weftd's own network namespace.
    pub fn system() -> NftRules {
        NftRules { command: vec!["nft".into()] }
    }

    /// nft inside the named network namespace (/run/netns/NAME), through `ip netns exec`: used by tests and the
    /// lab, which must never touch the host's firewall.
    pub fn in_named_netns(name: &str) -> NftRules {
        NftRules { command: ["ip", "netns", "exec", name, "nft"].map(String::from).to_vec() }
    }

    /// Runs nft with `args`, feeding `input` on stdin; returns stdout. `what` names the request in errors.
    async fn run(&self, what: &str, args: &[&str], input: Option<&str>) -> Result<String, RulesError> {
        let command: Vec<&str> = self.command.iter().map(String::as_str).collect();
        super::command::run(what, &command, args, input).await
    }
}

fn parse_json(table: &TableId, text: &str) -> Result<Value, RulesError> {
    serde_json::from_str(text).map_err(|e| RulesError::Parse { table: table.clone(), why: e.to_string() })
}

impl Rules for NftRules {
    async fn observe(&mut self, tables: &[TableId]) -> Result<RuleSet, RulesError> {
        let mut set = RuleSet::default();
        if tables.is_empty() {
            return Ok(set);
        }
        // Listing the tables first tells "absent" apart from a failure without reading nft's error text.
        let listing = self.run("list tables", &["-j", "list", "tables"], None).await?;
        let parse_error = |why| RulesError::Parse { table: tables[0].clone(), why };
        let existing = nft::parse_table_list(&parse_json(&tables[0], &listing)?).map_err(parse_error)?;
        for id in tables.iter().filter(|id| existing.contains(id)) {
            let what = format!("list table {id}");
            let text = self.run(&what, &["-j", "list", "table", id.family.keyword(), &id.name], None).await?;
            nft::parse_table(id, &parse_json(id, &text)?, &mut set)
                .map_err(|why| RulesError::Parse { table: id.clone(), why })?;
        }
        Ok(set)
    }

    async fn apply(&mut self, op: &RuleOp) -> Result<(), RulesError> {
        self.run(&op.to_string(), &["-f", "-"], Some(&nft::script(op))).await.map(|_| ())
    }

    async fn observe_foreign(&mut self, hook: Hook, owned: &[TableId]) -> Result<Vec<ForeignChain>, RulesError> {
        let listing = self.run("list chains", &["-j", "list", "chains"], None).await?;
        let any = TableId::new(super::TableFamily::Inet, "*");
        let parse_error = |table: &TableId, why| RulesError::Parse { table: table.clone(), why };
        let mut chains =
            foreign::parse_chains(&parse_json(&any, &listing)?, hook, owned).map_err(|why| parse_error(&any, why))?;
        for chain in &mut chains {
            let id = &chain.table;
            let what = format!("list chain {id} {}", chain.chain);
            let args = ["-j", "list", "chain", id.family.keyword(), &id.name, &chain.chain];
            let text = self.run(&what, &args, None).await?;
            chain.rules = foreign::parse_chain_rules(&parse_json(id, &text)?).map_err(|why| parse_error(id, why))?;
        }
        Ok(chains)
    }
}
