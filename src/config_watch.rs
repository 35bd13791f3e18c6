//! The network config after startup. weftd runs with the config it started with (changing the network under
//! running containers is a migration, not a reload); a config changed or deleted in etcd meanwhile is noticed,
//! logged once per change with what weftd does about it, and counted (`weft_config_changes_total`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{ConfigError, NetworkConfig};
use crate::http::Metrics;
use crate::store::LeaseStore;

/// How the stored config differs from the running one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigDrift {
    /// The same as the running config (again).
    Same,
    /// Another valid config.
    Changed,
    /// A config weftd would refuse.
    Invalid(ConfigError),
    /// No config at all.
    Deleted,
}

/// Compares what the store holds now with the running config.
pub fn drift(running: &NetworkConfig, stored: Option<&str>) -> ConfigDrift {
    match stored.map(NetworkConfig::validate) {
        None => ConfigDrift::Deleted,
        Some(Ok((config, _))) if config == *running => ConfigDrift::Same,
        Some(Ok(_)) => ConfigDrift::Changed,
        Some(Err(e)) => ConfigDrift::Invalid(e),
    }
}

/// Polls the stored config every `every` until shutdown; logs and counts each change of what it finds.
pub async fn run<S: LeaseStore>(
    store: S,
    running: NetworkConfig,
    every: Duration,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = ConfigDrift::Same;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = match store.get_config().await {
            Ok(text) => drift(&running, text.as_deref()),
            Err(e) => {
                debug!(error = %e, "cannot read the network config to compare it; trying again later");
                continue;
            }
        };
        if now == last {
            continue;
        }
        match &now {
            ConfigDrift::Same => info!("the network config in etcd matches the running one again"),
            ConfigDrift::Changed => warn!(
                "the network config in etcd changed; weftd keeps running with the config it started with \
                 (restart weftd to apply the new one; changing the network under running containers breaks them)"
            ),
            ConfigDrift::Invalid(e) => {
                warn!("the network config in etcd is now invalid ({e}); weftd keeps running with the config it started with")
            }
            ConfigDrift::Deleted => warn!(
                "the network config was deleted from etcd; weftd keeps running with the config it started with \
                 (a restarted weftd waits until one is written)"
            ),
        }
        if now != ConfigDrift::Same {
            metrics.config_changes.fetch_add(1, Ordering::Relaxed);
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

    #[test]
    fn drift_is_judged_on_the_parsed_config() {
        let running = NetworkConfig::parse(CONFIG).unwrap();
        let spaced = r#"{ "Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"} }"#;
        assert_eq!(drift(&running, Some(spaced)), ConfigDrift::Same, "whitespace is no change");
        assert_eq!(
            drift(&running, Some(r#"{"Network":"10.245.0.0/16","Backend":{"Type":"vxlan"}}"#)),
            ConfigDrift::Changed
        );
        assert!(matches!(drift(&running, Some(r#"{"Network":"0.0.0.0/0"}"#)), ConfigDrift::Invalid(_)));
        assert!(matches!(
            drift(&running, Some(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#)),
            ConfigDrift::Invalid(_)
        ));
        assert_eq!(drift(&running, None), ConfigDrift::Deleted);
    }

    #[tokio::test(start_paused = true)]
    async fn each_change_is_counted_once() {
        let store = MemoryStore::with_config(CONFIG);
        let metrics = Arc::new(Metrics::default());
        let (_stop, shutdown) = watch::channel(false);
        let running = NetworkConfig::parse(CONFIG).unwrap();
        tokio::spawn(run(store.clone(), running, Duration::from_secs(1), metrics.clone(), shutdown));
        let count = || metrics.config_changes.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(count(), 0);
        store.set_config(r#"{"Network":"10.245.0.0/16","Backend":{"Type":"vxlan"}}"#);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(count(), 1, "seen three times, counted once");
        store.set_config("{not json");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(count(), 2);
        store.set_config(CONFIG);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(count(), 2, "back to the running config is no change");
    }
}
