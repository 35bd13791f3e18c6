//! Addresses: what an address message says, and add/delete/dump requests.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{Action, Object};
use crate::request::{decodable, Request};

/// An address on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub index: u32,
    pub addr: IpNetwork,
}

impl Address {
    /// The device's own address with its prefix. IPv4 keeps the local address in IFA_LOCAL (IFA_ADDRESS is the
    /// peer on point-to-point links); IPv6 only sends IFA_ADDRESS.
    pub fn from_message(msg: &AddressMessage) -> Option<Address> {
        let local =
            msg.attributes.iter().find_map(|a| if let AddressAttribute::Local(ip) = a { Some(*ip) } else { None });
        let address =
            || msg.attributes.iter().find_map(|a| if let AddressAttribute::Address(ip) = a { Some(*ip) } else { None });
        let ip = local.or_else(address)?;
        Some(Address { index: msg.header.index, addr: IpNetwork::new(ip, msg.header.prefix_len).ok()? })
    }
}

fn message(index: u32, addr: IpNetwork) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = addr.prefix();
    let ip = addr.ip();
    msg.header.family = family_of(ip);
    msg.attributes.push(AddressAttribute::Address(ip));
    msg.attributes.push(AddressAttribute::Local(ip));
    if let IpNetwork::V4(v4) = addr {
        if v4.prefix() < 31 {
            msg.attributes.push(AddressAttribute::Broadcast(v4.broadcast()));
        }
    }
    msg
}

fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// Whether a new IPv6 address goes through duplicate address detection first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dad {
    Run,
    /// The address is ours by allocation; waiting for DAD would delay the first packets by a second or more.
    Skip,
}

/// Adds `addr` to device `index`; EEXIST when it is there already.
pub fn add(index: u32, addr: IpNetwork, dad: Dad) -> Request {
    let mut msg = message(index, addr);
    if addr.is_ipv6() && dad == Dad::Skip {
        msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    Request::create(Object::Address, RouteNetlinkMessage::NewAddress(msg))
}

/// Removes `addr` from device `index`; EADDRNOTAVAIL when it is not there.
pub fn delete(index: u32, addr: IpNetwork) -> Request {
    Request::plain(Action::Delete, Object::Address, RouteNetlinkMessage::DelAddress(message(index, addr)))
}

/// Every address, or (with strict checking) only those of device `index`.
pub fn dump(index: Option<u32>) -> Request {
    let mut msg = AddressMessage::default();
    msg.header.index = index.unwrap_or(0);
    Request::dump(Object::Address, RouteNetlinkMessage::GetAddress(msg))
}

decodable!(Address, NewAddress, |a| Some(a.index));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_the_local_address() {
        let mut msg = message(3, "10.244.1.0/32".parse().unwrap());
        // A point-to-point peer in IFA_ADDRESS must not be taken for the device's address.
        msg.attributes[0] = AddressAttribute::Address("10.244.9.9".parse().unwrap());
        assert_eq!(Address::from_message(&msg).unwrap().addr, "10.244.1.0/32".parse().unwrap());

        let mut v6 = AddressMessage::default();
        v6.header.index = 3;
        v6.header.prefix_len = 64;
        v6.attributes.push(AddressAttribute::Address("fd00::2".parse().unwrap()));
        assert_eq!(Address::from_message(&v6), Some(Address { index: 3, addr: "fd00::2/64".parse().unwrap() }));
        assert_eq!(Address::from_message(&AddressMessage::default()), None);
    }

    #[test]
    fn golden_bytes_of_an_ipv4_address() {
        let bytes = add(2, "10.244.1.1/24".parse().unwrap(), Dad::Skip).to_bytes(1);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            // nlmsghdr: length 48, RTM_NEWADDR (20), REQUEST|ACK|EXCL|CREATE, seq 1
            48, 0, 0, 0, 20, 0, 5, 6, 1, 0, 0, 0, 0, 0, 0, 0,
            // ifaddrmsg: AF_INET, /24, flags 0, scope 0, index 2
            2, 24, 0, 0, 2, 0, 0, 0,
            // IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST
            8, 0, 1, 0, 10, 244, 1, 1,
            8, 0, 2, 0, 10, 244, 1, 1,
            8, 0, 4, 0, 10, 244, 1, 255,
        ];
        assert_eq!(bytes, want, "no NODAD flag on IPv4");
    }

    #[test]
    fn ipv6_may_skip_dad() {
        let skip = add(2, "fd00::1/64".parse().unwrap(), Dad::Skip);
        let RouteNetlinkMessage::NewAddress(msg) = skip.message().unwrap() else { panic!() };
        assert!(msg.attributes.contains(&AddressAttribute::Flags(AddressFlags::Nodad)));
        let run = add(2, "fd00::1/64".parse().unwrap(), Dad::Run);
        let RouteNetlinkMessage::NewAddress(msg) = run.message().unwrap() else { panic!() };
        assert!(!msg.attributes.iter().any(|a| matches!(a, AddressAttribute::Flags(_))));
    }

    #[test]
    fn filters_by_device() {
        let answer = vec![
            RouteNetlinkMessage::NewAddress(message(2, "10.0.0.1/24".parse().unwrap())),
            RouteNetlinkMessage::NewAddress(message(3, "10.0.1.1/24".parse().unwrap())),
        ];
        let on_3: Vec<Address> = crate::decode_on(&answer, Some(3));
        assert_eq!(on_3, vec![Address { index: 3, addr: "10.0.1.1/24".parse().unwrap() }]);
        assert_eq!(crate::decode_on::<Address>(&answer, None).len(), 2);
    }
}
