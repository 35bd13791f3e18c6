//! Watching for deletions: typed kernel events in, a typed [`Drift`] out whenever something inside the scope
//! disappears or one of its devices goes down.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use futures_util::StreamExt;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use weft_netlink::event::groups;
use weft_netlink::pipelined::{Connection, Notifications};
use weft_netlink::{link, netns, Event, EventKind};

use crate::kernel::Drift;
use crate::model::{MacAddr, Scope};

const WATCH_GROUPS: u32 = groups::LINK | groups::NEIGHBOUR | groups::IPV4_ROUTE | groups::IPV6_ROUTE;

/// Subscribes to link, neighbour and route notifications in the current network namespace and sends a [`Drift`]
/// on the channel whenever something inside `scope` disappears or one of its devices goes down. Call inside a
/// tokio runtime; treat every message as "reconcile soon". The channel closes if the netlink socket fails (after
/// [`Drift::WatchClosed`]), and the watcher stops when the receiver is dropped.
pub fn watch_deletions(scope: Scope) -> io::Result<UnboundedReceiver<Drift>> {
    start(netns::route_socket(WATCH_GROUPS)?, scope)
}

/// [`watch_deletions`] for the network namespace at `netns_path`.
pub fn watch_deletions_in_netns(netns_path: &Path, scope: Scope) -> io::Result<UnboundedReceiver<Drift>> {
    start(netns::route_socket_at(netns_path, WATCH_GROUPS)?, scope)
}

fn start(socket: netns::Socket, scope: Scope) -> io::Result<UnboundedReceiver<Drift>> {
    let (connection, notifications) = Connection::with_notifications(socket).map_err(weft_netlink::Error::into_io)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(watch(connection, notifications, WatchState::new(scope), tx));
    Ok(rx)
}

async fn watch(
    connection: Connection,
    mut notifications: Notifications,
    mut state: WatchState,
    tx: UnboundedSender<Drift>,
) {
    // Neighbour and route notifications name devices by index only, so learn the indexes of our devices now;
    // later RTM_NEWLINK notifications keep the map current.
    match connection.request(link::dump()).await {
        Ok(answer) => {
            for l in weft_netlink::decode_all::<link::Link>(&answer) {
                state.link_seen(&l);
            }
        }
        Err(e) => tracing::warn!("netlink watch: listing links failed, relying on notifications: {e}"),
    }
    drop(connection);
    loop {
        let message = tokio::select! {
            _ = tx.closed() => return,
            message = notifications.next() => message,
        };
        let Some((message, _)) = message else {
            let _ = tx.send(Drift::WatchClosed);
            return;
        };
        // Additions other than link changes never concern the watcher: not decoding them keeps it cheap while a
        // cold start announces tens of thousands of objects.
        let wanted = EventKind::of(&message).is_some_and(WatchState::reads);
        let drift = wanted.then(|| Event::from_netlink(&message)).flatten().and_then(|e| state.describe(&e));
        if let Some(drift) = drift {
            if tx.send(drift).is_err() {
                return;
            }
        }
    }
}

/// What the watcher knows about our devices: ifindex -> (name, admin up).
struct WatchState {
    scope: Scope,
    links: HashMap<u32, (String, bool)>,
}

impl WatchState {
    fn new(scope: Scope) -> WatchState {
        WatchState { scope, links: HashMap::new() }
    }

    /// The kinds of notification [`WatchState::describe`] can say something about.
    fn reads(kind: EventKind) -> bool {
        matches!(
            kind,
            EventKind::LinkAdded
                | EventKind::LinkDeleted
                | EventKind::RouteDeleted
                | EventKind::NeighbourDeleted
                | EventKind::Overrun
        )
    }

    fn in_scope(&self, name: &str) -> bool {
        self.scope.links.iter().any(|l| l == name)
    }

    /// Records a device from a dump or RTM_NEWLINK; returns its previous state if it was known.
    fn link_seen(&mut self, l: &link::Link) -> Option<(String, bool)> {
        if self.in_scope(&l.name) {
            self.links.insert(l.index, (l.name.clone(), l.up))
        } else {
            self.links.remove(&l.index)
        }
    }

    fn device(&self, index: u32) -> Option<&str> {
        self.links.get(&index).map(|(name, _)| name.as_str())
    }

    /// What `event` did to us, if it removed or disabled something of ours.
    fn describe(&mut self, event: &Event) -> Option<Drift> {
        match event {
            Event::LinkAdded(l) => {
                let before = self.link_seen(l);
                let now = self.links.get(&l.index);
                match (before, now) {
                    (Some((old, _)), None) => Some(Drift::LinkRenamed { device: old }),
                    (Some((_, true)) | None, Some((name, false))) => Some(Drift::LinkDown { device: name.clone() }),
                    _ => None,
                }
            }
            Event::LinkDeleted(l) => {
                let known = self.links.remove(&l.index).map(|(name, _)| name);
                let name = known.or_else(|| self.in_scope(&l.name).then(|| l.name.clone()))?;
                Some(Drift::LinkDeleted { device: name })
            }
            Event::RouteDeleted(r) => {
                let on_owned_link = r.device.is_some_and(|i| self.links.contains_key(&i));
                let ours = self.scope.owns_route(r.protocol, on_owned_link, r.dst);
                ours.then_some(Drift::RouteDeleted { dst: r.dst, table: r.table })
            }
            Event::NeighbourDeleted(n) => {
                let device = self.device(n.index)?;
                Some(Drift::NeighbourDeleted { device: device.to_string(), ip: n.ip })
            }
            Event::FdbDeleted(e) => {
                let device = self.device(e.index)?;
                Some(Drift::FdbDeleted { device: device.to_string(), mac: MacAddr(e.mac) })
            }
            // The socket buffer overflowed and notifications were lost: anything may have changed.
            Event::Overrun => Some(Drift::NotificationsLost),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use weft_netlink::{fdb, neighbour, route};

    use super::*;

    fn scope() -> Scope {
        Scope::links(vec!["flannel.1".into()], 87)
    }

    fn link(index: u32, name: &str, up: bool) -> link::Link {
        link::Link { index, name: name.into(), kind: None, mac: None, mtu: None, up, master: None, link: None }
    }

    fn route(dst: &str, oif: u32, protocol: u8) -> route::Route {
        route::Route { device: Some(oif), ..route::Route::unicast(dst.parse().unwrap(), protocol) }
    }

    #[test]
    fn watch_describes_what_concerns_us() {
        let mut state = WatchState::new(scope());
        state.link_seen(&link(7, "flannel.1", true));

        let ours = route("10.244.2.0/24", 2, 87);
        assert_eq!(
            state.describe(&Event::RouteDeleted(ours)).map(|d| d.to_string()).as_deref(),
            Some("route 10.244.2.0/24 deleted")
        );
        let on_device = route("10.244.5.0/24", 7, 4);
        assert!(state.describe(&Event::RouteDeleted(on_device)).is_some());
        let foreign = route("10.244.9.0/24", 2, 4);
        assert_eq!(state.describe(&Event::RouteDeleted(foreign)), None);
        let elsewhere = route::Route { table: 1000, ..route("10.244.6.0/24", 2, 87) };
        assert_eq!(
            state.describe(&Event::RouteDeleted(elsewhere)).map(|d| d.to_string()).as_deref(),
            Some("route 10.244.6.0/24 (table 1000) deleted")
        );

        let neigh = neighbour::Neighbour { index: 7, ip: "10.244.2.0".parse().unwrap(), mac: None, permanent: true };
        assert_eq!(
            state.describe(&Event::NeighbourDeleted(neigh)).map(|d| d.to_string()).as_deref(),
            Some("neighbour 10.244.2.0 dev flannel.1 deleted")
        );
        let mac = "0e:2a:4f:00:12:9c".parse::<MacAddr>().unwrap().0;
        let entry = fdb::FdbEntry { index: 7, mac, dst: None, permanent: true, own: true };
        assert_eq!(
            state.describe(&Event::FdbDeleted(entry)).map(|d| d.to_string()).as_deref(),
            Some("fdb entry 0e:2a:4f:00:12:9c dev flannel.1 deleted")
        );

        assert_eq!(state.describe(&Event::LinkAdded(link(7, "flannel.1", true))), None);
        assert_eq!(
            state.describe(&Event::LinkAdded(link(7, "flannel.1", false))).map(|d| d.to_string()).as_deref(),
            Some("link flannel.1 went down")
        );
        // Still down: no news.
        assert_eq!(state.describe(&Event::LinkAdded(link(7, "flannel.1", false))), None);
        assert_eq!(
            state.describe(&Event::LinkDeleted(link(7, "flannel.1", false))).map(|d| d.to_string()).as_deref(),
            Some("link flannel.1 deleted")
        );
        assert_eq!(state.describe(&Event::LinkDeleted(link(3, "eth0", true))), None);
        assert!(state.describe(&Event::Overrun).is_some());
    }
}
