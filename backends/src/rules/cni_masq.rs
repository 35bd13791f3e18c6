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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{iptables, nft};

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
