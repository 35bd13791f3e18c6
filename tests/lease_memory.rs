//! What one peer's lease value costs on the heap. weftd holds a value per peer, 10,000 at the scale issue 14
//! targets (RSS under 30 MiB), so a few hundred bytes per lease are megabytes. This test binary counts every
//! allocation (its own global allocator, which is why it is a file of its own) while it parses vxlan lease values
//! the way the store does, and prints the bytes and allocations per lease.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use weft::lease::LeaseAttrs;

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
