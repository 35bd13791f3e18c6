//! The nftables form of the rule model: text for `nft -f` (also the golden text), and the JSON of
//! `nft -j list table` read back into the model.

use std::fmt::Write as _;

use ipnetwork::IpNetwork;
use serde_json::Value;

use super::{
    BaseChain, Chain, ChainType, Hook, Match, Policy, Rule, RuleOp, RuleSet, Table, TableFamily, TableId, Verdict,
};
use crate::Family;

/// The table as nft text, one statement per line, chains in name order.
pub fn render_table(table: &Table) -> String {
    let mut out = format!("table {} {{\n", table.id);
    for (name, chain) in &table.chains {
        let _ = writeln!(out, "\tchain {name} {{");
        if let Some(base) = &chain.base {
            let _ = writeln!(
                out,
                "\t\ttype {} hook {} priority {}; policy {};",
                base.chain_type.keyword(),
                base.hook.keyword(),
                base.priority,
                base.policy.keyword()
            );
        }
        for rule in &chain.rules {
            let _ = writeln!(out, "\t\t{}", render_rule(rule));
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    out
}

/// One rule as nft text (without the chain around it).
pub fn render_rule(rule: &Rule) -> String {
    let (matches, verdict, comment) = match rule {
        Rule::Rule { matches, verdict, comment } => (matches, verdict, comment),
        // Only an observed table holds these; check() refuses to apply one, so this text is only ever logged.
        Rule::Unknown(text) => return format!("# not expressible: {text}"),
    };
    let mut words: Vec<String> = matches.iter().map(render_match).collect();
    words.push(match verdict {
        Verdict::Accept => "accept".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Return => "return".into(),
        Verdict::Jump(chain) => format!("jump {chain}"),
        Verdict::Masquerade { fully_random: false } => "masquerade".into(),
        Verdict::Masquerade { fully_random: true } => "masquerade fully-random".into(),
    });
    if let Some(text) = comment {
        words.push(format!("comment \"{text}\""));
    }
    words.join(" ")
}

fn render_match(m: &Match) -> String {
    let op = |negated: bool| if negated { "!= " } else { "" };
    let proto = |net: &IpNetwork| match Family::of(net.ip()) {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    match m {
        Match::Source { net, negated } => format!("{} saddr {}{net}", proto(net), op(*negated)),
        Match::Destination { net, negated } => format!("{} daddr {}{net}", proto(net), op(*negated)),
        Match::InInterface { name, negated } => format!("iifname {}\"{name}\"", op(*negated)),
        Match::OutInterface { name, negated } => format!("oifname {}\"{name}\"", op(*negated)),
        Match::Mark { value, mask, negated } => {
            format!("meta mark & {mask:#010x} {} {value:#010x}", if *negated { "!=" } else { "==" })
        }
    }
}

/// The `nft -f -` script for one operation. Everything in one script is one transaction: the table is deleted
/// and re-created with its new content atomically, so packets never see a half-built table. `add table` first
/// makes the delete succeed when the table does not exist yet.
pub fn script(op: &RuleOp) -> String {
    match op {
        RuleOp::ReplaceTable(table) => {
            format!("add table {id}\ndelete table {id}\n{}", render_table(table), id = table.id)
        }
        RuleOp::DeleteTable(id) => format!("add table {id}\ndelete table {id}\n"),
        RuleOp::RewriteForeign(rewrite) => super::foreign::script(rewrite),
    }
}

/// The tables named in the JSON of `nft -j list tables`.
pub fn parse_table_list(json: &Value) -> Result<Vec<TableId>, String> {
    let mut out = Vec::new();
    for item in items(json)? {
        if let Some(table) = item.get("table") {
            let (Some(family), Some(name)) = (table.get("family").and_then(Value::as_str), str_field(table, "name"))
            else {
                return Err(format!("table without family or name: {table}"));
            };
            // Tables of other families (arp, bridge, netdev) can never be ours.
            if let Some(family) = TableFamily::parse(family) {
                out.push(TableId::new(family, name));
            }
        }
    }
    Ok(out)
}

/// Reads the JSON of `nft -j list table <id>` into `set`. Whatever the model cannot express reads as
/// [`Rule::Unknown`], so it never equals a desired table and the table gets replaced.
pub fn parse_table(id: &TableId, json: &Value, set: &mut RuleSet) -> Result<(), String> {
    let mut table = Table::new(id.clone());
    for item in items(json)? {
        if let Some(chain) = item.get("chain") {
            let name = str_field(chain, "name").ok_or_else(|| format!("chain without a name: {chain}"))?;
            let mut parsed = Chain { base: None, rules: Vec::new() };
            if chain.get("hook").is_some() {
                match parse_base(chain) {
                    Some(base) => parsed.base = Some(base),
                    None => parsed.rules.push(Rule::Unknown(format!("base chain {chain}"))),
                }
            }
            table.chains.insert(name.to_string(), parsed);
        } else if let Some(rule) = item.get("rule") {
            let chain = str_field(rule, "chain").ok_or_else(|| format!("rule without a chain: {rule}"))?;
            let parsed = parse_rule(rule);
            table
                .chains
                .get_mut(chain)
                .ok_or_else(|| format!("rule in chain {chain}, which was not listed before it"))?
                .rules
                .push(parsed);
        }
    }
    set.add(table);
    Ok(())
}

pub(crate) fn items(json: &Value) -> Result<&Vec<Value>, String> {
    json.get("nftables").and_then(Value::as_array).ok_or_else(|| "no \"nftables\" array".to_string())
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn parse_base(chain: &Value) -> Option<BaseChain> {
    let chain_type = match str_field(chain, "type")? {
        "filter" => ChainType::Filter,
        "nat" => ChainType::Nat,
        _ => return None,
    };
    let hook = *Hook::ALL.iter().find(|h| Some(h.keyword()) == str_field(chain, "hook"))?;
    let priority = i32::try_from(chain.get("prio")?.as_i64()?).ok()?;
    let policy = match str_field(chain, "policy").unwrap_or("accept") {
        "accept" => Policy::Accept,
        "drop" => Policy::Drop,
        _ => return None,
    };
    Some(BaseChain { chain_type, hook, priority, policy })
}

pub(crate) fn parse_rule(rule: &Value) -> Rule {
    let unknown = || Rule::Unknown(rule.get("expr").map_or_else(|| rule.to_string(), Value::to_string));
    let Some(exprs) = rule.get("expr").and_then(Value::as_array) else { return unknown() };
    let Some((last, conditions)) = exprs.split_last() else { return unknown() };
    let matches: Option<Vec<Match>> = conditions.iter().map(parse_match).collect();
    let (Some(matches), Some(verdict)) = (matches, parse_verdict(last)) else { return unknown() };
    let comment = str_field(rule, "comment").map(String::from);
    Rule::Rule { matches, verdict, comment }
}

fn parse_match(expr: &Value) -> Option<Match> {
    let m = expr.get("match")?;
    let negated = match str_field(m, "op")? {
        "==" => false,
        "!=" => true,
        _ => return None,
    };
    let left = m.get("left")?;
    let right = m.get("right")?;
    if let Some(payload) = left.get("payload") {
        let family = match str_field(payload, "protocol")? {
            "ip" => Family::V4,
            "ip6" => Family::V6,
            _ => return None,
        };
        let net = parse_network(right)?;
        if Family::of(net.ip()) != family {
            return None;
        }
        return match str_field(payload, "field")? {
            "saddr" => Some(Match::Source { net, negated }),
            "daddr" => Some(Match::Destination { net, negated }),
            _ => None,
        };
    }
    // `meta mark & MASK`: nft lists the masked mark as a binary operation.
    if let Some([meta, mask]) = left.get("&").and_then(Value::as_array).map(Vec::as_slice) {
        if str_field(meta.get("meta")?, "key")? != "mark" {
            return None;
        }
        let mask = u32::try_from(mask.as_u64()?).ok()?;
        let value = u32::try_from(right.as_u64()?).ok()?;
        return Some(Match::Mark { value, mask, negated });
    }
    let key = str_field(left.get("meta")?, "key")?;
    let name = right.as_str()?.to_string();
    match key {
        "iifname" => Some(Match::InInterface { name, negated }),
        "oifname" => Some(Match::OutInterface { name, negated }),
        _ => None,
    }
}

/// `{"prefix": {"addr": .., "len": ..}}`, or a bare address for a host prefix (nft prints /32 and /128 so).
fn parse_network(v: &Value) -> Option<IpNetwork> {
    if let Some(text) = v.as_str() {
        let ip: std::net::IpAddr = text.parse().ok()?;
        return IpNetwork::new(ip, Family::of(ip).host_prefix()).ok();
    }
    let prefix = v.get("prefix")?;
    let ip: std::net::IpAddr = str_field(prefix, "addr")?.parse().ok()?;
    IpNetwork::new(ip, u8::try_from(prefix.get("len")?.as_u64()?).ok()?).ok()
}

fn parse_verdict(expr: &Value) -> Option<Verdict> {
    let object = expr.as_object()?;
    let (key, value) = object.iter().next().filter(|_| object.len() == 1)?;
    match key.as_str() {
        "accept" => Some(Verdict::Accept),
        "drop" => Some(Verdict::Drop),
        "return" => Some(Verdict::Return),
        "jump" => Some(Verdict::Jump(str_field(value, "target")?.to_string())),
        "masquerade" => {
            let flags: Vec<&str> = match value.get("flags") {
                None => Vec::new(),
                Some(Value::String(one)) => vec![one.as_str()],
                Some(Value::Array(many)) => many.iter().map(Value::as_str).collect::<Option<_>>()?,
                Some(_) => return None,
            };
            match flags.as_slice() {
                [] => Some(Verdict::Masquerade { fully_random: false }),
                ["fully-random"] => Some(Verdict::Masquerade { fully_random: true }),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::tests::masquerade_table;

    #[test]
    fn renders_a_table_as_nft_text() {
        let expected = "\
table ip weft {
\tchain forward {
\t\ttype filter hook forward priority 0; policy accept;
\t\tip saddr 10.244.0.0/16 jump pods
\t}
\tchain pods {
\t\toifname \"eth0\" accept
\t\tdrop
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority 100; policy accept;
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return comment \"pod to pod\"
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
\t}
}
";
        assert_eq!(render_table(&masquerade_table()), expected);
        let replace = script(&RuleOp::ReplaceTable(masquerade_table()));
        assert!(replace.starts_with("add table ip weft\ndelete table ip weft\ntable ip weft {\n"), "{replace}");
        assert_eq!(
            script(&RuleOp::DeleteTable(TableId::new(TableFamily::Inet, "weft"))),
            "add table inet weft\ndelete table inet weft\n"
        );
    }

    #[test]
    fn an_inet_table_picks_the_protocol_per_address() {
        let table = Table::new(TableId::new(TableFamily::Inet, "weft")).regular_chain(
            "c",
            vec![
                Rule::new(
                    vec![Match::Source { net: "fd00:10:244::/56".parse().unwrap(), negated: true }],
                    Verdict::Return,
                ),
                Rule::new(vec![Match::InInterface { name: "weft0".into(), negated: true }], Verdict::Accept),
            ],
        );
        assert_eq!(
            render_table(&table),
            "table inet weft {\n\tchain c {\n\t\tip6 saddr != fd00:10:244::/56 return\n\t\tiifname != \"weft0\" accept\n\t}\n}\n"
        );
    }

    /// What nft 1.0.6 printed for the masquerade table (shortened to one chain of each kind, plus a counter rule
    /// the model cannot express and a host address nft prints without its /32).
    const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
      {"table": {"family": "ip", "name": "weft", "handle": 2}},
      {"chain": {"family": "ip", "table": "weft", "name": "postrouting", "handle": 1, "type": "nat",
                 "hook": "postrouting", "prio": 100, "policy": "accept"}},
      {"chain": {"family": "ip", "table": "weft", "name": "pods", "handle": 2}},
      {"rule": {"family": "ip", "table": "weft", "chain": "postrouting", "handle": 4, "comment": "pod to pod",
        "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                            "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}},
                 {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                            "right": "10.244.1.1"}},
                 {"masquerade": {"flags": "fully-random"}}]}},
      {"rule": {"family": "ip", "table": "weft", "chain": "pods", "handle": 5,
        "expr": [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}},
                 {"jump": {"target": "postrouting"}}]}},
      {"rule": {"family": "ip", "table": "weft", "chain": "pods", "handle": 6,
        "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}]}"#;

    #[test]
    fn reads_a_listing_back_into_the_model() {
        let json: Value = serde_json::from_str(LISTING).unwrap();
        let id = TableId::new(TableFamily::Ip, "weft");
        assert_eq!(parse_table_list(&json).unwrap(), vec![id.clone()]);
        let mut set = RuleSet::default();
        parse_table(&id, &json, &mut set).unwrap();
        let table = &set.tables[&id];
        let nat =
            BaseChain { chain_type: ChainType::Nat, hook: Hook::Postrouting, priority: 100, policy: Policy::Accept };
        assert_eq!(table.chains["postrouting"].base, Some(nat));
        assert_eq!(
            table.chains["postrouting"].rules,
            vec![Rule::new(
                vec![
                    Match::Source { net: "10.244.0.0/16".parse().unwrap(), negated: false },
                    Match::Destination { net: "10.244.1.1/32".parse().unwrap(), negated: true },
                ],
                Verdict::Masquerade { fully_random: true }
            )
            .with_comment("pod to pod")]
        );
        let pods = &table.chains["pods"].rules;
        assert_eq!(
            pods[0],
            Rule::new(
                vec![Match::OutInterface { name: "eth0".into(), negated: false }],
                Verdict::Jump("postrouting".into())
            )
        );
        assert!(matches!(&pods[1], Rule::Unknown(text) if text.contains("counter")), "{:?}", pods[1]);
    }

    #[test]
    fn rejects_listings_that_are_not_nft_json() {
        let mut set = RuleSet::default();
        let id = TableId::new(TableFamily::Ip, "weft");
        assert!(parse_table(&id, &serde_json::json!({"tables": []}), &mut set).is_err());
        let orphan = serde_json::json!({"nftables": [{"rule": {"chain": "c", "expr": []}}]});
        assert!(parse_table(&id, &orphan, &mut set).unwrap_err().contains("not listed before it"));
    }
}
