//! Reaching into a container's network namespace without moving any thread the async runtime uses: a short-lived
//! OS thread enters the netns, opens a netlink socket there (a socket stays in the netns it was created in) and
//! exits. The socket is then driven from the plugin's single-threaded runtime like the host one.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
use rtnetlink::Handle;

use crate::error::{CniError, Result};

/// Opens the netns file; kept open while the container side is configured so the netns cannot go away under us.
pub fn open(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// A netlink socket inside `netns`, created by a thread that entered it.
pub fn socket_in(netns: &File) -> Result<Socket> {
    spawn_socket_in(netns)?.join()
}

/// The thread of [`socket_in`], started so that the caller can do other work meanwhile.
pub struct PendingSocket(std::thread::JoinHandle<io::Result<Socket>>);

pub fn spawn_socket_in(netns: &File) -> Result<PendingSocket> {
    let netns = netns.try_clone().map_err(|e| CniError::io("duplicating the netns file descriptor", e))?;
    // It needs next to no stack; a small one is quicker to map.
    let thread = std::thread::Builder::new().stack_size(64 * 1024).spawn(move || -> io::Result<Socket> {
        // This thread is ours alone and ends right after, so leaving it in the container's netns is harmless.
        setns(&netns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        Socket::new(NETLINK_ROUTE)
    });
    thread.map(PendingSocket).map_err(|e| CniError::io("starting a thread to enter CNI_NETNS", e))
}

impl PendingSocket {
    pub fn join(self) -> Result<Socket> {
        self.0
            .join()
            .map_err(|_| CniError::io("entering the container netns", io::Error::other("thread panicked")))?
            .map_err(|e| CniError::io("opening a netlink socket inside CNI_NETNS", e))
    }
}

/// A netlink handle for the current thread's netns (the host's), or for a socket from [`socket_in`]. Must be
/// called inside the runtime; the connection task is spawned on it.
pub fn handle(socket: Option<Socket>) -> Result<Handle> {
    let (connection, handle, _) = match socket {
        None => rtnetlink::new_connection().map_err(|e| CniError::io("opening a netlink socket", e))?,
        Some(socket) => {
            // SAFETY: the fd comes straight from a Socket we own and is handed over exactly once.
            let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
            rtnetlink::from_socket(socket)
        }
    };
    tokio::spawn(connection);
    Ok(handle)
}

/// SO_NETNS_COOKIE (Linux 5.14+; asm-generic value, not in the libc crate yet).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// An identifier of the calling thread's netns that is never reused while the machine runs: the netns cookie
/// (an inode number can come back for a later netns). Falls back on the inode on kernels without cookies.
pub fn current_id() -> io::Result<String> {
    // SAFETY: plain socket/getsockopt/close on an fd we own, with a correctly sized output buffer.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd >= 0 {
            let mut cookie: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            let rc =
                libc::getsockopt(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, (&mut cookie as *mut u64).cast(), &mut len);
            libc::close(fd);
            if rc == 0 {
                return Ok(format!("c{cookie}"));
            }
        }
    }
    use std::os::unix::fs::MetadataExt;
    Ok(format!("i{}", std::fs::metadata("/proc/thread-self/ns/net")?.ino()))
}
