//! weft's one netlink layer, shared by the daemon, the CNI plugin and the lab.
//!
//! - One codec per object kind ([`link`], [`address`], [`route`], [`neighbour`], [`fdb`], [`nexthop`]): plain
//!   values read from messages and [`Request`]s built from values, pure and unit-tested.
//! - One errno mapping ([`Error`]): the operation plus the kernel's errno, with `is_exists`/`is_not_found`/
//!   `is_no_device`.
//! - One way into a network namespace ([`netns`]): a short-lived thread enters it and opens the socket there.
//! - Two transports over the same requests: [`blocking::Socket`] (batched, no runtime; the CNI plugin) and,
//!   with the `tokio` feature, `pipelined::Connection` (many requests in flight; the daemon) and
//!   `bulk::BulkSocket` (many change requests per datagram, only refusals answered; the daemon's passes).
//! - Typed kernel events ([`Event`]) decoded from notifications with the same codecs.

pub mod address;
pub mod blocking;
#[cfg(feature = "tokio")]
pub mod bulk;
pub mod error;
pub mod event;
pub mod fdb;
pub mod link;
pub mod neighbour;
pub mod netns;
pub mod nexthop;
#[cfg(feature = "tokio")]
pub mod pipelined;
pub mod request;
pub mod route;

pub use error::{Action, Error, Object, Operation};
pub use event::{Event, EventKind};
pub use request::{decode_all, decode_on, Decode, Outcome, Request};

/// An Ethernet address as the kernel sends it.
pub type Mac = [u8; 6];

/// The raw message type the transports return, for callers that read one of the codecs' `*_in` helpers.
pub use netlink_packet_route::RouteNetlinkMessage as Message;

#[cfg(test)]
mod tests {
    /// The MAC the codec tests build messages with.
    pub(crate) const MAC: crate::Mac = [0x0e, 0x2a, 0x4f, 0x00, 0x12, 0x9c];
}
