//! The etcd store: flannel's keys (`<prefix>/config`, `<prefix>/subnets/<key>`) over etcd v3.
//!
//! A thin layer: every call is one etcd request (or one transaction), bounded by a timeout, and values are parsed
//! into typed leases. A malformed value never fails a listing: the key still counts as taken, and the problem is
//! reported so the operator can fix it.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, ResponseHeader, Txn,
    TxnOp, WatchOptions, WatchStream,
};

use super::etcd_tls::{EtcdTls, Rejection};
use super::{Change, ChangeStream, LeaseStore, Listing, StoreError, StoredLease, TimeToLive, WatchBatch};
use crate::lease::{Lease, LeaseAttrs, SubnetKey};

pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
pub const DEFAULT_ENDPOINTS: &str = "http://127.0.0.1:4001,http://127.0.0.1:2379";

/// How long one request may take before it counts as failed (etcd is then treated as unreachable).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// TLS without a client certificate: a connection etcd closes right after the handshake then most likely
    /// means it wants one (TLS 1.3 reports that after the handshake, and not always with an alert).
    tls_without_client_cert: bool,
    prefix: String,
    endpoints: String,
}

impl EtcdStore {
    /// Connects lazily: a down etcd is only noticed by the first request, which then fails with a clear error.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        user: Option<(String, String)>,
    ) -> Result<EtcdStore, StoreError> {
        Self::connect_secured(endpoints, prefix, user, &EtcdTls::default()).await
    }

    /// [`connect`](Self::connect) with TLS: `https://` endpoints, a CA file (else the system's CAs) and a client
    /// certificate. User name and password travel inside the TLS connection.
    pub async fn connect_secured(
        endpoints: &[String],
        prefix: &str,
        user: Option<(String, String)>,
        tls: &EtcdTls,
    ) -> Result<EtcdStore, StoreError> {
        for e in endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() < 10 {
                return Err(StoreError::BadEndpoint(e.clone()));
            }
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            // HTTP/2 pings notice a dead connection (e.g. a partition) on long-lived watch streams.
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = tls.options(endpoints)? {
            options = options.with_tls(tls);
        }
        if let Some((name, password)) = user {
            options = options.with_user(name, password);
        }
        let joined = endpoints.join(",");
        let tls_without_client_cert = endpoints.iter().any(|e| e.starts_with("https://")) && tls.cert_file.is_none();
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|source| failure(format!("etcd at {joined}"), source, tls_without_client_cert))?;
        Ok(EtcdStore {
            client,
            tls_without_client_cert,
            prefix: prefix.trim_end_matches('/').to_string(),
            endpoints: joined,
        })
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Names the store in errors.
    fn name(&self) -> String {
        format!("etcd at {}", self.endpoints)
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub fn lease_key(&self, key: &SubnetKey) -> String {
        format!("{}{key}", self.subnets_prefix())
    }

    fn unavailable(&self, source: etcd_client::Error) -> StoreError {
        failure(self.name(), source, self.tls_without_client_cert)
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(self.unavailable(source)),
            Err(_) => Err(StoreError::Timeout { store: self.name(), timeout: REQUEST_TIMEOUT }),
        }
    }

    /// The revision a response was answered at; etcd puts a header on every response.
    fn revision(&self, header: Option<&ResponseHeader>) -> Result<i64, StoreError> {
        header
            .map(|h| h.revision())
            .ok_or_else(|| StoreError::Malformed { store: self.name(), what: "a response without a header" })
    }

    fn stored<'a>(&self, kv: &'a KeyValue, path: &'a str) -> StoredLease<'a> {
        StoredLease {
            path,
            name: self.lease_name(path),
            value: kv.value(),
            ttl_lease: kv.lease(),
            mod_revision: kv.mod_revision(),
        }
    }

    fn lease_name<'a>(&self, path: &'a str) -> &'a str {
        path.strip_prefix(&self.subnets_prefix()).unwrap_or(path)
    }

    /// The TTL etcd lease `id` was granted and the time it has left; None when it no longer exists.
    pub async fn lease_time_to_live(&self, id: i64) -> Result<Option<TimeToLive>, StoreError> {
        let mut client = self.client.clone();
        let resp = self.bounded(client.lease_time_to_live(id, None)).await?;
        // etcd answers -1 for a lease that expired or never existed.
        if resp.ttl() < 0 {
            return Ok(None);
        }
        let secs = |s: i64| Duration::from_secs(s.max(0) as u64);
        Ok(Some(TimeToLive { remaining: secs(resp.ttl()), granted: secs(resp.granted_ttl()) }))
    }

    /// Refreshes an etcd lease once. Returns its TTL in seconds; 0 means the lease no longer exists.
    async fn keep_alive_once(&self, id: i64) -> Result<i64, StoreError> {
        let mut client = self.client.clone();
        let (mut keeper, mut stream) = self.bounded(client.lease_keep_alive(id)).await?;
        self.bounded(keeper.keep_alive()).await?;
        let resp = self.bounded(stream.message()).await?;
        Ok(resp.map(|r| r.ttl()).unwrap_or(0))
    }
}

/// An etcd error: a rejected handshake or login says which part to check; anything else means unreachable.
fn failure(store: String, source: etcd_client::Error, tls_without_client_cert: bool) -> StoreError {
    let why = Rejection::classify(&source)
        .or_else(|| (tls_without_client_cert && Rejection::closed_early(&source)).then_some(Rejection::ClosedAfterTls));
    match why {
        Some(why) => StoreError::Rejected { store, why, source: source.into() },
        None => StoreError::Unavailable { store, source: source.into() },
    }
}

impl LeaseStore for EtcdStore {
    type Changes = EtcdChanges;

    async fn get_config(&self) -> Result<Option<String>, StoreError> {
        let mut client = self.client.clone();
        let resp = self.bounded(client.get(self.config_key(), None)).await?;
        Ok(resp.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    async fn put_config(&self, text: &str) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        self.bounded(client.put(self.config_key(), text, None)).await?;
        Ok(())
    }

    async fn list_leases(&self) -> Result<Listing, StoreError> {
        let mut client = self.client.clone();
        let resp = self.bounded(client.get(self.subnets_prefix(), Some(GetOptions::new().with_prefix()))).await?;
        let mut listing = Listing { revision: self.revision(resp.header())?, ..Default::default() };
        for kv in resp.kvs() {
            let path = String::from_utf8_lossy(kv.key());
            listing.add(self.stored(kv, &path));
        }
        Ok(listing)
    }

    async fn create_lease(&self, key: &SubnetKey, attrs: &LeaseAttrs, ttl: Duration) -> Result<Lease, StoreError> {
        let mut client = self.client.clone();
        let grant = self.bounded(client.lease_grant(ttl_secs(ttl), None)).await?;
        let path = self.lease_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(path.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(path, attrs.to_json(), Some(PutOptions::new().with_lease(grant.id())))]);
        let resp = self.bounded(client.txn(txn)).await?;
        if !resp.succeeded() {
            let _ = self.bounded(client.lease_revoke(grant.id())).await;
            return Err(StoreError::Conflict { key: *key });
        }
        let revision = self.revision(resp.header())?;
        Ok(Lease { key: *key, attrs: attrs.clone().into(), etcd_lease: grant.id(), mod_revision: revision })
    }

    async fn renew_lease(&self, lease: &Lease, attrs: &LeaseAttrs, ttl: Duration) -> Result<Lease, StoreError> {
        let mut client = self.client.clone();
        let etcd_lease = if lease.is_reservation() {
            0
        } else if self.keep_alive_once(lease.etcd_lease).await? > 0 {
            lease.etcd_lease
        } else {
            self.bounded(client.lease_grant(ttl_secs(ttl), None)).await?.id()
        };
        let path = self.lease_key(&lease.key);
        let options = (etcd_lease != 0).then(|| PutOptions::new().with_lease(etcd_lease));
        let txn = Txn::new()
            .when([Compare::mod_revision(path.clone(), CompareOp::Equal, lease.mod_revision)])
            .and_then([TxnOp::put(path, attrs.to_json(), options)]);
        let resp = self.bounded(client.txn(txn)).await?;
        if !resp.succeeded() {
            return Err(StoreError::Conflict { key: lease.key });
        }
        let revision = self.revision(resp.header())?;
        Ok(Lease { key: lease.key, attrs: attrs.clone().into(), etcd_lease, mod_revision: revision })
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<Duration, StoreError> {
        match self.keep_alive_once(lease.etcd_lease).await? {
            ttl if ttl > 0 => Ok(Duration::from_secs(ttl as u64)),
            _ => Err(StoreError::NotFound { key: lease.key }),
        }
    }

    async fn time_to_live(&self, lease: &Lease) -> Result<Option<TimeToLive>, StoreError> {
        if lease.is_reservation() {
            return Ok(None);
        }
        self.lease_time_to_live(lease.etcd_lease).await
    }

    async fn delete_lease(&self, key: &SubnetKey) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        let resp = self.bounded(client.delete(self.lease_key(key), None)).await?;
        if resp.deleted() == 0 {
            return Err(StoreError::NotFound { key: *key });
        }
        Ok(())
    }

    async fn put_reservation(&self, key: &SubnetKey, attrs: &LeaseAttrs) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        self.bounded(client.put(self.lease_key(key), attrs.to_json(), None)).await?;
        Ok(())
    }

    async fn watch_changes(&self, revision: i64) -> Result<EtcdChanges, StoreError> {
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_prefix().with_start_revision(revision);
        let stream = self.bounded(client.watch(self.subnets_prefix(), Some(options))).await?;
        Ok(EtcdChanges { stream, store: self.clone() })
    }
}

fn ttl_secs(ttl: Duration) -> i64 {
    ttl.as_secs().max(1) as i64
}

/// A watch of the subnets prefix.
pub struct EtcdChanges {
    stream: WatchStream,
    store: EtcdStore,
}

impl ChangeStream for EtcdChanges {
    async fn next(&mut self) -> Result<WatchBatch, StoreError> {
        let store = &self.store;
        loop {
            let resp = self.stream.message().await.map_err(|source| store.unavailable(source))?;
            let Some(resp) = resp else { return Err(StoreError::WatchClosed { store: store.name() }) };
            if resp.compact_revision() != 0 {
                return Err(StoreError::Compacted { store: store.name(), compact_revision: resp.compact_revision() });
            }
            if resp.canceled() {
                return Err(StoreError::WatchClosed { store: store.name() });
            }
            if resp.events().is_empty() {
                continue;
            }
            let revision = store.revision(resp.header())?;
            let mut changes = Vec::new();
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let path = String::from_utf8_lossy(kv.key());
                match event.event_type() {
                    EventType::Put => changes.extend(Change::put(store.stored(kv, &path))),
                    EventType::Delete => changes.extend(Change::delete(store.lease_name(&path))),
                }
            }
            return Ok(WatchBatch { changes, revision });
        }
    }
}
