//! The topology API (/v1/bridges, /v1/ports) against a running daemon: every endpoint, every
//! error case, and changes made while other ports forward.

use serde_json::{json, Value};
use vhost::VhostBackend;
use vringswitch_tests::api::{assert_error, call, call_raw, names};
use vringswitch_tests::frontend::TestVm;
use vringswitch_tests::layout::{
    vhost_user, vhost_user_with, Layout, SocketMode, VhostUserSettings,
};
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{frame, mac, wait_until, BROADCAST};

#[test]
fn bridges_are_created_listed_and_deleted_and_bad_requests_change_nothing() {
    let s = Setup::new("api-bridges", &[("br0", &["a"])], 1);
    let (code, list) = call(&s.daemon, "GET", "/v1/bridges", None);
    assert_eq!(code, 200);
    assert_eq!(
        list,
        json!([{"name": "br0", "fdb_aging_s": 300, "fdb_max_learned": 8192, "external_ids": {},
            "ports": ["a"]}])
    );

    let (code, br1) = call(
        &s.daemon,
        "POST",
        "/v1/bridges",
        Some(json!({"name": "br1", "fdb_aging_s": 60, "fdb_max_learned": 100})),
    );
    assert_eq!(code, 201, "{br1}");
    assert_eq!(
        br1,
        json!({"name": "br1", "fdb_aging_s": 60, "fdb_max_learned": 100, "external_ids": {},
            "ports": []})
    );
    let (code, got) = call(&s.daemon, "GET", "/v1/bridges/br1", None);
    assert_eq!((code, got), (200, br1));
    // The default ageing time.
    let (code, br2) = call(
        &s.daemon,
        "POST",
        "/v1/bridges",
        Some(json!({"name": "br2"})),
    );
    assert_eq!((code, br2["fdb_aging_s"].clone()), (201, json!(300)));

    assert_error(
        call(
            &s.daemon,
            "POST",
            "/v1/bridges",
            Some(json!({"name": "br1"})),
        ),
        409,
        "conflict",
        "already exists",
    );
    assert_error(
        call_raw(&s.daemon, "POST", "/v1/bridges", "{\"name\": "),
        400,
        "bad_request",
        "request body",
    );
    // serde would take an array of the fields in order; the API wants an object.
    assert_error(
        call_raw(&s.daemon, "POST", "/v1/bridges", "[\"x\", 5]"),
        400,
        "bad_request",
        "expected a JSON object",
    );
    // Integers may be written as 60.0, as JSON Schema allows; not as 60.5.
    assert_error(
        call(
            &s.daemon,
            "POST",
            "/v1/bridges",
            Some(json!({"name": "x", "fdb_aging_s": 60.5})),
        ),
        400,
        "bad_request",
        "60.5",
    );
    assert_error(
        call(
            &s.daemon,
            "POST",
            "/v1/bridges",
            Some(json!({"name": "x", "colour": 1})),
        ),
        400,
        "bad_request",
        "colour",
    );
    assert_error(
        call(
            &s.daemon,
            "POST",
            "/v1/bridges",
            Some(json!({"fdb_aging_s": 1})),
        ),
        400,
        "bad_request",
        "name",
    );
    assert_error(
        call(
            &s.daemon,
            "POST",
            "/v1/bridges",
            Some(json!({"name": "bad name"})),
        ),
        400,
        "invalid",
        "must be 1 to 64 characters",
    );
    assert_error(
        call(
            &s.daemon,
            "POST",
            "/v1/bridges",
            Some(json!({"name": "x", "fdb_aging_s": 0})),
        ),
        400,
        "invalid",
        "fdb_aging_s",
    );
    assert_error(
        call(
            &s.daemon,
            "POST",
            "/v1/bridges",
            Some(json!({"name": "x", "fdb_max_learned": 0})),
        ),
        400,
        "invalid",
        "fdb_max_learned must be between 1 and 1000000 addresses, not 0",
    );
    assert_error(
        call(
            &s.daemon,
            "POST",
            "/v1/bridges",
            Some(json!({"name": "x", "fdb_aging_s": -1})),
        ),
        400,
        "bad_request",
        "request body",
    );
    assert_error(
        call(&s.daemon, "GET", "/v1/bridges/nope", None),
        404,
        "not_found",
        "no bridge named \"nope\"",
    );
    assert_error(
        call(&s.daemon, "DELETE", "/v1/bridges/br0", None),
        409,
        "conflict",
        "still has ports [\"a\"]",
    );
    assert_error(
        call(&s.daemon, "GET", "/v1/nothing-here", None),
        404,
        "not_found",
        "no such endpoint",
    );
    // None of the refused requests changed anything.
    let (_, list) = call(&s.daemon, "GET", "/v1/bridges", None);
    assert_eq!(names(&list), ["br0", "br1", "br2"]);

    assert_eq!(call(&s.daemon, "DELETE", "/v1/bridges/br1", None).0, 204);
    assert_error(
        call(&s.daemon, "DELETE", "/v1/bridges/br1", None),
        404,
        "not_found",
        "br1",
    );
    let (_, list) = call(&s.daemon, "GET", "/v1/bridges", None);
    assert_eq!(names(&list), ["br0", "br2"]);
    // The metrics follow: br1's series are gone, br2's are there.
    let m = s.daemon.metrics();
    assert!(!m.contains("bridge=\"br1\""));
    assert!(m.contains("vringswitch_fdb_entries{bridge=\"br2\"}"));
}

#[test]
fn ports_are_created_with_live_state_and_deleted_and_bad_requests_change_nothing() {
    let s = Setup::new("api-ports", &[("br0", &["a"])], 1);
    let sock = |n: &str| s.dir.path().join(format!("{n}.sock"));
    let port = |name: &str, bridge: &str, socket: &std::path::Path| {
        json!({"name": name, "bridge": bridge, "type": "vhost-user",
               "socket": socket, "mode": "server", "queues": 1})
    };
    assert_eq!(
        call(
            &s.daemon,
            "POST",
            "/v1/bridges",
            Some(json!({"name": "br1"}))
        )
        .0,
        201
    );
    let (code, c) = call(
        &s.daemon,
        "POST",
        "/v1/ports",
        Some(port("c", "br1", &sock("c"))),
    );
    assert_eq!(code, 201, "{c}");
    assert_eq!(c["bridge"], "br1");
    assert_eq!(c["state"]["connected"], false);
    assert_eq!(c["state"]["ready"], false);
    assert_eq!(c["counters"]["rx_packets"], 0);
    assert!(sock("c").exists(), "the server socket is bound");

    // A VM attaches: the live state says so.
    let mut vm = TestVm::connect(&sock("c"), mac(3), Default::default());
    vm.post_rx(TestVm::rx(0), 8, 2048);
    s.daemon.wait_port_connected("c", true);
    let (code, c) = call(&s.daemon, "GET", "/v1/ports/c", None);
    assert_eq!(code, 200);
    assert_eq!(c["state"]["connected"], true);
    assert_eq!(c["state"]["ready"], true);
    assert_eq!(c["state"]["queue_pairs_active"], 1);
    assert!(c["state"]["features"].as_str().unwrap().starts_with("0x"));
    let (_, b) = call(&s.daemon, "GET", "/v1/bridges/br1", None);
    assert_eq!(b["ports"], json!(["c"]));

    // Port "d" on br1 with one field replaced.
    let d_with = |field: &str, value: Value| {
        let mut p = port("d", "br1", &sock("d"));
        p[field] = value;
        p
    };
    std::fs::create_dir(s.dir.path().join("in-the-way")).unwrap();
    let bad = [
        (
            port("c", "br1", &sock("c2")),
            409,
            "conflict",
            "port \"c\" already exists",
        ),
        (
            port("d", "nope", &sock("d")),
            400,
            "invalid",
            "no bridge named \"nope\"",
        ),
        (
            port("d", "br1", &sock("c")),
            409,
            "conflict",
            "already used by port \"c\"",
        ),
        (
            port("d", "br1", std::path::Path::new("rel.sock")),
            400,
            "invalid",
            "must be absolute",
        ),
        (
            port("d", "br1", std::path::Path::new("/tmp/elsewhere.sock")),
            400,
            "invalid",
            "outside the socket directory",
        ),
        (
            port("d", "br1", &s.dir.path().join("../d.sock")),
            400,
            "invalid",
            "outside the socket directory",
        ),
        (
            port("bad/name", "br1", &sock("d")),
            400,
            "invalid",
            "port name",
        ),
        (
            d_with("queues", json!(0)),
            400,
            "invalid",
            "queues must be between 1 and 16",
        ),
        (
            d_with("mode", json!("listen")),
            400,
            "bad_request",
            "listen",
        ),
        (d_with("type", json!("tun")), 400, "bad_request", "tun"),
        (d_with("vlan_id", json!(5)), 400, "bad_request", "vlan_id"),
        (
            // A directory of that name is in the way: the socket cannot be bound.
            port("d", "br1", &s.dir.path().join("in-the-way")),
            422,
            "port_failed",
            "port d",
        ),
        (
            port("d", "br1", &s.dir.path().join("sub/d.sock")),
            400,
            "invalid",
            "outside the socket directory",
        ),
    ];
    for (body, status, kind, says) in bad {
        assert_error(
            call(&s.daemon, "POST", "/v1/ports", Some(body)),
            status,
            kind,
            says,
        );
    }
    assert_error(
        call(&s.daemon, "GET", "/v1/ports/d", None),
        404,
        "not_found",
        "no port named \"d\"",
    );
    let (_, list) = call(&s.daemon, "GET", "/v1/ports", None);
    assert_eq!(names(&list), ["a", "c"], "refused requests added nothing");
    assert!(!sock("d").exists());

    assert_eq!(call(&s.daemon, "DELETE", "/v1/ports/c", None).0, 204);
    assert!(
        !sock("c").exists(),
        "a removed server port's socket is removed"
    );
    assert_error(
        call(&s.daemon, "DELETE", "/v1/ports/c", None),
        404,
        "not_found",
        "no port named \"c\"",
    );
    assert!(!s.daemon.metrics().contains("port=\"c\""));
    // The VM was disconnected: its next message fails.
    assert!(
        vm.frontend.get_features().is_err(),
        "the removed port's frontend is still served"
    );
    // The name and the socket can be used again, and the bridge deleted once empty.
    assert_eq!(
        call(
            &s.daemon,
            "POST",
            "/v1/ports",
            Some(port("c", "br1", &sock("c")))
        )
        .0,
        201
    );
    assert_eq!(call(&s.daemon, "DELETE", "/v1/ports/c", None).0, 204);
    assert_eq!(call(&s.daemon, "DELETE", "/v1/bridges/br1", None).0, 204);
}

#[test]
fn adding_changing_and_removing_ports_loses_no_frame_between_two_others() {
    let s = Setup::new("api-churn", &[("br0", &["a", "b"]), ("br1", &[])], 1);
    let (mut a, mut b) = (s.vm("a", 1), s.vm("b", 2));
    s.wait_connected(&["a", "b"]);
    // b is learnt, so a's frames are unicast to b.
    b.send(TestVm::tx(0), &frame(mac(1), mac(2), 60, 0));
    a.expect_frames(TestVm::rx(0), 1, T);
    let mut sent = 0u64;
    for round in 0..10u8 {
        for i in 0..40u8 {
            a.send(TestVm::tx(0), &frame(mac(2), mac(1), 100, i));
            sent += 1;
        }
        // While those frames are in flight, change the topology around them.
        let name = format!("p{round}");
        let sock = s.dir.path().join(format!("{name}.sock"));
        let body = json!({"name": name, "bridge": "br0", "type": "vhost-user",
                          "socket": sock, "mode": "server", "queues": 1});
        assert_eq!(call(&s.daemon, "POST", "/v1/ports", Some(body)).0, 201);
        let (code, moved) = call(
            &s.daemon,
            "PATCH",
            &format!("/v1/ports/{name}"),
            Some(json!({"bridge": "br1", "vlan": {"mode": "access", "tag": 7}})),
        );
        assert_eq!(code, 200, "{moved}");
        assert_eq!(moved["bridge"], "br1");
        assert_eq!(
            call(
                &s.daemon,
                "DELETE",
                &format!("/v1/bridges/br1/fdb?port={name}"),
                None
            )
            .0,
            204
        );
        if round % 2 == 1 {
            let prev = format!("p{}", round - 1);
            assert_eq!(
                call(&s.daemon, "DELETE", &format!("/v1/ports/{prev}"), None).0,
                204
            );
        }
        let got = b.expect_frames(TestVm::rx(0), 40, T);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(
                r.frame,
                frame(mac(2), mac(1), 100, i as u8),
                "round {round}"
            );
        }
        b.post_rx(TestVm::rx(0), 40, 2048);
        a.wait_tx_done(TestVm::tx(0), T);
    }
    assert_eq!(s.counter("rx_packets", "a"), sent);
    assert_eq!(s.counter("tx_packets", "b"), sent);
    for reason in ["no_rx_buffer", "port_down", "bad_descriptor"] {
        assert_eq!(s.drops("a", reason) + s.drops("b", reason), 0, "{reason}");
    }
}

/// Makes port t a trunk of VLANs 5 and 6, connects VMs on a and b, and has a's MAC learnt
/// (one frame a -> b).
fn trunk_t_and_a_learnt(s: &Setup) -> (TestVm, TestVm) {
    let (code, _) = call(
        &s.daemon,
        "PATCH",
        "/v1/ports/t",
        Some(json!({"vlan": {"mode": "trunk", "tags": [5, 6]}})),
    );
    assert_eq!(code, 200);
    let (mut a, mut b) = (s.vm("a", 1), s.vm("b", 2));
    s.wait_connected(&["a", "b"]);
    a.send(TestVm::tx(0), &frame(mac(2), mac(1), 60, 0));
    b.expect_frames(TestVm::rx(0), 1, T);
    (a, b)
}

#[test]
fn fdb_is_listed_given_static_entries_and_flushed() {
    let s = Setup::new("api-fdb", &[("br0", &["a", "b", "t"]), ("br1", &["z"])], 1);
    let d = &s.daemon;
    let (mut a, mut b) = trunk_t_and_a_learnt(&s);
    let (code, fdb) = call(d, "GET", "/v1/bridges/br0/fdb", None);
    assert_eq!(code, 200);
    let entry = &fdb.as_array().unwrap()[0];
    assert_eq!(
        (
            &entry["mac"],
            &entry["vlan"],
            &entry["port"],
            &entry["static"]
        ),
        (
            &json!("02:00:00:00:00:01"),
            &json!(0),
            &json!("a"),
            &json!(false)
        ),
        "{fdb}"
    );
    assert!(entry["age_s"].as_u64().unwrap() < 5);

    // A static entry steers frames to b even though the MAC was never seen there.
    let (code, added) = call(
        d,
        "POST",
        "/v1/bridges/br0/fdb",
        Some(json!({"mac": "02:00:00:00:00:99", "port": "b"})),
    );
    assert_eq!(code, 201, "{added}");
    assert_eq!(
        added,
        json!({"bridge": "br0", "mac": "02:00:00:00:00:99", "vlan": 0, "port": "b"})
    );
    a.send(TestVm::tx(0), &frame(mac(99), mac(1), 60, 1));
    b.expect_frames(TestVm::rx(0), 1, T);
    // A trunk port's entry names its VLAN.
    let (code, _) = call(
        d,
        "POST",
        "/v1/bridges/br0/fdb",
        Some(json!({"mac": "02:00:00:00:00:98", "port": "t", "vlan": 6})),
    );
    assert_eq!(code, 201);
    let (_, fdb) = call(d, "GET", "/v1/bridges/br0/fdb", None);
    let statics: Vec<_> = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["static"] == true)
        .map(|e| {
            (
                e["mac"].clone(),
                e["vlan"].clone(),
                e["port"].clone(),
                e["age_s"].clone(),
            )
        })
        .collect();
    assert_eq!(
        statics,
        [
            (
                json!("02:00:00:00:00:99"),
                json!(0),
                json!("b"),
                Value::Null
            ),
            (
                json!("02:00:00:00:00:98"),
                json!(6),
                json!("t"),
                Value::Null
            ),
        ]
    );

    let bad = [
        (
            json!({"mac": "02:00:00:00:00", "port": "b"}),
            400,
            "invalid",
            "not a MAC address",
        ),
        (
            json!({"mac": "01:00:5e:00:00:01", "port": "b"}),
            400,
            "invalid",
            "unicast",
        ),
        (
            json!({"mac": "02:00:00:00:00:07", "port": "nope"}),
            400,
            "invalid",
            "no port named",
        ),
        (
            json!({"mac": "02:00:00:00:00:07", "port": "z"}),
            400,
            "invalid",
            "on bridge \"br1\"",
        ),
        (
            json!({"mac": "02:00:00:00:00:07", "port": "t"}),
            400,
            "invalid",
            "is a trunk",
        ),
        (
            json!({"mac": "02:00:00:00:00:07", "port": "t", "vlan": 7}),
            400,
            "invalid",
            "does not carry VLAN 7",
        ),
        (
            json!({"mac": "02:00:00:00:00:07", "port": "b", "vlan": 70000}),
            400,
            "bad_request",
            "70000",
        ),
        (
            json!({"mac": "02:00:00:00:00:07", "port": "b", "age": 1}),
            400,
            "bad_request",
            "age",
        ),
    ];
    for (body, status, kind, says) in bad {
        assert_error(
            call(d, "POST", "/v1/bridges/br0/fdb", Some(body)),
            status,
            kind,
            says,
        );
    }
    assert_error(
        call(
            d,
            "POST",
            "/v1/bridges/nope/fdb",
            Some(json!({"mac": "02:00:00:00:00:07", "port": "a"})),
        ),
        404,
        "not_found",
        "no bridge named \"nope\"",
    );
    assert_error(
        call(d, "GET", "/v1/bridges/nope/fdb", None),
        404,
        "not_found",
        "nope",
    );
    assert_error(
        call(d, "DELETE", "/v1/bridges/br0/fdb?port=z", None),
        400,
        "invalid",
        "on bridge",
    );
    assert_error(
        call(d, "DELETE", "/v1/bridges/br0/fdb?port=nope", None),
        400,
        "invalid",
        "nope",
    );
    assert_error(
        call(d, "DELETE", "/v1/bridges/br0/fdb?colour=red", None),
        400,
        "bad_request",
        "colour",
    );
    let (_, fdb) = call(d, "GET", "/v1/bridges/br0/fdb", None);
    assert_eq!(
        fdb.as_array().unwrap().len(),
        3,
        "refused requests changed nothing: {fdb}"
    );

    // A trunk that would lose the VLAN of its static entry is refused.
    assert_error(
        call(
            d,
            "PATCH",
            "/v1/ports/t",
            Some(json!({"vlan": {"mode": "trunk", "tags": [5]}})),
        ),
        409,
        "conflict",
        "static entry 02:00:00:00:00:98 on VLAN 6",
    );
    // Moving b takes its static entry along and forgets what it learnt.
    let (code, _) = call(d, "PATCH", "/v1/ports/b", Some(json!({"bridge": "br1"})));
    assert_eq!(code, 200);
    let (_, fdb1) = call(d, "GET", "/v1/bridges/br1/fdb", None);
    assert_eq!(fdb1.as_array().unwrap().len(), 1, "{fdb1}");
    assert_eq!(fdb1[0]["mac"], "02:00:00:00:00:99");
    let (code, _) = call(d, "PATCH", "/v1/ports/b", Some(json!({"bridge": "br0"})));
    assert_eq!(code, 200);

    // Flush one port's entries (static ones too), then everything.
    assert_eq!(call(d, "DELETE", "/v1/bridges/br0/fdb?port=t", None).0, 204);
    let (_, fdb) = call(d, "GET", "/v1/bridges/br0/fdb", None);
    assert!(
        fdb.as_array().unwrap().iter().all(|e| e["port"] != "t"),
        "{fdb}"
    );
    assert!(!fdb.as_array().unwrap().is_empty());
    assert_eq!(call(d, "DELETE", "/v1/bridges/br0/fdb", None).0, 204);
    let (_, fdb) = call(d, "GET", "/v1/bridges/br0/fdb", None);
    assert_eq!(fdb, json!([]));
    // Learning starts again.
    a.send(TestVm::tx(0), &frame(BROADCAST, mac(1), 60, 2));
    b.expect_frames(TestVm::rx(0), 1, T);
    let (_, fdb) = call(d, "GET", "/v1/bridges/br0/fdb", None);
    assert_eq!(fdb.as_array().unwrap().len(), 1);
}

/// Runs vringctl with `args`; returns (exit code, stdout, stderr).
fn vringctl(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(vringswitch_tests::daemon::vringctl())
        .args(args)
        .output()
        .expect("run vringctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_token_guards_v1_and_the_unix_socket_serves_vringctl() {
    use std::os::unix::fs::PermissionsExt;
    use vringswitch_tests::daemon::{binary, free_port, Daemon, TempDir};

    let dir = TempDir::new("api-access");
    // Off loopback without a token: refused at start.
    let out = std::process::Command::new(binary())
        .args(["--api", &format!("0.0.0.0:{}", free_port())])
        .arg("--socket-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--api-token-file"), "{err}");

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let api_sock = dir.path().join("run/api.sock");
    let a = dir.path().join("a.sock");
    let config = Layout::new()
        .bridge("br0")
        .port(vhost_user("a", "br0", &a))
        .toml();
    let d = Daemon::start_with(
        dir.path(),
        &config,
        std::slice::from_ref(&a),
        &[
            "--api-token-file",
            token_file.to_str().unwrap(),
            "--api-socket",
            api_sock.to_str().unwrap(),
        ],
    );
    // /v1 needs the token; /metrics and /healthz do not.
    assert_error(
        call(&d, "GET", "/v1/bridges", None),
        401,
        "unauthorized",
        "Bearer",
    );
    let get = |auth: &str| match ureq::get(&format!("http://{}/v1/bridges", d.api))
        .set("Authorization", auth)
        .call()
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(get("Bearer s3cret-token"), 200);
    // The scheme in any case (RFC 9110).
    assert_eq!(get("bearer s3cret-token"), 200);
    assert_eq!(get("BEARER s3cret-token"), 200);
    assert_eq!(get("Bearer s3cret-tokeN"), 401);
    assert_eq!(get("Basic s3cret-token"), 401);
    // Refusals are logged, at a bounded rate.
    wait_until(T, "the refused token in the log", || {
        d.log_text()
            .contains("API request refused: no bearer token")
            .then_some(())
    });
    for _ in 0..20 {
        assert_eq!(get("Bearer nope"), 401);
    }
    let lines = d.log_text().matches("API request refused").count();
    assert!(lines <= 2, "{lines} log lines for 22 refusals");
    assert!(d.metrics().contains("vringswitch_port_connected"));

    // The unix socket: mode 0660, no token needed (its permissions are the guard).
    let mode = std::fs::metadata(&api_sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let sock = api_sock.to_str().unwrap();
    let tcp = d.api.as_str();

    // A vringctl session over both, as in docs/api.md.
    let ok = |args: &[&str]| {
        let (code, out, err) = vringctl(args);
        assert_eq!(code, 0, "vringctl {args:?}: {err}");
        out
    };
    let vm_sock = dir.path().join("vm9.sock");
    let vm_sock = vm_sock.to_str().unwrap();
    ok(&[
        "--api",
        sock,
        "bridge",
        "add",
        "br9",
        "--fdb-aging",
        "60",
        "--fdb-max-learned",
        "500",
    ]);
    let out = ok(&["--api", sock, "bridge", "list"]);
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["br9", "60", "500"]),
        "{out}"
    );
    ok(&[
        "--api", sock, "port", "add", "vm9", "--bridge", "br9", "--socket", vm_sock, "--access",
        "10",
    ]);
    let out = ok(&["--api", tcp, "--token", "s3cret-token", "port", "list"]);
    let row = out.lines().find(|l| l.starts_with("vm9")).expect(&out);
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols[..6],
        ["vm9", "br9", "server", "access", "10", "down"],
        "{out}"
    );
    ok(&["--api", sock, "port", "set", "vm9", "--trunk", "10,20"]);
    let (_, p) = call_with_socket_free(&d, "vm9");
    assert_eq!(p["vlan"], json!({"mode": "trunk", "tags": [10, 20]}));
    ok(&[
        "--api",
        sock,
        "fdb",
        "add",
        "br9",
        "02:00:00:00:00:42",
        "--port",
        "vm9",
        "--vlan",
        "20",
    ]);
    let out = ok(&["--api", sock, "fdb", "show", "br9"]);
    assert!(
        out.contains("02:00:00:00:00:42") && out.contains("static"),
        "{out}"
    );
    let out = ok(&["--api", sock, "--json", "fdb", "show", "br9"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["vlan"], 20);
    ok(&["--api", sock, "fdb", "flush", "br9", "--port", "vm9"]);
    assert_eq!(
        ok(&["--api", sock, "--json", "fdb", "show", "br9"]).trim(),
        "[]"
    );
    ok(&["--api", sock, "port", "set", "vm9", "--no-vlan"]);

    // Errors carry the API's words and exit 1; an unreachable API exits 3; no token, 1.
    let (code, _, err) = vringctl(&[
        "--api", sock, "port", "add", "x", "--bridge", "nope", "--socket", vm_sock,
    ]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "vringctl: error: no bridge named \"nope\" (invalid)",
        "the daemon's words, not an HTTP line"
    );
    let (code, _, err) = vringctl(&["--api", sock, "fdb", "del", "br9", "52:54:00:00:00:99"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("52:54:00:00:00:99") && !err.contains("%3A") && !err.contains("HTTP"),
        "{err}"
    );
    // A MAC that is none is a usage error, refused before anything is sent.
    for args in [
        &["fdb", "add", "br9", "52:54:00:00:00:0g", "--port", "vm9"][..],
        &["fdb", "del", "br9", "zz:54"],
        &[
            "port",
            "set",
            "vm9",
            "--allow-mac",
            "02:00:00:00:00:01,nope",
        ],
    ] {
        let mut all = vec!["--api", sock];
        all.extend_from_slice(args);
        let (code, _, err) = vringctl(&all);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("is not a MAC address"), "{args:?}: {err}");
    }
    let (code, _, err) = vringctl(&["--api", sock, "bridge", "del", "br9"]);
    assert_eq!(code, 1);
    assert!(err.contains("conflict") && err.contains("vm9"), "{err}");
    let (code, _, err) = vringctl(&["--api", tcp, "bridge", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("unauthorized"), "{err}");
    let missing = dir.path().join("none.sock");
    let (code, _, err) = vringctl(&["--api", missing.to_str().unwrap(), "bridge", "list"]);
    assert_eq!(code, 3, "{err}");
    let (code, _, _) = vringctl(&["--api", sock, "port", "add", "y"]);
    assert_eq!(code, 2, "missing --bridge is a usage error");
    let (code, _, _) = vringctl(&[
        "--api", sock, "port", "set", "vm9", "--access", "1", "--trunk", "2",
    ]);
    assert_eq!(code, 2, "--access and --trunk exclude each other");

    ok(&["--api", sock, "port", "del", "vm9"]);
    ok(&["--api", sock, "bridge", "del", "br9"]);
    let out = ok(&["--api", sock, "--json", "bridge", "list"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(names(&v), ["br0"]);
}

/// GET /v1/ports/{name} over the unix socket, which needs no token.
fn call_with_socket_free(d: &vringswitch_tests::daemon::Daemon, name: &str) -> (i32, Value) {
    let (code, out, err) = vringctl(&[
        "--api",
        d.dir.join("run/api.sock").to_str().unwrap(),
        "--json",
        "port",
        "show",
        name,
    ]);
    assert_eq!(code, 0, "{err}");
    (code, serde_json::from_str(&out).unwrap())
}

/// As the shipped unit runs it (an API socket, no token): anyone on the host may read /v1
/// over TCP, but changes go through the unix socket, whose permissions say who may.
#[test]
fn with_an_api_socket_and_no_token_tcp_is_read_only() {
    use vringswitch_tests::daemon::{http_request, http_request_unix, Daemon, TempDir};

    let dir = TempDir::new("api-readonly");
    let api_sock = dir.path().join("api.sock");
    let d = Daemon::start_with(
        dir.path(),
        &Layout::new().bridge("br0").toml(),
        &[],
        &["--api-socket", api_sock.to_str().unwrap()],
    );
    let port = format!(
        r#"{{"name": "p", "bridge": "br0", "type": "vhost-user", "socket": "{}", "mode": "server"}}"#,
        dir.path().join("p.sock").display()
    );
    for (method, path, body) in [
        ("POST", "/v1/bridges", Some(r#"{"name": "br1"}"#)),
        ("POST", "/v1/ports", Some(port.as_str())),
        ("DELETE", "/v1/bridges/br0", None),
        ("PATCH", "/v1/ports/p", Some(r#"{"vlan": null}"#)),
        (
            "POST",
            "/v1/bridges/br0/fdb",
            Some(r#"{"mac": "02:00:00:00:00:01", "port": "p"}"#),
        ),
        ("DELETE", "/v1/bridges/br0/fdb", None),
        // A capture shows the VMs' traffic: not to whoever can reach the TCP port.
        ("GET", "/v1/ports/p/capture", None),
    ] {
        let (code, text) = http_request(&d.api, method, path, body);
        assert_eq!(code, 403, "{method} {path} over TCP: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"], "forbidden");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("vringctl --api {}", api_sock.display())),
            "{text}"
        );
    }
    let (code, text) = http_request(&d.api, "GET", "/v1/bridges", None);
    assert_eq!((code, text.contains("br0")), (200, true), "{text}");
    assert!(d.metrics().contains("vringswitch_ports_configured"));

    // Nothing changed; over the socket the same changes are taken.
    let (code, text) =
        http_request_unix(&api_sock, "POST", "/v1/bridges", Some(r#"{"name": "br1"}"#));
    assert_eq!(code, 201, "{text}");
    let (code, text) = http_request_unix(&api_sock, "POST", "/v1/ports", Some(&port));
    assert_eq!(code, 201, "{text}");
    let (_, bridges) = call(&d, "GET", "/v1/bridges", None);
    assert_eq!(bridges.as_array().unwrap().len(), 2, "{bridges}");
    // A trace changes nothing: a read, taken over TCP too.
    let (code, text) = http_request(
        &d.api,
        "POST",
        "/v1/trace",
        Some(r#"{"port": "p", "src": "02:00:00:00:00:01", "dst": "ff:ff:ff:ff:ff:ff"}"#),
    );
    assert_eq!(code, 200, "{text}");
}

/// A port's socket may be left out, as OVS chooses it for `ovs-vsctl add-port`: over the
/// API and vringctl it is SOCKET_DIR/NAME.sock (SOCKET_DIR/client/NAME.sock for a
/// client-mode port); in the configuration file too, SOCKET_DIR being its `socket_dir`
/// unless --socket-dir says otherwise.
#[test]
fn a_port_without_a_socket_gets_one_in_the_socket_directory() {
    use vringswitch_tests::daemon::{binary, Daemon, TempDir};
    let dir = TempDir::new("default-socket");
    let d = Daemon::start(dir.path(), &Layout::new().bridge("br0").toml(), &[]);
    let (code, p) = call(
        &d,
        "POST",
        "/v1/ports",
        Some(json!({"name": "vm9", "bridge": "br0", "type": "vhost-user", "mode": "server"})),
    );
    assert_eq!(code, 201, "{p}");
    let want = dir.path().join("vm9.sock");
    assert_eq!(p["socket"], json!(want));
    assert!(want.exists());
    let (code, p) = call(
        &d,
        "POST",
        "/v1/ports",
        Some(json!({"name": "vm8", "bridge": "br0", "type": "vhost-user", "mode": "client"})),
    );
    assert_eq!(code, 201, "{p}");
    assert_eq!(p["socket"], json!(dir.path().join("client/vm8.sock")));
    // Nor a type: a VM's port, as in the configuration file.
    let (code, p) = call(
        &d,
        "POST",
        "/v1/ports",
        Some(json!({"name": "vm6", "bridge": "br0"})),
    );
    assert_eq!(code, 201, "{p}");
    assert_eq!(p["type"], "vhost-user");
    assert_eq!(p["socket"], json!(dir.path().join("vm6.sock")));
    let (code, out, err) = vringctl(&["--api", &d.api, "port", "add", "vm7", "--bridge", "br0"]);
    assert_eq!(code, 0, "{err}");
    let want = dir.path().join("vm7.sock");
    assert_eq!(
        out.trim(),
        format!("port vm7 added, socket {}", want.display())
    );
    assert!(want.exists());

    // The configuration file: socket_dir, and a port without a socket.
    let config = dir.path().join("c.toml");
    let layout = Layout::new()
        .socket_dir(std::path::Path::new("/run/vs-test"))
        .bridge("br0")
        .port(vhost_user_with(
            "vm1",
            "br0",
            VhostUserSettings {
                mode: Some(SocketMode::Server),
                ..VhostUserSettings::default()
            },
        ));
    std::fs::write(&config, layout.toml()).unwrap();
    let print = |extra: &[&str]| {
        let out = std::process::Command::new(binary())
            .arg("--config")
            .arg(&config)
            .args(extra)
            .arg("--print-config")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(print(&[]).contains("socket = \"/run/vs-test/vm1.sock\""));
    let other = dir.path().join("other");
    let text = print(&["--socket-dir", other.to_str().unwrap()]);
    assert!(
        text.contains(&format!(
            "socket = \"{}\"",
            other.join("vm1.sock").display()
        )),
        "{text}"
    );
    // A port written by hand with neither type nor socket: a VM's, in the socket directory.
    std::fs::write(
        &config,
        "socket_dir = \"/run/vs-test\"\n[[bridges]]\nname = \"br0\"\n\
         [[ports]]\nname = \"vm2\"\nbridge = \"br0\"\n",
    )
    .unwrap();
    let text = print(&[]);
    assert!(
        text.contains("type = \"vhost-user\"")
            && text.contains("socket = \"/run/vs-test/vm2.sock\""),
        "{text}"
    );
}

/// A query string on a route that takes none is refused (a misspelt filter returned
/// everything); the FDB flush's `port` still works.
#[test]
fn unknown_query_parameters_are_refused() {
    let s = Setup::new("query", &[("br0", &["a"])], 1);
    let d = &s.daemon;
    for path in [
        "/v1/ports?bridge=nope",
        "/v1/bridges?x",
        "/v1/stats?interval=1",
    ] {
        let (code, v) = call(d, "GET", path, None);
        assert_eq!(code, 400, "{path}: {v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("unknown query parameter"),
            "{v}"
        );
    }
    let (code, v) = call(d, "GET", "/v1/ports?bridge=nope", None);
    assert!(
        v["detail"].as_str().unwrap().contains("\"bridge\""),
        "{code} {v}"
    );
    let (code, _) = call(d, "DELETE", "/v1/bridges/br0/fdb?port=a", None);
    assert_eq!(code, 204);
    let (code, _) = call(d, "DELETE", "/v1/bridges/br0/fdb?prot=a", None);
    assert_eq!(code, 400);
}

/// One FDB entry, learnt or static, is deleted without flushing the port's others, over
/// the API and with `vringctl fdb del`; a MAC known on several VLANs needs the VLAN.
#[test]
fn one_fdb_entry_is_deleted_alone() {
    let s = Setup::new("fdb-del", &[("br0", &["a", "b", "t"])], 1);
    let d = &s.daemon;
    let _vms = trunk_t_and_a_learnt(&s);
    for (m, vlan) in [
        ("02:00:00:00:00:77", 5),
        ("02:00:00:00:00:77", 6),
        ("02:00:00:00:00:78", 5),
    ] {
        let (code, v) = call(
            d,
            "POST",
            "/v1/bridges/br0/fdb",
            Some(json!({"mac": m, "port": "t", "vlan": vlan})),
        );
        assert_eq!(code, 201, "{v}");
    }
    let entries = |d| {
        let (_, fdb) = call(d, "GET", "/v1/bridges/br0/fdb", None);
        let mut e: Vec<(String, u64)> = fdb
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["mac"].as_str().unwrap().to_owned(),
                    e["vlan"].as_u64().unwrap(),
                )
            })
            .collect();
        e.sort();
        e
    };
    assert_eq!(entries(d).len(), 4);
    // The learnt one, by MAC alone.
    let (code, _) = call(d, "DELETE", "/v1/bridges/br0/fdb/02:00:00:00:00:01", None);
    assert_eq!(code, 204);
    // Known on two VLANs: which one must be said.
    let (code, v) = call(d, "DELETE", "/v1/bridges/br0/fdb/02:00:00:00:00:77", None);
    assert_eq!(code, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("VLANs 5, 6"), "{v}");
    let (code, _) = call(
        d,
        "DELETE",
        "/v1/bridges/br0/fdb/02:00:00:00:00:77?vlan=6",
        None,
    );
    assert_eq!(code, 204);
    let (code, out, err) = vringctl(&[
        "--api",
        &d.api,
        "fdb",
        "del",
        "br0",
        "02:00:00:00:00:77",
        "--vlan",
        "5",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "br0: entry 02:00:00:00:00:77 deleted");
    assert_eq!(entries(d), [("02:00:00:00:00:78".to_owned(), 5)]);
    // Not there, or not a MAC.
    let (code, _) = call(d, "DELETE", "/v1/bridges/br0/fdb/02:00:00:00:00:01", None);
    assert_eq!(code, 404);
    let (code, _) = call(d, "DELETE", "/v1/bridges/br0/fdb/not-a-mac", None);
    assert_eq!(code, 400);
    let (code, _) = call(
        d,
        "DELETE",
        "/v1/bridges/br0/fdb/02:00:00:00:00:78?vlna=5",
        None,
    );
    assert_eq!(code, 400);
}

/// Scripts as OVS users write them: --may-exist and --if-exists make add and delete
/// idempotent; `port set` with nothing to change is a usage error; a PATCH that changes
/// nothing forgets no learnt address.
#[test]
fn scripts_add_and_delete_idempotently() {
    let s = Setup::new("idempotent", &[("br0", &["a", "b"])], 1);
    let d = &s.daemon;
    let api = d.api.as_str();
    let ok = |args: &[&str]| {
        let mut all = vec!["--api", api];
        all.extend_from_slice(args);
        let (code, out, err) = vringctl(&all);
        assert_eq!(code, 0, "vringctl {args:?}: {err}");
        out.trim().to_owned()
    };
    assert_eq!(
        ok(&["bridge", "add", "br9", "--may-exist"]),
        "bridge br9 added"
    );
    assert_eq!(
        ok(&["bridge", "add", "br9", "--may-exist"]),
        "bridge br9 already exists"
    );
    let (code, _, err) = vringctl(&["--api", api, "bridge", "add", "br9"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        ok(&["port", "add", "p9", "--bridge", "br9", "--may-exist"]).starts_with("port p9 added")
    );
    assert_eq!(
        ok(&["port", "add", "p9", "--bridge", "br9", "--may-exist"]),
        "port p9 already exists"
    );
    // As ovs-vsctl: a port that exists otherwise than asked is an error, naming what differs.
    for (args, says) in [
        (&["--bridge", "br0"][..], "bridge br9, not br0"),
        (&["--bridge", "br9", "--access", "10"][..], "vlan none, not"),
        (
            &["--bridge", "br9", "--type", "tap"][..],
            "type vhost-user, not tap",
        ),
    ] {
        let mut all = vec!["--api", api, "port", "add", "p9", "--may-exist"];
        all.extend_from_slice(args);
        let (code, _, err) = vringctl(&all);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("port p9 already exists, otherwise: ") && err.contains(says),
            "{args:?}: {err}"
        );
    }
    assert_eq!(ok(&["port", "del", "p9", "--if-exists"]), "port p9 deleted");
    assert_eq!(
        ok(&["port", "del", "p9", "--if-exists"]),
        "no port p9: nothing to delete"
    );
    let (code, _, _) = vringctl(&["--api", api, "port", "del", "p9"]);
    assert_eq!(code, 1);
    assert_eq!(
        ok(&["bridge", "del", "br9", "--if-exists"]),
        "bridge br9 deleted"
    );
    assert_eq!(
        ok(&["bridge", "del", "br9", "--if-exists"]),
        "no bridge br9: nothing to delete"
    );
    assert_eq!(
        ok(&["fdb", "del", "br0", "02:00:00:00:00:42", "--if-exists"]),
        "br0: no entry 02:00:00:00:00:42: nothing to delete"
    );

    // Nothing to change.
    let (code, _, err) = vringctl(&["--api", api, "port", "set", "a"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nothing to change"), "{err}");
    // A PATCH that changes nothing keeps what was learnt.
    let (mut a, mut b) = (s.vm("a", 1), s.vm("b", 2));
    s.wait_connected(&["a", "b"]);
    a.send(TestVm::tx(0), &frame(mac(2), mac(1), 60, 0));
    b.expect_frames(TestVm::rx(0), 1, T);
    let (code, _) = call(
        d,
        "PATCH",
        "/v1/ports/a",
        Some(json!({"bridge": "br0", "vlan": null})),
    );
    assert_eq!(code, 200);
    let (_, fdb) = call(d, "GET", "/v1/bridges/br0/fdb", None);
    assert_eq!(
        fdb.as_array().unwrap().len(),
        1,
        "a no-op PATCH flushed: {fdb}"
    );
}

/// `vringctl show` draws the switch as `ovs-vsctl show` does, and `port show` the whole
/// port: queues configured and active, negotiated features by name, counters.
#[test]
fn vringctl_show_draws_the_switch_and_port_show_the_whole_port() {
    let s = Setup::new("show", &[("br0", &["a", "b"]), ("br1", &[])], 2);
    let d = &s.daemon;
    let _a = s.vm("a", 1);
    s.wait_connected(&["a"]);
    let show = d.vringctl(&["show"]);
    let sock = |p: &str| s.socket(p).display().to_string();
    // One worker: it polls both queue pairs of each port.
    let (_, a) = call(d, "GET", "/v1/ports/a", None);
    let core = a["cores"][0].as_u64().unwrap();
    assert_eq!(a["cores"], json!([core]));
    let want = format!(
        "bridge br0 (fdb ageing 300 s, learns at most 8192)\n\
         \x20   port a: vhost-user server, link up, queues 1 of 2, vlan -, core {core}\n\
         \x20       socket {}\n\
         \x20   port b: vhost-user server, link down, queues 0 of 2, vlan -, core {core}\n\
         \x20       socket {}\n\
         bridge br1 (fdb ageing 300 s, learns at most 8192)\n\
         \x20   no ports\n",
        sock("a"),
        sock("b")
    );
    assert_eq!(show, want);
    let port = d.vringctl(&["port", "show", "a"]);
    assert!(
        port.contains("queue pairs: 1 active of 2 configured"),
        "{port}"
    );
    assert!(
        port.contains("features: MRG_RXBUF")
            && port.contains("EVENT_IDX")
            && port.contains("VERSION_1"),
        "{port}"
    );
    let port = d.vringctl(&["port", "show", "b"]);
    assert!(port.contains("features: - (no frontend)"), "{port}");
}

/// Type errors in a body speak of numbers, not of Rust types.
#[test]
fn type_errors_in_a_body_speak_of_numbers() {
    let s = Setup::new("words", &[("br0", &["a"])], 1);
    let (code, v) = call(
        &s.daemon,
        "POST",
        "/v1/ports",
        Some(
            json!({"name": "p", "bridge": "br0", "type": "vhost-user", "mode": "server",
                    "queues": 70000}),
        ),
    );
    assert_eq!(code, 400);
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("an integer from 0 to 65535"), "{detail}");
    assert!(!detail.contains("u16"), "{detail}");
}

/// `--api` takes what people type: a host name, an http:// URL; each binary names itself.
#[test]
fn api_addresses_as_people_type_them_and_binaries_that_name_themselves() {
    let s = Setup::new("api-forms", &[("br0", &["a"])], 1);
    let port = s.daemon.api.rsplit_once(':').unwrap().1.to_owned();
    for api in [
        format!("localhost:{port}"),
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}/"),
    ] {
        let (code, out, err) = vringctl(&["--api", &api, "bridge", "list"]);
        assert_eq!(code, 0, "--api {api}: {err}");
        assert!(out.contains("br0"), "{out}");
    }
    let (code, _, err) = vringctl(&["--api", "http://localhost:1/v1", "bridge", "list"]);
    assert_eq!(code, 2, "{err}");
    for (bin, name) in [
        (vringswitch_tests::daemon::binary(), "vringswitch"),
        (vringswitch_tests::daemon::vringctl(), "vringctl"),
    ] {
        let out = std::process::Command::new(bin)
            .arg("--version")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with(&format!("{name} ")), "{text}");
    }
}

/// A port set down carries no traffic either way while its VM stays connected, shows as
/// such, and carries traffic again once set up.
#[test]
fn a_port_set_down_carries_nothing_until_set_up() {
    let s = Setup::new("admin", &[("br0", &["a", "b"])], 1);
    let d = &s.daemon;
    let (mut a, mut b) = (s.vm("a", 1), s.vm("b", 2));
    s.wait_connected(&["a", "b"]);
    // Both MACs learnt.
    b.send(TestVm::tx(0), &frame(mac(1), mac(2), 60, 0));
    a.expect_frames(TestVm::rx(0), 1, T);
    a.send(TestVm::tx(0), &frame(mac(2), mac(1), 60, 0));
    b.expect_frames(TestVm::rx(0), 1, T);

    let (code, out, err) = vringctl(&["--api", &d.api, "port", "set", "b", "--admin", "down"]);
    assert_eq!(code, 0, "{err}: {out}");
    assert_eq!(d.metric("vringswitch_port_admin_up", &[("port", "b")]), 0);
    assert!(d
        .vringctl(&["show"])
        .contains("port b: vhost-user server, link admin down"));
    // Unicast to b, a flood, and b's own frames: none goes through.
    a.send(TestVm::tx(0), &frame(mac(2), mac(1), 60, 1));
    a.send(TestVm::tx(0), &frame(BROADCAST, mac(1), 60, 2));
    b.send(TestVm::tx(0), &frame(mac(1), mac(2), 60, 3));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        b.recv(TestVm::rx(0)).is_empty(),
        "delivered to a port set down"
    );
    assert!(
        a.recv(TestVm::rx(0)).is_empty(),
        "a port set down was polled"
    );
    let (_, p) = call(d, "GET", "/v1/ports/b", None);
    assert_eq!(p["admin"], "down");
    assert_eq!(p["state"]["connected"], true);

    vringctl(&["--api", &d.api, "port", "set", "b", "--admin", "up"]);
    assert_eq!(d.metric("vringswitch_port_admin_up", &[("port", "b")]), 1);
    // b's frame waited in its ring and goes now; traffic flows both ways again.
    assert_eq!(
        a.expect_frames(TestVm::rx(0), 1, T)[0].frame,
        frame(mac(1), mac(2), 60, 3)
    );
    a.send(TestVm::tx(0), &frame(mac(2), mac(1), 60, 4));
    assert_eq!(
        b.expect_frames(TestVm::rx(0), 1, T)[0].frame,
        frame(mac(2), mac(1), 60, 4)
    );
}

/// A port whose peer goes away (its link down) has its learnt addresses forgotten at once,
/// its static entries kept; frames to a forgotten address flood instead of being dropped
/// as `port_down` until the entry would have aged out (300 s).
#[test]
fn a_port_whose_link_goes_down_forgets_what_it_taught_the_bridge() {
    let s = Setup::new("linkdown", &[("br0", &["a", "b", "c"])], 1);
    let d = &s.daemon;
    let (mut a, mut b, mut c) = (s.vm("a", 1), s.vm("b", 2), s.vm("c", 3));
    s.wait_connected(&["a", "b", "c"]);
    // b's address learnt (its frame to the unknown a flooded), and a static one on b.
    b.send(TestVm::tx(0), &frame(mac(1), mac(2), 60, 0));
    a.expect_frames(TestVm::rx(0), 1, T);
    c.expect_frames(TestVm::rx(0), 1, T);
    let (code, _) = call(
        d,
        "POST",
        "/v1/bridges/br0/fdb",
        Some(json!({"mac": "02:00:00:00:00:99", "port": "b"})),
    );
    assert_eq!(code, 201);
    let on_b = || -> Vec<(String, bool)> {
        let (_, fdb) = call(d, "GET", "/v1/bridges/br0/fdb", None);
        fdb.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["port"] == "b")
            .map(|e| (e["mac"].as_str().unwrap().to_owned(), e["static"] == true))
            .collect()
    };
    assert_eq!(on_b().len(), 2, "{:?}", on_b());
    drop(b);
    d.wait_port_connected("b", false);
    wait_until(T, "b's learnt address forgotten", || {
        (on_b() == [("02:00:00:00:00:99".to_owned(), true)]).then_some(())
    });
    // A frame to b's old address floods to c rather than being dropped.
    a.send(TestVm::tx(0), &frame(mac(2), mac(1), 60, 1));
    c.expect_frames(TestVm::rx(0), 1, T);
}

/// Log levels change at runtime, per module, through vringctl and the API, and a reset goes
/// back to the start's; a bad module or level changes nothing.
#[test]
fn log_levels_change_per_module_at_runtime() {
    let s = Setup::new("log-levels", &[("br0", &["a"])], 1);
    let d = &s.daemon;
    let requests = || d.log_text().matches("API request").count();
    d.vringctl(&["bridge", "list"]);
    assert_eq!(requests(), 0, "requests are logged at debug only");
    let shown = d.vringctl(&["log", "set", "http=debug"]);
    assert!(
        shown.contains("http ") && shown.contains("debug (own)"),
        "{shown}"
    );
    d.vringctl(&["bridge", "list"]);
    wait_until(T, "the request's debug line", || {
        d.log_text()
            .lines()
            .any(|l| {
                l.contains("DEBUG") && l.contains("API request") && l.contains("path=/v1/bridges")
            })
            .then_some(())
    });
    // Other modules stay at info: no debug line of the switch or the ports.
    assert!(
        !d.log_text()
            .lines()
            .any(|l| l.contains("DEBUG") && !l.contains("vringswitch_control::http")),
        "{}",
        d.log_text()
    );
    let (code, v) = call(d, "GET", "/v1/log", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["default"], "info");
    let http = v["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "http")
        .unwrap();
    assert_eq!(
        (http["level"].as_str(), http["own"].as_bool()),
        (Some("debug"), Some(true))
    );
    // Refused whole: an unknown module beside a good one.
    let (code, e) = call(
        d,
        "PATCH",
        "/v1/log",
        Some(json!({"modules": {"switch": "trace", "verbose": "debug"}})),
    );
    assert_eq!((code, e["error"].as_str()), (400, Some("invalid")), "{e}");
    let (code, e) = call(d, "PATCH", "/v1/log", Some(json!({"default": "loud"})));
    assert_eq!(
        (code, e["error"].as_str()),
        (400, Some("bad_request")),
        "{e}"
    );
    let (_, after) = call(d, "GET", "/v1/log", None);
    assert_eq!(after["filter"], v["filter"]);
    // Reset: requests are no longer logged.
    d.vringctl(&["log", "reset"]);
    let before = requests();
    d.vringctl(&["bridge", "list"]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(requests(), before, "{}", d.log_text());
    let (_, v) = call(d, "GET", "/v1/log", None);
    assert_eq!(v["filter"], v["at_start"]);
}

/// External IDs on bridges and ports: from the configuration file, the API and vringctl,
/// shown, kept in the state file across a restart, the base of --may-exist; changing them
/// forgets no learnt address. `bridge set` changes the FDB ageing of a running bridge, and
/// `bridge del --with-ports` takes its ports.
#[test]
fn external_ids_bridge_set_and_bridge_del_with_ports() {
    use vringswitch_tests::daemon::{Daemon, TempDir};
    let dir = TempDir::new("external-ids");
    let state = dir.path().join("state.json");
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let toml = format!(
        "[[bridges]]\nname = \"br0\"\nexternal_ids = {{ owner = \"ops\" }}\n\
         [[ports]]\nname = \"a\"\nbridge = \"br0\"\nsocket = \"{}\"\n\
         external_ids = {{ \"iface-id\" = \"0d5e-a\", \"vm-uuid\" = \"52f1\" }}\n\
         [[ports]]\nname = \"b\"\nbridge = \"br0\"\nsocket = \"{}\"\n",
        a.display(),
        b.display()
    );
    let mut d = Daemon::start_with(
        dir.path(),
        &toml,
        &[a.clone(), b.clone()],
        &["--state", state.to_str().unwrap()],
    );
    let (_, port) = call(&d, "GET", "/v1/ports/a", None);
    assert_eq!(
        port["external_ids"],
        json!({"iface-id": "0d5e-a", "vm-uuid": "52f1"})
    );
    let (_, bridge) = call(&d, "GET", "/v1/bridges/br0", None);
    assert_eq!(bridge["external_ids"], json!({"owner": "ops"}));

    // b learns its address; changing its external IDs forgets nothing.
    let mut vb = TestVm::connect(&b, mac(2), Default::default());
    vb.post_rx(TestVm::rx(0), 8, 2048);
    vb.send(TestVm::tx(0), &frame(BROADCAST, mac(2), 64, 0));
    wait_until(T, "b's address learnt", || {
        let (_, fdb) = call(&d, "GET", "/v1/bridges/br0/fdb", None);
        (fdb.as_array().unwrap().len() == 1).then_some(())
    });
    d.vringctl(&["port", "set", "b", "--external-id", "iface-id=77aa"]);
    let (code, port) = call(
        &d,
        "PATCH",
        "/v1/ports/a",
        Some(json!({"external_ids": {"vm-uuid": null, "zone": "eu 1"}})),
    );
    assert_eq!(code, 200, "{port}");
    assert_eq!(
        port["external_ids"],
        json!({"iface-id": "0d5e-a", "zone": "eu 1"})
    );
    let (_, fdb) = call(&d, "GET", "/v1/bridges/br0/fdb", None);
    assert_eq!(
        fdb.as_array().unwrap().len(),
        1,
        "an external ID change forgot: {fdb}"
    );
    let tree = d.vringctl(&["show"]);
    assert!(
        tree.contains("    external_ids owner=ops\n")
            && tree.contains("        external_ids iface-id=0d5e-a zone=\"eu 1\"\n")
            && tree.contains("        external_ids iface-id=77aa\n"),
        "{tree}"
    );
    // Refused: a bad key, a control character, too many.
    for ids in [
        json!({"bad key": "x"}),
        json!({"k": "a\nb"}),
        Value::Object((0..65).map(|i| (format!("k{i}"), json!("v"))).collect()),
    ] {
        let (code, e) = call(
            &d,
            "PATCH",
            "/v1/ports/a",
            Some(json!({"external_ids": ids})),
        );
        assert_eq!((code, e["error"].as_str()), (400, Some("invalid")), "{e}");
    }

    // --may-exist compares the keys given.
    d.vringctl(&[
        "port",
        "add",
        "b",
        "--bridge",
        "br0",
        "--may-exist",
        "--external-id",
        "iface-id=77aa",
    ]);
    let (code, _, err) = vringctl(&[
        "--api",
        &d.api,
        "port",
        "add",
        "b",
        "--bridge",
        "br0",
        "--may-exist",
        "--external-id",
        "iface-id=other",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("external_ids iface-id \"77aa\", not \"other\""),
        "{err}"
    );

    // bridge set: the ageing changes while the bridge runs; b's address goes within it.
    let out = d.vringctl(&[
        "bridge",
        "set",
        "br0",
        "--fdb-aging",
        "1",
        "--remove-external-id",
        "owner",
    ]);
    assert_eq!(out, "bridge br0 changed\n");
    let (_, bridge) = call(&d, "GET", "/v1/bridges/br0", None);
    assert_eq!(
        (bridge["fdb_aging_s"].as_u64(), &bridge["external_ids"]),
        (Some(1), &json!({}))
    );
    wait_until(
        std::time::Duration::from_secs(5),
        "b's address aged out",
        || {
            let (_, fdb) = call(&d, "GET", "/v1/bridges/br0/fdb", None);
            fdb.as_array().unwrap().is_empty().then_some(())
        },
    );
    drop(vb);

    // Kept across a restart, from the state file.
    d.kill();
    d.restart(&[a.clone(), b.clone()]);
    let (_, port) = call(&d, "GET", "/v1/ports/a", None);
    assert_eq!(
        port["external_ids"],
        json!({"iface-id": "0d5e-a", "zone": "eu 1"})
    );
    let (_, bridge) = call(&d, "GET", "/v1/bridges/br0", None);
    assert_eq!(bridge["fdb_aging_s"], 1);

    // bridge del: refused with ports, unless --with-ports, which takes them and their sockets.
    let (code, _, err) = vringctl(&["--api", &d.api, "bridge", "del", "br0"]);
    assert_eq!(code, 1);
    assert!(err.contains("--with-ports"), "{err}");
    assert_eq!(
        d.vringctl(&["bridge", "del", "br0", "--with-ports"]),
        "bridge br0 deleted\n"
    );
    let (_, ports) = call(&d, "GET", "/v1/ports", None);
    assert_eq!(ports, json!([]));
    assert!(!a.exists() && !b.exists());
}

/// `vringctl cores` lists each worker core's queues with their share of it, from counters
/// the worker keeps per queue; the frames a queue took are the port's on that queue.
#[test]
fn cores_show_which_core_polls_each_queue_and_its_share() {
    let s = Setup::new("cores", &[("br0", &["a", "b"])], 2);
    let d = &s.daemon;
    let mut a = s.vm("a", 1);
    let mut b = s.vm("b", 2);
    s.wait_connected(&["a", "b"]);
    for i in 0..200u8 {
        a.send(TestVm::tx(0), &frame(mac(2), mac(1), 64, i));
        if i % 50 == 49 {
            a.wait_tx_done(TestVm::tx(0), T);
            let got = b.recv(TestVm::rx(0)).len();
            b.post_rx(TestVm::rx(0), got, 2048);
        }
    }
    wait_until(T, "a's 200 frames counted", || {
        (s.counter("rx_packets", "a") == 200).then_some(())
    });
    let snap: Value = serde_json::from_str(&d.vringctl(&["--json", "cores"])).unwrap();
    let core = snap["workers"][0]["core"].as_u64().unwrap();
    let a_queues = snap["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "a")
        .unwrap()["queues"]
        .clone();
    assert_eq!(a_queues[0]["rx_packets"], 200, "{a_queues}");
    assert_eq!(a_queues[0]["core"], core);
    assert!(
        a_queues[0]["busy_cycles"].as_u64().unwrap() > 0,
        "{a_queues}"
    );
    assert_eq!(a_queues[1]["busy_cycles"], 0, "{a_queues}");
    let text = d.vringctl(&["cores"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("core {core}: busy ")) && l.ends_with(" 4 queues")),
        "{text}"
    );
    let row = lines
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&"a") && w.get(1) == Some(&"0"))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(row[3], "200", "{text}");
    assert!(row[2].parse::<f64>().unwrap() > 0.0, "{text}");
    // Over an interval with no traffic: nothing moved.
    let quiet = d.vringctl(&["cores", "--interval", "0.2"]);
    assert!(quiet.contains("Cores (last 0.2 s)"), "{quiet}");
    assert!(
        quiet.contains(&format!("core {core}: busy 0.0 %, 0 packets")),
        "{quiet}"
    );
    // The metric Prometheus gets.
    assert!(
        d.metric(
            "vringswitch_port_queue_busy_cycles_total",
            &[("port", "a"), ("queue", "0")]
        ) > 0
    );
}
