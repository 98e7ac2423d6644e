//! `vringswitch`: the daemon. Parses arguments, loads the configuration, runs until SIGTERM,
//! SIGINT or SIGQUIT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use vringswitch_config::Config;
use vringswitch_control::daemon::{Daemon, DaemonOptions};
use vringswitch_control::log_levels::{self, LogControl};
use vringswitch_control::manpage::{self, Section};
use vringswitch_control::{drop_log, http, http_guard, http_server, state_file, systemd, upgrade};
use vringswitch_ports::socket_file::{self, BoundSocket};

/// A user-space virtual switch for VMs attached over vhost-user.
#[derive(Parser, Debug)]
#[command(name = "vringswitch", version)]
struct Args {
    /// Configuration file (TOML). Without it: bridge br0 with ports vm1 and vm2, server-mode
    /// sockets in --socket-dir.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address of the HTTP endpoint (/healthz, /metrics, /v1/stats).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9180")]
    api: SocketAddr,
    /// Socket directory: sockets of ports created over the API must lie in it, and the
    /// built-in configuration puts its sockets there [default: $RUNTIME_DIRECTORY under
    /// systemd, else /run/vringswitch as root, else $XDG_RUNTIME_DIR/vringswitch or
    /// /tmp/vringswitch-$UID].
    #[arg(long, value_name = "DIR")]
    socket_dir: Option<PathBuf>,
    /// File holding the bearer token that every /v1 request must carry. Required when
    /// --api is not a loopback address.
    #[arg(long, value_name = "PATH", env = "VRINGSWITCH_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Also serve the API on this unix socket (mode 0660, no token: the file's permissions
    /// are the access control). Without --api-token-file, /v1 over TCP is then read-only:
    /// changes go through this socket.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// A host name (or NAME:PORT) by which clients reach --api, besides its address (and
    /// localhost on a loopback address). /v1 requests with any other Host are refused, so
    /// that a web page cannot reach the API by DNS rebinding. Repeatable.
    #[arg(long, value_name = "NAME")]
    api_host: Vec<String>,
    /// State file: every change made over the API is saved there, and a restart restores
    /// it (it then wins over the bridges and ports of --config). Without it, changes last
    /// until the daemon stops.
    #[arg(long, value_name = "PATH")]
    state: Option<PathBuf>,
    /// Print the configuration in effect as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Print this command's manual page (roff) and exit.
    #[arg(long)]
    manpage: bool,
    /// Take over from the running daemon that started this one (`vringctl upgrade`):
    /// its end of the handover channel. Not for use by hand.
    #[arg(long, value_name = "FD", hide = true)]
    handover_fd: Option<i32>,
}

/// The manual page's sections that the arguments do not give.
const MANUAL: &[Section] = &[
    Section {
        title: "ENVIRONMENT",
        intro: "",
        entries: &[
            (
                "VRINGSWITCH_LOG",
                "What to log: a level (error, warn, info, debug, trace), optionally followed \
                 by levels per module (info,vringswitch_ports=debug). Default info. A setting \
                 that gives no general level is taken with info before it, one that does not \
                 parse is replaced by info; either way the first lines of the log say so.",
            ),
            ("VRINGSWITCH_API_TOKEN_FILE", "As --api-token-file."),
            (
                "RUNTIME_DIRECTORY",
                "Set by systemd's RuntimeDirectory=: the default socket directory.",
            ),
            (
                "XDG_RUNTIME_DIR",
                "For a user other than root outside systemd, the default socket directory is \
                 vringswitch in it.",
            ),
            (
                "NOTIFY_SOCKET, WATCHDOG_USEC",
                "Set by systemd: the daemon says when it is ready and when it stops \
                 (Type=notify), and feeds the watchdog while its worker cores are alive.",
            ),
        ],
    },
    Section {
        title: "SIGNALS",
        intro: "",
        entries: &[
            (
                "SIGTERM, SIGINT, SIGQUIT",
                "Stop: the workers finish their bursts, every vhost-user connection is \
                 closed and the sockets the daemon created are removed. The state file is \
                 already up to date (it is written at each change).",
            ),
            (
                "SIGHUP, SIGUSR1, SIGUSR2",
                "Logged and otherwise ignored: there is nothing to reload, the switch is \
                 changed through its API (vringctl).",
            ),
            (
                "SIGKILL",
                "As for any process. Started again with the same --state, the daemon \
                 restores its bridges and ports; frontends of server-mode ports connect \
                 again by themselves if QEMU's chardev has reconnect=1 (libvirt: \
                 <reconnect enabled='yes'/>), client-mode ports are connected by the daemon.",
            ),
        ],
    },
    Section {
        title: "EXIT STATUS",
        intro: "",
        entries: &[
            (
                "0",
                "Stopped by a signal above, or --print-config or --manpage done.",
            ),
            (
                "1",
                "Could not start, or failed while running; the last line on standard \
                 error says why (a configuration error with its file, line and column, a \
                 socket or --api address in use, another daemon on the same state file).",
            ),
            ("2", "Bad command-line arguments."),
        ],
    },
    Section {
        title: "FILES",
        intro: "",
        entries: &[
            (
                "/run/vringswitch",
                "The default socket directory as root; under the shipped systemd unit also \
                 its API socket, api.sock.",
            ),
            (
                "/etc/vringswitch/vringswitch.toml",
                "The configuration file of the shipped systemd unit (see \
                 deploy/vringswitch.example.toml and docs/configuration.md).",
            ),
            (
                "/var/lib/vringswitch/state.json",
                "The state file of the shipped systemd unit.",
            ),
        ],
    },
    Section {
        title: "SEE ALSO",
        intro: "vringctl(1), docs/operations.md and docs/configuration.md in the source tree.",
        entries: &[],
    },
];

fn default_socket_dir() -> PathBuf {
    // Set by systemd's RuntimeDirectory=.
    if let Some(d) = std::env::var_os("RUNTIME_DIRECTORY") {
        return PathBuf::from(d);
    }
    if uid() == 0 {
        return PathBuf::from(vringswitch_config::DEFAULT_SOCKET_DIR);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("vringswitch"),
        None => std::env::temp_dir().join(format!("vringswitch-{}", uid())),
    }
}

/// Effective uid of this process (owner of /proc/self), without FFI.
fn uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    })
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line, without a backtrace: this is for operators.
            eprintln!("vringswitch: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    // What to log: VRINGSWITCH_LOG at start, changed at runtime through the API (a
    // reload handle: `vringctl log set`). virtio-queue is off unless named: it logs an error
    // each time it polls a ring it cannot read, which a guest can make happen on every poll;
    // the switch counts such faults and logs them at a bounded rate itself.
    let setting = std::env::var("VRINGSWITCH_LOG").ok();
    let (levels, filter, filter_warning) = log_levels::at_start(setting.as_deref());
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .init();
    }
    if let Some(warning) = filter_warning {
        tracing::warn!("{warning}");
    }
    let log_control = Arc::new(LogControl::new(
        levels,
        Box::new(move |filter: &str| {
            let parsed = tracing_subscriber::EnvFilter::try_new(filter)
                .map_err(|e| format!("{filter:?} is not a log filter: {e}"))?;
            reload
                .reload(parsed)
                .map_err(|e| format!("cannot change the log levels: {e}"))
        }),
    ));
    // As started: an upgrade starts the binary installed at this path, with these arguments.
    let exe = std::env::current_exe().context("cannot tell where this binary is")?;
    let all_args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let args = Args::parse();
    if args.manpage {
        use clap::CommandFactory;
        let page =
            manpage::page(Args::command(), MANUAL).context("cannot render the manual page")?;
        print!("{page}");
        return Ok(());
    }

    let token = match &args.api_token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    if token.is_none() && !args.api.ip().is_loopback() {
        anyhow::bail!(
            "--api {} is reachable from other hosts: give --api-token-file so that /v1 \
             requests need a bearer token, or listen on 127.0.0.1",
            args.api
        );
    }
    let loaded = match &args.config {
        Some(path) => Some(Config::load(path)?),
        None => None,
    };
    // --socket-dir, else the configuration's socket_dir, else the default.
    let socket_dir = args
        .socket_dir
        .clone()
        .or_else(|| {
            loaded
                .as_ref()?
                .socket_dir
                .as_ref()
                .map(|d| d.get_ref().clone())
        })
        .unwrap_or_else(default_socket_dir);
    let mut config = match loaded {
        Some(c) => c,
        None => {
            tracing::info!(socket_dir = %socket_dir.display(), "no --config: built-in configuration");
            Config::builtin(&socket_dir)
        }
    };
    if let Some(path) = &args.config {
        config
            .fill_default_sockets(&socket_dir)
            .map_err(|m| anyhow::anyhow!("config file {}: {m}", path.display()))?;
    }
    if args.print_config {
        // What the start would refuse about this host, not only about the file.
        for &core in config.dataplane.cores.get_ref() {
            vringswitch_switch::affinity::check_core(core)
                .context("cannot use [dataplane] cores on this machine")?;
        }
        print!("{}", config_in_effect(&config, args.state.as_deref())?);
        return Ok(());
    }

    // Started by the running daemon to replace it: everything comes from it.
    let mut from_parent = match args.handover_fd {
        Some(fd) => Some(
            // What takes time is done before the old daemon stops forwarding: the cycle
            // counter's calibration (20 ms) here, the configuration above.
            upgrade::take_from_parent(fd, upgrade::DEFAULT_DEADLINE, || {
                vringswitch_switch::stats::cycles_per_second();
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("cannot take over from the running daemon: {e}"))?,
        ),
        None => None,
    };
    let handed_api = from_parent
        .as_mut()
        .map(|p| (p.api_tcp.take(), p.api_unix.take()));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Signal handlers first: a signal during the start is acted on once it is done, instead
    // of killing the daemon halfway with sockets bound.
    let signals = {
        let _in_runtime = runtime.enter();
        Signals::new().context("cannot install signal handlers")?
    };
    // The API's listeners next, before any port: a second daemon given a busy --api or
    // --api-socket stops here, before it binds a socket of its own ports or starts a worker.
    // (Handed over by the daemon this one replaces: the same sockets, never closed.)
    let (handed_tcp, handed_unix) = handed_api.unwrap_or((None, None));
    let (listener, unix_listener) = {
        let _in_runtime = runtime.enter();
        let tcp = match handed_tcp {
            Some(l) => Ok(l),
            None => std::net::TcpListener::bind(args.api),
        };
        let listener = tcp
            .and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            })
            .with_context(|| format!("cannot listen on --api {}", args.api))?;
        let unix = match (&args.api_socket, handed_unix) {
            (Some(path), Some((l, bound))) => Some(
                l.set_nonblocking(true)
                    .and_then(|()| tokio::net::UnixListener::from_std(l))
                    .map(|l| (l, bound))
                    .with_context(|| format!("cannot listen on --api-socket {}", path.display()))?,
            ),
            (Some(path), None) => Some(bind_api_socket(path)?),
            (None, _) => None,
        };
        (listener, unix)
    };
    // Copies of the API's sockets, for the process that may one day replace this one.
    let api_fds = {
        use std::os::fd::AsFd;
        let tcp = listener.as_fd().try_clone_to_owned().ok();
        let unix = unix_listener
            .as_ref()
            .and_then(|(l, b)| Some((l.as_fd().try_clone_to_owned().ok()?, *b)));
        (tcp, unix)
    };
    let (unix_listener, api_socket_bound) = match unix_listener {
        Some((l, bound)) => (Some(l), Some(bound)),
        None => (None, None),
    };
    let options = DaemonOptions {
        state_file: args.state.clone(),
        socket_dir: Some(socket_dir.clone()),
        own_paths: args.api_socket.iter().cloned().collect(),
        log_control: Some(log_control),
    };
    let started = match from_parent.as_mut().and_then(|p| p.handed.take()) {
        None => Daemon::start(&config, options).context("cannot start vringswitch"),
        Some(handed) => {
            let parent = from_parent.as_ref().map_or(0, |p| p.parent_pid());
            match Daemon::start_handed(&config, options, handed) {
                Ok((daemon, not_carried)) => {
                    tracing::info!(
                        old_pid = parent,
                        ports = daemon.ports().len(),
                        not_carried = not_carried.len(),
                        "took over from the running daemon"
                    );
                    if let Some(Err(e)) = from_parent.as_ref().map(|p| p.say_running(not_carried)) {
                        tracing::warn!(error = %e,
                            "the daemon this one replaces did not confirm; serving anyway");
                    }
                    Ok(daemon)
                }
                Err(e) => {
                    let e =
                        anyhow::Error::from(e).context("cannot take over from the running daemon");
                    if let Some(p) = &from_parent {
                        p.refuse(&format!("{e:#}"));
                    }
                    // Its sockets are the running daemon's: not to be removed.
                    return Err(e);
                }
            }
        }
    };
    let remove_api_socket = |bound: Option<BoundSocket>| {
        if let (Some(path), Some(bound)) = (&args.api_socket, bound) {
            vringswitch_ports::socket_file::remove_if_ours(path, bound);
        }
    };
    let daemon = match started {
        Ok(d) => Arc::new(d),
        Err(e) => {
            remove_api_socket(api_socket_bound);
            return Err(e);
        }
    };
    let upgrader = Arc::new(upgrade::Upgrader::new(exe, all_args, api_fds.0, api_fds.1));
    daemon.set_upgrader(upgrader.clone());
    let switch = daemon.switch.clone();
    let api_daemon = daemon.clone();
    let api_socket = args.api_socket.clone();
    let api_addr = args.api;
    let api_hosts = args.api_host.clone();
    let finished = upgrader.clone();
    let result: anyhow::Result<bool> = runtime.block_on(async move {
        let writes = match (&token, &api_socket) {
            (Some(_), _) => "with the token",
            (None, Some(_)) => "no (read-only: changes go through the unix socket)",
            (None, None) => "yes",
        };
        tracing::info!(api = %api_addr, changes = %writes, "HTTP endpoint ready");
        let app = http_guard::guard(
            http::router(api_daemon.clone(), tcp_access(token, api_socket.as_deref())),
            http_guard::AllowedHosts::for_listener(api_addr, &api_hosts),
        );
        let unix = match (unix_listener, &api_socket) {
            (Some(listener), Some(path)) => {
                tracing::info!(api_socket = %path.display(), "HTTP endpoint ready on a unix socket");
                let app = http_guard::guard(
                    http::router(api_daemon, http::ApiAccess::Open),
                    http_guard::AllowedHosts::any(),
                );
                Some((listener, app))
            }
            _ => None,
        };
        // Under systemd (Type=notify), say we are up and keep the watchdog fed while the
        // workers are alive. Without $NOTIFY_SOCKET these do nothing.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        let mut watchdog_usec = 0;
        if sd_notify::watchdog_enabled(false, &mut watchdog_usec) {
            tokio::spawn(systemd::feed_watchdog(
                switch.clone(),
                Duration::from_micros(watchdog_usec / 2),
            ));
        }
        tokio::spawn(drop_log::report_drops(
            switch.clone(),
            Duration::from_secs(10),
        ));
        let ager = switch.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                ager.age_fdbs();
                ager.expire_connections();
            }
        });
        let limits = http_server::Limits::default();
        let tcp = http_server::serve_tcp(listener, app, limits);
        let unix = async {
            match unix {
                Some((l, app)) => http_server::serve_unix(l, app, limits).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tcp => Ok(false),
            () = unix => Ok(false),
            () = signals.until_stop() => Ok(false),
            () = finished.finished() => Ok(true),
        }
    });
    // A stop signal during an upgrade: its outcome decides. If the new process serves, it
    // is the one to stop (under systemd, the main process by then, it gets the signal
    // itself); this one must not stop ports that are no longer its own.
    let replaced = matches!(result, Ok(true)) || (upgrader.in_progress() && upgrader.outcome());
    if replaced {
        // Replaced: the new process serves every port and the API on the same sockets.
        // Nothing is closed or removed. The upgrade's own answer must go out first: the
        // API connections open here are waited for (their clients close them once
        // answered), at least 300 ms and at most 1 s (a client that keeps its connection
        // open is not waited for longer).
        let since = std::time::Instant::now();
        while since.elapsed() < Duration::from_millis(300)
            || (http_server::open_connections() > 0 && since.elapsed() < Duration::from_secs(1))
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::info!("exiting: the new process has taken over");
        std::process::exit(0);
    }
    let result = result.map(|_| ());
    remove_api_socket(api_socket_bound);
    tracing::info!("stopping");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    daemon.stop();
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Who may use `/v1` over TCP: holders of the token if there is one; else, when a unix
/// socket serves the API (whose permissions say who may change the switch), anyone may
/// read but changes go through the socket; else (a loopback address, checked at start)
/// anyone on the host.
fn tcp_access(token: Option<Arc<str>>, api_socket: Option<&std::path::Path>) -> http::ApiAccess {
    match (token, api_socket) {
        (Some(t), _) => http::ApiAccess::Token(t),
        (None, Some(path)) => http::ApiAccess::ReadOnly {
            api_socket: path.to_path_buf(),
        },
        (None, None) => http::ApiAccess::Open,
    }
}

/// What `--print-config` prints: the configuration, or with a state file that exists, its
/// bridges and ports (which are what will run) under the configuration's `[dataplane]`.
fn config_in_effect(config: &Config, state: Option<&std::path::Path>) -> anyhow::Result<String> {
    let saved = match state {
        Some(path) => state_file::load(path)?.map(|s| (path, s)),
        None => None,
    };
    let Some((path, saved)) = saved else {
        return Ok(vringswitch_config::to_toml(config)?);
    };
    let mut out = format!(
        "# Bridges and ports from the state file {}: they are what runs, and the\n\
         # configuration file's are not used while it exists.\n",
        path.display()
    );
    if let Some(ignored) = state_file::ignored_config(&state_file::from_config(config), &saved) {
        out.push_str(&format!("# Not used from the configuration: {ignored}.\n"));
    }
    out.push_str(&vringswitch_config::to_toml(&state_file::to_config(
        config, &saved,
    ))?);
    Ok(out)
}

/// Reads the API token: the file's content without surrounding blanks, not empty.
fn read_token(path: &std::path::Path) -> anyhow::Result<Arc<str>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --api-token-file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!("--api-token-file {} is empty", path.display());
    }
    Ok(Arc::from(token))
}

/// Binds the API's unix socket: directory created 0750 if missing, socket 0660. A socket
/// another process listens on is never replaced.
fn bind_api_socket(
    path: &std::path::Path,
) -> anyhow::Result<(tokio::net::UnixListener, BoundSocket)> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)))
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let (listener, bound) = socket_file::bind(path, 0o660)
        .with_context(|| format!("--api-socket {}", path.display()))?;
    let set_up = listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(listener))
        .with_context(|| format!("cannot listen on --api-socket {}", path.display()));
    match set_up {
        Ok(l) => Ok((l, bound)),
        Err(e) => {
            socket_file::remove_if_ours(path, bound);
            Err(e)
        }
    }
}

/// The signals the daemon acts on. Every signal whose default action would end the process
/// is caught, so that no signal ends it without removing its sockets: SIGTERM, SIGINT and
/// SIGQUIT stop it cleanly; SIGHUP, SIGUSR1 and SIGUSR2 are logged and otherwise ignored
/// (there is nothing to reload: the topology changes over the API).
struct Signals {
    stop: Vec<(&'static str, tokio::signal::unix::Signal)>,
    ignored: Vec<(&'static str, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Installs the handlers; must run inside the tokio runtime.
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut stop = Vec::new();
        for (name, kind) in [
            ("SIGTERM", SignalKind::terminate()),
            ("SIGINT", SignalKind::interrupt()),
            ("SIGQUIT", SignalKind::quit()),
        ] {
            stop.push((name, signal(kind)?));
        }
        let mut ignored = Vec::new();
        for (name, kind) in [
            ("SIGHUP", SignalKind::hangup()),
            ("SIGUSR1", SignalKind::user_defined1()),
            ("SIGUSR2", SignalKind::user_defined2()),
        ] {
            ignored.push((name, signal(kind)?));
        }
        Ok(Signals { stop, ignored })
    }

    /// Returns when a stopping signal arrives, logging every other one.
    async fn until_stop(mut self) {
        use std::future::poll_fn;
        use std::task::Poll;
        loop {
            let got = poll_fn(|cx| {
                for (i, (_, s)) in self.stop.iter_mut().enumerate() {
                    if s.poll_recv(cx).is_ready() {
                        return Poll::Ready((true, i));
                    }
                }
                for (i, (_, s)) in self.ignored.iter_mut().enumerate() {
                    if s.poll_recv(cx).is_ready() {
                        return Poll::Ready((false, i));
                    }
                }
                Poll::Pending
            })
            .await;
            match got {
                (true, i) => {
                    tracing::info!(signal = %self.stop[i].0, "stopping on a signal");
                    return;
                }
                (false, i) => tracing::warn!(
                    signal = %self.ignored[i].0,
                    "signal ignored: vringswitch has nothing to reload; change the topology \
                     with vringctl or the API, and stop it with SIGTERM"
                ),
            }
        }
    }
}
