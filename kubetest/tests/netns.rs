//! The server started from a thread inside another network namespace listens there again after an outage,
//! although the outage is handled on tokio workers in the root namespace (as in the lab). Root only: it creates a
//! network namespace (private to one thread, gone when the test ends) and never skips.

mod common;

use std::process::Command;

use weft_kube_testserver::TestApiServer;

#[test]
fn outage_recovery_listens_again_in_the_namespace_the_server_started_in() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test creates a network namespace and must run as root; it never skips");
    // Workers are created here, in the root namespace.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let handle = runtime.handle().clone();
    let port = std::thread::spawn(move || {
        // SAFETY: unshare of the network namespace affects this thread only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET)");
        // A child process starts in its parent thread's namespace: this brings up the new namespace's loopback.
        let up = Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("run ip");
        assert!(up.success(), "ip link set lo up");
        handle.block_on(async {
            let server = TestApiServer::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
            assert_eq!(common::get(server.addr(), "/version").await.status, 200);
            server.set_outage(true).await;
            server.set_outage(false).await;
            // Connecting from this thread (inside the namespace) reaches the server again.
            assert_eq!(common::get(server.addr(), "/version").await.status, 200);
            let port = server.addr().port();
            server.shutdown().await;
            port
        })
    })
    .join()
    .expect("the namespace thread");
    // Nothing of it leaked into the root namespace.
    let root = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(root.is_err(), "the server listened again in the root namespace");
}
