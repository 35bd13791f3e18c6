//! `ipMasq`: masquerade traffic from the host's container subnets to anywhere outside the cluster network (and
//! not multicast), like the bridge plugin's rules, used when the daemon does not masquerade (FLANNEL_IPMASQ=false).
//!
//! The rules are weftd's rule model ([`weft_backends::rules::cni_masq`]): one table per network and family,
//! applied whole. Where the host has the iptables program (`iptables`, `ip6tables` for IPv6) the table goes in as
//! iptables chains through `iptables-restore`, as the bridge plugin's rules would; on a host without it (only
//! nftables), as an nftables table through `nft -f`. Either way the table is compared with what the host holds and
//! replaced only when it differs.
//!
//! When the plugin looks (there is no daemon of the plugin's own to watch the rules):
//! - ADD: the first time a network's subnets are seen in a host netns (a marker under /run named after the netns
//!   cookie, tmpfs, so it goes with a reboot together with the rules; a cookie is never reused). Later ADDs cost
//!   one stat(), and do not look at the firewall.
//! - CHECK: always. A flushed table is put back by the next CHECK of any container of the network.
//! - DEL of the network's last container (the built-in IPAM store holds no address of the network any more): the
//!   tables and markers go. With an IPAM plugin the plugin cannot tell which container is the last, and the
//!   tables stay.
//!
//! Whenever it puts a network's tables in place it also leaves a [`Record`] of them (written atomically, under
//! the records' lock), and removes it together with the tables: weftd's resync restores what the record names,
//! so a flushed table comes back without waiting for a CHECK.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnetwork::IpNetwork;
use weft_backends::rules::cni_masq::{self, Firewall, MasqueradedSubnet, Record};
use weft_backends::rules::{iptables, nft, RuleOp, RuleSet, Table, TableId};
use weft_backends::Family;

use crate::error::{CniError, Result};

const MARKER_DIR: &str = "/run/weft-cni/masq";

/// How the rules reach the host's firewall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applier {
    /// iptables chains (`iptables-restore`, `iptables`; the ip6tables twins for IPv6).
    Iptables,
    /// An nftables table (`nft`).
    Nft,
}

impl Applier {
    /// iptables where the host has the program for `family` on `PATH` (what the bridge plugin uses), nftables
    /// otherwise.
    pub fn for_host(family: Family) -> Applier {
        let program = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let path = std::env::var_os("PATH").unwrap_or_default();
        if std::env::split_paths(&path).any(|dir| dir.join(program).is_file()) {
            Applier::Iptables
        } else {
            Applier::Nft
        }
    }
}

/// The subnets of `ranges` (one per family) with their family's cluster network.
pub fn subnets(ranges: &[IpNetwork], networks: &[IpNetwork]) -> Vec<MasqueradedSubnet> {
    ranges
        .iter()
        .map(|subnet| MasqueradedSubnet {
            subnet: *subnet,
            cluster: networks.iter().find(|n| n.is_ipv4() == subnet.is_ipv4()).copied(),
        })
        .collect()
}

fn marker_prefix(netns_id: &str, network: &str) -> String {
    format!("{netns_id}-{network}-")
}

fn marker(netns_id: &str, network: &str, subnets: &[MasqueradedSubnet]) -> PathBuf {
    let names: Vec<String> = subnets.iter().map(|s| s.subnet.to_string().replace(['/', ':'], "_")).collect();
    PathBuf::from(MARKER_DIR).join(format!("{}{}", marker_prefix(netns_id, network), names.join("+")))
}

fn netns_id() -> Result<String> {
    weft_netlink::netns::current_id().map_err(|e| CniError::io("identifying the host netns", e))
}

fn record_path(netns_id: &str, network: &str) -> PathBuf {
    Path::new(cni_masq::RECORD_DIR).join(Record::file_name(netns_id, network))
}

/// Holds the records' lock (flock on [`cni_masq::RECORD_LOCK`]) until dropped: weftd takes it too while it reads
/// the records and applies them, so it never restores a table this run is removing.
struct RecordLock {
    _held: File,
}

impl RecordLock {
    fn take() -> Result<RecordLock> {
        let dir = Path::new(cni_masq::RECORD_DIR);
        let create_dir = || {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
        };
        create_dir().map_err(|e| CniError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(cni_masq::RECORD_LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CniError::io(format!("opening {}", path.display()), e))?;
        // SAFETY: flock on an fd we own; blocks while weftd (or another plugin run) holds it, for milliseconds.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(CniError::io(format!("locking {}", path.display()), std::io::Error::last_os_error()));
        }
        Ok(RecordLock { _held: file })
    }
}

/// Writes `record` to `path` through a temporary file and a rename, so weftd never reads half a record.
fn write_record(path: &Path, record: &Record) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        std::fs::write(&tmp, record.to_json())?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| CniError::io(format!("writing the ipMasq record {}", path.display()), e))
}

/// ADD: makes sure the host has `network`'s tables (and their record), unless this netns already got them for
/// these subnets.
pub fn ensure_once(network: &str, subnets: &[MasqueradedSubnet]) -> Result<()> {
    let netns = netns_id()?;
    let marker = marker(&netns, network, subnets);
    if marker.exists() && record_path(&netns, network).exists() {
        return Ok(());
    }
    ensure(network, subnets)?;
    let _ = std::fs::create_dir_all(MARKER_DIR);
    let _ = std::fs::write(&marker, b"");
    Ok(())
}

/// CHECK (and the first ADD): compares `network`'s table of each family with the host's and replaces it when it
/// differs, and records what it wants for weftd. Returns the tables that had to be put back.
pub fn ensure(network: &str, subnets: &[MasqueradedSubnet]) -> Result<Vec<TableId>> {
    let netns = netns_id()?;
    let _lock = RecordLock::take()?;
    let mut restored = Vec::new();
    let mut firewall = None;
    for family in Family::ALL {
        if let Some(table) = cni_masq::table(network, family, subnets) {
            let applier = Applier::for_host(family);
            // IPv4's firewall decides the record's; the families differ only on a host with iptables and no
            // ip6tables, where weftd then restores IPv4 only.
            firewall.get_or_insert(applier.firewall());
            if applier.replace_if_different(&table)? {
                restored.push(table.id);
            }
        }
    }
    if let Some(firewall) = firewall {
        write_record(&record_path(&netns, network), &Record::new(network, firewall, subnets))?;
    }
    Ok(restored)
}

/// DEL of the network's last container: removes its record, tables and markers, if this netns has any.
pub fn remove(network: &str) -> Result<()> {
    let netns = netns_id()?;
    let prefix = marker_prefix(&netns, network);
    let markers: Vec<PathBuf> = std::fs::read_dir(MARKER_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    let record = record_path(&netns, network);
    if markers.is_empty() && !record.exists() {
        return Ok(());
    }
    let _lock = RecordLock::take()?;
    // The record first: should a deletion below fail, weftd must not put the table back meanwhile.
    match std::fs::remove_file(&record) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CniError::io(format!("removing the ipMasq record {}", record.display()), e)),
    }
    for family in Family::ALL {
        Applier::for_host(family).delete(&cni_masq::table_id(network, family), family)?;
    }
    for m in markers {
        let _ = std::fs::remove_file(m);
    }
    Ok(())
}

/// Runs `program args`, feeding `input`; Ok(stdout) when it succeeds, Err((stderr)) when it fails. Spawning
/// errors (a missing program) are errors of the plugin.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<std::result::Result<String, String>> {
    use std::io::Write as _;
    let shown = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io(format!("running {} for ipMasq", shown()), e))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(|e| CniError::io(format!("writing to {}", shown()), e))?;
    }
    let out = child.wait_with_output().map_err(|e| CniError::io(format!("waiting for {}", shown()), e))?;
    if out.status.success() {
        Ok(Ok(String::from_utf8_lossy(&out.stdout).into_owned()))
    } else {
        Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// Like [`run`], but a failure is an error naming the command.
fn run_ok(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    run(program, args, input)?
        .map_err(|stderr| CniError::io(format!("ipMasq: {program} {}", args.join(" ")), std::io::Error::other(stderr)))
}

fn tool(family: Family, suffix: &str) -> String {
    match family {
        Family::V4 => format!("iptables{suffix}"),
        Family::V6 => format!("ip6tables{suffix}"),
    }
}

impl Applier {
    fn firewall(self) -> Firewall {
        match self {
            Applier::Iptables => Firewall::Iptables,
            Applier::Nft => Firewall::Nft,
        }
    }

    /// Puts `table` in place unless the host holds exactly it; true when it had to.
    fn replace_if_different(self, table: &Table) -> Result<bool> {
        match self {
            Applier::Nft => {
                if nft_holds(table)? {
                    return Ok(false);
                }
                run_ok("nft", &["-f", "-"], Some(&nft::script(&RuleOp::ReplaceTable(table.clone()))))?;
            }
            Applier::Iptables => {
                let invalid = |e: weft_backends::rules::RulesError| CniError::InvalidConfig(e.to_string());
                let mut replaced = false;
                for restore in iptables::render(table).map_err(invalid)? {
                    let saved = run_ok(&tool(restore.family, "-save"), &["-t", "nat"], None)?;
                    if iptables_holds(&saved, &restore) {
                        continue;
                    }
                    // Declaring the chain flushes it: one commit refills it.
                    run_ok(&tool(restore.family, "-restore"), &["-w", "--noflush"], Some(&restore.text))?;
                    for jump in &restore.jumps {
                        ensure_jump(restore.family, jump)?;
                    }
                    replaced = true;
                }
                return Ok(replaced);
            }
        }
        Ok(true)
    }

    fn delete(self, id: &TableId, family: Family) -> Result<()> {
        match self {
            // Adding first makes the deletion succeed whether or not the table exists.
            Applier::Nft => run_ok("nft", &["-f", "-"], Some(&nft::script(&RuleOp::DeleteTable(id.clone())))).map(drop),
            Applier::Iptables => {
                let chain = iptables_chain(id);
                let iptables = tool(family, "");
                // Each step may find nothing to remove (a flushed host): that is the state wanted.
                run(&iptables, &["-w", "-t", "nat", "-D", "POSTROUTING", "-j", &chain], None)?.ok();
                run(&iptables, &["-w", "-t", "nat", "-F", &chain], None)?.ok();
                run(&iptables, &["-w", "-t", "nat", "-X", &chain], None)?.ok();
                Ok(())
            }
        }
    }
}

/// The iptables chain a plugin table becomes (`WEFT-CNI-<HASH>-MASQ`).
fn iptables_chain(id: &TableId) -> String {
    format!("{}-{}", id.name.to_ascii_uppercase(), cni_masq::CHAIN)
}

fn nft_holds(table: &Table) -> Result<bool> {
    let parse = |text: &str| -> Result<serde_json::Value> {
        serde_json::from_str(text).map_err(|e| CniError::Decoding(format!("nft -j output: {e}")))
    };
    let tables = parse(&run_ok("nft", &["-j", "list", "tables"], None)?)?;
    let listed = nft::parse_table_list(&tables).map_err(CniError::Decoding)?;
    if !listed.contains(&table.id) {
        return Ok(false);
    }
    let text = run_ok("nft", &["-j", "list", "table", table.id.family.keyword(), &table.id.name], None)?;
    let mut observed = RuleSet::default();
    nft::parse_table(&table.id, &parse(&text)?, &mut observed).map_err(CniError::Decoding)?;
    Ok(observed.tables.get(&table.id) == Some(table))
}

/// Whether `iptables-save -t nat` output holds the chain's rules exactly as rendered, and every jump into it.
fn iptables_holds(saved: &str, restore: &iptables::Restore) -> bool {
    let rules = |text: &str| -> Vec<String> {
        text.lines().filter(|l| l.starts_with("-A ") && !l.starts_with("-A POSTROUTING ")).map(str::to_string).collect()
    };
    let jumps_present = restore.jumps.iter().all(|jump| {
        // "-t nat POSTROUTING -j X" is saved as "-A POSTROUTING -j X".
        let rule = jump.split_whitespace().skip(2).collect::<Vec<_>>().join(" ");
        saved.lines().any(|l| l == format!("-A {rule}"))
    });
    let wanted = rules(&restore.text);
    let chain_of = |l: &String| l.split_whitespace().nth(1).map(str::to_string);
    let ours: Vec<String> = wanted.iter().filter_map(chain_of).collect();
    let held: Vec<String> =
        rules(saved).into_iter().filter(|l| chain_of(l).is_some_and(|c| ours.contains(&c))).collect();
    jumps_present && held == wanted
}

fn ensure_jump(family: Family, jump: &str) -> Result<()> {
    let words: Vec<&str> = jump.split_whitespace().collect();
    let (table_args, rule) = words.split_at(2);
    let iptables = tool(family, "");
    let check: Vec<&str> = ["-w"].iter().chain(table_args).chain(&["-C"]).chain(rule).copied().collect();
    if run(&iptables, &check, None)?.is_ok() {
        return Ok(());
    }
    let (chain, spec) = rule.split_at(1);
    let insert: Vec<&str> =
        ["-w"].iter().chain(table_args).chain(&["-I", chain[0], "1"]).chain(spec).copied().collect();
    run_ok(&iptables, &insert, None).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> Vec<MasqueradedSubnet> {
        subnets(&["10.244.3.0/24".parse().unwrap()], &["10.244.0.0/16".parse().unwrap()])
    }

    #[test]
    fn markers_name_the_netns_network_and_subnets() {
        let both = subnets(
            &["10.244.3.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()],
            &["10.244.0.0/16".parse().unwrap()],
        );
        assert_eq!(both[1].cluster, None, "no IPv6 cluster network given");
        assert!(marker("c7", "n", &both).ends_with("c7-n-10.244.3.0_24+fd00___64"));
        assert!(marker("c7", "n", &v4()).to_string_lossy().contains(&marker_prefix("c7", "n")));
    }

    #[test]
    fn iptables_save_output_is_compared_with_the_rendering() {
        let table = cni_masq::table("cbr0", Family::V4, &v4()).unwrap();
        let restore = iptables::render(&table).unwrap().remove(0);
        let chain = iptables_chain(&table.id);
        let rules: Vec<&str> = restore.text.lines().filter(|l| l.starts_with("-A ")).collect();
        let saved = format!("*nat\n:{chain} - [0:0]\n-A POSTROUTING -j {chain}\n{}\nCOMMIT\n", rules.join("\n"));
        assert!(iptables_holds(&saved, &restore), "{saved}");
        let flushed = format!("*nat\n:{chain} - [0:0]\n-A POSTROUTING -j {chain}\nCOMMIT\n");
        assert!(!iptables_holds(&flushed, &restore));
        let no_jump = saved.replace(&format!("-A POSTROUTING -j {chain}\n"), "");
        assert!(!iptables_holds(&no_jump, &restore));
        let foreign = saved.replace("COMMIT", &format!("-A {chain} -j ACCEPT\nCOMMIT"));
        assert!(!iptables_holds(&foreign, &restore), "a stranger's rule in our chain");
    }
}
