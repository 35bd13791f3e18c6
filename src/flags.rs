//! weftd's command line. Every flag can also come from `WEFTD_<FLAG>` (e.g. `WEFTD_ETCD_ENDPOINTS`), and flannel's
//! `FLANNELD_<FLAG>` names are accepted too, so an existing flanneld unit file or manifest works unchanged.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, ValueEnum};

use crate::store::etcd::{DEFAULT_ENDPOINTS, DEFAULT_PREFIX};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "weftd",
    version,
    about = "weft host daemon: leases a subnet from etcd and joins this host to the overlay"
)]
pub struct DaemonArgs {
    /// etcd endpoints, comma-separated; requests fail over between them
    #[arg(long, env = "WEFTD_ETCD_ENDPOINTS", value_delimiter = ',', default_value = DEFAULT_ENDPOINTS)]
    pub etcd_endpoints: Vec<String>,

    /// etcd key prefix holding `config` and `subnets/`
    #[arg(long, env = "WEFTD_ETCD_PREFIX", default_value = DEFAULT_PREFIX)]
    pub etcd_prefix: String,

    /// etcd user name (with --etcd-password)
    #[arg(long, env = "WEFTD_ETCD_USERNAME", requires = "etcd_password")]
    pub etcd_username: Option<String>,

    /// etcd password
    #[arg(long, env = "WEFTD_ETCD_PASSWORD", hide_env_values = true, requires = "etcd_username")]
    pub etcd_password: Option<String>,

    /// interface to use for the overlay, by name or address; repeat (or comma-separate) to give fallbacks in order
    #[arg(long, env = "WEFTD_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,

    /// regular expression matched against interface names and addresses; repeatable
    #[arg(long, env = "WEFTD_IFACE_REGEX", value_delimiter = ',')]
    pub iface_regex: Vec<String>,

    /// use the interface the kernel would route through to reach this address
    #[arg(long, env = "WEFTD_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<IpAddr>,

    /// IPv4 address other hosts reach this one at (default: the interface's address)
    #[arg(long, env = "WEFTD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,

    /// IPv6 address other hosts reach this one at (default: the interface's address)
    #[arg(long, env = "WEFTD_PUBLIC_IPV6")]
    pub public_ipv6: Option<Ipv6Addr>,

    /// where to write FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ for the CNI plugin
    #[arg(long, env = "WEFTD_SUBNET_FILE", default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,

    /// TTL of the subnet lease in etcd, kept alive while weftd runs (e.g. 24h, 90m, 30s)
    #[arg(long, env = "WEFTD_SUBNET_LEASE_TTL", default_value = "24h", value_parser = parse_duration)]
    pub subnet_lease_ttl: Duration,

    /// how often to compare the kernel with the desired state even when nothing changed
    #[arg(long, env = "WEFTD_RESYNC_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub resync_interval: Duration,

    /// masquerade pod traffic leaving the cluster network (flannel's rules); FLANNEL_IPMASQ=true tells the CNI
    /// plugin not to masquerade a second time
    #[arg(long, env = "WEFTD_IP_MASQ", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub ip_masq: bool,

    /// with --ip-masq, masquerade without fully random source ports
    #[arg(long, env = "WEFTD_IP_MASQ_FULLY_RANDOM_DISABLE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub ip_masq_fully_random_disable: bool,

    /// accept forwarded traffic from and to the cluster network (needed where FORWARD's policy is DROP)
    #[arg(long, env = "WEFTD_IPTABLES_FORWARD_RULES", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub iptables_forward_rules: bool,

    /// log format on stderr
    #[arg(long, env = "WEFTD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// log filter, e.g. info, debug, weft=debug (RUST_LOG syntax)
    #[arg(long, env = "WEFTD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// address for /healthz, /readyz and /metrics
    #[arg(long, env = "WEFTD_HEALTHZ_IP", default_value = "0.0.0.0")]
    pub healthz_ip: IpAddr,

    /// port for /healthz, /readyz and /metrics (0: off)
    #[arg(long, env = "WEFTD_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,

    #[command(flatten)]
    pub flannel: FlannelOnlyArgs,
}

/// flanneld flags weftd has no use for. Accepted so an existing flanneld command line keeps working, and each
/// one given is reported at startup: ignored with a warning, or refused when silently ignoring it would hide a
/// real difference in behaviour.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FlannelOnlyArgs {
    /// flannel renews its lease this many minutes before expiry; weftd keeps it alive continuously
    #[arg(long, env = "WEFTD_SUBNET_LEASE_RENEW_MARGIN", hide = true)]
    pub subnet_lease_renew_margin: Option<u32>,
    #[arg(long, env = "WEFTD_IPTABLES_RESYNC", hide = true)]
    pub iptables_resync: Option<u32>,
    /// klog verbosity
    #[arg(short = 'v', long = "v", env = "WEFTD_V", hide = true)]
    pub verbosity: Option<u8>,
    #[arg(long, env = "WEFTD_KUBE_SUBNET_MGR", hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub kube_subnet_mgr: Option<bool>,
    #[arg(long, env = "WEFTD_ETCD_KEYFILE", hide = true)]
    pub etcd_keyfile: Option<PathBuf>,
    #[arg(long, env = "WEFTD_ETCD_CERTFILE", hide = true)]
    pub etcd_certfile: Option<PathBuf>,
    #[arg(long, env = "WEFTD_ETCD_CAFILE", hide = true)]
    pub etcd_cafile: Option<PathBuf>,
}

impl FlannelOnlyArgs {
    /// Warnings for the flags weftd ignores, or the reason it refuses to start.
    pub fn check(&self) -> Result<Vec<String>, String> {
        if self.kube_subnet_mgr == Some(true) {
            return Err("--kube-subnet-mgr is not supported: weftd leases subnets from etcd only".into());
        }
        if let Some(flag) = [
            ("--etcd-cafile", &self.etcd_cafile),
            ("--etcd-certfile", &self.etcd_certfile),
            ("--etcd-keyfile", &self.etcd_keyfile),
        ]
        .iter()
        .find_map(|(flag, value)| value.as_ref().map(|_| flag))
        {
            return Err(format!("{flag}: TLS to etcd is not supported by this weftd yet; use an http:// endpoint"));
        }
        let mut warnings = Vec::new();
        if self.subnet_lease_renew_margin.is_some() {
            warnings.push("--subnet-lease-renew-margin is ignored: weftd keeps its lease alive continuously".into());
        }
        if self.iptables_resync.is_some() {
            warnings.push("--iptables-resync is ignored: firewall rules are checked with everything else, every --resync-interval".into());
        }
        if self.verbosity.is_some() {
            warnings.push("-v is ignored: use --log-level debug".into());
        }
        Ok(warnings)
    }
}

/// Copies each `FLANNELD_<FLAG>` variable to `WEFTD_<FLAG>` unless that is set already. Call before any thread
/// starts (setting the environment is not thread-safe).
pub fn adopt_flannel_env() {
    for arg in DaemonArgs::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let suffix = long.to_ascii_uppercase().replace('-', "_");
        let ours = format!("WEFTD_{suffix}");
        if std::env::var_os(&ours).is_some() {
            continue;
        }
        if let Some(value) = std::env::var_os(format!("FLANNELD_{suffix}")) {
            std::env::set_var(ours, value);
        }
    }
}

/// Parses `500ms`, `10s`, `5m`, `24h`, combinations such as `1h30m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 10s, 5m, 24h or 1h30m");
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        total += unit.checked_mul(u32::try_from(value).map_err(|_| bad())?).ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    if total.is_zero() {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("42").unwrap(), Duration::from_secs(42));
        for bad in ["", "s", "10x", "-5s", "1.5h", "0s", "10 s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn defaults_are_flannels() {
        let args = DaemonArgs::try_parse_from(["weftd"]).unwrap();
        assert_eq!(args.etcd_endpoints, vec!["http://127.0.0.1:4001", "http://127.0.0.1:2379"]);
        assert_eq!(args.etcd_prefix, "/coreos.com/network");
        assert_eq!(args.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(args.subnet_lease_ttl, Duration::from_secs(86400));
        assert_eq!(args.resync_interval, Duration::from_secs(10));
        assert!(!args.ip_masq);
        assert!(args.iptables_forward_rules, "flannel installs its FORWARD accepts by default");
        assert!(!args.ip_masq_fully_random_disable);
        let off = DaemonArgs::try_parse_from(["weftd", "--iptables-forward-rules=false", "--ip-masq"]).unwrap();
        assert!(!off.iptables_forward_rules && off.ip_masq);
    }

    #[test]
    fn repeatable_and_comma_separated_ifaces() {
        let args = DaemonArgs::try_parse_from(["weftd", "--iface", "eth1,eth0", "--iface", "198.18.0.1"]).unwrap();
        assert_eq!(args.iface, vec!["eth1", "eth0", "198.18.0.1"]);
    }

    #[test]
    fn a_flanneld_command_line_is_accepted() {
        let args = DaemonArgs::try_parse_from([
            "weftd",
            "--etcd-endpoints=http://10.0.0.5:2379",
            "--iface=eth1",
            "--subnet-lease-renew-margin=60",
            "--iptables-resync=5",
            "--healthz-port=8081",
            "-v=2",
        ])
        .unwrap();
        assert_eq!(args.healthz_port, 8081);
        assert_eq!(args.flannel.check().unwrap().len(), 3);
        let kube = DaemonArgs::try_parse_from(["weftd", "--kube-subnet-mgr"]).unwrap();
        assert!(kube.flannel.check().unwrap_err().contains("--kube-subnet-mgr"));
        let tls = DaemonArgs::try_parse_from(["weftd", "--etcd-cafile", "/etc/ca.pem"]).unwrap();
        assert!(tls.flannel.check().unwrap_err().starts_with("--etcd-cafile"));
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let err = DaemonArgs::try_parse_from(["weftd", "--resync-interval", "soon"]).unwrap_err().to_string();
        assert!(err.contains("--resync-interval") && err.contains("\"soon\" is not a duration"), "{err}");
        let err = DaemonArgs::try_parse_from(["weftd", "--public-ip", "300.1.1.1"]).unwrap_err().to_string();
        assert!(err.contains("--public-ip"), "{err}");
    }
}
