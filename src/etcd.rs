//! The etcd registry: flannel's keys (`<prefix>/config`, `<prefix>/subnets/<key>`) over etcd v3.
//!
//! A thin layer: every call is one etcd request (or one transaction), bounded by a timeout, and values are parsed
//! into typed leases. A malformed value never fails a listing: the key still counts as taken, and the problem is
//! reported so the operator can fix it.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};

use crate::lease::{Lease, LeaseAttrs, SubnetKey};

pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
pub const DEFAULT_ENDPOINTS: &str = "http://127.0.0.1:4001,http://127.0.0.1:2379";

/// How long one request may take before it counts as failed (etcd is then treated as unreachable).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd at {endpoints}: no answer within {timeout:?}")]
    Timeout { endpoints: String, timeout: Duration },
    #[error("etcd at {endpoints}: the watch stream was closed")]
    WatchClosed { endpoints: String },
    #[error("invalid etcd endpoint {0:?}: expected a URL such as http://127.0.0.1:2379")]
    BadEndpoint(String),
}

/// A listing of the subnets prefix at one revision.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub leases: Vec<Lease>,
    /// Keys or values that could not be parsed, with the reason; shown to the operator, never fatal.
    pub problems: Vec<String>,
    pub revision: i64,
}

/// One change below the subnets prefix.
#[derive(Debug, Clone)]
pub enum Change {
    Put(Lease),
    Delete(SubnetKey),
    /// A key or value that could not be parsed.
    Problem(String),
}

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
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
        if let Some((name, password)) = user {
            options = options.with_user(name, password);
        }
        let joined = endpoints.join(",");
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|source| StoreError::Etcd { endpoints: joined.clone(), source })?;
        Ok(EtcdStore { client, prefix: prefix.trim_end_matches('/').to_string(), endpoints: joined })
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
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

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(StoreError::Etcd { endpoints: self.endpoints.clone(), source }),
            Err(_) => Err(StoreError::Timeout { endpoints: self.endpoints.clone(), timeout: REQUEST_TIMEOUT }),
        }
    }

    /// The network config text, or None when the key does not exist.
    pub async fn get_config(&self) -> Result<Option<String>, StoreError> {
        let mut client = self.client.clone();
        let resp = self.bounded(client.get(self.config_key(), None)).await?;
        Ok(resp.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    pub async fn put_config(&self, text: &str) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        self.bounded(client.put(self.config_key(), text, None)).await?;
        Ok(())
    }

    pub async fn list_leases(&self) -> Result<Listing, StoreError> {
        let mut client = self.client.clone();
        let resp = self.bounded(client.get(self.subnets_prefix(), Some(GetOptions::new().with_prefix()))).await?;
        let mut listing = Listing { revision: resp.header().map(|h| h.revision()).unwrap_or(0), ..Default::default() };
        for kv in resp.kvs() {
            match self.parse_kv(kv.key(), kv.value(), kv.lease(), kv.mod_revision()) {
                Ok(lease) => listing.leases.push(lease),
                Err(problem) => {
                    listing.leases.extend(problem.placeholder.map(|l| *l));
                    listing.problems.push(problem.msg);
                }
            }
        }
        Ok(listing)
    }

    /// Parses one key/value pair below the subnets prefix.
    fn parse_kv(&self, key: &[u8], value: &[u8], etcd_lease: i64, mod_revision: i64) -> Result<Lease, KvProblem> {
        let key = String::from_utf8_lossy(key);
        let name = key.strip_prefix(&self.subnets_prefix()).unwrap_or(&key);
        let subnet: SubnetKey =
            name.parse().map_err(|e| KvProblem { placeholder: None, msg: format!("ignoring {key}: {e}") })?;
        let text = String::from_utf8_lossy(value);
        let attrs = LeaseAttrs::from_json(&text).map_err(|e| KvProblem {
            // A key whose value is malformed still holds its subnet: keep it, with empty attributes, so the subnet
            // is never handed out twice; with no public IP it is never programmed as a peer.
            placeholder: Some(Box::new(Lease { key: subnet, attrs: LeaseAttrs::default(), etcd_lease, mod_revision })),
            msg: format!("lease {key}: {e} (value {text:?})"),
        })?;
        Ok(Lease { key: subnet, attrs, etcd_lease, mod_revision })
    }

    /// Claims `key` only if nobody holds it. Returns the new lease, or None when the key exists (lost a race).
    pub async fn create_lease(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let mut client = self.client.clone();
        let grant = self.bounded(client.lease_grant(ttl_secs(ttl), None)).await?;
        let path = self.lease_key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(path.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(path, attrs.to_json(), Some(PutOptions::new().with_lease(grant.id())))]);
        let resp = self.bounded(client.txn(txn)).await?;
        if !resp.succeeded() {
            let _ = self.bounded(client.lease_revoke(grant.id())).await;
            return Ok(None);
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(Some(Lease { key: *key, attrs: attrs.clone(), etcd_lease: grant.id(), mod_revision: revision }))
    }

    /// Writes new attributes into an existing lease we own, keeping its etcd lease (or none, for a reservation),
    /// as long as nobody changed it since we listed it. Returns None when it changed or vanished meanwhile.
    pub async fn renew_lease(
        &self,
        lease: &Lease,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
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
            return Ok(None);
        }
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(Some(Lease { key: lease.key, attrs: attrs.clone(), etcd_lease, mod_revision: revision }))
    }

    pub async fn delete_lease(&self, key: &SubnetKey) -> Result<bool, StoreError> {
        let mut client = self.client.clone();
        let resp = self.bounded(client.delete(self.lease_key(key), None)).await?;
        Ok(resp.deleted() > 0)
    }

    /// Writes a reservation: a lease key without an etcd lease, which never expires.
    pub async fn put_reservation(&self, key: &SubnetKey, attrs: &LeaseAttrs) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        self.bounded(client.put(self.lease_key(key), attrs.to_json(), None)).await?;
        Ok(())
    }

    /// Refreshes an etcd lease once. Returns its TTL in seconds; 0 means the lease no longer exists.
    pub async fn keep_alive_once(&self, id: i64) -> Result<i64, StoreError> {
        let mut client = self.client.clone();
        let (mut keeper, mut stream) = self.bounded(client.lease_keep_alive(id)).await?;
        self.bounded(keeper.keep_alive()).await?;
        let resp = self.bounded(stream.message()).await?;
        Ok(resp.map(|r| r.ttl()).unwrap_or(0))
    }

    /// Starts a watch of the subnets prefix from `revision` (inclusive).
    pub async fn watch_leases(&self, revision: i64) -> Result<LeaseWatch, StoreError> {
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_prefix().with_start_revision(revision);
        let stream = self.bounded(client.watch(self.subnets_prefix(), Some(options))).await?;
        Ok(LeaseWatch { stream, store: self.clone() })
    }
}

fn ttl_secs(ttl: Duration) -> i64 {
    ttl.as_secs().max(1) as i64
}

/// A key/value pair that could not be parsed.
struct KvProblem {
    /// The lease to keep in its place when only the value is bad (boxed: problems are rare, leases are large).
    placeholder: Option<Box<Lease>>,
    msg: String,
}

/// What a watch yields next.
#[derive(Debug)]
pub enum WatchBatch {
    Changes {
        changes: Vec<Change>,
        revision: i64,
    },
    /// The start revision was compacted away: relist and watch again from the listing's revision.
    Compacted {
        compact_revision: i64,
    },
}

pub struct LeaseWatch {
    stream: WatchStream,
    store: EtcdStore,
}

impl LeaseWatch {
    /// The next batch of changes. An error or the end of the stream means the watch is gone (etcd lost).
    pub async fn next(&mut self) -> Result<Option<WatchBatch>, StoreError> {
        loop {
            let resp = self
                .stream
                .message()
                .await
                .map_err(|source| StoreError::Etcd { endpoints: self.store.endpoints.clone(), source })?;
            let Some(resp) = resp else { return Ok(None) };
            if resp.canceled() || resp.compact_revision() != 0 {
                if resp.compact_revision() != 0 {
                    return Ok(Some(WatchBatch::Compacted { compact_revision: resp.compact_revision() }));
                }
                return Ok(None);
            }
            if resp.events().is_empty() {
                continue;
            }
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            let mut changes = Vec::new();
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => match self.store.parse_kv(kv.key(), kv.value(), kv.lease(), kv.mod_revision()) {
                        Ok(lease) => changes.push(Change::Put(lease)),
                        Err(problem) => {
                            changes.extend(problem.placeholder.map(|l| Change::Put(*l)));
                            changes.push(Change::Problem(problem.msg));
                        }
                    },
                    EventType::Delete => {
                        let key = String::from_utf8_lossy(kv.key());
                        let name = key.strip_prefix(&self.store.subnets_prefix()).unwrap_or(&key);
                        if let Ok(subnet) = name.parse() {
                            changes.push(Change::Delete(subnet));
                        }
                    }
                }
            }
            return Ok(Some(WatchBatch::Changes { changes, revision }));
        }
    }
}
