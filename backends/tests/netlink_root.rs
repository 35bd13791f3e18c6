//! NetlinkKernel against the real kernel. Needs root, and fails rather than skips without it.
//!
//! Safety: everything happens inside network namespaces these tests create (`wnl-<pid>-<tag>`) and a guard deletes
//! them even when a test panics. The root namespace is never touched: `ip` always runs with `-n`, and the netlink
//! sockets are opened inside the test namespace. Underlay addresses come from 198.18.0.0/15, overlay addresses
//! from 10.244.0.0/16.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use weft_backends::backend::Backend;
use weft_backends::diff::Op;
use weft_backends::kernel::{reconcile, Drift, Kernel, KernelError};
use weft_backends::model::{
    Address, KernelState, Link, LinkKind, MacAddr, Route, Scope, VxlanAttrs, WEFT_ROUTE_PROTOCOL,
};
use weft_backends::netlink::{watch_deletions, watch_deletions_in_netns, Interface, NetlinkKernel};
use weft_backends::vxlan::{VxlanBackend, VxlanConfig};
use weft_backends::{Family, Peer, PerFamily, Underlay};

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "netlink_root tests create network namespaces and must run as root (euid is {euid})");
}

/// A network namespace owned by this test process; deleted on drop, so also when the test panics.
struct Netns {
    name: String,
}

impl Netns {
    fn create(tag: &str) -> Netns {
        require_root();
        let name = format!("wnl-{}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name]);
        Netns { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> <args>`; panics when it fails.
    fn ip(&self, args: &str) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend(args.split_whitespace());
        run("ip", &all)
    }

    /// `bridge -n <ns> <args>`; panics when it fails.
    fn bridge(&self, args: &str) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend(args.split_whitespace());
        run("bridge", &all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(out.status.success(), "{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Trimmed, non-empty lines, sorted, for comparing command output.
/// The lines of `text`, sorted, with the id of a nexthop object of weft's (numbered from 0xF000_0000) read as
/// `nhid N`.
fn lines(text: &str) -> Vec<String> {
    let ours = |w: &str| w.parse::<u32>().is_ok_and(|id| id >= 0xF000_0000);
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let named = |i: usize| i > 0 && matches!((i, words[i - 1]), (_, "nhid") | (1, "id")) && ours(words[i]);
            words.iter().enumerate().map(|(i, w)| if named(i) { "N" } else { w }).collect::<Vec<_>>().join(" ")
        })
        .filter(|l| !l.is_empty())
        .collect();
    out.sort();
    out
}

fn vtep_mac(n: u8) -> String {
    format!("0e:00:00:00:00:{n:02x}")
}

/// Host n: subnet 10.244.n.0/24, VTEP at 198.18.0.n.
fn peer(n: u8) -> Peer {
    Peer {
        subnets: PerFamily::new(Some(format!("10.244.{n}.0/24").parse().unwrap()), None),
        public_ips: PerFamily::new(Some(format!("198.18.0.{n}").parse().unwrap()), None),
        backend_type: "vxlan".into(),
        backend_data: PerFamily::new(Some(serde_json::json!({"VNI": 1, "VtepMAC": vtep_mac(n)})), None),
    }
}

/// Host 1: a namespace with a veth underlay (u0 198.18.0.1/24), a netlink handle on it and the VXLAN backend.
struct Node {
    ns: Netns,
    kernel: NetlinkKernel,
    backend: VxlanBackend,
    scope: Scope,
}

impl Node {
    async fn new(tag: &str) -> Node {
        let ns = Netns::create(tag);
        ns.ip("link add u0 type veth peer name u1");
        ns.ip("addr add 198.18.0.1/24 dev u0");
        ns.ip("link set u0 up");
        ns.ip("link set u1 up");
        let mut kernel = NetlinkKernel::connect_in_netns(&ns.path()).unwrap();
        let u0 = interface(&mut kernel, "u0").await;
        let underlay = Underlay::new(u0.name, u0.index, u0.mtu, u0.addresses);
        let backend = VxlanBackend::prepare(
            VxlanConfig::default(),
            underlay,
            &[Family::V4],
            &KernelState::default(),
            WEFT_ROUTE_PROTOCOL,
        )
        .unwrap();
        let scope = backend.scope();
        Node { ns, kernel, backend, scope }
    }

    /// Desired state for host 1 with the given remote hosts.
    fn desired(&self, remotes: &[u8]) -> KernelState {
        let mut leases = vec![peer(1)];
        leases.extend(remotes.iter().map(|n| peer(*n)));
        let desired = self.backend.desired(&peer(1), &leases);
        assert!(desired.skipped.is_empty(), "{:?}", desired.skipped);
        desired.state
    }

    async fn observe(&mut self) -> KernelState {
        self.kernel.observe(&self.scope).await.unwrap()
    }

    /// Reconciles until clean and checks that the kernel then shows exactly `desired` and needs nothing more.
    async fn converge(&mut self, desired: &KernelState) -> Vec<Op> {
        let report = reconcile(&mut self.kernel, &self.scope, desired).await.unwrap();
        assert!(report.is_clean(), "failed ops: {:#?}", report.failed);
        assert_eq!(self.observe().await.render(), desired.render());
        let again = reconcile(&mut self.kernel, &self.scope, desired).await.unwrap();
        assert!(again.applied.is_empty() && again.is_clean(), "second pass was not empty: {again:#?}");
        report.applied
    }
}

async fn interface(kernel: &mut NetlinkKernel, name: &str) -> Interface {
    let all = kernel.interfaces().await.unwrap();
    all.into_iter().find(|i| i.name == name).unwrap_or_else(|| panic!("no interface {name}"))
}

#[tokio::test]
async fn converges_to_exactly_what_flannel_configures() {
    let mut node = Node::new("flannel").await;
    let desired = node.desired(&[2, 3]);
    let ops = node.converge(&desired).await;
    assert_eq!(ops.len(), 1 + 1 + 3 * 2, "link, address, and neigh+fdb+route per peer: {ops:#?}");

    let ns = &node.ns;
    assert_eq!(
        lines(&ns.ip("route")),
        lines(
            "10.244.2.0/24 nhid N via 10.244.2.0 dev flannel.1 proto 87 onlink\n\
             10.244.3.0/24 nhid N via 10.244.3.0 dev flannel.1 proto 87 onlink\n\
             198.18.0.0/24 dev u0 proto kernel scope link src 198.18.0.1"
        )
    );
    assert_eq!(
        lines(&ns.ip("neigh show dev flannel.1")),
        lines(&format!("10.244.2.0 lladdr {} PERMANENT\n10.244.3.0 lladdr {} PERMANENT", vtep_mac(2), vtep_mac(3)))
    );
    assert_eq!(
        lines(&ns.bridge("fdb show dev flannel.1")),
        lines(&format!("{} dst 198.18.0.2 self permanent\n{} dst 198.18.0.3 self permanent", vtep_mac(2), vtep_mac(3)))
    );
    let link = ns.ip("-d link show flannel.1");
    let vtep = &node.backend.vteps[0].link;
    for want in [
        "vxlan id 1 local 198.18.0.1 dev u0 ",
        " dstport 8472 nolearning ",
        "mtu 1450 ",
        ",UP,",
        &format!("link/ether {} ", vtep.mac),
    ] {
        assert!(link.contains(want), "ip -d link lacks {want:?}:\n{link}");
    }
    assert!(!link.contains("gbp"), "{link}");
    assert!(ns.ip("-4 addr show dev flannel.1").contains("inet 10.244.1.0/32 "));
}

/// The ids of the nexthop objects in `ns`, by gateway.
fn nexthop_ids(ns: &Netns) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = ns
        .ip("nexthop show")
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            Some((words.get(3)?.to_string(), words.get(1)?.parse().ok()?))
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn ipv4_gateway_routes_go_through_nexthop_objects_of_their_own() {
    let mut node = Node::new("nexthop").await;
    // Someone else's object holds the first id of weft's range: weft takes the next, and leaves it alone.
    node.ns.ip("nexthop add id 4026531840 via 198.18.0.99 dev u0");
    node.converge(&node.desired(&[2, 3])).await;
    let ids = nexthop_ids(&node.ns);
    assert_eq!(ids.len(), 3, "{ids:?}");
    let (first, second) = (ids[0].1, ids[1].1);
    assert_eq!((ids[0].0.as_str(), ids[1].0.as_str()), ("10.244.2.0", "10.244.3.0"));
    assert!(first > 4026531840 && second > 4026531840 && first != second, "{ids:?}");
    assert_eq!(ids[2], ("198.18.0.99".to_string(), 4026531840), "the foreign object is untouched");
    assert!(node.ns.ip("route show 10.244.2.0/24").contains(&format!("nhid {first} ")));

    // A nexthop object deleted by hand takes its route along: observing sees the route missing, a pass puts both
    // back (the full pass numbers a fresh object).
    node.ns.ip(&format!("nexthop del id {first}"));
    assert!(node.ns.ip("route show 10.244.2.0/24").is_empty());
    node.converge(&node.desired(&[2, 3])).await;
    assert!(node.ns.ip("route show 10.244.2.0/24").contains("via 10.244.2.0 dev flannel.1"));
    // A route deleted by hand, put back by a full pass through a fresh object: the old object, left without its
    // route, goes in the same pass.
    node.ns.ip("route del 10.244.3.0/24");
    node.converge(&node.desired(&[2, 3])).await;
    let ids = nexthop_ids(&node.ns);
    assert_eq!(ids.len(), 3, "one object per route, and the foreign one: {ids:?}");
    assert!(!ids.iter().any(|(_, id)| *id == second), "{ids:?}");

    // flannel's plain route to a peer (a host switched from flanneld) equals the desired route: left as it is.
    node.ns.ip("route replace 10.244.4.0/24 via 10.244.4.0 dev flannel.1 onlink proto 87");
    let ops = node.converge(&node.desired(&[2, 3, 4])).await;
    assert_eq!(ops.len(), 2, "a neighbour and an FDB entry, the route is there: {ops:#?}");
    assert_eq!(
        lines(&node.ns.ip("route show 10.244.4.0/24")),
        lines("10.244.4.0/24 via 10.244.4.0 dev flannel.1 proto 87 onlink")
    );
    // ... and deleted plainly when the peer goes; the others' objects go with their routes.
    node.converge(&node.desired(&[])).await;
    assert!(node.ns.ip("route show proto 87").is_empty());
    assert_eq!(nexthop_ids(&node.ns), vec![("198.18.0.99".to_string(), 4026531840)]);

    // Plain routes on request, as flannel programs them.
    let mut plain = Node::new("plain").await;
    plain.kernel.use_plain_routes();
    plain.converge(&plain.desired(&[2])).await;
    assert_eq!(lines(&plain.ns.ip("route show proto 87")), lines("10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"));
    assert!(plain.ns.ip("nexthop show").is_empty());
}

#[tokio::test]
async fn repairs_what_was_changed_by_hand() {
    let mut node = Node::new("drift").await;
    let desired = node.desired(&[2, 3]);
    node.converge(&desired).await;
    let expected = desired.render();
    let mac2 = vtep_mac(2);

    let drifts = [
        "route del 10.244.2.0/24",
        "neigh del 10.244.2.0 dev flannel.1",
        "neigh replace 10.244.3.0 lladdr 0e:00:00:00:00:99 dev flannel.1 nud permanent",
        "route replace 10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink proto static",
        "addr flush dev flannel.1",
        "link set flannel.1 mtu 1400",
        "link set flannel.1 down",
        "link set flannel.1 address 0e:00:00:00:00:77",
        "link del flannel.1",
    ];
    for command in drifts {
        node.ns.ip(command);
        assert_ne!(node.observe().await.render(), expected, "observe did not notice `ip {command}`");
        node.converge(&desired).await;
        assert_eq!(node.observe().await.render(), expected, "after `ip {command}`");
    }

    node.ns.bridge(&format!("fdb del {mac2} dev flannel.1 dst 198.18.0.2"));
    assert!(!node.observe().await.render().contains(&format!("fdb {mac2} ")));
    let ops = node.converge(&desired).await;
    assert!(matches!(ops.as_slice(), [Op::ReplaceFdb(_)]), "{ops:#?}");

    // A device with an attribute that can only be set at creation (here the port) is re-created.
    node.ns.ip("link del flannel.1");
    node.ns.ip("link add flannel.1 type vxlan id 1 local 198.18.0.1 dev u0 dstport 4789 nolearning");
    let seen = node.observe().await;
    let LinkKind::Vxlan(attrs) = &seen.links["flannel.1"].kind else { panic!("flannel.1 is not VXLAN: {seen:?}") };
    assert_eq!(attrs.port, 4789, "the port must read back in host byte order");
    let ops = node.converge(&desired).await;
    assert!(matches!(ops.as_slice(), [Op::DeleteLink(_), Op::CreateLink(_), ..]), "{ops:#?}");
    assert!(node.ns.ip("-d link show flannel.1").contains(&format!("link/ether {} ", node.backend.vteps[0].link.mac)));
}

#[tokio::test]
async fn removes_departed_peers_and_stale_routes_but_never_foreign_ones() {
    let mut node = Node::new("prune").await;
    node.converge(&node.desired(&[2, 3])).await;

    let foreign = "10.244.9.0/24 via 198.18.0.9 dev u0 proto static";
    node.ns.ip(&format!("route add {foreign}"));
    node.ns.ip("route add 10.244.8.0/24 via 198.18.0.8 dev u0 proto 87");
    node.ns.ip("route add 10.244.7.0/24 via 10.244.7.0 dev flannel.1 onlink proto static");
    let seen = node.observe().await.render();
    assert!(seen.contains("route 10.244.8.0/24 via 198.18.0.8 dev u0 proto 87"), "{seen}");
    assert!(seen.contains("route 10.244.7.0/24 via 10.244.7.0 dev flannel.1 onlink proto 4"), "{seen}");
    assert!(!seen.contains("10.244.9.0"), "a foreign route was observed:\n{seen}");

    let desired = node.desired(&[2]);
    let ops = node.converge(&desired).await;
    let deleted: Vec<String> = ops.iter().map(Op::to_string).collect();
    assert_eq!(ops.len(), 5, "{deleted:#?}");

    let routes = lines(&node.ns.ip("route"));
    assert_eq!(
        routes,
        lines(&format!(
            "10.244.2.0/24 nhid N via 10.244.2.0 dev flannel.1 proto 87 onlink\n\
             198.18.0.0/24 dev u0 proto kernel scope link src 198.18.0.1\n{foreign}"
        ))
    );
    assert!(!node.ns.ip("neigh show dev flannel.1").contains("10.244.3.0"));
    assert!(!node.ns.bridge("fdb show dev flannel.1").contains(&vtep_mac(3)));
    // The departed peer's nexthop object went with its route.
    assert_eq!(
        lines(&node.ns.ip("nexthop show")),
        lines("id N via 10.244.2.0 dev flannel.1 scope link proto 87 onlink")
    );

    // Nothing left to do: the foreign route stays as it is.
    node.converge(&KernelState::default()).await;
    assert!(node.ns.ip("link show").lines().all(|l| !l.contains("flannel.1")));
    assert_eq!(
        lines(&node.ns.ip("route show 10.244.9.0/24")),
        lines("10.244.9.0/24 via 198.18.0.9 dev u0 proto static")
    );
}

#[tokio::test]
async fn a_missing_device_fails_every_op_through_it_until_someone_creates_it() {
    let mut node = Node::new("absent").await;
    let desired = node.desired(&(2..=101).collect::<Vec<u8>>());
    let vtep = desired.links["flannel.1"].clone();
    let neighbours: Vec<Op> = desired.neighbours.values().cloned().map(Op::ReplaceNeighbour).collect();

    // One lookup says the device is missing; every op through it fails naming it.
    let results = node.kernel.apply_all(&neighbours).await;
    assert_eq!(results.len(), 100);
    for result in &results {
        match result {
            Err(e @ KernelError::NoSuchDevice { device, .. }) => {
                assert_eq!(device, "flannel.1");
                assert_eq!(e.cause(), "device flannel.1 does not exist");
            }
            other => panic!("expected NoSuchDevice, got {other:?}"),
        }
    }

    // Created behind this handle's back (as an operator or another weftd would): the next call finds it, the
    // missing device is not remembered past the call that found it missing.
    node.ns.ip(&format!("link add flannel.1 address {} type vxlan id 1 dstport 8472 dev u0 nolearning", vtep.mac));
    let results = node.kernel.apply_all(&neighbours).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(node.ns.ip("neigh show dev flannel.1").lines().count(), 100);
}

#[tokio::test]
async fn apply_is_idempotent_and_names_the_op_in_errors() {
    let mut node = Node::new("apply").await;
    let desired = node.desired(&[2]);
    let vtep = desired.links["flannel.1"].clone();
    let kernel = &mut node.kernel;

    let neighbour = desired.neighbours.values().next().unwrap().clone();
    match kernel.apply(&Op::ReplaceNeighbour(neighbour.clone())).await {
        Err(KernelError::NoSuchDevice { device, .. }) => assert_eq!(device, "flannel.1"),
        other => panic!("expected NoSuchDevice, got {other:?}"),
    }
    // Removing things from a device that does not exist is already done.
    kernel.apply(&Op::DeleteLink("flannel.1".into())).await.unwrap();
    kernel.apply(&Op::DeleteNeighbour(neighbour.clone())).await.unwrap();

    kernel.apply(&Op::CreateLink(vtep.clone())).await.unwrap();
    let err = kernel.apply(&Op::CreateLink(vtep.clone())).await.unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("create link flannel.1 vxlan id 1"), "{text}");
    assert!(text.contains("os error 17"), "{text}");

    let address = desired.addresses.iter().next().unwrap().clone();
    kernel.apply(&Op::AddAddress(address.clone())).await.unwrap();
    kernel.apply(&Op::AddAddress(address.clone())).await.unwrap();
    kernel.apply(&Op::DeleteAddress(address.clone())).await.unwrap();
    kernel.apply(&Op::DeleteAddress(address)).await.unwrap();
    kernel.apply(&Op::DeleteNeighbour(neighbour.clone())).await.unwrap();
    kernel.apply(&Op::DeleteFdb(desired.fdb.values().next().unwrap().clone())).await.unwrap();
    kernel.apply(&Op::DeleteRoute(desired.routes.values().next().unwrap().clone())).await.unwrap();

    // The device is re-created by hand behind the index cache's back: ops still find it by name.
    kernel.observe(&node.scope).await.unwrap();
    node.ns.ip("link del flannel.1");
    node.ns.ip("link add flannel.1 type vxlan id 1 local 198.18.0.1 dev u0 dstport 8472 nolearning");
    kernel.apply(&Op::ReplaceNeighbour(neighbour.clone())).await.unwrap();
    assert!(node.ns.ip("neigh show dev flannel.1").contains("PERMANENT"));

    // Everything UpdateLink can change, then a device with the non-default attributes.
    let changed = Link { mac: "0e:00:00:00:00:aa".parse().unwrap(), mtu: 1400, up: false, ..vtep.clone() };
    kernel.apply(&Op::UpdateLink(changed.clone())).await.unwrap();
    let u0 = vtep_underlay(&vtep);
    let gbp = Link {
        name: "weft-gbp".into(),
        kind: LinkKind::Vxlan(VxlanAttrs {
            vni: 42,
            local: "198.18.0.1".parse().unwrap(),
            underlay_index: u0,
            port: 4789,
            learning: true,
            gbp: true,
        }),
        mac: "0e:00:00:00:00:bb".parse::<MacAddr>().unwrap(),
        mtu: 1400,
        up: true,
    };
    kernel.apply(&Op::CreateLink(gbp.clone())).await.unwrap();
    let scope = Scope::links(vec!["flannel.1".into(), "weft-gbp".into(), "absent".into()], 87);
    let seen = kernel.observe(&scope).await.unwrap();
    assert_eq!(seen.links.values().cloned().collect::<Vec<_>>(), vec![changed, gbp]);
    let shown = node.ns.ip("-d link show weft-gbp");
    assert!(shown.contains("vxlan id 42 local 198.18.0.1 dev u0 ") && shown.contains("dstport 4789 "), "{shown}");
    assert!(shown.contains(" gbp ") && !shown.contains("nolearning"), "{shown}");

    node.kernel.apply(&Op::DeleteLink("weft-gbp".into())).await.unwrap();
    node.kernel.apply(&Op::DeleteLink("weft-gbp".into())).await.unwrap();
}

fn vtep_underlay(link: &Link) -> u32 {
    let LinkKind::Vxlan(attrs) = &link.kind else { panic!("not VXLAN: {link:?}") };
    attrs.underlay_index
}

#[tokio::test]
async fn lists_interfaces_and_finds_the_default_route() {
    let mut node = Node::new("host").await;
    node.ns.ip("addr add 198.18.1.1/24 dev u1");
    node.ns.ip("route add default via 198.18.0.254 dev u0 metric 200");
    node.ns.ip("route add default via 198.18.1.254 dev u1 metric 50");
    let kernel = &mut node.kernel;

    let u0 = interface(kernel, "u0").await;
    let u1 = interface(kernel, "u1").await;
    assert!(u0.up && u0.mtu == 1500 && u0.mac.is_some(), "{u0:?}");
    assert!(u0.addresses.contains(&"198.18.0.1/24".parse().unwrap()), "{u0:?}");
    let lo = interface(kernel, "lo").await;
    assert_eq!((lo.index, lo.up), (1, false), "a new namespace's loopback is down");

    assert_eq!(kernel.default_route_interface(Family::V4).await.unwrap(), Some(u1.index));
    assert_eq!(kernel.default_route_interface(Family::V6).await.unwrap(), None);
    node.ns.ip("route del default via 198.18.1.254 dev u1");
    assert_eq!(kernel.default_route_interface(Family::V4).await.unwrap(), Some(u0.index));
}

/// Waits for a notification containing `want`, skipping others.
async fn expect_note(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Drift>, want: &str) {
    let wait = async {
        loop {
            let note = rx.recv().await.expect("watch channel closed").to_string();
            if note.contains(want) {
                return note;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap_or_else(|_| panic!("no notification containing {want:?} within 5 s"));
}

#[tokio::test]
async fn watch_reports_deletions_in_a_namespace() {
    let mut node = Node::new("watch").await;
    node.converge(&node.desired(&[2, 3])).await;
    node.ns.ip("route add 10.244.9.0/24 via 198.18.0.9 dev u0 proto static");
    let mut rx = watch_deletions_in_netns(&node.ns.path(), node.scope.clone()).unwrap();

    // The foreign route goes first; the first note must still be about ours.
    node.ns.ip("route del 10.244.9.0/24");
    node.ns.ip("route del 10.244.2.0/24");
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(first, Drift::RouteDeleted { dst: "10.244.2.0/24".parse().unwrap(), table: 254 });

    node.ns.ip("neigh del 10.244.3.0 dev flannel.1");
    expect_note(&mut rx, "neighbour 10.244.3.0 dev flannel.1 deleted").await;
    node.ns.bridge(&format!("fdb del {} dev flannel.1 dst 198.18.0.3", vtep_mac(3)));
    expect_note(&mut rx, &format!("fdb entry {} dev flannel.1 deleted", vtep_mac(3))).await;
    node.ns.ip("link set flannel.1 down");
    expect_note(&mut rx, "link flannel.1 went down").await;
    node.ns.ip("link del flannel.1");
    expect_note(&mut rx, "link flannel.1 deleted").await;

    // A re-created device is watched again.
    node.converge(&node.desired(&[2, 3])).await;
    node.ns.ip("route del 10.244.3.0/24");
    expect_note(&mut rx, "route 10.244.3.0/24 deleted").await;
}

/// connect() and watch_deletions() act on the current namespace: run them on a thread that entered the test
/// namespace and has its own runtime (the thread ends with the test, so no shared thread changes namespace).
#[test]
fn current_namespace_handles_work_from_a_thread_inside_it() {
    let ns = Netns::create("thread");
    ns.ip("link add u0 type veth peer name u1");
    ns.ip("addr add 198.18.0.1/24 dev u0");
    ns.ip("link set u0 up");
    ns.ip("route add 10.244.5.0/24 via 198.18.0.5 dev u0 proto 87");
    let path = ns.path();
    let inside = std::thread::spawn(move || {
        let netns = std::fs::File::open(&path).unwrap();
        weft_netlink::netns::enter_for_good(&netns).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut kernel = NetlinkKernel::connect().unwrap();
            let names: Vec<String> = kernel.interfaces().await.unwrap().into_iter().map(|i| i.name).collect();
            let scope = Scope::links(vec!["flannel.1".into()], WEFT_ROUTE_PROTOCOL);
            let mut rx = watch_deletions(scope.clone()).unwrap();
            let seen = kernel.observe(&scope).await.unwrap();
            let deleted = seen.routes.values().next().cloned().map(Op::DeleteRoute);
            if let Some(op) = &deleted {
                kernel.apply(op).await.unwrap();
            }
            let note = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.ok().flatten();
            (names, deleted.map(|op| op.to_string()), note.map(|d| d.to_string()))
        })
    });
    let (names, deleted, note) = inside.join().unwrap();
    assert!(names.contains(&"u0".to_string()), "not inside the test namespace: {names:?}");
    assert_eq!(deleted.as_deref(), Some("delete route 10.244.5.0/24 via 198.18.0.5 dev u0 proto 87"));
    assert_eq!(note.as_deref(), Some("route 10.244.5.0/24 deleted"));
    assert_eq!(ns.ip("route show proto 87"), "");
}

#[test]
fn connecting_outside_a_runtime_is_an_error_not_a_panic() {
    let err = NetlinkKernel::connect().err().expect("connect outside a runtime must fail");
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

/// Host n of many: a /30 each, so up to 16,383 fit in 10.244.0.0/16.
fn many_peer(n: u16) -> Peer {
    let [hi, lo] = n.to_be_bytes();
    Peer {
        subnets: PerFamily::new(Some(format!("10.244.{}.{}/30", n / 64, (n % 64) * 4).parse().unwrap()), None),
        public_ips: PerFamily::new(Some(format!("198.18.{hi}.{lo}").parse().unwrap()), None),
        backend_type: "vxlan".into(),
        backend_data: PerFamily::new(
            Some(serde_json::json!({"VNI": 1, "VtepMAC": format!("0e:00:00:00:{hi:02x}:{lo:02x}")})),
            None,
        ),
    }
}

/// Observe is a fixed number of dumps, so it stays fast however many peers there are. WEFT_SCALE_PEERS overrides
/// the count (up to 16383).
#[tokio::test]
async fn converges_with_thousands_of_peers() {
    let count: u16 = std::env::var("WEFT_SCALE_PEERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mut node = Node::new("scale").await;
    let own = many_peer(1);
    let leases: Vec<Peer> = (1..=count).map(many_peer).collect();
    let desired = node.backend.desired(&own, &leases).state;
    assert_eq!(desired.routes.len(), usize::from(count) - 1);

    let started = std::time::Instant::now();
    let ops = node.converge(&desired).await;
    let converged = started.elapsed();
    assert_eq!(ops.len(), 2 + 3 * (usize::from(count) - 1));

    let started = std::time::Instant::now();
    let seen = node.observe().await;
    let observed = started.elapsed();
    assert_eq!(seen.object_count(), desired.object_count());
    eprintln!("{count} peers: first reconcile + 2 checks {converged:?}, one observe {observed:?}");
    assert!(observed < Duration::from_secs(5), "observe took {observed:?}");
}

fn net(text: &str) -> ipnetwork::IpNetwork {
    text.parse().unwrap()
}

#[tokio::test]
async fn blackhole_and_device_routes_and_a_tun_device_converge_and_are_cleaned_up() {
    let mut node = Node::new("general").await;
    node.scope.links.push("weft0".into());
    let tun = Link { name: "weft0".into(), kind: LinkKind::Tun, mac: MacAddr::default(), mtu: 1400, up: true };
    let mut desired = node.desired(&[2]);
    desired.add_link(tun);
    desired.add_address(Address { device: "weft0".into(), addr: net("10.244.1.1/32") });
    desired.add_route(Route::blackhole(net("10.244.1.0/24"), WEFT_ROUTE_PROTOCOL));
    desired.add_route(Route::blackhole(net("fd00:10:244:1::/64"), WEFT_ROUTE_PROTOCOL));
    desired.add_route(Route::dev(net("10.244.5.0/24"), "weft0", WEFT_ROUTE_PROTOCOL));
    desired.add_route(Route::dev(net("fd00:10:244:5::/64"), "weft0", WEFT_ROUTE_PROTOCOL));

    // The data plane has not opened its TUN device yet: weft says so, and programs everything else.
    let report = reconcile(&mut node.kernel, &node.scope, &desired).await.unwrap();
    let failed: Vec<String> = report.failed.iter().map(|(_, e)| e.to_string()).collect();
    assert!(failed[0].contains("TUN device weft0 does not exist; the data plane creates it"), "{failed:?}");
    assert!(failed[1..].iter().all(|e| e.ends_with("device weft0 does not exist")), "{failed:?}");
    assert!(node.ns.ip("route show").contains("blackhole 10.244.1.0/24 proto 87"));

    // The data plane opens it (a persistent TUN device stands in for /dev/net/tun here): weft configures it.
    node.ns.ip("tuntap add dev weft0 mode tun");
    node.converge(&desired).await;
    let link = node.ns.ip("link show weft0");
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    // linkdown: no process holds the TUN device open, so it has no carrier.
    assert_eq!(
        lines(&node.ns.ip("route show proto 87")),
        lines(
            "10.244.2.0/24 nhid N via 10.244.2.0 dev flannel.1 onlink\n\
             10.244.5.0/24 dev weft0 scope link linkdown\n\
             blackhole 10.244.1.0/24"
        )
    );
    assert_eq!(
        lines(&node.ns.ip("-6 route show proto 87")),
        lines("fd00:10:244:5::/64 dev weft0 metric 1024 linkdown pref medium\nblackhole fd00:10:244:1::/64 dev lo metric 1024 pref medium")
    );

    // Nothing of this wanted any more: the routes and the blackholes go, and so does the device.
    let remaining = node.desired(&[2]);
    node.converge(&remaining).await;
    assert_eq!(
        lines(&node.ns.ip("route show proto 87")),
        lines("10.244.2.0/24 nhid N via 10.244.2.0 dev flannel.1 onlink")
    );
    assert!(node.ns.ip("-6 route show proto 87").trim().is_empty());
    assert!(!node.ns.ip("link show").contains("weft0"));
}

/// The same operation on the fake and on the real kernel, in the same situation, fails the same way: same
/// variant, same errno, same text.
#[tokio::test]
async fn the_fake_and_the_real_kernel_refuse_the_same_way() {
    let mut node = Node::new("errors").await;
    let mut fake = weft_backends::fake::FakeKernel { host_devices: vec!["u0".into()], ..Default::default() };
    let mut vtep = node.desired(&[]).links["flannel.1"].clone();
    vtep.up = false;
    let tun = Link { name: "weft0".into(), kind: LinkKind::Tun, mac: MacAddr::default(), mtu: 1400, up: true };
    let nowhere = Route { device: None, ..Route::dev(net("10.244.7.0/24"), "x", WEFT_ROUTE_PROTOCOL) };
    let ops = vec![
        Op::ReplaceRoute(Route::dev(net("10.244.5.0/24"), "absent0", WEFT_ROUTE_PROTOCOL)),
        Op::ReplaceRoute(Route::via(net("10.244.5.0/24"), "10.244.5.0".parse().unwrap(), "absent0", true, 87)),
        Op::AddAddress(Address { device: "absent0".into(), addr: net("10.244.1.0/32") }),
        Op::UpdateLink(vtep.clone()),
        Op::CreateLink(tun),
        Op::CreateLink(Link::unowned("u0")),
        Op::ReplaceRoute(nowhere),
        // A device that exists but is down: the kernel refuses routes through it.
        Op::CreateLink(vtep.clone()),
        Op::ReplaceRoute(Route::dev(net("10.244.6.0/24"), "flannel.1", WEFT_ROUTE_PROTOCOL)),
        Op::CreateLink(vtep),
    ];
    let describe = |result: Result<(), KernelError>| {
        result.map_err(|e| {
            (format!("{e:?}").split([' ', '{', '(']).next().unwrap().to_string(), e.errno(), e.to_string())
        })
    };
    let mut refused = 0;
    for op in &ops {
        let from_fake = describe(fake.apply(op).await);
        let from_kernel = describe(node.kernel.apply(op).await);
        assert_eq!(from_fake, from_kernel, "{op}");
        refused += usize::from(from_kernel.is_err());
    }
    assert_eq!(refused, ops.len() - 1, "only the first CreateLink of the VTEP succeeds");
}

/// `--ip-blackhole-route`'s route sits under the bridge's connected route in both families: the bridge keeps its
/// addresses while it exists, and the blackhole takes the subnet once it is gone. A blackhole of ours at another
/// metric is replaced by the last-resort one, and a pass later there is nothing to do (the IPv6 default metric the
/// kernel reports reads back as the model's 0).
#[tokio::test]
async fn the_last_resort_blackhole_never_shadows_the_bridge() {
    use weft_backends::model::LAST_RESORT_METRIC;
    let mut node = Node::new("blackhole").await;
    // A veth end stands in for the bridge: up with a carrier, so its connected routes are in use.
    node.ns.ip("link add cni0 type veth peer name cni0p");
    node.ns.ip("link set cni0p up");
    node.ns.ip("addr add 10.244.1.1/24 dev cni0");
    node.ns.ip("addr add fd00:10:244:1::1/64 dev cni0 nodad");
    node.ns.ip("link set cni0 up");
    // An earlier blackhole of ours at the default metric, which would compete with the connected route.
    node.ns.ip("route add blackhole 10.244.2.0/24 proto 87");
    let mut desired = node.desired(&[]);
    for subnet in ["10.244.1.0/24", "fd00:10:244:1::/64", "10.244.2.0/24"] {
        desired.add_route(Route::blackhole(net(subnet), WEFT_ROUTE_PROTOCOL).with_metric(LAST_RESORT_METRIC));
    }
    let ops: Vec<String> = node.converge(&desired).await.iter().map(ToString::to_string).collect();
    assert!(ops.contains(&"delete route blackhole 10.244.2.0/24 proto 87".to_string()), "{ops:?}");
    assert_eq!(
        lines(&node.ns.ip("route show type blackhole")),
        lines(
            "blackhole 10.244.1.0/24 proto 87 metric 4294967295\n\
             blackhole 10.244.2.0/24 proto 87 metric 4294967295"
        )
    );
    assert!(node.ns.ip("route get 10.244.1.5").contains("dev cni0"), "the connected route still wins");
    assert!(node.ns.ip("-6 route get fd00:10:244:1::5").contains("dev cni0"), "in IPv6 too");
    node.ns.ip("link del cni0");
    for family in ["-4", "-6"] {
        let addr = if family == "-4" { "10.244.1.5" } else { "fd00:10:244:1::5" };
        let out = Command::new("ip").args(["-n", &node.ns.name, family, "route", "get", addr]).output().unwrap();
        // The kernel answers a lookup that ends in a blackhole with EINVAL.
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Invalid argument"),
            "{addr} must hit the blackhole once the bridge is gone: {out:?}"
        );
    }
}
