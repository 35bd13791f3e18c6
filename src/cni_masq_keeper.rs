//! Keeps the CNI plugin's own `ipMasq` tables in place (the plugin masquerades when weftd does not,
//! FLANNEL_IPMASQ=false). The plugin only runs when a runtime runs it, so it leaves a record of each network's
//! tables in [`cni_masq::RECORD_DIR`] and removes it with the tables; on every resync weftd reads the records of
//! its own netns and puts back any table that differs or is gone, through the same appliers it uses for its own
//! rules.
//!
//! Every record is untrusted input: it must be a regular file of weftd's user, writable by nobody else, at most
//! [`cni_masq::RECORD_MAX_BYTES`], and parse as a [`Record`], which holds the inputs of
//! [`cni_masq::table`] and never rules. So whatever a record says, the only tables weftd can build from it are
//! masquerade tables of the plugin's shape, named after the network. A bad record is logged once, counted, and
//! never applied. weftd never deletes a plugin table: the plugin's DEL of a network's last container removes the
//! record first, under the records' lock that weftd also holds while it applies, so nothing comes back after.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};
use weft_backends::rules::cni_masq::{self, Firewall, Record, RecordError};
use weft_backends::rules::{
    diff_rules, IptablesRules, IptablesVariant, NftRules, RuleOp, RuleSet, Rules, RulesError, Table,
};

/// Why a file in the records directory was not used.
#[derive(Debug, thiserror::Error)]
pub enum BadRecord {
    #[error("record {file}: {why}")]
    File { file: String, why: String },
    #[error("record {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// The records of one netns, read from a directory.
#[derive(Debug, Default)]
pub struct Records {
    /// The tables to keep, with the firewall the plugin put them in.
    pub tables: Vec<(Firewall, Table)>,
    pub bad: Vec<BadRecord>,
}

/// Reads the records of netns `netns_id` in `dir` (none when `dir` does not exist). Other netns's records, the
/// lock and the plugin's temporary files are passed over.
pub fn read_records(dir: &Path, netns_id: &str) -> Records {
    let mut records = Records::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return records;
    };
    let prefix = format!("{netns_id}-");
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".json"))
        .collect();
    names.sort();
    for name in names {
        match read_record(&dir.join(&name), &name, netns_id) {
            Ok((record, tables)) => records.tables.extend(tables.into_iter().map(|t| (record.firewall, t))),
            Err(bad) => records.bad.push(bad),
        }
    }
    records
}

fn read_record(path: &Path, name: &str, netns_id: &str) -> Result<(Record, Vec<Table>), BadRecord> {
    let refuse = |why: &str| BadRecord::File { file: name.to_string(), why: why.to_string() };
    let io = |source| BadRecord::Io { file: name.to_string(), source };
    // Not followed: a link could name any file of the host.
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(refuse("not a regular file"));
    }
    // SAFETY: geteuid has no preconditions.
    if meta.uid() != unsafe { libc::geteuid() } || meta.mode() & 0o022 != 0 {
        return Err(refuse("not owned by weftd's user, or writable by others"));
    }
    let mut text = Vec::new();
    File::open(path).map_err(io)?.take(cni_masq::RECORD_MAX_BYTES + 1).read_to_end(&mut text).map_err(io)?;
    Ok(Record::parse(name, netns_id, &text)?)
}

/// The records' lock, taken without waiting: a plugin run holding it is changing a network, and the next
/// resync looks again.
fn try_lock(dir: &Path) -> std::io::Result<Option<File>> {
    let file =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(cni_masq::RECORD_LOCK))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(file));
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(None)
    } else {
        Err(e)
    }
}

/// What one resync did.
#[derive(Debug, Default)]
pub struct KeeperReport {
    pub applied: Vec<RuleOp>,
    pub failed: Vec<(RuleOp, RulesError)>,
}

/// Keeps the recorded tables of weftd's netns in place.
pub struct CniMasqKeeper<N: Rules, I: Rules> {
    dir: PathBuf,
    netns_id: String,
    nft: N,
    iptables: I,
    /// Bad records as of the last resync, to warn once per file and reason.
    known_bad: BTreeSet<String>,
    bad_records: Arc<AtomicU64>,
}

impl<N: Rules, I: Rules> CniMasqKeeper<N, I> {
    /// `bad_records` counts every distinct bad record seen (a file and its reason).
    pub fn new(dir: PathBuf, netns_id: String, nft: N, iptables: I, bad_records: Arc<AtomicU64>) -> Self {
        CniMasqKeeper { dir, netns_id, nft, iptables, known_bad: BTreeSet::new(), bad_records }
    }

    /// Reads the records and puts back every recorded table the host does not hold exactly.
    pub async fn resync(&mut self) -> Result<KeeperReport, RulesError> {
        let mut report = KeeperReport::default();
        if !self.dir.is_dir() {
            self.known_bad.clear();
            return Ok(report);
        }
        let _lock = match try_lock(&self.dir) {
            Ok(Some(lock)) => lock,
            Ok(None) => return Ok(report),
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "cannot lock the CNI plugin's ipMasq records");
                return Ok(report);
            }
        };
        let records = read_records(&self.dir, &self.netns_id);
        let bad: BTreeSet<String> = records.bad.iter().map(ToString::to_string).collect();
        for text in bad.difference(&self.known_bad) {
            self.bad_records.fetch_add(1, Ordering::Relaxed);
            warn!("ignoring a CNI plugin ipMasq record: {text}");
        }
        self.known_bad = bad;
        for firewall in [Firewall::Nft, Firewall::Iptables] {
            let mut desired = RuleSet::default();
            for (_, table) in records.tables.iter().filter(|(f, _)| *f == firewall) {
                desired.add(table.clone());
            }
            if desired.is_empty() {
                continue;
            }
            let owned: Vec<_> = desired.tables.keys().cloned().collect();
            let observed = match firewall {
                Firewall::Nft => self.nft.observe(&owned).await?,
                Firewall::Iptables => self.iptables.observe(&owned).await?,
            };
            // Only replacements: every observed table is a desired one, so diff_rules deletes nothing.
            for op in diff_rules(&desired, &observed) {
                let result = match firewall {
                    Firewall::Nft => self.nft.apply(&op).await,
                    Firewall::Iptables => self.iptables.apply(&op).await,
                };
                match result {
                    Ok(()) => report.applied.push(op),
                    Err(e) => report.failed.push((op, e)),
                }
            }
        }
        Ok(report)
    }
}

/// weftd's keeper for its own netns: nft and the host's default iptables, as the plugin finds them on `PATH`.
/// None when the netns cannot be identified (then records cannot be told apart from other netns's).
pub fn for_this_netns(bad_records: Arc<AtomicU64>) -> Option<CniMasqKeeper<NftRules, IptablesRules>> {
    match weft_netlink::netns::current_id() {
        Ok(id) => Some(CniMasqKeeper::new(
            PathBuf::from(cni_masq::RECORD_DIR),
            id,
            NftRules::system(),
            IptablesRules::system(IptablesVariant::Default),
            bad_records,
        )),
        Err(e) => {
            warn!(error = %e, "cannot identify this netns; the CNI plugin's ipMasq tables are restored by CHECK only");
            None
        }
    }
}

/// Runs `keeper` once per `every` until shutdown.
pub async fn run<N: Rules, I: Rules>(
    mut keeper: CniMasqKeeper<N, I>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match keeper.resync().await {
            Ok(report) => {
                if !report.applied.is_empty() {
                    let ops: Vec<String> = report.applied.iter().map(ToString::to_string).collect();
                    info!(?ops, "restored the CNI plugin's ipMasq tables");
                }
                for (op, e) in &report.failed {
                    warn!(%op, error = %e, "restoring a CNI plugin ipMasq table failed; will retry");
                }
            }
            Err(e) => warn!(error = %e, "cannot read the CNI plugin's ipMasq tables; will retry"),
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;
    use weft_backends::fake::FakeRules;
    use weft_backends::rules::cni_masq::MasqueradedSubnet;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("weft-keeper-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn record(network: &str, firewall: Firewall) -> String {
        let subnets = [MasqueradedSubnet {
            subnet: "10.244.3.1/24".parse().unwrap(),
            cluster: Some("10.244.0.0/16".parse().unwrap()),
        }];
        Record::new(network, firewall, &subnets).to_json()
    }

    fn keeper(dir: &Dir) -> (CniMasqKeeper<FakeRules, FakeRules>, Arc<AtomicU64>) {
        let bad = Arc::new(AtomicU64::new(0));
        let keeper =
            CniMasqKeeper::new(dir.0.clone(), "7".into(), FakeRules::default(), FakeRules::default(), bad.clone());
        (keeper, bad)
    }

    #[test]
    fn only_good_records_of_this_netns_are_read() {
        let dir = Dir::new("read");
        dir.write(&Record::file_name("7", "cbr0"), &record("cbr0", Firewall::Nft));
        dir.write(&Record::file_name("8", "cbr0"), &record("cbr0", Firewall::Nft));
        dir.write(&Record::file_name("7", "cbr1"), &record("cbr0", Firewall::Nft));
        dir.write("7-weft-cni-00000000.json.tmp", "half a rec");
        let open = dir.write(&Record::file_name("7", "cbr2"), &record("cbr2", Firewall::Iptables));
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.0.join(Record::file_name("7", "cbr3"))).unwrap();

        let records = read_records(&dir.0, "7");
        let tables: Vec<String> = records.tables.iter().map(|(f, t)| format!("{f:?} {}", t.id)).collect();
        assert_eq!(tables, vec![format!("Nft {}", cni_masq::table_id("cbr0", weft_backends::Family::V4))]);
        let bad: Vec<String> = records.bad.iter().map(ToString::to_string).collect();
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad.iter().any(|b| b.contains("another file")), "{bad:?}");
        assert!(bad.iter().any(|b| b.contains("writable by others")), "{bad:?}");
        assert!(bad.iter().any(|b| b.contains("not a regular file")), "{bad:?}");
        assert!(read_records(&dir.0.join("missing"), "7").tables.is_empty());
    }

    #[tokio::test]
    async fn a_flushed_table_is_put_back_and_a_removed_record_is_left_alone() {
        let dir = Dir::new("resync");
        let (mut keeper, bad) = keeper(&dir);
        let path = dir.write(&Record::file_name("7", "cbr0"), &record("cbr0", Firewall::Nft));
        dir.write(&Record::file_name("7", "cbr9"), "{}");

        let report = keeper.resync().await.unwrap();
        assert_eq!(report.applied.len(), 1, "{:?}", report.applied);
        assert_eq!(keeper.nft.tables.tables.len(), 1);
        assert!(keeper.iptables.tables.tables.is_empty());
        assert_eq!(bad.load(Ordering::Relaxed), 1, "the bad record is counted");
        assert!(keeper.resync().await.unwrap().applied.is_empty(), "nothing to do");
        assert_eq!(bad.load(Ordering::Relaxed), 1, "and counted once");

        keeper.nft.tables.tables.clear();
        assert_eq!(keeper.resync().await.unwrap().applied.len(), 1, "flushed: put back");

        std::fs::remove_file(path).unwrap();
        keeper.nft.tables.tables.clear();
        assert!(keeper.resync().await.unwrap().applied.is_empty(), "no record, no table");
        assert!(keeper.nft.tables.tables.is_empty());
    }

    #[tokio::test]
    async fn a_held_lock_means_a_plugin_is_changing_things_and_this_resync_waits() {
        let dir = Dir::new("lock");
        let (mut keeper, _) = keeper(&dir);
        dir.write(&Record::file_name("7", "cbr0"), &record("cbr0", Firewall::Iptables));
        let held = try_lock(&dir.0).unwrap().expect("free");
        assert!(keeper.resync().await.unwrap().applied.is_empty());
        drop(held);
        assert_eq!(keeper.resync().await.unwrap().applied.len(), 1);
        assert_eq!(keeper.iptables.tables.tables.len(), 1);
    }
}
