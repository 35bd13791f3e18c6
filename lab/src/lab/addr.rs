//! Lab names, namespace names and underlay addresses: pure functions.

use std::net::Ipv4Addr;

use super::LabError;

/// Longest accepted lab name; keeps namespace names short and readable.
pub const MAX_NAME_LEN: usize = 16;

/// Most hosts a lab can have: host N gets 198.18.0.N, and .254 is etcd.
pub const MAX_HOSTS: usize = 200;

/// Address of the underlay bridge br0, where etcd listens.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

/// etcd's client port (private to the underlay namespace, so it never clashes).
pub const ETCD_CLIENT_PORT: u16 = 2379;

/// Prefix length of the underlay subnet 198.18.0.0/24.
pub const UNDERLAY_PREFIX_LEN: u8 = 24;

/// Checks that `name` can be embedded in namespace names: 1 to 16 letters,
/// digits or '-', starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), LabError> {
    let reject = |reason: &str| Err(LabError::InvalidName { name: name.to_string(), reason: reason.to_string() });
    if name.is_empty() {
        return reject("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return reject(&format!("it is longer than {MAX_NAME_LEN} characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return reject("only ASCII letters, digits and '-' are allowed");
    }
    if name.starts_with('-') {
        return reject("it must start with a letter or a digit");
    }
    Ok(())
}

/// Every namespace of lab `name` starts with this, which is how the lab
/// recognises (and refuses to touch anything but) its own namespaces.
pub(crate) fn namespace_prefix(name: &str) -> String {
    format!("wl-{name}-")
}

pub(crate) fn underlay_ns(name: &str) -> String {
    format!("{}u", namespace_prefix(name))
}

pub(crate) fn host_ns(name: &str, host: usize) -> String {
    format!("{}h{host}", namespace_prefix(name))
}

pub(crate) fn container_ns(name: &str, host: usize) -> String {
    format!("{}c{host}", namespace_prefix(name))
}

/// True if `ns` is one of the namespace names of lab `name` with `hosts`
/// hosts. An exact match, so lab "a" never claims lab "a-b"'s namespaces.
pub(crate) fn is_lab_namespace(name: &str, hosts: usize, ns: &str) -> bool {
    ns == underlay_ns(name) || (1..=hosts).any(|host| ns == host_ns(name, host) || ns == container_ns(name, host))
}

/// Underlay address of host `host` (1-based): 198.18.0.<host>.
pub fn host_ip(host: usize) -> Ipv4Addr {
    assert!((1..=MAX_HOSTS).contains(&host), "host index {host} is outside 1..={MAX_HOSTS}");
    Ipv4Addr::new(198, 18, 0, host as u8)
}

/// The etcd client URL as seen from inside the lab.
pub fn etcd_endpoint() -> String {
    format!("http://{ETCD_IP}:{ETCD_CLIENT_PORT}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for name in ["a", "lab", "t1234-7", "Demo-2", "0123456789abcdef"] {
            assert!(validate_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_bad_names() {
        for name in ["", "-lab", "a_b", "a.b", "a b", "a/b", "0123456789abcdefg", "läb"] {
            let err = validate_name(name).unwrap_err().to_string();
            assert!(err.contains("invalid lab name"), "{name}: {err}");
        }
    }

    #[test]
    fn namespace_names_share_the_lab_prefix() {
        assert_eq!(underlay_ns("x"), "wl-x-u");
        assert_eq!(host_ns("x", 3), "wl-x-h3");
        assert_eq!(container_ns("x", 12), "wl-x-c12");
        for ns in [underlay_ns("x"), host_ns("x", 1), container_ns("x", 1)] {
            assert!(ns.starts_with(&namespace_prefix("x")));
        }
    }

    #[test]
    fn lab_namespaces_are_matched_exactly() {
        assert!(is_lab_namespace("a", 2, "wl-a-u"));
        assert!(is_lab_namespace("a", 2, "wl-a-h2"));
        assert!(is_lab_namespace("a", 2, "wl-a-c1"));
        assert!(!is_lab_namespace("a", 2, "wl-a-h3"));
        assert!(!is_lab_namespace("a", 2, "wl-a-b-u"));
        assert!(!is_lab_namespace("a", 2, "underlay"));
        assert!(!is_lab_namespace("a", 2, ""));
    }

    #[test]
    fn host_addresses() {
        assert_eq!(host_ip(1), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(host_ip(MAX_HOSTS), Ipv4Addr::new(198, 18, 0, 200));
        assert_eq!(etcd_endpoint(), "http://198.18.0.254:2379");
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn host_zero_is_a_bug() {
        host_ip(0);
    }
}
