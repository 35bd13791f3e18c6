//! A grace period for rewritten peer leases.
//!
//! A peer lease whose value changes is programmed with its new value only once that value has stood for
//! [`GRACE`]. A host whose lease is overwritten by someone else writes its own value back at once (see
//! `own_lease`), so a single bad write is undone before any host acts on it: nobody's traffic goes to a forged
//! address or MAC, not even for the few milliseconds the repair takes. The price is that a real change of a
//! peer's value (a host that came back with a new VTEP MAC) reaches the kernel [`GRACE`] later. New leases and
//! deletions are not delayed: only a change of what a live key says.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::registry::{Journal, LeaseSet, Version};

/// How long a changed peer value must stand before it is programmed: far more than a host needs to write its
/// own value back (one etcd round trip), short next to any restart of a host.
pub const GRACE: Duration = Duration::from_secs(2);

/// A key held back: the value the view keeps for it (the lease, and its bad-value reason), and when its grace
/// ends.
type HeldBack = (SubnetKey, Lease, Option<String>, Instant);

/// What was programmed for each peer key, and the value waiting for its grace to pass.
#[derive(Debug, Default)]
pub struct ValueGrace {
    keys: BTreeMap<SubnetKey, Held>,
    /// The version of the set `keys` reflects, and our own key then; None: look at the whole set next time.
    seen: Option<(Version, SubnetKey)>,
    /// The keys held back now, with when their grace ends, and the same by end: a lease event visits only the
    /// keys whose grace ended, not every one held (under churn, thousands are).
    held: BTreeMap<SubnetKey, Instant>,
    ends: BTreeSet<(Instant, SubnetKey)>,
    /// The set as it is to be programmed, kept up to date key by key with a journal of its own: the keys whose
    /// value in it changed, a held-back or released value included. None before the first view.
    view: Option<Arc<LeaseSet>>,
}

#[derive(Debug)]
struct Held {
    /// The value programmed now (and whether it was a bad value, which is reported rather than programmed).
    programmed: Lease,
    programmed_bad: Option<String>,
    /// A different value seen since, and when it was first seen.
    pending: Option<(Arc<LeaseAttrs>, Instant)>,
}

impl Held {
    fn new(lease: &Lease, bad: Option<&String>) -> Held {
        Held { programmed: lease.clone(), programmed_bad: bad.cloned(), pending: None }
    }

    /// Takes in the key's value as of `now`; returns when its grace ends if it is held back.
    fn see(&mut self, lease: &Lease, bad: Option<&String>, now: Instant) -> Option<Instant> {
        // Leases share their value with the set they came from: an unchanged lease compares by pointer.
        if self.programmed.attrs == lease.attrs && self.programmed_bad.as_ref() == bad {
            if self.programmed.mod_revision != lease.mod_revision {
                self.programmed = lease.clone();
            }
            self.pending = None;
            return None;
        }
        let since = match &self.pending {
            Some((attrs, since)) if *attrs == lease.attrs => *since,
            _ => now,
        };
        if now >= since + GRACE {
            *self = Held::new(lease, bad);
            return None;
        }
        self.pending = Some((lease.attrs.clone(), since));
        Some(since + GRACE)
    }
}

impl ValueGrace {
    /// The lease set to program at `now`: `set`, except that a key whose value changed less than [`GRACE`] ago
    /// keeps the value programmed before. Also returns when a held value's grace ends (look again then).
    ///
    /// Runs on every change of the set: it visits the keys the set's journal says changed and the held ones
    /// whose grace ended, or, when the journal cannot tell, walks the set and the held keys side by side (both
    /// in key order). The view is changed in place (copy-on-write, while a consumer holds the last one) and
    /// journals what it changed, so its consumers visit only those keys too; a walk starts it afresh, on a new
    /// line.
    pub fn view(&mut self, set: &LeaseSet, own: &SubnetKey, now: Instant) -> (Arc<LeaseSet>, Option<Instant>) {
        let changed = self.seen.filter(|(_, seen_own)| seen_own == own).and_then(|(v, _)| set.changed_since(Some(v)));
        self.seen = set.version().map(|v| (v, *own));
        let view = match (changed, self.view.take()) {
            (Some(keys), Some(mut view)) => {
                let expired = self.ends.iter().take_while(|(end, _)| *end <= now).map(|(_, key)| *key);
                let visit: BTreeSet<SubnetKey> = keys.iter().copied().chain(expired).collect();
                let v = Arc::make_mut(&mut view);
                v.journal.next_batch();
                for key in &visit {
                    let (lease, bad) = if key == own {
                        (set.leases.get(key).cloned(), set.bad_values.get(key).cloned())
                    } else {
                        self.visit(set, *key, now)
                    };
                    update_entry(v, *key, lease.as_ref(), bad.as_ref());
                }
                if v.bad_keys != set.bad_keys {
                    v.bad_keys = set.bad_keys.clone();
                }
                v.revision = set.revision;
                view
            }
            _ => {
                let mut held_back = Vec::new();
                self.walk(set, own, now, &mut held_back);
                let mut view = LeaseSet { journal: Journal::begin(), ..set.clone() };
                self.held.clear();
                self.ends.clear();
                for (key, lease, bad, end) in held_back {
                    update_entry(&mut view, key, Some(&lease), bad.as_ref());
                    self.hold(key, end);
                }
                Arc::new(view)
            }
        };
        self.view = Some(view.clone());
        (view, self.ends.first().map(|(end, _)| *end))
    }

    /// Takes in the set's value of a peer's `key`; returns what the view is to say of it.
    fn visit(&mut self, set: &LeaseSet, key: SubnetKey, now: Instant) -> (Option<Lease>, Option<String>) {
        if let Some(end) = self.held.remove(&key) {
            self.ends.remove(&(end, key));
        }
        let Some(lease) = set.leases.get(&key) else {
            self.keys.remove(&key);
            return (None, None);
        };
        let bad = set.bad_values.get(&key);
        let Some(h) = self.keys.get_mut(&key) else {
            self.keys.insert(key, Held::new(lease, bad));
            return (Some(lease.clone()), bad.cloned());
        };
        match h.see(lease, bad, now) {
            Some(end) => {
                let shown = (Some(h.programmed.clone()), h.programmed_bad.clone());
                self.hold(key, end);
                shown
            }
            None => (Some(lease.clone()), bad.cloned()),
        }
    }

    fn hold(&mut self, key: SubnetKey, end: Instant) {
        self.held.insert(key, end);
        self.ends.insert((end, key));
    }

    /// [`view`](Self::view)'s visit of every key.
    fn walk(&mut self, set: &LeaseSet, own: &SubnetKey, now: Instant, held_back: &mut Vec<HeldBack>) {
        let mut new: Vec<&Lease> = Vec::new();
        let mut gone: Vec<SubnetKey> = Vec::new();
        let mut leases = set.leases.iter().filter(|(key, _)| *key != own).peekable();
        let mut held = self.keys.iter_mut().peekable();
        loop {
            let order = match (leases.peek(), held.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((key, _)), Some((held_key, _))) => key.cmp(held_key),
            };
            match order {
                Ordering::Less => new.extend(leases.next().map(|(_, lease)| lease)),
                Ordering::Greater => gone.extend(held.next().map(|(key, _)| *key)),
                Ordering::Equal => {
                    let (Some((key, lease)), Some((_, h))) = (leases.next(), held.next()) else { break };
                    let bad = set.bad_values.get(key);
                    if let Some(end) = h.see(lease, bad, now) {
                        held_back.push((*key, h.programmed.clone(), h.programmed_bad.clone(), end));
                    }
                }
            }
        }
        for key in gone {
            self.keys.remove(&key);
        }
        for lease in new {
            self.keys.insert(lease.key, Held::new(lease, set.bad_values.get(&lease.key)));
        }
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
