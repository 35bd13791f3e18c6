//! weftctl's operator commands against etcd: the network config, leases and reservations.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use ipnetwork::IpNetwork;

use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::store::etcd::{EtcdStore, DEFAULT_ENDPOINTS, DEFAULT_PREFIX};
use crate::store::etcd_tls::EtcdTls;
use crate::store::LeaseStore;

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

async fn store(etcd: &EtcdArgs) -> Result<EtcdStore, CtlError> {
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
            let parsed = NetworkConfig::parse(&text)?;
            for w in &parsed.warnings {
                eprintln!("warning: {w}");
            }
            store.put_config(text.trim()).await?;
            eprintln!("stored the network config at {}", store.config_key());
        }
    }
    Ok(())
}

/// JSON text, `@path`, or `-` for stdin.
fn read_argument(arg: &str) -> Result<String, CtlError> {
    if arg == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| CtlError::Read("stdin".into(), e))?;
        Ok(text)
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path).map_err(|e| CtlError::Read(path.into(), e))
    } else {
        Ok(arg.to_string())
    }
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
            if *json {
                for l in &listing.leases {
                    println!("{}", lease_json(l));
                }
            } else {
                print!("{}", lease_table(&listing.leases));
            }
        }
        LeaseCommand::Delete { subnet } => {
            let key = find_key(&store, *subnet).await?;
            store.delete_lease(&key).await?;
            eprintln!("deleted {}", store.lease_key(&key));
        }
        LeaseCommand::Reserve { subnet, public_ip } => {
            let key = key_for(*subnet)?;
            let config = store.get_config().await?.ok_or_else(|| CtlError::NoConfig(store.config_key()))?;
            let config = NetworkConfig::parse(&config)?;
            if !crate::alloc::fits(&config, &key) {
                return Err(CtlError::Invalid(format!(
                    "{subnet} does not fit the network config (wrong length, or outside SubnetMin..SubnetMax)"
                )));
            }
            let attrs = LeaseAttrs { public_ip: Some(*public_ip), ..Default::default() };
            store.put_reservation(&key, &attrs).await?;
            eprintln!("reserved {key} for {public_ip}");
        }
    }
    Ok(())
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

pub fn lease_json(l: &Lease) -> String {
    serde_json::json!({
        "subnet": l.key.to_string(),
        "etcdLease": l.etcd_lease,
        "reservation": l.is_reservation(),
        "value": serde_json::from_str::<serde_json::Value>(&l.attrs.to_json()).unwrap_or_default(),
    })
    .to_string()
}

pub fn lease_table(leases: &[Lease]) -> String {
    let mut out = format!("{:<36} {:<16} {:<8} {:<18} {}\n", "SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES");
    for l in leases {
        let mac = l.attrs.backend_data.as_ref().and_then(|d| d.get("VtepMAC")).and_then(|m| m.as_str()).unwrap_or("-");
        let ip = l.attrs.public_ip.map(IpAddr::V4).or(l.attrs.public_ipv6.map(IpAddr::V6));
        out.push_str(&format!(
            "{:<36} {:<16} {:<8} {:<18} {}\n",
            l.key.to_string(),
            ip.map_or("-".to_string(), |i| i.to_string()),
            if l.attrs.backend_type.is_empty() { "-" } else { &l.attrs.backend_type },
            mac,
            if l.is_reservation() {
                "never (reservation)".to_string()
            } else {
                format!("etcd lease {:x}", l.etcd_lease)
            },
        ));
    }
    out
}
