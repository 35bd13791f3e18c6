//! flannel's host traffic rules as rule sets: masquerade of pod traffic leaving the cluster network (`--ip-masq`)
//! and the FORWARD accepts for the cluster network (`--iptables-forward-rules`).
//!
//! One table per address family, `ip flannel` and `ip6 flannel`, with the chains `POSTRTG` (nat, postrouting) and
//! `FWD` (filter, forward). Upper case because `fwd` is an nft keyword, which nft refuses as a chain name (and
//! cannot quote). The iptables rendering turns them into flannel's own chains `FLANNEL-POSTRTG` and
//! `FLANNEL-FWD`, entered from POSTROUTING and FORWARD, so a host switched from flanneld keeps the same chains.
//!
//! The masquerade rules follow flannel's order, first match wins:
//! 1. packets kube-proxy marked (0x4000/0x4000) are left alone: kube-proxy masquerades them itself;
//! 2. our pods to the cluster network, and the cluster network to our pods, keep their addresses;
//! 3. traffic from outside the cluster network into our pods keeps its source (a NodePort client stays visible);
//! 4. pod traffic leaving the cluster network is masqueraded, multicast excepted;
//! 5. the host's own traffic into the cluster network is masqueraded, so replies come back through the overlay.

use ipnetwork::IpNetwork;

use serde_json::Value;

use super::{BaseChain, ChainType, Hook, Match, Policy, Rule, RuleSet, Table, TableFamily, TableId, Verdict};
use crate::backend::{Backend, Desired};
use crate::model::Scope;
use crate::{Family, Peer};

/// The table name; the iptables rendering derives flannel's chain names (FLANNEL-POSTRTG, FLANNEL-FWD) from it.
pub const TABLE_NAME: &str = "flannel";
/// kube-proxy's masquerade mark and mask.
pub const KUBE_PROXY_MARK: u32 = 0x4000;
/// The nat chain at postrouting (iptables: FLANNEL-POSTRTG).
pub const POSTROUTING_CHAIN: &str = "POSTRTG";
/// The filter chain at forward (iptables: FLANNEL-FWD).
pub const FORWARD_CHAIN: &str = "FWD";
const MASQ_COMMENT: &str = "flanneld masq";
/// The comment of the FORWARD accepts, in our table and in other tables' forward chains ([`super::foreign`]).
pub const FORWARD_COMMENT: &str = "flanneld forward";

/// Which of flannel's rules a host wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficRules {
    /// `--ip-masq`.
    pub masquerade: bool,
    /// `--iptables-forward-rules` (on by default, as in flannel).
    pub forward: bool,
    /// Masquerade with fully random source ports (off with `--ip-masq-fully-random-disable`).
    pub fully_random: bool,
}

/// The cluster network of one family and our subnet in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyNetworks {
    pub network: IpNetwork,
    pub subnet: IpNetwork,
}

/// The table of `family`.
pub fn table_id(family: Family) -> TableId {
    let table_family = match family {
        Family::V4 => TableFamily::Ip,
        Family::V6 => TableFamily::Ip6,
    };
    TableId::new(table_family, TABLE_NAME)
}

fn multicast(family: Family) -> IpNetwork {
    match family {
        Family::V4 => "224.0.0.0/4".parse().expect("a valid network"),
        Family::V6 => "ff00::/8".parse().expect("a valid network"),
    }
}

impl TrafficRules {
    /// Whether any table is wanted at all. When not, weft owns no table and never runs a firewall program.
    pub fn any(&self) -> bool {
        self.masquerade || self.forward
    }

    /// The tables weft owns for `families`: found and replaced or deleted whatever they hold, so rules for an old
    /// network or subnet are removed at start-up.
    pub fn owned(&self, families: &[Family]) -> Vec<TableId> {
        if self.any() {
            families.iter().map(|f| table_id(*f)).collect()
        } else {
            Vec::new()
        }
    }

    /// The rule set for the networks of each enabled family.
    pub fn rule_set(&self, networks: &[(Family, FamilyNetworks)]) -> RuleSet {
        let mut set = RuleSet::default();
        for (family, nets) in networks {
            let mut table = Table::new(table_id(*family));
            if self.masquerade {
                let base = BaseChain {
                    chain_type: ChainType::Nat,
                    hook: Hook::Postrouting,
                    priority: 100,
                    policy: Policy::Accept,
                };
                table = table.base_chain(POSTROUTING_CHAIN, base, self.masquerade_rules(*family, nets));
            }
            if self.forward {
                set.foreign_forward.extend(forward_rules(nets.network));
                let base = BaseChain {
                    chain_type: ChainType::Filter,
                    hook: Hook::Forward,
                    priority: 0,
                    policy: Policy::Accept,
                };
                table = table.base_chain(FORWARD_CHAIN, base, forward_rules(nets.network));
            }
            if !table.chains.is_empty() {
                set.add(table);
            }
        }
        set
    }

    fn masquerade_rules(&self, family: Family, nets: &FamilyNetworks) -> Vec<Rule> {
        let (cluster, pods) = (nets.network, nets.subnet);
        let src = |net, negated| Match::Source { net, negated };
        let dst = |net, negated| Match::Destination { net, negated };
        let masquerade = Verdict::Masquerade { fully_random: self.fully_random };
        let mark = Match::Mark { value: KUBE_PROXY_MARK, mask: KUBE_PROXY_MARK, negated: false };
        [
            (vec![mark], Verdict::Return),
            (vec![src(pods, false), dst(cluster, false)], Verdict::Return),
            (vec![src(cluster, false), dst(pods, false)], Verdict::Return),
            (vec![src(cluster, true), dst(pods, false)], Verdict::Return),
            (vec![src(cluster, false), dst(multicast(family), true)], masquerade.clone()),
            (vec![src(cluster, true), dst(cluster, false)], masquerade),
        ]
        .into_iter()
        .map(|(matches, verdict)| Rule::new(matches, verdict).with_comment(MASQ_COMMENT))
        .collect()
    }
}

fn forward_rules(cluster: IpNetwork) -> Vec<Rule> {
    [Match::Source { net: cluster, negated: false }, Match::Destination { net: cluster, negated: false }]
        .into_iter()
        .map(|m| Rule::new(vec![m], Verdict::Accept).with_comment(FORWARD_COMMENT))
        .collect()
}

/// A backend with the host's traffic rules added: what the daemon runs. The rules depend on our lease (our
/// subnet), so they are part of the same desired state and kept in place by the same reconcile loop, whatever
/// the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithTrafficRules<B> {
    pub backend: B,
    pub rules: TrafficRules,
    /// The cluster network of each enabled family.
    pub networks: Vec<(Family, IpNetwork)>,
}

impl<B: Backend> Backend for WithTrafficRules<B> {
    fn backend_type(&self) -> &'static str {
        self.backend.backend_type()
    }

    fn scope(&self) -> Scope {
        let mut scope = self.backend.scope();
        let families: Vec<Family> = self.networks.iter().map(|(f, _)| *f).collect();
        scope.tables.extend(self.rules.owned(&families));
        scope
    }

    /// The rules depend on our lease alone (our subnet), so they are part of the base.
    fn base(&self, own: &Peer) -> Desired {
        let mut desired = self.backend.base(own);
        let networks: Vec<(Family, FamilyNetworks)> = self
            .networks
            .iter()
            .filter_map(|(family, network)| {
                own.subnet(*family).map(|subnet| (*family, FamilyNetworks { network: *network, subnet }))
            })
            .collect();
        let set = self.rules.rule_set(&networks);
        for table in set.tables.into_values() {
            desired.rules.add(table);
        }
        desired.rules.foreign_forward.extend(set.foreign_forward);
        desired
    }

    fn peer(&self, own: &Peer, peer: &Peer) -> Desired {
        self.backend.peer(own, peer)
    }

    fn lease_data(&self, family: Family) -> Option<Value> {
        self.backend.lease_data(family)
    }

    fn mtu(&self) -> u32 {
        self.backend.mtu()
    }

    fn notes(&self) -> &[String] {
        self.backend.notes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::iptables;

    fn v4() -> (Family, FamilyNetworks) {
        (
            Family::V4,
            FamilyNetworks { network: "10.244.0.0/16".parse().unwrap(), subnet: "10.244.1.0/24".parse().unwrap() },
        )
    }

    fn v6() -> (Family, FamilyNetworks) {
        (
            Family::V6,
            FamilyNetworks {
                network: "fd00:10:244::/56".parse().unwrap(),
                subnet: "fd00:10:244:1::/64".parse().unwrap(),
            },
        )
    }

    const ALL: TrafficRules = TrafficRules { masquerade: true, forward: true, fully_random: true };

    #[test]
    fn nft_text_is_flannels_rules() {
        let set = ALL.rule_set(&[v4(), v6()]);
        for table in set.tables.values() {
            table.check().unwrap();
        }
        let expected = r#"table ip flannel {
	chain FWD {
		type filter hook forward priority 0; policy accept;
		ip saddr 10.244.0.0/16 accept comment "flanneld forward"
		ip daddr 10.244.0.0/16 accept comment "flanneld forward"
	}
	chain POSTRTG {
		type nat hook postrouting priority 100; policy accept;
		meta mark & 0x00004000 == 0x00004000 return comment "flanneld masq"
		ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return comment "flanneld masq"
		ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return comment "flanneld masq"
		ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return comment "flanneld masq"
		ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment "flanneld masq"
		ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random comment "flanneld masq"
	}
}
table ip6 flannel {
	chain FWD {
		type filter hook forward priority 0; policy accept;
		ip6 saddr fd00:10:244::/56 accept comment "flanneld forward"
		ip6 daddr fd00:10:244::/56 accept comment "flanneld forward"
	}
	chain POSTRTG {
		type nat hook postrouting priority 100; policy accept;
		meta mark & 0x00004000 == 0x00004000 return comment "flanneld masq"
		ip6 saddr fd00:10:244:1::/64 ip6 daddr fd00:10:244::/56 return comment "flanneld masq"
		ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244:1::/64 return comment "flanneld masq"
		ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244:1::/64 return comment "flanneld masq"
		ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random comment "flanneld masq"
		ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random comment "flanneld masq"
	}
}
"#;
        assert_eq!(set.render(), expected);
    }

    #[test]
    fn iptables_text_uses_flannels_chains() {
        let rules = TrafficRules { fully_random: false, ..ALL };
        let set = rules.rule_set(&[v4()]);
        let restores = iptables::render(&set.tables[&table_id(Family::V4)]).unwrap();
        let expected = r#"*filter
:FLANNEL-FWD - [0:0]
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
*nat
:FLANNEL-POSTRTG - [0:0]
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE
COMMIT
"#;
        assert_eq!(restores[0].text, expected);
        assert_eq!(
            restores[0].jumps,
            vec!["-t filter FORWARD -j FLANNEL-FWD", "-t nat POSTROUTING -j FLANNEL-POSTRTG"]
        );
    }

    #[test]
    fn wrapped_backends_gain_the_tables_for_our_lease() {
        use crate::hostgw::{HostGwBackend, HostGwConfig};
        let underlay = crate::Underlay::new("eth0", 2, 1500, vec!["198.18.0.1/24".parse().unwrap()]);
        let backend = HostGwBackend::prepare(HostGwConfig::default(), underlay, &[Family::V4], 87).unwrap();
        let wrapped =
            WithTrafficRules { backend, rules: ALL, networks: vec![(Family::V4, "10.244.0.0/16".parse().unwrap())] };
        assert_eq!(wrapped.scope().tables, vec![table_id(Family::V4)]);
        assert_eq!(wrapped.scope().referenced, vec!["eth0"]);
        let own =
            Peer { subnets: crate::PerFamily::new(Some("10.244.1.0/24".parse().unwrap()), None), ..Peer::default() };
        assert_eq!(wrapped.desired(&own, &[]).rules, ALL.rule_set(&[v4()]));
        assert!(wrapped.desired(&Peer::default(), &[]).rules.is_empty(), "no lease yet, no rules");
        let peer = |n: u8, ip: &str| Peer {
            subnets: crate::PerFamily::new(Some(format!("10.244.{n}.0/24").parse().unwrap()), None),
            public_ips: crate::PerFamily::new(Some(ip.parse().unwrap()), None),
            backend_type: "host-gw".into(),
            ..Peer::default()
        };
        crate::backend::assert_parts_add_up(&wrapped, &own, &[peer(2, "198.18.0.2"), peer(3, "198.19.0.3")]);
    }

    #[test]
    fn each_flag_adds_its_own_chain_and_none_owns_nothing() {
        let masq_only = TrafficRules { masquerade: true, forward: false, fully_random: true }.rule_set(&[v4()]);
        let chains: Vec<&String> = masq_only.tables.values().flat_map(|t| t.chains.keys()).collect();
        assert_eq!(chains, vec!["POSTRTG"]);
        let forward_only = TrafficRules { masquerade: false, forward: true, fully_random: true }.rule_set(&[v6()]);
        let chains: Vec<&String> = forward_only.tables.values().flat_map(|t| t.chains.keys()).collect();
        assert_eq!(chains, vec!["FWD"]);
        let none = TrafficRules { masquerade: false, forward: false, fully_random: true };
        assert!(none.rule_set(&[v4(), v6()]).is_empty());
        assert!(none.owned(&[Family::V4, Family::V6]).is_empty());
        assert_eq!(ALL.owned(&[Family::V4, Family::V6]), vec![table_id(Family::V4), table_id(Family::V6)]);
    }
}
