//! weft's test and benchmark tooling, kept out of the product: the control-plane library (`weft`) and the data
//! plane (`weft-backends`) contain no lab or benchmark code, and this crate is what links the two into labs.
//!
//! - [`lab`]: `weftctl lab`, hosts as network namespaces on a bridge underlay with a real etcd and one weftd per
//!   host, containers attached through the CNI plugin. The integration tests in `tests/` build their labs with it.
//! - [`bench`]: `weftctl bench`, the benchmark suite on lab namespaces.

pub mod bench;
pub mod lab;
