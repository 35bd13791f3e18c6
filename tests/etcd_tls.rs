//! etcd over TLS, against a real etcd in a network namespace this test creates, with certificates this test makes
//! (openssl): client-certificate authentication first, then user name and password over TLS. weftctl's commands
//! (the `weft::ctl` library, run on a thread inside the namespace) and a weftd process connect; a wrong CA, a
//! missing client certificate, a plain-http endpoint and a wrong password each fail with an error that says which.
//! Root only. Everything runs in the namespace `wtls<pid>`: etcd listens on its loopback only.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft::ctl::{self, ConfigCommand, EtcdArgs};

const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");
const ENDPOINT: &str = "https://127.0.0.1:2379";
const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1}}"#;

/// The namespace, deleted on drop (also when an assertion fails).
struct Netns(String);

impl Netns {
    fn create() -> Netns {
        let name = format!("wtls{}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        // An underlay for weftd: one end of a veth pair whose both ends stay in the namespace.
        ns.exec_ok(&["ip", "link", "add", "wtls0", "type", "veth", "peer", "name", "wtls1"]);
        ns.exec_ok(&["ip", "link", "set", "wtls1", "up"]);
        ns.exec_ok(&["ip", "addr", "add", "198.18.77.1/24", "dev", "wtls0"]);
        ns.exec_ok(&["ip", "link", "set", "wtls0", "up"]);
        ns
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }

    fn exec_ok(&self, argv: &[&str]) {
        let out = self.command(argv[0]).args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs `f` on a thread that has joined the namespace (setns affects the calling thread only).
    fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(format!("/run/netns/{}", self.0)).unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns on an open namespace descriptor, on this thread alone.
            assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A process we started, killed by its pid on drop.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1, a client certificate, and an unrelated CA.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn make(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let p = |name: &str| dir.join(name).display().to_string();
        for ca in ["ca", "other-ca"] {
            run(
                "openssl",
                &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"]
                    .iter()
                    .copied()
                    .chain(["-keyout", &p(&format!("{ca}.key")), "-out", &p(&format!("{ca}.pem"))])
                    .chain(["-subj", &format!("/CN=weft-test-{ca}")])
                    .collect::<Vec<_>>(),
            );
        }
        let leaf = |name: &str, cn: &str, ext: &str| {
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            let (key, csr, pem) = (p(&format!("{name}.key")), p(&format!("{name}.csr")), p(&format!("{name}.pem")));
            run(
                "openssl",
                &["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
                    .iter()
                    .copied()
                    .chain(["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={cn}")])
                    .collect::<Vec<_>>(),
            );
            let ext = p(&format!("{name}.ext"));
            run(
                "openssl",
                &["x509", "-req", "-in", &csr, "-CA", &p("ca.pem"), "-CAkey", &p("ca.key"), "-CAcreateserial"]
                    .iter()
                    .copied()
                    .chain(["-days", "1", "-out", &pem, "-extfile", &ext])
                    .collect::<Vec<_>>(),
            );
        };
        leaf("server", "etcd", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
        leaf("client", "root", "extendedKeyUsage=clientAuth\n");
        Pki { dir: dir.to_path_buf() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn start_etcd(ns: &Netns, pki: &Pki, data: &Path, client_cert_auth: bool) -> Owned {
    let log = File::create(data.with_extension("log")).unwrap();
    let peer = "http://127.0.0.1:2380";
    let mut c = ns.command("etcd");
    c.args(["--name", "t", "--data-dir"]).arg(data);
    c.args(["--listen-client-urls", ENDPOINT, "--advertise-client-urls", ENDPOINT]);
    c.args(["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer]);
    c.args(["--initial-cluster", &format!("t={peer}")]);
    c.arg("--cert-file").arg(pki.path("server.pem")).arg("--key-file").arg(pki.path("server.key"));
    if client_cert_auth {
        c.arg("--client-cert-auth").arg("--trusted-ca-file").arg(pki.path("ca.pem"));
    }
    let etcd = Owned(c.stdout(Stdio::null()).stderr(log).spawn().unwrap());
    let started = Instant::now();
    loop {
        let mut health = ns.command("etcdctl");
        health.args(["--endpoints", ENDPOINT, "--dial-timeout=500ms"]).arg("--cacert").arg(pki.path("ca.pem"));
        if client_cert_auth {
            health.arg("--cert").arg(pki.path("client.pem")).arg("--key").arg(pki.path("client.key"));
        }
        if health.args(["endpoint", "health"]).output().unwrap().status.success() {
            return etcd;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "etcd did not become healthy; see {}", data.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn etcd_args() -> EtcdArgs {
    EtcdArgs {
        etcd_endpoints: vec![ENDPOINT.to_string()],
        etcd_prefix: "/coreos.com/network".to_string(),
        etcd_username: None,
        etcd_password: None,
        etcd_cafile: None,
        etcd_certfile: None,
        etcd_keyfile: None,
    }
}

/// Runs a weftctl config command inside the namespace; Err carries the message weftctl would print.
fn weftctl(ns: &Netns, args: EtcdArgs, cmd: ConfigCommand) -> Result<(), String> {
    ns.run_inside(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), ctl::config(&args, &cmd))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())
        })
    })
}

fn expect_failure(ns: &Netns, args: EtcdArgs, says: &str) {
    let err = weftctl(ns, args, ConfigCommand::Get).expect_err("must not connect");
    eprintln!("refused as expected: {err}");
    assert!(err.contains(says), "expected {says:?} in: {err}");
}

/// weftd with TLS flags reaches etcd, reads the config and leases a subnet.
fn weftd_becomes_ready(ns: &Netns, dir: &Path, extra: &[String]) {
    let log_path = dir.join(format!("weftd-{}.log", extra.len()));
    let log = File::create(&log_path).unwrap();
    let mut c = ns.command(WEFTD);
    c.args(["-etcd-endpoints", ENDPOINT, "-iface", "wtls0", "-subnet-file"]).arg(dir.join("subnet.env")).args(extra);
    let _weftd = Owned(c.stdout(Stdio::null()).stderr(log).spawn().unwrap());
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("weftd ready") {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "weftd did not become ready:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn etcd_over_tls_with_client_certificates_then_passwords() {
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test builds a network namespace and needs root");
    }
    let dir = std::env::temp_dir().join(format!("weft-etcd-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pki = Pki::make(&dir.join("pki"));
    let ns = Netns::create();
    let s = |name: &str| Some(pki.path(name));

    // 1. Client-certificate authentication.
    let etcd = start_etcd(&ns, &pki, &dir.join("etcd-certs"), true);
    let good = EtcdArgs {
        etcd_cafile: s("ca.pem"),
        etcd_certfile: s("client.pem"),
        etcd_keyfile: s("client.key"),
        ..etcd_args()
    };
    weftctl(&ns, good.clone(), ConfigCommand::Set { config: CONFIG.to_string() }).unwrap();
    weftctl(&ns, good.clone(), ConfigCommand::Get).unwrap();
    expect_failure(&ns, EtcdArgs { etcd_cafile: s("other-ca.pem"), ..good.clone() }, "not signed by a trusted CA");
    expect_failure(&ns, EtcdArgs { etcd_cafile: None, ..good.clone() }, "not signed by a trusted CA");
    expect_failure(
        &ns,
        EtcdArgs { etcd_certfile: None, etcd_keyfile: None, ..good.clone() },
        "requires a client certificate",
    );
    let plain = EtcdArgs { etcd_endpoints: vec!["http://127.0.0.1:2379".into()], ..good.clone() };
    expect_failure(&ns, plain, "never falls back to plain text");
    let tls_flags = |with_client: bool| {
        let mut flags = vec!["-etcd-cafile".to_string(), pki.path("ca.pem").display().to_string()];
        if with_client {
            flags.push(format!("--etcd-certfile={}", pki.path("client.pem").display()));
            flags.push(format!("--etcd-keyfile={}", pki.path("client.key").display()));
        }
        flags
    };
    weftd_becomes_ready(&ns, &dir, &tls_flags(true));
    drop(etcd);

    // 2. User name and password over TLS (no client certificates).
    let etcd = start_etcd(&ns, &pki, &dir.join("etcd-password"), false);
    let ca = ["--endpoints", ENDPOINT, "--cacert", &pki.path("ca.pem").display().to_string()].map(String::from);
    for cmd in [&["user", "add", "root:s3cret"][..], &["auth", "enable"][..]] {
        let args: Vec<&str> = ca.iter().map(String::as_str).chain(cmd.iter().copied()).collect();
        ns.exec_ok(&[&["etcdctl"][..], &args].concat());
    }
    let user = |password: &str| EtcdArgs {
        etcd_cafile: s("ca.pem"),
        etcd_username: Some("root".into()),
        etcd_password: Some(password.into()),
        ..etcd_args()
    };
    weftctl(&ns, user("s3cret"), ConfigCommand::Set { config: CONFIG.to_string() }).unwrap();
    expect_failure(&ns, user("wrong"), "rejected the user name or password");
    let mut flags = tls_flags(false);
    flags.extend(["--etcd-username=root".to_string(), "--etcd-password=s3cret".to_string()]);
    weftd_becomes_ready(&ns, &dir, &flags);
    drop(etcd);
    drop(ns);
    let _ = std::fs::remove_dir_all(&dir);
}
