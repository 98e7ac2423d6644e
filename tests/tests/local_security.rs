//! What a hostile local user can try against the daemon (issue 25): take its sockets or
//! paths, exhaust its file descriptors, hold its ports, reach its API from a web page. Each
//! case checks that the attempt fails and that the switch keeps serving its VMs.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use vringswitch_tests::daemon::{http_request, Daemon, TempDir};
use vringswitch_tests::frontend::{TestVm, VmOptions};
use vringswitch_tests::process::open_fds;
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{frame, mac, wait_until};

/// a sends a frame to b and b gets it, intact.
fn forwards(s: &Setup, a: &mut TestVm, b: &mut TestVm, seed: u8) {
    let f = frame(mac(2), mac(1), 80, seed);
    a.send(TestVm::tx(0), &f);
    let got = b.expect_frames(TestVm::rx(0), 1, T);
    assert_eq!(
        got[0].frame,
        f,
        "frame {seed} through {}",
        s.dir.path().display()
    );
}

/// The relay socket of earlier versions had a path in /tmp anyone could predict and take
/// first (`/tmp/vringswitch-PID-PORT.relay.sock`): something already there must not stop a
/// port from serving its VM.
#[test]
fn a_path_taken_in_tmp_in_advance_does_not_stop_a_port() {
    let s = Setup::new("relay-path", &[("br0", &["a", "b"])], 1);
    let pid = s.daemon.pid();
    let mut taken = Vec::new();
    for port in ["a", "b"] {
        let p = std::env::temp_dir().join(format!("vringswitch-{pid}-{port}.relay.sock"));
        std::fs::create_dir_all(&p).unwrap();
        taken.push(p);
    }
    let mut a = s.vm("a", 1);
    let mut b = s.vm("b", 2);
    s.wait_connected(&["a", "b"]);
    forwards(&s, &mut a, &mut b, 1);
    for p in taken {
        std::fs::remove_dir_all(p).unwrap();
    }
}

/// Connects a test VM to `socket`, trying again while the daemon hangs up on it (it does
/// when it cannot get the descriptors the connection needs), for up to `timeout`.
fn connect_when_served(socket: &std::path::Path, n: u8, timeout: Duration) -> TestVm {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt =
            std::panic::catch_unwind(|| TestVm::connect(socket, mac(n), VmOptions::default()));
        match attempt {
            Ok(vm) => return vm,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

/// Idle API connections held until the daemon has no file descriptor left, a VM
/// connecting meanwhile, then the connections closed: the VM is served, the port can be
/// deleted and SIGTERM stops the daemon. Earlier, the port stayed wedged for good (its
/// connection's exit eventfd could not be made and the library's thread waited forever),
/// DELETE never returned and SIGTERM needed SIGKILL.
#[test]
fn running_out_of_file_descriptors_wedges_nothing() {
    let dir = TempDir::new("fds");
    let sockets = [dir.path().join("a.sock"), dir.path().join("b.sock")];
    let mut toml = String::from("[dataplane]\ncores = [1]\n[[bridges]]\nname = \"br0\"\n");
    for (name, s) in [("a", &sockets[0]), ("b", &sockets[1])] {
        toml.push_str(&format!(
            "[[ports]]\nname = \"{name}\"\nbridge = \"br0\"\ntype = \"vhost-user\"\n\
             socket = \"{}\"\nmode = \"server\"\nqueues = 1\n",
            s.display()
        ));
    }
    let mut d = Daemon::start_under(
        dir.path(),
        &toml,
        &sockets,
        &[],
        &["prlimit", "--nofile=128:128", "--"],
        dir.path(),
    );
    let pid = d.pid();
    let mut b = TestVm::connect(&sockets[1], mac(2), VmOptions::default());
    b.post_rx(TestVm::rx(0), 16, 2048);
    d.wait_port_connected("b", true);

    let mut held = Vec::new();
    for _ in 0..400 {
        if open_fds(pid) >= 127 {
            break;
        }
        if let Ok(c) = TcpStream::connect(&d.api) {
            held.push(c);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    wait_until(T, "the daemon out of file descriptors", || {
        (open_fds(pid) >= 127).then_some(())
    });
    let a_sock = sockets[0].clone();
    let vm_a = std::thread::spawn(move || connect_when_served(&a_sock, 1, Duration::from_secs(60)));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !vm_a.is_finished(),
        "a VM was served with no descriptor left"
    );
    drop(held);
    let mut a = vm_a.join().expect("the VM on port a was never served");
    a.post_rx(TestVm::rx(0), 16, 2048);
    d.wait_port_connected("a", true);
    let f = frame(mac(2), mac(1), 80, 7);
    a.send(TestVm::tx(0), &f);
    assert_eq!(b.expect_frames(TestVm::rx(0), 1, T)[0].frame, f);
    assert!(
        d.log_text().contains("out of file descriptors"),
        "the shortage was not logged: {}",
        d.log_text()
    );

    let started = Instant::now();
    let (code, text) = http_request(&d.api, "DELETE", "/v1/ports/a", None);
    assert_eq!(code, 204, "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "DELETE took {:?}",
        started.elapsed()
    );
    drop(a);
    let status = d.terminate(Duration::from_secs(3));
    assert!(status.success(), "{status}");
    for s in &sockets {
        assert!(!s.exists(), "{} left behind", s.display());
    }
}
