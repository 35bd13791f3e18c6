//! The wireguard backend's data-path choice on this machine's kernel, which has no WireGuard module: the automatic
//! choice falls back to userspace and says why; forcing the kernel path fails with an error saying the kernel
//! cannot create a WireGuard device. Runs in a namespace of its own (the probe creates and deletes a device).
//! Root only.

mod common;

use std::fs::File;
use std::process::Command;

use weft_backends::wireguard::kernel_device::{choose_in, DataPath, PathChoice, PATH_ENV};

/// A network namespace for this test, deleted when dropped (also on panic).
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("wgpath-{}", std::process::id());
        let status = Command::new("ip").args(["netns", "add", &name]).status().unwrap();
        assert!(status.success(), "ip netns add {name}");
        Netns(name)
    }

    fn file(&self) -> File {
        File::open(format!("/run/netns/{}", self.0)).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn kernel_has_wireguard(netns: &Netns) -> bool {
    let out =
        Command::new("ip").args(["-n", &netns.0, "link", "add", "wgcheck", "type", "wireguard"]).output().unwrap();
    out.status.success()
}

#[test]
fn without_a_kernel_module_auto_is_userspace_and_forcing_the_kernel_is_a_clear_error() {
    common::require_root();
    let netns = Netns::new();
    // This test is about a kernel without WireGuard (like this machine's); `ip` is the independent witness.
    assert!(!kernel_has_wireguard(&netns), "this kernel has WireGuard; the fallback cannot be observed here");

    let auto = choose_in(PathChoice::Auto, &netns.file()).unwrap();
    assert_eq!(auto.path, DataPath::Userspace);
    let said = auto.to_string();
    eprintln!("auto: {said}");
    assert!(said.starts_with("userspace (the kernel cannot create a WireGuard device: "), "{said}");
    assert!(said.contains("Operation not supported"), "{said}");

    let forced = choose_in(PathChoice::Forced(DataPath::Kernel), &netns.file()).unwrap_err().to_string();
    assert!(
        forced.starts_with(&format!("{PATH_ENV}=kernel, but this kernel cannot create a WireGuard device")),
        "{forced}"
    );
    assert!(forced.contains("Operation not supported"), "{forced}");

    let userspace = choose_in(PathChoice::Forced(DataPath::Userspace), &netns.file()).unwrap();
    assert_eq!(userspace.path, DataPath::Userspace);
    assert_eq!(userspace.to_string(), format!("userspace (forced by {PATH_ENV})"));

    // The probe leaves nothing behind.
    let links = Command::new("ip").args(["-n", &netns.0, "-o", "link", "show"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("wgprobe"));
}
