//! The CNI plugin's own `ipMasq` (used when the daemon does not masquerade, FLANNEL_IPMASQ=false) as a rule set of
//! the same model as weftd's tables, so it renders for nftables and for iptables alike.
//!
//! One table per CNI network and family, `ip weft-cni-<hash>` / `ip6 weft-cni-<hash>` (the hash is FNV-1a of the
//! network name, so any network name gives a valid nft name and an iptables chain within 28 characters), with one
//! nat chain at postrouting, `MASQ` (iptables: `WEFT-CNI-<HASH>-MASQ`, entered from POSTROUTING). For each subnet
//! of the network on this host, first match wins, as the bridge plugin's rules do:
//! 1. from the subnet to the cluster network: keep the pod's address;
//! 2. from the subnet to anything but multicast: masquerade.
//!
//! Every rule carries the comment `weft-cni <network name>`, which names the network in any listing.
//!
//! The plugin is no daemon, so it leaves a [`Record`] of each network's tables in [`RECORD_DIR`]; weftd reads the
//! records on every resync and keeps those tables in place. A record holds the inputs of [`table`], never rules:
//! whatever a record says, weftd can only build the masquerade tables this module builds.

use ipnetwork::IpNetwork;

use super::{BaseChain, ChainType, Hook, Match, Policy, Rule, Table, TableFamily, TableId, Verdict};
use crate::Family;

/// The nat chain of each table (iptables: `WEFT-CNI-<HASH>-MASQ`).
pub const CHAIN: &str = "MASQ";

/// One subnet of the network on this host, and the cluster network it belongs to (None: masquerade everything
/// but multicast, as the bridge plugin does without a cluster network).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasqueradedSubnet {
    pub subnet: IpNetwork,
    pub cluster: Option<IpNetwork>,
}

/// The table of `network`'s rules for `family`. Its name depends only on the network's name and the family.
pub fn table_id(network: &str, family: Family) -> TableId {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in network.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let table_family = match family {
        Family::V4 => TableFamily::Ip,
        Family::V6 => TableFamily::Ip6,
    };
    TableId::new(table_family, format!("weft-cni-{hash:08x}"))
}

fn multicast(family: Family) -> IpNetwork {
    match family {
        Family::V4 => "224.0.0.0/4".parse().expect("a valid network"),
        Family::V6 => "ff00::/8".parse().expect("a valid network"),
    }
}

/// The table for `network`'s subnets of `family`; None when it has none of that family (no table is wanted).
/// Host bits of a subnet (the bridge's address, as FLANNEL_SUBNET holds it) are dropped.
pub fn table(network: &str, family: Family, subnets: &[MasqueradedSubnet]) -> Option<Table> {
    let of_family = |net: &IpNetwork| Family::of(net.ip()) == family;
    let network_of = |net: IpNetwork| IpNetwork::new(net.network(), net.prefix()).expect("the same prefix is valid");
    let comment = format!("weft-cni {network}");
    let mut rules = Vec::new();
    for s in subnets.iter().filter(|s| of_family(&s.subnet)) {
        let from = Match::Source { net: network_of(s.subnet), negated: false };
        if let Some(cluster) = s.cluster.filter(of_family) {
            let to = Match::Destination { net: network_of(cluster), negated: false };
            rules.push(Rule::new(vec![from.clone(), to], Verdict::Return).with_comment(comment.clone()));
        }
        let not_multicast = Match::Destination { net: multicast(family), negated: true };
        let masquerade = Verdict::Masquerade { fully_random: false };
        rules.push(Rule::new(vec![from, not_multicast], masquerade).with_comment(comment.clone()));
    }
    if rules.is_empty() {
        return None;
    }
    let base = BaseChain { chain_type: ChainType::Nat, hook: Hook::Postrouting, priority: 100, policy: Policy::Accept };
    Some(Table::new(table_id(network, family)).base_chain(CHAIN, base, rules))
}

/// Where the plugin leaves its records (tmpfs: a reboot removes them together with the rules). Only root writes
/// it; weftd still treats every file in it as untrusted input.
pub const RECORD_DIR: &str = "/run/weft-cni/masq-records";

/// The lock file in [`RECORD_DIR`]: the plugin holds it while it changes a network's tables and record, weftd
/// while it reads the records and applies them, so a record removed with its tables is never applied after.
pub const RECORD_LOCK: &str = "lock";

/// A record larger than this is not read: one network's record is a few hundred bytes.
pub const RECORD_MAX_BYTES: u64 = 4096;

/// How the plugin reached the firewall for a network, and so how weftd restores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firewall {
    /// iptables chains through the `iptables` program (ip6tables for IPv6).
    Iptables,
    /// nftables tables through `nft`.
    Nft,
}

/// What the plugin wants for one network in one host netns: enough to rebuild its tables with [`table`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub network: String,
    pub firewall: Firewall,
    pub subnets: Vec<RecordedSubnet>,
}

/// A [`MasqueradedSubnet`] as the record holds it, in CIDR notation (parsed by [`Record::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedSubnet {
    pub subnet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// Why a record was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record {file}: larger than {RECORD_MAX_BYTES} bytes")]
    TooLarge { file: String },
    #[error("record {file}: {source}")]
    Json {
        file: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("record {file}: {why}")]
    Invalid { file: String, why: String },
}

/// Whether `name` is a CNI network name (`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`, at most 255 bytes, as the plugin
/// requires).
fn is_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 255
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl Record {
    pub fn new(network: &str, firewall: Firewall, subnets: &[MasqueradedSubnet]) -> Record {
        let subnets = subnets
            .iter()
            .map(|s| RecordedSubnet { subnet: s.subnet.to_string(), cluster: s.cluster.map(|c| c.to_string()) })
            .collect();
        Record { network: network.to_string(), firewall, subnets }
    }

    /// The file of `network`'s record in the host netns `netns_id` (the netns cookie): the netns is part of the
    /// name, so a weftd in another netns of this host leaves it alone.
    pub fn file_name(netns_id: &str, network: &str) -> String {
        format!("{netns_id}-{}.json", table_id(network, Family::V4).name)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record serializes")
    }

    /// Parses the record read from `file` and checks it: a valid network name, that `file` is this network's
    /// record name in netns `netns_id`, networks in CIDR notation, at most one subnet per family, each cluster
    /// network of its subnet's family, and tables that pass [`Table::check`]. Returns the network's name and the
    /// tables to keep.
    pub fn parse(file: &str, netns_id: &str, text: &[u8]) -> Result<(Record, Vec<Table>), RecordError> {
        let invalid = |why: String| RecordError::Invalid { file: file.to_string(), why };
        if text.len() as u64 > RECORD_MAX_BYTES {
            return Err(RecordError::TooLarge { file: file.to_string() });
        }
        let record: Record =
            serde_json::from_slice(text).map_err(|source| RecordError::Json { file: file.to_string(), source })?;
        if !is_network_name(&record.network) {
            return Err(invalid(format!("{:?} is not a CNI network name", record.network)));
        }
        if file != Record::file_name(netns_id, &record.network) {
            return Err(invalid(format!("it names network {} of another file", record.network)));
        }
        if record.subnets.is_empty() {
            return Err(invalid("no subnet".into()));
        }
        let net = |text: &str| text.parse::<IpNetwork>().map_err(|e| invalid(format!("network {text:?}: {e}")));
        let mut subnets = Vec::new();
        for s in &record.subnets {
            let subnet = net(&s.subnet)?;
            let cluster = s.cluster.as_deref().map(net).transpose()?;
            if cluster.is_some_and(|c| c.is_ipv4() != subnet.is_ipv4()) {
                return Err(invalid(format!("subnet {subnet} with a cluster network of the other family")));
            }
            subnets.push(MasqueradedSubnet { subnet, cluster });
        }
        for family in Family::ALL {
            if subnets.iter().filter(|s| Family::of(s.subnet.ip()) == family).count() > 1 {
                return Err(invalid(format!("more than one {family} subnet")));
            }
        }
        let tables: Vec<Table> =
            Family::ALL.into_iter().filter_map(|family| table(&record.network, family, &subnets)).collect();
        for t in &tables {
            t.check().map_err(|e| invalid(e.to_string()))?;
        }
        Ok((record, tables))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{iptables, nft};

    #[test]
    fn a_record_round_trips_and_rebuilds_the_same_tables() {
        let record = Record::new("cbr0", Firewall::Nft, &subnets());
        let file = Record::file_name("4097", "cbr0");
        assert_eq!(file, "4097-weft-cni-98620342.json");
        let (parsed, tables) = Record::parse(&file, "4097", record.to_json().as_bytes()).unwrap();
        assert_eq!(parsed, record);
        let wanted: Vec<Table> = Family::ALL.into_iter().filter_map(|f| table("cbr0", f, &subnets())).collect();
        assert_eq!(tables, wanted);
    }

    #[test]
    fn bad_records_are_refused_with_the_file_named() {
        let file = Record::file_name("4097", "cbr0");
        let refused = |text: &str| Record::parse(&file, "4097", text.as_bytes()).unwrap_err().to_string();
        let v4 = r#"{"subnet":"10.244.3.0/24","cluster":"10.244.0.0/16"}"#;
        assert!(refused("not json").starts_with(&format!("record {file}: ")));
        assert!(refused(&" ".repeat(5000)).contains("larger than 4096"));
        let with = |network: &str, firewall: &str, subnets: &str| {
            refused(&format!(r#"{{"network":"{network}","firewall":"{firewall}","subnets":[{subnets}]}}"#))
        };
        assert!(with("cbr0", "pf", v4).contains("unknown variant"));
        assert!(with("cbr1", "nft", v4).contains("another file"), "a record under another network's name");
        assert!(with("-x;flush ruleset", "nft", v4).contains("not a CNI network name"));
        assert!(with("cbr0", "nft", "").contains("no subnet"));
        assert!(with("cbr0", "nft", &format!("{v4},{v4}")).contains("more than one IPv4 subnet"));
        let crossed = r#"{"subnet":"10.244.3.0/24","cluster":"fd00::/56"}"#;
        assert!(with("cbr0", "nft", crossed).contains("other family"));
        assert!(with("cbr0", "nft", r#"{"subnet":"10.244.3.0/33"}"#).contains("network \"10.244.3.0/33\""));
        let extra = r#"{"subnet":"10.244.3.0/24","verdict":"accept"}"#;
        assert!(with("cbr0", "nft", extra).contains("unknown field"));
        let other_netns =
            Record::parse(&file, "4098", Record::new("cbr0", Firewall::Nft, &subnets()).to_json().as_bytes());
        assert!(other_netns.is_err(), "another netns's record is not ours to apply");
    }

    fn subnets() -> Vec<MasqueradedSubnet> {
        vec![
            MasqueradedSubnet {
                subnet: "10.244.3.1/24".parse().unwrap(),
                cluster: Some("10.244.0.0/16".parse().unwrap()),
            },
            MasqueradedSubnet {
                subnet: "fd00:10:244:3::1/64".parse().unwrap(),
                cluster: Some("fd00:10:244::/56".parse().unwrap()),
            },
        ]
    }

    #[test]
    fn nft_text_per_family() {
        let v4 = table("cbr0", Family::V4, &subnets()).unwrap();
        v4.check().unwrap();
        assert_eq!(
            nft::render_table(&v4),
            r#"table ip weft-cni-98620342 {
	chain MASQ {
		type nat hook postrouting priority 100; policy accept;
		ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return comment "weft-cni cbr0"
		ip saddr 10.244.3.0/24 ip daddr != 224.0.0.0/4 masquerade comment "weft-cni cbr0"
	}
}
"#
        );
        let v6 = table("cbr0", Family::V6, &subnets()).unwrap();
        v6.check().unwrap();
        assert!(nft::render_table(&v6).contains("ip6 saddr fd00:10:244:3::/64 ip6 daddr != ff00::/8 masquerade"));
        assert_eq!(v6.id.family, TableFamily::Ip6);
    }

    #[test]
    fn iptables_text_keeps_the_chain_within_iptables_limits() {
        let restores =
            iptables::render(&table("a-rather-long-network-name.example", Family::V4, &subnets()).unwrap()).unwrap();
        let text = &restores[0].text;
        assert!(text.contains("-A WEFT-CNI-"), "{text}");
        let chain = restores[0].jumps[0].split_whitespace().last().unwrap();
        assert!(chain.len() <= 28 && chain.ends_with("-MASQ"), "{chain}");
        assert!(
            text.contains(&format!(
                "-A {chain} -s 10.244.3.0/24 ! -d 224.0.0.0/4 -m comment --comment \"weft-cni a-rather-long-network-name.example\" -j MASQUERADE"
            )),
            "{text}"
        );
    }

    #[test]
    fn no_subnet_of_the_family_no_table_and_no_cluster_no_return() {
        let v4_only = [MasqueradedSubnet { subnet: "10.244.3.1/24".parse().unwrap(), cluster: None }];
        assert!(table("cbr0", Family::V6, &v4_only).is_none());
        let t = table("cbr0", Family::V4, &v4_only).unwrap();
        assert_eq!(t.chains[CHAIN].rules.len(), 1, "masquerade everything but multicast");
        assert_ne!(table_id("cbr0", Family::V4), table_id("cbr1", Family::V4));
        assert_eq!(table_id("cbr0", Family::V4).name, table_id("cbr0", Family::V6).name);
    }
}
