//! Golden bytes derived by hand from the uapi numbers, not from the encoder. Netlink integers are host order; the
//! bytes below are little-endian (x86_64, aarch64), so the byte tests run there only. Layout reminders:
//! nlmsghdr = len u32, type u16, flags u16, seq u32, pid u32 (16 bytes); genlmsghdr = cmd u8, version u8,
//! reserved u16; attribute = len u16 (4 + payload, unpadded), type u16, payload padded to 4; a nest's len
//! covers its header and everything inside; nested types carry NLA_F_NESTED (0x8000).

use super::*;

fn hex(text: &str) -> Vec<u8> {
    let digits: String = text.split_whitespace().collect();
    (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap()).collect()
}

fn key_hex(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}

#[cfg(target_endian = "little")]
#[test]
fn get_family_golden_bytes() {
    let expected = hex(concat!(
        // nlmsghdr: len 36 = 16 + 4 + 16, type GENL_ID_CTRL 0x10, flags NLM_F_REQUEST 1, seq 1, pid 0
        "24000000 1000 0100 01000000 00000000",
        // genlmsghdr: CTRL_CMD_GETFAMILY 3, version 1
        "03 01 0000",
        // CTRL_ATTR_FAMILY_NAME (2): "wireguard\0" is 10 bytes, len 14, padded with 2 zero bytes to 16
        "0e00 0200 77697265677561726400 0000",
    ));
    assert_eq!(get_family(1), expected);
}

#[cfg(target_endian = "little")]
#[test]
fn set_device_golden_bytes_ipv4_peer_and_removed_peer() {
    let update = DeviceUpdate {
        ifname: "wg0".into(),
        private_key: [0x01; 32],
        listen_port: 51820,
        replace_peers: true,
        peers: vec![
            PeerUpdate::Set {
                public_key: [0x02; 32],
                preshared_key: Some([0x03; 32]),
                endpoint: "198.18.0.2:51820".parse().unwrap(),
                persistent_keepalive: 25,
                allowed_ips: vec!["10.244.2.0/24".parse().unwrap()],
            },
            PeerUpdate::Remove { public_key: [0x04; 32] },
        ],
    };
    let expected = hex(&[
        // nlmsghdr: len 284 (0x11c) = 16 + 4 + 264 of attributes; type = the family id 0x15;
        // flags NLM_F_REQUEST|NLM_F_ACK = 5; seq 2; pid 0
        "1c010000 1500 0500 02000000 00000000",
        // genlmsghdr: WG_CMD_SET_DEVICE 1, WG_GENL_VERSION 1
        "01 01 0000",
        // WGDEVICE_A_IFNAME (2): "wg0\0", len 8
        "0800 0200 77673000",
        // WGDEVICE_A_PRIVATE_KEY (3): 32 bytes, len 36
        "2400 0300",
        &key_hex(0x01),
        // WGDEVICE_A_LISTEN_PORT (6): u16 51820 = 0xca6c, len 6, 2 bytes padding
        "0600 0600 6cca 0000",
        // WGDEVICE_A_FWMARK (7): u32 0
        "0800 0700 00000000",
        // WGDEVICE_A_FLAGS (5): WGDEVICE_F_REPLACE_PEERS 1
        "0800 0500 01000000",
        // WGDEVICE_A_PEERS (8 | NLA_F_NESTED = 0x8008): len 196 = 4 + 144 + 48
        "c400 0880",
        //   peer (0 | NLA_F_NESTED): len 144 = 4 + 36 + 36 + 8 + 20 + 8 + 32
        "9000 0080",
        //     WGPEER_A_PUBLIC_KEY (1), len 36
        "2400 0100",
        &key_hex(0x02),
        //     WGPEER_A_PRESHARED_KEY (2), len 36
        "2400 0200",
        &key_hex(0x03),
        //     WGPEER_A_FLAGS (3): WGPEER_F_REPLACE_ALLOWEDIPS 2
        "0800 0300 02000000",
        //     WGPEER_A_ENDPOINT (4): sockaddr_in, 16 bytes, len 20: AF_INET 2, port 51820 big-endian ca6c,
        //     198.18.0.2, 8 zero bytes
        "1400 0400 0200 ca6c c6120002 0000000000000000",
        //     WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL (5): u16 25, len 6, 2 bytes padding
        "0600 0500 1900 0000",
        //     WGPEER_A_ALLOWEDIPS (9 | NLA_F_NESTED = 0x8009): len 32 = 4 + 28
        "2000 0980",
        //       allowed IP (0 | NLA_F_NESTED): len 28 = 4 + 8 + 8 + 8
        "1c00 0080",
        //         WGALLOWEDIP_A_FAMILY (1): u16 AF_INET 2, len 6, padded
        "0600 0100 0200 0000",
        //         WGALLOWEDIP_A_IPADDR (2): 10.244.2.0, len 8
        "0800 0200 0af40200",
        //         WGALLOWEDIP_A_CIDR_MASK (3): u8 24, len 5, 3 bytes padding
        "0500 0300 18 000000",
        //   peer (0 | NLA_F_NESTED): len 48 = 4 + 36 + 8
        "3000 0080",
        //     WGPEER_A_PUBLIC_KEY (1)
        "2400 0100",
        &key_hex(0x04),
        //     WGPEER_A_FLAGS (3): WGPEER_F_REMOVE_ME 1
        "0800 0300 01000000",
    ]
    .concat());
    let messages = set_device(0x15, 2, &update);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0], expected);
}

#[cfg(target_endian = "little")]
#[test]
fn set_device_golden_bytes_ipv6_peer_without_psk() {
    let update = DeviceUpdate {
        ifname: "flannel-wg-v6".into(),
        private_key: [0x05; 32],
        listen_port: 51821,
        replace_peers: false,
        peers: vec![PeerUpdate::Set {
            public_key: [0x06; 32],
            preshared_key: None,
            endpoint: "[fd00::2]:51821".parse().unwrap(),
            persistent_keepalive: 0,
            allowed_ips: vec!["fc00:0:0:2::/64".parse().unwrap()],
        }],
    };
    let expected = hex(&[
        // nlmsghdr: len 236 (0xec) = 16 + 4 + 216 (20 + 36 + 8 + 8 + 8 + 136); family id 0x1b; flags 5; seq 7
        "ec000000 1b00 0500 07000000 00000000",
        "01 01 0000",
        // WGDEVICE_A_IFNAME: "flannel-wg-v6\0" is 14 bytes, len 18, 2 bytes padding: 20
        "1200 0200 666c616e6e656c2d77672d763600 0000",
        // WGDEVICE_A_PRIVATE_KEY: 36
        "2400 0300",
        &key_hex(0x05),
        // WGDEVICE_A_LISTEN_PORT: 51821 = 0xca6d: 8
        "0600 0600 6dca 0000",
        // WGDEVICE_A_FWMARK 0: 8
        "0800 0700 00000000",
        // WGDEVICE_A_FLAGS 0 (a diff, not the whole set): 8
        "0800 0500 00000000",
        // WGDEVICE_A_PEERS: len 136 = 4 + 132
        "8800 0880",
        //   peer: len 132 = 4 + 36 (key) + 8 (flags) + 32 (endpoint) + 8 (keepalive) + 44 (allowed IPs)
        "8400 0080",
        "2400 0100",
        &key_hex(0x06),
        "0800 0300 02000000",
        //     WGPEER_A_ENDPOINT: sockaddr_in6, 28 bytes, len 32: AF_INET6 10, port ca6d big-endian, flow info 0,
        //     fd00::2, scope id 0
        "2000 0400 0a00 ca6d 00000000 fd000000000000000000000000000002 00000000",
        //     WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL 0 (off)
        "0600 0500 0000 0000",
        //     WGPEER_A_ALLOWEDIPS: len 44 = 4 + 40
        "2c00 0980",
        //       allowed IP: len 40 = 4 + 8 (family) + 20 (address) + 8 (mask)
        "2800 0080",
        "0600 0100 0a00 0000",
        //         WGALLOWEDIP_A_IPADDR: 16 bytes, len 20
        "1400 0200 fc000000000000020000000000000000",
        //         WGALLOWEDIP_A_CIDR_MASK 64
        "0500 0300 40 000000",
    ]
    .concat());
    assert_eq!(set_device(0x1b, 7, &update), vec![expected]);
}

#[test]
fn many_peers_split_and_only_the_first_message_carries_the_device_settings() {
    let peer = |i: u8| PeerUpdate::Remove { public_key: [i; 32] };
    let update = DeviceUpdate {
        ifname: "wg0".into(),
        private_key: [0x01; 32],
        listen_port: 51820,
        replace_peers: true,
        peers: (0..(PEERS_PER_MESSAGE as u8 + 1)).map(peer).collect(),
    };
    let messages = set_device(0x15, 10, &update);
    assert_eq!(messages.len(), 2);
    // The second: header (seq 11) + genl + IFNAME (8) + PEERS nest (4) + one peer (48).
    let second = &messages[1];
    assert_eq!(second.len(), 16 + 4 + 8 + 4 + 48);
    assert_eq!(u32::from_ne_bytes(second[8..12].try_into().unwrap()), 11);
    assert!(!second.windows(32).any(|w| w == [0x01; 32]), "the private key only goes in the first message");
    // No peers at all still writes the device (key, port, flags) in one message.
    let empty = DeviceUpdate { peers: Vec::new(), ..update };
    assert_eq!(set_device(0x15, 1, &empty).len(), 1);
}

#[test]
fn answers_acks_errors_and_the_family_id() {
    // A CTRL_CMD_NEWFAMILY answer: nlmsghdr, genl header, FAMILY_NAME "wireguard", FAMILY_ID 0x15.
    let mut newfamily = Vec::new();
    let attrs = [&6u16.to_ne_bytes()[..], &1u16.to_ne_bytes()[..], &0x15u16.to_ne_bytes()[..], &[0, 0][..]].concat();
    let mut name_attr = [&14u16.to_ne_bytes()[..], &2u16.to_ne_bytes()[..], b"wireguard\0", &[0, 0]].concat();
    name_attr.extend_from_slice(&attrs);
    let length = (16 + 4 + name_attr.len()) as u32;
    newfamily.extend_from_slice(&length.to_ne_bytes());
    newfamily.extend_from_slice(&0x10u16.to_ne_bytes());
    newfamily.extend_from_slice(&0u16.to_ne_bytes());
    newfamily.extend_from_slice(&1u32.to_ne_bytes());
    newfamily.extend_from_slice(&0u32.to_ne_bytes());
    newfamily.extend_from_slice(&[1, 2, 0, 0]);
    newfamily.extend_from_slice(&name_attr);
    let answers = read_answers(&newfamily).unwrap();
    let [Answer::Genl { sequence: 1, attributes }] = answers.as_slice() else { panic!("{answers:?}") };
    assert_eq!(family_id(attributes), Ok(0x15));
    assert_eq!(family_id(&name_attr[..16]), Err(GenlError::NoFamilyId));

    // NLMSG_ERROR: code 0 is an ack, -ENOENT (no such family) an error naming it.
    let error = |code: i32, seq: u32| {
        [
            &36u32.to_ne_bytes()[..],
            &2u16.to_ne_bytes(),
            &0u16.to_ne_bytes(),
            &seq.to_ne_bytes(),
            &[0; 4],
            &code.to_ne_bytes(),
            &[0; 16],
        ]
        .concat()
    };
    assert_eq!(read_answers(&error(0, 4)), Ok(vec![Answer::Ack { sequence: 4 }]));
    let refused = read_answers(&error(-libc::ENOENT, 5)).unwrap_err();
    assert_eq!(refused, GenlError::Kernel { errno: libc::ENOENT });
    assert!(refused.to_string().contains("No such file or directory"), "{refused}");
    let mut truncated = error(0, 4);
    truncated[0] = 200;
    assert!(matches!(read_answers(&truncated), Err(GenlError::Malformed { .. })));
}
