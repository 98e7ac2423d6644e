//! Runs the real `vringswitch` binary for a test.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait_until;

/// Path of the daemon binary: `$VRINGSWITCH_BIN`, else next to the test executable's
/// target directory.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VRINGSWITCH_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/vringswitch
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("vringswitch"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --bin vringswitch` \
         (or set VRINGSWITCH_BIN)",
        bin.display()
    );
    bin
}

/// Path of `vringctl`, built beside the daemon.
pub fn vringctl() -> PathBuf {
    let bin = binary().with_file_name("vringctl");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --bin vringctl`",
        bin.display()
    );
    bin
}

/// A scratch directory removed on drop, unless the test is failing: then it is kept (and
/// named on stderr) so the daemon's log can be read.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(crate::unique_name(&format!("vs-{tag}")));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for the failing test: {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether process `pid` holds a socket listening on TCP `port` (per /proc/net/tcp and
/// the process's fds).
pub fn listens_on(pid: u32, port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let w: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (the tenth field)
            if w.len() > 9 && w[1].ends_with(&suffix) && w[3] == "0A" {
                inodes.push(format!("socket:[{}]", w[9]));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running daemon, killed on drop.
pub struct Daemon {
    child: Option<Child>,
    pub api: String,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The test's directory: also the daemon's --socket-dir.
    pub dir: PathBuf,
    /// Further command-line arguments.
    pub args: Vec<String>,
    /// A command the daemon runs under (`setpriv ...`, `prlimit ...`), if any.
    pub prefix: Vec<String>,
    /// Its --socket-dir (default: `dir`).
    pub socket_dir: PathBuf,
    /// The binary it runs (default: [`binary`]).
    pub binary: PathBuf,
    /// After an upgrade: the process serving now, which is not our child (the one before
    /// it started it).
    adopted: Option<u32>,
}

impl Daemon {
    /// Starts the daemon with `config` (TOML) and waits until its API answers and every
    /// server socket named in `sockets` exists.
    pub fn start(dir: &Path, config: &str, sockets: &[PathBuf]) -> Daemon {
        Self::start_with(dir, config, sockets, &[])
    }

    /// [`Daemon::start`] with further command-line arguments.
    pub fn start_with(dir: &Path, config: &str, sockets: &[PathBuf], args: &[&str]) -> Daemon {
        Self::start_as(dir, config, sockets, args, None, dir)
    }

    /// [`Daemon::start_with`] as `user` (its own group and supplementary groups, through
    /// `setpriv`; the test must run as root) with `socket_dir` as --socket-dir.
    pub fn start_as(
        dir: &Path,
        config: &str,
        sockets: &[PathBuf],
        args: &[&str],
        user: Option<&str>,
        socket_dir: &Path,
    ) -> Daemon {
        let prefix: Vec<&str> = match user {
            Some(u) => vec!["setpriv", "--reuid", u, "--regid", u, "--init-groups", "--"],
            None => vec![],
        };
        Self::start_under(dir, config, sockets, args, &prefix, socket_dir)
    }

    /// [`Daemon::start_with`] run by the command `prefix` (`prlimit --nofile=64 --`, say),
    /// with `socket_dir` as --socket-dir.
    pub fn start_under(
        dir: &Path,
        config: &str,
        sockets: &[PathBuf],
        args: &[&str],
        prefix: &[&str],
        socket_dir: &Path,
    ) -> Daemon {
        let path = dir.join("vringswitch.toml");
        std::fs::write(&path, config).unwrap();
        let api = format!("127.0.0.1:{}", free_port());
        let mut d = Daemon {
            child: None,
            api,
            config: path,
            log: dir.join("vringswitch.log"),
            dir: dir.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            prefix: prefix.iter().map(|a| a.to_string()).collect(),
            socket_dir: socket_dir.to_path_buf(),
            binary: binary(),
            adopted: None,
        };
        d.spawn();
        d.wait_ready(sockets);
        d
    }

    /// [`Daemon::start_with`] running the binary at `binary` (a copy, which the test may
    /// then replace: an upgrade starts whatever is at the daemon's path).
    pub fn start_binary(
        dir: &Path,
        config: &str,
        sockets: &[PathBuf],
        args: &[&str],
        binary: &Path,
    ) -> Daemon {
        let path = dir.join("vringswitch.toml");
        std::fs::write(&path, config).unwrap();
        let mut d = Daemon {
            child: None,
            api: format!("127.0.0.1:{}", free_port()),
            config: path,
            log: dir.join("vringswitch.log"),
            dir: dir.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            prefix: Vec::new(),
            socket_dir: dir.to_path_buf(),
            binary: binary.to_path_buf(),
            adopted: None,
        };
        d.spawn();
        d.wait_ready(sockets);
        d
    }

    /// [`Daemon::start`] in network namespace `netns` (through `ip netns exec`): its API
    /// is then a unix socket in `dir` (`api.sock`), which [`Daemon::api`] names and every
    /// helper here reaches across namespaces.
    pub fn start_in_netns(netns: &str, dir: &Path, config: &str, sockets: &[PathBuf]) -> Daemon {
        let path = dir.join("vringswitch.toml");
        std::fs::write(&path, config).unwrap();
        let mut d = Daemon {
            child: None,
            api: dir.join("api.sock").display().to_string(),
            config: path,
            log: dir.join("vringswitch.log"),
            dir: dir.to_path_buf(),
            args: Vec::new(),
            prefix: ["ip", "netns", "exec", netns]
                .iter()
                .map(|a| a.to_string())
                .collect(),
            socket_dir: dir.to_path_buf(),
            binary: binary(),
            adopted: None,
        };
        d.spawn();
        d.wait_ready(sockets);
        d
    }

    /// Runs `vringctl upgrade` with `args` and returns its exit status, its JSON answer
    /// (or error text). On success the daemon followed is the new process from then on,
    /// once the old one has exited.
    pub fn upgrade(&mut self, args: &[&str]) -> Result<serde_json::Value, String> {
        let out = Command::new(vringctl())
            .arg("--api")
            .arg(&self.api)
            .arg("--json")
            .arg("upgrade")
            .args(args)
            .output()
            .expect("run vringctl");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("vringctl upgrade --json answers JSON");
        let new_pid = answer["new_pid"].as_u64().expect("new_pid") as u32;
        let old = self.pid();
        assert_eq!(answer["old_pid"].as_u64(), Some(u64::from(old)));
        match self.child.take() {
            Some(c) => {
                exit_status_within(c, Duration::from_secs(10), " of an upgrade");
            }
            None => wait_until(Duration::from_secs(10), "the old process to exit", || {
                gone(old).then_some(())
            }),
        }
        self.adopted = Some(new_pid);
        Ok(answer)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match self.prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary());
                c
            }
            None => Command::new(&self.binary),
        };
        // A unix API socket (a daemon in a namespace): the TCP one stays at its default,
        // inside the namespace.
        let api = if self.api.starts_with('/') {
            "--api-socket"
        } else {
            "--api"
        };
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .arg(api)
            .arg(&self.api)
            .arg("--socket-dir")
            .arg(&self.socket_dir)
            .args(&self.args)
            .env("VRINGSWITCH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start vringswitch");
        self.child = Some(child);
    }

    fn wait_ready(&mut self, sockets: &[PathBuf]) {
        // The free port picked for the API can be taken by anything on the host before the
        // daemon binds it (an outgoing connection's local port, say): then another.
        for _ in 0..3 {
            let logged = self.log_text().len();
            match self.ready(sockets) {
                Ok(()) => return,
                Err(status) => {
                    let log = self.log_text();
                    let new = log.get(logged..).unwrap_or_default();
                    let taken = new.contains("cannot listen on --api")
                        && new.contains("Address already in use");
                    if !taken || self.api.starts_with('/') {
                        panic!("vringswitch exited with {status}: {log}");
                    }
                    self.api = format!("127.0.0.1:{}", free_port());
                    self.spawn();
                }
            }
        }
        panic!(
            "vringswitch found no free API port three times: {}",
            self.log_text()
        );
    }

    /// Waits until the daemon answers on its API and has made `sockets`; `Err` (its exit
    /// status) if it exited first.
    fn ready(&mut self, sockets: &[PathBuf]) -> Result<(), std::process::ExitStatus> {
        let api = self.api.clone();
        let port: u16 = api
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0);
        let mut exited = None;
        wait_until(Duration::from_secs(20), "the daemon's /healthz", || {
            let pid = match self.child.as_mut() {
                Some(c) => {
                    if let Ok(Some(status)) = c.try_wait() {
                        exited = Some(status);
                        return Some(());
                    }
                    c.id()
                }
                None => return None,
            };
            if api.starts_with('/') {
                // Its own socket file: only it answers there.
                return (Path::new(&api).exists()
                    && http_get(&api, "/healthz").is_ok_and(|b| b.contains("ok")))
                .then_some(());
            }
            // Answered by this daemon, not by another test's that got the same free port.
            (listens_on(pid, port) && http_get(&api, "/healthz").is_ok_and(|b| b.contains("ok")))
                .then_some(())
        });
        if let Some(status) = exited {
            return Err(status);
        }
        for s in sockets {
            wait_until(Duration::from_secs(10), "the port sockets", || {
                s.exists().then_some(())
            });
        }
        Ok(())
    }

    /// Kills the daemon with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.adopted.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !gone(pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the daemon to exit; returns its status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM failed");
        exit_status_within(child, timeout, " of SIGTERM")
    }

    /// Waits up to `timeout` for the daemon to exit by itself (after a signal sent by other
    /// means); returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.take().expect("running");
        exit_status_within(child, timeout, "")
    }

    /// Starts the daemon again with the same configuration and API address.
    pub fn restart(&mut self, sockets: &[PathBuf]) {
        self.kill();
        self.spawn();
        self.wait_ready(sockets);
    }

    pub fn pid(&self) -> u32 {
        self.adopted
            .unwrap_or_else(|| self.child.as_ref().expect("running").id())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `vringctl --api <this daemon> args...`; returns its stdout, panics on failure.
    pub fn vringctl(&self, args: &[&str]) -> String {
        let out = Command::new(vringctl())
            .arg("--api")
            .arg(&self.api)
            .args(args)
            .output()
            .expect("run vringctl");
        assert!(
            out.status.success(),
            "vringctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Waits until `port` reports a frontend connected (`true`) or none (`false`).
    /// Waits until a frontend is connected to `port` and its rings are ready (the switch
    /// can deliver to it), or until it is gone.
    pub fn wait_port_connected(&self, port: &str, connected: bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let l = [("port", port)];
        let want = Some(u64::from(connected));
        loop {
            let text = self.metrics();
            let now = metric_value(&text, "vringswitch_port_connected", &l);
            let ready = metric_value(&text, "vringswitch_port_ready", &l);
            if now == want && ready == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "port {port}: waited 10 s for connected and ready = {connected}, \
                 still connected = {now:?}, ready = {ready:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The /metrics page.
    pub fn metrics(&self) -> String {
        http_get(&self.api, "/metrics").expect("GET /metrics")
    }

    /// Value of one sample of /metrics, e.g.
    /// `metric("vringswitch_port_rx_packets_total", &[("port", "vm1")])`. Panics if the
    /// series is absent: a missing series is a failure, never a zero.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let text = self.metrics();
        metric_value(&text, name, labels)
            .unwrap_or_else(|| panic!("no series {name} {labels:?} in /metrics:\n{text}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Finds a sample in Prometheus text: the first line for `name` carrying all `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            let v = rest.rsplit(' ').next()?;
            return v.parse::<f64>().ok().map(|v| v as u64);
        }
    }
    None
}

/// GETs `http://{addr}{path}` and returns the body of a 2xx answer; anything else is an
/// error saying what came back.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    if addr.starts_with('/') {
        let (status, body) = try_http_unix(Path::new(addr), "GET", path, None)?;
        return if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(std::io::Error::other(format!(
                "GET {path}: status {status}: {body}"
            )))
        };
    }
    let resp = ureq::get(&format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .call()
        .map_err(|e| std::io::Error::other(format!("GET {path}: {e}")))?;
    resp.into_string()
}

/// Sends `method path` with an optional JSON body; returns the status and the body, for
/// error statuses too.
pub fn http_request(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    if addr.starts_with('/') {
        return http_request_unix(Path::new(addr), method, path, body);
    }
    let req = ureq::request(method, &format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(10))
        .set("Content-Type", "application/json");
    let result = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    match result {
        Ok(resp) => (resp.status(), resp.into_string().unwrap()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap()),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// [`http_request`] over the daemon's unix API socket (`--api-socket`).
pub fn http_request_unix(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    try_http_unix(socket, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", socket.display()))
}

/// [`http_request_unix`], an error if the socket does not answer.
fn try_http_unix(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {text:?}")))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

/// Whether process `pid` has exited (gone, or a zombie nobody reaped yet).
pub fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// A child process killed, with its whole process group if it leads one (spawn it with
/// `process_group(0)`: under strace the daemon is strace's child and would outlive strace),
/// when the test ends, failed or not.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `child`'s exit status, once it exits within `timeout`; otherwise kills it and fails the
/// test, saying it did not exit within `timeout`, then `after` (e.g. " of SIGTERM").
fn exit_status_within(
    mut child: std::process::Child,
    timeout: Duration,
    after: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vringswitch did not exit within {timeout:?}{after}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
