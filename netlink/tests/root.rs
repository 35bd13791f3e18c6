//! The codecs and both transports against the real kernel. Needs root, and fails rather than skips without it.
//!
//! Safety: everything happens inside network namespaces these tests create (`wnc-<pid>-<tag>`), deleted by a guard
//! even when a test panics. The root namespace is never touched: `ip` always runs with `-n`, and the sockets are
//! opened inside the test namespace. Underlay addresses come from 198.18.0.0/15, overlay ones from 10.244.0.0/16.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ipnetwork::IpNetwork;
use weft_netlink::blocking::Socket;
use weft_netlink::event::groups;
use weft_netlink::link::{self, Kind, LinkChange, LinkRef, NewVxlan, Vxlan};
use weft_netlink::neighbour::{self, Neighbour};
use weft_netlink::route::{self, Route, RouteFilter, RouteKind};
use weft_netlink::{decode_all, decode_on, fdb, netns, pipelined, Event};

const PROTOCOL: u8 = 87;

/// The test's own network namespace, `wnc-<pid>-<tag>` with lo up, deleted when dropped (so also when the test
/// panics). The process must be root: the test fails, never skips, otherwise.
struct Netns(String);

impl Netns {
    fn create(tag: &str) -> Netns {
        // SAFETY: geteuid has no preconditions and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "these tests create network namespaces and must run as root");
        let ns = Netns(format!("wnc-{}-{tag}", std::process::id()));
        run(&["netns", "add", &ns.0]);
        ns.ip("link set lo up");
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }

    /// `ip -n <ns> <args>`; panics when it fails.
    fn ip(&self, args: &str) -> String {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend(args.split_whitespace());
        run(&all)
    }

    /// A veth pair `name` <-> `name`p, both ends up (this kernel may have no dummy devices).
    fn veth(&self, name: &str) {
        self.ip(&format!("link add {name} type veth peer name {name}p"));
        self.ip(&format!("link set {name}p up"));
        self.ip(&format!("link set {name} up"));
    }

    fn socket(&self) -> Socket {
        Socket::from_socket(netns::route_socket_at(&self.path(), 0).unwrap()).unwrap()
    }

    fn index(&self, nl: &mut Socket, name: &str) -> u32 {
        let answer = nl.request(link::get(LinkRef::Name(name))).unwrap();
        decode_all::<link::Link>(&answer)[0].index
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn net(text: &str) -> IpNetwork {
    text.parse().unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Gateway, gateway-less and blackhole routes of both families go in, read back equal, come out; the dump
/// leaves other tables and protocols out.
#[test]
fn every_kind_of_route_round_trips() {
    let ns = Netns::create("routes");
    ns.veth("d0");
    ns.ip("addr add 198.18.5.1/24 dev d0");
    ns.ip("addr add fd00:5::1/64 dev d0 nodad");
    ns.ip("route add 10.244.99.0/24 dev d0 table 1000 proto 87");
    ns.ip("route add 10.244.98.0/24 dev d0 proto 4");
    let mut nl = ns.socket();
    let d0 = ns.index(&mut nl, "d0");

    let ours = |dst: &str| Route { device: Some(d0), ..Route::unicast(net(dst), PROTOCOL) };
    let routes = vec![
        Route { gateway: Some(ip("198.18.5.3")), ..ours("10.244.2.0/24") },
        ours("10.244.3.0/24"),
        Route { kind: RouteKind::Blackhole, device: None, ..ours("10.244.0.0/16") },
        Route { gateway: Some(ip("fd00:5::3")), ..ours("fd00:2::/64") },
        ours("fd00:3::/64"),
        Route { kind: RouteKind::Blackhole, device: None, ..ours("fd00::/48") },
    ];
    for r in &routes {
        nl.request(route::replace(r)).unwrap_or_else(|e| panic!("{r:?}: {e}"));
    }
    let text = ns.ip("route show proto 87");
    assert!(text.contains("10.244.2.0/24 via 198.18.5.3 dev d0"), "{text}");
    assert!(text.contains("10.244.3.0/24 dev d0 scope link"), "{text}");
    assert!(text.contains("blackhole 10.244.0.0/16"), "{text}");

    let filter = RouteFilter { protocol: Some(PROTOCOL), ..RouteFilter::main_table() };
    let mut seen = Vec::new();
    for ipv6 in [false, true] {
        let answer = nl.request(route::dump(ipv6, &filter)).unwrap();
        // Strict checking: the kernel itself left out the other table, the other protocol and the local table.
        let unfiltered: Vec<Route> = decode_all(&answer);
        assert!(unfiltered.iter().all(|r| filter.matches(r)), "{unfiltered:?}");
        seen.extend(unfiltered);
    }
    // The kernel adds what it reports on its own (metric 1024 on IPv6); compare what we asked for.
    for r in &mut seen {
        r.metric = None;
    }
    let mut want = routes.clone();
    want.sort();
    seen.sort();
    assert_eq!(seen, want);

    for r in &routes {
        nl.request(route::delete(r)).unwrap_or_else(|e| panic!("{r:?}: {e}"));
        let again = nl.request(route::delete(r)).unwrap_err();
        assert!(again.is_not_found(), "{again}");
    }
    assert_eq!(ns.ip("route show proto 87"), "");
    assert!(ns.ip("route show table 1000").contains("10.244.99.0/24"), "another table is never touched");
}

/// A VXLAN device, a bridge with a port, neighbours and FDB entries through one blocking batch each; dumps
/// filtered by device see only that device's entries.
#[test]
fn links_neighbours_and_fdb_entries() {
    let ns = Netns::create("links");
    ns.veth("u0");
    ns.veth("d1");
    ns.ip("addr add 198.18.6.1/24 dev u0");
    let mut nl = ns.socket();
    let u0 = ns.index(&mut nl, "u0");
    let vxlan = Vxlan {
        vni: 7,
        local: Some(ip("198.18.6.1")),
        underlay: Some(u0),
        port: Some(8472),
        learning: false,
        gbp: false,
    };
    let mac = [0x0e, 0, 0, 0, 0, 7];
    let answers = nl
        .batch(vec![
            link::create_vxlan(&NewVxlan { name: "vx7", vxlan: &vxlan, mac, mtu: 1450, up: false }),
            link::create_bridge("br7", 1500, [0x0e, 0, 0, 0, 1, 7]),
        ])
        .unwrap();
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let again = nl.request(link::create_bridge("br7", 1500, [0x0e, 0, 0, 0, 1, 7])).unwrap_err();
    assert!(again.is_exists(), "{again}");

    let (vx7, br7, d1) = (ns.index(&mut nl, "vx7"), ns.index(&mut nl, "br7"), ns.index(&mut nl, "d1"));
    let changes = vec![
        link::change(LinkRef::Index(vx7), &LinkChange { mtu: Some(1400), up: Some(true), ..LinkChange::default() }),
        link::change(LinkRef::Index(d1), &LinkChange { master: Some(br7), up: Some(true), ..LinkChange::default() }),
    ];
    assert!(nl.batch(changes).unwrap().iter().all(Result::is_ok));
    let links: Vec<link::Link> = decode_all(&nl.request(link::dump()).unwrap());
    let read = links.iter().find(|l| l.name == "vx7").unwrap();
    assert_eq!(
        (read.kind.clone(), read.mac, read.mtu, read.up),
        (Some(Kind::Vxlan(vxlan)), Some(mac), Some(1400), true)
    );
    assert_eq!(links.iter().find(|l| l.name == "d1").unwrap().master, Some(br7));

    let peer = [0x0e, 0, 0, 0, 0, 8];
    let requests = vec![
        neighbour::replace(vx7, ip("10.244.8.0"), peer),
        neighbour::replace(d1, ip("10.244.9.1"), peer),
        fdb::replace(vx7, peer, ip("198.18.6.8")),
    ];
    assert!(nl.batch(requests).unwrap().iter().all(Result::is_ok));
    let neighbours: Vec<Neighbour> = decode_on(&nl.request(neighbour::dump(false, Some(vx7))).unwrap(), Some(vx7));
    let want = Neighbour { index: vx7, ip: ip("10.244.8.0"), mac: Some(peer), permanent: true };
    assert_eq!(neighbours, vec![want]);
    let entries: Vec<fdb::FdbEntry> = decode_on(&nl.request(fdb::dump(Some(vx7))).unwrap(), Some(vx7));
    let ours: Vec<_> = entries.iter().filter(|e| e.mac == peer).collect();
    assert_eq!(ours.len(), 1, "{entries:?}");
    assert_eq!((ours[0].dst, ours[0].own, ours[0].permanent), (Some(ip("198.18.6.8")), true, true));

    assert!(nl.request(fdb::delete(vx7, peer)).is_ok());
    assert!(nl.request(fdb::delete(vx7, peer)).unwrap_err().is_not_found());
    assert!(nl.request(link::delete(LinkRef::Name("vx7"))).is_ok());
    assert!(nl.request(link::delete(LinkRef::Name("vx7"))).unwrap_err().is_no_device());
}

/// The pipelined transport answers in order, and a subscription sees typed events in the namespace.
#[test]
fn pipelined_requests_and_typed_events() {
    let ns = Netns::create("events");
    ns.veth("d0");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut events = pipelined::subscribe(Some(&ns.path()), groups::IPV4_ROUTE | groups::LINK, 1 << 20).unwrap();
        let connection = pipelined::Connection::open_at(&ns.path()).unwrap();
        let answer = connection.request(link::get(LinkRef::Name("d0"))).await.unwrap();
        let d0 = decode_all::<link::Link>(&answer)[0].index;
        let routes: Vec<Route> = (0..50)
            .map(|i| Route { device: Some(d0), ..Route::unicast(net(&format!("10.244.{i}.0/24")), PROTOCOL) })
            .collect();
        let mut requests: Vec<_> = routes.iter().map(route::replace).collect();
        requests.push(link::delete(LinkRef::Name("no-such-device")));
        let answers = connection.pipeline(requests, 8).await;
        assert_eq!(answers.len(), 51);
        assert!(answers[..50].iter().all(Result::is_ok));
        assert!(answers[50].as_ref().unwrap_err().is_no_device(), "answers stay in request order");

        // A dump decoded as it arrives gives what decoding the whole answer gives, the device filter included.
        let filter = RouteFilter::main_table();
        let whole = connection.request(route::dump(false, &filter)).await.unwrap();
        let streamed: Vec<Route> = connection.dump(route::dump(false, &filter), Some(d0)).await.unwrap();
        assert_eq!(streamed, decode_on::<Route>(&whole, Some(d0)));
        assert_eq!(streamed.iter().filter(|r| r.protocol == PROTOCOL).count(), 50);
        let lo: Vec<Route> = connection.dump(route::dump(false, &filter), Some(1)).await.unwrap();
        assert!(lo.iter().all(|r| r.device == Some(1)) && !lo.iter().any(|r| r.protocol == PROTOCOL));

        let mut added = 0;
        while added < routes.len() {
            let next = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().unwrap();
            if let (_, Event::RouteAdded(r)) = next {
                if r.protocol == PROTOCOL {
                    assert!(routes.contains(&Route { metric: None, ..r }), "an event for a route we made");
                    added += 1;
                }
            }
        }
        connection.request(link::delete(LinkRef::Index(d0))).await.unwrap();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().unwrap();
            if matches!(next, (_, Event::LinkDeleted(l)) if l.name == "d0") {
                break;
            }
        }
    });
}

/// Thousands of changes go out a datagram at a time with only refusals answered, and every request still gets its
/// own verdict: the refused ones by their sequence number, in request order, across datagram boundaries.
#[test]
fn bulk_changes_keep_a_verdict_per_request() {
    let ns = Netns::create("bulk");
    ns.veth("d0");
    let mut nl = ns.socket();
    let d0 = ns.index(&mut nl, "d0");
    let mac = |i: u32| [0x0e, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
    let neighbour_ip = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0af4_0000 + i));
    let count = 3000u32;
    // Every 700th request names a device that does not exist.
    let refused = |i: u32| i % 700 == 699;
    let requests: Vec<_> =
        (0..count).map(|i| neighbour::replace(if refused(i) { 9999 } else { d0 }, neighbour_ip(i), mac(i))).collect();
    let answers = nl.apply_changes(&requests).unwrap();
    assert_eq!(answers.len(), requests.len());
    for (i, answer) in (0..count).zip(&answers) {
        match answer {
            Err(e) => assert!(refused(i) && e.is_no_device(), "request {i}: {e}"),
            Ok(objects) => assert!(!refused(i) && objects.is_empty(), "request {i} was accepted"),
        }
    }
    let dumped: Vec<Neighbour> = decode_on(&nl.request(neighbour::dump(false, Some(d0))).unwrap(), Some(d0));
    assert_eq!(dumped.iter().filter(|n| n.permanent).count(), (0..count).filter(|i| !refused(*i)).count());

    let deletes: Vec<_> = (0..count).map(|i| neighbour::delete(d0, neighbour_ip(i))).collect();
    let answers = nl.apply_changes(&deletes).unwrap();
    assert!((0..count).zip(&answers).all(|(i, a)| a.is_ok() != refused(i)), "only the never-added ones are missing");

    // Deleting them all again: every request is refused, far more refusals than the small receive buffer holds.
    // Verdicts are lost (ENOBUFS), the requests are sent again, each acknowledged, and every verdict is right.
    let mut small = ns.socket();
    small.set_receive_buffer(4096);
    let answers = small.apply_changes(&deletes).unwrap();
    assert_eq!(answers.len(), deletes.len());
    assert!(answers.iter().all(|a| a.as_ref().is_err_and(weft_netlink::Error::is_not_found)), "{answers:?}");
}
