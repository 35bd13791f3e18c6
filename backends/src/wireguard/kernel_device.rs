//! The kernel data path: a WireGuard device created over rtnetlink (the reconcile loop's `LinkKind::Wireguard`)
//! and configured over WireGuard's generic-netlink family ([`super::genl`]).
//!
//! Peers follow the forwarding table like the userspace plane's: the first write after start names the whole
//! set with REPLACE_PEERS (dropping whatever an earlier run or an operator left), every later write is a diff
//! (changed or new peers with REPLACE_ALLOWEDIPS, gone ones with REMOVE_ME). A diff and not the whole set each
//! time because REPLACE_PEERS removes every peer before adding them back, which would drop every peer's session
//! (and its traffic until a new handshake) on any lease change anywhere in the cluster.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};
use weft_netlink::blocking::Socket as RouteSocket;
use weft_netlink::link::{self, LinkRef};

use super::genl::{self, Answer, DeviceUpdate, GenlError, PeerUpdate};
use super::keys::Key;
use super::peers::{peers_from_table, PeerSpec};
use crate::forwarding::ForwardingTable;
use crate::Family;

/// The environment variable that forces a data path: `auto` (the default), `kernel` or `userspace`.
pub const PATH_ENV: &str = "WEFT_WIREGUARD_PATH";

/// Which WireGuard implementation carries the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataPath {
    /// The kernel's WireGuard device, configured over generic netlink.
    Kernel,
    /// A TUN device and boringtun's protocol in weftd ([`super::plane`]).
    #[default]
    Userspace,
}

impl DataPath {
    /// The name `WEFT_WIREGUARD_PATH`, the log and /metrics use.
    pub fn name(self) -> &'static str {
        match self {
            DataPath::Kernel => "kernel",
            DataPath::Userspace => "userspace",
        }
    }
}

impl fmt::Display for DataPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathChoice {
    /// The kernel's device where the kernel can create one, userspace otherwise.
    Auto,
    Forced(DataPath),
}

impl PathChoice {
    /// Reads [`PATH_ENV`]; unset or empty is `auto`.
    pub fn from_env() -> Result<PathChoice, KernelPathError> {
        PathChoice::parse(&std::env::var(PATH_ENV).unwrap_or_default())
    }

    pub fn parse(text: &str) -> Result<PathChoice, KernelPathError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(PathChoice::Auto),
            "kernel" => Ok(PathChoice::Forced(DataPath::Kernel)),
            "userspace" => Ok(PathChoice::Forced(DataPath::Userspace)),
            _ => Err(KernelPathError::BadChoice { value: text.to_string() }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelPathError {
    #[error("{PATH_ENV}={value:?} is none of auto, kernel, userspace")]
    BadChoice { value: String },
    #[error("generic netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("resolving the \"wireguard\" generic netlink family (is the kernel's wireguard module there?): {0}")]
    Family(#[source] GenlError),
    #[error("configuring WireGuard device {device} over generic netlink: {source}")]
    SetDevice {
        device: String,
        #[source]
        source: GenlError,
    },
}

/// One kernel device's fixed settings; the peers come from the forwarding table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelDevice {
    pub name: String,
    /// The families whose peers it carries (both in the single-device modes).
    pub families: Vec<Family>,
    pub listen_port: u16,
    pub private_key: Key,
    pub psk: Option<Key>,
    pub persistent_keepalive: u16,
}

impl KernelDevice {
    /// The peers `table` wants on this device.
    pub fn wanted(&self, table: &ForwardingTable) -> BTreeMap<Key, PeerSpec> {
        peers_from_table(table, &self.families)
    }

    /// The write that takes the device from `previous` (None: unknown, so the whole set with REPLACE_PEERS) to
    /// `wanted`; None when nothing changed. Pure.
    pub fn update(
        &self,
        previous: Option<&BTreeMap<Key, PeerSpec>>,
        wanted: &BTreeMap<Key, PeerSpec>,
    ) -> Option<DeviceUpdate> {
        let set = |key: &Key, spec: &PeerSpec| PeerUpdate::Set {
            public_key: *key,
            preshared_key: self.psk,
            endpoint: spec.endpoint,
            persistent_keepalive: self.persistent_keepalive,
            allowed_ips: spec.allowed.clone(),
        };
        let peers: Vec<PeerUpdate> = match previous {
            None => wanted.iter().map(|(key, spec)| set(key, spec)).collect(),
            Some(previous) => {
                let removed = previous
                    .keys()
                    .filter(|key| !wanted.contains_key(*key))
                    .map(|key| PeerUpdate::Remove { public_key: *key });
                let changed =
                    wanted.iter().filter(|(key, spec)| previous.get(*key) != Some(spec)).map(|(k, s)| set(k, s));
                removed.chain(changed).collect()
            }
        };
        if previous.is_some() && peers.is_empty() {
            return None;
        }
        Some(DeviceUpdate {
            ifname: self.name.clone(),
            private_key: self.private_key,
            listen_port: self.listen_port,
            replace_peers: previous.is_none(),
            peers,
        })
    }
}

/// A generic netlink socket that knows the "wireguard" family's id.
pub struct GenlSocket {
    socket: Socket,
    family_id: u16,
    sequence: u32,
    buffer: Vec<u8>,
}

impl GenlSocket {
    /// Opens the socket in the calling thread's netns and resolves the family; an error here means the kernel
    /// has no WireGuard (ENOENT) or the socket could not be opened.
    pub fn open() -> Result<GenlSocket, KernelPathError> {
        let mut socket = Socket::new(NETLINK_GENERIC).map_err(KernelPathError::Socket)?;
        socket.bind_auto().map_err(KernelPathError::Socket)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(KernelPathError::Socket)?;
        let mut genl = GenlSocket { socket, family_id: 0, sequence: 0, buffer: vec![0; 64 * 1024] };
        let sequence = genl.next_sequence();
        genl.send(&genl::get_family(sequence)).map_err(KernelPathError::Socket)?;
        loop {
            let answers = genl.receive().map_err(KernelPathError::Socket)?.map_err(KernelPathError::Family)?;
            for answer in answers {
                if let Answer::Genl { sequence: s, attributes } = answer {
                    if s == sequence {
                        genl.family_id = genl::family_id(&attributes).map_err(KernelPathError::Family)?;
                        return Ok(genl);
                    }
                }
            }
        }
    }

    /// Writes `update` and waits for the kernel's acknowledgement of each of its messages.
    pub fn write(&mut self, update: &DeviceUpdate) -> Result<(), KernelPathError> {
        let failed = |source| KernelPathError::SetDevice { device: update.ifname.clone(), source };
        let first = self.sequence.wrapping_add(1);
        let messages = genl::set_device(self.family_id, first, update);
        self.sequence = first.wrapping_add(messages.len() as u32 - 1);
        for message in &messages {
            self.send(message).map_err(KernelPathError::Socket)?;
            let mut acknowledged = false;
            while !acknowledged {
                let answers = self.receive().map_err(KernelPathError::Socket)?.map_err(failed)?;
                acknowledged = answers.iter().any(|a| matches!(a, Answer::Ack { .. }));
            }
        }
        Ok(())
    }

    fn next_sequence(&mut self) -> u32 {
        self.sequence = self.sequence.wrapping_add(1);
        self.sequence
    }

    fn send(&self, message: &[u8]) -> io::Result<()> {
        self.socket.send(message, 0).map(|_| ())
    }

    /// One datagram's answers; the outer error is the socket's, the inner the kernel's.
    fn receive(&mut self) -> io::Result<Result<Vec<Answer>, GenlError>> {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        let received = self.socket.recv(&mut buffer, 0);
        let result = received.map(|_| genl::read_answers(&buffer));
        self.buffer = buffer;
        result
    }
}

/// A device name no one else uses, created and deleted at once to learn whether the kernel makes WireGuard
/// devices (rtnetlink answers EOPNOTSUPP for a kind it has no module for).
pub const PROBE_DEVICE: &str = "weft-wgprobe";

/// What the probe found: the kernel created a WireGuard device, or refused with this error.
#[derive(Debug)]
pub enum KernelSupport {
    Present,
    Refused(weft_netlink::Error),
}

/// The data path in use and why.
#[derive(Debug)]
pub struct PathDecision {
    pub path: DataPath,
    pub choice: PathChoice,
    pub support: Option<KernelSupport>,
}

impl std::fmt::Display for PathDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.choice, &self.support) {
            (PathChoice::Forced(path), _) => write!(f, "{path} (forced by {PATH_ENV})"),
            (PathChoice::Auto, Some(KernelSupport::Refused(e))) => {
                write!(f, "userspace (the kernel cannot create a WireGuard device: {e})")
            }
            (PathChoice::Auto, _) => write!(f, "{} (the kernel creates WireGuard devices)", self.path),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WgPathError {
    #[error(transparent)]
    Choice(#[from] KernelPathError),
    #[error("{PATH_ENV}=kernel, but this kernel cannot create a WireGuard device (no wireguard module?): {0}")]
    KernelMissing(#[source] weft_netlink::Error),
    #[error("probing for the kernel's WireGuard: {0}")]
    Probe(#[source] weft_netlink::Error),
    #[error("starting the kernel WireGuard peer writer: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Creates and deletes [`PROBE_DEVICE`] through `socket`. The outer error is a failure of the probe itself (the
/// socket, or a leftover probe device that cannot be removed); a refused creation is [`KernelSupport::Refused`].
pub fn probe_kernel(socket: &mut RouteSocket) -> Result<KernelSupport, weft_netlink::Error> {
    let create = |socket: &mut RouteSocket| socket.request(link::create_wireguard(PROBE_DEVICE, None, false));
    let mut created = create(socket);
    if matches!(&created, Err(e) if e.is_exists()) {
        // A probe device left by a weftd that died between the two requests: remove it and ask again.
        socket.request(link::delete(LinkRef::Name(PROBE_DEVICE)))?;
        created = create(socket);
    }
    match created {
        Ok(_) => {
            socket.request(link::delete(LinkRef::Name(PROBE_DEVICE)))?;
            Ok(KernelSupport::Present)
        }
        Err(e) => Ok(KernelSupport::Refused(e)),
    }
}

/// [`choose`] through a socket in the calling thread's netns.
pub fn choose_here(choice: PathChoice) -> Result<PathDecision, WgPathError> {
    let mut socket = RouteSocket::open().map_err(WgPathError::Probe)?;
    choose(choice, &mut socket)
}

/// [`choose`] through a socket in the network namespace behind `netns`.
pub fn choose_in(choice: PathChoice, netns: &std::fs::File) -> Result<PathDecision, WgPathError> {
    let mut socket = RouteSocket::open_in(netns).map_err(WgPathError::Probe)?;
    choose(choice, &mut socket)
}

/// Picks the data path for `choice`, probing the kernel through `socket` unless userspace is forced.
pub fn choose(choice: PathChoice, socket: &mut RouteSocket) -> Result<PathDecision, WgPathError> {
    if choice == PathChoice::Forced(DataPath::Userspace) {
        return Ok(PathDecision { path: DataPath::Userspace, choice, support: None });
    }
    let support = probe_kernel(socket).map_err(WgPathError::Probe)?;
    let path = match (support, choice) {
        (KernelSupport::Present, _) => DataPath::Kernel,
        (KernelSupport::Refused(e), PathChoice::Forced(_)) => return Err(WgPathError::KernelMissing(e)),
        (refused @ KernelSupport::Refused(_), PathChoice::Auto) => {
            return Ok(PathDecision { path: DataPath::Userspace, choice, support: Some(refused) })
        }
    };
    let support = KernelSupport::Present;
    Ok(PathDecision { path, choice, support: Some(support) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> KernelDevice {
        KernelDevice {
            name: "flannel-wg".into(),
            families: vec![Family::V4],
            listen_port: 51820,
            private_key: [1; 32],
            psk: None,
            persistent_keepalive: 0,
        }
    }

    fn peers(entries: &[(u8, &str, &[&str])]) -> BTreeMap<Key, PeerSpec> {
        entries
            .iter()
            .map(|(key, endpoint, allowed)| {
                let spec = PeerSpec {
                    endpoint: endpoint.parse().unwrap(),
                    allowed: allowed.iter().map(|a| a.parse().unwrap()).collect(),
                };
                ([*key; 32], spec)
            })
            .collect()
    }

    #[test]
    fn the_first_write_is_the_whole_set_then_only_differences() {
        let first = peers(&[(2, "198.18.0.2:51820", &["10.244.2.0/24"]), (3, "198.18.0.3:51820", &["10.244.3.0/24"])]);
        let update = device().update(None, &first).unwrap();
        assert!(update.replace_peers);
        assert_eq!(update.peers.len(), 2);

        // Same set: nothing to write.
        assert_eq!(device().update(Some(&first), &first), None);

        // Peer 2 moved, 3 left, 4 joined: 3 removed, 2 and 4 set; nothing replaced wholesale.
        let second =
            peers(&[(2, "198.18.0.12:51820", &["10.244.2.0/24"]), (4, "198.18.0.4:51820", &["10.244.4.0/24"])]);
        let update = device().update(Some(&first), &second).unwrap();
        assert!(!update.replace_peers);
        let keys: Vec<(u8, bool)> = update
            .peers
            .iter()
            .map(|p| match p {
                PeerUpdate::Remove { public_key } => (public_key[0], false),
                PeerUpdate::Set { public_key, .. } => (public_key[0], true),
            })
            .collect();
        assert_eq!(keys, vec![(3, false), (2, true), (4, true)]);

        // An empty cluster still writes the device's key and port once.
        let empty = device().update(None, &BTreeMap::new()).unwrap();
        assert!(empty.replace_peers && empty.peers.is_empty());
    }

    #[test]
    fn the_path_choice_reads_the_environment_value() {
        assert_eq!(PathChoice::parse("").unwrap(), PathChoice::Auto);
        assert_eq!(PathChoice::parse("Kernel").unwrap(), PathChoice::Forced(DataPath::Kernel));
        assert_eq!(PathChoice::parse("userspace").unwrap(), PathChoice::Forced(DataPath::Userspace));
        let err = PathChoice::parse("fast").unwrap_err().to_string();
        assert_eq!(err, "WEFT_WIREGUARD_PATH=\"fast\" is none of auto, kernel, userspace");
    }
}
