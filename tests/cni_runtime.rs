//! A real runtime calls the plugin: containerd 1.6 `ctr run --cni` starts a busybox container (no image; a rootfs
//! directory) in a lab host's netns. ctr has no options for CNI directories, so the test adds one uniquely named
//! conflist to /etc/cni/net.d (sorting first, as ctr takes the lexically first) and one symlink to /opt/cni/bin, and
//! removes both, plus any of those directories (and containerd's own /run/containerd, /opt/containerd) that did not
//! exist before. containerd itself runs with a temp root, state and socket. Root only; needs `scripts/deps`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::system_paths::{need, SystemPaths};
use common::{require_root, TestLab};
use serde_json::json;

const PLUGIN: &str = env!("CARGO_BIN_EXE_weft");

/// containerd, stopped by its pid on drop.
struct Containerd(Child);

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn containerd_ctr_run_cni_attaches_through_weft() {
    require_root();
    let (containerd, ctr, busybox) = (need("containerd"), need("ctr"), need("busybox"));
    need("runc");
    let tag = format!("wct{}", std::process::id());
    let tmp = std::env::temp_dir().join(format!("{tag}-ctrd"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("rootfs/bin")).unwrap();
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(tmp.clone());

    let lab = TestLab::without_weftd(1);
    let subnet_file = tmp.join("subnet.env");
    std::fs::write(
        &subnet_file,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.9.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();

    // A busybox rootfs.
    let rootfs = tmp.join("rootfs");
    for d in ["proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(&busybox, rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "ip", "ping"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }

    let mut system = SystemPaths::default();
    system.watch("/run/containerd");
    system.watch("/opt/containerd");
    system.dir(Path::new("/etc/cni/net.d"));
    system.dir(Path::new("/opt/cni/bin"));
    let plugin_name = format!("{tag}-weft");
    let link = Path::new("/opt/cni/bin").join(&plugin_name);
    std::os::unix::fs::symlink(PLUGIN, &link).unwrap();
    system.files.push(link);
    let ipam = tmp.join("ipam");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": tag,
        "plugins": [{"type": plugin_name, "subnetFile": subnet_file, "ipMasq": false, "ipam": {"dataDir": ipam}}],
    });
    let conf_path = Path::new("/etc/cni/net.d").join(format!("00-{tag}.conflist"));
    std::fs::write(&conf_path, conflist.to_string()).unwrap();
    system.files.push(conf_path);

    let config = tmp.join("containerd.toml");
    let socket = tmp.join("containerd.sock");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{ttrpc}\"\n",
            root = tmp.join("root").display(),
            state = tmp.join("state").display(),
            sock = socket.display(),
            ttrpc = tmp.join("containerd-ttrpc.sock").display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(tmp.join("containerd.log")).unwrap();
    let _daemon = Containerd(
        Command::new(&containerd)
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while !socket.exists() {
        assert!(started.elapsed() < Duration::from_secs(20), "containerd did not create {}", socket.display());
        std::thread::sleep(Duration::from_millis(50));
    }

    // ctr in the lab host's netns (nsenter, not `ip netns exec`, which remounts /sys and hides the cgroups).
    let container = format!("{tag}c");
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.host_ns(1)))
        .arg(&ctr)
        .arg("--address")
        .arg(&socket)
        .args(["run", "--rm", "--cni", "--rootfs"])
        .arg(&rootfs)
        .arg(&container)
        .args(["/bin/sh", "-c", "ip -4 -o addr show eth0; ping -c1 -W2 10.244.9.1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(tmp.join("containerd.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "ctr run failed: {}\nstdout: {stdout}\ncontainerd log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("inet 10.244.9.") && stdout.contains("1 packets received"), "{stdout}");
    // ctr's DEL came with an empty CNI_NETNS (the task was gone); the address was released all the same.
    let store = ipam.join(&tag);
    let left: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(left.is_empty(), "allocations left in {}: {left:?}", store.display());
    let veths = lab.exec_in(&lab.host_ns(1), ["ip", "-o", "link", "show", "type", "veth"]).unwrap();
    assert!(!String::from_utf8_lossy(&veths.stdout).contains(": veth"), "no veth left behind");
}
