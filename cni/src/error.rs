//! Every way the plugin can fail, and the one place that maps each to a CNI error code.

use serde_json::json;

/// CNI error codes from the spec (1-99 are reserved for the spec; 100+ are ours).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODING: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// weft's own: CHECK found the container's network differs from prevResult.
    pub const CHECK_MISMATCH: u32 = 100;
    /// weft's own: no free address left in the host's subnet.
    pub const POOL_EXHAUSTED: u32 = 101;
    /// weft's own: a delegated IPAM plugin failed (its message is passed on).
    pub const IPAM_PLUGIN: u32 = 102;
    /// weft's own: the delegate plugin of a flannel config failed without a code of its own.
    pub const DELEGATE_PLUGIN: u32 = 103;
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("cniVersion {0:?} is not supported (supported: {supported})", supported = crate::version::SUPPORTED.join(", "))]
    IncompatibleVersion(String),
    #[error("{0}")]
    UnsupportedField(String),
    #[error("{0}")]
    UnknownContainer(String),
    #[error("{0}")]
    InvalidEnv(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: kernel answered {errno}")]
    Netlink { what: String, errno: std::io::Error },
    #[error("cannot decode the network configuration on stdin: {0}")]
    Decoding(String),
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    #[error("subnet file {path} is not there yet: weftd is not running on this node or has not written it yet")]
    SubnetFileMissing { path: String },
    #[error("{0}")]
    NotAvailable(String),
    #[error("CHECK found differences: {}", .0.join("; "))]
    CheckMismatch(Vec<String>),
    #[error("no free address left in {0}")]
    PoolExhausted(String),
    #[error("IPAM plugin {plugin}: {msg}")]
    IpamPlugin { plugin: String, code: u32, msg: String },
    #[error("delegate plugin {plugin}: {msg}")]
    DelegatePlugin { plugin: String, code: u32, msg: String },
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;

impl CniError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> CniError {
        CniError::Io { what: what.into(), source }
    }

    /// A netlink failure: the kernel's refusal keeps its errno (as `Netlink`), a socket failure is `Io`.
    pub fn netlink(what: impl Into<String>, e: weft_netlink::Error) -> CniError {
        match e {
            weft_netlink::Error::Kernel { errno, .. } => {
                CniError::Netlink { what: what.into(), errno: std::io::Error::from_raw_os_error(errno) }
            }
            other => CniError::Io { what: what.into(), source: other.into_io() },
        }
    }

    pub fn code(&self) -> u32 {
        use code::*;
        match self {
            CniError::IncompatibleVersion(_) => INCOMPATIBLE_VERSION,
            CniError::UnsupportedField(_) => UNSUPPORTED_FIELD,
            CniError::UnknownContainer(_) => UNKNOWN_CONTAINER,
            CniError::InvalidEnv(_) => INVALID_ENV,
            CniError::Io { .. } | CniError::Netlink { .. } => IO,
            CniError::Decoding(_) => DECODING,
            CniError::InvalidConfig(_) => INVALID_CONFIG,
            // During ADD a missing file means weftd has not started yet: the runtime should retry.
            CniError::SubnetFileMissing { .. } => TRY_AGAIN_LATER,
            CniError::NotAvailable(_) => NOT_AVAILABLE,
            CniError::CheckMismatch(_) => CHECK_MISMATCH,
            CniError::PoolExhausted(_) => POOL_EXHAUSTED,
            CniError::IpamPlugin { code, .. } if *code != 0 => *code,
            CniError::IpamPlugin { .. } => IPAM_PLUGIN,
            CniError::DelegatePlugin { code, .. } if *code != 0 => *code,
            CniError::DelegatePlugin { .. } => DELEGATE_PLUGIN,
        }
    }

    /// The error as the spec's JSON object, printed on stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        json!({"cniVersion": cni_version, "code": self.code(), "msg": self.to_string()}).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_as_spec_json() {
        let e = CniError::InvalidEnv("CNI_CONTAINERID is not set".into());
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "CNI_CONTAINERID is not set");
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(CniError::SubnetFileMissing { path: "/x".into() }.code(), 11);
        assert!(CniError::SubnetFileMissing { path: "/x".into() }.to_string().contains("weftd is not running"));
    }
}
