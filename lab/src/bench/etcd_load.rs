//! Writing synthetic leases into the lab's etcd, fast and from inside the lab: the client lives on an
//! [`NsRuntime`] in the underlay namespace and talks to etcd on that namespace's loopback.

use std::time::{Duration, Instant};

use etcd_client::{Client, Txn, TxnOp};

use super::error::{fail, Context, Result};
use super::netns::NsRuntime;
use super::synthetic;

/// Puts per transaction when loading many leases (etcd's default limit is 128 operations per txn).
pub const TXN_BATCH: usize = 128;

/// How a paced run went.
#[derive(Debug, Clone)]
pub struct Paced {
    pub sent: usize,
    pub elapsed: Duration,
    /// When the last put was acknowledged.
    pub last_ack: Instant,
}

pub struct LeaseLoader {
    runtime: NsRuntime,
    client: Client,
    prefix: String,
}

impl LeaseLoader {
    /// Connects to etcd on the loopback of namespace `underlay_ns`.
    pub async fn connect(underlay_ns: &str, prefix: &str) -> Result<LeaseLoader> {
        let runtime = NsRuntime::start(underlay_ns)?;
        let client = runtime
            .run(async { Client::connect(["http://127.0.0.1:2379"], None).await })
            .await?
            .context("connecting to the lab's etcd")?;
        Ok(LeaseLoader { runtime, client, prefix: prefix.to_string() })
    }

    /// Writes the leases of peers `range` (generation 1) in transactions of [`TXN_BATCH`] puts.
    pub async fn put_peers(&self, range: std::ops::Range<usize>) -> Result<Duration> {
        let kvs: Vec<(String, String)> = range.map(|i| synthetic::lease(&self.prefix, i, 1)).collect();
        let mut client = self.client.clone();
        self.runtime
            .run(async move {
                let started = Instant::now();
                for chunk in kvs.chunks(TXN_BATCH) {
                    let ops: Vec<TxnOp> = chunk.iter().map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None)).collect();
                    client.txn(Txn::new().and_then(ops)).await.context("writing leases")?;
                }
                Ok(started.elapsed())
            })
            .await?
    }

    /// Puts one lease; returns the instants just before the request left and when etcd acknowledged it.
    pub async fn put_one(&self, key: String, value: String) -> Result<(Instant, Instant)> {
        let mut client = self.client.clone();
        self.runtime
            .run(async move {
                let sent = Instant::now();
                client.put(key, value, None).await.context("putting a lease")?;
                Ok((sent, Instant::now()))
            })
            .await?
    }

    /// Puts `kvs` one per request at `rate` puts per second: every 10 ms the puts due by then go out
    /// concurrently, so a slow acknowledgement does not lower the offered rate.
    pub async fn put_paced(&self, kvs: Vec<(String, String)>, rate: usize) -> Result<Paced> {
        if rate == 0 {
            return fail("the put rate must be positive");
        }
        let client = self.client.clone();
        self.runtime
            .run(async move {
                let tick = Duration::from_millis(10);
                let started = Instant::now();
                let mut ticker = tokio::time::interval(tick);
                let mut sent = 0;
                let mut last_ack = started;
                while sent < kvs.len() {
                    ticker.tick().await;
                    let due =
                        ((started.elapsed().as_secs_f64() * rate as f64).ceil() as usize).clamp(sent + 1, kvs.len());
                    let puts = kvs[sent..due].iter().map(|(k, v)| {
                        let mut client = client.clone();
                        let (k, v) = (k.clone(), v.clone());
                        async move { client.put(k, v, None).await }
                    });
                    for result in futures_util::future::join_all(puts).await {
                        result.context("putting a lease")?;
                    }
                    last_ack = Instant::now();
                    sent = due;
                }
                Ok(Paced { sent, elapsed: started.elapsed(), last_ack })
            })
            .await?
    }
}
