//! The TUN device through /dev/net/tun ioctls (libc): one file per queue of a multi-queue device, optionally with
//! a virtio-net header in front of every packet and the kernel's TSO/USO offloads switched on.
//!
//! Direct ioctls rather than tun-rs: the data plane needs the queue files, four ioctls and read/write, and
//! nothing of tun-rs's address management or async wrappers (docs/backends.md, "udp").
//!
//! The device is made persistent, so it outlives weftd: a restarted weftd re-attaches its queues, and the
//! address, MTU and route stay in place meanwhile (packets arriving while no queue is attached are dropped by
//! the kernel, which is the restart's only loss).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags, padded to the kernel's 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("opening /dev/net/tun: {0}")]
    Open(#[source] io::Error),
    #[error("TUN device name {0:?} is longer than 15 bytes or contains a NUL")]
    BadName(String),
    #[error("attaching a queue to TUN device {device} ({what}): {source}")]
    Ioctl {
        device: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What the kernel may hand over in one TUN read when offloads are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunOffloads {
    /// TCP segmentation offload (TSO4/TSO6, with checksum offload).
    pub tso: bool,
    /// UDP segmentation offload (USO4/USO6, kernel 6.2 and later).
    pub uso: bool,
}

/// One queue of the TUN device.
#[derive(Debug)]
pub struct TunQueue {
    fd: OwnedFd,
    pub vnet_hdr: bool,
}

impl TunQueue {
    /// Opens (creating the device if needed) one queue of multi-queue TUN `name`. With `vnet_hdr`, every read and
    /// write carries a virtio-net header, and TSO (and USO where the kernel has it) are switched on.
    pub fn open(name: &str, vnet_hdr: bool) -> Result<(TunQueue, TunOffloads), TunError> {
        let cname = CString::new(name).map_err(|_| TunError::BadName(name.into()))?;
        if cname.as_bytes().len() >= libc::IFNAMSIZ {
            return Err(TunError::BadName(name.into()));
        }
        // SAFETY: a plain open(2) of a path constant; the result is checked before use.
        let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(TunError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a freshly opened descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
        req.name[..cname.as_bytes().len()].copy_from_slice(cname.as_bytes());
        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;
        if vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        req.flags = flags as libc::c_short;
        let err =
            |what: &'static str| TunError::Ioctl { device: name.into(), what, source: io::Error::last_os_error() };
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `req` is laid out as.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } < 0 {
            return Err(err("TUNSETIFF"));
        }
        // SAFETY: TUNSETPERSIST takes an integer argument by value.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
            return Err(err("TUNSETPERSIST"));
        }
        let mut offloads = TunOffloads { tso: false, uso: false };
        if vnet_hdr {
            let tso = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
            let uso = libc::TUN_F_USO4 | libc::TUN_F_USO6;
            // SAFETY: TUNSETOFFLOAD takes the offload bits by value.
            if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, (tso | uso) as libc::c_ulong) } == 0 {
                offloads = TunOffloads { tso: true, uso: true };
            // SAFETY: as above; kernels before 6.2 refuse the USO bits, so TSO alone is tried next.
            } else if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, tso as libc::c_ulong) } == 0 {
                offloads.tso = true;
            } else {
                return Err(err("TUNSETOFFLOAD"));
            }
        } else {
            // A queue opened earlier with offloads (by a previous weftd) must not hand us super-packets now.
            // SAFETY: TUNSETOFFLOAD takes the offload bits by value.
            if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
                return Err(err("TUNSETOFFLOAD"));
            }
        }
        Ok((TunQueue { fd, vnet_hdr }, offloads))
    }

    /// Switches reads to non-blocking (the file is this queue's own, so writes from another thread are
    /// unaffected in practice: TUN writes never wait).
    pub fn set_nonblocking(&self) -> io::Result<()> {
        // SAFETY: fcntl on a descriptor we own.
        let flags = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One packet (with its virtio header when `vnet_hdr`) into `buf`; WouldBlock when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// One packet (with its virtio header when `vnet_hdr`) to the kernel.
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: `packet` is valid for reads of its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Blocks until a packet can be read or `timeout_ms` passes.
    pub fn wait_readable(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
        }
        Ok(n > 0)
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
