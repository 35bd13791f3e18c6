//! `weftctl docker-opts`: Docker daemon options from the subnet file, with the options and output of flannel's
//! `mk-docker-opts.sh`, so a host that ran that script runs this command unchanged in meaning:
//!
//! - `-f FILE` subnet file (default `/run/flannel/subnet.env`), `-d FILE` output (default `/run/docker_opts.env`),
//! - `-i` one variable per option (`DOCKER_OPT_BIP`, `DOCKER_OPT_IPMASQ`, `DOCKER_OPT_MTU`), `-c` all of them in
//!   one variable (`DOCKER_OPTS`, or the name given with `-k`), both when neither is given,
//! - `-m` leaves out `--ip-masq`.
//!
//! The combined variable starts with the value the variable of that name already has (in the environment or the
//! subnet file), as the script's does, and each option is appended after a space.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct DockerOptsArgs {
    /// the subnet file weftd (or flanneld) writes
    #[arg(short = 'f', default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,
    /// where to write the Docker options
    #[arg(short = 'd', default_value = "/run/docker_opts.env")]
    pub docker_env: PathBuf,
    /// one variable per option, e.g. DOCKER_OPT_MTU="--mtu=1450"
    #[arg(short = 'i')]
    pub individual: bool,
    /// all options in one variable (DOCKER_OPTS, or the -k name)
    #[arg(short = 'c')]
    pub combined: bool,
    /// the name of the combined variable
    #[arg(short = 'k', default_value = "DOCKER_OPTS")]
    pub combined_key: String,
    /// leave out --ip-masq (older Docker versions do not know it)
    #[arg(short = 'm')]
    pub no_ip_masq: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DockerOptsError {
    #[error("Invalid value of FLANNEL_IPMASQ in {0}: {1:?} (true or false)")]
    BadIpMasq(PathBuf, String),
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("Your routing table already contains the subnet {subnet} through a gateway: {route}")]
    RouteConflict { subnet: String, route: String },
    #[error("cannot list routes with `ip route show`: {0}")]
    Routes(std::io::Error),
}

/// The `KEY=VALUE` assignments of a shell environment file such as subnet.env (quotes removed, comments and other
/// lines skipped).
pub fn read_assignments(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export ").unwrap_or(line.trim()).split_once('='))
        .filter(|(key, _)| !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(|(key, value)| {
            let value = value.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(value);
            (key.to_string(), unquoted.to_string())
        })
        .collect()
}

/// The file's content. `vars` are the subnet file's assignments over the environment's, as after the script
/// sources the file.
pub fn render(args: &DockerOptsArgs, vars: &BTreeMap<String, String>) -> Result<String, DockerOptsError> {
    let (individual, combined) = match (args.individual, args.combined) {
        (false, false) => (true, true),
        both => both,
    };
    let set = |key: &str| vars.get(key).filter(|v| !v.is_empty());
    // Every DOCKER_OPT_ variable counts, including ones already set, in name order as the shell lists them.
    let mut opts: BTreeMap<String, String> =
        vars.iter().filter(|(k, _)| k.starts_with("DOCKER_OPT_")).map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(subnet) = set("FLANNEL_SUBNET") {
        opts.insert("DOCKER_OPT_BIP".into(), format!("--bip={subnet}"));
    }
    if let Some(mtu) = set("FLANNEL_MTU") {
        opts.insert("DOCKER_OPT_MTU".into(), format!("--mtu={mtu}"));
    }
    if let Some(masq) = set("FLANNEL_IPMASQ").filter(|_| !args.no_ip_masq) {
        // The host masquerades for the pod network already, so Docker must not, and the other way round.
        let docker = match masq.as_str() {
            "true" => "false",
            "false" => "true",
            other => return Err(DockerOptsError::BadIpMasq(args.subnet_file.clone(), other.to_string())),
        };
        opts.insert("DOCKER_OPT_IPMASQ".into(), format!("--ip-masq={docker}"));
    }
    let mut out = String::new();
    let mut all = set(&args.combined_key).map(|v| format!("{v} ")).unwrap_or_default();
    for (name, value) in &opts {
        if individual {
            out.push_str(&format!("{name}=\"{value}\"\n"));
        }
        all.push(' ');
        all.push_str(value);
    }
    if combined {
        out.push_str(&format!("{}=\"{all}\"\n", args.combined_key));
    }
    Ok(out)
}

/// The subnet a FLANNEL_SUBNET (first address/len) names, the way the script derives it (last octet minus one).
fn subnet_of(first_ip: &str) -> Option<String> {
    let (ip, len) = first_ip.split_once('/')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    let [a, b, c, d] = ip.octets();
    Some(format!("{a}.{b}.{c}.{}/{len}", d.checked_sub(1)?))
}

/// A route to our own subnet through a gateway means another network already claims it: Docker's bridge would
/// clash with it.
fn conflicting_route(subnet: &str, routes: &str) -> Option<String> {
    routes.lines().find(|l| l.contains(subnet) && l.contains("via")).map(|l| l.trim().to_string())
}

/// Writes the Docker options file, then refuses (as the script does) when the routing table already reaches our
/// subnet through a gateway.
pub fn run(args: &DockerOptsArgs) -> Result<(), DockerOptsError> {
    let mut vars: BTreeMap<String, String> = std::env::vars().collect();
    match std::fs::read_to_string(&args.subnet_file) {
        Ok(text) => vars.extend(read_assignments(&text)),
        // A missing file gives no options, as in the script.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DockerOptsError::Read(args.subnet_file.clone(), e)),
    }
    let content = render(args, &vars)?;
    write(&args.docker_env, &content)?;
    if let Some(subnet) = vars.get("FLANNEL_SUBNET").and_then(|s| subnet_of(s)) {
        let out = std::process::Command::new("ip").args(["route", "show"]).output().map_err(DockerOptsError::Routes)?;
        if let Some(route) = conflicting_route(&subnet, &String::from_utf8_lossy(&out.stdout)) {
            return Err(DockerOptsError::RouteConflict { subnet, route });
        }
    }
    Ok(())
}

fn write(path: &Path, content: &str) -> Result<(), DockerOptsError> {
    std::fs::write(path, content).map_err(|e| DockerOptsError::Write(path.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DockerOptsArgs,
    }

    fn args(flags: &[&str]) -> DockerOptsArgs {
        Cli::parse_from(std::iter::once("docker-opts").chain(flags.iter().copied())).args
    }

    const SUBNET_ENV: &str =
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";

    #[test]
    fn both_forms_by_default_in_the_scripts_format() {
        let out = render(&args(&[]), &read_assignments(SUBNET_ENV)).unwrap();
        assert_eq!(
            out,
            "DOCKER_OPT_BIP=\"--bip=10.244.3.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\n\
             DOCKER_OPTS=\" --bip=10.244.3.1/24 --ip-masq=true --mtu=1450\"\n"
        );
    }

    #[test]
    fn individual_combined_key_and_no_masq() {
        let vars = read_assignments(SUBNET_ENV);
        assert_eq!(
            render(&args(&["-i", "-m"]), &vars).unwrap(),
            "DOCKER_OPT_BIP=\"--bip=10.244.3.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\n"
        );
        assert_eq!(
            render(&args(&["-c", "-k", "DOCKER_NETWORK_OPTIONS"]), &vars).unwrap(),
            "DOCKER_NETWORK_OPTIONS=\" --bip=10.244.3.1/24 --ip-masq=true --mtu=1450\"\n"
        );
        let mut with_existing = vars.clone();
        with_existing.insert("DOCKER_OPTS".into(), "--debug".into());
        assert_eq!(
            render(&args(&["-c"]), &with_existing).unwrap(),
            "DOCKER_OPTS=\"--debug  --bip=10.244.3.1/24 --ip-masq=true --mtu=1450\"\n"
        );
    }

    #[test]
    fn host_masquerade_turns_dockers_off() {
        let vars = read_assignments(&SUBNET_ENV.replace("IPMASQ=false", "IPMASQ=true"));
        assert!(render(&args(&["-i"]), &vars).unwrap().contains("DOCKER_OPT_IPMASQ=\"--ip-masq=false\""));
        let bad = read_assignments(&SUBNET_ENV.replace("IPMASQ=false", "IPMASQ=yes"));
        assert!(render(&args(&[]), &bad).unwrap_err().to_string().contains("Invalid value of FLANNEL_IPMASQ"));
    }

    #[test]
    fn no_subnet_file_means_no_options() {
        assert_eq!(render(&args(&[]), &BTreeMap::new()).unwrap(), "DOCKER_OPTS=\"\"\n");
    }

    #[test]
    fn a_gateway_route_to_our_subnet_is_a_conflict() {
        assert_eq!(subnet_of("10.244.3.1/24").as_deref(), Some("10.244.3.0/24"));
        let routes = "default via 198.18.0.1 dev eth0\n10.244.3.0/24 via 198.18.0.9 dev eth0\n";
        assert!(conflicting_route("10.244.3.0/24", routes).is_some());
        assert!(conflicting_route("10.244.3.0/24", "10.244.3.0/24 dev docker0 scope link\n").is_none());
    }
}
