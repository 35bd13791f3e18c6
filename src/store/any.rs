//! The store weftd runs on, chosen at startup: etcd, or the Kubernetes API with `--kube-subnet-mgr`. One enum
//! rather than a generic daemon, so everything above the seam is compiled once and reads the same for both.

use std::time::Duration;

use super::etcd::{EtcdChanges, EtcdStore};
use super::kubernetes::{KubeChanges, KubeStore};
use super::{ChangeStream, LeaseStore, Listing, StoreError, TimeToLive, WatchBatch};
use crate::lease::{Lease, LeaseAttrs, SubnetKey};

// One store per daemon, moved around rarely: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum AnyStore {
    Etcd(EtcdStore),
    Kube(KubeStore),
}

#[allow(clippy::large_enum_variant)]
pub enum AnyChanges {
    Etcd(EtcdChanges),
    Kube(KubeChanges),
}

impl AnyStore {
    /// Where the store is, for the log and the status page.
    pub fn endpoints(&self) -> String {
        match self {
            AnyStore::Etcd(s) => s.endpoints().to_string(),
            AnyStore::Kube(s) => s.server().to_string(),
        }
    }

    /// How to write a network config where weftd looks for it.
    pub fn config_hint(&self) -> String {
        match self {
            AnyStore::Etcd(s) => format!(
                "write one, e.g. etcdctl put {key} '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}' or weftctl config set",
                key = s.config_key()
            ),
            AnyStore::Kube(s) => format!(
                "write {} (kube-flannel's ConfigMap key net-conf.json), e.g. {{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}",
                s.net_config_path().display()
            ),
        }
    }

    /// Where the network config is, for messages.
    pub fn config_location(&self) -> String {
        match self {
            AnyStore::Etcd(s) => format!("etcd key {}", s.config_key()),
            AnyStore::Kube(s) => format!("file {}", s.net_config_path().display()),
        }
    }
}

macro_rules! each {
    ($store:expr, $s:ident => $body:expr) => {
        match $store {
            AnyStore::Etcd($s) => $body,
            AnyStore::Kube($s) => $body,
        }
    };
}

impl LeaseStore for AnyStore {
    type Changes = AnyChanges;

    async fn get_config(&self) -> Result<Option<String>, StoreError> {
        each!(self, s => s.get_config().await)
    }

    async fn put_config(&self, text: &str) -> Result<(), StoreError> {
        each!(self, s => s.put_config(text).await)
    }

    async fn list_leases(&self) -> Result<Listing, StoreError> {
        each!(self, s => s.list_leases().await)
    }

    async fn create_lease(&self, key: &SubnetKey, attrs: &LeaseAttrs, ttl: Duration) -> Result<Lease, StoreError> {
        each!(self, s => s.create_lease(key, attrs, ttl).await)
    }

    async fn renew_lease(&self, lease: &Lease, attrs: &LeaseAttrs, ttl: Duration) -> Result<Lease, StoreError> {
        each!(self, s => s.renew_lease(lease, attrs, ttl).await)
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<Duration, StoreError> {
        each!(self, s => s.keep_alive(lease).await)
    }

    async fn time_to_live(&self, lease: &Lease) -> Result<Option<TimeToLive>, StoreError> {
        each!(self, s => s.time_to_live(lease).await)
    }

    async fn delete_lease(&self, key: &SubnetKey) -> Result<(), StoreError> {
        each!(self, s => s.delete_lease(key).await)
    }

    async fn put_reservation(&self, key: &SubnetKey, attrs: &LeaseAttrs) -> Result<(), StoreError> {
        each!(self, s => s.put_reservation(key, attrs).await)
    }

    async fn watch_changes(&self, revision: i64) -> Result<AnyChanges, StoreError> {
        match self {
            AnyStore::Etcd(s) => s.watch_changes(revision).await.map(AnyChanges::Etcd),
            AnyStore::Kube(s) => s.watch_changes(revision).await.map(AnyChanges::Kube),
        }
    }

    async fn assigned_subnet(&self) -> Result<Option<SubnetKey>, StoreError> {
        each!(self, s => s.assigned_subnet().await)
    }
}

impl ChangeStream for AnyChanges {
    async fn next(&mut self) -> Result<WatchBatch, StoreError> {
        match self {
            AnyChanges::Etcd(c) => c.next().await,
            AnyChanges::Kube(c) => c.next().await,
        }
    }
}
