//! Re-packing B-trees built one insertion at a time.
//!
//! A `BTreeMap` filled in key order splits each full node in two and never fills the left half again, so a map
//! built that way (a full pass inserts 10,000 peers' objects in lease order) keeps its nodes a little over half
//! full: close to twice the memory its entries need. Collecting the entries anew builds the tree bottom-up with
//! full nodes. The entries are moved, not cloned; while it runs, the map's nodes are freed as the entries leave
//! them, so it takes about one entry array of extra memory, once.

use std::collections::{BTreeMap, BTreeSet};

/// Re-packs `map` into full nodes (same entries, same order).
pub fn repack_map<K: Ord, V>(map: &mut BTreeMap<K, V>) {
    *map = std::mem::take(map).into_iter().collect();
}

/// [`repack_map`] for a set.
pub fn repack_set<K: Ord>(set: &mut BTreeSet<K>) {
    *set = std::mem::take(set).into_iter().collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repacking_keeps_every_entry_in_order() {
        let mut map: BTreeMap<u32, String> = (0..1000).map(|i| (i, i.to_string())).collect();
        let before: Vec<(u32, String)> = map.clone().into_iter().collect();
        repack_map(&mut map);
        assert_eq!(map.into_iter().collect::<Vec<_>>(), before);
        let mut set: BTreeSet<u32> = (0..1000).rev().collect();
        repack_set(&mut set);
        assert_eq!(set.into_iter().collect::<Vec<_>>(), (0..1000).collect::<Vec<_>>());
    }
}
