//! Blocking rtnetlink for ADD, the latency-critical command. Requests whose order is fixed go out together in one
//! datagram: the kernel handles the messages of a datagram one after the other, in order, and answers each, so a
//! batch costs one round trip. Plain send/recv on the calling thread: no async runtime to build, and no connection
//! task that sends one request per wake-up.

use std::io;
use std::os::fd::AsRawFd;

use rtnetlink::packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Larger than any answer ADD reads (one link's attributes are about 2 KiB); a datagram that does not fit is an
/// error, never silently cut.
const RECV_BUFFER: usize = 32 * 1024;

/// One request: the message and its NLM_F_* flags (NLM_F_ACK is always added, so that every request ends with
/// exactly one answer, an acknowledgement or an error).
pub struct Request {
    message: RouteNetlinkMessage,
    flags: u16,
}

impl Request {
    /// Creates an object; it must not exist yet (EEXIST otherwise).
    pub fn create(message: RouteNetlinkMessage) -> Request {
        Request { message, flags: NLM_F_CREATE | NLM_F_EXCL }
    }

    /// Changes, deletes or reads an existing object.
    pub fn plain(message: RouteNetlinkMessage) -> Request {
        Request { message, flags: 0 }
    }
}

/// What the kernel answered one request: the payloads of the messages it sent back (left undecoded: the caller
/// reads the few attributes it needs, which costs far less than decoding a whole link), or the errno it failed with.
pub type Answer = Result<Vec<Vec<u8>>, i32>;

/// A netlink socket used synchronously.
pub struct Rtnl {
    socket: Socket,
    sequence: u32,
}

impl Rtnl {
    /// A socket in the calling thread's netns.
    pub fn open() -> io::Result<Rtnl> {
        Rtnl::from_socket(Socket::new(NETLINK_ROUTE)?)
    }

    /// Uses `socket` (e.g. one opened inside a container's netns).
    pub fn from_socket(socket: Socket) -> io::Result<Rtnl> {
        // Connected to the kernel, so that plain send() reaches it and only the kernel's answers come back.
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { socket, sequence: 0 })
    }

    /// Sends `requests` in one datagram and returns the answers in the same order.
    pub fn batch(&mut self, requests: Vec<Request>) -> io::Result<Vec<Answer>> {
        let first = self.sequence.wrapping_add(1);
        let datagram = self.encode(requests);
        let count = self.sequence.wrapping_sub(first).wrapping_add(1) as usize;
        self.socket.send(&datagram, 0)?;
        let mut replies: Vec<Vec<Vec<u8>>> = (0..count).map(|_| Vec::new()).collect();
        let mut answers: Vec<Option<Answer>> = (0..count).map(|_| None).collect();
        let mut buffer = Vec::with_capacity(RECV_BUFFER);
        while answers.iter().any(Option::is_none) {
            self.receive(&mut buffer)?;
            for (sequence, reply) in split(&buffer)? {
                let index = sequence.wrapping_sub(first) as usize;
                if index >= count {
                    // Not ours (an answer to an earlier, abandoned request): nobody waits for it.
                    continue;
                }
                match reply {
                    Reply::Done(0) => answers[index] = Some(Ok(std::mem::take(&mut replies[index]))),
                    Reply::Done(code) => answers[index] = Some(Err(-code)),
                    Reply::Message(payload) => replies[index].push(payload.to_vec()),
                }
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    fn encode(&mut self, requests: Vec<Request>) -> Vec<u8> {
        let mut datagram = Vec::new();
        for request in requests {
            self.sequence = self.sequence.wrapping_add(1);
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_ACK | request.flags;
            header.sequence_number = self.sequence;
            let mut message = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request.message));
            message.finalize();
            let start = datagram.len();
            // Messages are 4-byte aligned in a datagram; buffer_len() already includes the padding.
            datagram.resize(start + message.buffer_len(), 0);
            message.serialize(&mut datagram[start..]);
        }
        datagram
    }

    /// Reads one datagram into `buffer` (replacing its content).
    fn receive(&self, buffer: &mut Vec<u8>) -> io::Result<()> {
        buffer.clear();
        // SAFETY: recv writes at most `capacity` bytes into the vector's allocation; only the bytes it wrote are
        // then made part of the vector.
        let n = unsafe {
            libc::recv(self.socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.capacity(), libc::MSG_TRUNC)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n > buffer.capacity() {
            return Err(io::Error::other(format!("netlink answer of {n} bytes does not fit the buffer")));
        }
        // SAFETY: the kernel initialised the first n bytes.
        unsafe { buffer.set_len(n) };
        Ok(())
    }
}

/// One message of an answer.
enum Reply<'a> {
    /// The acknowledgement (0) or the error (a negative errno) that ends the answer to a request.
    Done(i32),
    /// Anything else: the payload, after the netlink header.
    Message(&'a [u8]),
}

/// The messages of one datagram, with their sequence numbers.
fn split(mut datagram: &[u8]) -> io::Result<Vec<(u32, Reply<'_>)>> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, format!("netlink answer: {e}"));
    let mut messages = Vec::new();
    while !datagram.is_empty() {
        let message = NetlinkBuffer::new_checked(datagram).map_err(|e| invalid(e.to_string()))?;
        let payload = message.payload();
        let reply = if message.message_type() == NLMSG_ERROR {
            let code = payload.get(..4).ok_or_else(|| invalid("short error message".into()))?;
            Reply::Done(i32::from_ne_bytes(code.try_into().expect("4 bytes")))
        } else {
            Reply::Message(payload)
        };
        messages.push((message.sequence_number(), reply));
        // Messages are 4-byte aligned; the last one may come without its padding.
        let length = (message.length() as usize + 3) & !3;
        datagram = datagram.get(length..).unwrap_or_default();
    }
    Ok(messages)
}
