//! The two ways an operator's input reaches the daemon.
//! - Configuration text: parsed and validated; whatever is accepted must also survive
//!   being written back out (the state file does that) and read again, unchanged.
//! - REST requests: any method, path and body against the real router of a running daemon
//!   (two ports, one bridge). Bad requests get a 4xx answer, never a 5xx or a panic.

#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use vringswitch_config::{to_toml, Config};
use vringswitch_control::daemon::{Daemon, DaemonOptions};

struct Fixture {
    daemon: Arc<Daemon>,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vringswitch-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = Config::builtin(&dir);
        let daemon = Daemon::start(
            &config,
            DaemonOptions {
                state_file: None,
                socket_dir: Some(dir),
                own_paths: Vec::new(),
                log_control: None,
            },
        )
        .expect("start a daemon for the REST target");
        Fixture {
            daemon: Arc::new(daemon),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    })
}

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];
const PATHS: [&str; 8] = [
    "/v1/bridges",
    "/v1/bridges/",
    "/v1/bridges/br0/fdb",
    "/v1/ports",
    "/v1/ports/",
    "/v1/stats",
    "/metrics",
    "/",
];

fn config_text(text: &str) {
    let Ok(config) = Config::parse(text, Path::new("fuzz.toml")) else {
        return;
    };
    let written = to_toml(&config).expect("an accepted configuration serializes");
    let again = Config::parse(&written, Path::new("written.toml"))
        .unwrap_or_else(|e| panic!("written configuration refused: {e}\n{written}"));
    assert_eq!(
        again, config,
        "configuration changed on the way out and back"
    );
}

fn rest(selector: u8, data: &[u8]) {
    let f = fixture();
    let method = METHODS[usize::from(selector) % METHODS.len()].clone();
    // The path: a known prefix and a fuzzed tail (up to the first newline), then the body.
    let (tail, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut path = String::from(PATHS[usize::from(selector / 8) % PATHS.len()]);
    for &c in tail {
        // Keep to bytes a URI may hold; percent-encode the rest.
        if c.is_ascii_alphanumeric() || b"-._~/?=&%".contains(&c) {
            path.push(char::from(c));
        } else {
            path.push_str(&format!("%{c:02X}"));
        }
    }
    let Ok(request) = Request::builder()
        .method(method)
        .uri(&path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
    else {
        return;
    };
    let router = vringswitch_control::http::router(
        f.daemon.clone(),
        vringswitch_control::http::ApiAccess::Open,
    );
    let response = f
        .runtime
        .block_on(router.oneshot(request))
        .expect("the router answers");
    assert!(
        !response.status().is_server_error(),
        "{path}: {} for a bad request",
        response.status()
    );
    // Keep the daemon small: ports created by earlier inputs are removed again.
    let ports = f.daemon.ports();
    if ports.len() > 6 {
        for (spec, _) in ports {
            if spec.name != "vm1" && spec.name != "vm2" {
                let _ = f.daemon.remove_port(&spec.name);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest_of)) = data.split_first() else {
        return;
    };
    if selector & 0x80 == 0 {
        if let Ok(text) = std::str::from_utf8(rest_of) {
            config_text(text);
        }
    } else {
        rest(selector & 0x7f, rest_of);
    }
});
