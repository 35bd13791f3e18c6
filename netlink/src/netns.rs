//! Network namespaces: the one way to get a netlink socket inside one (a short-lived thread enters the netns,
//! opens the socket and exits; a socket keeps acting on the netns it was created in), and the netns identity
//! the CNI plugin keys its state on. No thread that runs anything else ever changes namespace; the single-threaded
//! CNI plugin enters the container's and comes back on its one thread (cheaper than a thread per ADD).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use netlink_sys::{protocols::NETLINK_ROUTE, SocketAddr};

/// The netlink socket these functions open; the transports take it.
pub use netlink_sys::Socket;

/// Runs `open` on a new thread that entered the network namespace behind `netns` and exits right after.
pub fn in_netns<T: Send>(netns: &File, open: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new().name("weft-netns".into()).spawn_scoped(scope, || {
            enter_for_good(netns)?;
            open()
        })?;
        worker.join().map_err(|_| io::Error::other("the netns thread panicked"))?
    })
}

/// Runs `open` on the calling thread inside the network namespace behind `netns`, and moves the thread back before
/// returning, also when `open` fails. Two setns calls cost less than a thread (the CNI plugin's ADD is ~3 ms, a
/// thread ~0.1 ms of it); only for a program that runs nothing else meanwhile: a single-threaded one with no
/// async runtime, like the plugin. If the thread cannot get back, the process aborts rather than go on working
/// in a container's namespace.
pub fn on_this_thread_in<T>(netns: &File, open: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let home = File::open("/proc/thread-self/ns/net")?;
    enter_for_good(netns)?;
    let result = open();
    if let Err(e) = enter_for_good(&home) {
        eprintln!("weft: cannot return to the original network namespace ({e}); aborting");
        std::process::abort();
    }
    result
}

/// [`in_netns`] for the namespace file at `path` (e.g. /run/netns/foo); errors name the path.
pub fn in_netns_at<T: Send>(path: &Path, open: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let described = |e: io::Error| io::Error::new(e.kind(), format!("entering netns {}: {e}", path.display()));
    let netns = File::open(path).map_err(described)?;
    in_netns(&netns, open).map_err(described)
}

/// Moves the calling thread into the network namespace behind `netns`, for good. Only for a thread that exists
/// to work in that namespace and runs nothing else (see [`in_netns`]).
pub fn enter_for_good(netns: &File) -> io::Result<()> {
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// A NETLINK_ROUTE socket in the calling thread's netns, subscribed to `groups` (see [`crate::event::groups`])
/// when not 0. Dumps on it are filtered strictly by the kernel where it can (NETLINK_GET_STRICT_CHK, Linux 4.20+);
/// on older kernels the codecs' filters still apply.
pub fn route_socket(groups: u32) -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    if groups != 0 {
        socket.bind(&SocketAddr::new(0, groups))?;
    }
    let _ = socket.set_netlink_get_strict_chk(true);
    Ok(socket)
}

/// [`route_socket`] inside the network namespace at `path`.
pub fn route_socket_at(path: &Path, groups: u32) -> io::Result<Socket> {
    in_netns_at(path, || route_socket(groups))
}

/// Sets the socket's receive buffer to `bytes`: SO_RCVBUFFORCE (root may exceed rmem_max), else SO_RCVBUF.
/// Best effort: a smaller buffer only makes overruns likelier, and those are reported.
pub fn set_receive_buffer(socket: &Socket, bytes: usize) {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on a valid socket with a pointer to a c_int and its exact length.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// SO_NETNS_COOKIE (Linux 5.14+; asm-generic value, not in the libc crate yet).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// Whether `netns` is the network namespace the calling thread runs in (for a plugin the runtime started, the
/// host's): configuring it as a container's would move the host's own interfaces and addresses around.
pub fn is_current(netns: &File) -> io::Result<bool> {
    let theirs = netns.metadata()?;
    let ours = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok((theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()))
}

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
    Ok(format!("i{}", std::fs::metadata("/proc/thread-self/ns/net")?.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_netns_has_a_stable_id() {
        let id = current_id().unwrap();
        assert!(id.starts_with('c') || id.starts_with('i'), "{id}");
        assert_eq!(current_id().unwrap(), id);
    }

    #[test]
    fn a_missing_netns_is_named_in_the_error() {
        let missing = in_netns_at(Path::new("/nonexistent/netns"), current_id).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/netns"), "{missing}");
    }
}
