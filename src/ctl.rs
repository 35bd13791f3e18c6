//! weftctl's operator commands against etcd: the network config, leases and reservations.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use ipnetwork::IpNetwork;

use std::collections::BTreeMap;

use weft_backends::trust::RejectReason;
use weft_backends::Family;

use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::registry::LeaseSet;
use crate::store::etcd::{EtcdStore, DEFAULT_ENDPOINTS, DEFAULT_PREFIX};
use crate::store::etcd_tls::EtcdTls;
use crate::store::LeaseStore;
use crate::trust::{self, TrustPolicy};

#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated
    #[arg(long, global = true, env = "WEFTCTL_ETCD_ENDPOINTS", value_delimiter = ',', default_value = DEFAULT_ENDPOINTS)]
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix
    #[arg(long, global = true, env = "WEFTCTL_ETCD_PREFIX", default_value = DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// etcd user name (with --etcd-password)
    #[arg(long, global = true, env = "WEFTCTL_ETCD_USERNAME", requires = "etcd_password")]
    pub etcd_username: Option<String>,
    /// etcd password
    #[arg(long, global = true, env = "WEFTCTL_ETCD_PASSWORD", hide_env_values = true, requires = "etcd_username")]
    pub etcd_password: Option<String>,
    /// CA certificate (PEM) for etcd's server certificate; without it https:// uses the system's CAs
    #[arg(long, global = true, env = "WEFTCTL_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// client certificate (PEM) for etcd (with --etcd-keyfile)
    #[arg(long, global = true, env = "WEFTCTL_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// private key (PEM) of --etcd-certfile
    #[arg(long, global = true, env = "WEFTCTL_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ConfigCommand {
    /// Print the network config stored in etcd
    Get,
    /// Validate and store the network config: JSON text, @FILE, or - for stdin
    Set { config: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum LeaseCommand {
    /// List every lease and reservation
    List {
        /// print one JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Delete a lease (its host re-acquires; weftd prefers the same subnet)
    Delete {
        /// the leased subnet, e.g. 10.244.9.0/24
        subnet: IpNetwork,
    },
    /// Reserve a subnet for a host: a lease without TTL that never expires
    Reserve {
        /// the subnet, e.g. 10.244.9.0/24 (its length must be the config's SubnetLen)
        subnet: IpNetwork,
        /// the public IP of the host that gets it (weftd matches its own public IP)
        #[arg(long)]
        public_ip: Ipv4Addr,
        /// overwrite a live lease that holds the subnet (its host loses the subnet and must re-acquire)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("no network config at {0}")]
    NoConfig(String),
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

pub(crate) async fn store(etcd: &EtcdArgs) -> Result<EtcdStore, CtlError> {
    let user = etcd.etcd_username.clone().zip(etcd.etcd_password.clone());
    let tls = EtcdTls {
        ca_file: etcd.etcd_cafile.clone(),
        cert_file: etcd.etcd_certfile.clone(),
        key_file: etcd.etcd_keyfile.clone(),
    };
    Ok(EtcdStore::connect_secured(&etcd.etcd_endpoints, &etcd.etcd_prefix, user, &tls).await?)
}

pub async fn config(etcd: &EtcdArgs, cmd: &ConfigCommand) -> Result<(), CtlError> {
    let store = store(etcd).await?;
    match cmd {
        ConfigCommand::Get => {
            let text = store.get_config().await?.ok_or_else(|| CtlError::NoConfig(store.config_key()))?;
            println!("{}", text.trim());
        }
        ConfigCommand::Set { config } => {
            let text = read_argument(config)?;
            let (parsed, _) = NetworkConfig::validate(&text)?;
            for w in &parsed.warnings {
                eprintln!("warning: {w}");
            }
            store.put_config(text.trim()).await?;
            eprintln!("stored the network config at {}", store.config_key());
        }
    }
    Ok(())
}

/// JSON text, `@path`, or `-` for stdin; never more than the config size limit (so `@/dev/zero` ends).
fn read_argument(arg: &str) -> Result<String, CtlError> {
    let (name, reader): (&str, Box<dyn Read>) = if arg == "-" {
        ("stdin", Box::new(std::io::stdin()))
    } else if let Some(path) = arg.strip_prefix('@') {
        (path, Box::new(std::fs::File::open(path).map_err(|e| CtlError::Read(path.into(), e))?))
    } else {
        return Ok(arg.to_string());
    };
    read_limited(name, reader)
}

fn read_limited(name: &str, reader: impl Read) -> Result<String, CtlError> {
    let mut bytes = Vec::new();
    let limit = crate::config::MAX_CONFIG_BYTES;
    reader.take(limit as u64 + 1).read_to_end(&mut bytes).map_err(|e| CtlError::Read(name.into(), e))?;
    if bytes.len() > limit {
        return Err(crate::config::ConfigError::TooLarge { limit }.into());
    }
    String::from_utf8(bytes)
        .map_err(|e| CtlError::Read(name.into(), std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

fn key_for(subnet: IpNetwork) -> Result<SubnetKey, CtlError> {
    if subnet.ip() != subnet.network() {
        return Err(CtlError::Invalid(format!(
            "{subnet} has host bits set; use {}/{}",
            subnet.network(),
            subnet.prefix()
        )));
    }
    Ok(match subnet {
        IpNetwork::V4(_) => SubnetKey::new(Some(subnet), None),
        IpNetwork::V6(_) => SubnetKey::new(None, Some(subnet)),
    })
}

pub async fn lease(etcd: &EtcdArgs, cmd: &LeaseCommand) -> Result<(), CtlError> {
    let store = store(etcd).await?;
    match cmd {
        LeaseCommand::List { json } => {
            let listing = store.list_leases().await?;
            for p in &listing.problems {
                eprintln!("warning: {p}");
            }
            let rejected = judge_listing(&store, &listing).await;
            if *json {
                for l in &listing.leases {
                    println!("{}", lease_json(l, rejected.get(&l.key.to_string())));
                }
            } else {
                print!("{}", lease_table(&listing.leases, &rejected));
            }
        }
        LeaseCommand::Delete { subnet } => {
            let key = find_key(&store, *subnet).await?;
            store.delete_lease(&key).await?;
            eprintln!("deleted {}", store.lease_key(&key));
        }
        LeaseCommand::Reserve { subnet, public_ip, force } => {
            let key = key_for(*subnet)?;
            let config = store.get_config().await?.ok_or_else(|| CtlError::NoConfig(store.config_key()))?;
            let config = NetworkConfig::parse(&config)?;
            if !crate::alloc::fits(&config, &key) {
                return Err(CtlError::Invalid(format!(
                    "{subnet} does not fit the network config (wrong length, or outside SubnetMin..SubnetMax)"
                )));
            }
            let listing = store.list_leases().await?;
            let check = check_reservation(&listing.leases, &key, *public_ip);
            if let Some(holder) = check.held_by {
                if !*force {
                    return Err(CtlError::Invalid(format!(
                        "{holder} is a live lease over {subnet}; reserving would take the subnet from its host \
                         (use --force to do it anyway)"
                    )));
                }
                eprintln!("warning: overwriting the live lease {holder} (--force)");
            }
            if let Some(current) = check.ip_lives_at {
                eprintln!(
                    "warning: {public_ip} is the public IP of the live lease {current}; its host moves to {key} at its \
                     next restart and releases {current} then"
                );
            }
            let attrs = LeaseAttrs { public_ip: Some(*public_ip), ..Default::default() };
            store.put_reservation(&key, &attrs).await?;
            eprintln!("reserved {key} for {public_ip}");
        }
    }
    Ok(())
}

/// What a reservation of `key` for `public_ip` would do to live hosts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReservationCheck {
    /// A live (TTL) lease over the subnet, which the reservation would overwrite or overlap.
    pub held_by: Option<SubnetKey>,
    /// A live lease of the host with that public IP (the host that will move to the reservation).
    pub ip_lives_at: Option<SubnetKey>,
}

pub fn check_reservation(leases: &[Lease], key: &SubnetKey, public_ip: Ipv4Addr) -> ReservationCheck {
    let live = || leases.iter().filter(|l| !l.is_reservation());
    let overlaps = |l: &&Lease| l.key.subnets().any(|s| key.subnets().any(|k| crate::ipmath::overlaps(s, k)));
    ReservationCheck {
        held_by: live().find(overlaps).map(|l| l.key),
        ip_lives_at: live().find(|l| l.attrs.public_ip == Some(public_ip) && l.key != *key).map(|l| l.key),
    }
}

/// The full key of the lease holding `subnet` (dual-stack keys carry both families).
async fn find_key(store: &EtcdStore, subnet: IpNetwork) -> Result<SubnetKey, CtlError> {
    let listing = store.list_leases().await?;
    listing
        .leases
        .iter()
        .map(|l| l.key)
        .find(|k| k.subnets().any(|s| s == subnet))
        .ok_or_else(|| CtlError::Invalid(format!("no lease holds {subnet}")))
}

/// Why each lease would not be programmed by a host, judged as weftd does (without a host's own lease and
/// addresses), by lease name. Empty, with a warning, when there is no valid network config to judge against.
async fn judge_listing(store: &EtcdStore, listing: &crate::store::Listing) -> BTreeMap<String, RejectReason> {
    let policy = match store.get_config().await {
        Ok(Some(text)) => NetworkConfig::parse(&text)
            .map_err(|e| e.to_string())
            .and_then(|c| TrustPolicy::outside(c).map_err(|e| e.to_string())),
        Ok(None) => Err("there is no network config".to_string()),
        Err(e) => Err(e.to_string()),
    };
    match policy {
        Ok(policy) => {
            let set = LeaseSet::from_listing(listing);
            trust::screen(&policy, None, &set).rejected.into_iter().map(|r| (r.name, r.reason)).collect()
        }
        Err(why) => {
            eprintln!("warning: leases are not checked: {why}");
            BTreeMap::new()
        }
    }
}

/// One lease as JSON; `skipped` says why hosts do not program it (null when they do).
pub fn lease_json(l: &Lease, skipped: Option<&RejectReason>) -> String {
    serde_json::json!({
        "subnet": l.key.to_string(),
        "etcdLease": l.etcd_lease,
        "reservation": l.is_reservation(),
        "value": serde_json::from_str::<serde_json::Value>(&l.attrs.to_json()).unwrap_or_default(),
        "skipped": skipped.map(|r| serde_json::json!({"reason": r.name(), "detail": r.to_string()})),
    })
    .to_string()
}

/// The lease table. A lease hosts do not program says why in its last column; keys that are no lease at all
/// (bad keys) get a row of their own.
pub fn lease_table(leases: &[Lease], rejected: &BTreeMap<String, RejectReason>) -> String {
    let mut out = format!(
        "{:<36} {:<16} {:<8} {:<18} {:<22} {}\n",
        "SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES", "STATUS"
    );
    for l in leases {
        let data = l.attrs.backend_data(Family::V4);
        let mac = data.as_ref().and_then(|d| d.get("VtepMAC")).and_then(|m| m.as_str()).unwrap_or("-");
        let ip = l.attrs.public_ip.map(IpAddr::V4).or(l.attrs.public_ipv6.map(IpAddr::V6));
        let name = l.key.to_string();
        let status = match rejected.get(&name) {
            // A reservation nobody has taken yet has no backend data: it is waiting, not wrong.
            Some(RejectReason::WrongBackendType { theirs, .. }) if l.is_reservation() && theirs.is_empty() => {
                "reserved, not taken yet".to_string()
            }
            Some(reason) => format!("skipped: {} ({reason})", reason.name()),
            None => "ok".to_string(),
        };
        out.push_str(&format!(
            "{:<36} {:<16} {:<8} {:<18} {:<22} {}\n",
            name,
            ip.map_or("-".to_string(), |i| i.to_string()),
            if l.attrs.backend_type.is_empty() { "-" } else { &l.attrs.backend_type },
            mac,
            if l.is_reservation() {
                "never (reservation)".to_string()
            } else {
                format!("etcd lease {:x}", l.etcd_lease)
            },
            status,
        ));
    }
    for (name, reason) in rejected.iter().filter(|(_, r)| r.name() == "bad_key") {
        let status = format!("skipped: {} ({reason})", reason.name());
        out.push_str(&format!("{name:<36} {:<16} {:<8} {:<18} {:<22} {status}\n", "-", "-", "-", "-"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_never_silently_takes_a_live_hosts_subnet() {
        let live = |key: &str, ip: &str, etcd_lease| Lease {
            key: key.parse().unwrap(),
            attrs: std::sync::Arc::new(LeaseAttrs { public_ip: Some(ip.parse().unwrap()), ..Default::default() }),
            etcd_lease,
            mod_revision: 1,
        };
        let leases = [live("10.244.2.0-24", "198.18.0.2", 7), live("10.244.9.0-24", "198.18.0.9", 0)];
        let check = |key: &str, ip: &str| check_reservation(&leases, &key.parse().unwrap(), ip.parse().unwrap());
        assert_eq!(check("10.244.2.0-24", "198.18.0.5").held_by, Some("10.244.2.0-24".parse().unwrap()));
        assert_eq!(
            check("10.244.2.0-24&fc00:0:0:2::-64", "198.18.0.5").held_by.map(|k| k.to_string()).as_deref(),
            Some("10.244.2.0-24")
        );
        assert_eq!(check("10.244.50.0-24", "198.18.0.2").ip_lives_at, Some("10.244.2.0-24".parse().unwrap()));
        assert_eq!(check("10.244.9.0-24", "198.18.0.9"), ReservationCheck::default(), "re-reserving a reservation");
        assert_eq!(check("10.244.2.0-24", "198.18.0.2").ip_lives_at, None, "the host's own subnet");
    }

    #[test]
    fn an_endless_input_is_cut_at_the_limit() {
        let err = read_argument("@/dev/zero").unwrap_err().to_string();
        assert_eq!(err, "network config is larger than 65536 bytes");
        assert_eq!(read_limited("x", &b"{}"[..]).unwrap(), "{}");
    }

    #[test]
    fn the_table_says_why_a_lease_is_skipped() {
        let good = r#"{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:02"}}"#;
        let lease = |key: &str, value: &str, etcd_lease| Lease {
            key: key.parse().unwrap(),
            attrs: std::sync::Arc::new(LeaseAttrs::from_json(value).unwrap()),
            etcd_lease,
            mod_revision: 1,
        };
        let leases = [
            lease("10.244.2.0-24", good, 7),
            lease("198.18.0.0-24", good, 8),
            lease("10.244.9.0-24", r#"{"PublicIP":"198.18.0.9"}"#, 0),
        ];
        let mut listing = crate::store::Listing { leases: leases.to_vec(), ..Default::default() };
        let stored = crate::store::StoredLease { path: "/p/x", name: "x", value: b"{}", ttl_lease: 0, mod_revision: 2 };
        listing.add(stored);
        let policy = TrustPolicy::outside(
            NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap(),
        )
        .unwrap();
        let set = LeaseSet::from_listing(&listing);
        let rejected = trust::screen(&policy, None, &set).rejected.into_iter().map(|r| (r.name, r.reason)).collect();
        let table = lease_table(&leases, &rejected);
        let status: Vec<&str> =
            table.lines().map(|l| l.split_at(36 + 1 + 16 + 1 + 8 + 1 + 18 + 1 + 22 + 1).1).collect();
        assert_eq!(
            status,
            [
                "STATUS",
                "ok",
                "skipped: outside_network (198.18.0.0/24 is not inside the network 10.244.0.0/16)",
                "reserved, not taken yet",
                "skipped: bad_key (invalid subnet key \"x\": the IPv4 half is not ADDRESS-PREFIXLEN)",
            ]
        );
        let json = lease_json(&leases[1], rejected.get("198.18.0.0-24"));
        assert!(json.contains(r#""skipped":{"detail":"198.18.0.0/24 is not inside the network 10.244.0.0/16","reason":"outside_network"}"#), "{json}");
        assert!(lease_json(&leases[0], None).contains(r#""skipped":null"#));
    }
}
