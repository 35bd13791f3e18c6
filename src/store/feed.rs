//! The watch every consumer uses: changes in order, and a full fresh listing (a resync) whenever following the
//! changes alone can no longer be trusted. Written once over [`LeaseStore`]'s raw watch, so every store resyncs
//! the same way.

use super::{Change, ChangeStream, LeaseStore, Listing, StoreError, WatchBatch};

/// What following the leases yields next.
#[derive(Debug)]
pub enum WatchEvent {
    /// Puts and deletes, in order, up to and including `revision`.
    Changes { changes: Vec<Change>, revision: i64 },
    /// Everything as of `listing.revision`, replacing whatever was known; changes continue after it.
    Resync { listing: Listing, cause: ResyncCause },
}

/// Why a resync happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncCause {
    /// The store dropped the history the watch needed (compaction): whatever happened then is only in a listing.
    Compacted { compact_revision: i64 },
    /// The watch broke (an outage, a lost connection). The history since may still exist, but the store may also
    /// have been restored from a backup meanwhile; a listing is right in both cases.
    Reconnected,
}

/// Follows the leases after a revision. Created by [`LeaseStore::watch`].
///
/// `next` never retries by itself: an error is returned at once and the caller decides how long to wait; the
/// following call starts over with a fresh listing.
pub struct LeaseFeed<S: LeaseStore> {
    store: S,
    /// The last revision whose changes were yielded.
    seen: i64,
    changes: Option<S::Changes>,
    /// Set when the next event must be a fresh listing.
    resync: Option<ResyncCause>,
}

impl<S: LeaseStore> LeaseFeed<S> {
    pub fn new(store: S, seen_revision: i64) -> LeaseFeed<S> {
        LeaseFeed { store, seen: seen_revision, changes: None, resync: None }
    }

    /// The revision everything yielded so far is current to.
    pub fn revision(&self) -> i64 {
        self.seen
    }

    pub async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        loop {
            if let Some(cause) = self.resync {
                // List first, then watch from just after the listing, so no change falls in between.
                let listing = self.store.list_leases().await?;
                let changes = self.store.watch_changes(listing.revision + 1).await?;
                self.seen = listing.revision;
                self.changes = Some(changes);
                self.resync = None;
                return Ok(WatchEvent::Resync { listing, cause });
            }
            let batch = match self.changes.as_mut() {
                Some(changes) => changes.next().await,
                None => match self.store.watch_changes(self.seen + 1).await {
                    Ok(changes) => self.changes.insert(changes).next().await,
                    Err(e) => Err(e),
                },
            };
            match batch {
                Ok(WatchBatch { changes, revision }) => {
                    self.seen = revision;
                    return Ok(WatchEvent::Changes { changes, revision });
                }
                Err(StoreError::Compacted { compact_revision, .. }) => {
                    self.changes = None;
                    self.resync = Some(ResyncCause::Compacted { compact_revision });
                }
                Err(e) => {
                    self.changes = None;
                    self.resync = Some(ResyncCause::Reconnected);
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    const VALUE: &str = r#"{"PublicIP":"198.18.0.1","PublicIPv6":null}"#;

    #[tokio::test]
    async fn changes_then_a_resync_after_compaction_then_changes_again() {
        let store = MemoryStore::new();
        let mut feed = store.watch(store.revision());
        store.put("10.244.1.0-24", VALUE);
        match feed.next().await.unwrap() {
            WatchEvent::Changes { changes, revision } => {
                assert_eq!((changes.len(), revision), (1, store.revision()));
            }
            other => panic!("{other:?}"),
        }
        // The feed falls behind (nobody polls it) while history is compacted.
        store.put("10.244.2.0-24", VALUE);
        store.put("10.244.3.0-24", VALUE);
        let compact_revision = store.compact();
        match feed.next().await.unwrap() {
            WatchEvent::Resync { listing, cause } => {
                assert_eq!(cause, ResyncCause::Compacted { compact_revision });
                assert_eq!(listing.leases.len(), 3);
                assert_eq!(feed.revision(), listing.revision);
            }
            other => panic!("{other:?}"),
        }
        store.delete("10.244.1.0-24");
        assert!(matches!(feed.next().await.unwrap(), WatchEvent::Changes { .. }));
    }

    #[tokio::test]
    async fn an_error_is_returned_at_once_and_the_next_call_resyncs() {
        let store = MemoryStore::new();
        let mut feed = store.watch(store.revision());
        store.fail_all();
        assert!(matches!(feed.next().await, Err(StoreError::Unavailable { .. })));
        assert!(matches!(feed.next().await, Err(StoreError::Unavailable { .. })), "still away");
        store.put("10.244.1.0-24", VALUE);
        store.restore();
        match feed.next().await.unwrap() {
            WatchEvent::Resync { listing, cause } => {
                assert_eq!(cause, ResyncCause::Reconnected);
                assert_eq!(listing.leases.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }
}
