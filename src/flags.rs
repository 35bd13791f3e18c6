//! weftd's command line. Every flag can also come from `WEFTD_<FLAG>` (e.g. `WEFTD_ETCD_ENDPOINTS`), and flannel's
//! `FLANNELD_<FLAG>` names are accepted too, so an existing flanneld unit file or manifest works unchanged.
//!
//! flanneld parses its command line with Go's `flag` package, so its unit files and manifests use Go's syntax:
//! one or two dashes (`-iface=eth0`, `--iface eth0`), and booleans that take a value only after `=`
//! (`-ip-masq`, `-ip-masq=false`) spelled any way Go's `strconv.ParseBool` accepts. [`go_style_args`] rewrites
//! such a command line into clap's syntax before clap sees it, and every boolean uses [`parse_go_bool`].

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::store::etcd::{DEFAULT_ENDPOINTS, DEFAULT_PREFIX};
use crate::store::etcd_tls::EtcdTls;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "weftd",
    version,
    disable_version_flag = true,
    args_override_self = true,
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

    /// CA certificate (PEM) that etcd's server certificate must be signed by; without it, https:// endpoints are
    /// verified against the system's CAs
    #[arg(long, env = "WEFTD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,

    /// client certificate (PEM) for etcd's client-certificate authentication (with --etcd-keyfile)
    #[arg(long, env = "WEFTD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,

    /// private key (PEM) of --etcd-certfile
    #[arg(long, env = "WEFTD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,

    /// interface to use for the overlay, by name or address; repeat (or comma-separate) to give fallbacks in order
    #[arg(long, env = "WEFTD_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,

    /// regular expression matched against interface addresses, then names; repeat to give fallbacks in order
    /// (never split on commas: `eth[0-9]{1,2}` is one expression)
    #[arg(long, env = "WEFTD_IFACE_REGEX")]
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
    #[arg(long, env = "WEFTD_IP_MASQ", default_value = "false", action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub ip_masq: bool,

    /// with --ip-masq, masquerade without fully random source ports
    #[arg(long, env = "WEFTD_IP_MASQ_FULLY_RANDOM_DISABLE", default_value = "false", action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub ip_masq_fully_random_disable: bool,

    /// accept forwarded traffic from and to the cluster network (needed where FORWARD's policy is DROP)
    #[arg(long, env = "WEFTD_IPTABLES_FORWARD_RULES", default_value = "true", action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub iptables_forward_rules: bool,

    /// add a blackhole route for this host's own subnet (at the lowest priority, under the bridge's route), so
    /// traffic to its unallocated addresses is dropped here instead of leaving through the default route
    #[arg(long, env = "WEFTD_IP_BLACKHOLE_ROUTE", default_value = "false", action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub ip_blackhole_route: bool,

    /// IPv4 gateway routes (VXLAN, host-gw) through nexthop objects (`ip nexthop`), so that adding one costs the
    /// same at 20,000 peers as at 100; false: plain routes, each with its own gateway, as flanneld programs them.
    /// Kernels without nexthop objects (before 5.3) get plain routes either way.
    #[arg(long, env = "WEFTD_ROUTE_NEXTHOPS", default_value = "true", action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub route_nexthops: bool,

    /// udp backend: TUN offloads and UDP GSO/GRO, each unless its own switch says otherwise (false: one packet per
    /// system call, as flanneld)
    #[arg(long, env = "WEFTD_UDP_OFFLOADS", default_value = "true", action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub udp_offloads: bool,

    /// udp backend: virtio-net headers with TSO/USO on the TUN (super-packet reads, coalesced writes); default:
    /// --udp-offloads
    #[arg(long, env = "WEFTD_UDP_TUN_OFFLOADS", action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub udp_tun_offloads: Option<bool>,

    /// udp backend: UDP GSO (UDP_SEGMENT) on send; default: --udp-offloads
    #[arg(long, env = "WEFTD_UDP_GSO", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool)]
    pub udp_gso: Option<bool>,

    /// udp backend: UDP GRO on receive; default: --udp-offloads
    #[arg(long, env = "WEFTD_UDP_GRO", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool)]
    pub udp_gro: Option<bool>,

    /// udp backend: TUN queues, each with a sending and a receiving worker (0: one per CPU)
    #[arg(long, env = "WEFTD_UDP_QUEUES", default_value_t = 0)]
    pub udp_queues: usize,

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

    /// print the version and exit
    #[arg(long, default_value = "false", action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool)]
    pub version: bool,

    #[command(flatten)]
    pub kube: crate::kube_args::KubeArgs,

    #[command(flatten)]
    pub flannel: FlannelOnlyArgs,
}

/// flanneld flags weftd does not implement (yet). Accepted so an existing flanneld command line keeps working,
/// and each one given is reported at startup: ignored with a warning, or refused when silently ignoring it would
/// hide a real difference in behaviour.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FlannelOnlyArgs {
    /// flannel renews its lease this many minutes before expiry; weftd keeps it alive continuously
    #[arg(long, env = "WEFTD_SUBNET_LEASE_RENEW_MARGIN", hide = true)]
    pub subnet_lease_renew_margin: Option<i64>,
    #[arg(long, env = "WEFTD_IPTABLES_RESYNC", hide = true)]
    pub iptables_resync: Option<i64>,
    /// klog verbosity
    #[arg(short = 'v', long = "v", env = "WEFTD_V", hide = true)]
    pub verbosity: Option<i64>,
    /// klog per-file verbosity
    #[arg(long = "vmodule", env = "WEFTD_VMODULE", hide = true)]
    pub vmodule: Option<String>,
    /// klog: log a stack trace at file:line
    #[arg(long = "log_backtrace_at", env = "WEFTD_LOG_BACKTRACE_AT", hide = true)]
    pub log_backtrace_at: Option<String>,
}

impl FlannelOnlyArgs {
    /// Warnings for the flags weftd ignores, or the reason it refuses to start.
    pub fn check(&self) -> Result<Vec<String>, String> {
        if let Some(margin) = self.subnet_lease_renew_margin {
            // flanneld refuses these too, so a command line that starts flanneld starts weftd and vice versa.
            if !(1..24 * 60).contains(&margin) {
                return Err(format!("--subnet-lease-renew-margin={margin} is out of range: minutes from 1 to 1439"));
            }
        }
        let mut warnings = Vec::new();
        let mut given = |flag: &str, present: bool, why: &str| {
            if present {
                warnings.push(format!("{flag} {why}"));
            }
        };
        given(
            "--subnet-lease-renew-margin",
            self.subnet_lease_renew_margin.is_some(),
            "is ignored: weftd keeps its lease alive continuously",
        );
        given(
            "--iptables-resync",
            self.iptables_resync.is_some(),
            "is ignored: firewall rules are checked with everything else, every --resync-interval",
        );
        given("-v", self.verbosity.is_some(), "is ignored: use --log-level debug");
        given("-vmodule", self.vmodule.is_some(), "is ignored: use --log-level with per-module filters (weft=debug)");
        given("-log_backtrace_at", self.log_backtrace_at.is_some(), "is ignored: weftd logs no stack traces");
        Ok(warnings)
    }
}

impl DaemonArgs {
    /// The TLS files for etcd.
    pub fn etcd_tls(&self) -> EtcdTls {
        EtcdTls {
            ca_file: self.etcd_cafile.clone(),
            cert_file: self.etcd_certfile.clone(),
            key_file: self.etcd_keyfile.clone(),
        }
    }

    /// Parses a flanneld- or weftd-style command line (see [`go_style_args`]) plus the environment; on a bad
    /// flag prints clap's message and exits with status 2, as clap's own `parse` does.
    pub fn parse_go_style<I: IntoIterator<Item = OsString>>(args: I) -> Self {
        match Self::try_parse_go_style(args) {
            Ok(args) => args,
            Err(e) => e.exit(),
        }
    }

    pub fn try_parse_go_style<I: IntoIterator<Item = OsString>>(args: I) -> Result<Self, clap::Error> {
        let mut command = Self::command();
        let args = go_style_args(&command, args);
        let mut matches = command.try_get_matches_from_mut(args)?;
        Self::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut command))
    }
}

/// Rewrites Go `flag` syntax into clap's: a long flag with one dash gets two (`-iface` → `--iface`), and a flag
/// that takes a value gets it attached (`-iface eth0` → `--iface=eth0`), so a value that starts with a dash is
/// still a value, as in Go. Booleans stay bare: in Go `-ip-masq false` is the flag followed by an argument.
/// Everything after `--` is left alone.
pub fn go_style_args<I: IntoIterator<Item = OsString>>(command: &clap::Command, args: I) -> Vec<OsString> {
    let mut args = args.into_iter();
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            out.extend(args.by_ref());
            break;
        }
        let Some(flag) = text.strip_prefix("--").or_else(|| text.strip_prefix('-')).filter(|f| !f.is_empty()) else {
            out.push(arg);
            continue;
        };
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (flag, None),
        };
        let Some(known) = command.get_arguments().find(|a| a.get_long() == Some(name)) else {
            // Unknown: clap names it in its error, spelled with two dashes so it is not read as short flags.
            out.push(if name.len() > 1 { format!("--{flag}").into() } else { arg });
            continue;
        };
        let takes_value = known.get_action().takes_values() && !known.is_require_equals_set();
        match value {
            Some(value) => out.push(format!("--{name}={value}").into()),
            None if takes_value => match args.next() {
                Some(value) => {
                    let mut joined = OsString::from(format!("--{name}="));
                    joined.push(value);
                    out.push(joined);
                }
                None => out.push(format!("--{name}").into()),
            },
            None => out.push(format!("--{name}").into()),
        }
    }
    out
}

/// Go's `strconv.ParseBool`: what flanneld accepts for a boolean flag or `FLANNELD_*` variable.
pub fn parse_go_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("{text:?} is not a boolean (1, t, T, TRUE, true, True, or 0, f, F, FALSE, false, False)")),
    }
}

/// Copies each `FLANNELD_<FLAG>` variable to `WEFTD_<FLAG>` unless that is set already. Call before any thread
/// starts (setting the environment is not thread-safe).
pub fn adopt_flannel_env() {
    for arg in DaemonArgs::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let suffix = env_suffix(long);
        let ours = format!("WEFTD_{suffix}");
        if std::env::var_os(&ours).is_some() {
            continue;
        }
        // flanneld skips empty variables, so an empty FLANNELD_X leaves the flag at its default.
        if let Some(value) = std::env::var_os(format!("FLANNELD_{suffix}")).filter(|v| !v.is_empty()) {
            std::env::set_var(ours, value);
        }
    }
}

/// `etcd-endpoints` → `ETCD_ENDPOINTS`, `log_backtrace_at` → `LOG_BACKTRACE_AT`, as flannel names its variables.
fn env_suffix(long: &str) -> String {
    long.to_ascii_uppercase().replace('-', "_")
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
        assert!(!args.ip_blackhole_route, "flannel adds no blackhole by default");
        let off = DaemonArgs::try_parse_from(["weftd", "--iptables-forward-rules=false", "--ip-masq"]).unwrap();
        assert!(!off.iptables_forward_rules && off.ip_masq);
        assert!(DaemonArgs::try_parse_from(["weftd", "--ip-blackhole-route"]).unwrap().ip_blackhole_route);
        assert!(args.route_nexthops, "nexthop objects by default");
        assert!(!DaemonArgs::try_parse_from(["weftd", "--route-nexthops=false"]).unwrap().route_nexthops);
    }

    #[test]
    fn repeatable_and_comma_separated_ifaces() {
        let args = DaemonArgs::try_parse_from(["weftd", "--iface", "eth1,eth0", "--iface", "198.18.0.1"]).unwrap();
        assert_eq!(args.iface, vec!["eth1", "eth0", "198.18.0.1"]);
    }

    fn parse(args: &[&str]) -> Result<DaemonArgs, clap::Error> {
        DaemonArgs::try_parse_go_style(std::iter::once("weftd").chain(args.iter().copied()).map(OsString::from))
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Outcome {
        /// weftd implements it: no warning, no refusal.
        Implemented,
        /// Accepted with exactly one warning naming the flag.
        Warned,
        /// weftd refuses to start, naming the flag.
        Refused,
    }
    use Outcome::*;

    /// Every flag of flanneld's main.go (plus the klog flags it copies): a value weftd accepts, whether Go treats
    /// it as a boolean, and what weftd does with it.
    const FLANNEL_FLAGS: &[(&str, &str, bool, Outcome)] = &[
        ("etcd-endpoints", "http://198.18.0.1:2379", false, Implemented),
        ("etcd-prefix", "/vxlan/network", false, Implemented),
        ("etcd-keyfile", "/etc/etcd/key.pem", false, Implemented),
        ("etcd-certfile", "/etc/etcd/cert.pem", false, Implemented),
        ("etcd-cafile", "/etc/etcd/ca.pem", false, Implemented),
        ("iface", "eth0", false, Implemented),
        ("iface-regex", "eth[0-9]{1,2}", false, Implemented),
        ("iface-can-reach", "198.18.0.1", false, Implemented),
        ("subnet-file", "/run/flannel/other.env", false, Implemented),
        ("public-ip", "198.18.0.7", false, Implemented),
        ("public-ipv6", "2001:db8::7", false, Implemented),
        ("subnet-lease-renew-margin", "60", false, Warned),
        ("ip-masq", "false", true, Implemented),
        ("ip-masq-fully-random-disable", "true", true, Implemented),
        ("kube-subnet-mgr", "true", true, Implemented),
        ("kube-api-url", "https://10.96.0.1:443", false, Implemented),
        ("kube-annotation-prefix", "flannel.alpha.coreos.com", false, Implemented),
        ("kubeconfig-file", "/etc/kubernetes/kubeconfig", false, Implemented),
        ("healthz-ip", "127.0.0.1", false, Implemented),
        ("healthz-port", "8471", false, Implemented),
        ("iptables-resync", "5", false, Warned),
        ("iptables-forward-rules", "true", true, Implemented),
        ("ip-blackhole-route", "true", true, Implemented),
        ("net-config-path", "/etc/kube-flannel/net-conf.json", false, Implemented),
        ("set-node-network-unavailable", "true", true, Implemented),
        ("v", "2", false, Warned),
        ("vmodule", "main=3", false, Warned),
        ("log_backtrace_at", "main.go:42", false, Warned),
    ];

    /// The spellings Go's flag package accepts for one flag.
    fn spellings(name: &str, value: &str, boolean: bool) -> Vec<Vec<String>> {
        let mut all = Vec::new();
        for dashes in ["-", "--"] {
            all.push(vec![format!("{dashes}{name}={value}")]);
            if boolean {
                all.push(vec![format!("{dashes}{name}")]);
            } else {
                all.push(vec![format!("{dashes}{name}"), value.to_string()]);
            }
        }
        all
    }

    fn outcome(args: &DaemonArgs, name: &str) -> Outcome {
        match args.flannel.check() {
            Err(reason) => {
                assert!(reason.contains(&format!("-{name}")), "the refusal names -{name}: {reason}");
                Refused
            }
            Ok(warnings) if warnings.is_empty() => Implemented,
            Ok(warnings) => {
                assert_eq!(warnings.len(), 1, "one warning for -{name}: {warnings:?}");
                assert!(warnings[0].contains(&format!("-{name} ")), "the warning names -{name}: {warnings:?}");
                Warned
            }
        }
    }

    #[test]
    fn every_flannel_flag_in_every_go_spelling() {
        for &(name, value, boolean, expected) in FLANNEL_FLAGS {
            for mut spelling in spellings(name, value, boolean) {
                if name == "etcd-username" || name == "etcd-password" {
                    spelling.extend(["--etcd-username=u".to_string(), "--etcd-password=p".to_string()]);
                }
                let argv: Vec<&str> = spelling.iter().map(String::as_str).collect();
                let args = parse(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
                assert_eq!(outcome(&args, name), expected, "{argv:?}");
            }
        }
        let both = parse(&["-etcd-username", "root", "--etcd-password=-secret-"]).unwrap();
        assert_eq!(both.etcd_username.as_deref(), Some("root"));
        assert_eq!(both.etcd_password.as_deref(), Some("-secret-"), "a value after the flag may start with a dash");
        assert!(parse(&["-version"]).unwrap().version);
        assert!(!parse(&["--version=F"]).unwrap().version);
    }

    #[test]
    fn every_flannel_flag_is_in_the_table() {
        let command = DaemonArgs::command();
        let longs: Vec<&str> = command.get_arguments().filter_map(|a| a.get_long()).collect();
        for (name, ..) in FLANNEL_FLAGS {
            assert!(longs.contains(name), "--{name} is a flag");
        }
        for name in ["etcd-username", "etcd-password", "version"] {
            assert!(longs.contains(&name), "--{name} is a flag");
        }
    }

    #[test]
    fn go_booleans() {
        for yes in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(yes), Ok(true), "{yes}");
            assert!(parse(&[&format!("-ip-masq={yes}")]).unwrap().ip_masq, "{yes}");
        }
        for no in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(no), Ok(false), "{no}");
            assert!(!parse(&[&format!("--ip-masq={no}")]).unwrap().ip_masq, "{no}");
        }
        for bad in ["yes", "on", "tRUE", "2", ""] {
            assert!(parse_go_bool(bad).is_err(), "{bad}");
        }
        // In Go a boolean takes its value only after `=`: `-ip-masq false` is the flag and then an argument.
        assert!(parse(&["-ip-masq", "false"]).is_err());
        assert!(parse(&["-ip-masq", "-iface=eth0"]).unwrap().ip_masq);
    }

    #[test]
    fn command_lines_from_flannels_docs_units_and_manifests() {
        // Documentation/running.md: a second flanneld for another network.
        let a = parse(&["-subnet-file", "/vxlan.env", "-etcd-prefix=/vxlan/network"]).unwrap();
        assert_eq!((a.subnet_file.to_str(), a.etcd_prefix.as_str()), (Some("/vxlan.env"), "/vxlan/network"));
        // Documentation/configuration.md's examples.
        let a = parse(&[
            "--etcd-endpoints=http://10.0.0.2:2379",
            "--iface=eth1",
            "--iface-can-reach=192.168.1.1",
            "--ip-masq=false",
        ])
        .unwrap();
        assert_eq!(a.etcd_endpoints, ["http://10.0.0.2:2379"]);
        assert_eq!(a.iface, ["eth1"]);
        assert_eq!(a.iface_can_reach, Some("192.168.1.1".parse().unwrap()));
        assert_eq!(a.flannel.check(), Ok(vec![]));
        // Older distribution unit files: single-dash Go syntax.
        let a = parse(&[
            "-etcd-endpoints=http://198.18.0.1:2379,http://198.18.0.2:2379",
            "-etcd-prefix=/atomic.io/network",
            "-iface=eth0",
            "-ip-masq=false",
            "-v=2",
        ])
        .unwrap();
        assert_eq!(a.etcd_endpoints.len(), 2);
        assert_eq!(a.etcd_prefix, "/atomic.io/network");
        assert_eq!(a.flannel.check().unwrap().len(), 1, "only -v is ignored");
        // kube-flannel.yml's command line.
        let a = parse(&["--ip-masq", "--kube-subnet-mgr"]).unwrap();
        assert!(a.ip_masq && a.kube.kube_subnet_mgr);
        assert!(a.kube.set_node_network_unavailable, "flanneld's default");
        assert_eq!(a.kube.net_config_path, PathBuf::from("/etc/kube-flannel/net-conf.json"));
        assert!(a.flannel.check().unwrap().is_empty());
        // Go: a repeated single-valued flag keeps the last value; repeated --iface values all count.
        let a = parse(&["-etcd-prefix=/a", "-etcd-prefix=/b", "-iface", "eth1", "-iface", "eth0"]).unwrap();
        assert_eq!(a.etcd_prefix, "/b");
        assert_eq!(a.iface, ["eth1", "eth0"]);
    }

    #[test]
    fn iface_regex_is_never_split_on_commas() {
        let a = parse(&["--iface-regex=eth[0-9]{1,2}", "-iface-regex", "^ens(3|4),?$"]).unwrap();
        assert_eq!(a.iface_regex, ["eth[0-9]{1,2}", "^ens(3|4),?$"]);
    }

    #[test]
    fn renew_margin_out_of_flannels_range_is_refused() {
        for bad in ["0", "1440", "-5"] {
            let err = parse(&[&format!("--subnet-lease-renew-margin={bad}")]).unwrap().flannel.check().unwrap_err();
            assert!(err.contains("out of range"), "{err}");
        }
    }

    #[test]
    fn unknown_flags_are_named() {
        let err = parse(&["-etcd-endpoint=http://x"]).unwrap_err().to_string();
        assert!(err.contains("-etcd-endpoint"), "{err}");
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let err = DaemonArgs::try_parse_from(["weftd", "--resync-interval", "soon"]).unwrap_err().to_string();
        assert!(err.contains("--resync-interval") && err.contains("\"soon\" is not a duration"), "{err}");
        let err = DaemonArgs::try_parse_from(["weftd", "--public-ip", "300.1.1.1"]).unwrap_err().to_string();
        assert!(err.contains("--public-ip"), "{err}");
    }
}
