//! The blocking, batched transport, for the CNI plugin: plain send/recv on the calling thread, no async runtime.
//! Requests whose order is fixed go out together in one datagram: the kernel handles the messages of a datagram
//! one after the other, in order, and answers each, so a batch costs one round trip.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NLM_F_ACK};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::SocketAddr;

use crate::error::{Action, Error, Operation};
use crate::netns;
use crate::request::{Answer, Outcome, Reply, Request};

/// Larger than any datagram the kernel sends on a netlink socket by default (it caps a dump's datagrams at
/// 32 KiB); a datagram that does not fit is an error, never silently cut.
const RECV_BUFFER: usize = 64 * 1024;

/// How many bytes of requests [`Socket::apply_changes`] puts in one datagram: about 1,300 neighbours, FDB
/// entries or routes, well within the kernel's default send buffer (212,992 bytes).
pub const CHANGE_DATAGRAM_BYTES: usize = 64 * 1024;

/// The receive buffer [`Socket::apply_changes`] asks for: each refusal costs about a kilobyte of it.
const CHANGE_RECEIVE_BUFFER: usize = 4 << 20;

/// Requests per datagram when a datagram's verdicts were lost and it is sent again, each acknowledged: their
/// acknowledgements fit in the default receive buffer.
const RESEND_WINDOW: usize = 64;

/// Sets NLM_F_ACK on the netlink message at the start of `message`.
fn set_acknowledge(message: &mut [u8]) {
    const FLAGS: std::ops::Range<usize> = 6..8;
    let flags = u16::from_ne_bytes([message[FLAGS.start], message[FLAGS.start + 1]]) | NLM_F_ACK;
    message[FLAGS].copy_from_slice(&flags.to_ne_bytes());
}

fn socket_error(e: io::Error) -> Error {
    Error::Io { operation: Operation::socket(Action::Exchange), source: e }
}

/// A netlink socket used synchronously.
pub struct Socket {
    socket: netlink_sys::Socket,
    sequence: u32,
    buffer: Vec<u8>,
    /// Whether the kernel's receive buffer was sized already (by [`Socket::apply_changes`] or the owner).
    receive_buffer_sized: bool,
}

impl Socket {
    /// A socket in the calling thread's netns.
    pub fn open() -> Result<Socket, Error> {
        Socket::from_socket(netns::route_socket(0).map_err(open_error)?)
    }

    /// A socket inside the network namespace behind `netns` (see [`netns::in_netns`]).
    pub fn open_in(netns: &File) -> Result<Socket, Error> {
        Socket::from_socket(netns::in_netns(netns, || netns::route_socket(0)).map_err(open_error)?)
    }

    /// [`Socket::open_in`] without a thread: the calling thread enters `netns` and comes back
    /// ([`netns::on_this_thread_in`]). For single-threaded programs without an async runtime (the CNI plugin).
    pub fn open_in_on_this_thread(netns: &File) -> Result<Socket, Error> {
        Socket::from_socket(netns::on_this_thread_in(netns, || netns::route_socket(0)).map_err(open_error)?)
    }

    /// Uses `socket` (from [`netns::route_socket`] or [`netns::route_socket_at`]).
    pub fn from_socket(socket: netlink_sys::Socket) -> Result<Socket, Error> {
        // Connected to the kernel, so that plain send() reaches it and only the kernel's answers come back.
        socket.connect(&SocketAddr::new(0, 0)).map_err(open_error)?;
        Ok(Socket { socket, sequence: 0, buffer: Vec::with_capacity(RECV_BUFFER), receive_buffer_sized: false })
    }

    /// Sizes the kernel's receive buffer for this socket (see [`netns::set_receive_buffer`]), instead of the
    /// size [`Socket::apply_changes`] would ask for.
    pub fn set_receive_buffer(&mut self, bytes: usize) {
        netns::set_receive_buffer(&self.socket, bytes);
        self.receive_buffer_sized = true;
    }

    /// Sends one request and waits for its answer.
    pub fn request(&mut self, request: Request) -> Outcome {
        self.batch(vec![request])?.pop().unwrap_or_else(|| Err(socket_error(io::Error::other("no answer"))))
    }

    /// Sends `requests` in one datagram and returns their answers in the same order. The outer error is the
    /// socket's; each answer carries the kernel's verdict on its request. The kernel runs one dump at a time per
    /// socket (a second one in the same datagram fails with EBUSY), so a batch with several dumps goes out as
    /// several datagrams, one dump in each.
    pub fn batch(&mut self, requests: Vec<Request>) -> Result<Vec<Outcome>, Error> {
        let mut answers = Vec::with_capacity(requests.len());
        for datagram in one_dump_each(requests) {
            answers.extend(self.send_datagram(datagram)?);
        }
        Ok(answers)
    }

    /// Sends many change requests (adds, replaces, deletes) with few system calls and returns their answers in
    /// order: up to [`CHANGE_DATAGRAM_BYTES`] of requests go out in one datagram, and only the last of each asks
    /// for an acknowledgement, so the kernel answers the others only when it refuses them (each refusal carries
    /// its request's sequence number, so every request still gets its own verdict). The kernel handles a
    /// datagram's messages in order before `send` returns, so the last acknowledgement means all are settled.
    ///
    /// If refusals overflow the receive buffer (ENOBUFS: some verdicts were lost), the datagram's requests are
    /// sent again one acknowledged request each, in small datagrams. So the requests must be safe to repeat:
    /// replaces, deletes whose "not found" the caller accepts, creates whose "exists" it accepts.
    pub fn apply_changes(&mut self, requests: &[Request]) -> Result<Vec<Outcome>, Error> {
        if requests.iter().any(Request::is_dump) {
            // A dump's answer needs every message read; batch() sends each with its own datagram's worth.
            return self.batch(requests.to_vec());
        }
        if !self.receive_buffer_sized {
            // Room for a datagram's worth of refusals (a kilobyte or so each) before any is lost.
            self.set_receive_buffer(CHANGE_RECEIVE_BUFFER);
        }
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut rest = requests;
        let mut datagram = Vec::with_capacity(CHANGE_DATAGRAM_BYTES + 1024);
        while !rest.is_empty() {
            datagram.clear();
            let first = self.sequence.wrapping_add(1);
            let mut count = 0;
            let mut last_at = 0;
            for request in rest {
                if count > 0 && datagram.len() >= CHANGE_DATAGRAM_BYTES {
                    break;
                }
                self.sequence = self.sequence.wrapping_add(1);
                last_at = datagram.len();
                request.append_to(self.sequence, false, &mut datagram);
                count += 1;
            }
            set_acknowledge(&mut datagram[last_at..]);
            let (sent, later) = rest.split_at(count);
            rest = later;
            self.socket.send(&datagram, 0).map_err(socket_error)?;
            match self.collect_refusals(first, sent) {
                Ok(answers) => outcomes.extend(answers),
                Err(e) if e.errno() == Some(libc::ENOBUFS) => {
                    self.drain()?;
                    outcomes.extend(self.resend_acknowledged(sent)?);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(outcomes)
    }

    /// The answers to `sent` (numbered from `first`, only the last acknowledged): every request the kernel did not
    /// refuse succeeded once the last one is answered.
    fn collect_refusals(&mut self, first: u32, sent: &[Request]) -> Result<Vec<Outcome>, Error> {
        let count = sent.len();
        let mut answers: Vec<Answer> = (0..count).map(|_| Answer::default()).collect();
        let mut last_done = false;
        while !last_done {
            self.receive()?;
            for (sequence, reply) in split(&self.buffer)? {
                let index = sequence.wrapping_sub(first) as usize;
                if index < count {
                    let done = answers[index].absorb(reply);
                    last_done |= done && index == count - 1;
                }
            }
        }
        Ok(answers.into_iter().zip(sent).map(|(answer, request)| answer.finish(request.operation())).collect())
    }

    /// Sends `requests` again, each acknowledged, [`RESEND_WINDOW`] to a datagram, halving the window whenever the
    /// acknowledgements overflow the receive buffer too (one always fits).
    fn resend_acknowledged(&mut self, requests: &[Request]) -> Result<Vec<Outcome>, Error> {
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut window = RESEND_WINDOW;
        let mut rest = requests;
        while !rest.is_empty() {
            let (now, later) = rest.split_at(window.min(rest.len()));
            match self.send_datagram(now.to_vec()) {
                Ok(answers) => {
                    outcomes.extend(answers);
                    rest = later;
                }
                Err(e) if e.errno() == Some(libc::ENOBUFS) && window > 1 => {
                    self.drain()?;
                    window /= 2;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(outcomes)
    }

    /// Reads and drops whatever answers are queued, without waiting.
    fn drain(&mut self) -> Result<(), Error> {
        loop {
            // SAFETY: as in receive: recv writes at most `capacity` bytes into the vector's allocation, and the
            // vector's length is left alone.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    self.buffer.as_mut_ptr().cast(),
                    self.buffer.capacity(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(()),
                    // A further overrun notice: keep draining.
                    Some(libc::ENOBUFS) | Some(libc::EINTR) => continue,
                    _ => return Err(socket_error(e)),
                }
            }
        }
    }

    fn send_datagram(&mut self, requests: Vec<Request>) -> Result<Vec<Outcome>, Error> {
        let first = self.sequence.wrapping_add(1);
        let mut datagram = Vec::new();
        let mut operations = Vec::with_capacity(requests.len());
        for request in requests {
            self.sequence = self.sequence.wrapping_add(1);
            operations.push(request.operation());
            datagram.extend(request.to_bytes(self.sequence));
        }
        let count = operations.len();
        self.socket.send(&datagram, 0).map_err(socket_error)?;
        let mut answers: Vec<Answer> = (0..count).map(|_| Answer::default()).collect();
        let mut complete = vec![false; count];
        while complete.iter().any(|done| !done) {
            self.receive()?;
            for (sequence, reply) in split(&self.buffer)? {
                let index = sequence.wrapping_sub(first) as usize;
                // An answer to an earlier, abandoned request: nobody waits for it.
                if index < count && !complete[index] {
                    complete[index] = answers[index].absorb(reply);
                }
            }
        }
        Ok(answers.into_iter().zip(operations).map(|(answer, operation)| answer.finish(operation)).collect())
    }

    /// Reads one datagram into the buffer (replacing its content).
    fn receive(&mut self) -> Result<(), Error> {
        let buffer = &mut self.buffer;
        buffer.clear();
        // SAFETY: recv writes at most `capacity` bytes into the vector's allocation; only the bytes it wrote are
        // then made part of the vector.
        let n = unsafe {
            libc::recv(self.socket.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.capacity(), libc::MSG_TRUNC)
        };
        if n < 0 {
            return Err(socket_error(io::Error::last_os_error()));
        }
        let n = n as usize;
        if n > buffer.capacity() {
            return Err(socket_error(io::Error::other(format!("netlink answer of {n} bytes does not fit the buffer"))));
        }
        // SAFETY: the kernel initialised the first n bytes.
        unsafe { buffer.set_len(n) };
        Ok(())
    }
}

fn open_error(e: io::Error) -> Error {
    Error::Io { operation: Operation::socket(Action::Open), source: e }
}

/// `requests` in order, cut so that no part holds more than one dump.
fn one_dump_each(requests: Vec<Request>) -> Vec<Vec<Request>> {
    let mut parts: Vec<Vec<Request>> = vec![Vec::new()];
    for request in requests {
        let current = parts.last_mut().expect("never empty");
        if request.is_dump() && current.iter().any(Request::is_dump) {
            parts.push(vec![request]);
        } else {
            current.push(request);
        }
    }
    parts
}

/// The messages of one datagram, decoded, with their sequence numbers.
fn split(mut datagram: &[u8]) -> Result<Vec<(u32, Reply)>, Error> {
    let invalid = |e: String| Error::Invalid { operation: Operation::socket(Action::Exchange), detail: e };
    let mut messages = Vec::new();
    while !datagram.is_empty() {
        let buffer = NetlinkBuffer::new_checked(datagram).map_err(|e| invalid(e.to_string()))?;
        let length = buffer.length() as usize;
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[..length])
            .map_err(|e| invalid(e.to_string()))?;
        messages.push((message.header.sequence_number, Reply::of(message.payload)));
        // Messages are 4-byte aligned; the last one may come without its padding.
        datagram = datagram.get((length + 3) & !3..).unwrap_or_default();
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{ErrorMessage, NetlinkHeader, NetlinkPayload};

    use super::*;
    use crate::link;

    fn serialized(sequence: u32, payload: NetlinkPayload<RouteNetlinkMessage>) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = sequence;
        let mut message = NetlinkMessage::new(header, payload);
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes.resize((bytes.len() + 3) & !3, 0);
        bytes
    }

    #[test]
    fn sends_one_dump_per_datagram() {
        use crate::route::{dump, RouteFilter};
        let filter = RouteFilter::main_table();
        let requests =
            vec![link::get(link::LinkRef::Index(1)), dump(false, &filter), link::dump(), dump(true, &filter)];
        let sizes: Vec<usize> = one_dump_each(requests).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 1, 1]);
        assert_eq!(one_dump_each(vec![link::get(link::LinkRef::Index(1))]).len(), 1);
    }

    #[test]
    fn splits_a_datagram_of_answers() {
        let mut refusal = ErrorMessage::default();
        refusal.code = std::num::NonZeroI32::new(-libc::EEXIST);
        let RouteNetlinkMessage::NewLink(link) = link::create_bridge("cni0", 1500, [2; 6]).message().unwrap().clone()
        else {
            panic!()
        };
        let mut datagram = serialized(3, NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)));
        datagram.extend(serialized(3, NetlinkPayload::Error(ErrorMessage::default())));
        datagram.extend(serialized(4, NetlinkPayload::Error(refusal)));
        let replies = split(&datagram).unwrap();
        assert_eq!(replies.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![3, 3, 4]);
        assert!(matches!(replies[0].1, Reply::Object(RouteNetlinkMessage::NewLink(_))));
        assert!(matches!(replies[1].1, Reply::Done));
        assert!(matches!(replies[2].1, Reply::Refused(libc::EEXIST)));
        assert!(split(&datagram[..10]).is_err(), "a cut message is an error");
    }
}
