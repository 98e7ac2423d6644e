//! What a hostile local user can try against the daemon (issue 25): take its sockets or
//! paths, exhaust its file descriptors, hold its ports, reach its API from a web page. Each
//! case checks that the attempt fails and that the switch keeps serving its VMs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use vringswitch_tests::daemon::{http_request, http_request_unix, Daemon, TempDir};
use vringswitch_tests::frontend::{TestVm, VmOptions};
use vringswitch_tests::layout::{vhost_user_with, Layout, SocketMode, VhostUserSettings};
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
    let toml = Setup::layout(dir.path(), &[("br0", &["a", "b"])], 1).toml();
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

/// Sends `request` as it is over a new TCP connection to `addr`; returns the status and
/// the body of the answer.
fn raw_http(addr: &str, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no answer to {request:?}: {out:?}"));
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// A web page in a browser on the host, with DNS rebinding or a simple cross-site POST
/// (`text/plain`, foreign Origin and Host), cannot add a port or read the topology.
#[test]
fn a_web_page_cannot_use_the_api() {
    let s = Setup::new("browser", &[("br0", &["a"])], 1);
    let api = &s.daemon.api;
    let body = format!(
        r#"{{"name":"evil","bridge":"br0","type":"vhost-user","socket":"{}","mode":"server"}}"#,
        s.dir.path().join("evil.sock").display()
    );
    let post = |host: &str, origin: Option<&str>, ct: &str| {
        let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
        raw_http(
            api,
            &format!(
                "POST /v1/ports HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Type: {ct}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    // The report's request: refused, and it changed nothing.
    let (code, text) = post(
        "evil.example:9180",
        Some("http://evil.example"),
        "text/plain",
    );
    assert_eq!(code, 403, "{text}");
    // Each defence on its own.
    let (code, text) = post(api, Some("http://evil.example"), "application/json");
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("web pages"), "{text}");
    let (code, text) = post(api, None, "text/plain");
    assert_eq!(code, 415, "{text}");
    assert!(text.contains("unsupported_media_type"), "{text}");
    let (code, text) = raw_http(
        api,
        "GET /v1/bridges HTTP/1.1\r\nHost: rebound.example:9180\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("--api-host"), "{text}");
    assert!(!s.dir.path().join("evil.sock").exists());
    let (_, ports) = vringswitch_tests::api::call(&s.daemon, "GET", "/v1/ports", None);
    assert_eq!(ports.as_array().unwrap().len(), 1, "{ports}");
    // Metrics and health stay open to any Host (Prometheus scrapes by name).
    let (code, _) = raw_http(
        api,
        "GET /metrics HTTP/1.1\r\nHost: switch.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 200);
    // The API's own client works as before.
    let (code, text) = post(api, None, "application/json");
    assert_eq!(code, 201, "{text}");
}

/// A name the operator allows with --api-host is accepted as Host.
#[test]
fn api_host_allows_a_name() {
    let dir = TempDir::new("api-host");
    let d = Daemon::start_with(
        dir.path(),
        &Layout::new().toml(),
        &[],
        &["--api-host", "switch.example"],
    );
    let port = d.api.rsplit_once(':').unwrap().1;
    let (code, text) = raw_http(
        &d.api,
        &format!(
            "GET /v1/bridges HTTP/1.1\r\nHost: switch.example:{port}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(code, 200, "{text}");
}

/// Idle clients can neither hold the API for long nor without bound: a silent connection
/// is closed after the 10 s header deadline, and beyond 128 open connections the next is
/// answered 503 (JSON) at once, while the unix socket keeps serving.
#[test]
fn idle_api_clients_are_bounded_and_timed_out() {
    let dir = TempDir::new("api-limits");
    let api_sock = dir.path().join("api.sock");
    let d = Daemon::start_with(
        dir.path(),
        &Layout::new().toml(),
        &[],
        &["--api-socket", api_sock.to_str().unwrap()],
    );
    let started = Instant::now();
    let mut silent = TcpStream::connect(&d.api).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // Idle connections, one at a time, until the daemon answers one with 503 at once.
    let mut held = Vec::new();
    let busy = loop {
        let mut c = TcpStream::connect(&d.api).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        if !answer.is_empty() {
            break answer;
        }
        held.push(c);
        assert!(held.len() <= 128, "more than 128 idle connections held");
    };
    // The silent one, the held ones and any the harness keeps open: 128 in all.
    assert!(
        held.len() >= 120,
        "refused after {} connections",
        held.len()
    );
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    let body = busy.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(v["error"], "busy");
    let (code, _) =
        vringswitch_tests::daemon::http_request_unix(&api_sock, "GET", "/v1/bridges", None);
    assert_eq!(code, 200, "the unix socket is held up by TCP clients");
    // The silent connection is closed by the daemon within the header deadline.
    let mut buf = [0u8; 1];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
    held.clear();
    // The held ones were closed by the daemon too: there is room again.
    wait_until(T, "room for a new API connection", || {
        let (code, _) = raw_http(
            &d.api,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        (code == 200).then_some(())
    });
}

/// A port cannot take a path the daemon uses itself: its API socket (which a port would
/// otherwise replace), its state file.
#[test]
fn a_port_cannot_take_the_daemons_own_paths() {
    let dir = TempDir::new("own-paths");
    let api_sock = dir.path().join("api.sock");
    let state = dir.path().join("state.json");
    let _daemon = Daemon::start_with(
        dir.path(),
        &Layout::new().bridge("br0").toml(),
        &[],
        &[
            "--api-socket",
            api_sock.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ],
    );
    for (path, what) in [(&api_sock, "API socket"), (&state, "state file")] {
        let body = format!(
            r#"{{"name":"p","bridge":"br0","type":"vhost-user","socket":"{}","mode":"server"}}"#,
            path.display()
        );
        let (code, text) = http_request_unix(&api_sock, "POST", "/v1/ports", Some(&body));
        assert_eq!(code, 409, "{text}");
        assert!(text.contains(&format!("the daemon's own {what}")), "{text}");
    }
    let (code, _) = http_request_unix(&api_sock, "GET", "/v1/ports", None);
    assert_eq!(code, 200, "the API socket was taken");
    assert!(std::fs::read_to_string(&state).unwrap().contains("br0"));
}

/// The state file's tricky paths: a symbolic link as the state path is refused at start
/// (it was silently replaced), a FIFO is refused at once (the start hung), and a save on a
/// full disk fails with 500 `not_saved`, leaving the old file and no temporary file.
#[test]
fn state_file_symlinks_fifos_and_full_disks() {
    use vringswitch_tests::daemon::binary;
    let dir = TempDir::new("state-paths");
    let run = |state: &std::path::Path| {
        let out = std::process::Command::new(binary())
            .args(["--api", "127.0.0.1:0", "--socket-dir"])
            .arg(dir.path().join("run"))
            .arg("--state")
            .arg(state)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let target = dir.path().join("elsewhere.json");
    std::fs::write(&target, "{}").unwrap();
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (ok, err) = run(&link);
    assert!(!ok && err.contains("symbolic link"), "{err}");
    let fifo = dir.path().join("fifo.json");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (ok, err) = run(&fifo);
    assert!(!ok && err.contains("not a regular file"), "{err}");

    // A small file system, nearly full once the daemon has written its state.
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0750", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        mounted,
        "mounting a tmpfs needs root (CI runs the suite as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let state = small.join("state.json");
    let d = Daemon::start_with(
        dir.path(),
        &Layout::new().bridge("br0").toml(),
        &[],
        &["--state", state.to_str().unwrap()],
    );
    let before = std::fs::read_to_string(&state).unwrap();
    // Fill what is left.
    let filler = vec![0u8; 4096];
    let mut f = std::fs::File::create(small.join("filler")).unwrap();
    while f.write_all(&filler).is_ok() {}
    drop(f);
    let (code, text) = http_request(&d.api, "POST", "/v1/bridges", Some(r#"{"name": "br1"}"#));
    assert_eq!(code, 500, "{text}");
    assert!(text.contains("not_saved"), "{text}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), before);
    assert!(
        !small.join("state.json.tmp").exists(),
        "a temporary file stayed"
    );
}

/// A socket directory made in advance by another user (the non-root default
/// /tmp/vringswitch-$UID can be), or writable by others, is refused with a message that
/// says how to fix it, and nothing is created in it; so is such a state directory.
#[test]
fn socket_and_state_directories_of_other_users_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    use vringswitch_tests::daemon::binary;
    let dir = TempDir::new("foreign-dirs");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(binary())
            .args(["--api", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let chown_nobody = |p: &std::path::Path| {
        assert!(
            std::process::Command::new("chown")
                .args(["nobody"])
                .arg(p)
                .status()
                .unwrap()
                .success(),
            "chown nobody (the test runs as root)"
        );
    };
    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o777)).unwrap();
    chown_nobody(&foreign);
    let (ok, err) = run(&["--socket-dir".as_ref(), foreign.as_os_str()]);
    assert!(!ok);
    assert!(
        err.contains("not safe to use") && err.contains("belongs to user"),
        "{err}"
    );
    assert!(
        err.contains(&format!("chown 0 {}", foreign.display())),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&foreign).unwrap().count(),
        0,
        "files made in it"
    );

    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, err) = run(&["--socket-dir".as_ref(), open.as_os_str()]);
    assert!(!ok);
    assert!(
        err.contains("writable by its group and by other users (mode 0777)"),
        "{err}"
    );

    let mine = dir.path().join("mine");
    let state_dir = dir.path().join("state");
    std::fs::create_dir(&state_dir).unwrap();
    chown_nobody(&state_dir);
    let state = state_dir.join("state.json");
    let (ok, err) = run(&[
        "--socket-dir".as_ref(),
        mine.as_os_str(),
        "--state".as_ref(),
        state.as_os_str(),
    ]);
    assert!(!ok);
    assert!(err.contains("the state directory"), "{err}");
    assert!(!state.exists());
}

/// A client that connects to a server port and says nothing loses the port after 10 s, so
/// the real VM gets it; meanwhile (and whenever the port already serves a VM) a second
/// frontend is hung up on at once instead of waiting in the backlog for ever.
#[test]
fn a_silent_client_cannot_hold_a_port() {
    use std::os::unix::net::UnixStream;
    let s = Setup::new("silent", &[("br0", &["a", "b"])], 1);
    let mut b = s.vm("b", 2);
    let started = Instant::now();
    let _silent = UnixStream::connect(s.socket("a")).unwrap();
    wait_until(T, "the silent client connected", || {
        (s.daemon
            .metric("vringswitch_port_connected", &[("port", "a")])
            == 1)
            .then_some(())
    });
    // Knocking while the silent one holds the port: turned away at once.
    let mut second = UnixStream::connect(s.socket("a")).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        second.read(&mut buf).unwrap_or(1),
        0,
        "the second frontend was not hung up on"
    );
    // The real VM, trying again as QEMU with reconnect= does, is served once the silent
    // client has been dropped.
    let mut a = connect_when_served(&s.socket("a"), 1, Duration::from_secs(30));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    a.post_rx(TestVm::rx(0), 16, 2048);
    forwards(&s, &mut a, &mut b, 3);
    let log = s.daemon.log_text();
    assert!(log.contains("sent no message for 10 s"), "{log}");
    assert!(
        log.contains("a second vhost-user frontend was turned away"),
        "{log}"
    );
    assert!(s.counter("protocol_errors", "a") >= 1);
    // A VM in service: a second frontend is hung up on at once too.
    let mut third = UnixStream::connect(s.socket("a")).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(third.read(&mut buf).unwrap_or(1), 0);
    forwards(&s, &mut a, &mut b, 4);
}

/// Adding and deleting ports over and over does not grow the daemon: a removed port's id
/// (and with it its place in the topology and in every worker's caches) is reused.
#[test]
fn memory_follows_live_ports_not_every_port_ever_made() {
    use vringswitch_tests::process::resident_kib;
    let s = Setup::new("churn", &[("br0", &["a", "b"])], 1);
    let mut a = s.vm("a", 1);
    let mut b = s.vm("b", 2);
    s.wait_connected(&["a", "b"]);
    let pid = s.daemon.pid();
    let body = |i: usize| {
        format!(
            r#"{{"name":"c{i}","bridge":"br0","type":"vhost-user","socket":"{}","mode":"server"}}"#,
            s.dir.path().join(format!("c{i}.sock")).display()
        )
    };
    let cycle = |i: usize| {
        let (code, text) = http_request(&s.daemon.api, "POST", "/v1/ports", Some(&body(i)));
        assert_eq!(code, 201, "{text}");
        let (code, text) = http_request(&s.daemon.api, "DELETE", &format!("/v1/ports/c{i}"), None);
        assert_eq!(code, 204, "{text}");
    };
    for i in 0..300 {
        cycle(i);
    }
    let before = resident_kib(pid);
    for i in 300..2300 {
        cycle(i);
    }
    let after = resident_kib(pid);
    assert!(
        after <= before + 1024,
        "2000 add/delete cycles grew the daemon from {before} KiB to {after} KiB"
    );
    forwards(&s, &mut a, &mut b, 9);
}

/// Every error answer is the API's JSON body, and never quotes a huge input whole: a body
/// over the limit (413 was plain text), a method a path does not take (405), a 1.5 MB name.
#[test]
fn error_answers_are_json_and_short() {
    let s = Setup::new("errors", &[("br0", &["a"])], 1);
    let api = &s.daemon.api;
    // The daemon answers before the body is all sent and closes the connection: a client
    // still writing sees a broken pipe (ureq gives up then, curl reads the answer). Written
    // by a thread of its own, whose errors do not matter, while the answer is read here.
    let (code, text) = {
        let mut conn = TcpStream::connect(api.as_str()).unwrap();
        conn.set_read_timeout(Some(T)).unwrap();
        let mut writer = conn.try_clone().unwrap();
        let huge = "x".repeat(3 * 1024 * 1024);
        let head = format!(
            "POST /v1/bridges HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            huge.len()
        );
        let sending = std::thread::spawn(move || {
            let _ = writer.write_all(head.as_bytes());
            let _ = writer.write_all(huge.as_bytes());
        });
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        let _ = sending.join();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let code: u16 = answer
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {answer:?}"));
        let body = answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        (code, body)
    };
    assert_eq!(code, 413, "{}", &text[..text.len().min(200)]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"], "too_large");
    let (code, text) = http_request(api, "PUT", "/v1/bridges/br0", None);
    assert_eq!(code, 405);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"], "method_not_allowed");
    let name = "n".repeat(1536 * 1024);
    let (code, text) = http_request(
        api,
        "POST",
        "/v1/bridges",
        Some(&format!(r#"{{"name": "{name}"}}"#)),
    );
    assert_eq!(code, 400);
    assert!(text.len() < 2048, "a {} byte answer", text.len());
    assert!(text.contains("(cut)"), "{text}");
}

/// Stopping a daemon with 200 idle ports is prompt: their threads are woken, not polled
/// (2 s before), and so is deleting one (100 ms before).
#[test]
fn idle_ports_stop_at_once() {
    let dir = TempDir::new("idle-ports");
    let mut layout = Layout::new().bridge("br0");
    let mut sockets = Vec::new();
    for i in 0..200 {
        let s = dir.path().join(format!("p{i}.sock"));
        let server = i % 2 == 0;
        layout = layout.port(vhost_user_with(
            &format!("p{i}"),
            "br0",
            VhostUserSettings {
                socket: s.clone(),
                mode: Some(if server {
                    SocketMode::Server
                } else {
                    SocketMode::Client
                }),
                queues: Some(1),
                offloads: None,
            },
        ));
        if server {
            sockets.push(s);
        }
    }
    let mut d = Daemon::start(dir.path(), &layout.toml(), &sockets);
    let started = Instant::now();
    let (code, text) = http_request(&d.api, "DELETE", "/v1/ports/p0", None);
    assert_eq!(code, 204, "{text}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(80),
        "DELETE of an idle port took {took:?}"
    );
    let started = Instant::now();
    let status = d.terminate(Duration::from_secs(5));
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_millis(1000),
        "SIGTERM with 200 idle ports took {took:?}"
    );
}
