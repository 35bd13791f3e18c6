//! Many change requests with few system calls, for async callers: [`blocking::Socket::apply_changes`] on its own
//! socket, run on tokio's blocking pool. The kernel does the work of a change request inside the `send` that
//! carries it (a datagram of a thousand routes keeps the caller in the kernel for milliseconds), so the call runs
//! where it cannot hold up the runtime's workers.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::blocking::Socket;
use crate::error::{Action, Error, Operation};
use crate::netns;
use crate::request::{Outcome, Request};

/// A netlink socket for bulk changes. Cheap to clone: clones share the socket, one batch at a time.
#[derive(Clone)]
pub struct BulkSocket {
    socket: Arc<Mutex<Socket>>,
}

impl BulkSocket {
    /// A socket in the current network namespace.
    pub fn open() -> Result<BulkSocket, Error> {
        Ok(BulkSocket::new(Socket::open()?))
    }

    /// A socket in the network namespace at `path`, whatever namespace the caller is in.
    pub fn open_at(path: &Path) -> Result<BulkSocket, Error> {
        let socket = netns::route_socket_at(path, 0)
            .map_err(|source| Error::Io { operation: Operation::socket(Action::Open), source })?;
        Ok(BulkSocket::new(Socket::from_socket(socket)?))
    }

    fn new(socket: Socket) -> BulkSocket {
        BulkSocket { socket: Arc::new(Mutex::new(socket)) }
    }

    /// Sends `requests` (changes only; see [`Socket::apply_changes`] for what they must allow) and returns one
    /// answer per request, in order. When the socket fails, every request without a verdict gets that failure.
    /// Must be called inside a tokio runtime.
    pub async fn apply(&self, requests: Vec<Request>) -> Vec<Outcome> {
        let operations: Vec<Operation> = requests.iter().map(Request::operation).collect();
        let socket = self.socket.clone();
        let sent = tokio::task::spawn_blocking(move || {
            let mut socket = socket.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            socket.apply_changes(&requests)
        })
        .await;
        let failure = match sent {
            Ok(Ok(answers)) => return answers,
            Ok(Err(e)) => e.into_io(),
            Err(e) => io::Error::other(format!("the netlink batch was abandoned: {e}")),
        };
        let copy = || match failure.raw_os_error() {
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::new(failure.kind(), failure.to_string()),
        };
        operations.into_iter().map(|operation| Err(Error::Io { operation, source: copy() })).collect()
    }
}
