//! A request as both transports send it, and how an answer is settled. The codecs build requests; the transports
//! only number, send and collect them.

use netlink_packet_core::{
    Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::{Action, Error, Object, Operation};

/// The length of a netlink message header (struct nlmsghdr).
const NETLINK_HEADER_LEN: usize = 16;

/// One rtnetlink request: the message, its NLM_F_* flags and what it does (for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    body: Body,
    flags: u16,
    operation: Operation,
}

/// What a request carries: a message netlink-packet-route knows, or one it has no type for (nexthop objects),
/// as the kernel reads it after the netlink header.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    Route(RouteNetlinkMessage),
    Raw { message_type: u16, payload: Vec<u8> },
}

impl Request {
    /// Creates an object that must not exist yet (EEXIST otherwise).
    pub(crate) fn create(object: Object, message: RouteNetlinkMessage) -> Request {
        Request {
            body: Body::Route(message),
            flags: NLM_F_CREATE | NLM_F_EXCL,
            operation: Operation::new(Action::Create, object),
        }
    }

    /// Creates the object or replaces the one with the same key.
    pub(crate) fn replace(object: Object, message: RouteNetlinkMessage) -> Request {
        Request {
            body: Body::Route(message),
            flags: NLM_F_CREATE | NLM_F_REPLACE,
            operation: Operation::new(Action::Replace, object),
        }
    }

    /// Changes, deletes or reads one existing object.
    pub(crate) fn plain(action: Action, object: Object, message: RouteNetlinkMessage) -> Request {
        Request { body: Body::Route(message), flags: 0, operation: Operation::new(action, object) }
    }

    /// Reads every object of a kind (a multi-part answer ending with NLMSG_DONE).
    pub(crate) fn dump(object: Object, message: RouteNetlinkMessage) -> Request {
        Request { body: Body::Route(message), flags: NLM_F_DUMP, operation: Operation::new(Action::Dump, object) }
    }

    /// A change netlink-packet-route has no message type for: `payload` is what follows the netlink header.
    /// Only the blocking transport (and so the bulk socket) sends these.
    pub(crate) fn raw(action: Action, object: Object, flags: u16, message_type: u16, payload: Vec<u8>) -> Request {
        Request { body: Body::Raw { message_type, payload }, flags, operation: Operation::new(action, object) }
    }

    /// The message, for requests netlink-packet-route has a type for (every one but the raw ones).
    pub fn message(&self) -> Option<&RouteNetlinkMessage> {
        match &self.body {
            Body::Route(message) => Some(message),
            Body::Raw { .. } => None,
        }
    }

    pub fn operation(&self) -> Operation {
        self.operation
    }

    pub fn is_dump(&self) -> bool {
        self.flags & NLM_F_DUMP == NLM_F_DUMP
    }

    /// The netlink message with its header flags. Every request but a dump asks for an acknowledgement, so that
    /// each one ends with exactly one answer: an acknowledgement or an errno. A raw request has no such message:
    /// the error says so (the async connection cannot send it; the bulk socket can).
    pub fn into_netlink(self, sequence: u32) -> Result<(NetlinkMessage<RouteNetlinkMessage>, Operation), Error> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | self.flags | if self.is_dump() { 0 } else { NLM_F_ACK };
        header.sequence_number = sequence;
        match self.body {
            // Not finalized: the async connection does that when it sends, to_bytes does it for the blocking socket.
            Body::Route(message) => {
                Ok((NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message)), self.operation))
            }
            Body::Raw { message_type, .. } => Err(Error::Invalid {
                operation: self.operation,
                detail: format!(
                    "message type {message_type} has no typed form: send it on the blocking or bulk socket"
                ),
            }),
        }
    }

    /// The request's bytes as they go on the wire (aligned to 4 bytes, so requests can be concatenated).
    pub fn to_bytes(&self, sequence: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.append_to(sequence, !self.is_dump(), &mut bytes);
        bytes
    }

    /// Appends the request's bytes to `out`, aligned to 4 bytes, without copying the message first. Without
    /// `acknowledge` the kernel answers a change only when it refuses it (netlink sends an acknowledgement only on
    /// NLM_F_ACK or an error); a dump or a get is answered either way.
    pub(crate) fn append_to(&self, sequence: u32, acknowledge: bool, out: &mut Vec<u8>) {
        let start = out.len();
        let (payload_len, message_type) = match &self.body {
            Body::Route(message) => (NetlinkSerializable::buffer_len(message), message.message_type()),
            Body::Raw { message_type, payload } => (payload.len(), *message_type),
        };
        let length = NETLINK_HEADER_LEN + payload_len;
        out.resize(start + ((length + 3) & !3), 0);
        let mut header = NetlinkHeader::default();
        header.length = length as u32;
        header.message_type = message_type;
        header.flags = NLM_F_REQUEST | self.flags | if acknowledge { NLM_F_ACK } else { 0 };
        header.sequence_number = sequence;
        header.emit(&mut out[start..start + NETLINK_HEADER_LEN]);
        let body = &mut out[start + NETLINK_HEADER_LEN..start + length];
        match &self.body {
            Body::Route(message) => message.serialize(body),
            Body::Raw { payload, .. } => body.copy_from_slice(payload),
        }
    }
}

/// What one message of an answer means for the request it answers.
pub(crate) enum Reply {
    /// Part of the answer (a dumped or read object).
    Object(RouteNetlinkMessage),
    /// The end of the answer: an acknowledgement, or the end of a dump.
    Done,
    /// The end of the answer: the kernel refused with this errno (positive).
    Refused(i32),
    /// Nothing for the request (a no-op or an overrun notice).
    Ignored,
}

impl Reply {
    pub(crate) fn of(payload: NetlinkPayload<RouteNetlinkMessage>) -> Reply {
        match payload {
            NetlinkPayload::InnerMessage(message) => Reply::Object(message),
            NetlinkPayload::Error(e) if e.raw_code() != 0 => Reply::Refused(e.raw_code().abs()),
            NetlinkPayload::Error(_) => Reply::Done,
            // A dump that failed half way reports the errno in its NLMSG_DONE.
            NetlinkPayload::Done(done) if done.code != 0 => Reply::Refused(done.code.abs()),
            NetlinkPayload::Done(_) => Reply::Done,
            _ => Reply::Ignored,
        }
    }
}

/// Collects the answer to one request as the transports receive it.
#[derive(Default)]
pub(crate) struct Answer {
    objects: Vec<RouteNetlinkMessage>,
    refused: Option<i32>,
}

impl Answer {
    /// Adds one reply; true when the answer is complete.
    pub(crate) fn absorb(&mut self, reply: Reply) -> bool {
        match reply {
            Reply::Object(message) => {
                self.objects.push(message);
                false
            }
            Reply::Done => true,
            Reply::Refused(errno) => {
                self.refused = Some(errno);
                true
            }
            Reply::Ignored => false,
        }
    }

    pub(crate) fn finish(self, operation: Operation) -> Result<Vec<RouteNetlinkMessage>, Error> {
        match self.refused {
            Some(errno) => Err(Error::Kernel { operation, errno }),
            None => Ok(self.objects),
        }
    }
}

/// A kind of object the codecs read from the kernel's answers.
pub trait Decode: Sized {
    /// The object in a dumped or read message, if the message is of this kind and readable.
    fn decode(message: &RouteNetlinkMessage) -> Option<Self>;
    /// The device the object belongs to, if any.
    fn device(&self) -> Option<u32>;
}

/// Implements [`Decode`] for a codec's value: the answer variant it is read from, and its device.
macro_rules! decodable {
    ($kind:ty, $variant:ident, $device:expr) => {
        impl $crate::request::Decode for $kind {
            fn decode(message: &RouteNetlinkMessage) -> Option<$kind> {
                let RouteNetlinkMessage::$variant(msg) = message else { return None };
                <$kind>::from_message(msg)
            }
            fn device(&self) -> Option<u32> {
                let device: fn(&$kind) -> Option<u32> = $device;
                device(self)
            }
        }
    };
}
pub(crate) use decodable;

/// Every object of kind `T` in a transport's answer, in the kernel's order.
pub fn decode_all<T: Decode>(messages: &[RouteNetlinkMessage]) -> Vec<T> {
    messages.iter().filter_map(T::decode).collect()
}

/// The objects of kind `T` on device `device` (all of them for None). The kernel leaves the others out of a dump
/// filtered by device when it checks dumps strictly; older kernels send everything, so filter again here.
pub fn decode_on<T: Decode>(messages: &[RouteNetlinkMessage], device: Option<u32>) -> Vec<T> {
    messages.iter().filter_map(T::decode).filter(|o| device.is_none() || o.device() == device).collect()
}

/// The answers to a batch, as [`crate::blocking::Socket::batch`] returns them: per request, the objects the
/// kernel sent back or the error it refused with.
pub type Outcome = Result<Vec<RouteNetlinkMessage>, Error>;

#[cfg(test)]
mod tests {
    use netlink_packet_core::{DoneMessage, ErrorMessage};

    use super::*;

    #[test]
    fn settles_answers() {
        let op = Operation::new(Action::Delete, Object::Link);
        let mut ack = Answer::default();
        assert!(ack.absorb(Reply::of(NetlinkPayload::Error(ErrorMessage::default()))));
        assert!(ack.finish(op).unwrap().is_empty());

        let mut nack = Answer::default();
        let mut refusal = ErrorMessage::default();
        refusal.code = std::num::NonZeroI32::new(-libc::ENODEV);
        assert!(nack.absorb(Reply::of(NetlinkPayload::Error(refusal))));
        assert!(nack.finish(op).unwrap_err().is_no_device());

        let mut dump = Answer::default();
        assert!(!dump.absorb(Reply::of(NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(Default::default())))));
        let mut failed = DoneMessage::default();
        failed.code = -libc::EINTR;
        assert!(dump.absorb(Reply::of(NetlinkPayload::Done(failed))));
        assert_eq!(dump.finish(op).unwrap_err().errno(), Some(libc::EINTR));
    }

    #[test]
    fn dumps_ask_for_no_acknowledgement() {
        let dump = Request::dump(Object::Link, RouteNetlinkMessage::GetLink(Default::default()));
        let (message, _) = dump.into_netlink(7).unwrap();
        assert_eq!(message.header.flags, NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(message.header.sequence_number, 7);
        let create = Request::create(Object::Link, RouteNetlinkMessage::NewLink(Default::default()));
        let (message, _) = create.into_netlink(8).unwrap();
        assert_eq!(message.header.flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
    }
}
