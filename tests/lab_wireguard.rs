//! The wireguard backend end to end, on the userspace data path (this machine's kernel has no WireGuard module):
//! three hosts; containers ping across; a raw capture on the underlay sees the WireGuard datagrams and never the
//! marker string the pings carry; a weftd restart keeps the key; deleting the key file and restarting rotates it,
//! and the other hosts follow the new key. Root only.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, TestLab};
use weft_lab::lab::LabSpec;

/// "weftsecr" then "et!" : the ping padding pattern (ping -p takes at most 16 bytes of hex).
const MARKER_HEX: &str = "77656674736563726574";
const MARKER: &[u8] = b"weftsecret";

fn wg_spec(hosts: usize) -> LabSpec {
    LabSpec {
        backend: "wireguard".into(),
        extra_weftd_args: ["--resync-interval", "1s"].map(String::from).to_vec(),
        ..TestLab::spec(hosts)
    }
}

fn wg_lab(hosts: usize) -> TestLab {
    TestLab::from_spec(wg_spec(hosts))
}

/// The PublicKey in host `h`'s lease.
fn lease_public_key(lab: &TestLab, h: usize) -> String {
    let public_ip = lab.host_ip(h).to_string();
    let leases = lab.leases().unwrap();
    let value = leases
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(&l.value).unwrap())
        .find(|v| v["PublicIP"] == public_ip.as_str())
        .unwrap_or_else(|| panic!("no lease for h{h}: {leases:?}"));
    assert_eq!(value["BackendType"], "wireguard");
    assert_eq!(value["BackendData"]["Port"], 51820);
    value["BackendData"]["PublicKey"].as_str().unwrap().to_string()
}

/// Every frame on every interface of the underlay namespace while it runs (AF_PACKET, ETH_P_ALL).
struct Capture {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Vec<u8>>>,
}

impl Capture {
    fn start(ns: &str) -> Capture {
        let path = format!("/var/run/netns/{ns}");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a namespace file we opened; it only affects this thread.
            assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
            let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
            // SAFETY: a plain socket(2) call; the result is checked.
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
            assert!(raw >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            // SAFETY: a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
            // SAFETY: SO_RCVTIMEO reads one timeval.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&timeout as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            ready_tx.send(()).unwrap();
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                // SAFETY: recv into a buffer valid for its length.
                let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    frames.push(buf[..n as usize].to_vec());
                }
            }
            frames
        });
        ready_rx.recv().unwrap();
        Capture { stop, thread }
    }

    fn finish(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Whether an Ethernet frame is an IPv4 UDP datagram to or from `port`.
fn is_udp_port(frame: &[u8], port: u16) -> bool {
    if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 17 {
        return false;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let udp = &frame[14 + ihl..];
    udp.len() >= 4 && (udp[0..2] == port.to_be_bytes() || udp[2..4] == port.to_be_bytes())
}

#[test]
fn three_hosts_ping_encrypted_and_keys_persist_and_rotate() {
    let lab = wg_lab(3);
    for h in 1..=3 {
        assert_eq!(lab.subnet_env(h).unwrap().mtu, 1420, "underlay 1500 - 80, as flannel");
    }
    eventually(Duration::from_secs(30), Duration::from_millis(300), || lab.all_containers_ping());
    let link = lab.exec_in(&lab.host_ns(1), ["ip", "-d", "link", "show", "flannel-wg"]).unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("mtu 1420") && link.contains("tun"), "{link}");
    // This kernel has no WireGuard: the automatic choice fell back to userspace and weftd said so.
    let log = std::fs::read_to_string(lab.weftd_log(1)).unwrap();
    assert!(log.contains("WireGuard data path: userspace (the kernel cannot create a WireGuard device"), "{log}");

    // TCP through the tunnel: TSO super-packets cut, encrypted and sent as GSO trains, GRO trains decrypted and
    // coalesced back.
    let server_ip = lab.container_ip(2).unwrap().to_string();
    let mut server = lab
        .command_in(&lab.container_ns(2), ["iperf3", "-s", "-1", "-p", "5302"])
        .unwrap()
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let client =
        lab.exec_in(&lab.container_ns(1), ["iperf3", "-c", &server_ip, "-p", "5302", "-t", "2", "-J"]).unwrap();
    let _ = server.wait();
    assert!(client.status.success(), "iperf3: {}", String::from_utf8_lossy(&client.stdout));
    let json: serde_json::Value = serde_json::from_slice(&client.stdout).unwrap();
    let bps = json["end"]["sum_received"]["bits_per_second"].as_f64().unwrap();
    eprintln!("iperf3 over wireguard (debug build, busy machine): {:.2} Gbit/s", bps / 1e9);
    assert!(bps > 0.0);

    // The pod payload never crosses the underlay in the clear.
    let capture = Capture::start(&lab.underlay_ns());
    let c2 = lab.container_ip(2).unwrap().to_string();
    let out = lab
        .exec_in(&lab.container_ns(1), ["ping", "-c", "5", "-i", "0.2", "-s", "200", "-p", MARKER_HEX, &c2])
        .unwrap();
    assert!(out.status.success(), "marker pings: {}", String::from_utf8_lossy(&out.stdout));
    let frames = capture.finish();
    let wireguard = frames.iter().filter(|f| is_udp_port(f, 51820)).count();
    assert!(wireguard >= 10, "the capture saw {wireguard} WireGuard datagrams of {} frames", frames.len());
    let plaintext = frames.iter().filter(|f| f.windows(MARKER.len()).any(|w| w == MARKER)).count();
    assert_eq!(plaintext, 0, "{plaintext} frames on the underlay carry the ping's marker in the clear");

    // A restart keeps the key (file mode 0600, as flannel's file is private).
    let key_file = lab.wireguard_key_file(2);
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", key_file.display());
    let before = lease_public_key(&lab, 2);
    lab.restart_weftd(2).unwrap();
    lab.wait_for_subnet_env(2, Duration::from_secs(15)).unwrap();
    assert_eq!(lease_public_key(&lab, 2), before, "a restart keeps the public key");
    eventually(Duration::from_secs(20), Duration::from_millis(300), || lab.all_containers_ping());

    // Rotation: the key file deleted and weftd restarted; the lease carries the new key and the peers follow.
    std::fs::remove_file(&key_file).unwrap();
    lab.restart_weftd(2).unwrap();
    lab.wait_for_subnet_env(2, Duration::from_secs(15)).unwrap();
    eventually(Duration::from_secs(15), Duration::from_millis(300), || {
        let now = lease_public_key(&lab, 2);
        if now != before {
            Ok(())
        } else {
            Err("h2's lease still carries the old key".into())
        }
    });
    eventually(Duration::from_secs(30), Duration::from_millis(300), || lab.all_containers_ping());
}

/// `wireguard-go` in the foreground, ended by its pid when the test ends (pass or fail), and its control socket.
struct WireguardGo(std::process::Child, std::path::PathBuf);

impl Drop for WireguardGo {
    fn drop(&mut self) {
        // SIGTERM first: wireguard-go then removes its device and socket itself.
        // SAFETY: kill(2) on the pid of the child this test started.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

fn run_ok(lab: &TestLab, ns: &str, args: &[&str]) -> String {
    let out = lab.exec_in(ns, args).unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// h3 is no weft host: Debian's wireguard-go, configured with `wg` from the lease set as an operator would, with a
/// lease of its own in flanneld's format. Traffic flows both ways between it and weft's hosts.
#[test]
fn wireguard_go_configured_with_wg_from_the_leases_exchanges_traffic_with_weft() {
    let lab = TestLab::from_spec(LabSpec { start_weftd: false, ..wg_spec(3) });
    for h in 1..=2 {
        lab.start_weftd(h).unwrap();
        lab.wait_for_subnet_env(h, Duration::from_secs(15)).unwrap();
        lab.attach_container(h).unwrap();
    }
    // Unique per test run: wireguard-go's control socket (/var/run/wireguard/NAME.sock) is not per namespace.
    let device = format!("wgi{}", std::process::id() % 100_000);
    let h3 = lab.host_ns(3);
    let key_file = lab.dir().join("h3-wg-go-key");
    let private = run_ok(&lab, &h3, &["wg", "genkey"]);
    std::fs::write(&key_file, private.trim()).unwrap();
    let mut pubkey = lab.command_in(&h3, ["wg", "pubkey"]).unwrap();
    let mut child = pubkey.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), private.as_bytes()).unwrap();
    let public = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap().trim().to_string();

    let value = format!(
        r#"{{"PublicIP":"198.18.0.3","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{public}","Port":51820}}}}"#
    );
    lab.put_leased("10.244.77.0-24", &value);

    let mut go = lab.command_in(&h3, ["wireguard-go", "-f", &device]).unwrap();
    go.env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let sock = format!("/var/run/wireguard/{device}.sock");
    let _go = WireguardGo(go.spawn().unwrap(), sock.clone().into());
    eventually(Duration::from_secs(10), Duration::from_millis(100), || {
        if std::path::Path::new(&sock).exists() {
            Ok(())
        } else {
            Err(format!("wireguard-go did not create {sock}"))
        }
    });
    // Peers from the lease set: each weft host's PublicKey, PublicIP:Port and subnet.
    let key_path = key_file.display().to_string();
    let mut wg_set: Vec<String> =
        ["wg", "set", &device, "private-key", &key_path, "listen-port", "51820"].map(String::from).to_vec();
    for lease in lab.leases().unwrap() {
        let v: serde_json::Value = serde_json::from_str(&lease.value).unwrap();
        if v["PublicIP"] == "198.18.0.3" {
            continue;
        }
        let subnet = lease.key.rsplit('/').next().unwrap().replace('-', "/");
        let endpoint = format!("{}:{}", v["PublicIP"].as_str().unwrap(), v["BackendData"]["Port"]);
        let peer_key = v["BackendData"]["PublicKey"].as_str().unwrap().to_string();
        wg_set.extend(["peer".into(), peer_key, "endpoint".into(), endpoint, "allowed-ips".into(), subnet]);
    }
    run_ok(&lab, &h3, &wg_set.iter().map(String::as_str).collect::<Vec<_>>());
    run_ok(&lab, &h3, &["ip", "addr", "add", "10.244.77.0/16", "dev", &device]);
    run_ok(&lab, &h3, &["ip", "link", "set", &device, "mtu", "1420", "up"]);

    // wireguard-go's host pings h1's container (it initiates), and h2's container pings wireguard-go's address
    // (weft initiates).
    let c1 = lab.container_ip(1).unwrap().to_string();
    eventually(Duration::from_secs(20), Duration::from_millis(300), || {
        let out = lab.exec_in(&h3, ["ping", "-c", "1", "-W", "1", &c1]).unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("wireguard-go host cannot ping {c1}: {}", String::from_utf8_lossy(&out.stdout)))
        }
    });
    eventually(Duration::from_secs(20), Duration::from_millis(300), || {
        let out = lab.exec_in(&lab.container_ns(2), ["ping", "-c", "1", "-W", "1", "10.244.77.0"]).unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("h2's container cannot ping wireguard-go's host: {}", String::from_utf8_lossy(&out.stdout)))
        }
    });
    let shown = run_ok(&lab, &h3, &["wg", "show", &device, "latest-handshakes"]);
    let handshakes = shown.lines().filter(|l| !l.ends_with("\t0")).count();
    assert_eq!(handshakes, 2, "wireguard-go completed a handshake with both weft hosts: {shown}");
}
