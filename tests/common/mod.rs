//! Shared harness for the integration tests: labs that tear themselves
//! down, a root/tool check that never skips silently, and a polling helper.
//!
//! Use from a test file with `mod common;`.

// Each test binary uses only part of the harness.
#![allow(dead_code)]

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use weft_lab::lab::{self, Lab, LabSpec};

pub mod system_paths;

/// The weftd built by cargo for this test run. (CARGO_BIN_EXE_* is set
/// when integration tests are compiled, and this module is compiled as
/// part of each of them.)
pub const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");

/// The weftctl next to [`WEFTD`]. weftctl belongs to the `weftctl` package (it links the lab, which depends on the
/// `weft` library), so cargo sets no CARGO_BIN_EXE_weftctl here. Cargo builds it into the same directory whenever
/// the weftctl package's own tests are built: `cargo test` at the top (scripts/test) or `cargo test --test cli`.
#[track_caller]
pub fn weftctl() -> PathBuf {
    let path = Path::new(WEFTD).with_file_name("weftctl");
    assert!(path.is_file(), "{} is not built; build it with `cargo build -p weftctl`", path.display());
    path
}

/// Lines of each weftd log shown when a test fails.
const LOG_TAIL_LINES: usize = 60;
/// Lines of etcd's log shown when a test fails (mostly start-up noise).
const ETCD_LOG_TAIL_LINES: usize = 20;

static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);

/// Panics unless the tests run as root with `ip`, `etcd`, `etcdctl`,
/// `sysctl` and `ping` installed. CI runs as root: a lab test that cannot
/// run must fail loudly, never pass by skipping.
#[track_caller]
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test builds network namespaces and must run as root (euid is {euid}); \
         run e.g. `sudo -E cargo test` — lab tests never skip"
    );
    if let Err(e) = lab::check_tools() {
        panic!("this test needs a tool that is missing: {e}");
    }
}

/// A lab for one test, removed when dropped (also when the test panics,
/// in which case the end of every weftd log and of etcd's log is printed
/// first, so the test output shows what the daemons said).
pub struct TestLab(Lab);

impl TestLab {
    /// A running lab with `hosts` hosts, weftd on each and one container
    /// per host.
    #[track_caller]
    pub fn new(hosts: usize) -> TestLab {
        TestLab::from_spec(TestLab::spec(hosts))
    }

    /// A lab with namespaces and etcd only: no weftd, no containers (see
    /// `Lab::start_weftd` and `Lab::attach_container`).
    #[track_caller]
    pub fn without_weftd(hosts: usize) -> TestLab {
        TestLab::from_spec(LabSpec { start_weftd: false, ..TestLab::spec(hosts) })
    }

    /// The spec `new` uses: a unique name (`t<pid>-<n>`, so parallel tests
    /// and concurrent test runs never collide), state under the system temp
    /// dir, and cargo's weftd. Adjust it and pass it to `from_spec`:
    /// `TestLab::from_spec(LabSpec { backend: "host-gw".into(), ..TestLab::spec(2) })`.
    pub fn spec(hosts: usize) -> LabSpec {
        let name = format!("t{}-{}", std::process::id(), NEXT_LAB.fetch_add(1, Ordering::Relaxed));
        LabSpec { state_root: state_root(), ..LabSpec::new(name, hosts, WEFTD) }
    }

    /// Builds the lab described by `spec`, panicking with the reason (which
    /// includes the end of weftd's log when weftd is what failed).
    #[track_caller]
    pub fn from_spec(spec: LabSpec) -> TestLab {
        require_root();
        match Lab::up(spec) {
            Ok(lab) => TestLab(lab),
            Err(e) => panic!("lab up failed: {e}"),
        }
    }

    /// Runs `args` in namespace `ns` and returns its stdout; panics (naming the command and its stderr) when it
    /// cannot start or fails.
    #[track_caller]
    pub fn sh(&self, ns: &str, args: &[&str]) -> String {
        let out = self.exec_in(ns, args).unwrap_or_else(|e| panic!("{args:?} in {ns}: {e}"));
        assert!(out.status.success(), "{args:?} in {ns} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`TestLab::sh`] in host `h`'s namespace.
    #[track_caller]
    pub fn host_sh(&self, h: usize, args: &[&str]) -> String {
        self.sh(&self.host_ns(h), args)
    }

    /// Ok when every host's container pings every other host's container; otherwise the first pair that cannot.
    pub fn all_containers_ping(&self) -> Result<(), String> {
        for from in 1..=self.hosts() {
            for to in (1..=self.hosts()).filter(|to| *to != from) {
                let ip = self.container_ip(to).ok_or_else(|| format!("h{to} has no container"))?;
                if !self.ping(from, ip) {
                    return Err(format!("container on h{from} cannot ping h{to}'s container {ip}"));
                }
            }
        }
        Ok(())
    }

    /// The lease key (below the subnets prefix) of host `h`, from its subnet file.
    #[track_caller]
    pub fn lease_key(&self, h: usize) -> String {
        weft::subnet_file::lease_key(&self.subnet_env(h).unwrap()).expect("subnet file has a subnet").to_string()
    }

    /// Writes `value` at `/coreos.com/network/subnets/<key>` under a fresh 600 s etcd lease, as flanneld and
    /// weftd write theirs.
    #[track_caller]
    pub fn put_leased(&self, key: &str, value: &str) {
        let grant = self.etcdctl_ok(["lease", "grant", "600"]).unwrap();
        let id = grant.split_whitespace().nth(1).expect("etcdctl lease grant prints an id").to_string();
        self.etcdctl_ok(["put", &format!("--lease={id}"), &format!("{SUBNETS}{key}"), value]).unwrap();
    }

    /// Host `h`'s /metrics text, read from inside its namespace at `port`.
    #[track_caller]
    pub fn metrics(&self, h: usize, port: &str) -> String {
        let url = format!("http://{}:{port}/metrics", self.host_ip(h));
        self.host_sh(h, &["curl", "-s", "--max-time", "5", &url])
    }

    /// The value of host `h`'s metric `name` (with its labels, if any, as they are printed), if exported.
    #[track_caller]
    pub fn metric(&self, h: usize, port: &str, name: &str) -> Option<String> {
        let text = self.metrics(h, port);
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).map(str::to_string))
    }

    /// The end of etcd's log and of every host's weftd log.
    pub fn log_tails(&self) -> String {
        let mut text = format!(
            "===== {} (last {ETCD_LOG_TAIL_LINES} lines) =====\n{}\n",
            self.etcd_log().display(),
            lab::log_tail(&self.etcd_log(), ETCD_LOG_TAIL_LINES)
        );
        for host in 1..=self.hosts() {
            let log = self.weftd_log(host);
            text += &format!(
                "===== h{host}: {} (last {LOG_TAIL_LINES} lines) =====\n{}\n",
                log.display(),
                lab::log_tail(&log, LOG_TAIL_LINES)
            );
        }
        text
    }
}

impl Deref for TestLab {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        &self.0
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("test failed; logs of lab {}:\n{}", self.name(), self.log_tails());
        }
        if let Err(e) = self.0.down() {
            // A second panic while unwinding would abort the whole run.
            if panicking {
                eprintln!("lab teardown failed too: {e}");
            } else {
                panic!("lab teardown failed: {e}");
            }
        }
    }
}

/// Where flannel's schema keeps the leases.
pub const SUBNETS: &str = "/coreos.com/network/subnets/";

/// Where test labs keep their state.
fn state_root() -> PathBuf {
    std::env::temp_dir().join("weft-lab-tests")
}

/// Calls `check` every `interval` until it returns Ok; panics with its last
/// error once `timeout` has passed.
#[track_caller]
pub fn eventually(timeout: Duration, interval: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let started = Instant::now();
    loop {
        let error = match check() {
            Ok(()) => return,
            Err(e) => e,
        };
        if started.elapsed() >= timeout {
            panic!("condition still not met after {:?}: {error}", started.elapsed());
        }
        std::thread::sleep(interval);
    }
}

/// An `ip route` line with the nexthop object's id taken out (`nhid 4026531840 via ...` reads `via ...`), and
/// whether it named one: weft's IPv4 gateway routes go through nexthop objects numbered from 0xF000_0000.
#[allow(dead_code)]
pub fn through_nexthop(route: &str) -> (String, bool) {
    let words: Vec<&str> = route.split_whitespace().collect();
    match words.iter().position(|w| *w == "nhid") {
        Some(at) if words.get(at + 1).and_then(|id| id.parse::<u32>().ok()).is_some_and(|id| id >= 0xF000_0000) => {
            let rest: Vec<&str> = words[..at].iter().chain(&words[at + 2..]).copied().collect();
            (rest.join(" "), true)
        }
        _ => (words.join(" "), false),
    }
}
