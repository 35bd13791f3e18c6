//! What one peer costs on the heap. weftd holds a value per peer, 10,000 at the scale issue 14 targets (RSS under
//! 30 MiB), so a few hundred bytes per peer are megabytes. This test binary counts every allocation (its own
//! global allocator, which is why it is a file of its own) while it parses vxlan lease values the way the store
//! does, and while the controller's full judgement builds what it keeps between passes, and prints the bytes per
//! peer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use weft::config::NetworkConfig;
use weft::lease::{Lease, LeaseAttrs, SubnetKey};
use weft::registry::LeaseSet;
use weft::trust::{judge_indexed, Screener, TrustPolicy};
use weft_backends::backend::AnyBackend;
use weft_backends::model::{KernelState, WEFT_ROUTE_PROTOCOL};
use weft_backends::vxlan::{VxlanBackend, VxlanConfig};
use weft_backends::{Family, Underlay};

/// The system allocator, counting the bytes and blocks that are live.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_BLOCKS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::SeqCst);
            LIVE_BLOCKS.fetch_add(1, Ordering::SeqCst);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::SeqCst);
        LIVE_BLOCKS.fetch_sub(1, Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_add(new_size, Ordering::SeqCst);
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::SeqCst);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The counts are the whole process's: the tests take turns, so one's allocations never land in another's.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Leases parsed per measurement: enough that one-off allocations (a growing buffer) vanish in the average.
const LEASES: usize = 2000;

/// A vxlan peer's value as flanneld writes it, each with its own VtepMAC.
fn vxlan_value(i: usize) -> String {
    format!(
        r#"{{"PublicIP":"198.18.{}.{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:{:02x}:{:02x}"}}}}"#,
        i / 250,
        i % 250 + 1,
        i / 256,
        i % 256
    )
}

#[test]
fn a_vxlan_lease_value_costs_under_256_heap_bytes() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let values: Vec<String> = (0..LEASES).map(vxlan_value).collect();
    let mut held: Vec<Arc<LeaseAttrs>> = Vec::with_capacity(LEASES);
    let (bytes_before, blocks_before) = (LIVE_BYTES.load(Ordering::SeqCst), LIVE_BLOCKS.load(Ordering::SeqCst));
    for value in &values {
        held.push(Arc::new(LeaseAttrs::from_json(value).unwrap()));
    }
    let bytes = (LIVE_BYTES.load(Ordering::SeqCst) - bytes_before) as f64 / LEASES as f64;
    let blocks = (LIVE_BLOCKS.load(Ordering::SeqCst) - blocks_before) as f64 / LEASES as f64;
    println!(
        "one vxlan lease value (Arc<LeaseAttrs>): {bytes:.1} heap bytes in {blocks:.1} allocations \
         (size_of LeaseAttrs {})",
        std::mem::size_of::<LeaseAttrs>()
    );
    // The Arc's counts and LeaseAttrs itself (under 100 bytes), "vxlan", and the 38 bytes of
    // `{"VNI":1,"VtepMAC":"0e:.."}` come to about 150. BackendData decoded as a serde_json map costs over 600 more
    // (a B-tree leaf with room for 11 keys and values, plus a String per key), so this fails if it comes back.
    assert!(bytes < 256.0, "a vxlan lease value costs {bytes:.1} heap bytes");
    assert!(blocks <= 3.0, "a vxlan lease value takes {blocks:.1} allocations");
    drop(held);
}

fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::SeqCst)
}

#[test]
fn what_a_full_pass_keeps_costs_under_600_heap_bytes_per_vxlan_peer() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let config = NetworkConfig::parse(r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#).unwrap();
    let policy =
        TrustPolicy { host_addresses: vec!["198.18.8.2/15".parse().unwrap()], ..TrustPolicy::outside(config).unwrap() };
    let underlay = Underlay::new("eth0", 2, 1500, vec!["198.18.8.2/15".parse().unwrap()]);
    let vxlan = VxlanBackend::prepare(
        VxlanConfig::default(),
        underlay,
        &[Family::V4],
        &KernelState::default(),
        WEFT_ROUTE_PROTOCOL,
    )
    .unwrap();
    let backend = AnyBackend::Vxlan(vxlan);
    let lease = |i: usize, value: &str| Lease {
        key: format!("10.{}.{}.0-24", i / 250, i % 250).parse::<SubnetKey>().unwrap(),
        attrs: Arc::new(LeaseAttrs::from_json(value).unwrap()),
        etcd_lease: 7,
        mod_revision: i as i64 + 1,
    };
    let own = lease(LEASES + 1, &vxlan_value(LEASES + 1));
    let mut set = LeaseSet::default();
    for i in 0..LEASES {
        let peer = lease(i, &vxlan_value(i));
        set.leases.insert(peer.key, peer);
    }
    set.leases.insert(own.key, own.clone());

    let before = live_bytes();
    let mut screener = Screener::default();
    let judged = judge_indexed(&policy, &backend, &own, &set, &mut screener);
    assert_eq!(judged.accepted.len(), LEASES, "every peer accepted: {:?}", judged.rejected.first());
    let index = judged.index;
    let bytes = (live_bytes() - before) as f64 / LEASES as f64;
    println!("what a full pass keeps (desired index and screen) per vxlan peer: {bytes:.1} heap bytes");
    // The index holds a route, a neighbour and an FDB entry per peer in re-packed maps, and the part (the lease's
    // shared value); the screen a verdict and the subnet and MAC claims. About 470 bytes in all; before device
    // names went inline, maps were re-packed and parts derived again, it was about 1,300.
    assert!(bytes < 600.0, "what a full pass keeps costs {bytes:.1} heap bytes per peer");
    drop((index, screener));
}
