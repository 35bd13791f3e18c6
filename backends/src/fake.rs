//! An in-memory kernel and firewall with the semantics weft relies on, so every reconcile scenario runs without
//! root. Errors match the real ones: the same situation gives the same [`KernelError`] variant and errno.

use std::io;

use crate::diff::Op;
use crate::kernel::{precheck, Kernel, KernelError};
use crate::model::{KernelState, Link, LinkKind, MacAddr, Scope};
use crate::rules::{RuleOp, RuleSet, Rules, RulesError, TableId};

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

    /// What opening /dev/net/tun does: a TUN device appears, down, with the default MTU, for weft to configure.
    pub fn open_tun(&mut self, name: &str) {
        self.state.add_link(Link {
            name: name.into(),
            kind: LinkKind::Tun,
            mac: MacAddr::default(),
            mtu: 1500,
            up: false,
        });
    }

    fn exists(&self, device: &str) -> bool {
        self.state.links.contains_key(device) || self.host_devices.iter().any(|d| d == device)
    }

    fn require_device(&self, op: &Op, device: &str) -> Result<(), KernelError> {
        if self.exists(device) {
            Ok(())
        } else {
            Err(KernelError::no_such_device(op, device))
        }
    }

    fn update_link(&mut self, op: &Op, link: &Link) -> Result<(), KernelError> {
        let Some(have) = self.state.links.get_mut(&link.name) else {
            return Err(KernelError::no_such_device(op, &link.name));
        };
        if link.kind.has_mac() {
            have.mac = link.mac;
        }
        have.mtu = link.mtu;
        have.up = link.up;
        Ok(())
    }

    fn apply_now(&mut self, op: &Op) -> Result<(), KernelError> {
        precheck(op)?;
        match op {
            // Only the data plane can create a TUN device; weft configures the one it finds.
            Op::CreateLink(link) if link.kind == LinkKind::Tun => {
                if !self.state.links.contains_key(&link.name) {
                    return Err(KernelError::TunNotOpened { op: op.to_string(), device: link.name.clone() });
                }
                self.update_link(op, link)?;
            }
            Op::CreateLink(link) => {
                if self.exists(&link.name) {
                    return Err(KernelError::apply(op, io::Error::from_raw_os_error(libc::EEXIST)));
                }
                self.state.add_link(link.clone());
            }
            Op::UpdateLink(link) => self.update_link(op, link)?,
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
                if let Some(device) = &r.device {
                    self.require_device(op, device)?;
                    // The kernel refuses a next hop on a device that is down.
                    if self.state.links.get(device.as_str()).is_some_and(|l| !l.up) {
                        return Err(KernelError::apply(op, io::Error::from_raw_os_error(libc::ENETDOWN)));
                    }
                }
                self.state.add_route(r.clone());
            }
            Op::DeleteRoute(r) => {
                // Like the kernel's, a delete naming a metric leaves a route to the prefix at another metric alone
                // (the fake holds one route per prefix: a replacement at a new metric took the old one's place).
                if self.state.routes.get(&r.dst).is_some_and(|have| have.metric == r.metric) {
                    self.state.routes.remove(&r.dst);
                }
            }
        }
        Ok(())
    }
}

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
    for name in &scope.referenced {
        out.add_link(Link::unowned(name.clone()));
    }
    for r in
        state.routes.values().filter(|r| scope.owns_route(r.protocol, r.device.as_deref().is_some_and(owned), r.dst))
    {
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
        let mut observed = restrict(&self.state, scope);
        // A referenced device is observed only when it exists.
        observed.links.retain(|name, link| link.is_owned() || self.exists(name));
        Ok(observed)
    }

    async fn apply(&mut self, op: &Op) -> Result<(), KernelError> {
        self.apply_now(op)?;
        self.log.push(op.clone());
        Ok(())
    }
}

/// An in-memory firewall: tables by identity, replaced and deleted whole, as nft does in one transaction.
#[derive(Debug, Default, Clone)]
pub struct FakeRules {
    pub tables: RuleSet,
    /// Base chains of other tables, as [`Rules::observe_foreign`] reports them.
    pub foreign: Vec<crate::rules::foreign::ForeignChain>,
    /// Every operation applied, in order.
    pub log: Vec<RuleOp>,
}

impl Rules for FakeRules {
    async fn observe(&mut self, tables: &[TableId]) -> Result<RuleSet, RulesError> {
        let mut out = RuleSet::default();
        for table in self.tables.tables.values().filter(|t| tables.contains(&t.id)) {
            out.add(table.clone());
        }
        Ok(out)
    }

    async fn apply(&mut self, op: &RuleOp) -> Result<(), RulesError> {
        match op {
            RuleOp::ReplaceTable(table) => {
                // nft refuses the whole script, leaving the old table, when the new one is invalid.
                table.check()?;
                self.tables.add(table.clone());
            }
            RuleOp::DeleteTable(id) => {
                self.tables.tables.remove(id);
            }
            RuleOp::RewriteForeign(r) => {
                if let Some(chain) = self.foreign.iter_mut().find(|c| c.table == r.table && c.chain == r.chain) {
                    chain.rules.retain(|(handle, _)| !r.delete.contains(handle));
                    let next = chain.rules.iter().map(|(h, _)| *h).max().unwrap_or(0) + 1;
                    let inserted = r.insert.iter().cloned().enumerate().map(|(i, rule)| (next + i as u64, rule));
                    chain.rules.splice(0..0, inserted);
                }
            }
        }
        self.log.push(op.clone());
        Ok(())
    }

    async fn observe_foreign(
        &mut self,
        hook: crate::rules::Hook,
        owned: &[TableId],
    ) -> Result<Vec<crate::rules::foreign::ForeignChain>, RulesError> {
        Ok(self.foreign.iter().filter(|c| c.hook == hook && !owned.contains(&c.table)).cloned().collect())
    }
}
