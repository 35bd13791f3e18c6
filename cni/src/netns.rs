//! Reaching into a container's network namespace without moving any thread the async runtime uses: the calling
//! thread enters the netns, opens a netlink socket there (a socket stays in the netns it was created in) and goes
//! straight back, before any runtime exists. The socket is then used like the host one.

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

/// Whether `netns` is the network namespace this thread runs in (the host's, for a plugin the runtime started):
/// configuring it as a container's would move host interfaces and addresses around.
pub fn is_own(netns: &File) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let theirs = netns.metadata()?;
    let ours = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok((theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()))
}

/// A netlink socket inside `netns`, created by the calling thread, which is back in its own netns on return, also
/// on errors. Two setns calls cost less than a thread that does it for us. Call it only while nothing else runs on
/// this thread (no async runtime yet), so no other code ever sees the container's netns.
pub fn socket_in(netns: &File) -> Result<Socket> {
    // Our own netns to come back to, held open so it is the very one we left.
    let home = File::open("/proc/thread-self/ns/net").map_err(|e| CniError::io("opening our own netns", e))?;
    setns(netns, CloneFlags::CLONE_NEWNET).map_err(|e| CniError::io("entering CNI_NETNS", io::Error::from(e)))?;
    let socket = Socket::new(NETLINK_ROUTE);
    // Back first, whatever the socket's fate.
    if let Err(e) = setns(&home, CloneFlags::CLONE_NEWNET) {
        // Cannot happen in practice (the same privilege just let us in). Going on would run host-side work in the
        // container's netns, and callers (DEL) may treat our errors as "no container side": stop here instead.
        // Every command opens this socket before it changes anything, so there is nothing to undo.
        eprintln!("weft-cni: could not return from CNI_NETNS to our own netns: {e}");
        std::process::abort();
    }
    socket.map_err(|e| CniError::io("opening a netlink socket inside CNI_NETNS", e))
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
