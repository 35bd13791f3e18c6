//! weft's control plane: network config, subnet leases in etcd (flannel's schema), the subnet file, interface
//! selection and the reconcile loop that drives a data-plane backend from `weft-backends`. The lab and the
//! benchmarks are not part of it: they are the `weft-lab` crate.

pub mod alloc;
pub mod backoff;
pub mod claim_check;
pub mod cleanup;
pub mod cni_install;
pub mod cni_masq_keeper;
pub mod config;
pub mod config_watch;
pub mod controller;
#[cfg(test)]
mod controller_equivalence;
pub mod ctl;
pub mod daemon;
pub mod docker_opts;
pub mod doctor;
pub mod flags;
pub mod fuzz_checks;
pub mod http;
pub mod iface;
pub mod ipmath;
pub mod kube_args;
pub mod lease;
pub mod lease_holder;
pub mod logging;
pub mod own_lease;
pub mod pass_failures;
pub mod registry;
pub mod sd_notify;
pub mod status;
pub mod status_cmd;
pub mod store;
pub mod subnet_file;
pub mod term;
pub mod trust;
pub mod udp_plane;
pub mod value_grace;
pub mod weftd_client;
pub mod wg_plane;
