//! The udp backend end to end: three hosts on flannel's udp format; containers ping across and iperf3 TCP runs;
//! a peer removed and added while traffic flows takes effect without restarting the data path; a kill -9 and
//! restart of weftd loses only the packets sent while it was down (measured and printed); datagrams from non-peers
//! are dropped and counted; and a small independent implementation of flannel's udp format (a TUN + UDP loop in
//! this file, sharing no code with weft) exchanges traffic with weft both ways. Root only.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, TestLab, SUBNETS};
use weft_lab::lab::LabSpec;

const METRICS_PORT: &str = "9113";

fn udp_lab(hosts: usize, start_weftd: bool) -> TestLab {
    TestLab::from_spec(LabSpec {
        backend: "udp".into(),
        start_weftd,
        extra_weftd_args: ["--resync-interval", "1s", "--healthz-port", METRICS_PORT].map(String::from).to_vec(),
        ..TestLab::spec(hosts)
    })
}

fn metric(lab: &TestLab, h: usize, name: &str) -> u64 {
    let value = lab.metric(h, METRICS_PORT, name).unwrap_or_else(|| panic!("no metric {name} on h{h}"));
    value.parse().unwrap_or_else(|e| panic!("metric {name} on h{h} is {value:?}: {e}"))
}

/// `ping -i interval -c count` from h`from`'s container, in the background; `finish` gives (sent, received).
struct Pinger(std::process::Child);

impl Pinger {
    fn start(lab: &TestLab, from: usize, to: Ipv4Addr, interval: &str, count: u32) -> Pinger {
        let mut cmd = lab
            .command_in(
                &lab.container_ns(from),
                ["ping", "-q", "-i", interval, "-W", "1", "-c", &count.to_string(), &to.to_string()],
            )
            .unwrap();
        Pinger(cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap())
    }

    fn finish(self) -> (u32, u32) {
        let out = self.0.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("{text}"));
        let numbers: Vec<u32> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
        (numbers[0], numbers[1])
    }
}

#[test]
fn three_hosts_ping_and_iperf3_and_strangers_are_dropped() {
    let lab = udp_lab(3, true);
    for h in 1..=3 {
        assert_eq!(lab.subnet_env(h).unwrap().mtu, 1472, "underlay 1500 - 28");
    }
    eventually(Duration::from_secs(20), Duration::from_millis(300), || lab.all_containers_ping());
    let link = lab.host_sh(1, &["ip", "-d", "link", "show", "flannel0"]);
    assert!(link.contains("mtu 1472") && link.contains("tun") && link.contains("multi_queue"), "{link}");
    let routes = lab.host_sh(1, &["ip", "route", "show", "10.244.0.0/16"]);
    assert!(routes.contains("dev flannel0"), "the cluster network goes into the TUN: {routes}");

    // iperf3 TCP across hosts completes.
    let server_ip = lab.container_ip(2).unwrap().to_string();
    let mut server = lab
        .command_in(&lab.container_ns(2), ["iperf3", "-s", "-1", "-p", "5301"])
        .unwrap()
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let client =
        lab.exec_in(&lab.container_ns(1), ["iperf3", "-c", &server_ip, "-p", "5301", "-t", "3", "-J"]).unwrap();
    let _ = server.wait();
    assert!(client.status.success(), "iperf3: {}", String::from_utf8_lossy(&client.stdout));
    let json: serde_json::Value = serde_json::from_slice(&client.stdout).unwrap();
    let bps = json["end"]["sum_received"]["bits_per_second"].as_f64().unwrap();
    eprintln!("iperf3 over udp (debug build, busy machine): {:.2} Gbit/s", bps / 1e9);
    assert!(bps > 0.0);
    assert!(metric(&lab, 1, "weft_udp_packets_total{direction=\"tx\"}") > 0);
    assert!(metric(&lab, 2, "weft_udp_packets_total{direction=\"rx\"}") > 0);

    // A datagram from an address that holds no lease is dropped and counted.
    let before = metric(&lab, 1, "weft_udp_drops_total{reason=\"not_from_peer\"}");
    lab.host_sh(3, &["ip", "addr", "add", "198.18.0.99/24", "dev", "eth0"]);
    in_netns(&lab.host_ns(3), || {
        let sock = UdpSocket::bind("198.18.0.99:0").unwrap();
        let mut packet = ipv4_packet([10, 244, 9, 9], [10, 244, 0, 1], 64, &[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
        packet[9] = 1;
        for _ in 0..3 {
            sock.send_to(&packet, "198.18.0.1:8285").unwrap();
        }
    });
    eventually(Duration::from_secs(5), Duration::from_millis(100), || {
        let now = metric(&lab, 1, "weft_udp_drops_total{reason=\"not_from_peer\"}");
        if now >= before + 3 {
            Ok(())
        } else {
            Err(format!("not_from_peer drops {before} -> {now}"))
        }
    });

    // A destination no peer holds is answered with ICMP net unreachable.
    let out = lab.exec_in(&lab.container_ns(1), ["ping", "-c", "1", "-W", "1", "10.244.250.1"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Destination Net Unreachable"), "{text}");
    assert!(metric(&lab, 1, "weft_udp_icmp_unreachable_total") >= 1);
}

/// iperf3 TCP from h1's container to h2's (`reverse`: h2 sends), `seconds` long; returns Gbit/s.
fn iperf(lab: &TestLab, port: &str, seconds: &str, reverse: bool) -> f64 {
    let server_ip = lab.container_ip(2).unwrap().to_string();
    let mut server = lab
        .command_in(&lab.container_ns(2), ["iperf3", "-s", "-1", "-p", port])
        .unwrap()
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut args = vec!["iperf3", "-c", &server_ip, "-p", port, "-t", seconds, "-J"];
    if reverse {
        args.push("-R");
    }
    let client = lab.exec_in(&lab.container_ns(1), args).unwrap();
    let _ = server.wait();
    assert!(client.status.success(), "iperf3: {}", String::from_utf8_lossy(&client.stdout));
    let json: serde_json::Value = serde_json::from_slice(&client.stdout).unwrap();
    json["end"]["sum_received"]["bits_per_second"].as_f64().unwrap() / 1e9
}

/// Each technique has its own switch, and mixed combinations carry TCP both ways, so every code path runs for
/// real: TUN offloads without GSO and GRO (super-packets cut and sent datagram by datagram; single datagrams
/// received and coalesced into super-packets), then GSO and GRO without TUN offloads (plain reads sent as GSO
/// trains; GRO trains written to the TUN packet by packet).
#[test]
fn techniques_switched_on_and_off_alone_carry_tcp_both_ways() {
    let combinations: [(&[&str], &str); 2] =
        [(&["--udp-gso=false", "--udp-gro=false"], "tun"), (&["--udp-tun-offloads=false"], "gso+gro")];
    for (flags, techniques) in combinations {
        let mut extra = vec!["--resync-interval", "1s", "--healthz-port", METRICS_PORT];
        extra.extend_from_slice(flags);
        let lab = TestLab::from_spec(LabSpec {
            backend: "udp".into(),
            extra_weftd_args: extra.iter().map(|a| a.to_string()).collect(),
            ..TestLab::spec(2)
        });
        eventually(Duration::from_secs(20), Duration::from_millis(300), || lab.all_containers_ping());
        for h in 1..=2 {
            let log = std::fs::read_to_string(lab.weftd_log(h)).unwrap();
            let running = log.lines().find(|l| l.contains("udp data plane running")).expect("data plane started");
            assert!(running.contains(&format!("techniques={techniques} ")), "{flags:?} on h{h}: {running}");
        }
        let forward = iperf(&lab, "5302", "2", false);
        let reverse = iperf(&lab, "5302", "2", true);
        eprintln!("{flags:?} (debug build): iperf3 {forward:.2} Gbit/s h1->h2, {reverse:.2} h2->h1");
        assert!(forward > 0.0 && reverse > 0.0);
        for h in 1..=2 {
            let received = metric(&lab, h, "weft_udp_packets_total{direction=\"rx\"}");
            let writes = metric(&lab, h, "weft_udp_tun_operations_total{op=\"write\"}");
            assert_eq!(metric(&lab, h, "weft_udp_io_errors_total{op=\"send\"}"), 0, "{flags:?}: h{h}'s sends");
            if techniques.contains("tun") {
                assert!(writes < received, "{flags:?}: h{h} coalesces ({received} packets in {writes} writes)");
            } else {
                assert_eq!(writes, received, "{flags:?}: h{h} writes every packet alone");
            }
        }
    }
}

#[test]
fn peers_come_and_go_while_traffic_flows_and_a_restart_loses_only_what_was_in_flight() {
    let lab = udp_lab(3, true);
    eventually(Duration::from_secs(20), Duration::from_millis(300), || lab.all_containers_ping());
    let h1_pid = lab.weftd_pid(1).unwrap();
    let (c2, c3) = (lab.container_ip(2).unwrap(), lab.container_ip(3).unwrap());

    // h3 goes away (weftd stopped, its lease deleted) and comes back while h1's container talks to h2's.
    let flow = Pinger::start(&lab, 1, c2, "0.05", 160);
    let key = weft::subnet_file::lease_key(&lab.subnet_env(3).unwrap()).unwrap();
    lab.stop_weftd(3).unwrap();
    let value = lab.etcdctl_ok(["get", "--print-value-only", &format!("{SUBNETS}{key}")]).unwrap();
    lab.etcdctl_ok(["del", &format!("{SUBNETS}{key}")]).unwrap();
    eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        let out = lab.exec_in(&lab.container_ns(1), ["ping", "-c", "1", "-W", "1", &c3.to_string()]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("Destination Net Unreachable") {
            Ok(())
        } else {
            Err(format!("h3 still forwarded to after its lease was deleted: {text}"))
        }
    });
    assert!(!value.trim().is_empty());
    lab.start_weftd(3).unwrap();
    lab.wait_for_subnet_env(3, Duration::from_secs(15)).unwrap();
    eventually(Duration::from_secs(15), Duration::from_millis(300), || {
        if lab.ping(1, c3) {
            Ok(())
        } else {
            Err("h3 not reachable after it came back".into())
        }
    });
    let (sent, received) = flow.finish();
    assert_eq!(sent, received, "h1 -> h2 lost packets while h3 left and came back");
    assert_eq!(lab.weftd_pid(1), Some(h1_pid), "h1's data path was never restarted");

    // kill -9 and restart of h2's weftd while h1's container pings it every 10 ms.
    let flow = Pinger::start(&lab, 1, c2, "0.01", 600);
    std::thread::sleep(Duration::from_secs(1));
    let pid = lab.weftd_pid(2).unwrap();
    // SAFETY: kill(2) on the pid of the weftd this lab started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    while lab.weftd_running(2) && killed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(2));
    }
    lab.start_weftd(2).unwrap();
    let restarted = killed.elapsed();
    let (sent, received) = flow.finish();
    let lost = sent - received;
    eprintln!(
        "kill -9 + restart of weftd: {lost} of {sent} pings lost at 10 ms intervals (~{} ms without forwarding); \
         the new weftd was started {} ms after the kill",
        lost * 10,
        restarted.as_millis()
    );
    // How many are lost depends on how fast a debug weftd starts on a loaded machine, so it is printed, not
    // asserted (the measured figure is in docs/backends.md); what must hold is that traffic flows again.
    assert!(received > 0, "no ping came back at all ({sent} sent)");
    eventually(Duration::from_secs(10), Duration::from_millis(300), || lab.all_containers_ping());

    // The TUN outlives weftd on purpose; `weftctl cleanup` removes it.
    lab.stop_weftd(3).unwrap();
    assert!(lab.host_sh(3, &["ip", "link", "show"]).contains("flannel0"), "the TUN persists across a stop");
    let subnet_file = lab.subnet_file(3).display().to_string();
    lab.host_sh(3, &[common::weftctl().to_str().unwrap(), "cleanup", "--subnet-file", &subnet_file]);
    assert!(!lab.host_sh(3, &["ip", "link", "show"]).contains("flannel0"), "cleanup removes the TUN");
}

/// A lease in flanneld's own udp format: PublicIP only, no BackendType, no BackendData.
#[test]
fn an_independent_flannel_udp_peer_exchanges_traffic_with_weft_both_ways() {
    let lab = udp_lab(3, false);
    for h in 1..=2 {
        lab.start_weftd(h).unwrap();
    }
    let leases: Vec<(Ipv4Addr, Ipv4Addr)> = (1..=2)
        .map(|h| {
            let env = lab.wait_for_subnet_env(h, Duration::from_secs(15)).unwrap();
            let key = weft::subnet_file::lease_key(&env).unwrap();
            lab.attach_container(h).unwrap();
            (key.ipv4.unwrap().ip(), lab.host_ip(h))
        })
        .collect();
    lab.put_leased("10.244.77.0-24", r#"{"PublicIP":"198.18.0.3"}"#);

    let peer = FlannelUdpPeer::start(&lab.host_ns(3), lab.host_ip(3), leases);
    lab.host_sh(3, &["ip", "addr", "add", "10.244.77.0/16", "dev", "flannel0"]);
    lab.host_sh(3, &["ip", "link", "set", "flannel0", "mtu", "1472", "up"]);

    // Our peer pings h1's container (requests through our loop to weft, replies from weft into our loop), and
    // h2's container pings our peer's TUN address (the other way round).
    let c1 = lab.container_ip(1).unwrap().to_string();
    eventually(Duration::from_secs(15), Duration::from_millis(300), || {
        let out = lab.exec_in(&lab.host_ns(3), ["ping", "-c", "1", "-W", "1", &c1]).unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("h3 (independent peer) cannot ping {c1}: {}", String::from_utf8_lossy(&out.stdout)))
        }
    });
    let out = lab.exec_in(&lab.container_ns(2), ["ping", "-c", "3", "-W", "1", "10.244.77.0"]).unwrap();
    assert!(
        out.status.success(),
        "h2's container cannot ping the independent peer: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (sent, received) = peer.stop();
    assert!(sent >= 4 && received >= 4, "the independent peer sent {sent} and received {received} datagrams");
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_netns(&path);
        f()
    })
    .join()
    .unwrap()
}

fn enter_netns(path: &str) {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: setns on a namespace file we opened; it only affects the calling thread.
    assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
}

/// An IPv4 header (no options) with a valid checksum, then `payload`.
fn ipv4_packet(src: [u8; 4], dst: [u8; 4], ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, ttl, 0, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    let total = (20 + payload.len()) as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    let sum = header_checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn header_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// flannel's udp data path written from its description, as a second implementation to test against: a plain
/// TUN (no offloads) and one UDP socket on 8285; TUN packets go to the peer whose subnet holds the destination,
/// TTL decremented; datagrams go into the TUN.
struct FlannelUdpPeer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u32, u32)>,
}

impl FlannelUdpPeer {
    /// `routes`: (base address of a /24 subnet, the public IP of its host).
    fn start(ns: &str, local: Ipv4Addr, routes: Vec<(Ipv4Addr, Ipv4Addr)>) -> FlannelUdpPeer {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = format!("/var/run/netns/{ns}");
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            enter_netns(&path);
            let tun = open_plain_tun("flannel0");
            let sock = UdpSocket::bind(SocketAddr::from((local, 8285))).unwrap();
            sock.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let (mut sent, mut received) = (0, 0);
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                let mut fds = [
                    libc::pollfd { fd: tun.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                    libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                ];
                // SAFETY: two valid pollfds.
                unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
                if fds[0].revents & libc::POLLIN != 0 {
                    // SAFETY: reading into our buffer from our TUN descriptor.
                    let n = unsafe { libc::read(tun.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                    if n >= 20 && buf[8] > 1 {
                        let packet = &mut buf[..n as usize];
                        let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
                        let subnet = Ipv4Addr::from(u32::from(dst) & 0xffff_ff00);
                        if let Some((_, public)) = routes.iter().find(|(s, _)| *s == subnet) {
                            packet[8] -= 1;
                            packet[10..12].fill(0);
                            let sum = header_checksum(&packet[..usize::from(packet[0] & 0xf) * 4]);
                            packet[10..12].copy_from_slice(&sum.to_be_bytes());
                            if sock.send_to(packet, (*public, 8285)).is_ok() {
                                sent += 1;
                            }
                        }
                    }
                }
                if fds[1].revents & libc::POLLIN != 0 {
                    if let Ok((n, _)) = sock.recv_from(&mut buf) {
                        received += 1;
                        // SAFETY: writing our buffer to our TUN descriptor.
                        unsafe { libc::write(tun.as_raw_fd(), buf.as_ptr().cast(), n) };
                    }
                }
            }
            (sent, received)
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("the independent peer did not start");
        FlannelUdpPeer { stop, thread }
    }

    /// Stops the loop; returns the datagrams it sent and received.
    fn stop(self) -> (u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn open_plain_tun(name: &str) -> OwnedFd {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    // SAFETY: open(2) of a constant path; checked below.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(fd >= 0, "open /dev/net/tun");
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq { name: [0; 16], flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short, pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF with an ifreq-shaped buffer.
    assert_eq!(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) }, 0, "TUNSETIFF");
    fd
}
