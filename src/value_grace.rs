//! A grace period for rewritten peer leases.
//!
//! A peer lease whose value changes is programmed with its new value only once that value has stood for
//! [`GRACE`]. A host whose lease is overwritten by someone else writes its own value back at once (see
//! `own_lease`), so a single bad write is undone before any host acts on it: nobody's traffic goes to a forged
//! address or MAC, not even for the few milliseconds the repair takes. The price is that a real change of a
//! peer's value (a host that came back with a new VTEP MAC) reaches the kernel [`GRACE`] later. New leases and
//! deletions are not delayed: only a change of what a live key says.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::registry::{Journal, LeaseSet, Version};

/// How long a changed peer value must stand before it is programmed: far more than a host needs to write its
/// own value back (one etcd round trip), short next to any restart of a host.
pub const GRACE: Duration = Duration::from_secs(2);

/// What the grace keeps: only the keys held back. What is programmed for every other key is what the view
/// says, so the grace holds no copy of the set (at 10,000 peers a copy per lease was megabytes).
#[derive(Debug, Default)]
pub struct ValueGrace {
    /// The version of the set the view reflects, and our own key then; None: look at the whole set next time.
    seen: Option<(Version, SubnetKey)>,
    /// The keys held back now: the value waiting, and when it was first seen. A lease event visits only the keys
    /// whose grace ended (`ends`), not every one held (under churn, thousands are).
    held: BTreeMap<SubnetKey, Pending>,
    ends: BTreeSet<(Instant, SubnetKey)>,
    /// The set as it is to be programmed, kept up to date key by key with a journal of its own: the keys whose
    /// value in it changed, a held-back or released value included. A held key's entry is the value programmed
    /// before its new one came. None before the first view.
    view: Option<Arc<LeaseSet>>,
}

/// A peer's new value waiting for its grace to pass.
#[derive(Debug, Clone)]
struct Pending {
    attrs: Arc<LeaseAttrs>,
    since: Instant,
}

impl Pending {
    fn end(&self) -> Instant {
        self.since + GRACE
    }
}

/// What the view says of a key: its lease and, for a bad value, why it is bad.
type Entry<'a> = (Option<&'a Lease>, Option<&'a String>);

impl ValueGrace {
    /// The lease set to program at `now`: `set`, except that a key whose value changed less than [`GRACE`] ago
    /// keeps the value programmed before. Also returns when a held value's grace ends (look again then).
    ///
    /// Runs on every change of the set: it visits the keys the set's journal says changed and the held ones
    /// whose grace ended, or, when the journal cannot tell, walks the whole set against the last view. The view
    /// is changed in place (copy-on-write, while a consumer holds the last one) and journals what it changed, so
    /// its consumers visit only those keys too; a walk starts it afresh, on a new line.
    pub fn view(&mut self, set: &LeaseSet, own: &SubnetKey, now: Instant) -> (Arc<LeaseSet>, Option<Instant>) {
        let seen_own = self.seen.map(|(_, seen_own)| seen_own);
        let changed = self.seen.filter(|(_, seen_own)| seen_own == own).and_then(|(v, _)| set.changed_since(Some(v)));
        self.seen = set.version().map(|v| (v, *own));
        let view = match (changed, self.view.take()) {
            (Some(keys), Some(mut view)) => {
                let expired = self.ends.iter().take_while(|(end, _)| *end <= now).map(|(_, key)| *key);
                let visit: BTreeSet<SubnetKey> = keys.iter().copied().chain(expired).collect();
                let v = Arc::make_mut(&mut view);
                v.journal.next_batch();
                for key in &visit {
                    let shown = if key == own {
                        (set.leases.get(key), set.bad_values.get(key))
                    } else {
                        let programmed = (v.leases.get(key), v.bad_values.get(key));
                        self.visit(programmed, (set.leases.get(key), set.bad_values.get(key)), *key, now)
                    };
                    let (lease, bad) = (shown.0.cloned(), shown.1.cloned());
                    update_entry(v, *key, lease.as_ref(), bad.as_ref());
                }
                if v.bad_keys != set.bad_keys {
                    v.bad_keys = set.bad_keys.clone();
                }
                v.revision = set.revision;
                view
            }
            (_, last) => Arc::new(self.walk(set, own, seen_own, last.as_deref(), now)),
        };
        self.view = Some(view.clone());
        (view, self.ends.first().map(|(end, _)| *end))
    }

    /// Takes in the set's value of a peer's `key` (`now_in_set`), against what the view says of it
    /// (`programmed`); returns what the view is to say.
    fn visit<'a>(&mut self, programmed: Entry<'a>, now_in_set: Entry<'a>, key: SubnetKey, now: Instant) -> Entry<'a> {
        let pending = self.held.remove(&key);
        if let Some(p) = &pending {
            self.ends.remove(&(p.end(), key));
        }
        let (Some(old), Some(lease)) = (programmed.0, now_in_set.0) else {
            // A new lease and a deletion are not held back.
            return now_in_set;
        };
        // Leases share their value with the set they came from: an unchanged value compares by pointer.
        if old.attrs == lease.attrs && programmed.1 == now_in_set.1 {
            return now_in_set;
        }
        let since = match pending {
            Some(p) if p.attrs == lease.attrs => p.since,
            _ => now,
        };
        let pending = Pending { attrs: lease.attrs.clone(), since };
        if now >= pending.end() {
            return now_in_set;
        }
        self.ends.insert((pending.end(), key));
        self.held.insert(key, pending);
        programmed
    }

    /// [`view`](Self::view) by a visit of every key: the view afresh, from `set` and the `last` view (made when
    /// our own key was `last_own`).
    fn walk(
        &mut self,
        set: &LeaseSet,
        own: &SubnetKey,
        last_own: Option<SubnetKey>,
        last: Option<&LeaseSet>,
        now: Instant,
    ) -> LeaseSet {
        let mut held_back: Vec<(SubnetKey, Option<Lease>, Option<String>)> = Vec::new();
        let mut still_held = BTreeMap::new();
        std::mem::swap(&mut still_held, &mut self.held);
        self.ends.clear();
        for (key, lease) in set.leases.iter().filter(|(key, _)| *key != own) {
            // Our former own key was never held back: what the last view said of it was never programmed for a
            // peer, so it is new.
            let programmed = match last {
                Some(last) if last_own != Some(*key) => (last.leases.get(key), last.bad_values.get(key)),
                _ => (None, None),
            };
            if let Some(pending) = still_held.remove(key) {
                self.held.insert(*key, pending);
            }
            let now_in_set = (Some(lease), set.bad_values.get(key));
            let shown = self.visit(programmed, now_in_set, *key, now);
            if self.held.contains_key(key) {
                held_back.push((*key, shown.0.cloned(), shown.1.cloned()));
            }
        }
        let mut view = LeaseSet { journal: Journal::begin(), ..set.clone() };
        for (key, lease, bad) in held_back {
            update_entry(&mut view, key, lease.as_ref(), bad.as_ref());
        }
        view
    }
}

/// Makes `view`'s entry under `key` say `lease` and `bad`, journaling the key if that changes it.
fn update_entry(view: &mut LeaseSet, key: SubnetKey, lease: Option<&Lease>, bad: Option<&String>) {
    if view.leases.get(&key) == lease && view.bad_values.get(&key) == bad {
        return;
    }
    match lease {
        Some(lease) => view.leases.insert(key, lease.clone()),
        None => view.leases.remove(&key),
    };
    match bad {
        Some(why) => view.bad_values.insert(key, why.clone()),
        None => view.bad_values.remove(&key),
    };
    view.journal.record(key);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Change;

    fn lease(key: &str, ip: &str, rev: i64) -> Lease {
        Lease {
            key: key.parse().unwrap(),
            attrs: std::sync::Arc::new(LeaseAttrs { public_ip: Some(ip.parse().unwrap()), ..Default::default() }),
            etcd_lease: 7,
            mod_revision: rev,
        }
    }

    fn set(leases: &[Lease]) -> LeaseSet {
        LeaseSet {
            leases: leases.iter().map(|l| (l.key, l.clone())).collect(),
            revision: leases.iter().map(|l| l.mod_revision).max().unwrap_or(0),
            ..Default::default()
        }
    }

    /// What would be programmed: the held-back view, or the set itself.
    fn seen(grace: &mut ValueGrace, set: &LeaseSet, own: &SubnetKey, now: Instant) -> (LeaseSet, Option<Instant>) {
        let (view, next) = grace.view(set, own, now);
        ((*view).clone(), next)
    }

    fn ip(view: &LeaseSet, key: &str) -> String {
        view.leases[&key.parse().unwrap()].attrs.public_ip.unwrap().to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_rewritten_and_restored_within_the_grace_is_never_programmed() {
        let own: SubnetKey = "10.244.1.0-24".parse().unwrap();
        let mut grace = ValueGrace::default();
        let t0 = Instant::now();
        let (view, next) = seen(&mut grace, &set(&[lease("10.244.2.0-24", "198.18.0.2", 5)]), &own, t0);
        assert_eq!((ip(&view, "10.244.2.0-24"), next), ("198.18.0.2".to_string(), None), "a new lease at once");

        let forged = set(&[lease("10.244.2.0-24", "198.18.0.66", 6)]);
        let (view, next) = seen(&mut grace, &forged, &own, t0 + Duration::from_millis(10));
        assert_eq!(ip(&view, "10.244.2.0-24"), "198.18.0.2", "the forged value waits");
        assert_eq!(next, Some(t0 + Duration::from_millis(10) + GRACE));

        // Its owner writes its value back: nothing ever changed for the kernel.
        let restored = set(&[lease("10.244.2.0-24", "198.18.0.2", 7)]);
        let (view, next) = seen(&mut grace, &restored, &own, t0 + Duration::from_millis(40));
        assert_eq!((ip(&view, "10.244.2.0-24"), next), ("198.18.0.2".to_string(), None));
        assert_eq!(view.leases[&"10.244.2.0-24".parse().unwrap()].mod_revision, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_that_stands_for_the_grace_is_programmed_and_deletions_are_not_delayed() {
        let own: SubnetKey = "10.244.1.0-24".parse().unwrap();
        let mut grace = ValueGrace::default();
        let t0 = Instant::now();
        seen(&mut grace, &set(&[lease("10.244.2.0-24", "198.18.0.2", 5)]), &own, t0);
        let moved = set(&[lease("10.244.2.0-24", "198.18.0.22", 6)]);
        let (view, _) = seen(&mut grace, &moved, &own, t0 + Duration::from_secs(1));
        assert_eq!(ip(&view, "10.244.2.0-24"), "198.18.0.2");
        // Seen again (another pass) before the grace ends: still the old value, same deadline.
        let (_, next) = seen(&mut grace, &moved, &own, t0 + Duration::from_secs(2));
        assert_eq!(next, Some(t0 + Duration::from_secs(1) + GRACE));
        let (view, next) = seen(&mut grace, &moved, &own, t0 + Duration::from_secs(1) + GRACE);
        assert_eq!((ip(&view, "10.244.2.0-24"), next), ("198.18.0.22".to_string(), None));

        let (view, next) = seen(&mut grace, &set(&[]), &own, t0 + Duration::from_secs(4));
        assert!(view.leases.is_empty() && next.is_none(), "a deleted lease goes at once");
    }

    #[tokio::test(start_paused = true)]
    async fn our_own_key_and_bad_values_follow_the_same_rules() {
        let own: SubnetKey = "10.244.1.0-24".parse().unwrap();
        let mut grace = ValueGrace::default();
        let t0 = Instant::now();
        let mut first = set(&[lease("10.244.1.0-24", "198.18.0.1", 5), lease("10.244.2.0-24", "198.18.0.2", 5)]);
        seen(&mut grace, &first, &own, t0);
        // Our own key is never held back (the lease keeper reacts to it); garbage over a peer's value is.
        first.leases.insert(own, lease("10.244.1.0-24", "198.18.0.66", 6));
        let garbage: SubnetKey = "10.244.2.0-24".parse().unwrap();
        first.leases.insert(
            garbage,
            Lease { attrs: std::sync::Arc::new(LeaseAttrs::default()), ..lease("10.244.2.0-24", "198.18.0.2", 6) },
        );
        first.bad_values.insert(garbage, "not JSON".into());
        let (view, next) = seen(&mut grace, &first, &own, t0 + Duration::from_millis(5));
        assert_eq!(ip(&view, "10.244.1.0-24"), "198.18.0.66");
        assert_eq!(ip(&view, "10.244.2.0-24"), "198.18.0.2");
        assert!(view.bad_values.is_empty(), "the garbage is not reported while it waits");
        assert!(next.is_some());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// Following the set's journal gives the same views, wake-ups and releases as walking the whole set.
        #[test]
        fn the_journal_gives_what_the_walk_gives(
            steps in proptest::collection::vec((0u8..3, 2u8..7, 1u8..4, 0u64..3000), 1..60)
        ) {
            let own: SubnetKey = "10.244.1.0-24".parse().unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            let _guard = runtime.enter();
            let t0 = Instant::now();
            let mut now = t0;
            let mut set = LeaseSet::journaled(0);
            let (mut journaled, mut walked) = (ValueGrace::default(), ValueGrace::default());
            let mut last: Option<Arc<LeaseSet>> = None;
            for (revision, (what, n, ip, ms)) in (1..).zip(steps) {
                let key = format!("10.244.{n}.0-24");
                match what {
                    0 => set.apply(&[Change::Put(lease(&key, &format!("198.18.0.{ip}"), revision))], revision),
                    1 => set.apply(&[Change::Delete(key.parse().unwrap())], revision),
                    _ => now += Duration::from_millis(ms),
                }
                let unjournaled = LeaseSet { journal: Default::default(), ..set.clone() };
                let (view, next) = journaled.view(&set, &own, now);
                let (walked_view, walked_next) = walked.view(&unjournaled, &own, now);
                proptest::prop_assert_eq!(next, walked_next);
                proptest::prop_assert_eq!(&view.leases, &walked_view.leases);
                // The view's own journal names every key whose value in it changed, held back or released.
                if let Some(changed) = view.changed_since(last.as_ref().and_then(|l: &Arc<LeaseSet>| l.version())) {
                    let before = &last.as_ref().expect("a version to compare with").leases;
                    let differ = view.leases.keys().chain(before.keys()).filter(|k| view.leases.get(k) != before.get(k));
                    for key in differ {
                        proptest::prop_assert!(changed.contains(key), "{key} changed in the view, unjournaled");
                    }
                }
                last = Some(view);
            }
        }
    }
}
