//! host-local's on-disk store: `<data dir>/<network name>/` holds one file per allocated address (named by the
//! address, containing "<container id>\r\n<ifname>"), `last_reserved_ip.<range index>`, and `lock`, which every
//! change holds with flock(2). The layout is host-local's so that the two can take over from each other.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{CniError, Result};
use crate::ipam::Range;

/// An open store, locked until dropped.
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

/// One allocation as recorded on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub container_id: String,
    /// None in host-local's older format, which recorded only the container ID.
    pub ifname: Option<String>,
}

impl Allocation {
    fn belongs_to(&self, id: &str, ifname: &str) -> bool {
        self.container_id == id && self.ifname.as_deref().is_none_or(|i| i == ifname)
    }
}

impl Store {
    /// Opens (creating if needed) and locks the store of network `network` under `data_dir`. The name must have
    /// been validated: it becomes a path component.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(|e| CniError::io(format!("creating IPAM store {}", dir.display()), e))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| CniError::io(format!("opening {}", lock_path.display()), e))?;
        // SAFETY: flock on an fd we own; blocking until the holder (another plugin run) releases it.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(CniError::io(format!("locking {}", lock_path.display()), io::Error::last_os_error()));
        }
        Ok(Store { dir, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn last_reserved_path(&self, range_index: usize) -> PathBuf {
        self.dir.join(format!("last_reserved_ip.{range_index}"))
    }

    /// Reserves the next free address of `range` for (id, ifname).
    pub fn reserve(&self, id: &str, ifname: &str, range: &Range, range_index: usize) -> Result<IpAddr> {
        let last_path = self.last_reserved_path(range_index);
        let last_text = fs::read_to_string(&last_path).unwrap_or_default();
        let last = last_text.trim().parse().ok();
        for ip in range.candidates(last) {
            let path = self.dir.join(ip.to_string());
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let written = f.write_all(format!("{id}\r\n{ifname}").as_bytes());
                    let recorded = written.and_then(|()| overwrite(&last_path, &ip.to_string(), last_text.len()));
                    if let Err(e) = recorded {
                        let _ = fs::remove_file(&path);
                        return Err(CniError::io(format!("recording allocation {}", path.display()), e));
                    }
                    return Ok(ip);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(CniError::io(format!("creating {}", path.display()), e)),
            }
        }
        Err(CniError::PoolExhausted(format!(
            "{} (network {:?}, store {})",
            range.subnet,
            self.network(),
            self.dir.display()
        )))
    }

    fn network(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Every allocation on disk (files whose name is an address).
    pub fn allocations(&self) -> Result<Vec<Allocation>> {
        let entries =
            fs::read_dir(&self.dir).map_err(|e| CniError::io(format!("reading {}", self.dir.display()), e))?;
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse::<IpAddr>().ok()) else { continue };
            let Ok(text) = fs::read_to_string(entry.path()) else { continue };
            let mut lines = text.trim().lines().map(str::trim);
            let container_id = lines.next().unwrap_or_default().to_string();
            let ifname = lines.next().map(str::to_string);
            found.push(Allocation { ip, container_id, ifname });
        }
        found.sort_by_key(|a| a.ip);
        Ok(found)
    }

    /// The addresses held by (id, ifname).
    pub fn find(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        Ok(self.allocations()?.into_iter().filter(|a| a.belongs_to(id, ifname)).map(|a| a.ip).collect())
    }

    /// Releases one address.
    pub fn release(&self, ip: IpAddr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(CniError::io(format!("removing {}", path.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Releases everything (id, ifname) holds; returns what was released.
    pub fn release_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let ips = self.find(id, ifname)?;
        for ip in &ips {
            self.release(*ip)?;
        }
        Ok(ips)
    }
}

/// Replaces the content of a small file in place. Truncating on every ADD (O_TRUNC) costs a journaled truncate on
/// ext4; consecutive addresses mostly have the same length, so the size only changes when the text gets shorter.
fn overwrite(path: &Path, text: &str, old_len: usize) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
    f.write_all(text.as_bytes())?;
    if old_len > text.len() {
        f.set_len(text.len() as u64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-cni-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn reserves_in_order_records_like_host_local_and_releases() {
        let root = temp_dir("a");
        let range = Range::for_subnet("10.0.0.1/29".parse().unwrap()).unwrap();
        let store = Store::open(&root, "net").unwrap();
        let a = store.reserve("ctr-a", "eth0", &range, 0).unwrap();
        let b = store.reserve("ctr-b", "eth0", &range, 0).unwrap();
        assert_eq!((a.to_string().as_str(), b.to_string().as_str()), ("10.0.0.2", "10.0.0.3"));
        assert_eq!(fs::read_to_string(root.join("net/10.0.0.2")).unwrap(), "ctr-a\r\neth0");
        assert_eq!(fs::read_to_string(root.join("net/last_reserved_ip.0")).unwrap(), "10.0.0.3");
        // Shorter text than before replaces the old one completely.
        overwrite(&root.join("net/last_reserved_ip.0"), "10.0.0.9", 10).unwrap();
        assert_eq!(fs::read_to_string(root.join("net/last_reserved_ip.0")).unwrap(), "10.0.0.9");
        overwrite(&root.join("net/last_reserved_ip.0"), "10.0.0.3", 8).unwrap();
        assert!(root.join("net/lock").exists());
        assert_eq!(store.release_by_id("ctr-a", "eth0").unwrap(), vec![a]);
        // Round robin: .2 is free again but .4 comes next.
        assert_eq!(store.reserve("ctr-c", "eth0", &range, 0).unwrap().to_string(), "10.0.0.4");
        for id in ["d", "e"] {
            store.reserve(id, "eth0", &range, 0).unwrap();
        }
        assert_eq!(store.reserve("f", "eth0", &range, 0).unwrap().to_string(), "10.0.0.2", "wrapped around");
        let e = store.reserve("g", "eth0", &range, 0).unwrap_err();
        assert_eq!(e.code(), 101);
        assert!(e.to_string().contains("10.0.0.0/29"), "{e}");
        drop(store);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn reads_host_locals_old_format_and_ignores_other_files() {
        let root = temp_dir("b");
        let store = Store::open(&root, "net").unwrap();
        fs::write(store.dir().join("10.0.0.9"), "old-ctr\n").unwrap();
        fs::write(store.dir().join("10.0.0.8"), "new-ctr\r\nnet1").unwrap();
        let all = store.allocations().unwrap();
        assert_eq!(all.len(), 2, "lock and other files are not allocations: {all:?}");
        assert_eq!(store.find("old-ctr", "eth0").unwrap().len(), 1, "no ifname recorded: matches any");
        assert!(store.find("new-ctr", "eth0").unwrap().is_empty());
        assert_eq!(store.release_by_id("new-ctr", "net1").unwrap().len(), 1);
        drop(store);
        fs::remove_dir_all(root).unwrap();
    }
}
