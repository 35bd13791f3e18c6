//! `Lab::status`: what runs, which subnets are leased, and who can reach whom.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{Lab, Result};
use weft::subnet_file::SubnetFile;

/// Prefix of the subnet leases in etcd.
pub const SUBNETS_PREFIX: &str = "/coreos.com/network/subnets/";

/// Parallel pings when building the connectivity matrix.
const PING_WORKERS: usize = 16;

/// Above this many hosts the matrix is summarised instead of drawn.
const MAX_DRAWN_MATRIX: usize = 32;

/// A snapshot of the lab.
#[derive(Debug, Clone)]
pub struct LabStatus {
    pub name: String,
    pub backend: String,
    pub network: String,
    pub state_dir: PathBuf,
    pub etcd_endpoint: String,
    pub etcd_pid: Option<u32>,
    pub etcd_running: bool,
    pub hosts: Vec<HostStatus>,
    /// The subnet leases in etcd, or why they could not be read.
    pub leases: std::result::Result<Vec<Lease>, String>,
    /// None when the status was taken without pinging.
    pub connectivity: Option<Connectivity>,
}

/// One host in a [`LabStatus`].
#[derive(Debug, Clone)]
pub struct HostStatus {
    /// 1-based host index.
    pub index: usize,
    pub namespace: String,
    pub underlay_ip: Ipv4Addr,
    pub weftd_pid: Option<u32>,
    pub weftd_running: bool,
    /// The parsed subnet.env, or why there is none.
    pub subnet: std::result::Result<SubnetFile, String>,
    pub container_namespace: String,
    /// Set when the container is attached.
    pub container_ip: Option<Ipv4Addr>,
}

/// One key under [`SUBNETS_PREFIX`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    pub value: String,
}

/// Results of pinging from every container to every other container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connectivity {
    /// Host indices, in row/column order.
    pub hosts: Vec<usize>,
    /// Which hosts have a container.
    attached: Vec<bool>,
    /// `reachable[a][b]`: ping from row a's container to column b's;
    /// None on the diagonal and where a container is missing.
    reachable: Vec<Vec<Option<bool>>>,
}

impl Connectivity {
    /// Ping result from host `from`'s container to host `to`'s (1-based),
    /// None if not tested.
    pub fn reachable(&self, from: usize, to: usize) -> Option<bool> {
        let row = self.hosts.iter().position(|&h| h == from)?;
        let col = self.hosts.iter().position(|&h| h == to)?;
        self.reachable[row][col]
    }

    /// Host pairs (from, to) whose ping failed.
    pub fn failures(&self) -> Vec<(usize, usize)> {
        self.pairs().filter(|&(_, _, ok)| !ok).map(|(from, to, _)| (from, to)).collect()
    }

    /// Number of pings made.
    pub fn tested(&self) -> usize {
        self.pairs().count()
    }

    /// True if every host has a container and every ping succeeded.
    pub fn all_connected(&self) -> bool {
        self.attached.iter().all(|&a| a) && self.failures().is_empty()
    }

    fn pairs(&self) -> impl Iterator<Item = (usize, usize, bool)> + '_ {
        self.reachable.iter().enumerate().flat_map(move |(row, cells)| {
            cells
                .iter()
                .enumerate()
                .filter_map(move |(col, cell)| cell.map(|ok| (self.hosts[row], self.hosts[col], ok)))
        })
    }
}

impl LabStatus {
    /// True if pings were made and every container reached every other.
    pub fn all_connected(&self) -> bool {
        self.connectivity.as_ref().is_some_and(Connectivity::all_connected)
    }
}

impl Lab {
    /// Full status, including a ping between every pair of containers
    /// (n·(n−1) pings, run in parallel).
    pub fn status(&self) -> Result<LabStatus> {
        let mut status = self.quick_status()?;
        status.connectivity = Some(self.connectivity());
        Ok(status)
    }

    /// Status without the connectivity matrix.
    pub fn quick_status(&self) -> Result<LabStatus> {
        Ok(LabStatus {
            name: self.spec.name.clone(),
            backend: self.spec.backend.clone(),
            network: self.spec.network.clone(),
            state_dir: self.dir.clone(),
            etcd_endpoint: self.etcd_endpoint(),
            etcd_pid: self.etcd_pid(),
            etcd_running: self.etcd_running(),
            hosts: (1..=self.spec.hosts).map(|h| self.host_status(h)).collect(),
            leases: self.leases().map_err(|e| e.to_string()),
            connectivity: None,
        })
    }

    fn host_status(&self, host: usize) -> HostStatus {
        HostStatus {
            index: host,
            namespace: self.host_ns(host),
            underlay_ip: self.host_ip(host),
            weftd_pid: self.weftd_pid(host),
            weftd_running: self.weftd_running(host),
            subnet: self.subnet_env(host).map_err(|e| e.to_string()),
            container_namespace: self.container_ns(host),
            container_ip: self.container_ip(host),
        }
    }

    /// The subnet leases currently in etcd.
    pub fn leases(&self) -> Result<Vec<Lease>> {
        let out = self.etcdctl_ok(["--dial-timeout=1s", "--command-timeout=3s", "get", "--prefix", SUBNETS_PREFIX])?;
        Ok(parse_key_values(&out))
    }

    /// Pings from every attached container to every other one.
    pub fn connectivity(&self) -> Connectivity {
        let hosts: Vec<usize> = (1..=self.spec.hosts).collect();
        let ips: Vec<Option<Ipv4Addr>> = hosts.iter().map(|&h| self.container_ip(h)).collect();
        let n = hosts.len();
        let jobs: Vec<(usize, usize)> = (0..n)
            .flat_map(|a| (0..n).map(move |b| (a, b)))
            .filter(|&(a, b)| a != b && ips[a].is_some() && ips[b].is_some())
            .collect();
        let reachable = Mutex::new(vec![vec![None; n]; n]);
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..PING_WORKERS.min(jobs.len()) {
                scope.spawn(|| {
                    while let Some(&(a, b)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let ok = ips[b].is_some_and(|ip| self.ping(hosts[a], ip));
                        reachable.lock().unwrap_or_else(|e| e.into_inner())[a][b] = Some(ok);
                    }
                });
            }
        });
        Connectivity {
            attached: ips.iter().map(Option::is_some).collect(),
            hosts,
            reachable: reachable.into_inner().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// etcdctl's default output: a key line, then a value line, per entry.
fn parse_key_values(text: &str) -> Vec<Lease> {
    let mut lines = text.lines();
    let mut leases = Vec::new();
    while let Some(key) = lines.next() {
        if key.is_empty() {
            continue;
        }
        leases.push(Lease { key: key.to_string(), value: lines.next().unwrap_or_default().to_string() });
    }
    leases
}

/// Left-aligned columns separated by two spaces.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> =
                row.iter().enumerate().map(|(c, cell)| format!("{cell:<width$}", width = widths[c])).collect();
            cells.join("  ").trim_end().to_string() + "\n"
        })
        .collect()
}

impl fmt::Display for LabStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lab {} ({} hosts, backend {}, network {}), state in {}",
            self.name,
            self.hosts.len(),
            self.backend,
            self.network,
            self.state_dir.display()
        )?;
        let etcd = match (self.etcd_running, self.etcd_pid) {
            (true, Some(pid)) => format!("running, pid {pid}"),
            _ => "NOT RUNNING".to_string(),
        };
        writeln!(f, "etcd: {} ({etcd})\n", self.etcd_endpoint)?;
        f.write_str(&table(&self.host_rows()))?;
        writeln!(f)?;
        self.fmt_leases(f)?;
        if let Some(connectivity) = &self.connectivity {
            writeln!(f)?;
            write!(f, "{connectivity}")?;
        }
        Ok(())
    }
}

impl LabStatus {
    fn host_rows(&self) -> Vec<Vec<String>> {
        let header = ["HOST", "NAMESPACE", "UNDERLAY IP", "WEFTD", "SUBNET", "MTU", "CONTAINER"];
        let mut rows = vec![header.map(String::from).to_vec()];
        for host in &self.hosts {
            let weftd = match (host.weftd_running, host.weftd_pid) {
                (true, Some(pid)) => format!("running {pid}"),
                (false, Some(pid)) => format!("DEAD (was {pid})"),
                _ => "stopped".to_string(),
            };
            let (subnet, mtu) = match &host.subnet {
                Ok(env) => (env.subnet.map_or("-".to_string(), |s| s.to_string()), env.mtu.to_string()),
                Err(_) => ("-".to_string(), "-".to_string()),
            };
            let container = match host.container_ip {
                Some(ip) => format!("{} {ip}", host.container_namespace),
                None => "-".to_string(),
            };
            rows.push(vec![
                format!("h{}", host.index),
                host.namespace.clone(),
                host.underlay_ip.to_string(),
                weftd,
                subnet,
                mtu,
                container,
            ]);
        }
        rows
    }

    fn fmt_leases(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.leases {
            Err(e) => writeln!(f, "leases: cannot read etcd: {e}"),
            Ok(leases) if leases.is_empty() => writeln!(f, "leases ({SUBNETS_PREFIX}): none"),
            Ok(leases) => {
                writeln!(f, "leases ({SUBNETS_PREFIX}):")?;
                let rows: Vec<Vec<String>> =
                    leases.iter().map(|l| vec![format!("  {}", l.key), l.value.clone()]).collect();
                f.write_str(&table(&rows))
            }
        }
    }
}

impl fmt::Display for Connectivity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failures = self.failures();
        let missing: Vec<String> = self
            .hosts
            .iter()
            .zip(&self.attached)
            .filter(|(_, &attached)| !attached)
            .map(|(h, _)| format!("h{h}"))
            .collect();
        if self.hosts.len() <= MAX_DRAWN_MATRIX {
            writeln!(f, "connectivity (ping from row's container to column's):")?;
            f.write_str(&table(&self.matrix_rows()))?;
        }
        if !missing.is_empty() {
            writeln!(f, "no container on: {}", missing.join(" "))?;
        }
        if self.tested() == 0 {
            return writeln!(f, "no pings made");
        }
        writeln!(f, "{} of {} pings succeeded", self.tested() - failures.len(), self.tested())?;
        if !failures.is_empty() && self.hosts.len() > MAX_DRAWN_MATRIX {
            let shown: Vec<String> = failures.iter().take(20).map(|(a, b)| format!("h{a}->h{b}")).collect();
            writeln!(f, "failed: {}", shown.join(" "))?;
        }
        Ok(())
    }
}

impl Connectivity {
    fn matrix_rows(&self) -> Vec<Vec<String>> {
        let mut header = vec![String::new()];
        header.extend(self.hosts.iter().map(|h| format!("h{h}")));
        let mut rows = vec![header];
        for (row, cells) in self.reachable.iter().enumerate() {
            let mut line = vec![format!("h{}", self.hosts[row])];
            line.extend(cells.iter().map(|cell| match cell {
                Some(true) => "ok".to_string(),
                Some(false) => "FAIL".to_string(),
                None => "-".to_string(),
            }));
            rows.push(line);
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcdctl_key_value_lines() {
        let text = "/coreos.com/network/subnets/10.244.1.0-24\n{\"PublicIP\":\"198.18.0.1\"}\n/coreos.com/network/subnets/10.244.2.0-24\n{\"PublicIP\":\"198.18.0.2\"}\n";
        let leases = parse_key_values(text);
        assert_eq!(leases.len(), 2);
        assert_eq!(leases[1].key, "/coreos.com/network/subnets/10.244.2.0-24");
        assert_eq!(leases[1].value, "{\"PublicIP\":\"198.18.0.2\"}");
        assert!(parse_key_values("").is_empty());
    }

    fn matrix(attached: Vec<bool>, reachable: Vec<Vec<Option<bool>>>) -> Connectivity {
        Connectivity { hosts: (1..=attached.len()).collect(), attached, reachable }
    }

    #[test]
    fn connectivity_summary() {
        let all_ok = matrix(vec![true, true], vec![vec![None, Some(true)], vec![Some(true), None]]);
        assert!(all_ok.all_connected());
        assert_eq!(all_ok.tested(), 2);
        assert_eq!(all_ok.reachable(1, 2), Some(true));
        assert_eq!(all_ok.reachable(1, 1), None);
        assert_eq!(all_ok.reachable(1, 9), None);

        let one_way = matrix(vec![true, true], vec![vec![None, Some(true)], vec![Some(false), None]]);
        assert!(!one_way.all_connected());
        assert_eq!(one_way.failures(), vec![(2, 1)]);
        let drawn = one_way.to_string();
        assert!(drawn.contains("FAIL"), "{drawn}");
        assert!(drawn.contains("1 of 2 pings succeeded"), "{drawn}");

        let missing = matrix(vec![true, false], vec![vec![None, None], vec![None, None]]);
        assert!(!missing.all_connected());
        assert!(missing.to_string().contains("no container on: h2"));
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["a".to_string(), "bb".to_string(), "c".to_string()],
            vec!["aaa".to_string(), "b".to_string(), "".to_string()],
        ];
        assert_eq!(table(&rows), "a    bb  c\naaa  b\n");
    }
}
