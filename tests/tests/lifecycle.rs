//! Connections come and go: every kind of disconnect leaves the port served again, and
//! nothing of the old connection (fds, threads, mappings) stays behind.

use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::Frontend;
use vhost::VhostBackend;
use vringswitch_tests::daemon::{Daemon, KillOnDrop, TempDir};
use vringswitch_tests::frontend::{TestVm, VmOptions};
use vringswitch_tests::layout::{vhost_user, Layout};
use vringswitch_tests::process::{mappings_of, open_fds, threads};
use vringswitch_tests::setup::Setup;
use vringswitch_tests::{frame, mac, settled_counts, wait_until};

const T: Duration = Duration::from_secs(10);

/// (open fds, threads, guest mappings) of the daemon.
fn resources(pid: u32) -> (usize, usize, usize) {
    (
        open_fds(pid),
        threads(pid),
        mappings_of(pid, "vringswitch-test"),
    )
}

/// `resources` once transients are gone ([`settled_counts`]).
fn settled_resources(pid: u32) -> (usize, usize, usize) {
    let [fds, threads, guest] = settled_counts(|| {
        let (f, t, g) = resources(pid);
        [f, t, g]
    });
    (fds, threads, guest)
}

fn config(dir: &Path) -> (String, Vec<std::path::PathBuf>) {
    let a = dir.join("a.sock");
    let b = dir.join("b.sock");
    let layout = Setup::layout(dir, &[("br0", &["a", "b"])], 1);
    (layout.toml(), vec![a, b])
}

fn ping_pong(s: &Path, b: &mut TestVm, round: u8) {
    let mut a = TestVm::connect(s, mac(1), VmOptions::default());
    a.post_rx(TestVm::rx(0), 8, 2048);
    a.send(TestVm::tx(0), &frame(mac(2), mac(1), 64, round));
    assert_eq!(
        b.expect_frames(TestVm::rx(0), 1, T)[0].frame,
        frame(mac(2), mac(1), 64, round)
    );
}

#[test]
fn disconnects_at_every_stage_leak_nothing() {
    let dir = TempDir::new("lifecycle");
    let (toml, sockets) = config(dir.path());
    let daemon = Daemon::start(dir.path(), &toml, &sockets);
    let pid = daemon.pid();
    let mut b = TestVm::connect(&sockets[1], mac(2), VmOptions::default());
    b.post_rx(TestVm::rx(0), 200, 2048);
    // Ready, not only connected: a frame flooded to b before the workers see its rings is
    // dropped as port_down (that made the first ping_pong fail once in the full suite).
    daemon.wait_port_connected("b", true);

    // Warm up once, then take the baseline with port a disconnected.
    ping_pong(&sockets[0], &mut b, 0);
    let idle = || daemon.wait_port_connected("a", false);
    idle();
    let baseline = settled_resources(pid);

    for round in 1..=40u8 {
        match round % 4 {
            // Connect and hang up at once.
            0 => drop(std::os::unix::net::UnixStream::connect(&sockets[0]).unwrap()),
            // Drop after a few messages, before any memory is shared.
            1 => {
                let fe = Frontend::connect(&sockets[0], 2).unwrap();
                fe.set_owner().unwrap();
                let _ = fe.get_features().unwrap();
            }
            // Drop after SET_MEM_TABLE and the ring setup, with traffic never started.
            2 => drop(TestVm::connect(&sockets[0], mac(1), VmOptions::default())),
            // A full session with traffic.
            _ => ping_pong(&sockets[0], &mut b, round),
        }
        idle();
    }
    // The port is still served.
    ping_pong(&sockets[0], &mut b, 99);
    idle();
    let settled = wait_until(T, "resources back to the baseline", || {
        let r = resources(pid);
        (r == baseline).then_some(r)
    });
    assert_eq!(settled, baseline, "(fds, threads, guest mappings)");
    // Only port b's guest memory is mapped: nothing of port a's 40 connections.
    assert_eq!(
        baseline.2, 1,
        "guest memory mappings while only b is connected"
    );
}

#[test]
fn sigterm_stops_the_daemon_even_with_its_sockets_deleted() {
    let dir = TempDir::new("sigterm");
    let (toml, sockets) = config(dir.path());
    let mut daemon = Daemon::start(dir.path(), &toml, &sockets);
    // One connected peer, one port waiting for a frontend whose socket file is gone.
    let _b = TestVm::connect(&sockets[1], mac(2), VmOptions::default());
    std::fs::remove_file(&sockets[0]).unwrap();
    let status = daemon.terminate(Duration::from_secs(3));
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_bad_config_exits_non_zero_naming_file_line_and_problem() {
    let dir = TempDir::new("badconfig");
    let path = dir.path().join("bad.toml");
    // Text: the line of the error in the file is what is tested.
    std::fs::write(
        &path,
        "[[bridges]]\nname = \"br0\"\n[[ports]]\nname = \"vm1\"\nbridge = \"br9\"\n\
         type = \"vhost-user\"\nsocket = \"/tmp/x.sock\"\nmode = \"server\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(vringswitch_tests::daemon::binary())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("config file {}, line 5", path.display())),
        "{err}"
    );
    assert!(err.contains("\"br9\", which is not defined"), "{err}");
    assert!(!err.contains("Stack backtrace"), "{err}");
}

/// The daemon speaks systemd's notify protocol: READY=1 once it serves, WATCHDOG=1 while its
/// workers run, STOPPING=1 on SIGTERM.
#[test]
fn systemd_hears_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("sdnotify");
    let (toml, sockets) = config(dir.path());
    let path = dir.path().join("vringswitch.toml");
    std::fs::write(&path, toml).unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener.set_read_timeout(Some(T)).unwrap();
    let api = format!("127.0.0.1:{}", vringswitch_tests::daemon::free_port());
    // systemd sets WATCHDOG_PID to the service's pid: the shell's, which exec keeps.
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" --config \"$1\" --api \"$2\"")
        .arg(vringswitch_tests::daemon::binary())
        .arg(&path)
        .arg(&api)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "2000000")
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let next = || {
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).expect("a notify message");
        String::from_utf8_lossy(&buf[..n]).trim().to_owned()
    };
    assert_eq!(next(), "READY=1");
    // READY comes after the API is up and the ports are listening.
    assert!(vringswitch_tests::daemon::http_get(&api, "/healthz").is_ok());
    assert!(sockets.iter().all(|s| s.exists()));
    assert_eq!(next(), "WATCHDOG=1");
    assert_eq!(next(), "WATCHDOG=1");
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    // A watchdog ping may still be in flight before the stop.
    let mut msg = next();
    while msg == "WATCHDOG=1" {
        msg = next();
    }
    assert_eq!(msg, "STOPPING=1");
    assert!(child.0.wait().unwrap().success());
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(!log.contains("no progress"), "{log}");
}

/// Runs the daemon binary to completion with `args`; returns (success, stderr).
fn run_daemon(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = std::process::Command::new(vringswitch_tests::daemon::binary())
        .args(args)
        .env("VRINGSWITCH_LOG", "info")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A second daemon on the same API address, socket directory or state file refuses to
/// start, and none takes a socket another process listens on: the first daemon's VMs keep
/// their sockets. A busy --api is found before any port is made.
#[test]
fn a_second_daemon_refuses_and_leaves_the_first_ones_sockets() {
    let dir = TempDir::new("second");
    let (toml, sockets) = config(dir.path());
    let state = dir.path().join("state.json");
    let state_arg = state.to_str().unwrap().to_owned();
    let daemon = Daemon::start_with(dir.path(), &toml, &sockets, &["--state", &state_arg]);
    let pid = daemon.pid();
    let os = |s: &str| std::ffi::OsString::from(s);
    let free_api = || {
        os(&format!(
            "127.0.0.1:{}",
            vringswitch_tests::daemon::free_port()
        ))
    };
    let other = TempDir::new("second-other");
    let other_config = other.path().join("other.toml");
    std::fs::write(&other_config, Layout::new().bridge("br0").toml()).unwrap();

    // The same (busy) API address: refused before any port is made, in another socket
    // directory with ports of its own.
    let other_ports = other.path().join("ports.toml");
    let other_socket = other.path().join("x.sock");
    std::fs::write(
        &other_ports,
        Layout::new()
            .bridge("br0")
            .port(vhost_user("x", "br0", &other_socket))
            .toml(),
    )
    .unwrap();
    let (ok, err) = run_daemon(&[
        &os("--config"),
        other_ports.as_os_str(),
        &os("--socket-dir"),
        other.path().as_os_str(),
        &os("--api"),
        &os(&daemon.api),
    ]);
    assert!(!ok);
    assert!(
        err.contains(&format!("cannot listen on --api {}", daemon.api)),
        "{err}"
    );
    assert!(
        !err.contains("port ready") && !err.contains("worker"),
        "ports were started before the API was bound: {err}"
    );
    assert!(!other_socket.exists());

    // The same socket directory.
    let (ok, err) = run_daemon(&[
        &os("--config"),
        daemon.config.as_os_str(),
        &os("--socket-dir"),
        dir.path().as_os_str(),
        &os("--api"),
        &free_api(),
    ]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "another vringswitch (pid {pid}) already uses the socket directory"
        )),
        "{err}"
    );

    // Another socket directory, the same state file.
    let (ok, err) = run_daemon(&[
        &os("--config"),
        other_config.as_os_str(),
        &os("--socket-dir"),
        other.path().as_os_str(),
        &os("--state"),
        state.as_os_str(),
        &os("--api"),
        &free_api(),
    ]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "another vringswitch (pid {pid}) already uses the state file"
        )),
        "{err}"
    );

    // Another socket directory and no state, but the first daemon's sockets in the config.
    let (ok, err) = run_daemon(&[
        &os("--config"),
        daemon.config.as_os_str(),
        &os("--socket-dir"),
        other.path().as_os_str(),
        &os("--api"),
        &free_api(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("is the socket of a running process, which still listens on it"),
        "{err}"
    );

    // The first daemon's ports still serve.
    for s in &sockets {
        assert!(s.exists(), "{} was removed", s.display());
    }
    let mut b = TestVm::connect(&sockets[1], mac(2), VmOptions::default());
    b.post_rx(TestVm::rx(0), 8, 2048);
    daemon.wait_port_connected("b", true);
    ping_pong(&sockets[0], &mut b, 1);
}

/// No signal whose default would end the daemon leaves its sockets behind: SIGHUP (and
/// SIGUSR1/2) are logged and ignored, SIGQUIT stops it as SIGTERM does.
#[test]
fn sighup_is_logged_and_ignored_and_sigquit_stops_cleanly() {
    let dir = TempDir::new("sighup");
    let (toml, sockets) = config(dir.path());
    let mut daemon = Daemon::start(dir.path(), &toml, &sockets);
    let kill = |sig: &str, pid: u32| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig}");
    };
    kill("-HUP", daemon.pid());
    wait_until(T, "the SIGHUP log line", || {
        daemon
            .log_text()
            .lines()
            .any(|l| l.contains("signal ignored") && l.contains("SIGHUP"))
            .then_some(())
    });
    kill("-USR1", daemon.pid());
    wait_until(T, "the SIGUSR1 log line", || {
        daemon.log_text().contains("SIGUSR1").then_some(())
    });
    // Still serving.
    let mut b = TestVm::connect(&sockets[1], mac(2), VmOptions::default());
    b.post_rx(TestVm::rx(0), 8, 2048);
    daemon.wait_port_connected("b", true);
    ping_pong(&sockets[0], &mut b, 1);
    drop(b);
    kill("-QUIT", daemon.pid());
    let status = daemon.wait_exit(T);
    assert!(status.success(), "exit status {status}");
    for s in &sockets {
        assert!(!s.exists(), "{} left behind", s.display());
    }
    // Every line writes names the same way (port=b, never port="b"), and features by name.
    let log = daemon.log_text();
    for line in log.lines() {
        for key in [
            "port", "bridge", "signal", "ifname", "socket", "changes", "features",
        ] {
            assert!(
                !line.contains(&format!(" {key}=\"")),
                "{key} quoted in: {line}"
            );
        }
    }
    let ready = log
        .lines()
        .find(|l| l.contains("port rings ready") && l.contains("port=b "))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        ready.contains("VERSION_1") && ready.contains("queue_pairs_offered=1"),
        "{ready}"
    );
}

/// Each cause is said once: a core that does not exist, a config file that does not.
#[test]
fn start_errors_say_each_cause_once() {
    let dir = TempDir::new("once");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, Layout::new().cores(&[77]).toml()).unwrap();
    let socket_dir = dir.path().join("run");
    let (ok, err) = run_daemon(&[
        std::ffi::OsStr::new("--config"),
        config.as_os_str(),
        std::ffi::OsStr::new("--socket-dir"),
        socket_dir.as_os_str(),
    ]);
    assert!(!ok);
    assert_eq!(err.matches("core 77 does not exist").count(), 1, "{err}");
    // --print-config checks what the start checks.
    let (ok, err) = run_daemon(&[
        std::ffi::OsStr::new("--config"),
        config.as_os_str(),
        std::ffi::OsStr::new("--print-config"),
    ]);
    assert!(!ok, "--print-config accepted core 77");
    assert_eq!(err.matches("core 77 does not exist").count(), 1, "{err}");
    let missing = dir.path().join("missing.toml");
    let (ok, err) = run_daemon(&[std::ffi::OsStr::new("--config"), missing.as_os_str()]);
    assert!(!ok);
    assert_eq!(err.matches("cannot read config file").count(), 1, "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// A socket file deleted under the daemon is noticed and made again, while a VM is connected
/// and while none is, with a warning each time; the one made again is removed at stop. A
/// file someone else put in its place is left alone, with a warning.
#[test]
fn a_deleted_socket_file_is_made_again() {
    let dir = TempDir::new("socket-deleted");
    let (toml, sockets) = config(dir.path());
    let mut daemon = Daemon::start(dir.path(), &toml, &sockets);
    let made_again = |path: &Path, what: &str| {
        wait_until(Duration::from_secs(5), what, || {
            use std::os::unix::fs::FileTypeExt;
            std::fs::symlink_metadata(path)
                .is_ok_and(|m| m.file_type().is_socket())
                .then_some(())
        });
    };
    // b connected: its file deleted, made again; a frontend on a's new file reaches b.
    let mut b = TestVm::connect(&sockets[1], mac(2), VmOptions::default());
    b.post_rx(TestVm::rx(0), 8, 2048);
    daemon.wait_port_connected("b", true);
    std::fs::remove_file(&sockets[1]).unwrap();
    std::fs::remove_file(&sockets[0]).unwrap();
    made_again(&sockets[0], "a's socket file made again");
    made_again(
        &sockets[1],
        "b's socket file made again while b is connected",
    );
    ping_pong(&sockets[0], &mut b, 1);
    assert_eq!(
        daemon
            .log_text()
            .matches("the socket file was deleted: made it again")
            .count(),
        2,
        "{}",
        daemon.log_text()
    );
    // Another file in a's place stays, and is named once.
    drop(b);
    wait_until(T, "a disconnected", || {
        (daemon.metric("vringswitch_port_connected", &[("port", "a")]) == 0).then_some(())
    });
    std::fs::remove_file(&sockets[0]).unwrap();
    std::fs::write(&sockets[0], "not a socket").unwrap();
    wait_until(
        Duration::from_secs(5),
        "the warning about a's place",
        || {
            daemon
                .log_text()
                .contains("another file took the socket's place")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        std::fs::read_to_string(&sockets[0]).unwrap(),
        "not a socket"
    );
    assert_eq!(
        daemon
            .log_text()
            .matches("another file took the socket's place")
            .count(),
        1
    );
    // At stop, b's socket (made again) goes; the file in a's place stays.
    let status = daemon.terminate(T);
    assert!(status.success(), "exit status {status}");
    assert!(!sockets[1].exists(), "b's socket left behind");
    assert!(sockets[0].exists());
}

/// A client-mode port whose VM is not up yet says so at info, once: a VM that is off is
/// normal, not a warning.
#[test]
fn a_client_mode_port_waiting_for_its_vm_says_so_at_info() {
    let dir = TempDir::new("client-wait");
    let socket = dir.path().join("client/vm.sock");
    let toml = Layout::new()
        .bridge("br0")
        .port(vringswitch_tests::layout::vhost_user_in(
            "vm",
            "br0",
            &socket,
            vringswitch_tests::layout::SocketMode::Client,
            None,
        ))
        .toml();
    let d = Daemon::start(dir.path(), &toml, &[]);
    let line = wait_until(T, "the waiting line", || {
        d.log_text()
            .lines()
            .find(|l| l.contains("waiting for the VM to listen on its socket"))
            .map(str::to_owned)
    });
    assert!(
        line.contains(" INFO ") && line.contains("port=vm"),
        "{line}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = d.log_text();
    assert!(!log.contains(" WARN "), "{log}");
    assert_eq!(
        log.matches("waiting for the VM").count(),
        1,
        "said more than once a minute: {log}"
    );
}

/// A log setting that names no level (a typo such as `verbose`, which reads as a module
/// name) still logs the daemon's messages, and says why.
#[test]
fn a_log_setting_without_a_level_still_logs_and_says_so() {
    let dir = TempDir::new("log-typo");
    let toml = Setup::layout(dir.path(), &[("br0", &["a"])], 1).toml();
    let sockets = [dir.path().join("a.sock")];
    let d = Daemon::start_under(
        dir.path(),
        &toml,
        &sockets,
        &[],
        &["env", "VRINGSWITCH_LOG=verbose"],
        dir.path(),
    );
    let log = d.log_text();
    assert!(log.contains("port ready"), "{log}");
    assert!(
        log.contains("VRINGSWITCH_LOG=\"verbose\" gives no level"),
        "{log}"
    );
}
