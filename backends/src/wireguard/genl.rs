//! The kernel WireGuard device's generic-netlink messages, encoded and decoded by hand (pure; no socket here):
//! resolving the "wireguard" family's id (`CTRL_CMD_GETFAMILY`) and `WG_CMD_SET_DEVICE` with key, port, fwmark,
//! flags and peers. The numbers are the kernel's uapi (`include/uapi/linux/wireguard.h`, `linux/genetlink.h`);
//! the layout is netlink's: a 16-byte message header, genl's 4-byte header, then attributes as TLVs (u16 length
//! of header plus payload, u16 type, payload padded to 4 bytes), nested attributes flagged `NLA_F_NESTED` as
//! libmnl and the `wg` tool send them. Integers are in host byte order except the port inside a sockaddr.

use std::net::SocketAddr;

use ipnetwork::IpNetwork;

use super::keys::Key;

pub const FAMILY_NAME: &str = "wireguard";

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HEADER: usize = 16;
const GENL_HEADER: usize = 4;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_VERSION: u8 = 1;

const WG_GENL_VERSION: u8 = 1;
const WG_CMD_SET_DEVICE: u8 = 1;
const WGDEVICE_F_REPLACE_PEERS: u32 = 1 << 0;
const WGDEVICE_A_IFNAME: u16 = 2;
const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
const WGDEVICE_A_FLAGS: u16 = 5;
const WGDEVICE_A_LISTEN_PORT: u16 = 6;
const WGDEVICE_A_FWMARK: u16 = 7;
const WGDEVICE_A_PEERS: u16 = 8;
const WGPEER_F_REMOVE_ME: u32 = 1 << 0;
const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 1 << 1;
const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_PRESHARED_KEY: u16 = 2;
const WGPEER_A_FLAGS: u16 = 3;
const WGPEER_A_ENDPOINT: u16 = 4;
const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
const WGPEER_A_ALLOWEDIPS: u16 = 9;
const WGALLOWEDIP_A_FAMILY: u16 = 1;
const WGALLOWEDIP_A_IPADDR: u16 = 2;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;

/// Peers per `WG_CMD_SET_DEVICE` message: a message must fit the kernel's receive buffer for one datagram, and a
/// peer with a few allowed IPs takes under 200 bytes, so 32 keep a message near 6 KiB. The `wg` tool splits the
/// same way (the first message carries the device's settings, the rest only append peers).
pub const PEERS_PER_MESSAGE: usize = 32;

/// One peer as `WG_CMD_SET_DEVICE` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerUpdate {
    /// Add the peer, or update it keeping its session; its allowed IPs become exactly `allowed_ips`.
    Set {
        public_key: Key,
        preshared_key: Option<Key>,
        endpoint: SocketAddr,
        /// Seconds; 0 is off (written, so a changed setting turns it off).
        persistent_keepalive: u16,
        allowed_ips: Vec<IpNetwork>,
    },
    /// Remove the peer (WGPEER_F_REMOVE_ME).
    Remove { public_key: Key },
}

/// A whole `WG_CMD_SET_DEVICE` request for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceUpdate {
    pub ifname: String,
    pub private_key: Key,
    pub listen_port: u16,
    /// WGDEVICE_F_REPLACE_PEERS: the peers listed are the device's whole set, every other one is dropped.
    pub replace_peers: bool,
    pub peers: Vec<PeerUpdate>,
}

/// Why a kernel answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenlError {
    #[error("the kernel refused the generic netlink request: {}", std::io::Error::from_raw_os_error(*.errno))]
    Kernel { errno: i32 },
    #[error("malformed generic netlink answer: {detail}")]
    Malformed { detail: &'static str },
    #[error("the generic netlink answer has no CTRL_ATTR_FAMILY_ID")]
    NoFamilyId,
}

/// Builds one netlink message: header, genl header, attributes; the length is filled in by [`Message::finish`].
struct Message {
    bytes: Vec<u8>,
}

impl Message {
    fn new(message_type: u16, flags: u16, sequence: u32, command: u8, version: u8) -> Message {
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        bytes.extend_from_slice(&message_type.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&sequence.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        bytes.extend_from_slice(&[command, version, 0, 0]);
        Message { bytes }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let length = u16::try_from(4 + payload.len()).expect("attribute payloads here are small");
        self.bytes.extend_from_slice(&length.to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(payload);
        self.pad();
    }

    fn pad(&mut self) {
        while self.bytes.len() % 4 != 0 {
            self.bytes.push(0);
        }
    }

    /// Opens a nested attribute; returns where its header is, for [`Message::end_nest`].
    fn begin_nest(&mut self, kind: u16) -> usize {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&0u16.to_ne_bytes());
        self.bytes.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        start
    }

    fn end_nest(&mut self, start: usize) {
        let length = u16::try_from(self.bytes.len() - start).expect("a nest stays under 64 KiB");
        self.bytes[start..start + 2].copy_from_slice(&length.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let length = u32::try_from(self.bytes.len()).expect("messages here are small");
        self.bytes[..4].copy_from_slice(&length.to_ne_bytes());
        self.bytes
    }
}

/// `CTRL_CMD_GETFAMILY` for "wireguard": the answer names the family id `WG_CMD_SET_DEVICE` is sent to.
pub fn get_family(sequence: u32) -> Vec<u8> {
    let mut message = Message::new(GENL_ID_CTRL, NLM_F_REQUEST, sequence, CTRL_CMD_GETFAMILY, CTRL_VERSION);
    let mut name = FAMILY_NAME.as_bytes().to_vec();
    name.push(0);
    message.attr(CTRL_ATTR_FAMILY_NAME, &name);
    message.finish()
}

/// The `WG_CMD_SET_DEVICE` messages for `update`, [`PEERS_PER_MESSAGE`] peers each, numbered from `sequence`.
/// The first carries the device's key, port, fwmark 0 and flags; the others only name the device and add peers
/// (REPLACE_PEERS on a later message would drop the peers of the earlier ones). Each asks for an acknowledgement.
pub fn set_device(family_id: u16, sequence: u32, update: &DeviceUpdate) -> Vec<Vec<u8>> {
    let mut name = update.ifname.as_bytes().to_vec();
    name.push(0);
    let chunks: Vec<&[PeerUpdate]> =
        if update.peers.is_empty() { vec![&[]] } else { update.peers.chunks(PEERS_PER_MESSAGE).collect() };
    chunks
        .iter()
        .enumerate()
        .map(|(index, peers)| {
            let seq = sequence.wrapping_add(index as u32);
            let mut message =
                Message::new(family_id, NLM_F_REQUEST | NLM_F_ACK, seq, WG_CMD_SET_DEVICE, WG_GENL_VERSION);
            message.attr(WGDEVICE_A_IFNAME, &name);
            if index == 0 {
                message.attr(WGDEVICE_A_PRIVATE_KEY, &update.private_key);
                message.attr(WGDEVICE_A_LISTEN_PORT, &update.listen_port.to_ne_bytes());
                message.attr(WGDEVICE_A_FWMARK, &0u32.to_ne_bytes());
                let flags = if update.replace_peers { WGDEVICE_F_REPLACE_PEERS } else { 0 };
                message.attr(WGDEVICE_A_FLAGS, &flags.to_ne_bytes());
            }
            if !peers.is_empty() {
                let nest = message.begin_nest(WGDEVICE_A_PEERS);
                for peer in *peers {
                    write_peer(&mut message, peer);
                }
                message.end_nest(nest);
            }
            message.finish()
        })
        .collect()
}

fn write_peer(message: &mut Message, peer: &PeerUpdate) {
    // The kernel reads the peer list as an array: each element's own type is unused, 0 as the wg tool sends it.
    let nest = message.begin_nest(0);
    match peer {
        PeerUpdate::Remove { public_key } => {
            message.attr(WGPEER_A_PUBLIC_KEY, public_key);
            message.attr(WGPEER_A_FLAGS, &WGPEER_F_REMOVE_ME.to_ne_bytes());
        }
        PeerUpdate::Set { public_key, preshared_key, endpoint, persistent_keepalive, allowed_ips } => {
            message.attr(WGPEER_A_PUBLIC_KEY, public_key);
            if let Some(psk) = preshared_key {
                message.attr(WGPEER_A_PRESHARED_KEY, psk);
            }
            message.attr(WGPEER_A_FLAGS, &WGPEER_F_REPLACE_ALLOWEDIPS.to_ne_bytes());
            message.attr(WGPEER_A_ENDPOINT, &sockaddr(endpoint));
            message.attr(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, &persistent_keepalive.to_ne_bytes());
            let ips = message.begin_nest(WGPEER_A_ALLOWEDIPS);
            for network in allowed_ips {
                let entry = message.begin_nest(0);
                let (family, address) = match network {
                    IpNetwork::V4(n) => (libc::AF_INET as u16, n.network().octets().to_vec()),
                    IpNetwork::V6(n) => (libc::AF_INET6 as u16, n.network().octets().to_vec()),
                };
                message.attr(WGALLOWEDIP_A_FAMILY, &family.to_ne_bytes());
                message.attr(WGALLOWEDIP_A_IPADDR, &address);
                message.attr(WGALLOWEDIP_A_CIDR_MASK, &[network.prefix()]);
                message.end_nest(entry);
            }
            message.end_nest(ips);
        }
    }
    message.end_nest(nest);
}

/// `struct sockaddr_in` (16 bytes) or `struct sockaddr_in6` (28 bytes): family in host order, port in network
/// order, the rest zero (flow info, scope id).
fn sockaddr(endpoint: &SocketAddr) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(28);
    match endpoint {
        SocketAddr::V4(a) => {
            bytes.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            bytes.extend_from_slice(&a.port().to_be_bytes());
            bytes.extend_from_slice(&a.ip().octets());
            bytes.extend_from_slice(&[0; 8]);
        }
        SocketAddr::V6(a) => {
            bytes.extend_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            bytes.extend_from_slice(&a.port().to_be_bytes());
            bytes.extend_from_slice(&a.flowinfo().to_ne_bytes());
            bytes.extend_from_slice(&a.ip().octets());
            bytes.extend_from_slice(&a.scope_id().to_ne_bytes());
        }
    }
    bytes
}

/// What one answer datagram says: each message in it is an error/acknowledgement or a genl message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// NLMSG_ERROR with 0: the request with this sequence number succeeded.
    Ack { sequence: u32 },
    /// A genl message (the family description, for GETFAMILY) with its attributes after the genl header.
    Genl { sequence: u32, attributes: Vec<u8> },
}

/// Splits a datagram into its messages; a kernel error (NLMSG_ERROR with a negative code) is an `Err`.
pub fn read_answers(datagram: &[u8]) -> Result<Vec<Answer>, GenlError> {
    let mut answers = Vec::new();
    let mut rest = datagram;
    while rest.len() >= NLMSG_HEADER {
        let length = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if length < NLMSG_HEADER || length > rest.len() {
            return Err(GenlError::Malformed { detail: "message length outside the datagram" });
        }
        let message_type = u16::from_ne_bytes([rest[4], rest[5]]);
        let sequence = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
        let body = &rest[NLMSG_HEADER..length];
        if message_type == NLMSG_ERROR {
            let code = body.get(..4).ok_or(GenlError::Malformed { detail: "short error message" })?;
            let code = i32::from_ne_bytes(code.try_into().expect("4 bytes"));
            if code != 0 {
                return Err(GenlError::Kernel { errno: -code });
            }
            answers.push(Answer::Ack { sequence });
        } else {
            let attributes = body.get(GENL_HEADER..).ok_or(GenlError::Malformed { detail: "short genl message" })?;
            answers.push(Answer::Genl { sequence, attributes: attributes.to_vec() });
        }
        rest = &rest[length.next_multiple_of(4).min(rest.len())..];
    }
    Ok(answers)
}

/// The family id in a `CTRL_CMD_NEWFAMILY` answer's attributes.
pub fn family_id(attributes: &[u8]) -> Result<u16, GenlError> {
    let mut rest = attributes;
    while rest.len() >= 4 {
        let length = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if length < 4 || length > rest.len() {
            return Err(GenlError::Malformed { detail: "attribute length outside the message" });
        }
        if kind == CTRL_ATTR_FAMILY_ID {
            let id = rest.get(4..6).ok_or(GenlError::Malformed { detail: "short CTRL_ATTR_FAMILY_ID" })?;
            return Ok(u16::from_ne_bytes([id[0], id[1]]));
        }
        rest = &rest[length.next_multiple_of(4).min(rest.len())..];
    }
    Err(GenlError::NoFamilyId)
}

#[cfg(test)]
mod tests;
