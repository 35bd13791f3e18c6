//! Watching a host's kernel converge: netlink notifications give exact times without stealing CPU from weftd
//! (a dump of 30,000 objects every few milliseconds would), and one final dump checks the result.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use tokio::sync::mpsc::UnboundedReceiver;
use weft_backends::kernel::Kernel;
use weft_backends::model::{KernelState, MacAddr, Scope, WEFT_ROUTE_PROTOCOL};
use weft_backends::netlink::NetlinkKernel;
use weft_netlink::event::groups;
use weft_netlink::pipelined::subscribe;
use weft_netlink::route::MAIN_TABLE;
use weft_netlink::Event;

use super::error::{Context, Result};
use super::netns::netns_path;

/// Receive buffer for the notification socket: a cold start of 10,000 peers announces 30,000 objects within a
/// second or two, far more than the default buffer holds while the reader is descheduled.
const EVENT_BUFFER_BYTES: usize = 256 << 20;

/// The VXLAN device weftd programs (VNI 1).
pub const DEVICE: &str = "flannel.1";

/// Objects of each kind present right now, as far as notifications tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub routes: usize,
    pub neighbours: usize,
    pub fdb: usize,
}

impl Counts {
    pub fn all_at_least(&self, n: usize) -> bool {
        self.routes >= n && self.neighbours >= n && self.fdb >= n
    }
}

pub struct KernelWatch {
    ns: String,
    events: UnboundedReceiver<(Instant, Event)>,
    routes: HashSet<IpNetwork>,
    neighbours: HashMap<(u32, IpAddr), MacAddr>,
    fdb: HashMap<(u32, MacAddr), IpAddr>,
    /// When each of our routes last appeared.
    route_added: HashMap<IpNetwork, Instant>,
    /// Notifications were lost: counts are unreliable, fall back to dumps.
    pub overrun: bool,
}

impl KernelWatch {
    /// Subscribes in namespace `ns`; only changes after this call are seen, so start it before the daemon.
    pub fn start(ns: &str) -> Result<KernelWatch> {
        let events = subscribe(Some(&netns_path(ns)), groups::NEIGHBOUR | groups::IPV4_ROUTE, EVENT_BUFFER_BYTES)
            .context(format!("subscribing to netlink in {ns}"))?;
        Ok(KernelWatch {
            ns: ns.to_string(),
            events,
            routes: HashSet::new(),
            neighbours: HashMap::new(),
            fdb: HashMap::new(),
            route_added: HashMap::new(),
            overrun: false,
        })
    }

    pub fn counts(&self) -> Counts {
        Counts { routes: self.routes.len(), neighbours: self.neighbours.len(), fdb: self.fdb.len() }
    }

    /// Counts our main-table routes, permanent neighbours with a MAC, and permanent FDB entries of a device
    /// itself (NTF_SELF) with a remote destination, such as a VXLAN peer.
    fn absorb(&mut self, at: Instant, event: Event) {
        match event {
            Event::RouteAdded(r) if r.table == MAIN_TABLE && r.protocol == WEFT_ROUTE_PROTOCOL => {
                self.routes.insert(r.dst);
                self.route_added.insert(r.dst, at);
            }
            Event::RouteDeleted(r) if r.table == MAIN_TABLE && r.protocol == WEFT_ROUTE_PROTOCOL => {
                self.routes.remove(&r.dst);
            }
            Event::NeighbourAdded(n) if n.permanent => {
                if let Some(mac) = n.mac {
                    self.neighbours.insert((n.index, n.ip), MacAddr(mac));
                }
            }
            Event::NeighbourDeleted(n) => {
                self.neighbours.remove(&(n.index, n.ip));
            }
            Event::FdbAdded(e) if e.own && e.permanent => {
                if let Some(dst) = e.dst {
                    self.fdb.insert((e.index, MacAddr(e.mac)), dst);
                }
            }
            Event::FdbDeleted(e) if e.own => {
                self.fdb.remove(&(e.index, MacAddr(e.mac)));
            }
            Event::Overrun => self.overrun = true,
            _ => {}
        }
    }

    /// Waits until `done(counts)` holds; returns the time of the notification that made it hold, or None on
    /// timeout. After an overrun, polls dumps instead and returns when a dump shows it.
    pub async fn wait_until(&mut self, done: impl Fn(&Counts) -> bool, timeout: Duration) -> Result<Option<Instant>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.overrun {
                return self.poll_until(|state| done(&counts_of(state)), deadline).await;
            }
            let next = tokio::time::timeout_at(deadline, self.events.recv()).await;
            match next {
                Err(_) => return Ok(None),
                Ok(None) => self.overrun = true,
                Ok(Some((at, event))) => {
                    self.absorb(at, event);
                    if done(&self.counts()) {
                        return Ok(Some(at));
                    }
                }
            }
        }
    }

    /// Waits until route `dst` (ours) appears; returns when its notification was read. After an overrun, polls
    /// dumps instead (the notification may be among the lost ones).
    pub async fn wait_for_route(&mut self, dst: IpNetwork, timeout: Duration) -> Result<Option<Instant>> {
        if let Some(at) = self.route_added.get(&dst) {
            return Ok(Some(*at));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.overrun {
                return self.poll_until(|state| state.routes.contains_key(&dst), deadline).await;
            }
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => self.overrun = true,
                Ok(Some((at, event))) => {
                    self.absorb(at, event);
                    if let Some(at) = self.route_added.get(&dst) {
                        return Ok(Some(*at));
                    }
                }
            }
        }
    }

    async fn poll_until(
        &mut self,
        done: impl Fn(&KernelState) -> bool,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Instant>> {
        loop {
            let state = observe(&self.ns).await?;
            if done(&state) {
                return Ok(Some(Instant::now()));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Everything weftd owns in namespace `ns`, by one set of dumps.
pub async fn observe(ns: &str) -> Result<KernelState> {
    let mut kernel = NetlinkKernel::connect_in_netns(&netns_path(ns)).context(format!("netlink in {ns}"))?;
    let scope = Scope::links(vec![DEVICE.to_string()], WEFT_ROUTE_PROTOCOL);
    kernel.observe(&scope).await.context(format!("dumping {ns}"))
}

pub fn counts_of(state: &KernelState) -> Counts {
    Counts { routes: state.routes.len(), neighbours: state.neighbours.len(), fdb: state.fdb.len() }
}
