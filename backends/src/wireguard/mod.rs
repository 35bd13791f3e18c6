//! The wireguard backend, compatible with flannel's: devices `flannel-wg` (and `flannel-wg-v6` in the `separate`
//! mode), UDP ports 51820 and 51821, the private key in flannel's key file, and `{"PublicKey":..,"Port":..}` as
//! the lease's BackendData (and BackendV6Data), so weft and flanneld hosts peer with each other.
//!
//! Two data paths ([`kernel_device::DataPath`], chosen by weftd at start): the kernel's WireGuard device, created
//! over rtnetlink and configured over generic netlink ([`kernel_device`], [`genl`]), where the kernel has one; and
//! userspace WireGuard ([`plane`], on boringtun's protocol implementation) on a TUN device otherwise. Either way the
//! kernel side is declarative like every backend's (the TUN, its MTU and address, whose connected route sends the
//! cluster network into it), and the peers (public key, endpoint = lease public IP + port, allowed IPs = the
//! peer's subnet) reach the data plane through the forwarding table, so they come and go without restarting it.

pub mod genl;
pub mod kernel_device;
pub mod keys;
pub mod peers;
#[cfg(feature = "runtime")]
pub mod plane;

use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use serde_json::{json, Value};

use crate::backend::{Backend, Desired, SkippedPeer};
use crate::forwarding::ForwardingTable;
use crate::model::{Address, KernelState, Link, LinkKind, MacAddr, Scope};
use crate::trust::RejectReason;
use crate::{BackendError, Family, Peer, PerFamily, Underlay};

use kernel_device::{DataPath, KernelDevice};
use keys::{Key, KeyOrigin};

pub const BACKEND_TYPE: &str = "wireguard";
pub const DEFAULT_PORT: u16 = 51820;
pub const DEFAULT_PORT_V6: u16 = 51821;
pub const DEVICE: &str = "flannel-wg";
pub const DEVICE_V6: &str = "flannel-wg-v6";
/// flannel's figure: outer IPv6 header (40; IPv4 needs 20) + UDP (8) + WireGuard's type, index, counter (16) and
/// tag (16). The same for both families, as flannel computes it.
pub const OVERHEAD: u32 = 80;

/// flannel's `Mode`: one device per family (`separate`), or one device for both families whose peers are reached
/// over IPv4, IPv6, or whichever `auto` thinks likelier to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Separate,
    Auto,
    Ipv4,
    Ipv6,
}

impl Mode {
    fn parse(text: &str) -> Option<Mode> {
        match text {
            "separate" => Some(Mode::Separate),
            "auto" => Some(Mode::Auto),
            "ipv4" => Some(Mode::Ipv4),
            "ipv6" => Some(Mode::Ipv6),
            _ => None,
        }
    }
}

/// The `Backend` object of the network config, for `"Type": "wireguard"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardConfig {
    pub listen_port: u16,
    pub listen_port_v6: u16,
    /// The underlay MTU the tunnel MTU is derived from; None: the underlay interface's.
    pub mtu: Option<u32>,
    pub psk: Option<Key>,
    /// Seconds; 0 is off.
    pub persistent_keepalive: u16,
    pub mode: Mode,
    /// The cluster networks (set by [`WireguardConfig::for_networks`]).
    pub networks: PerFamily<IpNetwork>,
    pub ignored: Vec<String>,
}

impl Default for WireguardConfig {
    fn default() -> Self {
        WireguardConfig {
            listen_port: DEFAULT_PORT,
            listen_port_v6: DEFAULT_PORT_V6,
            mtu: None,
            psk: None,
            persistent_keepalive: 0,
            mode: Mode::Separate,
            networks: PerFamily::default(),
            ignored: Vec::new(),
        }
    }
}

impl WireguardConfig {
    /// Parses the backend object (keys case-insensitive, as Go's decoder matches them).
    pub fn from_json(backend: &Value) -> Result<WireguardConfig, BackendError> {
        let mut cfg = WireguardConfig::default();
        for (key, value) in backend.as_object().into_iter().flatten() {
            let field = |msg: String| BackendError::Config { field: format!("Backend.{key}"), msg };
            let whole = || value.as_u64().ok_or_else(|| field(format!("{value} is not a whole number")));
            let port = || match whole()? {
                p @ 1..=65535 => Ok(p as u16),
                p => Err(field(format!("{p} is not a UDP port"))),
            };
            match key.to_ascii_lowercase().as_str() {
                "type" => {}
                "listenport" => cfg.listen_port = port()?,
                "listenportv6" => cfg.listen_port_v6 = port()?,
                "mtu" => {
                    cfg.mtu = match whole()? {
                        0 => None,
                        m @ 1..=65535 if m > u64::from(OVERHEAD) + 68 => Some(m as u32),
                        m => {
                            return Err(field(format!("{m} leaves no room for the {OVERHEAD}-byte WireGuard overhead")))
                        }
                    }
                }
                "psk" => {
                    let text = value.as_str().ok_or_else(|| field("must be a string".into()))?;
                    if !text.is_empty() {
                        cfg.psk = Some(keys::parse_key("PSK", text).map_err(|e| field(e.to_string()))?);
                    }
                }
                // A Go time.Duration that flannel multiplies by a second: the number is seconds.
                "persistentkeepaliveinterval" => {
                    let secs = whole()?;
                    cfg.persistent_keepalive =
                        u16::try_from(secs).map_err(|_| field(format!("{secs} seconds is more than 65535")))?;
                }
                "mode" => {
                    let text = value.as_str().ok_or_else(|| field("must be a string".into()))?;
                    cfg.mode = Mode::parse(text).ok_or_else(|| {
                        field(format!("{text:?} is no mode: use \"separate\", \"auto\", \"ipv4\" or \"ipv6\""))
                    })?;
                }
                _ => cfg.ignored.push(key.clone()),
            }
        }
        Ok(cfg)
    }

    /// Adds the cluster networks (each family's TUN address takes its network's prefix).
    pub fn for_networks(mut self, networks: &PerFamily<IpNetwork>) -> WireguardConfig {
        self.networks = *networks;
        self
    }
}

/// One WireGuard device: its name, listen port and the families it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDevice {
    pub name: String,
    pub port: u16,
    pub families: Vec<Family>,
}

/// The prepared backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardBackend {
    pub config: WireguardConfig,
    pub underlay: Underlay,
    pub devices: Vec<WgDevice>,
    pub private_key: Key,
    pub public_key: Key,
    pub mtu: u32,
    pub route_protocol: u8,
    notes: Vec<String>,
    /// Userspace until weftd has found that the kernel can create a WireGuard device (or was told to use it).
    pub data_path: DataPath,
}

/// What a peer's lease says for one family: its public key and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseData {
    pub public_key: Key,
    /// None when the lease has no Port (flannel before ports were published): our own port is assumed, as flannel
    /// does.
    pub port: Option<u16>,
}

/// The order flanneld's Go encoder writes BackendData's fields in (its `wireguardLeaseAttrs` declares PublicKey
/// before Port). serde_json's map sorts keys, which would put Port first; the lease writer uses this order instead
/// so our lease is byte-for-byte what a flanneld host writes.
pub const LEASE_DATA_FIELD_ORDER: &[&str] = &["PublicKey", "Port"];

/// Reads a peer's BackendData (or BackendV6Data).
pub fn parse_lease_data(data: Option<&Value>) -> Result<LeaseData, RejectReason> {
    let bad = |detail: String| RejectReason::BadBackendData { detail };
    let data = data.ok_or_else(|| bad("lease has no BackendData".into()))?;
    let get = |name: &str| data.as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    let key = get("PublicKey").and_then(Value::as_str).ok_or_else(|| bad("BackendData has no PublicKey".into()))?;
    let public_key = keys::parse_key("PublicKey", key).map_err(|e| bad(e.to_string()))?;
    let port = match get("Port").map(|p| p.as_u64().filter(|p| *p <= 65535)) {
        None | Some(Some(0)) => None,
        Some(Some(p)) => Some(p as u16),
        Some(None) => return Err(bad(format!("Port {} is not a UDP port", get("Port").unwrap()))),
    };
    Ok(LeaseData { public_key, port })
}

impl WireguardBackend {
    /// Loads (or creates) the private key from flannel's key file and prepares the devices .
    pub fn prepare(
        config: WireguardConfig,
        underlay: Underlay,
        families: &[Family],
        route_protocol: u8,
    ) -> Result<WireguardBackend, BackendError> {
        let path = keys::key_file_path();
        let (private_key, origin) = keys::load_or_create(&path)?;
        let backend = Self::with_key(config, underlay, families, route_protocol, private_key)?;
        let verb = if origin == KeyOrigin::Created { "created" } else { "read" };
        tracing::info!(key_file = %path.display(), public_key = %keys::encode_key(&backend.public_key), "WireGuard private key {verb}");
        Ok(backend)
    }

    /// Prepares the devices with a given private key (pure; `prepare` adds the key file).
    pub fn with_key(
        config: WireguardConfig,
        underlay: Underlay,
        families: &[Family],
        route_protocol: u8,
        private_key: Key,
    ) -> Result<WireguardBackend, BackendError> {
        for family in families {
            if underlay.address(*family).is_none() && config.mode == Mode::Separate {
                return Err(BackendError::NoUnderlayAddress {
                    interface: underlay.name.clone(),
                    family: *family,
                    backend: BACKEND_TYPE,
                });
            }
        }
        let devices = match config.mode {
            Mode::Separate => families
                .iter()
                .map(|f| match f {
                    Family::V4 => WgDevice { name: DEVICE.into(), port: config.listen_port, families: vec![*f] },
                    Family::V6 => WgDevice { name: DEVICE_V6.into(), port: config.listen_port_v6, families: vec![*f] },
                })
                .collect(),
            _ => vec![WgDevice { name: DEVICE.into(), port: config.listen_port, families: families.to_vec() }],
        };
        let mtu = config.mtu.unwrap_or(underlay.mtu).saturating_sub(OVERHEAD);
        let notes = config
            .ignored
            .iter()
            .map(|key| format!("Backend.{key} is not a wireguard option; ignored, as flannel ignores it"))
            .collect();
        let public_key = keys::public_key(&private_key);
        let data_path = DataPath::Userspace;
        Ok(WireguardBackend {
            config,
            underlay,
            devices,
            private_key,
            public_key,
            mtu,
            route_protocol,
            notes,
            data_path,
        })
    }

    /// The kernel path's settings for each device (the peers come from the forwarding table).
    pub fn kernel_devices(&self) -> Vec<KernelDevice> {
        self.devices
            .iter()
            .map(|device| KernelDevice {
                name: device.name.clone(),
                families: device.families.clone(),
                listen_port: device.port,
                private_key: self.private_key,
                psk: self.config.psk,
                persistent_keepalive: self.config.persistent_keepalive,
            })
            .collect()
    }

    /// The device carrying `family`.
    pub fn device_for(&self, family: Family) -> Option<&WgDevice> {
        self.devices.iter().find(|d| d.families.contains(&family))
    }

    /// Where a device's UDP socket binds: the underlay address of the device's first family (the unspecified
    /// address when the underlay has none, for a single device in a mode that may use either family).
    pub fn bind_address(&self, device: &WgDevice) -> SocketAddr {
        let family = device.families.first().copied().unwrap_or(Family::V4);
        let ip = self.underlay.address(family).unwrap_or(match family {
            Family::V4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        });
        SocketAddr::new(ip, device.port)
    }

    /// The TUN's address for `family`: our subnet's base address with the cluster network's prefix.
    pub fn tun_address(&self, own: &Peer, family: Family) -> Option<IpNetwork> {
        let subnet = own.subnet(family)?;
        let network = self.config.networks.get(family)?;
        IpNetwork::new(subnet.network(), network.prefix()).ok()
    }

    /// The endpoint that reaches `peer` for its `family` subnet, as flannel picks it.
    fn endpoint(&self, peer: &Peer, family: Family, data: &PerFamily<LeaseData>) -> Option<SocketAddr> {
        let use_family = match self.config.mode {
            Mode::Separate => family,
            Mode::Ipv4 => Family::V4,
            Mode::Ipv6 => Family::V6,
            Mode::Auto => self.select_family(peer),
        };
        let ip = peer.public_ip(use_family)?;
        let own_port = match use_family {
            Family::V6 if self.config.mode == Mode::Separate => self.config.listen_port_v6,
            _ => self.config.listen_port,
        };
        let port = data.get(use_family).and_then(|d| d.port).unwrap_or(own_port);
        Some(SocketAddr::new(ip, port))
    }

    /// flannel's `auto`: IPv4 when the peer has no IPv6 or a public IPv4 and we have IPv4; IPv6 when both ends
    /// have public IPv6; IPv4 otherwise.
    fn select_family(&self, peer: &Peer) -> Family {
        let Some(v6) = peer.public_ip(Family::V6) else { return Family::V4 };
        let ours_v4 = self.underlay.public_ip(Family::V4);
        if peer.public_ip(Family::V4).is_some_and(|ip| !is_private(ip)) && ours_v4.is_some() {
            return Family::V4;
        }
        if !is_private(v6) && self.underlay.public_ip(Family::V6).is_some_and(|ip| !is_private(ip)) {
            return Family::V6;
        }
        Family::V4
    }
}

/// flannel's `IsPrivate`: RFC 1918 and RFC 4193 ranges.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

impl Backend for WireguardBackend {
    fn backend_type(&self) -> &'static str {
        BACKEND_TYPE
    }

    fn scope(&self) -> Scope {
        Scope {
            links: self.devices.iter().map(|d| d.name.clone()).collect(),
            route_protocol: self.route_protocol,
            ..Scope::default()
        }
    }

    /// The devices with our subnet's addresses, and an empty forwarding table.
    fn base(&self, own: &Peer) -> Desired {
        let mut state = KernelState::default();
        for device in &self.devices {
            state.add_link(Link {
                name: device.name.clone(),
                kind: match self.data_path {
                    DataPath::Kernel => LinkKind::Wireguard,
                    DataPath::Userspace => LinkKind::Tun,
                },
                mac: MacAddr::default(),
                mtu: self.mtu,
                up: true,
            });
            for family in &device.families {
                if let Some(addr) = self.tun_address(own, *family) {
                    state.add_address(Address { device: device.name.as_str().into(), addr });
                }
            }
        }
        Desired { state, forwarding: Some(ForwardingTable::default()), ..Desired::default() }
    }

    /// The peer's keyed forwarding entry per family, or why it cannot have one.
    fn peer(&self, own: &Peer, peer: &Peer) -> Desired {
        let mut part = Desired::default();
        let families: Vec<Family> = self
            .devices
            .iter()
            .flat_map(|d| d.families.iter().copied())
            .filter(|f| peer.subnet(*f).is_some() && peer.subnet(*f) != own.subnet(*f))
            .collect();
        if families.is_empty() {
            return part;
        }
        if peer.backend_type != BACKEND_TYPE {
            for f in &families {
                part.skip_other_backend(peer.subnet(*f).expect("filtered"), peer, BACKEND_TYPE);
            }
            return part;
        }
        let mut skip = |subnet, reason| part.skipped.push(SkippedPeer { subnet, reason });
        let mut forwarding = ForwardingTable::default();
        let data = PerFamily::from_fn(|f| parse_lease_data(peer.backend_data(f)).ok());
        for family in families {
            let subnet = peer.subnet(family).expect("filtered");
            // In the single-device modes flannel takes the key from the last enabled family's data.
            let key_family = if self.config.mode == Mode::Separate { family } else { Family::V6 };
            let lease = match data.get(key_family).or(data.get(family)).or(data.get(Family::V4)) {
                Some(d) => d,
                None => {
                    let reason = parse_lease_data(peer.backend_data(family))
                        .err()
                        .unwrap_or(RejectReason::BadBackendData { detail: "lease has no BackendData".into() });
                    skip(subnet, reason);
                    continue;
                }
            };
            match self.endpoint(peer, family, &data) {
                Some(endpoint) => forwarding.insert_keyed(subnet, endpoint, lease.public_key),
                None => skip(subnet, RejectReason::NoPublicIp { family }),
            }
        }
        if !forwarding.entries.is_empty() {
            part.forwarding = Some(forwarding);
        }
        part
    }

    /// flanneld's `{"PublicKey":"...","Port":N}`, per enabled family.
    fn lease_data(&self, family: Family) -> Option<Value> {
        self.device_for(family)?;
        let port = match family {
            Family::V4 => self.config.listen_port,
            Family::V6 => self.config.listen_port_v6,
        };
        Some(json!({"PublicKey": keys::encode_key(&self.public_key), "Port": port}))
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn notes(&self) -> &[String] {
        &self.notes
    }
}

#[cfg(test)]
mod tests;
