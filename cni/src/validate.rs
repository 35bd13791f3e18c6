//! Names that end up in paths and interface names are checked before they are used: no traversal into the IPAM
//! store, no interface name the kernel would reject.

use crate::error::{CniError, Result};

/// Container IDs and network names: the spec's `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`. That excludes '/', and a leading
/// '.' so ".." can never appear as a path component.
fn is_safe_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub fn container_id(id: &str) -> Result<()> {
    if is_safe_identifier(id) {
        Ok(())
    } else {
        Err(CniError::InvalidEnv(format!(
            "CNI_CONTAINERID {id:?} is invalid: it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
        )))
    }
}

pub fn network_name(name: &str) -> Result<()> {
    if is_safe_identifier(name) {
        Ok(())
    } else {
        Err(CniError::InvalidConfig(format!(
            "network name {name:?} is invalid: it must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
        )))
    }
}

/// The kernel's rules for interface names (dev_valid_name): 1-15 bytes, not "." or "..", no '/', ':' or whitespace.
pub fn interface_name(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 15 {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("it is a path component")
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control()) {
        Some("it contains '/', ':' or whitespace")
    } else {
        None
    };
    match problem {
        Some(p) => Err(CniError::InvalidEnv(format!("CNI_IFNAME {name:?} is invalid: {p}"))),
        None => Ok(()),
    }
}

/// A plugin name from the netconf, looked up in CNI_PATH: a file name, never a path.
pub fn plugin_name(name: &str) -> Result<()> {
    if is_safe_identifier(name) {
        Ok(())
    } else {
        Err(CniError::InvalidConfig(format!("ipam.type {name:?} is not a plugin name")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["abc", "0123456789abcdef", "default-tbctr1", "a.b_c-d"] {
            assert!(container_id(ok).is_ok(), "{ok}");
            assert!(network_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "..", ".", "../../etc", "a/b", "/abs", ".hidden", "-x", "a b", "a\nb", "é"] {
            assert_eq!(container_id(bad).unwrap_err().code(), 4, "{bad:?}");
            assert_eq!(network_name(bad).unwrap_err().code(), 7, "{bad:?}");
        }
    }

    #[test]
    fn interface_names() {
        for ok in ["eth0", "net1", "a-b.c", "x23456789012345"] {
            assert!(interface_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "eth0:1", "a b", "x234567890123456"] {
            let e = interface_name(bad).unwrap_err();
            assert_eq!(e.code(), 4);
            assert!(e.to_string().contains("CNI_IFNAME"), "{e}");
        }
    }
}
