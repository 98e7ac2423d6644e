//! The state file: a topology built over the API survives `kill -9`, and the VMs forward
//! again after the restart, client-mode ports reconnecting by themselves.

use std::os::unix::net::UnixListener;
use std::process::Command;

use serde_json::{json, Value};
use vringswitch_tests::api::call;
use vringswitch_tests::daemon::{binary, Daemon, TempDir};
use vringswitch_tests::frontend::TestVm;
use vringswitch_tests::layout::{vhost_user, Layout};
use vringswitch_tests::setup::{server_port, T};
use vringswitch_tests::{frame, mac};

/// Bridges, ports (configuration only) and the FDB's static entries, as the API shows them.
fn topology(d: &Daemon) -> Value {
    let (_, bridges) = call(d, "GET", "/v1/bridges", None);
    let (_, ports) = call(d, "GET", "/v1/ports", None);
    let ports: Vec<Value> = ports
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut p = p.clone();
            let o = p.as_object_mut().unwrap();
            o.remove("state");
            o.remove("counters");
            p
        })
        .collect();
    let mut statics = Vec::new();
    for b in bridges.as_array().unwrap() {
        let name = b["name"].as_str().unwrap();
        let (_, fdb) = call(d, "GET", &format!("/v1/bridges/{name}/fdb"), None);
        statics.extend(
            fdb.as_array()
                .unwrap()
                .iter()
                .filter(|e| e["static"] == true)
                .cloned(),
        );
    }
    json!({"bridges": bridges, "ports": ports, "static": statics})
}

#[test]
fn topology_built_over_the_api_survives_kill_9() {
    let dir = TempDir::new("state");
    let state = dir.path().join("state/topology.json");
    let a_sock = dir.path().join("a.sock");
    let config = Layout::new()
        .bridge("br0")
        .port(vhost_user("a", "br0", &a_sock))
        .toml();
    let state_arg = state.to_str().unwrap().to_owned();
    let mut d = Daemon::start_with(
        dir.path(),
        &config,
        std::slice::from_ref(&a_sock),
        &["--state", &state_arg],
    );
    assert!(state.exists(), "the state file is written at start");

    // Over the API: a bridge, a server port with a VLAN, a client port, a static entry.
    let s_sock = dir.path().join("s.sock");
    let c_sock = dir.path().join("c.sock");
    let listener = UnixListener::bind(&c_sock).unwrap();
    for (path, body) in [
        ("/v1/bridges", json!({"name": "br1", "fdb_aging_s": 60})),
        (
            "/v1/ports",
            json!({"name": "s", "bridge": "br1", "type": "vhost-user", "socket": s_sock,
                   "mode": "server", "queues": 1, "vlan": {"mode": "access", "tag": 5}}),
        ),
        (
            "/v1/ports",
            json!({"name": "c", "bridge": "br1", "type": "vhost-user", "socket": c_sock,
                   "mode": "client", "queues": 1, "vlan": {"mode": "access", "tag": 5}}),
        ),
        (
            "/v1/bridges/br1/fdb",
            json!({"mac": "02:00:00:00:00:77", "port": "c"}),
        ),
    ] {
        let (code, body) = call(&d, "POST", path, Some(body));
        assert_eq!(code, 201, "POST {path}: {body}");
    }
    let (code, _) = call(
        &d,
        "PATCH",
        "/v1/ports/a",
        Some(json!({"vlan": {"mode": "trunk", "tags": [5, 9]}})),
    );
    assert_eq!(code, 200);
    let before = topology(&d);

    let exchange = |d: &Daemon, listener: &UnixListener| {
        let mut s = TestVm::connect(&s_sock, mac(1), Default::default());
        s.post_rx(TestVm::rx(0), 16, 2048);
        let mut c = TestVm::accept(listener, mac(2), Default::default());
        c.post_rx(TestVm::rx(0), 16, 2048);
        d.wait_port_connected("s", true);
        d.wait_port_connected("c", true);
        // To the static entry: only c has it.
        s.send(TestVm::tx(0), &frame(mac(0x77), mac(1), 60, 1));
        c.expect_frames(TestVm::rx(0), 1, T);
        c.send(TestVm::tx(0), &frame(mac(1), mac(2), 60, 2));
        s.expect_frames(TestVm::rx(0), 1, T);
        (s, c)
    };
    let vms = exchange(&d, &listener);

    d.kill();
    drop(vms);
    d.restart(&[a_sock.clone(), s_sock.clone()]);
    assert_eq!(topology(&d), before, "the same topology came back");
    assert!(
        d.log_text().contains("restored=true"),
        "the log says the state was restored"
    );
    // The server port takes a new connection (as QEMU's reconnect does); the client port
    // reconnects to the listening VMM by itself. Both forward again.
    let _vms = exchange(&d, &listener);

    // A change after the restart is saved too, and the config file's ports stay out:
    // the state file wins.
    let (code, _) = call(&d, "DELETE", "/v1/ports/s", None);
    assert_eq!(code, 204);
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let names: Vec<&str> = saved["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(saved["static_macs"][0]["mac"], "02:00:00:00:00:77");
}

#[test]
fn a_damaged_state_file_stops_the_start_with_a_clear_message() {
    let dir = TempDir::new("state-bad");
    let state = dir.path().join("state.json");
    for (text, says) in [
        ("{\"version\": 1, \"bridges\": [", "EOF while parsing"),
        (
            "{\"version\": 2, \"bridges\": [], \"ports\": []}",
            "version 2",
        ),
        (
            // A valid bridge first: nothing may be saved before the whole file is restored.
            "{\"version\": 1, \"bridges\": [{\"name\": \"br0\"}], \"ports\": [{\"name\": \"p\", \
             \"bridge\": \"nope\", \"type\": \"vhost-user\", \"socket\": \"/tmp/p.sock\", \
             \"mode\": \"server\"}]}",
            "no bridge named \"nope\"",
        ),
    ] {
        std::fs::write(&state, text).unwrap();
        let out = Command::new(binary())
            .arg("--state")
            .arg(&state)
            .arg("--socket-dir")
            .arg(dir.path())
            .arg("--api")
            .arg("127.0.0.1:0")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("state file") && err.contains(says) && err.contains("remove it"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&state).unwrap(),
            text,
            "a refused state file is left as it was"
        );
    }
}

/// With a state file, edits of the configuration file's bridges and ports do nothing: the
/// start says so in one warning naming them, and `--print-config --state` prints what runs.
#[test]
fn config_edits_shadowed_by_the_state_file_are_named_at_start_and_in_print_config() {
    let dir = TempDir::new("shadowed");
    let state = dir.path().join("state.json");
    let state_arg = state.to_str().unwrap().to_owned();
    let port = |name: &str, queues: u16| server_port(dir.path(), name, "br0", queues);
    let base = Layout::new().bridge("br0");
    let first = base.clone().port(port("a", 1)).toml();
    let a_sock = dir.path().join("a.sock");
    let mut d = Daemon::start_with(
        dir.path(),
        &first,
        std::slice::from_ref(&a_sock),
        &["--state", &state_arg],
    );
    assert!(!d.log_text().contains("are not used"), "{}", d.log_text());
    d.terminate(T);

    // The operator adds a port and changes another in the file, then restarts.
    let edited = base.port(port("a", 2)).port(port("vm3", 1)).toml();
    std::fs::write(&d.config, &edited).unwrap();
    d.restart(std::slice::from_ref(&a_sock));
    let log = d.log_text();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("are not used")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    for want in [
        "port a (queues set otherwise in the state file)",
        "port vm3 (not in the state file)",
        "delete the state file",
    ] {
        assert!(
            warnings[0].contains(want),
            "{want:?} not in {}",
            warnings[0]
        );
    }
    let (_, ports) = call(&d, "GET", "/v1/ports", None);
    assert_eq!(ports.as_array().unwrap().len(), 1, "{ports}");

    // --print-config --state prints the state's ports, saying why.
    let out = Command::new(binary())
        .arg("--config")
        .arg(&d.config)
        .args(["--state", &state_arg, "--print-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("# Bridges and ports from the state file"),
        "{text}"
    );
    assert!(text.contains("port vm3 (not in the state file)"), "{text}");
    let printed: toml::Value = toml::from_str(&text).unwrap();
    let ports = printed["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "{text}");
    assert_eq!(ports[0]["name"].as_str(), Some("a"));
    assert_eq!(ports[0]["queues"].as_integer(), Some(1));
    assert_eq!(printed["dataplane"]["cores"].as_array().unwrap().len(), 1);
    // Without --state it is the file as written.
    let out = Command::new(binary())
        .arg("--config")
        .arg(&d.config)
        .arg("--print-config")
        .output()
        .unwrap();
    let printed: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(printed["ports"].as_array().unwrap().len(), 2);
}
