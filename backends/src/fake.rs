//! An in-memory kernel with the semantics weft relies on, so every reconcile scenario runs without root.

use std::io;

use crate::diff::Op;
use crate::kernel::{Kernel, KernelError};
use crate::model::{KernelState, Scope};

/// Holds the state of one namespace. Tests poke it directly (`state`) to simulate drift.
#[derive(Debug, Default, Clone)]
pub struct FakeKernel {
    pub state: KernelState,
    /// Devices that exist but are not weft's (e.g. the underlay `eth0`): routes may use them.
    pub host_devices: Vec<String>,
    /// Every operation applied, in order.
    pub log: Vec<Op>,
}

impl FakeKernel {
    /// A namespace with the usual underlay device `eth0`.
    pub fn new() -> Self {
        FakeKernel { host_devices: vec!["eth0".into()], ..Self::default() }
    }

    fn require_device(&self, op: &Op, device: &str) -> Result<(), KernelError> {
        if self.state.links.contains_key(device) || self.host_devices.iter().any(|d| d == device) {
            Ok(())
        } else {
            Err(KernelError::apply(op, io::Error::from_raw_os_error(ENODEV)))
        }
    }

    fn apply_now(&mut self, op: &Op) -> Result<(), KernelError> {
        match op {
            Op::CreateLink(link) => {
                if self.state.links.contains_key(&link.name) {
                    return Err(KernelError::apply(op, io::Error::from(io::ErrorKind::AlreadyExists)));
                }
                self.state.add_link(link.clone());
            }
            Op::UpdateLink(link) => {
                let Some(have) = self.state.links.get_mut(&link.name) else {
                    return Err(KernelError::NoSuchDevice(link.name.clone()));
                };
                have.mac = link.mac;
                have.mtu = link.mtu;
                have.up = link.up;
            }
            Op::DeleteLink(name) => self.state.remove_device(name),
            Op::AddAddress(a) => {
                self.require_device(op, &a.device)?;
                self.state.add_address(a.clone());
            }
            Op::DeleteAddress(a) => {
                self.state.addresses.remove(a);
            }
            Op::ReplaceNeighbour(n) => {
                self.require_device(op, &n.device)?;
                self.state.add_neighbour(n.clone());
            }
            Op::DeleteNeighbour(n) => {
                self.state.neighbours.remove(&(n.device.clone(), n.ip));
            }
            Op::ReplaceFdb(e) => {
                self.require_device(op, &e.device)?;
                self.state.add_fdb(e.clone());
            }
            Op::DeleteFdb(e) => {
                self.state.fdb.remove(&(e.device.clone(), e.mac));
            }
            Op::ReplaceRoute(r) => {
                self.require_device(op, &r.device)?;
                self.state.add_route(r.clone());
            }
            Op::DeleteRoute(r) => {
                self.state.routes.remove(&r.dst);
            }
        }
        Ok(())
    }
}

const ENODEV: i32 = 19;

/// What a real kernel would show for `scope`: our links and what hangs off them, plus routes carrying our protocol.
pub fn restrict(state: &KernelState, scope: &Scope) -> KernelState {
    let owned = |device: &str| scope.links.iter().any(|l| l == device);
    let mut out = KernelState::default();
    for link in state.links.values().filter(|l| owned(&l.name)) {
        out.add_link(link.clone());
    }
    for a in state.addresses.iter().filter(|a| owned(&a.device)) {
        out.add_address(a.clone());
    }
    for r in state.routes.values().filter(|r| owned(&r.device) || r.protocol == scope.route_protocol) {
        out.add_route(r.clone());
    }
    for n in state.neighbours.values().filter(|n| owned(&n.device)) {
        out.add_neighbour(n.clone());
    }
    for e in state.fdb.values().filter(|e| owned(&e.device)) {
        out.add_fdb(e.clone());
    }
    out
}

impl Kernel for FakeKernel {
    async fn observe(&mut self, scope: &Scope) -> Result<KernelState, KernelError> {
        Ok(restrict(&self.state, scope))
    }

    async fn apply(&mut self, op: &Op) -> Result<(), KernelError> {
        self.apply_now(op)?;
        self.log.push(op.clone());
        Ok(())
    }
}
