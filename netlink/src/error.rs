//! The one errno mapping: every failure carries the operation it belongs to, and a kernel refusal keeps its errno,
//! so callers ask `is_exists()` or `is_not_found()` instead of comparing numbers.

use std::fmt;
use std::io;

/// What a request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Dump,
    Get,
    Create,
    Replace,
    Change,
    Delete,
    /// Sending requests or reading answers, whatever they were.
    Exchange,
    /// Opening or setting up a socket.
    Open,
}

/// What a request acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Link,
    Address,
    Route,
    Neighbour,
    Fdb,
    Nexthop,
    Socket,
}

/// The operation a failure belongs to, e.g. "create link".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    pub action: Action,
    pub object: Object,
}

impl Operation {
    pub const fn new(action: Action, object: Object) -> Operation {
        Operation { action, object }
    }

    /// The transport itself: sending, receiving, opening a socket.
    pub const fn socket(action: Action) -> Operation {
        Operation { action, object: Object::Socket }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Dump => "dump",
            Action::Get => "get",
            Action::Create => "create",
            Action::Replace => "replace",
            Action::Change => "change",
            Action::Delete => "delete",
            Action::Exchange => "exchange messages on",
            Action::Open => "open",
        };
        let object = match (self.object, self.action) {
            (Object::Link, Action::Dump) => "links",
            (Object::Address, Action::Dump) => "addresses",
            (Object::Route, Action::Dump) => "routes",
            (Object::Neighbour, Action::Dump) => "neighbours",
            (Object::Fdb, Action::Dump) => "fdb entries",
            (Object::Nexthop, Action::Dump) => "nexthops",
            (Object::Link, _) => "link",
            (Object::Address, _) => "address",
            (Object::Route, _) => "route",
            (Object::Neighbour, _) => "neighbour",
            (Object::Fdb, _) => "fdb entry",
            (Object::Nexthop, _) => "nexthop",
            (Object::Socket, _) => "netlink socket",
        };
        write!(f, "{action} {object}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused the request with `errno` (positive).
    #[error("{operation}: kernel answered {}", io::Error::from_raw_os_error(*errno))]
    Kernel { operation: Operation, errno: i32 },
    /// The socket failed (or a namespace could not be entered).
    #[error("{operation}: {source}")]
    Io {
        operation: Operation,
        #[source]
        source: io::Error,
    },
    /// A request that cannot be encoded, or an answer that cannot be decoded.
    #[error("{operation}: {detail}")]
    Invalid { operation: Operation, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn operation(&self) -> Operation {
        match self {
            Error::Kernel { operation, .. } | Error::Io { operation, .. } | Error::Invalid { operation, .. } => {
                *operation
            }
        }
    }

    /// The errno, from the kernel's answer or from the socket.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Invalid { .. } => None,
        }
    }

    /// The object to create is there already.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object to change or delete is not there: no such route (ESRCH), address (EADDRNOTAVAIL) or entry
    /// (ENOENT). A missing device is [`Error::is_no_device`].
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL))
    }

    /// The device named or indexed by the request does not exist.
    pub fn is_no_device(&self) -> bool {
        self.errno() == Some(libc::ENODEV)
    }

    /// As an io::Error that keeps the errno (`raw_os_error`), for layers that speak io::Error.
    pub fn into_io(self) -> io::Error {
        match self {
            Error::Kernel { errno, .. } => io::Error::from_raw_os_error(errno),
            Error::Io { source, .. } => source,
            Error::Invalid { detail, .. } => io::Error::new(io::ErrorKind::InvalidData, detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(errno: i32) -> Error {
        Error::Kernel { operation: Operation::new(Action::Delete, Object::Route), errno }
    }

    #[test]
    fn classifies_errnos() {
        assert!(kernel(libc::EEXIST).is_exists());
        for errno in [libc::ENOENT, libc::ESRCH, libc::EADDRNOTAVAIL] {
            assert!(kernel(errno).is_not_found(), "{errno}");
            assert!(!kernel(errno).is_no_device());
        }
        assert!(kernel(libc::ENODEV).is_no_device());
        assert!(!kernel(libc::ENODEV).is_not_found());
        assert!(!kernel(libc::EPERM).is_not_found() && !kernel(libc::EPERM).is_exists());
        let io = Error::Io {
            operation: Operation::socket(Action::Open),
            source: io::Error::from_raw_os_error(libc::EEXIST),
        };
        assert!(io.is_exists(), "an errno from the socket counts too");
    }

    #[test]
    fn keeps_the_errno_as_io_error() {
        assert_eq!(kernel(libc::EPERM).into_io().raw_os_error(), Some(libc::EPERM));
        let text = kernel(libc::ESRCH).to_string();
        assert!(text.starts_with("delete route: kernel answered No such process"), "{text}");
        assert_eq!(Operation::new(Action::Dump, Object::Fdb).to_string(), "dump fdb entries");
    }
}
