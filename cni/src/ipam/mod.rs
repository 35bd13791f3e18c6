//! Address management. The built-in allocator keeps host-local's on-disk layout, so allocations survive restarts
//! and a node that ran flannel + host-local keeps its allocations; any other `ipam.type` is run as a plugin.

pub mod exec;
pub mod range;
pub mod store;

pub use range::Range;
pub use store::Store;
