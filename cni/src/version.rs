//! cniVersion handling: which versions we speak and which result format each one uses.

use crate::error::{CniError, Result};

/// Every version whose result format we can produce, oldest first.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// What we answer with when the input names no version we could echo.
pub const LATEST: &str = "1.1.0";

/// The result formats that differ in ways a reader notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// 0.3.0 - 0.4.0: `ips[].version` is required.
    V03,
    /// 1.0.0: no `ips[].version`.
    V10,
    /// 1.1.0: as 1.0.0, plus interface `mtu`.
    V11,
}

pub fn format_of(version: &str) -> Result<Format> {
    match version {
        "0.3.0" | "0.3.1" | "0.4.0" => Ok(Format::V03),
        "1.0.0" => Ok(Format::V10),
        "1.1.0" => Ok(Format::V11),
        other => Err(CniError::IncompatibleVersion(other.to_string())),
    }
}

/// CHECK exists from 0.4.0 on; GC and STATUS from 1.1.0 on.
pub fn at_least(version: &str, minimum: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(version) >= parse(minimum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_ordering() {
        assert_eq!(format_of("0.3.1").unwrap(), Format::V03);
        assert_eq!(format_of("1.1.0").unwrap(), Format::V11);
        assert_eq!(
            format_of("0.2.0").unwrap_err().to_string().split(" (").next().unwrap(),
            "cniVersion \"0.2.0\" is not supported"
        );
        assert!(at_least("1.1.0", "0.4.0"));
        assert!(!at_least("0.3.1", "0.4.0"));
        assert!(at_least("0.10.0", "0.4.0"));
    }
}
