//! Which subnet to lease: a pure decision over the current lease list, so every rule is unit-tested.
//!
//! In order: renew the lease that already carries our public IP (if it still fits the config); else take back the
//! subnet we had before (from the subnet file, or the one just lost) if nobody holds it; else pick at random among
//! the first 100 free subnets from SubnetMin, as flannel does, so racing hosts rarely collide.
//!
//! With both families the IPv6 subnet is not picked on its own (flannel picks it at random, independently): it is
//! the one at the same position from IPv6 SubnetMin as the IPv4 pick is from IPv4 SubnetMin, when that one is free.
//! The key names both subnets, so two racing hosts can then only share an IPv6 subnet by sharing the whole key,
//! which the store's create-if-absent refuses to the second. When the paired subnet is taken (leases written by
//! flanneld, reservations) the pick falls back to random, and [`crate::claim_check`] settles what a race leaves.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use rand::Rng;
use weft_backends::Family;

use crate::config::{FamilyConfig, NetworkConfig};
use crate::ipmath;
use crate::lease::{Lease, SubnetKey};

/// How many free subnets the random pick chooses from.
pub const CANDIDATES: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The lease carrying our public IP fits the config: keep its subnet and refresh its value.
    Renew(Lease),
    /// Claim this key, which nobody holds now.
    Claim(SubnetKey),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub choice: Choice,
    /// Leases of ours (by public IP) that no longer fit the config and should be deleted first.
    pub stale: Vec<Lease>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("out of subnets: every /{subnet_len} between {min} and {max} in {network} is leased or reserved ({taken} leases); widen the range or delete stale leases")]
    Exhausted { network: IpNetwork, subnet_len: u8, min: IpAddr, max: IpAddr, taken: usize },
}

/// Who we are when choosing.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub public_ip: Option<IpAddr>,
    pub public_ipv6: Option<IpAddr>,
    /// Subnets to prefer if free: the one we just lost, then the one in the subnet file.
    pub preferred: Vec<SubnetKey>,
}

pub fn plan(config: &NetworkConfig, leases: &[Lease], me: &Identity, rng: &mut impl Rng) -> Result<Plan, AllocError> {
    let mut stale = Vec::new();
    let identity_family = if config.networks.v4.is_some() { Family::V4 } else { Family::V6 };
    let my_ip = match identity_family {
        Family::V4 => me.public_ip,
        Family::V6 => me.public_ipv6,
    };
    // Ours by public IP. A reservation for us comes first, as flannel documents; every other live lease of ours
    // is released, so our old subnet is not left behind as a "peer" pointing at ourselves.
    let mut mine: Vec<&Lease> =
        leases.iter().filter(|l| my_ip.is_some() && public_ip(l, identity_family) == my_ip).collect();
    mine.sort_by_key(|l| !l.is_reservation());
    let mut renew = None;
    for lease in mine {
        if renew.is_none() && fits(config, &lease.key) {
            renew = Some(lease.clone());
        } else if !lease.is_reservation() {
            stale.push(lease.clone());
        }
    }
    if let Some(lease) = renew {
        return Ok(Plan { choice: Choice::Renew(lease), stale });
    }
    let others: Vec<&Lease> = leases.iter().filter(|l| !stale.contains(l)).collect();
    let taken = |net: IpNetwork| others.iter().any(|l| l.key.subnets().any(|s| ipmath::overlaps(s, net)));

    for key in &me.preferred {
        if fits(config, key) && !key.subnets().any(&taken) {
            return Ok(Plan { choice: Choice::Claim(*key), stale });
        }
    }

    let mut chosen = [None, None];
    // The position of the IPv4 pick from its SubnetMin, which the IPv6 pick copies when it can.
    let mut position = None;
    for (slot, family) in [Family::V4, Family::V6].into_iter().enumerate() {
        let Some(fc) = config.family(family) else { continue };
        let taken_ranges = TakenRanges::new(others.iter().flat_map(|l| l.key.subnet(family)));
        if let Some(paired) = position.and_then(|p| subnet_at(fc, p).filter(|s| taken_ranges.is_free(*s))) {
            chosen[slot] = Some(paired);
            continue;
        }
        let free = free_subnets(fc, &taken_ranges, CANDIDATES);
        if free.is_empty() {
            return Err(AllocError::Exhausted {
                network: fc.network,
                subnet_len: fc.subnet_len,
                min: fc.subnet_min,
                max: fc.subnet_max,
                taken: others.len(),
            });
        }
        let pick = free[rng.random_range(0..free.len())];
        position = Some(position_of(fc, pick));
        chosen[slot] = Some(pick);
    }
    Ok(Plan { choice: Choice::Claim(SubnetKey::new(chosen[0], chosen[1])), stale })
}

fn public_ip(lease: &Lease, family: Family) -> Option<IpAddr> {
    match family {
        Family::V4 => lease.attrs.public_ip.map(IpAddr::V4),
        Family::V6 => lease.attrs.public_ipv6.map(IpAddr::V6),
    }
}

/// Whether `key` has exactly the enabled families, each inside its configured range.
pub fn fits(config: &NetworkConfig, key: &SubnetKey) -> bool {
    [Family::V4, Family::V6].into_iter().all(|family| match (config.family(family), key.subnet(family)) {
        (Some(fc), Some(subnet)) => fc.admits(subnet),
        (None, None) => true,
        _ => false,
    })
}

/// Leased ranges of one family as sorted, merged [start, end] intervals, for overlap tests in O(log n).
struct TakenRanges(Vec<(u128, u128)>);

impl TakenRanges {
    fn new(subnets: impl Iterator<Item = IpNetwork>) -> Self {
        let mut ranges: Vec<(u128, u128)> =
            subnets.map(|s| (ipmath::to_u128(s.network()), ipmath::last_address(s))).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        TakenRanges(merged)
    }

    fn is_free(&self, subnet: IpNetwork) -> bool {
        self.overlap(ipmath::to_u128(subnet.network()), ipmath::last_address(subnet)).is_none()
    }

    /// The end of the taken range that overlaps [start, end], if any.
    fn overlap(&self, start: u128, end: u128) -> Option<u128> {
        let i = self.0.partition_point(|r| r.1 < start);
        self.0.get(i).filter(|r| r.0 <= end).map(|r| r.1)
    }
}

/// How many subnets of the configured length lie between SubnetMin and `subnet`.
fn position_of(fc: &FamilyConfig, subnet: IpNetwork) -> u128 {
    let size = ipmath::subnet_size(fc.family(), fc.subnet_len);
    (ipmath::to_u128(subnet.network()) - ipmath::to_u128(fc.subnet_min)) / size
}

/// The subnet `position` subnets above SubnetMin, if that is still within SubnetMax.
fn subnet_at(fc: &FamilyConfig, position: u128) -> Option<IpNetwork> {
    let family = fc.family();
    let offset = position.checked_mul(ipmath::subnet_size(family, fc.subnet_len))?;
    let base = ipmath::to_u128(fc.subnet_min).checked_add(offset)?;
    if base > ipmath::to_u128(fc.subnet_max) {
        return None;
    }
    IpNetwork::new(ipmath::from_u128(family, base), fc.subnet_len).ok()
}

/// Up to `limit` free subnets from SubnetMin upwards, skipping over taken ranges in one jump each.
fn free_subnets(fc: &FamilyConfig, taken: &TakenRanges, limit: usize) -> Vec<IpNetwork> {
    let family = fc.family();
    let size = ipmath::subnet_size(family, fc.subnet_len);
    let max = ipmath::to_u128(fc.subnet_max);
    let mut base = ipmath::to_u128(fc.subnet_min);
    let mut free = Vec::new();
    while base <= max && free.len() < limit {
        let end = base + (size - 1);
        match taken.overlap(base, end) {
            Some(taken_end) => {
                // Jump to the first aligned subnet after the taken range.
                let Some(next) = taken_end.checked_add(1) else { break };
                base = next.div_ceil(size) * size;
            }
            None => {
                free.push(IpNetwork::new(ipmath::from_u128(family, base), fc.subnet_len).expect("valid prefix"));
                let Some(next) = base.checked_add(size) else { break };
                base = next;
            }
        }
    }
    free
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::net::Ipv4Addr;

    fn config(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    fn lease(key: &str, public_ip: &str, etcd_lease: i64) -> Lease {
        Lease {
            key: key.parse().unwrap(),
            attrs: std::sync::Arc::new(LeaseAttrs {
                public_ip: Some(public_ip.parse().unwrap()),
                backend_type: "vxlan".into(),
                ..Default::default()
            }),
            etcd_lease,
            mod_revision: 1,
        }
    }

    fn me(ip: &str) -> Identity {
        Identity { public_ip: Some(ip.parse().unwrap()), ..Default::default() }
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn claimed(plan: Plan) -> String {
        match plan.choice {
            Choice::Claim(k) => k.to_string(),
            Choice::Renew(l) => panic!("expected a claim, got renew of {}", l.key),
        }
    }

    #[test]
    fn never_hands_out_the_first_subnet() {
        let c = config(r#"{"Network":"10.1.0.0/26"}"#);
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let p = plan(&c, &[], &me("198.18.0.1"), &mut StdRng::seed_from_u64(seed)).unwrap();
            seen.insert(claimed(p));
        }
        let expected: std::collections::BTreeSet<String> =
            ["10.1.0.16-28", "10.1.0.32-28", "10.1.0.48-28"].iter().map(|s| s.to_string()).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn respects_subnet_min_and_max() {
        let c = config(r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.10.32.0"}"#);
        for seed in 0..100 {
            let key = claimed(plan(&c, &[], &me("198.18.0.1"), &mut StdRng::seed_from_u64(seed)).unwrap());
            assert!(["10.10.0.0-20", "10.10.16.0-20", "10.10.32.0-20"].contains(&key.as_str()), "{key}");
        }
    }

    #[test]
    fn exhaustion_is_a_clear_error() {
        let c = config(r#"{"Network":"10.1.0.0/26"}"#);
        let leases = [
            lease("10.1.0.16-28", "198.18.0.2", 5),
            lease("10.1.0.32-28", "198.18.0.3", 5),
            lease("10.1.0.48-28", "198.18.0.4", 0),
        ];
        let err = plan(&c, &leases, &me("198.18.0.1"), &mut rng()).unwrap_err().to_string();
        assert!(err.starts_with("out of subnets: every /28 between 10.1.0.16 and 10.1.0.48 in 10.1.0.0/26"), "{err}");
    }

    #[test]
    fn picks_only_free_subnets_and_skips_overlaps() {
        let c = config(r#"{"Network":"10.1.0.0/26"}"#);
        // A hand-made /27 reservation covers two /28s.
        let leases = [lease("10.1.0.32-27", "198.18.0.9", 0)];
        for seed in 0..50 {
            assert_eq!(
                claimed(plan(&c, &leases, &me("198.18.0.1"), &mut StdRng::seed_from_u64(seed)).unwrap()),
                "10.1.0.16-28"
            );
        }
    }

    #[test]
    fn renews_the_lease_with_our_public_ip() {
        let c = config(r#"{"Network":"10.244.0.0/16"}"#);
        let ours = lease("10.244.7.0-24", "198.18.0.1", 42);
        let leases = [lease("10.244.1.0-24", "198.18.0.2", 41), ours.clone()];
        let p = plan(&c, &leases, &me("198.18.0.1"), &mut rng()).unwrap();
        assert_eq!(p.choice, Choice::Renew(ours));
        assert!(p.stale.is_empty());
    }

    #[test]
    fn a_reservation_for_our_ip_is_honoured() {
        let c = config(r#"{"Network":"10.244.0.0/16"}"#);
        let reserved = lease("10.244.200.0-24", "198.18.0.1", 0);
        let p = plan(&c, std::slice::from_ref(&reserved), &me("198.18.0.1"), &mut rng()).unwrap();
        assert_eq!(p.choice, Choice::Renew(reserved));
    }

    #[test]
    fn a_reservation_for_our_ip_wins_over_our_old_lease_which_is_released() {
        let c = config(r#"{"Network":"10.244.0.0/16"}"#);
        // The old lease sorts first by key: the reservation must win anyway.
        let old = lease("10.244.3.0-24", "198.18.0.1", 42);
        let reserved = lease("10.244.200.0-24", "198.18.0.1", 0);
        let leases = [old.clone(), lease("10.244.4.0-24", "198.18.0.2", 41), reserved.clone()];
        let p = plan(&c, &leases, &me("198.18.0.1"), &mut rng()).unwrap();
        assert_eq!(p.choice, Choice::Renew(reserved));
        assert_eq!(p.stale, vec![old], "our old live lease is released, not left behind as a peer");
    }

    #[test]
    fn of_two_live_leases_with_our_ip_one_is_kept_and_the_other_released() {
        let c = config(r#"{"Network":"10.244.0.0/16"}"#);
        let first = lease("10.244.3.0-24", "198.18.0.1", 42);
        let second = lease("10.244.5.0-24", "198.18.0.1", 43);
        let p = plan(&c, &[first.clone(), second.clone()], &me("198.18.0.1"), &mut rng()).unwrap();
        assert_eq!((p.choice, p.stale), (Choice::Renew(first), vec![second]));
    }

    #[test]
    fn reservations_of_others_are_never_allocated() {
        let c = config(r#"{"Network":"10.1.0.0/26"}"#);
        let leases = [lease("10.1.0.16-28", "198.18.0.2", 0), lease("10.1.0.32-28", "198.18.0.3", 0)];
        assert_eq!(claimed(plan(&c, &leases, &me("198.18.0.1"), &mut rng()).unwrap()), "10.1.0.48-28");
    }

    #[test]
    fn an_incompatible_own_lease_is_stale() {
        let c = config(r#"{"Network":"10.244.0.0/16","SubnetLen":25}"#);
        let old = lease("10.244.7.0-24", "198.18.0.1", 42);
        let p = plan(&c, std::slice::from_ref(&old), &me("198.18.0.1"), &mut rng()).unwrap();
        assert_eq!(p.stale, vec![old]);
        assert!(matches!(p.choice, Choice::Claim(k) if k.ipv4.unwrap().prefix() == 25));
    }

    #[test]
    fn previous_subnet_is_preferred_when_free() {
        let c = config(r#"{"Network":"10.244.0.0/16"}"#);
        let mut id = me("198.18.0.1");
        id.preferred = vec!["10.244.9.0-24".parse().unwrap()];
        assert_eq!(claimed(plan(&c, &[], &id, &mut rng()).unwrap()), "10.244.9.0-24");
        // Held by another host: fall back to a random free one.
        let leases = [lease("10.244.9.0-24", "198.18.0.2", 5)];
        assert_ne!(claimed(plan(&c, &leases, &id, &mut rng()).unwrap()), "10.244.9.0-24");
        // Outside the configured range: ignored.
        id.preferred = vec!["10.244.0.0-24".parse().unwrap()];
        assert_ne!(claimed(plan(&c, &[], &id, &mut rng()).unwrap()), "10.244.0.0-24");
    }

    #[test]
    fn dual_stack_claims_both_families() {
        let c = config(r#"{"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"fd42::/56"}"#);
        let key = match plan(&c, &[], &me("198.18.0.1"), &mut rng()).unwrap().choice {
            Choice::Claim(k) => k,
            other => panic!("{other:?}"),
        };
        assert!(key.ipv4.is_some() && key.ipv6.is_some(), "{key}");
        assert!(fits(&c, &key));
    }

    fn claimed_key(plan: Plan) -> SubnetKey {
        match plan.choice {
            Choice::Claim(k) => k,
            Choice::Renew(l) => panic!("expected a claim, got renew of {}", l.key),
        }
    }

    #[test]
    fn the_ipv6_pick_sits_at_the_same_position_as_the_ipv4_pick() {
        let c = config(r#"{"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"fd42::/56"}"#);
        for seed in 0..50 {
            let key = claimed_key(plan(&c, &[], &me("198.18.0.1"), &mut StdRng::seed_from_u64(seed)).unwrap());
            let v4_position = key.ipv4.unwrap().ip().octets()[2];
            let v6_position = key.ipv6.unwrap().ip().segments()[3];
            // SubnetMin is the second subnet in both families: 10.42.1.0/24 and fd42:0:0:1::/64.
            assert_eq!(u16::from(v4_position), v6_position, "{key}");
        }
    }

    #[test]
    fn a_taken_paired_ipv6_subnet_falls_back_to_a_free_one() {
        // The only leasable IPv4 subnet (10.1.0.16/28) is at position 0, whose IPv6 partner fd00:0:0:1::/64 is taken.
        let c = config(
            r#"{"EnableIPv6":true,"Network":"10.1.0.0/26","SubnetMax":"10.1.0.16","IPv6Network":"fd00::/60","IPv6SubnetMax":"fd00:0:0:3::"}"#,
        );
        let leases = [lease("10.1.0.0-28&fd00:0:0:1::-64", "198.18.0.9", 5)];
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..50 {
            let key = claimed_key(plan(&c, &leases, &me("198.18.0.1"), &mut StdRng::seed_from_u64(seed)).unwrap());
            assert_eq!(key.ipv4.unwrap().to_string(), "10.1.0.16/28");
            seen.insert(key.ipv6.unwrap().to_string());
        }
        assert_eq!(seen, ["fd00:0:0:2::/64", "fd00:0:0:3::/64"].map(String::from).into());
    }

    #[test]
    fn a_paired_ipv6_subnet_past_the_range_falls_back_to_a_free_one() {
        let c = config(
            r#"{"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"fd42::/56","IPv6SubnetMax":"fd42:0:0:1::"}"#,
        );
        for seed in 0..50 {
            let key = claimed_key(plan(&c, &[], &me("198.18.0.1"), &mut StdRng::seed_from_u64(seed)).unwrap());
            assert_eq!(key.ipv6.unwrap().to_string(), "fd42:0:0:1::/64", "{key}");
        }
    }

    #[test]
    fn large_networks_with_many_leases_stay_fast() {
        let c = config(r#"{"Network":"10.0.0.0/8"}"#);
        let leases: Vec<Lease> = (1..20_000u32)
            .map(|i| {
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (i << 8));
                lease(&format!("{ip}-24"), &format!("198.19.{}.{}", i / 250, i % 250 + 1), 1)
            })
            .collect();
        let key = claimed(plan(&c, &leases, &me("198.18.0.1"), &mut rng()).unwrap());
        let n: u32 = key.split('.').nth(1).unwrap().parse().unwrap();
        assert!(n >= 78, "{key} must be past the 19,999 leased subnets");
    }
}
