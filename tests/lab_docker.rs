//! Docker on weft, as docs/docker.md tells it: Debian's dockerd, started in a lab host's namespace with the options
//! `weftctl docker-opts` writes from that host's subnet.env, runs a container (from a busybox rootfs imported
//! locally: no registry, no network) that reaches the CNI container on the other host, and is reached from it.
//!
//! The daemon is the test's alone: its data root, exec root, pid file, socket and config file are in the test's
//! temp dir, its containers' cgroups under a parent named after the test, and it runs in a private mount namespace
//! (its mounts never reach the machine's). It stops by its pid, and whatever it leaves is removed, also when the
//! test fails. Its firewall rules (`--iptables` stays on, so `--ip-masq` means what it says) are written in the
//! lab host's namespace and go with it. Root only; needs `scripts/deps` (docker.io).

mod common;

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::system_paths::{need, SystemPaths};
use common::{eventually, require_root, weftctl, TestLab};
use ipnetwork::Ipv4Network;
use weft::docker_opts::read_assignments;

/// Debian's daemon and its own client, by path: another `docker` on PATH (a static client in /usr/local/bin, say)
/// may speak a different API version.
const DOCKERD: &str = "/usr/sbin/dockerd";
const DOCKER: &str = "/usr/bin/docker";
/// What dockerd finds its helpers (containerd, runc, docker-init, iptables) on: Debian's, nothing else.
const DOCKERD_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// How long dockerd may take to answer its API, and to stop.
const DOCKERD_START: Duration = Duration::from_secs(60);
const DOCKERD_STOP: Duration = Duration::from_secs(30);
/// Lines of dockerd's log shown when the test fails.
const LOG_TAIL_LINES: usize = 40;

/// Runs in the daemon's new mount namespace (already in the host's netns), then becomes dockerd. `ip netns exec`
/// would mount the netns's sysfs too, but a fresh /sys has no cgroup mounts and dockerd refuses to start without
/// them; so the cgroup tree is held aside, sysfs mounted, and the tree moved back on top. $1 is an empty directory
/// to hold it; the rest is dockerd's command line.
const ENTER_HOST_SCRIPT: &str = r#"set -eu
hold=$1; shift
mount --rbind /sys/fs/cgroup "$hold"
mount -t sysfs sysfs /sys
mount --move "$hold" /sys/fs/cgroup
exec "$@""#;

#[test]
fn dockerd_with_weftctl_docker_opts_reaches_a_container_on_another_host() {
    require_root();
    for tool in [DOCKERD, DOCKER] {
        assert!(Path::new(tool).is_file(), "{tool} is missing: run scripts/deps (installs docker.io)");
    }
    let (busybox, tar, nsenter, unshare) = (need("busybox"), need("tar"), need("nsenter"), need("unshare"));
    let weftctl = weftctl();

    let lab = TestLab::new(2);
    // Docker's bridge takes the lease's first address, which host 1's cni0 has: host 1's CNI container and its
    // bridge give way. Host 2 keeps its CNI container, the one Docker's container must reach.
    lab.detach_container(1).unwrap();
    let remote = lab.container_ip(2).expect("host 2 has a CNI container");

    let tag = format!("wdk{}", std::process::id());
    let dir = TempDir::new(std::env::temp_dir().join(format!("{tag}-docker")));
    let mut system = SystemPaths::default();
    // dockerd's plugin directory and containerd's shim sockets have fixed places.
    system.watch("/run/docker");
    system.watch("/run/containerd");

    // The options, as a unit file would get them: `weftctl docker-opts` in the host's namespace (its route check
    // reads that host's routing table), then the variable from the file it wrote.
    let subnet_env = read_assignments(&std::fs::read_to_string(lab.subnet_file(1)).unwrap());
    let (subnet, mtu) = (&subnet_env["FLANNEL_SUBNET"], &subnet_env["FLANNEL_MTU"]);
    let opts_file = dir.path().join("docker_opts.env");
    let out = lab
        .exec_in(
            &lab.host_ns(1),
            [
                weftctl.as_os_str(),
                "docker-opts".as_ref(),
                "-c".as_ref(),
                "-f".as_ref(),
                lab.subnet_file(1).as_os_str(),
                "-d".as_ref(),
                opts_file.as_os_str(),
            ],
        )
        .unwrap();
    assert!(out.status.success(), "weftctl docker-opts failed: {}", String::from_utf8_lossy(&out.stderr));
    let docker_opts = read_assignments(&std::fs::read_to_string(&opts_file).unwrap())["DOCKER_OPTS"].clone();
    let options: Vec<String> = docker_opts.split_whitespace().map(str::to_string).collect();
    // The lab's weftd does not masquerade, so Docker must.
    assert_eq!(options, [format!("--bip={subnet}"), "--ip-masq=true".to_string(), format!("--mtu={mtu}")]);

    let rootfs_tar = busybox_rootfs(dir.path(), &busybox, &tar);
    let mut daemon = Dockerd::start(&lab, 1, &tag, dir.path(), &options, &nsenter, &unshare);

    let image = format!("weft-busybox:{tag}");
    daemon.docker_ok(["import".as_ref(), rootfs_tar.as_os_str(), image.as_ref()]);
    let container = format!("{tag}-c");
    daemon.docker_ok(["run", "-d", "--name", &container, &image, "sleep", "300"]);

    // The container is on the bridge Docker made from the options: an address of host 1's lease, the overlay's MTU.
    let lease: Ipv4Network = subnet.parse().unwrap();
    let address: Ipv4Addr = daemon
        .docker_ok(["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &container])
        .trim()
        .parse()
        .expect("the container has an IPv4 address");
    assert!(lease.contains(address) && address != lease.ip(), "container address {address} not in lease {lease}");
    assert_eq!(daemon.docker_ok(["exec", &container, "cat", "/sys/class/net/eth0/mtu"]).trim(), mtu);
    let bridge = lab.exec_in(&lab.host_ns(1), ["ip", "-o", "-4", "addr", "show", "dev", "docker0"]).unwrap();
    assert!(String::from_utf8_lossy(&bridge.stdout).contains(&format!("inet {subnet} ")), "docker0: {bridge:?}");
    // --ip-masq=true: Docker masquerades its subnet leaving the bridge, in the host's namespace.
    let nat = lab.exec_in(&lab.host_ns(1), ["iptables-save", "-t", "nat"]).unwrap();
    let masquerade = format!("-A POSTROUTING -s {}/{} ! -o docker0 -j MASQUERADE", lease.network(), lease.prefix());
    assert!(String::from_utf8_lossy(&nat.stdout).contains(&masquerade), "no `{masquerade}` in {nat:?}");

    // Across the overlay, both ways: Docker's container pings host 2's CNI container, and that one pings back.
    let target = remote.to_string();
    eventually(Duration::from_secs(20), Duration::from_millis(250), || {
        let out = daemon.docker(["exec", &container, "ping", "-c1", "-W1", &target]);
        out.status.success().then_some(()).ok_or_else(|| format!("ping {target}: {}", output_text(&out)))
    });
    eventually(Duration::from_secs(20), Duration::from_millis(250), || {
        lab.ping(2, address).then_some(()).ok_or_else(|| format!("host 2's container cannot ping {address}"))
    });

    daemon.docker_ok(["rm", "-f", &container]);
    daemon.stop().unwrap_or_else(|e| panic!("dockerd did not clean up: {e}"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = dir.path().display().to_string();
    assert!(!mounts.contains(&root), "mounts under {root} reached the machine's mount namespace:\n{mounts}");
}

/// A rootfs tarball with busybox and the applets the test runs, for `docker import`.
fn busybox_rootfs(dir: &Path, busybox: &Path, tar: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "ping", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let tarball = dir.join("rootfs.tar");
    let status = Command::new(tar).arg("-C").arg(&rootfs).arg("-cf").arg(&tarball).arg(".").status().unwrap();
    assert!(status.success(), "tar of {} failed", rootfs.display());
    tarball
}

/// One dockerd for one test. Dropping it stops it, also when the test fails (then its log is printed first).
struct Dockerd {
    child: Child,
    socket: PathBuf,
    client_config: PathBuf,
    log: PathBuf,
    /// `--cgroup-parent`: the directory each cgroup hierarchy gets for this daemon's containers.
    cgroup_parent: String,
    /// The daemon's mount namespace (`mnt:[inode]`): every process left in it is one this daemon started.
    mount_ns: Option<String>,
    stopped: bool,
}

impl Dockerd {
    /// Starts Debian's dockerd in host `host`'s netns with `options`, everything it keeps under `dir`; returns when
    /// its API answers.
    #[track_caller]
    fn start(
        lab: &TestLab,
        host: usize,
        tag: &str,
        dir: &Path,
        options: &[String],
        nsenter: &Path,
        unshare: &Path,
    ) -> Dockerd {
        let socket = dir.join("docker.sock");
        let config = dir.join("daemon.json");
        // Not /etc/docker/daemon.json: the machine's Docker configuration is not this test's.
        std::fs::write(&config, "{}\n").unwrap();
        let hold = dir.join("cgroup-hold");
        std::fs::create_dir_all(&hold).unwrap();
        let log = dir.join("dockerd.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let cgroup_parent = format!("weft-{tag}");
        let mut command = Command::new(nsenter);
        command
            .arg(format!("--net=/run/netns/{}", lab.host_ns(host)))
            .arg(unshare)
            .args(["--mount", "--propagation", "private", "sh", "-c", ENTER_HOST_SCRIPT, "sh"])
            .arg(&hold)
            .arg(DOCKERD)
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.join("data"))
            // Short: containerd's sockets live under it, and a unix socket path has 108 bytes at most.
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg(format!("--cgroup-parent=/{cgroup_parent}"))
            // A container that ignores SIGTERM (busybox sleep as pid 1) must not hold up the shutdown.
            .arg("--shutdown-timeout=2")
            .args(options)
            .env_clear()
            .env("PATH", DOCKERD_PATH)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        // nsenter, unshare and sh each exec the next, so the child's pid is dockerd's.
        let child = command.spawn().unwrap_or_else(|e| panic!("starting dockerd: {e}"));
        let mut daemon = Dockerd {
            child,
            socket,
            client_config: dir.join("client"),
            log,
            cgroup_parent,
            mount_ns: None,
            stopped: false,
        };
        daemon.wait_ready(&dir.join("docker.pid"));
        daemon
    }

    #[track_caller]
    fn wait_ready(&mut self, pidfile: &Path) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("dockerd exited at start ({status}):\n{}", dockerd_log_tail(&self.log));
            }
            if self.socket.exists() && self.docker(["version"]).status.success() {
                break;
            }
            assert!(started.elapsed() < DOCKERD_START, "dockerd did not answer in {DOCKERD_START:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let pid = self.child.id();
        assert_eq!(std::fs::read_to_string(pidfile).unwrap().trim(), pid.to_string(), "dockerd's pid file");
        let ns = mount_namespace(pid).expect("dockerd's mount namespace");
        assert_ne!(Some(&ns), mount_namespace(std::process::id()).as_ref(), "dockerd shares the test's mounts");
        self.mount_ns = Some(ns);
    }

    /// Debian's client against this daemon only (no DOCKER_HOST, no context, its config in the temp dir).
    fn docker<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Output {
        Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env("DOCKER_CONFIG", &self.client_config)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {DOCKER}: {e}"))
    }

    /// [`Dockerd::docker`] that must succeed; returns its stdout.
    #[track_caller]
    fn docker_ok<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> String {
        let args: Vec<S> = args.into_iter().collect();
        let out = self.docker(&args);
        let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        assert!(out.status.success(), "docker {}: {}", shown.join(" "), output_text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops dockerd by its pid (SIGTERM, SIGKILL after [`DOCKERD_STOP`]), ends whatever it left running in its
    /// mount namespace (containerd's shims), and removes its cgroups. Says what it could not clean.
    fn stop(&mut self) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        if self.mount_ns.is_none() {
            // Failed before it was ready: whatever it started shares its namespace all the same.
            self.mount_ns =
                mount_namespace(self.child.id()).filter(|ns| Some(ns) != mount_namespace(std::process::id()).as_ref());
        }
        let mut problems = Vec::new();
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill has no memory preconditions; the pid is our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let asked = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if asked.elapsed() > DOCKERD_STOP {
                problems.push(format!("dockerd ignored SIGTERM for {DOCKERD_STOP:?}; killed"));
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // What a clean shutdown leaves nothing of: containerd's shims (in dockerd's mount namespace) and the
        // containers' processes (in its cgroups), after a dockerd that had to be killed.
        let cgroups: Vec<PathBuf> =
            cgroup_mounts().into_iter().map(|hierarchy| hierarchy.join(&self.cgroup_parent)).collect();
        let mount_ns = self.mount_ns.clone();
        let leftovers = || {
            let mut pids = mount_ns.as_deref().map(processes_in_mount_namespace).unwrap_or_default();
            pids.extend(cgroups.iter().flat_map(|dir| processes_in_cgroup_tree(dir)));
            pids.sort_unstable();
            pids.dedup();
            pids
        };
        let left = leftovers();
        if !left.is_empty() {
            problems.push(format!("processes left by dockerd: {left:?}; killed"));
            for pid in &left {
                // SAFETY: as above; these processes were started by this test's dockerd.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            let killed = Instant::now();
            while !leftovers().is_empty() && killed.elapsed() < DOCKERD_STOP {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for dir in &cgroups {
            if dir.exists() {
                if let Err(e) = remove_cgroup_tree(dir) {
                    problems.push(format!("removing cgroup {}: {e}", dir.display()));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed; dockerd's log:\n{}", dockerd_log_tail(&self.log));
        }
        if let Err(e) = self.stop() {
            eprintln!("dockerd clean-up: {e}");
        }
    }
}

/// The end of dockerd's log.
fn dockerd_log_tail(log: &Path) -> String {
    weft_lab::lab::log_tail(log, LOG_TAIL_LINES)
}

fn output_text(out: &Output) -> String {
    format!("{} {}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `mnt:[inode]` of process `pid`, if it still exists.
fn mount_namespace(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok().map(|link| link.display().to_string())
}

/// Every process whose mount namespace is `ns`.
fn processes_in_mount_namespace(ns: &str) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| mount_namespace(*pid).as_deref() == Some(ns))
        .map(|pid| pid as libc::pid_t)
        .collect()
}

/// The mount points of every cgroup hierarchy (v1 controllers and v2).
fn cgroup_mounts() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let fstype = fs.split_whitespace().next()?;
            let point = mount.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// Every process in cgroup `dir` and the cgroups below it (none when it does not exist).
fn processes_in_cgroup_tree(dir: &Path) -> Vec<libc::pid_t> {
    let mut pids: Vec<libc::pid_t> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            pids.extend(processes_in_cgroup_tree(&entry.path()));
        }
    }
    pids
}

/// Removes a cgroup directory and the cgroups below it (rmdir only: a cgroup's files go with its directory).
fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

/// The test's own directory, removed on drop (after the daemon, which is declared later and so dropped first).
struct TempDir(PathBuf);

impl TempDir {
    fn new(path: PathBuf) -> TempDir {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
