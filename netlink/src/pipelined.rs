//! The async, pipelined transport, for the daemon's passes over thousands of objects: many requests in flight on
//! one socket (the kernel still handles them one by one, in order, but the round trip through the connection
//! task is paid once per window, not once per request), and notification streams of typed events.

use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;
use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use netlink_packet_core::NetlinkMessage;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_proto::sys::{SocketAddr, TokioSocket};
use netlink_proto::ConnectionHandle;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::error::{Action, Error, Operation};
use crate::event::Event;
use crate::netns;
use crate::request::{Answer, Decode, Outcome, Reply, Request};

fn connection_gone(operation: Operation, e: impl std::fmt::Display) -> Error {
    Error::Io { operation, source: io::Error::other(format!("the netlink connection is gone: {e}")) }
}

/// Raw notifications as the connection task hands them over.
pub type Notifications = futures_channel::mpsc::UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

fn open_error(e: io::Error) -> Error {
    Error::Io { operation: Operation::socket(Action::Open), source: e }
}

/// A handle on one netlink socket driven by a connection task on the current tokio runtime. Cheap to clone:
/// clones share the socket.
#[derive(Clone)]
pub struct Connection {
    handle: ConnectionHandle<RouteNetlinkMessage>,
}

impl Connection {
    /// A connection in the current network namespace. Must be called inside a tokio runtime.
    pub fn open() -> Result<Connection, Error> {
        Ok(Connection::with_notifications(netns::route_socket(0).map_err(open_error)?)?.0)
    }

    /// A connection in the network namespace at `path`, whatever namespace the caller is in.
    pub fn open_at(path: &Path) -> Result<Connection, Error> {
        Ok(Connection::with_notifications(netns::route_socket_at(path, 0).map_err(open_error)?)?.0)
    }

    /// Drives `socket` (from [`netns::route_socket`], perhaps subscribed to groups) and returns the connection
    /// with the notifications that arrive on it. Must be called inside a tokio runtime.
    pub fn with_notifications(socket: netlink_sys::Socket) -> Result<(Connection, Notifications), Error> {
        tokio::runtime::Handle::try_current().map_err(|e| {
            open_error(io::Error::other(format!("netlink connections must be opened inside a tokio runtime: {e}")))
        })?;
        socket.set_non_blocking(true).map_err(open_error)?;
        // SAFETY: the descriptor comes straight from an owned socket that gives it up here, so TokioSocket becomes
        // its only owner; it registers with the runtime checked above.
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (connection, handle, notifications) =
            netlink_proto::from_socket_with_codec::<_, _, netlink_proto::NetlinkCodec>(socket);
        tokio::spawn(connection);
        Ok((Connection { handle }, notifications))
    }

    /// Sends a dump request and decodes each object of kind `T` (on `device`; every one for None) as its message
    /// arrives, as [`decode_on`](crate::decode_on) does with a whole answer: a dump of 10,000 routes never holds
    /// 10,000 raw messages beside the decoded values.
    pub async fn dump<T: Decode>(&self, request: Request, device: Option<u32>) -> Result<Vec<T>, Error> {
        self.dump_into(request, device, Some).await
    }

    /// [`dump`](Self::dump), turning each decoded object into what the caller keeps (or nothing) as it arrives.
    pub async fn dump_into<T: Decode, U>(
        &self,
        request: Request,
        device: Option<u32>,
        mut keep: impl FnMut(T) -> Option<U>,
    ) -> Result<Vec<U>, Error> {
        let (message, operation) = request.into_netlink(0)?;
        let mut replies =
            self.handle.request(message, SocketAddr::new(0, 0)).map_err(|e| connection_gone(operation, e))?;
        let mut objects = Vec::new();
        while let Some(message) = replies.next().await {
            match Reply::of(message.payload) {
                Reply::Object(m) => {
                    let decoded = T::decode(&m).filter(|o| device.is_none() || o.device() == device);
                    objects.extend(decoded.and_then(&mut keep));
                }
                Reply::Done => break,
                Reply::Refused(errno) => return Err(Error::Kernel { operation, errno }),
                Reply::Ignored => {}
            }
        }
        Ok(objects)
    }

    /// Sends one request and collects its answer, as a future that owns what it needs, so that many can be in
    /// flight at once.
    pub fn request(&self, request: Request) -> impl Future<Output = Outcome> + Send + 'static {
        let handle = self.handle.clone();
        async move {
            let (message, operation) = request.into_netlink(0)?;
            let mut replies =
                handle.request(message, SocketAddr::new(0, 0)).map_err(|e| connection_gone(operation, e))?;
            let mut answer = Answer::default();
            while let Some(message) = replies.next().await {
                if answer.absorb(crate::request::Reply::of(message.payload)) {
                    break;
                }
            }
            answer.finish(operation)
        }
    }

    /// Sends every request, keeping up to `window` in flight, and returns their answers in order. The window
    /// keeps the acknowledgements within the socket's receive buffer.
    pub async fn pipeline(&self, requests: Vec<Request>, window: usize) -> Vec<Outcome> {
        let pending = requests.into_iter().enumerate().map(|(position, request)| {
            let answer = self.request(request);
            async move { (position, answer.await) }
        });
        let mut answered: Vec<(usize, Outcome)> = stream::iter(pending).buffer_unordered(window.max(1)).collect().await;
        answered.sort_by_key(|(position, _)| *position);
        answered.into_iter().map(|(_, outcome)| outcome).collect()
    }
}

/// Typed events from the network namespace at `path` (or the current one), each stamped with the time it was
/// read, for measuring convergence without polling. `buffer` sizes the socket's receive buffer (a cold start of
/// thousands of peers announces tens of thousands of objects within a second). Call inside a tokio runtime; the
/// stream ends when the receiver is dropped (the reader stops at its next message).
pub fn subscribe(
    path: Option<&Path>,
    groups: u32,
    buffer: usize,
) -> Result<UnboundedReceiver<(Instant, Event)>, Error> {
    let open = move || {
        let socket = netns::route_socket(groups)?;
        netns::set_receive_buffer(&socket, buffer);
        Ok(socket)
    };
    let socket = match path {
        Some(path) => netns::in_netns_at(path, open),
        None => open(),
    }
    .map_err(open_error)?;
    let (_connection, mut notifications) = Connection::with_notifications(socket)?;
    let (tx, rx) = unbounded_channel();
    tokio::spawn(async move {
        while let Some((message, _)) = notifications.next().await {
            let at = Instant::now();
            if let Some(event) = Event::from_netlink(&message) {
                if tx.send((at, event)).is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}
