//! After a claim: make sure no older lease holds a subnet that overlaps ours.
//!
//! Create-if-absent guards the whole key, and a dual-stack key names two subnets: two hosts that listed at the
//! same moment can create `10.244.1.0-24&fd00::1:0-64` and `10.244.2.0-24&fd00::1:0-64`, two keys, one IPv6
//! subnet (flannel has the same gap). So once the store has taken our lease, we list again and look for a lease
//! that overlaps any of our subnets and comes first in the order the trust boundary ([`crate::trust::screen`])
//! keeps leases in, the older store revision first. If there is one, ours is the lease every peer rejects: we
//! delete it and plan again. The listing follows our own write, so of two racing claims the newer always sees the
//! older one and yields, and the older never sees a reason to.

use tracing::warn;

use crate::ipmath;
use crate::lease::Lease;
use crate::store::{LeaseStore, Listing, StoreError};

/// A lease that overlaps `own` and comes first, with one subnet of each that overlap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OlderOverlap<'a> {
    pub winner: &'a Lease,
    pub ours: ipnetwork::IpNetwork,
    pub theirs: ipnetwork::IpNetwork,
}

/// The first lease in `leases` (in trust order) that overlaps `own` in either family and comes before it.
pub fn older_overlap<'a>(own: &Lease, leases: &'a [Lease]) -> Option<OlderOverlap<'a>> {
    leases
        .iter()
        .filter(|l| l.key != own.key && l.precedence() < own.precedence())
        .filter_map(|l| {
            own.key.subnets().find_map(|ours| {
                l.key.subnets().find(|theirs| ipmath::overlaps(ours, *theirs)).map(|theirs| OlderOverlap {
                    winner: l,
                    ours,
                    theirs,
                })
            })
        })
        .min_by_key(|o| o.winner.precedence())
}

/// What a claim came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Nothing older overlaps: the lease is ours to keep.
    Kept(Lease),
    /// An older lease overlaps ours; ours was deleted, plan again.
    Yielded,
}

/// Lists after `own` was written and yields it to an older overlapping lease. A reservation is the operator's and
/// is never deleted here (the trust boundary reports its overlap to them).
pub async fn settle<S: LeaseStore>(store: &S, own: Lease) -> Result<Settled, StoreError> {
    settle_listed(store, own).await.map(|(settled, _)| settled)
}

/// [`settle`], also handing back the listing a kept lease was checked against: taken after our write, it serves
/// the startup as its list of peers (one listing of thousands of leases less). None for a reservation, which is
/// not checked, and for a lease yielded.
pub async fn settle_listed<S: LeaseStore>(store: &S, own: Lease) -> Result<(Settled, Option<Listing>), StoreError> {
    if own.is_reservation() {
        return Ok((Settled::Kept(own), None));
    }
    let listing = store.list_leases().await?;
    let Some(overlap) = older_overlap(&own, &listing.leases) else { return Ok((Settled::Kept(own), Some(listing))) };
    warn!(
        subnet = %own.key,
        older = %overlap.winner.key,
        "our {} overlaps {} of the older lease {}, written at the same time by another host; releasing ours and \
         choosing again",
        overlap.ours,
        overlap.theirs,
        overlap.winner.key
    );
    match store.delete_lease(&own.key).await {
        Ok(()) | Err(StoreError::NotFound { .. }) => Ok((Settled::Yielded, None)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use crate::store::memory::MemoryStore;
    use std::time::Duration;

    fn lease(key: &str, mod_revision: i64) -> Lease {
        Lease {
            key: key.parse().unwrap(),
            attrs: std::sync::Arc::new(LeaseAttrs::default()),
            etcd_lease: 7,
            mod_revision,
        }
    }

    #[test]
    fn the_newer_of_two_leases_sharing_an_ipv6_subnet_yields() {
        let older = lease("10.244.1.0-24&fd00:0:0:5::-64", 10);
        let newer = lease("10.244.2.0-24&fd00:0:0:5::-64", 11);
        let leases = [older.clone(), newer.clone()];
        let found = older_overlap(&newer, &leases).expect("the newer sees the older");
        assert_eq!(found.winner, &older);
        assert_eq!(found.ours.to_string(), "fd00:0:0:5::/64");
        assert_eq!(older_overlap(&older, &leases), None, "the older keeps its lease");
    }

    #[test]
    fn overlaps_of_other_lengths_and_of_ipv4_count_too() {
        let own = lease("10.244.2.0-24&fd00:0:0:5::-64", 20);
        let wide = lease("0.0.0.0-0&fd00::-56", 3);
        let v4 = lease("10.244.2.0-24&fd00:0:0:9::-64", 5);
        let unrelated = lease("10.244.3.0-24&fd00:0:0:6::-64", 1);
        let leases = [unrelated, v4.clone(), wide.clone()];
        assert_eq!(older_overlap(&own, &leases).unwrap().winner, &wide, "the oldest overlapping lease is named");
        assert_eq!(older_overlap(&own, &leases[..2]).unwrap().winner, &v4);
        assert_eq!(older_overlap(&own, &leases[..1]), None);
    }

    #[test]
    fn equal_revisions_are_ordered_by_key_as_the_trust_boundary_does() {
        let a = lease("10.244.1.0-24&fd00:0:0:5::-64", 10);
        let b = lease("10.244.2.0-24&fd00:0:0:5::-64", 10);
        let leases = [a.clone(), b.clone()];
        assert_eq!(older_overlap(&b, &leases).unwrap().winner, &a);
        assert_eq!(older_overlap(&a, &leases), None);
    }

    const VALUE: &str = r#"{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan"}"#;

    #[tokio::test]
    async fn settling_deletes_only_the_newer_lease() {
        let store = MemoryStore::new();
        store.put_with_ttl("10.244.1.0-24&fd00:0:0:5::-64", VALUE, Duration::from_secs(60));
        store.put_with_ttl("10.244.2.0-24&fd00:0:0:5::-64", VALUE, Duration::from_secs(60));
        let find = |k: &str| store.leases().into_iter().find(|l| l.key.to_string() == k).unwrap();
        let (older, newer) = (find("10.244.1.0-24&fd00:0:0:5::-64"), find("10.244.2.0-24&fd00:0:0:5::-64"));
        assert_eq!(settle(&store, older.clone()).await.unwrap(), Settled::Kept(older.clone()));
        assert_eq!(settle(&store, newer).await.unwrap(), Settled::Yielded);
        assert_eq!(store.leases(), vec![older]);
    }

    #[tokio::test]
    async fn a_kept_lease_comes_with_the_listing_it_was_checked_against() {
        let store = MemoryStore::new();
        store.put_with_ttl("10.244.1.0-24&fd00:0:0:5::-64", VALUE, Duration::from_secs(60));
        store.put_with_ttl("10.244.3.0-24&fd00:0:0:7::-64", VALUE, Duration::from_secs(60));
        let find = |k: &str| store.leases().into_iter().find(|l| l.key.to_string() == k).unwrap();
        let own = find("10.244.3.0-24&fd00:0:0:7::-64");
        let (settled, listing) = settle_listed(&store, own.clone()).await.unwrap();
        assert_eq!(settled, Settled::Kept(own.clone()));
        let listing = listing.expect("a checked lease comes with its listing");
        assert_eq!(listing.leases, store.leases(), "every lease, ours included");
        assert!(listing.revision >= own.mod_revision, "taken after our write");

        // Neither a yielded lease nor an unchecked reservation has one to give.
        store.put_with_ttl("10.244.4.0-24&fd00:0:0:5::-64", VALUE, Duration::from_secs(60));
        let newer = find("10.244.4.0-24&fd00:0:0:5::-64");
        let (settled, listing) = settle_listed(&store, newer).await.unwrap();
        assert!(settled == Settled::Yielded && listing.is_none());
        store.put("10.244.9.0-24&fd00:0:0:9::-64", VALUE);
        let reservation = store.leases().into_iter().find(|l| l.is_reservation()).unwrap();
        let (settled, listing) = settle_listed(&store, reservation.clone()).await.unwrap();
        assert!(settled == Settled::Kept(reservation) && listing.is_none());
    }

    #[tokio::test]
    async fn a_reservation_is_never_deleted() {
        let store = MemoryStore::new();
        store.put_with_ttl("10.244.1.0-24&fd00:0:0:5::-64", VALUE, Duration::from_secs(60));
        store.put("10.244.2.0-24&fd00:0:0:5::-64", VALUE);
        let reservation = store.leases().into_iter().find(|l| l.is_reservation()).unwrap();
        assert_eq!(settle(&store, reservation.clone()).await.unwrap(), Settled::Kept(reservation));
        assert_eq!(store.leases().len(), 2);
    }

    /// Concurrent acquisitions by many hosts through the real acquire path: every host lists before any claims
    /// (the store holds the claims until then), so all of them plan from the same empty listing.
    mod races {
        use std::sync::Arc;

        use proptest::prelude::*;

        use crate::config::NetworkConfig;
        use crate::http::Metrics;
        use crate::ipmath;
        use crate::lease::{Lease, LeaseAttrs};
        use crate::own_lease::LeaseManager;
        use crate::store::memory::{MemoryStore, Op};
        use std::time::Duration;

        const DUAL: &str = r#"{"EnableIPv6":true,"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;
        const V6_ONLY: &str =
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#;

        fn manager(store: &MemoryStore, config: &NetworkConfig, host: usize) -> LeaseManager<MemoryStore> {
            let v4 = config.networks.v4.is_some();
            LeaseManager {
                store: store.clone(),
                config: config.clone(),
                attrs: LeaseAttrs {
                    public_ip: v4.then(|| format!("198.18.{}.{}", host / 200, host % 200 + 1).parse().unwrap()),
                    public_ipv6: Some(format!("fd00:198:18::{:x}", host + 1).parse().unwrap()),
                    backend_type: "vxlan".into(),
                    ..Default::default()
                },
                ttl: Duration::from_secs(60),
                metrics: Arc::new(Metrics::default()),
            }
        }

        /// Starts `hosts` acquisitions on `store`, lets them claim only once all have listed, and returns what each
        /// ended with.
        async fn race(store: &MemoryStore, config: &str, hosts: usize) -> Vec<Lease> {
            let config = NetworkConfig::parse(config).unwrap();
            store.hold_claims();
            let lists_before = store.calls().iter().filter(|c| c.op == Op::List).count();
            let racers: Vec<_> = (0..hosts)
                .map(|h| {
                    let manager = manager(store, &config, h);
                    tokio::spawn(async move { manager.acquire_once(&[]).await })
                })
                .collect();
            while store.calls().iter().filter(|c| c.op == Op::List).count() < lists_before + hosts {
                tokio::task::yield_now().await;
            }
            store.release_claims();
            let mut won = Vec::new();
            for racer in racers {
                won.push(racer.await.unwrap().expect("every host ends with a lease"));
            }
            won
        }

        /// No two of `leases` overlap in either family, and the store holds exactly them.
        fn assert_distinct(store: &MemoryStore, leases: &[Lease]) {
            for (i, a) in leases.iter().enumerate() {
                for b in &leases[i + 1..] {
                    for (x, y) in a.key.subnets().flat_map(|x| b.key.subnets().map(move |y| (x, y))) {
                        assert!(!ipmath::overlaps(x, y), "{} and {} share {x} / {y}", a.key, b.key);
                    }
                }
            }
            let mut stored: Vec<_> = store.leases().into_iter().map(|l| l.key).collect();
            let mut held: Vec<_> = leases.iter().map(|l| l.key).collect();
            stored.sort();
            held.sort();
            assert_eq!(stored, held, "every lease in the store is held by exactly one host");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn forty_dual_stack_hosts_at_once_get_distinct_subnets_in_both_families() {
            for _ in 0..10 {
                let store = MemoryStore::new();
                let won = race(&store, DUAL, 40).await;
                assert!(won.iter().all(|l| l.key.ipv4.is_some() && l.key.ipv6.is_some()));
                assert_distinct(&store, &won);
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn forty_ipv6_only_hosts_at_once_get_distinct_subnets() {
            for _ in 0..10 {
                let store = MemoryStore::new();
                let won = race(&store, V6_ONLY, 40).await;
                assert!(won.iter().all(|l| l.key.ipv4.is_none() && l.key.ipv6.is_some()));
                assert_distinct(&store, &won);
            }
        }

        /// IPv6 leases that flanneld paired at random occupy the subnets our pairing would pick, so the pick falls
        /// back to random among the few left and racing hosts often choose the same one: only the check after the
        /// claim keeps them apart.
        #[tokio::test]
        async fn when_the_paired_ipv6_subnets_are_taken_the_claim_check_separates_racing_hosts() {
            for _ in 0..30 {
                let store = MemoryStore::new();
                // flanneld's leases hold the IPv6 subnets at positions 0..=99 but IPv4 subnets far away.
                for i in 0..100u32 {
                    let value = r#"{"PublicIP":"198.19.0.1","PublicIPv6":null,"BackendType":"vxlan"}"#;
                    let key = format!("10.244.{}.0-24&fd00:10:244:{:x}::-64", 200 + i % 50, i + 1);
                    if i < 50 {
                        store.put_with_ttl(&key, value, Duration::from_secs(600));
                    } else {
                        store.put_with_ttl(&key.replace("10.244.", "10.245."), value, Duration::from_secs(600));
                    }
                }
                let config = r#"{"EnableIPv6":true,"Network":"10.244.0.0/15","IPv6Network":"fd00:10:244::/57","IPv6SubnetMax":"fd00:10:244:67::","Backend":{"Type":"vxlan"}}"#;
                let won = race(&store, config, 3).await;
                let all: Vec<Lease> = store.leases();
                assert_distinct(&store, &all);
                assert_eq!(won.len(), 3);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            /// Any number of hosts racing for an IPv6 range with room for each of them (or for exactly as many)
            /// ends with distinct subnets, dual stack or IPv6 only.
            #[test]
            fn racing_hosts_never_share_a_subnet(hosts in 2usize..7, spare in 0u32..4, v6_only in any::<bool>()) {
                // SubnetMin skips the first /64, so a /(64 - bits) has 2^bits - 1 leasable subnets.
                let slots = hosts as u32 + spare;
                let bits = 32 - slots.leading_zeros();
                let max = format!("fd00:10:244:{:x}::", slots);
                let config = if v6_only {
                    format!(r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/{}","IPv6SubnetMax":"{max}","Backend":{{"Type":"vxlan"}}}}"#, 64 - bits)
                } else {
                    format!(r#"{{"EnableIPv6":true,"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/{}","IPv6SubnetMax":"{max}","Backend":{{"Type":"vxlan"}}}}"#, 64 - bits)
                };
                let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
                runtime.block_on(async {
                    let store = MemoryStore::new();
                    let won = race(&store, &config, hosts).await;
                    assert_distinct(&store, &won);
                });
            }
        }
    }
}
