//! Who else writes or keeps our lease: the pure judgements behind the lease keeper's reactions.
//!
//! Two weftd configured with the same public IP both take "the lease carrying our public IP" as theirs. Left
//! alone, the second renews the first's lease with its own VtepMAC and both keep writing it back, so the other
//! hosts' traffic for that subnet flips between them. weft catches it from both sides:
//! - before taking over (or releasing) a live lease that carries our public IP but not our value, weftd watches
//!   its TTL for one keepalive interval of its holder: a refresh it did not send means a running weftd holds it,
//!   and the lease is left alone ([`missed_a_keepalive`], [`refreshed`]);
//! - while running, any write into our lease that we did not make is classified ([`overwrite`]): our own value
//!   again (only a weftd with our public IP and backend data writes that), another value with our public IP
//!   (another weftd), or a foreign value (an operator's mistake or an attack), which is written back.

use std::time::Duration;

use crate::lease::{Lease, LeaseAttrs};
use crate::own_lease::keepalive_interval;
use crate::registry::LeaseSet;
use crate::store::TimeToLive;

/// How late a holder's keepalive may be (store latency, whole-second TTLs) before the holder counts as gone.
pub const HOLDER_SLACK: Duration = Duration::from_secs(2);

/// A write into our lease that we did not make, by what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite<'a> {
    /// Exactly our value, at a revision we did not write: a weftd with our public IP and our backend data renewed
    /// it (host-gw's value is the public IP alone, so two such hosts write the same bytes).
    OurValue(&'a Lease),
    /// Another value that carries our public IP: another weftd configured with our public IP claimed it.
    OurPublicIp(&'a Lease),
    /// A value with another public IP: an operator's mistake or an attack.
    Foreign(&'a Lease),
}

impl<'a> Overwrite<'a> {
    pub fn lease(&self) -> &'a Lease {
        match *self {
            Overwrite::OurValue(l) | Overwrite::OurPublicIp(l) | Overwrite::Foreign(l) => l,
        }
    }

    /// Whether the writer is, by what it wrote, another weftd with our public IP.
    pub fn is_duplicate_host(&self) -> bool {
        !matches!(self, Overwrite::Foreign(_))
    }
}

/// Our lease as the set has it, when someone else wrote it after our last write.
pub fn overwrite<'a>(own: &Lease, set: &'a LeaseSet) -> Option<Overwrite<'a>> {
    let theirs = set.leases.get(&own.key).filter(|l| l.mod_revision > own.mod_revision)?;
    Some(if theirs.attrs == own.attrs {
        Overwrite::OurValue(theirs)
    } else if shares_public_ip(theirs, &own.attrs) {
        Overwrite::OurPublicIp(theirs)
    } else {
        Overwrite::Foreign(theirs)
    })
}

/// Whether `lease` publishes one of the public IPs in `ours`.
pub fn shares_public_ip(lease: &Lease, ours: &LeaseAttrs) -> bool {
    (ours.public_ip.is_some() && lease.attrs.public_ip == ours.public_ip)
        || (ours.public_ipv6.is_some() && lease.attrs.public_ipv6 == ours.public_ipv6)
}

/// Whether a holder that keeps its lease alive every [`keepalive_interval`] of the granted TTL has already missed
/// a keepalive (so it is gone: our own earlier run, say, before a reboot).
pub fn missed_a_keepalive(ttl: TimeToLive) -> bool {
    ttl.remaining + keepalive_interval(ttl.granted) + HOLDER_SLACK < ttl.granted
}

/// Whether the remaining TTL went up between two readings taken in order: someone refreshed it.
pub fn refreshed(before: TimeToLive, after: TimeToLive) -> bool {
    after.remaining > before.remaining
}

/// How long to watch a lease's TTL for a refresh: one keepalive interval of its holder, and the slack.
pub fn watch_for(ttl: TimeToLive) -> Duration {
    keepalive_interval(ttl.granted) + HOLDER_SLACK
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(public_ip: &str, mac: &str, rev: i64) -> Lease {
        Lease {
            key: "10.244.3.0-24".parse().unwrap(),
            attrs: std::sync::Arc::new(LeaseAttrs {
                public_ip: Some(public_ip.parse().unwrap()),
                backend_type: "vxlan".into(),
                backend_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": mac}).into()),
                ..Default::default()
            }),
            etcd_lease: 9,
            mod_revision: rev,
        }
    }

    fn set_with(lease: Lease) -> LeaseSet {
        let mut set = LeaseSet { revision: lease.mod_revision, ..Default::default() };
        set.leases.insert(lease.key, lease);
        set
    }

    #[test]
    fn writes_into_our_lease_are_told_apart_by_what_they_say() {
        let own = lease("198.18.0.1", "0e:00:00:00:00:01", 10);
        assert_eq!(overwrite(&own, &set_with(own.clone())), None, "our own last write");
        let older = lease("198.18.0.66", "0e:00:00:00:00:66", 9);
        assert_eq!(overwrite(&own, &set_with(older)), None, "a set older than our last write");
        let again = Lease { mod_revision: 12, ..own.clone() };
        let set = set_with(again.clone());
        assert_eq!(overwrite(&own, &set), Some(Overwrite::OurValue(&again)));
        let twin = lease("198.18.0.1", "0e:00:00:00:00:02", 12);
        let set = set_with(twin.clone());
        assert_eq!(overwrite(&own, &set), Some(Overwrite::OurPublicIp(&twin)));
        assert!(overwrite(&own, &set).unwrap().is_duplicate_host());
        let forged = lease("198.18.0.66", "0e:00:00:00:00:01", 12);
        let set = set_with(forged.clone());
        assert_eq!(overwrite(&own, &set), Some(Overwrite::Foreign(&forged)));
        assert!(!overwrite(&own, &set).unwrap().is_duplicate_host());
    }

    #[test]
    fn another_live_lease_with_our_public_ip_shares_it_and_no_ip_is_nobodys() {
        let ours = LeaseAttrs { public_ip: Some("198.18.0.1".parse().unwrap()), ..Default::default() };
        let mut other = lease("198.18.0.1", "0e:00:00:00:00:05", 3);
        assert!(shares_public_ip(&other, &ours));
        std::sync::Arc::make_mut(&mut other.attrs).public_ip = Some("198.18.0.2".parse().unwrap());
        assert!(!shares_public_ip(&other, &ours));
        std::sync::Arc::make_mut(&mut other.attrs).public_ip = None;
        assert!(!shares_public_ip(&other, &LeaseAttrs::default()));
    }

    fn ttl(remaining: u64, granted: u64) -> TimeToLive {
        TimeToLive { remaining: Duration::from_secs(remaining), granted: Duration::from_secs(granted) }
    }

    #[test]
    fn a_holder_is_gone_once_it_missed_a_keepalive() {
        // 24 h TTL: keepalives every 60 s, so a live holder's lease never has less than 86400 - 62 s left.
        assert!(!missed_a_keepalive(ttl(86_400, 86_400)));
        assert!(!missed_a_keepalive(ttl(86_338, 86_400)));
        assert!(missed_a_keepalive(ttl(86_337, 86_400)));
        // 12 s TTL: keepalives every 4 s.
        assert!(!missed_a_keepalive(ttl(6, 12)));
        assert!(missed_a_keepalive(ttl(5, 12)));
        assert_eq!(watch_for(ttl(12, 12)), Duration::from_secs(6));
        assert_eq!(watch_for(ttl(100, 86_400)), Duration::from_secs(62));
    }

    #[test]
    fn only_a_rising_ttl_is_a_refresh() {
        assert!(refreshed(ttl(80, 86_400), ttl(86_400, 86_400)));
        assert!(!refreshed(ttl(80, 86_400), ttl(80, 86_400)));
        assert!(!refreshed(ttl(80, 86_400), ttl(79, 86_400)));
    }
}
