//! Paths outside a test's own temp dir that a runtime under test creates or needs (containerd's and Docker's
//! /run directories, CNI's /etc and /opt directories), and the installed tools the runtime tests call.

use std::path::{Path, PathBuf};

/// Paths outside our temp dir that the test creates, removed on drop (directories only if we created them).
#[derive(Default)]
pub struct SystemPaths {
    pub files: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
}

impl SystemPaths {
    /// Creates `dir` (and its missing parents), to be removed on drop if it did not exist.
    pub fn dir(&mut self, dir: &Path) {
        let mut missing = Vec::new();
        let mut d = Some(dir);
        while let Some(p) = d.filter(|p| !p.exists()) {
            missing.push(p.to_path_buf());
            d = p.parent();
        }
        std::fs::create_dir_all(dir).unwrap();
        // Removed deepest first.
        self.dirs.extend(missing);
    }

    /// Remembers a directory someone else (containerd, dockerd) may create, to remove it if it did not exist before.
    pub fn watch(&mut self, dir: &str) {
        if !Path::new(dir).exists() {
            self.dirs.push(PathBuf::from(dir));
        }
    }
}

impl Drop for SystemPaths {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        for d in &self.dirs {
            // Only directories that did not exist before the test; whatever is in them is ours.
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The installed `tool` from the system directories (never a copy elsewhere on PATH); panics naming scripts/deps.
#[track_caller]
pub fn need(tool: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is missing: run scripts/deps (installs containerd, runc, busybox-static, docker.io)");
}
